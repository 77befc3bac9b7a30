//! The control plane's binding manager: the single writer of the binding
//! table, the XDP maps and the neighbour tracking, which it keeps in step,
//! plus lifetimes and gratuitous ARP announcements.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::loader::Steering;
use dataplane::neigh::NeighHandle;
use dataplane::table::{Binding, TableWriter};
use dataplane::xsk::WorkerShared;

use super::announce::Announcer;
use super::claims::Claims;
use crate::proto::{format_mac, BindingInfo};
use crate::store::{Origin, StoredBinding};

/// The time, read once by the shell and handed in: the monotonic clock for
/// timers, the wall clock for the store's absolute expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub unix_ms: u64,
}

impl Now {
    /// Reads both clocks.
    pub fn read() -> Now {
        Now {
            mono: Instant::now(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// When a binding ends, on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expiry {
    mono: Instant,
    unix_ms: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    care_of: Ipv4Addr,
    vm_mac: Option<[u8; 6]>,
    slot: u32,
    refreshed: Instant,
    expires: Option<Expiry>,
    origin: Origin,
    /// Slot counters when the binding was made: a reused slot starts at zero.
    baseline: (u64, u64),
}

/// Why `bind` refused; the registration handler maps these to reply codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The request itself is not acceptable (addresses, lifetime).
    #[error("{0}")]
    Refused(String),
    /// No room for another binding.
    #[error("cannot bind {0}: binding table full ({1} bindings)")]
    Full(Ipv4Addr, usize),
    /// The table or the XDP map failed.
    #[error("{0}")]
    Failed(String),
}

impl From<BindError> for String {
    fn from(e: BindError) -> String {
        e.to_string()
    }
}

/// Whether `bind` made a new binding or moved/refreshed an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    Created,
    Updated,
}

/// Owns every copy of the bindings and keeps them equal.
pub struct Bindings {
    table: TableWriter,
    steering: Steering,
    neigh: NeighHandle,
    workers: Vec<Arc<WorkerShared>>,
    entries: BTreeMap<Ipv4Addr, Entry>,
    care_of_refs: HashMap<Ipv4Addr, u32>,
    announcer: Announcer,
    ha_addr: Ipv4Addr,
    lan_mac: [u8; 6],
    max_bindings: usize,
    claims: Claims,
}

/// An address that can be neither a VM's home address nor a care-of address.
fn unusable(a: Ipv4Addr) -> bool {
    a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback()
}

impl Bindings {
    pub fn new(
        table: TableWriter,
        steering: Steering,
        neigh: NeighHandle,
        workers: Vec<Arc<WorkerShared>>,
        ha_addr: Ipv4Addr,
        lan_mac: [u8; 6],
        max_bindings: usize,
    ) -> Self {
        Bindings {
            table,
            steering,
            neigh,
            workers,
            entries: BTreeMap::new(),
            care_of_refs: HashMap::new(),
            announcer: Announcer::default(),
            ha_addr,
            lan_mac,
            max_bindings,
            claims: Claims::default(),
        }
    }

    /// The addresses nobody may bind (see [`Claims`]).
    pub fn set_claims(&mut self, claims: Claims) {
        self.claims = claims;
    }

    /// `vm`'s binding as the store keeps it.
    pub fn stored(&self, vm: Ipv4Addr) -> Option<StoredBinding> {
        self.entries.get(&vm).map(|e| StoredBinding {
            vm,
            care_of: e.care_of,
            vm_mac: e.vm_mac,
            expires_unix_ms: e.expires.map(|x| x.unix_ms),
            origin: e.origin,
        })
    }

    /// Binds what the store held, keeping its absolute expiry (a binding
    /// already expired at `now` is refused).
    pub fn restore(&mut self, now: Now, b: &StoredBinding) -> Result<BindOutcome, BindError> {
        let expires = match b.expires_unix_ms {
            None => None,
            Some(t) if t <= now.unix_ms => {
                return Err(BindError::Refused(format!("binding of {} expired", b.vm)))
            }
            Some(t) => Some(Expiry {
                mono: now.mono + Duration::from_millis(t - now.unix_ms),
                unix_ms: t,
            }),
        };
        self.bind_until(now.mono, b.vm, b.care_of, expires, b.vm_mac, b.origin)
    }

    /// Undoes a change the store could not take: puts `vm` back as
    /// `previous` (or removes it, without announcing anything, if it was not
    /// bound).
    pub fn revert(&mut self, now: Now, vm: Ipv4Addr, previous: Option<&StoredBinding>) {
        let result = match previous {
            Some(p) => {
                // Never refused: it was bound a moment ago.
                self.restore(now, p).map(|_| ()).or_else(|_| {
                    self.remove_quietly(vm);
                    Ok(())
                })
            }
            None => {
                self.remove_quietly(vm);
                Ok::<(), BindError>(())
            }
        };
        if let Err(e) = result {
            tracing::error!(%vm, "cannot revert the binding: {e}");
        }
    }

    /// Removes `vm` without handing its address back (a binding that was
    /// never acknowledged).
    fn remove_quietly(&mut self, vm: Ipv4Addr) {
        if let Some(entry) = self.entries.remove(&vm) {
            let _ = self.steering.unbind(vm);
            self.table.remove(vm);
            self.untrack(entry.care_of);
            self.announcer.cancel(vm);
        }
    }

    /// The VM's own MAC, if known (for handing its address back).
    pub fn vm_mac(&self, vm: Ipv4Addr) -> Option<[u8; 6]> {
        self.entries.get(&vm).and_then(|e| e.vm_mac)
    }

    /// The steering program, for its counters and mode.
    pub fn steering(&self) -> &Steering {
        &self.steering
    }

    /// The neighbour thread's handle, for its snapshot.
    pub fn neigh(&self) -> &NeighHandle {
        &self.neigh
    }

    /// Bind `vm` to `care_of`. On any error nothing has changed.
    pub fn bind(
        &mut self,
        now: Now,
        vm: Ipv4Addr,
        care_of: Ipv4Addr,
        lifetime: Option<Duration>,
        vm_mac: Option<[u8; 6]>,
        origin: Origin,
    ) -> Result<BindOutcome, BindError> {
        if lifetime == Some(Duration::ZERO) {
            return Err(BindError::Refused(
                "lifetime must be at least 1 second (unbind removes a binding)".into(),
            ));
        }
        let expires = lifetime.map(|l| Expiry {
            mono: now.mono + l,
            unix_ms: now
                .unix_ms
                .saturating_add(u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
        });
        self.bind_until(now.mono, vm, care_of, expires, vm_mac, origin)
    }

    fn bind_until(
        &mut self,
        now: Instant,
        vm: Ipv4Addr,
        care_of: Ipv4Addr,
        expires: Option<Expiry>,
        vm_mac: Option<[u8; 6]>,
        origin: Origin,
    ) -> Result<BindOutcome, BindError> {
        if unusable(vm) || vm == self.ha_addr {
            return Err(BindError::Refused(format!(
                "{vm} cannot be a VM's home address"
            )));
        }
        if let Some(why) = self.claims.refuse_home(vm) {
            return Err(BindError::Refused(format!(
                "{vm} cannot be a VM's home address: {why}"
            )));
        }
        if unusable(care_of) || care_of == self.ha_addr || care_of == vm {
            return Err(BindError::Refused(format!(
                "{care_of} cannot be a care-of address"
            )));
        }
        if let Some(why) = self.claims.refuse_care_of(care_of) {
            return Err(BindError::Refused(format!(
                "{care_of} cannot be a care-of address: {why}"
            )));
        }
        let previous = self.entries.get(&vm).cloned();
        // The XDP map holds `max_bindings`: refuse here, cleanly, before
        // anything changes.
        if previous.is_none() && self.entries.len() >= self.max_bindings {
            return Err(BindError::Full(vm, self.max_bindings));
        }
        let vm_mac = vm_mac.or(previous.as_ref().and_then(|p| p.vm_mac));
        // Table first, then the XDP map: the worker must know every binding
        // the program steers to it.
        let slot = self
            .table
            .insert(Binding {
                vm,
                care_of,
                vm_mac,
            })
            .map_err(|e| match e {
                dataplane::table::TableError::Full => BindError::Full(vm, self.entries.len()),
                other => BindError::Failed(format!("cannot bind {vm}: {other}")),
            })?;
        if let Err(e) = self.steering.bind(vm, care_of) {
            // Put the table back as it was.
            match &previous {
                Some(p) => {
                    let _ = self.table.insert(Binding {
                        vm,
                        care_of: p.care_of,
                        vm_mac: p.vm_mac,
                    });
                }
                None => {
                    self.table.remove(vm);
                }
            }
            return Err(BindError::Failed(format!("cannot bind {vm}: {e}")));
        }
        self.track(care_of);
        let baseline = match &previous {
            Some(p) => {
                self.untrack(p.care_of);
                p.baseline
            }
            None => self.slot_totals(slot),
        };
        self.entries.insert(
            vm,
            Entry {
                care_of,
                vm_mac,
                slot,
                refreshed: now,
                expires,
                origin,
                baseline,
            },
        );
        if previous.is_some() {
            return Ok(BindOutcome::Updated);
        }
        // Take the address over on the home link.
        self.announcer.schedule(now, vm, self.lan_mac);
        tracing::info!(%vm, %care_of, slot, "bound");
        Ok(BindOutcome::Created)
    }

    /// Remove `vm`'s binding; hand the address back to the VM's own MAC if
    /// known.
    pub fn unbind(&mut self, now: Instant, vm: Ipv4Addr) -> Result<(), String> {
        let Some(entry) = self.entries.get(&vm).cloned() else {
            return Err(format!("no binding for {vm}"));
        };
        // XDP map first: nothing new is steered to a binding about to go.
        self.steering
            .unbind(vm)
            .map_err(|e| format!("cannot unbind {vm}: {e}"))?;
        self.table.remove(vm);
        self.entries.remove(&vm);
        self.untrack(entry.care_of);
        self.announcer.cancel(vm);
        if let Some(mac) = entry.vm_mac {
            self.announcer.schedule(now, vm, mac);
        }
        tracing::info!(%vm, care_of = %entry.care_of, "unbound");
        Ok(())
    }

    /// Remove bindings whose lifetime has run out; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<Ipv4Addr> {
        let expired: Vec<Ipv4Addr> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires.is_some_and(|t| t.mono <= now))
            .map(|(vm, _)| *vm)
            .collect();
        for &vm in &expired {
            tracing::info!(%vm, "binding expired");
            if let Err(e) = self.unbind(now, vm) {
                tracing::warn!(%vm, "cannot expire: {e}");
            }
        }
        expired
    }

    /// Announcements due now, handed to `send`.
    pub fn run_announcements(&mut self, now: Instant, send: impl FnMut(Ipv4Addr, [u8; 6])) {
        self.announcer.run_due(now, send);
    }

    /// The next time something must happen (an announcement or an expiry).
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiry = self
            .entries
            .values()
            .filter_map(|e| e.expires.map(|x| x.mono))
            .min();
        match (expiry, self.announcer.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The bindings with their counters.
    pub fn list(&self, now: Instant) -> Vec<BindingInfo> {
        let egress: HashMap<Ipv4Addr, Option<[u8; 6]>> = self
            .neigh
            .snapshot()
            .into_iter()
            .map(|(a, e)| (a, e.map(|e| e.mac)))
            .collect();
        self.entries
            .iter()
            .map(|(vm, e)| {
                let (packets, bytes) = self.slot_totals(e.slot);
                BindingInfo {
                    vm: *vm,
                    care_of: e.care_of,
                    vm_mac: e.vm_mac.map(format_mac),
                    expires_in: e
                        .expires
                        .map(|t| t.mono.saturating_duration_since(now).as_secs()),
                    age: now.saturating_duration_since(e.refreshed).as_secs(),
                    packets: packets.saturating_sub(e.baseline.0),
                    bytes: bytes.saturating_sub(e.baseline.1),
                    next_hop: egress.get(&e.care_of).copied().flatten().map(format_mac),
                    origin: match e.origin {
                        Origin::Admin => "admin".into(),
                        Origin::Registration { .. } => "registration".into(),
                    },
                    spi: match e.origin {
                        Origin::Admin => None,
                        Origin::Registration { spi } => Some(spi),
                    },
                }
            })
            .collect()
    }

    /// The bindings as the kernel's XDP map holds them, for checking that
    /// maps and table agree.
    pub fn steered(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, String> {
        self.steering.bound().map_err(|e| e.to_string())
    }

    /// Remove every binding (at shutdown), without announcements.
    pub fn clear(&mut self) {
        let vms: Vec<Ipv4Addr> = self.entries.keys().copied().collect();
        for vm in vms {
            let _ = self.steering.unbind(vm);
            self.table.remove(vm);
        }
        self.entries.clear();
    }

    fn slot_totals(&self, slot: u32) -> (u64, u64) {
        self.workers.iter().fold((0, 0), |(p, b), w| {
            let (wp, wb) = w.slot_counts(slot);
            (p + wp, b + wb)
        })
    }

    fn track(&mut self, care_of: Ipv4Addr) {
        let refs = self.care_of_refs.entry(care_of).or_insert(0);
        *refs += 1;
        if *refs == 1 {
            self.neigh.track(care_of);
        }
    }

    fn untrack(&mut self, care_of: Ipv4Addr) {
        if let Some(refs) = self.care_of_refs.get_mut(&care_of) {
            *refs -= 1;
            if *refs == 0 {
                self.care_of_refs.remove(&care_of);
                self.neigh.untrack(care_of);
            }
        }
    }
}
