//! A replicated store (etcd): what other gateways change is applied here
//! to the bindings (table, XDP maps, neighbour tracking, through
//! [`Bindings`]) and the replay state, without committing it back; and
//! whether the store is reachable is tracked for logs, stats and metrics.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Instant;

use dataplane::forwarder::{NextHops, SteeringMaps};
use serde::Serialize;

use super::bindings::{Bindings, Now};
use crate::store::{Change, Key, Replicated, Replication, Store};

/// Where a gateway stands with a replicated store.
#[derive(Debug, Clone)]
pub(super) struct ReplicaState {
    pub connected: bool,
    /// Since when `connected` has held its value.
    pub since: Instant,
    pub last_error: Option<String>,
    /// Times the store was lost, and caught up with afterwards.
    pub losses: u64,
    pub resyncs: u64,
    /// Changes made by other gateways that were applied here.
    pub applied: u64,
}

impl ReplicaState {
    pub fn new(now: Instant) -> ReplicaState {
        ReplicaState {
            connected: true,
            since: now,
            last_error: None,
            losses: 0,
            resyncs: 0,
            applied: 0,
        }
    }
}

/// The `store` object of `homeward stats`.
#[derive(Debug, Clone, Serialize)]
pub(super) struct StoreStats {
    /// "sqlite" or "etcd".
    pub backend: &'static str,
    pub describe: String,
    /// etcd only: whether its watch is live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    /// etcd only: seconds `connected` has held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_for: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_for: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub losses: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resyncs: Option<u64>,
    /// Changes made at other gateways applied here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_changes: Option<u64>,
}

pub(super) fn stats(store: &dyn Store, state: Option<&ReplicaState>, now: Instant) -> StoreStats {
    let secs = |s: &ReplicaState| now.saturating_duration_since(s.since).as_secs();
    StoreStats {
        backend: if state.is_some() { "etcd" } else { "sqlite" },
        describe: store.describe(),
        connected: state.map(|s| s.connected),
        connected_for: state.filter(|s| s.connected).map(secs),
        disconnected_for: state.filter(|s| !s.connected).map(secs),
        last_error: state.and_then(|s| s.last_error.clone()),
        losses: state.map(|s| s.losses),
        resyncs: state.map(|s| s.resyncs),
        remote_changes: state.map(|s| s.applied),
    }
}

/// Receives what another gateway changed: replay state for the handler.
pub(super) trait ReplaySink {
    fn observe(&mut self, spi: u32, home: Ipv4Addr, id: u64);
}

impl ReplaySink for super::registration::Registration {
    fn observe(&mut self, spi: u32, home: Ipv4Addr, id: u64) {
        self.observe_replay(spi, home, id);
    }
}

/// No registration service: replay state has nowhere to go.
impl ReplaySink for () {
    fn observe(&mut self, _spi: u32, _home: Ipv4Addr, _id: u64) {}
}

/// Applies one message of the store's watch.
pub(super) fn apply<S: SteeringMaps, N: NextHops>(
    msg: Replication,
    bindings: &mut Bindings<S, N>,
    store: &mut dyn Store,
    replay: &mut dyn ReplaySink,
    state: &mut ReplicaState,
    now: Now,
) {
    match msg {
        Replication::Changes(list) => {
            for r in list {
                if store.fresh(r.key(), r.revision) {
                    apply_change(&r, bindings, replay, state, now);
                }
            }
        }
        Replication::Lost(why) => {
            if state.connected {
                state.connected = false;
                state.since = now.mono;
                state.losses += 1;
            }
            state.last_error = Some(why);
        }
        Replication::Resync {
            revision,
            state: entries,
        } => {
            let present: BTreeSet<Key> = entries.iter().map(Replicated::key).collect();
            for r in &entries {
                if store.fresh(r.key(), r.revision) {
                    apply_change(r, bindings, replay, state, now);
                }
            }
            // Gone from the store meanwhile (unbound elsewhere, expired):
            // unless this gateway knows of a newer change of its own. A
            // switchover in progress here is not stored, so not ended.
            let held: Vec<Ipv4Addr> = bindings.list(now.mono).iter().map(|b| b.vm).collect();
            for vm in held {
                let key = Key::Binding(vm);
                if present.contains(&key) || bindings.holding(vm) || !store.fresh(key, revision) {
                    continue;
                }
                apply_change(
                    &Replicated {
                        revision,
                        change: Change::Delete(vm),
                    },
                    bindings,
                    replay,
                    state,
                    now,
                );
            }
            if !state.connected {
                tracing::warn!(
                    revision,
                    lost_for_ms =
                        now.mono.saturating_duration_since(state.since).as_millis() as u64,
                    "etcd is back: caught up"
                );
                state.connected = true;
                state.since = now.mono;
                state.resyncs += 1;
            }
        }
    }
}

/// Takes the whole of a freshly loaded store as it is (after a failed
/// `--takeover`, when the store was closed for a while).
pub(super) fn adopt<S: SteeringMaps, N: NextHops>(
    snapshot: crate::store::Snapshot,
    bindings: &mut Bindings<S, N>,
    replay: &mut dyn ReplaySink,
    state: &mut ReplicaState,
    now: Now,
) {
    for ((spi, home), id) in snapshot.replay {
        replay.observe(spi, home, id);
    }
    let present: BTreeSet<Ipv4Addr> = snapshot.bindings.iter().map(|b| b.vm).collect();
    let mut changes: Vec<Change> = snapshot.bindings.into_iter().map(Change::Put).collect();
    for b in bindings.list(now.mono) {
        if !present.contains(&b.vm) && !bindings.holding(b.vm) {
            changes.push(Change::Delete(b.vm));
        }
    }
    for change in changes {
        apply_change(
            &Replicated {
                revision: 0,
                change,
            },
            bindings,
            replay,
            state,
            now,
        );
    }
}

fn apply_change<S: SteeringMaps, N: NextHops>(
    r: &Replicated,
    bindings: &mut Bindings<S, N>,
    replay: &mut dyn ReplaySink,
    state: &mut ReplicaState,
    now: Now,
) {
    match &r.change {
        Change::Put(b) => {
            if bindings.stored(b.vm).as_ref() == Some(b) {
                return;
            }
            match bindings.restore(now, b) {
                Ok(_) => {
                    state.applied += 1;
                    tracing::info!(vm = %b.vm, care_of = %b.care_of, revision = r.revision, "binding from another gateway applied");
                }
                Err(e) => {
                    tracing::warn!(vm = %b.vm, "binding from another gateway not applied: {e}")
                }
            }
        }
        Change::Delete(vm) => {
            if bindings.stored(*vm).is_none() && !bindings.holding(*vm) {
                return;
            }
            match bindings.unbind(now.mono, *vm) {
                Ok(()) => {
                    state.applied += 1;
                    tracing::info!(%vm, revision = r.revision, "binding removed by another gateway (or its lifetime ran out)");
                }
                Err(e) => tracing::warn!(%vm, "cannot remove a binding removed elsewhere: {e}"),
            }
        }
        Change::Replay { spi, home, id } => {
            state.applied += 1;
            replay.observe(*spi, *home, *id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::bindings::tests::bindings;
    use crate::store::{MemoryStore, Origin, StoredBinding};

    const VM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
    const VM2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 51);
    const COA1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    const COA2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

    /// A store that knows revisions like the etcd one.
    #[derive(Default)]
    struct Versions {
        inner: MemoryStore,
        known: std::collections::HashMap<Key, i64>,
    }

    impl Store for Versions {
        fn load(&mut self, t: u64) -> Result<crate::store::Snapshot, crate::store::StoreError> {
            self.inner.load(t)
        }
        fn commit(&mut self, c: &[Change]) -> Result<(), crate::store::StoreError> {
            self.inner.commit(c)
        }
        fn fresh(&mut self, key: Key, revision: i64) -> bool {
            if self.known.get(&key).is_some_and(|r| *r >= revision) {
                return false;
            }
            self.known.insert(key, revision);
            true
        }
        fn describe(&self) -> String {
            "versions".into()
        }
    }

    #[derive(Default)]
    struct Ids(Vec<(u32, Ipv4Addr, u64)>);
    impl ReplaySink for Ids {
        fn observe(&mut self, spi: u32, home: Ipv4Addr, id: u64) {
            self.0.push((spi, home, id));
        }
    }

    fn put(vm: Ipv4Addr, coa: Ipv4Addr, revision: i64) -> Replicated {
        Replicated {
            revision,
            change: Change::Put(StoredBinding {
                vm,
                care_of: coa,
                vm_mac: None,
                expires_unix_ms: None,
                origin: Origin::Admin,
            }),
        }
    }

    #[test]
    fn remote_changes_apply_once_and_never_go_back_in_time() {
        let (mut b, _reader, now) = bindings();
        let mut store = Versions::default();
        let mut ids = Ids::default();
        let mut state = ReplicaState::new(now.mono);
        let mut go =
            |msg, b: &mut _, store: &mut Versions| apply(msg, b, store, &mut ids, &mut state, now);
        go(
            Replication::Changes(vec![put(VM, COA1, 5)]),
            &mut b,
            &mut store,
        );
        assert_eq!(b.stored(VM).unwrap().care_of, COA1);
        // This gateway's own commit at revision 7 is newer than a change
        // at 6 that the watch delivers late.
        store.fresh(Key::Binding(VM), 7);
        go(
            Replication::Changes(vec![put(VM, COA2, 6)]),
            &mut b,
            &mut store,
        );
        assert_eq!(b.stored(VM).unwrap().care_of, COA1);
        go(
            Replication::Changes(vec![Replicated {
                revision: 8,
                change: Change::Delete(VM),
            }]),
            &mut b,
            &mut store,
        );
        assert!(b.stored(VM).is_none());
        go(
            Replication::Changes(vec![Replicated {
                revision: 9,
                change: Change::Replay {
                    spi: 3,
                    home: VM,
                    id: 42,
                },
            }]),
            &mut b,
            &mut store,
        );
        assert_eq!(ids.0, vec![(3, VM, 42)]);
    }

    #[test]
    fn a_lost_store_is_reported_and_a_resync_catches_up() {
        let (mut b, _reader, now) = bindings();
        let mut store = Versions::default();
        let mut state = ReplicaState::new(now.mono);
        apply(
            Replication::Changes(vec![put(VM, COA1, 5), put(VM2, COA1, 6)]),
            &mut b,
            &mut store,
            &mut (),
            &mut state,
            now,
        );
        apply(
            Replication::Lost("connection refused".into()),
            &mut b,
            &mut store,
            &mut (),
            &mut state,
            now,
        );
        assert!(!state.connected && state.losses == 1);
        // Forwarding goes on with what it had.
        assert_eq!(b.list(now.mono).len(), 2);
        // Meanwhile VM moved and VM2 was unbound elsewhere.
        apply(
            Replication::Resync {
                revision: 20,
                state: vec![put(VM, COA2, 15)],
            },
            &mut b,
            &mut store,
            &mut (),
            &mut state,
            now,
        );
        assert!(state.connected && state.resyncs == 1);
        assert_eq!(b.stored(VM).unwrap().care_of, COA2);
        assert!(b.stored(VM2).is_none());
        let s = stats(&store, Some(&state), now.mono);
        assert_eq!(
            (s.backend, s.connected, s.resyncs),
            ("etcd", Some(true), Some(1))
        );
    }
}
