//! One thread per VM watching its QEMU through QMP. QEMU may start after
//! the agent, be restarted, or hand the socket to the next QEMU after a
//! migration, so the watcher reconnects forever until told to stop.
//!
//! While connected it leaves a [`Commander`] for the session in the VM's
//! [`CommandSlot`], so the agent's loop can send commands
//! (`migrate-continue`) on the same socket; their answers come back here
//! and are reported as [`Watch::Answer`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::Sender;

use super::qmp::{Answer, Commander, Event, Incoming, Qmp, Status};

/// The connected session's [`Commander`], `None` while there is none.
pub type CommandSlot = Arc<Mutex<Option<Commander>>>;

/// Puts `c` into the slot (a poisoned lock is taken over: the value is a
/// plain handle).
pub fn put(slot: &CommandSlot, c: Option<Commander>) {
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = c;
}

/// A clone of the slot's commander.
pub fn commander(slot: &CommandSlot) -> Option<Commander> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Pause between connection attempts while the socket is absent or refused.
pub const RETRY: Duration = Duration::from_millis(100);
/// How often a blocked read wakes up to check the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// What a watcher reports, tagged with the VM's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// Connected and negotiated; QEMU's `query-status`.
    Connected(Status),
    Event(Event),
    /// QEMU's answer to a command the loop sent through the slot.
    Answer(Answer),
    /// The session ended (EOF or error); the reason for the log.
    Disconnected(String),
}

/// Starts the watcher of VM `index`.
pub fn spawn(
    index: usize,
    name: &str,
    path: PathBuf,
    tx: Sender<(usize, Watch)>,
    stop: Arc<AtomicBool>,
    slot: CommandSlot,
) -> std::io::Result<JoinHandle<()>> {
    let vm = name.to_string();
    std::thread::Builder::new()
        .name(format!("qmp-{name}"))
        .spawn(move || {
            watch(index, &vm, &path, &tx, &stop, &slot);
            put(&slot, None);
        })
}

fn watch(
    index: usize,
    vm: &str,
    path: &Path,
    tx: &Sender<(usize, Watch)>,
    stop: &AtomicBool,
    slot: &CommandSlot,
) {
    let mut waiting_logged = false;
    while !stop.load(Ordering::Relaxed) {
        let (mut qmp, status) = match Qmp::connect(path).and_then(|mut q| {
            let s = q.query_status()?;
            Ok((q, s))
        }) {
            Ok(x) => x,
            Err(e) => {
                // Absent or refused is the normal state of a VM that is
                // not here: say so once, not ten times a second.
                if !waiting_logged {
                    tracing::debug!(vm, qmp = %path.display(), "waiting for QMP: {e}");
                    waiting_logged = true;
                }
                std::thread::sleep(RETRY);
                continue;
            }
        };
        waiting_logged = false;
        match qmp.commander() {
            Ok(c) => put(slot, Some(c)),
            Err(e) => tracing::warn!(
                vm,
                "no QMP commander (migrate-continue cannot be sent): {e}"
            ),
        }
        if tx.send((index, Watch::Connected(status))).is_err() {
            return;
        }
        let reason = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let report = match qmp.next(POLL) {
                Ok(Some(Incoming::Event(e))) => Watch::Event(e),
                Ok(Some(Incoming::Answer(a))) => Watch::Answer(a),
                Ok(None) => continue,
                Err(e) => break e.to_string(),
            };
            if tx.send((index, report)).is_err() {
                return;
            }
        };
        put(slot, None);
        if tx.send((index, Watch::Disconnected(reason))).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::qmp::EventKind;
    use crossbeam::channel;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A fake QEMU that serves one session on `listener`: greeting,
    /// answers, then `events`, then hangs up.
    fn session(listener: &UnixListener, running: bool, events: &[&str]) {
        let (s, _) = listener.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
        let mut r = BufReader::new(s);
        for _ in 0..2 {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            let cmd: serde_json::Value = serde_json::from_str(&l).unwrap();
            let body = if cmd["execute"] == "query-status" {
                format!(r#"{{"status": "x", "running": {running}}}"#)
            } else {
                "{}".into()
            };
            writeln!(w, r#"{{"return": {body}, "id": {}}}"#, cmd["id"]).unwrap();
        }
        for e in events {
            writeln!(
                w,
                r#"{{"event": "{e}", "data": {{}}, "timestamp": {{"seconds": 7, "microseconds": 8}}}}"#
            )
            .unwrap();
        }
    }

    #[test]
    fn waits_for_qemu_then_reports_and_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.qmp");
        let (tx, rx) = channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let slot = CommandSlot::default();
        let t = spawn(3, "web1", path.clone(), tx, stop.clone(), slot.clone()).unwrap();
        // QEMU starts later than the agent.
        std::thread::sleep(Duration::from_millis(250));
        let listener = UnixListener::bind(&path).unwrap();
        session(&listener, false, &["RESUME"]);
        let w = Duration::from_secs(5);
        let got: Vec<_> = (0..3).map(|_| rx.recv_timeout(w).unwrap()).collect();
        assert_eq!(got[0].0, 3);
        assert!(matches!(&got[0].1, Watch::Connected(s) if !s.running));
        assert!(matches!(&got[1].1, Watch::Event(e) if e.kind == EventKind::Resume));
        assert!(matches!(&got[2].1, Watch::Disconnected(_)));
        assert!(commander(&slot).is_none(), "no commander once disconnected");
        // QEMU restarted: a second session.
        session(&listener, true, &[]);
        let (_, m) = rx.recv_timeout(w).unwrap();
        assert!(matches!(m, Watch::Connected(s) if s.running));
        stop.store(true, Ordering::Relaxed);
        drop(listener);
        t.join().unwrap();
        assert!(commander(&slot).is_none());
    }
}
