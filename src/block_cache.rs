//! The gateway's global allocator: the system allocator (glibc malloc), with
//! a small per-thread cache of freed blocks of a few exact sizes that are
//! too large for glibc's own per-thread cache.
//!
//! Every request allocates and frees such blocks: the 8 KiB read buffer of
//! the client's connection and of the provider's (a fresh one is reserved
//! for the next read while the request or response just read is still held
//! as slices of the old one), and a few other per-request buffers of a
//! kilobyte or more. glibc's per-thread cache stops at 1,032 bytes (glibc
//! 2.36), so without this each would go through malloc's shared bins:
//! sorting, splitting and merging chunks on every request.
//! Here a freed block of a size the thread has seen recently is kept (up to
//! [`DEPTH`] per size, [`BINS`] sizes per thread) and handed back to the
//! next request of exactly that size.
//!
//! Every block is a real `malloc` block of exactly the size it is handed
//! out for, so `realloc` and `free` work on it as usual, and no size is
//! rounded up: memory per open connection is what it was. A thread's cached
//! blocks are freed when the thread ends.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Sizes cached: above glibc 2.36's per-thread cache (1,032 bytes) and up to
/// where blocks are still "per request" rather than bodies.
const MIN_SIZE: usize = 1033;
const MAX_SIZE: usize = 32 * 1024;
/// Distinct sizes a thread keeps at once.
const BINS: usize = 4;
/// Blocks kept per size: enough for the blocks one poll of a busy
/// connection frees, few enough that a thread holds at most
/// `BINS * DEPTH * MAX_SIZE` (1 MiB) and usually far less.
const DEPTH: usize = 8;

/// The allocator: `#[global_allocator] static A: BlockCache = BlockCache;`.
pub struct BlockCache;

struct Bin {
    /// The size this bin holds; 0 while it is free to take another size.
    size: usize,
    len: usize,
    blocks: [*mut u8; DEPTH],
}

struct Bins([Bin; BINS]);

impl Bins {
    const fn new() -> Bins {
        const EMPTY: Bin = Bin {
            size: 0,
            len: 0,
            blocks: [ptr::null_mut(); DEPTH],
        };
        Bins([EMPTY; BINS])
    }

    fn take(&mut self, size: usize) -> Option<*mut u8> {
        let bin = self.0.iter_mut().find(|bin| bin.size == size)?;
        if bin.len == 0 {
            return None;
        }
        bin.len -= 1;
        let block = bin.blocks[bin.len];
        if bin.len == 0 {
            // Empty: free to hold whatever size comes next.
            bin.size = 0;
        }
        Some(block)
    }

    /// Keeps `block`, or returns false when there is no room for its size.
    fn put(&mut self, size: usize, block: *mut u8) -> bool {
        let bin = match self.0.iter().position(|bin| bin.size == size) {
            Some(i) => &mut self.0[i],
            None => match self.0.iter_mut().find(|bin| bin.size == 0) {
                Some(bin) => {
                    bin.size = size;
                    bin
                }
                None => return false,
            },
        };
        if bin.len == DEPTH {
            return false;
        }
        bin.blocks[bin.len] = block;
        bin.len += 1;
        true
    }
}

impl Drop for Bins {
    fn drop(&mut self) {
        for bin in &mut self.0 {
            for &block in &bin.blocks[..bin.len] {
                // SAFETY: a cached block came from `System.alloc` with this
                // size and an alignment `is_cached` accepted (at most
                // malloc's own), which is what `dealloc` needs.
                unsafe {
                    System.dealloc(block, Layout::from_size_align_unchecked(bin.size, 1));
                }
            }
            bin.len = 0;
        }
    }
}

thread_local! {
    // Const-initialised: reaching it never allocates, so the allocator can
    // use it. Once the thread's destructors have run it is gone, and blocks
    // go straight to the system allocator.
    static BINS_OF_THREAD: UnsafeCell<Bins> = const { UnsafeCell::new(Bins::new()) };
}

/// Sizes worth caching, at alignments malloc gives anyway (so a cached block
/// suits any request of its size).
#[inline(always)]
fn is_cached(layout: &Layout) -> bool {
    // One compare for the range: sizes below MIN_SIZE wrap around to huge.
    layout.size().wrapping_sub(MIN_SIZE) <= MAX_SIZE - MIN_SIZE && layout.align() <= 16
}

// SAFETY: every pointer handed out is either fresh from `System` or a block
// `System` allocated with the same size and a compatible alignment, used by
// one owner at a time (a cached block belongs to the cache until taken).
unsafe impl GlobalAlloc for BlockCache {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_cached(&layout)
            && let Some(block) = take_cached(layout.size())
        {
            return block;
        }
        // SAFETY: forwarded as given.
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if is_cached(&layout) && put_cached(layout.size(), block) {
            return;
        }
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(block, layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given (calloc; large zeroed blocks are rare).
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: every block is a `System` block of `layout`'s size.
        unsafe { System.realloc(block, layout, new_size) }
    }
}

/// Kept out of line: the common path (small blocks) stays a compare and a
/// call to malloc.
#[inline(never)]
fn take_cached(size: usize) -> Option<*mut u8> {
    BINS_OF_THREAD
        // SAFETY: the cell is this thread's and nothing in `take` allocates,
        // so no other borrow of it is live.
        .try_with(|bins| unsafe { (*bins.get()).take(size) })
        .ok()
        .flatten()
}

#[inline(never)]
fn put_cached(size: usize, block: *mut u8) -> bool {
    BINS_OF_THREAD
        // SAFETY: as in `take_cached`.
        .try_with(|bins| unsafe { (*bins.get()).put(size, block) })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn a_freed_block_is_handed_back_for_the_same_size_only() {
        let cache = BlockCache;
        unsafe {
            let block = cache.alloc(layout(8192));
            block.write_bytes(7, 8192);
            cache.dealloc(block, layout(8192));
            let other = cache.alloc(layout(8191));
            assert_ne!(other, block, "another size gets its own block");
            let again = cache.alloc(layout(8192));
            assert_eq!(again, block, "the same size gets the cached block");
            cache.dealloc(other, layout(8191));
            cache.dealloc(again, layout(8192));
        }
    }

    #[test]
    fn small_large_and_overaligned_blocks_are_not_cached() {
        let cache = BlockCache;
        for layout in [
            layout(64),
            layout(MAX_SIZE + 1),
            Layout::from_size_align(4096, 4096).unwrap(),
        ] {
            assert!(!is_cached(&layout));
            unsafe {
                let block = cache.alloc(layout);
                assert_eq!(block as usize % layout.align(), 0);
                cache.dealloc(block, layout);
            }
        }
        assert!(is_cached(&layout(MIN_SIZE)) && is_cached(&layout(MAX_SIZE)));
    }

    #[test]
    fn bins_hold_a_bounded_number_of_blocks_and_sizes() {
        let mut bins = Bins::new();
        let mut storage = [0u8; 64];
        let base = storage.as_mut_ptr();
        let fake = |i: usize| base.wrapping_add(i);
        for i in 0..DEPTH {
            assert!(bins.put(2000, fake(i)));
        }
        assert!(!bins.put(2000, fake(DEPTH)), "a full size refuses more");
        for size in 3000..3000 + BINS - 1 {
            assert!(bins.put(size, fake(0)));
        }
        assert!(!bins.put(9000, fake(0)), "every bin holds another size");
        // Last in, first out: the most recently freed block is the warmest.
        assert_eq!(bins.take(2000), Some(fake(DEPTH - 1)));
        assert_eq!(bins.take(3000), Some(fake(0)));
        assert_eq!(bins.take(3000), None);
        // The emptied bin takes a new size.
        assert!(bins.put(9000, fake(1)));
        assert_eq!(bins.take(9000), Some(fake(1)));
        // Nothing here came from malloc: forget the rest instead of freeing.
        for bin in &mut bins.0 {
            bin.len = 0;
        }
    }

    #[test]
    fn a_thread_ending_gives_its_cached_blocks_back_to_malloc_intact() {
        // What fails is glibc: a block freed twice, or freed with the wrong
        // size, aborts the test process (its free checks). A leak would
        // pass; the bins' own test covers what is kept.
        std::thread::spawn(|| {
            let cache = BlockCache;
            unsafe {
                let blocks: Vec<_> = (0..DEPTH + 2).map(|_| cache.alloc(layout(4096))).collect();
                for block in blocks {
                    cache.dealloc(block, layout(4096));
                }
            }
        })
        .join()
        .unwrap();
    }
}
