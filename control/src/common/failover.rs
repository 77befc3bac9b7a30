//! Active/standby gateway pairs: the VRRP state keepalived reports, and the
//! role file that keeps it across a daemon restart. `homeward role` (the
//! CLI, run by keepalived's notify) writes the file and tells the daemon;
//! the daemon reads the file when it starts.

use std::path::{Path, PathBuf};

/// The state keepalived's notify reports (`MASTER`, `BACKUP`, `FAULT`,
/// `STOP`). Only `Master` makes a gateway the active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrrpState {
    Master,
    Backup,
    Fault,
    Stop,
}

impl VrrpState {
    /// One state word, any case.
    pub fn parse(word: &str) -> Option<VrrpState> {
        match word.to_ascii_lowercase().as_str() {
            "master" => Some(VrrpState::Master),
            "backup" => Some(VrrpState::Backup),
            "fault" => Some(VrrpState::Fault),
            "stop" => Some(VrrpState::Stop),
            _ => None,
        }
    }

    /// The state from a command line: one state word, or what keepalived
    /// appends to a notify command (`GROUP|INSTANCE NAME STATE PRIORITY`).
    pub fn from_args(args: &[String]) -> Result<VrrpState, String> {
        let word = match args {
            [state] => state,
            [kind, _name, state, ..]
                if kind.eq_ignore_ascii_case("group") || kind.eq_ignore_ascii_case("instance") =>
            {
                state
            }
            _ => {
                return Err(format!(
                    "expected a state (master, backup, fault or stop) or keepalived's notify arguments (GROUP|INSTANCE NAME STATE [PRIORITY]), got {args:?}"
                ))
            }
        };
        VrrpState::parse(word).ok_or_else(|| {
            format!("unknown state {word:?}: expected master, backup, fault or stop")
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VrrpState::Master => "master",
            VrrpState::Backup => "backup",
            VrrpState::Fault => "fault",
            VrrpState::Stop => "stop",
        }
    }

    /// Whether this gateway is the active one of the pair.
    pub fn active(self) -> bool {
        self == VrrpState::Master
    }
}

/// The role file of the daemon listening on `socket`: beside it, in the
/// runtime directory, so that a reboot forgets it (a gateway that comes
/// back starts on standby).
pub fn role_file(socket: &Path) -> PathBuf {
    socket.with_extension("role")
}

/// The state last written for the daemon on `socket`; `None` if there is
/// none or it cannot be read (the daemon then starts on standby).
pub fn read_role(socket: &Path) -> Option<VrrpState> {
    let text = std::fs::read_to_string(role_file(socket)).ok()?;
    VrrpState::parse(text.trim())
}

/// Writes the state for the daemon on `socket`, atomically (a daemon that
/// starts meanwhile reads the old state or the new, never half of one).
pub fn write_role(socket: &Path, state: VrrpState) -> std::io::Result<()> {
    let path = role_file(socket);
    // keepalived may report before homeward first made its runtime
    // directory: make it as the daemon would (root only).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("role.tmp");
    std::fs::write(&tmp, format!("{}\n", state.as_str()))?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_state_word_or_keepalived_notify_arguments() {
        assert_eq!(
            VrrpState::from_args(&args(&["master"])),
            Ok(VrrpState::Master)
        );
        assert_eq!(
            VrrpState::from_args(&args(&["GROUP", "homeward", "BACKUP", "100"])),
            Ok(VrrpState::Backup)
        );
        assert_eq!(
            VrrpState::from_args(&args(&["INSTANCE", "lan", "FAULT"])),
            Ok(VrrpState::Fault)
        );
        assert!(VrrpState::from_args(&args(&["primary"])).is_err());
        assert!(VrrpState::from_args(&args(&[])).is_err());
        assert!(VrrpState::from_args(&args(&["master", "backup"])).is_err());
        assert!(VrrpState::from_args(&args(&["GROUP", "g", "MASTERY"])).is_err());
        assert!(VrrpState::Master.active() && !VrrpState::Fault.active());
    }

    #[test]
    fn the_role_file_round_trips_and_a_missing_one_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/control.sock");
        assert_eq!(read_role(&socket), None);
        write_role(&socket, VrrpState::Master).unwrap();
        assert_eq!(read_role(&socket), Some(VrrpState::Master));
        assert_eq!(role_file(&socket), dir.path().join("run/control.role"));
        write_role(&socket, VrrpState::Fault).unwrap();
        assert_eq!(read_role(&socket), Some(VrrpState::Fault));
        std::fs::write(role_file(&socket), "garbage").unwrap();
        assert_eq!(read_role(&socket), None);
    }
}
