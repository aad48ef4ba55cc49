//! The limits that decide how many connections a process can hold: its file-descriptor
//! limit (raised to the hard limit at start), and for thread-per-connection the kernel's
//! vm.max_map_count, pid_max and threads-max. A cap derived from them is enforced with
//! permits, so a client beyond it gets a 503 instead of the server failing half way.

use std::fmt;

use crate::config::Mode;
use crate::procfs::{self, FdLimit};

/// Descriptors kept free for the listeners, /proc reads, metrics scrapes and for
/// answering the clients beyond the cap with a 503.
pub const FD_RESERVE: u64 = 256;
/// Memory maps one connection thread adds: its stack and the stack's guard page, its
/// signal stack and that stack's guard page (measured here: 2,000 threads added 8,028
/// maps). glibc's malloc arenas, a few for the whole process, come out of the reserve.
pub const MAPS_PER_THREAD: u64 = 4;
/// Maps, pids and threads kept for everything else on the host.
pub const KERNEL_RESERVE: u64 = 1024;

/// The limit that bounds the connection count, for the startup log and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    FileDescriptors,
    MaxMapCount,
    PidMax,
    ThreadsMax,
    Flag,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bound::FileDescriptors => "RLIMIT_NOFILE (ulimit -n)",
            Bound::MaxMapCount => "vm.max_map_count (sysctl -w vm.max_map_count=N)",
            Bound::PidMax => "kernel.pid_max (sysctl -w kernel.pid_max=N)",
            Bound::ThreadsMax => "kernel.threads-max (sysctl -w kernel.threads-max=N)",
            Bound::Flag => "--max-connections",
        })
    }
}

/// How many connections fit, and which limit says so.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub max_connections: usize,
    pub bound: Bound,
}

/// The largest connection count each limit allows for `mode` in this process now.
pub fn capacity(mode: Mode, fd: FdLimit) -> Capacity {
    let mut best = Capacity {
        max_connections: fd.soft.saturating_sub(FD_RESERVE) as usize,
        bound: Bound::FileDescriptors,
    };
    if mode == Mode::Threads {
        let mut consider = |room: Option<u64>, bound: Bound| {
            if let Some(room) = room
                && (room as usize) < best.max_connections
            {
                best = Capacity {
                    max_connections: room as usize,
                    bound,
                };
            }
        };
        let maps = procfs::sysctl("vm/max_map_count")
            .ok()
            .zip(procfs::self_map_count().ok());
        consider(
            maps.map(|(max, used)| max.saturating_sub(used + KERNEL_RESERVE) / MAPS_PER_THREAD),
            Bound::MaxMapCount,
        );
        let host_threads = procfs::host_threads().ok();
        let pid_max = procfs::sysctl("kernel/pid_max").ok();
        consider(
            pid_max
                .zip(host_threads)
                .map(|(max, used)| max.saturating_sub(used + KERNEL_RESERVE)),
            Bound::PidMax,
        );
        let threads_max = procfs::sysctl("kernel/threads-max").ok();
        consider(
            threads_max
                .zip(host_threads)
                .map(|(max, used)| max.saturating_sub(used + KERNEL_RESERVE)),
            Bound::ThreadsMax,
        );
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_mode_never_allows_more_than_tasks_mode() {
        let fd = FdLimit {
            soft_before: 1024,
            soft: 1_000_000,
            hard: 1_000_000,
        };
        let tasks = capacity(Mode::Tasks, fd);
        let threads = capacity(Mode::Threads, fd);
        assert_eq!(tasks.bound, Bound::FileDescriptors);
        assert_eq!(tasks.max_connections, 1_000_000 - FD_RESERVE as usize);
        // On any real host a million threads hit a kernel limit first.
        assert_ne!(threads.bound, Bound::FileDescriptors);
        assert!(threads.max_connections < tasks.max_connections);
    }
}
