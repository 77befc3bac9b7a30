//! The etcd store (`store = "etcd"`) end to end, with Debian's etcd
//! (`/usr/bin/etcd`, package etcd-server): a real 3-member cluster in its
//! own namespace, two home agents in two labs, each joined to the etcd
//! namespace by a veth. Bindings made at either gateway appear at the
//! other (the delay is measured and printed), unbinds and lifetimes that
//! run out disappear from both, a killed member changes nothing, a gateway
//! cut off from etcd keeps forwarding, says so, and catches up; a
//! registration accepted at one gateway and replayed to the other is
//! refused. And at the store level: two stores racing for one
//! Identification, only one wins (the compare-and-swap).
//! Needs root and `cargo build --release -p homeward`.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use homeward::proto::Request;
use homeward_tests::agent::HomeAgent;
use homeward_tests::decode::{script, PYTHON};
use homeward_tests::etcd::{require_etcd, Cluster, ETCD, ETCDCTL};
use homeward_tests::inns::BpffsMount;
use homeward_tests::{
    decode_ipip, require_root, veth_pair, Capture, Mac, Netns, Topology, UdpSend, VethEnd,
};
use serde_json::Value;

const KEY: &str = "00112233445566778899aabbccddeeff0011223344556677";
const PREFIX: &str = "/hwtest";
/// The etcd namespace's address on its bridge.
const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// A home agent lab joined to the etcd namespace's bridge as `addr`.
fn join_etcd(lab: &Topology, etcd: &Netns, port: &str, addr: Ipv4Addr, n: u8) {
    veth_pair(
        &VethEnd::new(&lab.ha, "etcd0", Mac::derive(&lab.tag, 0x70 + n)).addr(addr, 24),
        &VethEnd::new(etcd, port, Mac::derive("etcd", 0x70 + n)),
    );
    etcd.enslave(port, "br0");
}

/// The config and key files of one gateway.
fn gateway_files(dir: &Path, endpoints: &[String]) -> (PathBuf, PathBuf) {
    let keys = dir.join("keys.toml");
    std::fs::write(
        &keys,
        format!("[[spi]]\nspi = 256\nkey = \"{KEY}\"\nhome_addresses = [\"192.0.2.0/24\"]\n"),
    )
    .unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("run.toml");
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "store = \"etcd\"\n\n[etcd]\nendpoints = [{}]\nprefix = \"{PREFIX}\"\nrequest_timeout_ms = 1500\nconnect_timeout_ms = 1000\n\n[registration]\nreplay_window = 300\n",
            endpoints.join(", ")
        ),
    )
    .unwrap();
    (config, keys)
}

fn start<'a>(lab: &'a Topology, config: &Path, keys: &Path) -> HomeAgent<'a> {
    let config = config.display().to_string();
    let keys = keys.display().to_string();
    HomeAgent::start(lab, &["--config", &config, "--registration-keys", &keys])
}

/// `list` straight over the control socket (no process per poll, so the
/// replication delay is measured to a fraction of a millisecond).
fn list(lab: &Topology) -> Vec<Value> {
    match homeward::client::request(&lab.control_socket(), &Request::List {}) {
        Ok(Value::Array(v)) => v,
        other => panic!("list: {other:?}"),
    }
}

fn care_of_at(lab: &Topology, vm: &str) -> Option<String> {
    list(lab)
        .into_iter()
        .find(|b| b["vm"] == vm)
        .and_then(|b| b["care_of"].as_str().map(str::to_string))
}

/// Waits until `vm`'s binding at `lab` is `want` (None: absent); the time
/// it took.
#[track_caller]
fn wait_binding(lab: &Topology, vm: &str, want: Option<&str>, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let now = care_of_at(lab, vm);
        if now.as_deref() == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < timeout,
            "{vm} at {}: {now:?}, expected {want:?} within {timeout:?}",
            lab.tag
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Whether a UDP datagram from the lab's client to `vm` comes out of the
/// tunnel at the care-of address.
fn forwards(lab: &Topology, vm: Ipv4Addr) -> bool {
    let cap = Capture::start(&lab.foreign, &lab.foreign_wan.name, "ip proto 4");
    lab.client
        .send_udp(&UdpSend::new(vm, 4000, 64).repeat(3, Duration::from_millis(50)));
    let packets = decode_ipip(&cap.stop_after(Duration::from_millis(300))).packets;
    packets
        .iter()
        .any(|p| p.inner.as_ref().is_some_and(|i| i.dst == vm))
}

/// `mip_send.py` from the lab's foreign namespace; its JSON.
fn mip_send(lab: &Topology, extra: &[&str]) -> Value {
    let mut full = vec![
        "env".to_string(),
        "PYTHONDONTWRITEBYTECODE=1".into(),
        PYTHON.into(),
        script("mip_send.py").to_string_lossy().into_owned(),
        "--ha".into(),
        lab.ha_wan.addr.to_string(),
        "--coa".into(),
        lab.care_of.to_string(),
        "--home".into(),
        "192.0.2.60".into(),
        "--spi".into(),
        "256".into(),
        "--key".into(),
        KEY.into(),
    ];
    full.extend(extra.iter().map(|s| s.to_string()));
    let out = lab.foreign.exec_ok(&full);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("mip_send.py: {e}: {out}"))
}

fn store_stats(ha: &HomeAgent) -> Value {
    ha.stats()["store"].clone()
}

#[track_caller]
fn wait_connected(ha: &HomeAgent, want: bool, timeout: Duration) -> Value {
    let s = ha.wait_stats(timeout, |s| s["store"]["connected"] == want);
    assert_eq!(
        s["store"]["connected"],
        want,
        "{}\n{}",
        s["store"],
        ha.stderr()
    );
    s["store"].clone()
}

#[test]
fn two_gateways_share_bindings_through_a_three_member_etcd() {
    require_root();
    require_etcd();
    let etcd_ns = Netns::new("etcd-db");
    etcd_ns.disable_ipv6();
    etcd_ns.add_bridge("br0");
    etcd_ns.add_addr("br0", ETCD_ADDR, 24);
    let a = Topology::home_agent_lab("eta");
    let b = Topology::home_agent_lab("etb");
    join_etcd(&a, &etcd_ns, "pa", Ipv4Addr::new(10, 77, 0, 2), 1);
    join_etcd(&b, &etcd_ns, "pb", Ipv4Addr::new(10, 77, 0, 3), 2);
    etcd_ns.wait_link_up("br0", Duration::from_secs(5));
    let mut cluster = Cluster::start(&etcd_ns, ETCD_ADDR, 2379);
    let endpoints = cluster.endpoints();
    let (config_a, keys_a) = gateway_files(a.dir(), &endpoints);
    let (config_b, keys_b) = gateway_files(b.dir(), &endpoints);
    let ha_a = start(&a, &config_a, &keys_a);
    let ha_b = start(&b, &config_b, &keys_b);
    for ha in [&ha_a, &ha_b] {
        let s = store_stats(ha);
        assert_eq!(s["backend"], "etcd", "{s}");
        assert_eq!(s["connected"], true, "{s}");
    }
    let coa = a.care_of.to_string();

    // A bind at either gateway appears at the other.
    let mut delays = Vec::new();
    for (i, vm) in ["192.0.2.50", "192.0.2.51", "192.0.2.52", "192.0.2.53"]
        .iter()
        .enumerate()
    {
        let (from, to, ha) = if i % 2 == 0 {
            (&a, &b, &ha_a)
        } else {
            (&b, &a, &ha_b)
        };
        let t0 = Instant::now();
        ha.bind(vm, &coa, &[]);
        let acked = t0.elapsed();
        let seen = wait_binding(to, vm, Some(&coa), Duration::from_secs(5));
        println!(
            "bind {vm} at {}: acknowledged (committed to etcd) in {:.1} ms, in {}'s table {:.2} ms after the acknowledgement",
            from.tag,
            acked.as_secs_f64() * 1e3,
            to.tag,
            seen.as_secs_f64() * 1e3
        );
        delays.push(seen);
    }
    delays.sort();
    println!(
        "replication delay after the acknowledgement: median {:.2} ms, max {:.2} ms",
        delays[delays.len() / 2].as_secs_f64() * 1e3,
        delays[delays.len() - 1].as_secs_f64() * 1e3
    );
    // Applied to the data path too: B forwards what A bound.
    assert!(
        forwards(&b, Ipv4Addr::new(192, 0, 2, 50)),
        "B does not forward A's binding"
    );

    // A bind file at A (`bind --file`, one batch): every VM in etcd, one
    // key each, and in B's table.
    let vms: Vec<String> = (100..200).map(|i| format!("192.0.2.{i}")).collect();
    let file = a.dir().join("bind-file.txt");
    let text: String = vms.iter().map(|vm| format!("{vm} {coa}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let t0 = Instant::now();
    let said = ha_a.cli(&["bind", "--file", &file.display().to_string()]);
    let acked = t0.elapsed();
    let stored = cluster.keys(&format!("{PREFIX}/bindings/"));
    let missing: Vec<&String> = vms
        .iter()
        .filter(|vm| !stored.contains(&format!("{PREFIX}/bindings/{vm}")))
        .collect();
    assert!(missing.is_empty(), "not in etcd: {missing:?}\n{said}");
    wait_binding(&b, &vms[vms.len() - 1], Some(&coa), Duration::from_secs(10));
    let at_b = list(&b);
    let at_b: Vec<&Value> = vms
        .iter()
        .filter_map(|vm| at_b.iter().find(|x| x["vm"] == vm.as_str()))
        .collect();
    assert_eq!(at_b.len(), vms.len(), "B has {} of them", at_b.len());
    println!(
        "bind --file of {} VMs at A: acknowledged (in etcd) in {:.0} ms, all in B's table {:.0} ms after the bind started: {}",
        vms.len(),
        acked.as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64() * 1e3,
        said.trim()
    );

    // An unbind disappears from both.
    ha_b.unbind("192.0.2.50");
    let gone = wait_binding(&a, "192.0.2.50", None, Duration::from_secs(5));
    println!(
        "unbind at B gone from A in {:.2} ms",
        gone.as_secs_f64() * 1e3
    );
    assert!(care_of_at(&b, "192.0.2.50").is_none());

    // A lifetime that runs out: gone from both, and from etcd (its lease).
    ha_a.bind("192.0.2.54", &coa, &["--lifetime", "2"]);
    wait_binding(&b, "192.0.2.54", Some(&coa), Duration::from_secs(5));
    let t0 = Instant::now();
    wait_binding(&a, "192.0.2.54", None, Duration::from_secs(5));
    wait_binding(&b, "192.0.2.54", None, Duration::from_secs(5));
    let tables = t0.elapsed();
    let key = format!("{PREFIX}/bindings/192.0.2.54");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.keys(&format!("{PREFIX}/")).contains(&key) {
        assert!(Instant::now() < deadline, "lease did not remove {key}");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "2 s lifetime: gone from both tables {:.0} ms after the bind was seen at B; from etcd (its lease) {:.0} ms after",
        tables.as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64() * 1e3
    );

    // Replay protection across gateways: a registration accepted at A,
    // replayed to B, is refused.
    let first = mip_send(&a, &[]);
    assert_eq!(first["reply"]["code"], 0, "{first}");
    wait_binding(&b, "192.0.2.60", Some(&coa), Duration::from_secs(5));
    let raw = first["request_hex"].as_str().unwrap().to_string();
    let replayed = mip_send(&b, &["--raw", &raw, "--timeout", "1"]);
    let code = replayed["reply"]["code"].as_u64();
    assert!(
        !matches!(code, Some(0 | 1)),
        "the replay was accepted by the other gateway: {replayed}"
    );
    println!("registration accepted at A, replayed to B: code {code:?}");
    let rb = ha_b.registration_stats();
    assert_eq!(rb["accepted"], 0, "{rb}");
    // A fresh one at B passes (and A learns its Identification).
    let fresh = mip_send(&b, &[]);
    assert_eq!(fresh["reply"]["code"], 0, "{fresh}");
    let raw_b = fresh["request_hex"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(200));
    let back = mip_send(&a, &["--raw", &raw_b, "--timeout", "1"]);
    assert!(
        !matches!(back["reply"]["code"].as_u64(), Some(0 | 1)),
        "B's registration replayed to A was accepted: {back}"
    );

    // One member of three killed: nothing changes.
    cluster.kill_member(0);
    let t0 = Instant::now();
    ha_b.bind("192.0.2.55", &coa, &[]);
    let acked = t0.elapsed();
    let seen = wait_binding(&a, "192.0.2.55", Some(&coa), Duration::from_secs(5));
    println!(
        "member m0 killed: bind at B acknowledged in {:.1} ms, at A {:.2} ms later",
        acked.as_secs_f64() * 1e3,
        seen.as_secs_f64() * 1e3
    );
    ha_a.unbind("192.0.2.55");
    wait_binding(&b, "192.0.2.55", None, Duration::from_secs(5));
    // Both watches moved to another member; neither reported etcd lost,
    // not even for a moment (a watch sent back to the killed member did).
    std::thread::sleep(Duration::from_secs(2));
    for ha in [&ha_a, &ha_b] {
        let s = store_stats(ha);
        assert_eq!(s["connected"], true, "{}", ha.stderr());
        assert_eq!(s["losses"], 0, "{s}\n{}", ha.stderr());
    }

    // B cut off from etcd (its link down: the connections go silent): it
    // says so, keeps forwarding, and catches up when the link is back.
    b.ha.link_down("etcd0");
    let s = wait_connected(&ha_b, false, Duration::from_secs(15));
    println!("B cut off: reported {s}");
    assert!(ha_b.stderr().contains("etcd LOST"), "{}", ha_b.stderr());
    assert!(
        forwards(&b, Ipv4Addr::new(192, 0, 2, 52)),
        "B stopped forwarding"
    );
    let refused = b.homeward_cli(&[
        "bind",
        "192.0.2.56",
        &coa,
        "--socket",
        &b.control_socket().to_string_lossy(),
    ]);
    assert!(
        !refused.status.success(),
        "a bind without etcd was acknowledged"
    );
    println!(
        "bind at B without etcd refused: {}",
        String::from_utf8_lossy(&refused.stderr).trim()
    );
    let metrics_b = ha_b.stats();
    assert_eq!(metrics_b["store"]["connected"], false);
    // Meanwhile at A.
    ha_a.unbind("192.0.2.52");
    ha_a.bind("192.0.2.57", &coa, &[]);
    assert!(care_of_at(&b, "192.0.2.52").is_some());
    let t0 = Instant::now();
    b.ha.link_up("etcd0");
    wait_connected(&ha_b, true, Duration::from_secs(20));
    wait_binding(&b, "192.0.2.52", None, Duration::from_secs(5));
    wait_binding(&b, "192.0.2.57", Some(&coa), Duration::from_secs(5));
    // The refused bind's request may have sat in B's socket and reached
    // etcd when the link came back (a timed-out commit's outcome is
    // unknown): whichever it was, both gateways agree.
    let deadline = Instant::now() + Duration::from_secs(5);
    while care_of_at(&a, "192.0.2.56") != care_of_at(&b, "192.0.2.56") {
        assert!(
            Instant::now() < deadline,
            "the gateways disagree on 192.0.2.56"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "the refused bind at B: {} at both after the catch-up",
        if care_of_at(&a, "192.0.2.56").is_some() {
            "applied late by etcd (its request had reached it)"
        } else {
            "absent"
        }
    );
    println!(
        "B reconnected and caught up {:.0} ms after its link came back",
        t0.elapsed().as_secs_f64() * 1e3
    );

    // All of etcd down: both gateways keep forwarding and report it.
    cluster.kill_member(1);
    cluster.kill_member(2);
    for ha in [&ha_a, &ha_b] {
        wait_connected(ha, false, Duration::from_secs(15));
    }
    assert!(
        forwards(&a, Ipv4Addr::new(192, 0, 2, 51)),
        "A stopped forwarding"
    );
    assert!(
        forwards(&b, Ipv4Addr::new(192, 0, 2, 51)),
        "B stopped forwarding"
    );
    let s = ha_a.stats();
    assert!(s["store"]["losses"].as_u64() >= Some(1), "{}", s["store"]);
    // etcd back: both catch up, and bindings replicate again.
    for i in 0..3 {
        cluster.start_member(i);
    }
    cluster.wait_healthy(Duration::from_secs(30));
    for ha in [&ha_a, &ha_b] {
        wait_connected(ha, true, Duration::from_secs(20));
    }
    ha_a.bind("192.0.2.58", &coa, &[]);
    let seen = wait_binding(&b, "192.0.2.58", Some(&coa), Duration::from_secs(5));
    println!(
        "etcd restarted: replication again, {:.2} ms",
        seen.as_secs_f64() * 1e3
    );
    for ha in [ha_a, ha_b] {
        let t = ha.stop();
        assert!(t.success, "homeward did not exit cleanly:\n{}", t.stderr);
    }
}

/// Two stores that both last saw no Identification for one (SPI, home)
/// race to accept the same one: exactly one commit succeeds, the other is
/// a ReplayConflict, and its reload hands the winner's value over.
#[test]
fn only_one_gateway_accepts_an_identification() {
    use homeward::config::EtcdConfig;
    use homeward::store::{Change, EtcdStore, Replication, Store, StoreError};

    require_root();
    require_etcd();
    let ns = Netns::new("etcd-cas");
    let mut cluster = Cluster::start(&ns, Ipv4Addr::LOCALHOST, 2479);
    // The test process talks to it through the namespace's loopback.
    let config = EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: "/cas".into(),
        tls: None,
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
    };
    let ns_file = std::fs::File::open(format!("/run/netns/{}", ns.name())).expect("netns");
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread in the namespace (setns is per thread).
    let worker = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd, for this thread only.
        let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns");
        let mut s1 = EtcdStore::connect(&config).unwrap();
        let mut s2 = EtcdStore::connect(&config).unwrap();
        s1.load(0).unwrap();
        s2.load(0).unwrap();
        let home = Ipv4Addr::new(192, 0, 2, 9);
        let replay = |id| Change::Replay { spi: 7, home, id };
        s1.commit(&[replay(100)]).unwrap();
        let lost = s2.commit(&[replay(100)]);
        assert!(
            matches!(lost, Err(StoreError::ReplayConflict { spi: 7, .. })),
            "{lost:?}"
        );
        // The reload (and the watch) tell s2's control loop about id 100.
        let got = s2
            .replication()
            .unwrap()
            .recv_timeout(Duration::from_secs(3))
            .unwrap();
        let Replication::Changes(list) = got else {
            panic!("{got:?}")
        };
        assert!(list.iter().any(|r| r.change == replay(100)), "{list:?}");
        // What the daemon's control loop does with it.
        for r in &list {
            s2.fresh(r.key(), r.revision);
        }
        // Knowing it now, a newer one passes at s2; an older at s1 not.
        s2.commit(&[replay(101)]).unwrap();
        assert!(s1.commit(&[replay(101)]).is_err());
        let snap = s1.load(0).unwrap();
        tx.send(snap.replay).unwrap();
    });
    worker.join().expect("the store thread failed");
    let replay = rx.recv().unwrap();
    assert_eq!(replay, vec![((7, Ipv4Addr::new(192, 0, 2, 9)), 101)]);
    cluster.kill_member(0);
}

/// Writes a CA, a server certificate for `server_ip` and a client
/// certificate (ECDSA P-256, openssl) into `dir`; returns nothing, the
/// files are `<name>.pem` and `<name>.key` for ca, server, client, and a
/// second CA `other-ca` that signed nothing here.
fn make_certs(dir: &Path, server_ip: Ipv4Addr) {
    let sh = |cmd: String| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(dir)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    for ca in ["ca", "other-ca"] {
        sh(format!(
            "openssl req -x509 {key} -keyout {ca}.key -out {ca}.pem -days 2 -subj /CN=homeward-test-{ca}"
        ));
    }
    for (name, ext) in [
        (
            "server",
            format!("subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth,clientAuth"),
        ),
        ("client", "extendedKeyUsage=clientAuth".to_string()),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        sh(format!(
            "openssl req {key} -keyout {name}.key -out {name}.csr -subj /CN={name} && \
             openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -days 2 -out {name}.pem -extfile {name}.ext"
        ));
    }
}

/// `[etcd]` over TLS with a client certificate: etcd (one member) requires
/// one signed by its CA. The gateway connects, commits and watches; one
/// that trusts another CA refuses to start, saying why; an upgrade
/// (--takeover) keeps the bindings and the store.
#[test]
fn the_store_talks_to_etcd_over_tls_with_a_client_certificate() {
    require_root();
    require_etcd();
    let etcd_ns = Netns::new("etcd-tls");
    etcd_ns.disable_ipv6();
    etcd_ns.add_bridge("br0");
    etcd_ns.add_addr("br0", ETCD_ADDR, 24);
    let a = Topology::home_agent_lab("etls");
    join_etcd(&a, &etcd_ns, "pa", Ipv4Addr::new(10, 77, 0, 2), 1);
    etcd_ns.wait_link_up("br0", Duration::from_secs(5));
    let certs = etcd_ns.dir().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs, ETCD_ADDR);
    let file = |name: &str| certs.join(name).display().to_string();
    let client = format!("https://{ETCD_ADDR}:2379");
    let peer = format!("http://{ETCD_ADDR}:2380");
    let data = etcd_ns.dir().join("m0").display().to_string();
    let _etcd = etcd_ns.spawn(&[
        ETCD,
        "--name",
        "m0",
        "--data-dir",
        &data,
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("m0={peer}"),
        "--cert-file",
        &file("server.pem"),
        "--key-file",
        &file("server.key"),
        "--trusted-ca-file",
        &file("ca.pem"),
        "--client-cert-auth",
        "--log-level",
        "warn",
    ]);
    // etcdctl with the same certificates: up, and later what is stored.
    let etcdctl = |args: &[&str]| {
        let ca = file("ca.pem");
        let cert = file("client.pem");
        let key = file("client.key");
        let mut full = vec![
            ETCDCTL,
            "--endpoints",
            &client,
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--dial-timeout",
            "1s",
        ];
        full.extend(args);
        let mut cmd = etcd_ns.command(&full);
        cmd.env("ETCDCTL_API", "3");
        cmd.output().expect("etcdctl")
    };
    // The binding keys etcd holds, as etcdctl lists them.
    let stored_bindings = || {
        let prefix = format!("{PREFIX}/bindings/");
        let got = etcdctl(&["get", "--prefix", "--keys-only", &prefix]);
        String::from_utf8_lossy(&got.stdout).into_owned()
    };
    let t0 = Instant::now();
    while !etcdctl(&["endpoint", "health"]).status.success() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "etcd over TLS did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let write_config = |name: &str, ca: &str| {
        let (config, keys) = gateway_files(a.dir(), std::slice::from_ref(&client));
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace(
            "[etcd]\n",
            &format!(
                "[etcd]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                file(ca),
                file("client.pem"),
                file("client.key")
            ),
        );
        let path = a.dir().join(name);
        std::fs::write(&path, text).unwrap();
        (path, keys)
    };

    // Trusting another CA: the server's certificate is refused; no start.
    let (wrong, keys) = write_config("wrong-ca.toml", "other-ca.pem");
    let mut refused = a.spawn_homeward(&[
        "--config",
        &wrong.display().to_string(),
        "--registration-keys",
        &keys.display().to_string(),
    ]);
    let status = refused.wait_timeout(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a gateway trusting the wrong CA started: {}",
        refused.stderr()
    );
    assert!(refused.stderr().contains("etcd"), "{}", refused.stderr());
    println!(
        "trusting another CA: {}",
        refused.stderr().lines().last().unwrap_or_default()
    );

    // The right CA: connected, and a bind is committed through TLS.
    let (right, keys) = write_config("tls.toml", "ca.pem");
    // Pins that outlive the daemon, as /sys/fs/bpf does outside a lab.
    let bpffs = BpffsMount::mount();
    let (right, keys) = (right.display().to_string(), keys.display().to_string());
    let args = [
        "--config",
        &right,
        "--registration-keys",
        &keys,
        bpffs.flag()[0],
        bpffs.flag()[1],
    ];
    let ha = HomeAgent::start(&a, &args);
    let s = store_stats(&ha);
    assert_eq!(
        (s["backend"].as_str(), s["connected"].as_bool()),
        (Some("etcd"), Some(true)),
        "{s}"
    );
    ha.bind("192.0.2.50", &a.care_of.to_string(), &[]);
    let keys_listed = stored_bindings();
    assert!(keys_listed.contains("192.0.2.50"), "{keys_listed}");

    // An upgrade (`systemctl reload`: --takeover): the successor opens its
    // own etcd connection and watch; nothing is lost, changes go on.
    let mut upgrade = args.to_vec();
    upgrade.push("--takeover");
    let successor = HomeAgent::start(&a, &upgrade);
    let t = ha.wait_exit(Duration::from_secs(10));
    assert!(
        t.success,
        "the predecessor did not exit cleanly:\n{}",
        t.stderr
    );
    assert!(
        t.stderr.contains("the successor runs the data path"),
        "{}",
        t.stderr
    );
    let s = store_stats(&successor);
    assert_eq!(s["connected"], true, "{s}");
    assert_eq!(care_of_at(&a, "192.0.2.50"), Some(a.care_of.to_string()));
    successor.bind("192.0.2.51", &a.care_of.to_string(), &[]);
    let keys_listed = stored_bindings();
    assert!(keys_listed.contains("192.0.2.51"), "{keys_listed}");
    assert!(
        forwards(&a, Ipv4Addr::new(192, 0, 2, 51)),
        "the successor does not forward"
    );
    let t = successor.stop();
    assert!(t.success, "homeward did not exit cleanly:\n{}", t.stderr);
}
