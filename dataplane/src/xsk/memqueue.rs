//! In-memory rings for the worker's tests: a UMEM in a boxed slice and each
//! socket's four rings as bounded queues, with a stand-in for the kernel
//! that the test drives. It receives when the test injects a frame (taking
//! a frame off the fill ring, as the kernel does), and sends when kicked, up
//! to 32 frames a kick (copy mode's TX_BATCH_SIZE), unless the link is down:
//! sending records the bytes on the socket's wire and moves the frame to
//! the completion ring.
//!
//! It checks what the kernel cannot: a frame put on a ring while it is
//! already on one, and descriptors that leave their frame, panic the test.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::{QueueIo, RingOccupancy, Side, SocketStats, XskConfig};

/// Where the kernel puts a received packet in its frame: XDP's headroom.
pub const RX_HEADROOM: usize = 256;

/// Copy mode sends at most this many frames per kick.
const TX_BATCH: usize = 32;

/// A frame descriptor: data at UMEM offset `addr`, `len` bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemDesc {
    pub addr: usize,
    pub len: usize,
    /// `XDP_PKT_CONTD`: the packet goes on in the next descriptor.
    pub contd: bool,
}

/// One socket's rings and what went out on its wire.
#[derive(Debug, Default)]
pub struct MemSocket {
    pub fill: VecDeque<MemDesc>,
    pub rx: VecDeque<MemDesc>,
    pub tx: VecDeque<MemDesc>,
    pub comp: VecDeque<MemDesc>,
    /// Taken off the fill ring by the kernel, on no ring yet (a receive in
    /// progress): what the accounting calls `kernel_rx`.
    pub held: Vec<MemDesc>,
    /// Frames sent, in order.
    pub wire: Vec<Vec<u8>>,
    pub stats: SocketStats,
    pub kicks: u64,
}

/// A queue's UMEM and sockets, in memory.
pub struct MemQueue {
    config: XskConfig,
    umem: Box<[Cell<u8>]>,
    /// The free list until a worker takes it, and after it parks.
    pub free: Vec<MemDesc>,
    pub lan: MemSocket,
    pub wan: Option<MemSocket>,
    /// Whether a kick sends; false: frames stay on the TX rings.
    pub link_up: bool,
    /// Times the worker slept waiting for frames.
    pub waits: Cell<u64>,
    /// Frames a kick sends (copy mode's 32 unless raised).
    pub tx_budget: usize,
    /// Busy polling on, and the busy polls so far.
    pub busy: bool,
    pub polls: u64,
    /// The device has no NAPI id for busy polling to run (veth's case).
    pub no_napi: bool,
}

impl MemQueue {
    /// A fresh queue: every frame on the free list, data where the kernel
    /// would put it; a WAN socket unless `one_armed`.
    pub fn new(config: XskConfig, one_armed: bool) -> MemQueue {
        let size = config.frame_size as usize;
        let free = (0..config.frame_count as usize)
            .map(|i| MemDesc {
                addr: i * size + RX_HEADROOM,
                len: 0,
                contd: false,
            })
            .collect();
        MemQueue {
            config,
            umem: (0..config.frame_count as usize * size)
                .map(|_| Cell::new(0))
                .collect(),
            free,
            lan: MemSocket::default(),
            wan: (!one_armed).then(MemSocket::default),
            link_up: true,
            waits: Cell::new(0),
            tx_budget: TX_BATCH,
            busy: false,
            polls: 0,
            no_napi: false,
        }
    }

    pub fn socket(&self, side: Side) -> &MemSocket {
        match (side, &self.wan) {
            (Side::Wan, Some(wan)) => wan,
            _ => &self.lan,
        }
    }

    pub fn socket_mut(&mut self, side: Side) -> &mut MemSocket {
        match (side, &mut self.wan) {
            (Side::Wan, Some(wan)) => wan,
            _ => &mut self.lan,
        }
    }

    fn capacity(&self) -> usize {
        self.config.ring_size as usize
    }

    /// The index of the frame `desc` points into.
    pub fn index(&self, desc: &MemDesc) -> usize {
        desc.addr / self.config.frame_size as usize
    }

    /// The kernel receives `bytes` on `side`: into the frame at the head of
    /// the fill ring, then onto the RX ring; a packet longer than a frame
    /// into as many frames as it needs, each but the last marked `contd`
    /// (copy mode with `XDP_USE_SG`). Returns the first frame's index, or
    /// `None` (counted as the kernel counts it) if the fill ring has too few
    /// frames or the RX ring too little room.
    pub fn receive(&mut self, side: Side, bytes: &[u8]) -> Option<usize> {
        let capacity = self.capacity();
        let frame_size = self.config.frame_size as usize;
        let room = frame_size - RX_HEADROOM;
        let pieces = bytes.len().div_ceil(room).max(1);
        let socket = self.socket_mut(side);
        if socket.fill.len() < pieces {
            socket.stats.fill_ring_empty += 1;
            socket.stats.rx_dropped += 1;
            return None;
        }
        if socket.rx.len() + pieces > capacity {
            // The kernel would keep the frames for the next packet.
            socket.stats.rx_ring_full += 1;
            socket.stats.rx_dropped += 1;
            return None;
        }
        let mut first = None;
        for (i, piece) in bytes.chunks(room).enumerate() {
            let socket = self.socket_mut(side);
            let desc = socket.fill.pop_front().expect("checked above");
            let index = desc.addr / frame_size;
            let desc = MemDesc {
                addr: index * frame_size + RX_HEADROOM,
                len: piece.len(),
                contd: i + 1 < pieces,
            };
            socket.rx.push_back(desc);
            self.write(desc.addr, piece);
            first.get_or_insert(index);
        }
        if bytes.is_empty() {
            let socket = self.socket_mut(side);
            let desc = socket.fill.pop_front().expect("checked above");
            let index = desc.addr / frame_size;
            socket.rx.push_back(MemDesc {
                addr: index * frame_size + RX_HEADROOM,
                len: 0,
                contd: false,
            });
            first = Some(index);
        }
        first
    }

    /// The kernel takes `n` frames off `side`'s fill ring and keeps them
    /// (a receive in progress).
    pub fn hold(&mut self, side: Side, n: usize) {
        let socket = self.socket_mut(side);
        for _ in 0..n {
            let desc = socket.fill.pop_front().expect("a frame on the fill ring");
            socket.held.push(desc);
        }
    }

    /// Sends up to `max` frames off `side`'s TX ring, as far as the
    /// completion ring has room; returns how many.
    pub fn send(&mut self, side: Side, max: usize) -> usize {
        let capacity = self.capacity();
        let mut sent = 0;
        while sent < max && self.socket(side).comp.len() < capacity {
            let Some(desc) = self.socket_mut(side).tx.pop_front() else {
                break;
            };
            let bytes = self.read(&desc);
            let socket = self.socket_mut(side);
            socket.wire.push(bytes);
            socket.comp.push_back(desc);
            sent += 1;
        }
        sent
    }

    /// What `side` sent so far, taken off its wire.
    pub fn take_wire(&mut self, side: Side) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.socket_mut(side).wire)
    }

    /// Every frame on the free list, a ring or held by the kernel, by index
    /// (the worker's own are not here).
    pub fn placed(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self.free.iter().map(|d| self.index(d)).collect();
        for socket in std::iter::once(&self.lan).chain(&self.wan) {
            let rings = [&socket.fill, &socket.rx, &socket.tx, &socket.comp];
            for d in rings.into_iter().flatten().chain(&socket.held) {
                all.push(self.index(d));
            }
        }
        all
    }

    /// The data `desc` describes.
    pub fn read(&self, desc: &MemDesc) -> Vec<u8> {
        self.check(desc);
        self.umem[desc.addr..desc.addr + desc.len]
            .iter()
            .map(Cell::get)
            .collect()
    }

    fn write(&self, addr: usize, bytes: &[u8]) {
        for (cell, b) in self.umem[addr..addr + bytes.len()].iter().zip(bytes) {
            cell.set(*b);
        }
    }

    /// Panics unless `desc` lies inside one frame.
    fn check(&self, desc: &MemDesc) {
        let size = self.config.frame_size as usize;
        let start = desc.addr / size * size;
        assert!(
            desc.addr + desc.len <= start + size && start + size <= self.umem.len(),
            "descriptor {desc:?} leaves its frame"
        );
    }

    /// Panics if any of `descs` is on a ring already: two owners of a frame.
    fn check_unplaced(&self, descs: &[MemDesc]) {
        let placed = self.placed();
        for d in descs {
            self.check(d);
            let index = self.index(d);
            assert!(
                !placed.contains(&index),
                "frame {index} put on a ring twice"
            );
        }
    }

    /// Puts all of `descs` on `ring` of `side` if there is room, else none.
    fn produce(
        &mut self,
        side: Side,
        descs: &[MemDesc],
        ring: fn(&mut MemSocket) -> &mut VecDeque<MemDesc>,
    ) -> usize {
        self.check_unplaced(descs);
        let capacity = self.capacity();
        let ring = ring(self.socket_mut(side));
        if ring.len() + descs.len() > capacity {
            return 0;
        }
        ring.extend(descs);
        descs.len()
    }
}

fn consume(ring: &mut VecDeque<MemDesc>, descs: &mut [MemDesc]) -> usize {
    let n = ring.len().min(descs.len());
    for (slot, desc) in descs.iter_mut().zip(ring.drain(..n)) {
        *slot = desc;
    }
    n
}

impl QueueIo for MemQueue {
    type Desc = MemDesc;

    fn config(&self) -> XskConfig {
        self.config
    }

    fn queue(&self) -> u32 {
        0
    }

    fn has_wan(&self) -> bool {
        self.wan.is_some()
    }

    fn take_free(&mut self) -> Vec<MemDesc> {
        std::mem::take(&mut self.free)
    }

    fn put_free(&mut self, free: Vec<MemDesc>) {
        self.free = free;
    }

    fn rx_consume(&mut self, side: Side, descs: &mut [MemDesc]) -> usize {
        consume(&mut self.socket_mut(side).rx, descs)
    }

    fn tx_free(&mut self, side: Side, _wanted: u32) -> u32 {
        (self.capacity() - self.socket(side).tx.len()) as u32
    }

    fn tx_produce(&mut self, side: Side, descs: &[MemDesc]) -> usize {
        self.produce(side, descs, |s| &mut s.tx)
    }

    fn tx_wakeup(&mut self, side: Side) -> io::Result<()> {
        self.socket_mut(side).kicks += 1;
        if self.link_up {
            self.send(side, self.tx_budget);
        }
        Ok(())
    }

    fn tx_kick_budget(&self, _side: Side) -> u32 {
        self.tx_budget as u32
    }

    fn busy_polling(&self) -> bool {
        self.busy
    }

    fn busy_poll(&mut self) {
        if self.busy {
            self.polls += 1;
        }
    }

    fn busy_poll_unreachable(&self, _side: Side) -> bool {
        self.busy && self.no_napi
    }

    fn stop_busy_poll(&mut self) {
        self.busy = false;
    }

    fn tx_needs_wakeup(&self, _side: Side) -> bool {
        true
    }

    fn fill_free(&mut self, side: Side, _wanted: u32) -> u32 {
        (self.capacity() - self.socket(side).fill.len()) as u32
    }

    fn fill_produce(&mut self, side: Side, descs: &[MemDesc]) -> usize {
        self.produce(side, descs, |s| &mut s.fill)
    }

    fn comp_consume(&mut self, side: Side, descs: &mut [MemDesc]) -> usize {
        consume(&mut self.socket_mut(side).comp, descs)
    }

    fn occupancy(&mut self, side: Side) -> RingOccupancy {
        let s = self.socket(side);
        RingOccupancy {
            fill: s.fill.len() as u64,
            rx: s.rx.len() as u64,
            tx: s.tx.len() as u64,
            completion: s.comp.len() as u64,
        }
    }

    fn statistics(&self, side: Side) -> Option<SocketStats> {
        Some(self.socket(side).stats)
    }

    fn wait_readable(&self, _timeout: Duration, _bell: Option<RawFd>) -> bool {
        self.waits.set(self.waits.get() + 1);
        false
    }

    fn data_len(desc: &MemDesc) -> usize {
        desc.len
    }

    fn continues(desc: &MemDesc) -> bool {
        desc.contd
    }

    unsafe fn frame_mut(&self, desc: &MemDesc) -> (&mut [u8], usize) {
        let size = self.config.frame_size as usize;
        let start = desc.addr / size * size;
        let cells = &self.umem[start..start + size];
        // SAFETY: `Cell<u8>` has the layout of `u8` and may be written
        // through a shared reference; the caller owns the frame and holds
        // no other slice of it (the trait's contract), so this slice is the
        // only access to these bytes while it lives.
        let buf = unsafe { std::slice::from_raw_parts_mut(cells.as_ptr() as *mut u8, size) };
        (buf, desc.addr - start)
    }

    fn set_data(&self, desc: &mut MemDesc, offset: usize, len: usize) -> bool {
        let size = self.config.frame_size as usize;
        match offset.checked_add(len) {
            Some(end) if end <= size => {
                desc.addr = desc.addr / size * size + offset;
                desc.len = len;
                desc.contd = false;
                true
            }
            _ => false,
        }
    }
}
