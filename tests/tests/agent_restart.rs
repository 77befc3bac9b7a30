//! `homeward agent` after a crash: killed with SIGKILL while it serves a
//! VM, its XDP program stays attached; the same command line started again
//! (what systemd's `Restart=` does) recognises the program by its pin,
//! replaces it, and serves the VM again. And `homeward agent --takeover`
//! while it serves: the served VM, sockets and rings are handed over.
//! Needs root and `cargo build --release -p homeward`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use homeward_tests::agent::{key_file, HomeAgent};
use homeward_tests::foreign_agent::ForeignAgentLab;
use homeward_tests::inns::BpffsMount;
use homeward_tests::restart::SeqSender;
use homeward_tests::{require_root, Topology, UdpSend};

const KEY: &str = "6167656e742d726573746172742d6b65792d303031";
const VM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 51);

/// A datagram from the client on the home LAN reaches the VM through the
/// home agent's tunnel and the agent.
#[track_caller]
fn assert_delivered(lab: &Topology, fa: &ForeignAgentLab, port: u16) {
    let listener = fa.vm.udp_listen(port);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        lab.client.send_udp(&UdpSend::new(VM, port, 64).sport(5000));
        got = listener.wait_for(1, Duration::from_millis(300));
    }
    assert!(!got.is_empty(), "nothing reached the VM on port {port}");
}

#[test]
fn the_agent_comes_back_after_kill_9() {
    require_root();
    let lab = Topology::home_agent_lab("far");
    let bpffs = BpffsMount::mount();
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), 256, KEY, &format!("{VM}/32"));
    let ha = HomeAgent::start(&lab, &["--registration-keys", keys.to_str().unwrap()]);
    let fa = ForeignAgentLab::new(
        &lab,
        "far",
        dir.path(),
        &keys,
        VM,
        1500,
        &["--bpffs", bpffs.path().to_str().unwrap()],
    );

    let mut agent = fa.spawn(&lab);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ha.binding(&VM.to_string()).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ha.binding(&VM.to_string()).is_some(), "{}", agent.stderr());
    assert_delivered(&lab, &fa, 4001);

    assert!(agent.signal("KILL"));
    assert!(agent.wait_timeout(Duration::from_secs(10)).is_some());
    let link = lab.foreign.ip(&["link", "show", "vmlink"]);
    assert!(
        link.contains("xdp"),
        "the crash should leave the program: {link}"
    );

    let t = Instant::now();
    let mut agent = fa.spawn(&lab);
    let took = t.elapsed();
    let log = agent.stderr();
    assert!(
        log.contains("replaced the XDP program a previous homeward left"),
        "{log}"
    );
    assert_delivered(&lab, &fa, 4002);
    eprintln!("agent restart after kill -9: running again in {took:?}, the VM served again");

    let status = agent.stop_with("INT", Duration::from_secs(10));
    let log = agent.stderr();
    assert!(status.success(), "{log}");
    assert!(!log.contains("frames leaked"), "{log}");
    let link = lab.foreign.ip(&["link", "show", "vmlink"]);
    assert!(!link.contains("xdp"), "a clean stop detaches: {link}");
    assert!(ha.stop().success);
}

/// The home agent, then the agent, each taken over with `--takeover` while
/// a VM is served: a stream of datagrams from the client to the VM runs
/// across the agent's; the first agent exits by itself, the VM stays served
/// (not re-served, still bound), every datagram arrives, and the new agent's
/// registration is accepted by the new home agent on the handed-over socket.
#[test]
fn an_agent_takeover_keeps_the_vm_served() {
    require_root();
    let lab = Topology::home_agent_lab("fat");
    let bpffs = BpffsMount::mount();
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), 256, KEY, &format!("{VM}/32"));
    let [flag, mount] = bpffs.flag();
    let ha_args = ["--registration-keys", keys.to_str().unwrap(), flag, mount];
    let mut ha = HomeAgent::start(&lab, &ha_args);
    let fa = ForeignAgentLab::new(&lab, "fat", dir.path(), &keys, VM, 1500, &bpffs.flag());
    let mut agent = fa.spawn(&lab);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ha.binding(&VM.to_string()).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ha.binding(&VM.to_string()).is_some(), "{}", agent.stderr());
    assert_delivered(&lab, &fa, 4003);

    // First the home agent is taken over (its registration socket with it),
    // then the agent, which registers again on connecting to QMP: that
    // registration reaches the new home agent through the handed-over socket.
    let mut ha_takeover = ha_args.to_vec();
    ha_takeover.push("--takeover");
    let new_ha = HomeAgent::start_bin(&lab, &homeward_tests::homeward_bin(), &ha_takeover);
    let old = std::mem::replace(&mut ha, new_ha).wait_exit(Duration::from_secs(10));
    assert!(old.success, "{}", old.stderr);
    assert!(ha.binding(&VM.to_string()).is_some(), "{}", ha.stderr());

    // A paced stream (5,000 datagrams/s) with the takeover in the middle.
    let listener = fa.vm.udp_listen(4004);
    let sender = SeqSender::start(&lab.client, Instant::now(), VM, 4004, 5_000);
    std::thread::sleep(Duration::from_millis(200));
    let successor = fa.spawn_with(&lab, &["--takeover"]);
    let exited = agent.wait_timeout(Duration::from_secs(10));
    let said = agent.stderr();
    assert!(exited.is_some_and(|s| s.success()), "{said}");
    assert!(said.contains("the successor runs the data path"), "{said}");
    std::thread::sleep(Duration::from_millis(300));
    let sent = sender.stop().sent as usize;
    let got = listener.wait_for(sent, Duration::from_secs(3));
    let mut agent = successor;
    let log = agent.stderr();
    eprintln!(
        "agent takeover: {} of {sent} datagrams reached the VM",
        got.len()
    );
    eprintln!("agent takeover: the successor said:\n{log}");
    assert!(log.contains("handed its data path over"), "{log}");
    assert!(!log.contains("cannot serve"), "{log}");
    assert_eq!(
        got.len(),
        sent,
        "datagrams lost across the takeover:\n{log}"
    );
    assert!(
        log.contains("registered vm=vm") && log.contains("code=0"),
        "the successor's registration did not reach the new home agent:\n{log}\n{}",
        ha.stderr()
    );
    assert!(ha.binding(&VM.to_string()).is_some());
    assert_delivered(&lab, &fa, 4005);

    let status = agent.stop_with("INT", Duration::from_secs(10));
    let log = agent.stderr();
    assert!(status.success(), "{log}");
    assert!(!log.contains("frames leaked"), "{log}");
    assert!(ha.stop().success);
}
