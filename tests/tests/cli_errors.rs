//! Invalid flags: sonde refuses to start with one clear error line and a
//! non-zero exit code, never a panic.
use std::fs::File;
use std::process::{Command, Stdio};
use std::time::Duration;

use sonde_tests::process::{poll, ChildGuard, TempDir};
use sonde_tests::sonde::sonde_bin;

/// Runs sonde with `args`; returns its exit code and stderr.
fn run_sonde(args: &[&str]) -> (Option<i32>, String) {
    let dir = TempDir::new("cli").unwrap();
    let stderr_path = dir.path().join("stderr");
    let child = Command::new(sonde_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", sonde_bin().display()));
    let mut process = ChildGuard::new("sonde", child);
    let status = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        process.exit_status()
    });
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let status = status.unwrap_or_else(|| panic!("sonde {args:?} kept running; stderr:\n{stderr}"));
    (status.code(), stderr)
}

#[test]
fn invalid_flags_fail_with_one_clear_error() {
    for args in [["--capture-bytes", "abc"], ["--metrics-addr", "nonsense"]] {
        let (code, stderr) = run_sonde(&args);
        assert!(
            code.is_some_and(|c| c != 0),
            "sonde {args:?} exited with {code:?}; stderr:\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "sonde {args:?} panicked:\n{stderr}"
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "sonde {args:?}: want exactly one line on stderr, got:\n{stderr}"
        );
        let (flag, value) = (args[0], args[1]);
        assert!(
            lines[0].contains(flag) && lines[0].contains(value),
            "sonde {args:?}: the error does not name {flag} and {value:?}: {}",
            lines[0]
        );
    }
}
