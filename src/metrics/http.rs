//! GET /metrics and GET /healthz, on their own listener. It stays up while the WebSocket
//! side drains, so the drain can be watched.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::sampler::SamplerHandle;

/// Binds the metrics listener (non-blocking, for Tokio).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, sampler: SamplerHandle) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(sampler);
    axum::serve(listener, app).await
}

async fn metrics(State(sampler): State<SamplerHandle>) -> Response {
    match sampler.render().await {
        Some(text) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "the sampler thread has stopped\n").into_response(),
    }
}
