//! deploy/kubernetes/base/sonde.yaml, the config file of the DaemonSet,
//! names only sonde's flags, and its values are ones sonde starts with.
//!
//! Until `--config` is in, its settings are passed here as the flags they
//! mirror; the file holds only `key: value` lines with scalar values (and
//! commented-out examples of the same shape).
use std::path::PathBuf;
use std::process::Command;

use sonde_tests::sonde::{sonde_bin, Sonde};

fn config_text() -> String {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/base/sonde.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(key, value, commented out)` of every setting line.
fn settings(text: &str) -> Vec<(String, String, bool)> {
    text.lines()
        .filter_map(|line| {
            let (commented, line) = match line.strip_prefix("# ") {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let (key, value) = line.split_once(": ")?;
            let is_key =
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
            is_key.then(|| (key.to_owned(), value.trim().to_owned(), commented))
        })
        .collect()
}

#[test]
fn every_key_is_a_flag_and_the_values_start_sonde() {
    let help = Command::new(sonde_bin())
        .arg("--help")
        .output()
        .expect("run sonde --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let text = config_text();
    let settings = settings(&text);
    assert!(
        settings
            .iter()
            .any(|(key, _, commented)| key == "metrics-addr" && !commented),
        "no metrics-addr in:\n{text}"
    );
    for (key, _, _) in &settings {
        assert!(
            help.contains(&format!("--{key} ")) || help.contains(&format!("--{key}\n")),
            "`{key}` is not a flag of sonde:\n{help}"
        );
    }

    // The harness picks the metrics address; the rest as flags.
    let args: Vec<String> = settings
        .iter()
        .filter(|(key, _, commented)| !commented && key != "metrics-addr")
        .flat_map(|(key, value, _)| [format!("--{key}"), value.clone()])
        .collect();
    assert!(args.len() >= 8, "too few settings to try: {args:?}");
    let sonde = Sonde::start(&args).unwrap_or_else(|e| panic!("sonde {args:?}: {e:?}"));
    sonde.stop();
}
