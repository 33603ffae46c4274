//! `cargo xtask fuzz --seconds N`: runs every cargo-fuzz target of fuzz/ for
//! N seconds each (libFuzzer, nightly), from the committed seed corpus.
//! `cargo xtask test` runs it for a short fixed time.
//!
//! What the fuzzers find stays out of the repository: new corpus entries go
//! to target/fuzz/corpus/<target>/ (the committed seeds are only read), and
//! crash artifacts to target/fuzz/artifacts/<target>/. A crash fails the run
//! with the artifact's path and the command that reproduces it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use crate::{cmd, workspace};

/// Longest input tried: past the parser's 16 KiB head limit, so the
/// head-too-large paths are reachable.
const MAX_LEN: usize = 20 * 1024;

/// An input that takes longer than this is reported as a hang.
const TIMEOUT_SECONDS: u64 = 10;

/// Runs every target for `seconds`; fails listing the targets that found
/// something, after all have run.
pub fn run_all(seconds: u64) -> Result<()> {
    let mut failed = Vec::new();
    for target in targets()? {
        if let Err(err) = run(&target, Duration::from_secs(seconds)) {
            eprintln!("fuzz: {target}: {err:#}");
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Every `fuzz/fuzz_targets/NAME.rs`, by name: a target added there is run
/// without being listed anywhere else.
fn targets() -> Result<Vec<String>> {
    let dir = workspace::root().join("fuzz").join("fuzz_targets");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "rs") {
            if let Some(stem) = path.file_stem() {
                names.push(stem.to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

fn run(target: &str, time: Duration) -> Result<()> {
    let scratch = fuzz_dir().join("corpus").join(target);
    let artifacts = fuzz_dir().join("artifacts").join(target);
    for dir in [&scratch, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let started = SystemTime::now();
    let mut fuzz = cargo_fuzz("run", target);
    // libFuzzer adds what it finds to the first directory only.
    fuzz.arg(&scratch)
        .arg(seeds(target))
        .arg("--")
        .arg(format!("-max_total_time={}", time.as_secs()))
        .arg(format!("-max_len={MAX_LEN}"))
        .arg(format!("-timeout={TIMEOUT_SECONDS}"))
        .arg(format!("-dict={}", dictionary().display()))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        // No line per new input: the final stats and any crash are what matter.
        .arg("-verbosity=0");
    let outcome = cmd::run(&mut fuzz);
    if outcome.is_err() {
        for artifact in written_since(&artifacts, started) {
            let mut reproduce = cargo_fuzz("run", target);
            reproduce.arg(&artifact);
            eprintln!(
                "fuzz: {target}: crash artifact {}\nfuzz: reproduce with: (cd {} && {})",
                artifact.display(),
                workspace::root().display(),
                cmd::display(&reproduce)
            );
        }
    }
    outcome
}

/// `cargo +nightly fuzz <verb> <target>` as every run here builds it:
/// without a sanitizer (the targets are safe Rust: bounds are checked
/// anyway, and half the time goes to more inputs), with debug assertions
/// (overflow checks), into target/fuzz.
fn cargo_fuzz(verb: &str, target: &str) -> Command {
    // The rustup proxy, not $CARGO (stable's own cargo), understands +nightly.
    let mut command = Command::new("cargo");
    command
        .current_dir(workspace::root())
        .args(["+nightly", "fuzz", verb, "--sanitizer", "none"])
        .arg("--target-dir")
        .arg(fuzz_dir())
        .arg(target);
    command
}

fn fuzz_dir() -> PathBuf {
    workspace::target_dir().join("fuzz")
}

/// The committed seed corpus of `target`.
fn seeds(target: &str) -> PathBuf {
    workspace::root().join("fuzz").join("corpus").join(target)
}

fn dictionary() -> PathBuf {
    workspace::root().join("fuzz").join("http.dict")
}

/// Files in `dir` modified at or after `since`: what this run left there.
fn written_since(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let modified = entry.metadata().ok()?.modified().ok()?;
            (modified >= since).then(|| entry.path())
        })
        .collect();
    found.sort();
    found
}
