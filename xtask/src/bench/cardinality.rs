//! The cardinality run: wrk requests thousands of distinct paths that
//! sonde's route namer keeps as they are (short letter-only segments such as
//! `/c/qxe`, never taken for identifiers), so only the per-service route cap
//! bounds sonde's series and memory. Reports the series, sonde's memory and
//! how long a `/metrics` scrape takes at that size.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use sonde_tests::names::SERVER_DURATION_COUNT;
use sonde_tests::process::TempDir;
use sonde_tests::servers::NGINX_STATUS_PATH;

use super::daemon::{Counters, Mode};
use super::measure::{self, Bench, Checks, Violation};
use super::procfs::{self, Memory};
use super::stats::Spread;
use super::wrk::{self, Workload};

/// sonde's default `--max-routes-per-service`, passed explicitly so the
/// assertion holds whatever the default becomes.
pub const ROUTE_CAP: u32 = 200;
const SCRAPES: usize = 20;
const AFTER_START: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Serialize)]
pub struct CardinalityResult {
    pub paths: u32,
    /// Requests for the generated paths nginx read.
    pub served: u64,
    /// Distinct `http_route` values of nginx's server series, the
    /// `{overflow}` route and the status page's included.
    pub route_series: usize,
    pub route_cap: u32,
    /// After the load and the scrapes.
    pub memory: Memory,
    /// Over [`SCRAPES`] scrapes.
    pub scrape_ms: Spread,
    pub scrapes: usize,
    pub scrape_bytes: usize,
}

pub fn run(
    bench: &Bench,
    paths: u32,
    duration: Duration,
) -> Result<(CardinalityResult, Vec<Violation>)> {
    let name = format!("cardinality {paths} paths {} s", duration.as_secs());
    eprintln!("bench: {name}");
    let cap = ROUTE_CAP.to_string();
    let daemon = bench
        .start_sonde(Mode::Metrics, &["--max-routes-per-service", &cap])?
        .context("metrics mode runs sonde")?;
    measure::pause(AFTER_START)?;

    let dir = TempDir::new("bench-cardinality")?;
    let script = dir.path().join("paths.lua");
    std::fs::write(&script, lua_script(paths))?;
    let mark = bench.nginx.mark()?;
    wrk::run(
        &bench.nginx.url("/"),
        Workload::KeepAlive,
        duration,
        Some(&script),
    )?;
    let served = bench.nginx.requests_since(mark)?;

    let service = bench.service.as_str();
    let ((counted, unanswered), scrape) = measure::settle(&daemon, |scrape| {
        let counted: f64 = scrape
            .samples()
            .iter()
            .filter(|s| {
                s.name == SERVER_DURATION_COUNT
                    && s.label("service_name") == Some(service)
                    && s.label("http_route") != Some(NGINX_STATUS_PATH)
            })
            .map(|s| s.value)
            .sum();
        let unanswered = Counters::of(scrape, service).unanswered;
        ((counted, unanswered), counted + unanswered == served as f64)
    })?;
    let routes: BTreeSet<&str> = scrape
        .samples()
        .iter()
        .filter(|s| s.name == SERVER_DURATION_COUNT && s.label("service_name") == Some(service))
        .filter_map(|s| s.label("http_route"))
        .collect();

    let mut scrape_ms = Vec::with_capacity(SCRAPES);
    let mut scrape_bytes = 0;
    for _ in 0..SCRAPES {
        let started = Instant::now();
        let response = daemon.get("/metrics")?;
        scrape_ms.push(started.elapsed().as_secs_f64() * 1e3);
        scrape_bytes = response.body.len();
    }
    let memory = procfs::memory(daemon.pid())?;

    let mut checks = Checks::of(name);
    checks.require(
        served >= u64::from(paths),
        "every generated path was requested",
        || format!("nginx served {served} requests for {paths} paths"),
    );
    let connections = Workload::KeepAlive.connections();
    measure::check_requests(&mut checks, served, counted, unanswered, connections);
    checks.require(
        routes.len() <= ROUTE_CAP as usize + 1,
        "routes stay within the cap plus one overflow series",
        || format!("{} routes, cap {ROUTE_CAP}", routes.len()),
    );
    let violations = checks.failed();
    if !violations.is_empty() {
        eprintln!(
            "{}",
            daemon.failure("bench: cardinality run failed", &scrape)
        );
    }
    daemon.stop();
    let result = CardinalityResult {
        paths,
        served,
        route_series: routes.len(),
        route_cap: ROUTE_CAP,
        memory,
        scrape_ms: Spread::of(&scrape_ms).context("no scrape timed")?,
        scrapes: SCRAPES,
        scrape_bytes,
    };
    Ok((result, violations))
}

/// A wrk script whose requests cycle through `paths` distinct paths. wrk's
/// one thread runs one Lua state, so requests number 0, 1, 2, … and every
/// path is hit once `paths` requests were made.
fn lua_script(paths: u32) -> String {
    let letters = word_length(paths);
    let list: Vec<String> = (0..paths)
        .map(|i| format!("\"{}\"", path(i, letters)))
        .collect();
    format!(
        r#"-- Generated by `cargo xtask bench`: {paths} distinct paths.
local paths = {{{}}}
local n = 0

request = function()
  n = n + 1
  return wrk.format("GET", paths[(n - 1) % #paths + 1])
end
"#,
        list.join(",")
    )
}

/// `/c/<word>`, the word being `i` in base 26 with the digits a to z,
/// `letters` long: letters only and short, so not an identifier to sonde.
fn path(mut i: u32, letters: u32) -> String {
    let mut word = vec![b'a'; letters as usize];
    for letter in word.iter_mut().rev() {
        *letter = b'a' + (i % 26) as u8;
        i /= 26;
    }
    format!("/c/{}", String::from_utf8_lossy(&word))
}

/// Letters a word needs for `paths` distinct words.
fn word_length(paths: u32) -> u32 {
    let mut letters = 1;
    let mut words = 26u64;
    while words < u64::from(paths) {
        letters += 1;
        words *= 26;
    }
    letters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_long_enough_for_every_path() {
        let cases = [
            (1, 1),
            (26, 1),
            (27, 2),
            (676, 2),
            (677, 3),
            (1_000, 3),
            (10_000, 3),
            (17_577, 4),
        ];
        for (paths, letters) in cases {
            assert_eq!(word_length(paths), letters, "{paths}");
        }
    }

    #[test]
    fn paths_are_distinct_short_words() {
        let cases = [
            (0, "/c/aaa"),
            (1, "/c/aab"),
            (25, "/c/aaz"),
            (26, "/c/aba"),
            (9_999, "/c/oup"),
        ];
        for (i, expected) in cases {
            assert_eq!(path(i, 3), expected, "{i}");
        }
        let all: BTreeSet<String> = (0..10_000).map(|i| path(i, 3)).collect();
        assert_eq!(all.len(), 10_000);
    }

    #[test]
    fn script_lists_every_path_once() {
        let script = lua_script(3);
        assert!(
            script.contains("local paths = {\"/c/a\",\"/c/b\",\"/c/c\"}\n"),
            "{script}"
        );
    }
}
