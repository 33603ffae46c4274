//! Kernel half of sonde: tracepoints that see every TCP socket read and
//! write of every process, keep the ones that carry HTTP/1.x and hand them to
//! userspace through one ring buffer.
//!
//! The data path is one program per socket call, on the raw tracepoints
//! `sock_recv_length` and `sock_send_length`. They fire inside the socket
//! layer, in the calling task, after the payload has moved: the tracepoint
//! passes the `struct sock` and the byte count, and the syscall's own
//! arguments (fd, buffer, iovecs) are still in the task's saved user
//! registers. So no syscall entry has to be remembered, reads and writes of
//! files and pipes never run a program at all (other sockets stop at the
//! first check), and a server thread that was already blocked in recv when
//! sonde attached is seen like any other. The kernel does only the cheap
//! part (as Beyla does): it classifies a connection by a fixed prefix
//! (`GET `, `HTTP/1.`…), copies a bounded prefix of the payload and
//! timestamps it. Userspace parses and pairs.
//!
//! No syscall tracepoint is used at all: enabling any of them puts every
//! syscall of every process on the kernel's slow path (about 100 ns more per
//! syscall, measured here). A connection's end comes from
//! `sock:inet_sock_set_state` and `tcp:tcp_destroy_sock`, its side (server
//! or client) from content.
//!
//! Everything not wanted is dropped as early as possible: non-TCP by the
//! socket's family and protocol, sonde and filtered-out processes by tgid,
//! and non-HTTP connections after their first payloads (`proto::OTHER`, one
//! lookup per call from then on).
#![no_std]
#![cfg_attr(target_arch = "bpf", no_main)]

#[allow(non_camel_case_types)]
mod abi;

use abi::{iovec, user_msghdr};
use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_probe_read_user as probe_read_user_raw, bpf_ringbuf_output},
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use probe_common::{
    counter, kind, proto, role, Config, ConnEvent, ConnKey, ConnState, DataEvent, EventHeader,
    MAX_CAPTURE,
};

/// Set by userspace at load time (read-only data section).
#[no_mangle]
static CONFIG: Config = Config {
    self_tgid: 0,
    capture_bytes: probe_common::DEFAULT_CAPTURE,
    filter_pids: 0,
    filter_ports: 0,
    ignore_peer_port: 0,
    notify_exec: 0,
    v6_daddr_off: 0,
    v6_saddr_off: 0,
    wakeup_bytes: 1 << 20,
    sk_shutdown_off: 0,
    sk_socket_off: 0,
    sk_protocol_off: 0,
};

#[inline(always)]
fn config() -> Config {
    // Volatile: the loader rewrites the value after compilation.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// Sizes below are defaults: userspace resizes every map at load time.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

#[map(name = "CONNS")]
static CONNS: HashMap<ConnKey, ConnState> = HashMap::with_max_entries(65536, 0);

/// The connection each tracked socket belongs to, for the close, which
/// names only the socket.
#[map(name = "SOCKS")]
static SOCKS: HashMap<u64, ConnKey> = HashMap::with_max_entries(65536, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map(name = "PID_FILTER")]
static PID_FILTER: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

#[map(name = "PORT_FILTER")]
static PORT_FILTER: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// Per-CPU source of connection ids and scratch space for records too big
/// for the 512-byte stack.
#[map]
static NEXT_ID: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SCRATCH: PerCpuArray<Record> = PerCpuArray::with_max_entries(1, 0);

/// A data record as written to the ring buffer: header then payload. The
/// payload area is twice the largest capture so that a copy at any offset
/// below `MAX_CAPTURE` of any length up to `MAX_CAPTURE` stays inside it in a
/// way the verifier can check with two masks.
#[repr(C)]
struct Record {
    ev: DataEvent,
    payload: [u8; 2 * MAX_CAPTURE],
}
const HDR_LEN: usize = core::mem::size_of::<DataEvent>();

/// How the syscall that moved the data passed its buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Buf {
    /// read, recvfrom, write, sendto: one buffer.
    Flat,
    /// readv, writev: an iovec array and its length.
    Vector,
    /// recvmsg, sendmsg: a msghdr.
    Msg,
    /// sendfile: the data came from a file; only its length is known.
    None,
}

/// A socket call in progress: the socket from the tracepoint, the rest
/// rebuilt from the task's saved user registers.
struct Call {
    sk: u64,
    fd: u32,
    inbound: bool,
    buf: u64,
    vlen: u64,
    how: Buf,
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;
/// iovecs looked at per call: HTTP heads sit in the first ones.
const MAX_IOV: u32 = 4;
/// Payloads without an HTTP prefix tolerated before a connection is given up.
const MAX_MISSES: u32 = 4;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// A field of the tracepoint's record, by its offset in the `format` file.
/// A plain load: the verifier checks it against the record's bounds, and
/// unlike `read_at` it costs no helper call.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(off) as *const T) }
}

#[inline(always)]
fn count(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn tgid_wanted(cfg: &Config, tgid: u32) -> bool {
    if tgid == cfg.self_tgid {
        return false;
    }
    cfg.filter_pids == 0 || unsafe { PID_FILTER.get(tgid) }.is_some()
}

/// Ring-buffer flags: no wakeup per record; the reader drains on a timer,
/// unless so much is waiting that it should come now. Asking the ring buffer
/// how full it is reads the reader's position (a cache line the reader
/// writes), so each CPU asks once every 64 of its data records, which the
/// margin between `wakeup_bytes` and the buffer's size absorbs.
#[inline(always)]
fn rb_flags(cfg: &Config) -> u64 {
    let written = COUNTERS.get(counter::DATA_EVENTS).copied().unwrap_or(0);
    if written % 64 == 0 && EVENTS.query(BPF_RB_AVAIL_DATA) > cfg.wakeup_bytes as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
fn output<T>(cfg: &Config, value: &T) -> bool {
    let written = EVENTS.output::<T>(value, rb_flags(cfg)).is_ok();
    if !written {
        count(counter::RINGBUF_FULL);
    }
    written
}

// ---------------------------------------------------------------- registers

/// The calling task's saved user registers, read through the BTF-typed
/// pointer the kernel hands out (plain loads, no helper call per field).
/// `None` for kernel threads and io_uring workers, whose saved registers are
/// zeroed and do not describe a syscall of theirs.
#[inline(always)]
fn user_regs() -> Option<Regs> {
    use aya_ebpf::helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs};
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u64;
    if regs.is_null() {
        return None;
    }
    let slot = |i: usize| unsafe { core::ptr::read_volatile(regs.add(i)) };
    let r = Regs {
        nr: slot(arch::NR) as i64,
        arg: [slot(arch::ARG[0]), slot(arch::ARG[1]), slot(arch::ARG[2])],
    };
    arch::from_user(&slot).then_some(r)
}

struct Regs {
    /// Syscall number.
    nr: i64,
    /// First three syscall arguments.
    arg: [u64; 3],
}

/// `struct pt_regs` in 8-byte slots, and the syscall numbers of the calls
/// whose payload sonde reads.
#[cfg(bpf_target_arch = "x86_64")]
mod arch {
    /// rdi, rsi, rdx.
    pub const ARG: [usize; 3] = [14, 13, 12];
    /// orig_rax.
    pub const NR: usize = 15;
    const CS: usize = 17;
    /// __USER_CS: a 64-bit syscall (ia32 tasks use other numbers).
    const USER_CS: u64 = 0x33;
    pub fn from_user(slot: &impl Fn(usize) -> u64) -> bool {
        slot(CS) == USER_CS
    }
    pub const READ: i64 = 0;
    pub const WRITE: i64 = 1;
    pub const READV: i64 = 19;
    pub const WRITEV: i64 = 20;
    pub const SENDFILE: i64 = 40;
    pub const SENDTO: i64 = 44;
    pub const RECVFROM: i64 = 45;
    pub const SENDMSG: i64 = 46;
    pub const RECVMSG: i64 = 47;
}

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    /// orig_x0 (x0 is overwritten by the return value), x1, x2.
    pub const ARG: [usize; 3] = [34, 1, 2];
    /// syscallno (an s32 in the low half of its slot).
    pub const NR: usize = 35;
    const PSTATE: usize = 33;
    /// EL0t: the saved state is a user task's.
    pub fn from_user(slot: &impl Fn(usize) -> u64) -> bool {
        slot(PSTATE) & 0xf == 0
    }
    pub const READ: i64 = 63;
    pub const WRITE: i64 = 64;
    pub const READV: i64 = 65;
    pub const WRITEV: i64 = 66;
    pub const SENDFILE: i64 = 71;
    pub const SENDTO: i64 = 206;
    pub const RECVFROM: i64 = 207;
    pub const SENDMSG: i64 = 211;
    pub const RECVMSG: i64 = 212;
}

/// The call being traced, if it is a syscall whose buffers sonde can read.
/// Anything else that moves TCP data (io_uring, splice, sendmmsg and
/// recvmmsg) is counted, not guessed at.
#[inline(always)]
fn current_call(cfg: &Config, sk: u64, inbound: bool) -> Option<Call> {
    let r = user_regs()?;
    let how = match (inbound, r.nr & 0xffff_ffff) {
        (true, arch::READ | arch::RECVFROM) | (false, arch::WRITE | arch::SENDTO) => Buf::Flat,
        (true, arch::READV) | (false, arch::WRITEV) => Buf::Vector,
        (true, arch::RECVMSG) | (false, arch::SENDMSG) => Buf::Msg,
        (false, arch::SENDFILE) => Buf::None,
        _ => {
            count_unsupported(cfg, sk);
            return None;
        }
    };
    Some(Call {
        sk,
        fd: r.arg[0] as u32,
        inbound,
        buf: r.arg[1],
        vlen: r.arg[2],
        how,
    })
}

/// Counts a call whose buffers sonde cannot read, if it moved data of a
/// connection sonde would watch: not one filtered out by port, nor one
/// known not to be HTTP.
#[inline(always)]
fn count_unsupported(cfg: &Config, sk: u64) {
    let (local, peer) = sock_ports(sk);
    if !port_wanted(cfg, local, peer) {
        return;
    }
    if let Some(key) = unsafe { SOCKS.get(sk) } {
        if let Some(st) = unsafe { CONNS.get(*key) } {
            if st.sk == sk && st.proto == proto::OTHER {
                return;
            }
        }
    }
    count(counter::UNSUPPORTED_CALL);
}

// ---------------------------------------------------------------- data

/// `sock_recv_length`: a socket read returned data to the task.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv(ctx: RawTracePointContext) -> u32 {
    on_sock_call(&ctx, true);
    0
}

/// `sock_send_length`: a socket write accepted data from the task.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send(ctx: RawTracePointContext) -> u32 {
    on_sock_call(&ctx, false);
    0
}

/// Attached instead of the data programs by `sonde --bench-floor`: what
/// `cargo xtask bench` calls the floor, the cost of hooking these
/// tracepoints at all.
#[raw_tracepoint]
pub fn noop_raw(_ctx: RawTracePointContext) -> u32 {
    0
}

/// The floor's program on the classic tracepoints (connection ends and
/// process events).
#[tracepoint]
pub fn noop(_ctx: TracePointContext) -> u32 {
    0
}

/// The data hooks are raw tracepoints: the program gets the tracepoint's
/// arguments `(struct sock *sk, int ret, int flags)` as they are. A classic
/// tracepoint first fills a trace record (`perf_trace_*`) for every socket
/// call of every process, which cost the observed server more than the
/// program itself did. The family and protocol the record carried are read
/// from the socket instead, and only for calls that moved data.
#[inline(always)]
fn on_sock_call(ctx: &RawTracePointContext, inbound: bool) {
    let ret = ctx.arg::<u64>(1) as i32;
    if ret <= 0 {
        return;
    }
    // A peek leaves the bytes for the read that follows.
    if inbound && ctx.arg::<u64>(2) as i32 & MSG_PEEK != 0 {
        return;
    }
    let sk = ctx.arg::<u64>(0);
    let cfg = config();
    if !is_tcp(&cfg, sk) {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !tgid_wanted(&cfg, (pid_tgid >> 32) as u32) {
        return;
    }
    let Some(call) = current_call(&cfg, sk, inbound) else {
        return;
    };
    on_data(&cfg, pid_tgid, &call, ret as u64);
}

/// An IPv4 or IPv6 TCP socket? `skc_family` is at offset 16 of `struct
/// sock_common` (checked at load); `sk_protocol` moves, so it comes from BTF.
#[inline(always)]
fn is_tcp(cfg: &Config, sk: u64) -> bool {
    let family: u16 = unsafe { bpf_probe_read_kernel((sk + 16) as *const u16) }.unwrap_or(0);
    if family != AF_INET && family != AF_INET6 {
        return false;
    }
    let protocol: u16 =
        unsafe { bpf_probe_read_kernel((sk + cfg.sk_protocol_off as u64) as *const u16) }
            .unwrap_or(0);
    protocol == IPPROTO_TCP
}

// ---------------------------------------------------------------- connections

#[inline(always)]
fn emit_close(cfg: &Config, key: &ConnKey, st: &ConnState) {
    if st.proto != proto::HTTP1 {
        return;
    }
    // A reset arrives in softirq context, in whatever task was running.
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = if (pid_tgid >> 32) as u32 == key.tgid {
        pid_tgid as u32
    } else {
        0
    };
    let hdr = EventHeader {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        conn_id: st.id,
        kind: kind::CONN_CLOSE,
        tgid: key.tgid,
        tid,
        fd: key.fd,
    };
    output(cfg, &hdr);
}

#[inline(always)]
fn new_id() -> u64 {
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    match NEXT_ID.get_ptr_mut(0) {
        Some(p) => unsafe {
            *p += 1;
            (cpu << 48) | *p
        },
        None => 0,
    }
}

#[inline(always)]
fn port_wanted(cfg: &Config, local: u32, peer: u32) -> bool {
    if cfg.ignore_peer_port != 0 && peer == cfg.ignore_peer_port {
        return false;
    }
    if cfg.filter_ports == 0 {
        return true;
    }
    // Either end: the side (server or client) is learnt from content later.
    let has = |p: u32| unsafe { PORT_FILTER.get(p) }.is_some();
    has(local) || has(peer)
}

/// Ports of a socket: `skc_dport` (network order) and `skc_num` (host order)
/// are at offsets 12 and 14 of `struct sock_common`, unchanged since 2.6.
#[inline(always)]
fn sock_ports(sk: u64) -> (u32, u32) {
    let pair: u32 = unsafe { bpf_probe_read_kernel((sk + 12) as *const u32) }.unwrap_or(0);
    let dport = u16::from_be((pair & 0xffff) as u16) as u32;
    let num = pair >> 16;
    (num, dport)
}

fn on_data(cfg: &Config, pid_tgid: u64, call: &Call, ret: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let key = ConnKey { tgid, fd: call.fd };
    let st = match CONNS.get_ptr_mut(key) {
        Some(p) if unsafe { (*p).sk } == call.sk => p,
        known => {
            if let Some(p) = known {
                // Same fd, another socket: the old connection is gone (its
                // close was not seen, e.g. the socket lives on in a child).
                end_conn(cfg, unsafe { (*p).sk }, &key);
            }
            // Connections filtered out by port take no table slot.
            let (local, peer) = sock_ports(call.sk);
            if !port_wanted(cfg, local, peer) {
                return;
            }
            match track(key, call.sk) {
                Some(p) => p,
                None => return,
            }
        }
    };
    let st = unsafe { &mut *st };
    if st.proto == proto::OTHER {
        return;
    }
    let dir = if call.inbound {
        kind::DATA_IN
    } else {
        kind::DATA_OUT
    };
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let rec = unsafe { &mut *rec };
    let want = core::cmp::min(ret, cfg.capture_bytes as u64);
    let captured = copy_payload(call, want, &mut rec.payload);
    if st.proto == proto::UNKNOWN {
        if call.how == Buf::None {
            return;
        }
        if !looks_like_http(&rec.payload, captured) {
            st.misses += 1;
            if st.misses >= MAX_MISSES {
                st.proto = proto::OTHER;
                count(counter::NOT_HTTP);
            }
            return;
        }
        st.proto = proto::UNANNOUNCED;
    }
    if st.proto == proto::UNANNOUNCED {
        if !emit_open(cfg, &key, st, pid_tgid) {
            // This record is lost with it: it would name a connection
            // userspace has not heard of.
            count(counter::RINGBUF_FULL);
            return;
        }
        st.proto = proto::HTTP1;
    }
    rec.ev = DataEvent {
        hdr: EventHeader {
            ts_ns: unsafe { bpf_ktime_get_ns() },
            conn_id: st.id,
            kind: dir,
            tgid,
            tid: pid_tgid as u32,
            fd: call.fd,
        },
        total_len: if ret > u32::MAX as u64 {
            u32::MAX
        } else {
            ret as u32
        },
        captured: captured as u32,
    };
    let len = (HDR_LEN as u64 + captured) & (2 * MAX_CAPTURE as u64 - 1);
    let r = unsafe {
        bpf_ringbuf_output(
            &EVENTS as *const RingBuf as *mut c_void,
            rec as *mut Record as *mut c_void,
            len,
            rb_flags(cfg),
        )
    };
    if r < 0 {
        count(counter::RINGBUF_FULL);
    } else {
        count(counter::DATA_EVENTS);
    }
}

/// Starts tracking the connection on `key`'s fd; `None` if the table is full.
#[inline(always)]
fn track(key: ConnKey, sk: u64) -> Option<*mut ConnState> {
    let fresh = ConnState {
        sk,
        id: new_id(),
        proto: proto::UNKNOWN,
        misses: 0,
    };
    if CONNS.insert(key, fresh, 0).is_err() {
        count(counter::CONN_TABLE_FULL);
        return None;
    }
    if SOCKS.insert(sk, key, 0).is_err() {
        // Its close will not be seen; userspace expires it when idle.
        count(counter::CONN_TABLE_FULL);
    }
    CONNS.get_ptr_mut(key)
}

/// Copies up to `want` bytes of the call's payload; returns how many.
#[inline(always)]
fn copy_payload(call: &Call, want: u64, dst: &mut [u8; 2 * MAX_CAPTURE]) -> u64 {
    match call.how {
        Buf::Flat => copy_chunk(dst, 0, call.buf, want),
        Buf::Vector => copy_iov(dst, call.buf, call.vlen, want),
        Buf::Msg => {
            let Ok(msg) = (unsafe { bpf_probe_read_user(call.buf as *const user_msghdr) }) else {
                count(counter::COPY_FAILED);
                return 0;
            };
            copy_iov(dst, msg.msg_iov, msg.msg_iovlen, want)
        }
        Buf::None => 0,
    }
}

#[inline(always)]
fn copy_iov(dst: &mut [u8; 2 * MAX_CAPTURE], iov: u64, vlen: u64, want: u64) -> u64 {
    // The first iovecs in one read rather than one read each.
    let n = if vlen < MAX_IOV as u64 {
        vlen
    } else {
        MAX_IOV as u64
    };
    let mut vecs = [iovec {
        iov_base: 0,
        iov_len: 0,
    }; MAX_IOV as usize];
    let size = (n as u32 * core::mem::size_of::<iovec>() as u32) & 0xff;
    if size == 0 {
        return 0;
    }
    let r = unsafe {
        probe_read_user_raw(vecs.as_mut_ptr() as *mut c_void, size, iov as *const c_void)
    };
    if r < 0 {
        count(counter::COPY_FAILED);
        return 0;
    }
    let mut off: u64 = 0;
    for (i, v) in vecs.iter().enumerate() {
        if i as u64 >= n || off >= want {
            break;
        }
        let len = core::cmp::min(v.iov_len, want - off);
        let got = copy_chunk(dst, off, v.iov_base, len);
        off += got;
        if got < len {
            break;
        }
    }
    off
}

/// One bounded `bpf_probe_read_user` into `dst[off..off+n]`.
#[inline(always)]
fn copy_chunk(dst: &mut [u8; 2 * MAX_CAPTURE], off: u64, src: u64, n: u64) -> u64 {
    let off = (off as usize) & (MAX_CAPTURE - 1);
    let n = (n as usize) & (2 * MAX_CAPTURE - 1);
    if n == 0 || n > MAX_CAPTURE {
        return 0;
    }
    let r = unsafe {
        probe_read_user_raw(
            dst.as_mut_ptr().add(off) as *mut c_void,
            (n & (MAX_CAPTURE * 2 - 1)) as u32,
            src as *const c_void,
        )
    };
    if r < 0 {
        count(counter::COPY_FAILED);
        return 0;
    }
    n as u64
}

/// An HTTP/1.x message start as a little-endian word of up to 8 bytes and
/// its length, so the check is a few register compares (no pointers into
/// .rodata, which the verifier would not follow).
const fn token(t: &[u8]) -> (u64, u64) {
    let mut v = 0u64;
    let mut i = 0;
    while i < t.len() && i < 8 {
        v |= (t[i] as u64) << (8 * i);
        i += 1;
    }
    (v, i as u64)
}

const TOKENS: [(u64, u64); 10] = [
    token(b"GET /"),
    token(b"POST /"),
    token(b"PUT /"),
    token(b"HEAD /"),
    token(b"DELETE /"),
    token(b"PATCH /"),
    token(b"OPTIONS "),
    token(b"CONNECT "),
    token(b"TRACE /"),
    token(b"HTTP/1."),
];

/// Does this payload start (or could it start, if it is short) an HTTP/1.x
/// request or response?
#[inline(always)]
fn looks_like_http(p: &[u8; 2 * MAX_CAPTURE], n: u64) -> bool {
    if n == 0 {
        return false;
    }
    let head = u64::from_le_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]]);
    let n = if n > 8 { 8 } else { n };
    let mut t = 0;
    while t < TOKENS.len() {
        let (word, len) = TOKENS[t];
        let m = if n < len { n } else { len };
        let mask = if m >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * m)) - 1
        };
        if head & mask == word & mask {
            return true;
        }
        t += 1;
    }
    false
}

/// Writes the connection's CONN_OPEN record; false if it did not fit.
fn emit_open(cfg: &Config, key: &ConnKey, st: &ConnState, pid_tgid: u64) -> bool {
    let sk = st.sk;
    let mut ev = ConnEvent {
        hdr: EventHeader {
            ts_ns: unsafe { bpf_ktime_get_ns() },
            conn_id: st.id,
            kind: kind::CONN_OPEN,
            tgid: key.tgid,
            tid: pid_tgid as u32,
            fd: key.fd,
        },
        family: 0,
        role: role::UNKNOWN,
        local_port: 0,
        peer_port: 0,
        local_addr: [0; 16],
        peer_addr: [0; 16],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let family: u16 = unsafe { bpf_probe_read_kernel((sk + 16) as *const u16) }.unwrap_or(0);
    ev.family = family as u32;
    let (local, peer) = sock_ports(sk);
    ev.local_port = local;
    ev.peer_port = peer;
    if family == AF_INET6 && cfg.v6_daddr_off != 0 {
        ev.peer_addr =
            unsafe { bpf_probe_read_kernel((sk + cfg.v6_daddr_off as u64) as *const [u8; 16]) }
                .unwrap_or([0; 16]);
        ev.local_addr =
            unsafe { bpf_probe_read_kernel((sk + cfg.v6_saddr_off as u64) as *const [u8; 16]) }
                .unwrap_or([0; 16]);
    } else {
        // skc_daddr and skc_rcv_saddr open struct sock_common.
        let pair: [u8; 8] =
            unsafe { bpf_probe_read_kernel(sk as *const [u8; 8]) }.unwrap_or([0; 8]);
        ev.peer_addr[..4].copy_from_slice(&pair[..4]);
        ev.local_addr[..4].copy_from_slice(&pair[4..]);
    }
    output(cfg, &ev)
}

// ---------------------------------------------------------------- close

const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_LAST_ACK: i32 = 9;
const RCV_SHUTDOWN: u8 = 1;

/// `sock:inet_sock_set_state`: a tracked connection ends when its owner
/// closes it, or when it dies under its owner. Not a syscall tracepoint:
/// hooking close(2) would put every syscall of every process on the kernel's
/// slow path. The rule, by the state the socket enters:
/// - FIN_WAIT1 or LAST_ACK with its receiving side shut: close(2) (a
///   shutdown(SHUT_WR) sends the same FIN but the socket still reads);
/// - CLOSE of an orphan: the owner closed it earlier, half-closed
///   (shutdown(SHUT_WR) then close(2), as Python's socketserver does).
///
/// A socket that reaches CLOSE while its owner still holds it (a reset, an
/// abort, the peer's FIN after our own) ends at `sock_destroy`, when the
/// owner lets it go: until then it still reads what was queued before, a
/// response that arrived just ahead of the reset among it.
#[tracepoint]
pub fn sock_state(ctx: TracePointContext) -> u32 {
    // skaddr @8, newstate @20, protocol @30.
    let newstate = field::<i32>(&ctx, 20);
    if !(newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK || newstate == TCP_CLOSE)
        || field::<u16>(&ctx, 30) != IPPROTO_TCP
    {
        return 0;
    }
    let sk = field::<u64>(&ctx, 8);
    let Some(key) = (unsafe { SOCKS.get(sk) }).copied() else {
        return 0;
    };
    let cfg = config();
    let ends = if newstate == TCP_CLOSE {
        is_orphan(&cfg, sk)
    } else {
        receive_shut(&cfg, sk)
    };
    if ends {
        end_conn(&cfg, sk, &key);
    }
    0
}

/// `tcp:tcp_destroy_sock`: the socket is freed, so whatever still tracked
/// it is over (a socket that reached CLOSE before its owner closed it).
#[tracepoint]
pub fn sock_destroy(ctx: TracePointContext) -> u32 {
    // skaddr @8.
    let sk = field::<u64>(&ctx, 8);
    if let Some(key) = (unsafe { SOCKS.get(sk) }).copied() {
        end_conn(&config(), sk, &key);
    }
    0
}

/// Has the socket's receiving side been shut (by close(2), or by the peer's
/// FIN)? Without the offset, every FIN sent is taken for a close.
#[inline(always)]
fn receive_shut(cfg: &Config, sk: u64) -> bool {
    if cfg.sk_shutdown_off == 0 {
        return true;
    }
    let shutdown: u8 =
        unsafe { bpf_probe_read_kernel((sk + cfg.sk_shutdown_off as u64) as *const u8) }
            .unwrap_or(RCV_SHUTDOWN);
    shutdown & RCV_SHUTDOWN != 0
}

/// Has the owner closed the socket? close(2) detaches it from its `struct
/// socket`.
#[inline(always)]
fn is_orphan(cfg: &Config, sk: u64) -> bool {
    let socket: u64 =
        unsafe { bpf_probe_read_kernel((sk + cfg.sk_socket_off as u64) as *const u64) }
            .unwrap_or(1);
    socket == 0
}

fn end_conn(cfg: &Config, sk: u64, key: &ConnKey) {
    let _ = SOCKS.remove(sk);
    if let Some(st) = unsafe { CONNS.get(*key) } {
        if st.sk != sk {
            return;
        }
        if st.proto == proto::UNKNOWN && st.misses > 0 {
            // Closed before it could be given up (a TLS handshake that
            // failed, a probe sending garbage): it was not HTTP either.
            count(counter::NOT_HTTP);
        }
        emit_close(cfg, key, st);
        let _ = CONNS.remove(*key);
    }
}

// ---------------------------------------------------------------- processes

/// `sched:sched_process_exit`: tells userspace when a whole process is gone.
#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    let group_dead = field::<u8>(&ctx, 32);
    if group_dead == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let cfg = config();
    let tgid = (pid_tgid >> 32) as u32;
    if cfg.filter_pids != 0 {
        let _ = PID_FILTER.remove(tgid);
    }
    let hdr = EventHeader {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        conn_id: 0,
        kind: kind::PROC_EXIT,
        tgid,
        tid: pid_tgid as u32,
        fd: 0,
    };
    output(&cfg, &hdr);
    0
}

/// `sched:sched_process_fork`: children of an observed process are observed
/// (an nginx master's workers, a pre-forking server's children).
#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    let cfg = config();
    if cfg.filter_pids == 0 {
        return 0;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { PID_FILTER.get(parent) }.is_none() {
        return 0;
    }
    let child = field::<i32>(&ctx, 20) as u32;
    if child != 0 && PID_FILTER.insert(child, 1, 0).is_err() {
        count(counter::PID_TABLE_FULL);
    }
    0
}

/// `sched:sched_process_exec`: userspace matches the new image against `--exe`.
#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    let cfg = config();
    if cfg.notify_exec == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let hdr = EventHeader {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        conn_id: 0,
        kind: kind::PROC_EXEC,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd: 0,
    };
    output(&cfg, &hdr);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Host builds (`cargo clippy --workspace`) only type-check this crate.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
