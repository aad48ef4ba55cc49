//! Tasks mode: one Tokio task per TCP connection on the multi-threaded scheduler, from
//! accept to close.
//!
//! The task runs the shared HTTP phase ([`super::upgrade::serve_http`]: hyper and axum
//! until the 101), then takes the bare socket and runs the WebSocket session in the same
//! task as a [`SessionTask`]: a hand-written future that holds the socket, the
//! connection, a timer and the board's wake-up, and no buffer. No task is spawned per
//! connection other than this one (axum's `WebSocketUpgrade::on_upgrade` would spawn a
//! second, untracked one), and every task is in the server's `TaskTracker`, so shutdown
//! can wait for them all.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::futures::OwnedNotified;

use super::connection::{Connection, IntoLeanSocket, LeanSocket, Wake};
use super::shared::{ConnectionGuard, Shared};
use super::stack::{Stack, Upgraded};
use super::transport::Transport;
use super::upgrade;
use crate::handshake::Accepted;
use crate::lifecycle::Flow;

/// Tasks mode with the lean engine, over plain TCP or the lean engine's TLS.
pub(crate) struct TasksLean;

impl<T: Transport> Stack<T> for TasksLean
where
    T::Io: IntoLeanSocket,
{
    type Reserved = ();
    const NEGOTIATES_DEFLATE: bool = true;

    async fn answer(
        shared: &Arc<Shared>,
        request: Request,
        permit: OwnedSemaphorePermit,
        accepted: Accepted,
    ) -> Response {
        upgrade::switch_protocols(shared, request, permit, (), &accepted)
    }

    fn connection(
        http: impl Future<Output = Option<Upgraded<T::Io>>> + Send + 'static,
        shared: Arc<Shared>,
    ) -> impl Future<Output = ()> + Send + 'static {
        ConnectionTask::new(
            async move {
                let upgraded = http.await?;
                let mut socket = upgraded.stream.into_lean(upgraded.early);
                socket.deflate = upgraded.deflate;
                Some((socket, upgraded.permit))
            },
            shared,
        )
    }
}

/// What the HTTP phase hands the session: the socket as the lean engine holds it, and the
/// connection's permit.
type Handover = (LeanSocket<TcpStream>, OwnedSemaphorePermit);

/// The HTTP phase of one connection, boxed: it is used once and freed at the upgrade.
type HttpPhase = Pin<Box<dyn Future<Output = Option<Handover>> + Send>>;

pin_project_lite::pin_project! {
    /// One TCP connection, from accept to close: HTTP until an upgrade, then the session,
    /// in this one task. Written as a state machine rather than an `async fn` so a held
    /// connection's task is only as big as its session: the HTTP phase is a boxed future,
    /// freed at the upgrade.
    struct ConnectionTask {
        http: Option<HttpPhase>,
        shared: Arc<Shared>,
        #[pin]
        session: Option<SessionTask>,
    }
}

impl ConnectionTask {
    fn new(http: impl Future<Output = Option<Handover>> + Send + 'static, shared: Arc<Shared>) -> Self {
        ConnectionTask {
            http: Some(Box::pin(http)),
            shared,
            session: None,
        }
    }
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let Some(http) = this.http.as_mut() {
            let handover = std::task::ready!(http.as_mut().poll(cx));
            *this.http = None;
            let Some((socket, permit)) = handover else {
                return Poll::Ready(());
            };
            this.session
                .set(Some(SessionTask::new(socket, permit, this.shared.clone())));
        }
        match this.session.as_pin_mut() {
            Some(session) => session.poll(cx),
            None => Poll::Ready(()),
        }
    }
}

pin_project_lite::pin_project! {
    /// A held connection: its socket, its [`Connection`], its timer and its wake-up from
    /// the board (shutdown, pushes), and nothing else. It waits for readiness with
    /// `poll_read_ready` / `poll_write_ready` (whose wakers live in the socket's
    /// registration), the session's deadline (ping, idle timeout, drain) and the board;
    /// [`Connection::on_wake`] decides what to do with them, in the same order as in
    /// threads mode.
    struct SessionTask {
        // Before `stream`: dropping the connection retires its slot on the board before
        // the socket is closed, so no post writes to a closed (perhaps reused) descriptor.
        connection: Connection,
        stream: TcpStream,
        // Counts the connection open while it exists; closed with the reason at the end.
        guard: Option<ConnectionGuard>,
        #[pin]
        timer: tokio::time::Sleep,
        // TLS only: armed before the board is read, so a post after the read wakes the
        // task (a `Notified` receives `notify_waiters` from its creation on). A plain TCP
        // connection is attached to the board instead (posts write to it directly and
        // wake it through its slot only when they cannot), and holds none.
        #[pin]
        board: Option<OwnedNotified>,
    }
}

impl SessionTask {
    fn new(socket: LeanSocket<TcpStream>, permit: OwnedSemaphorePermit, shared: Arc<Shared>) -> Self {
        let mut connection = Connection::new(&shared, socket.tls, socket.unsent, socket.deflate);
        let flow = connection.on_early_bytes(&socket.stream, &shared, socket.early);
        if flow == Flow::Continue {
            connection.attach(socket.stream.as_raw_fd());
        }
        let timer = tokio::time::sleep_until(connection.deadline(&shared).into());
        let board = (!connection.is_attached()).then(|| shared.board.notify.clone().notified_owned());
        let guard = ConnectionGuard::open(shared, permit);
        let guard = match flow {
            Flow::Continue => Some(guard),
            Flow::Finish(reason) => {
                guard.close(reason);
                None
            }
        };
        SessionTask {
            connection,
            stream: socket.stream,
            guard,
            timer,
            board,
        }
    }
}

/// What woke a [`SessionTask`], asked source by source in [`Connection::on_wake`]'s
/// order; each readiness poll registers the task's waker for the next event.
struct TaskWake<'a, 'cx> {
    cx: &'a mut Context<'cx>,
    stream: &'a TcpStream,
    timer: Pin<&'a mut tokio::time::Sleep>,
    /// Some source was ready (so the task must poll again to re-register its waker).
    handled: bool,
    timer_fired: bool,
}

impl Wake for TaskWake<'_, '_> {
    fn writable(&mut self) -> std::io::Result<bool> {
        let ready = match self.stream.poll_write_ready(self.cx) {
            Poll::Ready(result) => result.map(|()| true)?,
            Poll::Pending => false,
        };
        self.handled |= ready;
        Ok(ready)
    }

    fn readable(&mut self) -> std::io::Result<bool> {
        let ready = match self.stream.poll_read_ready(self.cx) {
            Poll::Ready(result) => result.map(|()| true)?,
            Poll::Pending => false,
        };
        self.handled |= ready;
        Ok(ready)
    }

    fn timer_due(&mut self, _deadline: Instant) -> bool {
        self.timer_fired = self.timer.as_mut().poll(self.cx).is_ready();
        self.timer_fired
    }
}

impl Future for SessionTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let Some(guard) = this.guard.as_ref() else {
            return Poll::Ready(());
        };
        let shared = &guard.shared;
        let stream: &TcpStream = this.stream;
        if this.connection.heeds_board() {
            // Registered before on_wake reads the board: a post that cannot write for this
            // connection from then on wakes it again.
            this.connection.register(cx.waker());
            if let Some(mut board) = this.board.as_mut().as_pin_mut() {
                // Re-arm before on_wake reads the board; a post in between fires the new
                // one. The loop ends on a `Pending` poll of the new one, which has
                // registered this task's waker: a wake-up by the board alone needs no
                // second poll (a push wakes every such connection, so that poll would
                // double the cost of a broadcast).
                while board.as_mut().poll(cx).is_ready() {
                    board.set(shared.board.notify.clone().notified_owned());
                }
            }
        }
        let mut wake = TaskWake {
            cx,
            stream,
            timer: this.timer.as_mut(),
            handled: false,
            timer_fired: false,
        };
        let flow = this.connection.on_wake(stream, shared, &mut wake);
        let (mut handled, timer_fired) = (wake.handled, wake.timer_fired);
        if let Flow::Finish(reason) = flow {
            if let Some(guard) = this.guard.take() {
                guard.close(reason);
            }
            return Poll::Ready(());
        }
        let mut deadline = tokio::time::Instant::from_std(this.connection.deadline(shared));
        if timer_fired && deadline <= this.timer.deadline() {
            // The timer fired but nothing was due yet by the session's clock: wait a
            // tick more rather than fire again at once.
            deadline = this.timer.deadline() + std::time::Duration::from_millis(1);
        }
        if this.timer.deadline() != deadline {
            this.timer.as_mut().reset(deadline);
            handled = true;
        }
        if handled {
            // Poll again (soon, after other tasks) so every source registers this task's
            // waker against the state the event left behind.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every held connection is one of these in a task: keep it small (README's figures
    /// depend on it). What is used once belongs in the boxed HTTP phase.
    #[test]
    fn a_held_connection_task_stays_small() {
        let size = std::mem::size_of::<ConnectionTask>();
        assert!(size <= 512, "ConnectionTask is {size} bytes");
        println!(
            "ConnectionTask: {size} bytes, SessionTask: {} bytes",
            std::mem::size_of::<SessionTask>()
        );
    }
}
