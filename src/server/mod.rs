//! The server: one start-up, and the stacks it runs.
//!
//! [`serve`] is `wsscale serve`: it raises the fd limit, installs the metrics recorder,
//! binds both listeners, prints the [`StartLine`] on stdout (for whoever started it with
//! port 0), builds the runtime the mode needs, and calls [`run`] with SIGINT/SIGTERM as
//! the shutdown signal. [`run`] is the library entry, in the shape of mini-redis'
//! `run(listener, shutdown)`: bound listeners, the recorder's handle and a shutdown
//! future, so a test can run a server in its own process.
//!
//! [`run`] chooses the stack — the execution model with the engine ([`stack::Stack`]) —
//! once, and everything below is generic over it. Every stack shares one accept loop
//! ([`accept`]), one HTTP phase ([`upgrade`]: hyper with the axum router,
//! `handshake::check`, the permit, 101 or a refusal) and [`shared::Shared`]. After the
//! 101, [`tasks`] continues the lean session in that same task, [`threads`] hands the
//! socket to the thread the handler started for it, and [`stock`] runs the stock
//! engine; the lean engine runs the same [`connection::Connection`] code in both models.

mod accept;
pub mod board;
mod buffers;
pub mod connection;
pub mod lean_tls;
pub mod shared;
mod stack;
mod stock;
pub mod tasks;
pub mod threads;
pub mod tls;
mod transport;
mod upgrade;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use wsscale_host::fd::FdLimit;

use self::accept::accept_loop;
use self::shared::{SHUTDOWN_MARGIN, Shared};
use crate::config::{Engine, Mode, Scheme, ServeConfig};
use crate::drain::{self, Draining, Signals, StopRequests};
use crate::limits::{self, Bound, Capacity};
use crate::metrics::http::{Broadcaster, Refused};
use crate::metrics::sampler::SamplerHandle;
use crate::start_line::StartLine;

/// The two listeners a server serves on, bound by the caller, and the TLS the WebSocket
/// listener speaks (wss://).
pub struct Listeners {
    /// WebSocket clients (GET /ws).
    pub websocket: std::net::TcpListener,
    /// GET /metrics, GET /healthz, POST /broadcast; always plain HTTP.
    pub metrics: std::net::TcpListener,
    /// TLS on the WebSocket listener: its configuration and certificate file (a
    /// self-signed one is removed when the server ends).
    pub tls: Option<tls::Tls>,
}

impl Listeners {
    /// Binds both addresses (port 0 picks a free port); the WebSocket listener with a
    /// backlog fit for thousands of connections opening at once, under `tls` if given.
    pub fn bind(config: &ServeConfig, tls: Option<tls::Tls>) -> anyhow::Result<Listeners> {
        let websocket = accept::bind_websocket_listener(config.listen)
            .with_context(|| format!("binding the WebSocket listener on {}", config.listen))?;
        let metrics = crate::metrics::http::bind(config.metrics_listen)
            .with_context(|| format!("binding the metrics listener on {}", config.metrics_listen))?;
        Ok(Listeners {
            websocket,
            metrics,
            tls,
        })
    }

    /// ws, or wss under TLS.
    pub fn scheme(&self) -> Scheme {
        if self.tls.is_some() { Scheme::Wss } else { Scheme::Ws }
    }

    /// What a server on these listeners announces: its URL and metrics address, its mode,
    /// engine and scheme, and (wss://) the certificate file clients can trust.
    pub fn start_line(&self, config: &ServeConfig) -> std::io::Result<StartLine> {
        let mut fields = vec![
            ("mode".to_owned(), config.mode.to_string()),
            ("engine".to_owned(), config.engine.to_string()),
            ("scheme".to_owned(), self.scheme().to_string()),
        ];
        if let Some(tls) = &self.tls {
            fields.push(("cert".to_owned(), tls.cert_path.display().to_string()));
        }
        Ok(StartLine::new(
            self.scheme().as_str(),
            self.websocket.local_addr()?,
            self.metrics.local_addr()?,
            fields,
        ))
    }
}

/// Runs `wsscale serve` until SIGINT/SIGTERM and the drain that follows.
pub fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let fd_limit = wsscale_host::fd::raise_fd_limit().context("reading or raising RLIMIT_NOFILE")?;
    if fd_limit.soft_before < fd_limit.soft {
        tracing::info!(
            from = fd_limit.soft_before,
            to = fd_limit.soft,
            "raised the soft RLIMIT_NOFILE to the hard limit"
        );
    }
    // A certificate or key that cannot be used is bad input: exit status 2 (main.rs).
    let tls = config.tls.as_ref().map(tls::Tls::set_up).transpose()?;
    let prometheus = crate::metrics::install(config.mode, config.engine, config.scheme())?;
    let listeners = Listeners::bind(&config, tls)?;
    println!("{}", listeners.start_line(&config)?);

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
    runtime.block_on(async {
        match Signals::install() {
            Ok(signals) => run(config, listeners, prometheus, signals).await,
            Err(error) => {
                tracing::error!(%error, "cannot install SIGINT/SIGTERM handlers; stop the server with SIGKILL");
                run(config, listeners, prometheus, Never).await
            }
        }
    })?;
    // Idle pooled threads and leftover tasks must not hold the exit up.
    runtime.shutdown_background();
    Ok(())
}

/// No request to stop will come.
struct Never;

impl StopRequests for Never {
    async fn next(&mut self) -> &'static str {
        std::future::pending().await
    }
}

/// Serves `config` on `listeners` until the first of `stops` and its drain delay (see
/// [`crate::drain`]: /healthz answers 503 meanwhile), then stops accepting, closes every
/// session with 1001 and waits for them (at most the drain timeout). Runs on the
/// caller's Tokio runtime; `prometheus` is the handle of the recorder the caller
/// installed (`metrics::install`, once per process), which /metrics renders.
pub async fn run(
    config: ServeConfig,
    listeners: Listeners,
    prometheus: PrometheusHandle,
    stops: impl StopRequests,
) -> anyhow::Result<()> {
    let fd_limit = wsscale_host::fd::raise_fd_limit().context("reading or raising RLIMIT_NOFILE")?;
    let capacity = capacity(&config, fd_limit);
    log_settings(&config, &listeners, capacity, fd_limit);
    let (mode, engine, scheme) = (config.mode, config.engine, listeners.scheme());
    if scheme != config.scheme() {
        anyhow::bail!(
            "the configuration asks for {} but the listener speaks {scheme}",
            config.scheme()
        );
    }
    let tls_config = listeners.tls.as_ref().map(|tls| tls.config.clone());
    let shared = Arc::new(Shared::new(config, capacity.max_connections, tls_config)?);
    let sampler = SamplerHandle::start(
        prometheus,
        tokio::runtime::Handle::current(),
        shared.clone(),
        shared.metrics.clone(),
        shared.max_connections,
        shared.config.max_handshakes,
        shared.config.trim_threshold,
    )?;
    let Listeners {
        websocket,
        metrics,
        tls: _certificate,
    } = listeners;
    websocket.set_nonblocking(true)?;
    let listener = TcpListener::from_std(websocket)?;
    let metrics_listener = TcpListener::from_std(metrics)?;
    let draining = Draining::new();
    let metrics_task = tokio::spawn({
        let broadcaster: Arc<dyn Broadcaster> = shared.clone();
        let draining = draining.clone();
        async move {
            if let Err(error) = crate::metrics::http::serve(metrics_listener, sampler, broadcaster, draining).await {
                tracing::error!(%error, "metrics listener failed");
            }
        }
    });
    if let Some(interval) = shared.config.push_interval {
        tokio::spawn(push_every(interval, shared.clone()));
    }
    let shutdown_task = tokio::spawn({
        let shared = shared.clone();
        async move {
            let first = drain::stop_requested(stops, shared.config.drain_delay, &draining).await;
            tracing::info!(
                request = first,
                "shutting down: no new connections, closing every session with 1001"
            );
            shared.shutdown.cancel();
            shared.board.begin_shutdown();
        }
    });

    // The one choice of stack and transport: everything after it is generic over them.
    use self::stock::{Blocking, TasksStock};
    use self::tasks::TasksLean;
    use self::threads::{Lean, Threads};
    use self::transport::{LeanTlsTransport, Plain, StockTls};
    match (mode, engine, scheme) {
        (Mode::Tasks, Engine::Lean, Scheme::Ws) => accept_loop::<TasksLean, Plain>(listener, &shared).await,
        (Mode::Tasks, Engine::Lean, Scheme::Wss) => accept_loop::<TasksLean, LeanTlsTransport>(listener, &shared).await,
        (Mode::Tasks, Engine::Tungstenite, Scheme::Ws) => accept_loop::<TasksStock, Plain>(listener, &shared).await,
        (Mode::Tasks, Engine::Tungstenite, Scheme::Wss) => accept_loop::<TasksStock, StockTls>(listener, &shared).await,
        (Mode::Threads, Engine::Lean, Scheme::Ws) => accept_loop::<Threads<Lean>, Plain>(listener, &shared).await,
        (Mode::Threads, Engine::Lean, Scheme::Wss) => {
            accept_loop::<Threads<Lean>, LeanTlsTransport>(listener, &shared).await
        }
        (Mode::Threads, Engine::Tungstenite, Scheme::Ws) => {
            accept_loop::<Threads<Blocking>, Plain>(listener, &shared).await
        }
        (Mode::Threads, Engine::Tungstenite, Scheme::Wss) => {
            accept_loop::<Threads<Blocking>, StockTls>(listener, &shared).await
        }
    }

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
    // The listeners go with the server: a process that runs another keeps nothing.
    for task in [metrics_task, shutdown_task] {
        task.abort();
        let _ = task.await;
    }
    Ok(())
}

/// The connection cap in force: `--max-connections`, or what the limits allow.
fn capacity(config: &ServeConfig, fd_limit: FdLimit) -> Capacity {
    let kernel = wsscale_host::proc::KernelLimits::read()
        .inspect_err(|error| tracing::warn!(%error, "cannot read the kernel's thread and map limits"))
        .ok();
    let fits = limits::capacity(config.mode, fd_limit, kernel);
    match config.max_connections {
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
    }
}

/// Every setting in force, with where it came from.
fn log_settings(config: &ServeConfig, listeners: &Listeners, capacity: Capacity, fd_limit: FdLimit) {
    let address = |listener: &std::net::TcpListener| listener.local_addr().map_or("?".to_owned(), |a| a.to_string());
    tracing::info!(
        mode = %config.mode,
        engine = %config.engine,
        listen = %address(&listeners.websocket),
        metrics_listen = %address(&listeners.metrics),
        max_connections = capacity.max_connections,
        max_handshakes = config.max_handshakes,
        trim_threshold = config.trim_threshold,
        bound_by = %capacity.bound,
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
        drain_delay = ?config.drain_delay,
        "wsscale serve starting",
    );
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
