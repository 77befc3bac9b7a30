//! `homeward stats`: the data path's typed snapshot, the home agent's names
//! for its counters, the bindings and the registration service.

use std::net::Ipv4Addr;
use std::time::Instant;

use dataplane::forwarder::DataPathStats;
use dataplane::pipeline::Counters;
use serde::Serialize;

use super::registration::{disabled_stats, RegistrationStats};
use super::Daemon;
use crate::common::metrics::{self, label, Exposition};
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
    /// The first [`STATS_BINDINGS`] bindings by address (`homeward list`
    /// lists them all), and how many there are.
    pub bindings: Vec<BindingInfo>,
    pub bindings_total: usize,
    /// VMs whose gratuitous ARPs wait their turn (many announced at once
    /// start at `announce_rate` a second).
    pub announcements_waiting: usize,
    pub registration: RegistrationStats,
    /// The binding store; with etcd, whether it is reachable.
    pub store: super::replica::StoreStats,
    /// One of an active/standby pair: which one this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<super::failover::FailoverStats>,
    /// What the binding table takes (allocated up front for max_bindings).
    pub table: TableMemory,
}

/// The data path's binding table: its slots and their bytes, whatever the
/// load (the per-binding counters, 24 bytes per slot per queue, and the
/// control plane's own records come on top).
#[derive(Debug, Clone, Serialize)]
pub(super) struct TableMemory {
    pub max_bindings: u32,
    pub slots: usize,
    pub bytes: usize,
    /// `bytes / max_bindings`.
    pub bytes_per_binding: f64,
}

fn table_memory(max_bindings: u32) -> TableMemory {
    let slots = dataplane::table::slots_for(max_bindings as usize);
    let bytes = slots * dataplane::table::SLOT_BYTES;
    TableMemory {
        max_bindings,
        slots,
        bytes,
        bytes_per_binding: bytes as f64 / f64::from(max_bindings.max(1)),
    }
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
    /// Reverse-tunnelled frames held while a home-link neighbour resolved,
    /// and of those the ones sent.
    pub neighbor_queued: u64,
    pub neighbor_released: u64,
    /// Frames held for VMs in switchover, and of those the ones released.
    pub switchover_held: u64,
    pub switchover_released: u64,
}

/// Bindings `homeward stats` lists: a million would make its answer
/// hundreds of megabytes, and hold the control loop while it is built.
pub(super) const STATS_BINDINGS: usize = 1000;

/// The home agent's stats, with the first `bindings` bindings.
pub(super) fn collect(d: &Daemon, now: Instant, bindings: usize) -> HomeAgentStats {
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
            neighbor_queued: t.neighbor_queued,
            neighbor_released: t.neighbor_released,
            switchover_held: t.switchover_held,
            switchover_released: t.switchover_released,
        },
        bindings: d.bindings.list_first(now, bindings),
        bindings_total: d.bindings.count(),
        announcements_waiting: d.bindings.announcements_waiting(),
        registration: d
            .registration
            .as_ref()
            .map_or_else(disabled_stats, |r| r.stats()),
        store: super::replica::stats(&*d.store, d.replica.as_ref(), now),
        failover: d.failover.as_ref().map(|f| f.stats(now)),
        table: table_memory(d.config.max_bindings),
        data_path,
    }
}

/// The home agent's metrics: the data path's, then bindings and
/// registration.
pub(super) fn exposition(d: &Daemon, now: Instant) -> Exposition {
    let cap = d.metrics.binding_series();
    let s = collect(d, now, cap);
    let mut x = Exposition::for_role("home_agent");
    metrics::data_path(&mut x, &s.data_path);
    let states = d.bindings.states();
    x.gauge(
        "bindings",
        "Bindings by state: forwarding, waiting for the care-of address's next hop, or holding the VM's traffic for a switchover.",
    )
    .sample(
        vec![label("state", "forwarding")],
        states
            .total
            .saturating_sub(states.awaiting_next_hop + states.holding),
    )
    .sample(
        vec![label("state", "awaiting_next_hop")],
        states.awaiting_next_hop,
    )
    .sample(vec![label("state", "holding")], states.holding);
    let packets = x.counter(
        "binding_packets",
        "Packets forwarded under each binding (the first metrics_binding_series bindings by address).",
    );
    for b in &s.bindings {
        packets.sample(vec![label("vm", b.vm.to_string())], b.packets);
    }
    let bytes = x.counter(
        "binding_bytes",
        "Bytes forwarded under each binding (same cap).",
    );
    for b in &s.bindings {
        bytes.sample(vec![label("vm", b.vm.to_string())], b.bytes);
    }
    x.gauge(
        "binding_series_omitted",
        "Bindings without their own series (beyond metrics_binding_series).",
    )
    .sample(vec![], states.total.saturating_sub(s.bindings.len()));
    x.gauge(
        "announcements_waiting",
        "VMs whose gratuitous ARPs wait their turn (many announced at once start at announce_rate a second).",
    )
    .sample(vec![], s.announcements_waiting as u64);
    if let Some(connected) = s.store.connected {
        x.gauge(
            "etcd_connected",
            "1 while the etcd store's watch is live; 0 while etcd is unreachable (forwarding goes on with the bindings held; registrations and bind/unbind are refused).",
        )
        .sample(vec![], u64::from(connected));
        x.counter(
            "etcd_losses",
            "Times etcd was lost (the watch failed and could not be re-established at once).",
        )
        .sample(vec![], s.store.losses.unwrap_or(0));
        x.counter(
            "etcd_remote_changes",
            "Binding and replay changes made at other gateways and applied here.",
        )
        .sample(vec![], s.store.remote_changes.unwrap_or(0));
    }
    if let Some(f) = &s.failover {
        x.gauge(
            "failover_active",
            "1 while this gateway is the active one of its pair (keepalived's MASTER: it answers ARP for the bound VMs), 0 on standby.",
        )
        .sample(vec![], u64::from(f.active));
        x.counter(
            "failover_transitions",
            "Times this gateway became active or stopped being active.",
        )
        .sample(vec![], f.transitions);
    }
    if let Some(r) = &s.registration.counts {
        let replies = x.counter(
            "registration_replies",
            "Registration replies sent, by RFC 5944 code (0 and 1: accepted).",
        );
        for (code, n) in &r.replies {
            replies.sample(vec![label("code", code.to_string())], *n);
        }
        x.counter(
            "registration_dropped",
            "Registration datagrams dropped without a reply (malformed, forged, not for us).",
        )
        .sample(vec![], r.dropped);
        x.counter(
            "registration_queue_full",
            "Authentic registrations dropped because the handler's queue was full.",
        )
        .sample(vec![], r.queue_full);
        x.counter(
            "registration_vm_mac_ignored",
            "Authenticated VM link-layer address extensions ignored (bad length, not unicast).",
        )
        .sample(vec![], r.vm_mac_ignored);
        x.counter(
            "store_commits",
            "Durable store commits of registration bursts.",
        )
        .sample(vec![], r.commits);
        x.counter(
            "store_commit_failures",
            "Registration bursts whose store commit failed (not acknowledged).",
        )
        .sample(vec![], r.commit_failures);
    }
    x
}
