//! Threads mode: one OS thread per WebSocket connection, as a blocking server is written.
//!
//! The HTTP phase runs on the main thread's current-thread runtime, like every
//! connection's in either model (so a connection still sending its request costs a
//! small task there, never a thread). When the handler accepts an upgrade it starts the
//! connection's thread ([`ConnectionThread`]) — named, with the configured stack — before
//! the 101 goes out, so a thread the OS refuses is still answered with a 503; after the
//! 101 the runtime hands the socket over to it. The thread runs the engine's session
//! ([`ThreadEngine`]): the lean engine's [`run_session`] or the stock engine's blocking
//! tungstenite, each blocking in poll(2) between frames on its socket and on the board's
//! current generation (an eventfd every thread watches, see [`super::board`]), so
//! SIGTERM and every push reach each of them at once without any per-connection timer
//! thread. The socket is non-blocking so a wake-up reads everything there is; what the
//! lean engine does with the bytes is the same [`Connection`] code tasks mode runs.
//!
//! The runtime on the main thread also serves /metrics, the signal handler and every
//! refusal; with the sampler thread that makes 2 threads before the first connection.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::connection::{Connection, IntoLeanSocket, LeanSocket};
use super::shared::{ConnectionGuard, Shared};
use super::stack::{Stack, Upgraded};
use super::transport::Transport;
use super::upgrade;
use super::wait::{Ready, poll};
use crate::deflate::Agreement;
use crate::handshake::{Accepted, Refusal};
use crate::lifecycle::{CloseReason, Flow};

/// Connection threads' name (the kernel keeps 15 bytes).
const THREAD_NAME: &str = "wsscale-conn";

/// What runs a connection on its own thread: an engine's blocking session, over the HTTP
/// phase's IO `Io` (plain TCP or TLS).
pub(crate) trait ThreadEngine<Io>: Send + Sync + 'static {
    /// The connection as its thread holds it.
    type Socket: Send + 'static;

    /// [`Stack::NEGOTIATES_DEFLATE`] for this engine.
    const NEGOTIATES_DEFLATE: bool;

    /// Takes the upgraded IO off the runtime (with `early`, the bytes hyper read past the
    /// request, and what the upgrade agreed of permessage-deflate), for the connection's
    /// thread.
    fn take(io: Io, early: Vec<u8>, deflate: Option<Agreement>) -> io::Result<Self::Socket>;

    /// Runs the session until it ends; returns why. The socket is non-blocking and is
    /// closed on return. `count` counts the connection active: the engine calls it once
    /// the connection is registered for pushes, so a broadcast posted after the count
    /// shows it reaches this connection.
    fn session(socket: Self::Socket, shared: &Shared, count: impl FnOnce()) -> CloseReason;
}

/// Threads mode with engine `E`.
pub(crate) struct Threads<E>(PhantomData<E>);

impl<T: Transport, E: ThreadEngine<T::Io>> Stack<T> for Threads<E> {
    type Reserved = ConnectionThread<E::Socket>;
    const NEGOTIATES_DEFLATE: bool = E::NEGOTIATES_DEFLATE;

    async fn answer(
        shared: &Arc<Shared>,
        request: Request,
        permit: OwnedSemaphorePermit,
        accepted: Accepted,
    ) -> Response {
        match ConnectionThread::spawn::<E, T::Io>(shared) {
            Ok(thread) => upgrade::switch_protocols(shared, request, permit, thread, &accepted),
            Err(error) => {
                tracing::warn!(%error, "cannot spawn a connection thread; answering 503");
                upgrade::refuse(shared, Refusal::ThreadUnavailable)
            }
        }
    }

    async fn connection(
        http: impl Future<Output = Option<Upgraded<T::Io, ConnectionThread<E::Socket>>>> + Send + 'static,
        _: Arc<Shared>,
    ) {
        if let Some(upgraded) = http.await {
            ConnectionThread::hand_over::<E, T::Io>(upgraded);
        }
    }
}

/// The lean engine on a connection's thread.
pub(crate) struct Lean;

impl<Io: IntoLeanSocket> ThreadEngine<Io> for Lean {
    type Socket = LeanSocket<std::net::TcpStream>;
    const NEGOTIATES_DEFLATE: bool = true;

    fn take(io: Io, early: Vec<u8>, deflate: Option<Agreement>) -> io::Result<Self::Socket> {
        let mut socket = io.into_lean(early);
        socket.deflate = deflate;
        socket.map(TcpStream::into_std)
    }

    fn session(socket: Self::Socket, shared: &Shared, count: impl FnOnce()) -> CloseReason {
        run_session(socket, shared, count)
    }
}

/// A connection on its way to its thread.
pub(crate) struct Handover<S> {
    socket: S,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// A connection's thread, started by the handler before the 101; it waits for its
/// connection, which [`ConnectionThread::hand_over`] sends it after the 101. Dropped
/// without it (the client left before the upgrade completed), the thread ends.
pub(crate) struct ConnectionThread<S> {
    inbox: SyncSender<Handover<S>>,
}

impl<S: Send + 'static> ConnectionThread<S> {
    /// Starts the thread; its tracker token keeps the server's drain waiting until it
    /// ends.
    fn spawn<E: ThreadEngine<Io, Socket = S>, Io>(shared: &Arc<Shared>) -> io::Result<ConnectionThread<S>> {
        let (inbox, waiting) = sync_channel(1);
        let shared = shared.clone();
        let token = shared.tracker.token();
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .stack_size(shared.config.buffers.thread_stack_size.value)
            .spawn(move || run_thread::<E, Io>(waiting, &shared, token))?;
        Ok(ConnectionThread { inbox })
    }

    /// Takes the upgraded connection off the runtime and gives it to its thread.
    fn hand_over<E: ThreadEngine<Io, Socket = S>, Io>(upgraded: Upgraded<Io, ConnectionThread<S>>) {
        let Upgraded {
            stream,
            peer,
            early,
            permit,
            reserved: thread,
            deflate,
        } = upgraded;
        match E::take(stream, early, deflate) {
            Ok(socket) => {
                let _ = thread.inbox.send(Handover { socket, peer, permit });
            }
            Err(error) => tracing::warn!(%error, "cannot take the socket off the runtime"),
        }
    }
}

/// One connection's thread: wait for the connection, run the session, count the close.
fn run_thread<E: ThreadEngine<Io>, Io>(
    waiting: Receiver<Handover<E::Socket>>,
    shared: &Arc<Shared>,
    token: TaskTrackerToken,
) {
    if let Ok(handover) = waiting.recv() {
        drop(waiting);
        let span = tracing::debug_span!("conn", peer = %handover.peer);
        let _entered = span.enter();
        let mut guard = None;
        let permit = handover.permit;
        let reason = E::session(handover.socket, shared, || {
            guard = Some(ConnectionGuard::open(shared.clone(), permit));
        });
        if let Some(guard) = guard {
            guard.close(reason);
        }
    }
    drop(token);
}

/// The lean engine's session loop: sleep in poll(2) until the socket (readable, or
/// writable while a slow peer has answers waiting), the board's generation or the
/// session's deadline wakes us, then let the shared [`Connection`] do the rest. The
/// socket is closed on return.
fn run_session(socket: LeanSocket<std::net::TcpStream>, shared: &Shared, count: impl FnOnce()) -> CloseReason {
    let LeanSocket {
        stream,
        tls,
        early,
        unsent,
        deflate,
    } = socket;
    // Registered for pushes (Connection::new) before it is counted active: a broadcast
    // posted once the active count includes this connection reaches it.
    let mut connection = Connection::new(shared, tls, unsent, deflate);
    count();
    let mut flow = connection.on_early_bytes(&stream, shared, early);
    let socket = stream.as_raw_fd();
    let mut ready = Ready::default();
    loop {
        // Taken before on_wake reads the board: a post after the read signals this one.
        let generation = shared.board.generation();
        if flow == Flow::Continue {
            flow = connection.on_wake(&stream, shared, &mut ready);
        }
        if let Flow::Finish(reason) = flow {
            return reason;
        }
        let timeout = connection.deadline(shared).saturating_duration_since(Instant::now());
        ready = match poll(
            socket,
            connection.wants_read(shared),
            connection.wants_write(),
            connection.heeds_board().then(|| generation.fd()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::shared::tests::shared_with_local_recorder;

    /// The race this ordering closes: a connection counted active (the count a client
    /// waits for before it broadcasts) before it was registered on the board missed a
    /// broadcast posted in between.
    #[test]
    fn a_connection_is_registered_for_pushes_before_it_is_counted_active() {
        let (shared, _prometheus) = shared_with_local_recorder();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        // The peer leaves at once: the session ends on its EOF.
        drop(client);
        let socket = LeanSocket {
            stream,
            tls: None,
            early: Vec::new(),
            unsent: Vec::new(),
            deflate: None,
        };
        let mut registered_when_counted = None;
        let reason = run_session(socket, &shared, || {
            registered_when_counted = Some(shared.board.open_count());
        });
        assert_eq!(registered_when_counted, Some(1), "registered first, then counted");
        assert_eq!(reason, CloseReason::Error, "EOF without a close frame");
        assert_eq!(shared.board.open_count(), 0);
    }
}
