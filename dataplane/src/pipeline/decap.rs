//! Decapsulation of reverse-tunnelled traffic (RFC 3024) for delivery on the home link.
//!
//! The outer header is stripped by moving the frame start forward: a new Ethernet header is
//! written right in front of the inner IPv4 header, which does not move.

use super::ether;
use super::ipv4::{self, Ipv4};
use super::{DropReason, Lookup, Pipeline, Port, Role, Rx, Verdict};

impl Pipeline {
    /// Decapsulates the IP-in-IP datagram at `ip_off` (validated, addressed to the HA).
    ///
    /// RFC 3024 §7 (home agent considerations): accept only if the inner source is a
    /// mobile node with a binding and the outer source is that binding's care-of address,
    /// otherwise anyone could inject traffic sourced from the home link through us.
    pub(super) fn decapsulate(
        &mut self,
        buf: &mut [u8],
        rx: &Rx,
        outer: &Ipv4,
        lookup: &impl Lookup,
    ) -> Result<Verdict, DropReason> {
        let ip_off = rx.l3_off();
        if outer.is_fragment() {
            // Reassembly is the kernel's job, not this fast path's.
            return Err(DropReason::DecapOuterFragment);
        }
        let inner_off = ip_off
            .checked_add(outer.header_len)
            .ok_or(DropReason::Ipv4Truncated)?;
        let outer_end = ip_off
            .checked_add(outer.total_len)
            .ok_or(DropReason::Ipv4Truncated)?;
        // The inner datagram is validated like any received one, bounded by the outer.
        let inner = ipv4::parse(
            buf.get(inner_off..outer_end)
                .ok_or(DropReason::Ipv4Truncated)?,
        )?;
        // Either end accepts only what the other end of that binding's tunnel may send: the
        // HA a datagram from the VM via its care-of address, the foreign agent one to the VM
        // from its home agent. Anything else is an injection attempt (CVE-2020-10136).
        let binding = match self.config.role {
            Role::HomeAgent => lookup
                .binding(inner.src)
                .ok_or(DropReason::DecapUnknownSource)?,
            Role::ForeignAgent => lookup
                .binding(inner.dst)
                .ok_or(DropReason::DecapUnknownDestination)?,
        };
        if self.config.role == Role::HomeAgent && binding.care_of.is_unspecified() {
            // A switchover: the VM resumed at its destination, whose registration has not
            // arrived yet, and already answers. Its frame, untouched, waits in the worker
            // with the VM's others; once the binding names a care-of address it is processed
            // again, and accepted only from that address (a VM that came home: dropped).
            return Ok(Verdict::Hold {
                vm: inner.src,
                start: rx.start,
                len: rx.end - rx.start,
            });
        }
        if inner.total_len < outer.payload_len() {
            self.counters.trimmed_padding += 1;
        }
        if outer.src != binding.care_of {
            return Err(DropReason::DecapCareOfMismatch);
        }
        if ipv4::is_broadcast(inner.dst) {
            return Err(DropReason::Broadcast);
        }
        if ipv4::is_multicast(inner.dst) {
            return Err(DropReason::Multicast);
        }
        // RFC 1812 §5.3.1. No ICMP here: the source is behind the tunnel, and the FA, not us,
        // is its first hop.
        if inner.ttl <= 1 {
            return Err(DropReason::TtlExceeded);
        }
        // A SYN leaving the tunnel is clamped too, like `ip tcp adjust-mss` on both
        // directions of a tunnel interface: its MSS sizes what the host here will send into
        // *this* end, so this end's `tunnel_mtu` is the right limit, and it holds even if
        // the far end does not clamp or runs a larger tunnel MTU. Idempotent after the far
        // end's clamp (never raises). No partial checksum here: it crossed a wire.
        self.clamp_mss(buf, inner_off, &inner);
        // What the peer out there takes, for cutting the super-frames sent back to it.
        self.paths.learn(buf, inner_off, &inner, rx.now_ns);
        let verdict = self.onto_lan(buf, inner_off, &inner, Some(binding.slot), lookup)?;
        if matches!(verdict, Verdict::Tx { .. }) {
            self.counters.decapsulated += 1;
            self.counters.decapsulated_bytes += inner.total_len as u64;
        }
        Ok(verdict)
    }

    /// Forwards the datagram `ip` at `ip_off` (TTL already checked) onto the
    /// home link as a router does: TTL decremented, a new untagged Ethernet
    /// header right in front of it, to `ip.dst`'s MAC. Not counted here.
    pub(super) fn onto_lan(
        &mut self,
        buf: &mut [u8],
        ip_off: usize,
        ip: &Ipv4,
        slot: Option<u32>,
        lookup: &impl Lookup,
    ) -> Result<Verdict, DropReason> {
        let mac = lookup.lan_neighbor(ip.dst);
        ipv4::decrement_ttl(buf, ip_off).ok_or(DropReason::Ipv4Truncated)?;
        let new_start = ip_off
            .checked_sub(ether::ETH_LEN)
            .ok_or(DropReason::NoHeadroom)?;
        let eth = buf.get_mut(new_start..).ok_or(DropReason::NoHeadroom)?;
        // Unresolved: everything but the destination MAC is written now, so
        // that `deliver_held` has only that left to do.
        ether::write(
            eth,
            mac.unwrap_or([0; 6]),
            self.config.lan_mac,
            None,
            ether::ETHERTYPE_IPV4,
        )
        .ok_or(DropReason::NoHeadroom)?;
        let len = ether::pad_to_min(buf, new_start, ether::ETH_LEN + ip.total_len);
        Ok(match mac {
            Some(_) => Verdict::Tx {
                port: Port::Lan,
                start: new_start,
                len,
                slot,
            },
            // The kernel queues a packet for a neighbour it is resolving
            // (RFC 1122 §2.3.2.2); so does the worker, with this frame.
            None => Verdict::AwaitLanNeighbor {
                addr: ip.dst,
                start: new_start,
                len,
                slot,
            },
        })
    }

    /// A frame held for an unresolved home-link neighbour
    /// ([`Verdict::AwaitLanNeighbor`]) is now resolved to `mac`: writes the
    /// destination MAC and counts the decapsulation. False (nothing written,
    /// counted as `bad_verdict` by the caller) if the bounds do not fit.
    pub fn deliver_held(&mut self, buf: &mut [u8], start: usize, len: usize, mac: [u8; 6]) -> bool {
        let Some(frame) = start
            .checked_add(len)
            .and_then(|end| buf.get_mut(start..end))
        else {
            return false;
        };
        let Some(dst) = frame.first_chunk_mut::<6>() else {
            return false;
        };
        *dst = mac;
        self.counters.decapsulated += 1;
        // The padding to 60 bytes is not the datagram's.
        let datagram = frame
            .get(ether::ETH_LEN + 2..ether::ETH_LEN + 4)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        self.counters.decapsulated_bytes += u64::from(datagram);
        true
    }

    /// A held frame whose neighbour did not resolve in time: counted as
    /// [`DropReason::NoLanNeighbor`].
    pub fn drop_held(&mut self) {
        self.counters.count_drop(DropReason::NoLanNeighbor);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;

    /// Canonical reverse-tunnel case, literal bytes, checksums by hand.
    ///
    /// Outer (in on the WAN from router 02:00:00:00:00:fe): 198.51.100.20 -> 203.0.113.1,
    /// proto 4, id 0x0abc, DF, TTL 64, total 52:
    ///   4500+0034+0abc+4000+4004+c633+6414+cb00+7101 = 0x3_363c -> 0x363f -> ~ = 0xc9c0.
    /// Inner: UDP 192.0.2.10:5678 -> 192.0.2.1:1234 "pong", id 0x1c47, TTL 64:
    ///   4500+0020+1c47+4000+4011+c000+020a+c000+0201 = 0x2_6583 -> 0x6585 -> ~ = 0x9a7a;
    /// after TTL 63: 0x9b7a. Out on the LAN to 02:00:00:00:00:33 from lan_mac, padded to 60.
    #[test]
    fn canonical_decap_literal_bytes() {
        let input = hex(concat!(
            "020000000002 0200000000fe 0800",
            "4500 0034 0abc 4000 4004 c9c0 c6336414 cb007101",
            "4500 0020 1c47 4000 4011 9a7a c000020a c0000201",
            "162e 04d2 000c 0000 706f6e67",
        ));
        let expected = hex(concat!(
            "020000000033 020000000001 0800",
            "4500 0020 1c47 4000 3f11 9b7a c000020a c0000201",
            "162e 04d2 000c 0000 706f6e67",
            "0000000000000000000000000000",
        ));
        let mut p = pipeline(1);
        let (mut buf, start) = place(&input);
        let v = p.process(&mut buf, start, input.len(), Port::Wan, 0, &lookup());
        let (port, s, len, slot) = expect_tx(v);
        assert_eq!((port, slot), (Port::Lan, Some(VM_SLOT)));
        assert_eq!(
            s,
            start + 14 + 20 - 14,
            "new Ethernet header right before the inner one"
        );
        assert_eq!(
            &buf[s..s + len],
            &expected[..],
            "\n{}",
            diff(&buf[s..s + len], &expected)
        );
        check_decapsulated(&buf[s..s + len], &input[34..66], LAN_HOST_MAC);
        assert_eq!(p.counters().decapsulated, 1);
    }

    /// An unresolved home-link host: the frame is rewritten but for the
    /// destination MAC and handed back to be held; delivered later, it is
    /// byte for byte what a resolved neighbour would have got.
    #[test]
    fn unresolved_neighbour_is_held_then_delivered() {
        let unresolved = [192, 0, 2, 77];
        let inner = Ip::udp(VM, unresolved, b"reverse tunnelled");
        let input = Ip::ipip(CARE_OF, HA, inner.clone()).frame();
        let mut p = pipeline(1);
        let (mut buf, start) = place(&input);
        let v = p.process(&mut buf, start, input.len(), Port::Wan, 0, &lookup());
        let Verdict::AwaitLanNeighbor {
            addr,
            start: s,
            len,
            slot,
        } = v
        else {
            panic!("{v:?}")
        };
        assert_eq!((addr, slot), (Ipv4Addr::from(unresolved), Some(VM_SLOT)));
        assert_eq!(p.counters().decapsulated, 0, "not until it is delivered");
        assert_eq!(p.counters().drops.iter().sum::<u64>(), 0);
        let mac = [2, 0, 0, 0, 0, 0x77];
        assert!(p.deliver_held(&mut buf, s, len, mac));
        check_decapsulated(&buf[s..s + len], &inner.datagram(), mac);
        assert_eq!(p.counters().decapsulated, 1);
        assert_eq!(
            p.counters().decapsulated_bytes,
            inner.datagram().len() as u64
        );
        // Out-of-bounds holds are refused, not panicked on.
        let n = buf.len();
        assert!(!p.deliver_held(&mut buf, n - 3, 3, mac));
        assert!(!p.deliver_held(&mut buf, usize::MAX, 2, mac));
        p.drop_held();
        assert_eq!(p.counters().drop_count(DropReason::NoLanNeighbor), 1);
    }

    struct Case {
        name: &'static str,
        input: Vec<u8>,
        expect: Result<(), DropReason>,
    }

    fn cases() -> Vec<Case> {
        use DropReason::*;
        let from_vm = |dst: [u8; 4]| Ip::udp(VM, dst, b"reverse tunnelled");
        let tunnel = |inner: Ip| Ip::ipip(CARE_OF, HA, inner);
        let raw = |bytes: Vec<u8>| Ip::raw(CARE_OF, HA, 4, &bytes);
        let mut bad_sum = from_vm(LAN_HOST).datagram();
        bad_sum[10] ^= 0x40;
        let mut v6 = from_vm(LAN_HOST).datagram();
        v6[0] = 0x65;
        let long = from_vm(LAN_HOST).datagram();
        let mut trailing = from_vm(LAN_HOST).datagram();
        trailing.extend_from_slice(&[0xee; 7]);
        vec![
            Case {
                name: "untagged",
                input: tunnel(from_vm(LAN_HOST)).frame(),
                expect: Ok(()),
            },
            Case {
                name: "tagged outer, untagged on the lan",
                input: tunnel(from_vm(LAN_HOST)).vlan(0x0fff).frame(),
                expect: Ok(()),
            },
            Case {
                name: "outer with options",
                input: tunnel(from_vm(LAN_HOST)).options(&[0x94, 4, 0, 0]).frame(),
                expect: Ok(()),
            },
            Case {
                name: "inner with options and DF clear, big",
                input: tunnel(
                    Ip::udp(VM, LAN_HOST, &[9; 1400])
                        .options(&[1, 1, 1, 0])
                        .df(false),
                )
                .frame(),
                expect: Ok(()),
            },
            Case {
                name: "inner fragment passes through",
                input: tunnel(from_vm(LAN_HOST).df(false).frag(true, 3)).frame(),
                expect: Ok(()),
            },
            Case {
                name: "trailing bytes after the inner datagram",
                input: raw(trailing).frame(),
                expect: Ok(()),
            },
            Case {
                name: "outer is a fragment",
                input: tunnel(from_vm(LAN_HOST)).df(false).frag(true, 0).frame(),
                expect: Err(DecapOuterFragment),
            },
            Case {
                name: "inner source has no binding",
                input: tunnel(Ip::udp([192, 0, 2, 99], LAN_HOST, b"x")).frame(),
                expect: Err(DecapUnknownSource),
            },
            Case {
                name: "outer source is not the care-of",
                input: Ip::ipip(REMOTE, HA, from_vm(LAN_HOST)).frame(),
                expect: Err(DecapCareOfMismatch),
            },
            Case {
                name: "another vm's care-of",
                input: Ip::ipip(CARE_OF2, HA, from_vm(LAN_HOST)).frame(),
                expect: Err(DecapCareOfMismatch),
            },
            Case {
                name: "inner broadcast",
                input: tunnel(from_vm([255, 255, 255, 255])).frame(),
                expect: Err(Broadcast),
            },
            Case {
                name: "inner multicast",
                input: tunnel(from_vm([239, 255, 255, 250])).frame(),
                expect: Err(Multicast),
            },
            Case {
                name: "inner ttl 1, no icmp",
                input: tunnel(from_vm(LAN_HOST).ttl(1)).frame(),
                expect: Err(TtlExceeded),
            },
            Case {
                name: "inner bad checksum",
                input: raw(bad_sum).frame(),
                expect: Err(Ipv4BadChecksum),
            },
            Case {
                name: "inner version 6",
                input: raw(v6).frame(),
                expect: Err(Ipv4BadVersion),
            },
            Case {
                name: "inner truncated",
                input: raw(long[..19].to_vec()).frame(),
                expect: Err(Ipv4Truncated),
            },
            Case {
                name: "inner longer than the outer",
                input: raw(long[..long.len() - 1].to_vec()).frame(),
                expect: Err(Ipv4TotalLengthBeyondFrame),
            },
        ]
    }

    #[test]
    fn decap_fixtures() {
        for c in cases() {
            let mut p = pipeline(1);
            let (mut buf, start) = place(&c.input);
            let v = p.process(&mut buf, start, c.input.len(), Port::Wan, 0, &lookup());
            match c.expect {
                Ok(()) => {
                    let (port, s, len, slot) = expect_tx_named(v, c.name);
                    assert_eq!((port, slot), (Port::Lan, Some(VM_SLOT)), "{}", c.name);
                    let outer = inner_datagram(&c.input);
                    let ihl = usize::from(outer[0] & 0xf) * 4;
                    let inner = trim_datagram(&outer[ihl..]);
                    let out = &buf[s..s + len];
                    let expected = expected_decap(inner, LAN_HOST_MAC);
                    assert_eq!(out, &expected[..], "{}\n{}", c.name, diff(out, &expected));
                    check_decapsulated(out, inner, LAN_HOST_MAC);
                    assert_eq!(p.counters().decapsulated, 1, "{}", c.name);
                }
                Err(reason) => {
                    assert_eq!(v, Verdict::Drop(reason), "{}", c.name);
                    assert_eq!(p.counters().drop_count(reason), 1, "{}", c.name);
                    assert_eq!(p.counters().icmp_sent, 0, "{}", c.name);
                }
            }
        }
    }
}
