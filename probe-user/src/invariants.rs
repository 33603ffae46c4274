//! The invariants of the parser (`http1`) and the pairing stage (`conn`),
//! checked on any input: what the fuzz targets (fuzz/) and the property tests
//! run. Compiled for tests and fuzzing builds only, never into the daemon. A
//! violation panics with what broke, which is how both tools report it.
//!
//! Parser, per stream split into reads at any points and captured in full or
//! in part: every call returns, outputs follow the message grammar (a head,
//! then its end; nothing after a tunnel), body sizes never exceed the bytes
//! moved, times stay within the reads that carried them, no path keeps a
//! query string, the head buffer stays bounded; captured in full, the split
//! stream reads as the same stream in one read up to the first loss of sync;
//! captured in part, as captured in full up to the first sign of the loss.
//! Tracker, per sequence of events over a few connections and
//! processes: every request started ends exactly once (finished or
//! abandoned), on the connection it started on, never later than it could;
//! no connection holds more than `max_pending` requests; the tables stay
//! within their bounds; connections idle past the timeout are expired; and
//! once every fd is closed and every process gone, nothing is left.
use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::conn::{Footprint, Observer, Tracker, TrackerConfig};
use crate::event::{ConnOpen, Data, Direction, Event, RoleHint};
use crate::exchange::{AbandonReason, Endpoint, Observation, Request, RequestId};
use crate::http1::{
    Answering, Input, Kind, Output, Parser, RequestHead, HEAD_BUFFER_KEPT, MAX_HEAD,
};

/// Pieces of real traffic that payloads are built from, so that random
/// sequences reach pairing, not only the rejection of garbage.
pub const SNIPPETS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p?token=SECRET HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
    b"hello",
    b"PUT /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"HEAD /h HTTP/1.0\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\n\r\n",
    b"POST /c HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.1 500 E\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\n",
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n",
    b"\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
];

/// Feeds `stream` to a parser for `kind` in reads that end at `cuts` (sorted
/// or not, out-of-range ones ignored), each captured up to `capture` bytes,
/// then closes it; checks every invariant on the way.
pub fn check_parser(
    kind: Option<Kind>,
    answering: Answering,
    stream: &[u8],
    cuts: &[usize],
    capture: Option<usize>,
) {
    let mut ends: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < stream.len())
        .collect();
    ends.push(stream.len());
    ends.sort_unstable();
    ends.dedup();
    let parse = |ends: &[usize], capture| parse_checked(kind, answering, stream, ends, capture);
    let split = parse(&ends, None);
    if capture.is_some() {
        same_until_loss(&split, &parse(&ends, capture));
    }
    if stream.len() <= MAX_HEAD {
        same_until_desync(&parse(&[stream.len()], None), &split);
    }
}

/// What a parser reports of `stream` read in pieces that end at `ends`,
/// checking the grammar, the progress and the buffer on the way.
fn parse_checked(
    kind: Option<Kind>,
    answering: Answering,
    stream: &[u8],
    ends: &[usize],
    capture: Option<usize>,
) -> Vec<Output> {
    let mut parser = Parser::new(kind);
    let mut grammar = Grammar::new(kind);
    let mut outputs = Vec::new();
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        let piece = &stream[start..end];
        let captured = &piece[..capture.map_or(piece.len(), |c| c.min(piece.len()))];
        let ts = i as u64 + 1;
        let mut input = Input::new(captured, piece.len() as u32, ts, i as u32);
        grammar.read(piece.len() as u64);
        // A head and its end, or a desync, per byte at most; and two more
        // for what a read that adds nothing may end.
        for _ in 0..captured.len() + 3 {
            let Some(output) = parser.next(&mut input, answering) else {
                break;
            };
            grammar.check(&output, ts);
            outputs.push(output);
        }
        assert!(
            parser.next(&mut input, answering).is_none(),
            "parser does not stop on read {i}"
        );
        check_held(&parser);
        start = end;
    }
    let closed = parser.close();
    if let Some(output) = &closed {
        grammar.check(output, ends.len() as u64);
    }
    outputs.extend(closed);
    outputs
}

/// Reads captured in part report what the same reads captured in full do
/// until the first sign of the loss (a desync or a cut request head): bytes
/// not captured count where framing does not need them. Or until the
/// captured-in-full reads lose sync: a loss may hide garbage (a chunk's
/// CRLF not copied is taken for one).
fn same_until_loss(full: &[Output], cut: &[Output]) {
    let is_loss = |o: &Output| match o {
        Output::Desync(_) => true,
        Output::Request(head) => head.cut.is_some(),
        _ => false,
    };
    let first_loss = cut.iter().position(is_loss).unwrap_or(cut.len());
    let first_desync = full
        .iter()
        .position(|o| matches!(o, Output::Desync(_)))
        .unwrap_or(full.len());
    let agreed = first_loss.min(first_desync);
    assert_eq!(
        full.get(..agreed),
        cut.get(..agreed),
        "captured in full {full:?}, in part {cut:?}"
    );
    if first_loss == cut.len() && first_desync == full.len() {
        assert_eq!(full, cut, "no loss, yet a difference");
    }
}

/// Outside a head the buffer is given back; inside it is bounded.
fn check_held(parser: &Parser) {
    let held = parser.held_bytes();
    assert!(held <= 2 * MAX_HEAD, "head buffer holds {held} bytes");
    if !parser.in_head() {
        assert!(held <= HEAD_BUFFER_KEPT, "{held} bytes kept outside a head");
    }
}

/// The same stream read in one piece and in several reports the same messages
/// until one of them loses sync; a read in pieces may lose it earlier (a
/// head shown invalid by its first bytes, before its end arrived).
fn same_until_desync(whole: &[Output], split: &[Output]) {
    let untimed = |outputs: &[Output]| -> Vec<Output> {
        let mut kept = Vec::new();
        for output in outputs {
            kept.push(untimed(output));
            if matches!(output, Output::Desync(_)) {
                break;
            }
        }
        kept
    };
    let (whole, split) = (untimed(whole), untimed(split));
    let common = whole.len().min(split.len());
    assert_eq!(
        whole[..common],
        split[..common],
        "whole {whole:?} split {split:?}"
    );
    let extra = if whole.len() > common {
        &whole[common..]
    } else {
        &split[common..]
    };
    assert!(
        matches!(extra, [] | [Output::Desync(_)]),
        "whole {whole:?} split {split:?}"
    );
}

/// `output` without the times and threads, which depend on the reads.
fn untimed(output: &Output) -> Output {
    match output {
        Output::Request(head) => Output::Request(Box::new(RequestHead {
            start_ns: 0,
            tid: 0,
            ..(**head).clone()
        })),
        Output::End {
            body_bytes,
            complete,
            ..
        } => Output::End {
            body_bytes: *body_bytes,
            end_ns: 0,
            complete: *complete,
        },
        other => other.clone(),
    }
}

/// The message grammar of one parser's outputs.
struct Grammar {
    kind: Option<Kind>,
    /// The message whose head came last and whose end has not.
    open: Option<Message>,
    /// A tunnel began: nothing more may come.
    stopped: bool,
    /// Bytes moved by the read being parsed.
    read_len: u64,
}

struct Message {
    /// A cut request head: its end will never be reported.
    cut: bool,
    tunnel: bool,
    /// Time of the read that reported the head.
    head_ts: u64,
    /// Bytes moved since that read, which included: a bound on its body.
    moved: u64,
}

impl Grammar {
    fn new(kind: Option<Kind>) -> Self {
        Grammar {
            kind,
            open: None,
            stopped: false,
            read_len: 0,
        }
    }

    /// A read of `len` bytes begins.
    fn read(&mut self, len: u64) {
        self.read_len = len;
        if let Some(m) = &mut self.open {
            m.moved += len;
        }
    }

    fn check(&mut self, output: &Output, ts: u64) {
        assert!(!self.stopped, "{output:?} after a tunnel began");
        match output {
            Output::Request(head) => {
                assert_ne!(
                    self.kind,
                    Some(Kind::Response),
                    "request on a response stream"
                );
                self.head_may_begin(output);
                assert!(head.start_ns <= ts, "request starts after its read");
                check_request(&head.request);
                self.begin(head.cut.is_some(), false, ts);
            }
            Output::Response { status, tunnel } => {
                assert_ne!(
                    self.kind,
                    Some(Kind::Request),
                    "response on a request stream"
                );
                self.head_may_begin(output);
                assert!((100..=599).contains(status), "status {status}");
                self.begin(false, *tunnel, ts);
            }
            Output::End {
                body_bytes, end_ns, ..
            } => {
                let Some(m) = self.open.take() else {
                    panic!("{output:?} without a head");
                };
                assert!(!m.cut, "{output:?} after a cut head");
                assert!(
                    *body_bytes <= m.moved,
                    "{output:?}: body larger than the {} bytes moved",
                    m.moved
                );
                assert!(
                    (m.head_ts..=ts).contains(end_ns),
                    "{output:?} outside reads {}..={ts}",
                    m.head_ts
                );
                self.stopped = m.tunnel;
            }
            Output::Desync(_) => self.open = None,
        }
    }

    fn head_may_begin(&self, output: &Output) {
        assert!(
            self.open.as_ref().is_none_or(|m| m.cut),
            "{output:?} before the previous message ended"
        );
    }

    fn begin(&mut self, cut: bool, tunnel: bool, ts: u64) {
        self.open = Some(Message {
            cut,
            tunnel,
            head_ts: ts,
            moved: self.read_len,
        });
    }
}

/// What every request must look like, whatever the bytes.
pub fn check_request(request: &Request) {
    assert!(!request.path.is_empty(), "empty path");
    assert!(
        !request.path.contains(['?', '#']),
        "path {:?} keeps a query or fragment",
        request.path
    );
    assert!(!request.method.is_empty(), "empty method");
    assert!(
        matches!(request.version, "1.0" | "1.1"),
        "version {}",
        request.version
    );
}

/// A tracker run: its limits (small, so they are reached) and its steps.
#[derive(Clone, Debug)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct Run {
    /// 1 to 4 connections.
    pub max_connections: u8,
    /// 1 to 4 requests per connection.
    pub max_pending: u8,
    pub steps: Vec<Step>,
}

/// One step of a tracker run, with small numbers that name one of a few
/// connections, processes and address pairs, so random steps collide.
#[derive(Clone, Debug)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Step {
    Open {
        conn: u8,
        tgid: u8,
        role: u8,
        addrs: u8,
    },
    Data {
        conn: u8,
        inbound: bool,
        payload: Vec<Piece>,
        /// Bytes moved beyond the payload, not captured.
        uncaptured: u16,
    },
    Close {
        conn: u8,
    },
    ProcessExit {
        tgid: u8,
    },
    /// Time passes (ms, up to a minute: past the idle timeout or not), then
    /// the tracker's periodic expiry runs.
    Expire {
        after_ms: u16,
    },
}

/// Part of a payload: one of `SNIPPETS`, so that random steps reach pairing
/// as well as rejection, or raw bytes.
#[derive(Clone, Debug)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Piece {
    Snippet(u8),
    Raw(Vec<u8>),
}

impl Piece {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Piece::Snippet(i) => SNIPPETS[usize::from(*i) % SNIPPETS.len()],
            Piece::Raw(bytes) => bytes,
        }
    }

    /// The bytes of `pieces`, one after the other.
    pub fn concat(pieces: &[Piece]) -> Vec<u8> {
        pieces.iter().flat_map(Piece::bytes).copied().collect()
    }
}

/// Conn ids and processes the steps name.
const CONN_IDS: u64 = 5;
const TGIDS: u32 = 2;

/// Runs the steps through a tracker, then closes every fd and ends every
/// process; checks every invariant after each event.
pub fn check_tracker(run: &Run) {
    let config = TrackerConfig {
        idle_timeout_ns: 10_000_000_000,
        max_connections: 1 + usize::from(run.max_connections % 4),
        max_pending: 1 + usize::from(run.max_pending % 4),
    };
    let mut tracker = Tracker::new(config.clone());
    let mut ledger = Ledger::new(config.clone());
    for step in &run.steps {
        match step {
            Step::Expire { after_ms } => {
                let idle_ns = u64::from(*after_ms) * 1_000_000;
                ledger.now += idle_ns;
                tracker.expire(ledger.now, &mut ledger);
                if idle_ns > config.idle_timeout_ns {
                    // Every connection was idle that long: none may stay
                    // live, no request outstanding.
                    assert_eq!(tracker.len(), 0, "idle connections not expired");
                    assert!(ledger.outstanding.is_empty(), "requests not expired");
                }
            }
            _ => {
                ledger.now += 1_000;
                if let Some(event) = event(step, ledger.now) {
                    tracker.handle(&event, &mut ledger);
                }
            }
        }
        ledger.check_bounds(&tracker);
    }
    for conn in 0..CONN_IDS {
        ledger.now += 1_000;
        let close = event(&Step::Close { conn: conn as u8 }, ledger.now);
        tracker.handle(&close.expect("a close is an event"), &mut ledger);
    }
    for tgid in 0..TGIDS {
        let exit = event(&Step::ProcessExit { tgid: tgid as u8 }, ledger.now);
        tracker.handle(&exit.expect("an exit is an event"), &mut ledger);
    }
    ledger.check_bounds(&tracker);
    assert_eq!(
        tracker.footprint(),
        Footprint::default(),
        "state left after every fd closed and every process exited"
    );
    assert!(
        ledger.outstanding.is_empty(),
        "requests never ended: {:?}",
        ledger.outstanding.keys()
    );
}

/// The event a step stands for; None for expiry, which is a call.
fn event(step: &Step, now: u64) -> Option<Event> {
    let conn_id = |conn: &u8| 1 + u64::from(*conn) % CONN_IDS;
    let tgid = |tgid: &u8| 1 + u32::from(*tgid) % TGIDS;
    Some(match step {
        Step::Open {
            conn,
            tgid: t,
            role,
            addrs,
        } => {
            let addr = |s: &str| s.parse::<SocketAddr>().expect("a valid literal");
            let (local, peer) = match addrs % 3 {
                0 => (addr("10.0.0.1:8080"), addr("10.0.0.2:40000")),
                1 => (addr("10.0.0.1:8080"), addr("10.0.0.3:40000")),
                // Addresses the kernel could not read.
                _ => (addr("0.0.0.0:0"), addr("0.0.0.0:0")),
            };
            Event::Open(ConnOpen {
                conn_id: conn_id(conn),
                tgid: tgid(t),
                fd: 3,
                ts_ns: now,
                role: [RoleHint::Unknown, RoleHint::Server, RoleHint::Client]
                    [usize::from(*role % 3)],
                local,
                peer,
                comm: "fuzz".into(),
            })
        }
        Step::Data {
            conn,
            inbound,
            payload,
            uncaptured,
        } => {
            let payload = Piece::concat(payload);
            Event::Data(Data {
                conn_id: conn_id(conn),
                tgid: 1,
                tid: 7,
                fd: 3,
                ts_ns: now,
                dir: if *inbound {
                    Direction::In
                } else {
                    Direction::Out
                },
                total_len: (payload.len() + usize::from(*uncaptured)) as u32,
                payload: Bytes::from(payload),
            })
        }
        Step::Close { conn } => Event::Close {
            conn_id: conn_id(conn),
            tgid: 1,
            fd: 3,
            ts_ns: now,
        },
        Step::ProcessExit { tgid: t } => Event::ProcessExit { tgid: tgid(t) },
        Step::Expire { .. } => return None,
    })
}

/// The books of a tracker run: what started and has not ended, checked as
/// each observation arrives.
struct Ledger {
    config: TrackerConfig,
    /// Time of the event being handled (events are in time order).
    now: u64,
    last_id: RequestId,
    /// Started and not yet ended: where, and since when.
    outstanding: HashMap<RequestId, (Endpoint, u64)>,
    /// Outstanding requests per connection key.
    per_conn: HashMap<u64, usize>,
}

impl Ledger {
    fn new(config: TrackerConfig) -> Self {
        Ledger {
            config,
            now: 0,
            last_id: 0,
            outstanding: HashMap::new(),
            per_conn: HashMap::new(),
        }
    }

    fn end(&mut self, id: RequestId, at: &Endpoint) -> u64 {
        let Some((started_at, start_ns)) = self.outstanding.remove(&id) else {
            panic!("request {id} ended twice or never started");
        };
        assert_eq!(&started_at, at, "request {id} ended elsewhere");
        let n = self
            .per_conn
            .get_mut(&at.conn_id)
            .expect("an outstanding request counts on its connection");
        *n -= 1;
        start_ns
    }

    fn check_bounds(&self, tracker: &Tracker) {
        let max = self.config.max_pending;
        for (conn, &n) in &self.per_conn {
            assert!(n <= max, "{n} requests outstanding on {conn} (max {max})");
        }
        let f = tracker.footprint();
        let conns = self.config.max_connections;
        assert!(f.live <= conns && f.buried <= conns, "{f:?}");
        assert!(f.most_pending <= max, "{f:?}");
        assert!(f.most_head_bytes <= 2 * MAX_HEAD, "{f:?}");
        let known = f.live + f.buried;
        assert!(
            f.sockets <= known && f.processes <= known && f.fds <= 4 * known,
            "indexes outgrew the connections: {f:?}"
        );
        assert_eq!(tracker.len(), f.live);
    }
}

impl Observer for Ledger {
    fn observe(&mut self, observation: &Observation) {
        match observation {
            Observation::Started(s) => {
                assert!(s.id > self.last_id, "request id {} reused", s.id);
                self.last_id = s.id;
                assert!(s.start_ns <= self.now, "request starts in the future");
                check_request(&s.request);
                self.outstanding.insert(s.id, (s.at.clone(), s.start_ns));
                *self.per_conn.entry(s.at.conn_id).or_default() += 1;
            }
            Observation::Finished(f) => {
                let start_ns = self.end(f.id, &f.at);
                assert_eq!(f.start_ns, start_ns, "request {} changed its start", f.id);
                assert!(
                    f.status == 101 || (200..=599).contains(&f.status),
                    "final status {}",
                    f.status
                );
                assert!(
                    (start_ns..=self.now).contains(&f.end_ns),
                    "request {} ends at {} outside {start_ns}..={}",
                    f.id,
                    f.end_ns,
                    self.now
                );
                check_request(&f.request);
            }
            Observation::Abandoned { id, at, reason } => {
                self.end(*id, at);
                if *reason == AbandonReason::QueueFull {
                    assert_eq!(*id, self.last_id, "queue full for an older request");
                }
            }
            Observation::Anomaly(_) => {}
        }
    }
}

/// The same invariants on random inputs, as ordinary unit tests: fewer and
/// shorter runs than the fuzzers', shrunk to a small case when one fails.
#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    /// Up to `n` pieces of real traffic and random bytes.
    fn pieces(n: usize) -> impl Strategy<Value = Vec<Piece>> {
        let piece = prop_oneof![
            3 => any::<u8>().prop_map(Piece::Snippet),
            1 => vec(any::<u8>(), 0..12).prop_map(Piece::Raw),
        ];
        vec(piece, 0..n)
    }

    /// The bytes of up to `n` pieces.
    fn traffic(n: usize) -> impl Strategy<Value = Vec<u8>> {
        pieces(n).prop_map(|pieces| Piece::concat(&pieces))
    }

    fn kind() -> impl Strategy<Value = Option<Kind>> {
        prop_oneof![
            Just(None),
            Just(Some(Kind::Request)),
            Just(Some(Kind::Response))
        ]
    }

    fn answering() -> impl Strategy<Value = Answering> {
        prop_oneof![
            Just(Answering::Other),
            Just(Answering::Head),
            Just(Answering::Connect)
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()).prop_map(
                |(conn, tgid, role, addrs)| Step::Open { conn, tgid, role, addrs }
            ),
            6 => (any::<u8>(), any::<bool>(), pieces(4), prop_oneof![3 => Just(0u16), 1 => any::<u16>()])
                .prop_map(|(conn, inbound, payload, uncaptured)| Step::Data {
                    conn,
                    inbound,
                    payload,
                    uncaptured,
                }),
            1 => any::<u8>().prop_map(|conn| Step::Close { conn }),
            1 => any::<u8>().prop_map(|tgid| Step::ProcessExit { tgid }),
            1 => (0u16..20_000).prop_map(|after_ms| Step::Expire { after_ms }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parser_invariants_hold_for_any_split(
            kind in kind(),
            answering in answering(),
            stream in traffic(12),
            cuts in vec(0usize..600, 0..10),
            capture in proptest::option::weighted(0.3, 1usize..80),
        ) {
            check_parser(kind, answering, &stream, &cuts, capture);
        }

        #[test]
        fn tracker_invariants_hold_for_any_events(
            max_connections in any::<u8>(),
            max_pending in any::<u8>(),
            steps in vec(step(), 0..40),
        ) {
            check_tracker(&Run { max_connections, max_pending, steps });
        }
    }
}
