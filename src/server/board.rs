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

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::Notify;

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
    posted: Instant,
    /// Connections that still have to take it.
    remaining: AtomicUsize,
}

/// What posting, opening and closing change together.
struct Registry {
    /// Connections open (registered) now.
    open: usize,
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
            registry: Mutex::new(Registry { open: 0 }),
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
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// The newest push's sequence number.
    pub fn latest(&self) -> u64 {
        self.latest.load(Ordering::Acquire)
    }

    /// Posts a push of `size` bytes to every open connection; returns its sequence number
    /// and how many connections it goes to.
    pub fn post(&self, size: usize) -> (u64, usize) {
        let (seq, open) = {
            let registry = self.registry();
            let seq = self.latest.load(Ordering::Relaxed) + 1;
            let mut frame = Vec::with_capacity(size + 10);
            protocol::encode(
                &mut frame,
                opcode::BINARY,
                &push::encode(
                    PushHeader {
                        seq,
                        sent_unix_nanos: push::now_unix_nanos(),
                    },
                    size,
                ),
            );
            let push = Arc::new(Push {
                seq,
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
            (seq, registry.open)
        };
        self.metrics.broadcasts.increment(1);
        self.wake_all();
        (seq, open)
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

    fn board() -> Board {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || Board::new(ServerMetrics::register()).unwrap())
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
}
