//! `homeward stats`: the data path's typed snapshot, the home agent's names
//! for its counters, the bindings and the registration service.

use std::net::Ipv4Addr;
use std::time::Instant;

use dataplane::forwarder::DataPathStats;
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

/// The pipeline's counters as the home agent names them.
#[derive(Debug, Clone, Serialize)]
pub(super) struct HomeAgentCounters {
    /// Datagrams tunnelled to a care-of address.
    pub encapsulated: u64,
    /// Reverse-tunnelled datagrams delivered on the home link.
    pub decapsulated: u64,
    pub fragmented: u64,
    pub fragments_out: u64,
    pub arp_replies: u64,
    pub icmp_sent: u64,
    pub icmp_rate_limited: u64,
    pub trimmed_padding: u64,
    /// Gratuitous ARPs sent.
    pub announcements: u64,
    pub xsk_fill_ring_empty: u64,
}

pub(super) fn collect(d: &Daemon, now: Instant) -> HomeAgentStats {
    let data_path = d.bindings.forwarder().stats();
    let (t, p) = (&data_path.totals, &data_path.totals.pipeline);
    HomeAgentStats {
        uptime: now.saturating_duration_since(d.started).as_secs(),
        queues: d.config.queues,
        address: d.config.address,
        counters: HomeAgentCounters {
            encapsulated: p.encapsulated,
            decapsulated: p.decapsulated,
            fragmented: p.fragmented,
            fragments_out: p.fragments_out,
            arp_replies: p.arp_replies,
            icmp_sent: p.icmp_sent,
            icmp_rate_limited: p.icmp_rate_limited,
            trimmed_padding: p.trimmed_padding,
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
