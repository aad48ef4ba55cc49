//! The sampler: one thread, `wsscale-sampler`, started at boot, that reads the machine
//! into the gauges and renders every scrape.
//!
//! Reading /proc costs more as connections grow (metrics-process lists /proc/self/fd), so
//! it runs here rather than on a thread that serves connections: in tasks mode that would
//! be a Tokio worker, in threads mode the one runtime that also answers handshakes. A
//! dedicated thread, not `spawn_blocking`, because blocking-pool threads come and go and
//! would move the thread counts this tool reports. The same thread records handshake and
//! broadcast durations into their histograms (see [`ServerMetrics::flush_pending`]) and
//! runs the exporter's upkeep once a second.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use metrics::Gauge;
use metrics_exporter_prometheus::PrometheusHandle;
use wsscale_host::{alloc, proc};

use super::{
    CONNECTIONS_ACTIVE, CONNECTIONS_MAX, HANDSHAKES_IN_FLIGHT, HANDSHAKES_MAX, HEAP_ALLOCATED, HOST_KERNEL_STACK,
    HOST_TCP_SOCKETS, MEMORY_PER_CONNECTION, RUNTIME_WORKERS, ServerMetrics, TASKS_ALIVE,
};

/// How often histogram samples are folded in (and, with no connection open, the
/// baseline is read) between scrapes.
const UPKEEP_PERIOD: Duration = Duration::from_secs(1);

/// The figures a scrape reads off the running server besides /proc.
pub trait ConnectionCount: Send + Sync {
    fn active_connections(&self) -> usize;
    /// Connections in their HTTP phase now.
    fn handshakes_in_flight(&self) -> usize;
}

/// Memory at the last moment the server held no connection: the baseline of the
/// per-connection figures.
#[derive(Debug, Clone, Copy, Default)]
struct Baseline {
    rss_bytes: u64,
    heap_bytes: u64,
}

/// What the sampler thread owns.
struct Sampler {
    prometheus: PrometheusHandle,
    process: metrics_process::Collector,
    /// The runtime whose tasks `wsscale_tasks_alive` counts.
    runtime: tokio::runtime::Handle,
    connections: Arc<dyn ConnectionCount>,
    server_metrics: ServerMetrics,
    baseline: Option<Baseline>,
    active: Gauge,
    handshakes_in_flight: Gauge,
    heap: Gauge,
    rss_per_connection: Gauge,
    heap_per_connection: Gauge,
    tasks_alive: Gauge,
    workers: Gauge,
    kernel_stack: Gauge,
    tcp_sockets: Gauge,
}

/// A scrape's request: the rendered exposition comes back on the channel.
type RenderRequest = tokio::sync::oneshot::Sender<String>;

/// Asks the sampler thread for a fresh scrape. Cheap to clone.
#[derive(Clone)]
pub struct SamplerHandle {
    /// The sampler thread's inbox; the thread ends when every handle is dropped.
    requests: mpsc::Sender<RenderRequest>,
}

impl SamplerHandle {
    /// Starts the sampler thread. Every sampled gauge is written once before this
    /// returns, so the first scrape shows all of them.
    pub fn start(
        prometheus: PrometheusHandle,
        runtime: tokio::runtime::Handle,
        connections: Arc<dyn ConnectionCount>,
        server_metrics: ServerMetrics,
        max_connections: usize,
        max_handshakes: usize,
    ) -> std::io::Result<SamplerHandle> {
        let process = metrics_process::Collector::default();
        process.describe();
        metrics::gauge!(CONNECTIONS_MAX).set(max_connections as f64);
        metrics::gauge!(HANDSHAKES_MAX).set(max_handshakes as f64);
        let mut sampler = Sampler {
            prometheus,
            process,
            runtime,
            connections,
            server_metrics,
            baseline: None,
            active: metrics::gauge!(CONNECTIONS_ACTIVE),
            handshakes_in_flight: metrics::gauge!(HANDSHAKES_IN_FLIGHT),
            heap: metrics::gauge!(HEAP_ALLOCATED),
            rss_per_connection: metrics::gauge!(MEMORY_PER_CONNECTION, "source" => "rss"),
            heap_per_connection: metrics::gauge!(MEMORY_PER_CONNECTION, "source" => "heap"),
            tasks_alive: metrics::gauge!(TASKS_ALIVE),
            workers: metrics::gauge!(RUNTIME_WORKERS),
            kernel_stack: metrics::gauge!(HOST_KERNEL_STACK),
            tcp_sockets: metrics::gauge!(HOST_TCP_SOCKETS),
        };
        sampler.sample();
        let (requests, inbox) = mpsc::channel::<RenderRequest>();
        std::thread::Builder::new()
            .name("wsscale-sampler".into())
            .spawn(move || {
                loop {
                    match inbox.recv_timeout(UPKEEP_PERIOD) {
                        Ok(reply) => {
                            let _ = reply.send(sampler.render());
                        }
                        Err(RecvTimeoutError::Timeout) => sampler.upkeep(),
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(SamplerHandle { requests })
    }

    /// A scrape, sampled now; None if the sampler thread is gone.
    pub async fn render(&self) -> Option<String> {
        let (reply, rendered) = tokio::sync::oneshot::channel();
        self.requests.send(reply).ok()?;
        rendered.await.ok()
    }
}

impl Sampler {
    /// Reads the machine and writes every sampled gauge. With no connection open, the
    /// reading becomes the new baseline.
    fn sample(&mut self) {
        self.process.collect();
        let active = self.connections.active_connections();
        let now = Baseline {
            rss_bytes: proc::self_rss_bytes().unwrap_or(0),
            heap_bytes: alloc::allocated_bytes() as u64,
        };
        if active == 0 || self.baseline.is_none() {
            self.baseline = Some(now);
        }
        let baseline = self.baseline.unwrap_or(now);
        let per_connection = |current: u64, base: u64| {
            if active == 0 {
                0.0
            } else {
                current.saturating_sub(base) as f64 / active as f64
            }
        };
        self.active.set(active as f64);
        self.handshakes_in_flight
            .set(self.connections.handshakes_in_flight() as f64);
        self.heap.set(now.heap_bytes as f64);
        self.rss_per_connection
            .set(per_connection(now.rss_bytes, baseline.rss_bytes));
        self.heap_per_connection
            .set(per_connection(now.heap_bytes, baseline.heap_bytes));
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

    fn render(&mut self) -> String {
        self.server_metrics.flush_pending();
        self.prometheus.run_upkeep();
        self.sample();
        self.prometheus.render()
    }

    /// Histogram samples wait in per-metric buffers until upkeep folds them into buckets;
    /// without it they would grow with every handshake and show up as heap.
    fn upkeep(&mut self) {
        self.server_metrics.flush_pending();
        self.prometheus.run_upkeep();
        if self.connections.active_connections() == 0 {
            self.sample();
        }
    }
}
