//! The VM-migration lab: a real QEMU guest that lives on the home LAN and
//! live-migrates to a hypervisor on another network.
//!
//! ```text
//!  client ns: lan0 192.0.2.10/24 ──┐
//!                                  ├─ lan ns: bridge br0 (p-client, p-hypa, p-ha)
//!  hyp A ns:  br0 192.0.2.20/24 ───┤   (A's br0 holds up0, the veth to p-hypa,
//!             [up0, tap vm0] ──────┘    and vm0, the VM's tap)
//!  HA ns:     lan0 192.0.2.1/24 ───┘
//!  HA ns:     wan0 198.51.100.1/24 ── router ns: r-ha 198.51.100.254/24
//!                                     router ns: r-b  203.0.113.254/24 ── hyp B ns: wan0 203.0.113.2/24
//!                                                                         hyp B ns: tap vm0 (no bridge)
//!                                     router ns: r-c  198.18.0.254/24 ─── hyp C ns: wan0 198.18.0.2/24
//!                                                                         hyp C ns: tap vm0 (no bridge)
//! ```
//!
//! C is B's twin on a third network: a migration from B to C moves the VM
//! from one foreign network to another.
//!
//! With [`MigrationLabOptions::vms`] > 1 the lab hosts that many VMs
//! ([`LabVm`]): VM `i` is `vm<i>`, home address 192.0.2.(50+i), MAC
//! 52:54:00:12:34:(50+i), tap `vm<i>` on both hypervisors (on A a port of
//! `br0`), its own spare QMP socket on each. On B their taps are the ports
//! of a bridge `br-vm` (no address), the link B's agent serves them on. A's
//! spare tap is then `vmalt`.
//!
//! The VM's home address is 192.0.2.50 on the home LAN, gateway 192.0.2.1
//! (the HA). The router forwards between the HA's WAN and B's network and
//! routes the home prefix to the HA, as the Internet would. The HA forwards
//! too (ip_forward=1) but runs nothing: another test starts `homeward run`
//! in [`MigrationLab::ha`] and `homeward agent` in the hypervisors (see
//! [`MigrationLab::homeward_run_args`] and [`MigrationLab::agent_args_b`]).
//!
//! Everything is inside namespaces the lab made and is removed on drop, also
//! on panic. IPv6 is off everywhere.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::link::{veth_pair, Iface, Mac, VethEnd, LINK_UP_TIMEOUT};
use crate::netns::{Netns, NsChild};
use crate::qemu::{QemuConfig, Storage, Vm};
use crate::topology::{CLIENT_ADDR, HA_LAN_ADDR, HA_WAN_ADDR, VM_HOME_ADDR};
use crate::vm::{HTTP_PORT, STREAM_PATH, VM_MAC};

/// Hypervisor A's own address on the home LAN (on its bridge).
pub const HYP_A_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
/// The router's address on the HA's WAN link.
pub const ROUTER_WAN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// The router's address on hypervisor B's network.
pub const ROUTER_B_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
/// Hypervisor B's uplink address: the care-of address after a migration.
pub const HYP_B_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// Hypervisor B's network, 203.0.113.0/24 (TEST-NET-3).
pub const B_NET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 0);
/// The router's address on hypervisor C's network.
pub const ROUTER_C_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// Hypervisor C's uplink address: the care-of address at C.
pub const HYP_C_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Hypervisor C's network, 198.18.0.0/24 (benchmarking range): a second
/// foreign network, for migrations from one foreign network to another.
pub const C_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// The VM's tap in both hypervisors.
pub const VM_TAP: &str = "vm0";
/// A second tap on A's bridge, for a migration within A (a tap takes one
/// QEMU at a time, and both run during a migration).
pub const VM_TAP_ALT: &str = "vm1";
/// A's spare tap in a lab with several VMs (`vm1` is then a VM's).
pub const VM_TAP_ALT_MULTI: &str = "vmalt";
/// The bridge on B that holds the VMs' taps in a lab with several VMs.
pub const B_VM_BRIDGE: &str = "br-vm";
/// Name of the client binary (tests/src/bin/hw-vm-client.rs).
pub const CLIENT_BIN: &str = "hw-vm-client";
/// Environment variable that overrides where [`CLIENT_BIN`] is.
pub const CLIENT_BIN_ENV: &str = "HOMEWARD_VM_CLIENT";

/// Knobs of [`MigrationLab::with_options`].
#[derive(Clone, Debug)]
pub struct MigrationLabOptions {
    /// MTU of the routed links (HA wan0 - router - B): larger than the LAN's
    /// lets a tunnel carry full-size inner packets.
    pub wan_mtu: u32,
    /// GRO on the veth peers of the HA's and hypervisors' uplinks, so that
    /// frames homeward XDP-redirects into them are not dropped.
    pub gro: bool,
    /// Offloads as a fresh system has them: every veth keeps its checksum
    /// offload, and the VM has QEMU's default virtio-net (checksum offload
    /// and TSO). `false`: complete checksums everywhere, `csum=off`.
    pub default_offloads: bool,
    /// How many VMs the lab hosts (at least 1; see the module's docs).
    pub vms: usize,
}

impl Default for MigrationLabOptions {
    fn default() -> MigrationLabOptions {
        MigrationLabOptions {
            wan_mtu: 1500,
            gro: true,
            default_offloads: false,
            vms: 1,
        }
    }
}

/// One of the lab's VMs: who it is and where it plugs in.
#[derive(Clone, Debug)]
pub struct LabVm {
    /// Its name: QEMU's label and the agents' `[[vm]]` name (`vm` in a
    /// one-VM lab, else `vm<i>`).
    pub name: String,
    /// Its NIC's MAC.
    pub mac: Mac,
    /// Its home address.
    pub addr: Ipv4Addr,
    /// Its tap, the same name on A (a port of `br0`) and on B.
    pub tap: String,
    /// The file name of its spare QMP socket on a hypervisor (`None`: the
    /// one-VM lab's `qmp-agent.sock`).
    pub agent_qmp_name: Option<String>,
}

impl LabVm {
    /// VM `index` of a lab with `count` VMs.
    fn new(index: usize, count: usize) -> LabVm {
        if count == 1 {
            return LabVm {
                name: "vm".into(),
                mac: VM_MAC,
                addr: VM_HOME_ADDR,
                tap: VM_TAP.into(),
                agent_qmp_name: None,
            };
        }
        let n = u8::try_from(index).expect("fewer than 200 VMs");
        assert!(n < 200, "fewer than 200 VMs");
        let mut mac = VM_MAC;
        mac.0[5] += n;
        let [a, b, c, d] = VM_HOME_ADDR.octets();
        LabVm {
            name: format!("vm{index}"),
            mac,
            addr: Ipv4Addr::new(a, b, c, d + n),
            tap: format!("vm{index}"),
            agent_qmp_name: Some(format!("qmp-agent-vm{index}.sock")),
        }
    }

    /// Its QEMU's settings: the lab's defaults ([`QemuConfig::new`]) with
    /// its name, MAC, address and spare QMP socket.
    pub fn qemu_config(&self) -> QemuConfig {
        let mut config = QemuConfig::new(&self.name, &self.tap);
        config.mac = self.mac;
        config.net.addr = self.addr;
        config.agent_qmp_name = self.agent_qmp_name.clone();
        config
    }
}

/// The lab. Fields are public so tests can reach every namespace and
/// interface; dropping it removes everything.
#[derive(Debug)]
pub struct MigrationLab {
    /// The tag the lab was built with.
    pub tag: String,
    /// A host on the home LAN that downloads from the VM.
    pub client: Netns,
    /// Holds the home-LAN bridge.
    pub lan: Netns,
    /// Hypervisor A, the VM's home host, on the home LAN.
    pub hyp_a: Netns,
    /// The home agent (home gateway).
    pub ha: Netns,
    /// The "Internet" between HA and hypervisor B.
    pub router: Netns,
    /// Hypervisor B, on another network.
    pub hyp_b: Netns,
    /// Hypervisor C, on a third network (B's twin).
    pub hyp_c: Netns,
    /// Client's `lan0`, 192.0.2.10/24.
    pub client_lan: Iface,
    /// A's bridge `br0`, 192.0.2.20/24 (its address; A's uplink for an agent).
    pub a_bridge: Iface,
    /// A's veth into the home LAN, a port of A's `br0`: `up0`.
    pub a_uplink_port: String,
    /// HA's `lan0`, 192.0.2.1/24.
    pub ha_lan: Iface,
    /// HA's `wan0`, 198.51.100.1/24.
    pub ha_wan: Iface,
    /// Router's `r-ha`, 198.51.100.254/24.
    pub router_wan: Iface,
    /// Router's `r-b`, 203.0.113.254/24.
    pub router_b: Iface,
    /// B's uplink `wan0`, 203.0.113.2/24.
    pub b_uplink: Iface,
    /// Router's `r-c`, 198.18.0.254/24.
    pub router_c: Iface,
    /// C's uplink `wan0`, 198.18.0.2/24.
    pub c_uplink: Iface,
    /// The VM's tap on A (port of A's br0) and on B (alone): `vm0`.
    pub tap: String,
    /// A second tap on A's br0, `vm1`, for migrations within A (`vmalt`
    /// with several VMs).
    pub tap_alt: String,
    /// The VMs ([`MigrationLabOptions::vms`]); the first is the one-VM
    /// lab's VM, on [`MigrationLab::tap`].
    pub vms: Vec<LabVm>,
    /// The link the VMs sit on at B, for B's agent (`vm_link`): the tap
    /// `vm0` alone, or with several VMs the bridge `br-vm` holding theirs.
    /// C's is named the same.
    pub b_vm_link: String,
    /// The home-LAN bridge in `lan`: `br0`.
    pub lan_bridge: String,
    /// The options it was built with.
    pub options: MigrationLabOptions,
    shared: tempfile::TempDir,
}

impl MigrationLab {
    /// Builds the lab with default options. Keep `tag` short.
    #[track_caller]
    pub fn new(tag: &str) -> MigrationLab {
        MigrationLab::with_options(tag, MigrationLabOptions::default())
    }

    /// Builds the lab.
    #[track_caller]
    pub fn with_options(tag: &str, options: MigrationLabOptions) -> MigrationLab {
        // Guards first: if anything below panics, what exists is dropped.
        let client = Netns::new(&format!("{tag}-cl"));
        let lan = Netns::new(&format!("{tag}-lan"));
        let hyp_a = Netns::new(&format!("{tag}-hypa"));
        let ha = Netns::new(&format!("{tag}-ha"));
        let router = Netns::new(&format!("{tag}-rt"));
        let hyp_b = Netns::new(&format!("{tag}-hypb"));
        let hyp_c = Netns::new(&format!("{tag}-hypc"));
        for ns in [&client, &lan, &hyp_a, &ha, &router, &hyp_b, &hyp_c] {
            ns.disable_ipv6();
        }
        let shared = tempfile::Builder::new()
            .prefix(&format!("{}-shared-", client.name()))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create the lab's shared directory: {e}"));

        let iface = |name: &str, index: u8, addr: Ipv4Addr| Iface {
            name: name.to_string(),
            mac: Mac::derive(tag, index),
            addr,
            prefix: 24,
        };
        let client_lan = iface("lan0", 0x10, CLIENT_ADDR);
        let a_bridge = iface("br0", 0x20, HYP_A_ADDR);
        let ha_lan = iface("lan0", 0x01, HA_LAN_ADDR);
        let ha_wan = iface("wan0", 0x21, HA_WAN_ADDR);
        let router_wan = iface("r-ha", 0x31, ROUTER_WAN_ADDR);
        let router_b = iface("r-b", 0x32, ROUTER_B_ADDR);
        let b_uplink = iface("wan0", 0x42, HYP_B_ADDR);
        let router_c = iface("r-c", 0x33, ROUTER_C_ADDR);
        let c_uplink = iface("wan0", 0x44, HYP_C_ADDR);
        let lan_bridge = "br0".to_string();
        let a_uplink_port = "up0".to_string();
        assert!(options.vms >= 1, "a migration lab hosts at least one VM");
        let vms: Vec<LabVm> = (0..options.vms)
            .map(|i| LabVm::new(i, options.vms))
            .collect();
        let multi = vms.len() > 1;
        let tap = VM_TAP.to_string();
        let tap_alt = if multi { VM_TAP_ALT_MULTI } else { VM_TAP_ALT }.to_string();
        let b_vm_link = if multi { B_VM_BRIDGE } else { VM_TAP }.to_string();

        // Home LAN.
        lan.add_bridge(&lan_bridge);
        veth_pair(
            &VethEnd::new(&client, &client_lan.name, client_lan.mac)
                .addr(client_lan.addr, client_lan.prefix),
            &VethEnd::new(&lan, "p-client", Mac::derive(tag, 0x90)),
        );
        lan.enslave("p-client", &lan_bridge);
        veth_pair(
            &VethEnd::new(&ha, &ha_lan.name, ha_lan.mac).addr(ha_lan.addr, ha_lan.prefix),
            &VethEnd::new(&lan, "p-ha", Mac::derive(tag, 0x91)),
        );
        lan.enslave("p-ha", &lan_bridge);

        // Hypervisor A: its own bridge holds the uplink and the VM's tap,
        // as a hypervisor's host bridge does; A's address sits on it.
        hyp_a.add_bridge(&a_bridge.name);
        hyp_a.ip(&[
            "link",
            "set",
            "dev",
            &a_bridge.name,
            "address",
            &a_bridge.mac.to_string(),
        ]);
        veth_pair(
            &VethEnd::new(&hyp_a, &a_uplink_port, Mac::derive(tag, 0x22)),
            &VethEnd::new(&lan, "p-hypa", Mac::derive(tag, 0x92)),
        );
        lan.enslave("p-hypa", &lan_bridge);
        hyp_a.enslave(&a_uplink_port, &a_bridge.name);
        hyp_a.add_addr(&a_bridge.name, a_bridge.addr, a_bridge.prefix);
        for t in vms.iter().map(|v| &v.tap).chain([&tap_alt]) {
            add_tap(&hyp_a, t);
            hyp_a.enslave(t, &a_bridge.name);
            hyp_a.link_up(t);
        }
        hyp_a.wait_link_up(&a_bridge.name, LINK_UP_TIMEOUT);

        // The routed side.
        veth_pair(
            &VethEnd::new(&ha, &ha_wan.name, ha_wan.mac)
                .addr(ha_wan.addr, ha_wan.prefix)
                .mtu(options.wan_mtu),
            &VethEnd::new(&router, &router_wan.name, router_wan.mac)
                .addr(router_wan.addr, router_wan.prefix)
                .mtu(options.wan_mtu),
        );
        let foreign = ForeignHost {
            router: &router,
            vms: &vms,
            vm_link: &b_vm_link,
            multi,
            wan_mtu: options.wan_mtu,
        };
        foreign.build(&router_b, &hyp_b, &b_uplink, Mac::derive(tag, 0x43));
        foreign.build(&router_c, &hyp_c, &c_uplink, Mac::derive(tag, 0x45));
        // (br-vm has no carrier until a VM's QEMU opens one of its taps.)
        lan.wait_link_up(&lan_bridge, LINK_UP_TIMEOUT);

        client.route_via("default", HA_LAN_ADDR);
        hyp_a.route_via("default", HA_LAN_ADDR);
        ha.route_via(&format!("{B_NET}/24"), ROUTER_WAN_ADDR);
        ha.route_via(&format!("{C_NET}/24"), ROUTER_WAN_ADDR);
        ha.sysctl("net.ipv4.ip_forward", "1");
        router.sysctl("net.ipv4.ip_forward", "1");
        router.route_via(&format!("{}/24", crate::topology::HOME_NET), HA_WAN_ADDR);
        hyp_b.route_via("default", ROUTER_B_ADDR);
        hyp_c.route_via("default", ROUTER_C_ADDR);

        // Hosts whose traffic homeward may forward from userspace send
        // frames as a wire would carry them: checksums complete.
        if !options.default_offloads {
            client.full_checksums(&client_lan.name);
            hyp_a.full_checksums(&a_bridge.name);
            hyp_a.full_checksums(&a_uplink_port);
            router.full_checksums(&router_wan.name);
            router.full_checksums(&router_b.name);
            hyp_b.full_checksums(&b_uplink.name);
            router.full_checksums(&router_c.name);
            hyp_c.full_checksums(&c_uplink.name);
        }
        if options.gro {
            // A frame XDP-redirected into a veth is dropped unless the peer
            // has GRO on: peers of the HA's lan0/wan0 and of the hypervisors'
            // uplinks, where homeward's HA and agents transmit.
            lan.set_gro("p-ha", true);
            router.set_gro(&router_wan.name, true);
            router.set_gro(&router_b.name, true);
            router.set_gro(&router_c.name, true);
            lan.set_gro("p-hypa", true);
        }

        MigrationLab {
            tag: tag.to_string(),
            client,
            lan,
            hyp_a,
            ha,
            router,
            hyp_b,
            hyp_c,
            client_lan,
            a_bridge,
            a_uplink_port,
            ha_lan,
            ha_wan,
            router_wan,
            router_b,
            b_uplink,
            router_c,
            c_uplink,
            tap,
            tap_alt,
            vms,
            b_vm_link,
            lan_bridge,
            options,
            shared,
        }
    }

    /// A directory both hypervisors see (shared-storage images live here);
    /// removed with the lab.
    pub fn shared_dir(&self) -> &Path {
        self.shared.path()
    }

    /// The VM's home address, 192.0.2.50.
    pub fn vm_addr(&self) -> Ipv4Addr {
        VM_HOME_ADDR
    }

    /// Boots the VM on hypervisor A (its home) on A's tap, with the lab's
    /// defaults ([`QemuConfig::new`]) and the given storage.
    #[track_caller]
    pub fn boot_vm_on_a(&self, storage: Storage) -> Vm {
        Vm::boot(
            &self.hyp_a,
            &self.tap,
            QemuConfig {
                default_nic: self.options.default_offloads,
                ..QemuConfig::new("vm", &self.tap)
            },
            storage,
        )
    }

    /// Boots VM `index` of [`MigrationLab::vms`] on hypervisor A (home), on
    /// its tap, without a disk.
    #[track_caller]
    pub fn boot_lab_vm_on_a(&self, index: usize) -> Vm {
        let v = &self.vms[index];
        let mut config = v.qemu_config();
        config.default_nic = self.options.default_offloads;
        Vm::boot(&self.hyp_a, &v.tap, config, Storage::None)
    }

    /// VM `index`'s spare QMP socket on `hypervisor`, for an agent's
    /// `[[vm]]`.
    pub fn vm_agent_qmp_socket(&self, hypervisor: &Netns, index: usize) -> PathBuf {
        crate::qemu::agent_qmp_socket_named(hypervisor, self.vms[index].agent_qmp_name.as_deref())
    }

    /// A shared-storage case: a raw image of `size_mb` MiB (filled) in
    /// [`MigrationLab::shared_dir`].
    #[track_caller]
    pub fn shared_storage(&self, size_mb: u64) -> Storage {
        let image = self.shared_dir().join("shared-disk.raw");
        crate::qemu::create_image(&image, size_mb, true);
        Storage::Shared {
            image,
            format: "raw".into(),
        }
    }

    /// The spare QMP socket the VM's QEMU offers on a hypervisor
    /// (`hyp_a` or `hyp_b`) whenever it runs there: for a homeward agent's
    /// config. Stable across migrations A -> B -> A.
    pub fn agent_qmp_socket(&self, hypervisor: &Netns) -> PathBuf {
        crate::qemu::agent_qmp_socket(hypervisor)
    }

    /// Arguments of `homeward run` for the HA namespace: `run --lan lan0
    /// --wan wan0 --address 198.51.100.1`.
    pub fn homeward_run_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--lan".into(),
            self.ha_lan.name.clone(),
            "--wan".into(),
            self.ha_wan.name.clone(),
            "--address".into(),
            self.ha_wan.addr.to_string(),
        ]
    }

    /// Arguments of `homeward agent` on hypervisor B: `agent --uplink wan0
    /// --address 203.0.113.2 --home-agent 198.51.100.1 --config CONFIG`.
    pub fn agent_args_b(&self, config: &Path) -> Vec<String> {
        agent_args(&self.b_uplink, config)
    }

    /// Arguments of `homeward agent` on hypervisor C, as on B.
    pub fn agent_args_c(&self, config: &Path) -> Vec<String> {
        agent_args(&self.c_uplink, config)
    }

    /// Arguments of `homeward agent` on hypervisor A: `agent --uplink br0
    /// --address 192.0.2.20 --home-agent 198.51.100.1 --config CONFIG`.
    pub fn agent_args_a(&self, config: &Path) -> Vec<String> {
        agent_args(&self.a_bridge, config)
    }

    /// Starts the download client in the client namespace against the VM
    /// ([`StreamOptions`]); read its report with [`StreamReport::wait`].
    #[track_caller]
    pub fn start_stream(&self, opts: &StreamOptions) -> NsChild {
        start_stream_in(&self.client, self.vm_addr(), opts)
    }

    /// `hw-vm-client get` from `ns`: fetches `path` from the VM's web
    /// server (a few seconds' timeout); the body if it answered 200.
    #[track_caller]
    pub fn http_get(&self, ns: &Netns, path: &str) -> Option<String> {
        http_get_from(ns, self.vm_addr(), path)
    }
}

/// `hw-vm-client get` from `ns`: fetches `path` from the web server of the
/// VM at `addr` (a few seconds' timeout); the body if it answered 200.
#[track_caller]
pub fn http_get_from(ns: &Netns, addr: Ipv4Addr, path: &str) -> Option<String> {
    let bin = client_bin();
    let out = ns.exec(&[
        bin.to_string_lossy().as_ref(),
        "get",
        "--addr",
        &format!("{addr}:{HTTP_PORT}"),
        "--path",
        path,
        "--timeout-ms",
        "3000",
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn agent_args(uplink: &Iface, config: &Path) -> Vec<String> {
    vec![
        "agent".into(),
        "--uplink".into(),
        uplink.name.clone(),
        "--address".into(),
        uplink.addr.to_string(),
        "--home-agent".into(),
        HA_WAN_ADDR.to_string(),
        "--config".into(),
        config.to_string_lossy().into_owned(),
    ]
}

/// How a foreign hypervisor (B, C) is built: an uplink to the router, and
/// a tap per VM, alone or on a bridge.
struct ForeignHost<'a> {
    router: &'a Netns,
    vms: &'a [LabVm],
    vm_link: &'a str,
    multi: bool,
    wan_mtu: u32,
}

impl ForeignHost<'_> {
    fn build(&self, router_if: &Iface, ns: &Netns, uplink: &Iface, bridge_mac: Mac) {
        veth_pair(
            &VethEnd::new(self.router, &router_if.name, router_if.mac)
                .addr(router_if.addr, router_if.prefix)
                .mtu(self.wan_mtu),
            &VethEnd::new(ns, &uplink.name, uplink.mac)
                .addr(uplink.addr, uplink.prefix)
                .mtu(self.wan_mtu),
        );
        if self.multi {
            ns.add_bridge(self.vm_link);
            ns.ip(&[
                "link",
                "set",
                "dev",
                self.vm_link,
                "address",
                &bridge_mac.to_string(),
            ]);
        }
        for v in self.vms {
            add_tap(ns, &v.tap);
            if self.multi {
                ns.enslave(&v.tap, self.vm_link);
            }
            ns.link_up(&v.tap);
        }
    }
}

/// A persistent tap QEMU attaches to by name; it lives (and its bridge
/// membership with it) across the QEMUs that come and go on this host.
#[track_caller]
fn add_tap(ns: &Netns, name: &str) {
    ns.ip(&["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"]);
}

/// The download client's binary: `$HOMEWARD_VM_CLIENT`, else
/// `target/<profile>/hw-vm-client` among the ancestors of the running
/// executable (cargo builds it for this package's integration tests).
#[track_caller]
pub fn client_bin() -> PathBuf {
    if let Some(p) = std::env::var_os(CLIENT_BIN_ENV) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("path of the running executable");
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join(CLIENT_BIN))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no {CLIENT_BIN} next to {}: `cargo build -p homeward-tests --bins`, or set {CLIENT_BIN_ENV}",
                exe.display()
            )
        })
}

/// How the client downloads the stream.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// How long to download, seconds.
    pub seconds: f64,
    /// Numbers the guest sends per tick.
    pub chunk: u32,
    /// Guest's pause between ticks, microseconds. Rate ≈ chunk × ~7 bytes
    /// per tick (numbers up to ~10^6).
    pub delay_us: u32,
    /// Give up on connecting after this long, ms.
    pub connect_timeout_ms: u64,
    /// Give up when nothing arrives for this long, ms.
    pub idle_timeout_ms: u64,
}

impl Default for StreamOptions {
    fn default() -> StreamOptions {
        StreamOptions {
            seconds: 12.0,
            chunk: 500,
            delay_us: 20_000,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
        }
    }
}

/// Starts `hw-vm-client stream` in `ns` against `addr`.
#[track_caller]
pub fn start_stream_in(ns: &Netns, addr: Ipv4Addr, opts: &StreamOptions) -> NsChild {
    let bin = client_bin();
    ns.spawn(&[
        bin.to_string_lossy().into_owned(),
        "stream".into(),
        "--addr".into(),
        format!("{addr}:{HTTP_PORT}"),
        "--path".into(),
        format!("{STREAM_PATH}?chunk={}&delay={}", opts.chunk, opts.delay_us),
        "--seconds".into(),
        opts.seconds.to_string(),
        "--connect-timeout-ms".into(),
        opts.connect_timeout_ms.to_string(),
        "--idle-timeout-ms".into(),
        opts.idle_timeout_ms.to_string(),
    ])
}

/// The client's JSON report (`hw-vm-client stream`).
#[derive(Clone, Debug, Deserialize)]
pub struct StreamReport {
    /// Whether it connected and got an HTTP 200.
    pub connected: bool,
    /// Body bytes received.
    pub bytes: u64,
    /// Whether every byte matched the known sequence.
    pub verified: bool,
    /// Offset of the first wrong byte, if any.
    pub first_mismatch: Option<u64>,
    /// The largest time between two reads that returned data, ms: the
    /// outage the client saw.
    pub max_gap_ms: f64,
    /// Wall-clock (Unix seconds) start and end of that gap, to set against
    /// QEMU's event timestamps.
    pub max_gap_start_unix: f64,
    /// See `max_gap_start_unix`.
    pub max_gap_end_unix: f64,
    /// Wall-clock (Unix seconds) of the last read that returned data (0
    /// from a client that does not report it).
    #[serde(default)]
    pub last_data_unix: f64,
    /// Gaps over 100 ms: `[start_unix, length_ms]`.
    pub long_gaps: Vec<(f64, f64)>,
    /// Whether the connection was reset (RST).
    pub reset: bool,
    /// Whether the server closed the stream before the time was up.
    pub eof: bool,
    /// Whether it gave up because nothing arrived for the idle timeout.
    pub stalled: bool,
    /// Any other error.
    pub error: Option<String>,
    /// Download time, s.
    pub duration_s: f64,
    /// Average rate, bytes/s.
    pub rate_bps: f64,
}

impl StreamReport {
    /// Waits (up to `timeout`) for a started client to finish and parses
    /// its report; panics with its stderr if it does not.
    #[track_caller]
    pub fn wait(child: &mut NsChild, timeout: Duration) -> StreamReport {
        assert!(
            child.wait_timeout(timeout).is_some(),
            "the download client did not finish within {timeout:?}: {}",
            child.stderr()
        );
        let out = child.stdout();
        serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!(
                "bad client report: {e}: {out:?}; stderr: {}",
                child.stderr()
            )
        })
    }

    /// The transfer was complete and correct: connected, no reset, no
    /// stall, not cut short, every byte as expected.
    pub fn is_clean(&self) -> bool {
        self.connected
            && self.verified
            && !self.reset
            && !self.eof
            && !self.stalled
            && self.error.is_none()
            && self.bytes > 0
    }
}
