//! The IO of one WebSocket connection, shared by both execution models: read what the
//! socket has into a pooled buffer, hand it to the [`Session`], write the answers. Each
//! model only reports *what* is ready — Tokio readiness in tasks mode, poll(2) in threads
//! mode — through [`Wake`]; [`Connection::on_wake`] handles it in one order for both, so
//! both move the same bytes through the same code.
//!
//! Buffers are borrowed from a [`super::buffers::BufferPool`] for the length of one
//! wake-up and given back, so an idle connection holds none: the only per-connection bytes
//! are its [`Connection`] (and, while a peer is not reading, the answers it has not taken
//! yet). Under TLS the connection also holds its [`LeanTls`] session — keys and sequence
//! numbers, and a record only while it is not whole: ciphertext is read into the lent
//! buffer, decrypted into another lent buffer, and answers are encrypted into a third.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use super::board::{Attached, Board, QUEUED, RETIRED};
use super::buffers::Lent;
use super::lean_tls::LeanTls;
use super::shared::Shared;
use crate::deflate::Agreement;
use crate::lifecycle::{CloseReason, Flow, LingerEnd};
use crate::session::{Session, Tally};

/// Most bytes read from one connection per wake-up, so a flooding peer cannot starve the
/// others on its worker; the rest is read on the next wake-up.
const READ_BUDGET: usize = 256 * 1024;

/// A non-blocking socket: Tokio's `TcpStream` (tasks) or std's in non-blocking mode
/// (threads).
pub trait Socket {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Sends FIN: the server closes first once the close handshake is done.
    fn shutdown_write(&self);
}

impl Socket for tokio::net::TcpStream {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        tokio::net::TcpStream::try_read(self, buf)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        tokio::net::TcpStream::try_write(self, buf)
    }

    fn shutdown_write(&self) {
        let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write);
    }
}

impl Socket for std::net::TcpStream {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &*self, buf)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &*self, buf)
    }

    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// What woke a connection, as the execution model sees it. [`Connection::on_wake`] asks
/// each source in its order and only when it matters (writability only while answers
/// wait, readability only while the connection reads), so a model that polls lazily
/// (Tokio) registers interest in exactly those. The board (shutdown, pushes) is not a
/// source here: the connection reads it itself on every wake, and each model arms its
/// own wake-up for it (see [`super::board`]).
pub trait Wake {
    /// The socket takes writes (an error ends the connection).
    fn writable(&mut self) -> io::Result<bool>;
    /// The socket has data, EOF or an error to read (an error ends the connection).
    fn readable(&mut self) -> io::Result<bool>;
    /// The session's deadline (ping, idle timeout, drain) has passed.
    fn timer_due(&mut self, deadline: Instant) -> bool;
}

/// One connection: its session, its TLS session (wss://), the bytes a slow peer has not
/// taken yet, and its place on the board.
pub struct Connection {
    session: Session,
    /// wss://: the TLS session every byte goes through.
    tls: Option<Box<LeanTls>>,
    /// Bytes produced but not yet accepted by the socket (ciphertext under TLS); empty (no
    /// allocation) unless the peer is not reading.
    unsent: Vec<u8>,
    /// The board, and the sequence number of the last push this connection took; the
    /// pushes it has not taken when it is dropped stop waiting for it.
    board: Arc<Board>,
    seen_push: u64,
    /// Tasks mode over plain TCP: the connection's slot on the board, through which a post
    /// writes pushes straight to the socket (see [`super::board`]). Every write of this
    /// connection is then made holding the slot's turn, and `seen_push` is the slot's
    /// while the turn is held.
    direct: Option<Attached>,
}

impl Drop for Connection {
    /// Retires the slot (no post writes to the socket after this) before the driver
    /// closes the socket: drop the connection first.
    fn drop(&mut self) {
        if let Some(attached) = self.direct.take() {
            self.seen_push = self.board.detach(attached);
        }
        self.board.close(self.seen_push);
    }
}

/// A connection's socket as the lean engine takes it after the HTTP phase: the socket,
/// its TLS session (wss://), the plaintext that came after the upgrade request, and the
/// ciphertext the HTTP phase could not send yet.
pub struct LeanSocket<S> {
    pub stream: S,
    pub tls: Option<Box<LeanTls>>,
    pub early: Vec<u8>,
    pub unsent: Vec<u8>,
    /// permessage-deflate, when the upgrade agreed to it.
    pub deflate: Option<Agreement>,
}

impl<S> LeanSocket<S> {
    /// The same connection over another kind of socket (a Tokio one made std's for its
    /// thread).
    pub fn map<T>(self, f: impl FnOnce(S) -> io::Result<T>) -> io::Result<LeanSocket<T>> {
        Ok(LeanSocket {
            stream: f(self.stream)?,
            tls: self.tls,
            early: self.early,
            unsent: self.unsent,
            deflate: self.deflate,
        })
    }
}

/// What the lean engine takes of a connection's HTTP-phase IO after the 101.
pub trait IntoLeanSocket {
    /// The socket and its TLS session, with `early` (the plaintext hyper read past the
    /// request) first among the plaintext that came after the request.
    fn into_lean(self, early: Vec<u8>) -> LeanSocket<tokio::net::TcpStream>;
}

impl IntoLeanSocket for tokio::net::TcpStream {
    fn into_lean(self, early: Vec<u8>) -> LeanSocket<tokio::net::TcpStream> {
        LeanSocket {
            stream: self,
            tls: None,
            early,
            unsent: Vec::new(),
            deflate: None,
        }
    }
}

impl IntoLeanSocket for super::lean_tls::LeanTlsStream {
    fn into_lean(self, mut early: Vec<u8>) -> LeanSocket<tokio::net::TcpStream> {
        let parts = self.into_parts();
        early.extend_from_slice(&parts.early);
        LeanSocket {
            stream: parts.stream,
            tls: Some(parts.tls),
            early,
            unsent: parts.unsent,
            deflate: None,
        }
    }
}

impl Connection {
    /// A connection's session, with its TLS session when it has one and the ciphertext
    /// the HTTP phase left unsent.
    pub fn new(shared: &Shared, tls: Option<Box<LeanTls>>, unsent: Vec<u8>, deflate: Option<Agreement>) -> Self {
        let board = shared.board.clone();
        let seen_push = board.open();
        Connection {
            session: Session::with_deflate(&shared.policy, Instant::now(), deflate),
            tls,
            unsent,
            board,
            seen_push,
            direct: None,
        }
    }

    /// Tasks mode over plain TCP: lets posts write pushes straight to `fd`, the socket
    /// this connection writes to, which must stay open until the connection is dropped.
    /// Call once the session runs (after [`Connection::on_early_bytes`]).
    pub fn attach(&mut self, fd: RawFd) {
        // A connection that takes pushes compressed (`--deflate stateless`) takes them in
        // its task: the post writes the plain frame only.
        let compressed_pushes = self
            .session
            .deflate()
            .is_some_and(|agreement| agreement.server_no_context_takeover);
        if self.tls.is_none() && self.direct.is_none() && !compressed_pushes {
            let state = self.slot_state(Flow::Continue);
            self.direct = Some(self.board.attach(fd, self.seen_push, state));
        }
    }

    /// Whether posts write to this connection directly (so the driver waits on its slot,
    /// not on the board's `Notify`).
    pub fn is_attached(&self) -> bool {
        self.direct.is_some()
    }

    /// Registers the task a post wakes when it cannot write for this connection.
    pub fn register(&self, waker: &Waker) {
        if let Some(attached) = self.direct {
            self.board.slot_of(attached).register(waker);
        }
    }

    /// What a post must know of this connection: it has bytes queued, or it takes no
    /// more pushes (its close handshake began, or `flow` ends it).
    fn slot_state(&self, flow: Flow) -> u32 {
        if flow != Flow::Continue || !self.heeds_board() {
            RETIRED
        } else if !self.unsent.is_empty() {
            QUEUED
        } else {
            0
        }
    }

    /// Bytes held for the peer between wake-ups: the decoder's, a TLS record not yet
    /// whole, and what a slow peer has not taken. 0 while idle.
    pub fn held_bytes(&self) -> usize {
        self.session.held_bytes() + self.tls.as_ref().map_or(0, |tls| tls.held_bytes()) + self.unsent.capacity()
    }

    /// The session's next deadline (ping, idle timeout or drain).
    pub fn deadline(&self, shared: &Shared) -> Instant {
        self.session.deadline(&shared.policy)
    }

    /// Whether the driver should wait for the board (shutdown, pushes): only while the
    /// session is open.
    pub fn heeds_board(&self) -> bool {
        self.session.is_open()
    }

    /// Handles whatever woke the connection, in the one order both models follow: the
    /// board (shutdown: say 1001; or pushes to send), then what a slow peer left unsent,
    /// then what the peer sent, then the session's timer. [`Flow::Finish`] means the
    /// socket has been shut down for writing: the driver drops it and closes the guard
    /// with the reason.
    pub fn on_wake(&mut self, socket: &impl Socket, shared: &Shared, wake: &mut impl Wake) -> Flow {
        let Some(attached) = self.direct else {
            return self.handle_wake(socket, shared, wake);
        };
        let board = self.board.clone();
        let slot = board.slot_of(attached);
        // Every write of this wake-up, and the pushes taken, under the slot's turn: a post
        // writes to the socket only between two wake-ups, and only with nothing queued.
        let mut turn = slot.turn();
        self.seen_push = turn.seen();
        if let Some(rest) = turn.take_partial() {
            // The rest of a push a post could write only in part: before any other byte.
            self.unsent.extend_from_slice(rest.bytes());
        }
        let flow = self.handle_wake(socket, shared, wake);
        turn.end(self.seen_push, self.slot_state(flow));
        flow
    }

    fn handle_wake(&mut self, socket: &impl Socket, shared: &Shared, wake: &mut impl Wake) -> Flow {
        let mut flow = Flow::Continue;
        if self.heeds_board() {
            if shared.board.shutdown_requested() {
                flow = self.on_shutdown(socket, shared);
            } else if shared.board.latest() > self.seen_push {
                flow = self.on_push(socket, shared);
            }
        }
        if flow == Flow::Continue && self.wants_write() {
            flow = match wake.writable() {
                Ok(true) => self.on_writable(socket),
                Ok(false) => Flow::Continue,
                Err(_) => Flow::Finish(CloseReason::Error),
            };
        }
        if flow == Flow::Continue && self.wants_read(shared) {
            flow = match wake.readable() {
                Ok(true) => self.on_readable(socket, shared),
                Ok(false) => Flow::Continue,
                Err(_) => Flow::Finish(CloseReason::Error),
            };
        }
        if flow == Flow::Continue && wake.timer_due(self.deadline(shared)) {
            flow = self.on_timer(socket, shared);
        }
        flow
    }

    /// Whether the driver should wait for writability.
    pub fn wants_write(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// Whether the driver should read: not while a peer that does not read has a full
    /// queue of answers waiting.
    pub fn wants_read(&self, shared: &Shared) -> bool {
        self.unsent.len() < shared.max_unsent
    }

    /// Bytes that arrived with the upgrade request (plaintext), before the driver's
    /// first read.
    pub fn on_early_bytes(&mut self, socket: &impl Socket, shared: &Shared, mut bytes: Vec<u8>) -> Flow {
        if bytes.is_empty() && self.unsent.is_empty() {
            return Flow::Continue;
        }
        let mut lent = shared.buffers.take();
        let mut tally = Tally::default();
        let flow = if bytes.is_empty() {
            Flow::Continue
        } else {
            self.session
                .on_bytes(&mut bytes, Instant::now(), &shared.policy, &mut tally, &mut lent.output)
        };
        shared.metrics.add(tally);
        self.finish_wake(socket, shared, flow, lent)
    }

    /// The socket is readable: read until it would block (or the budget is spent).
    fn on_readable(&mut self, socket: &impl Socket, shared: &Shared) -> Flow {
        let mut lent = shared.buffers.take();
        let mut budget = READ_BUDGET;
        let mut tally = Tally::default();
        let flow = loop {
            match socket.try_read(&mut lent.read) {
                Ok(0) => break self.on_peer_gone(shared),
                // A failed connection reads on, undecoded and undecrypted, and answers
                // nothing: its close frame is out.
                Ok(n) if self.session.is_lingering() => {
                    let flow = self.session.on_discarded(n, &mut tally);
                    if flow != Flow::Continue {
                        shared.metrics.linger_ended(LingerEnd::Limit);
                        break flow;
                    }
                }
                Ok(n) => {
                    let now = Instant::now();
                    let policy = &shared.policy;
                    let flow = match self.tls.as_deref_mut() {
                        None => self
                            .session
                            .on_bytes(&mut lent.read[..n], now, policy, &mut tally, &mut lent.output),
                        // What TLS answers itself (key updates, alerts) goes out before the
                        // session's answers: both end up in `ciphertext`, in that order.
                        Some(tls) => {
                            lent.plaintext.clear();
                            match tls.receive(&mut lent.read[..n], &mut lent.plaintext, &mut lent.ciphertext) {
                                Err(_) => Flow::Finish(CloseReason::Error),
                                Ok(()) => {
                                    let mut flow = Flow::Continue;
                                    if !lent.plaintext.is_empty() {
                                        flow = self.session.on_bytes(
                                            &mut lent.plaintext,
                                            now,
                                            policy,
                                            &mut tally,
                                            &mut lent.output,
                                        );
                                    }
                                    if flow == Flow::Continue && tls.peer_closed() {
                                        flow = Flow::Finish(self.session.on_eof());
                                    }
                                    flow
                                }
                            }
                        }
                    };
                    budget = budget.saturating_sub(n);
                    if flow != Flow::Continue || budget == 0 || !self.wants_read(shared) {
                        break flow;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break Flow::Continue,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break self.on_peer_gone(shared),
            }
        };
        shared.metrics.add(tally);
        self.finish_wake(socket, shared, flow, lent)
    }

    /// The peer closed or reset its side.
    fn on_peer_gone(&self, shared: &Shared) -> Flow {
        if self.session.is_lingering() {
            shared.metrics.linger_ended(LingerEnd::PeerClosed);
        }
        Flow::Finish(self.session.on_eof())
    }

    /// The socket is writable again: send what was waiting.
    fn on_writable(&mut self, socket: &impl Socket) -> Flow {
        match write_some(socket, &self.unsent) {
            Ok(written) if written == self.unsent.len() => {
                // Keep no capacity once the peer has caught up.
                self.unsent = Vec::new();
                if self.session.is_lingering() {
                    // The close frame is out at last.
                    socket.shutdown_write();
                }
                Flow::Continue
            }
            Ok(written) => {
                self.unsent.drain(..written);
                Flow::Continue
            }
            Err(_) => Flow::Finish(CloseReason::Error),
        }
    }

    /// The session's deadline passed (or may have: the session checks its own clock).
    fn on_timer(&mut self, socket: &impl Socket, shared: &Shared) -> Flow {
        let mut lent = shared.buffers.take();
        let lingering = self.session.is_lingering();
        let flow = self.session.on_timer(Instant::now(), &shared.policy, &mut lent.output);
        if lingering && flow != Flow::Continue {
            shared.metrics.linger_ended(LingerEnd::Timeout);
        }
        self.finish_wake(socket, shared, flow, lent)
    }

    /// The board holds pushes this connection has not taken: write each through (under
    /// TLS, encrypted for this connection), or queue it behind what a slow peer has not
    /// taken yet; a push that does not fit in that queue (`--write-buffer-size`) is
    /// dropped, and counted, so a peer that does not read costs a bounded amount and
    /// delays nobody.
    fn on_push(&mut self, socket: &impl Socket, shared: &Shared) -> Flow {
        let mut lent = self.tls.is_some().then(|| shared.buffers.take());
        let mut flow = Flow::Continue;
        let mut sent = 0;
        // Each push counts as delivered to this connection when its `Taken` is dropped at
        // the end of its turn: handed to the socket, queued behind a peer that is not
        // reading, or dropped. Leaving the loop early settles the rest with the iterator.
        for push in shared.board.take(&mut self.seen_push) {
            let frame = push.frame_for(self.session.deflate());
            if self.unsent.len() + frame.len() > shared.max_unsent {
                shared.metrics.pushes_dropped.increment(1);
                continue;
            }
            sent += 1;
            let bytes = match (self.tls.as_deref_mut(), lent.as_mut()) {
                (Some(tls), Some(lent)) => {
                    lent.ciphertext.clear();
                    if tls.encrypt(frame, &mut lent.ciphertext).is_err() {
                        flow = Flow::Finish(CloseReason::Error);
                        break;
                    }
                    &lent.ciphertext[..]
                }
                _ => frame,
            };
            if self.transmit(socket, bytes).is_err() {
                flow = Flow::Finish(CloseReason::Error);
                break;
            }
        }
        if let Some(lent) = lent {
            shared.buffers.give(lent);
        }
        shared.metrics.add(Tally {
            messages_received: 0,
            messages_sent: sent,
            ..Tally::default()
        });
        shared.metrics.pushes_written_by_task(sent);
        flow
    }

    /// The server is shutting down.
    fn on_shutdown(&mut self, socket: &impl Socket, shared: &Shared) -> Flow {
        let mut lent = shared.buffers.take();
        self.session
            .begin_shutdown(Instant::now(), &shared.policy, &mut lent.output);
        self.finish_wake(socket, shared, Flow::Continue, lent)
    }

    /// Sends what the session produced (encrypted first under TLS), gives the buffers
    /// back, and closes the socket if the session is finished.
    fn finish_wake(&mut self, socket: &impl Socket, shared: &Shared, flow: Flow, mut lent: Lent) -> Flow {
        let mut next = Flow::Continue;
        let wire = match self.tls.as_deref_mut() {
            None => &lent.output,
            Some(tls) => {
                if !lent.output.is_empty() && tls.encrypt(&lent.output, &mut lent.ciphertext).is_err() {
                    next = Flow::Finish(CloseReason::Error);
                }
                &lent.ciphertext
            }
        };
        if !wire.is_empty() && self.transmit(socket, wire).is_err() {
            next = Flow::Finish(CloseReason::Error);
        }
        let flow = match flow {
            Flow::Finish(reason) => Flow::Finish(reason),
            Flow::Continue => next,
        };
        if let Flow::Finish(reason) = flow {
            // Best effort for what is still queued, and TLS's close_notify: the connection
            // is over either way.
            if let Some(tls) = self.tls.as_deref_mut() {
                tls.close(&mut self.unsent);
            }
            if !self.unsent.is_empty() {
                let _ = write_some(socket, &self.unsent);
            }
            socket.shutdown_write();
            shared.buffers.give(lent);
            return Flow::Finish(reason);
        }
        shared.buffers.give(lent);
        if next == Flow::Continue && self.session.is_lingering() {
            self.linger(socket);
        }
        next
    }

    /// The session failed the connection and its close frame has been written or queued:
    /// end TLS (close_notify, once) and, once everything is out, send FIN; then read and
    /// discard until the peer closes (see [`crate::lifecycle::Lifecycle::begin_linger`]).
    /// Repeating this on every wake of a lingering connection is harmless: the TLS close
    /// is queued once and a second shutdown of the write side does nothing.
    fn linger(&mut self, socket: &impl Socket) {
        if let Some(tls) = self.tls.as_deref_mut() {
            let mut close_notify = Vec::new();
            tls.close(&mut close_notify);
            // An error here is the peer's going: the linger ends on the read that sees it.
            let _ = self.transmit(socket, &close_notify);
        }
        if self.unsent.is_empty() {
            self.unsent = Vec::new();
            socket.shutdown_write();
        }
    }

    /// Writes `bytes` through, or queues them behind what the peer has not taken yet (in
    /// order: under TLS every byte is part of a record).
    fn transmit(&mut self, socket: &impl Socket, bytes: &[u8]) -> io::Result<()> {
        if self.unsent.is_empty() {
            let written = write_some(socket, bytes)?;
            self.unsent.extend_from_slice(&bytes[written..]);
        } else {
            self.unsent.extend_from_slice(bytes);
        }
        Ok(())
    }
}

/// Writes as much of `bytes` as the socket takes now.
fn write_some(socket: &impl Socket, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match socket.try_write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(written)
}
