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
