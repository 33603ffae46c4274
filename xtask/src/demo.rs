//! `cargo xtask demo`: sonde watching a service it knows nothing about.
//!
//! Starts sonde, then the demo service (xtask/demo/service.py) and its load
//! generator (xtask/demo/load.py), and every few seconds prints the
//! per-endpoint table that sonde's /metrics implies for the last interval.
//! Ctrl-C (or `--seconds`) stops the children: the load first, sonde last
//! with SIGINT, which it must answer by exiting 0.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sonde_tests::prom;

use crate::children::{self, Supervised};
use crate::summary::{self, Snapshot};
use crate::{http_get, setup, workspace};

const METRICS_ADDR: &str = "127.0.0.1:9464";
const SERVICE_ADDR: &str = "127.0.0.1:8000";
const TABLE_EVERY: Duration = Duration::from_secs(5);
const SONDE_READY_WITHIN: Duration = Duration::from_secs(60);
const SERVICE_READY_WITHIN: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
const STOP_GRACE: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 20;

const SONDE: &str = "sonde";
const SERVICE: &str = "demo service";
const LOAD_GENERATOR: &str = "load generator";

pub fn demo(duration: Option<Duration>, otlp_endpoint: Option<&str>) -> Result<()> {
    setup::ensure(setup::Scope::Everything, setup::Root::Required)?;
    let sonde = workspace::build_sonde(true)?;
    let log_dir = workspace::target_dir().join("demo");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;

    // Caught from here on, so Ctrl-C during start-up also stops the children.
    children::catch_interrupts()?;
    let mut running = Vec::new();
    let outcome = run(&sonde, &log_dir, duration, otlp_endpoint, &mut running);

    if !running.is_empty() {
        eprintln!("demo: stopping");
    }
    let mut sonde_exit = None;
    // The load generator was started last, so it stops first.
    while let Some(child) = running.pop() {
        let name = child.name();
        let log = child.log().to_owned();
        let status = child.stop(STOP_GRACE)?;
        match name {
            // Its last line counts what it sent, to hold against sonde's numbers.
            LOAD_GENERATOR => eprintln!("demo: {}", log_tail(&log, 1)),
            SONDE if !status.success() => sonde_exit = Some((status, log)),
            _ => {}
        }
    }
    outcome?;
    if let Some((exit, log)) = sonde_exit {
        bail!(
            "sonde did not exit cleanly on SIGINT ({exit}); see {}",
            log.display()
        );
    }
    eprintln!("demo: done");
    Ok(())
}

fn run(
    sonde: &Path,
    log_dir: &Path,
    duration: Option<Duration>,
    otlp_endpoint: Option<&str>,
    running: &mut Vec<Supervised>,
) -> Result<()> {
    let metrics: SocketAddr = METRICS_ADDR.parse()?;
    let service: SocketAddr = SERVICE_ADDR.parse()?;
    let demo_dir = workspace::root().join("xtask/demo");
    // Otherwise a server already there would answer in our service's place.
    for addr in [metrics, service] {
        TcpListener::bind(addr).with_context(|| format!("{addr} is in use; the demo needs it"))?;
    }

    let mut sonde_cmd = Command::new(sonde);
    sonde_cmd.args([
        "--metrics-addr",
        METRICS_ADDR,
        "--port",
        &service.port().to_string(),
    ]);
    if let Some(endpoint) = otlp_endpoint {
        sonde_cmd.args(["--otlp-endpoint", endpoint]);
        eprintln!("demo: spans go to {endpoint}");
    }
    running.push(Supervised::spawn(
        SONDE,
        &mut sonde_cmd,
        &log_dir.join("sonde.log"),
        libc::SIGINT,
    )?);
    eprintln!(
        "demo: waiting for sonde to attach (log: {})",
        log_dir.join("sonde.log").display()
    );
    if !wait_for_ok(metrics, "/readyz", SONDE_READY_WITHIN, running)? {
        return Ok(());
    }

    running.push(Supervised::spawn(
        SERVICE,
        Command::new("python3")
            .arg(demo_dir.join("service.py"))
            .args(["--port", &service.port().to_string()]),
        &log_dir.join("service.log"),
        libc::SIGTERM,
    )?);
    if !wait_for_ok(service, "/health", SERVICE_READY_WITHIN, running)? {
        return Ok(());
    }
    let mut previous = scrape(metrics)?;
    let mut previous_at = Instant::now();

    running.push(Supervised::spawn(
        LOAD_GENERATOR,
        Command::new("python3")
            .arg(demo_dir.join("load.py"))
            .args(["--port", &service.port().to_string()]),
        &log_dir.join("load.log"),
        libc::SIGTERM,
    )?);

    eprintln!(
        "demo: service http://{service}/ under load; sonde's metrics at http://{metrics}/metrics"
    );
    eprintln!(
        "demo: a table every {} s{}",
        TABLE_EVERY.as_secs(),
        duration.map_or_else(
            || ", until Ctrl-C".to_owned(),
            |d| format!(" for {} s", d.as_secs())
        )
    );
    let end = duration.map(|d| Instant::now() + d);
    loop {
        let tick = previous_at + TABLE_EVERY;
        let tick = end.map_or(tick, |end| tick.min(end));
        if !pause_until(tick, running)? {
            return Ok(());
        }
        match scrape(metrics) {
            Ok(current) => {
                let now = Instant::now();
                let interval = now - previous_at;
                println!(
                    "\n{}",
                    summary::render(&summary::rows(&previous, &current, interval), interval)
                );
                (previous, previous_at) = (current, now);
            }
            Err(err) => eprintln!("demo: scraping sonde failed: {err:#}"),
        }
        if end.is_some_and(|end| Instant::now() >= end) {
            return Ok(());
        }
    }
}

fn scrape(metrics: SocketAddr) -> Result<Snapshot> {
    let response = http_get::get(metrics, "/metrics", HTTP_TIMEOUT)?;
    if response.status != 200 {
        bail!("/metrics answered {}", response.status);
    }
    Ok(Snapshot::of(&prom::Scrape::parse(&response.body)?))
}

/// Polls `GET path` until it answers 200. `Ok(false)` if interrupted first;
/// an error on timeout or if a child exits.
fn wait_for_ok(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    running: &mut [Supervised],
) -> Result<bool> {
    let deadline = Instant::now() + within;
    loop {
        if matches!(http_get::get(addr, path, HTTP_TIMEOUT), Ok(response) if response.status == 200)
        {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            bail!(
                "http://{addr}{path} did not answer 200 within {} s",
                within.as_secs()
            );
        }
        if !pause_until(Instant::now() + Duration::from_millis(200), running)? {
            return Ok(false);
        }
    }
}

/// Sleeps until `until`, watching for Ctrl-C (`Ok(false)`) and for a child
/// that exits by itself (an error that shows the end of its log).
fn pause_until(until: Instant, running: &mut [Supervised]) -> Result<bool> {
    loop {
        if children::interrupted() {
            return Ok(false);
        }
        for child in running.iter_mut() {
            if let Some(status) = child.exited()? {
                bail!(
                    "{} exited by itself ({status}); the end of {}:\n{}",
                    child.name(),
                    child.log().display(),
                    log_tail(child.log(), LOG_TAIL_LINES)
                );
            }
        }
        let now = Instant::now();
        if now >= until {
            return Ok(true);
        }
        thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

/// The last `lines` lines of a child's log.
fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
