//! The Prometheus text exposition format (version 0.0.4), written by hand: a family header
//! (`# HELP`, `# TYPE`) and samples with escaped label values.
//!
//! Small on purpose: every family the coordinator and the agent expose goes through
//! [`Writer`], so the escaping and number formatting rules live in one place.

use std::fmt::Write as _;

/// A metric family's type, as `# TYPE` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever goes up (restarts at 0 with the process); names end in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// `_bucket`, `_sum` and `_count` samples of one distribution.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Accumulates one exposition.
#[derive(Default)]
pub struct Writer {
    out: String,
}

impl Writer {
    /// Starts a family. Every family gets its header even with no samples, so a dashboard or
    /// an alert can tell "zero so far" (family present) from "not exposed by this version".
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample: `name{k="v",...} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&number(value));
        self.out.push('\n');
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The exposition written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Label values escape backslash, double quote and newline (and nothing else).
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: integers without a fraction, `+Inf`/`-Inf`/`NaN` spelled as Prometheus
/// expects.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_samples_and_escaping() {
        let mut w = Writer::default();
        w.family("x_total", Kind::Counter, "Things.\nMore");
        w.sample("x_total", &[("a", "q\"b\\c\nd"), ("b", "")], 3.0);
        w.single("y", Kind::Gauge, "Y.", 0.25);
        assert_eq!(
            w.finish(),
            "# HELP x_total Things.\\nMore\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"b\\\\c\\nd\",b=\"\"} 3\n\
             # HELP y Y.\n# TYPE y gauge\ny 0.25\n"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(1800.0), "1800");
        assert_eq!(number(0.05), "0.05");
        assert_eq!(number(-2.0), "-2");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
