//! The QMP client (`control/src/agent/qmp.rs`) on whatever QEMU might send:
//! the bytes are what arrives on the socket, then the peer hangs up. The
//! line parser is private, so it is reached through the public session API
//! over a socket pair: handshake, optionally `query-status`, then events
//! until the stream ends.
//!
//! ```text
//! byte 0  bit 0  prepend a valid greeting and `qmp_capabilities` reply, so
//!                every fuzzed byte lands after the handshake
//!         bit 1  run `query-status` (id 2) after the handshake
//! then    the byte stream from "QEMU"
//! ```
//!
//! Invariants: no panic, no hang (the stream always ends), and an event's
//! timestamp converts to a time only when it is a valid one.
#![no_main]

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use homeward::agent::qmp::{Qmp, QmpError};
use libfuzzer_sys::fuzz_target;

const GREETING: &[u8] = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\n{\"return\": {}, \"id\": 1}\n";

/// Stays well inside a Unix socket's send buffer, so writing it all before
/// reading cannot block.
const MAX_STREAM: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let [mode, stream @ ..] = data else { return };
    let stream = &stream[..stream.len().min(MAX_STREAM)];
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    {
        let mut w = &theirs;
        if mode & 1 != 0 {
            w.write_all(GREETING).unwrap();
        }
        w.write_all(stream).unwrap();
    }
    // End of stream for our side; theirs stays open for reading, so the
    // commands we send do not fail (and raise no SIGPIPE).
    theirs.shutdown(Shutdown::Write).unwrap();

    let mut qmp = match Qmp::handshake(ours) {
        Ok(q) => q,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    if mode & 2 != 0 {
        match qmp.query_status() {
            Ok(s) => {
                let _ = (s.status.len(), s.running);
            }
            Err(QmpError::Closed) => return,
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    // Every call consumes input or ends it; the bound is a safety net.
    for _ in 0..stream.len() + 2 {
        match qmp.next_event(Duration::from_millis(1)) {
            Ok(Some(e)) => {
                let t = e.timestamp;
                let valid = t.seconds >= 0 && (0..1_000_000).contains(&t.microseconds);
                if t.to_system_time().is_some() {
                    assert!(valid, "a time from a bad timestamp: {t:?}");
                }
                let _ = (t.display(), format!("{:?}", e.kind));
            }
            Ok(None) => panic!("a timeout on a stream that has ended"),
            Err(QmpError::Closed) => return,
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    panic!("the event stream did not end");
});
