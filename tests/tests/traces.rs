//! Spans over OTLP: sonde turns each observed request into a SERVER or a
//! CLIENT span, joins the spans of uninstrumented services into traces, and
//! exports them to a real OTLP receiver in the test process, over gRPC and
//! HTTP/protobuf. The tests assert on exactly what arrives on the wire.
//!
//! A span leaves sonde a stitching window (1 s) after its request ends and
//! waits up to a batch delay (1 s) more, so each test waits for the spans it
//! expects and then listens a while longer to catch any extra one.
//!
//! The test process is a process on this node like any other: sonde sees its
//! requests as CLIENT spans whenever it observes it. Tests that count the
//! spans of a trace select only the Python services with `--exe`.
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use prost::Message as _;
use sonde_tests::clients::{post_request, HttpConn};
use sonde_tests::names::{self, *};
use sonde_tests::otlp_receiver::{OtlpReceiver, ReceivedSpan, Transport};
use sonde_tests::process::{anon_rss_bytes, exe_basename, poll, report, rss_bytes};
use sonde_tests::servers::{self, Server};
use sonde_tests::sonde::Sonde;

/// Window, batch delay, and room for a loaded machine.
const SPAN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to keep listening once the expected spans are in: a span that
/// should not exist would have left within one more window and batch.
const SPAN_SETTLE: Duration = Duration::from_millis(2500);
/// Error allowed in converting the kernel's monotonic clock to wall time.
const CLOCK_SLACK: Duration = Duration::from_millis(20);

const HOP_SPAN: &str = "GET /hop";

#[derive(Clone, Copy)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// sonde exporting to `receiver` over `protocol`, with `args` after the OTLP flags.
fn start_traced(receiver: &OtlpReceiver, protocol: Protocol, args: &[String]) -> Sonde {
    start_traced_with_env(receiver, protocol, args, &[])
}

fn start_traced_with_env(
    receiver: &OtlpReceiver,
    protocol: Protocol,
    args: &[String],
    env: &[(&str, &str)],
) -> Sonde {
    let (endpoint, name) = match protocol {
        Protocol::Grpc => (receiver.grpc_endpoint(), "grpc"),
        Protocol::HttpProtobuf => (receiver.http_endpoint(), "http/protobuf"),
    };
    let mut all = vec![
        "--otlp-endpoint".to_string(),
        endpoint,
        "--otlp-protocol".to_string(),
        name.to_string(),
    ];
    all.extend_from_slice(args);
    Sonde::start_with_env(&all, env).unwrap_or_else(|e| panic!("{e:?}"))
}

/// `--port` for each server: the servers, and every client calling them
/// (this test process included).
fn ports(servers: &[&Server]) -> Vec<String> {
    servers
        .iter()
        .flat_map(|s| ["--port".to_string(), s.port().to_string()])
        .collect()
}

/// [`ports`] narrowed with `--exe` to the Python interpreter the servers run
/// in: the test process's own requests are not observed.
fn python_only(servers: &[&Server]) -> Vec<String> {
    let exe = servers[0].service_name();
    let mut args = vec!["--exe".to_string(), format!("^{}$", regex_literal(&exe))];
    args.extend(ports(servers));
    args
}

fn regex_literal(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = r"\.+*?()|[]{}^$-".contains(c).then_some('\\');
            escape.into_iter().chain([c])
        })
        .collect()
}

fn kind(span: &ReceivedSpan) -> SpanKind {
    SpanKind::try_from(span.span.kind).unwrap_or(SpanKind::Unspecified)
}

fn status_code(span: &ReceivedSpan) -> StatusCode {
    span.span
        .status
        .as_ref()
        .and_then(|s| StatusCode::try_from(s.code).ok())
        .unwrap_or(StatusCode::Unset)
}

fn pid_of(span: &ReceivedSpan) -> Option<u32> {
    span.resource_int("process.pid")
        .and_then(|pid| u32::try_from(pid).ok())
}

/// One line per span, for failure messages.
fn describe(spans: &[ReceivedSpan]) -> String {
    let lines: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                "  {:?} {:?} trace={} span={} parent={} pid={:?} service={:?} client={:?}:{:?} server={:?}:{:?} start={} end={}",
                kind(s),
                s.name(),
                s.trace_id(),
                s.span_id(),
                s.parent_span_id().unwrap_or_else(|| "-".into()),
                pid_of(s),
                s.resource_str("service.name"),
                s.str_attribute("client.address"),
                s.int_attribute("client.port"),
                s.str_attribute("server.address"),
                s.int_attribute("server.port"),
                s.span.start_time_unix_nano,
                s.span.end_time_unix_nano,
            )
        })
        .collect();
    format!("{} spans:\n{}", spans.len(), lines.join("\n"))
}

fn failure(sonde: &Sonde, receiver: &OtlpReceiver, message: &str) -> String {
    let received = describe(&receiver.spans());
    sonde.failure(
        &format!("{message}\n--- received ---\n{received}"),
        &sonde.scrape(),
    )
}

/// Waits for `count` spans matching `select`, listens [`SPAN_SETTLE`] more,
/// and asserts that exactly `count` arrived. Returns them ordered by start.
fn await_spans(
    receiver: &OtlpReceiver,
    sonde: &Sonde,
    what: &str,
    count: usize,
    select: impl Fn(&ReceivedSpan) -> bool,
) -> Vec<ReceivedSpan> {
    let matching = || -> Vec<ReceivedSpan> {
        let mut spans: Vec<ReceivedSpan> = receiver.spans().into_iter().filter(&select).collect();
        spans.sort_by_key(|s| s.span.start_time_unix_nano);
        spans
    };
    let reached = poll(SPAN_TIMEOUT, Duration::from_millis(50), || {
        (matching().len() >= count).then_some(())
    });
    if reached.is_none() {
        panic!(
            "{}",
            failure(
                sonde,
                receiver,
                &format!("fewer than {count} spans ({what}) within {SPAN_TIMEOUT:?}")
            )
        );
    }
    thread::sleep(SPAN_SETTLE);
    let spans = matching();
    assert!(
        spans.len() == count,
        "{}",
        failure(
            sonde,
            receiver,
            &format!("want exactly {count} spans ({what}), got {}", spans.len())
        )
    );
    spans
}

/// An attribute value as the tests compare them.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    Other(String),
}

fn str(value: impl Into<String>) -> Value {
    Value::Str(value.into())
}

fn attribute_map(attributes: &[KeyValue]) -> BTreeMap<String, Value> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => Value::Str(s.clone()),
                Some(any_value::Value::IntValue(i)) => Value::Int(*i),
                other => Value::Other(format!("{other:?}")),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// One exchange as its span must describe it.
struct Expected<'a> {
    method: &'a str,
    path: &'a str,
    route: &'a str,
    status: u16,
    server: SocketAddr,
    client: SocketAddr,
    /// Status Error (and `error.type`).
    error: bool,
}

impl Expected<'_> {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.route)
    }

    fn attributes(&self) -> BTreeMap<String, Value> {
        let mut attributes = BTreeMap::from([
            ("http.request.method".to_string(), str(self.method)),
            ("url.path".to_string(), str(self.path)),
            ("http.route".to_string(), str(self.route)),
            (
                "http.response.status_code".to_string(),
                Value::Int(self.status.into()),
            ),
            (
                "server.address".to_string(),
                str(self.server.ip().to_string()),
            ),
            (
                "server.port".to_string(),
                Value::Int(self.server.port().into()),
            ),
            (
                "client.address".to_string(),
                str(self.client.ip().to_string()),
            ),
            (
                "client.port".to_string(),
                Value::Int(self.client.port().into()),
            ),
            ("network.protocol.version".to_string(), str("1.1")),
        ]);
        if self.error {
            attributes.insert("error.type".to_string(), str(self.status.to_string()));
        }
        attributes
    }

    /// Asserts name, kind, attributes and status of `span`.
    fn check(&self, span: &ReceivedSpan, span_kind: SpanKind) {
        let context = describe(std::slice::from_ref(span));
        assert_eq!(span.name(), self.name(), "{context}");
        assert_eq!(kind(span), span_kind, "{context}");
        assert_eq!(
            attribute_map(&span.span.attributes),
            self.attributes(),
            "{context}"
        );
        let status = if self.error {
            StatusCode::Error
        } else {
            StatusCode::Unset
        };
        assert_eq!(status_code(span), status, "{context}");
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn host_name() -> String {
    let mut name = [0u8; 256];
    let rc = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) };
    assert_eq!(rc, 0, "gethostname");
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    String::from_utf8_lossy(&name[..end]).into_owned()
}

/// The resource of every span of process `pid`.
fn resource_of(pid: u32) -> BTreeMap<String, Value> {
    let exe = exe_basename(pid);
    BTreeMap::from([
        ("service.name".to_string(), str(exe.clone())),
        ("process.pid".to_string(), Value::Int(pid.into())),
        ("process.executable.name".to_string(), str(exe)),
        ("host.name".to_string(), str(host_name())),
    ])
}

fn unix_ns(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
}

/// The span starts no earlier than `before` and ends no later than `after`
/// (wall clock, give or take [`CLOCK_SLACK`]), and not before it starts.
fn assert_within(span: &ReceivedSpan, before: SystemTime, after: SystemTime) {
    let slack = CLOCK_SLACK.as_nanos() as u64;
    let (start, end) = (span.span.start_time_unix_nano, span.span.end_time_unix_nano);
    let (lo, hi) = (unix_ns(before) - slack, unix_ns(after) + slack);
    assert!(
        lo <= start && start <= end && end <= hi,
        "span outside [{lo}, {hi}] or ending before it starts:\n{}",
        describe(std::slice::from_ref(span))
    );
}

/// `GET path` with extra header lines, answered with `status`.
fn get_with_headers(conn: &mut HttpConn, path: &str, headers: &[(&str, &str)], status: u16) {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    conn.send(request.as_bytes()).unwrap();
    assert_eq!(conn.read_response().unwrap().status, status, "GET {path}");
}

#[test]
fn server_spans_carry_the_http_conventions() {
    let server = servers::python();
    let receiver = OtlpReceiver::start().unwrap();
    // By port only: the test process's requests are CLIENT spans too. The
    // standard headers variable becomes gRPC metadata.
    let sonde = start_traced_with_env(
        &receiver,
        Protocol::Grpc,
        &ports(&[&server]),
        &[("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")],
    );
    let me = std::process::id();

    let mut conn = HttpConn::connect(server.port()).unwrap();
    let client = conn.local_addr().unwrap();
    let plan = [
        ("/fast", "/fast", "/fast", 200),
        ("/users/42?token=abc", "/users/42", "/users/{id}", 200),
        ("/boom", "/boom", "/boom", 500),
    ];
    let before = SystemTime::now();
    for (target, _, _, status) in plan {
        assert_eq!(conn.get(target).unwrap().status, status, "GET {target}");
    }
    let after = SystemTime::now();

    let server_pid = server.pid();
    let server_spans = await_spans(&receiver, &sonde, "the server's", 3, |s| {
        kind(s) == SpanKind::Server && pid_of(s) == Some(server_pid)
    });
    let client_spans = await_spans(&receiver, &sonde, "the test process's", 3, |s| {
        kind(s) == SpanKind::Client && pid_of(s) == Some(me)
    });
    let all = receiver.spans();
    assert!(
        all.len() == 6,
        "{}",
        failure(&sonde, &receiver, "spans beyond the six expected")
    );
    for span in &all {
        assert_eq!(span.transport, Transport::Grpc);
    }

    for (i, (_, path, route, status)) in plan.into_iter().enumerate() {
        let exchange = |error| Expected {
            method: "GET",
            path,
            route,
            status,
            server: loopback(server.port()),
            client,
            error,
        };
        let (on_server, on_client) = (&server_spans[i], &client_spans[i]);
        exchange(status >= 500).check(on_server, SpanKind::Server);
        exchange(status >= 400).check(on_client, SpanKind::Client);
        assert_eq!(attribute_map(&on_server.resource), resource_of(server_pid));
        assert_eq!(attribute_map(&on_client.resource), resource_of(me));
        assert_within(on_server, before, after);
        assert_within(on_client, before, after);
        // Both ends seen: the server's span is the child of the client's.
        let context = describe(&[on_client.clone(), on_server.clone()]);
        assert_eq!(on_client.parent_span_id(), None, "{context}");
        assert_eq!(
            on_server.parent_span_id(),
            Some(on_client.span_id()),
            "{context}"
        );
        assert_eq!(on_server.trace_id(), on_client.trace_id(), "{context}");
    }
    let traces: HashSet<String> = server_spans.iter().map(ReceivedSpan::trace_id).collect();
    assert_eq!(traces.len(), 3, "one trace per request");
    for export in receiver.exports() {
        assert_eq!(export.transport, Transport::Grpc);
        assert_eq!(
            export.headers.get("x-tenant").map(String::as_str),
            Some("acme")
        );
    }
    drop(conn);
    sonde.stop();
}

#[test]
fn incoming_traceparent_is_honoured_and_a_malformed_one_ignored() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    // Upper-case hex is not a valid traceparent.
    const MALFORMED: &str = "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01";
    let server = servers::python();
    let receiver = OtlpReceiver::start().unwrap();
    let sonde = start_traced(&receiver, Protocol::Grpc, &python_only(&[&server]));

    let mut conn = HttpConn::connect(server.port()).unwrap();
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    get_with_headers(
        &mut conn,
        "/users/1",
        &[
            ("traceparent", &traceparent),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
        200,
    );
    get_with_headers(&mut conn, "/users/2", &[("traceparent", MALFORMED)], 200);

    let spans = await_spans(&receiver, &sonde, "one per request", 2, |_| true);
    let (joined, fresh) = (&spans[0], &spans[1]);
    let context = describe(&spans);
    for span in &spans {
        assert_eq!(span.name(), "GET /users/{id}", "{context}");
        assert_eq!(kind(span), SpanKind::Server, "{context}");
    }
    assert_eq!(joined.str_attribute("url.path"), Some("/users/1"));
    assert_eq!(joined.trace_id(), TRACE, "{context}");
    assert_eq!(
        joined.parent_span_id().as_deref(),
        Some(PARENT),
        "{context}"
    );
    assert_ne!(joined.span_id(), PARENT, "{context}");
    assert_eq!(joined.span.trace_state, "congo=t61rcWkgMzE", "{context}");

    assert_eq!(fresh.str_attribute("url.path"), Some("/users/2"));
    assert_eq!(fresh.parent_span_id(), None, "{context}");
    for not_it in ["0af7651916cd43dd8448eb211c80319c", TRACE, &"0".repeat(32)] {
        assert_ne!(fresh.trace_id(), not_it, "{context}");
    }
    assert_eq!(fresh.span.trace_state, "", "{context}");
    sonde.await_value(HTTP_ANOMALIES, &[("reason", "bad_traceparent")], 1.0);
    drop(conn);
    sonde.stop();
}

/// The spans of one request through A → B → C, in the order of [`ROLES`].
type ChainTrace<'a> = [&'a ReceivedSpan; 5];

/// Each role in a chain trace, and the role of its parent.
const ROLES: [(&str, Option<&str>); 5] = [
    ("A server", None),
    ("A client", Some("A server")),
    ("B server", Some("A client")),
    ("B client", Some("B server")),
    ("C server", Some("B client")),
];
const A_SERVER: usize = 0;
const A_CLIENT: usize = 1;
const B_SERVER: usize = 2;
const B_CLIENT: usize = 3;
const C_SERVER: usize = 4;

/// The one span of `pid` of `span_kind` in `spans` (panics describing them all otherwise).
fn one(spans: &[ReceivedSpan], pid: u32, span_kind: SpanKind) -> &ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| pid_of(s) == Some(pid) && kind(s) == span_kind)
        .collect();
    assert!(
        found.len() == 1,
        "want one {span_kind:?} span of pid {pid}, found {}; {}",
        found.len(),
        describe(spans)
    );
    found[0]
}

/// Asserts that `nodes` (label, span, label of the expected parent) form
/// exactly that tree, all in one trace.
fn assert_tree(nodes: &[(&str, &ReceivedSpan, Option<&str>)], context: &str) {
    let labels: HashMap<String, &str> = nodes
        .iter()
        .map(|(label, span, _)| (span.span_id(), *label))
        .collect();
    let actual: Vec<(&str, Option<String>)> = nodes
        .iter()
        .map(|(label, span, _)| {
            let parent = span.parent_span_id().map(|id| match labels.get(&id) {
                Some(parent) => parent.to_string(),
                None => format!("unknown span {id}"),
            });
            (*label, parent)
        })
        .collect();
    let expected: Vec<(&str, Option<String>)> = nodes
        .iter()
        .map(|(label, _, parent)| (*label, parent.map(str::to_string)))
        .collect();
    assert_eq!(actual, expected, "(span, parent)\n{context}");
    let trace = nodes[0].1.trace_id();
    for (label, span, _) in nodes {
        assert_eq!(span.trace_id(), trace, "trace of {label}\n{context}");
    }
}

/// Asserts that `spans` are the five spans of one request through the
/// chain `a` → `b` → `c`, rooted at A's server span, and returns them.
fn assert_chain<'a>(
    spans: &'a [ReceivedSpan],
    a: &Server,
    b: &Server,
    c: &Server,
) -> ChainTrace<'a> {
    let context = describe(spans);
    assert_eq!(spans.len(), 5, "{context}");
    let trace: ChainTrace = [
        one(spans, a.pid(), SpanKind::Server),
        one(spans, a.pid(), SpanKind::Client),
        one(spans, b.pid(), SpanKind::Server),
        one(spans, b.pid(), SpanKind::Client),
        one(spans, c.pid(), SpanKind::Server),
    ];
    for span in spans {
        assert_eq!(span.name(), HOP_SPAN, "{context}");
        assert_eq!(span.int_attribute("http.response.status_code"), Some(200));
    }
    for (caller, callee) in [(A_CLIENT, b), (B_CLIENT, c)] {
        assert_eq!(
            trace[caller].int_attribute("server.port"),
            Some(callee.port().into()),
            "{context}"
        );
    }
    let nodes: Vec<(&str, &ReceivedSpan, Option<&str>)> = ROLES
        .iter()
        .zip(trace)
        .map(|((role, parent), span)| (*role, span, *parent))
        .collect();
    assert_tree(&nodes, &context);
    // Each hop starts after the one calling it has read its request.
    let starts = [A_SERVER, B_SERVER, C_SERVER].map(|role| trace[role].span.start_time_unix_nano);
    assert!(starts.is_sorted(), "server spans out of order: {context}");
    trace
}

/// C, then B calling C, then A calling B.
fn start_chain() -> (Server, Server, Server) {
    let c = servers::chain(&[]);
    let b = servers::chain(&[c.port()]);
    let a = servers::chain(&[b.port()]);
    (a, b, c)
}

#[test]
fn chain_of_three_services_is_one_trace() {
    let (a, b, c) = start_chain();
    let receiver = OtlpReceiver::start().unwrap();
    let sonde = start_traced(&receiver, Protocol::Grpc, &python_only(&[&a, &b, &c]));

    let mut conn = HttpConn::connect(a.port()).unwrap();
    assert_eq!(conn.get("/hop").unwrap().status, 200);

    let spans = await_spans(&receiver, &sonde, "the chain's", 5, |_| true);
    assert_chain(&spans, &a, &b, &c);
    drop(conn);
    sonde.stop();
}

#[test]
fn keep_alive_chain_requests_are_separate_traces() {
    const REQUESTS: usize = 3;
    let (a, b, c) = start_chain();
    let receiver = OtlpReceiver::start().unwrap();
    let sonde = start_traced(&receiver, Protocol::Grpc, &python_only(&[&a, &b, &c]));

    let mut conn = HttpConn::connect(a.port()).unwrap();
    for _ in 0..REQUESTS {
        assert_eq!(conn.get("/hop").unwrap().status, 200);
    }

    let spans = await_spans(&receiver, &sonde, "the chain's", 5 * REQUESTS, |_| true);
    let context = describe(&spans);
    let mut traces: BTreeMap<String, Vec<ReceivedSpan>> = BTreeMap::new();
    for span in &spans {
        traces
            .entry(span.trace_id())
            .or_default()
            .push(span.clone());
    }
    assert_eq!(traces.len(), REQUESTS, "one trace per request: {context}");
    let mut chains: Vec<ChainTrace> = traces
        .values()
        .map(|trace| assert_chain(trace, &a, &b, &c))
        .collect();
    chains.sort_by_key(|t| t[A_SERVER].span.start_time_unix_nano);
    // One connection per hop, so positions pair the requests: the n-th
    // request of each hop belongs to the n-th trace.
    for (role, (name, _)) in ROLES.iter().enumerate() {
        let starts: Vec<u64> = chains
            .iter()
            .map(|t| t[role].span.start_time_unix_nano)
            .collect();
        assert!(
            starts.is_sorted(),
            "{name} spans mixed between traces: {context}"
        );
    }
    for role in [A_CLIENT, B_CLIENT] {
        let ports: HashSet<Option<i64>> = chains
            .iter()
            .map(|t| t[role].int_attribute("client.port"))
            .collect();
        assert_eq!(
            ports.len(),
            1,
            "{} calls on one connection: {context}",
            ROLES[role].0
        );
    }
    drop(conn);
    sonde.stop();
}

#[test]
fn two_calls_from_one_request_are_both_its_children() {
    let b = servers::chain(&[]);
    let c = servers::chain(&[]);
    let a = servers::chain(&[b.port(), c.port()]);
    let receiver = OtlpReceiver::start().unwrap();
    let sonde = start_traced(&receiver, Protocol::Grpc, &python_only(&[&a, &b, &c]));

    let mut conn = HttpConn::connect(a.port()).unwrap();
    assert_eq!(conn.get("/hop").unwrap().status, 200);

    let spans = await_spans(&receiver, &sonde, "the fan-out's", 5, |_| true);
    let context = describe(&spans);
    let a_clients: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| pid_of(s) == Some(a.pid()) && kind(s) == SpanKind::Client)
        .collect();
    assert_eq!(a_clients.len(), 2, "{context}");
    let to = |server: &Server| {
        let port = i64::from(server.port());
        *a_clients
            .iter()
            .find(|s| s.int_attribute("server.port") == Some(port))
            .unwrap_or_else(|| panic!("no call to port {port}: {context}"))
    };
    assert_tree(
        &[
            ("A server", one(&spans, a.pid(), SpanKind::Server), None),
            ("A to B", to(&b), Some("A server")),
            ("A to C", to(&c), Some("A server")),
            (
                "B server",
                one(&spans, b.pid(), SpanKind::Server),
                Some("A to B"),
            ),
            (
                "C server",
                one(&spans, c.pid(), SpanKind::Server),
                Some("A to C"),
            ),
        ],
        &context,
    );
    drop(conn);
    sonde.stop();
}

#[test]
fn spans_go_over_http_protobuf() {
    let server = servers::python();
    let receiver = OtlpReceiver::start().unwrap();
    // The standard headers variable reaches the collector (auth tokens, tenants).
    let sonde = start_traced_with_env(
        &receiver,
        Protocol::HttpProtobuf,
        &python_only(&[&server]),
        &[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=acme,x-scope=sonde-e2e",
        )],
    );

    let mut conn = HttpConn::connect(server.port()).unwrap();
    let client = conn.local_addr().unwrap();
    let plan = [("/users/7", "/users/{id}", 200), ("/boom", "/boom", 500)];
    for (path, _, status) in plan {
        assert_eq!(conn.get(path).unwrap().status, status, "GET {path}");
    }

    let spans = await_spans(&receiver, &sonde, "one per request", 2, |_| true);
    for export in receiver.exports() {
        assert_eq!(export.transport, Transport::Http);
        assert_eq!(
            export.headers.get("x-tenant").map(String::as_str),
            Some("acme")
        );
        assert_eq!(
            export.headers.get("x-scope").map(String::as_str),
            Some("sonde-e2e")
        );
    }
    for ((path, route, status), span) in plan.into_iter().zip(&spans) {
        Expected {
            method: "GET",
            path,
            route,
            status,
            server: loopback(server.port()),
            client,
            error: status >= 500,
        }
        .check(span, SpanKind::Server);
        assert_eq!(attribute_map(&span.resource), resource_of(server.pid()));
    }
    drop(conn);
    sonde.stop();
}

/// `sonde_spans_dropped_total`, every reason.
fn spans_dropped(sonde: &Sonde) -> f64 {
    sonde.scrape().sum(SPANS_DROPPED, &[])
}

fn spans_exported(sonde: &Sonde) -> f64 {
    sonde.scrape().value(SPANS_EXPORTED, &[]).unwrap_or(0.0)
}

/// Peaks of a process's resident memory from the first sample on.
struct MemoryPeaks {
    pid: u32,
    /// `VmRSS` and `RssAnon` at the first sample, then their peaks.
    first: (u64, u64),
    peak: Cell<(u64, u64)>,
}

impl MemoryPeaks {
    /// All of sonde's resident memory (`VmRSS`, which counts the ring
    /// buffer: its data pages are mapped twice, 16 MiB at the default 8 MiB).
    const RSS_LIMIT: u64 = 64 << 20;
    /// What sonde allocates itself (`RssAnon`) must stay under this.
    const ANON_LIMIT: u64 = 64 << 20;
    /// Growth of all its resident memory over the test.
    const GROWTH_LIMIT: u64 = 16 << 20;

    fn new(pid: u32) -> MemoryPeaks {
        let now = Self::read(pid);
        MemoryPeaks {
            pid,
            first: now,
            peak: Cell::new(now),
        }
    }

    fn read(pid: u32) -> (u64, u64) {
        (
            rss_bytes(pid).expect("VmRSS"),
            anon_rss_bytes(pid).expect("RssAnon"),
        )
    }

    fn sample(&self) {
        let (rss, anon) = Self::read(self.pid);
        let (peak_rss, peak_anon) = self.peak.get();
        self.peak.set((peak_rss.max(rss), peak_anon.max(anon)));
    }

    fn assert_bounded(&self, context: &str) {
        let (peak_rss, peak_anon) = self.peak.get();
        assert!(
            peak_rss < Self::RSS_LIMIT
                && peak_anon < Self::ANON_LIMIT
                && peak_rss - self.first.0 < Self::GROWTH_LIMIT,
            "memory not bounded: {self}\n{context}"
        );
    }
}

impl std::fmt::Display for MemoryPeaks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        let (peak_rss, peak_anon) = self.peak.get();
        write!(
            f,
            "VmRSS {:.1} MiB, peak {:.1} MiB; RssAnon {:.1} MiB, peak {:.1} MiB",
            mib(self.first.0),
            mib(peak_rss),
            mib(self.first.1),
            mib(peak_anon)
        )
    }
}

#[test]
fn collector_down_drops_are_counted_and_export_resumes() {
    const DOWN: Duration = Duration::from_secs(10);
    const REQUEST_GAP: Duration = Duration::from_millis(50);
    const AROUND: usize = 5;
    let server = servers::python();
    let mut receiver = OtlpReceiver::start().unwrap();
    let sonde = start_traced_with_env(
        &receiver,
        Protocol::Grpc,
        &python_only(&[&server]),
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")],
    );
    let memory = MemoryPeaks::new(sonde.pid());
    let named = |name: &'static str| move |s: &ReceivedSpan| s.name() == name;

    let mut conn = HttpConn::connect(server.port()).unwrap();
    for _ in 0..AROUND {
        assert_eq!(conn.get("/before").unwrap().status, 404);
    }
    await_spans(&receiver, &sonde, "before", AROUND, named("GET /before"));
    memory.sample();

    receiver.stop();
    let mut during = 0;
    let down_since = Instant::now();
    while down_since.elapsed() < DOWN {
        assert_eq!(conn.get("/during").unwrap().status, 404);
        during += 1;
        memory.sample();
        thread::sleep(REQUEST_GAP);
    }
    receiver.restart().unwrap();

    for _ in 0..AROUND {
        assert_eq!(conn.get("/after").unwrap().status, 404);
    }
    // The exporter may still be retrying a batch of the down period.
    let after = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        memory.sample();
        (receiver.spans_named("GET /after").len() >= AROUND).then_some(())
    });
    assert!(
        after.is_some(),
        "{}",
        failure(&sonde, &receiver, "spans after the restart did not arrive")
    );
    let total = (2 * AROUND + during) as f64;
    let settled = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        (spans_exported(&sonde) + spans_dropped(&sonde) == total).then_some(())
    });
    assert!(
        settled.is_some(),
        "{}",
        failure(
            &sonde,
            &receiver,
            &format!("exported + dropped never reached the {total} spans made")
        )
    );
    thread::sleep(SPAN_SETTLE);
    memory.sample();

    let count = |name| receiver.spans_named(name).len();
    let (before, during_received, after) = (
        count("GET /before"),
        count("GET /during"),
        count("GET /after"),
    );
    let scrape = sonde.scrape();
    let export_failed = scrape
        .value(SPANS_DROPPED, &[("reason", "export_failed")])
        .unwrap_or(0.0);
    let dropped = scrape.sum(SPANS_DROPPED, &[]);
    report(&format!(
        "collector down {DOWN:?}: {during} requests; received {during_received} of them, \
         {dropped} spans dropped ({export_failed} export_failed); sonde {memory}"
    ));
    let context = failure(&sonde, &receiver, "collector down");
    assert_eq!((before, after), (AROUND, AROUND), "{context}");
    assert!(
        export_failed > 0.0,
        "no export counted as failed: {context}"
    );
    assert_eq!(
        during_received as f64 + dropped,
        during as f64,
        "every span of the down period is either received or counted dropped: {context}"
    );
    assert_eq!(
        scrape.value(SPANS_EXPORTED, &[]),
        Some((before + during_received + after) as f64),
        "{context}"
    );
    memory.assert_bounded(&context);
    drop(conn);
    sonde.stop();
}

/// At the most verbose log level, with metrics exported over OTLP too, a
/// secret in a query string, a header or a body reaches none of sonde's
/// outputs: spans, OTLP metrics, /metrics, stdout and stderr.
#[test]
fn no_secret_leaves_in_spans_or_metrics() {
    const SECRET: &str = "SECRET123";
    let server = servers::python();
    let receiver = OtlpReceiver::start().unwrap();
    // By port only, so the test process's CLIENT spans are checked too.
    let mut args = ports(&[&server]);
    args.extend(
        [
            "--log-level",
            "trace",
            "--otlp-metrics",
            "--otlp-metrics-interval-secs",
            "1",
        ]
        .map(String::from),
    );
    // The collector's credential is a secret too: it goes to the collector only.
    let collector_key = format!("x-api-key={SECRET}");
    let sonde = start_traced_with_env(
        &receiver,
        Protocol::Grpc,
        &args,
        &[("OTEL_EXPORTER_OTLP_HEADERS", &collector_key)],
    );

    let mut conn = HttpConn::connect(server.port()).unwrap();
    assert_eq!(
        conn.get(&format!("/users/42?token={SECRET}"))
            .unwrap()
            .status,
        200
    );
    let bearer = format!("Bearer {SECRET}");
    let cookie = format!("s={SECRET}");
    get_with_headers(
        &mut conn,
        "/fast",
        &[
            ("Authorization", &bearer),
            ("X-Api-Key", SECRET),
            ("User-Agent", SECRET),
        ],
        200,
    );
    get_with_headers(&mut conn, "/fast", &[("Cookie", &cookie)], 200);
    let body = format!("password={SECRET}");
    conn.send(&post_request("/echo", body.as_bytes())).unwrap();
    assert_eq!(conn.read_response().unwrap().status, 200);

    // Four requests, each seen by the server and by its client (this test).
    let spans = await_spans(&receiver, &sonde, "both ends of 4 requests", 8, |_| true);
    let names: Vec<&str> = spans.iter().map(ReceivedSpan::name).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "GET /users/{id}").count(),
        2,
        "{names:?}"
    );
    // An OTLP metrics export made after all four requests were counted.
    let svc = server.service_name();
    let echo = names::server(&svc, "POST", "/echo", "200");
    receiver
        .wait_for_metric(SERVER_DURATION, SPAN_TIMEOUT, |m| {
            m.histogram_point(&echo).is_some_and(|p| p.count == 1)
        })
        .unwrap_or_else(|e| panic!("{e:?}\nsonde's output:\n{}", sonde.output()));
    // Every field of each request: names, attributes, resources, trace
    // state, data points. The collector's credential is in its headers.
    let check_export = |what: &str,
                        headers: &HashMap<String, String>,
                        wire: Vec<u8>,
                        request: &dyn std::fmt::Debug| {
        assert_eq!(
            headers.get("x-api-key").map(String::as_str),
            Some(SECRET),
            "{what}"
        );
        assert!(
            !wire.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{SECRET} in a {what}: {request:#?}"
        );
    };
    for export in receiver.exports() {
        check_export(
            "span export",
            &export.headers,
            export.request.encode_to_vec(),
            &export.request,
        );
    }
    let metrics_exports = receiver.metrics_exports();
    assert!(!metrics_exports.is_empty());
    for export in metrics_exports {
        check_export(
            "metrics export",
            &export.headers,
            export.request.encode_to_vec(),
            &export.request,
        );
    }
    let metrics = sonde.scrape();
    assert!(
        !metrics.text().contains(SECRET),
        "{SECRET} in /metrics:\n{}",
        metrics.text()
    );
    // The log level is in force: dependencies' TRACE lines are there.
    assert!(
        sonde.output().contains(" TRACE "),
        "no TRACE line in sonde's output:\n{}",
        sonde.output()
    );
    assert!(
        !sonde.output().contains(SECRET),
        "{SECRET} in sonde's output:\n{}",
        sonde.output()
    );
    drop(conn);
    sonde.stop();
}

#[test]
fn ratio_zero_keeps_only_sampled_incoming_traces() {
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let server = servers::python();
    let receiver = OtlpReceiver::start().unwrap();
    let mut args = python_only(&[&server]);
    args.extend(["--trace-sample-ratio".to_string(), "0".to_string()]);
    let sonde = start_traced(&receiver, Protocol::Grpc, &args);

    let mut conn = HttpConn::connect(server.port()).unwrap();
    for _ in 0..3 {
        assert_eq!(conn.get("/fast").unwrap().status, 200);
    }
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    get_with_headers(&mut conn, "/users/1", &[("traceparent", unsampled)], 200);
    let sampled = format!("00-{TRACE}-b7ad6b7169203331-01");
    get_with_headers(&mut conn, "/users/2", &[("traceparent", &sampled)], 200);

    let spans = await_spans(&receiver, &sonde, "the sampled request's", 1, |_| true);
    let span = &spans[0];
    let context = describe(&spans);
    assert_eq!(
        span.str_attribute("url.path"),
        Some("/users/2"),
        "{context}"
    );
    assert_eq!(span.trace_id(), TRACE, "{context}");
    assert_eq!(
        span.parent_span_id().as_deref(),
        Some("b7ad6b7169203331"),
        "{context}"
    );
    let scrape = sonde.await_value(SPANS_EXPORTED, &[], 1.0);
    assert_eq!(
        scrape.sum(SPANS_DROPPED, &[]),
        0.0,
        "{}",
        sonde.failure("sampled out is not dropped", &scrape)
    );
    drop(conn);
    sonde.stop();
}
