//! Packet capture with tcpdump inside a namespace.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use crate::netns::{Netns, NsChild};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How long [`Capture::start`] waits for tcpdump to say "listening on".
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Capture::stop`] waits before SIGINT so that the last frames
/// reach tcpdump.
pub const STOP_GRACE: Duration = Duration::from_millis(100);

/// A running `tcpdump -i IF -w FILE -U -n FILTER` in a namespace. Stop it
/// with [`Capture::stop`] to get the pcap; dropping it kills tcpdump.
#[derive(Debug)]
pub struct Capture {
    child: NsChild,
    path: PathBuf,
    iface: String,
}

impl Capture {
    /// Starts capturing on `iface` in `ns` into a fresh file in the
    /// namespace's scratch directory; returns once tcpdump is really
    /// capturing. `filter` is a pcap filter (`"arp"`, `"ip proto 4"`, or
    /// `""` for everything).
    #[track_caller]
    pub fn start(ns: &Netns, iface: &str, filter: &str) -> Capture {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = ns.dir().join(format!("{iface}-{n}.pcap"));
        Capture::start_to(ns, iface, filter, &path)
    }

    /// [`Capture::start`] into a chosen file.
    #[track_caller]
    pub fn start_to(ns: &Netns, iface: &str, filter: &str, path: &Path) -> Capture {
        let path_s = path.to_string_lossy().into_owned();
        // -Z root: Debian's tcpdump otherwise drops to user tcpdump before
        // opening the file, and the scratch directory is root's (0700).
        // --immediate-mode: hand each packet over at once (no block timeout
        // in the ring), so that stopping loses nothing already seen.
        let mut args = vec![
            "tcpdump",
            "-i",
            iface,
            "-w",
            &path_s,
            "-U",
            "-n",
            "-Z",
            "root",
            "--immediate-mode",
        ];
        if !filter.trim().is_empty() {
            args.push(filter);
        }
        let mut child = ns.spawn(&args);
        if !child.wait_for_output("listening on", START_TIMEOUT) {
            let running = child.is_running();
            panic!(
                "tcpdump on {iface} in {} did not start capturing ({}): {}",
                ns.name(),
                if running { "timed out" } else { "exited" },
                child.stderr().trim()
            );
        }
        Capture {
            child,
            path: path.to_path_buf(),
            iface: iface.to_string(),
        }
    }

    /// The pcap file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops tcpdump cleanly (after [`STOP_GRACE`], SIGINT, wait) and
    /// returns the pcap path. The file lives as long as the namespace's
    /// scratch directory.
    #[track_caller]
    pub fn stop(self) -> PathBuf {
        self.stop_after(STOP_GRACE)
    }

    /// [`Capture::stop`] with a chosen grace period.
    #[track_caller]
    pub fn stop_after(mut self, grace: Duration) -> PathBuf {
        thread::sleep(grace);
        let status = self.child.stop_with("INT", Duration::from_secs(5));
        let stderr = self.child.stderr();
        assert!(
            status.success() || status.code().is_none() && stderr.contains("packets captured"),
            "tcpdump on {} exited with {status}: {}",
            self.iface,
            stderr.trim()
        );
        self.path.clone()
    }

    /// tcpdump's stderr so far (after stop: its packet counts).
    pub fn stderr(&self) -> String {
        self.child.stderr()
    }
}
