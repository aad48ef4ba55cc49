//! Planning a comparison: the runs (every mode with every engine, then every
//! `--server`), each wsscale run's settings as its server will resolve them, the steps,
//! and the preflight that refuses (or with `--fit-limits`, shrinks) a run the machine's
//! limits cannot hold. Nothing here starts a process.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use wsscale_host::fd::FdLimit;
use wsscale_host::proc::KernelLimits;

use crate::config::{BufferArgs, Buffers, CompareArgs, DeflateMode, Engine, Mode, Scheme, TlsArgs};
use crate::limits;

/// Descriptors this process keeps for itself beyond the client sockets.
const CLIENT_FD_RESERVE: usize = 128;
/// Fraction of the host's available memory one run may plan to use.
const MEMORY_BUDGET: f64 = 0.8;
/// What the client side holds per connection (the generator's own measured ~2 KB, with
/// room), in the memory preflight.
const CLIENT_BYTES_PER_CONNECTION: u64 = 4 * 1024;
/// Connections above the last step every wsscale server accepts (its --max-connections).
const MAX_CONNECTIONS_MARGIN: usize = 16;

/// One of wsscale's own runs: a mode, an engine, a scheme, and (lean engine)
/// permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Builtin {
    pub mode: Mode,
    pub engine: Engine,
    pub scheme: Scheme,
    pub deflate: RunDeflate,
}

/// A run's `--deflate`: off, stateless, or context with its window bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunDeflate {
    Off,
    Stateless,
    Context { window_bits: u8 },
}

impl RunDeflate {
    /// The part of a run's name: none for off, `-stateless`, `-context15`, ...
    fn suffix(self) -> String {
        match self {
            RunDeflate::Off => String::new(),
            RunDeflate::Stateless => "-stateless".to_owned(),
            RunDeflate::Context { window_bits } => format!("-context{window_bits}"),
        }
    }

    /// Every setting --deflate and --deflate-window-bits name, in their order.
    fn listed(modes: &[DeflateMode], window_bits: &[u8]) -> Vec<RunDeflate> {
        let mut out = Vec::new();
        for mode in modes {
            let settings = match mode {
                DeflateMode::Off => vec![RunDeflate::Off],
                DeflateMode::Stateless => vec![RunDeflate::Stateless],
                DeflateMode::Context => window_bits
                    .iter()
                    .map(|&window_bits| RunDeflate::Context { window_bits })
                    .collect(),
            };
            for setting in settings {
                if !out.contains(&setting) {
                    out.push(setting);
                }
            }
        }
        out
    }

    /// The `wsscale serve` flags of this setting.
    fn args(self) -> Vec<String> {
        match self {
            RunDeflate::Off => Vec::new(),
            RunDeflate::Stateless => vec!["--deflate".to_owned(), "stateless".to_owned()],
            RunDeflate::Context { window_bits } => vec![
                "--deflate".to_owned(),
                "context".to_owned(),
                "--deflate-window-bits".to_owned(),
                window_bits.to_string(),
            ],
        }
    }
}

impl Builtin {
    /// A run without permessage-deflate.
    pub fn new(mode: Mode, engine: Engine, scheme: Scheme) -> Self {
        Builtin {
            mode,
            engine,
            scheme,
            deflate: RunDeflate::Off,
        }
    }

    /// `tasks-lean`, `threads-tungstenite`, `tasks-lean-wss`, `tasks-lean-stateless`,
    /// `tasks-lean-context15-wss`, ...
    pub fn name(self) -> String {
        let scheme = match self.scheme {
            Scheme::Ws => "",
            Scheme::Wss => "-wss",
        };
        format!("{}-{}{}{scheme}", self.mode, self.engine, self.deflate.suffix())
    }

    /// The same run in another scheme.
    pub fn in_scheme(self, scheme: Scheme) -> Builtin {
        Builtin { scheme, ..self }
    }

    /// The same run with another deflate setting.
    pub fn with_deflate(self, deflate: RunDeflate) -> Builtin {
        Builtin { deflate, ..self }
    }
}

/// What one run measures.
#[derive(Debug, Clone)]
pub enum Target {
    /// `wsscale serve` in a mode, with an engine, in a scheme, and the buffer settings it
    /// will resolve.
    Wsscale { builtin: Builtin, settings: Buffers },
    /// Any server, started from a command line (`--server NAME=COMMAND`).
    External { command: String },
    /// `--push`'s floor: floor-sender, a raw send() of the push frame to every socket from
    /// `threads` threads ([`super::floor`]). Measured for push only: no memory table,
    /// ratio or sizing counts it.
    Floor { program: PathBuf, threads: usize },
}

/// The floor run's name.
pub const FLOOR_RUN: &str = "floor";

/// One run of the comparison: its name (the table's column, `serve-NAME.log`), the
/// server it starts, its scheme, and (wsscale's own) the mode, engine and settings.
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    pub name: String,
    /// The command line: `wsscale serve ...`, or the `--server` command (with `{port}`).
    pub server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// ws, or wss (TLS).
    pub scheme: Scheme,
    /// Each buffer and size setting in force, and whether it is the engine's default or
    /// a flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<Buffers>,
    #[serde(skip)]
    pub target: Target,
}

impl RunSpec {
    fn wsscale(builtin: Builtin, settings: Buffers) -> Self {
        RunSpec {
            name: builtin.name(),
            // Written once the server flags are final (see `plan`).
            server: String::new(),
            mode: Some(builtin.mode),
            engine: Some(builtin.engine),
            scheme: builtin.scheme,
            settings: Some(settings),
            target: Target::Wsscale { builtin, settings },
        }
    }

    fn external(name: &str, command: &str) -> Self {
        RunSpec {
            name: name.to_owned(),
            server: command.to_owned(),
            mode: None,
            engine: None,
            scheme: external_scheme(command),
            settings: None,
            target: Target::External {
                command: command.to_owned(),
            },
        }
    }

    /// The mode, engine and scheme of a wsscale run.
    pub fn builtin(&self) -> Option<Builtin> {
        match self.target {
            Target::Wsscale { builtin, .. } => Some(builtin),
            Target::External { .. } | Target::Floor { .. } => None,
        }
    }

    /// Whether this is `--push`'s floor run.
    pub fn is_floor(&self) -> bool {
        matches!(self.target, Target::Floor { .. })
    }

    fn floor(program: PathBuf, threads: usize, push: PushPlan) -> Self {
        RunSpec {
            name: FLOOR_RUN.to_owned(),
            server: format!(
                "{} --threads {threads} --push-size {}",
                program.display(),
                push.size_bytes
            ),
            mode: None,
            engine: None,
            scheme: Scheme::Ws,
            settings: None,
            target: Target::Floor { program, threads },
        }
    }
}

/// The floor program for `--push`: `--floor-sender` (or WSSCALE_FLOOR_SENDER), else
/// floor-sender beside `exe`, else on `path` (PATH); or why there is none.
pub fn find_floor_sender(
    flag: Option<&std::path::Path>,
    exe: &std::path::Path,
    path: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, String> {
    const BUILD: &str = "build it with `cargo build --release -p wsscale-floor` (target/release/floor-sender)";
    if let Some(flag) = flag {
        return if flag.is_file() {
            Ok(flag.to_owned())
        } else {
            Err(format!(
                "--floor-sender (WSSCALE_FLOOR_SENDER) {} is not a file; {BUILD}",
                flag.display()
            ))
        };
    }
    let beside = exe.with_file_name("floor-sender");
    if beside.is_file() {
        return Ok(beside);
    }
    if let Some(found) = path
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("floor-sender"))
        .find(|candidate| candidate.is_file())
    {
        return Ok(found);
    }
    Err(format!(
        "no floor-sender beside {} nor on PATH (or --floor-sender); {BUILD}",
        exe.display()
    ))
}

/// An external server's scheme: wss when its command takes compare's certificate.
fn external_scheme(command: &str) -> Scheme {
    if command.contains("{cert}") || command.contains("{key}") {
        Scheme::Wss
    } else {
        Scheme::Ws
    }
}

/// Whether `name` is one of wsscale's own runs (in any mode with any engine and scheme).
pub fn is_builtin_name(name: &str) -> bool {
    let deflate = RunDeflate::listed(&DeflateMode::ALL, &crate::deflate::WINDOW_BITS.collect::<Vec<_>>());
    Mode::ALL.iter().any(|&mode| {
        Engine::ALL.iter().any(|&engine| {
            Scheme::ALL.iter().any(|&scheme| {
                deflate
                    .iter()
                    .any(|&setting| Builtin::new(mode, engine, scheme).with_deflate(setting).name() == name)
            })
        })
    })
}

/// The certificate and key compare makes for wss runs (and `{cert}`, `{key}`).
#[derive(Debug, Clone, Serialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `--push`: broadcasts per step and their size.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PushPlan {
    pub count: usize,
    pub size_bytes: usize,
}

/// What every wsscale server of the comparison runs with besides its mode and engine:
/// the same for every run, so the runs differ only in what they compare.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFlags {
    /// Each server's `--max-connections`: the last step and a margin.
    pub max_connections: usize,
    /// The buffer and size flags that were set (each run's resolved `settings` say what
    /// they came to).
    #[serde(skip)]
    pub buffers: BufferArgs,
    /// `--push`: POST /broadcast allowed, pushes of this size.
    pub broadcast_size: Option<usize>,
    /// wss runs: compare's certificate and key.
    pub tls: Option<TlsFiles>,
}

impl ServerFlags {
    /// The `wsscale serve` arguments of a run (its listeners, on port 0, besides): the one
    /// place a plan becomes a server's command line.
    pub fn args(&self, builtin: Builtin) -> Vec<String> {
        let mut args = vec![
            "--mode".to_owned(),
            builtin.mode.to_string(),
            "--engine".to_owned(),
            builtin.engine.to_string(),
            "--max-connections".to_owned(),
            self.max_connections.to_string(),
        ];
        if let Some(size) = self.broadcast_size {
            args.extend([
                "--allow-broadcast".to_owned(),
                "--push-size".to_owned(),
                size.to_string(),
            ]);
        }
        args.extend(builtin.deflate.args());
        args.extend(self.buffers.to_args());
        if let (Scheme::Wss, Some(tls)) = (builtin.scheme, &self.tls) {
            let tls = TlsArgs {
                tls_cert: Some(tls.cert.clone()),
                tls_key: Some(tls.key.clone()),
                tls_self_signed: false,
            };
            args.extend(tls.to_args());
        }
        args
    }

    /// The command line a report shows for a run.
    pub fn command_line(&self, builtin: Builtin) -> String {
        format!("wsscale serve {}", self.args(builtin).join(" "))
    }
}

/// What will be run: validated options, steps that fit the limits, and the server flags
/// every wsscale run shares.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub steps: Vec<usize>,
    pub modes: Vec<Mode>,
    pub engines: Vec<Engine>,
    pub schemes: Vec<Scheme>,
    /// The deflate settings of the lean-engine runs.
    pub deflate: Vec<RunDeflate>,
    /// What the generator offers on every upgrade (`permessage-deflate; ...`), if anything.
    #[serde(serialize_with = "offer_text")]
    pub offer_deflate: Option<wsscale_loadgen::offer::Offer>,
    pub runs: Vec<RunSpec>,
    pub out: PathBuf,
    pub rate: f64,
    pub concurrency: usize,
    pub settle_timeout_secs: f64,
    pub client_ping_interval_secs: f64,
    /// What every wsscale server gets besides its mode and engine.
    pub server_flags: ServerFlags,
    /// The path external servers upgrade on.
    pub path: String,
    pub server_start_timeout_secs: f64,
    /// `--push`: measured at every step of the lean-engine runs.
    pub push: Option<PushPlan>,
    /// `--push` without the floor run: why (no floor-sender found, and how to build it).
    pub push_floor_missing: Option<String>,
    /// Limits found by the preflight, one line each.
    pub limits: Vec<String>,
    #[serde(skip)]
    pub program: PathBuf,
}

/// The offer as its header value.
fn offer_text<S: serde::Serializer>(
    offer: &Option<wsscale_loadgen::offer::Offer>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&offer.as_ref().map_or(String::new(), ToString::to_string))
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
    if args.schemes.is_empty() {
        bail!("--schemes needs at least one of ws, wss");
    }
    if args.deflate.is_empty() {
        bail!("--deflate needs at least one of off, stateless, context");
    }
    if args.deflate.contains(&DeflateMode::Context) && args.deflate_window_bits.is_empty() {
        bail!("--deflate context needs --deflate-window-bits (9 to 15)");
    }
    let deflate = RunDeflate::listed(&args.deflate, &args.deflate_window_bits);
    // Every run gets the same client: one that offers when any run may accept.
    let offer_deflate = match &args.offer_deflate {
        Some(offer) => Some(
            offer
                .parse()
                .map_err(|why| anyhow::anyhow!("--offer-deflate {offer:?}: {why}"))?,
        ),
        None if deflate.iter().any(|&setting| setting != RunDeflate::Off) => Some(
            wsscale_loadgen::offer::BROWSER_OFFER
                .parse()
                .expect("the browser's offer parses"),
        ),
        None => None,
    };
    let mut runs = Vec::new();
    for &scheme in &args.schemes {
        for &engine in &args.engines {
            for &mode in &args.modes {
                // The stock engine has no permessage-deflate: measured once, declining.
                let settings_of_engine: &[RunDeflate] = match engine {
                    Engine::Lean => &deflate,
                    Engine::Tungstenite => &[RunDeflate::Off],
                };
                for &setting in settings_of_engine {
                    let builtin = Builtin::new(mode, engine, scheme).with_deflate(setting);
                    // The server's own resolution of the same flags: what it will run with.
                    let settings = Buffers::resolve(engine, &args.buffers)
                        .with_context(|| format!("{}: invalid buffer flags", builtin.name()))?;
                    runs.push(RunSpec::wsscale(builtin, settings));
                }
            }
        }
    }
    if let Some(push) = push {
        for run in &runs {
            let Target::Wsscale { settings, .. } = &run.target else {
                continue;
            };
            if push.size_bytes > settings.max_message_size.value {
                bail!(
                    "--push-size {} is larger than {}'s --max-message-size ({})",
                    push.size_bytes,
                    run.name,
                    settings.max_message_size.value
                );
            }
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
    let program = std::env::current_exe().context("locating this executable to start servers")?;
    // `--push`'s floor, last, through the same steps and clients.
    let mut push_floor_missing = None;
    if let Some(push) = push {
        match find_floor_sender(
            args.floor_sender.as_deref(),
            &program,
            std::env::var_os("PATH").as_deref(),
        ) {
            Ok(sender) => {
                if runs.iter().any(|run| run.name == FLOOR_RUN) {
                    bail!(
                        "--server {FLOOR_RUN}=...: with --push, {FLOOR_RUN} is the name of the floor run; choose another"
                    );
                }
                let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
                runs.push(RunSpec::floor(sender, threads, push));
            }
            Err(why) => push_floor_missing = Some(why),
        }
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
            let Target::Wsscale { builtin, settings } = &run.target else {
                continue;
            };
            let per_connection = estimated_bytes_per_connection(*builtin, settings) + CLIENT_BYTES_PER_CONNECTION;
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

    let needs_tls = runs.iter().any(|run| run.scheme == Scheme::Wss);
    let server_flags = ServerFlags {
        max_connections: fits + MAX_CONNECTIONS_MARGIN,
        buffers: args.buffers,
        broadcast_size: push.map(|push| push.size_bytes),
        tls: needs_tls.then(|| TlsFiles {
            cert: args.out.join("tls-cert.pem"),
            key: args.out.join("tls-key.pem"),
        }),
    };
    for run in &mut runs {
        if let Target::Wsscale { builtin, .. } = run.target {
            run.server = server_flags.command_line(builtin);
        }
    }
    Ok(Plan {
        steps,
        modes: args.modes,
        engines: args.engines,
        schemes: args.schemes,
        deflate,
        offer_deflate,
        runs,
        out: args.out,
        rate: args.rate,
        concurrency: args.concurrency,
        settle_timeout_secs: Duration::from(args.settle_timeout).as_secs_f64(),
        client_ping_interval_secs: Duration::from(args.ping_interval).as_secs_f64(),
        server_flags,
        path: args.path,
        server_start_timeout_secs: Duration::from(args.server_start_timeout).as_secs_f64(),
        push,
        push_floor_missing,
        limits,
        program,
    })
}

/// A rough upper estimate of what one idle connection of a wsscale run costs (user +
/// kernel), for the memory preflight: the stock engine holds its read buffer for the
/// connection's life (the lean engine lends one per read); TLS adds its session state
/// (the stock engine's buffered rustls connection also its 4 KiB incoming buffer); a
/// thread adds its touched stack and 16 KiB of kernel stack.
fn estimated_bytes_per_connection(builtin: Builtin, settings: &Buffers) -> u64 {
    let held_buffer = match builtin.engine {
        Engine::Lean => 0,
        Engine::Tungstenite => settings.read_buffer_size.value as u64,
    };
    let tls = match (builtin.scheme, builtin.engine) {
        (Scheme::Ws, _) => 0,
        (Scheme::Wss, Engine::Lean) => 4 * 1024,
        (Scheme::Wss, Engine::Tungstenite) => 8 * 1024,
    };
    let thread = match builtin.mode {
        Mode::Tasks => 0,
        Mode::Threads => 32 * 1024 + 16 * 1024,
    };
    held_buffer + 8 * 1024 + tls + thread
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
        assert_eq!(fitted.server_flags.max_connections, 4760);
        assert!(
            fitted.runs[0].server.contains("--max-connections 4760"),
            "{}",
            fitted.runs[0].server
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
    fn deflate_settings_make_named_lean_runs_and_a_browser_like_client_for_all() {
        let planned = plan(
            args(&[
                "-n",
                "1000",
                "--modes",
                "tasks",
                "--deflate",
                "off,stateless,context",
                "--deflate-window-bits",
                "15,10",
            ]),
            FD,
            None,
            None,
        )
        .unwrap();
        let names: Vec<&str> = planned.runs.iter().map(|run| run.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tasks-lean",
                "tasks-lean-stateless",
                "tasks-lean-context15",
                "tasks-lean-context10",
                "tasks-tungstenite"
            ],
            "the stock engine, which has no permessage-deflate, runs once"
        );
        assert!(
            planned.runs[2]
                .server
                .contains("--deflate context --deflate-window-bits 15")
        );
        assert!(planned.runs[1].server.contains("--deflate stateless"));
        assert!(!planned.runs[0].server.contains("--deflate"));
        assert_eq!(
            planned.offer_deflate.map(|offer| offer.to_string()).as_deref(),
            Some("permessage-deflate; client_max_window_bits"),
            "every run's client offers as Chromium does"
        );
        for name in names {
            assert!(is_builtin_name(name), "{name} is reserved for wsscale's own runs");
        }

        let plain = plan(args(&["-n", "1000"]), FD, None, None).unwrap();
        assert!(plain.offer_deflate.is_none(), "no deflate run, no offer");
        let offered = plan(args(&["-n", "1000", "--offer-deflate"]), FD, None, None).unwrap();
        assert!(
            offered.offer_deflate.is_some(),
            "--offer-deflate alone, for --server peers"
        );
        for (flags, complaint) in [
            (
                &["--offer-deflate=permessage-deflate; client_max_window_bits=8"][..],
                "--offer-deflate",
            ),
            (&["--deflate", "context", "--deflate-window-bits", "8"][..], "8"),
        ] {
            let mut all = vec!["-n", "1000"];
            all.extend_from_slice(flags);
            let error = match Cli::try_parse_from(["wsscale", "compare"].into_iter().chain(all.iter().copied())) {
                Err(error) => error.to_string(),
                Ok(_) => plan(args(&all), FD, None, None).unwrap_err().to_string(),
            };
            assert!(error.contains(complaint), "{flags:?}: {error}");
        }
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
    fn the_floor_sender_is_the_flag_or_beside_this_executable_or_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, path_dir) = (dir.path().join("bin"), dir.path().join("path"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&path_dir).unwrap();
        let exe = bin.join("wsscale");
        let path = std::env::join_paths([&path_dir]).unwrap();
        let find = |flag: Option<&std::path::Path>| find_floor_sender(flag, &exe, Some(&path));

        let why = find(None).unwrap_err();
        assert!(why.contains("cargo build --release -p wsscale-floor"), "{why}");
        std::fs::write(path_dir.join("floor-sender"), "").unwrap();
        assert_eq!(find(None).unwrap(), path_dir.join("floor-sender"));
        std::fs::write(bin.join("floor-sender"), "").unwrap();
        assert_eq!(find(None).unwrap(), bin.join("floor-sender"), "beside first");
        let missing = dir.path().join("missing");
        let why = find(Some(&missing)).unwrap_err();
        assert!(why.contains("is not a file") && why.contains("wsscale-floor"), "{why}");
        assert_eq!(
            find(Some(&path_dir.join("floor-sender"))).unwrap(),
            path_dir.join("floor-sender")
        );
    }

    #[test]
    fn without_the_floor_sender_push_plans_no_floor_run_and_says_why() {
        let planned = plan(
            args(&["-n", "100", "--push", "--floor-sender", "/nonexistent/floor-sender"]),
            FD,
            None,
            None,
        )
        .unwrap();
        assert!(planned.runs.iter().all(|run| !run.is_floor()));
        assert!(
            planned
                .push_floor_missing
                .as_deref()
                .is_some_and(|why| why.contains("/nonexistent")),
            "{:?}",
            planned.push_floor_missing
        );
        let no_push = plan(args(&["-n", "100"]), FD, None, None).unwrap();
        assert!(no_push.push_floor_missing.is_none(), "no --push, no floor to miss");
    }

    #[test]
    fn with_the_floor_sender_push_plans_the_floor_run_last() {
        let dir = tempfile::tempdir().unwrap();
        let sender = dir.path().join("floor-sender");
        std::fs::write(&sender, "").unwrap();
        let sender = sender.to_str().unwrap();
        let planned = plan(
            args(&["-n", "100", "--modes", "tasks", "--push", "--floor-sender", sender]),
            FD,
            None,
            None,
        )
        .unwrap();
        let last = planned.runs.last().unwrap();
        assert!(last.is_floor() && last.name == FLOOR_RUN, "{:?}", last.name);
        assert!(last.server.contains("--push-size 32"), "{}", last.server);
        assert!(planned.push_floor_missing.is_none());
        let error = plan(
            args(&[
                "-n",
                "100",
                "--push",
                "--floor-sender",
                sender,
                "--server",
                "floor=x {port}",
            ]),
            FD,
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("name of the floor run"), "{error}");
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
