//! The HTTP phase of every connection, whatever its stack: the transport's handshake
//! (TLS, for wss://), then hyper serves HTTP/1 with the axum router until the request is
//! answered (404, 405, 426, 400, 503) or upgraded (101); the handshake timeout bounds
//! the whole phase. [`handshake::check`] decides; a connection permit is taken only by a request
//! that passed it; the stack answers ([`Stack::answer`]); every refusal is counted and
//! answered by [`refuse`], the one refusal path.
//!
//! The handler does not use axum's `WebSocketUpgrade::on_upgrade`, which spawns a bare
//! task of its own (only the stock tasks stack does, on purpose): [`switch_protocols`]
//! leaves the `OnUpgrade`, the permit and what the stack reserved in the connection's
//! [`PendingSlot`]; hyper's connection future resolves after the 101 is written, and
//! [`serve_http`] takes the bare socket back and returns it as an [`Upgraded`], for the
//! stack's connection task to go on with.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tower::ServiceExt;
use tracing::Instrument;

use super::shared::{HandshakeGuard, Shared};
use super::stack::{Stack, Upgraded};
use super::transport::Transport;
use crate::deflate::{self, Agreement};
use crate::handshake::{self, Accepted, Refusal, RejectReason};
use crate::metrics::TlsFailure;

/// An accepted upgrade, left by the handler for [`serve_http`] to pick up after hyper has
/// written the 101.
struct Pending<Reserved> {
    on_upgrade: OnUpgrade,
    permit: OwnedSemaphorePermit,
    reserved: Reserved,
    deflate: Option<Agreement>,
}

/// The per-connection slot the handler fills; shared through a request extension.
type PendingSlot<Reserved> = Arc<Mutex<Option<Pending<Reserved>>>>;

/// When the TCP connection was accepted, for the handshake duration.
#[derive(Clone, Copy)]
struct AcceptedAt(Instant);

/// The router every connection's HTTP phase serves.
pub(super) fn router<S: Stack<T>, T: Transport>(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(handshake::WEBSOCKET_PATH, axum::routing::any(upgrade::<S, T>))
        .fallback(not_found)
        .with_state(shared)
}

/// Serves HTTP/1 with the axum router until the request is answered (a refusal: None)
/// or upgraded. Bounded by the handshake timeout and cut short by shutdown; holds its
/// handshake permit until it returns.
pub(super) async fn serve_http<S: Stack<T>, T: Transport>(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    shared: Arc<Shared>,
    handshake: HandshakeGuard,
) -> Option<Upgraded<T::Io, S::Reserved>> {
    async move {
        let _handshake = handshake;
        let accepted_at = Instant::now();
        let deadline = tokio::time::Instant::from_std(accepted_at + shared.config.handshake_timeout);
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            accepted = tokio::time::timeout_at(deadline, T::accept(&shared, stream)) => accepted,
        };
        let io = match accepted {
            Ok(Ok(io)) => io,
            Ok(Err(failure)) => {
                shared.metrics.tls_failed(failure);
                shared.reject(RejectReason::Tls);
                return None;
            }
            Err(_elapsed) => {
                shared.metrics.tls_failed(TlsFailure::Timeout);
                shared.reject(RejectReason::HandshakeTimeout);
                return None;
            }
        };
        let slot: PendingSlot<S::Reserved> = Arc::default();
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
            .serve_connection(TokioIo::new(io), hyper_util::service::TowerToHyperService::new(service))
            .with_upgrades();
        let served = tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            served = tokio::time::timeout_at(deadline, http) => served,
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
        // None: a plain HTTP request, already answered (or an upgrade the stack's
        // answer took over).
        let pending = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()?;
        let upgraded = match pending.on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "upgrade failed after 101");
                return None;
            }
        };
        // Back to the bare IO (and any bytes hyper read past the request): the session
        // reads only when the socket is readable, into a pooled buffer.
        let Ok(parts) = upgraded.downcast::<TokioIo<T::Io>>() else {
            tracing::warn!("upgraded connection is not the transport's IO");
            return None;
        };
        // Copy the early bytes out: hyper's `read_buf` shares its 8 KiB read buffer, which
        // would otherwise live as long as the connection.
        Some(Upgraded {
            stream: parts.io.into_inner(),
            peer,
            early: parts.read_buf.to_vec(),
            permit: pending.permit,
            reserved: pending.reserved,
            deflate: pending.deflate,
        })
    }
    .instrument(tracing::debug_span!("conn", %peer))
    .await
}

/// GET /ws: the shared handshake check, then capacity, then the stack's answer.
async fn upgrade<S: Stack<T>, T: Transport>(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let mut accepted = match handshake::check(
        request.method(),
        request.uri().path(),
        request.version(),
        request.headers(),
    ) {
        Ok(accepted) => accepted,
        Err(refusal) => return refuse(&shared, refusal),
    };
    if S::NEGOTIATES_DEFLATE {
        let offers = request.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
        accepted.deflate = deflate::negotiate(offers.iter().filter_map(|v| v.to_str().ok()), shared.config.deflate);
    }
    let Some(permit) = shared.try_permit() else {
        return refuse(&shared, Refusal::AtCapacity);
    };
    let accepted_at = request.extensions().get::<AcceptedAt>().map(|at| at.0);
    let response = S::answer(&shared, request, permit, accepted).await;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(accepted_at) = accepted_at
    {
        shared.record_handshake(accepted_at);
    }
    response
}

/// Accepts an upgrade for the connection's own HTTP phase to take back after the 101
/// (see [`serve_http`]): leaves the permit and what the stack reserved in the
/// connection's slot, and answers 101.
pub(super) fn switch_protocols<Reserved: Send + 'static>(
    shared: &Shared,
    mut request: Request,
    permit: OwnedSemaphorePermit,
    reserved: Reserved,
    accepted: &Accepted,
) -> Response {
    let (Some(on_upgrade), Some(slot)) = (
        request.extensions_mut().remove::<OnUpgrade>(),
        request.extensions_mut().remove::<PendingSlot<Reserved>>(),
    ) else {
        // Only an HTTP/1.1 connection served by `serve_http` carries both.
        return refuse(
            shared,
            Refusal::BadRequest("bad request: connection cannot be upgraded"),
        );
    };
    *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Pending {
        on_upgrade,
        permit,
        reserved,
        deflate: accepted.deflate,
    });
    handshake::switching_protocols(accepted).map(Body::from)
}

async fn not_found() -> Response {
    Refusal::NotFound.response().map(Body::from)
}

/// The one refusal path: counts the refusal (when it is a WebSocket rejection) and
/// builds its answer.
pub(super) fn refuse(shared: &Shared, refusal: Refusal) -> Response {
    if let Some(reason) = refusal.reject_reason() {
        shared.reject(reason);
    }
    refusal.response().map(Body::from)
}
