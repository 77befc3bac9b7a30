//! Byte fixtures: a TSO super-frame cut into segments that each verify on their own and
//! together carry the original's data.

use etherparse::{Ipv4HeaderSlice, TcpHeaderSlice};

use super::super::testutil::{pipeline, Ip, VM};
use super::super::DropReason;
use super::*;

const CLIENT: [u8; 4] = [203, 0, 113, 9];
/// Timestamps, as Linux sends them: NOP NOP TS (10 bytes).
const TS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
/// Where the worker writes a segment: XDP's headroom.
const AT: usize = 256;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A super-frame as a guest with TSO sends it: one IPv4 TCP datagram of `len` data bytes,
/// flags `flags` (CWR may be among them; its checksum is left as etherparse makes it, which
/// segmentation does not read).
fn super_frame(len: usize, flags: u8) -> Vec<u8> {
    let mut f = Ip::tcp(VM, CLIENT, flags & 0x7f, &TS, &data(len)).frame();
    f[14 + 20 + 13] |= flags & 0x80;
    f
}

fn cut(p: &mut Pipeline, frame: &[u8]) -> Vec<Vec<u8>> {
    let plan = p.plan_segments(frame, 0).expect("a plan");
    (0..plan.count())
        .map(|i| {
            let mut dst = vec![0u8; 2048];
            let len = p
                .write_segment(frame, &plan, i, &mut dst, AT)
                .expect("a segment");
            dst[AT..AT + len].to_vec()
        })
        .collect()
}

#[test]
fn a_super_frame_becomes_tunnel_sized_segments_that_verify() {
    let mut p = pipeline(1);
    let original = super_frame(5000, 0x80 | 0x10 | 0x08 | 0x01);
    let segments = cut(&mut p, &original);
    // 1500 - 20 outer - 20 IPv4 - 32 TCP = 1428 data bytes each.
    assert_eq!(segments.len(), 4);
    let mut carried = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s[..14], original[..14], "link header copied");
        let ip = Ipv4HeaderSlice::from_slice(&s[14..]).unwrap();
        let ip_header = ip.to_header();
        assert_eq!(ip_header.calc_header_checksum(), ip.header_checksum());
        assert_eq!(usize::from(ip.total_len()), s.len() - 14);
        assert!(usize::from(ip.total_len()) + 20 <= 1500, "fits the tunnel");
        assert_eq!(ip.identification(), 0x1c46 + i as u16);
        assert!(ip.dont_fragment());
        let tcp = TcpHeaderSlice::from_slice(&s[34..]).unwrap();
        let payload = &s[34 + 32..];
        assert_eq!(
            tcp.calc_checksum_ipv4(&ip, payload).unwrap(),
            tcp.checksum(),
            "segment {i}"
        );
        assert_eq!(tcp.sequence_number(), 0x0102_0304 + (i * 1428) as u32);
        assert_eq!(tcp.options(), &TS, "options copied");
        let last = i == segments.len() - 1;
        assert_eq!(tcp.cwr(), i == 0, "CWR on the first only");
        assert_eq!(tcp.fin(), last, "FIN on the last only");
        assert_eq!(tcp.psh(), last, "PSH on the last only");
        assert!(tcp.ack());
        carried.extend_from_slice(payload);
    }
    assert_eq!(carried, data(5000));
    assert_eq!(p.counters().segmented, 1);
    assert_eq!(p.counters().segments_out, 4);
}

#[test]
fn the_tunnel_mtu_sets_the_segment_size_and_a_tag_is_kept() {
    let mut config = super::super::testutil::config();
    config.tunnel_mtu = 1400;
    let mut p = Pipeline::new(config, 1);
    let original = Ip::tcp(VM, CLIENT, 0x10, &[], &data(3000))
        .vlan(0x0064)
        .frame();
    let segments = cut(&mut p, &original);
    // 1400 - 20 - 20 - 20 = 1340: 1340, 1340, 320.
    let lens: Vec<usize> = segments.iter().map(|s| s.len() - 18 - 40).collect();
    assert_eq!(lens, [1340, 1340, 320]);
    for s in &segments {
        assert_eq!(s[..18], original[..18]);
    }
}

#[test]
fn a_segment_that_already_fits_is_written_once() {
    let mut p = pipeline(1);
    let original = super_frame(100, 0x18);
    let segments = cut(&mut p, &original);
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0], original[..14 + 20 + 32 + 100]);
}

#[test]
fn what_is_not_tcp_over_ipv4_is_not_cut() {
    let mut p = pipeline(1);
    let udp = Ip::udp(VM, CLIENT, &data(3000)).frame();
    assert_eq!(p.plan_segments(&udp, 0), Err(DropReason::Unsegmentable));
    let fragment = Ip::tcp(VM, CLIENT, 0x10, &[], &data(3000))
        .df(false)
        .frag(true, 0)
        .frame();
    assert_eq!(
        p.plan_segments(&fragment, 0),
        Err(DropReason::Unsegmentable)
    );
    let mut bad_offset = super_frame(3000, 0x10);
    bad_offset[14 + 20 + 12] = 0x30; // data offset 3 words
    assert_eq!(
        p.plan_segments(&bad_offset, 0),
        Err(DropReason::Unsegmentable)
    );
    let mut config = super::super::testutil::config();
    config.tunnel_mtu = 300;
    let mut narrow = Pipeline::new(config, 1);
    assert_eq!(
        narrow.plan_segments(&super_frame(3000, 0x10), 0),
        Err(DropReason::Unsegmentable)
    );
    assert_eq!(p.counters().drop_count(DropReason::Unsegmentable), 3);
    assert_eq!(p.counters().segmented, 0);
}

#[test]
fn no_input_panics_or_writes_out_of_bounds() {
    let mut p = pipeline(1);
    let original = super_frame(4000, 0x10);
    let plan = p.plan_segments(&original, 0).unwrap();
    // Out of range, a destination too small, a source cut short.
    let mut dst = vec![0u8; 2048];
    assert_eq!(
        p.write_segment(&original, &plan, plan.count(), &mut dst, AT),
        None
    );
    assert_eq!(
        p.write_segment(&original, &plan, 0, &mut dst[..600], AT),
        None
    );
    assert_eq!(
        p.write_segment(&original[..1000], &plan, 2, &mut dst, AT),
        None
    );
    for cut in 0..original.len().min(200) {
        let _ = p.plan_segments(&original[..cut], 0);
    }
}
