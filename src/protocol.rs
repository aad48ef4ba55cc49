//! The server side of RFC 6455 framing, without IO and without buffers of its own while
//! idle: [`Decoder`] turns received bytes into [`Frame`]s (unmasking in place) and keeps
//! only the unfinished tail of a frame, and the unfinished fragments of a message, between
//! reads; [`encode`] writes server frames. Both are driven by [`crate::session`].
//!
//! An idle connection's decoder is two empty fields: no capacity is kept after a message,
//! large or small, so a connection costs nothing here between frames.

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

/// A peer's violation of the protocol, with the close code RFC 6455 names for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

impl Violation {
    const fn protocol(reason: &'static str) -> Self {
        Violation {
            code: close_code::PROTOCOL_ERROR,
            reason,
        }
    }
}

/// What a peer sent, in order. Payloads are unmasked and borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete text (valid UTF-8) or binary message.
    Message {
        text: bool,
        payload: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong,
    /// A valid close frame: the peer's code, if it sent one.
    Close(Option<u16>),
}

/// A message arriving in fragments.
#[derive(Debug)]
struct Fragments {
    text: bool,
    data: Vec<u8>,
}

/// The receive side of one connection.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes of a frame that has not fully arrived; empty (no allocation) between frames.
    partial: Vec<u8>,
    /// A fragmented message in progress; `None` (8 bytes) otherwise.
    fragments: Option<Box<Fragments>>,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

impl Decoder {
    /// True when nothing is held between reads.
    pub fn is_idle(&self) -> bool {
        self.partial.capacity() == 0 && self.fragments.is_none()
    }

    /// Decodes every complete frame in what was held plus `input`, calling `on_frame` for
    /// each; keeps an unfinished frame for the next call. `on_frame` returns false to stop
    /// (the connection is closing). A violation stops decoding for good.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        max_message_size: usize,
        mut on_frame: impl FnMut(Frame<'_>) -> bool,
    ) -> Result<(), Violation> {
        if self.partial.is_empty() {
            let consumed = self.decode(input, max_message_size, &mut on_frame)?;
            if consumed < input.len() {
                self.partial.extend_from_slice(&input[consumed..]);
            }
        } else {
            self.partial.extend_from_slice(input);
            let mut partial = std::mem::take(&mut self.partial);
            let consumed = self.decode(&mut partial, max_message_size, &mut on_frame)?;
            partial.drain(..consumed);
            if !partial.is_empty() {
                self.partial = partial;
            }
        }
        Ok(())
    }

    /// Decodes frames from the front of `buf`; returns the bytes consumed.
    fn decode(
        &mut self,
        buf: &mut [u8],
        max_message_size: usize,
        on_frame: &mut impl FnMut(Frame<'_>) -> bool,
    ) -> Result<usize, Violation> {
        let mut at = 0;
        while let Some(header) = parse_header(&buf[at..], max_message_size)? {
            let total = header.header_len + header.payload_len;
            if buf.len() - at < total {
                // Check what the header already tells before waiting for the payload.
                self.check_before_payload(&header, max_message_size)?;
                break;
            }
            let payload = &mut buf[at + header.header_len..at + total];
            unmask(payload, header.mask);
            at += total;
            if !self.frame(&header, payload, max_message_size, on_frame)? {
                break;
            }
        }
        Ok(at)
    }

    /// Checks that a frame still arriving can be accepted (its size, its place in the
    /// message), so a peer cannot make us buffer what we would refuse anyway.
    fn check_before_payload(&self, header: &Header, max_message_size: usize) -> Result<(), Violation> {
        if header.opcode == opcode::CONTINUATION {
            let held = self.fragments.as_ref().map_or(0, |fragments| fragments.data.len());
            if self.fragments.is_none() {
                return Err(Violation::protocol("continuation without a message"));
            }
            if held + header.payload_len > max_message_size {
                return Err(too_big());
            }
        }
        Ok(())
    }

    fn frame(
        &mut self,
        header: &Header,
        payload: &[u8],
        max_message_size: usize,
        on_frame: &mut impl FnMut(Frame<'_>) -> bool,
    ) -> Result<bool, Violation> {
        match header.opcode {
            opcode::PING => Ok(on_frame(Frame::Ping(payload))),
            opcode::PONG => Ok(on_frame(Frame::Pong)),
            opcode::CLOSE => Ok(on_frame(Frame::Close(parse_close(payload)?))),
            opcode::TEXT | opcode::BINARY => {
                if self.fragments.is_some() {
                    return Err(Violation::protocol("new message inside a fragmented one"));
                }
                let text = header.opcode == opcode::TEXT;
                if header.fin {
                    return deliver(text, payload, on_frame);
                }
                self.fragments = Some(Box::new(Fragments {
                    text,
                    data: payload.to_vec(),
                }));
                Ok(true)
            }
            opcode::CONTINUATION => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(Violation::protocol("continuation without a message"));
                };
                if fragments.data.len() + payload.len() > max_message_size {
                    return Err(too_big());
                }
                fragments.data.extend_from_slice(payload);
                if !header.fin {
                    return Ok(true);
                }
                let Fragments { text, data } = *self.fragments.take().expect("checked above");
                deliver(text, &data, on_frame)
            }
            _ => Err(Violation::protocol("reserved opcode")),
        }
    }
}

fn too_big() -> Violation {
    Violation {
        code: close_code::MESSAGE_TOO_BIG,
        reason: "message too big",
    }
}

fn deliver(text: bool, payload: &[u8], on_frame: &mut impl FnMut(Frame<'_>) -> bool) -> Result<bool, Violation> {
    if text && std::str::from_utf8(payload).is_err() {
        return Err(Violation {
            code: close_code::INVALID_PAYLOAD,
            reason: "invalid UTF-8",
        });
    }
    Ok(on_frame(Frame::Message { text, payload }))
}

/// Parses a client frame header; None until it has fully arrived.
fn parse_header(buf: &[u8], max_message_size: usize) -> Result<Option<Header>, Violation> {
    let [first, second, ..] = *buf else { return Ok(None) };
    if first & 0x70 != 0 {
        return Err(Violation::protocol("reserved bits set without an extension"));
    }
    let fin = first & 0x80 != 0;
    let opcode = first & 0x0F;
    if second & 0x80 == 0 {
        return Err(Violation::protocol("client frames must be masked"));
    }
    let (length, length_len) = match second & 0x7F {
        126 => match buf.get(2..4) {
            Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(bytes) => (u64::from_be_bytes(bytes.try_into().expect("8 bytes")), 8),
            None => return Ok(None),
        },
        length => (u64::from(length), 0),
    };
    let is_control = opcode & 0x8 != 0;
    if is_control && (!fin || length > 125) {
        return Err(Violation::protocol("fragmented or oversized control frame"));
    }
    if length > max_message_size as u64 {
        return Err(too_big());
    }
    let mask_at = 2 + length_len;
    let Some(mask) = buf.get(mask_at..mask_at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: mask.try_into().expect("4 bytes"),
        header_len: mask_at + 4,
        payload_len: length as usize,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// A close frame's code, validated (RFC 6455 section 7.4).
fn parse_close(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::protocol("close frame with a 1-byte payload")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(Violation::protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(Violation {
                    code: close_code::INVALID_PAYLOAD,
                    reason: "invalid UTF-8 in close reason",
                });
            }
            Ok(Some(code))
        }
    }
}

/// Appends one unmasked server frame (FIN set) to `out`.
pub fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
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
    fn decode_chunked(bytes: &[u8], chunk: usize, max: usize) -> (Vec<String>, Option<Violation>, Decoder) {
        let mut decoder = Decoder::default();
        let mut frames = Vec::new();
        for piece in bytes.chunks(chunk) {
            let mut piece = piece.to_vec();
            let result = decoder.feed(&mut piece, max, |frame| {
                frames.push(match frame {
                    Frame::Message { text, payload } => {
                        format!("{}:{}", if text { "text" } else { "binary" }, payload.len())
                    }
                    Frame::Ping(payload) => format!("ping:{}", payload.len()),
                    Frame::Pong => "pong".to_owned(),
                    Frame::Close(code) => format!("close:{code:?}"),
                });
                true
            });
            if let Err(violation) = result {
                return (frames, Some(violation), decoder);
            }
        }
        (frames, None, decoder)
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
            let (_, violation, _) = decode_chunked(&bytes, 3, max);
            assert_eq!(violation.map(|v| v.code), Some(code), "{bytes:02x?}");
        }
        // Fragments past the limit are refused before they are buffered.
        let mut bytes = client_frame(0x02, &[0u8; 1000]);
        bytes.extend(client_frame(0x80, &[0u8; 1000]));
        let (_, violation, _) = decode_chunked(&bytes, 1100, max);
        assert_eq!(violation.map(|v| v.code), Some(close_code::MESSAGE_TOO_BIG));
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
}
