//! How large a datagram the far end of a connection takes, as far as this pipeline has
//! seen: what a TCP super-frame (`segment`) is cut to toward that address, when it is less
//! than the tunnel carries.
//!
//! The guest's own segment size (virtio's `gso_size`) does not reach AF_XDP. So the
//! pipeline learns what the guest's TCP goes by, from what comes out of the tunnel toward
//! it: the MSS option of each SYN or SYN-ACK (what its sender accepts, RFC 9293 §3.7.1;
//! stands for an MTU of MSS + 40, RFC 6691), and the next-hop MTU of each ICMP
//! Fragmentation Needed (RFC 1191) toward the quoted datagram's destination. Keyed by
//! address only, as Linux keeps its path MTU per destination.
//!
//! A fixed, direct-mapped table allocated once (no allocation per packet): an address
//! evicts the one in its slot, which then goes back to the tunnel's size. A SYN sets its
//! sender's entry (a new connection announces what holds now); a Fragmentation Needed
//! only lowers. Nothing expires, so after a path grows segments stay smaller than they
//! could be until the next SYN from there.

use std::net::Ipv4Addr;

use super::ipv4::Ipv4;

/// Slots of the table: one worker's recent peers.
const SLOTS: usize = 1024;
/// Linux's `ip_rt_min_pmtu`: a smaller learned size is raised to it, so that a forged or
/// broken message cannot make segments tiny.
const MIN_MTU: u16 = 552;
/// IPv4 and TCP headers without options: an MSS stands for an MTU this much larger.
const HEADERS: u16 = 40;
const PROTO_ICMP: u8 = 1;
const ICMP_UNREACHABLE: u8 = 3;
const CODE_FRAG_NEEDED: u8 = 4;

/// Learned sizes, by address. See the module docs.
#[derive(Clone)]
pub(super) struct PathSizes {
    /// (address, MTU); address 0: empty.
    slots: Box<[(u32, u16)]>,
}

impl std::fmt::Debug for PathSizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let learned = self.slots.iter().filter(|(a, _)| *a != 0).count();
        f.debug_struct("PathSizes")
            .field("learned", &learned)
            .finish()
    }
}

impl PathSizes {
    pub(super) fn new() -> PathSizes {
        PathSizes {
            slots: vec![(0, 0); SLOTS].into_boxed_slice(),
        }
    }

    /// Fibonacci hashing, as the binding table: a subnet's hosts spread over the slots.
    fn slot(addr: u32) -> usize {
        (addr.wrapping_mul(0x9E37_79B9) >> (32 - SLOTS.trailing_zeros())) as usize
    }

    /// The largest datagram `to` takes, if learned.
    pub(super) fn mtu(&self, to: Ipv4Addr) -> Option<u16> {
        let addr = u32::from(to);
        match self.slots.get(Self::slot(addr)) {
            Some(&(a, mtu)) if a == addr && addr != 0 => Some(mtu),
            _ => None,
        }
    }

    /// Learns from the datagram `ip` at `buf[ip_off..]` on its way out of the tunnel:
    /// a SYN's MSS (for its source), a Fragmentation Needed (for the destination of the
    /// datagram it quotes). Anything else, or anything that does not parse, teaches
    /// nothing.
    pub(super) fn learn(&mut self, buf: &[u8], ip_off: usize, ip: &Ipv4) {
        if !ip.is_first_fragment() {
            return;
        }
        let Some(l4) = ip_off
            .checked_add(ip.header_len)
            .and_then(|start| buf.get(start..start.checked_add(ip.payload_len())?))
        else {
            return;
        };
        if let Some(mss) = super::mss::announced(l4, ip.protocol) {
            self.set(ip.src, mss.saturating_add(HEADERS));
        } else if let Some((to, mtu)) = frag_needed(l4, ip.protocol) {
            let lower = self.mtu(to).map_or(mtu, |known| known.min(mtu));
            self.set(to, lower);
        }
    }

    fn set(&mut self, addr: Ipv4Addr, mtu: u16) {
        let addr = u32::from(addr);
        if addr == 0 {
            return;
        }
        if let Some(slot) = self.slots.get_mut(Self::slot(addr)) {
            *slot = (addr, mtu.max(MIN_MTU));
        }
    }
}

/// An ICMP Fragmentation Needed (`l4`, the ICMP message): the destination of the datagram
/// it quotes and the next-hop MTU. `None` for anything else, and for an MTU of 0 (a router
/// from before RFC 1191).
fn frag_needed(l4: &[u8], protocol: u8) -> Option<(Ipv4Addr, u16)> {
    if protocol != PROTO_ICMP {
        return None;
    }
    let icmp = l4.first_chunk::<8>()?;
    if icmp[0] != ICMP_UNREACHABLE || icmp[1] != CODE_FRAG_NEEDED {
        return None;
    }
    let mtu = u16::from_be_bytes([icmp[6], icmp[7]]);
    // The quoted IPv4 header: its destination at bytes 16..20.
    let quoted = l4.get(8..)?.first_chunk::<20>()?;
    let to = Ipv4Addr::new(quoted[16], quoted[17], quoted[18], quoted[19]);
    (mtu > 0).then_some((to, mtu))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ipv4;
    use crate::pipeline::testutil::Ip;

    const CLIENT: [u8; 4] = [198, 18, 7, 9];
    const VM: [u8; 4] = [192, 0, 2, 50];
    const SYN: u8 = 0x02;
    const SYN_ACK: u8 = 0x12;

    /// A Fragmentation Needed with `mtu`, quoting a segment from the VM to `to`.
    fn frag_needed_to(to: [u8; 4], mtu: u16) -> Ip {
        let quoted = Ip::tcp(VM, to, 0x10, &[], &[]).datagram();
        let mut rest = vec![0, 0];
        rest.extend_from_slice(&mtu.to_be_bytes());
        rest.extend_from_slice(&quoted[..28]);
        Ip::icmp([203, 0, 113, 1], VM, 3, 4, &rest)
    }

    fn learn(p: &mut PathSizes, ip: &Ip) {
        let d = ip.datagram();
        let parsed = ipv4::parse(&d).unwrap();
        p.learn(&d, 0, &parsed);
    }

    #[test]
    fn a_syn_sets_its_senders_size_and_frag_needed_lowers_it() {
        let mut p = PathSizes::new();
        let client = Ipv4Addr::from(CLIENT);
        assert_eq!(p.mtu(client), None);
        // SYN-ACK from the client: MSS 1360 (a VPN), window scale, SACK permitted.
        let opts = [2, 4, 0x05, 0x50, 1, 3, 3, 7, 4, 2, 0, 0];
        learn(&mut p, &Ip::tcp(CLIENT, VM, SYN_ACK, &opts, &[]));
        assert_eq!(p.mtu(client), Some(1400));
        // A router on the way takes 1280 only.
        learn(&mut p, &frag_needed_to(CLIENT, 1280));
        assert_eq!(p.mtu(client), Some(1280));
        // A larger next-hop MTU does not raise it.
        learn(&mut p, &frag_needed_to(CLIENT, 1492));
        assert_eq!(p.mtu(client), Some(1280));
        // A new connection's SYN says what holds now.
        learn(&mut p, &Ip::tcp(CLIENT, VM, SYN, &[2, 4, 0x05, 0xb4], &[]));
        assert_eq!(p.mtu(client), Some(1500));
        // Learned for the sender only.
        assert_eq!(p.mtu(Ipv4Addr::from(VM)), None);
    }

    #[test]
    fn what_is_not_a_syn_or_frag_needed_teaches_nothing() {
        let mut p = PathSizes::new();
        // Data, a SYN without MSS, an RST+SYN, a SYN's later fragment, a port
        // unreachable, a Fragmentation Needed with MTU 0 or cut before its quote.
        learn(&mut p, &Ip::tcp(CLIENT, VM, 0x18, &[], b"data"));
        learn(&mut p, &Ip::tcp(CLIENT, VM, SYN, &[1, 1, 1, 0], &[]));
        learn(&mut p, &Ip::tcp(CLIENT, VM, 0x06, &[2, 4, 2, 0], &[]));
        learn(&mut p, &Ip::raw(CLIENT, VM, 6, &[0; 24]).frag(false, 8));
        let quoted = Ip::tcp(VM, CLIENT, 0x10, &[], &[]).datagram();
        let mut rest = vec![0, 0, 0x05, 0x00];
        rest.extend_from_slice(&quoted[..28]);
        learn(&mut p, &Ip::icmp([203, 0, 113, 1], VM, 3, 3, &rest));
        learn(&mut p, &frag_needed_to(CLIENT, 0));
        learn(&mut p, &Ip::icmp([203, 0, 113, 1], VM, 3, 4, &rest[..12]));
        assert_eq!(p.mtu(Ipv4Addr::from(CLIENT)), None);
        assert_eq!(p.mtu(Ipv4Addr::from(VM)), None);
    }

    #[test]
    fn a_tiny_size_is_raised_to_the_minimum_and_a_slot_holds_one_address() {
        let mut p = PathSizes::new();
        learn(&mut p, &frag_needed_to(CLIENT, 68));
        assert_eq!(p.mtu(Ipv4Addr::from(CLIENT)), Some(MIN_MTU));
        // Another address in the same slot evicts it.
        let first = u32::from(Ipv4Addr::from(CLIENT));
        let other = (1..u32::MAX)
            .map(|d| first.wrapping_add(d))
            .find(|a| PathSizes::slot(*a) == PathSizes::slot(first))
            .unwrap();
        learn(
            &mut p,
            &frag_needed_to(Ipv4Addr::from(other).octets(), 1400),
        );
        assert_eq!(p.mtu(Ipv4Addr::from(other)), Some(1400));
        assert_eq!(p.mtu(Ipv4Addr::from(CLIENT)), None);
    }
}
