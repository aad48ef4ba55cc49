//! `wsscale load` options (clap derive, every flag with an env variable) and their
//! validation into a [`LoadConfig`]; how a run is split across processes.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytesize::ByteSize;
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// WebSocket URL to load (ws:// only). Every test and benchmark of this project
    /// targets loopback.
    #[arg(long, env = "WSSCALE_LOAD_URL", default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,

    /// Connections to open and hold.
    #[arg(long, short = 'n', env = "WSSCALE_LOAD_CONNECTIONS", default_value_t = 1000)]
    pub connections: usize,

    /// New connections started per second (0: as fast as --concurrency allows).
    #[arg(long, env = "WSSCALE_LOAD_RATE", default_value_t = 5000.0)]
    pub rate: f64,

    /// Most connects + upgrades in flight at once.
    #[arg(long, env = "WSSCALE_LOAD_CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,

    /// How long to hold every connection once all are open; then each is closed with
    /// 1000 and the run ends.
    #[arg(long, env = "WSSCALE_LOAD_HOLD", default_value = "10s")]
    pub hold: humantime::Duration,

    /// Each connection pings on this fixed schedule; round trips are measured from the
    /// intended send time (0s: no pings).
    #[arg(long, env = "WSSCALE_LOAD_PING_INTERVAL", default_value = "5s")]
    pub ping_interval: humantime::Duration,

    /// Each connection sends a binary message this often and expects the echo (0s: none).
    #[arg(long, env = "WSSCALE_LOAD_MESSAGE_INTERVAL", default_value = "0s")]
    pub message_interval: humantime::Duration,

    /// Size of those messages.
    #[arg(long, env = "WSSCALE_LOAD_MESSAGE_SIZE", default_value = "32B")]
    pub message_size: ByteSize,

    /// Source addresses to connect from: `auto` (spread over 127.0.0.0/8 for a loopback
    /// target, the kernel's choice otherwise), `none`, a list `127.0.0.2,127.0.0.3`, or a
    /// range `127.0.1.1-127.0.1.20`. Each address gives one ephemeral port range per target.
    #[arg(long, env = "WSSCALE_LOAD_SOURCE_IPS", default_value = "auto")]
    pub source_ips: SourceIps,

    /// Processes to spread the connections over (`auto`: as many as the file-descriptor
    /// limit requires).
    #[arg(long, env = "WSSCALE_LOAD_PROCESSES", default_value = "auto")]
    pub processes: Processes,

    /// Most connections one process holds (default: its fd limit minus a reserve). Lower
    /// it to shard small runs.
    #[arg(long, env = "WSSCALE_LOAD_MAX_PER_PROCESS")]
    pub max_per_process: Option<usize>,

    /// Time allowed for one TCP connect plus WebSocket upgrade.
    #[arg(long, env = "WSSCALE_LOAD_CONNECT_TIMEOUT", default_value = "10s")]
    pub connect_timeout: humantime::Duration,

    /// Write the summary as JSON to this file (fields: see README).
    #[arg(long, env = "WSSCALE_LOAD_JSON")]
    pub json: Option<PathBuf>,

    /// Serve Prometheus metrics of the run at http://ADDR/metrics.
    #[arg(long, env = "WSSCALE_LOAD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Start even when nothing answers at the target (to measure the failures).
    #[arg(long, env = "WSSCALE_LOAD_NO_REACHABILITY_CHECK")]
    pub no_reachability_check: bool,

    /// Internal: run as shard INDEX/COUNT of a sharded run, reporting to the parent.
    #[arg(long, hide = true)]
    pub internal_shard: Option<ShardSpec>,
}

/// `--source-ips`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceIps {
    Auto,
    None,
    List(Vec<IpAddr>),
}

impl FromStr for SourceIps {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => return Ok(SourceIps::Auto),
            "none" | "" => return Ok(SourceIps::None),
            _ => {}
        }
        let mut ips = Vec::new();
        for part in text.split(',').map(str::trim) {
            if let Some((first, last)) = part.split_once('-') {
                let parse = |ip: &str| ip.trim().parse::<Ipv4Addr>().map_err(|e| format!("{ip:?}: {e}"));
                let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
                if last < first || last - first >= 1 << 20 {
                    return Err(format!("range {part:?} is empty or too large"));
                }
                ips.extend((first..=last).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
            } else {
                ips.push(part.parse().map_err(|e| format!("{part:?}: {e}"))?);
            }
        }
        Ok(SourceIps::List(ips))
    }
}

impl std::fmt::Display for SourceIps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceIps::Auto => f.write_str("auto"),
            SourceIps::None => f.write_str("none"),
            SourceIps::List(ips) => {
                let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
                f.write_str(&ips.join(","))
            }
        }
    }
}

/// `--processes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processes {
    Auto,
    Exactly(usize),
}

impl FromStr for Processes {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Processes::Auto),
            _ => match text.parse() {
                Ok(0) | Err(_) => Err(format!("{text:?}: expected `auto` or a count of 1 or more")),
                Ok(count) => Ok(Processes::Exactly(count)),
            },
        }
    }
}

impl std::fmt::Display for Processes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Processes::Auto => f.write_str("auto"),
            Processes::Exactly(count) => write!(f, "{count}"),
        }
    }
}

/// `--internal-shard INDEX/COUNT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    pub index: usize,
    pub count: usize,
}

impl FromStr for ShardSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (index, count) = text.split_once('/').ok_or("expected INDEX/COUNT")?;
        let (index, count) = (
            index.parse().map_err(|_| "bad index")?,
            count.parse().map_err(|_| "bad count")?,
        );
        if index >= count {
            return Err("index must be below count".into());
        }
        Ok(ShardSpec { index, count })
    }
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub url: url::Url,
    pub target: SocketAddr,
    pub connections: usize,
    pub rate: f64,
    pub concurrency: usize,
    pub hold: Duration,
    pub ping_interval: Option<Duration>,
    pub message_interval: Option<Duration>,
    pub message_size: usize,
    pub source_ips: Vec<IpAddr>,
    pub processes: Processes,
    pub max_per_process: Option<usize>,
    pub connect_timeout: Duration,
    pub json: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub check_reachability: bool,
    pub shard: Option<ShardSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--url {0:?}: {1}")]
    Url(String, String),
    #[error("--{0} must be greater than zero")]
    Zero(&'static str),
    #[error("--rate must be a finite number of connections per second, 0 or more")]
    Rate,
    #[error("--source-ips: {0} is a different address family from the target {1}")]
    Family(IpAddr, SocketAddr),
}

impl TryFrom<LoadArgs> for LoadConfig {
    type Error = ConfigError;

    fn try_from(args: LoadArgs) -> Result<Self, ConfigError> {
        let url_error = |why: &str| ConfigError::Url(args.url.clone(), why.to_owned());
        let url = url::Url::parse(&args.url).map_err(|e| url_error(&e.to_string()))?;
        if url.scheme() != "ws" {
            return Err(url_error("only ws:// is supported (no TLS)"));
        }
        let host = url.host_str().ok_or_else(|| url_error("no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let target = (host.trim_start_matches('[').trim_end_matches(']'), port)
            .to_socket_addrs()
            .map_err(|e| url_error(&format!("cannot resolve: {e}")))?
            .next()
            .ok_or_else(|| url_error("resolves to no address"))?;
        if args.connections == 0 {
            return Err(ConfigError::Zero("connections"));
        }
        if args.concurrency == 0 {
            return Err(ConfigError::Zero("concurrency"));
        }
        if !args.rate.is_finite() || args.rate < 0.0 {
            return Err(ConfigError::Rate);
        }
        if args.max_per_process == Some(0) {
            return Err(ConfigError::Zero("max-per-process"));
        }
        let source_ips = match args.source_ips {
            SourceIps::None => Vec::new(),
            SourceIps::List(ips) => ips,
            SourceIps::Auto => auto_source_ips(target, args.connections),
        };
        if let Some(ip) = source_ips.iter().find(|ip| ip.is_ipv4() != target.is_ipv4()) {
            return Err(ConfigError::Family(*ip, target));
        }
        let optional = |duration: humantime::Duration| Some(Duration::from(duration)).filter(|d| !d.is_zero());
        Ok(LoadConfig {
            url,
            target,
            connections: args.connections,
            rate: args.rate,
            concurrency: args.concurrency,
            hold: args.hold.into(),
            ping_interval: optional(args.ping_interval),
            message_interval: optional(args.message_interval),
            message_size: args.message_size.as_u64() as usize,
            source_ips,
            processes: args.processes,
            max_per_process: args.max_per_process,
            connect_timeout: args.connect_timeout.into(),
            json: args.json,
            metrics_listen: args.metrics_listen,
            check_reachability: !args.no_reachability_check,
            shard: args.internal_shard,
        })
    }
}

/// Connections per source address that `auto` plans for: well inside one ephemeral port
/// range (~28k here), so TIME_WAIT leftovers of an earlier run do not exhaust it.
pub const AUTO_CONNECTIONS_PER_SOURCE: usize = 10_000;

/// For a loopback target: 127.0.1.1, 127.0.1.2, … one per 10,000 connections. The
/// kernel routes all of 127.0.0.0/8 to lo, so each is a distinct source with its own
/// port range toward the target. Other targets: let the kernel choose.
pub fn auto_source_ips(target: SocketAddr, connections: usize) -> Vec<IpAddr> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            let count = connections.div_ceil(AUTO_CONNECTIONS_PER_SOURCE) as u32;
            let first = u32::from(Ipv4Addr::new(127, 0, 1, 1));
            (0..count).map(|i| IpAddr::V4(Ipv4Addr::from(first + i))).collect()
        }
        _ => Vec::new(),
    }
}

impl LoadConfig {
    /// The argument list that makes a child process of this binary run shard `shard` of
    /// this configuration.
    pub fn shard_args(&self, shard: ShardSpec) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: String| {
            args.push(format!("--{name}").into());
            args.push(value.into());
        };
        let seconds = |duration: Option<Duration>| humantime::format_duration(duration.unwrap_or_default()).to_string();
        flag("url", self.url.to_string());
        flag("connections", self.connections.to_string());
        flag("rate", self.rate.to_string());
        flag("concurrency", self.concurrency.to_string());
        flag("hold", humantime::format_duration(self.hold).to_string());
        flag("ping-interval", seconds(self.ping_interval));
        flag("message-interval", seconds(self.message_interval));
        flag("message-size", self.message_size.to_string());
        flag("source-ips", SourceIps::List(self.source_ips.clone()).to_string());
        flag(
            "connect-timeout",
            humantime::format_duration(self.connect_timeout).to_string(),
        );
        flag("processes", "1".into());
        flag("internal-shard", shard.to_string());
        args.push("--no-reachability-check".into());
        args
    }

    /// This process's share of a sharded run: its connection count, and the global index
    /// of its first connection (which picks its first source address).
    pub fn share(&self) -> Share {
        let Some(ShardSpec { index, count }) = self.shard else {
            return Share {
                connections: self.connections,
                first_index: 0,
                rate: self.rate,
                concurrency: self.concurrency,
            };
        };
        let base = self.connections / count;
        let extra = self.connections % count;
        Share {
            connections: base + usize::from(index < extra),
            first_index: index * base + index.min(extra),
            rate: self.rate / count as f64,
            concurrency: self.concurrency.div_ceil(count),
        }
    }
}

/// What one process opens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub connections: usize,
    pub first_index: usize,
    pub rate: f64,
    pub concurrency: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(args: &[&str]) -> Result<LoadConfig, String> {
        let cli =
            Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        LoadConfig::try_from(cli.load).map_err(|e| e.to_string())
    }

    #[test]
    fn auto_sources_spread_over_loopback() {
        let config = parse(&["--connections", "25000"]).unwrap();
        assert_eq!(config.source_ips.len(), 3);
        assert!(config.source_ips.iter().all(|ip| ip.is_loopback()));
        let explicit = parse(&["--source-ips", "127.0.0.2-127.0.0.4,127.0.0.9"]).unwrap();
        assert_eq!(explicit.source_ips.len(), 4);
        assert!(parse(&["--source-ips", "::1"]).unwrap_err().contains("address family"));
    }

    #[test]
    fn bad_input_names_the_flag() {
        assert!(
            parse(&["--url", "wss://127.0.0.1/ws"])
                .unwrap_err()
                .contains("only ws://")
        );
        assert!(parse(&["--connections", "0"]).unwrap_err().contains("--connections"));
        assert!(parse(&["--processes", "0"]).unwrap_err().contains("auto"));
        assert!(parse(&["--rate=-1"]).unwrap_err().contains("--rate"));
    }

    #[test]
    fn shards_split_the_run_exactly() {
        let config = parse(&["--connections", "2003", "--rate", "1000"]).unwrap();
        let shares: Vec<Share> = (0..4)
            .map(|index| {
                LoadConfig {
                    shard: Some(ShardSpec { index, count: 4 }),
                    ..config.clone()
                }
                .share()
            })
            .collect();
        assert_eq!(shares.iter().map(|s| s.connections).sum::<usize>(), 2003);
        assert_eq!(shares[1].first_index, shares[0].connections);
        assert_eq!(shares[3].first_index + shares[3].connections, 2003);
        assert_eq!(shares[0].rate, 250.0);
        // A shard's arguments parse back into the same configuration.
        let args: Vec<String> = config
            .shard_args(ShardSpec { index: 1, count: 4 })
            .into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = parse(&args).unwrap();
        assert_eq!(child.connections, 2003);
        assert_eq!(child.source_ips, config.source_ips);
        assert_eq!(child.ping_interval, config.ping_interval);
        assert_eq!(child.shard, Some(ShardSpec { index: 1, count: 4 }));
    }
}
