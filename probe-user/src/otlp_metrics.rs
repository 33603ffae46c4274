//! Metrics over OTLP, for users without Prometheus: a side branch of the
//! metrics stage. Every interval a task gathers the same `Registry` that
//! `/metrics` serves and pushes it to the OTLP collector traces go to, over
//! gRPC or HTTP/protobuf.
//!
//! The mapping keeps Prometheus' view of the data so dashboards need no
//! translation: metric names stay Prometheus names (e.g.
//! `http_server_request_duration_seconds`, `http_server_requests_total`),
//! Prometheus labels become data point attributes with the same keys, and
//! the observed service is the `service_name` attribute of each point; the
//! OTLP resource is sonde itself (`service.name=sonde`, `host.name`,
//! `process.pid`). Temporality is cumulative from sonde's start: counters
//! are monotonic Sums, gauges Gauges, histograms explicit-bucket Histograms.
//!
//! An export that fails is not retried: the next one carries the same
//! cumulative totals. Failures are counted in
//! `sonde_otlp_metric_exports_failed_total` and logged once per streak; the
//! task never holds anything the pipeline waits for.
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header::CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client as HttpClient},
    rt::TokioExecutor,
};
use opentelemetry_otlp::{
    OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_HEADERS, OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
    OTEL_EXPORTER_OTLP_METRICS_TIMEOUT,
};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
    },
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram,
        HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use prometheus::{
    proto::{LabelPair, MetricFamily, MetricType},
    IntCounter, Registry,
};
use prost::Message as _;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{
    cli::Cli,
    otlp::{self, host_name, timeout_from, Protocol, Signal, SHUTDOWN_GRACE},
};

const METRICS_PATH: &str = "/v1/metrics";
const METRICS: Signal = Signal {
    endpoint_var: OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    protocol_var: OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
    timeout_var: OTEL_EXPORTER_OTLP_METRICS_TIMEOUT,
    path: METRICS_PATH,
};
const PROTOBUF: &str = "application/x-protobuf";
/// The OpenTelemetry default for `OTEL_METRIC_EXPORT_INTERVAL`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
const OTEL_METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";

/// What the exporter needs; [`Config::from_cli`] resolves it.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// For HTTP the full URL, `/v1/metrics` included; for gRPC scheme and authority.
    pub endpoint: String,
    pub protocol: Protocol,
    /// Sent with every export (HTTP headers or gRPC metadata).
    pub headers: HeaderMap,
    /// Bound on each export.
    pub timeout: Duration,
    pub interval: Duration,
    /// `host.name` of the resource.
    pub host_name: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error(transparent)]
    Endpoint(#[from] otlp::ConfigError),
    #[error(
        "--otlp-metrics needs an OTLP endpoint: give --otlp-endpoint, or set \
         {OTEL_EXPORTER_OTLP_METRICS_ENDPOINT} or {OTEL_EXPORTER_OTLP_ENDPOINT}"
    )]
    NoEndpoint,
}

impl Config {
    /// `None` unless `--otlp-metrics`. Precedence per setting: sonde's flag,
    /// its `SONDE_*` variable, the `OTEL_EXPORTER_OTLP_METRICS_*` variable,
    /// the general `OTEL_EXPORTER_OTLP_*` one, the default; the interval
    /// falls back on `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds). Headers
    /// come from `OTEL_EXPORTER_OTLP_HEADERS`, overridden key by key by
    /// `OTEL_EXPORTER_OTLP_METRICS_HEADERS`.
    pub fn from_cli(cli: &Cli) -> Result<Option<Config>, ConfigError> {
        Self::resolve(cli, &|name| std::env::var(name).ok(), host_name())
    }

    fn resolve(
        cli: &Cli,
        env: &dyn Fn(&str) -> Option<String>,
        host_name: String,
    ) -> Result<Option<Config>, ConfigError> {
        if !cli.otlp_metrics {
            return Ok(None);
        }
        // The specification treats an empty variable as unset.
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let Some(signal) = otlp::resolve_signal(cli, &var, &METRICS)? else {
            return Err(ConfigError::NoEndpoint);
        };
        let interval = cli
            .otlp_metrics_interval_secs
            .map(Duration::from_secs)
            .or_else(|| timeout_from(OTEL_METRIC_EXPORT_INTERVAL, &var))
            .unwrap_or(DEFAULT_INTERVAL);
        let mut headers = HeaderMap::new();
        for name in [
            OTEL_EXPORTER_OTLP_HEADERS,
            OTEL_EXPORTER_OTLP_METRICS_HEADERS,
        ] {
            if let Some(value) = var(name) {
                // `extend` replaces the values of a repeated key.
                headers.extend(parse_headers(name, &value));
            }
        }
        Ok(Some(Config {
            endpoint: signal.endpoint,
            protocol: signal.protocol,
            headers,
            timeout: signal.timeout,
            interval,
            host_name,
        }))
    }
}

/// `key=value,key2=value2` with percent-encoded values, per the
/// specification; an unusable entry is ignored with a warning.
fn parse_headers<'a>(
    variable: &'a str,
    value: &'a str,
) -> impl Iterator<Item = (Option<HeaderName>, HeaderValue)> + 'a {
    value
        .split(',')
        .filter(|entry| !entry.trim().is_empty())
        .filter_map(move |entry| {
            let parsed = entry.split_once('=').and_then(|(key, value)| {
                let name = HeaderName::from_bytes(key.trim().as_bytes()).ok()?;
                let value = HeaderValue::from_bytes(&percent_decode(value.trim())?).ok()?;
                Some((Some(name), value))
            });
            if parsed.is_none() {
                tracing::warn!("{variable}: `{entry}` ignored: not a key=value header");
            }
            parsed
        })
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// Builds export requests from gathered metric families.
struct Converter {
    resource: Resource,
    scope: InstrumentationScope,
    start_unix_nano: u64,
}

impl Converter {
    fn new(host_name: &str, pid: u32, start_unix_nano: u64) -> Self {
        Converter {
            resource: Resource {
                attributes: vec![
                    string_attribute("service.name", "sonde"),
                    string_attribute("host.name", host_name),
                    attribute("process.pid", any_value::Value::IntValue(i64::from(pid))),
                ],
                ..Resource::default()
            },
            scope: InstrumentationScope {
                name: "sonde".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..InstrumentationScope::default()
            },
            start_unix_nano,
        }
    }

    fn request(
        &self,
        families: &[MetricFamily],
        now_unix_nano: u64,
    ) -> ExportMetricsServiceRequest {
        let metrics = families
            .iter()
            .filter_map(|family| self.metric(family, now_unix_nano))
            .collect();
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(self.scope.clone()),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    /// `None` for summaries and untyped metrics, which sonde does not register.
    fn metric(&self, family: &MetricFamily, now: u64) -> Option<Metric> {
        let start = self.start_unix_nano;
        let cumulative = AggregationTemporality::Cumulative as i32;
        let points = family.get_metric();
        let number = |value: f64, labels: &[LabelPair], start: u64| NumberDataPoint {
            attributes: attributes(labels),
            start_time_unix_nano: start,
            time_unix_nano: now,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..NumberDataPoint::default()
        };
        let data = match family.get_field_type() {
            MetricType::COUNTER => Data::Sum(Sum {
                data_points: points
                    .iter()
                    .map(|m| number(m.get_counter().get_value(), m.get_label(), start))
                    .collect(),
                aggregation_temporality: cumulative,
                is_monotonic: true,
            }),
            // A gauge's value has no start.
            MetricType::GAUGE => Data::Gauge(Gauge {
                data_points: points
                    .iter()
                    .map(|m| number(m.get_gauge().get_value(), m.get_label(), 0))
                    .collect(),
            }),
            MetricType::HISTOGRAM => Data::Histogram(Histogram {
                data_points: points
                    .iter()
                    .map(|m| histogram_point(m.get_histogram(), m.get_label(), start, now))
                    .collect(),
                aggregation_temporality: cumulative,
            }),
            MetricType::SUMMARY | MetricType::UNTYPED => return None,
        };
        Some(Metric {
            name: family.name().to_owned(),
            description: family.help().to_owned(),
            data: Some(data),
            ..Metric::default()
        })
    }
}

/// Prometheus buckets count every observation up to their bound; OTLP's
/// count those above the previous bound, with one more for above the last.
fn histogram_point(
    histogram: &prometheus::proto::Histogram,
    labels: &[LabelPair],
    start: u64,
    now: u64,
) -> HistogramDataPoint {
    let buckets = histogram.get_bucket();
    let mut explicit_bounds = Vec::with_capacity(buckets.len());
    let mut bucket_counts = Vec::with_capacity(buckets.len() + 1);
    let mut below = 0;
    // The +Inf bucket is implicit in Prometheus' model: sample_count.
    for bucket in buckets.iter().filter(|b| b.upper_bound().is_finite()) {
        explicit_bounds.push(bucket.upper_bound());
        bucket_counts.push(bucket.cumulative_count().saturating_sub(below));
        below = below.max(bucket.cumulative_count());
    }
    bucket_counts.push(histogram.get_sample_count().saturating_sub(below));
    HistogramDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        count: histogram.get_sample_count(),
        sum: Some(histogram.get_sample_sum()),
        bucket_counts,
        explicit_bounds,
        ..HistogramDataPoint::default()
    }
}

fn attributes(labels: &[LabelPair]) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|label| string_attribute(label.name(), label.value()))
        .collect()
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.to_owned()))
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One OTLP metrics client per protocol.
enum Client {
    Grpc(MetricsServiceClient<tonic::transport::Channel>),
    Http {
        // Boxed: the one client of the process, far larger than the gRPC one.
        client: Box<HttpClient<HttpConnector, Full<Bytes>>>,
        uri: Uri,
    },
}

impl Client {
    /// Connects lazily: a collector that is down at start is an export
    /// failure later, not a start failure.
    fn new(config: &Config) -> Result<Client, StartError> {
        let bad_endpoint = |reason: String| StartError::Endpoint {
            endpoint: config.endpoint.clone(),
            reason,
        };
        Ok(match config.protocol {
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|e| bad_endpoint(e.to_string()))?
                    .connect_timeout(config.timeout)
                    .timeout(config.timeout)
                    .connect_lazy();
                Client::Grpc(MetricsServiceClient::new(channel))
            }
            Protocol::HttpProtobuf => Client::Http {
                client: Box::new(HttpClient::builder(TokioExecutor::new()).build_http()),
                uri: config
                    .endpoint
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| bad_endpoint(e.to_string()))?,
            },
        })
    }

    async fn send(
        &mut self,
        request: ExportMetricsServiceRequest,
        headers: &HeaderMap,
    ) -> Result<(), String> {
        let response = match self {
            Client::Grpc(client) => {
                let mut request = tonic::Request::new(request);
                *request.metadata_mut() =
                    tonic::metadata::MetadataMap::from_headers(headers.clone());
                client
                    .export(request)
                    .await
                    .map_err(|status| format!("gRPC {:?}: {}", status.code(), status.message()))?
                    .into_inner()
            }
            Client::Http { client, uri } => {
                let mut http_request = http::Request::post(uri.clone())
                    .body(Full::new(Bytes::from(request.encode_to_vec())))
                    .map_err(|e| e.to_string())?;
                http_request.headers_mut().extend(headers.clone());
                http_request
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
                let response = client
                    .request(http_request)
                    .await
                    .map_err(|e| error_chain(&e))?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| error_chain(&e))?
                    .to_bytes();
                if !status.is_success() {
                    return Err(format!("HTTP {status}"));
                }
                // An empty or unreadable body says nothing was rejected.
                ExportMetricsServiceResponse::decode(body).unwrap_or_default()
            }
        };
        match response.partial_success {
            Some(partial) if partial.rejected_data_points > 0 => Err(format!(
                "the collector rejected {} data points: {}",
                partial.rejected_data_points, partial.error_message
            )),
            _ => Ok(()),
        }
    }
}

/// hyper's errors say what failed only in their sources.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("registering the OTLP metrics counter: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("OTLP metrics endpoint `{endpoint}`: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

/// The running export task. Dropping it stops the task after one last
/// export, as [`Handle::shutdown`] does without waiting.
pub struct Handle {
    task: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl Handle {
    /// Sends the metrics one last time, for at most [`SHUTDOWN_GRACE`], then ends.
    pub async fn shutdown(self) {
        let Handle { mut task, stop } = self;
        let _ = stop.send(());
        if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_millis(200), &mut task)
            .await
            .is_err()
        {
            task.abort();
            tracing::warn!("the last OTLP metric export did not finish in time");
        }
    }
}

/// Registers `sonde_otlp_metric_exports_failed_total` and spawns the export
/// task on the current tokio runtime (call it inside one). Cumulative values
/// start at this call: make it right after the registry is filled.
pub fn start(config: Config, registry: &Registry) -> Result<Handle, StartError> {
    let client = Client::new(&config)?;
    let failed = IntCounter::new(
        "sonde_otlp_metric_exports_failed_total",
        "OTLP metric exports the collector did not accept.",
    )?;
    registry.register(Box::new(failed.clone()))?;
    let converter = Converter::new(
        &config.host_name,
        std::process::id(),
        unix_nanos(SystemTime::now()),
    );
    let (stop, stopped) = oneshot::channel();
    let exporter = Exporter {
        client,
        converter,
        registry: registry.clone(),
        failed,
        failing: false,
        config,
    };
    Ok(Handle {
        task: tokio::spawn(exporter.run(stopped)),
        stop,
    })
}

struct Exporter {
    client: Client,
    converter: Converter,
    registry: Registry,
    failed: IntCounter,
    /// Whether the last export failed: a streak is logged once.
    failing: bool,
    config: Config,
}

impl Exporter {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let interval = self.config.interval;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = self.config.timeout;
        loop {
            tokio::select! {
                biased;
                // A dropped Handle stops the task too.
                _ = &mut stop => break,
                _ = ticks.tick() => {
                    // Stopping cuts a slow export short: the last one follows.
                    tokio::select! {
                        biased;
                        _ = &mut stop => break,
                        () = self.export(timeout) => {}
                    }
                }
            }
        }
        self.export(SHUTDOWN_GRACE).await;
    }

    async fn export(&mut self, timeout: Duration) {
        let request = self
            .converter
            .request(&self.registry.gather(), unix_nanos(SystemTime::now()));
        let outcome =
            match tokio::time::timeout(timeout, self.client.send(request, &self.config.headers))
                .await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            };
        match outcome {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(endpoint = %self.config.endpoint, "OTLP metric export works again");
                }
            }
            Err(error) => {
                self.failed.inc();
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(
                        endpoint = %self.config.endpoint,
                        "OTLP metric export failed, retrying every {} s without further warnings: {error}",
                        self.config.interval.as_secs_f64()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_otlp::{OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_TIMEOUT};
    use prometheus::{
        proto::{Bucket, Histogram as PromHistogram},
        HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    };
    use sonde_tests::otlp_receiver::{OtlpReceiver, ReceivedMetric, Transport};

    use super::*;
    use crate::cli::test_env::parse_with_env;

    const START: u64 = 1_700_000_000_000_000_000;
    const NOW: u64 = START + 15_000_000_000;
    const WAIT: Duration = Duration::from_secs(5);
    /// In Prometheus' order: by label name.
    const SERVER: [(&str, &str); 2] = [("http_route", "/users/{id}"), ("service_name", "api")];

    /// A counter, a gauge and a histogram with known observations.
    fn registry() -> (Registry, IntCounterVec, HistogramVec) {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("http_server_requests_total", "Requests served."),
            &["http_route", "service_name"],
        )
        .unwrap();
        let active = IntGauge::new("http_server_active_requests", "In flight.").unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new("http_server_request_duration_seconds", "Latency.")
                .buckets(vec![0.25, 0.5, 1.0]),
            &["http_route", "service_name"],
        )
        .unwrap();
        registry.register(Box::new(requests.clone())).unwrap();
        registry.register(Box::new(active.clone())).unwrap();
        registry.register(Box::new(duration.clone())).unwrap();
        requests
            .with_label_values(&["/users/{id}", "api"])
            .inc_by(6);
        active.set(2);
        // Binary fractions: the sum is exact.
        for seconds in [0.125, 0.25, 0.375, 0.75, 2.0, 4.0] {
            duration
                .with_label_values(&["/users/{id}", "api"])
                .observe(seconds);
        }
        (registry, requests, duration)
    }

    fn attributes_of(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
        pairs.iter().map(|(k, v)| string_attribute(k, v)).collect()
    }

    fn expected_metrics(start: u64, now: u64, count: u64) -> Vec<Metric> {
        let cumulative = AggregationTemporality::Cumulative as i32;
        vec![
            Metric {
                name: "http_server_active_requests".into(),
                description: "In flight.".into(),
                data: Some(Data::Gauge(Gauge {
                    data_points: vec![NumberDataPoint {
                        time_unix_nano: now,
                        value: Some(number_data_point::Value::AsDouble(2.0)),
                        ..NumberDataPoint::default()
                    }],
                })),
                ..Metric::default()
            },
            Metric {
                name: "http_server_request_duration_seconds".into(),
                description: "Latency.".into(),
                data: Some(Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        attributes: attributes_of(&SERVER),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count,
                        sum: Some(7.5),
                        bucket_counts: vec![2, 1, 1, count - 4],
                        explicit_bounds: vec![0.25, 0.5, 1.0],
                        ..HistogramDataPoint::default()
                    }],
                    aggregation_temporality: cumulative,
                })),
                ..Metric::default()
            },
            Metric {
                name: "http_server_requests_total".into(),
                description: "Requests served.".into(),
                data: Some(Data::Sum(Sum {
                    data_points: vec![NumberDataPoint {
                        attributes: attributes_of(&SERVER),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        value: Some(number_data_point::Value::AsDouble(count as f64)),
                        ..NumberDataPoint::default()
                    }],
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                })),
                ..Metric::default()
            },
        ]
    }

    #[test]
    fn converts_counters_gauges_and_histograms_exactly() {
        let (registry, _, _) = registry();
        let converter = Converter::new("node-1", 4242, START);
        let request = converter.request(&registry.gather(), NOW);
        assert_eq!(
            request,
            ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    resource: Some(Resource {
                        attributes: vec![
                            string_attribute("service.name", "sonde"),
                            string_attribute("host.name", "node-1"),
                            attribute("process.pid", any_value::Value::IntValue(4242)),
                        ],
                        ..Resource::default()
                    }),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(InstrumentationScope {
                            name: "sonde".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..InstrumentationScope::default()
                        }),
                        metrics: expected_metrics(START, NOW, 6),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            }
        );
    }

    #[test]
    fn cumulative_buckets_become_per_bucket_counts() {
        let bucket = |upper_bound: f64, cumulative_count: u64| {
            let mut b = Bucket::default();
            b.set_upper_bound(upper_bound);
            b.set_cumulative_count(cumulative_count);
            b
        };
        // (buckets, sample_count) → (explicit_bounds, bucket_counts)
        type Case = (Vec<Bucket>, u64, Vec<f64>, Vec<u64>);
        let cases: Vec<Case> = vec![
            (vec![], 3, vec![], vec![3]),
            (
                vec![bucket(1.0, 0), bucket(2.0, 0)],
                0,
                vec![1.0, 2.0],
                vec![0, 0, 0],
            ),
            (
                vec![bucket(1.0, 1), bucket(2.0, 1), bucket(5.0, 4)],
                9,
                vec![1.0, 2.0, 5.0],
                vec![1, 0, 3, 5],
            ),
            // An explicit +Inf bucket (a custom collector's) is the last count.
            (
                vec![bucket(1.0, 2), bucket(f64::INFINITY, 5)],
                5,
                vec![1.0],
                vec![2, 3],
            ),
            // Counts read mid-update never go negative.
            (
                vec![bucket(1.0, 4), bucket(2.0, 3)],
                2,
                vec![1.0, 2.0],
                vec![4, 0, 0],
            ),
        ];
        for (buckets, sample_count, bounds, counts) in cases {
            let mut histogram = PromHistogram::default();
            histogram.set_bucket(buckets.clone());
            histogram.set_sample_count(sample_count);
            let point = histogram_point(&histogram, &[], START, NOW);
            assert_eq!(
                (point.explicit_bounds, point.bucket_counts, point.count),
                (bounds, counts, sample_count),
                "{buckets:?}"
            );
        }
    }

    #[test]
    fn configuration_precedence() {
        use Protocol::{Grpc, HttpProtobuf as Http};
        type Vars = &'static [(&'static str, &'static str)];
        // (flags, SONDE_ variables, OTEL_ variables) → (endpoint, protocol, timeout ms, interval ms)
        type Expected = (&'static str, Protocol, u64, u64);
        let cases: &[(&[&str], Vars, Vars, Expected)] = &[
            (
                &["--otlp-metrics", "--otlp-endpoint", "http://c:4318"],
                &[],
                &[],
                ("http://c:4318/v1/metrics", Http, 10_000, 15_000),
            ),
            // The traces URL given to --otlp-endpoint names the collector.
            (
                &[
                    "--otlp-metrics",
                    "--otlp-endpoint",
                    "http://c:4318/otlp/v1/traces",
                ],
                &[],
                &[(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, "http://m:4318/custom")],
                ("http://c:4318/otlp/v1/metrics", Http, 10_000, 15_000),
            ),
            (
                &["--otlp-endpoint", "http://c:4318/v1/metrics"],
                &[("SONDE_OTLP_METRICS", "true")],
                &[],
                ("http://c:4318/v1/metrics", Http, 10_000, 15_000),
            ),
            (
                &["--otlp-metrics"],
                &[],
                &[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317")],
                ("http://c:4317", Grpc, 10_000, 15_000),
            ),
            (
                &["--otlp-metrics"],
                &[],
                &[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318/otlp/")],
                ("http://c:4318/otlp/v1/metrics", Http, 10_000, 15_000),
            ),
            (
                &["--otlp-metrics"],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://base:4318"),
                    (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, "http://m:4318/custom"),
                ],
                ("http://m:4318/custom", Http, 10_000, 15_000),
            ),
            // Protocol: flag, METRICS_, general, then the port.
            (
                &["--otlp-metrics"],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                    (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
                    (OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, "http/protobuf"),
                ],
                ("http://c:4317/v1/metrics", Http, 10_000, 15_000),
            ),
            (
                &["--otlp-metrics", "--otlp-protocol", "grpc"],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318"),
                    (OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, "http/protobuf"),
                ],
                ("http://c:4318", Grpc, 10_000, 15_000),
            ),
            // Timeout: METRICS_ before the general one.
            (
                &["--otlp-metrics"],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                    (OTEL_EXPORTER_OTLP_TIMEOUT, "2500"),
                    (OTEL_EXPORTER_OTLP_METRICS_TIMEOUT, "700"),
                ],
                ("http://c:4317", Grpc, 700, 15_000),
            ),
            // Interval: flag, SONDE_, then OTEL_METRIC_EXPORT_INTERVAL.
            (
                &["--otlp-metrics"],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                    (OTEL_METRIC_EXPORT_INTERVAL, "2500"),
                ],
                ("http://c:4317", Grpc, 10_000, 2_500),
            ),
            (
                &["--otlp-metrics"],
                &[("SONDE_OTLP_METRICS_INTERVAL_SECS", "30")],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                    (OTEL_METRIC_EXPORT_INTERVAL, "2500"),
                ],
                ("http://c:4317", Grpc, 10_000, 30_000),
            ),
            (
                &["--otlp-metrics", "--otlp-metrics-interval-secs", "1"],
                &[("SONDE_OTLP_METRICS_INTERVAL_SECS", "30")],
                &[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317")],
                ("http://c:4317", Grpc, 10_000, 1_000),
            ),
            (
                &["--otlp-metrics"],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                    (OTEL_METRIC_EXPORT_INTERVAL, "15s"),
                ],
                ("http://c:4317", Grpc, 10_000, 15_000),
            ),
        ];
        for (args, sonde_env, otel_env, expected) in cases {
            let cli = parse_with_env(args, sonde_env).unwrap();
            let env = |name: &str| {
                otel_env
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            };
            let got = Config::resolve(&cli, &env, "node-1".into())
                .unwrap()
                .unwrap();
            assert_eq!(
                (
                    got.endpoint.as_str(),
                    got.protocol,
                    got.timeout.as_millis() as u64,
                    got.interval.as_millis() as u64
                ),
                *expected,
                "{args:?} {sonde_env:?} {otel_env:?}"
            );
        }
    }

    #[test]
    fn off_without_the_flag_and_an_error_without_an_endpoint() {
        let base =
            |name: &str| (name == OTEL_EXPORTER_OTLP_ENDPOINT).then(|| "http://c:4317".to_owned());
        let cli = parse_with_env(&["--otlp-endpoint", "http://c:4317"], &[]).unwrap();
        assert_eq!(Config::resolve(&cli, &base, String::new()), Ok(None));

        let cli = parse_with_env(&["--otlp-metrics"], &[]).unwrap();
        let err = Config::resolve(&cli, &|_| None, String::new()).unwrap_err();
        assert_eq!(err, ConfigError::NoEndpoint);
        assert_eq!(
            err.to_string(),
            "--otlp-metrics needs an OTLP endpoint: give --otlp-endpoint, or set \
             OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT"
        );

        let bad =
            |name: &str| (name == OTEL_EXPORTER_OTLP_METRICS_ENDPOINT).then(|| "c:4317".to_owned());
        assert_eq!(
            Config::resolve(&cli, &bad, String::new()),
            Err(ConfigError::Endpoint(otlp::ConfigError::Endpoint {
                variable: OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
                reason: "`c:4317` is not an http:// URL with a host".into()
            }))
        );
    }

    #[test]
    fn headers_from_both_variables_the_metrics_one_wins() {
        let cli =
            parse_with_env(&["--otlp-metrics", "--otlp-endpoint", "http://c:4318"], &[]).unwrap();
        let env = |name: &str| match name {
            OTEL_EXPORTER_OTLP_HEADERS => Some("Tenant=blue, api-key=a%20b%3Dc,broken,=x".into()),
            OTEL_EXPORTER_OTLP_METRICS_HEADERS => Some("tenant=green,bad key=1,k=%zz".into()),
            _ => None,
        };
        let config = Config::resolve(&cli, &env, String::new()).unwrap().unwrap();
        let mut headers: Vec<(String, String)> = config
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        assert_eq!(
            headers,
            [
                ("api-key".to_owned(), "a b=c".to_owned()),
                ("tenant".to_owned(), "green".to_owned()),
            ]
        );
    }

    fn config(endpoint: String, protocol: Protocol, interval: Duration) -> Config {
        Config {
            endpoint,
            protocol,
            headers: HeaderMap::from_iter([(
                HeaderName::from_static("x-tenant"),
                HeaderValue::from_static("blue"),
            )]),
            timeout: Duration::from_millis(500),
            interval,
            host_name: "node-1".into(),
        }
    }

    fn endpoint(receiver: &OtlpReceiver, protocol: Protocol) -> String {
        match protocol {
            Protocol::Grpc => receiver.grpc_endpoint(),
            Protocol::HttpProtobuf => format!("{}{METRICS_PATH}", receiver.http_endpoint()),
        }
    }

    /// Waits off the runtime's worker threads, which the exporter needs.
    async fn wait_for(
        receiver: &OtlpReceiver,
        name: &'static str,
        condition: impl Fn(&ReceivedMetric) -> bool,
    ) -> ReceivedMetric {
        tokio::task::block_in_place(|| receiver.wait_for_metric(name, WAIT, condition)).unwrap()
    }

    async fn exports_the_registry_and_once_more_at_shutdown(
        protocol: Protocol,
        transport: Transport,
    ) {
        let receiver = OtlpReceiver::start().unwrap();
        let (registry, requests, duration) = registry();
        let before = unix_nanos(SystemTime::now());
        let handle = start(
            config(
                endpoint(&receiver, protocol),
                protocol,
                Duration::from_millis(100),
            ),
            &registry,
        )
        .unwrap();
        let first = wait_for(&receiver, "http_server_request_duration_seconds", |_| true).await;
        assert_eq!(first.histogram_point(&SERVER).unwrap().count, 6);

        // Cumulative: the next exports carry the new totals.
        requests
            .with_label_values(&["/users/{id}", "api"])
            .inc_by(2);
        for seconds in [8.0, 16.0] {
            duration
                .with_label_values(&["/users/{id}", "api"])
                .observe(seconds);
        }
        handle.shutdown().await;
        let exports = receiver.metrics_exports();
        let last = exports.last().unwrap();
        assert_eq!(last.transport, transport);
        assert_eq!(last.headers["x-tenant"], "blue");
        let resource = last.request.resource_metrics[0].resource.as_ref().unwrap();
        assert_eq!(
            resource.attributes,
            [
                string_attribute("service.name", "sonde"),
                string_attribute("host.name", "node-1"),
                attribute(
                    "process.pid",
                    any_value::Value::IntValue(i64::from(std::process::id()))
                ),
            ]
        );
        let metrics = &last.request.resource_metrics[0].scope_metrics[0].metrics;
        let now = match &metrics[0].data {
            Some(Data::Gauge(gauge)) => gauge.data_points[0].time_unix_nano,
            other => panic!("{other:?}"),
        };
        let start_time = match &metrics[1].data {
            Some(Data::Histogram(h)) => h.data_points[0].start_time_unix_nano,
            other => panic!("{other:?}"),
        };
        assert!(
            before <= start_time && start_time < now,
            "{before} {start_time} {now}"
        );
        // The exporter's own counter is in the registry, hence exported.
        let mut expected = expected_metrics(start_time, now, 8);
        if let Some(Data::Histogram(h)) = &mut expected[1].data {
            h.data_points[0].sum = Some(31.5);
        }
        expected.push(Metric {
            name: "sonde_otlp_metric_exports_failed_total".into(),
            description: "OTLP metric exports the collector did not accept.".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    start_time_unix_nano: start_time,
                    time_unix_nano: now,
                    value: Some(number_data_point::Value::AsDouble(0.0)),
                    ..NumberDataPoint::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Metric::default()
        });
        assert_eq!(metrics, &expected);
        let point = receiver
            .latest_metric("http_server_request_duration_seconds")
            .unwrap()
            .histogram_point(&SERVER)
            .cloned()
            .unwrap();
        assert_eq!(
            (point.count, point.sum, point.bucket_counts),
            (8, Some(31.5), vec![2, 1, 1, 4])
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_over_grpc() {
        exports_the_registry_and_once_more_at_shutdown(Protocol::Grpc, Transport::Grpc).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_over_http_protobuf() {
        exports_the_registry_and_once_more_at_shutdown(Protocol::HttpProtobuf, Transport::Http)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_collector_down_is_counted_and_later_exports_arrive() {
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let mut receiver = OtlpReceiver::start().unwrap();
            receiver.stop();
            let (registry, _, _) = registry();
            let handle = start(
                config(
                    endpoint(&receiver, protocol),
                    protocol,
                    Duration::from_millis(50),
                ),
                &registry,
            )
            .unwrap();
            let failed = |registry: &Registry| {
                registry
                    .gather()
                    .iter()
                    .find(|f| f.name() == "sonde_otlp_metric_exports_failed_total")
                    .map(|f| f.get_metric()[0].get_counter().get_value())
            };
            let deadline = tokio::time::Instant::now() + WAIT;
            while failed(&registry) < Some(2.0) {
                assert!(tokio::time::Instant::now() < deadline, "{protocol:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            receiver.restart().unwrap();
            let got = wait_for(&receiver, "sonde_otlp_metric_exports_failed_total", |_| {
                true
            })
            .await;
            let failures = got.number_point(&[]).unwrap().value;
            assert!(
                matches!(failures, Some(number_data_point::Value::AsDouble(n)) if n >= 2.0),
                "{failures:?}"
            );
            handle.shutdown().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_is_bounded_when_the_collector_never_answers() {
        // Accepts connections (the kernel's backlog does) and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}{METRICS_PATH}", silent.local_addr().unwrap());
        let (registry, _, _) = registry();
        let config = Config {
            timeout: Duration::from_secs(10),
            ..config(endpoint, Protocol::HttpProtobuf, Duration::from_millis(10))
        };
        let handle = start(config, &registry).unwrap();
        // An export is under way and will not finish.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stop_started = tokio::time::Instant::now();
        handle.shutdown().await;
        let took = stop_started.elapsed();
        assert!(
            took >= SHUTDOWN_GRACE - Duration::from_millis(100)
                && took <= SHUTDOWN_GRACE + Duration::from_millis(300),
            "{took:?}"
        );
    }
}
