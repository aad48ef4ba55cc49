//! When a held connection that was lost tries again (`--reconnect`, issue #12): jittered
//! exponential backoff, with a longer wait when the server asks for one.
//!
//! - After an ordinary loss (close 1001 from a server that stops, a reset, an EOF) and
//!   after each failed attempt, attempt `n` (0 first) waits a uniform random time in
//!   `[0, min(5 s, 100 ms × 2^n))` — "full jitter": 100, 200, 400 ms … up to 5 s. The
//!   first attempt is jittered too, so thousands of connections dropped at once by a
//!   restart do not come back in one burst.
//! - "Try again later": close 1012 (service restart) or 1013 (try again later), or an
//!   HTTP 503 answer, wait `[1 s, 6 s)`; an HTTP 503 with `Retry-After: S` (delta
//!   seconds) waits `[S, S + 5 s)`.
//!
//! Attempts go on until the hold ends. The policy is pure (a function of the attempt, the
//! server's hint and a uniform draw) so it is tested without sockets; the draws come from
//! a process-wide counter fed through SplitMix64, so a connection keeps no generator state.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first attempt's ceiling; it doubles per failed attempt.
pub const BASE: Duration = Duration::from_millis(100);
/// The ceiling's cap, and the spread added to a "try again later" wait.
pub const CAP: Duration = Duration::from_secs(5);
/// The least wait when the server said to try again later without saying when.
pub const LATER_FLOOR: Duration = Duration::from_secs(1);

/// What the server said about coming back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Nothing: a reset, an EOF, close 1001 or another code, a refused connect.
    None,
    /// Close 1012 or 1013, or HTTP 503 without Retry-After.
    Later,
    /// HTTP 503 with `Retry-After`.
    RetryAfter(Duration),
}

impl Hint {
    /// The hint of a close code.
    pub fn of_close_code(code: u16) -> Hint {
        match code {
            1012 | 1013 => Hint::Later,
            _ => Hint::None,
        }
    }
}

/// The wait before attempt `attempt` (0 for the first after the loss), given the last
/// hint and `uniform`, a draw in [0, 1).
pub fn delay(attempt: u32, hint: Hint, uniform: f64) -> Duration {
    // Truncated to whole nanoseconds, so the wait stays below its ceiling.
    let part_of = |ceiling: Duration| Duration::from_nanos((ceiling.as_nanos() as f64 * uniform) as u64);
    match hint {
        Hint::None => part_of(BASE.saturating_mul(1 << attempt.min(16)).min(CAP)),
        Hint::Later => LATER_FLOOR + part_of(CAP),
        Hint::RetryAfter(after) => after + part_of(CAP),
    }
}

/// `Retry-After` in delta seconds (the HTTP-date form is not read: None).
pub fn parse_retry_after(value: &[u8]) -> Option<Duration> {
    let seconds: u32 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(u64::from(seconds)))
}

/// A uniform draw in [0, 1): SplitMix64 over a process-wide counter, seeded once from
/// the clock and the pid so that shards and segments draw differently.
pub fn uniform() -> f64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    });
    let draw = splitmix64(seed.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed)));
    // The top 53 bits as a fraction: exactly representable, below 1.
    (draw >> 11) as f64 / (1u64 << 53) as f64
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALMOST_ONE: f64 = 1.0 - f64::EPSILON;

    #[test]
    fn ordinary_losses_back_off_exponentially_with_full_jitter() {
        for (attempt, ceiling_ms) in [(0, 100), (1, 200), (2, 400), (5, 3200), (6, 5000), (40, 5000)] {
            assert_eq!(
                delay(attempt, Hint::None, 0.0),
                Duration::ZERO,
                "full jitter starts at 0"
            );
            let longest = delay(attempt, Hint::None, ALMOST_ONE);
            assert!(
                longest < Duration::from_millis(ceiling_ms),
                "attempt {attempt}: {longest:?}"
            );
            assert!(
                longest > Duration::from_millis(ceiling_ms - 1),
                "attempt {attempt}: {longest:?}"
            );
        }
        assert_eq!(delay(0, Hint::None, 0.5), Duration::from_millis(50));
    }

    #[test]
    fn try_again_later_waits_longer() {
        assert_eq!(Hint::of_close_code(1012), Hint::Later);
        assert_eq!(Hint::of_close_code(1013), Hint::Later);
        assert_eq!(Hint::of_close_code(1001), Hint::None);
        assert_eq!(Hint::of_close_code(1006), Hint::None);
        assert_eq!(delay(0, Hint::Later, 0.0), Duration::from_secs(1));
        assert!(delay(0, Hint::Later, ALMOST_ONE) < Duration::from_secs(6));
        let after = Hint::RetryAfter(Duration::from_secs(30));
        assert_eq!(delay(3, after, 0.0), Duration::from_secs(30));
        assert!(delay(3, after, ALMOST_ONE) < Duration::from_secs(35));
    }

    #[test]
    fn reads_retry_after_in_seconds() {
        assert_eq!(parse_retry_after(b"120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(b" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after(b"-1"), None);
    }

    #[test]
    fn draws_are_uniform_enough() {
        let draws: Vec<f64> = (0..10_000).map(|_| uniform()).collect();
        assert!(draws.iter().all(|draw| (0.0..1.0).contains(draw)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        // Every tenth of the interval gets its share (1,000 ± 150).
        let mut deciles = [0u32; 10];
        for draw in &draws {
            deciles[(draw * 10.0) as usize] += 1;
        }
        assert!(deciles.iter().all(|&n| (850..1150).contains(&n)), "{deciles:?}");
    }
}
