use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::memory::{MemoryHops, MemoryMaps};
use super::*;
use crate::table::{binding_table, TableReader};
use crate::xsk::WorkerShared;

const VM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const VM2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 51);
const COA1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const COA2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x50];

/// A forwarder on in-memory maps with room for 4 bindings and one queue's
/// counters.
fn forwarder() -> (Forwarder<MemoryMaps, MemoryHops>, TableReader) {
    let (table, reader) = binding_table(16);
    let mut f = Forwarder::new(table, MemoryMaps::default(), MemoryHops::default(), 4);
    f.workers = Workers::detached(vec![WorkerShared::new(16)]);
    (f, reader)
}

/// Table, maps, care-of map, next hops and reference counts all say
/// `want`, and no next hop was tracked twice.
#[track_caller]
fn assert_consistent(
    f: &Forwarder<MemoryMaps, MemoryHops>,
    reader: &TableReader,
    want: &[(Ipv4Addr, Ipv4Addr)],
) {
    assert_eq!(f.steering.bound().unwrap(), want);
    assert_eq!(f.maps_in_sync(), Ok(true));
    for (vm, care_of) in want {
        assert_eq!(reader.lookup(*vm).map(|(b, _)| b.care_of), Some(*care_of));
    }
    assert_eq!(f.len(), want.len());
    let mut refs: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
    for (_, c) in want {
        *refs.entry(*c).or_default() += 1;
    }
    assert_eq!(
        f.care_of_refs(),
        refs.clone().into_iter().collect::<Vec<_>>()
    );
    let care_ofs: Vec<Ipv4Addr> = f.steering.care_ofs.iter().copied().collect();
    assert_eq!(care_ofs, refs.keys().copied().collect::<Vec<_>>());
    assert!(f.neigh.balanced(), "{:?}", f.neigh.calls);
    let mut tracked: Vec<Ipv4Addr> = refs.keys().copied().collect();
    tracked.extend(f.followed.iter().filter(|a| !refs.contains_key(a)));
    tracked.sort();
    assert_eq!(f.neigh.tracked(), tracked);
}

#[test]
fn bind_move_unbind_keep_every_copy_equal() {
    let (mut f, reader) = forwarder();
    assert_eq!(f.bind(VM, COA1, Some(MAC)), Ok(BindOutcome::Created));
    assert_eq!(f.bind(VM2, COA1, None), Ok(BindOutcome::Created));
    assert_consistent(&f, &reader, &[(VM, COA1), (VM2, COA1)]);
    // A move: one reference moves, the MAC is kept.
    assert_eq!(f.bind(VM, COA2, None), Ok(BindOutcome::Updated));
    assert_consistent(&f, &reader, &[(VM, COA2), (VM2, COA1)]);
    assert_eq!(f.get(VM).unwrap().vm_mac, Some(MAC));
    // The same binding again: nothing to write.
    f.steering.fail_next = true;
    assert_eq!(f.bind(VM, COA2, None), Ok(BindOutcome::Updated));
    f.steering.fail_next = false;
    assert_eq!(f.unbind(VM2).unwrap().map(|b| b.care_of), Some(COA1));
    assert_consistent(&f, &reader, &[(VM, COA2)]);
    assert!(reader.lookup(VM2).is_none());
    assert_eq!(f.unbind(VM2), Ok(None));
    f.clear();
    assert_consistent(&f, &reader, &[]);
}

#[test]
fn a_failed_map_write_changes_nothing() {
    let (mut f, reader) = forwarder();
    // New binding, new care-of: the care-of map write fails.
    f.steering.fail_next = true;
    assert!(matches!(
        f.bind(VM, COA1, None),
        Err(ForwardError::Failed(_))
    ));
    assert_consistent(&f, &reader, &[]);
    // A move whose binding write fails: back on the old care-of, and the
    // new one (added for it) released again.
    f.bind(VM, COA1, None).unwrap();
    f.bind(VM2, COA1, None).unwrap();
    let before = f.list();
    for fail_bind in [false, true] {
        f.steering.fail_next = !fail_bind;
        f.steering.fail_next_bind = fail_bind;
        assert!(f.bind(VM, COA2, None).is_err());
        assert_eq!(f.list(), before);
        assert_consistent(&f, &reader, &[(VM, COA1), (VM2, COA1)]);
    }
    // A new binding whose map write fails leaves no table entry.
    f.steering.fail_next_bind = true;
    assert!(f
        .bind(VM2.to_bits().wrapping_add(1).into(), COA1, None)
        .is_err());
    assert_consistent(&f, &reader, &[(VM, COA1), (VM2, COA1)]);
    // An unbind the map refuses leaves the binding in place.
    f.steering.fail_next = true;
    assert!(f.unbind(VM).is_err());
    assert_consistent(&f, &reader, &[(VM, COA1), (VM2, COA1)]);
}

#[test]
fn full_is_refused_before_anything_changes() {
    let (mut f, reader) = forwarder();
    let vms: Vec<Ipv4Addr> = (0..4).map(|i| Ipv4Addr::new(192, 0, 2, 60 + i)).collect();
    for vm in &vms {
        f.bind(*vm, COA1, None).unwrap();
    }
    assert_eq!(f.bind(VM, COA2, None), Err(ForwardError::Full(VM, 4)));
    let want: Vec<_> = vms.iter().map(|v| (*v, COA1)).collect();
    assert_consistent(&f, &reader, &want);
    // A move of a bound VM still works when full.
    f.bind(vms[0], COA2, None).unwrap();
}

#[test]
fn followed_addresses_stay_tracked_across_bindings() {
    let (mut f, reader) = forwarder();
    f.follow(COA1);
    f.follow(COA1);
    assert_eq!(f.neigh.tracked(), vec![COA1]);
    // A binding over a followed address: no second track, no care-of map
    // entry until bound, and none left after.
    assert!(f.steering.care_ofs.is_empty());
    f.bind(VM, COA1, None).unwrap();
    assert_consistent(&f, &reader, &[(VM, COA1)]);
    f.unbind(VM).unwrap();
    assert_consistent(&f, &reader, &[]);
    assert_eq!(f.neigh.tracked(), vec![COA1]);
    // Unresolved until its MAC is known.
    assert_eq!(f.unresolved_next_hops(), 1);
    f.neigh.resolved.borrow_mut().insert(COA1, MAC);
    assert_eq!(f.unresolved_next_hops(), 0);
    assert_eq!(f.next_hops().get(&COA1), Some(&Some(MAC)));
}

#[test]
fn counts_start_at_zero_on_a_reused_slot() {
    let (mut f, _reader) = forwarder();
    f.bind(VM, COA1, None).unwrap();
    // A slot never used keeps no baseline.
    assert!(f.baselines.is_empty());
    let slot = f.get(VM).unwrap().slot;
    let w = f.workers.shared()[0].clone();
    w.count_slot(slot, 100, 1_000);
    w.count_slot(slot, 50, 2_000);
    assert_eq!(f.counts(VM), (2, 150));
    // A move keeps the counts.
    f.bind(VM, COA2, None).unwrap();
    assert_eq!(f.counts(VM), (2, 150));
    f.unbind(VM).unwrap();
    assert_eq!(f.counts(VM), (0, 0));
    // Bound again (same home slot): counted from zero.
    f.bind(VM, COA1, None).unwrap();
    assert_eq!(f.get(VM).unwrap().slot, slot);
    assert_eq!(f.baselines.len(), 1);
    assert_eq!(f.counts(VM), (0, 0));
    w.count_slot(slot, 10, 9_000);
    assert_eq!(f.counts(VM), (1, 10));
}

#[test]
fn the_first_packet_after_arming_is_timed() {
    let (mut f, _reader) = forwarder();
    f.bind(VM, COA1, None).unwrap();
    assert_eq!(f.first_packet(VM), None);
    let w = f.workers.shared()[0].clone();
    let slot = f.get(VM).unwrap().slot;
    w.count_slot(slot, 100, 1_000);
    w.count_slot(slot, 100, 5_000);
    let epoch = w.epoch();
    assert_eq!(
        f.first_packet(VM),
        Some(epoch + std::time::Duration::from_nanos(1_000))
    );
    // Moved: armed again, the next packet is the first.
    f.bind(VM, COA2, None).unwrap();
    f.arm_first_packet(VM);
    assert_eq!(f.first_packet(VM), None);
    w.count_slot(slot, 100, 7_000);
    assert_eq!(
        f.first_packet(VM),
        Some(epoch + std::time::Duration::from_nanos(7_000))
    );
    assert_eq!(f.first_packet(VM2), None);
}

#[test]
fn maps_out_of_sync_are_reported() {
    let (mut f, _reader) = forwarder();
    f.bind(VM, COA1, None).unwrap();
    f.steering.bound.insert(VM2, COA2);
    assert_eq!(f.maps_in_sync(), Ok(false));
}

#[test]
fn the_maps_comparison_is_paced_and_a_failed_write_redoes_it() {
    use std::time::Duration;
    let (mut f, _reader) = forwarder();
    f.bind(VM, COA1, None).unwrap();
    let t0 = Instant::now();
    assert!(f.maps_in_sync_paced(t0));
    // Another program changes the map: the fresh answer stands ...
    f.steering.bound.insert(VM2, COA2);
    assert!(f.maps_in_sync_paced(t0));
    // ... until 100 times as long as the comparison took has passed.
    let t1 = t0 + Duration::from_secs(3600);
    assert!(!f.maps_in_sync_paced(t1));
    f.steering.bound.remove(&VM2);
    assert!(!f.maps_in_sync_paced(t1), "still fresh");
    // A failed map write makes the next call compare again.
    f.steering.fail_next_bind = true;
    assert!(f.bind(VM2, COA2, None).is_err());
    assert!(f.maps_in_sync_paced(t1));
}
