//! A drain a balancer can follow (`--drain-delay`).
//!
//! A balancer stops sending new clients to a replica only once its health checks have
//! seen it fail, and a replica that stops accepting before that turns every client sent
//! its way into a failed attempt. So on the first SIGINT or SIGTERM the server first
//! marks itself [`Draining`] — GET /healthz answers 503 — and keeps serving and accepting
//! for the drain delay, long enough for the balancer's checks (or a Kubernetes readiness
//! probe) to take it out; only then does the shutdown proper begin (no new connections,
//! 1001 to every session, the drain timeout). A second signal during the delay skips the
//! rest of it: whoever presses Ctrl-C twice wants it to hurry. With a delay of 0 the
//! shutdown begins at once, as it did before the flag existed; /healthz answers 503
//! during the drain either way.
//!
//! This module imports nothing from the rest of the crate: `server::run` calls
//! [`stop_requested`] with the server's [`StopRequests`], and the metrics listener reads
//! the [`Draining`] flag.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Set once the server has been asked to stop; GET /healthz answers 503 from then on.
/// One per server, cloned into the signal task and the metrics listener.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on the server reports itself as draining.
    pub fn begin(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Requests to stop, in the order they come: the first starts the drain, a second cuts
/// its delay short. `wsscale serve` takes them from SIGINT and SIGTERM ([`Signals`]); a
/// program that runs a server itself, from a channel.
pub trait StopRequests: Send + 'static {
    /// The next request, by name (for the log); never resolves when none will come.
    fn next(&mut self) -> impl Future<Output = &'static str> + Send;
}

/// SIGINT and SIGTERM, installed once so that no signal between the first and the second
/// wait is missed.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }
}

impl StopRequests for Signals {
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// A channel's messages, for a program that runs a server itself (and the tests). A
/// closed channel sends no more requests.
impl StopRequests for tokio::sync::mpsc::UnboundedReceiver<()> {
    async fn next(&mut self) -> &'static str {
        match self.recv().await {
            Some(()) => "stop request",
            None => std::future::pending().await,
        }
    }
}

/// Waits for the first request to stop, marks `draining`, then waits out `delay` (cut
/// short by a second request) while the server still serves and accepts. Returns the
/// first request's name when the shutdown proper should begin.
pub async fn stop_requested(mut stops: impl StopRequests, delay: Duration, draining: &Draining) -> &'static str {
    let first = stops.next().await;
    drain_delay(first, delay, draining, stops.next()).await;
    first
}

/// The drain delay after the first signal: `draining` is set at once; returns after
/// `delay`, or as soon as `second` (the next signal) resolves.
async fn drain_delay(first: &str, delay: Duration, draining: &Draining, second: impl Future<Output = &'static str>) {
    draining.begin();
    if delay.is_zero() {
        return;
    }
    tracing::info!(
        signal = first,
        ?delay,
        "draining: /healthz answers 503 so balancers take this server out; still serving and accepting \
         until the drain delay is over (a second signal skips the rest)"
    );
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        signal = second => tracing::info!(signal, "second signal: skipping the rest of the drain delay"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    // Real time, bounded on the side that cannot race: a delay lasts at least itself, and
    // one cut short ends long before it would have.
    #[tokio::test]
    async fn the_delay_runs_out_unless_a_second_signal_cuts_it_short() {
        let draining = Draining::new();
        assert!(!draining.is_draining());
        let started = Instant::now();
        drain_delay("SIGTERM", Duration::from_millis(200), &draining, std::future::pending()).await;
        assert!(draining.is_draining(), "draining from the first signal on");
        assert!(started.elapsed() >= Duration::from_millis(200));

        let draining = Draining::new();
        let started = Instant::now();
        let second = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            "SIGINT"
        };
        drain_delay("SIGTERM", Duration::from_secs(600), &draining, second).await;
        assert!(draining.is_draining());
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the second signal ends the delay"
        );

        let draining = Draining::new();
        let started = Instant::now();
        drain_delay("SIGTERM", Duration::ZERO, &draining, std::future::pending()).await;
        assert!(draining.is_draining(), "503 during the drain even without a delay");
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no delay: the shutdown begins at once"
        );
    }
}
