//! Connections that misbehave on a watched port: clients that never finish a
//! request head (slowloris), thousands of connections open at once and more
//! than sonde may track (on watched ports or beside them), resets from either side mid-exchange, a request
//! on a connection its server already closed, a server killed mid-request,
//! fds and pids reused by new connections and processes. Each case checks
//! that sonde survives, that the legitimate traffic beside the hostile one
//! is counted exactly and nothing else is, and that the anomaly is counted
//! in sonde's own metrics.
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sonde_tests::clients::{get_request, HttpConn};
use sonde_tests::names::{self, *};
use sonde_tests::process::{exe_basename, poll, report, rss_bytes};
use sonde_tests::prom::Scrape;
use sonde_tests::servers::{self, Nginx, NginxConfig, Server};
use sonde_tests::sonde::{Sonde, SETTLE};

const TRACKED: &str = "sonde_connections_tracked";
const ABANDONED: &str = "sonde_requests_abandoned_total";
const INCOMPLETE: &str = "sonde_http_incomplete_responses_total";
const CLIENT_ACTIVE: &str = "http_client_active_requests";

/// Labels that tell server series apart, and client ones.
const SERVER_KEY: [&str; 4] = [
    "service_name",
    "http_request_method",
    "http_route",
    "http_response_status_code",
];
const CLIENT_KEY: [&str; 3] = ["service_name", "server_port", "http_response_status_code"];

/// Exchange counts by the values of `SERVER_KEY` or `CLIENT_KEY`.
type Counts = BTreeMap<Vec<String>, f64>;

/// Every series of the count of `family`, keyed by the values of `key`.
fn counts(scrape: &Scrape, family: &str, key: &[&str]) -> Counts {
    scrape
        .find(family, &[])
        .map(|s| {
            let labels = key
                .iter()
                .map(|k| s.label(k).unwrap_or_default().to_string())
                .collect();
            (labels, s.value)
        })
        .collect()
}

fn expected(rows: &[(&[&str], f64)]) -> Counts {
    rows.iter()
        .map(|(labels, n)| (labels.iter().map(|l| l.to_string()).collect(), *n))
        .collect()
}

/// Waits until the server exchange series are exactly `server` (by the
/// values of `SERVER_KEY`) and the client ones exactly this test's own
/// calls to `port`, with `client` counts by status (no other series, no
/// other counts), and checks they still are after [`SETTLE`].
fn await_exchanges(
    sonde: &Sonde,
    port: u16,
    server: &[(&[&str], f64)],
    client: &[(&str, f64)],
) -> Scrape {
    let server = expected(server);
    let (me, port) = (me(), port.to_string());
    let client: Counts = client
        .iter()
        .map(|&(status, n)| (vec![me.clone(), port.clone(), status.to_string()], n))
        .collect();
    let matches = |s: &Scrape| {
        counts(s, SERVER_DURATION_COUNT, &SERVER_KEY) == server
            && counts(s, CLIENT_DURATION_COUNT, &CLIENT_KEY) == client
    };
    let what = format!("exactly the server series {server:?} and client series {client:?}");
    sonde.await_scrape(&what, matches);
    thread::sleep(SETTLE);
    let settled = sonde.scrape();
    assert!(
        matches(&settled),
        "{}",
        sonde.failure(&format!("{what} was reached, then changed"), &settled)
    );
    settled
}

/// Asserts the totals, over all their labels, of the metrics in `expected`.
fn assert_totals(sonde: &Sonde, scrape: &Scrape, expected: &[(&str, f64)], why: &str) {
    let totals: Vec<(&str, f64)> = expected
        .iter()
        .map(|&(name, _)| (name, scrape.sum(name, &[])))
        .collect();
    assert_eq!(totals, expected, "{}", sonde.failure(why, scrape));
}

/// Once every connection is closed: sonde tracks none, still runs and
/// answers, and stops cleanly.
fn stop_after_all_closed(mut sonde: Sonde) {
    sonde.await_value(TRACKED, &[], 0.0);
    assert!(sonde.is_running(), "sonde died:\n{}", sonde.output());
    assert_eq!(sonde.get("/healthz").unwrap().status, 200);
    sonde.stop();
}

/// The file name of this test's own executable: its service name as a client.
fn me() -> String {
    exe_basename(std::process::id())
}

/// A connection to a local port whose reads give up after 5 s.
fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Clients that open connections and send the start of a request head one
/// byte per second, never finishing it, hold a server's connections open
/// (slowloris). Every partial head is counted as it is closed; nothing
/// else of them shows, and sonde's memory stays bounded.
#[test]
fn slowloris_heads_are_counted_and_leave_nothing_behind() {
    const SLOW_CLIENTS: usize = 300;
    /// One byte of it per second; never more than this much, so never a head.
    const SLOW_HEAD: &[u8] = b"GET /slow HT";
    const RSS_LIMIT: u64 = 64 << 20;
    let nginx = Nginx::start();
    let port = nginx.server().port();
    let sonde = Sonde::watching_ports(&[port]);
    sonde.await_value(TRACKED, &[], 0.0);

    let mut slow: Vec<TcpStream> = (0..SLOW_CLIENTS).map(|_| connect(port)).collect();
    let mut legit = HttpConn::connect(port).unwrap();
    let mut peak_rss = rss_bytes(sonde.pid()).unwrap();
    let start = Instant::now();
    for (second, byte) in SLOW_HEAD.iter().enumerate() {
        for stream in &mut slow {
            stream.write_all(&[*byte]).unwrap();
        }
        // Legitimate traffic beside: a keep-alive client, and one that
        // connects for each request.
        for _ in 0..2 {
            assert_eq!(legit.get("/api/items").unwrap().status, 200);
        }
        let mut once = HttpConn::connect(port).unwrap();
        assert_eq!(once.get("/static/absent").unwrap().status, 404);
        drop(once);
        peak_rss = peak_rss.max(rss_bytes(sonde.pid()).unwrap());
        let next = start + Duration::from_secs(second as u64 + 1);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    // Both ends of every slow connection and of the keep-alive one; the
    // one-request connections are closed.
    sonde.await_value(TRACKED, &[], 2.0 * SLOW_CLIENTS as f64 + 2.0);
    assert!(
        peak_rss < RSS_LIMIT,
        "sonde's VmRSS reached {} MiB",
        peak_rss >> 20
    );

    drop(slow);
    let legit_requests = 2.0 * SLOW_HEAD.len() as f64;
    let once_requests = SLOW_HEAD.len() as f64;
    await_exchanges(
        &sonde,
        port,
        &[
            (&["nginx", "GET", "/api/items", "200"], legit_requests),
            (&["nginx", "GET", "/static/absent", "404"], once_requests),
        ],
        &[("200", legit_requests), ("404", once_requests)],
    );
    // Each slow connection ends mid-head at both of its ends: the client's
    // writes and nginx's reads.
    let scrape = sonde.await_value(
        HTTP_ANOMALIES,
        &[("reason", "bad_head")],
        2.0 * SLOW_CLIENTS as f64,
    );
    assert_totals(
        &sonde,
        &scrape,
        &[
            (HTTP_ANOMALIES, 2.0 * SLOW_CLIENTS as f64),
            (ABANDONED, 0.0),
        ],
        "a head never finished is no request",
    );
    report(&format!(
        "slowloris: {SLOW_CLIENTS} slow clients; sonde's peak VmRSS {:.1} MiB",
        peak_rss as f64 / f64::from(1 << 20)
    ));
    sonde.await_value(TRACKED, &[], 2.0);
    drop(legit);
    stop_after_all_closed(sonde);
}

/// nginx with room for thousands of connections at once, and this test
/// with room for as many fds (nginx inherits the limit).
fn nginx_for_thousands() -> Nginx {
    const FDS: libc::rlim_t = 8192;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct of the type they take.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < FDS {
            limit.rlim_cur = FDS.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= FDS,
        "RLIMIT_NOFILE allows only {} fds",
        limit.rlim_max
    );
    Nginx::with_config(&NginxConfig {
        worker_connections: 4096,
        ..NginxConfig::default()
    })
    .unwrap()
}

/// `count` keep-alive connections to `port`, all open at once.
fn connections(port: u16, count: usize) -> Vec<HttpConn> {
    (0..count)
        .map(|_| HttpConn::connect(port).unwrap())
        .collect()
}

/// One request on each of `conns`, all sent before any response is read:
/// the `i`th asks for `request(i).0` and must be answered `request(i).1`.
fn request_on_each(conns: &mut [HttpConn], request: impl Fn(usize) -> (&'static str, u16)) {
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.send(&get_request(request(i).0)).unwrap();
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(conn.read_response().unwrap().status, request(i).1);
    }
}

/// Thousands of keep-alive connections open at once, each making a few
/// requests: every request is counted, and every connection is forgotten
/// once closed.
#[test]
fn thousands_of_concurrent_connections_are_counted_exactly() {
    const CONNECTIONS: usize = 2000;
    const ROUNDS: usize = 3;
    let nginx = nginx_for_thousands();
    let port = nginx.server().port();
    let sonde = Sonde::watching_ports(&[port]);

    // Even connections ask for a page nginx has, odd ones for a file it has not.
    let request = |i: usize| {
        if i.is_multiple_of(2) {
            ("/api/items", 200)
        } else {
            ("/static/absent", 404)
        }
    };
    let mut conns = connections(port, CONNECTIONS);
    for round in 0..ROUNDS {
        request_on_each(&mut conns, request);
        if round == 0 {
            // Both ends of each, all open at once.
            sonde.await_value(TRACKED, &[], 2.0 * CONNECTIONS as f64);
        }
    }
    let per_route = (CONNECTIONS / 2 * ROUNDS) as f64;
    let scrape = await_exchanges(
        &sonde,
        port,
        &[
            (&["nginx", "GET", "/api/items", "200"], per_route),
            (&["nginx", "GET", "/static/absent", "404"], per_route),
        ],
        &[("200", per_route), ("404", per_route)],
    );
    assert_eq!(nginx.access_log_lines(), CONNECTIONS * ROUNDS);
    assert_totals(
        &sonde,
        &scrape,
        &[(HTTP_ANOMALIES, 0.0), (ABANDONED, 0.0), (EVENTS_LOST, 0.0)],
        "nothing lost, nothing abandoned",
    );
    drop(conns);
    stop_after_all_closed(sonde);
}

/// The smallest `--max-connections`.
const LIMIT: usize = 1024;

/// sonde watching `port` only, with a connection table of [`LIMIT`].
fn sonde_with_smallest_table(port: u16) -> Sonde {
    let args = [
        "--port",
        &port.to_string(),
        "--max-connections",
        &LIMIT.to_string(),
    ];
    Sonde::start(&args.map(String::from)).unwrap()
}

/// More connections than sonde may track at once (`--max-connections`,
/// which sizes the kernel's connection table too): those beyond it are
/// counted as lost, not guessed at; those tracked are counted exactly; and
/// once they close, the table is free for new connections again.
#[test]
fn connections_beyond_the_table_are_counted_as_lost() {
    /// 2000 ends, both watched: about twice the table.
    const CONNECTIONS: usize = 1000;
    let nginx = nginx_for_thousands();
    let port = nginx.server().port();
    let sonde = sonde_with_smallest_table(port);
    let me = me();

    let mut conns = connections(port, CONNECTIONS);
    request_on_each(&mut conns, |_| ("/api/items", 200));
    // Each end tracked saw its one exchange from its first byte.
    let exchanges =
        |s: &Scrape| s.sum(SERVER_DURATION_COUNT, &[]) + s.sum(CLIENT_DURATION_COUNT, &[]);
    let scrape = sonde.await_scrape("one exchange per tracked end", |s| {
        s.value(TRACKED, &[])
            .is_some_and(|t| t > 0.0 && t == exchanges(s))
    });
    // Only watched connections take a slot (this test's scrapes, filtered
    // out by port, do not): the table fills with this test's ends.
    let tracked = scrape.value(TRACKED, &[]).unwrap() as usize;
    assert_eq!(
        tracked,
        LIMIT,
        "{}",
        sonde.failure(&format!("{tracked} ends tracked"), &scrape)
    );
    assert_totals(
        &sonde,
        &scrape,
        &[
            (HTTP_ANOMALIES, 0.0),
            (ABANDONED, 0.0),
            (SERVER_ACTIVE, 0.0),
            (CLIENT_ACTIVE, 0.0),
        ],
        "nothing half seen",
    );

    drop(conns);
    sonde.await_value(TRACKED, &[], 0.0);
    // Every socket call of a connection the full table could not take was
    // counted: at least a request and a response per untracked end. (Calls
    // of any other TCP connection while the table was full count too, this
    // test's scrapes among them: hence no upper bound.) sonde reads the
    // kernel's counters once a second: the count is final once it stays put.
    let table_full = [("reason", "conn_table_full")];
    let lost = poll(Duration::from_secs(10), Duration::ZERO, || {
        let first = sonde.scrape().value(EVENTS_LOST, &table_full);
        thread::sleep(Duration::from_millis(1500));
        let second = sonde.scrape().value(EVENTS_LOST, &table_full);
        (first == second).then_some(second)
    })
    .flatten()
    .expect("the count of lost calls settles") as usize;
    let untracked = 2 * CONNECTIONS - tracked;
    report(&format!(
        "table of {LIMIT}: {tracked} ends tracked, {untracked} not, {lost} calls lost"
    ));
    assert!(
        lost >= 2 * untracked,
        "{lost} calls lost for {untracked} untracked ends"
    );
    // The table is free again: a new connection is tracked and counted.
    let before = sonde.scrape();
    let mut after = HttpConn::connect(port).unwrap();
    assert_eq!(after.get("/after").unwrap().status, 200);
    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server("nginx", "GET", "/after", "200"),
        1.0,
    );
    let scrape = sonde.await_value(
        CLIENT_DURATION_COUNT,
        &[("service_name", &me), ("http_response_status_code", "200")],
        before.sum(CLIENT_DURATION_COUNT, &[]) + 1.0,
    );
    assert_eq!(
        scrape.value(EVENTS_LOST, &table_full),
        Some(lost as f64),
        "{}",
        sonde.failure("nothing lost once the table has room", &scrape)
    );
    drop(after);
    stop_after_all_closed(sonde);
}

/// Connections on ports sonde does not watch take no slot in its tables:
/// more of them than the table holds, open at once, leave room for the one
/// watched connection beside them, and nothing is counted lost.
#[test]
fn unwatched_connections_take_no_slot() {
    /// 2200 unwatched ends: more than the table holds.
    const UNWATCHED: usize = 1100;
    let nginx = nginx_for_thousands();
    let python = servers::python();
    let sonde = sonde_with_smallest_table(python.port());

    let mut unwatched = connections(nginx.server().port(), UNWATCHED);
    request_on_each(&mut unwatched, |_| ("/api/items", 200));
    let mut watched = HttpConn::connect(python.port()).unwrap();
    assert_eq!(watched.get("/fast").unwrap().status, 200);

    let py = python.service_name();
    let scrape = await_exchanges(
        &sonde,
        python.port(),
        &[(&[&py, "GET", "/fast", "200"], 1.0)],
        &[("200", 1.0)],
    );
    assert_totals(
        &sonde,
        &scrape,
        &[(TRACKED, 0.0), (EVENTS_LOST, 0.0), (HTTP_ANOMALIES, 0.0)],
        "nothing lost, nothing left tracked once Python closed its connection",
    );
    drop((unwatched, watched));
    stop_after_all_closed(sonde);
}

/// Reads from `stream` until `bytes` have come.
fn read_exactly(stream: &mut TcpStream, bytes: usize) -> Vec<u8> {
    let mut got = vec![0; bytes];
    stream.read_exact(&mut got).unwrap();
    got
}

/// Reads one request head from `stream`; false at the end of the stream.
fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// Closes `stream` with a reset (SO_LINGER 0) instead of a FIN.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket, and an option value of the size given.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// A server that resets its connection in the middle of a response body:
/// the exchange is recorded as cut short (once at each end), its body
/// sized to what was sent, and nothing stays in flight.
#[test]
fn reset_mid_response_is_counted_incomplete() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    const CUT_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    const CUT_BODY: &[u8] = b"0123456789";
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let sonde = Sonde::watching_ports(&[port]);
    let me = me();

    let (client_read, client_has_read) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        // First a connection answered in full, until its client closes it.
        let (mut whole, _) = listener.accept().unwrap();
        while read_head(&mut whole) {
            whole.write_all(OK).unwrap();
        }
        drop(whole);
        // Then one reset once its client has the head and a bit of body.
        let (mut cut, _) = listener.accept().unwrap();
        assert!(read_head(&mut cut));
        cut.write_all(&[CUT_HEAD, CUT_BODY].concat()).unwrap();
        client_has_read.recv().unwrap();
        reset(cut);
    });

    let mut whole = connect(port);
    whole.write_all(&get_request("/ok")).unwrap();
    assert_eq!(read_exactly(&mut whole, OK.len()), OK);
    drop(whole);
    let mut cut = connect(port);
    cut.write_all(&get_request("/download")).unwrap();
    let partial = read_exactly(&mut cut, CUT_HEAD.len() + CUT_BODY.len());
    assert!(partial.ends_with(CUT_BODY));
    client_read.send(()).unwrap();
    server.join().unwrap();
    let mut rest = [0u8; 16];
    let error = cut
        .read(&mut rest)
        .expect_err("the server reset the connection");
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
    // The client closes after the error, as clients do.
    drop(cut);

    let scrape = await_exchanges(
        &sonde,
        port,
        &[
            (&[&me, "GET", "/ok", "200"], 1.0),
            (&[&me, "GET", "/download", "200"], 1.0),
        ],
        &[("200", 2.0)],
    );
    // The server's end and the client's end each saw the response cut.
    let settled = sonde.await_value(INCOMPLETE, &[], 2.0);
    let download = names::server(&me, "GET", "/download", "200");
    let body_sum = format!("{SERVER_RESPONSE_BODY}_sum");
    assert_eq!(
        scrape.value(&body_sum, &download),
        Some(CUT_BODY.len() as f64),
        "{}",
        sonde.failure("the cut body is what was sent of it", &scrape)
    );
    assert_totals(
        &sonde,
        &settled,
        &[
            (SERVER_ACTIVE, 0.0),
            (CLIENT_ACTIVE, 0.0),
            (ABANDONED, 0.0),
            (HTTP_ANOMALIES, 0.0),
        ],
        "nothing in flight, abandoned or anomalous",
    );
    stop_after_all_closed(sonde);
}

/// A client that sends a request on a keep-alive connection its server has
/// already closed (a pooled connection gone stale) gets a reset: the
/// request is abandoned once at the client's end, and nothing else counts.
///
/// On loopback the reset is processed inside the client's send, before the
/// send's own event: the kernel side reports the connection's end first,
/// then takes the request's bytes for a new connection on the same fd,
/// which ends when the client closes that fd. So the request stays in
/// flight until then, and is abandoned at that close.
#[test]
fn request_on_a_connection_the_server_closed_is_abandoned() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let sonde = Sonde::watching_ports(&[port]);
    let me = me();

    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        assert!(read_head(&mut conn));
        conn.write_all(OK).unwrap();
        // Then it closes the idle connection, as an idle timeout does.
    });
    let mut stale = connect(port);
    stale.write_all(&get_request("/first")).unwrap();
    assert_eq!(read_exactly(&mut stale, OK.len()), OK);
    server.join().unwrap();
    // The pool does not know yet: it reuses the connection.
    stale.write_all(&get_request("/second")).unwrap();
    let mut rest = [0u8; 16];
    assert!(
        !matches!(stale.read(&mut rest), Ok(n) if n > 0),
        "the closed server answered"
    );

    drop(stale);
    sonde.await_value(CLIENT_ACTIVE, &[("service_name", &me)], 0.0);
    let scrape = await_exchanges(
        &sonde,
        port,
        &[(&[&me, "GET", "/first", "200"], 1.0)],
        &[("200", 1.0)],
    );
    assert_totals(
        &sonde,
        &scrape,
        &[(ABANDONED, 1.0), (HTTP_ANOMALIES, 0.0), (INCOMPLETE, 0.0)],
        "the request on the stale connection abandoned at the client's end",
    );
    assert_eq!(
        scrape.value(ABANDONED, &[("reason", "closed_unanswered")]),
        Some(1.0)
    );
    stop_after_all_closed(sonde);
}

/// A client that resets its connection while the server is still working
/// on its request: the request is abandoned at both ends, and the answer
/// the server tries to write afterwards (into a reset socket) counts nowhere.
#[test]
fn client_reset_mid_request_is_abandoned_at_both_ends() {
    const WORK: Duration = Duration::from_millis(1000);
    let server = servers::python();
    let port = server.port();
    let sonde = Sonde::watching_ports(&[port]);
    let svc = server.service_name();
    let me = me();

    let mut legit = HttpConn::connect(port).unwrap();
    assert_eq!(legit.get("/fast").unwrap().status, 200);
    let mut impatient = connect(port);
    impatient
        .write_all(&get_request(&format!("/sleep?ms={}", WORK.as_millis())))
        .unwrap();
    let sleep = names::route(&svc, "GET", "/sleep");
    sonde.await_value(SERVER_ACTIVE, &sleep, 1.0);
    reset(impatient);
    sonde.await_value(SERVER_ACTIVE, &sleep, 0.0);
    sonde.await_value(CLIENT_ACTIVE, &[("service_name", &me)], 0.0);
    sonde.await_value(ABANDONED, &[("reason", "closed_unanswered")], 2.0);
    // The server's late answer fails on the reset socket: nothing to count.
    thread::sleep(WORK);
    assert_eq!(legit.get("/fast").unwrap().status, 200);

    let scrape = await_exchanges(
        &sonde,
        port,
        &[(&[&svc, "GET", "/fast", "200"], 2.0)],
        &[("200", 2.0)],
    );
    assert_totals(
        &sonde,
        &scrape,
        &[
            (ABANDONED, 2.0),
            (HTTP_ANOMALIES, 0.0),
            (INCOMPLETE, 0.0),
            (SERVER_ACTIVE, 0.0),
        ],
        "the reset request abandoned once at each end",
    );
    drop(legit);
    stop_after_all_closed(sonde);
}

/// A server killed (SIGKILL) while requests wait for it: they are in
/// flight until it dies, then abandoned, each exactly once at each end,
/// and the connections are forgotten.
#[test]
fn server_killed_mid_request_abandons_its_requests() {
    const HELD: usize = 5;
    let server = servers::python();
    let port = server.port();
    let sonde = Sonde::watching_ports(&[port]);
    let svc = server.service_name();
    let me = me();

    let mut legit = HttpConn::connect(port).unwrap();
    for _ in 0..3 {
        assert_eq!(legit.get("/fast").unwrap().status, 200);
    }
    let held: Vec<HttpConn> = (0..HELD)
        .map(|_| {
            let mut conn = HttpConn::connect(port).unwrap();
            conn.send(&get_request("/hold?key=never")).unwrap();
            conn
        })
        .collect();
    let hold = names::route(&svc, "GET", "/hold");
    sonde.await_value(SERVER_ACTIVE, &hold, HELD as f64);
    sonde.await_value(CLIENT_ACTIVE, &[("service_name", &me)], HELD as f64);

    // SAFETY: our own child, not yet reaped, so the pid is still its own.
    assert_eq!(
        unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGKILL) },
        0
    );
    // The kernel reports the exit before it closes the dead process's fds
    // (do_exit: the sched_process_exit tracepoint, then exit_files), so the
    // server's ends are abandoned for the exit, not for their close.
    sonde.await_value(SERVER_ACTIVE, &hold, 0.0);
    sonde.await_value(ABANDONED, &[("reason", "process_exited")], HELD as f64);
    // Each client reads the end of its connection and closes it, as clients
    // do: their ends are over, unanswered. (Until a client closes, sonde
    // cannot tell its connection is over: the kernel side reports a socket's
    // end, and a FIN received leaves it open for writing.)
    for mut conn in held {
        assert!(conn.read_response().is_err(), "a killed server answered");
    }
    sonde.await_value(CLIENT_ACTIVE, &[("service_name", &me)], 0.0);
    let scrape = sonde.await_value(ABANDONED, &[("reason", "closed_unanswered")], HELD as f64);
    assert_totals(
        &sonde,
        &scrape,
        &[(ABANDONED, 2.0 * HELD as f64), (HTTP_ANOMALIES, 0.0)],
        "each held request abandoned once at each end",
    );

    await_exchanges(
        &sonde,
        port,
        &[(&[&svc, "GET", "/fast", "200"], 3.0)],
        &[("200", 3.0)],
    );
    drop(legit);
    stop_after_all_closed(sonde);
}

/// The inode of the loopback TCP socket whose local port is `local` and
/// whose peer's is `peer` (from /proc/net/tcp).
fn socket_inode(local: u16, peer: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |address: &str| {
        let hex = address.split_once(':')?.1;
        u16::from_str_radix(hex, 16).ok()
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ours = port(fields.get(1)?)? == local && port(fields.get(2)?)? == peer;
        ours.then(|| fields.get(9)?.parse().ok()).flatten()
    })
}

/// The fd under which `pid` holds socket `inode`, if it does.
fn fd_of(pid: u32, inode: u64) -> Option<u32> {
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == socket.as_str())
        })
        .and_then(|fd| fd.file_name().to_str()?.parse().ok())
}

/// A server that closes each connection after its last request and accepts
/// the next one under the same fd number: every connection's requests pair
/// with its own responses (routes and statuses differ between them, so a
/// mix-up would show as a series that should not exist).
#[test]
fn fd_reused_by_the_next_connection_pairs_correctly() {
    const CONNECTIONS: usize = 6;
    let server = servers::python();
    let port = server.port();
    let sonde = Sonde::watching_ports(&[port]);
    let svc = server.service_name();

    let mut fds = Vec::new();
    for i in 0..CONNECTIONS {
        let (path, status, requests) = if i.is_multiple_of(2) {
            ("/fast", 200, 3)
        } else {
            ("/boom", 500, 2)
        };
        let mut conn = HttpConn::connect(port).unwrap();
        assert_eq!(conn.get(path).unwrap().status, status);
        let client_port = conn.local_addr().unwrap().port();
        let inode = socket_inode(port, client_port).expect("the server's socket");
        let fd = fd_of(server.pid(), inode).expect("the server's fd");
        fds.push(fd);
        for _ in 1..requests - 1 {
            assert_eq!(conn.get(path).unwrap().status, status);
        }
        // The last request asks the server to close the connection.
        conn.send(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(conn.read_response().unwrap().status, status);
        // The next connection may only come once the server's fd is free.
        let closed = poll(Duration::from_secs(5), Duration::from_millis(10), || {
            (fd_of(server.pid(), inode).is_none()).then_some(())
        });
        assert!(closed.is_some(), "the server kept fd {fd} open");
        drop(conn);
    }
    assert!(
        fds.iter().all(|&fd| fd == fds[0]),
        "the server's fds were {fds:?}"
    );

    let scrape = await_exchanges(
        &sonde,
        port,
        &[
            (&[&svc, "GET", "/fast", "200"], 9.0),
            (&[&svc, "GET", "/boom", "500"], 6.0),
        ],
        &[("200", 9.0), ("500", 6.0)],
    );
    assert_totals(
        &sonde,
        &scrape,
        &[(HTTP_ANOMALIES, 0.0), (ABANDONED, 0.0)],
        "no anomaly on a reused fd",
    );
    report(&format!(
        "fd reuse: every connection on server fd {}",
        fds[0]
    ));
    stop_after_all_closed(sonde);
}

/// Makes `pid` the next pid the kernel hands out, then runs `spawn`; tries
/// again (other processes may take the pid first) until a server gets it.
fn spawn_with_pid(pid: u32, spawn: impl Fn() -> Server) -> Server {
    const ATTEMPTS: usize = 50;
    for _ in 0..ATTEMPTS {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write /proc/sys/kernel/ns_last_pid");
        let server = spawn();
        if server.pid() == pid {
            return server;
        }
    }
    panic!("no server got pid {pid} in {ATTEMPTS} attempts");
}

/// A server exits and a different program starts with the same pid (and
/// listens on the same port): its requests are its own service's, not
/// those of the process that had the pid before.
#[test]
fn pid_reused_by_another_program_is_named_afresh() {
    let old = servers::python();
    let port = old.port();
    let pid = old.pid();
    let sonde = Sonde::watching_ports(&[port]);
    let old_svc = old.service_name();

    // A client whose keep-alive connection outlives the old server.
    let mut lingering = HttpConn::connect(port).unwrap();
    for _ in 0..3 {
        assert_eq!(lingering.get("/fast").unwrap().status, 200);
    }
    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&old_svc, "GET", "/fast", "200"),
        3.0,
    );
    drop(old);
    let new = spawn_with_pid(pid, || servers::node_on(port));
    let new_svc = new.service_name();
    assert_ne!(new_svc, old_svc, "the same program twice proves nothing");
    let mut conn = HttpConn::connect(port).unwrap();
    for _ in 0..4 {
        assert_eq!(conn.get("/hello").unwrap().status, 200);
    }

    let scrape = await_exchanges(
        &sonde,
        port,
        &[
            (&[&old_svc, "GET", "/fast", "200"], 3.0),
            (&[&new_svc, "GET", "/hello", "200"], 4.0),
        ],
        &[("200", 7.0)],
    );
    assert_totals(
        &sonde,
        &scrape,
        &[(HTTP_ANOMALIES, 0.0), (ABANDONED, 0.0)],
        "nothing abandoned, nothing anomalous",
    );
    report(&format!("pid {pid}: {old_svc}, then {new_svc}"));
    drop((lingering, conn));
    stop_after_all_closed(sonde);
}
