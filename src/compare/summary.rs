//! What the samples come to: each run's fits (bytes per connection with R², heap, kernel
//! stack and the kernel's socket memory), its sizing, and the ratios a reader needs —
//! threads ÷ tasks within each engine, stock ÷ lean within each mode, wss ÷ ws for each run, and every other run ÷ wsscale's
//! lean tasks run. Every ratio compares runs of one scheme (wss ÷ ws aside): keys name
//! the engine, mode or run, with `-wss` for the TLS runs. Computed once, for the table,
//! the report and the charts.

use std::collections::BTreeMap;

use serde::Serialize;

use wsscale_host::proc::KernelGrowth;

use super::fit::{self, Fit};
use super::measure::{DeflateAnswers, RunResult, Sample};
use super::plan::{Builtin, RunSpec};
use super::sizing::Sizing;
use crate::config::{Engine, Mode, Scheme};

/// One run's samples and what they fit to.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    #[serde(flatten)]
    pub spec: RunSpec,
    pub samples: Vec<Sample>,
    /// RSS bytes per connection (least-squares slope over the steps).
    pub slope_bytes_per_connection: f64,
    /// R² of that fit.
    pub r2: f64,
    /// Live heap per connection (wsscale's own servers).
    pub heap_slope_bytes_per_connection: Option<f64>,
    pub heap_r2: Option<f64>,
    /// Host KernelStack bytes per connection (threads: ~16 KiB each).
    pub kernel_stack_slope_bytes_per_connection: f64,
    /// The kernel's memory for the server's socket of each connection: the host's Slab
    /// slope ÷ its TCP sockets slope (see [`KernelSockets`]). None without /proc readings
    /// or when the host's socket count did not follow the connections.
    pub kernel_socket_bytes_per_connection: Option<f64>,
    /// The slopes it comes from.
    pub kernel_sockets: Option<KernelSockets>,
    /// RSS slope + kernel stack slope + kernel socket memory (each kernel part counted
    /// from 0, a negative slope being noise): what one more idle connection costs the
    /// server's host.
    pub user_plus_kernel_bytes_per_connection: f64,
    /// RSS slope + kernel stack slope, what `user_plus_kernel_bytes_per_connection` was
    /// before the kernel's socket memory was measured.
    pub user_plus_kernel_stack_bytes_per_connection: f64,
    /// Connections per GiB and the memory for 100,000 and 1,000,000 of them.
    pub sizing: Sizing,
    pub threads_at_max: u64,
    pub tasks_alive_at_max: Option<u64>,
    /// What the server answered the generator's permessage-deflate offer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deflate: Option<DeflateAnswers>,
}

impl RunSummary {
    pub fn of(result: &RunResult) -> RunSummary {
        let fit_of = |value: &dyn Fn(&Sample) -> Option<f64>| fit_samples(&result.samples, value);
        let none = Fit {
            slope: 0.0,
            intercept: 0.0,
            r2: 0.0,
        };
        let rss = fit_of(&|s| Some(s.rss_bytes as f64)).unwrap_or(none);
        let heap = fit_of(&|s| s.heap_bytes.map(|bytes| bytes as f64));
        let kernel_stack = fit_of(&|s| Some(s.kernel_stack_bytes as f64)).unwrap_or(none);
        let kernel_sockets = KernelSockets::fit(&result.samples, kernel_stack.slope);
        let kernel_socket_bytes_per_connection = kernel_sockets.and_then(|sockets| sockets.slab_per_socket_bytes);
        let user_plus_kernel =
            rss.slope + kernel_stack.slope.max(0.0) + kernel_socket_bytes_per_connection.unwrap_or(0.0).max(0.0);
        let last = result.samples.last();
        let baseline = result.samples.first().map_or(0, |s| s.rss_bytes);
        RunSummary {
            spec: result.spec.clone(),
            samples: result.samples.clone(),
            slope_bytes_per_connection: rss.slope,
            r2: rss.r2,
            heap_slope_bytes_per_connection: heap.map(|fit| fit.slope),
            heap_r2: heap.map(|fit| fit.r2),
            kernel_stack_slope_bytes_per_connection: kernel_stack.slope,
            kernel_socket_bytes_per_connection,
            kernel_sockets,
            user_plus_kernel_bytes_per_connection: user_plus_kernel,
            user_plus_kernel_stack_bytes_per_connection: rss.slope + kernel_stack.slope,
            sizing: Sizing::of(user_plus_kernel, baseline),
            threads_at_max: last.map_or(0, |s| s.threads),
            tasks_alive_at_max: last.and_then(|s| s.tasks_alive),
            deflate: result.deflate.clone(),
        }
    }

    /// The mode, engine and scheme of a wsscale run.
    pub fn builtin(&self) -> Option<Builtin> {
        self.spec.builtin()
    }
}

/// The kernel's memory for the sockets, from the host's readings at every step: slopes
/// against the connection count, and the share of one socket. Host-wide figures: both
/// ends of a loopback connection are in them (compare's clients run on this host), and so
/// is anything else the host did meanwhile.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KernelSockets {
    /// Host `Slab` bytes per connection (least-squares slope over the steps), and R².
    pub slab_slope_bytes_per_connection: f64,
    pub slab_r2: f64,
    /// Host `SUnreclaim` bytes per connection.
    pub slab_unreclaimable_slope_bytes_per_connection: f64,
    /// sockstat's TCP `mem` bytes per connection: buffered data, ~0 when idle.
    pub tcp_memory_slope_bytes_per_connection: f64,
    /// sockstat's TCP `inuse` per connection: 2 with the clients on this host.
    pub tcp_sockets_per_connection: f64,
    /// Each slope ÷ TCP sockets per connection: one socket's share, the server's.
    pub slab_per_socket_bytes: Option<f64>,
    pub slab_unreclaimable_per_socket_bytes: Option<f64>,
    pub tcp_memory_per_socket_bytes: Option<f64>,
}

/// How the kernel socket row is derived, for the report.
pub const KERNEL_SOCKETS_DERIVATION: &str = "the host's Slab (/proc/meminfo) fitted against connections, divided by \
     the fit of the host's TCP sockets in use (/proc/net/sockstat `inuse`): slab per TCP socket added. On loopback each \
     connection is two sockets, the server's and compare's client's, alike in the kernel, so this is the server's \
     share: one socket's. Host-wide figures: anything else the host did during the run moves them. In threads mode \
     the slab also grows by each thread's kernel structures (task_struct and friends), half of which this division \
     counts here.";

impl KernelSockets {
    /// The fits of the host's readings (None without them), divided as the live page
    /// divides its growth (`wsscale_host::proc::KernelGrowth`).
    fn fit(samples: &[Sample], kernel_stack_slope: f64) -> Option<Self> {
        let fit_of = |value: &dyn Fn(&Sample) -> Option<f64>| fit_samples(samples, value);
        let slab = fit_of(&|s| s.slab_bytes.map(|bytes| bytes as f64))?;
        let unreclaimable = fit_of(&|s| s.slab_unreclaimable_bytes.map(|bytes| bytes as f64))?;
        let tcp_memory = fit_of(&|s| s.tcp_memory_bytes.map(|bytes| bytes as f64))?;
        let sockets = fit_of(&|s| s.tcp_sockets_inuse.map(|count| count as f64))?;
        let growth = KernelGrowth {
            connections: 1.0,
            kernel_stack_bytes: kernel_stack_slope,
            slab_bytes: slab.slope,
            slab_unreclaimable_bytes: unreclaimable.slope,
            tcp_memory_bytes: tcp_memory.slope,
            tcp_sockets: sockets.slope,
        };
        Some(KernelSockets {
            slab_slope_bytes_per_connection: slab.slope,
            slab_r2: slab.r2,
            slab_unreclaimable_slope_bytes_per_connection: unreclaimable.slope,
            tcp_memory_slope_bytes_per_connection: tcp_memory.slope,
            tcp_sockets_per_connection: sockets.slope,
            slab_per_socket_bytes: growth.slab_per_socket(),
            slab_unreclaimable_per_socket_bytes: growth.slab_unreclaimable_per_socket(),
            tcp_memory_per_socket_bytes: growth.tcp_memory_per_socket(),
        })
    }
}

/// The least-squares line of `value` against connections over `samples`; None if a sample
/// lacks the value or fewer than two connection counts were sampled.
fn fit_samples(samples: &[Sample], value: &dyn Fn(&Sample) -> Option<f64>) -> Option<Fit> {
    let points: Option<Vec<(f64, f64)>> = samples
        .iter()
        .map(|s| Some((s.connections as f64, value(s)?)))
        .collect();
    points.and_then(|points| fit::linear(&points))
}

/// One run's cost over another's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratio {
    pub user_memory: f64,
    pub user_plus_kernel_memory: f64,
}

impl Ratio {
    fn of(over: &RunSummary, under: &RunSummary) -> Ratio {
        Ratio {
            user_memory: over.slope_bytes_per_connection / under.slope_bytes_per_connection,
            user_plus_kernel_memory: over.user_plus_kernel_bytes_per_connection
                / under.user_plus_kernel_bytes_per_connection,
        }
    }
}

/// The ratios, for the runs that exist. Keys carry `-wss` for the TLS runs, so the plain
/// runs' keys read as they always have.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    /// threads ÷ tasks, within each engine (and scheme): the execution model.
    pub threads_over_tasks: BTreeMap<String, Ratio>,
    /// tungstenite ÷ lean, within each mode (and scheme): the engine (mostly its buffers).
    pub stock_over_lean: BTreeMap<String, Ratio>,
    /// Every other run ÷ wsscale's lean tasks run of the same scheme, by name.
    pub over_lean_tasks: BTreeMap<String, Ratio>,
    /// Each run over TLS ÷ the same run over plain TCP, by the plain run's name: what TLS
    /// costs.
    pub wss_over_ws: BTreeMap<String, Ratio>,
    /// `--push` with the floor run: each pushing run's CPU per broadcast and delivery p99
    /// ÷ the floor's, by run name, a row per step both measured (same connections).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub push_over_floor: BTreeMap<String, Vec<PushOverFloor>>,
}

/// One step's push figures of a run ÷ the floor's at the same connections; `None` (null)
/// where either figure is not above zero: CPU per broadcast is net of a quiet window, and
/// on a busy machine a small broadcast can read at or below it, a figure no ratio can be
/// taken of.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PushOverFloor {
    pub connections: u64,
    pub cpu_over_floor: Option<f64>,
    pub p99_over_floor: Option<f64>,
}

impl PushOverFloor {
    /// The run's push at this sample ÷ the floor's at the same connection count, if both.
    pub fn at(sample: &Sample, floor: &RunSummary) -> Option<PushOverFloor> {
        let push = sample.push?;
        let under = floor
            .samples
            .iter()
            .find(|floor| floor.connections == sample.connections)?
            .push?;
        Some(PushOverFloor {
            connections: sample.connections,
            cpu_over_floor: ratio(push.cpu_seconds_per_broadcast, under.cpu_seconds_per_broadcast),
            p99_over_floor: ratio(push.push_delivery_p99_ms, under.push_delivery_p99_ms),
        })
    }
}

/// `run ÷ floor`, when both are above zero.
fn ratio(run: f64, floor: f64) -> Option<f64> {
    (run > 0.0 && floor > 0.0).then(|| run / floor)
}

/// `key`, or `key-wss` for a TLS run: how the ratios are keyed.
pub fn keyed(key: impl std::fmt::Display, scheme: Scheme) -> String {
    match scheme {
        Scheme::Ws => key.to_string(),
        Scheme::Wss => format!("{key}-wss"),
    }
}

/// Every run's fits and the ratios between them.
#[derive(Debug, Clone)]
pub struct Summaries {
    /// The servers' runs: what the memory tables, ratios and sizing are of.
    pub runs: Vec<RunSummary>,
    pub ratios: Ratios,
    /// `--push`'s floor run, apart: not a server (it answers upgrades and writes pushes,
    /// nothing else), so only the push table shows it.
    pub push_floor: Option<RunSummary>,
    /// `--push` without the floor: why.
    pub push_floor_missing: Option<String>,
}

impl Summaries {
    pub fn of(results: &[RunResult]) -> Summaries {
        let (floor, results): (Vec<&RunResult>, Vec<&RunResult>) =
            results.iter().partition(|result| result.spec.is_floor());
        let push_floor = floor.first().map(|floor| RunSummary::of(floor));
        let runs: Vec<RunSummary> = results.into_iter().map(RunSummary::of).collect();
        let mut ratios = Ratios::default();
        let find = |builtin: Builtin| runs.iter().find(|run| run.builtin() == Some(builtin));
        for scheme in Scheme::ALL {
            let kind = |mode, engine| find(Builtin::new(mode, engine, scheme));
            for engine in Engine::ALL {
                if let (Some(tasks), Some(threads)) = (kind(Mode::Tasks, engine), kind(Mode::Threads, engine)) {
                    ratios
                        .threads_over_tasks
                        .insert(keyed(engine, scheme), Ratio::of(threads, tasks));
                }
            }
            for mode in Mode::ALL {
                if let (Some(lean), Some(stock)) = (kind(mode, Engine::Lean), kind(mode, Engine::Tungstenite)) {
                    ratios
                        .stock_over_lean
                        .insert(keyed(mode, scheme), Ratio::of(stock, lean));
                }
            }
            if let Some(lean_tasks) = kind(Mode::Tasks, Engine::Lean) {
                for run in runs
                    .iter()
                    .filter(|run| run.spec.scheme == scheme && run.spec.name != lean_tasks.spec.name)
                {
                    ratios
                        .over_lean_tasks
                        .insert(run.spec.name.clone(), Ratio::of(run, lean_tasks));
                }
            }
        }
        for run in &runs {
            if let Some(builtin) = run.builtin().filter(|builtin| builtin.scheme == Scheme::Wss)
                && let Some(plain) = find(builtin.in_scheme(Scheme::Ws))
            {
                ratios
                    .wss_over_ws
                    .insert(plain.spec.name.clone(), Ratio::of(run, plain));
            }
        }
        if let Some(floor) = &push_floor {
            for run in &runs {
                let over: Vec<PushOverFloor> = run
                    .samples
                    .iter()
                    .filter_map(|sample| PushOverFloor::at(sample, floor))
                    .collect();
                if !over.is_empty() {
                    ratios.push_over_floor.insert(run.spec.name.clone(), over);
                }
            }
        }
        Summaries {
            runs,
            ratios,
            push_floor,
            push_floor_missing: None,
        }
    }

    /// A wsscale run, if it ran.
    pub fn builtin(&self, builtin: Builtin) -> Option<&RunSummary> {
        self.runs.iter().find(|run| run.builtin() == Some(builtin))
    }
}
