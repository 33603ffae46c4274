//! Where each setting of [`Cli`] comes from: its flag, else its `SONDE_*`
//! environment variable, else the config file (`--config`, `SONDE_CONFIG`),
//! else its default.
//!
//! The flags are the only definition of a setting: its config key is the
//! flag's long name, and a value goes through the flag's own parser
//! whichever source it comes from, so the file cannot drift from the command
//! line. Hidden flags are internal and have no key. Values from the file
//! become the flags' defaults, which is how clap ranks them under the flag
//! and the variable. A bad value from any source is a [`SettingsError`]
//! naming the field as the user wrote it: `--port`, `SONDE_PORT`, or
//! `sonde.yaml:3:7: port`.
use std::{
    ffi::OsString,
    fmt, io,
    path::{Path, PathBuf},
};

use clap::{
    error::{ContextKind, ContextValue, ErrorKind},
    parser::ValueSource,
    Arg, ArgAction, ArgMatches, Command, CommandFactory as _, FromArgMatches as _,
};

use crate::{
    cli::Cli,
    config_file::{self, Entry, Position, Value},
};

/// The id of `--config`, which names the file and is no setting in it.
const CONFIG: &str = "config";

/// A field as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    /// `--port`
    Flag(String),
    /// `SONDE_PORT`
    Variable(String),
    /// `sonde.yaml:3:7: port`
    Key { place: Place, key: String },
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Flag(long) => write!(f, "--{long}"),
            Field::Variable(name) => f.write_str(name),
            Field::Key { place, key } => write!(f, "{place}: {key}"),
        }
    }
}

/// A place in the config file: `sonde.yaml:3:7`, with the path as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub file: PathBuf,
    pub at: Option<Position>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        match self.at {
            Some(at) => write!(f, ":{at}"),
            None => Ok(()),
        }
    }
}

/// Why the settings could not be resolved. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// From parsing the command line; `--help` and `--version` end here
    /// too, and are no failure ([`clap::Error::use_stderr`] is false).
    #[error("{}", command_line_message(.0))]
    CommandLine(clap::Error),
    #[error("{field}: {reason}")]
    Invalid { field: Field, reason: String },
    #[error(
        "{field}: unknown key{}",
        suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
    )]
    UnknownKey {
        field: Field,
        suggestion: Option<String>,
    },
    #[error("{named_by}: cannot read {}: {source}", path.display())]
    Unreadable {
        /// `--config` or `SONDE_CONFIG`.
        named_by: Field,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{place}: {message}")]
    Malformed { place: Place, message: String },
}

/// Resolves the settings from `args` (the program name first), the
/// `SONDE_*` environment and the config file they name.
pub fn resolve<I, T>(args: I) -> Result<Cli, SettingsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    resolve_with(args, &|path| std::fs::read_to_string(path))
}

/// [`resolve`], with config files read by `read`.
pub(crate) fn resolve_with<I, T>(
    args: I,
    read: &dyn Fn(&Path) -> io::Result<String>,
) -> Result<Cli, SettingsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut command = Cli::command();
    check_environment(&command)?;
    let matches = command
        .clone()
        .try_get_matches_from(&args)
        .map_err(SettingsError::CommandLine)?;
    if let Some((path, named_by)) = config_path(&command, &matches) {
        let text = read(&path).map_err(|source| SettingsError::Unreadable {
            named_by,
            path: path.clone(),
            source,
        })?;
        let entries = config_file::parse(&text).map_err(|e| SettingsError::Malformed {
            place: Place {
                file: path.clone(),
                at: e.at,
            },
            message: e.message,
        })?;
        command = with_config(command, &path, entries)?;
    }
    let matches = command
        .try_get_matches_from(&args)
        .map_err(SettingsError::CommandLine)?;
    Cli::from_arg_matches(&matches).map_err(SettingsError::CommandLine)
}

/// The flags a config file may set, keyed by their long names.
fn settings(command: &Command) -> impl Iterator<Item = (&str, &Arg)> {
    command
        .get_arguments()
        .filter(|arg| {
            arg.get_id() != CONFIG
                && !arg.is_hide_set()
                && !matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
        })
        .filter_map(|arg| Some((arg.get_long()?, arg)))
}

/// Every `SONDE_*` variable that is set must hold a valid value, even when
/// its flag overrides it: a broken deployment should not wait for the day
/// the flag is removed to show.
fn check_environment(command: &Command) -> Result<(), SettingsError> {
    for arg in command.get_arguments() {
        let Some(name) = arg.get_env() else { continue };
        let Some(value) = std::env::var_os(name) else {
            continue;
        };
        check(arg, vec![value]).map_err(|e| SettingsError::Invalid {
            field: Field::Variable(name.to_string_lossy().into_owned()),
            reason: value_error(&e),
        })?;
    }
    Ok(())
}

/// Runs `values` through `arg`'s own parser (and value delimiter), as clap
/// does with a default value.
fn check(arg: &Arg, values: Vec<OsString>) -> Result<(), clap::Error> {
    Command::new("sonde")
        .no_binary_name(true)
        .arg(arg.clone().env(None::<&str>).default_values(values))
        .try_get_matches_from(Vec::<OsString>::new())
        .map(drop)
}

/// The config file and the field that named it, if any.
fn config_path(command: &Command, matches: &ArgMatches) -> Option<(PathBuf, Field)> {
    let path = matches.get_one::<PathBuf>(CONFIG)?.clone();
    let arg = command.get_arguments().find(|a| a.get_id() == CONFIG)?;
    let named_by = match (matches.value_source(CONFIG), arg.get_env()) {
        (Some(ValueSource::EnvVariable), Some(name)) => {
            Field::Variable(name.to_string_lossy().into_owned())
        }
        _ => Field::Flag(arg.get_long().unwrap_or(CONFIG).to_owned()),
    };
    Some((path, named_by))
}

/// `command` with the values of the file's entries as its defaults, after
/// checking each of them with the parser of its flag.
fn with_config(
    mut command: Command,
    file: &Path,
    entries: Vec<Entry>,
) -> Result<Command, SettingsError> {
    for entry in entries {
        let field = |at| Field::Key {
            place: Place {
                file: file.to_owned(),
                at,
            },
            key: entry.key.clone(),
        };
        let Some(arg) = settings(&command)
            .find(|(key, _)| *key == entry.key)
            .map(|(_, arg)| arg)
        else {
            return Err(SettingsError::UnknownKey {
                field: field(entry.key_at),
                suggestion: closest_key(&command, &entry.key),
            });
        };
        let values = match values_of(arg, &entry.value, entry.value_at) {
            Ok(Some(values)) => values,
            // Unset here: the default applies.
            Ok(None) => continue,
            Err((at, reason)) => {
                return Err(SettingsError::Invalid {
                    field: field(at),
                    reason,
                })
            }
        };
        // One at a time, so an error points at the element of a list.
        for (value, at) in &values {
            check(arg, vec![value.into()]).map_err(|e| SettingsError::Invalid {
                field: field(*at),
                reason: value_error(&e),
            })?;
        }
        let id = arg.get_id().clone();
        command = command.mut_arg(id, |arg| {
            arg.default_values(values.into_iter().map(|(value, _)| value))
        });
    }
    Ok(command)
}

type Located = (String, Option<Position>);

/// The texts a flag would be given for `value`; `None` for a null value.
fn values_of(
    arg: &Arg,
    value: &Value,
    at: Option<Position>,
) -> Result<Option<Vec<Located>>, (Option<Position>, String)> {
    let repeatable = matches!(arg.get_action(), ArgAction::Append);
    match value {
        Value::Null => Ok(None),
        Value::Scalar(text) => Ok(Some(vec![(text.clone(), at)])),
        Value::List(items) if repeatable => items
            .iter()
            .map(|item| match &item.value {
                Value::Scalar(text) => Ok((text.clone(), item.at)),
                other => Err((item.at, format!("expected a value, found {}", kind(other)))),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Value::List(_) => Err((at, "expected one value, found a list".to_owned())),
        Value::Mapping => Err((
            at,
            format!(
                "expected {}, found a mapping",
                if repeatable {
                    "a value or a list of values"
                } else {
                    "a value"
                }
            ),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Scalar(_) => "a value",
        Value::List(_) => "a list",
        Value::Mapping => "a mapping",
    }
}

/// The known key `key` was most likely meant to be, as clap suggests flags.
fn closest_key(command: &Command, key: &str) -> Option<String> {
    // `metrics_addr` and `METRICS-ADDR` are near misses too.
    let key = key.to_ascii_lowercase().replace('_', "-");
    settings(command)
        .map(|(known, _)| (strsim::jaro(&key, known), known))
        .filter(|(similarity, _)| *similarity > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, known)| known.to_owned())
}

/// What is wrong with a value, from the error of its flag's parser, without
/// naming the flag (the caller names the field).
fn value_error(e: &clap::Error) -> String {
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.as_str(),
        _ => return first_line(e),
    };
    let reason = match e.kind() {
        ErrorKind::ValueValidation => std::error::Error::source(e).map(ToString::to_string),
        ErrorKind::InvalidValue => match e.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) if !valid.is_empty() => {
                Some(format!("expected one of {}", valid.join(", ")))
            }
            // What clap reports for `--port` with nothing after it.
            _ if value.is_empty() => return "a value is required".to_owned(),
            _ => None,
        },
        _ => return first_line(e),
    };
    let text = match reason {
        Some(reason) => format!("invalid value '{value}': {reason}"),
        None => format!("invalid value '{value}'"),
    };
    one_line(&text)
}

/// A command-line error as `--flag: what is wrong`, like the others.
fn command_line_message(e: &clap::Error) -> String {
    if !e.use_stderr() {
        // --help and --version are printed as they are.
        return e.to_string();
    }
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.split(' ').next().unwrap_or(arg),
        _ => "",
    };
    let text = match e.kind() {
        ErrorKind::ValueValidation | ErrorKind::InvalidValue if flag.starts_with("--") => {
            format!("{flag}: {}", value_error(e))
        }
        _ => first_line(e),
    };
    match e.get(ContextKind::SuggestedArg) {
        Some(ContextValue::String(suggested)) => format!("{text} (did you mean '{suggested}'?)"),
        _ => text,
    }
}

/// clap's message without its `error: ` prefix, tips and usage.
fn first_line(e: &clap::Error) -> String {
    let rendered = e.to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    first.trim_start_matches("error: ").to_owned()
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_env::parse_with;

    const EXAMPLE: &str = include_str!("../../deploy/sonde.example.yaml");
    const FILE: [&str; 2] = ["--config", "sonde.yaml"];

    fn config_keys() -> Vec<String> {
        settings(&Cli::command())
            .map(|(key, _)| key.to_owned())
            .collect()
    }

    fn error(args: &[&str], env: &[(&str, &str)], config: Option<&str>) -> String {
        match parse_with(args, env, config) {
            Ok(cli) => panic!("{args:?} {env:?} {config:?}: accepted as {cli:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// The settings the precedence test follows, one of each kind.
    fn followed(cli: &Cli) -> (u32, Vec<u16>, bool, Option<String>, String) {
        (
            cli.capture_bytes,
            cli.ports.clone(),
            cli.otlp_metrics,
            cli.otlp_endpoint.as_ref().map(ToString::to_string),
            cli.log_level.clone(),
        )
    }

    #[test]
    fn flag_then_variable_then_file_then_default() {
        let file = "capture-bytes: 2048\nport: [80, 90]\notlp-metrics: true\n\
                    otlp-endpoint: http://file:4318\nlog-level: debug\n";
        let env = [
            ("SONDE_CAPTURE_BYTES", "4096"),
            ("SONDE_PORT", "7,8"),
            ("SONDE_OTLP_METRICS", "false"),
            ("SONDE_LOG_LEVEL", "warn"),
        ];
        let flags = [
            "--capture-bytes",
            "512",
            "--port",
            "1",
            "--otlp-metrics",
            "--log-level",
            "error",
        ];
        fn with_file<'a>(args: &[&'a str]) -> Vec<&'a str> {
            [&FILE[..], args].concat()
        }
        let endpoint = Some("http://file:4318/".to_owned());
        for (args, env, config, expected) in [
            (vec![], &[][..], None, (1024, vec![], false, None, "info")),
            (
                with_file(&[]),
                &[],
                Some(file),
                (2048, vec![80, 90], true, endpoint.clone(), "debug"),
            ),
            // The file named by the variable instead of the flag.
            (
                vec![],
                &[("SONDE_CONFIG", "sonde.yaml")],
                Some(file),
                (2048, vec![80, 90], true, endpoint.clone(), "debug"),
            ),
            (
                with_file(&[]),
                &env,
                Some(file),
                (4096, vec![7, 8], false, endpoint.clone(), "warn"),
            ),
            (
                with_file(&flags),
                &env,
                Some(file),
                (512, vec![1], true, endpoint.clone(), "error"),
            ),
            (
                with_file(&flags),
                &[],
                Some(file),
                (512, vec![1], true, endpoint.clone(), "error"),
            ),
            (
                flags.to_vec(),
                &env,
                None,
                (512, vec![1], true, None, "error"),
            ),
            (vec![], &env, None, (4096, vec![7, 8], false, None, "warn")),
            // Null is unset: the default stands.
            (
                with_file(&[]),
                &[],
                Some("capture-bytes: ~\nport:\notlp-metrics: null\n"),
                (1024, vec![], false, None, "info"),
            ),
            (
                with_file(&[]),
                &[],
                Some("port: []\n"),
                (1024, vec![], false, None, "info"),
            ),
            // As the flag's value delimiter splits it.
            (
                with_file(&[]),
                &[],
                Some("port: '80,90'\n"),
                (1024, vec![80, 90], false, None, "info"),
            ),
        ] {
            let cli = parse_with(&args, env, config).unwrap();
            let (capture, ports, otlp_metrics, endpoint, log) = expected;
            let expected = (capture, ports, otlp_metrics, endpoint, log.to_owned());
            assert_eq!(followed(&cli), expected, "{args:?} {env:?} {config:?}");
        }
    }

    /// Each key sets what its flag sets.
    #[test]
    fn every_key_is_its_flag() {
        let rows: &[(&str, &[&str])] = &[
            (
                "metrics-addr: '127.0.0.1:9000'",
                &["--metrics-addr", "127.0.0.1:9000"],
            ),
            ("port: [80, 443]", &["--port", "80", "--port", "443"]),
            ("exe: '^nginx$'", &["--exe", "^nginx$"]),
            ("pid: [1, 2]", &["--pid", "1", "--pid", "2"]),
            ("capture-bytes: 4096", &["--capture-bytes", "4096"]),
            ("log-level: sonde=debug", &["--log-level", "sonde=debug"]),
            ("drain-interval-ms: 5", &["--drain-interval-ms", "5"]),
            ("ringbuf-mib: 64", &["--ringbuf-mib", "64"]),
            ("max-connections: 2048", &["--max-connections", "2048"]),
            (
                "max-routes-per-service: 7",
                &["--max-routes-per-service", "7"],
            ),
            ("idle-timeout-secs: 30", &["--idle-timeout-secs", "30"]),
            (
                "otlp-endpoint: http://collector:4317",
                &["--otlp-endpoint", "http://collector:4317"],
            ),
            (
                "otlp-protocol: http/protobuf",
                &["--otlp-protocol", "http/protobuf"],
            ),
            (
                "trace-sample-ratio: 0.25",
                &["--trace-sample-ratio", "0.25"],
            ),
            ("otlp-metrics: true", &["--otlp-metrics"]),
            (
                "otlp-metrics-interval-secs: 60",
                &["--otlp-metrics-interval-secs", "60"],
            ),
            ("kubernetes: false", &["--kubernetes=false"]),
            (
                "kubernetes-api: http://127.0.0.1:8001",
                &["--kubernetes-api", "http://127.0.0.1:8001"],
            ),
            (
                "node-name: node-a.example",
                &["--node-name", "node-a.example"],
            ),
        ];
        let mut untested = config_keys();
        untested.retain(|key| {
            !rows
                .iter()
                .any(|(line, _)| line.starts_with(&format!("{key}:")))
        });
        assert_eq!(untested, Vec::<String>::new(), "keys without a row");

        let mut cases: Vec<(String, Vec<&str>)> = rows
            .iter()
            .map(|(line, flags)| (format!("{line}\n"), flags.to_vec()))
            .collect();
        cases.push(("port: 8080\n".to_owned(), vec!["--port", "8080"]));
        cases.push(("otlp-metrics: false\n".to_owned(), vec![]));
        // All of them in one file.
        cases.push((
            rows.iter().map(|(line, _)| format!("{line}\n")).collect(),
            rows.iter()
                .flat_map(|(_, flags)| flags.iter().copied())
                .collect(),
        ));
        for (file, flags) in cases {
            let from_file = parse_with(&FILE, &[], Some(&file)).unwrap();
            let from_flags = parse_with(&flags, &[], None).unwrap();
            let from_file = Cli {
                config: None,
                ..from_file
            };
            assert_eq!(
                format!("{from_file:?}"),
                format!("{from_flags:?}"),
                "{file}"
            );
        }
    }

    /// A bad value for every setting, and what its parser says of it.
    const BAD_VALUES: &[(&str, &str, &str)] = &[
        ("metrics-addr", "nonsense", "invalid socket address syntax"),
        ("port", "0", "0 is not in 1..=65535"),
        ("exe", "(unclosed", "not a valid regular expression: unclosed group"),
        ("pid", "-1", "-1 is not in 1..=4294967295"),
        ("capture-bytes", "63", "63 is not in 64..=8192"),
        ("log-level", "sonde=loud", "not a level or tracing filter: error parsing level filter: expected one of \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\", or a number 0-5"),
        ("drain-interval-ms", "51", "51 is not in 1..=50"),
        ("ringbuf-mib", "3", "not a power of two from 1 to 1024"),
        ("max-connections", "1023", "1023 is not in 1024..=4194304"),
        ("max-routes-per-service", "0", "0 is not in 1..=100000"),
        ("idle-timeout-secs", "0", "0 is not in 1..18446744073709551615"),
        ("otlp-endpoint", "collector:4317", "`collector:4317` is not an http:// URL with a host"),
        ("otlp-protocol", "http/json", "expected one of grpc, http/protobuf"),
        ("trace-sample-ratio", "1.5", "not a ratio from 0 to 1"),
        ("otlp-metrics", "yes", "expected one of true, false"),
        ("otlp-metrics-interval-secs", "0", "0 is not in 1..=3600"),
        ("kubernetes", "maybe", "value was not a boolean"),
        ("kubernetes-api", "kubernetes:443", "`kubernetes:443` is not an http:// or https:// URL"),
        ("node-name", "Node_A", "not a DNS subdomain (lower-case letters, digits, '-' and '.')"),
    ];

    #[test]
    fn a_bad_value_is_reported_with_its_field_as_written() {
        let mut untested = config_keys();
        untested.retain(|key| !BAD_VALUES.iter().any(|(k, _, _)| k == key));
        assert_eq!(untested, Vec::<String>::new(), "keys without a bad value");
        for (key, value, reason) in BAD_VALUES {
            let variable = format!("SONDE_{}", key.to_uppercase().replace('-', "_"));
            let what = format!("invalid value '{value}': {reason}");
            // A flag without a value (--otlp-metrics) cannot be given a bad one.
            if *key != "otlp-metrics" {
                let flag = format!("--{key}={value}");
                assert_eq!(error(&[&flag], &[], None), format!("--{key}: {what}"));
            }
            assert_eq!(
                error(&[], &[(&variable, value)], None),
                format!("{variable}: {what}")
            );
            // Even when the flag overrides it.
            assert_eq!(
                error(&[&format!("--{key}")], &[(&variable, value)], None),
                format!("{variable}: {what}")
            );
            let column = key.len() + 3;
            assert_eq!(
                error(&FILE, &[], Some(&format!("{key}: '{value}'\n"))),
                format!("sonde.yaml:1:{column}: {key}: {what}")
            );
        }
    }

    #[test]
    fn what_a_file_may_not_hold() {
        for (file, expected) in [
            // Typed YAML values go through the same parsers as text.
            ("capture-bytes: true\n", "sonde.yaml:1:16: capture-bytes: invalid value 'true': invalid digit found in string"),
            ("capture-bytes: 4096.0\n", "sonde.yaml:1:16: capture-bytes: invalid value '4096.0': invalid digit found in string"),
            ("otlp-metrics: 1\n", "sonde.yaml:1:15: otlp-metrics: invalid value '1': expected one of true, false"),
            ("trace-sample-ratio: .inf\n", "sonde.yaml:1:21: trace-sample-ratio: invalid value '.inf': not a ratio from 0 to 1"),
            // The element of a list at fault.
            ("port: [80, 0]\n", "sonde.yaml:1:12: port: invalid value '0': 0 is not in 1..=65535"),
            ("port:\n  - 80\n  - 65536\n", "sonde.yaml:3:5: port: invalid value '65536': 65536 is not in 1..=65535"),
            ("port: [80, [90]]\n", "sonde.yaml:1:12: port: expected a value, found a list"),
            ("port: [80, ~]\n", "sonde.yaml:1:12: port: expected a value, found nothing"),
            ("port: {http: 80}\n", "sonde.yaml:1:7: port: expected a value or a list of values, found a mapping"),
            ("metrics-addr: ['127.0.0.1:1']\n", "sonde.yaml:1:15: metrics-addr: expected one value, found a list"),
            ("log-level: {sonde: debug}\n", "sonde.yaml:1:12: log-level: expected a value, found a mapping"),
            // Keys are the long flag names of the settings, nothing else.
            ("log-level: info\nmetrics-adr: x\n", "sonde.yaml:2:1: metrics-adr: unknown key (did you mean `metrics-addr`?)"),
            ("metrics_addr: x\n", "sonde.yaml:1:1: metrics_addr: unknown key (did you mean `metrics-addr`?)"),
            ("ports: [80]\n", "sonde.yaml:1:1: ports: unknown key (did you mean `port`?)"),
            ("verbose: true\n", "sonde.yaml:1:1: verbose: unknown key"),
            ("bench-floor: true\n", "sonde.yaml:1:1: bench-floor: unknown key"),
            ("config: other.yaml\n", "sonde.yaml:1:1: config: unknown key"),
            ("help: true\n", "sonde.yaml:1:1: help: unknown key"),
            // Not YAML, or not a mapping.
            ("port: [80\n", "sonde.yaml:1:7: unclosed bracket '['"),
            ("port: 80\nport: 90\n", "sonde.yaml:2:1: `port` is set twice, first at 1:1"),
            ("- port\n", "sonde.yaml:1:1: expected mapping start"),
        ] {
            assert_eq!(error(&FILE, &[], Some(file)), expected, "{file:?}");
        }
    }

    #[test]
    fn the_file_is_named_by_the_flag_before_the_variable() {
        let unreadable = |args: &[&str], env: &[(&str, &str)]| error(args, env, None);
        assert_eq!(
            unreadable(&["--config", "a.yaml"], &[]),
            "--config: cannot read a.yaml: entity not found"
        );
        assert_eq!(
            unreadable(&[], &[("SONDE_CONFIG", "b.yaml")]),
            "SONDE_CONFIG: cannot read b.yaml: entity not found"
        );
        assert_eq!(
            unreadable(&["--config", "a.yaml"], &[("SONDE_CONFIG", "b.yaml")]),
            "--config: cannot read a.yaml: entity not found"
        );
        assert_eq!(
            unreadable(&[], &[("SONDE_CONFIG", "")]),
            "SONDE_CONFIG: a value is required"
        );
    }

    #[test]
    fn command_line_mistakes_are_one_line() {
        for (args, expected) in [
            (
                &["--prot", "80"][..],
                "unexpected argument '--prot' found (did you mean '--port'?)",
            ),
            (&["--port"], "--port: a value is required"),
            (
                &["--otlp-metrics=yes"],
                "unexpected value 'yes' for '--otlp-metrics' found; no more were expected",
            ),
            (
                &["--bench-floor=1"],
                "unexpected value '1' for '--bench-floor' found; no more were expected",
            ),
            (&["stray"], "unexpected argument 'stray' found"),
        ] {
            assert_eq!(error(args, &[], None), expected, "{args:?}");
        }
    }

    /// deploy/sonde.example.yaml lists every key, each with its default.
    #[test]
    fn the_example_sets_every_key_to_its_default() {
        let mut listed: Vec<String> = config_file::parse(EXAMPLE)
            .unwrap()
            .into_iter()
            .map(|entry| entry.key)
            .collect();
        listed.sort();
        let mut keys = config_keys();
        keys.sort();
        assert_eq!(listed, keys);

        let from_example = parse_with(&FILE, &[], Some(EXAMPLE)).unwrap();
        let defaults = parse_with(&[], &[], None).unwrap();
        let from_example = Cli {
            config: None,
            ..from_example
        };
        assert_eq!(format!("{from_example:?}"), format!("{defaults:?}"));
    }
}
