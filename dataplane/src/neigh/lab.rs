//! Root test in network namespaces (needs root and `ip`).
//!
//! ```text
//!   ns B (peer)                ns A (the neighbour thread)               ns C (gateway)
//!   ba 10.201.1.2/24 ── veth ── ab 10.201.1.1/24   ac 10.201.2.1/24 ── veth ── ca 10.201.2.2/24
//!   02:00:00:00:0b:01                                                         02:00:00:00:0c:01
//! ```
//!
//! Netlink sockets belong to the namespace they are opened in, and the
//! thread must run inside A. Without `unsafe` (no `setns`), the test re-runs
//! its own binary inside A with `ip netns exec A <test binary> --exact
//! neigh::lab::in_namespace --ignored`; the parent builds and removes the
//! namespaces (a guard: also on panic). All traffic (ARP, and the UDP
//! trigger's datagrams) stays on the veths between these namespaces.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;

const ENV: &str = "HOMEWARD_NEIGH_LAB";

const A_B: &str = "10.201.1.1";
const B: &str = "10.201.1.2";
const A_C: &str = "10.201.2.1";
const C: &str = "10.201.2.2";
const REMOTE_NET: &str = "10.201.9.0/24";
const REMOTE: &str = "10.201.9.5";
const NOBODY: &str = "10.201.1.99";
const B_MAC: [u8; 6] = [2, 0, 0, 0, 0x0b, 1];
const B_MAC2: [u8; 6] = [2, 0, 0, 0, 0x0b, 2];
const C_MAC: [u8; 6] = [2, 0, 0, 0, 0x0c, 1];

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn mac_str(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Runs `ip ARGS`, panicking with its stderr if it fails; returns stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Self {
        // A leftover from a crashed run with the same pid: remove it first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Polls `f` until it returns `want`; returns how long that took.
fn wait_for<T: PartialEq + std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    want: T,
    f: impl Fn() -> T,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = f();
        if got == want {
            let took = start.elapsed();
            eprintln!("lab: {what}: {took:?}");
            return took;
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: still {got:?} after {timeout:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Holds for `dur`: `f()` stays `want` throughout.
fn stays<T: PartialEq + std::fmt::Debug>(what: &str, dur: Duration, want: T, f: impl Fn() -> T) {
    let start = Instant::now();
    while start.elapsed() < dur {
        assert_eq!(f(), want, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The neighbour entry of `addr` in namespace `ns`, as `ip neigh` prints it.
fn neigh_line(ns: &str, addr: &str) -> String {
    ip(&["-n", ns, "neigh", "show", addr]).trim().to_string()
}

#[test]
fn neighbour_thread_in_namespaces() {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let tag = format!(
        "hwneigh-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let a = Netns::new(format!("{tag}-a"));
    let b = Netns::new(format!("{tag}-b"));
    let c = Netns::new(format!("{tag}-c"));
    let (na, nb, nc) = (a.name.as_str(), b.name.as_str(), c.name.as_str());

    ip(&[
        "-n", na, "link", "add", "ab", "type", "veth", "peer", "name", "ba", "netns", nb,
    ]);
    ip(&[
        "-n", na, "link", "add", "ac", "type", "veth", "peer", "name", "ca", "netns", nc,
    ]);
    ip(&["-n", nb, "link", "set", "ba", "address", &mac_str(B_MAC)]);
    ip(&["-n", nc, "link", "set", "ca", "address", &mac_str(C_MAC)]);
    ip(&["-n", na, "addr", "add", &format!("{A_B}/24"), "dev", "ab"]);
    ip(&["-n", na, "addr", "add", &format!("{A_C}/24"), "dev", "ac"]);
    ip(&["-n", nb, "addr", "add", &format!("{B}/24"), "dev", "ba"]);
    ip(&["-n", nc, "addr", "add", &format!("{C}/24"), "dev", "ca"]);
    // B announces a MAC change with a gratuitous ARP (as a host that
    // changes its MAC, or QEMU's announce-self, would).
    ip(&[
        "netns",
        "exec",
        nb,
        "sysctl",
        "-qw",
        "net.ipv4.conf.ba.arp_notify=1",
    ]);
    for (ns, dev) in [(na, "ab"), (na, "ac"), (nb, "ba"), (nc, "ca")] {
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }

    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new("ip")
        .args(["netns", "exec", na])
        .arg(exe)
        .args([
            "--exact",
            "neigh::lab::in_namespace",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV, format!("{na},{nb},{nc}"))
        .output()
        .expect("running the test binary in the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "in-namespace test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "in-namespace test did not run:\n{stdout}"
    );
}

/// The body of [`neighbour_thread_in_namespaces`], run inside namespace A.
#[test]
#[ignore = "run by neighbour_thread_in_namespaces inside its namespace"]
fn in_namespace() {
    let Ok(names) = std::env::var(ENV) else {
        eprintln!("{ENV} not set: only meaningful when started by neighbour_thread_in_namespaces");
        return;
    };
    let names: Vec<&str> = names.split(',').collect();
    let (na, nb, nc) = (names[0], names[1], names[2]);
    let t = Duration::from_secs(5);

    // Links, seen from inside A.
    let ab = link_by_name("ab").unwrap();
    let ac = link_by_name("ac").unwrap();
    assert_eq!(link_by_index(ab.index).unwrap(), ab);
    assert_eq!(ab.mtu, 1500);
    assert!(ip(&["-n", na, "link", "show", "ab"]).contains(&mac_str(ab.mac)));
    assert!(matches!(
        link_by_name("ba"),
        Err(NeighError::NoSuchInterface(_))
    ));

    // 1. The UDP trigger resolves C (on-link); C learns A from the ARP request.
    assert_eq!(neigh_line(nc, A_C), "", "C already knows A");
    {
        let (h, r) = spawn_with(vec![ab.index, ac.index], ab.index, ResolveTrigger::Udp).unwrap();
        h.track(ip4(C));
        wait_for(
            "UDP trigger: C resolved",
            t,
            Some(Egress {
                ifindex: ac.index,
                mac: C_MAC,
            }),
            || r.egress(ip4(C)),
        );
        assert!(
            neigh_line(nc, A_C).contains(&mac_str(ac.mac)),
            "C did not get A's ARP request"
        );
        h.shutdown();
    }
    ip(&["-n", na, "neigh", "flush", "dev", "ac"]);
    ip(&["-n", nc, "neigh", "flush", "dev", "ca"]);

    // 2. NTF_USE resolves B: B has no entry for A before, and has one with
    //    A's MAC after, so the kernel did send an ARP request.
    assert_eq!(neigh_line(nb, A_B), "", "B already knows A");
    let (h, r) = spawn_with(vec![ab.index, ac.index], ab.index, ResolveTrigger::NtfUse).unwrap();
    h.track(ip4(B));
    wait_for(
        "NTF_USE: B resolved",
        t,
        Some(Egress {
            ifindex: ab.index,
            mac: B_MAC,
        }),
        || r.egress(ip4(B)),
    );
    assert!(
        neigh_line(nb, A_B).contains(&mac_str(ab.mac)),
        "B did not get an ARP request from A: {:?}",
        neigh_line(nb, A_B)
    );
    assert_eq!(
        h.snapshot(),
        vec![(
            ip4(B),
            Some(Egress {
                ifindex: ab.index,
                mac: B_MAC
            })
        )]
    );

    // 3. B changes its MAC (and announces it): the reader follows.
    ip(&[
        "-n",
        nb,
        "link",
        "set",
        "dev",
        "ba",
        "address",
        &mac_str(B_MAC2),
    ]);
    wait_for("B's MAC change followed", t, Some(B_MAC2), || {
        r.egress(ip4(B)).map(|e| e.mac)
    });

    // 4. An address behind a gateway: unresolved without a route; with a
    //    route via C, C's MAC on ac; re-routed via B, B's MAC on ab; without
    //    the route, unresolved again.
    h.track(ip4(REMOTE));
    stays(
        "no route: unresolved",
        Duration::from_millis(300),
        None,
        || r.egress(ip4(REMOTE)),
    );
    ip(&["-n", na, "route", "add", REMOTE_NET, "via", C]);
    wait_for(
        "route via C",
        t,
        Some(Egress {
            ifindex: ac.index,
            mac: C_MAC,
        }),
        || r.egress(ip4(REMOTE)),
    );
    ip(&["-n", na, "route", "replace", REMOTE_NET, "via", B]);
    wait_for(
        "route via B",
        t,
        Some(Egress {
            ifindex: ab.index,
            mac: B_MAC2,
        }),
        || r.egress(ip4(REMOTE)),
    );
    ip(&["-n", na, "route", "del", REMOTE_NET]);
    wait_for("route removed", t, None, || r.egress(ip4(REMOTE)));

    // 5. Home-link neighbours: only through the LAN interface (ab).
    h.track_lan(ip4(B));
    wait_for("LAN neighbour B", t, Some(B_MAC2), || {
        r.lan_neighbor(ip4(B))
    });
    h.track_lan(ip4(C));
    stays(
        "C is not on the LAN interface",
        Duration::from_millis(300),
        None,
        || r.lan_neighbor(ip4(C)),
    );
    assert_eq!(
        h.lan_snapshot(),
        vec![(ip4(B), Some(B_MAC2)), (ip4(C), None)]
    );

    // 5b. A worker's miss is enough: the thread resolves and follows the
    //     address without anyone tracking it (reverse tunnel delivery).
    {
        let (h3, r3) = spawn_with(vec![ab.index], ab.index, ResolveTrigger::NtfUse).unwrap();
        assert_eq!(r3.lan_neighbor_or_resolve(ip4(B)), None, "first ask misses");
        wait_for("LAN neighbour B after a miss", t, Some(B_MAC2), || {
            r3.lan_neighbor(ip4(B))
        });
        h3.shutdown();
    }

    // 6. Only the given interfaces count: a second thread that may use ab
    //    only never resolves C, which the first one does.
    let (h2, r2) = spawn_with(vec![ab.index], ab.index, ResolveTrigger::NtfUse).unwrap();
    h2.track(ip4(C));
    h.track(ip4(C));
    wait_for(
        "C via ac",
        t,
        Some(Egress {
            ifindex: ac.index,
            mac: C_MAC,
        }),
        || r.egress(ip4(C)),
    );
    stays(
        "C not via ac for the ab-only thread",
        Duration::from_millis(300),
        None,
        || r2.egress(ip4(C)),
    );
    drop(h2);

    // 7. The neighbour entry is deleted: it is resolved again.
    ip(&["-n", na, "neigh", "del", B, "dev", "ab"]);
    wait_for("B resolved again after neigh del", t, Some(B_MAC2), || {
        if neigh_line(na, B).is_empty() {
            None // not yet re-created
        } else {
            r.egress(ip4(B)).map(|e| e.mac)
        }
    });

    // 8. Link down: routes and neighbours on it go, so does the egress; up:
    //    back.
    ip(&["-n", na, "link", "set", "ab", "down"]);
    wait_for("link down", t, None, || r.egress(ip4(B)));
    ip(&["-n", na, "link", "set", "ab", "up"]);
    wait_for(
        "link up",
        t,
        Some(Egress {
            ifindex: ab.index,
            mac: B_MAC2,
        }),
        || r.egress(ip4(B)),
    );

    // 9. Nobody answers: unresolved, and the kernel was asked (an entry that
    //    is INCOMPLETE or FAILED exists).
    h.track(ip4(NOBODY));
    stays(
        "nobody: unresolved",
        Duration::from_millis(1500),
        None,
        || r.egress(ip4(NOBODY)),
    );
    let line = neigh_line(na, NOBODY);
    assert!(
        line.contains("INCOMPLETE") || line.contains("FAILED"),
        "{line:?}"
    );

    // 10. Untrack removes the egress; shutdown is prompt.
    h.untrack(ip4(B));
    wait_for("untracked", t, None, || r.egress(ip4(B)));
    let start = Instant::now();
    h.shutdown();
    assert!(start.elapsed() < Duration::from_secs(1));
}
