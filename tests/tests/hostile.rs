//! Hostile input end to end: tens of thousands of malformed, truncated,
//! lying and spoofed frames at both interfaces of a running `homeward run`
//! (with a binding, so that they reach the AF_XDP path), then tens of
//! thousands of malformed, bit-flipped and replayed RFC 5944 registrations.
//! homeward must stay up, count every class under a drop reason or a
//! steering counter, keep forwarding real traffic, keep its binding table,
//! log in aggregate, and stop with every UMEM frame accounted for.
//!
//! Frames are written raw with an AF_PACKET socket from inside the lab's
//! namespaces (`tests/scapy/hostile.py`, `tests/scapy/hostile_mip.py`);
//! nothing is sent from the root namespace.
//! A second test does the same at a foreign agent (`homeward agent`, its VM
//! a namespace, QMP a stand-in: `tests/scapy/fake_qmp.py`).
//! Needs root and `cargo build --release -p homeward`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use homeward_tests::agent::HomeAgent;
use homeward_tests::decode::{script, PYTHON};
use homeward_tests::foreign_agent::ForeignAgentLab;
use homeward_tests::{
    decode_ipip, homeward_bin, payload_pattern, require_root, Capture, Iface, LabOptions, Mac,
    Netns, Topology, UdpSend,
};
use serde_json::Value;

/// Frames per class and interface.
const PER_CLASS: usize = 1200;
/// Registration datagrams per class (9 classes).
const REG_PER_CLASS: usize = 2300;
/// SPI 256 (HMAC-SHA256) may register 192.0.2.51 only.
const KEY: &str = "5ca1ab1e00112233445566778899aabbccddeeff0011223344556677";
const REG_VM: &str = "192.0.2.51";
/// Link MTU of the lab: frames larger than a UMEM frame's room (2048 B less
/// XDP's 256 B of headroom) fit on the wire. A veth with a (non-frags) XDP
/// program takes at most about 3500.
const MTU: u32 = 3500;

/// Pipeline drop reasons only (not the worker's or the kernel's).
const NOT_PIPELINE: &[&str] = &[
    "tx_ring_full",
    "no_free_frame",
    "bad_verdict",
    "xsk_rx_ring_full",
    "xsk_rx_dropped",
    "xsk_rx_invalid",
    "xsk_tx_invalid",
];

const STEERING: &[&str] = &[
    "steering.steered_ipv4",
    "steering.steered_arp",
    "steering.steered_ipip",
    "steering.passed",
    "steering.malformed_l2",
    "steering.malformed_l3",
    "steering.unknown_ingress",
    "steering.dropped_ipip",
];

/// One hostile class: which counters must absorb it (the sum of their
/// deltas, at least `min` of what was sent and at most what was sent plus
/// background noise) and which must not move.
struct Class {
    name: &'static str,
    absorb: &'static [&'static str],
    min: f64,
    still: &'static [&'static str],
}

const fn class(
    name: &'static str,
    absorb: &'static [&'static str],
    still: &'static [&'static str],
) -> Class {
    Class {
        name,
        absorb,
        min: 0.97,
        still,
    }
}

const NO_DECAP: &[&str] = &["counters.decapsulated"];
const NOT_STEERED: &[&str] = &[
    "steering.steered_ipv4",
    "steering.steered_ipip",
    "steering.steered_arp",
];

/// The classes both interfaces get.
fn common_classes() -> Vec<Class> {
    vec![
        class("random_ethertype", &["steering.passed"], NOT_STEERED),
        // Random bodies behind IPv4, ARP, 802.1Q or random ethertypes:
        // wherever each lands, the steering program counts it once.
        class("random_fuzz", STEERING, &[]),
        // Random bytes of the IPv4 header of a datagram to the VM.
        class("mutated_ipv4", STEERING, &[]),
        class("ipv4_truncated", &["steering.malformed_l3"], NOT_STEERED),
        class("ipv4_bad_version", &["steering.malformed_l3"], NOT_STEERED),
        class("ipv4_bad_ihl", &["steering.malformed_l3"], NOT_STEERED),
        class(
            "ipv4_length_lies",
            &[
                "drops.ipv4_total_length_too_short",
                "drops.ipv4_total_length_beyond_frame",
            ],
            &["counters.encapsulated"],
        ),
        class(
            "ipv4_bad_checksum",
            &["drops.ipv4_bad_checksum"],
            &["counters.encapsulated"],
        ),
        class("qinq", &["steering.passed"], NOT_STEERED),
        class(
            "oversize",
            // In pieces (multi-buffer), gathered: UDP is no super-frame
            // the worker cuts.
            &["drops.unsegmentable"],
            &["counters.encapsulated"],
        ),
        class(
            "ttl_expiring",
            &["drops.ttl_exceeded"],
            &["counters.encapsulated"],
        ),
        class(
            "group_dst_mac",
            &["drops.multicast"],
            &["counters.encapsulated"],
        ),
        class(
            "spoofed_source",
            &["drops.source_is_ha", "drops.source_is_care_of"],
            &["counters.encapsulated"],
        ),
        class(
            "tunnel_loop",
            &["drops.tunnel_loop"],
            &["counters.encapsulated"],
        ),
        class("ipip_unbound", &["steering.passed"], NOT_STEERED),
        class("ipip_coa_garbage", &["steering.steered_ipip"], NO_DECAP),
        class("icmp_error_to_ha", &["steering.passed"], NOT_STEERED),
        class(
            "icmp_error_to_vm",
            &["steering.steered_ipv4"],
            &["steering.passed"],
        ),
        class("arp_bad_types", &["steering.passed"], NOT_STEERED),
        class("arp_not_request", &["steering.passed"], NOT_STEERED),
        class("arp_truncated", &["steering.malformed_l3"], NOT_STEERED),
    ]
}

fn wan_classes() -> Vec<Class> {
    let mut c = common_classes();
    // A bridge drops these before they reach the HA; the WAN link is direct.
    c.push(class(
        "vlan_truncated",
        &["steering.malformed_l2"],
        NOT_STEERED,
    ));
    // Proxy ARP is for the home link only.
    c.push(class("arp_request", &["steering.passed"], NOT_STEERED));
    c
}

fn lan_classes() -> Vec<Class> {
    let mut c = common_classes();
    c.push(class(
        "arp_bad_sender",
        &["drops.arp_bad_sender", "drops.arp_from_owner"],
        &["counters.arp_replies"],
    ));
    c
}

/// `section.name` of a stats document.
fn get(stats: &Value, path: &str) -> u64 {
    let (section, name) = path.split_once('.').expect("section.name");
    stats[section][name].as_u64().unwrap_or(0)
}

fn delta(before: &Value, after: &Value, path: &str) -> i64 {
    get(after, path) as i64 - get(before, path) as i64
}

/// Every counter that moved between two stats documents.
fn moved(before: &Value, after: &Value) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for section in ["counters", "drops", "steering"] {
        if let Some(map) = after[section].as_object() {
            for name in map.keys() {
                let path = format!("{section}.{name}");
                let d = delta(before, after, &path);
                if d != 0 {
                    out.insert(path, d);
                }
            }
        }
    }
    out
}

fn pipeline_drops(stats: &Value) -> u64 {
    stats["drops"]
        .as_object()
        .expect("drops")
        .iter()
        .filter(|(k, _)| !NOT_PIPELINE.contains(&k.as_str()))
        .map(|(_, v)| v.as_u64().unwrap_or(0))
        .sum()
}

/// The homeward process is alive and not a zombie.
#[track_caller]
fn assert_alive(ha: &HomeAgent) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", ha.pid()))
        .unwrap_or_else(|e| panic!("homeward is gone: {e}\n{}", ha.stderr()));
    let state = status
        .lines()
        .find(|l| l.starts_with("State:"))
        .unwrap_or("");
    assert!(
        !state.contains('Z'),
        "homeward died: {state}\n{}",
        ha.stderr()
    );
}

/// Where `hostile.py` writes and whom it aims at.
struct Shot<'a> {
    /// The namespace it runs in and the interface it writes to (source MAC).
    ns: &'a Netns,
    iface: &'a Iface,
    /// The daemon's MAC on the receiving interface.
    dst_mac: Mac,
    /// Names the side in messages: `wan`, `lan`, `fa-uplink`, ...
    side: &'a str,
    /// The daemon's own tunnel address, the bound/served VM, the tunnel
    /// peer whose IPIP is steered, and another host.
    local: String,
    vm: String,
    peer: String,
    host: String,
    /// Datagrams from the VM rather than to it.
    from_vm: bool,
    /// The daemon's control socket, and the key of its stats that holds
    /// the counters (the agent's are under `datapath`).
    socket: std::path::PathBuf,
    stats_key: Option<&'a str>,
    seed: u32,
}

/// Runs `hostile.py` as `shot` says, one class after another, and checks
/// each class's counters. `alive` checks the daemon and returns its stderr.
/// Returns the frames sent per class.
#[track_caller]
fn blast(shot: &Shot, classes: &[Class], alive: &dyn Fn() -> String) -> BTreeMap<String, u64> {
    let side = shot.side;
    let stats_cmd = serde_json::to_string(&[
        homeward_bin().to_string_lossy().into_owned(),
        "stats".into(),
        "--json".into(),
        "--socket".into(),
        shot.socket.to_string_lossy().into_owned(),
    ])
    .unwrap();
    let names: Vec<&str> = classes.iter().map(|c| c.name).collect();
    let mut args = vec![
        "env".to_string(),
        "PYTHONDONTWRITEBYTECODE=1".into(),
        PYTHON.into(),
        script("hostile.py").to_string_lossy().into_owned(),
        "--iface".into(),
        shot.iface.name.clone(),
        "--src-mac".into(),
        shot.iface.mac.to_string(),
        "--dst-mac".into(),
        shot.dst_mac.to_string(),
        "--side".into(),
        side.into(),
        "--ha".into(),
        shot.local.clone(),
        "--vm".into(),
        shot.vm.clone(),
        "--coa".into(),
        shot.peer.clone(),
        "--host".into(),
        shot.host.clone(),
        "--count".into(),
        PER_CLASS.to_string(),
        "--seed".into(),
        shot.seed.to_string(),
        "--classes".into(),
        names.join(","),
        "--stats-cmd".into(),
        stats_cmd,
    ];
    if let Some(k) = shot.stats_key {
        args.extend(["--stats-key".into(), k.into()]);
    }
    if shot.from_vm {
        args.push("--from-vm".into());
    }
    let ns = shot.ns;
    let out = ns.exec_timeout(&args, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hostile.py ({side}) failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("hostile.py printed no JSON ({e}): {stdout}"));
    alive();

    let mut sent_per_class = BTreeMap::new();
    let mut before = report["before"].clone();
    assert!(before["error"].is_null(), "stats before: {before}");
    let mut failures = Vec::new();
    for (c, r) in classes
        .iter()
        .zip(report["classes"].as_array().expect("classes"))
    {
        assert_eq!(r["name"], c.name);
        let after = r["stats"].clone();
        assert!(
            after["error"].is_null(),
            "stats after {} ({side}): homeward not answering: {after}\n{}",
            c.name,
            alive()
        );
        let sent = r["sent"].as_u64().unwrap();
        let errors = r["errors"].as_u64().unwrap();
        assert!(
            errors == 0 && sent == PER_CLASS as u64,
            "{side} {}: sent {sent}, {errors} send errors",
            c.name
        );
        sent_per_class.insert(format!("{side}/{}", c.name), sent);
        let moved = moved(&before, &after);
        let absorbed: i64 = c.absorb.iter().map(|p| delta(&before, &after, p)).sum();
        // Background traffic (the kernels' ARP and ICMP) adds a little.
        let lo = (sent as f64 * c.min) as i64;
        let hi = sent as i64 + 64;
        if absorbed < lo || absorbed > hi {
            failures.push(format!(
                "{side} {}: {:?} moved {absorbed}, want {lo}..={hi}; all moved: {moved:?}",
                c.name, c.absorb
            ));
        }
        for p in c.still {
            let d = delta(&before, &after, p);
            // Background traffic only: a handful.
            if d > 16 {
                failures.push(format!(
                    "{side} {}: {p} moved {d}; all moved: {moved:?}",
                    c.name
                ));
            }
        }
        if c.name == "ipip_coa_garbage" {
            // Every steered one was dropped by the pipeline with a reason.
            let dropped = pipeline_drops(&after) as i64 - pipeline_drops(&before) as i64;
            let steered = delta(&before, &after, "steering.steered_ipip");
            if dropped != steered {
                failures.push(format!(
                    "{side} ipip_coa_garbage: {steered} steered, {dropped} dropped: {moved:?}"
                ));
            }
        }
        if c.name == "oversize" {
            let steered = delta(&before, &after, "steering.steered_ipv4");
            if steered < lo {
                failures.push(format!(
                    "{side} oversize: only {steered} steered: {moved:?}"
                ));
            }
        }
        eprintln!(
            "hostile {side} {:<18} sent {sent:>5} in {:>5.3}s: {moved:?}",
            c.name,
            r["seconds"].as_f64().unwrap_or(0.0)
        );
        before = after;
    }
    // The steering program classified every frame exactly once.
    let first = &report["before"];
    let classified: i64 = STEERING.iter().map(|p| delta(first, &before, p)).sum();
    let total: u64 = sent_per_class.values().sum();
    let noise = 64 * classes.len() as i64;
    // (Only where the stats show every steering counter: the agent's lack
    // the malformed ones.)
    let complete = first["steering"]["malformed_l3"].is_u64();
    if complete && (classified < total as i64 || classified > total as i64 + noise) {
        failures.push(format!(
            "{side}: {total} frames sent, the steering program classified {classified}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    sent_per_class
}

/// A UDP datagram from the client to the bound VM arrives encapsulated at
/// the care-of address, payload intact.
#[track_caller]
fn assert_forwards(lab: &Topology, vm: std::net::Ipv4Addr, seed: u8) {
    let cap = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");
    let payload = payload_pattern(300, seed);
    let sent = lab.client.send_udp(
        &UdpSend::new(vm, 4000 + u16::from(seed), 0)
            .payload(payload.clone())
            .sport(5000),
    );
    assert_eq!(sent.sent(), 1, "{sent:?}");
    std::thread::sleep(Duration::from_millis(300));
    let packets = decode_ipip(&cap.stop()).packets;
    let found = packets.iter().any(|p| {
        p.outer.src == lab.ha_wan.addr
            && p.outer.dst == lab.care_of
            && p.outer.checksum_valid == Some(true)
            && p.inner.as_ref().is_some_and(|i| {
                i.dst == vm
                    && i.src == lab.client_lan.addr
                    && i.l4.as_ref().is_some_and(|l4| l4.payload() == payload)
            })
    });
    assert!(found, "no encapsulated datagram to {vm}: {packets:#?}");
}

/// The bindings as (vm, care_of, vm_mac), sorted.
fn table(ha: &HomeAgent) -> Vec<(String, String, String)> {
    let mut t: Vec<_> = ha
        .list()
        .iter()
        .map(|b| {
            (
                b["vm"].to_string(),
                b["care_of"].to_string(),
                b["vm_mac"].to_string(),
            )
        })
        .collect();
    t.sort();
    t
}

fn reg_total(reg: &Value) -> u64 {
    let replies: u64 = reg["replies"]
        .as_object()
        .map(|m| m.values().map(|v| v.as_u64().unwrap_or(0)).sum())
        .unwrap_or(0);
    replies + reg["dropped"].as_u64().unwrap_or(0) + reg["queue_full"].as_u64().unwrap_or(0)
}

fn reply_count(reg: &Value, code: &str) -> u64 {
    reg["replies"][code].as_u64().unwrap_or(0)
}

/// `UdpRcvbufErrors + UdpInErrors` of the namespace's kernel.
fn udp_errors(ns: &Netns) -> u64 {
    let snmp = ns.sh_ok("cat /proc/net/snmp");
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
        return 0;
    };
    head.split_whitespace()
        .zip(vals.split_whitespace())
        .filter(|(k, _)| *k == "InErrors")
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// The lab with MTU 3500 and a key file (SPI 256 for the registered VM)
/// in a private directory.
fn lab_with_keys(tag: &str) -> (Topology, tempfile::TempDir, std::path::PathBuf) {
    let lab = Topology::home_agent_lab_with(
        tag,
        LabOptions {
            lan_mtu: MTU,
            wan_mtu: MTU,
            ..LabOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!("[[spi]]\nspi = 256\nkey = \"{KEY}\"\nhome_addresses = [\"{REG_VM}/32\"]\n"),
    )
    .expect("write keys");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (lab, dir, keys)
}

#[test]
fn hostile_frames_and_registrations_leave_homeward_standing() {
    require_root();
    let started = Instant::now();
    let (lab, _dir, keys) = lab_with_keys("hos");
    let keys_arg = keys.display().to_string();
    let ha = HomeAgent::start(&lab, &["--registration-keys", &keys_arg]);
    let vm = lab.vm_home.to_string();
    let care_of = lab.care_of.to_string();
    ha.bind(&vm, &care_of, &[]);
    // The client resolves the VM (proxy ARP) and the HA the care-of address.
    assert_forwards(&lab, lab.vm_home, 1);

    // --- frames ---------------------------------------------------------
    let t_frames = Instant::now();
    let alive = || {
        assert_alive(&ha);
        ha.stderr()
    };
    let shot = |ns, iface, dst_mac, side, host: String, seed| Shot {
        ns,
        iface,
        dst_mac,
        side,
        local: lab.ha_wan.addr.to_string(),
        vm: vm.clone(),
        peer: care_of.clone(),
        host,
        from_vm: false,
        socket: lab.control_socket(),
        stats_key: None,
        seed,
    };
    // An Internet host behind the foreign network (not the care-of address,
    // whose datagrams are a class of their own).
    let mut sent = blast(
        &shot(
            &lab.foreign,
            &lab.foreign_wan,
            lab.ha_wan.mac,
            "wan",
            "203.0.113.7".into(),
            11,
        ),
        &wan_classes(),
        &alive,
    );
    // The LAN side is written straight into the bridge port facing the HA
    // (with the client's source MAC), so that the frames reach the HA as
    // written: a bridge would validate IPv4 headers, drop truncated tags
    // and move an outer 802.1Q tag into metadata on the way.
    let lan_wire = Iface {
        name: lab.ha_port.clone(),
        ..lab.client_lan.clone()
    };
    sent.extend(blast(
        &shot(
            &lab.lan,
            &lan_wire,
            lab.ha_lan.mac,
            "lan",
            lab.client_lan.addr.to_string(),
            12,
        ),
        &lan_classes(),
        &alive,
    ));
    let frames: u64 = sent.values().sum();
    let frames_secs = t_frames.elapsed().as_secs_f64();
    assert!(frames >= 50_000, "only {frames} hostile frames");
    assert_alive(&ha);
    assert_eq!(ha.list().len(), 1, "{:?}", ha.list());
    assert_forwards(&lab, lab.vm_home, 2);

    // --- registrations ----------------------------------------------------
    let t_reg = Instant::now();
    let udp_errors_before = udp_errors(&lab.ha);
    let reg_before = ha.registration_stats();
    let out = lab.foreign.exec_timeout(
        &[
            "env",
            "PYTHONDONTWRITEBYTECODE=1",
            PYTHON,
            &script("hostile_mip.py").to_string_lossy(),
            "--ha",
            &lab.ha_wan.addr.to_string(),
            "--home",
            REG_VM,
            "--coa",
            &care_of,
            "--spi",
            "256",
            "--key",
            KEY,
            "--count",
            &REG_PER_CLASS.to_string(),
        ],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hostile_mip.py failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mip: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("hostile_mip.py printed no JSON ({e}): {stdout}"));
    assert_eq!(mip["genuine"]["code"], 0, "genuine registration: {mip}");
    std::thread::sleep(Duration::from_millis(300));
    assert_alive(&ha);
    let reg_after = ha.registration_stats();
    let binding = ha.binding(REG_VM).expect("the registered binding");
    assert_eq!(binding["care_of"], care_of.as_str(), "{binding}");
    let expires_mid = binding["expires_in"].as_u64().expect("a lifetime");
    let table_mid = table(&ha);

    let classes = mip["classes"].as_object().expect("classes");
    let hostile_regs: u64 = classes.values().map(|c| c["sent"].as_u64().unwrap()).sum();
    assert!(hostile_regs >= 20_000, "only {hostile_regs} registrations");
    for (name, c) in classes {
        assert_eq!(c["errors"], 0, "{name}: {c}");
    }
    // Every datagram that reached the socket is counted: a reply code,
    // dropped unanswered, or dropped at the full queue; kernel drops are
    // the rest (none expected at this pace).
    let counted = reg_total(&reg_after) - reg_total(&reg_before);
    let kernel_dropped = udp_errors(&lab.ha) - udp_errors_before;
    assert_eq!(
        counted + kernel_dropped,
        hostile_regs + 1,
        "registration datagrams: {counted} counted + {kernel_dropped} kernel drops, \
         sent {hostile_regs} + 1 genuine\n{reg_before}\n{reg_after}"
    );
    let d = |code: &str| reply_count(&reg_after, code) - reply_count(&reg_before, code);
    // Only the genuine one was accepted.
    assert_eq!(d("0") + d("1"), 1, "{reg_after}");
    let sent_of = |name: &str| classes[name]["sent"].as_u64().unwrap();
    // Replays (and stale identifications) get 133 with an authenticator.
    assert!(
        d("133") >= sent_of("replayed") + sent_of("stale"),
        "133: {} {reg_after}",
        d("133")
    );
    assert!(d("136") >= sent_of("foreign_ha"), "{reg_after}");
    assert!(d("139") >= sent_of("encapsulation"), "{reg_after}");
    assert!(d("129") >= sent_of("unauthorized_home"), "{reg_after}");
    // Bit flips break the authenticator (131) or the format (134/dropped).
    assert!(d("131") > 0, "{reg_after}");
    let dropped =
        reg_after["dropped"].as_u64().unwrap_or(0) - reg_before["dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "{reg_after}");

    // The binding table did not move; a genuine registration still passes.
    let mut want = vec![
        (format!("\"{vm}\""), format!("\"{care_of}\"")),
        (format!("\"{REG_VM}\""), format!("\"{care_of}\"")),
    ];
    want.sort();
    let got: Vec<_> = table_mid
        .iter()
        .map(|(v, c, _)| (v.clone(), c.clone()))
        .collect();
    assert_eq!(got, want, "{table_mid:?}");
    assert!(expires_mid <= 300, "{binding}");
    let out = lab.foreign.exec_timeout(
        &[
            "env",
            "PYTHONDONTWRITEBYTECODE=1",
            PYTHON,
            &script("mip_send.py").to_string_lossy(),
            "--ha",
            &lab.ha_wan.addr.to_string(),
            "--coa",
            &care_of,
            "--home",
            REG_VM,
            "--spi",
            "256",
            "--key",
            KEY,
            "--lifetime",
            "120",
        ],
        Duration::from_secs(20),
    );
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("mip_send.py: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["reply"]["code"], 0, "{r}");
    assert_eq!(r["reply"]["auth_ok"], true, "{r}");
    let refreshed = ha.binding(REG_VM).expect("binding");
    assert!(
        refreshed["expires_in"].as_u64().is_some_and(|e| e <= 120),
        "{refreshed}"
    );
    assert_eq!(table(&ha), table_mid);
    let reg_secs = t_reg.elapsed().as_secs_f64();

    // --- afterwards ----------------------------------------------------------
    assert_forwards(&lab, lab.vm_home, 3);
    assert_forwards(&lab, REG_VM.parse().unwrap(), 4);
    let stats = ha.stats();
    assert_eq!(stats["maps_in_sync"], true, "{stats}");
    for zero in [
        "drops.bad_verdict",
        "drops.xsk_rx_invalid",
        "drops.xsk_tx_invalid",
        "steering.unknown_ingress",
        "steering.no_socket",
        "steering.dropped_ipip",
    ] {
        assert_eq!(get(&stats, zero), 0, "{zero}: {stats}");
    }
    // What the steering program handed to the sockets is what the sockets
    // and the pipeline account for: each steered frame was dropped by the
    // kernel's socket (too large, ring full), or by the pipeline with a
    // reason, or forwarded, decapsulated or answered.
    let steered = get(&stats, "steering.steered_ipv4")
        + get(&stats, "steering.steered_arp")
        + get(&stats, "steering.steered_ipip")
        - get(&stats, "steering.no_socket");
    let seen = pipeline_drops(&stats)
        + get(&stats, "counters.encapsulated")
        + get(&stats, "counters.decapsulated")
        + get(&stats, "counters.arp_replies")
        + get(&stats, "drops.xsk_rx_dropped")
        + get(&stats, "drops.xsk_rx_ring_full");
    assert_eq!(
        steered, seen,
        "steered {steered}, accounted {seen}: {stats}"
    );

    let stderr_len = ha.stderr().len();
    assert!(
        stderr_len < 64 * 1024,
        "stderr grew to {stderr_len} bytes:\n{}",
        ha.stderr()
    );
    let t = ha.stop();
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

    let reg_codes: BTreeMap<&str, u64> = reg_after["replies"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_u64().unwrap_or(0)))
        .collect();
    eprintln!(
        "hostile: {frames} frames in {} classes ({} per class per interface, {frames_secs:.1}s incl. \
         stats), {hostile_regs} registrations ({reg_secs:.1}s); steered {steered} = accounted \
         {seen} (pipeline drops {}, xsk_rx_dropped {}, encapsulated {}, arp_replies {}); \
         passed {}, malformed_l2 {}, malformed_l3 {}; registration replies {reg_codes:?}, \
         dropped {}, queue_full {}; stderr {stderr_len} B; total {:.1}s",
        sent.len(),
        PER_CLASS,
        pipeline_drops(&stats),
        get(&stats, "drops.xsk_rx_dropped"),
        get(&stats, "counters.encapsulated"),
        get(&stats, "counters.arp_replies"),
        get(&stats, "steering.passed"),
        get(&stats, "steering.malformed_l2"),
        get(&stats, "steering.malformed_l3"),
        reg_after["dropped"],
        reg_after["queue_full"],
        started.elapsed().as_secs_f64()
    );
}

/// Only checked not to be steered: the agent's stats do not show the
/// steering program's malformed counters.
const fn unseen(name: &'static str) -> Class {
    Class {
        name,
        absorb: &[],
        min: 0.0,
        still: NOT_STEERED,
    }
}

#[test]
fn hostile_frames_at_the_foreign_agent() {
    require_root();
    let started = Instant::now();
    let (lab, dir, keys) = lab_with_keys("hfa");
    let keys_arg = keys.display().to_string();
    let ha = HomeAgent::start(&lab, &["--registration-keys", &keys_arg]);

    // The VM's link on the foreign hypervisor: no QEMU, a namespace; QMP
    // is a stand-in that says the VM runs.
    let fa = ForeignAgentLab::new(
        &lab,
        "hfa",
        dir.path(),
        &keys,
        REG_VM.parse().unwrap(),
        MTU,
        &[],
    );
    let (vmns, vm_if, vmlink_mac) = (&fa.vm, &fa.vm_if, fa.vmlink_mac);
    let agent_sock = fa.socket.clone();
    let mut agent = fa.spawn(&lab);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ha.binding(REG_VM).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ha.binding(REG_VM).is_some(),
        "the agent did not register the VM:\n{}",
        agent.stderr()
    );
    let agent_pid = agent.id();
    let alive = || {
        let status = std::fs::read_to_string(format!("/proc/{agent_pid}/status"))
            .unwrap_or_else(|e| panic!("homeward agent is gone: {e}"));
        assert!(
            !status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z')),
            "homeward agent died"
        );
        String::new()
    };
    let fa_stats = || -> Value {
        let out = lab.foreign.exec(&[
            homeward_bin().to_string_lossy().into_owned(),
            "stats".into(),
            "--json".into(),
            "--socket".into(),
            agent_sock.display().to_string(),
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).expect("agent stats --json");
        v["datapath"].clone()
    };
    let shot = |ns, iface, dst_mac, side, host: &str, from_vm, seed| Shot {
        ns,
        iface,
        dst_mac,
        side,
        local: lab.care_of.to_string(),
        vm: REG_VM.into(),
        peer: lab.ha_wan.addr.to_string(),
        host: host.into(),
        from_vm,
        socket: agent_sock.clone(),
        stats_key: Some("datapath"),
        seed,
    };
    // Uplink: written from the HA's namespace into its WAN link (the
    // agent's uplink peer). The "peer" is the HA: its IPIP is steered.
    let uplink = vec![
        class("random_ethertype", &["steering.passed"], NOT_STEERED),
        class("qinq", &["steering.passed"], NOT_STEERED),
        class("ipip_unbound", &["steering.dropped_ipip"], NOT_STEERED),
        class(
            "ipip_coa_garbage",
            &["steering.steered_ipip"],
            &["counters.delivered_to_vm"],
        ),
        class("icmp_error_to_ha", &["steering.passed"], NOT_STEERED),
        class("arp_request", &["steering.passed"], NOT_STEERED),
        unseen("random_fuzz"),
        unseen("ipv4_truncated"),
        unseen("ipv4_bad_ihl"),
        unseen("vlan_truncated"),
        unseen("arp_truncated"),
    ];
    let mut sent = blast(
        &shot(
            &lab.ha,
            &lab.ha_wan,
            lab.foreign_wan.mac,
            "fa-uplink",
            "203.0.113.7",
            false,
            21,
        ),
        &uplink,
        &alive,
    );
    // The VM link: datagrams from the served VM's address.
    let vm_link = vec![
        class(
            "ipv4_bad_checksum",
            &["drops.ipv4_bad_checksum"],
            &["counters.tunnelled_to_home_agent"],
        ),
        class(
            "ipv4_length_lies",
            &[
                "drops.ipv4_total_length_too_short",
                "drops.ipv4_total_length_beyond_frame",
            ],
            &["counters.tunnelled_to_home_agent"],
        ),
        class(
            "oversize",
            // In pieces (multi-buffer), gathered: UDP is no super-frame
            // the worker cuts.
            &["drops.unsegmentable"],
            &["counters.tunnelled_to_home_agent"],
        ),
        class(
            "ttl_expiring",
            &["drops.ttl_exceeded"],
            &["counters.tunnelled_to_home_agent"],
        ),
        class("random_ethertype", &["steering.passed"], NOT_STEERED),
        class("arp_bad_types", &["steering.passed"], NOT_STEERED),
        unseen("ipv4_truncated"),
        unseen("ipv4_bad_version"),
        unseen("arp_truncated"),
    ];
    sent.extend(blast(
        &shot(vmns, vm_if, vmlink_mac, "fa-vmlink", "192.0.2.10", true, 22),
        &vm_link,
        &alive,
    ));
    let frames: u64 = sent.values().sum();

    // Still serving: a datagram from the client reaches the VM's link.
    let before = fa_stats();
    let udp = lab
        .client
        .send_udp(&UdpSend::new(vm_if.addr, 4009, 100).sport(5009));
    assert_eq!(udp.sent(), 1);
    std::thread::sleep(Duration::from_millis(300));
    let after = fa_stats();
    assert!(
        delta(&before, &after, "counters.delivered_to_vm") >= 1,
        "not delivered after the hostile frames: {after}"
    );
    let steered = get(&after, "steering.steered_ipv4")
        + get(&after, "steering.steered_arp")
        + get(&after, "steering.steered_ipip")
        - get(&after, "steering.no_socket");
    let seen = pipeline_drops(&after)
        + get(&after, "counters.tunnelled_to_home_agent")
        + get(&after, "counters.delivered_to_vm")
        + get(&after, "counters.arp_replies")
        + get(&after, "drops.xsk_rx_dropped")
        + get(&after, "drops.xsk_rx_ring_full");
    assert_eq!(
        steered, seen,
        "agent: steered {steered}, accounted {seen}: {after}"
    );

    let status = agent.stop_with("INT", Duration::from_secs(10));
    let stderr = agent.stderr();
    assert!(status.success(), "agent did not exit cleanly:\n{stderr}");
    let unaccounted: Vec<i64> = stderr
        .lines()
        .filter(|l| l.contains("frames at teardown"))
        .filter_map(|l| l.rsplit("unaccounted ").next()?.trim().parse().ok())
        .collect();
    assert!(
        !unaccounted.is_empty() && unaccounted.iter().all(|u| *u == 0),
        "agent leaked frames: {unaccounted:?}\n{stderr}"
    );
    assert!(stderr.len() < 64 * 1024, "agent stderr {} B", stderr.len());
    let t = ha.stop();
    assert!(t.success, "{}", t.stderr);
    assert!(t.unaccounted().iter().all(|u| *u == 0), "{}", t.stderr);
    eprintln!(
        "hostile (foreign agent): {frames} frames in {} classes; steered {steered} = accounted \
         {seen}; dropped_ipip {}, passed {}; total {:.1}s",
        sent.len(),
        get(&after, "steering.dropped_ipip"),
        get(&after, "steering.passed"),
        started.elapsed().as_secs_f64()
    );
}
