//! Metric names, the Prometheus recorder, and the /metrics and /healthz endpoints.
//!
//! Every series carries the `mode` label (a global label) so a tasks server and a threads
//! server compare on one dashboard. Labels are bounded: close and reject reasons, memory
//! source; never anything per connection. Every metric is described and written at start,
//! so the first scrape already shows all of them.
//!
//! Gauges that mirror the machine (RSS, heap, threads, kernel stack, sockets) are sampled
//! from /proc at each scrape, so /metrics is as true as the moment it is read.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::Mode;
use crate::handshake::RejectReason;
use crate::session::{CloseReason, Tally};
use wsscale_host::{alloc, proc};

pub const CONNECTIONS_ACTIVE: &str = "wsscale_connections_active";
pub const CONNECTIONS_OPENED: &str = "wsscale_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "wsscale_connections_closed_total";
pub const CONNECTIONS_REJECTED: &str = "wsscale_connections_rejected_total";
pub const CONNECTIONS_MAX: &str = "wsscale_connections_max";
pub const MESSAGES_RECEIVED: &str = "wsscale_messages_received_total";
pub const MESSAGES_SENT: &str = "wsscale_messages_sent_total";
pub const HANDSHAKE_DURATION: &str = "wsscale_handshake_duration_seconds";
pub const HEAP_ALLOCATED: &str = "wsscale_heap_allocated_bytes";
pub const MEMORY_PER_CONNECTION: &str = "wsscale_memory_per_connection_bytes";
pub const TASKS_ALIVE: &str = "wsscale_tasks_alive";
pub const RUNTIME_WORKERS: &str = "wsscale_runtime_workers";
pub const HOST_KERNEL_STACK: &str = "wsscale_host_kernel_stack_bytes";
pub const HOST_TCP_SOCKETS: &str = "wsscale_host_tcp_sockets_inuse";

/// Handshake durations span loopback microseconds to slow clients' seconds.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Handles to the metrics the connection path writes, registered once so the hot path
/// does no registry lookups.
#[derive(Clone)]
pub struct ServerMetrics {
    pub messages_received: Counter,
    pub messages_sent: Counter,
    pub connections_opened: Counter,
    /// Handshake durations (seconds) waiting to be recorded by the metrics side. The
    /// exporter's histogram storage is epoch-based (crossbeam-epoch) and keeps a few KiB
    /// of per-thread state after each recording thread exits; recording from thousands of
    /// short-lived connection threads would charge that to threads mode. So both modes
    /// hand durations over here and [`ServerMetrics::flush_handshakes`] records them.
    pending_handshakes: Arc<Mutex<Vec<f64>>>,
    handshake_duration: Histogram,
    closed: [Counter; 4],
    rejected: [Counter; 4],
}

impl ServerMetrics {
    /// Registers every connection-path metric with the installed recorder and writes its
    /// zero, so it is present from the first scrape.
    pub fn register() -> Self {
        let zero = |counter: Counter| {
            counter.increment(0);
            counter
        };
        ServerMetrics {
            messages_received: zero(metrics::counter!(MESSAGES_RECEIVED)),
            messages_sent: zero(metrics::counter!(MESSAGES_SENT)),
            connections_opened: zero(metrics::counter!(CONNECTIONS_OPENED)),
            pending_handshakes: Arc::default(),
            handshake_duration: metrics::histogram!(HANDSHAKE_DURATION),
            closed: CloseReason::ALL
                .map(|reason| zero(metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason.as_str()))),
            rejected: RejectReason::ALL
                .map(|reason| zero(metrics::counter!(CONNECTIONS_REJECTED, "reason" => reason.as_str()))),
        }
    }

    pub fn handshake(&self, seconds: f64) {
        lock(&self.pending_handshakes).push(seconds);
    }

    /// Records the pending handshake durations into the histogram, on the caller's thread.
    pub fn flush_handshakes(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending_handshakes));
        for seconds in pending {
            self.handshake_duration.record(seconds);
        }
    }

    /// Adds what the session counted during one wake-up.
    pub fn add(&self, tally: Tally) {
        if tally.messages_received > 0 {
            self.messages_received.increment(tally.messages_received);
        }
        if tally.messages_sent > 0 {
            self.messages_sent.increment(tally.messages_sent);
        }
    }

    pub fn closed(&self, reason: CloseReason) {
        self.closed[reason as usize].increment(1);
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.rejected[reason as usize].increment(1);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Installs the process-wide Prometheus recorder with the `mode` label and describes
/// every metric this server exports.
pub fn install(mode: Mode) -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .add_global_label("mode", mode.as_str())
        .set_buckets_for_metric(Matcher::Full(HANDSHAKE_DURATION.to_owned()), HANDSHAKE_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(CONNECTIONS_ACTIVE, Unit::Count, "WebSocket connections open now.");
    describe_gauge!(
        CONNECTIONS_MAX,
        Unit::Count,
        "Most WebSocket connections held at once (--max-connections or the limit-derived default)."
    );
    describe_counter!(
        CONNECTIONS_OPENED,
        Unit::Count,
        "WebSocket connections upgraded since start."
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "WebSocket connections ended, by reason: client_close, idle_timeout, error, shutdown."
    );
    describe_counter!(
        CONNECTIONS_REJECTED,
        Unit::Count,
        "Clients refused a WebSocket, by reason: capacity (503), handshake_timeout, bad_request (400/426), thread_spawn (503)."
    );
    describe_counter!(
        MESSAGES_RECEIVED,
        Unit::Count,
        "Text and binary messages received (control frames not counted)."
    );
    describe_counter!(
        MESSAGES_SENT,
        Unit::Count,
        "Text and binary messages sent back (echoes; control frames not counted)."
    );
    describe_histogram!(
        HANDSHAKE_DURATION,
        Unit::Seconds,
        "Time from accepting the TCP connection to sending 101 Switching Protocols."
    );
    describe_gauge!(
        HEAP_ALLOCATED,
        Unit::Bytes,
        "Live heap bytes (allocated, not freed) counted by a wrapper around the system allocator."
    );
    describe_gauge!(
        MEMORY_PER_CONNECTION,
        Unit::Bytes,
        "(current - baseline at zero connections) / active connections, by source: rss or heap; 0 with no connections."
    );
    describe_gauge!(
        TASKS_ALIVE,
        Unit::Count,
        "Tokio tasks alive on the server's runtime (num_alive_tasks)."
    );
    describe_gauge!(
        RUNTIME_WORKERS,
        Unit::Count,
        "Worker threads of the server's Tokio runtime."
    );
    describe_gauge!(
        HOST_KERNEL_STACK,
        Unit::Bytes,
        "Kernel stacks on the whole host (KernelStack in /proc/meminfo): 16 KiB per thread, in no process's RSS."
    );
    describe_gauge!(
        HOST_TCP_SOCKETS,
        Unit::Count,
        "TCP sockets in use on the whole host (/proc/net/sockstat)."
    );
}

/// The figures a scrape reads off the running server.
pub trait ConnectionCount: Send + Sync {
    fn active_connections(&self) -> usize;
}

/// Memory at the last moment the server held no connection: the baseline of the
/// per-connection figures.
#[derive(Debug, Clone, Copy, Default)]
struct Baseline {
    rss_bytes: u64,
    heap_bytes: u64,
}

/// Samples the /proc-backed gauges and renders /metrics.
pub struct Sampler {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    /// The runtime whose tasks `wsscale_tasks_alive` counts.
    runtime: tokio::runtime::Handle,
    connections: Arc<dyn ConnectionCount>,
    server_metrics: ServerMetrics,
    baseline: Mutex<Option<Baseline>>,
    active: Gauge,
    heap: Gauge,
    rss_per_connection: Gauge,
    heap_per_connection: Gauge,
    tasks_alive: Gauge,
    workers: Gauge,
    kernel_stack: Gauge,
    tcp_sockets: Gauge,
}

impl Sampler {
    pub fn new(
        handle: PrometheusHandle,
        runtime: tokio::runtime::Handle,
        connections: Arc<dyn ConnectionCount>,
        server_metrics: ServerMetrics,
        max_connections: usize,
    ) -> Self {
        let process = metrics_process::Collector::default();
        process.describe();
        metrics::gauge!(CONNECTIONS_MAX).set(max_connections as f64);
        let sampler = Sampler {
            handle,
            process,
            runtime,
            connections,
            server_metrics,
            baseline: Mutex::new(None),
            active: metrics::gauge!(CONNECTIONS_ACTIVE),
            heap: metrics::gauge!(HEAP_ALLOCATED),
            rss_per_connection: metrics::gauge!(MEMORY_PER_CONNECTION, "source" => "rss"),
            heap_per_connection: metrics::gauge!(MEMORY_PER_CONNECTION, "source" => "heap"),
            tasks_alive: metrics::gauge!(TASKS_ALIVE),
            workers: metrics::gauge!(RUNTIME_WORKERS),
            kernel_stack: metrics::gauge!(HOST_KERNEL_STACK),
            tcp_sockets: metrics::gauge!(HOST_TCP_SOCKETS),
        };
        sampler.sample();
        sampler
    }

    /// Reads the machine and writes every sampled gauge. With no connection open, the
    /// reading becomes the new baseline.
    pub fn sample(&self) {
        self.process.collect();
        let active = self.connections.active_connections();
        let rss_bytes = proc::self_rss_bytes().unwrap_or(0);
        let heap_bytes = alloc::allocated_bytes() as u64;
        let now = Baseline { rss_bytes, heap_bytes };
        let baseline = {
            let mut baseline = lock(&self.baseline);
            if active == 0 || baseline.is_none() {
                *baseline = Some(now);
            }
            baseline.unwrap_or(now)
        };
        let per_connection = |current: u64, base: u64| {
            if active == 0 {
                0.0
            } else {
                current.saturating_sub(base) as f64 / active as f64
            }
        };
        self.active.set(active as f64);
        self.heap.set(heap_bytes as f64);
        self.rss_per_connection
            .set(per_connection(rss_bytes, baseline.rss_bytes));
        self.heap_per_connection
            .set(per_connection(heap_bytes, baseline.heap_bytes));
        let runtime_metrics = self.runtime.metrics();
        self.tasks_alive.set(runtime_metrics.num_alive_tasks() as f64);
        self.workers.set(runtime_metrics.num_workers() as f64);
        if let Ok(bytes) = proc::kernel_stack_bytes() {
            self.kernel_stack.set(bytes as f64);
        }
        if let Ok(sockets) = proc::tcp_sockets_inuse() {
            self.tcp_sockets.set(sockets as f64);
        }
    }

    pub fn render(&self) -> String {
        self.server_metrics.flush_handshakes();
        self.handle.run_upkeep();
        self.sample();
        self.handle.render()
    }

    /// Histogram samples wait in per-metric buffers until upkeep folds them into buckets;
    /// without it they would grow with every handshake and show up as heap.
    pub async fn run_upkeep(self: Arc<Self>, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.server_metrics.flush_handshakes();
            self.handle.run_upkeep();
            if self.connections.active_connections() == 0 {
                self.sample();
            }
        }
    }
}

/// Serves GET /metrics and GET /healthz until the process exits (it stays up while the
/// WebSocket side drains, so the drain can be watched).
pub async fn serve(listener: tokio::net::TcpListener, sampler: Arc<Sampler>) -> std::io::Result<()> {
    tokio::spawn(sampler.clone().run_upkeep(Duration::from_secs(1)));
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(sampler);
    axum::serve(listener, app).await
}

async fn metrics_handler(State(sampler): State<Arc<Sampler>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        sampler.render(),
    )
}

/// Binds the metrics listener; a helper so both modes report the same error.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Reads one sample from Prometheus text: the first series named `name` whose labels
/// include every `(key, value)` of `labels`. For tests and `wsscale compare`, which read
/// a server's /metrics.
pub fn sample_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            let wanted = series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")));
            wanted.then(|| value.parse().ok()).flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_by_name_and_labels() {
        let text = "# HELP x y\nwsscale_connections_active{mode=\"tasks\"} 12\n\
                    wsscale_connections_closed_total{mode=\"tasks\",reason=\"error\"} 3\n\
                    wsscale_connections_closed_total{mode=\"tasks\",reason=\"shutdown\"} 4\nplain 1.5\n";
        assert_eq!(sample_value(text, "wsscale_connections_active", &[]), Some(12.0));
        assert_eq!(
            sample_value(text, "wsscale_connections_closed_total", &[("reason", "shutdown")]),
            Some(4.0)
        );
        assert_eq!(sample_value(text, "plain", &[]), Some(1.5));
        assert_eq!(
            sample_value(text, "wsscale_connections", &[]),
            None,
            "names match whole"
        );
        assert_eq!(
            sample_value(text, "wsscale_connections_active", &[("mode", "threads")]),
            None
        );
    }
}
