//! A histogram of durations on plain atomics: one observation is three relaxed adds on
//! shared cache lines, with no lock, so the request path of every worker can record
//! latency without waiting for another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A Prometheus histogram of durations (exposed in seconds). Cheap to clone: clones
/// share the counts.
#[derive(Debug, Clone)]
pub struct Histogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds in nanoseconds, ascending.
    bounds_ns: Box<[u64]>,
    /// The same bounds in seconds, for the exposition.
    bounds_s: Box<[f64]>,
    /// One count per bound, plus one for `+Inf` (not cumulative; the encoder sums).
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (seconds, ascending).
    pub fn new(bounds_s: &[f64]) -> Histogram {
        Histogram {
            inner: Arc::new(Inner {
                bounds_ns: bounds_s.iter().map(|s| (s * 1e9) as u64).collect(),
                bounds_s: bounds_s.into(),
                counts: (0..=bounds_s.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_ns: AtomicU64::new(0),
                count: AtomicU64::new(0),
            }),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.inner.bounds_ns.partition_point(|b| *b < ns);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let i = &self.inner;
        let buckets: Vec<(f64, u64)> = i
            .bounds_s
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(i.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' sum, not the separate counter, so a scrape racing an
        // observation still shows a consistent `+Inf` bucket and count.
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = i.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(1_000)); // exactly on the bound: le="0.001"
        h.observe(Duration::from_micros(1_001));
        h.observe(Duration::from_secs(1));
        let counts: Vec<u64> = h
            .inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [1, 1, 1]);
        assert_eq!(h.count(), 3);
    }
}
