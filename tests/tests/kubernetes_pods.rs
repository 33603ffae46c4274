//! Pod metadata without a cluster: a Python server moved into a cgroup named
//! as the kubelet names a container's, an API server answering with the
//! recorded responses of `probe-user/tests/fixtures/kubernetes/`, and sonde
//! labelling the server's series with its pod, container and Deployment.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sonde_tests::clients::HttpConn;
use sonde_tests::names::{self, SERVER_DURATION_COUNT};
use sonde_tests::servers;
use sonde_tests::sonde::Sonde;

/// The first pod of the recorded list: Deployment cart, container cart.
const POD_UID: &str = "2f1e8a4c-3b7d-4c9e-8f1a-6d5b4c3a2e10";
const CONTAINER: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A container's cgroup, made for the test and removed after it.
struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// The systemd driver's layout on cgroup v2, else cgroupfs' in the v1
    /// pids hierarchy.
    fn for_container() -> Cgroup {
        let root = Path::new("/sys/fs/cgroup");
        let (base, levels) = if root.join("cgroup.controllers").exists() {
            let slice = POD_UID.replace('-', "_");
            (
                root.to_owned(),
                vec![
                    "kubepods.slice".to_owned(),
                    format!("kubepods-pod{slice}.slice"),
                    format!("cri-containerd-{CONTAINER}.scope"),
                ],
            )
        } else {
            (
                root.join("pids"),
                vec![
                    "kubepods".to_owned(),
                    format!("pod{POD_UID}"),
                    CONTAINER.to_owned(),
                ],
            )
        };
        let mut dirs = Vec::new();
        let mut dir = base;
        for level in levels {
            dir = dir.join(level);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                dirs.push(dir.clone());
            }
        }
        Cgroup { dirs }
    }

    fn enter(&self, pid: u32) {
        let procs = self.dirs.last().unwrap().join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).unwrap();
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            // The server's process may take a moment to be gone.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serves the recorded pod list, ReplicaSet and Job; watches get no answer.
fn fake_api_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut watches = Vec::new();
        for stream in listener.incoming().flatten() {
            if let Some(watch) = answer(stream) {
                watches.push(watch);
            }
        }
    });
    port
}

fn answer(mut stream: TcpStream) -> Option<TcpStream> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or_default();
    let fixture = if target.contains("watch=true") {
        return Some(stream);
    } else if target == "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a" {
        "pod-list.json"
    } else if target.contains("/replicasets/") {
        "replicaset.json"
    } else if target.contains("/jobs/") {
        "job.json"
    } else {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        return None;
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../probe-user/tests/fixtures/kubernetes")
        .join(fixture);
    let body = std::fs::read(path).unwrap();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
    None
}

#[test]
fn series_of_a_server_in_a_pod_carry_its_pod_and_workload() {
    let cgroup = Cgroup::for_container();
    let in_pod = servers::python();
    cgroup.enter(in_pod.pid());
    let on_host = servers::python();
    let api = fake_api_server();
    let sonde = Sonde::start(&[
        "--port".into(),
        in_pod.port().to_string(),
        "--port".into(),
        on_host.port().to_string(),
        "--kubernetes".into(),
        "--kubernetes-api".into(),
        format!("http://127.0.0.1:{api}"),
        "--node-name".into(),
        "node-a".into(),
    ])
    .unwrap();
    // sonde may be ready before its first list of pods: wait for it.
    let start = std::time::Instant::now();
    while !sonde.output().contains("pods of this node listed") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            sonde.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for server in [&in_pod, &on_host] {
        let mut conn = HttpConn::connect(server.port()).unwrap();
        assert_eq!(conn.get("/fast").unwrap().status, 200);
    }

    let cart = [
        ("k8s_namespace_name", "shop"),
        ("k8s_pod_name", "cart-7d4b9c6f5d-x8k2p"),
        ("k8s_container_name", "cart"),
        ("k8s_deployment_name", "cart"),
        ("k8s_replicaset_name", "cart-7d4b9c6f5d"),
        ("k8s_statefulset_name", ""),
        ("k8s_daemonset_name", ""),
        ("k8s_cronjob_name", ""),
        ("k8s_job_name", ""),
    ];
    // A host process has the same labels, empty.
    let host = cart.map(|(name, _)| (name, ""));
    let host_service = on_host.service_name();
    for (service, pod) in [("cart", cart), (host_service.as_str(), host)] {
        let mut labels = names::server(service, "GET", "/fast", "200").to_vec();
        labels.extend(pod);
        let scrape = sonde.await_value(SERVER_DURATION_COUNT, &labels, 1.0);
        let series: Vec<_> = scrape.find(SERVER_DURATION_COUNT, &labels).collect();
        assert_eq!(series.len(), 1);
        // Exactly these labels and the network protocol version.
        assert_eq!(series[0].labels.len(), labels.len() + 1, "{:?}", series[0]);
    }
}
