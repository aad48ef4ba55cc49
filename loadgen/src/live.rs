//! The generator's listener (`--metrics-listen`): GET /metrics (the recorder's exposition),
//! the live page (GET /, its assets: `wsscale_web`) and its JSON (GET /api/live, every field
//! in docs/live.md); every other path answers 404.
//!
//! The figures are those the Prometheus metrics get, at the same moment: [`LoadMetrics`]
//! writes both from the aggregator's totals of every shard's events, so in a sharded run
//! the parent's page shows the whole run, as its /metrics does. Each shard reports its own
//! memory in its events; the page sums them.
//!
//! [`LoadMetrics`]: crate::metrics::LoadMetrics

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hdrhistogram::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::config::LoadConfig;
use crate::report::DeflateSummary;
use crate::stats::{Histograms, Progress, new_histogram};

/// How far back the "recent" ping percentiles look.
const RECENT_WINDOW: Duration = Duration::from_secs(10);
/// How often the recorder's upkeep runs (`install_recorder` starts none): histogram
/// samples are folded into buckets, so they do not pile up between scrapes.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// What the page says about the run besides the events: its title and its size.
#[derive(Debug, Clone)]
pub struct RunLabels {
    /// `[("target", url), ("run", id), ("segment", "I/N")?]`: the page's title.
    pub labels: Vec<(String, String)>,
    /// Connections asked of this generator (its segment's share).
    pub connections: u64,
    /// Processes holding the connections (1, or the shards).
    pub processes: usize,
    /// `--offer-deflate`: the offer, as sent; None without it.
    pub offer_deflate: Option<String>,
}

impl RunLabels {
    pub fn of(config: &LoadConfig, processes: usize) -> RunLabels {
        let mut labels = vec![
            ("target".to_owned(), config.url.to_string()),
            ("run".to_owned(), config.run_id.clone()),
        ];
        if let Some(segment) = config.segment {
            labels.push(("segment".to_owned(), segment.to_string()));
        }
        RunLabels {
            labels,
            connections: config.segment_share().connections as u64,
            processes,
            offer_deflate: config.offer_deflate.as_ref().map(ToString::to_string),
        }
    }
}

/// The run as the page sees it, kept up to date by [`crate::metrics::LoadMetrics`].
pub struct LiveState {
    run: RunLabels,
    started_unix_ms: u64,
    totals: Progress,
    /// Every sample since the run started.
    whole: Histograms,
    /// Ping samples of the last [`RECENT_WINDOW`], as they arrived.
    recent_pings: VecDeque<(Instant, Histogram<u64>)>,
}

pub fn lock(state: &Mutex<LiveState>) -> MutexGuard<'_, LiveState> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LiveState {
    pub fn new(run: RunLabels) -> LiveState {
        LiveState {
            run,
            started_unix_ms: unix_now_ms(),
            totals: Progress::default(),
            whole: Histograms::default(),
            recent_pings: VecDeque::new(),
        }
    }

    /// The totals so far (their `recent` is not kept).
    pub fn update(&mut self, totals: &Progress) {
        self.totals = Progress {
            recent: Histograms::default(),
            ..totals.clone()
        };
    }

    /// New samples.
    pub fn record(&mut self, recent: &Histograms) {
        self.whole.add(recent);
        if !recent.ping_rtt_us.is_empty() {
            self.recent_pings
                .push_back((Instant::now(), recent.ping_rtt_us.clone()));
        }
        self.forget_old_pings();
    }

    fn forget_old_pings(&mut self) {
        while let Some((at, _)) = self.recent_pings.front() {
            if at.elapsed() <= RECENT_WINDOW {
                break;
            }
            self.recent_pings.pop_front();
        }
    }

    pub fn answer(&mut self) -> LiveLoad {
        self.forget_old_pings();
        let mut recent = new_histogram();
        for (_, pings) in &self.recent_pings {
            // Same precision, auto-resizing: adding cannot fail.
            let _ = recent.add(pings);
        }
        let totals = &self.totals;
        let per_connection = totals.memory.per_connection(totals.open_now);
        LiveLoad {
            kind: "load",
            labels: self.run.labels.clone(),
            pid: std::process::id(),
            started_unix_ms: self.started_unix_ms,
            time_unix_ms: unix_now_ms(),
            connections: self.run.connections,
            processes: self.run.processes,
            phase: if totals.opened + totals.failed < self.run.connections {
                "ramping"
            } else {
                "holding"
            },
            open: totals.open_now,
            opened_total: totals.opened,
            failed_total: totals.failed,
            failures_total: totals.failures.clone(),
            lost_total: totals.lost,
            lost_by_cause_total: totals.lost_by_cause.clone(),
            closed_cleanly_total: totals.closed_cleanly,
            messages_echoed_total: totals.messages_echoed,
            reconnected_total: totals.reconnected,
            reconnect_failures_total: totals.reconnect_failures.clone(),
            push_missed_total: totals.push_missed,
            connect_ms: Latency::of(&self.whole.connect_us),
            upgrade_ms: Latency::of(&self.whole.upgrade_us),
            ping_rtt_ms: Latency::of(&self.whole.ping_rtt_us),
            ping_rtt_recent_ms: Latency::of(&recent),
            push_delivery_ms: Latency::of(&self.whole.push_delivery_us),
            reconnect_ms: Latency::of(&self.whole.reconnect_us),
            rss_bytes: totals.memory.rss_bytes,
            heap_bytes: totals.memory.heap_bytes,
            rss_baseline_bytes: totals.memory.rss_before_bytes,
            heap_baseline_bytes: totals.memory.heap_before_bytes,
            rss_per_connection_bytes: per_connection.map(|(rss, _)| rss),
            heap_per_connection_bytes: per_connection.map(|(_, heap)| heap),
            deflate: DeflateSummary::of(self.run.offer_deflate.clone(), totals),
        }
    }
}

/// One answer of the generator's `GET /api/live`.
#[derive(Debug, Clone, Serialize)]
pub struct LiveLoad {
    /// `"load"` (the server's page answers `"server"`).
    pub kind: &'static str,
    /// `[["target", URL], ["run", ID], ["segment", "I/N"]?]`: the page's title.
    pub labels: Vec<(String, String)>,
    /// The process that has the listener (the parent of a sharded run); with
    /// `started_unix_ms`, how the page tells another run on the same address.
    pub pid: u32,
    pub started_unix_ms: u64,
    pub time_unix_ms: u64,
    /// Connections asked of this generator (its segment's share).
    pub connections: u64,
    /// Processes holding them.
    pub processes: usize,
    /// `"ramping"` until every connection was attempted, then `"holding"`.
    pub phase: &'static str,
    /// Connections open now.
    pub open: u64,
    pub opened_total: u64,
    pub failed_total: u64,
    /// Failed attempts by cause (`refused`, `timeout`, `http_503`, …).
    pub failures_total: BTreeMap<String, u64>,
    pub lost_total: u64,
    /// Losses by cause (`close_1001`, `reset`, `eof`, …).
    pub lost_by_cause_total: BTreeMap<String, u64>,
    pub closed_cleanly_total: u64,
    pub messages_echoed_total: u64,
    pub reconnected_total: u64,
    pub reconnect_failures_total: BTreeMap<String, u64>,
    pub push_missed_total: u64,
    /// Since the run started.
    pub connect_ms: Latency,
    pub upgrade_ms: Latency,
    pub ping_rtt_ms: Latency,
    /// The last 10 seconds' pings.
    pub ping_rtt_recent_ms: Latency,
    pub push_delivery_ms: Latency,
    pub reconnect_ms: Latency,
    /// Summed over the processes holding connections: now, and before each one's first
    /// connection.
    pub rss_bytes: u64,
    pub heap_bytes: u64,
    pub rss_baseline_bytes: u64,
    pub heap_baseline_bytes: u64,
    /// Growth ÷ connections open; null with none open.
    pub rss_per_connection_bytes: Option<f64>,
    pub heap_per_connection_bytes: Option<f64>,
    /// `--offer-deflate`: as the summary's `deflate`, so far; null without it.
    pub deflate: Option<DeflateSummary>,
}

/// Percentiles of a latency histogram in milliseconds; null with no sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub count: u64,
}

impl Latency {
    fn of(histogram_us: &Histogram<u64>) -> Latency {
        if histogram_us.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| Some(us as f64 / 1000.0);
        Latency {
            p50: ms(histogram_us.value_at_quantile(0.5)),
            p99: ms(histogram_us.value_at_quantile(0.99)),
            max: ms(histogram_us.max()),
            count: histogram_us.len(),
        }
    }
}

#[derive(Clone)]
struct Endpoints {
    prometheus: PrometheusHandle,
    state: Arc<Mutex<LiveState>>,
}

/// Serves the listener until the process exits, and runs the recorder's upkeep.
pub async fn serve(listener: tokio::net::TcpListener, prometheus: PrometheusHandle, state: Arc<Mutex<LiveState>>) {
    tokio::spawn({
        let prometheus = prometheus.clone();
        async move {
            let mut ticks = tokio::time::interval(UPKEEP_PERIOD);
            loop {
                ticks.tick().await;
                prometheus.run_upkeep();
            }
        }
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route(wsscale_web::LIVE_JSON_PATH, get(live))
        .merge(wsscale_web::routes(wsscale_web::Page::Load))
        .fallback(wsscale_web::not_found)
        .with_state(Endpoints { prometheus, state });
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "the metrics listener failed");
    }
}

async fn metrics(State(endpoints): State<Endpoints>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        endpoints.prometheus.render(),
    )
        .into_response()
}

async fn live(State(endpoints): State<Endpoints>) -> Response {
    let answer = lock(&endpoints.state).answer();
    match serde_json::to_string(&answer) {
        Ok(json) => wsscale_web::live_json(json),
        Err(error) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Memory, record};

    fn run() -> RunLabels {
        RunLabels {
            labels: vec![("target".into(), "ws://127.0.0.1:1/ws".into())],
            connections: 10,
            processes: 2,
            offer_deflate: None,
        }
    }

    /// Two shards' totals: counts and memory add up; nothing is divided by zero.
    #[test]
    fn answers_the_totals_of_every_shard() {
        let mut state = LiveState::new(run());
        let empty = state.answer();
        assert_eq!(empty.rss_per_connection_bytes, None);
        assert_eq!(empty.ping_rtt_recent_ms, Latency::default());
        assert_eq!(empty.phase, "ramping");
        let serialized = serde_json::to_string(&empty).unwrap();
        assert!(!serialized.contains("NaN"), "{serialized}");

        let shard = |open: u64, rss: u64| Progress {
            opened: open,
            open_now: open,
            memory: Memory {
                rss_bytes: rss,
                heap_bytes: rss / 2,
                rss_before_bytes: 1000,
                heap_before_bytes: 500,
            },
            ..Progress::default()
        };
        let mut totals = shard(4, 5000);
        totals.add(&shard(6, 11_000));
        let mut samples = Histograms::default();
        record(&mut samples.ping_rtt_us, Duration::from_millis(2));
        record(&mut samples.connect_us, Duration::from_micros(300));
        state.record(&samples);
        state.update(&totals);
        let answer = state.answer();
        assert_eq!((answer.open, answer.opened_total, answer.phase), (10, 10, "holding"));
        // (5000 + 11000 − 2 × 1000) ÷ 10 open.
        assert_eq!(answer.rss_per_connection_bytes, Some(1400.0));
        assert_eq!(answer.heap_per_connection_bytes, Some(700.0));
        assert_eq!(answer.ping_rtt_recent_ms.count, 1);
        assert!(
            (answer.ping_rtt_ms.p99.unwrap() - 2.0).abs() < 0.01,
            "{:?}",
            answer.ping_rtt_ms
        );
        assert!((answer.connect_ms.p50.unwrap() - 0.3).abs() < 0.01);
    }
}
