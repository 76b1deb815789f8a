//! Latency histograms (hdrhistogram, microseconds) and how workers hand them to the
//! coordinator: as plain bucket counts, `[[value, count], ...]`, where `value` is the
//! highest value equivalent to the bucket, so re-recording it lands in the same bucket and
//! the merge is exact.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency tracked: 10 minutes (longer values are clamped to it).
const HIGH_US: u64 = 600_000_000;

pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, HIGH_US, 3).expect("histogram bounds"))
    }
}

/// Bucket counts of a histogram, for the worker → coordinator message.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Buckets(pub Vec<(u64, u64)>);

/// The figures a result quotes, in microseconds.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: u64,
}

impl Hist {
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, HIGH_US));
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn buckets(&self) -> Buckets {
        Buckets(
            self.0
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub fn merge(&mut self, b: &Buckets) {
        for &(value, count) in &b.0 {
            self.0.saturating_record_n(value.clamp(1, HIGH_US), count);
        }
    }

    pub fn summary(&self) -> Summary {
        if self.0.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.0.len(),
            p50: self.0.value_at_quantile(0.50),
            p90: self.0.value_at_quantile(0.90),
            p99: self.0.value_at_quantile(0.99),
            p999: self.0.value_at_quantile(0.999),
            max: self.0.max(),
            mean: self.0.mean().round() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_through_buckets_is_exact() {
        let mut a = Hist::default();
        let mut b = Hist::default();
        let mut both = Hist::default();
        for v in 1..5000u64 {
            let x = v * v % 100_003 + 1;
            if v % 3 == 0 {
                a.record(x);
            } else {
                b.record(x);
            }
            both.record(x);
        }
        let mut merged = Hist::default();
        let wire_a = serde_json::to_string(&a.buckets()).unwrap();
        let wire_b = serde_json::to_string(&b.buckets()).unwrap();
        merged.merge(&serde_json::from_str(&wire_a).unwrap());
        merged.merge(&serde_json::from_str(&wire_b).unwrap());
        assert_eq!(merged.summary(), both.summary());
        assert_eq!(merged.count(), 4999);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Hist::default().summary(), Summary::default());
    }
}
