//! The HTTP phase of every connection, in both execution models: hyper serves HTTP/1 with
//! the axum router until the request is answered (404, 405, 426, 400, 503) or upgraded
//! (101). [`handshake::check`] decides; a connection permit is taken only by a request
//! that passed it, and every refusal is counted and answered by [`refuse`], the one
//! refusal path.
//!
//! The handler does not use axum's `WebSocketUpgrade::on_upgrade`, which spawns a bare
//! task of its own: it leaves the `OnUpgrade` and the permit in a per-connection slot,
//! hyper's connection future resolves after the 101 is written, and [`serve_http`] takes
//! the bare socket back and returns it. Tasks mode continues in the same task; threads
//! mode passes the socket to the thread the handler started (so a thread the OS refuses
//! is still a 503, answered before the 101).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tower::ServiceExt;
use tracing::Instrument;

use super::{HandshakeGuard, Shared, Upgrade, stock, threads};
use crate::config::{Engine, Mode};
use crate::handshake::{self, Refusal, RejectReason};

/// An accepted upgrade, left by the handler for [`serve_http`] to pick up after hyper has
/// written the 101.
struct PendingUpgrade {
    on_upgrade: OnUpgrade,
    permit: OwnedSemaphorePermit,
    thread: Option<threads::Handoff>,
}

/// The per-connection slot the handler fills; shared through a request extension.
type UpgradeSlot = Arc<Mutex<Option<PendingUpgrade>>>;

/// When the TCP connection was accepted, for the handshake duration.
#[derive(Clone, Copy)]
struct AcceptedAt(Instant);

/// The router every connection's HTTP phase serves.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(handshake::WEBSOCKET_PATH, axum::routing::any(upgrade))
        .fallback(not_found)
        .with_state(shared)
}

/// Serves HTTP/1 with the axum router until the request is answered (a refusal: None)
/// or upgraded. Bounded by the handshake timeout and cut short by shutdown; holds its
/// handshake permit until it returns.
pub(super) async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    shared: Arc<Shared>,
    handshake: HandshakeGuard,
) -> Option<Upgrade> {
    async move {
        let _handshake = handshake;
        let accepted_at = Instant::now();
        let slot: UpgradeSlot = Arc::default();
        let service = app.map_request({
            let slot = slot.clone();
            move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(slot.clone());
                request.extensions_mut().insert(AcceptedAt(accepted_at));
                request
            }
        });
        let http = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(shared.config.handshake_timeout)
            // Keep-alive stays on: hyper would otherwise overwrite the 101's `Connection:
            // upgrade`; every refusal carries `Connection: close` instead.
            .serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            )
            .with_upgrades();
        let served = tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            served = tokio::time::timeout(shared.config.handshake_timeout, http) => served,
        };
        match served {
            Err(_elapsed) => {
                shared.reject(RejectReason::HandshakeTimeout);
                return None;
            }
            Ok(Err(error)) if error.is_timeout() => {
                shared.reject(RejectReason::HandshakeTimeout);
                return None;
            }
            // Not HTTP at all: hyper has answered 400 itself.
            Ok(Err(error)) if error.is_parse() || error.is_parse_too_large() => {
                shared.reject(RejectReason::BadRequest);
                return None;
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "HTTP connection failed");
                return None;
            }
            Ok(Ok(())) => {}
        }
        // None: a plain HTTP request, already answered.
        let pending = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()?;
        let upgraded = match pending.on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "upgrade failed after 101");
                return None;
            }
        };
        // Back to the bare socket (and any bytes hyper read past the request): the
        // session reads only when the socket is readable, into a pooled buffer.
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            tracing::warn!("upgraded connection is not a TcpStream");
            return None;
        };
        // Copy the early bytes out: hyper's `read_buf` shares its 8 KiB read buffer, which
        // would otherwise live as long as the connection.
        Some(Upgrade {
            stream: parts.io.into_inner(),
            peer,
            early: parts.read_buf.to_vec(),
            permit: pending.permit,
            thread: pending.thread,
        })
    }
    .instrument(tracing::debug_span!("conn", %peer))
    .await
}

/// GET /ws: the shared handshake check, then capacity (and in threads mode the thread),
/// then 101.
async fn upgrade(State(shared): State<Arc<Shared>>, mut request: Request) -> Response {
    let accepted = match handshake::check(
        request.method(),
        request.uri().path(),
        request.version(),
        request.headers(),
    ) {
        Ok(accepted) => accepted,
        Err(refusal) => return refuse(&shared, refusal),
    };
    let Some(permit) = shared.try_permit() else {
        return refuse(&shared, Refusal::AtCapacity);
    };
    let accepted_at = request.extensions().get::<AcceptedAt>().map(|at| at.0);
    if shared.config.mode == Mode::Tasks && shared.config.engine == Engine::Tungstenite {
        let Ok(response) = stock::upgrade_with_axum(&shared, request, permit).await else {
            return refuse(&shared, Refusal::BadRequest("bad request: not a WebSocket upgrade"));
        };
        if let Some(accepted_at) = accepted_at {
            shared.record_handshake(accepted_at);
        }
        return response;
    }
    let (Some(on_upgrade), Some(slot)) = (
        request.extensions_mut().remove::<OnUpgrade>(),
        request.extensions_mut().remove::<UpgradeSlot>(),
    ) else {
        // Only an HTTP/1.1 connection served by `serve_http` carries both.
        return refuse(
            &shared,
            Refusal::BadRequest("bad request: connection cannot be upgraded"),
        );
    };
    let thread = match shared.config.mode {
        Mode::Tasks => None,
        Mode::Threads => match threads::spawn_connection_thread(&shared) {
            Ok(handoff) => Some(handoff),
            Err(error) => {
                tracing::warn!(%error, "cannot spawn a connection thread; answering 503");
                return refuse(&shared, Refusal::ThreadUnavailable);
            }
        },
    };
    *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(PendingUpgrade {
        on_upgrade,
        permit,
        thread,
    });
    if let Some(accepted_at) = accepted_at {
        shared.record_handshake(accepted_at);
    }
    handshake::switching_protocols(&accepted).map(Body::from)
}

async fn not_found() -> Response {
    Refusal::NotFound.response().map(Body::from)
}

/// The one refusal path: counts the refusal (when it is a WebSocket rejection) and
/// builds its answer.
fn refuse(shared: &Shared, refusal: Refusal) -> Response {
    if let Some(reason) = refusal.reject_reason() {
        shared.reject(reason);
    }
    refusal.response().map(Body::from)
}
