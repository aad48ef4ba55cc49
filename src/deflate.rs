//! permessage-deflate (RFC 7692) for the lean engine, without IO: which offer to accept
//! and what to answer ([`negotiate`], [`Agreement::response`]), and compressing and
//! inflating one message at a time ([`Deflate`]).
//!
//! Two ways to hold the compression state, chosen by `--deflate`:
//!
//! - **stateless**: the answer asks for `server_no_context_takeover` and
//!   `client_no_context_takeover` (RFC 7692 §7.1.1.2 lets the server ask), so every message
//!   is compressed and inflated on its own. The deflate and inflate streams exist only
//!   while a message is being handled: they are taken from a process-wide pool and given
//!   back, reset, right after, and the pool keeps at most a few. An idle
//!   connection holds nothing of compression but its [`Agreement`] (4 bytes).
//! - **context**: each connection keeps its own streams, with the window the negotiation
//!   gave (`--deflate-window-bits` at most), from its first compressed message on: what
//!   most servers that accept the extension do, and what it costs.
//!
//! Window bits: zlib cannot deflate with a window of 8 (it raises it to 9, which a peer
//! that asked for 8 could not inflate), and flate2 panics on bits outside 9..=15, so an
//! offer of `server_max_window_bits=8` is declined; 8 is never passed to flate2. A
//! client's own window (`client_max_window_bits`) only bounds what we inflate, which a
//! larger window always can.
//!
//! A message inflates into at most `max_message_size` bytes: a longer one fails with 1009
//! having inflated no more than the limit, so a small compressed message (a deflate bomb)
//! costs no more than a plain one of the limit's size.

use std::sync::Mutex;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::protocol::Violation;

/// `--deflate`: whether the lean engine accepts permessage-deflate, and how it holds the
/// compression state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeflateMode {
    /// Decline every offer.
    #[default]
    Off,
    /// Accept, asking for no context takeover both ways: nothing held between messages.
    Stateless,
    /// Accept, with per-connection windows of at most the configured bits.
    Context,
}

impl DeflateMode {
    pub const ALL: [DeflateMode; 3] = [DeflateMode::Off, DeflateMode::Stateless, DeflateMode::Context];

    pub fn as_str(self) -> &'static str {
        match self {
            DeflateMode::Off => "off",
            DeflateMode::Stateless => "stateless",
            DeflateMode::Context => "context",
        }
    }
}

/// The server's deflate settings: `--deflate` and `--deflate-window-bits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    pub mode: DeflateMode,
    /// 9..=15; the most either window may be in `context` mode.
    pub window_bits: u8,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            mode: DeflateMode::Off,
            window_bits: 15,
        }
    }
}

/// The window sizes flate2 (and zlib) can use.
pub const WINDOW_BITS: std::ops::RangeInclusive<u8> = 9..=15;

/// What was agreed for one connection: the parameters of the accepted offer as the
/// response states them, and the windows each side will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// We start every message with an empty window (and say so).
    pub server_no_context_takeover: bool,
    /// The client starts every message with an empty window (we asked, or it offered).
    pub client_no_context_takeover: bool,
    /// The window we deflate with; `Some` in the response only when the client offered
    /// `server_max_window_bits` (RFC 7692 §7.1.2.1).
    pub server_window_bits: u8,
    pub answer_server_window_bits: bool,
    /// The window we inflate with; stated in the response only when the client offered
    /// `client_max_window_bits` (§7.1.2.2) and we limit it.
    pub client_window_bits: u8,
    pub answer_client_window_bits: bool,
    /// The streams are kept per connection (`context`), not pooled per message.
    pub keeps_context: bool,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value of the 101.
    pub fn response(&self) -> String {
        let mut out = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if self.answer_server_window_bits {
            out.push_str(&format!("; server_max_window_bits={}", self.server_window_bits));
        }
        if self.answer_client_window_bits {
            out.push_str(&format!("; client_max_window_bits={}", self.client_window_bits));
        }
        out
    }
}

/// One permessage-deflate offer's parameters, each at most once.
#[derive(Debug, Default, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value (the client accepts any limit).
    client_max_window_bits: Option<Option<u8>>,
}

/// The first offer of `Sec-WebSocket-Extensions` (every occurrence, in order) that the
/// engine supports, and what it agrees to; `None` declines (mode off, no
/// permessage-deflate offer, or only offers that are malformed, carry an unknown or
/// duplicated parameter, or ask for a server window of 8).
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>, config: DeflateConfig) -> Option<Agreement> {
    if config.mode == DeflateMode::Off {
        return None;
    }
    header_values
        .into_iter()
        .flat_map(|value| value.split(','))
        .filter_map(parse_offer)
        .find_map(|offer| agree(&offer, config))
}

/// One comma-separated element: `None` unless it is a well-formed permessage-deflate
/// offer.
fn parse_offer(element: &str) -> Option<Offer> {
    let mut parts = element.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut offer = Offer::default();
    for parameter in parts {
        let (name, value) = match parameter.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (parameter, None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) if !offer.server_no_context_takeover => {
                offer.server_no_context_takeover = true;
            }
            ("client_no_context_takeover", None) if !offer.client_no_context_takeover => {
                offer.client_no_context_takeover = true;
            }
            ("server_max_window_bits", Some(value)) if offer.server_max_window_bits.is_none() => {
                offer.server_max_window_bits = Some(window_bits(value)?);
            }
            ("client_max_window_bits", value) if offer.client_max_window_bits.is_none() => {
                offer.client_max_window_bits = Some(match value {
                    Some(value) => Some(window_bits(value)?),
                    None => None,
                });
            }
            // Unknown, duplicated, or a value where none belongs (or none where one must).
            _ => return None,
        }
    }
    Some(offer)
}

/// A parameter value, without the quotes RFC 7692 §7.1 allows around it.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(value),
    }
}

/// A window size as RFC 7692 writes it: 8 to 15, decimal, no leading zero.
fn window_bits(value: &str) -> Option<u8> {
    let bits: u8 = value.parse().ok()?;
    ((8..=15).contains(&bits) && !value.starts_with('0')).then_some(bits)
}

fn agree(offer: &Offer, config: DeflateConfig) -> Option<Agreement> {
    // We cannot deflate with a window of 8.
    if offer.server_max_window_bits == Some(8) {
        return None;
    }
    let limit = config.window_bits.clamp(*WINDOW_BITS.start(), *WINDOW_BITS.end());
    Some(match config.mode {
        DeflateMode::Off => return None,
        DeflateMode::Stateless => Agreement {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_window_bits: offer.server_max_window_bits.unwrap_or(15),
            answer_server_window_bits: offer.server_max_window_bits.is_some(),
            // Every message starts empty and is inflated with the largest window, which
            // inflates whatever window the client used.
            client_window_bits: 15,
            answer_client_window_bits: false,
            keeps_context: false,
        },
        DeflateMode::Context => {
            let server_window_bits = offer.server_max_window_bits.unwrap_or(15).min(limit);
            // Only a client that offered client_max_window_bits may be told a limit; one
            // that asked for 8 keeps its 8, which our window (9 or more) inflates.
            let (client_window_bits, answer_client_window_bits) = match offer.client_max_window_bits {
                Some(Some(8)) => (limit, false),
                Some(Some(bits)) => (bits.min(limit), true),
                Some(None) => (limit, true),
                None => (15, false),
            };
            Agreement {
                server_no_context_takeover: offer.server_no_context_takeover,
                client_no_context_takeover: offer.client_no_context_takeover,
                server_window_bits,
                answer_server_window_bits: offer.server_max_window_bits.is_some(),
                client_window_bits,
                answer_client_window_bits,
                keeps_context: true,
            }
        }
    })
}

/// The tail every compressed message loses on the wire and regains before inflating
/// (RFC 7692 §7.2.1 and §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// One connection's compression: its agreement and, in `context` mode, its streams
/// (boxed, made on the first message that needs them).
#[derive(Debug)]
pub struct Deflate {
    agreement: Agreement,
    streams: Option<Box<Streams>>,
}

#[derive(Default)]
struct Streams {
    compress: Option<Compress>,
    decompress: Option<Decompress>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("compress", &self.compress.is_some())
            .field("decompress", &self.decompress.is_some())
            .finish()
    }
}

impl Deflate {
    pub fn new(agreement: Agreement) -> Self {
        Deflate {
            agreement,
            streams: None,
        }
    }

    pub fn agreement(&self) -> &Agreement {
        &self.agreement
    }

    /// True when nothing of compression is held but the agreement.
    pub fn holds_no_stream(&self) -> bool {
        self.streams.is_none()
    }

    /// Inflates one compressed message (its payload as received, without the tail) into
    /// `out`, failing with 1009 before `out` passes `max_message_size` and with 1007 on
    /// data that is not a valid deflate stream.
    pub fn inflate(&mut self, compressed: &[u8], max_message_size: usize, out: &mut Vec<u8>) -> Result<(), Violation> {
        let bits = self.agreement.client_window_bits;
        let reset = self.agreement.client_no_context_takeover;
        if self.agreement.keeps_context {
            let streams = self.streams.get_or_insert_with(Box::default);
            let stream = streams
                .decompress
                .get_or_insert_with(|| Decompress::new_with_window_bits(false, bits));
            let result = inflate_with(stream, compressed, max_message_size, out);
            // After a final block the stream takes no more input: the next message
            // starts a new one.
            if reset || !matches!(result, Ok(Ended::No)) {
                stream.reset(false);
            }
            result.map(drop)
        } else {
            let mut stream = INFLATERS.take(bits, || Decompress::new_with_window_bits(false, bits));
            let result = inflate_with(&mut stream, compressed, max_message_size, out);
            stream.reset(false);
            INFLATERS.give_back(bits, stream);
            result.map(drop)
        }
    }

    /// Compresses one message's payload into `out` as it goes on the wire (without the
    /// tail).
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let bits = self.agreement.server_window_bits;
        let reset = self.agreement.server_no_context_takeover;
        if self.agreement.keeps_context {
            let streams = self.streams.get_or_insert_with(Box::default);
            let stream = streams.compress.get_or_insert_with(|| new_compress(bits));
            compress_with(stream, payload, out);
            if reset {
                stream.reset();
            }
        } else {
            let mut stream = COMPRESSORS.take(bits, || new_compress(bits));
            compress_with(&mut stream, payload, out);
            stream.reset();
            COMPRESSORS.give_back(bits, stream);
        }
    }
}

/// One message compressed on its own (no context before or after it) with a window of
/// `bits`, as it goes on the wire (without the tail): what every connection that agreed
/// to `server_no_context_takeover` with that window can take, so a broadcast is compressed
/// once for all of them.
pub fn compress_alone(bits: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = COMPRESSORS.take(bits, || new_compress(bits));
    compress_with(&mut stream, payload, &mut out);
    stream.reset();
    COMPRESSORS.give_back(bits, stream);
    out
}

fn new_compress(bits: u8) -> Compress {
    Compress::new_with_window_bits(Compression::default(), false, bits)
}

/// Whether a message ended its deflate stream with a final block.
enum Ended {
    No,
    Yes,
}

fn inflate_with(
    stream: &mut Decompress,
    compressed: &[u8],
    max_message_size: usize,
    out: &mut Vec<u8>,
) -> Result<Ended, Violation> {
    let invalid = || Violation::invalid_utf8("invalid compressed data");
    let start_in = stream.total_in();
    let whole = compressed.len() + TAIL.len();
    loop {
        // The message, then its tail: fed in turn, never copied together.
        let fed = (stream.total_in() - start_in) as usize;
        let input = if fed < compressed.len() {
            &compressed[fed..]
        } else {
            &TAIL[fed - compressed.len()..]
        };
        if out.len() == out.capacity() {
            // Grow by doubling, never past one byte over the limit: that byte is how a
            // message that would pass it is told from one that ends on it.
            let wanted = (out.len().max(256) * 2).min(max_message_size + 1);
            out.reserve_exact(wanted - out.len());
        }
        let before = (stream.total_in(), stream.total_out());
        let status = stream
            .decompress_vec(input, out, FlushDecompress::None)
            .map_err(|_| invalid())?;
        if out.len() > max_message_size {
            return Err(Violation::too_big());
        }
        let fed = (stream.total_in() - start_in) as usize;
        if status == Status::StreamEnd {
            // A final block: the message must end with it (its tail is not needed).
            return if fed >= compressed.len() {
                Ok(Ended::Yes)
            } else {
                Err(invalid())
            };
        }
        let room_left = out.len() < out.capacity();
        if fed >= whole && room_left {
            return Ok(Ended::No);
        }
        if (stream.total_in(), stream.total_out()) == before && room_left {
            return Err(invalid());
        }
    }
}

fn compress_with(stream: &mut Compress, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let start_in = stream.total_in();
    loop {
        out.reserve(payload.len() / 2 + 64);
        let consumed = (stream.total_in() - start_in) as usize;
        stream
            .compress_vec(&payload[consumed..], out, FlushCompress::Sync)
            .expect("deflating into a growing buffer cannot fail");
        // Done once every byte went in and the flush left room: all of it came out.
        if (stream.total_in() - start_in) as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out[start..].ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    } else if out.len() == start {
        // An empty message right after a flush makes zlib write nothing: RFC 7692
        // section 7.2.3.6's empty message, one 0x00 (an empty stored block with the tail).
        out.push(0x00);
    }
}

/// Streams kept between messages by `stateless` connections, by window bits: at most
/// [`POOL_CAP`], so that a burst of messages on thousands of threads leaves no more
/// behind than a handful.
struct Pool<T> {
    free: Mutex<Vec<(u8, T)>>,
}

/// How many streams of each kind the pools keep between messages (about 300 KiB each
/// at window 15): enough for every worker of a small machine; a burst on more threads
/// than that leaves no more behind.
const POOL_CAP: usize = 8;

impl<T> Pool<T> {
    const fn new() -> Self {
        Pool {
            free: Mutex::new(Vec::new()),
        }
    }

    fn take(&self, bits: u8, make: impl FnOnce() -> T) -> T {
        let mut free = self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match free.iter().position(|(b, _)| *b == bits) {
            Some(at) => free.swap_remove(at).1,
            None => {
                drop(free);
                make()
            }
        }
    }

    fn give_back(&self, bits: u8, stream: T) {
        let mut free = self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if free.len() < POOL_CAP {
            free.push((bits, stream));
        }
    }
}

static COMPRESSORS: Pool<Compress> = Pool::new();
static INFLATERS: Pool<Decompress> = Pool::new();

#[cfg(test)]
mod tests {
    use super::*;

    const STATELESS: DeflateConfig = DeflateConfig {
        mode: DeflateMode::Stateless,
        window_bits: 15,
    };

    fn context(bits: u8) -> DeflateConfig {
        DeflateConfig {
            mode: DeflateMode::Context,
            window_bits: bits,
        }
    }

    #[test]
    fn a_browser_offer_is_accepted_as_each_mode_says() {
        let chromium = ["permessage-deflate; client_max_window_bits"];
        assert_eq!(negotiate(chromium, DeflateConfig::default()), None, "off declines");
        let stateless = negotiate(chromium, STATELESS).unwrap();
        assert_eq!(
            stateless.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let context15 = negotiate(chromium, context(15)).unwrap();
        assert_eq!(context15.response(), "permessage-deflate; client_max_window_bits=15");
        let context10 = negotiate(chromium, context(10)).unwrap();
        assert_eq!(context10.response(), "permessage-deflate; client_max_window_bits=10");
        assert_eq!((context10.server_window_bits, context10.client_window_bits), (10, 10));
        // Without client_max_window_bits in the offer, the client's window is 15 and no
        // limit may be stated.
        let plain = negotiate(["permessage-deflate"], context(10)).unwrap();
        assert_eq!(plain.response(), "permessage-deflate");
        assert_eq!(plain.client_window_bits, 15);
    }

    #[test]
    fn offers_the_engine_cannot_honour_are_declined_and_the_first_it_can_is_taken() {
        for declined in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits=10; client_max_window_bits=11",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(negotiate([declined], STATELESS), None, "{declined:?}");
            assert_eq!(negotiate([declined], context(15)), None, "{declined:?}");
        }
        let several =
            ["permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=\"10\""];
        let agreed = negotiate(several, context(15)).unwrap();
        assert_eq!(agreed.response(), "permessage-deflate; server_max_window_bits=10");
        // Offers over two header lines count in order too.
        let lines = ["x-unknown", "permessage-deflate; client_no_context_takeover"];
        assert_eq!(
            negotiate(lines, context(15)).unwrap().response(),
            "permessage-deflate; client_no_context_takeover"
        );
        // A client limiting its own window to 8 keeps it; we inflate with more.
        let eight = negotiate(["permessage-deflate; client_max_window_bits=8"], context(12)).unwrap();
        assert_eq!(eight.response(), "permessage-deflate");
        assert_eq!(eight.client_window_bits, 12);
    }

    /// A client's deflate of `payload` as it goes on the wire.
    fn client_compress(payload: &[u8], bits: u8) -> Vec<u8> {
        let mut out = Vec::new();
        compress_with(&mut new_compress(bits), payload, &mut out);
        out
    }

    #[test]
    fn what_is_compressed_inflates_back_in_every_mode() {
        let text = "the same words again and again, ".repeat(400);
        for config in [STATELESS, context(15), context(9)] {
            let agreement = negotiate(["permessage-deflate; client_max_window_bits"], config).unwrap();
            let mut server = Deflate::new(agreement);
            let mut client_side = Deflate::new(agreement);
            for message in [text.as_bytes(), b"", b"x", &[0u8, 1, 2, 3, 255][..]] {
                let mut wire = Vec::new();
                server.compress(message, &mut wire);
                let mut back = Vec::new();
                // The client inflates with the server's window: swap the roles' windows.
                let mut mirror = Deflate::new(Agreement {
                    client_window_bits: agreement.server_window_bits,
                    client_no_context_takeover: agreement.server_no_context_takeover,
                    ..agreement
                });
                mirror.inflate(&wire, 1 << 20, &mut back).unwrap();
                assert_eq!(back, message, "{config:?}");
                let mut inflated = Vec::new();
                let from_client = client_compress(message, agreement.client_window_bits.min(15));
                client_side.inflate(&from_client, 1 << 20, &mut inflated).unwrap();
                assert_eq!(inflated, message);
            }
            assert_eq!(
                server.holds_no_stream(),
                config.mode == DeflateMode::Stateless,
                "stateless holds nothing between messages"
            );
        }
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_limit_and_garbage_is_refused() {
        let bomb = client_compress(&vec![0u8; 10 << 20], 15);
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        let mut deflate = Deflate::new(negotiate(["permessage-deflate"], STATELESS).unwrap());
        let mut out = Vec::new();
        let error = deflate.inflate(&bomb, 64 << 10, &mut out).unwrap_err();
        assert_eq!(error, Violation::too_big());
        assert!(
            out.capacity() <= (64 << 10) + 1,
            "inflated at most the limit: {}",
            out.capacity()
        );
        // Exactly at the limit is fine.
        let exact = client_compress(&vec![7u8; 64 << 10], 15);
        let mut out = Vec::new();
        deflate.inflate(&exact, 64 << 10, &mut out).unwrap();
        assert_eq!(out.len(), 64 << 10);
        let mut out = Vec::new();
        let garbage = deflate.inflate(&[0xFF, 0xFF, 0xFF, 0x00, 0x12], 1 << 20, &mut out);
        assert_eq!(garbage.unwrap_err().code, crate::protocol::close_code::INVALID_PAYLOAD);
        // The pooled stream was reset: the next message inflates.
        let mut out = Vec::new();
        deflate
            .inflate(&client_compress(b"fine", 15), 1 << 20, &mut out)
            .unwrap();
        assert_eq!(out, b"fine");
    }
}
