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

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crossbeam::channel;
use dataplane::loader::Steering;
use dataplane::lookup::Tables;
use dataplane::neigh::{self, NeighHandle};
use dataplane::pipeline::{PipelineConfig, Role};
use dataplane::table::{binding_table, Binding, TableWriter};
use dataplane::workers::{self, Handed, Workers, WorkersConfig, WorkersError};
use dataplane::xsk::{FrameAccounting, Parked, QueueState, WorkerShared};
use serde_json::{json, Map, Value};

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
    /// Where the XDP program is pinned, so a restart after a crash
    /// recognises and replaces the one this agent left.
    pub pin_dir: std::path::PathBuf,
}

struct Served {
    mac: [u8; 6],
    home_agent: Ipv4Addr,
    slot: u32,
}

/// The running data path. Dropping it without [`DataPath::stop`] still
/// detaches the program (the loader does) but does not join the workers.
pub struct DataPath {
    table: TableWriter,
    slots: usize,
    steering: Steering,
    neigh: NeighHandle,
    workers: Workers,
    served: BTreeMap<Ipv4Addr, Served>,
    config: DataPathConfig,
    pipeline: PipelineConfig,
    tables: Box<dyn Fn() -> Tables + Send>,
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
        let mut dp = DataPath::load(config)?;
        let result = dp.go_live(successor, adopted);
        match (result, successor) {
            (Ok(()), _) => Ok(dp),
            (Err(e), Some(s)) => {
                let queues = if dp.workers.shared().is_empty() {
                    s.offered().to_vec()
                } else {
                    dp.park()
                        .iter()
                        .map(|p| p.sockets.handover_state())
                        .collect()
                };
                s.fail(&e.to_string(), queues);
                Err(e)
            }
            (Err(e), None) => {
                dp.workers.stop();
                Err(e)
            }
        }
    }

    fn load(config: DataPathConfig) -> Result<DataPath, Error> {
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
        for ha in &config.home_agents {
            neigh.track(*ha);
        }
        let steering =
            Steering::load_foreign_agent(vm_link.index, uplink.index, config.address, MAX_SERVED)
                .map_err(|e| dp_err("XDP steering", e))?;
        let mut pipeline = PipelineConfig::new(config.address, vm_link.mac, uplink.mac);
        pipeline.role = Role::ForeignAgent;
        let (vm_index, up_index) = (vm_link.index, uplink.index);
        Ok(DataPath {
            slots: table.capacity(),
            table,
            steering,
            neigh,
            workers: Workers::default(),
            served: BTreeMap::new(),
            config,
            pipeline,
            tables: Box::new(move || {
                Tables::foreign_agent(reader.clone(), neigh_reader.clone(), vm_index, up_index)
            }),
        })
    }

    /// Serve what the predecessor served, start the workers (on its
    /// sockets if `adopted`), then attach the program.
    fn go_live(
        &mut self,
        successor: Option<&Successor>,
        adopted: Vec<Handed>,
    ) -> Result<(), Error> {
        if let Some(s) = successor {
            for v in &s.served {
                self.serve(v.vm, v.mac, v.home_agent)
                    .map_err(|e| dp_err("--takeover", e))?;
            }
            // Their home agents' next hops are in the kernel's table: at
            // once, unless one went away (then bounded).
            let deadline = Instant::now() + Duration::from_millis(200);
            while self.neigh.snapshot().iter().any(|(_, e)| e.is_none())
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            if !workers::offer_fits(&self.workers_config(), s.offered()) {
                return Err(Error::Daemon(format!(
                    "--takeover: the running agent serves other links or queues than {} + {} with {} queue(s): a takeover keeps them; change them with a stop and a start",
                    self.config.vm_link, self.config.uplink, self.config.queues
                )));
            }
        }
        self.workers = if successor.is_some() {
            self.start_workers(adopted)
        } else {
            Workers::start(self.workers_config(), &self.steering, &self.tables, |_| {
                channel::never()
            })
        }
        .map_err(|e| dp_err("workers", e))?;
        let pin = self.config.pin_dir.clone();
        self.steering
            .go_live(Some(&pin))
            .map_err(|e| dp_err("XDP steering", e))?;
        tracing::info!(
            mode = %self.steering.mode(),
            vm_link = %self.config.vm_link,
            uplink = %self.config.uplink,
            "XDP steering attached (foreign agent)"
        );
        Ok(())
    }

    fn workers_config(&self) -> WorkersConfig<'_> {
        WorkersConfig {
            lan: &self.config.vm_link,
            wan: Some(&self.config.uplink),
            queues: self.config.queues,
            slots: self.slots,
            pipeline: self.pipeline.clone(),
            cpus: &[],
            name: "homeward-fa-q",
        }
    }

    /// Workers on handed-over sockets (`adopted`, queue by queue).
    fn start_workers(&self, adopted: Vec<Handed>) -> Result<Workers, WorkersError> {
        Workers::adopt(
            self.workers_config(),
            &self.steering,
            &self.tables,
            |_| channel::never(),
            adopted,
        )
    }

    /// `--takeover`, predecessor side: stop the workers, keeping their
    /// sockets and free frames.
    pub fn park(&mut self) -> Vec<Parked> {
        self.workers.park()
    }

    /// The VMs served, for the successor.
    pub fn served_vms(&self) -> Vec<ServedVm> {
        self.served
            .iter()
            .map(|(&vm, s)| ServedVm {
                vm,
                mac: s.mac,
                home_agent: s.home_agent,
            })
            .collect()
    }

    /// The successor runs it now: leave the program attached and pinned.
    pub fn lend_to_successor(&mut self) {
        self.steering.lend_to_successor();
    }

    /// After a failed takeover: the pins and the program again, and workers
    /// on the sockets (adopted afresh, the successor may have moved their
    /// rings on) with the free frames it `returned`.
    pub fn take_back(
        &mut self,
        parked: Vec<Parked>,
        returned: &[QueueState],
    ) -> Result<(), String> {
        let adopted = workers::reclaim(parked, returned).map_err(|e| e.to_string())?;
        self.steering
            .reclaim_from_successor()
            .map_err(|e| e.to_string())?;
        self.workers = self.start_workers(adopted).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Starts serving `vm` (MAC `mac`) for `home_agent`. Idempotent; a new
    /// home agent or MAC replaces the old. On error nothing changed.
    pub fn serve(
        &mut self,
        vm: Ipv4Addr,
        mac: [u8; 6],
        home_agent: Ipv4Addr,
    ) -> Result<(), String> {
        let previous = self.served.get(&vm).map(|s| (s.mac, s.home_agent));
        if previous == Some((mac, home_agent)) {
            return Ok(());
        }
        // Table first, then the XDP map: the workers must know every VM the
        // program steers to them.
        let slot = self
            .table
            .insert(Binding {
                vm,
                care_of: home_agent,
                vm_mac: Some(mac),
            })
            .map_err(|e| format!("cannot serve {vm}: {e}"))?;
        if let Err(e) = self.steering.bind(vm, home_agent) {
            match previous {
                Some((mac, home_agent)) => {
                    let _ = self.table.insert(Binding {
                        vm,
                        care_of: home_agent,
                        vm_mac: Some(mac),
                    });
                }
                None => {
                    self.table.remove(vm);
                }
            }
            return Err(format!("cannot serve {vm}: {e}"));
        }
        self.neigh.track(home_agent);
        if let Some((_, old)) = previous {
            self.neigh.untrack(old);
        }
        self.served.insert(
            vm,
            Served {
                mac,
                home_agent,
                slot,
            },
        );
        tracing::info!(%vm, mac = %format_mac(mac), %home_agent, "serving");
        Ok(())
    }

    /// Stops serving `vm`: its traffic goes to the kernel again.
    pub fn unserve(&mut self, vm: Ipv4Addr) -> Result<(), String> {
        let Some(s) = self.served.get(&vm) else {
            return Ok(());
        };
        let home_agent = s.home_agent;
        // XDP map first: nothing new is steered for a VM about to go.
        self.steering
            .unbind(vm)
            .map_err(|e| format!("cannot stop serving {vm}: {e}"))?;
        self.table.remove(vm);
        self.neigh.untrack(home_agent);
        self.served.remove(&vm);
        tracing::info!(%vm, "not serving");
        Ok(())
    }

    /// Counters as one JSON document (the `stats` of `homeward agent`).
    pub fn stats(&self) -> Value {
        let (total, frames) = WorkerShared::snapshot_all(self.workers.shared());
        let mut per_slot = vec![(0u64, 0u64); self.table.capacity()];
        for w in self.workers.shared() {
            for s in self.served.values() {
                let (p, b) = w.slot_counts(s.slot);
                if let Some(t) = per_slot.get_mut(s.slot as usize) {
                    t.0 += p;
                    t.1 += b;
                }
            }
        }
        let drops: Map<String, Value> = total.drops().map(|(k, v)| (k.into(), v.into())).collect();
        let steering = match self.steering.counters() {
            Ok(c) => serde_json::to_value(c).unwrap_or(Value::Null),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let served: Vec<Value> = self
            .served
            .iter()
            .map(|(vm, s)| {
                let (packets, bytes) = per_slot.get(s.slot as usize).copied().unwrap_or_default();
                json!({
                    "vm": vm,
                    "mac": format_mac(s.mac),
                    "home_agent": s.home_agent,
                    "packets": packets,
                    "bytes": bytes,
                })
            })
            .collect();
        let p = &total.pipeline;
        json!({
            "xdp_mode": self.steering.mode().to_string(),
            "address": self.config.address,
            "uplink": self.config.uplink,
            "vm_link": self.config.vm_link,
            "counters": {
                "tunnelled_to_home_agent": p.encapsulated,
                "delivered_to_vm": p.decapsulated,
                "arp_replies": p.arp_replies,
                "icmp_sent": p.icmp_sent,
                "fragmented": p.fragmented,
            },
            "drops": drops,
            "steering": steering,
            "served": served,
            "frames": frames,
        })
    }

    /// Stops serving everything, stops the workers and returns each queue's
    /// frame accounting.
    pub fn stop(mut self) -> Vec<FrameAccounting> {
        let vms: Vec<Ipv4Addr> = self.served.keys().copied().collect();
        for vm in vms {
            if let Err(e) = self.unserve(vm) {
                tracing::warn!("{e}");
            }
        }
        let accounting = self.workers.stop();
        self.neigh.shutdown();
        accounting
    }
}
