//! wsscale-loadgen: opens, holds and measures tens of thousands of WebSocket
//! connections, past the limits that stop other tools at ~28k.
//!
//! - [`config`]: `wsscale load` options ([`LoadArgs`]) validated into a [`LoadConfig`];
//!   the split of a run across processes ([`config::Share`]).
//! - [`preflight`]: the fd limit, the port space and the target, checked before the
//!   first connection; a run that cannot succeed is refused with the fix.
//! - [`client`]: one connection (connect from a source address with
//!   IP_BIND_ADDRESS_NO_PORT, TLS handshake for wss://, upgrade, hold with scheduled
//!   pings, close 1000; reconnect after a loss with `--reconnect`).
//! - [`offer`], [`deflate`]: `--offer-deflate` — the permessage-deflate offer and the
//!   check of the server's answer; the socket of a run that offers (yawc for a connection
//!   whose server accepted, tungstenite for one whose server declined).
//! - [`tls`]: wss:// — the one shared rustls client configuration (ring provider; trust
//!   webpki-roots, `--tls-ca` or `--tls-insecure`), the handshake, TLS failure causes.
//! - [`reconnect`]: the backoff policy of reconnections. The server pushes' format,
//!   delivery latency and sequence gaps are `wsscale_wire::push`, shared with the server.
//! - [`pool`]: a set of held connections in this process, grown by ramps.
//! - [`stats`]: counters and HDR histograms, and the [`stats::Event`]s a shard reports.
//! - [`report`]: merges shards' events into one [`Summary`] (table and JSON), and
//!   segments' summaries into one (`wsscale load merge`).
//! - [`progress`], [`metrics`], [`live`]: the live view, on a terminal, for Prometheus,
//!   and as a page (`--metrics-listen`: /metrics, the live page at `/` and its JSON at
//!   `/api/live`, all from the aggregated events of every shard).
//!
//! Its own RSS and heap, and its fd limit, come from `wsscale-host`, as the server's do.
//!
//! A run with more connections than one process can hold is sharded: the parent starts
//! children of its own binary (see [`Reexec`]), each runs one share and writes its events
//! as JSON lines on stdout, and the parent merges them exactly as it merges the events
//! of an in-process run. A run bigger than one machine (or pod) is split into segments
//! (`--segment I/N`): independent generators, each sharded as it needs, started together
//! with `--start-at`, whose JSON summaries carry their HDR histograms so that
//! `wsscale load merge` adds them up exactly.

pub mod client;
pub mod config;
pub mod deflate;
pub mod live;
pub mod metrics;
pub mod offer;
pub mod pool;
pub mod preflight;
pub mod progress;
pub mod reconnect;
pub mod report;
pub mod stats;
pub mod tls;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;
use wsscale_host::{alloc, fd, proc};

pub use config::{LoadArgs, LoadConfig};
pub use report::Summary;

use crate::client::ClientSettings;
use crate::config::{LoadCommand, MergeArgs, Part};
use crate::pool::Pool;
use crate::report::{Aggregator, RunInfo};
use crate::stats::{Done, Event, Stats};

/// How often a shard reports progress.
const PROGRESS_PERIOD: Duration = Duration::from_millis(250);
/// How long closing every connection may take at the end.
const CLOSE_ALL_TIMEOUT: Duration = Duration::from_secs(15);

/// How to start a child process that runs `wsscale load` (the binary and the arguments
/// before the load options).
#[derive(Debug, Clone)]
pub struct Reexec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// Runs `wsscale load`: a shard's part when started as a child, the whole run (or
/// segment) otherwise, or `wsscale load merge`. Returns the summary (None for a child,
/// whose output is its event stream). Bad options end the process as clap's own errors
/// do: the reason on stderr, exit status 2.
pub fn run(mut args: LoadArgs, reexec: Reexec) -> anyhow::Result<Option<Summary>> {
    if let Some(LoadCommand::Merge(merge_args)) = args.command.take() {
        return merge(&merge_args).map(Some);
    }
    let config = match LoadConfig::try_from(args) {
        Ok(config) => config,
        Err(error) => clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{error}\n")).exit(),
    };
    if config.shard.is_none()
        && config
            .tls
            .as_ref()
            .is_some_and(|tls| *tls.trust() == tls::Trust::Insecure)
    {
        eprintln!(
            "warning: --tls-insecure: the server's certificate is not verified (any certificate, any name is accepted)"
        );
    }
    let fd_limit = fd::raise_fd_limit().context("reading or raising RLIMIT_NOFILE")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if config.shard.is_some() {
        runtime.block_on(run_child(config))?;
        return Ok(None);
    }
    let plan = preflight::check(&config, fd_limit.soft, fd_limit.hard)?;
    eprint!("preflight:\n{}", plan.report);
    let summary = runtime.block_on(run_parent(&config, plan.processes, reexec))?;
    // Held sockets and pending closes must not delay the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    print!("{}", summary.table());
    for hint in tls::hints(&summary.failures) {
        eprintln!("hint: {hint}");
    }
    if let Some(path) = &config.json {
        write_json(&summary, path)?;
    }
    Ok(Some(summary))
}

/// `wsscale load merge FILES... [--json OUT]`.
fn merge(args: &MergeArgs) -> anyhow::Result<Summary> {
    let mut parts = Vec::new();
    for path in &args.files {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let summary: Summary = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a `wsscale load --json` summary of this version (with run_id and histograms)",
                path.display()
            )
        })?;
        parts.push((path.display().to_string(), summary));
    }
    let (summary, warnings) = Summary::merge(&parts)?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    print!("{}", summary.table());
    if let Some(path) = &args.json {
        write_json(&summary, path)?;
    }
    Ok(summary)
}

fn write_json(summary: &Summary, path: &std::path::Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(summary)?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

/// A child shard: run this process's share, events as JSON lines on stdout.
async fn run_child(config: LoadConfig) -> anyhow::Result<()> {
    let stop = stop_on_signal();
    let (events_tx, mut events) = unbounded_channel();
    let shard = tokio::spawn(async move { run_shard(&config, events_tx, stop).await });
    let mut stdout = std::io::stdout().lock();
    while let Some(event) = events.recv().await {
        serde_json::to_writer(&mut stdout, &event)?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
    }
    shard.await?;
    Ok(())
}

async fn run_parent(config: &LoadConfig, processes: usize, reexec: Reexec) -> anyhow::Result<Summary> {
    let metrics = config
        .metrics_listen
        .map(|addr| metrics::LoadMetrics::install(addr, live::RunLabels::of(config, processes)))
        .transpose()?;
    let stop = stop_on_signal();
    let segment_share = config.segment_share();
    if let Some(segment) = config.segment {
        eprintln!(
            "segment {segment} of run {}: {} of {} connections at {:.1}/s, from index {}",
            config.run_id, segment_share.connections, config.connections, segment_share.rate, segment_share.first_index
        );
    }
    if let Some(start_at) = config.start_at_unix {
        let wait = start_at - unix_now_secs();
        if wait >= 0.0 {
            eprintln!("waiting {wait:.1}s for --start-at {start_at}");
        } else {
            eprintln!("--start-at {start_at} passed {:.1}s ago: starting now", -wait);
        }
    }
    let (events_tx, mut events) = unbounded_channel::<(usize, Event)>();
    if processes == 1 {
        let (shard_tx, mut shard_events) = unbounded_channel();
        let config = config.clone();
        tokio::spawn({
            let stop = stop.clone();
            async move { run_shard(&config, shard_tx, stop).await }
        });
        let events_tx = events_tx.clone();
        tokio::spawn(async move {
            while let Some(event) = shard_events.recv().await {
                let _ = events_tx.send((0, event));
            }
        });
    } else {
        for index in 0..processes {
            let shard = Part {
                index,
                count: processes,
            };
            let child = tokio::process::Command::new(&reexec.program)
                .args(&reexec.args)
                .args(config.shard_args(shard))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting shard {shard} ({})", reexec.program.display()))?;
            tokio::spawn(read_child(index, child, events_tx.clone(), stop.clone()));
        }
    }
    drop(events_tx);

    let mut aggregator = Aggregator::new(processes, metrics);
    let mut display = progress::Display::new(segment_share.connections as u64, false);
    while let Some((shard, event)) = events.recv().await {
        aggregator.apply(shard, event);
        let totals = aggregator.totals();
        let phase = if totals.opened + totals.failed < segment_share.connections as u64 {
            "ramping"
        } else {
            "holding"
        };
        display.update(phase, &totals);
        if aggregator.all_done() {
            break;
        }
    }
    display.finish();
    Ok(aggregator.summary(RunInfo {
        run_id: config.run_id.clone(),
        segment: config.segment,
        target: config.url.to_string(),
        connections: segment_share.connections,
        source_ips: config.source_ips.len(),
        hold_secs: config.hold.as_secs_f64(),
        offer_deflate: config.offer_deflate.as_ref().map(ToString::to_string),
    }))
}

/// Forwards a child's JSON lines and, on `stop`, a SIGINT to the child (which then closes
/// its connections and reports); a child that ends without its `done` event is reported
/// as an interrupted shard.
async fn read_child(
    index: usize,
    mut child: tokio::process::Child,
    events: UnboundedSender<(usize, Event)>,
    stop: CancellationToken,
) {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut done = false;
    let mut forwarded_stop = false;
    loop {
        let line = tokio::select! {
            // Cancel-safe: an interrupted next_line keeps what it read for the next call.
            line = lines.next_line() => line,
            () = stop.cancelled(), if !forwarded_stop => {
                forwarded_stop = true;
                signal_unless_reaped(&child, libc::SIGINT);
                continue;
            }
        };
        let Ok(Some(line)) = line else { break };
        match serde_json::from_str::<Event>(&line) {
            Ok(event) => {
                done |= matches!(event, Event::Done(_));
                let _ = events.send((index, event));
            }
            Err(error) => tracing::warn!(shard = index, %error, "unreadable line from a shard"),
        }
    }
    let status = child.wait().await;
    if !done {
        eprintln!("shard {index} ended without its summary ({status:?})");
        let _ = events.send((
            index,
            Event::Done(Done {
                interrupted: true,
                ..Done::default()
            }),
        ));
    }
}

/// Sends `signal` to a child that has not been reaped. Only this task waits on the child,
/// and it is not waiting now, so the pid cannot have been reaped and reused by another
/// process between the check and kill(2) (a pid stored at spawn could have been: a
/// child that exits early is reaped by `wait` while the parent still holds its pid).
fn signal_unless_reaped(child: &tokio::process::Child, signal: libc::c_int) {
    // `id()` is None once the child's exit status has been collected.
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child, not yet reaped (a zombie at worst).
        unsafe { libc::kill(pid as libc::pid_t, signal) };
    }
}

/// One process's share: ramp, hold, close; events throughout.
async fn run_shard(config: &LoadConfig, events: UnboundedSender<Event>, stop: CancellationToken) {
    let share = config.share();
    let stats = Arc::new(Stats::default());
    let rss_before_bytes = proc::self_rss_bytes().unwrap_or(0);
    let heap_before_bytes = alloc::allocated_bytes() as u64;
    let mut settings = ClientSettings::new(
        config.url.clone(),
        config.target,
        config.connect_timeout,
        config.ping_interval,
        config.message_interval,
        config.message_size,
    );
    settings.reconnect = config.reconnect;
    settings.tls = config.tls.clone();
    settings.offer_deflate = config.offer_deflate.clone();
    settings.message_content = config.message_content;
    let mut pool = Pool::new(settings, config.source_ips.clone(), share.first_index, stats.clone());
    // Counters, new samples, and this process's memory (a read of /proc/self/statm).
    let progress = {
        let stats = stats.clone();
        move || {
            let mut progress = stats.progress();
            progress.memory = stats::Memory {
                rss_bytes: proc::self_rss_bytes().unwrap_or(0),
                heap_bytes: alloc::allocated_bytes() as u64,
                rss_before_bytes,
                heap_before_bytes,
            };
            progress
        }
    };
    let reporter = tokio::spawn({
        let events = events.clone();
        let progress = progress.clone();
        async move {
            let mut ticks = tokio::time::interval(PROGRESS_PERIOD);
            loop {
                ticks.tick().await;
                if events.send(Event::Progress(progress())).is_err() {
                    return;
                }
            }
        }
    });
    if let Some(start_at) = config.start_at_unix {
        let wait = Duration::from_secs_f64((start_at - unix_now_secs()).max(0.0));
        tokio::select! {
            _ = stop.cancelled() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    let ramp_start_unix = unix_now_secs();
    let ramp = pool.open(share.connections, share.rate, share.concurrency, &stop).await;
    let rss_held_bytes = proc::self_rss_bytes().unwrap_or(0);
    let heap_held_bytes = alloc::allocated_bytes() as u64;
    let held = stats.open_now.load(std::sync::atomic::Ordering::Relaxed);
    if !ramp.interrupted {
        tokio::select! {
            _ = stop.cancelled() => {}
            () = tokio::time::sleep(config.hold) => {}
        }
    }
    pool.close_all(CLOSE_ALL_TIMEOUT).await;
    reporter.abort();
    let _ = events.send(Event::Progress(progress()));
    let _ = events.send(Event::Done(Done {
        ramp_start_unix,
        ramp_secs: ramp.duration.as_secs_f64(),
        rss_before_bytes,
        rss_held_bytes,
        heap_before_bytes,
        heap_held_bytes,
        held,
        interrupted: stop.is_cancelled(),
    }));
}

/// CLOCK_REALTIME now, in UNIX seconds.
fn unix_now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// A token cancelled by the first SIGINT or SIGTERM.
fn stop_on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            match wsscale_host::signal::terminated().await {
                Ok(_) => {
                    eprintln!("stopping: closing every connection");
                    stop.cancel();
                }
                Err(error) => {
                    eprintln!("cannot install SIGINT/SIGTERM handlers ({error}); Ctrl-C ends the run abruptly")
                }
            }
        }
    });
    stop
}
