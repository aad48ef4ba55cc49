//! The live page's JSON (`GET /api/live` on the metrics listener): one object per
//! request, every field listed in docs/live.md and below.
//!
//! It is built on the sampler thread from the exposition a scrape of /metrics renders at
//! that moment — so every figure the page shows is one /metrics shows, read once, and no
//! /proc read runs on a thread that serves connections — plus what only the sampler
//! knows: the zero-connection baselines (memory, and the host's kernel memory), from which
//! it derives the kernel's share per connection, and the limits read at start. The page
//! computes rates itself, from the counters of two successive answers.
//!
//! Per-connection figures are `null` with no connection open (the /metrics gauge says 0
//! there), so nothing divides by zero and the page shows a dash.

use std::collections::BTreeMap;

use serde::Serialize;
use wsscale_host::fd::FdLimit;
use wsscale_host::proc::{KernelGrowth, KernelLimits, KernelMemory};

use super::registry::{
    BROADCASTS, CONNECTIONS_ACTIVE, CONNECTIONS_CLOSED, CONNECTIONS_MAX, CONNECTIONS_OPENED, CONNECTIONS_REJECTED,
    HANDSHAKES_IN_FLIGHT, HANDSHAKES_MAX, HEAP_ALLOCATED, MEMORY_PER_CONNECTION, MESSAGES_RECEIVED, MESSAGES_SENT,
    PUSHES_DROPPED, RUNTIME_WORKERS, TASKS_ALIVE,
};
use crate::config::Mode;
use crate::limits::{self, Bound};

/// One answer of `GET /api/live`.
#[derive(Debug, Clone, Serialize)]
pub struct LiveServer {
    /// `"server"` (the generator's page answers `"load"`).
    pub kind: &'static str,
    /// The labels every series carries, in order (`[["mode","tasks"],["engine","lean"]]`):
    /// the page's title.
    pub labels: Vec<(String, String)>,
    /// This process; with `started_unix_ms`, how the page tells a restarted server.
    pub pid: u32,
    /// When the sampler thread started, UNIX milliseconds.
    pub started_unix_ms: u64,
    /// When this answer was sampled, UNIX milliseconds.
    pub time_unix_ms: u64,
    pub connections_active: u64,
    pub connections_max: u64,
    pub connections_opened_total: u64,
    /// `wsscale_connections_closed_total` by reason.
    pub connections_closed_total: BTreeMap<String, u64>,
    /// `wsscale_connections_rejected_total` by reason.
    pub connections_rejected_total: BTreeMap<String, u64>,
    pub handshakes_in_flight: u64,
    pub handshakes_max: u64,
    pub messages_received_total: u64,
    pub messages_sent_total: u64,
    pub broadcasts_total: u64,
    pub pushes_dropped_total: u64,
    /// OS threads of the process (`process_threads`).
    pub threads: u64,
    pub tasks_alive: u64,
    pub runtime_workers: u64,
    pub open_fds: u64,
    /// `process_resident_memory_bytes`.
    pub rss_bytes: u64,
    /// `wsscale_heap_allocated_bytes`.
    pub heap_bytes: u64,
    /// RSS and heap at the last moment with no connection and no handshake in flight.
    pub rss_baseline_bytes: u64,
    pub heap_baseline_bytes: u64,
    /// `wsscale_memory_per_connection_bytes{source="rss"}`; null with no connection.
    pub rss_per_connection_bytes: Option<f64>,
    /// `wsscale_memory_per_connection_bytes{source="heap"}`; null with no connection.
    pub heap_per_connection_bytes: Option<f64>,
    /// The host's kernel memory now (null if /proc could not be read).
    pub host: Option<HostKernel>,
    /// The same at the baseline's moment.
    pub host_baseline: Option<HostKernel>,
    /// The kernel's share per connection, estimated from the host's figures.
    pub kernel_per_connection: KernelShare,
    /// RSS per connection + kernel stack per connection + slab per socket: what one more
    /// connection costs the server's host, user and kernel; null if a part is unknown.
    pub user_plus_kernel_per_connection_bytes: Option<f64>,
    pub limits: Limits,
}

/// The host's kernel memory that no process's RSS shows (see `wsscale_host::proc`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HostKernel {
    /// `KernelStack` of /proc/meminfo.
    pub kernel_stack_bytes: u64,
    /// `Slab`.
    pub slab_bytes: u64,
    /// `SUnreclaim`.
    pub slab_unreclaimable_bytes: u64,
    /// /proc/net/sockstat's TCP `mem`, in bytes.
    pub tcp_memory_bytes: u64,
    /// /proc/net/sockstat's TCP `inuse`.
    pub tcp_sockets_inuse: u64,
}

impl From<KernelMemory> for HostKernel {
    fn from(memory: KernelMemory) -> Self {
        HostKernel {
            kernel_stack_bytes: memory.kernel_stack_bytes,
            slab_bytes: memory.slab_bytes,
            slab_unreclaimable_bytes: memory.slab_unreclaimable_bytes,
            tcp_memory_bytes: memory.tcp_memory_bytes,
            tcp_sockets_inuse: memory.tcp_sockets_inuse,
        }
    }
}

/// The kernel's memory per connection, from the host's growth since the baseline. The
/// figures are host-wide, so they are this server's only on an otherwise quiet host. Per
/// socket rather than per connection for the socket memory: the growth is divided by the
/// TCP sockets added host-wide, so clients on the same host (two sockets per connection on
/// loopback) and clients elsewhere (one) both give the server's share of one socket.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct KernelShare {
    /// (KernelStack − baseline) ÷ connections: 16 KiB per thread in threads mode, ~0 in
    /// tasks mode.
    pub kernel_stack_bytes: Option<f64>,
    /// TCP sockets in use now minus at the baseline.
    pub tcp_sockets_added: Option<i64>,
    /// (Slab − baseline) ÷ sockets added (none unless at least one socket was added for
    /// every two connections: see `KernelGrowth`).
    pub slab_per_socket_bytes: Option<f64>,
    /// (SUnreclaim − baseline) ÷ sockets added.
    pub slab_unreclaimable_per_socket_bytes: Option<f64>,
    /// (TCP mem − baseline) ÷ sockets added: buffered data, ~0 when idle.
    pub tcp_memory_per_socket_bytes: Option<f64>,
}

impl KernelShare {
    fn estimate(now: Option<KernelMemory>, baseline: Option<KernelMemory>, connections: u64) -> KernelShare {
        let (Some(now), Some(baseline)) = (now, baseline) else {
            return KernelShare::default();
        };
        // The derivation compare's kernel rows use too, there on slopes.
        let growth = KernelGrowth::between(now, baseline, connections);
        KernelShare {
            kernel_stack_bytes: growth.kernel_stack_per_connection(),
            tcp_sockets_added: Some(growth.tcp_sockets as i64),
            slab_per_socket_bytes: growth.slab_per_socket(),
            slab_unreclaimable_per_socket_bytes: growth.slab_unreclaimable_per_socket(),
            tcp_memory_per_socket_bytes: growth.tcp_memory_per_socket(),
        }
    }
}

/// What bounds the connection count (see `crate::limits`), read when the server starts.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// The cap in force (`wsscale_connections_max`).
    pub max_connections: u64,
    /// The limit that sets it: RLIMIT_NOFILE, a kernel limit (threads mode) or the flag.
    pub bound: String,
    /// RLIMIT_NOFILE, soft (raised to the hard limit at start) and hard.
    pub fd_soft: u64,
    pub fd_hard: u64,
    /// Threads mode only (null in tasks mode): vm.max_map_count, kernel.pid_max,
    /// kernel.threads-max.
    pub vm_max_map_count: Option<u64>,
    pub pid_max: Option<u64>,
    pub threads_max: Option<u64>,
}

impl Limits {
    /// The limits of a server of `mode` whose cap is `max_connections`, as
    /// `crate::limits::capacity` reads them (`server::serve` reads them too, for the cap;
    /// this reading is the page's, once at start).
    pub fn read(mode: Option<Mode>, max_connections: usize) -> Limits {
        let fd = FdLimit::current().ok();
        let kernel = (mode == Some(Mode::Threads))
            .then(KernelLimits::read)
            .and_then(Result::ok);
        let bound = match (mode, fd) {
            (Some(mode), Some(fd)) => {
                let fits = limits::capacity(mode, fd, kernel);
                if fits.max_connections == max_connections {
                    fits.bound
                } else {
                    Bound::Flag
                }
            }
            _ => Bound::Flag,
        };
        Limits {
            max_connections: max_connections as u64,
            bound: bound.to_string(),
            fd_soft: fd.map_or(0, |fd| fd.soft),
            fd_hard: fd.map_or(0, |fd| fd.hard),
            vm_max_map_count: kernel.map(|kernel| kernel.max_map_count),
            pid_max: kernel.map(|kernel| kernel.pid_max),
            threads_max: kernel.map(|kernel| kernel.threads_max),
        }
    }
}

/// What only the sampler thread knows, for [`LiveServer::build`].
pub struct SamplerFacts<'a> {
    pub started_unix_ms: u64,
    pub rss_baseline_bytes: u64,
    pub heap_baseline_bytes: u64,
    pub kernel_now: Option<KernelMemory>,
    pub kernel_baseline: Option<KernelMemory>,
    pub limits: &'a Limits,
}

impl LiveServer {
    /// The page's figures from a rendered exposition and the sampler's own facts.
    pub fn build(exposition: &str, facts: &SamplerFacts<'_>) -> LiveServer {
        let series = Series::parse_all(exposition);
        let find = |name: &str, labels: &[(&str, &str)]| {
            series
                .iter()
                .find(|series| series.name == name && labels.iter().all(|label| series.labels.contains(label)))
                .map_or(0.0, |series| series.value)
        };
        let count = |name: &str| find(name, &[]).max(0.0).round() as u64;
        let by_reason = |name: &str| {
            series
                .iter()
                .filter(|series| series.name == name)
                .filter_map(|series| {
                    let (_, reason) = series.labels.iter().find(|(key, _)| *key == "reason")?;
                    Some((reason.to_string(), series.value.max(0.0).round() as u64))
                })
                .collect()
        };
        let connections_active = count(CONNECTIONS_ACTIVE);
        let per_connection =
            |source: &str| (connections_active > 0).then(|| find(MEMORY_PER_CONNECTION, &[("source", source)]));
        let rss_per_connection_bytes = per_connection("rss");
        let kernel_per_connection = KernelShare::estimate(facts.kernel_now, facts.kernel_baseline, connections_active);
        let user_plus_kernel_per_connection_bytes = match (
            rss_per_connection_bytes,
            kernel_per_connection.kernel_stack_bytes,
            kernel_per_connection.slab_per_socket_bytes,
        ) {
            (Some(rss), Some(stack), Some(slab)) => Some(rss + stack.max(0.0) + slab.max(0.0)),
            _ => None,
        };
        LiveServer {
            kind: "server",
            labels: global_labels(&series),
            pid: std::process::id(),
            started_unix_ms: facts.started_unix_ms,
            time_unix_ms: unix_now_ms(),
            connections_active,
            connections_max: count(CONNECTIONS_MAX),
            connections_opened_total: count(CONNECTIONS_OPENED),
            connections_closed_total: by_reason(CONNECTIONS_CLOSED),
            connections_rejected_total: by_reason(CONNECTIONS_REJECTED),
            handshakes_in_flight: count(HANDSHAKES_IN_FLIGHT),
            handshakes_max: count(HANDSHAKES_MAX),
            messages_received_total: count(MESSAGES_RECEIVED),
            messages_sent_total: count(MESSAGES_SENT),
            broadcasts_total: count(BROADCASTS),
            pushes_dropped_total: count(PUSHES_DROPPED),
            threads: count("process_threads"),
            tasks_alive: count(TASKS_ALIVE),
            runtime_workers: count(RUNTIME_WORKERS),
            open_fds: count("process_open_fds"),
            rss_bytes: count("process_resident_memory_bytes"),
            heap_bytes: count(HEAP_ALLOCATED),
            rss_baseline_bytes: facts.rss_baseline_bytes,
            heap_baseline_bytes: facts.heap_baseline_bytes,
            rss_per_connection_bytes,
            heap_per_connection_bytes: per_connection("heap"),
            host: facts.kernel_now.map(HostKernel::from),
            host_baseline: facts.kernel_baseline.map(HostKernel::from),
            kernel_per_connection,
            user_plus_kernel_per_connection_bytes,
            limits: facts.limits.clone(),
        }
    }
}

/// The global labels, read off a series that has no label of its own.
pub fn global_labels(series: &[Series<'_>]) -> Vec<(String, String)> {
    series
        .iter()
        .find(|series| series.name == CONNECTIONS_ACTIVE)
        .map(|series| {
            series
                .labels
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The execution model named by the `mode` label of a rendered exposition.
pub fn mode_of(exposition: &str) -> Option<Mode> {
    let series = Series::parse_all(exposition);
    let labels = global_labels(&series);
    let (_, mode) = labels.iter().find(|(key, _)| key == "mode")?;
    Mode::ALL.into_iter().find(|known| known.as_str() == mode)
}

/// One sample line of a text exposition: `name{key="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, &'a str)>,
    pub value: f64,
}

impl<'a> Series<'a> {
    /// Every sample line of `exposition` (comments and unreadable lines skipped). Label
    /// values are taken as written: wsscale's values (modes, engines, reasons) have no
    /// quote, backslash or comma to escape.
    pub fn parse_all(exposition: &'a str) -> Vec<Series<'a>> {
        exposition
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(Series::parse)
            .collect()
    }

    fn parse(line: &'a str) -> Option<Series<'a>> {
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.parse().ok()?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once("=\"")?;
                Some((key, value.strip_suffix('"').unwrap_or(value)))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Series { name, labels, value })
    }
}

/// CLOCK_REALTIME now, UNIX milliseconds.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "# HELP wsscale_connections_active x\n\
        wsscale_connections_active{mode=\"threads\",engine=\"lean\"} 4\n\
        wsscale_connections_closed_total{mode=\"threads\",engine=\"lean\",reason=\"error\"} 3\n\
        wsscale_connections_closed_total{mode=\"threads\",engine=\"lean\",reason=\"client_close\"} 7\n\
        wsscale_memory_per_connection_bytes{mode=\"threads\",engine=\"lean\",source=\"rss\"} 10752.5\n\
        wsscale_memory_per_connection_bytes{mode=\"threads\",engine=\"lean\",source=\"heap\"} 250\n\
        process_threads{mode=\"threads\",engine=\"lean\"} 6\n\
        wsscale_handshake_duration_seconds_bucket{mode=\"threads\",engine=\"lean\",le=\"+Inf\"} 9\n";

    fn kernel(stack: u64, slab: u64, sockets: u64) -> KernelMemory {
        KernelMemory {
            kernel_stack_bytes: stack,
            slab_bytes: slab,
            slab_unreclaimable_bytes: slab / 4,
            tcp_memory_bytes: 0,
            tcp_sockets_inuse: sockets,
        }
    }

    #[test]
    fn parses_series_and_labels() {
        let series = Series::parse_all(EXPOSITION);
        assert_eq!(series.len(), 7);
        assert_eq!(
            series[1],
            Series {
                name: "wsscale_connections_closed_total",
                labels: vec![("mode", "threads"), ("engine", "lean"), ("reason", "error")],
                value: 3.0
            }
        );
        assert_eq!(series[6].labels[2], ("le", "+Inf"));
        assert_eq!(
            global_labels(&series),
            vec![("mode".into(), "threads".into()), ("engine".into(), "lean".into())]
        );
        assert_eq!(mode_of(EXPOSITION), Some(Mode::Threads));
        assert_eq!(Series::parse_all("plain 1.5\nbroken{a=\"b\" 2\n").len(), 1);
    }

    #[test]
    fn builds_the_page_figures_from_the_exposition() {
        let limits = Limits::read(Some(Mode::Tasks), 100);
        let facts = SamplerFacts {
            started_unix_ms: 1,
            rss_baseline_bytes: 1000,
            heap_baseline_bytes: 500,
            // 4 connections, 8 sockets added (clients on this host), 4 threads.
            kernel_now: Some(kernel(16_384 * 4 + 100, 1_000_000 + 8 * 4000, 10)),
            kernel_baseline: Some(kernel(100, 1_000_000, 2)),
            limits: &limits,
        };
        let live = LiveServer::build(EXPOSITION, &facts);
        assert_eq!(live.connections_active, 4);
        assert_eq!(live.threads, 6);
        assert_eq!(live.connections_closed_total["client_close"], 7);
        assert_eq!(live.connections_closed_total["error"], 3);
        assert_eq!(live.rss_per_connection_bytes, Some(10752.5));
        assert_eq!(live.heap_per_connection_bytes, Some(250.0));
        let share = live.kernel_per_connection;
        assert_eq!(share.kernel_stack_bytes, Some(16_384.0));
        assert_eq!(share.tcp_sockets_added, Some(8));
        assert_eq!(share.slab_per_socket_bytes, Some(4000.0));
        assert_eq!(share.slab_unreclaimable_per_socket_bytes, Some(1000.0));
        assert_eq!(
            live.user_plus_kernel_per_connection_bytes,
            Some(10752.5 + 16_384.0 + 4000.0)
        );
        assert_eq!(live.labels[1], ("engine".to_owned(), "lean".to_owned()));
        let json = serde_json::to_value(&live).unwrap();
        assert_eq!(json["labels"][0][1], "threads");
        assert_eq!(json["limits"]["max_connections"], 100);
    }

    /// With no connection, and no socket added, nothing is divided: the per-connection
    /// figures are null, never NaN or infinite.
    #[test]
    fn nothing_is_divided_by_zero() {
        let text = EXPOSITION.replace(
            "wsscale_connections_active{mode=\"threads\",engine=\"lean\"} 4",
            "wsscale_connections_active{mode=\"threads\",engine=\"lean\"} 0",
        );
        let limits = Limits::read(None, 10);
        let facts = SamplerFacts {
            started_unix_ms: 1,
            rss_baseline_bytes: 0,
            heap_baseline_bytes: 0,
            kernel_now: Some(kernel(100, 5, 2)),
            kernel_baseline: Some(kernel(100, 5, 2)),
            limits: &limits,
        };
        let live = LiveServer::build(&text, &facts);
        assert_eq!(live.connections_active, 0);
        assert_eq!(live.rss_per_connection_bytes, None);
        assert_eq!(live.heap_per_connection_bytes, None);
        assert_eq!(live.kernel_per_connection.kernel_stack_bytes, None);
        assert_eq!(live.kernel_per_connection.slab_per_socket_bytes, None);
        assert_eq!(live.user_plus_kernel_per_connection_bytes, None);
        let json = serde_json::to_string(&live).unwrap();
        assert!(!json.contains("NaN") && !json.contains("inf"), "{json}");
    }
}
