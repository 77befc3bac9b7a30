//! The control socket: a root-only Unix socket, one JSON line per request.
//! A thread accepts connections and hands them to the control loop, which
//! is the only writer of the bindings.

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam::channel::{self, Receiver};

use crate::error::Error;
use crate::proto::{Reply, Request};

/// The listening socket; removed from the file system on drop.
pub struct ControlSocket {
    path: PathBuf,
    connections: Receiver<UnixStream>,
}

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
        let (tx, rx) = channel::bounded(16);
        std::thread::Builder::new()
            .name("homeward-ctl".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    if tx.send(conn).is_err() {
                        return;
                    }
                }
            })
            .map_err(io)?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
            connections: rx,
        })
    }

    /// Accepted connections.
    pub fn connections(&self) -> &Receiver<UnixStream> {
        &self.connections
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Reads one request from `conn`, answers it with `f`.
pub fn handle(conn: UnixStream, mut f: impl FnMut(Request) -> Reply) {
    // A client that does not send its line promptly must not stall the
    // control loop.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let reply = match BufReader::new(&conn).read_line(&mut line) {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => f(req),
            Err(e) => Reply::err(format!("bad request: {e}")),
        },
        Err(e) => Reply::err(format!("cannot read request: {e}")),
    };
    if let Ok(mut text) = serde_json::to_string(&reply) {
        text.push('\n');
        let _ = (&conn).write_all(text.as_bytes());
    }
}
