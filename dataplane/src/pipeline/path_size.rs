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
//! evicts the one in its slot, which then goes back to the tunnel's size. The two are
//! kept apart. A SYN sets its sender's MSS (a new connection announces what it takes
//! now). A Fragmentation Needed only lowers the path's size, and that lasts 10 minutes
//! from the last one (RFC 1191 §6.3; Linux's `mtu_expires`): then the size goes back up,
//! so segments grow again after the path does, and a smaller path is learned anew from
//! the next Fragmentation Needed.

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

/// How long a size learned from a Fragmentation Needed holds (RFC 1191 §6.3: 10 minutes).
const PATH_EXPIRES_NS: u64 = 600_000_000_000;

/// What is known of one address.
#[derive(Clone, Copy, Debug, Default)]
struct Learned {
    /// 0: empty slot.
    addr: u32,
    /// MSS + 40 from its last SYN, 0: none.
    syn: u16,
    /// The path's size from Fragmentation Needed, 0: none; and when last lowered or
    /// confirmed (`now_ns`).
    path: u16,
    path_at_ns: u64,
}

impl Learned {
    fn path(&self, now_ns: u64) -> Option<u16> {
        (self.path != 0 && now_ns.saturating_sub(self.path_at_ns) < PATH_EXPIRES_NS)
            .then_some(self.path)
    }
}

/// Learned sizes, by address. See the module docs.
#[derive(Clone)]
pub(super) struct PathSizes {
    slots: Box<[Learned]>,
}

impl std::fmt::Debug for PathSizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let learned = self.slots.iter().filter(|l| l.addr != 0).count();
        f.debug_struct("PathSizes")
            .field("learned", &learned)
            .finish()
    }
}

impl PathSizes {
    pub(super) fn new() -> PathSizes {
        PathSizes {
            slots: vec![Learned::default(); SLOTS].into_boxed_slice(),
        }
    }

    /// Fibonacci hashing, as the binding table: a subnet's hosts spread over the slots.
    fn slot(addr: u32) -> usize {
        (addr.wrapping_mul(0x9E37_79B9) >> (32 - SLOTS.trailing_zeros())) as usize
    }

    /// The largest datagram `to` takes at `now_ns`, if learned: the smaller of what its
    /// SYN said and what its path takes.
    pub(super) fn mtu(&self, to: Ipv4Addr, now_ns: u64) -> Option<u16> {
        let l = self.learned(u32::from(to))?;
        let syn = (l.syn != 0).then_some(l.syn);
        match (syn, l.path(now_ns)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn learned(&self, addr: u32) -> Option<&Learned> {
        self.slots
            .get(Self::slot(addr))
            .filter(|l| l.addr == addr && addr != 0)
    }

    /// Learns from the datagram `ip` at `buf[ip_off..]` on its way out of the tunnel at
    /// `now_ns`: a SYN's MSS (for its source), a Fragmentation Needed (for the destination
    /// of the datagram it quotes). Anything else, or anything that does not parse, teaches
    /// nothing.
    pub(super) fn learn(&mut self, buf: &[u8], ip_off: usize, ip: &Ipv4, now_ns: u64) {
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
            if let Some(l) = self.entry(ip.src) {
                l.syn = mss.saturating_add(HEADERS).max(MIN_MTU);
            }
        } else if let Some((to, mtu)) = frag_needed(l4, ip.protocol) {
            if let Some(l) = self.entry(to) {
                // Only ever lowered while it holds (RFC 1191 §6.3).
                let lower = l.path(now_ns).map_or(mtu, |known| known.min(mtu));
                l.path = lower.max(MIN_MTU);
                l.path_at_ns = now_ns;
            }
        }
    }

    /// `addr`'s slot, emptied first if it held another address; `None` for 0.
    fn entry(&mut self, addr: Ipv4Addr) -> Option<&mut Learned> {
        let addr = u32::from(addr);
        let l = self.slots.get_mut(Self::slot(addr)).filter(|_| addr != 0)?;
        if l.addr != addr {
            *l = Learned {
                addr,
                ..Learned::default()
            };
        }
        Some(l)
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

    /// The worker's clock in the tests, unless a test says otherwise.
    const NOW: u64 = 5_000_000_000;

    fn learn(p: &mut PathSizes, ip: &Ip) {
        learn_at(p, ip, NOW);
    }

    fn learn_at(p: &mut PathSizes, ip: &Ip, now_ns: u64) {
        let d = ip.datagram();
        let parsed = ipv4::parse(&d).unwrap();
        p.learn(&d, 0, &parsed, now_ns);
    }

    #[test]
    fn a_syn_sets_its_senders_size_and_frag_needed_lowers_it() {
        let mut p = PathSizes::new();
        let client = Ipv4Addr::from(CLIENT);
        assert_eq!(p.mtu(client, NOW), None);
        // SYN-ACK from the client: MSS 1360 (a VPN), window scale, SACK permitted.
        let opts = [2, 4, 0x05, 0x50, 1, 3, 3, 7, 4, 2, 0, 0];
        learn(&mut p, &Ip::tcp(CLIENT, VM, SYN_ACK, &opts, &[]));
        assert_eq!(p.mtu(client, NOW), Some(1400));
        // A router on the way takes 1280 only.
        learn(&mut p, &frag_needed_to(CLIENT, 1280));
        assert_eq!(p.mtu(client, NOW), Some(1280));
        // A larger next-hop MTU does not raise it.
        learn(&mut p, &frag_needed_to(CLIENT, 1492));
        assert_eq!(p.mtu(client, NOW), Some(1280));
        // A new connection's SYN says what its sender takes now; the path still
        // takes 1280.
        learn(&mut p, &Ip::tcp(CLIENT, VM, SYN, &[2, 4, 0x05, 0xb4], &[]));
        assert_eq!(p.mtu(client, NOW), Some(1280));
        // Learned for the sender only.
        assert_eq!(p.mtu(Ipv4Addr::from(VM), NOW), None);
    }

    #[test]
    fn a_path_size_holds_10_minutes_from_the_last_frag_needed() {
        let mut p = PathSizes::new();
        let client = Ipv4Addr::from(CLIENT);
        let min = 60_000_000_000;
        learn_at(
            &mut p,
            &Ip::tcp(CLIENT, VM, SYN_ACK, &[2, 4, 0x05, 0xb4], &[]),
            0,
        );
        learn_at(&mut p, &frag_needed_to(CLIENT, 1400), 0);
        assert_eq!(p.mtu(client, 9 * min), Some(1400));
        // Confirmed at 9 minutes: it holds until 19.
        learn_at(&mut p, &frag_needed_to(CLIENT, 1400), 9 * min);
        assert_eq!(p.mtu(client, 19 * min - 1), Some(1400));
        // Then the SYN's size is back, and a larger next-hop MTU is taken as it comes.
        assert_eq!(p.mtu(client, 19 * min), Some(1500));
        learn_at(&mut p, &frag_needed_to(CLIENT, 1450), 19 * min);
        assert_eq!(p.mtu(client, 19 * min), Some(1450));
        // With no SYN seen, the tunnel's size (none learned).
        let other = [198, 18, 7, 10];
        learn_at(&mut p, &frag_needed_to(other, 1300), 0);
        assert_eq!(p.mtu(Ipv4Addr::from(other), 10 * min), None);
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
        assert_eq!(p.mtu(Ipv4Addr::from(CLIENT), NOW), None);
        assert_eq!(p.mtu(Ipv4Addr::from(VM), NOW), None);
    }

    #[test]
    fn a_tiny_size_is_raised_to_the_minimum_and_a_slot_holds_one_address() {
        let mut p = PathSizes::new();
        learn(&mut p, &frag_needed_to(CLIENT, 68));
        assert_eq!(p.mtu(Ipv4Addr::from(CLIENT), NOW), Some(MIN_MTU));
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
        assert_eq!(p.mtu(Ipv4Addr::from(other), NOW), Some(1400));
        assert_eq!(p.mtu(Ipv4Addr::from(CLIENT), NOW), None);
    }
}
