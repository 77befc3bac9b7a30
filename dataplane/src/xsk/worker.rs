//! The forwarding worker of one queue: RX batch -> pipeline -> TX batch,
//! completions back to the free list, free frames back to the fill rings.
//! One thread, no locks, no allocation and at most a few syscalls per batch.
//! Generic over the queue's rings ([`QueueIo`]): [`QueueSockets`] in the
//! daemons, in-memory rings in the tests.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, TryRecvError};

use super::accounting::{
    account, FrameAccounting, FrameFlow, QueueFrames, RingOccupancy, SharedAccounting,
};
use super::busy_poll::DeviceTuning;
use super::neighbor_queue::{Held, InOrder, NeighborQueue, Release};
use super::rings::{QueueIo, Side};
use super::sockets::QueueSockets;
use super::sys::Doorbell;
use crate::capture::{self, Outcome, Record, Stage, Tap, TxKind};
use crate::pipeline::{
    write_gratuitous_arp, Counters, Lookup, NextHop, Pipeline, PipelineConfig, Port, Verdict,
    MAX_SEGMENTS, MAX_SUPER_FRAME,
};
use crate::stats::{CounterSnapshot, SharedCounters};

/// Work the control plane hands to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Send one gratuitous ARP on the home link: `addr` is at `mac`.
    Announce { addr: Ipv4Addr, mac: [u8; 6] },
}

/// What a worker shares with the rest of the process: its stop flag and its
/// counters, written by the worker only, read by anyone.
#[derive(Debug)]
pub struct WorkerShared {
    stop: AtomicBool,
    /// Where the queue's frames are.
    pub accounting: SharedAccounting,
    /// Pipeline and worker counters.
    pub counters: SharedCounters,
    /// Per binding slot, at `[3 * slot..]`: packets, bytes, and when the
    /// first packet since [`WorkerShared::arm_first_packet`] was forwarded
    /// (nanoseconds since `epoch`, 0: none yet).
    per_slot: Box<[AtomicU64]>,
    /// The worker's clock starts here.
    epoch: Instant,
    /// Capture: 0 off, else the generation of the tap in `tap`. The worker
    /// loads it (relaxed) once per loop turn; only when it changes does it
    /// lock `tap`.
    capture: AtomicU64,
    tap: Mutex<Option<Arc<Tap>>>,
    /// Loop turns so far: a worker that stops counting is stuck or gone
    /// (an idle one still turns every 10 ms). For health checks.
    turns: AtomicU64,
    /// Frames one TX kick sends at most (see [`QueueFrames`]).
    tx_kick_budget: AtomicU64,
    /// The queue's sockets are bound zero-copy.
    zero_copy: AtomicBool,
    /// Wakes the worker from its idle poll() for a command or a stop
    /// (`None`: no eventfd to be had; then it wakes at its timeout).
    doorbell: Option<Doorbell>,
}

/// Counters per binding slot.
const SLOT_STRIDE: usize = 3;

/// Busy turns between two publications of the counters and the frame
/// accounting. A busy turn moves at most one batch per socket (64 frames,
/// some tens of microseconds), so the published state is at most a few
/// milliseconds old, and `homeward health`'s turn counter moves well
/// within its 200 ms.
const PUBLISH_EVERY: u32 = 64;

/// How long a busy-polling worker keeps polling without sleeping after
/// the last frame it received: across the gaps of bursty traffic (tens of
/// milliseconds), not forever on an idle link.
pub const BUSY_POLL_LINGER_NS: u64 = 50_000_000;

impl WorkerShared {
    /// Shared state for a worker serving a table of `slots` binding slots.
    pub fn new(slots: usize) -> Arc<WorkerShared> {
        Arc::new(WorkerShared {
            stop: AtomicBool::new(false),
            accounting: SharedAccounting::default(),
            counters: SharedCounters::default(),
            per_slot: crate::cpu_hints::vec_on_huge_pages(slots * SLOT_STRIDE, || {
                AtomicU64::new(0)
            })
            .into_boxed_slice(),
            epoch: Instant::now(),
            capture: AtomicU64::new(0),
            tap: Mutex::new(None),
            turns: AtomicU64::new(0),
            tx_kick_budget: AtomicU64::new(0),
            zero_copy: AtomicBool::new(false),
            doorbell: Doorbell::new()
                .inspect_err(|e| {
                    tracing::warn!("no eventfd for a worker ({e}): commands wait out its idle poll")
                })
                .ok(),
        })
    }

    /// Wakes the worker if it sleeps: it has a command waiting.
    pub fn wake(&self) {
        if let Some(bell) = &self.doorbell {
            bell.ring();
        }
    }

    /// The worker's loop turns so far.
    pub fn turns(&self) -> u64 {
        self.turns.load(Relaxed)
    }

    /// Capture into `tap`; false if a capture runs already.
    pub(crate) fn install_tap(&self, tap: Arc<Tap>) -> bool {
        let Ok(mut slot) = self.tap.lock() else {
            return false;
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(tap);
        self.capture.store(capture::next_generation(), Relaxed);
        true
    }

    /// Stop capturing into `tap` (if it is the current one): the worker
    /// goes back to off at its next loop turn.
    pub(crate) fn remove_tap(&self, tap: &Arc<Tap>) {
        let Ok(mut slot) = self.tap.lock() else {
            return;
        };
        if slot.as_ref().is_some_and(|t| Arc::ptr_eq(t, tap)) {
            *slot = None;
            self.capture.store(0, Relaxed);
        }
    }

    /// The tap a worker seeing capture generation `generation` uses.
    fn current_tap(&self, generation: u64) -> Option<Arc<Tap>> {
        if generation == 0 {
            return None;
        }
        self.tap.lock().ok().and_then(|t| t.clone())
    }

    /// Whether the worker was asked to stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Every queue's counters summed, and each queue's frames: what the
    /// `stats` of both roles report.
    pub fn snapshot_all(workers: &[Arc<WorkerShared>]) -> (CounterSnapshot, Vec<QueueFrames>) {
        let mut total = CounterSnapshot::default();
        let mut frames = Vec::with_capacity(workers.len());
        for (queue, w) in workers.iter().enumerate() {
            let snapshot = w.counters.snapshot();
            total.add(&snapshot);
            frames.push(QueueFrames::new(
                queue,
                snapshot.pipeline.encapsulated,
                w.accounting.load(),
                w.tx_kick_budget.load(Relaxed) as u32,
                w.zero_copy.load(Relaxed),
            ));
        }
        (total, frames)
    }

    /// Ask the worker to finish: it drains its TX rings and returns.
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
        self.wake();
    }

    /// Packets and bytes this worker forwarded for binding slot `slot`.
    pub fn slot_counts(&self, slot: u32) -> (u64, u64) {
        let i = slot as usize * SLOT_STRIDE;
        match (self.per_slot.get(i), self.per_slot.get(i + 1)) {
            (Some(p), Some(b)) => (p.load(Relaxed), b.load(Relaxed)),
            _ => (0, 0),
        }
    }

    /// Forget when slot `slot` last saw its first packet: the next packet
    /// forwarded under it is recorded (a binding was made or moved).
    pub fn arm_first_packet(&self, slot: u32) {
        if let Some(f) = self.per_slot.get(slot as usize * SLOT_STRIDE + 2) {
            f.store(0, Relaxed);
        }
    }

    /// When this worker forwarded the first packet under slot `slot` since
    /// it was armed.
    pub fn first_packet(&self, slot: u32) -> Option<Instant> {
        let ns = self
            .per_slot
            .get(slot as usize * SLOT_STRIDE + 2)?
            .load(Relaxed);
        (ns != 0).then(|| self.epoch + Duration::from_nanos(ns))
    }

    /// Where the worker's clock (`now_ns`) starts.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Prefetches slot `slot`'s counters, which [`count_slot`](Self::count_slot)
    /// is about to update.
    #[inline]
    pub(crate) fn prefetch_slot(&self, slot: u32) {
        if let Some(c) = self.per_slot.get(slot as usize * SLOT_STRIDE) {
            crate::cpu_hints::prefetch(c);
        }
    }

    #[inline]
    pub(crate) fn count_slot(&self, slot: u32, bytes: usize, now_ns: u64) {
        let i = slot as usize * SLOT_STRIDE;
        if let Some([p, b, first]) = self.per_slot.get(i..i + SLOT_STRIDE) {
            // Single writer per worker: load+store, no locked instruction.
            p.store(p.load(Relaxed) + 1, Relaxed);
            b.store(b.load(Relaxed) + bytes as u64, Relaxed);
            // Written once per arming; read every packet, from the line (or,
            // for two slots in eight at a 24-byte stride, the pair of lines)
            // the packet and byte counts are in.
            if first.load(Relaxed) == 0 {
                first.store(now_ns.max(1), Relaxed);
            }
        }
    }
}

/// Per-queue worker: owns the queue's sockets, its pipeline and its frames.
pub struct Worker<L: Lookup, R: QueueIo = QueueSockets> {
    sockets: R,
    pipeline: Pipeline,
    lookup: L,
    commands: Receiver<Command>,
    shared: Arc<WorkerShared>,
    free: Vec<R::Desc>,
    flow: FrameFlow,
    /// Frames kept back from the fill rings for TX-side needs (fragments, ARP).
    reserve: usize,
    /// Loop turns, to read the kernel's socket counters now and then.
    iterations: u32,
    /// Busy turns publish counters and accounting every this many turns
    /// (idle turns always): the accounting reads all the rings' shared
    /// indices, cache lines the kernel writes from another CPU.
    publish_every: u32,
    /// When (ns on `started`'s clock) the last frame was received: a busy-
    /// polling worker keeps polling for [`BUSY_POLL_LINGER_NS`] after it.
    last_rx_ns: u64,
    started: Instant,
    /// Completions seen at the last TX kick, and kicks since then that
    /// completed nothing.
    kicked_at: u64,
    fruitless_kicks: u32,
    /// The capture generation last seen, and its tap (`None`: off).
    capture_generation: u64,
    tap: Option<Arc<Tap>>,
    /// The devices' busy-poll interrupt settings, shared with the other
    /// queues' workers: given back when busy polling turns out not to reach
    /// the device (see [`Worker::check_busy_poll`]).
    device_tuning: Option<Arc<Mutex<Vec<DeviceTuning>>>>,
    /// Whether busy polling was checked against the first frames received.
    busy_poll_checked: bool,
    /// Frames waiting for a home-link neighbour, looked at every turn
    /// while there are any.
    held: NeighborQueue<R::Desc>,
    /// Frames for VMs in switchover, by VM, the same.
    switchover: NeighborQueue<R::Desc>,
    /// A multi-buffer packet (a TSO super-frame) gathered so far, across
    /// RX batches; `gathering` while its last piece has not come.
    super_frame: SuperFrame<R::Desc>,
}

/// A super-frame being gathered from its pieces, and the segments cut from
/// it. Both buffers are allocated once, at their largest.
struct SuperFrame<D> {
    bytes: Vec<u8>,
    gathering: bool,
    /// A piece did not fit `bytes` (or was out of its frame): the rest is
    /// skipped and the packet counted as unsegmentable.
    overflow: bool,
    segments: Vec<D>,
}

/// Where a segment cut from a super-frame starts in its frame: where the
/// kernel puts a received frame (XDP's headroom), so encapsulation has the
/// same room to prepend.
const SEGMENT_AT: usize = 256;

/// Which way a frame goes through [`Worker::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// Just received.
    Received,
    /// Held in a switchover, now processed again.
    Released,
    /// Held in a switchover, for a VM that came home.
    Home,
}

/// How long a frame waits for its VM's switchover to end. The home agent
/// ends a switchover within its lifetime (at most 10 s) either way; this
/// only bounds frames a lost update would leave.
pub const SWITCHOVER_MAX_WAIT_NS: u64 = 15_000_000_000;

/// A stopped worker's queue: its sockets with every frame the worker held
/// back on their free list (the rest are in the kernel's rings), ready to
/// run again or to be handed to a successor process.
pub struct Parked<R = QueueSockets> {
    /// The accounting when it stopped.
    pub accounting: FrameAccounting,
    /// The sockets; `frames` is the worker's free list.
    pub sockets: R,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("queue", &self.sockets.queue)
            .field("free", &self.sockets.frames.len())
            .finish_non_exhaustive()
    }
}

/// The worker's per-batch descriptor arrays, allocated once by `run`.
struct Scratch<D> {
    rx: Vec<D>,
    lan_tx: Vec<D>,
    wan_tx: Vec<D>,
    comp: Vec<D>,
    /// Held frames released this turn: to tunnel (by ingress LAN, WAN),
    /// and home.
    released: [Vec<D>; 3],
}

impl<D: Copy + Default> Scratch<D> {
    /// `held`: the most frames a hold queue releases at once.
    fn new(batch: usize, held: usize) -> Self {
        Scratch {
            rx: vec![D::default(); batch],
            lan_tx: Vec::with_capacity(batch * 4),
            wan_tx: Vec::with_capacity(batch * 4),
            comp: vec![D::default(); batch * 2],
            released: std::array::from_fn(|_| Vec::with_capacity(held)),
        }
    }
}

impl<L: Lookup, R: QueueIo> Worker<L, R> {
    /// A worker over `sockets`; `ident_seed` spreads the outer
    /// Identification of different queues apart.
    pub fn new(
        sockets: R,
        config: PipelineConfig,
        lookup: L,
        commands: Receiver<Command>,
        shared: Arc<WorkerShared>,
    ) -> Self {
        let mut sockets = sockets;
        let free = sockets.take_free();
        let xsk = sockets.config();
        let ident_seed = (sockets.queue() as u16).wrapping_mul(0x9e37);
        let reserve = xsk.batch * 4;
        // Adopted sockets (--takeover) come with frames already in the
        // rings or the kernel: every frame not on the free list. Counted as
        // handed over, on the TX side as far as the TX and completion rings
        // hold them, else on the RX side. Fresh sockets: nothing.
        let rings = occupancy(&mut sockets);
        let outside = (xsk.frame_count as u64).saturating_sub(free.len() as u64);
        let tx_side = (rings.tx + rings.completion).min(outside);
        let flow = FrameFlow {
            filled: outside - tx_side,
            sent: tx_side,
            ..FrameFlow::default()
        };
        // The per-slot first-packet times are on this clock.
        let started = shared.epoch;
        let budget = if sockets.has_wan() {
            sockets
                .tx_kick_budget(Side::Lan)
                .min(sockets.tx_kick_budget(Side::Wan))
        } else {
            sockets.tx_kick_budget(Side::Lan)
        };
        shared.tx_kick_budget.store(u64::from(budget), Relaxed);
        shared.zero_copy.store(sockets.zero_copy(), Relaxed);
        let switchover = NeighborQueue::with_limits(
            xsk.frame_count as usize,
            config.switchover_total as usize,
            config.switchover_per_vm as usize,
            SWITCHOVER_MAX_WAIT_NS,
        );
        Worker {
            pipeline: Pipeline::new(config, ident_seed),
            sockets,
            lookup,
            commands,
            shared,
            free,
            flow,
            reserve,
            iterations: 0,
            publish_every: PUBLISH_EVERY,
            last_rx_ns: 0,
            started,
            kicked_at: 0,
            fruitless_kicks: 0,
            capture_generation: 0,
            tap: None,
            held: NeighborQueue::new(xsk.frame_count as usize),
            switchover,
            super_frame: SuperFrame {
                bytes: Vec::with_capacity(MAX_SUPER_FRAME),
                gathering: false,
                overflow: false,
                segments: Vec::with_capacity(MAX_SEGMENTS),
            },
            device_tuning: None,
            busy_poll_checked: false,
        }
    }

    /// The devices' busy-poll settings, for the worker to give back if
    /// busy polling cannot reach the device.
    pub fn with_device_tuning(mut self, tuning: Arc<Mutex<Vec<DeviceTuning>>>) -> Self {
        self.device_tuning = Some(tuning);
        self
    }

    /// Runs until [`WorkerShared::stop`]; then drains in-flight
    /// transmissions, publishes the final frame accounting and hands back
    /// the sockets with the frames it held.
    pub fn run(mut self) -> Parked<R> {
        let mut scratch = Scratch::new(self.sockets.config().batch, self.switchover.capacity());
        self.refill();
        while !self.shared.stop.load(Relaxed) {
            self.step(&mut scratch);
        }
        self.park(&mut scratch)
    }

    /// One turn of the loop: completions, an RX batch per socket, commands,
    /// TX, refill, publish; sleeps (`idle`) if none of it found work.
    fn step(&mut self, s: &mut Scratch<R::Desc>) {
        self.iterations = self.iterations.wrapping_add(1);
        if self.iterations.is_multiple_of(4096) {
            self.read_socket_counters();
        }
        // Capture: one relaxed load a turn while off.
        let generation = self.shared.capture.load(Relaxed);
        if generation != self.capture_generation {
            self.capture_generation = generation;
            self.tap = self.shared.current_tap(generation);
        }
        let mut work = self.reclaim(&mut s.comp);
        if !self.switchover.is_empty() {
            work += self.release_switchover(s);
        }
        if !self.held.is_empty() {
            work += self.release_held(&mut s.lan_tx);
        }
        work += self.receive(Side::Lan, &mut s.rx, &mut s.lan_tx, &mut s.wan_tx);
        if self.sockets.has_wan() {
            work += self.receive(Side::Wan, &mut s.rx, &mut s.lan_tx, &mut s.wan_tx);
        }
        work += self.commands(&mut s.lan_tx);
        self.transmit(Side::Lan, &mut s.lan_tx);
        self.transmit(Side::Wan, &mut s.wan_tx);
        self.refill();
        // Idle turns publish too, unless busy polling: those come by the
        // million.
        let polling = work == 0 && self.lingering();
        if (work == 0 && !polling) || self.iterations.is_multiple_of(self.publish_every) {
            self.publish();
        }
        if polling {
            self.sockets.busy_poll();
            // Frames left on a TX ring by a busy kernel: a kick (which
            // busy-polls too), as `idle` would.
            if self.flow.tx_side() > 0 {
                for &side in self.sides() {
                    let _ = self.sockets.tx_wakeup(side);
                }
            }
        } else if work == 0 {
            self.idle();
        }
    }

    /// After the loop: drain, last counters and accounting, and the sockets
    /// back with the free list.
    fn park(mut self, s: &mut Scratch<R::Desc>) -> Parked<R> {
        // A successor (or a restart) starts without them: they are drops.
        for h in self.held.drain() {
            self.pipeline.drop_held();
            self.free.push(h.desc);
        }
        for h in self.switchover.drain() {
            let c = &self.shared.counters;
            c.switchover_expired.fetch_add(1, Relaxed);
            self.free.push(h.desc);
        }
        self.drain(&mut s.comp);
        self.read_socket_counters();
        let accounting = self.publish();
        let mut sockets = self.sockets;
        sockets.put_free(self.free);
        Parked {
            accounting,
            sockets,
        }
    }

    /// The kernel's XDP_STATISTICS for the queue's sockets (one getsockopt
    /// each): drops that happen before a frame reaches the worker.
    fn read_socket_counters(&mut self) {
        let mut sum = [0u64; 5];
        let wan = self.sockets.has_wan().then_some(Side::Wan);
        for side in [Some(Side::Lan), wan].into_iter().flatten() {
            if let Some(s) = self.sockets.statistics(side) {
                sum[0] += s.rx_dropped;
                sum[1] += s.rx_ring_full;
                sum[2] += s.fill_ring_empty;
                sum[3] += s.rx_invalid;
                sum[4] += s.tx_invalid;
            }
        }
        let c = &self.shared.counters.socket;
        for (counter, value) in [
            &c.rx_dropped,
            &c.rx_ring_full,
            &c.fill_ring_empty,
            &c.rx_invalid,
            &c.tx_invalid,
        ]
        .into_iter()
        .zip(sum)
        {
            counter.store(value, Relaxed);
        }
    }

    /// One RX batch from `side` through the pipeline.
    fn receive(
        &mut self,
        side: Side,
        rx_descs: &mut [R::Desc],
        lan_tx: &mut Vec<R::Desc>,
        wan_tx: &mut Vec<R::Desc>,
    ) -> usize {
        let n = self.sockets.rx_consume(side, rx_descs);
        if n == 0 {
            return 0;
        }
        self.flow.received += n as u64;
        if !self.busy_poll_checked && self.sockets.busy_polling() {
            self.check_busy_poll(side);
        }
        let now_ns = self.started.elapsed().as_nanos() as u64;
        self.last_rx_ns = now_ns;
        let ingress = match side {
            Side::Lan => Port::Lan,
            Side::Wan => Port::Wan,
        };
        let frames = rx_descs.get_mut(..n).unwrap_or_default();
        if !self.super_frame.gathering && !frames.iter().any(R::continues) {
            self.process(frames, ingress, Pass::Received, now_ns, lan_tx, wan_tx);
            return n;
        }
        // Pieces of multi-buffer packets among whole frames: the whole
        // frames go through in runs, each packet's pieces are gathered and
        // its segments go through when its last piece comes, in order.
        let mut run = 0;
        for i in 0..frames.len() {
            let desc = frames[i];
            if !self.super_frame.gathering && !R::continues(&desc) {
                continue;
            }
            if let Some(whole) = frames.get_mut(run..i) {
                self.process(whole, ingress, Pass::Received, now_ns, lan_tx, wan_tx);
            }
            run = i + 1;
            self.gather(desc);
            if !self.super_frame.gathering {
                self.segment(ingress, now_ns, lan_tx, wan_tx);
            }
        }
        if let Some(whole) = frames.get_mut(run..) {
            self.process(whole, ingress, Pass::Received, now_ns, lan_tx, wan_tx);
        }
        n
    }

    /// Once frames arrived on `side`, its socket names the NAPI instance
    /// busy polling runs, unless the device has none for it (veth, generic
    /// XDP). Then polling only burns the core while the deferred interrupts
    /// wait for `gro_flush_timeout` (200 us a frame, measured on veth): stop
    /// it and give the devices their interrupt settings back.
    fn check_busy_poll(&mut self, side: Side) {
        self.busy_poll_checked = true;
        if !self.sockets.busy_poll_unreachable(side) {
            return;
        }
        self.sockets.stop_busy_poll();
        let restored = match self.device_tuning.as_ref().map(|t| t.lock()) {
            Some(Ok(mut tuning)) => std::mem::take(&mut *tuning).len(),
            _ => 0,
        };
        tracing::warn!(
            queue = self.sockets.queue(),
            devices_restored = restored,
            side = ?side,
            "busy polling cannot reach the device's receive processing (its AF_XDP \
             socket has no NAPI id, as on veth or with generic XDP): stopped; the worker \
             sleeps in poll() again and the devices' interrupt settings are back. Set \
             busy_poll = false for this interface"
        );
    }

    /// Copies one piece of a multi-buffer packet onto the super-frame and
    /// frees its frame.
    fn gather(&mut self, desc: R::Desc) {
        let len = R::data_len(&desc);
        let sf = &mut self.super_frame;
        // SAFETY: `desc` came off the RX ring, so the frame is this
        // worker's until it goes back on the free list below.
        let (buf, start) = unsafe { self.sockets.frame_mut(&desc) };
        match buf.get(start..start.saturating_add(len)) {
            Some(piece) if !sf.overflow && sf.bytes.len() + piece.len() <= MAX_SUPER_FRAME => {
                sf.bytes.extend_from_slice(piece);
            }
            _ => sf.overflow = true,
        }
        sf.gathering = R::continues(&desc);
        let mut desc = desc;
        // Clears the piece's XDP_PKT_CONTD before the frame is reused.
        self.sockets.set_data(&mut desc, start, 0);
        self.free.push(desc);
    }

    /// Cuts the gathered super-frame into segments, each in a frame of its
    /// own, and sends them through the pipeline; all or none.
    fn segment(
        &mut self,
        ingress: Port,
        now_ns: u64,
        lan_tx: &mut Vec<R::Desc>,
        wan_tx: &mut Vec<R::Desc>,
    ) {
        let mut segments = std::mem::take(&mut self.super_frame.segments);
        let bytes = std::mem::take(&mut self.super_frame.bytes);
        if std::mem::take(&mut self.super_frame.overflow) {
            self.pipeline.super_frame_too_long();
        } else if let Ok(plan) = self.pipeline.plan_segments(&bytes, now_ns) {
            if self.free.len() < plan.count() {
                self.shared.counters.no_free_frame.fetch_add(1, Relaxed);
            } else {
                for index in 0..plan.count() {
                    let Some(mut desc) = self.free.pop() else {
                        break;
                    };
                    // SAFETY: a free frame, owned by this worker.
                    let (dst, _) = unsafe { self.sockets.frame_mut(&desc) };
                    match self
                        .pipeline
                        .write_segment(&bytes, &plan, index, dst, SEGMENT_AT)
                    {
                        Some(len) if self.sockets.set_data(&mut desc, SEGMENT_AT, len) => {
                            segments.push(desc);
                        }
                        _ => {
                            self.shared.counters.bad_verdict.fetch_add(1, Relaxed);
                            self.free.push(desc);
                        }
                    }
                }
                self.process(
                    &mut segments,
                    ingress,
                    Pass::Received,
                    now_ns,
                    lan_tx,
                    wan_tx,
                );
            }
        }
        segments.clear();
        self.super_frame.segments = segments;
        let mut bytes = bytes;
        bytes.clear();
        self.super_frame.bytes = bytes;
    }

    /// Asks for the table slots and per-slot counters the frames will need
    /// before processing any of them: with many bindings each is a cache
    /// miss, and a batch's misses then overlap instead of queueing.
    fn prefetch(&self, frames: &[R::Desc], ingress: Port) {
        for desc in frames {
            // SAFETY: as in `process`: `desc` came off the RX ring, the frame
            // is this worker's and no other reference to it exists; the
            // slice is only read, and gone before `process` takes its own.
            let (buf, start) = unsafe { self.sockets.frame_mut(desc) };
            // The line in front of the frame, where a tunnel header goes.
            let headroom = start.saturating_sub(crate::pipeline::MIN_HEADROOM);
            crate::cpu_hints::prefetch(buf.as_ptr().wrapping_add(headroom));
            let key = self
                .pipeline
                .binding_key(buf, start, R::data_len(desc), ingress);
            if let Some(slot) = key.and_then(|vm| self.lookup.prefetch(vm)) {
                self.shared.prefetch_slot(slot);
            }
        }
    }

    /// Frames through the pipeline and onto the TX lists (or the free list,
    /// or a hold queue), each as its verdict says.
    fn process(
        &mut self,
        frames: &mut [R::Desc],
        ingress: Port,
        pass: Pass,
        now_ns: u64,
        lan_tx: &mut Vec<R::Desc>,
        wan_tx: &mut Vec<R::Desc>,
    ) {
        let one_armed = !self.sockets.has_wan();
        // The socket each port's frames leave by, as the capture names it.
        let side_port = |port: Port| if one_armed { Port::Lan } else { port };
        let tap = self.tap.as_deref();
        if pass != Pass::Home {
            self.prefetch(frames, ingress);
        }
        for desc in frames.iter_mut() {
            let len = R::data_len(desc);
            // SAFETY: `desc` came off the RX ring, so the frame is owned by
            // this worker until it is put on a TX or fill ring; no other
            // reference to it exists.
            let (buf, start) = unsafe { self.sockets.frame_mut(desc) };
            // Capture on: the frame as received, before the rewrite.
            let mut before = None;
            if let Some(tap) = tap {
                let frame = buf.get(start..start.saturating_add(len)).unwrap_or(&[]);
                if tap.wants(frame) {
                    let record = Record::new(now_ns, Stage::In, side_port(ingress), frame);
                    before = Some((record, Produced::of(self.pipeline.counters())));
                }
            }
            let lookup = InOrder {
                lookup: &self.lookup,
                neighbor: &self.held,
                switchover: &self.switchover,
            };
            let verdict = match pass {
                Pass::Received | Pass::Released => self
                    .pipeline
                    .process(buf, start, len, ingress, now_ns, &lookup),
                Pass::Home => self.pipeline.deliver_home(buf, start, len, &lookup),
            };
            let capture = |outcome: Outcome, after: Option<(&[u8], Port)>| {
                if let (Some(tap), Some((mut record, _))) = (tap, before) {
                    record.outcome = outcome;
                    if !tap.push(record) {
                        self.shared.counters.capture_dropped.fetch_add(1, Relaxed);
                    }
                    if let Some((frame, port)) = after {
                        let mut out = Record::new(now_ns, Stage::Out, port, frame);
                        out.outcome = outcome;
                        if !tap.push(out) {
                            self.shared.counters.capture_dropped.fetch_add(1, Relaxed);
                        }
                    }
                }
            };
            match verdict {
                Verdict::Tx {
                    port,
                    start,
                    len,
                    slot,
                } => {
                    if !self.sockets.set_data(desc, start, len) {
                        self.shared.counters.bad_verdict.fetch_add(1, Relaxed);
                        capture(Outcome::WorkerDrop("bad_verdict"), None);
                        self.free.push(*desc);
                        continue;
                    }
                    if let Some(slot) = slot {
                        self.shared.count_slot(slot, len, now_ns);
                    }
                    if let Some((_, produced)) = before {
                        let outcome = Outcome::Tx {
                            port: side_port(port),
                            kind: produced.kind(self.pipeline.counters()),
                        };
                        let out = buf.get(start..start + len).unwrap_or(&[]);
                        capture(outcome, Some((out, side_port(port))));
                    }
                    match port {
                        Port::Wan if !one_armed => wan_tx.push(*desc),
                        _ => lan_tx.push(*desc),
                    }
                }
                Verdict::Fragments { port, plan, slot } => {
                    let out = match port {
                        Port::Wan if !one_armed => &mut *wan_tx,
                        _ => &mut *lan_tx,
                    };
                    // All pieces or none: a partial datagram never reassembles.
                    if self.free.len() < plan.count() {
                        self.shared.counters.no_free_frame.fetch_add(1, Relaxed);
                        capture(Outcome::WorkerDrop("no_free_frame"), None);
                        self.free.push(*desc);
                        continue;
                    }
                    let outcome = Outcome::Fragments {
                        port: side_port(port),
                        pieces: plan.count() as u16,
                    };
                    capture(outcome, None);
                    for index in 0..plan.count() {
                        let Some(mut piece) = self.free.pop() else {
                            break;
                        };
                        // SAFETY: `piece` is from the free list, so owned by
                        // this worker and distinct from `desc`'s frame; the
                        // source frame is only read.
                        let (dst, _) = unsafe { self.sockets.frame_mut(&piece) };
                        // SAFETY: as above; `desc` is still ours.
                        let (src, _) = unsafe { self.sockets.frame_mut(desc) };
                        match self.pipeline.write_fragment(src, &plan, index, dst) {
                            Some((s, l)) if self.sockets.set_data(&mut piece, s, l) => {
                                if let Some(slot) = slot {
                                    self.shared.count_slot(slot, l, now_ns);
                                }
                                if let (Some(tap), Some(_)) = (tap, before) {
                                    let piece_bytes = dst.get(s..s + l).unwrap_or(&[]);
                                    let mut record = Record::new(
                                        now_ns,
                                        Stage::Out,
                                        side_port(port),
                                        piece_bytes,
                                    );
                                    record.outcome = outcome;
                                    if !tap.push(record) {
                                        self.shared.counters.capture_dropped.fetch_add(1, Relaxed);
                                    }
                                }
                                out.push(piece);
                            }
                            _ => {
                                self.shared.counters.bad_verdict.fetch_add(1, Relaxed);
                                self.free.push(piece);
                            }
                        }
                    }
                    self.free.push(*desc);
                }
                Verdict::AwaitLanNeighbor {
                    addr,
                    start,
                    len,
                    slot,
                } => {
                    let held = Held {
                        desc: *desc,
                        addr,
                        start,
                        len,
                        slot,
                        since_ns: now_ns,
                        ingress,
                    };
                    let mut pushed = self.held.push(held);
                    // Full, but the neighbour resolved since this turn
                    // looked at the held frames (they are held only to
                    // stay ahead of this one): send them now, then hold
                    // this frame behind nothing, rather than drop it.
                    if let Err(h) = pushed {
                        if self.lookup.lan_neighbor_known(h.addr).is_some() {
                            release_ready(
                                &mut self.held,
                                &self.lookup,
                                &mut self.sockets,
                                &mut self.pipeline,
                                &self.shared,
                                &mut self.free,
                                now_ns,
                                lan_tx,
                            );
                            pushed = self.held.push(h);
                        }
                    }
                    let counters = &self.shared.counters;
                    match pushed {
                        Ok(()) => {
                            counters.neighbor_queued.fetch_add(1, Relaxed);
                            capture(Outcome::Held, None);
                        }
                        Err(h) => {
                            counters.neighbor_queue_full.fetch_add(1, Relaxed);
                            capture(Outcome::WorkerDrop("neighbor_queue_full"), None);
                            self.free.push(h.desc);
                        }
                    }
                }
                Verdict::Hold { vm, .. } => {
                    let held = Held {
                        desc: *desc,
                        addr: vm,
                        start,
                        len,
                        slot: None,
                        since_ns: now_ns,
                        ingress,
                    };
                    let counters = &self.shared.counters;
                    match self.switchover.push(held) {
                        Ok(()) => {
                            if pass == Pass::Received {
                                counters.switchover_held.fetch_add(1, Relaxed);
                            }
                            capture(Outcome::Held, None);
                        }
                        Err(h) => {
                            counters.switchover_buffer_full.fetch_add(1, Relaxed);
                            capture(Outcome::WorkerDrop("switchover_buffer_full"), None);
                            self.free.push(h.desc);
                        }
                    }
                }
                Verdict::Drop(reason) => {
                    capture(Outcome::Drop(reason), None);
                    self.free.push(*desc);
                }
            }
        }
    }

    /// Frames held for a VM in switchover whose binding changed: processed
    /// again (it has a care-of address: into the tunnel) or delivered on the
    /// home link (it has none: it came home). All at once and before this
    /// turn's receive, so the VM's frames keep their order.
    fn release_switchover(&mut self, s: &mut Scratch<R::Desc>) -> usize {
        let now_ns = self.started.elapsed().as_nanos() as u64;
        let lookup = &self.lookup;
        let (free, shared) = (&mut self.free, &self.shared);
        let mut released: [Vec<R::Desc>; 3] = std::mem::take(&mut s.released);
        self.switchover.poll(
            now_ns,
            usize::MAX,
            |vm| match lookup.binding(vm) {
                Some(b) if b.care_of.is_unspecified() => None,
                // The registration and the care-of's neighbour entry land
                // a moment apart: released before the entry, the frames
                // would drop as `no_next_hop`. They wait for it (or expire).
                Some(b) => match lookup.next_hop(b.care_of) {
                    NextHop::Resolved { .. } => Some(true),
                    NextHop::Unresolved => None,
                },
                None => Some(false),
            },
            |h, release| match release {
                Release::Ready(tunnel) => {
                    let list = match (tunnel, h.ingress) {
                        (false, _) => 2,
                        (true, Port::Lan) => 0,
                        (true, Port::Wan) => 1,
                    };
                    released[list].push(h.desc);
                }
                Release::Expired => {
                    shared.counters.switchover_expired.fetch_add(1, Relaxed);
                    free.push(h.desc);
                }
            },
        );
        let mut n = 0;
        for (i, pass, ingress) in [
            (0, Pass::Released, Port::Lan),
            (1, Pass::Released, Port::Wan),
            (2, Pass::Home, Port::Lan),
        ] {
            let mut frames = std::mem::take(&mut released[i]);
            n += frames.len();
            self.shared
                .counters
                .switchover_released
                .fetch_add(frames.len() as u64, Relaxed);
            self.process(
                &mut frames,
                ingress,
                pass,
                now_ns,
                &mut s.lan_tx,
                &mut s.wan_tx,
            );
            frames.clear();
            released[i] = frames;
        }
        s.released = released;
        n
    }

    /// Held frames whose neighbour resolved go out on the LAN (before this
    /// turn's receive, so an address's frames keep their order); those
    /// that waited too long are dropped. Returns how many left the queue.
    fn release_held(&mut self, lan_tx: &mut Vec<R::Desc>) -> usize {
        let now_ns = self.started.elapsed().as_nanos() as u64;
        let before = self.held.len();
        release_ready(
            &mut self.held,
            &self.lookup,
            &mut self.sockets,
            &mut self.pipeline,
            &self.shared,
            &mut self.free,
            now_ns,
            lan_tx,
        );
        before - self.held.len()
    }

    /// Put `pending` on `side`'s TX ring and kick the kernel.
    fn transmit(&mut self, side: Side, pending: &mut Vec<R::Desc>) {
        if pending.is_empty() {
            return;
        }
        let size = self.sockets.config().ring_size;
        let rings = &mut self.sockets;
        let budget = rings.tx_kick_budget(side).max(1) as usize;
        let mut room = rings.tx_free(side, pending.len() as u32) as usize;
        // Copy mode sends at most `budget` frames per kick (32, the
        // kernel's TX_BATCH_SIZE, unless raised): a ring still full of
        // earlier frames gets a few more kicks before anything is dropped.
        let mut kicks = 0;
        while room < pending.len() && kicks < 8 {
            let _ = rings.tx_wakeup(side);
            room = rings.tx_free(side, pending.len() as u32) as usize;
            kicks += 1;
        }
        let count = room.min(pending.len());
        // After this call the kernel owns the first `count` frames until
        // they return on the completion ring.
        let sent = rings.tx_produce(side, &pending[..count]);
        if rings.tx_needs_wakeup(side) {
            // One kick per `budget` frames on the ring: one with a raised
            // budget. EAGAIN/ENOBUFS: the kernel is busy; the frames stay
            // queued and are kicked again. Asking for the whole ring makes
            // the count exact.
            let queued = size.saturating_sub(rings.tx_free(side, size)) as usize;
            for _ in 0..kicks_for(queued, budget) {
                if rings.tx_wakeup(side).is_err() {
                    break;
                }
            }
        }
        self.flow.sent += sent as u64;
        if sent < pending.len() {
            let dropped = (pending.len() - sent) as u64;
            self.shared
                .counters
                .tx_ring_full
                .fetch_add(dropped, Relaxed);
            self.free.extend_from_slice(&pending[sent..]);
        }
        pending.clear();
    }

    /// The sides this queue has sockets on.
    fn sides(&self) -> &'static [Side] {
        if self.sockets.has_wan() {
            &[Side::Lan, Side::Wan]
        } else {
            &[Side::Lan]
        }
    }

    /// Completed transmissions back to the free list.
    fn reclaim(&mut self, comp_descs: &mut [R::Desc]) -> usize {
        let mut total = 0;
        for &side in self.sides() {
            let n = self.sockets.comp_consume(side, comp_descs);
            self.free.extend_from_slice(&comp_descs[..n]);
            total += n;
        }
        self.flow.completed += total as u64;
        total
    }

    /// Top the fill rings up from the free list, keeping a reserve back.
    fn refill(&mut self) {
        let batch = self.sockets.config().batch;
        for &side in self.sides() {
            let spare = self.free.len().saturating_sub(self.reserve);
            if spare == 0 {
                return;
            }
            let room = self.sockets.fill_free(side, batch as u32) as usize;
            let count = room.min(spare);
            if count == 0 {
                continue;
            }
            let from = self.free.len() - count;
            // The kernel owns these frames until they come back on the RX
            // ring.
            let filled = self.sockets.fill_produce(side, &self.free[from..]);
            self.free.truncate(self.free.len() - filled);
            self.flow.filled += filled as u64;
        }
    }

    /// Control-plane work: gratuitous ARP on the home link.
    fn commands(&mut self, lan_tx: &mut Vec<R::Desc>) -> usize {
        let mut done = 0;
        loop {
            match self.commands.try_recv() {
                Ok(Command::Announce { addr, mac }) => {
                    let Some(mut desc) = self.free.pop() else {
                        self.shared.counters.no_free_frame.fetch_add(1, Relaxed);
                        continue;
                    };
                    // SAFETY: a free frame, owned by this worker.
                    let (buf, start) = unsafe { self.sockets.frame_mut(&desc) };
                    let len = buf
                        .get_mut(start..)
                        .map_or(0, |b| write_gratuitous_arp(b, mac, addr, None));
                    if len > 0 && self.sockets.set_data(&mut desc, start, len) {
                        self.shared.counters.announcements.fetch_add(1, Relaxed);
                        lan_tx.push(desc);
                    } else {
                        self.free.push(desc);
                    }
                    done += 1;
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return done,
            }
        }
    }

    /// Nothing to do: sleep in poll() until a socket has frames, or briefly
    /// if transmissions are still completing.
    fn idle(&mut self) {
        // Copy mode: frames still on a TX ring met a busy kernel (EAGAIN);
        // kick again rather than sleep, or they would wait out the timeout.
        // A link that stays down must not make this a busy loop, so after
        // a run of kicks without a completion, sleep 1 ms between kicks.
        if self.flow.tx_side() > 0 {
            for &side in self.sides() {
                let _ = self.sockets.tx_wakeup(side);
            }
            if self.flow.completed == self.kicked_at {
                self.fruitless_kicks = self.fruitless_kicks.saturating_add(1);
            } else {
                self.kicked_at = self.flow.completed;
                self.fruitless_kicks = 0;
            }
            if self.fruitless_kicks > 64 {
                self.sleep(Duration::from_millis(1));
            }
            return;
        }
        self.read_socket_counters();
        // Held frames are released when their neighbour resolves, which
        // does not wake poll(): look again soon.
        let wait = if self.held.is_empty() && self.switchover.is_empty() {
            10
        } else {
            1
        };
        self.sleep(Duration::from_millis(wait));
    }

    /// Sleeps in poll() until a socket has frames, the doorbell rings (a
    /// command, a stop: answered by the next turn) or `timeout` passes.
    fn sleep(&self, timeout: Duration) {
        let bell = self.shared.doorbell.as_ref();
        if self.sockets.wait_readable(timeout, bell.map(Doorbell::fd)) {
            if let Some(b) = bell {
                // Before the next turn looks at the commands: a ring after
                // this is for a command that turn will see, or the next.
                b.clear();
            }
        }
    }

    /// Whether a busy-polling worker polls on rather than sleeps: it
    /// received a frame within [`BUSY_POLL_LINGER_NS`].
    fn lingering(&self) -> bool {
        self.sockets.busy_polling()
            && (self.started.elapsed().as_nanos() as u64).saturating_sub(self.last_rx_ns)
                < BUSY_POLL_LINGER_NS
    }

    /// Stop: wait (bounded) for every transmission to complete.
    fn drain(&mut self, comp_descs: &mut [R::Desc]) {
        let deadline = Instant::now() + Duration::from_millis(500);
        while self.flow.tx_side() > 0 && Instant::now() < deadline {
            if self.reclaim(comp_descs) == 0 {
                self.idle();
            }
        }
    }

    /// Publish counters and the frame accounting; returns the accounting.
    fn publish(&mut self) -> FrameAccounting {
        self.shared.turns.store(u64::from(self.iterations), Relaxed);
        self.shared.counters.publish(self.pipeline.counters());
        let rings = occupancy(&mut self.sockets);
        let a = account(
            self.sockets.config().frame_count as u64,
            self.free.len() as u64,
            0,
            (self.held.len() + self.switchover.len()) as u64,
            self.flow,
            rings,
        );
        self.shared.accounting.publish(&a);
        a
    }
}

impl<L: Lookup> Worker<L, QueueSockets> {
    /// The queue's socket file descriptors (LAN, and WAN unless one-armed).
    pub fn fds(&self) -> (RawFd, Option<RawFd>) {
        (self.sockets.lan.fd, self.sockets.wan.as_ref().map(|w| w.fd))
    }
}

/// What the pipeline had produced before a captured frame: which counter
/// moves tells what a `Verdict::Tx` was.
#[derive(Clone, Copy)]
struct Produced {
    encapsulated: u64,
    decapsulated: u64,
    arp_replies: u64,
    icmp_sent: u64,
}

impl Produced {
    fn of(c: &Counters) -> Produced {
        Produced {
            encapsulated: c.encapsulated,
            decapsulated: c.decapsulated,
            arp_replies: c.arp_replies,
            icmp_sent: c.icmp_sent,
        }
    }

    fn kind(&self, now: &Counters) -> TxKind {
        if now.encapsulated != self.encapsulated {
            TxKind::Encapsulated
        } else if now.decapsulated != self.decapsulated {
            TxKind::Decapsulated
        } else if now.arp_replies != self.arp_replies {
            TxKind::ArpReply
        } else if now.icmp_sent != self.icmp_sent {
            TxKind::IcmpError
        } else {
            TxKind::Other
        }
    }
}

/// Kicks that send `queued` frames at `budget` frames a kick; at most 8
/// per turn (the rest go at the next turn's kicks).
fn kicks_for(queued: usize, budget: usize) -> usize {
    queued.div_ceil(budget.max(1)).min(8)
}

/// The entries in all of `sockets`' rings.
fn occupancy<R: QueueIo>(sockets: &mut R) -> RingOccupancy {
    let mut rings = sockets.occupancy(Side::Lan);
    if sockets.has_wan() {
        rings.add(sockets.occupancy(Side::Wan));
    }
    rings
}

/// The held frames whose neighbour resolved go to `lan_tx`, in arrival
/// order; those that waited too long are dropped. The worker's fields
/// one by one, so that a turn can call it while it holds others.
#[allow(clippy::too_many_arguments)]
fn release_ready<R: QueueIo, L: Lookup>(
    held: &mut NeighborQueue<R::Desc>,
    lookup: &L,
    sockets: &mut R,
    pipeline: &mut Pipeline,
    shared: &WorkerShared,
    free: &mut Vec<R::Desc>,
    now_ns: u64,
    lan_tx: &mut Vec<R::Desc>,
) {
    held.poll(
        now_ns,
        usize::MAX,
        |addr| lookup.lan_neighbor_known(addr),
        |mut h, release| {
            let Release::Ready(mac) = release else {
                pipeline.drop_held();
                free.push(h.desc);
                return;
            };
            // SAFETY: a held frame is owned by this worker (it left the
            // RX ring and is on no other ring or list).
            let (buf, _) = unsafe { sockets.frame_mut(&h.desc) };
            if pipeline.deliver_held(buf, h.start, h.len, mac)
                && sockets.set_data(&mut h.desc, h.start, h.len)
            {
                if let Some(slot) = h.slot {
                    shared.count_slot(slot, h.len, now_ns);
                }
                shared.counters.neighbor_released.fetch_add(1, Relaxed);
                lan_tx.push(h.desc);
            } else {
                shared.counters.bad_verdict.fetch_add(1, Relaxed);
                free.push(h.desc);
            }
        },
    );
}

#[cfg(test)]
mod tests;
