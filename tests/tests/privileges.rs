//! Least privilege: once its programs are attached, every thread of sonde
//! holds CAP_SYS_PTRACE and nothing else, can regain nothing, and still does
//! its whole job, including naming a program another user runs.
use sonde_tests::clients::HttpConn;
use sonde_tests::names::{self, SERVER_DURATION_COUNT};
use sonde_tests::process::{exe_basename, free_port};
use sonde_tests::servers;
use sonde_tests::sonde::Sonde;

const NOBODY: u32 = 65534;
const CAP_SYS_PTRACE: u64 = 1 << 19;

/// `field` of /proc/<pid>/task/<tid>/status, for every thread of `pid`.
fn per_thread(pid: u32, field: &str) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list sonde's threads");
    let prefix = format!("{field}:");
    tasks
        .map(|task| {
            let task = task.expect("a thread entry");
            let status = std::fs::read_to_string(task.path().join("status"))
                .unwrap_or_else(|e| panic!("read {:?}/status: {e}", task.path()));
            let comm = status
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .unwrap_or_default()
                .trim()
                .to_string();
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {field} in {:?}/status", task.path()))
                .trim()
                .to_string();
            (comm, value)
        })
        .collect()
}

#[test]
fn after_attach_every_thread_keeps_only_cap_sys_ptrace() {
    let sonde = Sonde::watching_ports(&[free_port()]);
    let threads = per_thread(sonde.pid(), "CapEff");
    assert!(threads.len() > 1, "sonde runs {threads:?}");
    let ptrace_only = format!("{CAP_SYS_PTRACE:016x}");
    for (field, expected) in [
        ("CapEff", ptrace_only.as_str()),
        ("CapPrm", ptrace_only.as_str()),
        ("CapBnd", ptrace_only.as_str()),
        ("CapInh", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "1"),
    ] {
        for (thread, value) in per_thread(sonde.pid(), field) {
            assert_eq!(value, expected, "{field} of sonde's thread {thread}");
        }
    }
    sonde.stop();
}

#[test]
fn without_its_privileges_sonde_still_counts_and_names_another_users_program() {
    let server = servers::system_python_as(NOBODY);
    let exe = exe_basename(server.pid());
    assert_eq!(
        exe, "python3.11",
        "Debian's python3 is not what this test expects"
    );
    let sonde = Sonde::watching_ports(&[server.port()]);
    // http.server speaks HTTP/1.0: a connection per request.
    for _ in 0..3 {
        let mut conn = HttpConn::connect(server.port()).unwrap();
        assert_eq!(conn.get("/").unwrap().status, 200);
    }
    // The executable's name, which only CAP_SYS_PTRACE can read for a
    // process of another user; without it sonde falls back to "python3".
    sonde.await_value(
        SERVER_DURATION_COUNT,
        &names::server(&exe, "GET", "/", "200"),
        3.0,
    );
    sonde.stop();
}
