//! What every connection path of a server reads and counts, whatever its mode and
//! engine: [`Shared`] (the configuration, the policy, the permits, the board, the metric
//! handles, the shutdown token and the task tracker), and the two guards that keep the
//! counts true on every path — [`HandshakeGuard`] for a connection in its HTTP phase,
//! [`ConnectionGuard`] for a running session.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::board;
use super::buffers::BufferPool;
use crate::config::ServeConfig;
use crate::handshake::RejectReason;
use crate::lifecycle::{CloseReason, SessionPolicy};
use crate::metrics::ServerMetrics;
use crate::metrics::http::{Broadcaster, Posted, Refused};
use crate::metrics::sampler::ConnectionCount;

/// Free read and write buffers kept for reuse (more are freed when given back).
const BUFFERS_KEPT: usize = 64;
/// How long shutdown waits past the drain timeout for sessions to notice it and end.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);

/// Everything the connection path of either model reads; one per server.
pub struct Shared {
    pub config: ServeConfig,
    pub policy: SessionPolicy,
    pub metrics: ServerMetrics,
    /// Buffers lent to a connection for one read or write (see [`super::buffers`]).
    pub buffers: BufferPool,
    /// Most answers queued for a peer that is not reading before we stop reading it.
    pub max_unsent: usize,
    pub max_connections: usize,
    /// The TLS configuration every connection of a wss:// server shares.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Cancelled on the first SIGINT/SIGTERM: the accept loop stops, HTTP phases end, and
    /// the board tells every open session to send 1001.
    pub shutdown: CancellationToken,
    /// What every held connection watches: shutdown, and pushes (see [`board`]).
    pub(super) board: Arc<board::Board>,
    /// Every connection's task, and a token held by every connection thread: shutdown
    /// waits for all of them (up to the drain timeout).
    pub tracker: TaskTracker,
    /// One permit per WebSocket connection, taken by a request that passed the handshake
    /// check and given back when its connection ends: at most `max_connections` are held
    /// and the next client gets a 503.
    permits: Arc<Semaphore>,
    /// One permit per connection in its HTTP phase, taken before accept and given back
    /// when the phase ends (upgrade, refusal or timeout): at most `--max-handshakes` are
    /// in flight, and past it accept waits. Apart from `permits`, so clients that never
    /// finish their request cannot take the places of upgraded connections.
    pub(super) handshakes: Arc<Semaphore>,
    /// HTTP phases running now (the accept loop's permit, taken before a connection
    /// arrives, is not one): the source of `wsscale_handshakes_in_flight`.
    handshakes_in_flight: AtomicUsize,
    /// Sessions running now: incremented when a session starts, decremented when its
    /// socket is closed. The source of `wsscale_connections_active`.
    active: AtomicUsize,
}

impl Shared {
    pub fn new(
        config: ServeConfig,
        max_connections: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let metrics = ServerMetrics::register();
        Ok(Shared {
            policy: SessionPolicy {
                ping_interval: config.ping_interval,
                idle_timeout: config.idle_timeout,
                drain_timeout: config.drain_timeout,
                max_message_size: config.buffers.max_message_size.value,
            },
            board: Arc::new(board::Board::new(metrics.clone())?),
            metrics,
            buffers: BufferPool::new(config.buffers.read_buffer_size.value, BUFFERS_KEPT),
            max_unsent: config.buffers.max_unsent(),
            max_connections,
            tls,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(max_connections)),
            handshakes: Arc::new(Semaphore::new(config.max_handshakes)),
            handshakes_in_flight: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            config,
        })
    }

    /// The TLS configuration. Only TLS transports ask for it, and `server::run` picks those
    /// only when there is one.
    pub fn tls_config(&self) -> Arc<rustls::ServerConfig> {
        self.tls
            .clone()
            .expect("a TLS transport runs only with a TLS configuration")
    }

    /// A permit for one more connection, or `None` at capacity.
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    pub fn record_handshake(&self, accepted_at: Instant) {
        self.metrics.handshake(accepted_at.elapsed().as_secs_f64());
    }

    pub fn reject(&self, reason: RejectReason) {
        self.metrics.rejected(reason);
    }
}

impl Broadcaster for Shared {
    fn broadcast(&self, size: Option<usize>) -> Result<Posted, Refused> {
        if !self.config.allow_broadcast {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                "broadcast is off: start the server with --allow-broadcast".to_owned(),
            ));
        }
        self.push(size.unwrap_or(self.config.push_size))
    }
}

impl Shared {
    /// Posts one push of `size` bytes to every held connection (for POST /broadcast and
    /// --push-interval).
    pub fn push(&self, size: usize) -> Result<Posted, Refused> {
        if !self.config.engine.pushes() {
            return Err(Refused(
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "server push is the lean engine's; this server runs --engine {}",
                    self.config.engine
                ),
            ));
        }
        if self.shutdown.is_cancelled() {
            return Err(Refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting down: every connection is being closed with 1001".to_owned(),
            ));
        }
        let max = self.config.buffers.max_message_size.value;
        if size < wsscale_wire::push::HEADER_LEN || size > max {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                format!(
                    "size {size}: a push is {} to {max} bytes (--max-message-size)",
                    wsscale_wire::push::HEADER_LEN
                ),
            ));
        }
        let (seq, connections) = self.board.post(size);
        Ok(Posted { seq, connections })
    }
}

impl ConnectionCount for Shared {
    fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    fn handshakes_in_flight(&self) -> usize {
        self.handshakes_in_flight.load(Ordering::Relaxed)
    }
}

/// One connection's HTTP phase: holds its handshake permit and counts it in flight from
/// accept until the phase ends, whichever way.
pub struct HandshakeGuard {
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl HandshakeGuard {
    pub fn new(shared: Arc<Shared>, permit: OwnedSemaphorePermit) -> Self {
        shared.handshakes_in_flight.fetch_add(1, Ordering::Relaxed);
        HandshakeGuard {
            shared,
            _permit: permit,
        }
    }
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.shared.handshakes_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Proof that a session is running: created after the upgrade, dropped after its socket
/// is closed. Keeps the active, opened and closed counts true in both models: a guard
/// dropped without [`ConnectionGuard::close`] (a panic, a task dropped at the drain
/// deadline) counts as `reason="error"`.
pub struct ConnectionGuard {
    pub shared: Arc<Shared>,
    reason: CloseReason,
    _permit: OwnedSemaphorePermit,
}

impl ConnectionGuard {
    pub fn open(shared: Arc<Shared>, permit: OwnedSemaphorePermit) -> Self {
        shared.active.fetch_add(1, Ordering::Relaxed);
        shared.metrics.connections_opened.increment(1);
        ConnectionGuard {
            shared,
            reason: CloseReason::Error,
            _permit: permit,
        }
    }

    /// Ends the connection under `reason`. Call after the socket is dropped.
    pub fn close(mut self, reason: CloseReason) {
        self.reason = reason;
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.closed(self.reason);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use clap::Parser;
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;
    use crate::config::{Cli, Command};
    use crate::exposition::sample_value;

    pub(crate) fn shared_with_local_recorder() -> (Arc<Shared>, metrics_exporter_prometheus::PrometheusHandle) {
        let Command::Serve(args) = Cli::parse_from(["wsscale", "serve"]).command else {
            unreachable!("a serve command line")
        };
        let config = ServeConfig::try_from(args).unwrap();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let shared = ::metrics::with_local_recorder(&recorder, || Shared::new(config, 4, None).unwrap());
        (Arc::new(shared), handle)
    }

    #[test]
    fn every_connection_is_counted_closed_once_even_without_close() {
        let (shared, prometheus) = shared_with_local_recorder();
        let closed = |reason: &str| {
            sample_value(
                &prometheus.render(),
                crate::metrics::CONNECTIONS_CLOSED,
                &[("reason", reason)],
            )
        };
        let guard = ConnectionGuard::open(shared.clone(), shared.try_permit().unwrap());
        assert_eq!(shared.active_connections(), 1);
        guard.close(CloseReason::ClientClose);
        // Dropped on a path that never said why (a panic, the drain deadline).
        drop(ConnectionGuard::open(shared.clone(), shared.try_permit().unwrap()));
        assert_eq!(closed("client_close"), Some(1.0));
        assert_eq!(closed("error"), Some(1.0));
        assert_eq!(shared.active_connections(), 0);
        assert_eq!(shared.permits.available_permits(), 4, "both permits are back");
    }
}
