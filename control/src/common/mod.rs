//! Small things both roles use; imports nothing above it.

pub mod capture;
pub mod claims;
pub mod control_socket;
pub mod failover;
pub mod handover;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod pcapng;

use std::path::{Path, PathBuf};

use dataplane::neigh::{self, LinkInfo};

use crate::error::Error;

/// The bpf filesystem homeward pins its XDP program in, unless told
/// otherwise (`--bpffs`). Mounted there if it is not yet.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// The pin directory of one instance under the bpffs mount `bpffs`, named
/// after what identifies the instance (the home agent's state directory,
/// the agent's control socket), so that a restart with the same settings
/// finds what the previous run left, and two instances never share one.
pub fn bpf_pin_dir(bpffs: &Path, role: &str, key: &Path) -> PathBuf {
    let key: String = key
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| {
            // bpffs refuses names with a dot (EPERM).
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // bpffs names, like any, stop at 255 bytes; keep the distinctive tail.
    let key = &key[key.len().saturating_sub(200)..];
    bpffs.join("homeward").join(format!("{role}-{key}"))
}

/// SIGINT and SIGTERM as a channel, installed before any set-up: a stop
/// asked for while the data path is being assembled waits for the serve
/// loop, which then tears down cleanly, instead of killing the process
/// with the XDP program attached.
pub fn stop_on_signal() -> Result<crossbeam::channel::Receiver<()>, String> {
    let (tx, rx) = crossbeam::channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = tx.try_send(());
    })
    .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    Ok(rx)
}

/// Is the effective user root? Read from /proc so no unsafe is needed here.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// An interface by name; a missing one is [`Error::NoSuchInterface`].
pub fn link(name: &str) -> Result<LinkInfo, Error> {
    neigh::link_by_name(name).map_err(|e| match e {
        neigh::NeighError::NoSuchInterface(n) => Error::NoSuchInterface(n),
        other => Error::Dataplane(format!("interface {name}: {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_dirs_are_distinct_and_tame() {
        assert_eq!(
            bpf_pin_dir(
                Path::new(DEFAULT_BPFFS),
                "ha",
                Path::new("/var/lib/homeward")
            ),
            Path::new("/sys/fs/bpf/homeward/ha-var_lib_homeward")
        );
        assert_ne!(
            bpf_pin_dir(Path::new("/b"), "ha", Path::new("/tmp/a/state")),
            bpf_pin_dir(Path::new("/b"), "ha", Path::new("/tmp/b/state"))
        );
        let long = "x/".repeat(300);
        let d = bpf_pin_dir(Path::new("/b"), "agent", Path::new(&long));
        assert!(d.file_name().unwrap().len() < 255);
        // bpffs takes no dots in names.
        let d = bpf_pin_dir(
            Path::new("/b"),
            "agent",
            Path::new("/run/homeward/agent.sock"),
        );
        assert_eq!(d, Path::new("/b/homeward/agent-run_homeward_agent_sock"));
    }
}
