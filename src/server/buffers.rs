//! The lean engine's buffers, lent to a connection for one wake-up and given back, so an
//! idle connection holds none. In tasks mode at most one set per worker is in use at a
//! time; in threads mode one per thread that is awake.

use std::sync::Mutex;

/// Output buffers bigger than this are freed rather than pooled.
const POOLED_OUTPUT_CAPACITY: usize = 64 * 1024;

/// What a connection borrows for one wake-up.
pub(super) struct Lent {
    /// What the socket has, read `read_size` bytes at a time (ciphertext under TLS).
    pub read: Vec<u8>,
    /// The session's answers (plaintext), empty.
    pub output: Vec<u8>,
    /// Under TLS: the plaintext of the records just read, empty.
    pub plaintext: Vec<u8>,
    /// Under TLS: records to send, empty.
    pub ciphertext: Vec<u8>,
}

/// Free buffers of each kind.
#[derive(Default)]
struct Free {
    read: Vec<Vec<u8>>,
    output: Vec<Vec<u8>>,
    plaintext: Vec<Vec<u8>>,
    ciphertext: Vec<Vec<u8>>,
}

/// Buffers lent to connections for the length of one wake-up.
pub struct BufferPool {
    read_size: usize,
    free: Mutex<Free>,
    /// How many of each kind the pool keeps; more are freed.
    keep: usize,
}

impl BufferPool {
    pub fn new(read_size: usize, keep: usize) -> Self {
        BufferPool {
            read_size,
            free: Mutex::new(Free::default()),
            keep,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn take(&self) -> Lent {
        let mut free = self.lock();
        Lent {
            read: free.read.pop().unwrap_or_else(|| vec![0; self.read_size]),
            output: free.output.pop().unwrap_or_default(),
            plaintext: free.plaintext.pop().unwrap_or_default(),
            ciphertext: free.ciphertext.pop().unwrap_or_default(),
        }
    }

    pub(super) fn give(&self, lent: Lent) {
        let Lent {
            read,
            output,
            plaintext,
            ciphertext,
        } = lent;
        let keep = self.keep;
        let give_back = |list: &mut Vec<Vec<u8>>, mut buffer: Vec<u8>| {
            if list.len() < keep && buffer.capacity() <= POOLED_OUTPUT_CAPACITY {
                buffer.clear();
                list.push(buffer);
            }
        };
        let mut free = self.lock();
        let free = &mut *free;
        if free.read.len() < keep {
            free.read.push(read);
        }
        give_back(&mut free.output, output);
        give_back(&mut free.plaintext, plaintext);
        give_back(&mut free.ciphertext, ciphertext);
    }
}
