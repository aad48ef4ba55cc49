//! Differential fuzzing of the RFC 6455 decoder (`src/protocol.rs`) and the session
//! (`src/session.rs`) against tungstenite 0.29, a server-role `WebSocket` over an
//! in-memory stream with the same limit (`max_message_size` and `max_frame_size` both
//! equal to ours).
//!
//! A seeded generator writes byte streams: random bytes, and sequences of frames (text
//! with every width of code point and with invalid sequences, binary, fragments with
//! control frames between them, close frames with every kind of code and reason, frames
//! with reserved bits or opcodes, unmasked frames, lengths in every form and around the
//! limit), then flips bits, inserts or deletes bytes and truncates. Each stream is fed to
//! a [`Session`] whole, in random reads and byte by byte, and to tungstenite. The test
//! asserts that nothing panics; that the session writes the same bytes and holds the same
//! bytes for every split; that what it holds stays within
//! [`protocol::max_held_bytes`] and within twice what has arrived plus one control frame;
//! and that it makes tungstenite's decision: the same messages echoed, the same pongs,
//! then the same close code, except for the situations of [`KNOWN_DIFFERENCES`].
//!
//! Where tungstenite is still waiting for the rest of a frame that we have already failed
//! (we fail fast: on the byte that breaks a rule), the harness completes that frame with
//! harmless bytes and asks tungstenite again.
//!
//! `cargo test` runs it for 3 seconds with a fresh seed. For longer:
//!
//! ```sh
//! WSSCALE_FUZZ_SECONDS=1200 cargo test --release --test fuzz -- --nocapture
//! WSSCALE_FUZZ_SEED=1234 ...        # start from a seed (the run prints its seed)
//! WSSCALE_FUZZ_CASE=5678 ...        # replay one failing case (the failure prints it)
//! ```

#[path = "common/fuzz_driver.rs"]
mod fuzz_driver;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use tungstenite::error::{Error as OracleError, ProtocolError};
use tungstenite::protocol::{Message, Role, WebSocket, WebSocketConfig};
use wsscale::lifecycle::{Flow, SessionPolicy};
use wsscale::protocol::{self, MAX_CONTROL_FRAME_LEN, close_code, opcode};
use wsscale::session::{Session, Tally};

/// Where our close code differs from tungstenite's on purpose. Every other decision must
/// be the same.
const KNOWN_DIFFERENCES: [KnownDifference; 3] = [
    KnownDifference {
        situation: "a frame longer than max_message_size whose header also breaks a rule of \
                    shape: reserved bits, no mask, a fragmented control frame, a control frame \
                    over 125 bytes, a continuation without a message, a new message inside a \
                    fragmented one",
        ours: close_code::PROTOCOL_ERROR,
        tungstenite: close_code::MESSAGE_TOO_BIG,
        why: "we judge each header byte as it arrives, so the first and second bytes decide \
              before the length is read, and within the length, shape comes before size; \
              tungstenite checks the length as soon as the header is whole, the rest once \
              the payload has arrived",
        applies: shape_rule_broken_by_an_oversized_frame,
    },
    KnownDifference {
        situation: "a close frame with an invalid code and a reason that is not UTF-8",
        ours: close_code::PROTOCOL_ERROR,
        tungstenite: close_code::INVALID_PAYLOAD,
        why: "the code comes before the reason on the wire; tungstenite decodes the reason \
              before it looks at the code",
        applies: close_with_invalid_code_and_reason,
    },
    KnownDifference {
        situation: "a close frame with code 1014 (bad gateway)",
        ours: 1014,
        tungstenite: close_code::PROTOCOL_ERROR,
        why: "1014 is registered at IANA like 1012 and 1013, which tungstenite accepts; \
              its CloseCode has no 1014 and replies 1002 (RFC 6455 section 7.4.2 reserves \
              1000-2999 for registered codes)",
        applies: close_with_code_1014,
    },
];

struct KnownDifference {
    situation: &'static str,
    /// The close code we send (or echo).
    ours: u16,
    /// The close code a tungstenite server sends.
    tungstenite: u16,
    why: &'static str,
    /// Whether the frame that decided the connection is in this situation.
    applies: fn(&RawFrame, &[u8], usize) -> bool,
}

fn shape_rule_broken_by_an_oversized_frame(frame: &RawFrame, _: &[u8], max_message_size: usize) -> bool {
    let Some(length) = frame.length else { return false };
    let control = frame.opcode() & 0x8 != 0;
    let breaks_shape = frame.first & 0x70 != 0
        || !frame.masked
        || (control && !frame.fin())
        || (control && length > 125)
        || (frame.opcode() == opcode::CONTINUATION && !frame.in_fragmented_message)
        || (matches!(frame.opcode(), opcode::TEXT | opcode::BINARY) && frame.in_fragmented_message);
    breaks_shape && length > max_message_size as u64
}

fn close_with_invalid_code_and_reason(frame: &RawFrame, bytes: &[u8], _: usize) -> bool {
    let Some(payload) = frame.payload(bytes) else {
        return false;
    };
    frame.opcode() == opcode::CLOSE
        && payload.len() >= 2
        && !matches!(u16::from_be_bytes([payload[0], payload[1]]), 1000..=1003 | 1007..=1014 | 3000..=4999)
        && std::str::from_utf8(&payload[2..]).is_err()
}

fn close_with_code_1014(frame: &RawFrame, bytes: &[u8], _: usize) -> bool {
    let Some(payload) = frame.payload(bytes) else {
        return false;
    };
    frame.opcode() == opcode::CLOSE && payload.len() >= 2 && u16::from_be_bytes([payload[0], payload[1]]) == 1014
}

#[test]
fn decoder_and_session_decide_like_tungstenite() {
    let finished = fuzz_driver::run(
        "fuzz",
        |case_seed| {
            let case = Case::generate(case_seed);
            format!(
                "max_message_size {}, {} bytes: {:02x?}",
                case.max_message_size,
                case.bytes.len(),
                case.bytes
            )
        },
        |case_seed, stats: &mut Stats| {
            let case = Case::generate(case_seed);
            check(&case, stats).map_err(|failure| {
                format!(
                    "{failure}\nmax_message_size {}, {} bytes: {:02x?}",
                    case.max_message_size,
                    case.bytes.len(),
                    &case.bytes[..case.bytes.len().min(600)]
                )
            })
        },
        |_| String::new(),
    );
    let Some(fuzz_driver::Finished {
        stats,
        seed,
        iterations,
        elapsed,
    }) = finished
    else {
        return;
    };
    eprintln!(
        "fuzz: {iterations} cases in {elapsed:.1?}, seed {seed}, no failure; outcomes {:?}",
        stats.outcomes
    );
    for (row, hits) in KNOWN_DIFFERENCES.iter().zip(stats.known_differences) {
        eprintln!(
            "fuzz: {hits} cases of a known difference, ours {} and tungstenite {}: {}; {}",
            row.ours, row.tungstenite, row.situation, row.why
        );
    }
    eprintln!(
        "fuzz: {} cases where we failed before tungstenite had the whole frame; {} feed calls",
        stats.completed_for_the_oracle, stats.feed_calls
    );
    assert!(iterations > 0, "no case ran");
}

#[derive(Debug, Default)]
struct Stats {
    /// How the connections ended: "open" (still waiting), or the close code sent.
    outcomes: BTreeMap<String, u64>,
    /// Cases decided by each row of KNOWN_DIFFERENCES.
    known_differences: [u64; KNOWN_DIFFERENCES.len()],
    /// Cases where tungstenite needed the unfinished frame completed to decide.
    completed_for_the_oracle: u64,
    feed_calls: u64,
}

// ---------------------------------------------------------------------------------------
// The check of one case.

/// What the server answered, read back from its output: echoes, pongs, then maybe a close.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Echo {
        text: bool,
        payload: Vec<u8>,
    },
    Pong(Vec<u8>),
    /// The close frame sent: the code, if any (reasons are not compared).
    Close(Option<u16>),
}

/// Everything one feeding of a stream to a session produced.
#[derive(Debug, PartialEq, Eq)]
struct OurRun {
    output: Vec<u8>,
    finished: bool,
    /// Whether the session held anything after the last read. How much depends on the
    /// reads (capacity grows by doubling), whether does not; after a finish it no longer
    /// matters (the connection is closed).
    holds_anything: bool,
}

fn check(case: &Case, stats: &mut Stats) -> Result<(), String> {
    let max = case.max_message_size;
    let bytes = &case.bytes;
    let whole = run_ours(bytes, &[bytes.len().max(1)], max, stats)?;
    let random = run_ours(bytes, &case.reads, max, stats)?;
    compare_runs(&whole, &random, "random reads")?;
    if bytes.len() <= 2048 {
        let byte_by_byte = run_ours(bytes, &[1], max, stats)?;
        compare_runs(&whole, &byte_by_byte, "byte by byte")?;
    }
    let ours = parse_answers(&whole.output)?;
    let (our_answers, our_close) = split_close(ours);

    let oracle = run_tungstenite(bytes, max)?;
    let (oracle_answers, oracle_close) = split_close(oracle);
    let (oracle_answers, oracle_close, decided_on) = if our_close.is_some() && oracle_close.is_none() {
        // We failed fast; tungstenite waits for the rest of the frame. Give it one.
        let Some(completed) = complete_last_frame(bytes, max) else {
            return Err(format!(
                "we close with {our_close:?} but tungstenite, with every frame whole, does not close; \
                 answers ours {our_answers:?}, tungstenite {oracle_answers:?}"
            ));
        };
        stats.completed_for_the_oracle += 1;
        let with_completed = run_ours(&completed, &[completed.len()], max, stats)?;
        compare_runs(&whole, &with_completed, "the stream with its last frame completed")?;
        let (answers, close) = split_close(run_tungstenite(&completed, max)?);
        (answers, close, completed)
    } else {
        (oracle_answers, oracle_close, bytes.clone())
    };
    if our_answers != oracle_answers {
        return Err(format!(
            "answers differ before the close: ours {}, tungstenite {}",
            describe(&our_answers),
            describe(&oracle_answers)
        ));
    }
    let outcome = match our_close {
        None => "open".to_owned(),
        Some(None) => "close without code".to_owned(),
        Some(Some(3000..=4999)) => "3000-4999".to_owned(),
        Some(Some(code)) => code.to_string(),
    };
    *stats.outcomes.entry(outcome).or_default() += 1;
    if our_close == oracle_close {
        return Ok(());
    }
    // A known difference, if the frame that decided the connection is in its situation.
    let (Some(Some(our_code)), Some(Some(oracle_code))) = (our_close, oracle_close) else {
        return Err(format!(
            "close differs: ours {our_close:?}, tungstenite {oracle_close:?}"
        ));
    };
    let frame = frame_at(&decided_on, byte_that_finishes(bytes, max));
    for (index, row) in KNOWN_DIFFERENCES.iter().enumerate() {
        if row.ours == our_code && row.tungstenite == oracle_code && (row.applies)(&frame, &decided_on, max) {
            stats.known_differences[index] += 1;
            return Ok(());
        }
    }
    Err(format!(
        "close code differs: ours {our_code}, tungstenite {oracle_code}, on the frame at byte {} ({frame:?}), \
         in no situation of KNOWN_DIFFERENCES",
        frame.start
    ))
}

fn compare_runs(whole: &OurRun, other: &OurRun, how: &str) -> Result<(), String> {
    if whole != other {
        return Err(format!(
            "fed whole and fed as {how} differ:\n whole: {:?}\n {how}: {:?}",
            summarize(whole),
            summarize(other)
        ));
    }
    Ok(())
}

fn summarize(run: &OurRun) -> String {
    format!(
        "finished {}, holds anything {}, answers {}",
        run.finished,
        run.holds_anything,
        parse_answers(&run.output).map_or_else(|error| error, |answers| describe(&answers))
    )
}

fn describe(answers: &[Answer]) -> String {
    let items: Vec<String> = answers
        .iter()
        .map(|answer| match answer {
            Answer::Echo { text, payload } => {
                format!("{}({} bytes)", if *text { "text" } else { "binary" }, payload.len())
            }
            Answer::Pong(payload) => format!("pong({} bytes)", payload.len()),
            Answer::Close(code) => format!("close({code:?})"),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn split_close(mut answers: Vec<Answer>) -> (Vec<Answer>, Option<Option<u16>>) {
    match answers.last() {
        Some(Answer::Close(code)) => {
            let code = *code;
            answers.pop();
            (answers, Some(code))
        }
        _ => (answers, None),
    }
}

/// Feeds `bytes` to a fresh session in reads of the sizes `reads` (cycled); checks what it
/// holds after every read.
fn run_ours(bytes: &[u8], reads: &[usize], max_message_size: usize, stats: &mut Stats) -> Result<OurRun, String> {
    let policy = session_policy(max_message_size);
    let now = Instant::now();
    let mut session = Session::new(&policy, now);
    let mut tally = Tally::default();
    let mut output = Vec::new();
    let mut at = 0;
    let mut finished = false;
    for &read in reads.iter().cycle() {
        if at >= bytes.len() {
            break;
        }
        let end = (at + read.max(1)).min(bytes.len());
        let mut input = bytes[at..end].to_vec();
        at = end;
        stats.feed_calls += 1;
        let flow = session.on_bytes(&mut input, now, &policy, &mut tally, &mut output);
        let held = session.held_bytes();
        if held > protocol::max_held_bytes(max_message_size) {
            return Err(format!(
                "holds {held} bytes after {at} bytes, over the bound of {}",
                protocol::max_held_bytes(max_message_size)
            ));
        }
        if held > 2 * at + MAX_CONTROL_FRAME_LEN {
            return Err(format!("holds {held} bytes after only {at} bytes arrived"));
        }
        // Decided: the session finished, or failed the connection and lingers (its close
        // frame written, nothing more decoded).
        if matches!(flow, Flow::Finish(_)) || session.is_lingering() {
            finished = true;
            break;
        }
    }
    Ok(OurRun {
        output,
        finished,
        holds_anything: !finished && session.held_bytes() > 0,
    })
}

/// The server's policy; only the limit matters here (no timer fires).
fn session_policy(max_message_size: usize) -> SessionPolicy {
    SessionPolicy {
        ping_interval: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(90),
        drain_timeout: Duration::from_secs(10),
        max_message_size,
    }
}

/// The index of the byte on which a session fed one byte at a time finishes: where the
/// frame that decided the connection is.
fn byte_that_finishes(bytes: &[u8], max_message_size: usize) -> usize {
    let policy = session_policy(max_message_size);
    let now = Instant::now();
    let mut session = Session::new(&policy, now);
    let mut output = Vec::new();
    for (index, byte) in bytes.iter().enumerate() {
        let flow = session.on_bytes(&mut [*byte], now, &policy, &mut Tally::default(), &mut output);
        if matches!(flow, Flow::Finish(_)) || session.is_lingering() {
            return index;
        }
    }
    panic!("the session finished when fed whole, but not byte by byte")
}

/// Reads the server frames the session wrote.
fn parse_answers(mut output: &[u8]) -> Result<Vec<Answer>, String> {
    let mut answers = Vec::new();
    while !output.is_empty() {
        let [first, second, ..] = *output else {
            return Err(format!("a truncated frame in our output: {output:02x?}"));
        };
        let (length, header_len) = match second {
            126 => (usize::from(u16::from_be_bytes([output[2], output[3]])), 4),
            127 => (u64::from_be_bytes(output[2..10].try_into().unwrap()) as usize, 10),
            length => (usize::from(length), 2),
        };
        let payload = output[header_len..header_len + length].to_vec();
        output = &output[header_len + length..];
        answers.push(match first {
            0x81 => Answer::Echo { text: true, payload },
            0x82 => Answer::Echo { text: false, payload },
            0x8A => Answer::Pong(payload),
            0x88 => Answer::Close(payload.get(..2).map(|code| u16::from_be_bytes([code[0], code[1]]))),
            other => return Err(format!("an unexpected frame in our output: {other:#04x}")),
        });
    }
    Ok(answers)
}

// ---------------------------------------------------------------------------------------
// The oracle: tungstenite 0.29, server role, over an in-memory stream.

/// The stream tungstenite reads: `input`, then WouldBlock (the peer is still connected).
struct InMemory {
    input: Vec<u8>,
    at: usize,
}

impl Read for InMemory {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.input.len() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len() - self.at);
        buf[..n].copy_from_slice(&self.input[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for InMemory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a tungstenite server answers to `bytes`: the messages it echoes, the pongs it
/// sends, and the close code it sends, mapping its errors to the codes RFC 6455 names
/// (a capacity error 1009, invalid UTF-8 1007, any protocol error 1002).
fn run_tungstenite(bytes: &[u8], max_message_size: usize) -> Result<Vec<Answer>, String> {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size));
    let stream = InMemory {
        input: bytes.to_vec(),
        at: 0,
    };
    let mut socket = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
    let mut answers = Vec::new();
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => answers.push(Answer::Echo {
                text: true,
                payload: text.as_bytes().to_vec(),
            }),
            Ok(Message::Binary(payload)) => answers.push(Answer::Echo {
                text: false,
                payload: payload.to_vec(),
            }),
            Ok(Message::Ping(payload)) => answers.push(Answer::Pong(payload.to_vec())),
            Ok(Message::Pong(_)) => {}
            Ok(Message::Close(frame)) => {
                answers.push(Answer::Close(frame.map(|frame| u16::from(frame.code))));
                return Ok(answers);
            }
            Ok(Message::Frame(_)) => return Err("tungstenite returned a raw frame".to_owned()),
            Err(OracleError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => return Ok(answers),
            Err(OracleError::Capacity(_)) => {
                answers.push(Answer::Close(Some(close_code::MESSAGE_TOO_BIG)));
                return Ok(answers);
            }
            Err(OracleError::Utf8(_)) => {
                answers.push(Answer::Close(Some(close_code::INVALID_PAYLOAD)));
                return Ok(answers);
            }
            Err(OracleError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                return Err("tungstenite saw the stream end".to_owned());
            }
            Err(OracleError::Protocol(_)) => {
                answers.push(Answer::Close(Some(close_code::PROTOCOL_ERROR)));
                return Ok(answers);
            }
            Err(other) => return Err(format!("tungstenite: unexpected error {other:?}")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Frames as the harness reads them, independently of the decoder under test.

/// A client frame in a stream, possibly unfinished.
#[derive(Debug)]
struct RawFrame {
    start: usize,
    first: u8,
    masked: bool,
    /// The payload length, once its bytes have arrived.
    length: Option<u64>,
    /// The header's length, once it has all arrived.
    header_len: Option<usize>,
    mask: [u8; 4],
    /// A fragmented message was in progress when this frame started.
    in_fragmented_message: bool,
}

impl RawFrame {
    fn opcode(&self) -> u8 {
        self.first & 0x0F
    }

    fn fin(&self) -> bool {
        self.first & 0x80 != 0
    }

    /// The whole frame's end, once its header has arrived.
    fn end(&self) -> Option<u64> {
        Some(self.start as u64 + self.header_len? as u64 + self.length?)
    }

    /// The unmasked payload, if it has all arrived.
    fn payload(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let end = usize::try_from(self.end()?).ok().filter(|end| *end <= bytes.len())?;
        let mut payload = bytes[self.start + self.header_len?..end].to_vec();
        if self.masked {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= self.mask[i % 4];
            }
        }
        Some(payload)
    }
}

/// Reads the header of the frame at `start` (as much of it as there is).
fn read_frame(bytes: &[u8], start: usize, in_fragmented_message: bool) -> RawFrame {
    let head = &bytes[start..];
    let mut frame = RawFrame {
        start,
        first: head[0],
        masked: false,
        length: None,
        header_len: None,
        mask: [0; 4],
        in_fragmented_message,
    };
    let Some(&second) = head.get(1) else { return frame };
    frame.masked = second & 0x80 != 0;
    let length_len = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    frame.length = match length_len {
        0 => Some(u64::from(second & 0x7F)),
        n => head
            .get(2..2 + n)
            .map(|length| length.iter().fold(0u64, |value, byte| value << 8 | u64::from(*byte))),
    };
    let mask_len = if frame.masked { 4 } else { 0 };
    if let Some(mask) = head.get(2 + length_len..2 + length_len + mask_len) {
        frame.mask[..mask_len].copy_from_slice(mask);
        frame.header_len = Some(2 + length_len + mask_len);
    }
    frame
}

/// The frame that holds byte `index`, walking the frames from the start.
fn frame_at(bytes: &[u8], index: usize) -> RawFrame {
    let mut start = 0;
    let mut in_fragmented_message = false;
    loop {
        let frame = read_frame(bytes, start, in_fragmented_message);
        match frame.end() {
            Some(end) if end <= index as u64 => {
                match frame.opcode() {
                    opcode::TEXT | opcode::BINARY if !frame.fin() => in_fragmented_message = true,
                    opcode::CONTINUATION if frame.fin() => in_fragmented_message = false,
                    _ => {}
                }
                start = end as usize;
            }
            _ => return frame,
        }
    }
}

/// `bytes` with its last, unfinished frame completed: missing header bytes as zeros (a
/// missing second byte as "masked, empty"), missing payload as bytes that unmask to 'a'.
/// None when the stream ends between frames, or the frame's length is over the limit
/// (tungstenite decides from the header alone then).
fn complete_last_frame(bytes: &[u8], max_message_size: usize) -> Option<Vec<u8>> {
    let last = frame_at(bytes, bytes.len().checked_sub(1)?);
    if last.end() == Some(bytes.len() as u64) {
        return None;
    }
    let mut completed = bytes.to_vec();
    if completed.len() == last.start + 1 {
        completed.push(0x80);
    }
    let second = completed[last.start + 1];
    let length_len = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header_len = 2 + length_len + if second & 0x80 != 0 { 4 } else { 0 };
    completed.resize(completed.len().max(last.start + header_len), 0);
    let frame = read_frame(&completed, last.start, last.in_fragmented_message);
    let length = frame.length.expect("the header is whole");
    if length > max_message_size as u64 {
        return Some(completed);
    }
    let payload_start = last.start + header_len;
    let end = payload_start + length as usize;
    while completed.len() < end {
        let offset = completed.len() - payload_start;
        let mask = if frame.masked { frame.mask[offset % 4] } else { 0 };
        completed.push(b'a' ^ mask);
    }
    Some(completed)
}

// ---------------------------------------------------------------------------------------
// The generator.

/// One generated input: a stream, the limit, and how to split it into reads.
struct Case {
    bytes: Vec<u8>,
    max_message_size: usize,
    reads: Vec<usize>,
}

/// Limits around the boundaries of the length forms and of control frames.
const MAX_MESSAGE_SIZES: [usize; 12] = [1, 2, 7, 100, 125, 126, 200, 1000, 4096, 65_535, 65_536, 70_000];

impl Case {
    fn generate(case_seed: u64) -> Case {
        let mut rng = fastrand::Rng::with_seed(case_seed);
        let max_message_size = MAX_MESSAGE_SIZES[rng.usize(..MAX_MESSAGE_SIZES.len())];
        let mut generator = Generator {
            rng: &mut rng,
            max_message_size,
            bytes: Vec::new(),
        };
        match generator.rng.u8(0..10) {
            0 => {
                let len = generator.rng.usize(0..48);
                generator.bytes = (0..len).map(|_| generator.rng.u8(..)).collect();
            }
            _ => {
                for _ in 0..generator.rng.usize(1..7) {
                    generator.anything();
                }
            }
        }
        generator.mutate();
        let mut bytes = generator.bytes;
        // Rarely, a stream far longer than the limit: many frames, some of them large.
        if rng.u8(0..50) == 0 {
            let copy = bytes.clone();
            for _ in 0..rng.usize(1..4) {
                bytes.extend_from_slice(&copy);
            }
        }
        let reads = (0..rng.usize(1..20))
            .map(|_| match rng.u8(0..3) {
                0 => rng.usize(1..4),
                1 => rng.usize(1..64),
                _ => rng.usize(1..=bytes.len().max(1)),
            })
            .collect();
        Case {
            bytes,
            max_message_size,
            reads,
        }
    }
}

struct Generator<'a> {
    rng: &'a mut fastrand::Rng,
    max_message_size: usize,
    bytes: Vec<u8>,
}

impl Generator<'_> {
    fn anything(&mut self) {
        match self.rng.u8(0..16) {
            0..=6 => self.message(),
            7 | 8 => self.ping_or_pong(),
            9 | 10 => self.close(),
            11 => {
                // A frame of any first byte: reserved bits, reserved opcodes, lone
                // continuations, fragmented control frames.
                let first = self.rng.u8(..);
                let payload = self.payload_of_some_size();
                self.frame(first, &payload);
            }
            12 => {
                // Garbage between frames.
                for _ in 0..self.rng.usize(1..5) {
                    let byte = self.rng.u8(..);
                    self.bytes.push(byte);
                }
            }
            13 => {
                // A new message inside a fragmented one.
                let payload = self.text_or_binary(true);
                self.frame(opcode::TEXT, &payload);
                let first = if self.rng.bool() {
                    0x80 | opcode::TEXT
                } else {
                    opcode::BINARY
                };
                self.frame(first, &payload);
            }
            _ => {
                // A continuation, of nothing unless a fragment came before.
                let payload = self.text_or_binary(true);
                let first = if self.rng.bool() { 0x80 } else { 0x00 };
                self.frame(first, &payload);
            }
        }
    }

    /// A text or binary message, whole or in fragments with control frames between them.
    fn message(&mut self) {
        let text = self.rng.u8(0..3) != 0;
        let payload = self.text_or_binary(text);
        let data_opcode = if text { opcode::TEXT } else { opcode::BINARY };
        if self.rng.u8(0..5) < 3 {
            self.frame(0x80 | data_opcode, &payload);
            return;
        }
        // Fragments: cut anywhere, even inside a code point; empty ones too.
        let mut cuts: Vec<usize> = (0..self.rng.usize(1..5))
            .map(|_| self.rng.usize(0..=payload.len()))
            .collect();
        cuts.push(0);
        cuts.push(payload.len());
        cuts.sort_unstable();
        for (index, pair) in cuts.windows(2).enumerate() {
            let last = index == cuts.len() - 2;
            let op = if index == 0 { data_opcode } else { opcode::CONTINUATION };
            self.frame(if last { 0x80 | op } else { op }, &payload[pair[0]..pair[1]]);
            if !last && self.rng.u8(0..4) == 0 {
                match self.rng.u8(0..6) {
                    0 => self.close(),
                    1 => self.anything(),
                    _ => self.ping_or_pong(),
                }
            }
        }
    }

    fn ping_or_pong(&mut self) {
        let op = if self.rng.bool() { opcode::PING } else { opcode::PONG };
        let len = match self.rng.u8(0..8) {
            0 => 125,
            1 => self.rng.usize(126..200),
            _ => self.rng.usize(0..20),
        };
        let payload: Vec<u8> = (0..len).map(|_| self.rng.u8(..)).collect();
        self.frame(0x80 | op, &payload);
    }

    fn close(&mut self) {
        let payload = match self.rng.u8(0..8) {
            0 => Vec::new(),
            1 => vec![self.rng.u8(..)],
            _ => {
                let code = match self.rng.u8(0..4) {
                    0 => self.rng.u16(..),
                    1 => self.rng.u16(990..1020),
                    2 => self.rng.u16(2990..5010),
                    _ => [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014][self.rng.usize(..12)],
                };
                let mut payload = code.to_be_bytes().to_vec();
                let reason_len = self.rng.usize(0..40);
                payload.extend(self.text(reason_len));
                if self.rng.u8(0..5) == 0 {
                    self.corrupt_utf8(&mut payload, 2);
                }
                payload
            }
        };
        self.frame(0x80 | opcode::CLOSE, &payload);
    }

    fn text_or_binary(&mut self, text: bool) -> Vec<u8> {
        let len = self.payload_len();
        if !text {
            return (0..len).map(|_| self.rng.u8(..)).collect();
        }
        let mut payload = self.text(len);
        if self.rng.u8(0..4) == 0 {
            self.corrupt_utf8(&mut payload, 0);
        }
        payload
    }

    /// About `len` bytes of valid UTF-8, with code points of every width.
    fn text(&mut self, len: usize) -> Vec<u8> {
        let mut text = String::with_capacity(len + 3);
        while text.len() < len {
            text.push(match self.rng.u8(0..5) {
                0 | 1 => self.rng.char(' '..='~'),
                2 => self.rng.char('\u{80}'..='\u{7FF}'),
                3 => self.rng.char('\u{800}'..='\u{FFFF}'),
                _ => self.rng.char('\u{10000}'..='\u{10FFFF}'),
            });
        }
        text.into_bytes()
    }

    /// Puts an invalid (or unfinished) sequence somewhere after `keep` bytes.
    fn corrupt_utf8(&mut self, payload: &mut Vec<u8>, keep: usize) {
        const SEQUENCES: [&[u8]; 10] = [
            &[0xFF],
            &[0x80],
            &[0xC0, 0x80],             // overlong
            &[0xE0, 0x80, 0x80],       // overlong
            &[0xED, 0xA0, 0x80],       // surrogate
            &[0xF4, 0x90, 0x80, 0x80], // past U+10FFFF
            &[0xF5],
            &[0xE2, 0x82],       // unfinished
            &[0xF0, 0x9F, 0x98], // unfinished
            &[0xC2],             // unfinished
        ];
        let sequence = SEQUENCES[self.rng.usize(..SEQUENCES.len())];
        let at = self.rng.usize(keep.min(payload.len())..=payload.len());
        payload.splice(at..at, sequence.iter().copied());
    }

    fn payload_of_some_size(&mut self) -> Vec<u8> {
        let len = self.payload_len();
        (0..len).map(|_| self.rng.u8(..)).collect()
    }

    /// A length around the interesting boundaries: small, 125/126, 65,535/65,536, the limit.
    fn payload_len(&mut self) -> usize {
        let max = self.max_message_size;
        match self.rng.u8(0..12) {
            0 => 0,
            1 => self.rng.usize(124..=127),
            2 => max.saturating_sub(1) + self.rng.usize(0..3),
            3 if max <= 4096 => self.rng.usize(0..=max + 1),
            4 if self.rng.u8(0..8) == 0 => self.rng.usize(65_534..=65_537),
            5 => self.rng.usize(0..(max / 3).clamp(1, 4096)),
            _ => self.rng.usize(0..40),
        }
    }

    /// A client frame: masked (mostly) with a random key, the length in its shortest form
    /// (mostly) or a longer one.
    fn frame(&mut self, first: u8, payload: &[u8]) {
        let masked = self.rng.u8(0..30) != 0;
        let mask: [u8; 4] = if self.rng.u8(0..10) == 0 {
            [0; 4]
        } else {
            self.rng.u32(..).to_be_bytes()
        };
        let mask_bit = if masked { 0x80 } else { 0 };
        self.bytes.push(first);
        let len = payload.len();
        match (self.rng.u8(0..12), len) {
            (0, _) if len <= 0xFFFF => {
                self.bytes.push(mask_bit | 126);
                self.bytes.extend_from_slice(&(len as u16).to_be_bytes());
            }
            (1, _) => {
                self.bytes.push(mask_bit | 127);
                self.bytes.extend_from_slice(&(len as u64).to_be_bytes());
            }
            (2, _) => {
                // A length this payload does not have, possibly with the top bit set.
                self.bytes.push(mask_bit | 127);
                self.bytes.extend_from_slice(&self.rng.u64(..).to_be_bytes());
            }
            (_, 0..=125) => self.bytes.push(mask_bit | len as u8),
            (_, 126..=0xFFFF) => {
                self.bytes.push(mask_bit | 126);
                self.bytes.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.bytes.push(mask_bit | 127);
                self.bytes.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            self.bytes.extend_from_slice(&mask);
            self.bytes
                .extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
        } else {
            self.bytes.extend_from_slice(payload);
        }
    }

    /// Bit flips, inserted or deleted bytes, truncation.
    fn mutate(&mut self) {
        if self.bytes.is_empty() {
            return;
        }
        if self.rng.u8(0..4) == 0 {
            for _ in 0..self.rng.usize(1..4) {
                let at = self.rng.usize(..self.bytes.len());
                self.bytes[at] ^= 1 << self.rng.u8(0..8);
            }
        }
        if self.rng.u8(0..10) == 0 {
            let at = self.rng.usize(..=self.bytes.len());
            let byte = self.rng.u8(..);
            self.bytes.insert(at, byte);
        }
        if self.rng.u8(0..10) == 0 {
            let at = self.rng.usize(..self.bytes.len());
            self.bytes.remove(at);
        }
        if self.rng.u8(0..4) == 0 {
            let len = self.rng.usize(..=self.bytes.len());
            self.bytes.truncate(len);
        }
    }
}
