//! Network namespaces and the forwarding lab:
//!
//! ```text
//!  hwb-gen-<pid>            hwb-ha-<pid>                    hwb-sink-<pid>
//!  gen0 ──────veth────── lan0 [device under test] wan0 ──────veth────── sink0
//!  10.200.0.2/24         10.200.0.1/24   10.201.0.1/24              10.201.0.2/24
//! ```
//!
//! The generator's frames go to [`VM`] (a home address on the LAN subnet,
//! bound to the care-of address [`CARE_OF`] = the sink) with lan0's MAC as
//! Ethernet destination. Everything lives in namespaces named
//! `hwb-<role>-<pid>`, deleted on drop (also while a panic unwinds); a
//! namespace left by a killed run is swept by the next one (its pid is gone).
//! No traffic is ever sent from the root namespace.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::sys;

/// The bound VM's home address (LAN subnet).
pub const VM: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
/// The generator's address.
pub const GEN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// The home agent's LAN address.
pub const HA_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The home agent's own address (outer source of the tunnel), on the WAN.
pub const HA_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// The care-of address: the sink.
pub const CARE_OF: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);

/// MACs (locally administered).
pub const GEN_MAC: [u8; 6] = [0x02, 0x68, 0x77, 0x00, 0x00, 0x01];
/// lan0's MAC.
pub const LAN_MAC: [u8; 6] = [0x02, 0x68, 0x77, 0x00, 0x01, 0x01];
/// wan0's MAC.
pub const WAN_MAC: [u8; 6] = [0x02, 0x68, 0x77, 0x00, 0x01, 0x02];
/// sink0's MAC.
pub const SINK_MAC: [u8; 6] = [0x02, 0x68, 0x77, 0x00, 0x02, 0x01];

/// Prefix of every namespace this crate creates.
pub const PREFIX: &str = "hwb-";

static ROOT_NS: OnceLock<io::Result<File>> = OnceLock::new();

/// Remembers the calling thread's namespace as the one to return to. Call
/// it first thing in `main`, before any [`Netns::enter`].
pub fn init_root_ns() -> io::Result<()> {
    match ROOT_NS.get_or_init(|| File::open("/proc/thread-self/ns/net")) {
        Ok(_) => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("opening our network namespace: {e}"),
        )),
    }
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> io::Result<String> {
    run(Command::new("ip").args(args))
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// Creates `hwb-<role>-<pid>` with loopback up.
    pub fn create(role: &str) -> io::Result<Netns> {
        let name = format!("{PREFIX}{role}-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = ip(&["netns", "del", &name]);
                return Err(e);
            }
        };
        let ns = Netns { name, file };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The name `ip netns` knows.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// `ip netns exec <ns> program args...` (output captured).
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args))
    }

    /// A command that runs `program` in this namespace (for spawning).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Moves the calling thread into this namespace until the guard drops
    /// (then back to the namespace [`init_root_ns`] recorded).
    pub fn enter(&self) -> io::Result<NsGuard> {
        sys::setns_net(&self.file)?;
        Ok(NsGuard {
            _not_send: PhantomData,
        })
    }

    /// Moves the calling thread into this namespace for good (threads that
    /// only work here).
    pub fn enter_for_good(&self) -> io::Result<()> {
        sys::setns_net(&self.file)
    }

    /// Index of interface `name` here.
    pub fn ifindex(&self, name: &str) -> io::Result<u32> {
        let _g = self.enter()?;
        sys::if_nametoindex(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: deleting namespace {}: {e}", self.name);
        }
    }
}

/// While alive, the creating thread is in another namespace. Not `Send`:
/// namespaces are per thread.
#[derive(Debug)]
pub struct NsGuard {
    _not_send: PhantomData<*const ()>,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Some(Ok(root)) = ROOT_NS.get() {
            if let Err(e) = sys::setns_net(root) {
                // Staying in the wrong namespace would make later `ip`
                // commands act there: stop.
                panic!("cannot return to the root network namespace: {e}");
            }
        }
    }
}

/// Deletes `hwb-*-<pid>` namespaces whose process is gone (runs killed with
/// SIGKILL leave them behind).
pub fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale namespace {name}");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// An interface of the lab.
#[derive(Clone, Debug)]
pub struct Iface {
    /// Name (inside its namespace).
    pub name: &'static str,
    /// Index (inside its namespace).
    pub index: u32,
    /// MAC.
    pub mac: [u8; 6],
}

/// The three namespaces and two veth pairs.
#[derive(Debug)]
pub struct Lab {
    /// Generator namespace.
    pub gen: Netns,
    /// Home agent (device under test) namespace.
    pub ha: Netns,
    /// Sink namespace.
    pub sink: Netns,
    /// Receive and transmit queues of every veth.
    pub queues: u32,
    /// The generator's veth.
    pub gen_if: Iface,
    /// The home agent's LAN veth.
    pub lan: Iface,
    /// The home agent's WAN veth.
    pub wan: Iface,
    /// The sink's veth.
    pub sink_if: Iface,
}

impl Lab {
    /// Builds the lab with `queues` queues per veth and `wan_mtu` on the
    /// WAN link (room for the outer header of full-size frames).
    pub fn new(queues: u32, wan_mtu: u32) -> io::Result<Lab> {
        let gen = Netns::create("gen")?;
        let ha = Netns::create("ha")?;
        let sink = Netns::create("sink")?;
        let q = queues.to_string();
        let mtu = wan_mtu.to_string();
        #[rustfmt::skip]
        ip(&[
            "link", "add", "gen0", "netns", gen.name(), "numtxqueues", &q, "numrxqueues", &q,
            "type", "veth", "peer", "name", "lan0", "netns", ha.name(),
            "numtxqueues", &q, "numrxqueues", &q,
        ])?;
        #[rustfmt::skip]
        ip(&[
            "link", "add", "wan0", "netns", ha.name(), "numtxqueues", &q, "numrxqueues", &q,
            "type", "veth", "peer", "name", "sink0", "netns", sink.name(),
            "numtxqueues", &q, "numrxqueues", &q,
        ])?;
        for (ns, dev, mac, addr, mtu) in [
            (&gen, "gen0", GEN_MAC, "10.200.0.2/24", "1500"),
            (&ha, "lan0", LAN_MAC, "10.200.0.1/24", "1500"),
            (&ha, "wan0", WAN_MAC, "10.201.0.1/24", mtu.as_str()),
            (&sink, "sink0", SINK_MAC, "10.201.0.2/24", mtu.as_str()),
        ] {
            // No IPv6 chatter (router solicitations, DAD) on the links.
            ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
            ns.exec("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
            ns.ip(&["link", "set", dev, "address", &mac_str(mac), "mtu", mtu])?;
            ns.ip(&["addr", "add", addr, "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        // The sink runs an XDP program that drops everything, ARP included:
        // the home agent's kernel (and homeward's neighbour thread) must
        // know its MAC statically. Same for the generator's view of lan0.
        ha.ip(&[
            "neigh",
            "replace",
            &CARE_OF.to_string(),
            "lladdr",
            &mac_str(SINK_MAC),
            "dev",
            "wan0",
            "nud",
            "permanent",
        ])?;
        // An external generator using the generator namespace's stack
        // (ping, iperf3, pktgen) reaches the VM address through lan0.
        gen.ip(&[
            "neigh",
            "replace",
            &VM.to_string(),
            "lladdr",
            &mac_str(LAN_MAC),
            "dev",
            "gen0",
            "nud",
            "permanent",
        ])?;
        ha.ip(&[
            "neigh",
            "replace",
            &GEN_ADDR.to_string(),
            "lladdr",
            &mac_str(GEN_MAC),
            "dev",
            "lan0",
            "nud",
            "permanent",
        ])?;
        let iface = |ns: &Netns, name: &'static str, mac| -> io::Result<Iface> {
            Ok(Iface {
                name,
                index: ns.ifindex(name)?,
                mac,
            })
        };
        Ok(Lab {
            gen_if: iface(&gen, "gen0", GEN_MAC)?,
            lan: iface(&ha, "lan0", LAN_MAC)?,
            wan: iface(&ha, "wan0", WAN_MAC)?,
            sink_if: iface(&sink, "sink0", SINK_MAC)?,
            gen,
            ha,
            sink,
            queues,
        })
    }

    /// Turns on threaded NAPI (`/sys/class/net/<dev>/threaded`) for `dev`
    /// of `ns` and returns the pids of its NAPI kthreads (`napi/<dev>-<id>`).
    /// veth has NAPI instances only with XDP or GRO on, so GRO is turned on
    /// first (it does not touch XDP-redirected frames), which also keeps
    /// the instances, and their threads, across XDP attach and detach.
    pub fn set_threaded(ns: &Netns, dev: &str) -> io::Result<Vec<u32>> {
        let before = napi_threads(dev);
        ns.exec("ethtool", &["-K", dev, "gro", "on"])?;
        ns.exec(
            "sh",
            &["-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")],
        )?;
        // The names are not unique across namespaces: ours are the new ones.
        let mut after = napi_threads(dev);
        after.retain(|p| !before.contains(p));
        Ok(after)
    }

    /// `ethtool -S dev` in `ns` (veth: per-queue XDP counters), empty if
    /// it cannot be read.
    pub fn ethtool_stats(ns: &Netns, dev: &str) -> BTreeMap<String, u64> {
        let text = ns.exec("ethtool", &["-S", dev]).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }
}

/// Pids of the kthreads called `napi/<dev>-*`.
fn napi_threads(dev: &str) -> Vec<u32> {
    let prefix = format!("napi/{dev}-");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(&prefix))
        })
        .collect()
}

/// Pins thread or process `pid` to `cpu` (`taskset -pc`).
pub fn pin_pid(pid: u32, cpu: usize) -> io::Result<()> {
    run(Command::new("taskset").args(["-pc", &cpu.to_string(), &pid.to_string()])).map(drop)
}
