//! `skoala-loadgen open-streams`: one client connection that opens many idle streams, for the
//! max-concurrent-streams benchmark (`scripts/bench-h2.sh`): what each open stream costs the
//! server, and that a bound caps it.
//!
//! The client needs no certificate: each stream is a `Register` call whose request body never
//! comes, which is what any peer that completed a TLS handshake can do. The server holds a
//! handler waiting for the body per stream. The client is tonic's own (hyper's HTTP/2 client),
//! which respects the server's `SETTINGS_MAX_CONCURRENT_STREAMS`: streams over the bound wait
//! in the client, and the server never sees them.

use std::time::Duration;

use anyhow::Context as _;
use skoala_agent::transport::{self, CoordinatorAddr};
use skoala_proto::v1::{RegisterRequest, RegisterResponse};
use tokio_util::sync::CancellationToken;

const REGISTER: &str = "/skoala.fleet.v1.AgentGateway/Register";

/// Opens `count` streams on one connection and holds them for `hold` (or until `signal`
/// resolves).
/// Prints `open-streams requested=K` once every call is started, and `open-streams ended=E`
/// each second (calls the server ended, e.g. refused).
pub async fn run(
    addr: CoordinatorAddr,
    count: usize,
    hold: Duration,
    signal: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let channel = transport::connect(&addr, &addr.ca_pem, None)
        .await
        .context("connecting")?;
    let stop = CancellationToken::new();
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (channel, stop, ended) = (channel.clone(), stop.clone(), ended.clone());
        calls.spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            let call = async {
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::unknown(e.to_string()))?;
                let body = futures::stream::pending::<RegisterRequest>();
                grpc.client_streaming::<_, _, RegisterResponse, _>(
                    tonic::Request::new(body),
                    http::uri::PathAndQuery::from_static(REGISTER),
                    tonic_prost::ProstCodec::default(),
                )
                .await
            };
            tokio::select! {
                _ = call => {
                    ended.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ = stop.cancelled() => {}
            }
        });
    }
    println!("open-streams requested={count}");
    let report = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            println!(
                "open-streams ended={}",
                ended.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
    };
    tokio::select! {
        () = signal => {}
        () = tokio::time::sleep(hold) => {}
        () = report => {}
    }
    stop.cancel();
    while calls.join_next().await.is_some() {}
    Ok(())
}
