//! Property fuzzing of permessage-deflate in the lean engine (`src/deflate.rs`, and the
//! compressed path of `src/session.rs`): tungstenite has no permessage-deflate, so there
//! is no reference implementation to differ from; the harness checks properties instead,
//! with flate2 (zlib's format) playing the client.
//!
//! A seeded generator picks an agreement (as `negotiate` answers a browser's offer under
//! `--deflate stateless` or `--deflate context` with window bits 9..=15) and a limit,
//! then writes a client's byte stream: messages compressed as a client holding that
//! agreement would (a fresh stream per message, or one kept across messages), some sent
//! uncompressed, some fragmented with pings between the fragments, deflate bombs (a few
//! bytes that inflate far past the limit), and, in half the cases, flipped bits, inserted
//! or deleted bytes and a truncation. Random `Sec-WebSocket-Extensions` offers go to
//! `negotiate` too. The properties:
//!
//! - nothing panics, and `negotiate` agrees only to windows of 9..=15 bits;
//! - the session answers the same bytes, in the same order, with the same outcome, whether
//!   the stream arrives whole, in random reads or byte by byte (split-invariant);
//! - memory stays bounded: what the decoder holds stays within
//!   `protocol::max_held_bytes`, and the heap the session grows to (a counting allocator)
//!   stays within a few times the limit plus zlib's own state, whatever a message
//!   inflates to;
//! - a stream without mutations round-trips: every message is echoed, compressed, and
//!   flate2 inflates each echo back to exactly the message sent (inflate(deflate(m)) = m
//!   both ways), up to the first message past the limit, which is answered with 1009 and
//!   nothing after it; under `stateless` the session holds no compression stream once the
//!   stream is over;
//! - a mutated stream ends, if it ends, with a close code of 1002, 1007 or 1009 and
//!   nothing after the close frame.
//!
//! `cargo test` runs it for 3 seconds with a fresh seed; longer runs, seeds and replays
//! as for the other harnesses (`tests/common/fuzz_driver.rs`):
//!
//! ```sh
//! WSSCALE_FUZZ_SECONDS=600 cargo test --release --test fuzz_deflate -- --nocapture
//! ```

#[path = "common/fuzz_driver.rs"]
mod fuzz_driver;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use wsscale::deflate::{Agreement, DeflateConfig, DeflateMode, negotiate};
use wsscale::lifecycle::{Flow, SessionPolicy};
use wsscale::protocol::{self, close_code};
use wsscale::session::{Session, Tally};

/// The heap in use and its peak since the last reset: the allocator of this test binary.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// only read by the harness.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// zlib's state for one inflate and one deflate stream at window 15 (zlib-rs allocates
/// about 370 KiB), with room: what a message may cost beyond its bytes.
const ZLIB_STATE: usize = 1 << 20;

#[derive(Debug, Default)]
struct Stats {
    cases: u64,
    mutated: u64,
    messages_round_tripped: u64,
    bombs_refused: u64,
    closes: std::collections::BTreeMap<u16, u64>,
    offers_accepted: u64,
    offers_declined: u64,
}

/// One case: the agreement, the limit, the stream, and what an unmutated stream must get.
struct Case {
    agreement: Agreement,
    max_message_size: usize,
    stream: Vec<u8>,
    /// Unmutated: the messages the session must echo (in order), and whether a message
    /// past the limit (1009) ends the stream after them.
    expected: Option<(Vec<Message>, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    text: bool,
    payload: Vec<u8>,
}

/// The client's side of the agreement: how it compresses what it sends.
struct ClientDeflate {
    compress: Compress,
    keeps_context: bool,
}

impl ClientDeflate {
    fn new(agreement: &Agreement) -> Self {
        ClientDeflate {
            compress: Compress::new_with_window_bits(Compression::default(), false, agreement.client_window_bits),
            keeps_context: !agreement.client_no_context_takeover,
        }
    }

    /// RFC 7692 §7.2.1: deflate, sync flush, the trailing 00 00 ff ff removed; an empty
    /// message right after a flush (zlib writes nothing) is §7.2.3.6's single 0x00.
    fn compress(&mut self, payload: &[u8]) -> Vec<u8> {
        if !self.keeps_context {
            self.compress.reset();
        }
        let mut out = Vec::new();
        let start_in = self.compress.total_in();
        loop {
            out.reserve(payload.len() / 2 + 64);
            let consumed = (self.compress.total_in() - start_in) as usize;
            self.compress
                .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
                .unwrap();
            if (self.compress.total_in() - start_in) as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&[0, 0, 0xff, 0xff]) {
            out.truncate(out.len() - 4);
        } else if out.is_empty() {
            out.push(0);
        }
        out
    }
}

/// A masked client frame.
fn frame(out: &mut Vec<u8>, first_byte: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(first_byte);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=65535 => {
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
}

fn message(rng: &mut fastrand::Rng, max_message_size: usize) -> Message {
    let len = match rng.u8(..10) {
        0 => 0,
        1..=6 => rng.usize(..=max_message_size.min(4096)),
        7 | 8 => rng.usize(..=max_message_size),
        _ => rng.usize(max_message_size + 1..=max_message_size * 2),
    };
    let text = rng.bool();
    let payload: Vec<u8> = match (text, rng.u8(..3)) {
        // Compressible text, with every width of code point.
        (true, _) => {
            let words = ["websocket ", "é", "€", "😀", "frame ", "deflate "];
            let mut out = String::new();
            while out.len() < len {
                out.push_str(words[rng.usize(..words.len())]);
            }
            let mut end = len.min(out.len());
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            out.into_bytes()
        }
        (false, 0) => (0..len).map(|_| rng.u8(..)).collect(),
        (false, _) => (0..len).map(|i| (i % 7) as u8).collect(),
    };
    Message { text, payload }
}

fn generate(case_seed: u64) -> Case {
    let mut rng = fastrand::Rng::with_seed(case_seed);
    let (mode, bits) = if rng.bool() {
        (DeflateMode::Stateless, 15)
    } else {
        (DeflateMode::Context, rng.u8(9..=15))
    };
    let offer = if rng.bool() {
        "permessage-deflate; client_max_window_bits"
    } else {
        "permessage-deflate"
    };
    let agreement = negotiate(
        [offer],
        DeflateConfig {
            mode,
            window_bits: bits,
        },
    )
    .expect("a browser's offer is accepted");
    let max_message_size = [16, 125, 1024, 4096, 65536][rng.usize(..5)];
    let mut client = ClientDeflate::new(&agreement);
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    let mut too_big = false;
    let mask = [rng.u8(..), rng.u8(..), rng.u8(..), rng.u8(..)];
    for _ in 0..rng.usize(1..8) {
        let message = message(&mut rng, max_message_size);
        let opcode = if message.text {
            protocol::opcode::TEXT
        } else {
            protocol::opcode::BINARY
        };
        let bomb = rng.u8(..12) == 0;
        let payload = if bomb {
            vec![0u8; max_message_size * 4 + rng.usize(..4096)]
        } else {
            message.payload.clone()
        };
        let compressed = rng.u8(..5) != 0;
        let wire = if compressed {
            client.compress(&payload)
        } else {
            payload.clone()
        };
        // Fragments: the first carries RSV1 when compressed; pings may come between.
        let pieces = if wire.len() > 2 && rng.bool() {
            rng.usize(2..=4.min(wire.len()))
        } else {
            1
        };
        let mut cuts: Vec<usize> = (1..pieces).map(|_| rng.usize(1..wire.len())).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut start = 0;
        for (i, end) in cuts.iter().copied().chain([wire.len()]).enumerate() {
            let fin = if end == wire.len() { 0x80 } else { 0 };
            let first = i == 0;
            let op = if first { opcode } else { protocol::opcode::CONTINUATION };
            let rsv1 = if first && compressed { 0x40 } else { 0 };
            frame(&mut stream, fin | rsv1 | op, &wire[start..end], mask);
            if fin == 0 && rng.bool() {
                frame(&mut stream, 0x80 | protocol::opcode::PING, b"between", mask);
            }
            start = end;
        }
        // Past the limit inflated, or on the wire (a frame's length is judged as it
        // arrives, compressed or not).
        if payload.len() > max_message_size || wire.len() > max_message_size {
            too_big = true;
            break;
        }
        expected.push(Message {
            text: message.text,
            payload,
        });
    }
    let mutated = rng.bool();
    if mutated {
        for _ in 0..rng.usize(1..4) {
            if stream.is_empty() {
                break;
            }
            let at = rng.usize(..stream.len());
            match rng.u8(..4) {
                0 => stream[at] ^= 1 << rng.u8(..8),
                1 => stream.insert(at, rng.u8(..)),
                2 => {
                    stream.remove(at);
                }
                _ => stream.truncate(at),
            }
        }
    }
    Case {
        agreement,
        max_message_size,
        stream,
        expected: (!mutated).then_some((expected, too_big)),
    }
}

/// What a session did with a stream fed in `reads`.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    output: Vec<u8>,
    finished: bool,
    lingering: bool,
    tally: Tally,
}

fn feed(case: &Case, reads: &[usize], policy: &SessionPolicy) -> Result<Outcome, String> {
    let now = Instant::now();
    let mut session = Session::with_deflate(policy, now, Some(case.agreement));
    let mut tally = Tally::default();
    let mut output = Vec::new();
    let mut finished = false;
    let mut stream = case.stream.clone();
    let mut rest = &mut stream[..];
    let bound = protocol::max_held_bytes(case.max_message_size);
    for &n in reads {
        if rest.is_empty() || finished {
            break;
        }
        let (read, after) = rest.split_at_mut(n.min(rest.len()));
        rest = after;
        if session.on_bytes(read, now, policy, &mut tally, &mut output) != Flow::Continue {
            finished = true;
        }
        if session.held_bytes() > bound {
            return Err(format!("holds {} bytes, over {bound}", session.held_bytes()));
        }
    }
    // What a lingering session discards depends on where the reads end (the rest of the
    // read that failed it is not counted), so it is not one of the compared answers.
    tally.lingered_bytes = 0;
    Ok(Outcome {
        output,
        finished,
        lingering: session.is_lingering(),
        tally,
    })
}

/// Where two outcomes part.
fn differ(one: &Outcome, other: &Outcome) -> String {
    let at = one.output.iter().zip(&other.output).position(|(a, b)| a != b);
    format!(
        "{} vs {} bytes out (first difference at {at:?}), finished {} vs {}, lingering {} vs {}, {:?} vs {:?}",
        one.output.len(),
        other.output.len(),
        one.finished,
        other.finished,
        one.lingering,
        other.lingering,
        one.tally,
        other.tally
    )
}

/// The server's frames in `output`: (first byte, payload), checked whole and unmasked.
fn server_frames(output: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < output.len() {
        let first = output[at];
        let second = *output.get(at + 1).ok_or("a torn header")?;
        if second & 0x80 != 0 {
            return Err("a masked server frame".into());
        }
        let (len, header) = match second & 0x7f {
            126 => (u16::from_be_bytes([output[at + 2], output[at + 3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(output[at + 2..at + 10].try_into().unwrap()) as usize,
                10,
            ),
            len => (len as usize, 2),
        };
        let payload = output
            .get(at + header..at + header + len)
            .ok_or("a torn payload")?
            .to_vec();
        frames.push((first, payload));
        at += header + len;
    }
    Ok(frames)
}

/// flate2 inflating what the server compressed (RFC 7692 §7.2.2: the trailer put back).
fn inflate(inflater: &mut Decompress, keeps_context: bool, compressed: &[u8]) -> Result<Vec<u8>, String> {
    if !keeps_context {
        inflater.reset(false);
    }
    let mut input = compressed.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(compressed.len() * 4 + 64);
    let start_in = inflater.total_in();
    loop {
        let consumed = (inflater.total_in() - start_in) as usize;
        // All in, and the last call had room to spare: nothing is left inside zlib.
        if consumed == input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64));
        let before = (inflater.total_in(), inflater.total_out());
        inflater
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|error| format!("flate2 cannot inflate the server's echo: {error}"))?;
        if (inflater.total_in(), inflater.total_out()) == before {
            // Nothing more came out: done if everything went in (the last output filled
            // the buffer exactly), else the echo is not a deflate stream flate2 accepts.
            if (inflater.total_in() - start_in) as usize == input.len() {
                return Ok(out);
            }
            return Err("flate2 made no progress on the server's echo".into());
        }
    }
}

fn check(case_seed: u64, stats: &mut Stats) -> Result<(), String> {
    let case = generate(case_seed);
    let mut rng = fastrand::Rng::with_seed(case_seed ^ 0x5eed);
    stats.cases += 1;
    stats.mutated += u64::from(case.expected.is_none());
    offers(&mut rng, stats)?;
    let policy = SessionPolicy {
        ping_interval: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(7200),
        drain_timeout: Duration::from_secs(1),
        max_message_size: case.max_message_size,
    };

    // Split-invariance, and the heap the whole stream costs.
    let before = IN_USE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let whole = feed(&case, &[case.stream.len()], &policy)?;
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let heap_bound = 4 * case.max_message_size + case.stream.len() * 3 + ZLIB_STATE;
    if grew > heap_bound {
        return Err(format!("the heap grew by {grew} bytes, over {heap_bound}"));
    }
    let mut reads = Vec::new();
    let mut left = case.stream.len();
    while left > 0 {
        let longest = left.min(1 + rng.usize(..300));
        let n = rng.usize(1..=longest);
        reads.push(n);
        left -= n;
    }
    let split = feed(&case, &reads, &policy)?;
    if split != whole {
        return Err(format!(
            "random reads {reads:?} answer differently from one read: {}",
            differ(&whole, &split)
        ));
    }
    if case.stream.len() <= 4096 {
        let bytes = feed(&case, &vec![1; case.stream.len()], &policy)?;
        if bytes != whole {
            return Err(format!(
                "byte by byte answers differently from one read: {}",
                differ(&whole, &bytes)
            ));
        }
    }

    // What the session said: echoes (RSV1 messages), pongs, then at most one close, last.
    let frames = server_frames(&whole.output)?;
    let close = frames
        .iter()
        .position(|(first, _)| first & 0x0f == protocol::opcode::CLOSE);
    if let Some(at) = close {
        if at != frames.len() - 1 {
            return Err("frames after the close frame".into());
        }
        // Either the echo of a close the mutations made the client send (the session is
        // finished), or the session failed the connection: then with a code of its own,
        // and lingering.
        let payload = &frames[at].1;
        let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        match (whole.lingering, whole.finished, code) {
            (true, false, Some(code))
                if [
                    close_code::PROTOCOL_ERROR,
                    close_code::INVALID_PAYLOAD,
                    close_code::MESSAGE_TOO_BIG,
                ]
                .contains(&code) =>
            {
                *stats.closes.entry(code).or_default() += 1;
            }
            (false, true, _) if case.expected.is_none() => {}
            _ => {
                return Err(format!(
                    "closed with {code:?}, lingering {}, finished {}",
                    whole.lingering, whole.finished
                ));
            }
        }
    }
    let Some((expected, too_big)) = &case.expected else {
        return Ok(());
    };

    // Unmutated: inflate(deflate(m)) = m both ways, in order, then 1009 if one was too big.
    let mut inflater = Decompress::new_with_window_bits(false, case.agreement.server_window_bits);
    let keeps_context = !case.agreement.server_no_context_takeover;
    let mut echoed = Vec::new();
    for (first, payload) in &frames {
        let opcode = first & 0x0f;
        if opcode == protocol::opcode::TEXT || opcode == protocol::opcode::BINARY {
            if first & 0x40 == 0 {
                return Err("an echo on a deflate connection went out uncompressed".into());
            }
            echoed.push(Message {
                text: opcode == protocol::opcode::TEXT,
                payload: inflate(&mut inflater, keeps_context, payload)?,
            });
        }
    }
    if &echoed != expected {
        return Err(format!(
            "echoed {} messages ({:?} bytes), sent {} ({:?} bytes) before any too big",
            echoed.len(),
            echoed.iter().map(|m| m.payload.len()).collect::<Vec<_>>(),
            expected.len(),
            expected.iter().map(|m| m.payload.len()).collect::<Vec<_>>()
        ));
    }
    stats.messages_round_tripped += expected.len() as u64;
    match (too_big, close) {
        (true, Some(at)) if frames[at].1[..2] == close_code::MESSAGE_TOO_BIG.to_be_bytes() => stats.bombs_refused += 1,
        (true, _) => return Err("a message past the limit was not refused with 1009".into()),
        (false, Some(_)) => return Err("a valid stream was failed".into()),
        (false, None) => {}
    }
    if !*too_big && case.agreement.server_no_context_takeover {
        let mut session = Session::with_deflate(&policy, Instant::now(), Some(case.agreement));
        let mut stream = case.stream.clone();
        let mut out = Vec::new();
        session.on_bytes(&mut stream, Instant::now(), &policy, &mut Tally::default(), &mut out);
        if !session.holds_no_compression_stream() {
            return Err("a stateless session holds a compression stream after its messages".into());
        }
    }
    Ok(())
}

/// Random offers: never a panic, and windows only of 9..=15 bits.
fn offers(rng: &mut fastrand::Rng, stats: &mut Stats) -> Result<(), String> {
    let parameters = [
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
        "server_max_window_bits=8",
        "server_max_window_bits=9",
        "client_max_window_bits=15",
        "client_max_window_bits=16",
        "client_max_window_bits=\"10\"",
        "server_max_window_bits=07",
        "x-unknown",
        "",
        "=",
        ";",
    ];
    let mut offer =
        String::from(["permessage-deflate", "PERMESSAGE-DEFLATE", "x-webkit-deflate-frame", ""][rng.usize(..4)]);
    for _ in 0..rng.usize(..5) {
        offer.push_str(["; ", ";", ", ", " ; "][rng.usize(..4)]);
        offer.push_str(parameters[rng.usize(..parameters.len())]);
    }
    let mode = [DeflateMode::Stateless, DeflateMode::Context][rng.usize(..2)];
    match negotiate(
        [offer.as_str()],
        DeflateConfig {
            mode,
            window_bits: rng.u8(9..=15),
        },
    ) {
        Some(agreement) => {
            stats.offers_accepted += 1;
            for bits in [agreement.server_window_bits, agreement.client_window_bits] {
                if !(9..=15).contains(&bits) {
                    return Err(format!("{offer:?} agreed to a window of {bits} bits"));
                }
            }
        }
        None => stats.offers_declined += 1,
    }
    Ok(())
}

#[test]
fn compressed_frames_keep_their_properties() {
    let describe = |case_seed| {
        let case = generate(case_seed);
        format!(
            "{:?}, limit {}, {} bytes, {}",
            case.agreement,
            case.max_message_size,
            case.stream.len(),
            if case.expected.is_some() {
                "unmutated"
            } else {
                "mutated"
            }
        )
    };
    let Some(finished) = fuzz_driver::run("fuzz_deflate", describe, check, |stats: &Stats| {
        format!(", {} round-tripped", stats.messages_round_tripped)
    }) else {
        return;
    };
    let stats = finished.stats;
    eprintln!(
        "fuzz_deflate: {} cases in {:.1?} (seed {}): {stats:?}",
        finished.iterations, finished.elapsed, finished.seed
    );
    assert!(stats.messages_round_tripped > 0, "no message round-tripped: {stats:?}");
    assert!(stats.offers_accepted > 0 && stats.offers_declined > 0, "{stats:?}");
}
