//! The data path's stats as one typed snapshot: each role's `stats` embeds
//! it and names the pipeline's counters in its own terms.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::loader::SteerCounters;
use crate::stats::CounterSnapshot;
use crate::xsk::QueueFrames;

/// What both roles report about their data path.
#[derive(Debug, Clone, Serialize)]
pub struct DataPathStats {
    /// How the steering program is attached (native or generic XDP).
    pub xdp_mode: String,
    /// Whether the steering maps hold exactly the table's bindings.
    pub maps_in_sync: bool,
    /// Every drop counter by its stable name (pipeline, worker, kernel).
    pub drops: BTreeMap<&'static str, u64>,
    /// The steering program's own counters.
    pub steering: SteeringReport,
    /// The tracked next hops.
    pub next_hops: Vec<NextHopStats>,
    /// Where each queue's frames are.
    pub frames: Vec<QueueFrames>,
    /// `homeward capture` records lost to a full capture queue, since the
    /// start (the frames themselves were forwarded or dropped as usual).
    pub capture_dropped: u64,
    /// Every queue's counters summed: each role names them itself.
    #[serde(skip)]
    pub totals: CounterSnapshot,
    /// Each queue's counters (the metrics' per-queue series).
    #[serde(skip)]
    pub per_queue: Vec<CounterSnapshot>,
}

/// The steering program's counters, or why they could not be read.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SteeringReport {
    Counters(SteerCounters),
    Unreadable { error: String },
}

/// One tracked next hop.
#[derive(Debug, Clone, Serialize)]
pub struct NextHopStats {
    pub care_of: Ipv4Addr,
    /// The interface toward it, once resolved.
    pub ifindex: Option<u32>,
    /// Its MAC, once resolved.
    pub mac: Option<String>,
}
