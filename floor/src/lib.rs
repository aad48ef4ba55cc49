//! wsscale-floor: the floor a broadcast is measured against (issue 24,
//! `scripts/bench-push.sh`). Two small programs, built on what this library holds:
//!
//! - `floor-sender`: accepts connections on /ws, answers each upgrade with a 101, and on
//!   `POST /broadcast?size=BYTES` writes one push frame, encoded once, to every socket from
//!   a few threads, each write one plain `send()`: what a broadcast costs when a server adds
//!   nothing to the kernel's own path.
//! - `floor-receiver`: opens N connections to any WebSocket server on loopback, upgrades
//!   them by hand, then waits in epoll and times every push by the send time it carries
//!   ([`wsscale_wire::push`], so the payload is defined once), counts the pushes each
//!   connection missed, and answers pings. The same receiver reads wsscale and the sender,
//!   so the two are compared on one clock and one client cost.
//!
//! The library: [`frame`] (RFC 6455 frames: encoding, and a reader that takes a server's
//! byte stream however the reads split it), [`handshake`] (the upgrade, both sides), and
//! [`thread_cpu_time`].

pub mod frame;
pub mod handshake;

use std::time::Duration;

/// CPU time (user + system) of the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into a valid, exclusively borrowed value.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if result != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Sets the flag on the first SIGINT or SIGTERM; the programs poll it between waits.
pub fn stop_on_signal(flag: &'static std::sync::atomic::AtomicBool) {
    use std::sync::atomic::{AtomicPtr, Ordering};
    static FLAG: AtomicPtr<std::sync::atomic::AtomicBool> = AtomicPtr::new(std::ptr::null_mut());
    extern "C" fn on_signal(_: libc::c_int) {
        let flag = FLAG.load(Ordering::Acquire);
        if !flag.is_null() {
            // SAFETY: FLAG only ever holds a pointer to a `'static` AtomicBool; storing to an
            // atomic is async-signal-safe.
            unsafe { (*flag).store(true, Ordering::Release) };
        }
    }
    FLAG.store(
        (flag as *const std::sync::atomic::AtomicBool).cast_mut(),
        Ordering::Release,
    );
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an atomic; no
        // SA_RESTART, so a blocking epoll_wait returns EINTR and the loop sees the flag.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
