//! A real 3-member etcd cluster in a lab namespace, for the tests of
//! `store = "etcd"`: Debian's etcd (`/usr/bin/etcd`, package etcd-server)
//! and etcdctl (etcd-client).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::netns::{Netns, NsChild};

/// Debian's etcd server.
pub const ETCD: &str = "/usr/bin/etcd";
/// Debian's etcd client.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// Panics unless etcd and etcdctl are installed.
#[track_caller]
pub fn require_etcd() {
    assert!(
        Path::new(ETCD).exists() && Path::new(ETCDCTL).exists(),
        "{ETCD} and {ETCDCTL} are missing: apt-get install etcd-server etcd-client (scripts/install-deps.sh)"
    );
}

/// A 3-member etcd cluster, members `m0..m2` on `addr`, client ports
/// `base`, `base+2`, `base+4` (peer ports one above), data in `ns`'s
/// scratch directory. Killed with the namespace (or the guards) on drop.
pub struct Cluster<'a> {
    ns: &'a Netns,
    addr: Ipv4Addr,
    base: u16,
    members: Vec<Option<NsChild>>,
}

impl<'a> Cluster<'a> {
    /// Starts the three members and waits (up to 30 s) until a write
    /// succeeds.
    #[track_caller]
    pub fn start(ns: &'a Netns, addr: Ipv4Addr, base: u16) -> Cluster<'a> {
        let mut c = Cluster {
            ns,
            addr,
            base,
            members: (0..3).map(|_| None).collect(),
        };
        for i in 0..3 {
            c.start_member(i);
        }
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    /// Member `i`'s client port.
    pub fn client_port(&self, i: usize) -> u16 {
        self.base + 2 * i as u16
    }

    /// The client URLs of the three members.
    pub fn endpoints(&self) -> Vec<String> {
        (0..3)
            .map(|i| format!("http://{}:{}", self.addr, self.client_port(i)))
            .collect()
    }

    /// (Re)starts member `i` with its data directory (a restarted member
    /// rejoins with what it had).
    pub fn start_member(&mut self, i: usize) {
        let peer = |j: usize| format!("http://{}:{}", self.addr, self.client_port(j) + 1);
        let cluster: Vec<String> = (0..3).map(|j| format!("m{j}={}", peer(j))).collect();
        let client = format!("http://{}:{}", self.addr, self.client_port(i));
        let data = self.ns.dir().join(format!("m{i}"));
        let args = vec![
            ETCD.to_string(),
            "--name".into(),
            format!("m{i}"),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer(i),
            "--initial-advertise-peer-urls".into(),
            peer(i),
            "--initial-cluster".into(),
            cluster.join(","),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            "homeward-test".into(),
            // Fast elections; the shortest lease is then ~1 s.
            "--heartbeat-interval".into(),
            "50".into(),
            "--election-timeout".into(),
            "500".into(),
            "--log-level".into(),
            "warn".into(),
        ];
        self.members[i] = Some(self.ns.spawn(&args));
    }

    /// SIGKILLs member `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut m) = self.members[i].take() {
            m.stop_with("KILL", Duration::from_secs(5));
        }
    }

    /// Runs `etcdctl` (API v3) against all members with `args`.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec![
            ETCDCTL.to_string(),
            "--endpoints".into(),
            self.endpoints().join(","),
            "--dial-timeout".into(),
            "1s".into(),
            "--command-timeout".into(),
            "2s".into(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = self.ns.command(&full);
        cmd.env("ETCDCTL_API", "3");
        cmd.output().expect("etcdctl")
    }

    /// The keys under `prefix` (e.g. `/hwtest/`).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.etcdctl(&["get", "--prefix", "--keys-only", prefix]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Waits until a write succeeds; panics with the members' logs after
    /// `timeout`.
    #[track_caller]
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.etcdctl(&["put", "/hw-health", "ok"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the etcd cluster did not come up: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.members
                    .iter()
                    .flatten()
                    .map(|m| m.stderr())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
