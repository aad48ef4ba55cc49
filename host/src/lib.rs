//! wsscale-host: what wsscale's server and load generator read off, or ask of, the
//! machine they run on. Both depend on this crate; neither depends on the other for it.
//!
//! - [`proc`]: /proc readings — a process's RSS, threads and context switches, the host's
//!   kernel memory (kernel stacks, slab, TCP sockets and their buffers: `KernelMemory`),
//!   the kernel limits that bound thread-per-connection.
//!   The `procfs` crate parses what it covers; the rest (sockstat, statm) is a few lines.
//! - [`fd`]: the file-descriptor limit, raised to the hard limit at start.
//! - [`alloc`]: the counting global allocator behind every heap figure.
//! - [`signal`]: the first SIGINT or SIGTERM, as a future.

pub mod alloc;
pub mod fd;
pub mod proc;
pub mod signal;
