//! sonde in each of the bench's modes: started fresh for every run (so its
//! counters and peak memory belong to that run alone), ready once `/readyz`
//! answers, and read through its `/metrics`.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use sonde_tests::names::{EVENTS_LOST, SERVER_DURATION_COUNT, SPANS_DROPPED, SPANS_EXPORTED};
use sonde_tests::otlp_receiver::OtlpReceiver;
use sonde_tests::prom::Scrape;
use sonde_tests::sonde::Sonde;

const REQUESTS_ABANDONED: &str = "sonde_requests_abandoned_total";

/// What runs next to nginx during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No sonde: what nginx does alone.
    Baseline,
    /// `sonde --bench-floor`: the same tracepoints with programs that only
    /// return, so what any eBPF monitor on these hooks costs at least.
    Floor,
    /// sonde as shipped: Prometheus metrics.
    Metrics,
    /// sonde exporting every request as a span to an OTLP sink too.
    Spans,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Baseline, Mode::Floor, Mode::Metrics, Mode::Spans];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::Floor => "floor",
            Mode::Metrics => "metrics",
            Mode::Spans => "spans",
        }
    }

    /// The order of round `round`: [`ALL`](Self::ALL) rotated left by the
    /// round, so slow drift of the machine (heat, other load) falls on every
    /// mode alike.
    pub fn rotation(round: usize) -> [Mode; 4] {
        let mut order = Mode::ALL;
        order.rotate_left(round % Mode::ALL.len());
        order
    }

    /// Whether sonde's counts are checked in this mode (the floor counts nothing).
    pub fn counts_requests(self) -> bool {
        matches!(self, Mode::Metrics | Mode::Spans)
    }
}

/// A running sonde and, in spans mode, the OTLP sink it exports to.
pub struct Daemon {
    sonde: Sonde,
    sink: Option<OtlpReceiver>,
}

impl Daemon {
    /// sonde from `bin` in `mode` with `extra` flags; `None` for the baseline.
    pub fn start(bin: &Path, mode: Mode, extra: &[&str]) -> Result<Option<Daemon>> {
        let mut args: Vec<String> = extra.iter().map(|arg| arg.to_string()).collect();
        let sink = match mode {
            Mode::Baseline => return Ok(None),
            Mode::Floor => {
                args.push("--bench-floor".to_owned());
                None
            }
            Mode::Metrics => None,
            Mode::Spans => {
                let sink = OtlpReceiver::start_counting()?;
                // gRPC: sonde skips HTTP/2, so the exports are not observed
                // in turn (OTLP/HTTP is HTTP/1.1 and would be).
                args.extend([
                    "--otlp-endpoint".to_owned(),
                    sink.grpc_endpoint(),
                    "--otlp-protocol".to_owned(),
                    "grpc".to_owned(),
                ]);
                Some(sink)
            }
        };
        let sonde = Sonde::start_bin(bin, &args)?;
        Ok(Some(Daemon { sonde, sink }))
    }

    pub fn pid(&self) -> u32 {
        self.sonde.pid()
    }

    pub fn scrape(&self) -> Scrape {
        self.sonde.scrape()
    }

    pub fn get(&self, path: &str) -> Result<sonde_tests::clients::Response> {
        self.sonde.get(path)
    }

    /// Spans the sink received, in spans mode.
    pub fn spans_received(&self) -> Option<u64> {
        self.sink.as_ref().map(OtlpReceiver::span_count)
    }

    /// The end of sonde's output, for failure messages.
    pub fn failure(&self, message: &str, scrape: &Scrape) -> String {
        self.sonde.failure(message, scrape)
    }

    /// SIGTERM; sonde must exit 0 (the harness asserts it).
    pub fn stop(self) {
        self.sonde.stop();
    }
}

/// sonde's counters that the bench reads.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Counters {
    /// Server requests of `service` on route `/`, any method and status.
    pub root_requests: f64,
    /// Requests whose connection closed before any response: in the bench,
    /// requests nginx read after wrk had exited (wrk's own outstanding ones
    /// are abandoned as `process_exited`).
    pub unanswered: f64,
    /// Every reason summed.
    pub events_lost: f64,
    pub spans_exported: f64,
    pub spans_dropped: f64,
}

impl Counters {
    pub fn of(scrape: &Scrape, service: &str) -> Counters {
        Counters {
            root_requests: scrape.sum(
                SERVER_DURATION_COUNT,
                &[("service_name", service), ("http_route", "/")],
            ),
            unanswered: scrape.sum(REQUESTS_ABANDONED, &[("reason", "closed_unanswered")]),
            events_lost: scrape.sum(EVENTS_LOST, &[]),
            spans_exported: scrape.sum(SPANS_EXPORTED, &[]),
            spans_dropped: scrape.sum(SPANS_DROPPED, &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_modes_each_round() {
        use Mode::*;
        assert_eq!(Mode::rotation(0), [Baseline, Floor, Metrics, Spans]);
        assert_eq!(Mode::rotation(1), [Floor, Metrics, Spans, Baseline]);
        assert_eq!(Mode::rotation(3), [Spans, Baseline, Floor, Metrics]);
        assert_eq!(Mode::rotation(4), Mode::rotation(0));
    }

    #[test]
    fn reads_counters() {
        let scrape = Scrape::parse(
            "http_server_request_duration_seconds_count{service_name=\"nginx\",http_route=\"/\",http_response_status_code=\"200\"} 90\n\
             http_server_request_duration_seconds_count{service_name=\"nginx\",http_route=\"/\",http_response_status_code=\"499\"} 2\n\
             http_server_request_duration_seconds_count{service_name=\"nginx\",http_route=\"/nginx_status\",http_response_status_code=\"200\"} 3\n\
             http_server_request_duration_seconds_count{service_name=\"python3\",http_route=\"/\",http_response_status_code=\"200\"} 7\n\
             sonde_requests_abandoned_total{reason=\"closed_unanswered\"} 3\n\
             sonde_requests_abandoned_total{reason=\"process_exited\"} 32\n\
             sonde_events_lost_total{reason=\"ringbuf_full\"} 4\n\
             sonde_events_lost_total{reason=\"copy_failed\"} 1\n\
             sonde_spans_exported_total 80\n\
             sonde_spans_dropped_total{reason=\"queue_full\"} 5\n\
             sonde_spans_dropped_total{reason=\"export_failed\"} 6\n",
        )
        .unwrap();
        let expected = Counters {
            root_requests: 92.0,
            unanswered: 3.0,
            events_lost: 5.0,
            spans_exported: 80.0,
            spans_dropped: 11.0,
        };
        assert_eq!(Counters::of(&scrape, "nginx"), expected);
    }
}
