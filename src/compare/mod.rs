//! `wsscale compare`: the one command that shows what an idle connection costs as a
//! Tokio task and as an OS thread, with wsscale's lean engine and with the stock
//! tungstenite stack — and, with `--server`, in any other WebSocket server.
//!
//! For each run it starts the server as a child process (so every figure is the
//! server's alone), grows a pool of client connections in this process step by step,
//! waits at each step until the server's memory is steady, samples it — a wsscale
//! server's /metrics cross-checked against /proc/PID; any other server from /proc, as a
//! process tree ([`external`]) — then stops the server. Every run gets the same steps,
//! the same clients and (wsscale servers) the same flags. [`summary`] fits the samples
//! into bytes per connection and the ratios, [`report`] writes summary.json and
//! report.md, [`charts`] the SVGs.

pub mod charts;
pub mod external;
pub mod fit;
pub mod report;
pub mod summary;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use wsscale_host::fd::FdLimit;
use wsscale_host::proc::{KernelLimits, ProcessCounters, ProcessStatus, TreeUsage};
use wsscale_loadgen::client::ClientSettings;
use wsscale_loadgen::pool::Pool;
use wsscale_loadgen::report::Percentiles;
use wsscale_loadgen::stats::Stats;

use self::external::ExternalServer;
use crate::child::{ServeChild, http_get_body};
use crate::config::{Buffers, Cli, Command, CompareArgs, Engine, Mode, ServeConfig};
use crate::exposition::sample_value;
use crate::limits;

/// Descriptors this process keeps for itself beyond the client sockets.
const CLIENT_FD_RESERVE: usize = 128;
/// Poll period while waiting for a step to settle.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// A step is steady when this many consecutive polls agree...
const SETTLE_POLLS: usize = 4;
/// ...to within this fraction of RSS.
const SETTLE_TOLERANCE: f64 = 0.005;
/// How long a wsscale server may take to exit after SIGTERM (its drain has nothing left).
const SERVER_EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Fraction of the host's available memory one run may plan to use.
const MEMORY_BUDGET: f64 = 0.8;
/// What the client side holds per connection (the generator's own measured ~2 KB, with
/// room), in the memory preflight.
const CLIENT_BYTES_PER_CONNECTION: u64 = 4 * 1024;

/// What one run measures.
#[derive(Debug, Clone)]
pub enum Target {
    /// `wsscale serve` in a mode, with an engine, and the buffer settings it will resolve.
    Wsscale {
        mode: Mode,
        engine: Engine,
        settings: Buffers,
    },
    /// Any server, started from a command line (`--server NAME=COMMAND`).
    External { command: String },
}

/// One run of the comparison: its name (the table's column, `serve-NAME.log`), the
/// server it starts, and (wsscale's own) the mode, engine and settings.
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    pub name: String,
    /// The command line: `wsscale serve ...`, or the `--server` command (with `{port}`).
    pub server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// Each buffer and size setting in force, and whether it is the engine's default or
    /// a flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<Buffers>,
    #[serde(skip)]
    pub target: Target,
}

impl RunSpec {
    fn wsscale(mode: Mode, engine: Engine, settings: Buffers, serve_args: &[String]) -> Self {
        RunSpec {
            name: builtin_name(mode, engine),
            server: wsscale_command_line(mode, engine, serve_args),
            mode: Some(mode),
            engine: Some(engine),
            settings: Some(settings),
            target: Target::Wsscale { mode, engine, settings },
        }
    }

    fn external(name: &str, command: &str) -> Self {
        RunSpec {
            name: name.to_owned(),
            server: command.to_owned(),
            mode: None,
            engine: None,
            settings: None,
            target: Target::External {
                command: command.to_owned(),
            },
        }
    }

    /// The mode and engine of a wsscale run.
    pub fn builtin(&self) -> Option<(Mode, Engine)> {
        match self.target {
            Target::Wsscale { mode, engine, .. } => Some((mode, engine)),
            Target::External { .. } => None,
        }
    }
}

/// Whether `name` is one of wsscale's own runs (in any mode with any engine).
pub fn is_builtin_name(name: &str) -> bool {
    Mode::ALL
        .iter()
        .any(|&mode| Engine::ALL.iter().any(|&engine| builtin_name(mode, engine) == name))
}

/// What a wsscale run starts (its listeners on port 0 besides).
fn wsscale_command_line(mode: Mode, engine: Engine, serve_args: &[String]) -> String {
    format!("wsscale serve --mode {mode} --engine {engine} {}", serve_args.join(" "))
        .trim_end()
        .to_owned()
}

/// `tasks-lean`, `threads-tungstenite`, ...
pub fn builtin_name(mode: Mode, engine: Engine) -> String {
    format!("{mode}-{engine}")
}

/// `--push`: broadcasts per step and their size.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PushPlan {
    pub count: usize,
    pub size_bytes: usize,
}

/// What will be run: validated options, steps that fit the limits, and the server flags
/// every wsscale run shares.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub steps: Vec<usize>,
    pub modes: Vec<Mode>,
    pub engines: Vec<Engine>,
    pub runs: Vec<RunSpec>,
    pub out: PathBuf,
    pub rate: f64,
    pub concurrency: usize,
    pub settle_timeout_secs: f64,
    pub client_ping_interval_secs: f64,
    /// Flags every wsscale server gets besides its --mode and --engine.
    pub serve_args: Vec<String>,
    /// The path external servers upgrade on.
    pub path: String,
    pub server_start_timeout_secs: f64,
    /// `--push`: measured at every step of the lean-engine runs.
    pub push: Option<PushPlan>,
    /// Limits found by the preflight, one line each.
    pub limits: Vec<String>,
    #[serde(skip)]
    pub program: PathBuf,
}

/// Runs the whole comparison and writes the report.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let fd = wsscale_host::fd::raise_fd_limit().context("reading or raising RLIMIT_NOFILE")?;
    let kernel = KernelLimits::read().ok();
    let available = wsscale_host::proc::memory_available_bytes().ok();
    let plan = plan(args, fd, kernel, available)?;
    let names: Vec<&str> = plan.runs.iter().map(|run| run.name.as_str()).collect();
    eprintln!(
        "wsscale compare: steps {:?} for {}; limits:",
        plan.steps,
        names.join(", ")
    );
    for line in &plan.limits {
        eprintln!("  {line}");
    }
    std::fs::create_dir_all(&plan.out).with_context(|| format!("creating {}", plan.out.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // A server that cannot start fails the comparison now, not after the others ran.
    runtime.block_on(check_external_servers(&plan))?;
    let stop = CancellationToken::new();
    let mut results = Vec::new();
    for run in &plan.runs {
        results.push(runtime.block_on(measure(&plan, run, &stop))?);
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    let machine = report::Machine::read(fd, kernel);
    let summaries = summary::Summaries::of(&results);
    let written = report::write(&plan, &machine, &summaries)?;
    println!("{}", report::comparison_table(&summaries));
    if let Some(push) = report::push_table(&summaries) {
        println!("{push}");
    }
    println!("report written to {}", written.display());
    Ok(())
}

/// Starts and stops every `--server` once: each must start and upgrade a connection.
async fn check_external_servers(plan: &Plan) -> anyhow::Result<()> {
    for run in &plan.runs {
        let Target::External { command } = &run.target else {
            continue;
        };
        eprintln!("[{}] checking that it starts and upgrades", run.name);
        let log = plan.out.join(format!("serve-{}.log", run.name));
        let timeout = Duration::from_secs_f64(plan.server_start_timeout_secs);
        let server = ExternalServer::start(&run.name, command, &plan.path, timeout, &log).await?;
        tokio::task::spawn_blocking(move || server.stop()).await?;
    }
    Ok(())
}

/// Validates the options, resolves every run's settings, checks the limits each run
/// needs, and fixes the steps.
pub fn plan(
    args: CompareArgs,
    fd: FdLimit,
    kernel: Option<KernelLimits>,
    memory_available: Option<u64>,
) -> anyhow::Result<Plan> {
    if args.concurrency == 0 {
        bail!("--concurrency must be greater than zero");
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be a number of connections per second, 0 (unpaced) or more");
    }
    if !args.path.starts_with('/') {
        bail!("--path {:?} must start with /", args.path);
    }
    let mut steps = parse_steps(args.steps.as_deref(), args.connections)?;
    let wanted = *steps.last().expect("steps are never empty");

    let push = if args.push {
        if args.push_count == 0 {
            bail!("--push-count must be at least 1");
        }
        let size = args.push_size.as_u64() as usize;
        if size < wsscale_wire::push::HEADER_LEN {
            bail!(
                "--push-size must be at least {} bytes (the push header)",
                wsscale_wire::push::HEADER_LEN
            );
        }
        Some(PushPlan {
            count: args.push_count,
            size_bytes: size,
        })
    } else {
        None
    };
    let mut serve_args: Vec<String> = Vec::new();
    if let Some(push) = push {
        serve_args.extend([
            "--allow-broadcast".to_owned(),
            "--push-size".to_owned(),
            push.size_bytes.to_string(),
        ]);
    }
    for (flag, value) in [
        ("--read-buffer-size", args.read_buffer_size),
        ("--write-buffer-size", args.write_buffer_size),
        ("--max-message-size", args.max_message_size),
        ("--thread-stack-size", args.thread_stack_size),
    ] {
        if let Some(value) = value {
            serve_args.extend([flag.to_owned(), value.as_u64().to_string()]);
        }
    }
    let mut runs = Vec::new();
    for &engine in &args.engines {
        for &mode in &args.modes {
            let settings = resolve_settings(mode, engine, &serve_args)?;
            runs.push(RunSpec::wsscale(mode, engine, settings, &serve_args));
        }
    }
    for server in &args.servers {
        let (name, command) = parse_server(server)?;
        if runs.iter().any(|run| run.name == name) {
            bail!("--server {name}=...: {name} is already the name of another run");
        }
        runs.push(RunSpec::external(name, command));
    }
    if runs.is_empty() {
        bail!("nothing to measure: give --modes and --engines, or --server");
    }

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
    if let Some(available) = memory_available {
        let budget = (available as f64 * MEMORY_BUDGET) as u64;
        for run in &runs {
            let Target::Wsscale { mode, engine, settings } = &run.target else {
                continue;
            };
            let per_connection = estimated_bytes_per_connection(*mode, *engine, settings) + CLIENT_BYTES_PER_CONNECTION;
            let room = (budget / per_connection) as usize;
            limits.push(format!(
                "{} memory: ~{} KiB per connection (server + client) in {} MiB ({:.0}% of MemAvailable) -> {room} connections",
                run.name,
                per_connection / 1024,
                budget >> 20,
                MEMORY_BUDGET * 100.0
            ));
            if wanted > room {
                shortfalls.push(format!(
                    "{}: about {} KiB per connection (its read buffer and stack) does not fit {wanted} connections in {} MiB; free memory, or set --read-buffer-size",
                    run.name,
                    per_connection / 1024,
                    budget >> 20
                ));
                fits = fits.min(room);
            }
        }
    }
    if fits < wanted {
        let message = format!(
            "{wanted} connections do not fit on this machine; the largest count that fits every run is {fits}:\n  {}",
            shortfalls.join("\n  ")
        );
        if !args.fit_limits {
            bail!("{message}\nRun with --fit-limits to measure up to {fits} instead, or --connections {fits}.");
        }
        eprintln!("{message}\n--fit-limits: measuring up to {fits}.");
        steps.retain(|&step| step < fits);
        steps.push(fits);
    }

    let mut all_serve_args = vec!["--max-connections".to_owned(), (fits + 16).to_string()];
    all_serve_args.extend(serve_args);
    for run in &mut runs {
        if let Target::Wsscale { mode, engine, .. } = run.target {
            run.server = wsscale_command_line(mode, engine, &all_serve_args);
        }
    }
    Ok(Plan {
        steps,
        modes: args.modes,
        engines: args.engines,
        runs,
        out: args.out,
        rate: args.rate,
        concurrency: args.concurrency,
        settle_timeout_secs: Duration::from(args.settle_timeout).as_secs_f64(),
        client_ping_interval_secs: Duration::from(args.ping_interval).as_secs_f64(),
        serve_args: all_serve_args,
        path: args.path,
        server_start_timeout_secs: Duration::from(args.server_start_timeout).as_secs_f64(),
        push,
        limits,
        program: std::env::current_exe().context("locating this executable to start servers")?,
    })
}

/// The settings `wsscale serve --mode MODE --engine ENGINE SERVE_ARGS` will run with,
/// resolved by the server's own configuration code.
fn resolve_settings(mode: Mode, engine: Engine, serve_args: &[String]) -> anyhow::Result<Buffers> {
    let mut argv = vec![
        "wsscale".to_owned(),
        "serve".to_owned(),
        "--mode".to_owned(),
        mode.to_string(),
        "--engine".to_owned(),
        engine.to_string(),
    ];
    argv.extend(serve_args.iter().cloned());
    let Command::Serve(args) = Cli::try_parse_from(argv)?.command else {
        unreachable!("a serve command line")
    };
    Ok(ServeConfig::try_from(args)?.buffers)
}

/// A rough upper estimate of what one idle connection of a wsscale run costs (user +
/// kernel), for the memory preflight: the stock engine holds its read buffer for the
/// connection's life (the lean engine lends one per read); a thread adds its touched
/// stack and 16 KiB of kernel stack.
fn estimated_bytes_per_connection(mode: Mode, engine: Engine, settings: &Buffers) -> u64 {
    let held_buffer = match engine {
        Engine::Lean => 0,
        Engine::Tungstenite => settings.read_buffer_size.value as u64,
    };
    let engine = held_buffer + 8 * 1024;
    let thread = match mode {
        Mode::Tasks => 0,
        Mode::Threads => 32 * 1024 + 16 * 1024,
    };
    engine + thread
}

/// `NAME=COMMAND`.
fn parse_server(spec: &str) -> anyhow::Result<(&str, &str)> {
    let Some((name, command)) = spec.split_once('=') else {
        bail!("--server {spec:?}: expected NAME=COMMAND");
    };
    let (name, command) = (name.trim(), command.trim());
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        bail!("--server {spec:?}: NAME must be letters, digits, '-', '_' or '.'");
    }
    if is_builtin_name(name) {
        bail!("--server {name}=...: {name} is the name of one of wsscale's own runs; choose another");
    }
    if command.is_empty() {
        bail!("--server {name}=: the command is empty");
    }
    Ok((name, command))
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
}

/// The server of one run, while it runs.
enum Server {
    Wsscale(ServeChild),
    External(ExternalServer),
}

/// One poll of a server while a step settles.
struct Reading {
    /// Connections the server holds (wsscale: its gauge; external: the clients' count).
    connections: u64,
    rss_bytes: u64,
    /// Where the rest of the sample comes from.
    figures: Figures,
}

/// A wsscale server's scrape (sampled from, once the step has settled), or an external
/// server's process tree.
enum Figures {
    Scrape(String),
    Tree(TreeUsage),
}

impl Server {
    async fn start(plan: &Plan, run: &RunSpec) -> anyhow::Result<Server> {
        let log_path = plan.out.join(format!("serve-{}.log", run.name));
        match &run.target {
            Target::Wsscale { mode, engine, .. } => {
                let log =
                    std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
                let program = plan.program.clone();
                let mut args = vec!["--engine".to_owned(), engine.to_string()];
                args.extend(plan.serve_args.iter().cloned());
                let mode = mode.as_str();
                let child =
                    tokio::task::spawn_blocking(move || ServeChild::spawn(&program, mode, &args, Stdio::from(log)))
                        .await?
                        .with_context(|| format!("starting {} (log: {})", run.name, log_path.display()))?;
                Ok(Server::Wsscale(child))
            }
            Target::External { command } => {
                let timeout = Duration::from_secs_f64(plan.server_start_timeout_secs);
                Ok(Server::External(
                    ExternalServer::start(&run.name, command, &plan.path, timeout, &log_path).await?,
                ))
            }
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Server::Wsscale(child) => child.pid(),
            Server::External(server) => server.pid(),
        }
    }

    fn url(&self, plan: &Plan) -> String {
        match self {
            Server::Wsscale(child) => child.url(),
            Server::External(server) => server.url(&plan.path),
        }
    }

    async fn read(&self, clients_open: u64) -> anyhow::Result<Reading> {
        match self {
            Server::Wsscale(child) => {
                let text = http_get_body(child.metrics_addr, "/metrics")
                    .await
                    .context("scraping the server")?;
                let value = |name: &str| sample_value(&text, name, &[]).unwrap_or(-1.0);
                Ok(Reading {
                    connections: value(crate::metrics::CONNECTIONS_ACTIVE) as u64,
                    rss_bytes: value("process_resident_memory_bytes") as u64,
                    figures: Figures::Scrape(text),
                })
            }
            Server::External(server) => {
                let tree = TreeUsage::read(server.pid()).with_context(|| format!("server {} exited", server.name))?;
                Ok(Reading {
                    connections: clients_open,
                    rss_bytes: tree.rss_bytes,
                    figures: Figures::Tree(tree),
                })
            }
        }
    }

    /// Stops the server; a warning if it did not stop cleanly.
    async fn stop(self, name: &str) -> anyhow::Result<()> {
        let clean = match self {
            Server::Wsscale(mut child) => {
                child.signal(libc::SIGTERM)?;
                let status = tokio::task::spawn_blocking(move || child.wait_exit(SERVER_EXIT_TIMEOUT)).await??;
                status.is_some_and(|status| status.success())
            }
            Server::External(server) => tokio::task::spawn_blocking(move || server.stop()).await?,
        };
        if !clean {
            eprintln!("[{name}] warning: the server did not exit cleanly on SIGTERM");
        }
        Ok(())
    }
}

async fn measure(plan: &Plan, run: &RunSpec, stop: &CancellationToken) -> anyhow::Result<RunResult> {
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
    let settings = ClientSettings::new(url, target, Duration::from_secs(10), ping_interval, None, 0);
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
            "[{name}] {} connections: RSS {:.1} MiB ({:.0} B/conn), {} threads{}, kernel stack +{} KiB{}",
            sample.connections,
            sample.rss_bytes as f64 / 1048576.0,
            sample.rss_per_connection_bytes,
            sample.threads,
            sample
                .tasks_alive
                .map_or(String::new(), |tasks| format!(", {tasks} tasks")),
            sample.kernel_stack_delta_bytes / 1024,
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
        if let (Some(push), Server::Wsscale(child), Some((_, Engine::Lean))) = (plan.push, &server, run.builtin())
            && open_now > 0
        {
            let measured = measure_push(child, &stats, push).await?;
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

    eprintln!("[{name}] closing {open_now} connections and stopping the server");
    pool.close_all(Duration::from_secs(30)).await;
    server.stop(name).await?;
    Ok(RunResult {
        spec: run.clone(),
        samples,
    })
}

/// One step's push measurement: a quiet window of `count` seconds (the baseline: pings,
/// timers), then `count` broadcasts one second apart, reading the server's CPU time and
/// context switches around each window and the clients' delivery latencies.
async fn measure_push(server: &ServeChild, stats: &Stats, push: PushPlan) -> anyhow::Result<PushSample> {
    const SPACING: Duration = Duration::from_secs(1);
    let pid = server.pid();
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
        let (status, body) =
            crate::child::http_post(server.metrics_addr, &format!("/broadcast?size={}", push.size_bytes))
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
        Ok(Sample {
            connections: reading.connections,
            target: context.target,
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

    const FD: FdLimit = FdLimit {
        soft_before: 1024,
        soft: 5000,
        hard: 5000,
    };

    #[test]
    fn a_run_that_does_not_fit_is_refused_with_the_limit_and_the_largest_count() {
        let error = plan(args(&["--connections", "8000"]), FD, None, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("RLIMIT_NOFILE"), "{error}");
        assert!(error.contains("largest count that fits every run is 4744"), "{error}");
        assert!(error.contains("--fit-limits"), "{error}");
        let fitted = plan(args(&["--connections", "8000", "--fit-limits"]), FD, None, None).unwrap();
        assert_eq!(fitted.steps, vec![0, 800, 2000, 4000, 4744]);
        assert_eq!(
            fitted.serve_args[..2],
            ["--max-connections".to_owned(), "4760".to_owned()]
        );
    }

    #[test]
    fn stock_buffers_that_do_not_fit_in_memory_are_refused_with_the_count_that_fits() {
        // 256 MiB available: tungstenite's 128 KiB read buffer per connection fits far
        // fewer than the lean engine.
        let error = plan(args(&["--connections", "3000"]), FD, None, Some(256 << 20))
            .unwrap_err()
            .to_string();
        assert!(error.contains("tasks-tungstenite"), "{error}");
        assert!(!error.contains("tasks-lean:"), "the lean runs fit: {error}");
        let small_buffers = plan(
            args(&["--connections", "3000", "--read-buffer-size", "4KiB"]),
            FD,
            None,
            Some(256 << 20),
        );
        assert!(small_buffers.is_ok(), "{small_buffers:?}");
    }

    #[test]
    fn every_mode_runs_with_every_engine_and_external_servers_after() {
        let plan = plan(
            args(&[
                "--connections",
                "1000",
                "--server",
                "node-ws=node server.js {port}",
                "--read-buffer-size",
                "4KiB",
            ]),
            FD,
            None,
            None,
        )
        .unwrap();
        let names: Vec<&str> = plan.runs.iter().map(|run| run.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tasks-lean",
                "threads-lean",
                "tasks-tungstenite",
                "threads-tungstenite",
                "node-ws"
            ]
        );
        let Target::Wsscale { settings, .. } = &plan.runs[2].target else {
            panic!("a wsscale run")
        };
        assert_eq!(
            settings.read_buffer_size.value, 4096,
            "the flag applies to every engine"
        );
        assert!(settings.read_buffer_size.is_flag());
        assert_eq!(settings.max_message_size.value, 64 << 20, "unset: tungstenite's own");
    }

    #[test]
    fn server_names_are_checked() {
        for (spec, complaint) in [
            ("no-equals-sign", "NAME=COMMAND"),
            ("tasks-lean=node x.js", "wsscale's own runs"),
            ("bad name=cmd", "letters, digits"),
            ("empty=", "empty"),
        ] {
            let error = plan(args(&["-n", "1000", "--server", spec]), FD, None, None)
                .unwrap_err()
                .to_string();
            assert!(error.contains(complaint), "{spec}: {error}");
        }
        let error = plan(
            args(&["-n", "1000", "--server", "a=x", "--server", "a=y"]),
            FD,
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("already"), "{error}");
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
