//! Child processes that cannot outlive a failing test, scratch directories,
//! free ports, and the small waiting loops the tests are built from.
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a process gets to exit after SIGTERM before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(5);

/// A spawned process that is terminated (SIGTERM, then SIGKILL) when the
/// guard is dropped, so a panicking test leaves nothing running.
pub struct ChildGuard {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child) -> ChildGuard {
        ChildGuard {
            name: name.into(),
            child,
            exited: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// SIGTERM, wait up to [`TERMINATE_GRACE`], then SIGKILL. Returns how the
    /// process ended and whether it had to be killed.
    pub fn terminate(&mut self) -> (ExitStatus, bool) {
        self.end_with(libc::SIGTERM)
    }

    /// Like [`terminate`](Self::terminate), asking with `signal` instead.
    pub fn end_with(&mut self, signal: libc::c_int) -> (ExitStatus, bool) {
        if let Some(status) = self.exit_status() {
            return (status, false);
        }
        self.signal(signal);
        let deadline = Instant::now() + TERMINATE_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                return (status, false);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for killed child");
        self.exited = Some(status);
        (status, true)
    }

    pub fn signal(&self, signal: libc::c_int) {
        // The pid is our own unreaped child, so it cannot have been reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let (_, killed) = self.terminate();
        if killed {
            eprintln!(
                "{} did not exit within {TERMINATE_GRACE:?} of SIGTERM; killed",
                self.name
            );
        }
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(purpose: &str) -> Result<TempDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "sonde-tests-{purpose}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// Calls `probe` every `interval` until it returns `Some` or `timeout` passes.
pub fn poll<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(interval);
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    poll(timeout, Duration::from_millis(20), || {
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()
    })
    .map(drop)
    .with_context(|| format!("nothing accepted connections on port {port} within {timeout:?}"))
}

/// Reads the first stdout line of `guard` (servers print their port there),
/// failing if the process exits or stays silent for `timeout`.
pub fn first_stdout_line(guard: &mut ChildGuard, timeout: Duration) -> Result<String> {
    let stdout = guard
        .take_stdout()
        .context("stdout of the child was not piped")?;
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = sender.send(read);
    });
    match receiver.recv_timeout(timeout) {
        Ok(Ok(line)) if !line.is_empty() => Ok(line.trim().to_string()),
        Ok(Ok(_)) => bail!(
            "{} closed stdout without printing (did it crash?)",
            guard.name()
        ),
        Ok(Err(error)) => Err(error).context(format!("read stdout of {}", guard.name())),
        Err(_) => bail!("{} printed nothing within {timeout:?}", guard.name()),
    }
}

/// How a process that was expected to end by itself ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stderr: String,
}

/// Runs `command` (stdin and stdout closed, stderr kept) until it exits by
/// itself, failing if it is still running after `timeout`.
pub fn run_to_exit(command: &mut Command, timeout: Duration) -> Result<Finished> {
    let dir = TempDir::new("run")?;
    let stderr_path = dir.path().join("stderr");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path)?)
        .spawn()
        .with_context(|| format!("spawn {command:?}"))?;
    let mut process = ChildGuard::new(format!("{:?}", command.get_program()), child);
    let status = poll(timeout, Duration::from_millis(20), || process.exit_status());
    let stderr = std::fs::read_to_string(&stderr_path)?;
    match status {
        Some(status) => Ok(Finished { status, stderr }),
        None => bail!("{command:?} still ran after {timeout:?}; its stderr:\n{stderr}"),
    }
}

/// The processes `pid` has forked that are still running (from every thread
/// of it), ascending.
pub fn children(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let mut children: Vec<u32> = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children.sort_unstable();
    children
}

/// What sonde names a process: the file name of its executable.
pub fn exe_basename(pid: u32) -> String {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap_or_else(|e| panic!("readlink /proc/{pid}/exe: {e}"));
    exe.file_name()
        .expect("executable path has a file name")
        .to_string_lossy()
        .into_owned()
}

/// User plus system CPU time `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields are counted
    // from the last ')'. utime and stime are fields 14 and 15 of the line.
    let after_comm = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / per_second)
}

/// Resident memory of `pid` (`VmRSS`), in bytes: what it allocated, its
/// code, and file and device mappings such as a BPF ring buffer.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// The highest resident memory `pid` has had (`VmHWM`), in bytes.
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmHWM")
}

/// Resident anonymous memory of `pid` (`RssAnon`), in bytes: its heap,
/// stacks and other memory it allocated itself.
pub fn anon_rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "RssAnon")
}

/// A `/proc/PID/status` field given in kB, in bytes.
fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .with_context(|| format!("no {field} line in kB in /proc/{pid}/status"))?
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// Prints `line` to the real stderr, past libtest's output capture, for
/// numbers a test run should always show (throughput, counts).
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}
