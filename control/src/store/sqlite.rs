//! The embedded store: SQLite (through rusqlite, built from its bundled
//! source) in `STATE_DIR/homeward.db`.
//!
//! Why SQLite: it is the most tested embedded store there is against
//! crashes and damaged files (power-cut and I/O-error testing, continuous
//! fuzzing), it reports damage as an error instead of failing in other
//! ways, and its WAL mode with `synchronous=FULL` makes a commit durable
//! with one fsync. SQLite keeps no checksum of a row's content, so each row
//! carries a CRC-32 of its fields: a flipped byte in a value is a loud
//! error at load, not a wrong binding.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, ErrorCode, OpenFlags};

use super::{Change, Origin, ReplayState, Snapshot, Store, StoreError, StoredBinding};

/// The database file in the state directory.
pub const DB_FILE: &str = "homeward.db";
/// The lock file that keeps two daemons off one state directory.
pub const LOCK_FILE: &str = "lock";
/// Bumped when the schema changes incompatibly.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bindings (
    vm        INTEGER PRIMARY KEY,
    care_of   INTEGER NOT NULL,
    vm_mac    BLOB,
    expires   INTEGER,
    spi       INTEGER,
    crc       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS replay (
    spi  INTEGER NOT NULL,
    home INTEGER NOT NULL,
    id   INTEGER NOT NULL,
    crc  INTEGER NOT NULL,
    PRIMARY KEY (spi, home)
);
";

/// The SQLite store, holding the state directory's lock while open.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// Whether the file checked out: only then is it checkpointed at drop
    /// (a damaged store is left exactly as found).
    healthy: bool,
    /// Held (flock) for as long as the store is open; the kernel releases
    /// it when the process dies, so a crash never leaves it stuck.
    _lock: File,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`, which is created mode
    /// 0700. Fails if another process has it open.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = dir.join(DB_FILE);
        let open_err = |message: String| StoreError::Open {
            path: path.clone(),
            message,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| open_err(format!("creating {}: {e}", dir.display())))?;
        let lock = lock_dir(dir)?;
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(&path, e))?;
        let mut store = SqliteStore {
            conn,
            path,
            healthy: false,
            _lock: lock,
        };
        store.init()?;
        store.healthy = true;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init(&self) -> Result<(), StoreError> {
        let c = &self.conn;
        let err = |e| classify(&self.path, e);
        // The header is read here: a damaged one fails now.
        let mode: String = c
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open {
                path: self.path.clone(),
                message: format!("cannot switch to WAL mode (got {mode})"),
            });
        }
        // FULL: each commit fsyncs the WAL, so it survives a power cut.
        c.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;")
            .map_err(err)?;
        let check: String = c
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(err)?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                message: format!("integrity check: {check}"),
            });
        }
        c.execute_batch(SCHEMA).map_err(err)?;
        let version: Option<i64> = c
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(err)?;
        match version {
            None => {
                c.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(err)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    message: format!(
                        "schema version {v}, this homeward knows {SCHEMA_VERSION} (written by another version?)"
                    ),
                })
            }
        }
        Ok(())
    }

    fn read(&self) -> Result<(Vec<StoredBinding>, ReplayState), StoreError> {
        let err = |e| classify(&self.path, e);
        let corrupt = |message: String| StoreError::Corrupt {
            path: self.path.clone(),
            message,
        };
        let mut stmt = self
            .conn
            .prepare("SELECT vm, care_of, vm_mac, expires, spi, crc FROM bindings")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(err)?;
        let mut bindings = Vec::new();
        for row in rows {
            let (vm, care_of, mac, expires, spi, crc) = row.map_err(err)?;
            let b = decode_binding(vm, care_of, mac.as_deref(), expires, spi)
                .ok_or_else(|| corrupt(format!("binding row {vm} has values out of range")))?;
            if i64::from(binding_crc(&b)) != crc {
                return Err(corrupt(format!("binding of {} fails its checksum", b.vm)));
            }
            bindings.push(b);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT spi, home, id, crc FROM replay")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(err)?;
        let mut replay = Vec::new();
        for row in rows {
            let (spi, home, id, crc) = row.map_err(err)?;
            let (Ok(spi), Some(home)) = (u32::try_from(spi), addr(home)) else {
                return Err(corrupt(format!("replay row ({spi}, {home}) out of range")));
            };
            // u64 Identifications are stored as their i64 bit pattern.
            let id = id as u64;
            if i64::from(replay_crc(spi, home, id)) != crc {
                return Err(corrupt(format!(
                    "replay state of SPI {spi} home {home} fails its checksum"
                )));
            }
            replay.push(((spi, home), id));
        }
        Ok((bindings, replay))
    }

    /// Writes every WAL frame back into the database file (at clean
    /// shutdown, so the directory then holds one self-contained file).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .map_err(|e| classify(&self.path, e))
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn load(&mut self, now_unix_ms: u64) -> Result<Snapshot, StoreError> {
        let (all, replay) = self.read().inspect_err(|_| self.healthy = false)?;
        let (alive, expired): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|b| b.expires_unix_ms.is_none_or(|t| t > now_unix_ms));
        if !expired.is_empty() {
            let deletes: Vec<Change> = expired.iter().map(|b| Change::Delete(b.vm)).collect();
            self.commit(&deletes)?;
        }
        Ok(Snapshot {
            bindings: alive,
            expired: expired.len(),
            replay,
        })
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |e: rusqlite::Error| StoreError::Commit {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO bindings (vm, care_of, vm_mac, expires, spi, crc)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err)?;
            let mut delete = tx
                .prepare_cached("DELETE FROM bindings WHERE vm = ?1")
                .map_err(err)?;
            let mut replay = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO replay (spi, home, id, crc) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            for c in changes {
                match c {
                    Change::Put(b) => {
                        let spi = match b.origin {
                            Origin::Admin => None,
                            Origin::Registration { spi } => Some(i64::from(spi)),
                        };
                        put.execute(params![
                            i64::from(u32::from(b.vm)),
                            i64::from(u32::from(b.care_of)),
                            b.vm_mac.map(|m| m.to_vec()),
                            b.expires_unix_ms.map(|t| t.min(i64::MAX as u64) as i64),
                            spi,
                            i64::from(binding_crc(b)),
                        ])
                        .map_err(err)?;
                    }
                    Change::Delete(vm) => {
                        delete.execute([i64::from(u32::from(*vm))]).map_err(err)?;
                    }
                    Change::Replay { spi, home, id } => {
                        replay
                            .execute(params![
                                i64::from(*spi),
                                i64::from(u32::from(*home)),
                                *id as i64,
                                i64::from(replay_crc(*spi, *home, *id)),
                            ])
                            .map_err(err)?;
                    }
                }
            }
        }
        fail::fail_point!("store-before-commit", |_| Err(StoreError::Commit {
            path: self.path.clone(),
            message: "failpoint store-before-commit".into(),
        }));
        tx.commit().map_err(err)?;
        fail::fail_point!("store-after-commit");
        Ok(())
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if !self.healthy {
            return;
        }
        if let Err(e) = self.checkpoint() {
            tracing::warn!("state store checkpoint at exit: {e}");
        }
    }
}

/// Takes the directory's lock (non-blocking) and writes our pid into it.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StoreError::Open {
            path: path.clone(),
            message: e.to_string(),
        })?;
    // SAFETY: flock on an fd we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(StoreError::Locked {
            path: dir.to_path_buf(),
            pid: pid.trim().to_string(),
        });
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

/// Damage is [`StoreError::Corrupt`]; anything else [`StoreError::Open`].
fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    let code = e.sqlite_error_code();
    let message = e.to_string();
    if matches!(
        code,
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    ) {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            message,
        }
    } else {
        StoreError::Open {
            path: path.to_path_buf(),
            message,
        }
    }
}

fn addr(v: i64) -> Option<Ipv4Addr> {
    u32::try_from(v).ok().map(Ipv4Addr::from)
}

fn decode_binding(
    vm: i64,
    care_of: i64,
    mac: Option<&[u8]>,
    expires: Option<i64>,
    spi: Option<i64>,
) -> Option<StoredBinding> {
    Some(StoredBinding {
        vm: addr(vm)?,
        care_of: addr(care_of)?,
        vm_mac: match mac {
            None => None,
            Some(m) => Some(<[u8; 6]>::try_from(m).ok()?),
        },
        expires_unix_ms: match expires {
            None => None,
            Some(t) => Some(u64::try_from(t).ok()?),
        },
        origin: match spi {
            None => Origin::Admin,
            Some(s) => Origin::Registration {
                spi: u32::try_from(s).ok()?,
            },
        },
    })
}

fn binding_crc(b: &StoredBinding) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b.vm.octets());
    h.update(&b.care_of.octets());
    match b.vm_mac {
        Some(m) => {
            h.update(&[1]);
            h.update(&m);
        }
        None => h.update(&[0]),
    }
    match b.expires_unix_ms {
        Some(t) => {
            h.update(&[1]);
            h.update(&t.to_be_bytes());
        }
        None => h.update(&[0]),
    }
    match b.origin {
        Origin::Admin => h.update(&[0]),
        Origin::Registration { spi } => {
            h.update(&[1]);
            h.update(&spi.to_be_bytes());
        }
    }
    h.finalize()
}

fn replay_crc(spi: u32, home: Ipv4Addr, id: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&spi.to_be_bytes());
    h.update(&home.octets());
    h.update(&id.to_be_bytes());
    h.finalize()
}

#[cfg(test)]
mod tests;
