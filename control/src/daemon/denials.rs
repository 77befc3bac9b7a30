//! Denied registrations, logged in aggregate: one line per source and
//! reason each period, never one line per datagram, so a flood of forged
//! requests cannot fill the disk through the log.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// How often the summary is written.
pub const PERIOD: Duration = Duration::from_secs(5);
/// Lines per summary; the rest is one "and N more" line.
const MAX_LINES: usize = 8;
/// Distinct (source, reason) pairs tracked per period; past that, only the
/// total counts (a spoofed-source flood cannot grow this map).
const MAX_KEYS: usize = 1024;

/// Denials since the last summary.
#[derive(Debug)]
pub struct DenialSummary {
    since: Instant,
    counts: HashMap<(Ipv4Addr, u8, &'static str), u64>,
    total: u64,
}

impl DenialSummary {
    pub fn new(now: Instant) -> DenialSummary {
        DenialSummary {
            since: now,
            counts: HashMap::new(),
            total: 0,
        }
    }

    /// Counts one denial (`code` 0 for a silently dropped datagram).
    pub fn record(&mut self, source: Ipv4Addr, code: u8, reason: &'static str) {
        self.total += 1;
        let key = (source, code, reason);
        if let Some(n) = self.counts.get_mut(&key) {
            *n += 1;
        } else if self.counts.len() < MAX_KEYS {
            self.counts.insert(key, 1);
        }
    }

    /// The summary lines, if a period has passed and anything was denied;
    /// starts the next period.
    pub fn flush(&mut self, now: Instant) -> Option<Vec<String>> {
        if now.saturating_duration_since(self.since) < PERIOD {
            return None;
        }
        self.flush_now(now)
    }

    /// The summary lines now, whatever the period (at exit).
    pub fn flush_now(&mut self, now: Instant) -> Option<Vec<String>> {
        let period = now.saturating_duration_since(self.since);
        self.since = now;
        if self.total == 0 {
            return None;
        }
        let mut counts: Vec<_> = self.counts.drain().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut lines = vec![format!(
            "{} registration datagrams denied or dropped in the last {:.0} s",
            self.total,
            period.as_secs_f64()
        )];
        let shown: u64 = counts.iter().take(MAX_LINES).map(|(_, n)| n).sum();
        for ((source, code, reason), n) in counts.iter().take(MAX_LINES) {
            lines.push(if *code == 0 {
                format!("  {n} from {source}: dropped ({reason})")
            } else {
                format!("  {n} from {source}: code {code} ({reason})")
            });
        }
        if self.total > shown {
            lines.push(format!(
                "  {} more from {} other source/reason pairs",
                self.total - shown,
                counts.len().saturating_sub(MAX_LINES).max(1)
            ));
        }
        self.total = 0;
        Some(lines)
    }
}

/// Limits the replies sent to requests that failed authentication: per
/// source and overall, per one-second window. A forged flood from spoofed
/// sources must not turn the home agent into a reflector, and a
/// misconfigured agent still hears why it is refused.
#[derive(Debug)]
pub struct ReplyLimiter {
    per_source: u32,
    overall: u32,
    window: Instant,
    sent: u32,
    by_source: HashMap<Ipv4Addr, u32>,
}

impl ReplyLimiter {
    pub fn new(now: Instant, per_source: u32, overall: u32) -> ReplyLimiter {
        ReplyLimiter {
            per_source,
            overall,
            window: now,
            sent: 0,
            by_source: HashMap::new(),
        }
    }

    /// Whether a reply to `source` may go out now (and counts it if so).
    pub fn allow(&mut self, now: Instant, source: Ipv4Addr) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.sent = 0;
            self.by_source.clear();
        }
        if self.sent >= self.overall {
            return false;
        }
        // The map is bounded by `overall`: only sources that got a reply
        // this window are in it.
        let n = self.by_source.entry(source).or_insert(0);
        if *n >= self.per_source {
            return false;
        }
        *n += 1;
        self.sent += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_a_few_lines_per_period() {
        let t0 = Instant::now();
        let mut s = DenialSummary::new(t0);
        for i in 0..100_000u32 {
            s.record(
                Ipv4Addr::from(0x0a00_0000 | (i % 5000)),
                131,
                "bad authenticator",
            );
        }
        s.record(Ipv4Addr::new(198, 51, 100, 9), 133, "replay");
        assert_eq!(s.flush(t0 + Duration::from_secs(1)), None);
        let lines = s.flush(t0 + PERIOD).unwrap();
        assert!(lines.len() <= MAX_LINES + 2, "{lines:?}");
        assert!(lines[0].starts_with("100001 registration datagrams"));
        assert!(lines.last().unwrap().contains("more from"));
        // Nothing new: nothing to say.
        assert_eq!(s.flush(t0 + PERIOD * 2), None);
    }

    #[test]
    fn replies_to_forgeries_are_limited_per_source_and_overall() {
        let t0 = Instant::now();
        let mut l = ReplyLimiter::new(t0, 3, 5);
        let a = Ipv4Addr::new(203, 0, 113, 1);
        let b = Ipv4Addr::new(203, 0, 113, 2);
        assert_eq!((0..10).filter(|_| l.allow(t0, a)).count(), 3);
        assert_eq!((0..10).filter(|_| l.allow(t0, b)).count(), 2);
        assert!(!l.allow(t0, Ipv4Addr::new(203, 0, 113, 3)));
        // A new window.
        assert!(l.allow(t0 + Duration::from_secs(1), a));
    }

    #[test]
    fn few_denials_are_each_named() {
        let t0 = Instant::now();
        let mut s = DenialSummary::new(t0);
        s.record(
            Ipv4Addr::new(203, 0, 113, 2),
            129,
            "home address not authorized",
        );
        s.record(
            Ipv4Addr::new(203, 0, 113, 2),
            129,
            "home address not authorized",
        );
        let lines = s.flush(t0 + PERIOD).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1],
            "  2 from 203.0.113.2: code 129 (home address not authorized)"
        );
    }
}
