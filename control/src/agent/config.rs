//! `homeward agent` settings: flags plus the agent's TOML file (its VMs).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::common::claims::Claims;
use crate::error::Error;
use crate::proto::parse_mac;

/// Where the agent listens unless told otherwise. Root-only.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/homeward/agent.sock";

/// `homeward agent` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The interface toward the home agents (carries the tunnel).
    #[arg(long)]
    pub uplink: String,
    /// This hypervisor's own IPv4 address: the care-of address.
    #[arg(long)]
    pub address: Ipv4Addr,
    /// The home agent of VMs whose config names none.
    #[arg(long)]
    pub home_agent: Ipv4Addr,
    /// The agent's TOML file: keys, VMs and their QMP sockets.
    #[arg(long)]
    pub config: PathBuf,
    /// The tap or bridge the served VMs sit on (overrides `vm_link`).
    #[arg(long)]
    pub vm_link: Option<String>,
    /// Control socket path (overrides `socket`).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The bpf filesystem to pin the XDP program in, so that a restart
    /// after a crash recognises it (default /sys/fs/bpf).
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// Take the data path over from the agent running with the same
    /// control socket (a new binary, a restart): its AF_XDP sockets and
    /// UMEM are handed over with the VMs it serves, and it exits.
    #[arg(long)]
    pub takeover: bool,
    /// Serve Prometheus/OpenMetrics metrics at http://ADDR:PORT/metrics
    /// (off unless set; overrides `metrics`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Largest outer IPv4 datagram on the reverse tunnel (default 1500;
    /// overrides `tunnel_mtu`).
    #[arg(long)]
    pub tunnel_mtu: Option<u16>,
    /// Lower the MSS of TCP SYNs crossing the tunnel to what fits
    /// tunnel_mtu (tunnel_mtu - 60); `false` turns it off (default true;
    /// overrides `mss_clamp`).
    #[arg(long, value_name = "BOOL")]
    pub mss_clamp: Option<bool>,
}

/// The agent's config file. Unknown keys are errors, so a typo cannot
/// silently fall back to a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// SPI keys (format owned by the registration module).
    pub keys: PathBuf,
    pub vm_link: Option<String>,
    /// Registration lifetime to request, seconds.
    #[serde(default = "default_lifetime")]
    pub lifetime: u16,
    /// Ask for a reverse tunnel (the T flag, RFC 3024).
    #[serde(default = "default_true")]
    pub reverse_tunnel: bool,
    #[serde(default = "default_queues")]
    pub queues: u32,
    pub socket: Option<PathBuf>,
    /// The bpf filesystem the XDP program is pinned in.
    pub bpffs: Option<PathBuf>,
    /// Prometheus metrics endpoint `ADDR:PORT` (off unless set).
    pub metrics: Option<std::net::SocketAddr>,
    /// Largest outer IPv4 datagram on the reverse tunnel (default 1500).
    pub tunnel_mtu: Option<u16>,
    /// TCP MSS clamping for SYNs crossing the tunnel (default on).
    pub mss_clamp: Option<bool>,
    /// Longest hold asked of the home agent in a switchover (make before
    /// break), seconds; 0: no switchovers.
    #[serde(default = "default_switchover_hold")]
    pub switchover_hold: u16,
    #[serde(default)]
    pub vm: Vec<VmFile>,
}

fn default_lifetime() -> u16 {
    60
}
fn default_switchover_hold() -> u16 {
    super::lifecycle::DEFAULT_SWITCHOVER_HOLD
}
fn default_true() -> bool {
    true
}
fn default_queues() -> u32 {
    1
}

/// One `[[vm]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmFile {
    pub name: String,
    pub mac: String,
    pub home_address: Ipv4Addr,
    pub home_prefix_len: u8,
    pub home_agent: Option<Ipv4Addr>,
    pub spi: u32,
    pub qmp: PathBuf,
}

/// A served VM, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub name: String,
    pub mac: [u8; 6],
    pub home_address: Ipv4Addr,
    pub home_prefix_len: u8,
    pub home_agent: Ipv4Addr,
    pub spi: u32,
    pub qmp: PathBuf,
}

impl VmConfig {
    /// Is `addr` on this VM's home subnet? Then a VM running next to it is
    /// at home.
    pub fn in_home_subnet(&self, addr: Ipv4Addr) -> bool {
        let mask = prefix_mask(self.home_prefix_len);
        u32::from(addr) & mask == u32::from(self.home_address) & mask
    }
}

fn prefix_mask(len: u8) -> u32 {
    match len {
        0 => 0,
        l => u32::MAX << (32 - u32::from(l.min(32))),
    }
}

/// Everything `homeward agent` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub uplink: String,
    pub vm_link: String,
    pub address: Ipv4Addr,
    pub home_agent: Ipv4Addr,
    pub keys: PathBuf,
    pub lifetime: u16,
    pub reverse_tunnel: bool,
    pub queues: u32,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    pub vms: Vec<VmConfig>,
    /// The metrics endpoint, if on.
    pub metrics: Option<crate::common::metrics::MetricsConfig>,
    /// Largest outer IPv4 datagram on the reverse tunnel.
    pub tunnel_mtu: u16,
    /// Clamp the MSS of TCP SYNs to `tunnel_mtu - 60`.
    pub mss_clamp: bool,
    /// The switchover's lifetime, seconds; 0: none sent.
    pub switchover_hold: u16,
}

impl AgentConfig {
    /// The home agents the data path must accept tunnels from: the default
    /// one first, then every VM's, without duplicates.
    pub fn home_agents(&self) -> Vec<Ipv4Addr> {
        let mut has = vec![self.home_agent];
        for vm in &self.vms {
            if !has.contains(&vm.home_agent) {
                has.push(vm.home_agent);
            }
        }
        has
    }
}

impl AgentFile {
    /// Reads and parses the agent's config file.
    pub fn load(path: &Path) -> Result<AgentFile, Error> {
        crate::config::load_toml(path)
    }

    /// Parses config text; the error is toml's one-line message (tests).
    #[cfg(test)]
    pub fn parse(text: &str) -> Result<AgentFile, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }

    /// Validates the VMs; `default_home_agent` fills in VMs without one.
    pub fn vms(&self, default_home_agent: Option<Ipv4Addr>) -> Result<Vec<VmConfig>, String> {
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        let mut vms = Vec::with_capacity(self.vm.len());
        for v in &self.vm {
            let what = format!("vm {:?}", v.name);
            if v.name.is_empty() {
                return Err("a [[vm]] has an empty name".into());
            }
            if !names.insert(v.name.clone()) {
                return Err(format!("{what} is listed twice"));
            }
            if !addresses.insert(v.home_address) {
                return Err(format!(
                    "{what}: home address {} is used by another VM",
                    v.home_address
                ));
            }
            let mac = parse_mac(&v.mac).ok_or_else(|| format!("{what}: bad mac {:?}", v.mac))?;
            if !(1..=32).contains(&v.home_prefix_len) {
                return Err(format!(
                    "{what}: home_prefix_len {} is out of range (1 to 32)",
                    v.home_prefix_len
                ));
            }
            let home_agent = v
                .home_agent
                .or(default_home_agent)
                .ok_or_else(|| format!("{what}: no home_agent (and no --home-agent)"))?;
            vms.push(VmConfig {
                name: v.name.clone(),
                mac,
                home_address: v.home_address,
                home_prefix_len: v.home_prefix_len,
                home_agent,
                spi: v.spi,
                qmp: v.qmp.clone(),
            });
        }
        Ok(vms)
    }
}

impl AgentConfig {
    /// Flags win over the file; then validation.
    pub fn merge(args: &AgentArgs, file: AgentFile) -> Result<AgentConfig, Error> {
        let bad = |message: String| Error::ConfigParse {
            path: args.config.clone(),
            message,
        };
        let vms = file.vms(Some(args.home_agent)).map_err(bad)?;
        let vm_link = args
            .vm_link
            .clone()
            .or(file.vm_link)
            .ok_or(Error::Missing("--vm-link IFACE (or vm_link in the config)"))?;
        let a = args.address;
        if a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback() {
            return Err(Error::Invalid(format!(
                "--address {a} cannot be a care-of address"
            )));
        }
        for vm in &vms {
            // The agent would answer ARP for, and tunnel, its own address or a
            // subnet's broadcast: refuse such a VM, as the home agent does.
            let claims = Claims::new(vec![a], vec![(vm.home_address, vm.home_prefix_len)]);
            if let Some(why) = claims.refuse_home(vm.home_address) {
                return Err(bad(format!(
                    "[[vm]] {}: home_address {} cannot be a VM's address: {why}",
                    vm.name, vm.home_address
                )));
            }
        }
        if file.lifetime == 0 {
            return Err(bad("lifetime must be at least 1 second".into()));
        }
        if !(1..=64).contains(&file.queues) {
            return Err(bad(format!(
                "queues {} is out of range (1 to 64)",
                file.queues
            )));
        }
        let tunnel_mtu = args.tunnel_mtu.or(file.tunnel_mtu).unwrap_or(1500);
        // As the home agent: 68 is the IPv4 minimum MTU, plus the outer header.
        if tunnel_mtu < 88 {
            return Err(bad(format!(
                "tunnel_mtu {tunnel_mtu} is too small (at least 88: 20 outer + 68 inner)"
            )));
        }
        if vm_link == args.uplink {
            return Err(Error::Invalid(format!(
                "--vm-link and --uplink are both {vm_link}: the VMs need their own link"
            )));
        }
        Ok(AgentConfig {
            metrics: crate::common::metrics::MetricsConfig::merge(
                args.metrics.or(file.metrics),
                None,
            ),
            uplink: args.uplink.clone(),
            vm_link,
            address: a,
            home_agent: args.home_agent,
            keys: file.keys,
            lifetime: file.lifetime,
            reverse_tunnel: file.reverse_tunnel,
            queues: file.queues,
            socket: args
                .socket
                .clone()
                .or(file.socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET)),
            bpffs: args
                .bpffs
                .clone()
                .or(file.bpffs)
                .unwrap_or_else(|| PathBuf::from(crate::common::DEFAULT_BPFFS)),
            vms,
            tunnel_mtu,
            mss_clamp: args.mss_clamp.or(file.mss_clamp).unwrap_or(true),
            switchover_hold: file.switchover_hold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
keys = "/etc/homeward/keys.toml"
vm_link = "tap0"
lifetime = 60
reverse_tunnel = true
queues = 1
socket = "/run/homeward/agent.sock"
[[vm]]
name = "web1"
mac = "52:54:00:00:00:50"
home_address = "192.0.2.50"
home_prefix_len = 24
home_agent = "198.51.100.1"
spi = 256
qmp = "/run/homeward/web1.qmp"
[[vm]]
name = "db1"
mac = "52:54:00:00:00:51"
home_address = "192.0.2.51"
home_prefix_len = 24
spi = 257
qmp = "/run/homeward/db1.qmp"
"#;

    fn args() -> AgentArgs {
        AgentArgs {
            uplink: "eth0".into(),
            address: Ipv4Addr::new(203, 0, 113, 2),
            home_agent: Ipv4Addr::new(198, 51, 100, 9),
            config: "/etc/homeward/agent.toml".into(),
            vm_link: None,
            socket: None,
            bpffs: None,
            takeover: false,
            metrics: None,
            tunnel_mtu: None,
            mss_clamp: None,
        }
    }

    #[test]
    fn vms_on_reserved_addresses_are_refused() {
        for (home, why) in [
            ("203.0.113.2", "own addresses"),
            ("192.0.2.0", "network address"),
            ("192.0.2.255", "broadcast address"),
        ] {
            let text = EXAMPLE.replace("192.0.2.50", home);
            let e = AgentConfig::merge(&args(), AgentFile::parse(&text).unwrap()).unwrap_err();
            assert!(e.to_string().contains(why), "{home}: {e}");
        }
    }

    #[test]
    fn the_documented_example_parses_and_merges() {
        let c = AgentConfig::merge(&args(), AgentFile::parse(EXAMPLE).unwrap()).unwrap();
        assert_eq!(c.vm_link, "tap0");
        assert_eq!(c.lifetime, 60);
        assert!(c.reverse_tunnel);
        assert_eq!(c.vms.len(), 2);
        assert_eq!(c.vms[0].mac, [0x52, 0x54, 0, 0, 0, 0x50]);
        assert_eq!(c.vms[0].home_agent, Ipv4Addr::new(198, 51, 100, 1));
        // No home_agent: --home-agent.
        assert_eq!(c.vms[1].home_agent, Ipv4Addr::new(198, 51, 100, 9));
        assert_eq!(
            c.home_agents(),
            vec![
                Ipv4Addr::new(198, 51, 100, 9),
                Ipv4Addr::new(198, 51, 100, 1)
            ]
        );
        assert_eq!(c.socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
    }

    #[test]
    fn switchover_hold_defaults_to_5_s_and_0_turns_it_off() {
        let c = AgentConfig::merge(&args(), AgentFile::parse(EXAMPLE).unwrap()).unwrap();
        assert_eq!(c.switchover_hold, 5);
        let text = format!("switchover_hold = 0\n{EXAMPLE}");
        let c = AgentConfig::merge(&args(), AgentFile::parse(&text).unwrap()).unwrap();
        assert_eq!(c.switchover_hold, 0);
    }

    #[test]
    fn tunnel_mtu_and_mss_clamp() {
        let c = AgentConfig::merge(&args(), AgentFile::parse(EXAMPLE).unwrap()).unwrap();
        assert_eq!((c.tunnel_mtu, c.mss_clamp), (1500, true), "defaults");
        let text = format!("tunnel_mtu = 1520\nmss_clamp = false\n{EXAMPLE}");
        let c = AgentConfig::merge(&args(), AgentFile::parse(&text).unwrap()).unwrap();
        assert_eq!((c.tunnel_mtu, c.mss_clamp), (1520, false));
        let mut a = args();
        a.tunnel_mtu = Some(1400);
        a.mss_clamp = Some(true);
        let c = AgentConfig::merge(&a, AgentFile::parse(&text).unwrap()).unwrap();
        assert_eq!((c.tunnel_mtu, c.mss_clamp), (1400, true), "flags win");
        a.tunnel_mtu = Some(60);
        let e = AgentConfig::merge(&a, AgentFile::parse(EXAMPLE).unwrap()).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let mut a = args();
        a.vm_link = Some("br0".into());
        a.socket = Some("/tmp/x.sock".into());
        let c = AgentConfig::merge(&a, AgentFile::parse(EXAMPLE).unwrap()).unwrap();
        assert_eq!(c.vm_link, "br0");
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
    }

    #[test]
    fn defaults_fill_in() {
        let f = AgentFile::parse("keys = \"/k\"\n").unwrap();
        assert_eq!(f.lifetime, 60);
        assert!(f.reverse_tunnel);
        assert_eq!(f.queues, 1);
        assert!(f.vm.is_empty());
        let e = AgentConfig::merge(&args(), f).unwrap_err();
        assert!(e.to_string().contains("--vm-link"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_at_both_levels() {
        let e = AgentFile::parse("keys = \"/k\"\nlifetim = 3\n").unwrap_err();
        assert!(e.contains("unknown field `lifetim`"), "{e}");
        let e = AgentFile::parse(&EXAMPLE.replace("spi = 257", "spi = 257\nport = 1")).unwrap_err();
        assert!(e.contains("unknown field `port`"), "{e}");
        assert!(
            AgentFile::parse("vm_link = \"tap0\"\n").is_err(),
            "keys is required"
        );
    }

    #[test]
    fn bad_vms_are_named() {
        let cases = [
            ("\"52:54:00:00:00:51\"", "\"52:54\"", "bad mac"),
            ("name = \"db1\"", "name = \"web1\"", "listed twice"),
            ("\"192.0.2.51\"", "\"192.0.2.50\"", "used by another VM"),
        ];
        for (from, to, needle) in cases {
            let f = AgentFile::parse(&EXAMPLE.replace(from, to)).unwrap();
            let e = AgentConfig::merge(&args(), f).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
        let f =
            AgentFile::parse(&EXAMPLE.replacen("home_prefix_len = 24", "home_prefix_len = 33", 1))
                .unwrap();
        assert!(f.vms(None).unwrap_err().contains("out of range"));
        let f = AgentFile::parse(EXAMPLE).unwrap();
        assert!(f.vms(None).unwrap_err().contains("no home_agent"));
        let f = AgentFile::parse(&EXAMPLE.replace("lifetime = 60", "lifetime = 0")).unwrap();
        assert!(AgentConfig::merge(&args(), f).is_err());
        let f = AgentFile::parse(&EXAMPLE.replace("lifetime = 60", "lifetime = 70000"));
        assert!(f.is_err(), "lifetime is 16 bits on the wire");
    }

    #[test]
    fn home_subnet_membership() {
        let f = AgentFile::parse(EXAMPLE).unwrap();
        let vms = f.vms(Some(Ipv4Addr::new(198, 51, 100, 1))).unwrap();
        let web1 = &vms[0];
        assert!(web1.in_home_subnet(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(web1.in_home_subnet(Ipv4Addr::new(192, 0, 2, 255)));
        assert!(!web1.in_home_subnet(Ipv4Addr::new(192, 0, 3, 1)));
        assert!(!web1.in_home_subnet(Ipv4Addr::new(203, 0, 113, 2)));
        let mut host = web1.clone();
        host.home_prefix_len = 32;
        assert!(host.in_home_subnet(Ipv4Addr::new(192, 0, 2, 50)));
        assert!(!host.in_home_subnet(Ipv4Addr::new(192, 0, 2, 51)));
        assert_eq!(prefix_mask(1), 0x8000_0000);
        assert_eq!(prefix_mask(0), 0);
    }
}
