//! Frames a worker holds until something about their address changes:
//! a home-link neighbour resolving, like the kernel's ARP queue
//! (`unres_qlen`): a VM's replies right after it moved go to hosts the home
//! agent has not talked to, and dropping them would stall the VM's
//! connections for a retransmission timeout; or a VM's switchover ending.
//!
//! Bounded per address and overall, allocated once; the frames stay in
//! the UMEM (the accounting's `held` place) and leave in arrival order,
//! also ahead of frames that come for their address after what they wait
//! for has come ([`InOrder`]).

use std::net::Ipv4Addr;

use crate::pipeline::{BindingRef, Lookup, NextHop, Port};

/// Frames held per address for a neighbour (the kernel's default
/// `unres_qlen_bytes` holds about 100 full-size packets; a resuming TCP
/// stream sends a window at once, and 64 frames cover one at the usual
/// 64 KiB).
pub const PER_ADDRESS: usize = 64;
/// Frames held in all for neighbours, at most a quarter of the queue's.
pub const TOTAL: usize = 512;
/// How long a frame waits for a neighbour: the kernel gives up on an
/// address after three probes a second apart; a TCP sender has
/// retransmitted long before.
pub const MAX_WAIT_NS: u64 = 1_000_000_000;

/// One held frame: where it is and what the verdict said.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held<D> {
    pub desc: D,
    pub addr: Ipv4Addr,
    pub start: usize,
    pub len: usize,
    pub slot: Option<u32>,
    pub since_ns: u64,
    /// Where it came in (a held frame may be processed again).
    pub ingress: Port,
}

/// What became of a held frame at [`NeighborQueue::poll`].
pub(crate) enum Release<R> {
    /// What it waited for: send it on.
    Ready(R),
    /// Waited its longest without: drop it.
    Expired,
}

/// The held frames of one worker, oldest first.
#[derive(Debug)]
pub(crate) struct NeighborQueue<D> {
    held: Vec<Held<D>>,
    /// The addresses with frames held, and how many each: few at a time,
    /// so [`NeighborQueue::holds`] is cheap enough to ask per frame.
    addrs: Vec<(Ipv4Addr, usize)>,
    capacity: usize,
    per_address: usize,
    max_wait_ns: u64,
}

impl<D: Copy> NeighborQueue<D> {
    /// The neighbour queue of a worker with `frames` UMEM frames.
    pub fn new(frames: usize) -> Self {
        Self::with_limits(frames, TOTAL, PER_ADDRESS, MAX_WAIT_NS)
    }

    /// A queue of at most `total` frames (and never more than a quarter of
    /// the worker's `frames`), `per_address` of them for one address, each
    /// held at most `max_wait_ns`.
    pub fn with_limits(frames: usize, total: usize, per_address: usize, max_wait_ns: u64) -> Self {
        let capacity = total.min(frames / 4);
        NeighborQueue {
            held: Vec::with_capacity(capacity),
            addrs: Vec::with_capacity(capacity),
            capacity,
            per_address,
            max_wait_ns,
        }
    }

    /// The most frames it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Frames held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether frames for `addr` are held.
    #[inline]
    pub fn holds(&self, addr: Ipv4Addr) -> bool {
        self.addrs.iter().any(|&(a, _)| a == addr)
    }

    /// Hold `h`, or give it back if its address or the queue is full.
    pub fn push(&mut self, h: Held<D>) -> Result<(), Held<D>> {
        if self.held.len() >= self.capacity {
            return Err(h);
        }
        match self.addrs.iter_mut().find(|(a, _)| *a == h.addr) {
            Some((_, n)) if *n >= self.per_address => return Err(h),
            Some((_, n)) => *n += 1,
            None => self.addrs.push((h.addr, 1)),
        }
        self.held.push(h);
        Ok(())
    }

    /// Hands up to `limit` frames whose address is `ready`, or that waited
    /// too long, to `out` in arrival order; keeps the rest.
    pub fn poll<R: Copy>(
        &mut self,
        now_ns: u64,
        limit: usize,
        ready: impl Fn(Ipv4Addr) -> Option<R>,
        mut out: impl FnMut(Held<D>, Release<R>),
    ) {
        let mut released = 0;
        let max_wait = self.max_wait_ns;
        // Frames of one address come in runs: look each run's address up once.
        let mut last: Option<(Ipv4Addr, Option<R>)> = None;
        let addrs = &mut self.addrs;
        self.held.retain(|h| {
            if released >= limit {
                return true;
            }
            let answer = match last {
                Some((addr, r)) if addr == h.addr => r,
                _ => {
                    let r = ready(h.addr);
                    last = Some((h.addr, r));
                    r
                }
            };
            let release = match answer {
                Some(r) => Release::Ready(r),
                None if now_ns.saturating_sub(h.since_ns) >= max_wait => Release::Expired,
                None => return true,
            };
            released += 1;
            if let Some(i) = addrs.iter().position(|&(a, _)| a == h.addr) {
                addrs[i].1 -= 1;
                if addrs[i].1 == 0 {
                    addrs.swap_remove(i);
                }
            }
            out(*h, release);
            false
        });
    }

    /// The held frames' descriptors, for the tests' frame conservation.
    #[cfg(test)]
    pub fn descs(&self) -> impl Iterator<Item = &D> {
        self.held.iter().map(|h| &h.desc)
    }

    /// Every held frame, for a worker that stops.
    pub fn drain(&mut self) -> impl Iterator<Item = Held<D>> + '_ {
        self.addrs.clear();
        self.held.drain(..)
    }
}

/// The worker's [`Lookup`] for frames it has just received: what the
/// held frames wait for can come between the turn's look at them and
/// this frame's lookup (the kernel resolves the neighbour, the control
/// plane ends the switchover), and a frame sent then would overtake them.
/// A frame whose address has frames held waits behind them instead.
pub(crate) struct InOrder<'a, L, D> {
    pub lookup: &'a L,
    /// Frames waiting for a home-link neighbour, by its address.
    pub neighbor: &'a NeighborQueue<D>,
    /// Frames waiting for a VM's switchover, by the VM.
    pub switchover: &'a NeighborQueue<D>,
}

impl<L: Lookup, D: Copy> Lookup for InOrder<'_, L, D> {
    #[inline]
    fn binding(&self, vm: Ipv4Addr) -> Option<BindingRef> {
        let b = self.lookup.binding(vm)?;
        Some(if self.switchover.holds(vm) {
            BindingRef {
                care_of: Ipv4Addr::UNSPECIFIED,
                ..b
            }
        } else {
            b
        })
    }
    #[inline]
    fn next_hop(&self, care_of: Ipv4Addr) -> NextHop {
        self.lookup.next_hop(care_of)
    }
    #[inline]
    fn lan_neighbor(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        if self.neighbor.holds(addr) {
            return None;
        }
        self.lookup.lan_neighbor(addr)
    }
    #[inline]
    fn warm_lan_neighbor(&self, addr: Ipv4Addr) {
        self.lookup.warm_lan_neighbor(addr)
    }
    #[inline]
    fn lan_neighbor_known(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        if self.neighbor.holds(addr) {
            return None;
        }
        self.lookup.lan_neighbor_known(addr)
    }
    #[inline]
    fn prefetch(&self, vm: Ipv4Addr) -> Option<u32> {
        self.lookup.prefetch(vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(desc: u32, addr: [u8; 4], since_ns: u64) -> Held<u32> {
        Held {
            desc,
            addr: addr.into(),
            start: 256,
            len: 60,
            slot: Some(1),
            since_ns,
            ingress: Port::Wan,
        }
    }

    const A: [u8; 4] = [192, 0, 2, 10];
    const B: [u8; 4] = [192, 0, 2, 11];

    #[test]
    fn bounded_per_address_and_overall() {
        let mut q = NeighborQueue::new(4096);
        for i in 0..PER_ADDRESS as u32 {
            q.push(held(i, A, 0)).unwrap();
        }
        assert_eq!(q.push(held(999, A, 0)).unwrap_err().desc, 999);
        q.push(held(1000, B, 0)).unwrap();
        assert_eq!(q.len(), PER_ADDRESS + 1);

        // A small UMEM holds at most a quarter of its frames.
        let mut q = NeighborQueue::new(16);
        for i in 0..4 {
            q.push(held(i, [10, 0, 0, i as u8], 0)).unwrap();
        }
        assert!(q.push(held(4, B, 0)).is_err());
    }

    #[test]
    fn resolved_leave_in_order_expired_are_dropped_the_rest_wait() {
        let mut q = NeighborQueue::new(4096);
        q.push(held(1, A, 0)).unwrap();
        q.push(held(2, B, 0)).unwrap();
        q.push(held(3, A, 10)).unwrap();
        q.push(held(4, B, MAX_WAIT_NS)).unwrap();
        let mac = [2, 0, 0, 0, 0, 0x0a];
        let mut sent = Vec::new();
        let mut dropped = Vec::new();
        let resolve = |a: Ipv4Addr| (a == Ipv4Addr::from(A)).then_some(mac);
        q.poll(MAX_WAIT_NS, usize::MAX, resolve, |h, r| match r {
            Release::Ready(m) => {
                assert_eq!(m, mac);
                sent.push(h.desc)
            }
            Release::Expired => dropped.push(h.desc),
        });
        assert_eq!(sent, [1, 3]);
        assert_eq!(dropped, [2], "waited its full time");
        assert_eq!(q.len(), 1);
        assert_eq!(q.drain().map(|h| h.desc).collect::<Vec<_>>(), [4]);
        assert!(q.is_empty());
    }

    #[test]
    fn holds_follows_the_addresses_in_and_out() {
        let mut q = NeighborQueue::with_limits(4096, 8, 2, MAX_WAIT_NS);
        assert!(!q.holds(A.into()));
        q.push(held(1, A, 0)).unwrap();
        q.push(held(2, B, 0)).unwrap();
        q.push(held(3, A, 0)).unwrap();
        assert!(q.push(held(4, A, 0)).is_err(), "two per address");
        assert!(q.holds(A.into()) && q.holds(B.into()));
        let a = Ipv4Addr::from(A);
        q.poll(0, usize::MAX, |x| (x == a).then_some(()), |_, _| {});
        assert!(!q.holds(A.into()) && q.holds(B.into()));
        q.push(held(5, A, 0)).unwrap();
        q.push(held(6, A, 0)).unwrap();
        assert!(q.push(held(7, A, 0)).is_err(), "counted afresh");
        assert_eq!(q.drain().count(), 3);
        assert!(!q.holds(A.into()) && !q.holds(B.into()));
        q.push(held(8, A, 0)).unwrap();
        assert!(q.holds(A.into()));
    }

    #[test]
    fn a_limited_poll_keeps_the_rest_in_order() {
        let mut q = NeighborQueue::with_limits(4096, 8, 8, MAX_WAIT_NS);
        for i in 0..5 {
            q.push(held(i, A, 0)).unwrap();
        }
        let mut sent = Vec::new();
        q.poll(0, 2, |_| Some(()), |h, _| sent.push(h.desc));
        assert_eq!(sent, [0, 1]);
        q.poll(0, 10, |_| Some(()), |h, _| sent.push(h.desc));
        assert_eq!(sent, [0, 1, 2, 3, 4]);
    }
}
