//! The report's charts, as SVG (plotters): memory vs connections, threads and tasks vs
//! connections, and memory per connection by component, one colour per run. Each has a
//! title, axis labels with units and a legend.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::summary::{RunSummary, Summaries};

pub const MEMORY_CHART: &str = "memory_vs_connections.svg";
pub const THREADS_CHART: &str = "threads_and_tasks_vs_connections.svg";
pub const PER_CONNECTION_CHART: &str = "memory_per_connection.svg";
pub const PUSH_CHART: &str = "push_vs_connections.svg";

const SIZE: (u32, u32) = (900, 560);
/// One colour per run, in the order measured (tab10).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn run_color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// One chart: its file in the report's folder, its title, and the SVG itself (which
/// index.html carries inline).
#[derive(Debug, Clone)]
pub struct Chart {
    pub file: String,
    pub title: String,
    pub svg: String,
}

type Draw = fn(&mut String, &str, &Summaries) -> Result<(), String>;

/// Draws every chart and writes each into `out`.
pub fn write_all(out: &Path, summaries: &Summaries) -> anyhow::Result<Vec<Chart>> {
    let mut charts: Vec<(&str, &str, Draw)> = vec![
        (MEMORY_CHART, "Server memory vs idle connections", memory),
        (
            THREADS_CHART,
            "OS threads and Tokio tasks vs connections",
            threads_and_tasks,
        ),
        (
            PER_CONNECTION_CHART,
            "Memory per idle connection, by component",
            per_connection,
        ),
    ];
    let pushed = summaries
        .runs
        .iter()
        .flat_map(|run| &run.samples)
        .any(|s| s.push.is_some());
    if pushed {
        charts.push((
            PUSH_CHART,
            "Server push: delivery p99 and CPU per broadcast vs connections",
            push,
        ));
    }
    let mut written = Vec::new();
    for (file, title, draw) in charts {
        let mut svg = String::new();
        draw(&mut svg, title, summaries).map_err(|error| anyhow::anyhow!("drawing {file}: {error}"))?;
        let path = out.join(file);
        std::fs::write(&path, &svg).with_context(|| format!("writing {}", path.display()))?;
        written.push(Chart {
            file: file.to_owned(),
            title: title.to_owned(),
            svg,
        });
    }
    Ok(written)
}

/// One line of a line chart: solid lines are drawn first, dashed ones (with markers) on
/// top, so a series that coincides with another stays visible.
struct Line {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

impl Line {
    /// A line of the run at `index`, in that run's colour.
    fn of_run(index: usize, label: String, dashed: bool, points: Vec<(f64, f64)>) -> Self {
        Line {
            label,
            color: run_color(index),
            dashed,
            points,
        }
    }
}

fn memory(svg: &mut String, title: &str, summaries: &Summaries) -> Result<(), String> {
    const MIB: f64 = 1048576.0;
    // User memory, and user + the kernel stacks added since the first step.
    let lines = summaries
        .runs
        .iter()
        .enumerate()
        .flat_map(|(index, result)| {
            let name = &result.spec.name;
            let base_stack = result.samples.first().map_or(0, |s| s.kernel_stack_bytes) as f64;
            let rss = result
                .samples
                .iter()
                .map(|s| (s.connections as f64, s.rss_bytes as f64 / MIB))
                .collect();
            let with_kernel = result
                .samples
                .iter()
                .map(|s| {
                    (
                        s.connections as f64,
                        (s.rss_bytes as f64 + s.kernel_stack_bytes as f64 - base_stack) / MIB,
                    )
                })
                .collect();
            [
                Line::of_run(index, format!("{name}: RSS"), false, rss),
                Line::of_run(index, format!("{name}: RSS + kernel stacks"), true, with_kernel),
            ]
        })
        .collect();
    line_chart(svg, title, "memory (MiB)", lines)
}

/// `--push`: delivery p99 (solid) and the server's CPU time per broadcast (dashed), both
/// in milliseconds, per run.
fn push(svg: &mut String, title: &str, summaries: &Summaries) -> Result<(), String> {
    let lines = summaries
        .runs
        .iter()
        .enumerate()
        .flat_map(|(index, run)| {
            let pushed: Vec<_> = run
                .samples
                .iter()
                .filter_map(|s| Some((s.connections as f64, s.push?)))
                .collect();
            if pushed.is_empty() {
                return Vec::new();
            }
            let name = &run.spec.name;
            vec![
                Line::of_run(
                    index,
                    format!("{name}: delivery p99 (ms)"),
                    false,
                    pushed.iter().map(|(n, p)| (*n, p.push_delivery_p99_ms)).collect(),
                ),
                Line::of_run(
                    index,
                    format!("{name}: CPU per broadcast (ms)"),
                    true,
                    pushed
                        .iter()
                        .map(|(n, p)| (*n, p.cpu_seconds_per_broadcast.max(0.0) * 1000.0))
                        .collect(),
                ),
            ]
        })
        .collect();
    line_chart(svg, title, "milliseconds", lines)
}

fn threads_and_tasks(svg: &mut String, title: &str, summaries: &Summaries) -> Result<(), String> {
    let lines = summaries
        .runs
        .iter()
        .enumerate()
        .flat_map(|(index, result)| {
            let name = &result.spec.name;
            let threads = result
                .samples
                .iter()
                .map(|s| (s.connections as f64, s.threads as f64))
                .collect();
            let tasks: Option<Vec<(f64, f64)>> = result
                .samples
                .iter()
                .map(|s| Some((s.connections as f64, s.tasks_alive? as f64)))
                .collect();
            let threads = Line::of_run(index, format!("{name}: OS threads"), false, threads);
            let tasks = tasks.map(|points| Line::of_run(index, format!("{name}: Tokio tasks alive"), true, points));
            std::iter::once(threads).chain(tasks)
        })
        .collect();
    line_chart(svg, title, "count (threads, tasks)", lines)
}

fn line_chart(svg: &mut String, title: &str, y_desc: &str, mut lines: Vec<Line>) -> Result<(), String> {
    lines.sort_by_key(|line| line.dashed);
    let x_max = lines.iter().flat_map(|l| &l.points).map(|p| p.0).fold(1.0, f64::max) * 1.02;
    let y_max = lines.iter().flat_map(|l| &l.points).map(|p| p.1).fold(1.0, f64::max) * 1.1;
    // Enough decimals that small values (milliseconds of a push) get distinct labels.
    let precision = if y_max < 10.0 {
        2
    } else if y_max < 100.0 {
        1
    } else {
        0
    };
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("idle connections")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.precision$}"))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    for Line {
        label,
        color,
        dashed,
        points,
    } in lines
    {
        let style = color.stroke_width(if dashed { 2 } else { 4 });
        let drawn = if dashed {
            chart.draw_series(DashedLineSeries::new(points.clone(), 8, 6, style))
        } else {
            chart.draw_series(LineSeries::new(points.clone(), style))
        };
        drawn
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        if dashed {
            chart.draw_series(points.into_iter().map(|p| TriangleMarker::new(p, 6, color.filled())))
        } else {
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled())))
        }
        .map_err(|e| e.to_string())?;
    }
    legend(&mut chart)?;
    root.present().map_err(|e| e.to_string())
}

fn per_connection(svg: &mut String, title: &str, summaries: &Summaries) -> Result<(), String> {
    let summaries = &summaries.runs;
    const COMPONENTS: [(&str, RGBColor); 4] = [
        ("user RSS", RGBColor(44, 160, 44)),
        ("of which heap", RGBColor(255, 127, 14)),
        ("kernel stack", RGBColor(148, 103, 189)),
        ("kernel socket (slab per socket)", RGBColor(140, 86, 75)),
    ];
    let values = |summary: &RunSummary| {
        [
            summary.slope_bytes_per_connection,
            summary.heap_slope_bytes_per_connection.unwrap_or(0.0),
            summary.kernel_stack_slope_bytes_per_connection.max(0.0),
            summary.kernel_socket_bytes_per_connection.unwrap_or(0.0),
        ]
        .map(|bytes| bytes.max(0.0) / 1024.0)
    };
    let y_max = summaries.iter().flat_map(values).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let names: Vec<String> = summaries.iter().map(|run| run.spec.name.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(-0.5..summaries.len() as f64 - 0.5, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(summaries.len().max(2) * 2 + 1)
        .x_label_formatter(&|x| {
            let index = x.round();
            if (x - index).abs() < 0.01 && index >= 0.0 {
                names.get(index as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("server (execution model - engine)")
        .y_desc("bytes per connection (KiB)")
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    const BAR: f64 = 0.2;
    for (component, (name, color)) in COMPONENTS.iter().enumerate() {
        let left = |mode: usize| mode as f64 - 2.0 * BAR + component as f64 * BAR;
        chart
            .draw_series(summaries.iter().enumerate().map(|(mode, summary)| {
                Rectangle::new(
                    [(left(mode), 0.0), (left(mode) + BAR * 0.9, values(summary)[component])],
                    color.filled(),
                )
            }))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.filled()));
        chart
            .draw_series(summaries.iter().enumerate().map(|(mode, summary)| {
                let value = values(summary)[component];
                Text::new(
                    format!("{value:.1}"),
                    (left(mode), value + y_max * 0.01),
                    ("sans-serif", 14),
                )
            }))
            .map_err(|e| e.to_string())?;
    }
    legend(&mut chart)?;
    root.present().map_err(|e| e.to_string())
}

type Plane = Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>;

fn legend<'a, DB: DrawingBackend + 'a>(chart: &mut ChartContext<'a, DB, Plane>) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())
}
