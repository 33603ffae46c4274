//! Observed clients: sonde reports them under `http_client_*`, and the
//! server they call under `http_server_*`.
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};

use sonde_tests::clients::{get_request, python_client, read_response};
use sonde_tests::names::{self, *};
use sonde_tests::process::exe_basename;
use sonde_tests::servers;
use sonde_tests::sonde::Sonde;

#[test]
fn python_client_requests_are_counted_on_both_sides() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();

    let run = python_client(server.port(), "/fast", 4).unwrap();
    assert_eq!(run.statuses, [200; 4]);

    let port = server.port().to_string();
    sonde.await_value(
        CLIENT_DURATION_COUNT,
        &[
            ("service_name", run.service_name.as_str()),
            ("http_request_method", "GET"),
            ("server_port", port.as_str()),
            ("http_response_status_code", "200"),
        ],
        4.0,
    );
    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/fast", "200"),
        4.0,
    );
    sonde.stop();
}

/// Requests written on one fd and responses read on a `dup` of it (what
/// Rust's `TcpStream::try_clone` does, and any program that hands a socket
/// to a reader and a writer) are still one connection.
#[test]
fn client_reading_on_a_duplicated_fd_is_paired() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let me = exe_basename(std::process::id());

    let mut writer = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port())).unwrap();
    let mut reader = BufReader::new(writer.try_clone().unwrap());
    for _ in 0..3 {
        writer.write_all(&get_request("/fast")).unwrap();
        assert_eq!(read_response(&mut reader).unwrap().status, 200);
    }

    let port = server.port().to_string();
    sonde.await_value(
        CLIENT_DURATION_COUNT,
        &[
            ("service_name", me.as_str()),
            ("server_port", port.as_str()),
            ("http_response_status_code", "200"),
        ],
        3.0,
    );
    drop((writer, reader));
    sonde.stop();
}
