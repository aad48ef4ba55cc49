//! Differential fuzzing of the lean engine's TLS (`src/server/lean_tls.rs`: [`LeanTls`],
//! wsscale's own driver of rustls' unbuffered server connection) against rustls' own
//! buffered `ServerConnection` — the same state machine behind the API rustls has
//! tested and shipped for years, and the one tokio-rustls (the stock engine) drives.
//!
//! A seeded generator writes a script per case: the client's configuration (TLS 1.3, 1.2
//! or both; a subset of the cipher suites; the key-exchange groups in any order, and a
//! server without the client's first one, so that some handshakes take a
//! HelloRetryRequest; a maximum record size from 32 bytes up; an
//! ALPN list that makes the ClientHello up to 60 KB), sometimes a resumed session;
//! application messages of 0 to 70 KB (records of every size, several per message), key
//! updates, the client's close_notify, the server's answers (`encrypt`) and its close at
//! points given as stream offsets — so also in the middle of a record, or of a handshake
//! message spread over records — and sometimes a change to the client's bytes at a stream
//! offset: the plaintext handshake re-cut into records of 1 byte and up, bit flips,
//! inserted or deleted bytes, random garbage, a truncation, a plaintext alert record, a
//! record header with another type or length. In a quarter of the TLS 1.3 cases the
//! harness takes the client's keys after the handshake (its key log) and writes the
//! records itself: a key update or another handshake message cut over several records
//! (with an application record in between, sometimes), padding, empty records, encrypted
//! alerts, oversized records, records without a content type.
//!
//! Each script runs in several worlds, each a client talking to its own server
//! interactively (the server's output goes back to its client): rustls' buffered
//! `ServerConnection` (the reference), and `LeanTls` with the client's bytes delivered
//! whole, in random reads, and byte by byte (in windows: around the start and the
//! change). Most cases use a seeded crypto provider (below: rustls' ring provider with
//! its randomness drawn from the case's seed and a stand-in key exchange; an Ed25519
//! certificate, whose signatures are deterministic), which makes every world's session
//! the same, byte for byte: the test asserts that each world's server received the same
//! stream and sent back the same bytes. One case in eight uses the server's real
//! configuration (`wsscale::server::tls::{self_signed, server_config}`: ECDSA P-256,
//! X25519, ring's randomness); those sessions differ in their keys and bytes but not in
//! their lengths, and the test compares what the clients saw.
//!
//! Compared between LeanTls (every read split) and the reference: the plaintext the server
//! delivered (and it is a prefix of what the client sent: a change to the bytes ends in an
//! error or an alert, never in other plaintext), the error and the read it came in (the
//! reads that raised it in every world must share a byte), whether and where the server
//! saw the peer's close_notify, what the server sent back (byte for byte, or as its
//! client decoded it: handshake finished, plaintext, alert, close). Checked on LeanTls
//! alone: nothing panics (a panic is a failure with its case); `encrypt` while
//! handshaking is refused and writes nothing, and `close` while handshaking writes
//! nothing; `held_bytes()` stays within [`MAX_HELD_BYTES`] after every read, within one
//! record ([`MAX_RECORD_BYTES`]) once the handshake is done unless the harness itself cuts
//! handshake messages across records, and is 0 after every whole record once the
//! handshake is done (when no handshake message is cut across records). Differences that
//! are understood and justified are listed in [`KNOWN_DIFFERENCES`]; today there is one (what the server's close sends after an
//! error rustls has no alert for).
//!
//! How the harness mirrors the server: after a failed read, or once the peer's
//! close_notify has come, the server calls `close` and reads no more
//! (`server::connection::Connection::finish_wake`, hyper's shutdown of
//! `LeanTlsStream`), but not while handshaking (`server::transport` drops a connection
//! whose handshake failed); it encrypts only once the handshake is done.
//!
//! `cargo test` runs it for 3 seconds with a fresh seed. For longer (the same variables as
//! tests/fuzz.rs, so one set of commands drives both harnesses):
//!
//! ```sh
//! WSSCALE_FUZZ_SECONDS=1200 nice -n 10 cargo test --release --test fuzz_tls -- --nocapture
//! WSSCALE_FUZZ_SEED=1234 ...        # start from a seed (the run prints its seed)
//! WSSCALE_FUZZ_CASE=5678 ...        # replay one failing case (the failure prints it)
//! ```

#[path = "common/fuzz_driver.rs"]
mod fuzz_driver;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::client::Resumption;
use rustls::crypto::ring::cipher_suite;
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret, SupportedKxGroup,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, NamedGroup, RootCertStore, ServerConfig, ServerConnection,
    SupportedCipherSuite, SupportedProtocolVersion,
};
use wsscale::server::lean_tls::LeanTls;

/// The most `LeanTls` may hold between reads. rustls' buffered connection holds at most
/// 0xffff bytes of ciphertext while it joins a handshake message spread over records
/// (`DeframerVecBuffer::prepare_read`: "We allow a maximum of 64k of buffered data for
/// handshake messages only"), and otherwise one record: 5 header bytes and at most
/// 2^14 + 2048 bytes of payload (rustls' `MAX_WIRE_SIZE`, 18,437, the TLS 1.2 bound;
/// TLS 1.3 records are shorter). A record held while a handshake message is joined is
/// part of those 0xffff bytes; so the bound is the larger of the two.
const MAX_HELD_BYTES: usize = 0xffff;

/// rustls' `MAX_WIRE_SIZE`: the largest record.
const MAX_RECORD_BYTES: usize = 5 + 16_384 + 2048;

/// Where LeanTls and the reference are allowed to differ. Every other observation must
/// be the same.
const KNOWN_DIFFERENCES: [KnownDifference; 1] = [KnownDifference {
    situation: "after an error rustls sends no alert for (IllegalTlsInnerPlaintext, \
                MessageInterleavedWithHandshakeMessage, an unexpected message, ..., or the buffer limit \
                while a handshake message is joined), the server's close sends a close_notify from the \
                reference (after the answer to a key update the peer requested, if one waits) and \
                nothing from LeanTls",
    why: "LeanTls does not call rustls again once receive has failed: rustls keeps its place in bytes \
          it failed on (a handshake message being joined), and calling it without them panics inside \
          rustls while calling it with them repeats the error (and, for some, a second fatal alert, \
          which rustls asserts against); a close_notify after a protocol error would also tell the \
          peer that the session ended in order (RFC 8446 section 6.1), which it did not",
    applies: close_notify_after_an_error_without_alert,
}];

struct KnownDifference {
    situation: &'static str,
    why: &'static str,
    /// Whether this row explains the difference between the reference and a LeanTls run.
    applies: fn(&Case, &WorldRun, &WorldRun) -> bool,
}

/// The reference failed on a read, and the only thing it sent after that read is one
/// protected record that its client took for a close_notify (after a key update's answer,
/// maybe); without those records, every observation is the same as LeanTls'.
fn close_notify_after_an_error_without_alert(case: &Case, reference: &WorldRun, lean: &WorldRun) -> bool {
    if reference.error.is_none() || lean.client_saw_close_notify {
        return false;
    }
    let spans = record_spans(&reference.answered);
    let Some(&(start, typ, length)) = spans.last() else {
        return false;
    };
    // One whole record, protected: application data in TLS 1.3, an alert in TLS 1.2.
    if !(typ == 0x17 || (typ == 0x15 && reference.tls12)) {
        return false;
    }
    // Its client took it for a close_notify; in raw cases (TLS 1.3, where the harness reads
    // nothing after the handshake) it has an alert's length: 2 bytes, the type and the tag.
    let is_close_notify = if reference.raw {
        length == 2 + 1 + 16
    } else {
        reference.client_saw_close_notify
    };
    if !is_close_notify {
        return false;
    }
    // Before it, maybe, the answer to a key update the peer requested, which rustls sends
    // with the next record it writes (TLS 1.3: the 5-byte message, the type and the tag).
    let start = match spans.len().checked_sub(2).map(|index| spans[index]) {
        Some((before, 0x17, 22)) if before == lean.answered.len() && !reference.tls12 => before,
        _ => start,
    };
    if start != lean.answered.len() {
        return false;
    }
    let mut adjusted = reference.clone();
    adjusted.answered.truncate(start);
    adjusted.client_saw_close_notify = false;
    differences(case, &adjusted, lean).is_empty()
}

/// The records in `bytes`: (start, type, length), whole records only, the last ending at
/// the end of `bytes`.
fn record_spans(bytes: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut spans = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let length = usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
        spans.push((at, bytes[at], length));
        at += 5 + length;
    }
    if at != bytes.len() {
        spans.clear();
    }
    spans
}

#[test]
fn lean_tls_decides_like_rustls_buffered_connection() {
    let finished = fuzz_driver::run(
        "fuzz_tls",
        |case_seed| Case::generate(case_seed).describe(),
        |case_seed, stats: &mut Stats| {
            let case = Case::generate(case_seed);
            check(&case, stats).map_err(|failure| format!("{failure}\ncase: {}", case.describe()))
        },
        |stats| format!(", {} reads", stats.reads),
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
        "fuzz_tls: {iterations} cases in {elapsed:.1?}, seed {seed}, no failure; {} LeanTls reads, {} encrypts, \
         {} closes; largest held {} bytes",
        stats.reads, stats.encrypts, stats.closes, stats.max_held
    );
    eprintln!(
        "fuzz_tls: cases: {} seeded (byte for byte), {} with the server's own configuration, {} TLS 1.2, \
         {} resumed, {} with a HelloRetryRequest, {} with raw records after the handshake, {} with the \
         handshake re-cut, {} with a change to the bytes",
        stats.seeded,
        stats.production,
        stats.tls12,
        stats.resumed,
        stats.retried,
        stats.raw,
        stats.recut,
        stats.mutated
    );
    eprintln!("fuzz_tls: how the servers ended: {:?}", stats.outcomes);
    for (row, hits) in KNOWN_DIFFERENCES.iter().zip(&stats.known_differences) {
        eprintln!(
            "fuzz_tls: {hits} cases of a known difference: {}; {}",
            row.situation, row.why
        );
    }
    assert!(iterations > 0, "no case ran");
}

#[derive(Debug, Default)]
struct Stats {
    /// How the reference server ended: open, closed by itself, the peer's close, or an error.
    outcomes: BTreeMap<String, u64>,
    known_differences: [u64; KNOWN_DIFFERENCES.len()],
    /// `LeanTls::receive` calls.
    reads: u64,
    encrypts: u64,
    closes: u64,
    max_held: usize,
    seeded: u64,
    production: u64,
    tls12: u64,
    resumed: u64,
    retried: u64,
    raw: u64,
    recut: u64,
    mutated: u64,
}

// ---------------------------------------------------------------------------------------
// The check of one case.

fn check(case: &Case, stats: &mut Stats) -> Result<(), String> {
    let reference = run_world(case, Kind::Reference)?;
    let mut lean_runs = Vec::new();
    for split in &case.splits {
        let run =
            run_world(case, Kind::Lean(split.clone())).map_err(|failure| format!("LeanTls, {split:?}: {failure}"))?;
        lean_runs.push((split, run));
    }
    check_properties(case, &reference).map_err(|failure| format!("reference: {failure}"))?;
    for (split, run) in &lean_runs {
        check_properties(case, run).map_err(|failure| format!("LeanTls, {split:?}: {failure}"))?;
        compare(case, &reference, run, stats)
            .map_err(|failure| format!("LeanTls, {split:?}, against the reference: {failure}"))?;
    }
    // The read that raised the error, or that brought the close_notify, holds one byte
    // that is the same in every world.
    let worlds: Vec<&WorldRun> = std::iter::once(&reference)
        .chain(lean_runs.iter().map(|(_, run)| run))
        .collect();
    let errors: Vec<_> = worlds
        .iter()
        .filter_map(|run| run.error.as_ref().map(|error| error.read))
        .collect();
    let closes: Vec<_> = worlds.iter().filter_map(|run| run.peer_closed).collect();
    for (what, reads) in [("error", errors), ("close_notify", closes)] {
        let from = reads.iter().map(|read| read.0).max();
        let to = reads.iter().map(|read| read.1).min();
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(format!("the reads that brought the {what} share no byte: {reads:?}"));
        }
    }
    for (_, run) in &lean_runs {
        stats.reads += run.reads;
        stats.encrypts += run.encrypts;
        stats.closes += run.closes;
        stats.max_held = stats.max_held.max(run.max_held);
    }
    match case.crypto {
        Crypto::Seeded => stats.seeded += 1,
        Crypto::Production => stats.production += 1,
    }
    stats.tls12 += u64::from(reference.tls12);
    stats.resumed += u64::from(reference.resumed);
    stats.retried += u64::from(reference.retried);
    stats.raw += u64::from(reference.raw);
    stats.recut += u64::from(case.recut.is_some());
    stats.mutated += u64::from(case.mutation.is_some());
    *stats.outcomes.entry(reference.outcome()).or_default() += 1;
    Ok(())
}

/// What one world observed.
#[derive(Debug, Default, Clone)]
struct WorldRun {
    /// The client's bytes as the server received them (after the changes).
    delivered: Vec<u8>,
    /// The server's bytes, as its client received them.
    answered: Vec<u8>,
    /// The plaintext the client sent (up to its close_notify), and the server delivered.
    sent_plaintext: Vec<u8>,
    server_plaintext: Vec<u8>,
    /// The plaintext the server encrypted, and its client decrypted.
    server_sent_plaintext: Vec<u8>,
    client_plaintext: Vec<u8>,
    error: Option<ErrorAt>,
    /// The read (stream offsets, end excluded) in which the peer's close_notify was seen.
    peer_closed: Option<(usize, usize)>,
    /// The server closed (close_notify) or dropped the connection.
    server_ended: Option<&'static str>,
    /// What the server's actions did, in order.
    actions: Vec<String>,
    client_handshake_done: bool,
    client_error: Option<String>,
    client_saw_close_notify: bool,
    /// How this world's session went (for the statistics).
    tls12: bool,
    resumed: bool,
    retried: bool,
    raw: bool,
    /// LeanTls only.
    reads: u64,
    encrypts: u64,
    closes: u64,
    max_held: usize,
}

impl WorldRun {
    fn outcome(&self) -> String {
        match (&self.error, self.server_ended, self.peer_closed) {
            (Some(error), _, _) => format!("error: {}", error.error.kind()),
            (None, _, Some(_)) => "peer's close_notify".to_owned(),
            (None, Some(ended), None) => ended.to_owned(),
            (None, None, None) => "open".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct ErrorAt {
    error: ServerError,
    /// The read that raised it: stream offsets, end excluded.
    read: (usize, usize),
}

/// A server's error: from rustls (both servers), or from the buffered connection's
/// `read_tls` (its buffer limit).
#[derive(Debug, Clone, PartialEq)]
enum ServerError {
    Tls(rustls::Error),
    Read(String),
}

impl ServerError {
    /// The error's name without its details, for the statistics.
    fn kind(&self) -> String {
        let text = format!("{self:?}");
        text.split(['(', '{', ' '])
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
            .trim()
            .to_owned()
    }
}

/// Properties of one world on its own.
fn check_properties(case: &Case, run: &WorldRun) -> Result<(), String> {
    if !run.sent_plaintext.starts_with(&run.server_plaintext) {
        return Err(format!(
            "the server delivered plaintext the client did not send: {} bytes, the first {} of them sent",
            run.server_plaintext.len(),
            common_prefix(&run.sent_plaintext, &run.server_plaintext)
        ));
    }
    if !run.server_sent_plaintext.starts_with(&run.client_plaintext) {
        return Err(format!(
            "the client decrypted plaintext the server did not send: {} bytes, the first {} of them sent",
            run.client_plaintext.len(),
            common_prefix(&run.server_sent_plaintext, &run.client_plaintext)
        ));
    }
    if !case.well_formed() {
        return Ok(());
    }
    // Without a change to its bytes or a record written to break a rule, the session works.
    if let Some(error) = &run.error
        && !error.error.is_buffer_limit()
    {
        return Err(format!("an error without a change to the bytes: {error:?}"));
    }
    if run.error.is_none() {
        if !run.client_handshake_done && run.server_ended != Some("dropped while handshaking") {
            return Err("the client did not finish its handshake".to_owned());
        }
        if let Some(error) = &run.client_error {
            return Err(format!("the client failed without a change to the bytes: {error}"));
        }
        if run.server_ended.is_none() && run.server_plaintext != run.sent_plaintext {
            return Err(format!(
                "the server delivered {} bytes of the {} sent",
                run.server_plaintext.len(),
                run.sent_plaintext.len()
            ));
        }
        // In raw cases the harness is the client after the handshake and reads nothing.
        if !run.raw && run.client_plaintext != run.server_sent_plaintext {
            return Err(format!(
                "the client decrypted {} bytes of the {} the server sent",
                run.client_plaintext.len(),
                run.server_sent_plaintext.len()
            ));
        }
    }
    Ok(())
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// LeanTls against the reference, on the same script.
fn compare(case: &Case, reference: &WorldRun, lean: &WorldRun, stats: &mut Stats) -> Result<(), String> {
    let differences = differences(case, reference, lean);
    if differences.is_empty() {
        return Ok(());
    }
    for (index, row) in KNOWN_DIFFERENCES.iter().enumerate() {
        if (row.applies)(case, reference, lean) {
            stats.known_differences[index] += 1;
            return Ok(());
        }
    }
    Err(format!(
        "{}\nreference ended: {}; LeanTls ended: {}",
        differences.join("\n"),
        reference.outcome(),
        lean.outcome()
    ))
}

/// Every observation in which LeanTls and the reference differ.
fn differences(case: &Case, reference: &WorldRun, lean: &WorldRun) -> Vec<String> {
    let mut differences = Vec::new();
    match case.crypto {
        Crypto::Seeded => {
            if reference.delivered != lean.delivered {
                differences.push(format!(
                    "the servers received different streams ({} and {} bytes, the same up to byte {})",
                    reference.delivered.len(),
                    lean.delivered.len(),
                    common_prefix(&reference.delivered, &lean.delivered)
                ));
            }
            if reference.answered != lean.answered {
                differences.push(format!(
                    "the servers sent back different bytes ({} and {} bytes, the same up to byte {}); \
                     reference ends {:02x?}, LeanTls ends {:02x?}",
                    reference.answered.len(),
                    lean.answered.len(),
                    common_prefix(&reference.answered, &lean.answered),
                    &reference.answered[reference.answered.len().saturating_sub(40)..],
                    &lean.answered[lean.answered.len().saturating_sub(40)..]
                ));
            }
        }
        Crypto::Production => {
            if reference.delivered.len() != lean.delivered.len() {
                differences.push(format!(
                    "the servers received streams of different lengths: {} and {} bytes",
                    reference.delivered.len(),
                    lean.delivered.len()
                ));
            }
        }
    }
    if reference.server_plaintext != lean.server_plaintext {
        differences.push(format!(
            "the servers delivered different plaintext: {} and {} bytes",
            reference.server_plaintext.len(),
            lean.server_plaintext.len()
        ));
    }
    let same_error = match (&reference.error, &lean.error) {
        (Some(a), Some(b)) => a.error.same_as(&b.error),
        (None, None) => true,
        _ => false,
    };
    if !same_error {
        differences.push(format!(
            "errors differ: reference {:?}, LeanTls {:?}",
            reference.error, lean.error
        ));
    }
    if reference.peer_closed.is_some() != lean.peer_closed.is_some() {
        differences.push(format!(
            "close_notify seen: reference {:?}, LeanTls {:?}",
            reference.peer_closed, lean.peer_closed
        ));
    }
    if reference.server_ended != lean.server_ended {
        differences.push(format!(
            "the servers ended differently: reference {:?}, LeanTls {:?}",
            reference.server_ended, lean.server_ended
        ));
    }
    if reference.actions != lean.actions {
        differences.push(format!(
            "the servers' actions went differently: reference {:?}, LeanTls {:?}",
            reference.actions, lean.actions
        ));
    }
    let client_view = |run: &WorldRun| {
        (
            run.client_handshake_done,
            run.client_error.clone(),
            run.client_saw_close_notify,
            run.client_plaintext.len(),
        )
    };
    if client_view(reference) != client_view(lean) || reference.client_plaintext != lean.client_plaintext {
        differences.push(format!(
            "the clients saw different answers (handshake done, error, close_notify, plaintext bytes): \
             reference {:?}, LeanTls {:?}",
            client_view(reference),
            client_view(lean)
        ));
    }
    differences
}

// ---------------------------------------------------------------------------------------
// One world: a client, a pipe that may change its bytes, and a server.

#[derive(Debug, Clone)]
enum Kind {
    Reference,
    Lean(Split),
}

/// The server under test or the reference, behind the calls the lean engine makes.
enum Server {
    Lean(Box<LeanTls>),
    Reference {
        connection: Box<ServerConnection>,
        peer_closed: bool,
    },
}

impl Server {
    fn receive(&mut self, chunk: &[u8], plaintext: &mut Vec<u8>, outgoing: &mut Vec<u8>) -> Result<(), ServerError> {
        match self {
            Server::Lean(tls) => {
                let mut incoming = chunk.to_vec();
                tls.receive(&mut incoming, plaintext, outgoing)
                    .map_err(ServerError::Tls)
            }
            Server::Reference {
                connection,
                peer_closed,
            } => {
                let mut rest = chunk;
                let mut result = Ok(());
                while !rest.is_empty() {
                    match connection.read_tls(&mut rest) {
                        // After a close_notify: what follows is ignored.
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(error) => {
                            result = Err(ServerError::Read(error.to_string()));
                            break;
                        }
                    }
                    let processed = connection.process_new_packets();
                    drain_plaintext(connection.reader(), plaintext);
                    match processed {
                        Ok(state) => *peer_closed |= state.peer_has_closed(),
                        Err(error) => {
                            result = Err(ServerError::Tls(error));
                            break;
                        }
                    }
                }
                write_all_tls(&mut **connection, outgoing);
                result
            }
        }
    }

    fn encrypt(&mut self, data: &[u8], outgoing: &mut Vec<u8>) -> Result<(), ServerError> {
        match self {
            Server::Lean(tls) => tls.encrypt(data, outgoing).map_err(ServerError::Tls),
            Server::Reference { connection, .. } => {
                connection
                    .writer()
                    .write_all(data)
                    .map_err(|error| ServerError::Read(error.to_string()))?;
                write_all_tls(&mut **connection, outgoing);
                Ok(())
            }
        }
    }

    fn close(&mut self, outgoing: &mut Vec<u8>) {
        match self {
            Server::Lean(tls) => tls.close(outgoing),
            Server::Reference { connection, .. } => {
                connection.send_close_notify();
                write_all_tls(&mut **connection, outgoing);
            }
        }
    }

    fn is_handshaking(&self) -> bool {
        match self {
            Server::Lean(tls) => tls.is_handshaking(),
            Server::Reference { connection, .. } => connection.is_handshaking(),
        }
    }

    fn peer_closed(&self) -> bool {
        match self {
            Server::Lean(tls) => tls.peer_closed(),
            Server::Reference { peer_closed, .. } => *peer_closed,
        }
    }
}

/// The two kinds of buffered rustls connection, for what they have to send.
trait Wire {
    fn wants_write(&self) -> bool;
    fn write_tls(&mut self, out: &mut dyn Write) -> io::Result<usize>;
}

impl Wire for ClientConnection {
    fn wants_write(&self) -> bool {
        (**self).wants_write()
    }

    fn write_tls(&mut self, out: &mut dyn Write) -> io::Result<usize> {
        (**self).write_tls(out)
    }
}

impl Wire for ServerConnection {
    fn wants_write(&self) -> bool {
        (**self).wants_write()
    }

    fn write_tls(&mut self, out: &mut dyn Write) -> io::Result<usize> {
        (**self).write_tls(out)
    }
}

fn write_all_tls(connection: &mut impl Wire, outgoing: &mut Vec<u8>) {
    while connection.wants_write() {
        connection.write_tls(outgoing).expect("writing to a Vec");
    }
}

fn drain_plaintext(mut reader: rustls::Reader<'_>, plaintext: &mut Vec<u8>) -> bool {
    let mut buffer = [0u8; 4096];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return true,
            Ok(n) => plaintext.extend_from_slice(&buffer[..n]),
            Err(_) => return false,
        }
    }
}

struct World<'a> {
    case: &'a Case,
    kind: Kind,
    server: Server,
    client: Option<ClientConnection>,
    keys: Arc<KeyCapture>,
    pipe: Pipe,
    splitter: Splitter,
    /// Offset-driven actions not yet taken (sorted by offset).
    actions: std::collections::VecDeque<(usize, Action)>,
    /// Server output not yet given to the client.
    outgoing: Vec<u8>,
    /// The server still reads.
    alive: bool,
    run: WorldRun,
}

fn run_world(case: &Case, kind: Kind) -> Result<WorldRun, String> {
    DRAWS.with(|draws| *draws.borrow_mut() = fastrand::Rng::with_seed(case.seed ^ 0x5eed));
    let keys = Arc::new(KeyCapture::default());
    let (server_config, client_config) = configs(case, &keys);
    let mut run = WorldRun::default();
    if case.resume {
        // A first, unchanged session through the reference leaves a ticket with the
        // client and the session in the server configuration's cache (unless its
        // ClientHello is over rustls' limit: then the session is a full one).
        run.resumed = warm_up(&server_config, &client_config)?;
    }
    let server = match &kind {
        Kind::Reference => {
            let mut connection = ServerConnection::new(server_config).map_err(|error| error.to_string())?;
            connection.set_buffer_limit(None);
            Server::Reference {
                connection: Box::new(connection),
                peer_closed: false,
            }
        }
        Kind::Lean(_) => Server::Lean(Box::new(
            LeanTls::new(server_config).map_err(|error| error.to_string())?,
        )),
    };
    let mut client = ClientConnection::new(client_config, ServerName::try_from("localhost").unwrap())
        .map_err(|error| format!("client: {error}"))?;
    client.set_buffer_limit(None);
    let splitter = match &kind {
        Kind::Reference => Splitter::new(&Split::Whole),
        Kind::Lean(split) => Splitter::new(split),
    };
    let mut world = World {
        case,
        kind,
        server,
        client: Some(client),
        keys,
        pipe: Pipe::new(case),
        splitter,
        actions: case.actions.iter().cloned().collect(),
        outgoing: Vec::new(),
        alive: true,
        run,
    };
    world.run()?;
    Ok(world.run)
}

impl World<'_> {
    fn is_lean(&self) -> bool {
        matches!(self.kind, Kind::Lean(_))
    }

    fn run(&mut self) -> Result<(), String> {
        self.pump()?;
        if let Some(client) = &self.client {
            self.run.tls12 = client.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2);
        }
        if self.case.raw {
            return self.run_raw();
        }
        for step in &self.case.steps {
            if !self.alive {
                break;
            }
            let client = self.client.as_mut().expect("a client");
            match step {
                Step::Write(data) => {
                    if client.writer().write_all(data).is_ok() && !self.pipe.client_closed {
                        self.run.sent_plaintext.extend_from_slice(data);
                    }
                }
                Step::KeyUpdate => {
                    let _ = client.refresh_traffic_keys();
                }
                Step::Close => {
                    client.send_close_notify();
                    self.pipe.client_closed = true;
                }
                Step::Flush => self.pump()?,
                Step::Server(action) => {
                    self.pump()?;
                    self.act(action)?;
                    self.pump()?;
                }
            }
        }
        self.pump()
    }

    /// Moves bytes both ways until neither side has anything to say.
    fn pump(&mut self) -> Result<(), String> {
        for _ in 0..64 {
            let mut flight = Vec::new();
            if let Some(client) = &mut self.client {
                write_all_tls(client, &mut flight);
            }
            let moved = !flight.is_empty();
            if moved {
                self.send(flight, None)?;
            }
            let answered = !self.outgoing.is_empty();
            self.answer_client();
            if !moved && !answered {
                return Ok(());
            }
        }
        Err("the session did not settle in 64 rounds".to_owned())
    }

    /// The client's bytes through the pipe (which may change them) to the server.
    fn send(&mut self, flight: Vec<u8>, clean_ends: Option<Vec<usize>>) -> Result<(), String> {
        if !self.alive {
            return Ok(());
        }
        let (bytes, clean) = self.pipe.transform(flight, clean_ends, self.run.delivered.len());
        self.pipe.clean_boundaries.extend(clean);
        self.feed(&bytes)
    }

    /// Feeds bytes to the server in this world's reads, cut where an action is due.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        let start = self.run.delivered.len();
        self.run.delivered.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            self.run_due_actions(start + at)?;
            if at == bytes.len() || !self.alive {
                return Ok(());
            }
            let mut end = at + self.splitter.next(start + at, bytes.len() - at).max(1);
            end = end.min(bytes.len());
            if let Some((due, _)) = self.actions.front()
                && *due > start + at
                && *due < start + end
            {
                end = due - start;
            }
            self.receive(start + at, &bytes[at..end])?;
            at = end;
        }
    }

    fn receive(&mut self, from: usize, chunk: &[u8]) -> Result<(), String> {
        let to = from + chunk.len();
        let result = self
            .server
            .receive(chunk, &mut self.run.server_plaintext, &mut self.outgoing);
        if let Server::Lean(tls) = &self.server {
            self.run.reads += 1;
            let held = tls.held_bytes();
            self.run.max_held = self.run.max_held.max(held);
            if held > MAX_HELD_BYTES {
                return Err(format!(
                    "holds {held} bytes after the read of bytes {from}..{to}, over {MAX_HELD_BYTES}"
                ));
            }
            if result.is_ok() && held > MAX_RECORD_BYTES && !tls.is_handshaking() && !self.run.raw {
                return Err(format!(
                    "holds {held} bytes after the read of bytes {from}..{to}, after the handshake, over one \
                     record ({MAX_RECORD_BYTES})"
                ));
            }
            if result.is_ok() && held > 0 && !tls.is_handshaking() && self.pipe.clean_boundaries.contains(&to) {
                return Err(format!(
                    "holds {held} bytes after the read of bytes {from}..{to}, which ends a whole record after \
                     the handshake"
                ));
            }
        }
        match result {
            Err(error) => {
                self.run.error = Some(ErrorAt {
                    error,
                    read: (from, to),
                });
                self.end("error");
            }
            Ok(()) if self.server.peer_closed() => {
                self.run.peer_closed = Some((from, to));
                self.end("after the peer's close_notify");
            }
            Ok(()) => {}
        }
        Ok(())
    }

    /// The server is done with this connection: a close_notify (not while handshaking:
    /// transport.rs drops a connection whose handshake fails), then no more reads.
    fn end(&mut self, why: &'static str) {
        if !self.server.is_handshaking() {
            self.close_server();
        }
        self.run.server_ended = Some(why);
        self.alive = false;
    }

    fn close_server(&mut self) {
        if self.is_lean() {
            self.run.closes += 1;
        }
        self.server.close(&mut self.outgoing);
    }

    fn run_due_actions(&mut self, offset: usize) -> Result<(), String> {
        while self.alive
            && let Some((due, _)) = self.actions.front()
            && *due <= offset
        {
            let (_, action) = self.actions.pop_front().unwrap();
            self.act(&action)?;
        }
        Ok(())
    }

    /// The server answers (encrypt) or shuts down (close), as the lean engine does between
    /// reads.
    fn act(&mut self, action: &Action) -> Result<(), String> {
        if !self.alive {
            return Ok(());
        }
        let handshaking = self.server.is_handshaking();
        match action {
            Action::Encrypt(data) if handshaking => {
                // The engine never encrypts before the handshake is done; LeanTls refuses.
                if let Server::Lean(tls) = &mut self.server {
                    let before = self.outgoing.len();
                    self.run.encrypts += 1;
                    if tls.encrypt(data, &mut self.outgoing).is_ok() || self.outgoing.len() != before {
                        return Err(format!(
                            "encrypt while handshaking was not refused, or wrote {} bytes",
                            self.outgoing.len() - before
                        ));
                    }
                }
                self.run.actions.push("encrypt refused while handshaking".to_owned());
            }
            Action::Encrypt(data) => {
                if self.is_lean() {
                    self.run.encrypts += 1;
                }
                match self.server.encrypt(data, &mut self.outgoing) {
                    Ok(()) => {
                        self.run.server_sent_plaintext.extend_from_slice(data);
                        self.run.actions.push(format!("encrypted {} bytes", data.len()));
                    }
                    Err(error) => self.run.actions.push(format!("encrypt failed: {error:?}")),
                }
            }
            Action::Close if handshaking => {
                // Not something the engine does (it drops the connection); LeanTls must
                // not fail or write anything.
                if let Server::Lean(tls) = &mut self.server {
                    let before = self.outgoing.len();
                    self.run.closes += 1;
                    tls.close(&mut self.outgoing);
                    if self.outgoing.len() != before {
                        return Err(format!(
                            "close while handshaking wrote {} bytes",
                            self.outgoing.len() - before
                        ));
                    }
                }
                self.run.actions.push("dropped while handshaking".to_owned());
                self.run.server_ended = Some("dropped while handshaking");
                self.alive = false;
            }
            Action::Close => {
                self.close_server();
                self.run.actions.push("closed".to_owned());
                self.run.server_ended = Some("closed");
                self.alive = false;
            }
        }
        Ok(())
    }

    /// The server's output to its client.
    fn answer_client(&mut self) {
        let answer = std::mem::take(&mut self.outgoing);
        if answer.is_empty() {
            return;
        }
        self.run.answered.extend_from_slice(&answer);
        let Some(client) = &mut self.client else { return };
        if self.run.client_error.is_some() {
            return;
        }
        let mut rest = &answer[..];
        while !rest.is_empty() {
            match client.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    self.run.client_error = Some(format!("read_tls: {error}"));
                    break;
                }
            }
            let processed = client.process_new_packets();
            drain_plaintext(client.reader(), &mut self.run.client_plaintext);
            match processed {
                Ok(state) => self.run.client_saw_close_notify |= state.peer_has_closed(),
                Err(error) => {
                    self.run.client_error = Some(format!("{error:?}"));
                    break;
                }
            }
        }
        self.run.client_handshake_done |= !client.is_handshaking();
        if client.handshake_kind() == Some(rustls::HandshakeKind::FullWithHelloRetryRequest) {
            self.run.retried = true;
        }
    }

    // -----------------------------------------------------------------------------------
    // Raw records after the handshake (TLS 1.3).

    fn run_raw(&mut self) -> Result<(), String> {
        let Some(client) = self.client.as_ref() else {
            return Ok(());
        };
        if !self.alive || client.is_handshaking() || self.run.client_error.is_some() || self.server.is_handshaking() {
            return Ok(());
        }
        let Some(suite) = client.negotiated_cipher_suite() else {
            return Ok(());
        };
        if client.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return Ok(());
        }
        let Some(secret) = self.keys.client_traffic_secret() else {
            return Err("no CLIENT_TRAFFIC_SECRET_0 in the key log".to_owned());
        };
        self.run.raw = true;
        // From here on the harness is the client: it has sent nothing under these keys yet.
        self.client = None;
        let mut raw = RawClient::new(suite.suite(), &secret);
        let mut flight = RawFlight::default();
        for step in &self.case.raw_steps {
            if !self.alive {
                break;
            }
            match step {
                RawStep::Flush => self.send_raw(&mut flight)?,
                RawStep::Server(action) => {
                    self.send_raw(&mut flight)?;
                    self.act(action)?;
                    self.answer_client();
                }
                step => raw.write(step, &mut flight, &mut self.run.sent_plaintext),
            }
        }
        self.send_raw(&mut flight)
    }

    fn send_raw(&mut self, flight: &mut RawFlight) -> Result<(), String> {
        let RawFlight { bytes, clean_ends } = std::mem::take(flight);
        if !bytes.is_empty() {
            self.send(bytes, Some(clean_ends))?;
        }
        self.answer_client();
        Ok(())
    }
}

/// A first session, to be resumed; false if the reference refused the client's first
/// flight for its size (a ClientHello in small records over rustls' 64 KiB limit).
fn warm_up(server_config: &Arc<ServerConfig>, client_config: &Arc<ClientConfig>) -> Result<bool, String> {
    let mut server = ServerConnection::new(server_config.clone()).map_err(|error| error.to_string())?;
    let mut client = ClientConnection::new(client_config.clone(), ServerName::try_from("localhost").unwrap())
        .map_err(|error| error.to_string())?;
    for _ in 0..8 {
        let mut bytes = Vec::new();
        write_all_tls(&mut client, &mut bytes);
        // read_tls takes a part at a time.
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            if let Err(error) = server.read_tls(&mut rest) {
                let error = ServerError::Read(error.to_string());
                if error.is_buffer_limit() {
                    return Ok(false);
                }
                return Err(format!("warm-up: {error:?}"));
            }
            server
                .process_new_packets()
                .map_err(|error| format!("warm-up: {error}"))?;
        }
        let mut answer = Vec::new();
        write_all_tls(&mut server, &mut answer);
        let mut rest = &answer[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).map_err(|error| error.to_string())?;
            client
                .process_new_packets()
                .map_err(|error| format!("warm-up: {error}"))?;
        }
        if bytes.is_empty() && answer.is_empty() {
            break;
        }
    }
    if client.is_handshaking() {
        return Err("the warm-up session did not finish its handshake".to_owned());
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------
// The pipe: the client's bytes, re-cut or changed on their way to the server.

struct Pipe {
    recut: Option<usize>,
    mutation: Option<(usize, Mutation)>,
    /// Decides the sizes of re-cut records.
    rng: fastrand::Rng,
    /// A ChangeCipherSpec has passed: the handshake records after it are encrypted.
    past_plaintext: bool,
    /// Offset in the stream before the change (equal to the delivered offset until then).
    offset: usize,
    /// The change has been made: the stream after it has no meaningful boundaries.
    changed: bool,
    /// Everything after a truncation is lost.
    truncated: bool,
    /// The client sent its close_notify: what it writes after is not expected to arrive.
    client_closed: bool,
    /// Stream offsets that end a whole record and no handshake message is cut there.
    clean_boundaries: BTreeSet<usize>,
}

impl Pipe {
    fn new(case: &Case) -> Pipe {
        Pipe {
            recut: case.recut,
            mutation: case.mutation.clone(),
            rng: fastrand::Rng::with_seed(case.seed ^ 0x919e),
            past_plaintext: false,
            offset: 0,
            changed: false,
            truncated: false,
            client_closed: false,
            clean_boundaries: BTreeSet::new(),
        }
    }

    /// The bytes to deliver for `flight`, and the clean boundaries among them (as stream
    /// offsets from `delivered`). `clean_ends`, if given, lists the record ends (in the
    /// flight) where no handshake message is cut; otherwise every record end is.
    fn transform(
        &mut self,
        flight: Vec<u8>,
        clean_ends: Option<Vec<usize>>,
        delivered: usize,
    ) -> (Vec<u8>, Vec<usize>) {
        if self.truncated {
            return (Vec::new(), Vec::new());
        }
        let mut bytes = match self.recut {
            Some(max) if !self.past_plaintext => self.recut_handshake(&flight, max),
            _ => flight,
        };
        let mut ends = clean_ends.unwrap_or_else(|| record_ends(&bytes));
        if !self.past_plaintext && record_types(&bytes).any(|typ| typ == 0x14) {
            self.past_plaintext = true;
        }
        if self.changed {
            self.offset += bytes.len();
            return (bytes, Vec::new());
        }
        if let Some((at, mutation)) = &self.mutation
            && *at < self.offset + bytes.len()
        {
            let local = at.saturating_sub(self.offset);
            ends.retain(|end| *end <= local);
            let length = bytes.len();
            mutation.apply(&mut bytes, local);
            if matches!(mutation, Mutation::Truncate) {
                self.truncated = true;
            }
            self.changed = true;
            self.offset += length;
        } else {
            self.offset += bytes.len();
        }
        (bytes, ends.into_iter().map(|end| delivered + end).collect())
    }

    /// Plaintext handshake records (before the first ChangeCipherSpec) re-cut into
    /// records of 1 to `max` bytes.
    fn recut_handshake(&mut self, flight: &[u8], max: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(flight.len() * 2);
        let mut at = 0;
        while at + 5 <= flight.len() {
            let length = usize::from(u16::from_be_bytes([flight[at + 3], flight[at + 4]]));
            let end = (at + 5 + length).min(flight.len());
            if flight[at] != 0x16 {
                if flight[at] == 0x14 {
                    out.extend_from_slice(&flight[at..]);
                    return out;
                }
                out.extend_from_slice(&flight[at..end]);
                at = end;
                continue;
            }
            // Join the run of handshake records, then cut it again.
            let version = [flight[at + 1], flight[at + 2]];
            let mut payload = Vec::new();
            while at + 5 <= flight.len() && flight[at] == 0x16 {
                let length = usize::from(u16::from_be_bytes([flight[at + 3], flight[at + 4]]));
                let end = (at + 5 + length).min(flight.len());
                payload.extend_from_slice(&flight[at + 5..end]);
                at = end;
            }
            let mut cut = 0;
            while cut < payload.len() {
                let size = self.rng.usize(1..=max).min(payload.len() - cut);
                out.push(0x16);
                out.extend_from_slice(&version);
                out.extend_from_slice(&(size as u16).to_be_bytes());
                out.extend_from_slice(&payload[cut..cut + size]);
                cut += size;
            }
        }
        out.extend_from_slice(&flight[at.min(flight.len())..]);
        out
    }
}

/// The offsets (in `bytes`) where each whole record ends.
fn record_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let end = at + 5 + usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
        if end > bytes.len() {
            break;
        }
        ends.push(end);
        at = end;
    }
    ends
}

fn record_types(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + 5 > bytes.len() {
            return None;
        }
        let typ = bytes[at];
        at += 5 + usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
        Some(typ)
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Flip these bits (offset from the change's point, bit).
    Flip(Vec<(usize, u8)>),
    Insert(Vec<u8>),
    Delete(usize),
    Truncate,
    /// A plaintext alert record (level, description) inserted.
    Alert(u8, u8),
    /// The header of the first record that starts at or after the point: its type and/or
    /// its length replaced.
    Header {
        typ: Option<u8>,
        length: Option<u16>,
    },
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>, at: usize) {
        let at = at.min(bytes.len());
        match self {
            Mutation::Flip(bits) => {
                for (offset, bit) in bits {
                    if let Some(byte) = bytes.get_mut(at + offset) {
                        *byte ^= 1 << bit;
                    }
                }
            }
            Mutation::Insert(inserted) => {
                bytes.splice(at..at, inserted.iter().copied());
            }
            Mutation::Delete(count) => {
                bytes.drain(at..(at + count).min(bytes.len()));
            }
            Mutation::Truncate => bytes.truncate(at),
            Mutation::Alert(level, description) => {
                bytes.splice(at..at, [0x15, 0x03, 0x03, 0x00, 0x02, *level, *description]);
            }
            Mutation::Header { typ, length } => {
                let mut start = 0;
                while start + 5 <= bytes.len() && start < at {
                    start += 5 + usize::from(u16::from_be_bytes([bytes[start + 3], bytes[start + 4]]));
                }
                if start + 5 <= bytes.len() {
                    if let Some(typ) = typ {
                        bytes[start] = *typ;
                    }
                    if let Some(length) = length {
                        bytes[start + 3..start + 5].copy_from_slice(&length.to_be_bytes());
                    }
                }
            }
        }
    }
}

/// How a world cuts the stream into reads.
#[derive(Debug, Clone)]
enum Split {
    /// Each flight in one read.
    Whole,
    /// Reads of random sizes.
    Random(u64),
    /// One byte at a time inside these windows of the stream, whole flights elsewhere.
    Bytewise(Vec<(usize, usize)>),
}

struct Splitter {
    split: Split,
    rng: fastrand::Rng,
}

impl Splitter {
    fn new(split: &Split) -> Splitter {
        let seed = match split {
            Split::Random(seed) => *seed,
            _ => 0,
        };
        Splitter {
            split: split.clone(),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The size of the next read at stream offset `at`, with `left` bytes in the flight.
    fn next(&mut self, at: usize, left: usize) -> usize {
        match &self.split {
            Split::Whole => left,
            Split::Random(_) => match self.rng.u8(0..4) {
                0 => self.rng.usize(1..4),
                1 => self.rng.usize(1..64),
                2 => self.rng.usize(1..=4096),
                _ => self.rng.usize(1..=20_000),
            },
            Split::Bytewise(windows) => {
                if windows.iter().any(|(from, to)| (*from..*to).contains(&at)) {
                    return 1;
                }
                let next_window = windows.iter().map(|(from, _)| *from).filter(|from| *from > at).min();
                next_window.map_or(left, |from| (from - at).min(left))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The raw client: TLS 1.3 records written by the harness with the client's keys.

/// A flight of raw records and the record ends where no handshake message is cut.
#[derive(Default)]
struct RawFlight {
    bytes: Vec<u8>,
    clean_ends: Vec<usize>,
}

struct RawClient {
    aead: &'static ring::aead::Algorithm,
    hkdf: ring::hkdf::Algorithm,
    secret: Vec<u8>,
    key: ring::aead::LessSafeKey,
    iv: [u8; 12],
    sequence: u64,
    /// A handshake message is cut: the records after it until its end are not clean.
    open_handshake: bool,
    /// A handshake message's length said more or less than its body: no record end is
    /// clean from there on (the server waits for the rest, or reads the body as messages).
    framing_lost: bool,
}

struct OkmLength(usize);

impl ring::hkdf::KeyType for OkmLength {
    fn len(&self) -> usize {
        self.0
    }
}

impl RawClient {
    fn new(suite: CipherSuite, secret: &[u8]) -> RawClient {
        let (aead, hkdf) = match suite {
            CipherSuite::TLS13_AES_128_GCM_SHA256 => (&ring::aead::AES_128_GCM, ring::hkdf::HKDF_SHA256),
            CipherSuite::TLS13_AES_256_GCM_SHA384 => (&ring::aead::AES_256_GCM, ring::hkdf::HKDF_SHA384),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => (&ring::aead::CHACHA20_POLY1305, ring::hkdf::HKDF_SHA256),
            other => panic!("not a TLS 1.3 suite: {other:?}"),
        };
        let (key, iv) = Self::traffic_keys(aead, hkdf, secret);
        RawClient {
            aead,
            hkdf,
            secret: secret.to_vec(),
            key,
            iv,
            sequence: 0,
            open_handshake: false,
            framing_lost: false,
        }
    }

    /// RFC 8446 section 7.3.
    fn traffic_keys(
        aead: &'static ring::aead::Algorithm,
        hkdf: ring::hkdf::Algorithm,
        secret: &[u8],
    ) -> (ring::aead::LessSafeKey, [u8; 12]) {
        let key = expand_label(hkdf, secret, "key", aead.key_len());
        let iv = expand_label(hkdf, secret, "iv", 12);
        (
            ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(aead, &key).unwrap()),
            iv.try_into().unwrap(),
        )
    }

    /// The next generation of keys after a KeyUpdate (RFC 8446 section 7.2).
    fn update_keys(&mut self) {
        self.secret = expand_label(
            self.hkdf,
            &self.secret,
            "traffic upd",
            ring::hkdf::KeyType::len(&self.hkdf),
        );
        (self.key, self.iv) = Self::traffic_keys(self.aead, self.hkdf, &self.secret);
        self.sequence = 0;
    }

    /// One record of `content` with inner type `typ` and `padding` zeros; `typ` None for
    /// an inner plaintext of zeros only.
    fn record(&mut self, content: &[u8], typ: Option<u8>, padding: usize, flight: &mut RawFlight) {
        let mut inner = content.to_vec();
        inner.extend(typ);
        inner.resize(inner.len() + padding, 0);
        let length = inner.len() + self.aead.tag_len();
        let header = [0x17, 0x03, 0x03, (length >> 8) as u8, length as u8];
        let mut nonce = self.iv;
        for (byte, sequence) in nonce[4..].iter_mut().zip(self.sequence.to_be_bytes()) {
            *byte ^= sequence;
        }
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(header),
                &mut inner,
            )
            .unwrap();
        self.sequence += 1;
        flight.bytes.extend_from_slice(&header);
        flight.bytes.extend_from_slice(&inner);
        if !self.open_handshake && !self.framing_lost {
            flight.clean_ends.push(flight.bytes.len());
        }
    }

    /// A handshake message in records cut at `cuts`, an application record after the
    /// first cut if `interleave`.
    fn handshake(&mut self, message: &[u8], cuts: &[usize], interleave: bool, flight: &mut RawFlight) {
        let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (message.len() + 1)).collect();
        points.push(0);
        points.push(message.len());
        points.sort_unstable();
        points.dedup();
        let pieces = points.len() - 1;
        if message.len() < 4
            || usize::from(message[1]) << 16 | usize::from(message[2]) << 8 | usize::from(message[3])
                != message.len() - 4
        {
            self.framing_lost = true;
        }
        for (index, pair) in points.windows(2).enumerate() {
            self.open_handshake = index + 1 < pieces;
            self.record(&message[pair[0]..pair[1]], Some(0x16), 0, flight);
            if index == 0 && interleave && pieces > 1 {
                self.record(b"between", Some(0x17), 0, flight);
            }
        }
        self.open_handshake = false;
    }

    fn write(&mut self, step: &RawStep, flight: &mut RawFlight, sent: &mut Vec<u8>) {
        match step {
            RawStep::Data {
                payload,
                fragment,
                padding,
            } => {
                for chunk in payload.chunks((*fragment).max(1)) {
                    self.record(chunk, Some(0x17), *padding, flight);
                }
                sent.extend_from_slice(payload);
            }
            RawStep::Empty(count) => {
                for _ in 0..*count {
                    self.record(&[], Some(0x17), 0, flight);
                }
            }
            RawStep::KeyUpdate {
                requested,
                cuts,
                interleave,
            } => {
                let message = [24, 0, 0, 1, u8::from(*requested)];
                self.handshake(&message, cuts, *interleave, flight);
                self.update_keys();
            }
            RawStep::Handshake {
                message,
                cuts,
                interleave,
            } => self.handshake(message, cuts, *interleave, flight),
            RawStep::Alert(level, description) => self.record(&[*level, *description], Some(0x15), 0, flight),
            RawStep::Oversize(length) => self.record(&vec![b'o'; *length], Some(0x17), 0, flight),
            RawStep::NoContentType(zeros) => self.record(&[], None, *zeros, flight),
            RawStep::UnknownType(typ, length) => {
                self.record(&vec![b'u'; *length], Some(*typ), 0, flight);
                // The type drawn at random may be application data's: then it is data.
                if *typ == 0x17 {
                    sent.resize(sent.len() + *length, b'u');
                }
            }
            RawStep::Flush | RawStep::Server(_) => unreachable!("handled by the world"),
        }
    }
}

fn expand_label(hkdf: ring::hkdf::Algorithm, secret: &[u8], label: &str, length: usize) -> Vec<u8> {
    let prk = ring::hkdf::Prk::new_less_safe(hkdf, secret);
    let label = format!("tls13 {label}");
    let length_bytes = (length as u16).to_be_bytes();
    let info: [&[u8]; 4] = [&length_bytes, &[label.len() as u8], label.as_bytes(), &[0]];
    let mut out = vec![0; length];
    prk.expand(&info, OkmLength(length)).unwrap().fill(&mut out).unwrap();
    out
}

/// The key log: the client's first application traffic secret (the raw client's keys).
#[derive(Debug, Default)]
struct KeyCapture {
    client_traffic_secret: Mutex<Option<Vec<u8>>>,
}

impl KeyCapture {
    fn client_traffic_secret(&self) -> Option<Vec<u8>> {
        self.client_traffic_secret.lock().unwrap().clone()
    }
}

impl rustls::KeyLog for KeyCapture {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == "CLIENT_TRAFFIC_SECRET_0" {
            *self.client_traffic_secret.lock().unwrap() = Some(secret.to_vec());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Configurations: the server's own, or seeded (every world's session the same, byte for
// byte).

// Randomness for the seeded provider: one stream per world, reseeded at its start, drawn
// by client and server in the order the session asks (the same in every world as long
// as the servers behave the same).
thread_local! {
    static DRAWS: RefCell<fastrand::Rng> = const { RefCell::new(fastrand::Rng::with_seed(0)) };
}

fn draw(buffer: &mut [u8]) {
    DRAWS.with(|draws| {
        let mut draws = draws.borrow_mut();
        for byte in buffer {
            *byte = draws.u8(..);
        }
    });
}

#[derive(Debug)]
struct SeededRandom;

impl SecureRandom for SeededRandom {
    fn fill(&self, buffer: &mut [u8]) -> Result<(), GetRandomFailed> {
        draw(buffer);
        Ok(())
    }
}

static SEEDED_RANDOM: SeededRandom = SeededRandom;

/// A stand-in key exchange under the name and key-share length of a real group: the
/// shared secret is the XOR of both shares. Not secret at all, and deterministic: what
/// is under test here is the record layer and the handshake's state, not the group.
#[derive(Debug)]
struct StandInGroup {
    name: NamedGroup,
    share_length: usize,
}

static STAND_IN_X25519: StandInGroup = StandInGroup {
    name: NamedGroup::X25519,
    share_length: 32,
};
static STAND_IN_P256: StandInGroup = StandInGroup {
    name: NamedGroup::secp256r1,
    share_length: 65,
};
static STAND_IN_P384: StandInGroup = StandInGroup {
    name: NamedGroup::secp384r1,
    share_length: 97,
};

impl SupportedKxGroup for StandInGroup {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let mut share = vec![0; self.share_length];
        draw(&mut share);
        if self.share_length != 32 {
            share[0] = 4;
        }
        Ok(Box::new(StandInExchange {
            group: self.name,
            share,
        }))
    }

    fn name(&self) -> NamedGroup {
        self.name
    }
}

struct StandInExchange {
    group: NamedGroup,
    share: Vec<u8>,
}

impl ActiveKeyExchange for StandInExchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        if peer.len() != self.share.len() || (self.share.len() != 32 && peer[0] != 4) {
            return Err(rustls::PeerMisbehaved::InvalidKeyShare.into());
        }
        let secret: Vec<u8> = self.share.iter().zip(peer).map(|(a, b)| a ^ b).collect();
        Ok(SharedSecret::from(secret))
    }

    fn pub_key(&self) -> &[u8] {
        &self.share
    }

    fn group(&self) -> NamedGroup {
        self.group
    }
}

/// A fixed time, so that tickets' ages are the same in every world.
#[derive(Debug)]
struct FixedTime;

impl rustls::time_provider::TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_secs(1_750_000_000)))
    }
}

fn seeded_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.secure_random = &SEEDED_RANDOM;
    provider.kx_groups = vec![&STAND_IN_X25519, &STAND_IN_P256, &STAND_IN_P384];
    provider
}

/// A certificate and key for "localhost": Ed25519 from a fixed seed (its signatures are
/// deterministic) for seeded cases, the server's own self-signed one otherwise.
fn certificates(crypto: Crypto) -> &'static (CertificateDer<'static>, PrivatePkcs8KeyDer<'static>) {
    static SEEDED: OnceLock<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>)> = OnceLock::new();
    static PRODUCTION: OnceLock<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>)> = OnceLock::new();
    use rustls::pki_types::pem::PemObject;
    match crypto {
        Crypto::Seeded => SEEDED.get_or_init(|| {
            // PKCS#8 v1 of an Ed25519 key (RFC 8410): a fixed prefix, then the seed.
            let mut pkcs8 = vec![
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
            ];
            pkcs8.extend(1..=32u8);
            let key = PrivatePkcs8KeyDer::from(pkcs8);
            let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key, &rcgen::PKCS_ED25519).unwrap();
            let certificate = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
                .unwrap()
                .self_signed(&key_pair)
                .unwrap();
            (certificate.der().clone(), key)
        }),
        Crypto::Production => PRODUCTION.get_or_init(|| {
            let (certificate, key) = wsscale::server::tls::self_signed().unwrap();
            (
                CertificateDer::from_pem_slice(certificate.as_bytes()).unwrap(),
                PrivatePkcs8KeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
        }),
    }
}

/// The seeded provider for the server: every group, or all but the client's first.
fn server_provider(client: &ClientChoice) -> CryptoProvider {
    let mut provider = seeded_provider();
    if client.server_lacks_first_group {
        let first = provider.kx_groups[client.groups[0]].name();
        provider.kx_groups.retain(|group| group.name() != first);
    }
    provider
}

fn configs(case: &Case, keys: &Arc<KeyCapture>) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let (certificate, key) = certificates(case.crypto);
    let server = match case.crypto {
        // The server's own configuration, as `wsscale serve` builds it.
        Crypto::Production => {
            wsscale::server::tls::server_config(vec![certificate.clone()], PrivateKeyDer::Pkcs8(key.clone_key()))
                .unwrap()
        }
        // The same, with the seeded provider and a fixed time (and maybe without the
        // client's first group, which makes it ask for another: a HelloRetryRequest).
        Crypto::Seeded => Arc::new(
            ServerConfig::builder_with_details(Arc::new(server_provider(&case.client)), Arc::new(FixedTime))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![certificate.clone()], PrivateKeyDer::Pkcs8(key.clone_key()))
                .unwrap(),
        ),
    };
    let mut provider = match case.crypto {
        Crypto::Seeded => seeded_provider(),
        Crypto::Production => rustls::crypto::ring::default_provider(),
    };
    provider.cipher_suites = case.client.suites.clone();
    let groups = case
        .client
        .groups
        .iter()
        .map(|index| provider.kx_groups[*index])
        .collect();
    provider.kx_groups = groups;
    let mut roots = RootCertStore::empty();
    roots.add(certificate.clone()).unwrap();
    let time: Arc<dyn rustls::time_provider::TimeProvider> = match case.crypto {
        Crypto::Seeded => Arc::new(FixedTime),
        Crypto::Production => Arc::new(rustls::time_provider::DefaultTimeProvider),
    };
    let mut client = ClientConfig::builder_with_details(Arc::new(provider), time)
        .with_protocol_versions(case.client.versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = case.client.alpn.clone();
    client.max_fragment_size = case.client.max_fragment_size;
    client.key_log = keys.clone();
    if !case.resume {
        client.resumption = Resumption::disabled();
    }
    (server, Arc::new(client))
}

// ---------------------------------------------------------------------------------------
// The generator.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Crypto {
    Seeded,
    Production,
}

#[derive(Debug)]
struct ClientChoice {
    versions: &'static [&'static SupportedProtocolVersion],
    suites: Vec<SupportedCipherSuite>,
    /// Indices into the provider's groups (X25519, P-256, P-384), in the client's order.
    groups: Vec<usize>,
    max_fragment_size: Option<usize>,
    alpn: Vec<Vec<u8>>,
    /// The (seeded) server does not have the client's first group, whose key share the
    /// client sends, but has another of the client's: it asks for a HelloRetryRequest.
    server_lacks_first_group: bool,
}

#[derive(Debug, Clone)]
enum Action {
    Encrypt(Vec<u8>),
    Close,
}

enum Step {
    Write(Vec<u8>),
    KeyUpdate,
    Close,
    Flush,
    Server(Action),
}

enum RawStep {
    Data {
        payload: Vec<u8>,
        fragment: usize,
        padding: usize,
    },
    Empty(usize),
    KeyUpdate {
        requested: bool,
        cuts: Vec<usize>,
        interleave: bool,
    },
    Handshake {
        message: Vec<u8>,
        cuts: Vec<usize>,
        interleave: bool,
    },
    Alert(u8, u8),
    Oversize(usize),
    NoContentType(usize),
    UnknownType(u8, usize),
    Flush,
    Server(Action),
}

struct Case {
    seed: u64,
    crypto: Crypto,
    client: ClientChoice,
    resume: bool,
    /// The plaintext handshake re-cut into records of 1 to this many bytes.
    recut: Option<usize>,
    steps: Vec<Step>,
    /// Raw records after the handshake instead of `steps` (TLS 1.3).
    raw: bool,
    raw_steps: Vec<RawStep>,
    /// Server actions at stream offsets (sorted).
    actions: Vec<(usize, Action)>,
    mutation: Option<(usize, Mutation)>,
    /// How each LeanTls world cuts the stream into reads.
    splits: Vec<Split>,
}

const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

impl Case {
    fn generate(seed: u64) -> Case {
        let mut rng = fastrand::Rng::with_seed(seed);
        let crypto = if rng.u8(0..8) == 0 {
            Crypto::Production
        } else {
            Crypto::Seeded
        };
        let versions = match rng.u8(0..4) {
            0 => TLS12,
            1 => TLS13,
            _ => BOTH,
        };
        let tls13_suites = [
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        // The certificate is ECDSA or Ed25519: the ECDSA suites of TLS 1.2.
        let tls12_suites = [
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ];
        let mut suites = Vec::new();
        for (version, candidates) in [
            (&rustls::version::TLS13, tls13_suites),
            (&rustls::version::TLS12, tls12_suites),
        ] {
            if versions.iter().any(|v| v.version == version.version) {
                let mut chosen: Vec<_> = candidates.iter().copied().filter(|_| rng.bool()).collect();
                if chosen.is_empty() {
                    chosen.push(candidates[rng.usize(..candidates.len())]);
                }
                rng.shuffle(&mut chosen);
                suites.extend(chosen);
            }
        }
        let mut groups = vec![0, 1, 2];
        rng.shuffle(&mut groups);
        groups.truncate(rng.usize(1..=3));
        let max_fragment_size = match rng.u8(0..8) {
            0 => Some(rng.usize(32..100)),
            1 => Some(rng.usize(32..=16_389)),
            _ => None,
        };
        let alpn_bytes = match rng.u8(0..12) {
            0 => rng.usize(1..300),
            1 => rng.usize(2000..17_000),
            2 => rng.usize(17_000..60_000),
            _ => 0,
        };
        let mut alpn = Vec::new();
        let mut total = 0;
        while total < alpn_bytes {
            let length = rng.usize(1..=255).min(alpn_bytes - total).max(1);
            alpn.push((0..length).map(|_| rng.u8(b'a'..=b'z')).collect::<Vec<u8>>());
            total += length + 1;
        }
        let server_lacks_first_group = crypto == Crypto::Seeded && groups.len() > 1 && rng.u8(0..4) == 0;
        let client = ClientChoice {
            versions,
            suites,
            groups,
            max_fragment_size,
            alpn,
            server_lacks_first_group,
        };
        let resume = crypto == Crypto::Seeded && rng.u8(0..5) == 0;
        let recut = match rng.u8(0..10) {
            0 => Some(rng.usize(1..=8)),
            1 => Some(rng.usize(9..=2000)),
            2 => Some(rng.usize(2000..=16_384)),
            _ => None,
        };
        let raw = crypto == Crypto::Seeded && versions != TLS12 && rng.u8(0..4) == 0;
        let mut steps = Vec::new();
        let mut raw_steps = Vec::new();
        let mut stream_estimate = 2000 + total * 2 + if recut.is_some_and(|max| max < 9) { total * 8 } else { 0 };
        let handshake_estimate = stream_estimate;
        let mut closed = false;
        let mut server_closed = false;
        for _ in 0..rng.usize(0..9) {
            if raw {
                let step = match rng.u8(0..20) {
                    0..=5 => {
                        let payload = message(&mut rng);
                        let fragment = match rng.u8(0..3) {
                            0 => rng.usize(1..200),
                            _ => 16_384,
                        };
                        let padding = match rng.u8(0..4) {
                            0 => rng.usize(0..=256),
                            _ => 0,
                        };
                        // An inner plaintext holds at most 2^14 bytes of content and padding.
                        let fragment = fragment.min(16_384 - padding).max(1);
                        stream_estimate += payload.len() + payload.len() / fragment.max(1) * (22 + padding);
                        RawStep::Data {
                            payload,
                            fragment,
                            padding,
                        }
                    }
                    6 => RawStep::Empty(rng.usize(1..40)),
                    7 | 8 => RawStep::KeyUpdate {
                        requested: rng.bool(),
                        cuts: (0..rng.usize(0..4)).map(|_| rng.usize(..)).collect(),
                        interleave: rng.u8(0..5) == 0,
                    },
                    9 => {
                        // Another handshake message after the handshake: a ticket, a
                        // ClientHello, a Finished, an unknown type; its length right or not.
                        let typ = [1, 4, 11, 15, 20, 24, 99][rng.usize(..7)];
                        let body: Vec<u8> = (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect();
                        let length = if rng.u8(0..4) == 0 {
                            rng.usize(0..70_000)
                        } else {
                            body.len()
                        };
                        let mut message = vec![typ, (length >> 16) as u8, (length >> 8) as u8, length as u8];
                        message.extend(body);
                        RawStep::Handshake {
                            message,
                            cuts: (0..rng.usize(0..5)).map(|_| rng.usize(..)).collect(),
                            interleave: rng.u8(0..5) == 0,
                        }
                    }
                    10 => {
                        let (level, description) = match rng.u8(0..4) {
                            0 => (1, 0),
                            1 => (1, 90),
                            2 => (2, rng.u8(..)),
                            _ => (rng.u8(..), rng.u8(..)),
                        };
                        RawStep::Alert(level, description)
                    }
                    11 => RawStep::Oversize(rng.usize(16_385..16_400)),
                    12 => RawStep::NoContentType(rng.usize(0..20)),
                    13 => RawStep::UnknownType([0, 0x14, 0x18, 0xff, rng.u8(..)][rng.usize(..5)], rng.usize(0..40)),
                    14..=16 => RawStep::Flush,
                    17 | 18 => RawStep::Server(Action::Encrypt(message(&mut rng))),
                    _ if !server_closed => {
                        server_closed = true;
                        RawStep::Server(Action::Close)
                    }
                    _ => RawStep::Flush,
                };
                raw_steps.push(step);
            } else {
                let step = match rng.u8(0..20) {
                    0..=8 => {
                        let data = message(&mut rng);
                        stream_estimate += data.len() + data.len() / 16_384 * 22 + 22;
                        Step::Write(data)
                    }
                    9 | 10 => Step::KeyUpdate,
                    11..=14 => Step::Flush,
                    15 | 16 => Step::Server(Action::Encrypt(message(&mut rng))),
                    17 if !server_closed => {
                        server_closed = true;
                        Step::Server(Action::Close)
                    }
                    _ if !closed => {
                        closed = true;
                        Step::Close
                    }
                    _ => Step::Flush,
                };
                steps.push(step);
            }
        }
        let offset = |rng: &mut fastrand::Rng| {
            if rng.u8(0..5) < 2 {
                rng.usize(0..handshake_estimate)
            } else {
                rng.usize(0..stream_estimate)
            }
        };
        let mut actions: Vec<(usize, Action)> = (0..rng.usize(0..4))
            .map(|_| {
                let at = offset(&mut rng);
                let action = if rng.u8(0..6) == 0 {
                    Action::Close
                } else {
                    Action::Encrypt(message(&mut rng))
                };
                (at, action)
            })
            .collect();
        actions.sort_by_key(|(at, _)| *at);
        // Not with the server's own configuration: rustls orders a ClientHello's extensions
        // at random, so the same offset means another field in every world.
        let mutation = (crypto == Crypto::Seeded && rng.u8(0..2) == 0).then(|| {
            let at = offset(&mut rng);
            let mutation = match rng.u8(0..7) {
                0 => Mutation::Flip((0..rng.usize(1..4)).map(|_| (rng.usize(0..8), rng.u8(0..8))).collect()),
                1 => Mutation::Insert((0..rng.usize(1..9)).map(|_| rng.u8(..)).collect()),
                2 => Mutation::Delete(rng.usize(1..9)),
                3 => Mutation::Truncate,
                4 => Mutation::Insert((0..rng.usize(1..2000)).map(|_| rng.u8(..)).collect()),
                5 => {
                    let (level, description) = match rng.u8(0..3) {
                        0 => (1, 0),
                        1 => (2, [10, 20, 40, 50, 80][rng.usize(..5)]),
                        _ => (rng.u8(..), rng.u8(..)),
                    };
                    Mutation::Alert(level, description)
                }
                _ => Mutation::Header {
                    typ: rng.bool().then(|| [0x14, 0x15, 0x16, 0x17, 0x18, 0][rng.usize(..6)]),
                    length: rng.bool().then(|| match rng.u8(0..3) {
                        0 => rng.u16(..),
                        1 => rng.u16(16_380..18_500),
                        _ => rng.u16(0..40),
                    }),
                },
            };
            (at, mutation)
        });
        let around = mutation.as_ref().map_or(0, |(at, _)| at.saturating_sub(512));
        let elsewhere = rng.usize(0..stream_estimate);
        let mut splits = vec![
            Split::Whole,
            Split::Random(rng.u64(..)),
            Split::Bytewise(vec![(0, 2048), (around, around + 3072), (elsewhere, elsewhere + 2048)]),
        ];
        if rng.u8(0..4) == 0 {
            splits.push(Split::Random(rng.u64(..)));
        }
        Case {
            seed,
            crypto,
            client,
            resume,
            recut,
            steps,
            raw,
            raw_steps,
            actions,
            mutation,
            splits,
        }
    }

    /// Whether the client's bytes keep to the protocol: no change in the pipe, and no raw
    /// record written to break a rule (a handshake message other than a key update, or one
    /// with another record in its middle; an alert; an oversized record; a record without
    /// a content type or of an unknown one; more than rustls' 32 empty records in a row).
    fn well_formed(&self) -> bool {
        if self.mutation.is_some() {
            return false;
        }
        let mut empty_in_a_row = 0;
        for step in &self.raw_steps {
            match step {
                RawStep::Data { payload, .. } if payload.is_empty() => {}
                RawStep::Data { .. } | RawStep::KeyUpdate { interleave: false, .. } => empty_in_a_row = 0,
                RawStep::KeyUpdate { cuts, .. } => {
                    // The record in between comes only if the message is cut.
                    if cuts.iter().any(|cut| cut % 6 != 0 && cut % 6 != 5) {
                        return false;
                    }
                    empty_in_a_row = 0;
                }
                RawStep::Empty(count) => {
                    empty_in_a_row += count;
                    if empty_in_a_row > 32 {
                        return false;
                    }
                }
                RawStep::Flush | RawStep::Server(_) => {}
                RawStep::Handshake { .. }
                | RawStep::Alert(..)
                | RawStep::Oversize(_)
                | RawStep::NoContentType(_)
                | RawStep::UnknownType(..) => return false,
            }
        }
        true
    }

    fn describe(&self) -> String {
        let steps: Vec<String> = if self.raw {
            self.raw_steps.iter().map(RawStep::describe).collect()
        } else {
            self.steps.iter().map(Step::describe).collect()
        };
        let actions: Vec<String> = self
            .actions
            .iter()
            .map(|(at, action)| format!("{} at {at}", action.describe()))
            .collect();
        format!(
            "{:?}, client {:?} suites {:?} groups {:?} (server without the first: {}) max_fragment_size {:?} ALPN {} \
             names; resume {}; re-cut {:?}; {}steps [{}]; actions [{}]; change {:?}",
            self.crypto,
            self.client.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            self.client.suites.iter().map(|s| s.suite()).collect::<Vec<_>>(),
            self.client.groups,
            self.client.server_lacks_first_group,
            self.client.max_fragment_size,
            self.client.alpn.len(),
            self.resume,
            self.recut,
            if self.raw { "raw " } else { "" },
            steps.join(", "),
            actions.join(", "),
            self.mutation.as_ref().map(|(at, mutation)| (at, mutation.describe())),
        )
    }
}

impl Step {
    fn describe(&self) -> String {
        match self {
            Step::Write(data) => format!("write {}", data.len()),
            Step::KeyUpdate => "key update".to_owned(),
            Step::Close => "close_notify".to_owned(),
            Step::Flush => "flush".to_owned(),
            Step::Server(action) => format!("server {}", action.describe()),
        }
    }
}

impl RawStep {
    fn describe(&self) -> String {
        match self {
            RawStep::Data {
                payload,
                fragment,
                padding,
            } => format!("data {} in records of {fragment} padded {padding}", payload.len()),
            RawStep::Empty(count) => format!("{count} empty records"),
            RawStep::KeyUpdate {
                requested,
                cuts,
                interleave,
            } => format!("key update (requested {requested}) cut at {cuts:?} interleaved {interleave}"),
            RawStep::Handshake {
                message,
                cuts,
                interleave,
            } => format!(
                "handshake message {:02x?} cut at {cuts:?} interleaved {interleave}",
                &message[..message.len().min(8)]
            ),
            RawStep::Alert(level, description) => format!("alert {level}/{description}"),
            RawStep::Oversize(length) => format!("oversized record of {length}"),
            RawStep::NoContentType(zeros) => format!("a record of {zeros} zeros without a type"),
            RawStep::UnknownType(typ, length) => format!("a record of type {typ} of {length}"),
            RawStep::Flush => "flush".to_owned(),
            RawStep::Server(action) => format!("server {}", action.describe()),
        }
    }
}

impl Action {
    fn describe(&self) -> String {
        match self {
            Action::Encrypt(data) => format!("encrypt {}", data.len()),
            Action::Close => "close".to_owned(),
        }
    }
}

impl Mutation {
    fn describe(&self) -> String {
        match self {
            Mutation::Insert(bytes) => format!("insert {} bytes", bytes.len()),
            other => format!("{other:?}"),
        }
    }
}

impl ServerError {
    /// rustls' limit on what it holds while joining a handshake message: the buffered
    /// connection's `read_tls` error, or LeanTls' own error for the same bound.
    fn is_buffer_limit(&self) -> bool {
        match self {
            ServerError::Read(text) => text.contains("message buffer full"),
            ServerError::Tls(rustls::Error::General(text)) => text.starts_with("message buffer full"),
            ServerError::Tls(_) => false,
        }
    }

    /// The same error: equal, or both the buffer limit.
    fn same_as(&self, other: &ServerError) -> bool {
        self == other || (self.is_buffer_limit() && other.is_buffer_limit())
    }
}

/// An application message: empty, small, or up to 70 KB (several records, some of them
/// around the 16 KiB record size).
fn message(rng: &mut fastrand::Rng) -> Vec<u8> {
    let length = match rng.u8(0..10) {
        0 => 0,
        1..=3 => rng.usize(1..100),
        4 | 5 => rng.usize(100..4096),
        6 => 16_384 * rng.usize(1..=4) + rng.usize(0..3) - 1,
        7 => rng.usize(4096..20_000),
        _ => rng.usize(20_000..=70_000),
    };
    (0..length).map(|_| rng.u8(..)).collect()
}
