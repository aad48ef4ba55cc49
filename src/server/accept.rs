//! Accepting connections, the same for every stack: a handshake permit before each
//! accept (`--max-handshakes`), one task per TCP connection in the server's tracker
//! (its HTTP phase, then what the stack does after the upgrade), and a backoff when the
//! process runs out of descriptors or memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::shared::{HandshakeGuard, Shared};
use super::stack::Stack;
use super::transport::Transport;
use super::upgrade;

/// The listen backlog asked for; the kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;

/// Accepts connections until shutdown; each gets one task in the tracker, which runs its
/// HTTP phase and then what its execution model does after the upgrade. A handshake
/// permit is taken before each accept, so with `--max-handshakes` phases in flight the
/// loop waits and new clients queue in the listen backlog.
pub(super) async fn accept_loop<S: Stack<T>, T: Transport>(listener: TcpListener, shared: &Arc<Shared>) {
    let app = upgrade::router::<S, T>(shared.clone());
    let mut backoff = AcceptBackoff::new();
    loop {
        let handshake = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            permit = shared.handshakes.clone().acquire_owned() => permit.expect("the handshake semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                let handshake = HandshakeGuard::new(shared.clone(), handshake);
                let http = upgrade::serve_http::<S, T>(stream, peer, app.clone(), shared.clone(), handshake);
                shared.tracker.spawn(S::connection(http, shared.clone()));
            }
            Err(error) if is_per_connection_accept_error(&error) => {}
            Err(error) => {
                let pause = backoff.next_pause();
                tracing::warn!(%error, ?pause, "accept failed; backing off");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Binds with a backlog fit for opening thousands of connections at once (std's
/// `TcpListener::bind` asks for 128).
pub(super) fn bind_websocket_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// True for accept errors that concern one client only (it hung up before we accepted);
/// anything else (EMFILE, ENFILE, ENOBUFS, ENOMEM) is a resource shortage to back off from.
fn is_per_connection_accept_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || error.raw_os_error() == Some(libc::EPROTO)
}

/// How long the accept loop pauses after a resource error: doubling from 10 ms to 1 s.
#[derive(Debug)]
struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        AcceptBackoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        pause
    }
}
