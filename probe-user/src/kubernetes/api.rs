//! The API server side of pod metadata: list this node's pods, then watch
//! them (`fieldSelector=spec.nodeName=<node>`) into the [`Pods`] index,
//! resuming from the last resourceVersion after a dropped watch, listing
//! again when it has expired (410 Gone), with a backoff between failures.
//!
//! A pod's workload is found from its controller reference; a ReplicaSet's
//! Deployment and a Job's CronJob take one GET of the ReplicaSet or Job,
//! remembered for as long as sonde runs (their owners never change).
//!
//! HTTP/1.1 is hyper's client connection, over rustls (ring) for the real
//! API server and plain TCP for `--kubernetes-api http://…` (tests, a
//! `kubectl proxy`). One connection per request: requests are rare (a list,
//! a watch every few minutes, one GET per new ReplicaSet).
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foldhash::HashMap;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{cgroup::ContainerId, Pod, Pods, Workload};
use crate::cli::Cli;
use crate::otlp_metrics::error_chain;

/// Where a pod's service account credentials are mounted.
pub const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Longest list or watch line read, bytes: a node's pods are far smaller.
const MAX_BODY: usize = 64 << 20;
/// The API server ends a watch after this many seconds; sonde resumes it.
const WATCH_SECONDS: u64 = 300;
/// How long any read may wait past that before the connection is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(WATCH_SECONDS + 30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset) and no --kubernetes-api")]
    NotInCluster,
    #[error("the node's name is unknown: set SONDE_NODE_NAME or --node-name (the downward API's spec.nodeName)")]
    NoNode,
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no usable CA certificate in {0}")]
    Ca(PathBuf),
    #[error("API server address {0}: not an http:// or https:// URL with a host")]
    Address(String),
    #[error("cannot reach the API server")]
    Connect(#[source] io::Error),
    #[error("HTTP exchange with the API server failed")]
    Http(#[from] hyper::Error),
    #[error("the API server answered {0}")]
    Status(StatusCode),
    #[error("unexpected answer from the API server")]
    Json(#[from] serde_json::Error),
    #[error("an answer of the API server is over {MAX_BODY} bytes")]
    TooLarge,
    #[error("the API server did not answer in time")]
    Timeout,
}

/// How to reach the API server, and which node's pods to watch.
#[derive(Clone)]
pub struct ApiConfig {
    base: Uri,
    node: String,
    /// Read again for each request: the kubelet rotates bound tokens.
    token: Option<PathBuf>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ApiConfig {
    /// In a pod: the API server of `KUBERNETES_SERVICE_HOST`/`_PORT` over
    /// TLS, with the service account's token and CA; `api` overrides the
    /// address (`http://` ones are plain HTTP without credentials).
    pub fn in_cluster(node: Option<String>, api: Option<Uri>) -> Result<Self, ApiError> {
        let node = node.filter(|n| !n.is_empty()).ok_or(ApiError::NoNode)?;
        let base = match api {
            Some(uri) => uri,
            None => {
                let host =
                    std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| ApiError::NotInCluster)?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                let url = format!("https://{host}:{port}");
                url.parse().map_err(|_| ApiError::Address(url))?
            }
        };
        Self::new(base, node, Path::new(SERVICE_ACCOUNT))
    }

    /// What the flags ask for: None when pod metadata is off. When on by
    /// default (in a pod), a pod without its node's name runs without, with
    /// a warning; asked for, it is an error.
    pub fn from_cli(cli: &Cli) -> Result<Option<Self>, ApiError> {
        let config = || Self::in_cluster(cli.node_name.clone(), cli.kubernetes_api.clone());
        match cli.kubernetes {
            Some(false) => Ok(None),
            Some(true) => config().map(Some),
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => match config() {
                Ok(config) => Ok(Some(config)),
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "pod metadata is off");
                    Ok(None)
                }
            },
            None => Ok(None),
        }
    }

    /// `base` with the credentials of `service_account` when it is https.
    fn new(base: Uri, node: String, service_account: &Path) -> Result<Self, ApiError> {
        let address = || ApiError::Address(base.to_string());
        base.host().ok_or_else(address)?;
        let secure = match base.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(address()),
        };
        let (token, tls) = if secure {
            let ca = service_account.join("ca.crt");
            (
                Some(service_account.join("token")),
                Some(Arc::new(tls_config(&ca)?)),
            )
        } else {
            (None, None)
        };
        Ok(ApiConfig {
            base,
            node,
            token,
            tls,
        })
    }

    /// Plain HTTP to `base`, no credentials: tests.
    pub fn plain(base: Uri, node: &str) -> Result<Self, ApiError> {
        Self::new(base, node.to_owned(), Path::new("/nonexistent"))
    }
}

fn tls_config(ca: &Path) -> Result<rustls::ClientConfig, ApiError> {
    let pem = std::fs::read(ca).map_err(|source| ApiError::Read {
        path: ca.to_owned(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|_| ApiError::Ca(ca.to_owned()))?;
        roots.add(cert).map_err(|_| ApiError::Ca(ca.to_owned()))?;
    }
    if roots.is_empty() {
        return Err(ApiError::Ca(ca.to_owned()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| ApiError::Ca(ca.to_owned()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Waits between failed attempts: doubling from `first` to `max`, back to
/// `first` after a success.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Keeps `pods` equal to this node's pods, forever: spawn it, abort it.
pub async fn watch_pods(config: ApiConfig, pods: Pods, backoff: Backoff) {
    let mut watcher = Watcher {
        config,
        pods,
        version: None,
        owners: HashMap::default(),
    };
    let mut wait = backoff.first;
    loop {
        let started = tokio::time::Instant::now();
        let watching = watcher.version.is_some();
        let outcome = if watching {
            watcher.watch().await
        } else {
            watcher.list().await
        };
        let resumable = watching && watcher.version.is_some();
        match outcome {
            // A watch that ends at once without expiring (a proxy that cuts
            // streams) is not asked again in a tight loop.
            Ok(()) if resumable && started.elapsed() < backoff.first => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(backoff.max);
            }
            Ok(()) => wait = backoff.first,
            Err(error) => {
                tracing::warn!(
                    error = %error_chain(&error),
                    retry_in = ?wait,
                    "pod metadata: API server request failed"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(backoff.max);
            }
        }
    }
}

struct Watcher {
    config: ApiConfig,
    pods: Pods,
    /// Where the next watch starts; None: list first.
    version: Option<String>,
    /// Workloads above a ReplicaSet or Job, by (namespace, kind, name).
    owners: HashMap<(String, Workload, String), Option<(Workload, String)>>,
}

impl Watcher {
    /// Lists the node's pods into the index, replacing it.
    async fn list(&mut self) -> Result<(), ApiError> {
        let query = format!("/api/v1/pods?{}", self.node_selector());
        let response = self.config.get(&query).await?;
        let list: PodList = serde_json::from_slice(&read_body(response).await?)?;
        let mut pods = Vec::with_capacity(list.items.len());
        for item in list.items {
            pods.push(self.pod(item).await);
        }
        self.pods.replace(&pods);
        tracing::info!(
            pods = self.pods.len(),
            "pod metadata: pods of this node listed"
        );
        self.version = Some(list.metadata.resource_version);
        Ok(())
    }

    /// Applies watch events from `version` until the API server ends the
    /// watch. A 410 Gone (the version is too old) clears `version`.
    async fn watch(&mut self) -> Result<(), ApiError> {
        let from = self.version.clone().unwrap_or_default();
        let query = format!(
            "/api/v1/pods?{}&watch=true&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={}",
            self.node_selector(),
            percent_encode(&from),
        );
        let mut response = match self.config.get(&query).await {
            Err(ApiError::Status(StatusCode::GONE)) => {
                self.expired();
                return Ok(());
            }
            other => other?,
        };
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let frame = tokio::time::timeout(READ_TIMEOUT, response.body_mut().frame())
                .await
                .map_err(|_| ApiError::Timeout)?;
            let Some(frame) = frame else {
                // Ended by the API server (timeoutSeconds): resume from here.
                return Ok(());
            };
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if !self.apply(serde_json::from_slice(&line)?).await? {
                    self.expired();
                    return Ok(());
                }
            }
            if pending.len() > MAX_BODY {
                return Err(ApiError::TooLarge);
            }
        }
    }

    fn expired(&mut self) {
        tracing::info!(
            "pod metadata: the watch's resourceVersion expired (410 Gone), listing again"
        );
        self.version = None;
    }

    /// One watch event; false when it says the watch expired.
    async fn apply(&mut self, event: WatchEvent) -> Result<bool, ApiError> {
        match event.kind.as_str() {
            "ADDED" | "MODIFIED" => {
                let item: PodItem = serde_json::from_value(event.object)?;
                let version = item.metadata.resource_version.clone();
                let pod = self.pod(item).await;
                self.pods.upsert(&pod);
                self.version = Some(version);
            }
            "DELETED" => {
                let item: PodItem = serde_json::from_value(event.object)?;
                self.pods.remove(&item.metadata.uid);
                self.version = Some(item.metadata.resource_version);
            }
            "BOOKMARK" => {
                let item: PodItem = serde_json::from_value(event.object)?;
                self.version = Some(item.metadata.resource_version);
            }
            "ERROR" => {
                let status: Status = serde_json::from_value(event.object)?;
                if status.code == StatusCode::GONE.as_u16() {
                    return Ok(false);
                }
                return Err(ApiError::Status(
                    StatusCode::from_u16(status.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                ));
            }
            other => tracing::debug!(kind = other, "pod metadata: watch event ignored"),
        }
        Ok(true)
    }

    fn node_selector(&self) -> String {
        format!(
            "fieldSelector={}",
            percent_encode(&format!("spec.nodeName={}", self.config.node))
        )
    }

    /// The index's view of a pod: its started containers and its workloads.
    async fn pod(&mut self, item: PodItem) -> Pod {
        let meta = item.metadata;
        let mut workloads = Vec::new();
        if let Some(owner) = controller(&meta.owner_references) {
            let mut next = Some(owner);
            // Two levels at most: ReplicaSet → Deployment, Job → CronJob.
            while let Some((workload, name)) = next.take() {
                if matches!(workload, Workload::ReplicaSet | Workload::Job) {
                    next = self.owner_of(&meta.namespace, workload, &name).await;
                }
                workloads.push((workload, name));
            }
        }
        let status = item.status;
        let containers = status
            .container_statuses
            .iter()
            .chain(&status.init_container_statuses)
            .chain(&status.ephemeral_container_statuses)
            .filter_map(|c| {
                let id = ContainerId::from_status(c.container_id.as_deref()?)?;
                Some((id, c.name.clone()))
            })
            .collect();
        Pod {
            uid: meta.uid,
            namespace: meta.namespace,
            name: meta.name,
            workloads,
            containers,
        }
    }

    /// The workload that controls a ReplicaSet or Job, asked once. A
    /// failed GET is not remembered (asked again at the pod's next event),
    /// except a refusal or absence, which asking again will not change.
    async fn owner_of(
        &mut self,
        namespace: &str,
        workload: Workload,
        name: &str,
    ) -> Option<(Workload, String)> {
        let key = (namespace.to_owned(), workload, name.to_owned());
        if let Some(known) = self.owners.get(&key) {
            return known.clone();
        }
        let collection = match workload {
            Workload::ReplicaSet => "apis/apps/v1",
            _ => "apis/batch/v1",
        };
        let plural = match workload {
            Workload::ReplicaSet => "replicasets",
            _ => "jobs",
        };
        let path = format!(
            "/{collection}/namespaces/{}/{plural}/{}",
            percent_encode(namespace),
            percent_encode(name)
        );
        let found = match self.config.get(&path).await {
            Ok(response) => read_body(response).await.and_then(|body| {
                let object: Owned = serde_json::from_slice(&body)?;
                Ok(controller(&object.metadata.owner_references))
            }),
            Err(e) => Err(e),
        };
        match found {
            Ok(owner) => {
                self.owners.insert(key, owner.clone());
                owner
            }
            Err(ApiError::Status(status @ (StatusCode::FORBIDDEN | StatusCode::NOT_FOUND))) => {
                tracing::warn!(%status, namespace, name, ?workload, "pod metadata: owner not readable");
                self.owners.insert(key, None);
                None
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), namespace, name, "pod metadata: owner lookup failed");
                None
            }
        }
    }
}

/// The workload among `owners` that controls the object, if it is one sonde names.
fn controller(owners: &[OwnerReference]) -> Option<(Workload, String)> {
    let owner = owners.iter().find(|o| o.controller)?;
    Some((Workload::of_kind(&owner.kind)?, owner.name.clone()))
}

/// Query and path values: everything but unreserved characters escaped.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ApiConfig {
    /// GET `path_and_query`; a status other than 200 is an error.
    async fn get(&self, path_and_query: &str) -> Result<hyper::Response<Incoming>, ApiError> {
        let authority = self
            .base
            .authority()
            .ok_or_else(|| ApiError::Address(self.base.to_string()))?;
        let mut request = Request::get(path_and_query)
            .header(header::HOST, authority.as_str())
            .header(header::ACCEPT, "application/json");
        if let Some(path) = &self.token {
            let token = std::fs::read_to_string(path).map_err(|source| ApiError::Read {
                path: path.clone(),
                source,
            })?;
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|_| ApiError::Address(self.base.to_string()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|_| ApiError::Timeout)?
            .map_err(ApiError::Connect)?;
        let response = match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|_| ApiError::Address(self.base.to_string()))?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(ApiError::Connect)?;
                send(stream, request).await?
            }
            None => send(tcp, request).await?,
        };
        match response.status() {
            StatusCode::OK => Ok(response),
            status => Err(ApiError::Status(status)),
        }
    }
}

async fn send<S>(
    stream: S,
    request: Request<Empty<Bytes>>,
) -> Result<hyper::Response<Incoming>, ApiError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "pod metadata: API connection ended");
        }
    });
    let response = tokio::time::timeout(READ_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| ApiError::Timeout)??;
    Ok(response)
}

async fn read_body(response: hyper::Response<Incoming>) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(response.into_body(), MAX_BODY);
    let collected = tokio::time::timeout(READ_TIMEOUT, limited.collect())
        .await
        .map_err(|_| ApiError::Timeout)?;
    match collected {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) => match e.downcast::<hyper::Error>() {
            Ok(e) => Err(ApiError::Http(*e)),
            Err(_) => Err(ApiError::TooLarge),
        },
    }
}

// The parts of the API's objects sonde reads; everything else is ignored.

#[derive(Deserialize)]
struct PodList {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<PodItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct PodItem {
    metadata: ObjectMeta,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    resource_version: String,
    #[serde(default)]
    owner_references: Vec<OwnerReference>,
}

#[derive(Deserialize)]
struct OwnerReference {
    kind: String,
    name: String,
    #[serde(default)]
    controller: bool,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
struct ContainerStatus {
    name: String,
    #[serde(rename = "containerID")]
    container_id: Option<String>,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    code: u16,
}

/// A ReplicaSet or Job: only its owners matter.
#[derive(Deserialize)]
struct Owned {
    metadata: ObjectMeta,
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::cgroup::Container;
    use super::super::fake_api::{fixture, FakeApi, Reply};
    use super::super::Lookup;
    use super::*;

    const SELECTOR: &str = "fieldSelector=spec.nodeName%3Dnode-a";
    const REPLICASET: &str = "/apis/apps/v1/namespaces/shop/replicasets/cart-7d4b9c6f5d";
    const JOB: &str = "/apis/batch/v1/namespaces/shop/jobs/report-29000000";
    const FAST: Backoff = Backoff {
        first: Duration::from_millis(10),
        max: Duration::from_millis(40),
    };

    fn list() -> String {
        format!("/api/v1/pods?{SELECTOR}")
    }

    fn watch(from: &str) -> String {
        format!("/api/v1/pods?{SELECTOR}&watch=true&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion={from}")
    }

    /// The recorded watch stream, cut before its last event (the 410).
    fn watch_stream() -> (Vec<u8>, Vec<u8>) {
        let mut events = fixture("pod-watch.jsonl");
        let last = events[..events.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap();
        let gone = events.split_off(last + 1);
        (events, gone)
    }

    /// Runs the watch against an API server answering `script`, until it
    /// asked for each step in order and then for `last`, which gets no answer.
    async fn run_script(script: Vec<(String, Reply)>, last: String, backoff: Backoff) -> Pods {
        let mut expected: Vec<String> = script.iter().map(|(t, _)| t.clone()).collect();
        expected.push(last);
        let api = FakeApi::start(script).await;
        let pods = Pods::default();
        let config = ApiConfig::plain(api.url(), "node-a").unwrap();
        let task = tokio::spawn(watch_pods(config, pods.clone(), backoff));
        let start = Instant::now();
        while api.requests().len() < expected.len() && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        assert_eq!(api.requests(), expected);
        pods
    }

    /// Label values of the container `digits` repeated, joined with `|`.
    fn labels(pods: &Pods, digits: &str) -> Option<String> {
        let id = ContainerId::from_hex(digits.repeat(64 / digits.len()).as_bytes()).unwrap();
        let found = pods.lookup(&Container { id, pod_uid: None });
        found.labels().map(|l| l.values().join("|"))
    }

    #[tokio::test]
    async fn list_then_watch_events_with_owners_looked_up_once() {
        // Two pods share the ReplicaSet: one GET. The next watch resumes at
        // the bookmark's version.
        let script = vec![
            (list(), Reply::Body(200, fixture("pod-list.json"))),
            (
                REPLICASET.into(),
                Reply::Body(200, fixture("replicaset.json")),
            ),
            (JOB.into(), Reply::Body(200, fixture("job.json"))),
            (watch("1000"), Reply::Watch(watch_stream().0)),
        ];
        let pods = run_script(script, watch("1004"), FAST).await;
        let cases = [
            (
                "a",
                Some("shop|cart-7d4b9c6f5d-x8k2p|cart|cart|cart-7d4b9c6f5d||||"),
            ),
            (
                "b",
                Some("shop|cart-7d4b9c6f5d-x8k2p|istio-proxy|cart|cart-7d4b9c6f5d||||"),
            ),
            (
                "c",
                Some("shop|cart-7d4b9c6f5d-x8k2p|istio-init|cart|cart-7d4b9c6f5d||||"),
            ),
            (
                "d",
                Some("shop|cart-7d4b9c6f5d-q9w7e|cart|cart|cart-7d4b9c6f5d||||"),
            ),
            ("e", Some("db|postgres-0|postgres|||postgres|||")),
            // DELETED by the watch
            ("f", None),
            (
                "0",
                Some("shop|report-29000000-zz9xk|report|||||report|report-29000000"),
            ),
            // ADDED without a container id, then MODIFIED with one
            ("0123456789abcdef", Some("shop|api-0|api||||||")),
        ];
        for (digits, want) in cases {
            assert_eq!(labels(&pods, digits).as_deref(), want, "container {digits}");
        }
        assert_eq!(pods.len(), 5);
    }

    #[tokio::test]
    async fn expired_watches_relist_and_failures_are_retried() {
        let gone_status = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version","reason":"Expired","code":410}"#;
        let script = vec![
            (list(), Reply::Body(200, fixture("pod-list.json"))),
            // a failure is not remembered: the second pod asks again
            (REPLICASET.into(), Reply::Body(503, b"{}".to_vec())),
            (REPLICASET.into(), Reply::Body(503, b"{}".to_vec())),
            (JOB.into(), Reply::Body(403, b"{}".to_vec())),
            // a 410 in the stream
            (watch("1000"), Reply::Watch(watch_stream().1)),
            (list(), Reply::Body(500, b"{}".to_vec())),
            (list(), Reply::Body(200, fixture("pod-relist.json"))),
            // a 410 as the answer
            (watch("2000"), Reply::Body(410, gone_status.to_vec())),
            (list(), Reply::Body(200, fixture("pod-list.json"))),
            // the ReplicaSet failed before, so it is asked again; the Job was forbidden
            (
                REPLICASET.into(),
                Reply::Body(200, fixture("replicaset.json")),
            ),
            // ended by the server: resumed where it was
            (watch("1000"), Reply::Watch(Vec::new())),
        ];
        let pods = run_script(script, watch("1000"), FAST).await;
        assert_eq!(
            labels(&pods, "a").as_deref(),
            Some("shop|cart-7d4b9c6f5d-x8k2p|cart|cart|cart-7d4b9c6f5d||||"),
            "the Deployment, once the ReplicaSet could be read"
        );
        assert_eq!(
            labels(&pods, "0").as_deref(),
            Some("shop|report-29000000-zz9xk|report||||||report-29000000"),
            "the CronJob is unknown: the Job may not be read"
        );
        assert_eq!(labels(&pods, "0123456789abcdef"), None, "relisted");
        assert!(matches!(
            pods.lookup(&Container {
                id: ContainerId::from_hex("e".repeat(64).as_bytes()).unwrap(),
                pod_uid: None
            }),
            Lookup::Container(_)
        ));
    }

    #[tokio::test]
    async fn watches_ended_at_once_are_asked_again_ever_later() {
        let script = vec![
            (list(), Reply::Body(200, fixture("pod-relist.json"))),
            (watch("2000"), Reply::Watch(Vec::new())),
            (watch("2000"), Reply::Watch(Vec::new())),
            (watch("2000"), Reply::Watch(Vec::new())),
        ];
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let start = Instant::now();
        run_script(script, watch("2000"), backoff).await;
        // 100, 200 and 400 ms between the four watches.
        assert!(
            start.elapsed() >= Duration::from_millis(700),
            "{:?}",
            start.elapsed()
        );
    }

    /// The in-cluster path: TLS verified against the service account's CA
    /// (the certificate names 127.0.0.1), and its token, read again for
    /// each request (the kubelet rotates it).
    #[tokio::test]
    async fn over_tls_with_the_service_account() {
        let api = FakeApi::start_tls(vec![
            (list(), Reply::Body(200, fixture("pod-relist.json"))),
            (
                REPLICASET.into(),
                Reply::Body(200, fixture("replicaset.json")),
            ),
        ])
        .await;
        let account = tempfile::tempdir().unwrap();
        std::fs::write(account.path().join("ca.crt"), fixture("tls/ca.crt")).unwrap();
        std::fs::write(account.path().join("token"), "first-token\n").unwrap();
        let config = ApiConfig::new(api.url(), "node-a".into(), account.path()).unwrap();
        let list_body = read_body(config.get(&list()).await.unwrap()).await.unwrap();
        assert_eq!(list_body, fixture("pod-relist.json"));
        std::fs::write(account.path().join("token"), "second-token").unwrap();
        config.get(REPLICASET).await.unwrap();
        let bearer = |t: &str| Some(format!("Bearer {t}"));
        assert_eq!(
            api.authorizations(),
            [bearer("first-token"), bearer("second-token")]
        );

        // A CA that did not sign the server's certificate: no pods.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("ca.crt"), fixture("tls/server.crt")).unwrap();
        std::fs::write(other.path().join("token"), "t").unwrap();
        let config = ApiConfig::new(api.url(), "node-a".into(), other.path()).unwrap();
        let error = config.get(&list()).await.unwrap_err();
        assert!(matches!(error, ApiError::Connect(_)), "{error:?}");
    }

    #[test]
    fn configuration() {
        let sa = tempfile::tempdir().unwrap();
        let node = || Some("node-a".to_owned());
        let https: Uri = "https://10.96.0.1:443".parse().unwrap();
        assert!(matches!(
            ApiConfig::new(https.clone(), "n".into(), sa.path()),
            Err(ApiError::Read { .. })
        ));
        std::fs::write(sa.path().join("ca.crt"), "not a certificate").unwrap();
        assert!(matches!(
            ApiConfig::new(https, "n".into(), sa.path()),
            Err(ApiError::Ca(_))
        ));
        assert!(matches!(
            ApiConfig::in_cluster(None, Some("http://127.0.0.1:1".parse().unwrap())),
            Err(ApiError::NoNode)
        ));
        assert!(matches!(
            ApiConfig::in_cluster(node(), Some("ftp://x".parse().unwrap())),
            Err(ApiError::Address(_))
        ));
        let plain = ApiConfig::in_cluster(node(), Some("http://127.0.0.1:1".parse().unwrap()));
        assert!(plain.is_ok_and(|c| c.tls.is_none() && c.token.is_none()));
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(
            percent_encode("spec.nodeName=ip-10-0-1-17.ec2.internal"),
            "spec.nodeName%3Dip-10-0-1-17.ec2.internal"
        );
        assert_eq!(percent_encode("a b/&"), "a%20b%2F%26");
    }
}
