//! The line of stages, wired: records → `event::decode` → `conn::Tracker` →
//! `metrics::Aggregator`, plus the housekeeping that keeps every table
//! bounded (expiry of idle connections, forgetting exited processes).
//!
//! `Pipeline` is pure: it takes records and a clock and never touches the
//! kernel, except through the `PidFilter` seam. `run` is the loop that feeds
//! it from an `EventSource` on its own thread.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use regex::Regex;

use crate::{
    clock::monotonic_ns,
    conn::{Observer, Tracker, TrackerConfig},
    event::{self, Event},
    exchange::Observation,
    loader::Probe,
    logging,
    metrics::{Aggregator, SelfMetrics},
    otlp::{DropReason, SpanSender},
    process::{Names, ProcFs},
    server::Probes,
    source::EventSource,
    trace::{Assembler, SpanRecord},
};

/// Where `--exe` matches found after start-up are sent (the kernel's pid
/// filter in the daemon).
pub trait PidFilter {
    fn allow(&mut self, tgid: u32);
}

impl PidFilter for Probe {
    fn allow(&mut self, tgid: u32) {
        self.allow_pid(tgid);
    }
}

pub struct Pipeline {
    tracker: Tracker,
    aggregator: Aggregator,
    names: Names,
    own: SelfMetrics,
    /// `--exe`: processes that exec a matching image are added to the filter.
    exe: Option<Regex>,
    proc: ProcFs,
    /// Present when traces are exported.
    tracing: Option<Tracing>,
}

/// The span stages: assembly (ids, parentage, the stitching window) and the
/// hand-off to the exporter's queue.
pub struct Tracing {
    assembler: Assembler,
    sender: SpanSender,
    spans: Vec<SpanRecord>,
    /// `dropped_window` of the assembler already reported to the exporter's counter.
    window_drops_reported: u64,
}

impl Tracing {
    pub fn new(assembler: Assembler, sender: SpanSender) -> Self {
        Self {
            assembler,
            sender,
            spans: Vec::new(),
            window_drops_reported: 0,
        }
    }

    /// Sends what the assembler emitted; drops are counted by the sender.
    fn send(&mut self) {
        for span in self.spans.drain(..) {
            self.sender.try_send(span);
        }
        let dropped = self.assembler.stats().dropped_window;
        if dropped > self.window_drops_reported {
            self.sender
                .count_dropped(DropReason::WindowFull, dropped - self.window_drops_reported);
            self.window_drops_reported = dropped;
        }
    }
}

impl Pipeline {
    pub fn new(
        tracker: TrackerConfig,
        aggregator: Aggregator,
        names: Names,
        own: SelfMetrics,
        exe: Option<Regex>,
        proc: ProcFs,
        tracing: Option<Tracing>,
    ) -> Self {
        Self {
            tracker: Tracker::new(tracker),
            aggregator,
            names,
            own,
            exe,
            proc,
            tracing,
        }
    }

    /// One ring-buffer record. Malformed records are counted, never fatal.
    pub fn on_record(&mut self, record: &[u8], filter: &mut dyn PidFilter) {
        // Matched by reference: moving the event out of the result copied
        // it with loads wider than the stores that made it (a stall).
        match &event::decode(record) {
            Ok(ev) => self.on_event(ev, filter),
            Err(e) => self.own.record_decode_error(e),
        }
    }

    pub fn on_event<P: AsRef<[u8]>>(&mut self, ev: &Event<P>, filter: &mut dyn PidFilter) {
        match ev {
            Event::Open(open) => self.names.on_conn_open(open),
            Event::ProcessExec { tgid } => {
                // The process is another program now: name it afresh.
                self.names.forget(*tgid);
                if let Some(re) = &self.exe {
                    if self.proc.matches(*tgid, re) {
                        filter.allow(*tgid);
                    }
                }
            }
            _ => {}
        }
        let (tracker, mut stages) = self.tracker_and_stages();
        tracker.handle(ev, &mut stages);
        self.send_spans();
        if let Event::ProcessExit { tgid } = ev {
            // After the tracker's last observations for it were named.
            self.names.forget(*tgid);
        }
    }

    /// Periodic housekeeping; `now_ns` on the kernel's clock (CLOCK_MONOTONIC).
    pub fn tick(&mut self, now_ns: u64) {
        let (tracker, mut stages) = self.tracker_and_stages();
        tracker.expire(now_ns, &mut stages);
        self.send_spans();
        self.own.set_connections_tracked(self.tracker.len());
        if let Some(t) = &mut self.tracing {
            t.assembler.flush_due(now_ns, &mut t.spans);
            t.send();
        }
    }

    /// At shutdown: spans still held in the stitching window go out now.
    pub fn finish(&mut self) {
        if let Some(t) = &mut self.tracing {
            t.assembler.flush_due(u64::MAX, &mut t.spans);
            t.send();
        }
    }

    /// The tracker, and the stages it hands observations to, borrowed apart.
    fn tracker_and_stages(&mut self) -> (&mut Tracker, Stages<'_>) {
        let Self {
            tracker,
            aggregator,
            names,
            tracing,
            ..
        } = self;
        let stages = Stages {
            aggregator,
            names,
            tracing: tracing.as_mut(),
        };
        (tracker, stages)
    }

    fn send_spans(&mut self) {
        if let Some(t) = &mut self.tracing {
            t.send();
        }
    }
}

/// The stages after the tracker, handed each observation as it is made.
struct Stages<'a> {
    aggregator: &'a mut Aggregator,
    names: &'a mut Names,
    tracing: Option<&'a mut Tracing>,
}

impl Observer for Stages<'_> {
    fn observe(&mut self, observation: &Observation) {
        self.aggregator.observe(observation, self.names);
        if let Some(t) = &mut self.tracing {
            t.assembler.observe(observation, self.names, &mut t.spans);
        }
    }
}

/// How often the slower chores run inside the drain loop.
const TICK: Duration = Duration::from_secs(1);
const SWEEP: Duration = Duration::from_secs(30);

/// The drain loop: runs until `stop` is set. Each pass waits at most
/// `interval` (the kernel wakes it earlier when the buffer fills up), then
/// drains everything waiting.
pub fn run(
    mut source: impl EventSource,
    mut pipeline: Pipeline,
    mut probe: Probe,
    health: Probes,
    interval: Duration,
    stop: Arc<AtomicBool>,
) {
    let proc = pipeline.proc.clone();
    let mut last_tick = Instant::now();
    let mut last_sweep = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        source.wait(interval);
        let n = source.drain(&mut |rec| pipeline.on_record(rec, &mut probe));
        pipeline.own.record_events_read(n as u64);
        health.beat();
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            pipeline.tick(monotonic_ns());
            pipeline.own.set_kernel_counters(&probe.counters());
            pipeline.own.set_log_lines_lost(logging::lines_lost());
        }
        if last_sweep.elapsed() >= SWEEP {
            last_sweep = Instant::now();
            let removed = probe.sweep(|tgid| proc.exists(tgid));
            if removed > 0 {
                tracing::debug!(removed, "kernel connections of exited processes removed");
            }
        }
    }
    // Whatever is still waiting belongs to traffic seen before the signal.
    let n = source.drain(&mut |rec| pipeline.on_record(rec, &mut probe));
    pipeline.own.record_events_read(n as u64);
    pipeline.finish();
}
