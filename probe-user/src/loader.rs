//! Stage 0: load the kernel programs, attach them to their tracepoints and
//! hand out the maps the daemon talks to.
//!
//! Every precondition (root, BTF, tracefs, each tracepoint) is checked here
//! so that a node that cannot run sonde gets one line naming the problem.
use std::{collections::HashSet, path::Path};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use probe_common::{globals, maps, Config, ConnKey, ConnState};

use crate::{
    btf::{self, Btf, BtfError},
    metrics::KernelCounters,
};

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

const TRACEFS: &str = "/sys/kernel/tracing";

/// How a program is attached to its tracepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    /// A classic tracepoint: the program reads the record the kernel fills.
    Classic,
    /// A raw tracepoint: the program gets the tracepoint's arguments, and
    /// the kernel fills no record. For the hooks every socket call passes.
    Raw,
}

/// A program and the tracepoint (category, name) it is attached to.
struct Attachment {
    program: &'static str,
    hook: Hook,
    category: &'static str,
    name: &'static str,
}

const fn at(
    program: &'static str,
    hook: Hook,
    category: &'static str,
    name: &'static str,
) -> Attachment {
    Attachment {
        program,
        hook,
        category,
        name,
    }
}

const ATTACHMENTS: &[Attachment] = &[
    at("sock_recv", Hook::Raw, "sock", "sock_recv_length"),
    at("sock_send", Hook::Raw, "sock", "sock_send_length"),
    at("sock_state", Hook::Classic, "sock", "inet_sock_set_state"),
    at("sock_destroy", Hook::Classic, "tcp", "tcp_destroy_sock"),
    at("process_exit", Hook::Classic, "sched", "sched_process_exit"),
    at("process_fork", Hook::Classic, "sched", "sched_process_fork"),
    at("process_exec", Hook::Classic, "sched", "sched_process_exec"),
];

/// The programs `--bench-floor` attaches instead, on the same hooks: empty,
/// of the same type as the program each replaces.
fn noop(hook: Hook) -> &'static str {
    match hook {
        Hook::Classic => "noop",
        Hook::Raw => "noop_raw",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "must run as root, or with the capabilities CAP_BPF and CAP_PERFMON, to load its eBPF programs"
    )]
    NotPrivileged,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("kernel layout differs from what the programs assume: struct sock_common.{field} is at offset {actual}, expected {expected}")]
    Layout {
        field: &'static str,
        actual: u32,
        expected: u32,
    },
    #[error("tracefs is not available at {TRACEFS} and could not be mounted: {0}")]
    Tracefs(String),
    #[error("the kernel has no tracepoint {0}:{1} (sonde needs syscall and sock tracepoints, Linux >= 6.3)")]
    MissingTracepoint(&'static str, &'static str),
    #[error("loading the eBPF programs failed: {0}")]
    Load(String),
    #[error("attaching {program} to {category}:{name} failed: {reason}")]
    Attach {
        program: &'static str,
        category: &'static str,
        name: &'static str,
        reason: String,
    },
    #[error("eBPF map {0} is missing or of the wrong type")]
    Map(&'static str),
}

/// What to load, from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub capture_bytes: u32,
    pub ports: Vec<u16>,
    /// Observe only these tgids (and their children), when `filter_pids`.
    pub pids: Vec<u32>,
    pub filter_pids: bool,
    /// Report exec events so userspace can extend the pid filter (`--exe`).
    pub notify_exec: bool,
    /// Peer port whose connections are not observed (sonde's own endpoint).
    pub ignore_peer_port: u16,
    pub ringbuf_bytes: u32,
    pub max_connections: u32,
    /// Attach a program that does nothing to every tracepoint instead of
    /// the real ones (`cargo xtask bench` measures this floor).
    pub floor: bool,
}

/// The loaded, attached programs and the maps userspace uses. Dropping it
/// detaches every program.
pub struct Probe {
    _ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    conns: BpfHashMap<MapData, ConnKey, ConnState>,
    socks: BpfHashMap<MapData, u64, ConnKey>,
    pid_filter: BpfHashMap<MapData, u32, u32>,
}

pub fn load(s: &Settings) -> Result<(Probe, RingBuf<MapData>), LoadError> {
    if !privileged(&std::fs::read_to_string("/proc/self/status").unwrap_or_default()) {
        return Err(LoadError::NotPrivileged);
    }
    let btf = Btf::from_file(Path::new(btf::VMLINUX))?;
    check_layout(&btf)?;
    let off = btf::sock_offsets(&btf)?;
    ensure_tracefs()?;
    for a in ATTACHMENTS {
        if !Path::new(TRACEFS)
            .join("events")
            .join(a.category)
            .join(a.name)
            .exists()
        {
            return Err(LoadError::MissingTracepoint(a.category, a.name));
        }
    }

    let config = Config {
        self_tgid: std::process::id(),
        capture_bytes: s.capture_bytes.min(probe_common::MAX_CAPTURE as u32),
        filter_pids: s.filter_pids as u32,
        filter_ports: !s.ports.is_empty() as u32,
        ignore_peer_port: s.ignore_peer_port as u32,
        notify_exec: s.notify_exec as u32,
        v6_daddr_off: off.v6_daddr,
        v6_saddr_off: off.v6_rcv_saddr,
        // Wake the reader early once an eighth of the buffer is waiting.
        wakeup_bytes: s.ringbuf_bytes / 8,
        sk_shutdown_off: off.sk_shutdown,
        sk_socket_off: off.sk_socket,
        sk_protocol_off: off.sk_protocol,
    };
    let mut ebpf = EbpfLoader::new()
        .override_global(globals::CONFIG, &config, true)
        .map_max_entries(maps::EVENTS, s.ringbuf_bytes)
        .map_max_entries(maps::CONNS, s.max_connections)
        .map_max_entries(maps::SOCKS, s.max_connections)
        .load(OBJECT)
        .map_err(|e| LoadError::Load(error_chain(&e)))?;

    let mut loaded = HashSet::new();
    for a in ATTACHMENTS {
        let program = if s.floor { noop(a.hook) } else { a.program };
        attach(&mut ebpf, &mut loaded, program, a)?;
    }

    let events = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)
        .map_err(|_| LoadError::Map(maps::EVENTS))?;
    let counters = PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)
        .map_err(|_| LoadError::Map(maps::COUNTERS))?;
    let conns = BpfHashMap::try_from(take(&mut ebpf, maps::CONNS)?)
        .map_err(|_| LoadError::Map(maps::CONNS))?;
    let socks = BpfHashMap::try_from(take(&mut ebpf, maps::SOCKS)?)
        .map_err(|_| LoadError::Map(maps::SOCKS))?;
    let pid_filter = BpfHashMap::try_from(take(&mut ebpf, maps::PID_FILTER)?)
        .map_err(|_| LoadError::Map(maps::PID_FILTER))?;
    let mut port_filter: BpfHashMap<MapData, u32, u32> =
        BpfHashMap::try_from(take(&mut ebpf, maps::PORT_FILTER)?)
            .map_err(|_| LoadError::Map(maps::PORT_FILTER))?;
    for &p in &s.ports {
        port_filter
            .insert(p as u32, 1, 0)
            .map_err(|e| LoadError::Load(format!("port filter: {e}")))?;
    }
    let mut probe = Probe {
        _ebpf: ebpf,
        counters,
        conns,
        socks,
        pid_filter,
    };
    for &pid in &s.pids {
        probe.allow_pid(pid);
    }
    Ok((probe, events))
}

/// Loads `program` (once: the floor's programs serve several hooks) and
/// attaches it where `a` says.
fn attach(
    ebpf: &mut Ebpf,
    loaded: &mut HashSet<&'static str>,
    program: &'static str,
    a: &Attachment,
) -> Result<(), LoadError> {
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| LoadError::Load(format!("program {program} not in the object")))?;
    let load_failed =
        |e: &dyn std::error::Error| LoadError::Load(format!("{program}: {}", error_chain(e)));
    let attach_failed = |e: &dyn std::error::Error| LoadError::Attach {
        program,
        category: a.category,
        name: a.name,
        reason: error_chain(e),
    };
    let first = loaded.insert(program);
    match a.hook {
        Hook::Classic => {
            let prog: &mut TracePoint = prog.try_into().map_err(|e| load_failed(&e))?;
            if first {
                prog.load().map_err(|e| load_failed(&e))?;
            }
            prog.attach(a.category, a.name)
                .map_err(|e| attach_failed(&e))?;
        }
        Hook::Raw => {
            let prog: &mut RawTracePoint = prog.try_into().map_err(|e| load_failed(&e))?;
            if first {
                prog.load().map_err(|e| load_failed(&e))?;
            }
            prog.attach(a.name).map_err(|e| attach_failed(&e))?;
        }
    }
    Ok(())
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::Map(name))
}

/// Whether the effective capabilities (the `CapEff:` line of
/// /proc/self/status) allow loading and attaching tracing programs:
/// CAP_SYS_ADMIN, or CAP_BPF together with CAP_PERFMON (Linux >= 5.8).
fn privileged(status: &str) -> bool {
    const SYS_ADMIN: u64 = 1 << 21;
    const PERFMON: u64 = 1 << 38;
    const BPF: u64 = 1 << 39;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    eff & SYS_ADMIN != 0 || eff & (PERFMON | BPF) == PERFMON | BPF
}

/// The programs read the head of `struct sock_common` at fixed offsets
/// (unchanged since Linux 2.6); refuse to run on a kernel where that is false
/// rather than report wrong addresses.
fn check_layout(btf: &Btf) -> Result<(), LoadError> {
    for (field, expected) in [
        ("skc_daddr", 0),
        ("skc_rcv_saddr", 4),
        ("skc_dport", 12),
        ("skc_num", 14),
        ("skc_family", 16),
    ] {
        let actual = btf.member_offset("sock_common", field)?;
        if actual != expected {
            return Err(LoadError::Layout {
                field,
                actual,
                expected,
            });
        }
    }
    Ok(())
}

fn ensure_tracefs() -> Result<(), LoadError> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL");
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LoadError::Tracefs(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    Ok(())
}

/// aya errors nest their cause (often the verifier log); keep it on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Probe {
    /// Tracepoint attachments made (one per program per tracepoint).
    pub fn attached(&self) -> usize {
        // Every attachment is made, or loading failed.
        ATTACHMENTS.len()
    }

    /// Current totals of the kernel's counters, summed over CPUs, indexed
    /// by `probe_common::counter`.
    pub fn counters(&self) -> KernelCounters {
        let mut totals = KernelCounters::default();
        for (idx, total) in totals.iter_mut().enumerate() {
            *total = self
                .counters
                .get(&(idx as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
        }
        totals
    }

    /// Adds a process to the pid filter (a `--exe` match found after start).
    pub fn allow_pid(&mut self, tgid: u32) {
        if self.pid_filter.insert(tgid, 1, 0).is_err() {
            tracing::warn!(tgid, "pid filter full: process not observed");
        }
    }

    /// Deletes the connections of processes that exited (their sockets may
    /// live on in other processes, or their close went unseen). Returns how
    /// many entries were removed.
    pub fn sweep(&mut self, process_alive: impl Fn(u32) -> bool) -> usize {
        let dead_conns: HashSet<ConnKey> = self
            .conns
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !process_alive(k.tgid))
            .collect();
        let dead_socks: HashSet<u64> = self
            .socks
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, k)| !process_alive(k.tgid))
            .map(|(sk, _)| sk)
            .collect();
        dead_conns
            .iter()
            .filter(|k| self.conns.remove(k).is_ok())
            .count()
            + dead_socks
                .iter()
                .filter(|sk| self.socks.remove(sk).is_ok())
                .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privilege_comes_from_effective_capabilities() {
        for (cap_eff, ok) in [
            ("000001ffffffffff", true),  // root
            ("0000000000200000", true),  // CAP_SYS_ADMIN alone
            ("000000c000000000", true),  // CAP_BPF + CAP_PERFMON
            ("0000008000000000", false), // CAP_BPF alone
            ("0000000000000000", false), // nobody
        ] {
            let status = format!("Name:\tsonde\nCapInh:\t0\nCapEff:\t{cap_eff}\n");
            assert_eq!(privileged(&status), ok, "{cap_eff}");
        }
        assert!(!privileged("garbage"));
    }
}
