//! One thread per VM watching its QEMU through QMP. QEMU may start after
//! the agent, be restarted, or hand the socket to the next QEMU after a
//! migration, so the watcher reconnects forever until told to stop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::Sender;

use super::qmp::{Event, Qmp, Status};

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
) -> std::io::Result<JoinHandle<()>> {
    let vm = name.to_string();
    std::thread::Builder::new()
        .name(format!("qmp-{name}"))
        .spawn(move || watch(index, &vm, &path, &tx, &stop))
}

fn watch(index: usize, vm: &str, path: &Path, tx: &Sender<(usize, Watch)>, stop: &AtomicBool) {
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
        if tx.send((index, Watch::Connected(status))).is_err() {
            return;
        }
        let reason = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match qmp.next_event(POLL) {
                Ok(Some(e)) => {
                    if tx.send((index, Watch::Event(e))).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => break e.to_string(),
            }
        };
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
        let t = spawn(3, "web1", path.clone(), tx, stop.clone()).unwrap();
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
        // QEMU restarted: a second session.
        session(&listener, true, &[]);
        let (_, m) = rx.recv_timeout(w).unwrap();
        assert!(matches!(m, Watch::Connected(s) if s.running));
        stop.store(true, Ordering::Relaxed);
        drop(listener);
        t.join().unwrap();
    }
}
