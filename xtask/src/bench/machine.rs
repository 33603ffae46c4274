//! What the numbers were measured on: CPU, kernel, memory, the versions of
//! nginx and wrk, sonde's commit and the date.

use std::process::Command;

use serde::Serialize;

use crate::{cmd, workspace};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub memory_gib: f64,
    pub nginx: String,
    pub wrk: String,
    /// Short hash, `-dirty` when the work tree has changes.
    pub sonde_commit: String,
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
}

const UNKNOWN: &str = "unknown";

pub fn describe() -> Machine {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    Machine {
        cpu_model: field(&cpuinfo, "model name").unwrap_or(UNKNOWN).to_owned(),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        memory_gib: field(&read("/proc/meminfo"), "MemTotal")
            .and_then(|kib| kib.trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / (1024.0 * 1024.0)),
        nginx: version(Command::new("nginx").arg("-v"), "nginx version: "),
        wrk: version(Command::new("wrk").arg("-v"), ""),
        sonde_commit: commit(),
        date: cmd::stdout_if_ok(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
            .map_or_else(|| UNKNOWN.to_owned(), |date| date.trim().to_owned()),
    }
}

/// The value of the first `name : value` line.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

/// The first line a tool prints about itself, on stdout or stderr (nginx
/// uses stderr, wrk exits 1 after printing), without `prefix`.
fn version(command: &mut Command, prefix: &str) -> String {
    let Ok(output) = command.output() else {
        return UNKNOWN.to_owned();
    };
    let text = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    let first = text.lines().next().unwrap_or(UNKNOWN).trim();
    let first = first.strip_prefix(prefix).unwrap_or(first);
    // wrk: "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
    first.split(" Copyright").next().unwrap_or(first).to_owned()
}

fn commit() -> String {
    let git = |args: &[&str]| {
        cmd::stdout_if_ok(
            Command::new("git")
                .current_dir(workspace::root())
                .args(args),
        )
    };
    let Some(hash) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return UNKNOWN.to_owned();
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|changes| !changes.trim().is_empty());
    format!("{}{}", hash.trim(), if dirty { "-dirty" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_colon_separated_fields() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\
                       processor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(field(cpuinfo, "model name"), Some("AMD EPYC 7B13"));
        assert_eq!(field(cpuinfo, "processor"), Some("0"));
        assert_eq!(field(cpuinfo, "model"), None);
        let meminfo = "MemTotal:       24628472 kB\nMemFree:         1000 kB\n";
        assert_eq!(field(meminfo, "MemTotal"), Some("24628472 kB"));
    }
}
