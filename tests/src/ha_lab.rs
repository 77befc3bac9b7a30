//! The two-gateway lab: two home agents that share their bindings through
//! etcd and hand the home agent's addresses over with keepalived (VRRP).
//!
//! ```text
//!  client ns: lan0 192.0.2.10/24 ─── lan ns: br0 ─┬─ p-gw1 ── gw1 ns: lan0 192.0.2.2/24 (+ vrrp.51: 192.0.2.1 when master)
//!            (default via 192.0.2.1)               └─ p-gw2 ── gw2 ns: lan0 192.0.2.3/24 (+ vrrp.51)
//!
//!  gw1 ns: wan0 198.51.100.2/24 (+ vrrp.52: 198.51.100.1) ─┐
//!  gw2 ns: wan0 198.51.100.3/24 (+ vrrp.52)  ──────────────┴─ router ns: br-wan 198.51.100.254/24
//!                                                              router ns: r-f 203.0.113.254/24 ── foreign ns: wan0 203.0.113.2/24
//!                                                                                                  (homeward agent, care-of)
//!                                                              foreign ns: vmlink ── vm ns: vm0 192.0.2.50/24
//!  gw1 ns: etcd0 10.77.0.2/24 ─┐
//!  gw2 ns: etcd0 10.77.0.3/24 ─┴─ etcd ns: br0 10.77.0.1/24 (3 etcd members, ports 2379/2381/2383)
//! ```
//!
//! Each gateway runs `homeward run` (`store = "etcd"`, `address` the WAN
//! VIP) and keepalived with a sync group of two VRRP instances that use
//! VRRP virtual MACs (`use_vmac`): LAN (vrid 51, VIP 192.0.2.1, MAC
//! 00:00:5e:00:01:33 on `vrrp.51`) and WAN (vrid 52, VIP 198.51.100.1, MAC
//! 00:00:5e:00:01:34 on `vrrp.52`). keepalived's notify tells homeward its
//! role (`homeward role`), its track script asks homeward whether it is
//! healthy (`homeward health`). The router routes the home prefix to the
//! WAN VIP; the foreign hypervisor's agent registers with the WAN VIP; the
//! client's default gateway is the LAN VIP.
//!
//! Everything is inside namespaces the lab made and is removed on drop,
//! also on panic (keepalived's vmac interfaces live in the gateways'
//! namespaces). IPv6 is off everywhere.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::key_file;
use crate::foreign_agent::ForeignSite;
use crate::homeward_bin;
use crate::inns::BpffsMount;
use crate::link::{veth_pair, Iface, Mac, VethEnd, LINK_UP_TIMEOUT};
use crate::netns::{Netns, NsChild};

/// Debian's keepalived (package keepalived, 2.2).
pub const KEEPALIVED: &str = "/usr/sbin/keepalived";
/// The LAN VIP: the home LAN's gateway address.
pub const LAN_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The WAN VIP: the home agent's address (tunnel source, registrations).
pub const WAN_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// VRRP virtual router id of the LAN instance.
pub const LAN_VRID: u8 = 51;
/// VRRP virtual router id of the WAN instance.
pub const WAN_VRID: u8 = 52;
/// The LAN instance's VRRP virtual MAC, 00:00:5e:00:01:<vrid>: homeward's
/// `[failover] lan_mac`.
pub const LAN_VMAC: Mac = Mac([0x00, 0x00, 0x5e, 0x00, 0x01, LAN_VRID]);
/// The WAN instance's VRRP virtual MAC.
pub const WAN_VMAC: Mac = Mac([0x00, 0x00, 0x5e, 0x00, 0x01, WAN_VRID]);
/// keepalived's name of the LAN instance's vmac interface.
pub const LAN_VMAC_IF: &str = "vrrp.51";
/// keepalived's name of the WAN instance's vmac interface.
pub const WAN_VMAC_IF: &str = "vrrp.52";
/// The client's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The VM's home address.
pub const VM_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
/// The router's address on the gateways' WAN.
pub const ROUTER_WAN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// The router's address on the foreign network.
pub const ROUTER_FOREIGN_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
/// The foreign hypervisor's address: the care-of address.
pub const CARE_OF_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The etcd namespace's address on its bridge.
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The etcd members' first client port.
pub const ETCD_BASE_PORT: u16 = 2379;
/// The registration key (SPI 256) of the gateways and the agent.
pub const KEY: &str = "6861206c61622c20747769636520746865206761746577617973";
/// The registration SPI.
pub const SPI: u32 = 256;
/// The etcd prefix the gateways share.
pub const PREFIX: &str = "/hwha";

/// Panics unless keepalived is installed.
#[track_caller]
pub fn require_keepalived() {
    assert!(
        Path::new(KEEPALIVED).exists(),
        "{KEEPALIVED} is missing: apt-get install keepalived (scripts/install-deps.sh)"
    );
}

/// Panics unless keepalived would run `bin` as a notify or track script
/// with `enable_script_security`: every component of its path owned by
/// root, none writable by group or others (but directories with the sticky
/// bit, like /tmp). Otherwise keepalived disables the scripts and the lab
/// fails in a way that is hard to read.
#[track_caller]
pub fn require_secure_script_path(bin: &Path) {
    use std::os::unix::fs::MetadataExt;
    for p in bin.ancestors() {
        if p.as_os_str().is_empty() {
            continue;
        }
        let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let sticky_dir = m.is_dir() && m.mode() & 0o1000 != 0;
        let writable = (m.gid() != 0 && m.mode() & 0o020 != 0) || m.mode() & 0o002 != 0;
        assert!(
            m.uid() == 0 && (sticky_dir || !writable),
            "keepalived runs {} (homeward role/health) only if every directory on its path is \
             owned by root and not writable by others (enable_script_security), and {} is not \
             (uid {}, mode {:o}): build in a root-owned checkout or set $HOMEWARD_BIN",
            bin.display(),
            p.display(),
            m.uid(),
            m.mode() & 0o7777
        );
    }
}

/// Knobs of [`HaLab::new`].
#[derive(Clone, Debug)]
pub struct HaLabOptions {
    /// VRRP advertisement interval, milliseconds (keepalived takes
    /// hundredths of a second with VRRP version 3).
    pub advert_int_ms: u32,
    /// VRRP priorities of gw1 and gw2.
    pub priorities: [u8; 2],
    /// homeward's `[failover]` section and keepalived's `homeward role`
    /// notify and `homeward health` track script. Off: homeward as a lone
    /// gateway (it answers ARP itself) and keepalived moving only the VIPs.
    pub failover: bool,
}

impl Default for HaLabOptions {
    fn default() -> HaLabOptions {
        HaLabOptions {
            advert_int_ms: 100,
            priorities: [200, 100],
            failover: true,
        }
    }
}

impl HaLabOptions {
    /// RFC 5798's Master_Down_Interval of a backup with `priority`:
    /// 3 × Advertisement_Interval + Skew_Time, Skew_Time =
    /// (256 − priority) × Advertisement_Interval / 256: how long a backup
    /// waits for the master's next advertisement before it takes over.
    pub fn master_down_interval(&self, priority: u8) -> Duration {
        let adv = f64::from(self.advert_int_ms) / 1e3;
        Duration::from_secs_f64(3.0 * adv + (256.0 - f64::from(priority)) * adv / 256.0)
    }

    /// Skew_Time of a backup with `priority`: how long it waits after a
    /// priority-0 advertisement (a master leaving: stopped, FAULT).
    pub fn skew_time(&self, priority: u8) -> Duration {
        let adv = f64::from(self.advert_int_ms) / 1e3;
        Duration::from_secs_f64((256.0 - f64::from(priority)) * adv / 256.0)
    }
}

/// One gateway: its namespace, interfaces, files, homeward and keepalived.
#[derive(Debug)]
pub struct Gateway {
    /// `gw1` or `gw2`.
    pub name: String,
    /// Its VRRP priority.
    pub priority: u8,
    /// `lan0`, 192.0.2.2 or .3/24.
    pub lan: Iface,
    /// `wan0`, 198.51.100.2 or .3/24.
    pub wan: Iface,
    /// `etcd0`, 10.77.0.2 or .3/24.
    pub etcd_if: Iface,
    /// Its port on the lan namespace's `br0`.
    pub lan_port: String,
    /// Its port on the router's `br-wan`.
    pub wan_port: String,
    options: HaLabOptions,
    /// The lab's bpffs (homeward's `--bpffs`), where its XDP program is
    /// pinned so that a restart after `kill -9` recognises it.
    bpffs: PathBuf,
    homeward: Option<NsChild>,
    keepalived: Option<NsChild>,
    /// Its namespace (declared last: dropped after the processes).
    pub ns: Netns,
}

impl Gateway {
    /// The scratch directory: config, keys, socket, state, logs.
    pub fn dir(&self) -> &Path {
        self.ns.dir()
    }

    /// homeward's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("control.sock")
    }

    /// homeward's config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("run.toml")
    }

    /// The registration key file.
    pub fn keys_path(&self) -> PathBuf {
        self.dir().join("keys.toml")
    }

    /// homeward's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// keepalived's config file.
    pub fn keepalived_conf(&self) -> PathBuf {
        self.dir().join("keepalived.conf")
    }

    /// Writes run.toml, keys.toml and keepalived.conf for etcd at
    /// `endpoints`.
    pub fn write_files(&self, endpoints: &[String]) {
        key_file(self.dir(), SPI, KEY, "192.0.2.0/24");
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
        let mut run = format!(
            "address = \"{WAN_VIP}\"\nstore = \"etcd\"\n\n[etcd]\nendpoints = [{}]\n\
             prefix = \"{PREFIX}\"\nrequest_timeout_ms = 1500\nconnect_timeout_ms = 1000\n",
            endpoints.join(", ")
        );
        if self.options.failover {
            write!(
                run,
                "\n[failover]\nenabled = true\nlan_mac = \"{LAN_VMAC}\"\n"
            )
            .unwrap();
        }
        std::fs::write(self.config_path(), run).expect("write run.toml");
        std::fs::write(self.keepalived_conf(), self.keepalived_config())
            .expect("write keepalived.conf");
    }

    /// The keepalived config of this gateway.
    pub fn keepalived_config(&self) -> String {
        let bin = homeward_bin().display().to_string();
        let socket = self.socket().display().to_string();
        let advert = f64::from(self.options.advert_int_ms) / 1e3;
        let mut c = String::new();
        // No vrrp_rt_priority: with it (and the default vrrp_rlimit_rttime
        // of 10 ms) the kernel killed keepalived 2.2.7's VRRP process with
        // SIGKILL while it started ("has rlimit_rttime been exceeded?").
        writeln!(
            c,
            "# keepalived for homeward gateway {} (tests/src/ha_lab.rs)\n\
             global_defs {{\n    router_id {}\n    enable_script_security\n    script_user root\n}}\n",
            self.name, self.name
        )
        .unwrap();
        // No vrrp_track_process: keepalived learns of process exits from the
        // kernel's process-events connector, which answers only sockets in
        // the initial network namespace (in the lab's namespaces keepalived
        // logs "Failed to set/clear process event listen - errno 111" and
        // holds the group in FAULT). The health script notices a dead
        // homeward too, within interval × fall.
        let (track, notify) = if self.options.failover {
            writeln!(
                c,
                "vrrp_script homeward_health {{\n    script \"{bin} health --socket {socket}\"\n    \
                 interval 1\n    timeout 1\n    fall 2\n    rise 2\n}}\n"
            )
            .unwrap();
            (
                "    track_script {\n        homeward_health\n    }\n".to_string(),
                format!("    notify \"{bin} role --socket {socket}\"\n"),
            )
        } else {
            (String::new(), String::new())
        };
        writeln!(
            c,
            "vrrp_sync_group HOMEWARD {{\n    group {{\n        LAN\n        WAN\n    }}\n{track}{notify}}}\n"
        )
        .unwrap();
        // The group's notify has no STOP: each instance says it when
        // keepalived stops cleanly.
        let stop = if self.options.failover {
            format!("    notify_stop \"{bin} role --socket {socket} stop\"\n")
        } else {
            String::new()
        };
        for (name, iface, vrid, vip) in [
            ("LAN", &self.lan.name, LAN_VRID, LAN_VIP),
            ("WAN", &self.wan.name, WAN_VRID, WAN_VIP),
        ] {
            writeln!(
                c,
                "vrrp_instance {name} {{\n    state BACKUP\n    nopreempt\n    interface {iface}\n    \
                 use_vmac\n    virtual_router_id {vrid}\n    priority {}\n    version 3\n    \
                 advert_int {advert}\n    virtual_ipaddress {{\n        {vip}/32\n    }}\n{stop}}}\n",
                self.priority
            )
            .unwrap();
        }
        c
    }

    /// `homeward run ...` as the lab starts it (the same line on restart).
    pub fn homeward_args(&self) -> Vec<String> {
        let p = |p: PathBuf| p.display().to_string();
        vec![
            homeward_bin().display().to_string(),
            "run".into(),
            "--config".into(),
            p(self.config_path()),
            "--registration-keys".into(),
            p(self.keys_path()),
            "--socket".into(),
            p(self.socket()),
            "--state-dir".into(),
            p(self.state_dir()),
            "--lan".into(),
            self.lan.name.clone(),
            "--wan".into(),
            self.wan.name.clone(),
            "--bpffs".into(),
            p(self.bpffs.clone()),
        ]
    }

    /// Starts homeward and waits until it serves its socket.
    #[track_caller]
    pub fn start_homeward(&mut self) {
        let mut child = self.ns.spawn(&self.homeward_args());
        let ready = child.wait_for_output("homeward is running", Duration::from_secs(30));
        assert!(
            ready,
            "homeward on {} did not start: {}\n{}",
            self.name,
            child.command_line(),
            child.stderr()
        );
        self.homeward = Some(child);
    }

    /// SIGKILLs homeward (its XDP program stays attached).
    pub fn kill_homeward(&mut self) {
        if let Some(mut h) = self.homeward.take() {
            h.stop_with("KILL", Duration::from_secs(5));
        }
    }

    /// homeward's process id, if it runs.
    pub fn homeward_pid(&mut self) -> Option<u32> {
        let h = self.homeward.as_mut()?;
        h.is_running().then(|| h.id())
    }

    /// What homeward has logged (the current process).
    pub fn homeward_log(&self) -> String {
        self.homeward
            .as_ref()
            .map(|h| h.stderr())
            .unwrap_or_default()
    }

    /// Starts keepalived in the foreground (`-n`), logging to its stderr
    /// (`-l -D`), with pid files of its own.
    #[track_caller]
    pub fn start_keepalived(&mut self) {
        let p = |name: &str| self.dir().join(name).display().to_string();
        let child = self.ns.spawn(&[
            KEEPALIVED.to_string(),
            "-n".into(),
            "-l".into(),
            "-D".into(),
            "-f".into(),
            p("keepalived.conf"),
            "-p".into(),
            p("keepalived.pid"),
            "-r".into(),
            p("keepalived-vrrp.pid"),
            "-c".into(),
            p("keepalived-checkers.pid"),
        ]);
        self.keepalived = Some(child);
    }

    /// The keepalived processes running in this gateway's namespace (the
    /// parent and its VRRP child), by their /proc/PID/comm.
    pub fn keepalived_pids(&self) -> Vec<u32> {
        self.ns
            .pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "keepalived")
            })
            .collect()
    }

    /// SIGKILLs every keepalived process of this gateway at once: nothing
    /// is cleaned up (the VIPs and vmac interfaces stay, no priority-0
    /// advertisement, no notify). Returns the pids killed.
    pub fn kill_keepalived(&mut self) -> Vec<u32> {
        let pids = self.keepalived_pids();
        if !pids.is_empty() {
            let mut cmd = std::process::Command::new("kill");
            cmd.arg("-KILL").args(pids.iter().map(u32::to_string));
            let _ = cmd.status();
        }
        if let Some(mut k) = self.keepalived.take() {
            k.wait_timeout(Duration::from_secs(5));
            k.stop_with("KILL", Duration::from_secs(5));
        }
        pids
    }

    /// Asks keepalived to stop cleanly (SIGTERM) and returns at once: it
    /// gives the VIPs up with a priority-0 advertisement, runs the
    /// instances' `notify_stop` and removes its vmac interfaces.
    pub fn term_keepalived(&mut self) {
        if let Some(k) = self.keepalived.as_mut() {
            k.signal("TERM");
        }
    }

    /// SIGTERM to keepalived (again) and waits until it has exited;
    /// returns what it logged.
    #[track_caller]
    pub fn stop_keepalived(&mut self) -> String {
        let mut k = self
            .keepalived
            .take()
            .unwrap_or_else(|| panic!("no keepalived runs on {}", self.name));
        k.stop_with("TERM", Duration::from_secs(10));
        k.stderr()
    }

    /// What keepalived has logged (the current process).
    pub fn keepalived_log(&self) -> String {
        self.keepalived
            .as_ref()
            .map(|k| k.stderr())
            .unwrap_or_default()
    }

    /// How often `needle` is in the current keepalived's log.
    pub fn keepalived_log_count(&self, needle: &str) -> usize {
        self.keepalived_log().matches(needle).count()
    }

    /// Waits until `needle` shows up in the current keepalived's log more
    /// than `before` times.
    #[track_caller]
    pub fn wait_keepalived_log(&self, needle: &str, before: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.keepalived_log_count(needle) <= before {
            assert!(
                Instant::now() < deadline,
                "keepalived on {} did not log {needle:?} within {timeout:?}:\n{}",
                self.name,
                self.keepalived_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `homeward ARGS... --socket <its socket>` in the gateway's
    /// namespace; its output, whatever the exit status.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut full = vec![homeward_bin().display().to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        full.push("--socket".into());
        full.push(self.socket().display().to_string());
        self.ns.exec(&full)
    }

    /// [`Gateway::cli`]; panics unless it succeeds; its stdout.
    #[track_caller]
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "homeward {args:?} on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `homeward stats --json`, or None if homeward does not answer.
    pub fn stats(&self) -> Option<Value> {
        let out = self.cli(&["stats", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `failover.state` of `homeward stats`: keepalived's last word
    /// (`master`, `backup`, `fault`, `stop`; None: no answer or no pair).
    pub fn role(&self) -> Option<String> {
        self.stats()
            .and_then(|s| s["failover"]["state"].as_str().map(str::to_string))
    }

    /// `homeward list --json`.
    #[track_caller]
    pub fn list(&self) -> Vec<Value> {
        let text = self.cli_ok(&["list", "--json"]);
        match serde_json::from_str(&text) {
            Ok(Value::Array(list)) => list,
            _ => panic!("list --json on {}: {text}", self.name),
        }
    }

    /// The care-of address of `vm`'s binding, if bound.
    #[track_caller]
    pub fn care_of(&self, vm: Ipv4Addr) -> Option<String> {
        let vm = vm.to_string();
        self.list()
            .into_iter()
            .find(|b| b["vm"] == vm.as_str())
            .and_then(|b| b["care_of"].as_str().map(str::to_string))
    }

    /// Which VIPs it holds: (LAN VIP on `vrrp.51`, WAN VIP on `vrrp.52`).
    pub fn vips(&self) -> (bool, bool) {
        let out = self.ns.exec(&["ip", "-4", "-o", "addr", "show"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let has = |dev: &str, vip: Ipv4Addr| {
            text.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.get(1).is_some_and(|d| d.split('@').next() == Some(dev))
                    && w.get(3) == Some(&format!("{vip}/32").as_str())
            })
        };
        (has(LAN_VMAC_IF, LAN_VIP), has(WAN_VMAC_IF, WAN_VIP))
    }

    /// Whether it holds both VIPs.
    pub fn holds_vips(&self) -> bool {
        self.vips() == (true, true)
    }
}

/// The lab: see the module's docs. Dropping it removes everything.
#[derive(Debug)]
pub struct HaLab {
    /// The tag it was built with.
    pub tag: String,
    /// Its options.
    pub options: HaLabOptions,
    /// gw1 and gw2.
    pub gws: Vec<Gateway>,
    /// A bpffs in the root mount namespace for both gateways' pins
    /// (`ip netns exec` gives each process a /sys of its own, and a bpffs
    /// mounted there dies with the process). After `gws`: unmounted after
    /// the daemons are gone.
    pub bpffs: BpffsMount,
    /// A host on the home LAN: downloads from the VM.
    pub client: Netns,
    /// Holds the home LAN's bridge `br0`.
    pub lan: Netns,
    /// The "Internet": `br-wan` to the gateways, `r-f` to the foreign host.
    pub router: Netns,
    /// The foreign hypervisor (care-of address): runs `homeward agent`.
    pub foreign: Netns,
    /// The etcd cluster's namespace, bridge `br0` (shared, so that a
    /// [`crate::etcd::Cluster`] borrowing it leaves the lab free to change).
    pub etcd: std::sync::Arc<Netns>,
    /// The client's `lan0`.
    pub client_lan: Iface,
    /// The foreign hypervisor's `wan0`.
    pub foreign_wan: Iface,
}

impl HaLab {
    /// Builds the namespaces and links (nothing runs yet). `tag` is short:
    /// it is part of every namespace name.
    #[track_caller]
    pub fn new(tag: &str, options: HaLabOptions) -> HaLab {
        require_keepalived();
        if options.failover {
            require_secure_script_path(&homeward_bin());
        }
        // Guards first: if anything below panics, what exists is dropped.
        let client = Netns::new(&format!("{tag}-cl"));
        let lan = Netns::new(&format!("{tag}-lan"));
        let router = Netns::new(&format!("{tag}-rt"));
        let foreign = Netns::new(&format!("{tag}-fa"));
        let etcd = Netns::new(&format!("{tag}-etcd"));
        let gw_ns = [
            Netns::new(&format!("{tag}-gw1")),
            Netns::new(&format!("{tag}-gw2")),
        ];
        for ns in [
            &client, &lan, &router, &foreign, &etcd, &gw_ns[0], &gw_ns[1],
        ] {
            ns.disable_ipv6();
        }
        let iface = |name: &str, index: u8, addr: Ipv4Addr| Iface {
            name: name.to_string(),
            mac: Mac::derive(tag, index),
            addr,
            prefix: 24,
        };

        lan.add_bridge("br0");
        router.add_bridge("br-wan");
        router.add_addr("br-wan", ROUTER_WAN_ADDR, 24);
        etcd.add_bridge("br0");
        etcd.add_addr("br0", ETCD_ADDR, 24);

        let client_lan = iface("lan0", 0x01, CLIENT_ADDR);
        veth_pair(
            &VethEnd::new(&client, "lan0", client_lan.mac).addr(CLIENT_ADDR, 24),
            &VethEnd::new(&lan, "p-client", Mac::derive(tag, 0x02)),
        );
        lan.enslave("p-client", "br0");
        let foreign_wan = iface("wan0", 0x03, CARE_OF_ADDR);
        veth_pair(
            &VethEnd::new(&foreign, "wan0", foreign_wan.mac).addr(CARE_OF_ADDR, 24),
            &VethEnd::new(&router, "r-f", Mac::derive(tag, 0x04)).addr(ROUTER_FOREIGN_ADDR, 24),
        );

        let bpffs = BpffsMount::mount();
        let mut gws = Vec::new();
        for (i, ns) in gw_ns.into_iter().enumerate() {
            let n = i as u8;
            let name = format!("gw{}", i + 1);
            let lan_if = iface("lan0", 0x10 + n, Ipv4Addr::new(192, 0, 2, 2 + n));
            let wan_if = iface("wan0", 0x20 + n, Ipv4Addr::new(198, 51, 100, 2 + n));
            let etcd_if = iface("etcd0", 0x30 + n, Ipv4Addr::new(10, 77, 0, 2 + n));
            let port = format!("p-{name}");
            veth_pair(
                &VethEnd::new(&ns, "lan0", lan_if.mac).addr(lan_if.addr, 24),
                &VethEnd::new(&lan, &port, Mac::derive(tag, 0x40 + n)),
            );
            lan.enslave(&port, "br0");
            veth_pair(
                &VethEnd::new(&ns, "wan0", wan_if.mac).addr(wan_if.addr, 24),
                &VethEnd::new(&router, &port, Mac::derive(tag, 0x50 + n)),
            );
            router.enslave(&port, "br-wan");
            veth_pair(
                &VethEnd::new(&ns, "etcd0", etcd_if.mac).addr(etcd_if.addr, 24),
                &VethEnd::new(&etcd, &port, Mac::derive(tag, 0x60 + n)),
            );
            etcd.enslave(&port, "br0");
            ns.route_via("default", ROUTER_WAN_ADDR);
            ns.sysctl("net.ipv4.ip_forward", "1");
            for dev in ["lan0", "wan0"] {
                // Answer ARP only for addresses on the interface asked: the
                // VIPs are on keepalived's vmac interfaces, and lan0/wan0
                // must not answer for them with their own MACs.
                ns.sysctl(&format!("net.ipv4.conf.{dev}.arp_ignore"), "1");
                // ARP requests the gateway sends carry the interface's own
                // address, never a VIP: a request "who has X, tell VIP"
                // from lan0's MAC would make X point the VIP at this
                // gateway's own MAC, which does not move on failover.
                ns.sysctl(&format!("net.ipv4.conf.{dev}.arp_announce"), "2");
            }
            // Frames homeward XDP-redirects into a veth are dropped unless
            // the peer has GRO on (or runs XDP).
            lan.set_gro(&port, true);
            router.set_gro(&port, true);
            gws.push(Gateway {
                name,
                priority: options.priorities[i],
                lan: lan_if,
                wan: wan_if,
                etcd_if,
                lan_port: port.clone(),
                wan_port: port,
                options: options.clone(),
                bpffs: bpffs.path().to_path_buf(),
                homeward: None,
                keepalived: None,
                ns,
            });
        }

        for (ns, dev) in [(&lan, "br0"), (&router, "br-wan"), (&etcd, "br0")] {
            ns.wait_link_up(dev, LINK_UP_TIMEOUT);
        }
        client.route_via("default", LAN_VIP);
        client.full_checksums("lan0");
        foreign.route_via("default", ROUTER_FOREIGN_ADDR);
        foreign.full_checksums("wan0");
        router.sysctl("net.ipv4.ip_forward", "1");
        router.route_via("192.0.2.0/24", WAN_VIP);

        HaLab {
            tag: tag.to_string(),
            options,
            gws,
            bpffs,
            client,
            lan,
            router,
            foreign,
            etcd: std::sync::Arc::new(etcd),
            client_lan,
            foreign_wan,
        }
    }

    /// Where the foreign hypervisor's agent runs.
    pub fn foreign_site(&self) -> ForeignSite<'_> {
        ForeignSite {
            ns: &self.foreign,
            uplink: &self.foreign_wan.name,
            care_of: CARE_OF_ADDR,
            home_agent: WAN_VIP,
        }
    }

    /// The agent's registration key file (in the foreign namespace's
    /// directory).
    pub fn agent_keys(&self) -> PathBuf {
        key_file(self.foreign.dir(), SPI, KEY, "192.0.2.0/24")
    }

    /// The index of the gateway that is not `i`.
    pub fn other(i: usize) -> usize {
        1 - i
    }

    /// Waits until gateway `i` holds both VIPs and, with failover, homeward
    /// reports `master`; the time it took.
    #[track_caller]
    pub fn wait_master(&self, i: usize, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        let gw = &self.gws[i];
        let want_role = self.options.failover;
        loop {
            if gw.holds_vips() && (!want_role || gw.role().as_deref() == Some("master")) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "{} is not master after {timeout:?}: VIPs {:?}, role {:?}\n{}",
                gw.name,
                gw.vips(),
                gw.role(),
                gw.keepalived_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until gateway `i`'s homeward reports `role`.
    #[track_caller]
    pub fn wait_role(&self, i: usize, role: &str, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        let gw = &self.gws[i];
        loop {
            let now = gw.role();
            if now.as_deref() == Some(role) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "{}: role {now:?}, expected {role} within {timeout:?}\nkeepalived:\n{}\nhomeward:\n{}",
                gw.name,
                gw.keepalived_log(),
                gw.homeward_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `vm` is bound to `care_of` at both gateways.
    #[track_caller]
    pub fn wait_bound_everywhere(&self, vm: Ipv4Addr, care_of: Ipv4Addr, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let want = Some(care_of.to_string());
        for gw in &self.gws {
            loop {
                let now = gw.care_of(vm);
                if now == want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{vm} at {}: {now:?}, expected {care_of} within {timeout:?}",
                    gw.name
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
