//! The one raw syscall the worker makes itself: poll(2) on its sockets.

use std::os::fd::RawFd;
use std::time::Duration;

/// Sleep until `a` or `b` has something to read, or `timeout` passes.
/// Errors (EINTR) are the same as a timeout to the caller: it just loops.
pub(crate) fn poll_readable(a: RawFd, b: Option<RawFd>, timeout: Duration) {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let n = if b.is_some() { 2 } else { 1 };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a valid array of `n` pollfd structs that lives across
    // the call; poll only writes their `revents` fields.
    unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
}
