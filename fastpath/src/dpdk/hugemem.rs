//! Memory for the large tables the fastpath reserves at start (the
//! conntrack index, entries and counters): a [`HugeArena`] is one block,
//! on a 2 MiB boundary and advised to the kernel as huge-page memory, that
//! a table's arrays are carved from, so that transparent huge pages back
//! them from end to end.
//!
//! Through the system allocator, every large array is a mapping of its own
//! that starts a few bytes into a page and ends anywhere: transparent huge
//! pages back only the 2 MiB pages wholly inside it. A table split into
//! many arrays (three per conntrack shard) lost about two fifths of its
//! memory to 4 KiB pages, whose page walks every random probe then paid,
//! and arrays under 2 MiB (those of a table of the default size) had no
//! huge page at all.

use allocator_api2::alloc::{AllocError, Allocator, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The size of a huge page on x86-64, and the boundary an arena keeps.
pub const HUGE_PAGE: usize = 2 << 20;

/// Below this many bytes a table gets no arena of its own: its arrays come
/// from the system allocator, as everything else does.
const SMALLEST: usize = 2 * HUGE_PAGE;

/// How much of an arena is in use; see [`HugeArena::usage`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaUsage {
    pub used: usize,
    pub spilled: usize,
    pub size: usize,
}

/// An allocator (cheap to clone: clones share the arena) that serves
/// blocks from one reserved region, bumping an offset, and serves from the
/// system allocator whatever no longer fits. A block freed inside the
/// region is not reused: the region returns whole when the last clone
/// goes. Made for arrays reserved once at start and kept.
#[derive(Clone, Debug, Default)]
pub struct HugeArena {
    region: Option<Arc<Region>>,
}

#[derive(Debug)]
struct Region {
    base: NonNull<u8>,
    len: usize,
    used: AtomicUsize,
    /// Bytes served from the system allocator since the region was full.
    spilled: AtomicUsize,
}

// SAFETY: `Region` only hands out disjoint ranges of its block (the bump
// offset is atomic) and frees the block once, on drop; the pointer it
// keeps is never dereferenced by the region itself.
unsafe impl Send for Region {}
// SAFETY: as above; shared use is the atomic bump only.
unsafe impl Sync for Region {}

impl Region {
    fn layout(len: usize) -> Option<Layout> {
        Layout::from_size_align(len, HUGE_PAGE).ok()
    }

    fn contains(&self, ptr: NonNull<u8>) -> bool {
        let at = ptr.as_ptr() as usize;
        let base = self.base.as_ptr() as usize;
        at >= base && at < base + self.len
    }

    fn bump(&self, layout: Layout) -> Option<NonNull<u8>> {
        let base = self.base.as_ptr() as usize;
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let start = (base + used).checked_next_multiple_of(layout.align())? - base;
            let end = start.checked_add(layout.size())?;
            if end > self.len {
                return None;
            }
            match self
                .used
                .compare_exchange(used, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                // The offset stays inside the block, so does the pointer.
                Ok(_) => return NonNull::new((base + start) as *mut u8),
                Err(now) => used = now,
            }
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Some(layout) = Region::layout(self.len) {
            // SAFETY: `base` was allocated in `HugeArena::new` with this
            // very layout, and is freed once, here; every block carved from
            // it belonged to a container holding a clone of the arena, so
            // none is alive any more.
            unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) }
        }
    }
}

impl HugeArena {
    /// An arena of `bytes` (rounded up to whole huge pages), advised as
    /// huge-page memory if `huge_pages`. Memory is only backed where it is
    /// written, so a generous estimate costs address space, not memory.
    /// Under 4 MiB, or if the block cannot be had, an arena that serves
    /// everything from the system allocator.
    pub fn new(bytes: usize, huge_pages: bool) -> HugeArena {
        if bytes < SMALLEST {
            return HugeArena::default();
        }
        let len = bytes.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let Some(layout) = Region::layout(len) else {
            return HugeArena::default();
        };
        // SAFETY: `layout` has a non-zero size.
        let Some(base) = NonNull::new(unsafe { std::alloc::alloc(layout) }) else {
            return HugeArena::default();
        };
        if huge_pages {
            // SAFETY: `[base, base + len)` is the block just allocated;
            // MADV_HUGEPAGE only changes how the kernel backs it. A refusal
            // (huge pages off) leaves 4 KiB pages, which work the same.
            unsafe {
                libc::madvise(base.as_ptr().cast(), len, libc::MADV_HUGEPAGE);
            }
        }
        HugeArena {
            region: Some(Arc::new(Region {
                base,
                len,
                used: AtomicUsize::new(0),
                spilled: AtomicUsize::new(0),
            })),
        }
    }

    /// The address just past the last block carved from the region (0
    /// without one): a block allocated in between two calls ends there.
    pub fn end_of_used(&self) -> usize {
        self.region.as_ref().map_or(0, |r| {
            r.base.as_ptr() as usize + r.used.load(Ordering::Relaxed)
        })
    }

    /// Bytes carved from the region so far, bytes served from the system
    /// allocator once it was full, and the region's size (all 0 without one).
    pub fn usage(&self) -> ArenaUsage {
        self.region
            .as_ref()
            .map_or(ArenaUsage::default(), |r| ArenaUsage {
                used: r.used.load(Ordering::Relaxed),
                spilled: r.spilled.load(Ordering::Relaxed),
                size: r.len,
            })
    }
}

// SAFETY: a block comes either from the region, as a range no other block
// shares, at least as large and as aligned as asked, that stays valid
// while any clone lives (clones share the `Arc`); or from the global
// allocator with the asked layout, and then goes back to it with that
// layout. `deallocate` tells the two apart by address.
unsafe impl Allocator for HugeArena {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let from_region = self.region.as_ref().and_then(|r| r.bump(layout));
        let block = match from_region {
            Some(block) => block,
            None if layout.size() == 0 => {
                // A dangling, well-aligned pointer: zero-size blocks are
                // never read or written.
                NonNull::new(layout.align() as *mut u8).ok_or(AllocError)?
            }
            None => {
                if let Some(r) = &self.region {
                    r.spilled.fetch_add(layout.size(), Ordering::Relaxed);
                }
                // SAFETY: `layout` has a non-zero size.
                NonNull::new(unsafe { std::alloc::alloc(layout) }).ok_or(AllocError)?
            }
        };
        Ok(NonNull::slice_from_raw_parts(block, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        let in_region = self.region.as_ref().is_some_and(|r| r.contains(ptr));
        if !in_region && layout.size() != 0 {
            // SAFETY: a block outside the region came from the global
            // allocator with `layout` (the caller frees with the layout it
            // allocated with).
            unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allocator_api2::vec::Vec as ArenaVec;

    #[test]
    fn blocks_are_carved_in_order_on_a_huge_page_boundary() {
        let arena = HugeArena::new(5 * HUGE_PAGE - 1, true);
        assert_eq!((arena.usage().used, arena.usage().size), (0, 5 * HUGE_PAGE));
        let a = ArenaVec::<u64, _>::with_capacity_in(1000, arena.clone());
        let b = ArenaVec::<[u8; 64], _>::with_capacity_in(10, arena.clone());
        assert_eq!(a.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(b.as_ptr() as usize, a.as_ptr() as usize + 8000);
        assert_eq!(arena.usage().used, 8000 + 640);
        // A block keeps its alignment.
        let c = ArenaVec::<u8, _>::with_capacity_in(1, arena.clone());
        let d = ArenaVec::<[u64; 8], _>::with_capacity_in(1, arena.clone());
        assert_eq!(c.as_ptr() as usize, a.as_ptr() as usize + 8640);
        assert_eq!(d.as_ptr() as usize, a.as_ptr() as usize + 8648);
        assert_eq!(arena.usage().spilled, 0);
    }

    #[test]
    fn what_does_not_fit_comes_from_the_system_and_works() {
        let arena = HugeArena::new(2 * HUGE_PAGE, false);
        let mut big = ArenaVec::<u8, _>::with_capacity_in(HUGE_PAGE, arena.clone());
        big.resize(HUGE_PAGE, 1);
        // Growing past the region moves the vector out of it.
        let mut v = ArenaVec::<u64, _>::with_capacity_in(HUGE_PAGE / 8, arena.clone());
        v.extend(0..(HUGE_PAGE / 8) as u64);
        v.extend(0..1000u64);
        assert_eq!(v.len(), HUGE_PAGE / 8 + 1000);
        assert_eq!(v[HUGE_PAGE / 8 + 999], 999);
        assert_eq!(arena.usage().spilled, HUGE_PAGE * 2);
        drop(arena);
        // The region outlives the arena handle while blocks use it.
        assert!(big.iter().all(|&b| b == 1));
    }

    #[test]
    fn a_small_table_gets_no_region() {
        let arena = HugeArena::new(HUGE_PAGE, true);
        assert_eq!(arena.usage(), ArenaUsage::default());
        let mut v = ArenaVec::<u32, _>::with_capacity_in(10, arena);
        v.extend(0..10);
        assert_eq!(v.iter().sum::<u32>(), 45);
    }
}
