//! /proc readings. The `procfs` crate parses what it covers (a process's status and
//! memory, meminfo, loadavg, the vm and kernel sysctls); the two files it does not
//! (/proc/net/sockstat, and statm read without building a `Process`) take a few lines.
//!
//! Host-wide figures (kernel stacks, slab, TCP sockets and their buffer memory) matter
//! because part of what a connection costs is in no process's RSS: 16 KiB of kernel stack
//! per thread, and the kernel's socket memory — the `tcp_sock`, inode, dentry, file and
//! epoll entries of every socket, in the slab allocator ([`KernelMemory`]), and the
//! buffers queued on it (sockstat's `mem`). They are host-wide: a figure per connection
//! drawn from them is only as good as the host is quiet.

use std::fs;
use std::io;

use procfs::{Current, Meminfo};

fn to_io(error: procfs::ProcError) -> io::Error {
    match error {
        procfs::ProcError::Io(error, _) => error,
        other => io::Error::other(other.to_string()),
    }
}

/// Bytes of kernel stacks on the host (`KernelStack` in /proc/meminfo): 16 KiB per thread.
pub fn kernel_stack_bytes() -> io::Result<u64> {
    Meminfo::current()
        .map_err(to_io)?
        .kernel_stack
        .ok_or_else(|| missing("KernelStack", "/proc/meminfo"))
}

/// Total memory of the host, bytes.
pub fn memory_total_bytes() -> io::Result<u64> {
    Ok(Meminfo::current().map_err(to_io)?.mem_total)
}

/// Memory the host can give to new work without swapping (`MemAvailable`), bytes.
pub fn memory_available_bytes() -> io::Result<u64> {
    let meminfo = Meminfo::current().map_err(to_io)?;
    Ok(meminfo.mem_available.unwrap_or(meminfo.mem_free))
}

/// TCP sockets in use on the host (`TCP: inuse N` in /proc/net/sockstat).
pub fn tcp_sockets_inuse() -> io::Result<u64> {
    sockstat_tcp("inuse")
}

/// Bytes the kernel's slab allocator holds on the host (`Slab` in /proc/meminfo): every
/// socket's `tcp_sock`, inode, dentry, file and epoll entry among much else; reclaimable
/// caches (dentries, inodes of files) included.
pub fn slab_bytes() -> io::Result<u64> {
    Ok(Meminfo::current().map_err(to_io)?.slab)
}

/// The part of the slab the kernel cannot reclaim under pressure (`SUnreclaim` in
/// /proc/meminfo): where a held socket's `tcp_sock` lives. Less disturbed by file-system
/// activity than `Slab`.
pub fn slab_unreclaimable_bytes() -> io::Result<u64> {
    Meminfo::current()
        .map_err(to_io)?
        .s_unreclaim
        .ok_or_else(|| missing("SUnreclaim", "/proc/meminfo"))
}

/// Bytes of socket buffers the host's TCP sockets hold (`TCP: ... mem N` in
/// /proc/net/sockstat, which counts pages): data queued to send or not yet read. Near
/// zero for idle connections.
pub fn tcp_memory_bytes() -> io::Result<u64> {
    Ok(sockstat_tcp("mem")? * page_size())
}

/// The host's kernel memory that no process's RSS shows, read at one moment: /proc/meminfo
/// once and /proc/net/sockstat once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelMemory {
    /// `KernelStack`: 16 KiB per thread.
    pub kernel_stack_bytes: u64,
    /// `Slab`, reclaimable and not.
    pub slab_bytes: u64,
    /// `SUnreclaim`.
    pub slab_unreclaimable_bytes: u64,
    /// sockstat's TCP `mem`, in bytes.
    pub tcp_memory_bytes: u64,
    /// sockstat's TCP `inuse`.
    pub tcp_sockets_inuse: u64,
}

impl KernelMemory {
    pub fn read() -> io::Result<KernelMemory> {
        let meminfo = Meminfo::current().map_err(to_io)?;
        let sockstat = fs::read_to_string("/proc/net/sockstat")?;
        let tcp = |field| parse_sockstat_tcp(&sockstat, field).ok_or_else(|| missing(field, "/proc/net/sockstat"));
        Ok(KernelMemory {
            kernel_stack_bytes: meminfo
                .kernel_stack
                .ok_or_else(|| missing("KernelStack", "/proc/meminfo"))?,
            slab_bytes: meminfo.slab,
            slab_unreclaimable_bytes: meminfo
                .s_unreclaim
                .ok_or_else(|| missing("SUnreclaim", "/proc/meminfo"))?,
            tcp_memory_bytes: tcp("mem")? * page_size(),
            tcp_sockets_inuse: tcp("inuse")?,
        })
    }
}

/// How much the host's kernel memory grew over `connections` connections: between two
/// readings ([`KernelGrowth::between`]), or as least-squares slopes against the connection
/// count (then `connections` is 1 and every figure is per connection). The one derivation
/// of the kernel's share per connection, for the live page and for `compare`.
///
/// The socket memory is divided by the TCP sockets added host-wide (sockstat's `inuse`),
/// not by connections: a connection whose client runs on the same host is two sockets
/// (both ends, alike on loopback), one whose client runs elsewhere is one, and either way
/// the figure is the server's share, one socket's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KernelGrowth {
    pub connections: f64,
    pub kernel_stack_bytes: f64,
    pub slab_bytes: f64,
    pub slab_unreclaimable_bytes: f64,
    pub tcp_memory_bytes: f64,
    /// TCP sockets in use added.
    pub tcp_sockets: f64,
}

impl KernelGrowth {
    /// `now` − `baseline`, over `connections` connections.
    pub fn between(now: KernelMemory, baseline: KernelMemory, connections: u64) -> KernelGrowth {
        let delta = |now: u64, base: u64| now as f64 - base as f64;
        KernelGrowth {
            connections: connections as f64,
            kernel_stack_bytes: delta(now.kernel_stack_bytes, baseline.kernel_stack_bytes),
            slab_bytes: delta(now.slab_bytes, baseline.slab_bytes),
            slab_unreclaimable_bytes: delta(now.slab_unreclaimable_bytes, baseline.slab_unreclaimable_bytes),
            tcp_memory_bytes: delta(now.tcp_memory_bytes, baseline.tcp_memory_bytes),
            tcp_sockets: delta(now.tcp_sockets_inuse, baseline.tcp_sockets_inuse),
        }
    }

    /// KernelStack per connection: 16 KiB per thread in thread-per-connection, ~0 with
    /// tasks. None with no connection.
    pub fn kernel_stack_per_connection(&self) -> Option<f64> {
        (self.connections > 0.0).then(|| self.kernel_stack_bytes / self.connections)
    }

    /// TCP sockets added per connection: 2 with the clients on this host, 1 without.
    pub fn sockets_per_connection(&self) -> Option<f64> {
        (self.connections > 0.0).then(|| self.tcp_sockets / self.connections)
    }

    /// Slab growth per TCP socket added: the kernel's memory for one socket (its
    /// `tcp_sock`, inode, dentry, file, epoll entry…).
    pub fn slab_per_socket(&self) -> Option<f64> {
        self.per_socket(self.slab_bytes)
    }

    /// The unreclaimable part of the same.
    pub fn slab_unreclaimable_per_socket(&self) -> Option<f64> {
        self.per_socket(self.slab_unreclaimable_bytes)
    }

    /// sockstat's TCP `mem` growth per socket: buffered data, ~0 when idle.
    pub fn tcp_memory_per_socket(&self) -> Option<f64> {
        self.per_socket(self.tcp_memory_bytes)
    }

    /// `bytes` ÷ the sockets added; None unless sockets were added, and at least one for
    /// every two connections (fewer: the host's sockets came and went for other reasons,
    /// and the division would say nothing about these connections).
    fn per_socket(&self, bytes: f64) -> Option<f64> {
        (self.tcp_sockets > 0.0 && self.tcp_sockets >= self.connections / 2.0).then(|| bytes / self.tcp_sockets)
    }
}

/// One field of the `TCP:` line of /proc/net/sockstat.
fn sockstat_tcp(field: &str) -> io::Result<u64> {
    let sockstat = fs::read_to_string("/proc/net/sockstat")?;
    parse_sockstat_tcp(&sockstat, field).ok_or_else(|| missing(&format!("TCP {field}"), "/proc/net/sockstat"))
}

/// Resident set size of this process in bytes (/proc/self/statm; cheap enough to read
/// around every ramp).
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
        let status = procfs::process::Process::new(pid as i32)
            .and_then(|process| process.status())
            .map_err(to_io)?;
        Ok(ProcessStatus {
            vm_rss_bytes: status
                .vmrss
                .ok_or_else(|| missing("VmRSS", &format!("/proc/{pid}/status")))?
                * 1024,
            threads: status.threads,
        })
    }
}

/// A process and all its descendants, summed: what a server costs when it forks workers
/// or runs under a shell (`wsscale compare --server` measures any command this way).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TreeUsage {
    pub processes: u64,
    pub rss_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
}

impl TreeUsage {
    /// Reads `root` and every process descended from it. Processes that exit while being
    /// read are skipped.
    pub fn read(root: u32) -> io::Result<TreeUsage> {
        let mut children: std::collections::HashMap<i32, Vec<i32>> = std::collections::HashMap::new();
        for process in procfs::process::all_processes().map_err(to_io)?.flatten() {
            if let Ok(stat) = process.stat() {
                children.entry(stat.ppid).or_default().push(stat.pid);
            }
        }
        let ticks = procfs::ticks_per_second() as f64;
        let mut usage = TreeUsage::default();
        let mut pending = vec![root as i32];
        while let Some(pid) = pending.pop() {
            if let Some(kids) = children.get(&pid) {
                pending.extend(kids);
            }
            let Ok(process) = procfs::process::Process::new(pid) else {
                continue;
            };
            let (Ok(stat), Ok(status)) = (process.stat(), process.status()) else {
                continue;
            };
            usage.processes += 1;
            usage.rss_bytes += status.vmrss.unwrap_or(0) * 1024;
            usage.threads += status.threads;
            usage.open_fds += process.fd_count().unwrap_or(0) as u64;
            usage.cpu_seconds += (stat.utime + stat.stime) as f64 / ticks;
        }
        if usage.processes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("process {root} is gone"),
            ));
        }
        Ok(usage)
    }
}

/// What a process has spent: CPU time (the process's CPU clock, in nanoseconds, every
/// thread's including those that have exited — a thread that lives for one broadcast
/// counts; /proc/PID/stat counts in 10 ms ticks, too coarse for one broadcast) and
/// context switches of its threads alive now (/proc/PID/status counts the main thread's
/// only; an exited thread's are nowhere), summed over every thread.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessCounters {
    /// CPU time of every thread, exited ones too, seconds.
    pub cpu_seconds: f64,
    /// Voluntary + involuntary context switches of every thread alive.
    pub context_switches: u64,
    /// Threads read.
    pub threads: u64,
}

impl ProcessCounters {
    pub fn read(pid: u32) -> io::Result<ProcessCounters> {
        let process = procfs::process::Process::new(pid as i32).map_err(to_io)?;
        let mut counters = ProcessCounters::default();
        for task in process.tasks().map_err(to_io)?.flatten() {
            // A thread that exits while being read is skipped.
            let (Ok(status), Ok(schedstat)) = (task.status(), task.schedstat()) else {
                continue;
            };
            counters.threads += 1;
            counters.cpu_seconds += schedstat.sum_exec_runtime as f64 / 1e9;
            counters.context_switches +=
                status.voluntary_ctxt_switches.unwrap_or(0) + status.nonvoluntary_ctxt_switches.unwrap_or(0);
        }
        // The process clock, which keeps the exited threads' time too (the sum above is
        // the fallback where the clock cannot be read).
        if let Ok(cpu_seconds) = process_cpu_seconds(pid) {
            counters.cpu_seconds = cpu_seconds;
        }
        Ok(counters)
    }
}

/// A process's CPU clock (CLOCK_PROCESS_CPUTIME_ID of another process): every thread's
/// time, exited threads' included, in nanoseconds.
pub fn process_cpu_seconds(pid: u32) -> io::Result<f64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: a plain out-parameter.
    let error = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if error != 0 {
        return Err(io::Error::from_raw_os_error(error));
    }
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a timespec to write.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(now.tv_sec as f64 + now.tv_nsec as f64 / 1e9)
}

/// Open file descriptors of a process (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> io::Result<u64> {
    procfs::process::Process::new(pid as i32)
        .and_then(|process| process.fd_count())
        .map(|count| count as u64)
        .map_err(to_io)
}

/// The kernel's limits on threads and memory maps, and what the host already uses of
/// them: what bounds thread-per-connection. A reading, so the arithmetic that uses it
/// (`wsscale::limits`) can be tested with made-up values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLimits {
    /// vm.max_map_count: memory maps one process may have.
    pub max_map_count: u64,
    /// Memory maps this process has now.
    pub maps_in_use: u64,
    /// kernel.pid_max: every thread takes a pid.
    pub pid_max: u64,
    /// kernel.threads-max.
    pub threads_max: u64,
    /// Kernel scheduling entities (threads) alive on the host now.
    pub host_threads: u64,
}

impl KernelLimits {
    /// Reads this host's limits and this process's use of them.
    pub fn read() -> io::Result<KernelLimits> {
        Ok(KernelLimits {
            max_map_count: procfs::sys::vm::max_map_count().map_err(to_io)?,
            maps_in_use: procfs::process::Process::myself()
                .and_then(|process| process.maps())
                .map_err(to_io)?
                .len() as u64,
            pid_max: procfs::sys::kernel::pid_max().map_err(to_io)? as u64,
            threads_max: u64::from(procfs::sys::kernel::threads_max().map_err(to_io)?),
            host_threads: u64::from(procfs::LoadAverage::current().map_err(to_io)?.max),
        })
    }
}

pub fn page_size() -> u64 {
    procfs::page_size()
}

/// The number after `field` on the `TCP:` line (`TCP: inuse 12 orphan 0 tw 3 alloc 20 mem 1`).
fn parse_sockstat_tcp(sockstat: &str, field: &str) -> Option<u64> {
    let fields: Vec<&str> = sockstat
        .lines()
        .find_map(|line| line.strip_prefix("TCP:"))?
        .split_whitespace()
        .collect();
    fields
        .windows(2)
        .find(|pair| pair[0] == field)
        .and_then(|pair| pair[1].parse().ok())
}

fn missing(what: &str, path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("no {what} in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_time_keeps_an_exited_threads_time() {
        let pid = std::process::id();
        let before = process_cpu_seconds(pid).unwrap();
        // Spins until the thread itself has used 50 ms of CPU (its own clock, not the
        // wall's: on a busy machine 50 ms of wall time may be far less CPU), then exits.
        let spent = std::thread::spawn(|| {
            let thread_cpu = || {
                let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: a valid clock id and a timespec to write.
                assert_eq!(
                    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) },
                    0
                );
                now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
            };
            let start = thread_cpu();
            let mut spin = 0u64;
            while thread_cpu() - start < 0.05 {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
            thread_cpu() - start
        })
        .join()
        .unwrap();
        let after = ProcessCounters::read(pid).unwrap().cpu_seconds;
        assert!(
            after - before >= spent,
            "{before} -> {after}: the exited thread's {spent} s are counted"
        );
    }

    fn reading(stack: u64, slab: u64, tcp_memory: u64, sockets: u64) -> KernelMemory {
        KernelMemory {
            kernel_stack_bytes: stack,
            slab_bytes: slab,
            slab_unreclaimable_bytes: slab / 2,
            tcp_memory_bytes: tcp_memory,
            tcp_sockets_inuse: sockets,
        }
    }

    /// The same shares from two readings and from slopes per connection; per socket, so
    /// loopback's two sockets per connection give one socket's share.
    #[test]
    fn kernel_growth_is_shared_per_socket() {
        // 1,000 connections on loopback: 2,000 sockets, 4,000 B of slab each, 1,000 threads.
        let growth = KernelGrowth::between(
            reading(100 + 16_384 * 1000, 50_000_000 + 2000 * 4000, 4096, 2010),
            reading(100, 50_000_000, 0, 10),
            1000,
        );
        assert_eq!(growth.kernel_stack_per_connection(), Some(16_384.0));
        assert_eq!(growth.sockets_per_connection(), Some(2.0));
        assert_eq!(growth.slab_per_socket(), Some(4000.0));
        assert_eq!(growth.slab_unreclaimable_per_socket(), Some(2000.0));
        assert_eq!(growth.tcp_memory_per_socket(), Some(4096.0 / 2000.0));
        // Slopes per connection: the same figures.
        let slopes = KernelGrowth {
            connections: 1.0,
            kernel_stack_bytes: 16_384.0,
            slab_bytes: 8000.0,
            slab_unreclaimable_bytes: 4000.0,
            tcp_memory_bytes: 0.0,
            tcp_sockets: 2.0,
        };
        assert_eq!(slopes.slab_per_socket(), growth.slab_per_socket());
        assert_eq!(
            slopes.kernel_stack_per_connection(),
            growth.kernel_stack_per_connection()
        );
        // Remote clients: one socket per connection.
        let remote = KernelGrowth {
            tcp_sockets: 1.0,
            slab_bytes: 4000.0,
            ..slopes
        };
        assert_eq!(remote.slab_per_socket(), Some(4000.0));
        // Nothing divided by zero, nor by a socket count the connections cannot explain.
        let none = KernelGrowth::between(reading(5, 5, 0, 3), reading(5, 5, 0, 3), 0);
        assert_eq!(
            (none.kernel_stack_per_connection(), none.slab_per_socket()),
            (None, None)
        );
        let lost = KernelGrowth {
            tcp_sockets: 0.2,
            ..slopes
        };
        assert_eq!(lost.slab_per_socket(), None);
    }

    #[test]
    fn parses_sockstat() {
        let sockstat = "sockets: used 290\nTCP: inuse 12 orphan 0 tw 3 alloc 20 mem 1\nUDP: inuse 2 mem 0\n";
        assert_eq!(parse_sockstat_tcp(sockstat, "inuse"), Some(12));
        assert_eq!(parse_sockstat_tcp(sockstat, "mem"), Some(1));
        assert_eq!(parse_sockstat_tcp(sockstat, "tw"), Some(3));
        assert_eq!(parse_sockstat_tcp("UDP: inuse 2 mem 0\n", "inuse"), None);
        assert_eq!(parse_sockstat_tcp(sockstat, "memory"), None, "fields match whole");
    }

    /// The readings parse on this kernel and agree with each other; no value of the host
    /// is assumed.
    #[test]
    fn readings_parse_and_agree() {
        let status = ProcessStatus::read(std::process::id()).unwrap();
        assert!(status.threads >= 1);
        let rss = self_rss_bytes().unwrap();
        // Two reads a moment apart of the same process: the same order of magnitude.
        assert!(
            rss > status.vm_rss_bytes / 2 && rss < status.vm_rss_bytes * 2,
            "{rss} vs {status:?}"
        );
        kernel_stack_bytes().unwrap();
        tcp_sockets_inuse().unwrap();
        let limits = KernelLimits::read().unwrap();
        assert!(limits.host_threads >= status.threads, "{limits:?}");
        assert!(limits.maps_in_use > 0, "{limits:?}");
        assert!(open_fds(std::process::id()).unwrap() >= 3);
        assert!(memory_available_bytes().unwrap() > 0);
    }

    /// The kernel-memory readings against this test's own parse of the same files (kB
    /// in meminfo, pages in sockstat). The host moves between the two reads, so they
    /// agree within a margin, not exactly.
    #[test]
    fn kernel_memory_agrees_with_proc() {
        let memory = KernelMemory::read().unwrap();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
        let kib = |name: &str| -> u64 {
            let line = meminfo
                .lines()
                .find(|line| line.split(':').next() == Some(name))
                .unwrap_or_else(|| panic!("{name} in /proc/meminfo"));
            let value: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            assert!(line.ends_with(" kB"), "{line}");
            value * 1024
        };
        let close = |ours: u64, theirs: u64, what: &str| {
            let margin = (theirs / 10).max(16 << 20);
            assert!(ours.abs_diff(theirs) <= margin, "{what}: {ours} vs {theirs} in /proc");
        };
        close(memory.slab_bytes, kib("Slab"), "Slab");
        close(memory.slab_unreclaimable_bytes, kib("SUnreclaim"), "SUnreclaim");
        close(memory.kernel_stack_bytes, kib("KernelStack"), "KernelStack");
        close(slab_bytes().unwrap(), kib("Slab"), "slab_bytes()");
        close(
            slab_unreclaimable_bytes().unwrap(),
            kib("SUnreclaim"),
            "slab_unreclaimable_bytes()",
        );
        assert!(memory.slab_bytes >= memory.slab_unreclaimable_bytes && memory.slab_unreclaimable_bytes > 0);
        assert!(memory.kernel_stack_bytes > 0, "{memory:?}");
        assert_eq!(memory.tcp_memory_bytes % page_size(), 0, "sockstat counts pages");
        let sockstat = fs::read_to_string("/proc/net/sockstat").unwrap();
        let pages = parse_sockstat_tcp(&sockstat, "mem").unwrap();
        close(tcp_memory_bytes().unwrap(), pages * page_size(), "tcp_memory_bytes()");
    }

    /// Held TCP sockets show in sockstat's `inuse`: 200 loopback connections are 400
    /// sockets (this network namespace's count; a margin for sockets others close meanwhile).
    #[test]
    fn held_sockets_show_in_sockstat() {
        let before = KernelMemory::read().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..200 {
            let client = std::net::TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            held.push((client, server));
        }
        let during = KernelMemory::read().unwrap();
        drop(held);
        assert!(
            during.tcp_sockets_inuse >= before.tcp_sockets_inuse + 300,
            "{before:?} -> {during:?}"
        );
    }

    #[test]
    fn counters_sum_every_thread() {
        let before = ProcessCounters::read(std::process::id()).unwrap();
        let (slept, done) = std::sync::mpsc::channel();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            // Each sleep gives the CPU up: one voluntary context switch or more.
            for _ in 0..100 {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            slept.send(()).unwrap();
            let _ = wait.recv();
        });
        done.recv().unwrap();
        // What /proc/PID/status alone says: the main thread's switches. Read before the
        // total, so that the total, which only grows, includes at least this much of the
        // main thread's (read after it, a switch in between would make the total look
        // short: "106 < 7 + 100" on a busy machine).
        let main = procfs::process::Process::myself().unwrap().status().unwrap();
        let main_only = main.voluntary_ctxt_switches.unwrap() + main.nonvoluntary_ctxt_switches.unwrap();
        let during = ProcessCounters::read(std::process::id()).unwrap();
        drop(release);
        sleeper.join().unwrap();
        assert!(
            during.context_switches >= main_only + 100,
            "the sleeping thread's switches are summed in: {during:?}, main thread {main_only}"
        );
        assert!(during.threads >= 2 && during.cpu_seconds >= before.cpu_seconds);
    }

    #[test]
    fn a_process_tree_counts_its_children() {
        let me = TreeUsage::read(std::process::id()).unwrap();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let with_child = TreeUsage::read(std::process::id());
        child.kill().unwrap();
        child.wait().unwrap();
        let with_child = with_child.unwrap();
        assert_eq!(with_child.processes, me.processes + 1);
        assert!(with_child.threads > me.threads);
        assert!(with_child.rss_bytes > 0);
        assert!(TreeUsage::read(child.id()).is_err(), "a reaped child is gone");
    }
}
