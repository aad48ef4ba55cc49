//! Merging the shards' events into one run, and the summary: a table for people and the
//! same figures as JSON (`--json FILE`, fields documented in README).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::Part;
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
        for shard in &self.shards {
            totals.add(&shard.last);
        }
        totals
    }

    pub fn summary(&self, run: RunInfo) -> Summary {
        let dones: Vec<&Done> = self.shards.iter().filter_map(|shard| shard.done.as_ref()).collect();
        // Shards ramp in parallel: the run's ramp spans the earliest start to the latest
        // end (of the shards that reported one).
        let (ramp_start_unix, ramp_end_unix) = span(
            dones
                .iter()
                .map(|done| (done.ramp_start_unix, done.ramp_start_unix + done.ramp_secs)),
        );
        let extent = Extent {
            processes: self.shards.len(),
            source_ips: run.source_ips,
            ramp_start_unix,
            ramp_end_unix,
            held: dones.iter().map(|done| done.held).sum(),
            rss_added_bytes: dones
                .iter()
                .map(|done| done.rss_held_bytes.saturating_sub(done.rss_before_bytes) as f64)
                .sum(),
            heap_added_bytes: dones
                .iter()
                .map(|done| done.heap_held_bytes.saturating_sub(done.heap_before_bytes) as f64)
                .sum(),
            interrupted: dones.iter().any(|done| done.interrupted) || dones.len() < self.shards.len(),
        };
        Summary::build(run, self.totals(), self.histograms.clone(), extent)
    }
}

/// The earliest start and the latest end of ramps given as (start, end) in UNIX seconds;
/// a start of 0 is a part that never reported its ramp. (0, 0) when none did.
fn span(ramps: impl Iterator<Item = (f64, f64)>) -> (f64, f64) {
    ramps
        .filter(|(start, _)| *start > 0.0)
        .fold(None, |span: Option<(f64, f64)>, (start, end)| {
            Some(span.map_or((start, end), |(first, last)| (first.min(start), last.max(end))))
        })
        .unwrap_or((0.0, 0.0))
}

/// Facts of the run the events do not carry.
pub struct RunInfo {
    pub run_id: String,
    pub segment: Option<Part>,
    pub target: String,
    /// Connections this run (or segment) was asked to open.
    pub connections: usize,
    pub source_ips: usize,
    pub hold_secs: f64,
    /// `--offer-deflate`: the offer (the header's value); None without it.
    pub offer_deflate: Option<String>,
}

/// What a run's shards (or a merge's segments) add up to besides counters and histograms.
struct Extent {
    processes: usize,
    source_ips: usize,
    ramp_start_unix: f64,
    ramp_end_unix: f64,
    held: u64,
    /// The generator's RSS and heap growth while holding, summed over processes.
    rss_added_bytes: f64,
    heap_added_bytes: f64,
    interrupted: bool,
}

/// The end-of-run summary. Its JSON form is `--json FILE`, and what `wsscale load merge`
/// reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The run this belongs to: segments of one run share it (see `--run-id`).
    pub run_id: String,
    /// `I/N` for one segment's summary; null for a whole run, or a merge.
    pub segment: Option<Part>,
    /// A merge's segments (absent otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_segments: Vec<Part>,
    pub target: String,
    /// Connections asked for (this segment's share, for a segment).
    pub connections: usize,
    pub processes: usize,
    pub source_ips: usize,
    pub opened: u64,
    pub failed: u64,
    /// Failed attempts by cause: refused, timeout, reset, address_not_available,
    /// too_many_open_files, http_<status>, protocol, tls_* (see `tls::cause`), …
    pub failures: BTreeMap<String, u64>,
    /// Connections that ended before the generator closed them (each loss counts, also
    /// of a connection that reconnected and was lost again).
    pub lost_during_hold: u64,
    /// Those, by cause: close_<code>, reset, eof, …
    pub lost: BTreeMap<String, u64>,
    /// Connections the generator closed whose close handshake completed.
    pub closed_cleanly: u64,
    /// Echoes of the generator's own messages (server pushes are not counted).
    pub messages_echoed: u64,
    /// `--reconnect`: lost connections opened again.
    pub reconnected: u64,
    /// `--reconnect`: failed reconnection attempts, by cause (as `failures`).
    pub reconnect_failures: BTreeMap<String, u64>,
    /// Server pushes missed: sequence gaps per connection, summed.
    pub push_missed: u64,
    /// Pushes whose send time was later than their receipt (recorded as 0).
    pub push_negative_latency: u64,
    /// The ramp: the first connection attempt and the last attempt finishing, UNIX seconds.
    pub ramp_start_unix: f64,
    pub ramp_end_unix: f64,
    pub ramp_secs: f64,
    pub hold_secs: f64,
    pub open_rate_per_sec: f64,
    /// Connections open when the hold began.
    pub held: u64,
    /// The generator's own RSS growth while holding, per held connection.
    pub loadgen_rss_per_connection_bytes: f64,
    /// The generator's live heap growth while holding, per held connection.
    pub loadgen_heap_per_connection_bytes: f64,
    pub connect_ms: Percentiles,
    /// wss://: the TLS handshake, from the TCP connect to its end (count 0 for ws://).
    #[serde(default)]
    pub tls_ms: Percentiles,
    /// The upgrade, from the TCP connect (wss://: the TLS handshake's end) to the 101.
    pub upgrade_ms: Percentiles,
    pub ping_rtt_ms: Percentiles,
    /// From a connection's loss to its reconnection.
    pub reconnect_ms: Percentiles,
    /// Server pushes: receipt minus the send time they carry.
    pub push_delivery_ms: Percentiles,
    /// `--offer-deflate`: what was offered and what the servers answered; null without it
    /// (and in the summaries of versions before it).
    #[serde(default)]
    pub deflate: Option<DeflateSummary>,
    /// Stopped by Ctrl-C / SIGTERM, or a shard ended without reporting.
    pub interrupted: bool,
    /// Every distribution above, whole, to merge segments exactly.
    pub histograms: Histograms,
}

/// permessage-deflate as negotiated over a run (`--offer-deflate`), counted per successful
/// upgrade (a reconnection is one more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeflateSummary {
    /// The offer every upgrade made: its `Sec-WebSocket-Extensions` value.
    pub offered: String,
    /// Upgrades whose server accepted (their messages compressed, what they received
    /// inflated).
    pub accepted: u64,
    /// Upgrades whose server declined (plain WebSocket, as without the flag).
    pub declined: u64,
    /// The accepted upgrades by the server's answer (the 101's `Sec-WebSocket-Extensions`:
    /// the parameters in force), with how many got each.
    pub answers: BTreeMap<String, u64>,
}

impl DeflateSummary {
    pub(crate) fn of(offered: Option<String>, totals: &Progress) -> Option<DeflateSummary> {
        offered.map(|offered| DeflateSummary {
            offered,
            accepted: totals.deflate_accepted.values().sum(),
            declined: totals.deflate_declined,
            answers: totals.deflate_accepted.clone(),
        })
    }
}

impl Summary {
    fn build(run: RunInfo, totals: Progress, histograms: Histograms, extent: Extent) -> Summary {
        let ramp_secs = (extent.ramp_end_unix - extent.ramp_start_unix).max(0.0);
        let deflate = DeflateSummary::of(run.offer_deflate, &totals);
        let per_held = |bytes: f64| {
            if extent.held > 0 {
                bytes / extent.held as f64
            } else {
                0.0
            }
        };
        Summary {
            run_id: run.run_id,
            segment: run.segment,
            merged_segments: Vec::new(),
            target: run.target,
            connections: run.connections,
            processes: extent.processes,
            source_ips: extent.source_ips,
            opened: totals.opened,
            failed: totals.failed,
            failures: totals.failures,
            lost_during_hold: totals.lost,
            lost: totals.lost_by_cause,
            closed_cleanly: totals.closed_cleanly,
            messages_echoed: totals.messages_echoed,
            reconnected: totals.reconnected,
            reconnect_failures: totals.reconnect_failures,
            push_missed: totals.push_missed,
            push_negative_latency: totals.push_negative_latency,
            ramp_start_unix: extent.ramp_start_unix,
            ramp_end_unix: extent.ramp_end_unix,
            ramp_secs,
            hold_secs: run.hold_secs,
            open_rate_per_sec: if ramp_secs > 0.0 {
                totals.opened as f64 / ramp_secs
            } else {
                0.0
            },
            held: extent.held,
            loadgen_rss_per_connection_bytes: per_held(extent.rss_added_bytes),
            loadgen_heap_per_connection_bytes: per_held(extent.heap_added_bytes),
            connect_ms: Percentiles::of(&histograms.connect_us),
            tls_ms: Percentiles::of(&histograms.tls_us),
            upgrade_ms: Percentiles::of(&histograms.upgrade_us),
            ping_rtt_ms: Percentiles::of(&histograms.ping_rtt_us),
            reconnect_ms: Percentiles::of(&histograms.reconnect_us),
            push_delivery_ms: Percentiles::of(&histograms.push_delivery_us),
            deflate,
            interrupted: extent.interrupted,
            histograms,
        }
    }

    /// Merges the summaries of a run's segments (`name` says which file each came from,
    /// for the errors) into the summary of the whole run, as if one process had opened
    /// every connection: counters add, histograms merge (so percentiles are exact), the
    /// ramp spans the earliest start to the latest end. Returns the merge and warnings
    /// (missing segments).
    pub fn merge(parts: &[(String, Summary)]) -> Result<(Summary, Vec<String>), MergeError> {
        let Some((first_name, first)) = parts.first() else {
            return Err(MergeError::Empty);
        };
        let part_of = |summary: &Summary| summary.segment.unwrap_or(Part { index: 0, count: 1 });
        let count = part_of(first).count;
        let mut seen: BTreeMap<Part, &str> = BTreeMap::new();
        for (name, summary) in parts {
            if summary.run_id != first.run_id {
                return Err(MergeError::DifferentRuns {
                    first: first_name.clone(),
                    first_run: first.run_id.clone(),
                    other: name.clone(),
                    other_run: summary.run_id.clone(),
                });
            }
            let part = part_of(summary);
            if part.count != count {
                return Err(MergeError::DifferentCounts {
                    first: first_name.clone(),
                    first_part: part_of(first),
                    other: name.clone(),
                    other_part: part,
                });
            }
            if let Some(earlier) = seen.insert(part, name) {
                return Err(MergeError::Duplicate {
                    part,
                    first: earlier.to_owned(),
                    other: name.clone(),
                });
            }
        }
        let mut warnings = Vec::new();
        let missing: Vec<String> = (0..count)
            .map(|index| Part { index, count })
            .filter(|part| !seen.contains_key(part))
            .map(|part| part.to_string())
            .collect();
        if !missing.is_empty() {
            warnings.push(format!(
                "merged {} of {count} segments of run {}; missing: {}",
                seen.len(),
                first.run_id,
                missing.join(", ")
            ));
        }

        let mut totals = Progress::default();
        let mut histograms = Histograms::default();
        let mut targets: Vec<&str> = Vec::new();
        let mut connections = 0;
        let (ramp_start_unix, ramp_end_unix) = span(
            parts
                .iter()
                .map(|(_, summary)| (summary.ramp_start_unix, summary.ramp_end_unix)),
        );
        let mut extent = Extent {
            processes: 0,
            source_ips: 0,
            ramp_start_unix,
            ramp_end_unix,
            held: 0,
            rss_added_bytes: 0.0,
            heap_added_bytes: 0.0,
            interrupted: false,
        };
        for (_, summary) in parts {
            totals.add(&summary.counters());
            histograms.add(&summary.histograms);
            if !targets.contains(&summary.target.as_str()) {
                targets.push(&summary.target);
            }
            connections += summary.connections;
            extent.processes += summary.processes;
            extent.source_ips += summary.source_ips;
            extent.held += summary.held;
            extent.rss_added_bytes += summary.loadgen_rss_per_connection_bytes * summary.held as f64;
            extent.heap_added_bytes += summary.loadgen_heap_per_connection_bytes * summary.held as f64;
            extent.interrupted |= summary.interrupted;
        }
        let run = RunInfo {
            run_id: first.run_id.clone(),
            segment: None,
            target: targets.join(","),
            connections,
            source_ips: extent.source_ips,
            hold_secs: parts.iter().map(|(_, summary)| summary.hold_secs).fold(0.0, f64::max),
            // Segments of one run (one run id) made one offer.
            offer_deflate: first.deflate.as_ref().map(|deflate| deflate.offered.clone()),
        };
        let mut merged = Summary::build(run, totals, histograms, extent);
        merged.merged_segments = seen.into_keys().filter(|_| count > 1).collect();
        Ok((merged, warnings))
    }

    /// The counters, as a shard reports them.
    fn counters(&self) -> Progress {
        Progress {
            opened: self.opened,
            open_now: 0,
            failed: self.failed,
            lost: self.lost_during_hold,
            closed_cleanly: self.closed_cleanly,
            messages_echoed: self.messages_echoed,
            reconnected: self.reconnected,
            push_missed: self.push_missed,
            push_negative_latency: self.push_negative_latency,
            deflate_declined: self.deflate.as_ref().map_or(0, |deflate| deflate.declined),
            deflate_accepted: self
                .deflate
                .as_ref()
                .map(|deflate| deflate.answers.clone())
                .unwrap_or_default(),
            failures: self.failures.clone(),
            lost_by_cause: self.lost.clone(),
            reconnect_failures: self.reconnect_failures.clone(),
            memory: crate::stats::Memory::default(),
            recent: Histograms::default(),
        }
    }
}

/// Why segment summaries cannot be merged; each names the files.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("no summary to merge")]
    Empty,
    #[error(
        "{first} and {other} are of different runs (run_id {first_run} and {other_run}); merge the segments of one run \
         only"
    )]
    DifferentRuns {
        first: String,
        first_run: String,
        other: String,
        other_run: String,
    },
    #[error("{first} is segment {first_part} but {other} is segment {other_part}: the segment counts differ")]
    DifferentCounts {
        first: String,
        first_part: Part,
        other: String,
        other_part: Part,
    },
    #[error("{first} and {other} are both segment {part}: a segment can be merged once")]
    Duplicate { part: Part, first: String, other: String },
}

/// A distribution in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
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
        let part = match (self.segment, self.merged_segments.as_slice()) {
            (Some(segment), _) => format!(", segment {segment}"),
            (None, []) => String::new(),
            (None, merged) => {
                let merged: Vec<String> = merged.iter().map(ToString::to_string).collect();
                format!(", merged segments {}", merged.join(" "))
            }
        };
        let _ = writeln!(out, "  run {}{part}", self.run_id);
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
        if self.reconnected > 0 || !self.reconnect_failures.is_empty() {
            let _ = writeln!(out, "  reconnected       {:>10}", self.reconnected);
            let reconnect_failures: u64 = self.reconnect_failures.values().sum();
            let _ = writeln!(
                out,
                "  reconnect failed  {:>10}   {}",
                reconnect_failures,
                causes(&self.reconnect_failures)
            );
        }
        if self.messages_echoed > 0 {
            let _ = writeln!(out, "  messages echoed   {:>10}", self.messages_echoed);
        }
        if self.push_delivery_ms.count > 0 {
            let _ = writeln!(
                out,
                "  pushes received   {:>10}   missed {}, sent after receipt {}",
                self.push_delivery_ms.count, self.push_missed, self.push_negative_latency
            );
        }
        if let Some(deflate) = &self.deflate {
            let _ = writeln!(out, "  deflate offered   {:>10}   {}", "", deflate.offered);
            let answers: Vec<String> = deflate
                .answers
                .iter()
                .map(|(answer, count)| format!("{answer} ({count})"))
                .collect();
            let _ = writeln!(
                out,
                "  deflate accepted  {:>10}   {}",
                deflate.accepted,
                answers.join(" | ")
            );
            let _ = writeln!(out, "  deflate declined  {:>10}", deflate.declined);
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
        let rows = [
            ("tcp connect", &self.connect_ms, true),
            ("tls handshake", &self.tls_ms, self.tls_ms.count > 0),
            ("ws upgrade", &self.upgrade_ms, true),
            ("ping rtt", &self.ping_rtt_ms, true),
            ("reconnect", &self.reconnect_ms, self.reconnect_ms.count > 0),
            ("push delivery", &self.push_delivery_ms, self.push_delivery_ms.count > 0),
        ];
        for (name, p, _) in rows.into_iter().filter(|(_, _, shown)| *shown) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::{Stats, new_histogram, record};

    /// Known samples: a deterministic spread from microseconds to seconds, different for
    /// each segment so that no segment's percentiles are the run's.
    fn samples(segment: u64, count: usize) -> Vec<Duration> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ segment;
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let exponent = (state >> 60) as u32 % (6 + segment as u32);
                Duration::from_micros(((state >> 33) % 1000 + 1) * 10u64.pow(exponent.min(6)))
            })
            .collect()
    }

    /// One segment's summary, through its JSON as `merge` reads it.
    fn segment_summary(index: usize, count: usize, run_id: &str, samples: &[Duration]) -> Summary {
        let stats = Stats::default();
        for (i, sample) in samples.iter().enumerate() {
            stats.record_open(*sample, Some(*sample * 3), *sample * 2);
            stats.record_ping_rtt(*sample / 3);
            stats.record_push((i % 7 != 0).then_some(*sample), u64::from(i % 5 == 0));
            if i % 4 == 0 {
                stats.record_lost(format!("close_{}", 1000 + i % 3));
                stats.record_reconnect(*sample * 4);
                stats.record_reconnect_failure("refused".into());
            }
        }
        stats.record_failure("http_503".into());
        let mut aggregator = Aggregator::new(1, None);
        aggregator.apply(0, Event::Progress(stats.progress()));
        aggregator.apply(
            0,
            Event::Done(Done {
                ramp_start_unix: 1_767_225_600.0 + index as f64 * 0.25,
                ramp_secs: 2.0,
                rss_before_bytes: 1_000_000,
                rss_held_bytes: 1_000_000 + 1200 * samples.len() as u64,
                heap_before_bytes: 0,
                heap_held_bytes: 700 * samples.len() as u64,
                held: samples.len() as u64,
                interrupted: false,
            }),
        );
        let summary = aggregator.summary(RunInfo {
            run_id: run_id.into(),
            segment: Some(Part { index, count }),
            target: "ws://127.0.0.1:8080/ws".into(),
            connections: samples.len(),
            source_ips: 1,
            hold_secs: 30.0,
            offer_deflate: None,
        });
        serde_json::from_str(&serde_json::to_string_pretty(&summary).unwrap()).unwrap()
    }

    #[test]
    fn merged_segments_equal_one_histogram_of_every_sample() {
        let per_segment: Vec<Vec<Duration>> = (0..3)
            .map(|segment| samples(segment, 3000 + segment as usize))
            .collect();
        let files: Vec<(String, Summary)> = per_segment
            .iter()
            .enumerate()
            .map(|(index, samples)| {
                (
                    format!("segment-{index}.json"),
                    segment_summary(index, 3, "run-a", samples),
                )
            })
            .collect();
        let (merged, warnings) = Summary::merge(&files).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");

        // One histogram holding every sample, as one process would have recorded them.
        let mut one = new_histogram();
        for sample in per_segment.iter().flatten() {
            record(&mut one, *sample);
        }
        assert_eq!(merged.histograms.connect_us, one);
        assert_eq!(merged.connect_ms, Percentiles::of(&one), "exact, not approximately");
        assert_ne!(
            merged.connect_ms, files[2].1.connect_ms,
            "the samples differ per segment, so this test can fail"
        );
        let mut one_upgrade = new_histogram();
        for sample in per_segment.iter().flatten() {
            record(&mut one_upgrade, *sample * 2);
        }
        assert_eq!(merged.upgrade_ms, Percentiles::of(&one_upgrade));
        let mut one_tls = new_histogram();
        for sample in per_segment.iter().flatten() {
            record(&mut one_tls, *sample * 3);
        }
        assert_eq!(merged.histograms.tls_us, one_tls);
        assert_eq!(
            merged.tls_ms,
            Percentiles::of(&one_tls),
            "the TLS handshakes merge exactly too"
        );

        let total: usize = per_segment.iter().map(Vec::len).sum();
        assert_eq!(merged.opened, total as u64);
        assert_eq!(merged.connections, total);
        assert_eq!(merged.connect_ms.count, total as u64);
        assert_eq!(merged.failed, 3);
        assert_eq!(merged.failures["http_503"], 3);
        let sum = |field: fn(&Summary) -> u64| files.iter().map(|(_, summary)| field(summary)).sum::<u64>();
        assert_eq!(merged.lost_during_hold, sum(|s| s.lost_during_hold));
        assert_eq!(merged.reconnected, sum(|s| s.reconnected));
        assert_eq!(merged.reconnect_ms.count, sum(|s| s.reconnect_ms.count));
        assert_eq!(
            merged.reconnect_failures["refused"],
            sum(|s| s.reconnect_failures["refused"])
        );
        assert_eq!(merged.push_missed, sum(|s| s.push_missed));
        assert_eq!(merged.push_negative_latency, sum(|s| s.push_negative_latency));
        assert_eq!(merged.push_delivery_ms.count, total as u64);
        for cause in ["close_1000", "close_1001", "close_1002"] {
            assert_eq!(
                merged.lost[cause],
                files.iter().map(|(_, s)| s.lost[cause]).sum::<u64>()
            );
        }
        // The ramp spans the earliest start to the latest end.
        assert_eq!(merged.ramp_start_unix, 1_767_225_600.0);
        assert_eq!(merged.ramp_end_unix, 1_767_225_602.5);
        assert_eq!(merged.ramp_secs, 2.5);
        assert_eq!(merged.open_rate_per_sec, total as f64 / 2.5);
        assert!((merged.loadgen_rss_per_connection_bytes - 1200.0).abs() < 1e-9);
        assert_eq!(merged.segment, None);
        assert_eq!(merged.merged_segments.len(), 3);
        assert_eq!(merged.run_id, "run-a");
        // The same table as one run, with the merge named.
        let table = merged.table();
        assert!(table.contains("merged segments 0/3 1/3 2/3"), "{table}");
        assert!(table.contains("push delivery"), "{table}");
        assert!(table.contains("tls handshake"), "{table}");
    }

    /// A summary written before wss:// (no `tls_ms`, no `histograms.tls_us`) still merges:
    /// it had no TLS handshake, so an empty histogram is exact.
    #[test]
    fn a_summary_without_tls_fields_still_merges() {
        let summary = segment_summary(0, 2, "run-a", &samples(0, 50));
        let mut json: serde_json::Value = serde_json::to_value(&summary).unwrap();
        json.as_object_mut().unwrap().remove("tls_ms");
        json["histograms"].as_object_mut().unwrap().remove("tls_us");
        let old: Summary = serde_json::from_value(json).unwrap();
        assert_eq!(old.tls_ms.count, 0);
        assert!(old.histograms.tls_us.is_empty());
        let newer = segment_summary(1, 2, "run-a", &samples(1, 40));
        let (merged, _) = Summary::merge(&[("old.json".into(), old), ("new.json".into(), newer)]).unwrap();
        assert_eq!(merged.tls_ms.count, 40);
        assert_eq!(merged.connect_ms.count, 90);
    }

    #[test]
    fn merge_refuses_other_runs_and_duplicates_and_names_the_files() {
        let a = |index: usize, count: usize, run: &str| segment_summary(index, count, run, &samples(index as u64, 10));
        let error = Summary::merge(&[("x.json".into(), a(0, 3, "run-a")), ("y.json".into(), a(1, 3, "run-b"))])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("x.json") && error.contains("y.json") && error.contains("different runs"),
            "{error}"
        );
        let error = Summary::merge(&[
            ("x.json".into(), a(0, 3, "run-a")),
            ("y.json".into(), a(1, 3, "run-a")),
            ("z.json".into(), a(1, 3, "run-a")),
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("y.json and z.json are both segment 1/3"), "{error}");
        let error = Summary::merge(&[("x.json".into(), a(0, 3, "run-a")), ("y.json".into(), a(1, 4, "run-a"))])
            .unwrap_err()
            .to_string();
        assert!(error.contains("counts differ"), "{error}");
        // Missing segments are merged with a warning that names them.
        let (merged, warnings) =
            Summary::merge(&[("x.json".into(), a(0, 4, "run-a")), ("z.json".into(), a(2, 4, "run-a"))]).unwrap();
        assert_eq!(merged.opened, 20);
        assert_eq!(warnings, ["merged 2 of 4 segments of run run-a; missing: 1/4, 3/4"]);
    }
}
