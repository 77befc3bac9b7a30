//! Threads inside a lab namespace: for tests that drive many operations
//! (UDP registrations) without a process each.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use crate::Netns;

/// Starts `f` on a new thread that has joined `ns`'s network namespace
/// (`setns` changes only the calling thread's namespace). Sockets it opens
/// live in `ns`.
#[track_caller]
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{}", ns.name());
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    std::thread::spawn(move || {
        // SAFETY: setns on a namespace fd we own; it changes only this
        // thread's network namespace and touches no memory.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        drop(file);
        f()
    })
}

/// A bpf filesystem mounted in the root mount namespace for one test, so
/// that what a daemon pins there outlives the daemon: `ip netns exec` gives
/// every process its own /sys, and a bpffs mounted under it dies with that
/// process. Unmounted on drop.
#[derive(Debug)]
pub struct BpffsMount {
    dir: tempfile::TempDir,
}

impl BpffsMount {
    #[track_caller]
    pub fn mount() -> BpffsMount {
        let dir = tempfile::Builder::new()
            .prefix("hw-bpffs-")
            .tempdir()
            .expect("tempdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mount -t bpf: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        BpffsMount { dir }
    }

    /// `--bpffs <this mount>`, for homeward's command line.
    pub fn flag(&self) -> [&str; 2] {
        [
            "--bpffs",
            self.path().to_str().expect("a UTF-8 temporary path"),
        ]
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
