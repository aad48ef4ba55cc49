//! The few /proc figures no maintained crate exports for us: the host's kernel stack
//! memory and TCP socket count (costs of a connection that no process's RSS shows), a
//! process's VmRSS and thread count by pid (to cross-check /metrics against the kernel),
//! and the kernel limits that bound thread-per-connection.
//!
//! The process's own standard set (RSS, threads, fds, CPU) comes from `metrics-process`.
//!
//! It lives in the generator crate, the lower layer, because both the generator (its own
//! RSS, its fd limit) and the server (`wsscale::procfs` re-exports it) read these.

use std::fs;
use std::io;
use std::path::Path;

/// Bytes of kernel stacks on the host (`KernelStack` in /proc/meminfo): 16 KiB per thread.
pub fn kernel_stack_bytes() -> io::Result<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    kib_field(&meminfo, "KernelStack:")
        .map(|kib| kib * 1024)
        .ok_or_else(|| missing("KernelStack", "/proc/meminfo"))
}

/// TCP sockets in use on the host (`TCP: inuse N` in /proc/net/sockstat).
pub fn tcp_sockets_inuse() -> io::Result<u64> {
    let sockstat = fs::read_to_string("/proc/net/sockstat")?;
    parse_sockstat_tcp_inuse(&sockstat).ok_or_else(|| missing("TCP inuse", "/proc/net/sockstat"))
}

/// The process's file-descriptor limit before and after raising the soft limit.
#[derive(Debug, Clone, Copy)]
pub struct FdLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit (raising the hard limit needs
/// privileges this tool does not assume).
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let (soft_before, hard) = rlimit::Resource::NOFILE.get()?;
    if soft_before < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    Ok(FdLimit {
        soft_before,
        soft,
        hard,
    })
}

/// Resident set size of this process in bytes (/proc/self/statm, read without
/// allocating a parser).
pub fn self_rss_bytes() -> io::Result<u64> {
    let statm = fs::read_to_string("/proc/self/statm")?;
    let resident_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| missing("resident", "/proc/self/statm"))?;
    Ok(resident_pages * page_size())
}

/// What /proc/PID/status says of a process: the figures /metrics must agree with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStatus {
    pub vm_rss_bytes: u64,
    pub threads: u64,
}

impl ProcessStatus {
    pub fn read(pid: u32) -> io::Result<Self> {
        Self::read_from(Path::new(&format!("/proc/{pid}/status")))
    }

    fn read_from(path: &Path) -> io::Result<Self> {
        let status = fs::read_to_string(path)?;
        Self::parse(&status).ok_or_else(|| missing("VmRSS/Threads", &path.display().to_string()))
    }

    fn parse(status: &str) -> Option<Self> {
        let vm_rss_bytes = kib_field(status, "VmRSS:")? * 1024;
        let threads = status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))?
            .trim()
            .parse()
            .ok()?;
        Some(ProcessStatus { vm_rss_bytes, threads })
    }
}

/// Open file descriptors of a process (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> io::Result<u64> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// One integer from /proc/sys, e.g. `vm/max_map_count`.
pub fn sysctl(name: &str) -> io::Result<u64> {
    let path = format!("/proc/sys/{name}");
    fs::read_to_string(&path)?
        .trim()
        .parse()
        .map_err(|_| missing(name, &path))
}

/// Kernel scheduling entities (threads) alive on the host: the 4th field of
/// /proc/loadavg is `running/total`.
pub fn host_threads() -> io::Result<u64> {
    let loadavg = fs::read_to_string("/proc/loadavg")?;
    loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|field| field.split('/').nth(1))
        .and_then(|total| total.parse().ok())
        .ok_or_else(|| missing("threads", "/proc/loadavg"))
}

/// Memory maps of this process (lines of /proc/self/maps), counted against vm.max_map_count.
pub fn self_map_count() -> io::Result<u64> {
    Ok(fs::read_to_string("/proc/self/maps")?.lines().count() as u64)
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions and _SC_PAGESIZE is always supported.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    let rest = text.lines().find_map(|line| line.strip_prefix(key))?;
    rest.split_whitespace().next()?.parse().ok()
}

fn parse_sockstat_tcp_inuse(sockstat: &str) -> Option<u64> {
    let fields: Vec<&str> = sockstat
        .lines()
        .find_map(|line| line.strip_prefix("TCP:"))?
        .split_whitespace()
        .collect();
    fields
        .windows(2)
        .find(|pair| pair[0] == "inuse")
        .and_then(|pair| pair[1].parse().ok())
}

fn missing(what: &str, path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("no {what} in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_formats() {
        let sockstat = "sockets: used 290\nTCP: inuse 12 orphan 0 tw 3 alloc 20 mem 1\nUDP: inuse 2 mem 0\n";
        assert_eq!(parse_sockstat_tcp_inuse(sockstat), Some(12));
        let status = "Name:\twsscale\nVmRSS:\t    1234 kB\nThreads:\t7\n";
        assert_eq!(
            ProcessStatus::parse(status),
            Some(ProcessStatus {
                vm_rss_bytes: 1234 * 1024,
                threads: 7
            })
        );
        assert_eq!(kib_field("KernelStack:     5680 kB\n", "KernelStack:"), Some(5680));
    }

    #[test]
    fn raising_the_fd_limit_reaches_the_hard_limit() {
        let limit = raise_fd_limit().unwrap();
        assert_eq!(limit.soft, limit.hard);
        assert!(limit.soft >= limit.soft_before);
    }

    #[test]
    fn reads_this_machine() {
        let status = ProcessStatus::read(std::process::id()).unwrap();
        assert!(status.threads >= 1);
        let rss = self_rss_bytes().unwrap();
        // Two reads a moment apart of the same process: the same order of magnitude.
        assert!(
            rss > status.vm_rss_bytes / 2 && rss < status.vm_rss_bytes * 2,
            "{rss} vs {status:?}"
        );
        assert!(kernel_stack_bytes().unwrap() > 0);
        tcp_sockets_inuse().unwrap();
        assert!(sysctl("kernel/pid_max").unwrap() > 0);
        assert!(host_threads().unwrap() >= status.threads);
        assert!(open_fds(std::process::id()).unwrap() >= 3);
        assert!(self_map_count().unwrap() > 0);
    }
}
