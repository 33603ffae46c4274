//! sonde's life as a daemon: SIGTERM and SIGINT unload every eBPF program
//! and exit 0, SIGKILL leaves nothing behind either and a new sonde takes
//! over, the health endpoints answer, a stderr nobody reads does not stop
//! it, and start-up failures (not privileged, metrics port taken) end in one
//! clear stderr line.
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sonde_tests::clients::HttpConn;
use sonde_tests::names::{self, SERVER_DURATION_COUNT};
use sonde_tests::process::{free_port, poll, run_to_exit, Finished};
use sonde_tests::servers;
use sonde_tests::sonde::{sonde_bin, Sonde};

/// Every program sonde loads (bpftool shows names cut to 15 bytes; these fit).
const SONDE_PROGRAMS: [&str; 7] = [
    "process_exec",
    "process_exit",
    "process_fork",
    "sock_destroy",
    "sock_recv",
    "sock_send",
    "sock_state",
];
/// After sonde exits, the kernel frees its programs and maps asynchronously.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const NOBODY: u32 = 65534;

/// The BPF objects of `kind` ("prog", "map" or "link") in the kernel, as
/// `bpftool -j <kind> show` describes them.
fn bpftool_show(kind: &str) -> Vec<Value> {
    let output = Command::new("bpftool")
        .args(["-j", kind, "show"])
        .output()
        .expect("run bpftool (installed by `cargo xtask setup`)");
    assert!(output.status.success(), "bpftool {kind} show: {output:?}");
    match serde_json::from_slice(&output.stdout) {
        Ok(Value::Array(objects)) => objects,
        other => panic!("bpftool {kind} show printed no JSON array: {other:?}"),
    }
}

/// The number `key` of a bpftool object.
fn number(object: &Value, key: &str) -> u64 {
    object[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in bpftool's {object}"))
}

/// The BPF programs or maps (`kind`: "prog" or "map") loaded in the kernel,
/// as (id, name).
fn loaded(kind: &str) -> Vec<(u64, String)> {
    bpftool_show(kind)
        .iter()
        .map(|object| {
            let name = object["name"].as_str().unwrap_or_default();
            (number(object, "id"), name.to_string())
        })
        .collect()
}

/// Every BPF link in the kernel as (link id, program id).
fn link_programs() -> Vec<(u64, u64)> {
    bpftool_show("link")
        .iter()
        .map(|object| (number(object, "id"), number(object, "prog_id")))
        .collect()
}

/// The ids of the BPF objects process `pid` holds open, from the `key` line
/// ("prog_id" or "map_id") of its fds' fdinfo.
fn held_ids(pid: u32, key: &str) -> BTreeSet<u64> {
    let fdinfo = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap_or_else(|e| panic!("list /proc/{pid}/fdinfo: {e}"));
    let prefix = format!("{key}:");
    fdinfo
        .filter_map(|fd| std::fs::read_to_string(fd.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// What one sonde holds in the kernel: its programs and maps (ids).
struct Held {
    programs: BTreeSet<u64>,
    maps: BTreeSet<u64>,
}

impl Held {
    /// Checks sonde has loaded exactly its programs, and notes what it holds.
    fn by(sonde: &Sonde) -> Held {
        let programs = held_ids(sonde.pid(), "prog_id");
        let mut names: Vec<String> = loaded("prog")
            .into_iter()
            .filter(|(id, _)| programs.contains(id))
            .map(|(_, name)| name)
            .collect();
        names.sort();
        assert_eq!(names, SONDE_PROGRAMS, "programs loaded by sonde");
        let held = Held {
            programs,
            maps: held_ids(sonde.pid(), "map_id"),
        };
        assert!(!held.maps.is_empty(), "sonde holds no BPF maps");
        let linked: BTreeSet<u64> = link_programs().into_iter().map(|(_, p)| p).collect();
        assert!(
            held.programs.is_subset(&linked),
            "some of sonde's programs {:?} are attached by no link",
            held.programs
        );
        held
    }

    /// Waits until the kernel has released all of it, and no BPF link still
    /// runs one of its programs, after sonde ended. Ids, not names, so other
    /// sondes on the machine don't count.
    fn assert_released(&self) {
        let remaining = || {
            let still = |kind: &str, ids: &BTreeSet<u64>| -> Vec<String> {
                loaded(kind)
                    .into_iter()
                    .filter(|(id, _)| ids.contains(id))
                    .map(|(id, name)| format!("{kind} {id} {name}"))
                    .collect()
            };
            let links: Vec<String> = link_programs()
                .into_iter()
                .filter(|(_, prog)| self.programs.contains(prog))
                .map(|(link, prog)| format!("link {link} to prog {prog}"))
                .collect();
            [
                still("prog", &self.programs),
                still("map", &self.maps),
                links,
            ]
        };
        let released = poll(RELEASE_TIMEOUT, Duration::from_millis(50), || {
            remaining().iter().all(Vec::is_empty).then_some(())
        });
        assert!(
            released.is_some(),
            "{RELEASE_TIMEOUT:?} after sonde ended, still loaded: {:?}",
            remaining()
        );
    }
}

/// Starts sonde, stops it with `signal` (asserting exit code 0), and checks
/// none of its programs, maps and links remain.
fn assert_unloads_on(signal: libc::c_int) {
    let sonde = Sonde::watching_ports(&[free_port()]);
    let held = Held::by(&sonde);
    sonde.stop_on(signal);
    held.assert_released();
}

#[test]
fn sigterm_unloads_every_program_and_exits_0() {
    assert_unloads_on(libc::SIGTERM);
}

#[test]
fn sigint_unloads_every_program_and_exits_0() {
    assert_unloads_on(libc::SIGINT);
}

/// SIGKILL gives sonde no chance to detach: the kernel still releases all it
/// held when its fds close with it, and a new sonde on the same port starts
/// and counts from scratch.
#[test]
fn sigkill_leaves_nothing_behind_and_a_new_sonde_takes_over() {
    let server = servers::python();
    let svc = server.service_name();
    let sonde = Sonde::watching_ports(&[server.port()]);
    let held = Held::by(&sonde);
    let mut conn = HttpConn::connect(server.port()).unwrap();
    assert_eq!(conn.get("/fast").unwrap().status, 200);
    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/fast", "200"),
        1.0,
    );
    sonde.kill();
    held.assert_released();

    let sonde = Sonde::watching_ports(&[server.port()]);
    Held::by(&sonde);
    // The same keep-alive connection, older than this sonde, and a new one.
    assert_eq!(conn.get("/fast").unwrap().status, 200);
    let mut fresh = HttpConn::connect(server.port()).unwrap();
    assert_eq!(fresh.get("/fast").unwrap().status, 200);
    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/fast", "200"),
        2.0,
    );
    sonde.stop();
}

/// A log collector that died leaves sonde's stderr a pipe with no reader:
/// every log line fails to be written. sonde goes on counting, counts the
/// lines it lost, and still exits cleanly.
#[test]
fn a_closed_stderr_loses_log_lines_not_monitoring() {
    let server = servers::python();
    let svc = server.service_name();
    let args: Vec<String> = ["--port", &server.port().to_string(), "--log-level", "debug"]
        .map(String::from)
        .to_vec();
    let sonde = Sonde::start_with_closed_output(&args).unwrap();
    let mut conn = HttpConn::connect(server.port()).unwrap();
    for _ in 0..3 {
        assert_eq!(conn.get("/fast").unwrap().status, 200);
    }
    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&svc, "GET", "/fast", "200"),
        3.0,
    );
    // At least the start-up lines ("serving /metrics", "sonde is watching")
    // were lost; the count is published on the pipeline's next tick.
    let scrape = sonde.await_scrape("log lines lost counted", |s| {
        s.sum("sonde_log_lines_lost_total", &[]) >= 2.0
    });
    assert!(
        sonde.output().is_empty(),
        "{}",
        sonde.failure("no output file", &scrape)
    );
    sonde.stop();
}

#[test]
fn health_endpoints_answer() {
    // Sonde::start has already waited for /readyz to say 200.
    let sonde = Sonde::watching_ports(&[free_port()]);
    for (path, status) in [
        ("/readyz", 200),
        ("/healthz", 200),
        ("/metrics", 200),
        ("/no-such-endpoint", 404),
    ] {
        let response = sonde.get(path).unwrap();
        assert_eq!(response.status, status, "GET {path}");
    }
    sonde.stop();
}

/// Asserts sonde refused to start: a non-zero exit and exactly one stderr
/// line, which contains every one of `expected`, and no panic.
fn assert_one_line_refusal(finished: &Finished, expected: &[&str]) {
    let Finished { status, stderr } = finished;
    assert!(
        status.code().is_some_and(|c| c != 0),
        "sonde exited with {status:?}; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "sonde panicked:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "want exactly one line on stderr, got:\n{stderr}"
    );
    for text in expected {
        assert!(
            lines[0].contains(text),
            "the error does not mention {text:?}: {}",
            lines[0]
        );
    }
}

#[test]
fn refuses_to_run_unprivileged() {
    let addr = format!("127.0.0.1:{}", free_port());
    let id = NOBODY.to_string();
    let finished = run_to_exit(
        Command::new("setpriv")
            .args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"])
            .arg(sonde_bin())
            .args(["--metrics-addr", &addr]),
        EXIT_TIMEOUT,
    )
    .unwrap();
    assert_one_line_refusal(&finished, &["root", "CAP_BPF", "CAP_PERFMON"]);
}

#[test]
fn refuses_a_metrics_address_in_use() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let finished = run_to_exit(
        Command::new(sonde_bin()).args(["--metrics-addr", &addr]),
        EXIT_TIMEOUT,
    )
    .unwrap();
    assert_one_line_refusal(&finished, &[&addr]);
    drop(taken);
}
