//! Self-test of the namespace lab, without homeward: the topology routes,
//! captures and decoders see what the kernel sends, and every guard cleans
//! up, also when a test panics. Needs root.

use std::net::Ipv4Addr;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use homeward_tests::decode::{self, ARP_REPLY, ARP_REQUEST};
use homeward_tests::topology::{CARE_OF_ADDR, CLIENT_ADDR, HA_LAN_ADDR, HA_WAN_ADDR};
use homeward_tests::{
    decode_arp, decode_ipip, netns_exists, payload_pattern, Capture, LabOptions, Mac, Netns,
    Topology, UdpSend,
};

fn assert_gone(names: &[String]) {
    for name in names {
        assert!(!netns_exists(name), "namespace {name} still exists");
        let listed = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "ip netns list still shows {name}"
        );
    }
}

fn names(lab: &Topology) -> Vec<String> {
    [&lab.client, &lab.lan, &lab.ha, &lab.foreign]
        .iter()
        .map(|ns| ns.name().to_string())
        .collect()
}

#[test]
fn lab_routes_and_arp_is_captured() {
    let lab = Topology::home_agent_lab("arp");
    let lab_names = names(&lab);
    for ns in [&lab.client, &lab.lan, &lab.ha, &lab.foreign] {
        assert!(ns.name().starts_with("hw-arp-"), "{}", ns.name());
        assert!(ns.exists());
    }
    assert_eq!(lab.ha.sysctl_get("net.ipv4.ip_forward"), "1");
    assert_eq!(lab.client.mac_of("lan0"), lab.client_lan.mac);
    assert_eq!(lab.ha.mac_of("lan0"), lab.ha_lan.mac);
    assert_eq!(lab.ha.mac_of("wan0"), lab.ha_wan.mac);
    assert_eq!(lab.foreign.mac_of("wan0"), lab.foreign_wan.mac);
    assert_eq!(lab.client_lan.mac, Mac::derive("arp", 0x10));

    let arp = Capture::start(&lab.client, "lan0", "arp");
    assert!(
        lab.client.ping_ok(HA_LAN_ADDR, 2),
        "client cannot ping the HA"
    );
    assert!(
        lab.ha.ping_ok(CARE_OF_ADDR, 2),
        "HA cannot ping the foreign hypervisor"
    );
    assert!(
        lab.client.ping_ok(CARE_OF_ADDR, 2),
        "client cannot reach the foreign side through the HA"
    );
    let pcap = arp.stop();

    let packets = decode_arp(&pcap);
    let request = packets
        .iter()
        .find(|p| p.op == ARP_REQUEST && p.pdst == HA_LAN_ADDR)
        .unwrap_or_else(|| panic!("no ARP request for the HA in {packets:#?}"));
    assert_eq!(request.psrc, CLIENT_ADDR);
    assert_eq!(request.hwsrc, lab.client_lan.mac);
    assert_eq!(request.eth_src, Some(lab.client_lan.mac));
    assert_eq!(request.eth_dst, Some(Mac::BROADCAST));
    assert!(!request.is_gratuitous());
    let reply = packets
        .iter()
        .find(|p| p.op == ARP_REPLY && p.psrc == HA_LAN_ADDR)
        .unwrap_or_else(|| panic!("no ARP reply from the HA in {packets:#?}"));
    assert_eq!(reply.hwsrc, lab.ha_lan.mac);
    assert_eq!(reply.hwdst, lab.client_lan.mac);
    assert_eq!(reply.pdst, CLIENT_ADDR);
    assert!(reply.time >= request.time);

    let gw = lab
        .client
        .neighbor(HA_LAN_ADDR)
        .expect("client has a neighbour entry for its gateway");
    assert_eq!(gw.dev, "lan0");
    assert_eq!(gw.lladdr, Some(lab.ha_lan.mac));
    assert!(gw.is_resolved());

    let route = lab.client.route_get(lab.vm_home);
    assert_eq!(route.dev.as_deref(), Some("lan0"));
    assert_eq!(route.via, None, "the VM home address is on-link");
    assert_eq!(route.src, Some(CLIENT_ADDR));
    let route = lab.foreign.route_get(lab.vm_home);
    assert_eq!(route.via, Some(HA_WAN_ADDR));
    assert_eq!(route.dev.as_deref(), Some("wan0"));

    drop(lab);
    assert_gone(&lab_names);
}

#[test]
fn udp_tcp_and_fragmentation_helpers() {
    let lab = Topology::home_agent_lab_with(
        "frag",
        LabOptions {
            wan_mtu: 1400,
            gro_on_ha_peers: true,
            ..LabOptions::default()
        },
    );
    assert!(lab.lan.gro(&lab.ha_port) && lab.foreign.gro("wan0"));
    lab.client.set_gro("lan0", false);
    assert!(!lab.client.gro("lan0"));
    // Warm the neighbour caches so the captures hold only the datagrams.
    assert!(lab.client.ping_ok(CARE_OF_ADDR, 1));

    let listener = lab.foreign.udp_listen(5000);
    let cap = Capture::start(&lab.foreign, "wan0", "udp or (ip[6:2] & 0x1fff != 0)");
    // DF off, larger than the WAN MTU: the HA fragments when forwarding.
    let big = UdpSend::new(CARE_OF_ADDR, 5000, 2000).sport(40001);
    let report = lab.client.send_udp(&big);
    assert_eq!(report.sport, 40001);
    assert_eq!(report.sent(), 1, "{report:?}");
    // Small, DF on: passes whole.
    let small = UdpSend::new(CARE_OF_ADDR, 5000, 100)
        .df(true)
        .payload(payload_pattern(100, 7));
    assert_eq!(lab.client.send_udp(&small).sent(), 1);
    let got = listener.wait_for(2, Duration::from_secs(5));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].src, CLIENT_ADDR);
    assert_eq!(got[0].payload(), payload_pattern(2000, 0));
    assert_eq!(got[1].payload(), payload_pattern(100, 7));
    let pcap = cap.stop();
    assert!(
        std::fs::metadata(&pcap).map(|m| m.len()).unwrap_or(0) > 2000,
        "capture of {} is too small",
        pcap.display()
    );

    // DF on and too big for the WAN: the HA answers "fragmentation needed",
    // the client learns the path MTU, and its next send fails.
    let df = UdpSend::new(CARE_OF_ADDR, 5000, 1472)
        .df(true)
        .repeat(3, Duration::from_millis(100));
    let report = lab.client.send_udp(&df);
    assert!(
        report.errors().contains(&"EMSGSIZE"),
        "no EMSGSIZE after frag-needed: {report:?}"
    );
    assert_eq!(report.path_mtu, Some(1400));
    let route = lab.client.route_get(CARE_OF_ADDR);
    assert_eq!(route.mtu, Some(1400), "{}", route.raw);
    assert!(route.cached);

    // TCP: refused by the foreign kernel; unanswered for the VM address
    // (no host holds it), which the client ARPs for in vain.
    let refused = lab
        .client
        .tcp_connect(CARE_OF_ADDR, 9, 0, b"x", Duration::from_secs(2));
    assert_eq!(
        refused.error.as_deref(),
        Some("ECONNREFUSED"),
        "{refused:?}"
    );
    let arp = Capture::start(&lab.client, "lan0", "arp");
    let lost = lab.client.tcp_connect(
        lab.vm_home,
        80,
        40002,
        b"hello",
        Duration::from_millis(1500),
    );
    assert!(!lost.connected);
    assert_eq!(lost.sport, 40002);
    let who_has: Vec<_> = decode_arp(&arp.stop())
        .into_iter()
        .filter(|p| p.is_request() && p.pdst == lab.vm_home)
        .collect();
    assert!(!who_has.is_empty(), "client sent no ARP request for the VM");
    assert_eq!(who_has[0].hwsrc, lab.client_lan.mac);
}

/// The IPIP decoder on real captured frames: scapy in the HA namespace
/// sends hand-made IPv4-in-IPv4 packets to the foreign side.
#[test]
fn ipip_decoder_on_captured_frames() {
    let lab = Topology::home_agent_lab("ipip");
    assert!(lab.ha.ping_ok(CARE_OF_ADDR, 1));
    let cap = Capture::start(&lab.foreign, "wan0", "ip proto 4");
    let script = format!(
        r#"
from scapy.all import Ether, IP, UDP, TCP, Raw, fragment, sendp
eth = Ether(src="{ha_mac}", dst="{fa_mac}")
outer = dict(src="{ha}", dst="{coa}", ttl=64, flags="DF", tos=0)
inner = IP(src="{cl}", dst="{vm}", ttl=63, id=4242) / UDP(sport=1234, dport=5678) / Raw(bytes(i % 256 for i in range(3000)))
frames = [eth / IP(**outer) / f for f in fragment(inner, 1376)]
frames.append(eth / IP(**outer) / (IP(src="{cl}", dst="{vm}", ttl=63) / TCP(sport=40000, dport=80, flags="S")))
frames.append(eth / IP(src="{ha}", dst="{coa}", chksum=0xbeef) / IP(src="{cl}", dst="{vm}") / UDP(sport=1, dport=2) / b"bad outer")
sendp(frames, iface="wan0", verbose=False)
"#,
        ha_mac = lab.ha_wan.mac,
        fa_mac = lab.foreign_wan.mac,
        ha = HA_WAN_ADDR,
        coa = CARE_OF_ADDR,
        cl = CLIENT_ADDR,
        vm = lab.vm_home,
    );
    lab.ha.exec_ok(&[decode::PYTHON, "-c", &script]);
    let decoded = decode_ipip(&cap.stop());

    assert_eq!(decoded.packets.len(), 5, "{decoded:#?}");
    for p in &decoded.packets[..4] {
        assert_eq!(p.eth_src, Some(lab.ha_wan.mac));
        assert_eq!(p.outer.src, HA_WAN_ADDR);
        assert_eq!(p.outer.dst, CARE_OF_ADDR);
        assert_eq!(p.outer.proto, 4);
        assert!(p.outer.df && !p.outer.is_fragment());
        assert_eq!(p.outer.checksum_valid, Some(true));
        let inner = p.inner.as_ref().expect("inner header");
        assert_eq!(inner.dst, lab.vm_home);
        assert_eq!(inner.checksum_valid, Some(true));
        assert_eq!(p.outer.len as usize, 20 + inner.len as usize);
    }
    let first = decoded.packets[0].inner.as_ref().unwrap();
    assert!(first.mf && first.frag == 0);
    assert_eq!(first.ports(), Some((1234, 5678)));
    assert_eq!(decoded.packets[4].outer.checksum_valid, Some(false));

    let whole: Vec<_> = decoded
        .inner_datagrams
        .iter()
        .filter(|d| d.ip.id == 4242)
        .collect();
    assert_eq!(whole.len(), 1, "{:#?}", decoded.inner_datagrams);
    assert!(whole[0].complete);
    assert_eq!(whole[0].fragments, 3);
    assert_eq!(whole[0].ip.len, 20 + 8 + 3000);
    let l4 = whole[0].ip.l4.as_ref().unwrap();
    assert_eq!(l4.checksum_valid, Some(true));
    assert_eq!(
        l4.payload(),
        (0..3000).map(|i| (i % 256) as u8).collect::<Vec<_>>()
    );
    let syn = decoded
        .inner_datagrams
        .iter()
        .find(|d| d.ip.proto == 6)
        .expect("the SYN");
    let l4 = syn.ip.l4.as_ref().unwrap();
    assert_eq!(l4.tcp_flags.as_deref(), Some("S"));
    assert_eq!(l4.checksum_valid, Some(true));
}

#[test]
fn guards_clean_up_processes_and_namespaces() {
    let lab = Topology::home_agent_lab("drop");
    let lab_names = names(&lab);
    let extra = lab.join_lan("hypa", Ipv4Addr::new(192, 0, 2, 20));
    assert!(
        extra.ns.ping_ok(CLIENT_ADDR, 1),
        "joined host is on the LAN"
    );
    let extra_name = extra.ns.name().to_string();

    let mut sleeper = lab.ha.spawn(&["sleep", "600"]);
    // An orphan that no guard owns: only the namespace cleanup finds it.
    lab.foreign
        .sh_ok("setsid sleep 600 >/dev/null 2>&1 </dev/null &");
    let orphan_pid = lab.foreign.pids();
    assert!(!orphan_pid.is_empty());
    assert!(sleeper.is_running());
    assert_eq!(lab.ha.pids(), vec![sleeper.id()]);

    drop(extra);
    drop(lab);
    assert_gone(&lab_names);
    assert_gone(&[extra_name]);
    assert!(
        sleeper.wait_timeout(Duration::from_secs(2)).is_some(),
        "the spawned process outlived its namespace"
    );
    for pid in orphan_pid {
        // Killed, then reaped by init: give init a moment.
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            !Path::new(&format!("/proc/{pid}")).exists()
        });
        assert!(gone, "orphan {pid} outlived its namespace");
    }

    // The child guard alone kills its process.
    let ns = Netns::new("child");
    let child = ns.spawn(&["sleep", "600"]);
    let pid = child.id();
    drop(child);
    assert!(ns.pids().is_empty(), "pid {pid} survived its guard");
}

#[test]
fn guards_clean_up_during_panic() {
    let seen: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let lab = Topology::home_agent_lab("panic");
        let ns = Netns::new("panic-solo");
        let _child = lab.ha.spawn(&["sleep", "600"]);
        let mut s = seen.lock().unwrap();
        s.extend(names(&lab));
        s.push(ns.name().to_string());
        drop(s);
        panic!("deliberate panic inside a lab");
    }));
    assert!(result.is_err(), "the closure was meant to panic");
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 5);
    assert_gone(&seen);
}

#[test]
fn exec_helpers_and_homeward_lookup() {
    let ns = Netns::new("exec");
    let out = ns.exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // The command really runs inside the namespace: only lo exists there.
    assert_eq!(
        ns.sh_ok("ls /sys/class/net")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["lo"]
    );
    let failed = panic::catch_unwind(AssertUnwindSafe(|| ns.exec_ok(&["false"])));
    assert!(failed.is_err(), "exec_ok must panic on failure");
    let started = std::time::Instant::now();
    let hung = panic::catch_unwind(AssertUnwindSafe(|| {
        ns.exec_timeout(&["sleep", "30"], Duration::from_millis(200))
    }));
    assert!(hung.is_err(), "exec_timeout must panic when time runs out");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(ns.pids().is_empty(), "the timed-out command was not killed");

    // The homeward binary is found next to the test executable, or the
    // panic says how to build it.
    match panic::catch_unwind(homeward_tests::homeward_bin) {
        Ok(path) => {
            assert!(path.is_file());
            assert_eq!(path.file_name().unwrap(), "homeward");
        }
        Err(e) => {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains("cargo build -p homeward"), "{msg}");
        }
    }
}
