//! A pool of held connections in this process: [`Pool::open`] ramps more of them in at
//! a rate with bounded handshakes in flight and returns once each attempt has opened or
//! failed; [`Pool::close_all`] releases them all (close 1000) and waits. `wsscale load`
//! opens once and holds; `wsscale compare` grows a pool step by step.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{self, ClientSettings, Tungstenite};
use crate::deflate::Offering;
use crate::stats::Stats;

pub struct Pool {
    settings: Arc<ClientSettings>,
    sources: Vec<IpAddr>,
    stats: Arc<Stats>,
    /// Cancelled to make every held connection close.
    release: CancellationToken,
    tracker: TaskTracker,
    /// Global index of the next connection (picks its source address and ping phase).
    next_index: usize,
}

/// How a ramp went.
#[derive(Debug, Clone, Copy)]
pub struct Ramp {
    pub attempted: usize,
    /// From the first attempt to the last attempt finishing.
    pub duration: Duration,
    pub interrupted: bool,
}

impl Pool {
    pub fn new(settings: ClientSettings, sources: Vec<IpAddr>, first_index: usize, stats: Arc<Stats>) -> Self {
        Pool {
            settings: Arc::new(settings),
            sources,
            stats,
            release: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_index: first_index,
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Starts `count` more connections, `rate` per second (0: unpaced) with at most
    /// `concurrency` connecting at once; returns when every attempt has finished or
    /// `stop` is cancelled.
    pub async fn open(&mut self, count: usize, rate: f64, concurrency: usize, stop: &CancellationToken) -> Ramp {
        let in_flight = Arc::new(Semaphore::new(concurrency.max(1)));
        let (attempted_tx, mut attempted_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let started = Instant::now();
        let mut interrupted = false;
        let mut launched = 0;
        while launched < count {
            if rate > 0.0 {
                let due = started + Duration::from_secs_f64(launched as f64 / rate);
                tokio::select! {
                    _ = stop.cancelled() => { interrupted = true; break; }
                    () = tokio::time::sleep_until(due.into()) => {}
                }
            }
            let permit = tokio::select! {
                _ = stop.cancelled() => { interrupted = true; break; }
                permit = in_flight.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            let index = self.next_index;
            self.next_index += 1;
            launched += 1;
            let source = (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()]);
            let (settings, phase, stats) = (self.settings.clone(), self.ping_phase(index), self.stats.clone());
            let (attempted, release) = (attempted_tx.clone(), self.release.clone());
            // Each client stack gets its own task type, so a run that does not offer
            // permessage-deflate holds exactly the task it held before the offer existed.
            if settings.offer_deflate.is_some() {
                self.tracker.spawn(client::run::<Offering>(
                    settings, source, phase, stats, permit, attempted, release,
                ));
            } else {
                self.tracker.spawn(client::run::<Tungstenite>(
                    settings, source, phase, stats, permit, attempted, release,
                ));
            }
        }
        drop(attempted_tx);
        // Each connection task drops its sender once open or failed; the channel closes
        // when every attempt has finished.
        if !interrupted {
            tokio::select! {
                _ = stop.cancelled() => interrupted = true,
                None = attempted_rx.recv() => {}
            }
        }
        Ramp {
            attempted: launched,
            duration: started.elapsed(),
            interrupted,
        }
    }

    /// Spreads the connections' pings evenly over one interval (golden-ratio sequence),
    /// so the server sees a steady ping rate rather than bursts.
    fn ping_phase(&self, index: usize) -> Duration {
        let interval = self.settings.ping_interval.unwrap_or_default();
        interval.mul_f64((index as f64 * 0.618_033_988_749_895).fract())
    }

    /// Closes every held connection with 1000 and waits up to `timeout` for them.
    pub async fn close_all(&self, timeout: Duration) {
        self.release.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(timeout, self.tracker.wait()).await;
    }
}
