//! sonde observing Python's threaded `http.server`: counts per route and
//! status, histogram buckets, the in-flight gauge, body sizes.
use sonde_tests::clients::{curl, post_request, random_bytes, HttpConn};
use sonde_tests::names::{self, *};
use sonde_tests::servers;
use sonde_tests::sonde::Sonde;

#[test]
fn counts_requests_per_route_and_status() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    let mut conn = HttpConn::connect(server.port()).unwrap();
    let mut plan: Vec<(&str, u16)> = vec![("/fast", 200); 7];
    plan.extend([
        ("/users/42?x=1", 200),
        ("/users/7", 200),
        ("/users/3f2504e0-4f89-11d3-9a0c-0305e82c3301", 200),
        ("/missing", 404),
        ("/missing?page=2", 404),
        ("/boom", 500),
    ]);
    for (path, status) in &plan {
        assert_eq!(conn.get(path).unwrap().status, *status, "GET {path}");
    }

    for (route, status, count) in [
        ("/fast", "200", 7.0),
        ("/users/{id}", "200", 3.0),
        ("/missing", "404", 2.0),
        ("/boom", "500", 1.0),
    ] {
        let labels = names::server(&svc, "GET", route, status);
        sonde.await_value(SERVER_DURATION_COUNT, &labels, count);
    }
    let scrape = sonde.scrape();
    let service = [("service_name", svc.as_str())];
    assert_eq!(
        scrape.sum(SERVER_DURATION_COUNT, &service),
        plan.len() as f64,
        "{}",
        sonde.failure("requests outside the four expected series", &scrape)
    );
    for series in scrape.find(SERVER_DURATION_COUNT, &service) {
        assert_eq!(
            series.label("network_protocol_version"),
            Some("1.1"),
            "{series}"
        );
    }
    drop(conn);
    sonde.stop();
}

#[test]
fn latency_lands_in_the_right_buckets() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    let mut conn = HttpConn::connect(server.port()).unwrap();
    for _ in 0..4 {
        assert_eq!(conn.get("/sleep?ms=300").unwrap().status, 200);
    }

    let labels = names::server(&svc, "GET", "/sleep", "200");
    let scrape = sonde.await_value(SERVER_DURATION_COUNT, &labels, 4.0);
    let bounds: Vec<f64> = scrape
        .find(&format!("{SERVER_DURATION}_bucket"), &labels)
        .map(|s| s.label("le").unwrap().parse::<f64>().unwrap())
        .collect();
    assert_eq!(
        bounds,
        [
            0.005,
            0.01,
            0.025,
            0.05,
            0.075,
            0.1,
            0.25,
            0.5,
            0.75,
            1.0,
            2.5,
            5.0,
            7.5,
            10.0,
            f64::INFINITY
        ],
        "bucket bounds"
    );
    for (le, expected) in [
        (0.1, 0.0),
        (0.25, 0.0),
        (0.5, 4.0),
        (0.75, 4.0),
        (1.0, 4.0),
        (10.0, 4.0),
        (f64::INFINITY, 4.0),
    ] {
        assert_eq!(
            scrape.bucket(SERVER_DURATION, &labels, le),
            Some(expected),
            "{}",
            sonde.failure(&format!("bucket le={le}"), &scrape)
        );
    }
    let sum = scrape.value(SERVER_DURATION_SUM, &labels).unwrap();
    assert!(
        (1.2..2.0).contains(&sum),
        "4 × 300 ms summed to {sum} s\n{}",
        sonde.failure("sum out of range", &scrape)
    );
    drop(conn);
    sonde.stop();
}

#[test]
fn in_flight_gauge_follows_held_requests() {
    const HELD: usize = 5;
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();
    let hold = names::route(&svc, "GET", "/hold");

    let mut held: Vec<HttpConn> = (0..HELD)
        .map(|_| {
            let mut conn = HttpConn::connect(server.port()).unwrap();
            conn.send(b"GET /hold?key=gauge HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            conn
        })
        .collect();
    sonde.await_value(SERVER_ACTIVE, &hold, HELD as f64);

    let mut releaser = HttpConn::connect(server.port()).unwrap();
    assert_eq!(releaser.get("/release?key=gauge").unwrap().status, 200);
    for conn in &mut held {
        assert_eq!(conn.read_response().unwrap().status, 200);
    }

    // Once idle, a gauge may be exported as 0 or dropped.
    sonde.await_scrape("/hold in-flight back to 0", |s| {
        s.value(SERVER_ACTIVE, &hold).unwrap_or(0.0) == 0.0
    });
    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/hold", "200"),
        HELD as f64,
    );
    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/release", "200"),
        1.0,
    );
    sonde.stop();
}

#[test]
fn connection_close_requests_each_count_once() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    for _ in 0..10 {
        let status = curl(&server.url("/fast"), &["-H", "Connection: close"]).unwrap();
        assert_eq!(status, 200);
    }

    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/fast", "200"),
        10.0,
    );
    sonde.stop();
}

#[test]
fn request_and_response_body_sizes() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    let mut conn = HttpConn::connect(server.port()).unwrap();
    for seed in [1, 2] {
        let body = random_bytes(seed, 1000);
        conn.send(&post_request("/echo", &body)).unwrap();
        let response = conn.read_response().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, body, "echoed body");
    }

    let echo = names::route(&svc, "POST", "/echo");
    sonde.await_value(&format!("{SERVER_REQUEST_BODY}_count"), &echo, 2.0);
    let scrape = sonde.await_value(&format!("{SERVER_REQUEST_BODY}_sum"), &echo, 2000.0);
    for (name, expected) in [
        (format!("{SERVER_RESPONSE_BODY}_count"), 2.0),
        (format!("{SERVER_RESPONSE_BODY}_sum"), 2000.0),
    ] {
        assert_eq!(
            scrape.value(&name, &echo),
            Some(expected),
            "{}",
            sonde.failure(&name, &scrape)
        );
    }
    drop(conn);
    sonde.stop();
}
