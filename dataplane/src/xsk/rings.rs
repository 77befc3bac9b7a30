//! The seam between the forwarding worker and AF_XDP: everything the worker
//! does to one queue's rings and UMEM, as a trait. [`QueueSockets`] is the
//! real implementation (the worker is generic over it, so it compiles to the
//! direct xsk-rs calls); the tests drive the worker over in-memory rings.
//!
//! [`QueueSockets`]: super::QueueSockets

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::{RingOccupancy, XskConfig};

/// Which socket of a queue: the home link's, or the one toward the care-of
/// addresses. A one-armed queue has only the LAN socket, and maps WAN to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Lan,
    Wan,
}

/// A socket's XDP_STATISTICS as far as the worker reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketStats {
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub fill_ring_empty: u64,
    pub rx_invalid: u64,
    pub tx_invalid: u64,
}

/// One queue's rings and UMEM, as the worker uses them.
///
/// Ring operations follow the kernel's: producing is all or nothing (ask
/// for room first), consuming returns how many descriptors were written.
/// `side` names a socket; on a one-armed queue `Side::Wan` is the LAN
/// socket.
///
/// Only frame access is `unsafe`: the worker must own a frame (it came off
/// an RX or completion ring or the free list, and has not been put on a
/// ring since) to touch its bytes. Putting a descriptor on a ring is safe
/// in itself: the kernel checks it against the UMEM, and userspace only
/// ever touches frame memory through [`QueueIo::frame_mut`].
pub trait QueueIo {
    /// A frame descriptor: where a frame's data starts and how long it is.
    type Desc: Copy + Default;

    /// Sizes of the UMEM and rings.
    fn config(&self) -> XskConfig;
    /// The queue index, to seed the pipeline's Identification counter.
    fn queue(&self) -> u32;
    /// Whether the queue has a WAN socket of its own.
    fn has_wan(&self) -> bool;

    /// The free frames, taken once by the worker that starts on the queue.
    fn take_free(&mut self) -> Vec<Self::Desc>;
    /// The free frames, handed back by a stopping worker.
    fn put_free(&mut self, free: Vec<Self::Desc>);

    /// Received frames off `side`'s RX ring into `descs`; how many.
    fn rx_consume(&mut self, side: Side, descs: &mut [Self::Desc]) -> usize;
    /// Free TX entries on `side`, exact once fewer than `wanted` look free.
    fn tx_free(&mut self, side: Side, wanted: u32) -> u32;
    /// Puts all of `descs` on `side`'s TX ring, or none (then 0).
    fn tx_produce(&mut self, side: Side, descs: &[Self::Desc]) -> usize;
    /// Kicks the kernel to send what `side`'s TX ring holds.
    fn tx_wakeup(&mut self, side: Side) -> io::Result<()>;
    /// Whether the kernel waits for a kick before it sends.
    fn tx_needs_wakeup(&self, side: Side) -> bool;
    /// Frames one kick sends at most (copy mode: 32, the kernel's
    /// TX_BATCH_SIZE, unless `XDP_MAX_TX_SKB_BUDGET` raised it).
    fn tx_kick_budget(&self, _side: Side) -> u32 {
        32
    }
    /// Whether every socket of the queue is bound in zero-copy mode.
    fn zero_copy(&self) -> bool {
        false
    }
    /// Free fill entries on `side`, exact once fewer than `wanted` look free.
    fn fill_free(&mut self, side: Side, wanted: u32) -> u32;
    /// Puts all of `descs` on `side`'s fill ring, or none (then 0).
    fn fill_produce(&mut self, side: Side, descs: &[Self::Desc]) -> usize;
    /// Sent frames off `side`'s completion ring into `descs`; how many.
    fn comp_consume(&mut self, side: Side, descs: &mut [Self::Desc]) -> usize;
    /// Entries in `side`'s four rings, for the frame accounting.
    fn occupancy(&mut self, side: Side) -> RingOccupancy;
    /// The kernel's counters of `side`'s socket, if it can tell.
    fn statistics(&self, side: Side) -> Option<SocketStats>;
    /// Sleeps until a socket has something to receive, `bell` (a
    /// [`Doorbell`](super::sys::Doorbell)'s fd) is rung, or `timeout`
    /// passes; returns whether `bell` was rung.
    fn wait_readable(&self, timeout: Duration, bell: Option<RawFd>) -> bool;
    /// Whether the sockets busy-poll ([`QueueIo::busy_poll`] does work).
    fn busy_polling(&self) -> bool {
        false
    }
    /// Busy polling: runs the device's receive processing once in this
    /// thread, without sleeping. Does nothing unless [`busy_polling`].
    ///
    /// [`busy_polling`]: QueueIo::busy_polling
    fn busy_poll(&mut self) {}
    /// Busy polling is on, `side`'s socket received frames and still names
    /// no NAPI instance to poll: its device's receive processing is out of
    /// busy polling's reach.
    fn busy_poll_unreachable(&self, _side: Side) -> bool {
        false
    }
    /// Stops busy polling: the worker sleeps in poll() again.
    fn stop_busy_poll(&mut self) {}

    /// Bytes of packet data `desc` describes.
    fn data_len(desc: &Self::Desc) -> usize;
    /// Whether the packet goes on in the next descriptor (`XDP_PKT_CONTD`:
    /// a frame larger than one UMEM frame, received with `XDP_USE_SG`).
    fn continues(desc: &Self::Desc) -> bool;
    /// The whole frame `desc` points into, and where its data starts.
    ///
    /// # Safety
    ///
    /// `desc` is a frame of this queue's UMEM that the caller owns: it came
    /// off this queue's RX or completion ring or free list and has not been
    /// put on a ring since. No other slice of the same frame is alive while
    /// the returned one is.
    // `&self`: the fragment path holds two frames at once; the contract,
    // not the borrow, makes each slice unique (as xsk-rs's whole_frame_mut).
    #[allow(clippy::mut_from_ref)]
    unsafe fn frame_mut(&self, desc: &Self::Desc) -> (&mut [u8], usize);
    /// Points `desc` at `len` bytes `offset` bytes into its frame, as one
    /// whole packet (no `XDP_PKT_CONTD`); false, and `desc` unchanged, if
    /// that leaves the frame.
    fn set_data(&self, desc: &mut Self::Desc, offset: usize, len: usize) -> bool;
}
