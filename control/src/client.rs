//! The CLI side of the control socket.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::error::Error;
use crate::proto::{Reply, Request};

/// Connects to the daemon's control socket.
pub fn connect(socket: &Path) -> Result<UnixStream, Error> {
    UnixStream::connect(socket).map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => Error::NotRunning(socket.into()),
        ErrorKind::PermissionDenied => Error::PermissionDenied(socket.into()),
        _ => Error::Socket {
            path: socket.into(),
            source: e,
        },
    })
}

/// Sends one request and returns the daemon's result.
pub fn request(socket: &Path, req: &Request) -> Result<serde_json::Value, Error> {
    request_with_body(socket, req, &[], Duration::from_secs(10))
}

/// Sends one request line followed by `body` (a `bind_many` file), and
/// waits up to `wait` for the answer.
pub fn request_with_body(
    socket: &Path,
    req: &Request,
    body: &[u8],
    wait: Duration,
) -> Result<serde_json::Value, Error> {
    let stream = connect(socket)?;
    let io = |e| Error::Socket {
        path: socket.into(),
        source: e,
    };
    stream.set_read_timeout(Some(wait)).map_err(io)?;
    let mut line = serde_json::to_string(req).map_err(|e| Error::Protocol(e.to_string()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    (&stream).write_all(body).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    let reply: Reply =
        serde_json::from_str(&answer).map_err(|e| Error::Protocol(format!("{e}: {answer:?}")))?;
    match (reply.ok, reply.result, reply.error) {
        (true, Some(result), _) => Ok(result),
        (false, _, Some(error)) => Err(Error::Daemon(error)),
        _ => Err(Error::Protocol(answer.trim().to_string())),
    }
}
