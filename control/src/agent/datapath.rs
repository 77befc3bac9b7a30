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

use crossbeam::channel;
use dataplane::loader::Steering;
use dataplane::lookup::Tables;
use dataplane::neigh::{self, NeighHandle};
use dataplane::pipeline::{PipelineConfig, Role};
use dataplane::table::{binding_table, Binding, TableWriter};
use dataplane::workers::{Workers, WorkersConfig};
use dataplane::xsk::{FrameAccounting, WorkerShared};
use serde_json::{json, Map, Value};

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
    steering: Steering,
    neigh: NeighHandle,
    workers: Workers,
    served: BTreeMap<Ipv4Addr, Served>,
    config: DataPathConfig,
}

fn dp_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Dataplane(format!("{what}: {e}"))
}

impl DataPath {
    /// Attaches the steering program to both links and starts a worker per
    /// queue. Nothing is served until [`DataPath::serve`].
    pub fn start(config: DataPathConfig) -> Result<DataPath, Error> {
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
        let steering = Steering::attach_foreign_agent(
            vm_link.index,
            uplink.index,
            config.address,
            MAX_SERVED,
            Some(&config.pin_dir),
        )
        .map_err(|e| dp_err("XDP steering", e))?;
        tracing::info!(
            mode = %steering.mode(),
            vm_link = %config.vm_link,
            uplink = %config.uplink,
            "XDP steering attached (foreign agent)"
        );

        let mut pipeline = PipelineConfig::new(config.address, vm_link.mac, uplink.mac);
        pipeline.role = Role::ForeignAgent;
        let workers = Workers::start(
            WorkersConfig {
                lan: &config.vm_link,
                wan: Some(&config.uplink),
                queues: config.queues,
                slots: table.capacity(),
                pipeline,
                cpus: &[],
                name: "homeward-fa-q",
            },
            &steering,
            || {
                Tables::foreign_agent(
                    reader.clone(),
                    neigh_reader.clone(),
                    vm_link.index,
                    uplink.index,
                )
            },
            |_| channel::never(),
        )
        .map_err(|e| dp_err("workers", e))?;
        Ok(DataPath {
            table,
            steering,
            neigh,
            workers,
            served: BTreeMap::new(),
            config,
        })
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
