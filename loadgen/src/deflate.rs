//! permessage-deflate (RFC 7692) on the generator's side, `--offer-deflate[=PARAMS]`: the
//! offer (parsed and checked when the run starts), the server's answer (checked before a
//! connection goes on), and the socket a connection holds when it offered.
//!
//! # Which client
//!
//! tungstenite (0.29) has no permessage-deflate and rejects every frame with RSV1 set, so
//! it cannot be the client of a connection whose server accepted. The server's own code
//! (`src/deflate.rs` of the root crate) is out of reach (the root crate depends on this
//! one) and is a server: it inflates masked client frames and writes unmasked ones. The
//! choice was between writing a client codec here (frames both ways, fragments, control
//! frames interleaved, masking, UTF-8, close handshake, and the compression on top) and a
//! maintained client that already passes Autobahn's client cases, compression (12.*,
//! 13.*) included. This uses the latter, [`yawc`]:
//!
//! - it runs over any tokio `AsyncRead + AsyncWrite` and takes a stream whose handshake
//!   was done elsewhere (`WebSocket::from_stream_with_extensions`, given the 101's
//!   `Sec-WebSocket-Extensions`), so the generator keeps its own connect (source address,
//!   IP_BIND_ADDRESS_NO_PORT), its TLS ([`crate::client::Transport`], wss:// included),
//!   its own upgrade (the offer as given, Retry-After, the timings) and its failure causes;
//! - its compression is flate2 with window bits (feature `zlib`, through zlib-rs: the
//!   backend the server uses), built on a connection's first compressed message;
//! - it is used only by connections that offer: a run without `--offer-deflate` is
//!   tungstenite as before, and so is a connection whose server declined (the answer
//!   decides, per connection, in [`Offering::upgraded`]), so a declined connection costs
//!   the generator exactly what it cost before.
//!
//! Both stacks sit behind [`crate::client::Socket`], so the hold (pings, pongs, pushes,
//! echoes, close 1000, reconnection) is written once, in `client.rs`.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use yawc::frame::OpCode;
use yawc::{Frame, WebSocketError};

use crate::client::{ClientSettings, Incoming, Outgoing, Socket, Transport, Tungstenite, Upgraded};
use crate::stats::io_cause;

/// What Chromium (and so every Chrome and Edge) offers on every WebSocket it opens, and
/// what `--offer-deflate` without a value offers.
pub const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// One permessage-deflate offer: the parameters of RFC 7692 §7.1, each at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value (any limit the server names is accepted).
    pub client_max_window_bits: Option<Option<u8>>,
}

impl FromStr for Offer {
    type Err = String;

    /// `permessage-deflate` followed by `; parameter[=value]`s. One offer only (no commas),
    /// no unknown or repeated parameter, window bits 8 to 15 (9 to 15 for the client's: zlib
    /// cannot compress with a window of 8).
    fn from_str(text: &str) -> Result<Offer, String> {
        if text.contains(',') {
            return Err("one offer only: leave out the comma and what follows it".into());
        }
        let mut parts = text.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        if !name.eq_ignore_ascii_case("permessage-deflate") {
            return Err(format!(
                "must start with `permessage-deflate`, not {name:?} (e.g. `{BROWSER_OFFER}`)"
            ));
        }
        let mut offer = Offer::default();
        for parameter in parts {
            let (key, value) = match parameter.split_once('=') {
                Some((key, value)) => (key.trim(), Some(value.trim().trim_matches('"'))),
                None => (parameter, None),
            };
            let repeated = || Err(format!("{key} is given twice"));
            match (key.to_ascii_lowercase().as_str(), value) {
                ("server_no_context_takeover", None) if offer.server_no_context_takeover => return repeated(),
                ("server_no_context_takeover", None) => offer.server_no_context_takeover = true,
                ("client_no_context_takeover", None) if offer.client_no_context_takeover => return repeated(),
                ("client_no_context_takeover", None) => offer.client_no_context_takeover = true,
                ("server_no_context_takeover" | "client_no_context_takeover", Some(_)) => {
                    return Err(format!("{key} takes no value"));
                }
                ("server_max_window_bits", _) if offer.server_max_window_bits.is_some() => return repeated(),
                ("server_max_window_bits", None) => {
                    return Err("server_max_window_bits needs a value, 8 to 15".into());
                }
                ("server_max_window_bits", Some(value)) => {
                    offer.server_max_window_bits = Some(window_bits(key, value, 8)?);
                }
                ("client_max_window_bits", _) if offer.client_max_window_bits.is_some() => return repeated(),
                ("client_max_window_bits", value) => {
                    offer.client_max_window_bits = Some(value.map(|value| window_bits(key, value, 9)).transpose()?);
                }
                ("", None) => return Err("an empty parameter (two `;` in a row, or one at the end)".into()),
                _ => {
                    return Err(format!(
                        "unknown parameter {key:?}: RFC 7692 has server_no_context_takeover, \
                         client_no_context_takeover, server_max_window_bits=N and client_max_window_bits[=N]"
                    ));
                }
            }
        }
        Ok(offer)
    }
}

/// A window size: `least` (8 or 9) to 15, decimal.
fn window_bits(key: &str, value: &str, least: u8) -> Result<u8, String> {
    match value.parse::<u8>() {
        Ok(bits) if (least..=15).contains(&bits) && !value.starts_with('0') => Ok(bits),
        Ok(8) => Err(format!(
            "{key}=8: zlib cannot compress with a window of 8 bits (it uses 9), so the generator cannot keep \
             to it; give 9 to 15"
        )),
        _ => Err(format!("{key}={value}: window bits are {least} to 15")),
    }
}

impl fmt::Display for Offer {
    /// The `Sec-WebSocket-Extensions` value, parameters in RFC 7692's order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("permessage-deflate")?;
        if self.server_no_context_takeover {
            f.write_str("; server_no_context_takeover")?;
        }
        if self.client_no_context_takeover {
            f.write_str("; client_no_context_takeover")?;
        }
        if let Some(bits) = self.server_max_window_bits {
            write!(f, "; server_max_window_bits={bits}")?;
        }
        match self.client_max_window_bits {
            Some(Some(bits)) => write!(f, "; client_max_window_bits={bits}"),
            Some(None) => f.write_str("; client_max_window_bits"),
            None => Ok(()),
        }
    }
}

impl Offer {
    /// Whether `response` (the 101's `Sec-WebSocket-Extensions`) is an answer to this
    /// offer that the generator can keep to (RFC 7692 §7.1): one permessage-deflate
    /// element, known parameters once each, `client_max_window_bits` only when offered and
    /// then 9 to 15, `server_max_window_bits` no larger than offered, and
    /// `server_no_context_takeover` when offered. The reason when it is not.
    pub fn check_response(&self, response: &str) -> Result<(), String> {
        let answer = Offer::from_str(response.trim())?;
        if let Some(Some(bits)) = answer.client_max_window_bits
            && self.client_max_window_bits.is_none()
        {
            return Err(format!("client_max_window_bits={bits} answers no such offer"));
        }
        if answer.client_max_window_bits == Some(None) {
            return Err("client_max_window_bits without a value".into());
        }
        if let (Some(offered), Some(answered)) = (self.server_max_window_bits, answer.server_max_window_bits)
            && answered > offered
        {
            return Err(format!(
                "server_max_window_bits={answered} exceeds the {offered} offered"
            ));
        }
        if self.server_no_context_takeover && !answer.server_no_context_takeover {
            return Err("server_no_context_takeover was offered and is missing".into());
        }
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_offer_and_others_parse_back_to_themselves() {
        for text in [
            BROWSER_OFFER,
            "permessage-deflate",
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8; \
             client_max_window_bits=9",
        ] {
            let offer: Offer = text.parse().unwrap();
            assert_eq!(offer.to_string(), text);
        }
        let spaced: Offer = "Permessage-Deflate ;client_max_window_bits = \"12\"".parse().unwrap();
        assert_eq!(spaced.to_string(), "permessage-deflate; client_max_window_bits=12");
    }

    #[test]
    fn bad_offers_say_what_is_wrong() {
        for (text, says) in [
            ("deflate", "must start with `permessage-deflate`"),
            ("permessage-deflate; x_window=3", "unknown parameter \"x_window\""),
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                "twice",
            ),
            ("permessage-deflate; server_max_window_bits", "needs a value"),
            ("permessage-deflate; server_max_window_bits=16", "8 to 15"),
            ("permessage-deflate; server_max_window_bits=010", "8 to 15"),
            (
                "permessage-deflate; client_max_window_bits=8",
                "zlib cannot compress with a window of 8",
            ),
            ("permessage-deflate; server_no_context_takeover=1", "takes no value"),
            ("permessage-deflate; ", "empty parameter"),
            ("permessage-deflate, permessage-deflate", "one offer only"),
        ] {
            let error = text.parse::<Offer>().unwrap_err();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }

    #[test]
    fn responses_are_checked_against_the_offer() {
        let browser: Offer = BROWSER_OFFER.parse().unwrap();
        for ok in [
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=8",
        ] {
            browser.check_response(ok).unwrap();
        }
        let plain: Offer = "permessage-deflate".parse().unwrap();
        assert!(
            plain
                .check_response("permessage-deflate; client_max_window_bits=10")
                .is_err()
        );
        assert!(
            browser
                .check_response("permessage-deflate; client_max_window_bits")
                .is_err()
        );
        assert!(browser.check_response("x-webkit-deflate-frame").is_err());
        let limited: Offer = "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
            .parse()
            .unwrap();
        assert!(
            limited
                .check_response("permessage-deflate; server_no_context_takeover; server_max_window_bits=12")
                .is_err()
        );
        assert!(limited.check_response("permessage-deflate").is_err());
        limited
            .check_response("permessage-deflate; server_no_context_takeover; server_max_window_bits=9")
            .unwrap();
    }
}
