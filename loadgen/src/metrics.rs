//! The generator's own Prometheus metrics (`--metrics-listen`), so dashboards show the
//! client's view beside the server's. They are the process's that has the listener: in a
//! sharded run the parent, which writes the totals of every shard's events (the children
//! have no listener). The listener itself, with the live page, is [`crate::live`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use metrics::{Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::live::{self, LiveState, RunLabels};
use crate::stats::{Histograms, Progress};

pub const CONNECTIONS_OPEN: &str = "wsscale_loadgen_connections_open";
pub const CONNECTIONS_OPENED: &str = "wsscale_loadgen_connections_opened_total";
pub const CONNECT_FAILURES: &str = "wsscale_loadgen_connect_failures_total";
pub const CONNECTIONS_LOST: &str = "wsscale_loadgen_connections_lost_total";
pub const CONNECT_DURATION: &str = "wsscale_loadgen_connect_duration_seconds";
pub const TLS_HANDSHAKE_DURATION: &str = "wsscale_loadgen_tls_handshake_duration_seconds";
pub const UPGRADE_DURATION: &str = "wsscale_loadgen_upgrade_duration_seconds";
pub const PING_RTT: &str = "wsscale_loadgen_ping_rtt_seconds";
pub const RECONNECTS: &str = "wsscale_loadgen_reconnects_total";
pub const RECONNECT_FAILURES: &str = "wsscale_loadgen_reconnect_failures_total";
pub const RECONNECT_DURATION: &str = "wsscale_loadgen_reconnect_seconds";
pub const PUSH_DELIVERY: &str = "wsscale_loadgen_push_delivery_seconds";
pub const PUSHES_MISSED: &str = "wsscale_loadgen_pushes_missed_total";
pub const MEMORY_PER_CONNECTION: &str = "wsscale_loadgen_memory_per_connection_bytes";

const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A reconnection takes from a few milliseconds (the backoff's first draw) to the length
/// of a server's restart plus the 5 s backoff cap, or a Retry-After.
const RECONNECT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

pub struct LoadMetrics {
    open: Gauge,
    connect: Histogram,
    tls_handshake: Histogram,
    upgrade: Histogram,
    ping_rtt: Histogram,
    reconnect: Histogram,
    push_delivery: Histogram,
    rss_per_connection: Gauge,
    heap_per_connection: Gauge,
    /// What the live page's JSON is built from; written here, with the metrics.
    live: Arc<Mutex<LiveState>>,
}

impl LoadMetrics {
    /// Installs the recorder, describes every metric, binds `addr` and serves /metrics,
    /// the live page and its JSON there (on the current Tokio runtime), and prints the
    /// page's address on stderr.
    pub fn install(addr: SocketAddr, run: RunLabels) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .with_context(|| format!("binding the metrics listener on {addr} (--metrics-listen)"))?;
        let bound = listener.local_addr()?;
        let mut builder = PrometheusBuilder::new();
        for name in [
            CONNECT_DURATION,
            TLS_HANDSHAKE_DURATION,
            UPGRADE_DURATION,
            PING_RTT,
            PUSH_DELIVERY,
        ] {
            builder = builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), BUCKETS)?;
        }
        builder = builder.set_buckets_for_metric(Matcher::Full(RECONNECT_DURATION.to_owned()), RECONNECT_BUCKETS)?;
        let prometheus = builder.install_recorder()?;
        metrics::describe_gauge!(
            CONNECTIONS_OPEN,
            Unit::Count,
            "Connections the load generator holds open now."
        );
        metrics::describe_counter!(
            CONNECTIONS_OPENED,
            Unit::Count,
            "Connections opened since the run started."
        );
        metrics::describe_counter!(
            CONNECT_FAILURES,
            Unit::Count,
            "Failed connection attempts, by reason (refused, timeout, http_503, tls_certificate_unknown, ...)."
        );
        metrics::describe_counter!(
            CONNECTIONS_LOST,
            Unit::Count,
            "Held connections that ended before the generator closed them, by reason."
        );
        metrics::describe_histogram!(CONNECT_DURATION, Unit::Seconds, "TCP connect time.");
        metrics::describe_histogram!(
            TLS_HANDSHAKE_DURATION,
            Unit::Seconds,
            "TLS handshake time (wss://), from the TCP connect to the handshake's end."
        );
        metrics::describe_histogram!(
            UPGRADE_DURATION,
            Unit::Seconds,
            "WebSocket upgrade time, after the TCP connect (wss://: after the TLS handshake)."
        );
        metrics::describe_histogram!(
            PING_RTT,
            Unit::Seconds,
            "Ping round trip, measured from the scheduled send time."
        );
        metrics::describe_counter!(RECONNECTS, Unit::Count, "Lost connections opened again (--reconnect).");
        metrics::describe_counter!(
            RECONNECT_FAILURES,
            Unit::Count,
            "Failed reconnection attempts, by reason (refused, http_503, ...)."
        );
        metrics::describe_histogram!(
            RECONNECT_DURATION,
            Unit::Seconds,
            "From a connection's loss to its reconnection (--reconnect)."
        );
        metrics::describe_histogram!(
            PUSH_DELIVERY,
            Unit::Seconds,
            "Server push delivery: receipt time minus the send time the push carries (CLOCK_REALTIME)."
        );
        metrics::describe_counter!(
            PUSHES_MISSED,
            Unit::Count,
            "Server pushes missed: sequence gaps per connection, summed."
        );
        metrics::describe_gauge!(
            MEMORY_PER_CONNECTION,
            Unit::Bytes,
            "The generator's own memory growth since before its first connection, by source (rss, heap), summed over its processes, per open connection; 0 with none open."
        );
        let live = Arc::new(Mutex::new(LiveState::new(run)));
        let metrics = LoadMetrics {
            open: metrics::gauge!(CONNECTIONS_OPEN),
            connect: metrics::histogram!(CONNECT_DURATION),
            tls_handshake: metrics::histogram!(TLS_HANDSHAKE_DURATION),
            upgrade: metrics::histogram!(UPGRADE_DURATION),
            ping_rtt: metrics::histogram!(PING_RTT),
            reconnect: metrics::histogram!(RECONNECT_DURATION),
            push_delivery: metrics::histogram!(PUSH_DELIVERY),
            rss_per_connection: metrics::gauge!(MEMORY_PER_CONNECTION, "source" => "rss"),
            heap_per_connection: metrics::gauge!(MEMORY_PER_CONNECTION, "source" => "heap"),
            live: live.clone(),
        };
        // The commonest causes are present from the first scrape; others appear when seen.
        for reason in ["refused", "timeout", "reset", "http_503"] {
            metrics::counter!(CONNECT_FAILURES, "reason" => reason).absolute(0);
        }
        for reason in ["close_1001", "reset", "eof"] {
            metrics::counter!(CONNECTIONS_LOST, "reason" => reason).absolute(0);
        }
        for reason in ["refused", "http_503"] {
            metrics::counter!(RECONNECT_FAILURES, "reason" => reason).absolute(0);
        }
        metrics.update(&Progress::default());
        tokio::spawn(live::serve(
            tokio::net::TcpListener::from_std(listener)?,
            prometheus,
            live,
        ));
        eprintln!("metrics http://{bound}/metrics, live page http://{bound}/");
        Ok(metrics)
    }

    /// Writes the run's totals.
    pub fn update(&self, totals: &Progress) {
        self.open.set(totals.open_now as f64);
        let (rss, heap) = totals.memory.per_connection(totals.open_now).unwrap_or_default();
        self.rss_per_connection.set(rss);
        self.heap_per_connection.set(heap);
        live::lock(&self.live).update(totals);
        metrics::counter!(CONNECTIONS_OPENED).absolute(totals.opened);
        for (reason, count) in &totals.failures {
            metrics::counter!(CONNECT_FAILURES, "reason" => reason.clone()).absolute(*count);
        }
        for (reason, count) in &totals.lost_by_cause {
            metrics::counter!(CONNECTIONS_LOST, "reason" => reason.clone()).absolute(*count);
        }
        metrics::counter!(RECONNECTS).absolute(totals.reconnected);
        for (reason, count) in &totals.reconnect_failures {
            metrics::counter!(RECONNECT_FAILURES, "reason" => reason.clone()).absolute(*count);
        }
        metrics::counter!(PUSHES_MISSED).absolute(totals.push_missed);
    }

    /// Feeds new samples (microseconds) into the Prometheus histograms, and the page's.
    pub fn record(&self, recent: &Histograms) {
        live::lock(&self.live).record(recent);
        for (histogram, samples) in [
            (&self.connect, &recent.connect_us),
            (&self.tls_handshake, &recent.tls_us),
            (&self.upgrade, &recent.upgrade_us),
            (&self.ping_rtt, &recent.ping_rtt_us),
            (&self.reconnect, &recent.reconnect_us),
            (&self.push_delivery, &recent.push_delivery_us),
        ] {
            for value in samples.iter_recorded() {
                let seconds = value.value_iterated_to() as f64 / 1e6;
                for _ in 0..value.count_at_value() {
                    histogram.record(seconds);
                }
            }
        }
    }
}
