//! sonde's own log: lines to stderr, filtered by `--log-level`.
//!
//! A log line that cannot be written (stderr closed, its pipe's reader gone)
//! must not take monitoring down: the standard writer panics on it. Lines
//! that fail are counted instead, and `/metrics` shows the count
//! (`sonde_log_lines_lost_total`).
use std::{
    io::{self, Write},
    sync::atomic::{AtomicU64, Ordering},
};

static LINES_LOST: AtomicU64 = AtomicU64::new(0);

/// Log lines that could not be written since sonde started.
pub fn lines_lost() -> u64 {
    LINES_LOST.load(Ordering::Relaxed)
}

/// Installs the subscriber; `filter` was validated when the settings were read.
pub fn init(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(|| Stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        // Its own report of a failed write goes to stderr too, and panics
        // when that is what failed.
        .log_internal_errors(false)
        .init();
}

/// Writes one formatted line to stderr, counting it when it fails.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let written = io::stderr().lock().write_all(buf);
        if written.is_err() {
            LINES_LOST.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One line on stderr for a fatal error, written whether or not anyone reads it.
pub fn fatal(line: &str) {
    let _ = writeln!(io::stderr(), "sonde: {line}");
}
