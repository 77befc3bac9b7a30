//! One gateway of an active/standby pair (`[failover] enabled`): keepalived
//! decides which one is active and says so through `homeward role`. The
//! active gateway answers ARP for the bound VMs and announces them; the
//! standby holds the same bindings (the etcd store replicates them) and
//! forwards whatever reaches it, but speaks for nobody on the home link.

use std::time::Instant;

use serde::Serialize;

use crate::common::failover::VrrpState;

/// The pair member's state, as keepalived last reported it.
#[derive(Debug)]
pub struct Failover {
    state: VrrpState,
    since: Instant,
    transitions: u64,
}

/// What changed with a reported state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub previous: VrrpState,
    /// Whether active-ness flipped (a MASTER reported twice, by the group
    /// and by an instance, changes nothing).
    pub flipped: bool,
}

/// `homeward stats`' `failover` object.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverStats {
    /// keepalived's last word: master, backup, fault or stop.
    pub state: &'static str,
    pub active: bool,
    /// Seconds in this state.
    pub since: u64,
    /// Times this gateway became active or stopped being active.
    pub transitions: u64,
}

impl Failover {
    /// Starts in `initial` (the role file's state; standby if none).
    pub fn new(initial: Option<VrrpState>, now: Instant) -> Failover {
        Failover {
            state: initial.unwrap_or(VrrpState::Backup),
            since: now,
            transitions: 0,
        }
    }

    pub fn active(&self) -> bool {
        self.state.active()
    }

    /// keepalived reports `state`.
    pub fn report(&mut self, state: VrrpState, now: Instant) -> Change {
        let previous = self.state;
        let flipped = previous.active() != state.active();
        if previous != state {
            self.state = state;
            self.since = now;
        }
        if flipped {
            self.transitions += 1;
        }
        Change { previous, flipped }
    }

    pub fn stats(&self, now: Instant) -> FailoverStats {
        FailoverStats {
            state: self.state.as_str(),
            active: self.active(),
            since: now.saturating_duration_since(self.since).as_secs(),
            transitions: self.transitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_standby_and_counts_only_flips() {
        let t0 = Instant::now();
        let mut f = Failover::new(None, t0);
        assert!(!f.active());
        let c = f.report(VrrpState::Master, t0);
        assert_eq!((c.previous, c.flipped), (VrrpState::Backup, true));
        // The group and each instance report MASTER: one flip.
        assert!(!f.report(VrrpState::Master, t0).flipped);
        assert!(f.active());
        assert!(f.report(VrrpState::Fault, t0).flipped);
        assert!(!f.report(VrrpState::Backup, t0).flipped);
        let s = f.stats(t0);
        assert_eq!((s.state, s.active, s.transitions), ("backup", false, 2));
        assert!(Failover::new(Some(VrrpState::Master), t0).active());
        assert!(!Failover::new(Some(VrrpState::Fault), t0).active());
    }
}
