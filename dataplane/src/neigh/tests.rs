//! Tests without a namespace: message building and parsing (bytes in,
//! values out), framing robustness, and read-only queries of the test
//! process's own namespace (loopback only).

use std::net::Ipv4Addr;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_MULTIPART};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::rtnl::{
    classify_event, parse_link, parse_neigh, parse_route, split_messages, Event, NeighInfo,
};
use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn serialize(msg: RouteNetlinkMessage, seq: u32, flags: u16) -> Vec<u8> {
    let mut h = NetlinkHeader::default();
    h.sequence_number = seq;
    h.flags = flags;
    let mut m = NetlinkMessage::new(h, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

fn route(kind: RouteType, attrs: Vec<RouteAttribute>) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.kind = kind;
    m.attributes = attrs;
    m
}

fn neigh(
    state: NeighbourState,
    ifindex: u32,
    dst: &str,
    lladdr: Option<Vec<u8>>,
) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = ifindex;
    m.header.state = state;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip(
            dst,
        ))));
    if let Some(l) = lladdr {
        m.attributes.push(NeighbourAttribute::LinkLocalAddress(l));
    }
    m
}

/// A neighbour dump (`RTM_GETNEIGH`, `NLM_F_DUMP`, AF_INET) as a 6.18
/// kernel answered it, byte for byte: two `RTM_NEWNEIGH` (192.0.2.1 on
/// ifindex 4, STALE, 02:fc:00:00:00:05; 0.0.0.0 on ifindex 1, NOARP) and
/// `NLMSG_DONE`, in one datagram.
const KERNEL_NEIGH_DUMP: &[u8] = &[
    0x4c, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x12, 0x06, 0x00, 0x00,
    0x02, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x01, 0x08, 0x00, 0x01, 0x00,
    0xc0, 0x00, 0x02, 0x01, 0x0a, 0x00, 0x02, 0x00, 0x02, 0xfc, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00,
    0x08, 0x00, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00, 0x14, 0x00, 0x03, 0x00, 0x81, 0x6a, 0x01, 0x00,
    0x4a, 0x7d, 0x01, 0x00, 0xb4, 0x5c, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x4c, 0x00, 0x00, 0x00,
    0x1c, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x12, 0x06, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x03, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x0a, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x04, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x03, 0x00, 0xee, 0x61, 0x03, 0x00, 0x30, 0x62, 0x03, 0x00,
    0x30, 0x62, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x03, 0x00, 0x02, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x12, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

#[test]
fn kernel_neighbour_dump_parses() {
    let msgs = split_messages(KERNEL_NEIGH_DUMP);
    assert_eq!(msgs.len(), 3);
    let infos: Vec<(NeighInfo, bool)> = msgs
        .iter()
        .filter_map(|m| match &m.payload {
            NetlinkPayload::InnerMessage(inner) => match classify_event(inner) {
                Some(Event::Neigh { info, deleted }) => Some((info, deleted)),
                other => panic!("{other:?}"),
            },
            _ => None,
        })
        .collect();
    assert!(matches!(msgs[2].payload, NetlinkPayload::Done(_)));
    assert_eq!(
        infos,
        vec![
            (
                NeighInfo {
                    ifindex: 4,
                    dst: ip("192.0.2.1"),
                    state: NeighbourState::Stale,
                    lladdr: Some([0x02, 0xfc, 0, 0, 0, 5]),
                },
                false
            ),
            (
                NeighInfo {
                    ifindex: 1,
                    dst: ip("0.0.0.0"),
                    state: NeighbourState::Noarp,
                    lladdr: Some([0; 6]),
                },
                false
            ),
        ]
    );
    assert_eq!(infos[0].0.usable_mac(), Some([0x02, 0xfc, 0, 0, 0, 5]));
    assert_eq!(infos[1].0.usable_mac(), None);
}

#[test]
fn route_next_hop() {
    let on_link = parse_route(&route(RouteType::Unicast, vec![RouteAttribute::Oif(3)]));
    assert_eq!(
        on_link.next_hop(ip("198.51.100.7")),
        Some((3, ip("198.51.100.7")))
    );

    let via = parse_route(&route(
        RouteType::Unicast,
        vec![
            RouteAttribute::Destination(RouteAddress::Inet(ip("203.0.113.5"))),
            RouteAttribute::Gateway(RouteAddress::Inet(ip("198.51.100.1"))),
            RouteAttribute::Oif(4),
        ],
    ));
    assert_eq!(
        via.next_hop(ip("203.0.113.5")),
        Some((4, ip("198.51.100.1")))
    );

    for kind in [
        RouteType::Local,
        RouteType::Unreachable,
        RouteType::BlackHole,
        RouteType::Broadcast,
    ] {
        let r = parse_route(&route(kind, vec![RouteAttribute::Oif(1)]));
        assert_eq!(r.next_hop(ip("192.0.2.1")), None, "{kind:?}");
    }
    // No oif, oif 0, IPv6 gateway: nothing to resolve.
    assert_eq!(
        parse_route(&route(RouteType::Unicast, vec![])).next_hop(ip("192.0.2.1")),
        None
    );
    assert_eq!(
        parse_route(&route(RouteType::Unicast, vec![RouteAttribute::Oif(0)]))
            .next_hop(ip("192.0.2.1")),
        None
    );
    let v6gw = parse_route(&route(
        RouteType::Unicast,
        vec![
            RouteAttribute::Oif(2),
            RouteAttribute::Gateway(RouteAddress::Inet6("fe80::1".parse().unwrap())),
        ],
    ));
    assert_eq!(v6gw.next_hop(ip("192.0.2.1")), None);
}

#[test]
fn neighbour_states() {
    let mac = vec![2, 0, 0, 0, 0, 9];
    for (state, usable) in [
        (NeighbourState::Reachable, true),
        (NeighbourState::Stale, true),
        (NeighbourState::Delay, true),
        (NeighbourState::Probe, true),
        (NeighbourState::Permanent, true),
        (NeighbourState::Incomplete, false),
        (NeighbourState::Failed, false),
        (NeighbourState::Noarp, false),
        (NeighbourState::None, false),
    ] {
        let n = parse_neigh(&neigh(state, 5, "192.0.2.9", Some(mac.clone()))).unwrap();
        assert_eq!(n.usable_mac().is_some(), usable, "{state:?}");
    }
    // Wrong address length, or none: not usable.
    let n = parse_neigh(&neigh(
        NeighbourState::Reachable,
        5,
        "192.0.2.9",
        Some(vec![1, 2, 3]),
    ))
    .unwrap();
    assert_eq!(n.usable_mac(), None);
    let n = parse_neigh(&neigh(NeighbourState::Reachable, 5, "192.0.2.9", None)).unwrap();
    assert_eq!(n.usable_mac(), None);
    // Other families and entries without destination are not ours.
    let mut v6 = neigh(NeighbourState::Reachable, 5, "192.0.2.9", Some(mac));
    v6.header.family = AddressFamily::Inet6;
    assert_eq!(parse_neigh(&v6), None);
    let mut nodst = NeighbourMessage::default();
    nodst.header.family = AddressFamily::Inet;
    assert_eq!(parse_neigh(&nodst), None);
}

#[test]
fn link_parsing() {
    let mut m = LinkMessage::default();
    m.header.index = 7;
    m.attributes = vec![
        LinkAttribute::IfName("wan0".into()),
        LinkAttribute::Mtu(1500),
        LinkAttribute::Address(vec![2, 0, 0, 0, 0, 7]),
    ];
    assert_eq!(
        parse_link(&m, "x").unwrap(),
        LinkInfo {
            index: 7,
            name: "wan0".into(),
            mac: [2, 0, 0, 0, 0, 7],
            mtu: 1500
        }
    );
    m.attributes.pop();
    assert!(matches!(parse_link(&m, "x"), Err(NeighError::NotEthernet(n)) if n == "wan0"));
}

#[test]
fn events_are_classified() {
    let n = neigh(NeighbourState::Failed, 2, "192.0.2.1", None);
    assert!(matches!(
        classify_event(&RouteNetlinkMessage::DelNeighbour(n.clone())),
        Some(Event::Neigh { deleted: true, .. })
    ));
    assert!(matches!(
        classify_event(&RouteNetlinkMessage::NewNeighbour(n)),
        Some(Event::Neigh { deleted: false, .. })
    ));
    let r = route(RouteType::Unicast, vec![]);
    assert_eq!(
        classify_event(&RouteNetlinkMessage::NewRoute(r.clone())),
        Some(Event::Route)
    );
    assert_eq!(
        classify_event(&RouteNetlinkMessage::DelRoute(r.clone())),
        Some(Event::Route)
    );
    let mut r6 = r;
    r6.header.address_family = AddressFamily::Inet6;
    assert_eq!(classify_event(&RouteNetlinkMessage::NewRoute(r6)), None);
    assert_eq!(
        classify_event(&RouteNetlinkMessage::DelLink(LinkMessage::default())),
        Some(Event::Link)
    );
}

/// Several messages per datagram, each padded to 4 bytes, come out in order.
#[test]
fn split_round_trip() {
    let mut buf = serialize(
        RouteNetlinkMessage::NewNeighbour(neigh(
            NeighbourState::Stale,
            2,
            "192.0.2.1",
            Some(vec![2, 0, 0, 0, 0, 1]),
        )),
        1,
        NLM_F_MULTIPART,
    );
    // Pad to 4 bytes like the kernel does between messages.
    buf.resize((buf.len() + 3) & !3, 0);
    buf.extend(serialize(
        RouteNetlinkMessage::NewRoute(route(RouteType::Unicast, vec![RouteAttribute::Oif(2)])),
        1,
        NLM_F_MULTIPART,
    ));
    let msgs = split_messages(&buf);
    assert_eq!(msgs.len(), 2);
    assert!(matches!(
        msgs[0].payload,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(_))
    ));
    assert!(matches!(
        msgs[1].payload,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(_))
    ));
}

/// Truncated, corrupted and random datagrams never panic.
#[test]
fn malformed_input_does_not_panic() {
    let mut good = KERNEL_NEIGH_DUMP.to_vec();
    good.extend(serialize(
        RouteNetlinkMessage::NewRoute(route(
            RouteType::Unicast,
            vec![
                RouteAttribute::Oif(2),
                RouteAttribute::Gateway(RouteAddress::Inet(ip("192.0.2.1"))),
            ],
        )),
        3,
        0,
    ));
    let mut link = LinkMessage::default();
    link.attributes = vec![
        LinkAttribute::IfName("x".into()),
        LinkAttribute::Address(vec![1; 6]),
    ];
    good.extend(serialize(RouteNetlinkMessage::NewLink(link), 4, 0));

    // Every truncation.
    for n in 0..good.len() {
        let _ = split_messages(&good[..n]);
    }
    // Every single-byte corruption, with a few values.
    for i in 0..good.len() {
        for v in [0u8, 1, 0x7f, 0xff] {
            let mut b = good.clone();
            b[i] = v;
            for m in split_messages(&b) {
                if let NetlinkPayload::InnerMessage(inner) = &m.payload {
                    let _ = classify_event(inner);
                    if let RouteNetlinkMessage::NewLink(l) = inner {
                        let _ = parse_link(l, "x");
                    }
                }
            }
        }
    }
    // Random bytes with plausible headers.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        let mut b = vec![0u8; 16 + (x % 200) as usize];
        for byte in b.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        let len = b.len() as u32;
        b[..4].copy_from_slice(&len.to_ne_bytes());
        b[4] = [16u8, 17, 20, 21, 24, 25, 28, 2, 3][(x % 9) as usize]; // message types
        b[5] = 0;
        for m in split_messages(&b) {
            if let NetlinkPayload::InnerMessage(inner) = &m.payload {
                let _ = classify_event(inner);
            }
        }
    }
    // Absurd lengths.
    let mut b = good.clone();
    b[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert!(split_messages(&b).is_empty());
    b[..4].copy_from_slice(&0u32.to_ne_bytes());
    assert!(split_messages(&b).is_empty());
}

#[test]
fn mac_words_round_trip() {
    for m in [[0u8; 6], [0xff; 6], [2, 0, 0, 0, 0, 1]] {
        assert_eq!(word_mac(mac_word(m)), Some(m));
    }
    assert_eq!(word_mac(0), None);
}

/// Read-only queries of this process's namespace: loopback always exists.
#[test]
fn loopback_link_lookups() {
    let lo = link_by_name("lo").unwrap();
    assert_eq!(lo.name, "lo");
    assert_eq!(lo.mac, [0; 6]);
    assert!(lo.mtu > 0);
    assert_eq!(link_by_index(lo.index).unwrap(), lo);
}

#[test]
fn unknown_links() {
    for name in [
        "hw-no-such-if0",
        "",
        "much-too-long-interface-name",
        "a/b",
        "a b",
    ] {
        assert!(
            matches!(link_by_name(name), Err(NeighError::NoSuchInterface(n)) if n == name),
            "{name:?}"
        );
    }
    assert!(matches!(
        link_by_index(0),
        Err(NeighError::NoSuchIfindex(0))
    ));
    assert!(matches!(
        link_by_index(999_999),
        Err(NeighError::NoSuchIfindex(999_999))
    ));
}

/// A local address routes through `lo`, which is never among the allowed
/// interfaces: the reader stays empty, and the thread stops on drop.
#[test]
fn local_address_is_unresolved_and_thread_stops() {
    let (h, r) = spawn(vec![], 0).unwrap();
    h.track(ip("127.0.0.1"));
    h.track(ip("127.0.0.1")); // a set: still one
    h.track_lan(ip("127.0.0.1"));
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(r.egress(ip("127.0.0.1")), None);
    assert_eq!(r.lan_neighbor(ip("127.0.0.1")), None);
    assert_eq!(h.snapshot(), vec![(ip("127.0.0.1"), None)]);
    h.untrack(ip("127.0.0.1"));
    assert!(h.snapshot().is_empty());
    h.untrack(ip("127.0.0.1")); // not tracked: nothing
    assert_eq!(h.lan_snapshot(), vec![(ip("127.0.0.1"), None)]);
    let h2 = h.clone();
    drop(h);
    // Still running for the clone.
    h2.track(ip("127.0.0.2"));
    let t = std::time::Instant::now();
    h2.shutdown();
    assert!(t.elapsed() < std::time::Duration::from_secs(1));
    h2.shutdown(); // idempotent
    h2.track(ip("127.0.0.3")); // no panic after shutdown
}

#[test]
fn static_neighbors_are_what_the_reader_sees() {
    let (mut maps, reader) = crate::neigh::static_neighbors();
    let coa = std::net::Ipv4Addr::new(198, 51, 100, 2);
    let host = std::net::Ipv4Addr::new(192, 0, 2, 10);
    assert_eq!(reader.egress(coa), None);
    maps.set_egress(coa, 3, [2, 0, 0, 0, 0, 0x22]);
    maps.set_lan(host, [2, 0, 0, 0, 0, 0x10]);
    assert_eq!(
        reader.egress(coa),
        Some(crate::neigh::Egress {
            ifindex: 3,
            mac: [2, 0, 0, 0, 0, 0x22]
        })
    );
    assert_eq!(reader.lan_neighbor(host), Some([2, 0, 0, 0, 0, 0x10]));
    assert_eq!(reader.lan_neighbor(coa), None);
}
