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
use crate::common::claims::Claims;
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

/// What the binding manager writes into the XDP program's maps: a seam,
/// the kernel's maps in the daemon and a map in memory in unit tests.
pub trait SteeringMaps {
    fn bind(&mut self, vm: Ipv4Addr, care_of: Ipv4Addr) -> Result<(), String>;
    fn unbind(&mut self, vm: Ipv4Addr) -> Result<(), String>;
    /// What the maps hold, to check them against the table.
    fn bound(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, String>;
}

impl SteeringMaps for Steering {
    fn bind(&mut self, vm: Ipv4Addr, care_of: Ipv4Addr) -> Result<(), String> {
        Steering::bind(self, vm, care_of).map_err(|e| e.to_string())
    }
    fn unbind(&mut self, vm: Ipv4Addr) -> Result<(), String> {
        Steering::unbind(self, vm).map_err(|e| e.to_string())
    }
    fn bound(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, String> {
        Steering::bound(self).map_err(|e| e.to_string())
    }
}

/// Next-hop tracking of the care-of addresses in use: a seam like
/// [`SteeringMaps`].
pub trait NextHops {
    fn track(&self, care_of: Ipv4Addr);
    fn untrack(&self, care_of: Ipv4Addr);
    /// The next hop's MAC per tracked address, if resolved.
    fn macs(&self) -> Vec<(Ipv4Addr, Option<[u8; 6]>)>;
}

impl NextHops for NeighHandle {
    fn track(&self, care_of: Ipv4Addr) {
        NeighHandle::track(self, care_of)
    }
    fn untrack(&self, care_of: Ipv4Addr) {
        NeighHandle::untrack(self, care_of)
    }
    fn macs(&self) -> Vec<(Ipv4Addr, Option<[u8; 6]>)> {
        self.snapshot()
            .into_iter()
            .map(|(a, e)| (a, e.map(|e| e.mac)))
            .collect()
    }
}

/// Owns every copy of the bindings and keeps them equal.
pub struct Bindings<S = Steering, N = NeighHandle> {
    table: TableWriter,
    steering: S,
    neigh: N,
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

impl<S: SteeringMaps, N: NextHops> Bindings<S, N> {
    pub fn new(
        table: TableWriter,
        steering: S,
        neigh: N,
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
    pub fn steering(&self) -> &S {
        &self.steering
    }

    /// The neighbour thread's handle, for its snapshot.
    /// The workers' shared state (per-binding counters), after they were
    /// started again.
    pub fn set_workers(&mut self, workers: Vec<Arc<WorkerShared>>) {
        self.workers = workers;
    }

    /// Care-of addresses in use whose next hop is not resolved yet.
    pub fn unresolved_next_hops(&self) -> usize {
        self.neigh
            .macs()
            .iter()
            .filter(|(_, m)| m.is_none())
            .count()
    }

    pub fn steering_mut(&mut self) -> &mut S {
        &mut self.steering
    }

    pub fn neigh(&self) -> &N {
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
        let egress: HashMap<Ipv4Addr, Option<[u8; 6]>> = self.neigh.macs().into_iter().collect();
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
        self.steering.bound()
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::cell::RefCell;

    use dataplane::table::{binding_table, TableReader};

    /// The XDP maps, in memory; `fail_next` makes the next write fail.
    #[derive(Default)]
    pub(in crate::daemon) struct Maps {
        bound: BTreeMap<Ipv4Addr, Ipv4Addr>,
        fail_next: bool,
    }
    impl SteeringMaps for Maps {
        fn bind(&mut self, vm: Ipv4Addr, care_of: Ipv4Addr) -> Result<(), String> {
            if std::mem::take(&mut self.fail_next) {
                return Err("injected map failure".into());
            }
            self.bound.insert(vm, care_of);
            Ok(())
        }
        fn unbind(&mut self, vm: Ipv4Addr) -> Result<(), String> {
            self.bound.remove(&vm);
            Ok(())
        }
        fn bound(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, String> {
            Ok(self.bound.iter().map(|(a, b)| (*a, *b)).collect())
        }
    }

    /// Tracked care-of addresses with their track/untrack balance.
    #[derive(Default)]
    pub(in crate::daemon) struct Hops(RefCell<BTreeMap<Ipv4Addr, i32>>);
    impl NextHops for Hops {
        fn track(&self, a: Ipv4Addr) {
            *self.0.borrow_mut().entry(a).or_default() += 1;
        }
        fn untrack(&self, a: Ipv4Addr) {
            let mut m = self.0.borrow_mut();
            *m.entry(a).or_default() -= 1;
            if m[&a] == 0 {
                m.remove(&a);
            }
        }
        fn macs(&self) -> Vec<(Ipv4Addr, Option<[u8; 6]>)> {
            self.0.borrow().keys().map(|a| (*a, None)).collect()
        }
    }

    const HA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const VM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
    const COA1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    const COA2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

    /// A binding manager on in-memory maps: HA 198.51.100.1, LAN
    /// 192.0.2.1/24, room for 4 bindings.
    pub(in crate::daemon) fn bindings() -> (Bindings<Maps, Hops>, TableReader, Now) {
        let (table, reader) = binding_table(16);
        let mut b = Bindings::new(
            table,
            Maps::default(),
            Hops::default(),
            vec![WorkerShared::new(16)],
            HA,
            [2, 0, 0, 0, 0, 1],
            4,
        );
        b.set_claims(Claims::new(
            vec![HA, Ipv4Addr::new(192, 0, 2, 1)],
            vec![(Ipv4Addr::new(192, 0, 2, 1), 24)],
        ));
        let now = Now {
            mono: Instant::now(),
            unix_ms: 1_800_000_000_000,
        };
        (b, reader, now)
    }

    /// Table, maps and next-hop tracking hold the same bindings.
    #[track_caller]
    fn assert_consistent(
        b: &Bindings<Maps, Hops>,
        reader: &TableReader,
        want: &[(Ipv4Addr, Ipv4Addr)],
    ) {
        let maps = b.steering.bound().unwrap();
        assert_eq!(maps, want);
        for (vm, care_of) in want {
            assert_eq!(reader.lookup(*vm).map(|(x, _)| x.care_of), Some(*care_of));
        }
        let mut refs: BTreeMap<Ipv4Addr, i32> = BTreeMap::new();
        for (_, c) in want {
            *refs.entry(*c).or_default() += 1;
        }
        // One track per care-of in use, whatever the number of bindings.
        let tracked: Vec<Ipv4Addr> = b.neigh.0.borrow().keys().copied().collect();
        assert_eq!(tracked, refs.keys().copied().collect::<Vec<_>>());
        assert!(b.neigh.0.borrow().values().all(|n| *n == 1));
    }

    #[test]
    fn bind_move_unbind_keep_every_copy_equal() {
        let (mut b, reader, now) = bindings();
        let d = Duration::from_secs(60);
        assert_eq!(
            b.bind(
                now,
                VM,
                COA1,
                Some(d),
                None,
                Origin::Registration { spi: 256 }
            ),
            Ok(BindOutcome::Created)
        );
        let vm2 = Ipv4Addr::new(192, 0, 2, 51);
        b.bind(now, vm2, COA1, None, None, Origin::Admin).unwrap();
        assert_consistent(&b, &reader, &[(VM, COA1), (vm2, COA1)]);
        assert_eq!(
            b.bind(now, VM, COA2, Some(d), None, Origin::Admin),
            Ok(BindOutcome::Updated)
        );
        assert_consistent(&b, &reader, &[(VM, COA2), (vm2, COA1)]);
        let s = b.stored(VM).unwrap();
        assert_eq!(s.expires_unix_ms, Some(now.unix_ms + 60_000));
        assert_eq!(s.origin, Origin::Admin);
        b.unbind(now.mono, vm2).unwrap();
        assert_consistent(&b, &reader, &[(VM, COA2)]);
        assert!(reader.lookup(vm2).is_none());
        assert!(b.unbind(now.mono, vm2).is_err());
    }

    #[test]
    fn refusals_change_nothing() {
        let (mut b, reader, now) = bindings();
        for (vm, care_of) in [
            (Ipv4Addr::new(192, 0, 2, 1), COA1), // the HA's LAN address
            (HA, COA1),
            (Ipv4Addr::new(192, 0, 2, 0), COA1),
            (Ipv4Addr::new(192, 0, 2, 255), COA1),
            (VM, HA),
            (VM, Ipv4Addr::new(192, 0, 2, 1)),
            (VM, VM),
            (Ipv4Addr::new(224, 0, 0, 1), COA1),
        ] {
            let e = b
                .bind(now, vm, care_of, None, None, Origin::Admin)
                .unwrap_err();
            assert!(matches!(e, BindError::Refused(_)), "{vm} {care_of}: {e}");
        }
        // The maps refuse: the table is put back.
        b.steering.fail_next = true;
        assert!(matches!(
            b.bind(now, VM, COA1, None, None, Origin::Admin),
            Err(BindError::Failed(_))
        ));
        assert_consistent(&b, &reader, &[]);
        assert!(reader.lookup(VM).is_none());
        // Full: max_bindings is 4.
        for i in 0..4 {
            b.bind(
                now,
                Ipv4Addr::new(192, 0, 2, 60 + i),
                COA1,
                None,
                None,
                Origin::Admin,
            )
            .unwrap();
        }
        assert!(matches!(
            b.bind(now, VM, COA1, None, None, Origin::Admin),
            Err(BindError::Full(..))
        ));
        assert_eq!(b.list(now.mono).len(), 4);
    }

    #[test]
    fn revert_puts_back_what_the_store_did_not_take() {
        let (mut b, reader, now) = bindings();
        // A new binding that was never acknowledged: gone, and no
        // announcement of it goes out.
        b.bind(now, VM, COA1, None, None, Origin::Admin).unwrap();
        b.revert(now, VM, None);
        assert_consistent(&b, &reader, &[]);
        assert_eq!(b.next_deadline(), None);
        // A move: back to the previous care-of, with its absolute expiry.
        b.bind(
            now,
            VM,
            COA1,
            Some(Duration::from_secs(30)),
            None,
            Origin::Registration { spi: 7 },
        )
        .unwrap();
        let before = b.stored(VM);
        b.bind(now, VM, COA2, None, None, Origin::Admin).unwrap();
        b.revert(now, VM, before.as_ref());
        assert_consistent(&b, &reader, &[(VM, COA1)]);
        assert_eq!(b.stored(VM), before);
        // An unbind: bound again.
        b.unbind(now.mono, VM).unwrap();
        b.revert(now, VM, before.as_ref());
        assert_eq!(b.stored(VM), before);
    }

    #[test]
    fn restore_keeps_absolute_expiry_and_skips_the_expired() {
        let (mut b, reader, now) = bindings();
        let alive = StoredBinding {
            vm: VM,
            care_of: COA1,
            vm_mac: Some([2, 0, 0, 0, 0, 0x50]),
            expires_unix_ms: Some(now.unix_ms + 5_000),
            origin: Origin::Registration { spi: 256 },
        };
        b.restore(now, &alive).unwrap();
        assert_eq!(b.stored(VM).as_ref(), Some(&alive));
        let dead = StoredBinding {
            vm: Ipv4Addr::new(192, 0, 2, 51),
            expires_unix_ms: Some(now.unix_ms),
            ..alive.clone()
        };
        assert!(b.restore(now, &dead).is_err());
        assert_consistent(&b, &reader, &[(VM, COA1)]);
        // It expires 5 s later on the monotonic clock.
        assert!(b.expire(now.mono + Duration::from_millis(4_999)).is_empty());
        assert_eq!(b.expire(now.mono + Duration::from_secs(5)), vec![VM]);
        assert_consistent(&b, &reader, &[]);
    }
}
