//! What the samples come to: each run's fits (bytes per connection with R², heap and
//! kernel stack) and the ratios a reader needs — threads ÷ tasks within each engine,
//! stock ÷ lean within each mode, wss ÷ ws for each run, and every other run ÷ wsscale's
//! lean tasks run. Every ratio compares runs of one scheme (wss ÷ ws aside): keys name
//! the engine, mode or run, with `-wss` for the TLS runs. Computed once, for the table,
//! the report and the charts.

use std::collections::BTreeMap;

use serde::Serialize;

use super::fit::{self, Fit};
use super::measure::{RunResult, Sample};
use super::plan::{Builtin, RunSpec};
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
    /// RSS slope + kernel stack slope.
    pub user_plus_kernel_bytes_per_connection: f64,
    pub threads_at_max: u64,
    pub tasks_alive_at_max: Option<u64>,
}

impl RunSummary {
    pub fn of(result: &RunResult) -> RunSummary {
        let fit_of = |value: &dyn Fn(&Sample) -> Option<f64>| {
            let points: Option<Vec<(f64, f64)>> = result
                .samples
                .iter()
                .map(|s| Some((s.connections as f64, value(s)?)))
                .collect();
            points.and_then(|points| fit::linear(&points))
        };
        let none = Fit {
            slope: 0.0,
            intercept: 0.0,
            r2: 0.0,
        };
        let rss = fit_of(&|s| Some(s.rss_bytes as f64)).unwrap_or(none);
        let heap = fit_of(&|s| s.heap_bytes.map(|bytes| bytes as f64));
        let kernel_stack = fit_of(&|s| Some(s.kernel_stack_bytes as f64)).unwrap_or(none);
        let last = result.samples.last();
        RunSummary {
            spec: result.spec.clone(),
            samples: result.samples.clone(),
            slope_bytes_per_connection: rss.slope,
            r2: rss.r2,
            heap_slope_bytes_per_connection: heap.map(|fit| fit.slope),
            heap_r2: heap.map(|fit| fit.r2),
            kernel_stack_slope_bytes_per_connection: kernel_stack.slope,
            user_plus_kernel_bytes_per_connection: rss.slope + kernel_stack.slope,
            threads_at_max: last.map_or(0, |s| s.threads),
            tasks_alive_at_max: last.and_then(|s| s.tasks_alive),
        }
    }

    /// The mode, engine and scheme of a wsscale run.
    pub fn builtin(&self) -> Option<Builtin> {
        self.spec.builtin()
    }
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
    pub runs: Vec<RunSummary>,
    pub ratios: Ratios,
}

impl Summaries {
    pub fn of(results: &[RunResult]) -> Summaries {
        let runs: Vec<RunSummary> = results.iter().map(RunSummary::of).collect();
        let mut ratios = Ratios::default();
        let find = |builtin: Builtin| runs.iter().find(|run| run.builtin() == Some(builtin));
        for scheme in Scheme::ALL {
            let kind = |mode, engine| find(Builtin { mode, engine, scheme });
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
        Summaries { runs, ratios }
    }

    /// A wsscale run, if it ran.
    pub fn builtin(&self, builtin: Builtin) -> Option<&RunSummary> {
        self.runs.iter().find(|run| run.builtin() == Some(builtin))
    }
}
