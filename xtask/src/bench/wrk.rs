//! The load: wrk on its own CPU against nginx, and what its `--latency`
//! report says (throughput, latency percentiles, errors).
//!
//! One wrk thread on CPU 1 while nginx's one worker has CPU 0, so the two
//! never compete for a core; sonde's threads and the rest of the machine
//! share both.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::children;

/// The CPU wrk runs on (nginx's worker has the other one).
const WRK_CPU: &str = "1";
/// How long past its duration wrk may take (connecting, printing) before
/// it counts as hung.
const EXIT_GRACE: Duration = Duration::from_secs(15);

/// How the clients use their connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Every connection stays open for the whole run.
    KeepAlive,
    /// `Connection: close`: a TCP connection per request, so each request
    /// also costs an accept, a close and their events.
    Close,
}

impl Workload {
    pub const ALL: [Workload; 2] = [Workload::KeepAlive, Workload::Close];

    pub fn label(self) -> &'static str {
        match self {
            Workload::KeepAlive => "keep-alive",
            Workload::Close => "close",
        }
    }

    /// Open connections. 32 keep nginx's worker saturated with keep-alive.
    /// With `Connection: close` throughput levels off at 16 (measured here
    /// without sonde: 8 → 5.6k, 16 → 8.4k, 32 → 8.9k, 64 → 9.0k req/s);
    /// more connections mostly add sockets waiting to be accepted.
    pub fn connections(self) -> u32 {
        match self {
            Workload::KeepAlive => 32,
            Workload::Close => 16,
        }
    }
}

/// wrk's failed socket operations by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SocketErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
}

impl SocketErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

/// What one wrk run reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WrkReport {
    /// Responses wrk completed; requests cut off at the end are not in it.
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub socket_errors: SocketErrors,
    /// Responses with a status outside 2xx and 3xx.
    pub non_2xx: u64,
}

/// A finished wrk run.
pub struct Load {
    pub report: WrkReport,
    /// CPU time wrk used, user and system.
    pub cpu_ns: u64,
}

/// Runs `wrk -t1 -c N -d duration --latency` on CPU 1 against `url`, with a
/// Lua `script` if given. A Ctrl-C stops it and fails the run.
pub fn run(
    url: &str,
    workload: Workload,
    duration: Duration,
    script: Option<&Path>,
) -> Result<Load> {
    let mut command = Command::new("taskset");
    command
        .args(["-c", WRK_CPU, "wrk", "-t1"])
        .arg(format!("-c{}", workload.connections()))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency");
    if workload == Workload::Close {
        command.args(["-H", "Connection: close"]);
    }
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    command.arg(url);
    let line = crate::cmd::display(&command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}` (installed by `cargo xtask setup`)"))?;
    // taskset execs wrk, so the child is wrk.
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + duration + EXIT_GRACE;
    let (status, cpu_ns) = loop {
        if let Some(ended) = reap(pid, false)? {
            break ended;
        }
        if children::interrupted() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = reap(pid, true);
            bail!("`{line}` stopped: interrupted or hung");
        }
        thread::sleep(Duration::from_millis(50));
    };
    // wrk prints well under a pipe's capacity, so reading after its end is safe.
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_string(&mut stdout)?;
    }
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr)?;
    }
    if !status.success() {
        bail!("`{line}` failed ({status}): {stdout}{stderr}");
    }
    let report =
        parse(&stdout).with_context(|| format!("unexpected output of `{line}`:\n{stdout}"))?;
    Ok(Load { report, cpu_ns })
}

/// Reaps child `pid` if it has ended (or, with `block`, once it ends): its
/// exit status and the CPU time it used, which only `wait4` tells once the
/// process is gone. `std::process::Child` is not told, so the caller must
/// not wait on it again.
fn reap(pid: libc::pid_t, block: bool) -> Result<Option<(ExitStatus, u64)>> {
    let mut status = 0;
    // SAFETY: rusage is plain data for the kernel to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let options = if block { 0 } else { libc::WNOHANG };
    // SAFETY: plain syscall on our own unreaped child, with valid out-pointers.
    let reaped = unsafe { libc::wait4(pid, &mut status, options, &mut usage) };
    if reaped == -1 {
        return Err(std::io::Error::last_os_error()).context("waiting for wrk");
    }
    if reaped == 0 {
        return Ok(None);
    }
    let ns = |time: libc::timeval| time.tv_sec as u64 * 1_000_000_000 + time.tv_usec as u64 * 1000;
    Ok(Some((
        ExitStatus::from_raw(status),
        ns(usage.ru_utime) + ns(usage.ru_stime),
    )))
}

/// Reads a `wrk --latency` report.
pub fn parse(text: &str) -> Result<WrkReport> {
    let mut requests = None;
    let mut requests_per_sec = None;
    let mut p50_us = None;
    let mut p99_us = None;
    let mut socket_errors = SocketErrors::default();
    let mut non_2xx = 0;
    for line in text.lines().map(str::trim) {
        if let Some((count, _)) = line.split_once(" requests in ") {
            requests = Some(count.parse().context("request count")?);
        } else if let Some(rate) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = Some(rate.trim().parse().context("Requests/sec")?);
        } else if let Some(value) = line.strip_prefix("50%") {
            p50_us = Some(microseconds(value.trim())?);
        } else if let Some(value) = line.strip_prefix("99%") {
            p99_us = Some(microseconds(value.trim())?);
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            socket_errors = parse_socket_errors(errors)?;
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = count.trim().parse().context("Non-2xx count")?;
        }
    }
    Ok(WrkReport {
        requests: requests.context("no 'N requests in' line")?,
        requests_per_sec: requests_per_sec.context("no 'Requests/sec:' line")?,
        p50_us: p50_us.context("no 50% line (was --latency given?)")?,
        p99_us: p99_us.context("no 99% line (was --latency given?)")?,
        socket_errors,
        non_2xx,
    })
}

/// `connect 0, read 3, write 0, timeout 8`
fn parse_socket_errors(text: &str) -> Result<SocketErrors> {
    let mut errors = SocketErrors::default();
    for part in text.split(',') {
        let (kind, count) = part
            .trim()
            .split_once(' ')
            .with_context(|| format!("socket error count {part:?}"))?;
        let count: u64 = count.trim().parse()?;
        match kind {
            "connect" => errors.connect = count,
            "read" => errors.read = count,
            "write" => errors.write = count,
            "timeout" => errors.timeout = count,
            other => bail!("unknown socket error kind {other:?}"),
        }
    }
    Ok(errors)
}

/// A wrk duration (`287.00us`, `3.15ms`, `1.14s`, `2.00m`, `1.00h`) in µs.
fn microseconds(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("duration without a unit: {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("duration {text:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        other => bail!("unknown duration unit {other:?} in {text:?}"),
    };
    Ok(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_captured_reports() {
        let none = SocketErrors::default();
        let cases: &[(&str, &str, WrkReport)] = &[
            (
                "keep-alive, 32 connections",
                include_str!("testdata/wrk/keepalive.txt"),
                WrkReport {
                    requests: 71889,
                    requests_per_sec: 35870.12,
                    p50_us: 252.0,
                    p99_us: 10580.0,
                    socket_errors: none,
                    non_2xx: 0,
                },
            ),
            (
                "Connection: close",
                include_str!("testdata/wrk/close.txt"),
                WrkReport {
                    requests: 13174,
                    requests_per_sec: 6427.67,
                    p50_us: 3150.0,
                    p99_us: 10650.0,
                    socket_errors: none,
                    non_2xx: 0,
                },
            ),
            (
                "404 answers",
                include_str!("testdata/wrk/non2xx.txt"),
                WrkReport {
                    requests: 192,
                    requests_per_sec: 91.44,
                    p50_us: 43980.0,
                    p99_us: 48160.0,
                    socket_errors: none,
                    non_2xx: 192,
                },
            ),
            (
                "latency in seconds, with a trailing space",
                include_str!("testdata/wrk/seconds.txt"),
                WrkReport {
                    requests: 8,
                    requests_per_sec: 2.66,
                    p50_us: 1_140_000.0,
                    p99_us: 1_140_000.0,
                    socket_errors: none,
                    non_2xx: 0,
                },
            ),
            (
                "every request timed out",
                include_str!("testdata/wrk/timeouts.txt"),
                WrkReport {
                    requests: 8,
                    requests_per_sec: 2.66,
                    p50_us: 0.0,
                    p99_us: 0.0,
                    socket_errors: SocketErrors { timeout: 8, ..none },
                    non_2xx: 0,
                },
            ),
        ];
        for (what, text, expected) in cases {
            assert_eq!(&parse(text).unwrap(), expected, "{what}");
        }
    }

    #[test]
    fn converts_units() {
        let cases = [
            ("287.00us", 287.0),
            ("3.15ms", 3150.0),
            ("1.14s", 1_140_000.0),
            ("2.00m", 120_000_000.0),
            ("1.00h", 3_600_000_000.0),
        ];
        for (text, expected) in cases {
            assert_eq!(microseconds(text).unwrap(), expected, "{text}");
        }
        for bad in ["12", "ms", "1.0ns", "x1ms"] {
            assert!(microseconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_reports_without_latency_distribution() {
        let without = "  10 requests in 1.00s, 1KB read\nRequests/sec: 10.00\n";
        let error = parse(without).unwrap_err().to_string();
        assert!(error.contains("50%"), "{error}");
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused").is_err());
        assert!(parse_socket_errors("connect 0, reads 1").is_err());
    }
}
