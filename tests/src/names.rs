//! The metric and label names of sonde's interface, and label sets the
//! tests select series with.

pub const SERVER_DURATION: &str = "http_server_request_duration_seconds";
pub const SERVER_DURATION_COUNT: &str = "http_server_request_duration_seconds_count";
pub const SERVER_DURATION_SUM: &str = "http_server_request_duration_seconds_sum";
pub const SERVER_ACTIVE: &str = "http_server_active_requests";
pub const SERVER_REQUEST_BODY: &str = "http_server_request_body_size_bytes";
pub const SERVER_RESPONSE_BODY: &str = "http_server_response_body_size_bytes";
pub const CLIENT_DURATION_COUNT: &str = "http_client_request_duration_seconds_count";
pub const EVENTS_LOST: &str = "sonde_events_lost_total";
pub const HTTP_ANOMALIES: &str = "sonde_http_anomalies_total";
pub const SPANS_EXPORTED: &str = "sonde_spans_exported_total";
pub const SPANS_DROPPED: &str = "sonde_spans_dropped_total";

/// Labels of one server endpoint and status.
pub fn server<'a>(
    service: &'a str,
    method: &'a str,
    route: &'a str,
    status: &'a str,
) -> [(&'static str, &'a str); 4] {
    [
        ("service_name", service),
        ("http_request_method", method),
        ("http_route", route),
        ("http_response_status_code", status),
    ]
}

/// Labels of one server endpoint, any status.
pub fn route<'a>(
    service: &'a str,
    method: &'a str,
    route: &'a str,
) -> [(&'static str, &'a str); 3] {
    [
        ("service_name", service),
        ("http_request_method", method),
        ("http_route", route),
    ]
}
