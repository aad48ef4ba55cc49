//! permessage-deflate (RFC 7692) on the generator's side, `--offer-deflate[=PARAMS]`: the
//! socket a connection of a run that offers is held over, [`Offering`]. The offer itself,
//! and the check of the server's answer, are [`crate::offer`].
//!
//! # Which client
//!
//! tungstenite (0.29) has no permessage-deflate and rejects every frame with RSV1 set, so
//! it cannot be the client of a connection whose server accepted. The server's own code
//! (`src/deflate.rs` of the root crate) is out of reach (the root crate depends on this
//! one) and is a server: it inflates masked client frames and writes unmasked ones. The
//! choice was between writing a client codec here (frames both ways, fragments, control
//! frames interleaved, masking, UTF-8, close handshake, and the compression on top) and a
//! maintained client that, by its documentation, passes Autobahn's client cases,
//! compression (12.*, 13.*) included. This uses the latter, [`yawc`] (0.5):
//!
//! - it runs over any tokio `AsyncRead + AsyncWrite` and takes a stream whose handshake
//!   was done elsewhere (`WebSocket::from_stream_with_extensions`, given the 101's
//!   `Sec-WebSocket-Extensions`), so the generator keeps its own connect (source address,
//!   IP_BIND_ADDRESS_NO_PORT), its TLS ([`crate::client::Transport`], wss:// included),
//!   its own upgrade (the offer as given, Retry-After, the timings) and its failure causes;
//! - its compression is flate2 with window bits (feature `zlib`, through zlib-rs: the
//!   backend the server uses), built on a connection's first compressed message, and for
//!   a direction without context takeover borrowed from a process-wide pool per message
//!   (`pool`), so such a connection holds none between messages;
//! - it is used only by connections that offer: a run without `--offer-deflate` is
//!   tungstenite as before, and so is a connection whose server declined (the answer
//!   decides, per connection, in [`Offering::upgraded`]), so a declined connection costs
//!   the generator exactly what it cost before.
//!
//! Both stacks sit behind [`crate::client::Socket`], so the hold (pings, pongs, pushes,
//! echoes, close 1000, reconnection) is written once, in `client.rs`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use yawc::frame::OpCode;
use yawc::{Frame, WebSocketError};

use crate::client::{ClientSettings, Incoming, Outgoing, Socket, Transport, Tungstenite, Upgraded};
use crate::stats::io_cause;

/// A connection of a run that offers: tungstenite when the server declined, as every
/// connection of a run that does not offer; yawc, boxed, when it accepted.
// The declined variant is tungstenite's stream unboxed on purpose: a declined connection
// costs what it costs without the flag (one allocation less), and the task is no larger
// than a plain run's (`client::tests`).
#[allow(clippy::large_enum_variant)]
pub enum Offering {
    Declined(WebSocketStream<Transport>),
    Accepted(Box<yawc::WebSocket<Prefixed<Transport>>>),
}

impl Socket for Offering {
    async fn upgraded(upgraded: Upgraded, settings: &ClientSettings) -> Result<Self, String> {
        let Some(response) = upgraded.extensions.as_deref() else {
            return Ok(Offering::Declined(Tungstenite::upgraded(upgraded, settings).await?));
        };
        let Upgraded { transport, rest, .. } = upgraded;
        let max = settings.websocket.max_message_size.unwrap_or(64 * 1024);
        let options = yawc::Options::default()
            .with_compression_level(yawc::CompressionLevel::default())
            .with_max_payload_read(max)
            .with_max_read_buffer(max)
            .with_read_buffer_capacity(256)
            .with_write_buffer_capacity(256)
            .with_deflate_pool(pool().clone())
            .with_utf8();
        let io = Prefixed { rest, inner: transport };
        yawc::WebSocket::from_stream_with_extensions(io, yawc::Role::Client, Some(response), options)
            .map(|websocket| Offering::Accepted(Box::new(websocket)))
            .map_err(|error| yawc_cause(&error))
    }

    fn poll_incoming(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        match self {
            Offering::Declined(websocket) => websocket.poll_incoming(cx),
            Offering::Accepted(websocket) => Poll::Ready(match ready!(websocket.poll_next_frame(cx)) {
                Ok(frame) => incoming(frame),
                Err(WebSocketError::ConnectionClosed) => Incoming::End,
                Err(error) => Incoming::Failed(yawc_cause(&error)),
            }),
        }
    }

    async fn send(&mut self, outgoing: Outgoing) -> Result<(), String> {
        use futures_util::SinkExt;
        match self {
            Offering::Declined(websocket) => Socket::send(websocket, outgoing).await,
            Offering::Accepted(websocket) => {
                let frame = match outgoing {
                    Outgoing::Ping(payload) => Frame::ping(payload.to_vec()),
                    Outgoing::Binary(payload) => Frame::binary(payload),
                };
                SinkExt::send(websocket.as_mut(), frame)
                    .await
                    .map_err(|error| yawc_cause(&error))
            }
        }
    }

    async fn close(&mut self) -> bool {
        use futures_util::SinkExt;
        let websocket = match self {
            Offering::Declined(websocket) => return Socket::close(websocket).await,
            Offering::Accepted(websocket) => websocket,
        };
        let frame = Frame::close(yawc::close::CloseCode::Normal, crate::client::CLOSE_REASON);
        let mut answered = false;
        let finished = tokio::time::timeout(crate::client::CLOSE_TIMEOUT, async {
            SinkExt::send(websocket.as_mut(), frame).await?;
            loop {
                match websocket.next_frame().await {
                    Ok(frame) if frame.opcode() == OpCode::Close => answered = true,
                    Ok(_) => {}
                    Err(WebSocketError::ConnectionClosed) => return Ok(()),
                    Err(_) if answered => return Ok(()),
                    Err(error) => return Err(error),
                }
            }
        })
        .await;
        answered || matches!(finished, Ok(Ok(())))
    }
}

/// The process's pool of deflate and inflate streams for the directions without context
/// takeover (`server_no_context_takeover`, `client_no_context_takeover`): such a
/// connection borrows one for a message and gives it back, so between messages it holds
/// none, as the lean engine's `stateless` mode does on the other side. Sized for the
/// messages in flight at once, not for the connections.
fn pool() -> &'static yawc::DeflatePool {
    static POOL: std::sync::OnceLock<yawc::DeflatePool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| yawc::DeflatePool::new(std::thread::available_parallelism().map_or(4, |n| n.get() * 2)))
}

/// A frame yawc handed over, inflated.
fn incoming(frame: Frame) -> Incoming {
    match frame.opcode() {
        OpCode::Pong => Incoming::Pong(frame.into_payload()),
        OpCode::Binary => Incoming::Binary(frame.into_payload()),
        OpCode::Text => Incoming::Text,
        OpCode::Close => Incoming::Close(frame.close_code().map(u16::from)),
        _ => Incoming::Other,
    }
}

/// The cause a yawc error counts as (see [`crate::stats::ws_cause`] for tungstenite's).
fn yawc_cause(error: &WebSocketError) -> String {
    match error {
        WebSocketError::IoError(error) => io_cause(error),
        WebSocketError::ConnectionClosed => "closed".to_owned(),
        _ => "protocol".to_owned(),
    }
}

/// The transport with the bytes the upgrade read past the 101 in front, which yawc (unlike
/// tungstenite's `from_partially_read`) cannot be handed otherwise. Empty and unallocated
/// once read.
pub struct Prefixed<S> {
    rest: Vec<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.rest.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.rest.len().min(buf.remaining());
        buf.put_slice(&self.rest[..n]);
        self.rest.drain(..n);
        if self.rest.is_empty() {
            self.rest = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
