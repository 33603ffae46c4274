//! What the kernel says a process costs: time spent in its BPF programs
//! (`/proc/PID/fdinfo`, with `kernel.bpf_stats_enabled`), CPU time of all
//! its threads (`/proc/PID/task/*/schedstat`) and its resident memory.

use std::collections::BTreeMap;
use std::fs;

use anyhow::{bail, Context, Result};
use serde::Serialize;

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// While alive, the kernel times every BPF program run (`run_time_ns`,
/// `run_cnt` in a program's fdinfo). Dropping it puts back the setting
/// found, also when the bench fails or is interrupted.
pub struct BpfStatsEnabled {
    previous: String,
}

impl BpfStatsEnabled {
    pub fn switch_on() -> Result<BpfStatsEnabled> {
        let previous = fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| format!("reading {BPF_STATS_SYSCTL}"))?
            .trim()
            .to_owned();
        fs::write(BPF_STATS_SYSCTL, "1")
            .with_context(|| format!("writing 1 to {BPF_STATS_SYSCTL}"))?;
        Ok(BpfStatsEnabled { previous })
    }
}

impl Drop for BpfStatsEnabled {
    fn drop(&mut self) {
        if let Err(err) = fs::write(BPF_STATS_SYSCTL, &self.previous) {
            eprintln!(
                "bench: could not restore {BPF_STATS_SYSCTL} to {}: {err}",
                self.previous
            );
        }
    }
}

/// Run time and run count summed over BPF programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BpfTotals {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl BpfTotals {
    /// What was added since `earlier`.
    pub fn since(self, earlier: BpfTotals) -> BpfTotals {
        BpfTotals {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(earlier.run_cnt),
        }
    }
}

/// The totals of every BPF program `pid` holds a file descriptor of, each
/// program once however many descriptors refer to it. They count every run
/// of the program, whichever process triggered it.
pub fn bpf_totals(pid: u32) -> Result<BpfTotals> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut programs = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // A descriptor closed between listing and reading is not a program we hold.
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        if let Some((id, totals)) = parse_program_fdinfo(&text) {
            programs.insert(id, totals);
        }
    }
    if programs.is_empty() {
        bail!("process {pid} holds no BPF program");
    }
    Ok(programs
        .values()
        .fold(BpfTotals::default(), |sum, p| BpfTotals {
            run_time_ns: sum.run_time_ns + p.run_time_ns,
            run_cnt: sum.run_cnt + p.run_cnt,
        }))
}

/// `(prog_id, totals)` from the fdinfo of a BPF program descriptor; `None`
/// for any other descriptor (maps, links, sockets, files).
fn parse_program_fdinfo(text: &str) -> Option<(u64, BpfTotals)> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
    };
    field("prog_type")?;
    Some((
        field("prog_id")?,
        BpfTotals {
            run_time_ns: field("run_time_ns")?,
            run_cnt: field("run_cnt")?,
        },
    ))
}

/// CPU time of every thread of `pid` so far, in nanoseconds.
pub fn cpu_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let path = entry?.path().join("schedstat");
        // A thread that ended between listing and reading: its time is gone
        // from every later reading too, so skipping it is consistent.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        total += parse_schedstat(&text).with_context(|| format!("{}: {text:?}", path.display()))?;
    }
    Ok(total)
}

/// The first field of a schedstat line: time on the CPU in nanoseconds.
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// CPU time every CPU of the machine spent busy so far (neither idle nor
/// waiting for I/O), in nanoseconds: everything that ran, including
/// interrupts and time the hypervisor took (steal).
pub fn machine_busy_ns() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = parse_busy_ticks(&stat).context("no `cpu` line in /proc/stat")?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(ticks * 1_000_000_000 / per_second.max(1))
}

/// Busy ticks of the `cpu` line: user, nice, system, irq, softirq, steal
/// (guest time is already in user).
fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = fields[..] else {
        return None;
    };
    Some(user + nice + system + irq + softirq + steal)
}

/// Resident memory of a process, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// The highest it has been (`VmHWM`).
    pub peak_bytes: u64,
    /// Now (`VmRSS`).
    pub resident_bytes: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    Ok(Memory {
        peak_bytes: sonde_tests::process::peak_rss_bytes(pid)?,
        resident_bytes: sonde_tests::process::rss_bytes(pid)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As this kernel (6.18) prints them.
    const PROGRAM: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\nprog_type:\t5\n\
        prog_jited:\t1\nprog_tag:\tcfeb43f87c537820\nmemlock:\t4096\nprog_id:\t6349\n\
        run_time_ns:\t81234\nrun_cnt:\t97\nrecursion_misses:\t0\nverified_insns:\t117\n";
    const LINK: &str = "pos:\t0\nflags:\t02000000\nmnt_id:\t17\nino:\t1038\nlink_type:\tperf\n\
        link_id:\t11331\nprog_tag:\tcfeb43f87c537820\nprog_id:\t7551\n\
        tp_name:\tsys_enter_read\nevent_type:\ttracepoint\ncookie:\t0\n";
    const MAP: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\nmap_type:\t6\n\
        key_size:\t4\nvalue_size:\t8\nmax_entries:\t7\nmap_flags:\t0x0\nmap_extra:\t0x0\n\
        memlock:\t480\nmap_id:\t5145\nfrozen:\t0\n";
    const SOCKET: &str = "pos:\t0\nflags:\t02\nmnt_id:\t9\nino:\t44231\n";

    #[test]
    fn reads_program_fdinfo_only() {
        let program = BpfTotals {
            run_time_ns: 81234,
            run_cnt: 97,
        };
        let cases = [
            ("program", PROGRAM, Some((6349, program))),
            ("link to the program", LINK, None),
            ("map", MAP, None),
            ("socket", SOCKET, None),
            // Without bpf_stats fields (older kernels) the cost is unknown.
            (
                "program without stats",
                &PROGRAM[..PROGRAM.find("run_time_ns").unwrap()],
                None,
            ),
        ];
        for (what, text, expected) in cases {
            assert_eq!(parse_program_fdinfo(text), expected, "{what}");
        }
    }

    #[test]
    fn reads_schedstat() {
        assert_eq!(parse_schedstat("123456789 2345 67\n"), Some(123456789));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn reads_busy_ticks() {
        let stat = "cpu  1547885 10789 287928 1010172 15731 0 42241 7820 0 0\n\
                    cpu0 763338 5888 135543 529689 4958 0 18728 3891 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(
            parse_busy_ticks(stat),
            Some(1547885 + 10789 + 287928 + 42241 + 7820)
        );
        assert_eq!(parse_busy_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_busy_ticks("cpu  1 2 3\n"), None);
    }

    #[test]
    fn totals_since_an_earlier_reading() {
        let earlier = BpfTotals {
            run_time_ns: 1000,
            run_cnt: 10,
        };
        let later = BpfTotals {
            run_time_ns: 5000,
            run_cnt: 30,
        };
        let expected = BpfTotals {
            run_time_ns: 4000,
            run_cnt: 20,
        };
        assert_eq!(later.since(earlier), expected);
        assert_eq!(earlier.since(later), BpfTotals::default());
    }
}
