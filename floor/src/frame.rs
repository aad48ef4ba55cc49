//! RFC 6455 frames as the floor programs need them: [`encode`] (a server's unmasked frame
//! or a client's masked one) and [`FrameReader`], which turns a server's byte stream into
//! frames whatever the reads' boundaries are. A connection's reader holds nothing between
//! reads unless a read ended inside a frame; then it keeps that frame's bytes so far, and
//! frees them once the frame is whole.

/// Opcodes the programs send or tell apart.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The largest frame a reader accepts: far above any push the benchmark sends, and a
/// bound on what one connection's reader can hold.
pub const MAX_FRAME_LEN: u64 = 1 << 20;

/// One whole frame, its payload unmasked (a server does not mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
}

/// A byte stream that is not a server's WebSocket frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV bits set: no extension was negotiated.
    Reserved,
    /// A server frame must not be masked.
    Masked,
    /// Longer than [`MAX_FRAME_LEN`].
    TooLong(u64),
    /// A control frame fragmented or longer than 125 bytes.
    BadControl,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Reserved => write!(f, "a frame with RSV bits set"),
            FrameError::Masked => write!(f, "a masked frame from the server"),
            FrameError::TooLong(len) => write!(f, "a frame of {len} bytes (at most {MAX_FRAME_LEN})"),
            FrameError::BadControl => write!(f, "a fragmented or oversized control frame"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends one frame with FIN set: unmasked (`mask` None, as a server sends) or masked
/// with `mask` (as a client must).
pub fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        None => out.extend_from_slice(payload),
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(at, byte)| byte ^ mask[at % 4]));
        }
    }
}

/// The frame at the start of `bytes` and its length in bytes, None if `bytes` ends
/// inside it.
fn parse(bytes: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let [first, second, ..] = *bytes else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    if second & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (fin, opcode) = (first & 0x80 != 0, first & 0x0F);
    let (header_len, payload_len) = match second & 0x7F {
        126 => match bytes.get(2..4) {
            Some(len) => (4, u64::from(u16::from_be_bytes(len.try_into().expect("2 bytes")))),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(len) => (10, u64::from_be_bytes(len.try_into().expect("8 bytes"))),
            None => return Ok(None),
        },
        len => (2, u64::from(len)),
    };
    if payload_len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(payload_len));
    }
    if opcode >= opcode::CLOSE && (!fin || payload_len > 125) {
        return Err(FrameError::BadControl);
    }
    let frame_len = header_len + payload_len as usize;
    Ok(bytes
        .get(header_len..frame_len)
        .map(|payload| (Frame { fin, opcode, payload }, frame_len)))
}

/// Every whole frame in `bytes`, in order; returns how many bytes they took.
fn parse_all(bytes: &[u8], on_frame: &mut impl FnMut(Frame<'_>)) -> Result<usize, FrameError> {
    let mut used = 0;
    while let Some((frame, len)) = parse(&bytes[used..])? {
        on_frame(frame);
        used += len;
    }
    Ok(used)
}

/// A server's frames, read by one connection: feed it each read's bytes as they come.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// The start of a frame a read ended inside; empty (no allocation) otherwise.
    unfinished: Vec<u8>,
}

impl FrameReader {
    /// Calls `on_frame` for every frame `bytes` completes, in order, and keeps the start of
    /// an unfinished one for the next read. After an error the stream is no longer framed:
    /// drop the connection.
    pub fn feed(&mut self, bytes: &[u8], mut on_frame: impl FnMut(Frame<'_>)) -> Result<(), FrameError> {
        if self.unfinished.is_empty() {
            let used = parse_all(bytes, &mut on_frame)?;
            self.unfinished.extend_from_slice(&bytes[used..]);
        } else {
            let mut unfinished = std::mem::take(&mut self.unfinished);
            unfinished.extend_from_slice(bytes);
            let used = parse_all(&unfinished, &mut on_frame)?;
            if used < unfinished.len() {
                unfinished.drain(..used);
                self.unfinished = unfinished;
            }
        }
        Ok(())
    }

    /// Bytes held for an unfinished frame (capacity counted).
    pub fn held_bytes(&self) -> usize {
        self.unfinished.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a test compares it: opcode, FIN, payload.
    type Seen = (u8, bool, Vec<u8>);

    /// What a reader saw.
    fn frames_of(reader: &mut FrameReader, reads: &[&[u8]]) -> Result<Vec<Seen>, FrameError> {
        let mut frames = Vec::new();
        for read in reads {
            reader.feed(read, |frame| {
                frames.push((frame.opcode, frame.fin, frame.payload.to_vec()))
            })?;
        }
        Ok(frames)
    }

    /// A stream with every header length: a 32-byte push, a ping, a 300-byte (16-bit
    /// length) binary frame, with `long` a 70,000-byte one (64-bit length), an empty text
    /// frame, a close.
    fn stream(long: bool) -> (Vec<u8>, Vec<Seen>) {
        let push = wsscale_wire::push::encode(
            wsscale_wire::push::Push {
                seq: 7,
                sent_unix_nanos: 1_700_000_000_000_000_000,
            },
            32,
        );
        let mut frames = vec![
            (opcode::BINARY, true, push),
            (opcode::PING, true, b"12345678".to_vec()),
            (opcode::BINARY, true, (0..300).map(|i| i as u8).collect()),
        ];
        if long {
            frames.push((opcode::BINARY, true, (0..70_000).map(|i| (i * 7) as u8).collect()));
        }
        frames.push((opcode::TEXT, true, Vec::new()));
        frames.push((opcode::CLOSE, true, 1001u16.to_be_bytes().to_vec()));
        let mut bytes = Vec::new();
        for (opcode, _, payload) in &frames {
            encode(&mut bytes, *opcode, payload, None);
        }
        (bytes, frames)
    }

    #[test]
    fn a_push_frame_is_34_bytes_as_wsscale_sends_it() {
        let mut frame = Vec::new();
        encode(&mut frame, opcode::BINARY, &[0; 32], None);
        assert_eq!(frame.len(), 34);
        assert_eq!(frame[..2], [0x82, 32]);
    }

    #[test]
    fn every_split_of_a_stream_gives_the_same_frames() {
        let (bytes, expected) = stream(false);
        // Into two and three reads at every point.
        for at in 0..=bytes.len() {
            let mut reader = FrameReader::default();
            let frames = frames_of(&mut reader, &[&bytes[..at], &bytes[at..]]).unwrap();
            assert_eq!(frames, expected, "split at {at}");
            assert_eq!(reader.held_bytes(), 0, "nothing held once every frame is whole");
            for second in at..=bytes.len() {
                let reads = [&bytes[..at], &bytes[at..second], &bytes[second..]];
                assert_eq!(frames_of(&mut FrameReader::default(), &reads).unwrap(), expected);
            }
        }
        // With a 64-bit length too: one byte per read, and reads of a few odd sizes.
        let (bytes, expected) = stream(true);
        for size in [1, 3, 7, 33, 34, 35, 4096] {
            let reads: Vec<&[u8]> = bytes.chunks(size).collect();
            let mut reader = FrameReader::default();
            assert_eq!(frames_of(&mut reader, &reads).unwrap(), expected, "reads of {size}");
            assert_eq!(reader.held_bytes(), 0);
        }
    }

    #[test]
    fn a_read_that_ends_inside_a_frame_keeps_only_that_frame() {
        let (bytes, _) = stream(false);
        let mut reader = FrameReader::default();
        // The push (34 bytes) and 3 bytes of the ping.
        let frames = frames_of(&mut reader, &[&bytes[..37]]).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(reader.unfinished, bytes[34..37]);
    }

    #[test]
    fn what_a_server_must_not_send_is_refused() {
        let mut reader = FrameReader::default();
        assert_eq!(frames_of(&mut reader, &[&[0x82 | 0x40, 0]]), Err(FrameError::Reserved));
        let mut masked = Vec::new();
        encode(&mut masked, opcode::BINARY, b"abc", Some([1, 2, 3, 4]));
        assert_eq!(
            frames_of(&mut FrameReader::default(), &[&masked]),
            Err(FrameError::Masked)
        );
        let mut too_long = vec![0x82, 127];
        too_long.extend_from_slice(&(MAX_FRAME_LEN + 1).to_be_bytes());
        assert_eq!(
            frames_of(&mut FrameReader::default(), &[&too_long]),
            Err(FrameError::TooLong(MAX_FRAME_LEN + 1)),
            "refused on its header, before any payload is held"
        );
        assert_eq!(
            frames_of(&mut FrameReader::default(), &[&[opcode::PING, 0]]),
            Err(FrameError::BadControl),
            "a ping without FIN"
        );
        assert_eq!(
            frames_of(&mut FrameReader::default(), &[&[0x80 | opcode::PING, 126, 0, 126]]),
            Err(FrameError::BadControl),
            "a 126-byte ping"
        );
    }

    #[test]
    fn a_client_frame_is_masked_as_rfc_6455_says() {
        // RFC 6455 5.7: a masked "Hello" with key 37 fa 21 3d.
        let mut frame = Vec::new();
        encode(&mut frame, opcode::TEXT, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(
            frame,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        let mut unmasked = Vec::new();
        encode(&mut unmasked, opcode::TEXT, b"Hello", None);
        assert_eq!(unmasked, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    }
}
