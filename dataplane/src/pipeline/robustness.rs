//! Property test: whatever the bytes, offsets and lengths, `process` and `write_fragment` do
//! not panic, what they return lies inside the buffers, they write nowhere else, every
//! header they emit verifies, and every frame is counted exactly once.

use super::testutil::*;
use super::*;

/// xorshift64*: tiny, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

/// Binds everything to CARE_OF and knows every neighbour, so mutated frames get deep.
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

fn seeds() -> Vec<Vec<u8>> {
    let payload: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
    vec![
        Ip::udp(LAN_HOST, VM, b"hello").frame(),
        Ip::udp(LAN_HOST, VM, b"hello").vlan(42).ttl(1).frame(),
        Ip::udp(LAN_HOST, VM, &payload[..1800])
            .df(false)
            .options(&[0x83, 7, 4, 1, 2, 3, 4, 0])
            .frame(),
        Ip::udp(LAN_HOST, VM, &payload[..1600]).frame(),
        Ip::udp(LAN_HOST, VM, &payload[..1600])
            .df(false)
            .frag(true, 8000)
            .frame(),
        Ip::icmp(REMOTE, VM, 8, 0, &[0; 12]).ttl(1).frame(),
        Ip::ipip(CARE_OF, HA, Ip::udp(VM, LAN_HOST, b"back home")).frame(),
        Ip::ipip(CARE_OF, HA, Ip::udp(VM, LAN_HOST, b"x"))
            .vlan(7)
            .options(&[1, 1, 1, 1])
            .frame(),
        Ip::ipip(REMOTE, VM, Ip::udp(REMOTE, CARE_OF, b"loop")).frame(),
        ArpFrame::request(LAN_HOST_MAC, LAN_HOST, VM).frame(),
        ArpFrame::request(LAN_HOST_MAC, [0; 4], VM)
            .vlan(3)
            .unpadded()
            .frame(),
    ]
}

/// Recomputes the IPv4 header checksums (outer, and inner of IP-in-IP) where the bytes allow,
/// so mutated length and flag fields get past the checksum check.
fn fix_checksums(f: &mut [u8]) {
    let mut off = if f.get(12..14) == Some(&[0x81, 0x00]) {
        18
    } else {
        14
    };
    for _ in 0..2 {
        let Some(&b0) = f.get(off) else { return };
        let ihl = usize::from(b0 & 0xf) * 4;
        if ihl < 20 || f.len() < off + ihl {
            return;
        }
        f[off + 10] = 0;
        f[off + 11] = 0;
        let c = checksum::checksum(&f[off..off + ihl]).to_be_bytes();
        f[off + 10..off + 12].copy_from_slice(&c);
        if f[off + 9] != 4 {
            return;
        }
        off += ihl;
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.chance(10) {
        let n = rng.below(200);
        return (0..n).map(|_| rng.next() as u8).collect();
    }
    let mut f = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !f.is_empty() => {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
            1 if !f.is_empty() => {
                // Header bytes are where the decisions are: hit them more often.
                let i = rng.below(f.len().min(80));
                let any = rng.next() as u8;
                f[i] = rng.pick(&[0, 1, 4, 5, 0x40, 0x45, 0x46, 0x4f, 0x80, 0x81, 0xff, any]);
            }
            2 => {
                let n = rng.below(f.len() + 1);
                f.truncate(n);
            }
            3 => {
                let n = rng.below(64);
                f.extend((0..n).map(|_| rng.next() as u8));
            }
            4 if f.len() > 20 => {
                let i = 14 + rng.below(f.len() - 14);
                let n = rng.below(8).min(f.len() - i);
                for b in &mut f[i..i + n] {
                    *b = rng.next() as u8;
                }
            }
            _ => {}
        }
    }
    if rng.chance(2) {
        fix_checksums(&mut f);
    }
    f
}

/// Checksum over raw bytes with etherparse's implementation (its header structs drop the
/// reserved flag bit, so recomputing from them would disagree on mutated frames).
fn verifies(bytes: &[u8]) -> bool {
    etherparse::checksum::Sum16BitWords::new()
        .add_slice(bytes)
        .ones_complement()
        == 0
}

/// `tunnel`: the frame is one we encapsulated, so its payload is an IPv4 datagram we validated;
/// `icmp`: an ICMP error we built. Otherwise the payload is someone else's and not checked.
fn check_ipv4_headers(out: &[u8], what: &str, tunnel: bool, icmp: bool) {
    let l2 = match (out.get(12..14), out.get(16..18)) {
        (Some([0x81, 0x00]), Some([0x08, 0x00])) => 18,
        (Some([0x08, 0x00]), _) => 14,
        _ => return,
    };
    let outer = etherparse::Ipv4HeaderSlice::from_slice(&out[l2..]).expect("emitted IPv4 parses");
    assert!(verifies(outer.slice()), "{what}: {out:02x?}");
    let ihl = usize::from(outer.ihl()) * 4;
    let end = l2 + usize::from(outer.total_len());
    assert!(end <= out.len(), "datagram inside the frame");
    let payload = &out[l2 + ihl..end];
    match outer.protocol().0 {
        4 if tunnel => {
            let inner = etherparse::Ipv4HeaderSlice::from_slice(payload).expect("inner parses");
            assert!(verifies(inner.slice()), "{what}: {out:02x?}");
        }
        1 if icmp => assert!(verifies(payload), "icmp checksum, {what}: {out:02x?}"),
        _ => {}
    }
}

#[test]
fn random_frames_never_panic_and_stay_in_bounds() {
    let seeds = seeds();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mtus = [
        0u16,
        1,
        20,
        28,
        40,
        68,
        87,
        88,
        100,
        576,
        1280,
        1500,
        9000,
        u16::MAX,
    ];
    let mut seen = [false; 4]; // tx, fragments, drop, icmp
    let mut totals = Counters::default();
    // 100 rounds of 1000 frames by default; HOMEWARD_FUZZ_ROUNDS=N for a longer soak.
    let rounds = std::env::var("HOMEWARD_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for round in 0..rounds {
        let mut cfg = config();
        cfg.tunnel_mtu = rng.pick(&mtus);
        cfg.icmp_burst = rng.below(4) as u32;
        cfg.icmp_rate_per_sec = rng.below(1000) as u32;
        let mut p = Pipeline::new(cfg, rng.next() as u16);
        let everything = round % 2 == 0;
        let mut calls = 0u64;
        for _ in 0..1_000 {
            let frame = mutate(&mut rng, &seeds);
            let start = if rng.chance(8) {
                rng.below(64)
            } else {
                HEADROOM
            };
            let size = if rng.chance(8) {
                start + rng.below(frame.len() + 1)
            } else {
                start + frame.len() + rng.below(2048)
            };
            let mut buf = vec![0xc3u8; size];
            let n = frame.len().min(size.saturating_sub(start));
            if let Some(dst) = buf.get_mut(start..start + n) {
                dst.copy_from_slice(&frame[..n]);
            }
            let len = if rng.chance(16) {
                rng.below(usize::MAX)
            } else {
                frame.len()
            };
            let ingress = if rng.chance(2) { Port::Lan } else { Port::Wan };
            let before = buf.clone();
            let drops_before: u64 = p.counters().drops.iter().sum();
            let encap_before = p.counters().encapsulated;
            let icmp_before = p.counters().icmp_sent;
            let v = if everything {
                p.process(&mut buf, start, len, ingress, rng.next(), &Everything)
            } else {
                p.process(&mut buf, start, len, ingress, rng.next(), &lookup())
            };
            calls += 1;
            if let Verdict::AwaitLanNeighbor {
                start: s, len: l, ..
            } = v
            {
                // The worker delivers a held frame once resolved, or drops it.
                if rng.chance(2) {
                    assert!(p.deliver_held(&mut buf, s, l, [2, 0, 0, 0, 0, 0x77]));
                } else {
                    p.drop_held();
                }
            }
            let c = p.counters();
            let drops: u64 = c.drops.iter().sum();
            assert_eq!(
                drops + c.encapsulated + c.decapsulated + c.arp_replies,
                calls,
                "each frame counted once"
            );
            match v {
                Verdict::Tx {
                    start: s, len: l, ..
                } => {
                    seen[0] = true;
                    let end = s.checked_add(l).expect("no overflow");
                    assert!(end <= buf.len(), "Tx inside the buffer");
                    assert!(l >= 14);
                    // Nothing written outside the old frame and the new one.
                    let lo = s.min(start);
                    let hi = end.max(start.saturating_add(len).min(buf.len()));
                    assert_eq!(buf[..lo], before[..lo], "wrote in front of the output");
                    assert_eq!(buf[hi..], before[hi..], "wrote past the output");
                    let tunnel = c.encapsulated > encap_before;
                    let icmp = c.icmp_sent > icmp_before;
                    check_ipv4_headers(
                        &buf[s..end],
                        &format!("{v:?} from {frame:02x?}"),
                        tunnel,
                        icmp,
                    );
                    if icmp {
                        seen[3] = true;
                        assert_eq!(drops, drops_before + 1, "the ICMP's reason is counted");
                    }
                }
                Verdict::AwaitLanNeighbor {
                    start: s, len: l, ..
                } => {
                    let end = s.checked_add(l).expect("no overflow");
                    assert!(end <= buf.len() && l >= 14, "held frame inside the buffer");
                }
                Verdict::Hold { .. } => unreachable!("no binding is in switchover here"),
                Verdict::Fragments { plan, .. } => {
                    seen[1] = true;
                    assert!(plan.count() >= 2);
                    for i in 0..plan.count().min(64) + 2 {
                        let mut dst = vec![0u8; rng.pick(&[0, 59, 60, 100, 600, 1514, 2048, 9100])];
                        if let Some((s, l)) = p.write_fragment(&buf, &plan, i, &mut dst) {
                            assert!(i < plan.count());
                            assert!(s + l <= dst.len());
                            check_ipv4_headers(&dst[s..s + l], "fragment", true, false);
                            let outer =
                                etherparse::Ipv4HeaderSlice::from_slice(&dst[s + 14..]).unwrap();
                            assert!(outer.total_len() <= p.config().tunnel_mtu);
                        }
                    }
                    // A foreign or cut source buffer is refused or harmless, never a panic.
                    let cut = rng.below(buf.len());
                    let mut dst = vec![0u8; 2048];
                    let _ =
                        p.write_fragment(&buf[..cut], &plan, rng.below(plan.count() + 2), &mut dst);
                    let junk: Vec<u8> = (0..rng.below(4096)).map(|_| rng.next() as u8).collect();
                    let _ = p.write_fragment(&junk, &plan, rng.below(plan.count() + 2), &mut dst);
                }
                Verdict::Drop(r) => {
                    seen[2] = true;
                    assert_eq!(drops, drops_before + 1);
                    assert!(c.drop_count(r) >= 1);
                    assert_eq!(buf, before, "a dropped frame is not modified");
                }
            }
        }
        let c = p.counters();
        for (t, d) in totals.drops.iter_mut().zip(c.drops) {
            *t += d;
        }
        totals.encapsulated += c.encapsulated;
        totals.decapsulated += c.decapsulated;
        totals.fragmented += c.fragmented;
        totals.fragments_out += c.fragments_out;
        totals.arp_replies += c.arp_replies;
        totals.icmp_sent += c.icmp_sent;
        totals.icmp_rate_limited += c.icmp_rate_limited;
    }
    // Shown with --nocapture: where the mutations went.
    for r in DropReason::ALL {
        eprintln!("{:>32} {}", r.as_str(), totals.drop_count(r));
    }
    eprintln!("{totals:?}");
    assert_eq!(seen, [true; 4], "the mutations reach every kind of verdict");
}
