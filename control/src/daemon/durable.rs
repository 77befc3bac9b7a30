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

/// One line of a bind file: `VM CARE_OF [LIFETIME]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindLine {
    /// 1-based line number, for errors.
    pub line: usize,
    pub vm: Ipv4Addr,
    pub care_of: Ipv4Addr,
    pub lifetime: Option<Duration>,
}

/// Largest bind file the daemon reads (about 8M lines).
pub const MAX_BIND_FILE: u64 = 256 << 20;

/// Bindings applied and committed per store transaction by [`bind_many`]:
/// one commit (one fsync) per batch, and a failure undoes one batch.
pub const BIND_BATCH: usize = 50_000;

/// Parses a bind file: one binding per line, `VM CARE_OF [LIFETIME]`
/// (whitespace-separated; LIFETIME in seconds, default: never expires);
/// blank lines and `#` comments are skipped. A VM named twice is an error.
/// Errors name the line.
pub fn parse_bind_file(text: &str) -> Result<Vec<BindLine>, String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("");
        let mut fields = content.split_whitespace();
        let Some(vm) = fields.next() else { continue };
        let bad = |what: &str| format!("line {line}: {what} in {:?}", raw.trim());
        let vm: Ipv4Addr = vm.parse().map_err(|_| bad("bad VM address"))?;
        let care_of: Ipv4Addr = fields
            .next()
            .ok_or_else(|| bad("no care-of address (expected VM CARE_OF [LIFETIME])"))?
            .parse()
            .map_err(|_| bad("bad care-of address"))?;
        let lifetime = match fields.next() {
            None => None,
            Some(l) => match l.parse::<u32>() {
                Ok(s) if s > 0 => Some(Duration::from_secs(s.into())),
                _ => return Err(bad("LIFETIME must be whole seconds, at least 1")),
            },
        };
        if fields.next().is_some() {
            return Err(bad("more than VM CARE_OF [LIFETIME]"));
        }
        if !seen.insert(vm) {
            return Err(bad("VM bound twice in this file"));
        }
        out.push(BindLine {
            line,
            vm,
            care_of,
            lifetime,
        });
    }
    Ok(out)
}

/// What [`bind_many`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BindManyOutcome {
    pub created: usize,
    pub updated: usize,
}

/// `homeward bind --file`: every line bound as `homeward bind` would, in
/// batches of [`BIND_BATCH`] (or fewer, as the store allows), each applied to the data path, then committed
/// in one store transaction; a batch whose binding is refused or whose
/// commit fails is undone as a whole, and the error says how many earlier
/// bindings stay bound (committed).
pub fn bind_many<S: SteeringMaps, N: NextHops>(
    bindings: &mut Bindings<S, N>,
    store: &mut dyn Store,
    now: Now,
    lines: &[BindLine],
) -> Result<BindManyOutcome, String> {
    bindings.set_bulk(true);
    let result = bind_batches(bindings, store, now, lines);
    bindings.set_bulk(false);
    result
}

fn bind_batches<S: SteeringMaps, N: NextHops>(
    bindings: &mut Bindings<S, N>,
    store: &mut dyn Store,
    now: Now,
    lines: &[BindLine],
) -> Result<BindManyOutcome, String> {
    let mut done = BindManyOutcome::default();
    for batch in lines.chunks(BIND_BATCH.min(store.max_changes()).max(1)) {
        let mut applied = Vec::with_capacity(batch.len());
        let mut changes = Vec::with_capacity(batch.len());
        let mut failure = None;
        for l in batch {
            let previous = bindings.stored(l.vm);
            match bindings.bind(now, l.vm, l.care_of, l.lifetime, None, Origin::Admin) {
                Ok(outcome) => {
                    applied.push((l.vm, previous, outcome));
                    match bindings.stored(l.vm) {
                        Some(s) => changes.push(Change::Put(s)),
                        None => {
                            failure = Some(format!("line {}: binding vanished", l.line));
                            break;
                        }
                    }
                }
                Err(e) => {
                    failure = Some(format!("line {}: cannot bind {}: {e}", l.line, l.vm));
                    break;
                }
            }
        }
        if failure.is_none() {
            if let Err(e) = store.commit(&changes) {
                failure = Some(format!("cannot commit lines {}..: {e}", batch[0].line));
            }
        }
        if let Some(why) = failure {
            for (vm, previous, _) in applied.iter().rev() {
                bindings.revert(now, *vm, previous.as_ref());
            }
            return Err(format!(
                "{why}; nothing from line {} on was bound ({} bindings before it were bound and committed)",
                batch[0].line,
                done.created + done.updated
            ));
        }
        for (_, _, outcome) in applied {
            match outcome {
                BindOutcome::Created => done.created += 1,
                BindOutcome::Updated => done.updated += 1,
            }
        }
    }
    Ok(done)
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

    fn max_changes(&self) -> usize {
        self.inner.max_changes()
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

    fn coa(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, i)
    }

    #[test]
    fn bind_file_parses_lines_comments_and_lifetimes() {
        let text = "# VM CARE_OF [LIFETIME]\n\n192.0.2.50 203.0.113.1\n  192.0.2.51\t203.0.113.2 60 # a comment\n";
        let lines = parse_bind_file(text).unwrap();
        assert_eq!(
            lines,
            vec![
                BindLine {
                    line: 3,
                    vm: VM,
                    care_of: COA1,
                    lifetime: None
                },
                BindLine {
                    line: 4,
                    vm: Ipv4Addr::new(192, 0, 2, 51),
                    care_of: COA2,
                    lifetime: Some(Duration::from_secs(60))
                },
            ]
        );
        assert_eq!(parse_bind_file("").unwrap(), vec![]);
    }

    #[test]
    fn bind_file_errors_name_the_line() {
        for (text, want) in [
            (
                "192.0.2.1 203.0.113.1\n192.0.2.300 203.0.113.1",
                "line 2: bad VM address",
            ),
            ("192.0.2.1", "line 1: no care-of address"),
            ("192.0.2.1 x", "line 1: bad care-of address"),
            ("192.0.2.1 203.0.113.1 0", "line 1: LIFETIME"),
            ("192.0.2.1 203.0.113.1 -5", "line 1: LIFETIME"),
            ("192.0.2.1 203.0.113.1 1.5", "line 1: LIFETIME"),
            ("192.0.2.1 203.0.113.1 5 x", "line 1: more than"),
            (
                "192.0.2.1 203.0.113.1\n\n192.0.2.1 203.0.113.2",
                "line 3: VM bound twice",
            ),
        ] {
            let e = parse_bind_file(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn bind_many_splits_its_batches_to_what_the_store_takes() {
        let (mut b, _reader, now) = bindings();
        let mut store = MemoryStore {
            max_changes: Some(2),
            ..MemoryStore::default()
        };
        let text: String = (1..=3)
            .map(|i| format!("192.0.2.{} 203.0.113.1\n", 50 + i))
            .collect();
        let lines = parse_bind_file(&text).unwrap();
        let done = bind_many(&mut b, &mut store, now, &lines).unwrap();
        assert_eq!(done.created, 3);
        assert_eq!(store.bindings.len(), 3);
        assert_eq!(store.commits, 2);
    }

    #[test]
    fn bind_many_commits_in_batches_and_undoes_a_failed_batch() {
        let (mut b, _reader, now) = bindings();
        let mut store = MemoryStore::default();
        let lines = parse_bind_file("192.0.2.50 203.0.113.1\n192.0.2.51 203.0.113.2 30\n").unwrap();
        let done = bind_many(&mut b, &mut store, now, &lines).unwrap();
        assert_eq!(
            done,
            BindManyOutcome {
                created: 2,
                updated: 0
            }
        );
        assert_eq!(store.bindings[&VM].care_of, COA1);
        assert!(store.bindings[&Ipv4Addr::new(192, 0, 2, 51)]
            .expires_unix_ms
            .is_some());

        // A refused line undoes its batch: VM keeps COA1.
        let lines = parse_bind_file("192.0.2.50 203.0.113.3\n192.0.2.52 0.0.0.0\n").unwrap();
        let e = bind_many(&mut b, &mut store, now, &lines).unwrap_err();
        assert!(e.starts_with("line 2: cannot bind 192.0.2.52"), "{e}");
        assert_eq!(b.stored(VM).unwrap().care_of, COA1);
        assert!(b.stored(Ipv4Addr::new(192, 0, 2, 52)).is_none());

        // A failed commit too, and nothing reaches the store.
        let lines = parse_bind_file("192.0.2.50 203.0.113.3\n192.0.2.53 203.0.113.4\n").unwrap();
        store.fail_next = true;
        assert!(bind_many(&mut b, &mut store, now, &lines).is_err());
        assert_eq!(b.stored(VM).unwrap().care_of, COA1);
        assert!(b.stored(Ipv4Addr::new(192, 0, 2, 53)).is_none());
        assert_eq!(store.bindings.len(), 2);

        // A rebind counts as updated.
        let lines = parse_bind_file("192.0.2.50 203.0.113.3").unwrap();
        let done = bind_many(&mut b, &mut store, now, &lines).unwrap();
        assert_eq!(
            done,
            BindManyOutcome {
                created: 0,
                updated: 1
            }
        );
        assert_eq!(store.bindings[&VM].care_of, coa(3));
    }

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
