//! The server under load: nginx with one worker pinned to CPU 0 answering
//! `200 ok` with no access log, and its `stub_status` page, whose request
//! counter is the ground truth sonde's counts are held against.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sonde_tests::process::{exe_basename, poll};
use sonde_tests::servers::{Nginx, NginxConfig, NGINX_STATUS_PATH};

use crate::http_get;

/// nginx's worker runs here; wrk has the other CPU.
const WORKER_CPU: u32 = 0;
/// Higher than any run's requests per connection, so keep-alive
/// connections last the whole run.
const KEEPALIVE_REQUESTS: u64 = 1_000_000_000;
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
const WORKER_WITHIN: Duration = Duration::from_secs(5);
/// Pause between the status readings that decide nginx is idle.
const IDLE_CHECK: Duration = Duration::from_millis(100);
const IDLE_WITHIN: Duration = Duration::from_secs(10);

pub struct BenchNginx {
    nginx: Nginx,
    worker: u32,
    addr: SocketAddr,
}

/// A reading of nginx's request counter. The status request that read it is
/// counted in it.
#[derive(Clone, Copy, Debug)]
pub struct Mark(u64);

impl BenchNginx {
    pub fn start() -> Result<BenchNginx> {
        let nginx = Nginx::with_config(&NginxConfig {
            workers: 1,
            worker_cpu: Some(WORKER_CPU),
            access_log: false,
            keepalive_requests: Some(KEEPALIVE_REQUESTS),
            status_page: true,
            ..NginxConfig::default()
        })?;
        // The master listens before it forks its worker.
        let worker = poll(WORKER_WITHIN, Duration::from_millis(20), || {
            match nginx.workers().as_slice() {
                &[worker] => Some(worker),
                _ => None,
            }
        })
        .with_context(|| format!("nginx has not one worker but {:?}", nginx.workers()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], nginx.server().port()));
        Ok(BenchNginx {
            nginx,
            worker,
            addr,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, path: &str) -> String {
        self.nginx.server().url(path)
    }

    /// The worker, which serves every request.
    pub fn worker_pid(&self) -> u32 {
        self.worker
    }

    /// What sonde calls nginx.
    pub fn service_name(&self) -> String {
        exe_basename(self.worker)
    }

    pub fn mark(&self) -> Result<Mark> {
        self.requests().map(Mark)
    }

    /// Requests nginx has read since `mark`, not counting the status
    /// requests that read the counter. It waits until nothing else arrives:
    /// requests a client sent just before it stopped may still be queued in
    /// the worker when the client has already exited.
    pub fn requests_since(&self, mark: Mark) -> Result<u64> {
        let mut readings = vec![self.requests()?];
        let deadline = Instant::now() + IDLE_WITHIN;
        loop {
            thread::sleep(IDLE_CHECK);
            readings.push(self.requests()?);
            if let Some(served) = served_once_idle(mark.0, &readings) {
                return Ok(served);
            }
            if Instant::now() >= deadline {
                bail!("nginx kept receiving requests: counter readings {readings:?}");
            }
        }
    }

    /// The `requests` counter of the status page.
    fn requests(&self) -> Result<u64> {
        let response = http_get::get(self.addr, NGINX_STATUS_PATH, STATUS_TIMEOUT)?;
        if response.status != 200 {
            bail!("{NGINX_STATUS_PATH} answered {}", response.status);
        }
        parse_requests(&response.body)
            .with_context(|| format!("unexpected status page:\n{}", response.body))
    }
}

/// Given counter readings taken after `mark`, each counting its own status
/// request: once two readings in a row are one apart (only the second
/// reading's own request came in between), the requests other than status
/// requests since `mark`. `None` while other requests still arrive.
fn served_once_idle(mark: u64, readings: &[u64]) -> Option<u64> {
    let [.., before, last] = readings else {
        return None;
    };
    if last.checked_sub(*before)? != 1 {
        return None;
    }
    last.checked_sub(mark)?.checked_sub(readings.len() as u64)
}

/// The third number of the line after `server accepts handled requests`.
fn parse_requests(status_page: &str) -> Option<u64> {
    let mut lines = status_page.lines();
    lines.find(|line| line.trim() == "server accepts handled requests")?;
    lines.next()?.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_request_counter() {
        let page = "Active connections: 1 \nserver accepts handled requests\n \
                    24378 24378 96215 \nReading: 0 Writing: 1 Waiting: 0 \n";
        assert_eq!(parse_requests(page), Some(96215));
        assert_eq!(
            parse_requests("server accepts handled requests\n 1 1\n"),
            None
        );
        assert_eq!(parse_requests("Active connections: 1\n"), None);
    }

    #[test]
    fn counts_requests_once_nginx_is_idle() {
        let cases: &[(u64, &[u64], Option<u64>)] = &[
            // 500 other requests after the mark, then only the two readings.
            (100, &[601, 602], Some(500)),
            // Late requests arrived between the first readings.
            (100, &[601, 605, 606], Some(503)),
            (100, &[601, 605], None),
            (100, &[601], None),
            // Nothing but the readings themselves.
            (100, &[101, 102], Some(0)),
        ];
        for (mark, readings, expected) in cases {
            assert_eq!(
                served_once_idle(*mark, readings),
                *expected,
                "{mark} {readings:?}"
            );
        }
    }
}
