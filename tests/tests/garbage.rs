//! Bytes that are not HTTP on a watched port: sonde must stay healthy and
//! must not invent series from them.
use std::time::Duration;

use sonde_tests::clients::{random_bytes, send_raw, tls_client_hello, HttpConn};
use sonde_tests::names::{self, *};
use sonde_tests::process::report;
use sonde_tests::servers;
use sonde_tests::sonde::Sonde;

#[test]
fn non_http_bytes_create_no_series() {
    let server = servers::python();
    let mut sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    let mut get_then_garbage = b"GET ".to_vec();
    get_then_garbage.extend(random_bytes(2, 1024));
    for (what, bytes) in [
        ("random bytes", random_bytes(1, 4096)),
        ("GET and random bytes", get_then_garbage),
        ("TLS ClientHello", tls_client_hello("localhost")),
    ] {
        send_raw(server.port(), &bytes, Duration::from_millis(500))
            .unwrap_or_else(|e| panic!("send {what}: {e:?}"));
    }
    let mut conn = HttpConn::connect(server.port()).unwrap();
    assert_eq!(conn.get("/fast").unwrap().status, 200);

    let scrape = sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/fast", "200"),
        1.0,
    );
    let bogus: Vec<String> = scrape
        .samples()
        .iter()
        .filter(|s| s.name.starts_with("http_"))
        .filter(|s| {
            s.label("http_route").is_some_and(|r| r != "/fast")
                || s.label("http_response_status_code")
                    .is_some_and(|c| c != "200")
        })
        .map(|s| s.to_string())
        .collect();
    assert!(
        bogus.is_empty(),
        "{}",
        sonde.failure(&format!("series from garbage: {bogus:#?}"), &scrape)
    );
    assert_eq!(
        scrape.sum(SERVER_DURATION_COUNT, &[]),
        1.0,
        "{}",
        sonde.failure("only the valid request is a server exchange", &scrape)
    );

    // Each garbage connection is refused in the kernel at both of its ends
    // (the test's write, the server's read), and counted there as it closes:
    // "GET " is not followed by "/", so it is not taken for a request either,
    // and Python answers none of them with an HTTP head.
    let scrape = sonde.await_value("sonde_connections_not_http_total", &[], 6.0);
    assert_eq!(sonde.get("/healthz").unwrap().status, 200);
    assert!(sonde.is_running(), "sonde died:\n{}", sonde.output());
    report(&format!(
        "after garbage: {}",
        scrape
            .excerpt(&[HTTP_ANOMALIES, "sonde_connections_not_http"])
            .replace('\n', "; ")
    ));
    drop(conn);
    sonde.stop();
}
