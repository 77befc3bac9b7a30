//! Preferred busy polling (`busy_poll` in the configuration): the worker
//! runs the device's receive processing (NAPI) itself, from its loop,
//! instead of sleeping in poll() until an interrupt's softirq has filled
//! the RX ring. The device's interrupts are deferred meanwhile
//! (`napi_defer_hard_irqs`, with `gro_flush_timeout` as the safety net that
//! re-arms them when the worker stops polling); see docs/operations.md.

use std::path::PathBuf;

/// NAPI polls an interrupt stays deferred for while busy polling finds work.
pub const DEFER_HARD_IRQS: u32 = 2;
/// Nanoseconds after which a deferred interrupt fires anyway (the worker
/// slept or is gone).
pub const GRO_FLUSH_TIMEOUT_NS: u32 = 200_000;
/// Microseconds one busy-poll call may spin in the kernel (`SO_BUSY_POLL`).
pub const BUSY_POLL_USECS: u32 = 20;

/// A device's interrupt settings as they were before busy polling changed
/// them; put back on drop.
#[derive(Debug)]
pub struct DeviceTuning {
    ifname: String,
    saved: Vec<(PathBuf, String)>,
}

impl DeviceTuning {
    /// Defers `ifname`'s interrupts for busy polling (sysfs
    /// `napi_defer_hard_irqs`, `gro_flush_timeout`), remembering the old
    /// values. A setting that cannot be read or written is logged and
    /// skipped: busy polling still works, with more interrupts.
    pub fn apply(ifname: &str) -> DeviceTuning {
        let dir = PathBuf::from("/sys/class/net").join(ifname);
        let mut saved = Vec::new();
        for (name, value) in [
            ("napi_defer_hard_irqs", DEFER_HARD_IRQS),
            ("gro_flush_timeout", GRO_FLUSH_TIMEOUT_NS),
        ] {
            let path = dir.join(name);
            let old = match std::fs::read_to_string(&path) {
                Ok(old) => old.trim().to_string(),
                Err(e) => {
                    tracing::warn!(ifname, setting = name, "busy polling: cannot read: {e}");
                    continue;
                }
            };
            match std::fs::write(&path, value.to_string()) {
                Ok(()) => saved.push((path, old)),
                Err(e) => {
                    tracing::warn!(ifname, setting = name, "busy polling: cannot set: {e}")
                }
            }
        }
        tracing::info!(
            ifname,
            napi_defer_hard_irqs = DEFER_HARD_IRQS,
            gro_flush_timeout = GRO_FLUSH_TIMEOUT_NS,
            "busy polling: device interrupts deferred"
        );
        DeviceTuning {
            ifname: ifname.to_string(),
            saved,
        }
    }
}

#[cfg(test)]
impl DeviceTuning {
    /// Settings already changed elsewhere (a file standing for a sysfs
    /// one), put back as `saved` says on drop.
    pub(crate) fn saved(ifname: &str, saved: Vec<(PathBuf, String)>) -> DeviceTuning {
        DeviceTuning {
            ifname: ifname.to_string(),
            saved,
        }
    }
}

impl Drop for DeviceTuning {
    fn drop(&mut self) {
        for (path, old) in &self.saved {
            if let Err(e) = std::fs::write(path, old) {
                tracing::warn!(
                    ifname = self.ifname,
                    "busy polling: cannot restore {}: {e}",
                    path.display()
                );
            }
        }
    }
}
