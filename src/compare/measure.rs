//! Measuring one run: start its server, grow a pool of client connections step by step
//! (the load generator's `Pool`, in this process), wait at each step until the server
//! holds them all and its memory is steady, sample it ([`Sample`]), with `--push` measure
//! broadcasts, then stop the server.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use wsscale_host::proc::{KernelMemory, ProcessCounters, ProcessStatus};
use wsscale_loadgen::client::ClientSettings;
use wsscale_loadgen::pool::Pool;
use wsscale_loadgen::report::Percentiles;
use wsscale_loadgen::stats::Stats;
use wsscale_loadgen::tls::{TlsClient, Trust};

use super::plan::{Plan, PushPlan, RunSpec};
use super::server::{Figures, Reading, Server};
use crate::exposition::sample_value;

/// Poll period while waiting for a step to settle.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// A step is steady when this many consecutive polls agree...
const SETTLE_POLLS: usize = 4;
/// ...to within this fraction of RSS.
const SETTLE_TOLERANCE: f64 = 0.005;

/// One step's reading of the server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Connections open at this step: the server's wsscale_connections_active, or (an
    /// external server) the connections the clients hold.
    pub connections: u64,
    /// Connections this step asked for.
    pub target: usize,
    pub rss_bytes: u64,
    /// (rss − rss at 0 connections) ÷ connections: the server's own gauge, or computed
    /// here for an external server.
    pub rss_per_connection_bytes: f64,
    /// Live heap (wsscale servers only: their counting allocator).
    pub heap_bytes: Option<u64>,
    pub heap_per_connection_bytes: Option<f64>,
    pub threads: u64,
    /// Tokio tasks alive (wsscale servers only).
    pub tasks_alive: Option<u64>,
    /// Host KernelStack: 16 KiB per thread, in no process's RSS.
    pub kernel_stack_bytes: u64,
    /// KernelStack added since the step before.
    pub kernel_stack_delta_bytes: i64,
    /// The host's slab (`Slab` of /proc/meminfo, and its unreclaimable part `SUnreclaim`),
    /// sockstat's TCP `mem` in bytes and TCP `inuse`, read by compare at the same moment
    /// for every server: what the kernel holds for the sockets, in no process's RSS. None
    /// if /proc could not be read.
    pub slab_bytes: Option<u64>,
    pub slab_unreclaimable_bytes: Option<u64>,
    pub tcp_memory_bytes: Option<u64>,
    pub tcp_sockets_inuse: Option<u64>,
    pub open_fds: u64,
    /// Connections opened per second reaching this step (none at 0).
    pub open_rate_per_sec: Option<f64>,
    pub failed_connections: u64,
    /// Client ping round trips while the step settled.
    pub ping_rtt_p50_ms: Option<f64>,
    pub ping_rtt_p99_ms: Option<f64>,
    pub cpu_seconds: f64,
    /// The same moment read from /proc/PID/status, as a cross-check (an external
    /// server's figures are these).
    pub proc_vm_rss_bytes: u64,
    pub proc_threads: u64,
    /// /metrics within 5% of VmRSS and threads equal to /proc's; none for an external
    /// server (its figures come from /proc itself).
    pub cross_check_ok: Option<bool>,
    /// False when the settle timeout passed before memory was steady.
    pub steady: bool,
    /// `--push` (lean-engine runs, steps with connections): see [`PushSample`].
    #[serde(flatten)]
    pub push: Option<PushSample>,
}

/// Server push at one step: `count` broadcasts one second apart after the memory sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PushSample {
    pub broadcasts: usize,
    /// Pushes the clients received, and the sequence gaps they saw.
    pub push_delivered: u64,
    pub push_missed: u64,
    /// Delivery latency over every connection and broadcast: the clients' receipt time
    /// minus the send time the push carries (one host, one clock).
    pub push_delivery_p50_ms: f64,
    pub push_delivery_p99_ms: f64,
    /// The slowest delivery: when the last connection had the push.
    pub push_delivery_max_ms: f64,
    /// The server's CPU time and context switches (every thread's, voluntary +
    /// involuntary) per broadcast, each net of an equal window with no broadcast (so the
    /// clients' pings do not count).
    pub cpu_seconds_per_broadcast: f64,
    pub context_switches_per_broadcast: f64,
}

/// Everything measured in one run.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub spec: RunSpec,
    pub samples: Vec<Sample>,
    /// What the server answered the generator's permessage-deflate offer (None: no offer).
    pub deflate: Option<DeflateAnswers>,
}

/// The server's answers to the permessage-deflate offer, over the run's upgrades.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeflateAnswers {
    pub declined: u64,
    /// Upgrades accepted, by the 101's `Sec-WebSocket-Extensions`.
    pub accepted: std::collections::BTreeMap<String, u64>,
}

impl std::fmt::Display for DeflateAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .accepted
            .iter()
            .map(|(answer, count)| format!("accepted {count} ({answer})"))
            .collect();
        if self.declined > 0 || parts.is_empty() {
            parts.push(format!("declined {}", self.declined));
        }
        f.write_str(&parts.join(", "))
    }
}

/// Runs one server through every step of the plan.
pub async fn measure(plan: &Plan, run: &RunSpec, stop: &CancellationToken) -> anyhow::Result<RunResult> {
    let name = &run.name;
    let server = Server::start(plan, run).await?;
    let url = server.url(plan);
    eprintln!("[{name}] server pid {} at {url}", server.pid());

    let stats = Arc::new(Stats::default());
    let ping_interval = Some(Duration::from_secs_f64(plan.client_ping_interval_secs)).filter(|d| !d.is_zero());
    let url = url::Url::parse(&url)?;
    let target = url
        .socket_addrs(|| None)?
        .into_iter()
        .next()
        .context("the server's address")?;
    let mut settings = ClientSettings::new(url.clone(), target, Duration::from_secs(10), ping_interval, None, 0);
    settings.offer_deflate = plan.offer_deflate.clone();
    if url.scheme() == "wss" {
        // Every wss run's certificate is compare's own (plan::TlsFiles): trusted alone.
        let files = plan
            .server_flags
            .tls
            .as_ref()
            .context("a wss run without compare's certificate")?;
        let host = url.host().context("the server's host")?;
        settings.tls = Some(TlsClient::new(Trust::Ca(files.cert.clone()), &host)?);
    }
    let last_step = *plan.steps.last().expect("steps are never empty");
    let sources = wsscale_loadgen::config::auto_source_ips(target, last_step);
    let mut pool = Pool::new(settings, sources, 0, stats.clone());

    let mut samples: Vec<Sample> = Vec::new();
    let mut open_now = 0usize;
    for (index, &step) in plan.steps.iter().enumerate() {
        let mut open_rate = None;
        if step > open_now {
            eprintln!(
                "[{name}] step {}/{}: opening {} more connections",
                index + 1,
                plan.steps.len(),
                step - open_now
            );
            let ramp = pool.open(step - open_now, plan.rate, plan.concurrency, stop).await;
            let opened = stats.open_now.load(Ordering::Relaxed) as usize;
            open_rate = Some(opened.saturating_sub(open_now) as f64 / ramp.duration.as_secs_f64().max(1e-9));
            open_now = opened;
        }
        // Round trips from here on belong to this step.
        let _ = stats.progress();
        let (reading, steady) = settle(
            &server,
            &stats,
            open_now as u64,
            Duration::from_secs_f64(plan.settle_timeout_secs),
        )
        .await?;
        let rtt = Percentiles::of(&stats.progress().recent.ping_rtt_us);
        let mut sample = Sample::read(
            reading,
            &server,
            StepContext {
                target: step,
                previous: samples.first().zip(samples.last()),
                open_rate,
                failed: stats.failed.load(Ordering::Relaxed),
                rtt,
                steady,
            },
        )?;
        eprintln!(
            "[{name}] {} connections: RSS {:.1} MiB ({:.0} B/conn), {} threads{}, host kernel stacks {:+} KiB since 0 connections{}",
            sample.connections,
            sample.rss_bytes as f64 / 1048576.0,
            sample.rss_per_connection_bytes,
            sample.threads,
            sample
                .tasks_alive
                .map_or(String::new(), |tasks| format!(", {tasks} tasks")),
            samples.first().map_or(0, |first| {
                (sample.kernel_stack_bytes as i64 - first.kernel_stack_bytes as i64) / 1024
            }),
            if steady {
                ""
            } else {
                " (not steady at the settle timeout)"
            }
        );
        if sample.cross_check_ok == Some(false) {
            eprintln!(
                "[{name}] warning: /metrics disagrees with /proc/{}: RSS {} vs VmRSS {}, threads {} vs {}",
                server.pid(),
                sample.rss_bytes,
                sample.proc_vm_rss_bytes,
                sample.threads,
                sample.proc_threads
            );
        }
        // Where broadcasts are asked for: a lean wsscale server's /broadcast, or the floor's.
        let broadcasts_at = match (&server, run.builtin()) {
            (Server::Wsscale(child), Some(builtin)) if builtin.engine.pushes() => Some(child.metrics_addr),
            (Server::Floor(floor), _) => Some(floor.control_addr),
            _ => None,
        };
        if let (Some(push), Some(control)) = (plan.push, broadcasts_at)
            && open_now > 0
        {
            let measured = measure_push(server.pid(), control, &stats, push).await?;
            eprintln!(
                "[{name}] {} broadcasts to {open_now}: delivery p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.4} CPU s and {:.0} context switches per broadcast",
                measured.broadcasts,
                measured.push_delivery_p50_ms,
                measured.push_delivery_p99_ms,
                measured.push_delivery_max_ms,
                measured.cpu_seconds_per_broadcast,
                measured.context_switches_per_broadcast
            );
            sample.push = Some(measured);
        }
        samples.push(sample);
    }

    let deflate = plan.offer_deflate.is_some().then(|| {
        let (declined, accepted) = stats.deflate_answers();
        DeflateAnswers { declined, accepted }
    });
    if let Some(answers) = &deflate {
        eprintln!("[{name}] permessage-deflate: {answers}");
    }
    eprintln!("[{name}] closing {open_now} connections and stopping the server");
    pool.close_all(Duration::from_secs(30)).await;
    server.stop(name).await?;
    Ok(RunResult {
        spec: run.clone(),
        samples,
        deflate,
    })
}

/// One step's push measurement: a quiet window of `count` seconds (the baseline: pings,
/// timers), then `count` broadcasts one second apart, reading the server's CPU time and
/// context switches around each window and the clients' delivery latencies.
/// The same for a wsscale server and for the floor: `pid`'s counters, `POST /broadcast` to
/// `control`.
async fn measure_push(
    pid: u32,
    control: std::net::SocketAddr,
    stats: &Stats,
    push: PushPlan,
) -> anyhow::Result<PushSample> {
    const SPACING: Duration = Duration::from_secs(1);
    let counters = || async move {
        tokio::task::spawn_blocking(move || ProcessCounters::read(pid))
            .await?
            .context("reading the server's CPU time and context switches")
    };
    let window = SPACING * push.count as u32;
    let quiet_start = counters().await?;
    tokio::time::sleep(window).await;
    let quiet_end = counters().await?;
    let missed_before = stats.push_missed.load(Ordering::Relaxed);
    let _ = stats.progress();
    let push_start = counters().await?;
    let started = Instant::now();
    for index in 0..push.count {
        let (status, body) = crate::child::http_post(control, &format!("/broadcast?size={}", push.size_bytes))
            .await
            .context("POST /broadcast")?;
        if status != 200 {
            bail!("POST /broadcast answered {status}: {}", body.trim());
        }
        // One second apart, measured from the first, so both windows last `count` seconds.
        tokio::time::sleep_until((started + SPACING * (index as u32 + 1)).into()).await;
    }
    let push_end = counters().await?;
    let delivery = Percentiles::of(&stats.progress().recent.push_delivery_us);
    let per_broadcast = |pushing: f64, quiet: f64| (pushing - quiet) / push.count as f64;
    Ok(PushSample {
        broadcasts: push.count,
        push_delivered: delivery.count,
        push_missed: stats.push_missed.load(Ordering::Relaxed) - missed_before,
        push_delivery_p50_ms: delivery.p50,
        push_delivery_p99_ms: delivery.p99,
        push_delivery_max_ms: delivery.max,
        cpu_seconds_per_broadcast: per_broadcast(
            push_end.cpu_seconds - push_start.cpu_seconds,
            quiet_end.cpu_seconds - quiet_start.cpu_seconds,
        ),
        context_switches_per_broadcast: per_broadcast(
            push_end.context_switches as f64 - push_start.context_switches as f64,
            quiet_end.context_switches as f64 - quiet_start.context_switches as f64,
        ),
    })
}

/// Polls the server until it holds `expected` connections and its RSS has stayed within
/// tolerance for a few polls; returns the last reading and whether it settled.
async fn settle(server: &Server, stats: &Stats, expected: u64, timeout: Duration) -> anyhow::Result<(Reading, bool)> {
    let deadline = Instant::now() + timeout;
    let mut recent_rss: Vec<f64> = Vec::new();
    loop {
        let reading = server.read(stats.open_now.load(Ordering::Relaxed)).await?;
        if reading.connections == expected {
            recent_rss.push(reading.rss_bytes as f64);
        } else {
            recent_rss.clear();
        }
        let window = &recent_rss[recent_rss.len().saturating_sub(SETTLE_POLLS)..];
        if window.len() == SETTLE_POLLS {
            let (low, high) = window
                .iter()
                .fold((f64::MAX, 0f64), |(low, high), &rss| (low.min(rss), high.max(rss)));
            if high - low <= high * SETTLE_TOLERANCE {
                return Ok((reading, true));
            }
        }
        if Instant::now() >= deadline {
            return Ok((reading, false));
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// What a sample knows besides the server's reading.
struct StepContext<'a> {
    target: usize,
    /// The first (0 connections) and the latest samples of this run, if any.
    previous: Option<(&'a Sample, &'a Sample)>,
    open_rate: Option<f64>,
    failed: u64,
    rtt: Percentiles,
    steady: bool,
}

impl Sample {
    fn read(reading: Reading, server: &Server, context: StepContext<'_>) -> anyhow::Result<Sample> {
        // What only the server's own figures give; the rest is the same for every server.
        let measured = match reading.figures {
            Figures::Scrape(text) => {
                let proc_status = ProcessStatus::read(server.pid())?;
                let value = |name: &str, labels: &[(&str, &str)]| sample_value(&text, name, labels).unwrap_or(0.0);
                let rss_bytes = value("process_resident_memory_bytes", &[]) as u64;
                let threads = value("process_threads", &[]) as u64;
                let vm_rss = proc_status.vm_rss_bytes as f64;
                Sample {
                    rss_bytes,
                    rss_per_connection_bytes: value(crate::metrics::MEMORY_PER_CONNECTION, &[("source", "rss")]),
                    heap_bytes: Some(value(crate::metrics::HEAP_ALLOCATED, &[]) as u64),
                    heap_per_connection_bytes: Some(value(
                        crate::metrics::MEMORY_PER_CONNECTION,
                        &[("source", "heap")],
                    )),
                    threads,
                    tasks_alive: Some(value(crate::metrics::TASKS_ALIVE, &[]) as u64),
                    kernel_stack_bytes: value(crate::metrics::HOST_KERNEL_STACK, &[]) as u64,
                    open_fds: value("process_open_fds", &[]) as u64,
                    cpu_seconds: value("process_cpu_seconds_total", &[]),
                    proc_vm_rss_bytes: proc_status.vm_rss_bytes,
                    proc_threads: proc_status.threads,
                    cross_check_ok: Some(
                        (rss_bytes as f64 - vm_rss).abs() <= vm_rss * 0.05 && threads == proc_status.threads,
                    ),
                    ..Sample::default()
                }
            }
            Figures::Tree(tree) => {
                let baseline = context.previous.map(|(first, _)| first.rss_bytes);
                let rss_per_connection_bytes = match (baseline, reading.connections) {
                    (Some(base), connections) if connections > 0 => {
                        tree.rss_bytes.saturating_sub(base) as f64 / connections as f64
                    }
                    _ => 0.0,
                };
                Sample {
                    rss_bytes: tree.rss_bytes,
                    rss_per_connection_bytes,
                    threads: tree.threads,
                    kernel_stack_bytes: wsscale_host::proc::kernel_stack_bytes().unwrap_or(0),
                    open_fds: tree.open_fds,
                    cpu_seconds: tree.cpu_seconds,
                    proc_vm_rss_bytes: tree.rss_bytes,
                    proc_threads: tree.threads,
                    ..Sample::default()
                }
            }
        };
        let (ping_rtt_p50_ms, ping_rtt_p99_ms) = match context.rtt.count {
            0 => (None, None),
            _ => (Some(context.rtt.p50), Some(context.rtt.p99)),
        };
        let kernel = KernelMemory::read().ok();
        Ok(Sample {
            connections: reading.connections,
            target: context.target,
            slab_bytes: kernel.map(|kernel| kernel.slab_bytes),
            slab_unreclaimable_bytes: kernel.map(|kernel| kernel.slab_unreclaimable_bytes),
            tcp_memory_bytes: kernel.map(|kernel| kernel.tcp_memory_bytes),
            tcp_sockets_inuse: kernel.map(|kernel| kernel.tcp_sockets_inuse),
            kernel_stack_delta_bytes: context.previous.map_or(0, |(_, last)| {
                measured.kernel_stack_bytes as i64 - last.kernel_stack_bytes as i64
            }),
            open_rate_per_sec: context.open_rate,
            failed_connections: context.failed,
            ping_rtt_p50_ms,
            ping_rtt_p99_ms,
            steady: context.steady,
            ..measured
        })
    }
}
