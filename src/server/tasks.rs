//! Tasks mode: one Tokio task per TCP connection on the multi-threaded scheduler, from
//! accept to close.
//!
//! The task serves the HTTP request with hyper and axum; when the handler accepts an
//! upgrade it leaves the `OnUpgrade` and the connection permit in a per-connection slot,
//! hyper's connection future resolves after the 101 is written, and the same task then
//! runs the WebSocket session. No task is spawned per connection other than this one
//! (axum's `WebSocketUpgrade::on_upgrade` would spawn a second, untracked one), and every
//! task is in a `TaskTracker`, so shutdown can wait for them all.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::Instrument;
use tungstenite::Message;
use tungstenite::protocol::Role;

use super::{AcceptBackoff, ConnectionGuard, Shared, is_per_connection_accept_error, shutdown_signal};
use crate::handshake::{self, Refusal};
use crate::metrics::{self, RejectReason, Sampler};
use crate::session::{CloseReason, ErrorAction, Session, TimerAction};

/// How long shutdown waits past the drain timeout for tasks to notice it and return.
const SHUTDOWN_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Builds the multi-threaded runtime and runs the server until a signal and the drain.
pub fn run_blocking(
    listener: std::net::TcpListener,
    metrics_listener: std::net::TcpListener,
    prometheus: PrometheusHandle,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wsscale-worker")
        .build()?;
    runtime.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let metrics_listener = TcpListener::from_std(metrics_listener)?;
        let sampler = Arc::new(Sampler::new(
            prometheus,
            tokio::runtime::Handle::current(),
            shared.clone(),
            shared.metrics.clone(),
            shared.max_connections,
        ));
        tokio::spawn(async move {
            if let Err(error) = metrics::serve(metrics_listener, sampler).await {
                tracing::error!(%error, "metrics listener failed");
            }
        });
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                shutdown_signal().await;
                shutdown.cancel();
            }
        });
        run(listener, shared, shutdown).await;
        anyhow::Ok(())
    })?;
    // Idle pooled threads and leftover tasks must not hold the exit up.
    runtime.shutdown_background();
    Ok(())
}

/// Accepts connections until `shutdown` is cancelled, then waits for every session to
/// close (each sends 1001 and waits at most the drain timeout).
pub async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let app = Router::new()
        .route(handshake::WEBSOCKET_PATH, axum::routing::any(upgrade))
        .fallback(not_found)
        .with_state(shared.clone());
    let mut backoff = AcceptBackoff::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                let task = connection(stream, peer, app.clone(), shared.clone(), shutdown.clone());
                tracker.spawn(task.instrument(tracing::debug_span!("conn", %peer)));
            }
            Err(error) if is_per_connection_accept_error(&error) => {}
            Err(error) => {
                let pause = backoff.next_pause();
                tracing::warn!(%error, ?pause, "accept failed; backing off");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    let deadline = shared.config.drain_timeout + SHUTDOWN_MARGIN;
    if tokio::time::timeout(deadline, tracker.wait()).await.is_err() {
        tracing::warn!(
            left = tracker.len(),
            "drain timeout passed; dropping the connections left"
        );
    } else {
        tracing::info!("every connection closed");
    }
}

/// An accepted upgrade, left by the handler for the connection task to pick up after
/// hyper has written the 101.
struct PendingUpgrade {
    on_upgrade: OnUpgrade,
    permit: OwnedSemaphorePermit,
}

/// The per-connection slot the handler fills; shared through a request extension.
type UpgradeSlot = Arc<Mutex<Option<PendingUpgrade>>>;

/// When the TCP connection was accepted, for the handshake duration.
#[derive(Clone, Copy)]
struct AcceptedAt(Instant);

/// One TCP connection, from accept to close: HTTP until an upgrade, then the session.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
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
    // Boxed: hyper's connection state is freed after the upgrade instead of sizing every
    // session's task for it.
    let http = Box::pin(
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(shared.config.handshake_timeout)
            // Keep-alive stays on: hyper would otherwise overwrite the 101's `Connection:
            // upgrade`; every refusal carries `Connection: close` instead.
            .serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            )
            .with_upgrades(),
    );
    let served = tokio::select! {
        _ = shutdown.cancelled() => return,
        served = tokio::time::timeout(shared.config.handshake_timeout, http) => served,
    };
    match served {
        Err(_elapsed) => return shared.reject(RejectReason::HandshakeTimeout),
        Ok(Err(error)) if error.is_timeout() => {
            return shared.reject(RejectReason::HandshakeTimeout);
        }
        // Not HTTP at all: hyper has answered 400 itself.
        Ok(Err(error)) if error.is_parse() || error.is_parse_too_large() => {
            return shared.reject(RejectReason::BadRequest);
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "HTTP connection failed");
            return;
        }
        Ok(Ok(())) => {}
    }
    let Some(pending) = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() else {
        return; // a plain HTTP request, already answered
    };
    drop(slot);
    let upgraded = match pending.on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%peer, %error, "upgrade failed after 101");
            return;
        }
    };
    let websocket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(shared.websocket)).await;
    let guard = ConnectionGuard::open(shared.clone(), pending.permit);
    let reason = run_session(websocket, &shared, &shutdown).await;
    guard.close(reason);
}

/// GET /ws: the shared handshake check, then capacity, then 101.
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
    let (Some(on_upgrade), Some(slot)) = (
        request.extensions_mut().remove::<OnUpgrade>(),
        request.extensions_mut().remove::<UpgradeSlot>(),
    ) else {
        // Only an HTTP/1.1 connection served by `connection` carries both.
        return refuse(
            &shared,
            Refusal::BadRequest("bad request: connection cannot be upgraded"),
        );
    };
    *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(PendingUpgrade { on_upgrade, permit });
    if let Some(AcceptedAt(accepted_at)) = request.extensions().get::<AcceptedAt>() {
        shared.record_handshake(*accepted_at);
    }
    handshake::switching_protocols(&accepted).map(Body::from)
}

async fn not_found() -> Response {
    Refusal::NotFound.response().map(Body::from)
}

fn refuse(shared: &Shared, refusal: Refusal) -> Response {
    if let Some(reason) = refusal.reject_reason() {
        shared.reject(reason);
    }
    refusal.response().map(Body::from)
}

/// The session loop: whichever comes first of a message, the session's deadline
/// (ping, idle timeout, drain) or shutdown; the [`Session`] decides what to do.
async fn run_session<S>(mut websocket: WebSocketStream<S>, shared: &Shared, shutdown: &CancellationToken) -> CloseReason
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut session = Session::new(shared.policy, Instant::now());
    let timer = tokio::time::sleep_until(session.deadline().into());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !session.is_ending() => {
                if let Some(frame) = session.begin_shutdown(Instant::now())
                    && websocket.close(Some(frame)).await.is_err()
                {
                    break;
                }
            }
            message = websocket.next() => match message {
                Some(Ok(message)) => {
                    if let Some(reply) = session.on_message(message, Instant::now(), &shared.metrics)
                        && let Err(error) = websocket.send(reply).await
                    {
                        fail(&mut websocket, &mut session, &error, shared.policy.drain_timeout).await;
                        break;
                    }
                }
                Some(Err(error)) => {
                    fail(&mut websocket, &mut session, &error, shared.policy.drain_timeout).await;
                    break;
                }
                None => break,
            },
            () = &mut timer => match session.on_timer(Instant::now()) {
                TimerAction::Nothing => {}
                TimerAction::SendPing => {
                    if let Err(error) = websocket.send(Message::Ping(Default::default())).await {
                        fail(&mut websocket, &mut session, &error, shared.policy.drain_timeout).await;
                        break;
                    }
                }
                TimerAction::CloseIdle(frame) => {
                    // Best effort: the peer is probably gone, so do not wait on it.
                    let _ = tokio::time::timeout(shared.policy.drain_timeout, websocket.close(Some(frame))).await;
                    break;
                }
                TimerAction::Abandon => break,
            },
        }
        timer.as_mut().reset(session.deadline().into());
    }
    session.close_reason()
}

/// After an error the connection is over; first send the close frame the session asks
/// for (best effort, bounded by the drain timeout).
async fn fail<S>(
    websocket: &mut WebSocketStream<S>,
    session: &mut Session,
    error: &tungstenite::Error,
    drain_timeout: std::time::Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let ErrorAction::Close(frame) = session.on_error(error, Instant::now()) {
        let _ = tokio::time::timeout(drain_timeout, websocket.close(Some(frame))).await;
    }
}
