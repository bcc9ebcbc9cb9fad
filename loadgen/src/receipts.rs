//! When each simulated agent received each task: the raw data of the fan-out benchmark.
//!
//! Delivery latency is "receipt time minus send time", and both ends run on one machine with
//! one clock, so the load generator only has to write down *when* each `Task` arrived; the
//! benchmark script knows when it approved the plan (or triggered the bare server) and
//! computes the percentiles. With `--receipts FILE` every receipt becomes one line
//! `<unix time in µs> <operation id>`, written by a thread of its own so that recording
//! costs the receiving task nothing but a channel send.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use tokio::sync::mpsc;

/// Where receipts go; cheap to clone. `Receipts::off()` records nothing.
#[derive(Clone, Debug)]
pub struct Receipts {
    tx: Option<mpsc::UnboundedSender<String>>,
}

/// Microseconds since the Unix epoch, the unit of the receipts file.
pub fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

impl Receipts {
    pub fn off() -> Self {
        Receipts { tx: None }
    }

    /// Writes receipts to `path` (created or truncated) until every clone is dropped; the
    /// returned thread handle ends after the last line is flushed.
    pub fn to_file(path: &Path) -> anyhow::Result<(Self, std::thread::JoinHandle<()>)> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating --receipts {}", path.display()))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let shown = path.display().to_string();
        let writer = std::thread::Builder::new()
            .name("receipts".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                // Flush after each burst, so a script polling the file sees every receipt
                // within moments of its arrival.
                while let Some(line) = rx.blocking_recv() {
                    let mut ok = out.write_all(line.as_bytes()).is_ok();
                    while let Ok(line) = rx.try_recv() {
                        ok &= out.write_all(line.as_bytes()).is_ok();
                    }
                    if !ok || out.flush().is_err() {
                        tracing::error!(file = %shown, "cannot write receipts; stopping");
                        return;
                    }
                }
            })
            .context("starting the receipts writer")?;
        Ok((Receipts { tx: Some(tx) }, writer))
    }

    /// Notes that `operation_id` arrived at `at_us`.
    pub fn record(&self, at_us: i64, operation_id: &str) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(format!("{at_us} {operation_id}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_receipt_is_one_line_with_its_time_and_operation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("receipts");
        let (r, writer) = Receipts::to_file(&path).expect("receipts file");
        r.clone().record(1_700_000_000_000_001, "p.a.upgrade-1");
        r.record(1_700_000_000_000_002, "p.b.upgrade-1");
        drop(r);
        writer
            .join()
            .expect("writer ends when the last clone is dropped");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            "1700000000000001 p.a.upgrade-1\n1700000000000002 p.b.upgrade-1\n"
        );
        Receipts::off().record(1, "ignored");
    }
}
