//! One run: a mode, a workload, a duration. Starts sonde (unless the
//! baseline), reads the costs before and after wrk's load, waits for sonde's
//! counts to settle and checks them against nginx's own.
//!
//! # Accounting
//!
//! The ground truth is nginx's `stub_status` request counter, which counts
//! every request nginx has read, whether or not the client was still there
//! for the answer. wrk's own count is smaller: it stops with requests in
//! flight (sent, unanswered, or answered but unread), and those requests
//! still reach nginx and sonde. The count compared is nginx's counter delta
//! over the run minus the status requests that read the counter (route
//! `/nginx_status`, which sonde counts separately, so the route `/` series
//! is exactly wrk's requests).
//!
//! A request nginx reads after wrk has exited gets no response: writing it
//! fails on the reset connection, or nginx sees the reset first, and closes.
//! nginx has counted it; sonde counts it as abandoned (`closed_unanswered`),
//! not in the duration histogram, which holds answered requests only. So
//! nginx's count must equal sonde's `/` requests plus those unanswered
//! ones, and there can be at most one unanswered request per wrk connection
//! (wrk does not pipeline): a sonde that dropped an answered request as
//! unanswered would break the bound or, in a run without any, the sum.
//! Other abandonments are not expected: wrk's requests outstanding at its
//! exit are `process_exited`, on the client side.
//!
//! Windows: BPF time, nginx's and the machine's CPU are read right before wrk
//! starts and right after it exits (the programs run for every process on the machine,
//! so a longer window would only add others' syscalls). sonde's CPU and
//! memory are read after sonde has drained the last events ([`QUIET`]; in
//! spans mode also until the sink stops receiving), before any scrape, so
//! they hold all the work the load caused and nothing the bench asked for.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;
use sonde_tests::prom::Scrape;

use super::daemon::{Counters, Daemon, Mode};
use super::nginx::BenchNginx;
use super::procfs::{self, BpfTotals, Memory};
use super::wrk::{self, Workload, WrkReport};
use crate::children;

/// Between readiness and load: sonde's start-up work (loading programs,
/// scanning processes) is not what a request costs.
const AFTER_START: Duration = Duration::from_secs(1);
/// sonde drains the ring buffer at least every 20 ms; this leaves room for
/// the last events to be processed on a busy machine.
const QUIET: Duration = Duration::from_secs(1);
/// The sink has received every span once its count held this long.
const SINK_STILL_FOR: Duration = Duration::from_secs(2);
/// A settled count holds this long.
const STABLE_FOR: Duration = Duration::from_millis(500);
/// A count that holds this long without agreeing is final: a mismatch.
const STUCK_FOR: Duration = Duration::from_secs(3);
/// Bounds any wait for sonde or the sink.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// What every run needs.
pub struct Bench<'a> {
    pub nginx: &'a BenchNginx,
    pub sonde_bin: &'a Path,
    /// nginx's `service_name` in sonde's metrics.
    pub service: String,
}

impl Bench<'_> {
    /// sonde in `mode` with `extra` flags, watching only nginx's port. The
    /// machine is shared (other tests and benches run their own servers and
    /// load): unscoped, sonde would count and export their traffic too, and
    /// no count could be checked. For the bench's own traffic nothing
    /// changes: the kernel checks a connection's ports once, when it first
    /// sees it, and takes the same path from then on; other connections are
    /// skipped after one lookup, as non-HTTP ones are. sonde's programs still
    /// run for every syscall of every process.
    pub fn start_sonde(&self, mode: Mode, extra: &[&str]) -> Result<Option<Daemon>> {
        let port = self.nginx.port().to_string();
        let mut args = vec!["--port", port.as_str()];
        args.extend_from_slice(extra);
        Daemon::start(self.sonde_bin, mode, &args)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RunSpec {
    /// 1-based; 0 for runs outside the rounds (sustained).
    pub round: usize,
    pub workload: Workload,
    pub mode: Mode,
    pub duration: Duration,
}

impl RunSpec {
    pub fn name(&self) -> String {
        let round = match self.round {
            0 => String::new(),
            n => format!("round {n} "),
        };
        format!(
            "{round}{} {} {} s",
            self.workload.label(),
            self.mode.label(),
            self.duration.as_secs()
        )
    }
}

/// Raw numbers of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub round: usize,
    pub workload: Workload,
    pub mode: Mode,
    pub seconds: u64,
    pub wrk: WrkReport,
    /// CPU time wrk used.
    pub wrk_cpu_ns: u64,
    /// Requests for `/` nginx read during the run.
    pub served: u64,
    /// CPU time of nginx's worker during the load.
    pub server_cpu_ns: u64,
    /// How long the load ran (wrk's life).
    pub load_ns: u64,
    /// CPU time the machine spent busy during the load other than in nginx's
    /// worker, wrk and sonde: other processes, and interrupt work (the
    /// loopback's softirqs among it) that no process is charged for.
    pub other_cpu_ns: u64,
    /// `None` in the baseline.
    pub sonde: Option<SondeRun>,
}

/// sonde's side of a run.
#[derive(Clone, Debug, Serialize)]
pub struct SondeRun {
    pub bpf: BpfTotals,
    pub cpu_ns: u64,
    pub memory: Memory,
    /// As settled after the load.
    pub counters: Counters,
    /// In spans mode.
    pub spans_received: Option<u64>,
}

impl Record {
    fn per_request(&self, total: u64) -> f64 {
        if self.served == 0 {
            return f64::NAN;
        }
        total as f64 / self.served as f64
    }

    pub fn bpf_ns_per_request(&self) -> Option<f64> {
        self.sonde
            .as_ref()
            .map(|sonde| self.per_request(sonde.bpf.run_time_ns))
    }

    pub fn sonde_cpu_ns_per_request(&self) -> Option<f64> {
        self.sonde
            .as_ref()
            .map(|sonde| self.per_request(sonde.cpu_ns))
    }

    pub fn server_cpu_ns_per_request(&self) -> f64 {
        self.per_request(self.server_cpu_ns)
    }

    /// [`other_cpu_ns`](Self::other_cpu_ns) as a share of what `cores` CPUs
    /// could do during the load.
    pub fn other_cpu_share(&self, cores: usize) -> f64 {
        self.other_cpu_ns as f64 / (self.load_ns as f64 * cores as f64)
    }
}

/// A correctness check that failed.
#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub run: String,
    pub check: String,
    pub detail: String,
}

/// The checks of one run, collecting those that fail.
pub struct Checks {
    run: String,
    failed: Vec<Violation>,
}

impl Checks {
    pub fn of(run: String) -> Checks {
        Checks {
            run,
            failed: Vec::new(),
        }
    }

    /// Records `check` as failed, with `detail`, unless it `holds`.
    pub fn require(&mut self, holds: bool, check: &str, detail: impl FnOnce() -> String) {
        if !holds {
            self.failed.push(Violation {
                run: self.run.clone(),
                check: check.to_owned(),
                detail: detail(),
            });
        }
    }

    pub fn failed(self) -> Vec<Violation> {
        self.failed
    }
}

/// Runs `spec` and checks sonde's counts; what failed is in the violations.
pub fn run(bench: &Bench, spec: RunSpec) -> Result<(Record, Vec<Violation>)> {
    eprintln!("bench: {}", spec.name());
    let daemon = bench.start_sonde(spec.mode, &[])?;
    pause(AFTER_START)?;

    let nginx = bench.nginx;
    let worker = nginx.worker_pid();
    let sonde_pid = daemon.as_ref().map(Daemon::pid);
    let mark = nginx.mark()?;
    let bpf_before = sonde_pid.map(procfs::bpf_totals).transpose()?;
    let sonde_cpu_before = sonde_pid.map(procfs::cpu_ns).transpose()?;
    let server_cpu_before = procfs::cpu_ns(worker)?;
    let busy_before = procfs::machine_busy_ns()?;
    let load_started = Instant::now();

    let load = wrk::run(&nginx.url("/"), spec.workload, spec.duration, None)?;

    let load_ns = load_started.elapsed().as_nanos() as u64;
    let busy_ns = procfs::machine_busy_ns()? - busy_before;
    let server_cpu_ns = procfs::cpu_ns(worker)? - server_cpu_before;
    let sonde_load_cpu_ns = match (sonde_pid, sonde_cpu_before) {
        (Some(pid), Some(before)) => procfs::cpu_ns(pid)? - before,
        _ => 0,
    };
    let bpf = match (sonde_pid, bpf_before) {
        (Some(pid), Some(before)) => Some(procfs::bpf_totals(pid)?.since(before)),
        _ => None,
    };
    let served = nginx.requests_since(mark)?;
    let other_cpu_ns = busy_ns.saturating_sub(server_cpu_ns + load.cpu_ns + sonde_load_cpu_ns);

    let mut violations = Vec::new();
    let sonde = match (daemon, sonde_cpu_before, bpf) {
        (Some(daemon), Some(cpu_before), Some(bpf)) => {
            pause(QUIET)?;
            wait_for_sink(&daemon)?;
            let cpu_ns = procfs::cpu_ns(daemon.pid())? - cpu_before;
            let memory = procfs::memory(daemon.pid())?;
            let expect_counts = spec.mode.counts_requests();
            let ((counters, spans_received), scrape) = settle(&daemon, |scrape| {
                let counters = Counters::of(scrape, &bench.service);
                let received = daemon.spans_received();
                let agrees = !expect_counts
                    || (counters.root_requests + counters.unanswered == served as f64
                        && received.is_none_or(|r| r as f64 == counters.spans_exported));
                ((counters, received), agrees)
            })?;
            if expect_counts {
                violations = check(&spec, served, &counters, spans_received);
                if !violations.is_empty() {
                    eprintln!("{}", daemon.failure("bench: counts do not match", &scrape));
                }
            }
            daemon.stop();
            Some(SondeRun {
                bpf,
                cpu_ns,
                memory,
                counters,
                spans_received,
            })
        }
        _ => None,
    };
    for violation in &violations {
        eprintln!("bench: VIOLATION {}: {}", violation.check, violation.detail);
    }
    let record = Record {
        round: spec.round,
        workload: spec.workload,
        mode: spec.mode,
        seconds: spec.duration.as_secs(),
        wrk: load.report,
        wrk_cpu_ns: load.cpu_ns,
        served,
        server_cpu_ns,
        load_ns,
        other_cpu_ns,
        sonde,
    };
    Ok((record, violations))
}

/// The correctness rules of a run with sonde counting.
fn check(
    spec: &RunSpec,
    served: u64,
    counters: &Counters,
    spans_received: Option<u64>,
) -> Vec<Violation> {
    let mut checks = Checks::of(spec.name());
    check_requests(
        &mut checks,
        served,
        counters.root_requests,
        counters.unanswered,
        spec.workload.connections(),
    );
    checks.require(
        spec.workload != Workload::KeepAlive || counters.events_lost == 0.0,
        "no event lost under keep-alive load",
        || format!("sonde_events_lost_total {}", counters.events_lost),
    );
    if let Some(received) = spans_received {
        checks.require(
            received as f64 == counters.spans_exported,
            "the sink received every span sonde exported",
            || {
                format!(
                    "sonde_spans_exported_total {}, received {received}",
                    counters.spans_exported
                )
            },
        );
    }
    checks.failed()
}

/// The accounting of the module's doc: nginx read `served` requests, sonde
/// counted `answered` of them in its histogram and `unanswered` as closed
/// without a response, at most one per connection of wrk's.
pub fn check_requests(
    checks: &mut Checks,
    served: u64,
    answered: f64,
    unanswered: f64,
    connections: u32,
) {
    checks.require(
        answered + unanswered == served as f64,
        "sonde counts every request nginx served",
        || {
            format!(
                "nginx read {served} requests, sonde counted {answered} answered and \
                 {unanswered} unanswered"
            )
        },
    );
    checks.require(
        unanswered <= f64::from(connections),
        "unanswered requests only at wrk's exit, one per connection at most",
        || format!("{unanswered} unanswered with {connections} connections"),
    );
}

/// Scrapes until `read` says its value agrees with what is expected and the
/// value held for [`STABLE_FOR`], or held for [`STUCK_FOR`] without
/// agreeing, or [`SETTLE_TIMEOUT`] passed. Returns the last value and scrape.
pub fn settle<T: PartialEq + Clone>(
    daemon: &Daemon,
    mut read: impl FnMut(&Scrape) -> (T, bool),
) -> Result<(T, Scrape)> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last: Option<T> = None;
    let mut since = Instant::now();
    loop {
        let scrape = daemon.scrape();
        let (value, agrees) = read(&scrape);
        if last.as_ref() != Some(&value) {
            last = Some(value.clone());
            since = Instant::now();
        }
        let held = since.elapsed();
        if (agrees && held >= STABLE_FOR) || held >= STUCK_FOR || Instant::now() >= deadline {
            return Ok((value, scrape));
        }
        pause(POLL)?;
    }
}

/// In spans mode, waits until the sink's count stops moving: the last
/// spans are held for stitching and batched before export.
fn wait_for_sink(daemon: &Daemon) -> Result<()> {
    let Some(mut last) = daemon.spans_received() else {
        return Ok(());
    };
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut since = Instant::now();
    while since.elapsed() < SINK_STILL_FOR && Instant::now() < deadline {
        pause(POLL)?;
        let now = daemon.spans_received().unwrap_or(last);
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    Ok(())
}

/// Sleeps, failing if Ctrl-C was pressed.
pub fn pause(duration: Duration) -> Result<()> {
    if children::interrupted() {
        bail!("interrupted");
    }
    thread::sleep(duration);
    if children::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(answered: f64, unanswered: f64, lost: f64, exported: f64) -> Counters {
        Counters {
            root_requests: answered,
            unanswered,
            events_lost: lost,
            spans_exported: exported,
            spans_dropped: 0.0,
        }
    }

    #[test]
    fn checks_counts_losses_and_spans() {
        use Workload::*;
        const COUNTED: &str = "sonde counts every request nginx served";
        const BOUND: &str = "unanswered requests only at wrk's exit, one per connection at most";
        const LOST: &str = "no event lost under keep-alive load";
        const SPANS: &str = "the sink received every span sonde exported";
        // nginx read 1000 requests in each case.
        let cases: &[(Workload, Counters, Option<u64>, &[&str])] = &[
            (KeepAlive, counters(1000.0, 0.0, 0.0, 0.0), None, &[]),
            // Read after wrk exited: one per connection at most.
            (KeepAlive, counters(968.0, 32.0, 0.0, 0.0), None, &[]),
            (KeepAlive, counters(967.0, 33.0, 0.0, 0.0), None, &[BOUND]),
            (Close, counters(984.0, 16.0, 0.0, 0.0), None, &[]),
            (Close, counters(983.0, 17.0, 0.0, 0.0), None, &[BOUND]),
            (KeepAlive, counters(999.0, 0.0, 0.0, 0.0), None, &[COUNTED]),
            (KeepAlive, counters(1000.0, 1.0, 0.0, 0.0), None, &[COUNTED]),
            (KeepAlive, counters(1000.0, 0.0, 2.0, 0.0), None, &[LOST]),
            // Reported, not asserted, with a connection per request.
            (Close, counters(1000.0, 0.0, 2.0, 0.0), None, &[]),
            (
                KeepAlive,
                counters(1000.0, 0.0, 0.0, 1900.0),
                Some(1900),
                &[],
            ),
            (
                Close,
                counters(1001.0, 0.0, 0.0, 1900.0),
                Some(1899),
                &[COUNTED, SPANS],
            ),
        ];
        for (workload, counters, received, expected) in cases {
            let spec = RunSpec {
                round: 1,
                workload: *workload,
                mode: Mode::Spans,
                duration: Duration::from_secs(10),
            };
            let failed: Vec<String> = check(&spec, 1000, counters, *received)
                .into_iter()
                .map(|v| v.check)
                .collect();
            assert_eq!(failed, *expected, "{workload:?} {counters:?} {received:?}");
        }
    }

    #[test]
    fn names_runs() {
        let spec = RunSpec {
            round: 2,
            workload: Workload::Close,
            mode: Mode::Floor,
            duration: Duration::from_secs(10),
        };
        assert_eq!(spec.name(), "round 2 close floor 10 s");
        let sustained = RunSpec { round: 0, ..spec };
        assert_eq!(sustained.name(), "close floor 10 s");
    }
}
