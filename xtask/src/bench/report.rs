//! What a bench says: the Markdown report (`latest.md`), the README section,
//! and the summary printed at the end of every bench.

use std::fmt::Write;

use serde::Serialize;

use super::aggregate::Row;
use super::budget::{thousands, BudgetLine};
use super::cardinality::CardinalityResult;
use super::machine::Machine;
use super::measure::{Record, Violation};
use super::stats::Spread;

const MIB: f64 = 1024.0 * 1024.0;

/// How much was measured.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub run_seconds: u64,
    pub sustained_seconds: u64,
    pub cardinality_paths: u32,
}

/// Everything a bench produced; `latest.json` is this.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub plan: Plan,
    pub took_seconds: f64,
    pub rows: Vec<Row>,
    pub sustained: Record,
    pub cardinality: CardinalityResult,
    pub budget: Vec<BudgetLine>,
    pub violations: Vec<Violation>,
    pub runs: Vec<Record>,
}

/// `latest.md`.
pub fn markdown(report: &Report) -> String {
    let plan = &report.plan;
    let machine = &report.machine;
    let mut out = String::from("# sonde benchmark\n\n");
    let _ =
        writeln!(
        out,
        "{}: {} × {} s per workload and mode, modes interleaved; {}, sonde {}; took {:.1} min.\n",
        if plan.quick { "Quick mode" } else { "Full mode" },
        rounds(plan.rounds),
        plan.run_seconds,
        machine.date,
        machine.sonde_commit,
        report.took_seconds / 60.0
    );
    out.push_str("## Throughput and latency\n\n");
    out.push_str(&throughput_table(&report.rows));
    out.push_str("\n## Cost per request\n\n");
    out.push_str(&cost_table(&report.rows));
    out.push('\n');
    out.push_str(&legend(plan));
    out.push_str("\n## Spans\n\n");
    out.push_str(&spans_table(&report.rows));
    out.push_str("\n## Sustained load\n\n");
    out.push_str(&sustained(&report.sustained));
    out.push_str("\n## Cardinality\n\n");
    out.push_str(&cardinality(&report.cardinality));
    out.push_str("\n## Budget\n\n");
    out.push_str(&budget(&report.budget));
    out.push_str("\n## Correctness\n\n");
    out.push_str(&correctness(report));
    out.push_str("\n## Machine\n\n");
    let _ = writeln!(out, "- CPU: {}, {} cores", machine.cpu_model, machine.cores);
    let _ = writeln!(out, "- kernel: {}", machine.kernel);
    let _ = writeln!(out, "- memory: {:.1} GiB", machine.memory_gib);
    let _ = writeln!(out, "- nginx: {}", machine.nginx);
    let _ = writeln!(out, "- wrk: {}", machine.wrk);
    let _ = writeln!(out, "- sonde commit: {}", machine.sonde_commit);
    let _ = writeln!(out, "- date: {}", machine.date);
    out.push_str("\n## Method\n\n");
    out.push_str(METHOD);
    out
}

/// The README's Performance section, between its markers.
pub fn readme_section(report: &Report) -> String {
    let machine = &report.machine;
    let mut out = format!(
        "Measured by `cargo xtask bench` ({} × {} s per workload and mode) on {}, {} cores, \
         kernel {}, {}, sonde {}. nginx serves `return 200` with one worker on CPU 0; wrk \
         loads it from CPU 1 (32 keep-alive connections, or 16 with `Connection: close`).\n\n",
        rounds(report.plan.rounds),
        report.plan.run_seconds,
        machine.cpu_model,
        machine.cores,
        machine.kernel,
        machine.date,
        machine.sonde_commit,
    );
    out.push_str(&throughput_table(&report.rows));
    out.push('\n');
    out.push_str(&cost_table(&report.rows));
    out.push('\n');
    out.push_str(&legend(&report.plan));
    out.push_str("\nBudget:\n\n");
    out.push_str(&budget(&report.budget));
    out.push_str("\n![bench](bench/results/latest.png)\n\n");
    out.push_str(
        "Sustained and cardinality runs, spans, correctness checks and the machine: \
         [bench/results/latest.md](bench/results/latest.md); raw numbers per run: \
         [bench/results/latest.json](bench/results/latest.json).\n",
    );
    out
}

/// What the terminal shows at the end of a bench.
pub fn terminal(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&throughput_table(&report.rows));
    out.push('\n');
    out.push_str(&cost_table(&report.rows));
    out.push('\n');
    out.push_str(&spans_table(&report.rows));
    out.push('\n');
    out.push_str(&sustained(&report.sustained));
    out.push_str(&cardinality(&report.cardinality));
    out.push_str("\nBudget:\n\n");
    out.push_str(&budget(&report.budget));
    out.push('\n');
    out.push_str(&correctness(report));
    out
}

const METHOD: &str = "\
nginx with one worker pinned to CPU 0 (`worker_cpu_affinity`), `return 200` on `/`, \
no access log, `keepalive_requests` above any run's count; wrk with one thread pinned to \
CPU 1 (`taskset -c 1 wrk -t1 --latency`), 32 keep-alive connections, or 16 connections \
sending `Connection: close` (a TCP connection per request; throughput levels off from 16 \
connections on). Each round runs every mode once per workload, in an order rotated each round, \
sonde started afresh for each run and given a second after `/readyz` before the load.

- **baseline**: no sonde. **floor**: `sonde --bench-floor`, the same tracepoints with \
programs that only return 0: what any eBPF monitor on these hooks costs at least. \
**metrics**: sonde as shipped. **spans**: sonde also exporting every request as a span \
over OTLP/gRPC to a local sink that counts them. sonde runs with `--port` set to nginx's \
port, so other tests and benchmarks sharing the machine are neither counted nor exported; \
for the bench's connections nothing changes (the kernel checks a connection's ports once, \
when it first sees it), and the programs still run for every syscall on the machine.
- **BPF ns/req**: `run_time_ns` summed over sonde's programs (`/proc/PID/fdinfo`, with \
`kernel.bpf_stats_enabled=1`) during the load, over the `/` requests nginx served (its \
`stub_status` counter). The programs run for every process on the machine, wrk included, \
so this is all the kernel time sonde's hooks cost per request served.
- **sonde CPU ns/req**: CPU time of all sonde threads (`/proc/PID/task/*/schedstat`) from \
the start of the load until sonde has drained its last events (and, in spans mode, the \
sink has received the last spans), before any scrape. **nginx CPU ns/req**: the same for \
nginx's worker during the load, in every mode: the cost the hooks add to the server's \
own syscalls.
- **RSS**: sonde's `VmHWM` (peak) and `VmRSS` (steady, at the end of the run).
- Correctness, asserted in metrics and spans runs: sonde's count of `/` requests, plus \
the requests it saw closed without a response (read by nginx after wrk exited; at most one \
per connection), equals the requests nginx read (wrk's own count is lower by the requests \
in flight when it stopped); no event is lost under keep-alive load; the sink received \
every span sonde counted as exported.
";

/// Explains the tables' figures.
fn legend(plan: &Plan) -> String {
    let spread = if plan.rounds > 1 {
        format!(
            "Medians over {} rounds, (min–max) over the rounds.",
            plan.rounds
        )
    } else {
        "One round: single values.".to_owned()
    };
    format!(
        "{spread} *vs baseline* and *Δ* compare each run with the baseline run of the same \
         round. *other CPU*: the machine's CPU time used outside nginx, wrk and sonde during \
         the load (other processes, interrupt work), as a share of all its CPUs; a high value \
         marks a disturbed run. Costs are per `/` request nginx served.\n"
    )
}

fn rounds(n: usize) -> String {
    if n == 1 {
        "1 round".to_owned()
    } else {
        format!("{n} rounds")
    }
}

fn throughput_table(rows: &[Row]) -> String {
    let cells = rows
        .iter()
        .map(|row| {
            let latency_unit = row.p50_us.map_or(1.0, |p| p.median);
            vec![
                row.workload.label().to_owned(),
                row.mode.label().to_owned(),
                cell(row.requests_per_sec, |v| format!("{v:.0}")),
                cell(row.throughput_ratio, |v| format!("{:.1} %", v * 100.0)),
                cell(row.p50_us, |v| latency(v, latency_unit, false)),
                cell(row.p50_delta_us, |v| latency(v, latency_unit, true)),
                cell(row.p99_us, |v| {
                    latency(v, row.p99_us.map_or(1.0, |p| p.median), false)
                }),
                cell(row.p99_delta_us, |v| {
                    latency(v, row.p99_us.map_or(1.0, |p| p.median), true)
                }),
                cell(row.socket_errors, |v| format!("{v:.0}")),
                cell(row.other_cpu_share, |v| format!("{:.0} %", v * 100.0)),
            ]
        })
        .collect();
    table(
        &[
            "workload",
            "mode",
            "req/s",
            "vs baseline",
            "p50",
            "Δ p50",
            "p99",
            "Δ p99",
            "socket errors",
            "other CPU",
        ],
        2,
        cells,
    )
}

fn cost_table(rows: &[Row]) -> String {
    let cells = rows
        .iter()
        .map(|row| {
            let whole = |v: f64| format!("{v:.0}");
            let mib = |v: f64| format!("{v:.1}");
            vec![
                row.workload.label().to_owned(),
                row.mode.label().to_owned(),
                cell(row.bpf_ns_per_request, whole),
                cell(row.sonde_cpu_ns_per_request, whole),
                cell(row.server_cpu_ns_per_request, whole),
                cell(row.rss_peak_mib, mib),
                cell(row.rss_steady_mib, mib),
                cell(row.events_lost, whole),
            ]
        })
        .collect();
    table(
        &[
            "workload",
            "mode",
            "BPF ns/req",
            "sonde CPU ns/req",
            "nginx CPU ns/req",
            "RSS peak MiB",
            "RSS steady MiB",
            "events lost",
        ],
        2,
        cells,
    )
}

fn spans_table(rows: &[Row]) -> String {
    let whole = |v: f64| format!("{v:.0}");
    let cells = rows
        .iter()
        .filter(|row| row.spans_exported.is_some())
        .map(|row| {
            vec![
                row.workload.label().to_owned(),
                cell(row.spans_exported, whole),
                cell(row.spans_dropped, whole),
                cell(row.spans_received, whole),
            ]
        })
        .collect();
    let header = [
        "workload",
        "spans exported",
        "dropped",
        "received by the sink",
    ];
    let mut out = table(&header, 1, cells);
    out.push_str(
        "\nPer run, in spans mode: SERVER spans of nginx and CLIENT spans of wrk (sonde sees \
         both ends).\n",
    );
    out
}

fn sustained(run: &Record) -> String {
    let Some(sonde) = &run.sonde else {
        return "Sustained run: sonde did not run.\n".to_owned();
    };
    format!(
        "Sustained: metrics mode, {}, {} s: {} requests at {:.0} req/s; events lost {}; \
         sonde CPU {:.0} ns/request, BPF {:.0} ns/request; RSS peak {:.1} MiB, steady {:.1} MiB.\n",
        run.workload.label(),
        run.seconds,
        thousands(run.served),
        run.wrk.requests_per_sec,
        sonde.counters.events_lost,
        run.sonde_cpu_ns_per_request().unwrap_or(f64::NAN),
        run.bpf_ns_per_request().unwrap_or(f64::NAN),
        sonde.memory.peak_bytes as f64 / MIB,
        sonde.memory.resident_bytes as f64 / MIB,
    )
}

fn cardinality(result: &CardinalityResult) -> String {
    format!(
        "Cardinality: {} distinct paths (`/c/<word>`, {} requests): sonde kept {} `http_route` \
         values for nginx (cap {} + `{{overflow}}`); RSS peak {:.1} MiB, steady {:.1} MiB; \
         `/metrics` ({} KiB) scraped in {:.1} ms median, {:.1} ms max over {} scrapes.\n",
        thousands(u64::from(result.paths)),
        thousands(result.served),
        result.route_series,
        result.route_cap,
        result.memory.peak_bytes as f64 / MIB,
        result.memory.resident_bytes as f64 / MIB,
        result.scrape_bytes / 1024,
        result.scrape_ms.median,
        result.scrape_ms.max,
        result.scrapes,
    )
}

/// The budget's lines as a Markdown list.
fn budget(lines: &[BudgetLine]) -> String {
    let mut out = String::new();
    for line in lines {
        let verdict = if line.met { "met" } else { "MISSED" };
        let _ = writeln!(out, "- {verdict}: {} — {}", line.rule, line.measured);
    }
    out
}

fn correctness(report: &Report) -> String {
    let violations = &report.violations;
    let mut out = if violations.is_empty() {
        "Correctness: every check passed.\n".to_owned()
    } else {
        let mut out = format!("Correctness: {} check(s) FAILED:\n\n", violations.len());
        for v in violations {
            let _ = writeln!(out, "- {}: {}: {}", v.run, v.check, v.detail);
        }
        out
    };
    let unanswered: Vec<f64> = report
        .runs
        .iter()
        .chain([&report.sustained])
        .filter_map(|run| run.sonde.as_ref())
        .map(|sonde| sonde.counters.unanswered)
        .filter(|&n| n > 0.0)
        .collect();
    if !unanswered.is_empty() {
        let _ = writeln!(
            out,
            "In {} run(s) nginx read {} request(s) after wrk had exited; sonde counted them as \
             unanswered (`sonde_requests_abandoned_total{{reason=\"closed_unanswered\"}}`), as \
             the count check expects.",
            unanswered.len(),
            unanswered.iter().sum::<f64>()
        );
    }
    out
}

/// `median (min–max)`, or the median alone when all values are equal; `–`
/// when not measured.
fn cell(spread: Option<Spread>, format: impl Fn(f64) -> String) -> String {
    match spread {
        None => "–".to_owned(),
        Some(s) if s.min == s.max => format(s.median),
        Some(s) => format!("{} ({}–{})", format(s.median), format(s.min), format(s.max)),
    }
}

/// `µs` in µs below 1 ms of `scale`, else in ms, so a cell's figures share a unit.
fn latency(us: f64, scale: f64, signed: bool) -> String {
    let (value, unit, digits) = if scale.abs() < 1000.0 {
        (us, "µs", 0)
    } else {
        (us / 1000.0, "ms", 2)
    };
    if signed {
        format!("{value:+.digits$} {unit}")
    } else {
        format!("{value:.digits$} {unit}")
    }
}

/// A Markdown table with padded columns, so it also reads as plain text;
/// the first `text_columns` columns are text, the others numbers
/// (right-aligned).
fn table(header: &[&str], text_columns: usize, rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::from("|");
        for (column, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            let pad = width - cell.chars().count();
            if column < text_columns {
                let _ = write!(text, " {cell}{} |", " ".repeat(pad));
            } else {
                let _ = write!(text, " {}{cell} |", " ".repeat(pad));
            }
        }
        text.push('\n');
        text
    };
    let mut out = line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    out.push('|');
    for (column, width) in widths.iter().enumerate() {
        let dashes = "-".repeat(*width);
        if column < text_columns {
            let _ = write!(out, " {dashes} |");
        } else {
            let _ = write!(out, " {}: |", &dashes[1..]);
        }
    }
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
pub mod tests {
    use std::path::Path;

    use super::*;
    use crate::bench::aggregate::{rows, tests::record};
    use crate::bench::budget;
    use crate::bench::daemon::Mode;
    use crate::bench::procfs::Memory;
    use crate::bench::wrk::Workload;

    /// Two rounds of every mode and workload, with made-up but plausible numbers.
    pub fn fixture() -> Report {
        use Mode::*;
        use Workload::*;
        let mut runs = Vec::new();
        for (round, drift) in [(1, 1.0), (2, 0.9)] {
            runs.extend([
                record(round, KeepAlive, Baseline, 40_000.0 * drift, 250.0, None, 0),
                record(
                    round,
                    KeepAlive,
                    Floor,
                    39_600.0 * drift,
                    255.0,
                    Some((400, 40)),
                    11,
                ),
                record(
                    round,
                    KeepAlive,
                    Metrics,
                    39_000.0 * drift,
                    262.0,
                    Some((560, 700)),
                    21,
                ),
                record(
                    round,
                    KeepAlive,
                    Spans,
                    36_000.0 * drift,
                    300.0,
                    Some((580, 2400)),
                    60,
                ),
                record(round, Close, Baseline, 8_000.0 * drift, 1800.0, None, 0),
                record(
                    round,
                    Close,
                    Floor,
                    7_900.0 * drift,
                    1810.0,
                    Some((900, 60)),
                    11,
                ),
                record(
                    round,
                    Close,
                    Metrics,
                    7_700.0 * drift,
                    1850.0,
                    Some((1300, 1100)),
                    22,
                ),
                record(
                    round,
                    Close,
                    Spans,
                    7_000.0 * drift,
                    2000.0,
                    Some((1350, 3000)),
                    40,
                ),
            ]);
        }
        let cut_off = runs.iter_mut().find(|r| r.mode == Metrics).unwrap();
        cut_off.sonde.as_mut().unwrap().counters.unanswered = 32.0;
        for run in runs.iter_mut().filter(|r| r.mode == Spans) {
            let sonde = run.sonde.as_mut().unwrap();
            sonde.counters.spans_exported = 1800.0;
            sonde.counters.spans_dropped = 200.0;
            sonde.spans_received = Some(1800);
        }
        let sustained = record(0, KeepAlive, Metrics, 38_000.0, 260.0, Some((550, 680)), 24);
        let cardinality = CardinalityResult {
            paths: 10_000,
            served: 250_000,
            route_series: 201,
            route_cap: 200,
            memory: Memory {
                peak_bytes: 30 << 20,
                resident_bytes: 28 << 20,
            },
            scrape_ms: Spread {
                median: 6.2,
                min: 5.1,
                max: 9.8,
            },
            scrapes: 20,
            scrape_bytes: 1800 * 1024,
        };
        let rows = rows(&runs, 2);
        let budget = budget::evaluate(&rows, &runs, &sustained, &cardinality);
        Report {
            machine: Machine {
                cpu_model: "AMD EPYC".to_owned(),
                cores: 2,
                kernel: "6.18.44".to_owned(),
                memory_gib: 23.5,
                nginx: "nginx/1.22.1".to_owned(),
                wrk: "wrk debian/4.1.0-3+b2 [epoll]".to_owned(),
                sonde_commit: "0123456789ab".to_owned(),
                date: "2026-11-22 05:13 UTC".to_owned(),
            },
            plan: Plan {
                quick: false,
                rounds: 2,
                run_seconds: 10,
                sustained_seconds: 60,
                cardinality_paths: 10_000,
            },
            took_seconds: 612.0,
            rows,
            sustained,
            cardinality,
            budget,
            violations: vec![Violation {
                run: "round 2 close metrics 10 s".to_owned(),
                check: "sonde counts every request nginx served".to_owned(),
                detail: "nginx served 1000 requests for /, sonde counted 999".to_owned(),
            }],
            runs,
        }
    }

    /// Compares with `testdata/<name>`; `BENCH_UPDATE_GOLDEN=1` rewrites it
    /// after an intended change of format.
    fn assert_golden(name: &str, actual: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/bench/testdata")
            .join(name);
        if std::env::var_os("BENCH_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap();
        assert!(
            actual == expected,
            "{name} differs from the golden file; got:\n{actual}"
        );
    }

    #[test]
    fn renders_the_report() {
        let report = fixture();
        assert_golden("report.md", &markdown(&report));
        assert_golden("readme_section.md", &readme_section(&report));
        assert_golden("terminal.txt", &terminal(&report));
    }

    #[test]
    fn cells_show_spreads_in_one_unit() {
        let spread = |median, min, max| Some(Spread { median, min, max });
        let whole = |v: f64| format!("{v:.0}");
        assert_eq!(cell(None, whole), "–");
        assert_eq!(cell(spread(5.0, 5.0, 5.0), whole), "5");
        assert_eq!(cell(spread(5.0, 4.0, 7.0), whole), "5 (4–7)");
        assert_eq!(latency(252.0, 252.0, false), "252 µs");
        assert_eq!(latency(1250.0, 900.0, false), "1250 µs");
        assert_eq!(latency(1250.0, 1100.0, false), "1.25 ms");
        assert_eq!(latency(-40.0, 1100.0, true), "-0.04 ms");
        assert_eq!(latency(12.0, 250.0, true), "+12 µs");
    }
}
