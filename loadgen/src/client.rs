//! One client connection: TCP connect (from a chosen source address, port picked at
//! connect time), for wss:// a TLS handshake ([`crate::tls`]), WebSocket upgrade, then
//! the hold — answering the server's pings,
//! sending our own on a fixed schedule, optional messages, timing the server's pushes —
//! until released, when it closes with 1000. With `--reconnect`, a connection the server
//! closes or resets during the hold opens again after a backoff ([`crate::reconnect`]).
//!
//! The hold is written once, over [`Socket`]: tungstenite for every connection of a run
//! without `--offer-deflate`, and for a connection whose server declined the offer; yawc
//! for one whose server accepted it ([`crate::deflate`], which says why).
//!
//! One Tokio task per connection, with a small read buffer, so the generator stays far
//! lighter than the server it measures. Its future holds the socket and the hold's
//! schedule; everything used once or rarely (the handshake, a reconnection, the close) is
//! boxed and freed, and a test keeps the task's size bounded. A wss:// connection's TLS
//! state is boxed too ([`Transport`]): a pointer in the task, so plain and TLS
//! connections' tasks are the same size.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Bytes, Message};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::offer::Offer;
use crate::reconnect::{self, Hint};
use crate::stats::{Stats, io_cause, ws_cause};
use crate::tls::TlsClient;
use wsscale_wire::push;

/// How long a closing connection waits for the server's close reply.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The reason of the generator's close 1000.
pub(crate) const CLOSE_REASON: &str = "load run finished";

/// What a WebSocket runs over: the socket (ws://), or TLS over it (wss://), boxed so that
/// rustls' connection state (about a kilobyte, besides its buffers) is not part of every
/// held connection's task.
pub type Transport = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// What every connection of a run shares.
#[derive(Debug)]
pub struct ClientSettings {
    pub url: url::Url,
    pub target: SocketAddr,
    pub connect_timeout: Duration,
    pub ping_interval: Option<Duration>,
    pub message_interval: Option<Duration>,
    pub message_size: usize,
    /// What the `--message-interval` messages carry.
    pub message_content: MessageContent,
    /// `--message-content repeated`: every message (`message_size` bytes, made once).
    message: Bytes,
    pub websocket: WebSocketConfig,
    /// Ping payloads carry the intended send time as nanoseconds since this instant.
    pub epoch: Instant,
    /// Reopen a connection lost during the hold (`--reconnect`); off unless set.
    pub reconnect: bool,
    /// wss://: the TLS configuration all connections share; None (ws://) unless set.
    pub tls: Option<TlsClient>,
    /// `--offer-deflate`: what every upgrade offers; None (no offer) unless set.
    pub offer_deflate: Option<Offer>,
}

impl ClientSettings {
    /// The next `--message-interval` message.
    pub fn next_message(&self) -> Bytes {
        match self.message_content {
            MessageContent::Repeated => self.message.clone(),
            MessageContent::Random => MessageContent::random(self.message_size),
        }
    }

    /// Settings for connections to `target`; the WebSocket buffers follow from the
    /// message size, and ping payloads count from now.
    pub fn new(
        url: url::Url,
        target: SocketAddr,
        connect_timeout: Duration,
        ping_interval: Option<Duration>,
        message_interval: Option<Duration>,
        message_size: usize,
    ) -> Self {
        ClientSettings {
            url,
            target,
            connect_timeout,
            ping_interval,
            message_interval,
            message_size,
            message_content: MessageContent::Repeated,
            message: vec![0x5a; message_size].into(),
            websocket: Self::websocket_config(message_size),
            epoch: Instant::now(),
            reconnect: false,
            tls: None,
            offer_deflate: None,
        }
    }

    /// The client's WebSocket buffers, sized for idle connections: a 256-byte read chunk
    /// (pongs and echoes of small messages fit; larger frames grow it as needed), frames
    /// written straight through.
    pub fn websocket_config(message_size: usize) -> WebSocketConfig {
        let max = (message_size * 2).max(64 * 1024);
        WebSocketConfig::default()
            .read_buffer_size(256)
            .write_buffer_size(0)
            .max_write_buffer_size(max * 2)
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }
}

/// What one connection is held over: the hold below runs on it, whichever WebSocket
/// implementation it is. [`Tungstenite`] for every connection of a run that does not
/// offer permessage-deflate; [`crate::deflate::Offering`] for a run that does.
pub trait Socket: Sized + Send + 'static {
    /// The WebSocket over a transport whose upgrade succeeded.
    fn upgraded(upgraded: Upgraded, settings: &ClientSettings) -> impl Future<Output = Result<Self, String>> + Send;

    /// The next thing the server sent (cancel-safe: what a poll has read stays in the
    /// socket). A ping is answered by the socket itself, and seen as [`Incoming::Other`].
    fn poll_incoming(&mut self, cx: &mut Context<'_>) -> Poll<Incoming>;

    /// Sends one frame; the failure cause when it could not.
    fn send(&mut self, outgoing: Outgoing) -> impl Future<Output = Result<(), String>> + Send;

    /// Sends close 1000 and reads until the stream ends (at most `CLOSE_TIMEOUT`); true
    /// when the server answered with its Close frame.
    fn close(&mut self) -> impl Future<Output = bool> + Send;
}

/// What a [`Socket`] received, messages whole (and inflated).
pub enum Incoming {
    Pong(Bytes),
    Binary(Bytes),
    Text,
    /// The server's Close, with its code (None: without one).
    Close(Option<u16>),
    /// A ping (answered), a frame the hold ignores.
    Other,
    /// An error, as its failure cause.
    Failed(String),
    /// The stream ended.
    End,
}

/// What the hold sends.
pub enum Outgoing {
    /// A ping whose payload is the time it was due.
    Ping([u8; 8]),
    /// A `--message-interval` message.
    Binary(Bytes),
}

/// The upgrade's outcome: the transport after the 101, the bytes read past it, and the
/// 101's `Sec-WebSocket-Extensions` when the generator offered one and it is there.
pub struct Upgraded {
    pub transport: Transport,
    pub rest: Vec<u8>,
    pub extensions: Option<String>,
}

/// The generator's WebSocket, as before `--offer-deflate`.
pub type Tungstenite = WebSocketStream<Transport>;

impl Socket for Tungstenite {
    async fn upgraded(upgraded: Upgraded, settings: &ClientSettings) -> Result<Self, String> {
        let Upgraded { transport, rest, .. } = upgraded;
        let config = Some(settings.websocket);
        Ok(if rest.is_empty() {
            WebSocketStream::from_raw_socket(transport, Role::Client, config).await
        } else {
            WebSocketStream::from_partially_read(transport, rest, Role::Client, config).await
        })
    }

    fn poll_incoming(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        Poll::Ready(match ready!(self.poll_next_unpin(cx)) {
            Some(Ok(Message::Pong(payload))) => Incoming::Pong(payload),
            Some(Ok(Message::Binary(payload))) => Incoming::Binary(payload),
            Some(Ok(Message::Text(_))) => Incoming::Text,
            Some(Ok(Message::Close(frame))) => Incoming::Close(frame.map(|frame| u16::from(frame.code))),
            Some(Ok(_)) => Incoming::Other,
            Some(Err(error)) => Incoming::Failed(ws_cause(&error)),
            None => Incoming::End,
        })
    }

    async fn send(&mut self, outgoing: Outgoing) -> Result<(), String> {
        let message = match outgoing {
            Outgoing::Ping(payload) => Message::Ping(payload.to_vec().into()),
            Outgoing::Binary(payload) => Message::binary(payload),
        };
        SinkExt::send(self, message).await.map_err(|error| ws_cause(&error))
    }

    /// How the transport ends after the server's answer does not matter: a wss:// server
    /// built on tokio-tungstenite (axum's stock stack) closes its socket without TLS's
    /// close_notify, which rustls reports as an unexpected EOF, after a complete close
    /// handshake.
    async fn close(&mut self) -> bool {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: CLOSE_REASON.into(),
        };
        let mut answered = false;
        let finished = tokio::time::timeout(CLOSE_TIMEOUT, async {
            WebSocketStream::close(self, Some(frame)).await?;
            while let Some(message) = self.next().await {
                match message {
                    Ok(Message::Close(_)) => answered = true,
                    Ok(_) => {}
                    Err(_) if answered => break,
                    Err(error) => return Err(error),
                }
            }
            Ok::<_, tungstenite::Error>(())
        })
        .await;
        answered || matches!(finished, Ok(Ok(())) | Ok(Err(tungstenite::Error::ConnectionClosed)))
    }
}

/// `--message-content`: what the generator's messages carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MessageContent {
    /// One byte repeated: deflate shrinks it to almost nothing.
    #[default]
    Repeated,
    /// Pseudo-random bytes, different in every message: deflate cannot shrink them.
    Random,
}

impl MessageContent {
    /// `size` pseudo-random bytes, new for each message (a process-wide counter through
    /// SplitMix64), so that not even a deflate window that holds the previous message
    /// shrinks the next; never the push magic ("WSSP") in front.
    fn random(size: usize) -> Bytes {
        static MESSAGES: AtomicU64 = AtomicU64::new(0);
        let mut state = MESSAGES
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x5753_5343_414c_4521);
        let mut bytes: Vec<u8> = std::iter::repeat_with(|| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)).to_le_bytes()
        })
        .flatten()
        .take(size)
        .collect();
        if bytes.starts_with(b"WSSP") {
            bytes[0] = 0;
        }
        bytes.into()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageContent::Repeated => "repeated",
            MessageContent::Random => "random",
        }
    }
}

/// Opens one connection and holds it until `release`, over `S` (see [`Socket`]).
/// `attempted` is dropped once the connection is open or has failed, which is how the
/// ramp counts finished attempts; `permit` bounds the attempts in flight.
///
/// An `async` block rather than an `async fn`: an async fn keeps each argument twice in
/// its future (as passed and as the body's local), 64 bytes here; the block uses what it
/// captured in place.
pub fn run<S: Socket>(
    settings: Arc<ClientSettings>,
    source: Option<IpAddr>,
    ping_phase: Duration,
    stats: Arc<Stats>,
    permit: OwnedSemaphorePermit,
    attempted: tokio::sync::mpsc::UnboundedSender<()>,
    release: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    // Boxed: what only the ramp needs takes one pointer in the task instead of 24 bytes
    // for the connection's whole life.
    let attempt = Box::new((permit, attempted));
    async move {
        // Boxed: the handshake's state is freed once open, instead of sizing every held
        // connection's task for it.
        let mut websocket = match Box::pin(open::<S>(&settings, source, &stats)).await {
            Ok(opened) => {
                stats.record_open(opened.connect, opened.tls, opened.upgrade);
                opened.websocket
            }
            Err(failure) => {
                stats.record_failure(failure.cause);
                return;
            }
        };
        drop(attempt);
        loop {
            // By reference: moved into `hold`, the stream would take room twice in the task.
            let Ended::Lost { at, hint } = hold(&mut websocket, &settings, ping_phase, &stats, &release).await else {
                return;
            };
            if !settings.reconnect {
                return;
            }
            // The lost socket is closed now, not after the reconnection.
            drop(websocket);
            // Boxed like the first open: a pointer in the task while it runs, nothing after.
            websocket = match Box::pin(reopen::<S>(&settings, source, &stats, &release, at, hint)).await {
                Some(websocket) => websocket,
                None => return,
            };
        }
    }
}

/// An open connection and what opening it took.
struct Opened<S> {
    websocket: S,
    connect: Duration,
    /// wss://: from connected to the TLS handshake's end.
    tls: Option<Duration>,
    /// From connected (wss://: from the TLS handshake's end) to the 101.
    upgrade: Duration,
}

/// Why opening failed: the cause as the summary counts it, and what the server said about
/// trying again.
struct OpenFailure {
    cause: String,
    hint: Hint,
}

impl From<String> for OpenFailure {
    fn from(cause: String) -> Self {
        OpenFailure {
            cause,
            hint: Hint::None,
        }
    }
}

/// Connect, TLS handshake (wss://) and upgrade, all within the connect timeout. With
/// `--offer-deflate`, the server's answer is counted in `stats` once the upgrade succeeds.
async fn open<S: Socket>(
    settings: &ClientSettings,
    source: Option<IpAddr>,
    stats: &Stats,
) -> Result<Opened<S>, OpenFailure> {
    let started = Instant::now();
    let deadline = started + settings.connect_timeout;
    let stream = tokio::time::timeout_at(deadline.into(), connect(settings.target, source))
        .await
        .map_err(|_| "timeout".to_owned())?
        .map_err(|error| io_cause(&error))?;
    let connected = Instant::now();
    let (transport, secured) = match &settings.tls {
        None => (Either::Left(stream), connected),
        Some(tls) => {
            let stream = tokio::time::timeout_at(deadline.into(), tls.handshake(stream))
                .await
                .map_err(|_| "timeout".to_owned())?
                .map_err(|error| {
                    crate::tls::log_first_failure(&error);
                    io_cause(&error)
                })?;
            (Either::Right(Box::new(stream)), Instant::now())
        }
    };
    let upgraded = tokio::time::timeout_at(deadline.into(), upgrade(transport, settings))
        .await
        .map_err(|_| "timeout".to_owned())??;
    if settings.offer_deflate.is_some() {
        stats.record_deflate_answer(upgraded.extensions.as_deref());
    }
    let websocket = S::upgraded(upgraded, settings).await?;
    Ok(Opened {
        websocket,
        connect: connected - started,
        tls: settings.tls.is_some().then(|| secured - connected),
        upgrade: secured.elapsed(),
    })
}

/// Reopens a connection lost at `lost_at` (the server's `hint` first), backing off
/// between attempts, until it is open again (Some) or `release` ends the hold (None).
async fn reopen<S: Socket>(
    settings: &ClientSettings,
    source: Option<IpAddr>,
    stats: &Stats,
    release: &CancellationToken,
    lost_at: Instant,
    mut hint: Hint,
) -> Option<S> {
    let mut attempt = 0;
    loop {
        let wait = reconnect::delay(attempt, hint, reconnect::uniform());
        let opened = tokio::select! {
            biased;
            _ = release.cancelled() => return None,
            opened = async {
                tokio::time::sleep(wait).await;
                open::<S>(settings, source, stats).await
            } => opened,
        };
        match opened {
            Ok(opened) => {
                stats.record_reconnect(lost_at.elapsed());
                return Some(opened.websocket);
            }
            Err(failure) => {
                stats.record_reconnect_failure(failure.cause);
                hint = failure.hint;
                attempt += 1;
            }
        }
    }
}

/// The client side of the upgrade, done here rather than by tungstenite's handshake,
/// whose 4 KiB read buffer would become the connection's read buffer for its whole life.
/// With `--offer-deflate` it sends the offer, and an acceptance the generator cannot keep
/// to (see [`Offer::check_response`]) fails the attempt as `deflate_response`.
async fn upgrade(mut stream: Transport, settings: &ClientSettings) -> Result<Upgraded, OpenFailure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = tungstenite::handshake::client::generate_key();
    let url = &settings.url;
    let host = url.host_str().unwrap_or_default();
    let host = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let offer = settings
        .offer_deflate
        .as_ref()
        .map(|offer| format!("Sec-WebSocket-Extensions: {offer}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{offer}\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| io_cause(&error))?;
    let mut head = [0u8; 2048];
    let mut len = 0;
    loop {
        let n = stream.read(&mut head[len..]).await.map_err(|error| io_cause(&error))?;
        if n == 0 {
            return Err(if len == 0 { "reset" } else { "protocol" }.to_owned().into());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head[..len]) {
            Ok(httparse::Status::Partial) if len < head.len() => continue,
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response.code.unwrap_or(0);
                let header = |name: &str| response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name));
                if status != 101 {
                    let hint = match status {
                        503 => header("retry-after")
                            .and_then(|h| reconnect::parse_retry_after(h.value))
                            .map_or(Hint::Later, Hint::RetryAfter),
                        _ => Hint::None,
                    };
                    return Err(OpenFailure {
                        cause: format!("http_{status}"),
                        hint,
                    });
                }
                let accept = header("sec-websocket-accept");
                if accept.map(|h| h.value) != Some(tungstenite::handshake::derive_accept_key(key.as_bytes()).as_bytes())
                {
                    return Err("protocol".to_owned().into());
                }
                let extensions = match &settings.offer_deflate {
                    None => None,
                    Some(offer) => match header("sec-websocket-extensions") {
                        None => None,
                        Some(h) => {
                            let value = std::str::from_utf8(h.value).map_err(|_| "deflate_response".to_owned())?;
                            if let Err(why) = offer.check_response(value) {
                                tracing::debug!(response = value, why, "an acceptance the generator cannot keep to");
                                return Err("deflate_response".to_owned().into());
                            }
                            Some(value.trim().to_owned())
                        }
                    },
                };
                return Ok(Upgraded {
                    transport: stream,
                    rest: head[head_len..len].to_vec(),
                    extensions,
                });
            }
            _ => return Err("protocol".to_owned().into()),
        }
    }
}

/// Connects from `source` (any port): IP_BIND_ADDRESS_NO_PORT defers the port choice to
/// connect(), where the kernel can reuse a port toward different destinations, instead
/// of bind() reserving one from the ephemeral range for good.
async fn connect(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        let enable: libc::c_int = 1;
        // SAFETY: a valid socket fd and a c_int option value of the declared size.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const enable).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How a hold ended.
enum Ended {
    /// The run released the connection; it closed with 1000.
    Released,
    /// The server closed it, reset it or ended the stream first (counted as lost).
    Lost { at: Instant, hint: Hint },
}

/// The next [`Incoming`] of `websocket`; cancel-safe.
fn next_incoming<S: Socket>(websocket: &mut S) -> impl Future<Output = Incoming> + '_ {
    std::future::poll_fn(|cx| websocket.poll_incoming(cx))
}

/// Holds the connection until it is released or lost. An `async` block for the reason
/// given at [`run`]; the schedule is computed before it, so the block keeps the next
/// due times (and updates them in place) rather than the phase they came from.
fn hold<'a, S: Socket>(
    websocket: &'a mut S,
    settings: &'a ClientSettings,
    ping_phase: Duration,
    stats: &'a Stats,
    release: &'a CancellationToken,
) -> impl Future<Output = Ended> + 'a {
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut next_ping = settings
        .ping_interval
        .map_or(far_future, |_| Instant::now() + ping_phase);
    let mut next_message = settings
        .message_interval
        .map_or(far_future, |interval| Instant::now() + interval);
    async move {
        // The one word of push state a held connection keeps (see `wsscale_wire::push`).
        let mut last_push_seq = push::NO_PUSH_YET;
        // One timer for both schedules, reset rather than rebuilt: every held connection's
        // task carries it.
        let timer = tokio::time::sleep_until(next_ping.min(next_message).into());
        tokio::pin!(timer);
        loop {
            tokio::select! {
                biased;
                _ = release.cancelled() => {
                    // Boxed, like every rare path below: its state would otherwise size the task.
                    let clean = Box::pin(websocket.close()).await;
                    stats.record_closed(clean);
                    return Ended::Released;
                }
                incoming = next_incoming(websocket) => match incoming {
                    Incoming::Pong(payload) => {
                        if let Ok(nanos) = <[u8; 8]>::try_from(payload.as_ref()) {
                            let intended = settings.epoch + Duration::from_nanos(u64::from_be_bytes(nanos));
                            stats.record_ping_rtt(intended.elapsed());
                        }
                    }
                    Incoming::Binary(payload) => match push::parse(&payload) {
                        Some(push) => last_push_seq = record_push(push, last_push_seq, stats),
                        None => {
                            stats.messages_echoed.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    Incoming::Text => {
                        stats.messages_echoed.fetch_add(1, Ordering::Relaxed);
                    }
                    Incoming::Close(code) => {
                        let (cause, hint) = code.map_or_else(
                            || ("close_none".to_owned(), Hint::None),
                            |code| (format!("close_{code}"), Hint::of_close_code(code)),
                        );
                        let ended = lost(stats, cause, hint);
                        // Answer the close so the server sees a clean end.
                        let drain = async {
                            while !matches!(next_incoming(websocket).await, Incoming::End | Incoming::Failed(_)) {}
                        };
                        let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, drain)).await;
                        return ended;
                    }
                    Incoming::Other => {}
                    Incoming::Failed(cause) => return lost(stats, cause, Hint::None),
                    Incoming::End => return lost(stats, "eof".to_owned(), Hint::None),
                },
                () = &mut timer => {
                    let now = Instant::now();
                    let mut outgoing = Vec::with_capacity(2);
                    if now >= next_ping {
                        // The payload is the time the ping was due, not the time it left: a
                        // late send counts against the round trip (no coordinated omission).
                        let due = (next_ping - settings.epoch).as_nanos() as u64;
                        next_ping += settings.ping_interval.unwrap_or_default();
                        outgoing.push(Outgoing::Ping(due.to_be_bytes()));
                    }
                    if now >= next_message {
                        next_message += settings.message_interval.unwrap_or_default();
                        outgoing.push(Outgoing::Binary(settings.next_message()));
                    }
                    for message in outgoing {
                        if let Err(cause) = Box::pin(websocket.send(message)).await {
                            return lost(stats, cause, Hint::None);
                        }
                    }
                    timer.as_mut().reset(next_ping.min(next_message).into());
                }
            }
        }
    }
}

/// Counts a held connection as lost, now.
fn lost(stats: &Stats, cause: String, hint: Hint) -> Ended {
    stats.record_lost(cause);
    Ended::Lost {
        at: Instant::now(),
        hint,
    }
}

/// Records a server push (delivery latency, sequence gap); returns the connection's new
/// last sequence number.
fn record_push(push: push::Push, last_push_seq: u64, stats: &Stats) -> u64 {
    let (missed, last_push_seq) = push::gap(last_push_seq, push.seq);
    stats.record_push(push::delivery(push.sent_unix_nanos, push::now_unix_nanos()), missed);
    last_push_seq
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The held connection's task is what each of tens of thousands of connections costs
    /// the generator, and Tokio allocates it in steps of 128 bytes (the task cell is
    /// 128-byte aligned): header 32 + core (this future + 32) + trailer 48. At 784 bytes
    /// the cell is 896; 8 bytes more and it is 1024. Measured (debug build, Rust 1.95):
    /// 896 bytes (cell 1024) before reconnection and pushes; those added 24 and async
    /// fns kept their arguments twice; async blocks, the ramp's permit boxed and the
    /// hold keeping due times rather than the ping phase made it 784. Measured on 10,000
    /// held connections (release, three runs each): the generator's heap per connection
    /// 1,697–1,729 B before, 1,569–1,622 B after (1,598–1,634 B with --reconnect).
    /// wss:// added nothing: the TLS stream (1,112 bytes) is boxed in [`Transport`], whose
    /// plain variant is the bare socket, so the future stayed at 784. The hold over
    /// [`Socket`] (for --offer-deflate) made it 752: the incoming frame is polled through
    /// `poll_fn` rather than a stream's `Next` future.
    /// The size of a held connection's future over socket `S` (what its task holds).
    fn held_task_size<S: Socket>() -> usize {
        let settings = Arc::new(ClientSettings::new(
            url::Url::parse("ws://127.0.0.1:1/ws").unwrap(),
            "127.0.0.1:1".parse().unwrap(),
            Duration::from_secs(1),
            Some(Duration::from_secs(1)),
            None,
            0,
        ));
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
        let (attempted, _) = tokio::sync::mpsc::unbounded_channel();
        let task = run::<S>(
            settings,
            None,
            Duration::ZERO,
            Arc::new(Stats::default()),
            permit,
            attempted,
            CancellationToken::new(),
        );
        size_of_val(&task)
    }

    #[test]
    fn a_held_connection_task_stays_small() {
        let size = held_task_size::<Tungstenite>();
        println!("client::run future: {size} bytes");
        assert!(
            size <= 784,
            "the held connection's future is {size} bytes: past 784 its task takes 128 more"
        );
    }

    /// A run with --offer-deflate holds [`crate::deflate::Offering`] (tungstenite's stream,
    /// or a pointer to yawc's), in a task of the same cell size.
    #[test]
    fn a_held_offering_connection_task_stays_small_too() {
        let size = held_task_size::<crate::deflate::Offering>();
        println!("client::run::<Offering> future: {size} bytes");
        assert!(size <= 784, "the offering connection's future is {size} bytes");
    }
}
