//! Proxy ARP for VMs that moved away (RFC 826; RFC 5944 §4.6: the home agent answers for
//! a mobile node away from home) and the gratuitous ARP that announces it.

use std::net::Ipv4Addr;

use super::ether;
use super::ipv4;
use super::{DropReason, Lookup, Pipeline, Port, Role, Rx, Verdict};

/// An Ethernet/IPv4 ARP packet.
const ARP_LEN: usize = 28;
const HTYPE_ETHERNET: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;

/// Fields of an Ethernet/IPv4 ARP packet (RFC 826, "Packet format").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Arp {
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
}

impl Arp {
    /// Parses an ARP packet; only the Ethernet/IPv4 kind is ours.
    fn parse(bytes: &[u8]) -> Result<Arp, DropReason> {
        let p = bytes
            .first_chunk::<ARP_LEN>()
            .ok_or(DropReason::ArpTruncated)?;
        let htype = u16::from_be_bytes([p[0], p[1]]);
        let ptype = u16::from_be_bytes([p[2], p[3]]);
        if htype != HTYPE_ETHERNET || ptype != ether::ETHERTYPE_IPV4 || p[4] != 6 || p[5] != 4 {
            return Err(DropReason::ArpNotEthernetIpv4);
        }
        Ok(Arp {
            op: u16::from_be_bytes([p[6], p[7]]),
            sha: [p[8], p[9], p[10], p[11], p[12], p[13]],
            spa: Ipv4Addr::new(p[14], p[15], p[16], p[17]),
            tha: [p[18], p[19], p[20], p[21], p[22], p[23]],
            tpa: Ipv4Addr::new(p[24], p[25], p[26], p[27]),
        })
    }

    fn encode(&self) -> [u8; ARP_LEN] {
        let [o0, o1] = self.op.to_be_bytes();
        let [s0, s1, s2, s3, s4, s5] = self.sha;
        let [sp0, sp1, sp2, sp3] = self.spa.octets();
        let [t0, t1, t2, t3, t4, t5] = self.tha;
        let [tp0, tp1, tp2, tp3] = self.tpa.octets();
        [
            0, 1, 0x08, 0x00, 6, 4, o0, o1, s0, s1, s2, s3, s4, s5, sp0, sp1, sp2, sp3, t0, t1, t2,
            t3, t4, t5, tp0, tp1, tp2, tp3,
        ]
    }
}

impl Pipeline {
    /// Answers an ARP request for a bound address with the HA's LAN MAC, in place: same
    /// frame, same 802.1Q tag, back to the requester.
    pub(super) fn proxy_arp(
        &mut self,
        buf: &mut [u8],
        rx: &Rx,
        lookup: &impl Lookup,
    ) -> Result<Verdict, DropReason> {
        let arp_off = rx.l3_off();
        let req = Arp::parse(buf.get(arp_off..rx.end).ok_or(DropReason::ArpTruncated)?)?;
        if req.op != OP_REQUEST {
            return Err(DropReason::ArpNotRequest);
        }
        if rx.ingress != Port::Lan {
            // The bound addresses live on the home link; answering for them elsewhere would
            // pull their traffic to the wrong side.
            return Err(DropReason::ArpOnWan);
        }
        // Never unicast a reply to a group MAC, nor answer a sender that cannot be a host.
        // 0.0.0.0 is allowed: an RFC 5227 probe, which we answer to defend the address.
        if ether::is_group(&req.sha)
            || (req.spa != Ipv4Addr::UNSPECIFIED && !ipv4::is_unicast_host(req.spa))
        {
            return Err(DropReason::ArpBadSender);
        }
        match self.config.role {
            Role::HomeAgent => {
                if lookup.binding(req.tpa).is_none() {
                    return Err(DropReason::ArpTargetNotBound);
                }
            }
            // The VM asks for a neighbour on its home subnet (it only ARPs for on-link
            // addresses): we are that neighbour now. Its probes (sender 0.0.0.0) and
            // announcements get no answer: the address is the VM's.
            Role::ForeignAgent => {
                if lookup.binding(req.spa).is_none() {
                    return Err(DropReason::ArpSenderNotServed);
                }
            }
        }
        if req.spa == req.tpa {
            // The VM announcing itself (gratuitous ARP, e.g. back home): it owns the address.
            return Err(DropReason::ArpFromOwner);
        }

        let reply = Arp {
            op: OP_REPLY,
            sha: self.config.lan_mac,
            spa: req.tpa,
            tha: req.sha,
            tpa: req.spa,
        };
        let body = buf
            .get_mut(arp_off..)
            .and_then(|b| b.first_chunk_mut::<ARP_LEN>())
            .ok_or(DropReason::ArpTruncated)?;
        *body = reply.encode();
        // The tag bytes stay where they are; only the addresses change.
        let eth = buf.get_mut(rx.start..).ok_or(DropReason::ArpTruncated)?;
        ether::write(
            eth,
            req.sha,
            self.config.lan_mac,
            rx.l2.vlan_tci,
            ether::ETHERTYPE_ARP,
        )
        .ok_or(DropReason::ArpTruncated)?;
        let len = ether::pad_to_min(buf, rx.start, rx.l2.len() + ARP_LEN);
        self.counters.arp_replies += 1;
        Ok(Verdict::Tx {
            port: Port::Lan,
            start: rx.start,
            len,
            slot: None,
        })
    }
}

/// Broadcast gratuitous ARP (ARP request form, sender IP == target IP == `addr`, sender MAC
/// == `mac`, target MAC 0, Ethernet dst ff:ff:ff:ff:ff:ff, src `mac`), with an 802.1Q tag if
/// `vlan` is set (the full TCI: a plain VLAN ID is a TCI with priority 0), padded to 60
/// bytes (RFC 5944 §4.6; RFC 5227 §2.3 and §3: an announcement is a request). Returns the
/// length, 0 if `buf` is too small.
pub fn write_gratuitous_arp(
    buf: &mut [u8],
    mac: [u8; 6],
    addr: Ipv4Addr,
    vlan: Option<u16>,
) -> usize {
    let Some(frame) = buf.get_mut(..ether::MIN_FRAME) else {
        return 0;
    };
    let Some(l2_len) = ether::write(frame, ether::BROADCAST_MAC, mac, vlan, ether::ETHERTYPE_ARP)
    else {
        return 0;
    };
    let announce = Arp {
        op: OP_REQUEST,
        sha: mac,
        spa: addr,
        tha: [0; 6],
        tpa: addr,
    };
    let Some((body, pad)) = frame
        .get_mut(l2_len..)
        .and_then(|rest| rest.split_first_chunk_mut::<ARP_LEN>())
    else {
        return 0;
    };
    *body = announce.encode();
    pad.fill(0);
    ether::MIN_FRAME
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::Arp;
    use std::net::Ipv4Addr;

    /// Request from 192.0.2.1 (02:00:00:00:00:33) for the bound 192.0.2.10, literal bytes.
    #[test]
    fn proxy_reply_literal_bytes() {
        let input = hex(concat!(
            "ffffffffffff 020000000033 0806",
            "0001 0800 06 04 0001 020000000033 c0000201 000000000000 c000020a",
            "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", // padding (garbage, 18 bytes)
        ));
        let expected = hex(concat!(
            "020000000033 020000000001 0806",
            "0001 0800 06 04 0002 020000000001 c000020a 020000000033 c0000201",
            "000000000000000000000000000000000000",
        ));
        let mut p = pipeline(1);
        let (mut buf, start) = place(&input);
        let v = p.process(&mut buf, start, input.len(), Port::Lan, 0, &lookup());
        assert_eq!(
            v,
            Verdict::Tx {
                port: Port::Lan,
                start,
                len: 60,
                slot: None
            }
        );
        assert_eq!(&buf[start..start + 60], &expected[..]);
        check_arp_reply(&buf[start..start + 60], &input);
        assert_eq!(p.counters().arp_replies, 1);
    }

    struct Case {
        name: &'static str,
        ingress: Port,
        input: Vec<u8>,
        expect: Result<(), DropReason>,
    }

    fn cases() -> Vec<Case> {
        use DropReason::*;
        let req = |spa: [u8; 4], tpa: [u8; 4]| ArpFrame::request(LAN_HOST_MAC, spa, tpa);
        vec![
            Case {
                name: "request",
                ingress: Port::Lan,
                input: req(LAN_HOST, VM).frame(),
                expect: Ok(()),
            },
            Case {
                name: "tagged request, tag kept",
                ingress: Port::Lan,
                input: req(LAN_HOST, VM).vlan(0x6123).frame(),
                expect: Ok(()),
            },
            Case {
                name: "unicast request (cache refresh)",
                ingress: Port::Lan,
                input: req(LAN_HOST, VM).eth_dst(LAN_MAC).frame(),
                expect: Ok(()),
            },
            Case {
                name: "probe from 0.0.0.0 answered",
                ingress: Port::Lan,
                input: req([0, 0, 0, 0], VM).frame(),
                expect: Ok(()),
            },
            Case {
                name: "unpadded 42-byte request",
                ingress: Port::Lan,
                input: req(LAN_HOST, VM).unpadded().frame(),
                expect: Ok(()),
            },
            Case {
                name: "reply",
                ingress: Port::Lan,
                input: req(LAN_HOST, VM).op(2).frame(),
                expect: Err(ArpNotRequest),
            },
            Case {
                name: "target not bound",
                ingress: Port::Lan,
                input: req(LAN_HOST, [192, 0, 2, 99]).frame(),
                expect: Err(ArpTargetNotBound),
            },
            Case {
                name: "vm announcing itself",
                ingress: Port::Lan,
                input: ArpFrame::request([2, 0, 0, 0, 0, 0x10], VM, VM).frame(),
                expect: Err(ArpFromOwner),
            },
            Case {
                name: "group sender mac",
                ingress: Port::Lan,
                input: ArpFrame::request([3, 0, 0, 0, 0, 1], LAN_HOST, VM).frame(),
                expect: Err(ArpBadSender),
            },
            Case {
                name: "broadcast sender ip",
                ingress: Port::Lan,
                input: req([255, 255, 255, 255], VM).frame(),
                expect: Err(ArpBadSender),
            },
            Case {
                name: "from the wan",
                ingress: Port::Wan,
                input: req(REMOTE, VM).frame(),
                expect: Err(ArpOnWan),
            },
            Case {
                name: "htype 6",
                ingress: Port::Lan,
                input: req(LAN_HOST, VM).patch(0, &[0, 6]).frame(),
                expect: Err(ArpNotEthernetIpv4),
            },
            Case {
                name: "ptype ipv6",
                ingress: Port::Lan,
                input: req(LAN_HOST, VM).patch(2, &[0x86, 0xdd]).frame(),
                expect: Err(ArpNotEthernetIpv4),
            },
            Case {
                name: "hlen 8",
                ingress: Port::Lan,
                input: req(LAN_HOST, VM).patch(4, &[8]).frame(),
                expect: Err(ArpNotEthernetIpv4),
            },
            Case {
                name: "plen 16",
                ingress: Port::Lan,
                input: req(LAN_HOST, VM).patch(5, &[16]).frame(),
                expect: Err(ArpNotEthernetIpv4),
            },
            Case {
                name: "truncated",
                ingress: Port::Lan,
                input: req(LAN_HOST, VM).unpadded().frame()[..41].to_vec(),
                expect: Err(ArpTruncated),
            },
            Case {
                name: "tagged and truncated",
                ingress: Port::Lan,
                input: req(LAN_HOST, VM).vlan(5).unpadded().frame()[..45].to_vec(),
                expect: Err(ArpTruncated),
            },
        ]
    }

    #[test]
    fn arp_fixtures() {
        for c in cases() {
            let mut p = pipeline(1);
            let (mut buf, start) = place(&c.input);
            let v = p.process(&mut buf, start, c.input.len(), c.ingress, 0, &lookup());
            match c.expect {
                Ok(()) => {
                    let (port, s, len, slot) = expect_tx_named(v, c.name);
                    assert_eq!(
                        (port, s, len, slot),
                        (Port::Lan, start, 60, None),
                        "{}",
                        c.name
                    );
                    let out = &buf[s..s + len];
                    let expected = expected_arp_reply(&c.input);
                    assert_eq!(out, &expected[..], "{}\n{}", c.name, diff(out, &expected));
                    check_arp_reply(out, &c.input);
                    assert_eq!(p.counters().arp_replies, 1, "{}", c.name);
                }
                Err(reason) => {
                    assert_eq!(v, Verdict::Drop(reason), "{}", c.name);
                    assert_eq!(p.counters().drop_count(reason), 1, "{}", c.name);
                }
            }
        }
    }

    #[test]
    fn gratuitous_arp_literal_bytes() {
        let mut buf = [0x55u8; 64];
        let n = write_gratuitous_arp(&mut buf, LAN_MAC, Ipv4Addr::new(192, 0, 2, 10), None);
        let expected = hex(concat!(
            "ffffffffffff 020000000001 0806",
            "0001 0800 06 04 0001 020000000001 c000020a 000000000000 c000020a",
            "000000000000000000000000000000000000",
        ));
        assert_eq!(n, 60);
        assert_eq!(&buf[..60], &expected[..]);
        assert_eq!(buf[60], 0x55);

        let n = write_gratuitous_arp(
            &mut buf,
            LAN_MAC,
            Ipv4Addr::new(192, 0, 2, 10),
            Some(0x0064),
        );
        let expected = hex(concat!(
            "ffffffffffff 020000000001 8100 0064 0806",
            "0001 0800 06 04 0001 020000000001 c000020a 000000000000 c000020a",
            "0000000000000000000000000000",
        ));
        assert_eq!(n, 60);
        assert_eq!(&buf[..60], &expected[..]);

        // Decodes with etherparse as an Ethernet/IPv4 ARP request.
        {
            let s = etherparse::SlicedPacket::from_ethernet(&buf[..60]).unwrap();
            let Some(etherparse::NetSlice::Arp(a)) = &s.net else {
                panic!("{:?}", s.net)
            };
            assert_eq!(a.operation(), etherparse::ArpOperation::REQUEST);
            assert_eq!(a.sender_protocol_addr(), a.target_protocol_addr());
            assert_eq!(a.sender_hw_addr(), &LAN_MAC[..]);
        }

        for small in 0..60 {
            assert_eq!(
                write_gratuitous_arp(&mut buf[..small], LAN_MAC, Ipv4Addr::LOCALHOST, None),
                0
            );
        }
    }

    #[test]
    fn arp_encode_parse_round_trip() {
        let a = Arp {
            op: 1,
            sha: [1, 2, 3, 4, 5, 6],
            spa: Ipv4Addr::new(10, 0, 0, 1),
            tha: [7, 8, 9, 10, 11, 12],
            tpa: Ipv4Addr::new(10, 0, 0, 2),
        };
        assert_eq!(Arp::parse(&a.encode()), Ok(a));
        assert_eq!(Arp::parse(&a.encode()[..27]), Err(DropReason::ArpTruncated));
    }
}
