//! Test doubles and helpers for the pipeline's fixture tests.
//!
//! Inputs are built, and expected outputs constructed and checked, with etherparse: a
//! decoder/encoder that is not ours, so a shared misunderstanding cannot make both sides agree.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, ArpPacketSlice, EtherType, Ethernet2Header,
    Icmpv4Header, Icmpv4Slice, Icmpv4Type, IpDscp, IpEcn, IpFragOffset, IpNumber, Ipv4Header,
    Ipv4HeaderSlice, Ipv4Options,
};

use super::{BindingRef, Lookup, NextHop, Pipeline, PipelineConfig, Port, Verdict};

pub const HA: [u8; 4] = [203, 0, 113, 1];
pub const LAN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x01];
pub const WAN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x02];
/// Router toward the care-of addresses on the WAN.
pub const NEXT_HOP_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
/// Next hop of a care-of address reachable through the LAN side.
pub const LAN_NEXT_HOP_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfd];

/// A VM away at CARE_OF, reachable through NEXT_HOP_MAC on the WAN.
pub const VM: [u8; 4] = [192, 0, 2, 10];
pub const CARE_OF: [u8; 4] = [198, 51, 100, 20];
pub const VM_SLOT: u32 = 7;
/// A VM whose care-of address is reached through the LAN port.
pub const VM2: [u8; 4] = [192, 0, 2, 11];
pub const CARE_OF2: [u8; 4] = [192, 0, 2, 200];
/// A VM whose care-of address has no resolved next hop.
pub const VM3: [u8; 4] = [192, 0, 2, 12];
pub const CARE_OF3: [u8; 4] = [198, 51, 100, 30];

/// A host on the home link (with a neighbour entry).
pub const LAN_HOST: [u8; 4] = [192, 0, 2, 1];
pub const LAN_HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x33];
/// A host somewhere on the Internet.
pub const REMOTE: [u8; 4] = [198, 51, 100, 99];

/// Filler of the headroom, to see that nothing is written in front of an output frame.
pub const CANARY: u8 = 0xee;
/// Headroom `place` leaves in front of a frame, as the worker does.
pub const HEADROOM: usize = 256;

/// Test double of the worker's tables.
#[derive(Clone, Debug, Default)]
pub struct TestLookup {
    pub bindings: Vec<(Ipv4Addr, BindingRef)>,
    pub next_hops: Vec<(Ipv4Addr, NextHop)>,
    pub neighbors: Vec<(Ipv4Addr, [u8; 6])>,
    /// Addresses the pipeline asked to have resolved ahead of need.
    pub warmed: std::cell::RefCell<Vec<Ipv4Addr>>,
    /// Addresses the pipeline looked a binding up by, in order.
    pub asked: std::cell::RefCell<Vec<Ipv4Addr>>,
}

impl Lookup for TestLookup {
    fn binding(&self, vm: Ipv4Addr) -> Option<BindingRef> {
        self.asked.borrow_mut().push(vm);
        self.bindings
            .iter()
            .find(|(a, _)| *a == vm)
            .map(|(_, b)| *b)
    }
    fn next_hop(&self, care_of: Ipv4Addr) -> NextHop {
        self.next_hops
            .iter()
            .find(|(a, _)| *a == care_of)
            .map_or(NextHop::Unresolved, |(_, n)| *n)
    }
    fn lan_neighbor(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        self.neighbors
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, m)| *m)
    }
    fn warm_lan_neighbor(&self, addr: Ipv4Addr) {
        self.warmed.borrow_mut().push(addr);
    }
}

pub fn lookup() -> TestLookup {
    let b = |care_of: [u8; 4], slot| BindingRef {
        care_of: care_of.into(),
        slot,
    };
    TestLookup {
        bindings: vec![
            (VM.into(), b(CARE_OF, VM_SLOT)),
            (VM2.into(), b(CARE_OF2, 8)),
            (VM3.into(), b(CARE_OF3, 9)),
        ],
        next_hops: vec![
            (
                CARE_OF.into(),
                NextHop::Resolved {
                    port: Port::Wan,
                    mac: NEXT_HOP_MAC,
                },
            ),
            (
                CARE_OF2.into(),
                NextHop::Resolved {
                    port: Port::Lan,
                    mac: LAN_NEXT_HOP_MAC,
                },
            ),
        ],
        neighbors: vec![(LAN_HOST.into(), LAN_HOST_MAC)],
        ..TestLookup::default()
    }
}

pub fn config() -> PipelineConfig {
    PipelineConfig::new(HA.into(), LAN_MAC, WAN_MAC)
}

pub fn pipeline(ident_seed: u16) -> Pipeline {
    Pipeline::new(config(), ident_seed)
}

/// Bytes from hex, whitespace ignored.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// Both byte strings in hex, 16 per line, for assertion messages.
pub fn diff(got: &[u8], want: &[u8]) -> String {
    let mut s = String::new();
    for (name, b) in [("got ", got), ("want", want)] {
        let _ = writeln!(s, "{name} ({} bytes):", b.len());
        for line in b.chunks(16) {
            let _ = writeln!(
                s,
                "  {}",
                line.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    s
}

/// A UMEM-like buffer: HEADROOM canary bytes, the frame, then filler to 4096.
pub fn place(frame: &[u8]) -> (Vec<u8>, usize) {
    let mut buf = vec![CANARY; HEADROOM];
    buf.extend_from_slice(frame);
    buf.resize(4096.max(HEADROOM + frame.len() + 64), 0xdd);
    (buf, HEADROOM)
}

fn pad60(mut v: Vec<u8>) -> Vec<u8> {
    if v.len() < 60 {
        v.resize(60, 0);
    }
    v
}

fn tci(pcp_dei_vid: u16) -> [u8; 4] {
    let [a, b] = pcp_dei_vid.to_be_bytes();
    [0x81, 0x00, a, b]
}

/// Link header of a frame: (dst, src, tci, length).
pub fn link(frame: &[u8]) -> ([u8; 6], [u8; 6], Option<u16>, usize) {
    let (eth, _) = Ethernet2Header::from_slice(frame).unwrap();
    if eth.ether_type == EtherType::VLAN_TAGGED_FRAME {
        let t = u16::from_be_bytes([frame[14], frame[15]]);
        (eth.destination, eth.source, Some(t), 18)
    } else {
        (eth.destination, eth.source, None, 14)
    }
}

/// The IPv4 datagram in a frame, without link header or padding.
pub fn inner_datagram(frame: &[u8]) -> &[u8] {
    trim_datagram(&frame[link(frame).3..])
}

/// The datagram at the start of `bytes`, cut at its total length.
pub fn trim_datagram(bytes: &[u8]) -> &[u8] {
    let h = Ipv4HeaderSlice::from_slice(bytes).unwrap();
    &bytes[..usize::from(h.total_len())]
}

pub fn dst_of(datagram: &[u8]) -> Ipv4Addr {
    Ipv4HeaderSlice::from_slice(datagram)
        .unwrap()
        .destination_addr()
}

/// An IPv4 frame to build, with etherparse.
#[derive(Clone, Debug)]
pub struct Ip {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    payload: Vec<u8>,
    tos: u8,
    ttl: u8,
    df: bool,
    mf: bool,
    offset: u16,
    ident: u16,
    options: Vec<u8>,
    vlan: Option<u16>,
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
}

impl Ip {
    pub fn raw(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Ip {
        Ip {
            src,
            dst,
            proto,
            payload: payload.to_vec(),
            tos: 0,
            ttl: 64,
            df: true,
            mf: false,
            offset: 0,
            ident: 0x1c46,
            options: Vec::new(),
            vlan: None,
            eth_dst: LAN_MAC,
            eth_src: LAN_HOST_MAC,
        }
    }

    /// UDP 1234 -> 5678 (checksum 0: none, valid over IPv4).
    pub fn udp(src: [u8; 4], dst: [u8; 4], data: &[u8]) -> Ip {
        let h = etherparse::UdpHeader {
            source_port: 1234,
            destination_port: 5678,
            length: u16::try_from(8 + data.len()).unwrap(),
            checksum: 0,
        };
        let mut p = h.to_bytes().to_vec();
        p.extend_from_slice(data);
        Ip::raw(src, dst, 17, &p)
    }

    /// ICMP of any type: type, code, checksum, then `rest` (header word 2 and data).
    pub fn icmp(src: [u8; 4], dst: [u8; 4], ty: u8, code: u8, rest: &[u8]) -> Ip {
        let mut p = vec![ty, code, 0, 0];
        p.extend_from_slice(rest);
        let c = etherparse::checksum::Sum16BitWords::new()
            .add_slice(&p)
            .ones_complement();
        p[2..4].copy_from_slice(&c.to_be_bytes());
        Ip::raw(src, dst, 1, &p)
    }

    /// TCP 40000 -> 80, the flags byte `flags` (0x02 SYN, 0x12 SYN-ACK), raw `options` (a
    /// multiple of 4, at most 40: malformed lists allowed), `data`; checksum computed by
    /// etherparse.
    pub fn tcp(src: [u8; 4], dst: [u8; 4], flags: u8, options: &[u8], data: &[u8]) -> Ip {
        let mut h = etherparse::TcpHeader::new(40000, 80, 0x0102_0304, 64240);
        h.fin = flags & 0x01 != 0;
        h.syn = flags & 0x02 != 0;
        h.rst = flags & 0x04 != 0;
        h.psh = flags & 0x08 != 0;
        h.ack = flags & 0x10 != 0;
        h.acknowledgment_number = if h.ack { 0x0a0b_0c0d } else { 0 };
        h.set_options_raw(options).unwrap();
        h.checksum = h.calc_checksum_ipv4_raw(src, dst, data).unwrap();
        let mut p = h.to_bytes().to_vec();
        p.extend_from_slice(data);
        Ip::raw(src, dst, 6, &p)
    }

    pub fn ipip(src: [u8; 4], dst: [u8; 4], inner: Ip) -> Ip {
        let mut ip = Ip::raw(src, dst, 4, &inner.datagram());
        ip.ident = 0x0abc;
        ip
    }

    pub fn ttl(mut self, ttl: u8) -> Ip {
        self.ttl = ttl;
        self
    }
    pub fn tos(mut self, tos: u8) -> Ip {
        self.tos = tos;
        self
    }
    pub fn df(mut self, df: bool) -> Ip {
        self.df = df;
        self
    }
    pub fn frag(mut self, mf: bool, offset: u16) -> Ip {
        self.mf = mf;
        self.offset = offset;
        self
    }
    pub fn options(mut self, options: &[u8]) -> Ip {
        self.options = options.to_vec();
        self
    }
    pub fn vlan(mut self, tci: u16) -> Ip {
        self.vlan = Some(tci);
        self
    }
    pub fn eth_dst(mut self, mac: [u8; 6]) -> Ip {
        self.eth_dst = mac;
        self
    }

    pub fn datagram(&self) -> Vec<u8> {
        let mut h = Ipv4Header::new(0, self.ttl, IpNumber(self.proto), self.src, self.dst).unwrap();
        h.dscp = IpDscp::try_new(self.tos >> 2).unwrap();
        h.ecn = IpEcn::try_new(self.tos & 3).unwrap();
        h.identification = self.ident;
        h.dont_fragment = self.df;
        h.more_fragments = self.mf;
        h.fragment_offset = IpFragOffset::try_new(self.offset).unwrap();
        h.options = Ipv4Options::try_from(&self.options[..]).unwrap();
        h.set_payload_len(self.payload.len()).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(&self.payload);
        v
    }

    /// Ethernet (+ tag) + datagram, padded to 60 bytes.
    pub fn frame(&self) -> Vec<u8> {
        let mut f = eth_bytes(self.eth_dst, self.eth_src, self.vlan, EtherType::IPV4);
        f.extend_from_slice(&self.datagram());
        pad60(f)
    }
}

fn eth_bytes(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, ty: EtherType) -> Vec<u8> {
    match vlan {
        None => Ethernet2Header {
            source: src,
            destination: dst,
            ether_type: ty,
        }
        .to_bytes()
        .to_vec(),
        Some(t) => {
            let mut f = Ethernet2Header {
                source: src,
                destination: dst,
                ether_type: EtherType::VLAN_TAGGED_FRAME,
            }
            .to_bytes()
            .to_vec();
            f.extend_from_slice(&tci(t)[2..]);
            f.extend_from_slice(&ty.0.to_be_bytes());
            f
        }
    }
}

/// An ARP frame to build.
#[derive(Clone, Debug)]
pub struct ArpFrame {
    sha: [u8; 6],
    spa: [u8; 4],
    tpa: [u8; 4],
    op: u16,
    vlan: Option<u16>,
    eth_dst: [u8; 6],
    patches: Vec<(usize, Vec<u8>)>,
    padded: bool,
}

impl ArpFrame {
    pub fn request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> ArpFrame {
        ArpFrame {
            sha,
            spa,
            tpa,
            op: 1,
            vlan: None,
            eth_dst: [0xff; 6],
            patches: Vec::new(),
            padded: true,
        }
    }
    pub fn op(mut self, op: u16) -> ArpFrame {
        self.op = op;
        self
    }
    pub fn vlan(mut self, tci: u16) -> ArpFrame {
        self.vlan = Some(tci);
        self
    }
    pub fn eth_dst(mut self, mac: [u8; 6]) -> ArpFrame {
        self.eth_dst = mac;
        self
    }
    /// Overwrites bytes of the ARP packet at `at`.
    pub fn patch(mut self, at: usize, bytes: &[u8]) -> ArpFrame {
        self.patches.push((at, bytes.to_vec()));
        self
    }
    pub fn unpadded(mut self) -> ArpFrame {
        self.padded = false;
        self
    }
    pub fn frame(&self) -> Vec<u8> {
        let a = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation(self.op),
            &self.sha,
            &self.spa,
            &[0; 6],
            &self.tpa,
        )
        .unwrap();
        let mut body = a.to_bytes().to_vec();
        for (at, b) in &self.patches {
            body[*at..*at + b.len()].copy_from_slice(b);
        }
        let mut f = eth_bytes(self.eth_dst, self.sha, self.vlan, EtherType::ARP);
        f.extend_from_slice(&body);
        if self.padded {
            // Garbage padding: the reply must not echo it.
            f.resize(60, 0xa5);
        }
        f
    }
}

/// `datagram` with TTL - 1 and the checksum recomputed by etherparse.
fn ttl_decremented(datagram: &[u8]) -> Vec<u8> {
    let (mut h, payload) = Ipv4Header::from_slice(datagram).unwrap();
    h.time_to_live -= 1;
    h.header_checksum = h.calc_header_checksum();
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(&payload[..usize::from(h.total_len) - h.header_len()]);
    v
}

fn port_mac(port: Port) -> [u8; 6] {
    match port {
        Port::Lan => LAN_MAC,
        Port::Wan => WAN_MAC,
    }
}

fn outer_header(p: &Pipeline, care_of: Ipv4Addr, inner: &[u8], ident: u16) -> Ipv4Header {
    let ih = Ipv4HeaderSlice::from_slice(inner).unwrap();
    let mut h = Ipv4Header::new(
        u16::try_from(inner.len()).unwrap(),
        p.config().outer_ttl,
        IpNumber::IPV4,
        p.config().ha_addr.octets(),
        care_of.octets(),
    )
    .unwrap();
    h.dscp = ih.dcp();
    h.ecn = ih.ecn();
    h.identification = ident;
    h.dont_fragment = ih.dont_fragment();
    h.header_checksum = h.calc_header_checksum();
    h
}

/// The frame encapsulation should produce for `inner` (as received) toward `care_of`.
pub fn expected_encap(
    p: &Pipeline,
    port: Port,
    care_of: Ipv4Addr,
    inner: &[u8],
    ident: u16,
) -> Vec<u8> {
    let NextHop::Resolved { mac, .. } = lookup().next_hop(care_of) else {
        panic!("no next hop")
    };
    let mut f = eth_bytes(mac, port_mac(port), None, EtherType::IPV4);
    f.extend_from_slice(&outer_header(p, care_of, inner, ident).to_bytes());
    f.extend_from_slice(&ttl_decremented(inner));
    pad60(f)
}

/// Field-by-field check of an encapsulated frame with etherparse.
pub fn check_encapsulated(out: &[u8], inner: &[u8], ident: u16) {
    let (eth, rest) = Ethernet2Header::from_slice(out).unwrap();
    assert_eq!(
        eth.ether_type,
        EtherType::IPV4,
        "no 802.1Q tag into the tunnel"
    );
    assert!(eth.source == LAN_MAC || eth.source == WAN_MAC);
    let outer = Ipv4HeaderSlice::from_slice(rest).unwrap();
    let ih = Ipv4HeaderSlice::from_slice(inner).unwrap();
    assert_eq!((outer.version(), outer.ihl()), (4, 5));
    assert_eq!(usize::from(outer.total_len()), 20 + inner.len());
    assert_eq!(outer.identification(), ident);
    assert_eq!(outer.dont_fragment(), ih.dont_fragment(), "DF copied");
    assert!(!outer.more_fragments());
    assert_eq!(outer.fragments_offset().value(), 0);
    assert_eq!(
        (outer.dcp(), outer.ecn()),
        (ih.dcp(), ih.ecn()),
        "TOS copied"
    );
    assert_eq!(outer.ttl(), 64);
    assert_eq!(outer.protocol(), IpNumber::IPV4);
    assert_eq!(outer.source(), HA);
    assert_eq!(
        outer.to_header().calc_header_checksum(),
        outer.header_checksum()
    );
    let sent = &rest[20..20 + inner.len()];
    let sh = Ipv4HeaderSlice::from_slice(sent).unwrap();
    assert_eq!(sh.ttl(), ih.ttl() - 1);
    assert_eq!(sh.to_header().calc_header_checksum(), sh.header_checksum());
    for (i, (a, b)) in sent.iter().zip(inner).enumerate() {
        if i != 8 && i != 10 && i != 11 {
            assert_eq!(a, b, "inner byte {i} changed");
        }
    }
}

/// The ICMP error for the frame `input`, with the pipeline's first Identification (0x0100).
pub fn expected_icmp_error(
    p: &Pipeline,
    ingress: Port,
    input: &[u8],
    ty: u8,
    code: u8,
    rest: [u8; 4],
) -> Vec<u8> {
    let (_, src_mac, vlan, _) = link(input);
    let d = inner_datagram(input);
    let ih = Ipv4HeaderSlice::from_slice(d).unwrap();
    let ihl = usize::from(ih.ihl()) * 4;
    let quote = &d[..ihl + (d.len() - ihl).min(8)];
    let icmp_type = match (ty, code) {
        (11, 0) => {
            Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit)
        }
        (3, 4) => Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: u16::from_be_bytes([rest[2], rest[3]]),
            },
        ),
        _ => panic!("unexpected icmp {ty}/{code}"),
    };
    let icmp = Icmpv4Header::with_checksum(icmp_type, quote);
    let mut ip = Ipv4Header::new(
        u16::try_from(icmp.header_len() + quote.len()).unwrap(),
        64,
        IpNumber::ICMP,
        p.config().ha_addr.octets(),
        ih.source(),
    )
    .unwrap();
    ip.dscp = IpDscp::try_new(0xc0 >> 2).unwrap();
    ip.dont_fragment = false;
    ip.identification = 0x0100;
    ip.header_checksum = ip.calc_header_checksum();
    let mut f = eth_bytes(src_mac, port_mac(ingress), vlan, EtherType::IPV4);
    f.extend_from_slice(&ip.to_bytes());
    f.extend_from_slice(&icmp.to_bytes());
    f.extend_from_slice(quote);
    pad60(f)
}

/// Field-by-field check of an ICMP error with etherparse.
pub fn check_icmp_error(out: &[u8], input: &[u8], ty: u8, code: u8, rest: [u8; 4]) {
    let (dst, src, vlan, l2) = link(out);
    let (_, in_src, in_vlan, _) = link(input);
    assert_eq!(dst, in_src, "back to the previous hop");
    assert!(src == LAN_MAC || src == WAN_MAC);
    assert_eq!(vlan, in_vlan, "tag kept");
    let d = inner_datagram(input);
    let ih = Ipv4HeaderSlice::from_slice(d).unwrap();
    let ip = Ipv4HeaderSlice::from_slice(&out[l2..]).unwrap();
    assert_eq!(ip.to_header().calc_header_checksum(), ip.header_checksum());
    assert_eq!((ip.source(), ip.destination()), (HA, ih.source()));
    assert_eq!((ip.ttl(), ip.protocol()), (64, IpNumber::ICMP));
    let icmp_bytes = &out[l2 + 20..l2 + usize::from(ip.total_len())];
    let icmp = Icmpv4Slice::from_slice(icmp_bytes).unwrap();
    assert_eq!(
        (icmp.type_u8(), icmp.code_u8(), icmp.bytes5to8()),
        (ty, code, rest)
    );
    let recomputed = Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload());
    assert_eq!(recomputed.checksum, icmp.checksum(), "icmp checksum");
    let ihl = usize::from(ih.ihl()) * 4;
    assert_eq!(
        icmp.payload(),
        &d[..ihl + (d.len() - ihl).min(8)],
        "quote: header + 8 bytes"
    );
}

/// The frame decapsulation should produce for `inner` delivered to `mac`.
pub fn expected_decap(inner: &[u8], mac: [u8; 6]) -> Vec<u8> {
    let mut f = eth_bytes(mac, LAN_MAC, None, EtherType::IPV4);
    f.extend_from_slice(&ttl_decremented(inner));
    pad60(f)
}

/// Field-by-field check of a decapsulated frame with etherparse.
pub fn check_decapsulated(out: &[u8], inner: &[u8], mac: [u8; 6]) {
    let (eth, rest) = Ethernet2Header::from_slice(out).unwrap();
    assert_eq!(
        (eth.destination, eth.source, eth.ether_type),
        (mac, LAN_MAC, EtherType::IPV4)
    );
    let h = Ipv4HeaderSlice::from_slice(rest).unwrap();
    let ih = Ipv4HeaderSlice::from_slice(inner).unwrap();
    assert_eq!(h.ttl(), ih.ttl() - 1);
    assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
    assert_eq!(&rest[..8], &inner[..8]);
    assert_eq!(&rest[12..inner.len()], &inner[12..]);
}

/// The proxy ARP reply to the request frame `input`.
pub fn expected_arp_reply(input: &[u8]) -> Vec<u8> {
    let (_, _, vlan, l2) = link(input);
    let req = ArpPacketSlice::from_slice(&input[l2..]).unwrap();
    let a = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REPLY,
        &LAN_MAC,
        req.target_protocol_addr(),
        req.sender_hw_addr(),
        req.sender_protocol_addr(),
    )
    .unwrap();
    let sha: [u8; 6] = req.sender_hw_addr().try_into().unwrap();
    let mut f = eth_bytes(sha, LAN_MAC, vlan, EtherType::ARP);
    f.extend_from_slice(&a.to_bytes());
    pad60(f)
}

/// Field-by-field check of a proxy ARP reply with etherparse.
pub fn check_arp_reply(out: &[u8], input: &[u8]) {
    let (dst, src, vlan, l2) = link(out);
    let (_, _, in_vlan, in_l2) = link(input);
    let req = ArpPacketSlice::from_slice(&input[in_l2..]).unwrap();
    let rep = ArpPacketSlice::from_slice(&out[l2..]).unwrap();
    assert_eq!(vlan, in_vlan);
    assert_eq!((&dst[..], src), (req.sender_hw_addr(), LAN_MAC));
    assert_eq!(rep.operation(), ArpOperation::REPLY);
    assert_eq!(
        (rep.hw_addr_type(), rep.proto_addr_type()),
        (ArpHardwareId::ETHERNET, EtherType::IPV4)
    );
    assert_eq!(rep.sender_hw_addr(), &LAN_MAC[..]);
    assert_eq!(rep.sender_protocol_addr(), req.target_protocol_addr());
    assert_eq!(rep.target_hw_addr(), req.sender_hw_addr());
    assert_eq!(rep.target_protocol_addr(), req.sender_protocol_addr());
    assert!(out[l2 + 28..].iter().all(|&b| b == 0), "padding zeroed");
}

/// Options of a header that carry the copied flag, padded with zeros to 4 bytes: written
/// independently of `fragment::for_each_copied_option`.
fn copied_options(options: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = options;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        if kind == 1 {
            rest = tail;
            continue;
        }
        let len = usize::from(tail[0]);
        if kind & 0x80 != 0 {
            out.extend_from_slice(&rest[..len]);
        }
        rest = &rest[len..];
    }
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// The pieces fragmentation should produce for `original` (as received), with outer
/// Identifications counting up from `ident`.
pub fn expected_fragments(p: &Pipeline, original: &[u8], mtu: u16, ident: u16) -> Vec<Vec<u8>> {
    let (mut h, _) = Ipv4Header::from_slice(original).unwrap();
    h.time_to_live -= 1;
    let data = &original[h.header_len()..];
    let mtu = usize::from(mtu);
    let all = h.options.clone();
    let later = Ipv4Options::try_from(&copied_options(all.as_slice())[..]).unwrap();
    let mut pieces = Vec::new();
    let mut off = 0;
    while off < data.len() {
        let first = off == 0;
        let mut ph = h.clone();
        ph.options = if first { all.clone() } else { later.clone() };
        let max = (mtu - 20 - ph.header_len()) / 8 * 8;
        let n = max.min(data.len() - off);
        let last = off + n == data.len();
        ph.fragment_offset =
            IpFragOffset::try_new(h.fragment_offset.value() + (off / 8) as u16).unwrap();
        ph.more_fragments = !last || h.more_fragments;
        ph.set_payload_len(n).unwrap();
        ph.header_checksum = ph.calc_header_checksum();
        let mut inner = ph.to_bytes().to_vec();
        inner.extend_from_slice(&data[off..off + n]);
        let i = u16::try_from(pieces.len()).unwrap();
        let outer = outer_header(p, CARE_OF.into(), &inner, ident.wrapping_add(i));
        let mut f = eth_bytes(NEXT_HOP_MAC, WAN_MAC, None, EtherType::IPV4);
        f.extend_from_slice(&outer.to_bytes());
        f.extend_from_slice(&inner);
        pieces.push(pad60(f));
        off += n;
    }
    pieces
}

/// Checks the pieces with etherparse and reassembles them with etherparse's defragmenter.
pub fn check_fragments(frames: &[Vec<u8>], original: &[u8], mtu: u16, ident: u16) {
    let oh = Ipv4HeaderSlice::from_slice(original).unwrap();
    let mut defrag =
        etherparse::defrag::IpDefragBuf::new(IpNumber(oh.protocol().0), Vec::new(), Vec::new());
    let base = oh.fragments_offset().byte_offset();
    for (i, f) in frames.iter().enumerate() {
        let (eth, rest) = Ethernet2Header::from_slice(f).unwrap();
        assert_eq!((eth.destination, eth.source), (NEXT_HOP_MAC, WAN_MAC));
        let outer = Ipv4HeaderSlice::from_slice(rest).unwrap();
        assert!(
            usize::from(outer.total_len()) <= usize::from(mtu),
            "piece {i} over the mtu"
        );
        assert_eq!(
            outer.to_header().calc_header_checksum(),
            outer.header_checksum()
        );
        assert_eq!(
            outer.identification(),
            ident.wrapping_add(i as u16),
            "own outer id"
        );
        assert!(!outer.dont_fragment());
        let inner_bytes = &rest[20..usize::from(outer.total_len())];
        let ih = Ipv4HeaderSlice::from_slice(inner_bytes).unwrap();
        assert_eq!(ih.to_header().calc_header_checksum(), ih.header_checksum());
        assert_eq!(ih.identification(), oh.identification(), "inner id kept");
        assert_eq!(ih.ttl(), oh.ttl() - 1);
        assert_eq!(
            (ih.source(), ih.destination()),
            (oh.source(), oh.destination())
        );
        let want_options = if i == 0 {
            oh.options().to_vec()
        } else {
            copied_options(oh.options())
        };
        assert_eq!(
            ih.options(),
            &want_options[..],
            "piece {i}: options (copied flag only after the first)"
        );
        let payload = &inner_bytes[usize::from(ih.ihl()) * 4..usize::from(ih.total_len())];
        let is_last = i + 1 == frames.len();
        if !is_last {
            assert_eq!(payload.len() % 8, 0, "piece {i} data not a multiple of 8");
            assert!(ih.more_fragments());
        } else {
            assert_eq!(
                ih.more_fragments(),
                oh.more_fragments(),
                "MF of the last piece"
            );
        }
        // Offsets relative to the original's: shift back so the defragmenter sees the
        // original datagram's data from 0.
        let rel = ih.fragments_offset().byte_offset() - base;
        let more = !is_last;
        defrag
            .add(IpFragOffset::try_new(rel / 8).unwrap(), more, payload)
            .unwrap();
    }
    assert!(defrag.is_complete());
    assert_eq!(
        &defrag.data()[..],
        &original[usize::from(oh.ihl()) * 4..],
        "reassembled data"
    );
}

/// The fields of a `Verdict::Tx`; panics (naming the verdict) on any other.
#[track_caller]
pub fn expect_tx(v: Verdict) -> (Port, usize, usize, Option<u32>) {
    expect_tx_named(v, "")
}

/// [`expect_tx`] for a table-driven case called `name`.
#[track_caller]
pub fn expect_tx_named(v: Verdict, name: &str) -> (Port, usize, usize, Option<u32>) {
    match v {
        Verdict::Tx {
            port,
            start,
            len,
            slot,
        } => (port, start, len, slot),
        other => panic!("{name}: expected Tx, got {other:?}"),
    }
}

/// The TCP segment of an (unfragmented) IPv4 datagram: whether its checksum verifies, by
/// etherparse, and the MSS options it carries (up to 2).
pub fn tcp_of(datagram: &[u8]) -> (bool, Vec<u16>) {
    let ip = Ipv4HeaderSlice::from_slice(datagram).unwrap();
    let seg = &datagram[ip.slice().len()..usize::from(ip.total_len())];
    let tcp = etherparse::TcpHeaderSlice::from_slice(seg).unwrap();
    let payload = &seg[tcp.slice().len()..];
    let ok = tcp
        .calc_checksum_ipv4(&ip, payload)
        .is_ok_and(|c| c == tcp.checksum());
    let mss = tcp
        .options_iterator()
        .filter_map(|o| match o {
            Ok(etherparse::TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
            _ => None,
        })
        .collect();
    (ok, mss)
}
