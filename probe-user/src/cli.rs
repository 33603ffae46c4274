//! Command line of the daemon. Every flag is also an environment variable
//! (`SONDE_*`), so the same binary is configured the same way on a laptop and
//! in a Kubernetes manifest.
use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use regex::Regex;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "sonde",
    version,
    about = "Zero-instrumentation HTTP monitor: eBPF sees every HTTP/1.x request on the node; \
             sonde serves them as Prometheus RED metrics."
)]
pub struct Cli {
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
    #[arg(long, env = "SONDE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// How often the ring buffer is drained when the kernel has not woken
    /// the reader (milliseconds, at most 50).
    #[arg(long, env = "SONDE_DRAIN_INTERVAL_MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=50))]
    pub drain_interval_ms: u64,

    /// Ring buffer size in MiB (a power of two).
    #[arg(long, env = "SONDE_RINGBUF_MIB", default_value_t = 32, value_parser = parse_pow2_mib)]
    pub ringbuf_mib: u32,

    /// Connections tracked at once (kernel table and userspace state).
    #[arg(long, env = "SONDE_MAX_CONNECTIONS", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    pub max_connections: u32,

    /// Distinct routes kept per service; more are folded into one overflow
    /// series and counted.
    #[arg(long, env = "SONDE_MAX_ROUTES_PER_SERVICE", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_routes_per_service: u32,

    /// Seconds a connection may stay silent before its state is dropped.
    #[arg(long, env = "SONDE_IDLE_TIMEOUT_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
}

impl Cli {
    pub fn drain_interval(&self) -> Duration {
        Duration::from_millis(self.drain_interval_ms)
    }
}

fn parse_regex(s: &str) -> Result<Regex, String> {
    Regex::new(s).map_err(|e| format!("not a valid regular expression: {e}"))
}

fn parse_pow2_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of MiB"))?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err(format!("{n} MiB: must be a power of two from 1 to 1024"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sonde").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.metrics_addr, "0.0.0.0:9464".parse().unwrap());
        assert!(c.ports.is_empty() && c.pids.is_empty() && c.exe.is_none());
        assert_eq!(c.capture_bytes, probe_common::DEFAULT_CAPTURE);
        assert_eq!(c.drain_interval(), Duration::from_millis(20));
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
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
