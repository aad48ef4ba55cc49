//! Metric names and the handles the connection path writes: every name as a constant
//! (with its unit and `_total` on counters), and [`ServerMetrics`], registered once so the
//! hot path does no registry lookups.

use std::sync::{Arc, Mutex};

use metrics::{Counter, Histogram};

use crate::handshake::RejectReason;
use crate::lifecycle::{CloseReason, LingerEnd};
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
pub const PUSHES_WRITTEN: &str = "wsscale_pushes_written_total";
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
pub const TLS_HANDSHAKE_DURATION: &str = "wsscale_tls_handshake_duration_seconds";
pub const TLS_HANDSHAKE_FAILURES: &str = "wsscale_tls_handshake_failures_total";
pub const CLOSE_LINGERS: &str = "wsscale_close_lingers_total";
pub const CLOSE_LINGER_BYTES: &str = "wsscale_close_linger_bytes_total";

/// Why a TLS handshake failed: the `reason` label of `wsscale_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// It did not finish within --handshake-timeout (a stalled or slow ClientHello).
    Timeout,
    /// The client spoke plain HTTP to the TLS port (answered with a plain 400).
    PlainHttp,
    /// Not TLS, a malformed message, an alert, no common version or cipher suite.
    Protocol,
    /// The client closed or reset the connection mid-handshake.
    Eof,
    /// Another socket error.
    Io,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 5] = [
        TlsFailure::Timeout,
        TlsFailure::PlainHttp,
        TlsFailure::Protocol,
        TlsFailure::Eof,
        TlsFailure::Io,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::Timeout => "timeout",
            TlsFailure::PlainHttp => "plain_http",
            TlsFailure::Protocol => "protocol",
            TlsFailure::Eof => "eof",
            TlsFailure::Io => "io",
        }
    }
}

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
    /// Bytes a failed connection read and discarded while it lingered.
    lingered_bytes: Counter,
    /// Lingering closes by how they ended.
    lingers: ByReason<LingerEnd>,
    /// Pushes written by the post itself, straight to the socket (`path="direct"`: tasks
    /// mode, lean, plain TCP, nothing half-written).
    pushes_direct: Counter,
    /// Pushes a connection's own task (or thread) wrote or queued (`path="task"`).
    pushes_by_task: Counter,
    /// Durations (seconds) waiting to be recorded by the sampler thread. The exporter's
    /// histogram storage is epoch-based (crossbeam-epoch) and keeps a few KiB of
    /// per-thread state after each recording thread exits; recording from thousands of
    /// short-lived connection threads would charge that to threads mode. So both modes
    /// hand durations over here and [`ServerMetrics::flush_pending`] records them.
    pending: Arc<Mutex<Pending>>,
    handshake_duration: Histogram,
    broadcast_duration: Histogram,
    tls_handshake_duration: Histogram,
    closed: ByReason<CloseReason>,
    rejected: ByReason<RejectReason>,
    tls_failed: ByReason<TlsFailure>,
}

/// Durations waiting for the sampler thread to record them.
#[derive(Debug, Default)]
struct Pending {
    handshakes: Vec<f64>,
    broadcasts: Vec<f64>,
    tls_handshakes: Vec<f64>,
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
            lingered_bytes: at_zero(metrics::counter!(CLOSE_LINGER_BYTES)),
            lingers: ByReason::register(CLOSE_LINGERS, &LingerEnd::ALL, LingerEnd::as_str),
            pushes_direct: at_zero(metrics::counter!(PUSHES_WRITTEN, "path" => "direct")),
            pushes_by_task: at_zero(metrics::counter!(PUSHES_WRITTEN, "path" => "task")),
            pending: Arc::default(),
            handshake_duration: metrics::histogram!(HANDSHAKE_DURATION),
            broadcast_duration: metrics::histogram!(BROADCAST_DURATION),
            tls_handshake_duration: metrics::histogram!(TLS_HANDSHAKE_DURATION),
            closed: ByReason::register(CONNECTIONS_CLOSED, &CloseReason::ALL, CloseReason::as_str),
            rejected: ByReason::register(CONNECTIONS_REJECTED, &RejectReason::ALL, RejectReason::as_str),
            tls_failed: ByReason::register(TLS_HANDSHAKE_FAILURES, &TlsFailure::ALL, TlsFailure::as_str),
        }
    }

    pub fn handshake(&self, seconds: f64) {
        lock(&self.pending).handshakes.push(seconds);
    }

    /// A post wrote `count` pushes straight to their sockets (each a message sent).
    pub fn pushes_written_directly(&self, count: u64) {
        if count > 0 {
            self.pushes_direct.increment(count);
            self.messages_sent.increment(count);
        }
    }

    /// A connection's task (or thread) wrote or queued `count` pushes (counted as
    /// messages sent with the rest of its tally).
    pub fn pushes_written_by_task(&self, count: u64) {
        if count > 0 {
            self.pushes_by_task.increment(count);
        }
    }

    /// A push reached its last connection, `seconds` after it was posted.
    pub fn broadcast_done(&self, seconds: f64) {
        lock(&self.pending).broadcasts.push(seconds);
    }

    /// A TLS handshake finished, `seconds` after the connection was accepted.
    pub fn tls_handshake(&self, seconds: f64) {
        lock(&self.pending).tls_handshakes.push(seconds);
    }

    /// A TLS handshake failed.
    pub fn tls_failed(&self, reason: TlsFailure) {
        self.tls_failed.increment(reason);
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
        for seconds in pending.tls_handshakes {
            self.tls_handshake_duration.record(seconds);
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
        if tally.lingered_bytes > 0 {
            self.lingered_bytes.increment(tally.lingered_bytes);
        }
    }

    /// A failed connection stopped lingering and closed its socket.
    pub fn linger_ended(&self, end: LingerEnd) {
        self.lingers.increment(end);
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
