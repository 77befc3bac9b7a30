//! The sink's latency histogram (bpf/sink.c): log-linear buckets, one per
//! nanosecond below 16 ns, then 16 per power of two (6.25 % wide), 1024 in
//! all. [`to_hdr`] turns bucket counts into an hdrhistogram (each count at
//! its bucket's midpoint) for percentiles.

use hdrhistogram::Histogram;

/// log2 of the buckets per power of two.
pub const SUB_BITS: u32 = 4;
/// Buckets per power of two.
pub const SUB: u64 = 1 << SUB_BITS;
/// Buckets in the sink's map.
pub const N_BUCKETS: usize = 1024;

/// Bucket of value `v` (nanoseconds); the same function as `bucket_of` in
/// bpf/sink.c.
pub fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let m = 63 - v.leading_zeros();
    let idx = (m - SUB_BITS + 1) as u64 * SUB + ((v >> (m - SUB_BITS)) & (SUB - 1));
    (idx as usize).min(N_BUCKETS - 1)
}

/// `[low, high)` of bucket `i`.
pub fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i + 1);
    }
    let group = i / SUB;
    let sub = i % SUB;
    let m = group + u64::from(SUB_BITS) - 1;
    let shift = m - u64::from(SUB_BITS);
    let low = (SUB + sub).checked_shl(shift as u32).unwrap_or(u64::MAX);
    let width = 1u64.checked_shl(shift as u32).unwrap_or(u64::MAX);
    (low, low.saturating_add(width))
}

/// An hdrhistogram (ns, 3 significant digits) with each bucket's count
/// recorded at the bucket's midpoint; empty buckets are skipped.
pub fn to_hdr(counts: &[u64]) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
    h.auto(true);
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let (lo, hi) = bucket_range(i);
        let mid = lo + (hi - lo) / 2;
        // Values past the bounds are clamped by the auto-resizing histogram.
        let _ = h.record_n(mid.max(1), n);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_contain_their_values() {
        let mut prev_hi = 0;
        for i in 0..976 {
            let (lo, hi) = bucket_range(i);
            assert_eq!(lo, prev_hi, "bucket {i}");
            assert!(hi > lo);
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi - 1), i);
            prev_hi = hi;
        }
        assert_eq!(bucket_of(u64::MAX), 975);
    }

    #[test]
    fn resolution_is_one_sixteenth() {
        for v in [17u64, 1000, 12_345, 1_000_000, 987_654_321] {
            let (lo, hi) = bucket_range(bucket_of(v));
            assert!(lo <= v && v < hi);
            assert!(
                (hi - lo) as f64 / lo as f64 <= 1.0 / 16.0 + 1e-9,
                "{v}: {lo}..{hi}"
            );
        }
    }

    #[test]
    fn percentiles_from_buckets() {
        let mut counts = vec![0u64; N_BUCKETS];
        counts[bucket_of(10_000)] = 990;
        counts[bucket_of(200_000)] = 10;
        let h = to_hdr(&counts);
        assert_eq!(h.len(), 1000);
        let p50 = h.value_at_quantile(0.5);
        assert!((9_500..=10_600).contains(&p50), "{p50}");
        let p999 = h.value_at_quantile(0.999);
        assert!((190_000..=210_000).contains(&p999), "{p999}");
    }
}
