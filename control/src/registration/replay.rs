//! Replay protection with timestamps (RFC 5944 §5.7): the Identification
//! is a 64-bit NTP timestamp (high 32 bits seconds since 1900, low 32 bits
//! fraction). A request is fresh if it is within the window of the home
//! agent's clock and strictly newer than the last one accepted for its SPI.
//!
//! The last accepted Identification per SPI is written to a state file on
//! every accept, so a restart does not reopen the window for replays. The
//! logic reads no clock: `now` is always an argument.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from 1900-01-01 (NTP era 0) to 1970-01-01.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A time as an NTP timestamp (the RFC 5944 Identification format).
pub fn ntp_timestamp(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs().wrapping_add(NTP_UNIX_OFFSET) & 0xffff_ffff;
    // nanos * 2^32 / 1e9 < 2^32, no overflow in u64.
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Why an Identification is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// Farther from the home agent's clock than the window.
    OutOfWindow,
    /// Not newer than the last accepted one: a replay or a reorder.
    NotNewer,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read replay state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad replay state {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write replay state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    /// SPI -> last accepted Identification.
    last: BTreeMap<u32, u64>,
}

/// Per-SPI replay state.
#[derive(Debug)]
pub struct ReplayGuard {
    window: Duration,
    last: BTreeMap<u32, u64>,
    path: Option<PathBuf>,
}

impl ReplayGuard {
    /// State kept in memory only (tests).
    #[cfg(test)]
    pub fn in_memory(window: Duration) -> ReplayGuard {
        ReplayGuard {
            window,
            last: BTreeMap::new(),
            path: None,
        }
    }

    /// Loads the state file; a missing file is an empty state.
    pub fn load(path: &Path, window: Duration) -> Result<ReplayGuard, ReplayError> {
        let last = match std::fs::read_to_string(path) {
            Ok(text) => {
                let s: StateFile = serde_json::from_str(&text).map_err(|e| ReplayError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
                s.last
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(ReplayError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(ReplayGuard {
            window,
            last,
            path: Some(path.to_path_buf()),
        })
    }

    /// The last accepted Identification for `spi`.
    pub fn last(&self, spi: u32) -> Option<u64> {
        self.last.get(&spi).copied()
    }

    /// Is `id` acceptable for `spi` at `now` (an NTP timestamp)?
    pub fn check(&self, spi: u32, id: u64, now: u64) -> Result<(), Stale> {
        // 32.32 fixed point; i128 so neither the difference nor the window
        // can overflow.
        let window = (self.window.as_nanos() << 32) / 1_000_000_000;
        let skew = (i128::from(id) - i128::from(now)).unsigned_abs();
        if skew > window {
            return Err(Stale::OutOfWindow);
        }
        if self.last(spi).is_some_and(|last| id <= last) {
            return Err(Stale::NotNewer);
        }
        Ok(())
    }

    /// Records an accepted `id`. Memory is updated first, so replays are
    /// refused even if the file cannot be written; the error says the
    /// protection will not survive a restart.
    pub fn commit(&mut self, spi: u32, id: u64) -> Result<(), ReplayError> {
        let entry = self.last.entry(spi).or_insert(id);
        *entry = (*entry).max(id);
        match &self.path {
            Some(path) => persist(path, &self.last),
            None => Ok(()),
        }
    }
}

/// Write to a temporary file in the same directory, fsync, rename over the
/// old one, fsync the directory: the file is always either the old or the
/// new state, never torn.
fn persist(path: &Path, last: &BTreeMap<u32, u64>) -> Result<(), ReplayError> {
    let write = |source| ReplayError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(write)?;
    let text = serde_json::to_string(&StateFile { last: last.clone() })
        .map_err(|e| write(std::io::Error::other(e)))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write)?;
        f.write_all(text.as_bytes()).map_err(write)?;
        f.write_all(b"\n").map_err(write)?;
        f.sync_all().map_err(write)?;
    }
    std::fs::rename(&tmp, path).map_err(write)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1 << 32;

    #[test]
    fn ntp_conversion() {
        assert_eq!(ntp_timestamp(UNIX_EPOCH), NTP_UNIX_OFFSET << 32);
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(ntp_timestamp(t), ((NTP_UNIX_OFFSET + 1) << 32) | (SEC / 2));
    }

    #[test]
    fn window_and_monotonicity() {
        let mut g = ReplayGuard::in_memory(Duration::from_secs(7));
        let now = 1_000_000 * SEC;
        assert_eq!(g.check(256, now, now), Ok(()));
        assert_eq!(g.check(256, now + 7 * SEC, now), Ok(()));
        assert_eq!(g.check(256, now - 7 * SEC, now), Ok(()));
        assert_eq!(
            g.check(256, now + 7 * SEC + 1, now),
            Err(Stale::OutOfWindow)
        );
        assert_eq!(g.check(256, now - 8 * SEC, now), Err(Stale::OutOfWindow));
        assert_eq!(g.check(256, 0, now), Err(Stale::OutOfWindow));
        assert_eq!(g.check(256, u64::MAX, now), Err(Stale::OutOfWindow));
        g.commit(256, now).unwrap();
        assert_eq!(g.check(256, now, now), Err(Stale::NotNewer));
        assert_eq!(g.check(256, now - 1, now), Err(Stale::NotNewer));
        assert_eq!(g.check(256, now + 1, now), Ok(()));
        // Other SPIs are independent.
        assert_eq!(g.check(257, now, now), Ok(()));
        // A commit never moves the state backwards.
        g.commit(256, now - SEC).unwrap();
        assert_eq!(g.last(256), Some(now));
    }

    #[test]
    fn state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/registration.json");
        let now = 2_000_000 * SEC;
        let mut g = ReplayGuard::load(&path, Duration::from_secs(7)).unwrap();
        assert_eq!(g.last(256), None);
        g.commit(256, now).unwrap();
        g.commit(300, now + 5).unwrap();
        let g2 = ReplayGuard::load(&path, Duration::from_secs(7)).unwrap();
        assert_eq!(g2.last(256), Some(now));
        assert_eq!(g2.last(300), Some(now + 5));
        assert_eq!(g2.check(256, now, now), Err(Stale::NotNewer));
        assert!(!dir.path().join("sub/registration.json.tmp").exists());
        std::fs::write(&path, "{\"last\": 3}").unwrap();
        assert!(matches!(
            ReplayGuard::load(&path, Duration::from_secs(7)),
            Err(ReplayError::Parse { .. })
        ));
    }
}
