//! ICMP errors about datagrams the HA discards while forwarding into a tunnel: Time Exceeded
//! (RFC 792) and Fragmentation Needed (RFC 1191 §4).
//!
//! The error is built in place: new Ethernet, IPv4 and ICMP headers are prepended into the
//! headroom so that the quoted original header and the first 8 data bytes (RFC 792, RFC 1812
//! §4.3.2.3) stay where they are. It goes back out the ingress port to the frame's Ethernet
//! source (the previous hop), keeping the frame's 802.1Q tag.

use super::ether::{self, L2};
use super::ipv4::{self, Ipv4, NewHeader};
use super::{checksum, DropReason, Pipeline, Rx, Verdict};

const ICMP_HDR_LEN: usize = 8;
/// Data bytes quoted after the original header (RFC 792: "the first 64 bits").
const QUOTED_DATA: usize = 8;
/// IPv4 + ICMP headers prepended in front of the quoted header.
const PREPEND: usize = ipv4::HDR_LEN + ICMP_HDR_LEN;

const TYPE_DEST_UNREACHABLE: u8 = 3;
const TYPE_SOURCE_QUENCH: u8 = 4;
const TYPE_REDIRECT: u8 = 5;
const TYPE_TIME_EXCEEDED: u8 = 11;
const TYPE_PARAMETER_PROBLEM: u8 = 12;
/// Destination Unreachable code 4: fragmentation needed and DF set.
const CODE_FRAG_NEEDED: u8 = 4;
/// Time Exceeded code 0: TTL exceeded in transit.
const CODE_TTL_EXCEEDED: u8 = 0;

/// RFC 1812 §4.3.2.5: ICMP errors SHOULD carry precedence 6 (internetwork control).
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;
/// TTL of the errors we originate.
const ICMP_TTL: u8 = 64;

/// Which error to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IcmpError {
    /// Type 11 code 0.
    TimeExceeded,
    /// Type 3 code 4 with the next-hop MTU in bytes 6..8 (RFC 1191 §4).
    FragNeeded { next_hop_mtu: u16 },
}

impl IcmpError {
    fn reason(self) -> DropReason {
        match self {
            IcmpError::TimeExceeded => DropReason::TtlExceeded,
            IcmpError::FragNeeded { .. } => DropReason::FragNeeded,
        }
    }

    /// Type, code and the second 32-bit word of the header.
    fn header(self) -> [u8; ICMP_HDR_LEN] {
        match self {
            IcmpError::TimeExceeded => [TYPE_TIME_EXCEEDED, CODE_TTL_EXCEEDED, 0, 0, 0, 0, 0, 0],
            IcmpError::FragNeeded { next_hop_mtu } => {
                let [m0, m1] = next_hop_mtu.to_be_bytes();
                [TYPE_DEST_UNREACHABLE, CODE_FRAG_NEEDED, 0, 0, 0, 0, m0, m1]
            }
        }
    }
}

impl Pipeline {
    /// Discards the received datagram for `kind` and, if the rules and the token bucket
    /// allow, turns its frame into the ICMP error. The drop reason is counted either way;
    /// `Err` means no error was sent.
    pub(super) fn icmp_error(
        &mut self,
        buf: &mut [u8],
        rx: &Rx,
        ip: &Ipv4,
        kind: IcmpError,
    ) -> Result<Verdict, DropReason> {
        let ip_off = rx.l3_off();
        let reason = kind.reason();
        if !may_send_error(buf, ip_off, &rx.l2, ip) {
            return Err(reason);
        }
        // The new frame starts 28 bytes before the old one (same link header length).
        let new_start = rx
            .start
            .checked_sub(PREPEND)
            .ok_or(DropReason::NoHeadroom)?;
        if !self.icmp_bucket.try_take(rx.now_ns) {
            self.counters.icmp_rate_limited += 1;
            return Err(reason);
        }
        let quote_len = ip.header_len + ip.payload_len().min(QUOTED_DATA);
        let icmp_len = ICMP_HDR_LEN + quote_len;
        let ip_len = ipv4::HDR_LEN + icmp_len;
        let icmp_off = ip_off
            .checked_sub(ICMP_HDR_LEN)
            .ok_or(DropReason::NoHeadroom)?;
        let new_ip_off = icmp_off
            .checked_sub(ipv4::HDR_LEN)
            .ok_or(DropReason::NoHeadroom)?;

        // ICMP header, then its checksum over header + quote (RFC 792).
        let icmp = buf
            .get_mut(icmp_off..ip_off.saturating_add(quote_len))
            .ok_or(reason)?;
        let h = icmp.first_chunk_mut::<ICMP_HDR_LEN>().ok_or(reason)?;
        *h = kind.header();
        let [c0, c1] = checksum::checksum(icmp).to_be_bytes();
        let h = icmp.first_chunk_mut::<ICMP_HDR_LEN>().ok_or(reason)?;
        h[2] = c0;
        h[3] = c1;

        let header = NewHeader {
            tos: TOS_INTERNETWORK_CONTROL,
            total_len: u16::try_from(ip_len).map_err(|_| reason)?,
            ident: self.next_ident(),
            flags_frag: 0,
            ttl: ICMP_TTL,
            protocol: ipv4::PROTO_ICMP,
            src: self.config.ha_addr,
            dst: ip.src,
        };
        ipv4::write(ipv4::base_mut(buf, new_ip_off).ok_or(reason)?, &header);
        let eth = buf.get_mut(new_start..).ok_or(reason)?;
        let l2_len = ether::write(
            eth,
            rx.l2.src,
            self.port_mac(rx.ingress),
            rx.l2.vlan_tci,
            ether::ETHERTYPE_IPV4,
        )
        .ok_or(reason)?;

        let len = ether::pad_to_min(buf, new_start, l2_len + ip_len);
        self.counters.count_drop(reason);
        self.counters.icmp_sent += 1;
        Ok(Verdict::Tx {
            port: rx.ingress,
            start: new_start,
            len,
            slot: None,
        })
    }
}

/// RFC 1122 §3.2.2 and RFC 1812 §4.3.2.7: no ICMP error about an ICMP error, a non-first
/// fragment, a link-layer broadcast, an IP broadcast or multicast, or a datagram whose
/// source does not name a single host.
fn may_send_error(buf: &[u8], ip_off: usize, l2: &L2, ip: &Ipv4) -> bool {
    if ether::is_group(&l2.dst)
        || ipv4::is_broadcast(ip.dst)
        || ipv4::is_multicast(ip.dst)
        || !ipv4::is_unicast_host(ip.src)
        || !ip.is_first_fragment()
    {
        return false;
    }
    if ip.protocol == ipv4::PROTO_ICMP {
        // An ICMP datagram without even a type byte cannot be shown not to be an error.
        let icmp_type = if ip.payload_len() == 0 {
            None
        } else {
            ip_off
                .checked_add(ip.header_len)
                .and_then(|off| buf.get(off))
                .copied()
        };
        return matches!(
            icmp_type,
            Some(t) if !matches!(
                t,
                TYPE_DEST_UNREACHABLE
                    | TYPE_SOURCE_QUENCH
                    | TYPE_REDIRECT
                    | TYPE_TIME_EXCEEDED
                    | TYPE_PARAMETER_PROBLEM
            )
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;

    /// Time Exceeded, literal bytes.
    ///
    /// Input: the canonical datagram of `encap::tests` (UDP "ping" 192.0.2.1 -> 192.0.2.10)
    /// with TTL 1: header checksum 4500+0020+1c46+4000+0111+c000+0201+c000+020a
    /// = 0x2_2682 -> 0x2684 -> ~ = 0xd97b.
    /// ICMP: 0b00 cksum 0000 0000, then the quote (20 + 8 bytes). The quoted header sums to
    /// 0x2_2682 + 0xd97b = 0x2_fffd; the 8 data bytes 04d2+162e+000c+0000 = 0x1b0c;
    /// with 0b00: 0x2_fffd + 0x1b0c + 0x0b00 = 0x3_2609 -> 0x260c -> ~ = 0xd9f3.
    /// IPv4: tos c0, total 20+8+28 = 56 = 0x38, id 0x0100, no DF, TTL 64, proto 1,
    /// 203.0.113.1 -> 192.0.2.1: 45c0+0038+0100+0000+4001+cb00+7101+c000+0201
    /// = 0x2_84fb -> 0x84fd -> ~ = 0x7b02.
    /// Ethernet: back to 02:00:00:00:00:33 from lan_mac; 14 + 56 = 70 bytes.
    #[test]
    fn time_exceeded_literal_bytes() {
        let input = hex(concat!(
            "020000000001 020000000033 0800",
            "4500 0020 1c46 4000 0111 d97b c0000201 c000020a",
            "04d2 162e 000c 0000 70696e67",
            "0000000000000000000000000000",
        ));
        let expected = hex(concat!(
            "020000000033 020000000001 0800",
            "45c0 0038 0100 0000 4001 7b02 cb007101 c0000201",
            "0b00 d9f3 00000000",
            "4500 0020 1c46 4000 0111 d97b c0000201 c000020a",
            "04d2 162e 000c 0000",
        ));
        let mut p = pipeline(0x0100);
        let (mut buf, start) = place(&input);
        let v = p.process(&mut buf, start, input.len(), Port::Lan, 0, &lookup());
        let (port, s, len, slot) = expect_tx(v);
        assert_eq!((port, slot), (Port::Lan, None));
        assert_eq!(s, start - 28);
        assert_eq!(
            &buf[s..s + len],
            &expected[..],
            "\n{}",
            diff(&buf[s..s + len], &expected)
        );
        assert_eq!(s + 14 + 28, start + 14, "the quoted header did not move");
        check_icmp_error(&buf[s..s + len], &input, 11, 0, [0; 4]);
        let c = p.counters();
        assert_eq!(c.drop_count(DropReason::TtlExceeded), 1);
        assert_eq!(
            (c.icmp_sent, c.icmp_rate_limited, c.encapsulated),
            (1, 0, 0)
        );
    }

    struct Case {
        name: &'static str,
        ingress: Port,
        input: Vec<u8>,
        mtu: u16,
        /// ICMP (type, code, rest-of-header) expected, or none.
        icmp: Option<(u8, u8, [u8; 4])>,
        reason: DropReason,
    }

    fn cases() -> Vec<Case> {
        use DropReason::*;
        let te = Some((11, 0, [0; 4]));
        let big = || Ip::udp(LAN_HOST, VM, &[0x5a; 1000]);
        let icmp = |t: u8| Ip::icmp(REMOTE, VM, t, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        vec![
            Case {
                name: "ttl 1 from the lan",
                ingress: Port::Lan,
                input: Ip::udp(LAN_HOST, VM, b"x").ttl(1).frame(),
                mtu: 1500,
                icmp: te,
                reason: TtlExceeded,
            },
            Case {
                name: "ttl 0 from the wan, to the wan mac",
                ingress: Port::Wan,
                input: Ip::udp(REMOTE, VM, b"abcdefghijkl").ttl(0).frame(),
                mtu: 1500,
                icmp: te,
                reason: TtlExceeded,
            },
            Case {
                name: "vlan tag kept on the error",
                ingress: Port::Lan,
                input: Ip::udp(LAN_HOST, VM, b"abcdefghijkl")
                    .ttl(1)
                    .vlan(0xe00a)
                    .frame(),
                mtu: 1500,
                icmp: te,
                reason: TtlExceeded,
            },
            Case {
                name: "options quoted whole, fewer than 8 data bytes",
                ingress: Port::Lan,
                input: Ip::raw(LAN_HOST, VM, 253, b"abc")
                    .options(&[0x01; 8])
                    .ttl(1)
                    .frame(),
                mtu: 1500,
                icmp: te,
                reason: TtlExceeded,
            },
            Case {
                name: "too big with DF: frag needed, mtu 1000 - 20",
                ingress: Port::Lan,
                input: big().frame(),
                mtu: 1000,
                icmp: Some((3, 4, [0, 0, 0x03, 0xd4])),
                reason: FragNeeded,
            },
            Case {
                name: "too big with DF, tagged, from the wan",
                ingress: Port::Wan,
                input: big().vlan(7).frame(),
                mtu: 576,
                icmp: Some((3, 4, [0, 0, 0x02, 0x2c])),
                reason: FragNeeded,
            },
            Case {
                name: "ttl checked before size",
                ingress: Port::Lan,
                input: big().ttl(1).frame(),
                mtu: 576,
                icmp: te,
                reason: TtlExceeded,
            },
            Case {
                name: "echo request is not an error: answered",
                ingress: Port::Wan,
                input: icmp(8).ttl(1).frame(),
                mtu: 1500,
                icmp: te,
                reason: TtlExceeded,
            },
            Case {
                name: "not about dest unreachable",
                ingress: Port::Wan,
                input: icmp(3).ttl(1).frame(),
                mtu: 1500,
                icmp: None,
                reason: TtlExceeded,
            },
            Case {
                name: "not about source quench",
                ingress: Port::Wan,
                input: icmp(4).ttl(1).frame(),
                mtu: 1500,
                icmp: None,
                reason: TtlExceeded,
            },
            Case {
                name: "not about redirect",
                ingress: Port::Wan,
                input: icmp(5).ttl(1).frame(),
                mtu: 1500,
                icmp: None,
                reason: TtlExceeded,
            },
            Case {
                name: "not about time exceeded",
                ingress: Port::Wan,
                input: icmp(11).ttl(1).frame(),
                mtu: 1500,
                icmp: None,
                reason: TtlExceeded,
            },
            Case {
                name: "not about parameter problem",
                ingress: Port::Wan,
                input: icmp(12).ttl(1).frame(),
                mtu: 1500,
                icmp: None,
                reason: TtlExceeded,
            },
            Case {
                name: "not about an empty icmp datagram",
                ingress: Port::Wan,
                input: Ip::raw(REMOTE, VM, 1, b"").ttl(1).frame(),
                mtu: 1500,
                icmp: None,
                reason: TtlExceeded,
            },
            Case {
                name: "not about a big icmp error either",
                ingress: Port::Wan,
                input: Ip::icmp(REMOTE, VM, 3, 1, &[0; 1200]).frame(),
                mtu: 1000,
                icmp: None,
                reason: FragNeeded,
            },
            Case {
                name: "not about a non-first fragment",
                ingress: Port::Lan,
                input: Ip::udp(LAN_HOST, VM, b"abcdefgh")
                    .frag(false, 1)
                    .ttl(1)
                    .frame(),
                mtu: 1500,
                icmp: None,
                reason: TtlExceeded,
            },
            Case {
                name: "first fragment is answered",
                ingress: Port::Lan,
                input: Ip::udp(LAN_HOST, VM, b"abcdefgh")
                    .df(false)
                    .frag(true, 0)
                    .ttl(1)
                    .frame(),
                mtu: 1500,
                icmp: te,
                reason: TtlExceeded,
            },
            Case {
                name: "not to 0.0.0.0",
                ingress: Port::Lan,
                input: Ip::udp([0, 0, 0, 0], VM, b"x").ttl(1).frame(),
                mtu: 1500,
                icmp: None,
                reason: TtlExceeded,
            },
            Case {
                name: "not to a broadcast source",
                ingress: Port::Lan,
                input: Ip::udp([255, 255, 255, 255], VM, b"x").ttl(1).frame(),
                mtu: 1500,
                icmp: None,
                reason: TtlExceeded,
            },
            Case {
                name: "not to a multicast source",
                ingress: Port::Lan,
                input: Ip::udp([224, 1, 2, 3], VM, b"x").ttl(1).frame(),
                mtu: 1500,
                icmp: None,
                reason: TtlExceeded,
            },
            Case {
                name: "not to a loopback source",
                ingress: Port::Lan,
                input: Ip::udp([127, 0, 0, 1], VM, b"x").ttl(1).frame(),
                mtu: 1500,
                icmp: None,
                reason: TtlExceeded,
            },
        ]
    }

    #[test]
    fn icmp_error_fixtures() {
        for c in cases() {
            let mut cfg = config();
            cfg.tunnel_mtu = c.mtu;
            let mut p = Pipeline::new(cfg, 0x0100);
            let (mut buf, start) = place(&c.input);
            let v = p.process(&mut buf, start, c.input.len(), c.ingress, 0, &lookup());
            let counters = p.counters();
            assert_eq!(counters.drop_count(c.reason), 1, "{}", c.name);
            assert_eq!(counters.encapsulated, 0, "{}", c.name);
            match c.icmp {
                Some((ty, code, rest)) => {
                    let (port, s, len, slot) = expect_tx_named(v, c.name);
                    assert_eq!((port, slot), (c.ingress, None), "{}", c.name);
                    let out = &buf[s..s + len];
                    let expected = expected_icmp_error(&p, c.ingress, &c.input, ty, code, rest);
                    assert_eq!(out, &expected[..], "{}\n{}", c.name, diff(out, &expected));
                    check_icmp_error(out, &c.input, ty, code, rest);
                    assert_eq!(counters.icmp_sent, 1, "{}", c.name);
                }
                None => {
                    assert_eq!(v, Verdict::Drop(c.reason), "{}", c.name);
                    assert_eq!((counters.icmp_sent, counters.icmp_rate_limited), (0, 0));
                }
            }
        }
    }

    #[test]
    fn rate_limited_by_the_token_bucket() {
        let mut cfg = config();
        cfg.icmp_rate_per_sec = 10;
        cfg.icmp_burst = 2;
        let mut p = Pipeline::new(cfg, 1);
        let input = Ip::udp(LAN_HOST, VM, b"x").ttl(1).frame();
        let send = |p: &mut Pipeline, now_ns: u64| {
            let (mut buf, start) = place(&input);
            p.process(&mut buf, start, input.len(), Port::Lan, now_ns, &lookup())
        };
        let t0 = 1_000_000_000;
        assert!(matches!(send(&mut p, t0), Verdict::Tx { .. }));
        assert!(matches!(send(&mut p, t0), Verdict::Tx { .. }));
        assert_eq!(send(&mut p, t0), Verdict::Drop(DropReason::TtlExceeded));
        assert_eq!(
            send(&mut p, t0 + 99_000_000),
            Verdict::Drop(DropReason::TtlExceeded)
        );
        assert!(matches!(send(&mut p, t0 + 100_000_000), Verdict::Tx { .. }));
        let c = p.counters();
        assert_eq!(c.drop_count(DropReason::TtlExceeded), 5);
        assert_eq!((c.icmp_sent, c.icmp_rate_limited), (3, 2));
    }

    #[test]
    fn suppressed_errors_do_not_use_tokens() {
        let mut cfg = config();
        cfg.icmp_rate_per_sec = 0;
        cfg.icmp_burst = 1;
        let mut p = Pipeline::new(cfg, 1);
        let error = Ip::icmp(REMOTE, VM, 11, 0, &[0; 8]).ttl(1).frame();
        let (mut buf, start) = place(&error);
        assert_eq!(
            p.process(&mut buf, start, error.len(), Port::Wan, 0, &lookup()),
            Verdict::Drop(DropReason::TtlExceeded)
        );
        let input = Ip::udp(REMOTE, VM, b"x").ttl(1).frame();
        let (mut buf, start) = place(&input);
        assert!(matches!(
            p.process(&mut buf, start, input.len(), Port::Wan, 0, &lookup()),
            Verdict::Tx { .. }
        ));
        assert_eq!(p.counters().icmp_rate_limited, 0);
    }
}
