//! Packet capture from the workers (`homeward capture`): each captured
//! frame as the worker received it and as it sent it, with the verdict.
//!
//! - Off (the normal state), a worker reads one relaxed atomic per loop turn
//!   (its [`WorkerShared`]'s capture generation) and does nothing else.
//! - [`Capture::start`] gives every worker a [`Tap`]: a bounded
//!   [`ArrayQueue`] of fixed-size [`Record`]s, allocated here, at start, by
//!   the control plane. A worker that sees the generation change takes the
//!   tap (a mutex, once per start or stop, never per packet).
//! - On, the worker copies at most [`SNAP_LEN`] bytes of the frame before
//!   the pipeline runs and of each frame it sends after, into records on
//!   its stack, and pushes them: no allocation, no syscall, no wait. A full
//!   queue drops the record and counts it ([`Tap::dropped`], and the
//!   worker's `capture_dropped` counter).
//! - Filter: with an address, a frame is captured (before and after) if the
//!   frame *as received* involves it: Ethernet (untagged or one 802.1Q tag)
//!   carrying IPv4 whose source or destination is the address, or, for
//!   IPv4-in-IPv4, whose inner source or destination is; or ARP whose sender
//!   or target protocol address is.
//! - Dropping the [`Capture`] turns the workers off again.

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crossbeam::queue::ArrayQueue;

use crate::pipeline::{DropReason, Port};
use crate::xsk::WorkerShared;

/// Bytes of each frame kept: Ethernet with a tag (18), an outer IPv4
/// header, an inner IPv4 header and a TCP header, all with their largest
/// options (60 each), fit, with the first bytes of payload.
pub const SNAP_LEN: usize = 256;

/// Records each worker's queue holds by default (about 1.1 MiB a queue).
pub const DEFAULT_RECORDS: usize = 4096;

/// Whether a record is the frame as received or as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Received, before the pipeline rewrote it.
    In,
    /// Sent (put on a TX ring), after the pipeline.
    Out,
}

/// What a [`Verdict::Tx`](crate::pipeline::Verdict::Tx) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxKind {
    Encapsulated,
    Decapsulated,
    ArpReply,
    IcmpError,
    Other,
}

/// What the worker did with a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent on `port` (the socket's side: LAN on a one-armed queue).
    Tx { port: Port, kind: TxKind },
    /// Sent as `pieces` fragments on `port`.
    Fragments { port: Port, pieces: u16 },
    /// Dropped by the pipeline.
    Drop(DropReason),
    /// Dropped by the worker (`bad_verdict`, `no_free_frame`).
    WorkerDrop(&'static str),
    /// Held by the worker until its home-link neighbour resolves.
    Held,
}

fn port_name(p: Port) -> &'static str {
    match p {
        Port::Lan => "lan",
        Port::Wan => "wan",
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Outcome::Tx { port, kind } => {
                let kind = match kind {
                    TxKind::Encapsulated => "encapsulated",
                    TxKind::Decapsulated => "decapsulated",
                    TxKind::ArpReply => "arp reply",
                    TxKind::IcmpError => "icmp error",
                    TxKind::Other => "forwarded",
                };
                write!(f, "tx {} ({kind})", port_name(port))
            }
            Outcome::Fragments { port, pieces } => {
                write!(f, "tx {} ({pieces} fragments)", port_name(port))
            }
            Outcome::Drop(r) => write!(f, "drop {}", r.as_str()),
            Outcome::WorkerDrop(r) => write!(f, "drop {r}"),
            Outcome::Held => f.write_str("held for the home-link neighbour"),
        }
    }
}

/// One captured frame: fixed size, copied by value into the queue.
#[derive(Clone, Copy)]
pub struct Record {
    /// The worker's clock (nanoseconds since its epoch) for the batch.
    pub ns: u64,
    pub stage: Stage,
    /// Where it came in ([`Stage::In`]) or went out ([`Stage::Out`]).
    pub port: Port,
    pub outcome: Outcome,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// Bytes kept in `data` (`min(orig_len, SNAP_LEN)`).
    pub len: u16,
    pub data: [u8; SNAP_LEN],
}

impl Record {
    /// A record of `frame`, its outcome still to be set.
    #[inline]
    pub(crate) fn new(ns: u64, stage: Stage, port: Port, frame: &[u8]) -> Record {
        let len = frame.len().min(SNAP_LEN);
        let mut data = [0u8; SNAP_LEN];
        data[..len].copy_from_slice(&frame[..len]);
        Record {
            ns,
            stage,
            port,
            outcome: Outcome::WorkerDrop("unknown"),
            orig_len: frame.len() as u32,
            len: len as u16,
            data,
        }
    }

    /// The bytes kept.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }

    /// The pcapng comment: `in lan q0: tx wan (encapsulated)`.
    pub fn comment(&self, queue: u32) -> String {
        let stage = match self.stage {
            Stage::In => "in",
            Stage::Out => "out",
        };
        format!(
            "{stage} {} q{queue}: {}",
            port_name(self.port),
            self.outcome
        )
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("ns", &self.ns)
            .field("stage", &self.stage)
            .field("port", &self.port)
            .field("outcome", &self.outcome)
            .field("orig_len", &self.orig_len)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// One worker's side of a capture: the records it pushes, the control
/// plane pops.
pub struct Tap {
    records: ArrayQueue<Record>,
    filter: Option<[u8; 4]>,
    dropped: AtomicU64,
}

impl fmt::Debug for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tap")
            .field("queued", &self.records.len())
            .field("filter", &self.filter)
            .field("dropped", &self.dropped.load(Relaxed))
            .finish()
    }
}

impl Tap {
    fn new(filter: Option<Ipv4Addr>, capacity: usize) -> Tap {
        Tap {
            records: ArrayQueue::new(capacity.max(1)),
            filter: filter.map(|a| a.octets()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether `frame` (as received) is to be captured.
    #[inline]
    pub(crate) fn wants(&self, frame: &[u8]) -> bool {
        match self.filter {
            None => true,
            Some(addr) => involves(frame, addr),
        }
    }

    /// Queues `record`; if the queue is full, drops and counts it. Never
    /// waits. Returns whether it was queued.
    #[inline]
    pub(crate) fn push(&self, record: Record) -> bool {
        if self.records.push(record).is_err() {
            self.dropped.fetch_add(1, Relaxed);
            false
        } else {
            true
        }
    }

    /// The oldest record not read yet.
    pub fn pop(&self) -> Option<Record> {
        self.records.pop()
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

/// Whether `frame` carries IPv4 from or to `addr` (outer, or inner for
/// IPv4-in-IPv4), or ARP with `addr` as sender or target. Never panics.
fn involves(frame: &[u8], addr: [u8; 4]) -> bool {
    let field = |at: usize| frame.get(at..at + 4) == Some(&addr[..]);
    let (ethertype, l3) = match frame.get(12..14) {
        Some([0x81, 0x00]) => (frame.get(16..18), 18),
        other => (other, 14),
    };
    match ethertype {
        Some([0x08, 0x00]) => {
            if field(l3 + 12) || field(l3 + 16) {
                return true;
            }
            let ihl = frame.get(l3).map_or(0, |b| usize::from(b & 0x0f) * 4);
            frame.get(l3 + 9) == Some(&4)
                && ihl >= 20
                && (field(l3 + ihl + 12) || field(l3 + ihl + 16))
        }
        Some([0x08, 0x06]) => field(l3 + 14) || field(l3 + 24),
        _ => false,
    }
}

/// Why a capture could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    /// Only one capture runs at a time.
    #[error("a capture is already running")]
    Busy,
    /// No worker runs.
    #[error("no worker is running")]
    NoWorkers,
}

/// A running capture over all of a data path's workers; stops (the
/// workers go back to off) when dropped.
#[derive(Debug)]
pub struct Capture {
    queues: Vec<(Arc<WorkerShared>, Arc<Tap>)>,
    filter: Option<Ipv4Addr>,
}

impl Capture {
    /// Gives each of `workers` a tap of `capacity` records with `filter`.
    pub fn start(
        workers: &[Arc<WorkerShared>],
        filter: Option<Ipv4Addr>,
        capacity: usize,
    ) -> Result<Capture, CaptureError> {
        if workers.is_empty() {
            return Err(CaptureError::NoWorkers);
        }
        let mut capture = Capture {
            queues: Vec::with_capacity(workers.len()),
            filter,
        };
        for w in workers {
            let tap = Arc::new(Tap::new(filter, capacity));
            if !w.install_tap(tap.clone()) {
                // Dropping `capture` removes the taps installed so far.
                return Err(CaptureError::Busy);
            }
            capture.queues.push((w.clone(), tap));
        }
        Ok(capture)
    }

    /// The number of queues captured.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// The address filter.
    pub fn filter(&self) -> Option<Ipv4Addr> {
        self.filter
    }

    /// Queue `queue`'s tap.
    pub fn tap(&self, queue: usize) -> Option<&Tap> {
        self.queues.get(queue).map(|(_, t)| &**t)
    }

    /// Queue `queue`'s clock origin: a record's time is this plus its `ns`.
    pub fn epoch(&self, queue: usize) -> Option<Instant> {
        self.queues.get(queue).map(|(w, _)| w.epoch())
    }

    /// Records dropped (queue full) over all queues.
    pub fn dropped(&self) -> u64 {
        self.queues.iter().map(|(_, t)| t.dropped()).sum()
    }

    /// Whether the workers were asked to stop (the daemon is going).
    pub fn workers_stopping(&self) -> bool {
        self.queues.iter().all(|(w, _)| w.stopping())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        for (w, tap) in &self.queues {
            w.remove_tap(tap);
        }
    }
}

/// The generation a capture start or stop publishes: never 0 (off) and
/// never repeated, so a worker cannot miss a stop-and-start.
pub(crate) fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(src: [u8; 4], dst: [u8; 4], proto: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = proto;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f
    }

    #[test]
    fn filter_matches_outer_inner_and_arp_addresses() {
        let vm = [192, 0, 2, 50];
        let other = [192, 0, 2, 9];
        assert!(involves(&udp(other, vm, 17), vm));
        assert!(involves(&udp(vm, other, 17), vm));
        assert!(!involves(&udp(other, other, 17), vm));
        // IPIP: the inner header follows the outer one.
        let mut ipip = udp(other, other, 4);
        ipip[34] = 0x45;
        ipip[34 + 12..34 + 16].copy_from_slice(&vm);
        assert!(involves(&ipip, vm));
        ipip[34 + 12..34 + 16].copy_from_slice(&other);
        assert!(!involves(&ipip, vm));
        // The same bytes in a non-IPIP datagram's payload do not count.
        let mut not_ipip = udp(other, other, 17);
        not_ipip[34 + 12..34 + 16].copy_from_slice(&vm);
        assert!(!involves(&not_ipip, vm));
        // ARP: target protocol address.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        arp[14 + 24..14 + 28].copy_from_slice(&vm);
        assert!(involves(&arp, vm));
        // 802.1Q.
        let plain = udp(other, vm, 17);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&plain[12..]);
        assert!(involves(&tagged, vm));
        // Truncated frames: no panic.
        for n in 0..ipip.len() {
            let _ = involves(&ipip[..n], vm);
        }
        assert!(!involves(&[], vm));
    }

    #[test]
    fn outcomes_read_as_comments() {
        let mut r = Record::new(0, Stage::In, Port::Lan, &[1, 2, 3]);
        r.outcome = Outcome::Tx {
            port: Port::Wan,
            kind: TxKind::Encapsulated,
        };
        assert_eq!(r.comment(0), "in lan q0: tx wan (encapsulated)");
        r.port = Port::Wan;
        r.outcome = Outcome::Drop(DropReason::NoBinding);
        assert_eq!(r.comment(1), "in wan q1: drop no_binding");
        assert_eq!(r.bytes(), &[1, 2, 3]);
        let long = vec![7u8; 3000];
        let r = Record::new(0, Stage::Out, Port::Lan, &long);
        assert_eq!((r.len as usize, r.orig_len), (SNAP_LEN, 3000));
    }
}
