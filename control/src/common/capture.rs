//! `homeward capture`, both ends of the control socket, for both roles.
//!
//! Protocol: the client sends `{"op":"capture","vm":...,"count":...}`; the
//! daemon answers one JSON reply line (`ok` with the queues and snap length,
//! or the error), then streams pcapng blocks on the same connection: the
//! Section Header, an Interface Description per port, an Enhanced Packet
//! per record, and at the end an Interface Statistics block whose
//! `isb_ifdrop` is the records lost to full capture queues. The daemon ends
//! the stream (and the workers stop capturing) when `count` packets were
//! sent, when the client shuts its side down or goes away, or when the
//! daemon stops.
//!
//! A thread per capture drains the workers' queues and writes to the
//! client, so neither the workers nor the control loop ever wait for it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dataplane::capture::{Capture, Record, DEFAULT_RECORDS, SNAP_LEN};
use dataplane::forwarder::{Forwarder, NextHops, SteeringMaps};
use dataplane::pipeline::Port;

use super::control_socket::send_reply;
use super::pcapng::{self, Block};
use crate::error::Error;
use crate::proto::{Reply, Request};

/// How long the drain thread sleeps when the queues were empty.
const IDLE: Duration = Duration::from_millis(5);
/// How long the daemon waits for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Daemon side: starts a capture on `forwarder`'s workers and streams it to
/// `conn` from a thread of its own; answers an error if it cannot start.
/// Returns at once.
pub fn serve<S: SteeringMaps, N: NextHops>(
    conn: UnixStream,
    forwarder: &Forwarder<S, N>,
    vm: Option<Ipv4Addr>,
    count: Option<u64>,
) {
    let capture = match forwarder.capture(vm, DEFAULT_RECORDS) {
        Ok(c) => c,
        Err(e) => return send_reply(&conn, &Reply::err(e.to_string())),
    };
    let (lan, wan) = forwarder
        .interfaces()
        .unwrap_or_else(|| ("lan".into(), None));
    let mut names = vec![lan];
    names.extend(wan);
    let queues = capture.queues();
    let spawned = std::thread::Builder::new()
        .name("homeward-capture".into())
        .spawn(move || {
            send_reply(
                &conn,
                &Reply::ok(serde_json::json!({
                    "queues": queues,
                    "snaplen": SNAP_LEN,
                    "interfaces": names,
                    "vm": vm,
                    "count": count,
                })),
            );
            stream(&conn, capture, &names, count);
            let _ = conn.shutdown(Shutdown::Both);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the capture thread: {e}");
    }
}

/// Nanoseconds since the Unix epoch of `now`.
fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The drain loop: pcapng to `conn` until the count, the client or the
/// daemon ends it; then the workers are off and the statistics go out.
fn stream(conn: &UnixStream, capture: Capture, names: &[String], count: Option<u64>) {
    let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
    let start = SystemTime::now();
    // Each queue's clock in Unix nanoseconds: now minus its age.
    let bases: Vec<u64> = (0..capture.queues())
        .map(|q| {
            let age = capture
                .epoch(q)
                .map_or(0, |e| e.elapsed().as_nanos() as u64);
            unix_ns(start).saturating_sub(age)
        })
        .collect();
    let interface = |port: Port| match port {
        Port::Wan if names.len() > 1 => 1u32,
        _ => 0,
    };
    let mut out = Vec::with_capacity(64 * 1024);
    pcapng::section_header(&mut out, concat!("homeward ", env!("HOMEWARD_VERSION")));
    for name in names {
        pcapng::interface(&mut out, name, SNAP_LEN as u32);
    }
    let mut sent = 0u64;
    let left = |sent: u64| count.map_or(u64::MAX, |c| c.saturating_sub(sent));
    loop {
        let mut got = 0usize;
        for (q, base) in bases.iter().enumerate() {
            let Some(tap) = capture.tap(q) else { continue };
            // A bounded turn per queue, so one busy queue cannot starve
            // the others or the checks below.
            for _ in 0..DEFAULT_RECORDS {
                if left(sent) == 0 {
                    break;
                }
                let Some(r) = tap.pop() else { break };
                encode(&mut out, &r, q as u32, *base, interface(r.port));
                sent += 1;
                got += 1;
            }
        }
        if !out.is_empty() {
            if (&*conn).write_all(&out).is_err() {
                // The client went away: the workers stop when `capture`
                // drops.
                return;
            }
            out.clear();
        }
        if left(sent) == 0 || client_done(conn) || capture.workers_stopping() {
            break;
        }
        if got == 0 {
            std::thread::sleep(IDLE);
        }
    }
    let dropped = capture.dropped();
    drop(capture);
    let end = unix_ns(SystemTime::now());
    pcapng::statistics(
        &mut out,
        0,
        unix_ns(start),
        end,
        dropped,
        "isb_ifdrop: capture records lost to full capture queues, all queues and ports",
    );
    let _ = (&*conn).write_all(&out);
}

/// One record as an Enhanced Packet Block.
fn encode(out: &mut Vec<u8>, r: &Record, queue: u32, base: u64, interface: u32) {
    pcapng::packet(
        out,
        interface,
        base.saturating_add(r.ns),
        r.bytes(),
        r.orig_len,
        &r.comment(queue),
    );
}

/// Whether the client shut its side down, sent anything, or went away.
fn client_done(conn: &UnixStream) -> bool {
    use rustix::net::{recv, RecvFlags};
    let mut byte = [0u8; 1];
    match recv(conn, &mut byte[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok(_) => true,
        Err(e) => e != rustix::io::Errno::AGAIN,
    }
}

/// What a capture wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Packets (Enhanced Packet Blocks) in the file.
    pub packets: u64,
    /// Records the daemon lost to full capture queues.
    pub dropped: u64,
}

/// Client side: asks the daemon at `socket` for a capture and writes the
/// stream to `file` until `count` packets, the end of the stream, or `stop`
/// (Ctrl-C: the client shuts its side down and reads the rest, the
/// statistics included).
pub fn client(
    socket: &Path,
    vm: Option<Ipv4Addr>,
    count: Option<u64>,
    file: &Path,
    stop: &crossbeam::channel::Receiver<()>,
) -> Result<Written, Error> {
    let stream = crate::client::connect(socket)?;
    let io = |e| Error::Socket {
        path: socket.into(),
        source: e,
    };
    let mut line = serde_json::to_string(&Request::Capture { vm, count })
        .map_err(|e| Error::Protocol(e.to_string()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(io)?;
    let mut reader = Reader {
        stream: &stream,
        stop,
        stopping: None,
    };
    let answer = reader.line().map_err(io)?;
    let reply: Reply =
        serde_json::from_str(&answer).map_err(|e| Error::Protocol(format!("{e}: {answer:?}")))?;
    if !reply.ok {
        return Err(Error::Daemon(reply.error.unwrap_or_default()));
    }
    let field = |k: &str| {
        reply
            .result
            .as_ref()
            .and_then(|r| r.get(k))
            .map_or_else(String::new, |v| v.to_string())
    };
    // Like tcpdump's "listening on": the capture runs from here.
    eprintln!(
        "homeward capture: capturing on {} queue(s), interfaces {}, snap length {} bytes",
        field("queues"),
        field("interfaces"),
        field("snaplen")
    );
    let mut out = std::fs::File::create(file).map_err(|e| Error::Write {
        path: file.into(),
        source: e,
    })?;
    let mut written = Written {
        packets: 0,
        dropped: 0,
    };
    let mut first = true;
    let mut pending = Vec::with_capacity(64 * 1024);
    loop {
        let mut header = [0u8; 8];
        match reader.exact(&mut header) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(io(e)),
        }
        let len = pcapng::block_len(&header).map_err(Error::Protocol)?;
        let mut rest = vec![0u8; len - 8];
        if !reader.exact(&mut rest).map_err(io)? {
            break;
        }
        let block = Block::parse(&header, &rest).map_err(Error::Protocol)?;
        if first && block.kind != pcapng::SHB {
            return Err(Error::Protocol(
                "the capture stream does not start with a pcapng section header".into(),
            ));
        }
        first = false;
        if block.kind == pcapng::EPB {
            if count.is_some_and(|c| written.packets >= c) {
                continue;
            }
            written.packets += 1;
        }
        written.dropped += block.dropped().unwrap_or(0);
        pending.extend_from_slice(&header);
        pending.extend_from_slice(&rest);
        // Whole blocks only, so the file stays readable whenever it ends.
        if pending.len() >= 32 * 1024 || block.kind != pcapng::EPB {
            out.write_all(&pending).map_err(|e| Error::Write {
                path: file.into(),
                source: e,
            })?;
            pending.clear();
        }
    }
    out.write_all(&pending).map_err(|e| Error::Write {
        path: file.into(),
        source: e,
    })?;
    Ok(written)
}

/// Reads the stream with short timeouts, to notice `stop` (Ctrl-C): then
/// it shuts the sending side down and reads what the daemon still sends,
/// for at most a few seconds.
struct Reader<'a> {
    stream: &'a UnixStream,
    stop: &'a crossbeam::channel::Receiver<()>,
    stopping: Option<Instant>,
}

/// How long the client waits for the end of the stream after Ctrl-C.
const STOP_GRACE: Duration = Duration::from_secs(3);

impl Reader<'_> {
    /// Fills `buf`; `Ok(false)` at the end of the stream (or after the
    /// grace period since Ctrl-C), partial data discarded.
    fn exact(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let mut at = 0;
        while at < buf.len() {
            match (&*self.stream).read(&mut buf[at..]) {
                Ok(0) => return Ok(false),
                Ok(n) => at += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    match self.stopping {
                        Some(since) if since.elapsed() > STOP_GRACE => return Ok(false),
                        Some(_) => {}
                        None => {
                            if self.stop.try_recv().is_ok() {
                                self.stopping = Some(Instant::now());
                                let _ = self.stream.shutdown(Shutdown::Write);
                            }
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// One line (the reply), without its newline.
    fn line(&mut self) -> std::io::Result<String> {
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while self.exact(&mut byte)? && byte[0] != b'\n' && raw.len() < 64 * 1024 {
            raw.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_done_sees_shutdown_and_close() {
        let (a, b) = UnixStream::pair().unwrap();
        assert!(!client_done(&a));
        b.shutdown(Shutdown::Write).unwrap();
        assert!(client_done(&a));
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert!(client_done(&a));
    }
}
