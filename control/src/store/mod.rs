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

pub mod etcd;
mod sqlite;

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use etcd::EtcdStore;
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
    /// etcd cannot be reached (or refused us): nothing was acknowledged.
    #[error("etcd at {endpoints} is unreachable or refused the request ({message}); nothing was acknowledged (a request that reached etcd before the timeout may still be applied: every gateway then follows it). Check that the etcd cluster is up and has quorum (etcdctl endpoint health), and the endpoints and TLS files in [etcd]")]
    EtcdUnavailable { endpoints: String, message: String },
    /// A key under the prefix holds what homeward cannot read.
    #[error("the etcd key {key} holds a value homeward cannot read ({message}): delete it (etcdctl del {key}; its binding is lost until the agent re-registers) or fix what wrote it")]
    EtcdData { key: String, message: String },
    /// The compare-and-swap of a registration Identification failed:
    /// another gateway accepted this one or a newer one first.
    #[error("another gateway accepted an Identification at least as new for SPI {spi} home {home} first: refused (its state is reloaded from etcd)")]
    ReplayConflict { spi: u32, home: Ipv4Addr },
}

/// The binding and replay store.
pub trait Store {
    /// Everything alive at `now_unix_ms`; expired bindings are removed.
    fn load(&mut self, now_unix_ms: u64) -> Result<Snapshot, StoreError>;
    /// Makes every change durable, all or none, before returning `Ok`.
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError>;
    /// A replicated store: what other gateways change, for the control
    /// loop to apply (started by the first [`Store::load`]). `None` for a
    /// store only this daemon writes.
    fn replication(&self) -> Option<crossbeam::channel::Receiver<Replication>> {
        None
    }
    /// Whether a replicated change of `key` at `revision` is news to this
    /// gateway (not its own commit, not older than what it has); if so it
    /// is recorded as known. Always true for a store nobody else writes.
    fn fresh(&mut self, _key: Key, _revision: i64) -> bool {
        true
    }
    /// Whether the store removes expired bindings itself (etcd's leases):
    /// then a lifetime that runs out is not committed as a delete, which
    /// could race a refresh made at another gateway.
    fn expires_itself(&self) -> bool {
        false
    }
    /// What the store is, for logs.
    /// The most changes one [`Store::commit`] may carry (a bulk bind
    /// splits its batches to fit).
    fn max_changes(&self) -> usize {
        usize::MAX
    }
    fn describe(&self) -> String;
}

impl<T: Store + ?Sized> Store for Box<T> {
    fn load(&mut self, now_unix_ms: u64) -> Result<Snapshot, StoreError> {
        (**self).load(now_unix_ms)
    }
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        (**self).commit(changes)
    }
    fn replication(&self) -> Option<crossbeam::channel::Receiver<Replication>> {
        (**self).replication()
    }
    fn fresh(&mut self, key: Key, revision: i64) -> bool {
        (**self).fresh(key, revision)
    }
    fn expires_itself(&self) -> bool {
        (**self).expires_itself()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// What a replicated change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Binding(Ipv4Addr),
    Replay { spi: u32, home: Ipv4Addr },
}

/// One change another gateway made, at its store revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicated {
    pub revision: i64,
    pub change: Change,
}

impl Replicated {
    /// What it changes.
    pub fn key(&self) -> Key {
        match &self.change {
            Change::Put(b) => Key::Binding(b.vm),
            Change::Delete(vm) => Key::Binding(*vm),
            Change::Replay { spi, home, .. } => Key::Replay {
                spi: *spi,
                home: *home,
            },
        }
    }
}

/// What a replicated store's watch tells the control loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// Changes, in revision order.
    Changes(Vec<Replicated>),
    /// The watch was lost: the store is unreachable (why). The gateway
    /// keeps forwarding what it has.
    Lost(String),
    /// Connected again (or for the first time after a loss): everything
    /// under the prefix at `revision`. What the gateway holds beyond it is
    /// removed, unless it knows a newer revision of that key.
    Resync {
        revision: i64,
        state: Vec<Replicated>,
    },
}

/// Where a daemon's store is while a `--takeover` successor holds it: the
/// control loop is stopped then, so nothing should reach it, and whatever
/// does is refused rather than acknowledged.
#[derive(Debug)]
pub struct Lent {
    pub path: PathBuf,
}

impl Store for Lent {
    fn describe(&self) -> String {
        format!("{} (lent)", self.path.display())
    }
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
    /// Refuse commits of more changes than this (as etcd does), if set.
    pub max_changes: Option<usize>,
}

impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn max_changes(&self) -> usize {
        self.max_changes.unwrap_or(usize::MAX)
    }
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
        if changes.len() > self.max_changes() {
            return Err(StoreError::Commit {
                path: PathBuf::from("memory"),
                message: format!("{} changes in one commit", changes.len()),
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
