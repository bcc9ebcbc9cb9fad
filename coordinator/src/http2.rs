//! The HTTP/2 settings of the coordinator's gRPC server, in one place.
//!
//! The bare baseline of the benchmarks (`skoala-loadgen bare-server`) builds its server from
//! the same [`Http2Settings`], so the "coordinator / bare transport" ratios compare our code,
//! not two transports. Every default below is backed by a figure in BENCHMARKS.md, section
//! "HTTP/2 settings", measured by `scripts/bench-h2.sh`; change one only with a new figure.
//!
//! The hidden `--http2-*` flags of `skoala-coordinator serve` ([`Http2Args`]) exist for that
//! script's sweeps. Operators have no reason to touch them, so `--help` does not list them.

use std::time::Duration;

/// What the coordinator's HTTP/2 server is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    /// Send an HTTP/2 PING after this long without receiving any frame; `None`: never.
    ///
    /// For agent sessions this is a backstop, not the detector: an agent silent for the
    /// agent timeout (60 s) has its session closed by the application anyway, before the
    /// keepalive's 60 s + 20 s would (BENCHMARKS.md, *HTTP/2 settings*). What the keepalive still
    /// covers is every stream without an application heartbeat (`skoalactl plan watch`, a
    /// connection with no stream at all) whose peer vanished without a FIN.
    ///
    /// Why not 20 s, which notices a silent agent sooner: hyper re-arms the keepalive timer
    /// every interval on every connection even when no ping is due (heartbeats keep it from
    /// pinging), and at 10,000 agents that cost the idle coordinator measurably more CPU
    /// than 60 s (BENCHMARKS.md); the 20 s gained on a dead agent buy nothing, since a plan
    /// waits minutes for an upgrade anyway.
    pub keepalive_interval: Option<Duration>,
    /// How long to wait for the PING's acknowledgement before closing the connection.
    pub keepalive_timeout: Duration,
    /// Flow-control window of each stream we receive on (agent → coordinator: uploads).
    ///
    /// It bounds what one stream can make the coordinator buffer before the session loop
    /// reads it, and the upload throughput over a long round trip (window / RTT). hyper's
    /// server default (1 MiB): uploads are values backups of a few KiB, and at 1 MiB a 200 ms
    /// link still carries 5 MiB/s.
    pub stream_window: u32,
    /// Flow-control window of a whole connection we receive on (≥ `stream_window`).
    pub connection_window: u32,
    /// Most streams one connection may have open at once; HEADERS beyond it are refused
    /// (`RST_STREAM REFUSED_STREAM`) and compliant clients queue instead.
    ///
    /// An agent needs 1 (its Session stream; Register uses a connection of its own),
    /// skoalactl 1 (its calls are sequential). tonic passes no limit to hyper unless told, so
    /// without one a peer that merely completed a TLS handshake (no client certificate:
    /// `Register` is open to anyone) could hold streams without end, each a waiting handler
    /// holding coordinator memory. 100 (the limit gRPC clients assume, and nginx's order of
    /// magnitude) leaves room for automation multiplexing calls on one channel and caps such a
    /// peer at the order of its receive window (BENCHMARKS.md, *HTTP/2 settings*).
    pub max_concurrent_streams: Option<u32>,
}

/// See [`Http2Settings::max_concurrent_streams`].
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// hyper's server default for both windows.
const HYPER_DEFAULT_WINDOW: u32 = 1024 * 1024;

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            keepalive_interval: Some(Duration::from_secs(60)),
            keepalive_timeout: Duration::from_secs(20),
            stream_window: HYPER_DEFAULT_WINDOW,
            connection_window: HYPER_DEFAULT_WINDOW,
            max_concurrent_streams: Some(MAX_CONCURRENT_STREAMS),
        }
    }
}

impl Http2Settings {
    /// A tonic server builder with these settings.
    pub fn server(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(self.keepalive_interval)
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window.max(self.stream_window))
            .max_concurrent_streams(self.max_concurrent_streams)
    }
}

/// Hidden flags overriding [`Http2Settings`], for `scripts/bench-h2.sh` only.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Http2Args {
    /// BENCHMARKS ONLY: HTTP/2 keepalive ping interval, or `off`.
    #[arg(long, value_name = "DURATION|off", value_parser = parse_optional_duration, hide = true)]
    pub http2_keepalive_interval: Option<OrOff<Duration>>,
    /// BENCHMARKS ONLY: how long to wait for a keepalive ping's acknowledgement.
    #[arg(long, value_name = "DURATION", value_parser = skoala_support::duration::parse, hide = true)]
    pub http2_keepalive_timeout: Option<Duration>,
    /// BENCHMARKS ONLY: receive window of each stream, in bytes.
    #[arg(long, value_name = "BYTES", hide = true)]
    pub http2_stream_window: Option<u32>,
    /// BENCHMARKS ONLY: receive window of each connection, in bytes.
    #[arg(long, value_name = "BYTES", hide = true)]
    pub http2_connection_window: Option<u32>,
    /// BENCHMARKS ONLY: most concurrent streams per connection, or `off` for no limit.
    #[arg(long, value_name = "N|off", value_parser = parse_optional_u32, hide = true)]
    pub http2_max_concurrent_streams: Option<OrOff<u32>>,
}

impl Http2Args {
    /// The defaults with the given flags applied.
    pub fn settings(&self) -> Http2Settings {
        let d = Http2Settings::default();
        Http2Settings {
            keepalive_interval: self
                .http2_keepalive_interval
                .map_or(d.keepalive_interval, |v| v.0),
            keepalive_timeout: self.http2_keepalive_timeout.unwrap_or(d.keepalive_timeout),
            stream_window: self.http2_stream_window.unwrap_or(d.stream_window),
            connection_window: self.http2_connection_window.unwrap_or(d.connection_window),
            max_concurrent_streams: self
                .http2_max_concurrent_streams
                .map_or(d.max_concurrent_streams, |v| v.0),
        }
    }
}

/// A flag's value, or `off` (`OrOff(None)`); a type of its own because clap reads
/// `Option<Option<T>>` as "a flag with an optional value".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrOff<T>(pub Option<T>);

fn parse_optional_duration(
    s: &str,
) -> Result<OrOff<Duration>, skoala_support::duration::ParseDurationError> {
    if s.trim() == "off" {
        return Ok(OrOff(None));
    }
    skoala_support::duration::parse(s).map(|d| OrOff(Some(d)))
}

fn parse_optional_u32(s: &str) -> Result<OrOff<u32>, String> {
    if s.trim() == "off" {
        return Ok(OrOff(None));
    }
    s.trim()
        .parse()
        .map(|n| OrOff(Some(n)))
        .map_err(|e| format!("{s:?} is not a number or `off`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        h2: Http2Args,
    }

    #[test]
    fn no_flags_are_the_defaults() {
        let cli = Cli::try_parse_from(["x"]).expect("parse");
        assert_eq!(cli.h2.settings(), Http2Settings::default());
    }

    #[test]
    fn flags_override_and_off_disables() {
        let cli = Cli::try_parse_from([
            "x",
            "--http2-keepalive-interval",
            "off",
            "--http2-stream-window",
            "65535",
            "--http2-max-concurrent-streams",
            "off",
        ])
        .expect("parse");
        let s = cli.h2.settings();
        assert_eq!(s.keepalive_interval, None);
        assert_eq!(s.stream_window, 65535);
        assert_eq!(s.max_concurrent_streams, None);
        let cli = Cli::try_parse_from(["x", "--http2-keepalive-interval", "1m"]).expect("parse");
        assert_eq!(
            cli.h2.settings().keepalive_interval,
            Some(Duration::from_secs(60))
        );
        assert!(Cli::try_parse_from(["x", "--http2-max-concurrent-streams", "many"]).is_err());
    }
}
