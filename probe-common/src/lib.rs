//! Types that cross the kernel/userspace boundary.
//!
//! Every struct here is `#[repr(C)]`, free of padding (flags are `u32`, never
//! `bool`) and checked with `const` size assertions, so the eBPF programs and
//! the daemon can never disagree on a layout. Map names are constants for the
//! same reason.
#![no_std]

/// Largest payload prefix the kernel copies per socket call. A power of two,
/// so the eBPF side can clamp lengths with a mask the verifier understands.
pub const MAX_CAPTURE: usize = 8192;
/// Payload prefix copied per socket call unless `--capture-bytes` says otherwise.
pub const DEFAULT_CAPTURE: u32 = 1024;
/// Bytes of the task's `comm` carried by connection events.
pub const COMM_LEN: usize = 16;

/// Map names, shared by both sides.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const CONNS: &str = "CONNS";
    pub const SOCKS: &str = "SOCKS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const PID_FILTER: &str = "PID_FILTER";
    pub const PORT_FILTER: &str = "PORT_FILTER";
}

/// Names of the read-only globals userspace sets at load time.
pub mod globals {
    pub const CONFIG: &str = "CONFIG";
}

/// Load-time configuration of the kernel programs (one read-only global).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// sonde's own tgid: never observed.
    pub self_tgid: u32,
    /// Payload bytes copied per call, at most [`MAX_CAPTURE`].
    pub capture_bytes: u32,
    /// Non-zero: only tgids present in `PID_FILTER` are observed.
    pub filter_pids: u32,
    /// Non-zero: only connections with a port in `PORT_FILTER` are observed.
    pub filter_ports: u32,
    /// Connections whose peer port is this one are ignored (sonde's own
    /// metrics endpoint being scraped). 0 = none.
    pub ignore_peer_port: u32,
    /// Non-zero: emit `PROC_EXEC` events (userspace matches `--exe`).
    pub notify_exec: u32,
    /// Offsets of `skc_v6_daddr` / `skc_v6_rcv_saddr` in `struct sock_common`,
    /// read from the running kernel's BTF. 0 = unknown (IPv6 addresses unset).
    pub v6_daddr_off: u32,
    pub v6_saddr_off: u32,
    /// Bytes waiting in the ring buffer above which a writer wakes the reader
    /// early instead of waiting for the reader's timed drain.
    pub wakeup_bytes: u32,
    /// Offset of `sk_shutdown` in `struct sock`, from the kernel's BTF:
    /// tells a close from a `shutdown(SHUT_WR)`. 0 = unknown (every FIN
    /// sent is taken for a close).
    pub sk_shutdown_off: u32,
    /// Offset of `sk_socket` in `struct sock`, from the kernel's BTF: NULL
    /// once the owner has closed the socket (it is orphaned).
    pub sk_socket_off: u32,
    /// Offset of `sk_protocol` in `struct sock`, from the kernel's BTF: the
    /// data programs are raw tracepoints, which get the socket but not the
    /// protocol the classic tracepoint's record carried.
    pub sk_protocol_off: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 48);

/// Event kinds, the first field read by the decoder.
pub mod kind {
    /// Bytes a socket read returned (data flowed in).
    pub const DATA_IN: u32 = 1;
    /// Bytes a socket write accepted (data flowed out).
    pub const DATA_OUT: u32 = 2;
    pub const CONN_OPEN: u32 = 3;
    pub const CONN_CLOSE: u32 = 4;
    pub const PROC_EXEC: u32 = 5;
    pub const PROC_EXIT: u32 = 6;
}

/// What the kernel knows of a connection's role when it first sees it. The
/// tracepoint programs never see accept or connect (a syscall tracepoint
/// would slow every syscall on the node), so they send `UNKNOWN` and
/// userspace learns the side from the first head.
pub mod role {
    /// Seen first on a read or write: userspace infers the role from content.
    pub const UNKNOWN: u32 = 0;
    /// Returned by accept/accept4.
    pub const SERVER: u32 = 1;
    /// Set up by connect.
    pub const CLIENT: u32 = 2;
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the socket call moved the data.
    pub ts_ns: u64,
    /// Kernel-assigned id, unique per tracked connection for this boot.
    pub conn_id: u64,
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 32);

/// A socket read or write; `captured` payload bytes follow it in the record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataEvent {
    pub hdr: EventHeader,
    /// Bytes the socket call moved (its return value).
    pub total_len: u32,
    /// Bytes of payload that follow (a prefix of the data moved).
    pub captured: u32,
}
const _: () = assert!(core::mem::size_of::<DataEvent>() == 40);

/// A connection seen for the first time (accepted, connected, or found on its
/// first read/write, which covers sockets opened before sonde started and
/// sockets inherited across fork).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEvent {
    pub hdr: EventHeader,
    /// AF_INET or AF_INET6.
    pub family: u32,
    /// One of [`role`].
    pub role: u32,
    pub local_port: u32,
    pub peer_port: u32,
    /// IPv4 in the first 4 bytes (network order), or IPv6.
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 96);

/// A process event (`PROC_EXEC` or `PROC_EXIT`): only the header is used.
pub type ProcEvent = EventHeader;

/// Key of the kernel's connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}
const _: () = assert!(core::mem::size_of::<ConnKey>() == 8);

/// Classification of a tracked connection's payload.
pub mod proto {
    /// No payload seen yet that says what it is.
    pub const UNKNOWN: u32 = 0;
    pub const HTTP1: u32 = 1;
    /// Not HTTP/1.x: every later call on it is dropped in the kernel.
    pub const OTHER: u32 = 2;
    /// HTTP/1.x whose CONN_OPEN record did not fit in the ring buffer: it is
    /// written again before the connection's next record, so a full ring
    /// buffer costs records, not the whole connection.
    pub const UNANNOUNCED: u32 = 3;
}

/// Value of the kernel's connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// `struct sock *` the fd pointed to: a different one means the fd was
    /// reused for a new connection.
    pub sk: u64,
    pub id: u64,
    /// One of [`proto`].
    pub proto: u32,
    /// Payloads that did not look like HTTP while `proto` was UNKNOWN.
    pub misses: u32,
}
const _: () = assert!(core::mem::size_of::<ConnState>() == 24);

/// Per-CPU counters of the kernel side; their index in `COUNTERS`.
pub mod counter {
    /// Records that did not fit in the ring buffer.
    pub const RINGBUF_FULL: u32 = 0;
    /// Connections not tracked because `CONNS` was full, or whose close
    /// cannot be seen because `SOCKS` was full.
    pub const CONN_TABLE_FULL: u32 = 1;
    /// Data records written to the ring buffer.
    pub const DATA_EVENTS: u32 = 2;
    /// Payloads that could not be copied from user memory.
    pub const COPY_FAILED: u32 = 3;
    /// Connections classified as not HTTP/1.x (given up after repeated
    /// non-HTTP payloads, or closed after one without any HTTP).
    pub const NOT_HTTP: u32 = 4;
    /// Children of observed processes not followed because `PID_FILTER` was full.
    pub const PID_TABLE_FULL: u32 = 5;
    /// TCP payloads moved by a call whose buffers sonde does not read
    /// (io_uring, splice, sendmmsg, recvmmsg, 32-bit syscalls), on a
    /// connection neither filtered out by port nor known not to be HTTP.
    pub const UNSUPPORTED_CALL: u32 = 6;
    pub const COUNT: u32 = 7;
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), padding-free plain data.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ConnState {}
}
