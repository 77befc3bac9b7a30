//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// One's-complement sum of `data` as big-endian 16-bit words (an odd last byte is padded
/// with zero, RFC 1071 §4.1), added to `initial`. Not folded; use [`fold`].
pub(crate) fn sum(initial: u32, data: &[u8]) -> u32 {
    let mut acc = u64::from(initial);
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        if let [hi, lo] = *w {
            acc += u64::from(u16::from_be_bytes([hi, lo]));
        }
    }
    if let [last] = *words.remainder() {
        acc += u64::from(u16::from_be_bytes([last, 0]));
    }
    // At most 32767 words of 0xffff per 64 KiB: fold the 64-bit accumulator down to 32 bits.
    while acc >> 32 != 0 {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// Folds the carries back in (end-around carry) to a 16-bit one's-complement sum.
pub(crate) fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum to store in a header whose checksum field is zero: `!fold(sum(data))`.
pub(crate) fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// True if `data` (which includes its checksum field) verifies: its sum is all ones.
pub(crate) fn verifies(data: &[u8]) -> bool {
    fold(sum(0, data)) == 0xffff
}

/// RFC 1624 §3, eqn. 3: the new checksum after one 16-bit word changed from `old` to `new`:
/// `HC' = ~(~HC + ~m + m')`. Unlike eqn. 2 it never yields 0xffff (-0) from a valid header.
pub(crate) fn update_word(hc: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!hc) + u32::from(!old) + u32::from(new);
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 numerical example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    #[test]
    fn known_ipv4_header() {
        // Header from the Wikipedia IPv4 checksum example: checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert!(verifies(&h));
        h[11] = 0x62;
        assert!(!verifies(&h));
    }

    #[test]
    fn incremental_matches_full_recompute() {
        // Deterministic walk over many headers, every TTL decrement, including the checksum
        // values near 0x0000 / 0xffff where eqn. 2 goes wrong.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let mut h = [0u8; 20];
            h[0] = 0x45;
            for (i, b) in h.iter_mut().enumerate().skip(1) {
                *b = (x.rotate_left(i as u32 * 7) >> (i % 4)) as u8;
            }
            h[8] = h[8].max(1);
            h[10] = 0;
            h[11] = 0;
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let old = u16::from_be_bytes([h[8], h[9]]);
            h[8] -= 1;
            let new = u16::from_be_bytes([h[8], h[9]]);
            let inc = update_word(c, old, new);
            h[10] = 0;
            h[11] = 0;
            assert_eq!(inc, checksum(&h), "header {h:02x?}");
        }
    }
}
