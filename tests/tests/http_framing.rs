//! How requests are framed on the wire: pipelined, fragmented, chunked
//! responses, connections older than sonde, `Expect: 100-continue`.
use std::time::Duration;

use sonde_tests::clients::{get_request, random_bytes, HttpConn};
use sonde_tests::names::{self, *};
use sonde_tests::servers;
use sonde_tests::sonde::Sonde;

#[test]
fn pipelined_requests_in_one_write_pair_in_order() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    let paths = ["/fast", "/missing", "/fast", "/missing", "/fast"];
    let pipeline: Vec<u8> = paths.iter().flat_map(|p| get_request(p)).collect();
    let mut conn = HttpConn::connect(server.port()).unwrap();
    conn.send(&pipeline).unwrap();
    let statuses: Vec<u16> = paths
        .iter()
        .map(|_| conn.read_response().unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 404, 200, 404, 200]);

    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/fast", "200"),
        3.0,
    );
    let scrape = sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/missing", "404"),
        2.0,
    );
    assert_eq!(
        scrape.sum(SERVER_DURATION_COUNT, &[("service_name", &svc)]),
        5.0,
        "{}",
        sonde.failure("only the two expected series", &scrape)
    );
    drop(conn);
    sonde.stop();
}

#[test]
fn request_split_mid_request_line_counts_once() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    let mut conn = HttpConn::connect(server.port()).unwrap();
    conn.send_fragments(
        &[b"GET /fa", b"st HTTP/1.1\r\nHost: 127.0", b".0.1\r\n\r\n"],
        Duration::from_millis(50),
    )
    .unwrap();
    assert_eq!(conn.read_response().unwrap().status, 200);

    let scrape = sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/fast", "200"),
        1.0,
    );
    assert_eq!(
        scrape.sum(SERVER_DURATION_COUNT, &[("service_name", &svc)]),
        1.0,
        "{}",
        sonde.failure("fragments must not become extra requests", &scrape)
    );
    drop(conn);
    sonde.stop();
}

#[test]
fn chunked_response_is_timed_to_its_last_chunk() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    let mut conn = HttpConn::connect(server.port()).unwrap();
    // Four parts 200 ms apart: the response ends ~600 ms after it starts.
    let response = conn.get("/chunked?parts=4&gap_ms=200").unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"part 0\npart 1\npart 2\npart 3\n");

    let labels = names::server(&svc, "GET", "/chunked", "200");
    let scrape = sonde.await_value(SERVER_DURATION_COUNT, &labels, 1.0);
    for (le, expected) in [(0.5, 0.0), (0.75, 1.0), (1.0, 1.0)] {
        assert_eq!(
            scrape.bucket(SERVER_DURATION, &labels, le),
            Some(expected),
            "{}",
            sonde.failure(&format!("bucket le={le}"), &scrape)
        );
    }
    drop(conn);
    sonde.stop();
}

/// A keep-alive connection opened before sonde started: only the requests
/// made after it attached count, and every one of them does.
fn keep_alive_connection_older_than_sonde(server: servers::Server, route: &str) {
    let svc = server.service_name();
    let mut conn = HttpConn::connect(server.port()).unwrap();
    assert_eq!(conn.get(route).unwrap().status, 200);

    let sonde = Sonde::watching_ports(&[server.port()]);
    for _ in 0..3 {
        assert_eq!(conn.get(route).unwrap().status, 200);
    }

    let scrape = sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", route, "200"),
        3.0,
    );
    assert_eq!(
        scrape.sum(SERVER_DURATION_COUNT, &[("service_name", &svc)]),
        3.0,
        "{}",
        sonde.failure("the request before sonde started must not count", &scrape)
    );
    drop(conn);
    sonde.stop();
}

/// Node reads only once epoll says data is there: every read syscall of the
/// later requests starts after sonde attached.
#[test]
fn keep_alive_connection_older_than_sonde_event_loop_server() {
    keep_alive_connection_older_than_sonde(servers::node(), "/hello");
}

/// Python's handler thread is already blocked in `recv` when sonde attaches:
/// the read that returns the next request began before the programs did.
#[test]
fn keep_alive_connection_older_than_sonde_blocked_reader() {
    keep_alive_connection_older_than_sonde(servers::python(), "/fast");
}

#[test]
fn expect_100_continue_counts_only_the_final_response() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    let body = random_bytes(100, 1000);
    let mut conn = HttpConn::connect(server.port()).unwrap();
    conn.send(
        b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        conn.read_response().unwrap().status,
        100,
        "interim response"
    );
    conn.send(&body).unwrap();
    let response = conn.read_response().unwrap();
    assert_eq!(response.status, 200, "final response");
    assert_eq!(response.body, body);

    let scrape = sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "POST", "/echo", "200"),
        1.0,
    );
    assert_eq!(
        scrape.sum(SERVER_DURATION_COUNT, &[("service_name", &svc)]),
        1.0,
        "{}",
        sonde.failure("one exchange, no series for the interim 100", &scrape)
    );
    let interim = scrape.sum(
        SERVER_DURATION_COUNT,
        &[("http_response_status_code", "100")],
    );
    assert_eq!(
        interim,
        0.0,
        "{}",
        sonde.failure("status 100 series", &scrape)
    );
    drop(conn);
    sonde.stop();
}
