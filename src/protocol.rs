//! The server side of RFC 6455 framing, without IO and without buffers of its own while
//! idle: [`Decoder`] turns received bytes into [`Frame`]s (unmasking in place), and
//! [`encode`] writes server frames. Both are driven by [`crate::session`].
//!
//! The decoder judges every byte as it arrives, so a peer can never make it hold what it
//! will refuse:
//!
//! - A frame header is checked byte by byte. Everything its first byte decides (reserved
//!   bits, reserved opcodes, a fragmented control frame, a continuation without a message,
//!   a new message inside a fragmented one) fails the connection on that byte; the mask
//!   bit on the second; the length (a control frame over 125 bytes, a close frame of one
//!   byte, a frame or message over `max_message_size`) as soon as it is whole. The mask key
//!   decides nothing.
//! - A data frame's payload goes straight into the message being assembled, unmasked and,
//!   for text, checked as UTF-8 as it arrives: an invalid sequence fails the connection
//!   with 1007 on the read that brings it, even in the middle of a frame (RFC 6455 §8.1,
//!   "fail fast"). Only the start of an unfinished code point (at most 3 bytes) waits for
//!   the next read.
//! - A control frame (at most 139 bytes) is held whole until it has arrived, then judged:
//!   a close frame's code before its reason, as they come on the wire.
//!
//! So the close code of a frame that breaks several rules is the code of the rule its
//! earliest byte breaks, and within one byte a rule about the frame's shape (1002) comes
//! before its size (1009). `tests/fuzz.rs` lists where tungstenite answers differently.
//!
//! What a decoder holds for its peer ([`Decoder::held_bytes`], counting capacity) is at
//! most `max_message_size` + [`MAX_CONTROL_FRAME_LEN`]: the message being assembled (its
//! capacity never grows past `max_message_size`, nor past the end of its final frame)
//! plus either the unfinished header of the next frame (at most [`MAX_HEADER_LEN`]) or an
//! unfinished control frame, which may arrive between the fragments of a message at its
//! limit. The bound is one control frame (139 bytes) over the limit rather than one header
//! (14) because a ping must be held whole to be answered with its payload; the unit tests
//! reach it exactly. An idle connection's decoder holds nothing: two empty fields, no
//! capacity.

/// Operation codes (RFC 6455 section 5.2).
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Close status codes this server sends.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// The longest frame header a client sends: 2 bytes, a 64-bit length, a 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;
/// The longest control frame a client sends: 125 bytes of payload after a header of up to
/// 14 bytes (the length may be written in 2 or 8 bytes where 1 would do; we accept that,
/// like tungstenite). It is the only kind of frame the decoder holds whole while it
/// arrives.
pub const MAX_CONTROL_FRAME_LEN: usize = MAX_HEADER_LEN + 125;

/// The most bytes a [`Decoder`] holds for its peer ([`Decoder::held_bytes`]) with this
/// message limit: a whole message and one unfinished control frame.
pub const fn max_held_bytes(max_message_size: usize) -> usize {
    max_message_size.saturating_add(MAX_CONTROL_FRAME_LEN)
}

/// A peer's violation of the protocol, with the close code RFC 6455 names for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

impl Violation {
    pub const fn protocol(reason: &'static str) -> Self {
        Violation {
            code: close_code::PROTOCOL_ERROR,
            reason,
        }
    }

    pub const fn invalid_utf8(reason: &'static str) -> Self {
        Violation {
            code: close_code::INVALID_PAYLOAD,
            reason,
        }
    }

    pub const fn too_big() -> Self {
        Violation {
            code: close_code::MESSAGE_TOO_BIG,
            reason: "message too big",
        }
    }
}

/// What a peer sent, in order. Payloads are unmasked and borrowed from the read buffer
/// (or from the decoder, for a message that took more than one read).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete text (valid UTF-8) or binary message; a `compressed` one (RSV1, with
    /// permessage-deflate negotiated) is delivered as received, for the caller to inflate
    /// and, for text, to check as UTF-8.
    Message {
        text: bool,
        payload: &'a [u8],
        compressed: bool,
    },
    Ping(&'a [u8]),
    Pong,
    /// A valid close frame: the peer's code, if it sent one.
    Close(Option<u16>),
}

/// The receive side of one connection.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The start of a frame that has not fully arrived: a header (fewer than
    /// [`MAX_HEADER_LEN`] bytes), or a control frame (fewer than [`MAX_CONTROL_FRAME_LEN`]).
    /// Empty, with no allocation, otherwise: a data frame's payload goes to `message`.
    partial: Vec<u8>,
    /// A text or binary message in progress: fragmented, or a frame whose payload is
    /// still arriving. `None` (8 bytes) otherwise; boxed so that an idle connection pays
    /// for none of it.
    message: Option<Box<MessageInProgress>>,
}

/// A message being assembled, and where its current frame is.
#[derive(Debug)]
struct MessageInProgress {
    text: bool,
    /// Its first frame had RSV1 (permessage-deflate): the payload is compressed, so its
    /// UTF-8 is checked only once inflated, by the caller.
    compressed: bool,
    /// The payload so far, unmasked. Grows by doubling as bytes arrive, never past
    /// `capacity_limit`.
    payload: Vec<u8>,
    /// `payload[..utf8_valid_len]` is valid UTF-8 (text only); the rest, at most 3 bytes,
    /// is the start of a code point that the next bytes must finish.
    utf8_valid_len: usize,
    /// Payload bytes of the current frame still to arrive; 0 between frames.
    frame_remaining: usize,
    /// The current frame's mask key, rotated so that `frame_mask[0]` unmasks the next byte.
    frame_mask: [u8; 4],
    /// Whether the current frame ends the message.
    frame_fin: bool,
    /// The most `payload` may ever need: the message's end once its final frame has
    /// started, `max_message_size` before.
    capacity_limit: usize,
}

/// A frame header that has fully arrived and broken no rule.
struct Header {
    fin: bool,
    /// RSV1 on a text or binary frame, with an extension that allows it.
    compressed: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

impl Header {
    fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// How far one step of [`Decoder::feed`] went.
struct Step {
    consumed: usize,
    /// False once `on_frame` asked to stop.
    go_on: bool,
}

impl Decoder {
    /// True when nothing is held between reads.
    pub fn is_idle(&self) -> bool {
        self.partial.capacity() == 0 && self.message.is_none()
    }

    /// Bytes held for the peer between reads, counting capacity: the unfinished frame's
    /// bytes and the message being assembled. At most [`max_held_bytes`]; a message in
    /// progress adds its bookkeeping, a fixed 56-byte box, to that.
    pub fn held_bytes(&self) -> usize {
        self.partial.capacity() + self.message.as_ref().map_or(0, |message| message.payload.capacity())
    }

    /// Decodes every complete frame in what was held plus `input`, calling `on_frame` for
    /// each; keeps what an unfinished frame needs for the next call. `on_frame` returns
    /// false to stop (the connection is closing): the rest of `input` is ignored. A
    /// violation stops decoding for good; feed nothing after either.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        max_message_size: usize,
        on_frame: impl FnMut(Frame<'_>) -> bool,
    ) -> Result<(), Violation> {
        self.feed_with(input, max_message_size, false, on_frame)
    }

    /// [`Decoder::feed`] on a connection that negotiated permessage-deflate
    /// (`compression`): RSV1 on the first frame of a text or binary message marks it
    /// compressed; on a control or continuation frame it still fails the connection.
    pub fn feed_with(
        &mut self,
        input: &mut [u8],
        max_message_size: usize,
        compression: bool,
        mut on_frame: impl FnMut(Frame<'_>) -> bool,
    ) -> Result<(), Violation> {
        let mut at = 0;
        while at < input.len() {
            let rest = &mut input[at..];
            let step = if self.message.as_ref().is_some_and(|message| message.frame_remaining > 0) {
                self.payload_bytes(rest, &mut on_frame)?
            } else if self.partial.is_empty() {
                self.frame_from_input(rest, max_message_size, compression, &mut on_frame)?
            } else {
                self.frame_from_partial(rest, max_message_size, compression, &mut on_frame)?
            };
            debug_assert!(step.consumed > 0, "every step consumes input");
            at += step.consumed;
            if !step.go_on {
                break;
            }
        }
        Ok(())
    }

    /// The payload held of a fragmented message in progress (between its frames).
    fn fragmented_len(&self) -> Option<usize> {
        self.message.as_ref().map(|message| message.payload.len())
    }

    /// More payload of the data frame in progress.
    fn payload_bytes(
        &mut self,
        input: &mut [u8],
        on_frame: &mut impl FnMut(Frame<'_>) -> bool,
    ) -> Result<Step, Violation> {
        let message = self.message.as_mut().expect("a data frame in progress");
        let consumed = message.frame_remaining.min(input.len());
        message.append(&mut input[..consumed])?;
        let go_on = if message.frame_remaining == 0 {
            self.end_data_frame(on_frame)?
        } else {
            true
        };
        Ok(Step { consumed, go_on })
    }

    /// A frame that starts in `input`, with nothing held.
    fn frame_from_input(
        &mut self,
        input: &mut [u8],
        max_message_size: usize,
        compression: bool,
        on_frame: &mut impl FnMut(Frame<'_>) -> bool,
    ) -> Result<Step, Violation> {
        let Some(header) = check_header(input, self.fragmented_len(), max_message_size, compression)? else {
            // Fewer than MAX_HEADER_LEN bytes, none breaking a rule: keep them.
            self.partial.reserve_exact(MAX_HEADER_LEN);
            self.partial.extend_from_slice(input);
            return Ok(Step {
                consumed: input.len(),
                go_on: true,
            });
        };
        let frame_len = header.header_len + header.payload_len;
        if header.is_control() {
            if input.len() < frame_len {
                self.partial.reserve_exact(frame_len);
                self.partial.extend_from_slice(input);
                return Ok(Step {
                    consumed: input.len(),
                    go_on: true,
                });
            }
            let payload = &mut input[header.header_len..frame_len];
            unmask(payload, header.mask);
            let go_on = control_frame(header.opcode, payload, on_frame)?;
            return Ok(Step {
                consumed: frame_len,
                go_on,
            });
        }
        if header.fin && self.message.is_none() && input.len() >= frame_len {
            // A whole message in one frame, all in this read: delivered from the read buffer.
            let payload = &mut input[header.header_len..frame_len];
            unmask(payload, header.mask);
            let text = header.opcode == opcode::TEXT;
            if text && !header.compressed {
                check_whole_text(payload)?;
            }
            return Ok(Step {
                consumed: frame_len,
                go_on: on_frame(Frame::Message {
                    text,
                    payload,
                    compressed: header.compressed,
                }),
            });
        }
        let go_on = self.begin_data_frame(&header, max_message_size, on_frame)?;
        Ok(Step {
            consumed: header.header_len,
            go_on,
        })
    }

    /// A frame whose start is held: the rest of its header, or of its control frame.
    fn frame_from_partial(
        &mut self,
        input: &mut [u8],
        max_message_size: usize,
        compression: bool,
        on_frame: &mut impl FnMut(Frame<'_>) -> bool,
    ) -> Result<Step, Violation> {
        // The header may straddle what is held and this read: look at both together.
        let held = self.partial.len();
        let mut head = [0u8; MAX_HEADER_LEN];
        let head_from_partial = held.min(MAX_HEADER_LEN);
        head[..head_from_partial].copy_from_slice(&self.partial[..head_from_partial]);
        let head_from_input = (MAX_HEADER_LEN - head_from_partial).min(input.len());
        head[head_from_partial..head_from_partial + head_from_input].copy_from_slice(&input[..head_from_input]);
        let head = &head[..head_from_partial + head_from_input];
        let Some(header) = check_header(head, self.fragmented_len(), max_message_size, compression)? else {
            // Still short of a whole header, so all of `input` fits the capacity reserved.
            self.partial.extend_from_slice(input);
            return Ok(Step {
                consumed: input.len(),
                go_on: true,
            });
        };
        if !header.is_control() {
            // A data frame's header is never held whole: its payload goes to the message.
            let consumed = header.header_len - held;
            self.partial = Vec::new();
            let go_on = self.begin_data_frame(&header, max_message_size, on_frame)?;
            return Ok(Step { consumed, go_on });
        }
        let frame_len = header.header_len + header.payload_len;
        let consumed = (frame_len - held).min(input.len());
        self.partial.reserve_exact(frame_len - held);
        self.partial.extend_from_slice(&input[..consumed]);
        if self.partial.len() < frame_len {
            return Ok(Step { consumed, go_on: true });
        }
        let mut frame = std::mem::take(&mut self.partial);
        let payload = &mut frame[header.header_len..];
        unmask(payload, header.mask);
        let go_on = control_frame(header.opcode, payload, on_frame)?;
        Ok(Step { consumed, go_on })
    }

    /// A text, binary or continuation frame whose header has arrived: its payload will go
    /// into the message in progress.
    fn begin_data_frame(
        &mut self,
        header: &Header,
        max_message_size: usize,
        on_frame: &mut impl FnMut(Frame<'_>) -> bool,
    ) -> Result<bool, Violation> {
        // check_header let a continuation through only inside a message, and a new
        // message only outside one.
        let message = self.message.get_or_insert_with(|| {
            Box::new(MessageInProgress {
                text: header.opcode == opcode::TEXT,
                compressed: header.compressed,
                payload: Vec::new(),
                utf8_valid_len: 0,
                frame_remaining: 0,
                frame_mask: [0; 4],
                frame_fin: false,
                capacity_limit: 0,
            })
        });
        message.frame_remaining = header.payload_len;
        message.frame_mask = header.mask;
        message.frame_fin = header.fin;
        message.capacity_limit = if header.fin {
            message.payload.len() + header.payload_len
        } else {
            max_message_size
        };
        if header.payload_len == 0 {
            return self.end_data_frame(on_frame);
        }
        Ok(true)
    }

    /// The data frame in progress has all arrived: deliver the message if it was the last.
    fn end_data_frame(&mut self, on_frame: &mut impl FnMut(Frame<'_>) -> bool) -> Result<bool, Violation> {
        if !self.message.as_ref().is_some_and(|message| message.frame_fin) {
            return Ok(true);
        }
        let message = self.message.take().expect("checked above");
        if message.text && !message.compressed && message.utf8_valid_len != message.payload.len() {
            return Err(ENDS_INSIDE_A_CODE_POINT);
        }
        Ok(on_frame(Frame::Message {
            text: message.text,
            payload: &message.payload,
            compressed: message.compressed,
        }))
    }
}

impl MessageInProgress {
    /// Unmasks payload bytes of the current frame, checks them (text) and keeps them.
    fn append(&mut self, bytes: &mut [u8]) -> Result<(), Violation> {
        unmask(bytes, self.frame_mask);
        self.frame_mask.rotate_left(bytes.len() % 4);
        self.frame_remaining -= bytes.len();
        let needed = self.payload.len() + bytes.len();
        if needed > self.payload.capacity() {
            // Double, so that a message in many small reads or fragments is copied O(1)
            // times per byte; never past what the message can still need, so what is
            // held stays within max_message_size and grows only with what arrived.
            let doubled = self.payload.capacity().saturating_mul(2).min(self.capacity_limit);
            self.payload.reserve_exact(doubled.max(needed) - self.payload.len());
        }
        self.payload.extend_from_slice(bytes);
        if self.text && !self.compressed {
            // Only the unfinished code point (at most 3 bytes) is checked again.
            match std::str::from_utf8(&self.payload[self.utf8_valid_len..]) {
                Ok(_) => self.utf8_valid_len = self.payload.len(),
                Err(error) if error.error_len().is_none() => self.utf8_valid_len += error.valid_up_to(),
                Err(_) => return Err(INVALID_UTF8),
            }
        }
        Ok(())
    }
}

const INVALID_UTF8: Violation = Violation::invalid_utf8("invalid UTF-8");
const ENDS_INSIDE_A_CODE_POINT: Violation = Violation::invalid_utf8("text message ends inside a code point");

/// Checks a whole text message that arrived in one read, with the same verdicts (and
/// reasons, which go on the wire) as [`MessageInProgress::append`] gives it in pieces.
fn check_whole_text(payload: &[u8]) -> Result<(), Violation> {
    match std::str::from_utf8(payload) {
        Ok(_) => Ok(()),
        Err(error) if error.error_len().is_none() => Err(ENDS_INSIDE_A_CODE_POINT),
        Err(_) => Err(INVALID_UTF8),
    }
}

/// Checks a client frame header against every rule its bytes decide, in the order the
/// bytes arrive (see the module doc); `Ok(None)` while it has not fully arrived.
/// `fragmented_len` is the payload held of a fragmented message in progress, if any.
fn check_header(
    bytes: &[u8],
    fragmented_len: Option<usize>,
    max_message_size: usize,
    compression: bool,
) -> Result<Option<Header>, Violation> {
    let Some(&first) = bytes.first() else { return Ok(None) };
    let rsv1 = first & 0x40 != 0;
    if first & 0x30 != 0 || (rsv1 && !compression) {
        return Err(Violation::protocol("reserved bits set without an extension"));
    }
    let fin = first & 0x80 != 0;
    let opcode = first & 0x0F;
    if rsv1 {
        // RFC 7692 section 6: RSV1 marks a message's first frame only.
        match opcode {
            opcode::CONTINUATION => return Err(Violation::protocol("RSV1 on a continuation frame")),
            opcode::TEXT | opcode::BINARY => {}
            _ => return Err(Violation::protocol("RSV1 on a control frame")),
        }
    }
    match opcode {
        opcode::CONTINUATION if fragmented_len.is_none() => {
            return Err(Violation::protocol("continuation without a message"));
        }
        opcode::TEXT | opcode::BINARY if fragmented_len.is_some() => {
            return Err(Violation::protocol("new message inside a fragmented one"));
        }
        opcode::CLOSE | opcode::PING | opcode::PONG if !fin => {
            return Err(Violation::protocol("fragmented control frame"));
        }
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY | opcode::CLOSE | opcode::PING | opcode::PONG => {}
        _ => return Err(Violation::protocol("reserved opcode")),
    }
    let Some(&second) = bytes.get(1) else { return Ok(None) };
    if second & 0x80 == 0 {
        return Err(Violation::protocol("client frames must be masked"));
    }
    let (length, length_len) = match second & 0x7F {
        126 => match bytes.get(2..4) {
            Some(length) => (u64::from(u16::from_be_bytes([length[0], length[1]])), 2),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(length) => (u64::from_be_bytes(length.try_into().expect("8 bytes")), 8),
            None => return Ok(None),
        },
        length => (u64::from(length), 0),
    };
    // The length is judged by its value: like tungstenite, we accept a length written in
    // more bytes than it needs (RFC 6455 §5.2 asks senders for the shortest form).
    if opcode & 0x8 != 0 && length > 125 {
        return Err(Violation::protocol("control frame longer than 125 bytes"));
    }
    if opcode == opcode::CLOSE && length == 1 {
        return Err(Violation::protocol("close frame with a 1-byte payload"));
    }
    let message_len = match opcode {
        opcode::CONTINUATION => length.saturating_add(fragmented_len.unwrap_or(0) as u64),
        _ => length,
    };
    if message_len > max_message_size as u64 {
        return Err(Violation::too_big());
    }
    let mask_at = 2 + length_len;
    let Some(mask) = bytes.get(mask_at..mask_at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        compressed: rsv1,
        opcode,
        mask: mask.try_into().expect("4 bytes"),
        header_len: mask_at + 4,
        payload_len: length as usize,
    }))
}

/// A whole, unmasked control frame (check_header let only close, ping and pong through).
fn control_frame(opcode: u8, payload: &[u8], on_frame: &mut impl FnMut(Frame<'_>) -> bool) -> Result<bool, Violation> {
    Ok(match opcode {
        opcode::PING => on_frame(Frame::Ping(payload)),
        opcode::PONG => on_frame(Frame::Pong),
        _ => on_frame(Frame::Close(parse_close(payload)?)),
    })
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// A close frame's code, validated (RFC 6455 section 7.4), before its reason.
fn parse_close(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::protocol("close frame with a 1-byte payload")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            // 1012 (service restart), 1013 (try again later) and 1014 (bad gateway) are
            // registered at IANA and sent by servers and proxies; 1004-1006 and 1015 must
            // never be sent, 1016-2999 are unassigned.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(Violation::protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(Violation::invalid_utf8("invalid UTF-8 in close reason"));
            }
            Ok(Some(code))
        }
    }
}

/// Appends one unmasked server frame (FIN set) to `out`.
pub fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    encode_frame(out, 0x80 | opcode, payload);
}

/// Appends one unmasked server message whose payload is compressed (permessage-deflate:
/// RSV1 and FIN set).
pub fn encode_compressed(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    encode_frame(out, 0xC0 | opcode, payload);
}

fn encode_frame(out: &mut Vec<u8>, first_byte: u8, payload: &[u8]) {
    out.push(first_byte);
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason`.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode(out, opcode::CLOSE, &payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0xA1, 0xB2, 0xC3, 0xD4];
        let mut out = vec![first_byte];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
        out
    }

    /// Feeds `bytes` in chunks of `chunk`; returns what was decoded, as owned values.
    /// Asserts after every read that the decoder holds no more than the bound.
    fn decode_chunked(bytes: &[u8], chunk: usize, max: usize) -> (Vec<String>, Option<Violation>, Decoder) {
        let mut decoder = Decoder::default();
        let mut frames = Vec::new();
        for piece in bytes.chunks(chunk) {
            let mut piece = piece.to_vec();
            let result = decoder.feed(&mut piece, max, |frame| {
                frames.push(match frame {
                    Frame::Message { text, payload, .. } => {
                        format!("{}:{}", if text { "text" } else { "binary" }, payload.len())
                    }
                    Frame::Ping(payload) => format!("ping:{}", payload.len()),
                    Frame::Pong => "pong".to_owned(),
                    Frame::Close(code) => format!("close:{code:?}"),
                });
                true
            });
            assert!(
                decoder.held_bytes() <= max_held_bytes(max),
                "{} bytes held, limit {max}",
                decoder.held_bytes()
            );
            if let Err(violation) = result {
                return (frames, Some(violation), decoder);
            }
        }
        (frames, None, decoder)
    }

    /// The code of the violation `bytes` cause, the same for every way they are split.
    fn violation_code(bytes: &[u8], max: usize) -> Option<u16> {
        let (_, whole, _) = decode_chunked(bytes, bytes.len().max(1), max);
        for chunk in [1, 2, 3, 7] {
            let (_, split, _) = decode_chunked(bytes, chunk, max);
            assert_eq!(split, whole, "chunk {chunk}: {bytes:02x?}");
        }
        whole.map(|violation| violation.code)
    }

    #[test]
    fn decodes_whole_frames_and_frames_split_anywhere() {
        let mut bytes = client_frame(0x81, b"hello");
        bytes.extend(client_frame(0x82, &[9u8; 300]));
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x82, &[1u8; 70_000]));
        bytes.extend(client_frame(0x88, &[0x03, 0xE8]));
        for chunk in [1, 2, 3, 7, 100, 4096, bytes.len()] {
            let (frames, violation, decoder) = decode_chunked(&bytes, chunk, 1 << 20);
            assert_eq!(violation, None, "chunk {chunk}");
            assert_eq!(
                frames,
                ["text:5", "binary:300", "ping:1", "binary:70000", "close:Some(1000)"],
                "chunk {chunk}"
            );
            assert!(decoder.is_idle(), "nothing held after the last frame (chunk {chunk})");
        }
    }

    #[test]
    fn assembles_fragments_around_control_frames() {
        let mut bytes = client_frame(0x01, "héllo ".as_bytes());
        bytes.extend(client_frame(0x89, b""));
        bytes.extend(client_frame(0x00, b"wor"));
        bytes.extend(client_frame(0x80, b"ld"));
        let (frames, violation, decoder) = decode_chunked(&bytes, 5, 1024);
        assert_eq!(violation, None);
        assert_eq!(frames, ["ping:0", "text:12"]);
        assert!(decoder.is_idle());
    }

    #[test]
    fn violations_carry_their_close_codes() {
        let max = 1024;
        let cases: [(Vec<u8>, u16); 9] = [
            (client_frame(0x81, &[0xCE, 0xBA, 0xFF]), close_code::INVALID_PAYLOAD),
            (
                {
                    let mut unmasked = client_frame(0x81, b"x");
                    unmasked[1] &= 0x7F;
                    unmasked
                },
                close_code::PROTOCOL_ERROR,
            ),
            (client_frame(0xC1, b"rsv"), close_code::PROTOCOL_ERROR),
            (client_frame(0x83, b""), close_code::PROTOCOL_ERROR),
            (client_frame(0x09, b"fragmented ping"), close_code::PROTOCOL_ERROR),
            (client_frame(0x80, b"orphan continuation"), close_code::PROTOCOL_ERROR),
            (client_frame(0x82, &[0u8; 2000]), close_code::MESSAGE_TOO_BIG),
            (client_frame(0x88, &[0x03]), close_code::PROTOCOL_ERROR),
            (client_frame(0x88, &[0x03, 0xED]), close_code::PROTOCOL_ERROR), // 1005 is reserved
        ];
        for (bytes, code) in cases {
            assert_eq!(violation_code(&bytes, max), Some(code), "{bytes:02x?}");
        }
        // Fragments past the limit are refused before they are buffered.
        let mut bytes = client_frame(0x02, &[0u8; 1000]);
        bytes.extend(client_frame(0x80, &[0u8; 1000]));
        let (_, violation, _) = decode_chunked(&bytes, 1100, max);
        assert_eq!(violation.map(|v| v.code), Some(close_code::MESSAGE_TOO_BIG));
    }

    /// Issue #11, defect 1: UTF-8 was checked only when a fragmented message ended, so an
    /// invalid byte in a fragment followed by a close 1000 got a normal 1000 reply.
    #[test]
    fn invalid_utf8_in_a_text_fragment_fails_before_the_close_that_follows() {
        let mut bytes = client_frame(0x01, b"valid, then \xFF");
        bytes.extend(client_frame(0x88, &[0x03, 0xE8]));
        assert_eq!(violation_code(&bytes, 1024), Some(close_code::INVALID_PAYLOAD));
        let (frames, _, decoder) = decode_chunked(&bytes, bytes.len(), 1024);
        assert!(frames.is_empty(), "the close frame is never reached: {frames:?}");
        assert_eq!(decoder.held_bytes(), 13, "the fragment's payload, and no more");
    }

    /// Fail fast inside a frame too (Autobahn 6.4.3 and 6.4.4): the read that brings an
    /// invalid sequence fails the connection before the rest of its frame arrives.
    #[test]
    fn invalid_utf8_fails_on_the_read_that_brings_it() {
        let mut payload = b"fine so far".to_vec();
        payload.push(0xC0); // never valid in UTF-8
        payload.extend([b'x'; 200]);
        let frame = client_frame(0x81, &payload);
        let mut decoder = Decoder::default();
        let header_len = 8;
        let mut valid_part = frame[..header_len + 11].to_vec();
        assert_eq!(decoder.feed(&mut valid_part, 1024, |_| true), Ok(()));
        assert_eq!(decoder.held_bytes(), 11, "what arrived, and no more");
        let mut invalid_byte = frame[header_len + 11..header_len + 12].to_vec();
        let result = decoder.feed(&mut invalid_byte, 1024, |_| true);
        assert_eq!(result.map_err(|v| v.code), Err(close_code::INVALID_PAYLOAD));
    }

    /// The other side of failing fast: a code point may straddle fragments and reads, but
    /// a message may not end inside one.
    #[test]
    fn a_code_point_may_straddle_fragments_and_reads_but_not_end_a_message() {
        let text = "añ€😀".as_bytes(); // code points of 1, 2, 3 and 4 bytes
        for split in 1..text.len() {
            let mut bytes = client_frame(0x01, &text[..split]);
            bytes.extend(client_frame(0x80, &text[split..]));
            for chunk in [1, 2, 3, 9, bytes.len()] {
                let (frames, violation, decoder) = decode_chunked(&bytes, chunk, 1024);
                assert_eq!(violation, None, "split {split}, chunk {chunk}");
                assert_eq!(frames, ["text:10"], "split {split}, chunk {chunk}");
                assert!(decoder.is_idle());
            }
        }
        let unfinished = &text[..text.len() - 1];
        assert_eq!(
            violation_code(&client_frame(0x81, unfinished), 1024),
            Some(close_code::INVALID_PAYLOAD)
        );
        let mut fragmented = client_frame(0x01, &unfinished[..4]);
        fragmented.extend(client_frame(0x80, &unfinished[4..]));
        assert_eq!(violation_code(&fragmented, 1024), Some(close_code::INVALID_PAYLOAD));
    }

    /// Issue #11, defect 2: 1012 (service restart), 1013 (try again later) and 1014 (bad
    /// gateway) are registered close codes and were refused with 1002.
    #[test]
    fn registered_close_codes_1012_to_1014_are_accepted() {
        for code in [1012u16, 1013, 1014] {
            let (frames, violation, _) = decode_chunked(&client_frame(0x88, &code.to_be_bytes()), 3, 1024);
            assert_eq!(violation, None, "{code}");
            assert_eq!(frames, [format!("close:Some({code})")]);
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let close = client_frame(0x88, &code.to_be_bytes());
            assert_eq!(violation_code(&close, 1024), Some(close_code::PROTOCOL_ERROR), "{code}");
        }
    }

    /// Issue #11, defect 3: a reserved opcode was refused only after its whole payload had
    /// arrived (and been held). Its first byte decides.
    #[test]
    fn reserved_opcodes_are_refused_on_their_first_byte() {
        for op in (0x3..=0x7).chain(0xB..=0xF) {
            let mut decoder = Decoder::default();
            let result = decoder.feed(&mut [0x80 | op], 1 << 20, |_| true);
            assert_eq!(result.map_err(|v| v.code), Err(close_code::PROTOCOL_ERROR), "{op:#x}");
            assert_eq!(decoder.held_bytes(), 0);
            let mut decoder = Decoder::default();
            let mut start_of_a_big_frame = client_frame(0x80 | op, &[0; 60_000])[..1000].to_vec();
            let result = decoder.feed(&mut start_of_a_big_frame, 1 << 20, |_| true);
            assert_eq!(result.map_err(|v| v.code), Err(close_code::PROTOCOL_ERROR), "{op:#x}");
            assert_eq!(decoder.held_bytes(), 0);
        }
    }

    /// Issue #11, defect 4: a data frame inside an unfinished fragmented message was
    /// buffered before it was refused, up to about twice max_message_size.
    #[test]
    fn a_new_message_inside_a_fragmented_one_is_refused_before_its_payload() {
        let max = 1024;
        let mut decoder = Decoder::default();
        let mut fragment = client_frame(0x01, &[b'a'; 1000]);
        assert_eq!(decoder.feed(&mut fragment, max, |_| true), Ok(()));
        assert_eq!(decoder.held_bytes(), 1000);
        let mut half_a_new_message = client_frame(0x82, &[0; 1000])[..500].to_vec();
        let result = decoder.feed(&mut half_a_new_message, max, |_| true);
        assert_eq!(result.map_err(|v| v.code), Err(close_code::PROTOCOL_ERROR));
        assert_eq!(decoder.held_bytes(), 1000, "nothing of the refused frame is held");
    }

    /// Issue #11, defect 5: after a message the partial-frame buffer kept its capacity (the
    /// first byte of the next frame held in a 1,009-byte allocation).
    #[test]
    fn no_capacity_is_kept_after_a_message() {
        let mut bytes = client_frame(0x82, &[7; 1000]);
        let first_frame_len = bytes.len();
        bytes.extend(client_frame(0x81, b"next"));
        let mut decoder = Decoder::default();
        let mut messages = 0;
        for read in [&bytes[..500], &bytes[500..first_frame_len + 1]] {
            let mut read = read.to_vec();
            decoder
                .feed(&mut read, 4096, |_| {
                    messages += 1;
                    true
                })
                .unwrap();
        }
        assert_eq!(messages, 1);
        assert_eq!(
            decoder.held_bytes(),
            MAX_HEADER_LEN,
            "one header's room, for its first byte"
        );
        let mut rest = bytes[first_frame_len + 1..].to_vec();
        decoder.feed(&mut rest, 4096, |_| true).unwrap();
        assert!(decoder.is_idle());
    }

    /// One precedence for a frame that breaks several rules: its earliest byte decides, and
    /// within a byte its shape (1002) comes before its size (1009). tests/fuzz.rs lists
    /// where tungstenite answers otherwise.
    #[test]
    fn a_frame_breaking_two_rules_gets_the_code_of_its_earliest_byte() {
        let big = [b'a'; 2000];
        let mut unmasked_and_big = client_frame(0x82, &big);
        unmasked_and_big[1] &= 0x7F;
        let mut bad_code_and_bad_reason = 999u16.to_be_bytes().to_vec();
        bad_code_and_bad_reason.push(0xFF);
        let mut fragment_then_too_big = client_frame(0x01, &big[..600]);
        fragment_then_too_big.extend(client_frame(0x80, &[0xFF; 600]));
        let cases: [(&str, Vec<u8>, usize, u16); 9] = [
            ("reserved bits, too big", client_frame(0xC2, &big), 1024, 1002),
            ("unmasked, too big", unmasked_and_big, 1024, 1002),
            (
                "continuation without a message, too big",
                client_frame(0x80, &big),
                1024,
                1002,
            ),
            ("fragmented ping, too big", client_frame(0x09, &big[..100]), 64, 1002),
            (
                "ping over 125 bytes, too big",
                client_frame(0x89, &big[..200]),
                150,
                1002,
            ),
            (
                "invalid code, invalid reason",
                client_frame(0x88, &bad_code_and_bad_reason),
                1024,
                1002,
            ),
            ("too big, invalid UTF-8", client_frame(0x81, &[0xFF; 2000]), 1024, 1009),
            ("message too big, invalid UTF-8", fragment_then_too_big, 1024, 1009),
            ("reserved opcode, too big", client_frame(0x83, &big), 1024, 1002),
        ];
        for (situation, bytes, max, code) in cases {
            assert_eq!(violation_code(&bytes, max), Some(code), "{situation}");
        }
    }

    /// Everything a decoder holds, counting capacity, stays within max_message_size plus
    /// one control frame, and reaches it: a message at the limit in fragments, with a ping
    /// of 125 bytes before the last one, read in every size from 1 byte. The ping writes
    /// its length in 8 bytes, which the fuzz harness found to be legal and 8 bytes longer
    /// than the bound first allowed for.
    #[test]
    fn what_a_decoder_holds_stays_within_max_message_size_and_one_control_frame() {
        let max = 4096;
        let mut longest_ping = client_frame(0x89, &[5; 125]);
        longest_ping.splice(1..2, [0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 125]);
        assert_eq!(longest_ping.len(), MAX_CONTROL_FRAME_LEN);
        let mut bytes = client_frame(0x02, &[1; 1]);
        bytes.extend(client_frame(0x00, &[2; 7]));
        bytes.extend(client_frame(0x00, &[3; 300]));
        bytes.extend(client_frame(0x00, &[4; 4096 - 1 - 7 - 300 - 10]));
        bytes.extend(longest_ping);
        bytes.extend(client_frame(0x80, &[6; 10]));
        for chunk in [1, 5, 64, 4096, bytes.len()] {
            let (frames, violation, decoder) = decode_chunked(&bytes, chunk, max);
            assert_eq!(violation, None);
            assert_eq!(frames, ["ping:125", "binary:4096"]);
            assert!(decoder.is_idle());
        }
        let mut decoder = Decoder::default();
        let mut most_held = 0;
        for byte in &bytes {
            decoder.feed(&mut [*byte], max, |_| true).unwrap();
            most_held = most_held.max(decoder.held_bytes());
        }
        assert_eq!(
            most_held,
            max_held_bytes(max),
            "the bound is reached, not just respected"
        );
        // One frame at the limit, byte by byte: the message's capacity, and no more.
        let mut decoder = Decoder::default();
        let mut most_held = 0;
        for byte in &client_frame(0x82, &[0; 4096]) {
            decoder.feed(&mut [*byte], max, |_| true).unwrap();
            most_held = most_held.max(decoder.held_bytes());
        }
        assert_eq!(most_held, max);
    }

    /// A header announcing a large frame reserves nothing: what is held grows with what
    /// arrives (at most twice, by doubling), so a peer pays for what it makes us hold.
    #[test]
    fn what_a_decoder_holds_grows_with_what_arrived() {
        let max = 1 << 20;
        let frame = client_frame(0x82, &vec![9; max]);
        let header_len = 14;
        let mut decoder = Decoder::default();
        let mut arrived = 0;
        for read in [header_len, 1, 99, 900, 9000] {
            let mut input = frame[arrived..arrived + read].to_vec();
            decoder.feed(&mut input, max, |_| true).unwrap();
            arrived += read;
            let payload_arrived = arrived - header_len;
            assert!(
                decoder.held_bytes() <= 2 * payload_arrived,
                "{} bytes held after {payload_arrived} bytes of payload",
                decoder.held_bytes()
            );
        }
    }

    /// The module doc and held_bytes promise these sizes: an idle decoder is two empty
    /// fields, and a message in progress adds one box.
    #[test]
    fn a_message_in_progress_costs_one_small_box() {
        assert_eq!(std::mem::size_of::<Decoder>(), 32);
        assert_eq!(std::mem::size_of::<MessageInProgress>(), 56);
    }

    #[test]
    fn encodes_every_length_form() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let mut out = Vec::new();
            encode(&mut out, opcode::BINARY, &vec![7u8; len]);
            let header = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x82);
        }
        let mut out = Vec::new();
        encode_close(&mut out, close_code::GOING_AWAY, "bye");
        assert_eq!(out, [0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
    }

    #[test]
    fn rsv1_marks_only_a_messages_first_frame_and_only_with_the_extension() {
        let feed = |bytes: &[u8], compression: bool| {
            let mut decoder = Decoder::default();
            let mut input = bytes.to_vec();
            let mut messages = Vec::new();
            let result = decoder.feed_with(&mut input, 1024, compression, |frame| {
                if let Frame::Message { compressed, .. } = frame {
                    messages.push(compressed);
                }
                true
            });
            (result, messages)
        };
        assert_eq!(feed(&client_frame(0xC1, b"x"), true), (Ok(()), vec![true]));
        assert_eq!(feed(&client_frame(0x81, b"x"), true), (Ok(()), vec![false]));
        let refused = |bytes: &[u8], compression: bool| feed(bytes, compression).0.unwrap_err().code;
        assert_eq!(refused(&client_frame(0xC1, b"x"), false), close_code::PROTOCOL_ERROR);
        assert_eq!(
            refused(&client_frame(0xC9, b"x"), true),
            close_code::PROTOCOL_ERROR,
            "a ping"
        );
        let mut continuation = client_frame(0x41, b"x");
        continuation.extend(client_frame(0xC0, b"y"));
        assert_eq!(
            refused(&continuation, true),
            close_code::PROTOCOL_ERROR,
            "a continuation"
        );
        assert_eq!(
            refused(&client_frame(0xA1, b"x"), true),
            close_code::PROTOCOL_ERROR,
            "RSV2"
        );
        // A compressed text frame is not checked as UTF-8 here: it is not text yet.
        assert_eq!(feed(&client_frame(0xC1, &[0xFF]), true), (Ok(()), vec![true]));
    }
}
