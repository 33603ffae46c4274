//! Least privilege: once the kernel programs are loaded and attached, sonde
//! gives up every capability but the one it still uses, so a bug in the
//! parsing of hostile traffic cannot be turned into control of the node.
//!
//! What runs after the attach needs no privilege: the ring buffer is mapped,
//! maps are read and written through the descriptors already held, and
//! detaching is closing them. The one exception is naming processes of other
//! users, whose `/proc/<pid>/exe` the kernel guards with a ptrace access
//! check: `CAP_SYS_PTRACE` is kept when sonde has it.
//!
//! Capabilities belong to threads, so this must run while sonde has only one
//! thread: every thread started later inherits the reduced set.
use std::io;

/// `CAP_SYS_PTRACE`, the capability kept.
pub const CAP_SYS_PTRACE: u32 = 19;
const CAP_SETPCAP: u32 = 8;
/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("dropping capabilities: {what} failed")]
    Syscall {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("dropping capabilities: sonde has {threads} threads; it must drop them with one")]
    Threads { threads: usize },
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capability sets of the calling thread, as 64-bit masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CapSets {
    effective: u64,
    permitted: u64,
}

fn bit(cap: u32) -> u64 {
    1 << cap
}

fn syscall_result(what: &'static str, ret: libc::c_long) -> Result<(), PrivilegeError> {
    if ret < 0 {
        Err(PrivilegeError::Syscall {
            what,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

fn capget() -> Result<CapSets, PrivilegeError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as version 3 expects.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    syscall_result("capget", ret)?;
    let join = |low: u32, high: u32| u64::from(low) | (u64::from(high) << 32);
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
    })
}

fn capset(sets: CapSets) -> Result<(), PrivilegeError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |mask: u64, high: bool| (if high { mask >> 32 } else { mask }) as u32;
    let data = [false, true].map(|high| CapData {
        effective: half(sets.effective, high),
        permitted: half(sets.permitted, high),
        inheritable: 0,
    });
    // SAFETY: header and a two-element data array, as version 3 expects.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    syscall_result("capset", ret)
}

fn prctl(
    what: &'static str,
    option: libc::c_int,
    arg: libc::c_ulong,
) -> Result<(), PrivilegeError> {
    // SAFETY: the options used here take integer arguments only.
    let ret = unsafe { libc::prctl(option, arg, 0, 0, 0) };
    syscall_result(what, ret.into())
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(63)
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |tasks| tasks.count())
}

/// What [`drop_after_attach`] left sonde with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kept {
    /// `CAP_SYS_PTRACE` was held, and still is.
    pub sys_ptrace: bool,
}

/// Drops every capability but `CAP_SYS_PTRACE` from the effective,
/// permitted, inheritable, ambient and (when allowed) bounding sets, and sets
/// no_new_privs so that nothing can be regained, not even through exec.
pub fn drop_after_attach() -> Result<Kept, PrivilegeError> {
    let threads = thread_count();
    if threads != 1 {
        return Err(PrivilegeError::Threads { threads });
    }
    let held = capget()?;
    let keep = held.permitted & bit(CAP_SYS_PTRACE);
    // The bounding set can only shrink with CAP_SETPCAP, so first, while it
    // is still held. Without it (sonde given only the capabilities it
    // needs), no_new_privs below already keeps exec from granting any.
    if held.effective & bit(CAP_SETPCAP) != 0 {
        for cap in (0..=last_cap()).filter(|&cap| bit(cap) & keep == 0) {
            prctl("PR_CAPBSET_DROP", libc::PR_CAPBSET_DROP, cap.into())?;
        }
    }
    prctl(
        "PR_CAP_AMBIENT_CLEAR_ALL",
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )?;
    capset(CapSets {
        effective: keep,
        permitted: keep,
    })?;
    prctl("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    Ok(Kept {
        sys_ptrace: keep != 0,
    })
}
