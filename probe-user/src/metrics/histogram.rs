//! The request histograms of aggregation: one thread (the pipeline) observes,
//! any thread (a scrape, the OTLP export) collects.
//!
//! prometheus' `Histogram` lets any thread observe, at the price of four
//! locked read-modify-writes per observation, and aggregation makes three
//! observations per request and side. Here an observation is plain loads and
//! stores to the counts of its label set, and a sequence counter lets a
//! collection retry until it has read them all between two observations.
//! Registered on a `Registry`, a family is exported exactly as a
//! `HistogramVec` with the same name, help, labels and buckets.
use std::sync::{
    atomic::{fence, AtomicU64, Ordering},
    Arc, Mutex, MutexGuard, PoisonError,
};

use prometheus::{
    core::{Collector, Desc},
    proto,
};

/// A histogram family with labels. Clones share the family.
#[derive(Clone)]
pub struct HistogramVec {
    family: Arc<Family>,
}

struct Family {
    desc: Desc,
    /// Upper bounds of the buckets, increasing; `+Inf` is implied.
    bounds: Arc<[f64]>,
    /// Every label set handed out, for collection.
    children: Mutex<Vec<Child>>,
}

struct Child {
    /// Sorted by name, as prometheus exports them.
    labels: Vec<proto::LabelPair>,
    counts: Arc<Counts>,
}

/// The counts of one label set.
struct Counts {
    /// Odd while an observation is under way.
    seq: AtomicU64,
    count: AtomicU64,
    /// The sum, as `f64` bits.
    sum: AtomicU64,
    /// Observations per bucket (not cumulative), one per bound.
    buckets: Box<[AtomicU64]>,
}

/// Where one label set is observed. Not `Clone`: its owner is the one
/// thread that writes its counts.
pub struct Histogram {
    counts: Arc<Counts>,
    bounds: Arc<[f64]>,
}

/// What a collection read of one label set.
#[derive(Debug, PartialEq)]
struct Snapshot {
    count: u64,
    sum: f64,
    buckets: Vec<u64>,
}

impl HistogramVec {
    /// `bounds` must increase (as prometheus' `HistogramOpts` requires).
    pub fn new(
        name: String,
        help: &str,
        labels: &[&str],
        bounds: &[f64],
    ) -> Result<Self, prometheus::Error> {
        let labels = labels.iter().map(|&l| l.to_owned()).collect();
        Ok(HistogramVec {
            family: Arc::new(Family {
                desc: Desc::new(name, help.to_owned(), labels, Default::default())?,
                bounds: bounds.into(),
                children: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The histogram of one label set (values in the order of the family's
    /// labels), at zero. Ask once per label set: the holder of the handle is
    /// its only writer.
    pub fn with_label_values(&self, values: &[String]) -> Histogram {
        let family = &*self.family;
        let mut labels: Vec<proto::LabelPair> = family
            .desc
            .variable_labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name(name.clone());
                pair.set_value(value.clone());
                pair
            })
            .collect();
        labels.sort_by(|a, b| a.name().cmp(b.name()));
        let counts = Arc::new(Counts {
            seq: AtomicU64::new(0),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
            buckets: family.bounds.iter().map(|_| AtomicU64::new(0)).collect(),
        });
        lock(&family.children).push(Child {
            labels,
            counts: counts.clone(),
        });
        Histogram {
            counts,
            bounds: family.bounds.clone(),
        }
    }
}

impl Collector for HistogramVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.family.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let family = &*self.family;
        let metrics = lock(&family.children)
            .iter()
            .map(|child| {
                let snapshot = child.counts.snapshot();
                let mut cumulative = 0;
                let buckets = family
                    .bounds
                    .iter()
                    .zip(&snapshot.buckets)
                    .map(|(&bound, &n)| {
                        cumulative += n;
                        let mut bucket = proto::Bucket::default();
                        bucket.set_cumulative_count(cumulative);
                        bucket.set_upper_bound(bound);
                        bucket
                    })
                    .collect();
                let mut histogram = proto::Histogram::default();
                histogram.set_sample_count(snapshot.count);
                histogram.set_sample_sum(snapshot.sum);
                histogram.set_bucket(buckets);
                let mut metric = proto::Metric::from_label(child.labels.clone());
                metric.set_histogram(histogram);
                metric
            })
            .collect();
        let mut mf = proto::MetricFamily::default();
        mf.set_name(family.desc.fq_name.clone());
        mf.set_help(family.desc.help.clone());
        mf.set_field_type(proto::MetricType::HISTOGRAM);
        mf.set_metric(metrics);
        vec![mf]
    }
}

impl Histogram {
    pub fn observe(&mut self, v: f64) {
        let counts = &*self.counts;
        let seq = counts.seq.load(Ordering::Relaxed);
        counts.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // The odd sequence number is visible before any count changes.
        fence(Ordering::Release);
        if let Some(i) = self.bounds.iter().position(|&bound| v <= bound) {
            add_one(&counts.buckets[i]);
        }
        add_one(&counts.count);
        let sum = f64::from_bits(counts.sum.load(Ordering::Relaxed)) + v;
        counts.sum.store(sum.to_bits(), Ordering::Relaxed);
        counts.seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

/// A plain load and store: the owner of the handle is the only writer.
fn add_one(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

impl Counts {
    /// The counts as of a moment between two observations.
    fn snapshot(&self) -> Snapshot {
        let mut attempts = 0u32;
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before.is_multiple_of(2) {
                let snapshot = Snapshot {
                    count: self.count.load(Ordering::Relaxed),
                    sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
                    buckets: self
                        .buckets
                        .iter()
                        .map(|b| b.load(Ordering::Relaxed))
                        .collect(),
                };
                // The reads above happen before the check below.
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == before {
                    return snapshot;
                }
            }
            // An observation takes nanoseconds, unless its thread was
            // preempted in it: then give it the CPU.
            attempts += 1;
            if attempts.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Children are only pushed; a panic elsewhere cannot leave them half made.
fn lock(children: &Mutex<Vec<Child>>) -> MutexGuard<'_, Vec<Child>> {
    children.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [1.0, 2.5, 10.0];

    fn family() -> HistogramVec {
        HistogramVec::new("h_seconds".into(), "help", &["b", "a"], &BOUNDS).unwrap()
    }

    fn text(registry: &prometheus::Registry) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut out)
            .unwrap();
        out
    }

    #[test]
    fn exported_as_prometheus_histogram_vec() {
        let values = [0.5, 1.0, 2.0, 3.0, 100.0, 0.0];
        let ours = prometheus::Registry::new();
        let family = family();
        ours.register(Box::new(family.clone())).unwrap();
        let theirs = prometheus::Registry::new();
        let reference = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("h_seconds", "help").buckets(BOUNDS.to_vec()),
            &["b", "a"],
        )
        .unwrap();
        theirs.register(Box::new(reference.clone())).unwrap();
        assert_eq!(text(&ours), text(&theirs), "nothing observed yet");
        // Label sets made in an order that is not the export's.
        for labels in [["y", "1"], ["x", "2"]] {
            let owned = labels.map(str::to_owned);
            let mut h = family.with_label_values(&owned);
            let r = reference.with_label_values(&labels);
            for v in values {
                h.observe(v);
                r.observe(v);
            }
        }
        assert_eq!(text(&ours), text(&theirs));
        assert!(text(&ours).contains(r#"h_seconds_bucket{a="1",b="y",le="2.5"} 4"#));
    }

    #[test]
    fn a_snapshot_is_never_read_mid_observation() {
        let family = family();
        let mut h = family.with_label_values(&["x".into(), "y".into()]);
        let counts = h.counts.clone();
        let reader = std::thread::spawn(move || {
            for _ in 0..20_000 {
                let s = counts.snapshot();
                // Every value observed is 2.0: one bucket, an exact sum.
                assert_eq!(s.buckets, [0, s.count, 0]);
                assert_eq!(s.sum, 2.0 * s.count as f64);
            }
        });
        for _ in 0..200_000 {
            h.observe(2.0);
        }
        reader.join().unwrap();
        assert_eq!(
            h.counts.snapshot(),
            Snapshot {
                count: 200_000,
                sum: 400_000.0,
                buckets: vec![0, 200_000, 0],
            }
        );
    }
}
