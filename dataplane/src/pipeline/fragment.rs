//! Fragmentation of a tunnelled datagram that does not fit the tunnel and may be fragmented
//! (DF clear).
//!
//! The inner datagram is fragmented (RFC 791 §2.3 and §3.2, "An Example Fragmentation
//! Procedure") and each fragment is encapsulated on its own, rather than fragmenting the outer
//! datagram (which RFC 2003 §3.1 would also allow with DF clear): the care-of endpoint then
//! only decapsulates, with no reassembly (ours drops outer fragments, see `decap`), and the
//! final destination reassembles. `process` only plans; the worker asks for each piece with
//! [`Pipeline::write_fragment`] into a fresh frame, so nothing is allocated.

use std::net::Ipv4Addr;

use super::ether;
use super::ipv4::{self, Ipv4, NewHeader};
use super::{DropReason, Pipeline};

/// Outer Ethernet + outer IPv4.
const OUTER: usize = ether::ETH_LEN + ipv4::HDR_LEN;
/// The copied flag of an option type (RFC 791 §3.1, "Options").
const OPT_COPIED: u8 = 0x80;
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
/// Reserved flag bit: carried over as received.
const FLAG_RESERVED: u16 = 0x8000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// How to cut one datagram into tunnel-sized pieces. Small, `Copy`, no heap: it describes the
/// source frame by offsets, so it is only meaningful with the buffer it was planned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentPlan {
    /// Offset of the inner IPv4 header in the source buffer.
    ip_off: usize,
    /// Inner header length, options included (first piece).
    header_len: u16,
    /// Header length of the later pieces: only options with the copied flag, padded to 4.
    later_header_len: u16,
    /// Inner total length (to recognise the source frame).
    total_len: u16,
    /// Data bytes in the first piece and in each later one (multiples of 8).
    first_data: u16,
    later_data: u16,
    count: u16,
    tos: u8,
    /// Flags and offset of the datagram being fragmented (it may be a fragment itself).
    flags_frag: u16,
    care_of: Ipv4Addr,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
}

impl FragmentPlan {
    /// Number of pieces (at least 2).
    pub fn count(&self) -> usize {
        usize::from(self.count)
    }

    /// Offset and length of piece `index` in the inner datagram's data.
    fn piece(&self, index: usize) -> Option<(usize, usize)> {
        if index >= self.count() {
            return None;
        }
        let data_len = usize::from(self.total_len).checked_sub(usize::from(self.header_len))?;
        let (off, max) = match index.checked_sub(1) {
            None => (0, usize::from(self.first_data)),
            Some(later) => (
                usize::from(self.first_data)
                    .checked_add(later.checked_mul(usize::from(self.later_data))?)?,
                usize::from(self.later_data),
            ),
        };
        let len = data_len.checked_sub(off)?.min(max);
        (len > 0).then_some((off, len))
    }
}

/// Plans the pieces for the validated datagram at `buf[ip_off..]` so that every outer
/// datagram (20 + inner piece) is at most `tunnel_mtu`.
pub(crate) fn plan(
    buf: &[u8],
    ip_off: usize,
    ip: &Ipv4,
    tunnel_mtu: u16,
    care_of: Ipv4Addr,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
) -> Result<FragmentPlan, DropReason> {
    let header = buf
        .get(ip_off..ip_off.saturating_add(ip.header_len))
        .ok_or(DropReason::Ipv4IhlBeyondFrame)?;
    let options = header.get(ipv4::HDR_LEN..).unwrap_or_default();
    let mut copied = 0;
    for_each_copied_option(options, |o| copied += o.len());
    let later_header_len = (ipv4::HDR_LEN + copied).next_multiple_of(4);

    // Room for the inner piece inside the tunnel, then data rounded down to 8 (RFC 791:
    // offsets count 8-byte blocks).
    let room = usize::from(tunnel_mtu)
        .checked_sub(ipv4::HDR_LEN)
        .ok_or(DropReason::CannotFragment)?;
    let first_data = room
        .checked_sub(ip.header_len)
        .ok_or(DropReason::CannotFragment)?
        & !7;
    let later_data = room
        .checked_sub(later_header_len)
        .ok_or(DropReason::CannotFragment)?
        & !7;
    if first_data == 0 || later_data == 0 {
        return Err(DropReason::CannotFragment);
    }
    let data_len = ip.payload_len();
    let rest = data_len.saturating_sub(first_data);
    let count = 1 + rest.div_ceil(later_data);
    // The last piece's offset must fit the 13-bit field (a datagram can claim to end past
    // 65535 bytes when it is itself a late fragment).
    let last_off = match count.checked_sub(2) {
        None => 0,
        Some(n) => first_data + n * later_data,
    };
    let last_units = usize::from(ip.frag_offset()) + last_off / 8;
    if last_units > usize::from(OFFSET_MASK) {
        return Err(DropReason::CannotFragment);
    }
    let to_u16 = |v: usize| u16::try_from(v).map_err(|_| DropReason::CannotFragment);
    Ok(FragmentPlan {
        ip_off,
        header_len: to_u16(ip.header_len)?,
        later_header_len: to_u16(later_header_len)?,
        total_len: to_u16(ip.total_len)?,
        first_data: to_u16(first_data)?,
        later_data: to_u16(later_data)?,
        count: to_u16(count)?,
        tos: ip.tos,
        flags_frag: ip.flags_frag,
        care_of,
        dst_mac,
        src_mac,
    })
}

/// Calls `f` with every option that has the copied flag (RFC 791 §3.1). A malformed option
/// list stops the walk: what follows it is not copied (the first piece still carries the
/// header as received).
fn for_each_copied_option(options: &[u8], mut f: impl FnMut(&[u8])) {
    let mut i = 0;
    while let Some(&kind) = options.get(i) {
        match kind {
            OPT_END => break,
            OPT_NOP => i += 1,
            _ => {
                let Some(&len) = options.get(i + 1) else {
                    break;
                };
                let len = usize::from(len);
                let Some(opt) = options.get(i..i + len).filter(|_| len >= 2) else {
                    break;
                };
                if kind & OPT_COPIED != 0 {
                    f(opt);
                }
                i += len;
            }
        }
    }
}

impl Pipeline {
    /// Writes piece `index` (0-based, `< plan.count()`) of a `Fragments` verdict as a complete
    /// outer Ethernet frame into `dst` (the whole buffer of a fresh frame). `src` is the
    /// buffer `process` was given. Returns `(start, len)` within `dst`, or `None` if the piece
    /// does not fit, `index` is out of range or `src` no longer holds the planned datagram.
    ///
    /// Each piece gets its own outer Identification; the inner Identification is the
    /// original's, so the destination can reassemble.
    pub fn write_fragment(
        &mut self,
        src: &[u8],
        plan: &FragmentPlan,
        index: usize,
        dst: &mut [u8],
    ) -> Option<(usize, usize)> {
        let (data_off, data_len) = plan.piece(index)?;
        let header_len = usize::from(plan.header_len);
        let header = src.get(plan.ip_off..plan.ip_off.checked_add(header_len)?)?;
        let base = header.first_chunk::<{ ipv4::HDR_LEN }>()?;
        if u16::from_be_bytes([base[2], base[3]]) != plan.total_len {
            return None;
        }
        let data_start = plan.ip_off.checked_add(header_len)?.checked_add(data_off)?;
        let data = src.get(data_start..data_start.checked_add(data_len)?)?;

        let is_last = index + 1 == plan.count();
        let inner_header_len = if index == 0 {
            header_len
        } else {
            usize::from(plan.later_header_len)
        };
        let inner_len = inner_header_len + data_len;
        let frame_len = OUTER + inner_len;
        let out = dst.get_mut(..frame_len)?;

        ether::write(out, plan.dst_mac, plan.src_mac, None, ether::ETHERTYPE_IPV4)?;

        let (inner_hdr, payload) = out
            .get_mut(OUTER..)?
            .split_at_mut_checked(inner_header_len)?;
        if index == 0 {
            inner_hdr.copy_from_slice(header);
        } else {
            let (fixed, opts) = inner_hdr.split_at_mut_checked(ipv4::HDR_LEN)?;
            fixed.copy_from_slice(base);
            // Version 4 and the shorter IHL (later_header_len <= 60, so it fits 4 bits).
            *fixed.first_mut()? = 0x40 | (plan.later_header_len / 4) as u8;
            let mut at = 0;
            for_each_copied_option(header.get(ipv4::HDR_LEN..)?, |o| {
                if let Some(d) = opts.get_mut(at..at + o.len()) {
                    d.copy_from_slice(o);
                    at += o.len();
                }
            });
            // Pad with End of Option List to the 4-byte boundary.
            opts.get_mut(at..)?.fill(OPT_END);
        }
        // RFC 791: offsets add up from the original's; MF on every piece but the last, and on
        // the last too if the original was not the last fragment of its datagram.
        let offset =
            (plan.flags_frag & OFFSET_MASK).checked_add(u16::try_from(data_off / 8).ok()?)?;
        let more = !is_last || plan.flags_frag & FLAG_MF != 0;
        let flags_frag =
            (plan.flags_frag & FLAG_RESERVED) | if more { FLAG_MF } else { 0 } | offset;
        ipv4::rewrite_len_frag(inner_hdr, u16::try_from(inner_len).ok()?, flags_frag)?;
        payload.copy_from_slice(data);

        let outer = NewHeader {
            tos: plan.tos,
            total_len: u16::try_from(ipv4::HDR_LEN + inner_len).ok()?,
            ident: self.next_ident(),
            // DF copied from the inner header, which had it clear.
            flags_frag: 0,
            ttl: self.config.outer_ttl,
            protocol: ipv4::PROTO_IPIP,
            src: self.config.ha_addr,
            dst: plan.care_of,
        };
        ipv4::write(ipv4::base_mut(out, ether::ETH_LEN)?, &outer);

        let len = ether::pad_to_min(dst, 0, frame_len);
        self.counters.fragments_out += 1;
        Some((0, len))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::for_each_copied_option;

    struct Case {
        name: &'static str,
        input: Vec<u8>,
        mtu: u16,
        pieces: usize,
    }

    fn cases() -> Vec<Case> {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let udp = |n: usize| Ip::udp(LAN_HOST, VM, &payload[..n]).df(false);
        vec![
            Case {
                name: "1500-byte datagram, mtu 1500",
                input: udp(1472).frame(),
                mtu: 1500,
                pieces: 2,
            },
            Case {
                name: "one byte over",
                input: udp(1453).frame(),
                mtu: 1500,
                pieces: 2,
            },
            Case {
                name: "mtu 576, 3 kB",
                input: udp(3000).frame(),
                mtu: 576,
                pieces: 6,
            },
            Case {
                name: "options: copied (0x83 LSRR, 0x94 router alert) and not (0x07 RR)",
                input: udp(1400)
                    .options(&[
                        0x07, 0x07, 0x04, 0, 0, 0, 0,    // record route, not copied
                        0x01, // nop
                        0x83, 0x07, 0x04, 10, 1, 1, 1, // loose source route, copied
                        0x94, 0x04, 0x00, 0x00, // router alert, copied
                        0x00, // end
                    ])
                    .frame(),
                mtu: 576,
                pieces: 3,
            },
            Case {
                name: "vlan-tagged input, tag not in the tunnel",
                input: udp(2000).vlan(100).frame(),
                mtu: 1000,
                pieces: 3,
            },
            Case {
                name: "a middle fragment (MF, offset 100) fragmented again",
                input: udp(2000).frag(true, 100).frame(),
                mtu: 1000,
                pieces: 3,
            },
            Case {
                name: "a last fragment (offset 185) fragmented again",
                input: udp(1600).frag(false, 185).frame(),
                mtu: 800,
                pieces: 3,
            },
            Case {
                name: "minimum mtu 68 + 20",
                input: udp(200).frame(),
                mtu: 88,
                pieces: 5,
            },
        ]
    }

    #[test]
    fn fragment_fixtures() {
        for c in cases() {
            let mut cfg = config();
            cfg.tunnel_mtu = c.mtu;
            let mut p = Pipeline::new(cfg, 0x7000);
            let (mut buf, start) = place(&c.input);
            let v = p.process(&mut buf, start, c.input.len(), Port::Lan, 0, &lookup());
            let Verdict::Fragments { port, plan, slot } = v else {
                panic!("{}: {v:?}", c.name)
            };
            assert_eq!((port, slot), (Port::Wan, Some(VM_SLOT)), "{}", c.name);
            assert_eq!(plan.count(), c.pieces, "{}", c.name);

            let original = inner_datagram(&c.input).to_vec();
            let mut frames = Vec::new();
            for i in 0..plan.count() {
                let mut dst = vec![0xabu8; 2048];
                let (s, len) = p.write_fragment(&buf, &plan, i, &mut dst).expect(c.name);
                frames.push(dst[s..s + len].to_vec());
            }
            // Exact bytes against an independent construction, then reassembly with
            // etherparse's defragmenter.
            let expected = expected_fragments(&p, &original, c.mtu, 0x7000);
            assert_eq!(frames.len(), expected.len(), "{}", c.name);
            for (i, (got, want)) in frames.iter().zip(&expected).enumerate() {
                assert_eq!(got, want, "{} piece {i}\n{}", c.name, diff(got, want));
            }
            check_fragments(&frames, &original, c.mtu, 0x7000);
            let c2 = p.counters();
            assert_eq!(
                (c2.fragmented, c2.fragments_out, c2.encapsulated),
                (1, c.pieces as u64, 1)
            );
            // Out of range, too small a destination, a source that changed.
            let mut dst = vec![0u8; 2048];
            assert_eq!(p.write_fragment(&buf, &plan, plan.count(), &mut dst), None);
            assert_eq!(p.write_fragment(&buf, &plan, 0, &mut dst[..100]), None);
            assert_eq!(
                p.write_fragment(&buf[..start + 40], &plan, 0, &mut dst),
                None
            );
        }
    }

    #[test]
    fn cannot_fragment() {
        let mut cfg = config();
        cfg.tunnel_mtu = 40; // 20 outer + 20 inner header leaves no data
        let mut p = Pipeline::new(cfg, 1);
        let input = Ip::udp(LAN_HOST, VM, &[0; 100]).df(false).frame();
        let (mut buf, start) = place(&input);
        assert_eq!(
            p.process(&mut buf, start, input.len(), Port::Lan, 0, &lookup()),
            Verdict::Drop(DropReason::CannotFragment)
        );
        // A late fragment whose pieces' offsets would not fit 13 bits.
        let mut cfg = config();
        cfg.tunnel_mtu = 576;
        let mut p = Pipeline::new(cfg, 1);
        let input = Ip::udp(LAN_HOST, VM, &[0; 1400])
            .df(false)
            .frag(false, 8100)
            .frame();
        let (mut buf, start) = place(&input);
        assert_eq!(
            p.process(&mut buf, start, input.len(), Port::Lan, 0, &lookup()),
            Verdict::Drop(DropReason::CannotFragment)
        );
    }

    #[test]
    fn option_walk_stops_at_malformed() {
        let walk = |o: &[u8]| {
            let mut v = Vec::new();
            for_each_copied_option(o, |x| v.extend_from_slice(x));
            v
        };
        assert_eq!(
            walk(&[0x83, 3, 9, 0x07, 3, 0, 0x94, 2]),
            vec![0x83, 3, 9, 0x94, 2]
        );
        assert_eq!(walk(&[0x83, 1, 9, 9]), Vec::<u8>::new(), "length below 2");
        assert_eq!(
            walk(&[0x83, 9, 9, 9]),
            Vec::<u8>::new(),
            "length past the end"
        );
        assert_eq!(walk(&[0x01, 0x83]), Vec::<u8>::new(), "no length byte");
        assert_eq!(
            walk(&[0x00, 0x83, 2]),
            Vec::<u8>::new(),
            "after end of list"
        );
    }
}
