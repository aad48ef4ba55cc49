//! A counting wrapper around the system allocator: live heap bytes are what the program
//! asked for and has not freed, the same measure for every execution model and for the
//! load generator. (jemalloc's per-thread caches would inflate thread-per-connection
//! about 3x and so measure the allocator rather than the model.)
//!
//! The `wsscale` binary installs it with `#[global_allocator]`; where it is not installed
//! (unit tests) [`allocated_bytes`] reads 0. [`release_free_memory`] asks the system allocator
//! to give its free pages back to the OS; RSS is then smaller because the pages are gone,
//! not because anything is hidden.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Live heap bytes requested through [`CountingAllocator`].
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

pub struct CountingAllocator;

/// Live heap bytes: allocated and not yet freed.
pub fn allocated_bytes() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds GlobalAlloc's
// contract; the counter is only bookkeeping.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; the caller guarantees ptr came from this allocator with layout.
        unsafe { System.dealloc(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded; the caller upholds realloc's contract.
        let new_ptr = unsafe { System.realloc(ptr, layout, new_size) };
        if !new_ptr.is_null() {
            if new_size >= layout.size() {
                ALLOCATED.fetch_add(new_size - layout.size(), Ordering::Relaxed);
            } else {
                ALLOCATED.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new_ptr
    }
}

/// Gives the allocator's free memory back to the OS; returns whether any was released.
///
/// With glibc (the system allocator here), `malloc_trim(0)` shrinks the top of every
/// arena and, since glibc 2.8, `madvise(MADV_DONTNEED)`s every whole page inside the
/// arenas' free chunks, so memory freed between live allocations is released too (only
/// the partial pages around live chunks stay). It takes each arena's lock while it walks
/// that arena's free chunks, so it is for a quiet moment, not a hot path. Elsewhere (other
/// C libraries, other systems) it does nothing and returns false.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim has no preconditions; it may be called from any thread at
        // any time, and only returns free pages to the kernel.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
