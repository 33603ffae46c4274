//! Developer and CI tasks for sonde, run as `cargo xtask <command>`.
//!
//! This file only parses the command line and dispatches; each command lives
//! in its own module. Errors end the process with a one-line message.

mod bench;
mod children;
mod cmd;
mod demo;
mod fuzz;
mod http_get;
mod manifests;
mod prometheus_rules;
mod run;
mod setup;
mod summary;
mod test_suite;
mod workspace;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(bin_name = "cargo xtask", about = "Build, run, demo and test sonde")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and running sonde needs (root; idempotent).
    Setup,
    /// Build the sonde binary (target/{debug,release}/sonde).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build in release mode and run sonde as root with the given flags.
    Run {
        /// Flags passed to sonde, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        sonde_args: Vec<std::ffi::OsString>,
    },
    /// Run a demo service, a load generator and sonde; print a live
    /// per-endpoint summary scraped from sonde's /metrics.
    Demo {
        /// Stop by itself after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Also export the demo's spans to this OTLP endpoint (e.g.
        /// http://127.0.0.1:4317 for gRPC, http://127.0.0.1:4318 for HTTP).
        #[arg(long)]
        otlp_endpoint: Option<String>,
    },
    /// Measure what sonde costs nginx under wrk, against nginx alone and
    /// an eBPF floor; assert sonde's counts; write bench/results/latest.*
    /// and the README's Performance section (quick: target/bench-quick/).
    /// Fails only on a correctness violation, never on the budget.
    Bench {
        /// 1 round of 3 s runs, short sustained and cardinality runs
        /// (under 2 minutes); writes nothing outside target/.
        #[arg(long)]
        quick: bool,
        /// Rounds of every workload and mode (default 5, quick 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rounds: Option<u64>,
        /// Seconds of load per run (default 10, quick 3).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: Option<u64>,
    },
    /// Run every fuzz target (fuzz/, cargo-fuzz on nightly) for a while each;
    /// installs cargo-fuzz if missing.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
    },
    /// fmt, clippy, unit tests, release build and privileged end-to-end tests.
    Test {
        /// Only fmt, clippy and unit tests.
        #[arg(long, conflicts_with = "e2e")]
        unit: bool,
        /// Only the release build and the end-to-end tests.
        #[arg(long)]
        e2e: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Setup => setup::ensure(setup::Scope::Everything, setup::Root::Required)?,
        Command::Build { release } => {
            setup::ensure(setup::Scope::Build, setup::Root::OnlyToInstall)?;
            workspace::build_sonde(release)?;
        }
        Command::Run { sonde_args } => run::run(&sonde_args)?,
        Command::Demo {
            seconds,
            otlp_endpoint,
        } => demo::demo(seconds.map(Duration::from_secs), otlp_endpoint.as_deref())?,
        Command::Bench {
            quick,
            rounds,
            seconds,
        } => {
            let options = bench::Options {
                quick,
                rounds: rounds.map(|n| n as usize),
                seconds,
            };
            if !bench::bench(options)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Fuzz { seconds } => {
            setup::ensure(setup::Scope::Fuzz, setup::Root::OnlyToInstall)?;
            fuzz::run_all(seconds)?;
        }
        Command::Test { unit, e2e } => {
            // The suite prints its own verdict as its last line.
            if !test_suite::test(test_suite::Selection::from_flags(unit, e2e))? {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
