//! Wall-clock time for what leaves sonde with absolute timestamps (spans):
//! the kernel stamps events with CLOCK_MONOTONIC (`bpf_ktime_get_ns`), which
//! counts from boot.
//!
//! One offset, realtime − monotonic, converts every timestamp, so a span's
//! duration is exactly the monotonic one: a clock step cannot stretch or
//! reverse it. The offset goes stale as NTP slews the realtime clock (by at
//! most 500 ppm, 30 ms a minute) or steps it; `resync` every few seconds
//! keeps it within a fraction of a millisecond.
use std::time::{SystemTime, UNIX_EPOCH};

/// Readings of both clocks, in ns.
pub trait Clocks {
    /// Since the Unix epoch (CLOCK_REALTIME).
    fn realtime_ns(&self) -> u64;
    /// The kernel's event clock (CLOCK_MONOTONIC).
    fn monotonic_ns(&self) -> u64;
}

/// The host's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClocks;

impl Clocks for SystemClocks {
    fn realtime_ns(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    fn monotonic_ns(&self) -> u64 {
        monotonic_ns()
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Readings taken per sync; the tightest one is kept.
const SAMPLES: usize = 3;

/// Converts monotonic ns to Unix ns with an offset sampled at construction
/// and at each `resync`.
#[derive(Clone, Debug)]
pub struct WallClock<C: Clocks = SystemClocks> {
    clocks: C,
    /// realtime − monotonic.
    offset_ns: i64,
}

impl WallClock {
    pub fn new() -> Self {
        WallClock::with_clocks(SystemClocks)
    }
}

impl Default for WallClock {
    fn default() -> Self {
        WallClock::new()
    }
}

impl<C: Clocks> WallClock<C> {
    pub fn with_clocks(clocks: C) -> Self {
        let mut clock = WallClock {
            clocks,
            offset_ns: 0,
        };
        clock.resync();
        clock
    }

    /// Samples the offset again. Each sample reads realtime between two
    /// monotonic readings and pairs it with their midpoint; the sample with
    /// the closest pair wins, as a preemption between reads skews one.
    pub fn resync(&mut self) {
        let mut best: Option<(u64, i64)> = None;
        for _ in 0..SAMPLES {
            let before = self.clocks.monotonic_ns();
            let real = self.clocks.realtime_ns();
            let after = self.clocks.monotonic_ns();
            let gap = after.saturating_sub(before);
            let mid = before.saturating_add(gap / 2);
            let offset = i128::from(real) - i128::from(mid);
            let offset = offset.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
            if best.is_none_or(|(best_gap, _)| gap < best_gap) {
                best = Some((gap, offset));
            }
        }
        if let Some((_, offset)) = best {
            self.offset_ns = offset;
        }
    }

    /// Unix ns of a monotonic timestamp (saturating at both ends).
    pub fn to_unix_ns(&self, monotonic_ns: u64) -> u64 {
        monotonic_ns.saturating_add_signed(self.offset_ns)
    }

    pub fn to_system_time(&self, monotonic_ns: u64) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_nanos(self.to_unix_ns(monotonic_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    /// Clocks that return scripted readings, in the order they are read.
    #[derive(Default)]
    struct Script {
        realtime: RefCell<VecDeque<u64>>,
        monotonic: RefCell<VecDeque<u64>>,
    }

    /// (monotonic before, realtime, monotonic after)
    type Sample = (u64, u64, u64);

    impl Script {
        /// Readings for one sync: (monotonic before, realtime, monotonic
        /// after) per sample.
        fn of(samples: &[Sample]) -> Self {
            let script = Script::default();
            script.push(samples);
            script
        }

        fn push(&self, samples: &[Sample]) {
            assert_eq!(samples.len(), SAMPLES);
            for &(before, real, after) in samples {
                self.monotonic.borrow_mut().extend([before, after]);
                self.realtime.borrow_mut().push_back(real);
            }
        }
    }

    impl Clocks for &Script {
        fn realtime_ns(&self) -> u64 {
            self.realtime
                .borrow_mut()
                .pop_front()
                .expect("realtime read")
        }

        fn monotonic_ns(&self) -> u64 {
            self.monotonic
                .borrow_mut()
                .pop_front()
                .expect("monotonic read")
        }
    }

    #[test]
    fn offset_is_taken_at_the_tightest_sample() {
        // (samples, offset)
        let cases: [(&[Sample], i64); 4] = [
            (&[(1_000, 5_000, 1_010); 3], 3_995),
            // A preemption between the reads of the first sample.
            (
                &[
                    (1_000, 9_000, 5_000),
                    (6_000, 10_004, 6_010),
                    (7_000, 11_000, 7_020),
                ],
                3_999,
            ),
            // Equal gaps: the first wins.
            (&[(0, 100, 10), (20, 150, 30), (40, 175, 50)], 95),
            // Realtime behind monotonic (a clock set before the epoch).
            (&[(5_000, 1_000, 5_000); 3], -4_000),
        ];
        for (samples, offset) in cases {
            let script = Script::of(samples);
            let clock = WallClock::with_clocks(&script);
            assert_eq!(clock.offset_ns, offset, "{samples:?}");
            assert!(script.monotonic.borrow().is_empty(), "every reading used");
        }
    }

    #[test]
    fn conversion_adds_the_offset_and_saturates() {
        let script = Script::of(&[(100, 1_700_000_000_000_000_000, 100); 3]);
        let clock = WallClock::with_clocks(&script);
        assert_eq!(clock.to_unix_ns(100), 1_700_000_000_000_000_000);
        assert_eq!(clock.to_unix_ns(1_100), 1_700_000_000_000_001_000);
        assert_eq!(clock.to_unix_ns(u64::MAX), u64::MAX);

        let script = Script::of(&[(5_000, 1_000, 5_000); 3]);
        let behind = WallClock::with_clocks(&script);
        assert_eq!(behind.to_unix_ns(6_000), 2_000);
        assert_eq!(behind.to_unix_ns(3_000), 0);
    }

    #[test]
    fn resync_follows_a_clock_step() {
        let script = Script::of(&[(1_000, 2_000, 1_000); 3]);
        let mut clock = WallClock::with_clocks(&script);
        assert_eq!(clock.to_unix_ns(10_000), 11_000);
        // Realtime stepped forward by one second.
        script.push(&[(20_000, 1_000_021_000, 20_000); 3]);
        clock.resync();
        assert_eq!(clock.to_unix_ns(10_000), 1_000_011_000);
        assert_eq!(clock.to_unix_ns(20_000), 1_000_021_000);
    }

    #[test]
    fn system_clocks_agree_with_system_time() {
        let clock = WallClock::new();
        let now = SystemClocks.realtime_ns();
        let converted = clock.to_unix_ns(SystemClocks.monotonic_ns());
        // Only a clock step during the test would break this.
        assert!(
            converted.abs_diff(now) < 1_000_000_000,
            "{converted} vs {now}"
        );
    }
}
