//! Threads mode: one OS thread per connection, as a blocking server is written.
//!
//! A blocking accept loop on the main thread hands each connection to a new named
//! std::thread with the configured stack size. The thread reads the upgrade request,
//! answers it, and runs the session, blocking in poll(2) between frames: on its socket,
//! and on a shutdown pipe that every thread watches, so SIGTERM reaches each of them at
//! once without any per-connection timer thread. The socket is non-blocking so a wake-up
//! reads everything there is; what happens to the bytes is the same
//! [`Connection`] code tasks mode runs.
//!
//! One extra thread, `wsscale-metrics`, runs a current-thread Tokio runtime for /metrics,
//! the signal handler and the 503 answers to clients beyond the cap (they must not cost
//! a thread each, or the cap would not hold).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;

use super::connection::{Connection, Next};
use super::{AcceptBackoff, ConnectionGuard, Shared, is_per_connection_accept_error, shutdown_signal};
use crate::handshake::RejectReason;
use crate::handshake::{self, Accepted, Head, Refusal};
use crate::metrics::{self, Sampler};
use crate::session::CloseReason;

/// Connection threads' name (the kernel keeps 15 bytes).
const THREAD_NAME: &str = "wsscale-conn";
/// How long shutdown waits past the drain timeout for threads to notice it and return.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);

/// Runs the server until a signal and the drain.
pub fn run_blocking(
    listener: TcpListener,
    metrics_listener: TcpListener,
    prometheus: PrometheusHandle,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let shutdown = Arc::new(Shutdown::new()?);
    let (runtime_tx, runtime_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("wsscale-metrics".into()).spawn({
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => return drop(runtime_tx.send(Err(error))),
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(metrics_listener) {
                    Ok(listener) => listener,
                    Err(error) => return drop(runtime_tx.send(Err(error))),
                };
                let handle = tokio::runtime::Handle::current();
                let sampler = Arc::new(Sampler::new(
                    prometheus,
                    handle.clone(),
                    shared.clone(),
                    shared.metrics.clone(),
                    shared.max_connections,
                ));
                tokio::spawn(async move {
                    if let Err(error) = metrics::serve(listener, sampler).await {
                        tracing::error!(%error, "metrics listener failed");
                    }
                });
                let _ = runtime_tx.send(Ok(handle));
                shutdown_signal().await;
                shutdown.trigger();
                // Keep serving /metrics and 503s while the main thread drains; the
                // process exits when it is done.
                std::future::pending::<()>().await;
            });
        }
    })?;
    let runtime = runtime_rx.recv()??;
    run(listener, shared, &shutdown, &runtime)?;
    Ok(())
}

/// The signal every connection thread and the accept loop wait on: a pipe that becomes
/// readable (and stays so, nobody reads it) when shutdown starts.
struct Shutdown {
    requested: AtomicBool,
    reader: io::PipeReader,
    writer: io::PipeWriter,
}

impl Shutdown {
    fn new() -> io::Result<Self> {
        let (reader, writer) = io::pipe()?;
        Ok(Shutdown {
            requested: AtomicBool::new(false),
            reader,
            writer,
        })
    }

    fn trigger(&self) {
        if !self.requested.swap(true, Ordering::SeqCst) {
            let _ = (&self.writer).write(&[1]);
        }
    }

    fn fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }
}

/// Counts connection threads alive, so shutdown can wait for the last one.
#[derive(Default)]
struct LiveThreads {
    count: Mutex<usize>,
    zero: Condvar,
}

impl LiveThreads {
    fn enter(self: &Arc<Self>) -> LiveThread {
        *self.count.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
        LiveThread(self.clone())
    }

    /// Waits until no thread is alive or `timeout` passes; returns how many are left.
    fn wait_all(&self, timeout: Duration) -> usize {
        let count = self.count.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (count, _) = self
            .zero
            .wait_timeout_while(count, timeout, |count| *count > 0)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *count
    }
}

/// Held by one connection thread; leaving decrements the count.
struct LiveThread(Arc<LiveThreads>);

impl Drop for LiveThread {
    fn drop(&mut self) {
        let mut count = self.0.count.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *count -= 1;
        if *count == 0 {
            self.0.zero.notify_all();
        }
    }
}

/// The blocking accept loop, until shutdown; then waits for the connection threads.
fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: &Arc<Shutdown>,
    runtime: &tokio::runtime::Handle,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let live = Arc::new(LiveThreads::default());
    let mut backoff = AcceptBackoff::new();
    'accept: loop {
        let ready = poll(listener.as_raw_fd(), true, false, Some(shutdown.fd()), None)?;
        if ready.shutdown {
            break;
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    backoff.reset();
                    dispatch(stream, peer, &shared, shutdown, runtime, &live);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if is_per_connection_accept_error(&error) => {}
                Err(error) => {
                    let pause = backoff.next_pause();
                    tracing::warn!(%error, ?pause, "accept failed; backing off");
                    if poll(shutdown.fd(), true, false, None, Some(pause))?.readable {
                        break 'accept;
                    }
                    break;
                }
            }
        }
    }
    drop(listener);
    let left = live.wait_all(shared.config.drain_timeout + SHUTDOWN_MARGIN);
    if left > 0 {
        tracing::warn!(left, "drain timeout passed; dropping the connections left");
    } else {
        tracing::info!("every connection closed");
    }
    Ok(())
}

/// Gives an accepted connection its own thread, or a 503 from the runtime when there is
/// no permit or the OS refuses the thread.
fn dispatch(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    shutdown: &Arc<Shutdown>,
    runtime: &tokio::runtime::Handle,
    live: &Arc<LiveThreads>,
) {
    let accepted_at = Instant::now();
    let Some(permit) = shared.try_permit() else {
        runtime.spawn(refuse_on_runtime(stream, shared.clone(), RejectReason::Capacity));
        return;
    };
    // The stream waits here so it can be taken back if the thread cannot be spawned.
    let slot = Arc::new(Mutex::new(Some(stream)));
    let spawned = std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .stack_size(shared.config.thread_stack_size)
        .spawn({
            let slot = slot.clone();
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            let live = live.enter();
            move || {
                let stream = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
                drop(slot);
                if let Some(stream) = stream {
                    let span = tracing::debug_span!("conn", %peer);
                    let _entered = span.enter();
                    connection(stream, accepted_at, permit, &shared, &shutdown);
                }
                drop(live);
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot spawn a connection thread; answering 503");
        if let Some(stream) = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
            runtime.spawn(refuse_on_runtime(stream, shared.clone(), RejectReason::ThreadSpawn));
        }
    }
}

/// One connection on its own thread: the upgrade, then the session.
fn connection(
    mut stream: TcpStream,
    accepted_at: Instant,
    permit: OwnedSemaphorePermit,
    shared: &Arc<Shared>,
    shutdown: &Shutdown,
) {
    let deadline = accepted_at + shared.config.handshake_timeout;
    let (accepted, leftover) = match read_upgrade(&mut stream, deadline) {
        Ok(upgrade) => upgrade,
        Err(HeadError::Refused(refusal)) => {
            if let Some(reason) = refusal.reject_reason() {
                shared.reject(reason);
            }
            let _ = stream.write_all(&handshake::to_http1_bytes(&refusal.response()));
            return;
        }
        Err(HeadError::Timeout) => return shared.reject(RejectReason::HandshakeTimeout),
        Err(HeadError::Io(error)) => {
            tracing::debug!(%error, "connection failed before the upgrade");
            return;
        }
    };
    if let Err(error) = stream.write_all(&handshake::to_http1_bytes(&handshake::switching_protocols(&accepted))) {
        tracing::debug!(%error, "connection failed sending 101");
        return;
    }
    shared.record_handshake(accepted_at);
    if let Err(error) = stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_nonblocking(true))
    {
        tracing::warn!(%error, "cannot make the socket non-blocking");
        return;
    }
    let guard = ConnectionGuard::open(shared.clone(), permit);
    let reason = run_session(stream, leftover, shared, shutdown);
    guard.close(reason);
}

enum HeadError {
    Refused(Refusal),
    Timeout,
    Io(io::Error),
}

/// Reads the request head with a deadline (SO_RCVTIMEO set to what is left before each
/// read, so a client sending a byte at a time still runs out of time); returns the
/// accepted upgrade and any bytes read past the head.
fn read_upgrade(stream: &mut TcpStream, deadline: Instant) -> Result<(Accepted, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(HeadError::Timeout);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(HeadError::Io(error)),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Head::Complete { verdict, len } = handshake::parse_head(&buf) {
            let accepted = verdict.map_err(HeadError::Refused)?;
            return Ok((accepted, buf.split_off(len)));
        }
    }
}

/// Answers a client this server will not give a thread to: the same checks as a
/// connection thread, then 503 for a valid upgrade (counted under `reason`), or the
/// request's own refusal.
async fn refuse_on_runtime(stream: TcpStream, shared: Arc<Shared>, reason: RejectReason) {
    let Ok(mut stream) = stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(stream))
    else {
        return;
    };
    let read_head = async {
        let mut buf = Vec::with_capacity(1024);
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            if let Head::Complete { verdict, .. } = handshake::parse_head(&buf) {
                return Ok(verdict);
            }
        }
    };
    let refusal = match tokio::time::timeout(shared.config.handshake_timeout, read_head).await {
        Err(_elapsed) => return shared.reject(RejectReason::HandshakeTimeout),
        Ok(Err(_io)) => return,
        Ok(Ok(Ok(_accepted))) => {
            shared.reject(reason);
            Refusal::AtCapacity
        }
        Ok(Ok(Err(refusal))) => {
            if let Some(reason) = refusal.reject_reason() {
                shared.reject(reason);
            }
            refusal
        }
    };
    let _ = stream.write_all(&handshake::to_http1_bytes(&refusal.response())).await;
}

/// The session loop: sleep in poll(2) until the socket (readable, or writable while a
/// slow peer has answers waiting), the shutdown pipe or the session's deadline wakes us,
/// then let the shared [`Connection`] do the rest. The socket is closed on return.
fn run_session(stream: TcpStream, early: Vec<u8>, shared: &Shared, shutdown: &Shutdown) -> CloseReason {
    let mut connection = Connection::new(shared);
    let mut next = connection.on_early_bytes(&stream, shared, early);
    let socket = stream.as_raw_fd();
    while next == Next::Continue {
        let watch_shutdown = connection.heeds_shutdown().then(|| shutdown.fd());
        let timeout = connection.deadline(shared).saturating_duration_since(Instant::now());
        let ready = match poll(
            socket,
            connection.wants_read(shared),
            connection.wants_write(),
            watch_shutdown,
            Some(timeout),
        ) {
            Ok(ready) => ready,
            Err(error) => {
                tracing::warn!(%error, "poll failed");
                return CloseReason::Error;
            }
        };
        if ready.shutdown {
            next = connection.on_shutdown(&stream, shared);
        }
        if next == Next::Continue && ready.writable {
            next = connection.on_writable(&stream);
        }
        if next == Next::Continue && ready.readable {
            next = connection.on_readable(&stream, shared);
        }
        if next == Next::Continue && Instant::now() >= connection.deadline(shared) {
            next = connection.on_timer(&stream, shared);
        }
    }
    match next {
        Next::Closed(reason) => reason,
        Next::Continue => unreachable!("the loop runs until the connection closes"),
    }
}

/// What poll(2) reported.
#[derive(Debug, Default)]
struct Ready {
    /// The socket has data, EOF or an error to read.
    readable: bool,
    writable: bool,
    /// The shutdown pipe is readable.
    shutdown: bool,
}

/// Blocks until `fd` is readable (when asked) or writable (when asked), `shutdown_fd` is
/// readable, or `timeout` passes (never, with `None`). EINTR returns an empty [`Ready`].
fn poll(
    fd: RawFd,
    want_read: bool,
    want_write: bool,
    shutdown_fd: Option<RawFd>,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let events = if want_read { libc::POLLIN } else { 0 } | if want_write { libc::POLLOUT } else { 0 };
    let mut fds = [
        libc::pollfd { fd, events, revents: 0 },
        libc::pollfd {
            fd: shutdown_fd.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let timeout_ms = match timeout {
        None => -1,
        // Round up, so a deadline 0.4 ms away does not turn into a busy loop.
        Some(timeout) => timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
    };
    // SAFETY: `fds` is a valid array of 2 pollfd for the duration of the call; a
    // negative fd is ignored by poll(2).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let error = io::Error::last_os_error();
        return if error.kind() == io::ErrorKind::Interrupted {
            Ok(Ready::default())
        } else {
            Err(error)
        };
    }
    let hangup = libc::POLLERR | libc::POLLHUP;
    Ok(Ready {
        readable: fds[0].revents & (libc::POLLIN | hangup) != 0,
        writable: fds[0].revents & (libc::POLLOUT | hangup) != 0,
        shutdown: fds[1].revents & libc::POLLIN != 0,
    })
}
