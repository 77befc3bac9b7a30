//! `homeward agent` on the lab's foreign host, serving one "VM": a network
//! namespace on a veth VM link, its QMP a stand-in (`tests/scapy/fake_qmp.py`)
//! that says the VM runs, so the agent serves and registers it at once.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::decode::{script, PYTHON};
use crate::link::{Iface, Mac, VethEnd};
use crate::{homeward_bin, veth_pair, Netns, NsChild, Topology};

/// Where an agent runs: its hypervisor's namespace and uplink, its care-of
/// address and the home agent it registers with. [`ForeignSite::of`] is
/// the standard lab's foreign host; other labs (e.g. the two-gateway lab,
/// [`crate::ha_lab`]) name their own.
#[derive(Clone, Copy, Debug)]
pub struct ForeignSite<'a> {
    /// The hypervisor's namespace.
    pub ns: &'a Netns,
    /// Its uplink (`--uplink`).
    pub uplink: &'a str,
    /// Its address on the uplink, the care-of address (`--address`).
    pub care_of: Ipv4Addr,
    /// The home agent's address (`--home-agent`).
    pub home_agent: Ipv4Addr,
}

impl<'a> ForeignSite<'a> {
    /// The standard lab's foreign host.
    pub fn of(lab: &'a Topology) -> ForeignSite<'a> {
        ForeignSite {
            ns: &lab.foreign,
            uplink: &lab.foreign_wan.name,
            care_of: lab.care_of,
            home_agent: lab.ha_wan.addr,
        }
    }
}

/// The VM, its link and QMP stand-in, and the agent's command line.
pub struct ForeignAgentLab {
    /// The VM's namespace, with `vm0` on the agent's `vmlink`.
    pub vm: Netns,
    pub vm_if: Iface,
    /// The MAC of the agent's end of the VM link.
    pub vmlink_mac: Mac,
    /// `homeward agent ...` as started (for a restart with the same line).
    pub args: Vec<String>,
    /// The agent's control socket.
    pub socket: PathBuf,
    _qmp: NsChild,
}

impl ForeignAgentLab {
    /// Sets up the VM `vm_addr` (home subnet /24) with `tag`, its QMP
    /// stand-in and an agent config in `dir` using key file `keys` (SPI 256),
    /// plus `extra` agent flags. The agent is not started: see
    /// [`ForeignAgentLab::spawn`].
    #[track_caller]
    pub fn new(
        lab: &Topology,
        tag: &str,
        dir: &Path,
        keys: &Path,
        vm_addr: Ipv4Addr,
        mtu: u32,
        extra: &[&str],
    ) -> ForeignAgentLab {
        Self::build(
            ForeignSite::of(lab),
            tag,
            dir,
            keys,
            vm_addr,
            mtu,
            extra,
            false,
        )
    }

    /// [`ForeignAgentLab::new`] at any site (no [`Topology`] needed).
    #[track_caller]
    pub fn at_site(
        site: ForeignSite<'_>,
        tag: &str,
        dir: &Path,
        keys: &Path,
        vm_addr: Ipv4Addr,
        mtu: u32,
        extra: &[&str],
    ) -> ForeignAgentLab {
        Self::build(site, tag, dir, keys, vm_addr, mtu, extra, false)
    }

    /// [`ForeignAgentLab::new`] with the VM link a tap made with
    /// `vnet_hdr`, as QEMU's: the VM is whatever writes into the tap (the
    /// test, with `tests/scapy/tap_tso.py`), and `vm`'s namespace has no
    /// link.
    #[track_caller]
    pub fn on_tap(
        lab: &Topology,
        tag: &str,
        dir: &Path,
        keys: &Path,
        vm_addr: Ipv4Addr,
        extra: &[&str],
    ) -> ForeignAgentLab {
        Self::build(
            ForeignSite::of(lab),
            tag,
            dir,
            keys,
            vm_addr,
            1500,
            extra,
            true,
        )
    }

    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    fn build(
        site: ForeignSite<'_>,
        tag: &str,
        dir: &Path,
        keys: &Path,
        vm_addr: Ipv4Addr,
        mtu: u32,
        extra: &[&str],
        tap: bool,
    ) -> ForeignAgentLab {
        let vm = Netns::new(&format!("{tag}-vm"));
        vm.disable_ipv6();
        let vmlink_mac = Mac::derive(tag, 0x52);
        let vm_if = Iface {
            name: "vm0".into(),
            mac: Mac::derive(tag, 0x51),
            addr: vm_addr,
            prefix: 24,
        };
        if tap {
            let mac = vmlink_mac.to_string();
            let ns = site.ns;
            ns.ip(&["tuntap", "add", "dev", "vmlink", "mode", "tap", "vnet_hdr"]);
            ns.ip(&["link", "set", "vmlink", "address", &mac, "up"]);
        } else {
            veth_pair(
                &VethEnd::new(&vm, &vm_if.name, vm_if.mac)
                    .addr(vm_if.addr, 24)
                    .mtu(mtu),
                &VethEnd::new(site.ns, "vmlink", vmlink_mac).mtu(mtu),
            );
        }
        let qmp = dir.join("vm.qmp");
        let mut fake_qmp = site.ns.spawn(&[
            PYTHON.to_string(),
            script("fake_qmp.py").to_string_lossy().into_owned(),
            qmp.display().to_string(),
        ]);
        assert!(fake_qmp.wait_for_output("listening", Duration::from_secs(10)));
        let socket = site.ns.dir().join("agent.sock");
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "keys = \"{}\"\nvm_link = \"vmlink\"\nlifetime = 60\nsocket = \"{}\"\n\n\
                 [[vm]]\nname = \"vm\"\nmac = \"{}\"\nhome_address = \"{vm_addr}\"\n\
                 home_prefix_len = 24\nspi = 256\nqmp = \"{}\"\n",
                keys.display(),
                socket.display(),
                vm_if.mac,
                qmp.display()
            ),
        )
        .expect("agent config");
        let mut args = vec![
            homeward_bin().to_string_lossy().into_owned(),
            "agent".into(),
            "--uplink".into(),
            site.uplink.to_string(),
            "--address".into(),
            site.care_of.to_string(),
            "--home-agent".into(),
            site.home_agent.to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        ForeignAgentLab {
            vm,
            vm_if,
            vmlink_mac,
            args,
            socket,
            _qmp: fake_qmp,
        }
    }

    /// Starts the agent in the foreign namespace and waits until it runs.
    #[track_caller]
    pub fn spawn(&self, lab: &Topology) -> NsChild {
        self.spawn_with(lab, &[])
    }

    /// [`ForeignAgentLab::spawn`] with `more` flags (e.g. `--takeover`).
    #[track_caller]
    pub fn spawn_with(&self, lab: &Topology, more: &[&str]) -> NsChild {
        self.spawn_in(&lab.foreign, more)
    }

    /// Starts the agent in `ns` (its site's namespace) with `more` flags
    /// and waits until it runs.
    #[track_caller]
    pub fn spawn_in(&self, ns: &Netns, more: &[&str]) -> NsChild {
        let mut args = self.args.clone();
        args.extend(more.iter().map(|s| s.to_string()));
        let mut agent = ns.spawn(&args);
        assert!(
            agent.wait_for_output("homeward agent is running", Duration::from_secs(20)),
            "agent did not start:\n{}",
            agent.stderr()
        );
        agent
    }
}
