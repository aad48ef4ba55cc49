//! Live progress: an indicatif bar on a terminal, a plain line per second otherwise
//! (CI logs, pipes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::stats::Progress;

pub enum Display {
    Bar(ProgressBar),
    Lines {
        target: u64,
        last_line: Instant,
        started: Instant,
    },
    Silent,
}

impl Display {
    pub fn new(target: u64, quiet: bool) -> Self {
        if quiet {
            Display::Silent
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(target);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} opened  {per_sec}  {msg}",
                )
                .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Display::Bar(bar)
        } else {
            let now = Instant::now();
            Display::Lines {
                target,
                last_line: now,
                started: now,
            }
        }
    }

    pub fn update(&mut self, phase: &str, totals: &Progress) {
        let mut detail = format!(
            "{phase}: open {} failed {} lost {}",
            totals.open_now, totals.failed, totals.lost
        );
        if totals.reconnected > 0 || !totals.reconnect_failures.is_empty() {
            let failed: u64 = totals.reconnect_failures.values().sum();
            detail += &format!(" reconnected {} (attempts failed {failed})", totals.reconnected);
        }
        match self {
            Display::Bar(bar) => {
                bar.set_position(totals.opened);
                bar.set_message(detail);
            }
            Display::Lines {
                target,
                last_line,
                started,
            } => {
                if last_line.elapsed() >= Duration::from_secs(1) {
                    *last_line = Instant::now();
                    eprintln!(
                        "[{:>6.1}s] opened {}/{}  {detail}",
                        started.elapsed().as_secs_f64(),
                        totals.opened,
                        target
                    );
                }
            }
            Display::Silent => {}
        }
    }

    pub fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
