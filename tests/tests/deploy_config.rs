//! deploy/kubernetes/base/sonde.yaml, the config file of the DaemonSet: sonde
//! starts with it as the DaemonSet passes it (`--config`), and with each of
//! its commented-out examples switched on, so no key or value in it is one
//! sonde would refuse.
use std::path::PathBuf;

use sonde_tests::process::TempDir;
use sonde_tests::sonde::Sonde;

fn config_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/base/sonde.yaml")
}

/// Starts sonde on `config`; the harness's `--metrics-addr` flag overrides
/// the file's, as a flag overrides any entry.
fn assert_starts_with(config: &std::path::Path) {
    let args = vec!["--config".to_string(), config.display().to_string()];
    let sonde = Sonde::start(&args)
        .unwrap_or_else(|e| panic!("sonde --config {}: {e:?}", config.display()));
    sonde.stop();
}

#[test]
fn sonde_starts_with_the_daemonsets_config_file() {
    assert_starts_with(&config_path());
}

#[test]
fn every_commented_out_example_is_a_valid_entry() {
    let text = std::fs::read_to_string(config_path()).expect("read the DaemonSet's sonde.yaml");
    // `# key: value` lines are examples; prose never has a key-shaped start.
    let mut examples = 0;
    let enabled: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(": ").is_some_and(|(key, _)| {
                    !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                }) =>
            {
                examples += 1;
                format!("{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert!(examples >= 2, "no commented-out example in:\n{text}");
    let dir = TempDir::new("deploy-config").unwrap();
    let path = dir.path().join("sonde.yaml");
    std::fs::write(&path, &enabled).unwrap();
    assert_starts_with(&path);
}
