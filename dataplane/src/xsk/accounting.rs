//! Where every UMEM frame is. A frame is always in exactly one place: the
//! worker's free list, a fill ring, an RX ring, the worker's hands, a TX
//! ring, a completion ring, or inside the kernel between two rings (a copy
//! or a transmission in progress). The worker publishes these counts; at
//! teardown nothing may be left unaccounted for.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One snapshot of where a queue's frames are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FrameAccounting {
    /// Frames in the UMEM.
    pub total: u64,
    /// On the worker's free list.
    pub free: u64,
    /// Waiting in fill rings for the kernel to receive into.
    pub fill: u64,
    /// Received, waiting in RX rings for the worker.
    pub rx: u64,
    /// In the worker's hands (being processed).
    pub worker: u64,
    /// Held by the worker until a home-link neighbour resolves.
    pub held: u64,
    /// Waiting in TX rings for the kernel to send.
    pub tx: u64,
    /// Sent, waiting in completion rings for the worker.
    pub completion: u64,
    /// Taken by the kernel from a fill ring and not (yet) put on an RX
    /// ring: being copied into, or parked in the socket's buffer pool after
    /// a receive found the RX ring full. Nonzero at idle is normal.
    pub kernel_rx: u64,
    /// Taken by the kernel from a TX ring and not yet put on a completion
    /// ring: a transmission in progress. Zero once the worker has drained.
    pub kernel_tx: u64,
}

impl FrameAccounting {
    /// Frames that are in none of the places: `total` minus the rest.
    /// Nonzero means the worker lost (or invented) frames.
    pub fn unaccounted(&self) -> i64 {
        let placed = self.free
            + self.fill
            + self.rx
            + self.worker
            + self.held
            + self.tx
            + self.completion
            + self.kernel_rx
            + self.kernel_tx;
        self.total as i64 - placed as i64
    }
}

/// Counters the worker keeps of the frames it handed over, from which the
/// kernel-held share follows. Plain integers: only the worker touches them.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FrameFlow {
    pub filled: u64,
    pub received: u64,
    pub sent: u64,
    pub completed: u64,
}

impl FrameFlow {
    /// Frames given to fill rings that have not come back through RX.
    pub fn rx_side(&self) -> u64 {
        self.filled.wrapping_sub(self.received)
    }
    /// Frames given to TX rings that have not come back through completion.
    pub fn tx_side(&self) -> u64 {
        self.sent.wrapping_sub(self.completed)
    }
}

/// Entries in a queue's rings, read from the rings themselves.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingOccupancy {
    /// Fill ring entries.
    pub fill: u64,
    /// RX ring entries.
    pub rx: u64,
    /// TX ring entries.
    pub tx: u64,
    /// Completion ring entries.
    pub completion: u64,
}

impl RingOccupancy {
    /// Both sockets' entries together.
    pub(crate) fn add(&mut self, other: RingOccupancy) {
        self.fill += other.fill;
        self.rx += other.rx;
        self.tx += other.tx;
        self.completion += other.completion;
    }
}

/// Split the kernel-held frames into ring occupancy and in-kernel frames.
pub(crate) fn account(
    total: u64,
    free: u64,
    worker: u64,
    held: u64,
    flow: FrameFlow,
    rings: RingOccupancy,
) -> FrameAccounting {
    let RingOccupancy {
        fill,
        rx,
        tx,
        completion,
    } = rings;
    // Frames on the RX side are in the fill ring, in the kernel, or on the
    // RX ring; likewise TX ring, kernel, completion ring on the TX side.
    let kernel_rx = flow.rx_side().saturating_sub(fill + rx);
    let kernel_tx = flow.tx_side().saturating_sub(tx + completion);
    FrameAccounting {
        total,
        free,
        fill,
        rx,
        worker,
        held,
        tx,
        completion,
        kernel_rx,
        kernel_tx,
    }
}

/// The published copy of a [`FrameAccounting`], readable from any thread.
#[derive(Debug, Default)]
pub struct SharedAccounting {
    fields: [AtomicU64; 10],
}

impl SharedAccounting {
    pub(crate) fn publish(&self, a: &FrameAccounting) {
        let values = [
            a.total,
            a.free,
            a.fill,
            a.rx,
            a.worker,
            a.tx,
            a.completion,
            a.kernel_rx,
            a.kernel_tx,
            a.held,
        ];
        for (field, value) in self.fields.iter().zip(values) {
            field.store(value, Relaxed);
        }
    }

    /// The last snapshot the worker published.
    pub fn load(&self) -> FrameAccounting {
        let f = |i: usize| self.fields[i].load(Relaxed);
        FrameAccounting {
            total: f(0),
            free: f(1),
            fill: f(2),
            rx: f(3),
            worker: f(4),
            tx: f(5),
            completion: f(6),
            kernel_rx: f(7),
            kernel_tx: f(8),
            held: f(9),
        }
    }
}

/// One queue's frames as `homeward stats` shows them, in both roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct QueueFrames {
    pub queue: usize,
    /// Packets this queue encapsulated.
    pub encapsulated: u64,
    #[serde(flatten)]
    pub frames: FrameAccounting,
    /// Frames in no place at all: nonzero is a leak.
    pub unaccounted: i64,
    /// Frames one TX kick sends at most (the smallest of the queue's
    /// sockets): 32 in copy mode unless `XDP_MAX_TX_SKB_BUDGET` (Linux
    /// 6.17+) raised it; 0 before the worker started.
    pub tx_kick_budget: u32,
    /// Every socket of the queue bound in zero-copy mode (else copy mode,
    /// where the kernel copies each frame in and out of the UMEM).
    pub zero_copy: bool,
}

impl QueueFrames {
    pub fn new(
        queue: usize,
        encapsulated: u64,
        frames: FrameAccounting,
        tx_kick_budget: u32,
        zero_copy: bool,
    ) -> QueueFrames {
        QueueFrames {
            queue,
            encapsulated,
            frames,
            unaccounted: frames.unaccounted(),
            tx_kick_budget,
            zero_copy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rings(fill: u64, rx: u64, tx: u64, completion: u64) -> RingOccupancy {
        RingOccupancy {
            fill,
            rx,
            tx,
            completion,
        }
    }

    #[test]
    fn kernel_share_is_what_the_rings_do_not_hold() {
        let flow = FrameFlow {
            filled: 100,
            received: 40,
            sent: 30,
            completed: 10,
        };
        // 60 on the RX side: 50 in fill, 8 on RX, so 2 in the kernel.
        // 20 on the TX side: 15 on TX, 5 on completion, none in the kernel.
        let a = account(200, 105, 10, 5, flow, rings(50, 8, 15, 5));
        assert_eq!((a.kernel_rx, a.kernel_tx), (2, 0));
        assert_eq!(a.unaccounted(), 0);
    }

    #[test]
    fn balanced_books_have_nothing_unaccounted() {
        let flow = FrameFlow {
            filled: 4096,
            received: 96,
            sent: 64,
            completed: 64,
        };
        let a = account(8192, 4192, 0, 0, flow, rings(4000, 0, 0, 0));
        assert_eq!((a.kernel_rx, a.kernel_tx), (0, 0));
        assert_eq!(a.unaccounted(), 0);
    }

    #[test]
    fn shared_round_trips() {
        let s = SharedAccounting::default();
        let a = FrameAccounting {
            total: 1,
            free: 2,
            fill: 3,
            rx: 4,
            worker: 5,
            tx: 6,
            completion: 7,
            kernel_rx: 8,
            kernel_tx: 9,
            held: 10,
        };
        s.publish(&a);
        assert_eq!(s.load(), a);
    }
}
