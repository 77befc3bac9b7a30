//! The standard home-agent lab.
//!
//! ```text
//!  client ns: lan0 192.0.2.10/24 ─┐
//!                                 ├─ lan ns: bridge br0 (ports p-client, p-ha, p-<role>...)
//!  HA ns:     lan0 192.0.2.1/24  ─┘
//!  HA ns:     wan0 198.51.100.1/24 ──── foreign ns: wan0 198.51.100.2/24 (care-of address)
//! ```
//!
//! The client's default route goes via 192.0.2.1; the foreign side routes
//! 192.0.2.0/24 via 198.51.100.1; the HA forwards (ip_forward=1). No host
//! holds the VM's home address 192.0.2.50: homeward answers for it. IPv6 is
//! off in every lab namespace, so captures hold only what a test causes.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::homeward_bin;
use crate::link::{veth_pair, Iface, Mac, VethEnd, LINK_UP_TIMEOUT};
use crate::netns::{Netns, NsChild};

/// The home subnet, 192.0.2.0/24 (TEST-NET-1).
pub const HOME_NET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 0);
/// The HA's address on the home LAN, the client's gateway.
pub const HA_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The client's address on the home LAN.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The migrated VM's home address: no host holds it.
pub const VM_HOME_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
/// The WAN subnet between HA and foreign hypervisor, 198.51.100.0/24
/// (TEST-NET-2).
pub const WAN_NET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 0);
/// The HA's WAN address (the tunnel's outer source).
pub const HA_WAN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The foreign hypervisor's address: the care-of address.
pub const CARE_OF_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// Knobs of [`Topology::home_agent_lab_with`].
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// MTU of the home LAN links (client, HA lan0, bridge ports).
    pub lan_mtu: u32,
    /// MTU of the WAN link (HA wan0, foreign wan0).
    pub wan_mtu: u32,
    /// Turn GRO on on the veth peers of the HA's interfaces (the bridge
    /// port facing HA lan0 and the foreign wan0), for frames the HA
    /// XDP-redirects into them.
    pub gro_on_ha_peers: bool,
    /// RX/TX queues of every veth (homeward's `--queues`).
    pub queues: u32,
}

impl Default for LabOptions {
    fn default() -> LabOptions {
        LabOptions {
            lan_mtu: 1500,
            wan_mtu: 1500,
            gro_on_ha_peers: false,
            queues: 1,
        }
    }
}

/// The standard lab: client and HA on a bridged home LAN, HA and foreign
/// hypervisor on a WAN link. Everything is removed on drop, also on panic.
#[derive(Debug)]
pub struct Topology {
    /// The tag the lab was built with (names and MACs derive from it).
    pub tag: String,
    /// A host on the home LAN.
    pub client: Netns,
    /// Holds the home-LAN bridge and its ports.
    pub lan: Netns,
    /// The home agent (home gateway): runs homeward.
    pub ha: Netns,
    /// The foreign hypervisor (the care-of address).
    pub foreign: Netns,
    /// Client's `lan0`, 192.0.2.10/24.
    pub client_lan: Iface,
    /// HA's `lan0`, 192.0.2.1/24.
    pub ha_lan: Iface,
    /// HA's `wan0`, 198.51.100.1/24.
    pub ha_wan: Iface,
    /// Foreign's `wan0`, 198.51.100.2/24.
    pub foreign_wan: Iface,
    /// The bridge in `lan`: `br0`.
    pub bridge: String,
    /// Bridge port (in `lan`) facing the client: `p-client`.
    pub client_port: String,
    /// Bridge port (in `lan`) facing the HA: `p-ha`.
    pub ha_port: String,
    /// The VM's home address, 192.0.2.50.
    pub vm_home: Ipv4Addr,
    /// The care-of address (= `foreign_wan.addr`).
    pub care_of: Ipv4Addr,
    /// The options it was built with.
    pub options: LabOptions,
    extra_hosts: AtomicU8,
}

/// A further host on the home LAN, made by [`Topology::join_lan`].
#[derive(Debug)]
pub struct LanHost {
    /// Its namespace.
    pub ns: Netns,
    /// Its `lan0`.
    pub iface: Iface,
    /// Its bridge port in the lan namespace.
    pub port: String,
}

impl Topology {
    /// Builds the standard lab with default options. `tag` names the test
    /// (keep it short: it is part of every namespace name).
    #[track_caller]
    pub fn home_agent_lab(tag: &str) -> Topology {
        Topology::home_agent_lab_with(tag, LabOptions::default())
    }

    /// Builds the standard lab with chosen MTUs and GRO.
    #[track_caller]
    pub fn home_agent_lab_with(tag: &str, options: LabOptions) -> Topology {
        // Guards first: if anything below panics, what exists is dropped.
        let client = Netns::new(&format!("{tag}-cl"));
        let lan = Netns::new(&format!("{tag}-lan"));
        let ha = Netns::new(&format!("{tag}-ha"));
        let foreign = Netns::new(&format!("{tag}-fa"));
        for ns in [&client, &lan, &ha, &foreign] {
            ns.disable_ipv6();
        }

        let iface = |name: &str, index: u8, addr: Ipv4Addr| Iface {
            name: name.to_string(),
            mac: Mac::derive(tag, index),
            addr,
            prefix: 24,
        };
        let client_lan = iface("lan0", 0x10, CLIENT_ADDR);
        let ha_lan = iface("lan0", 0x01, HA_LAN_ADDR);
        let ha_wan = iface("wan0", 0x21, HA_WAN_ADDR);
        let foreign_wan = iface("wan0", 0x22, CARE_OF_ADDR);
        let bridge = "br0".to_string();
        let client_port = "p-client".to_string();
        let ha_port = "p-ha".to_string();

        lan.add_bridge(&bridge);
        veth_pair(
            &VethEnd::new(&client, &client_lan.name, client_lan.mac)
                .addr(client_lan.addr, client_lan.prefix)
                .mtu(options.lan_mtu)
                .queues(options.queues),
            &VethEnd::new(&lan, &client_port, Mac::derive(tag, 0x90))
                .mtu(options.lan_mtu)
                .queues(options.queues),
        );
        lan.enslave(&client_port, &bridge);
        veth_pair(
            &VethEnd::new(&ha, &ha_lan.name, ha_lan.mac)
                .addr(ha_lan.addr, ha_lan.prefix)
                .mtu(options.lan_mtu)
                .queues(options.queues),
            &VethEnd::new(&lan, &ha_port, Mac::derive(tag, 0x91))
                .mtu(options.lan_mtu)
                .queues(options.queues),
        );
        lan.enslave(&ha_port, &bridge);
        veth_pair(
            &VethEnd::new(&ha, &ha_wan.name, ha_wan.mac)
                .addr(ha_wan.addr, ha_wan.prefix)
                .mtu(options.wan_mtu)
                .queues(options.queues),
            &VethEnd::new(&foreign, &foreign_wan.name, foreign_wan.mac)
                .addr(foreign_wan.addr, foreign_wan.prefix)
                .mtu(options.wan_mtu)
                .queues(options.queues),
        );

        lan.wait_link_up(&bridge, LINK_UP_TIMEOUT);
        client.route_via("default", HA_LAN_ADDR);
        foreign.route_via(&format!("{HOME_NET}/24"), HA_WAN_ADDR);
        ha.sysctl("net.ipv4.ip_forward", "1");
        // Hosts whose traffic the HA forwards from userspace send frames
        // as a wire would carry them: checksums complete.
        client.full_checksums(&client_lan.name);
        foreign.full_checksums(&foreign_wan.name);
        if options.queues > 1 {
            client.spread_tx_queues(&client_lan.name, options.queues);
            lan.spread_tx_queues(&client_port, options.queues);
            lan.spread_tx_queues(&ha_port, options.queues);
            foreign.spread_tx_queues(&foreign_wan.name, options.queues);
        }
        if options.gro_on_ha_peers {
            lan.set_gro(&ha_port, true);
            foreign.set_gro(&foreign_wan.name, true);
        }

        Topology {
            tag: tag.to_string(),
            client,
            lan,
            ha,
            foreign,
            client_lan,
            ha_lan,
            ha_wan,
            foreign_wan,
            bridge,
            client_port,
            ha_port,
            vm_home: VM_HOME_ADDR,
            care_of: CARE_OF_ADDR,
            options,
            extra_hosts: AtomicU8::new(0),
        }
    }

    /// The HA's scratch directory (control socket, logs).
    pub fn dir(&self) -> &Path {
        self.ha.dir()
    }

    /// Where homeward's control socket goes: `<ha dir>/control.sock`.
    pub fn control_socket(&self) -> PathBuf {
        self.dir().join("control.sock")
    }

    /// `run --lan lan0 --wan wan0 --address 198.51.100.1 --socket <sock>`.
    pub fn homeward_run_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--lan".into(),
            self.ha_lan.name.clone(),
            "--wan".into(),
            self.ha_wan.name.clone(),
            "--address".into(),
            self.ha_wan.addr.to_string(),
            "--socket".into(),
            self.control_socket().to_string_lossy().into_owned(),
            "--state-dir".into(),
            self.state_dir().to_string_lossy().into_owned(),
        ]
    }

    /// homeward's state directory (bindings, replay state): `<ha dir>/state`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// Starts `homeward run ...` ([`Topology::homeward_run_args`] plus
    /// `extra`) in the HA namespace, with the binary from
    /// [`homeward_bin`]. It is killed when the guard drops.
    #[track_caller]
    pub fn spawn_homeward(&self, extra: &[&str]) -> NsChild {
        self.spawn_homeward_bin(&homeward_bin(), extra)
    }

    /// [`Topology::spawn_homeward`] with another binary.
    pub fn spawn_homeward_bin(&self, bin: &std::path::Path, extra: &[&str]) -> NsChild {
        let mut args = vec![bin.to_string_lossy().into_owned()];
        args.extend(self.homeward_run_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        self.ha.spawn(&args)
    }

    /// Runs `homeward ARGS...` (e.g. a CLI command against the control
    /// socket) in the HA namespace and returns its output.
    #[track_caller]
    pub fn homeward_cli(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec![homeward_bin().to_string_lossy().into_owned()];
        full.extend(args.iter().map(|s| s.to_string()));
        self.ha.exec(&full)
    }

    /// Adds one more host to the home LAN: a namespace (tagged with `role`)
    /// whose `lan0` has `addr`/24 and a default route via the HA, plugged
    /// into the bridge through port `p-<role>` (cut to 15 bytes).
    #[track_caller]
    pub fn join_lan(&self, role: &str, addr: Ipv4Addr) -> LanHost {
        let n = self.extra_hosts.fetch_add(1, Ordering::Relaxed) % 0x40;
        let ns = Netns::new(&format!("{}-{role}", self.tag));
        ns.disable_ipv6();
        let iface = Iface {
            name: "lan0".into(),
            mac: Mac::derive(&self.tag, 0x40 + n),
            addr,
            prefix: 24,
        };
        let mut port = format!("p-{role}");
        port.truncate(15);
        veth_pair(
            &VethEnd::new(&ns, &iface.name, iface.mac)
                .addr(iface.addr, iface.prefix)
                .mtu(self.options.lan_mtu),
            &VethEnd::new(&self.lan, &port, Mac::derive(&self.tag, 0xa0 + n))
                .mtu(self.options.lan_mtu),
        );
        self.lan.enslave(&port, &self.bridge);
        ns.full_checksums(&iface.name);
        ns.route_via("default", HA_LAN_ADDR);
        LanHost { ns, iface, port }
    }
}
