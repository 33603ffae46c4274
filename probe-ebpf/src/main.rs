//! Kernel half of sonde: syscall tracepoints that see every socket read and
//! write of every process, keep the ones that carry HTTP/1.x and hand them to
//! userspace through one ring buffer.
//!
//! The kernel does only the cheap part (as Beyla does): it remembers a
//! syscall's arguments at entry, learns from `sock:sock_{recv,send}_length`
//! (which fire inside the syscall, in the same task) that the fd is a TCP
//! socket and which `struct sock` it is, and at exit classifies the
//! connection by a fixed prefix (`GET `, `HTTP/1.`…), copies a bounded prefix
//! of the payload and timestamps it. Userspace parses and pairs.
//!
//! Everything not wanted is dropped as early as possible: other processes by
//! the pid filter, non-sockets at exit (no `sock_*_length` fired), non-TCP by
//! family/protocol, and non-HTTP connections after their first payloads
//! (`proto::OTHER`, checked at syscall entry so those calls cost one lookup).
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
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use probe_common::{
    counter, kind, proto, role, Call, Config, ConnEvent, ConnKey, ConnState, DataEvent,
    EventHeader, MAX_CAPTURE,
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
    _pad: 0,
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

/// Arguments of a syscall in progress, keyed by pid_tgid (one per thread).
/// Not LRU: an eviction would lose a call silently, while a failed insert is
/// counted. Entries of threads that died inside a call are swept by userspace.
#[map(name = "CALLS")]
static CALLS: HashMap<u64, Call> = HashMap::with_max_entries(16384, 0);

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

mod op {
    /// The entry was missed (the thread was already blocked in the call when
    /// sonde attached): recovered at exit from the syscall number and the
    /// saved user registers.
    pub const MISSED_ENTRY: u32 = 0;
    pub const READ: u32 = 1;
    pub const READV: u32 = 2;
    pub const RECVMSG: u32 = 3;
    pub const WRITE: u32 = 4;
    pub const WRITEV: u32 = 5;
    pub const SENDMSG: u32 = 6;
    pub const SENDFILE: u32 = 7;
    pub const ACCEPT: u32 = 8;
    pub const CONNECT: u32 = 9;
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const EINPROGRESS: i64 = 115;
/// iovecs looked at per call: HTTP heads sit in the first ones.
const MAX_IOV: u32 = 4;
/// Payloads without an HTTP prefix tolerated before a connection is given up.
const MAX_MISSES: u32 = 4;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

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
/// unless so much is waiting that it should come now.
#[inline(always)]
fn rb_flags(cfg: &Config) -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) > cfg.wakeup_bytes as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
fn output<T>(cfg: &Config, value: &T) {
    if EVENTS.output::<T>(value, rb_flags(cfg)).is_err() {
        count(counter::RINGBUF_FULL);
    }
}

// ---------------------------------------------------------------- entries

#[inline(always)]
fn enter(cfg: &Config, op: u32, fd: u64, buf: u64, vlen: u64) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !tgid_wanted(cfg, tgid) {
        return Ok(0);
    }
    let fd = fd as u32;
    if op != op::ACCEPT {
        // Known non-HTTP connections stop here, at one lookup per call.
        if let Some(c) = unsafe { CONNS.get(ConnKey { tgid, fd }) } {
            if c.proto == proto::OTHER {
                return Ok(0);
            }
        }
    }
    let call = Call {
        buf,
        sk: 0,
        fd,
        op,
        vlen: vlen as u32,
        _pad: 0,
    };
    if CALLS.insert(pid_tgid, call, 0).is_err() {
        count(counter::CALL_TABLE_FULL);
    }
    Ok(0)
}

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // Syscall tracepoint arguments are 8-byte slots from offset 16.
    unsafe { ctx.read_at::<u64>(16 + 8 * n) }.unwrap_or(0)
}

macro_rules! entry {
    ($name:ident, $op:expr, buf = $buf:expr, vlen = $vlen:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let cfg = config();
            let (buf, vlen) = ($buf(&ctx), $vlen(&ctx));
            match enter(&cfg, $op, arg(&ctx, 0), buf, vlen) {
                Ok(r) | Err(r) => r,
            }
        }
    };
}

fn a1(ctx: &TracePointContext) -> u64 {
    arg(ctx, 1)
}
fn a2(ctx: &TracePointContext) -> u64 {
    arg(ctx, 2)
}
fn none(_: &TracePointContext) -> u64 {
    0
}

// read(fd, buf, count) and recvfrom(fd, buf, len, …) share a layout.
entry!(enter_read, op::READ, buf = a1, vlen = none);
entry!(enter_readv, op::READV, buf = a1, vlen = a2);
entry!(enter_recvmsg, op::RECVMSG, buf = a1, vlen = none);
entry!(enter_write, op::WRITE, buf = a1, vlen = none);
entry!(enter_writev, op::WRITEV, buf = a1, vlen = a2);
entry!(enter_sendmsg, op::SENDMSG, buf = a1, vlen = none);
entry!(enter_sendfile, op::SENDFILE, buf = none, vlen = none);
entry!(enter_accept, op::ACCEPT, buf = none, vlen = none);
entry!(enter_connect, op::CONNECT, buf = none, vlen = none);

/// `sock:sock_recv_length` / `sock:sock_send_length`: fired inside the
/// socket call, in the calling task. Marks the pending call as a TCP socket.
#[tracepoint]
pub fn sock_length(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let family = unsafe { ctx.read_at::<u16>(16) }.unwrap_or(0);
    let protocol = unsafe { ctx.read_at::<u16>(18) }.unwrap_or(0);
    if !((family == AF_INET || family == AF_INET6) && protocol == IPPROTO_TCP) {
        return 0;
    }
    let sk = unsafe { ctx.read_at::<u64>(8) }.unwrap_or(0);
    match CALLS.get_ptr_mut(pid_tgid) {
        Some(call) => unsafe { (*call).sk = sk },
        None => {
            // A call whose entry we did not see: typically a server thread
            // that was blocked in recv on a keep-alive connection when sonde
            // attached. Its exit recovers the arguments.
            let cfg = config();
            if tgid_wanted(&cfg, (pid_tgid >> 32) as u32) {
                let call = Call {
                    buf: 0,
                    sk,
                    fd: 0,
                    op: op::MISSED_ENTRY,
                    vlen: 0,
                    _pad: 0,
                };
                if CALLS.insert(pid_tgid, call, 0).is_err() {
                    count(counter::CALL_TABLE_FULL);
                }
            }
        }
    }
    0
}

/// Rebuilds the arguments of a call whose entry was missed: the syscall
/// number from the exit tracepoint, fd/buffer/length from the user registers
/// the kernel saved at entry (x86_64: rdi, rsi, rdx), which it leaves intact.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn recover_call(ctx: &TracePointContext, call: &mut Call) -> bool {
    use aya_ebpf::helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs};
    let nr = unsafe { ctx.read_at::<i64>(8) }.unwrap_or(-1);
    call.op = match nr as i32 {
        0 | 45 => op::READ,
        1 | 44 => op::WRITE,
        19 => op::READV,
        20 => op::WRITEV,
        47 => op::RECVMSG,
        46 => op::SENDMSG,
        40 => op::SENDFILE,
        _ => return false,
    };
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return false;
    }
    let reg = |off: u64| unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.unwrap_or(0);
    // struct pt_regs: … dx @96, si @104, di @112.
    call.fd = reg(112) as u32;
    call.buf = reg(104);
    call.vlen = reg(96) as u32;
    true
}

#[cfg(not(bpf_target_arch = "x86_64"))]
#[inline(always)]
fn recover_call(_ctx: &TracePointContext, _call: &mut Call) -> bool {
    false
}

// ---------------------------------------------------------------- exits

#[tracepoint]
pub fn sys_exit_call(ctx: TracePointContext) -> u32 {
    match try_exit(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut call = match unsafe { CALLS.get(pid_tgid) } {
        Some(c) => *c,
        None => return Ok(0),
    };
    let _ = CALLS.remove(pid_tgid);
    if call.op == op::MISSED_ENTRY && !recover_call(ctx, &mut call) {
        return Ok(0);
    }
    let ret = unsafe { ctx.read_at::<i64>(16) }.map_err(|_| 0u32)?;
    let tgid = (pid_tgid >> 32) as u32;
    let cfg = config();
    match call.op {
        op::ACCEPT if ret >= 0 => track_new(&cfg, tgid, ret as u32, role::SERVER),
        op::CONNECT if ret == 0 || ret == -EINPROGRESS => {
            track_new(&cfg, tgid, call.fd, role::CLIENT)
        }
        op::ACCEPT | op::CONNECT => {}
        _ if call.sk != 0 && ret > 0 => on_data(&cfg, ctx, pid_tgid, &call, ret as u64),
        _ => {}
    }
    Ok(0)
}

/// accept/connect: remember the role; the socket is looked at on first data.
#[inline(always)]
fn track_new(cfg: &Config, tgid: u32, fd: u32, role: u32) {
    let key = ConnKey { tgid, fd };
    if let Some(old) = unsafe { CONNS.get(key) } {
        // The fd was reused without a close we saw (dup2, exec).
        emit_close(cfg, &key, old);
    }
    let st = ConnState {
        sk: 0,
        id: 0,
        role,
        proto: proto::UNKNOWN,
        misses: 0,
        _pad: 0,
    };
    if CONNS.insert(key, st, 0).is_err() {
        count(counter::CONN_TABLE_FULL);
    }
}

#[inline(always)]
fn emit_close(cfg: &Config, key: &ConnKey, st: &ConnState) {
    if st.proto != proto::HTTP1 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let hdr = EventHeader {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        conn_id: st.id,
        kind: kind::CONN_CLOSE,
        tgid: key.tgid,
        tid: pid_tgid as u32,
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
fn port_wanted(cfg: &Config, st: &ConnState, local: u32, peer: u32) -> bool {
    if cfg.ignore_peer_port != 0 && peer == cfg.ignore_peer_port {
        return false;
    }
    if cfg.filter_ports == 0 {
        return true;
    }
    let has = |p: u32| unsafe { PORT_FILTER.get(p) }.is_some();
    match st.role {
        role::SERVER => has(local),
        role::CLIENT => has(peer),
        _ => has(local) || has(peer),
    }
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

fn on_data(cfg: &Config, ctx: &TracePointContext, pid_tgid: u64, call: &Call, ret: u64) {
    let _ = ctx;
    let tgid = (pid_tgid >> 32) as u32;
    let key = ConnKey { tgid, fd: call.fd };
    let st = match CONNS.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            let fresh = ConnState {
                sk: 0,
                id: 0,
                role: role::UNKNOWN,
                proto: proto::UNKNOWN,
                misses: 0,
                _pad: 0,
            };
            if CONNS.insert(key, fresh, 0).is_err() {
                count(counter::CONN_TABLE_FULL);
                return;
            }
            match CONNS.get_ptr_mut(key) {
                Some(p) => p,
                None => return,
            }
        }
    };
    let st = unsafe { &mut *st };
    if st.sk != call.sk {
        if st.sk != 0 {
            // Same fd, another socket: the old connection is gone.
            emit_close(cfg, &key, st);
            st.role = role::UNKNOWN;
        }
        st.sk = call.sk;
        st.id = new_id();
        st.proto = proto::UNKNOWN;
        st.misses = 0;
        let (local, peer) = sock_ports(call.sk);
        if !port_wanted(cfg, st, local, peer) {
            st.proto = proto::OTHER;
            return;
        }
    }
    if st.proto == proto::OTHER {
        return;
    }
    let dir = match call.op {
        op::READ | op::READV | op::RECVMSG => kind::DATA_IN,
        _ => kind::DATA_OUT,
    };
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let rec = unsafe { &mut *rec };
    let want = core::cmp::min(ret, cfg.capture_bytes as u64);
    let captured = copy_payload(call, want, &mut rec.payload);
    if st.proto == proto::UNKNOWN {
        if call.op == op::SENDFILE {
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
        st.proto = proto::HTTP1;
        emit_open(cfg, &key, st, pid_tgid);
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

/// Copies up to `want` bytes of the call's payload; returns how many.
#[inline(always)]
fn copy_payload(call: &Call, want: u64, dst: &mut [u8; 2 * MAX_CAPTURE]) -> u64 {
    match call.op {
        op::READ | op::WRITE => copy_chunk(dst, 0, call.buf, want),
        op::READV | op::WRITEV => copy_iov(dst, call.buf, call.vlen as u64, want),
        op::RECVMSG | op::SENDMSG => {
            let Ok(msg) = (unsafe { bpf_probe_read_user(call.buf as *const user_msghdr) }) else {
                count(counter::COPY_FAILED);
                return 0;
            };
            copy_iov(dst, msg.msg_iov, msg.msg_iovlen, want)
        }
        _ => 0,
    }
}

#[inline(always)]
fn copy_iov(dst: &mut [u8; 2 * MAX_CAPTURE], iov: u64, vlen: u64, want: u64) -> u64 {
    let mut off: u64 = 0;
    for i in 0..MAX_IOV as u64 {
        if i >= vlen || off >= want {
            break;
        }
        let Ok(v) = (unsafe { bpf_probe_read_user((iov + i * 16) as *const iovec) }) else {
            count(counter::COPY_FAILED);
            break;
        };
        let n = core::cmp::min(v.iov_len, want - off);
        let got = copy_chunk(dst, off, v.iov_base, n);
        off += got;
        if got < n {
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

fn emit_open(cfg: &Config, key: &ConnKey, st: &ConnState, pid_tgid: u64) {
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
        role: st.role,
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
    output(cfg, &ev);
}

// ---------------------------------------------------------------- close

#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let cfg = config();
    if !tgid_wanted(&cfg, tgid) {
        return 0;
    }
    let key = ConnKey {
        tgid,
        fd: arg(&ctx, 0) as u32,
    };
    if let Some(st) = unsafe { CONNS.get(key) } {
        if st.proto == proto::UNKNOWN && st.misses > 0 {
            // Closed before it could be given up (a TLS handshake that
            // failed, a probe sending garbage): it was not HTTP either.
            count(counter::NOT_HTTP);
        }
        emit_close(&cfg, &key, st);
        let _ = CONNS.remove(key);
    }
    0
}

// ---------------------------------------------------------------- processes

/// `sched:sched_process_exit`: tells userspace when a whole process is gone.
#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    let group_dead = unsafe { ctx.read_at::<u8>(32) }.unwrap_or(0);
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
    let child = unsafe { ctx.read_at::<i32>(20) }.unwrap_or(0) as u32;
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
