//! Merging the shards' events into one run, and the summary: a table for people and the
//! same figures as JSON (`--json FILE`, fields documented in README).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::metrics::LoadMetrics;
use crate::stats::{Done, Event, Histograms, Progress};

/// The run so far, from every shard's events.
pub struct Aggregator {
    shards: Vec<ShardState>,
    histograms: Histograms,
    metrics: Option<LoadMetrics>,
}

#[derive(Default)]
struct ShardState {
    last: Progress,
    done: Option<Done>,
}

impl Aggregator {
    pub fn new(shards: usize, metrics: Option<LoadMetrics>) -> Self {
        Aggregator {
            shards: (0..shards).map(|_| ShardState::default()).collect(),
            histograms: Histograms::default(),
            metrics,
        }
    }

    pub fn apply(&mut self, shard: usize, event: Event) {
        let state = &mut self.shards[shard];
        match event {
            Event::Progress(mut progress) => {
                let recent = std::mem::take(&mut progress.recent);
                self.histograms.add(&recent);
                state.last = progress;
                if let Some(metrics) = &self.metrics {
                    metrics.record(&recent);
                }
            }
            Event::Done(done) => state.done = Some(done),
        }
        if let Some(metrics) = &self.metrics {
            metrics.update(&self.totals());
        }
    }

    pub fn all_done(&self) -> bool {
        self.shards.iter().all(|shard| shard.done.is_some())
    }

    pub fn histograms(&self) -> &Histograms {
        &self.histograms
    }

    /// Counters summed over the shards.
    pub fn totals(&self) -> Progress {
        let mut totals = Progress::default();
        for Progress {
            opened,
            open_now,
            failed,
            lost,
            closed_cleanly,
            messages_echoed,
            failures,
            lost_by_cause,
            ..
        } in self.shards.iter().map(|shard| &shard.last)
        {
            totals.opened += opened;
            totals.open_now += open_now;
            totals.failed += failed;
            totals.lost += lost;
            totals.closed_cleanly += closed_cleanly;
            totals.messages_echoed += messages_echoed;
            for (cause, count) in failures {
                *totals.failures.entry(cause.clone()).or_default() += count;
            }
            for (cause, count) in lost_by_cause {
                *totals.lost_by_cause.entry(cause.clone()).or_default() += count;
            }
        }
        totals
    }

    pub fn summary(&self, run: RunInfo) -> Summary {
        let totals = self.totals();
        let dones: Vec<&Done> = self.shards.iter().filter_map(|shard| shard.done.as_ref()).collect();
        // Shards ramp in parallel: the run opened its connections in the longest ramp.
        let ramp_secs = dones.iter().map(|done| done.ramp_secs).fold(0.0, f64::max);
        let held: u64 = dones.iter().map(|done| done.held).sum();
        let rss_added: u64 = dones
            .iter()
            .map(|done| done.rss_held_bytes.saturating_sub(done.rss_before_bytes))
            .sum();
        let heap_added: u64 = dones
            .iter()
            .map(|done| done.heap_held_bytes.saturating_sub(done.heap_before_bytes))
            .sum();
        let per_held = |bytes: u64| if held > 0 { bytes as f64 / held as f64 } else { 0.0 };
        Summary {
            target: run.target,
            connections: run.connections,
            processes: self.shards.len(),
            source_ips: run.source_ips,
            opened: totals.opened,
            failed: totals.failed,
            failures: totals.failures,
            lost_during_hold: totals.lost,
            lost: totals.lost_by_cause,
            closed_cleanly: totals.closed_cleanly,
            messages_echoed: totals.messages_echoed,
            ramp_secs,
            hold_secs: run.hold_secs,
            open_rate_per_sec: if ramp_secs > 0.0 {
                totals.opened as f64 / ramp_secs
            } else {
                0.0
            },
            loadgen_rss_per_connection_bytes: per_held(rss_added),
            loadgen_heap_per_connection_bytes: per_held(heap_added),
            connect_ms: Percentiles::of(&self.histograms.connect_us),
            upgrade_ms: Percentiles::of(&self.histograms.upgrade_us),
            ping_rtt_ms: Percentiles::of(&self.histograms.ping_rtt_us),
            interrupted: dones.iter().any(|done| done.interrupted) || dones.len() < self.shards.len(),
        }
    }
}

/// Facts of the run the events do not carry.
pub struct RunInfo {
    pub target: String,
    pub connections: usize,
    pub source_ips: usize,
    pub hold_secs: f64,
}

/// The end-of-run summary. Its JSON form is `--json FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub target: String,
    /// Connections asked for.
    pub connections: usize,
    pub processes: usize,
    pub source_ips: usize,
    pub opened: u64,
    pub failed: u64,
    /// Failed attempts by cause: refused, timeout, reset, address_not_available,
    /// too_many_open_files, http_<status>, protocol, …
    pub failures: BTreeMap<String, u64>,
    /// Connections that ended before the generator closed them.
    pub lost_during_hold: u64,
    /// Those, by cause: close_<code>, reset, eof, …
    pub lost: BTreeMap<String, u64>,
    /// Connections the generator closed whose close handshake completed.
    pub closed_cleanly: u64,
    pub messages_echoed: u64,
    pub ramp_secs: f64,
    pub hold_secs: f64,
    pub open_rate_per_sec: f64,
    /// The generator's own RSS growth while holding, per held connection.
    pub loadgen_rss_per_connection_bytes: f64,
    /// The generator's live heap growth while holding, per held connection.
    pub loadgen_heap_per_connection_bytes: f64,
    pub connect_ms: Percentiles,
    pub upgrade_ms: Percentiles,
    pub ping_rtt_ms: Percentiles,
    /// Stopped by Ctrl-C / SIGTERM, or a shard ended without reporting.
    pub interrupted: bool,
}

/// A distribution in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    pub fn of(histogram_us: &Histogram<u64>) -> Self {
        if histogram_us.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(histogram_us.value_at_quantile(0.50)),
            p90: ms(histogram_us.value_at_quantile(0.90)),
            p99: ms(histogram_us.value_at_quantile(0.99)),
            max: ms(histogram_us.max()),
            count: histogram_us.len(),
        }
    }
}

impl Summary {
    /// The human summary table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "wsscale load: {} connections to {} ({} process(es), {} source address(es))",
            self.connections, self.target, self.processes, self.source_ips
        );
        let _ = writeln!(
            out,
            "  opened            {:>10}   in {:.2}s = {:.0}/s",
            self.opened, self.ramp_secs, self.open_rate_per_sec
        );
        let _ = writeln!(
            out,
            "  failed            {:>10}   {}",
            self.failed,
            causes(&self.failures)
        );
        let _ = writeln!(
            out,
            "  lost during hold  {:>10}   {}",
            self.lost_during_hold,
            causes(&self.lost)
        );
        let _ = writeln!(out, "  closed cleanly    {:>10}", self.closed_cleanly);
        if self.messages_echoed > 0 {
            let _ = writeln!(out, "  messages echoed   {:>10}", self.messages_echoed);
        }
        let _ = writeln!(
            out,
            "  loadgen per conn  {:>10.0} B RSS, {:.0} B heap",
            self.loadgen_rss_per_connection_bytes, self.loadgen_heap_per_connection_bytes
        );
        let _ = writeln!(
            out,
            "  {:<16} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "ms", "p50", "p90", "p99", "max", "count"
        );
        for (name, p) in [
            ("tcp connect", &self.connect_ms),
            ("ws upgrade", &self.upgrade_ms),
            ("ping rtt", &self.ping_rtt_ms),
        ] {
            let _ = writeln!(
                out,
                "  {name:<16} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9}",
                p.p50, p.p90, p.p99, p.max, p.count
            );
        }
        if self.interrupted {
            let _ = writeln!(out, "  (interrupted before the planned end)");
        }
        out
    }
}

fn causes(map: &BTreeMap<String, u64>) -> String {
    map.iter()
        .map(|(cause, count)| format!("{cause}={count}"))
        .collect::<Vec<_>>()
        .join(" ")
}
