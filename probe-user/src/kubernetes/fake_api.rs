//! A scripted stand-in for the API server in tests: HTTP/1.1 on loopback,
//! plain or over TLS with the certificate of `tests/fixtures/kubernetes/tls/`,
//! answering each request with the next step of a script made of the
//! recorded responses in `tests/fixtures/kubernetes/`.
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// A recorded response of the API server.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/kubernetes/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub enum Reply {
    /// A whole body with this status.
    Body(u16, Vec<u8>),
    /// A watch: each line of the body one chunk, then the end.
    Watch(Vec<u8>),
}

pub struct FakeApi {
    pub addr: SocketAddr,
    /// Request targets (path and query) in the order they came.
    requests: Arc<Mutex<Vec<Request>>>,
    tls: bool,
    task: tokio::task::JoinHandle<()>,
}

/// What the fake server was asked.
#[derive(Clone)]
struct Request {
    target: String,
    authorization: Option<String>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    /// Answers requests for the targets of `script`, in order; a request
    /// for another target gets a 500, and requests past the script's end
    /// get no answer (a watch with nothing to say).
    pub async fn start(script: Vec<(String, Reply)>) -> FakeApi {
        Self::serve(script, None).await
    }

    /// [`start`](Self::start) over TLS, as `https://127.0.0.1:<port>`.
    pub async fn start_tls(script: Vec<(String, Reply)>) -> FakeApi {
        let certs = CertificateDer::pem_slice_iter(&fixture("tls/server.crt"))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(&fixture("tls/server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Self::serve(
            script,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn serve(
        script: Vec<(String, Reply)>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let seen = requests.clone();
        let secure = tls.is_some();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (script, seen, tls) = (script.clone(), seen.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                answer(stream, script, seen).await;
                            }
                        }
                        None => answer(stream, script, seen).await,
                    }
                });
            }
        });
        FakeApi {
            addr,
            requests,
            tls: secure,
            task,
        }
    }

    pub fn url(&self) -> http::Uri {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr).parse().unwrap()
    }

    /// Request targets (path and query) in the order they came.
    pub fn requests(&self) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests.iter().map(|r| r.target.clone()).collect()
    }

    /// The `Authorization` header of each request, in the same order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        let requests = self.requests.lock().unwrap();
        requests.iter().map(|r| r.authorization.clone()).collect()
    }
}

async fn answer(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    script: Arc<Mutex<VecDeque<(String, Reply)>>>,
    seen: Arc<Mutex<Vec<Request>>>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
    let authorization = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_owned())
    });
    seen.lock().unwrap().push(Request {
        target: target.clone(),
        authorization,
    });
    let step = {
        let mut script = script.lock().unwrap();
        match script.front() {
            Some((want, _)) if *want == target => script.pop_front().map(|(_, r)| r),
            Some(_) => Some(Reply::Body(500, b"unexpected request".to_vec())),
            None => None,
        }
    };
    let Some(reply) = step else {
        // Hold the connection open, as a quiet watch does.
        let _ = stream.read(&mut buf).await;
        return;
    };
    let response = match reply {
        Reply::Body(status, body) => {
            let mut r = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(&body);
            r
        }
        Reply::Watch(lines) => {
            let mut r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
            for line in lines.split_inclusive(|&b| b == b'\n') {
                r.extend_from_slice(format!("{:x}\r\n", line.len()).as_bytes());
                r.extend_from_slice(line);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        }
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}
