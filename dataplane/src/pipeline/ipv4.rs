//! IPv4 header (RFC 791 §3.1): validate once, copy the fields out, rewrite in place.
//!
//! Reads go through a fixed-size `&[u8; 20]` obtained after the length check, so every field
//! access is a constant index the compiler bounds-checks at build time.

use std::net::Ipv4Addr;

use super::checksum;
use super::DropReason;

/// Length of an IPv4 header without options.
pub(crate) const HDR_LEN: usize = 20;
/// ICMP (RFC 792).
pub(crate) const PROTO_ICMP: u8 = 1;
/// IP in IP (RFC 2003).
pub(crate) const PROTO_IPIP: u8 = 4;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// Fields of a validated IPv4 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ipv4 {
    /// IHL * 4.
    pub header_len: usize,
    /// Total length: header plus data, the datagram ends here even if the frame goes on.
    pub total_len: usize,
    pub tos: u8,
    pub ident: u16,
    /// Flags (reserved, DF, MF) and fragment offset, as on the wire.
    pub flags_frag: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub checksum: u16,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

impl Ipv4 {
    pub fn df(&self) -> bool {
        self.flags_frag & FLAG_DF != 0
    }
    pub fn mf(&self) -> bool {
        self.flags_frag & FLAG_MF != 0
    }
    /// Fragment offset in units of 8 bytes.
    pub fn frag_offset(&self) -> u16 {
        self.flags_frag & OFFSET_MASK
    }
    /// True for an unfragmented datagram or the first fragment: only then does the data
    /// start with the upper-layer header.
    pub fn is_first_fragment(&self) -> bool {
        self.frag_offset() == 0
    }
    /// True if this is a fragment of a larger datagram.
    pub fn is_fragment(&self) -> bool {
        self.mf() || self.frag_offset() != 0
    }
    /// Length of the data after the header.
    pub fn payload_len(&self) -> usize {
        self.total_len.saturating_sub(self.header_len)
    }
}

/// Validates the IPv4 datagram at the start of `bytes` (which runs to the end of the frame, so
/// may include Ethernet padding): RFC 1812 §5.2.2 checks, in the order a router applies them.
pub(crate) fn parse(bytes: &[u8]) -> Result<Ipv4, DropReason> {
    let h = bytes
        .first_chunk::<HDR_LEN>()
        .ok_or(DropReason::Ipv4Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(DropReason::Ipv4BadVersion);
    }
    let ihl = usize::from(h[0] & 0x0f);
    if ihl < 5 {
        return Err(DropReason::Ipv4BadIhl);
    }
    let header_len = ihl * 4;
    let header = bytes
        .get(..header_len)
        .ok_or(DropReason::Ipv4IhlBeyondFrame)?;
    if !checksum::verifies(header) {
        return Err(DropReason::Ipv4BadChecksum);
    }
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if total_len < header_len {
        return Err(DropReason::Ipv4TotalLengthTooShort);
    }
    if total_len > bytes.len() {
        return Err(DropReason::Ipv4TotalLengthBeyondFrame);
    }
    Ok(Ipv4 {
        header_len,
        total_len,
        tos: h[1],
        ident: u16::from_be_bytes([h[4], h[5]]),
        flags_frag: u16::from_be_bytes([h[6], h[7]]),
        ttl: h[8],
        protocol: h[9],
        checksum: u16::from_be_bytes([h[10], h[11]]),
        src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
    })
}

/// The fixed 20-byte header at `buf[off..]`, if it fits.
pub(crate) fn base_mut(buf: &mut [u8], off: usize) -> Option<&mut [u8; HDR_LEN]> {
    buf.get_mut(off..)?.first_chunk_mut::<HDR_LEN>()
}

/// Decrements the TTL of the header at `buf[off..]` and patches the checksum incrementally
/// (RFC 1624 §3; RFC 1812 §5.3.1). The caller has checked TTL > 1.
pub(crate) fn decrement_ttl(buf: &mut [u8], off: usize) -> Option<()> {
    let h = base_mut(buf, off)?;
    let old = u16::from_be_bytes([h[8], h[9]]);
    h[8] = h[8].checked_sub(1)?;
    let new = u16::from_be_bytes([h[8], h[9]]);
    let hc = u16::from_be_bytes([h[10], h[11]]);
    let [c0, c1] = checksum::update_word(hc, old, new).to_be_bytes();
    h[10] = c0;
    h[11] = c1;
    Some(())
}

/// An option-less header to write.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewHeader {
    pub tos: u8,
    pub total_len: u16,
    pub ident: u16,
    pub flags_frag: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// Writes `n` as a 20-byte header (version 4, IHL 5) with its checksum.
pub(crate) fn write(out: &mut [u8; HDR_LEN], n: &NewHeader) {
    let [l0, l1] = n.total_len.to_be_bytes();
    let [i0, i1] = n.ident.to_be_bytes();
    let [f0, f1] = n.flags_frag.to_be_bytes();
    let [s0, s1, s2, s3] = n.src.octets();
    let [d0, d1, d2, d3] = n.dst.octets();
    *out = [
        0x45, n.tos, l0, l1, i0, i1, f0, f1, n.ttl, n.protocol, 0, 0, s0, s1, s2, s3, d0, d1, d2,
        d3,
    ];
    let [c0, c1] = checksum::checksum(out).to_be_bytes();
    out[10] = c0;
    out[11] = c1;
}

/// Sets total length and flags/offset of the header `hdr` (with its options) and recomputes
/// its checksum from scratch (the fields changed too much for an incremental update to pay).
pub(crate) fn rewrite_len_frag(hdr: &mut [u8], total_len: u16, flags_frag: u16) -> Option<()> {
    let h = hdr.first_chunk_mut::<HDR_LEN>()?;
    let [l0, l1] = total_len.to_be_bytes();
    let [f0, f1] = flags_frag.to_be_bytes();
    h[2] = l0;
    h[3] = l1;
    h[6] = f0;
    h[7] = f1;
    h[10] = 0;
    h[11] = 0;
    let [c0, c1] = checksum::checksum(hdr).to_be_bytes();
    let h = hdr.first_chunk_mut::<HDR_LEN>()?;
    h[10] = c0;
    h[11] = c1;
    Some(())
}

/// 255.255.255.255, the limited broadcast (RFC 1122 §3.2.1.3).
pub(crate) fn is_broadcast(a: Ipv4Addr) -> bool {
    a == Ipv4Addr::BROADCAST
}

/// 224.0.0.0/4 (RFC 1112 §4).
pub(crate) fn is_multicast(a: Ipv4Addr) -> bool {
    a.is_multicast()
}

/// An address that names a single host and may be the source of a datagram that earns an
/// ICMP error: not 0/8, 127/8, 224/4 or 240/4 (which includes 255.255.255.255)
/// (RFC 1812 §4.3.2.7 and §5.3.7; RFC 1122 §3.2.2).
pub(crate) fn is_unicast_host(a: Ipv4Addr) -> bool {
    let first = a.octets()[0];
    first != 0 && first != 127 && first < 224
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(mut h: [u8; 20]) -> [u8; 20] {
        h[10] = 0;
        h[11] = 0;
        let c = checksum::checksum(&h).to_be_bytes();
        h[10] = c[0];
        h[11] = c[1];
        h
    }

    const GOOD: [u8; 20] = [
        0x45, 0x00, 0x00, 0x14, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0, 0, 192, 0, 2, 1, 192, 0, 2,
        10,
    ];

    #[test]
    fn parse_fixtures() {
        let good = header(GOOD);
        let mut v6 = good;
        v6[0] = 0x65;
        let v6 = header(v6);
        let mut ihl4 = good;
        ihl4[0] = 0x44;
        let ihl4 = header(ihl4);
        let mut ihl6 = good;
        ihl6[0] = 0x46;
        let ihl6 = header(ihl6);
        let mut short_total = good;
        short_total[3] = 19;
        let short_total = header(short_total);
        let mut long_total = good;
        long_total[3] = 21;
        let long_total = header(long_total);
        let mut bad_sum = good;
        bad_sum[11] ^= 1;

        let cases: [(&str, &[u8], Result<usize, DropReason>); 9] = [
            ("good", &good, Ok(20)),
            ("19 bytes", &good[..19], Err(DropReason::Ipv4Truncated)),
            ("version 6", &v6, Err(DropReason::Ipv4BadVersion)),
            ("ihl 4", &ihl4, Err(DropReason::Ipv4BadIhl)),
            (
                "ihl 6 in 20 bytes",
                &ihl6,
                Err(DropReason::Ipv4IhlBeyondFrame),
            ),
            (
                "total 19",
                &short_total,
                Err(DropReason::Ipv4TotalLengthTooShort),
            ),
            (
                "total 21 in 20 bytes",
                &long_total,
                Err(DropReason::Ipv4TotalLengthBeyondFrame),
            ),
            ("bad checksum", &bad_sum, Err(DropReason::Ipv4BadChecksum)),
            ("empty", &[], Err(DropReason::Ipv4Truncated)),
        ];
        for (name, input, expect) in cases {
            assert_eq!(parse(input).map(|h| h.total_len), expect, "{name}");
        }
        let h = parse(&good).unwrap();
        assert_eq!(h.src, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(h.dst, Ipv4Addr::new(192, 0, 2, 10));
        assert!(h.df() && !h.mf() && h.is_first_fragment() && !h.is_fragment());
        assert_eq!((h.ttl, h.protocol, h.ident), (64, 17, 0x1234));
    }

    #[test]
    fn write_matches_etherparse() {
        let mut out = [0u8; 20];
        let n = NewHeader {
            tos: 0xb8,
            total_len: 1234,
            ident: 0xbeef,
            flags_frag: 0x4000,
            ttl: 64,
            protocol: 4,
            src: Ipv4Addr::new(203, 0, 113, 1),
            dst: Ipv4Addr::new(198, 51, 100, 20),
        };
        write(&mut out, &n);
        let e = etherparse::Ipv4HeaderSlice::from_slice(&out)
            .unwrap()
            .to_header();
        assert_eq!(e.calc_header_checksum(), e.header_checksum);
        assert_eq!(e.total_len, 1234);
        assert_eq!(e.identification, 0xbeef);
        assert!(e.dont_fragment && !e.more_fragments);
        assert_eq!((e.dscp.value(), e.ecn.value()), (0xb8 >> 2, 0));
        assert_eq!(e.protocol, etherparse::IpNumber::IPV4);
    }

    #[test]
    fn address_classes() {
        assert!(is_unicast_host(Ipv4Addr::new(192, 0, 2, 1)));
        for a in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [224, 0, 0, 1],
            [240, 0, 0, 1],
        ] {
            assert!(!is_unicast_host(Ipv4Addr::from(a)), "{a:?}");
        }
        assert!(!is_unicast_host(Ipv4Addr::BROADCAST));
        assert!(is_broadcast(Ipv4Addr::BROADCAST));
        assert!(is_multicast(Ipv4Addr::new(239, 1, 1, 1)));
        assert!(!is_multicast(Ipv4Addr::new(240, 1, 1, 1)));
    }
}
