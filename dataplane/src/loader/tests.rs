//! Tests of the steering program and its loader. They need root (CI runs
//! them as root) and skip with a message otherwise.
//!
//! Every test that touches interfaces runs in its own thread, moved into a
//! fresh anonymous network namespace (`unshare(CLONE_NEWNET)` affects only
//! the calling thread). The veth pairs and loopback it uses live there; the
//! kernel removes the namespace and everything in it when the thread ends,
//! also when it panics, so nothing can leak into the root namespace. No
//! traffic is sent: the program runs on byte fixtures through BPF_PROG_RUN.

use super::*;

use std::os::fd::RawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        // Fails rather than skips: a skipped test would pass untested.
        assert!(
            is_root(),
            "needs root (BPF and network namespaces): run the tests as root, as CI does"
        );
    };
}

/// Run `f` on a new thread inside a fresh network namespace (with `lo` up).
fn in_fresh_netns<F: FnOnce() + Send + 'static>(f: F) {
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET
        // moves only this thread into a new network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
        ip(&["link", "set", "lo", "up"]);
        f();
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Run `ip` (in the calling thread's network namespace), assert success, return stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ifindex(name: &str) -> u32 {
    let cname = CString::new(name).unwrap();
    // SAFETY: `cname` is NUL-terminated and outlives the call.
    let idx = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert_ne!(idx, 0, "no interface {name}");
    idx
}

/// A veth pair `a`/`b` with `queues` RX and TX queues each; returns their ifindexes.
fn veth_pair(a: &str, b: &str, queues: u32) -> (u32, u32) {
    let q = queues.to_string();
    ip(&[
        "link",
        "add",
        a,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ]);
    (ifindex(a), ifindex(b))
}

/// What `ip link show dev <name>` prints.
fn link_show(name: &str) -> String {
    ip(&["link", "show", "dev", name])
}

/// The XDP program id `ip link` reports for `name`, if any.
fn xdp_prog_id(name: &str) -> Option<u32> {
    let idx = c_int::try_from(ifindex(name)).unwrap();
    match xdp_query(idx).unwrap() {
        0 => None,
        id => Some(id),
    }
}

// ---------------------------------------------------------------------------
// Frame fixtures.

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const BROADCAST: [u8; 6] = [0xff; 6];

const VM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VM2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const UNBOUND: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
const CARE_OF: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CARE_OF2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
const HA: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

fn eth(dst: [u8; 6], tags: &[u16], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&SRC_MAC);
    for &vid in tags {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 header with `options` (a multiple of 4 bytes) followed by `payload`.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let ihl = 5 + options.len() / 4;
    let total = (ihl * 4 + payload.len()) as u16;
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(options);
    let csum = checksum(&h);
    h[10..12].copy_from_slice(&csum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn udp_payload() -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&40000u16.to_be_bytes());
    u.extend_from_slice(&9u16.to_be_bytes());
    u.extend_from_slice(&12u16.to_be_bytes());
    u.extend_from_slice(&0u16.to_be_bytes());
    u.extend_from_slice(b"ping");
    u
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, tags: &[u16]) -> Vec<u8> {
    let mut f = eth(DST_MAC, tags, 0x0800);
    f.extend(ipv4(src, dst, 17, &[], &udp_payload()));
    f
}

fn ipip(
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    inner_src: Ipv4Addr,
    inner_dst: Ipv4Addr,
) -> Vec<u8> {
    let inner = ipv4(inner_src, inner_dst, 17, &[], &udp_payload());
    let mut f = eth(DST_MAC, &[], 0x0800);
    f.extend(ipv4(outer_src, outer_dst, 4, &[], &inner));
    f
}

fn arp_with(htype: u16, oper: u16, spa: Ipv4Addr, tpa: Ipv4Addr, tags: &[u16]) -> Vec<u8> {
    let mut f = eth(BROADCAST, tags, 0x0806);
    f.extend_from_slice(&htype.to_be_bytes());
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&oper.to_be_bytes());
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f.extend_from_slice(&[0; 18]); // Ethernet padding to 60 bytes
    f
}

fn arp(oper: u16, spa: Ipv4Addr, tpa: Ipv4Addr, tags: &[u16]) -> Vec<u8> {
    arp_with(1, oper, spa, tpa, tags)
}

fn ipv6() -> Vec<u8> {
    let mut f = eth(DST_MAC, &[], 0x86dd);
    let mut h = vec![0x60, 0, 0, 0, 0, 12, 17, 64];
    h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    h.extend_from_slice(&[0; 12]);
    h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    h.extend_from_slice(&[0; 11]);
    h.push(1);
    f.extend(h);
    f.extend(udp_payload());
    f
}

fn truncated(mut f: Vec<u8>, len: usize) -> Vec<u8> {
    f.truncate(len);
    f
}

// ---------------------------------------------------------------------------
// A real AF_XDP socket (copy mode), enough to sit in the XSKMAP.

struct TestXsk {
    fd: RawFd,
    umem: *mut c_void,
    len: usize,
}

impl TestXsk {
    fn bind(ifindex: u32, queue: u32) -> io::Result<TestXsk> {
        const FRAME: usize = 2048;
        const FRAMES: usize = 64;
        let len = FRAME * FRAMES;
        // SAFETY: plain syscall, no memory arguments.
        let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: anonymous private mapping, no file, no fixed address.
        let umem = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if umem == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: `fd` is ours and closed once.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let xsk = TestXsk { fd, umem, len };

        let reg = libc::xdp_umem_reg {
            addr: umem as u64,
            len: len as u64,
            chunk_size: FRAME as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        xsk.setsockopt(libc::XDP_UMEM_REG, &reg)?;
        let entries: c_int = 64;
        xsk.setsockopt(libc::XDP_UMEM_FILL_RING, &entries)?;
        xsk.setsockopt(libc::XDP_UMEM_COMPLETION_RING, &entries)?;
        xsk.setsockopt(libc::XDP_RX_RING, &entries)?;

        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a valid sockaddr_xdp of the given length.
        let rc = unsafe {
            libc::bind(
                xsk.fd,
                ptr::from_ref(&sa).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(xsk)
    }

    fn setsockopt<T>(&self, opt: c_int, value: &T) -> io::Result<()> {
        // SAFETY: `value` is a live T of the given length; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_XDP,
                opt,
                ptr::from_ref(value).cast::<c_void>(),
                size_of::<T>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for TestXsk {
    fn drop(&mut self) {
        // SAFETY: `fd` and the mapping are ours and released once; the socket
        // is closed before its UMEM is unmapped.
        unsafe {
            libc::close(self.fd);
            libc::munmap(self.umem, self.len);
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Classification, table driven.

#[derive(Clone, Copy, Debug)]
enum Ingress {
    Lan,
    Wan,
    /// Loopback: neither LAN nor WAN.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    SteeredIpv4,
    SteeredArp,
    SteeredIpip,
    Passed,
    MalformedL2,
    MalformedL3,
    UnknownIngress,
    DroppedIpip,
}

fn outcome_count(c: &SteerCounters, o: Outcome) -> u64 {
    match o {
        Outcome::SteeredIpv4 => c.steered_ipv4,
        Outcome::SteeredArp => c.steered_arp,
        Outcome::SteeredIpip => c.steered_ipip,
        Outcome::Passed => c.passed,
        Outcome::MalformedL2 => c.malformed_l2,
        Outcome::MalformedL3 => c.malformed_l3,
        Outcome::UnknownIngress => c.unknown_ingress,
        Outcome::DroppedIpip => c.dropped_ipip,
    }
}

const ALL_OUTCOMES: [Outcome; 8] = [
    Outcome::SteeredIpv4,
    Outcome::SteeredArp,
    Outcome::SteeredIpip,
    Outcome::Passed,
    Outcome::MalformedL2,
    Outcome::MalformedL3,
    Outcome::UnknownIngress,
    Outcome::DroppedIpip,
];

struct Case {
    desc: &'static str,
    frame: Vec<u8>,
    ingress: Ingress,
    queue: u32,
    action: u32,
    outcome: Outcome,
    no_socket: bool,
}

fn case(
    desc: &'static str,
    frame: Vec<u8>,
    ingress: Ingress,
    queue: u32,
    action: u32,
    outcome: Outcome,
    no_socket: bool,
) -> Case {
    Case {
        desc,
        frame,
        ingress,
        queue,
        action,
        outcome,
        no_socket,
    }
}

/// The fixtures; an AF_XDP socket sits at LAN queue 0 only.
#[rustfmt::skip] // one fixture per line reads as a table
fn cases() -> Vec<Case> {
    use action::{PASS, REDIRECT};
    use Ingress::{Lan, Other, Wan};
    use Outcome::*;
    let bound_udp = udp(PEER, VM, &[]);
    let mut with_options = eth(DST_MAC, &[], 0x0800);
    with_options.extend(ipv4(PEER, VM, 17, &[1, 1, 1, 0], &udp_payload())); // NOP NOP NOP EOL
    let mut fragment = udp(PEER, VM, &[]);
    fragment[14 + 6] = 0x20; // MF, offset 0
    let mut ihl4 = udp(PEER, VM, &[]);
    ihl4[14] = 0x44;
    let mut ihl15 = eth(DST_MAC, &[], 0x0800);
    ihl15.extend(truncated(ipv4(PEER, VM, 17, &[], &udp_payload()), 40));
    ihl15[14] = 0x4f; // 60-byte header in a 40-byte packet
    let mut version6 = udp(PEER, VM, &[]);
    version6[14] = 0x65;
    vec![
        // (a) IPv4 to a bound VM, any ingress.
        case("UDP to bound VM, LAN q0 (socket)", bound_udp.clone(), Lan, 0, REDIRECT, SteeredIpv4, false),
        case("UDP to bound VM, LAN q1 (no socket)", bound_udp.clone(), Lan, 1, PASS, SteeredIpv4, true),
        case("UDP to bound VM, WAN q0 (no socket)", bound_udp.clone(), Wan, 0, PASS, SteeredIpv4, true),
        case("UDP to second bound VM, LAN q0", udp(PEER, VM2, &[]), Lan, 0, REDIRECT, SteeredIpv4, false),
        case("IPv4 with options to bound VM", with_options, Lan, 0, REDIRECT, SteeredIpv4, false),
        case("IPv4 fragment to bound VM", fragment, Lan, 0, REDIRECT, SteeredIpv4, false),
        case("802.1Q-tagged UDP to bound VM", udp(PEER, VM, &[100]), Lan, 0, REDIRECT, SteeredIpv4, false),
        case("UDP to unbound address", udp(PEER, UNBOUND, &[]), Lan, 0, PASS, Passed, false),
        case("UDP to unbound address, WAN", udp(PEER, UNBOUND, &[]), Wan, 0, PASS, Passed, false),
        case("UDP from bound VM (source only)", udp(VM, PEER, &[]), Lan, 0, PASS, Passed, false),
        case("QinQ (two 802.1Q tags) UDP to bound VM", udp(PEER, VM, &[100, 200]), Lan, 0, PASS, Passed, false),
        case("UDP to bound VM on loopback (unknown ingress)", bound_udp, Other, 0, PASS, UnknownIngress, false),
        // (b) ARP requests for a bound VM, LAN only.
        case("ARP request for bound VM, LAN", arp(1, PEER, VM, &[]), Lan, 0, REDIRECT, SteeredArp, false),
        case("ARP request for bound VM, LAN q1 (no socket)", arp(1, PEER, VM, &[]), Lan, 1, PASS, SteeredArp, true),
        case("802.1Q-tagged ARP request for bound VM", arp(1, PEER, VM, &[7]), Lan, 0, REDIRECT, SteeredArp, false),
        case("ARP request for bound VM, WAN", arp(1, PEER, VM, &[]), Wan, 0, PASS, Passed, false),
        case("ARP request for unbound address", arp(1, PEER, UNBOUND, &[]), Lan, 0, PASS, Passed, false),
        case("ARP reply about bound VM", arp(2, PEER, VM, &[]), Lan, 0, PASS, Passed, false),
        case("ARP request, non-Ethernet hardware type", arp_with(6, 1, PEER, VM, &[]), Lan, 0, PASS, Passed, false),
        // (c) IPIP from a bound care-of address, any ingress.
        case("IPIP from bound care-of, LAN q0", ipip(CARE_OF, HA, VM, PEER), Lan, 0, REDIRECT, SteeredIpip, false),
        case("IPIP from bound care-of, WAN (no socket)", ipip(CARE_OF, HA, VM, PEER), Wan, 0, PASS, SteeredIpip, true),
        case("IPIP from another source", ipip(PEER, HA, VM, PEER), Lan, 0, PASS, Passed, false),
        case("UDP (not IPIP) from bound care-of", udp(CARE_OF, HA, &[]), Lan, 0, PASS, Passed, false),
        // Everything else.
        case("IPv6", ipv6(), Lan, 0, PASS, Passed, false),
        case("Ethernet header only, ethertype IPv4", truncated(udp(PEER, VM, &[]), 14), Lan, 0, PASS, MalformedL3, false),
        case("802.1Q tag cut short", truncated(udp(PEER, VM, &[100]), 16), Lan, 0, PASS, MalformedL2, false),
        case("IPv4 header cut at 19 bytes", truncated(udp(PEER, VM, &[]), 33), Lan, 0, PASS, MalformedL3, false),
        case("IPv4 IHL beyond the frame", ihl15, Lan, 0, PASS, MalformedL3, false),
        case("IPv4 IHL 4", ihl4, Lan, 0, PASS, MalformedL3, false),
        case("version 6 under ethertype IPv4", version6, Lan, 0, PASS, MalformedL3, false),
        case("ARP body cut at 27 bytes", truncated(arp(1, PEER, VM, &[]), 41), Lan, 0, PASS, MalformedL3, false),
    ]
}

/// Runs each fixture through BPF_PROG_RUN and checks its action and that
/// exactly its outcome counter moved; returns the failures.
fn run_cases(s: &mut Steering, cases: &[Case], lan: u32, wan: u32) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases {
        let ingress = match c.ingress {
            Ingress::Lan => lan,
            Ingress::Wan => wan,
            Ingress::Other => 1,
        };
        let before = s.counters().unwrap();
        let got = s.test_run(&c.frame, ingress, c.queue);
        let after = s.counters().unwrap();
        let got = match got {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{}: {e}", c.desc));
                continue;
            }
        };
        if got != c.action {
            failures.push(format!("{}: action {got}, expected {}", c.desc, c.action));
        }
        for o in ALL_OUTCOMES {
            let delta = outcome_count(&after, o) - outcome_count(&before, o);
            let want = u64::from(o == c.outcome);
            if delta != want {
                failures.push(format!("{}: {o:?} +{delta}, expected +{want}", c.desc));
            }
        }
        let no_socket = after.no_socket - before.no_socket;
        if no_socket != u64::from(c.no_socket) {
            failures.push(format!("{}: no_socket +{no_socket}", c.desc));
        }
    }
    failures
}

#[test]
fn classification_fixtures() {
    require_root!();
    in_fresh_netns(|| {
        let (lan, wan) = veth_pair("hwl0", "hww0", 2);
        let mut s = Steering::load(lan, Some(wan), 64).expect("load");
        s.bind(VM, CARE_OF).unwrap();
        s.bind(VM2, CARE_OF2).unwrap();
        s.add_care_of(CARE_OF).unwrap();
        s.add_care_of(CARE_OF2).unwrap();
        let xsk = TestXsk::bind(lan, 0).expect("AF_XDP socket on hwl0 queue 0");
        s.register_socket(PORT_LAN, 0, xsk.fd)
            .expect("register socket");

        let cases = cases();
        let failures = run_cases(&mut s, &cases, lan, wan);
        assert!(
            failures.is_empty(),
            "fixture failures:\n{}",
            failures.join("\n")
        );

        let c = s.counters().unwrap();
        assert_eq!(c.total(), cases.len() as u64, "{c:?}");

        // Frames shorter than an Ethernet header never reach XDP from a
        // driver; BPF_PROG_RUN refuses them too.
        assert!(s.test_run(&[0u8; 13], lan, 0).is_err());

        // Once unregistered, the LAN q0 socket is gone: PASS and no_socket.
        s.unregister_socket(PORT_LAN, 0).unwrap();
        let before = s.counters().unwrap();
        assert_eq!(
            s.test_run(&udp(PEER, VM, &[]), lan, 0).unwrap(),
            action::PASS
        );
        let after = s.counters().unwrap();
        assert_eq!(after.no_socket - before.no_socket, 1);
        assert_eq!(after.steered_ipv4 - before.steered_ipv4, 1);

        // After unbind, the VM's traffic and its care-of's IPIP are passed.
        s.unbind(VM).unwrap();
        s.remove_care_of(CARE_OF).unwrap();
        let before = s.counters().unwrap();
        assert_eq!(
            s.test_run(&udp(PEER, VM, &[]), lan, 0).unwrap(),
            action::PASS
        );
        assert_eq!(
            s.test_run(&ipip(CARE_OF, HA, VM, PEER), wan, 0).unwrap(),
            action::PASS
        );
        let after = s.counters().unwrap();
        assert_eq!(after.passed - before.passed, 2);
        drop(xsk);
    });
}

/// The foreign-agent role: port 0 is the VM link, port 1 the uplink; `VM`
/// is served with home agent `HA`, this host's care-of address is `CARE_OF`.
#[rustfmt::skip] // one fixture per line reads as a table
fn foreign_agent_cases() -> Vec<Case> {
    use action::{DROP, PASS, REDIRECT};
    use Ingress::{Lan, Wan};
    use Outcome::*;
    vec![
        case("IPv4 from the served VM, VM link", udp(VM, PEER, &[]), Lan, 0, REDIRECT, SteeredIpv4, false),
        case("IPv4 from the served VM, tagged", udp(VM, PEER, &[100]), Lan, 0, REDIRECT, SteeredIpv4, false),
        case("IPv4 to the served VM, VM link", udp(PEER, VM, &[]), Lan, 0, PASS, Passed, false),
        case("IPv4 from the served VM, uplink", udp(VM, PEER, &[]), Wan, 0, PASS, Passed, false),
        case("IPv4 from another VM", udp(UNBOUND, PEER, &[]), Lan, 0, PASS, Passed, false),
        case("ARP request from the served VM", arp(1, VM, PEER, &[]), Lan, 0, REDIRECT, SteeredArp, false),
        case("ARP request for the served VM", arp(1, PEER, VM, &[]), Lan, 0, PASS, Passed, false),
        case("ARP request from the served VM, uplink", arp(1, VM, PEER, &[]), Wan, 0, PASS, Passed, false),
        case("IPIP from the home agent", ipip(HA, CARE_OF, PEER, VM), Wan, 0, PASS, SteeredIpip, true),
        case("IPIP from anyone else (CVE-2020-10136)", ipip(PEER, CARE_OF, PEER, VM), Wan, 0, DROP, DroppedIpip, false),
        case("IPIP from the home agent to another address", ipip(HA, PEER, PEER, VM), Wan, 0, PASS, Passed, false),
        case("UDP from the home agent", udp(HA, CARE_OF, &[]), Wan, 0, PASS, Passed, false),
    ]
}

#[test]
fn foreign_agent_fixtures() {
    require_root!();
    in_fresh_netns(|| {
        let (vm_link, uplink) = veth_pair("hwv0", "hwu0", 1);
        let mut s = Steering::load(vm_link, Some(uplink), 16).expect("load");
        s.set_foreign_agent(CARE_OF).expect("foreign agent role");
        s.bind(VM, HA).unwrap();
        s.add_care_of(HA).unwrap();
        let xsk = TestXsk::bind(vm_link, 0).expect("AF_XDP socket on hwv0 queue 0");
        s.register_socket(PORT_LAN, 0, xsk.fd)
            .expect("register socket");
        let cases = foreign_agent_cases();
        let failures = run_cases(&mut s, &cases, vm_link, uplink);
        assert!(
            failures.is_empty(),
            "fixture failures:\n{}",
            failures.join("\n")
        );
        assert_eq!(s.counters().unwrap().total(), cases.len() as u64);
        drop(xsk);
    });
}

/// A home agent on standby (VRRP backup) forwards what reaches it but
/// leaves ARP for its bound VMs to the kernel, which does not answer.
#[rustfmt::skip] // one fixture per line reads as a table
fn standby_cases() -> Vec<Case> {
    use action::{PASS, REDIRECT};
    use Ingress::{Lan, Wan};
    use Outcome::*;
    vec![
        case("ARP request for bound VM, LAN, standby", arp(1, PEER, VM, &[]), Lan, 0, PASS, Passed, false),
        case("tagged ARP request for bound VM, standby", arp(1, PEER, VM, &[7]), Lan, 0, PASS, Passed, false),
        case("IPv4 to bound VM, standby", udp(PEER, VM, &[]), Lan, 0, REDIRECT, SteeredIpv4, false),
        case("IPIP from care-of, standby", ipip(CARE_OF, HA, VM, PEER), Wan, 0, PASS, SteeredIpip, true),
    ]
}

#[test]
fn a_standby_home_agent_answers_no_arp_and_still_forwards() {
    require_root!();
    in_fresh_netns(|| {
        let (lan, wan) = veth_pair("hwl0", "hww0", 1);
        let mut s = Steering::load(lan, Some(wan), 16).expect("load");
        s.bind(VM, CARE_OF).unwrap();
        s.add_care_of(CARE_OF).unwrap();
        let xsk = TestXsk::bind(lan, 0).expect("AF_XDP socket on hwl0 queue 0");
        s.register_socket(PORT_LAN, 0, xsk.fd).unwrap();
        s.set_home_agent_standby(true).unwrap();
        assert!(s.standby());
        let cases = standby_cases();
        let failures = run_cases(&mut s, &cases, lan, wan);
        assert!(
            failures.is_empty(),
            "fixture failures:\n{}",
            failures.join("\n")
        );
        // Active again: the request is answered (steered) at once.
        s.set_home_agent_standby(false).unwrap();
        assert!(!s.standby());
        assert_eq!(
            s.test_run(&arp(1, PEER, VM, &[]), lan, 0).unwrap(),
            action::REDIRECT
        );
        drop(xsk);
    });
}

#[test]
fn one_armed_mode_uses_port_zero() {
    require_root!();
    in_fresh_netns(|| {
        let (lan, _peer) = veth_pair("hwl0", "hwp0", 1);
        let mut s = Steering::load(lan, None, 16).expect("load");
        assert!(s.one_armed());
        s.bind(VM, CARE_OF).unwrap();
        s.add_care_of(CARE_OF).unwrap();
        let xsk = TestXsk::bind(lan, 0).expect("AF_XDP socket");
        s.register_socket(PORT_LAN, 0, xsk.fd).unwrap();
        assert!(matches!(
            s.register_socket(PORT_WAN, 0, xsk.fd),
            Err(LoaderError::SocketSlot { .. })
        ));
        // ARP and IPIP arrive on the one interface, both steered to port 0.
        assert_eq!(
            s.test_run(&arp(1, PEER, VM, &[]), lan, 0).unwrap(),
            action::REDIRECT
        );
        assert_eq!(
            s.test_run(&ipip(CARE_OF, HA, VM, PEER), lan, 0).unwrap(),
            action::REDIRECT
        );
        let c = s.counters().unwrap();
        assert_eq!((c.steered_arp, c.steered_ipip, c.no_socket), (1, 1, 0));
    });
}

#[test]
fn socket_slots_are_checked() {
    require_root!();
    let s = Steering::load(1, Some(2), 16).expect("load");
    for (port, queue) in [(2, 0), (PORT_LAN, MAX_QUEUES), (PORT_WAN, 1000)] {
        assert!(
            matches!(
                s.register_socket(port, queue, 0),
                Err(LoaderError::SocketSlot { .. })
            ),
            "port {port} queue {queue}"
        );
    }
    // Not an AF_XDP socket: the kernel refuses it, the error names the map.
    let err = s.register_socket(PORT_WAN, 3, 0).unwrap_err();
    assert!(
        matches!(err, LoaderError::Map { map: MAP_XSKS, .. }),
        "{err}"
    );
    // Nothing registered there: unregistering is a no-op.
    s.unregister_socket(PORT_WAN, 3).unwrap();
}

// ---------------------------------------------------------------------------
// 2. Attach and detach.

#[test]
fn attach_native_on_veth_and_detach_on_drop() {
    require_root!();
    in_fresh_netns(|| {
        let (lan, wan) = veth_pair("hwl0", "hww0", 1);
        let s = Steering::attach(lan, Some(wan), 1024, None).expect("attach");
        assert_eq!(s.mode(), AttachMode::Native);
        assert_eq!(s.mode().to_string(), "native");
        assert_eq!(s.attachments().len(), 2);
        assert!(s.attachments().iter().all(|a| a.mode == AttachMode::Native));
        assert_eq!(s.attachments()[0].ifname, "hwl0");
        let id = s.prog_id().unwrap();
        for dev in ["hwl0", "hww0"] {
            let shown = link_show(dev);
            assert!(shown.contains(" xdp "), "{dev}: {shown}");
            assert!(
                shown.contains(&format!("prog/xdp id {id}")),
                "{dev}: {shown}"
            );
        }

        // A second loader is refused, clearly, on an interface that has XDP.
        let err = Steering::attach(lan, None, 16, None).unwrap_err();
        match &err {
            LoaderError::AlreadyAttached {
                ifname, prog_id, ..
            } => {
                assert_eq!(ifname, "hwl0");
                assert_eq!(*prog_id, id);
            }
            other => panic!("expected AlreadyAttached, got {other}"),
        }
        assert!(err.to_string().contains("hwl0"), "{err}");
        // ... and did not disturb ours.
        assert_eq!(xdp_prog_id("hwl0"), Some(id));

        drop(s);
        for dev in ["hwl0", "hww0"] {
            let shown = link_show(dev);
            assert!(!shown.contains("xdp"), "{dev} after drop: {shown}");
        }
    });
}

#[test]
fn one_armed_attaches_once() {
    require_root!();
    in_fresh_netns(|| {
        let (lan, _) = veth_pair("hwl0", "hwp0", 1);
        let s = Steering::attach(lan, Some(lan), 16, None).expect("attach");
        assert_eq!(s.attachments().len(), 1);
        assert!(s.one_armed());
        assert!(xdp_prog_id("hwl0").is_some());
        assert!(xdp_prog_id("hwp0").is_none());
        drop(s);
        assert!(xdp_prog_id("hwl0").is_none());
    });
}

#[test]
fn attach_generic_where_no_native_xdp() {
    require_root!();
    in_fresh_netns(|| {
        // Loopback has no native XDP; this is the namespace's own `lo`.
        let s = Steering::attach(1, None, 16, None).expect("attach to lo");
        assert_eq!(s.mode(), AttachMode::Generic);
        assert_eq!(s.mode().to_string(), "generic (skb)");
        let shown = link_show("lo");
        assert!(shown.contains("xdpgeneric"), "{shown}");
        drop(s);
        assert!(!link_show("lo").contains("xdp"));
    });
}

#[test]
fn drop_leaves_a_program_that_replaced_ours() {
    require_root!();
    in_fresh_netns(|| {
        let (lan, _) = veth_pair("hwl0", "hwp0", 1);
        let first = Steering::attach(lan, None, 16, None).expect("attach first");
        // Someone removes ours and attaches theirs.
        ip(&["link", "set", "dev", "hwl0", "xdp", "off"]);
        let second = Steering::attach(lan, None, 16, None).expect("attach second");
        let second_id = second.prog_id().unwrap();
        drop(first);
        assert_eq!(xdp_prog_id("hwl0"), Some(second_id));
        drop(second);
        assert_eq!(xdp_prog_id("hwl0"), None);
    });
}

#[test]
fn failed_wan_attach_detaches_lan() {
    require_root!();
    in_fresh_netns(|| {
        let (lan, wan) = veth_pair("hwl0", "hww0", 1);
        let other = Steering::attach(wan, None, 16, None).expect("attach on WAN");
        let err = Steering::attach(lan, Some(wan), 16, None).unwrap_err();
        assert!(
            matches!(&err, LoaderError::AlreadyAttached { ifname, .. } if ifname == "hww0"),
            "{err}"
        );
        assert_eq!(xdp_prog_id("hwl0"), None);
        assert_eq!(xdp_prog_id("hww0"), Some(other.prog_id().unwrap()));
    });
}

#[test]
fn attach_to_missing_interface_fails_clearly() {
    require_root!();
    in_fresh_netns(|| {
        let err = Steering::attach(999_999, None, 16, None).unwrap_err();
        assert!(
            matches!(err, LoaderError::NoSuchInterface { ifindex: 999_999 }),
            "{err}"
        );
    });
}

#[test]
fn invalid_max_bindings_is_refused() {
    require_root!();
    assert!(matches!(
        Steering::load(1, None, 0),
        Err(LoaderError::InvalidMaxBindings(0))
    ));
    assert!(matches!(
        Steering::load(1, None, MAX_MAX_BINDINGS + 1),
        Err(LoaderError::InvalidMaxBindings(_))
    ));
}

// ---------------------------------------------------------------------------
// 3. bind / unbind / rebind keep the maps right.

#[test]
fn bind_unbind_and_care_ofs_write_the_maps_as_told() {
    require_root!();
    let mut s = Steering::load(1, None, 16).expect("load");
    let vm3 = Ipv4Addr::new(192, 0, 2, 12);

    s.bind(VM, CARE_OF).unwrap();
    s.bind(VM2, CARE_OF).unwrap();
    s.bind(vm3, CARE_OF2).unwrap();
    s.add_care_of(CARE_OF).unwrap();
    s.add_care_of(CARE_OF2).unwrap();
    assert_eq!(
        s.bound().unwrap(),
        vec![(VM, CARE_OF), (VM2, CARE_OF), (vm3, CARE_OF2)]
    );
    assert_eq!(s.care_ofs().unwrap(), vec![(CARE_OF, 1), (CARE_OF2, 1)]);

    // A rebind rewrites the entry; adding a care-of twice is one entry (the
    // forwarder counts references, not the map).
    s.bind(VM2, CARE_OF2).unwrap();
    s.add_care_of(CARE_OF2).unwrap();
    assert_eq!(
        s.bound().unwrap(),
        vec![(VM, CARE_OF), (VM2, CARE_OF2), (vm3, CARE_OF2)]
    );
    assert_eq!(s.care_ofs().unwrap(), vec![(CARE_OF, 1), (CARE_OF2, 1)]);

    s.unbind(VM2).unwrap();
    s.remove_care_of(CARE_OF).unwrap();
    assert_eq!(s.bound().unwrap(), vec![(VM, CARE_OF), (vm3, CARE_OF2)]);
    assert_eq!(s.care_ofs().unwrap(), vec![(CARE_OF2, 1)]);

    // Removing what is not there is a no-op.
    s.unbind(VM2).unwrap();
    s.unbind(UNBOUND).unwrap();
    s.remove_care_of(CARE_OF).unwrap();

    s.unbind(VM).unwrap();
    s.unbind(vm3).unwrap();
    s.remove_care_of(CARE_OF2).unwrap();
    assert!(s.bound().unwrap().is_empty());
    assert!(s.care_ofs().unwrap().is_empty());
}

/// Reading the maps back takes them in batches: more entries than one
/// batch, a full map, and every entry exactly once.
#[test]
fn a_map_larger_than_a_batch_reads_back_whole() {
    require_root!();
    const N: u32 = 10_000;
    let mut s = Steering::load(1, None, N).expect("load");
    let base = u32::from(Ipv4Addr::new(10, 16, 0, 0));
    let mut want = Vec::new();
    for i in 0..N {
        let vm = Ipv4Addr::from(base + i);
        let care_of = if i % 2 == 0 { CARE_OF } else { CARE_OF2 };
        s.bind(vm, care_of).unwrap();
        want.push((vm, care_of));
    }
    assert_eq!(s.bound().unwrap(), want);
    for &(vm, _) in want.iter().step_by(3) {
        s.unbind(vm).unwrap();
    }
    let left: Vec<_> = want
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, b)| *b)
        .collect();
    assert_eq!(s.bound().unwrap(), left);
}

#[test]
fn full_map_is_a_clear_error() {
    require_root!();
    let mut s = Steering::load(1, None, 2).expect("load");
    assert_eq!(s.max_bindings(), 2);
    s.bind(VM, CARE_OF).unwrap();
    s.bind(VM2, CARE_OF).unwrap();
    let err = s.bind(UNBOUND, CARE_OF).unwrap_err();
    assert!(
        matches!(
            err,
            LoaderError::MapFull {
                map: MAP_BOUND_VMS,
                max_entries: 2
            }
        ),
        "{err}"
    );
    assert_eq!(s.bound().unwrap(), vec![(VM, CARE_OF), (VM2, CARE_OF)]);
    // A rebind within capacity still works.
    s.bind(VM2, CARE_OF2).unwrap();
    assert_eq!(s.bound().unwrap(), vec![(VM, CARE_OF), (VM2, CARE_OF2)]);
}

#[test]
fn counters_start_at_zero_and_layouts_match() {
    require_root!();
    let s = Steering::load(1, None, 16).expect("load");
    assert_eq!(s.counters().unwrap(), SteerCounters::default());
    assert_eq!(
        s.config(),
        SteerConfig {
            lan_ifindex: 1,
            wan_ifindex: 1,
            role: ROLE_HOME_AGENT,
            local_addr: 0,
        }
    );
    assert!(s.prog_fd() >= 0);
    assert!(format!("{s:?}").contains("Steering"));
}

// ---------------------------------------------------------------------------
// Pinning, in a private mount namespace (so bpffs is mounted there only).

const PIN_CHILD_ENV: &str = "HOMEWARD_TEST_PRIVATE_MOUNT_NS";

#[test]
fn pin_maps_in_private_mount_namespace() {
    require_root!();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(&exe)
        .args([
            "--exact",
            "loader::tests::pin_maps_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PIN_CHILD_ENV, "1")
        .output()
        .expect("running unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run by `pin_maps_in_private_mount_namespace` only.
#[test]
#[ignore = "run inside a private mount namespace by pin_maps_in_private_mount_namespace"]
fn pin_maps_child() {
    if std::env::var_os(PIN_CHILD_ENV).is_none() {
        eprintln!("skipped: only runs in the private mount namespace its parent test makes");
        return;
    }
    let dir = Path::new("/sys/fs/bpf/homeward-test");
    let mut s = Steering::load(1, None, 16).expect("load");
    s.bind(VM, CARE_OF).unwrap();
    s.add_care_of(CARE_OF).unwrap();
    s.pin_maps(dir).expect("pin");
    assert!(is_bpffs(Path::new("/sys/fs/bpf")).unwrap());
    for name in MAP_NAMES {
        assert!(dir.join(name).exists(), "{name} not pinned");
    }
    // Pinning twice is refused rather than silently replacing pins.
    assert!(matches!(s.pin_maps(dir), Err(LoaderError::Pin { .. })));
    s.unpin_maps(dir).unwrap();
    for name in MAP_NAMES {
        assert!(!dir.join(name).exists(), "{name} still pinned");
    }
    // bpffs may be the root namespace's one (if it was mounted before).
    std::fs::remove_dir(dir).unwrap();
    // Not bpffs: refused.
    let tmp = std::env::temp_dir().join(format!("homeward-pin-{}", std::process::id()));
    let err = s.pin_maps(&tmp).unwrap_err();
    let _ = std::fs::remove_dir(&tmp);
    assert!(matches!(err, LoaderError::NotBpffs { .. }), "{err}");
}

// ---------------------------------------------------------------------------
// 4. Restart after a crash: the pin directory.
//
// bpffs pins are global (per mount namespace, not per network namespace), so
// each test uses its own pin directory, removed by a guard even when the test
// fails. These tests need root and fail without it.

fn must_be_root() {
    assert!(
        is_root(),
        "this test needs root (BPF, network namespaces, bpffs); CI runs it as root"
    );
}

/// A unique pin directory below /sys/fs/bpf, removed with everything in it on drop.
struct TestPinDir(PathBuf);

impl TestPinDir {
    fn new() -> TestPinDir {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TestPinDir(PathBuf::from(format!(
            "/sys/fs/bpf/homeward-test-{}-{n}",
            std::process::id()
        )))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// The names in the directory, sorted (`maps/` entries as `maps/<name>`).
    fn entries(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.0) else {
            return out;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                for sub in std::fs::read_dir(e.path()).unwrap().flatten() {
                    out.push(format!("{name}/{}", sub.file_name().to_string_lossy()));
                }
            } else {
                out.push(name);
            }
        }
        out.sort();
        out
    }

    fn prog_pins(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .entries()
            .iter()
            .filter_map(|n| pin::pinned_id(n))
            .collect();
        ids.sort();
        ids
    }
}

impl Drop for TestPinDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("removing {}: {e}", self.0.display());
            }
        }
    }
}

fn map_pins() -> Vec<String> {
    let mut names: Vec<String> = MAP_NAMES
        .iter()
        .map(|n| format!("{}/{n}", pin::MAPS_DIR))
        .collect();
    names.sort();
    names
}

/// Whether a program of this kernel id still exists (polls up to 2 s for it
/// to go: the last reference of a pinned program goes after an RCU grace
/// period).
fn prog_exists(id: u32) -> bool {
    for _ in 0..200 {
        // SAFETY: plain syscall wrapper.
        let fd = unsafe { sys::bpf_prog_get_fd_by_id(id) };
        if fd < 0 {
            assert_eq!(fd, -libc::ENOENT, "bpf_prog_get_fd_by_id({id})");
            return false;
        }
        // SAFETY: the kernel just returned `fd`; nothing else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

const CRASH_CHILD_ENV: &str = "HOMEWARD_TEST_CRASH_CHILD";

/// Attach with `dir` in a child process (this test binary, running
/// `crash_child`) that then dies of SIGKILL, like a crashed homeward.
/// The child inherits the calling thread's network namespace. Returns the
/// id of the program it left attached.
fn attach_and_crash(dir: &Path, lan: u32, wan: Option<u32>) -> u32 {
    let exe = std::env::current_exe().unwrap();
    let spec = format!(
        "{}\n{lan}\n{}",
        dir.display(),
        wan.map_or(String::new(), |w| w.to_string())
    );
    let out = Command::new(exe)
        .args([
            "--exact",
            "loader::tests::crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, spec)
        .output()
        .expect("running the crash child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "crash child did not die of SIGKILL: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("crash-child prog id ").map(|(_, id)| id))
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("no prog id from the crash child:\n{stdout}"))
}

/// Run by `attach_and_crash` only: attach, bind, and die of SIGKILL.
#[test]
#[ignore = "run as a child process by the crash-recovery tests"]
fn crash_child() {
    let Ok(spec) = std::env::var(CRASH_CHILD_ENV) else {
        eprintln!("skipped: only runs as the child of a crash-recovery test");
        return;
    };
    let mut lines = spec.lines();
    let dir = PathBuf::from(lines.next().unwrap());
    let lan: u32 = lines.next().unwrap().parse().unwrap();
    let wan: Option<u32> = lines.next().and_then(|w| w.parse().ok());
    let mut s = Steering::attach(lan, wan, 16, Some(&dir)).expect("attach in the crash child");
    s.bind(VM, CARE_OF).unwrap();
    s.add_care_of(CARE_OF).unwrap();
    println!("crash-child prog id {}", s.prog_id().unwrap());
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("survived SIGKILL");
}

#[test]
fn restart_after_kill_replaces_the_stale_program() {
    must_be_root();
    in_fresh_netns(|| {
        let pins = TestPinDir::new();
        // LAN on a veth (native XDP), WAN on lo (generic only): both modes.
        let (lan, _) = veth_pair("hwl0", "hwp0", 1);
        let old = attach_and_crash(pins.path(), lan, Some(1));

        // The crash left the program attached and its pins in place.
        assert_eq!(xdp_prog_id("hwl0"), Some(old));
        assert_eq!(xdp_prog_id("lo"), Some(old));
        assert!(link_show("lo").contains("xdpgeneric"));
        let mut expected = map_pins();
        expected.push(format!("prog-{old}"));
        expected.sort();
        assert_eq!(pins.entries(), expected);

        // A plain restart with the same settings comes back.
        let s = Steering::attach(lan, Some(1), 16, Some(pins.path())).expect("restart");
        let new = s.prog_id().unwrap();
        assert_ne!(new, old);
        assert_eq!(s.pin_dir(), Some(pins.path()));
        assert_eq!(xdp_prog_id("hwl0"), Some(new));
        assert_eq!(xdp_prog_id("lo"), Some(new));
        // In the mode each was attached in.
        let modes: Vec<(AttachMode, Option<u32>)> = s
            .attachments()
            .iter()
            .map(|a| (a.mode, a.replaced))
            .collect();
        assert_eq!(
            modes,
            vec![
                (AttachMode::Native, Some(old)),
                (AttachMode::Generic, Some(old)),
            ]
        );
        assert!(link_show("lo").contains("xdpgeneric"));
        // Fresh maps: the caller restores the bindings.
        assert!(s.bound().unwrap().is_empty());

        // The stale pin is gone, ours is there, and the old program is unloaded.
        assert_eq!(pins.prog_pins(), vec![new]);
        assert!(pins.entries().iter().any(|e| e.starts_with("maps/")));
        assert!(!prog_exists(old), "the stale program {old} is still loaded");

        drop(s);
        assert_eq!(xdp_prog_id("hwl0"), None);
        assert_eq!(xdp_prog_id("lo"), None);
        assert!(!pins.path().exists(), "{:?}", pins.entries());
    });
}

#[test]
fn restart_after_kill_detaches_a_stale_program_from_an_interface_no_longer_used() {
    must_be_root();
    in_fresh_netns(|| {
        let pins = TestPinDir::new();
        let (lan, wan) = veth_pair("hwl0", "hww0", 1);
        let old = attach_and_crash(pins.path(), lan, Some(wan));
        assert_eq!(xdp_prog_id("hww0"), Some(old));

        // Restarted one-armed: hww0 is not ours to steer any more, but the
        // stale program there is ours and is not left behind, unpinned.
        let s = Steering::attach(lan, None, 16, Some(pins.path())).expect("restart");
        let new = s.prog_id().unwrap();
        assert_eq!(xdp_prog_id("hwl0"), Some(new));
        assert_eq!(xdp_prog_id("hww0"), None);
        assert_eq!(pins.prog_pins(), vec![new]);
        drop(s);
        assert!(!pins.path().exists(), "{:?}", pins.entries());
    });
}

#[test]
fn a_program_that_is_not_homewards_is_never_replaced() {
    must_be_root();
    in_fresh_netns(|| {
        let pins = TestPinDir::new();
        let (lan, wan) = veth_pair("hwl0", "hww0", 1);

        // Another program (a steering program attached without a pin
        // directory: nothing says it is this homeward's) on the LAN.
        let foreign = Steering::attach(lan, None, 16, None).expect("attach the foreign program");
        let foreign_id = foreign.prog_id().unwrap();
        let err = Steering::attach(lan, Some(wan), 16, Some(pins.path())).unwrap_err();
        match &err {
            LoaderError::AlreadyAttached {
                ifname,
                prog_id,
                prog_name,
                why,
                ip_mode,
                ..
            } => {
                assert_eq!(ifname, "hwl0");
                assert_eq!(*prog_id, foreign_id);
                assert_eq!(prog_name, PROGRAM_NAME);
                assert_eq!(*ip_mode, "xdpdrv");
                assert_eq!(
                    why,
                    &NotOurs::NotPinned {
                        pin: pins.path().join(format!("prog-{foreign_id}"))
                    }
                );
            }
            other => panic!("expected AlreadyAttached, got {other}"),
        }
        let msg = err.to_string();
        for part in [
            "hwl0",
            "not homeward's",
            "no matching pin",
            &pins.path().display().to_string(),
            "ip link set dev hwl0 xdpdrv off",
        ] {
            assert!(msg.contains(part), "{part:?} not in: {msg}");
        }
        assert_eq!(xdp_prog_id("hwl0"), Some(foreign_id));
        assert_eq!(xdp_prog_id("hww0"), None);
        // The failed start left nothing pinned.
        assert!(pins.entries().is_empty(), "{:?}", pins.entries());

        // A pin named after the foreign program's id but holding another
        // program does not make it ours: the pinned object's id is checked.
        let decoy = Steering::load(lan, None, 16).expect("load decoy");
        std::fs::create_dir_all(pins.path()).unwrap();
        let forged = pins.path().join(format!("prog-{foreign_id}"));
        let cforged = path_cstring(&forged).unwrap();
        // SAFETY: live program fd; NUL-terminated path that outlives the call.
        let ret = unsafe { sys::bpf_obj_pin(decoy.prog_fd(), cforged.as_ptr()) };
        assert_eq!(ret, 0, "pinning the decoy");
        let err = Steering::attach(lan, None, 16, Some(pins.path())).unwrap_err();
        assert!(
            matches!(&err, LoaderError::AlreadyAttached { prog_id, .. } if *prog_id == foreign_id),
            "{err}"
        );
        assert_eq!(xdp_prog_id("hwl0"), Some(foreign_id));
        // ... and the decoy pin, not this run's, is not removed by the failure.
        assert!(forged.exists());

        // Without a pin directory the message says why it cannot tell.
        let err = Steering::attach(lan, None, 16, None).unwrap_err();
        assert!(
            matches!(
                &err,
                LoaderError::AlreadyAttached {
                    why: NotOurs::NoPinDir,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("without a pin directory"), "{err}");

        drop(foreign);
        assert_eq!(xdp_prog_id("hwl0"), None);
    });
}

#[test]
fn a_running_instance_is_never_taken_over() {
    must_be_root();
    in_fresh_netns(|| {
        let pins = TestPinDir::new();
        let (lan, _) = veth_pair("hwl0", "hwp0", 1);
        let running = Steering::attach(lan, None, 16, Some(pins.path())).expect("attach");
        let id = running.prog_id().unwrap();
        // Same pin directory, the first still running: refused, not replaced.
        let err = Steering::attach(lan, None, 16, Some(pins.path())).unwrap_err();
        assert!(matches!(&err, LoaderError::PinDirBusy { .. }), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        assert_eq!(xdp_prog_id("hwl0"), Some(id));
        assert_eq!(pins.prog_pins(), vec![id]);
        drop(running);
        assert_eq!(xdp_prog_id("hwl0"), None);
    });
}

#[test]
fn clean_drop_detaches_and_removes_the_pins() {
    must_be_root();
    in_fresh_netns(|| {
        let pins = TestPinDir::new();
        let (vm_link, uplink) = veth_pair("hwv0", "hwu0", 1);
        let s = Steering::attach_foreign_agent(vm_link, uplink, CARE_OF, 16, Some(pins.path()))
            .expect("attach");
        let id = s.prog_id().unwrap();
        let mut expected = map_pins();
        expected.push(format!("prog-{id}"));
        expected.sort();
        assert_eq!(pins.entries(), expected);
        assert!(s.attachments().iter().all(|a| a.replaced.is_none()));
        assert_eq!(xdp_prog_id("hwv0"), Some(id));
        assert_eq!(xdp_prog_id("hwu0"), Some(id));
        assert!(format!("{s:?}").contains("homeward-test-"));

        drop(s);
        assert_eq!(xdp_prog_id("hwv0"), None);
        assert_eq!(xdp_prog_id("hwu0"), None);
        assert!(!pins.path().exists(), "{:?}", pins.entries());
        assert!(!prog_exists(id), "program {id} still loaded after drop");

        // And a start after a clean stop needs nothing either.
        let again = Steering::attach(vm_link, None, 16, Some(pins.path())).expect("attach again");
        assert!(again.attachments()[0].replaced.is_none());
    });
}

#[test]
fn pin_dir_not_on_bpffs_is_refused() {
    must_be_root();
    let tmp = std::env::temp_dir().join(format!("homeward-pindir-{}", std::process::id()));
    let err = Steering::attach(1, None, 16, Some(&tmp)).unwrap_err();
    let _ = std::fs::remove_dir(&tmp);
    assert!(matches!(err, LoaderError::NotBpffs { .. }), "{err}");
}
