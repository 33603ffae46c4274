//! Which processes and connections sonde observes: `--exe` (by executable
//! name, including programs started after sonde), `--pid` (a process and its
//! children, forked before or after sonde started), `--port`, and never
//! sonde's own `/metrics` traffic.
//!
//! Without `--port`, sonde sees every matching process on the machine, so
//! these tests request paths no other test uses: a concurrent test run's
//! Node or nginx traffic cannot land on the series asserted here.
use std::time::Duration;

use sonde_tests::clients::HttpConn;
use sonde_tests::names::{self, *};
use sonde_tests::process::{exe_basename, poll, TempDir};
use sonde_tests::prom::{Sample, Scrape};
use sonde_tests::servers::{self, Nginx};
use sonde_tests::sonde::{sonde_bin, Sonde};

/// What `--exe '^node$'` must match: the basename of the Node binary.
const NODE: &str = "node";

fn start(args: &[&str]) -> Sonde {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    Sonde::start(&args).unwrap_or_else(|e| panic!("{e:?}"))
}

/// Every series (any metric) whose `label` is `value`.
fn series_with<'a>(scrape: &'a Scrape, label: &str, value: &str) -> Vec<&'a Sample> {
    scrape
        .samples()
        .iter()
        .filter(|s| s.label(label) == Some(value))
        .collect()
}

fn assert_no_series(sonde: &Sonde, scrape: &Scrape, label: &str, value: &str, why: &str) {
    let found = series_with(scrape, label, value);
    assert!(
        found.is_empty(),
        "{}",
        sonde.failure(
            &format!(
                "{why}: want no series with {label}={value:?}, found:\n{}",
                found
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            scrape
        )
    );
}

/// Sends `GET path` `times` times on `conn`, each answered with `status`.
fn get_times(conn: &mut HttpConn, path: &str, times: usize, status: u16) {
    for _ in 0..times {
        assert_eq!(conn.get(path).unwrap().status, status, "GET {path}");
    }
}

#[test]
fn exe_selects_processes_by_executable_name() {
    let python = servers::python();
    let node = servers::node();
    assert_eq!(node.service_name(), NODE, "the Node binary's basename");
    let sonde = start(&["--exe", "^node$"]);

    // Python first: had sonde captured it, its events would be read before
    // Node's, which the assertions below wait for.
    let mut to_python = HttpConn::connect(python.port()).unwrap();
    get_times(&mut to_python, "/fast", 4, 200);
    get_times(&mut to_python, "/exe-filter-unselected", 2, 404);
    let mut to_node = HttpConn::connect(node.port()).unwrap();
    get_times(&mut to_node, "/exe-filter-selected", 5, 404);
    for id in [3, 14, 159] {
        let path = format!("/exe-filter-selected/{id}");
        get_times(&mut to_node, &path, 1, 404);
    }

    for (route, count) in [
        ("/exe-filter-selected", 5.0),
        ("/exe-filter-selected/{id}", 3.0),
    ] {
        let labels = names::server(NODE, "GET", route, "404");
        sonde.await_value(SERVER_DURATION_COUNT, &labels, count);
    }
    let scrape = sonde.scrape();
    assert_no_series(
        &sonde,
        &scrape,
        "service_name",
        &python.service_name(),
        "--exe '^node$' observed Python",
    );
    drop((to_python, to_node));
    sonde.stop();
}

#[test]
fn exe_follows_programs_started_after_sonde() {
    let sonde = start(&["--exe", "^node$"]);
    let node = servers::node();
    let python = servers::python();
    assert_eq!(node.service_name(), NODE, "the Node binary's basename");

    let mut to_python = HttpConn::connect(python.port()).unwrap();
    get_times(&mut to_python, "/fast", 3, 200);
    let mut to_node = HttpConn::connect(node.port()).unwrap();
    get_times(&mut to_node, "/exe-filter-later", 6, 404);
    get_times(&mut to_node, "/exe-filter-later/2718", 2, 404);

    for (route, count) in [("/exe-filter-later", 6.0), ("/exe-filter-later/{id}", 2.0)] {
        let labels = names::server(NODE, "GET", route, "404");
        sonde.await_value(SERVER_DURATION_COUNT, &labels, count);
    }
    let scrape = sonde.scrape();
    assert_no_series(
        &sonde,
        &scrape,
        "service_name",
        &python.service_name(),
        "--exe '^node$' observed a Python started after sonde",
    );
    drop((to_python, to_node));
    sonde.stop();
}

/// Sends `requests` requests for `path` to nginx spread over `connections`
/// keep-alive connections, which are closed afterwards.
fn load_nginx(port: u16, path: &str, connections: usize, requests: usize) {
    let mut conns: Vec<HttpConn> = (0..connections)
        .map(|_| HttpConn::connect(port).unwrap())
        .collect();
    for i in 0..requests {
        let status = conns[i % connections].get(path).unwrap().status;
        assert_eq!(status, 200, "GET {path} from nginx");
    }
}

/// Waits until nginx's access log has `lines` lines.
fn await_logged(nginx: &Nginx, lines: usize) {
    let logged = poll(Duration::from_secs(5), Duration::from_millis(20), || {
        (nginx.access_log_lines() == lines).then_some(())
    });
    assert!(
        logged.is_some(),
        "nginx logged {} requests, want {lines}",
        nginx.access_log_lines()
    );
}

#[test]
fn pid_selects_a_process_and_its_children() {
    const BEFORE: usize = 24;
    const AFTER: usize = 17;
    let nginx = Nginx::with_workers(2);
    let master = nginx.server().pid();
    let first_workers = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        let workers = nginx.workers();
        (workers.len() == 2).then_some(workers)
    })
    .unwrap_or_else(|| panic!("nginx workers: {:?}, want 2", nginx.workers()));
    let python = servers::python();
    let svc = nginx.server().service_name();
    let sonde = start(&["--pid", &master.to_string()]);

    let mut to_python = HttpConn::connect(python.port()).unwrap();
    get_times(&mut to_python, "/fast", 5, 200);
    drop(to_python);

    // Answered by workers that were running before sonde started.
    load_nginx(nginx.server().port(), "/pid-filter/before", 4, BEFORE);
    await_logged(&nginx, BEFORE);
    let before = names::server(&svc, "GET", "/pid-filter/before", "200");
    sonde.await_value(SERVER_DURATION_COUNT, &before, BEFORE as f64);

    // A reload replaces the workers: the next requests are answered by
    // processes forked after sonde started.
    nginx.reload();
    let new_workers = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        let workers = nginx.workers();
        let replaced = workers.len() == 2 && workers.iter().all(|w| !first_workers.contains(w));
        replaced.then_some(workers)
    })
    .unwrap_or_else(|| {
        panic!(
            "nginx workers after SIGHUP: {:?}, want 2 others than {first_workers:?}",
            nginx.workers()
        )
    });
    load_nginx(nginx.server().port(), "/pid-filter/after", 3, AFTER);
    await_logged(&nginx, BEFORE + AFTER);
    let after = names::server(&svc, "GET", "/pid-filter/after", "200");
    let scrape = sonde.await_value(SERVER_DURATION_COUNT, &after, AFTER as f64);

    assert_eq!(
        scrape.sum(SERVER_DURATION_COUNT, &[("service_name", &svc)]),
        nginx.access_log_lines() as f64,
        "{}",
        sonde.failure(
            &format!(
                "nginx count vs its access log (workers {first_workers:?} then {new_workers:?})"
            ),
            &scrape
        )
    );
    assert_no_series(
        &sonde,
        &scrape,
        "service_name",
        &python.service_name(),
        "--pid <nginx master> observed Python",
    );
    // The test process is the only client, and it is not under --pid.
    let clients: Vec<String> = scrape
        .find(CLIENT_DURATION_COUNT, &[])
        .map(|s| s.to_string())
        .collect();
    assert!(
        clients.is_empty(),
        "{}",
        sonde.failure(
            &format!(
                "--pid <nginx master> observed clients:\n{}",
                clients.join("\n")
            ),
            &scrape
        )
    );
    sonde.stop();
}

#[test]
fn port_scopes_observation_to_the_listed_ports() {
    let watched = servers::python();
    let unwatched = servers::python();
    let sonde = Sonde::watching_ports(&[watched.port()]);
    let svc = watched.service_name();
    let (port_a, port_b) = (watched.port().to_string(), unwatched.port().to_string());

    let mut to_b = HttpConn::connect(unwatched.port()).unwrap();
    get_times(&mut to_b, "/boom", 3, 500);
    get_times(&mut to_b, "/fast", 4, 200);
    let mut to_a = HttpConn::connect(watched.port()).unwrap();
    get_times(&mut to_a, "/fast", 5, 200);
    get_times(&mut to_a, "/users/12", 2, 200);

    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/fast", "200"),
        5.0,
    );
    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/users/{id}", "200"),
        2.0,
    );
    // The test process is the client of both servers.
    let client = exe_basename(std::process::id());
    let to_watched = [("service_name", client.as_str()), ("server_port", &port_a)];
    let scrape = sonde.await_scrape("client requests to the watched port == 7", |s| {
        s.sum(CLIENT_DURATION_COUNT, &to_watched) == 7.0
    });
    assert_eq!(
        scrape.sum(SERVER_DURATION_COUNT, &[("service_name", &svc)]),
        7.0,
        "{}",
        sonde.failure("server requests outside port A's", &scrape)
    );
    assert_no_series(
        &sonde,
        &scrape,
        "server_port",
        &port_b,
        "--port A observed a client of port B",
    );
    assert_eq!(
        scrape.sum(CLIENT_DURATION_COUNT, &[("service_name", &client)]),
        7.0,
        "{}",
        sonde.failure("client requests outside port A's", &scrape)
    );
    drop((to_a, to_b));
    sonde.stop();
}

#[test]
fn sonde_never_observes_its_own_metrics_traffic() {
    const SCRAPES: usize = 20;
    const CONTROL: usize = 3;
    // sonde's executable under a name of this test's own: other sondes
    // running on the machine (served and scraped by other tests) are
    // observed like any process, and must not be mistaken for this one.
    let bin_dir = TempDir::new("self-observation").unwrap();
    let own_name = "sonde-self-check";
    let bin = bin_dir.path().join(own_name);
    std::fs::copy(sonde_bin(), &bin).unwrap_or_else(|e| panic!("copy {:?}: {e}", sonde_bin()));
    let python = servers::python();
    // No --port, --pid or --exe: every process and port is observed.
    let sonde = Sonde::start_bin(&bin, &[]).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(exe_basename(sonde.pid()), own_name);
    let metrics_port = sonde.metrics_addr().port().to_string();

    for _ in 0..SCRAPES {
        sonde.scrape();
    }
    // Control: the same test process's requests to another server are
    // observed on both sides, so the absence below is sonde excluding
    // itself, not sonde missing loopback traffic.
    let mut to_python = HttpConn::connect(python.port()).unwrap();
    get_times(&mut to_python, "/self-observation-control", CONTROL, 404);
    let python_port = python.port().to_string();
    let client = exe_basename(std::process::id());
    sonde.await_value(
        CLIENT_DURATION_COUNT,
        &[
            ("service_name", client.as_str()),
            ("server_port", &python_port),
            ("http_response_status_code", "404"),
        ],
        CONTROL as f64,
    );
    let scrape = sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(
            &python.service_name(),
            "GET",
            "/self-observation-control",
            "404",
        ),
        CONTROL as f64,
    );

    assert_no_series(
        &sonde,
        &scrape,
        "service_name",
        own_name,
        "sonde observed its own process",
    );
    assert_no_series(
        &sonde,
        &scrape,
        "server_port",
        &metrics_port,
        "sonde observed clients of its /metrics",
    );
    drop(to_python);
    sonde.stop();
}
