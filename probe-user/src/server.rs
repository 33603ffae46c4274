//! The daemon's own HTTP endpoint, last stage of the pipeline: `/metrics` for
//! Prometheus, `/healthz` and `/readyz` for Kubernetes probes.
//!
//! Liveness is a heartbeat the pipeline renews, so a wedged pipeline fails its
//! probe even though this server still answers. Readiness is a flag set once
//! every kernel program is attached.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Prometheus text exposition format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
/// Scrapers and probes need a handful; the cap keeps a flood of idle
/// connections from costing more than that.
const MAX_CONNECTIONS: usize = 64;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for responses in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Liveness and readiness as the pipeline reports them. Clones share state.
#[derive(Clone, Debug)]
pub struct Probes {
    inner: Arc<ProbeState>,
}

#[derive(Debug)]
struct ProbeState {
    origin: Instant,
    /// Milliseconds from `origin` to the last heartbeat.
    last_beat_ms: AtomicU64,
    stale_after: Duration,
    ready: AtomicBool,
}

impl Probes {
    /// Alive until `stale_after` passes without a [`beat`](Self::beat); the
    /// first beat is now. Not ready until [`set_ready`](Self::set_ready).
    pub fn new(stale_after: Duration) -> Self {
        Probes {
            inner: Arc::new(ProbeState {
                origin: Instant::now(),
                last_beat_ms: AtomicU64::new(0),
                stale_after,
                ready: AtomicBool::new(false),
            }),
        }
    }

    /// The pipeline is making progress.
    pub fn beat(&self) {
        self.inner
            .last_beat_ms
            .store(self.inner.elapsed_ms(), Ordering::Relaxed);
    }

    /// Every kernel program is attached: traffic is being observed.
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_alive(&self) -> bool {
        let since = self
            .inner
            .elapsed_ms()
            .saturating_sub(self.inner.last_beat_ms.load(Ordering::Relaxed));
        Duration::from_millis(since) <= self.inner.stale_after
    }

    /// Ready and alive: a stalled pipeline observes nothing either.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed) && self.is_alive()
    }
}

impl ProbeState {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The endpoint's socket, bound before anything else happens (a port in
/// use fails before any program is attached) and before the async runtime
/// starts: sonde loads its programs and drops its privileges while it still
/// has a single thread.
pub struct MetricsListener {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
}

impl MetricsListener {
    /// Listens on exactly `addr` (port 0 picks a free port).
    pub fn bind(addr: SocketAddr) -> Result<Self, ServerError> {
        let bind_error = |source| ServerError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(MetricsListener {
            listener,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// The endpoint, bound and not yet serving.
pub struct MetricsServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    endpoints: Arc<Endpoints>,
}

struct Endpoints {
    registry: Registry,
    probes: Probes,
}

impl MetricsServer {
    /// Serves on `bound`; within the async runtime.
    pub fn new(
        bound: MetricsListener,
        registry: Registry,
        probes: Probes,
    ) -> Result<Self, ServerError> {
        let addr = bound.local_addr;
        let listener = TcpListener::from_std(bound.listener)
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok(MetricsServer {
            listener,
            local_addr: addr,
            endpoints: Arc::new(Endpoints { registry, probes }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting and gives the
    /// responses in progress a few seconds to finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(addr = %self.local_addr, "serving /metrics, /healthz, /readyz");
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_closed) => break,
                },
            };
            let stream = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                        continue;
                    }
                },
            };
            let endpoints = self.endpoints.clone();
            let service = service_fn(move |req| {
                let response = endpoints.respond(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                }
                drop(permit);
            });
        }
        drop(self.listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::debug!("metrics connections still open at shutdown");
            }
        }
    }
}

impl Endpoints {
    fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        // HEAD is GET without the body, which hyper leaves out by itself.
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match req.uri().path() {
            "/metrics" => self.metrics(),
            "/healthz" if self.probes.is_alive() => text(StatusCode::OK, "ok\n"),
            "/healthz" => text(StatusCode::SERVICE_UNAVAILABLE, "pipeline stalled\n"),
            "/readyz" if self.probes.is_ready() => text(StatusCode::OK, "ok\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let mut body = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut body) {
            tracing::warn!(error = %e, "encoding metrics failed");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            );
        }
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
        r
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_CONTENT_TYPE));
    r
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;

    /// Status code, headers and body of one request over a fresh connection.
    async fn fetch(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: sonde\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    struct Running {
        addr: SocketAddr,
        probes: Probes,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(stale_after: Duration) -> Running {
        let registry = Registry::new();
        let requests = prometheus::IntCounter::new("test_requests_total", "Test counter.").unwrap();
        registry.register(Box::new(requests.clone())).unwrap();
        requests.inc_by(42);
        let probes = Probes::new(stale_after);
        let bound = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let server = MetricsServer::new(bound, registry, probes.clone()).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            probes,
            stop,
            task,
        }
    }

    #[tokio::test]
    async fn endpoints() {
        let s = start(Duration::from_secs(60)).await;
        let cases = [
            ("GET", "/healthz", 200, "ok\n"),
            ("GET", "/readyz", 503, "not ready\n"),
            ("GET", "/nope", 404, "not found\n"),
            ("POST", "/metrics", 405, "method not allowed\n"),
            ("HEAD", "/healthz", 200, ""),
        ];
        for (method, path, status, body) in cases {
            let got = fetch(s.addr, method, path).await;
            assert_eq!((got.0, got.2.as_str()), (status, body), "{method} {path}");
        }
        let (_, head, _) = fetch(s.addr, "DELETE", "/").await;
        assert!(
            head.to_ascii_lowercase().contains("\r\nallow: get, head"),
            "{head}"
        );

        let (status, head, body) = fetch(s.addr, "GET", "/metrics?x=1").await;
        assert_eq!(status, 200);
        assert!(
            head.contains(&format!("content-type: {METRICS_CONTENT_TYPE}")),
            "{head}"
        );
        assert!(body.contains("\ntest_requests_total 42\n"), "{body}");

        s.probes.set_ready();
        assert_eq!(fetch(s.addr, "GET", "/readyz").await.0, 200);

        s.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.task)
            .await
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(s.addr).await.is_err(),
            "listener closed after shutdown"
        );
    }

    #[tokio::test]
    async fn liveness_follows_the_heartbeat() {
        let s = start(Duration::from_millis(500)).await;
        s.probes.set_ready();
        s.probes.beat();
        assert_eq!(fetch(s.addr, "GET", "/healthz").await.0, 200);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(fetch(s.addr, "GET", "/healthz").await.0, 503);
        assert_eq!(
            fetch(s.addr, "GET", "/readyz").await.0,
            503,
            "stalled is not ready"
        );
        s.probes.beat();
        assert_eq!(fetch(s.addr, "GET", "/healthz").await.0, 200);
        assert_eq!(fetch(s.addr, "GET", "/readyz").await.0, 200);
    }

    #[tokio::test]
    async fn bind_errors_name_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = MetricsListener::bind(addr).err().unwrap();
        assert!(matches!(err, ServerError::Bind { addr: a, .. } if a == addr));
        assert_eq!(err.to_string(), format!("cannot listen on {addr}"));
        let cause = std::error::Error::source(&err).map(|c| c.to_string());
        assert!(cause.is_some_and(|c| c.contains("in use")), "{err:?}");
    }
}
