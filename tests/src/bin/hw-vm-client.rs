//! The VM-migration lab's client (runs inside the client namespace).
//!
//! `hw-vm-client stream --addr IP:PORT --path PATH --seconds S`: downloads
//! the guest's paced stream (`1\n2\n3\n...`, see tests/vm/stream.cgi) for S
//! seconds, checks every byte against that sequence, measures the largest
//! gap between two reads that returned data (the outage the client saw:
//! the guest paces, so the socket buffer never hides one), notes a reset,
//! and prints one JSON object.
//!
//! `hw-vm-client get --addr IP:PORT --path PATH`: prints the body of a 200
//! answer, exits 1 otherwise (a reachability probe).
//!
//! Plain std sockets and hand-parsed arguments: a few flags, no need for
//! clap here.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

struct Args {
    mode: String,
    addr: SocketAddr,
    path: String,
    seconds: f64,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = it
        .next()
        .ok_or("usage: hw-vm-client stream|get --addr IP:PORT ...")?;
    let mut args = Args {
        mode,
        addr: "192.0.2.50:8080".parse().expect("literal"),
        path: "/".into(),
        seconds: 12.0,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let ms = |v: &str| -> Result<Duration, String> {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--addr" => args.addr = value.parse().map_err(|e| format!("--addr: {e}"))?,
            "--path" => args.path = value,
            "--seconds" => args.seconds = value.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--connect-timeout-ms" | "--timeout-ms" => args.connect_timeout = ms(&value)?,
            "--idle-timeout-ms" => args.idle_timeout = ms(&value)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Checks a byte stream against `1\n2\n3\n...` incrementally.
struct SeqCheck {
    n: u64,
    cur: Vec<u8>,
    pos: usize,
    offset: u64,
    mismatch: Option<u64>,
}

impl SeqCheck {
    fn new() -> SeqCheck {
        SeqCheck {
            n: 1,
            cur: b"1\n".to_vec(),
            pos: 0,
            offset: 0,
            mismatch: None,
        }
    }

    fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.mismatch.is_none() && b != self.cur[self.pos] {
                self.mismatch = Some(self.offset);
            }
            self.offset += 1;
            self.pos += 1;
            if self.pos == self.cur.len() {
                self.n += 1;
                self.cur = format!("{}\n", self.n).into_bytes();
                self.pos = 0;
            }
        }
    }
}

/// Connects, sends a GET and returns the stream positioned at the body,
/// with what was read past the header.
fn request(args: &Args) -> Result<(TcpStream, Vec<u8>), String> {
    let mut s = TcpStream::connect_timeout(&args.addr, args.connect_timeout)
        .map_err(|e| format!("connect {}: {e}", args.addr))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(args.connect_timeout))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: hw-vm-client\r\n\r\n",
        args.path,
        args.addr.ip()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send request: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("read header: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before the header ended: {:?}",
                String::from_utf8_lossy(&head)
            ));
        }
        head.extend_from_slice(&buf[..n]);
        // busybox httpd passes a CGI's own header through with bare LFs.
        let end = (0..head.len()).find_map(|i| {
            if head[i..].starts_with(b"\r\n\r\n") {
                Some(i + 4)
            } else if head[i..].starts_with(b"\n\n") {
                Some(i + 2)
            } else {
                None
            }
        });
        if let Some(end) = end {
            let status_line = String::from_utf8_lossy(&head[..end]);
            let status_line = status_line.lines().next().unwrap_or("");
            if !status_line.contains(" 200") {
                return Err(format!("HTTP status: {status_line}"));
            }
            return Ok((s, head[end..].to_vec()));
        }
        if head.len() > 16384 {
            return Err("header too long".into());
        }
    }
}

fn get(args: &Args) -> ExitCode {
    match request(args) {
        Ok((mut s, mut body)) => {
            let _ = s.read_to_end(&mut body);
            print!("{}", String::from_utf8_lossy(&body));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hw-vm-client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn stream(args: &Args) -> ExitCode {
    let start = Instant::now();
    let (mut s, first) = match request(args) {
        Ok(x) => x,
        Err(e) => {
            println!(
                "{}",
                json!({
                    "connected": false, "bytes": 0, "verified": false,
                    "first_mismatch": null, "max_gap_ms": 0.0,
                    "max_gap_start_unix": 0.0, "max_gap_end_unix": 0.0,
                    "last_data_unix": 0.0, "long_gaps": [], "reset": e.contains("reset"), "eof": false,
                    "stalled": false, "error": e, "duration_s": 0.0, "rate_bps": 0.0,
                })
            );
            return ExitCode::FAILURE;
        }
    };
    let body_start = Instant::now();
    let mut check = SeqCheck::new();
    check.feed(&first);
    let mut bytes = first.len() as u64;
    let mut last = Instant::now();
    let mut last_unix = unix_now();
    let (mut max_gap, mut max_gap_start, mut max_gap_end) = (Duration::ZERO, 0.0, 0.0);
    let mut long_gaps: Vec<(f64, f64)> = Vec::new();
    let (mut reset, mut eof, mut stalled, mut error) = (false, false, false, None::<String>);
    let until = body_start + Duration::from_secs_f64(args.seconds);
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        // Wake up at the end of the run or on the idle limit, whichever
        // comes first; a read that returns data is timed to the
        // microsecond.
        let wait = (until - now)
            .min(args.idle_timeout)
            .max(Duration::from_millis(1));
        let _ = s.set_read_timeout(Some(wait));
        match s.read(&mut buf) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => {
                let t = Instant::now();
                let t_unix = unix_now();
                let gap = t - last;
                if gap > max_gap {
                    max_gap = gap;
                    max_gap_start = last_unix;
                    max_gap_end = t_unix;
                }
                if gap > Duration::from_millis(100) {
                    long_gaps.push((last_unix, gap.as_secs_f64() * 1e3));
                }
                last = t;
                last_unix = t_unix;
                check.feed(&buf[..n]);
                bytes += n as u64;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if last.elapsed() >= args.idle_timeout {
                    stalled = true;
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                reset = true;
                error = Some(e.to_string());
                break;
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    // A stall still in progress at the end counts too.
    let tail = last.elapsed();
    if !eof && !reset && tail > max_gap {
        max_gap = tail;
        max_gap_start = last_unix;
        max_gap_end = unix_now();
    }
    let duration = body_start.elapsed().as_secs_f64();
    let verified = check.mismatch.is_none() && bytes > 0;
    println!(
        "{}",
        json!({
            "connected": true,
            "bytes": bytes,
            "verified": verified,
            "first_mismatch": check.mismatch,
            "max_gap_ms": max_gap.as_secs_f64() * 1e3,
            "max_gap_start_unix": max_gap_start,
            "max_gap_end_unix": max_gap_end,
            "last_data_unix": last_unix,
            "long_gaps": long_gaps,
            "reset": reset,
            "eof": eof,
            "stalled": stalled,
            "error": error,
            "duration_s": duration,
            "rate_bps": bytes as f64 / duration.max(1e-9),
            "connect_ms": (body_start - start).as_secs_f64() * 1e3,
        })
    );
    if verified && !reset && !eof && !stalled {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hw-vm-client: {e}");
            return ExitCode::from(2);
        }
    };
    match args.mode.as_str() {
        "stream" => stream(&args),
        "get" => get(&args),
        other => {
            eprintln!("hw-vm-client: unknown mode {other} (stream or get)");
            ExitCode::from(2)
        }
    }
}
