//! Finishing partial TCP/UDP checksums, as the kernel does before it
//! forwards a CHECKSUM_PARTIAL packet (`skb_checksum_help`).
//!
//! A sender on this host (a container or VM behind a veth or tap with
//! checksum offload, QEMU's default virtio-net) leaves the TCP or UDP
//! checksum to the device: the field holds only the folded sum of the
//! pseudo-header (`~csum_tcpudp_magic(.., 0)` in Linux). AF_XDP hands us the
//! bytes without the skb's `csum_start`, so a partial checksum is recognised
//! by its value: the field equals the pseudo-header sum and the whole does
//! not verify. A datagram damaged so that its field happens to equal that
//! sum (a chance of 2^-16 per damaged datagram) would be "finished" too; the
//! receiver's own check cannot tell either.

use super::checksum::{fold, sum};
use super::ipv4::Ipv4;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// If the datagram at `ip_off` carries a partial TCP or UDP checksum,
/// finishes it in place and returns true. Whole datagrams only (a fragment's
/// checksum covers bytes that are not here).
pub(super) fn finish(buf: &mut [u8], ip_off: usize, ip: &Ipv4) -> bool {
    let (field, min_len) = match ip.protocol {
        PROTO_TCP => (16, 20),
        PROTO_UDP => (6, 8),
        _ => return false,
    };
    if ip.is_fragment() {
        return false;
    }
    let l4_off = ip_off + ip.header_len;
    let l4_len = ip.total_len.saturating_sub(ip.header_len);
    let Some(l4) = buf.get_mut(l4_off..l4_off + l4_len) else {
        return false;
    };
    if l4_len < min_len || l4_len > usize::from(u16::MAX) {
        return false;
    }
    let stored = u16::from_be_bytes([l4[field], l4[field + 1]]);
    let pseudo = pseudo_header_sum(ip, l4_len);
    // Cheap test first: on the common path, one comparison per datagram.
    if stored != fold(pseudo) {
        return false;
    }
    let whole = sum(pseudo, l4);
    if fold(whole) == 0xffff {
        // It verifies: a finished checksum that happens to equal the sum.
        return false;
    }
    // The device's part: the complement of the sum over the L4 bytes, the
    // field (the pseudo-header sum) included.
    let mut finished = !fold(sum(0, l4));
    if ip.protocol == PROTO_UDP && finished == 0 {
        // RFC 768: a computed zero is sent as all ones (zero means none).
        finished = 0xffff;
    }
    l4[field..field + 2].copy_from_slice(&finished.to_be_bytes());
    true
}

/// The pseudo-header's sum (RFC 793 §3.1, RFC 768), not folded.
fn pseudo_header_sum(ip: &Ipv4, l4_len: usize) -> u32 {
    let mut acc = sum(0, &ip.src.octets());
    acc = sum(acc, &ip.dst.octets());
    acc + u32::from(ip.protocol) + l4_len as u32
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::pipeline::checksum::verifies;
    use crate::pipeline::ipv4;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);

    /// An IPv4 datagram with `l4` as payload, and its parsed header.
    fn datagram(protocol: u8, l4: &[u8], flags_frag: u16) -> (Vec<u8>, Ipv4) {
        let total = 20 + l4.len();
        let mut d = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            (flags_frag >> 8) as u8,
            flags_frag as u8,
            64,
            protocol,
            0,
            0,
        ];
        d.extend_from_slice(&SRC.octets());
        d.extend_from_slice(&DST.octets());
        let c = crate::pipeline::checksum::checksum(&d[..20]);
        d[10..12].copy_from_slice(&c.to_be_bytes());
        d.extend_from_slice(l4);
        let ip = ipv4::parse(&d).unwrap();
        (d, ip)
    }

    /// A TCP segment (20-byte header, SYN|ACK, `payload`), checksum field `check`.
    fn tcp(payload: &[u8], check: u16) -> Vec<u8> {
        let mut t = vec![
            0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x12, 0xff, 0xff,
        ];
        t.extend_from_slice(&check.to_be_bytes());
        t.extend_from_slice(&[0, 0]);
        t.extend_from_slice(payload);
        t
    }

    /// The L4 bytes with the pseudo-header in front, as the receiver checks.
    fn receiver_verifies(d: &[u8], ip: &Ipv4) -> bool {
        let l4 = &d[20..];
        fold(sum(pseudo_header_sum(ip, l4.len()), l4)) == 0xffff
    }

    #[test]
    fn a_partial_tcp_checksum_is_finished_and_verifies() {
        let payload = b"GET / HTTP/1.1\r\nHost: vm\r\n\r\n";
        let (probe, ip) = datagram(PROTO_TCP, &tcp(payload, 0), 0);
        // What Linux leaves in the field for CHECKSUM_PARTIAL.
        let partial = fold(pseudo_header_sum(&ip, probe.len() - 20));
        let (mut d, ip) = datagram(PROTO_TCP, &tcp(payload, partial), 0);
        assert!(!receiver_verifies(&d, &ip));
        assert!(finish(&mut d, 0, &ip));
        assert!(receiver_verifies(&d, &ip));
        assert!(verifies(&d[..20]), "the IPv4 header is untouched");
        // Finished: a second pass leaves it alone.
        let before = d.clone();
        assert!(!finish(&mut d, 0, &ip));
        assert_eq!(d, before);
    }

    #[test]
    fn a_partial_udp_checksum_is_finished() {
        for payload in [&b"x"[..], b"odd length payload", b""] {
            let len = 8 + payload.len();
            let mut udp = vec![0x13, 0x88, 0x00, 0x35, (len >> 8) as u8, len as u8, 0, 0];
            udp.extend_from_slice(payload);
            let (_, ip) = datagram(PROTO_UDP, &udp, 0);
            let partial = fold(pseudo_header_sum(&ip, len));
            udp[6..8].copy_from_slice(&partial.to_be_bytes());
            let (mut d, ip) = datagram(PROTO_UDP, &udp, 0);
            assert!(finish(&mut d, 0, &ip), "{payload:?}");
            assert!(receiver_verifies(&d, &ip), "{payload:?}");
            assert_ne!(&d[26..28], &[0, 0]);
        }
    }

    #[test]
    fn complete_absent_and_other_checksums_are_left_alone() {
        let payload = b"hello";
        // A complete TCP checksum.
        let (probe, ip) = datagram(PROTO_TCP, &tcp(payload, 0), 0);
        let l4 = &probe[20..];
        let good = !fold(sum(pseudo_header_sum(&ip, l4.len()), l4));
        let (mut d, ip) = datagram(PROTO_TCP, &tcp(payload, good), 0);
        let before = d.clone();
        assert!(!finish(&mut d, 0, &ip));
        assert_eq!(d, before);
        // A wrong checksum that is not the pseudo-header sum: not ours to fix.
        let (mut d, ip) = datagram(PROTO_TCP, &tcp(payload, good ^ 0x0101), 0);
        assert!(!finish(&mut d, 0, &ip));
        // UDP without a checksum.
        let (mut d, ip) = datagram(PROTO_UDP, &[0, 1, 0, 2, 0, 9, 0, 0, 7], 0);
        assert!(!finish(&mut d, 0, &ip));
        // ICMP, and a fragment (MF set).
        let (mut d, ip) = datagram(1, &[8, 0, 0, 0, 0, 1, 0, 1], 0);
        assert!(!finish(&mut d, 0, &ip));
        let (probe, ip) = datagram(PROTO_TCP, &tcp(payload, 0), 0x2000);
        let partial = fold(pseudo_header_sum(&ip, probe.len() - 20));
        let (mut d, ip) = datagram(PROTO_TCP, &tcp(payload, partial), 0x2000);
        assert!(!finish(&mut d, 0, &ip));
    }

    #[test]
    fn truncated_and_lying_lengths_do_not_panic() {
        let (mut d, ip) = datagram(PROTO_TCP, &tcp(b"abc", 0), 0);
        d.truncate(30);
        assert!(!finish(&mut d, 0, &ip));
        let (mut d, mut ip) = datagram(PROTO_UDP, &[0; 4], 0);
        ip.total_len = 24;
        assert!(!finish(&mut d, 0, &ip), "shorter than a UDP header");
    }
}
