//! Gratuitous ARP on QEMU's announce-self schedule: at once, then 50, 150,
//! 250 and 350 ms apart (5 announcements in 800 ms). Pure: time is an
//! argument, sending is the caller's.
//!
//! A VM that moved is announced at once. Many addresses at a time (a bind
//! file, a gateway taking over from its peer) are paced: their series start
//! at most `rate` a second, so a million bindings do not broadcast five
//! million frames onto the home link at once (and, beyond the worker's free
//! frames, lose most of them). Hosts that ask meanwhile get proxy ARP
//! replies; the announcements only refresh caches that already hold the VM.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Gaps between consecutive announcements, after the first one.
pub const GAPS: [Duration; 4] = [
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(250),
    Duration::from_millis(350),
];

/// Paced series start in steps this far apart (the control loop wakes no
/// more often for them).
const STEP: Duration = Duration::from_millis(20);

/// Capacity a collection keeps however empty it gets.
const KEEP_CAPACITY: usize = 1024;

/// The capacity to shrink a collection to once it holds a quarter or less
/// of what it has room for (twice what it holds: no shrinking back and
/// forth), or `None` to leave it.
fn sparse(capacity: usize, len: usize) -> Option<usize> {
    (capacity > 4 * len + KEEP_CAPACITY).then(|| (2 * len).max(KEEP_CAPACITY))
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    addr: Ipv4Addr,
    mac: [u8; 6],
    due: Instant,
    /// Announcements already sent.
    sent: usize,
}

/// Announcements still to be sent.
#[derive(Debug)]
pub struct Announcer {
    /// Series under way (or due at once), few at a time.
    pending: Vec<Pending>,
    /// Paced series not started yet, oldest first, each with its
    /// generation: a rescheduled or cancelled address's entry is skipped
    /// when its turn comes rather than searched for.
    paced: VecDeque<(Ipv4Addr, [u8; 6], u64)>,
    /// Every address with announcements to come: the generation of its
    /// latest schedule, and whether that waits in `paced`. Scheduling and
    /// cancelling need not scan.
    addrs: HashMap<Ipv4Addr, (u64, bool)>,
    /// Live entries in `paced`.
    waiting: usize,
    generation: u64,
    /// Paced series a second.
    rate: u32,
    /// Paced series started so far: `started` counts from `epoch` on, at
    /// `rate` a second.
    epoch: Option<Instant>,
    started: u64,
    /// When paced series were last started: they start in steps of
    /// [`STEP`] only, so that the series of one step share their five due
    /// times (started at every wakeup, each wakeup's series would add
    /// wakeups of their own, until the loop woke thousands of times a
    /// second).
    last_run: Option<Instant>,
}

impl Default for Announcer {
    fn default() -> Self {
        Announcer::with_rate(crate::config::DEFAULT_ANNOUNCE_RATE)
    }
}

impl Announcer {
    /// An announcer starting at most `rate` paced series a second (at
    /// least one).
    pub fn with_rate(rate: u32) -> Self {
        Announcer {
            pending: Vec::new(),
            paced: VecDeque::new(),
            addrs: HashMap::new(),
            waiting: 0,
            generation: 0,
            rate: rate.max(1),
            epoch: None,
            started: 0,
            last_run: None,
        }
    }

    /// Announce `addr` at `mac` from `now` on; replaces any series for `addr`.
    pub fn schedule(&mut self, now: Instant, addr: Ipv4Addr, mac: [u8; 6]) {
        self.cancel(addr);
        self.generation += 1;
        self.addrs.insert(addr, (self.generation, false));
        self.pending.push(Pending {
            addr,
            mac,
            due: now,
            sent: 0,
        });
    }

    /// [`Announcer::schedule`] as one of many: the series starts in its
    /// turn, at most `rate` a second.
    pub fn schedule_paced(&mut self, now: Instant, addr: Ipv4Addr, mac: [u8; 6]) {
        self.cancel(addr);
        self.epoch.get_or_insert(now);
        self.generation += 1;
        self.addrs.insert(addr, (self.generation, true));
        self.paced.push_back((addr, mac, self.generation));
        self.waiting += 1;
    }

    /// Stop announcing anything (the rate stays).
    pub fn clear(&mut self) {
        *self = Announcer::with_rate(self.rate);
    }

    /// Stop announcing `addr`.
    pub fn cancel(&mut self, addr: Ipv4Addr) {
        match self.addrs.remove(&addr) {
            // Its entry in `paced` is skipped when its turn comes.
            Some((_, true)) => self.waiting -= 1,
            Some((_, false)) => self.pending.retain(|p| p.addr != addr),
            None => {}
        }
    }

    /// Paced series whose announcements have not started.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Calls `send` for every announcement due at `now`; returns whether
    /// it gave memory back to the allocator (see below). A series is timed
    /// from its first announcement as sent, so a late start (a slow store
    /// commit before it) delays the series rather than bunching its first
    /// ones; each later one is timed from when the one before was due, so
    /// a late wakeup does not stretch the schedule.
    pub fn run_due(&mut self, now: Instant, mut send: impl FnMut(Ipv4Addr, [u8; 6])) -> bool {
        self.start_paced(now);
        for p in self.pending.iter_mut() {
            if p.sent == 0 && p.due <= now {
                p.due = now;
            }
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
        // A million VMs announced at once (a bind file, a restore) grow
        // these to a million entries; that memory stays resident unless
        // given back as they empty.
        let mut shrunk = false;
        if let Some(to) = sparse(self.paced.capacity(), self.paced.len()) {
            self.paced.shrink_to(to);
            shrunk = true;
        }
        if let Some(to) = sparse(self.pending.capacity(), self.pending.len()) {
            self.pending.shrink_to(to);
            shrunk = true;
        }
        if let Some(to) = sparse(self.addrs.capacity(), self.addrs.len()) {
            self.addrs.shrink_to(to);
            shrunk = true;
        }
        shrunk
    }

    /// The collections' allocated entries (tests).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.paced.capacity() + self.pending.capacity() + self.addrs.capacity()
    }

    /// Moves the paced series whose turn has come into `pending`, due now.
    fn start_paced(&mut self, now: Instant) {
        let Some(epoch) = self.epoch else {
            return;
        };
        if self.last_run.is_some_and(|last| now < last + STEP) {
            return;
        }
        self.last_run = Some(now);
        let rate = f64::from(self.rate);
        // One step's worth at once (a handful of VMs need no pacing), then
        // `rate` a second; a turn catches up a wakeup's usual lateness, but
        // after a stall starts two steps' worth, not all it fell behind by.
        let step = (rate * STEP.as_secs_f64()).ceil() as u64;
        let allowed = (now.saturating_duration_since(epoch).as_secs_f64() * rate) as u64 + step;
        self.started = self.started.max(allowed.saturating_sub(2 * step));
        while self.started < allowed {
            let Some((addr, mac, generation)) = self.paced.pop_front() else {
                break;
            };
            match self.addrs.get_mut(&addr) {
                Some(entry) if *entry == (generation, true) => entry.1 = false,
                _ => continue,
            }
            self.waiting -= 1;
            self.pending.push(Pending {
                addr,
                mac,
                due: now,
                sent: 0,
            });
            self.started += 1;
        }
        if self.paced.is_empty() {
            self.epoch = None;
            self.started = 0;
        }
    }

    /// The MAC `addr` is (to be) announced at, for tests.
    #[cfg(test)]
    pub fn pending_mac(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        let (generation, _) = self.addrs.get(&addr)?;
        self.pending
            .iter()
            .find(|p| p.addr == addr)
            .map(|p| p.mac)
            .or_else(|| {
                self.paced
                    .iter()
                    .find(|(a, _, g)| *a == addr && g == generation)
                    .map(|(_, mac, _)| *mac)
            })
    }

    /// When the next announcement is due.
    pub fn next_due(&self) -> Option<Instant> {
        let pending = self.pending.iter().map(|p| p.due).min();
        // When the next paced series' turn comes, a step after the last.
        let paced = self.epoch.map(|epoch| {
            let turn = epoch + Duration::from_secs_f64(self.started as f64 / f64::from(self.rate));
            self.last_run.map_or(turn, |last| turn.max(last + STEP))
        });
        match (pending, paced) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
        a.run_due(t0, |_, _| n += 1);
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

    #[test]
    fn a_series_started_late_keeps_its_gaps() {
        // The CI failure: the first announcement went out 285 ms after
        // the bind (its store commit), and the next two with it.
        let t0 = Instant::now();
        let mut a = Announcer::default();
        a.schedule(t0, Ipv4Addr::new(192, 0, 2, 50), [2; 6]);
        let mut sent = Vec::new();
        for ms in 285..1200 {
            a.run_due(t0 + Duration::from_millis(ms), |_, _| sent.push(ms));
        }
        assert_eq!(sent, vec![285, 335, 485, 735, 1085]);
    }

    fn addr(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(0x0a00_0000 + i)
    }

    /// Runs `a` as the control loop does (woken at `next_due`) from `t0`
    /// for `secs`; every announcement as (ms since t0, address), and how
    /// many times it woke.
    /// Each wakeup comes 0-3 ms late, as a real one does.
    fn drive(a: &mut Announcer, t0: Instant, secs: u64) -> (Vec<(u64, Ipv4Addr)>, usize) {
        let mut sent = Vec::new();
        let mut wakeups = 0;
        let end = t0 + Duration::from_secs(secs);
        let mut jitter = 0x2545_f491_u32;
        while let Some(due) = a.next_due() {
            if due > end {
                break;
            }
            jitter ^= jitter << 13;
            jitter ^= jitter >> 17;
            jitter ^= jitter << 5;
            let late = Duration::from_micros(u64::from(jitter % 3_000));
            let now = due.max(t0) + late;
            wakeups += 1;
            let ms = now.duration_since(t0).as_millis() as u64;
            a.run_due(now, |ad, _| sent.push((ms, ad)));
        }
        (sent, wakeups)
    }

    #[test]
    fn many_addresses_start_at_the_rate_each_with_its_five() {
        let t0 = Instant::now();
        let mut a = Announcer::with_rate(1_000);
        for i in 0..5_000 {
            a.schedule_paced(t0, addr(i), [2; 6]);
        }
        assert_eq!(a.waiting(), 5_000);
        let (sent, wakeups) = drive(&mut a, t0, 10);
        assert_eq!(sent.len(), 5 * 5_000, "five each");
        let mut firsts = HashMap::new();
        for &(ms, ad) in &sent {
            firsts.entry(ad).or_insert(ms);
        }
        assert_eq!(firsts.len(), 5_000);
        // By any time t, at most one step ahead of rate x t series started.
        let mut starts: Vec<u64> = firsts.values().copied().collect();
        starts.sort_unstable();
        for (n, &ms) in starts.iter().enumerate() {
            assert!(n as u64 <= ms + 20 + 1, "series {n} started at {ms} ms");
        }
        let last = *starts.last().unwrap();
        assert!((4_900..=5_100).contains(&last), "last started at {last} ms");
        assert_eq!(a.next_due(), None);
        assert_eq!(a.waiting(), 0);
        // The room for 5,000 is given back.
        assert!(a.capacity() <= 3 * 2 * KEEP_CAPACITY, "{}", a.capacity());
        // At most a wakeup per step and per later frame of its series
        // (five times in all per 20 ms step), not one per series.
        let steps = 5_000 / 20;
        assert!(wakeups <= 5 * steps, "{wakeups} wakeups");
    }

    #[test]
    fn a_moved_vm_goes_ahead_of_the_paced_and_cancelled_ones_are_skipped() {
        let t0 = Instant::now();
        let mut a = Announcer::with_rate(100);
        for i in 0..1_000 {
            a.schedule_paced(t0, addr(i), [2; 6]);
        }
        let mut first = Vec::new();
        a.run_due(t0, |ad, _| first.push(ad));
        assert_eq!(first, [addr(0), addr(1)], "a step: 20 ms at 100 a second");
        // A VM that moved now is announced now, at its new MAC.
        a.schedule(t0, addr(999), [9; 6]);
        a.cancel(addr(2));
        assert_eq!(a.waiting(), 1_000 - 2 - 2);
        let mut now = Vec::new();
        a.run_due(t0, |ad, mac| now.push((ad, mac)));
        assert_eq!(now, [(addr(999), [9; 6])]);
        let (sent, _) = drive(&mut a, t0, 20);
        assert!(!sent.iter().any(|(_, ad)| *ad == addr(2)), "cancelled");
        let to_999 = sent.iter().filter(|(_, ad)| *ad == addr(999)).count();
        assert_eq!(to_999, 4, "its own series only, not a paced one too");
        assert_eq!(sent.len(), 2 * 4 + 4 + 5 * 996);
        assert_eq!(a.next_due(), None);
    }

    #[test]
    fn a_late_turn_starts_two_steps_of_series_not_all_it_missed() {
        let t0 = Instant::now();
        let mut a = Announcer::with_rate(1_000);
        for i in 0..1_000 {
            a.schedule_paced(t0, addr(i), [2; 6]);
        }
        let mut n = 0;
        a.run_due(t0 + Duration::from_millis(500), |_, _| n += 1);
        assert_eq!(n, 40, "two steps: 2 x 20 ms at 1,000 a second");
        a.clear();
        assert_eq!((a.next_due(), a.waiting()), (None, 0));
    }
}
