//! TCP MSS clamping for segments crossing the tunnel (RFC 879, RFC 9293 §3.7.1; what
//! `iptables -j TCPMSS` and Cisco's `ip tcp adjust-mss` do on a tunnel interface).
//!
//! IPv4-in-IPv4 adds 20 bytes, so a host that believes its path MTU is 1500 sends segments
//! the tunnel cannot carry unfragmented. The MSS option of a SYN (or SYN-ACK) tells the
//! *other* end how large a segment it may send; lowering it to what fits the tunnel
//! (`tunnel_mtu - 20 outer - 20 inner IPv4 - 20 TCP`) keeps new connections off
//! fragmentation and path MTU discovery. Connections that already exist keep their MSS;
//! they rely on Fragmentation Needed (counted as the `frag_needed` drop) or an underlay that
//! carries full-size inner datagrams.
//!
//! Only the option's value and the TCP checksum change, the latter incrementally
//! (RFC 1624), so a first fragment (whose checksum covers data that is not here) is clamped
//! as correctly as a whole datagram. The checksum must already be complete: the caller
//! finishes a partial one (`partial::finish`) first.

use super::checksum::update_word;
use super::ipv4::Ipv4;

const PROTO_TCP: u8 = 6;
/// TCP header without options.
const TCP_HDR_LEN: usize = 20;
const FLAG_SYN: u8 = 0x02;
const FLAG_RST: u8 = 0x04;
const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_MSS_LEN: usize = 4;
/// Outer IPv4 + inner IPv4 (no options) + TCP (no options): what a segment adds to its MSS
/// inside the tunnel.
const OVERHEAD: u16 = 60;
/// Never advertise less than Linux's `TCP_MIN_MSS`: a tunnel that small is better served by
/// fragmentation (or Fragmentation Needed) than by segments of a few bytes.
const MIN_MSS: u16 = 88;

/// What [`clamp`] did with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Not a TCP SYN whose header is here: not TCP, a later fragment, RST, no SYN, or fewer
    /// bytes than a TCP header.
    NotSyn,
    /// A SYN without an MSS option (the peer assumes 536, RFC 9293 §3.7.1, which fits), or
    /// whose MSS already fits.
    Fits,
    /// An MSS option was lowered.
    Clamped,
    /// Data offset or options do not parse: left exactly as received.
    Malformed,
}

/// The largest MSS that fits a tunnel of `tunnel_mtu` without fragmentation.
pub(super) fn limit(tunnel_mtu: u16) -> u16 {
    tunnel_mtu.saturating_sub(OVERHEAD).max(MIN_MSS)
}

/// Lowers every MSS option above `max_mss` in the TCP SYN at `buf[ip_off..]` (`ip` is its
/// validated header) and patches the checksum. Never raises an MSS; never panics; writes
/// nothing unless the whole option list parses.
pub(super) fn clamp(buf: &mut [u8], ip_off: usize, ip: &Ipv4, max_mss: u16) -> Outcome {
    if ip.protocol != PROTO_TCP || !ip.is_first_fragment() {
        return Outcome::NotSyn;
    }
    let Some(l4) = ip_off
        .checked_add(ip.header_len)
        .and_then(|start| Some(start..start.checked_add(ip.payload_len())?))
        .and_then(|range| buf.get_mut(range))
    else {
        return Outcome::NotSyn;
    };
    let Some(fixed) = l4.first_chunk::<TCP_HDR_LEN>() else {
        return Outcome::NotSyn;
    };
    // RST with SYN is nonsense no one acts on; iptables' `--tcp-flags SYN,RST SYN` as well.
    if fixed[13] & (FLAG_SYN | FLAG_RST) != FLAG_SYN {
        return Outcome::NotSyn;
    }
    let header_len = usize::from(fixed[12] >> 4) * 4;
    let Some(options) = l4.get(TCP_HDR_LEN..header_len) else {
        // Data offset below 5, or options past the datagram (or cut by fragmentation).
        return Outcome::Malformed;
    };
    // First pass: validate the whole list; nothing is written for a malformed one.
    let mut needs_clamp = false;
    let mut at = 0;
    loop {
        match next_option(options, at) {
            Step::Mss { value_at, next } => {
                needs_clamp |= mss_at(options, value_at) > max_mss;
                at = next;
            }
            Step::Other { next } => at = next,
            Step::End => break,
            Step::Malformed => return Outcome::Malformed,
        }
    }
    if !needs_clamp {
        return Outcome::Fits;
    }
    // Second pass: the list is valid, lower each MSS that is too big (a SYN carries one;
    // should one carry several, the receiver might honour any of them).
    let mut check = u16::from_be_bytes([fixed[16], fixed[17]]);
    let mut at = 0;
    while let Some(options) = l4.get(TCP_HDR_LEN..header_len) {
        let value_at = match next_option(options, at) {
            Step::Mss { value_at, next } => {
                at = next;
                value_at
            }
            Step::Other { next } => {
                at = next;
                continue;
            }
            Step::End | Step::Malformed => break,
        };
        let pos = TCP_HDR_LEN + value_at;
        let Some(field) = l4.get_mut(pos..pos + 2) else {
            break;
        };
        let old = u16::from_be_bytes([field[0], field[1]]);
        if old <= max_mss {
            continue;
        }
        field.copy_from_slice(&max_mss.to_be_bytes());
        // The checksum sums 16-bit words from the start of the header; a value at an odd
        // offset contributes its bytes swapped (RFC 1071 §2(B), byte order independence).
        let (o, n) = if pos.is_multiple_of(2) {
            (old, max_mss)
        } else {
            (old.swap_bytes(), max_mss.swap_bytes())
        };
        check = update_word(check, o, n);
    }
    if let Some(field) = l4.get_mut(16..18) {
        field.copy_from_slice(&check.to_be_bytes());
    }
    Outcome::Clamped
}

/// The MSS a TCP SYN (or SYN-ACK) announces: `l4` is its TCP header and data, `protocol`
/// the IPv4 header's. The smallest if it carries several; `None` if it is no SYN, has no
/// MSS option, or its options do not parse.
pub(super) fn announced(l4: &[u8], protocol: u8) -> Option<u16> {
    if protocol != PROTO_TCP {
        return None;
    }
    let fixed = l4.first_chunk::<TCP_HDR_LEN>()?;
    if fixed[13] & (FLAG_SYN | FLAG_RST) != FLAG_SYN {
        return None;
    }
    let options = l4.get(TCP_HDR_LEN..usize::from(fixed[12] >> 4) * 4)?;
    let mut smallest = None;
    let mut at = 0;
    loop {
        match next_option(options, at) {
            Step::Mss { value_at, next } => {
                let mss = mss_at(options, value_at);
                smallest = Some(smallest.map_or(mss, |s: u16| s.min(mss)));
                at = next;
            }
            Step::Other { next } => at = next,
            Step::End => return smallest,
            Step::Malformed => return None,
        }
    }
}

/// One step of the option walk.
enum Step {
    /// An MSS option whose value starts at `options[value_at]`; the next option at `next`.
    Mss { value_at: usize, next: usize },
    /// Any other option (or NOP); the next one at `next`.
    Other { next: usize },
    /// End of the list (EOL, or no bytes left).
    End,
    /// A length below 2, past the header, or an MSS option not 4 bytes long.
    Malformed,
}

/// The option at `options[at]` (RFC 9293 §3.1: kinds 0 and 1 are one byte, every other
/// option is kind, length, data).
fn next_option(options: &[u8], at: usize) -> Step {
    let Some(&kind) = options.get(at) else {
        return Step::End;
    };
    match kind {
        OPT_EOL => Step::End,
        OPT_NOP => Step::Other { next: at + 1 },
        _ => {
            let Some(&len) = options.get(at + 1) else {
                return Step::Malformed;
            };
            let len = usize::from(len);
            if len < 2 || at + len > options.len() {
                return Step::Malformed;
            }
            if kind == OPT_MSS {
                if len != OPT_MSS_LEN {
                    return Step::Malformed;
                }
                return Step::Mss {
                    value_at: at + 2,
                    next: at + len,
                };
            }
            Step::Other { next: at + len }
        }
    }
}

/// The MSS value at `options[at..at + 2]` (0 if cut short, which a validated option is not).
fn mss_at(options: &[u8], at: usize) -> u16 {
    match options.get(at..at + 2) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::{clamp, limit, Outcome};

    /// MSS 1460 (kind 2, length 4), SACK permitted, a NOP and window scale 7: what Linux
    /// sends in a SYN, less the timestamps.
    const LINUX_SYN: [u8; 12] = [2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, 7, 0, 0];
    const SYN: u8 = 0x02;
    const SYN_ACK: u8 = 0x12;

    fn mss_opts(mss: u16) -> [u8; 4] {
        let [hi, lo] = mss.to_be_bytes();
        [2, 4, hi, lo]
    }

    /// Runs `frame` through `p` from `ingress` and returns the verdict and the output frame.
    fn run(p: &mut Pipeline, frame: &[u8], ingress: Port) -> (Verdict, Vec<u8>) {
        let (mut buf, start) = place(frame);
        let v = p.process(&mut buf, start, frame.len(), ingress, 0, &lookup());
        let out = match v {
            Verdict::Tx { start, len, .. } => buf[start..start + len].to_vec(),
            _ => Vec::new(),
        };
        (v, out)
    }

    /// The inner datagram of an encapsulated frame (untagged, outer header without options).
    fn tunnelled(out: &[u8]) -> &[u8] {
        trim_datagram(&out[14 + 20..])
    }

    /// `got` equals `sent` but for the inner TTL and header checksum (bytes 8, 10, 11), the
    /// TCP checksum and the MSS value at `mss_at` (offsets in the datagram).
    fn only_mss_changed(got: &[u8], sent: &[u8], mss_at: Option<usize>) {
        assert_eq!(got.len(), sent.len());
        let tcp = 20;
        for (i, (a, b)) in got.iter().zip(sent).enumerate() {
            let allowed = [8, 10, 11, tcp + 16, tcp + 17].contains(&i)
                || mss_at.is_some_and(|m| i == m || i == m + 1);
            if !allowed {
                assert_eq!(a, b, "byte {i} changed");
            }
        }
    }

    #[test]
    fn syn_and_syn_ack_with_mss_1460_are_clamped_to_1440_at_mtu_1500() {
        for flags in [SYN, SYN_ACK] {
            let input = Ip::tcp(LAN_HOST, VM, flags, &LINUX_SYN, b"").frame();
            let sent = inner_datagram(&input).to_vec();
            assert_eq!(tcp_of(&sent), (true, vec![1460]));
            let mut p = pipeline(1);
            let (v, out) = run(&mut p, &input, Port::Lan);
            expect_tx(v);
            let got = tunnelled(&out);
            assert_eq!(tcp_of(got), (true, vec![1440]), "flags {flags:#x}");
            only_mss_changed(got, &sent, Some(20 + 20 + 2));
            assert_eq!(p.counters().mss_clamped, 1);
            assert_eq!(p.counters().encapsulated, 1);
            // 1440 + 20 TCP + 20 inner + 20 outer: the tunnel MTU exactly.
            assert_eq!(1440 + 60, p.config().tunnel_mtu);
        }
    }

    #[test]
    fn an_mss_that_fits_a_syn_without_one_and_other_segments_are_untouched() {
        let cases: Vec<(&str, Ip)> = vec![
            ("mss 1440", Ip::tcp(LAN_HOST, VM, SYN, &mss_opts(1440), b"")),
            ("mss 536", Ip::tcp(LAN_HOST, VM, SYN, &mss_opts(536), b"")),
            (
                "syn without mss",
                Ip::tcp(LAN_HOST, VM, SYN, &[4, 2, 1, 1, 3, 3, 7, 0], b""),
            ),
            ("syn without options", Ip::tcp(LAN_HOST, VM, SYN, &[], b"")),
            (
                "ack carrying an mss option",
                Ip::tcp(LAN_HOST, VM, 0x10, &LINUX_SYN, b"data"),
            ),
            (
                "syn|rst",
                Ip::tcp(LAN_HOST, VM, SYN | 0x04, &LINUX_SYN, b""),
            ),
            ("udp", Ip::udp(LAN_HOST, VM, &LINUX_SYN)),
            (
                "later fragment of a syn-looking datagram",
                Ip::tcp(LAN_HOST, VM, SYN, &LINUX_SYN, b"")
                    .df(false)
                    .frag(false, 8),
            ),
        ];
        for (name, ip) in cases {
            let input = ip.frame();
            let mut p = pipeline(1);
            let (v, out) = run(&mut p, &input, Port::Lan);
            expect_tx_named(v, name);
            check_encapsulated(&out, inner_datagram(&input), 1);
            assert_eq!(p.counters().mss_clamped, 0, "{name}");
        }
    }

    #[test]
    fn malformed_options_are_left_alone_without_panic() {
        let mut cut_header = Ip::tcp(LAN_HOST, VM, SYN, &LINUX_SYN, b"").datagram();
        // A data offset of 15 words (60 bytes) in a 32-byte segment: options past the
        // datagram.
        cut_header[20 + 12] = 0xf0;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "option length 0",
                Ip::tcp(LAN_HOST, VM, SYN, &[3, 0, 2, 4, 5, 0xb4, 0, 0], b"").frame(),
            ),
            (
                "option length 1",
                Ip::tcp(LAN_HOST, VM, SYN, &[2, 4, 5, 0xb4, 8, 1, 0, 0], b"").frame(),
            ),
            (
                "option past the header",
                Ip::tcp(LAN_HOST, VM, SYN, &[2, 4, 5, 0xb4, 1, 1, 8, 10], b"").frame(),
            ),
            (
                "mss option of length 3",
                Ip::tcp(LAN_HOST, VM, SYN, &[2, 3, 5, 0xb4], b"").frame(),
            ),
            (
                "mss option of length 6",
                Ip::tcp(LAN_HOST, VM, SYN, &[2, 6, 5, 0xb4, 0, 0, 0, 0], b"").frame(),
            ),
            (
                "kind without length at the end",
                Ip::tcp(LAN_HOST, VM, SYN, &[2, 4, 5, 0xb4, 1, 1, 1, 8], b"").frame(),
            ),
            (
                "data offset past the datagram",
                Ip::raw(LAN_HOST, VM, 6, &cut_header[20..]).frame(),
            ),
            (
                "data offset 4",
                Ip::raw(LAN_HOST, VM, 6, &{
                    let mut t = cut_header[20..].to_vec();
                    t[12] = 0x40;
                    t
                })
                .frame(),
            ),
            (
                "19 bytes of tcp",
                Ip::raw(LAN_HOST, VM, 6, &cut_header[20..39]).frame(),
            ),
            ("no tcp at all", Ip::raw(LAN_HOST, VM, 6, &[]).frame()),
        ];
        for (name, input) in cases {
            let mut p = pipeline(1);
            let (v, out) = run(&mut p, &input, Port::Lan);
            expect_tx_named(v, name);
            check_encapsulated(&out, inner_datagram(&input), 1);
            assert_eq!(p.counters().mss_clamped, 0, "{name}");
        }
        // The pure function says why.
        let d = Ip::tcp(LAN_HOST, VM, SYN, &[3, 0, 2, 4, 5, 0xb4, 0, 0], b"").datagram();
        let ip = ipv4::parse(&d).unwrap();
        let mut buf = d.clone();
        assert_eq!(clamp(&mut buf, 0, &ip, 1000), Outcome::Malformed);
        assert_eq!(buf, d);
        let ip = ipv4::parse(&cut_header).unwrap();
        let mut buf = cut_header.clone();
        assert_eq!(clamp(&mut buf, 0, &ip, 1000), Outcome::Malformed);
        assert_eq!(buf, cut_header);
    }

    /// Every byte string as options, every clamp: never a panic, and whenever something was
    /// written the checksum still verifies and no MSS went up.
    #[test]
    fn arbitrary_option_bytes_never_panic_and_keep_the_checksum() {
        let mut x: u32 = 0x2545_f491;
        let mut clamped = 0;
        for round in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = (x as usize % 11) * 4;
            let mut opts: Vec<u8> = (0..len)
                .map(|i| (x.rotate_left(i as u32 * 3) as u8) % 9)
                .collect();
            if round % 3 == 0 && len >= 4 {
                // Often a well-formed MSS somewhere, at any alignment.
                let at = (x as usize >> 8) % (len - 3);
                for b in &mut opts[..at] {
                    *b = 1;
                }
                opts[at..at + 4].copy_from_slice(&[2, 4, (x >> 20) as u8, (x >> 12) as u8]);
            }
            let d = Ip::tcp(LAN_HOST, VM, SYN, &opts, b"abc").datagram();
            let ip = ipv4::parse(&d).unwrap();
            let mut buf = d.clone();
            let max = (x >> 16) as u16;
            match clamp(&mut buf, 0, &ip, max) {
                Outcome::Clamped => {
                    clamped += 1;
                    let (ok, after) = tcp_of(&buf);
                    let (_, before) = tcp_of(&d);
                    assert!(ok, "checksum after clamping {opts:02x?} to {max}");
                    for (a, b) in after.iter().zip(&before) {
                        assert_eq!(*a, (*b).min(max));
                    }
                }
                _ => assert_eq!(buf, d, "{opts:02x?}"),
            }
        }
        assert!(clamped > 1000, "{clamped}");
    }

    #[test]
    fn odd_alignment_and_duplicate_mss_options() {
        // NOP, MSS 9000, MSS 1460 (at an odd offset), NOP NOP NOP.
        let opts = [1, 2, 4, 0x23, 0x28, 2, 4, 0x05, 0xb4, 1, 1, 1];
        let input = Ip::tcp(LAN_HOST, VM, SYN, &opts, b"").frame();
        let mut p = pipeline(1);
        let (_, out) = run(&mut p, &input, Port::Lan);
        assert_eq!(tcp_of(tunnelled(&out)), (true, vec![1440, 1440]));
        assert_eq!(p.counters().mss_clamped, 1, "one segment");
    }

    #[test]
    fn clamping_disabled_leaves_syns_alone() {
        let mut c = config();
        c.mss_clamp = false;
        let mut p = Pipeline::new(c, 1);
        let input = Ip::tcp(LAN_HOST, VM, SYN, &LINUX_SYN, b"").frame();
        let (_, out) = run(&mut p, &input, Port::Lan);
        check_encapsulated(&out, inner_datagram(&input), 1);
        assert_eq!(tcp_of(tunnelled(&out)), (true, vec![1460]));
        assert_eq!(p.counters().mss_clamped, 0);
    }

    #[test]
    fn the_limit_follows_the_tunnel_mtu() {
        assert_eq!(limit(1500), 1440);
        assert_eq!(limit(1520), 1460, "an underlay of 1520 needs no clamping");
        assert_eq!(limit(9000), 8940);
        assert_eq!(limit(100), 88, "never below TCP_MIN_MSS");
        assert_eq!(limit(0), 88);
        for (mtu, want) in [(1520, 1460), (1400, 1340), (9000, 1460)] {
            let mut c = config();
            c.tunnel_mtu = mtu;
            let mut p = Pipeline::new(c, 1);
            let input = Ip::tcp(LAN_HOST, VM, SYN, &LINUX_SYN, b"").frame();
            let (_, out) = run(&mut p, &input, Port::Lan);
            assert_eq!(tcp_of(tunnelled(&out)), (true, vec![want]), "mtu {mtu}");
            assert_eq!(
                p.counters().mss_clamped,
                u64::from(want < 1460),
                "mtu {mtu}"
            );
        }
    }

    /// A local sender's SYN with the checksum left to the device (CHECKSUM_PARTIAL): finished
    /// first, then clamped; the receiver sees a whole, correct checksum.
    #[test]
    fn a_partial_checksum_is_finished_then_clamped() {
        let ip = Ip::tcp(LAN_HOST, VM, SYN, &LINUX_SYN, b"");
        let mut d = ip.datagram();
        // What Linux leaves in the field: the folded pseudo-header sum.
        let tcp_len = d.len() - 20;
        let mut pseudo = checksum::sum(0, &LAN_HOST);
        pseudo = checksum::sum(pseudo, &VM);
        let partial = checksum::fold(pseudo + 6 + tcp_len as u32);
        d[20 + 16..20 + 18].copy_from_slice(&partial.to_be_bytes());
        let input = Ip::raw(LAN_HOST, VM, 6, &d[20..]).frame();
        assert!(!tcp_of(inner_datagram(&input)).0, "partial does not verify");
        let mut p = pipeline(1);
        let (v, out) = run(&mut p, &input, Port::Lan);
        expect_tx(v);
        assert_eq!(tcp_of(tunnelled(&out)), (true, vec![1440]));
        assert_eq!(p.counters().checksums_finished, 1);
        assert_eq!(p.counters().mss_clamped, 1);
    }

    #[test]
    fn a_vlan_tagged_syn_is_clamped() {
        let input = Ip::tcp(LAN_HOST, VM, SYN, &LINUX_SYN, b"")
            .vlan(100)
            .frame();
        let mut p = pipeline(1);
        let (v, out) = run(&mut p, &input, Port::Lan);
        expect_tx(v);
        let got = tunnelled(&out);
        assert_eq!(tcp_of(got), (true, vec![1440]));
        only_mss_changed(got, inner_datagram(&input), Some(42));
    }

    /// A VM's SYN-ACK reverse-tunnelled to the home agent is clamped on the way out of the
    /// tunnel as well (this end's MTU sizes what the home-link host sends back).
    #[test]
    fn the_home_agent_clamps_what_it_decapsulates() {
        let inner = Ip::tcp(VM, LAN_HOST, SYN_ACK, &LINUX_SYN, b"");
        let input = Ip::ipip(CARE_OF, HA, inner.clone()).frame();
        let mut p = pipeline(1);
        let (v, out) = run(&mut p, &input, Port::Wan);
        expect_tx(v);
        let got = trim_datagram(&out[14..]);
        assert_eq!(tcp_of(got), (true, vec![1440]));
        only_mss_changed(got, &inner.datagram(), Some(42));
        assert_eq!(p.counters().decapsulated, 1);
        assert_eq!(p.counters().mss_clamped, 1);
    }

    /// A first fragment carries the TCP header: clamped, its checksum (over the whole segment,
    /// not all here) patched incrementally; the pieces the tunnel cuts it into carry it.
    #[test]
    fn first_fragments_and_tunnel_fragments_carry_the_clamp() {
        let whole = Ip::tcp(LAN_HOST, VM, SYN, &LINUX_SYN, &[7; 1000]).df(false);
        let d = whole.datagram();
        // The first 520 bytes of data as a first fragment.
        let first = Ip::raw(LAN_HOST, VM, 6, &d[20..540])
            .df(false)
            .frag(true, 0);
        let mut p = pipeline(1);
        let (_, out) = run(&mut p, &first.frame(), Port::Lan);
        let got = tunnelled(&out);
        // Reassemble with the untouched rest and verify the whole segment.
        let mut re = d.clone();
        re[20..540].copy_from_slice(&got[20..]);
        assert_eq!(tcp_of(&re), (true, vec![1440]));
        assert_eq!(p.counters().mss_clamped, 1);

        // DF clear, bigger than a 600-byte tunnel: fragmented, the first piece clamped
        // to 540.
        let mut c = config();
        c.tunnel_mtu = 600;
        let mut p = Pipeline::new(c, 1);
        let input = whole.frame();
        let (mut buf, start) = place(&input);
        let Verdict::Fragments { plan, .. } =
            p.process(&mut buf, start, input.len(), Port::Lan, 0, &lookup())
        else {
            panic!("fragments")
        };
        let mut re = Vec::new();
        for i in 0..plan.count() {
            let mut dst = vec![0; 2048];
            let (s, l) = p.write_fragment(&buf, &plan, i, &mut dst).unwrap();
            let piece = tunnelled(&dst[s..s + l]);
            let ihl = usize::from(piece[0] & 0xf) * 4;
            re.extend_from_slice(&piece[ihl..]);
        }
        let mut whole_after = d.clone();
        whole_after[20..].copy_from_slice(&re);
        assert_eq!(tcp_of(&whole_after), (true, vec![540]));
        assert_eq!(p.counters().mss_clamped, 1);
    }
}
