//! Waiting for the signals that ask a process to stop: SIGTERM (Kubernetes, systemd, `kill`)
//! and SIGINT (Ctrl-C on a terminal).

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

/// Installs handlers for SIGTERM and SIGINT; the returned future resolves on the first of them
/// received from now on.
///
/// Installing is done at once, so a signal that arrives before the future is first polled is
/// not lost. It fails only outside a tokio runtime with signals enabled; the signals then
/// keep their default action (the process ends), which a caller that cannot stop cleanly
/// without them may accept and log.
pub fn requested() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// Sends `signal` to this very process, as `kill` from a shell would.
    fn kill_self(signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal}");
    }

    // One test for both signals: a handler, once installed, stays for the life of the test
    // process, and two tests raising signals at once would see each other's.
    #[tokio::test]
    async fn sigterm_and_sigint_each_resolve_it() {
        for signal in ["-TERM", "-INT"] {
            let stop = super::requested().expect("handlers installed");
            kill_self(signal);
            tokio::time::timeout(Duration::from_secs(10), stop)
                .await
                .unwrap_or_else(|_| panic!("{signal} did not resolve it within 10 s"));
        }
    }
}
