//! The stock engine (`--engine tungstenite`): the WebSocket stack people run, measured in
//! the same server as the lean engine — the same accept loop, HTTP phase,
//! `handshake::check`, permits, caps, timers ([`Lifecycle`]) and metrics. Only what
//! happens after the upgrade differs:
//!
//! - tasks mode: axum's own `WebSocketUpgrade::on_upgrade` (tokio-tungstenite
//!   underneath, its bare `tokio::spawn` included: the session is a second task; a
//!   `TaskTracker` token keeps the drain honest) and an echo loop written the way axum's
//!   websocket example writes it — `socket.recv()`, `socket.send(msg)` — except that it
//!   answers the client's Close (the example never does) and follows the lifecycle;
//! - threads mode: blocking tungstenite (`WebSocket::from_partially_read` in the server
//!   role) on the connection's own thread, reading and echoing in a loop. The thread
//!   waits in poll(2) on its socket and the board's generation exactly as the lean
//!   engine's thread does, so SIGTERM's 1001 reaches it; tungstenite reads a non-blocking
//!   socket and keeps its place across `WouldBlock`.
//!
//! Over TLS (wss://) the stock stack is what axum-server's rustls support and the
//! tutorials run: tokio-rustls under hyper and axum in tasks mode; in threads mode the
//! same rustls `ServerConnection`, after the HTTP phase, in a `rustls::StreamOwned` over
//! the non-blocking socket (a blocking socket could not be woken for the drain's 1001),
//! read until `WouldBlock` like the plain socket. rustls' defaults throughout.
//!
//! Server push is the lean engine's: `POST /broadcast` refuses a stock server.
//!
//! Buffers are tungstenite's defaults unless a flag sets them (see
//! [`crate::config::Buffers::tungstenite_config`]): its 128 KiB read buffer is allocated
//! when the connection opens and held for its life.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role};

use super::shared::{ConnectionGuard, Shared};
use super::stack::{Stack, Upgraded};
use super::threads::ThreadEngine;
use super::transport::Transport;
use super::upgrade;
use super::wait::{Ready, poll};
use crate::deflate::Agreement;
use crate::handshake::{Accepted, Refusal};
use crate::lifecycle::{CloseReason, Due, Lifecycle};
use crate::protocol::close_code;
use crate::session::Tally;

/// Tasks mode with the stock engine: axum's `WebSocketUpgrade` answers the upgrade and
/// runs the session in a task of its own, over plain TCP or tokio-rustls.
pub(crate) struct TasksStock;

impl<T: Transport> Stack<T> for TasksStock {
    type Reserved = ();

    async fn answer(shared: &Arc<Shared>, request: Request, permit: OwnedSemaphorePermit, _: Accepted) -> Response {
        match upgrade_with_axum(shared, request, permit).await {
            Ok(response) => response,
            Err(()) => upgrade::refuse(shared, Refusal::BadRequest("bad request: not a WebSocket upgrade")),
        }
    }

    /// The session is axum's `on_upgrade` task: nothing comes back from the HTTP phase.
    async fn connection(http: impl Future<Output = Option<Upgraded<T::Io>>> + Send + 'static, _: Arc<Shared>) {
        let _ = http.await;
    }
}

/// Threads mode with the stock engine: blocking tungstenite on the connection's thread,
/// over the socket or a rustls connection on it.
pub(crate) struct Blocking;

impl<Io: IntoBlockingSocket> ThreadEngine<Io> for Blocking {
    type Socket = (BlockingSocket, Vec<u8>);
    const NEGOTIATES_DEFLATE: bool = false;

    fn take(io: Io, early: Vec<u8>, _never_negotiated: Option<Agreement>) -> io::Result<Self::Socket> {
        Ok((io.into_blocking()?, early))
    }

    fn session((socket, early): Self::Socket, shared: &Shared, count: impl FnOnce()) -> CloseReason {
        // The stock engine takes no pushes: count it at once.
        count();
        serve_blocking(socket, early, shared)
    }
}

/// A connection as blocking tungstenite reads and writes it: the non-blocking std socket,
/// or rustls' buffered connection over it (its `StreamOwned`, as a blocking rustls server
/// is written).
pub(crate) enum BlockingSocket {
    Plain(std::net::TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>>),
}

/// The HTTP phase's IO, taken off the runtime for a connection's thread.
pub(crate) trait IntoBlockingSocket {
    fn into_blocking(self) -> io::Result<BlockingSocket>;
}

impl IntoBlockingSocket for TcpStream {
    fn into_blocking(self) -> io::Result<BlockingSocket> {
        Ok(BlockingSocket::Plain(self.into_std()?))
    }
}

impl IntoBlockingSocket for tokio_rustls::server::TlsStream<TcpStream> {
    /// The session goes on in the same rustls connection, with whatever it has buffered.
    fn into_blocking(self) -> io::Result<BlockingSocket> {
        let (stream, connection) = self.into_inner();
        Ok(BlockingSocket::Tls(Box::new(rustls::StreamOwned::new(
            connection,
            stream.into_std()?,
        ))))
    }
}

impl BlockingSocket {
    fn fd(&self) -> std::os::fd::RawFd {
        match self {
            BlockingSocket::Plain(stream) => stream.as_raw_fd(),
            BlockingSocket::Tls(stream) => stream.sock.as_raw_fd(),
        }
    }
}

impl io::Read for BlockingSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlockingSocket::Plain(stream) => stream.read(buf),
            BlockingSocket::Tls(stream) => stream.read(buf),
        }
    }
}

impl io::Write for BlockingSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingSocket::Plain(stream) => stream.write(buf),
            BlockingSocket::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BlockingSocket::Plain(stream) => stream.flush(),
            BlockingSocket::Tls(stream) => stream.flush(),
        }
    }
}

/// Hands the request to axum's `WebSocketUpgrade`, whose `on_upgrade` runs [`echo`] in a
/// task of its own once the 101 is out. Err: the request is not one axum upgrades (it
/// already passed `handshake::check`, so this does not happen).
async fn upgrade_with_axum(
    shared: &Arc<Shared>,
    request: Request,
    permit: OwnedSemaphorePermit,
) -> Result<Response, ()> {
    let (mut parts, _body) = request.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|rejection| tracing::warn!(%rejection, "axum refused an upgrade handshake::check accepted"))?;
    let config = shared.config.buffers.tungstenite_config();
    let mut upgrade = upgrade
        .read_buffer_size(config.read_buffer_size)
        .write_buffer_size(config.write_buffer_size)
        .max_write_buffer_size(config.max_write_buffer_size);
    if let Some(max) = config.max_message_size {
        upgrade = upgrade.max_message_size(max);
    }
    if let Some(max) = config.max_frame_size {
        upgrade = upgrade.max_frame_size(max);
    }
    let shared = shared.clone();
    // on_upgrade's task is not the tracker's; the token makes shutdown wait for it.
    let token = shared.tracker.token();
    Ok(upgrade.on_upgrade(move |socket| async move {
        let guard = ConnectionGuard::open(shared.clone(), permit);
        let reason = echo(socket, &shared).await;
        guard.close(reason);
        drop(token);
    }))
}

/// The echo loop of axum's websocket example, answering Close, with the lifecycle's
/// pings, idle timeout and shutdown.
async fn echo(mut socket: WebSocket, shared: &Shared) -> CloseReason {
    let policy = &shared.policy;
    let mut life = Lifecycle::new(policy, Instant::now());
    let timer = tokio::time::sleep_until(life.deadline(policy).into());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            message = socket.recv() => {
                let Some(Ok(message)) = message else {
                    return life.on_eof();
                };
                life.on_activity(Instant::now());
                match message {
                    ws::Message::Text(_) | ws::Message::Binary(_) => {
                        let open = life.is_open();
                        shared.metrics.add(Tally {
                            messages_received: 1,
                            messages_sent: u64::from(open),
                            ..Tally::default()
                        });
                        if open && socket.send(message).await.is_err() {
                            return CloseReason::Error;
                        }
                    }
                    ws::Message::Close(_) => {
                        // tungstenite has queued the reply; it is sent as the stream is
                        // read to its end.
                        let reason = life.on_peer_close();
                        while let Some(Ok(_)) = socket.recv().await {}
                        return reason;
                    }
                    // tungstenite answers pings itself.
                    ws::Message::Ping(_) | ws::Message::Pong(_) => {}
                }
            }
            () = &mut timer => {
                match life.on_timer(Instant::now(), policy) {
                    Due::Nothing => {}
                    Due::Ping => {
                        if socket.send(ws::Message::Ping(Default::default())).await.is_err() {
                            return CloseReason::Error;
                        }
                    }
                    Due::IdleTimeout => {
                        let frame = ws::CloseFrame { code: close_code::NORMAL, reason: "idle timeout".into() };
                        let _ = socket.send(ws::Message::Close(Some(frame))).await;
                        return CloseReason::IdleTimeout;
                    }
                    Due::Finish(reason) => return reason,
                }
                timer.as_mut().reset(life.deadline(policy).into());
            }
            _ = shared.shutdown.cancelled(), if life.is_open() => {
                life.begin_shutdown(Instant::now(), policy);
                let frame = ws::CloseFrame { code: close_code::GOING_AWAY, reason: "server shutting down".into() };
                if socket.send(ws::Message::Close(Some(frame))).await.is_err() {
                    return CloseReason::Shutdown;
                }
                timer.as_mut().reset(life.deadline(policy).into());
            }
        }
    }
}

/// Threads mode: one connection on its thread, blocking tungstenite reading and echoing
/// until the connection ends; returns why. The socket is closed on return.
fn serve_blocking(stream: BlockingSocket, early: Vec<u8>, shared: &Shared) -> CloseReason {
    let policy = &shared.policy;
    let fd = stream.fd();
    let config = shared.config.buffers.tungstenite_config();
    let mut socket = tungstenite::WebSocket::from_partially_read(stream, early, Role::Server, Some(config));
    let mut life = Lifecycle::new(policy, Instant::now());
    // The reason once the peer's close frame (or its answer to ours) has arrived.
    let mut peer_closed: Option<CloseReason> = None;
    // Early bytes may already hold frames: read before the first wait.
    let mut ready = Ready {
        readable: true,
        ..Ready::default()
    };
    loop {
        // Taken before the board is read: a post after the read signals this one.
        let generation = shared.board.generation();
        if shared.board.shutdown_requested() && life.begin_shutdown(Instant::now(), policy) {
            let frame = CloseFrame {
                code: CloseCode::Away,
                reason: "server shutting down".into(),
            };
            match socket.close(Some(frame)) {
                // Queued: the flush below and later wake-ups send it.
                Err(error) if would_block(&error) => {}
                Err(_) => return peer_closed.unwrap_or(life.on_eof()),
                Ok(()) => {}
            }
        }
        if ready.readable {
            loop {
                match socket.read() {
                    Ok(message) => {
                        life.on_activity(Instant::now());
                        match message {
                            tungstenite::Message::Text(_) | tungstenite::Message::Binary(_) => {
                                let open = life.is_open() && peer_closed.is_none();
                                shared.metrics.add(Tally {
                                    messages_received: 1,
                                    messages_sent: u64::from(open),
                                    ..Tally::default()
                                });
                                if open {
                                    match socket.send(message) {
                                        Err(error) if would_block(&error) => {}
                                        Err(_) => return CloseReason::Error,
                                        Ok(()) => {}
                                    }
                                }
                            }
                            // Answered by tungstenite; the connection ends once the answer
                            // is written.
                            tungstenite::Message::Close(_) => peer_closed = Some(life.on_peer_close()),
                            _ => {}
                        }
                    }
                    Err(error) if would_block(&error) => break,
                    Err(tungstenite::Error::ConnectionClosed) => return peer_closed.unwrap_or(life.on_eof()),
                    Err(error) => return ended_by(&error, &life),
                }
            }
        }
        match life.on_timer(Instant::now(), policy) {
            Due::Nothing => {}
            Due::Ping => match socket.send(tungstenite::Message::Ping(Default::default())) {
                Err(error) if would_block(&error) => {}
                Err(_) => return CloseReason::Error,
                Ok(()) => {}
            },
            Due::IdleTimeout => {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "idle timeout".into(),
                };
                let _ = socket.close(Some(frame));
                return CloseReason::IdleTimeout;
            }
            Due::Finish(reason) => return reason,
        }
        // Echoes, pongs and close answers queued while reading, and what a full socket
        // held back: what is still unsent after this makes the thread wait for POLLOUT.
        let unflushed = match socket.flush() {
            Ok(()) => false,
            Err(tungstenite::Error::ConnectionClosed) => return peer_closed.unwrap_or(life.on_eof()),
            Err(error) if would_block(&error) => true,
            Err(error) => return ended_by(&error, &life),
        };
        let timeout = life.deadline(policy).saturating_duration_since(Instant::now());
        ready = match poll(
            fd,
            true,
            unflushed,
            life.is_open().then(|| generation.fd()),
            Some(timeout),
        ) {
            Ok(ready) => ready,
            Err(error) => {
                tracing::warn!(%error, "poll failed");
                return CloseReason::Error;
            }
        };
    }
}

/// True when the error only means the socket would block: the frame is queued in
/// tungstenite and goes out on a later flush.
fn would_block(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Io(error) if error.kind() == io::ErrorKind::WouldBlock)
}

/// Why a connection ended on a tungstenite error: the peer vanished (reset, EOF), or it
/// broke the protocol.
fn ended_by(error: &tungstenite::Error, life: &Lifecycle) -> CloseReason {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::Io(_)
        | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | tungstenite::Error::AlreadyClosed => life.on_eof(),
        _ => CloseReason::Error,
    }
}
