//! The state store opened on a damaged file: the input becomes the
//! database file (`homeward.db`) of a fresh state directory, which
//! `SqliteStore::open` and `load` then read, as `homeward run` does at
//! start.
//!
//! Invariants: no panic, no hang; either an error that names the file
//! (damaged or unreadable, never silently emptied), or a snapshot whose
//! bindings are alive and one per VM, after which a commit works and a
//! second load finds the same state.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use homeward::store::{Change, SqliteStore, Store, StoreError};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000_000;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // In memory when possible: every input is a few file writes.
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("homeward-fuzz-store-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let db = dir.join("homeward.db");
    std::fs::write(&db, data).unwrap();
    let loaded = SqliteStore::open(dir).and_then(|mut s| s.load(NOW).map(|snap| (s, snap)));
    match loaded {
        Err(e) => {
            assert!(
                matches!(e, StoreError::Corrupt { .. } | StoreError::Open { .. }),
                "{e}"
            );
            assert!(e.to_string().contains("homeward.db"), "{e}");
        }
        Ok((mut store, snap)) => {
            let mut vms: Vec<_> = snap.bindings.iter().map(|b| b.vm).collect();
            vms.sort();
            vms.dedup();
            assert_eq!(vms.len(), snap.bindings.len(), "two bindings of one VM");
            assert!(snap
                .bindings
                .iter()
                .all(|b| b.expires_unix_ms.is_none_or(|t| t > NOW)));
            // The store still takes changes, and gives back what it took.
            if store
                .commit(&[Change::Delete("192.0.2.1".parse().unwrap())])
                .is_ok()
            {
                let again = store.load(NOW).unwrap();
                assert_eq!(again.bindings.len(), snap.bindings.len());
            }
        }
    }
});
