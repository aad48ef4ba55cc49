//! Before the first connection: every limit that would stop the run, printed with its
//! fix, and a refusal for a run that cannot succeed (rather than failing half way).

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::{LoadConfig, Processes};

/// Descriptors a load process keeps for itself (stdio, the runtime, the metrics listener).
pub const FD_RESERVE: usize = 64;

/// How a run will be spread, and what was checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub processes: usize,
    pub per_process_cap: usize,
    /// One line per check, for the user.
    pub report: String,
}

#[derive(Debug, thiserror::Error)]
#[error("preflight: this run cannot succeed\n{0}")]
pub struct Refused(pub String);

/// Checks the descriptor limit, the port space and the target.
pub fn check(config: &LoadConfig, fd_soft: u64, fd_hard: u64) -> Result<Plan, Refused> {
    let mut report = String::new();
    let mut problems = String::new();

    // A segment plans for its own share only.
    let connections = config.segment_share().connections;
    let fd_cap = (fd_soft as usize).saturating_sub(FD_RESERVE);
    let per_process_cap = config.max_per_process.map_or(fd_cap, |cap| cap.min(fd_cap)).max(1);
    let needed = connections.div_ceil(per_process_cap).max(1);
    let processes = match config.processes {
        Processes::Auto => needed,
        Processes::Exactly(count) => count,
    };
    let per_process = connections.div_ceil(processes);
    let _ = writeln!(
        report,
        "  file descriptors: RLIMIT_NOFILE {fd_soft} (hard {fd_hard}) -> at most {per_process_cap} connections per \
         process; {processes} process(es) of <= {per_process}"
    );
    if per_process > per_process_cap {
        let _ = writeln!(
            problems,
            "  {} connections over {processes} process(es) need {per_process} descriptors each, but one process may \
             hold {per_process_cap} (RLIMIT_NOFILE {fd_soft}, hard {fd_hard}). Fix: --processes auto (shards into \
             {needed} processes) or --processes {needed}; or raise the hard limit as root (ulimit -Hn).",
            connections
        );
    }

    let (port_low, port_high) = ephemeral_port_range().unwrap_or((32768, 60999));
    let ports = (port_high.saturating_sub(port_low) + 1) as usize;
    let sources = config.source_ips.len().max(1);
    let _ = writeln!(
        report,
        "  ports: {ports} ephemeral ports ({port_low}-{port_high}) x {sources} source address(es) toward {} = {} \
         connections at most",
        config.target,
        ports * sources
    );
    if connections > ports * sources {
        let _ = writeln!(
            problems,
            "  {} connections need more than {ports} ports x {sources} source address(es). Fix: --source-ips auto (a \
             loopback target) or a range of at least {} addresses, e.g. --source-ips 127.0.1.1-127.0.1.{}",
            connections,
            connections.div_ceil(ports),
            connections.div_ceil(ports).min(254)
        );
    }

    if config.check_reachability {
        match std::net::TcpStream::connect_timeout(&config.target, Duration::from_secs(3)) {
            Ok(_) => {
                let _ = writeln!(report, "  target: {} accepts TCP connections", config.target);
            }
            Err(error) => {
                let _ = writeln!(
                    problems,
                    "  nothing answers at {}: {error}. Fix: start the server (wsscale serve --listen {}), or pass \
                     --no-reachability-check to measure the failures.",
                    config.target, config.target
                );
            }
        }
    }

    if problems.is_empty() {
        Ok(Plan {
            processes,
            per_process_cap,
            report,
        })
    } else {
        Err(Refused(problems))
    }
}

/// net.ipv4.ip_local_port_range.
fn ephemeral_port_range() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut fields = text.split_whitespace().map(|field| field.parse().ok());
    Some((fields.next()??, fields.next()??))
}
