//! `wsscale compare`: the one command that shows what an idle connection costs as a
//! Tokio task and as an OS thread, with wsscale's lean engine and with the stock
//! tungstenite stack — and, with `--server`, in any other WebSocket server.
//!
//! Split by job, each child using only the ones before it:
//!
//! - [`plan`]: the runs, their settings, the steps, and the limits preflight;
//! - [`server`] (and [`external`] for `--server`, [`floor`] for `--push`'s floor): one
//!   run's server while it runs — a `wsscale serve` child sampled from its /metrics
//!   (cross-checked against /proc/PID), or any server read from /proc as a process tree;
//! - [`measure`]: a pool of client connections grown step by step, waiting at each step
//!   until the server's memory is steady, then a [`measure::Sample`];
//! - [`summary`] (with [`fit`]): bytes per connection — user memory, kernel stacks and the
//!   kernel's socket memory — and the ratios; [`sizing`]: connections per GiB, the memory
//!   for 100,000 and 1,000,000 connections and the limits a node must raise;
//! - [`charts`], [`report`] (with [`table`]) and [`html`]: the SVGs, summary.json,
//!   report.md and index.html, the self-contained page of all of it;
//! - [`tls_state`]: with wss runs, what a bare TLS session holds after its handshake, the
//!   floor the wss figures are read against.
//!
//! Every run gets the same steps, the same clients and (wsscale servers) the same flags;
//! each server is a child process, so every figure is the server's alone.

pub mod charts;
pub mod external;
pub mod fit;
pub mod floor;
pub mod html;
pub mod measure;
pub mod plan;
pub mod report;
pub mod server;
pub mod sizing;
pub mod summary;
pub mod table;
pub mod tls_state;

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use wsscale_host::proc::KernelLimits;

use crate::config::CompareArgs;

/// Runs the whole comparison and writes the report.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let fd = wsscale_host::fd::raise_fd_limit().context("reading or raising RLIMIT_NOFILE")?;
    let kernel = KernelLimits::read().ok();
    let available = wsscale_host::proc::memory_available_bytes().ok();
    let plan = plan::plan(args, fd, kernel, available)?;
    let names: Vec<&str> = plan.runs.iter().map(|run| run.name.as_str()).collect();
    eprintln!(
        "wsscale compare: steps {:?} for {}; limits:",
        plan.steps,
        names.join(", ")
    );
    if let Some(why) = &plan.push_floor_missing {
        eprintln!("--push: the floor is not measured: {why}");
    }
    for line in &plan.limits {
        eprintln!("  {line}");
    }
    std::fs::create_dir_all(&plan.out).with_context(|| format!("creating {}", plan.out.display()))?;
    // wss runs (and `{cert}` servers) share one certificate, made here.
    if let Some(tls) = &plan.server_flags.tls {
        let (cert, key) = crate::server::tls::self_signed().map_err(anyhow::Error::msg)?;
        for (path, pem) in [(&tls.cert, cert), (&tls.key, key)] {
            std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // A server that cannot start fails the comparison now, not after the others ran.
    runtime.block_on(server::check_external_servers(&plan))?;
    let stop = CancellationToken::new();
    let mut results = Vec::new();
    for run in &plan.runs {
        results.push(runtime.block_on(measure::measure(&plan, run, &stop))?);
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    let machine = report::Machine::read(fd, kernel);
    let mut summaries = summary::Summaries::of(&results);
    summaries.push_floor_missing = plan.push_floor_missing.clone();
    // The floor of a wss connection's cost: a bare TLS session after its handshake.
    let tls_state = match plan.server_flags.tls {
        Some(_) => Some(tls_state::measure(1000).context("measuring a bare TLS session")?),
        None => None,
    };
    let charts = charts::write_all(&plan.out, &summaries)?;
    let command: Vec<String> = std::env::args().collect();
    let report = report::Report::new(&plan, &machine, &summaries, tls_state, &charts, &command);
    let written = report::write(&report)?;
    let index = html::write(&report)?;
    println!("{}", report::comparison_table(&summaries));
    if let Some(tls) = report::tls_table(&summaries, tls_state) {
        println!("{tls}");
    }
    if let Some(deflate) = report::deflate_table(&summaries) {
        println!("{deflate}");
    }
    if let Some(push) = report::push_table(&summaries) {
        println!("{push}");
    }
    for warning in report::kernel_warnings(&summaries) {
        println!("warning: {warning}\n");
    }
    println!("{}", report::sizing_short(&report));
    println!("report written to {}", written.display());
    println!("open {}", index.display());
    Ok(())
}
