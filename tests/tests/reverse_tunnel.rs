//! The reverse tunnel (RFC 3024) end to end with a real agent: a VM away
//! from home answers a home-link host the home agent has never talked to.
//! Its first datagrams wait in the HA's neighbour queue while the host's
//! MAC resolves, as the kernel's ARP queue would keep them, rather than
//! being dropped. Needs root and `cargo build --release -p homeward`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use homeward_tests::agent::{key_file, HomeAgent};
use homeward_tests::foreign_agent::ForeignAgentLab;
use homeward_tests::{require_root, Topology, UdpSend};

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
