//! Stage 5 of the pipeline: aggregation. [`Aggregator`] turns the tracker's
//! observations into the OpenTelemetry HTTP metrics (semantic conventions,
//! Prometheus naming); [`SelfMetrics`] counts what sonde itself read, lost and
//! could not parse. Both register on one `prometheus::Registry` that the
//! server exports.
//!
//! Observations arrive at 100k+/s, so label values are resolved to small ids
//! (`route::Namer`) and metric children are cached per id tuple: once warm,
//! the hot path is a few hash lookups and no allocation.
use std::hash::{Hash, Hasher};

use foldhash::{HashMap, HashMapExt};

use probe_common::counter;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::event::DecodeError;
use crate::exchange::{
    AbandonReason, Anomaly, Endpoint, Finished, Observation, Request, RequestId, Side,
    STANDARD_METHODS,
};
use crate::kubernetes;
use crate::process::Names;
use crate::route::{Limits, Namer, PeerId, RouteId, ServiceId};
use histogram::{Histogram, HistogramVec};

mod histogram;

/// OpenTelemetry's advised boundaries for `http.*.request.duration`, seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Body size boundaries, bytes: 0 (no body, most GETs), then powers of 4 from
/// 16 B to 16 MiB. OpenTelemetry advises none; a factor of 4 keeps the
/// resolution useful over six orders of magnitude with 12 buckets.
pub const BODY_SIZE_BUCKETS: [f64; 12] = [
    0.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0,
];

/// The `http_request_method` of any method but the standard ones, which
/// OpenTelemetry names as themselves.
pub const OTHER_METHOD: &str = "_OTHER";

/// A method's label as its index in `STANDARD_METHODS` (past its end:
/// `OTHER_METHOD`): keys compare and hash a number, not text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct MethodLabel(u8);

impl MethodLabel {
    fn of(method: &str) -> Self {
        let index = STANDARD_METHODS
            .iter()
            .position(|&m| m == method)
            .unwrap_or(STANDARD_METHODS.len());
        MethodLabel(index as u8)
    }

    fn label(self) -> &'static str {
        STANDARD_METHODS
            .get(usize::from(self.0))
            .copied()
            .unwrap_or(OTHER_METHOD)
    }
}

pub(crate) fn method_label(method: &str) -> &'static str {
    MethodLabel::of(method).label()
}

const SERVER_LABELS: [&str; 3] = ["service_name", "http_request_method", "http_route"];
const CLIENT_LABELS: [&str; 4] = [
    "service_name",
    "http_request_method",
    "server_address",
    "server_port",
];
/// Added to the active-request labels for the per-exchange histograms.
const RESPONSE_LABELS: [&str; 2] = ["http_response_status_code", "network_protocol_version"];

/// Every value of the exchange enums, so their counters start at 0. The
/// matches fail to compile when a variant is added and not listed.
const ANOMALIES: [Anomaly; 8] = [
    Anomaly::BadHead,
    Anomaly::HeadTooLarge,
    Anomaly::BadChunk,
    Anomaly::Gap,
    Anomaly::UnpairedResponse,
    Anomaly::UnknownConnection,
    Anomaly::TooManyConnections,
    Anomaly::BadTraceparent,
];
const _: fn(Anomaly) = |a| match a {
    Anomaly::BadHead
    | Anomaly::HeadTooLarge
    | Anomaly::BadChunk
    | Anomaly::Gap
    | Anomaly::UnpairedResponse
    | Anomaly::UnknownConnection
    | Anomaly::TooManyConnections
    | Anomaly::BadTraceparent => {}
};
const ABANDON_REASONS: [AbandonReason; 5] = [
    AbandonReason::ClosedUnanswered,
    AbandonReason::Expired,
    AbandonReason::ProcessExited,
    AbandonReason::Desync,
    AbandonReason::QueueFull,
];
const _: fn(AbandonReason) = |r| match r {
    AbandonReason::ClosedUnanswered
    | AbandonReason::Expired
    | AbandonReason::ProcessExited
    | AbandonReason::Desync
    | AbandonReason::QueueFull => {}
};

/// `kind` values of `sonde_series_dropped_total`.
const DROP_SERVICE: &str = "service";
const DROP_ROUTE: &str = "route";
const DROP_PEER: &str = "peer";
const DROP_SERIES: &str = "series";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggregatorConfig {
    /// Budgets of services, routes and peers (see `route::Limits`).
    pub limits: Limits,
    /// Distinct label sets of the request histograms, all services and both
    /// sides together. Each set is 3 histograms, about 45 Prometheus series.
    /// Past it, new label sets keep method, status and version but go to the
    /// `{overflow}` service and route/peer.
    pub max_series: usize,
    /// Whether the request metrics have the `k8s_*` labels (pod metadata
    /// on): every series then has them, empty for processes outside pods,
    /// which Prometheus stores as if absent. Off, the label set is without.
    pub pod_labels: bool,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            limits: Limits::default(),
            max_series: 5000,
            pod_labels: false,
        }
    }
}

/// What one side's metrics are broken down by, besides the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Target {
    /// Server side: the route served.
    Route(RouteId),
    /// Client side: the server called.
    Peer(PeerId),
}

impl Target {
    fn overflow(self) -> Option<&'static str> {
        match self {
            Target::Route(r) if r.is_overflow() => Some(DROP_ROUTE),
            Target::Peer(p) if p.is_overflow() => Some(DROP_PEER),
            _ => None,
        }
    }

    fn to_overflow(self) -> Target {
        match self {
            Target::Route(_) => Target::Route(RouteId::OVERFLOW),
            Target::Peer(_) => Target::Peer(PeerId::OVERFLOW),
        }
    }
}

/// Labels of the active-request gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ActiveKey {
    service: ServiceId,
    method: MethodLabel,
    target: Target,
}

/// One word: the service and target ids. Method and side are left out;
/// keys differing only there are few, and `Eq` tells them apart.
impl Hash for ActiveKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let target = match self.target {
            Target::Route(r) => r.index(),
            Target::Peer(p) => p.index(),
        };
        state.write_u64(u64::from(self.service.index()) << 32 | u64::from(target));
    }
}

impl ActiveKey {
    fn server_side(self) -> bool {
        matches!(self.target, Target::Route(_))
    }
}

/// Labels of the per-exchange histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ExchangeKey {
    active: ActiveKey,
    status: u16,
    version: VersionLabel,
}

/// `network_protocol_version`: the two versions there are compare as tags,
/// not text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VersionLabel {
    Http10,
    Http11,
    Other(&'static str),
}

impl VersionLabel {
    fn of(version: &'static str) -> Self {
        match version {
            "1.0" => VersionLabel::Http10,
            "1.1" => VersionLabel::Http11,
            other => VersionLabel::Other(other),
        }
    }

    fn label(self) -> &'static str {
        match self {
            VersionLabel::Http10 => "1.0",
            VersionLabel::Http11 => "1.1",
            VersionLabel::Other(other) => other,
        }
    }
}

/// As for `ActiveKey`: the version, nearly always the same, is left out.
impl Hash for ExchangeKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.active.hash(state);
        self.status.hash(state);
    }
}

/// The metric families of one side (`http_server_*` or `http_client_*`).
struct SideFamilies {
    duration: HistogramVec,
    request_body: HistogramVec,
    response_body: HistogramVec,
    active: IntGaugeVec,
}

impl SideFamilies {
    fn new(registry: &Registry, side: &str, labels: &[&str]) -> Result<Self, prometheus::Error> {
        let exchange_labels: Vec<&str> = labels.iter().chain(&RESPONSE_LABELS).copied().collect();
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let name = format!("http_{side}_{name}");
            register(
                registry,
                HistogramVec::new(name, help, &exchange_labels, buckets)?,
            )
        };
        Ok(SideFamilies {
            duration: histogram(
                "request_duration_seconds",
                "Duration of HTTP requests, first request byte to last response byte.",
                &DURATION_BUCKETS,
            )?,
            request_body: histogram(
                "request_body_size_bytes",
                "Size of HTTP request bodies (decoded size when chunked).",
                &BODY_SIZE_BUCKETS,
            )?,
            response_body: histogram(
                "response_body_size_bytes",
                "Size of HTTP response bodies (decoded size when chunked).",
                &BODY_SIZE_BUCKETS,
            )?,
            active: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        format!("http_{side}_active_requests"),
                        "HTTP requests in flight.",
                    ),
                    labels,
                )?,
            )?,
        })
    }
}

/// The three histograms of one exchange label set.
struct ExchangeSeries {
    duration: Histogram,
    request_body: Histogram,
    response_body: Histogram,
}

impl ExchangeSeries {
    fn observe(&mut self, f: &Finished) {
        self.duration
            .observe(f.end_ns.saturating_sub(f.start_ns) as f64 / 1e9);
        self.request_body.observe(f.request_body_bytes as f64);
        self.response_body.observe(f.response_body_bytes as f64);
    }
}

struct InFlight {
    key: ActiveKey,
    /// Index in `Aggregator::gauges` of the gauge counted up at start,
    /// counted down exactly once.
    gauge: usize,
}

/// An active-request gauge and its count. Only the aggregator changes it,
/// so it keeps the count and stores it (a plain store) where `inc`/`dec`
/// would be locked read-modify-writes. One gauge per `ActiveKey`: distinct
/// keys have distinct label values (ids name distinct labels).
struct ActiveGauge {
    gauge: IntGauge,
    count: i64,
}

impl ActiveGauge {
    fn add(&mut self, n: i64) {
        self.count += n;
        self.gauge.set(self.count);
    }
}

/// Aggregates observations into the HTTP metrics.
pub struct Aggregator {
    namer: Namer,
    max_series: usize,
    pod_labels: bool,
    server: SideFamilies,
    client: SideFamilies,
    /// Index of each key's gauge in `gauges`.
    active: HashMap<ActiveKey, usize>,
    gauges: Vec<ActiveGauge>,
    series: HashMap<ExchangeKey, ExchangeSeries>,
    /// Bounded by the tracker, which ends every started request with a
    /// `Finished` or an `Abandoned`.
    in_flight: HashMap<RequestId, InFlight>,
    incomplete: IntCounter,
    abandoned: IntCounterVec,
    anomalies: IntCounterVec,
    series_dropped: IntCounterVec,
}

impl Aggregator {
    pub fn new(registry: &Registry, config: AggregatorConfig) -> Result<Self, prometheus::Error> {
        let abandoned = labelled_counter(
            registry,
            "sonde_requests_abandoned_total",
            "Requests seen that will never be paired with a response, by reason.",
            "reason",
            ABANDON_REASONS.iter().map(|r| r.label()),
        )?;
        let anomalies = labelled_counter(
            registry,
            "sonde_http_anomalies_total",
            "HTTP traffic the tracker could not make sense of, by reason.",
            "reason",
            ANOMALIES.iter().map(|a| a.label()),
        )?;
        let series_dropped = labelled_counter(
            registry,
            "sonde_series_dropped_total",
            "Finished requests recorded under an {overflow} label because a \
             cardinality budget was full, by the budget (service, route, peer, series).",
            "kind",
            [DROP_SERVICE, DROP_ROUTE, DROP_PEER, DROP_SERIES],
        )?;
        let labels = |side: &[&'static str]| {
            let pod = if config.pod_labels {
                &kubernetes::LABELS[..]
            } else {
                &[]
            };
            [side, pod].concat()
        };
        Ok(Aggregator {
            namer: Namer::new(config.limits),
            max_series: config.max_series,
            pod_labels: config.pod_labels,
            server: SideFamilies::new(registry, "server", &labels(&SERVER_LABELS))?,
            client: SideFamilies::new(registry, "client", &labels(&CLIENT_LABELS))?,
            active: HashMap::new(),
            gauges: Vec::new(),
            series: HashMap::new(),
            in_flight: HashMap::new(),
            incomplete: register(
                registry,
                IntCounter::new(
                    "sonde_http_incomplete_responses_total",
                    "Requests recorded with a response cut short by the connection's end.",
                )?,
            )?,
            abandoned,
            anomalies,
            series_dropped,
        })
    }

    pub fn observe(&mut self, obs: &Observation, names: &mut Names) {
        match obs {
            Observation::Started(s) => {
                let key = self.active_key(&s.at, &s.request, names);
                let gauge = self.active_gauge(key);
                self.gauges[gauge].add(1);
                if let Some(stale) = self.in_flight.insert(s.id, InFlight { key, gauge }) {
                    // An id started twice would be a tracker bug; undo the
                    // first start rather than leave the gauge up forever.
                    self.gauges[stale.gauge].add(-1);
                }
            }
            Observation::Finished(f) => {
                let key = match self.in_flight.remove(&f.id) {
                    Some(started) => {
                        self.gauges[started.gauge].add(-1);
                        started.key
                    }
                    None => self.active_key(&f.at, &f.request, names),
                };
                let key = ExchangeKey {
                    active: key,
                    status: f.status,
                    version: VersionLabel::of(f.request.version),
                };
                self.record_exchange(key, f);
                if !f.complete {
                    self.incomplete.inc();
                }
            }
            Observation::Abandoned { id, reason, .. } => {
                if let Some(started) = self.in_flight.remove(id) {
                    self.gauges[started.gauge].add(-1);
                }
                self.abandoned.with_label_values(&[reason.label()]).inc();
            }
            Observation::Anomaly(a) => self.anomalies.with_label_values(&[a.label()]).inc(),
        }
    }

    fn active_key(&mut self, at: &Endpoint, request: &Request, names: &mut Names) -> ActiveKey {
        let service = names.service_id(at.tgid, &mut self.namer);
        let target = match at.side {
            Side::Server => Target::Route(self.namer.route(
                service,
                &request.path,
                request.path_truncated,
            )),
            Side::Client => Target::Peer(self.namer.peer(service, at.peer)),
        };
        ActiveKey {
            service,
            method: MethodLabel::of(&request.method),
            target,
        }
    }

    /// Index in `gauges` of the gauge of `key`.
    fn active_gauge(&mut self, key: ActiveKey) -> usize {
        let Aggregator {
            namer,
            pod_labels,
            server,
            client,
            active,
            gauges,
            ..
        } = self;
        *active.entry(key).or_insert_with(|| {
            let family = if key.server_side() {
                &server.active
            } else {
                &client.active
            };
            gauges.push(ActiveGauge {
                gauge: family.with_label_values(&active_labels(namer, key, *pod_labels)),
                count: 0,
            });
            gauges.len() - 1
        })
    }

    /// Records `f` in the histograms of `key`, counting the label sets that
    /// overflowed.
    fn record_exchange(&mut self, mut key: ExchangeKey, f: &Finished) {
        if key.active.service.is_overflow() {
            self.series_dropped.with_label_values(&[DROP_SERVICE]).inc();
        }
        if let Some(kind) = key.active.target.overflow() {
            self.series_dropped.with_label_values(&[kind]).inc();
        }
        // Cheap test first: the lookup is needed only once the budget is spent.
        if self.series.len() >= self.max_series && !self.series.contains_key(&key) {
            self.series_dropped.with_label_values(&[DROP_SERIES]).inc();
            key.active.service = ServiceId::OVERFLOW;
            key.active.target = key.active.target.to_overflow();
        }
        // Looked up by reference: `entry` takes the key by value, a copy
        // that stalls on the stores that just made it.
        if let Some(series) = self.series.get_mut(&key) {
            series.observe(f);
            return;
        }
        let mut labels = active_labels(&self.namer, key.active, self.pod_labels);
        labels.extend([key.status.to_string(), key.version.label().to_owned()]);
        let family = if key.active.server_side() {
            &self.server
        } else {
            &self.client
        };
        let mut series = ExchangeSeries {
            duration: family.duration.with_label_values(&labels),
            request_body: family.request_body.with_label_values(&labels),
            response_body: family.response_body.with_label_values(&labels),
        };
        series.observe(f);
        self.series.insert(key, series);
    }
}

/// Label values of `key`, in the order of `SERVER_LABELS` or `CLIENT_LABELS`,
/// then of `kubernetes::LABELS` if `pod_labels`. Made once per series.
fn active_labels(namer: &Namer, key: ActiveKey, pod_labels: bool) -> Vec<String> {
    let mut labels = vec![
        namer.service_label(key.service).to_owned(),
        key.method.label().to_owned(),
    ];
    match key.target {
        Target::Route(r) => labels.push(namer.route_label(key.service, r).to_owned()),
        Target::Peer(p) => {
            let (address, port) = namer.peer_labels(key.service, p);
            labels.extend([address, port]);
        }
    }
    if pod_labels {
        match namer.pod_labels(key.service) {
            Some(pod) => labels.extend(pod.values().iter().cloned()),
            None => labels.extend(kubernetes::LABELS.map(|_| String::new())),
        }
    }
    labels
}

/// Totals of the kernel's `COUNTERS` map, summed over CPUs, indexed by
/// `probe_common::counter`.
pub type KernelCounters = [u64; counter::COUNT as usize];

/// `sonde_events_lost_total` reasons, by kernel counter.
const KERNEL_LOSSES: [(u32, &str); 5] = [
    (counter::RINGBUF_FULL, "ringbuf_full"),
    (counter::CONN_TABLE_FULL, "conn_table_full"),
    (counter::UNSUPPORTED_CALL, "unsupported_call"),
    (counter::PID_TABLE_FULL, "pid_table_full"),
    (counter::COPY_FAILED, "copy_failed"),
];

/// sonde's own health. Cheap to clone; every clone updates the same metrics,
/// so each pipeline stage can hold one.
#[derive(Clone)]
pub struct SelfMetrics {
    events_read: IntCounter,
    decode_errors: IntCounterVec,
    connections_tracked: IntGauge,
    /// Children of `sonde_events_lost_total`, by kernel counter index.
    events_lost: Vec<(usize, IntCounter)>,
    not_http: IntCounter,
    log_lines_lost: IntCounter,
}

impl SelfMetrics {
    /// Registers sonde's metrics, with `process_*` (CPU, memory, fds of sonde
    /// itself) and `sonde_build_info{version}`.
    pub fn new(registry: &Registry, version: &str) -> Result<Self, prometheus::Error> {
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build_info = register(
            registry,
            IntGaugeVec::new(
                Opts::new("sonde_build_info", "Always 1; labels say which sonde runs."),
                &["version"],
            )?,
        )?;
        build_info.with_label_values(&[version]).set(1);

        let every_decode_error = [
            DecodeError::Short(0),
            DecodeError::Kind(0),
            DecodeError::Payload { said: 0, has: 0 },
        ];
        let decode_errors = labelled_counter(
            registry,
            "sonde_decode_errors_total",
            "Ring-buffer records that could not be decoded, by reason.",
            "reason",
            every_decode_error.iter().map(DecodeError::reason),
        )?;
        let events_lost = labelled_counter(
            registry,
            "sonde_events_lost_total",
            "Kernel events not delivered or not produced, by reason.",
            "reason",
            KERNEL_LOSSES.iter().map(|&(_, reason)| reason),
        )?;
        Ok(SelfMetrics {
            events_read: register(
                registry,
                IntCounter::new(
                    "sonde_events_read_total",
                    "Records read from the ring buffer.",
                )?,
            )?,
            decode_errors,
            connections_tracked: register(
                registry,
                IntGauge::new(
                    "sonde_connections_tracked",
                    "Connections the tracker follows.",
                )?,
            )?,
            events_lost: KERNEL_LOSSES
                .iter()
                .map(|&(index, reason)| (index as usize, events_lost.with_label_values(&[reason])))
                .collect(),
            not_http: register(
                registry,
                IntCounter::new(
                    "sonde_connections_not_http_total",
                    "Connections the kernel found not to carry HTTP/1.x (TLS, other \
                     protocols) and stopped capturing.",
                )?,
            )?,
            log_lines_lost: register(
                registry,
                IntCounter::new(
                    "sonde_log_lines_lost_total",
                    "sonde's own log lines that could not be written to stderr.",
                )?,
            )?,
        })
    }

    /// Makes `sonde_log_lines_lost_total` equal `total`, sonde's count since it started.
    pub fn set_log_lines_lost(&self, total: u64) {
        advance_to(&self.log_lines_lost, total);
    }

    pub fn record_events_read(&self, records: u64) {
        self.events_read.inc_by(records);
    }

    pub fn record_decode_error(&self, error: &DecodeError) {
        self.decode_errors
            .with_label_values(&[error.reason()])
            .inc();
    }

    pub fn set_connections_tracked(&self, connections: usize) {
        self.connections_tracked
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
    }

    /// Makes the kernel-fed counters equal `totals`, cumulative since the
    /// programs were loaded. Counters never go down: a total below the
    /// exported value (programs reloaded) is ignored until it passes it.
    pub fn set_kernel_counters(&self, totals: &KernelCounters) {
        for (index, lost) in &self.events_lost {
            advance_to(lost, totals[*index]);
        }
        advance_to(&self.not_http, totals[counter::NOT_HTTP as usize]);
    }
}

fn advance_to(c: &IntCounter, total: u64) {
    let current = c.get();
    if total > current {
        c.inc_by(total - current);
    }
}

/// A registered counter family with one label, every known value of which is
/// exported from the start (at 0) so dashboards and alerts see the series.
fn labelled_counter<'a>(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<IntCounterVec, prometheus::Error> {
    let family = register(
        registry,
        IntCounterVec::new(Opts::new(name, help), &[label])?,
    )?;
    for v in values {
        family.with_label_values(&[v]);
    }
    Ok(family)
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::exchange::Started;
    use crate::process::ProcFs;

    const SERVER_TGID: u32 = 100;
    const CLIENT_TGID: u32 = 200;

    struct Fixture {
        registry: Registry,
        agg: Aggregator,
        names: Names,
        _proc: tempfile::TempDir,
    }

    impl Fixture {
        fn new(config: AggregatorConfig) -> Self {
            let proc = tempfile::tempdir().unwrap();
            for (tgid, exe) in [(SERVER_TGID, "/usr/bin/api"), (CLIENT_TGID, "/usr/bin/web")] {
                let dir = proc.path().join(tgid.to_string());
                std::fs::create_dir(&dir).unwrap();
                symlink(exe, dir.join("exe")).unwrap();
            }
            let registry = Registry::new();
            let agg = Aggregator::new(&registry, config).unwrap();
            let names = Names::new(ProcFs::new(proc.path()), Names::DEFAULT_CAPACITY);
            Fixture {
                registry,
                agg,
                names,
                _proc: proc,
            }
        }

        fn feed(&mut self, obs: Observation) {
            self.agg.observe(&obs, &mut self.names);
        }

        fn text(&self) -> String {
            let mut out = String::new();
            prometheus::TextEncoder::new()
                .encode_utf8(&self.registry.gather(), &mut out)
                .unwrap();
            out
        }

        /// Value of the sample `name` with exactly `labels`, if exported.
        fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            sample(&self.text(), name, labels)
        }
    }

    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        want.sort();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (n, mut got) = match series.split_once('{') {
                    Some((n, rest)) => {
                        let pairs = rest.strip_suffix('}')?;
                        (n, pairs.split(',').map(str::to_owned).collect::<Vec<_>>())
                    }
                    None => (series, Vec::new()),
                };
                got.sort();
                (n == name && got == want).then(|| value.parse().unwrap())
            })
    }

    fn endpoint(side: Side) -> Endpoint {
        let (tgid, local, peer) = match side {
            Side::Server => (SERVER_TGID, "10.0.0.1:8080", "10.0.0.9:40000"),
            Side::Client => (CLIENT_TGID, "10.0.0.9:40000", "10.0.0.1:8080"),
        };
        Endpoint {
            tgid,
            conn_id: 1,
            side,
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
        }
    }

    fn request(method: &str, path: &str) -> Request {
        Request {
            method: method.to_owned().into(),
            path: path.to_owned(),
            path_truncated: false,
            version: "1.1",
            trace: None,
        }
    }

    fn started(id: RequestId, side: Side, method: &str, path: &str) -> Observation {
        Observation::Started(Started {
            id,
            at: endpoint(side),
            request: request(method, path),
            start_ns: 1_000,
            tid: 1,
            seq: 0,
        })
    }

    fn finished(
        id: RequestId,
        side: Side,
        method: &str,
        path: &str,
        status: u16,
        ms: u64,
    ) -> Observation {
        Observation::Finished(Finished {
            id,
            at: endpoint(side),
            request: request(method, path),
            status,
            start_ns: 1_000,
            tid: 1,
            seq: 0,
            end_ns: 1_000 + ms * 1_000_000,
            request_body_bytes: 0,
            response_body_bytes: 300,
            complete: true,
        })
    }

    fn exchange(
        id: RequestId,
        side: Side,
        method: &str,
        path: &str,
        status: u16,
        ms: u64,
    ) -> [Observation; 2] {
        [
            started(id, side, method, path),
            finished(id, side, method, path, status, ms),
        ]
    }

    fn server(
        method: &'static str,
        route: &'static str,
        status: &'static str,
    ) -> [(&'static str, &'static str); 5] {
        [
            ("service_name", "api"),
            ("http_request_method", method),
            ("http_route", route),
            ("http_response_status_code", status),
            ("network_protocol_version", "1.1"),
        ]
    }

    const DURATION_COUNT: &str = "http_server_request_duration_seconds_count";

    #[test]
    fn counts_per_route_and_status() {
        let mut fx = Fixture::new(AggregatorConfig::default());
        let mut id = 0;
        for (path, status) in [
            ("/users/1", 200),
            ("/users/2", 200),
            ("/users/3", 404),
            ("/", 200),
        ] {
            id += 1;
            for o in exchange(id, Side::Server, "GET", path, status, 10) {
                fx.feed(o);
            }
        }
        let cases = [
            (server("GET", "/users/{id}", "200"), Some(2.0)),
            (server("GET", "/users/{id}", "404"), Some(1.0)),
            (server("GET", "/", "200"), Some(1.0)),
            (server("GET", "/", "404"), None),
        ];
        for (labels, want) in cases {
            assert_eq!(fx.sample(DURATION_COUNT, &labels), want, "{labels:?}");
        }
    }

    #[test]
    fn a_300ms_request_lands_in_the_half_second_bucket() {
        let mut fx = Fixture::new(AggregatorConfig::default());
        for o in exchange(1, Side::Server, "POST", "/orders", 201, 300) {
            fx.feed(o);
        }
        let labels = server("POST", "/orders", "201");
        let bucket = |le: &'static str| {
            let mut l = labels.to_vec();
            l.push(("le", le));
            fx.sample("http_server_request_duration_seconds_bucket", &l)
        };
        let cases = [
            ("0.1", 0.0),
            ("0.25", 0.0),
            ("0.5", 1.0),
            ("10", 1.0),
            ("+Inf", 1.0),
        ];
        for (le, want) in cases {
            assert_eq!(bucket(le), Some(want), "le={le}");
        }
        assert_eq!(
            fx.sample("http_server_request_duration_seconds_sum", &labels),
            Some(0.3)
        );
        // 300 response bytes: above 256, within 1024.
        let mut l = labels.to_vec();
        l.push(("le", "256"));
        assert_eq!(
            fx.sample("http_server_response_body_size_bytes_bucket", &l),
            Some(0.0)
        );
        l.pop();
        l.push(("le", "1024"));
        assert_eq!(
            fx.sample("http_server_response_body_size_bytes_bucket", &l),
            Some(1.0)
        );
        l.pop();
        l.push(("le", "0"));
        assert_eq!(
            fx.sample("http_server_request_body_size_bytes_bucket", &l),
            Some(1.0)
        );
    }

    #[test]
    fn in_flight_goes_up_then_back_to_zero() {
        let mut fx = Fixture::new(AggregatorConfig::default());
        let active = [
            ("service_name", "api"),
            ("http_request_method", "GET"),
            ("http_route", "/items/{id}"),
        ];
        for id in 1..=3 {
            fx.feed(started(id, Side::Server, "GET", &format!("/items/{id}")));
        }
        assert_eq!(fx.sample("http_server_active_requests", &active), Some(3.0));
        fx.feed(finished(1, Side::Server, "GET", "/items/1", 200, 5));
        fx.feed(Observation::Abandoned {
            id: 2,
            at: endpoint(Side::Server),
            reason: AbandonReason::Expired,
        });
        assert_eq!(fx.sample("http_server_active_requests", &active), Some(1.0));
        fx.feed(finished(3, Side::Server, "GET", "/items/3", 200, 5));
        assert_eq!(fx.sample("http_server_active_requests", &active), Some(0.0));

        // Ends of requests never started (or already ended) change nothing.
        fx.feed(Observation::Abandoned {
            id: 3,
            at: endpoint(Side::Server),
            reason: AbandonReason::Desync,
        });
        fx.feed(finished(77, Side::Server, "GET", "/items/77", 200, 5));
        assert_eq!(fx.sample("http_server_active_requests", &active), Some(0.0));
        assert_eq!(
            fx.sample(DURATION_COUNT, &server("GET", "/items/{id}", "200")),
            Some(3.0)
        );
        let abandoned = |reason| fx.sample("sonde_requests_abandoned_total", &[("reason", reason)]);
        assert_eq!(abandoned("expired"), Some(1.0));
        assert_eq!(abandoned("desync"), Some(1.0));
        assert_eq!(abandoned("queue_full"), Some(0.0), "pre-initialised");
    }

    #[test]
    fn unknown_methods_are_other() {
        let mut fx = Fixture::new(AggregatorConfig::default());
        let methods = ["PROPFIND", "get", "PATCH", "BREW"];
        for (i, m) in methods.iter().enumerate() {
            for o in exchange(i as u64, Side::Server, m, "/x", 200, 1) {
                fx.feed(o);
            }
        }
        assert_eq!(
            fx.sample(DURATION_COUNT, &server("_OTHER", "/x", "200")),
            Some(3.0)
        );
        assert_eq!(
            fx.sample(DURATION_COUNT, &server("PATCH", "/x", "200")),
            Some(1.0)
        );
    }

    #[test]
    fn client_side_is_broken_down_by_server() {
        let mut fx = Fixture::new(AggregatorConfig::default());
        for o in exchange(1, Side::Client, "GET", "/users/1", 503, 20) {
            fx.feed(o);
        }
        let labels = [
            ("service_name", "web"),
            ("http_request_method", "GET"),
            ("server_address", "10.0.0.1"),
            ("server_port", "8080"),
            ("http_response_status_code", "503"),
            ("network_protocol_version", "1.1"),
        ];
        assert_eq!(
            fx.sample("http_client_request_duration_seconds_count", &labels),
            Some(1.0)
        );
        assert_eq!(
            fx.sample("http_client_active_requests", &labels[..4]),
            Some(0.0)
        );
        assert!(!fx
            .text()
            .contains("http_server_request_duration_seconds_count{"));
    }

    #[test]
    fn incomplete_responses_are_recorded_and_counted() {
        let mut fx = Fixture::new(AggregatorConfig::default());
        let [start, Observation::Finished(mut f)] =
            exchange(1, Side::Server, "GET", "/big", 200, 50)
        else {
            unreachable!()
        };
        f.complete = false;
        fx.feed(start);
        fx.feed(Observation::Finished(f));
        assert_eq!(
            fx.sample(DURATION_COUNT, &server("GET", "/big", "200")),
            Some(1.0)
        );
        assert_eq!(
            fx.sample("sonde_http_incomplete_responses_total", &[]),
            Some(1.0)
        );
    }

    #[test]
    fn routes_over_budget_overflow_and_are_counted() {
        let config = AggregatorConfig {
            limits: Limits {
                services: 10,
                routes_per_service: 2,
                peers_per_service: 10,
            },
            ..AggregatorConfig::default()
        };
        let mut fx = Fixture::new(config);
        for (id, path) in ["/a", "/b", "/c", "/d", "/a", "/c"].iter().enumerate() {
            for o in exchange(id as u64, Side::Server, "GET", path, 200, 1) {
                fx.feed(o);
            }
        }
        assert_eq!(
            fx.sample(DURATION_COUNT, &server("GET", "/a", "200")),
            Some(2.0)
        );
        assert_eq!(
            fx.sample(DURATION_COUNT, &server("GET", "/b", "200")),
            Some(1.0)
        );
        assert_eq!(
            fx.sample(DURATION_COUNT, &server("GET", "{overflow}", "200")),
            Some(3.0)
        );
        assert_eq!(fx.sample(DURATION_COUNT, &server("GET", "/c", "200")), None);
        let dropped = |kind| fx.sample("sonde_series_dropped_total", &[("kind", kind)]);
        assert_eq!(dropped("route"), Some(3.0));
        assert_eq!(dropped("service"), Some(0.0));
    }

    #[test]
    fn series_over_budget_go_to_the_overflow_service() {
        let config = AggregatorConfig {
            max_series: 1,
            ..AggregatorConfig::default()
        };
        let mut fx = Fixture::new(config);
        for (id, status) in [200, 500, 500].into_iter().enumerate() {
            for o in exchange(id as u64, Side::Server, "GET", "/a", status, 1) {
                fx.feed(o);
            }
        }
        let overflow = [
            ("service_name", "{overflow}"),
            ("http_request_method", "GET"),
            ("http_route", "{overflow}"),
            ("http_response_status_code", "500"),
            ("network_protocol_version", "1.1"),
        ];
        assert_eq!(
            fx.sample(DURATION_COUNT, &server("GET", "/a", "200")),
            Some(1.0)
        );
        assert_eq!(fx.sample(DURATION_COUNT, &overflow), Some(2.0));
        assert_eq!(
            fx.sample("sonde_series_dropped_total", &[("kind", "series")]),
            Some(2.0)
        );
    }

    #[test]
    fn anomalies_are_counted_by_reason_from_zero() {
        let mut fx = Fixture::new(AggregatorConfig::default());
        fx.feed(Observation::Anomaly(Anomaly::BadChunk));
        fx.feed(Observation::Anomaly(Anomaly::BadChunk));
        let anomalies = |r| fx.sample("sonde_http_anomalies_total", &[("reason", r)]);
        assert_eq!(anomalies("bad_chunk"), Some(2.0));
        for a in ANOMALIES.into_iter().filter(|&a| a != Anomaly::BadChunk) {
            assert_eq!(anomalies(a.label()), Some(0.0), "{a:?}");
        }
    }

    /// End to end without a cluster: processes whose `/proc/<pid>/cgroup`
    /// puts them in containers, the pods of recorded API responses, and the
    /// labels of the series their requests make.
    #[tokio::test]
    async fn series_of_processes_in_pods_carry_their_pod_and_workload() {
        use crate::kubernetes::api::{watch_pods, ApiConfig, Backoff};
        use crate::kubernetes::fake_api::{fixture, FakeApi, Reply};
        use crate::kubernetes::Pods;

        let proc = tempfile::tempdir().unwrap();
        let systemd = |qos: &str, uid: &str, scope: &str, digit: &str| {
            format!(
                "0::/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{}.slice/{scope}-{}.scope\n",
                uid.replace('-', "_"),
                digit.repeat(64)
            )
        };
        let processes = [
            // the two replicas of Deployment cart (containerd, systemd and cgroupfs)
            (
                100,
                "/app/cart",
                systemd(
                    "burstable",
                    "2f1e8a4c-3b7d-4c9e-8f1a-6d5b4c3a2e10",
                    "cri-containerd",
                    "a",
                ),
            ),
            (
                101,
                "/app/cart",
                format!(
                    "0::/kubepods/burstable/pod7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c21/{}\n",
                    "d".repeat(64)
                ),
            ),
            // StatefulSet postgres (CRI-O)
            (
                102,
                "/usr/lib/postgresql/17/bin/postgres",
                systemd(
                    "besteffort",
                    "c3d2e1f0-a9b8-4c7d-8e6f-5a4b3c2d1e0f",
                    "crio",
                    "e",
                ),
            ),
            // a host service
            (
                103,
                "/usr/sbin/nginx",
                "0::/system.slice/nginx.service\n".to_owned(),
            ),
        ];
        for (tgid, exe, cgroup) in &processes {
            let dir = proc.path().join(tgid.to_string());
            std::fs::create_dir(&dir).unwrap();
            symlink(exe, dir.join("exe")).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        }

        let api = FakeApi::start(vec![
            (
                "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a".into(),
                Reply::Body(200, fixture("pod-list.json")),
            ),
            (
                "/apis/apps/v1/namespaces/shop/replicasets/cart-7d4b9c6f5d".into(),
                Reply::Body(200, fixture("replicaset.json")),
            ),
            (
                "/apis/batch/v1/namespaces/shop/jobs/report-29000000".into(),
                Reply::Body(200, fixture("job.json")),
            ),
        ])
        .await;
        let pods = Pods::default();
        let config = ApiConfig::plain(api.url(), "node-a").unwrap();
        let watch = tokio::spawn(watch_pods(config, pods.clone(), Backoff::default()));
        let start = std::time::Instant::now();
        while pods.len() < 5 {
            assert!(start.elapsed().as_secs() < 10, "{:?}", api.requests());
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        watch.abort();

        let registry = Registry::new();
        let config = AggregatorConfig {
            pod_labels: true,
            ..AggregatorConfig::default()
        };
        let mut agg = Aggregator::new(&registry, config).unwrap();
        let mut names =
            Names::new(ProcFs::new(proc.path()), Names::DEFAULT_CAPACITY).with_pods(pods);
        for (id, tgid) in [100, 101, 102, 103, 100].into_iter().enumerate() {
            for mut o in exchange(id as u64, Side::Server, "GET", "/orders/7", 200, 5) {
                match &mut o {
                    Observation::Started(s) => s.at.tgid = tgid,
                    Observation::Finished(f) => f.at.tgid = tgid,
                    _ => unreachable!(),
                }
                agg.observe(&o, &mut names);
            }
        }

        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .unwrap();
        // The k8s_* values in the order of kubernetes::LABELS, joined with `|`.
        let series = |service, pod: &'static str| {
            let mut labels = vec![
                ("service_name", service),
                ("http_request_method", "GET"),
                ("http_route", "/orders/{id}"),
            ];
            labels.extend(kubernetes::LABELS.into_iter().zip(pod.split('|')));
            labels
        };
        let cases = [
            (
                series(
                    "cart",
                    "shop|cart-7d4b9c6f5d-x8k2p|cart|cart|cart-7d4b9c6f5d||||",
                ),
                2.0,
            ),
            (
                series(
                    "cart",
                    "shop|cart-7d4b9c6f5d-q9w7e|cart|cart|cart-7d4b9c6f5d||||",
                ),
                1.0,
            ),
            (
                series("postgres", "db|postgres-0|postgres|||postgres|||"),
                1.0,
            ),
            (series("nginx", "||||||||"), 1.0),
        ];
        for (active, count) in cases {
            assert_eq!(
                sample(&text, "http_server_active_requests", &active),
                Some(0.0),
                "{active:?}"
            );
            let mut exchange = active.clone();
            exchange.extend([
                ("http_response_status_code", "200"),
                ("network_protocol_version", "1.1"),
            ]);
            assert_eq!(
                sample(&text, DURATION_COUNT, &exchange),
                Some(count),
                "{exchange:?}"
            );
        }
        let series_lines = text
            .lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
            .count();
        assert_eq!(series_lines, 4, "{text}");
    }

    #[test]
    fn self_metrics() {
        let registry = Registry::new();
        let m = SelfMetrics::new(&registry, "1.2.3").unwrap();
        let text = || {
            let mut out = String::new();
            prometheus::TextEncoder::new()
                .encode_utf8(&registry.gather(), &mut out)
                .unwrap();
            out
        };
        let lost = |t: &str, r| sample(t, "sonde_events_lost_total", &[("reason", r)]);
        let t = text();
        for (_, reason) in KERNEL_LOSSES {
            assert_eq!(lost(&t, reason), Some(0.0), "{reason}");
        }
        assert_eq!(
            sample(
                &t,
                "sonde_decode_errors_total",
                &[("reason", "unknown_kind")]
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(&t, "sonde_build_info", &[("version", "1.2.3")]),
            Some(1.0)
        );
        assert!(t.contains("process_cpu_seconds_total"));

        let mut totals = KernelCounters::default();
        totals[counter::RINGBUF_FULL as usize] = 7;
        totals[counter::NOT_HTTP as usize] = 3;
        m.set_kernel_counters(&totals);
        totals[counter::RINGBUF_FULL as usize] = 9;
        m.set_kernel_counters(&totals);
        totals[counter::RINGBUF_FULL as usize] = 4; // programs reloaded: never go down
        m.set_kernel_counters(&totals);
        m.record_events_read(5);
        m.record_events_read(6);
        m.record_decode_error(&DecodeError::Short(3));
        m.set_connections_tracked(12);

        let t = text();
        assert_eq!(lost(&t, "ringbuf_full"), Some(9.0));
        assert_eq!(lost(&t, "copy_failed"), Some(0.0));
        assert_eq!(
            sample(&t, "sonde_connections_not_http_total", &[]),
            Some(3.0)
        );
        assert_eq!(sample(&t, "sonde_events_read_total", &[]), Some(11.0));
        assert_eq!(
            sample(
                &t,
                "sonde_decode_errors_total",
                &[("reason", "short_record")]
            ),
            Some(1.0)
        );
        assert_eq!(sample(&t, "sonde_connections_tracked", &[]), Some(12.0));
    }
}
