//! The performance budget sonde is held to, checked line by line against
//! the medians of a bench. A line says met or MISSED with its numbers;
//! missing a line is reported, not an error (timings on a shared 2-core
//! machine are noisy, correctness is what fails a bench).

use serde::Serialize;

use super::aggregate::Row;
use super::cardinality::CardinalityResult;
use super::daemon::Mode;
use super::measure::Record;
use super::stats::Spread;
use super::wrk::Workload;

const MIB: f64 = 1024.0 * 1024.0;

const BPF_OVER_FLOOR: f64 = 1.5;
const SONDE_CPU_NS: f64 = 1000.0;
const KEEPALIVE_THROUGHPUT: f64 = 0.97;
const CLOSE_THROUGHPUT: f64 = 0.95;
const STEADY_RSS_MIB: f64 = 40.0;
const CARDINALITY_RSS_MIB: f64 = 64.0;
const SCRAPE_MS: f64 = 50.0;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BudgetLine {
    pub rule: String,
    pub met: bool,
    pub measured: String,
}

/// Every line of the budget. `runs` are all round runs; rows are their
/// aggregation.
pub fn evaluate(
    rows: &[Row],
    runs: &[Record],
    sustained: &Record,
    cardinality: &CardinalityResult,
) -> Vec<BudgetLine> {
    let find = |workload, mode| {
        rows.iter()
            .find(|r| r.workload == workload && r.mode == mode)
    };
    let median = |workload, mode, field: fn(&Row) -> Option<Spread>| {
        find(workload, mode).and_then(field).map(|s| s.median)
    };
    let mut lines = Vec::new();

    let bpf = |mode| median(Workload::KeepAlive, mode, |r| r.bpf_ns_per_request);
    lines.push(match (bpf(Mode::Metrics), bpf(Mode::Floor)) {
        (Some(metrics), Some(floor)) => BudgetLine {
            rule: format!("BPF time per request ≤ {BPF_OVER_FLOOR} × floor (keep-alive)"),
            met: metrics <= BPF_OVER_FLOOR * floor,
            measured: format!(
                "{metrics:.0} ns vs floor {floor:.0} ns: {:.2} ×",
                metrics / floor
            ),
        },
        _ => not_measured(format!(
            "BPF time per request ≤ {BPF_OVER_FLOOR} × floor (keep-alive)"
        )),
    });

    for workload in Workload::ALL {
        let rule = format!("sonde CPU ≤ 1 µs per request ({})", workload.label());
        lines.push(
            match median(workload, Mode::Metrics, |r| r.sonde_cpu_ns_per_request) {
                Some(ns) => BudgetLine {
                    rule,
                    met: ns <= SONDE_CPU_NS,
                    measured: format!("{ns:.0} ns"),
                },
                None => not_measured(rule),
            },
        );
    }

    for (workload, floor) in [
        (Workload::KeepAlive, KEEPALIVE_THROUGHPUT),
        (Workload::Close, CLOSE_THROUGHPUT),
    ] {
        let rule = format!(
            "throughput ≥ {:.0} % of baseline ({})",
            floor * 100.0,
            workload.label()
        );
        lines.push(
            match median(workload, Mode::Metrics, |r| r.throughput_ratio) {
                Some(ratio) => BudgetLine {
                    rule,
                    met: ratio >= floor,
                    measured: format!("{:.1} %", ratio * 100.0),
                },
                None => not_measured(rule),
            },
        );
    }

    // The highest steady memory of any metrics run, the sustained one included.
    let steady: Vec<f64> = runs
        .iter()
        .chain([sustained])
        .filter(|r| r.mode == Mode::Metrics)
        .filter_map(|r| r.sonde.as_ref())
        .map(|s| s.memory.resident_bytes as f64 / MIB)
        .collect();
    let rule = format!("steady RSS ≤ {STEADY_RSS_MIB:.0} MiB");
    lines.push(match steady.iter().copied().reduce(f64::max) {
        Some(highest) => BudgetLine {
            rule,
            met: highest <= STEADY_RSS_MIB,
            measured: format!(
                "{highest:.1} MiB, the highest of {} metrics runs",
                steady.len()
            ),
        },
        None => not_measured(rule),
    });

    let rule = format!(
        "0 events lost at the maximum rate for {} s",
        sustained.seconds
    );
    lines.push(match &sustained.sonde {
        Some(sonde) => BudgetLine {
            rule,
            met: sonde.counters.events_lost == 0.0,
            measured: format!(
                "{} lost of {} requests at {:.0} req/s",
                sonde.counters.events_lost, sustained.served, sustained.wrk.requests_per_sec
            ),
        },
        None => not_measured(rule),
    });

    let paths = thousands(u64::from(cardinality.paths));
    let peak = cardinality.memory.peak_bytes as f64 / MIB;
    lines.push(BudgetLine {
        rule: format!("{paths} paths: RSS ≤ {CARDINALITY_RSS_MIB:.0} MiB"),
        met: peak <= CARDINALITY_RSS_MIB,
        measured: format!("peak {peak:.1} MiB"),
    });
    let scrape = cardinality.scrape_ms;
    lines.push(BudgetLine {
        rule: format!("{paths} paths: /metrics scrape < {SCRAPE_MS:.0} ms"),
        met: scrape.median < SCRAPE_MS,
        measured: format!(
            "median {:.1} ms, max {:.1} ms ({} KiB)",
            scrape.median,
            scrape.max,
            cardinality.scrape_bytes / 1024
        ),
    });
    lines
}

fn not_measured(rule: String) -> BudgetLine {
    BudgetLine {
        rule,
        met: false,
        measured: "not measured".to_owned(),
    }
}

/// `10000` as `10,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::aggregate::{rows, tests::record};
    use crate::bench::procfs::Memory;

    fn cardinality(peak_mib: u64, median_ms: f64) -> CardinalityResult {
        CardinalityResult {
            paths: 10_000,
            served: 120_000,
            route_series: 201,
            route_cap: 200,
            memory: Memory {
                peak_bytes: peak_mib << 20,
                resident_bytes: (peak_mib - 1) << 20,
            },
            scrape_ms: Spread {
                median: median_ms,
                min: 1.0,
                max: 60.0,
            },
            scrapes: 20,
            scrape_bytes: 300 * 1024,
        }
    }

    fn runs(metrics_bpf: u64, metrics_cpu: u64, close_rps: f64) -> Vec<Record> {
        use Mode::*;
        use Workload::*;
        vec![
            record(1, KeepAlive, Baseline, 40_000.0, 250.0, None, 0),
            record(1, KeepAlive, Floor, 39_800.0, 250.0, Some((400, 50)), 12),
            record(
                1,
                KeepAlive,
                Metrics,
                39_000.0,
                260.0,
                Some((metrics_bpf, metrics_cpu)),
                30,
            ),
            record(1, Close, Baseline, 6_000.0, 3000.0, None, 0),
            record(1, Close, Metrics, close_rps, 3100.0, Some((2000, 900)), 31),
        ]
    }

    fn sustained(steady_rss_mib: u64) -> Record {
        let costs = Some((600, 700));
        record(
            0,
            Workload::KeepAlive,
            Mode::Metrics,
            38_000.0,
            260.0,
            costs,
            steady_rss_mib,
        )
    }

    fn verdicts(lines: &[BudgetLine]) -> Vec<(&str, bool, &str)> {
        lines
            .iter()
            .map(|l| (l.rule.as_str(), l.met, l.measured.as_str()))
            .collect()
    }

    #[test]
    fn checks_every_line() {
        let runs = runs(600, 700, 5_900.0);
        let sustained = sustained(33);
        let lines = evaluate(&rows(&runs, 2), &runs, &sustained, &cardinality(50, 4.2));
        assert_eq!(
            verdicts(&lines),
            [
                (
                    "BPF time per request ≤ 1.5 × floor (keep-alive)",
                    true,
                    "600 ns vs floor 400 ns: 1.50 ×"
                ),
                ("sonde CPU ≤ 1 µs per request (keep-alive)", true, "700 ns"),
                ("sonde CPU ≤ 1 µs per request (close)", true, "900 ns"),
                ("throughput ≥ 97 % of baseline (keep-alive)", true, "97.5 %"),
                ("throughput ≥ 95 % of baseline (close)", true, "98.3 %"),
                (
                    "steady RSS ≤ 40 MiB",
                    true,
                    "33.0 MiB, the highest of 3 metrics runs"
                ),
                (
                    "0 events lost at the maximum rate for 10 s",
                    true,
                    "0 lost of 1000 requests at 38000 req/s"
                ),
                ("10,000 paths: RSS ≤ 64 MiB", true, "peak 50.0 MiB"),
                (
                    "10,000 paths: /metrics scrape < 50 ms",
                    true,
                    "median 4.2 ms, max 60.0 ms (300 KiB)"
                ),
            ]
        );
    }

    #[test]
    fn misses_lines_over_budget() {
        let runs = runs(601, 1001, 5_600.0);
        let mut sustained = sustained(41);
        sustained.sonde.as_mut().unwrap().counters.events_lost = 3.0;
        let lines = evaluate(&rows(&runs, 2), &runs, &sustained, &cardinality(65, 50.0));
        let missed: Vec<&str> = lines
            .iter()
            .filter(|l| !l.met)
            .map(|l| l.rule.as_str())
            .collect();
        assert_eq!(
            missed,
            [
                "BPF time per request ≤ 1.5 × floor (keep-alive)",
                "sonde CPU ≤ 1 µs per request (keep-alive)",
                "throughput ≥ 95 % of baseline (close)",
                "steady RSS ≤ 40 MiB",
                "0 events lost at the maximum rate for 10 s",
                "10,000 paths: RSS ≤ 64 MiB",
                "10,000 paths: /metrics scrape < 50 ms",
            ]
        );
    }

    #[test]
    fn a_mode_not_run_is_not_measured() {
        let runs: Vec<Record> = runs(600, 700, 5_900.0)
            .into_iter()
            .filter(|r| r.mode != Mode::Floor)
            .collect();
        let sustained = sustained(33);
        let lines = evaluate(&rows(&runs, 2), &runs, &sustained, &cardinality(50, 4.0));
        assert_eq!(
            (lines[0].met, lines[0].measured.as_str()),
            (false, "not measured")
        );
    }

    #[test]
    fn groups_thousands() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (10_000, "10,000"),
            (1_234_567, "1,234,567"),
        ];
        for (n, expected) in cases {
            assert_eq!(thousands(n), expected);
        }
    }
}
