//! Stage 3a of the pipeline: an incremental HTTP/1.x parser for one direction
//! of one connection, used by `conn::Tracker`.
//!
//! It is fed each socket read or write in order and reports message
//! boundaries with timestamps: a head (request line or status code), then the
//! end of the message once its body is framed out (RFC 9112 §6.3). It keeps
//! only what framing needs (Content-Length, Transfer-Encoding) and a request's
//! trace context (`trace_context`), never another header value or a body
//! byte, and survives what the kernel hands it: heads split anywhere,
//! pipelined messages, tails the kernel did not copy, garbage.
mod trace_context;

use std::borrow::Cow;

use crate::exchange::{Anomaly, Request, STANDARD_METHODS};
use trace_context::TraceHeaders;

/// Longest head kept while waiting for its end (RFC 9112 leaves it to us;
/// 16 KiB is more than any common server accepts by default).
pub const MAX_HEAD: usize = 16 * 1024;
/// A head buffer that grew past this is freed once the head is parsed:
/// heads rarely span reads, and 65536 connections × 2 directions must not
/// each pin 16 KiB.
pub const HEAD_BUFFER_KEPT: usize = 1024;
/// Longest method token accepted (the longest registered one has 17 bytes).
/// A bound this tight makes binary garbage fail on its first bytes.
const MAX_METHOD: usize = 20;
/// Longest path kept: it is held for every outstanding request, and no
/// route needs more. Longer ones are kept as a prefix, flagged truncated.
const MAX_PATH: usize = 2048;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// What a stream carries. Unknown (`None` where it is an `Option<Kind>`)
/// until the connection's role is known: then either kind is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// What the response parser must know of the request being answered: the
/// method changes how the response is framed (RFC 9112 §6.3 rules 1 and 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Answering {
    #[default]
    Other,
    /// A response to HEAD has no body, whatever its Content-Length says.
    Head,
    /// A 2xx response to CONNECT turns the connection into a tunnel.
    Connect,
}

impl Answering {
    pub fn of(method: &str) -> Self {
        match method {
            "HEAD" => Answering::Head,
            "CONNECT" => Answering::Connect,
            _ => Answering::Other,
        }
    }
}

/// A request head as [`Parser::next`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub request: Request,
    /// Time and thread of the read or write holding its first byte.
    pub start_ns: u64,
    pub tid: u32,
    /// Why the rest of its head went unparsed, if it did: the kernel did not
    /// copy the rest of the read or write holding it (`Gap`), or the head
    /// outgrew [`MAX_HEAD`] across reads (`HeadTooLarge`). Its framing is
    /// then unknown; the parser has lost sync (no `End` follows) and waits
    /// for a read or write starting a message.
    pub cut: Option<Anomaly>,
    /// It carried a `traceparent` that is not valid: ignored, `request.trace`
    /// is None.
    pub bad_traceparent: bool,
}

/// A message boundary found by [`Parser::next`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Boxed from the moment its request line is parsed: the one large
    /// output would otherwise be moved, at its size, through every step of
    /// the parse of every head, responses included.
    Request(Box<RequestHead>),
    /// A response head. `tunnel`: the connection stops carrying HTTP after
    /// it (101 Switching Protocols, 2xx to CONNECT); the parser ignores the
    /// rest of its stream, the caller should stop the other one.
    Response { status: u16, tunnel: bool },
    /// The end of the message whose head came last. `body_bytes` is the
    /// decoded body size; `end_ns` the time of the read or write holding its
    /// last byte. `complete` is false only from [`Parser::close`], when the
    /// connection ended inside a body that declared its length.
    End {
        body_bytes: u64,
        end_ns: u64,
        complete: bool,
    },
    /// The stream lost sync (garbage, bytes not copied where framing needed
    /// them): the parser skips to a read or write that starts a message.
    Desync(Anomaly),
}

/// One socket read or write, consumed by [`Parser::next`] calls.
#[derive(Debug)]
pub struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Bytes moved after `bytes` that the kernel did not copy.
    missing: u64,
    ts_ns: u64,
    tid: u32,
}

impl<'a> Input<'a> {
    /// `payload` is the captured prefix of the `total_len` bytes moved at
    /// `ts_ns` by thread `tid`.
    pub fn new(payload: &'a [u8], total_len: u32, ts_ns: u64, tid: u32) -> Self {
        Input {
            bytes: payload,
            pos: 0,
            missing: u64::from(total_len).saturating_sub(payload.len() as u64),
            ts_ns,
            tid,
        }
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.bytes.len());
    }

    fn next_byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// Consumes up to `max` bytes without looking at them: captured ones
    /// first, then uncaptured ones, which is how a gap inside a body of known
    /// length costs nothing.
    fn take(&mut self, max: u64) -> u64 {
        let captured = max.min(self.rest().len() as u64);
        self.pos += captured as usize;
        let uncaptured = (max - captured).min(self.missing);
        self.missing -= uncaptured;
        captured + uncaptured
    }

    fn skip_line_ends(&mut self) {
        let n = self
            .rest()
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        self.pos += n;
    }

    fn discard(&mut self) {
        self.pos = self.bytes.len();
        self.missing = 0;
    }

    fn is_exhausted(&self) -> bool {
        self.pos == self.bytes.len() && self.missing == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between messages, in sync.
    Idle,
    /// Inside a head; its bytes so far are in `Parser::head` when it spans
    /// reads or writes.
    Head,
    Body(Body),
    /// Lost sync: waiting for a read or write that starts a message.
    Unsynced,
    /// Not HTTP any more (tunnel, or the connection closed).
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    /// Bytes left of a body of known length (0: the message ends now).
    Length(u64),
    Chunked(Chunked),
    /// A response body that ends when the connection closes.
    UntilClose,
}

/// Where the chunked decoder stands (RFC 9112 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    Size {
        value: u64,
        digits: u8,
    },
    /// Rest of a chunk-size line (extensions, CR) up to its LF.
    SizeLine {
        value: u64,
        len: usize,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer section after the last chunk, up to its empty line.
    Trailers {
        at_line_start: bool,
        len: usize,
    },
    TrailersLf,
}

/// What a state made of the input.
#[derive(PartialEq, Eq)]
enum Flow {
    /// The state changed: go on.
    Again,
    /// Stop: an output was put in the slot, or else the input is used up.
    /// Outputs are written in place, not returned up the calls: moving them
    /// cost store-forwarding stalls on every call.
    Done,
}

fn emit(out: &mut Option<Output>, output: Output) -> Flow {
    *out = Some(output);
    Flow::Done
}

/// Incremental parser for one direction of one connection.
#[derive(Debug)]
pub struct Parser {
    kind: Option<Kind>,
    state: State,
    /// Bytes of a head spanning reads or writes (or cut by the kernel).
    head: Vec<u8>,
    /// How the head bytes seen so far end, for finding its empty line across
    /// reads: 1 = LF, 2 = LF CR.
    eol: u8,
    /// The current message's head made the connection a tunnel.
    tunnel_next: bool,
    start_ns: u64,
    start_tid: u32,
    last_ns: u64,
    body_bytes: u64,
}

impl Parser {
    pub fn new(kind: Option<Kind>) -> Self {
        Parser {
            kind,
            state: State::Idle,
            head: Vec::new(),
            eol: 0,
            tunnel_next: false,
            start_ns: 0,
            start_tid: 0,
            last_ns: 0,
            body_bytes: 0,
        }
    }

    /// Fixes what the stream carries once the connection's role is known.
    pub fn set_kind(&mut self, kind: Kind) {
        self.kind = Some(kind);
    }

    /// Stops parsing: the connection is now a tunnel.
    pub fn tunnel(&mut self) {
        self.state = State::Stopped;
        self.release_head();
    }

    /// Decoded body bytes of the current (or last) message so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Between messages and in sync: nothing of this stream is pending.
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// Heap bytes held for a head spanning reads or writes: at most twice
    /// `MAX_HEAD` (the buffer's growth), and at most `HEAD_BUFFER_KEPT`
    /// outside a head.
    pub fn held_bytes(&self) -> usize {
        self.head.capacity()
    }

    /// A head has begun and not ended: at a close, a message that will never
    /// be whole (garbage after a method, a client that gave up mid-head).
    pub fn in_head(&self) -> bool {
        self.state == State::Head
    }

    /// The next message boundary in `input`, or None once `input` is used up.
    /// Call it until it returns None. `answering` describes the request the
    /// next response head answers (ignored for requests).
    #[inline]
    pub fn next(&mut self, input: &mut Input<'_>, answering: Answering) -> Option<Output> {
        // Inlined, so the state machine writes into the caller's own slot.
        let mut out = None;
        // Most calls end a read or write that ended a message: answered
        // here, without the state machine's call.
        if self.state != State::Idle || !input.is_exhausted() {
            self.step(input, answering, &mut out);
        }
        out
    }

    /// Runs the state machine until it puts an output in `out` or has used
    /// the input up.
    fn step(&mut self, input: &mut Input<'_>, answering: Answering, out: &mut Option<Output>) {
        loop {
            let flow = match self.state {
                State::Idle => self.idle(input, out),
                State::Head => self.head(input, answering, out),
                State::Body(body) => self.body(body, input, out),
                State::Unsynced => self.unsynced(input),
                State::Stopped => {
                    input.discard();
                    Flow::Done
                }
            };
            if flow == Flow::Done {
                return;
            }
        }
    }

    /// The connection closed: ends a message whose head was reported, with
    /// `complete` true only for a body delimited by the close itself.
    pub fn close(&mut self) -> Option<Output> {
        let complete = match self.state {
            State::Body(Body::UntilClose | Body::Length(0)) => true,
            State::Body(_) => false,
            _ => return None,
        };
        self.state = State::Stopped;
        Some(self.end_output(complete))
    }

    fn idle(&mut self, input: &mut Input<'_>, out: &mut Option<Output>) -> Flow {
        // RFC 9112 §2.2: empty lines before a request line are ignored (some
        // clients send CRLF after a POST body).
        input.skip_line_ends();
        if !input.rest().is_empty() {
            self.state = State::Head;
            self.start_ns = input.ts_ns;
            self.start_tid = input.tid;
            self.body_bytes = 0;
            self.tunnel_next = false;
            return Flow::Again;
        }
        if input.missing == 0 {
            return Flow::Done;
        }
        // The uncaptured tail starts a message nobody can see.
        emit(out, self.lose_sync(input, Anomaly::Gap))
    }

    fn unsynced(&mut self, input: &mut Input<'_>) -> Flow {
        if input.pos == 0 && classify_start(input.rest(), self.kind) == Start::Yes {
            self.state = State::Idle;
            return Flow::Again;
        }
        input.discard();
        Flow::Done
    }

    fn head(
        &mut self,
        input: &mut Input<'_>,
        answering: Answering,
        out: &mut Option<Output>,
    ) -> Flow {
        if !input.is_exhausted() {
            self.last_ns = input.ts_ns;
        }
        let rest = input.rest();
        if self.head.is_empty() {
            // The common case, a head within one read or write: found and
            // parsed in one pass over its lines.
            if let Some((n, parsed)) = scan_head(rest, self.kind) {
                input.advance(n);
                self.release_head();
                return self.begin_head(input, parsed, answering, out);
            }
        }
        if let Some(n) = find_head_end(rest, &mut self.eol) {
            input.advance(n);
            self.eol = 0;
            if self.head.len() + n > MAX_HEAD {
                return self.cut_head(input, Anomaly::HeadTooLarge, out);
            }
            self.head.extend_from_slice(&rest[..n]);
            let parsed = parse_head(&self.head, self.kind);
            self.release_head();
            return self.begin_head(input, parsed, answering, out);
        }
        if self.head.len() + rest.len() > MAX_HEAD {
            return self.cut_head(input, Anomaly::HeadTooLarge, out);
        }
        self.head.extend_from_slice(rest);
        input.advance(rest.len());
        if classify_start(&self.head, self.kind) == Start::No {
            return emit(out, self.lose_sync(input, Anomaly::BadHead));
        }
        if input.missing == 0 {
            return Flow::Done;
        }
        self.cut_head(input, Anomaly::Gap, out)
    }

    /// The rest of the head is out of reach (`why`: the kernel did not copy
    /// it, or it is too large to hold).
    fn cut_head(&mut self, input: &mut Input<'_>, why: Anomaly, out: &mut Option<Output>) -> Flow {
        input.discard();
        emit(out, self.give_up_head(why))
    }

    /// The other direction answered while this stream is inside a request
    /// head: a server refusing a head too large for it (431, 414, 400)
    /// before reading all of it. The head will never be whole, so it is
    /// given up, as `BadHead`; its request is reported, cut, so that the
    /// answer pairs with it. None when not inside a head.
    pub fn answered_mid_head(&mut self) -> Option<Output> {
        (self.state == State::Head).then(|| self.give_up_head(Anomaly::BadHead))
    }

    /// Ends a head whose rest will not be parsed, for `why`, and waits for a
    /// read or write that starts a message. A request line held up to its
    /// path still says what was asked: that request is reported, cut.
    /// Otherwise the stream has lost sync.
    fn give_up_head(&mut self, why: Anomaly) -> Output {
        let cut = match self.kind {
            Some(Kind::Response) => Err(why),
            // The line not held up to its path is lost for `why`, unless it
            // is invalid.
            _ => cut_request(&self.head).map_err(|lost| match lost {
                Anomaly::Gap => why,
                other => other,
            }),
        };
        let output = match cut {
            Ok(parsed) => self.request_head(parsed, Some(why)),
            Err(lost) => Output::Desync(lost),
        };
        self.drop_head();
        output
    }

    /// Reports a head found whole, or loses sync if it is not valid.
    fn begin_head(
        &mut self,
        input: &mut Input<'_>,
        parsed: ParsedHead,
        answering: Answering,
        out: &mut Option<Output>,
    ) -> Flow {
        match parsed.and_then(|(start, framing)| self.begin(start, framing, answering)) {
            Ok(output) => emit(out, output),
            Err(why) => emit(out, self.lose_sync(input, why)),
        }
    }

    fn request_head(&self, mut head: Box<RequestHead>, cut: Option<Anomaly>) -> Output {
        head.start_ns = self.start_ns;
        head.tid = self.start_tid;
        head.cut = cut;
        Output::Request(head)
    }

    /// Sets up the body of a parsed head and reports the head.
    fn begin(
        &mut self,
        start: StartLine,
        framing: Framing,
        answering: Answering,
    ) -> Result<Output, Anomaly> {
        let (body, output) = match start {
            StartLine::Request(parsed) => {
                let body = match framing.transfer_encoding {
                    Some(Coding::Chunked) => Body::Chunked(Chunked::Size {
                        value: 0,
                        digits: 0,
                    }),
                    // RFC 9112 §6.3 rule 4: the server answers 400 and closes.
                    Some(Coding::Other) => return Err(Anomaly::BadHead),
                    None => Body::Length(framing.content_length.unwrap_or(0)),
                };
                (body, self.request_head(parsed, None))
            }
            StartLine::Response(status) => {
                let tunnel = status == 101
                    || (answering == Answering::Connect && (200..300).contains(&status));
                let bodiless = tunnel
                    || status < 200
                    || status == 204
                    || status == 304
                    || answering == Answering::Head;
                let body = match (bodiless, framing.transfer_encoding, framing.content_length) {
                    (true, _, _) => Body::Length(0),
                    (false, Some(Coding::Chunked), _) => Body::Chunked(Chunked::Size {
                        value: 0,
                        digits: 0,
                    }),
                    (false, Some(Coding::Other), _) | (false, None, None) => Body::UntilClose,
                    (false, None, Some(n)) => Body::Length(n),
                };
                self.tunnel_next = tunnel;
                (body, Output::Response { status, tunnel })
            }
        };
        self.state = State::Body(body);
        Ok(output)
    }

    fn body(&mut self, body: Body, input: &mut Input<'_>, out: &mut Option<Output>) -> Flow {
        if body == Body::Length(0) {
            return emit(out, self.end());
        }
        if !input.is_exhausted() {
            self.last_ns = input.ts_ns;
        }
        match body {
            Body::Length(left) => {
                let n = input.take(left);
                self.body_bytes += n;
                self.state = State::Body(Body::Length(left - n));
                if n == left {
                    Flow::Again
                } else {
                    Flow::Done
                }
            }
            Body::UntilClose => {
                self.body_bytes += input.take(u64::MAX);
                Flow::Done
            }
            Body::Chunked(chunked) => self.chunked(chunked, input, out),
        }
    }

    fn chunked(
        &mut self,
        mut at: Chunked,
        input: &mut Input<'_>,
        out: &mut Option<Output>,
    ) -> Flow {
        loop {
            if let Chunked::Data(left) = at {
                let n = input.take(left);
                self.body_bytes += n;
                if n < left {
                    self.state = State::Body(Body::Chunked(Chunked::Data(left - n)));
                    return Flow::Done;
                }
                at = Chunked::DataCr;
                continue;
            }
            let Some(b) = input.next_byte() else {
                if input.missing == 0 {
                    self.state = State::Body(Body::Chunked(at));
                    return Flow::Done;
                }
                // Uncaptured bytes can only stand for bytes whose value is
                // known: the CRLF closing a chunk's data.
                at = match at {
                    Chunked::DataCr => Chunked::DataLf,
                    Chunked::DataLf => Chunked::Size {
                        value: 0,
                        digits: 0,
                    },
                    _ => return emit(out, self.lose_sync(input, Anomaly::Gap)),
                };
                input.take(1);
                continue;
            };
            match at.step(b) {
                Ok(Some(next)) => at = next,
                Ok(None) => return emit(out, self.end()),
                Err(why) => return emit(out, self.lose_sync(input, why)),
            }
        }
    }

    fn end(&mut self) -> Output {
        self.state = if self.tunnel_next {
            State::Stopped
        } else {
            State::Idle
        };
        self.end_output(true)
    }

    fn end_output(&self, complete: bool) -> Output {
        Output::End {
            body_bytes: self.body_bytes,
            end_ns: self.last_ns,
            complete,
        }
    }

    fn lose_sync(&mut self, input: &mut Input<'_>, why: Anomaly) -> Output {
        self.unsync(input);
        Output::Desync(why)
    }

    fn unsync(&mut self, input: &mut Input<'_>) {
        input.discard();
        self.drop_head();
    }

    fn drop_head(&mut self) {
        self.state = State::Unsynced;
        self.eol = 0;
        self.release_head();
    }

    fn release_head(&mut self) {
        if self.head.capacity() > HEAD_BUFFER_KEPT {
            self.head = Vec::new();
        } else {
            self.head.clear();
        }
    }
}

impl Chunked {
    /// Next state after byte `b`; None when the message ends.
    fn step(self, b: u8) -> Result<Option<Chunked>, Anomaly> {
        let next = match (self, b) {
            (Chunked::Size { value, digits }, _) if b.is_ascii_hexdigit() => {
                // 15 hex digits: 2^60 bytes, far beyond any real chunk.
                if digits == 15 {
                    return Err(Anomaly::BadChunk);
                }
                let d = (b as char).to_digit(16).map_or(0, u64::from);
                Chunked::Size {
                    value: value << 4 | d,
                    digits: digits + 1,
                }
            }
            (Chunked::Size { digits: 0, .. }, _) => return Err(Anomaly::BadChunk),
            (Chunked::Size { value, .. }, b'\n') => return Ok(Some(Chunked::after_size(value))),
            (Chunked::Size { value, .. }, b';' | b' ' | b'\t' | b'\r') => {
                Chunked::SizeLine { value, len: 1 }
            }
            (Chunked::Size { .. }, _) => return Err(Anomaly::BadChunk),
            (Chunked::SizeLine { value, .. }, b'\n') => Chunked::after_size(value),
            (Chunked::SizeLine { len, .. }, _) if len >= MAX_CHUNK_LINE => {
                return Err(Anomaly::BadChunk)
            }
            (Chunked::SizeLine { value, len }, _) => Chunked::SizeLine {
                value,
                len: len + 1,
            },
            (Chunked::DataCr, b'\r') => Chunked::DataLf,
            (Chunked::DataCr | Chunked::DataLf, b'\n') => Chunked::Size {
                value: 0,
                digits: 0,
            },
            (Chunked::DataCr | Chunked::DataLf, _) => return Err(Anomaly::BadChunk),
            (Chunked::Trailers { len, .. }, _) if len >= MAX_HEAD => {
                return Err(Anomaly::HeadTooLarge)
            }
            (
                Chunked::Trailers {
                    at_line_start: true,
                    ..
                },
                b'\n',
            )
            | (Chunked::TrailersLf, b'\n') => return Ok(None),
            (
                Chunked::Trailers {
                    at_line_start: true,
                    ..
                },
                b'\r',
            ) => Chunked::TrailersLf,
            (Chunked::Trailers { len, .. }, b'\n') => Chunked::Trailers {
                at_line_start: true,
                len: len + 1,
            },
            (Chunked::Trailers { len, .. }, _) => Chunked::Trailers {
                at_line_start: false,
                len: len + 1,
            },
            (Chunked::TrailersLf, _) => return Err(Anomaly::BadChunk),
            // Data is consumed in bulk by `Parser::chunked`, not byte by byte.
            (Chunked::Data(_), _) => self,
        };
        Ok(Some(next))
    }

    fn after_size(value: u64) -> Chunked {
        if value == 0 {
            Chunked::Trailers {
                at_line_start: true,
                len: 0,
            }
        } else {
            Chunked::Data(value)
        }
    }
}

/// Finds the end of a head (the LF of its empty line) in `bytes`; `eol`
/// carries how earlier bytes ended across calls: 0 inside a line, 1 after
/// LF, 2 after LF CR. Jumps from LF to LF. For heads spanning reads; one
/// within a read is found by `scan_head`.
fn find_head_end(bytes: &[u8], eol: &mut u8) -> Option<usize> {
    let mut i = 0;
    loop {
        if *eol == 0 {
            i += find_lf(&bytes[i..])? + 1;
            *eol = 1;
        }
        match (bytes.get(i)?, *eol) {
            (b'\n', _) => return Some(i + 1),
            (b'\r', 1) => *eol = 2,
            _ => *eol = 0,
        }
        i += 1;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    Yes,
    /// Too few bytes to tell.
    Maybe,
    No,
}

/// Whether `bytes` begin a message of `kind` (either kind when None): a
/// method token and a space then a target byte, or `HTTP/1.`.
fn classify_start(bytes: &[u8], kind: Option<Kind>) -> Start {
    let as_response = if kind == Some(Kind::Request) {
        Start::No
    } else {
        response_start(bytes)
    };
    let as_request = if kind == Some(Kind::Response) {
        Start::No
    } else {
        request_start(bytes)
    };
    match (as_request, as_response) {
        (Start::Yes, _) | (_, Start::Yes) => Start::Yes,
        (Start::Maybe, _) | (_, Start::Maybe) => Start::Maybe,
        _ => Start::No,
    }
}

fn response_start(bytes: &[u8]) -> Start {
    const PREFIX: &[u8] = b"HTTP/1.";
    let n = bytes.len().min(PREFIX.len());
    if bytes[..n] != PREFIX[..n] {
        Start::No
    } else if n == PREFIX.len() {
        Start::Yes
    } else {
        Start::Maybe
    }
}

fn request_start(bytes: &[u8]) -> Start {
    for (i, &b) in bytes.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b' ' if i > 0 => {
                return match bytes.get(i + 1) {
                    None => Start::Maybe,
                    Some(&t) if is_target_byte(t) => Start::Yes,
                    Some(_) => Start::No,
                }
            }
            _ if i < MAX_METHOD && is_method_byte(b, i) => {}
            _ => return Start::No,
        }
    }
    Start::Maybe
}

/// Methods are upper-case tokens in practice (RFC 9110 §9.1 registers only
/// such); accepting only those makes garbage and false resyncs rare.
fn is_method_byte(b: u8, at: usize) -> bool {
    b.is_ascii_uppercase() || (at > 0 && (b == b'-' || b == b'_'))
}

fn is_method(m: &[u8]) -> bool {
    (1..=MAX_METHOD).contains(&m.len()) && m.iter().enumerate().all(|(i, &b)| is_method_byte(b, i))
}

/// Visible bytes; raw UTF-8 (sent by sloppy clients) is kept, lossily.
fn is_target_byte(b: u8) -> bool {
    b > b' ' && b != 0x7f
}

/// `tchar` (RFC 9110 §5.6.2) by byte: every field name is checked.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    let symbols = b"!#$%&'*+-.^_`|~";
    while i < symbols.len() {
        table[symbols[i] as usize] = true;
        i += 1;
    }
    table
};

/// Length of the token `bytes` start with. Four bytes a step while they
/// last: half the instructions of a byte loop on a field name.
fn token_len(bytes: &[u8]) -> usize {
    let tchar = |b: u8| TCHAR[usize::from(b)];
    let mut at = 0;
    while let Some(&[a, b, c, d]) = bytes.get(at..at + 4) {
        if !(tchar(a) & tchar(b) & tchar(c) & tchar(d)) {
            break;
        }
        at += 4;
    }
    while at < bytes.len() && tchar(bytes[at]) {
        at += 1;
    }
    at
}

enum StartLine {
    /// With its trace context once the head is whole; where and when it was
    /// seen are set as it is reported.
    Request(Box<RequestHead>),
    Response(u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    /// The last transfer coding is chunked.
    Chunked,
    Other,
}

#[derive(Clone, Copy, Default)]
struct Framing {
    content_length: Option<u64>,
    transfer_encoding: Option<Coding>,
}

/// Splits off the first line (without its CR LF); None as rest when `bytes`
/// holds no LF.
fn split_line(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    match find_lf(bytes) {
        Some(i) => (strip_cr(&bytes[..i]), Some(&bytes[i + 1..])),
        None => (bytes, None),
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Index of the first LF in `bytes`.
fn find_lf(bytes: &[u8]) -> Option<usize> {
    find_any([b'\n'], bytes)
}

/// Index of the first of `needles` in `bytes`, a word at a time. Head lines
/// and request targets are short: memchr's vector setup costs more than
/// their scan.
fn find_any<const N: usize>(needles: [u8; N], bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut rest = bytes;
    let mut at = 0;
    while let Some((word, tail)) = rest.split_first_chunk::<8>() {
        let w = u64::from_le_bytes(*word);
        // A zero byte of `w ^ needle` is that needle. The lowest flag is
        // exact (a borrow only ever flags bytes above a zero byte).
        let hits = needles.iter().fold(0, |hits, &needle| {
            let x = w ^ (ONES * u64::from(needle));
            hits | (x.wrapping_sub(ONES) & !x & HIGHS)
        });
        if hits != 0 {
            return Some(at + hits.trailing_zeros() as usize / 8);
        }
        at += 8;
        rest = tail;
    }
    rest.iter()
        .position(|b| needles.contains(b))
        .map(|i| at + i)
}

/// Length of the empty line `bytes` begin with (LF or CR LF), if they do.
fn empty_line(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [b'\n', ..] => Some(1),
        [b'\r', b'\n', ..] => Some(2),
        _ => None,
    }
}

type ParsedHead = Result<(StartLine, Framing), Anomaly>;

/// Parses a whole head, which ends with its empty line.
fn parse_head(head: &[u8], kind: Option<Kind>) -> ParsedHead {
    // The first empty line is the last line: the scan ends there.
    scan_head(head, kind).map_or(Err(Anomaly::BadHead), |(_, parsed)| parsed)
}

/// Finds the end of the head `bytes` begin with (the LF of its first empty
/// line but the first line, as `find_head_end` from a head's start) and
/// parses the head in the same pass: its length and what it holds. None
/// when the bytes hold no end.
fn scan_head(bytes: &[u8], kind: Option<Kind>) -> Option<(usize, ParsedHead)> {
    let mut head = HeadLines::new(kind);
    let mut parsed = Ok(());
    let mut at = 0;
    loop {
        let rest = &bytes[at..];
        if at > 0 {
            if let Some(n) = empty_line(rest) {
                return Some((at + n, parsed.and_then(|()| head.finish())));
            }
        }
        at += match parsed {
            Ok(()) => {
                let (n, line) = head.line(rest)?;
                parsed = line;
                n
            }
            // After an error only the end is looked for.
            Err(_) => find_lf(rest)? + 1,
        };
    }
}

/// A head, fed line by line (without CR LF) up to its empty line.
struct HeadLines<'a> {
    kind: Option<Kind>,
    start: Option<StartLine>,
    framing: Framing,
    trace: TraceHeaders<'a>,
}

impl<'a> HeadLines<'a> {
    fn new(kind: Option<Kind>) -> Self {
        HeadLines {
            kind,
            start: None,
            framing: Framing::default(),
            trace: TraceHeaders::default(),
        }
    }

    /// Parses the line `bytes` begin with: the length of the line with its
    /// LF, and whether it is valid. None when it has no LF.
    fn line(&mut self, bytes: &'a [u8]) -> Option<(usize, Result<(), Anomaly>)> {
        let Some(start) = &self.start else {
            let lf = find_lf(bytes)?;
            let parsed =
                start_line(strip_cr(&bytes[..lf]), self.kind).map(|start| self.start = Some(start));
            return Some((lf + 1, parsed));
        };
        let (len, line) = field_line(bytes)?;
        let parsed = match line {
            Some(FieldLine::Fold) => {
                self.trace.fold();
                Ok(())
            }
            Some(FieldLine::Field(field, value)) => {
                let framing = self.framing.read(field, value);
                // Only a request's trace context is of use: a response's is
                // not even read.
                if framing.is_ok() && matches!(start, StartLine::Request(_)) {
                    self.trace.read(field, value);
                }
                framing
            }
            None => Err(Anomaly::BadHead),
        };
        Some((len, parsed))
    }

    /// What the head holds, once its empty line was reached. By reference:
    /// moving the whole of `self` costs a memcpy call per head.
    fn finish(&mut self) -> ParsedHead {
        let mut start = self.start.take().ok_or(Anomaly::BadHead)?;
        if let StartLine::Request(head) = &mut start {
            head.bad_traceparent = self.trace.attach(&mut head.request);
        }
        Ok((start, self.framing))
    }
}

/// A request or status line, as `kind` allows.
fn start_line(line: &[u8], kind: Option<Kind>) -> Result<StartLine, Anomaly> {
    let is_response = line.starts_with(b"HTTP/");
    match (is_response, kind) {
        (true, Some(Kind::Request)) | (false, Some(Kind::Response)) => Err(Anomaly::BadHead),
        (true, _) => Ok(StartLine::Response(
            status_line(line).ok_or(Anomaly::BadHead)?,
        )),
        (false, _) => {
            // Borrowed where it was made: moving it out of its Option stalls.
            let head = request_line(line, true)
                .as_ref()
                .and_then(RequestLine::head);
            Ok(StartLine::Request(head.ok_or(Anomaly::BadHead)?))
        }
    }
}

/// `HTTP/1.x SP 3DIGIT [SP reason]`; the status if valid.
fn status_line(line: &[u8]) -> Option<u16> {
    http_version(line.get(..8)?)?;
    let status = line.get(9..12)?;
    if line[8] != b' '
        || !status.iter().all(u8::is_ascii_digit)
        || !matches!(line.get(12), None | Some(b' '))
    {
        return None;
    }
    let status = status
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    (100..=599).contains(&status).then_some(status)
}

fn http_version(v: &[u8]) -> Option<&'static str> {
    match v {
        b"HTTP/1.1" => Some("1.1"),
        b"HTTP/1.0" => Some("1.0"),
        _ => None,
    }
}

/// The fields whose values the parser reads; any other is only checked
/// for shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    ContentLength,
    TransferEncoding,
    Traceparent,
    Tracestate,
}

impl Field {
    const NAMES: [(&'static [u8], Field); 4] = [
        (b"tracestate", Field::Tracestate),
        (b"traceparent", Field::Traceparent),
        (b"content-length", Field::ContentLength),
        (b"transfer-encoding", Field::TransferEncoding),
    ];

    /// The field `name` (a token) is. At most one comparison per field
    /// line: the lengths of these names differ.
    fn of(name: &[u8]) -> Option<Field> {
        let (known, field) = match name.len() {
            10 => Self::NAMES[0],
            11 => Self::NAMES[1],
            14 => Self::NAMES[2],
            17 => Self::NAMES[3],
            _ => return None,
        };
        token_eq_lower(name, known).then_some(field)
    }
}

/// Whether `token` is `lower` (lower-case letters and `-`) but for case.
/// Setting bit 0x20 lower-cases a letter and makes no other tchar a letter
/// or `-`, so one OR per byte is exact; without an early exit the loop
/// vectorizes.
fn token_eq_lower(token: &[u8], lower: &[u8]) -> bool {
    token.len() == lower.len()
        && token
            .iter()
            .zip(lower)
            .fold(0, |diff, (&t, &l)| diff | ((t | 0x20) ^ l))
            == 0
}

enum FieldLine<'a> {
    /// An obs-fold line (RFC 9112 §5.2): more of the previous field's value.
    Fold,
    /// A field line: which one, if read, and its value (untrimmed).
    Field(Option<Field>, &'a [u8]),
}

/// The field line `bytes` begin with (not an empty line): the length of the
/// line with its LF, and what it is (None when malformed). None when it has
/// no LF.
fn field_line(bytes: &[u8]) -> Option<(usize, Option<FieldLine<'_>>)> {
    if matches!(bytes.first(), Some(b' ' | b'\t')) {
        return Some((find_lf(bytes)? + 1, Some(FieldLine::Fold)));
    }
    // The name is checked in the pass that finds the colon (not a tchar),
    // and the LF is looked for after it.
    let colon = token_len(bytes);
    if colon == 0 || bytes.get(colon) != Some(&b':') {
        return Some((colon + find_lf(&bytes[colon..])? + 1, None));
    }
    let value_at = colon + 1;
    let lf = value_at + find_lf(&bytes[value_at..])?;
    let field = Field::of(&bytes[..colon]);
    Some((
        lf + 1,
        Some(FieldLine::Field(field, strip_cr(&bytes[value_at..lf]))),
    ))
}

impl Framing {
    /// Reads a framing field; other fields are left alone, and so are
    /// obs-fold continuations (never seen on framing fields in practice).
    fn read(&mut self, field: Option<Field>, value: &[u8]) -> Result<(), Anomaly> {
        match field {
            Some(Field::ContentLength) => {
                // RFC 9110 §8.6: a list of identical values is one value;
                // anything else is unrecoverable framing.
                for item in value.split(|&b| b == b',') {
                    let n = decimal(item.trim_ascii()).ok_or(Anomaly::BadHead)?;
                    if self.content_length.is_some_and(|seen| seen != n) {
                        return Err(Anomaly::BadHead);
                    }
                    self.content_length = Some(n);
                }
            }
            Some(Field::TransferEncoding) => {
                let last = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                self.transfer_encoding = Some(if last.eq_ignore_ascii_case(b"chunked") {
                    Coding::Chunked
                } else {
                    Coding::Other
                });
            }
            _ => {}
        }
        Ok(())
    }
}

fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

struct RequestLine<'a> {
    method: &'a [u8],
    target: &'a [u8],
    /// The space after the target was seen.
    target_complete: bool,
    /// None while a cut line has not shown its whole version.
    version: Option<&'static str>,
}

impl RequestLine<'_> {
    /// The head of the request it describes, boxed as reported (its time,
    /// thread and cut are set then); None when a cut target stops before its
    /// path. Built in its box field by field: a `Request` made first and
    /// moved in costs a store-forwarding stall.
    fn head(&self) -> Option<Box<RequestHead>> {
        let (path, cut) = path_of(self.target, self.target_complete)?;
        let method = method_text(self.method);
        let path_text = lossy_string(&path[..path.len().min(MAX_PATH)]);
        Some(Box::new(RequestHead {
            request: Request {
                method,
                path: path_text,
                path_truncated: cut || path.len() > MAX_PATH,
                // A cut line without its version: HTTP/1.1 is what is spoken.
                version: self.version.unwrap_or("1.1"),
                trace: None,
            },
            start_ns: 0,
            tid: 0,
            cut: None,
            bad_traceparent: false,
        }))
    }
}

/// A method token as text: static for the standard methods.
fn method_text(method: &[u8]) -> Cow<'static, str> {
    match STANDARD_METHODS.iter().find(|m| m.as_bytes() == method) {
        Some(standard) => Cow::Borrowed(standard),
        None => Cow::Owned(lossy_string(method)),
    }
}

/// `bytes` as text, invalid UTF-8 (raw bytes sloppy clients send) replaced.
/// Checks the common case, ASCII, a word at a time.
fn lossy_string(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// `method SP target SP HTTP/1.x`. With `complete` false the line is a
/// prefix (cut by the kernel) and may stop anywhere after the method.
fn request_line(line: &[u8], complete: bool) -> Option<RequestLine<'_>> {
    // A method is short.
    let sp = line.iter().take(MAX_METHOD + 1).position(|&b| b == b' ')?;
    let (method, rest) = (&line[..sp], &line[sp + 1..]);
    if !is_method(method) {
        return None;
    }
    let (target, after_target) = match find_any([b' '], rest) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None if complete => return None,
        None => (rest, None),
    };
    if !target.iter().all(|&b| is_target_byte(b)) || (target.is_empty() && after_target.is_some()) {
        return None;
    }
    let version = match after_target {
        None => None,
        Some(v) => match http_version(v) {
            Some(version) => Some(version),
            None if !complete && (b"HTTP/1.1".starts_with(v) || b"HTTP/1.0".starts_with(v)) => None,
            None => return None,
        },
    };
    Some(RequestLine {
        method,
        target,
        target_complete: after_target.is_some(),
        version,
    })
}

/// A request from a head the kernel cut short: usable when its request line
/// reaches the path. Errors: `BadHead` for a whole but invalid request line,
/// `Gap` when too little was captured.
fn cut_request(head: &[u8]) -> Result<Box<RequestHead>, Anomaly> {
    let (line, rest) = split_line(head);
    let complete = rest.is_some();
    let line = if complete { line } else { strip_cr(line) };
    let mut head = match request_line(line, complete).map(|l| l.head()) {
        Some(Some(head)) => head,
        None if complete => return Err(Anomaly::BadHead),
        _ => return Err(Anomaly::Gap),
    };
    // Field lines captured whole still tell the trace context (a second
    // `traceparent` in the lost part goes unseen); a malformed one ends what
    // can be trusted.
    let mut trace = TraceHeaders::default();
    let mut rest = rest.unwrap_or_default();
    while empty_line(rest).is_none() {
        match field_line(rest) {
            Some((len, Some(line))) => {
                match line {
                    FieldLine::Fold => trace.fold(),
                    FieldLine::Field(field, value) => trace.read(field, value),
                }
                rest = &rest[len..];
            }
            _ => break,
        }
    }
    head.bad_traceparent = trace.attach(&mut head.request);
    Ok(head)
}

/// The path of a request target (RFC 9112 §3.2) without query or fragment,
/// and whether it is cut short. None when a cut target stops before its path.
fn path_of(target: &[u8], complete: bool) -> Option<(&[u8], bool)> {
    let path = match target.first() {
        Some(b'/' | b'*') => target,
        _ => match after_authority(target, complete) {
            Some(path) => path,
            // authority-form (CONNECT host:port) is all there is.
            None if complete => target,
            None => return None,
        },
    };
    let end = find_any([b'?', b'#'], path);
    let truncated = end.is_none() && !complete;
    let path = &path[..end.unwrap_or(path.len())];
    Some((if path.is_empty() { b"/" } else { path }, truncated))
}

/// The part of an absolute-form target after `scheme://authority`.
fn after_authority(target: &[u8], complete: bool) -> Option<&[u8]> {
    let sep = target.windows(3).position(|w| w == b"://")?;
    let scheme = &target[..sep];
    let valid = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !valid {
        return None;
    }
    let rest = &target[sep + 3..];
    match rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')) {
        Some(i) => Some(&rest[i..]),
        None if complete => Some(&[]),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One read or write: (payload, total_len, ts_ns). The thread that
    /// moved it is numbered as its time, so that `render` can check that a
    /// request's thread is its first byte's.
    type Piece<'a> = (&'a [u8], u32, u64);

    /// (name, stream kind, request answered, reads or writes, outputs).
    type Case<'a> = (
        &'a str,
        Option<Kind>,
        Answering,
        &'a [Piece<'a>],
        &'a [&'a str],
    );
    /// (name, stream kind, reads or writes, outputs).
    type GapCase<'a> = (&'a str, Option<Kind>, &'a [Piece<'a>], &'a [&'a str]);

    fn whole(payload: &[u8], ts: u64) -> Piece<'_> {
        (payload, payload.len() as u32, ts)
    }

    /// Outputs rendered compactly, so cases read as a table.
    fn render(o: &Output) -> String {
        match o {
            Output::Request(head) => {
                let r = &head.request;
                assert_eq!(u64::from(head.tid), head.start_ns, "thread of {r:?}");
                let trace = match (&r.trace, head.bad_traceparent) {
                    (Some(t), false) => format!(" trace={:02x}..{:02x}", t.trace_id[0], t.flags),
                    (None, true) => " bad_traceparent".into(),
                    (None, false) => String::new(),
                    (Some(_), true) => panic!("a bad traceparent kept: {head:?}"),
                };
                format!(
                    "req {} {}{} {} @{}{}{trace}",
                    r.method,
                    r.path,
                    if r.path_truncated { "…" } else { "" },
                    r.version,
                    head.start_ns,
                    match head.cut {
                        None => String::new(),
                        Some(Anomaly::Gap) => " cut".into(),
                        Some(why) => format!(" cut ({})", why.label()),
                    }
                )
            }
            Output::Response { status, tunnel } => {
                format!("resp {}{}", status, if *tunnel { " tunnel" } else { "" })
            }
            Output::End {
                body_bytes,
                end_ns,
                complete,
            } => {
                format!(
                    "end {} @{}{}",
                    body_bytes,
                    end_ns,
                    if *complete { "" } else { " incomplete" }
                )
            }
            Output::Desync(a) => format!("desync {}", a.label()),
        }
    }

    fn run(parser: &mut Parser, pieces: &[Piece<'_>], answering: Answering) -> Vec<String> {
        let mut seen = Vec::new();
        for &(payload, total, ts) in pieces {
            let mut input = Input::new(payload, total, ts, ts as u32);
            while let Some(o) = parser.next(&mut input, answering) {
                seen.push(render(&o));
            }
            assert!(input.is_exhausted(), "input not used up");
        }
        seen
    }

    fn parse(kind: Option<Kind>, answering: Answering, pieces: &[Piece<'_>]) -> Vec<String> {
        run(&mut Parser::new(kind), pieces, answering)
    }

    const REQ: Option<Kind> = Some(Kind::Request);
    const RESP: Option<Kind> = Some(Kind::Response);

    #[test]
    fn framing_table() {
        use Answering::*;
        let cases: &[Case<'_>] = &[
            (
                "get without body",
                REQ,
                Other,
                &[whole(b"GET /users/1 HTTP/1.1\r\nHost: x\r\n\r\n", 10)],
                &["req GET /users/1 1.1 @10", "end 0 @10"],
            ),
            (
                "content-length request body over two reads",
                REQ,
                Other,
                &[whole(b"POST /a HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello", 1), whole(b" world", 2)],
                &["req POST /a 1.1 @1", "end 11 @2"],
            ),
            (
                "header names are case-insensitive, list of equal lengths",
                REQ,
                Other,
                &[whole(b"PUT /a HTTP/1.1\r\ncOnTeNt-LeNgTh:  3 , 3\r\n\r\nabc", 1)],
                &["req PUT /a 1.1 @1", "end 3 @1"],
            ),
            (
                "conflicting content-lengths",
                REQ,
                Other,
                &[whole(b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 1)],
                &["desync bad_head"],
            ),
            (
                "chunked request with extensions and trailers",
                REQ,
                Other,
                &[whole(
                    b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                      5;name=value;x\r\nhello\r\nA \r\n0123456789\r\n0\r\nDigest: x\r\nMore: y\r\n\r\n",
                    3,
                )],
                &["req POST /up 1.1 @3", "end 15 @3"],
            ),
            (
                "chunked wins over content-length; gzip, chunked is chunked",
                RESP,
                Other,
                &[whole(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                    4,
                )],
                &["resp 200", "end 3 @4"],
            ),
            (
                "chunked response streamed in many writes",
                RESP,
                Other,
                &[
                    whole(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 1),
                    whole(b"4\r\nabcd\r\n", 2),
                    whole(b"4", 3),
                    whole(b"\r\nef", 4),
                    whole(b"gh\r", 5),
                    whole(b"\n0\r\n", 6),
                    whole(b"\r\n", 7),
                ],
                &["resp 200", "end 8 @7"],
            ),
            (
                "bad chunk size",
                RESP,
                Other,
                &[whole(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 1)],
                &["resp 200", "desync bad_chunk"],
            ),
            (
                "chunk data not followed by CRLF",
                RESP,
                Other,
                &[whole(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", 1)],
                &["resp 200", "desync bad_chunk"],
            ),
            (
                "response to HEAD has no body despite content-length",
                RESP,
                Head,
                &[whole(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\n", 1)],
                &["resp 200", "end 0 @1", "resp 404", "end 0 @1"],
            ),
            (
                "204 and 304 have no body",
                RESP,
                Other,
                &[whole(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", 1)],
                &["resp 204", "end 0 @1", "resp 304", "end 0 @1"],
            ),
            (
                "100 continue then final",
                RESP,
                Other,
                &[whole(b"HTTP/1.1 100 Continue\r\n\r\n", 1), whole(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", 2)],
                &["resp 100", "end 0 @1", "resp 201", "end 2 @2"],
            ),
            (
                "close-delimited response has no end before close",
                RESP,
                Other,
                &[whole(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nabc", 1), whole(b"defg", 2)],
                &["resp 200"],
            ),
            (
                "transfer-encoding other than chunked: response ends at close",
                RESP,
                Other,
                &[whole(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz", 1)],
                &["resp 200"],
            ),
            (
                "transfer-encoding other than chunked in a request is rejected",
                REQ,
                Other,
                &[whole(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 1)],
                &["desync bad_head"],
            ),
            (
                "HTTP/1.0 request, absolute form, OPTIONS *, query and fragment",
                REQ,
                Other,
                &[whole(
                    b"GET /old HTTP/1.0\r\n\r\n\
                      GET http://example.com:8080/p/q?x=1 HTTP/1.1\r\n\r\n\
                      GET http://example.com HTTP/1.1\r\n\r\n\
                      GET https://example.com?a HTTP/1.1\r\n\r\n\
                      OPTIONS * HTTP/1.1\r\n\r\n\
                      GET /a/b?x=1&y=2#frag HTTP/1.1\r\n\r\n\
                      GET /c#frag HTTP/1.1\r\n\r\n\
                      GET /%7Euser/caf\xc3\xa9 HTTP/1.1\r\n\r\n\
                      CONNECT example.com:443 HTTP/1.1\r\n\r\n",
                    9,
                )],
                &[
                    "req GET /old 1.0 @9",
                    "end 0 @9",
                    "req GET /p/q 1.1 @9",
                    "end 0 @9",
                    "req GET / 1.1 @9",
                    "end 0 @9",
                    "req GET / 1.1 @9",
                    "end 0 @9",
                    "req OPTIONS * 1.1 @9",
                    "end 0 @9",
                    "req GET /a/b 1.1 @9",
                    "end 0 @9",
                    "req GET /c 1.1 @9",
                    "end 0 @9",
                    "req GET /%7Euser/café 1.1 @9",
                    "end 0 @9",
                    "req CONNECT example.com:443 1.1 @9",
                    "end 0 @9",
                ],
            ),
            (
                "empty lines before a request and bare LF line ends",
                REQ,
                Other,
                &[whole(b"\r\n\r\nGET /lf HTTP/1.1\nHost: x\n\n", 1)],
                &["req GET /lf 1.1 @1", "end 0 @1"],
            ),
            (
                "CONNECT 2xx is a tunnel; nothing after it is parsed",
                RESP,
                Connect,
                &[whole(b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x01garbage", 1), whole(b"\x17\x03", 2)],
                &["resp 200 tunnel", "end 0 @1"],
            ),
            (
                "CONNECT refused keeps HTTP",
                RESP,
                Connect,
                &[whole(b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n\r\n", 1)],
                &["resp 407", "end 1 @1", "resp 200 tunnel", "end 0 @1"],
            ),
            (
                "101 switching protocols is a tunnel",
                RESP,
                Other,
                &[whole(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello", 1)],
                &["resp 101 tunnel", "end 0 @1"],
            ),
            (
                "status out of range",
                RESP,
                Other,
                &[whole(b"HTTP/1.1 600 Nope\r\n\r\n", 1)],
                &["desync bad_head"],
            ),
            (
                "status without reason",
                RESP,
                Other,
                &[whole(b"HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n", 1)],
                &["resp 503", "end 0 @1"],
            ),
            (
                "a response where requests are expected",
                REQ,
                Other,
                &[whole(b"HTTP/1.1 200 OK\r\n\r\n", 1)],
                &["desync bad_head"],
            ),
            (
                "unknown kind accepts both",
                None,
                Other,
                &[whole(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nGET / HTTP/1.1\r\n\r\n", 1)],
                &["resp 200", "end 0 @1", "req GET / 1.1 @1", "end 0 @1"],
            ),
            (
                "header line without colon",
                REQ,
                Other,
                &[whole(b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 1)],
                &["desync bad_head"],
            ),
            (
                "obs-fold continuation is tolerated",
                REQ,
                Other,
                &[whole(b"GET / HTTP/1.1\r\nX-Long: a\r\n b\r\nContent-Length: 1\r\n\r\nz", 1)],
                &["req GET / 1.1 @1", "end 1 @1"],
            ),
            (
                "a valid traceparent is kept",
                REQ,
                Other,
                &[whole(b"GET /t HTTP/1.1\r\nHost: x\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n", 1)],
                &["req GET /t 1.1 @1 trace=4b..01", "end 0 @1"],
            ),
            (
                "a malformed traceparent is flagged, the request kept",
                REQ,
                Other,
                &[whole(b"GET /t HTTP/1.1\r\ntraceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01\r\nContent-Length: 1\r\n\r\nz", 1)],
                &["req GET /t 1.1 @1 bad_traceparent", "end 1 @1"],
            ),
            (
                "a response's traceparent is not read",
                RESP,
                Other,
                &[whole(b"HTTP/1.1 200 OK\r\ntraceparent: garbage\r\ntraceparent: garbage\r\n\r\n", 1)],
                &["resp 200"],
            ),
        ];
        for (name, kind, answering, pieces, want) in cases {
            assert_eq!(parse(*kind, *answering, pieces), *want, "case: {name}");
        }
    }

    #[test]
    fn close_ends_close_delimited_and_cuts_known_lengths() {
        let mut p = Parser::new(RESP);
        let seen = run(
            &mut p,
            &[
                whole(b"HTTP/1.0 200 OK\r\n\r\nabc", 1),
                whole(b"defg", 2),
                (b"", 0, 3),
            ],
            Answering::Other,
        );
        assert_eq!(seen, ["resp 200"]);
        assert_eq!(p.close().as_ref().map(render).as_deref(), Some("end 7 @2"));

        let mut p = Parser::new(RESP);
        run(
            &mut p,
            &[whole(
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                5,
            )],
            Answering::Other,
        );
        assert_eq!(
            p.close().as_ref().map(render).as_deref(),
            Some("end 3 @5 incomplete")
        );

        let mut p = Parser::new(RESP);
        run(
            &mut p,
            &[whole(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 5)],
            Answering::Other,
        );
        assert_eq!(p.close(), None, "nothing in progress");
        let mut p = Parser::new(RESP);
        run(
            &mut p,
            &[whole(b"HTTP/1.1 200 OK\r\nCont", 5)],
            Answering::Other,
        );
        assert_eq!(p.close(), None, "a partial head reported nothing");
    }

    #[test]
    fn every_split_point_of_a_request_yields_one_message() {
        let req: &[u8] = b"POST /orders/42?debug=1 HTTP/1.1\r\nHost: shop\r\nContent-Length: 4\r\n\
            traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\nbody";
        for i in 0..=req.len() {
            for j in i..=req.len() {
                let pieces = [
                    whole(&req[..i], 1),
                    whole(&req[i..j], 2),
                    whole(&req[j..], 3),
                ];
                let seen = parse(REQ, Answering::Other, &pieces);
                // Start: the first non-empty piece; end: the last one.
                let head_ts = if i > 0 {
                    1
                } else if j > 0 {
                    2
                } else {
                    3
                };
                let end_ts = if j < req.len() {
                    3
                } else if i < req.len() {
                    2
                } else {
                    1
                };
                let want = [
                    format!("req POST /orders/42 1.1 @{head_ts} trace=4b..01"),
                    format!("end 4 @{end_ts}"),
                ];
                assert_eq!(seen, want, "split at {i}/{j}");
            }
        }
    }

    #[test]
    fn request_line_split_mid_method() {
        let seen = parse(
            REQ,
            Answering::Other,
            &[
                whole(b"GE", 1),
                whole(b"T /x HTT", 2),
                whole(b"P/1.1\r\n\r\n", 3),
            ],
        );
        assert_eq!(seen, ["req GET /x 1.1 @1", "end 0 @3"]);
    }

    #[test]
    fn five_pipelined_requests_in_one_read() {
        let mut read = Vec::new();
        for i in 0..5 {
            read.extend_from_slice(format!("GET /item/{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        }
        let seen = parse(REQ, Answering::Other, &[whole(&read, 7)]);
        let want: Vec<String> = (0..5)
            .flat_map(|i| [format!("req GET /item/{i} 1.1 @7"), "end 0 @7".into()])
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn garbage_is_a_bad_head_and_nothing_else() {
        let tls_hello: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        let h2_preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let binary: Vec<u8> = (0u8..=255).rev().collect();
        let cases: &[(&str, Option<Kind>, &[u8])] = &[
            ("tls client hello", REQ, tls_hello),
            ("tls to a response stream", RESP, tls_hello),
            ("h2 preface", REQ, h2_preface),
            ("h2 preface, unknown kind", None, h2_preface),
            ("binary", None, &binary),
            ("lower-case method", REQ, b"get / HTTP/1.1\r\n\r\n"),
            ("HTTP/0.9", REQ, b"GET /\r\n\r\n"),
            ("HTTP/2 status", RESP, b"HTTP/2 200\r\n\r\n"),
            ("text", REQ, b"hello world, this is not http\r\n\r\n"),
        ];
        for (name, kind, bytes) in cases {
            assert_eq!(
                parse(*kind, Answering::Other, &[whole(bytes, 1)]),
                ["desync bad_head"],
                "case: {name}"
            );
        }
    }

    #[test]
    fn resync_only_at_a_read_that_starts_a_message() {
        let seen = parse(
            REQ,
            Answering::Other,
            &[
                whole(b"\x16\x03\x01", 1),
                whole(b"more garbage GET / HTTP/1.1\r\n\r\n", 2),
                whole(b"GE", 3), // too short to be sure
                whole(b"GET /ok HTTP/1.1\r\n\r\n", 4),
            ],
        );
        assert_eq!(seen, ["desync bad_head", "req GET /ok 1.1 @4", "end 0 @4"]);
    }

    #[test]
    fn big_heads_are_bounded_and_their_buffer_freed() {
        let headers = b"X-Filler: 0123456789012345678901234567890123456789\r\n".repeat(150);
        let pieces = [
            whole(b"GET / HTTP/1.1\r\n", 1),
            whole(&headers, 2),
            whole(&headers, 3),
        ];
        let mut p = Parser::new(REQ);
        assert_eq!(run(&mut p, &pieces, Answering::Other), Vec::<String>::new());
        assert!(p.head.capacity() > 15_000);
        assert_eq!(
            run(&mut p, &[whole(b"\r\n", 4)], Answering::Other),
            ["req GET / 1.1 @1", "end 0 @4"]
        );
        assert_eq!(p.head.capacity(), 0, "a grown buffer is freed");
    }

    /// A head that outgrows `MAX_HEAD` across reads (each captured whole):
    /// a request whose line was held is still reported, cut, as a head the
    /// kernel cut short is; then the parser waits for a read that starts a
    /// message. Anything else loses sync.
    #[test]
    fn heads_too_large_to_hold_report_what_their_line_says() {
        let filler = b"X-Filler: 0123456789012345678901234567890123456789\r\n".repeat(150);
        let filler_and_end = [filler.as_slice(), b"\r\n"].concat();
        let huge_value = [b"X-Big: ".as_slice(), &[b'a'; 8000]].concat();
        let long_target = [b"GET /".as_slice(), &[b'p'; 8000]].concat();
        let absolute = [b"GET http://".as_slice(), &[b'h'; 8000]].concat();
        let too_large = |request: &str| format!("req {request} 1.1 @1 cut (head_too_large)");
        let long_path = too_large(&format!("GET /{}…", "p".repeat(MAX_PATH - 1)));
        // (case, stream kind, reads, the request reported if any).
        type TooLarge<'a> = (&'a str, Option<Kind>, &'a [&'a [u8]], Option<String>);
        let cases: &[TooLarge<'_>] = &[
            (
                "many headers, the end never held",
                REQ,
                &[
                    b"GET /users/7?q=secret HTTP/1.1\r\n",
                    &filler,
                    &filler,
                    &filler,
                ],
                Some(too_large("GET /users/7")),
            ),
            (
                "many headers, the end in the read that overflows",
                REQ,
                &[b"GET /a HTTP/1.1\r\n", &filler, &filler, &filler_and_end],
                Some(too_large("GET /a")),
            ),
            (
                "one huge header over reads, unknown kind",
                None,
                &[
                    b"POST /upload HTTP/1.1\r\n",
                    &huge_value,
                    &huge_value,
                    &huge_value,
                ],
                Some(too_large("POST /upload")),
            ),
            (
                "a request line longer than the head bound",
                REQ,
                &[&long_target, &long_target[4..], &long_target[4..]],
                Some(long_path),
            ),
            (
                "an authority longer than the head bound: no path",
                REQ,
                &[&absolute, &absolute[11..], &absolute[11..]],
                None,
            ),
            (
                "a response head",
                RESP,
                &[b"HTTP/1.1 200 OK\r\n", &filler, &filler, &filler],
                None,
            ),
        ];
        for (name, kind, reads, reported) in cases {
            let mut pieces: Vec<Piece<'_>> = reads
                .iter()
                .zip(1..)
                .map(|(read, ts)| whole(read, ts))
                .collect();
            pieces.push(whole(b"GET /next HTTP/1.1\r\n\r\n", 9));
            let mut p = Parser::new(*kind);
            let seen = run(&mut p, &pieces, Answering::Other);
            let mut want = vec![reported
                .clone()
                .unwrap_or_else(|| "desync head_too_large".into())];
            if *kind != RESP {
                want.extend(["req GET /next 1.1 @9".into(), "end 0 @9".into()]);
            }
            assert_eq!(seen, want, "case: {name}");
            assert!(p.head.capacity() <= HEAD_BUFFER_KEPT, "case: {name}");
        }
    }

    /// An answer while a request head is still coming: the head is given up
    /// (`bad_head`), its request reported cut when its line reached the
    /// path; what is left of the head is not taken for messages.
    #[test]
    fn a_head_answered_before_its_end_is_given_up() {
        let cases: &[(&str, &[u8], &[&str])] = &[
            (
                "fields held",
                b"GET /big?q=1 HTTP/1.1\r\nX-A: 1\r\n",
                &["req GET /big 1.1 @1 cut (bad_head)"],
            ),
            (
                "inside the path",
                b"GET /users/12",
                &["req GET /users/12… 1.1 @1 cut (bad_head)"],
            ),
            ("before the path", b"GET http://ho", &["desync bad_head"]),
            (
                "an invalid line",
                b"GET /a\x01 HTTP/1.1\r\n",
                &["desync bad_head"],
            ),
            (
                "between messages: not given up",
                b"GET /a HTTP/1.1\r\n\r\n",
                &["req GET /a 1.1 @1", "end 0 @1", "desync bad_head"],
            ),
        ];
        for (name, read, want) in cases {
            let mut p = Parser::new(REQ);
            let mut seen = run(&mut p, &[whole(read, 1)], Answering::Other);
            seen.extend(p.answered_mid_head().as_ref().map(render));
            let rest_of_head = whole(b"X-B: GET /x HTTP/1.1\r\n\r\n", 2);
            let next = whole(b"GET /next HTTP/1.1\r\n\r\n", 3);
            seen.extend(run(&mut p, &[rest_of_head, next], Answering::Other));
            let want = [*want, &["req GET /next 1.1 @3", "end 0 @3"]].concat();
            assert_eq!(seen, want, "case: {name}");
        }
    }

    #[test]
    fn gaps_inside_known_lengths_cost_nothing() {
        let cases: &[GapCase<'_>] = &[
            (
                "content-length body mostly uncaptured",
                RESP,
                &[(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n<html>",
                    41 + 5000,
                    1,
                )],
                &["resp 200", "end 5000 @1"],
            ),
            (
                "body over several cut writes and a sendfile",
                RESP,
                &[
                    (b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\nab", 100, 1),
                    (b"", 2000, 2),
                    (b"xyz", 941, 3),
                    whole(b"HTTP/1.1 204 No Content\r\n\r\n", 4),
                ],
                &["resp 200", "end 3000 @3", "resp 204", "end 0 @4"],
            ),
            (
                "cut request body",
                REQ,
                &[(
                    b"POST /u HTTP/1.1\r\nContent-Length: 100\r\n\r\n",
                    41 + 100,
                    1,
                )],
                &["req POST /u 1.1 @1", "end 100 @1"],
            ),
            (
                "chunk data and its CRLF uncaptured",
                RESP,
                &[
                    (
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\nab",
                        47 + 5 + 1024 + 2,
                        1,
                    ),
                    whole(b"3\r\nabc", 2),
                    (b"", 2, 3),
                    whole(b"0\r\n\r\n", 4),
                ],
                &["resp 200", "end 1027 @4"],
            ),
        ];
        for (name, kind, pieces, want) in cases {
            assert_eq!(
                parse(*kind, Answering::Other, pieces),
                *want,
                "case: {name}"
            );
        }
    }

    #[test]
    fn gaps_where_framing_is_needed_lose_sync() {
        let cases: &[GapCase<'_>] = &[
            (
                "response head cut",
                RESP,
                &[
                    (b"HTTP/1.1 200 OK\r\nContent-Le", 400, 1),
                    whole(b"HTTP/1.1 204 No Content\r\n\r\n", 2),
                ],
                &["desync capture_gap", "resp 204", "end 0 @2"],
            ),
            (
                "uncaptured tail after a complete message starts another",
                RESP,
                &[(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, 1)],
                &["resp 200", "end 2 @1", "desync capture_gap"],
            ),
            (
                "body of known length ends inside the gap, then more",
                RESP,
                &[(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", 200, 1)],
                &["resp 200", "end 10 @1", "desync capture_gap"],
            ),
            (
                "chunk-size line uncaptured",
                RESP,
                &[
                    (
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab",
                        47 + 3 + 2 + 2 + 5,
                        1,
                    ),
                    whole(b"0\r\n\r\n", 2),
                ],
                &["resp 200", "desync capture_gap"],
            ),
            (
                "sendfile with no head in progress",
                RESP,
                &[(b"", 100, 1)],
                &["desync capture_gap"],
            ),
            (
                "request cut before its path",
                REQ,
                &[(b"GET ", 300, 1), whole(b"GET /next HTTP/1.1\r\n\r\n", 2)],
                &["desync capture_gap", "req GET /next 1.1 @2", "end 0 @2"],
            ),
            (
                "request cut inside the method",
                REQ,
                &[(b"DELE", 300, 1)],
                &["desync capture_gap"],
            ),
            (
                "absolute-form request cut inside the authority",
                REQ,
                &[(b"GET http://exam", 300, 1)],
                &["desync capture_gap"],
            ),
            (
                "whole but invalid request line, headers cut",
                REQ,
                &[(b"PRI * HTTP/2.0\r\nX: y", 300, 1)],
                &["desync bad_head"],
            ),
        ];
        for (name, kind, pieces, want) in cases {
            assert_eq!(
                parse(*kind, Answering::Other, pieces),
                *want,
                "case: {name}"
            );
        }
    }

    #[test]
    fn cut_request_heads_keep_what_was_captured() {
        let cases: &[(&str, &[u8], &str)] = &[
            (
                "headers cut",
                b"GET /users/7?token=abc HTTP/1.1\r\nHost: x\r\nCookie: 0123",
                "req GET /users/7 1.1 @1 cut",
            ),
            (
                "cut inside the version",
                b"GET /users/7 HTTP/1.",
                "req GET /users/7 1.1 @1 cut",
            ),
            (
                "cut after the path",
                b"GET /users/7 ",
                "req GET /users/7 1.1 @1 cut",
            ),
            (
                "cut inside the query",
                b"GET /users/7?token=ab",
                "req GET /users/7 1.1 @1 cut",
            ),
            (
                "cut inside the path",
                b"GET /users/12345678",
                "req GET /users/12345678… 1.1 @1 cut",
            ),
            (
                "HTTP/1.0 kept",
                b"GET /a HTTP/1.0\r\n",
                "req GET /a 1.0 @1 cut",
            ),
            (
                "cut CR of the request line",
                b"GET /a HTTP/1.1\r",
                "req GET /a 1.1 @1 cut",
            ),
            (
                "absolute form",
                b"GET http://h:1/p/q",
                "req GET /p/q… 1.1 @1 cut",
            ),
            (
                "a traceparent captured whole",
                b"GET /t HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nCookie: 0123",
                "req GET /t 1.1 @1 cut trace=4b..01",
            ),
            (
                "a malformed traceparent captured whole",
                b"GET /t HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1\r\nCookie: 0123",
                "req GET /t 1.1 @1 cut bad_traceparent",
            ),
            (
                "a traceparent cut short is not read",
                b"GET /t HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "req GET /t 1.1 @1 cut",
            ),
            (
                "a traceparent after a malformed line is not trusted",
                b"GET /t HTTP/1.1\r\nno colon\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nX",
                "req GET /t 1.1 @1 cut",
            ),
        ];
        for (name, captured, want) in cases {
            let pieces = [
                (*captured, 2000, 1),
                whole(b"more body bytes", 2),
                whole(b"PUT /x HTTP/1.1\r\n\r\n", 3),
            ];
            let seen = parse(REQ, Answering::Other, &pieces);
            assert_eq!(
                seen,
                [*want, "req PUT /x 1.1 @3", "end 0 @3"],
                "case: {name}"
            );
        }
    }

    #[test]
    fn long_paths_are_kept_as_a_prefix() {
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(3000));
        let mut input = Input::new(long.as_bytes(), long.len() as u32, 1, 1);
        let Some(Output::Request(head)) = Parser::new(REQ).next(&mut input, Answering::Other)
        else {
            panic!("no request");
        };
        let request = head.request;
        assert_eq!(
            (request.path.len(), request.path_truncated),
            (MAX_PATH, true)
        );
        let exact = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_PATH - 1));
        let mut input = Input::new(exact.as_bytes(), exact.len() as u32, 1, 1);
        let Some(Output::Request(head)) = Parser::new(REQ).next(&mut input, Answering::Other)
        else {
            panic!("no request");
        };
        let request = head.request;
        assert_eq!(
            (request.path.len(), request.path_truncated),
            (MAX_PATH, false)
        );
    }

    #[test]
    fn body_bytes_follow_progress() {
        let mut p = Parser::new(REQ);
        run(
            &mut p,
            &[whole(
                b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n1234",
                1,
            )],
            Answering::Other,
        );
        assert_eq!(p.body_bytes(), 4);
        assert!(!p.is_idle());
        run(&mut p, &[whole(b"567890", 2)], Answering::Other);
        assert!(p.is_idle());
    }

    #[test]
    fn head_end_is_found_across_any_split() {
        /// The byte-at-a-time definition.
        fn reference(bytes: &[u8], eol: &mut u8) -> Option<usize> {
            for (i, &b) in bytes.iter().enumerate() {
                *eol = match (b, *eol) {
                    (b'\n', 1 | 2) => return Some(i + 1),
                    (b'\n', _) => 1,
                    (b'\r', 1) => 2,
                    _ => 0,
                };
            }
            None
        }
        // Every string of up to 7 bytes over an alphabet that matters, cut
        // at every point, from every carried state.
        let alphabet = [b'\n', b'\r', b'x'];
        for len in 0..=7u32 {
            for n in 0..3usize.pow(len) {
                let bytes: Vec<u8> = (0..len).map(|k| alphabet[n / 3usize.pow(k) % 3]).collect();
                for cut in 0..=bytes.len() {
                    for start in 0..=2 {
                        let (mut a, mut b) = (start, start);
                        let got = find_head_end(&bytes[..cut], &mut a)
                            .or_else(|| find_head_end(&bytes[cut..], &mut a).map(|n| cut + n));
                        let want = reference(&bytes[..cut], &mut b)
                            .or_else(|| reference(&bytes[cut..], &mut b).map(|n| cut + n));
                        assert_eq!(got, want, "{bytes:?} cut at {cut}, from {start}");
                        if want.is_none() {
                            assert_eq!(a, b, "{bytes:?} cut at {cut}, from {start}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_first_of_two_bytes_is_found_a_word_at_a_time() {
        for len in 0..24 {
            for (a, b) in [(0, 0), (3, 9), (9, 3), (8, 15), (15, 7)] {
                // Bytes just below each needle, which borrows could flag.
                let mut bytes: Vec<u8> = (0..len)
                    .map(|at| if at % 2 == 0 { b'>' } else { b'"' })
                    .collect();
                if a < len {
                    bytes[a] = b'?';
                }
                if b < len {
                    bytes[b] = b'#';
                }
                let want = bytes.iter().position(|&c| c == b'?' || c == b'#');
                assert_eq!(find_any([b'?', b'#'], &bytes), want, "{bytes:?}");
            }
        }
    }

    #[test]
    fn lf_is_found_a_word_at_a_time() {
        for len in 0..40 {
            let mut bytes = vec![b'x'; len];
            assert_eq!(find_lf(&bytes), None, "{len}");
            for at in 0..len {
                bytes[at] = b'\n';
                // Bytes just below LF, which borrows could turn into false hits.
                if at + 1 < len {
                    bytes[at + 1] = b'\x0b';
                }
                assert_eq!(find_lf(&bytes), Some(at), "{len} {at}");
                assert_eq!(find_lf(&bytes[at + 1..]), None, "{len} {at}");
                bytes[at] = b'\t';
            }
        }
    }

    #[test]
    fn one_pass_scan_ends_heads_where_find_head_end_does() {
        // Every string of up to 8 bytes over an alphabet that matters.
        let alphabet = [b'\n', b'\r', b'x'];
        for len in 0..=8u32 {
            for n in 0..3usize.pow(len) {
                let bytes: Vec<u8> = (0..len).map(|k| alphabet[n / 3usize.pow(k) % 3]).collect();
                let want = find_head_end(&bytes, &mut 0);
                let got = scan_head(&bytes, None).map(|(end, _)| end);
                assert_eq!(got, want, "{bytes:?}");
            }
        }
        // What it parses is what the head holds, whatever follows it.
        let head = b"POST /a?q=secret HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let (end, parsed) = scan_head(head, Some(Kind::Request)).unwrap();
        assert_eq!(end, head.len() - 5);
        let Ok((StartLine::Request(parsed), framing)) = parsed else {
            panic!("not a request")
        };
        assert_eq!(parsed.request.path, "/a");
        assert_eq!(framing.content_length, Some(5));
        // An invalid line before the end: the end is still found.
        let bad = b"GET / HTTP/1.1\r\nno colon\r\n\r\nGET";
        let (end, parsed) = scan_head(bad, None).unwrap();
        assert_eq!((end, parsed.err()), (bad.len() - 3, Some(Anomaly::BadHead)));
    }

    #[test]
    fn field_names_match_ignoring_case() {
        for (known, _) in Field::NAMES {
            for &l in known {
                for t in (0..=255u8).filter(|&t| token_len(&[t]) == 1) {
                    let want = t.eq_ignore_ascii_case(&l);
                    assert_eq!(token_eq_lower(&[t], &[l]), want, "{t:#x} {l:#x}");
                }
            }
            let upper = known.to_ascii_uppercase();
            assert_eq!(Field::of(&upper), Field::of(known));
            assert!(Field::of(known).is_some());
        }
        assert_eq!(Field::of(b"Connection"), None);
        assert_eq!(Field::of(b"Content-Lengtx"), None);
    }

    #[test]
    fn tokens() {
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(token_len(&[b]), usize::from(want), "{b:#x}");
        }
        assert_eq!(token_len(b""), 0);
        assert_eq!(token_len(b"Content-Length: 1"), 14);
        assert_eq!(token_len(b"Content Length"), 7);
    }

    #[test]
    fn answering_of_method() {
        assert_eq!(Answering::of("HEAD"), Answering::Head);
        assert_eq!(Answering::of("CONNECT"), Answering::Connect);
        assert_eq!(Answering::of("GET"), Answering::Other);
        assert_eq!(Answering::of("head"), Answering::Other);
    }
}
