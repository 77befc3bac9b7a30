//! Counters a worker publishes for the control plane: the pipeline's own
//! (per drop reason and per outcome) and the worker's (ring pressure).
//! Written by one worker, read by anyone; relaxed atomics, no locks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::pipeline::{Counters, DropReason};

/// A worker's counters, readable from any thread.
#[derive(Debug)]
pub struct SharedCounters {
    drops: [AtomicU64; DropReason::COUNT],
    encapsulated: AtomicU64,
    decapsulated: AtomicU64,
    encapsulated_bytes: AtomicU64,
    decapsulated_bytes: AtomicU64,
    fragmented: AtomicU64,
    fragments_out: AtomicU64,
    arp_replies: AtomicU64,
    icmp_sent: AtomicU64,
    icmp_rate_limited: AtomicU64,
    trimmed_padding: AtomicU64,
    checksums_finished: AtomicU64,
    mss_clamped: AtomicU64,
    segmented: AtomicU64,
    segments_out: AtomicU64,
    segmented_to_path: AtomicU64,
    /// Frames dropped because a TX ring was full.
    pub tx_ring_full: AtomicU64,
    /// Frames not sent because the free list was empty (fragments, ARP).
    pub no_free_frame: AtomicU64,
    /// Verdicts whose frame bounds did not fit the UMEM frame.
    pub bad_verdict: AtomicU64,
    /// Gratuitous ARPs sent.
    pub announcements: AtomicU64,
    /// Frames held for an unresolved home-link neighbour, and of those the
    /// ones sent once it resolved (the others count as `no_lan_neighbor`).
    pub neighbor_queued: AtomicU64,
    pub neighbor_released: AtomicU64,
    /// Frames for an unresolved neighbour dropped because the neighbour
    /// queue (per address or overall) was full.
    pub neighbor_queue_full: AtomicU64,
    /// Frames held for a VM in switchover, and of those the ones released
    /// (into the tunnel or home); dropped: the buffer was full, or the
    /// switchover never ended (or the worker stopped).
    pub switchover_held: AtomicU64,
    pub switchover_released: AtomicU64,
    pub switchover_buffer_full: AtomicU64,
    pub switchover_expired: AtomicU64,
    /// Capture records dropped because the capture queue was full (the
    /// frames themselves were handled as usual).
    pub capture_dropped: AtomicU64,
    /// The kernel's own AF_XDP socket counters (XDP_STATISTICS), summed
    /// over the queue's sockets: frames it dropped before the worker saw
    /// them.
    pub socket: SocketCounters,
}

/// XDP_STATISTICS of a queue's sockets, as last read by its worker.
#[derive(Debug, Default)]
pub struct SocketCounters {
    /// Received frames dropped for any reason (e.g. no fill ring entry).
    pub rx_dropped: AtomicU64,
    /// Received frames dropped because the RX ring was full.
    pub rx_ring_full: AtomicU64,
    /// Times the kernel found the fill ring empty.
    pub fill_ring_empty: AtomicU64,
    /// Invalid descriptors on the fill/RX side.
    pub rx_invalid: AtomicU64,
    /// Invalid descriptors on the TX ring.
    pub tx_invalid: AtomicU64,
}

impl Default for SharedCounters {
    fn default() -> Self {
        SharedCounters {
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            encapsulated: AtomicU64::new(0),
            decapsulated: AtomicU64::new(0),
            encapsulated_bytes: AtomicU64::new(0),
            decapsulated_bytes: AtomicU64::new(0),
            fragmented: AtomicU64::new(0),
            fragments_out: AtomicU64::new(0),
            arp_replies: AtomicU64::new(0),
            icmp_sent: AtomicU64::new(0),
            icmp_rate_limited: AtomicU64::new(0),
            trimmed_padding: AtomicU64::new(0),
            checksums_finished: AtomicU64::new(0),
            mss_clamped: AtomicU64::new(0),
            segmented: AtomicU64::new(0),
            segments_out: AtomicU64::new(0),
            segmented_to_path: AtomicU64::new(0),
            tx_ring_full: AtomicU64::new(0),
            no_free_frame: AtomicU64::new(0),
            bad_verdict: AtomicU64::new(0),
            announcements: AtomicU64::new(0),
            neighbor_queued: AtomicU64::new(0),
            neighbor_released: AtomicU64::new(0),
            neighbor_queue_full: AtomicU64::new(0),
            switchover_held: AtomicU64::new(0),
            switchover_released: AtomicU64::new(0),
            switchover_buffer_full: AtomicU64::new(0),
            switchover_expired: AtomicU64::new(0),
            capture_dropped: AtomicU64::new(0),
            socket: SocketCounters::default(),
        }
    }
}

/// A plain copy of [`SharedCounters`], summable across workers.
#[derive(Clone, Debug, Default)]
pub struct CounterSnapshot {
    /// The pipeline's counters.
    pub pipeline: Counters,
    pub tx_ring_full: u64,
    pub no_free_frame: u64,
    pub bad_verdict: u64,
    pub announcements: u64,
    pub neighbor_queued: u64,
    pub neighbor_released: u64,
    pub neighbor_queue_full: u64,
    pub switchover_held: u64,
    pub switchover_released: u64,
    pub switchover_buffer_full: u64,
    pub switchover_expired: u64,
    /// Capture records lost to a full capture queue (not packet drops).
    pub capture_dropped: u64,
    pub xsk_rx_dropped: u64,
    pub xsk_rx_ring_full: u64,
    pub xsk_fill_ring_empty: u64,
    pub xsk_rx_invalid: u64,
    pub xsk_tx_invalid: u64,
}

impl SharedCounters {
    /// Copy the pipeline's counters out (once per batch).
    pub fn publish(&self, c: &Counters) {
        for (shared, value) in self.drops.iter().zip(c.drops.iter()) {
            shared.store(*value, Relaxed);
        }
        self.encapsulated.store(c.encapsulated, Relaxed);
        self.decapsulated.store(c.decapsulated, Relaxed);
        self.encapsulated_bytes.store(c.encapsulated_bytes, Relaxed);
        self.decapsulated_bytes.store(c.decapsulated_bytes, Relaxed);
        self.fragmented.store(c.fragmented, Relaxed);
        self.fragments_out.store(c.fragments_out, Relaxed);
        self.arp_replies.store(c.arp_replies, Relaxed);
        self.icmp_sent.store(c.icmp_sent, Relaxed);
        self.icmp_rate_limited.store(c.icmp_rate_limited, Relaxed);
        self.trimmed_padding.store(c.trimmed_padding, Relaxed);
        self.checksums_finished.store(c.checksums_finished, Relaxed);
        self.mss_clamped.store(c.mss_clamped, Relaxed);
        self.segmented.store(c.segmented, Relaxed);
        self.segments_out.store(c.segments_out, Relaxed);
        self.segmented_to_path.store(c.segmented_to_path, Relaxed);
    }

    /// The counters as last published.
    pub fn snapshot(&self) -> CounterSnapshot {
        let mut pipeline = Counters::default();
        for (value, shared) in pipeline.drops.iter_mut().zip(self.drops.iter()) {
            *value = shared.load(Relaxed);
        }
        pipeline.encapsulated = self.encapsulated.load(Relaxed);
        pipeline.decapsulated = self.decapsulated.load(Relaxed);
        pipeline.encapsulated_bytes = self.encapsulated_bytes.load(Relaxed);
        pipeline.decapsulated_bytes = self.decapsulated_bytes.load(Relaxed);
        pipeline.fragmented = self.fragmented.load(Relaxed);
        pipeline.fragments_out = self.fragments_out.load(Relaxed);
        pipeline.arp_replies = self.arp_replies.load(Relaxed);
        pipeline.icmp_sent = self.icmp_sent.load(Relaxed);
        pipeline.icmp_rate_limited = self.icmp_rate_limited.load(Relaxed);
        pipeline.trimmed_padding = self.trimmed_padding.load(Relaxed);
        pipeline.checksums_finished = self.checksums_finished.load(Relaxed);
        pipeline.mss_clamped = self.mss_clamped.load(Relaxed);
        pipeline.segmented = self.segmented.load(Relaxed);
        pipeline.segments_out = self.segments_out.load(Relaxed);
        pipeline.segmented_to_path = self.segmented_to_path.load(Relaxed);
        CounterSnapshot {
            pipeline,
            tx_ring_full: self.tx_ring_full.load(Relaxed),
            no_free_frame: self.no_free_frame.load(Relaxed),
            bad_verdict: self.bad_verdict.load(Relaxed),
            announcements: self.announcements.load(Relaxed),
            neighbor_queued: self.neighbor_queued.load(Relaxed),
            neighbor_released: self.neighbor_released.load(Relaxed),
            neighbor_queue_full: self.neighbor_queue_full.load(Relaxed),
            switchover_held: self.switchover_held.load(Relaxed),
            switchover_released: self.switchover_released.load(Relaxed),
            switchover_buffer_full: self.switchover_buffer_full.load(Relaxed),
            switchover_expired: self.switchover_expired.load(Relaxed),
            capture_dropped: self.capture_dropped.load(Relaxed),
            xsk_rx_dropped: self.socket.rx_dropped.load(Relaxed),
            xsk_rx_ring_full: self.socket.rx_ring_full.load(Relaxed),
            xsk_fill_ring_empty: self.socket.fill_ring_empty.load(Relaxed),
            xsk_rx_invalid: self.socket.rx_invalid.load(Relaxed),
            xsk_tx_invalid: self.socket.tx_invalid.load(Relaxed),
        }
    }
}

impl CounterSnapshot {
    /// Every drop counter by its stable name: the pipeline's reasons, then the
    /// worker's (rings, frames) and the kernel's (XDP_STATISTICS, prefixed
    /// `xsk_`: dropped before the worker saw them).
    pub fn drops(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        crate::pipeline::DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), self.pipeline.drops[*r as usize]))
            .chain([
                ("tx_ring_full", self.tx_ring_full),
                ("no_free_frame", self.no_free_frame),
                ("bad_verdict", self.bad_verdict),
                ("neighbor_queue_full", self.neighbor_queue_full),
                ("switchover_buffer_full", self.switchover_buffer_full),
                ("switchover_expired", self.switchover_expired),
                ("xsk_rx_ring_full", self.xsk_rx_ring_full),
                ("xsk_rx_dropped", self.xsk_rx_dropped),
                ("xsk_rx_invalid", self.xsk_rx_invalid),
                ("xsk_tx_invalid", self.xsk_tx_invalid),
            ])
    }

    /// Add another worker's counters to these.
    pub fn add(&mut self, o: &CounterSnapshot) {
        for (a, b) in self.pipeline.drops.iter_mut().zip(o.pipeline.drops.iter()) {
            *a += b;
        }
        let (p, q) = (&mut self.pipeline, &o.pipeline);
        p.encapsulated += q.encapsulated;
        p.decapsulated += q.decapsulated;
        p.encapsulated_bytes += q.encapsulated_bytes;
        p.decapsulated_bytes += q.decapsulated_bytes;
        p.fragmented += q.fragmented;
        p.fragments_out += q.fragments_out;
        p.arp_replies += q.arp_replies;
        p.icmp_sent += q.icmp_sent;
        p.icmp_rate_limited += q.icmp_rate_limited;
        p.trimmed_padding += q.trimmed_padding;
        p.checksums_finished += q.checksums_finished;
        p.mss_clamped += q.mss_clamped;
        p.segmented += q.segmented;
        p.segments_out += q.segments_out;
        p.segmented_to_path += q.segmented_to_path;
        self.tx_ring_full += o.tx_ring_full;
        self.no_free_frame += o.no_free_frame;
        self.bad_verdict += o.bad_verdict;
        self.announcements += o.announcements;
        self.neighbor_queued += o.neighbor_queued;
        self.neighbor_released += o.neighbor_released;
        self.neighbor_queue_full += o.neighbor_queue_full;
        self.switchover_held += o.switchover_held;
        self.switchover_released += o.switchover_released;
        self.switchover_buffer_full += o.switchover_buffer_full;
        self.switchover_expired += o.switchover_expired;
        self.capture_dropped += o.capture_dropped;
        self.xsk_rx_dropped += o.xsk_rx_dropped;
        self.xsk_rx_ring_full += o.xsk_rx_ring_full;
        self.xsk_fill_ring_empty += o.xsk_fill_ring_empty;
        self.xsk_rx_invalid += o.xsk_rx_invalid;
        self.xsk_tx_invalid += o.xsk_tx_invalid;
    }
}
