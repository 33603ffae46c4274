//! Label values for aggregation: `http.route` templates made from raw paths,
//! and the cardinality budgets that keep every label set bounded.
//!
//! sonde sees paths, not the application's router, so it guesses the template
//! by replacing segments that look like identifiers with `{id}`. A guess that
//! misses (a word-like id) costs cardinality, never correctness: each service
//! admits a bounded number of distinct routes and peers, and the number of
//! services is bounded too. What does not fit is merged into `{overflow}`.
//! Admission is permanent, so a request started under a label finishes under
//! the same one.
use std::net::SocketAddr;
use std::sync::Arc;

use foldhash::fast::RandomState;
use foldhash::HashMap;
use indexmap::{IndexMap, IndexSet};

use crate::kubernetes::PodLabels;

/// Placeholder for an identifier-like path segment.
pub const ID: &str = "{id}";
/// Ends a route whose remainder is unknown (cut by capture) or too long.
pub const TRUNCATED: &str = "{truncated}";
/// Route of a request target that is neither `*` nor an origin-form path
/// (CONNECT's `host:port`): its text is not a route and may be unbounded.
pub const OTHER: &str = "{other}";
/// The service, route or peer that stands for everything over budget.
pub const OVERFLOW: &str = "{overflow}";
/// Longest route label in bytes, `{truncated}` suffix included.
pub const MAX_ROUTE_LEN: usize = 128;

/// Writes the `http.route` template of `path` (no query string) into `out`.
///
/// Segments are kept as sent (so `/a/` and `/a` differ, as they do to most
/// routers, and empty segments stay) except that a segment becomes `{id}` when
/// it is (rules at `is_identifier`) decimal digits, a UUID, a hex string of 16 or
/// more digits, an opaque token, a value with 4 or more digits, or user data
/// (percent-escapes, `@`, anything outside printable ASCII). The result is
/// therefore printable ASCII.
///
/// A `path_truncated` path keeps its complete segments and ends in
/// `/{truncated}` instead of its last, partial, segment; a route longer than
/// [`MAX_ROUTE_LEN`] is cut the same way at a segment boundary. The empty path
/// is `/`, `*` stays `*`, and anything not starting with `/` is `{other}`.
pub fn http_route(path: &str, path_truncated: bool, out: &mut String) {
    out.clear();
    if !path.starts_with('/') {
        out.push_str(match path {
            "" if path_truncated => TRUNCATED,
            "" => "/",
            "*" if !path_truncated => "*",
            _ => OTHER,
        });
        return;
    }
    // A cut path's last segment is partial: only the ones before it are known.
    let complete = if path_truncated {
        &path[..path.rfind('/').unwrap_or(0)]
    } else {
        path
    };
    for segment in complete.split('/').skip(1) {
        out.push('/');
        out.push_str(if is_identifier(segment) { ID } else { segment });
    }
    if path_truncated || out.len() > MAX_ROUTE_LEN {
        let suffix_len = 1 + TRUNCATED.len();
        if out.len() + suffix_len > MAX_ROUTE_LEN {
            // ASCII only, so any byte index is a char boundary.
            let keep = out[..=MAX_ROUTE_LEN - suffix_len].rfind('/').unwrap_or(0);
            out.truncate(keep);
        }
        out.push('/');
        out.push_str(TRUNCATED);
    }
}

/// Whether a path segment names one resource among many rather than a place
/// in the application's route table. It is, when it is:
/// - decimal digits only (`123`);
/// - a UUID, 8-4-4-4-12 hex digits in any case;
/// - hex digits only, at least 16 of them: 64-bit and longer object ids and
///   hashes (Mongo ObjectId 24, MD5 32, SHA-1 40, SHA-256 64);
/// - an opaque token: at least 16 characters of the base64url alphabet
///   `[A-Za-z0-9_-]` with both a letter and a digit (ULID, KSUID, nanoid,
///   `cus_NffrFeUfNV2Hib`); words, even long kebab-case ones, have no digit;
/// - anything with 4 or more decimal digits (`INV-2024-0001`, `2024-06-01`,
///   `user12345`), which keeps `v1`, `html5`, `oauth2`, `sha256`;
/// - user data: a percent-escape, an `@` (e-mail addresses are personal
///   data), or a byte outside printable ASCII.
fn is_identifier(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter()
        .any(|&c| !c.is_ascii_graphic() || c == b'%' || c == b'@')
    {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if digits == b.len() || digits >= 4 || is_uuid(b) {
        return true;
    }
    if b.len() < 16 {
        return false;
    }
    if b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    let base64url = b
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    base64url && digits > 0 && b.iter().any(u8::is_ascii_alphabetic)
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Cardinality budgets, all counted since the daemon started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Distinct `service_name` values; later services become `{overflow}`.
    pub services: usize,
    /// Distinct `http_route` values per service (server side).
    pub routes_per_service: usize,
    /// Distinct `server_address`/`server_port` pairs per service (client side).
    pub peers_per_service: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            services: 1000,
            routes_per_service: 200,
            peers_per_service: 100,
        }
    }
}

/// An admitted service, or the overflow service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceId(u32);

impl ServiceId {
    /// The number behind the id, for hashing keys made of ids.
    pub fn index(self) -> u32 {
        self.0
    }

    pub const OVERFLOW: ServiceId = ServiceId(0);

    pub fn is_overflow(self) -> bool {
        self == Self::OVERFLOW
    }
}

/// An admitted route of one service, or that service's overflow route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteId(u32);

impl RouteId {
    /// The number behind the id, for hashing keys made of ids.
    pub fn index(self) -> u32 {
        self.0
    }

    pub const OVERFLOW: RouteId = RouteId(u32::MAX);

    pub fn is_overflow(self) -> bool {
        self == Self::OVERFLOW
    }
}

/// An admitted peer of one service, or that service's overflow peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerId(u32);

impl PeerId {
    /// The number behind the id, for hashing keys made of ids.
    pub fn index(self) -> u32 {
        self.0
    }

    pub const OVERFLOW: PeerId = PeerId(u32::MAX);

    pub fn is_overflow(self) -> bool {
        self == Self::OVERFLOW
    }
}

#[derive(Default)]
struct Service {
    routes: IndexSet<String, RandomState>,
    peers: IndexSet<SocketAddr, RandomState>,
    /// Routes of paths seen lately (see `Namer::route`).
    paths: HashMap<Box<str>, RouteId>,
}

/// Paths whose routes `Namer` remembers, all services together. Naming a
/// path (`http_route`, then the lookup of its route) costs several times a
/// lookup of the path, and most traffic repeats a few paths.
const CACHED_PATHS: usize = 4096;
/// Longer paths are named each time: with `CACHED_PATHS`, the remembered
/// paths hold at most 1 MiB.
const CACHED_PATH_MAX_LEN: usize = 256;

/// What tells services apart: a name, and the pod (for processes in a
/// Kubernetes pod), whose labels the service's series carry; replicas of a
/// workload on one node share a name, each with its own series.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ServiceKey {
    name: Box<str>,
    pod: Option<Arc<PodLabels>>,
}

/// Turns service names, paths and peers into small ids within the budgets;
/// the ids key aggregation's caches and give back their label values.
pub struct Namer {
    limits: Limits,
    /// Index 0 is the overflow service.
    services: IndexMap<ServiceKey, Service, RandomState>,
    /// Reused for every route so the hot path does not allocate.
    scratch: String,
    /// Entries in the services' `paths`, at most `CACHED_PATHS`.
    cached_paths: usize,
}

impl Namer {
    pub fn new(limits: Limits) -> Self {
        let mut services = IndexMap::default();
        let overflow = ServiceKey {
            name: OVERFLOW.into(),
            pod: None,
        };
        services.insert(overflow, Service::default());
        Namer {
            limits,
            services,
            scratch: String::new(),
            cached_paths: 0,
        }
    }

    /// The id of the service `name` (of `pod`, if in one). Asked once per
    /// process, not per request: it allocates.
    pub fn service(&mut self, name: &str, pod: Option<&Arc<PodLabels>>) -> ServiceId {
        let key = ServiceKey {
            name: name.into(),
            pod: pod.cloned(),
        };
        if let Some(i) = self.services.get_index_of(&key) {
            return ServiceId(i as u32);
        }
        // The overflow entry does not count against the budget.
        if self.services.len() > self.limits.services {
            return ServiceId::OVERFLOW;
        }
        let (i, _) = self.services.insert_full(key, Service::default());
        ServiceId(i as u32)
    }

    /// The route of `path` for `service`; see [`http_route`]. A whole path
    /// seen lately is looked up rather than named again: admission is
    /// permanent, so the id it got then is the id it would get now.
    pub fn route(&mut self, service: ServiceId, path: &str, path_truncated: bool) -> RouteId {
        let cacheable = !path_truncated && path.len() <= CACHED_PATH_MAX_LEN;
        if cacheable && self.cached_paths >= CACHED_PATHS {
            // New maps, not cleared ones: their tables would stay allocated.
            for (_, s) in &mut self.services {
                s.paths = HashMap::default();
            }
            self.cached_paths = 0;
        }
        let Some((_, s)) = self.services.get_index_mut(service.0 as usize) else {
            return RouteId::OVERFLOW;
        };
        if cacheable {
            if let Some(&route) = s.paths.get(path) {
                return route;
            }
        }
        http_route(path, path_truncated, &mut self.scratch);
        let route = admit(
            &mut s.routes,
            self.scratch.as_str(),
            self.limits.routes_per_service,
        )
        .map_or(RouteId::OVERFLOW, RouteId);
        if cacheable {
            s.paths.insert(path.into(), route);
            self.cached_paths += 1;
        }
        route
    }

    pub fn peer(&mut self, service: ServiceId, peer: SocketAddr) -> PeerId {
        let Some((_, s)) = self.services.get_index_mut(service.0 as usize) else {
            return PeerId::OVERFLOW;
        };
        admit(&mut s.peers, &peer, self.limits.peers_per_service).map_or(PeerId::OVERFLOW, PeerId)
    }

    pub fn service_label(&self, service: ServiceId) -> &str {
        self.services
            .get_index(service.0 as usize)
            .map_or(OVERFLOW, |(key, _)| &key.name)
    }

    /// The `k8s_*` labels of `service`, if its processes run in a pod.
    pub fn pod_labels(&self, service: ServiceId) -> Option<&PodLabels> {
        self.services
            .get_index(service.0 as usize)
            .and_then(|(key, _)| key.pod.as_deref())
    }

    pub fn route_label(&self, service: ServiceId, route: RouteId) -> &str {
        self.services
            .get_index(service.0 as usize)
            .and_then(|(_, s)| s.routes.get_index(route.0 as usize))
            .map_or(OVERFLOW, |r| r)
    }

    /// `server_address` and `server_port` label values.
    pub fn peer_labels(&self, service: ServiceId, peer: PeerId) -> (String, String) {
        match self
            .services
            .get_index(service.0 as usize)
            .and_then(|(_, s)| s.peers.get_index(peer.0 as usize))
        {
            Some(addr) => (addr.ip().to_string(), addr.port().to_string()),
            None => (OVERFLOW.to_owned(), OVERFLOW.to_owned()),
        }
    }
}

/// Index of `value` in `set`, inserting it while the set has room.
fn admit<T, Q>(set: &mut IndexSet<T, RandomState>, value: &Q, limit: usize) -> Option<u32>
where
    T: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ToOwned<Owned = T> + ?Sized,
{
    if let Some(i) = set.get_index_of(value) {
        return Some(i as u32);
    }
    if set.len() >= limit {
        return None;
    }
    Some(set.insert_full(value.to_owned()).0 as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, truncated: bool) -> String {
        let mut out = String::from("stale");
        http_route(path, truncated, &mut out);
        out
    }

    #[test]
    fn templates() {
        let cases = [
            (
                "/users/123/orders/9f8e7d6c-aaaa-bbbb-cccc-0123456789ab",
                "/users/{id}/orders/{id}",
            ),
            ("/users/1234", "/users/{id}"),
            ("/users/0", "/users/{id}"),
            ("", "/"),
            ("/", "/"),
            ("*", "*"),
            ("/users/", "/users/"),
            ("/users", "/users"),
            ("//a", "//a"),
            ("/api/v1/users", "/api/v1/users"),
            ("/html5/index.html", "/html5/index.html"),
            ("/favicon.ico", "/favicon.ico"),
            ("/oauth2/token", "/oauth2/token"),
            ("/sha256/x509", "/sha256/x509"),
            (
                "/.well-known/openid-configuration",
                "/.well-known/openid-configuration",
            ),
            (
                "/get-all-customer-orders-by-region",
                "/get-all-customer-orders-by-region",
            ),
            ("/u/9F8E7D6C-AAAA-BBBB-CCCC-0123456789AB", "/u/{id}"),
            ("/objects/507f1f77bcf86cd799439011", "/objects/{id}"),
            ("/blobs/deadbeefcafebabe", "/blobs/{id}"),
            ("/blobs/deadbeefcafebab", "/blobs/deadbeefcafebab"),
            ("/c/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/c/{id}"),
            ("/customers/cus_NffrFeUfNV2Hib", "/customers/{id}"),
            ("/invoices/INV-2024-0001", "/invoices/{id}"),
            ("/archive/2024-06-01/x", "/archive/{id}/x"),
            ("/users/bob@example.com", "/users/{id}"),
            ("/search/hello%20world", "/search/{id}"),
            ("/wiki/caf\u{e9}", "/wiki/{id}"),
            ("/a/b\u{fffd}c/d", "/a/{id}/d"),
            ("/tab/a\tb", "/tab/{id}"),
            ("/v1/users/42/", "/v1/users/{id}/"),
            ("example.com:443", OTHER),
            ("/users/12", "/users/{id}"),
        ];
        for (path, want) in cases {
            assert_eq!(route(path, false), want, "path {path:?}");
        }
    }

    #[test]
    fn truncated_paths_keep_complete_segments_only() {
        let cases = [
            ("/users/12", "/users/{truncated}"),
            ("/users/", "/users/{truncated}"),
            ("/abc", "/{truncated}"),
            ("/a/77/b", "/a/{id}/{truncated}"),
            ("", "{truncated}"),
            ("*", OTHER),
            ("host:4", OTHER),
        ];
        for (path, want) in cases {
            assert_eq!(route(path, true), want, "path {path:?}");
        }
    }

    #[test]
    fn long_routes_are_cut_at_a_segment_boundary() {
        let segment = "abcdefghij"; // 11 bytes with its slash
        let path = format!("/{}", [segment; 20].join("/"));
        let got = route(&path, false);
        // 10 segments (110 bytes) + "/{truncated}" (12) fit in 128; 11 do not.
        assert_eq!(got, format!("/{}/{{truncated}}", [segment; 10].join("/")));
        assert_eq!(got.len(), 122);

        let fits = format!("/{}", "z".repeat(MAX_ROUTE_LEN - 1));
        assert_eq!(route(&fits, false), fits);
        let one_huge_segment = format!("/{}", "z".repeat(MAX_ROUTE_LEN));
        assert_eq!(route(&one_huge_segment, false), "/{truncated}");
    }

    fn limits(services: usize, routes: usize, peers: usize) -> Limits {
        Limits {
            services,
            routes_per_service: routes,
            peers_per_service: peers,
        }
    }

    #[test]
    fn routes_over_budget_overflow_and_admitted_ones_stay() {
        let mut n = Namer::new(limits(10, 2, 10));
        let api = n.service("api", None);
        let a = n.route(api, "/a/1", false);
        let b = n.route(api, "/b", false);
        assert_eq!(n.route(api, "/c", false), RouteId::OVERFLOW);
        assert_eq!(n.route(api, "/a/2", false), a, "same template, same id");
        assert_eq!(n.route(api, "/b", false), b);
        assert_eq!(n.route_label(api, a), "/a/{id}");
        assert_eq!(n.route_label(api, RouteId::OVERFLOW), OVERFLOW);

        // The budget is per service.
        let web = n.service("web", None);
        let c = n.route(web, "/c", false);
        assert!(!c.is_overflow());
        assert_eq!(n.route_label(web, c), "/c");
    }

    #[test]
    fn remembered_paths_name_as_fresh_ones_do() {
        let paths = ["/a/1", "/b", "/a/2", "/c", "/d", "/a/1", "/c", "/b"];
        let mut cached = Namer::new(limits(10, 3, 10));
        let s = cached.service("api", None);
        for round in 0..2 {
            for (i, path) in paths.iter().enumerate() {
                // A namer that never remembers, after the same history.
                let mut fresh = Namer::new(limits(10, 3, 10));
                let f = fresh.service("api", None);
                for earlier in paths.iter().cycle().take(round * paths.len() + i) {
                    fresh.route(f, earlier, false);
                    fresh.services[1].paths.clear();
                }
                let (got, want) = (cached.route(s, path, false), fresh.route(f, path, false));
                assert_eq!(got, want, "round {round}, {path}");
                assert_eq!(cached.route_label(s, got), fresh.route_label(f, want));
            }
        }
        assert_eq!(cached.cached_paths, 5, "distinct whole paths");
        assert_eq!(
            cached.route(s, "/d", false),
            RouteId::OVERFLOW,
            "over budget"
        );
        // Cut paths and long ones are named each time.
        cached.route(s, "/b", true);
        cached.route(s, &format!("/{}", "x".repeat(CACHED_PATH_MAX_LEN)), false);
        assert_eq!(cached.cached_paths, 5);
    }

    #[test]
    fn remembered_paths_are_bounded() {
        let mut n = Namer::new(limits(10, 1000, 10));
        let (a, b) = (n.service("a", None), n.service("b", None));
        let first = n.route(a, "/first", false);
        for i in 0..CACHED_PATHS {
            n.route(if i % 2 == 0 { a } else { b }, &format!("/p{i}"), false);
            assert!(n.cached_paths <= CACHED_PATHS);
        }
        let remembered: usize = n.services.values().map(|s| s.paths.len()).sum();
        assert_eq!(remembered, n.cached_paths);
        assert_eq!(remembered, 1, "all dropped when full, then one added");
        assert_eq!(n.route(a, "/first", false), first, "named again alike");
    }

    #[test]
    fn services_over_budget_share_one_overflow_service() {
        let mut n = Namer::new(limits(2, 1, 10));
        let a = n.service("a", None);
        let b = n.service("b", None);
        assert_eq!(n.service("c", None), ServiceId::OVERFLOW);
        assert_eq!(n.service("d", None), ServiceId::OVERFLOW);
        assert_eq!((n.service("a", None), n.service("b", None)), (a, b));
        assert_eq!(n.service_label(ServiceId::OVERFLOW), OVERFLOW);
        assert_eq!(n.service_label(b), "b");
        // The overflow service has a route budget of its own.
        let r = n.route(ServiceId::OVERFLOW, "/x", false);
        assert_eq!(n.route_label(ServiceId::OVERFLOW, r), "/x");
        assert!(n.route(ServiceId::OVERFLOW, "/y", false).is_overflow());
    }

    #[test]
    fn peers_over_budget_overflow() {
        let mut n = Namer::new(limits(2, 1, 1));
        let s = n.service("client", None);
        let p = n.peer(s, "10.0.0.1:8080".parse().unwrap());
        assert_eq!(
            n.peer_labels(s, p),
            ("10.0.0.1".to_owned(), "8080".to_owned())
        );
        assert_eq!(n.peer(s, "10.0.0.1:8080".parse().unwrap()), p);
        let over = n.peer(s, "[::1]:80".parse().unwrap());
        assert!(over.is_overflow());
        assert_eq!(
            n.peer_labels(s, over),
            (OVERFLOW.to_owned(), OVERFLOW.to_owned())
        );
    }

    #[test]
    fn zero_budgets_send_everything_to_overflow() {
        let mut n = Namer::new(limits(0, 0, 0));
        let s = n.service("a", None);
        assert!(s.is_overflow());
        assert!(n.route(s, "/", false).is_overflow());
        assert!(n.peer(s, "1.2.3.4:5".parse().unwrap()).is_overflow());
    }
}
