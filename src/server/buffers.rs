//! The lean engine's buffers: a read buffer and an output buffer lent to a connection for
//! one wake-up and given back, so an idle connection holds none. In tasks mode at most one
//! of each per worker is in use at a time; in threads mode one per thread that is awake.

use std::sync::Mutex;

/// Output buffers bigger than this are freed rather than pooled.
const POOLED_OUTPUT_CAPACITY: usize = 64 * 1024;

/// Free read buffers (each `read_size` long) and free output buffers (empty).
type FreeBuffers = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Read and write buffers lent to connections for the length of one wake-up. In tasks
/// mode at most one per worker is in use; in threads mode one per thread that is reading
/// at that moment.
pub struct BufferPool {
    read_size: usize,
    free: Mutex<FreeBuffers>,
    /// How many of each kind the pool keeps; more are freed.
    keep: usize,
}

impl BufferPool {
    pub fn new(read_size: usize, keep: usize) -> Self {
        BufferPool {
            read_size,
            free: Mutex::new((Vec::new(), Vec::new())),
            keep,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FreeBuffers> {
        self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn take(&self) -> (Vec<u8>, Vec<u8>) {
        let (read, output) = {
            let mut free = self.lock();
            (free.0.pop(), free.1.pop())
        };
        (
            read.unwrap_or_else(|| vec![0; self.read_size]),
            output.unwrap_or_default(),
        )
    }

    pub(super) fn give(&self, read: Vec<u8>, mut output: Vec<u8>) {
        output.clear();
        let mut free = self.lock();
        if free.0.len() < self.keep {
            free.0.push(read);
        }
        if free.1.len() < self.keep && output.capacity() <= POOLED_OUTPUT_CAPACITY {
            free.1.push(output);
        }
    }
}
