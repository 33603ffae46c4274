//! A real OTLP receiver for traces and metrics, in the test process: the
//! `TraceService/Export` and `MetricsService/Export` gRPC services from
//! `opentelemetry-proto` served by tonic, and OTLP/HTTP (`POST /v1/traces`,
//! `POST /v1/metrics`, protobuf bodies) served by hyper, each transport on its
//! own loopback port. It keeps every request it accepts so tests can assert on
//! exactly what sonde put on the wire, and it can be stopped and started
//! again on the same ports to play a collector that goes away. Started with
//! [`OtlpReceiver::start_counting`] it only counts the spans it accepts, so
//! its memory stays flat under a benchmark's 100k+ spans per second.
//!
//! It runs on a runtime of its own, so tests use it the same way whether they
//! are plain or async.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr, TcpListener as StdListener},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Method, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            metrics_service_server::{MetricsService, MetricsServiceServer},
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
        trace::v1::{
            trace_service_server::{TraceService, TraceServiceServer},
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        },
    },
    common::v1::{any_value, KeyValue},
    metrics::v1::{metric::Data, HistogramDataPoint, Metric, NumberDataPoint},
    trace::v1::Span,
};
use prost::Message as _;
use tokio::{net::TcpListener, runtime::Runtime, sync::oneshot, task::JoinSet};

pub const TRACES_PATH: &str = "/v1/traces";
pub const METRICS_PATH: &str = "/v1/metrics";
const PROTOBUF: &str = "application/x-protobuf";
/// Bound on waiting for a server to let go of its port.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Which OTLP transport carried a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

/// One accepted export request.
#[derive(Clone, Debug)]
pub struct Export {
    pub transport: Transport,
    /// HTTP headers or gRPC metadata (ASCII values), names in lower case.
    pub headers: HashMap<String, String>,
    pub request: ExportTraceServiceRequest,
}

/// One received span with what it inherits from its envelope.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub transport: Transport,
    pub resource: Vec<KeyValue>,
    pub scope_name: String,
    pub scope_version: String,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn name(&self) -> &str {
        &self.span.name
    }

    pub fn attribute(&self, key: &str) -> Option<&any_value::Value> {
        find(&self.span.attributes, key)
    }

    pub fn str_attribute(&self, key: &str) -> Option<&str> {
        as_str(self.attribute(key))
    }

    pub fn int_attribute(&self, key: &str) -> Option<i64> {
        as_int(self.attribute(key))
    }

    pub fn resource_str(&self, key: &str) -> Option<&str> {
        as_str(find(&self.resource, key))
    }

    pub fn resource_int(&self, key: &str) -> Option<i64> {
        as_int(find(&self.resource, key))
    }

    /// Lower-case hex, as in a W3C traceparent.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// `None` for a root span.
    pub fn parent_span_id(&self) -> Option<String> {
        (!self.span.parent_span_id.is_empty()).then(|| hex(&self.span.parent_span_id))
    }
}

/// One accepted metrics export request.
#[derive(Clone, Debug)]
pub struct MetricsExport {
    pub transport: Transport,
    /// HTTP headers or gRPC metadata (ASCII values), names in lower case.
    pub headers: HashMap<String, String>,
    pub request: ExportMetricsServiceRequest,
}

/// One received metric with what it inherits from its envelope.
#[derive(Clone, Debug)]
pub struct ReceivedMetric {
    pub transport: Transport,
    pub resource: Vec<KeyValue>,
    pub scope_name: String,
    pub scope_version: String,
    pub metric: Metric,
}

impl ReceivedMetric {
    pub fn name(&self) -> &str {
        &self.metric.name
    }

    pub fn resource_str(&self, key: &str) -> Option<&str> {
        as_str(find(&self.resource, key))
    }

    pub fn resource_int(&self, key: &str) -> Option<i64> {
        as_int(find(&self.resource, key))
    }

    /// The histogram point whose string attributes include all of `subset`.
    pub fn histogram_point(&self, subset: &[(&str, &str)]) -> Option<&HistogramDataPoint> {
        match &self.metric.data {
            Some(Data::Histogram(h)) => h
                .data_points
                .iter()
                .find(|p| has_attributes(&p.attributes, subset)),
            _ => None,
        }
    }

    /// The Sum or Gauge point whose string attributes include all of `subset`.
    pub fn number_point(&self, subset: &[(&str, &str)]) -> Option<&NumberDataPoint> {
        let points = match &self.metric.data {
            Some(Data::Sum(sum)) => &sum.data_points,
            Some(Data::Gauge(gauge)) => &gauge.data_points,
            _ => return None,
        };
        points
            .iter()
            .find(|p| has_attributes(&p.attributes, subset))
    }
}

/// Whether every `(key, value)` of `subset` is a string attribute in `attributes`.
pub fn has_attributes(attributes: &[KeyValue], subset: &[(&str, &str)]) -> bool {
    subset
        .iter()
        .all(|(key, value)| as_str(find(attributes, key)) == Some(*value))
}

fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn as_str(value: Option<&any_value::Value>) -> Option<&str> {
    match value {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn as_int(value: Option<&any_value::Value>) -> Option<i64> {
    match value {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type Exports = Arc<Mutex<Vec<Export>>>;
type MetricsExports = Arc<Mutex<Vec<MetricsExport>>>;

fn lock<T>(exports: &Mutex<Vec<T>>) -> MutexGuard<'_, Vec<T>> {
    // A panicking test thread cannot leave the Vec half-written.
    exports
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What both transports store into.
#[derive(Clone, Default)]
struct Stores {
    traces: Exports,
    metrics: MetricsExports,
    /// Spans accepted so far, whether their requests are kept or not.
    span_count: Arc<AtomicU64>,
    /// Only count trace requests: [`OtlpReceiver::start_counting`].
    count_only: bool,
}

impl Stores {
    fn accept_traces(&self, export: Export) {
        let spans: usize = export
            .request
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.span_count.fetch_add(spans as u64, Ordering::Relaxed);
        if !self.count_only {
            lock(&self.traces).push(export);
        }
    }
}

/// The servers while they run: a stop signal and a completion report each.
struct Running {
    stops: Vec<oneshot::Sender<()>>,
    done: mpsc::Receiver<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub struct OtlpReceiver {
    runtime: Option<Runtime>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    stores: Stores,
    running: Option<Running>,
}

impl OtlpReceiver {
    /// Starts both servers on free loopback ports.
    pub fn start() -> Result<OtlpReceiver> {
        OtlpReceiver::start_keeping(true)
    }

    /// Starts both servers, keeping only the number of spans received
    /// ([`span_count`](Self::span_count)): [`exports`](Self::exports) and
    /// [`spans`](Self::spans) stay empty. Metrics requests are kept as usual.
    pub fn start_counting() -> Result<OtlpReceiver> {
        OtlpReceiver::start_keeping(false)
    }

    fn start_keeping(traces: bool) -> Result<OtlpReceiver> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            .enable_all()
            .build()
            .context("starting the receiver's runtime")?;
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let grpc = StdListener::bind(loopback).context("binding the gRPC port")?;
        let http = StdListener::bind(loopback).context("binding the HTTP port")?;
        let mut receiver = OtlpReceiver {
            grpc_addr: grpc.local_addr()?,
            http_addr: http.local_addr()?,
            runtime: Some(runtime),
            stores: Stores {
                count_only: !traces,
                ..Stores::default()
            },
            running: None,
        };
        receiver.serve(grpc, http)?;
        Ok(receiver)
    }

    /// `http://127.0.0.1:PORT`, for `--otlp-protocol grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://127.0.0.1:PORT` without the `/v1/traces` path, as a collector's
    /// base URL is given.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Closes both ports and every open connection, as a collector that went
    /// away; what was received is kept.
    pub fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        for stop in running.stops {
            let _ = stop.send(());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for _ in 0..running.tasks.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if running.done.recv_timeout(left).is_err() {
                break;
            }
        }
        // A connection that would not close in time goes with its task.
        for task in running.tasks {
            task.abort();
        }
    }

    /// Serves again on the same ports after [`stop`](Self::stop).
    pub fn restart(&mut self) -> Result<()> {
        if self.running.is_some() {
            bail!("the receiver is running");
        }
        let grpc = StdListener::bind(self.grpc_addr)
            .with_context(|| format!("binding {} again", self.grpc_addr))?;
        let http = StdListener::bind(self.http_addr)
            .with_context(|| format!("binding {} again", self.http_addr))?;
        self.serve(grpc, http)
    }

    fn serve(&mut self, grpc: StdListener, http: StdListener) -> Result<()> {
        let runtime = self.runtime.as_ref().context("the receiver is dropped")?;
        grpc.set_nonblocking(true)?;
        http.set_nonblocking(true)?;
        let (grpc_listener, http_listener) = {
            let _in_runtime = runtime.enter();
            (TcpListener::from_std(grpc)?, TcpListener::from_std(http)?)
        };
        let (done_tx, done) = mpsc::channel();
        let (grpc_stop, grpc_stopped) = oneshot::channel::<()>();
        let (http_stop, http_stopped) = oneshot::channel::<()>();
        let traces = TraceServiceServer::new(Collector {
            stores: self.stores.clone(),
        });
        let metrics = MetricsServiceServer::new(Collector {
            stores: self.stores.clone(),
        });
        let grpc_done = done_tx.clone();
        let grpc_task = runtime.spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(traces)
                .add_service(metrics)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(grpc_listener),
                    async {
                        let _ = grpc_stopped.await;
                    },
                )
                .await;
            let _ = grpc_done.send(());
        });
        let http_task = runtime.spawn(serve_http(
            http_listener,
            self.stores.clone(),
            http_stopped,
            done_tx,
        ));
        self.running = Some(Running {
            stops: vec![grpc_stop, http_stop],
            done,
            tasks: vec![grpc_task, http_task],
        });
        Ok(())
    }

    /// Every request accepted so far, in arrival order.
    pub fn exports(&self) -> Vec<Export> {
        lock(&self.stores.traces).clone()
    }

    /// Every span received so far, flattened, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        flatten(&lock(&self.stores.traces))
    }

    /// How many spans were received so far, in either mode.
    pub fn span_count(&self) -> u64 {
        self.stores.span_count.load(Ordering::Relaxed)
    }

    /// Every metrics request accepted so far, in arrival order.
    pub fn metrics_exports(&self) -> Vec<MetricsExport> {
        lock(&self.stores.metrics).clone()
    }

    /// Every metric received so far, flattened, in arrival order.
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        flatten_metrics(&lock(&self.stores.metrics))
    }

    /// The last metric received under `name`: with cumulative temporality,
    /// the current totals.
    pub fn latest_metric(&self, name: &str) -> Option<ReceivedMetric> {
        self.metrics().into_iter().rev().find(|m| m.name() == name)
    }

    /// Waits until the last metric received under `name` satisfies `condition`.
    pub fn wait_for_metric(
        &self,
        name: &str,
        timeout: Duration,
        condition: impl Fn(&ReceivedMetric) -> bool,
    ) -> Result<ReceivedMetric> {
        let deadline = Instant::now() + timeout;
        loop {
            let latest = self.latest_metric(name);
            match latest {
                Some(metric) if condition(&metric) => return Ok(metric),
                _ if Instant::now() >= deadline => {
                    bail!("no {name} as expected after {timeout:?}; the last one: {latest:#?}")
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn spans_named(&self, name: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.name() == name)
            .collect()
    }

    /// Forgets what was received, spans and metrics.
    pub fn clear(&self) {
        lock(&self.stores.traces).clear();
        self.stores.span_count.store(0, Ordering::Relaxed);
        lock(&self.stores.metrics).clear();
    }

    /// Waits until at least `count` spans have arrived.
    pub fn wait_for_spans(&self, count: usize, timeout: Duration) -> Result<Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if spans.len() >= count {
                return Ok(spans);
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = spans.iter().map(ReceivedSpan::name).collect();
                bail!(
                    "{} spans after {timeout:?}, expected {count}: {names:?}",
                    spans.len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop();
        if let Some(runtime) = self.runtime.take() {
            // Allowed inside another runtime, unlike a plain drop.
            runtime.shutdown_background();
        }
    }
}

fn flatten(exports: &[Export]) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for export in exports {
        for resource_spans in &export.request.resource_spans {
            let resource = resource_spans
                .resource
                .as_ref()
                .map(|r| r.attributes.clone())
                .unwrap_or_default();
            for scope_spans in &resource_spans.scope_spans {
                let (scope_name, scope_version) = scope_spans
                    .scope
                    .as_ref()
                    .map(|s| (s.name.clone(), s.version.clone()))
                    .unwrap_or_default();
                spans.extend(scope_spans.spans.iter().map(|span| ReceivedSpan {
                    transport: export.transport,
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    span: span.clone(),
                }));
            }
        }
    }
    spans
}

fn flatten_metrics(exports: &[MetricsExport]) -> Vec<ReceivedMetric> {
    let mut metrics = Vec::new();
    for export in exports {
        for resource_metrics in &export.request.resource_metrics {
            let resource = resource_metrics
                .resource
                .as_ref()
                .map(|r| r.attributes.clone())
                .unwrap_or_default();
            for scope_metrics in &resource_metrics.scope_metrics {
                let (scope_name, scope_version) = scope_metrics
                    .scope
                    .as_ref()
                    .map(|s| (s.name.clone(), s.version.clone()))
                    .unwrap_or_default();
                metrics.extend(scope_metrics.metrics.iter().map(|metric| ReceivedMetric {
                    transport: export.transport,
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    metric: metric.clone(),
                }));
            }
        }
    }
    metrics
}

struct Collector {
    stores: Stores,
}

fn grpc_headers<T>(request: &tonic::Request<T>) -> HashMap<String, String> {
    request
        .metadata()
        .clone()
        .into_headers()
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.stores.accept_traces(Export {
            transport: Transport::Grpc,
            headers: grpc_headers(&request),
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        lock(&self.stores.metrics).push(MetricsExport {
            transport: Transport::Grpc,
            headers: grpc_headers(&request),
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// HTTP/1.1 only, as OTLP/HTTP exporters speak it. Connections live in a
/// set owned by this task, so stopping closes them all.
async fn serve_http(
    listener: TcpListener,
    stores: Stores,
    mut stop: oneshot::Receiver<()>,
    done: mpsc::Sender<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let stores = stores.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| handle_http(request, stores.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
    let _ = done.send(());
}

async fn handle_http(
    request: hyper::Request<Incoming>,
    stores: Stores,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let accepted = match path.as_str() {
        TRACES_PATH => decode_http(request).await.map(|(headers, request)| {
            stores.accept_traces(Export {
                transport: Transport::Http,
                headers,
                request,
            });
            ExportTraceServiceResponse::default().encode_to_vec()
        }),
        METRICS_PATH => decode_http(request).await.map(|(headers, request)| {
            lock(&stores.metrics).push(MetricsExport {
                transport: Transport::Http,
                headers,
                request,
            });
            ExportMetricsServiceResponse::default().encode_to_vec()
        }),
        _ => Err(StatusCode::NOT_FOUND),
    };
    let (status, body) = match accepted {
        Ok(body) => (StatusCode::OK, Bytes::from(body)),
        Err(status) => (status, Bytes::new()),
    };
    let mut response = hyper::Response::new(Full::new(body));
    *response.status_mut() = status;
    if status == StatusCode::OK {
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(PROTOBUF),
        );
    }
    Ok(response)
}

/// The headers and decoded body of an OTLP/HTTP protobuf POST, or the
/// status that refuses it.
async fn decode_http<R: prost::Message + Default>(
    request: hyper::Request<Incoming>,
) -> Result<(HashMap<String, String>, R), StatusCode> {
    if request.method() != Method::POST {
        return Err(StatusCode::METHOD_NOT_ALLOWED);
    }
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if content_type != Some(PROTOBUF) {
        return Err(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let headers = request
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    let decoded = R::decode(body.to_bytes()).map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok((headers, decoded))
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, time::SystemTime};

    use opentelemetry::{
        trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
        InstrumentationScope, KeyValue as Attribute,
    };
    use opentelemetry_otlp::{
        RetryPolicy, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
    };
    use opentelemetry_proto::tonic::trace::v1::{span::SpanKind as WireKind, status::StatusCode};
    use opentelemetry_sdk::{
        trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
        Resource,
    };

    use super::*;

    const START_NS: u64 = 1_700_000_000_123_456_789;
    const END_NS: u64 = START_NS + 42_000_000;

    fn span() -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes([0x11; 16]),
                SpanId::from_bytes([0x22; 8]),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_bytes([0x33; 8]),
            parent_span_is_remote: true,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("GET /users/{id}"),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(START_NS),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(END_NS),
            attributes: vec![
                Attribute::new("http.route", "/users/{id}"),
                Attribute::new("http.response.status_code", 503_i64),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::error(""),
            instrumentation_scope: InstrumentationScope::builder("sonde")
                .with_version("9.9.9")
                .build(),
        }
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_attributes([
                Attribute::new("service.name", "users"),
                Attribute::new("process.pid", 4242_i64),
            ])
            .build()
    }

    fn grpc_exporter(endpoint: String) -> opentelemetry_otlp::SpanExporter {
        let mut metadata = opentelemetry_otlp::tonic_types::metadata::MetadataMap::new();
        metadata.insert("x-tenant", "blue".parse().unwrap());
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_metadata(metadata)
            .with_timeout(Duration::from_millis(500))
            .with_retry_policy(RetryPolicy::disabled())
            .build()
            .unwrap()
    }

    fn http_exporter(endpoint: String) -> opentelemetry_otlp::SpanExporter {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}{TRACES_PATH}"))
            .with_headers(HashMap::from([("x-tenant".into(), "blue".into())]))
            .with_timeout(Duration::from_millis(500))
            .with_retry_policy(RetryPolicy::disabled())
            .build()
            .unwrap()
    }

    fn assert_is_the_span(got: &ReceivedSpan, transport: Transport) {
        assert_eq!(got.transport, transport);
        assert_eq!(got.name(), "GET /users/{id}");
        assert_eq!(got.trace_id(), "11".repeat(16));
        assert_eq!(got.span_id(), "22".repeat(8));
        assert_eq!(got.parent_span_id(), Some("33".repeat(8)));
        assert_eq!(got.span.kind, WireKind::Server as i32);
        assert_eq!(got.span.start_time_unix_nano, START_NS);
        assert_eq!(got.span.end_time_unix_nano, END_NS);
        assert_eq!(got.span.attributes.len(), 2);
        assert_eq!(got.str_attribute("http.route"), Some("/users/{id}"));
        assert_eq!(got.int_attribute("http.response.status_code"), Some(503));
        assert_eq!(
            got.span.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32)
        );
        assert_eq!(got.resource.len(), 2);
        assert_eq!(got.resource_str("service.name"), Some("users"));
        assert_eq!(got.resource_int("process.pid"), Some(4242));
        assert_eq!(
            (got.scope_name.as_str(), got.scope_version.as_str()),
            ("sonde", "9.9.9")
        );
    }

    async fn export(exporter: &mut opentelemetry_otlp::SpanExporter) -> bool {
        exporter.set_resource(&resource());
        exporter.export(vec![span()]).await.is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn receives_the_exact_span_over_grpc() {
        let receiver = OtlpReceiver::start().unwrap();
        assert!(export(&mut grpc_exporter(receiver.grpc_endpoint())).await);
        let spans = receiver.spans();
        assert_eq!(spans.len(), 1);
        assert_is_the_span(&spans[0], Transport::Grpc);
        assert_eq!(receiver.exports()[0].headers["x-tenant"], "blue");
        assert_eq!(receiver.spans_named("GET /users/{id}").len(), 1);
        assert!(receiver.spans_named("GET /").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn receives_the_exact_span_over_http() {
        let receiver = OtlpReceiver::start().unwrap();
        assert!(export(&mut http_exporter(receiver.http_endpoint())).await);
        let spans = receiver.spans();
        assert_eq!(spans.len(), 1);
        assert_is_the_span(&spans[0], Transport::Http);
        let headers = &receiver.exports()[0].headers;
        assert_eq!(headers["x-tenant"], "blue");
        assert_eq!(headers["content-type"], PROTOBUF);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn counts_spans_of_both_transports_in_either_mode() {
        for counting in [false, true] {
            let receiver = if counting {
                OtlpReceiver::start_counting().unwrap()
            } else {
                OtlpReceiver::start().unwrap()
            };
            assert!(export(&mut grpc_exporter(receiver.grpc_endpoint())).await);
            assert!(export(&mut http_exporter(receiver.http_endpoint())).await);
            assert_eq!(receiver.span_count(), 2, "counting: {counting}");
            let kept = if counting { 0 } else { 2 };
            assert_eq!(receiver.spans().len(), kept, "counting: {counting}");
            assert_eq!(receiver.exports().len(), kept, "counting: {counting}");
            receiver.clear();
            assert_eq!(receiver.span_count(), 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn refuses_while_stopped_and_serves_the_same_ports_after_restart() {
        let mut receiver = OtlpReceiver::start().unwrap();
        let (grpc, http) = (receiver.grpc_endpoint(), receiver.http_endpoint());
        let mut grpc_exporter = grpc_exporter(grpc.clone());
        let mut http_exporter = http_exporter(http.clone());
        // Open connections first: stopping must close them too.
        assert!(export(&mut grpc_exporter).await);
        assert!(export(&mut http_exporter).await);

        receiver.stop();
        assert!(!export(&mut grpc_exporter).await);
        assert!(!export(&mut http_exporter).await);
        assert_eq!(receiver.spans().len(), 2);

        receiver.restart().unwrap();
        assert_eq!(
            (receiver.grpc_endpoint(), receiver.http_endpoint()),
            (grpc, http)
        );
        assert!(export(&mut grpc_exporter).await);
        assert!(export(&mut http_exporter).await);
        let transports: Vec<Transport> = receiver.spans().iter().map(|s| s.transport).collect();
        use Transport::{Grpc, Http};
        assert_eq!(transports, [Grpc, Http, Grpc, Http]);

        receiver.clear();
        assert!(receiver.spans().is_empty());
        assert!(receiver
            .wait_for_spans(1, Duration::from_millis(50))
            .is_err());
    }

    #[test]
    fn http_rejects_what_is_not_an_otlp_protobuf_post() {
        let receiver = OtlpReceiver::start().unwrap();
        let mut conn = crate::clients::HttpConn::connect(receiver.http_addr.port()).unwrap();
        for (method, path, content_type, body, status) in [
            ("POST", "/v1/logs", PROTOBUF, &b""[..], 404),
            ("GET", METRICS_PATH, PROTOBUF, b"", 405),
            ("POST", METRICS_PATH, PROTOBUF, b"\xff\xff\xff", 400),
            ("POST", METRICS_PATH, PROTOBUF, b"", 200),
            ("GET", TRACES_PATH, PROTOBUF, b"", 405),
            ("POST", TRACES_PATH, "application/json", b"{}", 415),
            ("POST", TRACES_PATH, PROTOBUF, b"\xff\xff\xff", 400),
            ("POST", TRACES_PATH, PROTOBUF, b"", 200),
        ] {
            let mut request = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(body);
            conn.send(&request).unwrap();
            let response = conn.read_response().unwrap();
            assert_eq!(response.status, status, "{method} {path} {content_type}");
        }
        // The empty requests are valid ones, with no spans or metrics.
        assert_eq!(receiver.exports().len(), 1);
        assert!(receiver.spans().is_empty());
        assert_eq!(receiver.metrics_exports().len(), 1);
        assert!(receiver.metrics().is_empty());
    }
}
