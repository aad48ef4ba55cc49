//! The run loop both differential fuzz harnesses share (tests/fuzz.rs, tests/fuzz_tls.rs):
//! the variables that drive them, case seeds from one run seed, a deadline, a panic
//! caught as the failure of its case, a progress line a minute, and the replay command.
//!
//! - `WSSCALE_FUZZ_SECONDS` (default 3): how long to run;
//! - `WSSCALE_FUZZ_SEED`: the run's seed (a fresh one otherwise; the run prints it);
//! - `WSSCALE_FUZZ_CASE`: replay this one case and nothing else.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

/// What a seeded run did: the harness prints its own figures from `stats`.
pub(crate) struct Finished<S> {
    pub(crate) stats: S,
    pub(crate) seed: u64,
    pub(crate) iterations: u64,
    pub(crate) elapsed: Duration,
}

/// Runs `check` on case seeds until the deadline (or the one case of
/// `WSSCALE_FUZZ_CASE`, after printing `describe` of it: then `None`). `check` returns a
/// failure with what the reader needs of its case; the first failure or panic fails the
/// test with the replay command of test binary `name`. `progress` adds to the minute's
/// progress line.
pub(crate) fn run<S: Default + std::fmt::Debug>(
    name: &str,
    describe: impl Fn(u64) -> String,
    mut check: impl FnMut(u64, &mut S) -> Result<(), String>,
    progress: impl Fn(&S) -> String,
) -> Option<Finished<S>> {
    if let Some(case_seed) = env_u64("WSSCALE_FUZZ_CASE") {
        let mut stats = S::default();
        eprintln!("{name}: case {case_seed}: {}", describe(case_seed));
        if let Err(failure) = check(case_seed, &mut stats) {
            panic!("{name}: case {case_seed} fails: {failure}");
        }
        eprintln!("{name}: case {case_seed} passes: {stats:?}");
        return None;
    }
    let seconds = env_u64("WSSCALE_FUZZ_SECONDS").unwrap_or(3);
    let seed = env_u64("WSSCALE_FUZZ_SEED").unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        nanos as u64 ^ u64::from(std::process::id())
    });
    eprintln!("{name}: seed {seed}, {seconds} s (WSSCALE_FUZZ_SEED={seed} repeats this run)");
    let mut seeds = fastrand::Rng::with_seed(seed);
    let mut stats = S::default();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut next_report = start + Duration::from_secs(60);
    let mut iterations: u64 = 0;
    while Instant::now() < deadline {
        let case_seed = seeds.u64(..);
        let failure = match catch_unwind(AssertUnwindSafe(|| check(case_seed, &mut stats))) {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(_) => Some("panicked (message above)".to_owned()),
        };
        if let Some(failure) = failure {
            panic!(
                "{name}: case {case_seed} (iteration {iterations} of seed {seed}) fails: {failure}\n\
                 replay: WSSCALE_FUZZ_CASE={case_seed} cargo test --test {name} -- --nocapture"
            );
        }
        iterations += 1;
        if Instant::now() >= next_report {
            eprintln!(
                "{name}: {iterations} cases{} in {:.0?}, seed {seed}",
                progress(&stats),
                start.elapsed()
            );
            next_report += Duration::from_secs(60);
        }
    }
    Some(Finished {
        stats,
        seed,
        iterations,
        elapsed: start.elapsed(),
    })
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}
