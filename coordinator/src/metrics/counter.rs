//! Counters keyed by a small, bounded set of label values.
//!
//! Callers only ever pass label values from fixed vocabularies (message types, audit kinds,
//! outcomes, step names), never a cluster id or anything an agent can choose freely, so the
//! number of series stays bounded however large the fleet grows.

use std::collections::BTreeMap;
use std::sync::Mutex;

use skoala_support::prometheus::{Kind, Writer};

/// One counter family with fixed label names.
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        CounterVec {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `n` to the series for `values` (one per label name, in order).
    pub fn add(&self, values: &[&str], n: u64) {
        if values.len() != self.labels.len() {
            return;
        }
        let key = values.iter().map(|v| v.to_string()).collect();
        *self
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += n;
    }

    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// The current value of one series (0 if never counted).
    #[cfg(test)]
    pub fn get(&self, values: &[&str]) -> u64 {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    pub fn render(&self, w: &mut Writer) {
        w.family(self.name, Kind::Counter, self.help);
        let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for (values, n) in map.iter() {
            let labels: Vec<(&str, &str)> = self
                .labels
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str))
                .collect();
            w.sample(self.name, &labels, *n as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_label_set() {
        let c = CounterVec::new("t_total", "T.", &["a", "b"]);
        c.inc(&["x", "y"]);
        c.add(&["x", "y"], 2);
        c.inc(&["x"]); // wrong arity: dropped
        assert_eq!(c.get(&["x", "y"]), 3);
        let mut w = Writer::default();
        c.render(&mut w);
        assert_eq!(
            w.finish(),
            "# HELP t_total T.\n# TYPE t_total counter\nt_total{a=\"x\",b=\"y\"} 3\n"
        );
    }
}
