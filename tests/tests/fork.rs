//! Sockets inherited across fork: a pre-forking server whose parent accepts
//! and whose child serves. The kernel finds the child's connection on its
//! first read (the accept happened in another process), reads its ports
//! from the socket, and the content says it is the server side.
use sonde_tests::clients::HttpConn;
use sonde_tests::names::{self, *};
use sonde_tests::servers;
use sonde_tests::sonde::Sonde;

#[test]
fn connections_served_by_a_forked_child_are_counted() {
    let server = servers::python_forking();
    // --port selects the server by its local port: only a connection whose
    // addresses were read from the inherited socket passes it.
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    let mut first = HttpConn::connect(server.port()).unwrap();
    for path in ["/fast", "/users/1", "/users/2"] {
        assert_eq!(first.get(path).unwrap().status, 200, "GET {path}");
    }
    let mut second = HttpConn::connect(server.port()).unwrap();
    for path in ["/fast", "/missing"] {
        second.get(path).unwrap();
    }

    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/fast", "200"),
        2.0,
    );
    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/users/{id}", "200"),
        2.0,
    );
    let scrape = sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/missing", "404"),
        1.0,
    );
    assert_eq!(
        scrape.sum(SERVER_DURATION_COUNT, &[("service_name", svc.as_str())]),
        5.0,
        "{}",
        sonde.failure("requests served by forked children", &scrape)
    );
    drop((first, second));
    sonde.stop();
}
