//! systemd's readiness protocol (`sd_notify`), for `Type=notify` units:
//! one datagram to the socket named by `NOTIFY_SOCKET`. Without that
//! variable (not under systemd) every call does nothing.
//!
//! Written out rather than taken from a crate: it is one datagram, and a
//! function over an explicit socket path can be tested without touching the
//! process environment.
//!
//! What the daemons send:
//! - [`ready`] once they serve (the log line "homeward is running"):
//!   `READY=1` and their own pid as `MAINPID=`.
//! - [`taking_over`], from a `--takeover` successor, just before it tells
//!   the running daemon to exit: `MAINPID=<own pid>`. Under the packaged
//!   units the successor is started by `ExecReload=` (through
//!   `/usr/lib/homeward/homeward-takeover`); systemd must know the new main
//!   process before the old one exits, or it would take that exit for the
//!   service's end.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// The environment variable systemd names its notification socket in.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Tells systemd the daemon serves: `READY=1` and `MAINPID=<own pid>`.
pub fn ready() {
    send_or_log(&format!(
        "READY=1\nMAINPID={}\nSTATUS=running\n",
        std::process::id()
    ));
}

/// Tells systemd that this process (a `--takeover` successor) is the
/// service's main process from now on.
pub fn taking_over() {
    send_or_log(&format!(
        "MAINPID={}\nSTATUS=taking over the data path\n",
        std::process::id()
    ));
}

/// Sends `state` to `$NOTIFY_SOCKET`, if set. A failure is logged, never
/// fatal: the daemon serves all the same (systemd then times the start out
/// and says so).
fn send_or_log(state: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET_ENV) else {
        return;
    };
    if let Err(e) = send(Path::new(&socket), state) {
        tracing::warn!(
            socket = %Path::new(&socket).display(),
            "cannot notify systemd ({e}); a Type=notify unit will time out: check NotifyAccess=all"
        );
    }
}

/// Sends `state` as one datagram to the notification socket at `socket`: a
/// path, or an abstract socket name written with a leading `@`.
pub fn send(socket: &Path, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_os_str().as_encoded_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_datagram_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(&path, "READY=1\nMAINPID=42\n").unwrap();
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42\n");
    }

    #[test]
    fn abstract_sockets_are_written_with_an_at() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("homeward-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(Path::new(&format!("@{name}")), "READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        assert!(send(Path::new("/nonexistent/notify"), "READY=1\n").is_err());
    }
}
