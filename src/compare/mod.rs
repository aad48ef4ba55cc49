//! `wsscale compare`: the one command that shows what an idle connection costs as a
//! Tokio task and as an OS thread.
//!
//! For each mode it starts `wsscale serve` as a child process (so every figure is the
//! server's alone), grows a pool of client connections in this process step by step,
//! waits at each step until the server's memory is steady, samples its /metrics and
//! cross-checks them against /proc/PID, then stops the server gracefully. Both modes get
//! the same steps and the same server flags. [`fit`] turns the samples into bytes per
//! connection, [`report`] writes summary.json and report.md, [`charts`] the SVGs.

pub mod charts;
pub mod fit;
pub mod report;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use wsscale_loadgen::client::ClientSettings;
use wsscale_loadgen::pool::Pool;
use wsscale_loadgen::report::Percentiles;
use wsscale_loadgen::stats::Stats;

use crate::child::{ServeChild, http_get_body};
use crate::config::{CompareArgs, Mode};
use crate::exposition::sample_value;
use crate::limits;
use wsscale_host::fd::FdLimit;
use wsscale_host::proc::{KernelLimits, ProcessStatus};

/// Descriptors this process keeps for itself beyond the client sockets.
const CLIENT_FD_RESERVE: usize = 128;
/// Poll period while waiting for a step to settle.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// A step is steady when this many consecutive polls agree...
const SETTLE_POLLS: usize = 4;
/// ...to within this fraction of RSS.
const SETTLE_TOLERANCE: f64 = 0.005;
/// How long the server may take to exit after SIGTERM (its drain has nothing left to do).
const SERVER_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// What will be run: validated options, steps that fit the limits, and the server flags
/// both modes share.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub steps: Vec<usize>,
    pub modes: Vec<&'static str>,
    #[serde(skip)]
    pub mode_list: Vec<Mode>,
    pub out: PathBuf,
    pub rate: f64,
    pub concurrency: usize,
    pub settle_timeout_secs: f64,
    pub client_ping_interval_secs: f64,
    pub serve_args: Vec<String>,
    /// Limits found by the preflight, one line each.
    pub limits: Vec<String>,
    #[serde(skip)]
    pub program: PathBuf,
}

/// Runs the whole comparison and writes the report.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let fd = wsscale_host::fd::raise_fd_limit().context("reading or raising RLIMIT_NOFILE")?;
    let kernel = KernelLimits::read().ok();
    let plan = plan(args, fd, kernel)?;
    eprintln!(
        "wsscale compare: steps {:?} in {} mode(s); limits:",
        plan.steps,
        plan.modes.join(" and ")
    );
    for line in &plan.limits {
        eprintln!("  {line}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let stop = CancellationToken::new();
    let mut results = Vec::new();
    for &mode in &plan.mode_list {
        let result = runtime.block_on(measure_mode(&plan, mode, &stop))?;
        results.push(result);
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    let machine = report::Machine::read(fd, kernel);
    let summaries = report::summarize(&results);
    let written = report::write(&plan, &machine, &results, &summaries)?;
    println!("{}", report::comparison_table(&summaries));
    println!("report written to {}", written.display());
    Ok(())
}

/// Validates the options, checks the limits each mode needs, and fixes the steps.
pub fn plan(args: CompareArgs, fd: FdLimit, kernel: Option<KernelLimits>) -> anyhow::Result<Plan> {
    if args.modes.is_empty() {
        bail!("--modes needs at least one of tasks, threads");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be greater than zero");
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be a number of connections per second, 0 (unpaced) or more");
    }
    let mut steps = parse_steps(args.steps.as_deref(), args.connections)?;
    let wanted = *steps.last().expect("steps are never empty");

    // The client sockets live in this process; each server holds as many.
    let mut limits = Vec::new();
    let mut fits = wanted;
    let mut shortfalls = Vec::new();
    let client_cap = (fd.soft as usize).saturating_sub(CLIENT_FD_RESERVE);
    limits.push(format!(
        "client side (this process): RLIMIT_NOFILE {} (hard {}) -> {client_cap} connections",
        fd.soft, fd.hard
    ));
    if wanted > client_cap {
        shortfalls.push(format!(
            "this process holds the client sockets: RLIMIT_NOFILE {} allows {client_cap}; raise the hard limit (ulimit -Hn, as root)",
            fd.soft
        ));
        fits = fits.min(client_cap);
    }
    for &mode in &args.modes {
        let capacity = limits::capacity(mode, fd, kernel);
        limits.push(format!(
            "{mode} server: {} connections ({})",
            capacity.max_connections, capacity.bound
        ));
        if wanted > capacity.max_connections {
            shortfalls.push(format!(
                "{mode} mode: {} allows {} connections; raise it to fit {wanted}",
                capacity.bound, capacity.max_connections
            ));
            fits = fits.min(capacity.max_connections);
        }
    }
    if fits < wanted {
        let message = format!(
            "{wanted} connections do not fit on this machine; the largest count that fits every mode is {fits}:\n  {}",
            shortfalls.join("\n  ")
        );
        if !args.fit_limits {
            bail!("{message}\nRun with --fit-limits to measure up to {fits} instead, or --connections {fits}.");
        }
        eprintln!("{message}\n--fit-limits: measuring up to {fits}.");
        steps.retain(|&step| step < fits);
        steps.push(fits);
    }

    let mut serve_args = vec!["--max-connections".to_owned(), (fits + 16).to_string()];
    if let Some(size) = args.read_buffer_size {
        serve_args.extend(["--read-buffer-size".to_owned(), size.as_u64().to_string()]);
    }
    if let Some(size) = args.thread_stack_size {
        serve_args.extend(["--thread-stack-size".to_owned(), size.as_u64().to_string()]);
    }
    Ok(Plan {
        steps,
        modes: args.modes.iter().map(|mode| mode.as_str()).collect(),
        mode_list: args.modes,
        out: args.out,
        rate: args.rate,
        concurrency: args.concurrency,
        settle_timeout_secs: Duration::from(args.settle_timeout).as_secs_f64(),
        client_ping_interval_secs: Duration::from(args.ping_interval).as_secs_f64(),
        serve_args,
        limits,
        program: std::env::current_exe().context("locating this executable to start servers")?,
    })
}

/// `--steps`: None → 0, 10%, 25%, 50%, 75%, 100%; "K" → K even steps after 0; "a,b,c" →
/// those counts (0 is added first: every fit needs the baseline).
pub fn parse_steps(spec: Option<&str>, connections: usize) -> anyhow::Result<Vec<usize>> {
    if connections == 0 {
        bail!("--connections must be greater than zero");
    }
    let mut steps: Vec<usize> = match spec.map(str::trim) {
        None => [0, 10, 25, 50, 75, 100]
            .iter()
            .map(|percent| connections * percent / 100)
            .collect(),
        Some(spec) if !spec.contains(',') => {
            let count: usize = spec
                .parse()
                .with_context(|| format!("--steps {spec:?}: expected a count or a list"))?;
            if count == 0 {
                bail!("--steps must be at least 1");
            }
            (0..=count).map(|i| connections * i / count).collect()
        }
        Some(spec) => spec
            .split(',')
            .map(|step| {
                step.trim()
                    .parse()
                    .with_context(|| format!("--steps: {step:?} is not a connection count"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    steps.push(0);
    steps.sort_unstable();
    steps.dedup();
    if steps.len() < 2 {
        bail!("--steps needs at least one step above 0 connections");
    }
    Ok(steps)
}

/// One step's reading of the server.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Connections open on the server (its wsscale_connections_active).
    pub connections: u64,
    /// Connections this step asked for.
    pub target: usize,
    pub rss_bytes: u64,
    /// (rss − rss at 0 connections) ÷ connections, from the server's own gauge.
    pub rss_per_connection_bytes: f64,
    pub heap_bytes: u64,
    pub heap_per_connection_bytes: f64,
    pub threads: u64,
    pub tasks_alive: u64,
    /// Host KernelStack: 16 KiB per thread, in no process's RSS.
    pub kernel_stack_bytes: u64,
    /// KernelStack added since the step before.
    pub kernel_stack_delta_bytes: i64,
    pub open_fds: u64,
    /// Connections opened per second reaching this step (none at 0).
    pub open_rate_per_sec: Option<f64>,
    pub failed_connections: u64,
    /// Client ping round trips while the step settled.
    pub ping_rtt_p50_ms: Option<f64>,
    pub ping_rtt_p99_ms: Option<f64>,
    pub cpu_seconds: f64,
    /// The same moment read from /proc/PID/status, as a cross-check.
    pub proc_vm_rss_bytes: u64,
    pub proc_threads: u64,
    /// /metrics within 5% of VmRSS and threads equal to /proc's.
    pub cross_check_ok: bool,
    /// False when the settle timeout passed before memory was steady.
    pub steady: bool,
}

/// Everything measured in one mode.
#[derive(Debug, Clone)]
pub struct ModeResult {
    pub mode: Mode,
    pub samples: Vec<Sample>,
}

async fn measure_mode(plan: &Plan, mode: Mode, stop: &CancellationToken) -> anyhow::Result<ModeResult> {
    std::fs::create_dir_all(&plan.out).with_context(|| format!("creating {}", plan.out.display()))?;
    let log_path = plan.out.join(format!("serve-{mode}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let program = plan.program.clone();
    let serve_args = plan.serve_args.clone();
    let mut server =
        tokio::task::spawn_blocking(move || ServeChild::spawn(&program, mode.as_str(), &serve_args, Stdio::from(log)))
            .await?
            .with_context(|| format!("starting wsscale serve --mode {mode} (log: {})", log_path.display()))?;
    eprintln!("[{mode}] server pid {} on {}", server.pid(), server.ws_addr);

    let stats = Arc::new(Stats::default());
    let ping_interval = Some(Duration::from_secs_f64(plan.client_ping_interval_secs)).filter(|d| !d.is_zero());
    let settings = ClientSettings::new(
        url::Url::parse(&server.url())?,
        server.ws_addr,
        Duration::from_secs(10),
        ping_interval,
        None,
        0,
    );
    let last_step = *plan.steps.last().expect("steps are never empty");
    let sources = wsscale_loadgen::config::auto_source_ips(server.ws_addr, last_step);
    let mut pool = Pool::new(settings, sources, 0, stats.clone());

    let mut samples: Vec<Sample> = Vec::new();
    let mut open_now = 0usize;
    for (index, &target) in plan.steps.iter().enumerate() {
        let mut open_rate = None;
        if target > open_now {
            eprintln!(
                "[{mode}] step {}/{}: opening {} more connections",
                index + 1,
                plan.steps.len(),
                target - open_now
            );
            let ramp = pool.open(target - open_now, plan.rate, plan.concurrency, stop).await;
            let opened = stats.open_now.load(Ordering::Relaxed) as usize;
            open_rate = Some(opened.saturating_sub(open_now) as f64 / ramp.duration.as_secs_f64().max(1e-9));
            open_now = opened;
        }
        // Round trips from here on belong to this step.
        let _ = stats.progress();
        let (text, steady) = settle(
            &server,
            open_now as u64,
            Duration::from_secs_f64(plan.settle_timeout_secs),
        )
        .await?;
        let proc_status = ProcessStatus::read(server.pid())?;
        let rtt = Percentiles::of(&stats.progress().recent.ping_rtt_us);
        let previous_kernel_stack = samples.last().map(|sample| sample.kernel_stack_bytes);
        let sample = Sample::read(
            &text,
            target,
            proc_status,
            previous_kernel_stack,
            open_rate,
            &stats,
            rtt,
            steady,
        );
        eprintln!(
            "[{mode}] {} connections: RSS {:.1} MiB ({:.0} B/conn), {} threads, {} tasks, kernel stack +{} KiB{}",
            sample.connections,
            sample.rss_bytes as f64 / 1048576.0,
            sample.rss_per_connection_bytes,
            sample.threads,
            sample.tasks_alive,
            sample.kernel_stack_delta_bytes / 1024,
            if steady {
                ""
            } else {
                " (not steady at the settle timeout)"
            }
        );
        if !sample.cross_check_ok {
            eprintln!(
                "[{mode}] warning: /metrics disagrees with /proc/{}: RSS {} vs VmRSS {}, threads {} vs {}",
                server.pid(),
                sample.rss_bytes,
                sample.proc_vm_rss_bytes,
                sample.threads,
                sample.proc_threads
            );
        }
        samples.push(sample);
    }

    eprintln!("[{mode}] closing {open_now} connections and stopping the server");
    pool.close_all(Duration::from_secs(30)).await;
    server.signal(libc::SIGTERM)?;
    let status = tokio::task::spawn_blocking(move || server.wait_exit(SERVER_EXIT_TIMEOUT)).await??;
    match status {
        Some(status) if status.success() => {}
        other => eprintln!("[{mode}] warning: the server did not exit cleanly: {other:?}"),
    }
    Ok(ModeResult { mode, samples })
}

/// Polls /metrics until the server holds `expected` connections and its RSS has stayed
/// within tolerance for a few polls; returns the last scrape and whether it settled.
async fn settle(server: &ServeChild, expected: u64, timeout: Duration) -> anyhow::Result<(String, bool)> {
    let deadline = Instant::now() + timeout;
    let mut recent_rss: Vec<f64> = Vec::new();
    loop {
        let text = http_get_body(server.metrics_addr, "/metrics")
            .await
            .context("scraping the server")?;
        let active = sample_value(&text, crate::metrics::CONNECTIONS_ACTIVE, &[]).unwrap_or(-1.0);
        let rss = sample_value(&text, "process_resident_memory_bytes", &[]).unwrap_or(0.0);
        if active == expected as f64 {
            recent_rss.push(rss);
        } else {
            recent_rss.clear();
        }
        let window = &recent_rss[recent_rss.len().saturating_sub(SETTLE_POLLS)..];
        if window.len() == SETTLE_POLLS {
            let (low, high) = window
                .iter()
                .fold((f64::MAX, 0f64), |(low, high), &rss| (low.min(rss), high.max(rss)));
            if high - low <= high * SETTLE_TOLERANCE {
                return Ok((text, true));
            }
        }
        if Instant::now() >= deadline {
            return Ok((text, false));
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

impl Sample {
    #[allow(clippy::too_many_arguments)]
    fn read(
        text: &str,
        target: usize,
        proc_status: ProcessStatus,
        previous_kernel_stack: Option<u64>,
        open_rate_per_sec: Option<f64>,
        stats: &Stats,
        rtt: Percentiles,
        steady: bool,
    ) -> Sample {
        let value = |name: &str, labels: &[(&str, &str)]| sample_value(text, name, labels).unwrap_or(0.0);
        let rss_bytes = value("process_resident_memory_bytes", &[]) as u64;
        let threads = value("process_threads", &[]) as u64;
        let kernel_stack_bytes = value(crate::metrics::HOST_KERNEL_STACK, &[]) as u64;
        let vm_rss = proc_status.vm_rss_bytes as f64;
        Sample {
            connections: value(crate::metrics::CONNECTIONS_ACTIVE, &[]) as u64,
            target,
            rss_bytes,
            rss_per_connection_bytes: value(crate::metrics::MEMORY_PER_CONNECTION, &[("source", "rss")]),
            heap_bytes: value(crate::metrics::HEAP_ALLOCATED, &[]) as u64,
            heap_per_connection_bytes: value(crate::metrics::MEMORY_PER_CONNECTION, &[("source", "heap")]),
            threads,
            tasks_alive: value(crate::metrics::TASKS_ALIVE, &[]) as u64,
            kernel_stack_bytes,
            kernel_stack_delta_bytes: previous_kernel_stack
                .map_or(0, |before| kernel_stack_bytes as i64 - before as i64),
            open_fds: value("process_open_fds", &[]) as u64,
            open_rate_per_sec,
            failed_connections: stats.failed.load(Ordering::Relaxed),
            ping_rtt_p50_ms: (rtt.count > 0).then_some(rtt.p50),
            ping_rtt_p99_ms: (rtt.count > 0).then_some(rtt.p99),
            cpu_seconds: value("process_cpu_seconds_total", &[]),
            proc_vm_rss_bytes: proc_status.vm_rss_bytes,
            proc_threads: proc_status.threads,
            cross_check_ok: (rss_bytes as f64 - vm_rss).abs() <= vm_rss * 0.05 && threads == proc_status.threads,
            steady,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> CompareArgs {
        let cli = Cli::try_parse_from(["wsscale", "compare"].iter().chain(extra)).unwrap();
        let Command::Compare(args) = cli.command else {
            panic!("not compare")
        };
        args
    }

    #[test]
    fn a_run_that_does_not_fit_is_refused_with_the_limit_and_the_largest_count() {
        let fd = FdLimit {
            soft_before: 1024,
            soft: 5000,
            hard: 5000,
        };
        let error = plan(args(&["--connections", "8000"]), fd, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("RLIMIT_NOFILE"), "{error}");
        assert!(error.contains("largest count that fits every mode is 4744"), "{error}");
        assert!(error.contains("--fit-limits"), "{error}");
        let fitted = plan(args(&["--connections", "8000", "--fit-limits"]), fd, None).unwrap();
        assert_eq!(fitted.steps, vec![0, 800, 2000, 4000, 4744]);
        assert_eq!(
            fitted.serve_args[..2],
            ["--max-connections".to_owned(), "4760".to_owned()]
        );
    }

    #[test]
    fn steps_default_to_a_spread_and_always_start_at_zero() {
        assert_eq!(
            parse_steps(None, 10_000).unwrap(),
            vec![0, 1000, 2500, 5000, 7500, 10_000]
        );
        assert_eq!(parse_steps(Some("4"), 1000).unwrap(), vec![0, 250, 500, 750, 1000]);
        assert_eq!(parse_steps(Some("500, 100,1000"), 5).unwrap(), vec![0, 100, 500, 1000]);
        assert!(parse_steps(Some("0"), 1000).is_err());
        assert!(parse_steps(Some("a,b"), 1000).is_err());
        assert!(parse_steps(Some("0,0"), 1000).is_err());
    }
}
