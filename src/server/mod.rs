//! The server: what both execution models share, and the one start-up.
//!
//! Start-up order: raise the fd limit, derive the connection cap, install the metrics
//! recorder, bind both listeners, print the bound addresses on stdout (one line, for
//! scripts and tests that bind port 0), build the runtime, start the sampler thread, then
//! serve until SIGINT/SIGTERM and the drain that follows.
//!
//! Both models share everything up to the upgrade: one accept loop ([`accept_loop`]) and
//! one HTTP phase ([`upgrade`]: hyper with the axum router, `handshake::check`, the
//! permit, 101 or a refusal), run as one Tokio task per TCP connection. After the 101,
//! [`tasks`] continues the session in that same task, and [`threads`] hands the socket
//! to the thread the handler started for it. Either way the session runs the same
//! [`connection::Connection`] code.

pub mod board;
pub mod connection;
mod stock;
pub mod tasks;
pub mod threads;
mod upgrade;
mod wait;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use axum::http::StatusCode;

use crate::config::{Engine, Mode, ServeConfig};
use crate::handshake::RejectReason;
use crate::lifecycle::{CloseReason, SessionPolicy};
use crate::limits::{self, Bound, Capacity};
use crate::metrics::http::{Broadcaster, Posted, Refused};
use crate::metrics::sampler::{ConnectionCount, SamplerHandle};
use crate::metrics::{self, ServerMetrics};

/// The listen backlog asked for; the kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;
/// Free read and write buffers kept for reuse (more are freed when given back).
const BUFFERS_KEPT: usize = 64;
/// How long shutdown waits past the drain timeout for sessions to notice it and end.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);

/// A connection the HTTP phase upgraded: the bare socket, the bytes that came with the
/// request, the connection's permit, and (threads mode) the way to its thread.
struct Upgrade {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub early: Vec<u8>,
    pub permit: OwnedSemaphorePermit,
    pub thread: Option<threads::Handoff>,
}

/// Everything the connection path of either model reads; one per server.
pub struct Shared {
    pub config: ServeConfig,
    pub policy: SessionPolicy,
    pub metrics: ServerMetrics,
    /// Buffers lent to a connection for one read or write (see [`connection`]).
    pub buffers: connection::BufferPool,
    /// Most answers queued for a peer that is not reading before we stop reading it.
    pub max_unsent: usize,
    pub max_connections: usize,
    /// Cancelled on the first SIGINT/SIGTERM: the accept loop stops, HTTP phases end, and
    /// the board tells every open session to send 1001.
    pub shutdown: CancellationToken,
    /// What every held connection watches: shutdown, and pushes (see [`board`]).
    board: Arc<board::Board>,
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
    handshakes: Arc<Semaphore>,
    /// HTTP phases running now (the accept loop's permit, taken before a connection
    /// arrives, is not one): the source of `wsscale_handshakes_in_flight`.
    handshakes_in_flight: AtomicUsize,
    /// Sessions running now: incremented when a session starts, decremented when its
    /// socket is closed. The source of `wsscale_connections_active`.
    active: AtomicUsize,
}

impl Shared {
    pub fn new(config: ServeConfig, max_connections: usize) -> std::io::Result<Self> {
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
            buffers: connection::BufferPool::new(config.buffers.read_buffer_size.value, BUFFERS_KEPT),
            max_unsent: config.buffers.max_unsent(),
            max_connections,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(max_connections)),
            handshakes: Arc::new(Semaphore::new(config.max_handshakes)),
            handshakes_in_flight: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            config,
        })
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
    fn push(&self, size: usize) -> Result<Posted, Refused> {
        if self.config.engine != Engine::Lean {
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
pub(super) struct HandshakeGuard {
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl HandshakeGuard {
    fn new(shared: Arc<Shared>, permit: OwnedSemaphorePermit) -> Self {
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

/// Runs `wsscale serve` until SIGINT/SIGTERM and the drain that follows.
pub fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let fd_limit = wsscale_host::fd::raise_fd_limit().context("reading or raising RLIMIT_NOFILE")?;
    let kernel = wsscale_host::proc::KernelLimits::read()
        .inspect_err(|error| tracing::warn!(%error, "cannot read the kernel's thread and map limits"))
        .ok();
    let fits = limits::capacity(config.mode, fd_limit, kernel);
    let capacity = match config.max_connections {
        Some(asked) if asked > fits.max_connections => {
            tracing::warn!(
                asked,
                fits = fits.max_connections,
                "--max-connections is above what {} allows; connections past {} will be refused with 503 \
                 if the OS runs out first (raise {} to fit)",
                fits.bound,
                fits.max_connections,
                fits.bound,
            );
            Capacity {
                max_connections: asked,
                bound: Bound::Flag,
            }
        }
        Some(asked) => Capacity {
            max_connections: asked,
            bound: Bound::Flag,
        },
        None => fits,
    };

    let prometheus = metrics::install(config.mode, config.engine)?;
    let listener = bind_websocket_listener(config.listen)
        .with_context(|| format!("binding the WebSocket listener on {}", config.listen))?;
    let metrics_listener = metrics::http::bind(config.metrics_listen)
        .with_context(|| format!("binding the metrics listener on {}", config.metrics_listen))?;
    let ws_addr = listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;

    tracing::info!(
        mode = %config.mode,
        engine = %config.engine,
        listen = %ws_addr,
        metrics_listen = %metrics_addr,
        max_connections = capacity.max_connections,
        max_handshakes = config.max_handshakes,
        trim_threshold = config.trim_threshold,
        bound_by = %capacity.bound,
        fd_soft_before = fd_limit.soft_before,
        fd_soft = fd_limit.soft,
        fd_hard = fd_limit.hard,
        read_buffer = %config.buffers.read_buffer_size,
        write_buffer = %config.buffers.write_buffer_size,
        max_message = %config.buffers.max_message_size,
        thread_stack = %config.buffers.thread_stack_size,
        ping_interval = ?config.ping_interval,
        idle_timeout = ?config.idle_timeout,
        handshake_timeout = ?config.handshake_timeout,
        drain_timeout = ?config.drain_timeout,
        "wsscale serve starting",
    );
    println!("listening ws://{ws_addr}/ws metrics http://{metrics_addr}/metrics");

    // Tasks mode: one worker per core. Threads mode: the connections are threads, and
    // everything else (accept, HTTP phases, /metrics, signals, 503s) runs on the main
    // thread.
    let runtime = match config.mode {
        Mode::Tasks => tokio::runtime::Builder::new_multi_thread()
            .thread_name("wsscale-worker")
            .enable_all()
            .build()?,
        Mode::Threads => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
    };
    let shared = Arc::new(Shared::new(config, capacity.max_connections)?);
    let sampler = SamplerHandle::start(
        prometheus,
        runtime.handle().clone(),
        shared.clone(),
        shared.metrics.clone(),
        shared.max_connections,
        shared.config.max_handshakes,
        shared.config.trim_threshold,
    )?;
    runtime.block_on(run(listener, metrics_listener, sampler, shared))?;
    // Idle pooled threads and leftover tasks must not hold the exit up.
    runtime.shutdown_background();
    Ok(())
}

/// Serves until shutdown, then waits for every session to close (each sends 1001 and
/// waits at most the drain timeout).
async fn run(
    listener: std::net::TcpListener,
    metrics_listener: std::net::TcpListener,
    sampler: SamplerHandle,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let metrics_listener = TcpListener::from_std(metrics_listener)?;
    tokio::spawn({
        let broadcaster: Arc<dyn Broadcaster> = shared.clone();
        async move {
            if let Err(error) = metrics::http::serve(metrics_listener, sampler, broadcaster).await {
                tracing::error!(%error, "metrics listener failed");
            }
        }
    });
    if let Some(interval) = shared.config.push_interval {
        tokio::spawn(push_every(interval, shared.clone()));
    }
    tokio::spawn({
        let shared = shared.clone();
        async move {
            match wsscale_host::signal::terminated().await {
                Ok(signal) => {
                    tracing::info!(
                        signal,
                        "shutting down: no new connections, closing every session with 1001"
                    );
                    shared.shutdown.cancel();
                }
                Err(error) => {
                    tracing::error!(%error, "cannot install SIGINT/SIGTERM handlers; stop the server with SIGKILL")
                }
            }
        }
    });
    tokio::spawn({
        let shared = shared.clone();
        async move {
            shared.shutdown.cancelled().await;
            shared.board.begin_shutdown();
        }
    });
    accept_loop(listener, &shared).await;

    shared.tracker.close();
    let deadline = shared.config.drain_timeout + SHUTDOWN_MARGIN;
    if tokio::time::timeout(deadline, shared.tracker.wait()).await.is_err() {
        tracing::warn!(
            left = shared.tracker.len(),
            "drain timeout passed; dropping the connections left"
        );
    } else {
        tracing::info!("every connection closed");
    }
    Ok(())
}

/// `--push-interval`: one push of `--push-size` to every held connection each interval,
/// until shutdown.
async fn push_every(interval: Duration, shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(Refused(_, why)) = shared.push(shared.config.push_size) {
            tracing::warn!(%why, "push not posted");
        }
    }
}

/// Accepts connections until shutdown; each gets one task in the tracker, which runs its
/// HTTP phase and then what its execution model does after the upgrade. A handshake
/// permit is taken before each accept, so with `--max-handshakes` phases in flight the
/// loop waits and new clients queue in the listen backlog.
async fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    let app = upgrade::router(shared.clone());
    let mut backoff = AcceptBackoff::new();
    loop {
        let handshake = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            permit = shared.handshakes.clone().acquire_owned() => permit.expect("the handshake semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                let handshake = HandshakeGuard::new(shared.clone(), handshake);
                let http = upgrade::serve_http(stream, peer, app.clone(), shared.clone(), handshake);
                match shared.config.mode {
                    Mode::Tasks => shared.tracker.spawn(tasks::ConnectionTask::new(http, shared.clone())),
                    Mode::Threads => shared.tracker.spawn(threads::hand_over_after(http)),
                };
            }
            Err(error) if is_per_connection_accept_error(&error) => {}
            Err(error) => {
                let pause = backoff.next_pause();
                tracing::warn!(%error, ?pause, "accept failed; backing off");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Binds with a backlog fit for opening thousands of connections at once (std's
/// `TcpListener::bind` asks for 128).
fn bind_websocket_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// True for accept errors that concern one client only (it hung up before we accepted);
/// anything else (EMFILE, ENFILE, ENOBUFS, ENOMEM) is a resource shortage to back off from.
fn is_per_connection_accept_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || error.raw_os_error() == Some(libc::EPROTO)
}

/// How long the accept loop pauses after a resource error: doubling from 10 ms to 1 s.
#[derive(Debug)]
struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        AcceptBackoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        pause
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;
    use crate::config::{Cli, Command};
    use crate::exposition::sample_value;

    fn shared_with_local_recorder() -> (Arc<Shared>, metrics_exporter_prometheus::PrometheusHandle) {
        let Command::Serve(args) = Cli::parse_from(["wsscale", "serve"]).command else {
            unreachable!("a serve command line")
        };
        let config = ServeConfig::try_from(args).unwrap();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let shared = ::metrics::with_local_recorder(&recorder, || Shared::new(config, 4).unwrap());
        (Arc::new(shared), handle)
    }

    #[test]
    fn every_connection_is_counted_closed_once_even_without_close() {
        let (shared, prometheus) = shared_with_local_recorder();
        let closed =
            |reason: &str| sample_value(&prometheus.render(), metrics::CONNECTIONS_CLOSED, &[("reason", reason)]);
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
