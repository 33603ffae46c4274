//! `cargo xtask test`, what CI runs: formatting, lints, unit tests, a short
//! fuzzing run, the checks of deploy/ by their own tools, the release build
//! and the privileged end-to-end tests against the real kernel, then a quick bench
//! that asserts sonde's counts under load. Independent steps all run even
//! after a failure, and test runs go on past failing test binaries, so one
//! CI run reports every problem; the end-to-end tests and the bench need the
//! release build.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::{cmd, fuzz, manifests, prometheus_rules, setup, workspace};

/// Seconds each fuzz target runs in the suite (`cargo xtask fuzz` runs
/// longer), and the step's name, which says so.
const FUZZ_SECONDS: u64 = 20;
const FUZZ_STEP: &str = "fuzz (20 s per target)";

#[derive(Clone, Copy)]
pub struct Selection {
    unit: bool,
    e2e: bool,
}

impl Selection {
    /// `--unit` or `--e2e` picks one half; neither means both.
    pub fn from_flags(unit: bool, e2e: bool) -> Self {
        if unit || e2e {
            Self { unit, e2e }
        } else {
            Self {
                unit: true,
                e2e: true,
            }
        }
    }
}

enum Outcome {
    Passed(Duration),
    Failed(Duration),
    Skipped(&'static str),
}

/// Runs the selected steps; `Ok(false)` when any of them failed.
pub fn test(selection: Selection) -> Result<bool> {
    setup::ensure(setup::Scope::Everything, setup::Root::Required)?;
    let mut results: Vec<(&str, Outcome)> = Vec::new();

    if selection.unit {
        let mut fmt = workspace::cargo();
        fmt.args(["fmt", "--all", "--", "--check"]);
        results.push(("fmt", step(&mut fmt)));

        // The kernel crate is linted as the kernel sees it, on the eBPF
        // target with nightly: on the host its std test harness clashes with
        // its panic handler and its eBPF-only paths are not what ships.
        let mut clippy = workspace::cargo();
        clippy.args([
            "clippy",
            "--workspace",
            "--exclude",
            "probe-ebpf",
            "--all-targets",
        ]);
        clippy.args(["--", "-D", "warnings"]);
        results.push(("clippy", step(&mut clippy)));

        // The rustup proxy, not $CARGO (stable's own cargo), understands +nightly.
        let mut clippy_ebpf = Command::new("cargo");
        clippy_ebpf
            .current_dir(workspace::root())
            .args([
                "+nightly",
                "clippy",
                "-p",
                "probe-ebpf",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"])
            // As aya-build compiles it, so the architecture-specific paths are linted too.
            .env(
                "RUSTFLAGS",
                format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
            );
        results.push(("clippy (eBPF target)", step(&mut clippy_ebpf)));

        // probe-ebpf has no host tests (see above).
        let mut unit = workspace::cargo();
        unit.args([
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "sonde-tests",
            "--exclude",
            "probe-ebpf",
        ]);
        results.push(("unit tests", step(&mut unit)));

        results.push((FUZZ_STEP, timed(|| fuzz::run_all(FUZZ_SECONDS))));

        results.push(("prometheus rules", timed(prometheus_rules::check)));
        results.push(("kubernetes manifests", timed(manifests::check)));
    }

    if selection.e2e {
        let built = step(&mut workspace::sonde_build(true));
        let build_passed = matches!(built, Outcome::Passed(_));
        results.push(("release build", built));

        if build_passed {
            let mut e2e = workspace::cargo();
            e2e.args([
                "test",
                "--no-fail-fast",
                "-p",
                "sonde-tests",
                "--release",
                "--",
                "--test-threads=1",
            ])
            .env("SONDE_BIN", workspace::sonde_path(true));
            results.push(("end-to-end tests", step(&mut e2e)));

            // Its exit status reflects sonde's counts only, never timings.
            let mut bench = Command::new(std::env::current_exe()?);
            bench.args(["bench", "--quick"]);
            results.push(("bench --quick (correctness)", step(&mut bench)));
        } else {
            for name in ["end-to-end tests", "bench --quick (correctness)"] {
                results.push((name, Outcome::Skipped("the release build failed")));
            }
        }
    }

    eprintln!("\nxtask test summary:");
    for (name, outcome) in &results {
        match outcome {
            Outcome::Passed(took) => {
                eprintln!("  ok       {name:<28} {:>6.1} s", took.as_secs_f64())
            }
            Outcome::Failed(took) => {
                eprintln!("  FAILED   {name:<28} {:>6.1} s", took.as_secs_f64())
            }
            Outcome::Skipped(why) => eprintln!("  skipped  {name:<28} ({why})"),
        }
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, outcome)| !matches!(outcome, Outcome::Passed(_)))
        .map(|(name, _)| *name)
        .collect();
    if failed.is_empty() {
        eprintln!("xtask test: PASSED");
    } else {
        eprintln!("xtask test: FAILED ({})", failed.join(", "));
    }
    Ok(failed.is_empty())
}

/// Runs one step with its output streaming through, and times it.
fn step(command: &mut Command) -> Outcome {
    timed(|| cmd::run(command))
}

/// Runs a step made of several commands, and times it.
fn timed(run: impl FnOnce() -> Result<()>) -> Outcome {
    eprintln!();
    let started = Instant::now();
    match run() {
        Ok(()) => Outcome::Passed(started.elapsed()),
        Err(err) => {
            eprintln!("{err:#}");
            Outcome::Failed(started.elapsed())
        }
    }
}
