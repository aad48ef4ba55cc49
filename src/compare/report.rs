//! The comparison's outputs: summary.json (every sample, the fits, the ratios, the
//! configuration, the machine), report.md (the tables and the conclusions in numbers)
//! and the charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use wsscale_host::fd::FdLimit;
use wsscale_host::proc::{self, KernelLimits};

use super::charts;
use super::plan::{Builtin, Plan};
use super::summary::{Ratio, Ratios, RunSummary, Summaries, keyed};
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
}

impl Machine {
    pub fn read(fd: FdLimit, kernel: Option<KernelLimits>) -> Machine {
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_total_bytes: proc::memory_total_bytes().unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            fd_soft: fd.soft,
            fd_hard: fd.hard,
            pid_max: kernel.map_or(0, |k| k.pid_max),
            max_map_count: kernel.map_or(0, |k| k.max_map_count),
            threads_max: kernel.map_or(0, |k| k.threads_max),
        }
    }
}

/// summary.json.
#[derive(Debug, Clone, Serialize)]
pub struct Summary<'a> {
    pub wsscale_version: &'static str,
    pub generated_unix_secs: u64,
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
    /// With wss runs: what a bare TLS session holds after its handshake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_session: Option<TlsState>,
}

/// Writes summary.json, report.md and the charts into the plan's folder; returns it.
pub fn write(
    plan: &Plan,
    machine: &Machine,
    summaries: &Summaries,
    tls_session: Option<TlsState>,
) -> anyhow::Result<PathBuf> {
    let out = &plan.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let modes = Mode::ALL
        .into_iter()
        .filter_map(|mode| {
            let builtin = Builtin {
                mode,
                engine: Engine::Lean,
                scheme: Scheme::Ws,
            };
            Some((mode, summaries.builtin(builtin)?))
        })
        .collect();
    let summary = Summary {
        wsscale_version: env!("CARGO_PKG_VERSION"),
        generated_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs()),
        config: plan,
        machine,
        modes,
        ratios_threads_over_tasks: summaries.ratios.threads_over_tasks.get("lean").copied(),
        runs: &summaries.runs,
        ratios: &summaries.ratios,
        tls_session,
    };
    write_file(
        &out.join("summary.json"),
        &(serde_json::to_string_pretty(&summary)? + "\n"),
    )?;
    let chart_files = charts::write_all(out, summaries)?;
    write_file(&out.join("report.md"), &markdown(&summary, summaries, &chart_files))?;
    Ok(out.clone())
}

fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// The side-by-side tables printed at the end and put at the top of report.md: every
/// run's figures per idle connection, then the ratios.
pub fn comparison_table(summaries: &Summaries) -> String {
    let runs = &summaries.runs;
    let mut out = String::new();
    let _ = write!(out, "| per idle connection |");
    for run in runs {
        let _ = write!(out, " {} |", run.spec.name);
    }
    let _ = write!(out, "\n|---|");
    for _ in runs {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    let row = |out: &mut String, name: &str, value: &dyn Fn(&RunSummary) -> String| {
        let _ = write!(out, "| {name} |");
        for run in runs {
            let _ = write!(out, " {} |", value(run));
        }
        out.push('\n');
    };
    row(&mut out, "user memory (RSS slope)", &|s| {
        bytes(s.slope_bytes_per_connection)
    });
    row(&mut out, "heap (slope)", &|s| {
        s.heap_slope_bytes_per_connection.map_or("-".to_owned(), bytes)
    });
    row(&mut out, "kernel stack (KernelStack slope)", &|s| {
        bytes(s.kernel_stack_slope_bytes_per_connection)
    });
    row(&mut out, "user + kernel", &|s| {
        bytes(s.user_plus_kernel_bytes_per_connection)
    });
    row(&mut out, "R² of the RSS fit", &|s| format!("{:.4}", s.r2));
    row(&mut out, "read buffer in force", &|s| {
        s.spec.settings.map_or("-".to_owned(), |settings| {
            let read = settings.read_buffer_size;
            format!(
                "{}{}",
                bytes(read.value as f64),
                if read.is_flag() { " (flag)" } else { "" }
            )
        })
    });
    row(&mut out, "connections at the last step", &|s| {
        s.samples.last().map_or(0, |x| x.connections).to_string()
    });
    row(&mut out, "OS threads at the last step", &|s| {
        s.threads_at_max.to_string()
    });
    row(&mut out, "Tokio tasks alive at the last step", &|s| {
        s.tasks_alive_at_max.map_or("-".to_owned(), |tasks| tasks.to_string())
    });
    row(&mut out, "opening rate, last step", &|s| {
        s.samples
            .last()
            .and_then(|x| x.open_rate_per_sec)
            .map_or("-".to_owned(), |rate| format!("{rate:.0}/s"))
    });
    row(&mut out, "ping RTT p50 / p99, last step", &|s| {
        s.samples
            .last()
            .map_or("-".to_owned(), |x| match (x.ping_rtt_p50_ms, x.ping_rtt_p99_ms) {
                (Some(p50), Some(p99)) => format!("{p50:.2} / {p99:.2} ms"),
                _ => "-".to_owned(),
            })
    });

    let ratios = ratio_rows(&summaries.ratios);
    if !ratios.is_empty() {
        let _ = write!(out, "\n| ratio | user memory | user + kernel |\n|---|---:|---:|\n");
        for (name, ratio) in ratios {
            let _ = writeln!(
                out,
                "| {name} | {:.1}× | {:.1}× |",
                ratio.user_memory, ratio.user_plus_kernel_memory
            );
        }
    }
    out
}

/// What TLS costs per idle connection: each run measured in both schemes, side by side,
/// and (when it was measured) a bare TLS session after its handshake, the floor a wss
/// connection's cost is read against. None without wss runs.
pub fn tls_table(summaries: &Summaries, tls_session: Option<TlsState>) -> Option<String> {
    let mut out = String::from(
        "| what TLS costs per idle connection | ws | wss | wss − ws | wss ÷ ws | heap wss − ws |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut any = false;
    for run in &summaries.runs {
        let Some(builtin) = run.builtin().filter(|builtin| builtin.scheme == Scheme::Wss) else {
            continue;
        };
        let Some(plain) = summaries.builtin(builtin.in_scheme(Scheme::Ws)) else {
            continue;
        };
        any = true;
        let heap = match (
            run.heap_slope_bytes_per_connection,
            plain.heap_slope_bytes_per_connection,
        ) {
            (Some(tls), Some(plain)) => bytes(tls - plain),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2}× | {heap} |",
            plain.spec.name,
            bytes(plain.slope_bytes_per_connection),
            bytes(run.slope_bytes_per_connection),
            bytes(run.slope_bytes_per_connection - plain.slope_bytes_per_connection),
            run.slope_bytes_per_connection / plain.slope_bytes_per_connection,
        );
    }
    if !any {
        return None;
    }
    if let Some(state) = tls_session {
        let _ = write!(
            out,
            "\nA bare TLS session after its handshake (rustls 0.23, ring, rustls' defaults; {} in memory, live heap each): {} for the lean engine's (rustls' unbuffered connection), {} for rustls' buffered `ServerConnection` (what tokio-rustls holds, its 4 KiB incoming buffer in it).\n",
            state.sessions,
            bytes(state.lean_bytes),
            bytes(state.buffered_bytes)
        );
        let lean = |scheme| {
            summaries.builtin(Builtin {
                mode: Mode::Tasks,
                engine: Engine::Lean,
                scheme,
            })
        };
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
    }
    Some(out)
}

/// `--push`: per run and step, delivery latency to every connection and the server's cost
/// per broadcast. None when nothing was pushed.
pub fn push_table(summaries: &Summaries) -> Option<String> {
    let mut out = String::from(
        "| server push | connections | delivery p50 | p99 | max (all) | CPU per broadcast | context switches per broadcast | missed |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut any = false;
    for run in &summaries.runs {
        for sample in &run.samples {
            let Some(push) = sample.push else { continue };
            any = true;
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} | {} |",
                run.spec.name,
                sample.connections,
                push.push_delivery_p50_ms,
                push.push_delivery_p99_ms,
                push.push_delivery_max_ms,
                push.cpu_seconds_per_broadcast * 1000.0,
                push.context_switches_per_broadcast,
                push.push_missed
            );
        }
    }
    any.then_some(out)
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
    if value.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", value / 1048576.0)
    } else if value.abs() >= 1024.0 {
        format!("{:.1} KiB", value / 1024.0)
    } else {
        format!("{value:.0} B")
    }
}

/// What the numbers say, in numbers: each run's cost; how much of the stock engine's cost
/// is buffers (stock − lean in one mode) and how much is the execution model (threads −
/// tasks in one engine); and which flag changes it.
fn conclusions(summaries: &Summaries) -> String {
    let mut out = String::new();
    for run in &summaries.runs {
        let heap = run
            .heap_slope_bytes_per_connection
            .map_or(String::new(), |heap| format!(", of which {} is live heap", bytes(heap)));
        let _ = writeln!(
            out,
            "- **{}**: each idle connection adds {} of RSS (R² {:.4}){heap}, plus {} of kernel stack outside \
             any RSS: {} in all.",
            run.spec.name,
            bytes(run.slope_bytes_per_connection),
            run.r2,
            bytes(run.kernel_stack_slope_bytes_per_connection),
            bytes(run.user_plus_kernel_bytes_per_connection)
        );
    }
    for scheme in Scheme::ALL {
        let kind = |mode, engine| summaries.builtin(Builtin { mode, engine, scheme });
        let over = match scheme {
            Scheme::Ws => "",
            Scheme::Wss => " over TLS",
        };
        for engine in Engine::ALL {
            let (Some(tasks), Some(threads)) = (kind(Mode::Tasks, engine), kind(Mode::Threads, engine)) else {
                continue;
            };
            let ratio = summaries.ratios.threads_over_tasks[&keyed(engine, scheme)];
            let _ = writeln!(
                out,
                "- The execution model, {engine} engine{over}: a thread per connection costs {} more than a task                  per connection ({} vs {} user + kernel: **{:.1}×**, {:.1}× in user memory alone). Beyond the heap,                  the difference is the thread itself: its touched stack, TLS and signal stack in RSS, and 16 KiB of                  kernel stack.",
                bytes(threads.user_plus_kernel_bytes_per_connection - tasks.user_plus_kernel_bytes_per_connection),
                bytes(threads.user_plus_kernel_bytes_per_connection),
                bytes(tasks.user_plus_kernel_bytes_per_connection),
                ratio.user_plus_kernel_memory,
                ratio.user_memory
            );
        }
        for mode in Mode::ALL {
            let (Some(lean), Some(stock)) = (kind(mode, Engine::Lean), kind(mode, Engine::Tungstenite)) else {
                continue;
            };
            let extra = stock.slope_bytes_per_connection - lean.slope_bytes_per_connection;
            let read_buffer = stock.spec.settings.map(|settings| settings.read_buffer_size);
            let buffer_share = read_buffer.map_or(String::new(), |read| {
                format!(
                    "; tungstenite allocates its read buffer, {} ({}), when the connection opens and keeps it for                      the connection's life — that is {:.0}% of the difference, and `--read-buffer-size` is the flag                      that changes it",
                    bytes(read.value as f64),
                    if read.is_flag() { "set by flag" } else { "its default" },
                    100.0 * read.value as f64 / extra.max(1.0)
                )
            });
            let _ = writeln!(
                out,
                "- The engine, {mode} mode{over}: the stock stack costs {} of RSS per connection against the lean                  engine's {} (**{:.1}×**): {} more, buffers held while idle{buffer_share}.",
                bytes(stock.slope_bytes_per_connection),
                bytes(lean.slope_bytes_per_connection),
                summaries.ratios.stock_over_lean[&keyed(mode, scheme)].user_memory,
                bytes(extra),
            );
        }
    }
    let _ = writeln!(
        out,
        "- Not counted in any: the kernel's socket buffers and TCP state (slab), the same per socket in every run."
    );
    out
}

fn markdown(summary: &Summary<'_>, summaries: &Summaries, charts: &[(String, String)]) -> String {
    let machine = summary.machine;
    let plan = summary.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# What an idle WebSocket connection costs: Tokio task vs OS thread, lean engine vs stock tungstenite\n"
    );
    let _ = writeln!(
        out,
        "Machine: {} cores, {} memory, Linux {}; RLIMIT_NOFILE {} (hard {}), pid_max {}, vm.max_map_count {}, \
         threads-max {}.\n",
        machine.cores,
        bytes(machine.memory_total_bytes as f64),
        machine.kernel,
        machine.fd_soft,
        machine.fd_hard,
        machine.pid_max,
        machine.max_map_count,
        machine.threads_max
    );
    let _ = writeln!(
        out,
        "Steps: {:?} connections; client pings every {} s; wsscale {}. Servers:\n",
        plan.steps, plan.client_ping_interval_secs, summary.wsscale_version
    );
    for run in &plan.runs {
        let _ = writeln!(out, "- **{}**: `{}`", run.name, run.server);
    }
    let _ = writeln!(out, "\n## Per connection\n\n{}", comparison_table(summaries));
    if let Some(tls) = tls_table(summaries, summary.tls_session) {
        let _ = writeln!(
            out,
            "## What TLS costs per idle connection\n\nEvery run below was measured over plain TCP (ws) and over \
             TLS (wss, one ECDSA P-256 certificate for all, rustls with the ring provider and its defaults: TLS 1.3, \
             session tickets). The difference is what an idle encrypted connection holds beyond a plain one.\n\n{tls}"
        );
    }
    if let Some(push) = push_table(summaries) {
        let _ = writeln!(
            out,
            "## Server push\n\nAt each step, after the memory sample: {} broadcasts of {} bytes one second apart to \
             every held connection. Delivery is the clients' receipt time minus the send time each push carries; CPU \
             and context switches (every thread's) are per broadcast, net of an equal window with no broadcast.\n\n{push}",
            plan.push.map_or(0, |push| push.count),
            plan.push.map_or(0, |push| push.size_bytes)
        );
    }
    let _ = writeln!(out, "## Conclusions\n\n{}", conclusions(summaries));
    let _ = writeln!(out, "## Charts\n");
    for (file, title) in charts {
        let _ = writeln!(out, "![{title}]({file})\n");
    }
    for run in &summaries.runs {
        let _ = writeln!(out, "## Samples: {}\n", run.spec.name);
        let _ = writeln!(
            out,
            "| connections | RSS | RSS/conn | heap/conn | threads | tasks | kernel stack Δ | open fds | open rate | RTT p50 | RTT p99 | CPU s | steady |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|");
        for s in &run.samples {
            let optional = |value: Option<f64>, unit: &str| value.map_or("-".to_owned(), |v| format!("{v:.2}{unit}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                s.connections,
                bytes(s.rss_bytes as f64),
                bytes(s.rss_per_connection_bytes),
                s.heap_per_connection_bytes.map_or("-".to_owned(), bytes),
                s.threads,
                s.tasks_alive.map_or("-".to_owned(), |tasks| tasks.to_string()),
                bytes(s.kernel_stack_delta_bytes as f64),
                s.open_fds,
                s.open_rate_per_sec
                    .map_or("-".to_owned(), |rate| format!("{rate:.0}/s")),
                optional(s.ping_rtt_p50_ms, " ms"),
                optional(s.ping_rtt_p99_ms, " ms"),
                s.cpu_seconds,
                if s.steady { "yes" } else { "no" }
            );
        }
        out.push('\n');
    }
    out
}
