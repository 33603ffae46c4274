//! Stage 3 of the pipeline: per-connection state and request/response pairing.
//!
//! Each connection's reads and writes go through two `http1::Parser`s, one
//! per direction. Requests wait in a FIFO until the response that answers
//! them (HTTP/1.1 answers in request order, RFC 9112 §9.3.2), so pipelined
//! requests pair correctly and latency runs to the last response byte. The
//! result is a stream of `exchange::Observation`s. Memory is bounded: by
//! `TrackerConfig` (connections, requests per connection), by the parser (head
//! buffers), and by expiry of idle connections into a bounded graveyard.
//!
//! ## Pairing after lost bytes
//!
//! The n-th final response answers the n-th request. Bytes the parser could
//! not frame (the kernel copied too little of a read, garbage) may hide
//! requests or responses, and pairing across such a loss could join a request
//! with another one's response: a wrong latency. The rules prefer dropping
//! and counting to guessing:
//!
//! - A loss in either stream abandons every outstanding request (`Desync`)
//!   and leaves the connection *unaligned*.
//! - Exception: a request head cut short whose request line is usable stays
//!   outstanding: cut by the capture limit, too large for the parser to hold,
//!   or answered before its end (a server refusing a head too large for it
//!   with 431 before reading all of it; counted `BadHead`, as a head never
//!   finished is). Its place in the queue is known, and the lost tail of
//!   that read is most likely the rest of its head (a large Cookie). The
//!   connection is unaligned all the same: the tail might have held further
//!   pipelined requests.
//! - While unaligned, requests are queued *unverified*. A response that would
//!   answer an unverified request may be the answer to a lost one: it is
//!   ignored and the unverified requests are abandoned (`Desync`). A response
//!   with no request at all is ignored too (counted `UnpairedResponse` only
//!   when aligned: otherwise it is the expected answer to a lost request).
//! - A request arriving while the connection is quiescent (nothing
//!   outstanding, the response stream in sync and between messages) realigns
//!   it: a client that waits for each response before sending the next request
//!   has by then received the answers to whatever was lost.
//! - Pipelining seen on an aligned connection (a request sent while another is
//!   unanswered) rules realignment out for good: pipelined requests lost in a
//!   gap could still be waiting for their answers.
//!
//! The one residual risk is a pipelining client whose pipelining was never
//! visible (only its lost requests overlapped).
//!
//! ## One socket, several fds
//!
//! The kernel announces a connection per (process, fd). A process may use
//! one socket through several fds (`dup`, Rust's `TcpStream::try_clone`: a
//! writer writes the requests, a reader reads the responses on its own fd),
//! so one socket can be announced under several conn ids. Within a process
//! a live TCP socket is its two addresses, so an announcement whose process
//! and addresses match a tracked connection joins it as an alias: the bytes
//! of every alias feed the same parsers, in arrival order. Closing an fd only
//! drops its alias; the connection ends with its last fd. Exceptions, tracked
//! as connections of their own:
//!
//! - Addresses the kernel could not read (unspecified address or port zero):
//!   they tell sockets apart no more.
//! - Two fds that both came from accept or connect: each call makes a socket,
//!   so the older one is gone and its close was missed (the addresses were
//!   reused). A `dup` of a socket never comes from either.
//! - More than `MAX_FDS_PER_SOCKET` fds: the bound on aliases. Such an fd's
//!   exchanges may not pair, as before aliasing existed.
//!
//! The residual risk: a connection whose close was missed and which no
//! accept or connect announced (it predates sonde) absorbs a later socket
//! with the same addresses until it expires.
//!
//! ## Idle connections
//!
//! The kernel announces a connection once, when it first sees HTTP on it,
//! but a connection idle past the timeout may well be open: pooled
//! keep-alive connections idle for minutes (Envoy's default idle timeout is
//! an hour). So expiry abandons the outstanding requests (`Expired`) and
//! buries the connection: its grave keeps what the announcements told
//! (process, addresses, side, fds). A read or write on any of its fds
//! revives it with fresh parsers, between messages. It starts unaligned if
//! anything was outstanding at expiry: the first response may be the late
//! answer to an expired request. A close of its last fd or its process's
//! exit forgets a grave; a full graveyard evicts the oldest burial. A buried
//! socket still joins further fds announced for it.
//!
//! ## Request numbering
//!
//! Each request head seen on a connection gets the next `seq`, from 0,
//! whichever of its fds carried it, and across burial and revival (the
//! grave keeps the count). Heads abandoned at once (`QueueFull`) and cut ones
//! count too. So when sonde sees both ends of a socket, they number its
//! requests alike, which is what cross-process stitching matches on. They
//! differ only when one end missed a head the other saw: heads lost in a
//! capture gap or a dropped event, or a connection that predates sonde and
//! was first seen on each end around a request sent but not yet read. The
//! numbering then stays shifted for the life of the connection; a consumer
//! should also check that the times agree.
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU16;

use foldhash::{HashMap, HashMapExt};

use crate::event::{ConnOpen, Data, Direction, Event, RoleHint};
use crate::exchange::{
    AbandonReason, Anomaly, Endpoint, Finished, Observation, Request, RequestId, Side, Started,
};
use crate::http1::{Answering, Input, Kind, Output, Parser, RequestHead};

/// Where the tracker's observations go, in order: straight to the stages
/// after it in the daemon, or a `Vec`. Observers only look, so the tracker
/// keeps what it still needs (a started request waits for its response)
/// without a copy.
pub trait Observer {
    fn observe(&mut self, observation: &Observation);
}

impl Observer for Vec<Observation> {
    fn observe(&mut self, observation: &Observation) {
        self.push(observation.clone());
    }
}

/// Limits of the tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// A connection with no event for this long (ns) is dropped, its
    /// outstanding requests abandoned (`Expired`), and buried: data on it
    /// revives it.
    pub idle_timeout_ns: u64,
    /// Connections tracked at once; more are counted and ignored. As many
    /// buried connections are remembered (see `Graves` for the memory).
    pub max_connections: usize,
    /// Requests awaiting their response on one connection.
    pub max_pending: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            idle_timeout_ns: 300_000_000_000,
            max_connections: 65536,
            max_pending: 64,
        }
    }
}

/// Conn ids (fds) one connection may be announced under; see the module
/// comment. A process rarely holds more than a reader's and a writer's.
const MAX_FDS_PER_SOCKET: usize = 4;

/// What the tracker holds, against its bounds: see `Tracker::footprint`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Live and buried connections (each at most `max_connections`).
    pub live: usize,
    pub buried: usize,
    /// Open fds, sockets and processes indexed, for live or buried connections.
    pub fds: usize,
    pub sockets: usize,
    pub processes: usize,
    /// The most requests awaiting a response on one connection (at most
    /// `max_pending`).
    pub most_pending: usize,
    /// The most bytes one parser holds for a head (see `Parser::held_bytes`).
    pub most_head_bytes: usize,
}

/// Pairs requests with responses on every tracked connection.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    /// Live connections, keyed by the conn id each was first announced under
    /// (its `Endpoint::conn_id`), which outlives that fd's close when the
    /// socket has others.
    conns: HashMap<u64, Conn>,
    /// Buried connections (expired while open), by the same keys.
    graves: Graves,
    /// The key of every open conn id, live or buried.
    ids: HashMap<u64, u64>,
    /// The newest connection (live or buried) of each socket, the one a
    /// further fd joins.
    by_socket: HashMap<Socket, u64>,
    /// Connection keys (live or buried) per process, for `ProcessExit`.
    /// Ordered, so what an exit emits does not depend on hashing.
    by_tgid: HashMap<u32, BTreeSet<u64>>,
    last_id: RequestId,
    /// Scratch space of `expire`, kept to avoid an allocation per call.
    expired: Vec<u64>,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Self {
        Tracker {
            graves: Graves::new(config.max_connections),
            config,
            conns: HashMap::new(),
            ids: HashMap::new(),
            by_socket: HashMap::new(),
            by_tgid: HashMap::new(),
            last_id: 0,
            expired: Vec::new(),
        }
    }

    /// Live connections tracked (a connection announced under several fds
    /// counts once); buried ones are not.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// What the tracker holds now. O(live connections): for checking its
    /// bounds (tests, fuzzing), not for every event.
    pub fn footprint(&self) -> Footprint {
        let live = self.conns.values();
        Footprint {
            live: self.conns.len(),
            buried: self.graves.graves.len(),
            fds: self.ids.len(),
            sockets: self.by_socket.len(),
            processes: self.by_tgid.len(),
            most_pending: live.clone().map(|c| c.pending.len()).max().unwrap_or(0),
            most_head_bytes: live
                .map(|c| c.inbound.held_bytes().max(c.outbound.held_bytes()))
                .max()
                .unwrap_or(0),
        }
    }

    /// Consumes one event (in ring-buffer order) and hands what it caused to
    /// `out`.
    pub fn handle<P: AsRef<[u8]>>(&mut self, event: &Event<P>, out: &mut dyn Observer) {
        match event {
            Event::Open(open) => self.open(open, out),
            Event::Data(data) => {
                // Usually the fd is the one its connection is keyed by: one
                // lookup. (A connection's open fds are those `ids` maps to it.)
                if let Some(conn) = self.conns.get_mut(&data.conn_id) {
                    if conn.who.fds.contains(&data.conn_id) {
                        conn.on_data(data, &mut self.last_id, self.config.max_pending, out);
                        return;
                    }
                }
                // Otherwise the fd's key, then its connection.
                let key = self.ids.get(&data.conn_id).copied();
                let conn = match key.and_then(|key| self.conns.get_mut(&key)) {
                    Some(conn) => Some(conn),
                    None => self
                        .revive(key, out)
                        .and_then(|key| self.conns.get_mut(&key)),
                };
                if let Some(conn) = conn {
                    conn.on_data(data, &mut self.last_id, self.config.max_pending, out);
                }
            }
            // Closes also come for connections never tracked (table full).
            Event::Close { conn_id, .. } => {
                if let Some(mut conn) = self.close_fd(*conn_id) {
                    conn.shut(AbandonReason::ClosedUnanswered, out);
                }
            }
            Event::ProcessExit { tgid } => {
                for key in self.by_tgid.remove(tgid).unwrap_or_default() {
                    if let Some(mut conn) = self.forget(key) {
                        conn.shut(AbandonReason::ProcessExited, out);
                    }
                }
            }
            Event::ProcessExec { .. } => {}
        }
    }

    /// Buries connections idle for longer than the idle timeout. `now_ns` is
    /// on the events' clock (CLOCK_MONOTONIC). Costs O(live connections): call
    /// it every few seconds, not per event.
    pub fn expire(&mut self, now_ns: u64, out: &mut dyn Observer) {
        let idle_ns = self.config.idle_timeout_ns;
        let mut expired = std::mem::take(&mut self.expired);
        expired.extend(
            self.conns
                .iter()
                .filter(|(_, conn)| now_ns.saturating_sub(conn.last_ns) > idle_ns)
                .map(|(&key, _)| key),
        );
        expired.sort_unstable();
        for &key in &expired {
            if let Some(conn) = self.conns.remove(&key) {
                if let Some((evicted, grave)) = self.graves.bury(key, conn.expire(out)) {
                    self.unindex(evicted, &grave.who);
                }
            }
        }
        expired.clear();
        self.expired = expired;
    }

    fn open(&mut self, open: &ConnOpen, out: &mut dyn Observer) {
        // An id still naming a connection, open or not (its fd closed while
        // another fd keeps the socket): announced twice, what is known stays.
        if self.ids.contains_key(&open.conn_id)
            || self.conns.contains_key(&open.conn_id)
            || self.graves.contains(open.conn_id)
        {
            return;
        }
        let socket = Socket::of(open.tgid, open.local, open.peer);
        if let Some(key) = socket.and_then(|s| self.by_socket.get(&s)).copied() {
            if self.join(key, open) {
                self.ids.insert(open.conn_id, key);
                return;
            }
        }
        if self.conns.len() >= self.config.max_connections {
            out.observe(&Observation::Anomaly(Anomaly::TooManyConnections));
            return;
        }
        self.conns.insert(open.conn_id, Conn::new(open));
        self.ids.insert(open.conn_id, open.conn_id);
        self.by_tgid
            .entry(open.tgid)
            .or_default()
            .insert(open.conn_id);
        if let Some(socket) = socket {
            self.by_socket.insert(socket, open.conn_id);
        }
    }

    /// Adds `open` to connection `key` (live or buried) if it is another fd
    /// of that socket.
    fn join(&mut self, key: u64, open: &ConnOpen) -> bool {
        if let Some(conn) = self.conns.get_mut(&key) {
            let joins = conn.who.may_share_with(open);
            if joins {
                conn.add_fd(open);
            }
            return joins;
        }
        match self.graves.get_mut(key) {
            Some(grave) if grave.who.may_share_with(open) => {
                grave.who.add_fd(open);
                true
            }
            _ => false,
        }
    }

    /// Revives the buried connection `key` (that of an fd with data, not
    /// live). None, counted, when there is none.
    fn revive(&mut self, key: Option<u64>, out: &mut dyn Observer) -> Option<u64> {
        let buried = key.and_then(|key| self.graves.remove(key).map(|grave| (key, grave)));
        let Some((key, grave)) = buried else {
            out.observe(&Observation::Anomaly(Anomaly::UnknownConnection));
            return None;
        };
        if self.conns.len() >= self.config.max_connections {
            // As for a new connection: counted once, its data unknown from now on.
            out.observe(&Observation::Anomaly(Anomaly::TooManyConnections));
            self.unindex(key, &grave.who);
            return None;
        }
        self.conns.insert(key, Conn::revive(grave));
        Some(key)
    }

    /// Drops the fd `conn_id`; returns its connection if that was its last
    /// fd and the connection was live.
    fn close_fd(&mut self, conn_id: u64) -> Option<Conn> {
        let key = self.ids.remove(&conn_id)?;
        let who = match self.conns.get_mut(&key) {
            Some(conn) => &mut conn.who,
            None => &mut self.graves.get_mut(key)?.who,
        };
        who.fds.retain(|&id| id != conn_id);
        if who.fds.is_empty() {
            self.forget(key)
        } else {
            None
        }
    }

    /// Forgets connection `key`, live or buried, and every fd it has;
    /// returns it if it was live.
    fn forget(&mut self, key: u64) -> Option<Conn> {
        if let Some(conn) = self.conns.remove(&key) {
            self.unindex(key, &conn.who);
            return Some(conn);
        }
        if let Some(grave) = self.graves.remove(key) {
            self.unindex(key, &grave.who);
        }
        None
    }

    /// Removes what points to connection `key`, gone from `conns` and `graves`.
    fn unindex(&mut self, key: u64, who: &Identity) {
        for id in &who.fds {
            self.ids.remove(id);
        }
        let tgid = who.at.tgid;
        if let Some(keys) = self.by_tgid.get_mut(&tgid) {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_tgid.remove(&tgid);
            }
        }
        if let Some(socket) = who.socket() {
            // A newer connection may have taken the socket's place.
            if self.by_socket.get(&socket) == Some(&key) {
                self.by_socket.remove(&socket);
            }
        }
    }
}

/// A TCP socket as a process sees it: at most one live socket has these
/// addresses in a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Socket {
    tgid: u32,
    local: SocketAddr,
    peer: SocketAddr,
}

impl Socket {
    /// None when the kernel could not read the addresses (zeros): they do
    /// not tell sockets apart.
    fn of(tgid: u32, local: SocketAddr, peer: SocketAddr) -> Option<Socket> {
        let known = |a: SocketAddr| !a.ip().is_unspecified() && a.port() != 0;
        (known(local) && known(peer)).then_some(Socket { tgid, local, peer })
    }
}

/// Who a connection is: what the open events of its fds told. A buried
/// connection keeps only this (and a few flags, see `Grave`).
#[derive(Debug)]
struct Identity {
    /// `at.side` means nothing until `side_known`.
    at: Endpoint,
    side_known: bool,
    /// Open conn ids (fds) of the socket; the connection ends with the last.
    fds: Vec<u64>,
    /// One of them came from accept or connect.
    accepted_or_connected: bool,
}

impl Identity {
    fn new(open: &ConnOpen) -> Self {
        let mut who = Identity {
            at: Endpoint {
                tgid: open.tgid,
                conn_id: open.conn_id,
                side: Side::Server,
                local: open.local,
                peer: open.peer,
            },
            side_known: false,
            fds: vec![open.conn_id],
            accepted_or_connected: false,
        };
        who.learn_hint(open.role);
        who
    }

    fn socket(&self) -> Option<Socket> {
        Socket::of(self.at.tgid, self.at.local, self.at.peer)
    }

    /// Whether `open`, announced with this connection's process and
    /// addresses, is another fd of its socket (see the module comment).
    fn may_share_with(&self, open: &ConnOpen) -> bool {
        let another_socket = self.accepted_or_connected && open.role != RoleHint::Unknown;
        !another_socket && self.fds.len() < MAX_FDS_PER_SOCKET
    }

    /// Adds the fd of `open`; true if that taught the side.
    fn add_fd(&mut self, open: &ConnOpen) -> bool {
        self.fds.push(open.conn_id);
        self.learn_hint(open.role)
    }

    /// What accept or connect said of the side, unless a head or an earlier
    /// fd already told. True if that taught the side.
    fn learn_hint(&mut self, role: RoleHint) -> bool {
        let side = match role {
            RoleHint::Server => Side::Server,
            RoleHint::Client => Side::Client,
            RoleHint::Unknown => return false,
        };
        self.accepted_or_connected = true;
        self.learn_side(side)
    }

    /// Fixes the side the first time it is learnt (from an open event, or
    /// from the first head on any of its fds when the kernel did not know).
    /// True if it was not known before.
    fn learn_side(&mut self, side: Side) -> bool {
        if self.side_known {
            return false;
        }
        self.side_known = true;
        self.at.side = side;
        true
    }
}

/// What is kept of a connection expired while open: enough to go on
/// tracking it when it is used again.
#[derive(Debug)]
struct Grave {
    who: Identity,
    /// Nothing was outstanding at expiry and both streams were between
    /// messages, in sync: the first response after revival is trustworthy.
    aligned: bool,
    pipelined: bool,
    /// It carries no HTTP any more (after an upgrade or CONNECT).
    tunnel: bool,
    /// `Conn::requests_seen`: numbering goes on after revival.
    requests_seen: u64,
}

/// Buried connections by key, at most `capacity`; burying one more evicts
/// the oldest burial. All operations O(1) (amortized).
///
/// Memory per grave: 144 bytes in `graves` (key, burial number, `Grave`
/// sized for IPv6), its fd list's heap block (32), 16 to 64 in `order`, and
/// its entries in the tracker's indexes: 80 in `by_socket`, 16 per fd in
/// `ids`, about 10 in `by_tgid`. With hash table slack about 340 bytes, up to
/// 600 just after a table grows: 21 to 40 MiB for the default capacity of
/// 65536, reached only with that many idle connections still open.
#[derive(Debug)]
struct Graves {
    capacity: usize,
    /// Key → (burial number, grave).
    graves: HashMap<u64, (u64, Grave)>,
    /// (key, burial number), oldest first. A grave revived or forgotten
    /// leaves its entry behind, skipped when met and dropped when such
    /// entries outnumber the graves.
    order: VecDeque<(u64, u64)>,
    burials: u64,
}

impl Graves {
    /// Stale entries of `order` tolerated beyond one per grave.
    const SLACK: usize = 64;

    fn new(capacity: usize) -> Self {
        Graves {
            capacity,
            graves: HashMap::new(),
            order: VecDeque::new(),
            burials: 0,
        }
    }

    fn contains(&self, key: u64) -> bool {
        self.graves.contains_key(&key)
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut Grave> {
        self.graves.get_mut(&key).map(|(_, grave)| grave)
    }

    fn remove(&mut self, key: u64) -> Option<Grave> {
        self.graves.remove(&key).map(|(_, grave)| grave)
    }

    /// Whether an `order` entry is its grave's latest burial.
    fn is_current(&self, (key, burial): (u64, u64)) -> bool {
        self.graves.get(&key).is_some_and(|&(b, _)| b == burial)
    }

    /// Buries `grave` under `key`; returns the grave evicted to make room.
    fn bury(&mut self, key: u64, grave: Grave) -> Option<(u64, Grave)> {
        self.burials += 1;
        self.graves.insert(key, (self.burials, grave));
        if self.order.len() >= 2 * self.graves.len() + Self::SLACK {
            // Amortized O(1): at least half the entries dropped are stale,
            // each left by one O(1) removal.
            let mut order = std::mem::take(&mut self.order);
            order.retain(|&entry| self.is_current(entry));
            self.order = order;
        }
        self.order.push_back((key, self.burials));
        if self.graves.len() <= self.capacity {
            return None;
        }
        while let Some(entry) = self.order.pop_front() {
            if self.is_current(entry) {
                return self.remove(entry.0).map(|grave| (entry.0, grave));
            }
        }
        None
    }
}

/// A request waiting for its response. At most 128 bytes, so that queueing
/// and dequeuing it are inline moves rather than memcpy calls.
#[derive(Debug)]
struct Pending {
    id: RequestId,
    request: Request,
    answering: Answering,
    start_ns: u64,
    tid: u32,
    seq: u64,
    /// Queued while the connection was aligned: its place in the queue is
    /// known (see the module comment).
    verified: bool,
    /// Decoded body size, once the request's body has ended.
    body_bytes: Option<u64>,
    /// Final status, once the response head has been seen (never 0).
    status: Option<NonZeroU16>,
}
const _: () = assert!(std::mem::size_of::<Pending>() <= 128);

#[derive(Debug)]
struct Conn {
    who: Identity,
    inbound: Parser,
    outbound: Parser,
    pending: VecDeque<Pending>,
    last_ns: u64,
    aligned: bool,
    pipelined: bool,
    /// It carries no HTTP any more (after an upgrade or CONNECT).
    tunnel: bool,
    /// Request heads seen, the `seq` of the next one.
    requests_seen: u64,
}

impl Conn {
    fn new(open: &ConnOpen) -> Self {
        Conn::of(Identity::new(open), open.ts_ns)
    }

    /// Fresh state, between messages, for a connection whose side may
    /// already be known.
    fn of(who: Identity, last_ns: u64) -> Self {
        let mut conn = Conn {
            who,
            inbound: Parser::new(None),
            outbound: Parser::new(None),
            pending: VecDeque::new(),
            last_ns,
            aligned: true,
            pipelined: false,
            tunnel: false,
            requests_seen: 0,
        };
        if conn.who.side_known {
            conn.set_kinds();
        }
        conn
    }

    /// Back from its grave; its first event sets `last_ns`.
    fn revive(grave: Grave) -> Self {
        let mut conn = Conn::of(grave.who, 0);
        conn.aligned = grave.aligned;
        conn.pipelined = grave.pipelined;
        conn.requests_seen = grave.requests_seen;
        if grave.tunnel {
            conn.tunnel = true;
            conn.inbound.tunnel();
            conn.outbound.tunnel();
        }
        conn
    }

    /// Idle past the timeout: ends what is outstanding (`Expired`) and keeps
    /// what a revival needs.
    fn expire(mut self, out: &mut dyn Observer) -> Grave {
        let quiet = self.aligned
            && self.pending.is_empty()
            && self.inbound.is_idle()
            && self.outbound.is_idle();
        self.shut(AbandonReason::Expired, out);
        Grave {
            who: self.who,
            aligned: quiet,
            pipelined: self.pipelined,
            tunnel: self.tunnel,
            requests_seen: self.requests_seen,
        }
    }

    fn add_fd(&mut self, open: &ConnOpen) {
        if self.who.add_fd(open) {
            self.set_kinds();
        }
        self.last_ns = self.last_ns.max(open.ts_ns);
    }

    fn learn_side(&mut self, side: Side) {
        if self.who.learn_side(side) {
            self.set_kinds();
        }
    }

    /// Tells the parsers what each direction carries, once the side is known.
    fn set_kinds(&mut self) {
        let (inbound, outbound) = match self.who.at.side {
            Side::Server => (Kind::Request, Kind::Response),
            Side::Client => (Kind::Response, Kind::Request),
        };
        self.inbound.set_kind(inbound);
        self.outbound.set_kind(outbound);
    }

    /// (request stream, response stream); meaningful once the side is known.
    fn streams(&mut self) -> (&mut Parser, &mut Parser) {
        match self.who.at.side {
            Side::Server => (&mut self.inbound, &mut self.outbound),
            Side::Client => (&mut self.outbound, &mut self.inbound),
        }
    }

    fn on_data<P: AsRef<[u8]>>(
        &mut self,
        data: &Data<P>,
        last_id: &mut RequestId,
        max_pending: usize,
        out: &mut dyn Observer,
    ) {
        self.last_ns = data.ts_ns;
        let mut input = Input::new(data.payload.as_ref(), data.total_len, data.ts_ns, data.tid);
        loop {
            let answering = self
                .pending
                .front()
                .map_or(Answering::Other, |p| p.answering);
            let parser = match data.dir {
                Direction::In => &mut self.inbound,
                Direction::Out => &mut self.outbound,
            };
            let Some(output) = parser.next(&mut input, answering) else {
                return;
            };
            self.on_output(data.dir, output, last_id, max_pending, out);
        }
    }

    /// What the parser of direction `dir` found.
    fn on_output(
        &mut self,
        dir: Direction,
        output: Output,
        last_id: &mut RequestId,
        max_pending: usize,
        out: &mut dyn Observer,
    ) {
        match output {
            Output::Request(head) => {
                self.learn_side(side_seeing(dir, Kind::Request));
                *last_id += 1;
                self.on_request(*last_id, *head, max_pending, out);
            }
            Output::Response { status, tunnel } => {
                self.learn_side(side_seeing(dir, Kind::Response));
                if self.pending.is_empty() {
                    // An answer to a head still coming: its request, if its
                    // line was seen, is the one answered.
                    if let Some(early) = self.streams().0.answered_mid_head() {
                        let requests = request_direction(self.who.at.side);
                        self.on_output(requests, early, last_id, max_pending, out);
                    }
                }
                self.on_response(status, tunnel, out);
            }
            Output::End { body_bytes, .. } if self.carries_requests(dir) => {
                self.on_request_end(body_bytes);
            }
            Output::End {
                body_bytes,
                end_ns,
                complete,
            } => self.finish_front(end_ns, body_bytes, complete, out),
            Output::Desync(why) => {
                out.observe(&Observation::Anomaly(why));
                self.desync(out);
            }
        }
    }

    fn carries_requests(&self, dir: Direction) -> bool {
        self.who.side_known && (dir == Direction::In) == (self.who.at.side == Side::Server)
    }

    fn on_request(
        &mut self,
        id: RequestId,
        head: RequestHead,
        max_pending: usize,
        out: &mut dyn Observer,
    ) {
        let RequestHead {
            request,
            start_ns,
            tid,
            cut,
            bad_traceparent,
        } = head;
        let seq = self.requests_seen;
        self.requests_seen += 1;
        let started = Observation::Started(Started {
            id,
            at: self.who.at.clone(),
            request,
            start_ns,
            tid,
            seq,
        });
        out.observe(&started);
        if bad_traceparent {
            out.observe(&Observation::Anomaly(Anomaly::BadTraceparent));
        }
        if let Some(why) = cut {
            out.observe(&Observation::Anomaly(why));
        }
        if self.pending.len() >= max_pending {
            out.observe(&Observation::Abandoned {
                id,
                at: self.who.at.clone(),
                reason: AbandonReason::QueueFull,
            });
            // Its response will still come: it must not be taken for the
            // next request's.
            self.aligned = false;
            return;
        }
        if self.pending.is_empty() {
            if !self.aligned && !self.pipelined && self.streams().1.is_idle() {
                self.aligned = true;
            }
        } else if self.aligned {
            self.pipelined = true;
        }
        if let Observation::Started(Started { request, .. }) = started {
            self.pending.push_back(Pending {
                id,
                answering: Answering::of(&request.method),
                request,
                start_ns,
                tid,
                seq,
                verified: self.aligned,
                // The framing of a cut head is unknown, its body too.
                body_bytes: cut.map(|_| 0),
                status: None,
            });
        }
        if cut.is_some() {
            self.aligned = false;
        }
    }

    fn on_request_end(&mut self, body_bytes: u64) {
        // Only the newest request can still be reading its body; if it is not
        // queued (abandoned), the older ones already have theirs.
        if let Some(p) = self.pending.back_mut() {
            p.body_bytes.get_or_insert(body_bytes);
        }
    }

    fn on_response(&mut self, status: u16, tunnel: bool, out: &mut dyn Observer) {
        if tunnel {
            self.tunnel = true;
            self.streams().0.tunnel();
        } else if status < 200 {
            // Interim (100 Continue, 103 Early Hints): the final one counts.
            // 101 is final: the exchange ends with the switch.
            return;
        }
        match self.pending.front_mut() {
            Some(p) if p.verified => p.status = NonZeroU16::new(status),
            Some(_) => self.desync(out),
            None if self.aligned => out.observe(&Observation::Anomaly(Anomaly::UnpairedResponse)),
            None => {}
        }
    }

    /// The response to the front request ended (or the connection did).
    fn finish_front(
        &mut self,
        end_ns: u64,
        response_body_bytes: u64,
        complete: bool,
        out: &mut dyn Observer,
    ) {
        // No status: the response was not paired (see `on_response`).
        let Some(status) = self.pending.front().and_then(|p| p.status) else {
            return;
        };
        if let Some(p) = self.pending.pop_front() {
            // A server may answer before reading the whole request body.
            let request_body_bytes = p
                .body_bytes
                .unwrap_or_else(|| self.streams().0.body_bytes());
            out.observe(&Observation::Finished(Finished {
                id: p.id,
                at: self.who.at.clone(),
                request: p.request,
                status: status.get(),
                start_ns: p.start_ns,
                tid: p.tid,
                seq: p.seq,
                end_ns,
                request_body_bytes,
                response_body_bytes,
                complete,
            }));
        }
    }

    fn desync(&mut self, out: &mut dyn Observer) {
        self.abandon_all(AbandonReason::Desync, out);
        self.aligned = false;
    }

    fn abandon_all(&mut self, reason: AbandonReason, out: &mut dyn Observer) {
        for p in self.pending.drain(..) {
            out.observe(&Observation::Abandoned {
                id: p.id,
                at: self.who.at.clone(),
                reason,
            });
        }
    }

    /// The connection is gone: a response in progress ends where its last
    /// byte was seen; unanswered requests are abandoned for `reason`.
    fn shut(&mut self, reason: AbandonReason, out: &mut dyn Observer) {
        let (requests, responses) = self.streams();
        if requests.in_head() || responses.in_head() {
            out.observe(&Observation::Anomaly(Anomaly::BadHead));
        }
        if let Some(Output::End {
            body_bytes,
            end_ns,
            complete,
        }) = self.streams().1.close()
        {
            // Only a close ends a body delimited by the close: expiry saw none.
            let complete = complete && reason != AbandonReason::Expired;
            self.finish_front(end_ns, body_bytes, complete, out);
        }
        self.abandon_all(reason, out);
    }
}

/// The direction requests go for the process on `side`.
fn request_direction(side: Side) -> Direction {
    match side {
        Side::Server => Direction::In,
        Side::Client => Direction::Out,
    }
}

/// The side of a process that sees a head of `kind` going `dir`.
fn side_seeing(dir: Direction, kind: Kind) -> Side {
    match (dir, kind) {
        (Direction::In, Kind::Request) | (Direction::Out, Kind::Response) => Side::Server,
        (Direction::In, Kind::Response) | (Direction::Out, Kind::Request) => Side::Client,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::TraceParent;
    use bytes::Bytes;

    const T: u32 = 100;
    const LOCAL: &str = "10.0.0.1:8080";
    const PEER: &str = "10.0.0.2:40000";
    const GET: &[u8] = b"GET /a HTTP/1.1\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    fn open(conn_id: u64, role: RoleHint) -> Event {
        open_in(conn_id, T, role)
    }

    fn open_in(conn_id: u64, tgid: u32, role: RoleHint) -> Event {
        open_sock(conn_id, tgid, role, LOCAL, PEER)
    }

    fn open_sock(conn_id: u64, tgid: u32, role: RoleHint, local: &str, peer: &str) -> Event {
        Event::Open(ConnOpen {
            conn_id,
            tgid,
            fd: 5,
            ts_ns: 0,
            role,
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            comm: "srv".into(),
        })
    }

    fn cut(conn_id: u64, dir: Direction, ts_ns: u64, total_len: u32, payload: &[u8]) -> Event {
        Event::Data(Data {
            conn_id,
            tgid: T,
            tid: T,
            fd: 5,
            ts_ns,
            dir,
            total_len,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    fn data(conn_id: u64, dir: Direction, ts_ns: u64, payload: &[u8]) -> Event {
        cut(conn_id, dir, ts_ns, payload.len() as u32, payload)
    }

    /// `event`, a read or write, made by thread `tid` (else `T`).
    fn on_thread(tid: u32, mut event: Event) -> Event {
        if let Event::Data(d) = &mut event {
            d.tid = tid;
        }
        event
    }

    fn close(conn_id: u64, ts_ns: u64) -> Event {
        Event::Close {
            conn_id,
            tgid: T,
            fd: 5,
            ts_ns,
        }
    }

    fn run(tracker: &mut Tracker, events: &[Event]) -> Vec<Observation> {
        let mut out = Vec::new();
        for e in events {
            tracker.handle(e, &mut out);
        }
        out
    }

    fn track(events: &[Event]) -> Vec<Observation> {
        run(&mut Tracker::new(TrackerConfig::default()), events)
    }

    /// (id, status, start, end, complete) of each finished exchange.
    fn finished(out: &[Observation]) -> Vec<(RequestId, u16, u64, u64, bool)> {
        out.iter()
            .filter_map(|o| match o {
                Observation::Finished(f) => {
                    Some((f.id, f.status, f.start_ns, f.end_ns, f.complete))
                }
                _ => None,
            })
            .collect()
    }

    fn abandoned(out: &[Observation]) -> Vec<(RequestId, AbandonReason)> {
        out.iter()
            .filter_map(|o| match o {
                Observation::Abandoned { id, reason, .. } => Some((*id, *reason)),
                _ => None,
            })
            .collect()
    }

    fn anomalies(out: &[Observation]) -> Vec<Anomaly> {
        out.iter()
            .filter_map(|o| match o {
                Observation::Anomaly(a) => Some(*a),
                _ => None,
            })
            .collect()
    }

    fn started(out: &[Observation]) -> Vec<(RequestId, String)> {
        out.iter()
            .filter_map(|o| match o {
                Observation::Started(s) => Some((s.id, s.request.path.clone())),
                _ => None,
            })
            .collect()
    }

    use Direction::{In, Out};

    #[test]
    fn server_exchange_in_full() {
        let out = track(&[
            open(1, RoleHint::Server),
            on_thread(
                7,
                data(
                    1,
                    In,
                    10,
                    b"POST /users?id=1 HTTP/1.1\r\nContent-Length: 3\r\n\
                      traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
                      tracestate: congo=t61rcWkgMzE\r\nCookie: secret\r\n\r\nabc",
                ),
            ),
            on_thread(
                8,
                data(
                    1,
                    Out,
                    20,
                    b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n",
                ),
            ),
            on_thread(9, data(1, Out, 25, b"ok")),
        ]);
        let at = Endpoint {
            tgid: T,
            conn_id: 1,
            side: Side::Server,
            local: "10.0.0.1:8080".parse().unwrap(),
            peer: "10.0.0.2:40000".parse().unwrap(),
        };
        let request = Request {
            method: "POST".into(),
            path: "/users".into(),
            path_truncated: false,
            version: "1.1",
            trace: Some(Box::new(TraceParent {
                trace_id: [
                    0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c,
                    0x80, 0x31, 0x9c,
                ],
                parent_id: [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31],
                flags: 1,
                tracestate: Some("congo=t61rcWkgMzE".into()),
            })),
        };
        assert_eq!(
            out,
            [
                Observation::Started(Started {
                    id: 1,
                    at: at.clone(),
                    request: request.clone(),
                    start_ns: 10,
                    tid: 7,
                    seq: 0,
                }),
                Observation::Finished(Finished {
                    id: 1,
                    at,
                    request,
                    status: 201,
                    start_ns: 10,
                    tid: 7,
                    seq: 0,
                    end_ns: 25,
                    request_body_bytes: 3,
                    response_body_bytes: 2,
                    complete: true,
                }),
            ]
        );
    }

    /// (id, seq, tid) of each started request; checks that each finished
    /// one repeats what its start said.
    fn numbering(out: &[Observation]) -> Vec<(RequestId, u64, u32)> {
        let mut started = Vec::new();
        for o in out {
            match o {
                Observation::Started(s) => started.push((s.id, s.seq, s.tid)),
                Observation::Finished(f) => assert!(
                    started.contains(&(f.id, f.seq, f.tid)),
                    "{f:?} does not match its start"
                ),
                _ => {}
            }
        }
        started
    }

    #[test]
    fn the_thread_is_the_one_that_moved_the_first_request_byte() {
        // (role, request direction, response direction)
        let cases = [
            (RoleHint::Server, In, Out),
            (RoleHint::Client, Out, In),
            (RoleHint::Unknown, Out, In),
            (RoleHint::Unknown, In, Out),
        ];
        for (role, req, resp) in cases {
            let out = track(&[
                open(1, role),
                on_thread(11, data(1, req, 1, b"GET /a HT")),
                on_thread(12, data(1, req, 2, b"TP/1.1\r\n\r\nGET /b HTTP/1.1\r\n")),
                on_thread(13, data(1, resp, 3, OK)),
                on_thread(14, data(1, req, 4, b"\r\n")),
                on_thread(15, data(1, resp, 5, OK)),
            ]);
            assert_eq!(finished(&out).len(), 2, "{role:?} {req:?}");
            assert_eq!(
                numbering(&out),
                [(1, 0, 11), (2, 1, 12)],
                "{role:?} {req:?}"
            );
        }
    }

    #[test]
    fn requests_are_numbered_per_connection_across_fds_and_revivals() {
        let mut tracker = Tracker::new(TrackerConfig {
            idle_timeout_ns: 100,
            max_pending: 1,
            ..TrackerConfig::default()
        });
        let mut out = run(
            &mut tracker,
            &[
                open(1, RoleHint::Client),
                data(1, Out, 1, GET),
                // A dup of fd 1.
                open(2, RoleHint::Unknown),
                data(2, In, 2, OK),
                // The second is abandoned (queue full) but numbered.
                data(2, Out, 3, b"GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n"),
                data(1, In, 4, OK),
                data(1, In, 5, OK),
                // Another socket numbers its own requests.
                open_sock(3, T, RoleHint::Client, LOCAL, "10.0.0.2:40001"),
                data(3, Out, 6, GET),
                data(3, In, 7, OK),
            ],
        );
        tracker.expire(200, &mut out);
        assert!(tracker.is_empty());
        out.extend(run(
            &mut tracker,
            &[
                data(2, Out, 300, GET),
                data(1, In, 301, OK),
                // A cut head is numbered too.
                cut(1, Out, 302, 500, b"GET /d HTTP/1.1\r\nCookie: x"),
                data(2, In, 303, OK),
                close(1, 304),
                close(2, 305),
                // A new socket with the same addresses starts again from 0.
                open(4, RoleHint::Client),
                data(4, Out, 306, GET),
            ],
        ));
        assert_eq!(abandoned(&out), [(3, AbandonReason::QueueFull)]);
        assert_eq!(finished(&out).len(), 5);
        assert_eq!(
            numbering(&out),
            [
                (1, 0, T),
                (2, 1, T),
                (3, 2, T),
                (4, 0, T),
                (5, 3, T),
                (6, 4, T),
                (7, 0, T)
            ]
        );
    }

    #[test]
    fn a_bad_traceparent_is_counted_once_its_request_started() {
        let out = track(&[
            open(1, RoleHint::Server),
            data(
                1,
                In,
                1,
                b"GET /a HTTP/1.1\r\ntraceparent: 00-abc-01\r\n\r\n",
            ),
            data(1, Out, 2, OK),
        ]);
        let [Observation::Started(s), Observation::Anomaly(Anomaly::BadTraceparent), Observation::Finished(f)] =
            &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!((&s.request.trace, &f.request.trace), (&None, &None));
        // A response's trace context is not even read.
        let out = track(&[
            open(1, RoleHint::Client),
            data(1, Out, 1, GET),
            data(
                1,
                In,
                2,
                b"HTTP/1.1 200 OK\r\ntraceparent: 00-abc-01\r\nContent-Length: 0\r\n\r\n",
            ),
        ]);
        assert_eq!(anomalies(&out), []);
        assert_eq!(finished(&out), [(1, 200, 1, 2, true)]);
    }

    #[test]
    fn unknown_role_is_learnt_from_the_first_head() {
        let cases = [
            (
                Out,
                b"GET /c HTTP/1.1\r\n\r\n" as &[u8],
                In,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" as &[u8],
                Side::Client,
            ),
            (
                In,
                b"GET /s HTTP/1.1\r\n\r\n",
                Out,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Side::Server,
            ),
        ];
        for (req_dir, req, resp_dir, resp, side) in cases {
            let out = track(&[
                open(1, RoleHint::Unknown),
                data(1, req_dir, 1, req),
                data(1, resp_dir, 2, resp),
            ]);
            let Some(Observation::Finished(f)) = out.last() else {
                panic!("{out:?}")
            };
            assert_eq!((f.at.side, f.status), (side, 200));
        }
        // A response first: written means server; unpaired all the same.
        let out = track(&[
            open(1, RoleHint::Unknown),
            data(1, Out, 1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            data(1, In, 2, b"GET /next HTTP/1.1\r\n\r\n"),
            data(1, Out, 3, b"HTTP/1.1 204 No Content\r\n\r\n"),
        ]);
        assert_eq!(anomalies(&out), [Anomaly::UnpairedResponse]);
        assert_eq!(finished(&out), [(1, 204, 2, 3, true)]);
    }

    #[test]
    fn events_of_untracked_connections() {
        let mut tracker = Tracker::new(TrackerConfig {
            max_connections: 1,
            ..TrackerConfig::default()
        });
        let out = run(
            &mut tracker,
            &[
                open(1, RoleHint::Server),
                open(2, RoleHint::Server),
                data(2, In, 1, b"GET / HTTP/1.1\r\n\r\n"),
                close(2, 2),
                data(3, In, 1, b"GET / HTTP/1.1\r\n\r\n"),
            ],
        );
        assert_eq!(
            out,
            [
                Anomaly::TooManyConnections,
                Anomaly::UnknownConnection,
                Anomaly::UnknownConnection
            ]
            .map(Observation::Anomaly)
        );
        assert_eq!(tracker.len(), 1);
        run(&mut tracker, &[close(1, 3)]);
        assert!(tracker.is_empty());
    }

    #[test]
    fn queue_full_abandons_the_newest_and_unaligns() {
        let mut tracker = Tracker::new(TrackerConfig {
            max_pending: 2,
            ..TrackerConfig::default()
        });
        let out = run(
            &mut tracker,
            &[
                open(1, RoleHint::Server),
                data(
                    1,
                    In,
                    1,
                    b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n",
                ),
                data(1, Out, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
                data(1, Out, 3, b"HTTP/1.1 201 OK\r\nContent-Length: 0\r\n\r\n"),
                data(1, Out, 4, b"HTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\n"),
            ],
        );
        assert_eq!(abandoned(&out), [(3, AbandonReason::QueueFull)]);
        assert_eq!(finished(&out), [(1, 200, 1, 2, true), (2, 201, 1, 3, true)]);
        assert_eq!(
            anomalies(&out),
            [],
            "the third response answers the abandoned request"
        );
    }

    #[test]
    fn process_exit_ends_that_process_only() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let out = run(
            &mut tracker,
            &[
                open_in(1, 7, RoleHint::Server),
                open_in(2, 7, RoleHint::Server),
                open_in(3, 8, RoleHint::Server),
                data(1, In, 1, b"GET /a HTTP/1.1\r\n\r\n"),
                data(2, In, 2, b"GET /b HTTP/1.1\r\n\r\n"),
                data(2, Out, 3, b"HTTP/1.0 200 OK\r\n\r\npartial"),
                data(3, In, 4, b"GET /c HTTP/1.1\r\n\r\n"),
                Event::ProcessExit { tgid: 7 },
            ],
        );
        // Exit closes the sockets: the close-delimited response is complete.
        assert_eq!(abandoned(&out), [(1, AbandonReason::ProcessExited)]);
        assert_eq!(finished(&out), [(2, 200, 2, 3, true)]);
        assert_eq!(tracker.len(), 1);
    }

    #[test]
    fn expiry_drops_idle_connections() {
        let mut tracker = Tracker::new(TrackerConfig {
            idle_timeout_ns: 100,
            ..TrackerConfig::default()
        });
        let mut out = run(
            &mut tracker,
            &[
                open(1, RoleHint::Server),
                open(2, RoleHint::Server),
                open(3, RoleHint::Server),
                data(1, In, 10, b"GET /a HTTP/1.1\r\n\r\n"),
                data(2, In, 20, b"GET /b HTTP/1.1\r\n\r\n"),
                data(2, Out, 30, b"HTTP/1.0 200 OK\r\n\r\nstreaming"),
                data(3, In, 500, b"GET /c HTTP/1.1\r\n\r\n"),
            ],
        );
        tracker.expire(200, &mut out);
        assert_eq!(abandoned(&out), [(1, AbandonReason::Expired)]);
        // No close was seen: the close-delimited body may not be complete.
        assert_eq!(finished(&out), [(2, 200, 20, 30, false)]);
        assert_eq!(tracker.len(), 1);
        tracker.expire(600, &mut out);
        assert_eq!(tracker.len(), 1, "idle for exactly the timeout is kept");
        tracker.expire(601, &mut out);
        assert!(tracker.is_empty());
    }

    #[test]
    fn cut_head_is_paired_and_the_next_request_realigns() {
        let out = track(&[
            open(1, RoleHint::Server),
            cut(1, In, 1, 3000, b"GET /big?q=1 HTTP/1.1\r\nCookie: aaaa"),
            data(1, Out, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            data(1, In, 3, b"GET /next HTTP/1.1\r\n\r\n"),
            data(
                1,
                Out,
                4,
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            ),
        ]);
        assert_eq!(anomalies(&out), [Anomaly::Gap]);
        assert_eq!(finished(&out), [(1, 200, 1, 2, true), (2, 404, 3, 4, true)]);
    }

    /// A head too large to hold, read in full over many reads (as with
    /// `--capture-bytes` at its maximum): paired as a cut one, counted as
    /// `HeadTooLarge`; the rest of the head, read later, is not taken for
    /// requests.
    #[test]
    fn head_too_large_is_paired_like_a_cut_one() {
        let filler = b"X-Filler: abcdefghijklmnopqrstuvwxyz\r\n".repeat(200);
        let mut events = vec![
            open(1, RoleHint::Server),
            data(1, In, 1, b"GET /big HTTP/1.1\r\n"),
        ];
        events.extend((2..6).map(|ts| data(1, In, ts, &filler)));
        events.extend([
            data(1, In, 6, b"X-Last: 1\r\n\r\n"),
            data(1, Out, 7, OK),
            data(1, In, 8, GET),
            data(1, Out, 9, OK),
        ]);
        let out = track(&events);
        assert_eq!(anomalies(&out), [Anomaly::HeadTooLarge]);
        assert_eq!(started(&out), [(1, "/big".into()), (2, "/a".into())]);
        assert_eq!(finished(&out), [(1, 200, 1, 7, true), (2, 200, 8, 9, true)]);
        assert_eq!(abandoned(&out), []);
    }

    /// A server refusing a head before its end (431 for too many fields):
    /// the answer pairs with the request whose line was seen, the head is
    /// counted `BadHead` once (not again at the close), and the rest of the
    /// head read later is ignored.
    #[test]
    fn an_answer_before_the_end_of_a_head_pairs_with_its_request() {
        const REFUSED: &[u8] = b"HTTP/1.1 431 Too Many\r\nContent-Length: 0\r\n\r\n";
        // (case, bytes of the head before the answer, path of the request paired).
        let cases: &[(&str, &[u8], Option<&str>)] = &[
            (
                "request line seen",
                b"GET /big?q=1 HTTP/1.1\r\nX-A: 1\r\n",
                Some("/big"),
            ),
            ("request line cut before its path", b"GET http://h", None),
        ];
        for (name, head_start, paired) in cases {
            for role in [RoleHint::Server, RoleHint::Unknown] {
                let out = track(&[
                    open(1, role),
                    data(1, In, 1, head_start),
                    data(1, Out, 2, REFUSED),
                    data(1, In, 3, b"X-B: 2\r\n\r\n"),
                    close(1, 4),
                ]);
                let case = format!("{name}, {role:?}");
                assert_eq!(anomalies(&out), [Anomaly::BadHead], "{case}");
                let want_started: Vec<_> = paired.iter().map(|p| (1, p.to_string())).collect();
                assert_eq!(started(&out), want_started, "{case}");
                let want_finished: Vec<_> = paired.iter().map(|_| (1, 431, 1, 2, true)).collect();
                assert_eq!(finished(&out), want_finished, "{case}");
                assert_eq!(abandoned(&out), [], "{case}");
            }
        }
        // With a request outstanding, the answer is that request's: a head
        // still coming is a pipelined one, left alone.
        let out = track(&[
            open(1, RoleHint::Server),
            data(1, In, 1, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n"),
            data(1, Out, 2, OK),
            data(1, In, 3, b"\r\n"),
            data(1, Out, 4, OK),
        ]);
        assert_eq!(anomalies(&out), []);
        assert_eq!(finished(&out), [(1, 200, 1, 2, true), (2, 200, 1, 4, true)]);
    }

    #[test]
    fn request_stream_gap_drops_answers_to_lost_requests() {
        let out = track(&[
            open(1, RoleHint::Server),
            data(1, In, 1, b"GET /1 HTTP/1.1\r\n\r\n"),
            data(1, Out, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            // A read whose first request is whole and whose uncaptured tail
            // holds a second one nobody can see.
            cut(1, In, 3, 200, b"GET /2 HTTP/1.1\r\n\r\n"),
            data(1, Out, 4, b"HTTP/1.1 201 OK\r\nContent-Length: 0\r\n\r\n"),
            data(1, Out, 5, b"HTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\n"),
            data(1, In, 6, b"GET /4 HTTP/1.1\r\n\r\n"),
            data(1, Out, 7, b"HTTP/1.1 203 OK\r\nContent-Length: 0\r\n\r\n"),
        ]);
        // Neither 201 nor 202 is paired or counted: both answer requests lost
        // with the gap, which is counted once.
        assert_eq!(anomalies(&out), [Anomaly::Gap]);
        assert_eq!(abandoned(&out), [(2, AbandonReason::Desync)]);
        assert_eq!(finished(&out), [(1, 200, 1, 2, true), (3, 203, 6, 7, true)]);
    }

    #[test]
    fn request_during_an_unsynced_response_is_not_trusted() {
        let out = track(&[
            open(1, RoleHint::Server),
            data(1, In, 1, b"GET /1 HTTP/1.1\r\n\r\n"),
            data(
                1,
                Out,
                2,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            cut(1, Out, 3, 5000, b"10\r\n0123456789abcdef\r\n"),
            // The response stream is still unsynced: this request may be
            // answered by the rest of whatever was lost.
            data(1, In, 4, b"GET /2 HTTP/1.1\r\n\r\n"),
            data(1, Out, 5, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            data(1, In, 6, b"GET /3 HTTP/1.1\r\n\r\n"),
            data(1, Out, 7, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ]);
        assert_eq!(anomalies(&out), [Anomaly::Gap]);
        assert_eq!(
            abandoned(&out),
            [(1, AbandonReason::Desync), (2, AbandonReason::Desync)]
        );
        assert_eq!(finished(&out), [(3, 200, 6, 7, true)]);
    }

    #[test]
    fn pipelining_rules_out_realignment() {
        let out = track(&[
            open(1, RoleHint::Server),
            data(1, In, 1, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"),
            data(1, Out, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            cut(1, In, 3, 100, b"GET /3 HTTP/1.1\r\n\r\n"),
            data(1, Out, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            data(1, In, 5, b"GET /5 HTTP/1.1\r\n\r\n"),
            data(1, Out, 6, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ]);
        assert_eq!(finished(&out), [(1, 200, 1, 2, true), (2, 200, 1, 2, true)]);
        assert_eq!(
            abandoned(&out),
            [(3, AbandonReason::Desync), (4, AbandonReason::Desync)]
        );
    }

    #[test]
    fn upgrade_and_connect_end_http() {
        let out = track(&[
            open(1, RoleHint::Server),
            data(
                1,
                In,
                1,
                b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            ),
            data(
                1,
                Out,
                2,
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            ),
            data(1, In, 3, b"\x81\x85\x00\x00\x00\x00hello"),
            data(1, Out, 4, b"\x81\x05hello"),
            close(1, 5),
            open(2, RoleHint::Client),
            data(2, Out, 6, b"CONNECT db:5432 HTTP/1.1\r\n\r\n"),
            data(2, In, 7, b"HTTP/1.1 200 Connection established\r\n\r\n"),
            data(2, Out, 8, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
            close(2, 9),
        ]);
        assert_eq!(finished(&out), [(1, 101, 1, 2, true), (2, 200, 6, 7, true)]);
        assert_eq!(anomalies(&out), []);
    }

    #[test]
    fn early_response_takes_the_request_body_read_so_far() {
        let out = track(&[
            open(1, RoleHint::Server),
            data(
                1,
                In,
                1,
                b"PUT /f HTTP/1.1\r\nContent-Length: 100000\r\n\r\n0123456789",
            ),
            data(
                1,
                Out,
                2,
                b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ),
            close(1, 3),
        ]);
        let Some(Observation::Finished(f)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!((f.status, f.request_body_bytes), (413, 10));
    }

    #[test]
    fn close_mid_response_and_before_response() {
        let out = track(&[
            open(1, RoleHint::Server),
            data(1, In, 1, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"),
            data(
                1,
                Out,
                2,
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345",
            ),
            close(1, 9),
        ]);
        assert_eq!(finished(&out), [(1, 200, 1, 2, false)]);
        assert_eq!(abandoned(&out), [(2, AbandonReason::ClosedUnanswered)]);
    }

    #[test]
    fn fds_of_one_socket_are_one_connection() {
        use RoleHint::{Client, Unknown};
        // (first fd's role, second fd's role, its tgid, local, peer, one connection)
        let cases = [
            (Client, Unknown, T, LOCAL, PEER, true),
            (Unknown, Client, T, LOCAL, PEER, true),
            (Unknown, Unknown, T, LOCAL, PEER, true),
            (Client, Client, T, LOCAL, PEER, false),
            (Client, Unknown, T + 1, LOCAL, PEER, false),
            (Client, Unknown, T, LOCAL, "10.0.0.2:40001", false),
            (Client, Unknown, T, "10.0.0.1:8081", PEER, false),
        ];
        for (first, second, tgid, local, peer, merged) in cases {
            let mut tracker = Tracker::new(TrackerConfig::default());
            let out = run(
                &mut tracker,
                &[
                    open_sock(1, T, first, LOCAL, PEER),
                    data(1, Out, 1, GET),
                    open_sock(2, tgid, second, local, peer),
                    data(2, In, 2, OK),
                ],
            );
            let case = (first, second, tgid, local, peer);
            if merged {
                assert_eq!(finished(&out), [(1, 200, 1, 2, true)], "{case:?}");
                assert_eq!(anomalies(&out), [], "{case:?}");
                assert_eq!(tracker.len(), 1, "{case:?}");
            } else {
                assert_eq!(finished(&out), [], "{case:?}");
                assert_eq!(anomalies(&out), [Anomaly::UnpairedResponse], "{case:?}");
                assert_eq!(tracker.len(), 2, "{case:?}");
            }
        }
    }

    #[test]
    fn unread_addresses_never_join() {
        for (local, peer) in [
            ("0.0.0.0:0", "0.0.0.0:0"),
            ("0.0.0.0:0", PEER),
            (LOCAL, "0.0.0.0:0"),
            ("[::]:8080", "[::1]:40000"),
            (LOCAL, "10.0.0.2:0"),
        ] {
            let mut tracker = Tracker::new(TrackerConfig::default());
            let out = run(
                &mut tracker,
                &[
                    open_sock(1, T, RoleHint::Unknown, local, peer),
                    data(1, Out, 1, GET),
                    open_sock(2, T, RoleHint::Unknown, local, peer),
                    data(2, In, 2, OK),
                ],
            );
            assert_eq!(finished(&out), [], "{local} {peer}");
            assert_eq!(tracker.len(), 2, "{local} {peer}");
        }
    }

    #[test]
    fn connection_ends_with_its_last_fd() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut out = run(
            &mut tracker,
            &[
                open(1, RoleHint::Server),
                data(1, In, 1, GET),
                open(2, RoleHint::Unknown),
                data(2, Out, 2, b"HTTP/1.0 200 OK\r\n\r\npart"),
                close(1, 3),
            ],
        );
        assert_eq!(finished(&out), [], "another fd still holds the socket");
        assert_eq!(tracker.len(), 1);
        out.extend(run(
            &mut tracker,
            &[
                data(1, In, 4, GET),
                // Announced again after its close: ignored, as any repeat.
                open(1, RoleHint::Server),
                data(1, In, 5, GET),
                data(2, Out, 6, b"ial"),
                close(2, 7),
            ],
        ));
        assert_eq!(finished(&out), [(1, 200, 1, 6, true)]);
        assert_eq!(
            anomalies(&out),
            [Anomaly::UnknownConnection, Anomaly::UnknownConnection]
        );
        assert!(tracker.is_empty());
    }

    #[test]
    fn exit_and_expiry_take_every_fd() {
        let mut tracker = Tracker::new(TrackerConfig {
            idle_timeout_ns: 100,
            ..TrackerConfig::default()
        });
        let mut out = run(
            &mut tracker,
            &[
                open_in(1, 7, RoleHint::Client),
                open_in(2, 7, RoleHint::Unknown),
                data(1, Out, 1, GET),
                Event::ProcessExit { tgid: 7 },
                data(2, In, 2, OK),
            ],
        );
        assert_eq!(abandoned(&out), [(1, AbandonReason::ProcessExited)]);
        assert_eq!(anomalies(&out), [Anomaly::UnknownConnection]);
        assert!(tracker.is_empty());

        out = run(
            &mut tracker,
            &[
                open(3, RoleHint::Client),
                open(4, RoleHint::Unknown),
                data(3, Out, 10, GET),
                data(
                    4,
                    In,
                    150,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart",
                ),
            ],
        );
        tracker.expire(200, &mut out);
        assert_eq!(tracker.len(), 1, "the read on the second fd is activity");
        tracker.expire(251, &mut out);
        assert_eq!(finished(&out), [(2, 200, 10, 150, false)]);
        assert!(tracker.is_empty());
        // Buried with both fds: a write on one revives it, and it ends with
        // the close of both.
        out = run(
            &mut tracker,
            &[
                data(3, Out, 300, GET),
                close(4, 301),
                close(3, 302),
                data(4, In, 303, OK),
            ],
        );
        assert_eq!(abandoned(&out), [(3, AbandonReason::ClosedUnanswered)]);
        assert_eq!(anomalies(&out), [Anomaly::UnknownConnection]);
        assert!(tracker.is_empty());
    }

    fn idle_100(max_connections: usize) -> Tracker {
        Tracker::new(TrackerConfig {
            idle_timeout_ns: 100,
            max_connections,
            ..TrackerConfig::default()
        })
    }

    /// Nothing of a forgotten connection is left in any index.
    fn assert_forgotten(tracker: &Tracker, key: u64) {
        assert!(!tracker.conns.contains_key(&key));
        assert!(!tracker.graves.contains(key));
        assert!(!tracker.ids.values().any(|&k| k == key));
        assert!(!tracker.by_socket.values().any(|&k| k == key));
        assert!(!tracker.by_tgid.values().any(|keys| keys.contains(&key)));
    }

    #[test]
    fn an_expired_connection_is_revived_by_its_next_read_or_write() {
        // (role announced, request direction, response direction, side)
        let cases = [
            (RoleHint::Server, In, Out, Side::Server),
            (RoleHint::Unknown, In, Out, Side::Server),
            (RoleHint::Client, Out, In, Side::Client),
            (RoleHint::Unknown, Out, In, Side::Client),
        ];
        for (role, req, resp, side) in cases {
            let mut tracker = idle_100(16);
            let mut out = run(
                &mut tracker,
                &[open(1, role), data(1, req, 1, GET), data(1, resp, 2, OK)],
            );
            tracker.expire(200, &mut out);
            assert!(tracker.is_empty(), "{role:?}");
            assert_eq!(tracker.graves.graves.len(), 1, "{role:?}");
            out.extend(run(
                &mut tracker,
                &[data(1, req, 1000, GET), data(1, resp, 1001, OK)],
            ));
            assert_eq!(
                finished(&out),
                [(1, 200, 1, 2, true), (2, 200, 1000, 1001, true)],
                "{role:?}"
            );
            assert_eq!(anomalies(&out), [], "{role:?}");
            let Some(Observation::Finished(f)) = out.last() else {
                panic!("{out:?}")
            };
            assert_eq!((f.at.conn_id, f.at.side), (1, side), "{role:?}");
            assert_eq!((tracker.len(), tracker.graves.graves.len()), (1, 0));
            // Idle again: buried again, and revived again.
            tracker.expire(1200, &mut out);
            out = run(
                &mut tracker,
                &[data(1, req, 2000, GET), data(1, resp, 2001, OK)],
            );
            assert_eq!(finished(&out), [(3, 200, 2000, 2001, true)], "{role:?}");
        }
    }

    #[test]
    fn after_expiry_with_requests_outstanding_a_late_answer_is_not_paired() {
        let mut tracker = idle_100(16);
        let mut out = run(
            &mut tracker,
            &[open(1, RoleHint::Client), data(1, Out, 1, GET)],
        );
        tracker.expire(200, &mut out);
        assert_eq!(abandoned(&out), [(1, AbandonReason::Expired)]);
        out = run(
            &mut tracker,
            &[
                // The answer to the expired request: neither paired nor counted.
                data(1, In, 300, OK),
                data(1, Out, 400, GET),
                data(1, In, 401, OK),
            ],
        );
        assert_eq!(finished(&out), [(2, 200, 400, 401, true)]);
        assert_eq!(anomalies(&out), []);

        // Expired with nothing outstanding: a response without a request is
        // one.
        tracker.expire(600, &mut out);
        out = run(&mut tracker, &[data(1, In, 700, OK)]);
        assert_eq!(anomalies(&out), [Anomaly::UnpairedResponse]);
    }

    #[test]
    fn a_grave_is_forgotten_with_its_last_fd_or_its_process() {
        // (events after the expiry of fds 1 and 2 of process T, whether the
        // connection still revives)
        let cases = [
            (vec![close(1, 300), close(2, 301)], false),
            (vec![Event::ProcessExit { tgid: T }], false),
            (vec![close(1, 300)], true),
            (vec![Event::ProcessExit { tgid: T + 1 }], true),
        ];
        for (events, revives) in cases {
            let mut tracker = idle_100(16);
            let mut out = run(
                &mut tracker,
                &[
                    open(1, RoleHint::Server),
                    open(2, RoleHint::Unknown),
                    data(1, In, 1, GET),
                    data(2, Out, 2, OK),
                ],
            );
            tracker.expire(200, &mut out);
            out = run(&mut tracker, &events);
            assert_eq!(out, [], "{events:?}");
            out = run(
                &mut tracker,
                &[data(2, In, 400, GET), data(2, Out, 401, OK)],
            );
            if revives {
                assert_eq!(finished(&out), [(2, 200, 400, 401, true)], "{events:?}");
                assert_eq!(anomalies(&out), [], "{events:?}");
            } else {
                assert_eq!(finished(&out), [], "{events:?}");
                assert_eq!(
                    anomalies(&out),
                    [Anomaly::UnknownConnection, Anomaly::UnknownConnection],
                    "{events:?}"
                );
                assert_forgotten(&tracker, 1);
            }
        }
    }

    #[test]
    fn a_revival_into_a_full_table_is_counted_once() {
        let mut tracker = idle_100(1);
        let mut out = run(
            &mut tracker,
            &[open(1, RoleHint::Server), data(1, In, 1, GET)],
        );
        tracker.expire(200, &mut out);
        out = run(
            &mut tracker,
            &[
                open_sock(2, T, RoleHint::Server, LOCAL, "10.0.0.2:40001"),
                data(1, In, 300, GET),
                data(1, In, 301, GET),
            ],
        );
        assert_eq!(
            anomalies(&out),
            [Anomaly::TooManyConnections, Anomaly::UnknownConnection]
        );
        assert_eq!(tracker.len(), 1);
        assert_forgotten(&tracker, 1);
    }

    #[test]
    fn graves_are_bounded_and_the_oldest_burial_goes_first() {
        let mut tracker = idle_100(2);
        let peer = |id: u64| format!("10.0.0.2:{}", 40000 + id);
        let mut out = run(
            &mut tracker,
            &[
                open_sock(1, T, RoleHint::Server, LOCAL, &peer(1)),
                open_sock(2, T, RoleHint::Server, LOCAL, &peer(2)),
            ],
        );
        tracker.expire(200, &mut out);
        // Fd 1 is used again and buried after 2.
        tracker.handle(&data(1, In, 300, GET), &mut out);
        tracker.handle(&data(1, Out, 301, OK), &mut out);
        tracker.expire(500, &mut out);
        tracker.handle(
            &open_sock(3, T, RoleHint::Server, LOCAL, &peer(3)),
            &mut out,
        );
        tracker.handle(&data(3, In, 501, GET), &mut out);
        tracker.expire(700, &mut out);
        assert_eq!(abandoned(&out), [(2, AbandonReason::Expired)]);
        assert_eq!(tracker.graves.graves.len(), 2);
        assert_forgotten(&tracker, 2);
        out = run(
            &mut tracker,
            &[
                data(2, In, 800, GET),
                data(1, In, 801, GET),
                data(3, Out, 802, OK),
            ],
        );
        assert_eq!(anomalies(&out), [Anomaly::UnknownConnection]);
        assert_eq!(started(&out), [(3, "/a".to_string())]);
        assert_eq!(tracker.len(), 2);

        // Buried and revived over and over, a connection leaves stale entries
        // in the burial order; they stay bounded.
        for round in 0..1000 {
            let now = 1000 + round * 1000;
            tracker.expire(now, &mut out);
            tracker.handle(&data(1, In, now + 1, GET), &mut out);
            tracker.handle(&data(1, Out, now + 2, OK), &mut out);
            assert!(tracker.graves.order.len() <= 2 * 2 + Graves::SLACK + 1);
        }
    }

    #[test]
    fn a_buried_socket_is_joined_by_a_new_fd() {
        let mut tracker = idle_100(16);
        let mut out = run(
            &mut tracker,
            &[
                open(1, RoleHint::Client),
                data(1, Out, 1, GET),
                data(1, In, 2, OK),
            ],
        );
        tracker.expire(200, &mut out);
        out = run(
            &mut tracker,
            &[
                open(2, RoleHint::Unknown),
                data(2, Out, 300, GET),
                data(1, In, 301, OK),
                // A connect with the same addresses is another socket.
                open(3, RoleHint::Client),
            ],
        );
        assert_eq!(finished(&out), [(2, 200, 300, 301, true)]);
        let Some(Observation::Finished(f)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(f.at.conn_id, 1);
        assert_eq!(tracker.len(), 2);
    }

    #[test]
    fn a_buried_tunnel_stays_a_tunnel() {
        let mut tracker = idle_100(16);
        let mut out = run(
            &mut tracker,
            &[
                open(1, RoleHint::Server),
                data(
                    1,
                    In,
                    1,
                    b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                ),
                data(
                    1,
                    Out,
                    2,
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                ),
            ],
        );
        tracker.expire(200, &mut out);
        out = run(
            &mut tracker,
            &[
                data(1, In, 300, b"\x81\x85\x00\x00\x00\x00hello"),
                data(1, Out, 301, b"\x81\x05hello"),
            ],
        );
        assert_eq!(out, []);
        assert_eq!(tracker.len(), 1);
    }

    #[test]
    fn first_head_on_any_fd_decides_the_side() {
        let out = track(&[
            open(1, RoleHint::Unknown),
            open(2, RoleHint::Unknown),
            data(2, In, 1, GET),
            data(1, Out, 2, OK),
        ]);
        let [Observation::Started(_), Observation::Finished(f)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (f.at.conn_id, f.at.side, f.start_ns, f.end_ns),
            (1, Side::Server, 1, 2)
        );
    }

    #[test]
    fn a_socket_reusing_addresses_is_joined_by_its_own_fds() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let out = run(
            &mut tracker,
            &[
                open(1, RoleHint::Client),
                data(1, Out, 1, GET),
                // Its close was missed: the addresses now belong to a new socket.
                open(2, RoleHint::Client),
                data(2, Out, 2, b"GET /b HTTP/1.1\r\n\r\n"),
                open(3, RoleHint::Unknown),
                data(3, In, 3, OK),
            ],
        );
        assert_eq!(finished(&out), [(2, 200, 2, 3, true)]);
        assert_eq!(tracker.len(), 2);
    }

    #[test]
    fn fds_per_socket_and_connections_are_bounded() {
        let mut tracker = Tracker::new(TrackerConfig {
            max_connections: 2,
            ..TrackerConfig::default()
        });
        let mut events: Vec<_> = (1..=6).map(|id| open(id, RoleHint::Unknown)).collect();
        events.extend([
            open_sock(7, T, RoleHint::Unknown, LOCAL, "10.0.0.2:40001"),
            data(1, Out, 1, GET),
            data(4, In, 2, OK),
            data(5, Out, 3, GET),
            data(6, In, 4, OK),
        ]);
        let out = run(&mut tracker, &events);
        // Fds 1 to 4 are one connection; 5 starts another, which 6 joins.
        assert_eq!(finished(&out), [(1, 200, 1, 2, true), (2, 200, 3, 4, true)]);
        assert_eq!(anomalies(&out), [Anomaly::TooManyConnections]);
        assert_eq!(tracker.len(), 2);
        run(
            &mut tracker,
            &(1..=4).map(|id| close(id, 5)).collect::<Vec<_>>(),
        );
        assert_eq!(tracker.len(), 1);
        run(&mut tracker, &[close(5, 6), close(6, 6)]);
        assert!(tracker.is_empty());
    }

    /// xorshift64*: enough randomness for shuffling splits, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random exchange: the bytes of the request and the response, and the
    /// (path, status, request body, response body) the tracker must find.
    fn random_exchange(rng: &mut Rng, n: u64) -> (Vec<u8>, Vec<u8>, (String, u16, u64, u64)) {
        let path = format!("/r/{n}");
        let req_body = rng.below(3) * rng.below(300);
        let mut req = if req_body > 0 {
            format!("POST {path}?x={n} HTTP/1.1\r\nHost: h\r\nContent-Length: {req_body}\r\n\r\n")
                .into_bytes()
        } else {
            format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes()
        };
        req.extend((0..req_body).map(|i| b'a' + (i % 26) as u8));
        let status = [200, 201, 204, 304, 404, 500][rng.below(6) as usize];
        let mut resp = Vec::new();
        if rng.below(4) == 0 {
            resp.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let bodiless = status == 204 || status == 304;
        let body_len = if bodiless { 0 } else { rng.below(2000) };
        if !bodiless && rng.below(2) == 0 {
            resp.extend_from_slice(
                format!("HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes(),
            );
            let mut left = body_len;
            while left > 0 {
                let n = (1 + rng.below(700)).min(left);
                resp.extend_from_slice(format!("{n:x};ext=1\r\n").as_bytes());
                resp.extend((0..n).map(|_| b'z'));
                resp.extend_from_slice(b"\r\n");
                left -= n;
            }
            resp.extend_from_slice(b"0\r\nTrailer: t\r\n\r\n");
        } else {
            resp.extend_from_slice(
                format!("HTTP/1.1 {status} X\r\nContent-Length: {body_len}\r\n\r\n").as_bytes(),
            );
            resp.extend((0..body_len).map(|_| b'z'));
        }
        (req, resp, (path, status, req_body, body_len))
    }

    /// Splits `bytes` into random reads or writes; with `capture` set, each
    /// carries at most that many bytes of payload (the rest uncaptured).
    fn split(
        rng: &mut Rng,
        conn_id: u64,
        dir: Direction,
        ts: &mut u64,
        bytes: &[u8],
        capture: Option<usize>,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let n = (1 + rng.below(600) as usize).min(bytes.len() - at);
            let piece = &bytes[at..at + n];
            *ts += 1;
            let payload = &piece[..capture.map_or(n, |c| c.min(n))];
            events.push(cut(conn_id, dir, *ts, n as u32, payload));
            at += n;
        }
        events
    }

    #[test]
    fn random_splits_pair_exactly() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..200u64 {
            let role = if round % 2 == 0 {
                RoleHint::Server
            } else {
                RoleHint::Unknown
            };
            let mut events = vec![open(1, role)];
            let mut want = Vec::new();
            let mut ts = 0;
            for n in 0..1 + rng.below(8) {
                // Up to three pipelined requests, then their responses.
                let batch: Vec<_> = (0..1 + rng.below(3))
                    .map(|i| random_exchange(&mut rng, n * 10 + i))
                    .collect();
                let requests: Vec<u8> = batch.iter().flat_map(|b| b.0.clone()).collect();
                let responses: Vec<u8> = batch.iter().flat_map(|b| b.1.clone()).collect();
                events.extend(split(&mut rng, 1, In, &mut ts, &requests, None));
                events.extend(split(&mut rng, 1, Out, &mut ts, &responses, None));
                want.extend(batch.into_iter().map(|b| b.2));
            }
            let out = track(&events);
            let got: Vec<_> = out
                .iter()
                .filter_map(|o| match o {
                    Observation::Finished(f) => Some((
                        f.request.path.clone(),
                        f.status,
                        f.request_body_bytes,
                        f.response_body_bytes,
                    )),
                    Observation::Started(_) => None,
                    other => panic!("round {round}: unexpected {other:?}"),
                })
                .collect();
            assert_eq!(got, want, "round {round}");
            let paths: Vec<_> = want.iter().map(|w| w.0.clone()).collect();
            assert_eq!(
                started(&out).into_iter().map(|s| s.1).collect::<Vec<_>>(),
                paths
            );
        }
    }

    #[test]
    fn random_damage_never_breaks_the_ledger() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..300u64 {
            let mut tracker = Tracker::new(TrackerConfig {
                max_pending: 4,
                ..TrackerConfig::default()
            });
            let mut events = Vec::new();
            let mut ts = 0;
            for conn in 1..=3u64 {
                let role =
                    [RoleHint::Server, RoleHint::Client, RoleHint::Unknown][rng.below(3) as usize];
                events.push(open_in(conn, conn as u32 % 2, role));
                let (req_dir, resp_dir) = if role == RoleHint::Client {
                    (Out, In)
                } else {
                    (In, Out)
                };
                for batch in 0..rng.below(4) {
                    // Up to six pipelined requests (more than `max_pending`), then
                    // their responses, damaged now and then.
                    let size = if rng.below(3) == 0 {
                        1 + rng.below(6)
                    } else {
                        1
                    };
                    let (mut requests, mut responses) = (Vec::new(), Vec::new());
                    for n in 0..size {
                        let (req, resp, _) = random_exchange(&mut rng, batch * 10 + n);
                        requests.extend(req);
                        responses.extend(resp);
                    }
                    for bytes in [&mut requests, &mut responses] {
                        if rng.below(5) == 0 {
                            let at = rng.below(bytes.len() as u64) as usize;
                            bytes[at] = rng.next() as u8;
                        }
                        if rng.below(8) == 0 {
                            bytes.splice(0..0, (0..rng.below(40)).map(|_| rng.next() as u8));
                        }
                    }
                    if rng.below(4) == 0 {
                        // The connection will end mid-response.
                        responses.truncate(rng.below(responses.len() as u64) as usize);
                    }
                    let capture = [None, None, Some(64), Some(300)][rng.below(4) as usize];
                    events.extend(split(&mut rng, conn, req_dir, &mut ts, &requests, capture));
                    events.extend(split(
                        &mut rng, conn, resp_dir, &mut ts, &responses, capture,
                    ));
                }
                if rng.below(2) == 0 {
                    events.push(close(conn, ts));
                }
            }
            // Interleave connections a little (each keeps its own order).
            let conn_of = |e: &Event| match e {
                Event::Data(d) => Some(d.conn_id),
                Event::Close { conn_id, .. } => Some(*conn_id),
                _ => None,
            };
            for i in (1..events.len()).rev() {
                let (a, b) = (conn_of(&events[i - 1]), conn_of(&events[i]));
                if a.is_some() && b.is_some() && a != b && rng.below(3) == 0 {
                    events.swap(i - 1, i);
                }
            }
            events.push(Event::ProcessExit { tgid: 0 });
            events.push(Event::ProcessExit { tgid: 1 });
            let out = run(&mut tracker, &events);
            assert!(tracker.is_empty(), "round {round}");
            let mut open_ids = std::collections::BTreeSet::new();
            for o in &out {
                seen.insert(match o {
                    Observation::Started(_) => "started",
                    Observation::Finished(f) if f.complete => "finished",
                    Observation::Finished(_) => "finished incomplete",
                    Observation::Abandoned { reason, .. } => reason.label(),
                    Observation::Anomaly(a) => a.label(),
                });
                match o {
                    Observation::Started(s) => {
                        assert!(open_ids.insert(s.id), "round {round}: id reused")
                    }
                    Observation::Finished(Finished { id, .. })
                    | Observation::Abandoned { id, .. } => {
                        assert!(
                            open_ids.remove(id),
                            "round {round}: {id} ended twice or never started"
                        )
                    }
                    Observation::Anomaly(_) => {}
                }
            }
            assert!(
                open_ids.is_empty(),
                "round {round}: never ended: {open_ids:?}"
            );
        }
        // The damage reached every path worth checking.
        for what in [
            "started",
            "finished",
            "finished incomplete",
            "closed_unanswered",
            "process_exited",
            "desync",
            "queue_full",
            "bad_head",
            "capture_gap",
            "bad_chunk",
        ] {
            assert!(seen.contains(what), "{what} never happened: {seen:?}");
        }
    }
}
