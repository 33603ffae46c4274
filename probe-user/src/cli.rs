//! Command line of the daemon: the definition of every setting, its
//! default and the parser of its value. Every flag is also an environment
//! variable (`SONDE_*`) and a key of the config file, so the same binary is
//! configured the same way on a laptop and in a Kubernetes manifest;
//! `settings` resolves them.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use regex::Regex;

use crate::otlp;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "sonde",
    version,
    about = "Zero-instrumentation HTTP monitor: eBPF sees every HTTP/1.x request on the node; \
             sonde serves them as Prometheus RED metrics and, optionally, as OTLP spans."
)]
pub struct Cli {
    /// YAML file of settings, keyed by long flag name (`metrics-addr:
    /// "0.0.0.0:9464"`, `port: [8080, 9090]`). Flags and SONDE_* variables
    /// override it.
    #[arg(long, env = "SONDE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, env = "SONDE_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: SocketAddr,

    /// Only observe connections to or from this port (servers listening on
    /// it, clients calling it). Repeatable; default: every port.
    #[arg(long = "port", env = "SONDE_PORT", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only observe processes whose executable name (basename of
    /// /proc/PID/exe) matches this regular expression.
    #[arg(long, env = "SONDE_EXE", value_parser = parse_regex)]
    pub exe: Option<Regex>,

    /// Only observe this process and its children. Repeatable.
    #[arg(long = "pid", env = "SONDE_PID", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,

    /// Payload bytes copied from each socket read/write (request line and
    /// headers must fit for a request to be named).
    #[arg(long, env = "SONDE_CAPTURE_BYTES", default_value_t = probe_common::DEFAULT_CAPTURE,
          value_parser = clap::value_parser!(u32).range(64..=probe_common::MAX_CAPTURE as i64))]
    pub capture_bytes: u32,

    /// Log level or tracing filter (error, warn, info, debug, trace, or
    /// e.g. `sonde=debug`).
    #[arg(long, env = "SONDE_LOG_LEVEL", default_value = "info", value_parser = parse_log_filter)]
    pub log_level: String,

    /// How often the ring buffer is drained when the kernel has not woken
    /// the reader (milliseconds, at most 50).
    #[arg(long, env = "SONDE_DRAIN_INTERVAL_MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=50))]
    pub drain_interval_ms: u64,

    /// Ring buffer size in MiB (a power of two).
    #[arg(long, env = "SONDE_RINGBUF_MIB", default_value_t = 8, value_parser = parse_pow2_mib)]
    pub ringbuf_mib: u32,

    /// Connections tracked at once (kernel table and userspace state).
    #[arg(long, env = "SONDE_MAX_CONNECTIONS", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    pub max_connections: u32,

    /// Attach programs that do nothing instead of sonde's own: the floor
    /// `cargo xtask bench` compares sonde with. Not for production.
    #[arg(long, hide = true)]
    pub bench_floor: bool,

    /// Distinct routes kept per service; more are folded into one overflow
    /// series and counted.
    #[arg(long, env = "SONDE_MAX_ROUTES_PER_SERVICE", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_routes_per_service: u32,

    /// Seconds a connection may stay silent before its state is dropped.
    #[arg(long, env = "SONDE_IDLE_TIMEOUT_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,

    /// OTLP endpoint to send spans to, e.g. `http://otel-collector:4318`;
    /// traces are off without one. Unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    /// then OTEL_EXPORTER_OTLP_ENDPOINT. With http/protobuf, `/v1/traces` is
    /// appended unless the path already ends with it.
    #[arg(long, env = "SONDE_OTLP_ENDPOINT", value_parser = otlp::parse_endpoint)]
    pub otlp_endpoint: Option<http::Uri>,

    /// OTLP protocol. Unset: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, then
    /// OTEL_EXPORTER_OTLP_PROTOCOL, else grpc if the endpoint's port is 4317
    /// and http/protobuf otherwise.
    #[arg(long, env = "SONDE_OTLP_PROTOCOL", value_enum)]
    pub otlp_protocol: Option<otlp::Protocol>,

    /// Fraction of traces exported (0 to 1), decided on the trace id so a
    /// trace is kept or dropped whole. A request whose W3C traceparent says
    /// sampled is always exported; one that says not sampled never is.
    #[arg(long, env = "SONDE_TRACE_SAMPLE_RATIO", default_value_t = 1.0, value_parser = parse_ratio)]
    pub trace_sample_ratio: f64,

    /// Also push every metric of /metrics over OTLP, for users without
    /// Prometheus: same endpoint, protocol, headers and timeout as traces,
    /// except that OTEL_EXPORTER_OTLP_METRICS_* variables override the
    /// general ones. Needs an OTLP endpoint.
    #[arg(long, env = "SONDE_OTLP_METRICS")]
    pub otlp_metrics: bool,

    /// Seconds between OTLP metric exports. Unset:
    /// OTEL_METRIC_EXPORT_INTERVAL (milliseconds), else 15.
    #[arg(long, env = "SONDE_OTLP_METRICS_INTERVAL_SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub otlp_metrics_interval_secs: Option<u64>,

    /// Label series and spans with the Kubernetes namespace, pod, container
    /// and workload of each process, and name services after their
    /// workload; the API server is watched for this node's pods. Default:
    /// on in a pod (KUBERNETES_SERVICE_HOST set) that knows its node.
    #[arg(long, env = "SONDE_KUBERNETES", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub kubernetes: Option<bool>,

    /// API server to ask instead of the in-cluster one (https:// with the
    /// pod's service account; http:// without credentials, as for
    /// `kubectl proxy`).
    #[arg(long, env = "SONDE_KUBERNETES_API", value_parser = parse_http_url)]
    pub kubernetes_api: Option<http::Uri>,

    /// Name of the node sonde runs on, whose pods are watched: set it from
    /// the downward API (`spec.nodeName`).
    #[arg(long, env = "SONDE_NODE_NAME", value_parser = parse_node_name)]
    pub node_name: Option<String>,
}

impl Cli {
    pub fn drain_interval(&self) -> Duration {
        Duration::from_millis(self.drain_interval_ms)
    }
}

fn parse_regex(s: &str) -> Result<Regex, String> {
    Regex::new(s).map_err(|e| {
        // A syntax error is drawn over several lines, the pattern with a
        // caret under the fault; the last line says what the fault is.
        let text = e.to_string();
        let reason = text.lines().rev().find(|l| !l.trim().is_empty());
        let reason = reason.unwrap_or(&text).trim().trim_start_matches("error: ");
        format!("not a valid regular expression: {reason}")
    })
}

/// A filter as `tracing_subscriber::EnvFilter` reads it, checked here so a
/// bad one is reported like any other bad value.
fn parse_log_filter(s: &str) -> Result<String, String> {
    match tracing_subscriber::EnvFilter::try_new(s) {
        Ok(_) => Ok(s.to_owned()),
        Err(e) => Err(format!("not a level or tracing filter: {e}")),
    }
}

fn parse_http_url(s: &str) -> Result<http::Uri, String> {
    match s.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            Ok(uri)
        }
        _ => Err(format!("`{s}` is not an http:// or https:// URL")),
    }
}

/// A node's name is a DNS subdomain (RFC 1123): it goes into the watch's
/// field selector, so nothing else may pass.
fn parse_node_name(s: &str) -> Result<String, String> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if s.len() <= 253 && s.split('.').all(label_ok) {
        Ok(s.to_owned())
    } else {
        Err("not a DNS subdomain (lower-case letters, digits, '-' and '.')".to_owned())
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("not a ratio from 0 to 1".to_owned()),
    }
}

fn parse_pow2_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| "not a number of MiB".to_owned())?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err("not a power of two from 1 to 1024".to_owned());
    }
    Ok(n)
}

/// Parsing as the binary does, with `SONDE_*` variables set for the call.
#[cfg(test)]
pub(crate) mod test_env {
    use std::{io, sync::Mutex};

    use super::Cli;
    use crate::settings::{self, SettingsError};

    /// The environment is process-wide and tests run on several threads:
    /// every parse in the tests goes through here, one at a time. Only
    /// `SONDE_*` variables are set, which nothing but the parser reads.
    static ENV: Mutex<()> = Mutex::new(());

    pub(crate) fn parse_with_env(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Cli, SettingsError> {
        parse_with(args, env, None)
    }

    /// With `config` as the text of the config file, whatever its path
    /// (`None`: there is no such file).
    pub(crate) fn parse_with(
        args: &[&str],
        env: &[(&str, &str)],
        config: Option<&str>,
    ) -> Result<Cli, SettingsError> {
        let _one_at_a_time = ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (name, value) in env {
            assert!(name.starts_with("SONDE_"), "{name}: only SONDE_* variables");
            std::env::set_var(name, value);
        }
        let read = |_: &std::path::Path| {
            config
                .map(str::to_owned)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        };
        let parsed =
            settings::resolve_with(std::iter::once("sonde").chain(args.iter().copied()), &read);
        for (name, _) in env {
            std::env::remove_var(name);
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::test_env::parse_with_env;
    use super::*;
    use crate::settings::SettingsError;

    fn parse(args: &[&str]) -> Result<Cli, SettingsError> {
        parse_with_env(args, &[])
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.metrics_addr, "0.0.0.0:9464".parse().unwrap());
        assert!(c.ports.is_empty() && c.pids.is_empty() && c.exe.is_none());
        assert_eq!(c.capture_bytes, probe_common::DEFAULT_CAPTURE);
        assert_eq!(c.drain_interval(), Duration::from_millis(20));
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!(c.otlp_protocol, None);
        assert_eq!(c.trace_sample_ratio, 1.0);
        assert!(!c.otlp_metrics);
        assert_eq!(c.otlp_metrics_interval_secs, None);
        assert_eq!(c.kubernetes, None);
        assert_eq!(c.kubernetes_api, None);
    }

    #[test]
    fn kubernetes_flags_and_variables() {
        for (args, env, expected) in [
            (&["--kubernetes"][..], &[][..], Some(true)),
            (&["--kubernetes=false"], &[], Some(false)),
            (&[], &[("SONDE_KUBERNETES", "false")], Some(false)),
            (&[], &[("SONDE_KUBERNETES", "true")], Some(true)),
            (
                &["--kubernetes"],
                &[("SONDE_KUBERNETES", "false")],
                Some(true),
            ),
        ] {
            let c = parse_with_env(args, env).unwrap();
            assert_eq!(c.kubernetes, expected, "{args:?} {env:?}");
        }
        let c = parse_with_env(
            &["--node-name", "node-a"],
            &[("SONDE_KUBERNETES_API", "http://127.0.0.1:8001")],
        )
        .unwrap();
        assert_eq!(c.node_name.as_deref(), Some("node-a"));
        assert_eq!(c.kubernetes_api.unwrap(), "http://127.0.0.1:8001");
    }

    #[test]
    fn otlp_metrics_flags_and_variables() {
        for (args, env, expected) in [
            (&[][..], &[("SONDE_OTLP_METRICS", "true")][..], (true, None)),
            (&[], &[("SONDE_OTLP_METRICS", "false")], (false, None)),
            (
                &["--otlp-metrics", "--otlp-metrics-interval-secs", "5"],
                &[("SONDE_OTLP_METRICS_INTERVAL_SECS", "60")],
                (true, Some(5)),
            ),
            (
                &[],
                &[("SONDE_OTLP_METRICS_INTERVAL_SECS", "60")],
                (false, Some(60)),
            ),
        ] {
            let c = parse_with_env(args, env).unwrap();
            assert_eq!(
                (c.otlp_metrics, c.otlp_metrics_interval_secs),
                expected,
                "{args:?} {env:?}"
            );
        }
    }

    #[test]
    fn otlp_flags_beat_their_sonde_variables() {
        let env = [
            ("SONDE_OTLP_ENDPOINT", "http://from-env:4318"),
            ("SONDE_OTLP_PROTOCOL", "grpc"),
            ("SONDE_TRACE_SAMPLE_RATIO", "0.25"),
        ];
        let from_env = parse_with_env(&[], &env).unwrap();
        assert_eq!(from_env.otlp_endpoint.unwrap(), "http://from-env:4318");
        assert_eq!(from_env.otlp_protocol, Some(otlp::Protocol::Grpc));
        assert_eq!(from_env.trace_sample_ratio, 0.25);

        let flags = [
            "--otlp-endpoint",
            "http://from-flag:4317",
            "--otlp-protocol",
            "http/protobuf",
            "--trace-sample-ratio",
            "0.5",
        ];
        let from_flags = parse_with_env(&flags, &env).unwrap();
        assert_eq!(from_flags.otlp_endpoint.unwrap(), "http://from-flag:4317");
        assert_eq!(from_flags.otlp_protocol, Some(otlp::Protocol::HttpProtobuf));
        assert_eq!(from_flags.trace_sample_ratio, 0.5);

        // Set but empty is a mistake to point out, as for every flag.
        let empty = parse_with_env(&[], &[("SONDE_OTLP_ENDPOINT", "")]).unwrap_err();
        let empty = empty.to_string();
        assert!(
            empty.starts_with("SONDE_OTLP_ENDPOINT: ") && empty.contains("unset"),
            "{empty}"
        );
    }

    #[test]
    fn repeatable_and_comma_separated() {
        let c = parse(&[
            "--port",
            "80",
            "--port=8080,9090",
            "--pid",
            "1,2",
            "--exe",
            "^nginx$",
        ])
        .unwrap();
        assert_eq!(c.ports, vec![80, 8080, 9090]);
        assert_eq!(c.pids, vec![1, 2]);
        assert!(c.exe.unwrap().is_match("nginx"));
    }

    #[test]
    fn rejects_bad_values_with_the_flag_named() {
        for (args, flag) in [
            (&["--capture-bytes", "abc"][..], "--capture-bytes"),
            (&["--capture-bytes", "100000"], "--capture-bytes"),
            (&["--metrics-addr", "nonsense"], "--metrics-addr"),
            (&["--port", "0"], "--port"),
            (&["--exe", "(unclosed"], "--exe"),
            (&["--ringbuf-mib", "3"], "--ringbuf-mib"),
            (&["--drain-interval-ms", "51"], "--drain-interval-ms"),
            (&["--otlp-endpoint", "collector:4317"], "--otlp-endpoint"),
            (
                &["--otlp-endpoint", "https://collector:4317"],
                "--otlp-endpoint",
            ),
            (&["--otlp-protocol", "http/json"], "--otlp-protocol"),
            (&["--trace-sample-ratio", "1.5"], "--trace-sample-ratio"),
            (&["--trace-sample-ratio=-0.1"], "--trace-sample-ratio"),
            (&["--trace-sample-ratio", "NaN"], "--trace-sample-ratio"),
            (&["--kubernetes=maybe"], "--kubernetes"),
            (&["--kubernetes-api", "kubernetes:443"], "--kubernetes-api"),
            (
                &["--otlp-metrics-interval-secs", "0"],
                "--otlp-metrics-interval-secs",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
