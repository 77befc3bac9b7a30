//! Writes the committed seed corpora, `fuzz/seeds/<target>/<name>`: valid
//! inputs of every kind each target takes (the shapes of the byte fixtures
//! in `dataplane/src/pipeline/testutil.rs`, `robustness.rs` and
//! `foreign_agent.rs`, and of control's registration, QMP and config tests),
//! each with the target's leading mode bytes.
//!
//! ```sh
//! cargo +nightly run --manifest-path fuzz/Cargo.toml --example gen_seeds
//! ```
//!
//! Deterministic: running it again rewrites the same files.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use dataplane::pipeline::Port;
use homeward::registration::keys::KeyFile;
use homeward::registration::wire::{self, flags, ReplyFields, RequestFields};
use homeward_fuzz::frames::*;
use homeward_fuzz::pipeline::Settings;
use homeward_fuzz::REGISTRATION_KEYS;

struct Out {
    dir: PathBuf,
    count: usize,
}

impl Out {
    fn new(root: &Path, target: &str) -> Out {
        let dir = root.join(target);
        // Start clean, so a renamed seed does not linger.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Out { dir, count: 0 }
    }
    fn put(&mut self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join(name), bytes).unwrap();
        self.count += 1;
    }
    /// A pipeline input: the two settings bytes, then the frame.
    fn frame(&mut self, name: &str, settings: [u8; 2], frame: &[u8]) {
        let mut v = settings.to_vec();
        v.extend_from_slice(frame);
        self.put(name, &v);
    }
}

const LAN: [u8; 2] = [0x00, 0x03];
const WAN: [u8; 2] = [0x01, 0x03];

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A TCP segment (doff 8: NOP NOP timestamps) carrying `n` bytes, as a
/// guest's TSO hands over a super-frame.
fn tcp_segment(n: usize) -> Vec<u8> {
    let mut t = vec![
        0x9c, 0x40, 0x00, 0x50, 0, 0, 0x10, 0, 0, 0, 0, 1, 0x80, 0x18, 0xff, 0xff,
    ];
    t.extend_from_slice(&[0, 0, 0, 0, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    t.extend_from_slice(&payload(n));
    t
}

fn home_agent_seeds(o: &mut Out) {
    assert_eq!(Settings::encode_default(Port::Lan), LAN);
    assert_eq!(Settings::encode_default(Port::Wan), WAN);
    let big = payload(3000);
    let udp = |dst, n| Ip::udp(LAN_HOST, dst, &big[..n]);
    o.frame("encap_udp", LAN, &Ip::udp(LAN_HOST, VM, b"hello").frame());
    o.frame(
        "encap_vlan_ttl1_time_exceeded",
        LAN,
        &Ip::udp(LAN_HOST, VM, b"hello").vlan(42).ttl(1).frame(),
    );
    o.frame(
        "fragments_with_copied_option",
        LAN,
        &udp(VM, 1800)
            .df(false)
            .options(&[0x83, 7, 4, 1, 2, 3, 4, 0])
            .frame(),
    );
    o.frame(
        "fragments_mixed_options_mtu576",
        [0x02, 0x03],
        &udp(VM, 1400)
            .df(false)
            .options(&[
                0x07, 0x07, 0x04, 0, 0, 0, 0, 0x01, 0x83, 0x07, 0x04, 10, 1, 1, 1, 0x94, 0x04, 0,
                0, 0x00,
            ])
            .frame(),
    );
    o.frame("df_too_big_frag_needed", LAN, &udp(VM, 1600).frame());
    o.frame(
        "late_fragment_fragmented",
        LAN,
        &udp(VM, 1600).df(false).frag(true, 100).frame(),
    );
    o.frame(
        "last_fragment_mtu1280",
        [0x08, 0x03],
        &udp(VM, 1600).df(false).frag(false, 185).frame(),
    );
    o.frame(
        "offset_overflow_cannot_fragment",
        [0x02, 0x03],
        &udp(VM, 1400).df(false).frag(false, 8100).frame(),
    );
    o.frame(
        "superframe_tcp_3k_mtu576",
        [0x02, 0x03],
        &Ip::raw(LAN_HOST, VM, 6, &tcp_segment(3000)).frame(),
    );
    o.frame(
        "fragments_mtu576_3k",
        [0x02, 0x03],
        &udp(VM, 2900).df(false).frame(),
    );
    o.frame(
        "fragments_mtu88",
        [0x04, 0x03],
        &udp(VM, 200).df(false).frame(),
    );
    o.frame(
        "fragments_100_byte_buffers",
        [0x00, 0x0b],
        &udp(VM, 1800).df(false).frame(),
    );
    o.frame(
        "fragments_vlan_mtu576",
        [0x02, 0x07],
        &udp(VM, 2000).df(false).vlan(100).frame(),
    );
    o.frame("mtu68_df", [0x06, 0x03], &udp(VM, 100).frame());
    o.frame(
        "mtu40_no_room",
        [0x0c, 0x03],
        &udp(VM, 100).df(false).frame(),
    );
    o.frame(
        "icmp_echo_ttl1",
        LAN,
        &Ip::icmp(REMOTE, VM, 8, 0, &[0; 12]).ttl(1).frame(),
    );
    o.frame(
        "icmp_error_ttl1_no_error_about_it",
        LAN,
        &Ip::icmp(REMOTE, VM, 3, 4, &[0; 32]).ttl(1).frame(),
    );
    o.frame(
        "min_headroom_icmp_vlan",
        [0x10, 0x03],
        &Ip::udp(LAN_HOST, VM, b"x").vlan(5).ttl(1).frame(),
    );
    o.frame(
        "no_headroom",
        [0x30, 0x03],
        &Ip::udp(LAN_HOST, VM, b"x").frame(),
    );
    o.frame(
        "icmp_burst0_rate_limited",
        [0x00, 0x00],
        &Ip::udp(LAN_HOST, VM, b"x").ttl(1).frame(),
    );
    o.frame(
        "no_tailroom_twice",
        [0x40, 0x83],
        &Ip::udp(LAN_HOST, VM, b"twice").frame(),
    );
    o.frame(
        "len_past_frame_padding",
        [0x00, 0x53],
        &Ip::udp(LAN_HOST, VM, b"x").frame(),
    );
    o.frame(
        "everything_bound_tos",
        [0x80, 0x03],
        &Ip::udp(REMOTE, [198, 18, 0, 1], b"anyone")
            .tos(0xb8)
            .frame(),
    );
    o.frame(
        "encap_vm2_lan_next_hop",
        LAN,
        &Ip::udp(REMOTE, VM2, b"vm2").frame(),
    );
    o.frame(
        "encap_vm3_unresolved",
        LAN,
        &Ip::udp(REMOTE, VM3, b"vm3").frame(),
    );
    o.frame(
        "multicast",
        LAN,
        &Ip::udp(LAN_HOST, [224, 0, 0, 251], b"mdns").frame(),
    );
    o.frame(
        "decap",
        WAN,
        &Ip::ipip(CARE_OF, HA, &Ip::udp(VM, LAN_HOST, b"back home")).frame(),
    );
    o.frame(
        "decap_vlan_options",
        WAN,
        &Ip::ipip(CARE_OF, HA, &Ip::udp(VM, LAN_HOST, b"x"))
            .vlan(7)
            .options(&[1, 1, 1, 1])
            .frame(),
    );
    o.frame(
        "decap_care_of_mismatch",
        WAN,
        &Ip::ipip(REMOTE, HA, &Ip::udp(VM, LAN_HOST, b"spoof")).frame(),
    );
    o.frame(
        "ipip_to_vm_tunnel_loop",
        WAN,
        &Ip::ipip(REMOTE, VM, &Ip::udp(REMOTE, CARE_OF, b"loop")).frame(),
    );
    o.frame(
        "arp_request",
        LAN,
        &arp_request(LAN_HOST_MAC, LAN_HOST, VM, None),
    );
    o.frame(
        "arp_probe_vlan_unpadded",
        LAN,
        &arp_request(LAN_HOST_MAC, [0; 4], VM, Some(3)),
    );
    let mut lldp = eth([0x01, 0x80, 0xc2, 0, 0, 0x0e], LAN_HOST_MAC, None, 0x88cc);
    lldp.extend_from_slice(&[0; 46]);
    o.frame("lldp", LAN, &lldp);
    let mut qinq = eth(LAN_MAC, LAN_HOST_MAC, Some(100), 0x8100);
    qinq.extend_from_slice(&[0, 0x65, 0x08, 0x00]);
    qinq.extend_from_slice(&Ip::udp(LAN_HOST, VM, b"qinq").datagram());
    o.frame("double_tag", LAN, &qinq);
}

fn foreign_agent_seeds(o: &mut Out) {
    let big = payload(3000);
    let from_vm = |n: usize| {
        Ip::udp(SERVED, CLIENT, &big[..n])
            .eth_dst(LAN_HOST_MAC)
            .eth_src(SERVED_MAC)
    };
    o.frame(
        "superframe_tcp_from_vm",
        [0x00, 0x03],
        &Ip::raw(SERVED, CLIENT, 6, &tcp_segment(3900))
            .eth_dst(LAN_HOST_MAC)
            .eth_src(SERVED_MAC)
            .frame(),
    );
    o.frame(
        "decap_to_vm",
        WAN,
        &Ip::ipip(HOME_AGENT, FA, &Ip::udp(CLIENT, SERVED, b"to the vm")).frame(),
    );
    o.frame(
        "decap_vlan",
        WAN,
        &Ip::ipip(HOME_AGENT, FA, &Ip::udp(CLIENT, SERVED, b"x"))
            .vlan(9)
            .frame(),
    );
    o.frame("reverse_tunnel", LAN, &from_vm(40).frame());
    o.frame(
        "reverse_tunnel_fragments",
        LAN,
        &from_vm(1800).df(false).frame(),
    );
    o.frame(
        "reverse_tunnel_fragments_mtu576_vlan",
        [0x02, 0x03],
        &from_vm(2000).df(false).vlan(100).frame(),
    );
    o.frame("reverse_tunnel_df_too_big", LAN, &from_vm(1600).frame());
    o.frame("reverse_tunnel_ttl1", LAN, &from_vm(10).ttl(1).frame());
    o.frame("from_vm_on_the_uplink", WAN, &from_vm(10).frame());
    o.frame(
        "served_vm_without_next_hop",
        LAN,
        &Ip::udp([192, 0, 2, 51], CLIENT, b"x")
            .eth_dst(LAN_HOST_MAC)
            .frame(),
    );
    o.frame(
        "decap_from_wrong_home_agent",
        WAN,
        &Ip::ipip(REMOTE, FA, &Ip::udp(CLIENT, SERVED, b"x")).frame(),
    );
    o.frame(
        "decap_unknown_vm",
        WAN,
        &Ip::ipip(HOME_AGENT, FA, &Ip::udp(CLIENT, [192, 0, 2, 99], b"x")).frame(),
    );
    o.frame(
        "arp_from_vm",
        LAN,
        &arp_request(SERVED_MAC, SERVED, CLIENT, None),
    );
    o.frame(
        "arp_from_vm_vlan",
        LAN,
        &arp_request(SERVED_MAC, SERVED, [192, 0, 2, 1], Some(12)),
    );
    o.frame(
        "arp_for_the_vm_from_the_uplink",
        WAN,
        &arp_request(NEXT_HOP_MAC, REMOTE, SERVED, None),
    );
    o.frame("everything_bound", [0x80, 0x03], &from_vm(30).frame());
    o.frame(
        "icmp_echo_from_vm_burst0",
        [0x00, 0x00],
        &Ip::icmp(SERVED, CLIENT, 8, 0, &[1; 12])
            .ttl(1)
            .eth_dst(LAN_HOST_MAC)
            .frame(),
    );
}

/// Registration mode byte: see `fuzz_targets/registration.rs`.
const SIGN: u8 = 0x01;
const FRESH: u8 = 0x08;
const REPLAY: u8 = 0x40;
const AS_REPLY: u8 = 0x80;
fn spi_bits(i: u8) -> u8 {
    i << 1
}
fn sink_bits(i: u8) -> u8 {
    i << 4
}

const HA_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const HOME: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const COA: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

fn request(f: impl FnOnce(&mut RequestFields)) -> Vec<u8> {
    let mut r = RequestFields {
        flags: flags::T,
        lifetime: 60,
        home_address: HOME,
        home_agent: HA_ADDR,
        care_of: COA,
        identification: 0x0102_0304_0506_0708,
    };
    f(&mut r);
    let mut out = Vec::new();
    r.emit(&mut out);
    out
}

fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn registration_seeds(o: &mut Out) {
    let mut put = |name: &str, mode: u8, msg: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(msg);
        o.put(name, &v);
    };
    let ok = SIGN | FRESH;
    put("accept_sha256", ok, &request(|_| {}));
    put("accept_md5", ok | spi_bits(1), &request(|_| {}));
    put(
        "accept_single_address_spi",
        ok | spi_bits(2),
        &request(|_| {}),
    );
    put("unknown_spi", ok | spi_bits(3), &request(|_| {}));
    put("replay_then_undo", ok | REPLAY, &request(|_| {}));
    put("table_full_130", ok | sink_bits(1), &request(|_| {}));
    put("table_refuses_129", ok | sink_bits(2), &request(|_| {}));
    put("table_fails_128", ok | sink_bits(3), &request(|_| {}));
    put(
        "deregister_back_home",
        ok | REPLAY,
        &request(|r| {
            r.lifetime = 0;
            r.care_of = HOME;
        }),
    );
    put("deregister_away", ok, &request(|r| r.lifetime = 0));
    put(
        "simultaneous_s_flag",
        ok,
        &request(|r| r.flags = flags::S | flags::T),
    );
    put("minimal_encap_m_flag", ok, &request(|r| r.flags = flags::M));
    put("gre_g_flag_no_t", ok, &request(|r| r.flags = flags::G));
    put(
        "home_outside_home_network",
        ok | spi_bits(1),
        &request(|r| r.home_address = Ipv4Addr::new(10, 0, 0, 1)),
    );
    put(
        "home_not_authorized",
        ok | spi_bits(2),
        &request(|r| r.home_address = Ipv4Addr::new(192, 0, 2, 51)),
    );
    put(
        "care_of_in_home",
        ok,
        &request(|r| r.care_of = Ipv4Addr::new(192, 0, 2, 99)),
    );
    put("care_of_is_ha", ok, &request(|r| r.care_of = HA_ADDR));
    put(
        "care_of_multicast",
        ok,
        &request(|r| r.care_of = Ipv4Addr::new(224, 0, 0, 1)),
    );
    put(
        "other_home_agent_136",
        ok,
        &request(|r| r.home_agent = Ipv4Addr::new(198, 51, 100, 9)),
    );
    put("lifetime_max", ok, &request(|r| r.lifetime = u16::MAX));
    put("stale_identification_133", SIGN, &request(|_| {}));
    let mut skippable = request(|_| {});
    wire::push_extension(&mut skippable, 131, b"hi");
    put("skippable_extension_then_auth", ok, &skippable);
    // The agent's VM link-layer address extension (RFC 3115 NVSE), before
    // the authenticator the fuzzer appends; the same bytes as the fixture
    // in control's wire.rs tests.
    let mut with_mac = request(|_| {});
    wire::push_vm_mac(&mut with_mac, [0x02, 0x00, 0x5e, 0x00, 0x00, 0x51]);
    put("accept_with_vm_mac", ok, &with_mac);
    let mut deregister_mac = request(|r| {
        r.lifetime = 0;
        r.care_of = HOME;
    });
    wire::push_vm_mac(&mut deregister_mac, [0x02, 0x00, 0x5e, 0x00, 0x00, 0x51]);
    put("deregister_with_vm_mac", ok, &deregister_mac);
    let mut bad_mac = request(|_| {});
    wire::push_vm_mac(&mut bad_mac, [0xff; 6]);
    put("accept_with_broadcast_vm_mac", ok, &bad_mac);
    // A switchover from the VM's home hypervisor (a care-of on the home
    // network): our critical vendor extension, long format.
    let mut switchover = request(|r| r.care_of = Ipv4Addr::new(192, 0, 2, 20));
    wire::push_switchover(&mut switchover);
    put("switchover_from_home", ok, &switchover);
    let mut unknown = request(|_| {});
    wire::push_extension(&mut unknown, 5, b"");
    put("unknown_extension_then_auth", ok, &unknown);
    put(
        "unsigned_fixture",
        0,
        &unhex(
            "01 02 003c c0000232 c6336401 c6336402 0102030405060708
             20 08 00000100 deadbeef",
        ),
    );
    put("no_auth_extension", FRESH, &request(|_| {}));
    let mut overrun = request(|_| {});
    overrun.extend_from_slice(&[0x20, 0x09, 0, 0, 1, 1]);
    put("extension_overrun", FRESH, &overrun);
    put("truncated", 0, &request(|_| {})[..10]);
    put(
        "reply_fixture_133",
        AS_REPLY,
        &unhex("03 85 0000 c0000232 c6336401 e1b2c3d4 05060708"),
    );
    put(
        "reply_with_extensions",
        AS_REPLY,
        &unhex(
            "03 00 0000 c0000232 c6336401 0000000000000001
             83 02 6869 05 00 20 04 00000101",
        ),
    );
    let keys = KeyFile::parse(REGISTRATION_KEYS).unwrap();
    for (i, spi) in [(0u8, 256u32), (1, 257)] {
        let mut reply = Vec::new();
        ReplyFields {
            code: 0,
            lifetime: 60,
            home_address: HOME,
            home_agent: HA_ADDR,
            identification: 0x0102_0304_0506_0708,
        }
        .emit(&mut reply);
        keys.get(spi).unwrap().key.append_mh_auth(&mut reply, spi);
        put(
            &format!("reply_signed_spi{spi}"),
            AS_REPLY | spi_bits(i),
            &reply,
        );
    }
}

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 10}, "package": ""}, "capabilities": ["oob"]}}"#;

fn ev(name: &str, data: &str, s: i64, us: i64) -> String {
    format!(
        "{{\"timestamp\": {{\"seconds\": {s}, \"microseconds\": {us}}}, \"event\": \"{name}\", \"data\": {data}}}\n"
    )
}

fn qmp_seeds(o: &mut Out) {
    let mut put = |name: &str, mode: u8, stream: &str| {
        let mut v = vec![mode];
        v.extend_from_slice(stream.as_bytes());
        o.put(name, &v);
    };
    let events = [
        ev("STOP", "{}", 1700000000, 5),
        ev("RESUME", "{}", 1700000001, 250000),
        ev("MIGRATION", r#"{"status": "completed"}"#, 1700000002, 0),
        ev(
            "SHUTDOWN",
            r#"{"guest": true, "reason": "guest-shutdown"}"#,
            1700000003,
            1,
        ),
        "{\"timestamp\": {\"seconds\": 1700000004, \"microseconds\": 0}, \"event\": \"POWERDOWN\"}\n"
            .into(),
    ]
    .concat();
    put(
        "handshake_then_events",
        0,
        &format!("{GREETING}\n{{\"return\": {{}}, \"id\": 1}}\n{events}"),
    );
    put("events", 1, &events);
    put(
        "query_status_overtaken_by_an_event",
        3,
        &format!(
            "{}{{\"return\": {{\"status\": \"paused\", \"singlestep\": false, \"running\": false}}, \"id\": 2}}\n{}",
            ev("STOP", "{}", 1700000000, 5),
            ev("RESUME", "{}", 1700000001, 0)
        ),
    );
    put(
        "query_status_error",
        3,
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"busy\"}, \"id\": 2}\n",
    );
    put(
        "capabilities_refused",
        0,
        &format!("{GREETING}\n{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"nope\"}}, \"id\": 1}}\n"),
    );
    put("no_greeting", 0, &ev("STOP", "{}", 1, 1));
    put(
        "migration_statuses",
        1,
        &[
            "setup",
            "active",
            "device",
            "postcopy-active",
            "completed",
            "failed",
            "cancelled",
        ]
        .iter()
        .map(|s| {
            ev(
                "MIGRATION",
                &format!("{{\"status\": \"{s}\"}}"),
                1700000010,
                0,
            )
        })
        .collect::<String>(),
    );
    put(
        "garbage_lines",
        1,
        concat!(
            "not json\n",
            "[1,2]\n",
            "{\"event\": \"RESUME\"}\n",
            "{\"event\": \"MIGRATION\", \"data\": {}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}\n",
            "{\"timestamp\": {\"seconds\": \"x\", \"microseconds\": 0}, \"event\": \"STOP\"}\n",
            "{\"foo\": 1}\n",
        ),
    );
    put(
        "bad_timestamps",
        1,
        &[
            ev("STOP", "{}", -1, 0),
            ev("STOP", "{}", 1, -1),
            ev("STOP", "{}", 1, 1_000_000),
            ev("RESUME", "{}", i64::MAX, 999_999),
            ev("RESUME", "{}", 0, 0),
        ]
        .concat(),
    );
    put(
        "blank_lines_crlf_and_a_cut_line",
        1,
        &format!(
            "\n   \n{}\r\n{}",
            ev("RESUME", "{}", 5, 6).trim_end(),
            &ev("STOP", "{}", 7, 8)[..30]
        ),
    );
    put(
        "stray_greeting_and_late_reply",
        1,
        &format!(
            "{GREETING}\n{{\"return\": {{}}, \"id\": 7}}\n{}",
            ev("SHUTDOWN", r#"{"guest": false}"#, 9, 9)
        ),
    );
}

fn config_seeds(o: &mut Out) {
    let mut put = |name: &str, text: &str| o.put(name, text.as_bytes());
    put(
        "daemon_readme",
        r#"lan = "eth1"
wan = "eth2"
address = "198.51.100.1"
queues = 2
tunnel_mtu = 1500
ttl = 64
socket = "/run/homeward/control.sock"
max_bindings = 65536
icmp_rate = 100
worker_cpus = [1]
"#,
    );
    put(
        "daemon_registration",
        r#"lan = "eth1"
address = "198.51.100.1"
state_dir = "/var/lib/homeward"
[registration]
keys = "/etc/homeward/keys.toml"
replay_window = 3
max_lifetime = 600
home_prefix = ["192.0.2.0/25", "10.0.0.0/8"]
"#,
    );
    put(
        "daemon_registration_one_prefix",
        "[registration]\nkeys = \"/etc/homeward/keys.toml\"\nhome_prefix = \"192.0.2.0/24\"\n",
    );
    put(
        "daemon_old_state_file",
        "[registration]\nstate = \"/x.json\"\n",
    );
    put(
        "daemon_bad_values",
        "lan = \"eth0\"\naddress = \"224.0.0.1\"\ntunnel_mtu = 60\nttl = 0\n",
    );
    put(
        "agent_example",
        r#"keys = "/etc/homeward/keys.toml"
vm_link = "tap0"
lifetime = 60
reverse_tunnel = true
queues = 1
socket = "/run/homeward/agent.sock"

[[vm]]
name = "web1"
mac = "52:54:00:00:00:50"
home_address = "192.0.2.50"
home_prefix_len = 24
home_agent = "198.51.100.1"
spi = 256
qmp = "/run/homeward/web1.qmp"

[[vm]]
name = "db1"
mac = "52:54:00:00:00:51"
home_address = "192.0.2.51"
home_prefix_len = 24
spi = 257
qmp = "/run/homeward/db1.qmp"
"#,
    );
    put(
        "agent_bad_vm",
        "keys = \"/k\"\nvm_link = \"eth0\"\n[[vm]]\nname = \"\"\nmac = \"52:54:00:00:00\"\nhome_address = \"192.0.2.50\"\nhome_prefix_len = 33\nspi = 256\nqmp = \"/q\"\n",
    );
    put("keys_registration_target", REGISTRATION_KEYS);
    put(
        "keys_docs",
        r#"[[spi]]
spi = 256
key = "00112233445566778899aabbccddeeff"
home_addresses = ["192.0.2.50/32", "192.0.2.64/26"]

[[spi]]
spi = 300
algorithm = "hmac-md5"
key = "0f0e0d0c0b0a09080706050403020100ff"
"#,
    );
    put(
        "keys_bad",
        "[[spi]]\nspi = 5\nkey = \"zz11\"\nhome_addresses = [\"192.0.2.0/33\", \"10.0.0/8\"]\n",
    );
}

/// Store files as `homeward run` leaves them: empty, and with bindings
/// (admin and registration, with and without expiry) and replay state.
fn store_seeds(o: &mut Out) {
    use homeward::store::{Change, Origin, SqliteStore, Store, StoredBinding};
    let file = |changes: &[Change]| -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("homeward-seed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut s = SqliteStore::open(&dir).unwrap();
            s.commit(changes).unwrap();
        } // dropped: checkpointed into the one file
        let bytes = std::fs::read(dir.join("homeward.db")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    };
    o.put("empty", &file(&[]));
    let mut changes = Vec::new();
    for n in 1..=6u8 {
        changes.push(Change::Put(StoredBinding {
            vm: Ipv4Addr::new(192, 0, 2, 50 + n),
            care_of: Ipv4Addr::new(203, 0, 113, n),
            vm_mac: (n % 2 == 0).then_some([0x52, 0x54, 0, 0, 0, n]),
            expires_unix_ms: (n % 3 != 0).then_some(1_900_000_000_000),
            origin: if n % 2 == 0 {
                Origin::Admin
            } else {
                Origin::Registration { spi: 256 }
            },
        }));
        changes.push(Change::Replay {
            spi: 256,
            home: Ipv4Addr::new(192, 0, 2, 50 + n),
            id: 0xe000_0000_0000_0000 | u64::from(n),
        });
    }
    o.put("bindings", &file(&changes));
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut report = Vec::new();
    for (target, gen) in [
        ("pipeline_home_agent", home_agent_seeds as fn(&mut Out)),
        ("pipeline_foreign_agent", foreign_agent_seeds),
        ("registration", registration_seeds),
        ("qmp_event", qmp_seeds),
        ("config", config_seeds),
        ("store_recovery", store_seeds),
    ] {
        let mut o = Out::new(&root, target);
        gen(&mut o);
        report.push(format!("{target}: {}", o.count));
    }
    println!("seeds written to {}: {}", root.display(), report.join(", "));
}
