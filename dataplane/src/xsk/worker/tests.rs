//! The worker on in-memory rings: one loop turn at a time, no threads, no
//! sockets. Inputs and expected outputs come from the pipeline's fixtures.

use crossbeam::channel::Sender;
use etherparse::{ArpOperation, ArpPacketSlice, EtherType, Ethernet2Header};

use super::*;
use crate::pipeline::testutil::*;
use crate::pipeline::DropReason;
use crate::xsk::memqueue::{MemDesc, MemQueue, RX_HEADROOM};
use crate::xsk::XskConfig;

/// 64 frames, rings of 16, batches of 4: the worker fills both fill rings
/// (32) and keeps the other 32 (at least 16, four batches, are kept back).
const XSK: XskConfig = XskConfig {
    frame_count: 64,
    frame_size: 2048,
    ring_size: 16,
    batch: 4,
};

struct Harness {
    worker: Worker<TestLookup, MemQueue>,
    scratch: Scratch<MemDesc>,
    commands: Sender<Command>,
    shared: Arc<WorkerShared>,
}

impl Harness {
    fn new(xsk: XskConfig, one_armed: bool, config: PipelineConfig) -> Harness {
        Harness::over(MemQueue::new(xsk, one_armed), config)
    }

    /// A worker over `queue` as it is (adopted, perhaps), before its
    /// first refill.
    fn adopt(queue: MemQueue) -> Harness {
        let (commands, receiver) = crossbeam::channel::unbounded();
        let shared = WorkerShared::new(16);
        let mut worker = Worker::new(queue, config(), lookup(), receiver, shared.clone());
        // Every turn, so each step's counters can be checked; the
        // throttle has a test of its own.
        worker.publish_every = 1;
        Harness {
            scratch: Scratch::new(worker.sockets.config().batch, worker.switchover.capacity()),
            worker,
            commands,
            shared,
        }
    }

    /// A worker over `queue` as `run` starts it: fill rings topped up.
    fn over(queue: MemQueue, config: PipelineConfig) -> Harness {
        let mut h = Harness::adopt(queue);
        h.worker.pipeline = Pipeline::new(config, 0);
        h.worker.refill();
        h
    }

    fn q(&mut self) -> &mut MemQueue {
        &mut self.worker.sockets
    }

    fn step(&mut self) {
        self.worker.step(&mut self.scratch);
    }

    /// Receives `frame` on `side` and runs one turn; the frame's index.
    fn forward(&mut self, side: Side, frame: &[u8]) -> usize {
        let index = self
            .q()
            .receive(side, frame)
            .expect("a frame to receive into");
        self.step();
        index
    }

    /// Receives `frame` on `side` and runs only the receive and transmit
    /// of a turn: as if what the held frames wait for came after the
    /// turn's look at them.
    fn receive_mid_turn(&mut self, side: Side, frame: &[u8]) {
        self.q()
            .receive(side, frame)
            .expect("a frame to receive into");
        let s = &mut self.scratch;
        self.worker
            .receive(side, &mut s.rx, &mut s.lan_tx, &mut s.wan_tx);
        self.worker.transmit(Side::Lan, &mut s.lan_tx);
        self.worker.transmit(Side::Wan, &mut s.wan_tx);
        self.worker.publish();
    }

    fn counters(&self) -> CounterSnapshot {
        self.shared.counters.snapshot()
    }

    fn accounting(&self) -> FrameAccounting {
        self.shared.accounting.load()
    }

    /// Every frame is in exactly one place: the worker's free list, a ring,
    /// or the kernel's hands; and the published accounting agrees.
    #[track_caller]
    fn assert_conserved(&self) {
        let q = &self.worker.sockets;
        let worker_free = self
            .worker
            .free
            .iter()
            .chain(self.worker.held.descs())
            .chain(self.worker.switchover.descs())
            .map(|d| q.index(d));
        assert_frames_once(q.placed().into_iter().chain(worker_free), &q.config());
        assert_eq!(
            self.accounting().unaccounted(),
            0,
            "{:?}",
            self.accounting()
        );
    }

    /// Stops the worker through `run`, as the daemons do.
    fn stop(self) -> Parked<MemQueue> {
        self.shared.stop();
        self.worker.run()
    }
}

/// Each of the UMEM's frames exactly once.
#[track_caller]
fn assert_frames_once(frames: impl Iterator<Item = usize>, xsk: &XskConfig) {
    let mut seen = vec![0u32; xsk.frame_count as usize];
    for i in frames {
        seen[i] += 1;
    }
    let wrong: Vec<(usize, u32)> = seen
        .into_iter()
        .enumerate()
        .filter(|&(_, n)| n != 1)
        .collect();
    assert!(wrong.is_empty(), "(frame, times placed): {wrong:?}");
}

fn two_armed() -> Harness {
    Harness::new(XSK, false, config())
}

#[test]
fn bound_vm_frame_leaves_on_wan_encapsulated() {
    let mut h = two_armed();
    let input = Ip::udp(LAN_HOST, VM, b"hello").frame();
    h.forward(Side::Lan, &input);

    let inner = inner_datagram(&input);
    let wire = h.q().take_wire(Side::Wan);
    assert_eq!(wire.len(), 1, "one frame out on the WAN");
    let want = expected_encap(&pipeline(0), Port::Wan, CARE_OF.into(), inner, 0);
    assert_eq!(wire[0], want, "\n{}", diff(&wire[0], &want));
    check_encapsulated(&wire[0], inner, 0);
    assert!(h.q().take_wire(Side::Lan).is_empty());

    let c = h.counters();
    assert_eq!(c.pipeline.encapsulated, 1);
    assert_eq!(h.shared.slot_counts(VM_SLOT), (1, want.len() as u64));
    // Sent on the kick after produce: the frame waits on the completion
    // ring for the next turn.
    assert_eq!(h.accounting().completion, 1);
    h.step();
    let a = h.accounting();
    assert_eq!((a.tx, a.completion, a.kernel_tx), (0, 0, 0));
    h.assert_conserved();
}

#[test]
fn reverse_tunnel_frame_leaves_on_lan_decapsulated() {
    let mut h = two_armed();
    let inner = Ip::udp(VM, LAN_HOST, b"back home");
    let input = Ip::ipip(CARE_OF, HA, inner.clone()).frame();
    h.forward(Side::Wan, &input);

    let wire = h.q().take_wire(Side::Lan);
    assert_eq!(wire.len(), 1);
    let want = expected_decap(&inner.datagram(), LAN_HOST_MAC);
    assert_eq!(wire[0], want, "\n{}", diff(&wire[0], &want));
    check_decapsulated(&wire[0], &inner.datagram(), LAN_HOST_MAC);
    assert_eq!(h.counters().pipeline.decapsulated, 1);
    h.assert_conserved();
}

#[test]
fn one_armed_queue_sends_the_tunnel_out_of_its_one_socket() {
    let mut h = Harness::new(XSK, true, config());
    let input = Ip::udp(LAN_HOST, VM, b"hello").frame();
    h.forward(Side::Lan, &input);
    let wire = h.q().take_wire(Side::Lan);
    assert_eq!(wire.len(), 1);
    check_encapsulated(&wire[0], inner_datagram(&input), 0);
    h.step();
    h.assert_conserved();
}

#[test]
fn unbound_frame_is_counted_and_its_frame_goes_back_to_the_fill_ring() {
    let mut h = two_armed();
    let fill_before = h.q().lan.fill.len();
    let input = Ip::udp(LAN_HOST, REMOTE, b"nobody home").frame();
    let index = h.forward(Side::Lan, &input);

    assert!(h.q().take_wire(Side::Lan).is_empty());
    assert!(h.q().take_wire(Side::Wan).is_empty());
    let c = h.counters();
    assert_eq!(c.pipeline.drops[DropReason::NoBinding as usize], 1);
    assert_eq!(c.pipeline.encapsulated, 0);
    // Refilled in the same turn: the ring is as full as before, and the
    // dropped frame is on it again.
    let q = h.q();
    assert_eq!(q.lan.fill.len(), fill_before);
    assert!(q.lan.fill.iter().any(|d| q.index(d) == index));
    h.assert_conserved();
}

#[test]
fn full_tx_ring_counts_the_overflow_keeps_its_frames_and_sends_once_room_frees() {
    let mut h = two_armed();
    h.q().link_up = false;
    let frame = |i: u8| Ip::udp(LAN_HOST, VM, &[i; 32]).frame();
    // Four batches fill the WAN TX ring (16); the fifth finds no room.
    for round in 0..5u8 {
        for i in 0..4 {
            h.q().receive(Side::Lan, &frame(round * 4 + i)).unwrap();
        }
        h.step();
    }
    let c = h.counters();
    assert_eq!(c.pipeline.encapsulated, 20);
    assert_eq!(c.tx_ring_full, 4, "the batch that found the ring full");
    let a = h.accounting();
    assert_eq!((a.tx, a.completion), (16, 0));
    assert!(h.q().take_wire(Side::Wan).is_empty(), "link down");
    assert!(
        h.q().wan.as_ref().unwrap().kicks >= 8,
        "kicked before dropping"
    );
    h.assert_conserved();

    // The link comes back: the idle turn kicks, the ring goes out; a turn
    // takes back at most two batches of completions.
    h.q().link_up = true;
    h.step();
    h.step();
    assert_eq!(h.accounting().completion, 8);
    h.step();
    let wire = h.q().take_wire(Side::Wan);
    assert_eq!(wire.len(), 16);
    for (i, out) in wire.iter().enumerate() {
        check_encapsulated(out, inner_datagram(&frame(i as u8)), i as u16);
    }
    let a = h.accounting();
    assert_eq!((a.tx, a.completion, a.kernel_tx), (0, 0, 0));

    // And new frames go straight out.
    h.forward(Side::Lan, &frame(99));
    let wire = h.q().take_wire(Side::Wan);
    assert_eq!(wire.len(), 1);
    check_encapsulated(&wire[0], inner_datagram(&frame(99)), 20);
    assert_eq!(h.counters().tx_ring_full, 4);
    h.assert_conserved();
}

#[test]
fn stop_drains_in_flight_tx_and_accounts_for_every_frame() {
    let mut h = two_armed();
    h.q().link_up = false;
    for i in 0..4u8 {
        h.q()
            .receive(Side::Lan, &Ip::udp(LAN_HOST, VM, &[i; 8]).frame())
            .unwrap();
    }
    h.step();
    assert_eq!(h.accounting().tx, 4);
    // Only the drain's kicks send them now.
    h.q().link_up = true;
    let shared = h.shared.clone();
    let parked = h.stop();

    let a = parked.accounting;
    assert_eq!(
        a,
        shared.accounting.load(),
        "the final accounting is published"
    );
    assert_eq!(a.total, u64::from(XSK.frame_count));
    assert_eq!((a.tx, a.completion, a.kernel_tx, a.worker), (0, 0, 0, 0));
    assert_eq!(a.unaccounted(), 0, "{a:?}");
    let mut q = parked.sockets;
    assert_eq!(q.take_wire(Side::Wan).len(), 4);
    // The parked free list and the rings hold every frame, once.
    assert_eq!(a.free, q.free.len() as u64);
    assert_frames_once(q.placed().into_iter(), &XSK);
}

#[test]
fn stop_with_a_stuck_link_gives_up_but_loses_nothing() {
    let mut h = two_armed();
    h.q().link_up = false;
    h.forward(Side::Lan, &Ip::udp(LAN_HOST, VM, b"stuck").frame());
    let parked = h.stop();
    let a = parked.accounting;
    assert_eq!(a.tx, 1, "still on the TX ring after the drain deadline");
    assert_eq!(a.unaccounted(), 0, "{a:?}");
    assert_frames_once(parked.sockets.placed().into_iter(), &XSK);
}

#[test]
fn announce_sends_a_gratuitous_arp_on_the_lan() {
    let mut h = two_armed();
    let mac = [2, 0, 0, 0, 0, 0x44];
    h.commands
        .send(Command::Announce {
            addr: VM.into(),
            mac,
        })
        .unwrap();
    h.step();

    let wire = h.q().take_wire(Side::Lan);
    assert_eq!(wire.len(), 1);
    assert!(h.q().take_wire(Side::Wan).is_empty());
    let out = &wire[0];
    assert_eq!(out.len(), 60);
    let (eth, rest) = Ethernet2Header::from_slice(out).unwrap();
    assert_eq!(
        (eth.destination, eth.source, eth.ether_type),
        ([0xff; 6], mac, EtherType::ARP)
    );
    let arp = ArpPacketSlice::from_slice(rest).unwrap();
    assert_eq!(arp.operation(), ArpOperation::REQUEST);
    assert_eq!(arp.sender_hw_addr(), &mac[..]);
    assert_eq!(arp.sender_protocol_addr(), &VM[..]);
    assert_eq!(arp.target_hw_addr(), &[0; 6][..]);
    assert_eq!(arp.target_protocol_addr(), &VM[..]);
    assert!(rest[28..].iter().all(|&b| b == 0), "padding zeroed");
    assert_eq!(h.counters().announcements, 1);
    h.step();
    h.assert_conserved();
}

#[test]
fn announcements_beyond_the_free_frames_count_no_free_frame() {
    // 48 frames: 16 on each fill ring, 16 kept back, as many as the LAN
    // TX ring holds.
    let xsk = XskConfig {
        frame_count: 48,
        ..XSK
    };
    let mut h = Harness::new(xsk, false, config());
    assert_eq!(h.worker.free.len(), 16);
    for _ in 0..17 {
        h.commands
            .send(Command::Announce {
                addr: VM.into(),
                mac: LAN_MAC,
            })
            .unwrap();
    }
    h.step();
    assert_eq!(h.q().take_wire(Side::Lan).len(), 16);
    let c = h.counters();
    assert_eq!(
        (c.announcements, c.no_free_frame, c.tx_ring_full),
        (16, 1, 0)
    );
    h.step();
    h.assert_conserved();
}

#[test]
fn fragments_go_out_on_the_wan_when_there_are_frames_for_them() {
    let mtu = 576;
    let mut cfg = config();
    cfg.tunnel_mtu = mtu;
    let mut h = Harness::new(XSK, false, cfg);
    let payload: Vec<u8> = (0..1200u32).map(|i| i as u8).collect();
    let input = Ip::udp(LAN_HOST, VM, &payload).df(false).frame();
    let index = h.forward(Side::Lan, &input);

    let wire = h.q().take_wire(Side::Wan);
    assert_eq!(wire.len(), 3);
    let original = inner_datagram(&input);
    let want = expected_fragments(&pipeline(0), original, mtu, 0);
    assert_eq!(wire, want);
    check_fragments(&wire, original, mtu, 0);
    let c = h.counters();
    assert_eq!((c.pipeline.fragmented, c.no_free_frame), (1, 0));
    // The source frame is recycled, the pieces' frames came back.
    let q = h.q();
    assert!(q.lan.fill.iter().any(|d| q.index(d) == index));
    h.step();
    assert_eq!(h.accounting().completion, 0);
    h.assert_conserved();
}

#[test]
fn fragments_without_enough_free_frames_count_no_free_frame() {
    // 24 data bytes a piece: 1208 bytes need 51 pieces, the worker has 32
    // frames to spare.
    let mut cfg = config();
    cfg.tunnel_mtu = 68;
    let mut h = Harness::new(XSK, false, cfg);
    assert_eq!(h.worker.free.len(), 32);
    let input = Ip::udp(LAN_HOST, VM, &[7; 1200]).df(false).frame();
    h.forward(Side::Lan, &input);

    assert!(h.q().take_wire(Side::Wan).is_empty(), "all pieces or none");
    let c = h.counters();
    assert_eq!((c.no_free_frame, c.pipeline.fragmented), (1, 1));
    assert_eq!(h.worker.free.len(), 32, "the source frame is back");
    h.assert_conserved();
}

#[test]
fn adopted_queue_seeds_the_accounting_with_the_frames_in_its_rings() {
    // A predecessor's queue: frames on every ring and one in the kernel.
    let mut q = MemQueue::new(XSK, false);
    let give = |q: &mut MemQueue, n: usize| q.free.split_off(q.free.len() - n);
    let fill = give(&mut q, 6);
    q.lan.fill.extend(fill);
    q.hold(Side::Lan, 1);
    for i in 0..2u8 {
        q.receive(Side::Lan, &Ip::udp(LAN_HOST, VM, &[i; 16]).frame())
            .unwrap();
    }
    let mut tx = give(&mut q, 5);
    for d in &mut tx {
        d.len = 60;
    }
    q.wan.as_mut().unwrap().tx.extend(tx);
    q.link_up = false;
    q.send(Side::Wan, 2);
    q.take_wire(Side::Wan);
    let free = q.free.len() as u64;

    let mut h = Harness::adopt(q);
    let a = h.worker.publish();
    assert_eq!(
        a,
        FrameAccounting {
            total: 64,
            free,
            fill: 3,
            rx: 2,
            worker: 0,
            held: 0,
            tx: 3,
            completion: 2,
            kernel_rx: 1,
            kernel_tx: 0,
        }
    );
    h.assert_conserved();

    // It carries on: the received frames go out, the sent ones come back.
    h.q().link_up = true;
    h.worker.refill();
    h.step();
    h.step();
    let wire = h.q().take_wire(Side::Wan);
    assert_eq!(wire.len(), 5, "3 left on the TX ring, then 2 received");
    for (i, out) in wire[3..].iter().enumerate() {
        let input = Ip::udp(LAN_HOST, VM, &[i as u8; 16]).frame();
        check_encapsulated(out, inner_datagram(&input), i as u16);
    }
    let a = h.accounting();
    assert_eq!((a.tx, a.completion, a.kernel_tx, a.kernel_rx), (0, 0, 0, 1));
    h.assert_conserved();
    let parked = h.stop();
    assert_eq!(parked.accounting.unaccounted(), 0);
    assert_frames_once(parked.sockets.placed().into_iter(), &XSK);
}

#[test]
fn kernel_drops_show_in_the_socket_counters() {
    let mut h = two_armed();
    // Empty the LAN fill ring, then receive once more than it held.
    let held = h.q().lan.fill.len();
    h.q().hold(Side::Lan, held);
    assert_eq!(h.q().receive(Side::Lan, &[0; 60]), None);
    // An idle turn reads the counters.
    h.step();
    assert!(h.q().waits.get() > 0, "idle turns sleep");
    let c = h.counters();
    assert_eq!((c.xsk_fill_ring_empty, c.xsk_rx_dropped), (1, 1));
    assert_eq!(h.accounting().kernel_rx, held as u64);
    h.assert_conserved();
}

#[test]
fn frames_from_the_rx_ring_start_where_the_kernel_put_them() {
    // The worker hands the pipeline the frame and its data offset: the
    // headroom in front is what encapsulation prepends into.
    let mut h = two_armed();
    h.q().link_up = false;
    h.forward(Side::Lan, &Ip::udp(LAN_HOST, VM, b"x").frame());
    let q = h.q();
    let desc = *q.wan.as_ref().unwrap().tx.front().unwrap();
    assert_eq!(desc.addr % XSK.frame_size as usize, RX_HEADROOM - 20);
    h.assert_conserved();
}

mod capture {
    use super::*;
    use crate::capture::{Capture, Outcome, Stage, TxKind, SNAP_LEN};

    fn records(cap: &Capture) -> Vec<Record> {
        let tap = cap.tap(0).expect("queue 0's tap");
        std::iter::from_fn(|| tap.pop()).collect()
    }

    #[test]
    fn a_forwarded_frame_yields_a_record_before_and_after_with_the_verdict() {
        let mut h = two_armed();
        let cap = Capture::start(std::slice::from_ref(&h.shared), None, 16).unwrap();
        let input = Ip::udp(LAN_HOST, VM, &[0x5a; 400]).frame();
        h.forward(Side::Lan, &input);
        let wire = h.q().take_wire(Side::Wan);
        assert_eq!(wire.len(), 1);

        let r = records(&cap);
        assert_eq!(r.len(), 2, "{r:?}");
        let want = Outcome::Tx {
            port: Port::Wan,
            kind: TxKind::Encapsulated,
        };
        let (before, after) = (&r[0], &r[1]);
        assert_eq!(
            (before.stage, before.port, before.outcome),
            (Stage::In, Port::Lan, want)
        );
        assert_eq!(before.orig_len as usize, input.len());
        assert_eq!(before.bytes(), &input[..SNAP_LEN], "snapped at SNAP_LEN");
        assert_eq!(
            (after.stage, after.port, after.outcome),
            (Stage::Out, Port::Wan, want)
        );
        assert_eq!(after.orig_len as usize, wire[0].len());
        assert_eq!(after.bytes(), &wire[0][..SNAP_LEN]);
        assert_eq!(before.comment(0), "in lan q0: tx wan (encapsulated)");
        assert_eq!(after.comment(0), "out wan q0: tx wan (encapsulated)");
        // Both on the batch's clock.
        assert_eq!(before.ns, after.ns);

        // A drop: one record, with its reason.
        let unbound = Ip::udp(LAN_HOST, REMOTE, b"nobody home").frame();
        h.forward(Side::Lan, &unbound);
        let r = records(&cap);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].outcome, Outcome::Drop(DropReason::NoBinding));
        assert_eq!(r[0].bytes(), &unbound[..]);
        assert_eq!(r[0].comment(0), "in lan q0: drop no_binding");

        // Stopped: the worker is off again at its next turn.
        drop(cap);
        h.forward(Side::Lan, &input);
        assert!(h.worker.tap.is_none());
        assert_eq!(h.q().take_wire(Side::Wan).len(), 1);
        assert_eq!(h.counters().capture_dropped, 0);
        h.assert_conserved();
    }

    #[test]
    fn the_filter_keeps_only_frames_that_involve_the_address() {
        let mut h = two_armed();
        let cap = Capture::start(std::slice::from_ref(&h.shared), Some(VM2.into()), 16).unwrap();
        h.forward(Side::Lan, &Ip::udp(LAN_HOST, VM, b"not this one").frame());
        assert!(records(&cap).is_empty());
        h.forward(Side::Lan, &Ip::udp(LAN_HOST, VM2, b"this one").frame());
        let r = records(&cap);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].stage, Stage::In);
        assert_eq!(r[1].stage, Stage::Out);
        h.assert_conserved();
    }

    #[test]
    fn a_full_capture_queue_counts_drops_and_the_worker_still_forwards() {
        let mut h = two_armed();
        let cap = Capture::start(std::slice::from_ref(&h.shared), None, 2).unwrap();
        let input = Ip::udp(LAN_HOST, VM, b"hello").frame();
        for _ in 0..3 {
            h.forward(Side::Lan, &input);
        }
        assert_eq!(h.q().take_wire(Side::Wan).len(), 3, "every frame forwarded");
        assert_eq!(h.counters().pipeline.encapsulated, 3);
        // The first frame's two records fit; the others' four did not.
        assert_eq!(cap.dropped(), 4);
        assert_eq!(h.counters().capture_dropped, 4);
        assert_eq!(records(&cap).len(), 2);
        h.assert_conserved();
    }

    #[test]
    fn one_capture_at_a_time() {
        let h = two_armed();
        let workers = std::slice::from_ref(&h.shared);
        let cap = Capture::start(workers, None, 4).unwrap();
        assert_eq!(
            Capture::start(workers, None, 4).unwrap_err(),
            crate::capture::CaptureError::Busy
        );
        drop(cap);
        assert!(Capture::start(workers, None, 4).is_ok());
    }
}

/// The reverse tunnel toward a home-link host the HA has not resolved yet.
fn to_unresolved(payload: &[u8]) -> (Ip, Vec<u8>) {
    let inner = Ip::udp(VM, UNRESOLVED, payload);
    let frame = Ip::ipip(CARE_OF, HA, inner.clone()).frame();
    (inner, frame)
}

const UNRESOLVED: [u8; 4] = [192, 0, 2, 77];
const UNRESOLVED_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x77];

/// The worker's next turn (it looks at its held frames every turn).
fn next_turn(h: &mut Harness) {
    h.step();
}

#[test]
fn reverse_tunnelled_frames_wait_for_their_lan_neighbour_in_order() {
    let mut h = two_armed();
    let (first, frame) = to_unresolved(b"first reply");
    h.forward(Side::Wan, &frame);
    let (second, frame) = to_unresolved(b"second reply");
    h.forward(Side::Wan, &frame);
    assert!(
        h.q().take_wire(Side::Lan).is_empty(),
        "nothing before the MAC"
    );
    assert_eq!(h.counters().neighbor_queued, 2);
    assert_eq!(h.accounting().held, 2);
    h.assert_conserved();
    next_turn(&mut h);
    assert!(h.q().take_wire(Side::Lan).is_empty(), "still unresolved");

    h.worker
        .lookup
        .neighbors
        .push((UNRESOLVED.into(), UNRESOLVED_MAC));
    next_turn(&mut h);
    let wire = h.q().take_wire(Side::Lan);
    assert_eq!(wire.len(), 2);
    check_decapsulated(&wire[0], &first.datagram(), UNRESOLVED_MAC);
    check_decapsulated(&wire[1], &second.datagram(), UNRESOLVED_MAC);
    let c = h.counters();
    assert_eq!((c.neighbor_released, c.pipeline.decapsulated), (2, 2));
    assert_eq!(c.pipeline.drops.iter().sum::<u64>(), 0);
    assert_eq!(h.shared.slot_counts(VM_SLOT).0, 2);
    h.step();
    assert_eq!(h.accounting().held, 0);
    h.assert_conserved();
}

/// The neighbour resolves between the turn's look at the held frames and
/// the next frame's lookup: that frame waits behind them, it does not
/// overtake them (a TSO burst's first segment once arrived last).
#[test]
fn a_neighbour_resolving_mid_turn_keeps_the_held_frames_first() {
    let mut h = two_armed();
    let (first, frame) = to_unresolved(b"first reply");
    h.forward(Side::Wan, &frame);
    assert_eq!(h.counters().neighbor_queued, 1);
    h.worker
        .lookup
        .neighbors
        .push((UNRESOLVED.into(), UNRESOLVED_MAC));
    let (second, frame) = to_unresolved(b"second reply");
    h.receive_mid_turn(Side::Wan, &frame);
    assert!(h.q().take_wire(Side::Lan).is_empty(), "none overtook");
    assert_eq!(h.counters().neighbor_queued, 2);
    h.assert_conserved();

    next_turn(&mut h);
    let wire = h.q().take_wire(Side::Lan);
    assert_eq!(wire.len(), 2);
    check_decapsulated(&wire[0], &first.datagram(), UNRESOLVED_MAC);
    check_decapsulated(&wire[1], &second.datagram(), UNRESOLVED_MAC);
    assert_eq!(h.counters().neighbor_released, 2);

    // Nothing held any more: the next frame goes straight out.
    let (third, frame) = to_unresolved(b"third reply");
    h.receive_mid_turn(Side::Wan, &frame);
    let wire = h.q().take_wire(Side::Lan);
    assert_eq!(wire.len(), 1);
    check_decapsulated(&wire[0], &third.datagram(), UNRESOLVED_MAC);
    assert_eq!(h.counters().neighbor_queued, 2);
    h.step();
    h.assert_conserved();
}

#[test]
fn held_frames_expire_and_a_stopping_worker_drops_them() {
    let mut h = two_armed();
    h.forward(Side::Wan, &to_unresolved(b"never resolved").1);
    // A second later by the worker's clock.
    h.worker.started -= Duration::from_nanos(super::super::neighbor_queue::MAX_WAIT_NS);
    h.step();
    assert_eq!(h.accounting().held, 0);
    assert_eq!(
        h.counters().pipeline.drop_count(DropReason::NoLanNeighbor),
        1
    );
    h.assert_conserved();

    h.forward(Side::Wan, &to_unresolved(b"held at stop").1);
    assert_eq!(h.accounting().held, 1);
    let shared = h.shared.clone();
    let parked = h.stop();
    assert_eq!(parked.accounting.held, 0);
    assert_eq!(parked.accounting.unaccounted(), 0);
    let c = shared.counters.snapshot();
    assert_eq!(c.pipeline.drop_count(DropReason::NoLanNeighbor), 2);
    assert_eq!((c.neighbor_queued, c.neighbor_released), (2, 0));
}

/// The queue is full of one address's frames when its neighbour resolves
/// mid-turn: the next frame for it does not drop (`neighbor_queue_full`)
/// but sends the held ones out first and waits behind nothing.
#[test]
fn a_full_queue_whose_neighbour_resolved_mid_turn_drops_nothing() {
    // 64 frames: at most 16 held.
    let mut h = two_armed();
    let mut sent = Vec::new();
    for i in 0..16u8 {
        let (inner, frame) = to_unresolved(&[i; 8]);
        h.forward(Side::Wan, &frame);
        sent.push(inner);
    }
    assert_eq!(h.accounting().held, 16);
    h.worker
        .lookup
        .neighbors
        .push((UNRESOLVED.into(), UNRESOLVED_MAC));
    let (inner, frame) = to_unresolved(b"one more");
    h.receive_mid_turn(Side::Wan, &frame);
    sent.push(inner);
    next_turn(&mut h);
    let wire = h.q().take_wire(Side::Lan);
    assert_eq!(wire.len(), 17, "none dropped");
    for (out, inner) in wire.iter().zip(&sent) {
        check_decapsulated(out, &inner.datagram(), UNRESOLVED_MAC);
    }
    let c = h.counters();
    assert_eq!(
        (
            c.neighbor_queued,
            c.neighbor_released,
            c.neighbor_queue_full
        ),
        (17, 17, 0)
    );
    h.step();
    assert_eq!(h.accounting().held, 0);
    h.assert_conserved();
}

#[test]
fn a_full_neighbour_queue_drops_and_counts() {
    // 64 frames: at most 16 held.
    let mut h = two_armed();
    for i in 0..17u8 {
        h.forward(Side::Wan, &to_unresolved(&[i; 8]).1);
    }
    let c = h.counters();
    assert_eq!((c.neighbor_queued, c.neighbor_queue_full), (16, 1));
    assert_eq!(
        c.drops().find(|(n, _)| *n == "neighbor_queue_full"),
        Some(("neighbor_queue_full", 1))
    );
    assert_eq!(h.accounting().held, 16);
    h.assert_conserved();
}

/// The lookup's VM binding in switchover (care-of unspecified), or moved
/// to `care_of`, or gone (`None`).
fn set_vm_binding(h: &mut Harness, care_of: Option<[u8; 4]>) {
    let bindings = &mut h.worker.lookup.bindings;
    bindings.retain(|(vm, _)| *vm != Ipv4Addr::from(VM));
    if let Some(c) = care_of {
        bindings.push((
            VM.into(),
            crate::pipeline::BindingRef {
                care_of: c.into(),
                slot: VM_SLOT,
            },
        ));
    }
}

/// The two frames a switchover held went into the tunnel, in order, and
/// nothing is held any more.
#[track_caller]
fn released_into_the_tunnel_in_order(h: &mut Harness, first: &[u8], second: &[u8]) {
    let wire = h.q().take_wire(Side::Wan);
    assert_eq!(wire.len(), 2);
    check_encapsulated(&wire[0], inner_datagram(first), 0);
    check_encapsulated(&wire[1], inner_datagram(second), 1);
    let c = h.counters();
    assert_eq!((c.switchover_released, c.pipeline.encapsulated), (2, 2));
    h.step();
    assert_eq!(h.accounting().held, 0);
    h.assert_conserved();
}

#[test]
fn a_switchover_holds_frames_until_the_destination_registers() {
    let mut h = two_armed();
    set_vm_binding(&mut h, Some([0, 0, 0, 0]));
    let first = Ip::udp(LAN_HOST, VM, b"first").frame();
    let second = Ip::udp(LAN_HOST, VM, b"second").frame();
    h.forward(Side::Lan, &first);
    h.forward(Side::Lan, &second);
    next_turn(&mut h);
    assert!(h.q().take_wire(Side::Wan).is_empty() && h.q().take_wire(Side::Lan).is_empty());
    assert_eq!(h.counters().switchover_held, 2);
    assert_eq!(h.accounting().held, 2);
    h.assert_conserved();

    // The destination registered: both go into its tunnel, in order.
    set_vm_binding(&mut h, Some(CARE_OF));
    next_turn(&mut h);
    released_into_the_tunnel_in_order(&mut h, &first, &second);
}

/// The destination registers between the turn's look at the held frames
/// and the next frame's lookup: that frame waits behind them.
#[test]
fn a_switchover_ending_mid_turn_keeps_the_held_frames_first() {
    let mut h = two_armed();
    set_vm_binding(&mut h, Some([0, 0, 0, 0]));
    let first = Ip::udp(LAN_HOST, VM, b"first").frame();
    h.forward(Side::Lan, &first);
    set_vm_binding(&mut h, Some(CARE_OF));
    let second = Ip::udp(LAN_HOST, VM, b"second").frame();
    h.receive_mid_turn(Side::Lan, &second);
    assert!(h.q().take_wire(Side::Wan).is_empty(), "none overtook");
    assert_eq!(h.accounting().held, 2);
    h.assert_conserved();

    next_turn(&mut h);
    released_into_the_tunnel_in_order(&mut h, &first, &second);
}

/// The registration can land before the new care-of's neighbour entry: the
/// frames wait for it rather than drop as `no_next_hop`.
#[test]
fn a_switchover_waits_for_the_new_care_of_next_hop() {
    let mut h = two_armed();
    set_vm_binding(&mut h, Some([0, 0, 0, 0]));
    let datagram = Ip::udp(LAN_HOST, VM, b"wait for its MAC");
    h.forward(Side::Lan, &datagram.clone().frame());
    let resolved = h.worker.lookup.next_hops.remove(0);
    assert_eq!(resolved.0, Ipv4Addr::from(CARE_OF));
    set_vm_binding(&mut h, Some(CARE_OF));
    next_turn(&mut h);
    assert!(h.q().take_wire(Side::Wan).is_empty());
    assert_eq!(h.accounting().held, 1, "still held, not dropped");
    assert_eq!(h.counters().drops().map(|(_, n)| n).sum::<u64>(), 0);
    h.worker.lookup.next_hops.push(resolved);
    next_turn(&mut h);
    let wire = h.q().take_wire(Side::Wan);
    assert_eq!(wire.len(), 1);
    check_encapsulated(&wire[0], inner_datagram(&datagram.frame()), 0);
    assert_eq!(h.counters().switchover_released, 1);
    h.assert_conserved();
}

#[test]
fn a_switchover_that_ends_at_home_delivers_on_the_home_link() {
    let mut h = two_armed();
    set_vm_binding(&mut h, Some([0, 0, 0, 0]));
    let datagram = Ip::udp(LAN_HOST, VM, b"you are home");
    h.forward(Side::Lan, &datagram.clone().frame());
    // Deregistered: no binding. The VM's MAC resolves a moment later.
    set_vm_binding(&mut h, None);
    next_turn(&mut h);
    assert!(
        h.q().take_wire(Side::Lan).is_empty(),
        "its MAC is not known yet"
    );
    assert_eq!(h.accounting().held, 1, "now waiting for the VM's MAC");
    let vm_mac = [0x52, 0x54, 0, 0, 0, 0x50];
    h.worker.lookup.neighbors.push((VM.into(), vm_mac));
    next_turn(&mut h);
    let wire = h.q().take_wire(Side::Lan);
    assert_eq!(wire.len(), 1);
    check_decapsulated(&wire[0], &datagram.datagram(), vm_mac);
    let c = h.counters();
    assert_eq!((c.switchover_released, c.neighbor_released), (1, 1));
    h.assert_conserved();
}

#[test]
fn a_switchover_buffer_is_bounded_and_a_lost_one_expires() {
    // 64 frames: at most 16 held.
    let mut h = two_armed();
    set_vm_binding(&mut h, Some([0, 0, 0, 0]));
    for i in 0..17u8 {
        h.forward(Side::Lan, &Ip::udp(LAN_HOST, VM, &[i; 8]).frame());
    }
    let c = h.counters();
    assert_eq!((c.switchover_held, c.switchover_buffer_full), (16, 1));
    h.assert_conserved();
    h.worker.started -= Duration::from_nanos(SWITCHOVER_MAX_WAIT_NS);
    next_turn(&mut h);
    let c = h.counters();
    assert_eq!(c.switchover_expired, 16);
    assert_eq!(
        c.drops().find(|(n, _)| *n == "switchover_expired"),
        Some(("switchover_expired", 16))
    );
    assert_eq!(h.accounting().held, 0);
    h.assert_conserved();
    // And a stopping worker drops what it holds.
    h.forward(Side::Lan, &Ip::udp(LAN_HOST, VM, b"at stop").frame());
    let shared = h.shared.clone();
    let parked = h.stop();
    assert_eq!(parked.accounting.unaccounted(), 0);
    assert_eq!(shared.counters.snapshot().switchover_expired, 17);
}

/// A TCP datagram of `len` data bytes from the home link to the bound VM,
/// as one frame however long (a TSO super-frame when longer than a UMEM
/// frame).
fn tcp_to_vm(len: usize) -> (Vec<u8>, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    (Ip::tcp(LAN_HOST, VM, 0x18, &[], &data).frame(), data)
}

#[test]
fn a_super_frame_leaves_as_segments_in_order_between_whole_frames() {
    let mut h = two_armed();
    let before = Ip::udp(LAN_HOST, VM, b"before").frame();
    let after = Ip::udp(LAN_HOST, VM, b"after").frame();
    // 9000 bytes: 6 pieces of 1792, over two RX batches of 4.
    let (super_frame, data) = tcp_to_vm(9000 - 54);
    h.q().receive(Side::Lan, &before).unwrap();
    h.q().receive(Side::Lan, &super_frame).unwrap();
    h.q().receive(Side::Lan, &after).unwrap();
    assert_eq!(h.q().lan.rx.iter().filter(|d| d.contd).count(), 5);
    for _ in 0..3 {
        h.step();
    }

    let wire = h.q().take_wire(Side::Wan);
    // 1500 - 20 outer - 20 - 20 = 1440 data bytes a segment.
    let segments = (9000 - 54usize).div_ceil(1440);
    assert_eq!(wire.len(), 1 + segments + 1);
    check_encapsulated(&wire[0], inner_datagram(&before), 0);
    // Outer Identifications count on through the segments.
    check_encapsulated(
        wire.last().unwrap(),
        inner_datagram(&after),
        1 + segments as u16,
    );
    let mut carried = Vec::new();
    for out in &wire[1..=segments] {
        let inner = &out[14 + 20..];
        let (ip, tcp) = etherparse::Ipv4Slice::from_slice(inner)
            .map(|ip| (ip.header().to_header(), ip.payload().payload.to_vec()))
            .unwrap();
        assert!(usize::from(ip.total_len) + 20 <= 1500);
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        let th = etherparse::TcpSlice::from_slice(&tcp).unwrap();
        assert_eq!(
            th.calc_checksum_ipv4(ip.source, ip.destination).unwrap(),
            th.checksum()
        );
        carried.extend_from_slice(th.payload());
    }
    assert_eq!(carried, data);
    let c = h.counters();
    assert_eq!(
        (c.pipeline.segmented, c.pipeline.segments_out),
        (1, segments as u64)
    );
    assert_eq!(c.pipeline.encapsulated, 2 + segments as u64);
    h.step();
    h.assert_conserved();
}

#[test]
fn a_super_frame_that_is_not_tcp_is_dropped_and_counted() {
    let mut h = two_armed();
    let udp = Ip::udp(LAN_HOST, VM, &[9; 5000]).frame();
    h.q().receive(Side::Lan, &udp).unwrap();
    h.step();
    h.step();
    assert!(h.q().take_wire(Side::Wan).is_empty());
    let c = h.counters();
    assert_eq!(c.pipeline.drops[DropReason::Unsegmentable as usize], 1);
    assert_eq!(c.pipeline.segmented, 0);
    h.assert_conserved();
}

#[test]
fn a_super_frame_without_enough_free_frames_counts_no_free_frame() {
    // 1440 data bytes a segment... at a tunnel MTU of 340, 280: 33
    // segments, and the worker has 32 frames to spare.
    let mut cfg = config();
    cfg.tunnel_mtu = 340;
    let mut h = Harness::new(XSK, false, cfg);
    let (super_frame, _) = tcp_to_vm(9000);
    h.q().receive(Side::Lan, &super_frame).unwrap();
    for _ in 0..3 {
        h.step();
    }
    assert!(
        h.q().take_wire(Side::Wan).is_empty(),
        "all segments or none"
    );
    let c = h.counters();
    assert_eq!((c.no_free_frame, c.pipeline.segmented), (1, 1));
    h.assert_conserved();
}

#[test]
fn busy_turns_publish_every_so_often_and_idle_turns_always() {
    let mut h = two_armed();
    h.worker.publish_every = 4;
    h.worker.iterations = 0;
    let input = Ip::udp(LAN_HOST, VM, b"hello").frame();
    // Turn 1, busy: not published yet.
    h.forward(Side::Lan, &input);
    assert_eq!(h.counters().pipeline.encapsulated, 0);
    assert_eq!(h.shared.turns(), 0);
    // Turns 2 and 3 busy, turn 4 busy: published.
    for _ in 0..3 {
        h.forward(Side::Lan, &input);
    }
    assert_eq!(h.counters().pipeline.encapsulated, 4);
    assert_eq!(h.shared.turns(), 4);
    // Turn 5 busy (not published), turn 6 idle (published).
    h.forward(Side::Lan, &input);
    assert_eq!(h.counters().pipeline.encapsulated, 4);
    h.step();
    h.step();
    assert_eq!(h.counters().pipeline.encapsulated, 5);
    assert!(h.shared.turns() >= 6);
    h.assert_conserved();
}

#[test]
fn one_kick_per_batch_with_a_raised_tx_budget() {
    let xsk = XskConfig {
        frame_count: 1024,
        frame_size: 2048,
        ring_size: 256,
        batch: 64,
    };
    for (budget, kicks) in [(32, 2), (256, 1)] {
        let mut q = MemQueue::new(xsk, false);
        q.tx_budget = budget;
        let mut h = Harness::over(q, config());
        assert_eq!(
            h.shared.tx_kick_budget.load(Relaxed),
            budget as u64,
            "the budget in use is shared"
        );
        for i in 0..64u8 {
            h.q()
                .receive(Side::Lan, &Ip::udp(LAN_HOST, VM, &[i; 16]).frame());
        }
        let before = h.q().socket(Side::Wan).kicks;
        h.step();
        assert_eq!(
            h.q().socket(Side::Wan).kicks - before,
            kicks,
            "budget {budget}"
        );
        assert_eq!(h.q().take_wire(Side::Wan).len(), 64, "all sent");
        h.assert_conserved();
    }
}

#[test]
fn kicks_cover_the_queue_at_the_budget_and_stop_at_eight() {
    assert_eq!(kicks_for(0, 32), 0);
    assert_eq!(kicks_for(1, 32), 1);
    assert_eq!(kicks_for(64, 32), 2);
    assert_eq!(kicks_for(64, 2048), 1);
    assert_eq!(kicks_for(2048, 32), 8);
    assert_eq!(kicks_for(5, 0), 5, "a zero budget counts as one");
}

#[test]
fn a_busy_polling_worker_polls_instead_of_sleeping_while_traffic_is_recent() {
    let mut q = MemQueue::new(XSK, false);
    q.busy = true;
    let mut h = Harness::over(q, config());
    // Nothing received yet (the last frame "at" 0 ns, just now): polls.
    h.forward(Side::Lan, &Ip::udp(LAN_HOST, VM, b"hello").frame());
    let waits = h.q().waits.get();
    for _ in 0..3 {
        h.step();
    }
    assert_eq!(h.q().waits.get(), waits, "no sleep while lingering");
    assert!(h.q().polls >= 2, "idle turns busy-poll");
    assert_eq!(h.q().take_wire(Side::Wan).len(), 1);
    // Long after the last frame: sleeps in poll() again.
    h.worker.started = Instant::now()
        .checked_sub(Duration::from_secs(1))
        .expect("a second of uptime");
    let polls = h.q().polls;
    h.step();
    assert!(h.q().waits.get() > waits, "sleeps once traffic stopped");
    assert_eq!(h.q().polls, polls);
    h.assert_conserved();
}

#[test]
fn busy_polling_that_cannot_reach_the_device_stops_and_gives_the_settings_back() {
    let mut q = MemQueue::new(XSK, false);
    q.busy = true;
    q.no_napi = true;
    let mut h = Harness::over(q, config());
    // A file stands for the device's gro_flush_timeout, deferred from 0.
    let setting = std::env::temp_dir().join(format!("hw-gro-{}", std::process::id()));
    std::fs::write(&setting, "200000").unwrap();
    let tuning = Arc::new(Mutex::new(vec![DeviceTuning::saved(
        "lan0",
        vec![(setting.clone(), "0".to_string())],
    )]));
    h.worker.device_tuning = Some(tuning.clone());
    // Before the first frame there is nothing to tell by: it polls.
    h.step();
    assert!(h.q().busy && h.q().polls > 0);
    h.forward(Side::Lan, &Ip::udp(LAN_HOST, VM, b"hello").frame());
    assert!(!h.q().busy, "busy polling stopped");
    assert!(tuning.lock().unwrap().is_empty());
    let restored = std::fs::read_to_string(&setting).unwrap();
    let _ = std::fs::remove_file(&setting);
    assert_eq!(restored, "0", "the setting given back");
    let (waits, polls) = (h.q().waits.get(), h.q().polls);
    for _ in 0..3 {
        h.step();
    }
    assert!(h.q().waits.get() > waits, "sleeps in poll() again");
    assert_eq!(h.q().polls, polls);
    assert_eq!(h.q().take_wire(Side::Wan).len(), 1, "and forwards");
    h.assert_conserved();
}

#[test]
fn busy_polling_that_reaches_the_device_goes_on() {
    let mut q = MemQueue::new(XSK, false);
    q.busy = true;
    let mut h = Harness::over(q, config());
    let tuning = Arc::new(Mutex::new(vec![DeviceTuning::saved("lan0", Vec::new())]));
    h.worker.device_tuning = Some(tuning.clone());
    h.forward(Side::Lan, &Ip::udp(LAN_HOST, VM, b"hello").frame());
    assert!(h.q().busy);
    assert_eq!(tuning.lock().unwrap().len(), 1);
    h.assert_conserved();
}
