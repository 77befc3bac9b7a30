use super::*;
use crate::store::Snapshot;

fn binding(n: u8, expires: Option<u64>, origin: Origin) -> StoredBinding {
    StoredBinding {
        vm: Ipv4Addr::new(192, 0, 2, n),
        care_of: Ipv4Addr::new(203, 0, 113, n),
        vm_mac: n.is_multiple_of(2).then_some([0x52, 0x54, 0, 0, 0, n]),
        expires_unix_ms: expires,
        origin,
    }
}

const NOW: u64 = 1_800_000_000_000;

fn sample() -> Vec<Change> {
    let mut changes = Vec::new();
    for n in 1u8..=40 {
        let origin = if n.is_multiple_of(3) {
            Origin::Admin
        } else {
            Origin::Registration {
                spi: 256 + u32::from(n % 2),
            }
        };
        let expires = (!n.is_multiple_of(4)).then_some(NOW + 60_000 + u64::from(n));
        changes.push(Change::Put(binding(n, expires, origin)));
        changes.push(Change::Replay {
            spi: 256,
            home: Ipv4Addr::new(192, 0, 2, n),
            // High bit set: stored as a negative i64, read back intact.
            id: (0xe000_0000u64 << 32) | u64::from(n),
        });
    }
    changes.push(Change::Delete(Ipv4Addr::new(192, 0, 2, 7)));
    changes
}

fn sorted(mut s: Snapshot) -> Snapshot {
    s.bindings.sort_by_key(|b| b.vm);
    s.replay.sort();
    s
}

#[test]
fn changes_survive_a_reopen_and_expired_bindings_go() {
    // Failpoints are process-wide: every test that commits holds the lock.
    let _serial = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = SqliteStore::open(dir.path()).unwrap();
        s.commit(&sample()).unwrap();
        s.commit(&[Change::Put(binding(99, Some(NOW - 1), Origin::Admin))])
            .unwrap();
    }
    let mut s = SqliteStore::open(dir.path()).unwrap();
    let snap = sorted(s.load(NOW).unwrap());
    assert_eq!(snap.expired, 1);
    assert_eq!(snap.bindings.len(), 39);
    assert!(snap
        .bindings
        .iter()
        .all(|b| b.vm != Ipv4Addr::new(192, 0, 2, 7)));
    assert_eq!(
        snap.bindings[0],
        binding(1, Some(NOW + 60_001), Origin::Registration { spi: 257 })
    );
    assert_eq!(snap.replay.len(), 40);
    assert_eq!(
        snap.replay[0],
        (
            (256, Ipv4Addr::new(192, 0, 2, 1)),
            (0xe000_0000u64 << 32) | 1
        )
    );
    // The expired binding was removed from the file at load.
    assert_eq!(s.load(NOW).unwrap().expired, 0);
    // The memory store, the model for the others, agrees.
    let mut m = crate::store::MemoryStore::default();
    m.commit(&sample()).unwrap();
    assert_eq!(sorted(m.load(NOW).unwrap()), sorted(s.load(NOW).unwrap()));
}

#[test]
fn one_directory_one_daemon() {
    let _serial = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let _first = SqliteStore::open(dir.path()).unwrap();
    let e = SqliteStore::open(dir.path()).unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    assert!(
        e.to_string().contains(&std::process::id().to_string()),
        "{e}"
    );
}

#[test]
fn failed_commit_leaves_nothing_and_later_commits_work() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = fail::FailScenario::setup();
    {
        let mut s = SqliteStore::open(dir.path()).unwrap();
        s.commit(&[Change::Put(binding(1, None, Origin::Admin))])
            .unwrap();
        fail::cfg("store-before-commit", "return").unwrap();
        let e = s
            .commit(&[Change::Put(binding(2, None, Origin::Admin))])
            .unwrap_err();
        assert!(matches!(e, StoreError::Commit { .. }));
        fail::remove("store-before-commit");
        s.commit(&[Change::Put(binding(3, None, Origin::Admin))])
            .unwrap();
    }
    scenario.teardown();
    let mut s = SqliteStore::open(dir.path()).unwrap();
    let vms: Vec<_> = sorted(s.load(NOW).unwrap())
        .bindings
        .iter()
        .map(|b| b.vm)
        .collect();
    assert_eq!(
        vms,
        [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 3)]
    );
}

#[test]
fn a_checksum_mismatch_is_an_error_not_a_wrong_binding() {
    let _serial = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = SqliteStore::open(dir.path()).unwrap();
        s.commit(&sample()).unwrap();
        // A value changed behind the store's back (a flipped bit on disk
        // that the page structure does not notice).
        s.conn
            .execute(
                "UPDATE bindings SET care_of = care_of + 1 WHERE vm = ?1",
                [i64::from(u32::from(Ipv4Addr::new(192, 0, 2, 5)))],
            )
            .unwrap();
    }
    let mut s = SqliteStore::open(dir.path()).unwrap();
    let e = s.load(NOW).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("192.0.2.5"), "{e}");
    assert!(e.to_string().contains("move it aside"), "{e}");
}

/// A small deterministic generator, so a failure can be replayed.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random byte flips and truncations of the file: each is detected (an
/// error that names the file), or it hit bytes that hold nothing and the
/// content is exactly what was written. Never a panic, never other data.
#[test]
fn damaged_files_are_detected() {
    let _serial = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = SqliteStore::open(dir.path()).unwrap();
        s.commit(&sample()).unwrap();
    }
    let db = dir.path().join(DB_FILE);
    let pristine = std::fs::read(&db).unwrap();
    let expected = {
        let mut s = SqliteStore::open(dir.path()).unwrap();
        sorted(s.load(NOW).unwrap())
    };
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut detected, mut harmless) = (0, 0);
    for round in 0..300 {
        let mut bytes = pristine.clone();
        if round % 5 == 4 {
            let len = (rng.next() % bytes.len() as u64) as usize;
            bytes.truncate(len);
        } else {
            for _ in 0..=(rng.next() % 4) {
                let at = (rng.next() % bytes.len() as u64) as usize;
                bytes[at] ^= 1 << (rng.next() % 8);
            }
        }
        std::fs::write(&db, &bytes).unwrap();
        let _ = std::fs::remove_file(dir.path().join("homeward.db-wal"));
        let _ = std::fs::remove_file(dir.path().join("homeward.db-shm"));
        let result = SqliteStore::open(dir.path()).and_then(|mut s| s.load(NOW).map(sorted));
        match result {
            Ok(snap) => {
                assert_eq!(
                    snap, expected,
                    "round {round}: damage changed the content silently"
                );
                harmless += 1;
            }
            Err(e) => {
                assert!(
                    matches!(e, StoreError::Corrupt { .. } | StoreError::Open { .. }),
                    "round {round}: {e}"
                );
                assert!(e.to_string().contains(DB_FILE), "round {round}: {e}");
                detected += 1;
            }
        }
    }
    eprintln!("damaged store files: {detected} detected, {harmless} harmless (unused bytes)");
    assert!(detected > 0);
}
