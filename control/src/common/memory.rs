//! Giving freed heap memory back to the kernel.
//!
//! glibc keeps what a program frees for its next allocations; the pages
//! stay resident unless they are at the top of the heap. After a bulk
//! change (a million bindings restored, their announcements over) that is
//! tens of megabytes the daemon no longer needs, counted in its RSS.

/// Returns the heap's free pages to the kernel (`malloc_trim(0)`, which
/// madvises every wholly free page, not just the heap's top). A few
/// milliseconds for a heap of hundreds of megabytes: after bulk changes
/// only.
pub fn give_back_freed() {
    // SAFETY: malloc_trim takes no pointers and only rearranges the
    // allocator's own free lists under its lock; it is safe to call from
    // any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
