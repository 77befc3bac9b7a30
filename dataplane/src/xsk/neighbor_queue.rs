//! Frames a worker holds until something about their address changes:
//! a home-link neighbour resolving, like the kernel's ARP queue
//! (`unres_qlen`): a VM's replies right after it moved go to hosts the home
//! agent has not talked to, and dropping them would stall the VM's
//! connections for a retransmission timeout; or a VM's switchover ending.
//!
//! Bounded per address and overall, allocated once; the frames stay in
//! the UMEM (the accounting's `held` place) and leave in arrival order.

use std::net::Ipv4Addr;

use crate::pipeline::Port;

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

    /// Hold `h`, or give it back if its address or the queue is full.
    pub fn push(&mut self, h: Held<D>) -> Result<(), Held<D>> {
        if self.held.len() >= self.capacity
            || self.held.iter().filter(|x| x.addr == h.addr).count() >= self.per_address
        {
            return Err(h);
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
        self.held.drain(..)
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
