//! The server's metrics: names, the handles the connection path writes, and the
//! Prometheus recorder. Split by job:
//!
//! - this module: [`install`] (the recorder with the global labels, every metric
//!   described), and the names and handles of [`registry`], re-exported: metric names as
//!   constants, [`ServerMetrics`] (pre-registered handles);
//! - [`sampler`]: the one thread that reads /proc and the allocator into gauges, folds
//!   histogram samples in, renders each scrape — so no /proc read ever runs on a thread
//!   that serves connections — and gives the allocator's free memory back to the OS after
//!   a burst of handshakes;
//! - [`live`]: the live page's JSON (`GET /api/live`), built on the sampler thread from the
//!   very exposition a scrape gets, plus the zero-connection baselines and the limits;
//! - [`http`]: GET /metrics, GET /healthz, the live page (`GET /`, its assets and its
//!   JSON) and POST /broadcast.
//!
//! Every series carries the `mode`, `engine` and `scheme` (ws or wss) labels (global
//! labels) so every server compares on one dashboard. Labels are bounded: close and reject reasons, memory
//! source; never anything per connection. Every metric is described and written at start,
//! so the first scrape already shows all of them.

pub mod http;
pub mod live;
mod registry;
pub mod sampler;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use self::registry::*;
use crate::config::{Engine, Mode, Scheme};

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

/// The labels every series of this server carries, in order: what tells servers apart on
/// one dashboard, and what the live page's title shows (it reads them off the exposition,
/// see [`live`]), so a label added here appears in both.
fn global_labels(mode: Mode, engine: Engine, scheme: Scheme) -> Vec<(&'static str, &'static str)> {
    vec![
        ("mode", mode.as_str()),
        ("engine", engine.as_str()),
        ("scheme", scheme.as_str()),
    ]
}

/// Installs the process-wide Prometheus recorder with the `mode` and `engine` labels and
/// describes every metric this server exports.
pub fn install(mode: Mode, engine: Engine, scheme: Scheme) -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for (name, value) in global_labels(mode, engine, scheme) {
        builder = builder.add_global_label(name, value);
    }
    let handle = builder
        .set_buckets_for_metric(Matcher::Full(HANDSHAKE_DURATION.to_owned()), HANDSHAKE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TLS_HANDSHAKE_DURATION.to_owned()), HANDSHAKE_BUCKETS)?
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
        "Clients refused a WebSocket, by reason: capacity (503), handshake_timeout, bad_request (400/426), thread_spawn (503), tls (a failed TLS handshake)."
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
    describe_counter!(
        CLOSE_LINGERS,
        Unit::Count,
        "Connections the lean engine failed (a violation, a message too big) that lingered after their close frame, reading and discarding, by how it ended: peer_closed, timeout (2 s), limit (1 MiB)."
    );
    describe_counter!(
        CLOSE_LINGER_BYTES,
        Unit::Bytes,
        "Bytes failed connections read and discarded while they lingered."
    );
    describe_counter!(
        PUSHES_WRITTEN,
        Unit::Count,
        "Pushes handed to a socket, by who wrote them: path=direct, the post itself (tasks mode, lean engine, plain TCP, nothing half-written); path=task, the connection's own task or thread."
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
    describe_histogram!(
        TLS_HANDSHAKE_DURATION,
        Unit::Seconds,
        "Time from accepting the TCP connection to the end of its TLS handshake (wss:// only)."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        Unit::Count,
        "TLS handshakes that failed, by reason: timeout, plain_http (answered 400), protocol (not TLS, an alert, nothing in common), eof, io."
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
