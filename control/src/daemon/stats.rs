//! `homeward stats`: counters from the workers, the XDP program and the
//! binding manager, as one JSON document.

use std::time::Instant;

use dataplane::xsk::WorkerShared;
use serde_json::{json, Map, Value};

use super::Daemon;
use crate::proto::format_mac;

pub(super) fn collect(d: &Daemon, now: Instant) -> Value {
    let (total, frames) = WorkerShared::snapshot_all(d.workers.shared());
    let p = &total.pipeline;
    let drops: Map<String, Value> = total.drops().map(|(k, v)| (k.into(), v.into())).collect();
    let steering = match d.bindings.steering().counters() {
        Ok(c) => serde_json::to_value(c).unwrap_or(Value::Null),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let next_hops: Vec<Value> = d
        .bindings
        .neigh()
        .snapshot()
        .into_iter()
        .map(|(addr, e)| {
            json!({
                "care_of": addr,
                "ifindex": e.map(|e| e.ifindex),
                "mac": e.map(|e| format_mac(e.mac)),
            })
        })
        .collect();
    let bindings = d.bindings.list(now);
    // The XDP program's map must hold exactly the table's bindings.
    let maps_in_sync = d.bindings.steered().map(|mut steered| {
        let mut table: Vec<_> = bindings.iter().map(|b| (b.vm, b.care_of)).collect();
        steered.sort();
        table.sort();
        steered == table
    });
    json!({
        "maps_in_sync": maps_in_sync.unwrap_or(false),
        "uptime": now.saturating_duration_since(d.started).as_secs(),
        "xdp_mode": d.bindings.steering().mode().to_string(),
        "queues": d.config.queues,
        "address": d.config.address,
        "counters": {
            "encapsulated": p.encapsulated,
            "decapsulated": p.decapsulated,
            "fragmented": p.fragmented,
            "fragments_out": p.fragments_out,
            "arp_replies": p.arp_replies,
            "icmp_sent": p.icmp_sent,
            "icmp_rate_limited": p.icmp_rate_limited,
            "trimmed_padding": p.trimmed_padding,
            "announcements": total.announcements,
            "xsk_fill_ring_empty": total.xsk_fill_ring_empty,
        },
        "drops": drops,
        "steering": steering,
        "bindings": bindings,
        "next_hops": next_hops,
        "frames": frames,
        "registration": d
            .registration
            .as_ref()
            .map_or_else(super::registration::disabled_stats, |r| r.stats()),
    })
}
