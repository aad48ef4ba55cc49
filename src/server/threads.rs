//! Threads mode: one OS thread per WebSocket connection, as a blocking server is written.
//!
//! The HTTP phase runs on the main thread's current-thread runtime, like every
//! connection's in either model (so a connection still sending its request costs a
//! small task there, never a thread). When the handler accepts an upgrade it starts the
//! connection's thread — named, with the configured stack — before the 101 goes out, so
//! a thread the OS refuses is still answered with a 503; after the 101 the runtime hands
//! the socket over ([`hand_over_after`]). The thread runs the session, blocking in
//! poll(2) between frames: on its socket, and on the board's current generation (an
//! eventfd every thread watches, see [`super::board`]), so SIGTERM and every push reach
//! each of them at once without any per-connection timer thread. The socket is
//! non-blocking so a wake-up reads everything there is; what happens to the bytes is the
//! same [`Connection`] code tasks mode runs.
//!
//! The runtime on the main thread also serves /metrics, the signal handler and every
//! refusal; with the sampler thread that makes 2 threads before the first connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::connection::Connection;
use super::wait::{Ready, poll};
use super::{ConnectionGuard, Shared, Upgrade, stock};
use crate::config::Engine;
use crate::lifecycle::{CloseReason, Flow};

/// Connection threads' name (the kernel keeps 15 bytes).
const THREAD_NAME: &str = "wsscale-conn";

/// The handler's end of a connection thread: the upgraded socket goes through it after
/// the 101. Dropping it unsent (the client left before the upgrade completed) ends the
/// thread.
pub(super) type Handoff = SyncSender<Handover>;

/// An upgraded connection on its way to its thread.
pub(super) struct Handover {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    early: Vec<u8>,
    permit: OwnedSemaphorePermit,
}

/// Starts the thread for an accepted upgrade; it waits for its socket on the returned
/// [`Handoff`]. Its token keeps the server's drain waiting until it ends.
pub(super) fn spawn_connection_thread(shared: &Arc<Shared>) -> io::Result<Handoff> {
    let (handoff, inbox) = sync_channel(1);
    let shared = shared.clone();
    let token = shared.tracker.token();
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .stack_size(shared.config.buffers.thread_stack_size.value)
        .spawn(move || connection_thread(inbox, &shared, token))?;
    Ok(handoff)
}

/// Runs a connection's HTTP phase on the runtime, then gives the upgraded socket to the
/// thread the handler started for it.
pub(super) async fn hand_over_after(http: impl Future<Output = Option<Upgrade>>) {
    let Some(upgrade) = http.await else { return };
    let Some(thread) = upgrade.thread else {
        tracing::error!("an upgrade in threads mode has no thread");
        return;
    };
    match upgrade.stream.into_std() {
        Ok(stream) => {
            let _ = thread.send(Handover {
                stream,
                peer: upgrade.peer,
                early: upgrade.early,
                permit: upgrade.permit,
            });
        }
        Err(error) => tracing::warn!(%error, "cannot take the socket off the runtime"),
    }
}

/// One connection's thread: wait for the socket, run the session, count the close.
fn connection_thread(inbox: Receiver<Handover>, shared: &Arc<Shared>, token: TaskTrackerToken) {
    if let Ok(handover) = inbox.recv() {
        drop(inbox);
        let span = tracing::debug_span!("conn", peer = %handover.peer);
        let _entered = span.enter();
        let guard = ConnectionGuard::open(shared.clone(), handover.permit);
        let reason = match shared.config.engine {
            Engine::Lean => run_session(handover.stream, handover.early, shared),
            Engine::Tungstenite => stock::serve_blocking(handover.stream, handover.early, shared),
        };
        guard.close(reason);
    }
    drop(token);
}

/// The session loop: sleep in poll(2) until the socket (readable, or writable while a
/// slow peer has answers waiting), the board's generation or the session's deadline wakes
/// us, then let the shared [`Connection`] do the rest. The socket is closed on return.
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
