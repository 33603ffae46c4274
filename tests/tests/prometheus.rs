//! sonde scraped by a real Prometheus server with the rules of
//! deploy/prometheus loaded: its HTTP API answers what the traffic implies,
//! a 5xx burst fires the error-ratio alert, and every panel of
//! deploy/grafana/sonde-dashboard.json returns data.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sonde_tests::clients::HttpConn;
use sonde_tests::names::SERVER_DURATION_COUNT;
use sonde_tests::process::TempDir;
use sonde_tests::prometheus_server::{PrometheusServer, Sample, INTERVAL, JOB};
use sonde_tests::servers;
use sonde_tests::sonde::Sonde;

/// Long enough for a few scrapes and rule evaluations of a new value.
const SEEN_TIMEOUT: Duration = Duration::from_secs(15);
/// /fast is called this often during the measured traffic...
const FAST_PER_SECOND: u32 = 10;
/// ...for this long.
const TRAFFIC: Duration = Duration::from_secs(6);
/// Failures of the 5xx burst.
const BURST: u32 = 30;
/// Every alert's `for:` in the test's copy of the alerts: minutes of a
/// condition holding do not fit in a test; the durations themselves are
/// covered by the promtool unit tests of deploy/prometheus/tests.
const TEST_FOR: &str = "3s";
/// Stands for Grafana's `$__rate_interval`: at least four scrape intervals.
const RATE_INTERVAL: &str = "5s";

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// deploy/prometheus/sonde-alerts.yaml with every `for:` set to
/// [`TEST_FOR`], written in `dir`.
fn alerts_with_short_for(dir: &TempDir) -> PathBuf {
    let text = std::fs::read_to_string(deploy("prometheus/sonde-alerts.yaml")).unwrap();
    let mut shortened = 0;
    let copy: String = text
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => {
                shortened += 1;
                let indent = &line[..line.len() - line.trim_start().len()];
                format!("{indent}for: {TEST_FOR}\n")
            }
            None => format!("{line}\n"),
        })
        .collect();
    assert!(shortened > 0, "no `for:` in the alerts:\n{text}");
    let path = dir.path().join("sonde-alerts.yaml");
    std::fs::write(&path, copy).unwrap();
    path
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

fn only(samples: &[Sample], what: &str) -> f64 {
    match samples {
        [one] => one.value,
        _ => panic!("{what}: expected one series, got {samples:#?}"),
    }
}

#[test]
fn prometheus_rules_and_dashboard_on_real_traffic() {
    let server = servers::python();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let dir = TempDir::new("prometheus-alerts").unwrap();
    let prometheus = PrometheusServer::scraping(
        sonde.metrics_addr(),
        &[
            deploy("prometheus/sonde-recording-rules.yaml"),
            alerts_with_short_for(&dir),
        ],
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let svc = server.service_name();
    let route_count = |route: &str| {
        format!(r#"{SERVER_DURATION_COUNT}{{service_name="{svc}",http_route="{route}"}}"#)
    };

    // One request per route first: rate() ignores a series' first sample,
    // so the series must exist before the measured traffic.
    let mut fast = HttpConn::connect(server.port()).unwrap();
    let mut slow = HttpConn::connect(server.port()).unwrap();
    assert_eq!(fast.get("/fast").unwrap().status, 200);
    assert_eq!(slow.get("/sleep?ms=300").unwrap().status, 200);
    for route in ["/fast", "/sleep"] {
        prometheus.await_query(
            "the warm-up scraped",
            &route_count(route),
            SEEN_TIMEOUT,
            |r| r.len() == 1 && r[0].value == 1.0,
        );
    }

    // /fast paced at FAST_PER_SECOND on one connection while /sleep?ms=300
    // is called back to back on another.
    let started = unix_now();
    let slow_calls = thread::scope(|scope| {
        let sleeper = scope.spawn(|| {
            let deadline = Instant::now() + TRAFFIC;
            let mut calls = 0;
            while Instant::now() < deadline {
                assert_eq!(slow.get("/sleep?ms=300").unwrap().status, 200);
                calls += 1;
            }
            calls
        });
        let origin = Instant::now();
        let calls = FAST_PER_SECOND * TRAFFIC.as_secs() as u32;
        for i in 0..calls {
            let due = origin + Duration::from_secs(1) * i / FAST_PER_SECOND;
            thread::sleep(due.saturating_duration_since(Instant::now()));
            assert_eq!(fast.get("/fast").unwrap().status, 200);
        }
        sleeper.join().unwrap()
    });
    let fast_total = 1.0 + f64::from(FAST_PER_SECOND) * TRAFFIC.as_secs_f64();
    prometheus.await_query(
        "all of /fast scraped",
        &route_count("/fast"),
        SEEN_TIMEOUT,
        |r| r.len() == 1 && r[0].value == fast_total,
    );
    prometheus.await_query(
        "all of /sleep scraped",
        &route_count("/sleep"),
        SEEN_TIMEOUT,
        |r| r.len() == 1 && r[0].value == f64::from(1 + slow_calls),
    );

    // rate() over 4 s in the middle of the traffic: FAST_PER_SECOND, give or
    // take the one request a scrape boundary can move in or out.
    let rate = format!("sum(rate({}[4s]))", route_count("/fast"));
    let measured = only(&prometheus.query_at(&rate, started + 5.0).unwrap(), &rate);
    let expected = f64::from(FAST_PER_SECOND);
    assert!(
        (measured - expected).abs() <= 0.15 * expected,
        "{rate} at the 5th second of the traffic = {measured}, expected {expected} ± 15%"
    );

    // Every /sleep took 300 ms and a little, so every one is in the (0.25,
    // 0.5] bucket, and the 95th percentile interpolates to 0.25 + 0.95 x 0.25.
    let p95 = format!(
        r#"histogram_quantile(0.95, sum by (le) (rate(http_server_request_duration_seconds_bucket{{service_name="{svc}",http_route="/sleep"}}[1m])))"#
    );
    let measured = only(&prometheus.query(&p95).unwrap(), &p95);
    assert!(
        (measured - 0.4875).abs() < 1e-9,
        "{p95} = {measured}, expected 0.4875"
    );
    // /fast answers in well under 100 ms.
    let fast_p95 = p95.replace("/sleep", "/fast");
    let measured = only(&prometheus.query(&fast_p95).unwrap(), &fast_p95);
    assert!(measured < 0.1, "{fast_p95} = {measured}");

    // A 5xx burst: /boom's error ratio is 1, over the 1% threshold. The
    // alert is pending first, then fires once its (shortened) `for:` held.
    for _ in 0..BURST {
        assert_eq!(fast.get("/boom").unwrap().status, 500);
    }
    let error_ratio_alert = r#"ALERTS{alertname="HTTPServerErrorRatioHigh"}"#;
    let pending = prometheus.await_query(
        "the error-ratio alert pending",
        error_ratio_alert,
        SEEN_TIMEOUT,
        |r| !r.is_empty(),
    );
    assert_eq!(pending.len(), 1, "{pending:#?}");
    assert_eq!(
        pending[0].label("alertstate"),
        Some("pending"),
        "{pending:?}"
    );
    let alerts = prometheus.await_query(
        "the error-ratio alert firing",
        error_ratio_alert,
        SEEN_TIMEOUT,
        |r| r.iter().any(|a| a.label("alertstate") == Some("firing")),
    );
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(alert.label("alertstate"), Some("firing"), "{alert:?}");
    assert_eq!(alert.label("service_name"), Some(svc.as_str()), "{alert:?}");
    assert_eq!(alert.label("http_route"), Some("/boom"), "{alert:?}");
    assert_eq!(alert.label("severity"), Some("critical"), "{alert:?}");
    // The recorded ratios: every /boom failed, no /fast or /sleep did.
    for (route, ratio) in [("/boom", 1.0), ("/fast", 0.0), ("/sleep", 0.0)] {
        let expr = format!(
            r#"service_route:http_server_error_ratio:rate5m{{service_name="{svc}",http_route="{route}"}}"#
        );
        assert_eq!(
            only(&prometheus.query(&expr).unwrap(), &expr),
            ratio,
            "{expr}"
        );
    }
    // 30 failures in the 5 minute window are 6 a minute: no 5xx-rate alert.
    let rate_alerts = prometheus
        .query(r#"ALERTS{alertname="HTTPServer5xxRateHigh"}"#)
        .unwrap();
    assert!(rate_alerts.is_empty(), "{rate_alerts:#?}");

    // Every panel's queries, with the variables as Grafana would fill them
    // (route: All, then one route), over the traffic: each returns a series
    // with at least one number.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/sonde-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let end = unix_now();
    let mut checked = 0;
    for route in [".+", "/sleep"] {
        for (panel, expr) in panel_queries(&dashboard) {
            let expr = expr
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$service", &svc)
                .replace("$route", route)
                .replace("$job", JOB);
            assert!(!expr.contains('$'), "{panel}: a variable left in {expr}");
            let series = prometheus
                .query_range(&expr, started, end, INTERVAL)
                .unwrap_or_else(|e| panic!("{panel}: {e:?}"));
            assert!(
                series
                    .iter()
                    .any(|s| s.values.iter().any(|(_, v)| v.is_finite())),
                "panel {panel:?} (route {route}): no data from {expr}: {series:#?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 2 * 15, "only {checked} panel queries found");

    // The service and route variables list what the traffic made.
    let variables = variable_queries(&dashboard);
    let values = |name: &str| {
        let (selector, label) = &variables[name];
        let selector = selector.replace("$service", &svc);
        prometheus
            .label_values(label, &selector)
            .unwrap_or_else(|e| panic!("variable {name}: {e:?}"))
    };
    assert_eq!(values("service"), [svc.as_str()]);
    assert_eq!(values("route"), ["/boom", "/fast", "/sleep"]);
    drop((fast, slow));
    sonde.stop();
}

/// `name: (selector, label)` of each `label_values(selector, label)`
/// template variable.
fn variable_queries(dashboard: &Value) -> BTreeMap<String, (String, String)> {
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    variables
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let name = v["name"].as_str().expect("a variable has a name");
            let query = v["query"]["query"]
                .as_str()
                .expect("a query variable has a query");
            let arguments = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable {name}: {query} is not label_values(…)"));
            let (selector, label) = arguments.rsplit_once(", ").expect("two arguments");
            (name.to_owned(), (selector.to_owned(), label.to_owned()))
        })
        .collect()
}

/// `(panel title, PromQL)` of every target of every panel, rows included.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target has expr");
            queries.push((title.to_owned(), expr.to_owned()));
        }
    }
    queries
}
