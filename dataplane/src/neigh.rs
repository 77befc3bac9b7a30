//! Next hops from the kernel, over rtnetlink (synchronous: a netlink-sys
//! socket and netlink-packet-route messages, no async runtime).
//!
//! The data path bypasses the kernel's stack, so it cannot use the kernel's
//! neighbour resolution directly. Instead a *neighbour thread* ([`spawn`])
//! follows the kernel's routes and neighbour entries for the addresses the
//! control plane tracks, and publishes the results in two lock-free maps
//! (the [`crate::table`] `SeqMap` core), which the workers read per packet
//! through a [`NeighReader`] (no lock, allocation or syscall):
//!
//! * **care-of address -> [`Egress`]**: an output route lookup
//!   (`RTM_GETROUTE`, like `ip route get`) gives the output interface and
//!   the gateway; the neighbour entry (`RTM_GETNEIGH`) of the gateway, or of
//!   the address itself if it is on-link, gives the MAC. Only routes out of
//!   one of the interfaces given to [`spawn`] count.
//! * **home-link address -> MAC**, for the hosts on the LAN interface (the
//!   reverse tunnel delivers to them): the same, restricted to the LAN
//!   interface. For an off-link address this is the MAC of the LAN router
//!   that the kernel's route names.
//!
//! # Resolution and refresh
//!
//! An address counts as resolved while its next hop's neighbour entry is
//! REACHABLE, STALE, DELAY, PROBE or PERMANENT with a 6-byte address.
//! Otherwise (no entry, INCOMPLETE, FAILED, NOARP, ...) it is unresolved:
//! the reader returns `None` and the thread asks the kernel to resolve the
//! next hop with `RTM_NEWNEIGH` + `NTF_USE` on the output interface (what
//! `ip neigh replace ADDR dev IF use` does): the kernel creates the entry
//! if needed and sends an ARP request, as if a packet were waiting for it.
//! The namespace test (`neigh::lab`) checks that this really puts an ARP
//! request on the wire: the peer learns our address from it. If a kernel
//! refused `NTF_USE`, the thread falls back, once and for good, to sending
//! an empty UDP datagram to the next hop's discard port (9), which makes
//! the kernel resolve the next hop the ordinary way (also tested).
//!
//! Since the data path's packets never pass through the kernel, the kernel
//! never sees the neighbours being used: a REACHABLE entry goes STALE and
//! stays so, and a next hop that changed its MAC without announcing it would
//! go unnoticed. So a STALE entry is "used" (`NTF_USE`) at most every
//! [`STALE_REFRESH`]: the kernel then confirms it with a unicast ARP probe
//! (after its `delay_first_probe_time`) and updates or fails it.
//!
//! Changes are followed through the RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE and
//! RTNLGRP_LINK multicast groups: a neighbour notification updates the
//! addresses whose next hop it is at once; a route or link notification
//! (or a lost-notifications overrun) re-evaluates every tracked address.
//! Unresolved addresses are re-evaluated, and re-probed, every
//! [`PROBE_INTERVAL`].
//!
//! The thread wakes every [`POLL_INTERVAL`] to read notifications without
//! blocking (the safe netlink-sys API has no poll with timeout, and the
//! module has no `unsafe`); commands from the control plane wake it at once.
//! It stops when the last [`NeighHandle`] is dropped or on
//! [`NeighHandle::shutdown`]; the readers then keep the last published
//! values.

mod addrs;
mod rtnl;
mod worker;

#[cfg(all(test, not(loom)))]
mod lab;
#[cfg(all(test, not(loom)))]
mod tests;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel;

use crate::table::{seq_map, SeqMapReader, SeqMapWriter};

pub use addrs::{ipv4_prefixes, neighbor_mac};
pub use worker::ResolveTrigger;

/// Slots of the care-of address map (foreign agents: few).
pub const CARE_OF_CAPACITY: usize = 4096;
/// Slots of the home-link neighbour map.
pub const LAN_CAPACITY: usize = 65536;
/// How often the thread reads notifications.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Pending home-link misses reported by workers (see
/// [`NeighReader::lan_neighbor_or_resolve`]).
pub const LAN_MISS_QUEUE: usize = 256;
/// Home-link addresses followed because a worker missed them, at most; past
/// this, misses are not followed (tracked addresses still are).
pub const LAN_AUTO_TRACKED: usize = 4096;
/// How often unresolved addresses are re-evaluated and re-probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Minimum time between two refreshes (`NTF_USE`) of one STALE entry.
pub const STALE_REFRESH: Duration = Duration::from_secs(5);

/// Errors of the neighbour module.
#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    /// No interface has this name.
    #[error("no such interface: {0}")]
    NoSuchInterface(String),
    /// No interface has this index.
    #[error("no interface with index {0}")]
    NoSuchIfindex(u32),
    /// The interface has no 6-byte (Ethernet) hardware address.
    #[error("interface {0} has no Ethernet address")]
    NotEthernet(String),
    /// An rtnetlink socket could not be opened or set up.
    #[error("rtnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// An rtnetlink request failed (transport, or the kernel's errno).
    #[error("rtnetlink {op}: {source}")]
    Io {
        /// The request.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel did not answer a request in time.
    #[error("rtnetlink {op}: no answer within 2 s")]
    Timeout {
        /// The request.
        op: &'static str,
    },
    /// The kernel's answer did not contain what was asked for.
    #[error("rtnetlink {op}: answer without the expected message")]
    UnexpectedReply {
        /// The request.
        op: &'static str,
    },
    /// The neighbour thread could not be started.
    #[error("starting the neighbour thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
}

/// Where to send a frame for some destination, and to which MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Egress {
    /// Output interface.
    pub ifindex: u32,
    /// Destination MAC (the next hop's).
    pub mac: [u8; 6],
}

fn link_from_reply(
    reply: rtnl::Reply,
    what: &str,
    missing: impl FnOnce() -> NeighError,
) -> Result<LinkInfo, NeighError> {
    match reply {
        Ok(msgs) => msgs
            .iter()
            .find_map(|m| match m {
                netlink_packet_route::RouteNetlinkMessage::NewLink(l) => {
                    Some(rtnl::parse_link(l, what))
                }
                _ => None,
            })
            .unwrap_or(Err(NeighError::UnexpectedReply { op: "RTM_GETLINK" })),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENODEV | libc::EINVAL | libc::ERANGE)
            ) =>
        {
            Err(missing())
        }
        Err(e) => Err(NeighError::Io {
            op: "RTM_GETLINK",
            source: e,
        }),
    }
}

/// The interface called `name` (in the calling thread's network namespace).
pub fn link_by_name(name: &str) -> Result<LinkInfo, NeighError> {
    // Names the kernel cannot hold: no need to ask.
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', '\0'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(NeighError::NoSuchInterface(name.to_string()));
    }
    let reply = rtnl::Rtnl::new()?.link_get(0, Some(name))?;
    link_from_reply(reply, name, || {
        NeighError::NoSuchInterface(name.to_string())
    })
}

/// The interface with index `index`.
pub fn link_by_index(index: u32) -> Result<LinkInfo, NeighError> {
    if index == 0 || index > i32::MAX as u32 {
        return Err(NeighError::NoSuchIfindex(index));
    }
    let reply = rtnl::Rtnl::new()?.link_get(index, None)?;
    link_from_reply(reply, &format!("ifindex {index}"), || {
        NeighError::NoSuchIfindex(index)
    })
}

/// Which map an address is tracked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    CareOf,
    Lan,
}

/// Control messages to the thread.
#[derive(Debug)]
pub(crate) enum Cmd {
    Track(Kind, Ipv4Addr),
    Untrack(Kind, Ipv4Addr),
    Shutdown,
}

/// Bit 48 of a MAC word: valid.
const MAC_VALID: u64 = 1 << 48;

pub(crate) fn mac_word(mac: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&mac);
    MAC_VALID | u64::from_be_bytes(b)
}

#[inline]
fn word_mac(w: u64) -> Option<[u8; 6]> {
    if w & MAC_VALID == 0 {
        return None;
    }
    let b = w.to_be_bytes();
    Some([b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Next hops and home-link neighbours set by hand instead of learned from
/// the kernel: for benchmarks and for driving the data path without
/// netlink. Same maps, same encoding as the neighbour thread's.
#[derive(Debug)]
pub struct StaticNeighbors {
    care_of: SeqMapWriter<2>,
    lan: SeqMapWriter<1>,
}

/// Empty hand-set neighbour maps (neighbour-thread capacities) and the
/// reader the workers use over them.
pub fn static_neighbors() -> (StaticNeighbors, NeighReader) {
    let (care_of, care_of_r) = seq_map::<2>(CARE_OF_CAPACITY);
    let (lan, lan_r) = seq_map::<1>(LAN_CAPACITY);
    (
        StaticNeighbors { care_of, lan },
        NeighReader {
            care_of: care_of_r,
            lan: lan_r,
            lan_misses: None,
        },
    )
}

impl StaticNeighbors {
    /// Frames for `care_of` leave by `ifindex` to `mac`.
    pub fn set_egress(&mut self, care_of: Ipv4Addr, ifindex: u32, mac: [u8; 6]) {
        let _ = self
            .care_of
            .insert(u32::from(care_of), [u64::from(ifindex), mac_word(mac)]);
    }

    /// Home-link host `addr` is at `mac`.
    pub fn set_lan(&mut self, addr: Ipv4Addr, mac: [u8; 6]) {
        let _ = self.lan.insert(u32::from(addr), [mac_word(mac)]);
    }
}

/// The workers' side: per-packet lookups. `Clone + Send + Sync`; no lock,
/// no allocation, no syscall, never waits for the neighbour thread.
#[derive(Clone, Debug)]
pub struct NeighReader {
    care_of: SeqMapReader<2>,
    lan: SeqMapReader<1>,
    /// Home-link addresses a worker needed but did not find, for the thread
    /// to resolve and follow from then on. Bounded: a full queue drops the
    /// request (the next packet asks again), never blocks or allocates.
    lan_misses: Option<channel::Sender<Ipv4Addr>>,
}

impl NeighReader {
    /// Where to send frames for `care_of`, if it is tracked and resolved.
    #[inline]
    pub fn egress(&self, care_of: Ipv4Addr) -> Option<Egress> {
        let (w, _) = self.care_of.get(u32::from(care_of))?;
        Some(Egress {
            ifindex: w[0] as u32,
            mac: word_mac(w[1])?,
        })
    }

    /// The MAC of home-link address `addr` (or of the LAN router towards
    /// it), if it is tracked and resolved.
    #[inline]
    pub fn lan_neighbor(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        let (w, _) = self.lan.get(u32::from(addr))?;
        word_mac(w[0])
    }

    /// [`NeighReader::lan_neighbor`], and on a miss ask the neighbour thread
    /// to resolve and follow `addr` (reverse-tunnelled traffic goes to
    /// whichever home-link host the VM talks to; nobody can list them
    /// beforehand). The request is a non-blocking send on a bounded queue.
    #[inline]
    pub fn lan_neighbor_or_resolve(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        let mac = self.lan_neighbor(addr);
        if mac.is_none() {
            if let Some(tx) = &self.lan_misses {
                let _ = tx.try_send(addr);
            }
        }
        mac
    }
}

/// What is tracked: sets, not counts (the forwarder counts the bindings
/// that share a care-of address).
#[derive(Default)]
struct Refs {
    care_of: HashSet<Ipv4Addr>,
    lan: HashSet<Ipv4Addr>,
}

struct HandleInner {
    tx: channel::Sender<Cmd>,
    refs: Mutex<Refs>,
    reader: NeighReader,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent
    // (plain counters), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HandleInner {
    fn shutdown(&self) {
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            // The thread may already be gone (then the send fails): fine.
            let _ = self.tx.send(Cmd::Shutdown);
            if h.join().is_err() {
                tracing::error!("neighbour thread panicked");
            }
        }
    }
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The control plane's side of the neighbour thread. `Clone` (clones share
/// the thread); the thread stops when the last clone is dropped.
///
/// Tracking is a set: `track` twice is once, one `untrack` ends it (the
/// forwarder counts the bindings that share a care-of address).
#[derive(Clone)]
pub struct NeighHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for NeighHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let refs = lock(&self.inner.refs);
        f.debug_struct("NeighHandle")
            .field("care_of", &refs.care_of.len())
            .field("lan", &refs.lan.len())
            .finish()
    }
}

impl NeighHandle {
    fn change(&self, kind: Kind, addr: Ipv4Addr, track: bool) {
        let mut refs = lock(&self.inner.refs);
        let map = match kind {
            Kind::CareOf => &mut refs.care_of,
            Kind::Lan => &mut refs.lan,
        };
        let cmd = if track {
            map.insert(addr).then_some(Cmd::Track(kind, addr))
        } else {
            map.remove(&addr).then_some(Cmd::Untrack(kind, addr))
        };
        if let Some(cmd) = cmd {
            // Sent under the lock so that the thread sees track/untrack of
            // one address in call order.
            if self.inner.tx.send(cmd).is_err() {
                tracing::warn!(%addr, "neighbour thread is not running");
            }
        }
    }

    /// Starts resolving and following `care_of`.
    pub fn track(&self, care_of: Ipv4Addr) {
        self.change(Kind::CareOf, care_of, true);
    }

    /// Stops following `care_of` (when its last `track` is undone); its
    /// egress disappears from the reader.
    pub fn untrack(&self, care_of: Ipv4Addr) {
        self.change(Kind::CareOf, care_of, false);
    }

    /// Starts resolving and following home-link address `addr`.
    pub fn track_lan(&self, addr: Ipv4Addr) {
        self.change(Kind::Lan, addr, true);
    }

    /// Stops following home-link address `addr`.
    pub fn untrack_lan(&self, addr: Ipv4Addr) {
        self.change(Kind::Lan, addr, false);
    }

    /// Tracked care-of addresses and their current egress, sorted by address.
    pub fn snapshot(&self) -> Vec<(Ipv4Addr, Option<Egress>)> {
        let mut addrs: Vec<Ipv4Addr> = lock(&self.inner.refs).care_of.iter().copied().collect();
        addrs.sort_unstable();
        addrs
            .into_iter()
            .map(|a| (a, self.inner.reader.egress(a)))
            .collect()
    }

    /// Tracked home-link addresses and their current MAC, sorted by address.
    pub fn lan_snapshot(&self) -> Vec<(Ipv4Addr, Option<[u8; 6]>)> {
        let mut addrs: Vec<Ipv4Addr> = lock(&self.inner.refs).lan.iter().copied().collect();
        addrs.sort_unstable();
        addrs
            .into_iter()
            .map(|a| (a, self.inner.reader.lan_neighbor(a)))
            .collect()
    }

    /// A reader of the maps this thread publishes.
    pub fn reader(&self) -> NeighReader {
        self.inner.reader.clone()
    }

    /// Stops the thread and waits for it (also done when the last handle is
    /// dropped). Idempotent; `track` after this only logs a warning.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

/// Spawns the neighbour thread (see the module documentation) in the
/// caller's network namespace. Only routes out of `ifindexes` count for
/// care-of addresses, only `lan_ifindex` for home-link addresses.
pub fn spawn(
    ifindexes: Vec<u32>,
    lan_ifindex: u32,
) -> Result<(NeighHandle, NeighReader), NeighError> {
    spawn_with(ifindexes, lan_ifindex, ResolveTrigger::Auto)
}

/// [`spawn`] with an explicit way of asking the kernel to resolve.
pub fn spawn_with(
    ifindexes: Vec<u32>,
    lan_ifindex: u32,
    trigger: ResolveTrigger,
) -> Result<(NeighHandle, NeighReader), NeighError> {
    let (coa_w, coa_r) = seq_map::<2>(CARE_OF_CAPACITY);
    let (lan_w, lan_r) = seq_map::<1>(LAN_CAPACITY);
    let (miss_tx, miss_rx) = channel::bounded(LAN_MISS_QUEUE);
    let reader = NeighReader {
        care_of: coa_r,
        lan: lan_r,
        lan_misses: Some(miss_tx),
    };
    // Sockets are opened here, so that errors reach the caller.
    let worker = worker::Worker::new(ifindexes, lan_ifindex, coa_w, lan_w, trigger)?;
    let (tx, rx) = channel::unbounded();
    let thread = std::thread::Builder::new()
        .name("homeward-neigh".into())
        .spawn(move || worker.run(rx, miss_rx))
        .map_err(NeighError::Spawn)?;
    let handle = NeighHandle {
        inner: Arc::new(HandleInner {
            tx,
            refs: Mutex::new(Refs::default()),
            reader: reader.clone(),
            thread: Mutex::new(Some(thread)),
        }),
    };
    Ok((handle, reader))
}
