//! The home agent's binding manager: what a binding is to the home agent
//! (lifetime, origin, the addresses nobody may claim, gratuitous ARP
//! announcements) on top of the data path's one owner, the
//! [`Forwarder`], which keeps table, maps and next hops in step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::num::{NonZeroU32, NonZeroU64};
use std::time::{Duration, Instant};

use dataplane::forwarder::{ForwardError, Forwarder, NextHops, SteeringMaps};
use dataplane::loader::Steering;
use dataplane::neigh::NeighHandle;

pub use dataplane::forwarder::BindOutcome;

use super::announce::Announcer;
use crate::common::claims::Claims;
use crate::common::memory;
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

/// A monotonic time as signed nanoseconds from the manager's [`Epoch`]:
/// 8 bytes where an `Instant` takes 16, in each of up to a million
/// entries, and exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Mono(i64);

/// The `Instant` the manager's [`Mono`] times count from.
#[derive(Debug, Clone, Copy)]
struct Epoch(Instant);

impl Epoch {
    fn mono(self, t: Instant) -> Mono {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        match t.checked_duration_since(self.0) {
            Some(after) => Mono(nanos(after)),
            None => Mono(-nanos(self.0.duration_since(t))),
        }
    }

    fn instant(self, m: Mono) -> Instant {
        let d = Duration::from_nanos(m.0.unsigned_abs());
        if m.0 >= 0 {
            self.0 + d
        } else {
            self.0 - d
        }
    }
}

/// When a binding ends, on both clocks. The wall clock's is never 0 (1970).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expiry {
    mono: Mono,
    unix_ms: NonZeroU64,
}

/// What the home agent adds to a forwarded binding: 40 bytes (the
/// binding itself is the forwarder's).
#[derive(Debug, Clone)]
struct Entry {
    refreshed: Mono,
    expires: Option<Expiry>,
    origin: Origin,
    /// From the change's arrival to the first packet forwarded under it,
    /// for the last change that saw one, in microseconds (at most
    /// [`FIRST_PACKET_WATCH`]).
    first_packet_us: Option<NonZeroU32>,
}

impl Entry {
    fn first_packet(&self) -> Option<Duration> {
        self.first_packet_us
            .map(|us| Duration::from_micros(u64::from(us.get()) - 1))
    }

    fn set_first_packet(&mut self, d: Duration) {
        let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX - 1);
        self.first_packet_us = NonZeroU32::new(us.saturating_add(1));
    }
}

/// A switchover in progress: the VM's traffic is held by the workers until
/// its destination registers (or deregisters, if that is home). If neither
/// comes by `until`, it goes back to what it was: `previous`, or unbound.
#[derive(Debug, Clone)]
struct Switchover {
    previous: Option<(Ipv4Addr, Entry)>,
    until: Instant,
}

/// How long a new or moved binding's first packet is waited for.
const FIRST_PACKET_WATCH: Duration = Duration::from_secs(60);
/// How often the pending first packets are looked for.
const FIRST_PACKET_POLL: Duration = Duration::from_millis(100);

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

impl From<ForwardError> for BindError {
    fn from(e: ForwardError) -> BindError {
        match e {
            ForwardError::Full(vm, n) => BindError::Full(vm, n),
            ForwardError::Failed(why) => BindError::Failed(why),
        }
    }
}

/// How many bindings there are: all, those whose care-of address's next
/// hop is not resolved, those holding their VM's traffic for a switchover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BindingStates {
    pub total: usize,
    pub awaiting_next_hop: usize,
    pub holding: usize,
}

/// The home agent's bindings; the forwarder holds their data path.
pub struct Bindings<S = Steering, N = NeighHandle> {
    forwarder: Forwarder<S, N>,
    entries: BTreeMap<Ipv4Addr, Entry>,
    /// The entries' expiries, soonest first: the control loop looks at the
    /// next one each turn, not at a million entries.
    expiries: BTreeSet<(Mono, Ipv4Addr)>,
    /// What the entries' times count from.
    epoch: Epoch,
    announcer: Announcer,
    ha_addr: Ipv4Addr,
    lan_mac: [u8; 6],
    claims: Claims,
    /// New or moved bindings whose first packet is awaited, with when the
    /// change arrived.
    watches: HashMap<Ipv4Addr, Instant>,
    next_poll: Instant,
    /// VMs in switchover.
    holds: HashMap<Ipv4Addr, Switchover>,
    /// Whether this gateway speaks for the VMs on the home link (sends
    /// gratuitous ARP): the only one, or the active one of a pair.
    active: bool,
    /// A bind file is being applied (`durable::bind_many`) or the store
    /// restored at start: provisioning, not migrations, so no first-packet
    /// timing, no log line per VM (a million of each would hold the control
    /// loop for seconds) and the announcements paced.
    bulk: bool,
    /// Entries when the bulk change began.
    bulk_from: usize,
}

/// A bulk change that added at least this many entries (and a quarter of
/// them all) rebuilds the maps with full nodes (see [`Bindings::compact`]).
const COMPACT_AFTER: usize = 4096;

/// Whether a bulk change that added `added` of `len` entries leaves enough
/// half-full nodes to rebuild the maps (see [`Bindings::compact`]): a small
/// bind file into a large table is not worth a pass over all of it.
fn worth_compacting(added: usize, len: usize) -> bool {
    added >= COMPACT_AFTER.max(len / 4)
}

/// An address that can be neither a VM's home address nor a care-of address.
fn unusable(a: Ipv4Addr) -> bool {
    a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback()
}

impl<S: SteeringMaps, N: NextHops> Bindings<S, N> {
    pub fn new(forwarder: Forwarder<S, N>, ha_addr: Ipv4Addr, lan_mac: [u8; 6]) -> Self {
        Bindings {
            forwarder,
            entries: BTreeMap::new(),
            expiries: BTreeSet::new(),
            epoch: Epoch(Instant::now()),
            announcer: Announcer::default(),
            ha_addr,
            lan_mac,
            claims: Claims::default(),
            holds: HashMap::new(),
            watches: HashMap::new(),
            next_poll: Instant::now(),
            active: true,
            bulk: false,
            bulk_from: 0,
        }
    }

    /// The active gateway of a pair announces every bound VM (the LAN's
    /// switches learn its port, hosts that cached another MAC learn this
    /// one), paced (see [`Announcer`]); the standby announces nothing.
    /// Returns how many VMs are announced.
    pub fn set_active(&mut self, now: Instant, active: bool) -> usize {
        self.active = active;
        if !active {
            self.announcer.clear();
            return 0;
        }
        let vms: Vec<Ipv4Addr> = self.entries.keys().copied().collect();
        for &vm in &vms {
            self.announcer.schedule_paced(now, vm, self.lan_mac);
        }
        vms.len()
    }

    /// Whether this gateway announces (see [`Bindings::set_active`]).
    #[cfg(test)]
    pub fn active(&self) -> bool {
        self.active
    }

    /// Schedules gratuitous ARP for `vm` at `mac`, if this gateway speaks
    /// for the VMs: at once, or paced while many are bound at once (a bind
    /// file, the restore at start).
    fn announce(&mut self, now: Instant, vm: Ipv4Addr, mac: [u8; 6]) {
        match (self.active, self.bulk) {
            (false, _) => {}
            (true, false) => self.announcer.schedule(now, vm, mac),
            (true, true) => self.announcer.schedule_paced(now, vm, mac),
        }
    }

    /// VMs a second whose announcements start when many are announced at
    /// once (see [`Announcer`]).
    pub fn set_announce_rate(&mut self, rate: u32) {
        self.announcer = Announcer::with_rate(rate);
    }

    /// VMs whose announcements wait their turn.
    pub fn announcements_waiting(&self) -> usize {
        self.announcer.waiting()
    }

    /// Marks a bind file being applied (see the `bulk` field).
    pub fn set_bulk(&mut self, bulk: bool) {
        if bulk && !self.bulk {
            self.bulk_from = self.entries.len();
        }
        let added = self.entries.len().saturating_sub(self.bulk_from);
        if !bulk && self.bulk && worth_compacting(added, self.entries.len()) {
            self.compact();
        }
        self.bulk = bulk;
    }

    /// Rebuilds the entry and expiry maps with full nodes. A bulk change
    /// inserts in address order, which leaves a B-tree's nodes about half
    /// full: about 80 B per entry at a million, where a tree built from the
    /// sorted entries at once takes 45. One pass over the entries.
    fn compact(&mut self) {
        self.entries = std::mem::take(&mut self.entries).into_iter().collect();
        self.expiries = std::mem::take(&mut self.expiries).into_iter().collect();
        memory::give_back_freed();
    }

    /// The addresses nobody may bind (see [`Claims`]).
    pub fn set_claims(&mut self, claims: Claims) {
        self.claims = claims;
    }

    /// The data path.
    pub fn forwarder(&self) -> &Forwarder<S, N> {
        &self.forwarder
    }

    pub fn forwarder_mut(&mut self) -> &mut Forwarder<S, N> {
        &mut self.forwarder
    }

    /// `vm`'s binding as the store keeps it. A switchover is not stored
    /// (it lasts seconds, and a restart ends it): during one, the binding
    /// from before it.
    pub fn stored(&self, vm: Ipv4Addr) -> Option<StoredBinding> {
        let f = self.forwarder.get(vm)?;
        let (care_of, e) = match self.holds.get(&vm) {
            Some(h) => {
                let (care_of, e) = h.previous.as_ref()?;
                (*care_of, e)
            }
            None => (f.care_of, self.entries.get(&vm)?),
        };
        Some(StoredBinding {
            vm,
            care_of,
            vm_mac: f.vm_mac,
            expires_unix_ms: e.expires.map(|x| x.unix_ms.get()),
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
                mono: self
                    .epoch
                    .mono(now.mono + Duration::from_millis(t - now.unix_ms)),
                // Later than `now`: not 0.
                unix_ms: NonZeroU64::new(t).unwrap_or(NonZeroU64::MIN),
            }),
        };
        self.bind_until(now.mono, b.vm, b.care_of, expires, b.vm_mac, b.origin)
    }

    /// Undoes a change the store could not take: puts `vm` back as
    /// `previous` (or removes it, without announcing anything, if it was not
    /// bound).
    pub fn revert(&mut self, now: Now, vm: Ipv4Addr, previous: Option<&StoredBinding>) {
        // Never refused: it was bound a moment ago.
        let restored = previous.is_some_and(|p| self.restore(now, p).is_ok());
        if !restored {
            self.remove_quietly(vm);
        }
    }

    /// Removes `vm` without handing its address back (a binding that was
    /// never acknowledged).
    fn remove_quietly(&mut self, vm: Ipv4Addr) {
        if let Err(e) = self.forwarder.unbind(vm) {
            tracing::error!(%vm, "cannot revert the binding: {e}");
            return;
        }
        self.holds.remove(&vm);
        self.remove_entry(vm);
        self.watches.remove(&vm);
        self.announcer.cancel(vm);
    }

    /// The MAC a pending gratuitous ARP series announces `vm` at (tests).
    #[cfg(test)]
    pub(in crate::daemon) fn announcing(&self, vm: Ipv4Addr) -> Option<[u8; 6]> {
        self.announcer.pending_mac(vm)
    }

    /// The VM's own MAC, if known (for handing its address back).
    pub fn vm_mac(&self, vm: Ipv4Addr) -> Option<[u8; 6]> {
        self.forwarder.get(vm).and_then(|f| f.vm_mac)
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
            mono: self.epoch.mono(now.mono + l),
            // At least 1 s after `now`: never 0.
            unix_ms: NonZeroU64::new(
                now.unix_ms
                    .saturating_add(u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
            )
            .unwrap_or(NonZeroU64::MAX),
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
        self.check_home(vm)?;
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
        let before = self.forwarder.get(vm).map(|f| f.care_of);
        let outcome = self.forwarder.bind(vm, care_of, vm_mac)?;
        if self.holds.remove(&vm).is_some() {
            tracing::info!(%vm, %care_of, "switchover done: held traffic released into the tunnel");
        }
        let first_packet_us = self.entries.get(&vm).and_then(|e| e.first_packet_us);
        self.put_entry(
            vm,
            Entry {
                refreshed: self.epoch.mono(now),
                expires,
                origin,
                first_packet_us,
            },
        );
        if before != Some(care_of) && !self.bulk {
            // Made or moved: time its first packet (a refresh is not a
            // migration).
            self.forwarder.arm_first_packet(vm);
            self.watches.insert(vm, now);
        }
        if outcome == BindOutcome::Created {
            // Take the address over on the home link.
            self.announce(now, vm, self.lan_mac);
            if self.bulk {
                tracing::debug!(%vm, %care_of, "bound");
            } else {
                tracing::info!(%vm, %care_of, "bound");
            }
        }
        Ok(outcome)
    }

    /// Records `vm`'s entry, and its expiry in the index.
    fn put_entry(&mut self, vm: Ipv4Addr, entry: Entry) {
        let expires = entry.expires;
        if let Some(x) = self.entries.insert(vm, entry).and_then(|old| old.expires) {
            self.expiries.remove(&(x.mono, vm));
        }
        if let Some(x) = expires {
            self.expiries.insert((x.mono, vm));
        }
    }

    /// Forgets `vm`'s entry and its expiry.
    fn remove_entry(&mut self, vm: Ipv4Addr) {
        if let Some(x) = self.entries.remove(&vm).and_then(|e| e.expires) {
            self.expiries.remove(&(x.mono, vm));
        }
    }

    /// Refuses an address that can be no VM's home address.
    fn check_home(&self, vm: Ipv4Addr) -> Result<(), BindError> {
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
        Ok(())
    }

    /// Remove `vm`'s binding; hand the address back to the VM's own MAC if
    /// known.
    pub fn unbind(&mut self, now: Instant, vm: Ipv4Addr) -> Result<(), String> {
        self.unbind_to(now, vm, None)
    }

    /// [`Bindings::unbind`], handing the address back to `vm_mac` when
    /// given (a deregistration that names the VM's MAC), else to the
    /// binding's own.
    pub fn unbind_to(
        &mut self,
        now: Instant,
        vm: Ipv4Addr,
        vm_mac: Option<[u8; 6]>,
    ) -> Result<(), String> {
        let Some(f) = self.forwarder.unbind(vm).map_err(|e| e.to_string())? else {
            return Err(format!("no binding for {vm}"));
        };
        if self.holds.remove(&vm).is_some() {
            tracing::info!(%vm, "switchover done: home again, held traffic delivered there");
        }
        self.remove_entry(vm);
        self.watches.remove(&vm);
        self.announcer.cancel(vm);
        if let Some(mac) = vm_mac.or(f.vm_mac) {
            self.announce(now, vm, mac);
        }
        tracing::info!(%vm, care_of = %f.care_of, "unbound");
        Ok(())
    }

    /// Switchover (the VM stopped at its source for the last step of a
    /// migration): the workers hold `vm`'s traffic until the next bind
    /// (released into the tunnel) or unbind (onto the home link), for at
    /// most `lifetime`; then it goes back to what it was. Taking the
    /// address over on the home link if it was not bound. On any error
    /// nothing has changed.
    pub fn hold(
        &mut self,
        now: Now,
        vm: Ipv4Addr,
        lifetime: Duration,
        vm_mac: Option<[u8; 6]>,
        origin: Origin,
    ) -> Result<(), BindError> {
        self.check_home(vm)?;
        // A second switchover before the first ended keeps the first's
        // notion of what was before.
        let previous = match self.holds.get(&vm) {
            Some(h) => h.previous.clone(),
            None => self
                .forwarder
                .get(vm)
                .zip(self.entries.get(&vm).cloned())
                .map(|(f, e)| (f.care_of, e)),
        };
        let outcome = self.forwarder.hold(vm, vm_mac)?;
        let until = now.mono + lifetime;
        let first_packet_us = self.entries.get(&vm).and_then(|e| e.first_packet_us);
        self.put_entry(
            vm,
            Entry {
                refreshed: self.epoch.mono(now.mono),
                expires: None,
                origin,
                first_packet_us,
            },
        );
        if outcome == BindOutcome::Created {
            // It was at home: take the address over now, so what the LAN
            // sends it is held too.
            self.announce(now.mono, vm, self.lan_mac);
        }
        tracing::info!(%vm, ms = lifetime.as_millis() as u64, "switchover: holding the VM's traffic");
        self.holds.insert(vm, Switchover { previous, until });
        Ok(())
    }

    /// Whether `vm`'s traffic is held for a switchover.
    pub fn holding(&self, vm: Ipv4Addr) -> bool {
        self.holds.contains_key(&vm)
    }

    /// Switchovers that ran out: back to the binding from before (if it
    /// has not expired meanwhile), else unbound with the address handed
    /// back. Returns the VMs left unbound that the store may still hold.
    fn lapse_holds(&mut self, now: Instant) -> Vec<Ipv4Addr> {
        let lapsed: Vec<Ipv4Addr> = self
            .holds
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(vm, _)| *vm)
            .collect();
        let mut unbound = Vec::new();
        let now_mono = self.epoch.mono(now);
        for vm in lapsed {
            let Some(h) = self.holds.remove(&vm) else {
                continue;
            };
            let back = h
                .previous
                .filter(|(_, e)| e.expires.is_none_or(|x| x.mono > now_mono));
            match back {
                Some((care_of, e)) => {
                    tracing::warn!(%vm, %care_of, "switchover lapsed (no registration from the destination): back to the binding from before");
                    if let Err(err) = self.bind_until(now, vm, care_of, e.expires, None, e.origin) {
                        tracing::error!(%vm, "cannot go back after a switchover: {err}");
                    }
                }
                None => {
                    tracing::warn!(%vm, "switchover lapsed (no registration from the destination): address handed back");
                    if let Err(err) = self.unbind(now, vm) {
                        tracing::error!(%vm, "cannot end a switchover: {err}");
                    }
                    unbound.push(vm);
                }
            }
        }
        unbound
    }

    /// Remove bindings whose lifetime has run out, and end switchovers
    /// that did; returns the VMs no longer bound.
    pub fn expire(&mut self, now: Instant) -> Vec<Ipv4Addr> {
        let mut gone = self.lapse_holds(now);
        let now_mono = self.epoch.mono(now);
        let expired: Vec<Ipv4Addr> = self
            .expiries
            .iter()
            .take_while(|(t, _)| *t <= now_mono)
            .map(|(_, vm)| *vm)
            .collect();
        for &vm in &expired {
            tracing::info!(%vm, "binding expired");
            if let Err(e) = self.unbind(now, vm) {
                tracing::warn!(%vm, "cannot expire: {e}");
            }
        }
        gone.extend(expired);
        gone
    }

    /// When the change to `vm` arrived, if earlier than its handling (a
    /// registration's datagram waited in the queue).
    pub fn set_arrival(&mut self, vm: Ipv4Addr, arrived: Instant) {
        if let Some(t) = self.watches.get_mut(&vm) {
            *t = arrived.min(*t);
        }
    }

    /// The new or moved bindings that forwarded their first packet since
    /// the last call: from the change's arrival to that packet, each.
    /// At most every [`FIRST_PACKET_POLL`]: the workers stamp the packet's
    /// time, so polling late only delays the report, and a burst of
    /// registrations does not rescan every pending watch.
    pub fn first_packets(&mut self, now: Instant) -> Vec<(Ipv4Addr, Duration)> {
        if self.watches.is_empty() || now < self.next_poll {
            return Vec::new();
        }
        self.next_poll = now + FIRST_PACKET_POLL;
        let mut seen = Vec::new();
        let forwarder = &self.forwarder;
        self.watches
            .retain(|vm, arrived| match forwarder.first_packet(*vm) {
                Some(t) => {
                    seen.push((*vm, t.saturating_duration_since(*arrived)));
                    false
                }
                None => now.saturating_duration_since(*arrived) < FIRST_PACKET_WATCH,
            });
        for (vm, d) in &seen {
            if let Some(e) = self.entries.get_mut(vm) {
                e.set_first_packet(*d);
            }
            tracing::info!(%vm, ms = d.as_secs_f64() * 1e3, "first packet forwarded under the new binding");
        }
        seen
    }

    /// Sends the gratuitous ARPs due now (through queue 0's worker).
    pub fn run_announcements(&mut self, now: Instant) {
        let forwarder = &self.forwarder;
        let shrunk = self
            .announcer
            .run_due(now, |addr, mac| forwarder.announce(addr, mac));
        if shrunk {
            // The series of a bulk change are over: what they and the
            // change took is free now.
            memory::give_back_freed();
        }
    }

    /// The next time something must happen (an announcement or an expiry).
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiry = self
            .expiries
            .first()
            .map(|(t, _)| self.epoch.instant(*t))
            .into_iter()
            .chain(self.holds.values().map(|h| h.until))
            .min();
        match (expiry, self.announcer.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The bindings with their counters.
    pub fn list(&self, now: Instant) -> Vec<BindingInfo> {
        self.list_first(now, usize::MAX)
    }

    /// The first `limit` bindings by address, with their counters: a
    /// metrics scrape or `stats` at a million bindings lists a few, not all.
    pub fn list_first(&self, now: Instant, limit: usize) -> Vec<BindingInfo> {
        self.list_after(now, None, limit)
    }

    /// The first `limit` bindings by address after `after` (from the first
    /// with `None`): a `list` of a million is taken a part at a time.
    pub fn list_after(
        &self,
        now: Instant,
        after: Option<Ipv4Addr>,
        limit: usize,
    ) -> Vec<BindingInfo> {
        use std::ops::Bound::{Excluded, Unbounded};
        let egress = self.forwarder.next_hops();
        let from = after.map_or(Unbounded, Excluded);
        self.entries
            .range((from, Unbounded))
            .filter_map(|(&vm, e)| {
                let f = self.forwarder.get(vm)?;
                let (packets, bytes) = self.forwarder.counts(vm);
                Some(BindingInfo {
                    vm,
                    care_of: f.care_of,
                    vm_mac: f.vm_mac.map(format_mac),
                    expires_in: e.expires.map(|t| {
                        self.epoch
                            .instant(t.mono)
                            .saturating_duration_since(now)
                            .as_secs()
                    }),
                    age: now
                        .saturating_duration_since(self.epoch.instant(e.refreshed))
                        .as_secs(),
                    packets,
                    bytes,
                    next_hop: egress.get(&f.care_of).copied().flatten().map(format_mac),
                    origin: match e.origin {
                        Origin::Admin => "admin".into(),
                        Origin::Registration { .. } => "registration".into(),
                    },
                    spi: match e.origin {
                        Origin::Admin => None,
                        Origin::Registration { spi } => Some(spi),
                    },
                    first_packet_ms: e.first_packet().map(|d| d.as_secs_f64() * 1e3),
                })
            })
            .take(limit)
            .collect()
    }

    /// How many bindings there are.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// How many bindings there are, by state, without listing them.
    pub fn states(&self) -> BindingStates {
        let egress = self.forwarder.next_hops();
        let awaiting_next_hop = self
            .forwarder
            .care_of_refs()
            .iter()
            .filter(|(care_of, _)| !matches!(egress.get(care_of), Some(Some(_))))
            .map(|&(_, n)| n as usize)
            .sum();
        BindingStates {
            total: self.entries.len(),
            awaiting_next_hop,
            holding: self.holds.len(),
        }
    }

    /// Remove every binding (at shutdown), without announcements.
    pub fn clear(&mut self) {
        self.forwarder.clear();
        self.entries.clear();
        self.expiries.clear();
        self.watches.clear();
        self.holds.clear();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    use dataplane::forwarder::memory::{MemoryHops, MemoryMaps};
    use dataplane::table::{binding_table, TableReader};

    const HA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const VM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
    const COA1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    const COA2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

    #[test]
    fn entry_times_are_exact_on_both_sides_of_the_epoch_in_40_bytes() {
        let base = Instant::now();
        let epoch = Epoch(base + Duration::from_secs(10));
        for t in [
            base,
            base + Duration::from_nanos(10_000_000_001),
            base + Duration::from_secs(10),
            base + Duration::from_secs(86_400 * 365),
        ] {
            assert_eq!(epoch.instant(epoch.mono(t)), t);
        }
        assert!(epoch.mono(base) < epoch.mono(base + Duration::from_nanos(1)));
        assert_eq!(std::mem::size_of::<Entry>(), 40);

        let mut e = Entry {
            refreshed: epoch.mono(base),
            expires: None,
            origin: Origin::Admin,
            first_packet_us: None,
        };
        assert_eq!(e.first_packet(), None);
        for d in [
            Duration::ZERO,
            Duration::from_micros(1_234),
            FIRST_PACKET_WATCH,
        ] {
            e.set_first_packet(d);
            assert_eq!(e.first_packet(), Some(d));
        }
    }

    /// A binding manager on in-memory maps: HA 198.51.100.1, LAN
    /// 192.0.2.1/24, room for 4 bindings.
    pub(in crate::daemon) fn bindings() -> (Bindings<MemoryMaps, MemoryHops>, TableReader, Now) {
        let (table, reader) = binding_table(16);
        let forwarder = Forwarder::new(table, MemoryMaps::default(), MemoryHops::default(), 4);
        let mut b = Bindings::new(forwarder, HA, [2, 0, 0, 0, 0, 1]);
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
        b: &Bindings<MemoryMaps, MemoryHops>,
        reader: &TableReader,
        want: &[(Ipv4Addr, Ipv4Addr)],
    ) {
        let f = b.forwarder();
        assert_eq!(f.steering().bound().unwrap(), want);
        assert_eq!(f.maps_in_sync(), Ok(true));
        for (vm, care_of) in want {
            assert_eq!(reader.lookup(*vm).map(|(x, _)| x.care_of), Some(*care_of));
        }
        let mut care_ofs: Vec<Ipv4Addr> = want.iter().map(|(_, c)| *c).collect();
        care_ofs.sort();
        care_ofs.dedup();
        // One track per care-of in use, whatever the number of bindings.
        assert_eq!(f.neigh().tracked(), care_ofs);
        assert!(f.neigh().balanced());
        assert_eq!(b.entries.len(), want.len());
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

    /// A standby binds (replicated bindings) without a word on the home
    /// link; becoming active announces every bound VM at once; back on
    /// standby the pending announcements stop.
    #[test]
    fn only_the_active_gateway_announces_and_it_announces_everything() {
        let (mut b, _reader, now) = bindings();
        assert!(b.active(), "a single gateway is active");
        assert_eq!(b.set_active(now.mono, false), 0);
        let vm2 = Ipv4Addr::new(192, 0, 2, 51);
        b.bind(now, VM, COA1, None, None, Origin::Admin).unwrap();
        b.bind(now, vm2, COA2, None, None, Origin::Admin).unwrap();
        assert_eq!(b.announcing(VM), None);
        assert_eq!(b.next_deadline(), None);
        b.unbind(now.mono, vm2).unwrap();
        b.bind(now, vm2, COA2, None, None, Origin::Admin).unwrap();
        assert_eq!(b.announcing(vm2), None);

        let later = now.mono + Duration::from_secs(3);
        assert_eq!(b.set_active(later, true), 2);
        assert_eq!(b.announcing(VM), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(b.announcing(vm2), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(b.next_deadline(), Some(later));

        assert_eq!(b.set_active(later, false), 0);
        assert_eq!(b.announcing(VM), None);
        assert_eq!(b.next_deadline(), None);
    }

    /// A switchover holds, then ends by a move, a deregistration or a
    /// lapse; the store never sees it.
    #[test]
    fn a_switchover_holds_then_moves_comes_home_or_lapses() {
        let (mut b, reader, now) = bindings();
        let (d, hold) = (Duration::from_secs(60), Duration::from_secs(5));
        let reg = Origin::Registration { spi: 256 };
        // Foreign -> foreign: bound at COA1, held, then bound at COA2.
        b.bind(now, VM, COA1, Some(d), None, reg).unwrap();
        b.hold(now, VM, hold, None, reg).unwrap();
        assert!(b.holding(VM));
        let held = reader.lookup(VM).map(|(x, _)| x.care_of);
        assert_eq!(held, Some(Ipv4Addr::UNSPECIFIED), "the workers hold");
        assert!(b.forwarder().neigh().tracked().is_empty(), "no tunnel");
        assert_eq!(b.stored(VM).map(|s| s.care_of), Some(COA1), "the store's");
        b.bind(now, VM, COA2, Some(d), None, reg).unwrap();
        assert!(!b.holding(VM));
        assert_consistent(&b, &reader, &[(VM, COA2)]);

        // Home -> foreign -> home: held from nothing (the address taken
        // over at once), then the deregistration from home ends it.
        let vm2 = Ipv4Addr::new(192, 0, 2, 51);
        let vm2_mac = [0x52, 0x54, 0, 0, 0, 0x51];
        b.hold(now, vm2, hold, Some(vm2_mac), reg).unwrap();
        assert_eq!(b.announcing(vm2), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(b.stored(vm2), None, "nothing to store");
        b.unbind_to(now.mono, vm2, None).unwrap();
        assert!(!b.holding(vm2));
        assert_eq!(b.announcing(vm2), Some(vm2_mac), "handed back");

        // Lapses: back to COA2 with its lifetime; from nothing, unbound.
        b.hold(now, VM, hold, None, reg).unwrap();
        b.hold(now, vm2, hold, Some(vm2_mac), reg).unwrap();
        assert!(b.expire(now.mono + hold / 2).is_empty());
        assert_eq!(b.expire(now.mono + hold), vec![vm2]);
        assert_consistent(&b, &reader, &[(VM, COA2)]);
        let s = b.stored(VM).unwrap();
        assert_eq!(s.expires_unix_ms, Some(now.unix_ms + 60_000));
        assert!(!b.holding(VM) && !b.holding(vm2));
        // A refused home address changes nothing.
        assert!(matches!(
            b.hold(now, HA, hold, None, reg),
            Err(BindError::Refused(_))
        ));
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
        b.forwarder_mut().steering_mut().fail_next = true;
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
    fn only_a_large_bulk_change_rebuilds_the_maps() {
        assert!(worth_compacting(1_000_000, 1_000_000));
        assert!(worth_compacting(250_000, 1_000_000));
        assert!(!worth_compacting(249_999, 1_000_000));
        assert!(!worth_compacting(COMPACT_AFTER - 1, COMPACT_AFTER - 1));
        assert!(worth_compacting(COMPACT_AFTER, COMPACT_AFTER));
    }

    #[test]
    fn a_bulk_restore_compacted_keeps_every_entry_and_expiry() {
        // Enough for a compaction: every second VM expires, a VM a ms.
        let n = (COMPACT_AFTER + 1000) as u32;
        let (table, _reader) = binding_table(2 * n as usize);
        let forwarder = Forwarder::new(
            table,
            MemoryMaps::default(),
            MemoryHops::default(),
            n as usize,
        );
        let mut b = Bindings::new(forwarder, HA, [2, 0, 0, 0, 0, 1]);
        let now = Now {
            mono: Instant::now(),
            unix_ms: 1_800_000_000_000,
        };
        let stored: Vec<StoredBinding> = (0..n)
            .map(|i| StoredBinding {
                vm: Ipv4Addr::from(0x0a00_0000 + i),
                care_of: COA1,
                vm_mac: None,
                expires_unix_ms: (i % 2 == 0).then_some(now.unix_ms + 1_000 + u64::from(i)),
                origin: Origin::Admin,
            })
            .collect();
        b.set_bulk(true);
        for s in &stored {
            b.restore(now, s).unwrap();
        }
        b.set_bulk(false);
        for s in &stored {
            assert_eq!(b.stored(s.vm).as_ref(), Some(s));
        }
        assert_eq!(b.list(now.mono).len(), n as usize);
        // The expiries, soonest first, still in the expiry map.
        let expired = b.expire(now.mono + Duration::from_millis(1_000 + 10));
        let want: Vec<Ipv4Addr> = (0..=10)
            .filter(|i| i % 2 == 0)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i))
            .collect();
        assert_eq!(expired, want);
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
        // An expiry of 0 (1970, from a damaged store) is long past, not none.
        let epoch = StoredBinding {
            expires_unix_ms: Some(0),
            ..dead.clone()
        };
        assert!(b.restore(now, &epoch).is_err());
        assert_consistent(&b, &reader, &[(VM, COA1)]);
        // It expires 5 s later on the monotonic clock.
        assert!(b.expire(now.mono + Duration::from_millis(4_999)).is_empty());
        assert_eq!(b.expire(now.mono + Duration::from_secs(5)), vec![VM]);
        assert_consistent(&b, &reader, &[]);
    }

    /// The expiry index follows every change: a refresh moves the expiry,
    /// an unbind or a lifetime-less bind drops it, and what expires is
    /// exactly what ran out, soonest first.
    #[test]
    fn expiries_follow_refreshes_unbinds_and_run_out_in_order() {
        let (mut b, reader, now) = bindings();
        let reg = Origin::Registration { spi: 256 };
        let (vm2, vm3) = (Ipv4Addr::new(192, 0, 2, 51), Ipv4Addr::new(192, 0, 2, 52));
        let s = Duration::from_secs;
        b.bind(now, VM, COA1, Some(s(60)), None, reg).unwrap();
        b.bind(now, vm2, COA1, Some(s(20)), None, reg).unwrap();
        b.bind(now, vm3, COA2, Some(s(40)), None, reg).unwrap();
        assert_eq!(
            b.next_deadline().map(|d| d - now.mono),
            Some(s(0)),
            "announcements first"
        );
        b.run_announcements(now.mono);
        b.run_announcements(now.mono + s(1));
        let deadline =
            |b: &Bindings<MemoryMaps, MemoryHops>| b.next_deadline().map(|d| d - now.mono);
        assert_eq!(deadline(&b), Some(s(20)));
        // Refreshed for longer: its old expiry is gone from the index.
        b.bind(now, vm2, COA1, Some(s(90)), None, reg).unwrap();
        assert_eq!(deadline(&b), Some(s(40)));
        // Rebound for good, then unbound: neither leaves an expiry.
        b.bind(now, vm3, COA2, None, None, Origin::Admin).unwrap();
        assert_eq!(deadline(&b), Some(s(60)));
        b.unbind(now.mono, VM).unwrap();
        b.run_announcements(now.mono + s(2));
        assert_eq!(deadline(&b), Some(s(90)));
        assert!(b.expire(now.mono + s(89)).is_empty());
        assert_eq!(b.expire(now.mono + s(90)), vec![vm2]);
        assert_eq!(b.expiries.len(), 0);
        assert_consistent(&b, &reader, &[(vm3, COA2)]);
        assert_eq!(b.next_deadline(), None);
    }

    /// States counted without a listing, and a listing cut short, agree
    /// with the full listing.
    #[test]
    fn states_and_a_short_listing_agree_with_the_full_one() {
        let (mut b, _reader, now) = bindings();
        let reg = Origin::Registration { spi: 256 };
        let vms: Vec<Ipv4Addr> = (60..64).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
        b.bind(now, vms[0], COA1, None, None, reg).unwrap();
        b.bind(now, vms[1], COA2, None, None, reg).unwrap();
        b.bind(now, vms[2], COA2, None, None, reg).unwrap();
        b.hold(now, vms[3], Duration::from_secs(5), None, reg)
            .unwrap();
        let neigh = b.forwarder().neigh();
        neigh.resolved.borrow_mut().insert(COA1, [2, 0, 0, 0, 0, 9]);
        let states = b.states();
        assert_eq!(
            states,
            BindingStates {
                total: 4,
                awaiting_next_hop: 2,
                holding: 1
            }
        );
        let all = b.list(now.mono);
        assert_eq!(all.len(), states.total);
        let unspecified = all.iter().filter(|i| i.care_of.is_unspecified()).count();
        assert_eq!(unspecified, states.holding);
        let first = b.list_first(now.mono, 2);
        assert_eq!(first, all[..2]);
        assert_eq!(first.iter().map(|i| i.vm).collect::<Vec<_>>(), vms[..2]);
        // In parts: each after the last of the one before, all once.
        let rest = b.list_after(now.mono, Some(first[1].vm), 1);
        assert_eq!(rest, all[2..3]);
        assert_eq!(b.list_after(now.mono, Some(rest[0].vm), 5), all[3..]);
        assert!(b.list_after(now.mono, Some(all[3].vm), 5).is_empty());
    }
}
