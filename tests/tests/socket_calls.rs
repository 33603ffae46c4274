//! The socket calls the kernel side reads payloads from: data is captured
//! where the socket layer moves it (`sock:sock_{recv,send}_length`), with
//! the syscall's arguments taken from the caller's saved registers. These
//! tests pin down the calls around that path: `sendfile` (no user buffer),
//! `MSG_PEEK` (bytes seen twice by the socket layer, consumed once), a call
//! sonde cannot decode (`splice`), which must be counted (on watched
//! connections only), not guessed, and
//! the end of a connection, seen as the socket's state change.
use std::io::{BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use sonde_tests::clients::{curl, get_request, random_bytes, read_response};
use sonde_tests::names::{self, *};
use sonde_tests::process::exe_basename;
use sonde_tests::servers::{self, Nginx};
use sonde_tests::sonde::{Sonde, SETTLE};

/// A connection to a local port whose reads give up after 5 s.
fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// The client series of `service` calling `port` and answered 200.
fn client_ok<'a>(service: &'a str, port: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("service_name", service),
        ("server_port", port),
        ("http_response_status_code", "200"),
    ]
}

/// nginx sends static files with `sendfile`: the body never passes through
/// a user buffer, yet its size is counted exactly, on both sides.
#[test]
fn sendfile_bodies_are_counted_to_the_byte() {
    const SIZE: usize = 200_000;
    let nginx = Nginx::start();
    nginx.add_static("big.bin", &random_bytes(7, SIZE)).unwrap();
    let port = nginx.server().port();
    let sonde = Sonde::watching_ports(&[port]);
    for _ in 0..3 {
        assert_eq!(
            curl(&nginx.server().url("/static/big.bin"), &[]).unwrap(),
            200
        );
    }

    let labels = names::server("nginx", "GET", "/static/big.bin", "200");
    let scrape = sonde.await_value(SERVER_DURATION_COUNT, &labels, 3.0);
    let body_sum = format!("{SERVER_RESPONSE_BODY}_sum");
    assert_eq!(
        scrape.value(&body_sum, &labels),
        Some(3.0 * SIZE as f64),
        "{}",
        sonde.failure("server response bytes", &scrape)
    );
    let port = port.to_string();
    let client = client_ok("curl", &port);
    assert_eq!(
        scrape.value("http_client_response_body_size_bytes_sum", &client),
        Some(3.0 * SIZE as f64),
        "{}",
        sonde.failure("client response bytes", &scrape)
    );
    assert_eq!(scrape.sum(HTTP_ANOMALIES, &[]), 0.0);
    sonde.stop();
}

/// A reader that peeks at a whole response before reading it: the peeked
/// bytes are not data consumed, so the response is parsed and sized once.
#[test]
fn peeked_bytes_are_not_counted_twice() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let me = exe_basename(std::process::id());

    let mut stream = connect(server.port());
    stream.write_all(&get_request("/fast")).unwrap();
    // Let the whole response arrive, so the peek sees all of it.
    std::thread::sleep(Duration::from_millis(300));
    let mut head = [0u8; 4096];
    // SAFETY: a valid socket and a buffer of the length given.
    let peeked = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            head.as_mut_ptr().cast(),
            head.len(),
            libc::MSG_PEEK,
        )
    };
    assert!(peeked > 0, "peek: {}", std::io::Error::last_os_error());
    assert!(head.starts_with(b"HTTP/1."));
    let response = read_response(&mut BufReader::new(&stream)).unwrap();
    assert_eq!(response.status, 200);

    let port = server.port().to_string();
    let client = client_ok(&me, &port);
    let scrape = sonde.await_value(CLIENT_DURATION_COUNT, &client, 1.0);
    assert_eq!(
        scrape.value("http_client_response_body_size_bytes_sum", &client),
        Some(response.body.len() as f64),
        "{}",
        sonde.failure("the body is sized once", &scrape)
    );
    assert_eq!(
        scrape.sum(HTTP_ANOMALIES, &[]),
        0.0,
        "{}",
        sonde.failure("a peek must not look like a second response", &scrape)
    );
    sonde.stop();
}

/// Sends a GET of `path` to `port` with `splice` (pipe → socket) and reads
/// its 200 with `read`.
fn spliced_get(port: u16, path: &str) {
    let stream = connect(port);
    let request = get_request(path);
    let mut pipe = [0; 2];
    // SAFETY: plain syscalls on fds this test owns; lengths are the buffer's.
    unsafe {
        assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
        assert_eq!(
            libc::write(pipe[1], request.as_ptr().cast(), request.len()),
            request.len() as isize
        );
        let moved = libc::splice(
            pipe[0],
            std::ptr::null_mut(),
            stream.as_raw_fd(),
            std::ptr::null_mut(),
            request.len(),
            0,
        );
        assert_eq!(moved, request.len() as isize, "splice");
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    assert_eq!(
        read_response(&mut BufReader::new(&stream)).unwrap().status,
        200
    );
}

/// A request written with `splice` moves TCP bytes through a call whose
/// buffers sonde does not read: it is counted as lost, and the server's
/// side of the same request, read with `read`, is still measured. The same
/// call on a connection filtered out by port is not sonde's loss: it is not
/// counted.
#[test]
fn spliced_writes_are_counted_as_unsupported() {
    let server = servers::python();
    let unwatched = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    spliced_get(unwatched.port(), "/fast");
    spliced_get(server.port(), "/fast");

    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/fast", "200"),
        1.0,
    );
    // The unwatched splice came first: had it been counted, the count
    // would pass 1 at once.
    let unsupported = [("reason", "unsupported_call")];
    sonde.await_value(EVENTS_LOST, &unsupported, 1.0);
    std::thread::sleep(SETTLE);
    let scrape = sonde.scrape();
    assert_eq!(
        scrape.value(EVENTS_LOST, &unsupported),
        Some(1.0),
        "{}",
        sonde.failure("only the watched splice is counted", &scrape)
    );
    assert_eq!(
        scrape.sum(CLIENT_DURATION_COUNT, &[]),
        0.0,
        "{}",
        sonde.failure("a request sonde did not see cannot be timed", &scrape)
    );
    sonde.stop();
}

/// A response framed by the end of the connection (HTTP/1.0, no length)
/// ends when its server closes: the close comes from the socket's state
/// change, not from a close(2) hook, and still times the response to it.
#[test]
fn close_delimited_response_ends_at_the_servers_close() {
    const PAUSE: Duration = Duration::from_millis(300);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let sonde = Sonde::watching_ports(&[port]);
    let me = exe_basename(std::process::id());

    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request).unwrap();
        conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
            .unwrap();
        std::thread::sleep(PAUSE);
        conn.write_all(b"second part").unwrap();
        // Dropping `conn` closes it: that ends the response.
    });
    let mut stream = connect(port);
    stream.write_all(&get_request("/streamed")).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    server.join().unwrap();
    assert!(response.ends_with(b"first part, second part"));
    drop(stream);

    let labels = names::server(&me, "GET", "/streamed", "200");
    let scrape = sonde.await_value(SERVER_DURATION_COUNT, &labels, 1.0);
    let seconds = scrape.value(SERVER_DURATION_SUM, &labels).unwrap();
    assert!(
        (PAUSE.as_secs_f64()..1.0).contains(&seconds),
        "{}",
        sonde.failure(&format!("server duration {seconds} s"), &scrape)
    );
    let port = port.to_string();
    let client = client_ok(&me, &port);
    let scrape = sonde.await_value(CLIENT_DURATION_COUNT, &client, 1.0);
    assert_eq!(
        scrape.value("http_client_response_body_size_bytes_sum", &client),
        Some("first part, second part".len() as f64),
        "{}",
        sonde.failure("the client sized the body up to the close", &scrape)
    );
    sonde.stop();
}

/// A client that shuts its sending side after the request (a half-close)
/// still reads the reply: the connection is not over, and the request is
/// paired with its response.
#[test]
fn half_closed_client_still_gets_its_response_paired() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let me = exe_basename(std::process::id());

    let mut stream = connect(server.port());
    stream.write_all(&get_request("/fast")).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    // Give the FIN time to change the socket's state before the reply.
    std::thread::sleep(Duration::from_millis(200));
    let response = read_response(&mut BufReader::new(&stream)).unwrap();
    assert_eq!(response.status, 200);

    let port = server.port().to_string();
    let client = client_ok(&me, &port);
    let scrape = sonde.await_value(CLIENT_DURATION_COUNT, &client, 1.0);
    assert_eq!(
        scrape.sum(HTTP_ANOMALIES, &[]),
        0.0,
        "{}",
        sonde.failure("the reply belongs to the half-closed connection", &scrape)
    );
    sonde.stop();
}
