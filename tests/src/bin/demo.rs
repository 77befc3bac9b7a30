//! `scripts/demo.sh`: homeward at work in a self-contained namespace lab.
//!
//! A client on the home LAN, the home agent (HA) running homeward, a
//! foreign hypervisor at the care-of address. The demo binds a VM's home
//! address, shows the client's kernel resolving it to the HA, its UDP and
//! TCP traffic arriving IPv4-in-IPv4 at the foreign host (decoded by
//! scapy), a short load to show the forwarding rate, the counters, and the
//! give-back when the VM comes home.

use std::time::Duration;

use homeward_tests::agent::HomeAgent;
use homeward_tests::{decode_arp, decode_ipip, require_root, Capture, Topology, UdpSend};

const VM_MAC: &str = "02:00:5e:00:00:50";

fn step(text: &str) {
    println!("\n== {text}");
}

fn main() {
    require_root();
    let lab = Topology::home_agent_lab("demo");
    step("lab");
    println!(
        "client {} ({}) -- home LAN -- HA {} / {} -- WAN -- foreign hypervisor {}",
        lab.client_lan.addr, lab.client_lan.mac, lab.ha_lan.addr, lab.ha_wan.addr, lab.care_of
    );
    println!(
        "VM home address {} (the VM has migrated to the foreign hypervisor)",
        lab.vm_home
    );

    step("homeward run");
    let ha = HomeAgent::start(&lab, &[]);
    for line in ha.stderr().lines() {
        println!("  {line}");
    }

    step(&format!("homeward bind {} {}", lab.vm_home, lab.care_of));
    let arp_cap = Capture::start(&lab.client, &lab.client_lan.name, "arp");
    let wan_cap = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");
    print!(
        "  {}",
        ha.cli(&[
            "bind",
            &lab.vm_home.to_string(),
            &lab.care_of.to_string(),
            "--vm-mac",
            VM_MAC
        ])
    );
    std::thread::sleep(Duration::from_millis(900));

    step("client sends UDP and opens TCP to the VM's home address");
    let udp = lab.client.send_udp(
        &UdpSend::new(lab.vm_home, 7, 0)
            .payload(b"hello from the home LAN".to_vec())
            .sport(5555),
    );
    println!("  UDP datagrams sent: {}", udp.sent());
    let _ = lab.client.tcp_connect(
        lab.vm_home,
        80,
        5556,
        b"GET / HTTP/1.0\r\n\r\n",
        Duration::from_millis(1200),
    );
    if let Some(n) = lab.client.neighbor(lab.vm_home) {
        println!(
            "  client's ARP cache: {} is at {} (the HA's LAN MAC is {})",
            n.dst,
            n.lladdr.map(|m| m.to_string()).unwrap_or("?".into()),
            lab.ha_lan.mac
        );
    }
    let arps = decode_arp(&arp_cap.stop());
    for a in arps.iter().filter(|a| a.psrc == lab.vm_home) {
        println!(
            "  ARP {:>8} {} is-at {}{}",
            if a.is_reply() { "reply" } else { "request" },
            a.psrc,
            a.hwsrc,
            if a.is_gratuitous() {
                "  (gratuitous announcement)"
            } else {
                ""
            }
        );
    }

    step("what the foreign hypervisor received (decoded by scapy)");
    let capture = decode_ipip(&wan_cap.stop());
    for p in &capture.packets {
        let o = &p.outer;
        let inner = match &p.inner {
            Some(i) => format!(
                "{} -> {} proto {} ttl {} ports {:?}",
                i.src,
                i.dst,
                i.proto,
                i.ttl,
                i.ports()
            ),
            None => "(outer fragment)".into(),
        };
        println!(
            "  IPIP {} -> {} ttl {} id {:#06x} df {} csum ok {:?} | inner {inner}",
            o.src, o.dst, o.ttl, o.id, o.df, o.checksum_valid
        );
    }

    step("a short load: 2 s of 64-byte UDP from the client");
    let before = ha.counter("counters", "encapsulated");
    let load = lab.client.udp_flood(lab.vm_home, 9, 18, 2.0);
    std::thread::sleep(Duration::from_millis(200));
    let forwarded = ha.counter("counters", "encapsulated") - before;
    println!(
        "  the client's kernel sent {} datagrams in {:.2} s; homeward encapsulated {forwarded} \
         ({:.0} packets/s). The sender (one Python socket loop) is the limit here; \
         benches/ has the forwarding harness.",
        load.sent,
        load.seconds,
        forwarded as f64 / load.seconds
    );

    step("homeward stats");
    print!("{}", ha.cli(&["stats"]));
    step("homeward list");
    print!("{}", ha.cli(&["list"]));

    step(&format!(
        "the VM comes home: homeward unbind {}",
        lab.vm_home
    ));
    let arp_cap = Capture::start(&lab.client, &lab.client_lan.name, "arp");
    print!("  {}", ha.cli(&["unbind", &lab.vm_home.to_string()]));
    std::thread::sleep(Duration::from_millis(1000));
    for a in decode_arp(&arp_cap.stop())
        .iter()
        .filter(|a| a.psrc == lab.vm_home && a.is_gratuitous())
    {
        println!(
            "  ARP announcement {} is-at {} (the VM's own MAC)",
            a.psrc, a.hwsrc
        );
    }

    step("homeward stops (SIGINT): every frame accounted for");
    let t = ha.stop();
    for line in t.stderr.lines().filter(|l| l.contains("frames")) {
        println!("  {line}");
    }
    if !t.success || t.unaccounted().iter().any(|u| *u != 0) {
        eprintln!("demo: homeward did not stop cleanly");
        std::process::exit(1);
    }
    println!("\ndemo done; the lab is removed.");
}
