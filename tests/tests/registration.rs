//! RFC 5944 registration end to end: `homeward run` with a key file in the
//! HA namespace, Registration Requests from the foreign namespace (the
//! care-of address) sent by `homeward register` or built independently in
//! Python (`tests/scapy/mip_send.py`, `tests/scapy/mip_interop.py` with
//! scapy's Mobile IP layer).
//! Needs root and `cargo build --release -p homeward`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use homeward_tests::agent::HomeAgent;
use homeward_tests::decode::{script, PYTHON};
use homeward_tests::{decode_arp, require_root, Capture, Mac, Topology, UdpSend};
use serde_json::Value;

const KEY: &str = "00112233445566778899aabbccddeeff0011223344556677";
const MD5_KEY: &str = "0f0e0d0c0b0a09080706050403020100";
const WRONG_KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa9988";
const VM_MAC: &str = "02:00:5e:00:00:50";

/// SPI 256 (HMAC-SHA256) may register the VM's address only; SPI 300
/// (HMAC-MD5) the whole home subnet.
fn keys_toml() -> String {
    format!(
        "[[spi]]\nspi = 256\nkey = \"{KEY}\"\nhome_addresses = [\"192.0.2.50/32\"]\n\n\
         [[spi]]\nspi = 300\nalgorithm = \"hmac-md5\"\nkey = \"{MD5_KEY}\"\nhome_addresses = [\"192.0.2.0/24\"]\n"
    )
}

/// The key file in a private temporary directory (the replay state is in
/// the lab's state directory).
struct Files {
    dir: tempfile::TempDir,
    keys: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, keys_toml()).expect("write keys");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    Files { dir, keys }
}

impl Files {
    fn flags(&self) -> Vec<String> {
        vec![
            "--registration-keys".into(),
            self.keys.display().to_string(),
        ]
    }
}

#[track_caller]
fn start<'a>(lab: &'a Topology, f: &Files, extra: &[&str]) -> HomeAgent<'a> {
    let mut flags = f.flags();
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    HomeAgent::start(lab, &flags)
}

/// `homeward register` from the foreign namespace for the lab's VM.
#[track_caller]
fn register(ha: &HomeAgent, lab: &Topology, f: &Files, extra: &[&str]) -> Output {
    let keys = f.keys.display().to_string();
    let ha_addr = lab.ha_wan.addr.to_string();
    let vm = lab.vm_home.to_string();
    let care_of = lab.care_of.to_string();
    let mut args = vec![
        "--home-agent",
        &ha_addr,
        "--home-address",
        &vm,
        "--care-of",
        &care_of,
        "--spi",
        "256",
        "--keys",
        &keys,
        "--json",
        "--timeout",
        "3",
    ];
    // Repeated options are usage errors: `extra` adds only new ones.
    args.extend(extra);
    ha.register_from(&lab.foreign, &args)
}

fn json_out(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "register printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `tests/scapy/mip_send.py ARGS` in the foreign namespace; its JSON.
#[track_caller]
fn send(lab: &Topology, args: &[&str]) -> Value {
    let mut full = vec![
        "env".to_string(),
        "PYTHONDONTWRITEBYTECODE=1".into(),
        PYTHON.into(),
        script("mip_send.py").to_string_lossy().into_owned(),
        "--ha".into(),
        lab.ha_wan.addr.to_string(),
        "--coa".into(),
        lab.care_of.to_string(),
    ];
    full.extend(args.iter().map(|s| s.to_string()));
    let out = lab.foreign.exec_ok(&full);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("mip_send.py: {e}: {out}"))
}

/// A genuine request for the lab's VM with SPI 256, plus `extra`.
fn vm_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    vm_args_with_key(KEY, extra)
}

fn vm_args_with_key<'a>(key: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--home", "192.0.2.50", "--spi", "256", "--key", key];
    a.extend(extra);
    a
}

fn code(v: &Value) -> Option<u64> {
    v["reply"]["code"].as_u64()
}

fn ntp_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2_208_988_800
}

#[track_caller]
fn stop_clean(ha: HomeAgent) {
    let t = ha.stop();
    assert!(t.success, "homeward did not exit cleanly:\n{}", t.stderr);
    assert!(
        t.unaccounted().iter().all(|u| *u == 0),
        "leaked frames\n{}",
        t.stderr
    );
}

#[test]
fn registration_binds_with_proxy_arp_and_deregistration_unbinds() {
    require_root();
    let lab = Topology::home_agent_lab("rgb");
    let f = files();
    // The HA knew the VM while it was at home: its MAC is announced when
    // the binding ends.
    lab.ha.ip(&[
        "neigh",
        "replace",
        "192.0.2.50",
        "lladdr",
        VM_MAC,
        "dev",
        "lan0",
        "nud",
        "stale",
    ]);
    let ha = start(&lab, &f, &[]);
    assert!(
        ha.stderr().contains("registration enabled"),
        "{}",
        ha.stderr()
    );

    let out = register(&ha, &lab, &f, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json_out(&out);
    assert_eq!(r["accepted"], true, "{r}");
    assert_eq!(r["code"], 0);
    assert_eq!(r["lifetime"], 60);
    let b = ha.binding("192.0.2.50").expect("a binding");
    assert_eq!(b["care_of"], "198.51.100.2");
    assert_eq!(b["vm_mac"], VM_MAC);
    let expires = b["expires_in"].as_u64().expect("a lifetime");
    assert!((55..=60).contains(&expires), "{b}");

    // Proxy ARP: the client's kernel resolves the VM to the HA's MAC.
    std::thread::sleep(Duration::from_millis(300));
    lab.client.send_udp(&UdpSend::new(lab.vm_home, 9, 32));
    std::thread::sleep(Duration::from_millis(300));
    let n = lab.client.neighbor(lab.vm_home).expect("neighbour entry");
    assert_eq!(n.lladdr, Some(lab.ha_lan.mac), "{n:?}");

    // The text form, refreshing the binding.
    let out = ha.register_from(
        &lab.foreign,
        &[
            "--home-agent",
            "198.51.100.1",
            "--home-address",
            "192.0.2.50",
            "--care-of",
            "198.51.100.2",
            "--spi",
            "256",
            "--keys",
            &f.keys.display().to_string(),
            "--lifetime",
            "30",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("registered 192.0.2.50 -> 198.51.100.2 for 30s"),
        "{text}"
    );
    assert_eq!(
        ha.binding("192.0.2.50").unwrap()["expires_in"]
            .as_u64()
            .map(|e| e <= 30),
        Some(true)
    );

    // Back home: lifetime 0, care-of = home address.
    let out = ha.register_from(
        &lab.foreign,
        &[
            "--home-agent",
            "198.51.100.1",
            "--home-address",
            "192.0.2.50",
            "--care-of",
            "192.0.2.50",
            "--spi",
            "256",
            "--keys",
            &f.keys.display().to_string(),
            "--lifetime",
            "0",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_out(&out)["code"], 0);
    assert!(ha.list().is_empty());

    let s = ha.registration_stats();
    assert_eq!(s["enabled"], true);
    assert_eq!(s["replies"]["0"], 3, "{s}");
    assert_eq!(s["denied"], 0, "{s}");
    stop_clean(ha);
}

/// A VM the home agent never talked to (no neighbour entry on its LAN):
/// the MAC comes with the registration, is kept with the binding, and the
/// deregistration hands the address back to it with gratuitous ARP.
#[test]
fn a_vm_the_ha_never_saw_is_given_back_to_the_mac_it_registered_with() {
    require_root();
    let lab = Topology::home_agent_lab("rgm");
    let f = files();
    const MAC: &str = "02:00:5e:00:00:51";
    assert!(lab.ha.neighbor(lab.vm_home).is_none(), "the HA saw the VM");
    let ha = start(&lab, &f, &[]);
    let out = register(&ha, &lab, &f, &["--vm-mac", MAC]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = ha.binding("192.0.2.50").expect("a binding");
    assert_eq!(b["vm_mac"], MAC, "{b}");
    std::thread::sleep(Duration::from_millis(900)); // the bind announcements

    let arp_cap = Capture::start(&lab.client, &lab.client_lan.name, "arp");
    let out = register(
        &ha,
        &lab,
        &f,
        &["--lifetime", "0", "--vm-mac", "02:00:5e:00:00:51"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ha.list().is_empty());
    std::thread::sleep(Duration::from_millis(1000));
    let arps = decode_arp(&arp_cap.stop());
    let mac: Mac = MAC.parse().unwrap();
    let give_back: Vec<_> = arps
        .iter()
        .filter(|a| a.is_gratuitous() && a.psrc == lab.vm_home)
        .collect();
    assert_eq!(give_back.len(), 5, "{arps:#?}");
    assert!(
        give_back
            .iter()
            .all(|a| a.hwsrc == mac && a.eth_src == Some(mac)),
        "{give_back:#?}"
    );
    // (The client never resolved the VM, so it has no entry for these
    // announcements to update: Linux creates none from gratuitous ARP.)
    assert_eq!(ha.registration_stats()["vm_mac_ignored"], 0);
    stop_clean(ha);
}

#[test]
fn forged_and_bit_flipped_requests_leave_the_table_alone() {
    require_root();
    let lab = Topology::home_agent_lab("rgf");
    let f = files();
    let ha = start(&lab, &f, &[]);

    // Signed with the wrong key: 131, answered with the right one.
    let r = send(&lab, &vm_args_with_key(WRONG_KEY, &["--reply-key", KEY]));
    assert_eq!(code(&r), Some(131), "{r}");
    assert_eq!(r["reply"]["auth_ok"], true, "{r}");
    // Unknown SPI: 131, and nothing to authenticate the reply with.
    let r = send(
        &lab,
        &["--home", "192.0.2.50", "--spi", "999", "--key", KEY],
    );
    assert_eq!(code(&r), Some(131), "{r}");
    assert!(ha.list().is_empty());

    // One bit flipped anywhere (every 7th bit, plus the last byte's).
    let len_bits = (24 + 6 + 32) * 8;
    for bit in (0..len_bits).step_by(7).chain([len_bits - 1]) {
        let bit = bit.to_string();
        let r = send(&lab, &vm_args(&["--flip", &bit, "--timeout", "0.5"]));
        let c = code(&r);
        assert!(!matches!(c, Some(0 | 1)), "bit {bit} accepted: {r}");
    }
    assert!(ha.list().is_empty(), "{:?}", ha.list());
    let s = ha.registration_stats();
    assert_eq!(s["accepted"], 0, "{s}");

    // The replay state did not move: a genuine request passes.
    let r = send(&lab, &vm_args(&[]));
    assert_eq!(code(&r), Some(0), "{r}");
    assert_eq!(r["reply"]["auth_ok"], true);
    assert!(ha.binding("192.0.2.50").is_some());
    stop_clean(ha);
}

#[test]
fn replays_are_refused_also_after_a_restart() {
    require_root();
    let lab = Topology::home_agent_lab("rgr");
    let f = files();
    // A wide window, so that after the restart only the saved state can
    // refuse the replay.
    let config = f.dir.path().join("run.toml");
    std::fs::write(&config, "[registration]\nreplay_window = 300\n").unwrap();
    let config = config.display().to_string();
    let ha = start(&lab, &f, &["--config", &config]);

    let first = send(&lab, &vm_args(&[]));
    assert_eq!(code(&first), Some(0), "{first}");
    let raw = first["request_hex"].as_str().unwrap().to_string();
    ha.unbind("192.0.2.50");

    let r = send(&lab, &vm_args(&["--raw", &raw]));
    assert_eq!(code(&r), Some(133), "{r}");
    assert_eq!(r["reply"]["auth_ok"], true);
    assert!(ha.list().is_empty());
    stop_clean(ha);

    // The replay state is in the store, with the bindings.
    assert!(lab.state_dir().join("homeward.db").exists());

    let ha = start(&lab, &f, &["--config", &config]);
    let r = send(&lab, &vm_args(&["--raw", &raw]));
    assert_eq!(code(&r), Some(133), "replay accepted after a restart: {r}");
    assert!(ha.list().is_empty());
    // A fresh one still passes.
    let r = send(&lab, &vm_args(&[]));
    assert_eq!(code(&r), Some(0), "{r}");
    stop_clean(ha);
}

#[test]
fn stale_identification_gets_133_with_the_ha_time_and_register_resyncs() {
    require_root();
    let lab = Topology::home_agent_lab("rgt");
    let f = files();
    let ha = start(&lab, &f, &[]);

    for offset in ["-100", "30"] {
        let r = send(&lab, &vm_args(&["--id-offset", offset]));
        assert_eq!(code(&r), Some(133), "{r}");
        assert_eq!(r["reply"]["auth_ok"], true, "{r}");
        let sent = r["sent_id"].as_u64().unwrap();
        let id = r["reply"]["id"].as_u64().unwrap();
        assert_eq!(id & 0xffff_ffff, sent & 0xffff_ffff, "low 32 bits copied");
        let ha_secs = id >> 32;
        assert!(ha_secs.abs_diff(ntp_now_secs()) <= 2, "HA time {ha_secs}");
    }
    assert!(ha.list().is_empty());

    // An agent whose clock is 1000 s slow learns the HA's time from the
    // 133 and succeeds at once.
    let out = register(&ha, &lab, &f, &["--clock-skew", "-1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_out(&out)["code"], 0);
    assert!(ha.binding("192.0.2.50").is_some());
    let s = ha.registration_stats();
    assert_eq!(s["replies"]["133"], 3, "{s}");
    assert_eq!(s["replies"]["0"], 1, "{s}");
    stop_clean(ha);
}

#[test]
fn unauthorized_home_address_and_bad_care_of_are_refused() {
    require_root();
    let lab = Topology::home_agent_lab("rga");
    let f = files();
    let ha = start(&lab, &f, &[]);
    let keys = f.keys.display().to_string();

    let try_register = |home: &str, care_of: &str| -> Output {
        ha.register_from(
            &lab.foreign,
            &[
                "--home-agent",
                "198.51.100.1",
                "--home-address",
                home,
                "--care-of",
                care_of,
                "--spi",
                "256",
                "--keys",
                &keys,
                "--timeout",
                "3",
            ],
        )
    };
    // SPI 256 may only register 192.0.2.50.
    let out = try_register("192.0.2.51", "198.51.100.2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("code 129"), "{err}");
    for care_of in [
        "192.0.2.10",   // inside the home subnet
        "198.51.100.1", // the HA itself
        "127.0.0.1",
        "224.0.0.5",
        "255.255.255.255",
        "0.0.0.0",
    ] {
        let out = try_register("192.0.2.50", care_of);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("code 129"),
            "care-of {care_of}: {err}"
        );
        assert!(ha.list().is_empty(), "care-of {care_of}");
    }
    // M or G (minimal or GRE encapsulation): 139.
    for flags in ["0x12", "0x0a"] {
        let r = send(&lab, &vm_args(&["--flags", flags]));
        assert_eq!(code(&r), Some(139), "{r}");
    }
    // The Home Agent field naming someone else: 136, with our address.
    let r = send(&lab, &vm_args(&["--ha-field", "198.51.100.9"]));
    assert_eq!(code(&r), Some(136), "{r}");
    assert_eq!(r["reply"]["ha"], "198.51.100.1", "{r}");
    assert!(ha.list().is_empty());
    let s = ha.registration_stats();
    assert_eq!(s["replies"]["129"], 7, "{s}");
    assert_eq!(s["replies"]["139"], 2, "{s}");
    assert_eq!(s["replies"]["136"], 1, "{s}");
    assert!(
        s["last_error"].as_str().unwrap_or("").contains("136"),
        "{s}"
    );
    // Denials are summarised per source and reason, not one line each.
    let t = ha.stop();
    assert!(t.success, "{}", t.stderr);
    assert!(
        t.stderr
            .contains("from 198.51.100.2: code 129 (care-of address inside the home network)")
            && t.stderr
                .contains("registration datagrams denied or dropped"),
        "{}",
        t.stderr
    );
    assert!(!t.stderr.contains("registration denied"), "{}", t.stderr);
}

#[test]
fn scapy_built_hmac_md5_request_interoperates() {
    require_root();
    let lab = Topology::home_agent_lab("rgi");
    let f = files();
    let ha = start(&lab, &f, &[]);
    let out = lab.foreign.exec_ok(&[
        "env",
        "PYTHONDONTWRITEBYTECODE=1",
        PYTHON,
        &script("mip_interop.py").to_string_lossy(),
        "198.51.100.1",
        "192.0.2.77",
        "198.51.100.2",
        "300",
        MD5_KEY,
        "45",
    ]);
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["is_rrp"], true, "{r}");
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(r["lifetime"], 45, "{r}");
    assert_eq!(r["haaddr"], "198.51.100.1", "{r}");
    assert_eq!(r["id"], r["sent_id"], "{r}");
    assert_eq!(r["auth_ok"], true, "{r}");
    let b = ha.binding("192.0.2.77").expect("a binding");
    assert_eq!(b["care_of"], "198.51.100.2");
    stop_clean(ha);
}

/// Signed requests and `homeward bind` for the home agent's own addresses
/// (LAN and WAN) and the home subnet's network and broadcast addresses are
/// refused (129), and nothing is bound.
#[test]
fn claims_on_the_gateways_own_addresses_are_refused() {
    require_root();
    let lab = Topology::home_agent_lab("rgc");
    let f = files();
    let ha = start(&lab, &f, &[]);
    // SPI 300 may register anything in 192.0.2.0/24.
    for home in ["192.0.2.1", "192.0.2.0", "192.0.2.255"] {
        let r = send(
            &lab,
            &[
                "--home", home, "--spi", "300", "--key", MD5_KEY, "--alg", "md5",
            ],
        );
        assert_eq!(code(&r), Some(129), "{home}: {r}");
        assert_eq!(r["reply"]["auth_ok"], true, "{home}: {r}");
    }
    for (vm, care_of) in [
        ("192.0.2.1", "198.51.100.2"),
        ("198.51.100.1", "203.0.113.9"),
        ("192.0.2.0", "198.51.100.2"),
        ("192.0.2.255", "198.51.100.2"),
        ("192.0.2.50", "192.0.2.1"),
    ] {
        let sock = lab.control_socket();
        let out = lab.homeward_cli(&["bind", vm, care_of, "--socket", sock.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("cannot be a"),
            "bind {vm} {care_of}: {err}"
        );
    }
    assert!(ha.list().is_empty());
    assert_eq!(ha.registration_stats()["replies"]["129"], 3);
    stop_clean(ha);
}

/// Forged registrations as fast as one core sends them, for 10 s, while an
/// honest agent registers every 200 ms: the honest ones are accepted
/// within 1 s, homeward's CPU stays bounded and its log small.
#[test]
fn a_forged_flood_does_not_starve_honest_registrations() {
    use homeward::registration::wire::{flags, RequestFields};
    use homeward::registration::{KeyFile, RegistrationClient, RegistrationParams};
    use homeward_tests::inns::spawn_in_netns;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    require_root();
    let lab = Topology::home_agent_lab("rgf");
    let f = files();
    let ha = start(&lab, &f, &[]);
    let log_before = ha.stderr().len();
    let cpu_before = cpu_seconds(ha.pid());
    let duration = Duration::from_secs(10);

    // The flood: correctly formed requests under a known SPI with a wrong
    // key, so each costs the home agent an HMAC.
    let forged = {
        let mut b = Vec::new();
        RequestFields {
            flags: flags::T,
            lifetime: 600,
            home_address: "192.0.2.50".parse().unwrap(),
            home_agent: lab.ha_wan.addr,
            care_of: lab.care_of,
            identification: 0x1234_5678_9abc_def0,
        }
        .emit(&mut b);
        let wrong =
            KeyFile::parse(&format!("[[spi]]\nspi = 256\nkey = \"{WRONG_KEY}\"\n")).unwrap();
        wrong.get(256).unwrap().key.append_mh_auth(&mut b, 256);
        b
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let ha_addr = std::net::SocketAddrV4::new(lab.ha_wan.addr, 434);
    let flooder = {
        let (stop, sent) = (stop.clone(), sent.clone());
        spawn_in_netns(&lab.foreign, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..256 {
                    if s.send_to(&forged, ha_addr).is_ok() {
                        n += 1;
                    }
                }
            }
            sent.store(n, Ordering::Relaxed);
        })
    };

    let keys = KeyFile::parse(&keys_toml()).unwrap();
    let care_of = lab.care_of;
    let home_agent = lab.ha_wan.addr;
    let honest = spawn_in_netns(&lab.foreign, move || {
        let mut client = RegistrationClient::new(std::net::Ipv4Addr::UNSPECIFIED, keys).unwrap();
        let p = RegistrationParams {
            home_address: "192.0.2.50".parse().unwrap(),
            home_agent,
            care_of,
            lifetime: 600,
            reverse_tunnel: true,
            spi: 256,
            vm_mac: None,
            switchover: false,
        };
        let start = std::time::Instant::now();
        let mut results = Vec::new();
        let mut i = 0u32;
        while start.elapsed() < duration {
            let t = std::time::Instant::now();
            let ok = client.register(&p, Duration::from_secs(1), 4).is_ok();
            results.push(ok && t.elapsed() <= Duration::from_secs(1));
            i += 1;
            let next = Duration::from_millis(200) * i;
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        results
    });
    let results = honest.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();

    let cpu = cpu_seconds(ha.pid()) - cpu_before;
    let log_growth = ha.stderr().len() - log_before;
    let accepted = results.iter().filter(|ok| **ok).count();
    let s = ha.registration_stats();
    eprintln!(
        "flood: {} forged datagrams sent in {duration:?} ({:.0}/s); honest {accepted}/{} accepted within 1 s; homeward CPU {cpu:.2} s ({:.0} % of one core); log grew {log_growth} bytes; stats {s}",
        sent.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed) as f64 / duration.as_secs_f64(),
        results.len(),
        cpu / duration.as_secs_f64() * 100.0,
    );
    assert!(results.len() >= 45, "{} honest attempts", results.len());
    assert!(
        accepted * 100 >= results.len() * 99,
        "only {accepted} of {} honest registrations accepted within 1 s",
        results.len()
    );
    // The reader and the control loop: at most about one core each.
    assert!(
        cpu < 2.0 * duration.as_secs_f64(),
        "homeward used {cpu} s of CPU"
    );
    assert!(
        log_growth < 8192,
        "the log grew {log_growth} bytes:\n{}",
        ha.stderr()
    );
    assert!(s["replies"]["131"].as_u64().unwrap_or(0) > 0, "{s}");
    stop_clean(ha);
}

/// User plus system CPU time of a process, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // /proc reports in USER_HZ, 100 on every architecture homeward runs on.
    ticks / 100.0
}

/// Make before break, the home agent's side, with a request built by
/// Python: a switchover from the VM's home hypervisor holds what the client
/// sends the VM (nothing reaches the foreign host); the destination's
/// registration releases all of it into the new tunnel.
#[test]
fn a_switchover_holds_the_vms_traffic_until_the_destination_registers() {
    require_root();
    let lab = Topology::home_agent_lab("rsw");
    let f = files();
    let ha = start(&lab, &f, &[]);
    // From hypervisor A on the home network: its address as care-of.
    let v = send(&lab, &vm_args(&["--switchover", "--coa", "192.0.2.20"]));
    assert_eq!(code(&v), Some(0), "{v}");
    assert_eq!(v["reply"]["lifetime"], 10, "the hold is capped: {v}");
    assert_eq!(v["reply"]["auth_ok"], true, "{v}");
    let b = ha.binding("192.0.2.50").expect("a held binding");
    assert_eq!(b["care_of"], "0.0.0.0", "{b}");

    let cap = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");
    let sent = lab
        .client
        .send_udp(&UdpSend::new(lab.vm_home, 9, 32).repeat(5, Duration::from_millis(20)));
    assert_eq!(sent.sent(), 5, "{sent:?}");
    let held = ha.wait_stats(Duration::from_secs(3), |s| {
        s["counters"]["switchover_held"].as_u64() == Some(5)
    });
    assert_eq!(held["counters"]["switchover_held"], 5, "{held}");
    assert_eq!(held["counters"]["encapsulated"], 0, "{held}");

    // The destination registers: everything held goes into its tunnel.
    let v = send(&lab, &vm_args(&["--id-offset", "1"]));
    assert_eq!(code(&v), Some(0), "{v}");
    let done = ha.wait_stats(Duration::from_secs(3), |s| {
        s["counters"]["switchover_released"].as_u64() == Some(5)
    });
    std::thread::sleep(Duration::from_millis(300));
    let packets = homeward_tests::decode_ipip(&cap.stop()).packets;
    assert_eq!(packets.len(), 5, "{packets:#?}\n{done}");
    assert!(packets.iter().all(|p| p.outer.dst == lab.care_of));
    assert_eq!(done["counters"]["encapsulated"], 5, "{done}");
    assert_eq!(done["drops"]["switchover_buffer_full"], 0, "{done}");
    assert_eq!(done["drops"]["switchover_expired"], 0, "{done}");
    assert_eq!(ha.binding("192.0.2.50").unwrap()["care_of"], "198.51.100.2");
    stop_clean(ha);
}
