//! Spans under load: every request nginx serves under wrk becomes a SERVER
//! span that either reaches the collector or is counted as dropped, and the
//! export rate is reported.
use std::thread;
use std::time::{Duration, Instant};

use sonde_tests::clients::wrk;
use sonde_tests::names::*;
use sonde_tests::otlp_receiver::OtlpReceiver;
use sonde_tests::process::report;
use sonde_tests::servers::Nginx;
use sonde_tests::sonde::Sonde;

const LOAD_DURATION: Duration = Duration::from_secs(5);
/// Hold window, batching and export of the last spans after wrk ends.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
const STABLE_FOR: Duration = Duration::from_secs(2);

#[test]
fn every_request_under_load_is_exported_or_counted() {
    let nginx = Nginx::start();
    let server = nginx.server();
    let receiver = OtlpReceiver::start().unwrap();
    // Only nginx: wrk's CLIENT spans would double the count without adding a case.
    let args: Vec<String> = [
        "--otlp-endpoint",
        &receiver.grpc_endpoint(),
        "--otlp-protocol",
        "grpc",
        "--exe",
        "^nginx$",
        "--port",
        &server.port().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sonde = Sonde::start(&args).unwrap_or_else(|e| panic!("{e:?}"));
    // A request whose client closed before nginx answered (wrk stopping;
    // nginx logs 499) has no response: sonde abandons it, no span.
    let logged_before = nginx.access_log_lines_except("499");

    let started = Instant::now();
    let load = wrk(&server.url("/"), 8, 1, LOAD_DURATION).unwrap();

    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = (0usize, f64::NAN, f64::NAN);
    let mut stable_since = Instant::now();
    let (logged, exported, dropped, settled_after, scrape) = loop {
        let scrape = sonde.scrape();
        let now = (
            nginx.access_log_lines_except("499") - logged_before,
            scrape.sum(SPANS_EXPORTED, &[]),
            scrape.sum(SPANS_DROPPED, &[]),
        );
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        let done = now.1 + now.2 == now.0 as f64 && stable_since.elapsed() >= STABLE_FOR;
        if done || Instant::now() >= deadline {
            break (now.0, now.1, now.2, stable_since - started, scrape);
        }
        thread::sleep(Duration::from_millis(200));
    };
    let received = receiver.spans().len();
    report(&format!(
        "spans under wrk -c 8 -d {}s against nginx: {logged} requests ({:.0} req/s), \
         {exported} spans exported, {dropped} dropped, {received} received; \
         export rate {:.0} spans/s over {:.1} s from load start to the last span; {}",
        LOAD_DURATION.as_secs(),
        load.requests_per_sec,
        exported / settled_after.as_secs_f64(),
        settled_after.as_secs_f64(),
        scrape.excerpt(&[SPANS_DROPPED]).replace('\n', "; "),
    ));
    assert!(
        logged > 0,
        "nginx logged nothing; wrk said:\n{}",
        load.output
    );
    assert_eq!(
        exported + dropped,
        logged as f64,
        "{}",
        sonde.failure("every request is a span exported or dropped", &scrape)
    );
    assert_eq!(
        received as f64, exported,
        "the collector got what sonde counted as exported"
    );
    sonde.stop();
}
