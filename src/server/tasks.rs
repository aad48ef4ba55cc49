//! Tasks mode: one Tokio task per TCP connection on the multi-threaded scheduler, from
//! accept to close.
//!
//! The task serves the HTTP request with hyper and axum; when the handler accepts an
//! upgrade it leaves the `OnUpgrade` and the connection permit in a per-connection slot,
//! hyper's connection future resolves after the 101 is written, and the same task then
//! takes the bare socket back and runs the WebSocket session as a [`SessionTask`]: a
//! hand-written future that holds the socket, the session, a timer and the shutdown
//! signal, and no buffer. No task is spawned per connection other than this one (axum's
//! `WebSocketUpgrade::on_upgrade` would spawn a second, untracked one), and every task is
//! in a `TaskTracker`, so shutdown can wait for them all.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::Instrument;

use super::connection::{Connection, Next};
use super::{AcceptBackoff, ConnectionGuard, Shared, is_per_connection_accept_error, shutdown_signal};
use crate::handshake::RejectReason;
use crate::handshake::{self, Refusal};
use crate::metrics::{self, Sampler};
use crate::session::CloseReason;

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
                tracker.spawn(ConnectionTask::new(
                    stream,
                    peer,
                    app.clone(),
                    shared.clone(),
                    shutdown.clone(),
                ));
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

pin_project_lite::pin_project! {
    /// One TCP connection, from accept to close: HTTP until an upgrade, then the session,
    /// in this one task. Written as a state machine rather than an `async fn` so a held
    /// connection's task is only as big as its session: the HTTP phase is a boxed future,
    /// freed at the upgrade.
    struct ConnectionTask {
        http: Option<Pin<Box<dyn Future<Output = Option<Upgrade>> + Send>>>,
        shared: Arc<Shared>,
        shutdown: Option<CancellationToken>,
        #[pin]
        session: Option<SessionTask>,
    }
}

impl ConnectionTask {
    fn new(stream: TcpStream, peer: SocketAddr, app: Router, shared: Arc<Shared>, shutdown: CancellationToken) -> Self {
        let http = {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            async move { serve_http(stream, peer, app, &shared, &shutdown).await }
                .instrument(tracing::debug_span!("conn", %peer))
        };
        ConnectionTask {
            http: Some(Box::pin(http)),
            shared,
            shutdown: Some(shutdown),
            session: None,
        }
    }
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let Some(http) = this.http.as_mut() {
            let upgrade = std::task::ready!(http.as_mut().poll(cx));
            *this.http = None;
            let (Some(upgrade), Some(shutdown)) = (upgrade, this.shutdown.take()) else {
                return Poll::Ready(());
            };
            this.session
                .set(Some(SessionTask::new(upgrade, this.shared.clone(), shutdown)));
        }
        match this.session.as_pin_mut() {
            Some(session) => session.poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// A connection the HTTP phase upgraded: the bare socket, the bytes that came with the
/// request, and the connection's permit.
struct Upgrade {
    stream: TcpStream,
    early: Vec<u8>,
    permit: OwnedSemaphorePermit,
}

/// Serves HTTP/1 with the axum router until the request is answered (a refusal: None)
/// or upgraded.
async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<Upgrade> {
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
        _ = shutdown.cancelled() => return None,
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
            tracing::debug!(%peer, %error, "HTTP connection failed");
            return None;
        }
        Ok(Ok(())) => {}
    }
    // None: a plain HTTP request, already answered.
    let pending = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()?;
    let upgraded = match pending.on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%peer, %error, "upgrade failed after 101");
            return None;
        }
    };
    // Back to the bare socket (and any bytes hyper read past the request): the session
    // reads only when the socket is readable, into a pooled buffer.
    let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
        tracing::warn!(%peer, "upgraded connection is not a TcpStream");
        return None;
    };
    // Copy the early bytes out: hyper's `read_buf` shares its 8 KiB read buffer, which
    // would otherwise live as long as the connection.
    Some(Upgrade {
        stream: parts.io.into_inner(),
        early: parts.read_buf.to_vec(),
        permit: pending.permit,
    })
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

pin_project_lite::pin_project! {
    /// A held connection: its socket, its [`Connection`], its timer and its shutdown
    /// signal, and nothing else. It waits for readiness with `poll_read_ready` /
    /// `poll_write_ready` (whose wakers live in the socket's registration), the session's
    /// deadline (ping, idle timeout, drain) and shutdown, and hands each event to the
    /// shared [`Connection`] code.
    struct SessionTask {
        stream: TcpStream,
        connection: Connection,
        // Counts the connection open while it exists; closed with the reason at the end.
        guard: Option<ConnectionGuard>,
        #[pin]
        timer: tokio::time::Sleep,
        #[pin]
        shutdown: WaitForCancellationFutureOwned,
    }
}

impl SessionTask {
    fn new(upgrade: Upgrade, shared: Arc<Shared>, shutdown: CancellationToken) -> Self {
        let mut connection = Connection::new(&shared);
        let next = connection.on_early_bytes(&upgrade.stream, &shared, upgrade.early);
        let timer = tokio::time::sleep_until(connection.deadline(&shared).into());
        let guard = ConnectionGuard::open(shared, upgrade.permit);
        let guard = match next {
            Next::Continue => Some(guard),
            Next::Closed(reason) => {
                guard.close(reason);
                None
            }
        };
        SessionTask {
            stream: upgrade.stream,
            connection,
            guard,
            timer,
            shutdown: shutdown.cancelled_owned(),
        }
    }
}

impl Future for SessionTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let Some(guard) = this.guard.as_ref() else {
            return Poll::Ready(());
        };
        let shared = &guard.shared;
        let (stream, connection) = (&*this.stream, &mut *this.connection);
        let mut handled = false;
        let mut next = Next::Continue;
        if connection.heeds_shutdown() && this.shutdown.as_mut().poll(cx).is_ready() {
            next = connection.on_shutdown(stream, shared);
            handled = true;
        }
        if next == Next::Continue && connection.wants_write() {
            match stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {
                    next = connection.on_writable(stream);
                    handled = true;
                }
                Poll::Ready(Err(_)) => next = Next::Closed(CloseReason::Error),
                Poll::Pending => {}
            }
        }
        if next == Next::Continue && connection.wants_read(shared) {
            match stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {
                    next = connection.on_readable(stream, shared);
                    handled = true;
                }
                Poll::Ready(Err(_)) => next = Next::Closed(CloseReason::Error),
                Poll::Pending => {}
            }
        }
        let timer_fired = next == Next::Continue && this.timer.as_mut().poll(cx).is_ready();
        if timer_fired {
            next = connection.on_timer(stream, shared);
        }
        if let Next::Closed(reason) = next {
            if let Some(guard) = this.guard.take() {
                guard.close(reason);
            }
            return Poll::Ready(());
        }
        let mut deadline = tokio::time::Instant::from_std(connection.deadline(shared));
        if timer_fired && deadline <= this.timer.deadline() {
            // The timer fired but nothing was due yet by the session's clock: wait a
            // tick more rather than fire again at once.
            deadline = this.timer.deadline() + std::time::Duration::from_millis(1);
        }
        if this.timer.deadline() != deadline {
            this.timer.as_mut().reset(deadline);
            handled = true;
        }
        if handled {
            // Poll again (soon, after other tasks) so every source registers this task's
            // waker against the state the event left behind.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every held connection is one of these in a task: keep it small (README's figures
    /// depend on it). What is used once belongs in the boxed HTTP phase.
    #[test]
    fn a_held_connection_task_stays_small() {
        let size = std::mem::size_of::<ConnectionTask>();
        assert!(size <= 512, "ConnectionTask is {size} bytes");
        println!(
            "ConnectionTask: {size} bytes, SessionTask: {} bytes",
            std::mem::size_of::<SessionTask>()
        );
    }
}
