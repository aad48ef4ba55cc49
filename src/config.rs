//! The command line: clap derive structs, every flag with an environment variable, and
//! their validation into the [`ServeConfig`] the server runs with.
//!
//! Defaults are chosen for tens of thousands of idle connections: a small read buffer
//! (tungstenite's default of 128 KiB, allocated eagerly, would cost ~135 KB per idle
//! connection), writes that go straight to the socket, and a modest thread stack.

use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Measure what an idle connection costs as a Tokio task and as an OS thread, and
    /// write a report with charts.
    ///
    /// Starts `wsscale serve` as a child process in each mode with the same
    /// configuration, opens connections in steps, waits at each step until the server's
    /// memory is steady, samples /metrics (cross-checked against /proc/PID), fits memory
    /// against connections, and writes report.md, summary.json and SVG charts to --out.
    Compare(CompareArgs),
}

/// The execution model: what each connection costs is what this tool measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One Tokio task per connection on the multi-threaded scheduler (axum + hyper).
    Tasks,
    /// One OS thread per connection, blocking in poll(2) on its socket.
    Threads,
}

impl Mode {
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

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Execution model: one Tokio task per connection, or one OS thread per connection.
    #[arg(long, env = "WSSCALE_MODE", value_enum, default_value_t = Mode::Tasks)]
    pub mode: Mode,

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

    /// On SIGINT/SIGTERM, how long to wait for connections to finish closing.
    #[arg(long, env = "WSSCALE_DRAIN_TIMEOUT", default_value = "10s")]
    pub drain_timeout: humantime::Duration,

    /// Largest message (and frame) accepted; larger ones are closed with 1009.
    /// Accepts units: 65536, 64KiB, 1MiB.
    #[arg(long, env = "WSSCALE_MAX_MESSAGE_SIZE", default_value = "64KiB")]
    pub max_message_size: ByteSize,

    /// Bytes read from a socket at a time, into a buffer lent for that read only (an idle
    /// connection holds no read buffer).
    #[arg(long, env = "WSSCALE_READ_BUFFER_SIZE", default_value = "4KiB")]
    pub read_buffer_size: ByteSize,

    /// Most answers queued for a peer that does not read before the server stops reading
    /// from it (0: one maximum-size message). Answers are written as soon as they exist.
    #[arg(long, env = "WSSCALE_WRITE_BUFFER_SIZE", default_value = "0")]
    pub write_buffer_size: ByteSize,

    /// Stack size of each connection thread (threads mode). Only touched pages count in
    /// RSS; the kernel adds its own 16 KiB stack per thread regardless.
    #[arg(long, env = "WSSCALE_THREAD_STACK_SIZE", default_value = "256KiB")]
    pub thread_stack_size: ByteSize,
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

    /// Server read buffer (both modes).
    #[arg(long, env = "WSSCALE_COMPARE_READ_BUFFER_SIZE")]
    pub read_buffer_size: Option<ByteSize>,

    /// Server thread stack size (threads mode).
    #[arg(long, env = "WSSCALE_COMPARE_THREAD_STACK_SIZE")]
    pub thread_stack_size: Option<ByteSize>,
}

/// A validated server configuration. Both execution models read the same one, so a
/// comparison measures the execution model and nothing else.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub mode: Mode,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// `None` means "derive from the limits at start" (see [`crate::limits`]).
    pub max_connections: Option<usize>,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_message_size: usize,
    pub read_buffer_size: usize,
    pub write_buffer_size: usize,
    pub thread_stack_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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
}

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
        if args.max_connections == Some(0) {
            return Err(ConfigError::Zero {
                flag: "max-connections",
            });
        }
        const MAX_SIZE: u64 = 1 << 30;
        let size = |flag: &'static str, value: ByteSize, allow_zero: bool| {
            let value = value.as_u64();
            if value == 0 && !allow_zero {
                Err(ConfigError::Zero { flag })
            } else if value > MAX_SIZE {
                Err(ConfigError::TooLarge {
                    flag,
                    value,
                    max: MAX_SIZE,
                })
            } else {
                Ok(value as usize)
            }
        };
        let thread_stack_size = size("thread-stack-size", args.thread_stack_size, false)?;
        if thread_stack_size < 64 * 1024 {
            return Err(ConfigError::StackTooSmall(thread_stack_size as u64));
        }
        Ok(ServeConfig {
            mode: args.mode,
            listen: args.listen,
            metrics_listen: args.metrics_listen,
            max_connections: args.max_connections,
            ping_interval,
            idle_timeout,
            handshake_timeout,
            drain_timeout: args.drain_timeout.into(),
            max_message_size: size("max-message-size", args.max_message_size, false)?,
            read_buffer_size: size("read-buffer-size", args.read_buffer_size, false)?,
            write_buffer_size: size("write-buffer-size", args.write_buffer_size, true)?,
            thread_stack_size,
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
        assert_eq!(config.read_buffer_size, 4096);
        assert_eq!(config.write_buffer_size, 0);
        assert_eq!(config.max_message_size, 64 * 1024);
        assert!(config.idle_timeout > config.ping_interval);
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
        assert_eq!(config.read_buffer_size, 1024);
        assert_eq!(config.max_message_size, 1 << 20);
        assert_eq!(config.ping_interval, Duration::from_millis(500));
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
    }
}
