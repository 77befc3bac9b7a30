//! The pipeline harness: one fuzz input is two bytes of settings and a frame.
//!
//! ```text
//! byte 0  bit 0     ingress: 0 LAN, 1 WAN
//!         bits 1-3  tunnel MTU: 1500 576 88 68 1280 9000 40 65535
//!         bits 4-5  headroom in front of the frame: 256, MIN_HEADROOM, 64, MIN_HEADROOM - 1
//!         bit 6     no tailroom (the buffer ends where the frame does)
//!         bit 7     the "everything is bound" lookup instead of the fixture tables
//! byte 1  bits 0-1  ICMP error burst (0: every error is rate limited)
//!         bits 2-3  size of the buffers fragments are written to: 2048 1514 100 60
//!         bits 4-6  `len` claims this many bytes more than the frame has
//!         bit 7     a second, identical frame through the same pipeline later
//! then    the frame
//! ```
//!
//! Checked on every verdict (as `robustness.rs` does for its mutations):
//! every frame is counted exactly once; `Tx` lies inside the buffer, nothing
//! outside the old and new frame is written, and every IPv4 header (and ICMP
//! message) the pipeline emits verifies; a dropped frame is not modified;
//! `Fragments` pieces fit their buffers and the tunnel MTU, verify, and
//! carry exactly the datagram's data, in order. The frame is also offered
//! as a TSO super-frame: if it is planned, its segments fit the tunnel,
//! verify (IPv4 and TCP checksums) and carry the TCP data in order.

use std::net::Ipv4Addr;

use dataplane::pipeline::{
    BindingRef, Counters, FragmentPlan, Lookup, NextHop, Pipeline, PipelineConfig, Port, Role,
    Verdict, MIN_HEADROOM,
};

use crate::frames::*;
use crate::internet_checksum;

const MTUS: [u16; 8] = [1500, 576, 88, 68, 1280, 9000, 40, u16::MAX];
const HEADROOMS: [usize; 4] = [256, MIN_HEADROOM, 64, MIN_HEADROOM - 1];
const FRAGMENT_BUFFERS: [usize; 4] = [2048, 1514, 100, 60];
/// Filler of the buffer around the frame.
const FILL: u8 = 0xc3;

/// The tables of the pipeline's own fixtures, per role.
struct Tables {
    role: Role,
}

impl Lookup for Tables {
    fn binding(&self, vm: Ipv4Addr) -> Option<BindingRef> {
        let b = |care_of: [u8; 4], slot| {
            Some(BindingRef {
                care_of: care_of.into(),
                slot,
            })
        };
        match (self.role, vm.octets()) {
            (Role::HomeAgent, VM) => b(CARE_OF, 7),
            (Role::HomeAgent, VM2) => b(CARE_OF2, 8),
            (Role::HomeAgent, VM3) => b(CARE_OF3, 9),
            // In switchover: its frames are held.
            (Role::HomeAgent, [192, 0, 2, 52]) => b([0, 0, 0, 0], 10),
            (Role::ForeignAgent, SERVED) => b(HOME_AGENT, 3),
            // A served VM whose home agent has no next hop.
            (Role::ForeignAgent, [192, 0, 2, 51]) => b([198, 51, 100, 2], 4),
            _ => None,
        }
    }
    fn next_hop(&self, care_of: Ipv4Addr) -> NextHop {
        match care_of.octets() {
            CARE_OF | HOME_AGENT => NextHop::Resolved {
                port: Port::Wan,
                mac: NEXT_HOP_MAC,
            },
            CARE_OF2 => NextHop::Resolved {
                port: Port::Lan,
                mac: LAN_NEXT_HOP_MAC,
            },
            _ => NextHop::Unresolved,
        }
    }
    fn lan_neighbor(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        match (self.role, addr.octets()) {
            (Role::HomeAgent, LAN_HOST) => Some(LAN_HOST_MAC),
            (Role::ForeignAgent, SERVED) => Some(SERVED_MAC),
            _ => None,
        }
    }
}

/// Binds every address and knows every neighbour, so frames get deep.
struct Everything;

impl Lookup for Everything {
    fn binding(&self, vm: Ipv4Addr) -> Option<BindingRef> {
        Some(BindingRef {
            care_of: CARE_OF.into(),
            slot: u32::from(vm),
        })
    }
    fn next_hop(&self, _: Ipv4Addr) -> NextHop {
        NextHop::Resolved {
            port: Port::Wan,
            mac: NEXT_HOP_MAC,
        }
    }
    fn lan_neighbor(&self, _: Ipv4Addr) -> Option<[u8; 6]> {
        Some(LAN_HOST_MAC)
    }
}

/// The pipeline configuration of `role`, as the fixtures have it.
pub fn config(role: Role) -> PipelineConfig {
    let ours = match role {
        Role::HomeAgent => HA,
        Role::ForeignAgent => FA,
    };
    let mut c = PipelineConfig::new(ours.into(), LAN_MAC, WAN_MAC);
    c.role = role;
    c
}

/// Settings decoded from the two leading bytes.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub ingress: Port,
    pub tunnel_mtu: u16,
    pub headroom: usize,
    pub tailroom: bool,
    pub everything: bool,
    pub icmp_burst: u32,
    pub fragment_buffer: usize,
    pub extra_len: usize,
    pub twice: bool,
}

impl Settings {
    pub fn decode(b0: u8, b1: u8) -> Settings {
        Settings {
            ingress: if b0 & 1 == 0 { Port::Lan } else { Port::Wan },
            tunnel_mtu: MTUS[usize::from(b0 >> 1) & 7],
            headroom: HEADROOMS[usize::from(b0 >> 4) & 3],
            tailroom: b0 & 0x40 == 0,
            everything: b0 & 0x80 != 0,
            icmp_burst: u32::from(b1 & 3),
            fragment_buffer: FRAGMENT_BUFFERS[usize::from(b1 >> 2) & 3],
            extra_len: usize::from(b1 >> 4) & 7,
            twice: b1 & 0x80 != 0,
        }
    }

    /// The two bytes that decode to the common case: `ingress`, MTU 1500,
    /// 256 bytes of headroom, tailroom, fixture tables, burst 3, 2048-byte
    /// fragment buffers.
    pub fn encode_default(ingress: Port) -> [u8; 2] {
        [u8::from(ingress == Port::Wan), 0x03]
    }
}

/// Runs one fuzz input through a fresh pipeline of `role`.
pub fn run(role: Role, data: &[u8]) {
    let [b0, b1, frame @ ..] = data else {
        return;
    };
    let s = Settings::decode(*b0, *b1);
    let mut cfg = config(role);
    cfg.tunnel_mtu = s.tunnel_mtu;
    cfg.icmp_burst = s.icmp_burst;
    cfg.icmp_rate_per_sec = 10;
    let mut p = Pipeline::new(cfg, 0x100);
    let tables = Tables { role };
    segments(&mut p.clone(), frame);
    let rounds = if s.twice { 2 } else { 1 };
    for round in 0..rounds {
        if s.everything {
            one(&mut p, &s, frame, round, &Everything);
        } else {
            one(&mut p, &s, frame, round, &tables);
        }
    }
}

/// `HOMEWARD_FUZZ_DEBUG=1`: print every verdict (when replaying an input).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("HOMEWARD_FUZZ_DEBUG").is_some())
}

fn total(c: &Counters) -> u64 {
    c.drops.iter().sum::<u64>() + c.encapsulated + c.decapsulated + c.arp_replies
}

fn one(p: &mut Pipeline, s: &Settings, frame: &[u8], round: u64, lookup: &impl Lookup) {
    let start = s.headroom;
    let tail = if s.tailroom { 2048 } else { 0 };
    let mut buf = vec![FILL; start + frame.len() + tail];
    buf[start..start + frame.len()].copy_from_slice(frame);
    let len = frame.len() + s.extra_len;
    let before = buf.clone();
    let c0 = p.counters().clone();
    // 1 ms apart: the ICMP bucket refills a little between the two rounds.
    let now_ns = 1_000_000_000 + round * 1_000_000;
    // The worker's prefetch pass reads every frame first: no panic either.
    let _ = p.binding_key(&buf, start, len, s.ingress);
    let mut v = p.process(&mut buf, start, len, s.ingress, now_ns, lookup);
    if debug() {
        eprintln!("round {round}: {v:?}");
    }
    if let Verdict::AwaitLanNeighbor {
        start: s,
        len: l,
        slot,
        ..
    } = v
    {
        // The worker holds it until the neighbour resolves, then delivers
        // it on the LAN: check it as the frame that leaves then.
        assert!(p.deliver_held(&mut buf, s, l, [2, 0, 0, 0, 0, 0x77]));
        v = Verdict::Tx {
            port: dataplane::pipeline::Port::Lan,
            start: s,
            len: l,
            slot,
        };
    }
    let c = p.counters().clone();
    if let Verdict::Hold {
        start: s, len: l, ..
    } = v
    {
        // Held as received, for the worker to process again later.
        assert!((s, l) == (start, len), "a held frame is the received one");
        assert!(buf == before, "a held frame is not modified");
        assert!(c == c0, "a held frame is not counted yet");
        return;
    }
    assert_eq!(total(&c), total(&c0) + 1, "each frame counted once: {v:?}");
    let drops = |c: &Counters| c.drops.iter().sum::<u64>();
    match v {
        Verdict::Drop(reason) => {
            assert_eq!(drops(&c), drops(&c0) + 1);
            assert_eq!(
                c.drop_count(reason),
                c0.drop_count(reason) + 1,
                "counted under its reason"
            );
            assert!(buf == before, "a dropped frame is not modified: {reason:?}");
        }
        Verdict::Tx {
            start: out_start,
            len: out_len,
            ..
        } => {
            let end = out_start.checked_add(out_len).expect("Tx end overflows");
            assert!(end <= buf.len(), "Tx inside the buffer");
            assert!(out_len >= 14, "Tx holds an Ethernet header");
            // Nothing written outside the old frame and the new one.
            let lo = out_start.min(start);
            let hi = end.max(start.saturating_add(len).min(buf.len()));
            assert!(buf[..lo] == before[..lo], "wrote in front of the output");
            assert!(buf[hi..] == before[hi..], "wrote past the output");
            let tunnel = c.encapsulated > c0.encapsulated;
            let icmp = c.icmp_sent > c0.icmp_sent;
            if icmp {
                assert_eq!(
                    drops(&c),
                    drops(&c0) + 1,
                    "the ICMP error's reason is counted"
                );
            }
            check_headers(&buf[out_start..end], tunnel, icmp);
        }
        Verdict::Fragments { plan, .. } => {
            assert!(plan.count() >= 2, "fragments: at least two");
            assert_eq!(c.fragmented, c0.fragmented + 1);
            assert_eq!(c.encapsulated, c0.encapsulated + 1);
            let received = &before[start..start + len];
            check_fragments(p, s, &buf, received, &plan);
        }
        Verdict::AwaitLanNeighbor { .. } => unreachable!("delivered above"),
        Verdict::Hold { .. } => unreachable!("returned above"),
    }
}

/// The link header length of an emitted frame carrying IPv4, if it does.
fn ipv4_offset(out: &[u8]) -> Option<usize> {
    match (out.get(12..14), out.get(16..18)) {
        (Some([0x81, 0x00]), Some([0x08, 0x00])) => Some(18),
        (Some([0x08, 0x00]), _) => Some(14),
        _ => None,
    }
}

/// Checks the IPv4 header at `bytes` (version, IHL, checksum, total length
/// inside `bytes`); returns (header length, total length).
fn check_ipv4(bytes: &[u8], what: &str) -> (usize, usize) {
    let b0 = *bytes.first().unwrap_or_else(|| panic!("{what}: no header"));
    assert_eq!(b0 >> 4, 4, "{what}: version");
    let ihl = usize::from(b0 & 0xf) * 4;
    assert!(ihl >= 20 && ihl <= bytes.len(), "{what}: IHL {ihl}");
    assert_eq!(
        internet_checksum(&bytes[..ihl]),
        0,
        "{what}: header checksum"
    );
    let total = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    assert!(
        total >= ihl && total <= bytes.len(),
        "{what}: total length {total} of {}",
        bytes.len()
    );
    (ihl, total)
}

/// Every IPv4 header we emit verifies; a tunnel's inner header too (it was
/// validated and had its TTL decremented), and an ICMP error's checksum.
fn check_headers(out: &[u8], tunnel: bool, icmp: bool) {
    let Some(l2) = ipv4_offset(out) else {
        assert!(!tunnel && !icmp, "tunnel or ICMP output without IPv4");
        return;
    };
    let (ihl, total) = check_ipv4(&out[l2..], "emitted header");
    let payload = &out[l2 + ihl..l2 + total];
    match out[l2 + 9] {
        4 if tunnel => {
            let (_, inner_total) = check_ipv4(payload, "inner header");
            assert_eq!(
                inner_total,
                payload.len(),
                "the tunnel carries the datagram"
            );
        }
        1 if icmp => assert_eq!(internet_checksum(payload), 0, "ICMP checksum"),
        _ => assert!(!icmp, "an ICMP error that is not ICMP"),
    }
}

/// `received`: the frame as `process` was given it.
fn check_fragments(
    p: &mut Pipeline,
    s: &Settings,
    buf: &[u8],
    received: &[u8],
    plan: &FragmentPlan,
) {
    // The datagram as received: its data length and fragment offset.
    let l2 = ipv4_offset(received).expect("fragments of IPv4");
    let ip = &received[l2..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let data_len = usize::from(u16::from_be_bytes([ip[2], ip[3]])) - ihl;
    let base_units = usize::from(u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff);
    let mtu = usize::from(p.config().tunnel_mtu);

    // Data bytes of the pieces written so far, while none was refused (one
    // too big for its buffer): after a refusal only bounds are checked.
    let mut written = 0;
    let mut in_order = true;
    let checked = plan.count().min(64);
    for i in 0..checked + 2 {
        let mut dst = vec![0u8; s.fragment_buffer];
        let Some((fs, fl)) = p.write_fragment(buf, plan, i, &mut dst) else {
            in_order &= i >= checked;
            continue;
        };
        assert!(i < plan.count(), "piece {i} of {}", plan.count());
        let end = fs.checked_add(fl).expect("piece end overflows");
        assert!(end <= dst.len(), "piece inside its buffer");
        let out = &dst[fs..end];
        assert_eq!(ipv4_offset(out), Some(14), "pieces are untagged IPv4");
        let (oihl, ototal) = check_ipv4(&out[14..], "piece outer header");
        assert!(ototal <= mtu, "piece over the tunnel MTU: {ototal} > {mtu}");
        assert_eq!(out[14 + 9], 4, "pieces are IP-in-IP");
        let inner = &out[14 + oihl..14 + ototal];
        let (iihl, itotal) = check_ipv4(inner, "piece inner header");
        assert_eq!(itotal, inner.len());
        let n = itotal - iihl;
        if !in_order {
            continue;
        }
        let units = usize::from(u16::from_be_bytes([inner[6], inner[7]]) & 0x1fff);
        assert_eq!(
            units * 8,
            base_units * 8 + written,
            "piece {i}: offset follows the previous pieces"
        );
        assert!(
            i + 1 == plan.count() || n % 8 == 0,
            "piece {i}: data a multiple of 8"
        );
        // The TCP header at the start of a first fragment's data may have been
        // rewritten on the way in (a partial checksum finished, an MSS clamped): its
        // 60 bytes at most are compared by length only.
        let skip = if written == 0 && base_units == 0 && ip[9] == 6 {
            n.min(60)
        } else {
            0
        };
        assert!(
            ip.get(ihl + written + skip..ihl + written + n) == Some(&inner[iihl + skip..]),
            "piece {i} carries the datagram's data"
        );
        written += n;
    }
    if in_order && plan.count() <= 64 {
        assert_eq!(written, data_len, "the pieces carry all the data");
    }
    // A cut or foreign source buffer is refused or harmless.
    let mut dst = vec![0u8; 2048];
    let _ = p.write_fragment(&buf[..buf.len() / 2], plan, 0, &mut dst);
    let _ = p.write_fragment(received, plan, 1, &mut dst);
}

/// The frame as a super-frame the worker gathered: a plan counts it as
/// segmented, a refusal as one drop; every segment fits a 2048-byte frame
/// after 256 bytes of headroom and the tunnel, verifies, and the segments
/// carry the TCP data in order with consecutive sequence numbers.
fn segments(p: &mut Pipeline, frame: &[u8]) {
    let c0 = p.counters().clone();
    let Ok(plan) = p.plan_segments(frame, 1_000_000_000) else {
        let c = p.counters();
        assert_eq!(
            c.drops.iter().sum::<u64>(),
            c0.drops.iter().sum::<u64>() + 1
        );
        return;
    };
    assert_eq!(p.counters().segmented, c0.segmented + 1);
    let l2 = ipv4_offset(frame).expect("a planned super-frame is IPv4");
    let ip = &frame[l2..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let thl = usize::from(ip[ihl + 12] >> 4) * 4;
    let data = &ip[ihl + thl..total];
    let seq = u32::from_be_bytes([ip[ihl + 4], ip[ihl + 5], ip[ihl + 6], ip[ihl + 7]]);
    let mtu = usize::from(p.config().tunnel_mtu);
    let mut carried = 0;
    for i in 0..plan.count() {
        let mut dst = vec![0u8; 2048];
        let len = p
            .write_segment(frame, &plan, i, &mut dst, 256)
            .expect("a planned segment fits a frame");
        let out = &dst[256..256 + len];
        assert_eq!(out[..l2], frame[..l2], "link header copied");
        let (sihl, stotal) = check_ipv4(&out[l2..], "segment header");
        assert_eq!(l2 + stotal, len);
        assert!(
            stotal + 20 <= mtu.max(20) && stotal <= 1500,
            "segment over the tunnel"
        );
        let seg = &out[l2..l2 + stotal];
        let mut pseudo = Vec::with_capacity(12 + stotal);
        pseudo.extend_from_slice(&seg[12..20]);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&((stotal - sihl) as u16).to_be_bytes());
        pseudo.extend_from_slice(&seg[sihl..]);
        assert_eq!(internet_checksum(&pseudo), 0, "segment {i}: TCP checksum");
        let sseq = u32::from_be_bytes([seg[sihl + 4], seg[sihl + 5], seg[sihl + 6], seg[sihl + 7]]);
        assert_eq!(
            sseq,
            seq.wrapping_add(carried as u32),
            "segment {i}: sequence"
        );
        let piece = &seg[sihl + thl..];
        assert!(
            data.get(carried..carried + piece.len()) == Some(piece),
            "segment {i}: data"
        );
        carried += piece.len();
    }
    assert_eq!(carried, data.len(), "the segments carry all the data");
    assert!(p
        .write_segment(frame, &plan, plan.count(), &mut [0u8; 2048], 256)
        .is_none());
}
