//! The board every held connection watches: shutdown, and server pushes (`POST
//! /broadcast`, `--push-interval`). One per server, the same in both execution models;
//! only the way a waiting connection is woken differs:
//!
//! - tasks mode: every session task waits on one `tokio::sync::Notify` (an
//!   `OwnedNotified` in the task, 64 bytes, in place of the 72-byte cancellation future it
//!   replaces) and `notify_waiters` wakes them all;
//! - threads mode: every thread polls the current *generation*'s eventfd beside its
//!   socket. A post writes that eventfd (it stays readable, nobody reads it) and puts a
//!   fresh one in its place, so each thread wakes once per post and then waits on the
//!   new generation. A generation's fd is closed when the last thread lets go of it.
//!
//! A held connection keeps only the sequence number of the last push it took (8 bytes):
//! no channel, no buffer. Pushes wait in a ring of the last [`RING`] frames, encoded once;
//! on waking, a connection copies every push it has not taken into its output for that
//! wake-up. Opening, closing and posting take the board's lock; taking a push does not.
//!
//! Each push counts the connections that had opened when it was posted; the last one to
//! hand it to its socket (or to drop it, or to close) ends the count, and the time from
//! the post to that moment is `wsscale_broadcast_duration_seconds`.
//!
//! **Direct writes** (tasks mode, lean engine, plain TCP): such a connection does not wait
//! on the `Notify`. It attaches a [`Slot`] to the board instead — its socket's descriptor,
//! a writer flag, the sequence number it has seen and its task's waker — and the post
//! itself `send()`s the encoded frame to every attached socket that has nothing
//! half-written (the post's work is split in chunks of [`CHUNK`] connections, run as
//! tasks on the runtime's workers). Only a connection the post cannot write to (its task
//! is writing, or has bytes queued behind a slow peer, or missed an earlier push, or the
//! socket is full) is woken, and its task takes the push from the ring as before. So a
//! broadcast costs one `send()` per connection and no task poll, the way the floor does.
//!
//! The rules that keep every frame whole and in order on the wire:
//! - every write to an attached socket — the task's echoes, pongs, close and pushes, the
//!   post's direct writes — is made holding the slot's [`BUSY`] flag, so no two writers
//!   ever write to one socket at once;
//! - the post writes push `seq` only if the connection has seen exactly `seq - 1` and
//!   nothing is queued ([`QUEUED`] clear): anything else is the task's, woken;
//! - the rest of a push the socket took only in part is left in the slot, [`QUEUED`] set,
//!   and the task queues it first, before any other byte;
//! - a connection that stops taking pushes (its close handshake began, or it ended)
//!   marks its slot [`RETIRED`] under the flag before its socket is closed, so the post
//!   never writes to a descriptor that has been closed (and perhaps reused).

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::Waker;
use std::time::Instant;

use tokio::sync::Notify;

use crate::deflate::Agreement;
use crate::metrics::ServerMetrics;
use crate::protocol::{self, opcode};
use wsscale_wire::push::{self, Push as PushHeader};

/// Pushes kept for connections that have not taken them yet. A connection further
/// behind than this (a peer that does not read) misses the older ones: its client sees
/// the gap in the sequence.
pub const RING: usize = 64;

/// One push, as every connection sends it.
struct Push {
    seq: u64,
    /// The whole WebSocket frame (binary, FIN set).
    frame: Box<[u8]>,
    /// Where the payload starts in `frame`.
    payload_at: usize,
    /// The frame compressed (permessage-deflate, RSV1) for connections that agreed to
    /// `server_no_context_takeover`, once per window bits (9..=15) one of them asked for,
    /// by the first connection that needs it; every other sends the same bytes.
    compressed: [OnceLock<Box<[u8]>>; 7],
    posted: Instant,
    /// Connections that still have to take it.
    remaining: AtomicUsize,
}

/// Slots per page of the board's table of attached connections, and so per
/// direct-write task of a post.
pub const CHUNK: usize = 256;

/// A [`Slot`]'s state: someone (the connection's task, or a post) is writing to the
/// socket now.
pub const BUSY: u32 = 1;
/// A [`Slot`]'s state: the connection has bytes waiting for its socket (a slow peer), so
/// a push must queue behind them: its task's job.
pub const QUEUED: u32 = 2;
/// A [`Slot`]'s state: the connection takes no more pushes (it is closing or closed).
pub const RETIRED: u32 = 4;

/// What posting, opening and closing change together.
struct Registry {
    /// Connections open (registered) now.
    open: usize,
    /// The attached connections' slots, in pages of [`CHUNK`] allocated as connections
    /// attach and never freed nor moved while the board lives: a post reads a page
    /// without the lock, and a slot costs its 56 bytes and no allocation of its own.
    /// `free` lists the places not in use (their slots [`RETIRED`]).
    pages: Vec<Box<[Slot]>>,
    free: Vec<u32>,
}

/// A place in the board's table of attached connections (see the module's rules).
pub struct Slot {
    /// The socket (plain TCP) of the connection attached here: set holding [`BUSY`],
    /// read holding it, valid until the slot is retired, which its connection does
    /// before closing it.
    fd: AtomicI32,
    /// [`BUSY`], [`QUEUED`], [`RETIRED`]; a vacant slot is [`RETIRED`].
    state: AtomicU32,
    /// The last push the connection took (written, queued or dropped); changed only
    /// holding [`BUSY`].
    seen: AtomicU64,
    /// The rest of a push the socket took only in part, and how much it took; read and
    /// written only holding [`BUSY`].
    partial: UnsafeCell<Option<(Arc<Push>, usize)>>,
    /// The connection's task, to wake when a post cannot write for it.
    waker: Mutex<Option<Waker>>,
}

// SAFETY: `partial` is only touched by the holder of the BUSY flag (acquired with an
// Acquire CAS, released with a Release store), which serialises every access to it;
// every other field is atomic or behind a mutex.
unsafe impl Sync for Slot {}

/// A connection's place in the board's table, from [`Board::attach`] until
/// [`Board::detach`]; [`Board::slot_of`] reaches it.
#[derive(Debug, Clone, Copy)]
pub struct Attached {
    index: u32,
}

/// The rest of a push a post wrote in part, for the connection to queue first.
pub struct Remainder {
    push: Arc<Push>,
    written: usize,
}

impl Remainder {
    pub fn bytes(&self) -> &[u8] {
        &self.push.frame[self.written..]
    }
}

/// The writer's turn on a slot, taken by the connection's own task.
pub struct Turn<'a> {
    slot: &'a Slot,
}

impl Slot {
    fn vacant() -> Slot {
        Slot {
            fd: AtomicI32::new(-1),
            state: AtomicU32::new(RETIRED),
            seen: AtomicU64::new(0),
            partial: UnsafeCell::new(None),
            waker: Mutex::new(None),
        }
    }

    fn waker(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.waker.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits (spinning: a post holds the flag for one non-blocking `send()`) for the
    /// writer's turn.
    pub fn turn(&self) -> Turn<'_> {
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & BUSY != 0 {
                std::hint::spin_loop();
                state = self.state.load(Ordering::Relaxed);
                continue;
            }
            match self
                .state
                .compare_exchange_weak(state, state | BUSY, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Turn { slot: self },
                Err(now) => state = now,
            }
        }
    }

    /// Registers the task to wake when a post cannot write for it. Call on every poll,
    /// before taking the turn.
    pub fn register(&self, waker: &Waker) {
        let mut held = self.waker();
        if !held.as_ref().is_some_and(|held| held.will_wake(waker)) {
            *held = Some(waker.clone());
        }
    }

    fn wake(&self) {
        let waker = self.waker().clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Turn<'_> {
    /// The last push the connection took.
    pub fn seen(&self) -> u64 {
        self.slot.seen.load(Ordering::Relaxed)
    }

    /// The rest of a push a post wrote in part, to be queued before anything else.
    pub fn take_partial(&mut self) -> Option<Remainder> {
        // SAFETY: this turn holds BUSY.
        let partial = unsafe { &mut *self.slot.partial.get() };
        partial.take().map(|(push, written)| Remainder { push, written })
    }

    /// Ends the turn: the connection has taken pushes up to `seen`, and `state` says
    /// whether it has bytes queued ([`QUEUED`]) or takes no more pushes ([`RETIRED`]).
    pub fn end(self, seen: u64, state: u32) {
        self.slot.seen.store(seen, Ordering::Relaxed);
        self.slot.state.store(state & (QUEUED | RETIRED), Ordering::Release);
        std::mem::forget(self);
    }
}

impl Drop for Turn<'_> {
    /// A turn ended without [`Turn::end`] (a panic): stop writing to this socket.
    fn drop(&mut self) {
        self.slot.state.store(RETIRED, Ordering::Release);
    }
}

/// How a post's direct write to one connection went.
enum Delivery {
    /// Written (whole, or in part with the rest left in the slot).
    Direct,
    /// Left to the connection's task, woken.
    Woken,
    /// Nothing to do: the connection took it already, or takes no more.
    Skipped,
}

pub struct Board {
    shutdown: AtomicBool,
    /// The newest push's sequence number; 0 before the first.
    latest: AtomicU64,
    registry: Mutex<Registry>,
    ring: Box<[RwLock<Option<Arc<Push>>>]>,
    /// Tasks mode: every session task waits on it.
    pub notify: Arc<Notify>,
    /// Threads mode: the generation every thread polls now.
    generation: Mutex<Arc<Generation>>,
    metrics: ServerMetrics,
}

/// The pushes a connection has not taken yet, oldest first (see [`Board::take`]).
pub struct Takes<'a> {
    board: &'a Board,
    next: u64,
    last: u64,
}

impl<'a> Iterator for Takes<'a> {
    type Item = Taken<'a>;

    fn next(&mut self) -> Option<Taken<'a>> {
        while self.next <= self.last {
            let seq = self.next;
            self.next += 1;
            if let Some(push) = self.board.slot(seq) {
                return Some(Taken {
                    board: self.board,
                    push,
                });
            }
        }
        None
    }
}

impl Drop for Takes<'_> {
    /// What the connection did not get to is settled all the same: it will never take it.
    fn drop(&mut self) {
        self.for_each(drop);
    }
}

/// A push a connection took.
pub struct Taken<'a> {
    board: &'a Board,
    push: Arc<Push>,
}

impl Taken<'_> {
    pub fn frame(&self) -> &[u8] {
        &self.push.frame
    }

    /// The frame for a connection with this permessage-deflate agreement: compressed
    /// once for every connection that takes no context from one message to the next
    /// (`--deflate stateless`); as it is otherwise (a `context` connection's window must
    /// not see bytes its own stream did not compress, and an uncompressed message is
    /// always allowed).
    pub fn frame_for(&self, deflate: Option<&Agreement>) -> &[u8] {
        let Some(agreement) = deflate.filter(|agreement| agreement.server_no_context_takeover) else {
            return &self.push.frame;
        };
        let bits = agreement.server_window_bits;
        let index = usize::from(bits - *crate::deflate::WINDOW_BITS.start());
        self.push.compressed[index].get_or_init(|| {
            let compressed = crate::deflate::compress_alone(bits, &self.push.frame[self.push.payload_at..]);
            let mut frame = Vec::with_capacity(compressed.len() + 10);
            protocol::encode_compressed(&mut frame, opcode::BINARY, &compressed);
            frame.into_boxed_slice()
        })
    }
}

impl Drop for Taken<'_> {
    /// The connection has handed the push to its socket, queued it, or dropped it.
    fn drop(&mut self) {
        self.board.settle(&self.push);
    }
}

impl Board {
    pub fn new(metrics: ServerMetrics) -> io::Result<Board> {
        Ok(Board {
            shutdown: AtomicBool::new(false),
            latest: AtomicU64::new(0),
            registry: Mutex::new(Registry {
                open: 0,
                pages: Vec::new(),
                free: Vec::new(),
            }),
            ring: (0..RING).map(|_| RwLock::new(None)).collect(),
            notify: Arc::new(Notify::new()),
            generation: Mutex::new(Arc::new(Generation::new()?)),
            metrics,
        })
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A connection opens: it takes the pushes posted from now on. Returns the sequence
    /// number it has seen.
    pub fn open(&self) -> u64 {
        let mut registry = self.registry();
        registry.open += 1;
        self.latest.load(Ordering::Acquire)
    }

    /// Attaches an open connection's plain TCP socket for direct writes (see the module's
    /// rules): it has taken pushes up to `seen`, and `state` says whether it has bytes
    /// queued. The connection must [`Board::detach`] it before closing the socket.
    pub fn attach(&self, fd: RawFd, seen: u64, state: u32) -> Attached {
        let (attached, slot) = {
            let mut registry = self.registry();
            let index = match registry.free.pop() {
                Some(index) => index,
                None => {
                    let first = registry.pages.len() * CHUNK;
                    assert!(first + CHUNK <= u32::MAX as usize, "fewer than 2^32 connections");
                    registry.pages.push((0..CHUNK).map(|_| Slot::vacant()).collect());
                    registry
                        .free
                        .extend((first + 1..first + CHUNK).rev().map(|index| index as u32));
                    first as u32
                }
            };
            let slot: *const Slot = &registry.pages[index as usize / CHUNK][index as usize % CHUNK];
            (Attached { index }, slot)
        };
        // SAFETY: pages are never freed nor moved while the board lives.
        let slot = unsafe { &*slot };
        // A vacant slot is RETIRED, so no post holds it; a post for an earlier push that
        // finds it attached sees a sequence number at or past its own and skips it.
        let turn = slot.turn();
        slot.fd.store(fd, Ordering::Relaxed);
        turn.end(seen, state);
        attached
    }

    /// The slot at `attached`, for as long as the board lives.
    pub fn slot_of(&self, attached: Attached) -> &Slot {
        let page: *const [Slot] = &*self.registry().pages[attached.index as usize / CHUNK];
        // SAFETY: pages are never freed nor moved while the board lives (`&self`).
        unsafe { &(*page)[attached.index as usize % CHUNK] }
    }

    /// Retires an attached connection's slot (waiting for a post writing to it now to
    /// finish) and gives its place back; returns the last push it took. After this no
    /// post writes to its socket, which may then be closed.
    pub fn detach(&self, attached: Attached) -> u64 {
        let slot = self.slot_of(attached);
        let mut turn = slot.turn();
        let seen = turn.seen();
        drop(turn.take_partial());
        slot.fd.store(-1, Ordering::Relaxed);
        let waker = slot.waker().take();
        turn.end(seen, RETIRED);
        drop(waker);
        self.registry().free.push(attached.index);
        seen
    }

    /// Connections open (registered for pushes) now.
    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        self.registry().open
    }

    /// A connection closes having taken pushes up to `seen`: the pushes it will never
    /// take no longer wait for it.
    pub fn close(&self, seen: u64) {
        let mut registry = self.registry();
        registry.open -= 1;
        let latest = self.latest.load(Ordering::Acquire);
        for seq in seen + 1..=latest {
            if let Some(push) = self.slot(seq) {
                self.settle(&push);
            }
        }
    }

    /// The server is shutting down: every open connection sends 1001.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wake_all();
        let pages = self.registry().pages.len();
        for page in 0..pages {
            for slot in self.page(page) {
                slot.wake();
            }
        }
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// The newest push's sequence number.
    pub fn latest(&self) -> u64 {
        self.latest.load(Ordering::Acquire)
    }

    /// Posts a push of `size` bytes to every open connection; returns its sequence number
    /// and how many connections it goes to. Attached connections are written to directly
    /// (in chunks, as tasks on the caller's runtime; inline without one), the others
    /// woken.
    pub fn post(self: &Arc<Self>, size: usize) -> (u64, usize) {
        let (seq, open, push, attached) = {
            let registry = self.registry();
            let seq = self.latest.load(Ordering::Relaxed) + 1;
            let payload = push::encode(
                PushHeader {
                    seq,
                    sent_unix_nanos: push::now_unix_nanos(),
                },
                size,
            );
            let mut frame = Vec::with_capacity(size + 10);
            protocol::encode(&mut frame, opcode::BINARY, &payload);
            let push = Arc::new(Push {
                seq,
                payload_at: frame.len() - payload.len(),
                compressed: Default::default(),
                frame: frame.into_boxed_slice(),
                posted: Instant::now(),
                remaining: AtomicUsize::new(registry.open),
            });
            let mut slot = self.ring[seq as usize % RING]
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(evicted) = slot.replace(push.clone())
                && evicted.remaining.load(Ordering::Acquire) > 0
            {
                tracing::debug!(
                    seq = evicted.seq,
                    "a push left the ring before every connection took it"
                );
            }
            drop(slot);
            self.latest.store(seq, Ordering::Release);
            if registry.open == 0 {
                self.settle_done(&push);
            }
            (seq, registry.open, push, registry.pages.len())
        };
        self.metrics.broadcasts.increment(1);
        self.wake_all();
        let runtime = tokio::runtime::Handle::try_current().ok();
        for page in 0..attached {
            match &runtime {
                Some(runtime) => {
                    let (board, push) = (self.clone(), push.clone());
                    runtime.spawn(async move { board.deliver(&push, page) });
                }
                None => self.deliver(&push, page),
            }
        }
        (seq, open)
    }

    /// The slots of page `page` of the table, for as long as the board lives.
    fn page(&self, page: usize) -> &[Slot] {
        let page: *const [Slot] = &*self.registry().pages[page];
        // SAFETY: pages are never freed nor moved while the board lives (`&self`).
        unsafe { &*page }
    }

    /// A post's direct writes to the connections attached in page `page` of the table.
    fn deliver(&self, push: &Arc<Push>, page: usize) {
        let slots = self.page(page);
        let mut direct = 0;
        for slot in slots {
            if let Delivery::Direct = self.deliver_one(slot, push) {
                direct += 1;
            }
        }
        self.metrics.pushes_written_directly(direct);
    }

    /// Writes `push` straight to one attached socket if the rules allow; otherwise wakes
    /// its task (which takes the push from the ring).
    fn deliver_one(&self, slot: &Slot, push: &Arc<Push>) -> Delivery {
        if let Err(state) = slot
            .state
            .compare_exchange(0, BUSY, Ordering::Acquire, Ordering::Relaxed)
        {
            if state & RETIRED != 0 {
                return Delivery::Skipped;
            }
            slot.wake();
            return Delivery::Woken;
        }
        let seen = slot.seen.load(Ordering::Relaxed);
        if seen >= push.seq {
            slot.state.store(0, Ordering::Release);
            return Delivery::Skipped;
        }
        if seen + 1 < push.seq {
            // An earlier push is the task's (it could not be written): keep the order.
            slot.state.store(0, Ordering::Release);
            slot.wake();
            return Delivery::Woken;
        }
        let frame = &push.frame[..];
        let written = loop {
            // SAFETY: `fd` is the connection's open socket: the slot is not retired (we
            // hold BUSY, and retiring takes it), and its connection closes the socket
            // only after retiring the slot. The buffer is valid for its length.
            let n = unsafe {
                libc::send(
                    slot.fd.load(Ordering::Relaxed),
                    frame.as_ptr().cast(),
                    frame.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break 0;
            }
        };
        if written == 0 {
            // Full, or an error the task will meet on its own: the push is the task's.
            slot.state.store(0, Ordering::Release);
            slot.wake();
            return Delivery::Woken;
        }
        slot.seen.store(push.seq, Ordering::Relaxed);
        let state = if written < frame.len() {
            // SAFETY: we hold BUSY.
            unsafe { *slot.partial.get() = Some((push.clone(), written)) };
            QUEUED
        } else {
            0
        };
        slot.state.store(state, Ordering::Release);
        if state == QUEUED {
            slot.wake();
        }
        self.settle(push);
        Delivery::Direct
    }

    /// The pushes after `seen` that are still in the ring, oldest first, for a connection
    /// to send; `seen` moves to the newest. Each is counted delivered when the returned
    /// [`Taken`] is dropped; those the caller does not get to (it stops early, or drops
    /// the iterator) are counted when the iterator is dropped. Nothing is allocated: a
    /// push wakes every connection, so this runs once per connection per push.
    pub fn take(&self, seen: &mut u64) -> Takes<'_> {
        let latest = self.latest.load(Ordering::Acquire);
        let takes = Takes {
            board: self,
            next: *seen + 1,
            last: latest,
        };
        *seen = latest;
        takes
    }

    /// The push numbered `seq`, if the ring still holds it.
    fn slot(&self, seq: u64) -> Option<Arc<Push>> {
        let slot = self.ring[seq as usize % RING]
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.as_ref().filter(|push| push.seq == seq).cloned()
    }

    /// One connection is done with `push`.
    fn settle(&self, push: &Push) {
        if push.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settle_done(push);
        }
    }

    fn settle_done(&self, push: &Push) {
        self.metrics.broadcast_done(push.posted.elapsed().as_secs_f64());
    }

    /// Wakes every waiting connection in either model.
    fn wake_all(&self) {
        self.notify.notify_waiters();
        let mut generation = self.generation.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match Generation::new() {
            Ok(next) => {
                let finished = std::mem::replace(&mut *generation, Arc::new(next));
                finished.signal();
            }
            // Out of descriptors: signal the current one anyway; it stays readable, so the
            // threads poll busily until a later post succeeds in replacing it.
            Err(error) => {
                tracing::warn!(%error, "cannot create the next board generation");
                generation.signal();
            }
        }
    }

    /// The generation a thread polls next: take it before looking at the board, so a
    /// post after the look signals the generation being polled.
    pub fn generation(&self) -> Arc<Generation> {
        self.generation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// A generation of the board for threads mode: an eventfd that becomes readable, for
/// good, when the board changes.
pub struct Generation {
    fd: OwnedFd,
}

impl Generation {
    fn new() -> io::Result<Generation> {
        // SAFETY: eventfd(2) with valid flags; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nobody else.
        Ok(Generation {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our own eventfd.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> Arc<Board> {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || Arc::new(Board::new(ServerMetrics::register()).unwrap()))
    }

    fn readable(fd: RawFd) -> bool {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut poll, 1, 0) == 1 }
    }

    #[test]
    fn a_connection_takes_each_push_once_in_order_from_when_it_opened() {
        let board = board();
        board.post(32);
        let mut seen = board.open();
        assert_eq!(seen, 1, "pushes before the connection opened are not its own");
        assert_eq!(board.take(&mut seen).count(), 0);
        board.post(32);
        board.post(40);
        let taken: Vec<_> = board.take(&mut seen).collect();
        let seqs: Vec<u64> = taken
            .iter()
            .map(|taken| u64::from_be_bytes(taken.frame()[6..14].try_into().unwrap()))
            .collect();
        assert_eq!(seqs, [2, 3]);
        assert_eq!(taken[1].frame().len(), 2 + 40);
        drop(taken);
        assert_eq!(seen, 3);
        assert_eq!(board.take(&mut seen).count(), 0, "taken once");
        board.close(seen);
    }

    #[test]
    fn a_push_is_compressed_once_for_every_stateless_connection() {
        use crate::deflate::{DeflateConfig, DeflateMode, negotiate};
        let chromium = ["permessage-deflate; client_max_window_bits"];
        let stateless = negotiate(
            chromium,
            DeflateConfig {
                mode: DeflateMode::Stateless,
                window_bits: 15,
            },
        )
        .unwrap();
        let narrow = negotiate(
            ["permessage-deflate; server_max_window_bits=10"],
            DeflateConfig {
                mode: DeflateMode::Stateless,
                window_bits: 15,
            },
        )
        .unwrap();
        let context = negotiate(
            chromium,
            DeflateConfig {
                mode: DeflateMode::Context,
                window_bits: 15,
            },
        )
        .unwrap();
        let board = board();
        let (mut first, mut second) = (board.open(), board.open());
        board.post(1000);
        let one = board.take(&mut first).next().unwrap();
        let other = board.take(&mut second).next().unwrap();
        let compressed = one.frame_for(Some(&stateless));
        assert!(
            std::ptr::eq(compressed, other.frame_for(Some(&stateless))),
            "the same bytes for every stateless connection"
        );
        assert_eq!(compressed[0], 0x80 | 0x40 | opcode::BINARY, "FIN, RSV1, binary");
        assert!(compressed.len() < one.frame().len() / 4, "{} bytes", compressed.len());
        // What a client inflates (RFC 7692 7.2.2: the tail put back) is the push itself.
        let mut input = compressed[2..].to_vec();
        if compressed[1] & 0x7f == 126 {
            input.drain(..2);
        }
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut inflate = flate2::Decompress::new_with_window_bits(false, 15);
        let mut payload = Vec::with_capacity(4096);
        inflate
            .decompress_vec(&input, &mut payload, flate2::FlushDecompress::Sync)
            .unwrap();
        assert_eq!(payload, one.frame()[4..], "the push's payload, whole");
        assert!(
            !std::ptr::eq(compressed, one.frame_for(Some(&narrow))),
            "a narrower window gets its own"
        );
        assert!(
            std::ptr::eq(one.frame_for(Some(&context)), one.frame()),
            "context: as it is"
        );
        assert!(std::ptr::eq(one.frame_for(None), one.frame()));
        drop((one, other));
        board.close(first);
        board.close(second);
    }

    #[test]
    fn a_lagging_connection_misses_what_left_the_ring() {
        let board = board();
        let mut seen = board.open();
        for _ in 0..RING + 5 {
            board.post(20);
        }
        assert_eq!(board.take(&mut seen).count(), RING);
        assert_eq!(seen, (RING + 5) as u64);
    }

    #[test]
    fn every_post_signals_the_generation_threads_poll_and_replaces_it() {
        let board = board();
        let before = board.generation();
        assert!(!readable(before.fd()));
        board.post(20);
        assert!(readable(before.fd()), "the polled generation wakes");
        let after = board.generation();
        assert!(!readable(after.fd()), "the next one waits for the next post");
        board.begin_shutdown();
        assert!(readable(after.fd()));
        assert!(board.shutdown_requested());
    }

    #[test]
    fn a_push_is_done_when_every_connection_took_it_or_closed() {
        let board = board();
        let mut first = board.open();
        let second = board.open();
        board.post(20);
        let push = board.slot(1).unwrap();
        assert_eq!(push.remaining.load(Ordering::Acquire), 2);
        drop(board.take(&mut first));
        assert_eq!(
            push.remaining.load(Ordering::Acquire),
            1,
            "settled without being iterated: the connection will never take it"
        );
        board.close(second);
        assert_eq!(push.remaining.load(Ordering::Acquire), 0);
        board.close(first);
    }

    /// A waker that counts its wake-ups.
    struct Counting(AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Counting>, Waker) {
        let counter = Arc::new(Counting(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    /// What is waiting on the peer's end, without blocking.
    fn drain(peer: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        peer.set_nonblocking(true).unwrap();
        let mut bytes = Vec::new();
        let _ = std::io::Read::read_to_end(peer, &mut bytes);
        bytes
    }

    fn seqs(mut bytes: &[u8]) -> Vec<u64> {
        let mut seqs = Vec::new();
        while !bytes.is_empty() {
            let len = 2 + (bytes[1] & 0x7F) as usize;
            seqs.push(u64::from_be_bytes(bytes[6..14].try_into().unwrap()));
            bytes = &bytes[len..];
        }
        seqs
    }

    #[test]
    fn a_post_writes_straight_to_an_attached_socket_in_order_and_wakes_nobody() {
        let board = board();
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let seen = board.open();
        let attached = board.attach(ours.as_raw_fd(), seen, 0);
        let slot = board.slot_of(attached);
        let (woken, waker) = counting();
        slot.register(&waker);
        for _ in 0..3 {
            board.post(20);
        }
        assert_eq!(seqs(&drain(&mut peer)), [1, 2, 3]);
        assert_eq!(woken.0.load(Ordering::SeqCst), 0, "nobody woken");
        assert_eq!(board.slot(3).unwrap().remaining.load(Ordering::Acquire), 0, "settled");
        let seen = board.detach(attached);
        assert_eq!(seen, 3);
        board.close(seen);
    }

    #[test]
    fn a_post_leaves_the_push_to_a_connection_that_is_writing_or_has_bytes_queued() {
        let board = board();
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut seen = board.open();
        let attached = board.attach(ours.as_raw_fd(), seen, 0);
        let slot = board.slot_of(attached);
        let (woken, waker) = counting();
        slot.register(&waker);
        // The connection's own task is writing: the post wakes it and writes nothing.
        let turn = slot.turn();
        board.post(20);
        assert!(drain(&mut peer).is_empty());
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert_eq!(board.take(&mut seen).count(), 1, "the task takes it from the ring");
        // ... and ends its turn with bytes queued behind a slow peer.
        turn.end(seen, QUEUED);
        board.post(20);
        assert!(drain(&mut peer).is_empty(), "nothing jumps the queue");
        assert_eq!(woken.0.load(Ordering::SeqCst), 2);
        let turn = slot.turn();
        assert_eq!(board.take(&mut seen).count(), 1);
        turn.end(seen, 0);
        // Caught up: the next push goes straight to the socket again.
        board.post(20);
        assert_eq!(seqs(&drain(&mut peer)), [3]);
        assert_eq!(woken.0.load(Ordering::SeqCst), 2);
        board.close(board.detach(attached));
    }

    #[test]
    fn a_post_never_writes_past_a_push_the_connection_has_not_taken() {
        let board = board();
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut seen = board.open();
        let attached = board.attach(ours.as_raw_fd(), seen, 0);
        let slot = board.slot_of(attached);
        let (woken, waker) = counting();
        slot.register(&waker);
        let turn = slot.turn();
        board.post(20);
        turn.end(seen, 0);
        // Push 1 is the task's (it has not run yet): push 2 must not overtake it.
        board.post(20);
        assert!(drain(&mut peer).is_empty());
        assert_eq!(woken.0.load(Ordering::SeqCst), 2);
        let turn = slot.turn();
        assert_eq!(turn.seen(), 0);
        assert_eq!(board.take(&mut seen).count(), 2);
        turn.end(seen, 0);
        board.close(board.detach(attached));
    }

    #[test]
    fn a_retired_slot_is_never_written_nor_woken() {
        let board = board();
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let seen = board.open();
        let attached = board.attach(ours.as_raw_fd(), seen, 0);
        let slot = board.slot_of(attached);
        let (woken, waker) = counting();
        slot.register(&waker);
        let turn = slot.turn();
        turn.end(seen, RETIRED);
        board.post(20);
        assert!(drain(&mut peer).is_empty(), "closing: no push after the close frame");
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        let seen = board.detach(attached);
        assert_eq!(seen, 0);
        board.close(seen);
        assert_eq!(board.slot(1).unwrap().remaining.load(Ordering::Acquire), 0);
        board.post(20);
        assert!(drain(&mut peer).is_empty(), "detached");
        assert_eq!(board.registry().free.len(), CHUNK, "its place is free again");
    }

    #[test]
    fn the_rest_of_a_push_the_socket_took_in_part_is_left_for_the_task() {
        let board = board();
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let seen = board.open();
        let attached = board.attach(ours.as_raw_fd(), seen, 0);
        let slot = board.slot_of(attached);
        let (woken, waker) = counting();
        slot.register(&waker);
        // Far more than a socket buffer takes at once.
        const SIZE: usize = 4 << 20;
        board.post(SIZE);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the task is woken for the rest");
        assert_eq!(slot.state.load(Ordering::Acquire), QUEUED, "no post writes past it");
        board.post(20);
        assert_eq!(woken.0.load(Ordering::SeqCst), 2);
        let mut turn = slot.turn();
        assert_eq!(turn.seen(), 1, "the first push is the post's, settled");
        let rest = turn.take_partial().expect("the rest of push 1");
        let written = drain(&mut peer);
        assert!(!written.is_empty() && written.len() < SIZE, "{}", written.len());
        assert_eq!(
            written.len() + rest.bytes().len(),
            10 + SIZE,
            "nothing lost, nothing twice"
        );
        assert_eq!(board.slot(1).unwrap().remaining.load(Ordering::Acquire), 0);
        drop(rest);
        turn.end(1, 0);
        board.close(board.detach(attached));
    }
}
