//! homeward's errors: each prints as one line that says what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing setting: {0}")]
    Missing(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read config {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config {path}: {message}")]
    ConfigParse { path: PathBuf, message: String },
    #[error("homeward run needs root (CAP_NET_ADMIN and CAP_BPF): run it as root")]
    NotRoot,
    #[error("no such interface: {0}")]
    NoSuchInterface(String),
    #[error("homeward is not running (no control socket at {0})")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: the control socket is root-only")]
    PermissionDenied(PathBuf),
    #[error("another homeward is already running on {0}")]
    AlreadyRunning(PathBuf),
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad reply from the daemon: {0}")]
    Protocol(String),
    #[error("{0}")]
    Daemon(String),
    #[error("{0}")]
    Dataplane(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}
