//! Span assembly, between pairing (`conn::Tracker`) and export: every
//! request observed becomes a span, SERVER where a process received it and
//! CLIENT where a process sent it, and spans are joined into traces without
//! touching the traffic. Pure logic: no clock of its own, and no I/O but
//! what `process::Names` does to name a process once.
//!
//! # How a span finds its parent
//!
//! A span's id is drawn when its request starts, so requests that start while
//! it is in flight can name it as their parent. The parent is, in this order:
//!
//! 1. **The request's own trace context.** A valid W3C `traceparent` wins over
//!    anything sonde infers: the span joins that trace under the span id the
//!    header names, with its sampled flag and `tracestate`. This holds for
//!    CLIENT spans too: an instrumented process that sends a `traceparent` has
//!    said which trace the call belongs to. When sonde sees both ends of such a
//!    request, both spans carry the same header and become siblings under the
//!    span it names; they are not stitched.
//! 2. **Cross-process stitching** (SERVER spans). When sonde sees both ends of
//!    a connection, the server's request is the client's request on the
//!    mirrored 4-tuple (client address and port, server address and port) at
//!    the same position in the connection's request order (`seq`). Position,
//!    not timing, pairs them, so keep-alive and pipelining are exact: the third
//!    request read on a connection is the child of the third request written
//!    on it. A position can be misaligned when one side missed a request head
//!    (bytes the kernel did not capture); method and path must therefore be
//!    equal too, else the candidate is rejected.
//!    Behind DNAT (a Kubernetes Service's virtual IP) the client sees the
//!    virtual address and the server its own, so the tuples do not mirror;
//!    when no exact match exists, a match on the client's address, port and
//!    position alone is accepted, unless the client address is loopback
//!    (every network namespace has its own).
//!    The server's events may be read before the client's (events of different
//!    CPUs race into the ring buffer): a server span that found no client
//!    waits for one while it is in flight or held.
//!    A position can be held twice at once: the same tuple in two network
//!    namespaces (loopback in two pods) or a port reused within the window.
//!    So a stitch is made when both ends are seen but settled only when the
//!    first span whose trace goes through it is emitted, and it stands only if
//!    one span on each side holds the position then; otherwise the server
//!    span starts a new trace. No link is better than a wrong one.
//!    If the client is not observed (another node, an unwatched process, a
//!    proxy or SNAT in between), the server span starts a new trace.
//! 3. **In-process causality** (CLIENT spans). A request that a thread sends
//!    while it serves a request of the same process (the SERVER span read by
//!    that thread, still in flight) is a child of that SERVER span. Accuracy
//!    depends on how the program maps requests to threads:
//!    - a thread per request at a time (thread pools as in Tomcat, Puma,
//!      gunicorn sync workers; prefork servers): exact, as long as the thread
//!      that read the request makes the call;
//!    - event loops (Node, Python asyncio, nginx, Envoy) serve many requests on
//!      one thread; the most recently started request in flight on the thread
//!      is taken. Exact when handlers call out before the loop reads the next
//!      request, as at low concurrency; under concurrency, a call made after an
//!      `await` may be given to a request that arrived meanwhile;
//!    - runtimes that move work between threads (Go, Tokio, Java virtual
//!      threads, a hand-off from an I/O thread to workers) make the call on
//!      another thread than the read: the call is given to whatever that
//!      thread serves, or starts a new trace.
//! 4. Otherwise the span starts a new trace.
//!
//! # Holding, emission, limits
//!
//! A finished span is held for a window (default 1 s of the kernel's
//! monotonic clock after its end) so that links found late still apply, then
//! emitted. Its trace id is resolved at emission by following parent links
//! to the span that started the trace, so a subtree follows its root when
//! the root is stitched late. A span already emitted does not change: a
//! caller whose events arrive more than the window late is not linked.
//! Spans are emitted when their window ends, so children, which end first,
//! usually leave before their parents; tracing backends join them by id.
//!
//! A request abandoned without a response produces no span. Its children
//! keep their trace and are parented to its nearest exported ancestor.
//!
//! The spans known (in flight, held, or kept while children resolve their
//! trace through them) are bounded; a request starting when the table is
//! full gets no span and is counted (`dropped_window`), and calls it makes
//! start traces of their own.
//!
//! Sampling is the exporter's: a span carries the sampled flag of the
//! `traceparent` its trace came in with, or none when sonde started it.
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::exchange::{Finished, Observation, RequestId, Side, Started};
use crate::kubernetes::PodLabels;
use crate::metrics::{method_label, OTHER_METHOD};
use crate::process::Names;
use crate::route;

/// A finished span, ready for export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub tracestate: Option<String>,
    /// The sampled flag of the `traceparent` the trace came in with; None
    /// when sonde started the trace (the exporter decides).
    pub sampled: Option<bool>,
    /// Server: a SERVER span; Client: a CLIENT span.
    pub kind: Side,
    /// `METHOD route` (`GET /users/{id}`); `HTTP` stands for a method
    /// OpenTelemetry does not know, and the route is left out when the target
    /// is not a path (CONNECT).
    pub name: String,
    /// Exactly the histogram observation's start and end.
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
    /// A method OpenTelemetry knows, else `_OTHER`.
    pub method: String,
    /// Without query string.
    pub path: String,
    /// The `http.route` template, as for metrics but never `{overflow}`.
    pub route: String,
    pub status: u16,
    pub server: SocketAddr,
    pub client: SocketAddr,
    pub protocol_version: &'static str,
    /// 5xx for a SERVER span, 4xx and 5xx for a CLIENT span.
    pub error: bool,
    pub service_name: String,
    pub pid: u32,
    pub exe_name: String,
    /// The `k8s.*` resource attributes, for a process in a pod.
    pub pod: Option<Arc<PodLabels>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long a finished span waits for late links, in ns.
    pub window_ns: u64,
    /// Most spans known at once.
    pub capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window_ns: 1_000_000_000,
            capacity: 100_000,
        }
    }
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub emitted: u64,
    /// Requests that got no span because the table was full.
    pub dropped_window: u64,
    /// Stitches settled: SERVER spans joined to the CLIENT span on the
    /// other end of their connection.
    pub stitched: u64,
    /// CLIENT spans joined to the SERVER span their thread was serving.
    pub linked_in_process: u64,
    /// Stitching candidates refused, per attempt: method or path differ,
    /// several spans at one position (at lookup or when settling), or the
    /// link would close a loop.
    pub stitch_rejected: u64,
}

/// Longest parent chain followed; real chains on one node are far shorter.
const MAX_DEPTH: usize = 256;

/// Turns observations into spans; see the module documentation.
pub struct Assembler {
    config: Config,
    ids: Ids,
    spans: HashMap<RequestId, Span>,
    /// Held spans by due time, ascending.
    due: VecDeque<(u64, RequestId)>,
    last_due: u64,
    /// Newest timestamp observed: the event stream's clock.
    stream_ns: u64,
    /// The newest in-flight SERVER span of each thread; the older ones are
    /// linked from it through `Span::older`.
    threads: HashMap<Thread, RequestId>,
    /// Every span known, by position on its connection: candidates for
    /// stitching, and the count that tells a unique one.
    clients: ConnIndex,
    servers: ConnIndex,
    stats: Stats,
}

impl Assembler {
    pub fn new(config: Config) -> Self {
        Self::with_seed(config, RandomState::new().hash_one(std::process::id()))
    }

    fn with_seed(config: Config, seed: u64) -> Self {
        Assembler {
            config,
            ids: Ids(seed),
            spans: HashMap::new(),
            due: VecDeque::new(),
            last_due: 0,
            stream_ns: 0,
            threads: HashMap::new(),
            clients: ConnIndex::default(),
            servers: ConnIndex::default(),
            stats: Stats::default(),
        }
    }

    /// Takes the tracker's next observation. Spans whose window has passed
    /// on the clock of the events themselves are emitted into `out`, so
    /// emission keeps up under load between calls to `flush_due`.
    pub fn observe(&mut self, obs: &Observation, names: &mut Names, out: &mut Vec<SpanRecord>) {
        match obs {
            Observation::Started(s) => {
                self.advance(s.start_ns, out);
                self.on_started(s, names);
            }
            Observation::Finished(f) => {
                self.advance(f.end_ns, out);
                self.on_finished(f);
            }
            Observation::Abandoned { id, .. } => self.on_abandoned(*id),
            Observation::Anomaly(_) => {}
        }
    }

    /// Emits the spans held since at least the window before `now_mono_ns`
    /// (the kernel's monotonic clock, read after draining the events
    /// waiting). `u64::MAX` emits everything held, as at shutdown.
    pub fn flush_due(&mut self, now_mono_ns: u64, out: &mut Vec<SpanRecord>) {
        while let Some(&(due, id)) = self.due.front() {
            if due > now_mono_ns {
                break;
            }
            self.due.pop_front();
            self.emit(id, out);
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Spans known: in flight, held, or kept for their children.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn advance(&mut self, ts_ns: u64, out: &mut Vec<SpanRecord>) {
        if ts_ns > self.stream_ns {
            self.stream_ns = ts_ns;
            self.flush_due(ts_ns, out);
        }
    }

    fn on_started(&mut self, s: &Started, names: &mut Names) {
        if self.spans.contains_key(&s.id) {
            return; // started twice: a tracker bug; the first start stands
        }
        if self.spans.len() >= self.config.capacity {
            self.stats.dropped_window += 1;
            return;
        }
        let request = &s.request;
        let (origin, ctx) = match &request.trace {
            Some(tp) => (
                Origin::Remote(tp.parent_id),
                TraceCtx {
                    trace_id: tp.trace_id,
                    sampled: Some(tp.sampled()),
                    tracestate: tp.tracestate.as_deref().map(Arc::from),
                },
            ),
            None => (Origin::Root, self.ids.new_trace()),
        };
        let conn = ConnKey::new(s.at.side, s.at.local, s.at.peer, s.seq);
        let thread = Thread {
            tgid: s.at.tgid,
            tid: s.tid,
        };
        let span = Span {
            span_id: self.ids.span_id(),
            origin,
            ctx,
            stitch: None,
            children: 0,
            side: s.at.side,
            thread,
            conn,
            method: request.method.to_string(),
            path: request.path.clone(),
            path_truncated: request.path_truncated,
            version: request.version,
            service_name: names.service_name(s.at.tgid).to_owned(),
            exe_name: names.exe_name(s.at.tgid).to_owned(),
            pod: names.pod(s.at.tgid).cloned(),
            older: None,
            newer: None,
            state: State::InFlight,
        };
        self.spans.insert(s.id, span);
        self.index_mut(s.at.side).insert(&conn, s.id);
        match s.at.side {
            Side::Server => {
                self.join_thread(s.id, thread);
                if request.trace.is_none() {
                    if let Some((client, via)) = self.candidate(s.id, Side::Client) {
                        self.link(s.id, client, Some(via));
                    }
                }
            }
            Side::Client => {
                if request.trace.is_none() {
                    if let Some(&server) = self.threads.get(&thread) {
                        self.link(s.id, server, None);
                        self.stats.linked_in_process += 1;
                    }
                }
                // A server whose events came first may be waiting for it.
                if let Some((server, via)) = self.candidate(s.id, Side::Server) {
                    if self.is_ancestor(server, s.id) {
                        // A thread calling its own server: a loop is no trace.
                        self.stats.stitch_rejected += 1;
                    } else {
                        self.link(server, s.id, Some(via));
                    }
                }
            }
        }
    }

    /// The span of `side` on the other end of `id`'s request: one alone at
    /// its position that sent the same request and, if a SERVER span, has
    /// no parent yet.
    fn candidate(&mut self, id: RequestId, side: Side) -> Option<(RequestId, Via)> {
        let span = self.spans.get(&id)?;
        let index = match side {
            Side::Client => &self.clients,
            Side::Server => &self.servers,
        };
        let found = match index.find(&span.conn) {
            Find::None => return None,
            Find::Ambiguous => None,
            Find::Unique(other, via) => {
                let other_span = self.spans.get(&other)?;
                if side == Side::Server && !matches!(other_span.origin, Origin::Root) {
                    // Has a traceparent, or another client (a conflict that
                    // settling the other link will find).
                    return None;
                }
                other_span.same_request(span).then_some((other, via))
            }
        };
        if found.is_none() {
            self.stats.stitch_rejected += 1;
        }
        found
    }

    fn on_finished(&mut self, f: &Finished) {
        // Unknown: dropped at its start (counted then).
        if !self
            .spans
            .get(&f.id)
            .is_some_and(|s| matches!(s.state, State::InFlight))
        {
            return;
        }
        self.leave_thread(f.id);
        if let Some(span) = self.spans.get_mut(&f.id) {
            span.state = State::Held {
                status: f.status,
                start_ns: f.start_ns,
                end_ns: f.end_ns,
            };
        }
        // Kept ascending even if ends arrive slightly out of order: a span is
        // then held a little longer, never less.
        let due = f
            .end_ns
            .saturating_add(self.config.window_ns)
            .max(self.last_due);
        self.last_due = due;
        self.due.push_back((due, f.id));
    }

    fn on_abandoned(&mut self, id: RequestId) {
        if self
            .spans
            .get(&id)
            .is_some_and(|s| matches!(s.state, State::InFlight))
        {
            self.leave_thread(id);
            self.retire(id, true);
        }
    }

    fn emit(&mut self, id: RequestId, out: &mut Vec<SpanRecord>) {
        self.settle(id);
        let Some(span) = self.spans.get(&id) else {
            return;
        };
        let State::Held {
            status,
            start_ns,
            end_ns,
        } = span.state
        else {
            return;
        };
        let ctx = self.resolved_ctx(span);
        let trace_id = ctx.trace_id;
        let sampled = ctx.sampled;
        let tracestate = ctx.tracestate.as_deref().map(str::to_owned);
        let parent_span_id = self.parent_span_id(span.origin);
        let mut route = String::new();
        route::http_route(&span.path, span.path_truncated, &mut route);
        let method = method_label(&span.method);
        let name = span_name(method, &route);
        let (side, conn, version, pid, span_id) = (
            span.side,
            span.conn,
            span.version,
            span.thread.tgid,
            span.span_id,
        );
        let Some(span) = self.spans.get_mut(&id) else {
            return;
        };
        out.push(SpanRecord {
            trace_id,
            span_id,
            parent_span_id,
            tracestate,
            sampled,
            kind: side,
            name,
            start_mono_ns: start_ns,
            end_mono_ns: end_ns,
            method: method.to_owned(),
            path: std::mem::take(&mut span.path),
            route,
            status,
            server: conn.server,
            client: conn.client,
            protocol_version: version,
            error: match side {
                Side::Server => status >= 500,
                Side::Client => status >= 400,
            },
            service_name: std::mem::take(&mut span.service_name),
            exe_name: std::mem::take(&mut span.exe_name),
            pod: span.pod.take(),
            pid,
        });
        self.stats.emitted += 1;
        self.retire(id, false);
    }

    /// The trace context of the span that started `span`'s trace.
    fn resolved_ctx<'a>(&'a self, mut span: &'a Span) -> &'a TraceCtx {
        for _ in 0..MAX_DEPTH {
            match span.origin {
                Origin::Local(parent) => match self.spans.get(&parent) {
                    Some(p) => span = p,
                    None => break,
                },
                Origin::Root | Origin::Remote(_) => break,
            }
        }
        // Past a missing link or the depth limit, the context copied when the
        // link was made stands.
        &span.ctx
    }

    /// The nearest ancestor that is or will be exported: abandoned spans
    /// are skipped.
    fn parent_span_id(&self, mut origin: Origin) -> Option<[u8; 8]> {
        for _ in 0..MAX_DEPTH {
            match origin {
                Origin::Root => return None,
                Origin::Remote(parent) => return Some(parent),
                Origin::Local(parent) => {
                    let p = self.spans.get(&parent)?;
                    match p.state {
                        State::Gone { abandoned: true } => origin = p.origin,
                        _ => return Some(p.span_id),
                    }
                }
            }
        }
        None
    }

    /// Whether `ancestor` is `id` or one of its ancestors.
    fn is_ancestor(&self, ancestor: RequestId, mut id: RequestId) -> bool {
        for _ in 0..MAX_DEPTH {
            if id == ancestor {
                return true;
            }
            match self.spans.get(&id).map(|s| &s.origin) {
                Some(Origin::Local(parent)) => id = *parent,
                _ => return false,
            }
        }
        true // too deep to tell: treated as a loop, so no link is made
    }

    fn link(&mut self, child: RequestId, parent: RequestId, stitch: Option<Via>) {
        let Some(p) = self.spans.get(&parent) else {
            return;
        };
        let ctx = self.resolved_ctx(p).clone();
        if let Some(p) = self.spans.get_mut(&parent) {
            p.children += 1;
        }
        if let Some(c) = self.spans.get_mut(&child) {
            c.origin = Origin::Local(parent);
            c.ctx = ctx;
            c.stitch = stitch;
        }
    }

    /// Settles the stitches between `id` and the start of its trace, the
    /// first time a span resolves its trace through them: a stitch stands if
    /// its position is still held by one span on each side, else the server
    /// span starts a trace of its own. Settled once, a trace no longer
    /// changes under spans already emitted.
    fn settle(&mut self, mut id: RequestId) {
        for _ in 0..MAX_DEPTH {
            let Some(span) = self.spans.get_mut(&id) else {
                return;
            };
            let Origin::Local(parent) = span.origin else {
                return;
            };
            if let Some(via) = span.stitch.take() {
                let conn = span.conn;
                if self.clients.count(&conn, via) == 1 && self.servers.count(&conn, via) == 1 {
                    self.stats.stitched += 1;
                } else {
                    self.stats.stitch_rejected += 1;
                    let ctx = self.ids.new_trace();
                    if let Some(span) = self.spans.get_mut(&id) {
                        span.origin = Origin::Root;
                        span.ctx = ctx;
                    }
                    self.release(parent);
                    return;
                }
            }
            id = parent;
        }
    }

    /// The span is done (emitted or abandoned): it leaves the table unless
    /// children still resolve their trace through it.
    fn retire(&mut self, id: RequestId, abandoned: bool) {
        let Some(span) = self.spans.get_mut(&id) else {
            return;
        };
        if span.children > 0 {
            span.state = State::Gone { abandoned };
            span.method = String::new();
            span.path = String::new();
            span.service_name = String::new();
            span.exe_name = String::new();
            span.pod = None;
            return;
        }
        if let Some(Origin::Local(parent)) = self.forget(id) {
            self.release(parent);
        }
    }

    /// `parent` has one child fewer; a gone parent left childless goes,
    /// and so on up.
    fn release(&mut self, mut parent: RequestId) {
        loop {
            let Some(p) = self.spans.get_mut(&parent) else {
                return;
            };
            p.children = p.children.saturating_sub(1);
            if p.children > 0 || !matches!(p.state, State::Gone { .. }) {
                return;
            }
            match self.forget(parent) {
                Some(Origin::Local(grandparent)) => parent = grandparent,
                _ => return,
            }
        }
    }

    /// Removes a span from the table and its index; its origin.
    fn forget(&mut self, id: RequestId) -> Option<Origin> {
        let span = self.spans.remove(&id)?;
        self.index_mut(span.side).remove(&span.conn, id);
        Some(span.origin)
    }

    fn index_mut(&mut self, side: Side) -> &mut ConnIndex {
        match side {
            Side::Client => &mut self.clients,
            Side::Server => &mut self.servers,
        }
    }

    /// Makes a new in-flight SERVER span the newest of its thread.
    fn join_thread(&mut self, id: RequestId, thread: Thread) {
        let older = self.threads.insert(thread, id);
        if let Some(o) = older.and_then(|o| self.spans.get_mut(&o)) {
            o.newer = Some(id);
        }
        if let Some(span) = self.spans.get_mut(&id) {
            span.older = older;
        }
    }

    /// Takes an in-flight SERVER span out of its thread's list.
    fn leave_thread(&mut self, id: RequestId) {
        let Some(span) = self.spans.get_mut(&id) else {
            return;
        };
        if span.side != Side::Server {
            return;
        }
        let (older, newer, thread) = (span.older.take(), span.newer.take(), span.thread);
        if let Some(o) = older.and_then(|o| self.spans.get_mut(&o)) {
            o.newer = newer;
        }
        match newer {
            Some(n) => {
                if let Some(n) = self.spans.get_mut(&n) {
                    n.older = older;
                }
            }
            None => match older {
                Some(o) => {
                    self.threads.insert(thread, o);
                }
                None => {
                    self.threads.remove(&thread);
                }
            },
        }
    }
}

/// `METHOD route`, per the OpenTelemetry HTTP span name rules.
fn span_name(method: &str, route: &str) -> String {
    let method = if method == OTHER_METHOD {
        "HTTP"
    } else {
        method
    };
    if route == route::OTHER {
        method.to_owned()
    } else {
        format!("{method} {route}")
    }
}

struct Span {
    span_id: [u8; 8],
    origin: Origin,
    /// For a root or a traceparent: the trace's context. For a child: its
    /// parent's, copied when linked, used only if the parent cannot be found.
    ctx: TraceCtx,
    /// A link to a CLIENT span found by position, not settled yet.
    stitch: Option<Via>,
    /// Spans in the table whose origin is `Local` this span.
    children: u32,
    side: Side,
    thread: Thread,
    conn: ConnKey,
    method: String,
    path: String,
    path_truncated: bool,
    version: &'static str,
    service_name: String,
    exe_name: String,
    pod: Option<Arc<PodLabels>>,
    /// Neighbours in the thread's list while an in-flight SERVER span.
    older: Option<RequestId>,
    newer: Option<RequestId>,
    state: State,
}

impl Span {
    /// Whether both spans saw the same request line. Either path may be a
    /// prefix if cut by capture.
    fn same_request(&self, other: &Span) -> bool {
        let (a, b) = (&self.path, &other.path);
        self.method == other.method
            && match (self.path_truncated, other.path_truncated) {
                (false, false) => a == b,
                (true, false) => b.starts_with(a.as_str()),
                (false, true) => a.starts_with(b.as_str()),
                (true, true) => a.starts_with(b.as_str()) || b.starts_with(a.as_str()),
            }
    }
}

#[derive(Clone, Copy, Debug)]
enum Origin {
    /// Starts its trace.
    Root,
    /// Child of the span a `traceparent` names.
    Remote([u8; 8]),
    /// Child of a span in the table.
    Local(RequestId),
}

#[derive(Clone, Debug)]
struct TraceCtx {
    trace_id: [u8; 16],
    sampled: Option<bool>,
    tracestate: Option<Arc<str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    InFlight,
    Held {
        status: u16,
        start_ns: u64,
        end_ns: u64,
    },
    /// Emitted or abandoned, kept while children resolve through it.
    Gone {
        abandoned: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Thread {
    tgid: u32,
    tid: u32,
}

/// One request's place on its connection, the same seen from either end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnKey {
    client: SocketAddr,
    server: SocketAddr,
    seq: u64,
}

impl ConnKey {
    fn new(side: Side, local: SocketAddr, peer: SocketAddr, seq: u64) -> Self {
        let (client, server) = match side {
            Side::Server => (peer, local),
            Side::Client => (local, peer),
        };
        ConnKey {
            client,
            server,
            seq,
        }
    }

    /// The key without the server address, where translation may change
    /// it; None for loopback clients, whose addresses repeat in every
    /// network namespace.
    fn translated(&self) -> Option<(SocketAddr, u64)> {
        (!self.client.ip().is_loopback()).then_some((self.client, self.seq))
    }
}

/// The spans of one side by connection position, exactly and by the
/// client end alone.
#[derive(Default)]
struct ConnIndex {
    exact: HashMap<ConnKey, Slot>,
    by_client: HashMap<(SocketAddr, u64), Slot>,
}

/// Which key a stitch was found by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Exact,
    /// The client end alone: the server address was translated.
    ClientEnd,
}

enum Find {
    None,
    Unique(RequestId, Via),
    Ambiguous,
}

impl ConnIndex {
    fn insert(&mut self, key: &ConnKey, id: RequestId) {
        Slot::insert(&mut self.exact, *key, id);
        if let Some(k) = key.translated() {
            Slot::insert(&mut self.by_client, k, id);
        }
    }

    fn remove(&mut self, key: &ConnKey, id: RequestId) {
        Slot::remove(&mut self.exact, key, id);
        if let Some(k) = key.translated() {
            Slot::remove(&mut self.by_client, &k, id);
        }
    }

    fn find(&self, key: &ConnKey) -> Find {
        let found = match self.exact.get(key) {
            Some(slot) => Some((slot, Via::Exact)),
            None => key
                .translated()
                .and_then(|k| self.by_client.get(&k))
                .map(|slot| (slot, Via::ClientEnd)),
        };
        match found {
            None => Find::None,
            Some((
                Slot {
                    id: Some(id),
                    count: 1,
                },
                via,
            )) => Find::Unique(*id, via),
            Some(_) => Find::Ambiguous,
        }
    }

    /// Spans filed at `key`'s position, as `via` sees it.
    fn count(&self, key: &ConnKey, via: Via) -> u32 {
        let slot = match via {
            Via::Exact => self.exact.get(key),
            Via::ClientEnd => key.translated().and_then(|k| self.by_client.get(&k)),
        };
        slot.map_or(0, |s| s.count)
    }
}

/// The spans filed under one key: their number, and the id while exactly
/// one is known to be there.
#[derive(Clone, Copy, Debug)]
struct Slot {
    id: Option<RequestId>,
    count: u32,
}

impl Slot {
    fn insert<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Slot>, key: K, id: RequestId) {
        map.entry(key)
            .and_modify(|s| {
                s.count += 1;
                s.id = None;
            })
            .or_insert(Slot {
                id: Some(id),
                count: 1,
            });
    }

    fn remove<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Slot>, key: &K, id: RequestId) {
        if let Some(s) = map.get_mut(key) {
            s.count -= 1;
            if s.count == 0 {
                map.remove(key);
            } else if s.id == Some(id) {
                s.id = None;
            }
        }
    }
}

/// Span and trace ids: splitmix64, fast and well mixed; ids need to be
/// unique, not unpredictable.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Never all zero, which W3C Trace Context reserves for "invalid".
    fn span_id(&mut self) -> [u8; 8] {
        loop {
            let v = self.next();
            if v != 0 {
                return v.to_be_bytes();
            }
        }
    }

    /// The context of a trace sonde starts: the sampling decision is the
    /// exporter's.
    fn new_trace(&mut self) -> TraceCtx {
        let mut trace_id = [0; 16];
        trace_id[..8].copy_from_slice(&self.next().to_be_bytes());
        trace_id[8..].copy_from_slice(&self.span_id());
        TraceCtx {
            trace_id,
            sampled: None,
            tracestate: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ConnOpen, RoleHint};
    use crate::exchange::{Endpoint, Request, TraceParent};
    use crate::process::ProcFs;

    const MS: u64 = 1_000_000;
    const WINDOW: u64 = 1_000 * MS;
    const SEED: u64 = 7;

    /// One request as one end of its connection saw it.
    #[derive(Clone)]
    struct Req {
        id: RequestId,
        tgid: u32,
        tid: u32,
        side: Side,
        local: &'static str,
        peer: &'static str,
        seq: u64,
        method: &'static str,
        path: &'static str,
        path_truncated: bool,
        trace: Option<TraceParent>,
    }

    #[allow(clippy::too_many_arguments)]
    fn req(
        id: RequestId,
        side: Side,
        (tgid, tid): (u32, u32),
        local: &'static str,
        peer: &'static str,
        seq: u64,
        path: &'static str,
    ) -> Req {
        Req {
            id,
            tgid,
            tid,
            side,
            local,
            peer,
            seq,
            method: "GET",
            path,
            path_truncated: false,
            trace: None,
        }
    }

    impl Req {
        fn at(&self) -> Endpoint {
            Endpoint {
                tgid: self.tgid,
                conn_id: 1,
                side: self.side,
                local: self.local.parse().unwrap(),
                peer: self.peer.parse().unwrap(),
            }
        }

        fn request(&self) -> Request {
            Request {
                method: self.method.into(),
                path: self.path.to_owned(),
                path_truncated: self.path_truncated,
                version: "1.1",
                trace: self.trace.clone().map(Box::new),
            }
        }

        fn start(&self, ms: u64) -> Observation {
            Observation::Started(Started {
                id: self.id,
                at: self.at(),
                request: self.request(),
                start_ns: ms * MS,
                tid: self.tid,
                seq: self.seq,
            })
        }

        fn finish(&self, status: u16, start_ms: u64, end_ms: u64) -> Observation {
            Observation::Finished(Finished {
                id: self.id,
                at: self.at(),
                request: self.request(),
                status,
                start_ns: start_ms * MS,
                end_ns: end_ms * MS,
                request_body_bytes: 0,
                response_body_bytes: 0,
                complete: true,
                tid: self.tid,
                seq: self.seq,
            })
        }

        fn abandon(&self) -> Observation {
            Observation::Abandoned {
                id: self.id,
                at: self.at(),
                reason: crate::exchange::AbandonReason::ClosedUnanswered,
            }
        }

        fn with_trace(mut self, trace: TraceParent) -> Self {
            self.trace = Some(trace);
            self
        }
    }

    struct Harness {
        asm: Assembler,
        names: Names,
        out: Vec<SpanRecord>,
    }

    impl Harness {
        fn new() -> Self {
            Self::with(Config::default(), SEED)
        }

        fn with(config: Config, seed: u64) -> Self {
            // No /proc: services are named by the `comm` of their opens.
            let mut names = Names::new(ProcFs::new("/nonexistent/proc"), 64);
            for (tgid, comm) in [(100, "svc-a"), (200, "svc-b"), (300, "svc-c")] {
                names.on_conn_open(&ConnOpen {
                    conn_id: 1,
                    tgid,
                    fd: 3,
                    ts_ns: 0,
                    role: RoleHint::Server,
                    local: "127.0.0.1:1".parse().unwrap(),
                    peer: "127.0.0.1:2".parse().unwrap(),
                    comm: comm.to_owned(),
                });
            }
            Harness {
                asm: Assembler::with_seed(config, seed),
                names,
                out: Vec::new(),
            }
        }

        fn feed(&mut self, observations: &[Observation]) {
            for obs in observations {
                self.asm.observe(obs, &mut self.names, &mut self.out);
            }
        }

        /// Everything emitted, the held spans included.
        fn finish(mut self) -> (Vec<SpanRecord>, Assembler) {
            self.asm.flush_due(u64::MAX, &mut self.out);
            (self.out, self.asm)
        }
    }

    /// The span of the request to `path` seen from `kind`'s end.
    fn span<'a>(spans: &'a [SpanRecord], kind: Side, path: &str) -> &'a SpanRecord {
        spans
            .iter()
            .find(|s| s.kind == kind && s.path == path)
            .unwrap_or_else(|| panic!("no {kind:?} span for {path}"))
    }

    use Side::{Client, Server};

    // A → B → C on loopback; the caller of A is not observed.
    fn chain() -> [Req; 5] {
        [
            req(
                1,
                Server,
                (100, 101),
                "127.0.0.1:8001",
                "127.0.0.1:50000",
                0,
                "/a/1",
            ),
            req(
                2,
                Client,
                (100, 101),
                "127.0.0.1:50001",
                "127.0.0.1:8002",
                0,
                "/b/2",
            ),
            req(
                3,
                Server,
                (200, 201),
                "127.0.0.1:8002",
                "127.0.0.1:50001",
                0,
                "/b/2",
            ),
            req(
                4,
                Client,
                (200, 201),
                "127.0.0.1:50002",
                "127.0.0.1:8003",
                0,
                "/c/3",
            ),
            req(
                5,
                Server,
                (300, 301),
                "127.0.0.1:8003",
                "127.0.0.1:50002",
                0,
                "/c/3",
            ),
        ]
    }

    fn chain_in_order() -> Vec<Observation> {
        let [sa, ca, sb, cb, sc] = chain();
        vec![
            sa.start(0),
            ca.start(1),
            sb.start(2),
            cb.start(3),
            sc.start(4),
            sc.finish(200, 4, 5),
            cb.finish(200, 3, 6),
            sb.finish(200, 2, 7),
            ca.finish(200, 1, 8),
            sa.finish(200, 0, 9),
        ]
    }

    #[test]
    fn chain_of_three_services_is_one_trace() {
        let mut h = Harness::new();
        h.feed(&chain_in_order());
        let (spans, asm) = h.finish();
        assert_eq!(spans.len(), 5);
        let sa = span(&spans, Server, "/a/1");
        let ca = span(&spans, Client, "/b/2");
        let sb = span(&spans, Server, "/b/2");
        let cb = span(&spans, Client, "/c/3");
        let sc = span(&spans, Server, "/c/3");
        assert_eq!(sa.parent_span_id, None);
        assert_eq!(ca.parent_span_id, Some(sa.span_id));
        assert_eq!(sb.parent_span_id, Some(ca.span_id));
        assert_eq!(cb.parent_span_id, Some(sb.span_id));
        assert_eq!(sc.parent_span_id, Some(cb.span_id));
        for s in &spans {
            assert_eq!(s.trace_id, sa.trace_id, "{}", s.name);
        }
        let mut ids: Vec<_> = spans.iter().map(|s| s.span_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 5, "distinct span ids");
        assert_eq!(
            *sb,
            SpanRecord {
                trace_id: sa.trace_id,
                span_id: sb.span_id,
                parent_span_id: Some(ca.span_id),
                tracestate: None,
                sampled: None,
                kind: Server,
                name: "GET /b/{id}".into(),
                start_mono_ns: 2 * MS,
                end_mono_ns: 7 * MS,
                method: "GET".into(),
                path: "/b/2".into(),
                route: "/b/{id}".into(),
                status: 200,
                server: "127.0.0.1:8002".parse().unwrap(),
                client: "127.0.0.1:50001".parse().unwrap(),
                protocol_version: "1.1",
                error: false,
                service_name: "svc-b".into(),
                pid: 200,
                exe_name: "svc-b".into(),
                pod: None,
            }
        );
        assert_eq!(
            (
                ca.kind,
                ca.server,
                ca.client,
                ca.service_name.as_str(),
                ca.pid
            ),
            (
                Client,
                "127.0.0.1:8002".parse().unwrap(),
                "127.0.0.1:50001".parse().unwrap(),
                "svc-a",
                100
            )
        );
        assert_eq!(
            asm.stats(),
            Stats {
                emitted: 5,
                dropped_window: 0,
                stitched: 2,
                linked_in_process: 2,
                stitch_rejected: 0,
            }
        );
        assert!(asm.is_empty(), "everything emitted is forgotten");
    }

    #[test]
    fn spans_leave_in_window_order_children_first() {
        let mut h = Harness::new();
        h.feed(&chain_in_order());
        let (spans, _) = h.finish();
        let order: Vec<_> = spans.iter().map(|s| (s.kind, s.path.as_str())).collect();
        assert_eq!(
            order,
            [
                (Server, "/c/3"),
                (Client, "/c/3"),
                (Server, "/b/2"),
                (Client, "/b/2"),
                (Server, "/a/1"),
            ]
        );
    }

    #[test]
    fn server_read_before_its_client_wrote_is_still_stitched() {
        let [sa, ca, sb, cb, sc] = chain();
        // B's and C's events first, each finished before its caller started.
        let mut h = Harness::new();
        h.feed(&[
            sc.start(4),
            sc.finish(200, 4, 5),
            sb.start(2),
            cb.start(3),
            cb.finish(200, 3, 6),
            sb.finish(200, 2, 7),
            sa.start(0),
            ca.start(1),
            ca.finish(200, 1, 8),
            sa.finish(200, 0, 9),
        ]);
        let (spans, asm) = h.finish();
        let sa = span(&spans, Server, "/a/1");
        let ca = span(&spans, Client, "/b/2");
        let sb = span(&spans, Server, "/b/2");
        let cb = span(&spans, Client, "/c/3");
        let sc = span(&spans, Server, "/c/3");
        assert_eq!(sb.parent_span_id, Some(ca.span_id));
        assert_eq!(sc.parent_span_id, Some(cb.span_id));
        assert_eq!(cb.parent_span_id, Some(sb.span_id));
        for s in &spans {
            assert_eq!(s.trace_id, sa.trace_id, "{} follows its late root", s.name);
        }
        assert_eq!((asm.stats().stitched, asm.stats().emitted), (2, 5));
        assert!(asm.is_empty());
    }

    #[test]
    fn server_span_two_calls_are_both_its_children() {
        let s = req(
            1,
            Server,
            (100, 101),
            "127.0.0.1:8001",
            "127.0.0.1:50000",
            0,
            "/orders",
        );
        let c1 = req(
            2,
            Client,
            (100, 101),
            "127.0.0.1:50001",
            "127.0.0.1:9001",
            0,
            "/users",
        );
        let c2 = req(
            3,
            Client,
            (100, 101),
            "127.0.0.1:50002",
            "127.0.0.1:9002",
            0,
            "/stock",
        );
        // Not the thread serving the request, not the process.
        let other_thread = req(
            4,
            Client,
            (100, 102),
            "127.0.0.1:50003",
            "127.0.0.1:9003",
            0,
            "/t",
        );
        let other_process = req(
            5,
            Client,
            (200, 101),
            "127.0.0.1:50004",
            "127.0.0.1:9004",
            0,
            "/p",
        );
        let mut h = Harness::new();
        h.feed(&[
            s.start(0),
            c1.start(1),
            other_thread.start(1),
            other_process.start(1),
            c1.finish(200, 1, 2),
            c2.start(3),
            c2.finish(404, 3, 4),
            other_thread.finish(200, 1, 4),
            other_process.finish(200, 1, 4),
            s.finish(200, 0, 5),
        ]);
        let (spans, asm) = h.finish();
        let s = span(&spans, Server, "/orders");
        for path in ["/users", "/stock"] {
            let c = span(&spans, Client, path);
            assert_eq!(c.parent_span_id, Some(s.span_id), "{path}");
            assert_eq!(c.trace_id, s.trace_id, "{path}");
        }
        for path in ["/t", "/p"] {
            let c = span(&spans, Client, path);
            assert_eq!(c.parent_span_id, None, "{path}");
            assert_ne!(c.trace_id, s.trace_id, "{path}");
        }
        assert_eq!(asm.stats().linked_in_process, 2);
    }

    #[test]
    fn event_loop_call_goes_to_newest_request_in_flight() {
        let thread = (100, 101);
        let s1 = req(
            1,
            Server,
            thread,
            "127.0.0.1:8001",
            "127.0.0.1:50001",
            0,
            "/s1",
        );
        let s2 = req(
            2,
            Server,
            thread,
            "127.0.0.1:8001",
            "127.0.0.1:50002",
            0,
            "/s2",
        );
        let s3 = req(
            3,
            Server,
            thread,
            "127.0.0.1:8001",
            "127.0.0.1:50003",
            0,
            "/s3",
        );
        let call = |id, path| {
            req(
                id,
                Client,
                thread,
                "127.0.0.1:60000",
                "127.0.0.1:9000",
                0,
                path,
            )
        };
        let (c1, c2, c3, c4) = (
            call(11, "/c1"),
            call(12, "/c2"),
            call(13, "/c3"),
            call(14, "/c4"),
        );
        let mut h = Harness::new();
        h.feed(&[
            s1.start(0),
            s2.start(1),
            s3.start(2),
            c1.start(3),          // newest: s3
            s2.finish(200, 1, 4), // out of the middle
            c1.finish(200, 3, 5),
            c2.start(6), // still s3
            s3.finish(200, 2, 7),
            c3.start(8), // s2 gone, s3 gone: s1
            s1.finish(200, 0, 9),
            c4.start(10), // nothing in flight
        ]);
        h.feed(&[
            c2.finish(200, 6, 11),
            c3.finish(200, 8, 11),
            c4.finish(200, 10, 11),
        ]);
        let (spans, _) = h.finish();
        let id = |kind, path| span(&spans, kind, path).span_id;
        let parent = |path| span(&spans, Client, path).parent_span_id;
        assert_eq!(parent("/c1"), Some(id(Server, "/s3")));
        assert_eq!(parent("/c2"), Some(id(Server, "/s3")));
        assert_eq!(parent("/c3"), Some(id(Server, "/s1")));
        assert_eq!(parent("/c4"), None);
    }

    fn traceparent(flags: u8, tracestate: Option<&str>) -> TraceParent {
        TraceParent {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736u128.to_be_bytes(),
            parent_id: 0x00f0_67aa_0ba9_02b7u64.to_be_bytes(),
            flags,
            tracestate: tracestate.map(str::to_owned),
        }
    }

    #[test]
    fn incoming_traceparent_is_honoured_and_inherited() {
        let [sa, ca, sb, cb, sc] = chain();
        let tp = traceparent(1, Some("rojo=00f067aa0ba902b7"));
        let sa = sa.with_trace(tp.clone());
        let mut h = Harness::new();
        h.feed(&[
            sa.start(0),
            ca.start(1),
            sb.start(2),
            cb.start(3),
            sc.start(4),
            sc.finish(200, 4, 5),
            cb.finish(200, 3, 6),
            sb.finish(200, 2, 7),
            ca.finish(200, 1, 8),
            sa.finish(200, 0, 9),
        ]);
        let (spans, _) = h.finish();
        let sa = span(&spans, Server, "/a/1");
        assert_eq!(sa.parent_span_id, Some(tp.parent_id));
        assert_eq!(spans.len(), 5);
        for s in &spans {
            assert_eq!(
                (s.trace_id, s.sampled, s.tracestate.as_deref()),
                (tp.trace_id, Some(true), Some("rojo=00f067aa0ba902b7")),
                "{}",
                s.name
            );
        }
        assert_eq!(
            span(&spans, Server, "/c/3").parent_span_id,
            Some(span(&spans, Client, "/c/3").span_id)
        );
    }

    #[test]
    fn unsampled_traceparent_is_passed_on() {
        let s = req(
            1,
            Server,
            (100, 101),
            "127.0.0.1:8001",
            "127.0.0.1:50000",
            0,
            "/s",
        )
        .with_trace(traceparent(0, None));
        let c = req(
            2,
            Client,
            (100, 101),
            "127.0.0.1:50001",
            "127.0.0.1:9000",
            0,
            "/c",
        );
        let mut h = Harness::new();
        h.feed(&[
            s.start(0),
            c.start(1),
            c.finish(200, 1, 2),
            s.finish(200, 0, 3),
        ]);
        let (spans, _) = h.finish();
        let c = span(&spans, Client, "/c");
        assert_eq!((c.sampled, c.tracestate.as_deref()), (Some(false), None));
        assert_eq!(c.trace_id, traceparent(0, None).trace_id);
        assert_eq!(c.parent_span_id, Some(span(&spans, Server, "/s").span_id));
    }

    #[test]
    fn explicit_traceparent_wins_over_stitching_and_thread() {
        let [sa, ca, sb, ..] = chain();
        let tp = traceparent(1, None);
        // A is instrumented: its call to B carries A's context.
        let ca = ca.with_trace(tp.clone());
        let sb = sb.with_trace(tp.clone());
        let mut h = Harness::new();
        h.feed(&[
            sa.start(0),
            ca.start(1),
            sb.start(2),
            sb.finish(200, 2, 3),
            ca.finish(200, 1, 4),
            sa.finish(200, 0, 5),
        ]);
        let (spans, asm) = h.finish();
        let ca = span(&spans, Client, "/b/2");
        let sb = span(&spans, Server, "/b/2");
        for s in [ca, sb] {
            assert_eq!(
                (s.trace_id, s.parent_span_id, s.sampled),
                (tp.trace_id, Some(tp.parent_id), Some(true))
            );
        }
        assert_eq!(
            (asm.stats().stitched, asm.stats().linked_in_process),
            (0, 0)
        );
    }

    #[test]
    fn keep_alive_requests_stitch_by_position() {
        // Two threads of A share one pooled connection to B.
        let conn = ("127.0.0.1:50001", "127.0.0.1:8002");
        let s1 = req(
            1,
            Server,
            (100, 101),
            "127.0.0.1:8001",
            "127.0.0.1:40001",
            0,
            "/s1",
        );
        let s2 = req(
            2,
            Server,
            (100, 102),
            "127.0.0.1:8001",
            "127.0.0.1:40002",
            0,
            "/s2",
        );
        let c0 = req(3, Client, (100, 101), conn.0, conn.1, 0, "/item");
        let c1 = req(4, Client, (100, 102), conn.0, conn.1, 1, "/item");
        let b0 = req(5, Server, (200, 201), conn.1, conn.0, 0, "/item");
        let b1 = req(6, Server, (200, 201), conn.1, conn.0, 1, "/item");
        let mut h = Harness::new();
        h.feed(&[
            s1.start(0),
            s2.start(0),
            c0.start(1),
            b0.start(2),
            b0.finish(200, 2, 3),
            c0.finish(200, 1, 4),
            b1.start(5), // read before the client's write is seen
            c1.start(5),
            b1.finish(200, 5, 6),
            c1.finish(200, 5, 7),
            s1.finish(200, 0, 8),
            s2.finish(200, 0, 8),
        ]);
        let (spans, asm) = h.finish();
        let find = |kind, start_ms: u64| {
            spans
                .iter()
                .find(|s| s.kind == kind && s.path == "/item" && s.start_mono_ns == start_ms * MS)
                .unwrap()
        };
        let (c0, b0, c1, b1) = (
            find(Client, 1),
            find(Server, 2),
            find(Client, 5),
            find(Server, 5),
        );
        assert_eq!(b0.parent_span_id, Some(c0.span_id));
        assert_eq!(b1.parent_span_id, Some(c1.span_id));
        assert_eq!(b0.trace_id, span(&spans, Server, "/s1").trace_id);
        assert_eq!(b1.trace_id, span(&spans, Server, "/s2").trace_id);
        assert_ne!(b0.trace_id, b1.trace_id);
        assert_eq!(asm.stats().stitched, 2);
    }

    #[test]
    fn stitching_needs_a_unique_candidate_with_the_same_request() {
        struct Case {
            what: &'static str,
            client: Req,
            /// Another client with the same position, e.g. loopback in
            /// another network namespace.
            twin: Option<Req>,
            server: Req,
            stitched: bool,
            rejected: u64,
        }
        let client = req(
            1,
            Client,
            (100, 101),
            "127.0.0.1:50001",
            "127.0.0.1:8002",
            0,
            "/x",
        );
        let server = req(
            2,
            Server,
            (200, 201),
            "127.0.0.1:8002",
            "127.0.0.1:50001",
            0,
            "/x",
        );
        let twin = Req {
            id: 3,
            tgid: 300,
            ..client.clone()
        };
        let cases = [
            Case {
                what: "mirrored, same position and request",
                client: client.clone(),
                twin: None,
                server: server.clone(),
                stitched: true,
                rejected: 0,
            },
            Case {
                what: "another position",
                client: client.clone(),
                twin: None,
                server: Req {
                    seq: 1,
                    ..server.clone()
                },
                stitched: false,
                rejected: 0,
            },
            Case {
                what: "another path (a missed head shifted the positions)",
                client: client.clone(),
                twin: None,
                server: Req {
                    path: "/y",
                    ..server.clone()
                },
                stitched: false,
                rejected: 1,
            },
            Case {
                what: "another method",
                client: client.clone(),
                twin: None,
                server: Req {
                    method: "POST",
                    ..server.clone()
                },
                stitched: false,
                rejected: 1,
            },
            Case {
                what: "client's path cut by capture",
                client: Req {
                    path: "/x/ab",
                    path_truncated: true,
                    ..client.clone()
                },
                twin: None,
                server: Req {
                    path: "/x/abcdef",
                    ..server.clone()
                },
                stitched: true,
                rejected: 0,
            },
            Case {
                what: "two candidates",
                client: client.clone(),
                twin: Some(twin),
                server: server.clone(),
                stitched: false,
                rejected: 1,
            },
            Case {
                what: "DNAT: client sent to a virtual address",
                client: req(
                    1,
                    Client,
                    (100, 101),
                    "10.0.0.5:40000",
                    "10.96.0.10:80",
                    0,
                    "/x",
                ),
                twin: None,
                server: req(
                    2,
                    Server,
                    (200, 201),
                    "10.0.1.7:8080",
                    "10.0.0.5:40000",
                    0,
                    "/x",
                ),
                stitched: true,
                rejected: 0,
            },
            Case {
                what: "loopback clients are never matched without the server address",
                client: req(
                    1,
                    Client,
                    (100, 101),
                    "127.0.0.1:40000",
                    "127.0.0.1:80",
                    0,
                    "/x",
                ),
                twin: None,
                server: req(
                    2,
                    Server,
                    (200, 201),
                    "127.0.0.1:8080",
                    "127.0.0.1:40000",
                    0,
                    "/x",
                ),
                stitched: false,
                rejected: 0,
            },
        ];
        for case in cases {
            for server_first in [false, true] {
                let what = format!("{} (server first: {server_first})", case.what);
                let mut obs = vec![];
                if let Some(twin) = &case.twin {
                    obs.push(twin.start(0));
                }
                let (c, s) = (case.client.start(1), case.server.start(2));
                obs.extend(if server_first { [s, c] } else { [c, s] });
                obs.extend([case.server.finish(200, 2, 3), case.client.finish(200, 1, 4)]);
                if let Some(twin) = &case.twin {
                    obs.push(twin.finish(200, 0, 5));
                }
                let mut h = Harness::new();
                h.feed(&obs);
                let (spans, asm) = h.finish();
                let client = spans.iter().find(|s| s.start_mono_ns == MS).unwrap();
                let server = spans.iter().find(|s| s.start_mono_ns == 2 * MS).unwrap();
                assert_eq!(
                    server.parent_span_id == Some(client.span_id),
                    case.stitched,
                    "{what}"
                );
                assert_eq!(server.trace_id == client.trace_id, case.stitched, "{what}");
                assert_eq!(
                    (asm.stats().stitched, asm.stats().stitch_rejected),
                    (case.stitched as u64, case.rejected),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn client_without_observed_server_is_exported_under_its_caller() {
        let s = req(
            1,
            Server,
            (100, 101),
            "127.0.0.1:8001",
            "127.0.0.1:50000",
            0,
            "/s",
        );
        let c = req(
            2,
            Client,
            (100, 101),
            "10.0.0.1:50001",
            "93.184.216.34:80",
            0,
            "/ext/77",
        );
        let mut h = Harness::new();
        h.feed(&[
            s.start(0),
            c.start(1),
            c.finish(503, 1, 2),
            s.finish(502, 0, 3),
        ]);
        let (spans, asm) = h.finish();
        let (s, c) = (span(&spans, Server, "/s"), span(&spans, Client, "/ext/77"));
        assert_eq!(c.parent_span_id, Some(s.span_id));
        assert_eq!(c.trace_id, s.trace_id);
        assert_eq!(
            (c.name.as_str(), c.server, c.client, c.status, c.error),
            (
                "GET /ext/{id}",
                "93.184.216.34:80".parse().unwrap(),
                "10.0.0.1:50001".parse().unwrap(),
                503,
                true
            )
        );
        assert_eq!(asm.stats().stitched, 0);
    }

    #[test]
    fn abandoned_requests_make_no_span_and_are_forgotten() {
        let s = req(
            1,
            Server,
            (100, 101),
            "127.0.0.1:8001",
            "127.0.0.1:50000",
            0,
            "/s",
        );
        let c = req(
            2,
            Client,
            (100, 101),
            "127.0.0.1:50001",
            "127.0.0.1:9000",
            0,
            "/c",
        );
        let mut h = Harness::new();
        h.feed(&[s.start(0), c.start(1)]);
        assert_eq!(h.asm.len(), 2);
        h.feed(&[c.abandon()]);
        assert_eq!(h.asm.len(), 1);
        h.feed(&[s.abandon()]);
        assert_eq!(h.asm.len(), 0);
        // Nothing lingers in the thread list or the indexes.
        let later = req(
            3,
            Client,
            (100, 101),
            "127.0.0.1:50001",
            "127.0.0.1:9000",
            0,
            "/c",
        );
        let b = req(
            4,
            Server,
            (200, 201),
            "127.0.0.1:9000",
            "127.0.0.1:50001",
            0,
            "/c",
        );
        h.feed(&[
            later.start(5),
            b.start(6),
            b.finish(200, 6, 7),
            later.finish(200, 5, 8),
        ]);
        let (spans, asm) = h.finish();
        assert_eq!(spans.len(), 2);
        let (later, b) = (span(&spans, Client, "/c"), span(&spans, Server, "/c"));
        assert_eq!(
            later.parent_span_id, None,
            "the abandoned server is no parent"
        );
        assert_eq!(b.parent_span_id, Some(later.span_id));
        assert!(h_is_clean(&asm));
    }

    fn h_is_clean(asm: &Assembler) -> bool {
        asm.is_empty()
            && asm.threads.is_empty()
            && asm.due.is_empty()
            && [&asm.clients, &asm.servers]
                .iter()
                .all(|i| i.exact.is_empty() && i.by_client.is_empty())
    }

    #[test]
    fn children_of_an_abandoned_span_skip_it() {
        let [sa, ca, sb, cb, sc] = chain();
        let mut h = Harness::new();
        h.feed(&[
            sa.start(0),
            ca.start(1),
            sb.start(2),
            cb.start(3),
            sc.start(4),
            // B's caller hangs up; B's own work goes on.
            ca.abandon(),
            sb.abandon(),
        ]);
        assert_eq!(h.asm.len(), 5, "kept while their children need them");
        h.feed(&[
            sc.finish(200, 4, 5),
            cb.finish(200, 3, 6),
            sa.finish(200, 0, 9),
        ]);
        let (spans, asm) = h.finish();
        assert_eq!(spans.len(), 3);
        let sa = span(&spans, Server, "/a/1");
        let cb = span(&spans, Client, "/c/3");
        let sc = span(&spans, Server, "/c/3");
        assert_eq!(cb.parent_span_id, Some(sa.span_id), "past B and A's call");
        assert_eq!(sc.parent_span_id, Some(cb.span_id));
        assert!(spans.iter().all(|s| s.trace_id == sa.trace_id));
        assert!(h_is_clean(&asm));
    }

    #[test]
    fn child_of_an_abandoned_root_keeps_its_trace_without_parent() {
        let s = req(
            1,
            Server,
            (100, 101),
            "127.0.0.1:8001",
            "127.0.0.1:50000",
            0,
            "/s",
        );
        let c1 = req(
            2,
            Client,
            (100, 101),
            "127.0.0.1:50001",
            "127.0.0.1:9000",
            0,
            "/c1",
        );
        let c2 = req(
            3,
            Client,
            (100, 101),
            "127.0.0.1:50002",
            "127.0.0.1:9000",
            0,
            "/c2",
        );
        let mut h = Harness::new();
        h.feed(&[s.start(0), c1.start(1), c2.start(1), s.abandon()]);
        h.feed(&[c1.finish(200, 1, 2), c2.finish(200, 1, 3)]);
        let (spans, asm) = h.finish();
        let (c1, c2) = (span(&spans, Client, "/c1"), span(&spans, Client, "/c2"));
        assert_eq!((c1.parent_span_id, c2.parent_span_id), (None, None));
        assert_eq!(c1.trace_id, c2.trace_id, "still one trace");
        assert!(h_is_clean(&asm));
    }

    #[test]
    fn spans_are_held_for_the_window() {
        let s = req(
            1,
            Server,
            (100, 101),
            "127.0.0.1:8001",
            "127.0.0.1:50000",
            0,
            "/s",
        );
        let mut h = Harness::new();
        h.feed(&[s.start(0), s.finish(200, 0, 10)]);
        let end = 10 * MS;
        h.asm.flush_due(end + WINDOW - 1, &mut h.out);
        assert!(h.out.is_empty());
        h.asm.flush_due(end + WINDOW, &mut h.out);
        assert_eq!(h.out.len(), 1);

        // The events' own clock emits too, without waiting for a flush.
        let s2 = req(
            2,
            Server,
            (100, 101),
            "127.0.0.1:8001",
            "127.0.0.1:50000",
            1,
            "/s",
        );
        let s3 = req(
            3,
            Server,
            (100, 101),
            "127.0.0.1:8001",
            "127.0.0.1:50000",
            2,
            "/s",
        );
        let mut h = Harness::new();
        h.feed(&[s2.start(0), s2.finish(200, 0, 10)]);
        h.feed(&[s3.start(10 + WINDOW / MS - 1)]);
        assert!(h.out.is_empty());
        h.feed(&[s3.finish(200, 1, 10 + WINDOW / MS)]);
        assert_eq!(h.out.len(), 1);
        assert_eq!(h.out[0].end_mono_ns, end);
    }

    #[test]
    fn full_table_drops_new_spans_and_counts_them() {
        let config = Config {
            window_ns: WINDOW,
            capacity: 2,
        };
        let s = |id, seq| {
            req(
                id,
                Server,
                (100, 101),
                "127.0.0.1:8001",
                "127.0.0.1:50000",
                seq,
                "/s",
            )
        };
        let (s1, s2, s3, s4) = (s(1, 0), s(2, 1), s(3, 2), s(4, 3));
        let mut h = Harness::with(config, SEED);
        h.feed(&[s1.start(0), s2.start(1), s3.start(2), s3.finish(200, 2, 3)]);
        h.feed(&[s1.finish(200, 0, 4), s2.finish(200, 1, 5)]);
        assert_eq!(h.asm.len(), 2, "held spans count");
        h.asm.flush_due(u64::MAX, &mut h.out);
        h.feed(&[s4.start(6), s4.finish(200, 6, 7)]);
        let (spans, asm) = h.finish();
        let starts: Vec<_> = spans.iter().map(|s| s.start_mono_ns / MS).collect();
        assert_eq!(starts, [0, 1, 6]);
        assert_eq!((asm.stats().dropped_window, asm.stats().emitted), (1, 3));
    }

    #[test]
    fn a_thread_calling_its_own_server_is_not_a_loop() {
        // A process calls itself on one thread; the server's read comes first.
        let s = req(
            1,
            Server,
            (100, 101),
            "127.0.0.1:8001",
            "127.0.0.1:50001",
            0,
            "/x",
        );
        let c = req(
            2,
            Client,
            (100, 101),
            "127.0.0.1:50001",
            "127.0.0.1:8001",
            0,
            "/x",
        );
        let mut h = Harness::new();
        h.feed(&[
            s.start(1),
            c.start(1),
            s.finish(200, 1, 2),
            c.finish(200, 1, 3),
        ]);
        let (spans, asm) = h.finish();
        let (s, c) = (span(&spans, Server, "/x"), span(&spans, Client, "/x"));
        assert_eq!(
            (s.parent_span_id, c.parent_span_id),
            (None, Some(s.span_id))
        );
        assert_eq!(asm.stats().stitch_rejected, 1);
        assert!(h_is_clean(&asm));
    }

    #[test]
    fn spans_of_a_process_in_a_pod_carry_its_workload_and_pod() {
        use crate::kubernetes::{cgroup::ContainerId, Pod, Pods, Workload};
        let proc = tempfile::tempdir().unwrap();
        let dir = proc.path().join("400");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink("/usr/bin/node", dir.join("exe")).unwrap();
        let id = "c".repeat(64);
        std::fs::write(dir.join("cgroup"), format!("0::/docker/{id}\n")).unwrap();
        let pods = Pods::default();
        pods.replace(&[Pod {
            uid: "6b1f0e2a-4c3d-4e5f-9a8b-7c6d5e4f3a2b".into(),
            namespace: "web".into(),
            name: "front-0".into(),
            workloads: vec![(Workload::StatefulSet, "front".into())],
            containers: vec![(ContainerId::from_hex(id.as_bytes()).unwrap(), "app".into())],
        }]);
        let mut h = Harness::new();
        h.names = Names::new(ProcFs::new(proc.path()), 64).with_pods(pods);
        let r = req(
            1,
            Server,
            (400, 400),
            "127.0.0.1:80",
            "127.0.0.1:5000",
            0,
            "/",
        );
        h.feed(&[r.start(0), r.finish(200, 0, 1)]);
        let (spans, _) = h.finish();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(
            (span.service_name.as_str(), span.exe_name.as_str()),
            ("front", "node")
        );
        let pod = span.pod.as_ref().unwrap().values();
        assert_eq!(pod[..3], ["web", "front-0", "app"]);
    }

    #[test]
    fn names_routes_and_errors() {
        // (side, method, path, cut, status) → (name, method, route, error)
        let cases = [
            (
                Server,
                "GET",
                "/users/123",
                false,
                200,
                ("GET /users/{id}", "GET", "/users/{id}", false),
            ),
            (
                Server,
                "POST",
                "/orders",
                false,
                500,
                ("POST /orders", "POST", "/orders", true),
            ),
            (
                Server,
                "GET",
                "/x",
                false,
                404,
                ("GET /x", "GET", "/x", false),
            ),
            (
                Client,
                "GET",
                "/x",
                false,
                404,
                ("GET /x", "GET", "/x", true),
            ),
            (
                Client,
                "DELETE",
                "/x/9",
                false,
                204,
                ("DELETE /x/{id}", "DELETE", "/x/{id}", false),
            ),
            (
                Server,
                "PROPFIND",
                "/dav",
                false,
                207,
                ("HTTP /dav", "_OTHER", "/dav", false),
            ),
            (
                Client,
                "CONNECT",
                "example.com:443",
                false,
                200,
                ("CONNECT", "CONNECT", "{other}", false),
            ),
            (
                Server,
                "OPTIONS",
                "*",
                false,
                204,
                ("OPTIONS *", "OPTIONS", "*", false),
            ),
            (
                Server,
                "GET",
                "/very/lo",
                true,
                200,
                ("GET /very/{truncated}", "GET", "/very/{truncated}", false),
            ),
        ];
        for (i, (side, method, path, cut, status, want)) in cases.into_iter().enumerate() {
            let r = Req {
                method,
                path_truncated: cut,
                ..req(
                    1,
                    side,
                    (100, 101),
                    "127.0.0.1:8001",
                    "127.0.0.1:50000",
                    0,
                    path,
                )
            };
            let mut h = Harness::new();
            h.feed(&[r.start(0), r.finish(status, 0, 1)]);
            let (spans, _) = h.finish();
            let s = &spans[0];
            assert_eq!(
                (
                    s.name.as_str(),
                    s.method.as_str(),
                    s.route.as_str(),
                    s.error
                ),
                want,
                "case {i}"
            );
            assert_eq!(s.path, path, "case {i}");
        }
    }

    #[test]
    fn ids_are_seeded_non_zero_and_distinct() {
        let run = |seed| {
            let mut h = Harness::with(Config::default(), seed);
            h.feed(&chain_in_order());
            h.finish().0
        };
        let (a, b, other) = (run(SEED), run(SEED), run(SEED + 1));
        assert_eq!(a, b, "same seed, same spans");
        assert_eq!(a.len(), other.len());
        for (x, y) in a.iter().zip(&other) {
            assert_ne!(x.span_id, y.span_id);
            assert_ne!(x.trace_id, y.trace_id);
        }
        for s in &a {
            assert_ne!(s.span_id, [0; 8]);
            assert_ne!(s.trace_id, [0; 16]);
        }
        let mut ids = Ids(0);
        let drawn: std::collections::HashSet<_> = (0..10_000).map(|_| ids.span_id()).collect();
        assert_eq!(drawn.len(), 10_000);
    }
}
