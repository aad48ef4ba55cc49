//! Sizing a fleet from a run's cost per idle connection: connections per GiB, the memory
//! for 100,000 and 1,000,000 idle connections, and the limits a node must raise to hold
//! them (what `crate::limits` counts for one server, and the clients' source addresses).
//! No IO: the machine's current values are handed in.

use serde::Serialize;

use crate::limits::{FD_RESERVE, KERNEL_RESERVE, MAPS_PER_THREAD};

/// The connection counts every run is sized for.
pub const SIZES: [u64; 2] = [100_000, 1_000_000];

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One run's sizing.
#[derive(Debug, Clone, Serialize)]
pub struct Sizing {
    /// User + kernel stack + kernel socket memory per idle connection (the run's
    /// `user_plus_kernel_bytes_per_connection`).
    pub bytes_per_connection: f64,
    /// GiB ÷ that, rounded down.
    pub connections_per_gib: u64,
    /// `bytes_per_connection` × N for each of [`SIZES`].
    pub memory_for: Vec<MemoryFor>,
    /// The server's RSS at 0 connections, paid once per process on top.
    pub process_baseline_bytes: u64,
}

/// The memory N idle connections take.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryFor {
    pub connections: u64,
    pub bytes: f64,
}

impl Sizing {
    pub fn of(bytes_per_connection: f64, process_baseline_bytes: u64) -> Sizing {
        let per = bytes_per_connection.max(1.0);
        Sizing {
            bytes_per_connection,
            connections_per_gib: (GIB / per) as u64,
            memory_for: SIZES
                .iter()
                .map(|&connections| MemoryFor {
                    connections,
                    bytes: connections as f64 * bytes_per_connection.max(0.0),
                })
                .collect(),
            process_baseline_bytes,
        }
    }
}

/// The machine's values of the limits [`node_limits`] names (None where unread).
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeNow {
    pub fd_hard: Option<u64>,
    pub nr_open: Option<u64>,
    pub max_map_count: Option<u64>,
    pub pid_max: Option<u64>,
    pub threads_max: Option<u64>,
    /// net.ipv4.ip_local_port_range.
    pub port_range: Option<(u64, u64)>,
}

/// One limit a node must raise, and what it must be for each of [`SIZES`] connections.
#[derive(Debug, Clone, Serialize)]
pub struct NodeLimit {
    pub name: &'static str,
    /// Whose limit: every server, thread-per-connection servers, or the clients' hosts.
    pub applies_to: &'static str,
    pub needed: Vec<Needed>,
    /// This machine's value.
    pub this_machine: Option<u64>,
    pub how: &'static str,
}

/// The value a limit needs for `connections`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Needed {
    pub connections: u64,
    pub value: u64,
}

/// Ports one source address has toward one server address with the widest range Linux
/// allows (`net.ipv4.ip_local_port_range = 1024 65535`).
pub const WIDEST_PORT_RANGE: u64 = 65535 - 1024 + 1;

/// The limits to raise for one node to hold N idle connections, N each of [`SIZES`]:
/// descriptors on every server (and on the clients' hosts, one per connection as well),
/// the kernel's map, pid and thread limits for a thread per connection, and the source
/// addresses the clients need, as many as the port range gives one address (the
/// machine's range, and the widest).
pub fn node_limits(now: NodeNow) -> Vec<NodeLimit> {
    let needed = |value: &dyn Fn(u64) -> u64| {
        SIZES
            .iter()
            .map(|&connections| Needed {
                connections,
                value: value(connections),
            })
            .collect::<Vec<_>>()
    };
    let ports = now
        .port_range
        .filter(|(low, high)| high >= low)
        .map(|(low, high)| high - low + 1);
    let mut limits = vec![
        NodeLimit {
            name: "RLIMIT_NOFILE (open files per process)",
            applies_to: "every server, and each client process",
            needed: needed(&|n| n + FD_RESERVE),
            this_machine: now.fd_hard,
            how: "ulimit -n N; LimitNOFILE=N (systemd); --ulimit nofile=N:N (docker)",
        },
        NodeLimit {
            name: "fs.nr_open (the ceiling of RLIMIT_NOFILE)",
            applies_to: "every server",
            needed: needed(&|n| n + FD_RESERVE),
            this_machine: now.nr_open,
            how: "sysctl -w fs.nr_open=N",
        },
        NodeLimit {
            name: "vm.max_map_count",
            applies_to: "thread per connection",
            needed: needed(&|n| n * MAPS_PER_THREAD + KERNEL_RESERVE),
            this_machine: now.max_map_count,
            how: "sysctl -w vm.max_map_count=N (4 maps per thread: stack, signal stack, their guards)",
        },
        NodeLimit {
            name: "kernel.pid_max",
            applies_to: "thread per connection",
            needed: needed(&|n| n + KERNEL_RESERVE),
            this_machine: now.pid_max,
            how: "sysctl -w kernel.pid_max=N (at most 4,194,304)",
        },
        NodeLimit {
            name: "kernel.threads-max",
            applies_to: "thread per connection",
            needed: needed(&|n| n + KERNEL_RESERVE),
            this_machine: now.threads_max,
            how: "sysctl -w kernel.threads-max=N",
        },
    ];
    if let Some(ports) = ports {
        limits.push(NodeLimit {
            name: "client source addresses, this port range",
            applies_to: "the clients' hosts, per server address",
            needed: needed(&|n| n.div_ceil(ports)),
            this_machine: Some(ports),
            how: "one address per port range's worth of connections (this machine's value: ports in \
                  net.ipv4.ip_local_port_range); wsscale load --source-ips, or more client hosts",
        });
    }
    limits.push(NodeLimit {
        name: "client source addresses, widest port range",
        applies_to: "the clients' hosts, per server address",
        needed: needed(&|n| n.div_ceil(WIDEST_PORT_RANGE)),
        this_machine: None,
        how: "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\" (64,512 ports per address)",
    });
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_a_run_from_its_cost_per_connection() {
        let sizing = Sizing::of(4096.0, 3 << 20);
        assert_eq!(sizing.connections_per_gib, 262_144);
        assert_eq!(sizing.memory_for[0].connections, 100_000);
        assert_eq!(sizing.memory_for[0].bytes, 409_600_000.0);
        assert_eq!(sizing.memory_for[1].bytes, 4_096_000_000.0);
        // Nothing divided by zero.
        assert_eq!(Sizing::of(0.0, 0).connections_per_gib, GIB as u64);
    }

    #[test]
    fn names_what_a_node_must_raise() {
        let limits = node_limits(NodeNow {
            port_range: Some((32768, 60999)),
            pid_max: Some(32768),
            ..NodeNow::default()
        });
        let find = |name: &str| limits.iter().find(|limit| limit.name.starts_with(name)).unwrap();
        assert_eq!(find("RLIMIT_NOFILE").needed[1].value, 1_000_000 + FD_RESERVE);
        assert_eq!(find("vm.max_map_count").needed[0].value, 400_000 + KERNEL_RESERVE);
        assert_eq!(find("kernel.pid_max").this_machine, Some(32768));
        // 28,232 ports per address: 4 addresses for 100,000, 36 for 1,000,000.
        let here = find("client source addresses, this");
        assert_eq!((here.needed[0].value, here.needed[1].value), (4, 36));
        let widest = find("client source addresses, widest");
        assert_eq!((widest.needed[0].value, widest.needed[1].value), (2, 16));
        assert_eq!(node_limits(NodeNow::default()).len(), limits.len() - 1);
    }
}
