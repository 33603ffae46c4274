//! Bad configuration: an invalid flag, `SONDE_*` variable or config file
//! entry stops sonde before it loads anything, with exit code 2 and exactly
//! one line on stderr that names the field as the user wrote it (`--port`,
//! `SONDE_PORT`, `sonde.yaml:1:7: port`) and what is wrong. Never a panic.
use std::process::Command;
use std::time::Duration;

use sonde_tests::process::{run_to_exit, TempDir};
use sonde_tests::sonde::sonde_bin;

/// What one run of sonde is given.
struct Given<'a> {
    args: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
    /// Written to `sonde.yaml` in sonde's working directory.
    config: Option<&'a str>,
}

/// Runs sonde in a clean environment holding only `given.env`; returns
/// its exit code and stderr.
fn run_sonde(given: &Given) -> (Option<i32>, String) {
    let dir = TempDir::new("cli").unwrap();
    if let Some(config) = given.config {
        std::fs::write(dir.path().join("sonde.yaml"), config).unwrap();
    }
    let mut command = Command::new(sonde_bin());
    command
        .args(given.args)
        .env_clear()
        .envs(given.env.iter().copied())
        .current_dir(dir.path());
    let finished = run_to_exit(&mut command, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{:?} {:?}: {e:#}", given.args, given.env));
    (finished.status.code(), finished.stderr)
}

/// sonde exits with 2 and says exactly `sonde: {expected}`, on one line.
fn assert_refused(given: &Given, expected: &str) {
    let (code, stderr) = run_sonde(given);
    let what = format!(
        "sonde {:?}, env {:?}, config {:?}",
        given.args, given.env, given.config
    );
    assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
    assert_eq!(code, Some(2), "{what}: exit code; stderr:\n{stderr}");
    assert_eq!(
        stderr,
        format!("sonde: {expected}\n"),
        "{what}: want exactly one line"
    );
}

/// A bad value for every setting (by its long flag name), and what sonde
/// says of it.
const BAD_VALUES: &[(&str, &str, &str)] = &[
    ("metrics-addr", "localhost", "invalid socket address syntax"),
    ("port", "65536", "65536 is not in 1..=65535"),
    ("exe", "nginx[", "not a valid regular expression: unclosed character class"),
    ("pid", "0", "0 is not in 1..=4294967295"),
    ("capture-bytes", "abc", "invalid digit found in string"),
    ("log-level", "[", "not a level or tracing filter: invalid filter directive"),
    ("drain-interval-ms", "0", "0 is not in 1..=50"),
    ("ringbuf-mib", "2048", "not a power of two from 1 to 1024"),
    ("max-connections", "4194305", "4194305 is not in 1024..=4194304"),
    ("max-routes-per-service", "100001", "100001 is not in 1..=100000"),
    ("idle-timeout-secs", "1h", "invalid digit found in string"),
    (
        "otlp-endpoint",
        "https://collector:4318",
        "`https://collector:4318`: https needs TLS, which this build of sonde does not include; use http://",
    ),
    ("otlp-protocol", "grpc/json", "expected one of grpc, http/protobuf"),
    ("trace-sample-ratio", "2", "not a ratio from 0 to 1"),
    ("otlp-metrics", "1", "expected one of true, false"),
    ("otlp-metrics-interval-secs", "3601", "3601 is not in 1..=3600"),
    ("kubernetes", "maybe", "value was not a boolean"),
    (
        "kubernetes-api",
        "kubernetes:443",
        "`kubernetes:443` is not an http:// or https:// URL",
    ),
    (
        "node-name",
        "Node_A",
        "not a DNS subdomain (lower-case letters, digits, '-' and '.')",
    ),
];

/// Flags that take no value.
const SWITCHES: &[&str] = &["otlp-metrics"];

/// The long flags `sonde --help` lists, but for --help, --version and
/// --config (which names the file, see the tests below).
fn listed_settings() -> Vec<String> {
    let help = Command::new(sonde_bin()).arg("--help").output().unwrap();
    assert!(help.status.success(), "sonde --help: {help:?}");
    let help = String::from_utf8(help.stdout).unwrap();
    help.lines()
        .filter_map(|line| {
            let flag = line
                .trim_start()
                .split([' ', ','])
                .find(|w| w.starts_with("--"))?;
            (line.trim_start().starts_with('-')
                && !["--help", "--version", "--config"].contains(&flag))
            .then(|| flag.trim_start_matches("--").to_owned())
        })
        .collect()
}

#[test]
fn every_setting_has_a_bad_value_below() {
    let mut listed = listed_settings();
    listed.sort();
    let mut tested: Vec<String> = BAD_VALUES.iter().map(|(k, _, _)| k.to_string()).collect();
    tested.sort();
    assert_eq!(tested, listed);
}

#[test]
fn a_bad_flag_names_the_flag() {
    for (key, value, reason) in BAD_VALUES {
        let flag = format!("--{key}");
        let expected = if SWITCHES.contains(key) {
            format!("unexpected value '{value}' for '{flag}' found; no more were expected")
        } else {
            format!("{flag}: invalid value '{value}': {reason}")
        };
        let with_equals = format!("{flag}={value}");
        for args in [&[flag.as_str(), value][..], &[with_equals.as_str()]] {
            if SWITCHES.contains(key) && args.len() == 2 {
                // `--otlp-metrics 1`: the 1 is a stray argument.
                continue;
            }
            let given = Given {
                args,
                env: &[],
                config: None,
            };
            assert_refused(&given, &expected);
        }
    }
}

#[test]
fn a_bad_variable_names_the_variable() {
    for (key, value, reason) in BAD_VALUES {
        let variable = format!("SONDE_{}", key.to_uppercase().replace('-', "_"));
        let given = Given {
            args: &[],
            env: &[(&variable, value)],
            config: None,
        };
        assert_refused(
            &given,
            &format!("{variable}: invalid value '{value}': {reason}"),
        );
    }
}

#[test]
fn a_bad_config_entry_names_the_file_place_and_key() {
    for (key, value, reason) in BAD_VALUES {
        // Quoted: the value reaches the flag's parser as the same text.
        let config = format!("# sonde\n\n{key}: '{value}'\n");
        let given = Given {
            args: &["--config", "sonde.yaml"],
            env: &[],
            config: Some(&config),
        };
        let column = key.len() + 3;
        let expected = format!("sonde.yaml:3:{column}: {key}: invalid value '{value}': {reason}");
        assert_refused(&given, &expected);
    }
}

/// The standard OpenTelemetry endpoint variables are checked too, once the
/// metrics address is bound (hence a free one).
#[test]
fn a_bad_otel_endpoint_names_the_variable() {
    for (variable, value, reason) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "collector:4317",
            "`collector:4317` is not an http:// URL with a host",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://collector:4318",
            "`https://collector:4318`: https needs TLS, which this build of sonde does not include; use http://",
        ),
    ] {
        let given = Given {
            args: &["--metrics-addr", "127.0.0.1:0"],
            env: &[(variable, value)],
            config: None,
        };
        assert_refused(&given, &format!("{variable}: {reason}"));
    }
}

#[test]
fn a_config_file_that_is_not_settings() {
    for (config, expected) in [
        (
            "log-level: info\nmetrics-adr: '127.0.0.1:9464'\n",
            "sonde.yaml:2:1: metrics-adr: unknown key (did you mean `metrics-addr`?)",
        ),
        ("verbose: true\n", "sonde.yaml:1:1: verbose: unknown key"),
        // Internal flags are not settings.
        (
            "bench-floor: true\n",
            "sonde.yaml:1:1: bench-floor: unknown key",
        ),
        (
            "log-level: info\nport: [80, 443\n",
            "sonde.yaml:2:7: unclosed bracket '['",
        ),
        (
            "port: 80\n  exe: nginx\n",
            "sonde.yaml:2:6: mapping values are not allowed in this context",
        ),
        ("- port: 80\n", "sonde.yaml:1:1: expected mapping start"),
        (
            "port: 80\nport: 443\n",
            "sonde.yaml:2:1: `port` is set twice, first at 1:1",
        ),
        // Wrong types.
        (
            "metrics-addr: ['127.0.0.1:9464']\n",
            "sonde.yaml:1:15: metrics-addr: expected one value, found a list",
        ),
        (
            "port: {http: 80}\n",
            "sonde.yaml:1:7: port: expected a value or a list of values, found a mapping",
        ),
        (
            "port: [80, [443]]\n",
            "sonde.yaml:1:12: port: expected a value, found a list",
        ),
        (
            "capture-bytes: 4096.0\n",
            "sonde.yaml:1:16: capture-bytes: invalid value '4096.0': invalid digit found in string",
        ),
        (
            "otlp-metrics: yes\n",
            "sonde.yaml:1:15: otlp-metrics: invalid value 'yes': expected one of true, false",
        ),
    ] {
        let given = Given {
            args: &["--config", "sonde.yaml"],
            env: &[],
            config: Some(config),
        };
        assert_refused(&given, expected);
    }
}

#[test]
fn a_config_file_that_cannot_be_read_is_named_by_its_field() {
    let missing =
        "sonde: --config: cannot read missing.yaml: No such file or directory (os error 2)";
    for (given, expected) in [
        (
            Given {
                args: &["--config", "missing.yaml"],
                env: &[],
                config: None,
            },
            missing,
        ),
        // The flag names the file before the variable does.
        (
            Given {
                args: &["--config", "missing.yaml"],
                env: &[("SONDE_CONFIG", "sonde.yaml")],
                config: Some("port: 80\n"),
            },
            missing,
        ),
        (
            Given {
                args: &[],
                env: &[("SONDE_CONFIG", "/etc/sonde/missing.yaml")],
                config: None,
            },
            "sonde: SONDE_CONFIG: cannot read /etc/sonde/missing.yaml: No such file or directory (os error 2)",
        ),
        (
            Given {
                args: &["--config", "."],
                env: &[],
                config: None,
            },
            "sonde: --config: cannot read .: Is a directory (os error 21)",
        ),
        (
            Given {
                args: &[],
                env: &[("SONDE_CONFIG", "")],
                config: None,
            },
            "sonde: SONDE_CONFIG: a value is required",
        ),
    ] {
        assert_refused(&given, expected.trim_start_matches("sonde: "));
    }
}

#[test]
fn command_line_mistakes() {
    for (args, expected) in [
        (
            &["--prot", "80"][..],
            "unexpected argument '--prot' found (did you mean '--port'?)",
        ),
        (&["--port"], "--port: a value is required"),
        (&["80"], "unexpected argument '80' found"),
    ] {
        let given = Given {
            args,
            env: &[],
            config: None,
        };
        assert_refused(&given, expected);
    }
}
