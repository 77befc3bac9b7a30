//! The neighbour thread: tracked addresses, their next hops, and the maps it
//! publishes them in.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Instant;

use crossbeam::channel::Receiver;
use netlink_packet_route::neighbour::NeighbourState;

use super::rtnl::{Event, Events, NeighInfo, Rtnl};
use super::{
    mac_word, Cmd, Egress, Kind, NeighError, POLL_INTERVAL, PROBE_INTERVAL, STALE_REFRESH,
};
use crate::table::SeqMapWriter;

/// How the thread asks the kernel to resolve a next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveTrigger {
    /// `NTF_USE`; if the kernel refuses it, UDP from then on.
    Auto,
    /// `RTM_NEWNEIGH` with `NTF_USE` only.
    NtfUse,
    /// An empty UDP datagram to the next hop's discard port (9) only.
    Udp,
}

/// Per tracked address.
#[derive(Debug, Default)]
struct Entry {
    /// `(oif, next-hop address)` of the current route, if usable.
    nexthop: Option<(u32, Ipv4Addr)>,
    /// What the map holds for it.
    published: Option<Egress>,
    /// Last known state of the next hop's neighbour entry.
    state: Option<NeighbourState>,
    /// Last time the kernel was asked to resolve or refresh it.
    last_poke: Option<Instant>,
}

type Key = (Kind, Ipv4Addr);

pub(crate) struct Worker {
    rtnl: Rtnl,
    events: Events,
    ifindexes: Vec<u32>,
    lan_ifindex: u32,
    entries: HashMap<Key, Entry>,
    /// `(oif, next hop)` -> the tracked addresses resolved through it.
    by_nexthop: HashMap<(u32, Ipv4Addr), HashSet<Key>>,
    care_of: SeqMapWriter<2>,
    lan: SeqMapWriter<1>,
    trigger: ResolveTrigger,
    udp: Option<UdpSocket>,
    resync: bool,
    event_error_logged: bool,
    /// Home-link addresses followed on a worker's miss, and whether the
    /// limit on them was logged.
    auto_tracked: usize,
    auto_track_full_logged: bool,
}

impl Worker {
    pub fn new(
        ifindexes: Vec<u32>,
        lan_ifindex: u32,
        care_of: SeqMapWriter<2>,
        lan: SeqMapWriter<1>,
        trigger: ResolveTrigger,
    ) -> Result<Self, NeighError> {
        Ok(Worker {
            // Subscribe first, so that nothing between the first lookups and
            // the subscription is missed.
            events: Events::new()?,
            rtnl: Rtnl::new()?,
            ifindexes,
            lan_ifindex,
            entries: HashMap::new(),
            by_nexthop: HashMap::new(),
            care_of,
            lan,
            trigger,
            udp: None,
            resync: false,
            event_error_logged: false,
            auto_tracked: 0,
            auto_track_full_logged: false,
        })
    }

    pub fn run(mut self, rx: Receiver<Cmd>, mut lan_misses: Receiver<Ipv4Addr>) {
        tracing::debug!(ifindexes = ?self.ifindexes, lan = self.lan_ifindex, "neighbour thread started");
        let mut next_probe = Instant::now() + PROBE_INTERVAL;
        loop {
            // A worker's miss wakes the thread at once: a frame is waiting
            // in its neighbour queue for the answer.
            let first = crossbeam::channel::select! {
                recv(rx) -> cmd => match cmd {
                    Ok(cmd) => Some(cmd),
                    Err(_) => break,
                },
                recv(lan_misses) -> addr => {
                    match addr {
                        Ok(addr) => self.auto_track_lan(addr),
                        // Every reader is gone: stop selecting on it, or
                        // this would spin.
                        Err(_) => lan_misses = crossbeam::channel::never(),
                    }
                    None
                },
                default(POLL_INTERVAL) => None,
            };
            let mut stop = false;
            for cmd in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                match cmd {
                    Cmd::Track(kind, addr) => self.track(kind, addr),
                    Cmd::Untrack(kind, addr) => self.untrack(kind, addr),
                    Cmd::Shutdown => {
                        stop = true;
                        break;
                    }
                }
            }
            if stop {
                break;
            }
            for addr in lan_misses.try_iter() {
                self.auto_track_lan(addr);
            }
            self.pump_events();
            if std::mem::take(&mut self.resync) {
                self.evaluate_all();
            }
            let now = Instant::now();
            if now >= next_probe {
                next_probe = now + PROBE_INTERVAL;
                self.periodic(now);
            }
        }
        tracing::debug!("neighbour thread stopped");
    }

    fn allowed(&self, kind: Kind, oif: u32) -> bool {
        match kind {
            Kind::CareOf => self.ifindexes.contains(&oif),
            Kind::Lan => oif == self.lan_ifindex,
        }
    }

    fn track(&mut self, kind: Kind, addr: Ipv4Addr) {
        if addr.is_unspecified() || addr.is_broadcast() {
            tracing::warn!(%addr, ?kind, "address cannot be tracked");
            return;
        }
        if self.entries.contains_key(&(kind, addr)) {
            return;
        }
        tracing::debug!(%addr, ?kind, "tracking");
        self.entries.insert((kind, addr), Entry::default());
        self.evaluate((kind, addr));
    }

    /// A home-link address a worker missed: follow it from now on, within
    /// [`crate::neigh::LAN_AUTO_TRACKED`].
    fn auto_track_lan(&mut self, addr: Ipv4Addr) {
        if self.entries.contains_key(&(Kind::Lan, addr)) {
            return;
        }
        if self.auto_tracked >= crate::neigh::LAN_AUTO_TRACKED {
            if !std::mem::replace(&mut self.auto_track_full_logged, true) {
                tracing::warn!(%addr, "too many home-link neighbours followed; not following more");
            }
            return;
        }
        self.auto_tracked += 1;
        self.track(Kind::Lan, addr);
    }

    fn untrack(&mut self, kind: Kind, addr: Ipv4Addr) {
        let key = (kind, addr);
        if !self.entries.contains_key(&key) {
            return;
        }
        tracing::debug!(%addr, ?kind, "untracking");
        self.set_nexthop(key, None);
        self.publish(key, None);
        self.entries.remove(&key);
    }

    fn pump_events(&mut self) {
        let mut neigh = Vec::new();
        let mut resync = false;
        let res = self.events.drain(|ev| match ev {
            Event::Neigh { info, deleted } => neigh.push((info, deleted)),
            Event::Route | Event::Link | Event::Overrun => resync = true,
        });
        if let Err(e) = res {
            // Keep going on the periodic re-evaluation; say it once.
            if !std::mem::replace(&mut self.event_error_logged, true) {
                tracing::warn!(error = %e, "neighbour notifications failing");
            }
            resync = true;
        }
        for (info, deleted) in neigh {
            let Some(keys) = self.by_nexthop.get(&(info.ifindex, info.dst)) else {
                continue;
            };
            let keys: Vec<Key> = keys.iter().copied().collect();
            for key in keys {
                self.apply_neigh(key, (!deleted).then_some(&info), Instant::now());
            }
        }
        self.resync |= resync;
    }

    fn evaluate_all(&mut self) {
        let keys: Vec<Key> = self.entries.keys().copied().collect();
        tracing::trace!(n = keys.len(), "re-evaluating all tracked addresses");
        for key in keys {
            self.evaluate(key);
        }
    }

    /// Every [`PROBE_INTERVAL`]: re-evaluate (and so re-probe) unresolved
    /// addresses, refresh stale resolved ones.
    fn periodic(&mut self, now: Instant) {
        let mut unresolved = Vec::new();
        let mut stale = Vec::new();
        for (key, e) in &self.entries {
            if e.published.is_none() {
                unresolved.push(*key);
            } else if e.state == Some(NeighbourState::Stale) {
                stale.push(*key);
            }
        }
        for key in unresolved {
            self.evaluate(key);
        }
        for key in stale {
            self.maybe_refresh(key, now);
        }
    }

    /// Route lookup, then neighbour lookup of the next hop.
    fn evaluate(&mut self, key: Key) {
        let (kind, addr) = key;
        let route = match self.rtnl.route_get(addr) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "route lookup failed");
                None
            }
        };
        let nexthop = route
            .as_ref()
            .and_then(|r| r.next_hop(addr))
            .filter(|&(oif, _)| self.allowed(kind, oif));
        if nexthop.is_none() {
            tracing::trace!(%addr, ?kind, ?route, "no usable route");
        }
        self.set_nexthop(key, nexthop);
        let Some((oif, nh)) = nexthop else {
            self.publish(key, None);
            return;
        };
        let neigh = match self.rtnl.neigh_get(oif, nh) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%addr, next_hop = %nh, oif, error = %e, "neighbour lookup failed");
                None
            }
        };
        self.apply_neigh(key, neigh.as_ref(), Instant::now());
    }

    fn set_nexthop(&mut self, key: Key, nexthop: Option<(u32, Ipv4Addr)>) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        if entry.nexthop == nexthop {
            return;
        }
        if let Some(old) = entry.nexthop.take() {
            if let Some(set) = self.by_nexthop.get_mut(&old) {
                set.remove(&key);
                if set.is_empty() {
                    self.by_nexthop.remove(&old);
                }
            }
        }
        entry.nexthop = nexthop;
        entry.state = None;
        if let Some(nh) = nexthop {
            self.by_nexthop.entry(nh).or_default().insert(key);
        }
    }

    /// A (new) neighbour entry for `key`'s next hop, or none.
    fn apply_neigh(&mut self, key: Key, neigh: Option<&NeighInfo>, now: Instant) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        let Some((oif, nh)) = entry.nexthop else {
            return;
        };
        if let Some(n) = neigh {
            if (n.ifindex, n.dst) != (oif, nh) {
                return;
            }
        }
        entry.state = neigh.map(|n| n.state);
        match neigh.and_then(NeighInfo::usable_mac) {
            Some(mac) => {
                self.publish(key, Some(Egress { ifindex: oif, mac }));
                self.maybe_refresh(key, now);
            }
            None => {
                self.publish(key, None);
                // INCOMPLETE: the kernel is resolving it already.
                let resolving = neigh.is_some_and(|n| n.state == NeighbourState::Incomplete);
                let due = entry_due(self.entries.get(&key), now, PROBE_INTERVAL);
                if !resolving && due {
                    self.poke(key, now);
                }
            }
        }
    }

    /// Asks the kernel to re-confirm a STALE next hop, at most every
    /// [`STALE_REFRESH`].
    fn maybe_refresh(&mut self, key: Key, now: Instant) {
        let entry = self.entries.get(&key);
        if entry.is_some_and(|e| e.state == Some(NeighbourState::Stale))
            && entry_due(entry, now, STALE_REFRESH)
        {
            self.poke(key, now);
        }
    }

    fn poke(&mut self, key: Key, now: Instant) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        let Some((oif, nh)) = entry.nexthop else {
            return;
        };
        entry.last_poke = Some(now);
        tracing::trace!(addr = %key.1, next_hop = %nh, oif, trigger = ?self.trigger, "asking the kernel to resolve");
        match self.trigger {
            ResolveTrigger::Auto | ResolveTrigger::NtfUse => match self.rtnl.neigh_use(oif, nh) {
                Ok(Ok(_)) => {}
                // Refused as such (old kernel, no CAP_NET_ADMIN): fall back.
                // Other errors (the interface just went away, ...) are
                // transient and retried on the next probe.
                Ok(Err(e))
                    if self.trigger == ResolveTrigger::Auto
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM | libc::EACCES)
                        ) =>
                {
                    tracing::warn!(error = %e, "kernel refused NTF_USE; resolving with UDP datagrams from now on");
                    self.trigger = ResolveTrigger::Udp;
                    self.udp_poke(nh);
                }
                Ok(Err(e)) => tracing::debug!(next_hop = %nh, oif, error = %e, "NTF_USE refused"),
                Err(e) => tracing::warn!(next_hop = %nh, oif, error = %e, "NTF_USE failed"),
            },
            ResolveTrigger::Udp => self.udp_poke(nh),
        }
    }

    fn udp_poke(&mut self, nh: Ipv4Addr) {
        if self.udp.is_none() {
            match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
                Ok(s) => self.udp = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the UDP socket for resolution");
                    return;
                }
            }
        }
        if let Some(s) = &self.udp {
            // EHOSTUNREACH etc. are normal while unresolved.
            if let Err(e) = s.send_to(&[], (nh, 9)) {
                tracing::trace!(next_hop = %nh, error = %e, "UDP resolution datagram not sent");
            }
        }
    }

    /// Makes the map agree with `egress` for `key`.
    fn publish(&mut self, key: Key, egress: Option<Egress>) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        if entry.published == egress {
            return;
        }
        let (kind, addr) = key;
        let k = u32::from(addr);
        let res = match (kind, egress) {
            (Kind::CareOf, Some(e)) => self
                .care_of
                .insert(k, [u64::from(e.ifindex), mac_word(e.mac)])
                .map(drop),
            (Kind::Lan, Some(e)) => self.lan.insert(k, [mac_word(e.mac)]).map(drop),
            (Kind::CareOf, None) => {
                self.care_of.remove(k);
                Ok(())
            }
            (Kind::Lan, None) => {
                self.lan.remove(k);
                Ok(())
            }
        };
        match res {
            Ok(()) => {
                // Care-of addresses are few and matter: info. Home-link
                // neighbours may be many: debug.
                match (egress, kind) {
                    (Some(e), Kind::CareOf) => {
                        tracing::info!(care_of = %addr, ifindex = e.ifindex, mac = %fmt_mac(e.mac), "next hop resolved")
                    }
                    (Some(e), Kind::Lan) => {
                        tracing::debug!(%addr, mac = %fmt_mac(e.mac), "home-link neighbour resolved")
                    }
                    (None, Kind::CareOf) if entry.published.is_some() => {
                        tracing::info!(care_of = %addr, "next hop unresolved")
                    }
                    (None, _) if entry.published.is_some() => {
                        tracing::debug!(%addr, "home-link neighbour unresolved")
                    }
                    (None, _) => {}
                }
                entry.published = egress;
            }
            Err(e) => {
                tracing::warn!(%addr, ?kind, error = %e, "cannot publish next hop");
            }
        }
    }
}

fn entry_due(entry: Option<&Entry>, now: Instant, interval: std::time::Duration) -> bool {
    entry.is_some_and(|e| {
        e.last_poke
            .is_none_or(|t| now.duration_since(t) >= interval)
    })
}

fn fmt_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
