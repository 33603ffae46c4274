//! The demo's per-endpoint table, computed from two scrapes of sonde's
//! /metrics the way PromQL would over the interval between them:
//! req/s is `sum(increase(_count)) / interval`, the 4xx and 5xx columns are
//! shares of those requests, and latency quantiles are
//! `histogram_quantile(q, sum by (le) (increase(_bucket)))`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::time::Duration;

use sonde_tests::prom;

const DURATION_BUCKET: &str = "http_server_request_duration_seconds_bucket";
const ACTIVE_REQUESTS: &str = "http_server_active_requests";

/// What a table row is about: sonde's per-endpoint labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub service: String,
    pub method: String,
    pub route: String,
}

/// One bucket of one duration histogram series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct BucketKey {
    endpoint: Endpoint,
    status: String,
    protocol: String,
    /// The upper bound as exported (`"0.005"`, `"+Inf"`).
    le: String,
}

/// The part of one /metrics scrape that the table needs.
#[derive(Debug, Default)]
pub struct Snapshot {
    buckets: BTreeMap<BucketKey, f64>,
    in_flight: BTreeMap<Endpoint, f64>,
}

impl Snapshot {
    pub fn of(scrape: &prom::Scrape) -> Self {
        let mut snapshot = Self::default();
        for sample in scrape.samples() {
            let label = |name| sample.label(name).unwrap_or_default().to_owned();
            let endpoint = Endpoint {
                service: label("service_name"),
                method: label("http_request_method"),
                route: label("http_route"),
            };
            match sample.name.as_str() {
                DURATION_BUCKET => {
                    let key = BucketKey {
                        endpoint,
                        status: label("http_response_status_code"),
                        protocol: label("network_protocol_version"),
                        le: label("le"),
                    };
                    snapshot.buckets.insert(key, sample.value);
                }
                ACTIVE_REQUESTS => {
                    *snapshot.in_flight.entry(endpoint).or_default() += sample.value;
                }
                _ => {}
            }
        }
        snapshot
    }
}

#[derive(Debug, PartialEq)]
pub struct Row {
    pub endpoint: Endpoint,
    pub requests_per_second: f64,
    /// Shares of the interval's requests, `None` when there were none.
    pub client_error_share: Option<f64>,
    pub server_error_share: Option<f64>,
    /// p50, p95, p99 in seconds, `None` when there were no requests.
    pub latency: [Option<f64>; 3],
    pub in_flight: f64,
}

pub const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

/// One row per endpoint present in `current`, sorted by endpoint.
pub fn rows(previous: &Snapshot, current: &Snapshot, interval: Duration) -> Vec<Row> {
    #[derive(Default)]
    struct Totals {
        requests: f64,
        client_errors: f64,
        server_errors: f64,
        /// Cumulative counts by upper bound, summed over status and protocol.
        buckets: BTreeMap<String, f64>,
    }
    let mut totals: BTreeMap<&Endpoint, Totals> = BTreeMap::new();
    for (key, &now) in &current.buckets {
        let totals = totals.entry(&key.endpoint).or_default();
        let before = previous.buckets.get(key).copied().unwrap_or(0.0);
        // A counter that went down was reset (sonde restarted): everything
        // it holds now happened since.
        let increase = if now >= before { now - before } else { now };
        *totals.buckets.entry(key.le.clone()).or_default() += increase;
        if key.le == "+Inf" {
            totals.requests += increase;
            match key.status.as_bytes().first() {
                Some(b'4') => totals.client_errors += increase,
                Some(b'5') => totals.server_errors += increase,
                _ => {}
            }
        }
    }
    let endpoints: BTreeSet<&Endpoint> = totals
        .keys()
        .copied()
        .chain(current.in_flight.keys())
        .collect();
    endpoints
        .into_iter()
        .map(|endpoint| {
            let totals = totals.remove(endpoint).unwrap_or_default();
            let share = |part: f64| (totals.requests > 0.0).then(|| part / totals.requests);
            let buckets = sorted_buckets(&totals.buckets);
            Row {
                endpoint: endpoint.clone(),
                requests_per_second: totals.requests / interval.as_secs_f64(),
                client_error_share: share(totals.client_errors),
                server_error_share: share(totals.server_errors),
                latency: QUANTILES.map(|q| histogram_quantile(q, &buckets)),
                in_flight: current.in_flight.get(endpoint).copied().unwrap_or(0.0),
            }
        })
        .collect()
}

/// `(upper bound, cumulative count)` in ascending order of upper bound;
/// bounds that are not numbers are left out.
fn sorted_buckets(by_le: &BTreeMap<String, f64>) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = by_le
        .iter()
        .filter_map(|(le, &count)| Some((le.parse::<f64>().ok()?, count)))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// Estimates quantile `q` of a histogram given as `(upper bound, cumulative
/// count)` pairs in ascending order, the last one `+Inf`, as Prometheus's
/// `histogram_quantile` does: find the bucket that holds the rank `q * total`
/// and interpolate linearly inside it, the first bucket starting at 0. A
/// rank in the `+Inf` bucket answers the highest finite bound. `None` when
/// there are no observations or no `+Inf` bucket.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let (&(last_bound, total), finite) = buckets.split_last()?;
    if last_bound != f64::INFINITY || total <= 0.0 || finite.is_empty() {
        return None;
    }
    let rank = q * total;
    let Some(index) = finite.iter().position(|&(_, count)| count >= rank) else {
        return finite.last().map(|&(bound, _)| bound);
    };
    let (upper, count) = finite[index];
    if index == 0 && upper <= 0.0 {
        return Some(upper);
    }
    let (lower, below) = if index == 0 {
        (0.0, 0.0)
    } else {
        finite[index - 1]
    };
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

/// The table as printed, with `interval` in its title.
pub fn render(rows: &[Row], interval: Duration) -> String {
    let header = [
        "SERVICE",
        "METHOD",
        "ROUTE",
        "REQ/S",
        "4XX %",
        "5XX %",
        "P50",
        "P95",
        "P99",
        "IN-FLIGHT",
    ];
    // The first three columns are text (left-aligned), the rest numbers.
    const TEXT_COLUMNS: usize = 3;
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|row| {
            let [p50, p95, p99] = row.latency.map(format_latency);
            [
                row.endpoint.service.clone(),
                row.endpoint.method.clone(),
                row.endpoint.route.clone(),
                format!("{:.1}", row.requests_per_second),
                format_share(row.client_error_share),
                format_share(row.server_error_share),
                p50,
                p95,
                p99,
                format!("{}", row.in_flight),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    // Not `sum()`: an empty f64 sum is -0.0, which prints as "-0.0".
    let total = rows
        .iter()
        .fold(0.0, |total, row| total + row.requests_per_second);
    let mut out = format!(
        "── last {:.1} s: {total:.1} req/s over {} endpoint(s); 4XX/5XX % are shares of each endpoint's requests\n",
        interval.as_secs_f64(),
        rows.len()
    );
    let header_line: [String; 10] = header.map(str::to_owned);
    for line in std::iter::once(&header_line).chain(&cells) {
        let mut text = String::new();
        for (column, (cell, width)) in line.iter().zip(widths).enumerate() {
            let separator = if column == 0 { "" } else { "  " };
            if column < TEXT_COLUMNS {
                let _ = write!(text, "{separator}{cell:<width$}");
            } else {
                let _ = write!(text, "{separator}{cell:>width$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no HTTP exchanges seen yet)\n");
    }
    out
}

fn format_share(share: Option<f64>) -> String {
    share.map_or_else(|| "-".to_owned(), |share| format!("{:.1}", share * 100.0))
}

fn format_latency(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_owned(),
        Some(s) if s < 0.1 => format!("{:.1}ms", s * 1e3),
        Some(s) if s < 10.0 => format!("{:.0}ms", s * 1e3),
        Some(s) => format!("{s:.1}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    /// (q, buckets, expected estimate)
    type QuantileCase<'a> = (f64, &'a [(f64, f64)], Option<f64>);

    #[test]
    fn estimates_quantiles_like_prometheus() {
        let buckets = [(0.25, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)];
        let cases: &[QuantileCase] = &[
            // rank 20 lies halfway through the (0.25, 0.5] bucket's 20.
            (0.5, &buckets, Some(0.375)),
            // rank 5 is half of the first bucket, which starts at 0.
            (0.125, &buckets, Some(0.125)),
            // rank 10 is exactly the first bucket's count.
            (0.25, &buckets, Some(0.25)),
            // rank 38 is 8 of the 10 in (0.5, 1].
            (0.95, &buckets, Some(0.9)),
            (1.0, &buckets, Some(1.0)),
            (0.0, &buckets, Some(0.0)),
            // Observations beyond the last finite bound: its bound is the answer.
            (0.99, &[(0.1, 50.0), (0.2, 90.0), (INF, 100.0)], Some(0.2)),
            // A rank in a later bucket skips empty ones before it.
            (
                0.5,
                &[(0.125, 0.0), (0.25, 0.0), (0.5, 8.0), (INF, 8.0)],
                Some(0.375),
            ),
            // A first bucket with a bound <= 0 answers that bound.
            (0.5, &[(0.0, 4.0), (1.0, 4.0), (INF, 4.0)], Some(0.0)),
            // No observations, no +Inf bucket, or only +Inf: no estimate.
            (0.5, &[(0.1, 0.0), (INF, 0.0)], None),
            (0.5, &[(0.1, 3.0), (0.2, 5.0)], None),
            (0.5, &[(INF, 5.0)], None),
            (0.5, &[], None),
        ];
        for (q, buckets, expected) in cases {
            assert_eq!(
                histogram_quantile(*q, buckets),
                *expected,
                "q={q} {buckets:?}"
            );
        }
    }

    fn snapshot(text: &str) -> Snapshot {
        Snapshot::of(&prom::Scrape::parse(text).unwrap())
    }

    fn endpoint(method: &str, route: &str) -> Endpoint {
        Endpoint {
            service: "shop".to_owned(),
            method: method.to_owned(),
            route: route.to_owned(),
        }
    }

    /// Three buckets of one series (0.1, 0.5, +Inf) of the duration histogram.
    fn series(method: &str, route: &str, status: u16, counts: [u32; 3]) -> String {
        let labels = format!(
            "service_name=\"shop\",http_request_method=\"{method}\",http_route=\"{route}\",\
             http_response_status_code=\"{status}\",network_protocol_version=\"1.1\""
        );
        ["0.1", "0.5", "+Inf"]
            .iter()
            .zip(counts)
            .map(|(le, count)| format!("{DURATION_BUCKET}{{{labels},le=\"{le}\"}} {count}\n"))
            .collect()
    }

    #[test]
    fn computes_rows_from_two_scrapes() {
        let previous = snapshot(
            &(series("GET", "/users/{id}", 200, [10, 20, 20])
                + &series("POST", "/orders", 201, [0, 4, 4])),
        );
        let current = snapshot(
            &(series("GET", "/users/{id}", 200, [30, 50, 50])
                + &series("GET", "/users/{id}", 404, [8, 8, 8])
                + &series("GET", "/users/{id}", 503, [0, 0, 2])
                + &series("POST", "/orders", 201, [0, 4, 4])
                + "http_server_active_requests{service_name=\"shop\",http_request_method=\"POST\",http_route=\"/orders\"} 2\n"
                + "http_server_active_requests{service_name=\"shop\",http_request_method=\"GET\",http_route=\"/\"} 1\n"
                + "# TYPE process_open_fds gauge\nprocess_open_fds 9\n"),
        );
        let got = rows(&previous, &current, Duration::from_secs(4));
        let expected = vec![
            Row {
                endpoint: endpoint("GET", "/"),
                requests_per_second: 0.0,
                client_error_share: None,
                server_error_share: None,
                latency: [None; 3],
                in_flight: 1.0,
            },
            // Increases: 200 → 20 ≤0.1, 30 ≤0.5; 404 → 8 ≤0.1; 503 → 2 > 0.5.
            // Summed by le: 0.1 → 28, 0.5 → 38, +Inf → 40.
            Row {
                endpoint: endpoint("GET", "/users/{id}"),
                requests_per_second: 10.0,
                client_error_share: Some(0.2),
                server_error_share: Some(0.05),
                // rank 20 of 28 in (0, 0.1]; rank 38 is the top of (0.1, 0.5];
                // rank 39.6 is beyond it, so the highest finite bound.
                latency: [Some(0.1 * 20.0 / 28.0), Some(0.5), Some(0.5)],
                in_flight: 0.0,
            },
            Row {
                endpoint: endpoint("POST", "/orders"),
                requests_per_second: 0.0,
                client_error_share: None,
                server_error_share: None,
                latency: [None; 3],
                in_flight: 2.0,
            },
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn a_counter_reset_counts_from_zero() {
        let previous = snapshot(&series("GET", "/", 200, [50, 60, 60]));
        let current = snapshot(&series("GET", "/", 200, [3, 4, 4]));
        let got = rows(&previous, &current, Duration::from_secs(2));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].requests_per_second, 2.0);
        assert_eq!(got[0].latency[0], Some(0.1 * 2.0 / 3.0));
    }

    #[test]
    fn renders_an_aligned_table() {
        let rows = vec![
            Row {
                endpoint: endpoint("GET", "/users/{id}"),
                requests_per_second: 10.0,
                client_error_share: Some(0.2),
                server_error_share: Some(0.05),
                latency: [Some(0.0714), Some(0.5), Some(12.3)],
                in_flight: 0.0,
            },
            Row {
                endpoint: endpoint("POST", "/orders"),
                requests_per_second: 0.0,
                client_error_share: None,
                server_error_share: None,
                latency: [None; 3],
                in_flight: 2.0,
            },
        ];
        let expected = "\
── last 5.0 s: 10.0 req/s over 2 endpoint(s); 4XX/5XX % are shares of each endpoint's requests
SERVICE  METHOD  ROUTE        REQ/S  4XX %  5XX %     P50    P95    P99  IN-FLIGHT
shop     GET     /users/{id}   10.0   20.0    5.0  71.4ms  500ms  12.3s          0
shop     POST    /orders        0.0      -      -       -      -      -          2
";
        assert_eq!(render(&rows, Duration::from_secs(5)), expected);
    }

    #[test]
    fn renders_an_empty_table() {
        let expected = "\
── last 5.0 s: 0.0 req/s over 0 endpoint(s); 4XX/5XX % are shares of each endpoint's requests
SERVICE  METHOD  ROUTE  REQ/S  4XX %  5XX %  P50  P95  P99  IN-FLIGHT
(no HTTP exchanges seen yet)
";
        assert_eq!(render(&[], Duration::from_secs(5)), expected);
    }
}
