//! The comparison's outputs: summary.json (every sample, the fits, the sizing, the
//! ratios, the configuration, the machine) and report.md (the tables and the conclusions
//! in numbers), from one [`Report`]; index.html (`super::html`) shows the same tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use wsscale_host::fd::FdLimit;
use wsscale_host::proc::{self, KernelLimits};

use super::charts::Chart;
use super::plan::{Builtin, Plan, RunDeflate};
use super::sizing::{self, NodeLimit, NodeNow, SIZES};
use super::summary::{KERNEL_SOCKETS_DERIVATION, Ratio, Ratios, RunSummary, Summaries, keyed};
use super::table::{Align, Table};
use super::tls_state::TlsState;
use crate::config::{Engine, Mode, Scheme};

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_total_bytes: u64,
    pub kernel: String,
    pub fd_soft: u64,
    pub fd_hard: u64,
    pub pid_max: u64,
    pub max_map_count: u64,
    pub threads_max: u64,
    /// fs.nr_open, the ceiling of RLIMIT_NOFILE (0 if unread).
    pub nr_open: u64,
    /// net.ipv4.ip_local_port_range (null if unread).
    pub ip_local_port_range: Option<(u64, u64)>,
}

impl Machine {
    pub fn read(fd: FdLimit, kernel: Option<KernelLimits>) -> Machine {
        let sysctl = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let numbers = |text: String| -> Vec<u64> { text.split_whitespace().filter_map(|n| n.parse().ok()).collect() };
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_total_bytes: proc::memory_total_bytes().unwrap_or(0),
            kernel: sysctl("/proc/sys/kernel/osrelease").trim().to_owned(),
            fd_soft: fd.soft,
            fd_hard: fd.hard,
            pid_max: kernel.map_or(0, |k| k.pid_max),
            max_map_count: kernel.map_or(0, |k| k.max_map_count),
            threads_max: kernel.map_or(0, |k| k.threads_max),
            nr_open: numbers(sysctl("/proc/sys/fs/nr_open")).first().copied().unwrap_or(0),
            ip_local_port_range: match numbers(sysctl("/proc/sys/net/ipv4/ip_local_port_range"))[..] {
                [low, high] => Some((low, high)),
                _ => None,
            },
        }
    }

    /// The limits sizing names, as this machine has them.
    pub fn node_now(&self) -> NodeNow {
        let known = |value: u64| (value > 0).then_some(value);
        NodeNow {
            fd_hard: known(self.fd_hard),
            nr_open: known(self.nr_open),
            max_map_count: known(self.max_map_count),
            pid_max: known(self.pid_max),
            threads_max: known(self.threads_max),
            port_range: self.ip_local_port_range,
        }
    }

    /// One line: cores, memory, kernel and limits.
    pub fn describe(&self) -> String {
        format!(
            "{} cores, {} memory, Linux {}; RLIMIT_NOFILE {} (hard {}), pid_max {}, vm.max_map_count {}, \
             threads-max {}, fs.nr_open {}, ip_local_port_range {}.",
            self.cores,
            bytes(self.memory_total_bytes as f64),
            self.kernel,
            self.fd_soft,
            self.fd_hard,
            self.pid_max,
            self.max_map_count,
            self.threads_max,
            self.nr_open,
            self.ip_local_port_range
                .map_or("-".to_owned(), |(low, high)| format!("{low}-{high}"))
        )
    }
}

/// Everything the report is written from.
pub struct Report<'a> {
    pub plan: &'a Plan,
    pub machine: &'a Machine,
    pub summaries: &'a Summaries,
    pub tls_session: Option<TlsState>,
    pub charts: &'a [Chart],
    /// The command line compare ran with.
    pub command: &'a [String],
    pub node_limits: Vec<NodeLimit>,
}

impl<'a> Report<'a> {
    pub fn new(
        plan: &'a Plan,
        machine: &'a Machine,
        summaries: &'a Summaries,
        tls_session: Option<TlsState>,
        charts: &'a [Chart],
        command: &'a [String],
    ) -> Report<'a> {
        Report {
            plan,
            machine,
            summaries,
            tls_session,
            charts,
            command,
            node_limits: sizing::node_limits(machine.node_now()),
        }
    }

    /// The command line, as one line a shell reads back (arguments with spaces or quotes
    /// single-quoted).
    pub fn command_line(&self) -> String {
        self.command
            .iter()
            .map(|arg| {
                if !arg.is_empty()
                    && arg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c))
                {
                    arg.clone()
                } else {
                    format!("'{}'", arg.replace('\'', "'\\''"))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// summary.json.
#[derive(Debug, Clone, Serialize)]
pub struct Summary<'a> {
    pub wsscale_version: &'static str,
    pub generated_unix_secs: u64,
    /// compare's own command line.
    pub command: &'a [String],
    pub config: &'a Plan,
    pub machine: &'a Machine,
    /// The lean engine's runs by mode, as before engines existed (readers of the first
    /// format keep working).
    pub modes: BTreeMap<Mode, &'a RunSummary>,
    /// Lean threads ÷ lean tasks, as before engines existed.
    pub ratios_threads_over_tasks: Option<Ratio>,
    /// Every run, in the order measured.
    pub runs: &'a [RunSummary],
    pub ratios: &'a Ratios,
    /// How each run's `kernel_socket_bytes_per_connection` is derived.
    pub kernel_socket_derivation: &'static str,
    /// The connection counts each run's `sizing` is for, and the limits a node must raise
    /// to hold them.
    pub sizing: SizingSummary<'a>,
    /// With wss runs: what a bare TLS session holds after its handshake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_session: Option<TlsState>,
    /// `--push`'s floor run (not in `runs`: no memory figure compares it), its samples'
    /// push figures beside the runs' (`ratios.push_over_floor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_floor: Option<&'a RunSummary>,
    /// `--push` without the floor: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_floor_missing: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SizingSummary<'a> {
    pub connections: [u64; 2],
    pub node_limits: &'a [NodeLimit],
}

/// Writes summary.json and report.md into the plan's folder; returns the folder.
pub fn write(report: &Report<'_>) -> anyhow::Result<PathBuf> {
    let out = &report.plan.out;
    let summaries = report.summaries;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let modes = Mode::ALL
        .into_iter()
        .filter_map(|mode| {
            let builtin = Builtin::new(mode, Engine::Lean, Scheme::Ws);
            Some((mode, summaries.builtin(builtin)?))
        })
        .collect();
    let summary = Summary {
        wsscale_version: env!("CARGO_PKG_VERSION"),
        generated_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs()),
        command: report.command,
        config: report.plan,
        machine: report.machine,
        modes,
        ratios_threads_over_tasks: summaries.ratios.threads_over_tasks.get("lean").copied(),
        runs: &summaries.runs,
        ratios: &summaries.ratios,
        kernel_socket_derivation: KERNEL_SOCKETS_DERIVATION,
        sizing: SizingSummary {
            connections: SIZES,
            node_limits: &report.node_limits,
        },
        tls_session: report.tls_session,
        push_floor: summaries.push_floor.as_ref(),
        push_floor_missing: summaries.push_floor_missing.as_deref(),
    };
    write_file(
        &out.join("summary.json"),
        &(serde_json::to_string_pretty(&summary)? + "\n"),
    )?;
    write_file(&out.join("report.md"), &markdown(report))?;
    Ok(out.clone())
}

fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Every run's figures per idle connection, a column per run.
pub fn per_connection_table(summaries: &Summaries) -> Table {
    let runs = &summaries.runs;
    let mut table = Table::new(
        std::iter::once("per idle connection".to_owned()).chain(runs.iter().map(|run| run.spec.name.clone())),
    );
    let mut row = |name: &str, value: &dyn Fn(&RunSummary) -> String| {
        table.push(std::iter::once(name.to_owned()).chain(runs.iter().map(value)));
    };
    row("user memory (RSS slope)", &|s| bytes(s.slope_bytes_per_connection));
    row("heap (slope)", &|s| {
        s.heap_slope_bytes_per_connection.map_or("-".to_owned(), bytes)
    });
    row("kernel stack (KernelStack slope)", &|s| {
        bytes(s.kernel_stack_slope_bytes_per_connection)
    });
    row("kernel socket memory (slab per socket)", &|s| {
        s.kernel_socket_bytes_per_connection.map_or("-".to_owned(), bytes)
    });
    row("user + kernel", &|s| bytes(s.user_plus_kernel_bytes_per_connection));
    row("R² of the RSS fit", &|s| format!("{:.4}", s.r2));
    row("read buffer in force", &|s| {
        s.spec.settings.map_or("-".to_owned(), |settings| {
            let read = settings.read_buffer_size;
            format!(
                "{}{}",
                bytes(read.value as f64),
                if read.is_flag() { " (flag)" } else { "" }
            )
        })
    });
    row("connections at the last step", &|s| {
        s.samples.last().map_or(0, |x| x.connections).to_string()
    });
    row("OS threads at the last step", &|s| s.threads_at_max.to_string());
    row("Tokio tasks alive at the last step", &|s| {
        s.tasks_alive_at_max.map_or("-".to_owned(), |tasks| tasks.to_string())
    });
    row("opening rate, last step", &|s| {
        s.samples
            .last()
            .and_then(|x| x.open_rate_per_sec)
            .map_or("-".to_owned(), |rate| format!("{rate:.0}/s"))
    });
    row("ping RTT p50 / p99, last step", &|s| {
        s.samples
            .last()
            .map_or("-".to_owned(), |x| match (x.ping_rtt_p50_ms, x.ping_rtt_p99_ms) {
                (Some(p50), Some(p99)) => format!("{p50:.2} / {p99:.2} ms"),
                _ => "-".to_owned(),
            })
    });
    table
}

/// The ratios, named for a reader; None without a pair of runs to compare.
pub fn ratio_table(summaries: &Summaries) -> Option<Table> {
    let mut table = Table::new(["ratio", "user memory", "user + kernel"]);
    for (name, ratio) in ratio_rows(&summaries.ratios) {
        table.push([
            name,
            format!("{:.1}×", ratio.user_memory),
            format!("{:.1}×", ratio.user_plus_kernel_memory),
        ]);
    }
    (!table.is_empty()).then_some(table)
}

/// The side-by-side tables printed at the end and put at the top of report.md: every
/// run's figures per idle connection, then the ratios.
pub fn comparison_table(summaries: &Summaries) -> String {
    let mut out = per_connection_table(summaries).markdown();
    if let Some(ratios) = ratio_table(summaries) {
        out.push('\n');
        out.push_str(&ratios.markdown());
    }
    out
}

/// How the kernel socket row was derived, with each run's raw slopes.
pub fn kernel_socket_table(summaries: &Summaries) -> Table {
    let mut table = Table::new([
        "kernel socket memory",
        "host Slab per connection",
        "R²",
        "SUnreclaim per connection",
        "TCP mem per connection",
        "TCP sockets per connection",
        "slab per socket (the server's share)",
        "SUnreclaim per socket",
    ]);
    for run in &summaries.runs {
        let Some(k) = run.kernel_sockets else {
            table.push(
                [run.spec.name.clone()]
                    .into_iter()
                    .chain(std::iter::repeat_n("-".to_owned(), 7)),
            );
            continue;
        };
        let optional = |value: Option<f64>| value.map_or("-".to_owned(), bytes);
        table.push([
            run.spec.name.clone(),
            bytes(k.slab_slope_bytes_per_connection),
            format!("{:.3}", k.slab_r2),
            bytes(k.slab_unreclaimable_slope_bytes_per_connection),
            bytes(k.tcp_memory_slope_bytes_per_connection),
            format!("{:.2}", k.tcp_sockets_per_connection),
            optional(k.slab_per_socket_bytes),
            optional(k.slab_unreclaimable_per_socket_bytes),
        ]);
    }
    table
}

/// Runs whose host gained other than two TCP sockets per connection (compare's clients
/// are on this host: two sockets each): something else opened or closed sockets during
/// the run, and its kernel figures are not this server's alone. One sentence each.
pub fn kernel_warnings(summaries: &Summaries) -> Vec<String> {
    summaries
        .runs
        .iter()
        .filter_map(|run| {
            let sockets = run.kernel_sockets?.tcp_sockets_per_connection;
            ((sockets - 2.0).abs() > 0.2).then(|| {
                format!(
                    "{}: the host's TCP sockets grew by {sockets:.2} per connection, not 2: other work on the host \
                     opened or closed sockets during the run, so its kernel figures are not this server's alone \
                     (run compare on a quiet host).",
                    run.spec.name
                )
            })
        })
        .collect()
}

/// Each run's sizing: its cost per idle connection, connections per GiB, and the memory
/// for each of [`SIZES`] connections.
pub fn sizing_table(summaries: &Summaries) -> Table {
    let mut head = vec![
        "sizing".to_owned(),
        "user + kernel per connection".to_owned(),
        "connections per GiB".to_owned(),
    ];
    head.extend(SIZES.iter().map(|n| format!("{} connections", count(*n))));
    head.push("process at 0 connections".to_owned());
    let mut table = Table::new(head);
    for run in &summaries.runs {
        let sizing = &run.sizing;
        let mut row = vec![
            run.spec.name.clone(),
            bytes(sizing.bytes_per_connection),
            count(sizing.connections_per_gib),
        ];
        row.extend(sizing.memory_for.iter().map(|memory| bytes(memory.bytes)));
        row.push(bytes(sizing.process_baseline_bytes as f64));
        table.push(row);
    }
    table
}

/// The limits a node must raise for each of [`SIZES`] connections.
pub fn limits_table(limits: &[NodeLimit]) -> Table {
    let mut head = vec!["limit".to_owned(), "whose".to_owned()];
    head.extend(SIZES.iter().map(|n| format!("for {}", count(*n))));
    head.extend(["this machine".to_owned(), "how".to_owned()]);
    let mut table = Table::new(head).with_align(1, Align::Left);
    let how = table.head.len() - 1;
    table = table.with_align(how, Align::Left);
    for limit in limits {
        let mut row = vec![limit.name.to_owned(), limit.applies_to.to_owned()];
        row.extend(limit.needed.iter().map(|needed| count(needed.value)));
        row.push(limit.this_machine.map_or("-".to_owned(), count));
        row.push(limit.how.to_owned());
        table.push(row);
    }
    table
}

/// The sizing in a few lines, for the console.
pub fn sizing_short(report: &Report<'_>) -> String {
    let mut out = String::from("sizing (user + kernel stack + kernel socket per idle connection):\n");
    for run in &report.summaries.runs {
        let sizing = &run.sizing;
        let _ = write!(
            out,
            "  {}: {} per connection, {} per GiB",
            run.spec.name,
            bytes(sizing.bytes_per_connection),
            count(sizing.connections_per_gib)
        );
        for memory in &sizing.memory_for {
            let _ = write!(out, "; {} for {}", bytes(memory.bytes), count(memory.connections));
        }
        out.push('\n');
    }
    let _ = write!(out, "  limits per node for {}:", count(SIZES[1]));
    for limit in &report.node_limits {
        if let Some(needed) = limit.needed.last() {
            let _ = write!(out, " {} {};", short_name(limit.name), count(needed.value));
        }
    }
    out.pop();
    out.push_str(" (report.md: whose, and how)\n");
    out
}

/// A limit's name without its explanation in parentheses.
fn short_name(name: &str) -> &str {
    name.split(" (").next().unwrap_or(name)
}

/// What TLS costs per idle connection: each run measured in both schemes, side by side.
/// None without wss runs.
pub fn tls_rows(summaries: &Summaries) -> Option<Table> {
    let mut table = Table::new([
        "what TLS costs per idle connection",
        "ws",
        "wss",
        "wss − ws",
        "wss ÷ ws",
        "heap wss − ws",
    ]);
    for run in &summaries.runs {
        let Some(builtin) = run.builtin().filter(|builtin| builtin.scheme == Scheme::Wss) else {
            continue;
        };
        let Some(plain) = summaries.builtin(builtin.in_scheme(Scheme::Ws)) else {
            continue;
        };
        let heap = match (
            run.heap_slope_bytes_per_connection,
            plain.heap_slope_bytes_per_connection,
        ) {
            (Some(tls), Some(plain)) => bytes(tls - plain),
            _ => "-".to_owned(),
        };
        table.push([
            plain.spec.name.clone(),
            bytes(plain.slope_bytes_per_connection),
            bytes(run.slope_bytes_per_connection),
            bytes(run.slope_bytes_per_connection - plain.slope_bytes_per_connection),
            format!(
                "{:.2}×",
                run.slope_bytes_per_connection / plain.slope_bytes_per_connection
            ),
            heap,
        ]);
    }
    (!table.is_empty()).then_some(table)
}

/// What permessage-deflate costs per idle connection: each lean run with a deflate
/// setting beside the same run with `--deflate off`, under one client that offers the
/// extension as a browser does. None without such runs.
pub fn deflate_rows(summaries: &Summaries) -> Option<Table> {
    let mut table = Table::new([
        "what permessage-deflate costs per idle connection",
        "off",
        "with it",
        "with − off",
        "heap with − off",
        "the server answered",
    ]);
    for run in &summaries.runs {
        let Some(builtin) = run.builtin().filter(|builtin| builtin.deflate != RunDeflate::Off) else {
            continue;
        };
        let Some(off) = summaries.builtin(builtin.with_deflate(RunDeflate::Off)) else {
            continue;
        };
        let heap = match (run.heap_slope_bytes_per_connection, off.heap_slope_bytes_per_connection) {
            (Some(with), Some(off)) => bytes(with - off),
            _ => "-".to_owned(),
        };
        table.push([
            run.spec.name.clone(),
            bytes(off.slope_bytes_per_connection),
            bytes(run.slope_bytes_per_connection),
            bytes(run.slope_bytes_per_connection - off.slope_bytes_per_connection),
            heap,
            run.deflate.as_ref().map_or("-".to_owned(), ToString::to_string),
        ]);
    }
    (!table.is_empty()).then_some(table)
}

/// The deflate table and what the other runs answered, as Markdown. None without deflate
/// runs.
pub fn deflate_table(summaries: &Summaries) -> Option<String> {
    let mut out = deflate_rows(summaries)?.markdown();
    for run in &summaries.runs {
        let declined = run.builtin().is_none_or(|builtin| builtin.deflate == RunDeflate::Off);
        if let (true, Some(answers)) = (declined, &run.deflate) {
            let _ = writeln!(
                out,
                "
{}: {answers}.",
                run.spec.name
            );
        }
    }
    Some(out)
}

/// What the deflate section says before its table.
pub const DEFLATE_INTRO: &str = "Every run below had the same client, which offers permessage-deflate on every upgrade \
     (`--offer-deflate`; by default as Chromium does: `permessage-deflate; client_max_window_bits`). Each lean run \
     with `--deflate stateless` or `--deflate context` is read against the same run with `--deflate off`. The \
     connections are idle: no message after the upgrade. `stateless` holds nothing of compression between \
     messages; `context` allocates its per-connection streams (zlib-rs: about 370 KiB at 15 window bits) at a \
     connection's first compressed message, so an idle `context` connection that never sent one costs what an \
     idle `stateless` one does. The stock engine (tungstenite) has no permessage-deflate and declines.";

/// A bare TLS session after its handshake, the floor a wss connection's cost is read
/// against, in sentences (when it was measured and wss runs exist).
pub fn tls_floor(summaries: &Summaries, tls_session: Option<TlsState>) -> Option<String> {
    tls_rows(summaries)?;
    let state = tls_session?;
    let mut out = format!(
        "A bare TLS session after its handshake (rustls 0.23, ring, rustls' defaults; {} in memory, live heap each): {} for the lean engine's (rustls' unbuffered connection), {} for rustls' buffered `ServerConnection` (what tokio-rustls holds, its 4 KiB incoming buffer in it).\n",
        state.sessions,
        bytes(state.lean_bytes),
        bytes(state.buffered_bytes)
    );
    let lean = |scheme| summaries.builtin(Builtin::new(Mode::Tasks, Engine::Lean, scheme));
    if let (Some(plain), Some(tls)) = (lean(Scheme::Ws), lean(Scheme::Wss)) {
        let floor = plain.slope_bytes_per_connection + state.lean_bytes;
        let _ = writeln!(
            out,
            "tasks-lean-wss costs {} per idle connection against tasks-lean's {} plus that session's {} = {}: **{:.2}×** the floor.",
            bytes(tls.slope_bytes_per_connection),
            bytes(plain.slope_bytes_per_connection),
            bytes(state.lean_bytes),
            bytes(floor),
            tls.slope_bytes_per_connection / floor
        );
    }
    Some(out)
}

/// The TLS table and its floor, as Markdown. None without wss runs.
pub fn tls_table(summaries: &Summaries, tls_session: Option<TlsState>) -> Option<String> {
    let mut out = tls_rows(summaries)?.markdown();
    if let Some(floor) = tls_floor(summaries, tls_session) {
        out.push('\n');
        out.push_str(&floor);
    }
    Some(out)
}

/// `--push`: per run and step, delivery latency to every connection and the server's cost
/// per broadcast, and (with the floor run, its rows last) CPU and p99 ÷ the floor's at
/// the same connections. None when nothing was pushed.
pub fn push_rows(summaries: &Summaries) -> Option<Table> {
    let mut table = Table::new([
        "server push",
        "connections",
        "delivery p50",
        "p99",
        "max (all)",
        "CPU per broadcast",
        "context switches per broadcast",
        "missed",
        "CPU ÷ floor",
        "p99 ÷ floor",
    ]);
    for run in summaries.runs.iter().chain(&summaries.push_floor) {
        for sample in &run.samples {
            let Some(push) = sample.push else { continue };
            let over = summaries
                .ratios
                .push_over_floor
                .get(&run.spec.name)
                .and_then(|over| over.iter().find(|over| over.connections == sample.connections));
            let times = |ratio: f64| {
                if ratio.is_finite() {
                    format!("{ratio:.2}×")
                } else {
                    "-".to_owned()
                }
            };
            table.push([
                run.spec.name.clone(),
                sample.connections.to_string(),
                format!("{:.2} ms", push.push_delivery_p50_ms),
                format!("{:.2} ms", push.push_delivery_p99_ms),
                format!("{:.2} ms", push.push_delivery_max_ms),
                format!("{:.2} ms", push.cpu_seconds_per_broadcast * 1000.0),
                format!("{:.0}", push.context_switches_per_broadcast),
                push.push_missed.to_string(),
                over.and_then(|over| over.cpu_over_floor).map_or("-".to_owned(), times),
                over.and_then(|over| over.p99_over_floor).map_or("-".to_owned(), times),
            ]);
        }
    }
    (!table.is_empty()).then_some(table)
}

/// What the push table says of the floor: what it is, or why it is missing.
pub fn push_floor_note(summaries: &Summaries) -> Option<String> {
    if summaries.push_floor.is_some() {
        Some(
            "The floor (run `floor`): floor-sender, the wsscale-floor package's raw send() of the same push frame to \
             every socket from one thread per core, through the same steps, clients and measurement; not a server, so \
             no memory table, ratio or sizing counts it. \"÷ floor\" is a run's figure over the floor's at the same \
             connections. The floor's writer threads live for one broadcast: their CPU is counted (the process's CPU \
             clock), their context switches are not (only the threads alive when read are)."
                .to_owned(),
        )
    } else {
        summaries
            .push_floor_missing
            .as_ref()
            .map(|why| format!("The floor was not measured: {why}."))
    }
}

/// The push table and its note on the floor, as Markdown.
pub fn push_table(summaries: &Summaries) -> Option<String> {
    let mut out = push_rows(summaries)?.markdown();
    if let Some(note) = push_floor_note(summaries) {
        out.push('\n');
        out.push_str(&note);
        out.push('\n');
    }
    Some(out)
}

/// One run's samples, a row per step.
pub fn samples_table(run: &RunSummary) -> Table {
    let mut table = Table::new([
        "connections",
        "RSS",
        "RSS/conn",
        "heap/conn",
        "threads",
        "tasks",
        "kernel stack Δ",
        "host slab Δ",
        "TCP sockets Δ",
        "open fds",
        "open rate",
        "RTT p50",
        "RTT p99",
        "CPU s",
        "steady",
    ]);
    table.align[0] = Align::Right;
    let last = table.align.len() - 1;
    table.align[last] = Align::Center;
    let first = run.samples.first();
    for s in &run.samples {
        let optional = |value: Option<f64>, unit: &str| value.map_or("-".to_owned(), |v| format!("{v:.2}{unit}"));
        let since_first = |value: fn(&super::measure::Sample) -> Option<u64>| match (first.and_then(value), value(s)) {
            (Some(first), Some(now)) => Some(now as f64 - first as f64),
            _ => None,
        };
        table.push([
            s.connections.to_string(),
            bytes(s.rss_bytes as f64),
            bytes(s.rss_per_connection_bytes),
            s.heap_per_connection_bytes.map_or("-".to_owned(), bytes),
            s.threads.to_string(),
            s.tasks_alive.map_or("-".to_owned(), |tasks| tasks.to_string()),
            bytes(s.kernel_stack_delta_bytes as f64),
            since_first(|s| s.slab_bytes).map_or("-".to_owned(), bytes),
            since_first(|s| s.tcp_sockets_inuse).map_or("-".to_owned(), |n| format!("{n:+.0}")),
            s.open_fds.to_string(),
            s.open_rate_per_sec
                .map_or("-".to_owned(), |rate| format!("{rate:.0}/s")),
            optional(s.ping_rtt_p50_ms, " ms"),
            optional(s.ping_rtt_p99_ms, " ms"),
            format!("{:.2}", s.cpu_seconds),
            if s.steady { "yes" } else { "no" }.to_owned(),
        ]);
    }
    table
}
/// The ratio table's rows, named for a reader.
fn ratio_rows(ratios: &Ratios) -> Vec<(String, Ratio)> {
    // "lean" or "lean-wss" → "lean engine" or "lean engine, wss".
    let named = |key: &str, what: &str| match key.strip_suffix("-wss") {
        Some(key) => format!("{key} {what}, wss"),
        None => format!("{key} {what}"),
    };
    let mut rows = Vec::new();
    for (engine, ratio) in &ratios.threads_over_tasks {
        rows.push((format!("threads ÷ tasks ({})", named(engine, "engine")), *ratio));
    }
    for (mode, ratio) in &ratios.stock_over_lean {
        rows.push((format!("tungstenite ÷ lean ({})", named(mode, "mode")), *ratio));
    }
    for (name, ratio) in &ratios.wss_over_ws {
        rows.push((format!("wss ÷ ws ({name})"), *ratio));
    }
    for (name, ratio) in &ratios.over_lean_tasks {
        if !super::plan::is_builtin_name(name) {
            rows.push((format!("{name} ÷ tasks-lean"), *ratio));
        }
    }
    rows
}

/// Bytes with a unit a person reads at a glance.
pub fn bytes(value: f64) -> String {
    if value.abs() >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", value / 1073741824.0)
    } else if value.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", value / 1048576.0)
    } else if value.abs() >= 1024.0 {
        format!("{:.1} KiB", value / 1024.0)
    } else {
        format!("{value:.0} B")
    }
}

/// A count with thousands separated: 1,000,000.
pub fn count(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// What the numbers say, in numbers: each run's cost; how much of the stock engine's cost
/// is buffers (stock − lean in one mode) and how much is the execution model (threads −
/// tasks in one engine); and which flag changes it. One item each, in Markdown.
pub fn conclusions(summaries: &Summaries) -> Vec<String> {
    let mut out = Vec::new();
    for run in &summaries.runs {
        let heap = run
            .heap_slope_bytes_per_connection
            .map_or(String::new(), |heap| format!(", of which {} is live heap", bytes(heap)));
        out.push(format!(
            "**{}**: each idle connection adds {} of RSS (R² {:.4}){heap}, plus {} of kernel stack and {} of \
             kernel socket memory outside any RSS: {} in all.",
            run.spec.name,
            bytes(run.slope_bytes_per_connection),
            run.r2,
            bytes(run.kernel_stack_slope_bytes_per_connection),
            run.kernel_socket_bytes_per_connection
                .map_or("an unmeasured amount".to_owned(), bytes),
            bytes(run.user_plus_kernel_bytes_per_connection)
        ));
    }
    for scheme in Scheme::ALL {
        let kind = |mode, engine| summaries.builtin(Builtin::new(mode, engine, scheme));
        let over = match scheme {
            Scheme::Ws => "",
            Scheme::Wss => " over TLS",
        };
        for engine in Engine::ALL {
            let (Some(tasks), Some(threads)) = (kind(Mode::Tasks, engine), kind(Mode::Threads, engine)) else {
                continue;
            };
            let ratio = summaries.ratios.threads_over_tasks[&keyed(engine, scheme)];
            out.push(format!(
                "The execution model, {engine} engine{over}: a thread per connection costs {} more than a task per connection ({} vs {} user + kernel: **{:.1}×**, {:.1}× in user memory alone). Beyond the heap, the difference is the thread itself: its touched stack, TLS and signal stack in RSS, and 16 KiB of kernel stack.",
                bytes(threads.user_plus_kernel_bytes_per_connection - tasks.user_plus_kernel_bytes_per_connection),
                bytes(threads.user_plus_kernel_bytes_per_connection),
                bytes(tasks.user_plus_kernel_bytes_per_connection),
                ratio.user_plus_kernel_memory,
                ratio.user_memory
            ));
        }
        for mode in Mode::ALL {
            let (Some(lean), Some(stock)) = (kind(mode, Engine::Lean), kind(mode, Engine::Tungstenite)) else {
                continue;
            };
            let extra = stock.slope_bytes_per_connection - lean.slope_bytes_per_connection;
            let read_buffer = stock.spec.settings.map(|settings| settings.read_buffer_size);
            let buffer_share = read_buffer.map_or(String::new(), |read| {
                format!(
                    "; tungstenite allocates its read buffer, {} ({}), when the connection opens and keeps it for the connection's life — that is {:.0}% of the difference, and `--read-buffer-size` is the flag that changes it",
                    bytes(read.value as f64),
                    if read.is_flag() { "set by flag" } else { "its default" },
                    100.0 * read.value as f64 / extra.max(1.0)
                )
            });
            out.push(format!(
                "The engine, {mode} mode{over}: the stock stack costs {} of RSS per connection against the lean engine's {} (**{:.1}×**): {} more, buffers held while idle{buffer_share}.",
                bytes(stock.slope_bytes_per_connection),
                bytes(lean.slope_bytes_per_connection),
                summaries.ratios.stock_over_lean[&keyed(mode, scheme)].user_memory,
                bytes(extra),
            ));
        }
    }
    out.push(
        "The kernel's socket memory (slab per socket) is counted in every run's user + kernel: the same kind of \
         figure for every server, the host's, read by compare (see how it is derived under \"Kernel socket memory\")."
            .to_owned(),
    );
    out
}

/// The title of report.md and index.html.
pub const TITLE: &str =
    "What an idle WebSocket connection costs: Tokio task vs OS thread, lean engine vs stock tungstenite";

/// The sizing section's explanation, above its tables.
pub fn sizing_intro() -> String {
    format!(
        "Memory for N idle connections on one node = N × (user memory + kernel stack + kernel socket memory per \
         connection), each measured above (a negative kernel slope, noise, counts as 0); the server process's own \
         memory at 0 connections comes on top, once per process. Connections per GiB = 1 GiB ÷ the same sum. The \
         clients' own memory, on their hosts, is not in it. To hold {} or {} connections a node must also raise \
         the limits in the second table (RLIMIT_NOFILE and fs.nr_open for every server; the kernel's map, pid and thread limits for a \
         thread per connection; and enough source addresses on the clients' side, one per port range's worth of \
         connections to one server address).",
        count(SIZES[0]),
        count(SIZES[1])
    )
}

fn markdown(report: &Report<'_>) -> String {
    let summaries = report.summaries;
    let plan = report.plan;
    let mut out = String::new();
    let _ = writeln!(out, "# {TITLE}\n");
    let _ = writeln!(out, "Machine: {}\n", report.machine.describe());
    let _ = writeln!(out, "Command: `{}`\n", report.command_line());
    let _ = writeln!(
        out,
        "Steps: {:?} connections; client pings every {} s; wsscale {}. Servers:\n",
        plan.steps,
        plan.client_ping_interval_secs,
        env!("CARGO_PKG_VERSION")
    );
    for run in &plan.runs {
        let _ = writeln!(out, "- **{}**: `{}`", run.name, run.server);
    }
    let _ = writeln!(out, "\n## Per connection\n\n{}", comparison_table(summaries));
    let _ = writeln!(
        out,
        "## Kernel socket memory\n\nHow the row \"kernel socket memory (slab per socket)\" is derived: \
         {KERNEL_SOCKETS_DERIVATION}\n\n{}",
        kernel_socket_table(summaries).markdown()
    );
    for warning in kernel_warnings(summaries) {
        let _ = writeln!(out, "**Warning**: {warning}\n");
    }
    let _ = writeln!(
        out,
        "## Sizing\n\n{}\n\n{}\n{}",
        sizing_intro(),
        sizing_table(summaries).markdown(),
        limits_table(&report.node_limits).markdown()
    );
    if let Some(tls) = tls_table(summaries, report.tls_session) {
        let _ = writeln!(
            out,
            "## What TLS costs per idle connection\n\nEvery run below was measured over plain TCP (ws) and over \
             TLS (wss, one ECDSA P-256 certificate for all, rustls with the ring provider and its defaults: TLS 1.3, \
             session tickets). The difference is what an idle encrypted connection holds beyond a plain one.\n\n{tls}"
        );
    }
    if let Some(deflate) = deflate_table(summaries) {
        let _ = writeln!(
            out,
            "## What permessage-deflate costs per idle connection\n\n{DEFLATE_INTRO}\n\n{deflate}"
        );
    }
    if let Some(push) = push_table(summaries) {
        let _ = writeln!(
            out,
            "## Server push\n\nAt each step, after the memory sample: {} broadcasts of {} bytes one second apart to \
             every held connection. Delivery is the clients' receipt time minus the send time each push carries; CPU \
             (the process's, every thread's) and context switches (every thread alive's) are per broadcast, net of an \
             equal window with no broadcast.\n\n{push}",
            plan.push.map_or(0, |push| push.count),
            plan.push.map_or(0, |push| push.size_bytes)
        );
    }
    let _ = writeln!(out, "## Conclusions\n");
    for conclusion in conclusions(summaries) {
        let _ = writeln!(out, "- {conclusion}");
    }
    let _ = writeln!(out, "\n## Charts\n");
    for chart in report.charts {
        let _ = writeln!(out, "![{}]({})\n", chart.title, chart.file);
    }
    for run in &summaries.runs {
        let _ = writeln!(
            out,
            "## Samples: {}\n\n{}",
            run.spec.name,
            samples_table(run).markdown()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_counts_and_bytes() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_000_000), "1,000,000");
        assert_eq!(count(262_144), "262,144");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(3.0 * 1073741824.0), "3.0 GiB");
    }
}
