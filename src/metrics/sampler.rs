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
//!
//! The live page's JSON is answered here too ([`SamplerHandle::live`]): a scrape, sampled
//! and rendered exactly as for /metrics, read back into [`LiveServer`] with the baselines
//! only this thread holds. An open page asks once a second; answers less than
//! [`LIVE_REUSE`] old are reused, so several open pages cost one sample.
//!
//! It also gives memory back to the OS after a burst of handshakes ([`Trimmer`]): once no
//! handshake is in flight and the resident memory outside the live heap has grown by
//! `--trim-threshold` since the last time, it calls glibc's `malloc_trim(0)`. Here rather
//! than in either model, so both modes and both engines run the same allocator the same
//! way. Measured with scripts/bench-burst.sh (10,000 lean connections, tasks mode, 2
//! cores, median of 3): without it a connection left 1,180 B of RSS when connections
//! arrived paced but 2,692–2,768 B when 2,048–8,192 arrived unpaced (the heap: 770 B
//! either way; malloc_info showed ~20 MiB free in the Tokio workers' arenas, where the HTTP
//! phases ran); with it 1,180 B paced and 1,227–1,284 B unpaced, for one trim of ~1–2 ms
//! per burst. Fewer handshakes in flight (`--max-handshakes 256`: 1,730 B), mallopt
//! settings and other allocators were measured too: docs/serve.md, "Memory after a burst".

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use wsscale_host::proc::KernelMemory;
use wsscale_host::{alloc, proc};

use super::live::{self, Limits, LiveServer, SamplerFacts};
use super::registry::{
    CONNECTIONS_ACTIVE, CONNECTIONS_MAX, HANDSHAKES_IN_FLIGHT, HANDSHAKES_MAX, HEAP_ALLOCATED, HOST_KERNEL_STACK,
    HOST_SLAB, HOST_SLAB_UNRECLAIMABLE, HOST_TCP_MEMORY, HOST_TCP_SOCKETS, MEMORY_PER_CONNECTION, MEMORY_TRIM_DURATION,
    MEMORY_TRIMMED, MEMORY_TRIMS, RUNTIME_WORKERS, ServerMetrics, TASKS_ALIVE, at_zero,
};

/// How often histogram samples are folded in (and, with no connection open, the
/// baseline is read) between scrapes.
const UPKEEP_PERIOD: Duration = Duration::from_secs(1);
/// A live answer this recent is given again rather than sampled anew: pages poll once a
/// second, so two open pages (or a page and a reload) cost one sample.
const LIVE_REUSE: Duration = Duration::from_millis(500);

/// The figures a scrape reads off the running server besides /proc.
pub trait ConnectionCount: Send + Sync {
    fn active_connections(&self) -> usize;
    /// Connections in their HTTP phase now.
    fn handshakes_in_flight(&self) -> usize;
}

/// Memory at the last moment the server held no connection and had no handshake in
/// flight: the baseline of the per-connection figures.
#[derive(Debug, Clone, Copy, Default)]
struct Baseline {
    rss_bytes: u64,
    heap_bytes: u64,
    /// The host's kernel memory at that moment (the live page's kernel share).
    kernel: Option<KernelMemory>,
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
    slab: Gauge,
    slab_unreclaimable: Gauge,
    tcp_memory: Gauge,
    /// The host's kernel memory at the last sample.
    kernel_now: Option<KernelMemory>,
    trimmer: Trimmer,
    /// When this sampler started (the live page tells a restarted server by it).
    started_unix_ms: u64,
    /// The limits the live page shows, read once at start.
    limits: Limits,
    /// The last live answer and when it was sampled.
    last_live: Option<(Instant, LiveServer)>,
}

/// Gives the allocator's free memory back to the OS when a burst of handshakes has left
/// it resident. Each handshake in flight holds hyper's 8 KiB read buffer and 8 KiB header
/// buffer, the boxed HTTP phase and the request's parts; once the burst is over they are
/// free, but `free` only returns the top of an arena, above its highest live chunk, so a
/// few live allocations keep the rest resident (after 10,000 connections unpaced,
/// malloc_info: the workers' two arenas ~20 MiB, of which all but ~100 KiB free).
/// `malloc_trim(0)` releases the whole pages inside free chunks as well. RSS then shrinks
/// for real: nothing is hidden from /proc.
///
/// The signal is the resident memory outside the live heap (RSS minus the counting
/// allocator's bytes): it grows when freed memory stays resident, and a trim can only
/// lower it. Growth alone is not enough: while handshakes are in flight the memory would
/// be faulted back in at once, so a trim waits for a moment with none. At most one trim
/// per sample (a scrape, or the once-a-second upkeep), each only after `threshold_bytes`
/// more has accumulated, so a steady stream of handshakes cannot make it spin.
struct Trimmer {
    /// Growth of the resident memory outside the live heap that makes a trim worth it;
    /// 0 turns trimming off.
    threshold_bytes: u64,
    /// RSS minus live heap after the last trim (at first, the first reading); lowered
    /// whenever a reading is lower.
    floor_bytes: Option<u64>,
    trims: Counter,
    trimmed_bytes: Counter,
    duration: Histogram,
}

impl Trimmer {
    fn new(threshold_bytes: u64) -> Self {
        Trimmer {
            threshold_bytes,
            floor_bytes: None,
            trims: at_zero(metrics::counter!(MEMORY_TRIMS)),
            trimmed_bytes: at_zero(metrics::counter!(MEMORY_TRIMMED)),
            duration: metrics::histogram!(MEMORY_TRIM_DURATION),
        }
    }

    /// Trims if it is due: no handshake in flight, and RSS minus live heap at least
    /// `threshold_bytes` above its floor.
    fn trim_if_due(&mut self, handshakes_in_flight: usize) {
        if self.threshold_bytes == 0 {
            return;
        }
        let Ok(rss_bytes) = proc::self_rss_bytes() else {
            return;
        };
        let outside_heap = |rss_bytes: u64| rss_bytes.saturating_sub(alloc::allocated_bytes() as u64);
        let now = outside_heap(rss_bytes);
        let floor = *self.floor_bytes.get_or_insert(now);
        if now < floor {
            self.floor_bytes = Some(now);
            return;
        }
        if handshakes_in_flight > 0 || now - floor < self.threshold_bytes {
            return;
        }
        let started = Instant::now();
        alloc::release_free_memory();
        let took = started.elapsed();
        let after_bytes = proc::self_rss_bytes().unwrap_or(rss_bytes);
        let released = rss_bytes.saturating_sub(after_bytes);
        self.floor_bytes = Some(outside_heap(after_bytes));
        self.trims.increment(1);
        self.trimmed_bytes.increment(released);
        self.duration.record(took.as_secs_f64());
        tracing::debug!(released, ?took, "gave the allocator's free memory back to the OS");
    }
}

/// What the sampler thread is asked for; the answer comes back on the channel.
enum Request {
    /// A scrape: the rendered exposition.
    Render(tokio::sync::oneshot::Sender<String>),
    /// The live page's figures.
    Live(tokio::sync::oneshot::Sender<LiveServer>),
}

/// Asks the sampler thread for a fresh scrape, or the live page's figures. Cheap to clone.
#[derive(Clone)]
pub struct SamplerHandle {
    /// The sampler thread's inbox; the thread ends when every handle is dropped.
    requests: mpsc::Sender<Request>,
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
        trim_threshold_bytes: u64,
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
            slab: metrics::gauge!(HOST_SLAB),
            slab_unreclaimable: metrics::gauge!(HOST_SLAB_UNRECLAIMABLE),
            tcp_memory: metrics::gauge!(HOST_TCP_MEMORY),
            kernel_now: None,
            trimmer: Trimmer::new(trim_threshold_bytes),
            started_unix_ms: live::unix_now_ms(),
            limits: Limits::read(None, max_connections),
            last_live: None,
        };
        sampler.sample();
        // The mode is one of the global labels: read it off the first exposition, as the
        // page reads its title.
        sampler.limits = Limits::read(live::mode_of(&sampler.prometheus.render()), max_connections);
        let (requests, inbox) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("wsscale-sampler".into())
            .spawn(move || {
                // A deadline rather than a fresh timeout per wait, so frequent scrapes
                // cannot put the upkeep off.
                let mut next_upkeep = Instant::now() + UPKEEP_PERIOD;
                loop {
                    match inbox.recv_timeout(next_upkeep.saturating_duration_since(Instant::now())) {
                        Ok(Request::Render(reply)) => {
                            let _ = reply.send(sampler.render());
                        }
                        Ok(Request::Live(reply)) => {
                            let _ = reply.send(sampler.live());
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            sampler.upkeep();
                            next_upkeep = Instant::now() + UPKEEP_PERIOD;
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(SamplerHandle { requests })
    }

    /// A scrape, sampled now; None if the sampler thread is gone.
    pub async fn render(&self) -> Option<String> {
        let (reply, rendered) = tokio::sync::oneshot::channel();
        self.requests.send(Request::Render(reply)).ok()?;
        rendered.await.ok()
    }

    /// The live page's figures, sampled now (or less than [`LIVE_REUSE`] ago); None if
    /// the sampler thread is gone.
    pub async fn live(&self) -> Option<LiveServer> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.requests.send(Request::Live(reply)).ok()?;
        answer.await.ok()
    }
}

impl Sampler {
    /// Trims if due, then reads the machine and writes every sampled gauge. With no
    /// connection open and no handshake in flight, the reading becomes the new baseline.
    fn sample(&mut self) {
        let handshakes_in_flight = self.connections.handshakes_in_flight();
        self.trimmer.trim_if_due(handshakes_in_flight);
        self.process.collect();
        let active = self.connections.active_connections();
        self.kernel_now = KernelMemory::read()
            .inspect_err(|error| tracing::debug!(%error, "cannot read the host's kernel memory"))
            .ok();
        let now = Baseline {
            rss_bytes: proc::self_rss_bytes().unwrap_or(0),
            heap_bytes: alloc::allocated_bytes() as u64,
            kernel: self.kernel_now,
        };
        if (active == 0 && handshakes_in_flight == 0) || self.baseline.is_none() {
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
        self.handshakes_in_flight.set(handshakes_in_flight as f64);
        self.heap.set(now.heap_bytes as f64);
        self.rss_per_connection
            .set(per_connection(now.rss_bytes, baseline.rss_bytes));
        self.heap_per_connection
            .set(per_connection(now.heap_bytes, baseline.heap_bytes));
        let runtime_metrics = self.runtime.metrics();
        self.tasks_alive.set(runtime_metrics.num_alive_tasks() as f64);
        self.workers.set(runtime_metrics.num_workers() as f64);
        if let Some(kernel) = self.kernel_now {
            self.kernel_stack.set(kernel.kernel_stack_bytes as f64);
            self.tcp_sockets.set(kernel.tcp_sockets_inuse as f64);
            self.slab.set(kernel.slab_bytes as f64);
            self.slab_unreclaimable.set(kernel.slab_unreclaimable_bytes as f64);
            self.tcp_memory.set(kernel.tcp_memory_bytes as f64);
        }
    }

    fn render(&mut self) -> String {
        self.server_metrics.flush_pending();
        self.prometheus.run_upkeep();
        self.sample();
        self.prometheus.render()
    }

    /// A scrape read back into the live page's figures, with the baselines.
    fn live(&mut self) -> LiveServer {
        if let Some((sampled_at, live)) = &self.last_live
            && sampled_at.elapsed() < LIVE_REUSE
        {
            return live.clone();
        }
        let exposition = self.render();
        let baseline = self.baseline.unwrap_or_default();
        let live = LiveServer::build(
            &exposition,
            &SamplerFacts {
                started_unix_ms: self.started_unix_ms,
                rss_baseline_bytes: baseline.rss_bytes,
                heap_baseline_bytes: baseline.heap_bytes,
                kernel_now: self.kernel_now,
                kernel_baseline: baseline.kernel,
                limits: &self.limits,
            },
        );
        self.last_live = Some((Instant::now(), live.clone()));
        live
    }

    /// Histogram samples wait in per-metric buffers until upkeep folds them into buckets;
    /// without it they would grow with every handshake and show up as heap. Trims are
    /// checked here too, so memory goes back to the OS whether or not anyone scrapes.
    fn upkeep(&mut self) {
        self.server_metrics.flush_pending();
        self.prometheus.run_upkeep();
        if self.connections.active_connections() == 0 {
            self.sample();
        } else {
            self.trimmer.trim_if_due(self.connections.handshakes_in_flight());
        }
    }
}
