//! Hostile bytes on watched ports, beside legitimate traffic: other binary
//! protocols (Redis, HTTP/2 with prior knowledge), header blocks of 64 KiB,
//! request lines longer than the capture, and paths made to break labels.
//!
//! Each test asserts sonde's whole ledger exactly: every request series, and
//! every anomaly, abandon, drop and loss counter that is not zero. So the
//! legitimate traffic is counted exactly, the hostile traffic is counted
//! exactly where it belongs, and nothing else appears. The behaviour these
//! tests pin down:
//!
//! - Bytes that do not start like HTTP/1.x at an end of a connection are
//!   refused in the kernel and counted once per end as it closes
//!   (`sonde_connections_not_http_total`).
//! - An HTTP/1 response to a request that was not HTTP/1 (nginx answers the
//!   HTTP/2 preface and RESP with `400`) is a response without a request:
//!   `unpaired_response` at each end that saw it, never a series.
//! - A request head the capture cuts short, too large to hold, or answered
//!   before its end (a 431) is counted (`capture_gap` at its end,
//!   `head_too_large`, `bad_head`) and still paired with its response under
//!   the route its complete path segments give, ending in `{truncated}` when
//!   the path itself was cut: never a route invented from a partial segment.
//! - Control bytes or a bare LF in a request target make the request line
//!   invalid (RFC 9112): `bad_head` at each end, no series, whatever the
//!   server answered.
//! - Any other path becomes a label that is valid text exposition (quotes,
//!   backslashes escaped; percent-escapes and bytes outside printable ASCII
//!   make the segment `{id}`), with no query string, and within the
//!   per-service route budget.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sonde_tests::clients::{
    h2_preface, raw_get, read_response, resp_command, send_raw, send_raw_writes, HttpConn,
};
use sonde_tests::names::*;
use sonde_tests::process::exe_basename;
use sonde_tests::prom::Scrape;
use sonde_tests::servers::{self, Nginx, NginxConfig};
use sonde_tests::sonde::{Sonde, METRICS_TIMEOUT, SETTLE};

/// How long a raw exchange waits for the server's last word.
const LINGER: Duration = Duration::from_millis(500);
/// Legitimate requests sent on each server before and after the hostile ones.
const LEGIT: u32 = 3;
/// sonde's `--capture-bytes` default.
const DEFAULT_CAPTURE: u32 = 1024;

/// The counters whose every non-zero series is part of the ledger.
const COUNTERS: [&str; 7] = [
    HTTP_ANOMALIES,
    "sonde_requests_abandoned_total",
    "sonde_connections_not_http_total",
    "sonde_series_dropped_total",
    "sonde_http_incomplete_responses_total",
    "sonde_decode_errors_total",
    EVENTS_LOST,
];

/// Every non-zero count of a scrape that a test accounts for, keyed
/// `server <service> <method> <route> <status>`,
/// `client <service> <server port> <status>`, or `<counter> <label value>`.
fn ledger(scrape: &Scrape) -> BTreeMap<String, f64> {
    let label = |s: &sonde_tests::prom::Sample, k| s.label(k).unwrap_or("?").to_string();
    scrape
        .samples()
        .iter()
        .filter(|s| s.value != 0.0)
        .filter_map(|s| {
            let key = match s.name.as_str() {
                SERVER_DURATION_COUNT => format!(
                    "server {} {} {} {}",
                    label(s, "service_name"),
                    label(s, "http_request_method"),
                    label(s, "http_route"),
                    label(s, "http_response_status_code")
                ),
                CLIENT_DURATION_COUNT => format!(
                    "client {} {} {}",
                    label(s, "service_name"),
                    label(s, "server_port"),
                    label(s, "http_response_status_code")
                ),
                name if COUNTERS.contains(&name) => {
                    let values: Vec<&str> = s.labels.iter().map(|(_, v)| v.as_str()).collect();
                    format!("{name} {}", values.join(" "))
                        .trim_end()
                        .to_string()
                }
                _ => return None,
            };
            Some((key, s.value))
        })
        .collect()
}

/// The ledger a test expects, summing entries named twice.
fn expect(entries: &[(String, f64)]) -> BTreeMap<String, f64> {
    let mut ledger = BTreeMap::new();
    for (key, count) in entries {
        *ledger.entry(key.clone()).or_insert(0.0) += count;
    }
    ledger
}

fn server(service: &str, route: &str, status: u16) -> String {
    format!("server {service} GET {route} {status}")
}

fn client(port: u16, status: u16) -> String {
    format!("client {} {port} {status}", me())
}

fn anomaly(reason: &str) -> String {
    format!("{HTTP_ANOMALIES} {reason}")
}

const NOT_HTTP: &str = "sonde_connections_not_http_total";

/// This test process: the client of every request the tests make.
fn me() -> String {
    exe_basename(std::process::id())
}

/// Waits until sonde's ledger is `want`, checks it stays so, and that no
/// series names a route outside `routes`; returns the last scrape.
fn await_ledger(sonde: &Sonde, want: &BTreeMap<String, f64>, routes: &[&str]) -> Scrape {
    let deadline = METRICS_TIMEOUT * 2;
    let mut last = sonde.scrape();
    let started = std::time::Instant::now();
    while ledger(&last) != *want && started.elapsed() < deadline {
        thread::sleep(Duration::from_millis(100));
        last = sonde.scrape();
    }
    thread::sleep(SETTLE);
    let settled = sonde.scrape();
    let got = ledger(&settled);
    assert!(
        got == *want,
        "{}",
        sonde.failure(
            &format!("ledger differs\n want: {want:#?}\n  got: {got:#?}"),
            &settled
        )
    );
    let bogus: BTreeSet<&str> = settled
        .samples()
        .iter()
        .filter_map(|s| s.label("http_route"))
        .filter(|r| !routes.contains(r))
        .collect();
    assert!(
        bogus.is_empty(),
        "{}",
        sonde.failure(&format!("bogus routes {bogus:?}"), &settled)
    );
    assert_eq!(sonde.get("/healthz").unwrap().status, 200);
    settled
}

/// sonde watching `ports`, with `flags` (flag, value) set.
fn sonde_with(ports: &[u16], flags: &[(&str, String)]) -> Sonde {
    let mut args: Vec<String> = ports
        .iter()
        .flat_map(|port| ["--port".to_string(), port.to_string()])
        .collect();
    for (flag, value) in flags {
        args.extend([flag.to_string(), value.clone()]);
    }
    Sonde::start(&args).unwrap_or_else(|e| panic!("{e:?}"))
}

/// `LEGIT` keep-alive `GET /fast`s, each answered 200.
fn legit(port: u16) -> HttpConn {
    let mut conn = HttpConn::connect(port).unwrap();
    for _ in 0..LEGIT {
        assert_eq!(conn.get("/fast").unwrap().status, 200);
    }
    conn
}

/// A server that speaks no protocol: for each of `connections` clients it
/// reads until the client is silent for a while, then closes.
fn mute_server(connections: usize) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let serve = thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let mut stream = stream.unwrap();
            stream
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0; 4096];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    (port, serve)
}

/// The status of the HTTP/1 response `answer` begins with.
fn status_of(answer: &[u8]) -> u16 {
    read_response(&mut &answer[..])
        .unwrap_or_else(|e| panic!("{e:?}: {:?}", String::from_utf8_lossy(answer)))
        .status
}

#[test]
fn binary_protocols_to_a_mute_server_are_not_http() {
    let python = servers::python();
    let conversations: Vec<Vec<Vec<u8>>> = vec![
        // A Redis client: one command per write, then pipelined in one.
        vec![
            resp_command(&["PING"]),
            resp_command(&["SET", "session", "x"]),
            resp_command(&["GET", "session"]),
            resp_command(&["QUIT"]),
        ],
        vec![[resp_command(&["PING"]), resp_command(&["INFO"])].concat()],
        // HTTP/2 with prior knowledge: preface and SETTINGS in one write, then in two.
        vec![h2_preface()],
        vec![h2_preface()[..24].to_vec(), h2_preface()[24..].to_vec()],
    ];
    let (mute, serve) = mute_server(conversations.len());
    let sonde = Sonde::watching_ports(&[python.port(), mute]);
    let py = python.service_name();

    let before = legit(python.port());
    for writes in &conversations {
        let writes: Vec<&[u8]> = writes.iter().map(Vec::as_slice).collect();
        let answer = send_raw_writes(mute, &writes, Duration::from_millis(50), LINGER).unwrap();
        assert!(answer.is_empty(), "the mute server spoke");
    }
    serve.join().unwrap();
    let after = legit(python.port());

    // Each end of each conversation is refused in the kernel, once.
    let n = conversations.len() as f64;
    let want = expect(&[
        (server(&py, "/fast", 200), 2.0 * f64::from(LEGIT)),
        (client(python.port(), 200), 2.0 * f64::from(LEGIT)),
        (NOT_HTTP.into(), 2.0 * n),
    ]);
    await_ledger(&sonde, &want, &["/fast"]);
    drop((before, after));
    sonde.stop();
}

#[test]
fn binary_protocols_to_http_servers() {
    let python = servers::python();
    let nginx = Nginx::start();
    let ng = nginx.server();
    let sonde = Sonde::watching_ports(&[python.port(), ng.port()]);
    let py = python.service_name();

    let before = (legit(python.port()), legit(ng.port()));
    let hostile = [h2_preface(), resp_command(&["PING"])];
    let mut want = vec![
        (server(&py, "/fast", 200), 2.0 * f64::from(LEGIT)),
        (client(python.port(), 200), 2.0 * f64::from(LEGIT)),
        (server("nginx", "/fast", 200), 2.0 * f64::from(LEGIT)),
        (client(ng.port(), 200), 2.0 * f64::from(LEGIT)),
    ];
    for bytes in &hostile {
        // nginx answers with an HTTP/1 head (400) and closes: each end sees
        // a response with no request.
        let answer = send_raw(ng.port(), bytes, LINGER).unwrap();
        assert_eq!(status_of(&answer), 400);
        want.push((anomaly("unpaired_response"), 2.0));

        // Python's http.server (3.11) answers as to HTTP/0.9, an HTML page
        // without a head: nothing on the connection is HTTP. A Python that
        // answers with a head is counted as nginx is.
        let answer = send_raw(python.port(), bytes, LINGER).unwrap();
        if answer.starts_with(b"HTTP/1.") {
            want.push((anomaly("unpaired_response"), 2.0));
        } else {
            assert!(answer.starts_with(b"<!DOCTYPE HTML>"), "{answer:?}");
            want.push((NOT_HTTP.into(), 2.0));
        }
    }
    let after = (legit(python.port()), legit(ng.port()));

    await_ledger(&sonde, &expect(&want), &["/fast"]);
    assert_eq!(nginx.access_log_lines(), 2 * LEGIT as usize + hostile.len());
    drop((before, after));
    sonde.stop();
}

/// `count` fields `X-Filler-NNN: vvv…` of `value_len`-byte values. Names
/// and values mix case so that no read starting inside them looks like a
/// request line.
fn filler_fields(count: usize, value_len: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("X-Filler-{i:03}: {}", "v".repeat(value_len)))
        .collect()
}

/// 64 KiB header blocks, as many fields and as one huge field, to nginx
/// (whose buffers are made large enough) and Python (which refuses more
/// than 100 fields with 431, and takes a field line up to 64 KiB).
fn header_blocks_of_64_kib(capture: u32) {
    let python = servers::python();
    let nginx = Nginx::with_config(&NginxConfig {
        large_header_buffers: Some("4 128k"),
        ..NginxConfig::default()
    })
    .unwrap();
    let ng = nginx.server();
    // The servers' ends only: Python resets the connection after its 431
    // (the rest of the head is unread), and what the client's end makes of
    // that is `a_reset_does_not_end_a_connection_before_its_answer_is_read`.
    let sonde = sonde_with(
        &[python.port(), ng.port()],
        &[
            ("--capture-bytes", capture.to_string()),
            ("--pid", python.pid().to_string()),
            ("--pid", ng.pid().to_string()),
        ],
    );
    let py = python.service_name();

    let many = raw_get(b"/headers/many", &filler_fields(600, 100));
    let huge = raw_get(
        b"/headers/huge",
        &[format!("X-Big: {}", "v".repeat(65_000))],
    );
    assert!(many.len() > 64 * 1024 && huge.len() > 63 * 1024 && huge.len() < 64 * 1024);

    // How the server's end saw each head. An end that reads a head in
    // pieces larger than the capture sees it cut (`capture_gap`): nginx's
    // second read (into its large buffer), Python's 8 KiB reads. At the
    // largest capture Python's reads are seen whole: the huge field outgrows
    // what sonde holds (`head_too_large`), and the 101st field is refused
    // before the head ends (`bad_head`).
    let whole_reads = capture >= 8192;
    let (many_route, huge_route) = ("/headers/many", "/headers/huge");
    let cases = [
        (ng, "nginx", many_route, 200, "capture_gap"),
        (ng, "nginx", huge_route, 200, "capture_gap"),
        (
            &python,
            py.as_str(),
            many_route,
            431,
            if whole_reads {
                "bad_head"
            } else {
                "capture_gap"
            },
        ),
        (
            &python,
            py.as_str(),
            huge_route,
            404,
            if whole_reads {
                "head_too_large"
            } else {
                "capture_gap"
            },
        ),
    ];
    let before = (legit(python.port()), legit(ng.port()));
    let legit_count = 2.0 * f64::from(LEGIT);
    let mut want = vec![
        (server(&py, "/fast", 200), legit_count),
        (server("nginx", "/fast", 200), legit_count),
    ];
    for (target, service, route, status, server_end) in cases {
        let request = if route == many_route { &many } else { &huge };
        let mut conn = HttpConn::connect(target.port()).unwrap();
        conn.send(request).unwrap();
        assert_eq!(conn.read_response().unwrap().status, status);
        want.push((server(service, route, status), 1.0));
        want.push((anomaly(server_end), 1.0));
    }
    let after = (legit(python.port()), legit(ng.port()));
    let want = expect(&want);
    await_ledger(&sonde, &want, &["/fast", "/headers/many", "/headers/huge"]);
    drop((before, after));
    sonde.stop();
}

#[test]
fn header_blocks_of_64_kib_at_the_default_capture() {
    header_blocks_of_64_kib(DEFAULT_CAPTURE);
}

#[test]
fn header_blocks_of_64_kib_at_the_largest_capture() {
    header_blocks_of_64_kib(8192);
}

/// Request lines longer than the capture: each is cut inside its path (or
/// its query), counted `capture_gap` at both ends, and paired under the
/// route of its complete segments.
fn request_lines_longer_than_the_capture(capture: u32) {
    let python = servers::python();
    let sonde = sonde_with(
        &[python.port()],
        &[("--capture-bytes", capture.to_string())],
    );
    let py = python.service_name();

    let long = |prefix: &str, filler: &str| format!("{prefix}{}", filler.repeat(3000));
    let segments = "/abc".repeat(29);
    let cases = [
        // (target, route, status)
        (long("/", "p"), "/{truncated}".to_string(), 404),
        (long("/api/v1/", "x"), "/api/v1/{truncated}".into(), 404),
        // The cut id is not taken for an id: it might go on with a '/'.
        (long("/users/", "1"), "/users/{truncated}".into(), 200),
        // Many short segments: at most 128 bytes, cut at a segment boundary.
        (long("", "/abc"), format!("{segments}/{{truncated}}"), 404),
        // The path is whole before its query: nothing is truncated.
        (long("/search?q=", "s"), "/search".into(), 404),
    ];
    let before = legit(python.port());
    let mut conn = HttpConn::connect(python.port()).unwrap();
    for (target, _, status) in &cases {
        assert!(target.len() > 2 * capture as usize);
        conn.send(&raw_get(target.as_bytes(), &[])).unwrap();
        assert_eq!(
            conn.read_response().unwrap().status,
            *status,
            "{target:.40}"
        );
    }
    let after = legit(python.port());

    let legit_count = 2.0 * f64::from(LEGIT);
    let mut want = vec![
        (server(&py, "/fast", 200), legit_count),
        (client(python.port(), 200), legit_count),
        (anomaly("capture_gap"), 2.0 * cases.len() as f64),
    ];
    let mut routes = vec!["/fast"];
    for (_, route, status) in &cases {
        want.push((server(&py, route, *status), 1.0));
        want.push((client(python.port(), *status), 1.0));
        routes.push(route);
    }
    let scrape = await_ledger(&sonde, &expect(&want), &routes);
    assert!(!scrape.text().contains("sss"), "a query string leaked");
    drop((before, after, conn));
    sonde.stop();
}

#[test]
fn request_lines_longer_than_the_default_capture() {
    request_lines_longer_than_the_capture(DEFAULT_CAPTURE);
}

#[test]
fn request_lines_longer_than_a_small_capture() {
    request_lines_longer_than_the_capture(256);
}

/// `promtool check metrics` on `text`: the exposition Prometheus parses.
fn promtool_check(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (installed with prometheus by `cargo xtask setup`)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {:?}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn hostile_paths_make_valid_labels() {
    let python = servers::python();
    let sonde = Sonde::watching_ports(&[python.port()]);
    let py = python.service_name();

    // (target, route): answered 404 by Python but for /users/.
    let labelled: &[(&[u8], &str)] = &[
        (b"/a%20b", "/{id}"),
        (b"/caf%C3%A9", "/{id}"),
        (b"/%ZZ", "/{id}"),
        (b"/caf\xc3\xa9", "/{id}"),
        (b"/x/\xff\xfe", "/x/{id}"),
        (b"/nl%0A%0Dlabel", "/{id}"),
        (b"/q\"uote", "/q\"uote"),
        (b"/back\\slash", "/back\\slash"),
        (b"/brace}{,=", "/brace}{,="),
        (b"/search?token=SECRET&q=x", "/search"),
        (b"/users/42?password=SECRET", "/users/{id}"),
    ];
    let before = legit(python.port());
    let mut conn = HttpConn::connect(python.port()).unwrap();
    let mut want = vec![
        (server(&py, "/fast", 200), 2.0 * f64::from(LEGIT)),
        (client(python.port(), 200), 2.0 * f64::from(LEGIT)),
    ];
    // Twice: the same path makes the same label.
    for (target, route) in labelled.iter().chain(labelled) {
        conn.send(&raw_get(target, &[])).unwrap();
        let status = conn.read_response().unwrap().status;
        assert_eq!(
            status,
            if route.starts_with("/users/") {
                200
            } else {
                404
            }
        );
        want.push((server(&py, route, status), 1.0));
        want.push((client(python.port(), status), 1.0));
    }
    // Control bytes in the target: Python answers (a tab splits the line in
    // four words: 400), sonde sees an invalid request line at each end and
    // pairs nothing.
    let controls: [(&[u8], u16); 3] = [(b"/ctl\x01x", 404), (b"/tab\tx", 400), (b"/del\x7fx", 404)];
    for (target, status) in controls {
        let answer = send_raw(python.port(), &raw_get(target, &[]), LINGER).unwrap();
        assert_eq!(status_of(&answer), status);
        want.push((anomaly("bad_head"), 2.0));
    }
    // A bare LF ends the request line early: Python takes `GET /nl` for
    // HTTP/0.9 and answers with a body alone, which is no HTTP/1 head either.
    let answer = send_raw(python.port(), &raw_get(b"/nl\nx", &[]), LINGER).unwrap();
    assert_eq!(answer, b"not found\n");
    want.push((anomaly("bad_head"), 4.0));
    let after = legit(python.port());

    let routes: Vec<&str> = labelled.iter().map(|(_, r)| *r).chain(["/fast"]).collect();
    let scrape = await_ledger(&sonde, &expect(&want), &routes);
    assert!(!scrape.text().contains("SECRET"), "a query string leaked");
    promtool_check(scrape.text());
    drop((before, after, conn));
    sonde.stop();
}

#[test]
fn hostile_paths_beyond_the_route_budget_overflow() {
    const BUDGET: usize = 8;
    const HOSTILE: usize = 30;
    let python = servers::python();
    let sonde = sonde_with(
        &[python.port()],
        &[("--max-routes-per-service", BUDGET.to_string())],
    );
    let py = python.service_name();

    // Word-like segments with the characters that need escaping: each is a
    // route of its own, so only the budget bounds them.
    let word = |i: usize| -> String {
        let letters: String = [i / 26, i % 26]
            .iter()
            .map(|&d| char::from(b'a' + d as u8))
            .collect();
        format!("/\"{letters}\\\"")
    };
    let before = legit(python.port());
    let mut conn = HttpConn::connect(python.port()).unwrap();
    for i in 0..HOSTILE {
        conn.send(&raw_get(word(i).as_bytes(), &[])).unwrap();
        assert_eq!(conn.read_response().unwrap().status, 404);
    }
    let after = legit(python.port());

    // /fast came first; then the budget admits BUDGET - 1 hostile routes.
    let admitted = BUDGET - 1;
    let overflowed = (HOSTILE - admitted) as f64;
    let mut want = vec![
        (server(&py, "/fast", 200), 2.0 * f64::from(LEGIT)),
        (client(python.port(), 200), 2.0 * f64::from(LEGIT)),
        (client(python.port(), 404), HOSTILE as f64),
        (server(&py, "{overflow}", 404), overflowed),
        ("sonde_series_dropped_total route".into(), overflowed),
    ];
    let admitted_routes: Vec<String> = (0..admitted).map(word).collect();
    for route in &admitted_routes {
        want.push((server(&py, route, 404), 1.0));
    }
    let routes: Vec<&str> = admitted_routes
        .iter()
        .map(String::as_str)
        .chain(["/fast", "{overflow}"])
        .collect();
    let scrape = await_ledger(&sonde, &expect(&want), &routes);
    promtool_check(scrape.text());
    drop((before, after, conn));
    sonde.stop();
}

/// A reset moves an established socket to CLOSE while its owner still holds
/// it and has not read the answer queued before the reset. Here Python
/// refuses 101 fields with 431 and closes with the rest of the head unread,
/// which resets the connection; the client reads the 431 only after the
/// reset. The connection must last until the client lets the socket go, so
/// the 431 pairs with its request (not `closed_unanswered` plus an
/// `unpaired_response` on a connection of its own).
#[test]
fn a_reset_does_not_end_a_connection_before_its_answer_is_read() {
    let python = servers::python();
    let sonde = Sonde::watching_ports(&[python.port()]);
    let py = python.service_name();

    let mut conn = HttpConn::connect(python.port()).unwrap();
    conn.send(&raw_get(b"/fields", &filler_fields(600, 100)))
        .unwrap();
    // Long enough for the reset to arrive before the read.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(conn.read_response().unwrap().status, 431);

    let want = expect(&[
        (server(&py, "/fields", 431), 1.0),
        (client(python.port(), 431), 1.0),
        (anomaly("capture_gap"), 2.0),
    ]);
    await_ledger(&sonde, &want, &["/fields"]);
    drop(conn);
    sonde.stop();
}
