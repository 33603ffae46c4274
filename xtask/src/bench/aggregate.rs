//! From runs to table rows: per workload and mode, the median and spread of
//! every figure over the rounds. Throughput and latency are compared with
//! the baseline run of the same round and workload, so a round where the
//! whole machine was slower does not count against any one mode.

use serde::Serialize;

use super::daemon::Mode;
use super::measure::{Record, SondeRun};
use super::stats::Spread;
use super::wrk::Workload;

const MIB: f64 = 1024.0 * 1024.0;

/// One workload and mode over all rounds. `None`: not measured in this mode
/// (no sonde in the baseline) or no run of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub workload: Workload,
    pub mode: Mode,
    pub runs: usize,
    pub requests_per_sec: Option<Spread>,
    /// Requests per second over the same round's baseline.
    pub throughput_ratio: Option<Spread>,
    pub p50_us: Option<Spread>,
    pub p99_us: Option<Spread>,
    /// Latency minus the same round's baseline latency.
    pub p50_delta_us: Option<Spread>,
    pub p99_delta_us: Option<Spread>,
    /// wrk's failed connects, reads, writes and timeouts together.
    pub socket_errors: Option<Spread>,
    /// The machine's CPU used outside nginx, wrk and sonde during the load,
    /// as a share of all its CPUs: how much else ran.
    pub other_cpu_share: Option<Spread>,
    pub bpf_ns_per_request: Option<Spread>,
    pub sonde_cpu_ns_per_request: Option<Spread>,
    pub server_cpu_ns_per_request: Option<Spread>,
    pub rss_peak_mib: Option<Spread>,
    pub rss_steady_mib: Option<Spread>,
    pub events_lost: Option<Spread>,
    /// In spans mode.
    pub spans_exported: Option<Spread>,
    pub spans_dropped: Option<Spread>,
    pub spans_received: Option<Spread>,
}

/// A row for every workload and mode with runs, in [`Workload::ALL`] then
/// [`Mode::ALL`] order, on a machine with `cores` CPUs.
pub fn rows(records: &[Record], cores: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    for workload in Workload::ALL {
        for mode in Mode::ALL {
            let runs: Vec<&Record> = records
                .iter()
                .filter(|r| r.workload == workload && r.mode == mode)
                .collect();
            if !runs.is_empty() {
                rows.push(row(records, workload, mode, &runs, cores));
            }
        }
    }
    rows
}

fn row(records: &[Record], workload: Workload, mode: Mode, runs: &[&Record], cores: usize) -> Row {
    let of = |f: &dyn Fn(&Record) -> Option<f64>| -> Option<Spread> {
        let values: Option<Vec<f64>> = runs.iter().map(|r| f(r)).collect();
        Spread::of(&values?)
    };
    let baseline = |run: &Record| {
        records
            .iter()
            .find(|r| r.round == run.round && r.workload == workload && r.mode == Mode::Baseline)
    };
    // Compared with the baseline only in the other modes, and only when
    // every round has its baseline.
    let paired = |f: &dyn Fn(&Record, &Record) -> f64| -> Option<Spread> {
        if mode == Mode::Baseline {
            return None;
        }
        of(&|run| baseline(run).map(|base| f(run, base)))
    };
    let sonde = |f: &dyn Fn(&SondeRun) -> f64| of(&|run| run.sonde.as_ref().map(f));
    let spans = |f: &dyn Fn(&SondeRun) -> f64| {
        if mode == Mode::Spans {
            sonde(f)
        } else {
            None
        }
    };
    Row {
        workload,
        mode,
        runs: runs.len(),
        requests_per_sec: of(&|run| Some(run.wrk.requests_per_sec)),
        throughput_ratio: paired(&|run, base| run.wrk.requests_per_sec / base.wrk.requests_per_sec),
        p50_us: of(&|run| Some(run.wrk.p50_us)),
        p99_us: of(&|run| Some(run.wrk.p99_us)),
        p50_delta_us: paired(&|run, base| run.wrk.p50_us - base.wrk.p50_us),
        p99_delta_us: paired(&|run, base| run.wrk.p99_us - base.wrk.p99_us),
        socket_errors: of(&|run| Some(run.wrk.socket_errors.total() as f64)),
        other_cpu_share: of(&|run| Some(run.other_cpu_share(cores))),
        bpf_ns_per_request: of(&Record::bpf_ns_per_request),
        sonde_cpu_ns_per_request: of(&Record::sonde_cpu_ns_per_request),
        server_cpu_ns_per_request: of(&|run| Some(run.server_cpu_ns_per_request())),
        rss_peak_mib: sonde(&|s| s.memory.peak_bytes as f64 / MIB),
        rss_steady_mib: sonde(&|s| s.memory.resident_bytes as f64 / MIB),
        events_lost: if mode.counts_requests() {
            sonde(&|s| s.counters.events_lost)
        } else {
            None
        },
        spans_exported: spans(&|s| s.counters.spans_exported),
        spans_dropped: spans(&|s| s.counters.spans_dropped),
        spans_received: of(&|run| Some(run.sonde.as_ref()?.spans_received? as f64)),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::bench::daemon::Counters;
    use crate::bench::procfs::{BpfTotals, Memory};
    use crate::bench::wrk::{SocketErrors, WrkReport};

    /// A run serving 1000 requests whose costs are given per request.
    pub fn record(
        round: usize,
        workload: Workload,
        mode: Mode,
        rps: f64,
        p50_us: f64,
        costs_ns: Option<(u64, u64)>,
        rss_mib: u64,
    ) -> Record {
        Record {
            round,
            workload,
            mode,
            seconds: 10,
            wrk: WrkReport {
                requests: 990,
                requests_per_sec: rps,
                p50_us,
                p99_us: p50_us * 4.0,
                socket_errors: SocketErrors::default(),
                non_2xx: 0,
            },
            wrk_cpu_ns: 9_000_000_000,
            served: 1000,
            server_cpu_ns: 20_000 * 1000,
            load_ns: 10_000_000_000,
            // 5 % of 2 CPUs over the 10 s.
            other_cpu_ns: 1_000_000_000,
            sonde: costs_ns.map(|(bpf, cpu)| SondeRun {
                bpf: BpfTotals {
                    run_time_ns: bpf * 1000,
                    run_cnt: 8000,
                },
                cpu_ns: cpu * 1000,
                memory: Memory {
                    peak_bytes: (rss_mib + 2) << 20,
                    resident_bytes: rss_mib << 20,
                },
                counters: Counters {
                    root_requests: 1000.0,
                    unanswered: 0.0,
                    events_lost: 0.0,
                    spans_exported: 0.0,
                    spans_dropped: 0.0,
                },
                spans_received: None,
            }),
        }
    }

    #[test]
    fn pairs_rounds_with_their_baseline() {
        use Mode::*;
        use Workload::*;
        let records = vec![
            record(1, KeepAlive, Baseline, 40_000.0, 250.0, None, 0),
            record(1, KeepAlive, Metrics, 39_000.0, 260.0, Some((800, 600)), 20),
            record(2, KeepAlive, Metrics, 30_000.0, 300.0, Some((900, 700)), 22),
            record(2, KeepAlive, Baseline, 32_000.0, 280.0, None, 0),
            record(3, KeepAlive, Baseline, 36_000.0, 270.0, None, 0),
            record(3, KeepAlive, Metrics, 36_000.0, 270.0, Some((700, 800)), 21),
            record(1, Close, Floor, 6_000.0, 3000.0, Some((1500, 300)), 10),
        ];
        let rows = rows(&records, 2);
        let spread = |median, min, max| Some(Spread { median, min, max });
        assert_eq!(
            rows.iter()
                .map(|r| (r.workload, r.mode, r.runs))
                .collect::<Vec<_>>(),
            [
                (KeepAlive, Baseline, 3),
                (KeepAlive, Metrics, 3),
                (Close, Floor, 1)
            ]
        );
        let metrics = &rows[1];
        assert_eq!(
            metrics.requests_per_sec,
            spread(36_000.0, 30_000.0, 39_000.0)
        );
        // 39/40, 30/32 and 36/36, not a ratio of medians.
        assert_eq!(metrics.throughput_ratio, spread(0.975, 0.9375, 1.0));
        assert_eq!(metrics.p50_delta_us, spread(10.0, 0.0, 20.0));
        assert_eq!(metrics.p99_delta_us, spread(40.0, 0.0, 80.0));
        assert_eq!(metrics.bpf_ns_per_request, spread(800.0, 700.0, 900.0));
        assert_eq!(
            metrics.sonde_cpu_ns_per_request,
            spread(700.0, 600.0, 800.0)
        );
        assert_eq!(
            metrics.server_cpu_ns_per_request,
            spread(20_000.0, 20_000.0, 20_000.0)
        );
        assert_eq!(metrics.rss_steady_mib, spread(21.0, 20.0, 22.0));
        assert_eq!(metrics.rss_peak_mib, spread(23.0, 22.0, 24.0));
        assert_eq!(metrics.events_lost, spread(0.0, 0.0, 0.0));
        assert_eq!(metrics.socket_errors, spread(0.0, 0.0, 0.0));
        assert_eq!(metrics.other_cpu_share, spread(0.05, 0.05, 0.05));
        assert_eq!(metrics.spans_exported, None);

        let baseline = &rows[0];
        assert_eq!(baseline.throughput_ratio, None);
        assert_eq!(baseline.bpf_ns_per_request, None);
        assert_eq!(baseline.rss_peak_mib, None);
        assert_eq!(
            baseline.server_cpu_ns_per_request,
            spread(20_000.0, 20_000.0, 20_000.0)
        );

        // No baseline in that workload: nothing to compare with.
        let floor = &rows[2];
        assert_eq!(floor.throughput_ratio, None);
        assert_eq!(floor.bpf_ns_per_request, spread(1500.0, 1500.0, 1500.0));
        // The floor counts nothing, so it loses nothing either.
        assert_eq!(floor.events_lost, None);
    }
}
