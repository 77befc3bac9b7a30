//! Gratuitous ARP on QEMU's announce-self schedule: at once, then 50, 150,
//! 250 and 350 ms apart (5 announcements in 800 ms). Pure: time is an
//! argument, sending is the caller's.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Gaps between consecutive announcements, after the first one.
pub const GAPS: [Duration; 4] = [
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(250),
    Duration::from_millis(350),
];

#[derive(Debug, Clone, Copy)]
struct Pending {
    addr: Ipv4Addr,
    mac: [u8; 6],
    due: Instant,
    /// Announcements already sent.
    sent: usize,
}

/// Announcements still to be sent.
#[derive(Debug, Default)]
pub struct Announcer {
    pending: Vec<Pending>,
    /// The addresses in `pending`: scheduling a new address (a bulk bind
    /// schedules a million) need not scan `pending`.
    addrs: HashSet<Ipv4Addr>,
}

impl Announcer {
    /// Announce `addr` at `mac` from `now` on; replaces any series for `addr`.
    pub fn schedule(&mut self, now: Instant, addr: Ipv4Addr, mac: [u8; 6]) {
        self.cancel(addr);
        self.addrs.insert(addr);
        self.pending.push(Pending {
            addr,
            mac,
            due: now,
            sent: 0,
        });
    }

    /// Stop announcing `addr`.
    pub fn cancel(&mut self, addr: Ipv4Addr) {
        if self.addrs.remove(&addr) {
            self.pending.retain(|p| p.addr != addr);
        }
    }

    /// Calls `send` for every announcement due at `now`. The next one is
    /// timed from when this one was due, so a late wakeup does not stretch
    /// the schedule.
    pub fn run_due(&mut self, now: Instant, mut send: impl FnMut(Ipv4Addr, [u8; 6])) {
        for p in self.pending.iter_mut() {
            while p.due <= now && p.sent <= GAPS.len() {
                send(p.addr, p.mac);
                p.due += GAPS.get(p.sent).copied().unwrap_or_default();
                p.sent += 1;
            }
        }
        let addrs = &mut self.addrs;
        self.pending.retain(|p| {
            let keep = p.sent <= GAPS.len();
            if !keep {
                addrs.remove(&p.addr);
            }
            keep
        });
    }

    /// The MAC `addr` is (to be) announced at, for tests.
    #[cfg(test)]
    pub fn pending_mac(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        self.pending.iter().find(|p| p.addr == addr).map(|p| p.mac)
    }

    /// When the next announcement is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.due).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_announcements_on_the_announce_self_schedule() {
        let t0 = Instant::now();
        let addr = Ipv4Addr::new(192, 0, 2, 50);
        let mut a = Announcer::default();
        a.schedule(t0, addr, [2, 0, 0, 0, 0, 1]);
        let mut sent = Vec::new();
        // Step a clock through 1 s in 1 ms ticks.
        for ms in 0..1000 {
            let now = t0 + Duration::from_millis(ms);
            a.run_due(now, |ad, _| sent.push((ms, ad)));
        }
        let times: Vec<u64> = sent.iter().map(|s| s.0).collect();
        assert_eq!(times, vec![0, 50, 200, 450, 800]);
        assert_eq!(a.next_due(), None);
    }

    #[test]
    fn late_wakeups_catch_up_and_rescheduling_replaces() {
        let t0 = Instant::now();
        let addr = Ipv4Addr::new(192, 0, 2, 50);
        let mut a = Announcer::default();
        a.schedule(t0, addr, [2; 6]);
        let mut n = 0;
        a.run_due(t0 + Duration::from_millis(210), |_, _| n += 1);
        assert_eq!(n, 3);
        assert_eq!(a.next_due(), Some(t0 + Duration::from_millis(450)));
        a.schedule(t0 + Duration::from_millis(300), addr, [3; 6]);
        let mut macs = Vec::new();
        a.run_due(t0 + Duration::from_millis(300), |_, m| macs.push(m));
        assert_eq!(macs, vec![[3; 6]]);
        a.cancel(addr);
        assert_eq!(a.next_due(), None);
    }
}
