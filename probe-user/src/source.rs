//! Stage 1: where records come from. The daemon reads the kernel's ring
//! buffer; tests replay recorded records through the same trait, so the rest
//! of the pipeline never knows which.
use std::{os::fd::AsRawFd, time::Duration};

use aya::maps::{MapData, RingBuf};

pub trait EventSource {
    /// Blocks until records may be waiting (the kernel woke us because the
    /// buffer is filling up) or `timeout` has passed (the timed drain).
    fn wait(&mut self, timeout: Duration);
    /// Hands every record available now to `f`; returns how many.
    fn drain(&mut self, f: &mut dyn FnMut(&[u8])) -> usize;
}

/// The kernel's ring buffer. The programs write with BPF_RB_NO_WAKEUP and
/// force a wakeup only past a fill threshold, so at steady load this is a
/// timed drain, not a wakeup per event.
pub struct RingBufSource {
    rb: RingBuf<MapData>,
}

impl RingBufSource {
    pub fn new(rb: RingBuf<MapData>) -> Self {
        Self { rb }
    }
}

impl EventSource for RingBufSource {
    fn wait(&mut self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.rb.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // EINTR or an error just means an early drain.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    }

    fn drain(&mut self, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some(item) = self.rb.next() {
            f(&item);
            n += 1;
        }
        n
    }
}
