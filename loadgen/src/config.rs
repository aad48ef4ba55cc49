//! `wsscale load` options (clap derive, every flag with an env variable) and their
//! validation into a [`LoadConfig`]; how a run is split into segments (independent
//! processes, possibly on other machines, whose summaries `wsscale load merge` adds up)
//! and each segment into shards (child processes of one generator).

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Args, Subcommand};

use crate::client::MessageContent;
use crate::offer::{self, Offer};
use crate::tls::{TlsClient, TlsError, Trust};

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub command: Option<LoadCommand>,

    /// WebSocket URL to load: ws:// or wss:// (TLS; see --tls-ca, --tls-insecure). Every
    /// test and benchmark of this project targets loopback.
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

    /// What those messages carry: one byte repeated (deflate shrinks it to almost
    /// nothing), or pseudo-random bytes, new in each message (deflate cannot shrink them).
    #[arg(long, env = "WSSCALE_LOAD_MESSAGE_CONTENT", value_enum, default_value_t = MessageContent::Repeated)]
    pub message_content: MessageContent,

    /// Offer permessage-deflate (RFC 7692) on every upgrade, as a browser does.
    ///
    /// Alone, offers what Chromium offers on every WebSocket it opens:
    /// `permessage-deflate; client_max_window_bits`. With =PARAMS, offers exactly PARAMS: one
    /// offer, with any of server_no_context_takeover, client_no_context_takeover,
    /// server_max_window_bits=8..15 and client_max_window_bits[=9..15] (zlib cannot compress
    /// with a window of 8), e.g.
    /// --offer-deflate='permessage-deflate; client_no_context_takeover; server_max_window_bits=10'.
    /// The value is checked before anything starts. In the environment, give the offer
    /// itself.
    ///
    /// A connection whose server accepts compresses its --message-interval messages and
    /// inflates what it receives (echoes, pushes) with the parameters the server answered
    /// (through the yawc client); one whose server declines runs exactly as without the
    /// flag. An answer that does not fit the offer (RFC 7692 section 7.1) fails the attempt
    /// as `deflate_response`. `wsscale serve --engine lean --deflate stateless|context`
    /// accepts; --deflate off and the stock engine decline.
    ///
    /// The summary's `deflate` (and the table's deflate lines) records the offer, the
    /// upgrades accepted and declined, and each answer with how many upgrades got it. The
    /// offer is part of the run id.
    #[arg(
        long,
        env = "WSSCALE_LOAD_OFFER_DEFLATE",
        value_name = "PARAMS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = offer::BROWSER_OFFER
    )]
    pub offer_deflate: Option<String>,

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

    /// Time allowed for one TCP connect plus TLS handshake (wss://) plus WebSocket upgrade.
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

    /// Reopen a connection the server closes or resets during the hold, until it ends.
    ///
    /// Waits with jittered exponential backoff before each attempt: a random time up to
    /// 100 ms, doubling per failed attempt to 5 s (full jitter). After close 1012 or 1013
    /// or an HTTP 503 it waits 1 s plus up to 5 s, or the 503's Retry-After plus up to 5 s.
    #[arg(long, env = "WSSCALE_LOAD_RECONNECT")]
    pub reconnect: bool,

    /// wss://: trust the PEM certificates in FILE, and nothing else.
    ///
    /// For a server with a self-signed certificate (give its certificate) or a private CA
    /// (give the CA's). Without --tls-ca or --tls-insecure, a wss:// run trusts the
    /// Mozilla root program compiled in (webpki-roots), as a browser would, and a
    /// self-signed server fails every attempt with `tls_certificate_unknown`.
    #[arg(
        long,
        env = "WSSCALE_LOAD_TLS_CA",
        value_name = "FILE",
        conflicts_with = "tls_insecure",
        help_heading = "TLS (wss://)"
    )]
    pub tls_ca: Option<PathBuf>,

    /// wss://: do not verify the server's certificate at all (chain, name, dates).
    ///
    /// Only for a throwaway server on a network you control; a warning says so on stderr.
    /// The server's handshake signature is still checked, so a handshake costs about what
    /// a verified one does.
    #[arg(long, env = "WSSCALE_LOAD_TLS_INSECURE", help_heading = "TLS (wss://)")]
    pub tls_insecure: bool,

    /// Run only segment I of N (I from 0) of a run spread over several generators.
    ///
    /// This process opens its share of --connections and of --rate (the shares add up
    /// exactly; the first connections % N segments take one more connection), and `auto`
    /// source addresses give it a range no other segment uses, so segments can share a
    /// host. Start them together with --start-at, and merge their --json files with
    /// `wsscale load merge`.
    #[arg(long, env = "WSSCALE_LOAD_SEGMENT", value_name = "I/N", help_heading = "Segments")]
    pub segment: Option<Part>,

    /// The number of segments N, with the index from --segment-index (JOB_COMPLETION_INDEX).
    #[arg(long, env = "WSSCALE_LOAD_SEGMENTS", value_name = "N", help_heading = "Segments")]
    pub segments: Option<usize>,

    /// This segment's index I (from 0), with --segments N.
    ///
    /// Read from JOB_COMPLETION_INDEX, so each pod of a Kubernetes Indexed Job with
    /// WSSCALE_LOAD_SEGMENTS set to the Job's completions runs its own segment with no
    /// wrapper script. --segment takes precedence over both.
    #[arg(long, env = "JOB_COMPLETION_INDEX", value_name = "I", help_heading = "Segments")]
    pub segment_index: Option<usize>,

    /// Wait until this UNIX time (seconds, fractions allowed) before the first connection.
    ///
    /// Segments started at different moments (pods scheduled apart) then ramp together,
    /// e.g. `--start-at $(( $(date +%s) + 30 ))`. A time already past starts at once.
    #[arg(
        long,
        env = "WSSCALE_LOAD_START_AT",
        value_name = "UNIX_SECONDS",
        help_heading = "Segments"
    )]
    pub start_at: Option<f64>,

    /// The run's identity (`run_id` in the summary); `merge` refuses files of other runs.
    ///
    /// Default: a hash of what every segment of the run shares: --url, --connections,
    /// --rate, the segment count N, --start-at, --hold, --ping-interval,
    /// --message-interval, --message-size, --message-content, --reconnect, for wss:// whom
    /// it trusts (--tls-insecure, or the certificates of --tls-ca), and --offer-deflate. Two runs with the same flags
    /// get the same id: give --run-id (in Kubernetes, e.g. the Job's controller-uid label
    /// through the downward API) or --start-at to tell them apart.
    #[arg(long, env = "WSSCALE_LOAD_RUN_ID", help_heading = "Segments")]
    pub run_id: Option<String>,

    /// Internal: run as shard INDEX/COUNT of a sharded run, reporting to the parent.
    #[arg(long, hide = true)]
    pub internal_shard: Option<Part>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum LoadCommand {
    /// Merge the --json summaries of a run's segments into one summary.
    ///
    /// Adds the counts, failures and losses, merges the HDR histograms (percentiles come
    /// from the merged histograms, exactly as if one process had recorded every sample),
    /// and prints the same table and JSON as one run; the ramp spans from the earliest
    /// segment's start to the latest one's end. Refuses files of different runs (different
    /// run_id), segments of different counts and the same segment twice, naming the files.
    /// Missing segments are reported and the rest merged.
    Merge(MergeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// Segment summaries written by `wsscale load --segment I/N --json FILE`.
    #[arg(required = true, value_name = "FILES")]
    pub files: Vec<PathBuf>,

    /// Write the merged summary as JSON to this file.
    #[arg(long, env = "WSSCALE_LOAD_MERGE_JSON")]
    pub json: Option<PathBuf>,
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

/// Part I of N (I from 0): a segment (`--segment`) or a shard (`--internal-shard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl Part {
    pub fn new(index: usize, count: usize) -> Result<Part, String> {
        if count == 0 {
            return Err("the count N must be 1 or more".into());
        }
        if index >= count {
            return Err(format!(
                "the index {index} must be below the count {count} (indices count from 0)"
            ));
        }
        Ok(Part { index, count })
    }
}

impl FromStr for Part {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (index, count) = text.split_once('/').ok_or("expected I/N, e.g. 0/3")?;
        let index = index.trim().parse().map_err(|_| format!("{index:?} is not an index"))?;
        let count = count.trim().parse().map_err(|_| format!("{count:?} is not a count"))?;
        Part::new(index, count)
    }
}

impl serde::Serialize for Part {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Part {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Part {
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
    pub message_content: MessageContent,
    /// `--offer-deflate`: the offer every upgrade makes; None: no offer.
    pub offer_deflate: Option<Offer>,
    pub source_ips: Vec<IpAddr>,
    pub processes: Processes,
    pub max_per_process: Option<usize>,
    pub connect_timeout: Duration,
    pub json: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub check_reachability: bool,
    pub reconnect: bool,
    /// wss://: the TLS configuration every connection shares; None for ws://.
    pub tls: Option<TlsClient>,
    /// The segment this process runs; None for a whole run.
    pub segment: Option<Part>,
    /// When the ramp starts, UNIX seconds; None: at once.
    pub start_at_unix: Option<f64>,
    /// The run's identity, given or derived (see [`derive_run_id`]).
    pub run_id: String,
    pub shard: Option<Part>,
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
    #[error("--segment {0} and --segments {1} (WSSCALE_LOAD_SEGMENTS) disagree on the segment count")]
    SegmentCount(Part, usize),
    #[error(
        "--segments {0} (WSSCALE_LOAD_SEGMENTS) needs this segment's index: --segment-index I or JOB_COMPLETION_INDEX \
         (or give --segment I/N instead)"
    )]
    NoSegmentIndex(usize),
    #[error(
        "--segment-index {0} (or JOB_COMPLETION_INDEX) is set but the segment count is not: set --segments N \
         (WSSCALE_LOAD_SEGMENTS) to the number of segments (a Kubernetes Indexed Job's completions)"
    )]
    NoSegmentCount(usize),
    #[error("segment: {0}")]
    Segment(String),
    #[error("--start-at must be a UNIX time in seconds, such as 1767225600.5")]
    StartAt,
    #[error("--{0} is for wss:// URLs, but --url {1:?} is plain ws://: use a wss:// URL, or leave --{0} out")]
    TlsWithoutWss(&'static str, String),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("--offer-deflate {0:?}: {1}")]
    OfferDeflate(String, String),
}

impl TryFrom<LoadArgs> for LoadConfig {
    type Error = ConfigError;

    fn try_from(args: LoadArgs) -> Result<Self, ConfigError> {
        let url_error = |why: &str| ConfigError::Url(args.url.clone(), why.to_owned());
        let url = url::Url::parse(&args.url).map_err(|e| url_error(&e.to_string()))?;
        let secure = match url.scheme() {
            "ws" => false,
            "wss" => true,
            _ => return Err(url_error("expected a ws:// or wss:// URL")),
        };
        let host = url.host_str().ok_or_else(|| url_error("no host"))?;
        let port = url.port_or_known_default().unwrap_or(if secure { 443 } else { 80 });
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
        let segment = match (args.segment, args.segments, args.segment_index) {
            (Some(segment), Some(count), _) if count != segment.count => {
                return Err(ConfigError::SegmentCount(segment, count));
            }
            (Some(segment), _, _) => Some(segment),
            (None, Some(count), Some(index)) => Some(Part::new(index, count).map_err(ConfigError::Segment)?),
            (None, Some(count), None) => return Err(ConfigError::NoSegmentIndex(count)),
            (None, None, Some(index)) => return Err(ConfigError::NoSegmentCount(index)),
            (None, None, None) => None,
        };
        if let Some(start_at) = args.start_at
            && !(start_at.is_finite() && start_at > 0.0)
        {
            return Err(ConfigError::StartAt);
        }
        let source_ips = match args.source_ips {
            SourceIps::None => Vec::new(),
            SourceIps::List(ips) => ips,
            SourceIps::Auto => auto_source_ips_of_segment(target, args.connections, segment),
        };
        if let Some(ip) = source_ips.iter().find(|ip| ip.is_ipv4() != target.is_ipv4()) {
            return Err(ConfigError::Family(*ip, target));
        }
        let trust = match (args.tls_ca, args.tls_insecure) {
            (Some(path), _) => Some(Trust::Ca(path)),
            (None, true) => Some(Trust::Insecure),
            (None, false) => None,
        };
        let tls = match (secure, trust) {
            (true, trust) => {
                let host = url.host().ok_or_else(|| url_error("no host"))?;
                Some(TlsClient::new(trust.unwrap_or(Trust::WebpkiRoots), &host)?)
            }
            (false, Some(Trust::Ca(_))) => return Err(ConfigError::TlsWithoutWss("tls-ca", args.url)),
            (false, Some(_)) => return Err(ConfigError::TlsWithoutWss("tls-insecure", args.url)),
            (false, None) => None,
        };
        let offer_deflate = args
            .offer_deflate
            .map(|text| {
                text.parse::<Offer>()
                    .map_err(|why| ConfigError::OfferDeflate(text, why))
            })
            .transpose()?;
        let optional = |duration: humantime::Duration| Some(Duration::from(duration)).filter(|d| !d.is_zero());
        let mut config = LoadConfig {
            url,
            target,
            connections: args.connections,
            rate: args.rate,
            concurrency: args.concurrency,
            hold: args.hold.into(),
            ping_interval: optional(args.ping_interval),
            message_interval: optional(args.message_interval),
            message_size: args.message_size.as_u64() as usize,
            message_content: args.message_content,
            offer_deflate,
            source_ips,
            processes: args.processes,
            max_per_process: args.max_per_process,
            connect_timeout: args.connect_timeout.into(),
            json: args.json,
            metrics_listen: args.metrics_listen,
            check_reachability: !args.no_reachability_check,
            reconnect: args.reconnect,
            tls,
            segment,
            start_at_unix: args.start_at,
            run_id: String::new(),
            shard: args.internal_shard,
        };
        config.run_id = args.run_id.unwrap_or_else(|| derive_run_id(&config));
        Ok(config)
    }
}

/// The run id every segment of a run derives alike: a hash (FNV-1a, 64 bits: stable
/// across builds and machines, unlike std's hasher) of what they share — the URL, the
/// connections and rate of the whole run, the segment count, --start-at, --hold, the
/// per-connection schedule (--ping-interval, --message-interval, --message-size, and
/// --message-content when not the default), --reconnect, for wss:// the trust (its kind,
/// and the certificates of a --tls-ca file rather than its path), and --offer-deflate's
/// offer. Per-process settings (--concurrency, --processes,
/// --source-ips, the segment index) are left out.
pub fn derive_run_id(config: &LoadConfig) -> String {
    let nanos = |duration: Option<Duration>| duration.unwrap_or_default().as_nanos();
    let mut shared = format!(
        "url={} connections={} rate={} segments={} start_at={:?} hold_ns={} ping_ns={} message_ns={} message_bytes={} \
         reconnect={}",
        config.url,
        config.connections,
        config.rate,
        config.segment.map_or(1, |segment| segment.count),
        config.start_at_unix,
        config.hold.as_nanos(),
        nanos(config.ping_interval),
        nanos(config.message_interval),
        config.message_size,
        config.reconnect,
    );
    // Appended only for wss://, so that the ids of ws:// runs stay what they were.
    if let Some(tls) = &config.tls {
        shared += &format!(" tls={}", tls.trust_digest());
    }
    // Likewise only when given: runs without them keep their ids.
    if config.message_content != MessageContent::default() {
        shared += &format!(" message_content={}", config.message_content.as_str());
    }
    if let Some(offer) = &config.offer_deflate {
        shared += &format!(" offer_deflate={offer}");
    }
    format!("{:016x}", fnv1a(shared.as_bytes()))
}

/// FNV-1a, 64 bits: stable across builds and machines, unlike std's hasher.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_extend(0xcbf2_9ce4_8422_2325, bytes)
}

/// Continues an FNV-1a hash `hash` over more bytes.
pub fn fnv1a_extend(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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

/// `auto` for one segment of a run: the segments on one host must not share a source
/// address (each would plan on the whole port range of it), so segment I of N takes the
/// I-th block of K addresses after 127.0.1.1, where K is what the largest segment's share
/// needs. Every segment computes the same K from the run's flags. A whole run is segment
/// 0 of 1: the addresses of [`auto_source_ips`].
pub fn auto_source_ips_of_segment(target: SocketAddr, connections: usize, segment: Option<Part>) -> Vec<IpAddr> {
    let Some(segment) = segment else {
        return auto_source_ips(target, connections);
    };
    let per_segment = auto_source_ips(target, connections.div_ceil(segment.count));
    let skip = segment.index * per_segment.len();
    per_segment
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(ip) => IpAddr::V4(Ipv4Addr::from(u32::from(*ip) + skip as u32)),
            IpAddr::V6(ip) => IpAddr::V6(*ip),
        })
        .collect()
}

impl LoadConfig {
    /// The argument list that makes a child process of this binary run shard `shard` of
    /// this configuration.
    pub fn shard_args(&self, shard: Part) -> Vec<OsString> {
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
        flag("message-content", self.message_content.as_str().to_owned());

        flag("source-ips", SourceIps::List(self.source_ips.clone()).to_string());
        flag(
            "connect-timeout",
            humantime::format_duration(self.connect_timeout).to_string(),
        );
        flag("processes", "1".into());
        if let Some(segment) = self.segment {
            flag("segment", segment.to_string());
        }
        if let Some(start_at) = self.start_at_unix {
            flag("start-at", start_at.to_string());
        }
        flag("run-id", self.run_id.clone());
        flag("internal-shard", shard.to_string());
        if self.reconnect {
            args.push("--reconnect".into());
        }
        if let Some(offer) = &self.offer_deflate {
            // With `=`: the value is optional, so it cannot be a separate argument.
            args.push(format!("--offer-deflate={offer}").into());
        }
        match self.tls.as_ref().map(TlsClient::trust) {
            Some(Trust::Ca(path)) => {
                args.push("--tls-ca".into());
                args.push(path.into());
            }
            Some(Trust::Insecure) => args.push("--tls-insecure".into()),
            Some(Trust::WebpkiRoots) | None => {}
        }
        args.push("--no-reachability-check".into());
        args
    }

    /// This segment's share of the run (the whole run without --segment).
    pub fn segment_share(&self) -> Share {
        let whole = Share {
            connections: self.connections,
            first_index: 0,
            rate: self.rate,
            concurrency: self.concurrency,
        };
        self.segment.map_or(whole, |segment| whole.split(segment))
    }

    /// This process's share: its segment's, split again when it is one of the segment's
    /// shards. The global index of its first connection picks its first source address.
    pub fn share(&self) -> Share {
        let segment = self.segment_share();
        self.shard.map_or(segment, |shard| segment.split(shard))
    }
}

/// What one process (or one segment) opens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub connections: usize,
    pub first_index: usize,
    pub rate: f64,
    pub concurrency: usize,
}

impl Share {
    /// Part `part` of this share. Connections split exactly (the first `connections % N`
    /// parts take one more), in consecutive index ranges; the rate splits in proportion
    /// to the connections, so the parts add up to the rate and every part's ramp lasts
    /// as long as the whole one's; concurrency is divided, rounding up.
    pub fn split(self, part: Part) -> Share {
        let Part { index, count } = part;
        let base = self.connections / count;
        let extra = self.connections % count;
        let connections = base + usize::from(index < extra);
        Share {
            connections,
            first_index: self.first_index + index * base + index.min(extra),
            rate: if self.connections == 0 {
                self.rate
            } else {
                self.rate * connections as f64 / self.connections as f64
            },
            concurrency: self.concurrency.div_ceil(count),
        }
    }
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
            parse(&["--url", "http://127.0.0.1/ws"])
                .unwrap_err()
                .contains("ws:// or wss://")
        );
        assert!(parse(&["--connections", "0"]).unwrap_err().contains("--connections"));
        assert!(parse(&["--processes", "0"]).unwrap_err().contains("auto"));
        assert!(parse(&["--rate=-1"]).unwrap_err().contains("--rate"));
    }

    #[test]
    fn tls_flags_need_a_wss_url_and_exclude_each_other() {
        let error = parse(&["--url", "ws://127.0.0.1:9/ws", "--tls-insecure"]).unwrap_err();
        assert!(error.contains("--tls-insecure is for wss://"), "{error}");
        let error = parse(&["--url", "ws://127.0.0.1:9/ws", "--tls-ca", "ca.pem"]).unwrap_err();
        assert!(error.contains("--tls-ca is for wss://"), "{error}");
        let error = parse(&["--url", "wss://127.0.0.1:9/ws", "--tls-ca", "ca.pem", "--tls-insecure"]).unwrap_err();
        assert!(error.contains("cannot be used with"), "{error}");
        let error = parse(&["--url", "wss://127.0.0.1:9/ws", "--tls-ca", "/nonexistent/ca.pem"]).unwrap_err();
        assert!(
            error.contains("/nonexistent/ca.pem") && error.contains("cannot read"),
            "{error}"
        );
        // wss:// alone trusts the compiled-in roots; the default port is 443.
        let config = parse(&["--url", "wss://localhost/ws"]).unwrap();
        assert_eq!(config.tls.as_ref().map(TlsClient::trust), Some(&Trust::WebpkiRoots));
        assert_eq!(config.target.port(), 443);
        assert!(parse(&["--url", "ws://127.0.0.1:9/ws"]).unwrap().tls.is_none());
    }

    /// A shard trusts what its parent trusts, and every trust is a different run.
    #[test]
    fn shards_inherit_the_tls_flags_and_the_run_id_records_them() {
        let insecure = parse(&["--url", "wss://127.0.0.1:9/ws", "--tls-insecure"]).unwrap();
        let args: Vec<String> = insecure
            .shard_args(Part { index: 0, count: 2 })
            .into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect();
        assert!(args.iter().any(|arg| arg == "--tls-insecure"), "{args:?}");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = parse(&args).unwrap();
        assert_eq!(child.tls.as_ref().map(TlsClient::trust), Some(&Trust::Insecure));
        assert_eq!(child.run_id, insecure.run_id);
        let verified = parse(&["--url", "wss://127.0.0.1:9/ws"]).unwrap();
        assert_ne!(verified.run_id, insecure.run_id);
        let plain = parse(&["--url", "ws://127.0.0.1:9/ws"]).unwrap();
        assert_ne!(plain.run_id, verified.run_id);
    }

    /// `--offer-deflate` alone offers what Chromium does, a value is checked when the run
    /// starts, the offer reaches every shard and is part of the run id.
    #[test]
    fn offer_deflate_is_checked_forwarded_to_shards_and_part_of_the_run_id() {
        let plain = parse(&["--url", "ws://127.0.0.1:9/ws"]).unwrap();
        assert_eq!(plain.offer_deflate, None);
        let browser = parse(&["--url", "ws://127.0.0.1:9/ws", "--offer-deflate"]).unwrap();
        assert_eq!(
            browser.offer_deflate.as_ref().map(ToString::to_string).as_deref(),
            Some(offer::BROWSER_OFFER)
        );
        let given = "permessage-deflate; client_no_context_takeover; server_max_window_bits=10";
        let custom = parse(&["--url", "ws://127.0.0.1:9/ws", &format!("--offer-deflate={given}")]).unwrap();
        assert_eq!(custom.offer_deflate.as_ref().unwrap().to_string(), given);
        let ids = [&plain.run_id, &browser.run_id, &custom.run_id];
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{ids:?}");
        // The id of a run without the flag (or --message-content) is what it was before
        // them (this run's id, printed by the generator before they existed).
        let before = parse(&["--url", "ws://127.0.0.1:9/ws", "--connections", "2", "--hold", "0s"]).unwrap();
        assert_eq!(before.run_id, "407def89e3ce4cc1");
        for config in [&browser, &custom] {
            let args: Vec<String> = config
                .shard_args(Part { index: 1, count: 2 })
                .into_iter()
                .map(|arg| arg.into_string().unwrap())
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let child = parse(&args).unwrap();
            assert_eq!(child.offer_deflate, config.offer_deflate, "{args:?}");
            assert_eq!(child.run_id, config.run_id);
        }
        assert_eq!(
            parse(&["--offer-deflate=permessage-deflate; server_max_window_bits=20"]).unwrap_err(),
            "--offer-deflate \"permessage-deflate; server_max_window_bits=20\": server_max_window_bits=20: \
             window bits are 8 to 15"
        );
        let random = parse(&["--message-content", "random"]).unwrap();
        assert_ne!(random.run_id, parse(&[]).unwrap().run_id);
    }

    #[test]
    fn shards_split_the_run_exactly() {
        let config = parse(&["--connections", "2003", "--rate", "1000"]).unwrap();
        let shares: Vec<Share> = (0..4)
            .map(|index| {
                LoadConfig {
                    shard: Some(Part { index, count: 4 }),
                    ..config.clone()
                }
                .share()
            })
            .collect();
        assert_eq!(shares.iter().map(|s| s.connections).sum::<usize>(), 2003);
        assert_eq!(shares[1].first_index, shares[0].connections);
        assert_eq!(shares[3].first_index + shares[3].connections, 2003);
        assert!((shares.iter().map(|s| s.rate).sum::<f64>() - 1000.0).abs() < 1e-9);
        // A shard's arguments parse back into the same configuration.
        let args: Vec<String> = config
            .shard_args(Part { index: 1, count: 4 })
            .into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = parse(&args).unwrap();
        assert_eq!(child.connections, 2003);
        assert_eq!(child.source_ips, config.source_ips);
        assert_eq!(child.ping_interval, config.ping_interval);
        assert_eq!(child.run_id, config.run_id);
        assert_eq!(child.shard, Some(Part { index: 1, count: 4 }));
    }

    /// Every connection index of the run belongs to exactly one (segment, shard), the
    /// rates add up to --rate, and every part's ramp lasts as long as the whole run's.
    #[test]
    fn segments_and_their_shards_split_the_run_exactly() {
        for connections in [1, 2, 5, 999, 1000, 2003, 19_000, 100_001] {
            for segments in 1..=7 {
                for shards in [1, 2, 3] {
                    let config = parse(&["--connections", &connections.to_string(), "--rate", "3000"]).unwrap();
                    let mut next_index = 0;
                    let mut rate = 0.0;
                    for segment in 0..segments {
                        for shard in 0..shards {
                            let share = LoadConfig {
                                segment: Some(Part::new(segment, segments).unwrap()),
                                shard: Some(Part::new(shard, shards).unwrap()),
                                ..config.clone()
                            }
                            .share();
                            assert_eq!(share.first_index, next_index, "{connections} over {segments}x{shards}");
                            next_index += share.connections;
                            rate += share.rate;
                            if share.connections > 0 {
                                let ramp = share.connections as f64 / share.rate;
                                assert!((ramp - connections as f64 / 3000.0).abs() < 1e-9);
                            }
                        }
                    }
                    assert_eq!(next_index, connections, "{connections} over {segments}x{shards}");
                    assert!((rate - 3000.0).abs() < 1e-6, "{rate}");
                }
            }
        }
    }

    #[test]
    fn a_segment_takes_its_share_and_its_own_source_addresses() {
        let segment = |index: usize| parse(&["--connections", "30000", "--segment", &format!("{index}/3")]).unwrap();
        let segments: Vec<LoadConfig> = (0..3).map(segment).collect();
        assert_eq!(segments[1].segment_share().connections, 10_000);
        assert_eq!(segments[1].segment_share().first_index, 10_000);
        // 10,000 each: one address per segment, not the same one.
        let sources: Vec<&Vec<IpAddr>> = segments.iter().map(|config| &config.source_ips).collect();
        assert_eq!(sources[0], &["127.0.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(sources[1], &["127.0.1.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(sources[2], &["127.0.1.3".parse::<IpAddr>().unwrap()]);
        // Larger segments take blocks of addresses that do not overlap.
        let big: Vec<Vec<IpAddr>> = (0..4)
            .map(|index| {
                parse(&["--connections", "100000", "--segment", &format!("{index}/4")])
                    .unwrap()
                    .source_ips
            })
            .collect();
        let all: std::collections::BTreeSet<IpAddr> = big.iter().flatten().copied().collect();
        assert!(big.iter().all(|ips| ips.len() == 3), "{big:?}");
        assert_eq!(all.len(), 12, "{big:?}");
        // A whole run keeps today's addresses.
        assert_eq!(parse(&["--connections", "25000"]).unwrap().source_ips, big[0]);
    }

    #[test]
    fn an_indexed_job_names_its_segment_with_index_and_count() {
        let config = parse(&["--connections", "1000", "--segments", "3", "--segment-index", "1"]).unwrap();
        assert_eq!(config.segment, Some(Part { index: 1, count: 3 }));
        assert_eq!(config.segment_share().connections, 333);
        // --segment wins over the index, as long as the counts agree.
        let config = parse(&["--segment", "2/3", "--segments", "3", "--segment-index", "0"]).unwrap();
        assert_eq!(config.segment, Some(Part { index: 2, count: 3 }));
        let err = parse(&["--segment", "2/3", "--segments", "4"]).unwrap_err();
        assert!(err.contains("disagree"), "{err}");
        let err = parse(&["--segments", "3"]).unwrap_err();
        assert!(err.contains("JOB_COMPLETION_INDEX"), "{err}");
        let err = parse(&["--segment-index", "2"]).unwrap_err();
        assert!(err.contains("WSSCALE_LOAD_SEGMENTS"), "{err}");
        let err = parse(&["--segments", "3", "--segment-index", "3"]).unwrap_err();
        assert!(err.contains("below the count"), "{err}");
        let err = parse(&["--segment", "3/3"]).unwrap_err();
        assert!(err.contains("below the count"), "{err}");
        assert!(parse(&["--segment", "1"]).unwrap_err().contains("I/N"));
        assert!(parse(&["--start-at=-5"]).unwrap_err().contains("--start-at"));
    }

    #[test]
    fn segments_of_one_run_derive_one_run_id() {
        let run = |extra: &[&str]| {
            let mut args = vec!["--connections", "900", "--hold", "30s"];
            args.extend_from_slice(extra);
            parse(&args).unwrap().run_id
        };
        let id = run(&["--segment", "0/3", "--start-at", "1767225600"]);
        assert_eq!(id.len(), 16, "{id}");
        // Per-process settings do not change it.
        assert_eq!(
            run(&[
                "--segment",
                "2/3",
                "--start-at",
                "1767225600",
                "--concurrency",
                "7",
                "--processes",
                "2"
            ]),
            id
        );
        // What the run is does.
        assert_ne!(run(&["--segment", "0/3", "--start-at", "1767225601"]), id);
        assert_ne!(run(&["--segment", "0/4", "--start-at", "1767225600"]), id);
        assert_ne!(
            run(&["--segment", "0/3", "--start-at", "1767225600", "--reconnect"]),
            id
        );
        assert_eq!(run(&["--segment", "0/3", "--run-id", "nightly-42"]), "nightly-42");
    }
}
