//! The benchmark's BPF programs, run once each with BPF_PROG_RUN (no live
//! frames, nothing transmitted): the generator writes the frames it should,
//! paces, the sink parses what it should, and the katran-style baseline
//! produces the same bytes as homeward's pipeline (so the comparison is
//! like for like). Needs root (CAP_BPF); fails without it.

use homeward_benches::bpf::{self, Baseline, BaselineKind, GenConfig, Generator, Sink};
use homeward_benches::frames::{self, checksum, Ipv4Spec, ETH_LEN, IPV4_LEN, UDP_HDRS};
use homeward_benches::sys;

mod common;
use common::*;

const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// Fails rather than skips without root: a skipped test would pass untested.
fn require_root() {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false);
    assert!(
        root,
        "needs root (BPF_PROG_RUN): run the tests as root, as CI does"
    );
}

fn udp(len: usize) -> Vec<u8> {
    frames::udp_frame(
        LAN_MAC,
        GEN_MAC,
        &Ipv4Spec {
            src: GEN,
            dst: VM,
            protocol: 17,
            ttl: 64,
            df: true,
            ident: 0,
        },
        10000,
        9,
        len,
    )
}

fn gen_config(template: &[u8], rate_pps: u64, stamp: bool) -> GenConfig {
    let mut headers = [0u8; UDP_HDRS];
    headers.copy_from_slice(&template[..UDP_HDRS]);
    GenConfig {
        headers,
        rate_pps,
        burst: 1,
        clock_mask: 0,
        flow_mask: 255,
        sport_base: 10000,
        stamp,
        vm_count: 1,
    }
}

#[test]
fn generator_writes_its_frames_and_paces() {
    require_root();
    // Per-CPU pacing state: stay on one CPU.
    sys::pin_to_cpu(0).unwrap();
    let gen = Generator::load().unwrap();
    let tpl = udp(60);
    gen.configure(&gen_config(&tpl, 0, true)).unwrap();
    gen.reset().unwrap();
    // Whatever was in the page before (the kernel recycles pages).
    let garbage = vec![0xa5u8; 60];
    for i in 0..3u16 {
        let (action, out) = bpf::run_once(gen.prog_fd(), &garbage).unwrap();
        assert_eq!(action, XDP_TX);
        assert_eq!(out.len(), 60);
        assert_eq!(&out[..34], &tpl[..34], "Ethernet + IPv4 from the template");
        assert_eq!(
            u16::from_be_bytes([out[34], out[35]]),
            10000 + i,
            "source port per packet"
        );
        assert_eq!(&out[36..42], &tpl[36..42]);
        assert_eq!(&out[42..46], b"HWBG");
        assert_eq!(
            u32::from_ne_bytes(out[46..50].try_into().unwrap()),
            u32::from(i)
        );
        assert_ne!(
            u64::from_ne_bytes(out[50..58].try_into().unwrap()),
            0,
            "stamped"
        );
        assert_eq!(checksum(&out[ETH_LEN..ETH_LEN + IPV4_LEN]), 0);
    }
    assert_eq!(gen.stats().unwrap().sent, 3);

    // 1 packet per second, burst 1: one frame now, then nothing.
    gen.configure(&gen_config(&tpl, 1, false)).unwrap();
    gen.reset().unwrap();
    assert_eq!(bpf::run_once(gen.prog_fd(), &garbage).unwrap().0, XDP_TX);
    for _ in 0..10 {
        assert_eq!(bpf::run_once(gen.prog_fd(), &garbage).unwrap().0, XDP_DROP);
    }
    let s = gen.stats().unwrap();
    assert_eq!((s.sent, s.paced), (1, 10));

    // Too short for headers + payload header: aborted and counted.
    gen.reset().unwrap();
    let (action, _) = bpf::run_once(gen.prog_fd(), &[0u8; 50]).unwrap();
    assert_eq!(action, 0);
    assert_eq!(gen.stats().unwrap().short_frames, 1);

    generator_spreads_destinations(&gen, &tpl, &garbage);
}

/// `vm_count`: destinations spread over the block from the template's,
/// every frame with a valid IPv4 checksum.
fn generator_spreads_destinations(gen: &Generator, tpl: &[u8], garbage: &[u8]) {
    let mut cfg = gen_config(tpl, 0, false);
    cfg.vm_count = 1000;
    gen.configure(&cfg).unwrap();
    gen.reset().unwrap();
    let base = u32::from_be_bytes(tpl[30..34].try_into().unwrap());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4000 {
        let (action, out) = bpf::run_once(gen.prog_fd(), garbage).unwrap();
        assert_eq!(action, XDP_TX);
        let dst = u32::from_be_bytes(out[30..34].try_into().unwrap());
        assert!((base..base + 1000).contains(&dst), "dst {dst:#x}");
        assert_eq!(checksum(&out[ETH_LEN..ETH_LEN + IPV4_LEN]), 0);
        seen.insert(dst);
    }
    assert!(seen.len() > 900, "{} of 1000 VMs got traffic", seen.len());
}

#[test]
fn ipip_baseline_matches_homeward_byte_for_byte() {
    require_root();
    let b = Baseline::load(BaselineKind::Ipip).unwrap();
    // The DEVMAP needs some interface; loopback (index 1) will do, nothing is sent.
    b.configure(SINK_MAC, WAN_MAC, HA, 1).unwrap();
    b.bind(VM, CARE_OF).unwrap();
    for len in [60, 508, 1496] {
        let frame = udp(len);
        let (action, ours) = bpf::run_once(b.prog_fd, &frame).unwrap();
        assert_eq!(action, XDP_REDIRECT, "{len}");
        let theirs = homeward_encap(&frame);
        assert_eq!(ours.len(), theirs.len(), "{len}");
        assert_eq!(ours.len(), len + IPV4_LEN);
        // Identical but for the outer Identification and hence its checksum.
        let mask = |f: &[u8]| {
            let mut f = f.to_vec();
            f[ETH_LEN + 4..ETH_LEN + 6].fill(0);
            f[ETH_LEN + 10..ETH_LEN + 12].fill(0);
            f
        };
        assert_eq!(mask(&ours), mask(&theirs), "{len}");
        for f in [&ours, &theirs] {
            assert_eq!(
                checksum(&f[ETH_LEN..ETH_LEN + IPV4_LEN]),
                0,
                "outer checksum"
            );
            assert_eq!(
                checksum(&f[ETH_LEN + IPV4_LEN..ETH_LEN + 2 * IPV4_LEN]),
                0,
                "inner checksum"
            );
        }
    }
    // Not bound: passed to the kernel untouched.
    let mut other = udp(60);
    other[ETH_LEN + 19] = 99;
    assert_eq!(bpf::run_once(b.prog_fd, &other).unwrap().0, 2);
}

#[test]
fn redirect_baseline_rewrites_macs_only() {
    require_root();
    let b = Baseline::load(BaselineKind::Redirect).unwrap();
    b.configure(SINK_MAC, WAN_MAC, HA, 1).unwrap();
    let frame = udp(60);
    let (action, out) = bpf::run_once(b.prog_fd, &frame).unwrap();
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[..6], &SINK_MAC);
    assert_eq!(&out[6..12], &WAN_MAC);
    assert_eq!(&out[12..], &frame[12..]);
}

#[test]
fn sink_counts_and_finds_timestamps_in_plain_and_ipip_frames() {
    require_root();
    sys::pin_to_cpu(0).unwrap();
    let gen = Generator::load().unwrap();
    let tpl = udp(60);
    gen.configure(&gen_config(&tpl, 0, true)).unwrap();
    gen.reset().unwrap();
    let (_, stamped) = bpf::run_once(gen.prog_fd(), &tpl).unwrap();
    let encapsulated = homeward_encap(&stamped);

    let sink = Sink::load().unwrap();
    sink.set_latency(true).unwrap();
    sink.reset().unwrap();
    assert_eq!(bpf::run_once(sink.count_fd, &stamped).unwrap().0, XDP_DROP);
    assert_eq!(
        bpf::run_once(sink.count_fd, &encapsulated).unwrap().0,
        XDP_DROP
    );
    // Unstamped: counted, not in the histogram.
    assert_eq!(bpf::run_once(sink.count_fd, &tpl).unwrap().0, XDP_DROP);
    let s = sink.stats().unwrap();
    assert_eq!((s.packets, s.stamped, s.ipip), (3, 2, 1));
    assert_eq!(s.bytes, 60 + 80 + 60);
    let hist = sink.histogram().unwrap();
    assert_eq!(hist.iter().sum::<u64>(), 2);
    sink.reset().unwrap();
    assert_eq!(sink.stats().unwrap().packets, 0);
    assert_eq!(bpf::run_once(sink.drop_fd, &tpl).unwrap().0, XDP_DROP);
}
