//! The server: what both execution models share (configuration, permits, the connection
//! guard that keeps the counts true), start-up, and the dispatch to [`tasks`] or
//! [`threads`].
//!
//! Start-up order: raise the fd limit, derive the connection cap, install the metrics
//! recorder, bind both listeners, print the bound addresses on stdout (one line, for
//! scripts and tests that bind port 0), then run the chosen model until SIGINT/SIGTERM.

pub mod connection;
pub mod tasks;
pub mod threads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Mode, ServeConfig};
use crate::handshake::RejectReason;
use crate::limits::{self, Bound, Capacity};
use crate::metrics::{self, ConnectionCount, ServerMetrics};
use crate::session::{CloseReason, SessionPolicy};

/// The listen backlog asked for; the kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;
/// Free read and write buffers kept for reuse (more are freed when given back).
const BUFFERS_KEPT: usize = 64;

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
    /// One permit per WebSocket connection. A connection takes its permit when its
    /// upgrade is accepted (tasks) or before its thread is spawned (threads) and gives it
    /// back when it ends, so at most `max_connections` are held and the next client gets
    /// a 503.
    permits: Arc<Semaphore>,
    /// Sessions running now: incremented when a session starts, decremented when its
    /// socket is closed. The source of `wsscale_connections_active`.
    active: AtomicUsize,
}

impl Shared {
    pub fn new(config: ServeConfig, max_connections: usize) -> Self {
        Shared {
            policy: SessionPolicy {
                ping_interval: config.ping_interval,
                idle_timeout: config.idle_timeout,
                drain_timeout: config.drain_timeout,
                max_message_size: config.max_message_size,
            },
            metrics: ServerMetrics::register(),
            buffers: connection::BufferPool::new(config.read_buffer_size, BUFFERS_KEPT),
            // Room for one maximum-size answer (with its frame header) at least.
            max_unsent: config.write_buffer_size.max(config.max_message_size + 14),
            max_connections,
            permits: Arc::new(Semaphore::new(max_connections)),
            active: AtomicUsize::new(0),
            config,
        }
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

impl ConnectionCount for Shared {
    fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// Proof that a session is running: created after the upgrade, dropped after its socket
/// is closed. Keeps `active`, opened and closed counts true in both models.
pub struct ConnectionGuard {
    pub shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl ConnectionGuard {
    pub fn open(shared: Arc<Shared>, permit: OwnedSemaphorePermit) -> Self {
        shared.active.fetch_add(1, Ordering::Relaxed);
        shared.metrics.connections_opened.increment(1);
        ConnectionGuard {
            shared,
            _permit: permit,
        }
    }

    /// Ends the connection under `reason`. Call after the socket is dropped.
    pub fn close(self, reason: CloseReason) {
        self.shared.metrics.closed(reason);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
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

    let prometheus = metrics::install(config.mode)?;
    let listener = bind_websocket_listener(config.listen)
        .with_context(|| format!("binding the WebSocket listener on {}", config.listen))?;
    let metrics_listener = metrics::bind(config.metrics_listen)
        .with_context(|| format!("binding the metrics listener on {}", config.metrics_listen))?;
    let ws_addr = listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;

    tracing::info!(
        mode = %config.mode,
        listen = %ws_addr,
        metrics_listen = %metrics_addr,
        max_connections = capacity.max_connections,
        bound_by = %capacity.bound,
        fd_soft_before = fd_limit.soft_before,
        fd_soft = fd_limit.soft,
        fd_hard = fd_limit.hard,
        read_buffer = config.read_buffer_size,
        write_buffer = config.write_buffer_size,
        max_message = config.max_message_size,
        thread_stack = config.thread_stack_size,
        ping_interval = ?config.ping_interval,
        idle_timeout = ?config.idle_timeout,
        handshake_timeout = ?config.handshake_timeout,
        drain_timeout = ?config.drain_timeout,
        "wsscale serve starting",
    );
    println!("listening ws://{ws_addr}/ws metrics http://{metrics_addr}/metrics");

    let shared = Arc::new(Shared::new(config, capacity.max_connections));
    match shared.config.mode {
        Mode::Tasks => tasks::run_blocking(listener, metrics_listener, prometheus, shared),
        Mode::Threads => threads::run_blocking(listener, metrics_listener, prometheus, shared),
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
pub fn is_per_connection_accept_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || error.raw_os_error() == Some(libc::EPROTO)
}

/// How long the accept loop pauses after a resource error: doubling from 10 ms to 1 s.
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    pub fn new() -> Self {
        AcceptBackoff { next: Self::FIRST }
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        pause
    }
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        tracing::error!("cannot install SIGINT/SIGTERM handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(
        signal = name,
        "shutting down: no new connections, closing every session with 1001"
    );
}
