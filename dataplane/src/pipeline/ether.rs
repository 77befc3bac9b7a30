//! Ethernet II and single 802.1Q tag (IEEE 802.1Q §9.6): parse once, write in place.

use super::DropReason;

/// Ethernet II header length.
pub(crate) const ETH_LEN: usize = 14;
/// 802.1Q tag length (TPID + TCI).
pub(crate) const VLAN_LEN: usize = 4;
/// Minimum Ethernet frame without FCS (IEEE 802.3 §4.2.3.3): shorter frames are padded.
pub(crate) const MIN_FRAME: usize = 60;

pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(crate) const ETHERTYPE_ARP: u16 = 0x0806;
pub(crate) const ETHERTYPE_VLAN: u16 = 0x8100;
pub(crate) const ETHERTYPE_QINQ: u16 = 0x88a8;

pub(crate) const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// The link-layer header of a received frame, copied out (it is small) so the bytes it came
/// from can be overwritten while building a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct L2 {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Tag Control Information of a single 802.1Q tag (PCP, DEI, VID), if tagged.
    pub vlan_tci: Option<u16>,
    /// Ethertype after the tag, if any.
    pub ethertype: u16,
}

impl L2 {
    /// Length of the link-layer header: 14, or 18 with a tag.
    pub fn len(&self) -> usize {
        if self.vlan_tci.is_some() {
            ETH_LEN + VLAN_LEN
        } else {
            ETH_LEN
        }
    }
}

/// True for group (multicast or broadcast) MAC addresses: the I/G bit (IEEE 802 §8.2).
pub(crate) fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 0x01 != 0
}

/// Parses an untagged or single-tagged Ethernet II header. A second tag (802.1Q or 802.1ad)
/// is not ours: `Unexpected`.
pub(crate) fn parse(frame: &[u8]) -> Result<L2, DropReason> {
    let Some(h) = frame.first_chunk::<ETH_LEN>() else {
        return Err(DropReason::EthernetTruncated);
    };
    let (dst, rest) = h
        .split_first_chunk::<6>()
        .ok_or(DropReason::EthernetTruncated)?;
    let (src, ty) = rest
        .split_first_chunk::<6>()
        .ok_or(DropReason::EthernetTruncated)?;
    let outer_type = match *ty {
        [a, b] => u16::from_be_bytes([a, b]),
        _ => return Err(DropReason::EthernetTruncated),
    };
    let (vlan_tci, ethertype) = match outer_type {
        ETHERTYPE_VLAN => {
            let tag = frame
                .get(ETH_LEN..ETH_LEN + VLAN_LEN)
                .and_then(|t| t.first_chunk::<VLAN_LEN>())
                .ok_or(DropReason::VlanTruncated)?;
            let [t0, t1, e0, e1] = *tag;
            let inner = u16::from_be_bytes([e0, e1]);
            if inner == ETHERTYPE_VLAN || inner == ETHERTYPE_QINQ {
                return Err(DropReason::Unexpected);
            }
            (Some(u16::from_be_bytes([t0, t1])), inner)
        }
        ETHERTYPE_QINQ => return Err(DropReason::Unexpected),
        t => (None, t),
    };
    Ok(L2 {
        dst: *dst,
        src: *src,
        vlan_tci,
        ethertype,
    })
}

/// Writes an Ethernet header (with a tag if `vlan_tci` is set) at the start of `out`.
/// Returns the header length, or `None` if `out` is too short.
pub(crate) fn write(
    out: &mut [u8],
    dst: [u8; 6],
    src: [u8; 6],
    vlan_tci: Option<u16>,
    ethertype: u16,
) -> Option<usize> {
    match vlan_tci {
        None => {
            let h = out.first_chunk_mut::<ETH_LEN>()?;
            let (d, rest) = h.split_first_chunk_mut::<6>()?;
            let (s, t) = rest.split_first_chunk_mut::<6>()?;
            *d = dst;
            *s = src;
            t.copy_from_slice(&ethertype.to_be_bytes());
            Some(ETH_LEN)
        }
        Some(tci) => {
            let h = out.first_chunk_mut::<{ ETH_LEN + VLAN_LEN }>()?;
            let (d, rest) = h.split_first_chunk_mut::<6>()?;
            let (s, rest) = rest.split_first_chunk_mut::<6>()?;
            let [tp0, tp1] = ETHERTYPE_VLAN.to_be_bytes();
            let [c0, c1] = tci.to_be_bytes();
            let [e0, e1] = ethertype.to_be_bytes();
            *d = dst;
            *s = src;
            rest.copy_from_slice(&[tp0, tp1, c0, c1, e0, e1]);
            Some(ETH_LEN + VLAN_LEN)
        }
    }
}

/// Pads the frame `buf[start..start + len]` with zeros to [`MIN_FRAME`] bytes when the buffer
/// has room: AF_XDP hands frames to the driver as they are and not every driver pads short
/// ones. Returns the (possibly) new length; a frame that cannot be padded is left short.
pub(crate) fn pad_to_min(buf: &mut [u8], start: usize, len: usize) -> usize {
    if len >= MIN_FRAME {
        return len;
    }
    let (Some(from), Some(to)) = (start.checked_add(len), start.checked_add(MIN_FRAME)) else {
        return len;
    };
    match buf.get_mut(from..to) {
        Some(pad) => {
            pad.fill(0);
            MIN_FRAME
        }
        None => len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_fixtures() {
        struct Case {
            name: &'static str,
            input: &'static [u8],
            expect: Result<L2, DropReason>,
        }
        let d = [0x02, 0, 0, 0, 0, 1];
        let s = [0x02, 0, 0, 0, 0, 2];
        let cases = [
            Case {
                name: "untagged ipv4",
                input: &[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00],
                expect: Ok(L2 {
                    dst: d,
                    src: s,
                    vlan_tci: None,
                    ethertype: 0x0800,
                }),
            },
            Case {
                name: "tagged arp, pcp 5 vid 100",
                input: &[
                    2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x81, 0x00, 0xa0, 0x64, 0x08, 0x06,
                ],
                expect: Ok(L2 {
                    dst: d,
                    src: s,
                    vlan_tci: Some(0xa064),
                    ethertype: 0x0806,
                }),
            },
            Case {
                name: "empty",
                input: &[],
                expect: Err(DropReason::EthernetTruncated),
            },
            Case {
                name: "13 bytes",
                input: &[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08],
                expect: Err(DropReason::EthernetTruncated),
            },
            Case {
                name: "tag cut short",
                input: &[
                    2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x81, 0x00, 0x00, 0x64, 0x08,
                ],
                expect: Err(DropReason::VlanTruncated),
            },
            Case {
                name: "double 802.1Q",
                input: &[
                    2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x81, 0x00, 0x00, 0x64, 0x81, 0x00,
                ],
                expect: Err(DropReason::Unexpected),
            },
            Case {
                name: "802.1ad outer",
                input: &[
                    2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x88, 0xa8, 0x00, 0x64, 0x81, 0x00,
                ],
                expect: Err(DropReason::Unexpected),
            },
        ];
        for c in cases {
            assert_eq!(parse(c.input), c.expect, "{}", c.name);
        }
    }

    #[test]
    fn write_round_trips() {
        let mut out = [0u8; 18];
        assert_eq!(
            write(&mut out, [1; 6], [2; 6], Some(0x0123), 0x0800),
            Some(18)
        );
        assert_eq!(
            parse(&out),
            Ok(L2 {
                dst: [1; 6],
                src: [2; 6],
                vlan_tci: Some(0x0123),
                ethertype: 0x0800
            })
        );
        assert_eq!(write(&mut out[..13], [1; 6], [2; 6], None, 0x0800), None);
        assert_eq!(write(&mut out[..17], [1; 6], [2; 6], Some(1), 0x0800), None);
    }

    #[test]
    fn pads_only_with_room() {
        let mut buf = [0xaau8; 70];
        assert_eq!(pad_to_min(&mut buf, 5, 42), 60);
        assert!(buf[47..65].iter().all(|&b| b == 0));
        assert_eq!(buf[65], 0xaa);
        assert_eq!(pad_to_min(&mut buf, 20, 42), 42);
        assert_eq!(pad_to_min(&mut buf, 0, 64), 64);
        assert_eq!(pad_to_min(&mut buf, usize::MAX, 1), 1);
    }
}
