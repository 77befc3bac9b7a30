//! Two gateways with keepalived (VRRP): a TCP stream through the home agent
//! survives the failure of the master gateway (issue 11, part 2).
//!
//! The lab is tests/src/ha_lab.rs: gw1 and gw2 run `homeward run` sharing
//! their bindings through a 3-member etcd, and keepalived with a sync group
//! of a LAN instance (VIP 192.0.2.1, the LAN's gateway) and a WAN instance
//! (VIP 198.51.100.1, the home agent's address), both with VRRP virtual
//! MACs. A VM (a namespace behind `homeward agent` on a foreign network)
//! serves a paced stream; the client on the home LAN downloads it with
//! `hw-vm-client stream` while, one at a time, (a) the master's homeward is
//! killed (-9), (b) all of the master's keepalived processes are killed
//! (-9), (c) the master's LAN link is cut. Each time the stream must go on
//! with every byte right and no reset, the other gateway must become
//! master, and the old master, restored, must come back as backup with
//! every binding, also one made while it was down. At the end keepalived
//! is stopped cleanly on the master (priority 0, `notify_stop`). The
//! client's largest gap is printed next to VRRP's failover time, as a
//! table for docs/ha.md.
//!
//! A second test runs keepalived alone (no homeward): both VIPs move
//! together, and the client's and the router's ARP entries stay on the
//! virtual MACs (the gateways' `arp_ignore`/`arp_announce`).
//!
//! keepalived runs without `vrrp_track_process` here: process events reach
//! only the initial network namespace (see tests/src/ha_lab.rs), so a dead
//! homeward is noticed by the health script, in 1-2 s.
//!
//! Needs root, keepalived, etcd-server/etcd-client
//! (scripts/install-deps.sh) and `cargo build -p homeward -p homeward-tests
//! --bins` in the same profile as the test; about 35 s:
//! `cargo test -p homeward-tests --test failover -- --nocapture`.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use homeward_tests::decode::{script, PYTHON};
use homeward_tests::etcd::{require_etcd, Cluster};
use homeward_tests::foreign_agent::ForeignAgentLab;
use homeward_tests::ha_lab::{
    require_keepalived, HaLab, HaLabOptions, CARE_OF_ADDR, CLIENT_ADDR, ETCD_ADDR, ETCD_BASE_PORT,
    KEY, LAN_VIP, LAN_VMAC, SPI, VM_ADDR, WAN_VIP, WAN_VMAC,
};
use homeward_tests::migration_lab::{http_get_from, start_stream_in};
use homeward_tests::vm::{HELLO_BODY, HELLO_PATH, HTTP_PORT};
use homeward_tests::{require_root, Mac, StreamOptions, StreamReport};
use serde_json::Value;

/// How long each download runs, and when into it the failure comes.
const STREAM_SECONDS: f64 = 8.0;
const FAIL_AFTER: Duration = Duration::from_secs(2);
/// keepalived's log line when an instance becomes backup (at start, and
/// out of FAULT).
const BACKUP_LINE: &str = "(LAN) Entering BACKUP STATE";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// `kill -9` of the master's homeward (keepalived's health script
    /// notices).
    KillHomeward,
    /// `kill -9` of all of the master's keepalived processes (its
    /// advertisements stop).
    KillKeepalived,
    /// The master's LAN link goes down (the bridge port facing it).
    CutLan,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::KillHomeward => "kill -9 homeward",
            Failure::KillKeepalived => "kill -9 keepalived",
            Failure::CutLan => "LAN link down",
        }
    }
}

/// One line of the summary.
struct Row {
    scenario: &'static str,
    from: String,
    to: String,
    /// Failure to the new master holding both VIPs.
    takeover_ms: f64,
    /// Failure to the new master's homeward reporting `master`.
    role_ms: f64,
    /// The largest gap the client saw.
    gap_ms: f64,
    /// What VRRP is configured to take, in words.
    vrrp: String,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `mip_send.py` from the foreign host to the WAN VIP: a registration of
/// `home` at care-of 203.0.113.2; its JSON.
fn register(lab: &HaLab, home: Ipv4Addr) -> Value {
    let out = lab.foreign.exec_ok(&[
        "env".to_string(),
        "PYTHONDONTWRITEBYTECODE=1".into(),
        PYTHON.into(),
        script("mip_send.py").to_string_lossy().into_owned(),
        "--ha".into(),
        WAN_VIP.to_string(),
        "--coa".into(),
        CARE_OF_ADDR.to_string(),
        "--home".into(),
        home.to_string(),
        "--spi".into(),
        SPI.to_string(),
        "--key".into(),
        KEY.into(),
        "--lifetime".into(),
        "600".into(),
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("mip_send.py: {e}: {out}"))
}

/// What VRRP is configured to take for `failure`, with `backup`'s priority.
fn vrrp_time(options: &HaLabOptions, failure: Failure, backup_priority: u8) -> String {
    let skew = ms(options.skew_time(backup_priority));
    match failure {
        // The health script runs every second and fails twice: 1-2 s; then
        // the master goes FAULT and sends priority 0; the backup waits its
        // skew time.
        Failure::KillHomeward => format!("health 1-2 s + skew {skew:.0} ms"),
        // No advertisement any more: the master-down interval.
        Failure::KillKeepalived => format!(
            "3 x {} ms + skew {skew:.0} ms = {:.0} ms",
            options.advert_int_ms,
            ms(options.master_down_interval(backup_priority))
        ),
        // The master's LAN instance goes FAULT with its interface and the
        // sync group takes the WAN instance along (VIPs removed; keepalived
        // 2.2.7 sends no priority 0 for it): the backup's master-down
        // timers run out.
        Failure::CutLan => format!(
            "3 x {} ms + skew {skew:.0} ms = {:.0} ms",
            options.advert_int_ms,
            ms(options.master_down_interval(backup_priority))
        ),
    }
}

/// Runs one failure of gateway `master` with a download going on, checks
/// it, restores the old master and checks it is a complete backup.
/// `meanwhile` is bound at the new master while the old one is out.
fn scenario(lab: &mut HaLab, failure: Failure, master: usize, meanwhile: Ipv4Addr) -> Row {
    let backup = HaLab::other(master);
    let (m_name, b_name) = (lab.gws[master].name.clone(), lab.gws[backup].name.clone());
    eprintln!(
        "== {}: {m_name} is master, {b_name} backup",
        failure.label()
    );
    assert_eq!(lab.gws[master].role().as_deref(), Some("master"));
    assert_eq!(lab.gws[backup].role().as_deref(), Some("backup"));
    assert!(
        lab.gws[master].holds_vips(),
        "{m_name}: {:?}",
        lab.gws[master].vips()
    );
    assert_eq!(lab.gws[backup].vips(), (false, false), "{b_name}");

    let mut client = start_stream_in(
        &lab.client,
        VM_ADDR,
        &StreamOptions {
            seconds: STREAM_SECONDS,
            chunk: 50,
            delay_us: 10_000,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 20_000,
        },
    );
    std::thread::sleep(FAIL_AFTER);
    let backups_before = lab.gws[master].keepalived_log_count(BACKUP_LINE);
    let t0 = Instant::now();
    match failure {
        Failure::KillHomeward => lab.gws[master].kill_homeward(),
        Failure::KillKeepalived => {
            let pids = lab.gws[master].kill_keepalived();
            assert!(!pids.is_empty(), "no keepalived ran on {m_name}");
            eprintln!("killed keepalived {pids:?} on {m_name}");
        }
        Failure::CutLan => lab.lan.link_down(&lab.gws[master].lan_port),
    }
    // The backup takes both VIPs...
    let deadline = t0 + Duration::from_secs(15);
    while !lab.gws[backup].holds_vips() {
        assert!(
            Instant::now() < deadline,
            "{b_name} did not take the VIPs: {:?}\n{}",
            lab.gws[backup].vips(),
            lab.gws[backup].keepalived_log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let takeover = t0.elapsed();
    // ... and its homeward is told.
    lab.wait_master(backup, Duration::from_secs(10));
    let role = t0.elapsed();
    eprintln!(
        "{b_name} holds the VIPs {:.0} ms after the failure, homeward there reports master at {:.0} ms",
        ms(takeover),
        ms(role)
    );
    if failure == Failure::KillKeepalived {
        // Nobody tells the old master's homeward: it still says master, and
        // its kernel still holds the VIPs keepalived left behind.
        eprintln!(
            "{m_name} with its keepalived dead: homeward role {:?}, VIPs {:?} (left behind)",
            lab.gws[master].role(),
            lab.gws[master].vips()
        );
    }

    // A binding made while the old master is out.
    match failure {
        Failure::KillKeepalived => {
            lab.gws[backup].cli_ok(&["bind", &meanwhile.to_string(), &CARE_OF_ADDR.to_string()]);
        }
        _ => {
            let reply = register(lab, meanwhile);
            assert_eq!(
                reply["reply"]["code"], 0,
                "registration at the VIP: {reply}"
            );
        }
    }
    assert_eq!(
        lab.gws[backup].care_of(meanwhile),
        Some(CARE_OF_ADDR.to_string())
    );

    let report = StreamReport::wait(&mut client, Duration::from_secs(40));
    let ended = unix_now();
    eprintln!(
        "stream: {} bytes, verified {}, reset {}, largest gap {:.0} ms, gaps over 100 ms {:?}",
        report.bytes, report.verified, report.reset, report.max_gap_ms, report.long_gaps
    );
    assert!(
        report.is_clean(),
        "the stream did not survive {}: {report:?}\n{}",
        failure.label(),
        client.stderr()
    );
    // Still flowing at the end: the gap closed (a stream that never came
    // back would show its silence as the largest gap, and no error).
    assert!(
        ended - report.last_data_unix < 2.0,
        "no data in the last {:.1} s: {report:?}",
        ended - report.last_data_unix
    );
    assert!(
        report.max_gap_ms < 10_000.0,
        "the session stalled for {:.0} ms",
        report.max_gap_ms
    );

    // The old master comes back: as backup, with every binding.
    let t_restore = Instant::now();
    match failure {
        Failure::KillHomeward => lab.gws[master].start_homeward(),
        Failure::KillKeepalived => lab.gws[master].start_keepalived(),
        Failure::CutLan => lab.lan.link_up(&lab.gws[master].lan_port),
    }
    let before = if failure == Failure::KillKeepalived {
        0
    } else {
        backups_before
    };
    lab.gws[master].wait_keepalived_log(BACKUP_LINE, before, Duration::from_secs(15));
    lab.wait_role(master, "backup", Duration::from_secs(10));
    eprintln!(
        "{m_name} restored: backup again after {:.0} ms",
        ms(t_restore.elapsed())
    );
    assert_eq!(lab.gws[master].vips(), (false, false), "{m_name}");
    assert!(lab.gws[backup].holds_vips());
    assert_eq!(lab.gws[backup].role().as_deref(), Some("master"));
    lab.wait_bound_everywhere(VM_ADDR, CARE_OF_ADDR, Duration::from_secs(10));
    lab.wait_bound_everywhere(meanwhile, CARE_OF_ADDR, Duration::from_secs(10));

    Row {
        scenario: failure.label(),
        from: m_name,
        to: b_name,
        takeover_ms: ms(takeover),
        role_ms: ms(role),
        gap_ms: report.max_gap_ms,
        vrrp: vrrp_time(&lab.options, failure, lab.gws[backup].priority),
    }
}

#[test]
fn a_tcp_stream_survives_the_failure_of_the_master_gateway() {
    require_root();
    require_etcd();
    require_keepalived();
    let t_start = Instant::now();
    let options = HaLabOptions::default();
    let mut lab = HaLab::new("fo", options.clone());
    let etcd_ns = Arc::clone(&lab.etcd);
    let cluster = Cluster::start(&etcd_ns, ETCD_ADDR, ETCD_BASE_PORT);
    let endpoints = cluster.endpoints();
    for gw in &mut lab.gws {
        gw.write_files(&endpoints);
        gw.start_homeward();
        assert_eq!(
            gw.role().as_deref(),
            Some("backup"),
            "{} did not start as backup",
            gw.name
        );
    }
    // gw1 first, so that it is elected; nopreempt keeps it master when gw2
    // comes.
    lab.gws[0].start_keepalived();
    let elected = lab.wait_master(0, Duration::from_secs(15));
    lab.gws[1].start_keepalived();
    lab.gws[1].wait_keepalived_log(BACKUP_LINE, 0, Duration::from_secs(10));
    lab.wait_role(1, "backup", Duration::from_secs(10));
    eprintln!(
        "gw1 master {:.0} ms after its keepalived started; gw2 backup",
        ms(elected)
    );
    assert_eq!(lab.gws[1].vips(), (false, false));

    // The VM on the foreign network, its stream server and its agent.
    let keys = lab.agent_keys();
    let fa = ForeignAgentLab::at_site(
        lab.foreign_site(),
        "fo-vm",
        lab.foreign.dir(),
        &keys,
        VM_ADDR,
        1500,
        &[],
    );
    fa.vm.route_via("default", LAN_VIP);
    fa.vm.full_checksums(&fa.vm_if.name);
    let mut server = fa.vm.spawn(&[
        PYTHON.to_string(),
        script("stream_server.py").to_string_lossy().into_owned(),
        "--port".into(),
        HTTP_PORT.to_string(),
    ]);
    assert!(
        server.wait_for_output("listening", Duration::from_secs(10)),
        "{}",
        server.stderr()
    );
    let _agent = fa.spawn_in(&lab.foreign, &[]);
    lab.wait_bound_everywhere(VM_ADDR, CARE_OF_ADDR, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if http_get_from(&lab.client, VM_ADDR, HELLO_PATH).as_deref() == Some(HELLO_BODY) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client cannot reach the VM through gw1\ngw1:\n{}",
            lab.gws[0].homeward_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The client reaches the VM and its gateway through the virtual MAC,
    // and the router the home agent: the MACs that move on failover.
    assert!(lab.client.ping_ok(LAN_VIP, 1));
    assert!(lab.router.ping_ok(WAN_VIP, 1));
    let neigh = |ns: &homeward_tests::Netns, addr| ns.neighbor(addr).and_then(|n| n.lladdr);
    assert_eq!(neigh(&lab.client, VM_ADDR), Some(LAN_VMAC), "client → VM");
    assert_eq!(
        neigh(&lab.client, LAN_VIP),
        Some(LAN_VMAC),
        "client → gateway"
    );
    assert_eq!(
        neigh(&lab.router, WAN_VIP),
        Some(WAN_VMAC),
        "router → home agent"
    );
    eprintln!(
        "lab up in {:.1} s: VM reachable through gw1",
        t_start.elapsed().as_secs_f64()
    );

    let rows = vec![
        scenario(
            &mut lab,
            Failure::KillHomeward,
            0,
            Ipv4Addr::new(192, 0, 2, 61),
        ),
        scenario(
            &mut lab,
            Failure::KillKeepalived,
            1,
            Ipv4Addr::new(192, 0, 2, 62),
        ),
        scenario(&mut lab, Failure::CutLan, 0, Ipv4Addr::new(192, 0, 2, 63)),
    ];
    // The client's view of the gateway never left the virtual MAC.
    assert_eq!(neigh(&lab.client, LAN_VIP).unwrap_or(Mac::ZERO), LAN_VMAC);

    // keepalived stopped cleanly on the master (systemctl stop): priority 0
    // hands over at once, and notify_stop tells its homeward.
    assert_eq!(lab.gws[1].role().as_deref(), Some("master"));
    lab.gws[1].term_keepalived();
    let took = lab.wait_master(0, Duration::from_secs(10));
    let log = lab.gws[1].stop_keepalived();
    lab.wait_role(1, "stop", Duration::from_secs(10));
    assert_eq!(lab.gws[1].vips(), (false, false), "{log}");
    eprintln!(
        "keepalived stopped (SIGTERM) on gw2: gw1 master {:.0} ms later, gw2's homeward says stop",
        ms(took)
    );

    eprintln!(
        "\nfailover summary (advert_int {} ms, priorities {:?}, client {CLIENT_ADDR} → VM {VM_ADDR}, stream {STREAM_SECONDS} s):",
        options.advert_int_ms, options.priorities
    );
    eprintln!(
        "| scenario | from → to | new master has the VIPs | homeward told | client's largest gap | VRRP configured |"
    );
    eprintln!("|---|---|---|---|---|---|");
    for r in &rows {
        eprintln!(
            "| {} | {} → {} | {:.0} ms | {:.0} ms | {:.0} ms | {} |",
            r.scenario, r.from, r.to, r.takeover_ms, r.role_ms, r.gap_ms, r.vrrp
        );
    }
    eprintln!("total {:.1} s", t_start.elapsed().as_secs_f64());
}

/// keepalived alone (no homeward): the sync group moves both VIPs
/// together, and the client and the router keep reaching them through the
/// virtual MACs across a failover, because the gateways' own interfaces
/// neither answer ARP for the VIPs (`arp_ignore=1`) nor ask with them as
/// the sender (`arp_announce=2`: without it, gw1 resolving the client
/// after a ping to the VIP points the client's entry for 192.0.2.1 at
/// gw1's own lan0 MAC, which does not move).
#[test]
fn keepalived_moves_both_vips_and_the_neighbours_keep_the_virtual_macs() {
    require_root();
    require_keepalived();
    let options = HaLabOptions {
        failover: false,
        ..HaLabOptions::default()
    };
    let mut lab = HaLab::new("vr", options.clone());
    for gw in &lab.gws {
        gw.write_files(&[]);
    }
    lab.gws[0].start_keepalived();
    lab.wait_master(0, Duration::from_secs(15));
    lab.gws[1].start_keepalived();
    lab.gws[1].wait_keepalived_log(BACKUP_LINE, 0, Duration::from_secs(10));
    assert_eq!(lab.gws[1].vips(), (false, false));
    for gw in &lab.gws {
        let link = gw.ns.ip(&["-d", "link", "show", "dev", "vrrp.51"]);
        assert!(link.contains(&LAN_VMAC.to_string()), "{}: {link}", gw.name);
        assert!(link.contains("macvlan"), "{}: {link}", gw.name);
    }

    let neigh = |ns: &homeward_tests::Netns, addr| ns.neighbor(addr).and_then(|n| n.lladdr);
    let check_neighbours = |when: &str| {
        assert!(lab.client.ping_ok(LAN_VIP, 2), "{when}: client → LAN VIP");
        assert!(lab.router.ping_ok(WAN_VIP, 2), "{when}: router → WAN VIP");
        // Let the gateway's own resolution of the client happen.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            neigh(&lab.client, LAN_VIP),
            Some(LAN_VMAC),
            "{when}: client"
        );
        assert_eq!(
            neigh(&lab.router, WAN_VIP),
            Some(WAN_VMAC),
            "{when}: router"
        );
    };
    check_neighbours("gw1 master");

    // gw1's LAN link down: both VIPs move to gw2; pings every 10 ms.
    let mut ping = lab.client.spawn(&[
        "ping",
        "-n",
        "-D",
        "-i",
        "0.01",
        "-c",
        "300",
        "-W",
        "1",
        &LAN_VIP.to_string(),
    ]);
    std::thread::sleep(Duration::from_millis(500));
    lab.lan.link_down(&lab.gws[0].lan_port);
    let took = lab.wait_master(1, Duration::from_secs(10));
    assert_eq!(lab.gws[0].vips(), (false, false), "gw1 kept a VIP");
    ping.wait_timeout(Duration::from_secs(10));
    let out = ping.stdout();
    let replies: Vec<f64> = out
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let gap = replies
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0_f64, f64::max);
    eprintln!(
        "LAN link of gw1 down: gw2 holds both VIPs after {:.0} ms (master-down interval {:.0} ms); \
         {} of 300 pings to the LAN VIP answered, largest gap {:.0} ms",
        ms(took),
        ms(options.master_down_interval(lab.gws[1].priority)),
        replies.len(),
        gap * 1e3
    );
    assert!(replies.len() > 200, "{out}");
    check_neighbours("gw2 master");

    // gw1 back: it stays backup (nopreempt), although its priority is higher.
    let before = lab.gws[0].keepalived_log_count(BACKUP_LINE);
    let t1 = Instant::now();
    lab.lan.link_up(&lab.gws[0].lan_port);
    lab.gws[0].wait_keepalived_log(BACKUP_LINE, before, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.gws[0].vips(), (false, false), "gw1 took the VIPs back");
    assert!(lab.gws[1].holds_vips());
    eprintln!(
        "gw1's link back: backup after {:.0} ms, gw2 stays master",
        ms(t1.elapsed())
    );
    check_neighbours("gw1 back as backup");
}
