//! The control socket: a root-only Unix socket, one JSON line per request.
//! A thread accepts connections and hands them to the control loop, which
//! is the only writer of the bindings.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::error::Error;
use crate::proto::{Reply, Request};

/// The listening socket; removed from the file system on drop, unless
/// handed to a successor.
pub struct ControlSocket {
    path: PathBuf,
    listener: Arc<UnixListener>,
    tx: Sender<UnixStream>,
    connections: Receiver<UnixStream>,
    acceptor: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    handed_over: bool,
}

/// How long the accept thread waits before looking at its stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

impl ControlSocket {
    /// Creates the socket (and its directory, mode 0700), mode 0600. A
    /// leftover socket of a dead daemon is replaced; a live one is an error.
    pub fn bind(path: &Path) -> Result<ControlSocket, Error> {
        let io = |e| Error::Socket {
            path: path.to_path_buf(),
            source: e,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io)?;
            }
        }
        if path.exists() {
            match UnixStream::connect(path) {
                Ok(_) => return Err(Error::AlreadyRunning(path.to_path_buf())),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    fs::remove_file(path).map_err(io)?
                }
                Err(e) => return Err(io(e)),
            }
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
        ControlSocket::adopt(path, listener.into())
    }

    /// Serves `listener`, a predecessor's listening socket at `path`
    /// handed over with `--takeover`: connections waiting in its backlog
    /// are served here.
    pub fn adopt(path: &Path, listener: OwnedFd) -> Result<ControlSocket, Error> {
        let listener = Arc::new(UnixListener::from(listener));
        let (tx, rx) = channel::bounded(16);
        let mut socket = ControlSocket {
            path: path.to_path_buf(),
            listener,
            tx,
            connections: rx,
            acceptor: None,
            handed_over: false,
        };
        socket.resume().map_err(|e| Error::Socket {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(socket)
    }

    /// Accepted connections.
    pub fn connections(&self) -> &Receiver<UnixStream> {
        &self.connections
    }

    /// Stop accepting (the backlog keeps what arrives meanwhile) and give
    /// the listener's fd, for a successor.
    pub fn park(&mut self) -> RawFd {
        if let Some((stop, thread)) = self.acceptor.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        self.listener.as_raw_fd()
    }

    /// Accept again (after [`ControlSocket::park`], if the successor failed).
    pub fn resume(&mut self) -> std::io::Result<()> {
        self.listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (listener, tx, flag) = (self.listener.clone(), self.tx.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("homeward-ctl".into())
            .spawn(move || accept(&listener, &tx, &flag))?;
        self.acceptor = Some((stop, thread));
        Ok(())
    }

    /// The successor serves the path now: leave it on drop.
    pub fn handed_over(&mut self) {
        self.handed_over = true;
    }
}

/// Accept until `stop`, waking every [`ACCEPT_POLL`] to look at it.
fn accept(listener: &UnixListener, tx: &Sender<UnixStream>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                // Served blocking, with timeouts (see `handle`).
                let _ = conn.set_nonblocking(false);
                if tx.send(conn).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(listener, PollFlags::IN)];
                let timeout = Timespec::try_from(ACCEPT_POLL).ok();
                let _ = poll(&mut fds, timeout.as_ref());
            }
            Err(_) => std::thread::sleep(ACCEPT_POLL),
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Some((stop, _)) = &self.acceptor {
            stop.store(true, Ordering::Relaxed);
        }
        if !self.handed_over {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Reads one request from `conn`, answers it with `f`.
pub fn handle(conn: UnixStream, mut f: impl FnMut(Request) -> Reply) {
    let reply = match read_request(&conn) {
        Ok(req) => f(req),
        Err(reply) => reply,
    };
    send_reply(&conn, &reply);
}

/// Reads one request from `conn`; what to answer if there is none.
pub fn read_request(conn: &UnixStream) -> Result<Request, Reply> {
    // A client that does not send its line promptly must not stall the
    // control loop.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    // One byte at a time up to the newline, so nothing after the request
    // (a takeover's messages) is read ahead into a buffer.
    let mut byte = [0u8; 1];
    let mut raw = Vec::new();
    loop {
        match std::io::Read::read(&mut &*conn, &mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if raw.len() < 64 * 1024 => raw.push(byte[0]),
            Ok(_) => return Err(Reply::err("request line too long")),
            Err(e) => return Err(Reply::err(format!("cannot read request: {e}"))),
        }
    }
    line.push_str(&String::from_utf8_lossy(&raw));
    serde_json::from_str::<Request>(&line).map_err(|e| Reply::err(format!("bad request: {e}")))
}

/// A list reply, `{"ok":true,"result":[...]}` on one line, that the
/// control loop hands over in parts and a thread of its own writes: a
/// `list` of a million bindings is 180 MB of JSON, and collecting it at
/// once held the control loop for most of a second. A client that stops
/// reading holds only that thread, for at most [`BACKGROUND_WRITE_TIMEOUT`].
pub struct ListReply<T> {
    parts: Sender<Part<T>>,
    /// Set by the writer when it ends, written or not.
    ended: Arc<AtomicBool>,
}

/// Items of a list, and whether they are its last.
struct Part<T> {
    items: Vec<T>,
    last: bool,
}

/// Parts handed over and not yet written, at most.
const LIST_PARTS_QUEUED: usize = 2;

impl<T: serde::Serialize + Send + 'static> ListReply<T> {
    /// Starts the writer on `conn`; `None` (the client sees the connection
    /// close) if no thread can be started.
    /// Each part the writer takes is told on `room`, so the control loop
    /// waits for that rather than polling a slow client.
    pub fn start(conn: UnixStream, room: Sender<()>) -> Option<ListReply<T>> {
        let (parts, rx) = channel::bounded(LIST_PARTS_QUEUED);
        let ended = Arc::new(AtomicBool::new(false));
        let writer_ended = ended.clone();
        let spawned = std::thread::Builder::new()
            .name("hw-reply".into())
            .spawn(move || {
                let _ = conn.set_write_timeout(Some(BACKGROUND_WRITE_TIMEOUT));
                if let Err(e) = write_list(std::io::BufWriter::new(&conn), rx, &room) {
                    tracing::debug!("reply not written: {e}");
                }
                writer_ended.store(true, Ordering::Release);
                let _ = room.try_send(());
            });
        match spawned {
            Ok(_) => Some(ListReply { parts, ended }),
            Err(e) => {
                tracing::error!("no thread to write a reply: {e}");
                None
            }
        }
    }

    /// Whether the writer has room for another part now (then [`send`]
    /// does not wait).
    ///
    /// [`send`]: ListReply::send
    pub fn ready(&self) -> bool {
        !self.parts.is_full()
    }

    /// Whether the writer has ended (the list written, or the client gone):
    /// nothing more will be taken.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Hands `items` over, `last` if the list ends with them; false if the
    /// writer is gone (the client left, or stopped reading). A list dropped
    /// before its last part is left unfinished: the client sees a broken
    /// reply, not a short list.
    pub fn send(&self, items: Vec<T>, last: bool) -> bool {
        self.parts.send(Part { items, last }).is_ok()
    }
}

/// How long a background reply waits for a client that does not read.
const BACKGROUND_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The line of a [`ListReply`]: its parts in order, until the last.
/// Byte for byte what [`send_reply`] writes for the whole list.
fn write_list<T: serde::Serialize>(
    mut w: impl Write,
    parts: Receiver<Part<T>>,
    room: &Sender<()>,
) -> std::io::Result<()> {
    w.write_all(br#"{"ok":true,"result":["#)?;
    let mut first = true;
    loop {
        let Ok(part) = parts.recv() else {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "the list ended unfinished",
            ));
        };
        // Full: a wake-up is already pending.
        let _ = room.try_send(());
        for item in &part.items {
            if !first {
                w.write_all(b",")?;
            }
            first = false;
            serde_json::to_writer(&mut w, item)?;
        }
        if part.last {
            break;
        }
    }
    w.write_all(b"]}\n")?;
    w.flush()
}

/// Writes `reply` as one line.
pub fn send_reply(conn: &UnixStream, reply: &Reply) {
    if let Ok(mut text) = serde_json::to_string(reply) {
        text.push('\n');
        let _ = (&*conn).write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list written in parts is byte for byte the line `send_reply`
    /// writes for the whole list, also when empty.
    #[test]
    fn a_list_written_in_parts_is_the_same_line() {
        for items in [vec![], vec![("a", 1)], vec![("a", 1), ("b", 2), ("c", 3)]] {
            let (tx, rx) = channel::unbounded();
            for part in items.chunks(2) {
                tx.send(Part {
                    items: part.to_vec(),
                    last: false,
                })
                .unwrap();
            }
            tx.send(Part {
                items: vec![],
                last: true,
            })
            .unwrap();
            let mut line = Vec::new();
            let (room, woken) = channel::unbounded();
            write_list(&mut line, rx, &room).unwrap();
            assert_eq!(
                woken.len(),
                items.chunks(2).count() + 1,
                "a wake-up per part"
            );
            let value = serde_json::to_value(&items).unwrap();
            let mut expected = serde_json::to_string(&Reply::ok(value.clone())).unwrap();
            expected.push('\n');
            assert_eq!(String::from_utf8(line.clone()).unwrap(), expected);
            let reply: Reply = serde_json::from_slice(&line).unwrap();
            assert!(reply.ok);
            assert_eq!(reply.result, Some(value));
        }
    }

    /// A list whose parts stop coming (the daemon stopping) is not closed:
    /// the client sees a broken reply, not a short list.
    #[test]
    fn a_list_left_unfinished_is_not_closed() {
        let (tx, rx) = channel::unbounded();
        tx.send(Part {
            items: vec![1, 2],
            last: false,
        })
        .unwrap();
        drop(tx);
        let mut line = Vec::new();
        assert!(write_list(&mut line, rx, &channel::unbounded().0).is_err());
        assert!(serde_json::from_slice::<Reply>(&line).is_err());
    }
}
