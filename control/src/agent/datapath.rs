//! The foreign agent's data path: the same AF_XDP workers and pipeline as
//! the home agent, in the foreign-agent role (see
//! `dataplane::pipeline::Role::ForeignAgent` and bpf/steer.c).
//!
//! Port 0 ("LAN") is the VM link (the VMs' tap or bridge), port 1 ("WAN")
//! the uplink. A served VM is a binding `VM -> its home agent` with the
//! VM's MAC: tunnelled traffic from that home agent to the VM is unwrapped
//! and delivered to the MAC, the VM's own traffic is tunnelled back to the
//! home agent (RFC 3024), and the VM's ARP requests for its home-subnet
//! neighbours are answered with the VM link's MAC.

use std::net::Ipv4Addr;
use std::time::Duration;

use dataplane::forwarder::{DataPathStats, Forwarder, Plan};
use dataplane::loader::Steering;
use dataplane::lookup::Tables;
use dataplane::neigh;
use dataplane::pipeline::{PipelineConfig, Role};
use dataplane::table::binding_table;
use dataplane::workers::Handed;
use dataplane::xsk::{FrameAccounting, Parked, QueueState};
use serde::Serialize;

use crate::common::handover::{ServedVm, Successor};
use crate::common::link;
use crate::error::Error;
use crate::proto::format_mac;

/// VMs one agent can serve at once.
const MAX_SERVED: u32 = 1024;

/// What the data path needs to start.
#[derive(Debug, Clone)]
pub struct DataPathConfig {
    /// The interface toward the home agents.
    pub uplink: String,
    /// The tap or bridge the served VMs sit on.
    pub vm_link: String,
    /// This hypervisor's address on the uplink: the care-of address.
    pub address: Ipv4Addr,
    /// Home agents whose next hops are followed from the start, so that the
    /// first packet after a migration does not wait for ARP.
    pub home_agents: Vec<Ipv4Addr>,
    /// AF_XDP queues (a tap has one).
    pub queues: u32,
    /// Largest outer IPv4 datagram on the reverse tunnel.
    pub tunnel_mtu: u16,
    /// Clamp the MSS of TCP SYNs crossing the tunnel.
    pub mss_clamp: bool,
    /// Where the XDP program is pinned, so a restart after a crash
    /// recognises and replaces the one this agent left.
    pub pin_dir: std::path::PathBuf,
}

/// The running data path: a served VM is a forwarder binding `VM -> its
/// home agent` with the VM's MAC. Dropping it without [`DataPath::stop`]
/// still detaches the program (the loader does) but does not join the
/// workers.
pub struct DataPath {
    forwarder: Forwarder,
    config: DataPathConfig,
    /// Keeps a bridge VM link promiscuous while the agent runs (see
    /// [`bridge_promiscuous`]).
    _promiscuous: Option<std::os::fd::OwnedFd>,
}

/// The `datapath` object of the agent's `stats`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentDataPathStats {
    pub address: Ipv4Addr,
    pub uplink: String,
    pub vm_link: String,
    pub counters: AgentCounters,
    #[serde(flatten)]
    pub data_path: DataPathStats,
    pub served: Vec<ServedStats>,
}

/// The pipeline's counters as the agent names them.
#[derive(Debug, Clone, Serialize)]
pub struct AgentCounters {
    pub tunnelled_to_home_agent: u64,
    pub delivered_to_vm: u64,
    pub arp_replies: u64,
    pub icmp_sent: u64,
    pub fragmented: u64,
    /// Partial checksums (a guest's checksum offload) finished.
    pub checksums_finished: u64,
    /// TSO super-frames cut into segments, and the segments.
    pub segmented: u64,
    pub segments_out: u64,
    /// Super-frames cut smaller than the tunnel carries, to what their
    /// destination asked for or its path takes.
    pub segmented_to_path: u64,
}

/// One served VM with what was forwarded for it.
#[derive(Debug, Clone, Serialize)]
pub struct ServedStats {
    pub vm: Ipv4Addr,
    pub mac: Option<String>,
    pub home_agent: Ipv4Addr,
    pub packets: u64,
    pub bytes: u64,
}

/// A VM link that is a bridge must be promiscuous. A moved VM keeps
/// sending to the MACs it learned at home (its clients', its gateway's),
/// which this bridge does not know: it floods such frames to its ports and
/// passes them up to itself, where the agent's XDP program runs, only when
/// promiscuous. On a tap the program sees every frame anyway.
fn bridge_promiscuous(name: &str, ifindex: u32) -> Result<Option<std::os::fd::OwnedFd>, Error> {
    if !std::path::Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .exists()
    {
        return Ok(None);
    }
    let fd = dataplane::xsk::promiscuous(ifindex).map_err(|e| {
        Error::Dataplane(format!(
            "cannot make the VM bridge {name} promiscuous ({e}): the agent would not \
             see a moved VM's frames to home-link MACs; it needs CAP_NET_RAW"
        ))
    })?;
    tracing::info!(
        vm_link = name,
        "the VM link is a bridge: promiscuous while the agent runs, so it sees the \
         frames moved VMs send to home-link MACs"
    );
    Ok(Some(fd))
}

fn dp_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Dataplane(format!("{what}: {e}"))
}

impl DataPath {
    /// Loads the steering program, starts a worker per queue, then attaches
    /// the program to both links. Nothing is served until
    /// [`DataPath::serve`], except, with a `successor` (`--takeover`), the
    /// VMs the predecessor served: their sockets and rings are adopted and
    /// they are served before any worker runs. If that fails, everything is
    /// handed back to the predecessor.
    pub fn start(
        config: DataPathConfig,
        successor: Option<&Successor>,
        adopted: Vec<Handed>,
    ) -> Result<DataPath, Error> {
        let (mut dp, plan) = DataPath::load(config)?;
        let result = dp.go_live(plan, successor, adopted);
        match (result, successor) {
            (Ok(()), _) => Ok(dp),
            (Err(e), Some(s)) => {
                let queues = if dp.forwarder.workers().is_empty() {
                    s.offered().to_vec()
                } else {
                    dp.forwarder.park_states()
                };
                s.fail(&e.to_string(), queues);
                Err(e)
            }
            (Err(e), None) => {
                dp.forwarder.stop();
                Err(e)
            }
        }
    }

    fn load(config: DataPathConfig) -> Result<(DataPath, Plan), Error> {
        let vm_link = link(&config.vm_link)?;
        let uplink = link(&config.uplink)?;
        if vm_link.index == uplink.index {
            return Err(Error::Invalid(format!(
                "the VM link and the uplink must differ (both are {})",
                config.uplink
            )));
        }
        let (table, reader) = binding_table(MAX_SERVED as usize * 2);
        let (neigh, neigh_reader) =
            neigh::spawn(vec![uplink.index], vm_link.index).map_err(|e| dp_err("neighbours", e))?;
        let steering =
            Steering::load_foreign_agent(vm_link.index, uplink.index, config.address, MAX_SERVED)
                .map_err(|e| dp_err("XDP steering", e))?;
        let mut forwarder = Forwarder::new(table, steering, neigh, MAX_SERVED as usize);
        for ha in &config.home_agents {
            forwarder.follow(*ha);
        }
        let mut pipeline = PipelineConfig::new(config.address, vm_link.mac, uplink.mac);
        pipeline.role = Role::ForeignAgent;
        pipeline.tunnel_mtu = config.tunnel_mtu;
        pipeline.mss_clamp = config.mss_clamp;
        let (vm_index, up_index) = (vm_link.index, uplink.index);
        let plan = Plan {
            lan: config.vm_link.clone(),
            wan: Some(config.uplink.clone()),
            queues: config.queues,
            pipeline,
            cpus: Vec::new(),
            name: "homeward-fa-q",
            busy_poll: false,
            tables: Box::new(move || {
                Tables::foreign_agent(reader.clone(), neigh_reader.clone(), vm_index, up_index)
            }),
        };
        let promiscuous = bridge_promiscuous(&config.vm_link, vm_index)?;
        Ok((
            DataPath {
                forwarder,
                config,
                _promiscuous: promiscuous,
            },
            plan,
        ))
    }

    /// Serve what the predecessor served, start the workers (on its
    /// sockets if `adopted`), then attach the program.
    fn go_live(
        &mut self,
        plan: Plan,
        successor: Option<&Successor>,
        adopted: Vec<Handed>,
    ) -> Result<(), Error> {
        if let Some(s) = successor {
            for v in &s.served {
                self.serve(v.vm, v.mac, v.home_agent)
                    .map_err(|e| dp_err("--takeover", e))?;
            }
            // Their home agents' next hops are in the kernel's table.
            self.forwarder.await_next_hops(Duration::from_millis(200));
        }
        self.forwarder
            .start_workers(plan, successor.is_some().then_some(adopted))
            .map_err(|e| Error::Dataplane(e.to_string()))?;
        self.forwarder
            .go_live(&self.config.pin_dir)
            .map_err(|e| Error::Dataplane(e.to_string()))?;
        tracing::info!(
            mode = %self.forwarder.steering().mode(),
            vm_link = %self.config.vm_link,
            uplink = %self.config.uplink,
            "XDP steering attached (foreign agent)"
        );
        Ok(())
    }

    /// `--takeover`, predecessor side: stop the workers, keeping their
    /// sockets and free frames.
    pub fn park(&mut self) -> Vec<Parked> {
        self.forwarder.park()
    }

    /// The forwarder, for `homeward capture`.
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// The VMs served, for the successor.
    pub fn served_vms(&self) -> Vec<ServedVm> {
        self.forwarder
            .list()
            .into_iter()
            .filter_map(|f| {
                Some(ServedVm {
                    vm: f.vm,
                    mac: f.vm_mac?,
                    home_agent: f.care_of,
                })
            })
            .collect()
    }

    /// The successor runs it now: leave the program attached and pinned.
    pub fn lend_to_successor(&mut self) {
        self.forwarder.lend_to_successor();
    }

    /// After a failed takeover: the pins and the program again, and workers
    /// on the sockets with the free frames the successor `returned`.
    pub fn take_back(
        &mut self,
        parked: Vec<Parked>,
        returned: &[QueueState],
    ) -> Result<(), String> {
        self.forwarder
            .take_back(parked, returned)
            .map_err(|e| e.to_string())
    }

    /// Starts serving `vm` (MAC `mac`) for `home_agent`. Idempotent; a new
    /// home agent or MAC replaces the old. On error nothing changed.
    pub fn serve(
        &mut self,
        vm: Ipv4Addr,
        mac: [u8; 6],
        home_agent: Ipv4Addr,
    ) -> Result<(), String> {
        let before = self.forwarder.get(vm);
        self.forwarder
            .bind(vm, home_agent, Some(mac))
            .map_err(|e| format!("cannot serve {vm}: {e}"))?;
        if before.map(|b| (b.care_of, b.vm_mac)) != Some((home_agent, Some(mac))) {
            tracing::info!(%vm, mac = %format_mac(mac), %home_agent, "serving");
        }
        Ok(())
    }

    /// Stops serving `vm`: its traffic goes to the kernel again.
    pub fn unserve(&mut self, vm: Ipv4Addr) -> Result<(), String> {
        let gone = self
            .forwarder
            .unbind(vm)
            .map_err(|e| format!("cannot stop serving {vm}: {e}"))?;
        if gone.is_some() {
            tracing::info!(%vm, "not serving");
        }
        Ok(())
    }

    /// The `datapath` object of the agent's `stats`.
    pub fn stats(&self) -> AgentDataPathStats {
        let data_path = self.forwarder.stats();
        let p = &data_path.totals.pipeline;
        AgentDataPathStats {
            address: self.config.address,
            uplink: self.config.uplink.clone(),
            vm_link: self.config.vm_link.clone(),
            counters: AgentCounters {
                tunnelled_to_home_agent: p.encapsulated,
                delivered_to_vm: p.decapsulated,
                arp_replies: p.arp_replies,
                icmp_sent: p.icmp_sent,
                fragmented: p.fragmented,
                checksums_finished: p.checksums_finished,
                segmented: p.segmented,
                segments_out: p.segments_out,
                segmented_to_path: p.segmented_to_path,
            },
            served: self
                .forwarder
                .list()
                .into_iter()
                .map(|f| {
                    let (packets, bytes) = self.forwarder.counts(f.vm);
                    ServedStats {
                        vm: f.vm,
                        mac: f.vm_mac.map(format_mac),
                        home_agent: f.care_of,
                        packets,
                        bytes,
                    }
                })
                .collect(),
            data_path,
        }
    }

    /// Stops serving everything, stops the workers and returns each queue's
    /// frame accounting.
    pub fn stop(mut self) -> Vec<FrameAccounting> {
        self.forwarder.stop()
    }
}
