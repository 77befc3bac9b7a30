//! The forwarder on the kernel's steering program and neighbour thread:
//! its workers, the program going live, the handover to a `--takeover`
//! successor and back, shutdown and the stats snapshot.

use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam::channel;

use super::stats::{DataPathStats, NextHopStats, SteeringReport};
use super::Forwarder;
use crate::loader::{LoaderError, Steering};
use crate::lookup::Tables;
use crate::mac::format_mac;
use crate::neigh::NeighHandle;
use crate::pipeline::PipelineConfig;
use crate::workers::{self, Handed, Workers, WorkersConfig, WorkersError};
use crate::xsk::{FrameAccounting, Parked, QueueState, WorkerShared, XskError};

/// How the workers run: kept by the forwarder to start them again.
pub struct Plan {
    /// Port 0: the home agent's LAN, the agent's VM link.
    pub lan: String,
    /// Port 1; `None`: one-armed.
    pub wan: Option<String>,
    pub queues: u32,
    pub pipeline: PipelineConfig,
    /// Queue `i`'s worker runs on `cpus[i % len]`; empty: not pinned.
    pub cpus: Vec<usize>,
    /// Thread name prefix.
    pub name: &'static str,
    /// Preferred busy polling in the workers.
    pub busy_poll: bool,
    /// The lookup tables of one worker.
    pub tables: Box<dyn Fn() -> Tables + Send>,
}

/// Why the data path could not start, go live or be taken back.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("workers: {0}")]
    Workers(#[from] WorkersError),
    #[error("XDP steering: {0}")]
    Steering(#[from] LoaderError),
    #[error("AF_XDP: {0}")]
    Xsk(#[from] XskError),
    /// A predecessor's queues are not the ones this plan serves.
    #[error("--takeover: the running homeward serves other interfaces or queues than {0}: a takeover keeps interfaces and queues; change them with a stop and a start")]
    OfferMismatch(String),
}

impl Plan {
    fn workers_config(&self, slots: usize) -> WorkersConfig<'_> {
        WorkersConfig {
            lan: &self.lan,
            wan: self.wan.as_deref(),
            queues: self.queues,
            slots,
            pipeline: self.pipeline.clone(),
            cpus: &self.cpus,
            name: self.name,
            busy_poll: self.busy_poll,
        }
    }

    fn describe(&self) -> String {
        let wan = self
            .wan
            .as_deref()
            .filter(|w| *w != self.lan)
            .map(|w| format!(" + {w}"))
            .unwrap_or_default();
        format!("{}{wan} with {} queue(s)", self.lan, self.queues)
    }
}

impl Forwarder<Steering, NeighHandle> {
    /// Starts a worker per queue on new sockets, or with `handed` on the
    /// sockets a `--takeover` predecessor handed over (their interfaces
    /// and queues must be the plan's). Bind what must be forwarded first:
    /// adopted rings already hold frames for it.
    pub fn start_workers(
        &mut self,
        plan: Plan,
        handed: Option<Vec<Handed>>,
    ) -> Result<(), ForwarderError> {
        if let Some(h) = &handed {
            let offered: Vec<QueueState> = h.iter().map(|(s, _)| s.clone()).collect();
            if !workers::offer_fits(&plan.workers_config(0), &offered) {
                return Err(ForwarderError::OfferMismatch(plan.describe()));
            }
        }
        let slots = self.table.capacity();
        let rx = self.commands.1.clone();
        let commands = |queue| {
            // Announcements go out once, through queue 0.
            if queue == 0 {
                rx.clone()
            } else {
                channel::never()
            }
        };
        let config = plan.workers_config(slots);
        self.workers = match handed {
            Some(h) => Workers::adopt(config, &self.steering, &plan.tables, commands, h),
            None => Workers::start(config, &self.steering, &plan.tables, commands),
        }?;
        self.plan = Some(plan);
        Ok(())
    }

    /// Attaches the program (replacing one an earlier homeward left under
    /// `pin`), once the maps are filled and the sockets registered.
    pub fn go_live(&mut self, pin: &Path) -> Result<(), ForwarderError> {
        self.steering.go_live(Some(pin))?;
        Ok(())
    }

    /// Waits, at most `within`, for the next hops of the bound care-of
    /// addresses (a successor: the kernel knows them, so at once unless one
    /// went away meanwhile).
    pub fn await_next_hops(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.unresolved_next_hops() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Each queue's counters, accounting and per-binding counts.
    pub fn workers(&self) -> &[std::sync::Arc<WorkerShared>] {
        self.workers.shared()
    }

    /// `--takeover`, predecessor side: stops the workers, keeping their
    /// sockets and free frames.
    pub fn park(&mut self) -> Vec<Parked> {
        self.workers.park()
    }

    /// Stops the workers and returns each queue's state (its free frames),
    /// to hand back to a predecessor after a failed start.
    pub fn park_states(&mut self) -> Vec<QueueState> {
        self.park()
            .iter()
            .map(|p| p.sockets.handover_state())
            .collect()
    }

    /// The successor runs the data path now: leave the program attached
    /// and pinned when this one goes.
    pub fn lend_to_successor(&mut self) {
        self.steering.lend_to_successor();
    }

    /// After a failed takeover: the pins and the program again, and the
    /// workers on their sockets (adopted afresh: the successor may have
    /// moved the rings on) with the free frames it `returned`.
    pub fn take_back(
        &mut self,
        parked: Vec<Parked>,
        returned: &[QueueState],
    ) -> Result<(), ForwarderError> {
        let handed = workers::reclaim(parked, returned)?;
        self.steering.reclaim_from_successor()?;
        let Some(plan) = self.plan.take() else {
            return Err(ForwarderError::Xsk(XskError::Config(
                "no workers were running".into(),
            )));
        };
        self.start_workers(plan, Some(handed))
    }

    /// Unbinds everything, stops the workers and the neighbour thread, and
    /// returns each queue's frame accounting.
    pub fn stop(&mut self) -> Vec<FrameAccounting> {
        self.clear();
        let accounting = self.workers.stop();
        self.neigh.shutdown();
        accounting
    }

    /// The data path's counters and state, summed over queues.
    pub fn stats(&self) -> DataPathStats {
        let (totals, frames) = WorkerShared::snapshot_all(self.workers.shared());
        let steering = match self.steering.counters() {
            Ok(c) => SteeringReport::Counters(c),
            Err(e) => SteeringReport::Unreadable {
                error: e.to_string(),
            },
        };
        DataPathStats {
            xdp_mode: self.steering.mode().to_string(),
            maps_in_sync: self.maps_in_sync_paced(Instant::now()),
            drops: totals.drops().collect(),
            steering,
            next_hops: self
                .neigh
                .snapshot()
                .into_iter()
                .map(|(care_of, e)| NextHopStats {
                    care_of,
                    ifindex: e.map(|e| e.ifindex),
                    mac: e.map(|e| format_mac(e.mac)),
                })
                .collect(),
            frames,
            capture_dropped: totals.capture_dropped,
            totals,
            per_queue: self
                .workers
                .shared()
                .iter()
                .map(|w| w.counters.snapshot())
                .collect(),
        }
    }
}
