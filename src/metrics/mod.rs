//! The server's metrics: names, the handles the connection path writes, and the
//! Prometheus recorder. Split by job:
//!
//! - this module: metric names as constants, [`ServerMetrics`] (pre-registered handles),
//!   [`install`] (the recorder with the global labels, every metric described);
//! - [`sampler`]: the one thread that reads /proc and the allocator into gauges, folds
//!   histogram samples in, renders each scrape — so no /proc read ever runs on a thread
//!   that serves connections — and gives the allocator's free memory back to the OS after
//!   a burst of handshakes;
//! - [`live`]: the live page's JSON (`GET /api/live`), built on the sampler thread from the
//!   very exposition a scrape gets, plus the zero-connection baselines and the limits;
//! - [`http`]: GET /metrics, GET /healthz, the live page (`GET /`, its assets and its
//!   JSON) and POST /broadcast.
//!
//! Every series carries the `mode` and `engine` labels (global labels) so every server
//! compares on one dashboard. Labels are bounded: close and reject reasons, memory
//! source; never anything per connection. Every metric is described and written at start,
//! so the first scrape already shows all of them.

pub mod http;
pub mod live;
pub mod sampler;

use std::sync::{Arc, Mutex};

use metrics::{Counter, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::{Engine, Mode};
use crate::handshake::RejectReason;
use crate::lifecycle::CloseReason;
use crate::session::Tally;

pub const CONNECTIONS_ACTIVE: &str = "wsscale_connections_active";
pub const CONNECTIONS_OPENED: &str = "wsscale_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "wsscale_connections_closed_total";
pub const CONNECTIONS_REJECTED: &str = "wsscale_connections_rejected_total";
pub const CONNECTIONS_MAX: &str = "wsscale_connections_max";
pub const MESSAGES_RECEIVED: &str = "wsscale_messages_received_total";
pub const MESSAGES_SENT: &str = "wsscale_messages_sent_total";
pub const HANDSHAKE_DURATION: &str = "wsscale_handshake_duration_seconds";
pub const BROADCASTS: &str = "wsscale_broadcasts_total";
pub const BROADCAST_DURATION: &str = "wsscale_broadcast_duration_seconds";
pub const PUSHES_DROPPED: &str = "wsscale_pushes_dropped_total";
pub const HANDSHAKES_IN_FLIGHT: &str = "wsscale_handshakes_in_flight";
pub const HANDSHAKES_MAX: &str = "wsscale_handshakes_max";
pub const HEAP_ALLOCATED: &str = "wsscale_heap_allocated_bytes";
pub const MEMORY_PER_CONNECTION: &str = "wsscale_memory_per_connection_bytes";
pub const TASKS_ALIVE: &str = "wsscale_tasks_alive";
pub const RUNTIME_WORKERS: &str = "wsscale_runtime_workers";
pub const HOST_KERNEL_STACK: &str = "wsscale_host_kernel_stack_bytes";
pub const HOST_TCP_SOCKETS: &str = "wsscale_host_tcp_sockets_inuse";
pub const HOST_SLAB: &str = "wsscale_host_slab_bytes";
pub const HOST_SLAB_UNRECLAIMABLE: &str = "wsscale_host_slab_unreclaimable_bytes";
pub const HOST_TCP_MEMORY: &str = "wsscale_host_tcp_memory_bytes";
pub const MEMORY_TRIMS: &str = "wsscale_memory_trims_total";
pub const MEMORY_TRIMMED: &str = "wsscale_memory_trimmed_bytes_total";
pub const MEMORY_TRIM_DURATION: &str = "wsscale_memory_trim_duration_seconds";

/// Handshake durations span loopback microseconds to slow clients' seconds.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A broadcast reaches 2 connections in microseconds and 16,000 threads in a good part of
/// a second.
const BROADCAST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// A trim walks every arena's free chunks: tens of microseconds to tens of milliseconds.
const TRIM_BUCKETS: &[f64] = &[0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];

/// Handles to the metrics the connection path writes, registered once so the hot path
/// does no registry lookups.
#[derive(Clone)]
pub struct ServerMetrics {
    pub messages_received: Counter,
    pub messages_sent: Counter,
    pub connections_opened: Counter,
    /// Pushes posted to the held connections (`POST /broadcast`, `--push-interval`).
    pub broadcasts: Counter,
    /// Pushes a connection dropped because its peer was not reading (its queue was full).
    pub pushes_dropped: Counter,
    /// Durations (seconds) waiting to be recorded by the sampler thread. The exporter's
    /// histogram storage is epoch-based (crossbeam-epoch) and keeps a few KiB of
    /// per-thread state after each recording thread exits; recording from thousands of
    /// short-lived connection threads would charge that to threads mode. So both modes
    /// hand durations over here and [`ServerMetrics::flush_pending`] records them.
    pending: Arc<Mutex<Pending>>,
    handshake_duration: Histogram,
    broadcast_duration: Histogram,
    closed: ByReason<CloseReason>,
    rejected: ByReason<RejectReason>,
}

/// Durations waiting for the sampler thread to record them.
#[derive(Debug, Default)]
struct Pending {
    handshakes: Vec<f64>,
    broadcasts: Vec<f64>,
}

/// Writes a counter's zero, so it is present from the first scrape rather than from its
/// first event.
pub(crate) fn at_zero(counter: Counter) -> Counter {
    counter.increment(0);
    counter
}

/// One counter per reason of a labelled counter, found by the reason itself (never by
/// its position, so reordering an enum cannot move a count to another label).
#[derive(Clone)]
struct ByReason<R>(Vec<(R, Counter)>);

impl<R: Copy + PartialEq> ByReason<R> {
    /// Registers `name{reason=...}` for every reason and writes its zero.
    fn register(name: &'static str, reasons: &[R], label: fn(R) -> &'static str) -> Self {
        ByReason(
            reasons
                .iter()
                .map(|&reason| {
                    let counter = metrics::counter!(name, "reason" => label(reason));
                    (reason, at_zero(counter))
                })
                .collect(),
        )
    }

    fn increment(&self, reason: R) {
        if let Some((_, counter)) = self.0.iter().find(|(known, _)| *known == reason) {
            counter.increment(1);
        }
    }
}

impl ServerMetrics {
    /// Registers every connection-path metric with the installed recorder and writes its
    /// zero, so it is present from the first scrape.
    pub fn register() -> Self {
        ServerMetrics {
            messages_received: at_zero(metrics::counter!(MESSAGES_RECEIVED)),
            messages_sent: at_zero(metrics::counter!(MESSAGES_SENT)),
            connections_opened: at_zero(metrics::counter!(CONNECTIONS_OPENED)),
            broadcasts: at_zero(metrics::counter!(BROADCASTS)),
            pushes_dropped: at_zero(metrics::counter!(PUSHES_DROPPED)),
            pending: Arc::default(),
            handshake_duration: metrics::histogram!(HANDSHAKE_DURATION),
            broadcast_duration: metrics::histogram!(BROADCAST_DURATION),
            closed: ByReason::register(CONNECTIONS_CLOSED, &CloseReason::ALL, CloseReason::as_str),
            rejected: ByReason::register(CONNECTIONS_REJECTED, &RejectReason::ALL, RejectReason::as_str),
        }
    }

    pub fn handshake(&self, seconds: f64) {
        lock(&self.pending).handshakes.push(seconds);
    }

    /// A push reached its last connection, `seconds` after it was posted.
    pub fn broadcast_done(&self, seconds: f64) {
        lock(&self.pending).broadcasts.push(seconds);
    }

    /// Records the pending durations into their histograms, on the caller's thread.
    pub fn flush_pending(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        for seconds in pending.handshakes {
            self.handshake_duration.record(seconds);
        }
        for seconds in pending.broadcasts {
            self.broadcast_duration.record(seconds);
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
        self.closed.increment(reason);
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.rejected.increment(reason);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The labels every series of this server carries, in order: what tells servers apart on
/// one dashboard, and what the live page's title shows (it reads them off the exposition,
/// see [`live`]), so a label added here appears in both.
fn global_labels(mode: Mode, engine: Engine) -> Vec<(&'static str, &'static str)> {
    vec![("mode", mode.as_str()), ("engine", engine.as_str())]
}

/// Installs the process-wide Prometheus recorder with the global labels and describes
/// every metric this server exports.
pub fn install(mode: Mode, engine: Engine) -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for (name, value) in global_labels(mode, engine) {
        builder = builder.add_global_label(name, value);
    }
    let handle = builder
        .set_buckets_for_metric(Matcher::Full(HANDSHAKE_DURATION.to_owned()), HANDSHAKE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BROADCAST_DURATION.to_owned()), BROADCAST_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(MEMORY_TRIM_DURATION.to_owned()), TRIM_BUCKETS)?
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
    describe_gauge!(
        HANDSHAKES_IN_FLIGHT,
        Unit::Count,
        "Connections in their HTTP phase (accepted, upgrade not yet answered) now."
    );
    describe_gauge!(
        HANDSHAKES_MAX,
        Unit::Count,
        "Most connections in their HTTP phase at once (--max-handshakes); past it accept waits."
    );
    describe_counter!(
        BROADCASTS,
        Unit::Count,
        "Pushes posted to every held connection (POST /broadcast, --push-interval)."
    );
    describe_histogram!(
        BROADCAST_DURATION,
        Unit::Seconds,
        "Time from posting a push to the last connection handing it to its socket (or queueing it behind a peer that is not reading)."
    );
    describe_counter!(
        PUSHES_DROPPED,
        Unit::Count,
        "Pushes a connection dropped because its peer was not reading and its queue (--write-buffer-size) was full."
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
    describe_counter!(
        MEMORY_TRIMS,
        Unit::Count,
        "Times the allocator's free memory was given back to the OS (malloc_trim) after handshakes left it resident (--trim-threshold)."
    );
    describe_counter!(
        MEMORY_TRIMMED,
        Unit::Bytes,
        "Resident memory those trims gave back to the OS (RSS before minus after each trim)."
    );
    describe_histogram!(
        MEMORY_TRIM_DURATION,
        Unit::Seconds,
        "Time each of those trims took, on the sampler thread."
    );
    describe_gauge!(
        HOST_TCP_SOCKETS,
        Unit::Count,
        "TCP sockets in use on the whole host (/proc/net/sockstat)."
    );
    describe_gauge!(
        HOST_SLAB,
        Unit::Bytes,
        "Kernel slab memory on the whole host (Slab in /proc/meminfo): every socket's tcp_sock, inode, dentry, file and epoll entry among much else; in no process's RSS."
    );
    describe_gauge!(
        HOST_SLAB_UNRECLAIMABLE,
        Unit::Bytes,
        "The part of the host's slab the kernel cannot reclaim (SUnreclaim in /proc/meminfo), where a held socket's tcp_sock lives."
    );
    describe_gauge!(
        HOST_TCP_MEMORY,
        Unit::Bytes,
        "Socket buffer memory of the host's TCP sockets (mem in /proc/net/sockstat, pages times the page size): data queued, near 0 when idle."
    );
}
