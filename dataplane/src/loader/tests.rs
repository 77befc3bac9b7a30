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
use std::process::Command;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (BPF and network namespaces)");
            return;
        }
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

#[test]
fn one_armed_mode_uses_port_zero() {
    require_root!();
    in_fresh_netns(|| {
        let (lan, _peer) = veth_pair("hwl0", "hwp0", 1);
        let mut s = Steering::load(lan, None, 16).expect("load");
        assert!(s.one_armed());
        s.bind(VM, CARE_OF).unwrap();
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
        let s = Steering::attach(lan, Some(wan), 1024).expect("attach");
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
        let err = Steering::attach(lan, None, 16).unwrap_err();
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
        let s = Steering::attach(lan, Some(lan), 16).expect("attach");
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
        let s = Steering::attach(1, None, 16).expect("attach to lo");
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
        let first = Steering::attach(lan, None, 16).expect("attach first");
        // Someone removes ours and attaches theirs.
        ip(&["link", "set", "dev", "hwl0", "xdp", "off"]);
        let second = Steering::attach(lan, None, 16).expect("attach second");
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
        let other = Steering::attach(wan, None, 16).expect("attach on WAN");
        let err = Steering::attach(lan, Some(wan), 16).unwrap_err();
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
        let err = Steering::attach(999_999, None, 16).unwrap_err();
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
fn bind_unbind_rebind_keep_maps_and_refcounts() {
    require_root!();
    let mut s = Steering::load(1, None, 16).expect("load");
    let vm3 = Ipv4Addr::new(192, 0, 2, 12);

    s.bind(VM, CARE_OF).unwrap();
    s.bind(VM2, CARE_OF).unwrap();
    s.bind(vm3, CARE_OF2).unwrap();
    assert_eq!(
        s.bound().unwrap(),
        vec![(VM, CARE_OF), (VM2, CARE_OF), (vm3, CARE_OF2)]
    );
    assert_eq!(s.care_ofs().unwrap(), vec![(CARE_OF, 2), (CARE_OF2, 1)]);

    // Rebind to another care-of moves the count.
    s.bind(VM2, CARE_OF2).unwrap();
    assert_eq!(
        s.bound().unwrap(),
        vec![(VM, CARE_OF), (VM2, CARE_OF2), (vm3, CARE_OF2)]
    );
    assert_eq!(s.care_ofs().unwrap(), vec![(CARE_OF, 1), (CARE_OF2, 2)]);

    // Binding again to the same care-of changes nothing.
    s.bind(VM2, CARE_OF2).unwrap();
    assert_eq!(s.care_ofs().unwrap(), vec![(CARE_OF, 1), (CARE_OF2, 2)]);

    // The last binding of a care-of removes it.
    s.bind(VM, CARE_OF2).unwrap();
    assert_eq!(s.care_ofs().unwrap(), vec![(CARE_OF2, 3)]);

    s.unbind(VM2).unwrap();
    assert_eq!(s.bound().unwrap(), vec![(VM, CARE_OF2), (vm3, CARE_OF2)]);
    assert_eq!(s.care_ofs().unwrap(), vec![(CARE_OF2, 2)]);

    // Unbinding what is not bound is a no-op.
    s.unbind(VM2).unwrap();
    s.unbind(UNBOUND).unwrap();
    assert_eq!(s.care_ofs().unwrap(), vec![(CARE_OF2, 2)]);

    s.unbind(VM).unwrap();
    s.unbind(vm3).unwrap();
    assert!(s.bound().unwrap().is_empty());
    assert!(s.care_ofs().unwrap().is_empty());
}

#[test]
fn full_map_is_a_clear_error_and_rolls_back() {
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
    // The care-of count went back to what it was.
    assert_eq!(s.bound().unwrap(), vec![(VM, CARE_OF), (VM2, CARE_OF)]);
    assert_eq!(s.care_ofs().unwrap(), vec![(CARE_OF, 2)]);

    // A rebind within capacity still works.
    s.bind(VM2, CARE_OF2).unwrap();
    assert_eq!(s.care_ofs().unwrap(), vec![(CARE_OF, 1), (CARE_OF2, 1)]);
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
    // Not bpffs: refused.
    let tmp = std::env::temp_dir().join(format!("homeward-pin-{}", std::process::id()));
    let err = s.pin_maps(&tmp).unwrap_err();
    let _ = std::fs::remove_dir(&tmp);
    assert!(matches!(err, LoaderError::NotBpffs { .. }), "{err}");
}
