//! The one owner of a data path, used by both roles: the binding table, the
//! steering program's maps, the next-hop tracking and the workers.
//!
//! A binding change is one transaction across table, maps and next hops:
//! on any error nothing has changed. The forwarder keeps the only reference
//! count of each care-of address (the `care_ofs` map and the neighbour
//! thread hold sets). What a role adds on top (lifetimes, the store,
//! announcements, QMP) lives in the role; the store's part of the
//! transaction is the role's commit after [`Forwarder::bind`], undone with
//! another `bind`/`unbind` if the commit fails.
//!
//! The maps and the next hops are seams ([`SteeringMaps`], [`NextHops`]):
//! the kernel's in the daemons, in memory in unit tests. The workers, the
//! program's attachment and the handover live in [`live`], on the real
//! [`Steering`] and [`NeighHandle`].

mod live;
pub mod memory;
mod stats;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};

use crate::capture::{Capture, CaptureError};
use crate::loader::Steering;
use crate::neigh::NeighHandle;
use crate::table::{Binding, TableError, TableWriter};
use crate::workers::Workers;
use crate::xsk::Command;

pub use live::{ForwarderError, Plan};
pub use stats::{DataPathStats, NextHopStats, SteeringReport};

/// What the forwarder writes into the steering program's maps.
pub trait SteeringMaps {
    /// Steer traffic to `vm` (under `care_of`) into the workers.
    fn bind(&mut self, vm: Ipv4Addr, care_of: Ipv4Addr) -> Result<(), String>;
    /// Stop steering traffic to `vm`; no-op if it was not.
    fn unbind(&mut self, vm: Ipv4Addr) -> Result<(), String>;
    /// Steer IPIP from `care_of` into the workers.
    fn add_care_of(&mut self, care_of: Ipv4Addr) -> Result<(), String>;
    /// Stop steering IPIP from `care_of`; no-op if it was not.
    fn remove_care_of(&mut self, care_of: Ipv4Addr) -> Result<(), String>;
    /// What the maps hold, `(vm, care_of)` sorted, to check them against
    /// the table.
    fn bound(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, String>;
}

impl SteeringMaps for Steering {
    fn bind(&mut self, vm: Ipv4Addr, care_of: Ipv4Addr) -> Result<(), String> {
        Steering::bind(self, vm, care_of).map_err(|e| e.to_string())
    }
    fn unbind(&mut self, vm: Ipv4Addr) -> Result<(), String> {
        Steering::unbind(self, vm).map_err(|e| e.to_string())
    }
    fn add_care_of(&mut self, care_of: Ipv4Addr) -> Result<(), String> {
        Steering::add_care_of(self, care_of).map_err(|e| e.to_string())
    }
    fn remove_care_of(&mut self, care_of: Ipv4Addr) -> Result<(), String> {
        Steering::remove_care_of(self, care_of).map_err(|e| e.to_string())
    }
    fn bound(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, String> {
        Steering::bound(self).map_err(|e| e.to_string())
    }
}

/// Next-hop tracking of the care-of addresses in use: a set, the forwarder
/// counts.
pub trait NextHops {
    fn track(&self, addr: Ipv4Addr);
    fn untrack(&self, addr: Ipv4Addr);
    /// The next hop's MAC per tracked address, if resolved.
    fn macs(&self) -> Vec<(Ipv4Addr, Option<[u8; 6]>)>;
}

impl NextHops for NeighHandle {
    fn track(&self, addr: Ipv4Addr) {
        NeighHandle::track(self, addr)
    }
    fn untrack(&self, addr: Ipv4Addr) {
        NeighHandle::untrack(self, addr)
    }
    fn macs(&self) -> Vec<(Ipv4Addr, Option<[u8; 6]>)> {
        self.snapshot()
            .into_iter()
            .map(|(a, e)| (a, e.map(|e| e.mac)))
            .collect()
    }
}

/// One binding as the data path has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    pub vm: Ipv4Addr,
    pub care_of: Ipv4Addr,
    pub vm_mac: Option<[u8; 6]>,
    /// The table slot its per-binding counters are kept under.
    pub slot: u32,
}

/// Why a binding change was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// No room for another binding.
    #[error("cannot bind {0}: binding table full ({1} bindings)")]
    Full(Ipv4Addr, usize),
    /// The table or a map failed.
    #[error("{0}")]
    Failed(String),
}

/// Whether [`Forwarder::bind`] made a new binding or changed/kept one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    Created,
    Updated,
}

/// How fresh [`Forwarder::stats`] keeps its "steering maps hold exactly the
/// table" answer. The comparison reads every entry of both (0.3 s at a
/// million bindings, in the control loop, on every scrape), and the
/// forwarder's own writes keep them in step (only a failed write or
/// another program can part them): so the last answer stands until
/// [`SYNC_CHECK_SHARE`] times as long as that check took has passed, and
/// any failed write invalidates it.
#[derive(Debug, Clone, Copy, Default)]
struct SyncCheck {
    /// When it was last checked, how long that took, and the answer.
    last: Option<(Instant, Duration, bool)>,
}

/// At most 1 / this of the control loop's time goes to comparing the maps
/// with the table (about once a minute at a million bindings).
const SYNC_CHECK_SHARE: u32 = 100;

impl SyncCheck {
    /// The last answer, if still fresh at `now`.
    fn fresh(&self, now: Instant) -> Option<bool> {
        let (at, took, in_sync) = self.last?;
        (now.saturating_duration_since(at) <= took * SYNC_CHECK_SHARE).then_some(in_sync)
    }
}

/// The data path of one role. See the module docs.
pub struct Forwarder<S = Steering, N = NeighHandle> {
    table: TableWriter,
    steering: S,
    neigh: N,
    workers: Workers,
    /// Slot counters when each binding was made, so that one in a reused
    /// slot starts at zero. Only where they were not zero: a slot never
    /// used needs none (a million provisioned bindings, no entry).
    baselines: HashMap<Ipv4Addr, (u64, u64)>,
    /// Bindings per care-of address: the only count.
    care_of_refs: HashMap<Ipv4Addr, u32>,
    /// Addresses whose next hop is followed without a binding.
    followed: HashSet<Ipv4Addr>,
    max_bindings: usize,
    /// Queue 0's commands (gratuitous ARP), kept to restart its worker.
    commands: (Sender<Command>, Receiver<Command>),
    /// How the workers were started, to start them again after a failed
    /// takeover.
    plan: Option<Plan>,
    /// The last comparison of the steering maps with the table.
    sync_check: Cell<SyncCheck>,
}

impl<S: SteeringMaps, N: NextHops> Forwarder<S, N> {
    /// A forwarder with no binding and no worker yet (see
    /// [`Forwarder::start_workers`]); `max_bindings` is what the maps hold.
    pub fn new(table: TableWriter, steering: S, neigh: N, max_bindings: usize) -> Self {
        Forwarder {
            table,
            steering,
            neigh,
            workers: Workers::default(),
            baselines: HashMap::new(),
            care_of_refs: HashMap::new(),
            followed: HashSet::new(),
            max_bindings,
            commands: channel::unbounded(),
            plan: None,
            sync_check: Cell::default(),
        }
    }

    /// Follows `addr`'s next hop for as long as the forwarder lives, bound
    /// or not (the agent's home agents: the first packet after a migration
    /// does not wait for ARP).
    pub fn follow(&mut self, addr: Ipv4Addr) {
        if self.followed.insert(addr) && !self.care_of_refs.contains_key(&addr) {
            self.neigh.track(addr);
        }
    }

    /// Binds `vm` to `care_of` (a move if it was bound elsewhere). `vm_mac`
    /// `None` keeps the MAC already known. On error nothing has changed.
    ///
    /// Order: the care-of address first (IPIP from it is accepted), then
    /// the table (the workers know the binding), then the map that steers
    /// `vm`'s traffic, then the old care-of address is released: no packet
    /// of the binding reaches the kernel or a worker that does not know it.
    pub fn bind(
        &mut self,
        vm: Ipv4Addr,
        care_of: Ipv4Addr,
        vm_mac: Option<[u8; 6]>,
    ) -> Result<BindOutcome, ForwardError> {
        let previous = self.table.get(vm).map(|(b, _)| b);
        let vm_mac = vm_mac.or(previous.and_then(|p| p.vm_mac));
        let binding = Binding {
            vm,
            care_of,
            vm_mac,
        };
        if previous == Some(binding) {
            return Ok(BindOutcome::Updated);
        }
        // The maps hold `max_bindings`: refuse here, before anything changes.
        if previous.is_none() && self.table.len() >= self.max_bindings {
            return Err(ForwardError::Full(vm, self.max_bindings));
        }
        let moved = previous.is_none_or(|p| p.care_of != care_of);
        if moved {
            self.acquire(care_of)
                .map_err(|e| ForwardError::Failed(format!("cannot bind {vm}: {e}")))?;
        }
        let undo_care_of = |f: &mut Self| {
            if moved {
                f.release(care_of);
            }
        };
        let slot = match self.table.insert(binding) {
            Ok(slot) => slot,
            Err(e) => {
                undo_care_of(self);
                return Err(match e {
                    TableError::Full => ForwardError::Full(vm, self.table.len()),
                    other => ForwardError::Failed(format!("cannot bind {vm}: {other}")),
                });
            }
        };
        if let Err(e) = self.steering.bind(vm, care_of) {
            self.sync_check.take();
            match previous {
                Some(p) => {
                    // Same key, room was there a moment ago.
                    let _ = self.table.insert(p);
                }
                None => {
                    self.table.remove(vm);
                }
            }
            undo_care_of(self);
            return Err(ForwardError::Failed(format!("cannot bind {vm}: {e}")));
        }
        match previous {
            Some(p) => {
                if moved {
                    self.release(p.care_of);
                }
                Ok(BindOutcome::Updated)
            }
            None => {
                let baseline = self.slot_totals(slot);
                if baseline != (0, 0) {
                    self.baselines.insert(vm, baseline);
                }
                Ok(BindOutcome::Created)
            }
        }
    }

    /// Holds `vm`'s traffic in the workers (a switchover: the VM stopped at
    /// its source, its destination has not registered yet): a binding
    /// without a care-of address, so the XDP program steers the VM's
    /// traffic and proxy ARP answers for it, but nothing is tunnelled. The
    /// next [`Forwarder::bind`] releases what was held into the tunnel,
    /// [`Forwarder::unbind`] onto the home link.
    pub fn hold(
        &mut self,
        vm: Ipv4Addr,
        vm_mac: Option<[u8; 6]>,
    ) -> Result<BindOutcome, ForwardError> {
        self.bind(vm, Ipv4Addr::UNSPECIFIED, vm_mac)
    }

    /// Removes `vm`'s binding: its traffic goes to the kernel again.
    /// Returns what it was (`None`: not bound). On error nothing changed.
    pub fn unbind(&mut self, vm: Ipv4Addr) -> Result<Option<Forwarded>, ForwardError> {
        let Some(f) = self.get(vm) else {
            return Ok(None);
        };
        // The map first: nothing new is steered to a binding about to go.
        self.steering.unbind(vm).map_err(|e| {
            self.sync_check.take();
            ForwardError::Failed(format!("cannot unbind {vm}: {e}"))
        })?;
        self.table.remove(vm);
        self.baselines.remove(&vm);
        self.release(f.care_of);
        Ok(Some(f))
    }

    /// Removes every binding (at shutdown); errors are logged.
    pub fn clear(&mut self) {
        for f in self.list() {
            if let Err(e) = self.unbind(f.vm) {
                tracing::warn!(vm = %f.vm, "{e}");
            }
        }
    }

    /// `vm`'s binding.
    pub fn get(&self, vm: Ipv4Addr) -> Option<Forwarded> {
        self.table.get(vm).map(|(b, slot)| Forwarded {
            vm,
            care_of: b.care_of,
            vm_mac: b.vm_mac,
            slot,
        })
    }

    /// Every binding, sorted by VM address.
    pub fn list(&self) -> Vec<Forwarded> {
        let mut all: Vec<Forwarded> = self
            .table
            .iter()
            .map(|(b, slot)| Forwarded {
                vm: b.vm,
                care_of: b.care_of,
                vm_mac: b.vm_mac,
                slot,
            })
            .collect();
        all.sort_unstable_by_key(|f| f.vm);
        all
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Packets and bytes forwarded under `vm`'s binding since it was made.
    pub fn counts(&self, vm: Ipv4Addr) -> (u64, u64) {
        let Some(f) = self.get(vm) else {
            return (0, 0);
        };
        let (p, b) = self.slot_totals(f.slot);
        let (p0, b0) = self.baselines.get(&vm).copied().unwrap_or_default();
        (p.saturating_sub(p0), b.saturating_sub(b0))
    }

    /// Records the next packet forwarded under `vm`'s binding as its first
    /// (a binding made or moved: the migration telemetry).
    pub fn arm_first_packet(&self, vm: Ipv4Addr) {
        if let Some(f) = self.get(vm) {
            for w in self.workers.shared() {
                w.arm_first_packet(f.slot);
            }
        }
    }

    /// Each worker's loop turns so far, by queue (see [`Forwarder::stuck_queues`]).
    pub fn worker_turns(&self) -> Vec<u64> {
        self.workers.shared().iter().map(|w| w.turns()).collect()
    }

    /// The queues whose worker has not turned its loop within `within` (an
    /// idle worker turns every 10 ms): stuck or gone. Waits at most
    /// `within`, less when every worker turned sooner.
    pub fn stuck_queues(&self, within: std::time::Duration) -> Vec<usize> {
        let before = self.worker_turns();
        let deadline = Instant::now() + within;
        loop {
            let stuck: Vec<usize> = self
                .worker_turns()
                .iter()
                .zip(&before)
                .enumerate()
                .filter(|(_, (now, then))| now == then)
                .map(|(q, _)| q)
                .collect();
            if stuck.is_empty() || Instant::now() >= deadline {
                return stuck;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// When the first packet since [`Forwarder::arm_first_packet`] was
    /// forwarded under `vm`'s binding, on any queue.
    pub fn first_packet(&self, vm: Ipv4Addr) -> Option<Instant> {
        let f = self.get(vm)?;
        self.workers
            .shared()
            .iter()
            .filter_map(|w| w.first_packet(f.slot))
            .min()
    }

    /// The next hops' MACs by address (unresolved: `None`).
    pub fn next_hops(&self) -> HashMap<Ipv4Addr, Option<[u8; 6]>> {
        self.neigh.macs().into_iter().collect()
    }

    /// Followed or bound addresses whose next hop is not resolved yet.
    pub fn unresolved_next_hops(&self) -> usize {
        self.neigh
            .macs()
            .iter()
            .filter(|(_, m)| m.is_none())
            .count()
    }

    /// Whether the steering maps hold exactly the table's bindings.
    pub fn maps_in_sync(&self) -> Result<bool, String> {
        let steered = self.steering.bound()?;
        let table: Vec<(Ipv4Addr, Ipv4Addr)> =
            self.list().iter().map(|f| (f.vm, f.care_of)).collect();
        Ok(steered == table)
    }

    /// [`Forwarder::maps_in_sync`] (false if the maps cannot be read), the
    /// last answer while it is fresh at `now` (see [`SyncCheck`]).
    pub fn maps_in_sync_paced(&self, now: Instant) -> bool {
        if let Some(in_sync) = self.sync_check.get().fresh(now) {
            return in_sync;
        }
        let in_sync = self.maps_in_sync().unwrap_or(false);
        let took = now.elapsed();
        self.sync_check.set(SyncCheck {
            last: Some((now, took, in_sync)),
        });
        in_sync
    }

    /// Starts capturing what the workers handle (`homeward capture`): see
    /// [`crate::capture`]. One capture at a time; it stops when the
    /// returned [`Capture`] is dropped.
    pub fn capture(
        &self,
        filter: Option<Ipv4Addr>,
        records: usize,
    ) -> Result<Capture, CaptureError> {
        Capture::start(self.workers.shared(), filter, records)
    }

    /// The interfaces of ports LAN and WAN (`None`: one-armed), once the
    /// workers run.
    pub fn interfaces(&self) -> Option<(String, Option<String>)> {
        self.plan
            .as_ref()
            .map(|p| (p.lan.clone(), p.wan.clone().filter(|w| *w != p.lan)))
    }

    /// Sends a gratuitous ARP on port 0 (queue 0's worker): `addr` is at
    /// `mac`.
    pub fn announce(&self, addr: Ipv4Addr, mac: [u8; 6]) {
        let _ = self.commands.0.send(Command::Announce { addr, mac });
        // Queue 0's worker takes the commands; wake it if it sleeps.
        if let Some(w) = self.workers.shared().first() {
            w.wake();
        }
    }

    /// Reference counts per care-of address, for checks.
    pub fn care_of_refs(&self) -> Vec<(Ipv4Addr, u32)> {
        let mut refs: Vec<(Ipv4Addr, u32)> =
            self.care_of_refs.iter().map(|(a, n)| (*a, *n)).collect();
        refs.sort();
        refs
    }

    pub fn steering(&self) -> &S {
        &self.steering
    }

    pub fn steering_mut(&mut self) -> &mut S {
        &mut self.steering
    }

    pub fn neigh(&self) -> &N {
        &self.neigh
    }

    fn acquire(&mut self, care_of: Ipv4Addr) -> Result<(), String> {
        if care_of.is_unspecified() {
            // A hold: no tunnel, so nothing to follow or accept IPIP from.
            return Ok(());
        }
        let refs = self.care_of_refs.get(&care_of).copied().unwrap_or(0);
        if refs == 0 {
            self.steering.add_care_of(care_of)?;
            if !self.followed.contains(&care_of) {
                self.neigh.track(care_of);
            }
        }
        self.care_of_refs.insert(care_of, refs + 1);
        Ok(())
    }

    fn release(&mut self, care_of: Ipv4Addr) {
        match self.care_of_refs.get(&care_of).copied() {
            Some(n) if n > 1 => {
                self.care_of_refs.insert(care_of, n - 1);
            }
            Some(_) => {
                self.care_of_refs.remove(&care_of);
                // A stale entry only lets IPIP from an address nobody is
                // bound to reach a worker, which drops it (no binding).
                if let Err(e) = self.steering.remove_care_of(care_of) {
                    tracing::warn!(%care_of, "care-of address left in the steering map: {e}");
                }
                if !self.followed.contains(&care_of) {
                    self.neigh.untrack(care_of);
                }
            }
            None => {}
        }
    }

    fn slot_totals(&self, slot: u32) -> (u64, u64) {
        self.workers.shared().iter().fold((0, 0), |(p, b), w| {
            let (wp, wb) = w.slot_counts(slot);
            (p + wp, b + wb)
        })
    }
}
