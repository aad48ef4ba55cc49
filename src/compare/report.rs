//! The comparison's outputs: summary.json (every sample, the fits, the configuration,
//! the machine), report.md (the table and the conclusions in numbers) and the charts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::fit::{self, Fit};
use super::{ModeResult, Plan, Sample, charts};
use wsscale_host::fd::FdLimit;
use wsscale_host::proc::{self, KernelLimits};

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

/// One mode's samples and what they fit to.
#[derive(Debug, Clone, Serialize)]
pub struct ModeSummary {
    pub samples: Vec<Sample>,
    /// RSS bytes per connection (least-squares slope over the steps).
    pub slope_bytes_per_connection: f64,
    /// R² of that fit.
    pub r2: f64,
    pub heap_slope_bytes_per_connection: f64,
    pub heap_r2: f64,
    /// Host KernelStack bytes per connection (threads: ~16 KiB each).
    pub kernel_stack_slope_bytes_per_connection: f64,
    /// RSS slope + kernel stack slope.
    pub user_plus_kernel_bytes_per_connection: f64,
    pub threads_at_max: u64,
    pub tasks_alive_at_max: u64,
}

impl ModeSummary {
    pub fn of(result: &ModeResult) -> ModeSummary {
        let fit_of = |value: fn(&Sample) -> f64| {
            let points: Vec<(f64, f64)> = result
                .samples
                .iter()
                .map(|s| (s.connections as f64, value(s)))
                .collect();
            fit::linear(&points).unwrap_or(Fit {
                slope: 0.0,
                intercept: 0.0,
                r2: 0.0,
            })
        };
        let rss = fit_of(|s| s.rss_bytes as f64);
        let heap = fit_of(|s| s.heap_bytes as f64);
        let kernel_stack = fit_of(|s| s.kernel_stack_bytes as f64);
        let last = result.samples.last();
        ModeSummary {
            samples: result.samples.clone(),
            slope_bytes_per_connection: rss.slope,
            r2: rss.r2,
            heap_slope_bytes_per_connection: heap.slope,
            heap_r2: heap.r2,
            kernel_stack_slope_bytes_per_connection: kernel_stack.slope,
            user_plus_kernel_bytes_per_connection: rss.slope + kernel_stack.slope,
            threads_at_max: last.map_or(0, |s| s.threads),
            tasks_alive_at_max: last.map_or(0, |s| s.tasks_alive),
        }
    }
}

/// threads ÷ tasks, when both modes ran.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub user_memory: f64,
    pub user_plus_kernel_memory: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary<'a> {
    pub wsscale_version: &'static str,
    pub generated_unix_secs: u64,
    pub config: &'a Plan,
    pub machine: &'a Machine,
    pub modes: std::collections::BTreeMap<&'static str, &'a ModeSummary>,
    pub ratios_threads_over_tasks: Option<Ratios>,
}

/// Each mode's fits, computed once for the table, the report and the charts.
pub type Summaries = Vec<(&'static str, ModeSummary)>;

pub fn summarize(results: &[ModeResult]) -> Summaries {
    results
        .iter()
        .map(|result| (result.mode.as_str(), ModeSummary::of(result)))
        .collect()
}

/// Writes summary.json, report.md and the charts into the plan's folder; returns it.
pub fn write(plan: &Plan, machine: &Machine, results: &[ModeResult], summaries: &Summaries) -> anyhow::Result<PathBuf> {
    let out = &plan.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let modes: std::collections::BTreeMap<&'static str, &ModeSummary> =
        summaries.iter().map(|(mode, summary)| (*mode, summary)).collect();
    let ratios = match (modes.get("tasks"), modes.get("threads")) {
        (Some(tasks), Some(threads)) => Some(Ratios {
            user_memory: threads.slope_bytes_per_connection / tasks.slope_bytes_per_connection,
            user_plus_kernel_memory: threads.user_plus_kernel_bytes_per_connection
                / tasks.user_plus_kernel_bytes_per_connection,
        }),
        _ => None,
    };
    let summary = Summary {
        wsscale_version: env!("CARGO_PKG_VERSION"),
        generated_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs()),
        config: plan,
        machine,
        modes,
        ratios_threads_over_tasks: ratios,
    };
    write_file(
        &out.join("summary.json"),
        &(serde_json::to_string_pretty(&summary)? + "\n"),
    )?;
    let chart_files = charts::write_all(out, results, summaries)?;
    write_file(
        &out.join("report.md"),
        &markdown(&summary, results, summaries, &chart_files),
    )?;
    Ok(out.clone())
}

fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// The side-by-side table printed at the end and put at the top of report.md.
pub fn comparison_table(summaries: &Summaries) -> String {
    let mut out = String::new();
    let _ = write!(out, "| per idle connection |");
    for (mode, _) in summaries {
        let _ = write!(out, " {mode} |");
    }
    let both = summaries.len() == 2 && summaries[0].0 == "tasks";
    if both {
        let _ = write!(out, " threads ÷ tasks |");
    }
    let _ = write!(out, "\n|---|");
    for _ in 0..summaries.len() + usize::from(both) {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    let row = |out: &mut String, name: &str, value: &dyn Fn(&ModeSummary) -> f64, ratio: bool| {
        let _ = write!(out, "| {name} |");
        for (_, summary) in summaries {
            let _ = write!(out, " {} |", bytes(value(summary)));
        }
        if both {
            if ratio {
                let _ = write!(out, " {:.1}× |", value(&summaries[1].1) / value(&summaries[0].1));
            } else {
                let _ = write!(out, " |");
            }
        }
        out.push('\n');
    };
    row(
        &mut out,
        "user memory (RSS slope)",
        &|s| s.slope_bytes_per_connection,
        true,
    );
    row(&mut out, "heap (slope)", &|s| s.heap_slope_bytes_per_connection, false);
    row(
        &mut out,
        "kernel stack (KernelStack slope)",
        &|s| s.kernel_stack_slope_bytes_per_connection,
        false,
    );
    row(
        &mut out,
        "user + kernel",
        &|s| s.user_plus_kernel_bytes_per_connection,
        true,
    );
    let plain = |out: &mut String, name: &str, value: &dyn Fn(&ModeSummary) -> String| {
        let _ = write!(out, "| {name} |");
        for (_, summary) in summaries {
            let _ = write!(out, " {} |", value(summary));
        }
        if both {
            let _ = write!(out, " |");
        }
        out.push('\n');
    };
    plain(&mut out, "R² of the RSS fit", &|s| format!("{:.4}", s.r2));
    plain(&mut out, "connections at the last step", &|s| {
        s.samples.last().map_or(0, |x| x.connections).to_string()
    });
    plain(&mut out, "OS threads at the last step", &|s| {
        s.threads_at_max.to_string()
    });
    plain(&mut out, "Tokio tasks alive at the last step", &|s| {
        s.tasks_alive_at_max.to_string()
    });
    plain(&mut out, "opening rate, last step", &|s| {
        s.samples
            .last()
            .and_then(|x| x.open_rate_per_sec)
            .map_or("-".to_owned(), |rate| format!("{rate:.0}/s"))
    });
    plain(&mut out, "ping RTT p50 / p99, last step", &|s| {
        s.samples
            .last()
            .map_or("-".to_owned(), |x| match (x.ping_rtt_p50_ms, x.ping_rtt_p99_ms) {
                (Some(p50), Some(p99)) => format!("{p50:.2} / {p99:.2} ms"),
                _ => "-".to_owned(),
            })
    });
    out
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

fn markdown(
    summary: &Summary<'_>,
    results: &[ModeResult],
    summaries: &Summaries,
    charts: &[(String, String)],
) -> String {
    let machine = summary.machine;
    let plan = summary.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# What an idle WebSocket connection costs: Tokio task vs OS thread\n"
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
        "Steps: {:?} connections; server flags `{}` in every mode; client pings every {} s; wsscale {}.\n",
        plan.steps,
        plan.serve_args.join(" "),
        plan.client_ping_interval_secs,
        summary.wsscale_version
    );
    let _ = writeln!(out, "## Per connection\n\n{}", comparison_table(summaries));
    let _ = writeln!(out, "## Conclusions\n");
    for (mode, mode_summary) in &summary.modes {
        let _ = writeln!(
            out,
            "- **{mode}**: each idle connection adds {} of RSS (R² {:.4}), of which {} is live heap, plus {} of kernel \
             stack outside any RSS: {} in all.",
            bytes(mode_summary.slope_bytes_per_connection),
            mode_summary.r2,
            bytes(mode_summary.heap_slope_bytes_per_connection),
            bytes(mode_summary.kernel_stack_slope_bytes_per_connection),
            bytes(mode_summary.user_plus_kernel_bytes_per_connection)
        );
    }
    if let Some(ratios) = &summary.ratios_threads_over_tasks {
        let _ = writeln!(
            out,
            "- A thread per connection costs **{:.1}×** the user memory of a task per connection, and **{:.1}×** \
             counting the kernel stacks. The difference beyond the heap is the thread itself: its touched stack, \
             its TLS and signal stack in RSS, and 16 KiB of kernel stack each.",
            ratios.user_memory, ratios.user_plus_kernel_memory
        );
    }
    let _ = writeln!(
        out,
        "- Not counted in either: the kernel's socket buffers and TCP state (slab), the same per socket in both modes.\n"
    );
    let _ = writeln!(out, "## Charts\n");
    for (file, title) in charts {
        let _ = writeln!(out, "![{title}]({file})\n");
    }
    for result in results {
        let _ = writeln!(out, "## Samples: {} mode\n", result.mode);
        let _ = writeln!(
            out,
            "| connections | RSS | RSS/conn | heap/conn | threads | tasks | kernel stack Δ | open fds | open rate | RTT p50 | RTT p99 | CPU s | steady |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|");
        for s in &result.samples {
            let optional = |value: Option<f64>, unit: &str| value.map_or("-".to_owned(), |v| format!("{v:.2}{unit}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                s.connections,
                bytes(s.rss_bytes as f64),
                bytes(s.rss_per_connection_bytes),
                bytes(s.heap_per_connection_bytes),
                s.threads,
                s.tasks_alive,
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
