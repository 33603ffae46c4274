//! sonde observing a Node `http` server.
use sonde_tests::clients::HttpConn;
use sonde_tests::names::{self, *};
use sonde_tests::servers;
use sonde_tests::sonde::Sonde;

#[test]
fn node_routes_are_counted_exactly() {
    let server = servers::node();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    let mut conn = HttpConn::connect(server.port()).unwrap();
    let mut plan: Vec<(&str, u16)> = vec![("/hello", 200); 5];
    plan.extend([
        ("/items/1", 200),
        ("/items/22?full=1", 200),
        ("/items/333", 200),
        ("/slow?ms=150", 200),
        ("/slow?ms=150", 200),
        ("/nope", 404),
    ]);
    for (path, status) in &plan {
        assert_eq!(conn.get(path).unwrap().status, *status, "GET {path}");
    }

    for (route, status, count) in [
        ("/hello", "200", 5.0),
        ("/items/{id}", "200", 3.0),
        ("/slow", "200", 2.0),
        ("/nope", "404", 1.0),
    ] {
        sonde.await_value(
            SERVER_DURATION_COUNT,
            &names::server(&svc, "GET", route, status),
            count,
        );
    }
    let scrape = sonde.scrape();
    assert_eq!(
        scrape.sum(SERVER_DURATION_COUNT, &[("service_name", &svc)]),
        plan.len() as f64,
        "{}",
        sonde.failure("requests outside the expected series", &scrape)
    );
    let slow = names::server(&svc, "GET", "/slow", "200");
    for (le, expected) in [(0.1, 0.0), (0.25, 2.0)] {
        assert_eq!(
            scrape.bucket(SERVER_DURATION, &slow, le),
            Some(expected),
            "{}",
            sonde.failure(&format!("/slow bucket le={le}"), &scrape)
        );
    }
    drop(conn);
    sonde.stop();
}
