//! Encapsulation toward the care-of address, IPv4 in IPv4 (RFC 2003 §3.1).
//!
//! The outer header is written into the headroom in front of the inner IPv4 header, so the
//! datagram itself never moves; any 802.1Q tag of the received frame is dropped with the old
//! Ethernet header (it belongs to the home link, not to the tunnel).

use std::net::Ipv4Addr;

use super::ether;
use super::icmp::IcmpError;
use super::ipv4::{self, Ipv4, NewHeader};
use super::{fragment, partial, DropReason, Lookup, NextHop, Pipeline, Port, Role, Rx, Verdict};

/// Outer Ethernet + outer IPv4 header.
const PREPEND: usize = ether::ETH_LEN + ipv4::HDR_LEN;

impl Pipeline {
    /// Forwards a datagram addressed to a bound VM into its tunnel, in the order a router
    /// forwards (RFC 1812 §5.2): the never-encapsulate rules, TTL, MTU with DF set (both
    /// answered with ICMP errors about the datagram as received), next hop, then the rewrite.
    pub(super) fn encapsulate(
        &mut self,
        buf: &mut [u8],
        rx: &Rx,
        ip: &Ipv4,
        lookup: &impl Lookup,
    ) -> Result<Verdict, DropReason> {
        let ip_off = rx.l3_off();
        // A mobile node's binding is for its unicast home address; broadcasts and multicasts
        // on the home link reach it only if it asked for them (RFC 5944 §4.3), which it does
        // not through us.
        if ipv4::is_broadcast(ip.dst) {
            return Err(DropReason::Broadcast);
        }
        if ipv4::is_multicast(ip.dst) || ether::is_group(&rx.l2.dst) {
            return Err(DropReason::Multicast);
        }
        let binding = match self.config.role {
            Role::HomeAgent => {
                lookup
                    .binding(ip.dst)
                    .ok_or(if ip.protocol == ipv4::PROTO_IPIP {
                        DropReason::DecapNotForUs
                    } else {
                        DropReason::NoBinding
                    })?
            }
            Role::ForeignAgent => {
                // Reverse tunnel (RFC 3024 §5.2): only what the VM itself sends on its link.
                if rx.ingress != Port::Lan {
                    return Err(DropReason::NotFromVmLink);
                }
                lookup.binding(ip.src).ok_or(DropReason::NoBinding)?
            }
        };
        if binding.care_of.is_unspecified() {
            // A switchover: the VM stopped at its source and its destination has not
            // registered yet. The frame, untouched, waits in the worker for either.
            return Ok(Verdict::Hold {
                vm: ip.dst,
                start: rx.start,
                len: rx.end - rx.start,
            });
        }
        // RFC 2003 §3.2 (routing failures): never tunnel a datagram that we or the tunnel
        // exit point sent; it is looping.
        if ip.src == self.config.ha_addr {
            return Err(DropReason::SourceIsHa);
        }
        if ip.src == binding.care_of {
            return Err(DropReason::SourceIsCareOf);
        }
        if ip.protocol == ipv4::PROTO_IPIP
            && encapsulated_dst(buf, ip_off, ip) == Some(binding.care_of)
        {
            // A tunnel packet for the exit point itself would come back to us wrapped once
            // more on every round (RFC 2003 §3.2, recursive encapsulation).
            return Err(DropReason::TunnelLoop);
        }
        // RFC 1812 §5.3.1: a router discards a datagram whose TTL would reach zero.
        if ip.ttl <= 1 {
            return self.icmp_error(buf, rx, ip, IcmpError::TimeExceeded);
        }
        let mtu = usize::from(self.config.tunnel_mtu);
        let too_big = ip.total_len.saturating_add(ipv4::HDR_LEN) > mtu;
        if too_big && ip.df() {
            // RFC 1191 §4: report the MTU the sender can use, the tunnel's minus our header.
            let next_hop_mtu = self.config.tunnel_mtu.saturating_sub(ipv4::HDR_LEN as u16);
            return self.icmp_error(buf, rx, ip, IcmpError::FragNeeded { next_hop_mtu });
        }
        let NextHop::Resolved { port, mac } = lookup.next_hop(binding.care_of) else {
            return Err(DropReason::NoNextHop);
        };
        if self.config.role == Role::HomeAgent {
            // The VM's answer to this sender comes back through the reverse
            // tunnel; learn the sender's MAC before then (the kernel does
            // not: it never saw this datagram).
            lookup.warm_lan_neighbor(ip.src);
        }
        let src_mac = self.port_mac(port);
        // The receiver behind the tunnel cannot finish what a local sender
        // left to the device (CHECKSUM_PARTIAL): finish it here, as the
        // kernel does before forwarding. Both roles: the HA's local
        // senders, the agent's VMs (QEMU's default virtio-net).
        if partial::finish(buf, ip_off, ip) {
            self.counters.checksums_finished += 1;
        }
        // A SYN entering the tunnel is clamped below, after the last check that can drop
        // and after the checksum is whole (`Pipeline::clamp_mss`): its MSS sizes what the
        // far end sends back through the tunnel (iptables' `-o tunnel --clamp-mss-to-pmtu`).

        if too_big {
            let plan = fragment::plan(
                buf,
                ip_off,
                ip,
                self.config.tunnel_mtu,
                binding.care_of,
                mac,
                src_mac,
            )?;
            // The pieces copy the inner datagram from the source frame, TCP header included.
            self.clamp_mss(buf, ip_off, ip);
            // The pieces copy the inner header from the source frame, TTL included.
            ipv4::decrement_ttl(buf, ip_off).ok_or(DropReason::Ipv4Truncated)?;
            self.counters.encapsulated += 1;
            self.counters.encapsulated_bytes += ip.total_len as u64;
            self.counters.fragmented += 1;
            return Ok(Verdict::Fragments {
                port,
                plan,
                slot: Some(binding.slot),
            });
        }

        // Every check before the first write: a dropped frame is left as received.
        let new_start = ip_off.checked_sub(PREPEND).ok_or(DropReason::NoHeadroom)?;
        let outer_off = ip_off - ipv4::HDR_LEN;
        // Not too big, so at most tunnel_mtu: fits.
        let total_len =
            u16::try_from(ip.total_len + ipv4::HDR_LEN).map_err(|_| DropReason::CannotFragment)?;
        self.clamp_mss(buf, ip_off, ip);
        ipv4::decrement_ttl(buf, ip_off).ok_or(DropReason::Ipv4Truncated)?;
        let outer = NewHeader {
            // RFC 2003 §3.1: TOS copied; DF copied (a DF datagram must stay unfragmented);
            // our own Identification; a fresh TTL.
            tos: ip.tos,
            total_len,
            ident: self.next_ident(),
            flags_frag: if ip.df() { 0x4000 } else { 0 },
            ttl: self.config.outer_ttl,
            protocol: ipv4::PROTO_IPIP,
            src: self.config.ha_addr,
            dst: binding.care_of,
        };
        ipv4::write(
            ipv4::base_mut(buf, outer_off).ok_or(DropReason::NoHeadroom)?,
            &outer,
        );
        let eth = buf.get_mut(new_start..).ok_or(DropReason::NoHeadroom)?;
        ether::write(eth, mac, src_mac, None, ether::ETHERTYPE_IPV4)
            .ok_or(DropReason::NoHeadroom)?;
        let len = ether::pad_to_min(buf, new_start, PREPEND + ip.total_len);
        self.counters.encapsulated += 1;
        self.counters.encapsulated_bytes += ip.total_len as u64;
        Ok(Verdict::Tx {
            port,
            start: new_start,
            len,
            slot: Some(binding.slot),
        })
    }
}

/// Destination of the IPv4 header carried by an IP-in-IP datagram (first fragment only:
/// later fragments carry no header), if the payload is long enough to hold one.
fn encapsulated_dst(buf: &[u8], ip_off: usize, ip: &Ipv4) -> Option<Ipv4Addr> {
    if !ip.is_first_fragment() || ip.payload_len() < ipv4::HDR_LEN {
        return None;
    }
    let inner = buf
        .get(ip_off.checked_add(ip.header_len)?..)?
        .first_chunk::<{ ipv4::HDR_LEN }>()?;
    Some(Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;

    /// The canonical case, all bytes literal and both checksums checked by hand.
    ///
    /// Inner: UDP 192.0.2.1:1234 -> 192.0.2.10:5678 carrying "ping" (UDP checksum 0, none),
    /// TTL 64, DF, id 0x1c46, total length 32, arriving untagged on the LAN from
    /// 02:00:00:00:00:33, padded to 60 bytes. Its header checksum, 16-bit words:
    ///   4500+0020+1c46+4000+4011+c000+0201+c000+020a = 0x2_6582 -> 0x6584 -> ~ = 0x9a7b.
    /// TTL 64 -> 63 turns the word 0x4011 into 0x3f11: the sum drops by 0x100, so the
    /// checksum grows by 0x100 to 0x9b7b (RFC 1624).
    /// Outer: id 0x0100 (the seed), DF copied, TTL 64, protocol 4, 203.0.113.1 ->
    /// 198.51.100.20, total length 20 + 32 = 0x34:
    ///   4500+0034+0100+4000+4004+cb00+7101+c633+6414 = 0x3_2c80 -> 0x2c83 -> ~ = 0xd37c.
    /// Ethernet: to the next hop 02:00:00:00:00:fe from wan_mac, untagged, 66 bytes.
    /// The sender of a tunnelled datagram is resolved ahead of the VM's
    /// answer; a datagram that is not tunnelled asks nothing.
    #[test]
    fn the_sender_is_resolved_ahead_of_the_answer() {
        let mut p = pipeline(1);
        let l = lookup();
        let input = Ip::udp(REMOTE, VM, b"to the vm").frame();
        let (mut buf, start) = place(&input);
        let v = p.process(&mut buf, start, input.len(), Port::Lan, 0, &l);
        assert!(matches!(v, Verdict::Tx { .. }), "{v:?}");
        assert_eq!(*l.warmed.borrow(), [Ipv4Addr::from(REMOTE)]);
        let unbound = Ip::udp(REMOTE, [192, 0, 2, 200], b"x").frame();
        let (mut buf, start) = place(&unbound);
        p.process(&mut buf, start, unbound.len(), Port::Lan, 0, &l);
        assert_eq!(l.warmed.borrow().len(), 1);
    }

    #[test]
    fn canonical_encap_literal_bytes() {
        let input = hex(concat!(
            "020000000001 020000000033 0800",                  // Ethernet
            "4500 0020 1c46 4000 4011 9a7b c0000201 c000020a", // IPv4
            "04d2 162e 000c 0000 70696e67",                    // UDP + "ping"
            "0000000000000000000000000000",                    // padding to 60
        ));
        let expected = hex(concat!(
            "0200000000fe 020000000002 0800",
            "4500 0034 0100 4000 4004 d37c cb007101 c6336414", // outer
            "4500 0020 1c46 4000 3f11 9b7b c0000201 c000020a", // inner, TTL 63
            "04d2 162e 000c 0000 70696e67",
        ));
        let mut p = pipeline(0x0100);
        let (mut buf, start) = place(&input);
        let v = p.process(&mut buf, start, input.len(), Port::Lan, 0, &lookup());
        let (port, s, len, slot) = expect_tx(v);
        assert_eq!((port, slot), (Port::Wan, Some(VM_SLOT)));
        assert_eq!(
            s,
            start + 14 - 34,
            "outer header prepended, datagram did not move"
        );
        assert_eq!(
            &buf[s..s + len],
            &expected[..],
            "\n{}",
            diff(&buf[s..s + len], &expected)
        );
        check_encapsulated(&buf[s..s + len], &input[14..46], 0x0100);
        assert_eq!(p.counters().encapsulated, 1);
        assert_eq!(p.counters().trimmed_padding, 1);
    }

    struct Case {
        name: &'static str,
        ingress: Port,
        input: Vec<u8>,
        /// Expected (egress port, inner datagram as sent) or drop reason.
        expect: Result<Port, DropReason>,
    }

    fn cases() -> Vec<Case> {
        use DropReason::*;
        let udp = |src: [u8; 4], dst: [u8; 4]| Ip::udp(src, dst, b"hello, world");
        vec![
            Case {
                name: "udp from the LAN",
                ingress: Port::Lan,
                input: udp(LAN_HOST, VM).frame(),
                expect: Ok(Port::Wan),
            },
            Case {
                name: "udp from the WAN (hairpin to the care-of)",
                ingress: Port::Wan,
                input: udp(REMOTE, VM).frame(),
                expect: Ok(Port::Wan),
            },
            Case {
                name: "vlan tagged: tag stripped",
                ingress: Port::Lan,
                input: udp(LAN_HOST, VM).vlan(0x2064).frame(),
                expect: Ok(Port::Wan),
            },
            Case {
                name: "ip options encapsulated unchanged",
                ingress: Port::Lan,
                input: udp(LAN_HOST, VM).options(&[0x94, 0x04, 0x00, 0x00]).frame(),
                expect: Ok(Port::Wan),
            },
            Case {
                name: "inner fragment (MF, offset 185) encapsulated unchanged",
                ingress: Port::Lan,
                input: udp(LAN_HOST, VM).df(false).frag(true, 185).frame(),
                expect: Ok(Port::Wan),
            },
            Case {
                name: "tos and no-DF copied",
                ingress: Port::Lan,
                input: udp(LAN_HOST, VM).tos(0xb9).df(false).frame(),
                expect: Ok(Port::Wan),
            },
            Case {
                name: "ttl 2 still forwarded",
                ingress: Port::Lan,
                input: udp(LAN_HOST, VM).ttl(2).frame(),
                expect: Ok(Port::Wan),
            },
            Case {
                name: "nested ip-in-ip to another endpoint",
                ingress: Port::Wan,
                input: Ip::ipip(REMOTE, VM, Ip::udp(REMOTE, [10, 9, 9, 9], b"x")).frame(),
                expect: Ok(Port::Wan),
            },
            Case {
                name: "care-of on the LAN side",
                ingress: Port::Wan,
                input: udp(REMOTE, VM2).frame(),
                expect: Ok(Port::Lan),
            },
            Case {
                name: "exactly the tunnel mtu",
                ingress: Port::Lan,
                input: Ip::udp(LAN_HOST, VM, &[7; 1480 - 28]).frame(),
                expect: Ok(Port::Wan),
            },
            Case {
                name: "limited broadcast",
                ingress: Port::Lan,
                input: udp(LAN_HOST, [255, 255, 255, 255]).frame(),
                expect: Err(Broadcast),
            },
            Case {
                name: "multicast destination",
                ingress: Port::Lan,
                input: udp(LAN_HOST, [224, 0, 0, 251]).frame(),
                expect: Err(Multicast),
            },
            Case {
                name: "unicast ip in an ethernet broadcast",
                ingress: Port::Lan,
                input: udp(LAN_HOST, VM).eth_dst([0xff; 6]).frame(),
                expect: Err(Multicast),
            },
            Case {
                name: "no binding",
                ingress: Port::Lan,
                input: udp(LAN_HOST, [192, 0, 2, 99]).frame(),
                expect: Err(NoBinding),
            },
            Case {
                name: "source is the HA",
                ingress: Port::Lan,
                input: udp(HA, VM).frame(),
                expect: Err(SourceIsHa),
            },
            Case {
                name: "source is the care-of address",
                ingress: Port::Wan,
                input: udp(CARE_OF, VM).frame(),
                expect: Err(SourceIsCareOf),
            },
            Case {
                name: "ip-in-ip toward the care-of itself",
                ingress: Port::Wan,
                input: Ip::ipip(REMOTE, VM, Ip::udp(REMOTE, CARE_OF, b"x")).frame(),
                expect: Err(TunnelLoop),
            },
            Case {
                name: "ip-in-ip to an unbound address that is not the HA",
                ingress: Port::Wan,
                input: Ip::ipip(CARE_OF, [192, 0, 2, 99], Ip::udp(VM, LAN_HOST, b"x")).frame(),
                expect: Err(DecapNotForUs),
            },
            Case {
                name: "care-of without next hop",
                ingress: Port::Lan,
                input: udp(LAN_HOST, VM3).frame(),
                expect: Err(NoNextHop),
            },
        ]
    }

    #[test]
    fn encap_fixtures() {
        for c in cases() {
            let mut p = pipeline(0x4000);
            let (mut buf, start) = place(&c.input);
            let v = p.process(&mut buf, start, c.input.len(), c.ingress, 0, &lookup());
            match c.expect {
                Ok(port) => {
                    let (got, s, len, slot) = expect_tx_named(v, c.name);
                    assert_eq!(got, port, "{}", c.name);
                    assert!(slot.is_some(), "{}", c.name);
                    let inner = inner_datagram(&c.input);
                    let out = &buf[s..s + len];
                    // Exact bytes from an independent construction (etherparse headers).
                    let care_of = lookup().binding(dst_of(inner)).unwrap().care_of;
                    let expected = expected_encap(&p, port, care_of, inner, 0x4000);
                    assert_eq!(out, &expected[..], "{}\n{}", c.name, diff(out, &expected));
                    check_encapsulated(out, inner, 0x4000);
                    assert_eq!(p.counters().encapsulated, 1, "{}", c.name);
                }
                Err(reason) => {
                    assert_eq!(v, Verdict::Drop(reason), "{}", c.name);
                    assert_eq!(p.counters().drop_count(reason), 1, "{}", c.name);
                    assert_eq!(p.counters().encapsulated, 0, "{}", c.name);
                    assert_eq!(
                        buf[..start],
                        vec![CANARY; start][..],
                        "{}: headroom",
                        c.name
                    );
                }
            }
        }
    }

    #[test]
    fn identification_increments_per_datagram() {
        let mut p = pipeline(0xfffe);
        let input = Ip::udp(LAN_HOST, VM, b"abc").frame();
        for want in [0xfffe_u16, 0xffff, 0x0000, 0x0001] {
            let (mut buf, start) = place(&input);
            let Verdict::Tx { start: s, len, .. } =
                p.process(&mut buf, start, input.len(), Port::Lan, 0, &lookup())
            else {
                panic!()
            };
            let outer = etherparse::Ipv4HeaderSlice::from_slice(&buf[s + 14..s + len]).unwrap();
            assert_eq!(outer.identification(), want);
        }
    }

    #[test]
    fn small_headroom_is_a_drop_not_a_panic() {
        let input = Ip::udp(LAN_HOST, VM, b"abc").frame();
        for start in 0..MIN_HEADROOM {
            let mut buf = vec![0u8; start + input.len()];
            buf[start..].copy_from_slice(&input);
            let mut p = pipeline(1);
            let v = p.process(&mut buf, start, input.len(), Port::Lan, 0, &lookup());
            assert_eq!(v, Verdict::Drop(DropReason::NoHeadroom), "start {start}");
        }
        // Exactly MIN_HEADROOM is enough.
        let mut buf = vec![0u8; MIN_HEADROOM + input.len()];
        buf[MIN_HEADROOM..].copy_from_slice(&input);
        let v = pipeline(1).process(&mut buf, MIN_HEADROOM, input.len(), Port::Lan, 0, &lookup());
        assert!(matches!(v, Verdict::Tx { .. }), "{v:?}");
    }
}
