//! Latency and throughput bookkeeping: HDR histograms in microseconds and a per-second
//! timeline.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The largest latency recorded exactly (60 s); slower ones are clamped to it.
const MAX_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant digits (0.1 % error).
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::with_precision(3)
    }
}

impl Latency {
    /// A histogram with `sigfig` significant digits (2 for the per-second timeline).
    pub fn with_precision(sigfig: u8) -> Latency {
        Latency {
            hist: Histogram::new_with_bounds(1, MAX_US, sigfig).expect("valid histogram bounds"),
        }
    }

    /// Records one latency (µs; 0 counts as 1, above 60 s as 60 s).
    pub fn record(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, MAX_US));
    }

    /// Adds every value of `other`.
    pub fn add(&mut self, other: &Latency) {
        // Same bounds everywhere; a precision mismatch is still addable.
        let _ = self.hist.add(&other.hist);
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(q)
        }
    }

    /// The summary the reports print.
    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            mean_us: self.hist.mean(),
            p50_us: self.quantile(0.50),
            p90_us: self.quantile(0.90),
            p99_us: self.quantile(0.99),
            p999_us: self.quantile(0.999),
            max_us: self.hist.max(),
        }
    }

    /// Points of the percentile curve (quantile, µs) for plotting, from 0 up to the
    /// largest quantile the data supports (1 - 1/count), at 1, 2, 5 steps of each nine.
    pub fn curve(&self) -> Vec<(f64, u64)> {
        let n = self.count();
        if n == 0 {
            return Vec::new();
        }
        let mut points = Vec::new();
        let top = 1.0 - 1.0 / n as f64;
        for q in [0.0, 0.25, 0.5, 0.75] {
            points.push((q, self.quantile(q)));
        }
        // Tails 10 %, 5 %, 2 %, 1 %, 0.5 %, 0.2 %, 0.1 %, ... down to what the data has.
        'nines: for nines in 1..=7 {
            for m in [1.0, 0.5, 0.2] {
                let q = 1.0 - 10f64.powi(-nines) * m;
                if q > top {
                    break 'nines;
                }
                points.push((q, self.quantile(q)));
            }
        }
        points.push((top, self.hist.max()));
        points.dedup_by(|a, b| (a.0 - b.0).abs() < 1e-12);
        points
    }
}

/// Percentiles of one latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of responses measured.
    pub count: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// One second of a run.
#[derive(Debug, Clone, Default)]
pub struct Second {
    /// Requests that completed in this second (responses and errors).
    pub requests: u64,
    /// Of which with a 2xx status.
    pub ok: u64,
    /// Of which refused by the gateway (4xx/5xx with a deny code).
    pub denied: u64,
    /// Of which without a response.
    pub errors: u64,
    /// Their latencies.
    pub latency: Latency,
}

impl Second {
    fn new() -> Second {
        Second {
            latency: Latency::with_precision(2),
            ..Second::default()
        }
    }

    /// Adds another second's counts.
    pub fn add(&mut self, other: &Second) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.denied += other.denied;
        self.errors += other.errors;
        self.latency.add(&other.latency);
    }
}

/// Per-second counts, indexed by whole seconds since the run started.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    seconds: Vec<Second>,
}

impl Timeline {
    /// The second `index`, created (with the ones before it) if needed.
    pub fn at(&mut self, index: usize) -> &mut Second {
        while self.seconds.len() <= index {
            self.seconds.push(Second::new());
        }
        &mut self.seconds[index]
    }

    /// Adds another timeline second by second.
    pub fn add(&mut self, other: &Timeline) {
        for (i, s) in other.seconds.iter().enumerate() {
            self.at(i).add(s);
        }
    }

    /// The seconds in order.
    pub fn seconds(&self) -> &[Second] {
        &self.seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = Latency::default();
        for us in 1..=10_000 {
            h.record(us);
        }
        let s = h.summary();
        assert_eq!(s.count, 10_000);
        // 3 significant digits: within 0.1 %.
        assert!((s.p50_us as f64 - 5_000.0).abs() <= 5.0, "{s:?}");
        assert!((s.p90_us as f64 - 9_000.0).abs() <= 9.0, "{s:?}");
        assert!((s.p99_us as f64 - 9_900.0).abs() <= 10.0, "{s:?}");
        assert!((s.p999_us as f64 - 9_990.0).abs() <= 10.0, "{s:?}");
        assert!((s.max_us as f64 - 10_000.0).abs() <= 10.0, "{s:?}");
        assert!((s.mean_us - 5_000.5).abs() < 5.0, "{s:?}");
    }

    #[test]
    fn outliers_show_in_the_tail_only() {
        let mut h = Latency::default();
        for _ in 0..999 {
            h.record(100);
        }
        h.record(1_000_000);
        let s = h.summary();
        assert_eq!(s.p50_us, 100);
        assert_eq!(s.p99_us, 100);
        assert!(s.max_us >= 999_000, "{s:?}");
        assert!(s.p999_us <= 100 || s.p999_us >= 999_000);
    }

    #[test]
    fn empty_and_clamped_values() {
        let mut h = Latency::default();
        assert_eq!(h.summary(), LatencySummary::default());
        assert!(h.curve().is_empty());
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.count(), 2);
        assert_eq!(h.quantile(0.0), 1);
        assert!(h.summary().max_us >= MAX_US - MAX_US / 1000);
    }

    #[test]
    fn merged_histograms_equal_one_recording_everything() {
        let mut a = Latency::default();
        let mut b = Latency::default();
        let mut all = Latency::default();
        for us in 0..5_000u64 {
            let v = 50 + us * 7 % 3_000;
            if us % 2 == 0 {
                a.record(v);
            } else {
                b.record(v);
            }
            all.record(v);
        }
        a.add(&b);
        assert_eq!(a.summary(), all.summary());
    }

    #[test]
    fn curve_is_monotonic_and_ends_at_max() {
        let mut h = Latency::default();
        for us in 1..=100_000 {
            h.record(us);
        }
        let c = h.curve();
        assert!(
            c.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{c:?}"
        );
        assert_eq!(c.last().map(|p| p.1), Some(h.summary().max_us));
        assert!(c.iter().any(|p| (p.0 - 0.999).abs() < 1e-9), "{c:?}");
    }

    #[test]
    fn timeline_adds_by_second() {
        let mut a = Timeline::default();
        a.at(2).requests = 3;
        let mut b = Timeline::default();
        b.at(0).requests = 1;
        b.at(2).requests = 4;
        a.add(&b);
        let r: Vec<u64> = a.seconds().iter().map(|s| s.requests).collect();
        assert_eq!(r, vec![1, 0, 7]);
    }
}
