//! Prometheus histograms with fixed buckets, keyed by a small set of label values.
//!
//! Observations are rare (one per executor step), so a mutex around plain numbers is simpler
//! than atomics and just as fast in practice. Buckets are stored per bucket and made
//! cumulative when rendered, with the `+Inf` bucket equal to `_count` as the format requires.

use std::collections::BTreeMap;
use std::sync::Mutex;

use skoala_support::prometheus::{Kind, Writer};

/// Executor step durations: from a 50 ms preflight to a 30 min `helm upgrade --wait`.
pub const STEP_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
];

#[derive(Debug, Clone, Default, PartialEq)]
struct Series {
    /// Observations per bucket (not cumulative); one more than the bounds, for `+Inf`.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// One histogram family with fixed label names.
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    series: Mutex<BTreeMap<Vec<String>, Series>>,
}

impl HistogramVec {
    /// `bounds` must be sorted ascending (checked in tests, not at run time).
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Self {
        HistogramVec {
            name,
            help,
            labels,
            bounds,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records `value` (seconds) for `values` (one per label name, in order). Negative and
    /// NaN values (a clock step on the reporting side) are dropped rather than corrupting
    /// `_sum`.
    pub fn observe(&self, values: &[&str], value: f64) {
        if value.is_nan() || value < 0.0 || values.len() != self.labels.len() {
            return;
        }
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.entry(key).or_insert_with(|| Series {
            buckets: vec![0; self.bounds.len() + 1],
            ..Default::default()
        });
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        s.buckets[i] += 1;
        s.sum += value;
        s.count += 1;
    }

    pub fn render(&self, w: &mut Writer) {
        w.family(self.name, Kind::Histogram, self.help);
        let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = format!("{}_bucket", self.name);
        let sum = format!("{}_sum", self.name);
        let count = format!("{}_count", self.name);
        for (values, s) in map.iter() {
            let labels: Vec<(&str, &str)> = self
                .labels
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str))
                .collect();
            let mut cumulative = 0;
            for (i, n) in s.buckets.iter().enumerate() {
                cumulative += n;
                let le = match self.bounds.get(i) {
                    Some(b) => skoala_support::prometheus::number(*b),
                    None => "+Inf".to_string(),
                };
                let mut with_le = labels.clone();
                with_le.push(("le", &le));
                w.sample(&bucket, &with_le, cumulative as f64);
            }
            w.sample(&sum, &labels, s.sum);
            w.sample(&count, &labels, s.count as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_sorted() {
        assert!(STEP_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(STEP_BUCKETS.first(), Some(&0.05));
        assert_eq!(STEP_BUCKETS.last(), Some(&1800.0));
    }

    #[test]
    fn cumulative_buckets_inf_sum_count() {
        const B: &[f64] = &[1.0, 10.0];
        let h = HistogramVec::new("d_seconds", "D.", &["step"], B);
        h.observe(&["a"], 0.5);
        h.observe(&["a"], 1.0); // le is inclusive
        h.observe(&["a"], 5.0);
        h.observe(&["a"], 100.0);
        h.observe(&["a"], -1.0); // dropped
        h.observe(&["a"], f64::NAN); // dropped
        h.observe(&["a", "extra"], 1.0); // wrong arity: dropped
        let mut w = Writer::default();
        h.render(&mut w);
        assert_eq!(
            w.finish(),
            "# HELP d_seconds D.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{step=\"a\",le=\"1\"} 2\n\
             d_seconds_bucket{step=\"a\",le=\"10\"} 3\n\
             d_seconds_bucket{step=\"a\",le=\"+Inf\"} 4\n\
             d_seconds_sum{step=\"a\"} 106.5\n\
             d_seconds_count{step=\"a\"} 4\n"
        );
    }
}
