//! A real Prometheus server (Debian's `prometheus` package, which `cargo
//! xtask setup` installs) that scrapes one target every second and
//! evaluates rule files every second, queried through its HTTP API.
use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::clients::http_get;
use crate::process::{free_port, poll, ChildGuard, TempDir};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes and rule evaluations, every second: what lands in sonde's
/// /metrics is in a query result within about two of them.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// The job name, as the PodMonitor of deploy/kubernetes names it.
pub const JOB: &str = "sonde";

/// `PROMETHEUS_BIN`, else Debian's.
fn prometheus_bin() -> PathBuf {
    std::env::var_os("PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

/// One series of an instant query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// One series of a range query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub values: Vec<(f64, f64)>,
}

pub struct PrometheusServer {
    process: ChildGuard,
    addr: SocketAddr,
    output_path: PathBuf,
    _dir: TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `target`'s /metrics as job [`JOB`] and
    /// evaluating `rule_files`, and waits until it is ready.
    pub fn scraping(target: SocketAddr, rule_files: &[PathBuf]) -> Result<PrometheusServer> {
        let dir = TempDir::new("prometheus")?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(target, rule_files))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let output_path = dir.path().join("output");
        let output = File::create(&output_path)?;
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .context("spawn prometheus (cargo xtask setup installs it)")?;
        let mut server = PrometheusServer {
            process: ChildGuard::new("prometheus", child),
            addr,
            output_path,
            _dir: dir,
        };
        let ready = poll(READY_TIMEOUT, Duration::from_millis(100), || {
            if server.process.exit_status().is_some() {
                return Some(false);
            }
            let status = http_get(addr, "/-/ready", HTTP_TIMEOUT).ok()?.status;
            (status == 200).then_some(true)
        });
        if ready != Some(true) {
            bail!(
                "prometheus did not get ready ({:?}); its output:\n{}",
                server.process.exit_status(),
                server.output()
            );
        }
        Ok(server)
    }

    /// What Prometheus logged so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output_path).unwrap_or_default()
    }

    /// An instant query evaluated now.
    pub fn query(&self, expr: &str) -> Result<Vec<Sample>> {
        self.instant(expr, None)
    }

    /// An instant query evaluated at `time` (Unix seconds).
    pub fn query_at(&self, expr: &str, time: f64) -> Result<Vec<Sample>> {
        self.instant(expr, Some(time))
    }

    fn instant(&self, expr: &str, time: Option<f64>) -> Result<Vec<Sample>> {
        let mut path = format!("/api/v1/query?query={}", percent_encode(expr));
        if let Some(time) = time {
            path.push_str(&format!("&time={time:.3}"));
        }
        let data = self.api(&path)?;
        ensure!(
            data["resultType"] == "vector",
            "{expr}: not a vector: {data}"
        );
        results(&data)?
            .iter()
            .map(|r| {
                Ok(Sample {
                    labels: labels(&r["metric"])?,
                    value: point(&r["value"])?.1,
                })
            })
            .collect()
    }

    /// A range query from `start` to `end` (Unix seconds), one point a `step`.
    pub fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: Duration,
    ) -> Result<Vec<Series>> {
        let path = format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={}",
            percent_encode(expr),
            step.as_secs_f64()
        );
        let data = self.api(&path)?;
        ensure!(
            data["resultType"] == "matrix",
            "{expr}: not a matrix: {data}"
        );
        results(&data)?
            .iter()
            .map(|r| {
                let values = r["values"]
                    .as_array()
                    .context("no values")?
                    .iter()
                    .map(point)
                    .collect::<Result<_>>()?;
                Ok(Series {
                    labels: labels(&r["metric"])?,
                    values,
                })
            })
            .collect()
    }

    /// The values of `label` on the series `selector` selects, as Grafana's
    /// `label_values(selector, label)` asks for them.
    pub fn label_values(&self, label: &str, selector: &str) -> Result<Vec<String>> {
        let path = format!(
            "/api/v1/label/{label}/values?match[]={}",
            percent_encode(selector)
        );
        self.api(&path)?
            .as_array()
            .context("label values are not an array")?
            .iter()
            .map(|v| Ok(v.as_str().context("label value")?.to_owned()))
            .collect()
    }

    /// Queries `expr` until `condition` holds on its answer, or panics after
    /// `timeout` describing `what` with the last answer.
    pub fn await_query(
        &self,
        what: &str,
        expr: &str,
        timeout: Duration,
        mut condition: impl FnMut(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let mut last = Vec::new();
        let met = poll(timeout, Duration::from_millis(250), || {
            last = self
                .query(expr)
                .unwrap_or_else(|e| panic!("{e:?}\nprometheus output:\n{}", self.output()));
            condition(&last).then_some(())
        });
        if met.is_none() {
            panic!("timed out waiting for {what}: `{expr}` answers {last:#?}");
        }
        last
    }

    /// GET `path` of the HTTP API; its `data` when the status is success.
    fn api(&self, path: &str) -> Result<Value> {
        let response = http_get(self.addr, path, HTTP_TIMEOUT)?;
        let body: Value = serde_json::from_slice(&response.body)
            .with_context(|| format!("GET {path}: {}", String::from_utf8_lossy(&response.body)))?;
        ensure!(
            response.status == 200 && body["status"] == "success",
            "GET {path}: {} {body}",
            response.status
        );
        Ok(body["data"].clone())
    }
}

fn config_text(target: SocketAddr, rule_files: &[PathBuf]) -> String {
    let interval = format!("{}s", INTERVAL.as_secs());
    let rules: String = rule_files
        .iter()
        .map(|f| format!("  - {}\n", quoted(f)))
        .collect();
    format!(
        "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
         rule_files:\n{rules}\
         scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{target}\"]\n"
    )
}

fn quoted(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).expect("a string serializes")
}

fn results(data: &Value) -> Result<&Vec<Value>> {
    data["result"].as_array().context("no result array")
}

fn labels(metric: &Value) -> Result<BTreeMap<String, String>> {
    metric
        .as_object()
        .context("metric is not an object")?
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_str().context("label value")?.to_owned())))
        .collect()
}

/// `[time, "value"]`; values are strings so NaN and ±Inf survive JSON.
fn point(pair: &Value) -> Result<(f64, f64)> {
    let time = pair[0].as_f64().context("point time")?;
    let value = pair[1].as_str().context("point value")?;
    let value = match value {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("point value {v:?}"))?,
    };
    Ok((time, value))
}

/// Query-string encoding: everything but unreserved characters as %XX.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_queries_and_reads_points() {
        assert_eq!(
            percent_encode(r#"rate(x{a=~"5.."}[1m]) / 2"#),
            "rate%28x%7Ba%3D~%225..%22%7D%5B1m%5D%29%20%2F%202"
        );
        let p = |v: &str| point(&serde_json::json!([1.5, v])).unwrap().1;
        assert_eq!(p("0.4875"), 0.4875);
        assert!(p("NaN").is_nan());
        assert_eq!(p("+Inf"), f64::INFINITY);
        assert!(point(&serde_json::json!([1.5, 2])).is_err());
    }
}
