//! sonde's metrics over OTLP (`--otlp-metrics`): the histograms of
//! `/metrics` arrive at a real OTLP receiver with exact counts, and the flag
//! without an endpoint is a usage error.
use std::fs::File;
use std::process::{Command, Stdio};
use std::time::Duration;

use sonde_tests::clients::HttpConn;
use sonde_tests::names::SERVER_DURATION;
use sonde_tests::otlp_receiver::{OtlpReceiver, Transport};
use sonde_tests::process::{poll, ChildGuard, TempDir};
use sonde_tests::servers;
use sonde_tests::sonde::{sonde_bin, Sonde};

/// Several export intervals of one second.
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn request_histograms_arrive_over_otlp_grpc() {
    let receiver = OtlpReceiver::start().unwrap();
    let server = servers::python();
    let args: Vec<String> = [
        "--port",
        &server.port().to_string(),
        "--otlp-endpoint",
        &receiver.grpc_endpoint(),
        "--otlp-protocol",
        "grpc",
        "--otlp-metrics",
        "--otlp-metrics-interval-secs",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sonde = Sonde::start(&args).unwrap_or_else(|e| panic!("{e:?}"));
    let svc = server.service_name();

    let mut conn = HttpConn::connect(server.port()).unwrap();
    for _ in 0..3 {
        assert_eq!(conn.get("/fast").unwrap().status, 200);
    }
    let point = [
        ("service_name", svc.as_str()),
        ("http_route", "/fast"),
        ("http_response_status_code", "200"),
        ("http_request_method", "GET"),
    ];
    let metric = receiver
        .wait_for_metric(SERVER_DURATION, WAIT, |m| {
            m.histogram_point(&point).is_some_and(|p| p.count == 3)
        })
        .unwrap_or_else(|e| panic!("{e:?}\nsonde's output:\n{}", sonde.output()));
    assert_eq!(metric.transport, Transport::Grpc);
    assert_eq!(metric.resource_str("service.name"), Some("sonde"));
    assert_eq!(
        metric.resource_int("process.pid"),
        Some(i64::from(sonde.pid()))
    );
    let histogram = metric.histogram_point(&point).unwrap();
    assert_eq!(
        histogram.bucket_counts.len(),
        histogram.explicit_bounds.len() + 1
    );
    assert_eq!(histogram.bucket_counts.iter().sum::<u64>(), 3);
    assert!(histogram.sum.is_some_and(|s| s > 0.0), "{histogram:?}");
    assert!(
        histogram.start_time_unix_nano > 0
            && histogram.start_time_unix_nano < histogram.time_unix_nano
    );
    // The /metrics scrape and the OTLP export agree.
    let scrape = sonde.scrape();
    assert_eq!(scrape.sum(&format!("{SERVER_DURATION}_count"), &point), 3.0);
    drop(conn);
    sonde.stop();
}

#[test]
fn otlp_metrics_without_an_endpoint_is_a_usage_error() {
    let dir = TempDir::new("otlp-metrics").unwrap();
    let stderr_path = dir.path().join("stderr");
    let child = Command::new(sonde_bin())
        .args(["--otlp-metrics", "--metrics-addr", "127.0.0.1:0"])
        .env_remove("SONDE_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut process = ChildGuard::new("sonde", child);
    let status = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        process.exit_status()
    })
    .expect("sonde kept running");
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "sonde: --otlp-metrics needs an OTLP endpoint: give --otlp-endpoint, or set \
         OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT"
    );
}
