//! A log-linear latency histogram in the spirit of HdrHistogram.
//!
//! Values (nanoseconds) below 128 are counted exactly; above, each power of two is split into 64
//! equal buckets, so a reported quantile is within 1/64 (1.6 %) of the true value. Min, max, count
//! and sum are exact. Histograms of different clients merge by adding buckets.

/// Values below this are their own bucket.
const EXACT: u64 = 128;
/// Buckets per power of two above `EXACT`.
const SUB: u64 = 64;
/// Enough buckets for every u64.
const BUCKETS: usize = (57 * SUB + 2 * SUB) as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    sum_sq: f64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros() as u64;
    let shift = msb - 6; // v >> shift is in [64, 128)
    (shift * SUB + (v >> shift)) as usize
}

/// The smallest and largest value that fall in bucket `idx`.
fn bucket_bounds(idx: usize) -> (u64, u64) {
    let idx = idx as u64;
    if idx < EXACT {
        return (idx, idx);
    }
    let shift = idx / SUB - 1;
    let m = idx % SUB + SUB;
    let lo = m << shift;
    (lo, lo + ((1u64 << shift) - 1))
}

impl Histogram {
    pub fn new() -> Self {
        Histogram { counts: vec![0; BUCKETS], count: 0, sum: 0, sum_sq: 0.0, min: u64::MAX, max: 0 }
    }

    pub fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.sum_sq += (v as f64) * (v as f64);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    pub fn stddev(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let m = self.mean();
        (self.sum_sq / self.count as f64 - m * m).max(0.0).sqrt()
    }

    /// The value at quantile `q` (0..=1): the highest value equivalent to the bucket holding the
    /// ceil(q * count)-th smallest recorded value, clamped to the exact min and max.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (idx, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_bounds(idx).1.clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        let mut next = 0u64;
        for idx in 0..BUCKETS {
            let (lo, hi) = bucket_bounds(idx);
            assert_eq!(lo, next, "bucket {idx} starts where the previous ended");
            assert!(hi >= lo);
            assert_eq!(bucket_of(lo), idx);
            assert_eq!(bucket_of(hi), idx);
            if hi == u64::MAX {
                assert_eq!(idx, BUCKETS - 1);
                return;
            }
            next = hi + 1;
        }
        panic!("buckets end before u64::MAX at {next}");
    }

    #[test]
    fn bucket_width_is_within_one_sixty_fourth() {
        for v in [128u64, 1000, 123_456, 9_999_999_999, u64::MAX / 3] {
            let (lo, hi) = bucket_bounds(bucket_of(v));
            assert!(lo <= v && v <= hi);
            assert!(((hi - lo) as f64) / (lo as f64) <= 1.0 / 64.0, "{v}: [{lo}, {hi}]");
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), 100);
        assert!((h.mean() - 50.5).abs() < 1e-9);
    }

    #[test]
    fn quantiles_of_large_values_are_within_precision() {
        let mut h = Histogram::new();
        // 1 ms .. 1000 ms in 1 ms steps (nanoseconds).
        for i in 1..=1000u64 {
            h.record(i * 1_000_000);
        }
        for (q, want) in [(0.5, 500e6), (0.9, 900e6), (0.99, 990e6), (0.999, 999e6)] {
            let got = h.quantile(q) as f64;
            assert!(got >= want && got <= want * (1.0 + 1.0 / 64.0), "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(1.0), 1_000_000_000);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for i in 0..5000u64 {
            let v = i * i * 37 % 10_000_019;
            if i % 3 == 0 { a.record(v) } else { b.record(v) }
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a.count(), all.count());
        assert_eq!((a.min(), a.max()), (all.min(), all.max()));
        for q in [0.1, 0.5, 0.9, 0.99, 0.999] {
            assert_eq!(a.quantile(q), all.quantile(q));
        }
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let h = Histogram::new();
        assert_eq!((h.count(), h.min(), h.max(), h.quantile(0.99)), (0, 0, 0, 0));
        assert_eq!(h.mean(), 0.0);
    }
}
