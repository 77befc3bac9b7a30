//! Restarts of `homeward run` in the home-agent lab.
//!
//! - Forwarding across restarts: a paced stream of sequence-numbered UDP
//!   datagrams (100 kpps) from the client to the bound VM address, counted
//!   IPIP-encapsulated at the care-of address, while homeward is stopped with
//!   SIGTERM and started again, then killed with SIGKILL and started again
//!   (same command line, as systemd would). Per case: sent, received, lost,
//!   the longest gap, restart-to-ready time, and what the HA's kernel did
//!   with the packets while no homeward ran. Asserted: the binding comes back
//!   from the store, traffic resumes, teardowns account for every frame.
//! - Lifecycle: 100 start/SIGINT cycles with the binding restored from the
//!   store each time; no fd, BPF program, BPF map, pin, process or namespace
//!   is left behind.
//!
//! Needs root and `cargo build --release -p homeward`. The two tests take a
//! lock so that they do not run at once (the box has two cores).

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use homeward_tests::agent::{HomeAgent, Teardown};
use homeward_tests::inns::BpffsMount;
use homeward_tests::restart::{
    analyze, bpf_map_exists, bpf_prog_exists, bpf_prog_info, count_bpf_by_name, fds,
    held_bpf_objects, netns_names, ns_since, pins_in, IpipCounter, SeqSender, Snmp,
};
use homeward_tests::{require_root, Topology};

const VM: &str = "192.0.2.50";
const CARE_OF: &str = "198.51.100.2";
const PORT: u16 = 9000;
const RATE_PPS: u64 = 100_000;
const CYCLES: usize = 100;
const MAP_NAMES: [&str; 5] = ["bound_vms", "care_ofs", "xsks", "config", "counters"];

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

#[track_caller]
fn assert_clean_teardown(what: &str, t: &Teardown) {
    let unaccounted = t.unaccounted();
    assert!(t.success, "{what}: homeward exited non-zero:\n{}", t.stderr);
    assert!(
        !unaccounted.is_empty() && unaccounted.iter().all(|&u| u == 0),
        "{what}: frames unaccounted {unaccounted:?}:\n{}",
        t.stderr
    );
    assert!(!t.stderr.contains("frames leaked"), "{what}:\n{}", t.stderr);
}

/// The XDP program ids attached to `dev` in the HA namespace (empty: none).
fn xdp_ids(lab: &Topology, dev: &str) -> Vec<u64> {
    let out = lab
        .ha
        .exec_ok(&["ip", "-j", "-d", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let xdp = &v[0]["xdp"];
    let mut ids: Vec<u64> = xdp["prog"]["id"].as_u64().into_iter().collect();
    if let Some(progs) = xdp["attached"].as_array() {
        ids.extend(progs.iter().filter_map(|p| p["prog"]["id"].as_u64()));
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// (tx dropped of the bridge port facing the HA, rx dropped of the HA's
/// lan0): where a burst too big for the veth's XDP ring is lost.
fn veth_drops(lab: &Topology) -> (i64, i64) {
    let dropped = |ns: &homeward_tests::Netns, dev: &str, dir: &str| -> i64 {
        let out = ns.exec_ok(&["ip", "-j", "-s", "link", "show", "dev", dev]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v[0]["stats64"][dir]["dropped"].as_i64().unwrap_or(-1)
    };
    (
        dropped(&lab.lan, &lab.ha_port, "tx"),
        dropped(&lab.ha, "lan0", "rx"),
    )
}

/// Polls `homeward list --json` until it shows the VM; returns its care-of.
#[track_caller]
fn wait_binding(ha: &HomeAgent, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(b) = ha.binding(VM) {
            return b["care_of"].as_str().unwrap_or("?").to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the binding of {VM} did not come back:\n{}",
            ha.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Stop {
    Term,
    Kill,
    /// `homeward run --takeover` by [`takeover_bin`] while it runs.
    Takeover,
}

/// Where the binary of another build is, for the takeover case: scripts/test.sh
/// builds one (`HOMEWARD_BUILD_TAG` makes its version differ); without it,
/// the same binary takes over.
const TAKEOVER_BIN_ENV: &str = "HOMEWARD_TAKEOVER_BIN";

fn takeover_bin() -> std::path::PathBuf {
    match std::env::var_os(TAKEOVER_BIN_ENV) {
        Some(p) => {
            let p = std::path::PathBuf::from(p);
            assert!(
                p.is_file(),
                "{TAKEOVER_BIN_ENV}={} is not a file",
                p.display()
            );
            p
        }
        None => homeward_tests::homeward_bin(),
    }
}

/// One restart of [`forwarding_across_restarts`].
struct Case {
    name: &'static str,
    seqs: std::ops::Range<u64>,
    start_ns: u64,
    end_ns: u64,
    signal_ns: u64,
    exited_ns: u64,
    ready_ns: u64,
    bound_ns: u64,
    resumed_seq: u64,
    window: String,
}

#[test]
fn forwarding_across_restarts() {
    require_root();
    let _serial = serial();
    let lab = Topology::home_agent_lab("rst");
    let bpffs = BpffsMount::mount();
    let extra = bpffs.flag();
    let vm: Ipv4Addr = VM.parse().unwrap();

    let mut ha = HomeAgent::start(&lab, &extra);
    ha.bind(VM, CARE_OF, &[]);

    let epoch = Instant::now();
    let counter = IpipCounter::start(&lab.foreign, epoch, PORT);
    let sender = SeqSender::start(&lab.client, epoch, vm, PORT, RATE_PPS);
    assert!(
        counter.wait_seq(0, Duration::from_secs(5)),
        "no bound traffic reached the care-of address before any restart:\n{}",
        ha.stderr()
    );

    let mut cases = Vec::new();
    for (name, how) in [
        ("SIGTERM", Stop::Term),
        ("kill -9", Stop::Kill),
        ("takeover", Stop::Takeover),
    ] {
        let from = sender.sent();
        let start_ns = ns_since(epoch);
        std::thread::sleep(Duration::from_secs(1));
        let drops_before = veth_drops(&lab);
        let ha_before = Snmp::read(&lab.ha);
        let client_before = Snmp::read(&lab.client);

        let signal_ns = ns_since(epoch);
        if how == Stop::Takeover {
            let bin = takeover_bin();
            let mut args = extra.to_vec();
            args.push("--takeover");
            let successor = HomeAgent::start_bin(&lab, &bin, &args);
            let ready_ns = ns_since(epoch);
            let t = std::mem::replace(&mut ha, successor).wait_exit(Duration::from_secs(10));
            assert!(
                t.success,
                "the predecessor did not exit cleanly after the takeover:\n{}",
                t.stderr
            );
            assert!(
                t.stderr.contains("the successor runs the data path"),
                "{}",
                t.stderr
            );
            assert!(
                ha.stderr().contains("handed its data path over"),
                "{}",
                ha.stderr()
            );
            let exited_ns = ns_since(epoch);
            eprintln!(
                "restart: takeover by {} ({}): predecessor said: {}",
                bin.display(),
                homeward_tests::version_of(&bin),
                t.stderr
                    .lines()
                    .filter(|l| l.contains("--takeover"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let care_of = wait_binding(&ha, Duration::from_secs(5));
            let bound_ns = ns_since(epoch);
            assert_eq!(care_of, CARE_OF, "binding after {name}");
            let resumed_seq = sender.sent();
            assert!(
                counter.wait_seq(resumed_seq, Duration::from_secs(10)),
                "bound traffic did not resume after {name}:\n{}",
                ha.stderr()
            );
            std::thread::sleep(Duration::from_secs(1));
            let stats = ha.stats();
            // Where a frame lost in the handover would be counted.
            eprintln!(
                "restart: takeover: successor's drops: no_binding {} no_next_hop {} xsk_rx_ring_full {} xsk_rx_dropped {}",
                stats["drops"]["no_binding"],
                stats["drops"]["no_next_hop"],
                stats["drops"]["xsk_rx_ring_full"],
                stats["drops"]["xsk_rx_dropped"]
            );
            cases.push(Case {
                name,
                seqs: from..sender.sent(),
                start_ns,
                end_ns: ns_since(epoch),
                signal_ns,
                exited_ns,
                ready_ns: ready_ns.max(signal_ns),
                bound_ns,
                resumed_seq,
                window: format!("veth drops p-ha tx / lan0 rx now {:?}", veth_drops(&lab)),
            });
            continue;
        }
        match how {
            Stop::Term | Stop::Takeover => {
                let t = ha.stop_with("TERM");
                assert_clean_teardown("SIGTERM", &t);
            }
            Stop::Kill => {
                let pid = ha.pid() as libc::pid_t;
                // SAFETY: kill has no memory effects; `pid` is our child,
                // not yet reaped (stop_with below reaps it).
                assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
                let t = ha.stop_with("KILL");
                assert!(!t.success, "homeward survived SIGKILL?");
            }
        }
        let exited_ns = ns_since(epoch);
        // What is left attached while no homeward runs.
        let lan_xdp = xdp_ids(&lab, "lan0");
        let wan_xdp = xdp_ids(&lab, "wan0");
        let pins = pins_in(bpffs.path());
        match how {
            Stop::Term => {
                assert!(
                    lan_xdp.is_empty() && wan_xdp.is_empty(),
                    "XDP left attached after SIGTERM: lan0 {lan_xdp:?} wan0 {wan_xdp:?}"
                );
                assert!(pins.is_empty(), "pins left after SIGTERM: {pins:?}");
            }
            Stop::Kill | Stop::Takeover => eprintln!(
                "restart: after kill -9: XDP still attached lan0 {lan_xdp:?} wan0 {wan_xdp:?}; pins {pins:?}"
            ),
        }

        ha = HomeAgent::start(&lab, &extra);
        let ready_ns = ns_since(epoch);
        let care_of = wait_binding(&ha, Duration::from_secs(5));
        let bound_ns = ns_since(epoch);
        assert_eq!(care_of, CARE_OF, "binding after {name}");
        if how == Stop::Kill {
            assert!(
                ha.stderr()
                    .contains("replaced the XDP program a previous homeward left"),
                "the restart after kill -9 did not replace the stale program:\n{}",
                ha.stderr()
            );
        }
        let resumed_seq = sender.sent();
        assert!(
            counter.wait_seq(resumed_seq, Duration::from_secs(10)),
            "bound traffic did not resume after {name}:\n{}",
            ha.stderr()
        );
        // Long enough for the HA kernel's ARP for the VM (queued while no
        // homeward ran) to fail (3 probes, 1 s apart).
        std::thread::sleep(Duration::from_secs(4));
        let ha_after = Snmp::read(&lab.ha);
        let client_after = Snmp::read(&lab.client);
        let drops_after = veth_drops(&lab);
        let neigh = lab
            .ha
            .exec_ok(&["ip", "neigh", "show", VM, "dev", "lan0"])
            .trim()
            .to_string();
        let window = format!(
            "HA kernel: {}; HA neigh {VM}: {:?}; client: {}; veth drops p-ha tx {} lan0 rx {}",
            ha_after.delta(
                &ha_before,
                &[
                    ("Ip", "InReceives"),
                    ("Ip", "ForwDatagrams"),
                    ("Ip", "OutDiscards"),
                    ("Ip", "OutNoRoutes"),
                    ("Icmp", "OutDestUnreachs"),
                ],
            ),
            if neigh.is_empty() { "none" } else { &neigh },
            client_after.delta(&client_before, &[("Icmp", "InDestUnreachs")]),
            drops_after.0 - drops_before.0,
            drops_after.1 - drops_before.1,
        );
        cases.push(Case {
            name,
            seqs: from..sender.sent(),
            start_ns,
            end_ns: ns_since(epoch),
            signal_ns,
            exited_ns,
            ready_ns,
            bound_ns,
            resumed_seq,
            window,
        });
    }

    let sent = sender.stop();
    std::thread::sleep(Duration::from_millis(300));
    let seen = counter.stop();
    let teardown = ha.stop();
    assert_clean_teardown("final SIGINT", &teardown);

    eprintln!(
        "restart: stream {} datagrams in {:.2} s = {:.0} pps (target {RATE_PPS}), send errors {} ({:?}), skipped {}; received {}, raw socket drops {}, other IPIP {}",
        sent.sent,
        sent.elapsed.as_secs_f64(),
        sent.rate_pps(),
        sent.errors,
        sent.first_error,
        sent.skipped,
        seen.arrivals.len(),
        seen.socket_drops,
        seen.other
    );
    for c in &cases {
        let l = analyze(&seen.arrivals, c.seqs.clone());
        let after: Vec<_> = seen
            .arrivals
            .iter()
            .filter(|a| a.seq >= c.resumed_seq && a.seq < c.seqs.end)
            .collect();
        assert!(
            !after.is_empty(),
            "{}: nothing sent after the restart arrived",
            c.name
        );
        let hole_at = ms(l.hole_sent_ns) - ms(c.signal_ns);
        eprintln!(
            "restart: {:<7}: sent {} received {} lost {} (dup {}, reordered {}); longest hole {} datagrams = {:.1} ms sender time, from {:+.1} ms after the signal; max gap at receiver {:.1} ms; signal->exit {:.1} ms, start->ready {:.1} ms, signal->ready {:.1} ms, signal->binding listed {:.1} ms; received after the restart: {} of {}",
            c.name,
            l.sent,
            l.received,
            l.lost,
            l.duplicates,
            l.reordered,
            l.longest_hole,
            l.outage_ms,
            hole_at,
            l.max_gap_ms,
            ms(c.exited_ns - c.signal_ns),
            ms(c.ready_ns.saturating_sub(c.exited_ns)),
            ms(c.ready_ns - c.signal_ns),
            ms(c.bound_ns - c.signal_ns),
            after.len(),
            c.seqs.end - c.resumed_seq,
        );
        let holes: Vec<String> = l
            .holes
            .iter()
            .map(|&(_, len, t)| format!("{len} at {:+.1} ms", ms(t) - ms(c.signal_ns)))
            .collect();
        eprintln!(
            "restart: {:<7}: offered {:.0} pps over the case; holes (longest first, sent after the signal): {}; lost outside the longest hole: {}",
            c.name,
            l.sent as f64 / ((c.end_ns - c.start_ns) as f64 / 1e9),
            holes.join(", "),
            l.lost - l.longest_hole
        );
        eprintln!(
            "restart: {:<7}: counters over the case: {}",
            c.name, c.window
        );
        assert_eq!(l.duplicates, 0, "{}: duplicated datagrams", c.name);
    }
    assert!(
        pins_in(bpffs.path()).is_empty(),
        "pins left after the final stop: {:?}",
        pins_in(bpffs.path())
    );
}

#[test]
fn start_stop_cycles_leak_nothing() {
    require_root();
    let _serial = serial();
    let our_netns = |names: &[String]| -> Vec<String> {
        let me = format!("-{}-", std::process::id());
        names.iter().filter(|n| n.contains(&me)).cloned().collect()
    };
    let netns_before = netns_names();
    let global_before = count_bpf_by_name("homeward_steer", &MAP_NAMES);

    let lab = Topology::home_agent_lab("cyc");
    let lab_netns: Vec<String> = {
        let mut v: Vec<String> = [&lab.client, &lab.lan, &lab.ha, &lab.foreign]
            .iter()
            .map(|n| n.name().to_string())
            .collect();
        v.sort();
        v
    };
    let bpffs = BpffsMount::mount();
    let extra = bpffs.flag();

    let ha = HomeAgent::start(&lab, &extra);
    ha.bind(VM, CARE_OF, &[]);
    assert_clean_teardown("first run", &ha.stop());

    let mut progs = Vec::new();
    let mut maps = Vec::new();
    let (mut first_fds, mut last_fds) = (None, None);
    let mut ready = Vec::new();
    let mut bound = Vec::new();
    let mut stopping = Vec::new();
    let wall = Instant::now();
    for i in 0..CYCLES {
        let t = Instant::now();
        let ha = HomeAgent::start(&lab, &extra);
        ready.push(t.elapsed());
        let care_of = wait_binding(&ha, Duration::from_secs(5));
        bound.push(t.elapsed());
        assert_eq!(care_of, CARE_OF, "cycle {i}: binding not restored");

        let pid = ha.pid();
        // The same point of every run: serving, binding listed; let the
        // daemon close the CLI's connection first.
        let mut fds_now = fds(pid);
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(10));
            let again = fds(pid);
            if again.len() == fds_now.len() {
                break;
            }
            fds_now = again;
        }
        if i == 0 {
            first_fds = Some(fds_now);
        } else if i == CYCLES - 1 {
            last_fds = Some(fds_now);
        }
        let held = held_bpf_objects(pid);
        assert!(
            held.progs
                .iter()
                .any(|&p| bpf_prog_info(p).is_some_and(|(n, _)| n == "homeward_steer")),
            "cycle {i}: the daemon holds no homeward_steer program ({held:?})"
        );
        progs.extend(held.progs);
        maps.extend(held.maps);

        let t = Instant::now();
        let teardown = ha.stop();
        stopping.push(t.elapsed());
        assert_clean_teardown(&format!("cycle {i}"), &teardown);
        let left = lab.ha.pids();
        assert!(
            left.is_empty(),
            "cycle {i}: processes left in the HA namespace: {left:?}"
        );
        let pins = pins_in(bpffs.path());
        assert!(pins.is_empty(), "cycle {i}: pins left: {pins:?}");
        for dev in ["lan0", "wan0"] {
            let ids = xdp_ids(&lab, dev);
            assert!(ids.is_empty(), "cycle {i}: XDP left on {dev}: {ids:?}");
        }
    }
    let wall = wall.elapsed();

    // fds: the last daemon against the first, at the same point.
    let (first, last) = (first_fds.unwrap(), last_fds.unwrap());
    let kinds = |m: &std::collections::BTreeMap<u32, String>| -> Vec<String> {
        let mut v: Vec<String> = m
            .values()
            .map(|t| match t.split_once(':') {
                Some((kind, _)) if !t.starts_with('/') => kind.to_string(),
                _ => t.clone(),
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        first.len(),
        last.len(),
        "open fds: first daemon {} {:?}, last daemon {} {:?}",
        first.len(),
        kinds(&first),
        last.len(),
        kinds(&last)
    );

    // BPF objects: every program and map any of the daemons held is gone
    // (the kernel frees them asynchronously: give it a moment).
    progs.sort_unstable();
    progs.dedup();
    maps.sort_unstable();
    maps.dedup();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (live_progs, live_maps) = loop {
        let p: Vec<u32> = progs
            .iter()
            .copied()
            .filter(|&id| bpf_prog_exists(id))
            .collect();
        let m: Vec<u32> = maps
            .iter()
            .copied()
            .filter(|&id| bpf_map_exists(id))
            .collect();
        if (p.is_empty() && m.is_empty()) || Instant::now() > deadline {
            break (p, m);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let global_after = count_bpf_by_name("homeward_steer", &MAP_NAMES);
    assert!(
        live_progs.is_empty() && live_maps.is_empty(),
        "BPF objects of the {CYCLES} daemons still exist: programs {live_progs:?}, maps {live_maps:?}"
    );
    let pins = pins_in(bpffs.path());
    assert!(pins.is_empty(), "pins left: {pins:?}");
    let netns_after = netns_names();
    let mut ours = our_netns(&netns_after);
    ours.retain(|n| !our_netns(&netns_before).contains(n));
    ours.sort();
    assert_eq!(ours, lab_netns, "network namespaces beyond the lab's own");

    let median = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], *v.last().unwrap())
    };
    let (ready_med, ready_max) = median(&mut ready);
    let (bound_med, bound_max) = median(&mut bound);
    let (stop_med, stop_max) = median(&mut stopping);
    eprintln!(
        "lifecycle: {CYCLES} cycles in {:.1} s{}; start->ready median {ready_med:?} max {ready_max:?}; start->binding listed median {bound_med:?} max {bound_max:?}; SIGINT->exit median {stop_med:?} max {stop_max:?}",
        wall.as_secs_f64(),
        if wall > Duration::from_secs(60) { " (over 60 s)" } else { "" },
    );
    eprintln!(
        "lifecycle: fds first {} last {}; {} programs and {} maps held over the run, none left; system-wide homeward_steer programs {} -> {}, maps by name {:?} -> {:?}; pins left 0; our netns {:?}; netns on the box {} -> {}",
        first.len(),
        last.len(),
        progs.len(),
        maps.len(),
        global_before.0,
        global_after.0,
        global_before.1,
        global_after.1,
        lab_netns,
        netns_before.len(),
        netns_after.len(),
    );
}

/// A `--takeover` successor that cannot run the data path (here: configured
/// for other queues) hands everything back; the running daemon carries on
/// forwarding, with its store, pins and control socket, and tears down
/// accounting for every frame.
#[test]
fn a_failed_takeover_leaves_the_running_daemon_forwarding() {
    require_root();
    let _serial = serial();
    let lab = Topology::home_agent_lab("tkf");
    let bpffs = BpffsMount::mount();
    let extra = bpffs.flag();
    let vm: Ipv4Addr = VM.parse().unwrap();
    let ha = HomeAgent::start(&lab, &extra);
    ha.bind(VM, CARE_OF, &[]);
    let epoch = Instant::now();
    let counter = IpipCounter::start(&lab.foreign, epoch, PORT);
    let sender = SeqSender::start(&lab.client, epoch, vm, PORT, 20_000);
    assert!(
        counter.wait_seq(0, Duration::from_secs(5)),
        "{}",
        ha.stderr()
    );

    let mut successor = lab.spawn_homeward(&[extra[0], extra[1], "--takeover", "--queues", "2"]);
    let status = successor.wait_timeout(Duration::from_secs(20));
    let said = successor.stderr();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the successor should have failed: {status:?}\n{said}"
    );
    assert!(
        said.contains("a takeover keeps interfaces and queues"),
        "{said}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ha.stderr().contains("data path taken back") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        ha.stderr().contains("data path taken back"),
        "{}",
        ha.stderr()
    );

    // Still forwarding, still committing, still serving its socket.
    let resumed = sender.sent();
    assert!(
        counter.wait_seq(resumed, Duration::from_secs(5)),
        "traffic stopped after the failed takeover:\n{}",
        ha.stderr()
    );
    ha.bind("192.0.2.51", CARE_OF, &[]);
    assert!(ha.binding("192.0.2.51").is_some());
    let sent = sender.stop();
    let seen = counter.stop();
    let l = analyze(&seen.arrivals, 0..sent.sent);
    eprintln!(
        "failed takeover: sent {} received {} lost {}; longest hole {:.1} ms",
        l.sent, l.received, l.lost, l.outage_ms
    );
    let t = ha.stop();
    assert_clean_teardown("SIGINT after a failed takeover", &t);
    assert!(
        pins_in(bpffs.path()).is_empty(),
        "{:?}",
        pins_in(bpffs.path())
    );
}
