//! Admin binding changes, durable before they are acknowledged: applied
//! to the data path, committed to the store, and only then answered; if
//! the commit fails, the data path is put back as it was and the answer is
//! the error. (Registrations do the same per burst, in `registration.rs`.)

use std::net::Ipv4Addr;
use std::time::Duration;

use dataplane::forwarder::{NextHops, SteeringMaps};

use super::bindings::{BindOutcome, Bindings, Now};
use crate::store::{Change, Origin, Store};

/// `homeward bind`.
#[allow(clippy::too_many_arguments)]
pub fn bind<S: SteeringMaps, N: NextHops>(
    bindings: &mut Bindings<S, N>,
    store: &mut dyn Store,
    now: Now,
    vm: Ipv4Addr,
    care_of: Ipv4Addr,
    lifetime: Option<Duration>,
    vm_mac: Option<[u8; 6]>,
) -> Result<BindOutcome, String> {
    let previous = bindings.stored(vm);
    let outcome = bindings.bind(now, vm, care_of, lifetime, vm_mac, Origin::Admin)?;
    let stored = bindings
        .stored(vm)
        .ok_or_else(|| format!("cannot bind {vm}: binding vanished"))?;
    if let Err(e) = store.commit(&[Change::Put(stored)]) {
        bindings.revert(now, vm, previous.as_ref());
        return Err(format!("cannot bind {vm}: {e}"));
    }
    Ok(outcome)
}

/// `homeward unbind`.
pub fn unbind<S: SteeringMaps, N: NextHops>(
    bindings: &mut Bindings<S, N>,
    store: &mut dyn Store,
    now: Now,
    vm: Ipv4Addr,
) -> Result<(), String> {
    let previous = bindings.stored(vm);
    bindings.unbind(now.mono, vm)?;
    if let Err(e) = store.commit(&[Change::Delete(vm)]) {
        bindings.revert(now, vm, previous.as_ref());
        return Err(format!("cannot unbind {vm}: {e}"));
    }
    Ok(())
}

/// A store whose commits are timed into the `store_commit` histogram.
pub(super) struct Timed<S> {
    pub inner: S,
    pub histogram: prometheus_client::metrics::histogram::Histogram,
}

impl<S: Store> Store for Timed<S> {
    fn load(
        &mut self,
        now_unix_ms: u64,
    ) -> Result<crate::store::Snapshot, crate::store::StoreError> {
        self.inner.load(now_unix_ms)
    }

    fn replication(&self) -> Option<crossbeam::channel::Receiver<crate::store::Replication>> {
        self.inner.replication()
    }

    fn fresh(&mut self, key: crate::store::Key, revision: i64) -> bool {
        self.inner.fresh(key, revision)
    }

    fn expires_itself(&self) -> bool {
        self.inner.expires_itself()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn commit(&mut self, changes: &[crate::store::Change]) -> Result<(), crate::store::StoreError> {
        let started = std::time::Instant::now();
        let result = self.inner.commit(changes);
        self.histogram.observe(started.elapsed().as_secs_f64());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::bindings::tests::bindings;
    use crate::store::{MemoryStore, SqliteStore};

    const VM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
    const COA1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    const COA2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

    #[test]
    fn nothing_is_acknowledged_that_the_store_did_not_take() {
        let (mut b, _reader, now) = bindings();
        let mut store = MemoryStore::default();
        bind(&mut b, &mut store, now, VM, COA1, None, None).unwrap();
        store.fail_next = true;
        assert!(bind(&mut b, &mut store, now, VM, COA2, None, None).is_err());
        assert_eq!(b.stored(VM).unwrap().care_of, COA1);
        store.fail_next = true;
        assert!(unbind(&mut b, &mut store, now, VM).is_err());
        assert_eq!(b.stored(VM).unwrap().care_of, COA1);
        assert_eq!(store.bindings[&VM].care_of, COA1);
        unbind(&mut b, &mut store, now, VM).unwrap();
        assert!(store.bindings.is_empty() && b.stored(VM).is_none());
    }

    /// Failpoints at the commit point of the real store: before the durable
    /// write, the command fails and nothing changed anywhere; after it, a
    /// crash before the answer leaves a change that survived (the one in
    /// flight), never one that did not.
    #[test]
    fn crash_injection_at_the_commit_point() {
        let dir = tempfile::tempdir().unwrap();
        let scenario = fail::FailScenario::setup();
        {
            let (mut b, _reader, now) = bindings();
            let mut store = SqliteStore::open(dir.path()).unwrap();
            fail::cfg("store-before-commit", "return").unwrap();
            assert!(bind(&mut b, &mut store, now, VM, COA1, None, None).is_err());
            assert!(b.stored(VM).is_none(), "bound without being stored");
            fail::remove("store-before-commit");

            fail::cfg("store-after-commit", "panic").unwrap();
            let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                bind(&mut b, &mut store, now, VM, COA2, None, None)
            }));
            assert!(crashed.is_err(), "the failpoint did not fire");
            fail::remove("store-after-commit");
        }
        scenario.teardown();
        // What the restart finds: the change whose write completed.
        let mut store = SqliteStore::open(dir.path()).unwrap();
        let snap = store.load(0).unwrap();
        assert_eq!(snap.bindings.len(), 1);
        assert_eq!(snap.bindings[0].care_of, COA2);
    }
}
