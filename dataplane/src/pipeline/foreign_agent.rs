//! Byte fixtures of the foreign-agent role ([`Role::ForeignAgent`]): the same pipeline with
//! the VM on the "LAN" port (its tap or bridge) and the uplink on the "WAN" port.

use std::net::Ipv4Addr;

use etherparse::{Ethernet2Header, Ipv4HeaderSlice};

use super::testutil::*;
use super::*;

/// The foreign hypervisor's uplink address: the care-of address.
const FA: [u8; 4] = [203, 0, 113, 2];
/// The served VM's home agent.
const HOME_AGENT: [u8; 4] = [198, 51, 100, 1];
/// The served VM, away from home, and its MAC.
const SERVED: [u8; 4] = [192, 0, 2, 50];
const SERVED_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x50];
const SERVED_SLOT: u32 = 3;
/// A host on the VM's home subnet.
const CLIENT: [u8; 4] = [192, 0, 2, 10];
/// The uplink's router.
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

fn fa_pipeline() -> Pipeline {
    let mut c = PipelineConfig::new(FA.into(), LAN_MAC, WAN_MAC);
    c.role = Role::ForeignAgent;
    Pipeline::new(c, 0x100)
}

fn fa_lookup() -> TestLookup {
    TestLookup {
        bindings: vec![(
            SERVED.into(),
            BindingRef {
                care_of: HOME_AGENT.into(),
                slot: SERVED_SLOT,
            },
        )],
        next_hops: vec![(
            HOME_AGENT.into(),
            NextHop::Resolved {
                port: Port::Wan,
                mac: ROUTER_MAC,
            },
        )],
        neighbors: vec![(SERVED.into(), SERVED_MAC)],
        ..TestLookup::default()
    }
}

fn run(frame: &[u8], ingress: Port) -> (Vec<u8>, Verdict) {
    let (mut buf, start) = place(frame);
    let v = fa_pipeline().process(&mut buf, start, frame.len(), ingress, 0, &fa_lookup());
    let out = match v {
        Verdict::Tx { start, len, .. } => buf[start..start + len].to_vec(),
        _ => Vec::new(),
    };
    (out, v)
}

#[test]
fn tunnel_from_the_home_agent_is_delivered_to_the_vm() {
    let inner = Ip::udp(CLIENT, SERVED, b"to the vm, away from home");
    let input = Ip::ipip(HOME_AGENT, FA, inner.clone()).frame();
    let (out, v) = run(&input, Port::Wan);
    let (port, _, _, slot) = expect_tx(v);
    assert_eq!((port, slot), (Port::Lan, Some(SERVED_SLOT)));
    // To the VM's own MAC from the VM link's, the inner datagram as sent, one hop older.
    check_decapsulated(&out, &inner.datagram(), SERVED_MAC);
}

#[test]
fn vm_traffic_is_reverse_tunnelled_to_its_home_agent() {
    // The VM still has the client's MAC in its ARP cache: the frame is not addressed to us.
    let inner = Ip::udp(SERVED, CLIENT, b"reply from the vm").eth_dst(LAN_HOST_MAC);
    let datagram = inner.datagram();
    let (out, v) = run(&inner.frame(), Port::Lan);
    let (port, _, _, slot) = expect_tx(v);
    assert_eq!((port, slot), (Port::Wan, Some(SERVED_SLOT)));

    let (eth, rest) = Ethernet2Header::from_slice(&out).unwrap();
    assert_eq!((eth.destination, eth.source), (ROUTER_MAC, WAN_MAC));
    let outer = Ipv4HeaderSlice::from_slice(rest).unwrap();
    assert_eq!(outer.protocol().0, 4);
    assert_eq!(outer.source_addr(), Ipv4Addr::from(FA));
    assert_eq!(outer.destination_addr(), Ipv4Addr::from(HOME_AGENT));
    assert_eq!(
        outer.to_header().calc_header_checksum(),
        outer.header_checksum()
    );
    let carried = trim_datagram(&rest[20..]);
    let h = Ipv4HeaderSlice::from_slice(carried).unwrap();
    assert_eq!(
        h.ttl(),
        63,
        "the foreign agent is the VM's first-hop router"
    );
    assert_eq!(&carried[12..], &datagram[12..]);
}

#[test]
fn vm_arp_for_a_home_subnet_neighbour_is_answered() {
    let input = ArpFrame::request(SERVED_MAC, SERVED, CLIENT).frame();
    let (out, v) = run(&input, Port::Lan);
    let (port, _, _, slot) = expect_tx(v);
    assert_eq!((port, slot), (Port::Lan, None));
    check_arp_reply(&out, &input);
}

#[test]
fn foreign_agent_rejections() {
    use DropReason::*;
    let from_vm = |dst: [u8; 4]| Ip::udp(SERVED, dst, b"x");
    let cases: Vec<(&str, Vec<u8>, Port, DropReason)> = vec![
        (
            "ipip from another host (CVE-2020-10136)",
            Ip::ipip(REMOTE, FA, Ip::udp(CLIENT, SERVED, b"x")).frame(),
            Port::Wan,
            DecapCareOfMismatch,
        ),
        (
            "ipip for a vm not served here",
            Ip::ipip(HOME_AGENT, FA, Ip::udp(CLIENT, [192, 0, 2, 51], b"x")).frame(),
            Port::Wan,
            DecapUnknownDestination,
        ),
        (
            "the vm's address arriving on the uplink",
            from_vm(CLIENT).frame(),
            Port::Wan,
            NotFromVmLink,
        ),
        (
            "another source on the vm link",
            Ip::udp([192, 0, 2, 51], CLIENT, b"x").frame(),
            Port::Lan,
            NoBinding,
        ),
        (
            "vm broadcast",
            from_vm([255, 255, 255, 255]).frame(),
            Port::Lan,
            Broadcast,
        ),
        (
            "vm multicast",
            from_vm([224, 0, 0, 251]).frame(),
            Port::Lan,
            Multicast,
        ),
        (
            "arp probe of the vm's own address (RFC 5227)",
            ArpFrame::request(SERVED_MAC, [0; 4], SERVED).frame(),
            Port::Lan,
            ArpSenderNotServed,
        ),
        (
            "vm's gratuitous arp",
            ArpFrame::request(SERVED_MAC, SERVED, SERVED).frame(),
            Port::Lan,
            ArpFromOwner,
        ),
        (
            "arp from a host not served",
            ArpFrame::request(LAN_HOST_MAC, [192, 0, 2, 51], CLIENT).frame(),
            Port::Lan,
            ArpSenderNotServed,
        ),
        (
            "arp on the uplink",
            ArpFrame::request(SERVED_MAC, SERVED, CLIENT).frame(),
            Port::Wan,
            ArpOnWan,
        ),
    ];
    for (name, input, ingress, want) in cases {
        let (_, v) = run(&input, ingress);
        assert_eq!(v, Verdict::Drop(want), "{name}");
    }
}

/// MSS 1460, SACK permitted, NOP, window scale 7.
const SYN_OPTIONS: [u8; 12] = [2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, 7, 0, 0];

/// The served VM's SYN-ACK enters the reverse tunnel clamped: its MSS sizes what the client
/// sends to the VM through the home agent's end of the tunnel.
#[test]
fn a_served_vms_syn_ack_is_clamped_into_the_reverse_tunnel() {
    let inner = Ip::tcp(SERVED, CLIENT, 0x12, &SYN_OPTIONS, b"").eth_dst(LAN_HOST_MAC);
    let mut p = fa_pipeline();
    let frame = inner.frame();
    let (mut buf, start) = place(&frame);
    let v = p.process(&mut buf, start, frame.len(), Port::Lan, 0, &fa_lookup());
    let (port, s, len, _) = expect_tx(v);
    assert_eq!(port, Port::Wan);
    let out = &buf[s..s + len];
    let outer = Ipv4HeaderSlice::from_slice(&out[14..]).unwrap();
    assert_eq!(outer.destination_addr(), Ipv4Addr::from(HOME_AGENT));
    let got = trim_datagram(&out[34..]);
    assert_eq!(tcp_of(got), (true, vec![1440]));
    assert_eq!(p.counters().mss_clamped, 1);
    // Disabled: as sent.
    let mut c = fa_pipeline().config().clone();
    c.mss_clamp = false;
    let mut p = Pipeline::new(c, 0x100);
    let (mut buf, start) = place(&frame);
    let v = p.process(&mut buf, start, frame.len(), Port::Lan, 0, &fa_lookup());
    let (_, s, len, _) = expect_tx(v);
    assert_eq!(
        tcp_of(trim_datagram(&buf[s + 34..s + len])),
        (true, vec![1460])
    );
    assert_eq!(p.counters().mss_clamped, 0);
}

/// A SYN out of the tunnel toward the VM is clamped to this end's tunnel MTU as well, even
/// if the home agent did not clamp it (an older one, or a larger tunnel MTU there).
#[test]
fn a_syn_decapsulated_toward_the_vm_is_clamped() {
    let inner = Ip::tcp(CLIENT, SERVED, 0x02, &SYN_OPTIONS, b"");
    let input = Ip::ipip(HOME_AGENT, FA, inner.clone()).frame();
    let (out, v) = run(&input, Port::Wan);
    expect_tx(v);
    let got = trim_datagram(&out[14..]);
    assert_eq!(tcp_of(got), (true, vec![1440]));
    // Already clamped by the home agent: left as is.
    let inner = Ip::tcp(CLIENT, SERVED, 0x02, &[2, 4, 0x05, 0xa0], b"");
    let input = Ip::ipip(HOME_AGENT, FA, inner.clone()).frame();
    let (out, _) = run(&input, Port::Wan);
    check_decapsulated(&out, &inner.datagram(), SERVED_MAC);
}

/// A default guest's TSO super-frames toward a client are cut to what that client asked
/// for, once its SYN-ACK came out of the tunnel (a client behind a VPN: MSS 1360), and
/// lower again after a Fragmentation Needed toward it; to another client, at the tunnel's
/// size. The guest's own segment size does not reach AF_XDP.
#[test]
fn super_frames_are_cut_to_what_the_client_asked_for_and_its_path_takes() {
    const OTHER: [u8; 4] = [192, 0, 2, 11];
    /// Timestamps, as Linux sends them: 12 bytes of options.
    const TS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let mut p = fa_pipeline();
    let lookup = fa_lookup();
    let data_per_segment = |p: &mut Pipeline, to: [u8; 4]| {
        let frame = Ip::tcp(SERVED, to, 0x10, &TS, &[7; 20_000]).frame();
        let plan = p.plan_segments(&frame, 0).expect("a plan");
        let mut dst = vec![0u8; 2048];
        let len = p.write_segment(&frame, &plan, 0, &mut dst, 0).unwrap();
        len - 14 - 20 - 32
    };
    // 1500 - 20 outer - 20 IPv4 - 32 TCP.
    assert_eq!(data_per_segment(&mut p, CLIENT), 1428);
    let syn_ack = Ip::tcp(CLIENT, SERVED, 0x12, &[2, 4, 0x05, 0x50, 1, 1, 4, 2], b"");
    let input = Ip::ipip(HOME_AGENT, FA, syn_ack).frame();
    let (mut buf, start) = place(&input);
    expect_tx(p.process(&mut buf, start, input.len(), Port::Wan, 0, &lookup));
    // MSS 1360 less 12 bytes of options (RFC 6691).
    assert_eq!(data_per_segment(&mut p, CLIENT), 1348);
    assert_eq!(data_per_segment(&mut p, OTHER), 1428);
    // A router toward the client takes 1280.
    let quoted = Ip::tcp(SERVED, CLIENT, 0x10, &TS, &[7; 1348]).datagram();
    let mut rest = vec![0, 0, 0x05, 0x00];
    rest.extend_from_slice(&quoted[..28]);
    let icmp = Ip::icmp([203, 0, 113, 254], SERVED, 3, 4, &rest);
    let input = Ip::ipip(HOME_AGENT, FA, icmp).frame();
    let (mut buf, start) = place(&input);
    expect_tx(p.process(&mut buf, start, input.len(), Port::Wan, 0, &lookup));
    assert_eq!(data_per_segment(&mut p, CLIENT), 1280 - 20 - 32);
    assert_eq!(p.counters().segmented, 4);
    assert_eq!(p.counters().segmented_to_path, 2);
}
