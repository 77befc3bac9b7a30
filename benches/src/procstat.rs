//! CPU time from /proc/stat, to log steal time around each trial: on this
//! shared VM a vCPU stall of tens of milliseconds shows up as steal.

use std::time::Duration;

/// Aggregate CPU times (the `cpu` line of /proc/stat), in USER_HZ ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// All fields summed (user .. steal; guest time is inside user).
    pub total: u64,
    /// Idle + iowait.
    pub idle: u64,
    /// Time the hypervisor ran something else while we wanted to run.
    pub steal: u64,
}

impl CpuTimes {
    /// Parses the `cpu ` line of a /proc/stat text.
    pub fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let get = |i: usize| f.get(i).copied().unwrap_or(0);
        Some(CpuTimes {
            // user nice system idle iowait irq softirq steal
            total: (0..8).map(get).sum(),
            idle: get(3) + get(4),
            steal: get(7),
        })
    }

    /// Now, from /proc/stat (zeros if it cannot be read).
    pub fn now() -> CpuTimes {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| CpuTimes::parse(&s))
            .unwrap_or_default()
    }

    /// Steal between `self` (earlier) and `later`: ticks and share of all
    /// CPU time in between.
    pub fn steal_since(&self, later: &CpuTimes) -> (u64, f64) {
        let steal = later.steal.saturating_sub(self.steal);
        let total = later.total.saturating_sub(self.total);
        (
            steal,
            if total == 0 {
                0.0
            } else {
                steal as f64 / total as f64
            },
        )
    }
}

/// One USER_HZ tick (100 Hz on Linux for /proc/stat).
pub const TICK: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cpu_line() {
        let s = "cpu  97904 0 109872 250524 972 0 165 77 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let t = CpuTimes::parse(s).unwrap();
        assert_eq!(t.steal, 77);
        assert_eq!(t.idle, 250524 + 972);
        assert_eq!(t.total, 97904 + 109872 + 250524 + 972 + 165 + 77);
        let later = CpuTimes {
            total: t.total + 1000,
            idle: t.idle,
            steal: t.steal + 50,
        };
        assert_eq!(t.steal_since(&later), (50, 0.05));
        assert!(CpuTimes::parse("intr 1 2").is_none());
    }
}
