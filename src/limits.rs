//! The limits that decide how many connections a process can hold: its file-descriptor
//! limit (raised to the hard limit at start), and for thread-per-connection the kernel's
//! vm.max_map_count, pid_max and threads-max. A cap derived from them is enforced with
//! permits, so a client beyond it gets a 503 instead of the server failing half way.

use std::fmt;

use wsscale_host::fd::FdLimit;
use wsscale_host::proc::KernelLimits;

use crate::config::Mode;

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

/// The largest connection count each limit allows for `mode`, given the process's fd
/// limit and (for threads mode) the kernel's limits; `None` when they could not be read.
pub fn capacity(mode: Mode, fd: FdLimit, kernel: Option<KernelLimits>) -> Capacity {
    let mut best = Capacity {
        max_connections: fd.soft.saturating_sub(FD_RESERVE) as usize,
        bound: Bound::FileDescriptors,
    };
    let (Mode::Threads, Some(kernel)) = (mode, kernel) else {
        return best;
    };
    let mut consider = |room: u64, bound: Bound| {
        if (room as usize) < best.max_connections {
            best = Capacity {
                max_connections: room as usize,
                bound,
            };
        }
    };
    consider(
        kernel.max_map_count.saturating_sub(kernel.maps_in_use + KERNEL_RESERVE) / MAPS_PER_THREAD,
        Bound::MaxMapCount,
    );
    consider(
        kernel.pid_max.saturating_sub(kernel.host_threads + KERNEL_RESERVE),
        Bound::PidMax,
    );
    consider(
        kernel.threads_max.saturating_sub(kernel.host_threads + KERNEL_RESERVE),
        Bound::ThreadsMax,
    );
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const FD: FdLimit = FdLimit {
        soft_before: 1024,
        soft: 1_000_000,
        hard: 1_000_000,
    };

    /// This workplace's machines: 65,530 maps, pid_max 32,768, threads-max 192,730.
    const KERNEL: KernelLimits = KernelLimits {
        max_map_count: 65_530,
        maps_in_use: 60,
        pid_max: 32_768,
        threads_max: 192_730,
        host_threads: 200,
    };

    #[test]
    fn tasks_mode_is_bound_by_descriptors_only() {
        let tasks = capacity(Mode::Tasks, FD, Some(KERNEL));
        assert_eq!(tasks.bound, Bound::FileDescriptors);
        assert_eq!(tasks.max_connections, 1_000_000 - FD_RESERVE as usize);
    }

    #[test]
    fn threads_mode_is_bound_by_the_tightest_kernel_limit() {
        let threads = capacity(Mode::Threads, FD, Some(KERNEL));
        assert_eq!(threads.bound, Bound::MaxMapCount);
        assert_eq!(threads.max_connections, (65_530 - 60 - 1024) / 4);
        let more_maps = KernelLimits {
            max_map_count: 262_144,
            ..KERNEL
        };
        let threads = capacity(Mode::Threads, FD, Some(more_maps));
        assert_eq!(threads.bound, Bound::PidMax);
        assert_eq!(threads.max_connections, 32_768 - 200 - 1024);
        let few_fds = FdLimit { soft: 5000, ..FD };
        assert_eq!(
            capacity(Mode::Threads, few_fds, Some(KERNEL)).bound,
            Bound::FileDescriptors
        );
        // Unreadable kernel limits leave the descriptors as the only bound.
        assert_eq!(capacity(Mode::Threads, FD, None).bound, Bound::FileDescriptors);
    }
}
