//! Replay protection with timestamps (RFC 5944 §5.7): the Identification
//! is a 64-bit NTP timestamp (high 32 bits seconds since 1900, low 32 bits
//! fraction). A request is fresh if it is within the window of the home
//! agent's clock and strictly newer than the last one accepted for its
//! (SPI, home address).
//!
//! The logic reads no clock and writes no file: `now` is an argument, and
//! the daemon stores every accepted Identification (see `crate::store`), so
//! a restart does not reopen the window for replays.

use std::collections::HashMap;
use std::net::Ipv4Addr;
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

/// Replay state per mobile node: the last accepted Identification of each
/// (SPI, home address), as RFC 5944 keeps it per mobile node, so agents
/// registering different VMs under one SPI never refuse each other.
///
/// Kept in memory; the caller makes each accepted Identification durable
/// (in the store, with the binding) before the reply goes out, and hands
/// the stored state back at start.
#[derive(Debug)]
pub struct ReplayGuard {
    window: Duration,
    last: HashMap<(u32, Ipv4Addr), u64>,
}

impl ReplayGuard {
    /// A guard with the state loaded from the store.
    pub fn new(
        window: Duration,
        state: impl IntoIterator<Item = ((u32, Ipv4Addr), u64)>,
    ) -> ReplayGuard {
        ReplayGuard {
            window,
            last: state.into_iter().collect(),
        }
    }

    /// The last accepted Identification for `spi` and `home`.
    pub fn last(&self, spi: u32, home: Ipv4Addr) -> Option<u64> {
        self.last.get(&(spi, home)).copied()
    }

    /// Is `id` acceptable for `spi` and `home` at `now` (an NTP timestamp)?
    pub fn check(&self, spi: u32, home: Ipv4Addr, id: u64, now: u64) -> Result<(), Stale> {
        // 32.32 fixed point; i128 so neither the difference nor the window
        // can overflow.
        let window = (self.window.as_nanos() << 32) / 1_000_000_000;
        let skew = (i128::from(id) - i128::from(now)).unsigned_abs();
        if skew > window {
            return Err(Stale::OutOfWindow);
        }
        if self.last(spi, home).is_some_and(|last| id <= last) {
            return Err(Stale::NotNewer);
        }
        Ok(())
    }

    /// Records an accepted `id`; returns the previous value, for
    /// [`ReplayGuard::restore`] if the store cannot take the change.
    pub fn commit(&mut self, spi: u32, home: Ipv4Addr, id: u64) -> Option<u64> {
        let previous = self.last(spi, home);
        let entry = self.last.entry((spi, home)).or_insert(id);
        *entry = (*entry).max(id);
        previous
    }

    /// Puts back what [`ReplayGuard::commit`] replaced.
    pub fn restore(&mut self, spi: u32, home: Ipv4Addr, previous: Option<u64>) {
        match previous {
            Some(id) => {
                self.last.insert((spi, home), id);
            }
            None => {
                self.last.remove(&(spi, home));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1 << 32;
    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 51);

    #[test]
    fn ntp_conversion() {
        assert_eq!(ntp_timestamp(UNIX_EPOCH), NTP_UNIX_OFFSET << 32);
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(ntp_timestamp(t), ((NTP_UNIX_OFFSET + 1) << 32) | (SEC / 2));
    }

    #[test]
    fn window_and_monotonicity() {
        let mut g = ReplayGuard::new(Duration::from_secs(7), []);
        let now = 1_000_000 * SEC;
        assert_eq!(g.check(256, A, now, now), Ok(()));
        assert_eq!(g.check(256, A, now + 7 * SEC, now), Ok(()));
        assert_eq!(g.check(256, A, now - 7 * SEC, now), Ok(()));
        assert_eq!(
            g.check(256, A, now + 7 * SEC + 1, now),
            Err(Stale::OutOfWindow)
        );
        assert_eq!(g.check(256, A, now - 8 * SEC, now), Err(Stale::OutOfWindow));
        assert_eq!(g.check(256, A, 0, now), Err(Stale::OutOfWindow));
        assert_eq!(g.check(256, A, u64::MAX, now), Err(Stale::OutOfWindow));
        assert_eq!(g.commit(256, A, now), None);
        assert_eq!(g.check(256, A, now, now), Err(Stale::NotNewer));
        assert_eq!(g.check(256, A, now - 1, now), Err(Stale::NotNewer));
        assert_eq!(g.check(256, A, now + 1, now), Ok(()));
        // Other SPIs and other home addresses under one SPI are independent.
        assert_eq!(g.check(257, A, now, now), Ok(()));
        assert_eq!(g.check(256, B, now - 1, now), Ok(()));
        // A commit never moves the state backwards.
        assert_eq!(g.commit(256, A, now - SEC), Some(now));
        assert_eq!(g.last(256, A), Some(now));
    }

    #[test]
    fn restore_undoes_a_commit() {
        let now = 2_000_000 * SEC;
        let mut g = ReplayGuard::new(Duration::from_secs(7), [((256, A), now)]);
        assert_eq!(g.check(256, A, now, now), Err(Stale::NotNewer));
        let prev = g.commit(256, A, now + 5);
        g.restore(256, A, prev);
        assert_eq!(g.last(256, A), Some(now));
        let prev = g.commit(300, B, now);
        g.restore(300, B, prev);
        assert_eq!(g.last(300, B), None);
    }
}
