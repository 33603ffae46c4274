//! Export of spans over OTLP: the last stage of the tracing path, after
//! `trace::Assembler`. The pipeline thread hands each finished span to a
//! [`SpanSender`], which samples it and queues it without ever waiting; an
//! [`Exporter`] task on the async runtime batches the queue, groups each batch
//! by resource (one service in one process), and sends it with
//! `opentelemetry-otlp` over gRPC or HTTP/protobuf.
//!
//! Memory is bounded by the queue and the batch being sent. A collector that
//! is down costs retries with backoff for at most the export timeout per
//! batch, then the batch is dropped and counted; spans that find the queue
//! full meanwhile are dropped and counted too.
use std::{borrow::Cow, str::FromStr as _, time::Duration};

use http::Uri;
use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_otlp::{
    RetryPolicy, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
    OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
};
use opentelemetry_sdk::{
    trace::{
        SamplingDecision, ShouldSample as _, SpanData, SpanEvents, SpanExporter as _, SpanLinks,
    },
    Resource,
};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    cli::Cli,
    clock::{Clocks, WallClock},
    exchange::Side,
    kubernetes::{self, PodLabels},
    trace::SpanRecord,
};

/// Wire protocol of the exporter, named as `OTEL_EXPORTER_OTLP_PROTOCOL` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP/gRPC (collectors listen on port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies, POST to `/v1/traces` (port 4318).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// IANA's port for OTLP/gRPC: an endpoint on it means gRPC unless told otherwise.
const GRPC_PORT: u16 = 4317;
pub(crate) const TRACES_PATH: &str = "/v1/traces";
/// The OpenTelemetry default for `OTEL_EXPORTER_OTLP_TIMEOUT`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Exporter::shutdown`] may take to send what is queued.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What the exporter needs; [`Config::from_cli`] resolves it from flags and
/// the standard `OTEL_EXPORTER_OTLP_*` variables.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where requests go: for HTTP the full URL, `/v1/traces` included.
    pub endpoint: String,
    pub protocol: Protocol,
    /// Bound on each batch's export, retries included (the meaning
    /// OpenTelemetry gives `OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
    pub sample_ratio: f64,
    /// Spans waiting for export; more are dropped and counted.
    pub queue_capacity: usize,
    /// A batch leaves when it has this many spans...
    pub max_batch: usize,
    /// ...or when its first span has waited this long.
    pub batch_delay: Duration,
    /// `host.name` of every resource.
    pub host_name: String,
}

impl Config {
    /// About 3 MiB of records at ~400 bytes each: 0.8 s of 10k spans/s.
    pub const DEFAULT_QUEUE_CAPACITY: usize = 8192;
    /// The OpenTelemetry batch span processor's defaults.
    pub const DEFAULT_MAX_BATCH: usize = 512;
    pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_secs(1);

    /// `None` when no endpoint is configured: traces are off. Precedence per
    /// setting: sonde's flag, its `SONDE_*` variable (both read by clap), the
    /// signal-specific `OTEL_EXPORTER_OTLP_TRACES_*` variable, the general
    /// `OTEL_EXPORTER_OTLP_*` one, the default. Headers
    /// (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`) and compression are read by
    /// `opentelemetry-otlp` itself when the exporter starts.
    pub fn from_cli(cli: &Cli) -> Result<Option<Config>, ConfigError> {
        Self::resolve(cli, &|name| std::env::var(name).ok(), host_name())
    }

    fn resolve(
        cli: &Cli,
        env: &dyn Fn(&str) -> Option<String>,
        host_name: String,
    ) -> Result<Option<Config>, ConfigError> {
        // The specification treats an empty variable as unset.
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let Some(signal) = resolve_signal(cli, &var, &TRACES)? else {
            return Ok(None);
        };
        Ok(Some(Config {
            endpoint: signal.endpoint,
            protocol: signal.protocol,
            timeout: signal.timeout,
            sample_ratio: cli.trace_sample_ratio,
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
            max_batch: Self::DEFAULT_MAX_BATCH,
            batch_delay: Self::DEFAULT_BATCH_DELAY,
            host_name,
        }))
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{variable}: {reason}")]
    Endpoint {
        variable: &'static str,
        reason: String,
    },
}

/// An OTLP endpoint as sonde accepts it: an `http://` URL with a host.
pub fn parse_endpoint(s: &str) -> Result<Uri, String> {
    if s.trim().is_empty() {
        return Err("empty: give an http:// URL, or leave it unset to turn traces off".into());
    }
    let uri: Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(uri),
        Some("https") => Err(format!(
            "`{s}`: https needs TLS, which this build of sonde does not include; use http://"
        )),
        _ => Err(format!("`{s}` is not an http:// URL with a host")),
    }
}

/// The standard variables and the HTTP path of one OTLP signal.
pub(crate) struct Signal {
    pub endpoint_var: &'static str,
    pub protocol_var: &'static str,
    pub timeout_var: &'static str,
    pub path: &'static str,
}

pub(crate) const TRACES: Signal = Signal {
    endpoint_var: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    protocol_var: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    timeout_var: OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
    path: TRACES_PATH,
};

/// Where and how one signal is exported.
pub(crate) struct SignalTarget {
    pub endpoint: String,
    pub protocol: Protocol,
    pub timeout: Duration,
}

/// Endpoint, protocol and timeout of `signal`: sonde's flag (or its
/// `SONDE_*` variable), then the signal's own variable, then the general
/// `OTEL_EXPORTER_OTLP_*` one, then the default. `None` without any endpoint.
/// `var` must already treat empty variables as unset.
pub(crate) fn resolve_signal(
    cli: &Cli,
    var: &dyn Fn(&str) -> Option<String>,
    signal: &Signal,
) -> Result<Option<SignalTarget>, ConfigError> {
    let from_var = |name: &'static str| {
        var(name)
            .map(|value| {
                parse_endpoint(&value).map_err(|reason| ConfigError::Endpoint {
                    variable: name,
                    reason,
                })
            })
            .transpose()
    };
    let (uri, origin) = if let Some(uri) = &cli.otlp_endpoint {
        (uri.clone(), Origin::Sonde)
    } else if let Some(uri) = from_var(signal.endpoint_var)? {
        (uri, Origin::SignalVariable)
    } else if let Some(uri) = from_var(OTEL_EXPORTER_OTLP_ENDPOINT)? {
        (uri, Origin::BaseVariable)
    } else {
        return Ok(None);
    };
    let protocol = cli
        .otlp_protocol
        .or_else(|| protocol_from(signal.protocol_var, var))
        .or_else(|| protocol_from(OTEL_EXPORTER_OTLP_PROTOCOL, var))
        .unwrap_or(if uri.port_u16() == Some(GRPC_PORT) {
            Protocol::Grpc
        } else {
            Protocol::HttpProtobuf
        });
    let timeout = timeout_from(signal.timeout_var, var)
        .or_else(|| timeout_from(OTEL_EXPORTER_OTLP_TIMEOUT, var))
        .unwrap_or(DEFAULT_TIMEOUT);
    Ok(Some(SignalTarget {
        endpoint: endpoint_url(&uri, origin, protocol, signal.path),
        protocol,
        timeout,
    }))
}

/// Where the endpoint came from, which decides how an HTTP path is completed.
#[derive(Clone, Copy)]
enum Origin {
    /// `--otlp-endpoint`: a collector's base URL, or the full URL of a
    /// signal (traces and metrics share the flag).
    Sonde,
    /// A signal's own variable (`…_TRACES_ENDPOINT`): used as is, per the
    /// specification.
    SignalVariable,
    /// A base URL that the signal's path is appended to, per the specification.
    BaseVariable,
}

/// The URL a signal is exported to; `signal_path` is `/v1/traces` or
/// `/v1/metrics`. gRPC names its own path (`/opentelemetry.proto…/Export`).
fn endpoint_url(uri: &Uri, origin: Origin, protocol: Protocol, signal_path: &str) -> String {
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        // parse_endpoint admitted only absolute URLs.
        return uri.to_string();
    };
    let path = match (protocol, origin) {
        (Protocol::Grpc, _) => return format!("{scheme}://{authority}"),
        (Protocol::HttpProtobuf, Origin::SignalVariable) => uri.path().to_owned(),
        (Protocol::HttpProtobuf, Origin::Sonde) if uri.path().ends_with(signal_path) => {
            uri.path().to_owned()
        }
        // --otlp-endpoint may name the traces URL: the collector's base is before it.
        (Protocol::HttpProtobuf, Origin::Sonde) => format!(
            "{}{signal_path}",
            uri.path()
                .trim_end_matches(TRACES_PATH)
                .trim_end_matches('/')
        ),
        (Protocol::HttpProtobuf, Origin::BaseVariable) => {
            format!("{}{signal_path}", uri.path().trim_end_matches('/'))
        }
    };
    match uri.query() {
        Some(query) => format!("{scheme}://{authority}{path}?{query}"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// An unusable value in a standard variable is ignored with a warning, as
/// the OpenTelemetry specification asks.
pub(crate) fn protocol_from(name: &str, var: &dyn Fn(&str) -> Option<String>) -> Option<Protocol> {
    let value = var(name)?;
    let protocol = <Protocol as clap::ValueEnum>::from_str(value.trim(), false).ok();
    if protocol.is_none() {
        tracing::warn!("{name}={value} ignored: sonde exports with grpc or http/protobuf");
    }
    protocol
}

/// Milliseconds, as the specification defines the variable.
pub(crate) fn timeout_from(name: &str, var: &dyn Fn(&str) -> Option<String>) -> Option<Duration> {
    let value = var(name)?;
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
        _ => {
            tracing::warn!("{name}={value} ignored: not a positive number of milliseconds");
            None
        }
    }
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// Why a span was not exported, the `reason` of `sonde_spans_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The export queue was full.
    QueueFull,
    /// The collector did not take the batch within the export timeout.
    ExportFailed,
    /// The span assembler's window was full (counted by `trace::Assembler`).
    WindowFull,
}

impl DropReason {
    const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::ExportFailed,
        DropReason::WindowFull,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::ExportFailed => "export_failed",
            DropReason::WindowFull => "window_full",
        }
    }
}

/// `sonde_spans_exported_total` and `sonde_spans_dropped_total{reason}`.
#[derive(Clone)]
struct Counters {
    exported: IntCounter,
    dropped: IntCounterVec,
}

impl Counters {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let exported = IntCounter::new(
            "sonde_spans_exported_total",
            "Spans the OTLP collector accepted.",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "sonde_spans_dropped_total",
                "Spans that were not exported, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(exported.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        for reason in DropReason::ALL {
            dropped.with_label_values(&[reason.label()]);
        }
        Ok(Counters { exported, dropped })
    }

    fn dropped(&self, reason: DropReason, spans: u64) {
        self.dropped
            .with_label_values(&[reason.label()])
            .inc_by(spans);
    }
}

/// Parent-based sampling: the caller's decision when the trace came with a
/// W3C traceparent, else OpenTelemetry's trace-id-ratio decision, which
/// depends on the trace id only, so all spans of a trace share it.
#[derive(Clone, Debug)]
struct Sampler(opentelemetry_sdk::trace::Sampler);

impl Sampler {
    fn new(ratio: f64) -> Self {
        Sampler(opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(ratio))
    }

    fn keeps(&self, span: &SpanRecord) -> bool {
        if let Some(caller_decided) = span.sampled {
            return caller_decided;
        }
        let decision = self
            .0
            .should_sample(
                None,
                TraceId::from_bytes(span.trace_id),
                &span.name,
                &span_kind(span.kind),
                &[],
                &[],
            )
            .decision;
        decision == SamplingDecision::RecordAndSample
    }
}

/// What became of a span handed to [`SpanSender::try_send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Queued,
    /// Not sampled: not exported, by design (not a drop).
    SampledOut,
    /// Dropped and counted (`reason="queue_full"`).
    QueueFull,
    /// The exporter has stopped.
    Closed,
}

/// The pipeline's end of the export queue. Cheap to clone.
#[derive(Clone)]
pub struct SpanSender {
    queue: mpsc::Sender<SpanRecord>,
    sampler: Sampler,
    counters: Counters,
}

impl SpanSender {
    /// Samples and queues `span`; never waits, so it is safe on the pipeline
    /// thread and from outside the async runtime.
    pub fn try_send(&self, span: SpanRecord) -> Admission {
        if !self.sampler.keeps(&span) {
            return Admission::SampledOut;
        }
        match self.queue.try_send(span) {
            Ok(()) => Admission::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped(DropReason::QueueFull, 1);
                Admission::QueueFull
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Admission::Closed,
        }
    }

    /// Counts spans dropped before they reached the queue (the assembler's
    /// window), in the same metric family.
    pub fn count_dropped(&self, reason: DropReason, spans: u64) {
        self.counters.dropped(reason, spans);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("registering the span metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The export task. Dropping it leaves the task running until every
/// [`SpanSender`] is gone; [`Exporter::shutdown`] ends it sooner.
pub struct Exporter {
    task: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl Exporter {
    /// Builds the OTLP client, registers the span metrics and spawns the
    /// export task on the current tokio runtime (call it inside one).
    pub fn start(
        config: Config,
        registry: &Registry,
    ) -> Result<(SpanSender, Exporter), StartError> {
        let client = client(&config)?;
        let counters = Counters::new(registry)?;
        let (queue, spans) = mpsc::channel(config.queue_capacity.max(1));
        let (stop, stopped) = oneshot::channel();
        let sender = SpanSender {
            queue,
            sampler: Sampler::new(config.sample_ratio),
            counters: counters.clone(),
        };
        let batcher = Batcher {
            client,
            spans,
            counters,
            scope: InstrumentationScope::builder("sonde")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            config,
        };
        let task = tokio::spawn(batcher.run(stopped));
        Ok((sender, Exporter { task, stop }))
    }

    /// Sends what is queued, for at most [`SHUTDOWN_GRACE`], then ends.
    pub async fn shutdown(self) {
        let Exporter { mut task, stop } = self;
        // An error means the task already ended: the senders are gone.
        let _ = stop.send(());
        // The task bounds its own flush; this also covers a batch whose
        // export began before the stop.
        if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_millis(200), &mut task)
            .await
            .is_err()
        {
            task.abort();
            tracing::warn!("span export did not finish in time: spans still queued are lost");
        }
    }
}

fn client(config: &Config) -> Result<opentelemetry_otlp::SpanExporter, StartError> {
    // Backoff from 100 ms to 5 s; the timeout bounds the whole, so the
    // attempt count only caps a very long timeout.
    let retry = RetryPolicy::recommended()
        .with_initial_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_retries(16);
    let builder = opentelemetry_otlp::SpanExporter::builder();
    Ok(match config.protocol {
        Protocol::Grpc => builder
            .with_tonic()
            .with_endpoint(&config.endpoint)
            .with_timeout(config.timeout)
            .with_retry_policy(retry)
            .build()?,
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&config.endpoint)
            .with_timeout(config.timeout)
            .with_retry_policy(retry)
            .build()?,
    })
}

struct Batcher {
    client: opentelemetry_otlp::SpanExporter,
    spans: mpsc::Receiver<SpanRecord>,
    counters: Counters,
    scope: InstrumentationScope,
    config: Config,
}

impl Batcher {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let max_batch = self.config.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch);
        let mut due: Option<Instant> = None;
        loop {
            let room = max_batch - batch.len();
            tokio::select! {
                biased;
                _ = &mut stop => break,
                received = self.spans.recv_many(&mut batch, room) => {
                    if received == 0 {
                        break; // every sender is gone
                    }
                    let first = *due.get_or_insert_with(|| Instant::now() + self.config.batch_delay);
                    if batch.len() < max_batch && Instant::now() < first {
                        continue;
                    }
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
            }
            due = None;
            let deadline = Instant::now() + self.config.timeout;
            self.export(std::mem::take(&mut batch), deadline).await;
        }

        // Stopping: what is queued goes out, within the grace period.
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        self.spans.close();
        while !batch.is_empty() || self.spans.recv_many(&mut batch, max_batch).await > 0 {
            self.export(std::mem::take(&mut batch), deadline).await;
        }
    }

    /// Sends one batch, one request per resource, until `deadline`; what is
    /// not accepted by then is dropped and counted.
    async fn export(&mut self, batch: Vec<SpanRecord>, deadline: Instant) {
        let clock = WallClock::new();
        let mut failed = 0;
        let mut first_error = None;
        for group in group_by_resource(batch) {
            let spans = group.len() as u64;
            self.client
                .set_resource(&resource(&group[0], &self.config.host_name));
            let data = group
                .into_iter()
                .map(|record| span_data(record, &clock, &self.scope))
                .collect();
            let outcome = match tokio::time::timeout_at(deadline, self.client.export(data)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "no answer within {} ms",
                    self.config.timeout.as_millis()
                )),
            };
            match outcome {
                Ok(()) => self.counters.exported.inc_by(spans),
                Err(e) => {
                    failed += spans;
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(error) = first_error {
            self.counters.dropped(DropReason::ExportFailed, failed);
            tracing::warn!(
                spans = failed,
                endpoint = %self.config.endpoint,
                "span export failed, spans dropped: {error}"
            );
        }
    }
}

/// Batches in resource order, each group one resource; order within a
/// group is kept.
fn group_by_resource(mut batch: Vec<SpanRecord>) -> Vec<Vec<SpanRecord>> {
    fn key(s: &SpanRecord) -> (&str, u32, &str, Option<&PodLabels>) {
        (&s.service_name, s.pid, &s.exe_name, s.pod.as_deref())
    }
    batch.sort_by(|a, b| key(a).cmp(&key(b)));
    let mut groups: Vec<Vec<SpanRecord>> = Vec::new();
    for span in batch {
        match groups.last_mut() {
            Some(group) if key(&group[0]) == key(&span) => group.push(span),
            _ => groups.push(vec![span]),
        }
    }
    groups
}

fn resource(span: &SpanRecord, host_name: &str) -> Resource {
    let pod = span.pod.iter().flat_map(|pod| {
        kubernetes::ATTRIBUTES
            .iter()
            .zip(pod.values())
            .filter(|(_, value)| !value.is_empty())
            .map(|(&name, value)| KeyValue::new(name, value.clone()))
    });
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", span.service_name.clone()),
            KeyValue::new("process.pid", i64::from(span.pid)),
            KeyValue::new("process.executable.name", span.exe_name.clone()),
            KeyValue::new("host.name", host_name.to_owned()),
        ])
        .with_attributes(pod)
        .build()
}

fn span_kind(side: Side) -> SpanKind {
    match side {
        Side::Server => SpanKind::Server,
        Side::Client => SpanKind::Client,
    }
}

/// A span as OpenTelemetry's exporters take it, with attributes per the
/// HTTP semantic conventions. Only what the conventions name is exported:
/// no header value, body or query string.
fn span_data<C: Clocks>(
    span: SpanRecord,
    clock: &WallClock<C>,
    scope: &InstrumentationScope,
) -> SpanData {
    let trace_state = span
        .tracestate
        .as_deref()
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let mut attributes = Vec::with_capacity(11);
    attributes.push(KeyValue::new("http.request.method", span.method));
    attributes.push(KeyValue::new(
        "url.path",
        without_query(&span.path).to_owned(),
    ));
    if !span.route.is_empty() {
        attributes.push(KeyValue::new(
            "http.route",
            without_query(&span.route).to_owned(),
        ));
    }
    attributes.extend([
        KeyValue::new("http.response.status_code", i64::from(span.status)),
        KeyValue::new("server.address", span.server.ip().to_string()),
        KeyValue::new("server.port", i64::from(span.server.port())),
        KeyValue::new("client.address", span.client.ip().to_string()),
        KeyValue::new("client.port", i64::from(span.client.port())),
        KeyValue::new("network.protocol.version", span.protocol_version),
    ]);
    let status = if span.error {
        attributes.push(KeyValue::new("error.type", span.status.to_string()));
        Status::error("")
    } else {
        Status::Unset
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(span.trace_id),
            SpanId::from_bytes(span.span_id),
            TraceFlags::SAMPLED,
            false,
            trace_state,
        ),
        parent_span_id: span
            .parent_span_id
            .map_or(SpanId::INVALID, SpanId::from_bytes),
        // A server's parent is always in another process: the caller named by
        // a traceparent or a client span stitched across processes.
        parent_span_is_remote: span.kind == Side::Server && span.parent_span_id.is_some(),
        span_kind: span_kind(span.kind),
        name: Cow::Owned(without_query(&span.name).to_owned()),
        start_time: clock.to_system_time(span.start_mono_ns),
        end_time: clock.to_system_time(span.end_mono_ns),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// The parser already cuts paths at `?`; the export boundary makes sure.
fn without_query(s: &str) -> &str {
    s.split(['?', '#']).next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener};

    use std::time::SystemTime;

    use opentelemetry::Value;
    use sonde_tests::otlp_receiver::{hex, OtlpReceiver, ReceivedSpan, Transport};

    use super::*;
    use crate::cli::test_env::parse_with_env;

    const WAIT: Duration = Duration::from_secs(5);
    /// 2023-11-14T22:13:20Z minus 1000 s of uptime.
    const OFFSET_NS: u64 = 1_699_999_000_000_000_000;

    fn server_span() -> SpanRecord {
        SpanRecord {
            trace_id: [0xab; 16],
            span_id: [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
            parent_span_id: Some([0xcd; 8]),
            tracestate: Some("vendor=opaque".into()),
            sampled: Some(true),
            kind: Side::Server,
            name: "GET /users/{id}".into(),
            start_mono_ns: 1_000_000_000_000,
            end_mono_ns: 1_000_042_000_000,
            method: "GET".into(),
            path: "/users/42".into(),
            route: "/users/{id}".into(),
            status: 503,
            server: "10.0.0.1:8080".parse().unwrap(),
            client: "10.0.0.2:50123".parse().unwrap(),
            protocol_version: "1.1",
            error: true,
            service_name: "users".into(),
            pid: 4242,
            exe_name: "python3".into(),
            pod: None,
        }
    }

    fn client_span() -> SpanRecord {
        SpanRecord {
            span_id: [0x11; 8],
            parent_span_id: None,
            tracestate: None,
            sampled: None,
            kind: Side::Client,
            name: "POST".into(),
            method: "POST".into(),
            path: "/orders".into(),
            route: String::new(),
            status: 201,
            server: "[2001:db8::1]:443".parse().unwrap(),
            client: "[2001:db8::2]:40000".parse().unwrap(),
            protocol_version: "1.0",
            error: false,
            ..server_span()
        }
    }

    fn scope() -> InstrumentationScope {
        InstrumentationScope::builder("sonde").build()
    }

    /// Clocks whose realtime is always `OFFSET_NS` ahead of monotonic.
    struct Offset;

    impl Clocks for Offset {
        fn realtime_ns(&self) -> u64 {
            1_000 + OFFSET_NS
        }
        fn monotonic_ns(&self) -> u64 {
            1_000
        }
    }

    fn clock() -> WallClock<Offset> {
        WallClock::with_clocks(Offset)
    }

    fn attributes(data: &SpanData) -> Vec<(&str, Value)> {
        data.attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.clone()))
            .collect()
    }

    fn s(v: &str) -> Value {
        Value::from(v.to_owned())
    }

    #[test]
    fn a_server_span_carries_its_ids_times_attributes_and_error() {
        let data = span_data(server_span(), &clock(), &scope());
        assert_eq!(
            data.span_context.trace_id(),
            TraceId::from_bytes([0xab; 16])
        );
        assert_eq!(
            data.span_context.span_id(),
            SpanId::from_hex("0102030405060708").unwrap()
        );
        assert!(data.span_context.is_sampled());
        assert_eq!(data.span_context.trace_state().header(), "vendor=opaque");
        assert_eq!(data.parent_span_id, SpanId::from_bytes([0xcd; 8]));
        assert!(data.parent_span_is_remote);
        assert_eq!(data.span_kind, SpanKind::Server);
        assert_eq!(data.name, "GET /users/{id}");
        assert_eq!(
            data.start_time,
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000)
        );
        assert_eq!(
            data.end_time,
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_042_000_000)
        );
        assert_eq!(
            attributes(&data),
            [
                ("http.request.method", s("GET")),
                ("url.path", s("/users/42")),
                ("http.route", s("/users/{id}")),
                ("http.response.status_code", Value::I64(503)),
                ("server.address", s("10.0.0.1")),
                ("server.port", Value::I64(8080)),
                ("client.address", s("10.0.0.2")),
                ("client.port", Value::I64(50123)),
                ("network.protocol.version", s("1.1")),
                ("error.type", s("503")),
            ]
        );
        assert_eq!(data.status, Status::error(""));
        assert_eq!(data.instrumentation_scope.name(), "sonde");
    }

    #[test]
    fn a_root_client_span_without_a_route_is_ok_and_local() {
        let data = span_data(client_span(), &clock(), &scope());
        assert_eq!(data.parent_span_id, SpanId::INVALID);
        assert!(!data.parent_span_is_remote);
        assert_eq!(data.span_kind, SpanKind::Client);
        assert_eq!(data.name, "POST");
        assert_eq!(data.span_context.trace_state().header(), "");
        assert_eq!(
            attributes(&data),
            [
                ("http.request.method", s("POST")),
                ("url.path", s("/orders")),
                ("http.response.status_code", Value::I64(201)),
                ("server.address", s("2001:db8::1")),
                ("server.port", Value::I64(443)),
                ("client.address", s("2001:db8::2")),
                ("client.port", Value::I64(40000)),
                ("network.protocol.version", s("1.0")),
            ]
        );
        assert_eq!(data.status, Status::Unset);
    }

    #[test]
    fn a_client_error_is_4xx_or_5xx_as_the_record_says() {
        let span = SpanRecord {
            status: 404,
            error: true,
            ..client_span()
        };
        let data = span_data(span, &clock(), &scope());
        assert_eq!(data.status, Status::error(""));
        assert_eq!(attributes(&data).last(), Some(&("error.type", s("404"))));
    }

    #[test]
    fn no_attribute_carries_a_query_string_or_a_header_value() {
        let span = SpanRecord {
            name: "GET /search?q=secret".into(),
            path: "/search?q=secret&token=hunter2#frag".into(),
            route: "/search?q=secret".into(),
            tracestate: Some("vendor=opaque".into()),
            ..server_span()
        };
        let data = span_data(span, &clock(), &scope());
        assert_eq!(data.name, "GET /search");
        let allowed = [
            "http.request.method",
            "url.path",
            "http.route",
            "http.response.status_code",
            "server.address",
            "server.port",
            "client.address",
            "client.port",
            "network.protocol.version",
            "error.type",
        ];
        for (key, value) in attributes(&data) {
            assert!(
                allowed.contains(&key),
                "{key} is not a semantic-convention attribute"
            );
            let value = value.as_str();
            for leak in ["?", "#", "secret", "hunter2", "opaque"] {
                assert!(!value.contains(leak), "{key}={value} leaks {leak:?}");
            }
        }
        assert_eq!(attributes(&data)[1], ("url.path", s("/search")));
        assert_eq!(attributes(&data)[2], ("http.route", s("/search")));
    }

    #[test]
    fn batches_group_by_resource_in_order() {
        let span = |service: &str, pid: u32, id: u8| SpanRecord {
            service_name: service.into(),
            pid,
            span_id: [id; 8],
            ..server_span()
        };
        let groups = group_by_resource(vec![
            span("web", 7, 1),
            span("api", 9, 2),
            span("web", 7, 3),
            span("api", 8, 4),
            span("web", 7, 5),
        ]);
        let ids: Vec<Vec<u8>> = groups
            .iter()
            .map(|g| g.iter().map(|s| s.span_id[0]).collect())
            .collect();
        assert_eq!(ids, [vec![4], vec![2], vec![1, 3, 5]]);
    }

    #[test]
    fn a_resource_is_service_process_and_host() {
        let resource = resource(&server_span(), "node-1");
        let mut attributes: Vec<(String, Value)> = resource
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        attributes.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            attributes,
            [
                ("host.name".to_owned(), s("node-1")),
                ("process.executable.name".to_owned(), s("python3")),
                ("process.pid".to_owned(), Value::I64(4242)),
                ("service.name".to_owned(), s("users")),
            ]
        );
    }

    #[test]
    fn a_resource_in_a_pod_has_its_kubernetes_attributes() {
        let pod = kubernetes::Pod {
            uid: "6b1f0e2a-4c3d-4e5f-9a8b-7c6d5e4f3a2b".into(),
            namespace: "shop".into(),
            name: "users-0".into(),
            workloads: vec![(kubernetes::Workload::StatefulSet, "users".into())],
            containers: Vec::new(),
        };
        let span = SpanRecord {
            pod: Some(std::sync::Arc::new(PodLabels::new(&pod, "app"))),
            ..server_span()
        };
        let mut attributes: Vec<(String, Value)> = resource(&span, "node-1")
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        attributes.sort_by(|a, b| a.0.cmp(&b.0));
        let k8s: Vec<_> = attributes
            .iter()
            .filter(|(k, _)| k.starts_with("k8s."))
            .collect();
        assert_eq!(
            k8s,
            [
                &("k8s.container.name".to_owned(), s("app")),
                &("k8s.namespace.name".to_owned(), s("shop")),
                &("k8s.pod.name".to_owned(), s("users-0")),
                &("k8s.statefulset.name".to_owned(), s("users")),
            ]
        );
        assert_eq!(attributes.len(), 8, "{attributes:?}");
    }

    #[test]
    fn sampling_follows_a_traceparent_else_the_trace_id() {
        // The ratio decision compares the trace id's low 63 bits (bytes 8..16
        // big-endian, shifted right once) with ratio × 2^63.
        let low = [0x00; 16];
        let mut just_under_half = [0x00; 16];
        just_under_half[8..].copy_from_slice(&0x7fff_ffff_ffff_fffe_u64.to_be_bytes());
        let mut half = [0x00; 16];
        half[8..].copy_from_slice(&0x8000_0000_0000_0000_u64.to_be_bytes());
        let high = [0xff; 16];
        let span = |trace_id, sampled| SpanRecord {
            trace_id,
            sampled,
            ..client_span()
        };
        for (ratio, trace_id, sampled, kept) in [
            (1.0, high, None, true),
            (0.0, low, None, false),
            (0.5, low, None, true),
            (0.5, just_under_half, None, true),
            (0.5, half, None, false),
            (0.5, high, None, false),
            // The caller's traceparent decided: its decision stands.
            (0.0, high, Some(true), true),
            (1.0, low, Some(false), false),
        ] {
            assert_eq!(
                Sampler::new(ratio).keeps(&span(trace_id, sampled)),
                kept,
                "ratio {ratio}, trace {}, traceparent sampled {sampled:?}",
                hex(&trace_id)
            );
        }
    }

    fn scrape(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut out)
            .unwrap();
        out
    }

    fn counts(registry: &Registry) -> [u64; 4] {
        let text = scrape(registry);
        let value = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{series} not in\n{text}"))
        };
        [
            value("sonde_spans_exported_total"),
            value(r#"sonde_spans_dropped_total{reason="queue_full"}"#),
            value(r#"sonde_spans_dropped_total{reason="export_failed"}"#),
            value(r#"sonde_spans_dropped_total{reason="window_full"}"#),
        ]
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let registry = Registry::new();
        let (queue, mut spans) = mpsc::channel(2);
        let sender = SpanSender {
            queue,
            sampler: Sampler::new(0.5),
            counters: Counters::new(&registry).unwrap(),
        };
        assert_eq!(
            counts(&registry),
            [0, 0, 0, 0],
            "every reason from the start"
        );
        let kept = SpanRecord {
            trace_id: [0x00; 16],
            ..client_span()
        };
        let outcomes: Vec<Admission> = (0..5)
            .map(|_| sender.try_send(kept.clone()))
            .chain([sender.try_send(SpanRecord {
                trace_id: [0xff; 16],
                ..client_span()
            })])
            .collect();
        use Admission::{QueueFull, Queued, SampledOut};
        assert_eq!(
            outcomes,
            [Queued, Queued, QueueFull, QueueFull, QueueFull, SampledOut]
        );
        sender.count_dropped(DropReason::WindowFull, 7);
        assert_eq!(counts(&registry), [0, 3, 0, 7]);
        spans.close();
        assert_eq!(sender.try_send(kept), Admission::Closed);
    }

    fn config(endpoint: String, protocol: Protocol) -> Config {
        Config {
            endpoint,
            protocol,
            timeout: Duration::from_millis(300),
            sample_ratio: 1.0,
            queue_capacity: 64,
            max_batch: 512,
            batch_delay: Duration::from_secs(60),
            host_name: "node-1".into(),
        }
    }

    async fn eventually(registry: &Registry, expected: [u64; 4]) {
        let deadline = Instant::now() + WAIT;
        while counts(registry) != expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(counts(registry), expected);
    }

    fn assert_is(got: &ReceivedSpan, sent: &SpanRecord, transport: Transport) {
        assert_eq!(got.transport, transport);
        assert_eq!(got.name(), sent.name);
        assert_eq!(got.trace_id(), hex(&sent.trace_id));
        assert_eq!(got.span_id(), hex(&sent.span_id));
        assert_eq!(got.parent_span_id(), sent.parent_span_id.map(|p| hex(&p)));
        assert_eq!(
            got.span.trace_state,
            sent.tracestate.clone().unwrap_or_default()
        );
        let mono_to_unix = |mono: u64| {
            let unix = WallClock::new().to_unix_ns(mono);
            unix.abs_diff(got.span.start_time_unix_nano)
        };
        assert!(mono_to_unix(sent.start_mono_ns) < 1_000_000_000);
        assert_eq!(
            got.span.end_time_unix_nano - got.span.start_time_unix_nano,
            sent.end_mono_ns - sent.start_mono_ns
        );
        assert_eq!(got.str_attribute("url.path"), Some(sent.path.as_str()));
        assert_eq!(
            got.int_attribute("http.response.status_code"),
            Some(i64::from(sent.status))
        );
        assert_eq!(
            got.resource_str("service.name"),
            Some(sent.service_name.as_str())
        );
        assert_eq!(got.resource_int("process.pid"), Some(i64::from(sent.pid)));
        assert_eq!(
            got.resource_str("process.executable.name"),
            Some(sent.exe_name.as_str())
        );
        assert_eq!(got.resource_str("host.name"), Some("node-1"));
        assert_eq!(got.resource.len(), 4);
        assert_eq!(got.scope_name, "sonde");
    }

    /// Three spans of two processes, sent at shutdown (the batch delay is
    /// long): one request per resource, every span exact.
    async fn exports_and_flushes_at_shutdown(protocol: Protocol, transport: Transport) {
        let receiver = OtlpReceiver::start().unwrap();
        let endpoint = match protocol {
            Protocol::Grpc => receiver.grpc_endpoint(),
            Protocol::HttpProtobuf => format!("{}{TRACES_PATH}", receiver.http_endpoint()),
        };
        let registry = Registry::new();
        let (sender, exporter) = Exporter::start(config(endpoint, protocol), &registry).unwrap();
        let other_process = SpanRecord {
            span_id: [0x22; 8],
            pid: 5151,
            service_name: "orders".into(),
            ..client_span()
        };
        let sent = [server_span(), client_span(), other_process];
        for span in &sent {
            assert_eq!(sender.try_send(span.clone()), Admission::Queued);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(receiver.spans().is_empty(), "held for the batch delay");

        exporter.shutdown().await;
        assert_eq!(counts(&registry), [3, 0, 0, 0]);
        let exports = receiver.exports();
        let per_request: Vec<usize> = exports
            .iter()
            .map(|e| e.request.resource_spans.len())
            .collect();
        assert_eq!(per_request, [1, 1]);
        let got = receiver.spans();
        assert_eq!(got.len(), 3);
        // Resource order: ("orders", 5151) before ("users", 4242).
        assert_is(&got[0], &sent[2], transport);
        assert_is(&got[1], &sent[0], transport);
        assert_is(&got[2], &sent[1], transport);
        assert_eq!(got[1].str_attribute("http.route"), Some("/users/{id}"));
        assert_eq!(got[2].attribute("http.route"), None);
        assert_eq!(sender.try_send(client_span()), Admission::Closed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_over_grpc() {
        exports_and_flushes_at_shutdown(Protocol::Grpc, Transport::Grpc).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_over_http_protobuf() {
        exports_and_flushes_at_shutdown(Protocol::HttpProtobuf, Transport::Http).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_batch_leaves_without_waiting() {
        let receiver = OtlpReceiver::start().unwrap();
        let registry = Registry::new();
        let config = Config {
            max_batch: 2,
            ..config(receiver.grpc_endpoint(), Protocol::Grpc)
        };
        let (sender, exporter) = Exporter::start(config, &registry).unwrap();
        for id in 0..5 {
            sender.try_send(SpanRecord {
                span_id: [id + 1; 8],
                ..server_span()
            });
        }
        receiver.wait_for_spans(4, WAIT).unwrap();
        exporter.shutdown().await;
        let sizes: Vec<usize> = receiver
            .exports()
            .iter()
            .map(|e| e.request.resource_spans[0].scope_spans[0].spans.len())
            .collect();
        assert_eq!(sizes, [2, 2, 1]);
        let ids: Vec<String> = receiver.spans().iter().map(ReceivedSpan::span_id).collect();
        assert_eq!(
            ids,
            (1..=5)
                .map(|i| format!("{i:02x}").repeat(8))
                .collect::<Vec<_>>()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_collector_down_costs_retries_then_a_counted_drop_and_later_spans_arrive() {
        let mut receiver = OtlpReceiver::start().unwrap();
        let registry = Registry::new();
        let config = Config {
            batch_delay: Duration::from_millis(20),
            ..config(receiver.grpc_endpoint(), Protocol::Grpc)
        };
        let (sender, exporter) = Exporter::start(config, &registry).unwrap();
        receiver.stop();
        let sent_at = Instant::now();
        sender.try_send(server_span());
        sender.try_send(client_span());
        eventually(&registry, [0, 0, 2, 0]).await;
        // Refused connections fail at once: only a retry after the first
        // backoff (100 ms) takes this long.
        assert!(
            sent_at.elapsed() >= Duration::from_millis(100),
            "{:?}",
            sent_at.elapsed()
        );

        receiver.restart().unwrap();
        let later = SpanRecord {
            span_id: [0x77; 8],
            ..server_span()
        };
        sender.try_send(later.clone());
        let got = receiver.wait_for_spans(1, WAIT).unwrap();
        assert_eq!(got.len(), 1);
        assert_is(&got[0], &later, Transport::Grpc);
        eventually(&registry, [1, 0, 2, 0]).await;
        exporter.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_collector_that_never_answers_costs_one_timeout_per_batch() {
        // Accepts connections (the kernel's backlog does) and never answers.
        let silent = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let endpoint = format!("http://{}{TRACES_PATH}", silent.local_addr().unwrap());
        let registry = Registry::new();
        let config = Config {
            batch_delay: Duration::from_millis(20),
            ..config(endpoint, Protocol::HttpProtobuf)
        };
        let (sender, exporter) = Exporter::start(config, &registry).unwrap();
        let sent_at = Instant::now();
        sender.try_send(server_span());
        eventually(&registry, [0, 0, 1, 0]).await;
        let took = sent_at.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        let stop_started = Instant::now();
        exporter.shutdown().await;
        assert!(stop_started.elapsed() <= SHUTDOWN_GRACE + Duration::from_millis(300));
    }

    #[test]
    fn configuration_precedence() {
        type Vars = &'static [(&'static str, &'static str)];
        type Expected = Option<(&'static str, Protocol, u64)>;
        use Protocol::{Grpc, HttpProtobuf as Http};
        let cases: &[(&[&str], Vars, Vars, Expected)] = &[
            // Nothing configured: traces are off.
            (&[], &[], &[], None),
            (&[], &[], &[(OTEL_EXPORTER_OTLP_ENDPOINT, " ")], None),
            // Standard variables: a base URL gets /v1/traces, a traces URL is used as is.
            (
                &[],
                &[],
                &[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318")],
                Some(("http://c:4318/v1/traces", Http, 10_000)),
            ),
            (
                &[],
                &[],
                &[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318/otlp/")],
                Some(("http://c:4318/otlp/v1/traces", Http, 10_000)),
            ),
            (
                &[],
                &[],
                &[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317")],
                Some(("http://c:4317", Grpc, 10_000)),
            ),
            (
                &[],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://base:4318"),
                    (
                        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                        "http://traces:4318/custom",
                    ),
                ],
                Some(("http://traces:4318/custom", Http, 10_000)),
            ),
            // SONDE_OTLP_ENDPOINT beats them, the flag beats it.
            (
                &[],
                &[("SONDE_OTLP_ENDPOINT", "http://sonde:4318")],
                &[(
                    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                    "http://traces:4318/custom",
                )],
                Some(("http://sonde:4318/v1/traces", Http, 10_000)),
            ),
            (
                &["--otlp-endpoint", "http://flag:4318/v1/traces"],
                &[("SONDE_OTLP_ENDPOINT", "http://sonde:4318")],
                &[],
                Some(("http://flag:4318/v1/traces", Http, 10_000)),
            ),
            // Protocol: flag, SONDE_, TRACES_, general, then the port.
            (
                &[],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318/x"),
                    (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
                ],
                Some(("http://c:4318", Grpc, 10_000)),
            ),
            (
                &[],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                    (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
                    (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/protobuf"),
                ],
                Some(("http://c:4317/v1/traces", Http, 10_000)),
            ),
            (
                &[],
                &[("SONDE_OTLP_PROTOCOL", "grpc")],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318"),
                    (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/protobuf"),
                ],
                Some(("http://c:4318", Grpc, 10_000)),
            ),
            (
                &["--otlp-protocol", "http/protobuf"],
                &[("SONDE_OTLP_PROTOCOL", "grpc")],
                &[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317")],
                Some(("http://c:4317/v1/traces", Http, 10_000)),
            ),
            // An unusable standard value is ignored.
            (
                &[],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                    (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/json"),
                ],
                Some(("http://c:4317", Grpc, 10_000)),
            ),
            // Timeout: TRACES_ before the general one, milliseconds.
            (
                &[],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                    (OTEL_EXPORTER_OTLP_TIMEOUT, "2500"),
                ],
                Some(("http://c:4317", Grpc, 2_500)),
            ),
            (
                &[],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                    (OTEL_EXPORTER_OTLP_TIMEOUT, "2500"),
                    (OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "700"),
                ],
                Some(("http://c:4317", Grpc, 700)),
            ),
            (
                &[],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                    (OTEL_EXPORTER_OTLP_TIMEOUT, "2500"),
                    (OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "2s"),
                ],
                Some(("http://c:4317", Grpc, 2_500)),
            ),
            (
                &[],
                &[],
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                    (OTEL_EXPORTER_OTLP_TIMEOUT, "0"),
                ],
                Some(("http://c:4317", Grpc, 10_000)),
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
            let got = Config::resolve(&cli, &env, "node-1".into()).unwrap();
            let got = got.as_ref().map(|c| {
                (
                    c.endpoint.as_str(),
                    c.protocol,
                    c.timeout.as_millis() as u64,
                )
            });
            assert_eq!(got, *expected, "{args:?} {sonde_env:?} {otel_env:?}");
        }
    }

    #[test]
    fn configuration_defaults_and_errors() {
        let cli = parse_with_env(
            &[
                "--otlp-endpoint",
                "http://c:4318",
                "--trace-sample-ratio",
                "0.1",
            ],
            &[],
        )
        .unwrap();
        let config = Config::resolve(&cli, &|_| None, "node-1".into())
            .unwrap()
            .unwrap();
        assert_eq!(
            config,
            Config {
                endpoint: "http://c:4318/v1/traces".into(),
                protocol: Protocol::HttpProtobuf,
                timeout: Duration::from_secs(10),
                sample_ratio: 0.1,
                queue_capacity: 8192,
                max_batch: 512,
                batch_delay: Duration::from_secs(1),
                host_name: "node-1".into(),
            }
        );

        let cli = parse_with_env(&[], &[]).unwrap();
        for (value, reason) in [
            ("c:4317", "`c:4317` is not an http:// URL with a host"),
            ("https://c:4317", "`https://c:4317`: https needs TLS, which this build of sonde does not include; use http://"),
            ("http://", "`http://` is not a URL: empty string"),
        ] {
            let env = |name: &str| (name == OTEL_EXPORTER_OTLP_ENDPOINT).then(|| value.to_owned());
            assert_eq!(
                Config::resolve(&cli, &env, String::new()),
                Err(ConfigError::Endpoint {
                    variable: OTEL_EXPORTER_OTLP_ENDPOINT,
                    reason: reason.into()
                })
            );
        }
    }
}
