//! The sonde daemon under test: the real binary, run as root, loading the
//! real eBPF programs. The guard waits for `/readyz`, scrapes `/metrics`,
//! and checks that SIGTERM ends it with exit code 0.
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::clients::{http_get, Response};
use crate::process::{free_port, is_root, poll, ChildGuard, TempDir};
use crate::prom::Scrape;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Events reach /metrics within ~200 ms; this leaves room for a loaded machine.
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a value must stay put after it was reached, to catch overshoot.
pub const SETTLE: Duration = Duration::from_millis(400);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Metric name prefixes shown in failure messages.
const SHOWN_METRICS: &[&str] = &["http_", "sonde_"];

/// `SONDE_BIN`, else the workspace's release build.
pub fn sonde_bin() -> PathBuf {
    std::env::var_os("SONDE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/sonde")
        })
}

/// Where sonde's stdout and stderr go.
enum Output {
    /// The file [`Sonde::output`] reads.
    File,
    /// A pipe whose reader is gone.
    ClosedPipe,
}

/// Held by each running sonde, so tests of one binary run one at a time
/// even without `--test-threads=1`: concurrent tests would skew each other's
/// timings and share the kernel's tracepoints.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Sonde {
    process: ChildGuard,
    metrics: SocketAddr,
    output_path: PathBuf,
    _dir: TempDir,
    // Declared last: released after the process above has ended.
    _turn: MutexGuard<'static, ()>,
}

impl Sonde {
    /// Starts sonde observing only connections to or from `ports`.
    pub fn watching_ports(ports: &[u16]) -> Sonde {
        let args: Vec<String> = ports
            .iter()
            .flat_map(|port| ["--port".to_string(), port.to_string()])
            .collect();
        Sonde::start(&args).unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// Starts sonde with `args` plus `--metrics-addr` on a free port and
    /// waits until `/readyz` says every program is attached.
    pub fn start(args: &[String]) -> Result<Sonde> {
        Sonde::start_bin(&sonde_bin(), args)
    }

    /// [`start`](Self::start) with the daemon binary at `bin`, for a test
    /// that needs sonde's executable under a name of its own.
    pub fn start_bin(bin: &Path, args: &[String]) -> Result<Sonde> {
        Sonde::launch(bin, args, &[])
    }

    /// [`start`](Self::start) with `env` added to sonde's environment, for
    /// settings only variables carry (the `OTEL_EXPORTER_OTLP_*` ones).
    pub fn start_with_env(args: &[String], env: &[(&str, &str)]) -> Result<Sonde> {
        Sonde::launch(&sonde_bin(), args, env)
    }

    /// [`start`](Self::start) with stdout and stderr a pipe nobody reads
    /// any more (a log collector that died): every write fails.
    pub fn start_with_closed_output(args: &[String]) -> Result<Sonde> {
        Sonde::launch_with(&sonde_bin(), args, &[], Output::ClosedPipe)
    }

    fn launch(bin: &Path, args: &[String], env: &[(&str, &str)]) -> Result<Sonde> {
        Sonde::launch_with(bin, args, env, Output::File)
    }

    fn launch_with(
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        output_to: Output,
    ) -> Result<Sonde> {
        if !is_root() {
            bail!("sonde loads eBPF programs: run the end-to-end tests as root");
        }
        // A test that panicked while holding the lock has already stopped its
        // sonde (the guard's drop), so the lock is fine to take over.
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = TempDir::new("sonde")?;
        let output_path = dir.path().join("output");
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        // One file for both streams, so lines keep their order.
        let output = File::create(&output_path)?;
        let (stdout, stderr) = match output_to {
            Output::File => (Stdio::from(output.try_clone()?), Stdio::from(output)),
            Output::ClosedPipe => {
                // The read end is dropped here: writes get EPIPE.
                let (_reader, writer) = std::io::pipe()?;
                (Stdio::from(writer.try_clone()?), Stdio::from(writer))
            }
        };
        let child = Command::new(bin)
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {} (set SONDE_BIN?)", bin.display()))?;
        let mut sonde = Sonde {
            process: ChildGuard::new("sonde", child),
            metrics,
            output_path,
            _dir: dir,
            _turn: turn,
        };
        let ready = poll(READY_TIMEOUT, Duration::from_millis(100), || {
            if sonde.process.exit_status().is_some() {
                return Some(false);
            }
            let status = http_get(metrics, "/readyz", HTTP_TIMEOUT).ok()?.status;
            (status == 200).then_some(true)
        });
        match ready {
            Some(true) => Ok(sonde),
            Some(false) => bail!(
                "sonde exited during startup ({:?}); its output:\n{}",
                sonde.process.exit_status(),
                sonde.output()
            ),
            None => bail!(
                "sonde's /readyz was not 200 within {READY_TIMEOUT:?}; its output:\n{}",
                sonde.output()
            ),
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Where sonde serves /metrics, /healthz and /readyz.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// What sonde wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output_path).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.exit_status().is_none()
    }

    pub fn get(&self, path: &str) -> Result<Response> {
        http_get(self.metrics, path, HTTP_TIMEOUT)
    }

    pub fn scrape(&self) -> Scrape {
        let response = self
            .get("/metrics")
            .unwrap_or_else(|e| panic!("scrape sonde: {e:?}\nsonde output:\n{}", self.output()));
        assert_eq!(response.status, 200, "GET /metrics");
        let text = String::from_utf8(response.body).expect("/metrics is UTF-8");
        Scrape::parse(&text).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"))
    }

    /// Scrapes until `condition` holds (or panics after [`METRICS_TIMEOUT`]
    /// describing `what` with the last scrape).
    pub fn await_scrape(&self, what: &str, mut condition: impl FnMut(&Scrape) -> bool) -> Scrape {
        let mut last = None;
        let met = poll(METRICS_TIMEOUT, Duration::from_millis(50), || {
            let scrape = self.scrape();
            let holds = condition(&scrape);
            last = Some(scrape);
            holds.then_some(())
        });
        let last = last.expect("scraped at least once");
        if met.is_none() {
            panic!(
                "{}",
                self.failure(&format!("timed out waiting for {what}"), &last)
            );
        }
        last
    }

    /// Waits until the one series of `name` with labels `subset` equals
    /// `expected`, then checks that it still does after [`SETTLE`], so a
    /// late extra count fails the test too. Returns the last scrape.
    pub fn await_value(&self, name: &str, subset: &[(&str, &str)], expected: f64) -> Scrape {
        let what = format!("{} == {expected}", selector(name, subset));
        self.await_scrape(&what, |s| s.value(name, subset) == Some(expected));
        thread::sleep(SETTLE);
        let settled = self.scrape();
        let value = settled.value(name, subset);
        if value != Some(expected) {
            let message = format!("{what} was reached, then became {value:?}");
            panic!("{}", self.failure(&message, &settled));
        }
        settled
    }

    /// A panic message with the relevant part of `scrape` and sonde's output.
    pub fn failure(&self, message: &str, scrape: &Scrape) -> String {
        format!(
            "{message}\n--- sonde /metrics (http_*, sonde_*) ---\n{}\n--- sonde output (tail) ---\n{}",
            scrape.excerpt(SHOWN_METRICS),
            tail(&self.output(), 40)
        )
    }

    /// SIGTERM, and asserts sonde exits by itself with code 0.
    pub fn stop(self) {
        self.stop_on(libc::SIGTERM);
    }

    /// `signal`, and asserts sonde exits by itself with code 0.
    /// SIGKILL: sonde gets no chance to detach; waits until it is gone.
    pub fn kill(mut self) {
        let (status, _) = self.process.end_with(libc::SIGKILL);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "sonde was not ended by SIGKILL: {status:?}"
        );
    }

    pub fn stop_on(mut self, signal: libc::c_int) {
        let (status, killed) = self.process.end_with(signal);
        let name = match signal {
            libc::SIGTERM => "SIGTERM".to_string(),
            libc::SIGINT => "SIGINT".to_string(),
            other => format!("signal {other}"),
        };
        assert!(
            !killed && status.success(),
            "sonde did not exit cleanly on {name} (killed: {killed}, status: {status:?}); its output:\n{}",
            tail(&self.output(), 40)
        );
    }
}

/// `name{k="v",...}`, as a query reads in PromQL.
fn selector(name: &str, subset: &[(&str, &str)]) -> String {
    let labels: Vec<String> = subset.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
