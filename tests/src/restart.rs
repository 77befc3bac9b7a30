//! Helpers for the restart and lifecycle tests (`tests/tests/restart.rs`):
//!
//! - [`SeqSender`]: a thread in a namespace sending sequence-numbered UDP
//!   datagrams at a paced rate (`sendmmsg` in batches).
//! - [`IpipCounter`]: a thread in a namespace receiving the IPIP packets the
//!   home agent tunnels there on a raw socket (protocol 4), recording every
//!   datagram's sequence number, send time and arrival time.
//! - [`analyze`]: sent, received, lost, longest hole and longest gap of a
//!   sequence range.
//! - BPF objects by kernel id ([`bpf_prog_ids`], [`bpf_map_ids`],
//!   [`held_bpf_objects`]), a process's open fds ([`fd_count`]), files
//!   under a directory ([`files_under`]) and `/proc/net/snmp` of a namespace
//!   ([`Snmp`]): what the lifecycle test checks for leaks.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::fs;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::inns::spawn_in_netns;
use crate::Netns;

/// First bytes of every datagram of a [`SeqSender`].
pub const MAGIC: [u8; 4] = *b"HWRS";
/// UDP payload: magic, sequence number, send time (ns since the epoch).
pub const PAYLOAD_LEN: usize = 4 + 8 + 8;
/// Datagrams per `sendmmsg` / `recvmmsg`.
const BATCH: usize = 64;
/// A sender further behind its schedule than this (a vCPU stall) drops
/// the backlog instead of sending it as one burst.
const MAX_BACKLOG: u64 = 1000;

/// Nanoseconds from `epoch` to now.
pub fn ns_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// What a [`SeqSender`] did.
#[derive(Debug, Clone)]
pub struct SenderReport {
    /// Datagrams the kernel accepted (sequence numbers `0..sent`).
    pub sent: u64,
    /// `sendmmsg` calls that failed (ENOBUFS, ...).
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Datagrams not sent because the thread fell too far behind.
    pub skipped: u64,
    /// How long it sent.
    pub elapsed: Duration,
}

impl SenderReport {
    /// The rate it achieved.
    pub fn rate_pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A thread in a namespace sending `PAYLOAD_LEN`-byte UDP datagrams with
/// consecutive sequence numbers to one address at a paced rate.
pub struct SeqSender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: JoinHandle<SenderReport>,
}

impl SeqSender {
    /// Starts sending from `ns` to `dst:port` at `rate_pps`; send times are
    /// nanoseconds since `epoch`.
    #[track_caller]
    pub fn start(ns: &Netns, epoch: Instant, dst: Ipv4Addr, port: u16, rate_pps: u64) -> SeqSender {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), sent.clone());
        let handle = spawn_in_netns(ns, move || send_loop(epoch, dst, port, rate_pps, &s, &n));
        SeqSender { stop, sent, handle }
    }

    /// Datagrams sent so far (the next sequence number).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// Stops the thread and returns what it did.
    #[track_caller]
    pub fn stop(self) -> SenderReport {
        self.stop.store(true, Ordering::Release);
        self.handle.join().expect("sender thread")
    }
}

fn send_loop(
    epoch: Instant,
    dst: Ipv4Addr,
    port: u16,
    rate: u64,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> SenderReport {
    // Unconnected: ICMP errors for the datagrams (host unreachable while
    // nobody forwards them) must not fail later sends.
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("UDP socket");
    let fd = sock.as_raw_fd();
    // SAFETY: a zeroed sockaddr_in is valid; the fields are set below.
    let mut addr: libc::sockaddr_in = unsafe { zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = port.to_be();
    addr.sin_addr.s_addr = u32::from(dst).to_be();
    let mut bufs = [[0u8; PAYLOAD_LEN]; BATCH];
    // SAFETY: zeroed iovec/mmsghdr are valid; pointers are set before use.
    let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };

    let start = Instant::now();
    let mut base = 0u64; // sequence numbers skipped after a stall
    let mut seq = 0u64;
    let (mut errors, mut first_error) = (0u64, None);
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_nanos() as u64).saturating_mul(rate) / 1_000_000_000;
        let mut behind = due.saturating_sub(seq + base);
        if behind == 0 {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        if behind > MAX_BACKLOG {
            base += behind - MAX_BACKLOG;
            behind = MAX_BACKLOG;
        }
        let n = (behind as usize).min(BATCH);
        let now = ns_since(epoch);
        for i in 0..n {
            let b = &mut bufs[i];
            b[..4].copy_from_slice(&MAGIC);
            b[4..12].copy_from_slice(&(seq + i as u64).to_be_bytes());
            b[12..20].copy_from_slice(&now.to_be_bytes());
            iov[i].iov_base = b.as_mut_ptr().cast::<c_void>();
            iov[i].iov_len = PAYLOAD_LEN;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut addr as *mut libc::sockaddr_in).cast::<c_void>();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..n]` point at `addr`, `iov[..n]` and `bufs[..n]`,
        // all alive and unmoved for the call.
        let ret = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        if ret < 0 {
            errors += 1;
            if first_error.is_none() {
                first_error = Some(errno().to_string());
            }
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        seq += ret as u64;
        sent.store(seq, Ordering::Release);
    }
    SenderReport {
        sent: seq,
        errors,
        first_error,
        skipped: base,
        elapsed: start.elapsed(),
    }
}

/// One datagram of a [`SeqSender`] that arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Its sequence number.
    pub seq: u64,
    /// When it was sent (ns since the epoch).
    pub sent_ns: u64,
    /// When the receiver read it (ns since the epoch; one clock read per
    /// `recvmmsg` batch).
    pub recv_ns: u64,
}

/// What an [`IpipCounter`] saw.
#[derive(Debug, Clone)]
pub struct CounterReport {
    /// Every datagram of the stream that arrived, in arrival order.
    pub arrivals: Vec<Arrival>,
    /// IPIP packets that were not the stream's (other ports, other data).
    pub other: u64,
    /// Packets the raw socket dropped for want of buffer space
    /// (`/proc/net/raw`'s `drops`): lost at the receiver, not on the way.
    pub socket_drops: u64,
}

/// A thread in a namespace counting the stream's datagrams that arrive
/// IPv4-in-IPv4 encapsulated (a raw socket for protocol 4: with no ipip
/// module the kernel hands every such packet to it).
pub struct IpipCounter {
    stop: Arc<AtomicBool>,
    max_seq: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    handle: JoinHandle<CounterReport>,
}

impl IpipCounter {
    /// Starts counting in `ns` the datagrams to UDP port `port`; returns
    /// once the socket is open.
    #[track_caller]
    pub fn start(ns: &Netns, epoch: Instant, port: u16) -> IpipCounter {
        let stop = Arc::new(AtomicBool::new(false));
        let max_seq = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, m, r) = (stop.clone(), max_seq.clone(), received.clone());
        let handle = spawn_in_netns(ns, move || {
            let fd = open_raw_ipip();
            let _ = ready_tx.send(());
            recv_loop(&fd, epoch, port, &s, &m, &r)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("IPIP counter did not open its socket");
        IpipCounter {
            stop,
            max_seq,
            received,
            handle,
        }
    }

    /// Datagrams of the stream received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// Highest sequence number received so far, plus one (0: none yet).
    pub fn seq_end(&self) -> u64 {
        self.max_seq.load(Ordering::Acquire)
    }

    /// Waits until a datagram of sequence number `seq` or later arrived;
    /// false after `timeout`.
    pub fn wait_seq(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.seq_end() <= seq {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Stops the thread and returns what it saw.
    #[track_caller]
    pub fn stop(self) -> CounterReport {
        self.stop.store(true, Ordering::Release);
        self.handle.join().expect("IPIP counter thread")
    }
}

#[track_caller]
fn open_raw_ipip() -> OwnedFd {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_IPIP,
        )
    };
    assert!(fd >= 0, "raw IPIP socket: {}", errno());
    // SAFETY: the kernel just returned `fd`; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let rcvbuf: libc::c_int = 64 << 20;
    setsockopt(fd.as_raw_fd(), libc::SO_RCVBUFFORCE, &rcvbuf);
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    setsockopt(fd.as_raw_fd(), libc::SO_RCVTIMEO, &tv);
    fd
}

#[track_caller]
fn setsockopt<T>(fd: RawFd, opt: libc::c_int, value: &T) {
    // SAFETY: `value` is a live `T` of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (value as *const T).cast::<c_void>(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(ret, 0, "setsockopt({opt}): {}", errno());
}

/// The stream datagram in a raw IPIP packet (outer IPv4 header included),
/// if it is one: (sequence number, send time).
fn parse_ipip(p: &[u8], port: u16) -> Option<(u64, u64)> {
    let outer = usize::from(p.first()? & 0x0f) * 4;
    let inner = p.get(outer..)?;
    if inner.first()? >> 4 != 4 || *inner.get(9)? != libc::IPPROTO_UDP as u8 {
        return None;
    }
    let ihl = usize::from(inner[0] & 0x0f) * 4;
    let udp = inner.get(ihl..)?;
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let payload = udp.get(8..8 + PAYLOAD_LEN)?;
    if dport != port || payload[..4] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(payload[4..12].try_into().ok()?);
    let sent = u64::from_be_bytes(payload[12..20].try_into().ok()?);
    Some((seq, sent))
}

fn recv_loop(
    fd: &OwnedFd,
    epoch: Instant,
    port: u16,
    stop: &AtomicBool,
    max_seq: &AtomicU64,
    received: &AtomicU64,
) -> CounterReport {
    const LEN: usize = 256;
    let mut bufs = vec![[0u8; LEN]; BATCH];
    // SAFETY: zeroed iovec/mmsghdr are valid; pointers are set before use.
    let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    let mut arrivals = Vec::with_capacity(2_000_000);
    let mut other = 0u64;
    let mut top = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..BATCH {
            iov[i].iov_base = bufs[i].as_mut_ptr().cast::<c_void>();
            iov[i].iov_len = LEN;
            // SAFETY: as above: a zeroed msghdr is valid.
            msgs[i].msg_hdr = unsafe { zeroed() };
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` point at `iov` and `bufs`, alive and unmoved for
        // the call; a null timeout (SO_RCVTIMEO bounds the first wait).
        let ret = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if ret <= 0 {
            continue; // timeout (EAGAIN) or EINTR: look at `stop`
        }
        let now = ns_since(epoch);
        for i in 0..ret as usize {
            let len = (msgs[i].msg_len as usize).min(LEN);
            match parse_ipip(&bufs[i][..len], port) {
                Some((seq, sent_ns)) => {
                    arrivals.push(Arrival {
                        seq,
                        sent_ns,
                        recv_ns: now,
                    });
                    top = top.max(seq + 1);
                }
                None => other += 1,
            }
        }
        max_seq.store(top, Ordering::Release);
        received.store(arrivals.len() as u64, Ordering::Release);
    }
    CounterReport {
        arrivals,
        other,
        socket_drops: raw_socket_drops(fd),
    }
}

/// The `drops` column of this raw socket in `/proc/thread-self/net/raw`
/// (the calling thread's namespace).
fn raw_socket_drops(fd: &OwnedFd) -> u64 {
    // SAFETY: a zeroed stat is valid output space for fstat.
    let mut st: libc::stat = unsafe { zeroed() };
    // SAFETY: `fd` is open; `st` is writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return 0;
    }
    let inode = st.st_ino.to_string();
    let text = fs::read_to_string("/proc/thread-self/net/raw").unwrap_or_default();
    text.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(9) == Some(&inode.as_str()))
        .and_then(|f| f.get(12)?.parse().ok())
        .unwrap_or(0)
}

/// Loss and gaps of the sequence numbers `range` of a stream.
#[derive(Debug, Clone, Default)]
pub struct Loss {
    /// Datagrams sent in the range.
    pub sent: u64,
    /// Distinct ones that arrived.
    pub received: u64,
    /// Copies beyond the first.
    pub duplicates: u64,
    /// `sent - received`.
    pub lost: u64,
    /// Datagrams that arrived after one of a higher sequence number.
    pub reordered: u64,
    /// The longest run of consecutive lost sequence numbers.
    pub longest_hole: u64,
    /// Its first sequence number.
    pub hole_start: u64,
    /// The outage around it in the sender's time: from sending the last
    /// datagram that arrived before the hole to sending the first one that
    /// arrived after it (ms).
    pub outage_ms: f64,
    /// Send time of the first lost datagram of the longest hole (ns since the
    /// epoch, interpolated from its neighbours).
    pub hole_sent_ns: u64,
    /// The longest time between two consecutive arrivals at the receiver (ms).
    pub max_gap_ms: f64,
    /// When the gap ended at the receiver (ns since the epoch).
    pub max_gap_end_ns: u64,
    /// The five longest holes: (first sequence number, length, send time of
    /// the last datagram that arrived before it, ns since the epoch).
    pub holes: Vec<(u64, u64, u64)>,
}

/// Loss and gaps of sequence numbers `range` in `arrivals`.
pub fn analyze(arrivals: &[Arrival], range: std::ops::Range<u64>) -> Loss {
    let mut loss = Loss {
        sent: range.end.saturating_sub(range.start),
        ..Loss::default()
    };
    let mut seen: BTreeMap<u64, Arrival> = BTreeMap::new();
    let mut last_recv: Option<u64> = None;
    let mut top: Option<u64> = None;
    for a in arrivals.iter().filter(|a| range.contains(&a.seq)) {
        if seen.insert(a.seq, *a).is_some() {
            loss.duplicates += 1;
        }
        if top.is_some_and(|t| a.seq < t) {
            loss.reordered += 1;
        }
        top = Some(top.map_or(a.seq, |t| t.max(a.seq)));
        if let Some(prev) = last_recv {
            let gap = a.recv_ns.saturating_sub(prev);
            if gap as f64 / 1e6 > loss.max_gap_ms {
                loss.max_gap_ms = gap as f64 / 1e6;
                loss.max_gap_end_ns = a.recv_ns;
            }
        }
        last_recv = Some(a.recv_ns);
    }
    loss.received = seen.len() as u64;
    loss.lost = loss.sent.saturating_sub(loss.received);
    // Holes between consecutive received sequence numbers (and at the ends).
    let mut prev: Option<&Arrival> = None;
    for a in seen.values() {
        let from = prev.map_or(range.start, |p| p.seq + 1);
        let hole = a.seq - from;
        if hole > 0 {
            let before = prev.map_or(0, |p| p.sent_ns);
            loss.holes.push((from, hole, before));
        }
        if hole > loss.longest_hole {
            loss.longest_hole = hole;
            loss.hole_start = from;
            if let Some(p) = prev {
                loss.outage_ms = a.sent_ns.saturating_sub(p.sent_ns) as f64 / 1e6;
                loss.hole_sent_ns = p.sent_ns;
            }
        }
        prev = Some(a);
    }
    if let Some(p) = prev {
        let hole = range.end.saturating_sub(p.seq + 1);
        if hole > 0 {
            loss.holes.push((p.seq + 1, hole, p.sent_ns));
        }
        if hole > loss.longest_hole {
            loss.longest_hole = hole;
            loss.hole_start = p.seq + 1;
            loss.outage_ms = f64::NAN; // never resumed within the range
            loss.hole_sent_ns = p.sent_ns;
        }
    }
    loss.holes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    loss.holes.truncate(5);
    loss
}

// ---- BPF objects by id -------------------------------------------------

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Offset of `name` in `struct bpf_prog_info` (uapi/linux/bpf.h).
const PROG_INFO_NAME: usize = 64;
/// Offsets of `nr_map_ids` and `map_ids` in `struct bpf_prog_info`.
const PROG_INFO_NR_MAP_IDS: usize = 52;
const PROG_INFO_MAP_IDS: usize = 56;
/// Offset of `name` in `struct bpf_map_info`.
const MAP_INFO_NAME: usize = 24;

/// `bpf(cmd, attr, sizeof attr)`; attr is 16 zero-padded u64s.
fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a writable, zero-padded bpf_attr of the size passed,
    // alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            size_of::<[u64; 16]>(),
        )
    };
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

fn set_u32(attr: &mut [u64; 16], index: usize, v: u32) {
    let w = &mut attr[index / 2];
    if index.is_multiple_of(2) {
        *w = (*w & !0xffff_ffff) | u64::from(v);
    } else {
        *w = (*w & 0xffff_ffff) | (u64::from(v) << 32);
    }
}

fn get_u32(attr: &[u64; 16], index: usize) -> u32 {
    let w = attr[index / 2];
    if index.is_multiple_of(2) {
        w as u32
    } else {
        (w >> 32) as u32
    }
}

fn next_ids(cmd: libc::c_long) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut start = 0u32;
    loop {
        let mut attr = [0u64; 16];
        set_u32(&mut attr, 0, start);
        if sys_bpf(cmd, &mut attr).is_err() {
            return ids; // ENOENT: the end
        }
        start = get_u32(&attr, 1);
        ids.push(start);
    }
}

/// Kernel ids of every BPF program of the system.
pub fn bpf_prog_ids() -> Vec<u32> {
    next_ids(BPF_PROG_GET_NEXT_ID)
}

/// Kernel ids of every BPF map of the system.
pub fn bpf_map_ids() -> Vec<u32> {
    next_ids(BPF_MAP_GET_NEXT_ID)
}

fn fd_by_id(cmd: libc::c_long, id: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    set_u32(&mut attr, 0, id);
    let fd = sys_bpf(cmd, &mut attr)?;
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn info(fd: &OwnedFd, buf: &mut [u8; 512]) -> io::Result<()> {
    let mut attr = [0u64; 16];
    set_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    set_u32(&mut attr, 1, buf.len() as u32);
    attr[1] = buf.as_mut_ptr() as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

fn name_at(buf: &[u8], at: usize) -> String {
    let raw = &buf[at..at + 16];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Whether a BPF program of kernel id `id` exists.
pub fn bpf_prog_exists(id: u32) -> bool {
    !matches!(fd_by_id(BPF_PROG_GET_FD_BY_ID, id), Err(e) if e.raw_os_error() == Some(libc::ENOENT))
}

/// Whether a BPF map of kernel id `id` exists.
pub fn bpf_map_exists(id: u32) -> bool {
    !matches!(fd_by_id(BPF_MAP_GET_FD_BY_ID, id), Err(e) if e.raw_os_error() == Some(libc::ENOENT))
}

/// The name of program `id` and the ids of the maps it uses, if it exists.
pub fn bpf_prog_info(id: u32) -> Option<(String, Vec<u32>)> {
    let fd = fd_by_id(BPF_PROG_GET_FD_BY_ID, id).ok()?;
    let mut map_ids = [0u32; 64];
    let mut buf = [0u8; 512];
    buf[PROG_INFO_NR_MAP_IDS..PROG_INFO_NR_MAP_IDS + 4]
        .copy_from_slice(&(map_ids.len() as u32).to_ne_bytes());
    buf[PROG_INFO_MAP_IDS..PROG_INFO_MAP_IDS + 8]
        .copy_from_slice(&(map_ids.as_mut_ptr() as u64).to_ne_bytes());
    info(&fd, &mut buf).ok()?;
    let nr = u32::from_ne_bytes(
        buf[PROG_INFO_NR_MAP_IDS..PROG_INFO_NR_MAP_IDS + 4]
            .try_into()
            .ok()?,
    ) as usize;
    Some((
        name_at(&buf, PROG_INFO_NAME),
        map_ids[..nr.min(map_ids.len())].to_vec(),
    ))
}

/// The name of map `id`, if it exists.
pub fn bpf_map_name(id: u32) -> Option<String> {
    let fd = fd_by_id(BPF_MAP_GET_FD_BY_ID, id).ok()?;
    let mut buf = [0u8; 512];
    info(&fd, &mut buf).ok()?;
    Some(name_at(&buf, MAP_INFO_NAME))
}

/// How many programs named `prog` and maps named one of `maps` the system
/// has: (programs, maps by name).
pub fn count_bpf_by_name(prog: &str, maps: &[&str]) -> (usize, BTreeMap<String, usize>) {
    let progs = bpf_prog_ids()
        .into_iter()
        .filter_map(bpf_prog_info)
        .filter(|(n, _)| n == prog)
        .count();
    let mut by_name: BTreeMap<String, usize> = maps.iter().map(|m| (m.to_string(), 0)).collect();
    for name in bpf_map_ids().into_iter().filter_map(bpf_map_name) {
        if let Some(c) = by_name.get_mut(&name) {
            *c += 1;
        }
    }
    (progs, by_name)
}

/// The BPF programs and maps process `pid` holds an fd of
/// (`/proc/<pid>/fdinfo`), plus the maps those programs use.
#[derive(Debug, Clone, Default)]
pub struct HeldBpf {
    /// Program ids.
    pub progs: Vec<u32>,
    /// Map ids.
    pub maps: Vec<u32>,
}

/// What [`HeldBpf`] process `pid` holds.
pub fn held_bpf_objects(pid: u32) -> HeldBpf {
    let mut held = HeldBpf::default();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return held;
    };
    for e in entries.flatten() {
        let text = fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("prog_id:") {
                held.progs.extend(v.trim().parse::<u32>().ok());
            } else if let Some(v) = line.strip_prefix("map_id:") {
                held.maps.extend(v.trim().parse::<u32>().ok());
            }
        }
    }
    for &p in &held.progs.clone() {
        if let Some((_, maps)) = bpf_prog_info(p) {
            held.maps.extend(maps);
        }
    }
    held.progs.sort_unstable();
    held.progs.dedup();
    held.maps.sort_unstable();
    held.maps.dedup();
    held
}

// ---- processes, files, namespaces ----------------------------------------

/// Open fds of process `pid`, with what each points at.
pub fn fds(pid: u32) -> BTreeMap<u32, String> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "?".into());
            Some((fd, target))
        })
        .collect()
}

/// How many fds process `pid` has open.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Every non-directory under `dir`, recursively (pins on a bpffs).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The pins under a bpffs mount: every file but the iterators the kernel
/// preloads at its root (`progs.debug`, `maps.debug`).
pub fn pins_in(bpffs: &Path) -> Vec<PathBuf> {
    files_under(bpffs)
        .into_iter()
        .filter(|p| {
            !(p.parent() == Some(bpffs)
                && p.file_name()
                    .is_some_and(|n| n == "progs.debug" || n == "maps.debug"))
        })
        .collect()
}

/// The names `ip netns` knows (`/run/netns`).
pub fn netns_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `/proc/net/snmp` of a namespace: `("Ip", "ForwDatagrams") -> value`.
#[derive(Debug, Clone, Default)]
pub struct Snmp(pub BTreeMap<(String, String), i64>);

impl Snmp {
    /// Reads it in `ns`.
    #[track_caller]
    pub fn read(ns: &Netns) -> Snmp {
        Snmp::parse(&ns.exec_ok(&["cat", "/proc/net/snmp"]))
    }

    /// Parses the header/value line pairs.
    pub fn parse(text: &str) -> Snmp {
        let mut map = BTreeMap::new();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [head, values] = pair else { continue };
            let mut h = head.split_whitespace();
            let mut v = values.split_whitespace();
            let (Some(proto), Some(_)) = (h.next(), v.next()) else {
                continue;
            };
            let proto = proto.trim_end_matches(':').to_string();
            for (k, val) in h.zip(v) {
                if let Ok(val) = val.parse() {
                    map.insert((proto.clone(), k.to_string()), val);
                }
            }
        }
        Snmp(map)
    }

    /// One counter (0 if absent).
    pub fn get(&self, proto: &str, key: &str) -> i64 {
        self.0
            .get(&(proto.to_string(), key.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// `self - earlier` for the counters named, as `proto.key=delta`.
    pub fn delta(&self, earlier: &Snmp, keys: &[(&str, &str)]) -> String {
        keys.iter()
            .map(|(p, k)| format!("{p}.{k}={}", self.get(p, k) - earlier.get(p, k)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(seq: u64, t: u64) -> Arrival {
        Arrival {
            seq,
            sent_ns: t,
            recv_ns: t + 10,
        }
    }

    #[test]
    fn analyze_finds_the_longest_hole_and_gap() {
        let a: Vec<Arrival> = [0, 1, 2, 6, 7, 7, 9]
            .iter()
            .map(|&s| arr(s, s * 1_000_000))
            .collect();
        let l = analyze(&a, 0..11);
        assert_eq!(l.sent, 11);
        assert_eq!(l.received, 6);
        assert_eq!(l.duplicates, 1);
        assert_eq!(l.lost, 5);
        assert_eq!(l.longest_hole, 3);
        assert_eq!(l.hole_start, 3);
        assert!((l.outage_ms - 4.0).abs() < 1e-9);
        assert!((l.max_gap_ms - 4.0).abs() < 1e-9);
        assert_eq!(
            l.holes,
            vec![(3, 3, 2_000_000), (8, 1, 7_000_000), (10, 1, 9_000_000)]
        );
    }

    #[test]
    fn snmp_parses_pairs() {
        let s = Snmp::parse("Ip: Forwarding InReceives\nIp: 1 42\nIcmp: InMsgs\nIcmp: 7\n");
        assert_eq!(s.get("Ip", "InReceives"), 42);
        assert_eq!(s.get("Icmp", "InMsgs"), 7);
    }

    #[test]
    fn ipip_parse() {
        let mut p = vec![0u8; 20 + 20 + 8 + PAYLOAD_LEN];
        p[0] = 0x45;
        p[20] = 0x45;
        p[29] = 17;
        p[42..44].copy_from_slice(&9000u16.to_be_bytes());
        p[48..52].copy_from_slice(&MAGIC);
        p[52..60].copy_from_slice(&7u64.to_be_bytes());
        p[60..68].copy_from_slice(&99u64.to_be_bytes());
        assert_eq!(parse_ipip(&p, 9000), Some((7, 99)));
        assert_eq!(parse_ipip(&p, 9001), None);
        assert_eq!(parse_ipip(&p[..50], 9000), None);
    }
}
