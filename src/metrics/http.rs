//! GET /metrics and GET /healthz, the live page (GET /, its assets under /assets/ and its
//! JSON at GET /api/live: `wsscale_web`, [`super::live`]), and (with `--allow-broadcast`)
//! POST /broadcast, on their own listener; every other path answers 404. It stays up while
//! the WebSocket side drains, so the drain can be watched, on the page too. /healthz
//! answers 200 `ok` while the server serves, and 503 `draining` from the first
//! SIGINT/SIGTERM on (see [`crate::drain`]): what balancers and readiness probes follow.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::sampler::SamplerHandle;
use crate::drain::Draining;

/// What POST /broadcast asks of the server.
pub trait Broadcaster: Send + Sync {
    /// Posts one push of `size` bytes (the configured size when None) to every held
    /// connection.
    fn broadcast(&self, size: Option<usize>) -> Result<Posted, Refused>;
}

/// A push on its way: its sequence number and how many connections it goes to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Posted {
    pub seq: u64,
    pub connections: usize,
}

/// Why a broadcast was not posted: the status and a one-line answer.
#[derive(Debug)]
pub struct Refused(pub StatusCode, pub String);

#[derive(Clone)]
struct Endpoints {
    sampler: SamplerHandle,
    broadcaster: Arc<dyn Broadcaster>,
    draining: Draining,
}

#[derive(Deserialize)]
struct BroadcastQuery {
    size: Option<String>,
}

/// Binds the metrics listener (non-blocking, for Tokio).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves until the process exits. Logs the live page's address first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sampler: SamplerHandle,
    broadcaster: Arc<dyn Broadcaster>,
    draining: Draining,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(url = %format!("http://{addr}/"), "live page");
    axum::serve(listener, router(sampler, broadcaster, draining)).await
}

fn router(sampler: SamplerHandle, broadcaster: Arc<dyn Broadcaster>, draining: Draining) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/broadcast", post(broadcast))
        .route(wsscale_web::LIVE_JSON_PATH, get(live))
        .merge(wsscale_web::routes(wsscale_web::Page::Server))
        .fallback(wsscale_web::not_found)
        .with_state(Endpoints {
            sampler,
            broadcaster,
            draining,
        })
}

/// The live page's figures (see [`super::live::LiveServer`]).
async fn live(State(endpoints): State<Endpoints>) -> Response {
    match endpoints.sampler.live().await {
        Some(live) => match serde_json::to_string(&live) {
            Ok(json) => wsscale_web::live_json(json),
            Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
        },
        None => (StatusCode::INTERNAL_SERVER_ERROR, "the sampler thread has stopped\n").into_response(),
    }
}

async fn healthz(State(endpoints): State<Endpoints>) -> Response {
    if endpoints.draining.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: shutting down, send new clients elsewhere\n",
        )
            .into_response()
    } else {
        "ok\n".into_response()
    }
}

async fn broadcast(State(endpoints): State<Endpoints>, Query(query): Query<BroadcastQuery>) -> Response {
    let size = match query.size.as_deref().map(str::parse::<bytesize::ByteSize>) {
        None => None,
        Some(Ok(size)) => Some(size.as_u64() as usize),
        Some(Err(error)) => {
            return (StatusCode::BAD_REQUEST, format!("size: {error}\n")).into_response();
        }
    };
    match endpoints.broadcaster.broadcast(size) {
        Ok(posted) => axum::Json(posted).into_response(),
        Err(Refused(status, why)) => (status, format!("{why}\n")).into_response(),
    }
}

async fn metrics(State(endpoints): State<Endpoints>) -> Response {
    match endpoints.sampler.render().await {
        Some(text) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "the sampler thread has stopped\n").into_response(),
    }
}
