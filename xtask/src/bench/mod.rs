//! `cargo xtask bench`: what sonde costs nginx under wrk, against nginx
//! alone (baseline) and against eBPF programs that do nothing on the same
//! hooks (floor), interleaved in rounds; plus a sustained run and a run
//! with thousands of distinct routes. Correctness (sonde's counts against
//! nginx's) is asserted in every run and fails the bench; the performance
//! budget is reported, met or MISSED.
//!
//! Full mode writes `bench/results/latest.{md,json,png}` and the README's
//! Performance section; `--quick` writes into `target/bench-quick/` only.

mod aggregate;
mod budget;
mod cardinality;
mod chart;
mod daemon;
mod machine;
mod measure;
mod nginx;
mod procfs;
mod readme;
mod report;
mod stats;
mod wrk;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{children, setup, workspace};
use daemon::Mode;
use measure::{Bench, RunSpec};
use nginx::BenchNginx;
use procfs::BpfStatsEnabled;
use report::{Plan, Report};
use wrk::Workload;

/// Load before the first round, not recorded: nginx and the CPUs warmed up.
const WARM_UP: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub quick: bool,
    pub rounds: Option<usize>,
    pub seconds: Option<u64>,
}

impl Options {
    fn plan(self) -> Plan {
        let (rounds, run_seconds, sustained_seconds, cardinality_paths) = if self.quick {
            (1, 3, 5, 1_000)
        } else {
            (5, 10, 60, 10_000)
        };
        Plan {
            quick: self.quick,
            rounds: self.rounds.unwrap_or(rounds),
            run_seconds: self.seconds.unwrap_or(run_seconds),
            sustained_seconds,
            cardinality_paths,
        }
    }
}

/// Runs the bench and writes its report; `Ok(false)` when a correctness
/// check failed (the report says which).
pub fn bench(options: Options) -> Result<bool> {
    let plan = options.plan();
    setup::ensure(setup::Scope::Everything, setup::Root::Required)?;
    let sonde_bin = workspace::build_sonde(true)?;
    let started = Instant::now();
    children::catch_interrupts()?;
    let report = {
        let _timed = BpfStatsEnabled::switch_on()?;
        measure_all(plan, &sonde_bin, started)?
    };

    let dir = if plan.quick {
        workspace::target_dir().join("bench-quick")
    } else {
        workspace::root().join("bench/results")
    };
    write_outputs(&report, &dir)?;
    println!("\n{}", report::terminal(&report));
    eprintln!(
        "bench: took {:.1} min; report in {}",
        report.took_seconds / 60.0,
        dir.join("latest.md").display()
    );
    Ok(report.violations.is_empty())
}

fn measure_all(plan: Plan, sonde_bin: &Path, started: Instant) -> Result<Report> {
    let nginx = BenchNginx::start()?;
    let bench = Bench {
        nginx: &nginx,
        sonde_bin,
        service: nginx.service_name(),
    };
    let machine = machine::describe();
    eprintln!(
        "bench: {} round(s) × {} s, sonde {}",
        plan.rounds, plan.run_seconds, machine.sonde_commit
    );
    wrk::run(&nginx.url("/"), Workload::KeepAlive, WARM_UP, None)?;

    let mut runs = Vec::new();
    let mut violations = Vec::new();
    let run_duration = Duration::from_secs(plan.run_seconds);
    for round in 1..=plan.rounds {
        for workload in Workload::ALL {
            for mode in Mode::rotation(round - 1) {
                let spec = RunSpec {
                    round,
                    workload,
                    mode,
                    duration: run_duration,
                };
                let (record, failed) = measure::run(&bench, spec)?;
                runs.push(record);
                violations.extend(failed);
            }
        }
    }
    let (sustained, failed) = measure::run(
        &bench,
        RunSpec {
            round: 0,
            workload: Workload::KeepAlive,
            mode: Mode::Metrics,
            duration: Duration::from_secs(plan.sustained_seconds),
        },
    )?;
    violations.extend(failed);
    let (cardinality, failed) = cardinality::run(&bench, plan.cardinality_paths, run_duration)?;
    violations.extend(failed);

    let rows = aggregate::rows(&runs, machine.cores);
    let budget = budget::evaluate(&rows, &runs, &sustained, &cardinality);
    Ok(Report {
        machine,
        plan,
        took_seconds: started.elapsed().as_secs_f64(),
        rows,
        sustained,
        cardinality,
        budget,
        violations,
        runs,
    })
}

fn write_outputs(report: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(&dir.join("latest.md"), report::markdown(report).as_bytes())?;
    let json = serde_json::to_string_pretty(report)? + "\n";
    write(&dir.join("latest.json"), json.as_bytes())?;
    let machine = &report.machine;
    let subtitle = format!(
        "{}, {} cores, kernel {}; medians of {} × {} s; {}",
        machine.cpu_model,
        machine.cores,
        machine.kernel,
        report.plan.rounds,
        report.plan.run_seconds,
        machine.date
    );
    write(
        &dir.join("latest.png"),
        &chart::render(&report.rows, &subtitle)?,
    )?;
    if !report.plan.quick {
        let path = workspace::root().join("README.md");
        let text = std::fs::read_to_string(&path)?;
        let updated = readme::splice(&text, &report::readme_section(report))?;
        write(&path, updated.as_bytes())?;
    }
    Ok(())
}

/// Writes through a temporary file, so a reader never sees half a file.
fn write(path: &Path, contents: &[u8]) -> Result<()> {
    let partial = path.with_extension(format!(
        "{}.tmp",
        path.extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
    ));
    std::fs::write(&partial, contents).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))
}
