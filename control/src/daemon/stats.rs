//! `homeward stats`: the data path's typed snapshot, the home agent's names
//! for its counters, the bindings and the registration service.

use std::net::Ipv4Addr;
use std::time::Instant;

use dataplane::forwarder::DataPathStats;
use dataplane::pipeline::Counters;
use serde::Serialize;

use super::registration::{disabled_stats, RegistrationStats};
use super::Daemon;
use crate::proto::BindingInfo;

/// What `homeward stats` prints for the home agent.
#[derive(Debug, Clone, Serialize)]
pub(super) struct HomeAgentStats {
    /// Seconds since the daemon started.
    pub uptime: u64,
    pub queues: u32,
    pub address: Ipv4Addr,
    pub counters: HomeAgentCounters,
    #[serde(flatten)]
    pub data_path: DataPathStats,
    pub bindings: Vec<BindingInfo>,
    pub registration: RegistrationStats,
}

/// The pipeline's counters (the home agent's names are the pipeline's),
/// and the worker's announcements.
#[derive(Debug, Clone, Serialize)]
pub(super) struct HomeAgentCounters {
    #[serde(flatten)]
    pub pipeline: Counters,
    /// Gratuitous ARPs sent.
    pub announcements: u64,
    pub xsk_fill_ring_empty: u64,
}

pub(super) fn collect(d: &Daemon, now: Instant) -> HomeAgentStats {
    let data_path = d.bindings.forwarder().stats();
    let t = &data_path.totals;
    HomeAgentStats {
        uptime: now.saturating_duration_since(d.started).as_secs(),
        queues: d.config.queues,
        address: d.config.address,
        counters: HomeAgentCounters {
            pipeline: t.pipeline.clone(),
            announcements: t.announcements,
            xsk_fill_ring_empty: t.xsk_fill_ring_empty,
        },
        bindings: d.bindings.list(now),
        registration: d
            .registration
            .as_ref()
            .map_or_else(disabled_stats, |r| r.stats()),
        data_path,
    }
}
