//! The demo's child processes and this process's own Ctrl-C.
//!
//! Children run in their own process groups so a Ctrl-C at the terminal
//! reaches only xtask, which then stops them in a chosen order with chosen
//! signals (sonde must get SIGINT to detach and exit 0). Should xtask die
//! without that, the kernel sends each child its stop signal
//! (PR_SET_PDEATHSIG), so nothing is left running.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A child process whose output goes to a log file.
pub struct Supervised {
    name: &'static str,
    child: Child,
    stop_signal: libc::c_int,
    log: PathBuf,
}

impl Supervised {
    /// Starts `command` with stdout and stderr written to `log` (replacing
    /// an older one). The child will be stopped with `stop_signal`.
    pub fn spawn(
        name: &'static str,
        command: &mut Command,
        log: &Path,
        stop_signal: libc::c_int,
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: runs between fork and exec, so it only makes async-signal-safe
        // calls (prctl, getppid) and does not allocate.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, stop_signal as libc::c_ulong) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", crate::cmd::display(command)))?;
        Ok(Self {
            name,
            child,
            stop_signal,
            log: log.to_owned(),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status if the child has ended.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Sends the stop signal and waits up to `grace` for the child to end,
    /// then kills it. Returns how it ended.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscall; the child is not reaped yet, so the pid is still its own.
        unsafe { libc::kill(pid, self.stop_signal) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within {grace:?}; killing it", self.name);
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM only set a flag that [`interrupted`] reads.
pub fn catch_interrupts() -> Result<()> {
    let handler: extern "C" fn(libc::c_int) = on_interrupt;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let previous = unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error()).context("installing a signal handler");
        }
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
