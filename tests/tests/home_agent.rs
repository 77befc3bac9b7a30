//! The home agent end to end, with real kernel traffic on veth pairs:
//! `homeward run` in the HA namespace, the client's kernel on the home LAN,
//! captures decoded by scapy (a decoder that is not homeward's own).
//! Needs root (CI is root) and `cargo build --release -p homeward`.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use homeward_tests::agent::HomeAgent;
use homeward_tests::{
    decode_arp, decode_ipip, payload_pattern, require_root, ArpPacket, Capture, LabOptions, Mac,
    Topology, UdpSend,
};

const VM_MAC: &str = "02:00:5e:00:00:50";

fn vm(lab: &Topology) -> String {
    lab.vm_home.to_string()
}

fn care_of(lab: &Topology) -> String {
    lab.care_of.to_string()
}

/// Stop homeward and check that every UMEM frame was accounted for.
#[track_caller]
fn stop_clean(ha: HomeAgent) {
    stop_clean_with(ha, "INT")
}

/// [`stop_clean`] with another signal.
#[track_caller]
fn stop_clean_with(ha: HomeAgent, signal: &str) {
    let t = ha.stop_with(signal);
    assert!(t.success, "homeward did not exit cleanly:\n{}", t.stderr);
    let unaccounted = t.unaccounted();
    assert!(
        !unaccounted.is_empty(),
        "no teardown accounting:\n{}",
        t.stderr
    );
    assert!(
        unaccounted.iter().all(|u| *u == 0),
        "leaked frames: {unaccounted:?}\n{}",
        t.stderr
    );
}

/// Waits (up to 3 s) until homeward has encapsulated `n` packets, asserts
/// that it did, and returns the stats it last read.
#[track_caller]
fn await_encapsulated(ha: &HomeAgent, n: u64) -> serde_json::Value {
    let stats = ha.wait_stats(Duration::from_secs(3), |s| {
        s["counters"]["encapsulated"].as_u64() == Some(n)
    });
    assert_eq!(
        stats["counters"]["encapsulated"].as_u64(),
        Some(n),
        "{stats}"
    );
    stats
}

/// The gratuitous ARPs for `addr` among `arps`: a series of five (the
/// announce-self schedule), each saying `addr` is at `mac`, from `mac`.
#[track_caller]
fn five_announcements(arps: &[ArpPacket], addr: Ipv4Addr, mac: Mac) -> Vec<&ArpPacket> {
    let announcements: Vec<_> = arps
        .iter()
        .filter(|a| a.is_gratuitous() && a.psrc == addr)
        .collect();
    assert_eq!(announcements.len(), 5, "{arps:#?}");
    for a in &announcements {
        assert_eq!((a.hwsrc, a.eth_src), (mac, Some(mac)), "{a:?}");
    }
    announcements
}

#[test]
fn bind_takes_over_the_address_with_proxy_and_gratuitous_arp() {
    require_root();
    let lab = Topology::home_agent_lab("arp");
    let ha = HomeAgent::start(&lab, &[]);
    let cap = Capture::start(&lab.client, &lab.client_lan.name, "arp");
    ha.bind(&vm(&lab), &care_of(&lab), &["--vm-mac", VM_MAC]);
    std::thread::sleep(Duration::from_millis(1200));
    // The client's kernel now resolves the VM address by ARP.
    lab.client.send_udp(&UdpSend::new(lab.vm_home, 9, 32));
    std::thread::sleep(Duration::from_millis(300));
    let neighbor = lab.client.neighbor(lab.vm_home).expect("neighbour entry");
    assert_eq!(neighbor.lladdr, Some(lab.ha_lan.mac), "{neighbor:?}");
    let arps = decode_arp(&cap.stop());

    let announcements = five_announcements(&arps, lab.vm_home, lab.ha_lan.mac);
    for a in &announcements {
        assert_eq!(a.eth_dst, Some(Mac::BROADCAST));
    }
    // QEMU's announce-self schedule: 50, 150, 250, 350 ms apart, i.e. at
    // 0, 50, 200, 450 and 800 ms. Each is timed from the schedule, not from
    // the previous send, so a stall (tens of ms on this shared box) makes
    // one announcement late without shifting the rest. The first can be
    // late too, so the schedule's start is estimated as the earliest start
    // any announcement allows; then none may be early by more than the
    // capture's jitter, nor late by more than 100 ms.
    const SCHEDULE: [f64; 5] = [0.0, 50.0, 200.0, 450.0, 800.0];
    let offsets: Vec<f64> = announcements
        .iter()
        .map(|a| (a.time - announcements[0].time) * 1000.0)
        .collect();
    let start = offsets
        .iter()
        .zip(SCHEDULE)
        .map(|(offset, want)| offset - want)
        .fold(f64::INFINITY, f64::min);
    for (offset, want) in offsets.iter().zip(SCHEDULE) {
        let late = offset - start - want;
        assert!(
            (0.0..100.0).contains(&late),
            "announcements at {offsets:?} ms: {late:.1} ms late against {want} ms"
        );
    }
    // The schedule's gaps, not just its slots: the last comes about 800 ms
    // after the first (a late first one shortens this by its lateness).
    let span = offsets[4] - offsets[0];
    assert!(
        span > 700.0 && span < 900.0,
        "announcements at {offsets:?} ms"
    );
    // The proxy reply to the client's request came from the data path.
    let reply = arps
        .iter()
        .find(|a| a.is_reply() && a.psrc == lab.vm_home)
        .expect("a proxy ARP reply");
    assert_eq!(reply.hwsrc, lab.ha_lan.mac);
    assert_eq!(reply.pdst, lab.client_lan.addr);
    assert_eq!(reply.hwdst, lab.client_lan.mac);
    let stats = ha.stats();
    assert!(stats["counters"]["arp_replies"].as_u64().unwrap() >= 1);
    assert_eq!(stats["counters"]["announcements"].as_u64(), Some(5));
    stop_clean(ha);
}

#[test]
fn udp_and_tcp_arrive_encapsulated_per_rfc2003() {
    require_root();
    let lab = Topology::home_agent_lab("enc");
    let ha = HomeAgent::start(&lab, &[]);
    ha.bind(&vm(&lab), &care_of(&lab), &[]);
    let cap = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");
    let payload = payload_pattern(200, 7);
    let udp = lab.client.send_udp(
        &UdpSend::new(lab.vm_home, 4000, 0)
            .payload(payload.clone())
            .sport(5000)
            .df(true),
    );
    assert_eq!(udp.sent(), 1, "{udp:?}");
    let tcp = lab.client.tcp_connect(
        lab.vm_home,
        8080,
        5001,
        b"hello",
        Duration::from_millis(1500),
    );
    let _ = tcp;
    let packets = decode_ipip(&cap.stop()).packets;

    let udp_pkt = packets
        .iter()
        .find(|p| p.inner.as_ref().is_some_and(|i| i.proto == 17))
        .unwrap_or_else(|| panic!("no encapsulated UDP: {packets:#?}"));
    let syn = packets
        .iter()
        .find(|p| p.inner.as_ref().is_some_and(|i| i.proto == 6))
        .unwrap_or_else(|| panic!("no encapsulated TCP: {packets:#?}"));
    for p in [udp_pkt, syn] {
        let (o, i) = (&p.outer, p.inner.as_ref().unwrap());
        assert_eq!(o.src, Ipv4Addr::new(198, 51, 100, 1), "outer source = HA");
        assert_eq!(o.dst, lab.care_of, "outer destination = care-of");
        assert_eq!(o.proto, 4);
        assert_eq!(o.ihl, 5);
        assert_eq!(o.ttl, 64, "default outer TTL");
        assert_eq!(o.tos, i.tos, "TOS copied");
        assert_eq!(o.df, i.df, "DF copied");
        assert!(!o.mf && o.frag == 0);
        assert_eq!(o.len as usize, 20 + i.len as usize);
        assert_eq!(o.checksum_valid, Some(true), "outer checksum");
        assert_eq!(i.src, lab.client_lan.addr);
        assert_eq!(i.dst, lab.vm_home);
        assert_eq!(i.ttl, 63, "inner TTL decremented once");
        assert_eq!(
            i.checksum_valid,
            Some(true),
            "inner checksum after TTL update"
        );
        assert_eq!(p.eth_src, Some(lab.ha_wan.mac));
        assert_eq!(p.eth_dst, Some(lab.foreign_wan.mac));
    }
    let i = udp_pkt.inner.as_ref().unwrap();
    let l4 = i.l4.as_ref().unwrap();
    assert_eq!(i.ports(), Some((5000, 4000)));
    assert_eq!(l4.checksum_valid, Some(true));
    assert_eq!(l4.payload(), payload, "inner payload intact");
    assert!(udp_pkt.outer.df, "DF set by the sender is copied");
    let s = syn.inner.as_ref().unwrap();
    assert_eq!(s.ports(), Some((5001, 8080)));
    assert_eq!(s.l4.as_ref().unwrap().tcp_flags.as_deref(), Some("S"));
    assert_eq!(s.l4.as_ref().unwrap().checksum_valid, Some(true));
    // The client's MSS (1460 on its 1500-byte link) clamped to fit the
    // 1500-byte tunnel: 1500 - 20 outer - 20 inner - 20 TCP.
    assert_eq!(s.l4.as_ref().unwrap().tcp_mss, Some(1440), "{s:?}");
    // Outer Identification is fresh per packet.
    let ids: std::collections::HashSet<u16> = packets.iter().map(|p| p.outer.id).collect();
    assert_eq!(ids.len(), packets.len(), "outer IDs repeat");

    let stats = ha.stats();
    let b = &stats["bindings"][0];
    assert_eq!(b["vm"], vm(&lab));
    assert_eq!(b["packets"].as_u64(), Some(packets.len() as u64), "{stats}");
    assert!(b["bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        stats["counters"]["encapsulated"].as_u64(),
        Some(packets.len() as u64)
    );
    assert_eq!(stats["drops"]["no_next_hop"].as_u64(), Some(0));
    assert!(
        stats["counters"]["mss_clamped"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    stop_clean(ha);
}

/// docs/agent.md, "Underlay MTU": a WAN of 1520 with `--tunnel-mtu 1520`
/// carries a full-size 1500-byte DF datagram unfragmented, with no
/// Fragmentation Needed, and a SYN keeps the MSS its 1500-byte link gives it.
#[test]
fn an_underlay_of_1520_carries_full_size_inner_datagrams() {
    require_root();
    let lab = Topology::home_agent_lab_with(
        "u1520",
        LabOptions {
            wan_mtu: 1520,
            ..LabOptions::default()
        },
    );
    let ha = HomeAgent::start(&lab, &["--tunnel-mtu", "1520"]);
    ha.bind(&vm(&lab), &care_of(&lab), &[]);
    let cap = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");
    let payload = payload_pattern(1472, 5);
    let udp = lab.client.send_udp(
        &UdpSend::new(lab.vm_home, 4000, 0)
            .payload(payload.clone())
            .sport(5002)
            .df(true),
    );
    assert_eq!(udp.sent(), 1, "{udp:?}");
    let _ = lab.client.tcp_connect(
        lab.vm_home,
        8080,
        5003,
        b"hello",
        Duration::from_millis(1500),
    );
    let packets = decode_ipip(&cap.stop()).packets;
    let full = packets
        .iter()
        .find(|p| p.inner.as_ref().is_some_and(|i| i.proto == 17))
        .unwrap_or_else(|| panic!("no encapsulated UDP: {packets:#?}"));
    let i = full.inner.as_ref().unwrap();
    assert_eq!((full.outer.len, i.len), (1520, 1500), "{full:?}");
    assert!(full.outer.df && i.df && !i.mf && i.frag == 0);
    assert_eq!(i.l4.as_ref().unwrap().payload(), payload);
    let syn = packets
        .iter()
        .find(|p| p.inner.as_ref().is_some_and(|i| i.proto == 6))
        .unwrap_or_else(|| panic!("no encapsulated TCP: {packets:#?}"));
    let l4 = syn.inner.as_ref().unwrap().l4.as_ref().unwrap();
    assert_eq!(l4.tcp_mss, Some(1460), "fits, left alone: {l4:?}");
    assert_eq!(l4.checksum_valid, Some(true));

    let stats = ha.stats();
    assert_eq!(stats["drops"]["frag_needed"].as_u64(), Some(0), "{stats}");
    assert_eq!(stats["counters"]["fragmented"].as_u64(), Some(0));
    assert_eq!(stats["counters"]["mss_clamped"].as_u64(), Some(0));
    assert_eq!(
        lab.client.route_get(lab.vm_home).mtu,
        None,
        "no PMTU learned"
    );
    stop_clean(ha);
}

#[test]
fn path_mtu_is_learned_and_non_df_datagrams_are_fragmented() {
    require_root();
    let lab = Topology::home_agent_lab("mtu");
    let ha = HomeAgent::start(&lab, &["--tunnel-mtu", "1400"]);
    ha.bind(&vm(&lab), &care_of(&lab), &[]);
    let cap = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");

    // First (before the client learns a smaller path MTU, after which it
    // would fragment to fit by itself): DF clear, 3000 bytes, fragmented by
    // the client at its link MTU (1500), each fragment again by homeward to
    // fit the tunnel; the pieces reassemble at the destination.
    let payload = payload_pattern(3000, 3);
    let sent = lab.client.send_udp(
        &UdpSend::new(lab.vm_home, 4001, 0)
            .payload(payload.clone())
            .df(false)
            .sport(6001),
    );
    assert_eq!(sent.sent(), 1);
    std::thread::sleep(Duration::from_millis(200));
    let capture = decode_ipip(&cap.stop());
    for p in &capture.packets {
        assert!(
            p.outer.len <= 1400,
            "outer datagram over the tunnel MTU: {p:?}"
        );
        assert_eq!(p.outer.checksum_valid, Some(true));
        let inner = p.inner.as_ref().expect("inner header");
        assert_eq!(inner.checksum_valid, Some(true), "{inner:?}");
    }
    assert!(capture.packets.len() >= 3, "{:#?}", capture.packets);
    let whole = capture
        .inner_datagrams
        .iter()
        .find(|d| d.ip.ports() == Some((6001, 4001)))
        .unwrap_or_else(|| panic!("not reassembled: {:#?}", capture.inner_datagrams));
    assert!(whole.complete);
    assert!(whole.fragments >= 3);
    assert_eq!(whole.ip.len as usize, 20 + 8 + 3000);
    assert_eq!(whole.ip.l4.as_ref().unwrap().payload(), payload);
    assert_eq!(whole.ip.l4.as_ref().unwrap().checksum_valid, Some(true));

    // Then DF set, 1472 bytes of UDP payload: a full 1500-byte datagram, too big
    // for the tunnel (1400 - 20 = 1380 for the inner datagram).
    // As a real sender would, try again while the error is on its way (a
    // busy 2-core box can delay it past one short wait).
    for _ in 0..5 {
        let sent = lab
            .client
            .send_udp(&UdpSend::new(lab.vm_home, 4000, 1472).df(true).sport(6000));
        if sent.errors() == vec!["EMSGSIZE"] {
            break; // already learned
        }
        std::thread::sleep(Duration::from_millis(300));
        if lab.client.route_get(lab.vm_home).mtu.is_some() {
            break;
        }
    }
    let route = lab.client.route_get(lab.vm_home);
    assert_eq!(
        route.mtu,
        Some(1380),
        "client learned the path MTU: {}",
        route.raw
    );
    // And the kernel now refuses DF datagrams above it.
    let again = lab
        .client
        .send_udp(&UdpSend::new(lab.vm_home, 4000, 1472).df(true).sport(6000));
    assert_eq!(again.errors(), vec!["EMSGSIZE"]);

    let stats = ha.stats();
    assert!(stats["drops"]["frag_needed"].as_u64().unwrap() >= 1);
    assert!(stats["counters"]["icmp_sent"].as_u64().unwrap() >= 1);
    assert!(stats["counters"]["fragmented"].as_u64().unwrap() >= 2);
    stop_clean(ha);
}

#[test]
fn unbound_and_own_traffic_still_go_through_the_kernel() {
    require_root();
    let lab = Topology::home_agent_lab("pass");
    let ha = HomeAgent::start(&lab, &[]);
    ha.bind(&vm(&lab), &care_of(&lab), &[]);
    // Routed through the HA by its kernel, in both directions.
    assert!(lab.client.ping_ok(lab.foreign_wan.addr, 2));
    // The HA's own addresses and traffic.
    assert!(lab.client.ping_ok(lab.ha_lan.addr, 2));
    assert!(lab.ha.ping_ok(lab.client_lan.addr, 2));
    assert!(lab.ha.ping_ok(lab.care_of, 2));
    let stats = ha.stats();
    assert!(stats["steering"]["passed"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["counters"]["encapsulated"].as_u64(), Some(0));
    stop_clean(ha);
}

#[test]
fn unbind_stops_interception_and_gives_the_address_back() {
    require_root();
    let lab = Topology::home_agent_lab("unb");
    let ha = HomeAgent::start(&lab, &[]);
    ha.bind(&vm(&lab), &care_of(&lab), &["--vm-mac", VM_MAC]);
    lab.client.send_udp(&UdpSend::new(lab.vm_home, 9, 16));
    await_encapsulated(&ha, 1);
    std::thread::sleep(Duration::from_millis(900)); // let the bind announcements finish

    let arp_cap = Capture::start(&lab.client, &lab.client_lan.name, "arp");
    let wan_cap = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");
    ha.unbind(&vm(&lab));
    std::thread::sleep(Duration::from_millis(1000));
    // The give-back announcements taught the client the VM's own MAC.
    let neighbor = lab.client.neighbor(lab.vm_home).expect("neighbour entry");
    assert_eq!(
        neighbor.lladdr,
        Some(VM_MAC.parse().unwrap()),
        "{neighbor:?}"
    );
    lab.client.send_udp(&UdpSend::new(lab.vm_home, 9, 16));
    std::thread::sleep(Duration::from_millis(200));
    let arps = decode_arp(&arp_cap.stop());
    five_announcements(&arps, lab.vm_home, VM_MAC.parse().unwrap());
    assert!(decode_ipip(&wan_cap.stop()).packets.is_empty());

    let stats = ha.stats();
    assert_eq!(stats["counters"]["encapsulated"].as_u64(), Some(1));
    assert_eq!(stats["bindings"].as_array().map(Vec::len), Some(0));
    assert_eq!(ha.cli(&["list", "--json"]).trim(), "[]");
    stop_clean(ha);
}

#[test]
fn lifetimes_expire() {
    require_root();
    let lab = Topology::home_agent_lab("life");
    let ha = HomeAgent::start(&lab, &[]);
    ha.bind(&vm(&lab), &care_of(&lab), &["--lifetime", "1"]);
    let listed: serde_json::Value = serde_json::from_str(&ha.cli(&["list", "--json"])).unwrap();
    assert_eq!(listed[0]["vm"], vm(&lab));
    let stats = ha.wait_stats(Duration::from_secs(4), |s| {
        s["bindings"].as_array().is_some_and(|b| b.is_empty())
    });
    assert_eq!(
        stats["bindings"].as_array().map(Vec::len),
        Some(0),
        "{stats}"
    );
    // SIGTERM (how service managers stop it) tears down like SIGINT, and
    // the XDP program goes with it.
    stop_clean_with(ha, "TERM");
    let links = lab.ha.ip(&["link", "show"]);
    assert!(!links.contains("xdp"), "XDP still attached: {links}");
}

#[test]
fn an_unresolved_next_hop_drops_under_its_own_counter_until_resolved() {
    require_root();
    let lab = Topology::home_agent_lab("nh");
    let ha = HomeAgent::start(&lab, &[]);
    // Nobody holds this care-of address yet: the neighbour stays unresolved.
    let absent = Ipv4Addr::new(198, 51, 100, 77);
    ha.bind(&vm(&lab), &absent.to_string(), &[]);
    lab.client
        .send_udp(&UdpSend::new(lab.vm_home, 9, 16).repeat(3, Duration::from_millis(50)));
    let stats = ha.wait_stats(Duration::from_secs(3), |s| {
        s["drops"]["no_next_hop"].as_u64() == Some(3)
    });
    assert_eq!(stats["drops"]["no_next_hop"].as_u64(), Some(3), "{stats}");
    assert_eq!(stats["counters"]["encapsulated"].as_u64(), Some(0));
    // The foreign host takes the address: the HA's kernel was asked to
    // probe, and keeps probing, so the next hop resolves by itself.
    lab.foreign.add_addr(&lab.foreign_wan.name, absent, 24);
    let resolved = ha.wait_stats(Duration::from_secs(5), |s| {
        s["next_hops"][0]["mac"].as_str().is_some()
    });
    assert_eq!(
        resolved["next_hops"][0]["mac"].as_str(),
        Some(lab.foreign_wan.mac.to_string().as_str()),
        "{resolved}"
    );
    let cap = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");
    lab.client.send_udp(&UdpSend::new(lab.vm_home, 9, 16));
    let packets = decode_ipip(&cap.stop()).packets;
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].outer.dst, absent);
    stop_clean(ha);
}

#[test]
fn maps_follow_the_table_through_bind_rebind_and_unbind() {
    require_root();
    let lab = Topology::home_agent_lab("sync");
    let ha = HomeAgent::start(&lab, &[]);
    let in_sync = |n: usize| {
        let s = ha.stats();
        assert_eq!(s["maps_in_sync"], true, "{s}");
        assert_eq!(s["bindings"].as_array().map(Vec::len), Some(n), "{s}");
    };
    for i in 50..60 {
        ha.bind(&format!("192.0.2.{i}"), &care_of(&lab), &[]);
    }
    in_sync(10);
    // Moving a VM to another care-of address replaces its entry everywhere.
    ha.bind("192.0.2.55", "203.0.113.9", &[]);
    in_sync(10);
    let listed: serde_json::Value = serde_json::from_str(&ha.cli(&["list", "--json"])).unwrap();
    let moved = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["vm"] == "192.0.2.55")
        .unwrap();
    assert_eq!(moved["care_of"], "203.0.113.9");
    for i in 50..55 {
        ha.unbind(&format!("192.0.2.{i}"));
    }
    in_sync(5);
    // Refused requests change nothing.
    for bad in [
        vec!["bind", "192.0.2.60", "198.51.100.1"], // the HA itself
        vec!["bind", "192.0.2.60", "224.0.0.5"],
        vec!["bind", "0.0.0.0", "198.51.100.2"],
        vec!["bind", "192.0.2.60", "198.51.100.2", "--lifetime", "0"],
        vec!["unbind", "192.0.2.99"],
    ] {
        let socket = lab.control_socket();
        let mut args = bad.clone();
        args.extend(["--socket", socket.to_str().unwrap()]);
        let out = lab.homeward_cli(&args);
        assert!(!out.status.success(), "{bad:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    in_sync(5);
    stop_clean(ha);
}

#[test]
fn one_armed_mode_tunnels_back_out_of_the_lan_interface() {
    require_root();
    let lab = Topology::home_agent_lab("one");
    // The foreign hypervisor sits on the LAN segment in its own subnet, which
    // the HA also holds on lan0: one interface in, the same one out.
    let far = homeward_tests::Netns::new("one-far");
    far.disable_ipv6();
    let far_mac = Mac::derive("one-far", 1);
    homeward_tests::veth_pair(
        &homeward_tests::VethEnd::new(&far, "lan0", far_mac)
            .addr(Ipv4Addr::new(203, 0, 113, 2), 24),
        &homeward_tests::VethEnd::new(&lab.lan, "p-far", Mac::derive("one-far", 2)),
    );
    lab.lan.enslave("p-far", &lab.bridge);
    lab.ha
        .add_addr(&lab.ha_lan.name, Ipv4Addr::new(203, 0, 113, 1), 24);
    let socket = lab.control_socket();
    let mut child = lab.ha.spawn(&[
        homeward_tests::homeward_bin().to_str().unwrap(),
        "run",
        "--lan",
        &lab.ha_lan.name,
        "--address",
        "203.0.113.1",
        "--socket",
        socket.to_str().unwrap(),
        "--state-dir",
        lab.state_dir().to_str().unwrap(),
    ]);
    assert!(
        child.wait_for_output("homeward is running", Duration::from_secs(20)),
        "{}",
        child.stderr()
    );
    let cli = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--socket", socket.to_str().unwrap()]);
        let out = lab.homeward_cli(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cli(&["bind", "192.0.2.50", "203.0.113.2"]);
    let cap = Capture::start(&far, "lan0", "ip proto 4");
    lab.client
        .send_udp(&UdpSend::new(lab.vm_home, 9, 64).repeat(2, Duration::from_millis(100)));
    let packets = decode_ipip(&cap.stop()).packets;
    assert_eq!(packets.len(), 2, "{packets:#?}");
    for p in &packets {
        assert_eq!(p.outer.src, Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(p.outer.dst, Ipv4Addr::new(203, 0, 113, 2));
        assert_eq!(p.eth_src, Some(lab.ha_lan.mac), "out of the LAN interface");
        assert_eq!(p.eth_dst, Some(far_mac));
        assert_eq!(p.inner.as_ref().unwrap().dst, lab.vm_home);
    }
    let status = child.stop_with("INT", Duration::from_secs(10));
    let stderr = child.stderr();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("unaccounted 0"), "{stderr}");
}

#[test]
fn vlan_tagged_lan_traffic_is_answered_tagged_and_tunnelled_untagged() {
    require_root();
    let lab = Topology::home_agent_lab("vlan");
    // As on a real NIC, VLAN offload would move the tag out of the frame
    // before XDP sees it: keep tags inline on the way into the HA (the
    // README says to do the same on a gateway's LAN NIC).
    lab.lan
        .exec_ok(&["ethtool", "-K", &lab.ha_port, "txvlan", "off"]);
    lab.ha
        .exec_ok(&["ethtool", "-K", &lab.ha_lan.name, "rxvlan", "off"]);
    let ha = HomeAgent::start(&lab, &[]);
    ha.bind(&vm(&lab), &care_of(&lab), &[]);
    let lan_cap = Capture::start(&lab.client, &lab.client_lan.name, "arp or vlan");
    let wan_cap = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");
    // This kernel has no 802.1Q module, so scapy sends the tagged frames
    // from the client: an ARP request for the VM, then a UDP datagram to the
    // HA's MAC, both in VLAN 100.
    let script = format!(
        "from scapy.all import *\n\
         conf.verb = 0\n\
         me, ha = '{me}', '{ha}'\n\
         sendp(Ether(src=me, dst='ff:ff:ff:ff:ff:ff')/Dot1Q(vlan=100)/\
         ARP(op=1, hwsrc=me, psrc='{client}', pdst='{vm}'), iface='lan0')\n\
         sendp(Ether(src=me, dst=ha)/Dot1Q(vlan=100)/IP(src='{client}', dst='{vm}', ttl=64)/\
         UDP(sport=7000, dport=9)/Raw(bytes(range(100))), iface='lan0')\n",
        me = lab.client_lan.mac,
        ha = lab.ha_lan.mac,
        client = lab.client_lan.addr,
        vm = lab.vm_home,
    );
    lab.client
        .exec_ok(&[homeward_tests::decode::PYTHON, "-c", &script]);
    std::thread::sleep(Duration::from_millis(200));
    let arps = decode_arp(&lan_cap.stop());
    let reply = arps
        .iter()
        .find(|a| a.is_reply() && a.psrc == lab.vm_home)
        .unwrap_or_else(|| panic!("no tagged ARP reply: {arps:#?}"));
    assert_eq!(reply.hwsrc, lab.ha_lan.mac);
    assert_eq!(reply.hwdst, lab.client_lan.mac);
    assert_eq!(reply.vlan, Some(100), "the reply keeps the request's tag");
    let packets = decode_ipip(&wan_cap.stop()).packets;
    assert_eq!(packets.len(), 1, "{packets:#?}");
    let inner = packets[0].inner.as_ref().unwrap();
    assert_eq!(inner.src, lab.client_lan.addr);
    assert_eq!(inner.ttl, 63);
    assert_eq!(
        inner.l4.as_ref().unwrap().payload(),
        (0..100u8).collect::<Vec<_>>()
    );
    assert_eq!(
        packets[0].outer.len as usize,
        20 + inner.len as usize,
        "no tag inside"
    );
    stop_clean(ha);
}

#[test]
fn busy_polling_on_veth_stops_by_itself_and_gives_the_interrupt_settings_back() {
    require_root();
    let lab = Topology::home_agent_lab("bpoll");
    let gro = format!("/sys/class/net/{}/gro_flush_timeout", lab.ha_lan.name);
    let before = lab.ha.sh_ok(&format!("cat {gro}"));
    let ha = HomeAgent::start(&lab, &["--busy-poll"]);
    assert_eq!(
        lab.ha.sh_ok(&format!("cat {gro}")).trim(),
        "200000",
        "interrupts deferred for busy polling"
    );
    ha.bind(&vm(&lab), &care_of(&lab), &[]);
    lab.client
        .send_udp(&UdpSend::new(lab.vm_home, 9, 32).sport(7000));
    await_encapsulated(&ha, 1);
    // veth's XDP receive queue has no NAPI id for busy polling to run:
    // the worker found that with the first frame and undid the tuning,
    // which would otherwise hold every frame for gro_flush_timeout.
    assert_eq!(lab.ha.sh_ok(&format!("cat {gro}")), before);
    let t = ha.stop_with("INT");
    assert!(t.success, "{}", t.stderr);
    let unaccounted = t.unaccounted();
    assert!(
        !unaccounted.is_empty() && unaccounted.iter().all(|u| *u == 0),
        "leaked frames: {unaccounted:?}\n{}",
        t.stderr
    );
    assert!(
        t.stderr.contains("busy polling cannot reach the device"),
        "{}",
        t.stderr
    );
}

#[test]
fn two_queues_forward_with_one_worker_each() {
    require_root();
    let lab = Topology::home_agent_lab_with(
        "mq",
        LabOptions {
            queues: 2,
            ..LabOptions::default()
        },
    );
    let ha = HomeAgent::start(&lab, &["--queues", "2"]);
    ha.bind(&vm(&lab), &care_of(&lab), &[]);
    let cap = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");
    // Many flows, so the veth's queue selection spreads them.
    for sport in 7100..7132 {
        lab.client.send_udp(
            &UdpSend::new(lab.vm_home, 9, 32)
                .sport(sport)
                .repeat(2, Duration::ZERO),
        );
    }
    let stats = await_encapsulated(&ha, 64);
    let per_queue: Vec<u64> = stats["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["encapsulated"].as_u64().unwrap())
        .collect();
    assert_eq!(per_queue.len(), 2);
    assert!(
        per_queue.iter().all(|n| *n > 0),
        "one queue idle: {per_queue:?}"
    );
    let packets = decode_ipip(&cap.stop()).packets;
    assert_eq!(packets.len(), 64);
    // Each queue's Identification sequence is its own: none repeats.
    let ids: std::collections::HashSet<u16> = packets.iter().map(|p| p.outer.id).collect();
    assert_eq!(ids.len(), 64);
    stop_clean(ha);
}

#[test]
fn a_config_file_sets_what_flags_do_and_pins_workers() {
    require_root();
    let lab = Topology::home_agent_lab("cfg");
    let config = lab.dir().join("homeward.toml");
    std::fs::write(
        &config,
        "tunnel_mtu = 1400\nttl = 33\nworker_cpus = [1]\nmax_bindings = 1024\n",
    )
    .unwrap();
    let ha = HomeAgent::start(&lab, &["--config", config.to_str().unwrap()]);
    assert!(ha.stderr().contains("worker pinned"), "{}", ha.stderr());
    // The worker thread of queue 0 runs on CPU 1 only.
    let pid = ha.pid();
    let task = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "homeward-q0")
        })
        .expect("worker thread homeward-q0");
    let status = std::fs::read_to_string(task.path().join("status")).unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim);
    assert_eq!(allowed, Some("1"), "{status}");
    // ttl and tunnel_mtu from the file are in force.
    ha.bind(&vm(&lab), &care_of(&lab), &[]);
    let cap = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");
    lab.client
        .send_udp(&UdpSend::new(lab.vm_home, 9, 1400).df(false));
    let packets = decode_ipip(&cap.stop()).packets;
    assert!(
        packets.len() >= 2,
        "not fragmented to the file's MTU: {packets:#?}"
    );
    assert!(packets
        .iter()
        .all(|p| p.outer.ttl == 33 && p.outer.len <= 1400));
    stop_clean(ha);
}

/// One gateway of a keepalived pair: on standby it answers no ARP for a
/// bound VM (yet forwards what reaches it); `homeward role` with
/// keepalived's MASTER notify makes it answer with the pair's virtual MAC
/// and announce the VM at once; BACKUP silences it again, and a restart
/// comes back as the role file says.
#[test]
fn a_standby_answers_no_arp_until_keepalived_makes_it_active() {
    require_root();
    const VMAC: Mac = Mac([0x00, 0x00, 0x5e, 0x00, 0x01, 0x33]);
    let lab = Topology::home_agent_lab("vrrp");
    let config = lab.dir().join("pair.toml");
    std::fs::write(
        &config,
        format!("[failover]\nenabled = true\nlan_mac = \"{VMAC}\"\n"),
    )
    .unwrap();
    let config = config.display().to_string();
    let ha = HomeAgent::start(&lab, &["--config", &config]);
    let f = &ha.stats()["failover"];
    assert_eq!(
        (f["state"].as_str(), f["active"].as_bool()),
        (Some("backup"), Some(false)),
        "{f}"
    );

    // Standby: bound, but silent on the home link.
    let cap = Capture::start(&lab.client, &lab.client_lan.name, "arp");
    ha.bind(&vm(&lab), &care_of(&lab), &[]);
    lab.client.send_udp(&UdpSend::new(lab.vm_home, 9, 32));
    std::thread::sleep(Duration::from_millis(1200));
    let arps = decode_arp(&cap.stop());
    assert!(
        arps.iter()
            .all(|a| a.hwsrc != VMAC && a.hwsrc != lab.ha_lan.mac),
        "the standby spoke: {arps:#?}"
    );
    assert!(
        arps.iter().any(|a| a.is_request() && a.pdst == lab.vm_home),
        "{arps:#?}"
    );
    assert_eq!(ha.stats()["counters"]["arp_replies"], 0);
    // What reaches it anyway (a host with the virtual MAC cached) is forwarded.
    lab.client.ip(&[
        "neigh",
        "replace",
        &vm(&lab),
        "lladdr",
        &VMAC.to_string(),
        "dev",
        &lab.client_lan.name,
    ]);
    let tunnel = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");
    lab.client
        .send_udp(&UdpSend::new(lab.vm_home, 9, 32).repeat(3, Duration::from_millis(20)));
    let packets = decode_ipip(&tunnel.stop_after(Duration::from_millis(300))).packets;
    assert_eq!(packets.len(), 3, "{packets:#?}");
    lab.client.flush_neighbors(&lab.client_lan.name);

    // keepalived's notify: MASTER. Announced at once, answered from now on.
    let cap = Capture::start(&lab.client, &lab.client_lan.name, "arp");
    let out = ha.cli(&["role", "GROUP", "homeward", "MASTER", "100"]);
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (r["active"].as_bool(), r["announced"].as_u64()),
        (Some(true), Some(1)),
        "{r}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    lab.client.send_udp(&UdpSend::new(lab.vm_home, 9, 32));
    std::thread::sleep(Duration::from_millis(300));
    let arps = decode_arp(&cap.stop());
    five_announcements(&arps, lab.vm_home, VMAC);
    let neighbor = lab.client.neighbor(lab.vm_home).expect("neighbour entry");
    assert_eq!(neighbor.lladdr, Some(VMAC), "{neighbor:?}");
    let f = &ha.stats()["failover"];
    assert_eq!(
        (f["state"].as_str(), f["transitions"].as_u64()),
        (Some("master"), Some(1)),
        "{f}"
    );

    // BACKUP: silent again (an ARP request goes unanswered).
    ha.cli(&["role", "backup"]);
    let replies = ha.stats()["counters"]["arp_replies"].as_u64().unwrap();
    lab.client.flush_neighbors(&lab.client_lan.name);
    lab.client.send_udp(&UdpSend::new(lab.vm_home, 9, 32));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        ha.stats()["counters"]["arp_replies"].as_u64(),
        Some(replies)
    );
    let health: serde_json::Value = serde_json::from_str(ha.cli(&["health"]).trim()).unwrap();
    assert_eq!(health["healthy"], true, "{health}");
    stop_clean(ha);

    // The role file outlives the daemon: a restart comes back on standby
    // (last word BACKUP), and `homeward role` works while none runs.
    let socket = lab.control_socket();
    let role = lab.homeward_cli(&["role", "master", "--socket", &socket.to_string_lossy()]);
    assert!(
        role.status.success(),
        "{}",
        String::from_utf8_lossy(&role.stderr)
    );
    assert!(String::from_utf8_lossy(&role.stderr).contains("not running"));
    let ha = HomeAgent::start(&lab, &["--config", &config]);
    assert_eq!(
        ha.stats()["failover"]["active"],
        true,
        "the role file said master"
    );
    stop_clean(ha);
}

/// `homeward bind --file`: many VMs in one command, each served as `bind`
/// would; a refused line is named and nothing of its batch stays bound.
#[test]
fn a_bind_file_binds_many_vms_at_once_and_names_a_refused_line() {
    require_root();
    let lab = Topology::home_agent_lab("bulk");
    let ha = HomeAgent::start(&lab, &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vms.txt");
    let co = care_of(&lab);
    std::fs::write(
        &file,
        format!(
            "# VM CARE_OF [LIFETIME]\n192.0.2.50 {co}\n192.0.2.51 {co} 600\n\n192.0.2.52 {co}\n"
        ),
    )
    .unwrap();
    let out = ha.cli(&["bind", "--file", &file.to_string_lossy()]);
    assert!(out.starts_with("bound 3 new, rebound 0"), "{out}");
    let listed: Vec<String> = ha
        .list()
        .iter()
        .filter_map(|b| b["vm"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for vm in ["192.0.2.50", "192.0.2.51", "192.0.2.52"] {
        assert!(listed.iter().any(|l| l == vm), "{vm} not in {listed:?}");
    }
    // Served like any binding: proxy ARP and the tunnel.
    lab.client
        .send_udp(&UdpSend::new(Ipv4Addr::new(192, 0, 2, 51), 9, 16));
    await_encapsulated(&ha, 1);

    // The home agent's own address cannot be a VM's: line 3 is refused,
    // and line 2's VM, in the same batch, is not left bound.
    std::fs::write(
        &file,
        format!("192.0.2.52 {co}\n192.0.2.53 {co}\n192.0.2.1 {co}\n"),
    )
    .unwrap();
    let socket = lab.control_socket();
    let failed = lab.homeward_cli(&[
        "bind",
        "--file",
        &file.to_string_lossy(),
        "--socket",
        &socket.to_string_lossy(),
    ]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(ha.binding("192.0.2.53").is_none());
    assert_eq!(ha.list().len(), 3);
    stop_clean(ha);
}

/// Many VMs announced at once (a bind file) start their gratuitous ARPs at
/// `announce_rate` a second, not all at once; a VM that moves meanwhile is
/// announced at once, ahead of them; in the end each had its five.
#[test]
fn a_bind_files_announcements_are_paced_and_a_moved_vm_goes_ahead() {
    require_root();
    const RATE: f64 = 20.0;
    let lab = Topology::home_agent_lab("pace");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(&config, format!("announce_rate = {RATE}\n")).unwrap();
    let ha = HomeAgent::start(&lab, &["--config", &config.to_string_lossy()]);
    let co = care_of(&lab);
    let vms: Vec<Ipv4Addr> = (100..200).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
    let file = dir.path().join("vms.txt");
    let lines: String = vms.iter().map(|v| format!("{v} {co}\n")).collect();
    std::fs::write(&file, lines).unwrap();
    let cap = Capture::start(&lab.client, &lab.client_lan.name, "arp");
    let started = Instant::now();
    let out = ha.cli(&["bind", "--file", &file.to_string_lossy()]);
    assert!(out.starts_with("bound 100 new"), "{out}");
    // A migration meanwhile.
    ha.bind(&vm(&lab), &co, &[]);
    let waiting = ha.stats()["announcements_waiting"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let arps = decode_arp(&cap.stop());
    let elapsed = started.elapsed().as_secs_f64();

    five_announcements(&arps, lab.vm_home, lab.ha_lan.mac);
    let begun: HashSet<Ipv4Addr> = arps
        .iter()
        .filter(|a| a.is_gratuitous() && vms.contains(&a.psrc))
        .map(|a| a.psrc)
        .collect();
    // One step (20 ms) at once, then RATE a second.
    let most = 1.0 + RATE * elapsed;
    assert!(
        !begun.is_empty() && begun.len() as f64 <= most,
        "{} of the file's VMs announced in {elapsed:.2} s at {RATE} a second",
        begun.len()
    );
    assert!(waiting >= 50, "{waiting} waiting right after the file");

    // All of them in the end, five each.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let stats = ha.stats();
        let sent = stats["counters"]["announcements"].as_u64().unwrap();
        if (stats["announcements_waiting"] == 0 && sent == 5 * 101) || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stats["announcements_waiting"], 0, "{stats}");
    assert_eq!(
        stats["counters"]["announcements"].as_u64(),
        Some(5 * 101),
        "{stats}"
    );
    eprintln!(
        "{} of 100 paced VMs announced in the first {elapsed:.2} s; {waiting} waited",
        begun.len()
    );
    stop_clean(ha);
}
