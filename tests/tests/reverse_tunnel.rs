//! The reverse tunnel (RFC 3024) end to end with a real agent: a VM away
//! from home answers a home-link host the home agent has never talked to.
//! Its first datagrams wait in the HA's neighbour queue while the host's
//! MAC resolves, as the kernel's ARP queue would keep them, rather than
//! being dropped. Needs root and `cargo build --release -p homeward`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use homeward_tests::agent::{key_file, HomeAgent};
use homeward_tests::capture::Capture;
use homeward_tests::decode::{decode_ipv4, script, PYTHON};
use homeward_tests::foreign_agent::ForeignAgentLab;
use homeward_tests::{homeward_bin, require_root, Topology, UdpSend};

const KEY: &str = "726576657273652d74756e6e656c2d6b65792d3031";
const VM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 52);
const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);

#[test]
fn datagrams_to_an_unresolved_home_link_host_wait_for_its_mac() {
    require_root();
    let lab = Topology::home_agent_lab("nq");
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), 256, KEY, &format!("{VM}/32"));
    let ha = HomeAgent::start(&lab, &["--registration-keys", keys.to_str().unwrap()]);
    let fa = ForeignAgentLab::new(&lab, "nq", dir.path(), &keys, VM, 1500, &[]);
    let mut agent = fa.spawn(&lab);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ha.binding(&VM.to_string()).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ha.binding(&VM.to_string()).is_some(), "{}", agent.stderr());

    // A host that joins the home LAN now: nobody has resolved it.
    let host = lab.join_lan("host", HOST);
    let neigh = lab.ha.ip(&["neigh", "show", &HOST.to_string()]);
    assert!(
        neigh.trim().is_empty(),
        "the HA knows the host already: {neigh}"
    );
    let listener = host.ns.udp_listen(7000);
    // Back to back: all five reach the HA before any ARP reply can.
    let sent = fa
        .vm
        .send_udp(&UdpSend::new(HOST, 7000, 64).repeat(5, Duration::ZERO));
    assert_eq!(sent.sent(), 5, "{sent:?}");
    let got = listener.wait_for(5, Duration::from_secs(3));
    let stats = ha.stats();
    assert_eq!(got.len(), 5, "{stats}");
    let counters = &stats["counters"];
    let queued = counters["neighbor_queued"].as_u64().unwrap();
    assert!(queued >= 1, "nothing waited for the MAC: {stats}");
    assert_eq!(
        counters["neighbor_released"].as_u64(),
        Some(queued),
        "{stats}"
    );
    assert_eq!(
        stats["drops"]["no_lan_neighbor"].as_u64(),
        Some(0),
        "{stats}"
    );
    assert_eq!(
        stats["drops"]["neighbor_queue_full"].as_u64(),
        Some(0),
        "{stats}"
    );
    eprintln!("{queued} of 5 datagrams waited for the host's MAC; all 5 delivered");

    let status = agent.stop_with("INT", Duration::from_secs(10));
    assert!(status.success(), "{}", agent.stderr());
    assert!(ha.stop().success);
}

/// A guest with QEMU's default virtio-net (checksum offload and TSO on)
/// hands its tap TCP super-frames of up to 64 KiB with unfinished
/// checksums. The agent receives each in pieces (AF_XDP multi-buffer), cuts
/// it into segments that fit the tunnel with their checksums finished, and
/// tunnels them in order; the home link host gets every byte.
#[test]
fn a_tso_super_frame_from_a_default_guest_nic_is_segmented_into_the_tunnel() {
    require_root();
    let lab = Topology::home_agent_lab("tso");
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), 256, KEY, &format!("{VM}/32"));
    let ha = HomeAgent::start(&lab, &["--registration-keys", keys.to_str().unwrap()]);
    let fa = ForeignAgentLab::on_tap(&lab, "tso", dir.path(), &keys, VM, &[]);
    let mut agent = fa.spawn(&lab);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ha.binding(&VM.to_string()).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ha.binding(&VM.to_string()).is_some(), "{}", agent.stderr());
    let host = lab.join_lan("host", HOST);
    // AF_XDP's transmissions bypass the sender's packet taps, and XDP takes
    // the tunnel before the HA's: what arrives is seen at the host.
    let at_host = Capture::start(&host.ns, &host.iface.name, "tcp");

    // 20,000 bytes in segments of 1448: the guest's view; the agent cuts
    // to what its 1500-byte tunnel carries: 1460 - 20 = 1440 per segment.
    const LEN: usize = 20_000;
    // One super-frame of LEN bytes from the VM's tap, its data starting at `seq`.
    let super_frame = |seq: u32| {
        let written = lab.foreign.exec_ok(&[
            PYTHON,
            &script("tap_tso.py").to_string_lossy(),
            "vmlink",
            &fa.vmlink_mac.to_string(),
            &fa.vm_if.mac.to_string(),
            &VM.to_string(),
            &HOST.to_string(),
            "5001",
            "5002",
            &seq.to_string(),
            &LEN.to_string(),
            "1448",
        ]);
        let written: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(
            written["frame"].as_u64(),
            Some(54 + LEN as u64),
            "{written}"
        );
    };
    super_frame(1000);
    std::thread::sleep(Duration::from_millis(500));
    let delivered = decode_ipv4(&at_host.stop());

    let stats = agent_stats(&fa);
    let segments: Vec<_> = delivered
        .iter()
        .filter(|i| i.src == VM && i.dst == HOST)
        .collect();
    assert_eq!(segments.len(), LEN.div_ceil(1440), "{stats}");
    let mut data = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        let l4 = s.l4.as_ref().expect("TCP");
        assert_eq!(l4.checksum_valid, Some(true), "segment {i}: {s:?}");
        assert_eq!(s.checksum_valid, Some(true), "segment {i}");
        assert_eq!(l4.tcp_seq, Some(1000 + (i * 1440) as u32), "in order");
        assert!(
            usize::from(s.len) + 20 <= 1500,
            "fitted the tunnel: {}",
            s.len
        );
        data.extend(l4.payload());
    }
    let want: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    assert!(data == want, "the segments carry the super-frame's data");
    let counters = &stats["datapath"]["counters"];
    assert_eq!(counters["segmented"].as_u64(), Some(1), "{stats}");
    assert_eq!(
        counters["segments_out"].as_u64(),
        Some(segments.len() as u64),
        "{stats}"
    );
    // The HA decapsulated every segment.
    let ha_stats = ha.stats();
    assert_eq!(
        ha_stats["counters"]["decapsulated"].as_u64(),
        Some(segments.len() as u64),
        "{ha_stats}"
    );
    assert_eq!(
        ha_stats["counters"]["decapsulated_bytes"].as_u64(),
        Some((LEN + 40 * segments.len()) as u64),
        "{ha_stats}"
    );
    eprintln!(
        "one {LEN}-byte super-frame: {} segments through the tunnel, all delivered",
        segments.len()
    );

    // The host now announces MSS 1360, as a client behind a VPN does: its
    // SYN comes out of the tunnel at the agent, which cuts the next
    // super-frame to what the host asked for (1360 data bytes a segment, no
    // TCP options here), not to the tunnel's 1440.
    host.ns.exec_ok(&[
        "ip",
        "route",
        "replace",
        &format!("{VM}/32"),
        "dev",
        &host.iface.name,
        "advmss",
        "1360",
    ]);
    let _ = host.ns.exec_timeout(
        &["nc", "-z", "-w", "1", &VM.to_string(), "5001"],
        Duration::from_secs(5),
    );
    let at_host = Capture::start(&host.ns, &host.iface.name, "tcp");
    super_frame(100_000);
    std::thread::sleep(Duration::from_millis(500));
    let delivered = decode_ipv4(&at_host.stop());
    let stats = agent_stats(&fa);
    let sizes: Vec<usize> = delivered
        .iter()
        .filter(|i| i.src == VM && i.dst == HOST)
        .map(|s| s.l4.as_ref().expect("TCP").payload().len())
        .collect();
    assert_eq!(sizes.len(), LEN.div_ceil(1360), "{sizes:?} {stats}");
    assert!(sizes.iter().all(|n| *n <= 1360), "{sizes:?}");
    let counters = &stats["datapath"]["counters"];
    assert_eq!(counters["segmented"].as_u64(), Some(2), "{stats}");
    assert_eq!(counters["segmented_to_path"].as_u64(), Some(1), "{stats}");

    let status = agent.stop_with("INT", Duration::from_secs(10));
    assert!(status.success(), "{}", agent.stderr());
    assert!(ha.stop().success);
}

/// `homeward stats --json` of the lab's agent.
#[track_caller]
fn agent_stats(fa: &ForeignAgentLab) -> serde_json::Value {
    let out = std::process::Command::new(homeward_bin())
        .args(["stats", "--json", "--socket"])
        .arg(&fa.socket)
        .output()
        .expect("homeward stats");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stats is not JSON ({e}): {out:?}"))
}
