//! wsscale: what does an idle WebSocket connection really cost?
//!
//! The crate is the server and the command line; `loadgen/` is the load generator.
//! Table of contents:
//!
//! - [`child`]: a `wsscale serve` child process on port 0, for `compare` and the tests.
//! - [`compare`]: `wsscale compare`, the tasks-vs-threads run with its report and charts.
//! - [`config`]: the command line (clap derive, every flag with an env variable),
//!   validated into a [`config::ServeConfig`].
//! - [`drain`]: `--drain-delay`: the [`drain::Draining`] flag behind /healthz's 503, and
//!   the wait between the first signal and the shutdown (cut short by a second one).
//! - [`handshake`]: the HTTP upgrade decision (404, 405, 426, 400, 503 or 101), shared by
//!   both execution models so they accept and refuse exactly the same requests.
//! - [`protocol`]: RFC 6455 framing without IO: a decoder that holds nothing between
//!   frames, and the server's frame encoder.
//! - [`lifecycle`]: when to ping, when a silent peer is dead, how shutdown and the drain
//!   go, why a connection ended: the policy every engine follows; no IO.
//! - [`session`]: the lean engine's session (echo, pong, close reply) on that lifecycle,
//!   shared by both execution models; it does no IO.
//! - [`server`]: the two execution models, [`server::tasks`] (one Tokio task per
//!   connection) and [`server::threads`] (one OS thread per connection), the connection
//!   permits, and graceful shutdown.
//! - [`metrics`]: metric names and handles, the Prometheus recorder, the sampler thread
//!   that reads /proc, and /metrics, /healthz and the live page (`GET /`, `/api/live`).
//! - [`exposition`]: reading a server's /metrics text (for `compare` and the tests).
//! - [`start_line`]: the line `wsscale serve` prints once it listens, and its parser.
//! - [`limits`]: the fd limit, the default connection cap and the kernel limits that bound
//!   thread-per-connection.
//!
//! Other crates of the workspace: `wsscale_host` (`host/`) reads the machine (/proc, the
//! fd limit, the counting allocator, signals) for the server and the generator alike;
//! `wsscale_wire` (`wire/`) defines the server push's payload both of them speak;
//! `wsscale_loadgen` (`loadgen/`) is the load generator behind `wsscale load`, which
//! `compare` also drives.

pub mod child;
pub mod compare;
pub mod config;
pub mod deflate;
pub mod drain;
pub mod exposition;
pub mod handshake;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod start_line;
