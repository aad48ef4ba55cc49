//! What a shard measures, and the events it reports: cumulative counters, and the
//! histogram samples recorded since the previous event (microseconds, HDR). The same
//! [`Event`]s travel over a channel in a single-process run and as JSON lines on a
//! child's stdout in a sharded one, so one aggregator serves both.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite;

/// Histograms count microseconds to 3 significant figures and grow to the largest value
/// recorded, so an empty one (most progress events) costs almost nothing.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is valid")
}

/// Records a duration (at least 1 µs; at most an hour).
pub fn record(histogram: &mut Histogram<u64>, duration: Duration) {
    let micros = (duration.as_micros() as u64).clamp(1, 3_600_000_000);
    // An auto-resizing histogram accepts any value in that range.
    let _ = histogram.record(micros);
}

/// The latency distributions of a run, in microseconds. Serialised (in shard events and
/// in the summary's `histograms`) as base64 of HdrHistogram's compressed V2 format
/// (`V2DeflateSerializer`), which other HdrHistogram implementations read too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histograms {
    /// TCP connect of the ramp's connections.
    #[serde(with = "histogram_base64")]
    pub connect_us: Histogram<u64>,
    /// wss://: TLS handshake of the ramp's connections, from the TCP connect to the
    /// handshake's end. Absent from the summaries of earlier versions (read as empty,
    /// which they were: they had no TLS).
    #[serde(with = "histogram_base64", default = "new_histogram")]
    pub tls_us: Histogram<u64>,
    /// WebSocket upgrade of the ramp's connections, after the connect (wss://: after the
    /// TLS handshake), to the 101.
    #[serde(with = "histogram_base64")]
    pub upgrade_us: Histogram<u64>,
    /// Ping round trips from the scheduled send time.
    #[serde(with = "histogram_base64")]
    pub ping_rtt_us: Histogram<u64>,
    /// `--reconnect`: from a connection's loss to its reconnection's upgrade.
    #[serde(with = "histogram_base64")]
    pub reconnect_us: Histogram<u64>,
    /// Server pushes: receipt minus the send time they carry (see `wsscale_wire::push`).
    #[serde(with = "histogram_base64")]
    pub push_delivery_us: Histogram<u64>,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            connect_us: new_histogram(),
            tls_us: new_histogram(),
            upgrade_us: new_histogram(),
            ping_rtt_us: new_histogram(),
            reconnect_us: new_histogram(),
            push_delivery_us: new_histogram(),
        }
    }
}

impl Histograms {
    /// Adds `other`'s samples: bucket counts add exactly, so percentiles of the sum are
    /// those of one histogram that recorded every sample.
    pub fn add(&mut self, other: &Histograms) {
        for (mine, theirs) in self.each_mut().into_iter().zip(other.each()) {
            // Same precision on both sides and auto-resize, so adding cannot fail.
            let _ = mine.add(theirs);
        }
    }

    fn each(&self) -> [&Histogram<u64>; 6] {
        [
            &self.connect_us,
            &self.tls_us,
            &self.upgrade_us,
            &self.ping_rtt_us,
            &self.reconnect_us,
            &self.push_delivery_us,
        ]
    }

    fn each_mut(&mut self) -> [&mut Histogram<u64>; 6] {
        [
            &mut self.connect_us,
            &mut self.tls_us,
            &mut self.upgrade_us,
            &mut self.ping_rtt_us,
            &mut self.reconnect_us,
            &mut self.push_delivery_us,
        ]
    }
}

/// A shard's counters, written by its connection tasks.
#[derive(Debug, Default)]
pub struct Stats {
    pub opened: AtomicU64,
    pub open_now: AtomicU64,
    pub failed: AtomicU64,
    pub lost: AtomicU64,
    pub closed_cleanly: AtomicU64,
    pub messages_echoed: AtomicU64,
    /// Lost connections brought back by `--reconnect`.
    pub reconnected: AtomicU64,
    /// Server pushes missed: sequence gaps, summed over connections.
    pub push_missed: AtomicU64,
    /// Pushes whose send time was later than their receipt (recorded as 0).
    pub push_negative_latency: AtomicU64,
    /// `--offer-deflate`: upgrades whose server declined the offer.
    pub deflate_declined: AtomicU64,
    /// `--offer-deflate`: upgrades whose server accepted, by its answer.
    deflate_accepted: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<BTreeMap<String, u64>>,
    lost_by_cause: Mutex<BTreeMap<String, u64>>,
    reconnect_failures: Mutex<BTreeMap<String, u64>>,
    /// Samples since the last [`Stats::progress`]; taken (and reset) by it.
    recent: Mutex<Histograms>,
}

impl Stats {
    /// A ramp's connection is open: its TCP connect, TLS handshake (wss:// only) and
    /// upgrade times.
    pub fn record_open(&self, connect: Duration, tls: Option<Duration>, upgrade: Duration) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open_now.fetch_add(1, Ordering::Relaxed);
        let mut recent = lock(&self.recent);
        record(&mut recent.connect_us, connect);
        if let Some(tls) = tls {
            record(&mut recent.tls_us, tls);
        }
        record(&mut recent.upgrade_us, upgrade);
    }

    pub fn record_failure(&self, cause: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.failures).entry(cause).or_default() += 1;
    }

    /// A held connection ended before we closed it.
    pub fn record_lost(&self, cause: String) {
        self.open_now.fetch_sub(1, Ordering::Relaxed);
        self.lost.fetch_add(1, Ordering::Relaxed);
        *lock(&self.lost_by_cause).entry(cause).or_default() += 1;
    }

    /// We closed a held connection; `clean` when the server answered the close.
    pub fn record_closed(&self, clean: bool) {
        self.open_now.fetch_sub(1, Ordering::Relaxed);
        if clean {
            self.closed_cleanly.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn record_ping_rtt(&self, rtt: Duration) {
        record(&mut lock(&self.recent).ping_rtt_us, rtt);
    }

    /// A lost connection is open again, `downtime` after its loss.
    pub fn record_reconnect(&self, downtime: Duration) {
        self.open_now.fetch_add(1, Ordering::Relaxed);
        self.reconnected.fetch_add(1, Ordering::Relaxed);
        record(&mut lock(&self.recent).reconnect_us, downtime);
    }

    /// A reconnection attempt failed.
    pub fn record_reconnect_failure(&self, cause: String) {
        *lock(&self.reconnect_failures).entry(cause).or_default() += 1;
    }

    /// A server push arrived: its delivery latency (None when its send time is later than
    /// its receipt, recorded as 0) and the pushes missed before it on its connection.
    pub fn record_push(&self, delivery: Option<Duration>, missed: u64) {
        if delivery.is_none() {
            self.push_negative_latency.fetch_add(1, Ordering::Relaxed);
        }
        if missed > 0 {
            self.push_missed.fetch_add(missed, Ordering::Relaxed);
        }
        record(&mut lock(&self.recent).push_delivery_us, delivery.unwrap_or_default());
    }

    /// `--offer-deflate`: an upgrade succeeded with this answer (the 101's
    /// `Sec-WebSocket-Extensions`; None: declined).
    pub fn record_deflate_answer(&self, answer: Option<&str>) {
        match answer {
            Some(answer) => *lock(&self.deflate_accepted).entry(answer.to_owned()).or_default() += 1,
            None => {
                self.deflate_declined.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `--offer-deflate`: the upgrades declined, and those accepted by answer, so far.
    pub fn deflate_answers(&self) -> (u64, BTreeMap<String, u64>) {
        (
            self.deflate_declined.load(Ordering::Relaxed),
            lock(&self.deflate_accepted).clone(),
        )
    }

    /// The counters so far and the samples since the previous call.
    pub fn progress(&self) -> Progress {
        let recent = std::mem::take(&mut *lock(&self.recent));
        Progress {
            opened: self.opened.load(Ordering::Relaxed),
            open_now: self.open_now.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            closed_cleanly: self.closed_cleanly.load(Ordering::Relaxed),
            messages_echoed: self.messages_echoed.load(Ordering::Relaxed),
            reconnected: self.reconnected.load(Ordering::Relaxed),
            push_missed: self.push_missed.load(Ordering::Relaxed),
            push_negative_latency: self.push_negative_latency.load(Ordering::Relaxed),
            deflate_declined: self.deflate_declined.load(Ordering::Relaxed),
            deflate_accepted: lock(&self.deflate_accepted).clone(),
            failures: lock(&self.failures).clone(),
            lost_by_cause: lock(&self.lost_by_cause).clone(),
            reconnect_failures: lock(&self.reconnect_failures).clone(),
            memory: Memory::default(),
            recent,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A shard's report: counters are totals so far, `recent` holds only new samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub opened: u64,
    pub open_now: u64,
    pub failed: u64,
    pub lost: u64,
    pub closed_cleanly: u64,
    pub messages_echoed: u64,
    pub reconnected: u64,
    pub push_missed: u64,
    pub push_negative_latency: u64,
    /// `--offer-deflate`: upgrades declined, and accepted by answer (absent from earlier
    /// versions' events and summaries: read as none, which they had).
    #[serde(default)]
    pub deflate_declined: u64,
    #[serde(default)]
    pub deflate_accepted: BTreeMap<String, u64>,
    pub failures: BTreeMap<String, u64>,
    pub lost_by_cause: BTreeMap<String, u64>,
    pub reconnect_failures: BTreeMap<String, u64>,
    /// The process's memory now and before its first connection (summed over processes
    /// in totals): the live page's memory per connection.
    #[serde(default)]
    pub memory: Memory,
    pub recent: Histograms,
}

/// A shard process's own memory: RSS (/proc/self/statm) and live heap (the counting
/// allocator; 0 where it is not installed), now and before its first connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub rss_bytes: u64,
    pub heap_bytes: u64,
    pub rss_before_bytes: u64,
    pub heap_before_bytes: u64,
}

impl Memory {
    fn add(&mut self, other: &Memory) {
        self.rss_bytes += other.rss_bytes;
        self.heap_bytes += other.heap_bytes;
        self.rss_before_bytes += other.rss_before_bytes;
        self.heap_before_bytes += other.heap_before_bytes;
    }

    /// Growth since before the first connection, per open connection (RSS, heap); None
    /// with no connection open.
    pub fn per_connection(&self, open: u64) -> Option<(f64, f64)> {
        (open > 0).then(|| {
            (
                self.rss_bytes.saturating_sub(self.rss_before_bytes) as f64 / open as f64,
                self.heap_bytes.saturating_sub(self.heap_before_bytes) as f64 / open as f64,
            )
        })
    }
}

impl Progress {
    /// Adds another shard's (or segment's) counters; `recent` is left alone.
    pub fn add(&mut self, other: &Progress) {
        let Progress {
            opened,
            open_now,
            failed,
            lost,
            closed_cleanly,
            messages_echoed,
            reconnected,
            push_missed,
            push_negative_latency,
            deflate_declined,
            deflate_accepted,
            failures,
            lost_by_cause,
            reconnect_failures,
            memory,
            recent: _,
        } = other;
        self.memory.add(memory);
        self.opened += opened;
        self.open_now += open_now;
        self.failed += failed;
        self.lost += lost;
        self.closed_cleanly += closed_cleanly;
        self.messages_echoed += messages_echoed;
        self.reconnected += reconnected;
        self.push_missed += push_missed;
        self.push_negative_latency += push_negative_latency;
        self.deflate_declined += deflate_declined;
        for (mine, theirs) in [
            (&mut self.deflate_accepted, deflate_accepted),
            (&mut self.failures, failures),
            (&mut self.lost_by_cause, lost_by_cause),
            (&mut self.reconnect_failures, reconnect_failures),
        ] {
            for (cause, count) in theirs {
                *mine.entry(cause.clone()).or_default() += count;
            }
        }
    }
}

/// The end of a shard's run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Done {
    /// When the first connection was attempted, UNIX seconds (0: the shard never said).
    pub ramp_start_unix: f64,
    /// From the first attempt to the last attempt finishing.
    pub ramp_secs: f64,
    /// This process's RSS before the first connection and with every connection held.
    pub rss_before_bytes: u64,
    pub rss_held_bytes: u64,
    /// Live heap bytes (counting allocator; 0 where it is not installed), likewise.
    pub heap_before_bytes: u64,
    pub heap_held_bytes: u64,
    /// Connections open when the hold began.
    pub held: u64,
    pub interrupted: bool,
}

/// One line of a shard's report stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // nearly every event is a Progress
pub enum Event {
    Progress(Progress),
    Done(Done),
}

/// The failure cause of an IO error, as the summary groups them; one that carries a
/// TLS error gets the TLS cause (see [`crate::tls::cause`]).
pub fn io_cause(error: &io::Error) -> String {
    if let Some(cause) = crate::tls::io_error_cause(error) {
        return cause;
    }
    let cause = match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::EADDRNOTAVAIL) => "address_not_available",
        Some(libc::EADDRINUSE) => "address_in_use",
        Some(libc::EMFILE | libc::ENFILE) => "too_many_open_files",
        Some(libc::ECONNRESET | libc::EPIPE) => "reset",
        Some(libc::ETIMEDOUT) => "timeout",
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => "unreachable",
        _ => match error.kind() {
            io::ErrorKind::TimedOut => "timeout",
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => "reset",
            io::ErrorKind::UnexpectedEof => "eof",
            _ => "other_io",
        },
    };
    cause.to_owned()
}

/// The failure cause of a WebSocket error: an HTTP status (`http_503`), an IO cause,
/// or `protocol`.
pub fn ws_cause(error: &tungstenite::Error) -> String {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::Http(response) => format!("http_{}", response.status().as_u16()),
        tungstenite::Error::Io(error) => io_cause(error),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => "reset".to_owned(),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".to_owned(),
        _ => "protocol".to_owned(),
    }
}

mod histogram_base64 {
    //! HDR histograms as base64 of their compressed V2 serialization, for JSON lines.
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hdrhistogram::Histogram;
    use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
    use serde::de::Error;

    pub(super) fn serialize<S: serde::Serializer>(
        histogram: &Histogram<u64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(histogram, &mut bytes)
            .map_err(|e| serde::ser::Error::custom(format!("{e:?}")))?;
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Histogram<u64>, D::Error> {
        let text: String = serde::Deserialize::deserialize(deserializer)?;
        let bytes = STANDARD.decode(text).map_err(D::Error::custom)?;
        Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| D::Error::custom(format!("{e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_a_json_line() {
        let stats = Stats::default();
        stats.record_open(
            Duration::from_micros(150),
            Some(Duration::from_micros(2600)),
            Duration::from_micros(420),
        );
        stats.record_open(Duration::from_micros(170), None, Duration::from_micros(390));
        stats.record_failure("http_503".into());
        stats.record_ping_rtt(Duration::from_millis(2));
        stats.record_push(Some(Duration::from_micros(830)), 2);
        stats.record_push(None, 0);
        stats.record_reconnect(Duration::from_millis(1500));
        stats.record_reconnect_failure("refused".into());
        let line = serde_json::to_string(&Event::Progress(stats.progress())).unwrap();
        assert!(!line.contains('\n'));
        let Event::Progress(progress) = serde_json::from_str(&line).unwrap() else {
            panic!("not progress")
        };
        assert_eq!(progress.opened, 2);
        assert_eq!(progress.failures["http_503"], 1);
        assert_eq!(progress.recent.upgrade_us.len(), 2);
        assert!(
            progress
                .recent
                .upgrade_us
                .equivalent(420, progress.recent.upgrade_us.max())
        );
        // Only a wss:// connection has a TLS handshake to count.
        assert_eq!(progress.recent.tls_us.len(), 1);
        assert!(progress.recent.tls_us.equivalent(2600, progress.recent.tls_us.max()));
        // Pushes and reconnections travel like the rest, so sharded runs merge them.
        assert_eq!(progress.recent.push_delivery_us.len(), 2);
        assert!(
            progress
                .recent
                .push_delivery_us
                .equivalent(830, progress.recent.push_delivery_us.max())
        );
        assert_eq!(
            progress.recent.push_delivery_us.min(),
            1,
            "a negative latency is recorded at the floor"
        );
        assert_eq!((progress.push_missed, progress.push_negative_latency), (2, 1));
        assert_eq!(progress.recent.reconnect_us.len(), 1);
        assert_eq!(progress.reconnected, 1);
        assert_eq!(progress.reconnect_failures["refused"], 1);
        // Samples are handed over once.
        assert_eq!(stats.progress().recent.connect_us.len(), 0);
    }

    #[test]
    fn causes_are_named() {
        assert_eq!(io_cause(&io::Error::from_raw_os_error(libc::ECONNREFUSED)), "refused");
        assert_eq!(
            io_cause(&io::Error::from_raw_os_error(libc::EMFILE)),
            "too_many_open_files"
        );
        assert_eq!(
            io_cause(&io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)),
            "address_not_available"
        );
        assert_eq!(io_cause(&io::ErrorKind::TimedOut.into()), "timeout");
    }
}
