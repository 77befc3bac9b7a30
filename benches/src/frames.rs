//! Test frames for the benchmarks: Ethernet + IPv4 (+ UDP, ARP, IP-in-IP),
//! with valid IPv4 checksums. Sizes are Ethernet frame lengths without the
//! FCS: a "64-byte frame" on the wire is 60 bytes here.

use std::net::Ipv4Addr;

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// IPv4 header length without options.
pub const IPV4_LEN: usize = 20;
/// UDP header length.
pub const UDP_LEN: usize = 8;
/// Ethernet + IPv4 + UDP.
pub const UDP_HDRS: usize = ETH_LEN + IPV4_LEN + UDP_LEN;
/// The FCS that wire sizes include and frames in memory do not.
pub const FCS_LEN: usize = 4;

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Fields of an IPv4 header without options.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Spec {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol (17 UDP, 4 IP-in-IP).
    pub protocol: u8,
    /// Time to live.
    pub ttl: u8,
    /// Don't fragment.
    pub df: bool,
    /// Identification.
    pub ident: u16,
}

/// An IPv4 header (no options) for a datagram of `total_len` bytes, with
/// its checksum.
pub fn ipv4_header(spec: &Ipv4Spec, total_len: u16) -> [u8; IPV4_LEN] {
    let mut h = [0u8; IPV4_LEN];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total_len.to_be_bytes());
    h[4..6].copy_from_slice(&spec.ident.to_be_bytes());
    if spec.df {
        h[6] = 0x40;
    }
    h[8] = spec.ttl;
    h[9] = spec.protocol;
    h[12..16].copy_from_slice(&spec.src.octets());
    h[16..20].copy_from_slice(&spec.dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// An Ethernet header.
pub fn ether_header(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> [u8; ETH_LEN] {
    let mut h = [0u8; ETH_LEN];
    h[..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&src);
    h[12..].copy_from_slice(&ethertype.to_be_bytes());
    h
}

/// A UDP frame of exactly `frame_len` bytes (at least [`UDP_HDRS`]):
/// Ethernet, IPv4 from `ip`, UDP `sport -> dport` without checksum, and a
/// zero payload filling the rest.
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    ip: &Ipv4Spec,
    sport: u16,
    dport: u16,
    frame_len: usize,
) -> Vec<u8> {
    let frame_len = frame_len.max(UDP_HDRS);
    let total = u16::try_from(frame_len - ETH_LEN).unwrap_or(u16::MAX);
    let mut f = Vec::with_capacity(frame_len);
    f.extend_from_slice(&ether_header(dst_mac, src_mac, 0x0800));
    f.extend_from_slice(&ipv4_header(
        &Ipv4Spec {
            protocol: 17,
            ..*ip
        },
        total,
    ));
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(total - IPV4_LEN as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(frame_len, 0);
    f
}

/// `inner` (an IPv4 datagram) wrapped in an outer IPv4 header (protocol 4)
/// and an Ethernet header.
pub fn ipip_frame(dst_mac: [u8; 6], src_mac: [u8; 6], outer: &Ipv4Spec, inner: &[u8]) -> Vec<u8> {
    let total = u16::try_from(IPV4_LEN + inner.len()).unwrap_or(u16::MAX);
    let mut f = Vec::with_capacity(ETH_LEN + usize::from(total));
    f.extend_from_slice(&ether_header(dst_mac, src_mac, 0x0800));
    f.extend_from_slice(&ipv4_header(
        &Ipv4Spec {
            protocol: 4,
            ..*outer
        },
        total,
    ));
    f.extend_from_slice(inner);
    f
}

/// A broadcast ARP request "who has `tpa`, tell `spa`" from `sha`, padded
/// to 60 bytes.
pub fn arp_request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&ether_header([0xff; 6], sha, 0x0806));
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f.resize(60, 0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Ipv4Spec {
        Ipv4Spec {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(192, 0, 2, 10),
            protocol: 17,
            ttl: 64,
            df: true,
            ident: 0x1c46,
        }
    }

    #[test]
    fn checksum_of_rfc1071_example_and_odd_length() {
        // RFC 1071 §3: the sum of 0001 f203 f4f5 f6f7 is ddf2, complement 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn ipv4_header_verifies() {
        let h = ipv4_header(&spec(), 60);
        assert_eq!(checksum(&h), 0, "a header with its checksum sums to 0");
        assert_eq!(&h[2..4], &[0, 60]);
        assert_eq!(h[6], 0x40);
    }

    #[test]
    fn udp_frame_lengths() {
        for len in [60, 508, 1496] {
            let f = udp_frame([2; 6], [4; 6], &spec(), 1000, 9, len);
            assert_eq!(f.len(), len);
            assert_eq!(
                usize::from(u16::from_be_bytes([f[16], f[17]])),
                len - ETH_LEN
            );
            assert_eq!(
                usize::from(u16::from_be_bytes([f[38], f[39]])),
                len - ETH_LEN - IPV4_LEN
            );
            assert_eq!(checksum(&f[ETH_LEN..ETH_LEN + IPV4_LEN]), 0);
        }
    }

    #[test]
    fn ipip_and_arp() {
        let inner = udp_frame([2; 6], [4; 6], &spec(), 1, 2, 60);
        let f = ipip_frame([6; 6], [8; 6], &spec(), &inner[ETH_LEN..]);
        assert_eq!(f.len(), 80);
        assert_eq!(f[ETH_LEN + 9], 4);
        assert_eq!(checksum(&f[ETH_LEN..ETH_LEN + IPV4_LEN]), 0);
        let a = arp_request(
            [2; 6],
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(192, 0, 2, 10),
        );
        assert_eq!(a.len(), 60);
        assert_eq!(&a[12..14], &[8, 6]);
        assert_eq!(&a[38..42], &[192, 0, 2, 10]);
    }
}
