//! nginx under wrk load: sonde must count exactly the requests nginx logged
//! and lose no events.
use std::thread;
use std::time::{Duration, Instant};

use sonde_tests::clients::wrk;
use sonde_tests::names::*;
use sonde_tests::process::{cpu_seconds, report};
use sonde_tests::servers::Nginx;
use sonde_tests::sonde::Sonde;

const LOAD_DURATION: Duration = Duration::from_secs(10);
/// Time allowed after wrk ends for sonde to drain every event.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Counts must hold still this long to be final.
const STABLE_FOR: Duration = Duration::from_secs(1);

#[test]
fn sonde_counts_every_request_nginx_logged() {
    let nginx = Nginx::start();
    let server = nginx.server();
    // Throughput without sonde, to report what observing costs.
    let baseline = wrk(&server.url("/"), 32, 2, LOAD_DURATION).unwrap();
    // Requests wrk cut off are logged when nginx finishes them, just after.
    thread::sleep(Duration::from_millis(500));
    let logged_before = nginx.access_log_lines();

    let sonde = Sonde::watching_ports(&[server.port()]);
    let svc = server.service_name();
    let service = [("service_name", svc.as_str())];

    let cpu_before = cpu_seconds(sonde.pid()).unwrap();
    let load = wrk(&server.url("/"), 32, 2, LOAD_DURATION).unwrap();
    let cpu_during = cpu_seconds(sonde.pid()).unwrap() - cpu_before;

    // Drained once both counts stop moving and agree.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut last = (usize::MAX, f64::NAN);
    let mut stable_since = Instant::now();
    let (logged, counted, scrape) = loop {
        let scrape = sonde.scrape();
        let now = (
            nginx.access_log_lines() - logged_before,
            scrape.sum(SERVER_DURATION_COUNT, &service),
        );
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        let settled = now.0 as f64 == now.1 && stable_since.elapsed() >= STABLE_FOR;
        if settled || Instant::now() >= deadline {
            break (now.0, now.1, scrape);
        }
        thread::sleep(Duration::from_millis(100));
    };

    let lost = scrape.sum(EVENTS_LOST, &[]);
    let wrk_side = scrape.sum(CLIENT_DURATION_COUNT, &[("service_name", "wrk")]);
    report(&format!(
        "nginx under wrk -c 32 -t 2 -d {}s: without sonde {:.0} req/s; with sonde \
         wrk {} requests ({:.0} req/s); \
         nginx logged {logged}; sonde counted {counted} (wrk side {wrk_side}); \
         {EVENTS_LOST} {lost}; sonde CPU {cpu_during:.2} s; anomalies: {}",
        LOAD_DURATION.as_secs(),
        baseline.requests_per_sec,
        load.requests,
        load.requests_per_sec,
        scrape.excerpt(&[HTTP_ANOMALIES]).replace('\n', "; ")
    ));
    assert!(
        logged > 0,
        "nginx logged nothing; wrk said:\n{}",
        load.output
    );
    assert_eq!(
        counted,
        logged as f64,
        "{}",
        sonde.failure("sonde's nginx count vs nginx's access log", &scrape)
    );
    assert_eq!(
        scrape.sum(
            SERVER_DURATION_COUNT,
            &[("service_name", &svc), ("http_route", "/")]
        ),
        counted,
        "{}",
        sonde.failure("every request is route /", &scrape)
    );
    assert_eq!(lost, 0.0, "{}", sonde.failure("events lost", &scrape));
    sonde.stop();
}
