//! The durable store: bindings and registration replay state, behind a
//! small interface so a replicated backend (etcd) can stand in for the
//! embedded one.
//!
//! Everything that must survive a restart goes through [`Store::commit`]
//! before it is acknowledged (the admin command's reply, the Registration
//! Reply). A commit takes a batch of changes and makes them durable
//! together: a burst of registrations shares one commit (group commit).
//! Lifetimes are absolute (Unix milliseconds), so a binding that expired
//! while the daemon was down is dropped when the store is loaded.

mod sqlite;

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use sqlite::SqliteStore;

/// Who made a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Origin {
    /// `homeward bind` over the control socket.
    Admin,
    /// An accepted RFC 5944 registration under this SPI.
    Registration { spi: u32 },
}

/// A binding as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBinding {
    pub vm: Ipv4Addr,
    pub care_of: Ipv4Addr,
    pub vm_mac: Option<[u8; 6]>,
    /// Absolute expiry, milliseconds since the Unix epoch; `None`: until unbound.
    pub expires_unix_ms: Option<u64>,
    pub origin: Origin,
}

/// One change in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or replace the binding of `binding.vm`.
    Put(StoredBinding),
    /// Remove the binding of this VM (absent is fine).
    Delete(Ipv4Addr),
    /// The last accepted registration Identification of (SPI, home address).
    Replay { spi: u32, home: Ipv4Addr, id: u64 },
}

/// The last accepted Identification per (SPI, home address).
pub type ReplayState = Vec<((u32, Ipv4Addr), u64)>;

/// What [`Store::load`] returns: the state to restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Bindings still alive at the load time, by VM.
    pub bindings: Vec<StoredBinding>,
    /// Bindings found expired (and removed) at load.
    pub expired: usize,
    /// Last accepted Identification per (SPI, home address).
    pub replay: ReplayState,
}

/// Why the store failed. Each names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be opened or read.
    #[error("cannot open the state store {path}: {message}. Check the state directory's permissions and free space")]
    Open { path: PathBuf, message: String },
    /// The file is damaged: never emptied silently.
    #[error("the state store {path} is damaged ({message}). homeward will not start on it: move it aside (its bindings are then lost until the agents re-register) or restore it from a backup")]
    Corrupt { path: PathBuf, message: String },
    /// Another process holds the state directory.
    #[error("the state directory {path} is in use by another homeward (pid {pid}): stop it, or give this one its own --state-dir")]
    Locked { path: PathBuf, pid: String },
    /// A commit did not reach the disk: nothing in it may be acknowledged.
    #[error("cannot commit to the state store {path}: {message}")]
    Commit { path: PathBuf, message: String },
}

/// The binding and replay store.
pub trait Store {
    /// Everything alive at `now_unix_ms`; expired bindings are removed.
    fn load(&mut self, now_unix_ms: u64) -> Result<Snapshot, StoreError>;
    /// Makes every change durable, all or none, before returning `Ok`.
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError>;
}

/// Where a daemon's store is while a `--takeover` successor holds it: the
/// control loop is stopped then, so nothing should reach it, and whatever
/// does is refused rather than acknowledged.
#[derive(Debug)]
pub struct Lent {
    pub path: PathBuf,
}

impl Store for Lent {
    fn load(&mut self, _now_unix_ms: u64) -> Result<Snapshot, StoreError> {
        Err(StoreError::Open {
            path: self.path.clone(),
            message: "handed to a --takeover successor".into(),
        })
    }
    fn commit(&mut self, _changes: &[Change]) -> Result<(), StoreError> {
        Err(StoreError::Commit {
            path: self.path.clone(),
            message: "handed to a --takeover successor".into(),
        })
    }
}

/// An in-memory store: for tests of the code above it, never for a daemon.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub bindings: std::collections::BTreeMap<Ipv4Addr, StoredBinding>,
    pub replay: std::collections::BTreeMap<(u32, Ipv4Addr), u64>,
    /// Number of commits, to check batching.
    pub commits: usize,
    /// Fail the next commit (to test that nothing is acknowledged then).
    pub fail_next: bool,
}

impl Store for MemoryStore {
    fn load(&mut self, now_unix_ms: u64) -> Result<Snapshot, StoreError> {
        let before = self.bindings.len();
        self.bindings
            .retain(|_, b| b.expires_unix_ms.is_none_or(|t| t > now_unix_ms));
        Ok(Snapshot {
            expired: before - self.bindings.len(),
            bindings: self.bindings.values().cloned().collect(),
            replay: self.replay.iter().map(|(k, v)| (*k, *v)).collect(),
        })
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if std::mem::take(&mut self.fail_next) {
            return Err(StoreError::Commit {
                path: PathBuf::from("memory"),
                message: "injected failure".into(),
            });
        }
        for c in changes {
            apply(&mut self.bindings, &mut self.replay, c);
        }
        self.commits += 1;
        Ok(())
    }
}

fn apply(
    bindings: &mut std::collections::BTreeMap<Ipv4Addr, StoredBinding>,
    replay: &mut std::collections::BTreeMap<(u32, Ipv4Addr), u64>,
    c: &Change,
) {
    match c {
        Change::Put(b) => {
            bindings.insert(b.vm, b.clone());
        }
        Change::Delete(vm) => {
            bindings.remove(vm);
        }
        Change::Replay { spi, home, id } => {
            let e = replay.entry((*spi, *home)).or_insert(*id);
            *e = (*e).max(*id);
        }
    }
}
