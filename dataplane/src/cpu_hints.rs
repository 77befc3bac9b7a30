//! Hints to the CPU and the kernel for the big per-binding arrays (the
//! binding table, the workers' per-slot counters). With a million bindings
//! every lookup is a cache miss and, on 4 KiB pages, a TLB miss too: huge
//! pages remove the second, prefetching a batch's lines before processing
//! it overlaps the first.

use std::mem::MaybeUninit;

/// Transparent huge page size on x86_64 and (with 4 KiB base pages) arm64.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the CPU to bring the cache line holding `p` into its caches.
/// A hint: never faults, whatever the address; a no-op where there is no
/// such instruction.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads no memory architecturally and never faults,
    // whatever the address (Intel SDM Vol. 2B, PREFETCHh); SSE, the target
    // feature it needs, is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `n` values from `f`, in memory the kernel is asked to back with
/// transparent huge pages (`MADV_HUGEPAGE`, before the first touch: the
/// default `madvise` mode of THP gives huge pages only to such regions).
/// Where the kernel says no, ordinary pages: the same vector, slower.
pub fn vec_on_huge_pages<T>(n: usize, mut f: impl FnMut() -> T) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    advise_huge_pages(v.spare_capacity_mut());
    v.extend((0..n).map(|_| f()));
    v
}

/// `MADV_HUGEPAGE` over the whole huge pages inside `region`.
fn advise_huge_pages<T>(region: &mut [MaybeUninit<T>]) {
    let start = region.as_mut_ptr() as usize;
    let end = start.saturating_add(std::mem::size_of_val(region));
    let Some(first) = start.checked_next_multiple_of(HUGE_PAGE) else {
        return;
    };
    let last = end / HUGE_PAGE * HUGE_PAGE;
    if last <= first {
        return;
    }
    // SAFETY: [first, last) is page-aligned and inside `region`, memory
    // this process owns; MADV_HUGEPAGE changes only how the kernel backs it
    // (its contents and validity stay as they are). A refusal (THP off) is
    // harmless and ignored.
    unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            last - first,
            libc::MADV_HUGEPAGE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_page_vector_holds_what_f_made() {
        let mut i = 0u64;
        let v = vec_on_huge_pages(3 * HUGE_PAGE / 8, || {
            i += 1;
            i
        });
        assert_eq!(v.len(), 3 * HUGE_PAGE / 8);
        assert!(v.iter().enumerate().all(|(k, &x)| x == k as u64 + 1));
        assert!(vec_on_huge_pages(0, || 0u8).is_empty());
    }

    #[test]
    fn prefetch_of_any_address_is_harmless() {
        prefetch(std::ptr::null::<u8>());
        prefetch(usize::MAX as *const u64);
    }
}
