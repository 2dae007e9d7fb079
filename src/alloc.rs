//! The global allocator: mimalloc. The `mimalloc` crate's allocator calls mimalloc's aligned
//! entry points for every allocation, which take 2 to 3 times the instructions of the plain
//! ones on the fast path; nearly every Rust allocation needs no more alignment than mimalloc
//! gives anyway. So the plain entry points serve those, as std's own `System` allocator does
//! with malloc: about 3% of a proxied request's instructions (docs/performance.md).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What `mi_malloc` guarantees for a block at least this large (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

pub struct Mimalloc;

/// Whether the plain entry points give `align` for a block of `size` bytes: a block smaller
/// than 16 bytes comes from a size class aligned only to its size.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks from
// either kind of entry point); alignment is as `Layout` asks, by `plain` or the aligned calls.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        let p = if plain(align, size) {
            mi::mi_malloc(size)
        } else {
            mi::mi_malloc_aligned(size, align)
        };
        p.cast()
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        let p = if plain(align, size) {
            mi::mi_zalloc(size)
        } else {
            mi::mi_zalloc_aligned(size, align)
        };
        p.cast()
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = if plain(layout.align(), new_size) {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size)
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align())
        };
        p.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes and alignments on both sides of `plain`: aligned as asked, writable to the end,
    /// zeroed when asked, and the bytes kept by a realloc that grows or shrinks the block.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes_across_realloc() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 3, 8, 15, 16, 17, 24, 100, 1024, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                for new in [size / 2 + 1, size * 3] {
                    unsafe {
                        let p = a.alloc(layout);
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        for i in 0..size {
                            *p.add(i) = i as u8;
                        }
                        let q = a.realloc(p, layout, new);
                        assert_eq!(q as usize % align, 0, "{size} -> {new}, align {align}");
                        for i in 0..size.min(new) {
                            assert_eq!(*q.add(i), i as u8);
                        }
                        a.dealloc(q, Layout::from_size_align(new, align).unwrap());
                    }
                }
                unsafe {
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }

    #[test]
    fn small_blocks_with_large_alignment_take_the_aligned_calls() {
        assert!(plain(8, 8) && plain(16, 4096) && plain(1, 1));
        assert!(
            !plain(16, 8),
            "a block under 16 bytes may be aligned to 8 only"
        );
        assert!(!plain(32, 4096));
    }
}
