//! What the pairing stage (`conn::Tracker`) hands to aggregation: requests
//! that started, exchanges that finished, and anomalies to count.
//!
//! Nothing here holds a query string, a body or a header value other than
//! the W3C trace context (`traceparent`, `tracestate`): paths are cut at `?`
//! by the parser, so no later stage can leak them.
use std::net::SocketAddr;

/// Which side of the exchange the observed process is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// It received the request (metrics `http_server_*`).
    Server,
    /// It sent the request (metrics `http_client_*`).
    Client,
}

/// A request as far as aggregation needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Upper-case method token as sent (`GET`, `PROPFIND`); aggregation maps
    /// unknown methods to `_OTHER`.
    pub method: String,
    /// Path without query string or fragment; `*` for `OPTIONS *`; the path
    /// part of an absolute-form target.
    pub path: String,
    /// The request line did not fit in the captured bytes: `path` is a prefix.
    pub path_truncated: bool,
    /// `1.0` or `1.1`.
    pub version: &'static str,
    /// The caller's trace context, when the request carried a valid one.
    /// Boxed: inline it would more than double the size of every request,
    /// head and observation the pipeline moves, most of which carry none.
    pub trace: Option<Box<TraceParent>>,
}

/// A valid W3C `traceparent` header (Trace Context level 1), with the
/// `tracestate` that came with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// Never all zero.
    pub trace_id: [u8; 16],
    /// The caller's span; never all zero.
    pub parent_id: [u8; 8],
    /// `trace-flags` as sent (version 00); only the sampled bit for a later
    /// version, whose other flags level 1 does not define.
    pub flags: u8,
    /// The `tracestate` list, members joined by `,` without the optional
    /// whitespace; None when absent or invalid.
    pub tracestate: Option<String>,
}

impl TraceParent {
    /// The caller may have recorded its span (flag `sampled`).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Identity of one request, unique for the life of the daemon.
pub type RequestId = u64;

/// Who observed an exchange and on which connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub tgid: u32,
    pub conn_id: u64,
    pub side: Side,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// A request whose head has been seen (it is now in flight).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub id: RequestId,
    pub at: Endpoint,
    pub request: Request,
    /// Monotonic ns of the first request byte (read by a server, written by a client).
    pub start_ns: u64,
    /// Thread that moved the first request byte: the reader for a server,
    /// the writer for a client.
    pub tid: u32,
    /// 0-based position of the request among the request heads seen on its
    /// connection (across its fds and idle periods). Both ends of a socket
    /// number its requests alike unless bytes were lost on one of them.
    pub seq: u64,
}

/// A request and its final response, paired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub id: RequestId,
    pub at: Endpoint,
    pub request: Request,
    /// Final status (never 1xx).
    pub status: u16,
    pub start_ns: u64,
    /// As in `Started`.
    pub tid: u32,
    pub seq: u64,
    /// Monotonic ns of the last response byte (written by a server, read by a client).
    pub end_ns: u64,
    /// Request and response body sizes (decoded size for chunked bodies).
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    /// False when the connection ended before the response was complete:
    /// `end_ns` is then the last response byte seen.
    pub complete: bool,
}

/// Why a started request will never finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbandonReason {
    /// Connection closed before any response head.
    ClosedUnanswered,
    /// Connection or process idle past the expiry: nothing more will come.
    Expired,
    /// The process exited.
    ProcessExited,
    /// The byte stream lost sync (bytes not captured) and pairing was reset.
    Desync,
    /// Too many requests outstanding on one connection.
    QueueFull,
}

impl AbandonReason {
    pub fn label(self) -> &'static str {
        match self {
            AbandonReason::ClosedUnanswered => "closed_unanswered",
            AbandonReason::Expired => "expired",
            AbandonReason::ProcessExited => "process_exited",
            AbandonReason::Desync => "desync",
            AbandonReason::QueueFull => "queue_full",
        }
    }
}

/// Something the tracker could not make sense of, counted by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Anomaly {
    /// A request or response head that is not valid HTTP/1.x.
    BadHead,
    /// A head bigger than the parser keeps while waiting for its end.
    HeadTooLarge,
    /// Chunked framing that does not parse.
    BadChunk,
    /// Bytes were moved that the kernel did not capture where the parser
    /// needed them: the stream lost sync.
    Gap,
    /// A response with no request outstanding.
    UnpairedResponse,
    /// Data for a connection never announced by an open event.
    UnknownConnection,
    /// Connection table full: a new connection was not tracked.
    TooManyConnections,
    /// A request's `traceparent` is malformed (or sent twice): ignored.
    BadTraceparent,
}

impl Anomaly {
    pub fn label(self) -> &'static str {
        match self {
            Anomaly::BadHead => "bad_head",
            Anomaly::HeadTooLarge => "head_too_large",
            Anomaly::BadChunk => "bad_chunk",
            Anomaly::Gap => "capture_gap",
            Anomaly::UnpairedResponse => "unpaired_response",
            Anomaly::UnknownConnection => "unknown_connection",
            Anomaly::TooManyConnections => "too_many_connections",
            Anomaly::BadTraceparent => "bad_traceparent",
        }
    }
}

/// Output of the pairing stage, consumed in order by aggregation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    Started(Started),
    Finished(Finished),
    Abandoned {
        id: RequestId,
        at: Endpoint,
        reason: AbandonReason,
    },
    Anomaly(Anomaly),
}
