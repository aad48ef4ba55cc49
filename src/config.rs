//! The command line: clap derive structs, every flag with an environment variable, and
//! their validation into the [`ServeConfig`] the server runs with.
//!
//! The buffer and size flags are optional: unset, each engine runs with its own defaults
//! ([`Engine::defaults`]): the lean engine's are chosen for tens of thousands of idle
//! connections (a small read buffer lent per read, writes straight to the socket, a
//! modest thread stack); the stock engine's are the libraries' own (tungstenite's 128 KiB
//! read buffer, allocated eagerly, costs ~135 KB per idle connection). Set, a flag means
//! the same value in every engine and mode, and [`Buffers`] records where each value
//! came from.

use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

pub use crate::deflate::{DeflateConfig, DeflateMode};

#[derive(Debug, Parser)]
#[command(name = "wsscale", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// `allow`, not `expect`: whether the lint fires depends on the other variants' flags too.
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once; `load` simply has the most options"
)]
pub enum Command {
    /// Serve WebSocket echo connections on /ws, one Tokio task or one OS thread each.
    Serve(ServeArgs),
    /// Open, hold and measure N WebSocket connections, then close them and summarise.
    ///
    /// Ramps up at --rate with at most --concurrency handshakes in flight, holds every
    /// connection for --hold with pings on a fixed schedule, closes each with 1000 and
    /// prints a summary (and --json FILE). Runs bigger than one process's fd limit are
    /// sharded over child processes; a loopback target gets source addresses spread over
    /// 127.0.0.0/8. Before the first connection, a preflight check refuses a run that
    /// cannot succeed and says why. Runs bigger than one machine are split into segments
    /// (--segment I/N, one generator each) whose summaries `wsscale load merge` adds up;
    /// --reconnect brings back connections the server drops.
    Load(wsscale_loadgen::LoadArgs),
    /// Measure what an idle connection costs as a Tokio task and as an OS thread, with
    /// wsscale's lean engine and the stock tungstenite stack (and any server you name),
    /// and write a report with charts.
    ///
    /// Starts `wsscale serve` as a child process for each mode and engine with the same
    /// flags (and each --server command), opens connections in steps, waits at each step
    /// until the server's memory is steady, samples /metrics (cross-checked against
    /// /proc/PID) or /proc, fits memory against connections, and writes report.md,
    /// summary.json and SVG charts to --out.
    Compare(CompareArgs),
}

/// The execution model: what each connection costs is what this tool measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One Tokio task per connection on the multi-threaded scheduler (axum + hyper).
    Tasks,
    /// One OS thread per connection, blocking in poll(2) on its socket.
    Threads,
}

impl Mode {
    /// Every execution model, in the order `compare` measures them.
    pub const ALL: [Mode; 2] = [Mode::Tasks, Mode::Threads];

    /// The value of the `mode` label on every metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tasks => "tasks",
            Mode::Threads => "threads",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The WebSocket engine, orthogonal to the execution model: the same modes, permits,
/// handshake policy, timers and metrics, with a different implementation of the protocol
/// after the 101.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// wsscale's own RFC 6455 engine (protocol.rs, session.rs): an idle connection holds
    /// no buffer.
    Lean,
    /// The stock stack, as tutorials write it: axum's WebSocketUpgrade on tokio-tungstenite
    /// (tasks mode), blocking tungstenite on each connection's thread (threads mode).
    Tungstenite,
}

impl Engine {
    /// Every engine, in the order `compare` measures them.
    pub const ALL: [Engine; 2] = [Engine::Lean, Engine::Tungstenite];

    /// The value of the `engine` label on every metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Lean => "lean",
            Engine::Tungstenite => "tungstenite",
        }
    }

    /// Whether the engine sends server pushes (POST /broadcast, --push-interval): the lean
    /// engine watches the board for them; the stock echo does not.
    pub fn pushes(self) -> bool {
        matches!(self, Engine::Lean)
    }

    /// The engine's own defaults for the buffer and size flags.
    pub fn defaults(self) -> BufferDefaults {
        match self {
            Engine::Lean => BufferDefaults {
                read_buffer_size: 4 * 1024,
                write_buffer_size: 0,
                max_message_size: 64 * 1024,
                thread_stack_size: 256 * 1024,
            },
            // tungstenite's WebSocketConfig::default() and Rust's default thread stack.
            Engine::Tungstenite => BufferDefaults {
                read_buffer_size: 128 * 1024,
                write_buffer_size: 128 * 1024,
                max_message_size: 64 << 20,
                thread_stack_size: rust_default_stack_size(),
            },
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stack a std thread gets when none is asked for: RUST_MIN_STACK, else 2 MiB.
fn rust_default_stack_size() -> usize {
    std::env::var("RUST_MIN_STACK")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(2 << 20)
}

/// An engine's defaults for the buffer and size flags, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferDefaults {
    pub read_buffer_size: usize,
    pub write_buffer_size: usize,
    pub max_message_size: usize,
    pub thread_stack_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Execution model: one Tokio task per connection, or one OS thread per connection.
    #[arg(long, env = "WSSCALE_MODE", value_enum, default_value_t = Mode::Tasks)]
    pub mode: Mode,

    /// WebSocket engine: wsscale's own (lean), or the stock tokio-tungstenite/tungstenite
    /// stack with the libraries' defaults (tungstenite). Orthogonal to --mode.
    #[arg(long, env = "WSSCALE_ENGINE", value_enum, default_value_t = Engine::Lean)]
    pub engine: Engine,

    /// Address for WebSocket clients (GET /ws). Port 0 picks a free port; the bound
    /// address is printed on stdout.
    #[arg(long, env = "WSSCALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Address for GET /metrics (Prometheus) and GET /healthz.
    #[arg(long, env = "WSSCALE_METRICS_LISTEN", default_value = "127.0.0.1:9100")]
    pub metrics_listen: SocketAddr,

    /// Most WebSocket connections held at once; clients beyond it get HTTP 503.
    /// Default: the file-descriptor limit minus a reserve (and, in threads mode, what
    /// vm.max_map_count and pid_max allow).
    #[arg(long, env = "WSSCALE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// How often the server pings each connection.
    #[arg(long, env = "WSSCALE_PING_INTERVAL", default_value = "30s")]
    pub ping_interval: humantime::Duration,

    /// A connection with no traffic from the peer for this long is closed (dead peers
    /// are reaped). Must be longer than the ping interval.
    #[arg(long, env = "WSSCALE_IDLE_TIMEOUT", default_value = "90s")]
    pub idle_timeout: humantime::Duration,

    /// Time a client has to send a complete upgrade request (slowloris defence).
    #[arg(long, env = "WSSCALE_HANDSHAKE_TIMEOUT", default_value = "10s")]
    pub handshake_timeout: humantime::Duration,

    /// Most connections in their HTTP phase (accepted, upgrade not yet answered) at once,
    /// apart from the connection cap: past it, accept pauses and new clients wait in the
    /// kernel's listen backlog until a handshake finishes or times out. A connection in
    /// its HTTP phase holds no connection permit and no thread, in any mode.
    #[arg(long, env = "WSSCALE_MAX_HANDSHAKES", default_value_t = 1024)]
    pub max_handshakes: usize,

    /// Give the allocator's free memory back to the OS (glibc malloc_trim) once no
    /// handshake is in flight and the resident memory outside the live heap has grown by
    /// this much since the last time: what a burst of handshakes leaves behind. 0: never.
    #[arg(long, env = "WSSCALE_TRIM_THRESHOLD", default_value = "1MiB")]
    pub trim_threshold: ByteSize,

    /// On SIGINT/SIGTERM, how long to wait for connections to finish closing.
    #[arg(long, env = "WSSCALE_DRAIN_TIMEOUT", default_value = "10s")]
    pub drain_timeout: humantime::Duration,

    /// On SIGINT/SIGTERM, first answer GET /healthz with 503 for this long while still
    /// serving and accepting, so a balancer's health checks (or a readiness probe) take
    /// the server out before it stops accepting; then close every session with 1001 and
    /// drain. A second signal skips the rest of the delay. 0: shut down at once. Set it
    /// longer than the balancer needs to mark a server down (interval x fall).
    #[arg(long, env = "WSSCALE_DRAIN_DELAY", default_value = "0s")]
    pub drain_delay: humantime::Duration,

    /// The buffer and size flags, shared with `compare` (which passes them to every server).
    #[command(flatten)]
    pub buffers: BufferArgs,

    /// permessage-deflate (RFC 7692), lean engine only: `off` declines every offer;
    /// `stateless` accepts, asking for no context takeover both ways, so nothing of
    /// compression is held between messages (streams are pooled per process); `context`
    /// accepts with a compression window per connection of at most
    /// --deflate-window-bits. An offer of server_max_window_bits=8 is declined (zlib
    /// cannot deflate with it).
    #[arg(long, env = "WSSCALE_DEFLATE", value_enum, default_value = "off")]
    pub deflate: DeflateMode,

    /// The largest window either side may use with `--deflate context`: 9 to 15 (bits;
    /// 15 is 32 KiB, what zlib's defaults use).
    #[arg(long, env = "WSSCALE_DEFLATE_WINDOW_BITS", default_value_t = 15, value_parser = clap::value_parser!(u8).range(9..=15))]
    pub deflate_window_bits: u8,

    /// Serve POST /broadcast?size=BYTES on the metrics listener: one binary message to
    /// every held connection (lean engine; a stock server answers 501). Off by default,
    /// so a scraped metrics port never doubles as a trigger.
    #[arg(long, env = "WSSCALE_ALLOW_BROADCAST")]
    pub allow_broadcast: bool,

    /// Push one binary message to every held connection this often (lean engine; default
    /// off). Payload: `WSSP`, the sequence number and the send time (see README).
    #[arg(long, env = "WSSCALE_PUSH_INTERVAL")]
    pub push_interval: Option<humantime::Duration>,

    /// Size of each push (at least 20 bytes: magic, sequence number, send time), for
    /// --push-interval and for POST /broadcast without ?size.
    #[arg(long, env = "WSSCALE_PUSH_SIZE", default_value = "32B")]
    pub push_size: ByteSize,

    /// TLS on the WebSocket listener (wss://); the metrics listener stays plain.
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Connections at the last step.
    #[arg(long, short = 'n', env = "WSSCALE_COMPARE_CONNECTIONS", default_value_t = 10_000)]
    pub connections: usize,

    /// The steps: a count K (K even steps up to --connections, after 0), or a list of
    /// connection counts such as 0,1000,5000. Default: 0, 10%, 25%, 50%, 75%, 100%.
    #[arg(long, env = "WSSCALE_COMPARE_STEPS")]
    pub steps: Option<String>,

    /// Execution models to measure, in order.
    #[arg(
        long,
        env = "WSSCALE_COMPARE_MODES",
        value_enum,
        value_delimiter = ',',
        default_value = "tasks,threads"
    )]
    pub modes: Vec<Mode>,

    /// Engines to measure in every mode: lean (wsscale's own) and tungstenite (the stock
    /// axum / tokio-tungstenite stack with the libraries' defaults).
    #[arg(
        long,
        env = "WSSCALE_COMPARE_ENGINES",
        value_enum,
        value_delimiter = ',',
        default_value = "lean,tungstenite"
    )]
    pub engines: Vec<Engine>,

    /// Schemes to measure every wsscale run in: ws (plain TCP) and wss (TLS, with one
    /// ECDSA P-256 certificate compare makes in --out). A wss run is named
    /// `<mode>-<engine>-wss`.
    #[arg(
        long,
        env = "WSSCALE_COMPARE_SCHEMES",
        value_enum,
        value_delimiter = ',',
        default_value = "ws"
    )]
    pub schemes: Vec<Scheme>,

    /// permessage-deflate settings to measure every lean-engine run with (a list like
    /// --modes): `off`, `stateless` (named `<mode>-lean-stateless`), `context` (one run per
    /// --deflate-window-bits, named `<mode>-lean-context15`, ...). The stock engine has no
    /// permessage-deflate: its runs are measured once, declining. When any is not `off`,
    /// the generator offers the extension as a browser does in every run (see
    /// --offer-deflate), so every server is measured with the same client.
    #[arg(
        long,
        env = "WSSCALE_COMPARE_DEFLATE",
        value_enum,
        value_delimiter = ',',
        default_value = "off"
    )]
    pub deflate: Vec<DeflateMode>,

    /// Window bits for the `context` runs of --deflate: 9 to 15, a list (one run each).
    #[arg(
        long,
        env = "WSSCALE_COMPARE_DEFLATE_WINDOW_BITS",
        value_delimiter = ',',
        default_value = "15",
        value_parser = clap::value_parser!(u8).range(9..=15)
    )]
    pub deflate_window_bits: Vec<u8>,

    /// The generator offers permessage-deflate on every upgrade: as Chromium does
    /// (`permessage-deflate; client_max_window_bits`) when given bare, or the offer
    /// PARAMS (as `wsscale load --offer-deflate`). On by itself when --deflate lists
    /// anything but off; with --deflate off it measures how servers that accept by
    /// default (`--server`) cost with a browser-like client.
    #[arg(
        long,
        env = "WSSCALE_COMPARE_OFFER_DEFLATE",
        value_name = "PARAMS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = wsscale_loadgen::offer::BROWSER_OFFER
    )]
    pub offer_deflate: Option<String>,

    /// Also measure any WebSocket server: NAME=COMMAND (repeatable). COMMAND runs under
    /// `sh -c` in its own process group, with `{port}` replaced by a free port (also in
    /// WSSCALE_PORT); it must answer WebSocket upgrades on --path. Its RSS, threads and
    /// fds are read from /proc for the process and its descendants. Env: one NAME=COMMAND
    /// per line. A command that uses `{cert}` and `{key}` (compare's certificate and key,
    /// PEM) serves wss:// and is measured over TLS. Example: --server 'node-ws=node
    /// peers/node-ws/server.js {port}'.
    #[arg(long = "server", env = "WSSCALE_COMPARE_SERVERS", value_delimiter = '\n')]
    pub servers: Vec<String>,

    /// Path external servers upgrade on.
    #[arg(long, env = "WSSCALE_COMPARE_PATH", default_value = "/ws")]
    pub path: String,

    /// How long an external server may take to start answering upgrades.
    #[arg(long, env = "WSSCALE_COMPARE_SERVER_START_TIMEOUT", default_value = "60s")]
    pub server_start_timeout: humantime::Duration,

    /// Report folder (created; existing report files are replaced).
    #[arg(long, env = "WSSCALE_COMPARE_OUT", default_value = "report")]
    pub out: std::path::PathBuf,

    /// New connections per second while stepping up.
    #[arg(long, env = "WSSCALE_COMPARE_RATE", default_value_t = 5000.0)]
    pub rate: f64,

    /// Connects + upgrades in flight while stepping up.
    #[arg(long, env = "WSSCALE_COMPARE_CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,

    /// Longest wait at a step for the server's memory to settle before sampling anyway.
    #[arg(long, env = "WSSCALE_COMPARE_SETTLE_TIMEOUT", default_value = "10s")]
    pub settle_timeout: humantime::Duration,

    /// Client pings per connection while held (their round trips are reported per step).
    #[arg(long, env = "WSSCALE_COMPARE_PING_INTERVAL", default_value = "2s")]
    pub ping_interval: humantime::Duration,

    /// When a limit (fds, vm.max_map_count, pid_max, threads-max) cannot fit
    /// --connections, run with the largest count that fits instead of refusing.
    #[arg(long, env = "WSSCALE_COMPARE_FIT_LIMITS")]
    pub fit_limits: bool,

    /// The buffer and size flags for every wsscale server (default: each engine's own),
    /// with the same environment variables as `wsscale serve`'s.
    #[command(flatten)]
    pub buffers: BufferArgs,

    /// Also measure server push at each step (lean-engine runs): after the memory sample,
    /// --push-count broadcasts one second apart; reports delivery latency to every
    /// connection, and the server's CPU and context switches per broadcast, each net of
    /// an equal window with no broadcast.
    #[arg(long, env = "WSSCALE_COMPARE_PUSH")]
    pub push: bool,

    /// Broadcasts per step with --push.
    #[arg(long, env = "WSSCALE_COMPARE_PUSH_COUNT", default_value_t = 10)]
    pub push_count: usize,

    /// Size of each push with --push.
    #[arg(long, env = "WSSCALE_COMPARE_PUSH_SIZE", default_value = "32B")]
    pub push_size: ByteSize,

    /// With --push, the floor program (floor-sender, of the wsscale-floor package): run as
    /// one more run, `floor`, and each push figure divided by its. Default: floor-sender
    /// beside this executable, else on PATH; when none is found the report says why (build
    /// it with `cargo build --release -p wsscale-floor`).
    #[arg(long, env = "WSSCALE_FLOOR_SENDER", value_name = "PATH")]
    pub floor_sender: Option<std::path::PathBuf>,
}

/// TLS on the WebSocket listener: a certificate and key from files, or a self-signed
/// certificate made at start. Declared once, for `serve`; `compare` passes the files it
/// makes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct TlsArgs {
    /// Serve wss:// with this certificate chain (PEM, leaf first). Needs --tls-key.
    #[arg(
        long,
        env = "WSSCALE_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "tls_self_signed"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "WSSCALE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Serve wss:// with a certificate for localhost, 127.0.0.1 and ::1 made at start
    /// (ECDSA P-256). Its PEM is written to a file whose path the start line gives
    /// (`cert=PATH`), for clients to trust (`wsscale load --tls-ca PATH`).
    #[arg(long, env = "WSSCALE_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
}

impl TlsArgs {
    /// The TLS the flags ask for, if any.
    pub fn source(&self) -> Option<TlsSource> {
        match (&self.tls_cert, &self.tls_key, self.tls_self_signed) {
            (Some(cert), Some(key), _) => Some(TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (_, _, true) => Some(TlsSource::SelfSigned),
            _ => None,
        }
    }

    /// The flags that were set, as `wsscale serve` takes them.
    pub fn to_args(&self) -> Vec<String> {
        let TlsArgs {
            tls_cert,
            tls_key,
            tls_self_signed,
        } = self;
        let mut args = Vec::new();
        for (flag, path) in [("--tls-cert", tls_cert), ("--tls-key", tls_key)] {
            if let Some(path) = path {
                args.extend([flag.to_owned(), path.display().to_string()]);
            }
        }
        if *tls_self_signed {
            args.push("--tls-self-signed".to_owned());
        }
        args
    }
}

/// Where a server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    Files {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
    SelfSigned,
}

/// The URL scheme a server speaks: the `scheme` label of every metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain TCP.
    Ws,
    /// TLS (rustls).
    Wss,
}

impl Scheme {
    pub const ALL: [Scheme; 2] = [Scheme::Ws, Scheme::Wss];

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The buffer and size flags, declared once: `wsscale serve` reads them, and `wsscale
/// compare` passes the same values to every server it starts. Unset, each engine runs with
/// its own defaults ([`Engine::defaults`]); [`Buffers::resolve`] says which applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Args)]
pub struct BufferArgs {
    /// Largest message (and frame) accepted; larger ones are closed with 1009. Accepts
    /// units: 65536, 64KiB, 1MiB. [default: 64KiB (lean), 64MiB (tungstenite; frames
    /// 16MiB)]
    #[arg(long, env = "WSSCALE_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<ByteSize>,

    /// Bytes read from a socket at a time. Lean: into a buffer lent for that read only
    /// (an idle connection holds none). Tungstenite: its read_buffer_size, allocated when
    /// the connection opens and held for its life. [default: 4KiB (lean), 128KiB
    /// (tungstenite)]
    #[arg(long, env = "WSSCALE_READ_BUFFER_SIZE")]
    pub read_buffer_size: Option<ByteSize>,

    /// Most answers queued for a peer that does not read before the server stops reading
    /// from it (0: one maximum-size message). Answers are written as soon as they exist.
    /// Tungstenite: write_buffer_size 0 and max_write_buffer_size this value. [default: 0
    /// (lean); tungstenite's own: buffer 128KiB, no cap]
    #[arg(long, env = "WSSCALE_WRITE_BUFFER_SIZE")]
    pub write_buffer_size: Option<ByteSize>,

    /// Stack size of each connection thread (threads mode). Only touched pages count in
    /// RSS; the kernel adds its own 16 KiB stack per thread regardless. [default: 256KiB
    /// (lean), Rust's default of 2MiB (tungstenite)]
    #[arg(long, env = "WSSCALE_THREAD_STACK_SIZE")]
    pub thread_stack_size: Option<ByteSize>,
}

impl BufferArgs {
    /// The flags that were set, as `wsscale serve` takes them (sizes in bytes).
    pub fn to_args(&self) -> Vec<String> {
        let BufferArgs {
            max_message_size,
            read_buffer_size,
            write_buffer_size,
            thread_stack_size,
        } = self;
        [
            ("--max-message-size", max_message_size),
            ("--read-buffer-size", read_buffer_size),
            ("--write-buffer-size", write_buffer_size),
            ("--thread-stack-size", thread_stack_size),
        ]
        .into_iter()
        .filter_map(|(flag, value)| Some([flag.to_owned(), value.as_ref()?.as_u64().to_string()]))
        .flatten()
        .collect()
    }
}

/// Where a setting's value came from: the engine's defaults, or a flag (on the command
/// line or in its environment variable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    EngineDefault,
    Flag,
}

/// One setting in force, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    pub value: usize,
    pub source: Source,
}

impl Setting {
    fn resolve(flag: Option<usize>, default: usize) -> Setting {
        match flag {
            Some(value) => Setting {
                value,
                source: Source::Flag,
            },
            None => Setting {
                value: default,
                source: Source::EngineDefault,
            },
        }
    }

    pub fn is_flag(&self) -> bool {
        self.source == Source::Flag
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match self.source {
            Source::EngineDefault => "engine default",
            Source::Flag => "flag",
        };
        write!(f, "{} ({source})", self.value)
    }
}

/// The buffer and size settings in force, bytes. Written to the startup log and to
/// `compare`'s summary.json, so a figure always says what it was measured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffers {
    pub read_buffer_size: Setting,
    pub write_buffer_size: Setting,
    pub max_message_size: Setting,
    pub thread_stack_size: Setting,
}

impl Buffers {
    /// The settings an engine runs with under `flags`: each flag that is set, else the
    /// engine's default. Refuses a zero where zero means nothing, sizes past 1 GiB and a
    /// thread stack under 64 KiB, naming the flag.
    pub fn resolve(engine: Engine, flags: &BufferArgs) -> Result<Buffers, ConfigError> {
        const MAX_SIZE: u64 = 1 << 30;
        let size = |flag: &'static str, value: Option<ByteSize>, allow_zero: bool| {
            let Some(value) = value.map(|value| value.as_u64()) else {
                return Ok(None);
            };
            if value == 0 && !allow_zero {
                Err(ConfigError::Zero { flag })
            } else if value > MAX_SIZE {
                Err(ConfigError::TooLarge {
                    flag,
                    value,
                    max: MAX_SIZE,
                })
            } else {
                Ok(Some(value as usize))
            }
        };
        let thread_stack_size = size("thread-stack-size", flags.thread_stack_size, false)?;
        if let Some(stack) = thread_stack_size
            && stack < 64 * 1024
        {
            return Err(ConfigError::StackTooSmall(stack as u64));
        }
        let defaults = engine.defaults();
        Ok(Buffers {
            read_buffer_size: Setting::resolve(
                size("read-buffer-size", flags.read_buffer_size, false)?,
                defaults.read_buffer_size,
            ),
            write_buffer_size: Setting::resolve(
                size("write-buffer-size", flags.write_buffer_size, true)?,
                defaults.write_buffer_size,
            ),
            max_message_size: Setting::resolve(
                size("max-message-size", flags.max_message_size, false)?,
                defaults.max_message_size,
            ),
            thread_stack_size: Setting::resolve(thread_stack_size, defaults.thread_stack_size),
        })
    }

    /// Most answers queued for a peer that does not read: --write-buffer-size, but room
    /// for one maximum-size answer (with its frame header) at least.
    pub fn max_unsent(&self) -> usize {
        self.write_buffer_size.value.max(self.max_message_size.value + 14)
    }

    /// tungstenite's configuration for the stock engine: its own defaults, with every
    /// flag that was set mapped onto it (--write-buffer-size V becomes write_buffer_size 0
    /// and max_write_buffer_size max(V, one maximum-size message), as the lean engine
    /// reads it; --max-message-size bounds messages and frames).
    pub fn tungstenite_config(&self) -> tungstenite::protocol::WebSocketConfig {
        let mut config = tungstenite::protocol::WebSocketConfig::default();
        if self.read_buffer_size.is_flag() {
            config = config.read_buffer_size(self.read_buffer_size.value);
        }
        if self.write_buffer_size.is_flag() {
            config = config.write_buffer_size(0).max_write_buffer_size(self.max_unsent());
        }
        if self.max_message_size.is_flag() {
            config = config
                .max_message_size(Some(self.max_message_size.value))
                .max_frame_size(Some(self.max_message_size.value));
        }
        config
    }
}

/// A validated server configuration. Every execution model and engine reads the same
/// one, so a comparison measures the model (or the engine) and nothing else.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub mode: Mode,
    pub engine: Engine,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// `None` means "derive from the limits at start" (see [`crate::limits`]).
    pub max_connections: Option<usize>,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_handshakes: usize,
    /// Bytes; 0: never trim (see `ServeArgs::trim_threshold`).
    pub trim_threshold: u64,
    pub drain_timeout: Duration,
    /// How long /healthz answers 503 before the shutdown proper (see [`crate::drain`]).
    pub drain_delay: Duration,
    pub buffers: Buffers,
    pub allow_broadcast: bool,
    pub push_interval: Option<Duration>,
    pub push_size: usize,
    /// TLS on the WebSocket listener, when asked for.
    pub tls: Option<TlsSource>,
    /// permessage-deflate: whether and how the lean engine accepts it.
    pub deflate: DeflateConfig,
}

impl ServeConfig {
    /// ws, or wss with TLS.
    pub fn scheme(&self) -> Scheme {
        if self.tls.is_some() { Scheme::Wss } else { Scheme::Ws }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--deflate needs the lean engine: tungstenite has no permessage-deflate and declines every offer (run it with --deflate off)"
    )]
    DeflateNeedsLean,
    #[error(
        "--idle-timeout ({idle:?}) must be longer than --ping-interval ({ping:?}), or live peers would be reaped between pings"
    )]
    IdleNotAbovePing { idle: Duration, ping: Duration },
    #[error("--{flag} must be greater than zero")]
    Zero { flag: &'static str },
    #[error("--{flag} is {value} bytes; the most this build accepts is {max}")]
    TooLarge { flag: &'static str, value: u64, max: u64 },
    #[error("--thread-stack-size must be at least 64KiB (got {0} bytes)")]
    StackTooSmall(u64),
    #[error("--push-size must be between 20 bytes (the push header) and --max-message-size ({max}); got {size}")]
    PushSize { size: u64, max: usize },
    #[error("{0} needs the lean engine: server push is not part of the stock tungstenite echo")]
    PushNeedsLean(&'static str),
    #[error(
        "--drain-delay ({0:?}) is longer than {MAX_DRAIN_DELAY:?}: a balancer takes a failing server out within seconds (check interval x fall)"
    )]
    DrainDelayTooLong(Duration),
}

/// The longest `--drain-delay` accepted: anything longer is a mistyped unit, not a drain.
pub const MAX_DRAIN_DELAY: Duration = Duration::from_secs(3600);

impl TryFrom<ServeArgs> for ServeConfig {
    type Error = ConfigError;

    fn try_from(args: ServeArgs) -> Result<Self, ConfigError> {
        let ping_interval = Duration::from(args.ping_interval);
        let idle_timeout = Duration::from(args.idle_timeout);
        if ping_interval.is_zero() {
            return Err(ConfigError::Zero { flag: "ping-interval" });
        }
        if idle_timeout <= ping_interval {
            return Err(ConfigError::IdleNotAbovePing {
                idle: idle_timeout,
                ping: ping_interval,
            });
        }
        let handshake_timeout = Duration::from(args.handshake_timeout);
        if handshake_timeout.is_zero() {
            return Err(ConfigError::Zero {
                flag: "handshake-timeout",
            });
        }
        let drain_delay = Duration::from(args.drain_delay);
        if drain_delay > MAX_DRAIN_DELAY {
            return Err(ConfigError::DrainDelayTooLong(drain_delay));
        }
        if args.max_handshakes == 0 {
            return Err(ConfigError::Zero { flag: "max-handshakes" });
        }
        if args.max_connections == Some(0) {
            return Err(ConfigError::Zero {
                flag: "max-connections",
            });
        }
        let buffers = Buffers::resolve(args.engine, &args.buffers)?;
        let push_size = args.push_size.as_u64();
        if push_size < wsscale_wire::push::HEADER_LEN as u64 || push_size > buffers.max_message_size.value as u64 {
            return Err(ConfigError::PushSize {
                size: push_size,
                max: buffers.max_message_size.value,
            });
        }
        let push_interval = args
            .push_interval
            .map(Duration::from)
            .filter(|interval| !interval.is_zero());
        if !args.engine.pushes() && push_interval.is_some() {
            return Err(ConfigError::PushNeedsLean("--push-interval"));
        }
        if args.engine != Engine::Lean && args.deflate != DeflateMode::Off {
            return Err(ConfigError::DeflateNeedsLean);
        }
        Ok(ServeConfig {
            mode: args.mode,
            engine: args.engine,
            listen: args.listen,
            metrics_listen: args.metrics_listen,
            max_connections: args.max_connections,
            ping_interval,
            idle_timeout,
            handshake_timeout,
            max_handshakes: args.max_handshakes,
            trim_threshold: args.trim_threshold.as_u64(),
            drain_timeout: args.drain_timeout.into(),
            drain_delay,
            buffers,
            allow_broadcast: args.allow_broadcast,
            push_interval,
            push_size: push_size as usize,
            tls: args.tls.source(),
            deflate: DeflateConfig {
                mode: args.deflate,
                window_bits: args.deflate_window_bits,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServeConfig, String> {
        let mut argv = vec!["wsscale", "serve"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        ServeConfig::try_from(serve).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_for_many_idle_connections() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.mode, Mode::Tasks);
        assert_eq!(config.engine, Engine::Lean);
        let buffers = config.buffers;
        assert_eq!(buffers.read_buffer_size.value, 4096);
        assert_eq!(buffers.write_buffer_size.value, 0);
        assert_eq!(buffers.max_message_size.value, 64 * 1024);
        assert_eq!(buffers.thread_stack_size.value, 256 * 1024);
        assert_eq!(buffers.read_buffer_size.source, Source::EngineDefault);
        assert!(config.idle_timeout > config.ping_interval);
        assert_eq!(config.trim_threshold, 1 << 20);
        assert_eq!(
            config.drain_delay,
            Duration::ZERO,
            "no delay: shut down at once, as before"
        );
    }

    #[test]
    fn the_stock_engine_runs_with_the_libraries_defaults() {
        let config = parse(&["--engine", "tungstenite"]).unwrap();
        let buffers = config.buffers;
        assert_eq!(buffers.read_buffer_size.value, 128 * 1024);
        assert_eq!(buffers.max_message_size.value, 64 << 20);
        // Nothing set, nothing changed (WebSocketConfig has no PartialEq).
        assert_eq!(
            format!("{:?}", buffers.tungstenite_config()),
            format!("{:?}", tungstenite::protocol::WebSocketConfig::default())
        );
        let set = parse(&[
            "--engine",
            "tungstenite",
            "--read-buffer-size",
            "4KiB",
            "--write-buffer-size",
            "0",
            "--max-message-size",
            "1MiB",
        ])
        .unwrap();
        let tungstenite = set.buffers.tungstenite_config();
        assert_eq!(set.buffers.read_buffer_size.source, Source::Flag);
        assert_eq!(tungstenite.read_buffer_size, 4096);
        assert_eq!(tungstenite.write_buffer_size, 0);
        assert_eq!(
            tungstenite.max_write_buffer_size,
            (1 << 20) + 14,
            "0 means one maximum-size message, as in the lean engine"
        );
        assert_eq!(tungstenite.max_message_size, Some(1 << 20));
        assert_eq!(tungstenite.max_frame_size, Some(1 << 20));
    }

    #[test]
    fn sizes_and_durations_take_units() {
        let config = parse(&[
            "--mode",
            "threads",
            "--read-buffer-size",
            "1KiB",
            "--max-message-size",
            "1MiB",
            "--ping-interval",
            "500ms",
            "--idle-timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(config.mode, Mode::Threads);
        assert_eq!(config.buffers.read_buffer_size.value, 1024);
        assert_eq!(config.buffers.max_message_size.value, 1 << 20);
        assert_eq!(config.ping_interval, Duration::from_millis(500));
        assert_eq!(
            parse(&["--trim-threshold", "0"]).unwrap().trim_threshold,
            0,
            "0 turns trimming off"
        );
        assert_eq!(parse(&["--trim-threshold", "4MiB"]).unwrap().trim_threshold, 4 << 20);
        assert_eq!(
            parse(&["--drain-delay", "5s"]).unwrap().drain_delay,
            Duration::from_secs(5)
        );
    }

    #[test]
    fn bad_input_is_refused_with_the_flag_named() {
        let err = parse(&["--idle-timeout", "1s", "--ping-interval", "2s"]).unwrap_err();
        assert!(err.contains("--idle-timeout"), "{err}");
        let err = parse(&["--read-buffer-size", "0"]).unwrap_err();
        assert!(err.contains("--read-buffer-size"), "{err}");
        let err = parse(&["--max-connections", "0"]).unwrap_err();
        assert!(err.contains("--max-connections"), "{err}");
        let err = parse(&["--mode", "fibers"]).unwrap_err();
        assert!(err.contains("tasks") && err.contains("threads"), "{err}");
        let err = parse(&["--thread-stack-size", "4KiB"]).unwrap_err();
        assert!(err.contains("--thread-stack-size"), "{err}");
        let err = parse(&["--push-size", "8B"]).unwrap_err();
        assert!(err.contains("--push-size"), "{err}");
        let err = parse(&["--engine", "tungstenite", "--push-interval", "1s"]).unwrap_err();
        assert!(err.contains("lean engine"), "{err}");
        let err = parse(&["--drain-delay", "2h"]).unwrap_err();
        assert!(err.contains("--drain-delay"), "{err}");
        let err = parse(&["--drain-delay=-1s"]).unwrap_err();
        assert!(err.contains("drain-delay"), "{err}");
    }
}
