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
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::connection::Connection;
use super::shared::{ConnectionGuard, Shared};
use super::stack::{Stack, Upgraded};
use super::upgrade;
use super::wait::{Ready, poll};
use crate::handshake::{Accepted, Refusal};
use crate::lifecycle::{CloseReason, Flow};

/// Connection threads' name (the kernel keeps 15 bytes).
const THREAD_NAME: &str = "wsscale-conn";

/// What runs a connection on its own thread: an engine's blocking session.
pub(crate) trait ThreadEngine: Send + Sync + 'static {
    /// Runs the session of an upgraded connection until it ends; returns why. The socket
    /// is non-blocking and is closed on return.
    fn session(stream: std::net::TcpStream, early: Vec<u8>, shared: &Shared) -> CloseReason;
}

/// Threads mode with engine `E`.
pub(crate) struct Threads<E>(PhantomData<E>);

impl<E: ThreadEngine> Stack for Threads<E> {
    type Reserved = ConnectionThread;

    async fn answer(
        shared: &Arc<Shared>,
        request: Request,
        permit: OwnedSemaphorePermit,
        accepted: Accepted,
    ) -> Response {
        match ConnectionThread::spawn::<E>(shared) {
            Ok(thread) => upgrade::switch_protocols(shared, request, permit, thread, &accepted),
            Err(error) => {
                tracing::warn!(%error, "cannot spawn a connection thread; answering 503");
                upgrade::refuse(shared, Refusal::ThreadUnavailable)
            }
        }
    }

    async fn connection(
        http: impl Future<Output = Option<Upgraded<TcpStream, ConnectionThread>>> + Send + 'static,
        _: Arc<Shared>,
    ) {
        if let Some(upgraded) = http.await {
            ConnectionThread::hand_over(upgraded);
        }
    }
}

/// The lean engine on a connection's thread.
pub(crate) struct Lean;

impl ThreadEngine for Lean {
    fn session(stream: std::net::TcpStream, early: Vec<u8>, shared: &Shared) -> CloseReason {
        run_session(stream, early, shared)
    }
}

/// A connection's thread, started by the handler before the 101; it waits for its
/// connection, which [`ConnectionThread::hand_over`] sends it after the 101. Dropped
/// without it (the client left before the upgrade completed), the thread ends.
pub(crate) struct ConnectionThread {
    inbox: SyncSender<Upgraded<std::net::TcpStream>>,
}

impl ConnectionThread {
    /// Starts the thread; its tracker token keeps the server's drain waiting until it
    /// ends.
    fn spawn<E: ThreadEngine>(shared: &Arc<Shared>) -> io::Result<ConnectionThread> {
        let (inbox, waiting) = sync_channel(1);
        let shared = shared.clone();
        let token = shared.tracker.token();
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .stack_size(shared.config.buffers.thread_stack_size.value)
            .spawn(move || run_thread::<E>(waiting, &shared, token))?;
        Ok(ConnectionThread { inbox })
    }

    /// Takes the upgraded socket off the runtime and gives it to its thread.
    fn hand_over(upgraded: Upgraded<TcpStream, ConnectionThread>) {
        let Upgraded {
            stream,
            peer,
            early,
            permit,
            reserved: thread,
        } = upgraded;
        match stream.into_std() {
            Ok(stream) => {
                let _ = thread.inbox.send(Upgraded {
                    stream,
                    peer,
                    early,
                    permit,
                    reserved: (),
                });
            }
            Err(error) => tracing::warn!(%error, "cannot take the socket off the runtime"),
        }
    }
}

/// One connection's thread: wait for the connection, run the session, count the close.
fn run_thread<E: ThreadEngine>(
    waiting: Receiver<Upgraded<std::net::TcpStream>>,
    shared: &Arc<Shared>,
    token: TaskTrackerToken,
) {
    if let Ok(upgraded) = waiting.recv() {
        drop(waiting);
        let span = tracing::debug_span!("conn", peer = %upgraded.peer);
        let _entered = span.enter();
        let guard = ConnectionGuard::open(shared.clone(), upgraded.permit);
        let reason = E::session(upgraded.stream, upgraded.early, shared);
        guard.close(reason);
    }
    drop(token);
}

/// The lean engine's session loop: sleep in poll(2) until the socket (readable, or
/// writable while a slow peer has answers waiting), the board's generation or the
/// session's deadline wakes us, then let the shared [`Connection`] do the rest. The
/// socket is closed on return.
fn run_session(stream: std::net::TcpStream, early: Vec<u8>, shared: &Shared) -> CloseReason {
    let mut connection = Connection::new(shared);
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
