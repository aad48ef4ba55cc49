//! The lean engine's WebSocket session, shared by both execution models: what to answer
//! to each frame (echo, pong, close reply), on the [`Lifecycle`] every engine follows
//! (when to ping, when a silent peer is dead, how a connection ends and why).
//!
//! This module does no IO. It is fed the bytes the driver read and writes the bytes to
//! send into a buffer the driver lends it; [`crate::server::connection`] moves them
//! between those buffers and the socket, and each execution model only decides when
//! (Tokio readiness in tasks mode, poll(2) in threads mode). So the two models behave
//! identically on the wire and count identically in the metrics.

use std::time::Instant;

use crate::deflate::{Agreement, Deflate};
use crate::lifecycle::{CloseReason, Due, Flow, Lifecycle, SessionPolicy};
use crate::protocol::{self, Decoder, Frame, Violation, close_code, opcode};

/// What a session counted while handling one event, for the caller to add to the
/// metrics (the session itself does no IO and records nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Text and binary messages received (control frames are not counted).
    pub messages_received: u64,
    /// Text and binary messages sent (echoes).
    pub messages_sent: u64,
    /// Bytes read and discarded by a failed connection while it lingered.
    pub lingered_bytes: u64,
}

/// One connection's protocol state: the decoder, the [`Lifecycle`] every engine
/// follows, and permessage-deflate when it was negotiated.
#[derive(Debug)]
pub struct Session {
    decoder: Decoder,
    life: Lifecycle,
    deflate: Option<Deflate>,
}

impl Session {
    pub fn new(policy: &SessionPolicy, now: Instant) -> Self {
        Session::with_deflate(policy, now, None)
    }

    /// A session whose upgrade agreed to permessage-deflate (`agreement`): compressed
    /// messages are inflated (at most `max_message_size`), and echoes are compressed.
    pub fn with_deflate(policy: &SessionPolicy, now: Instant, agreement: Option<Agreement>) -> Self {
        Session {
            decoder: Decoder::default(),
            life: Lifecycle::new(policy, now),
            deflate: agreement.map(Deflate::new),
        }
    }

    /// What was agreed for permessage-deflate, if anything.
    pub fn deflate(&self) -> Option<&Agreement> {
        self.deflate.as_ref().map(Deflate::agreement)
    }

    /// When the driver must call [`Session::on_timer`] if nothing else happens first.
    pub fn deadline(&self, policy: &SessionPolicy) -> Instant {
        self.life.deadline(policy)
    }

    /// True until the session starts closing; only an open session heeds shutdown.
    pub fn is_open(&self) -> bool {
        self.life.is_open()
    }

    /// Bytes held for the peer between reads (the decoder's, counting capacity): at most
    /// [`protocol::max_held_bytes`] of `max_message_size`, 0 while idle.
    pub fn held_bytes(&self) -> usize {
        self.decoder.held_bytes()
    }

    /// Bytes from the peer; the answers go to `out`. `input` is unmasked in place.
    pub fn on_bytes(
        &mut self,
        input: &mut [u8],
        now: Instant,
        policy: &SessionPolicy,
        tally: &mut Tally,
        out: &mut Vec<u8>,
    ) -> Flow {
        if self.life.is_lingering() {
            return self.on_discarded(input.len(), tally);
        }
        self.life.on_activity(now);
        let mut flow = Flow::Continue;
        let life = self.life;
        let open = life.is_open();
        let Session { decoder, deflate, .. } = self;
        let compression = deflate.is_some();
        let mut failed: Option<Violation> = None;
        let decoded = decoder.feed_with(input, policy.max_message_size, compression, |frame| {
            match frame {
                Frame::Message {
                    text,
                    payload,
                    compressed,
                } => {
                    tally.messages_received += 1;
                    let opcode = if text { opcode::TEXT } else { opcode::BINARY };
                    match (deflate.as_mut(), compressed) {
                        (Some(deflate), true) => {
                            let mut inflated = Vec::new();
                            let checked = deflate
                                .inflate(payload, policy.max_message_size, &mut inflated)
                                .and_then(|()| check_text(text, &inflated));
                            if let Err(violation) = checked {
                                failed = Some(violation);
                                return false;
                            }
                            if open {
                                tally.messages_sent += 1;
                                echo_compressed(deflate, out, opcode, &inflated);
                            }
                        }
                        (Some(deflate), false) if open => {
                            tally.messages_sent += 1;
                            echo_compressed(deflate, out, opcode, payload);
                        }
                        _ if open => {
                            tally.messages_sent += 1;
                            protocol::encode(out, opcode, payload);
                        }
                        _ => {}
                    }
                }
                Frame::Ping(payload) if open => protocol::encode(out, opcode::PONG, payload),
                Frame::Ping(_) | Frame::Pong => {}
                Frame::Close(code) => {
                    if open {
                        // Echo the peer's code (RFC 6455 5.5.1); the server then closes TCP.
                        match code {
                            Some(code) => protocol::encode_close(out, code, ""),
                            None => protocol::encode(out, opcode::CLOSE, &[]),
                        }
                    }
                    flow = Flow::Finish(life.on_peer_close());
                }
            }
            flow == Flow::Continue
        });
        match decoded.and_then(|()| failed.map_or(Ok(()), Err)) {
            Ok(()) => flow,
            Err(violation) if open => {
                // Fail the connection (RFC 6455 7.1.7): say why, then linger so the close
                // frame reaches the peer before the socket closes.
                protocol::encode_close(out, violation.code, violation.reason);
                self.life.begin_linger(CloseReason::Error, now);
                // Nothing more is decoded: what the decoder held for the peer goes now.
                self.decoder = Decoder::default();
                Flow::Continue
            }
            // Already closing (our 1001 is out): the peer broke the rules instead of
            // answering, so stop here.
            Err(_) => Flow::Finish(CloseReason::Error),
        }
    }

    /// True while a failed connection reads and discards what its peer still sends,
    /// writing nothing: see [`crate::lifecycle::Lifecycle::begin_linger`].
    pub fn is_lingering(&self) -> bool {
        self.life.is_lingering()
    }

    /// `n` bytes arrived while lingering and were discarded: finished once they spend
    /// the byte budget.
    pub fn on_discarded(&mut self, n: usize, tally: &mut Tally) -> Flow {
        tally.lingered_bytes += n as u64;
        match self.life.on_discarded(n) {
            None => Flow::Continue,
            Some(reason) => Flow::Finish(reason),
        }
    }

    /// True when nothing of compression is held but the agreement (always without
    /// permessage-deflate; between messages with `--deflate stateless`).
    pub fn holds_no_compression_stream(&self) -> bool {
        self.deflate.as_ref().is_none_or(Deflate::holds_no_stream)
    }

    /// The peer closed TCP (or reset it).
    pub fn on_eof(&self) -> CloseReason {
        self.life.on_eof()
    }

    /// The deadline passed: ping, reap a silent peer, or give up on a close handshake.
    pub fn on_timer(&mut self, now: Instant, policy: &SessionPolicy, out: &mut Vec<u8>) -> Flow {
        match self.life.on_timer(now, policy) {
            Due::Nothing => Flow::Continue,
            Due::Ping => {
                protocol::encode(out, opcode::PING, &[]);
                Flow::Continue
            }
            Due::IdleTimeout => {
                // Best effort: the peer is probably gone, so do not wait for it.
                protocol::encode_close(out, close_code::NORMAL, "idle timeout");
                Flow::Finish(CloseReason::IdleTimeout)
            }
            Due::Finish(reason) => Flow::Finish(reason),
        }
    }

    /// The server is shutting down: send 1001 and wait for the peer's close until the
    /// drain timeout.
    pub fn begin_shutdown(&mut self, now: Instant, policy: &SessionPolicy, out: &mut Vec<u8>) {
        if self.life.begin_shutdown(now, policy) {
            protocol::encode_close(out, close_code::GOING_AWAY, "server shutting down");
        }
    }
}

/// A text message's payload must be UTF-8 (checked here once inflated; the decoder
/// checks uncompressed ones as they arrive).
fn check_text(text: bool, payload: &[u8]) -> Result<(), Violation> {
    if text && std::str::from_utf8(payload).is_err() {
        return Err(Violation::invalid_utf8("invalid UTF-8"));
    }
    Ok(())
}

/// An echo on a connection with permessage-deflate: compressed, one stream per message
/// (or the connection's own, in `context` mode).
fn echo_compressed(deflate: &mut Deflate, out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let mut compressed = Vec::new();
    deflate.compress(payload, &mut compressed);
    protocol::encode_compressed(out, opcode, &compressed);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lifecycle::tests::POLICY;

    /// A masked client frame.
    fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first_byte, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn echoes_messages_answers_pings_and_replies_to_close() {
        let mut tally = Tally::default();
        let now = Instant::now();
        let mut session = Session::new(&POLICY, now);
        let mut out = Vec::new();
        let mut input = client_frame(0x81, b"hi");
        input.extend(client_frame(0x89, b"p"));
        assert_eq!(
            session.on_bytes(&mut input, now, &POLICY, &mut tally, &mut out),
            Flow::Continue
        );
        assert_eq!(out, [0x81, 2, b'h', b'i', 0x8A, 1, b'p']);
        assert_eq!(
            tally,
            Tally {
                messages_received: 1,
                messages_sent: 1,
                lingered_bytes: 0,
            },
            "the ping is not a message"
        );
        out.clear();
        let mut close = client_frame(0x88, &[0x03, 0xE8]);
        close.extend(client_frame(0x81, b"after close"));
        assert_eq!(
            session.on_bytes(&mut close, now, &POLICY, &mut tally, &mut out),
            Flow::Finish(CloseReason::ClientClose)
        );
        assert_eq!(out, [0x88, 2, 0x03, 0xE8], "the close is echoed and nothing after it");
    }

    #[test]
    fn pings_on_schedule_and_reaps_a_silent_peer() {
        let start = Instant::now();
        let mut session = Session::new(&POLICY, start);
        let mut out = Vec::new();
        assert_eq!(session.deadline(&POLICY), start + POLICY.ping_interval);
        assert_eq!(
            session.on_timer(start + Duration::from_secs(5), &POLICY, &mut out),
            Flow::Continue
        );
        assert!(out.is_empty());
        assert_eq!(
            session.on_timer(start + Duration::from_secs(10), &POLICY, &mut out),
            Flow::Continue
        );
        assert_eq!(out, [0x89, 0], "a ping");
        session.on_timer(start + Duration::from_secs(20), &POLICY, &mut out);
        assert_eq!(
            session.deadline(&POLICY),
            start + POLICY.idle_timeout,
            "idle deadline comes before the next ping"
        );
        out.clear();
        let flow = session.on_timer(start + Duration::from_secs(25), &POLICY, &mut out);
        assert_eq!(flow, Flow::Finish(CloseReason::IdleTimeout));
        assert_eq!(&out[..4], [0x88, 14, 0x03, 0xE8]);
    }

    #[test]
    fn traffic_postpones_the_idle_deadline() {
        let mut tally = Tally::default();
        let start = Instant::now();
        let mut session = Session::new(&POLICY, start);
        let mut out = Vec::new();
        let mut pong = client_frame(0x8A, b"");
        session.on_bytes(
            &mut pong,
            start + Duration::from_secs(20),
            &POLICY,
            &mut tally,
            &mut out,
        );
        assert_eq!(
            session.on_timer(start + Duration::from_secs(26), &POLICY, &mut out),
            Flow::Continue
        );
        assert!(session.is_open());
    }

    #[test]
    fn shutdown_sends_1001_once_and_waits_the_drain_timeout() {
        let mut tally = Tally::default();
        let start = Instant::now();
        let mut session = Session::new(&POLICY, start);
        let mut out = Vec::new();
        session.begin_shutdown(start, &POLICY, &mut out);
        assert_eq!(&out[..4], [0x88, 22, 0x03, 0xE9]);
        out.clear();
        session.begin_shutdown(start, &POLICY, &mut out);
        assert!(out.is_empty(), "only once");
        assert_eq!(session.deadline(&POLICY), start + POLICY.drain_timeout);
        let mut message = client_frame(0x81, b"late");
        assert_eq!(
            session.on_bytes(&mut message, start, &POLICY, &mut tally, &mut out),
            Flow::Continue
        );
        assert!(out.is_empty(), "no echo while closing");
        assert_eq!(
            session.on_timer(start + Duration::from_secs(1), &POLICY, &mut out),
            Flow::Continue
        );
        let mut close = client_frame(0x88, &[0x03, 0xE9]);
        assert_eq!(
            session.on_bytes(&mut close, start, &POLICY, &mut tally, &mut out),
            Flow::Finish(CloseReason::Shutdown)
        );
        let mut abandoned = Session::new(&POLICY, start);
        abandoned.begin_shutdown(start, &POLICY, &mut out);
        assert_eq!(
            abandoned.on_timer(start + POLICY.drain_timeout, &POLICY, &mut out),
            Flow::Finish(CloseReason::Shutdown)
        );
        assert_eq!(abandoned.on_eof(), CloseReason::Shutdown);
    }

    #[test]
    fn violations_fail_the_connection_with_their_code() {
        let mut tally = Tally::default();
        let start = Instant::now();
        let mut session = Session::new(&POLICY, start);
        let mut out = Vec::new();
        let mut too_big = vec![0x82, 0x80 | 126, 0x08, 0x00, 0, 0, 0, 0];
        assert_eq!(
            session.on_bytes(&mut too_big, start, &POLICY, &mut tally, &mut out),
            Flow::Continue
        );
        assert!(
            session.is_lingering(),
            "failed: the close frame goes out, then it lingers"
        );
        assert_eq!(&out[..4], [0x88, 17, 0x03, 0xF1], "1009");
        assert_eq!(Session::new(&POLICY, start).on_eof(), CloseReason::Error);
    }

    #[test]
    fn a_failed_session_answers_nothing_more_and_discards_within_its_budget() {
        use crate::lifecycle::{LINGER_BYTES, LINGER_TIMEOUT};
        let mut tally = Tally::default();
        let start = Instant::now();
        let mut session = Session::new(&POLICY, start);
        let mut out = Vec::new();
        let mut unmasked = vec![0x81, 2, b'h', b'i'];
        assert_eq!(
            session.on_bytes(&mut unmasked, start, &POLICY, &mut tally, &mut out),
            Flow::Continue
        );
        assert_eq!(&out[2..4], &close_code::PROTOCOL_ERROR.to_be_bytes());
        assert!(session.is_lingering() && !session.is_open());
        out.clear();
        let mut later = client_frame(0x89, b"ping");
        assert_eq!(
            session.on_bytes(&mut later, start, &POLICY, &mut tally, &mut out),
            Flow::Continue
        );
        session.begin_shutdown(start, &POLICY, &mut out);
        assert!(out.is_empty(), "no pong, no 1001 after the close frame");
        assert_eq!(session.deadline(&POLICY), start + LINGER_TIMEOUT);
        assert_eq!(session.on_discarded(100 - later.len(), &mut tally), Flow::Continue);
        assert_eq!(
            session.on_discarded(LINGER_BYTES as usize, &mut tally),
            Flow::Finish(CloseReason::Error)
        );
        assert_eq!(tally.lingered_bytes, 100 + u64::from(LINGER_BYTES));
        assert_eq!(
            session.on_timer(start + LINGER_TIMEOUT, &POLICY, &mut out),
            Flow::Finish(CloseReason::Error)
        );
        assert!(out.is_empty());
    }

    /// Issue #11, defect 1 on the wire: an invalid byte in a text fragment, then a close
    /// 1000, was answered with a normal 1000; it fails the connection with 1007.
    #[test]
    fn an_invalid_text_fragment_then_a_close_is_answered_1007() {
        let mut tally = Tally::default();
        let start = Instant::now();
        let mut session = Session::new(&POLICY, start);
        let mut out = Vec::new();
        let mut input = client_frame(0x01, b"ok \xFF");
        input.extend(client_frame(0x88, &[0x03, 0xE8]));
        assert_eq!(
            session.on_bytes(&mut input, start, &POLICY, &mut tally, &mut out),
            Flow::Continue
        );
        assert!(
            session.is_lingering(),
            "failed: the close frame goes out, then it lingers"
        );
        assert_eq!(&out[..4], [0x88, 15, 0x03, 0xEF], "1007, and nothing else");
        assert_eq!(out.len(), 2 + 15);
        assert_eq!(session.held_bytes(), 0, "a failed session lets go of what it held");
    }

    /// Issue #11, defect 2 on the wire: a close 1012 (service restart) is echoed.
    #[test]
    fn a_close_with_1012_is_echoed() {
        let mut tally = Tally::default();
        let start = Instant::now();
        let mut session = Session::new(&POLICY, start);
        let mut out = Vec::new();
        let mut close = client_frame(0x88, &1012u16.to_be_bytes());
        assert_eq!(
            session.on_bytes(&mut close, start, &POLICY, &mut tally, &mut out),
            Flow::Finish(CloseReason::ClientClose)
        );
        assert_eq!(out, [0x88, 2, 0x03, 0xF4]);
        assert_eq!(session.held_bytes(), 0);
    }

    /// A client's compressed text frame (RSV1), masked.
    fn compressed_client_frame(text: &[u8]) -> Vec<u8> {
        use flate2::{Compress, Compression, FlushCompress};
        let mut compress = Compress::new(Compression::default(), false);
        let mut deflated = Vec::with_capacity(text.len() + 64);
        compress.compress_vec(text, &mut deflated, FlushCompress::Sync).unwrap();
        deflated.truncate(deflated.len() - 4);
        let mut frame = vec![0xC1, 0x80 | 126];
        frame.extend_from_slice(&(deflated.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(&deflated);
        frame
    }

    #[test]
    fn stateless_deflate_holds_no_stream_between_messages_and_context_keeps_its_own() {
        use crate::deflate::{DeflateConfig, DeflateMode, negotiate};
        let text = "compressible, compressible, compressible. ".repeat(20);
        for (mode, holds_none) in [(DeflateMode::Stateless, true), (DeflateMode::Context, false)] {
            let agreement = negotiate(
                ["permessage-deflate; client_max_window_bits"],
                DeflateConfig { mode, window_bits: 15 },
            );
            let now = Instant::now();
            let mut session = Session::with_deflate(&POLICY, now, agreement);
            assert!(
                session.holds_no_compression_stream(),
                "nothing before the first message"
            );
            let mut out = Vec::new();
            let mut tally = Tally::default();
            let mut frame = compressed_client_frame(text.as_bytes());
            assert_eq!(
                session.on_bytes(&mut frame, now, &POLICY, &mut tally, &mut out),
                Flow::Continue
            );
            assert_eq!(out[0], 0xC1, "the echo is compressed too (RSV1)");
            assert!(out.len() < text.len() / 2, "and smaller: {}", out.len());
            assert_eq!(tally.messages_sent, 1);
            assert_eq!(session.holds_no_compression_stream(), holds_none, "{mode:?}");
            assert_eq!(session.held_bytes(), 0, "the decoder is idle");
        }
    }

    #[test]
    fn a_compressed_frame_without_the_extension_or_invalid_text_fails_the_connection() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tally = Tally::default();
        let mut plain = Session::new(&POLICY, now);
        let mut frame = compressed_client_frame(b"hello");
        assert_eq!(
            plain.on_bytes(&mut frame, now, &POLICY, &mut tally, &mut out),
            Flow::Continue
        );
        assert!(
            plain.is_lingering(),
            "failed: the close frame goes out, then it lingers"
        );
        assert_eq!(&out[2..4], &close_code::PROTOCOL_ERROR.to_be_bytes());
        let agreement = crate::deflate::negotiate(
            ["permessage-deflate"],
            crate::deflate::DeflateConfig {
                mode: crate::deflate::DeflateMode::Stateless,
                window_bits: 15,
            },
        );
        let mut session = Session::with_deflate(&POLICY, now, agreement);
        out.clear();
        // Invalid UTF-8 inside a compressed text message: 1007 once inflated.
        let mut bad = compressed_client_frame(&[0xFF, 0xFE]);
        assert_eq!(
            session.on_bytes(&mut bad, now, &POLICY, &mut tally, &mut out),
            Flow::Continue
        );
        assert!(
            session.is_lingering(),
            "failed: the close frame goes out, then it lingers"
        );
        assert_eq!(&out[2..4], &close_code::INVALID_PAYLOAD.to_be_bytes());
    }
}
