//! `--metrics-addr`: the fleet's figures as Prometheus text (`GET /metrics`), the same
//! [`Snapshot`](super::stats::Snapshot) the summary prints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::stats::Stats;

/// Binds `addr` and serves `/metrics` until the returned task is aborted; returns the bound
/// address (a port 0 becomes the real one).
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    stats: Arc<Stats>,
    started: Instant,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let text = stats.snapshot(started.elapsed()).to_prometheus();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
                    .into_response()
            }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    });
    Ok((bound, task))
}
