//! Segmentation of TCP super-frames, as the kernel's GSO does (`tcp_gso_segment`) for a
//! device without TSO.
//!
//! A guest whose virtio-net negotiated TSO (QEMU's default) hands its host TCP segments of up
//! to 64 KiB. AF_XDP delivers such a frame in several descriptors (`XDP_USE_SG`); the worker
//! gathers them into one buffer and asks for a [`SegmentPlan`]. Each segment is then written
//! into a fresh frame with [`Pipeline::write_segment`], complete with its own IPv4 and TCP
//! checksums, and goes through [`Pipeline::process`] like any frame that arrived whole.
//!
//! Segments are cut to what fits the tunnel unfragmented (`tunnel_mtu` minus the outer
//! header), and never beyond a 1500-byte inner datagram, which the far end delivers on an
//! Ethernet link; smaller, to what the destination asked for or its path takes, once the
//! pipeline has seen that come out of the tunnel (`path_size`: its SYN's MSS, a
//! Fragmentation Needed toward it). Per RFC 9293 any segment size up to the peer's MSS is
//! valid; the guest's own segment size (in the virtio header) does not reach AF_XDP.
//!
//! Per segment, as `tcp_gso_segment` and `inet_gso_segment` do: the IPv4 Identification
//! counts up from the original's; the sequence number advances by the data before it; CWR
//! stays on the first segment only; FIN and PSH on the last only; everything else,
//! options included, is copied.

use super::checksum::{fold, sum};
use super::ether;
use super::ipv4::{self, Ipv4};
use super::{DropReason, Pipeline};

const PROTO_TCP: u8 = 6;
const TCP_HDR_LEN: usize = 20;
const FLAG_FIN: u8 = 0x01;
const FLAG_PSH: u8 = 0x08;
const FLAG_CWR: u8 = 0x80;
/// An inner datagram the far end can deliver on an Ethernet link.
const MAX_INNER: usize = 1500;
/// Smaller segments than this are not worth making: a tunnel this narrow is misconfigured.
const MIN_SEGMENT_DATA: usize = 256;
/// The most segments one super-frame may become (a 64 KiB frame in 256-byte pieces).
pub const MAX_SEGMENTS: usize = 256;
/// The largest super-frame: a 64 KiB IPv4 datagram behind a tagged Ethernet header.
pub const MAX_SUPER_FRAME: usize = ether::ETH_LEN + 4 + u16::MAX as usize;

/// How to cut one super-frame into segments. Small, `Copy`, no heap: offsets into the
/// buffer it was planned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentPlan {
    /// Cut smaller than the tunnel carries, to a learned path size.
    to_path: bool,
    /// Link header length (14 or 18); the IPv4 header follows it.
    l2_len: usize,
    ip_header_len: usize,
    tcp_header_len: usize,
    /// TCP data bytes in the super-frame.
    data_len: usize,
    /// TCP data bytes per segment (the last may have fewer).
    segment_data: usize,
    count: usize,
    ident: u16,
    seq: u32,
    flags: u8,
}

impl SegmentPlan {
    /// Number of segments (at least 1).
    pub fn count(&self) -> usize {
        self.count
    }
}

impl Pipeline {
    /// Plans the segments of the super-frame `frame` (a whole Ethernet frame, as gathered
    /// from its descriptors). Only an unfragmented IPv4 TCP datagram can be cut; anything
    /// else is counted as [`DropReason::Unsegmentable`] (or the header's own reason).
    /// `now_ns` is the worker's clock, as for [`Pipeline::process`].
    pub fn plan_segments(&mut self, frame: &[u8], now_ns: u64) -> Result<SegmentPlan, DropReason> {
        let plan = self.plan(frame, now_ns);
        match plan {
            Ok(p) => {
                self.counters.segmented += 1;
                self.counters.segmented_to_path += u64::from(p.to_path);
            }
            Err(reason) => self.counters.count_drop(reason),
        }
        plan
    }

    /// Counts a super-frame the worker could not gather (longer than
    /// [`MAX_SUPER_FRAME`]) as [`DropReason::Unsegmentable`].
    pub fn super_frame_too_long(&mut self) {
        self.counters.count_drop(DropReason::Unsegmentable);
    }

    fn plan(&self, frame: &[u8], now_ns: u64) -> Result<SegmentPlan, DropReason> {
        let l2 = ether::parse(frame)?;
        if l2.ethertype != ether::ETHERTYPE_IPV4 {
            return Err(DropReason::Unsegmentable);
        }
        let ip: Ipv4 = ipv4::parse(frame.get(l2.len()..).ok_or(DropReason::Ipv4Truncated)?)?;
        if ip.protocol != PROTO_TCP || ip.is_fragment() {
            return Err(DropReason::Unsegmentable);
        }
        let tcp_off = l2.len() + ip.header_len;
        let tcp = frame
            .get(tcp_off..)
            .and_then(|t| t.first_chunk::<TCP_HDR_LEN>())
            .ok_or(DropReason::Unsegmentable)?;
        let tcp_header_len = usize::from(tcp[12] >> 4) * 4;
        let data_len = ip
            .payload_len()
            .checked_sub(tcp_header_len)
            .filter(|_| tcp_header_len >= TCP_HDR_LEN)
            .ok_or(DropReason::Unsegmentable)?;
        let headers = ip.header_len + tcp_header_len;
        let tunnel = usize::from(self.config.tunnel_mtu)
            .saturating_sub(ipv4::HDR_LEN)
            .min(MAX_INNER);
        // Smaller still if the peer asked for less or its path takes less.
        let (room, to_path) = match self.paths.mtu(ip.dst, now_ns) {
            Some(path) if usize::from(path) < tunnel => (usize::from(path), true),
            _ => (tunnel, false),
        };
        let segment_data = room
            .checked_sub(headers)
            .filter(|&d| d >= MIN_SEGMENT_DATA)
            .ok_or(DropReason::Unsegmentable)?;
        let count = data_len.div_ceil(segment_data).max(1);
        if count > MAX_SEGMENTS {
            return Err(DropReason::Unsegmentable);
        }
        Ok(SegmentPlan {
            to_path,
            l2_len: l2.len(),
            ip_header_len: ip.header_len,
            tcp_header_len,
            data_len,
            segment_data,
            count,
            ident: ip.ident,
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            flags: tcp[13],
        })
    }

    /// Writes segment `index` (`< plan.count()`) of the super-frame `src` (the buffer
    /// [`Pipeline::plan_segments`] was given) as a whole Ethernet frame at `dst[at..]`.
    /// Returns its length, or `None` if it does not fit `dst` or `index` is out of range.
    pub fn write_segment(
        &mut self,
        src: &[u8],
        plan: &SegmentPlan,
        index: usize,
        dst: &mut [u8],
        at: usize,
    ) -> Option<usize> {
        if index >= plan.count {
            return None;
        }
        let headers = plan.l2_len + plan.ip_header_len + plan.tcp_header_len;
        let offset = index.checked_mul(plan.segment_data)?;
        let data_len = plan.data_len.checked_sub(offset)?.min(plan.segment_data);
        let data = src.get(headers + offset..headers + offset + data_len)?;
        let len = headers + data_len;
        let out = dst.get_mut(at..at.checked_add(len)?)?;
        let (head, payload) = out.split_at_mut_checked(headers)?;
        head.copy_from_slice(src.get(..headers)?);
        payload.copy_from_slice(data);

        let (_, l3) = head.split_at_mut_checked(plan.l2_len)?;
        let (ip, tcp) = l3.split_at_mut_checked(plan.ip_header_len)?;
        let ip_len = u16::try_from(plan.ip_header_len + plan.tcp_header_len + data_len).ok()?;
        let ident = plan.ident.wrapping_add(index as u16);
        let base = ip.first_chunk_mut::<{ ipv4::HDR_LEN }>()?;
        base[4..6].copy_from_slice(&ident.to_be_bytes());
        let flags_frag = u16::from_be_bytes([base[6], base[7]]);
        ipv4::rewrite_len_frag(ip, ip_len, flags_frag)?;

        let seq = plan.seq.wrapping_add(offset as u32);
        let mut flags = plan.flags;
        if index > 0 {
            flags &= !FLAG_CWR;
        }
        if index + 1 < plan.count {
            flags &= !(FLAG_FIN | FLAG_PSH);
        }
        let th = tcp.first_chunk_mut::<TCP_HDR_LEN>()?;
        th[4..8].copy_from_slice(&seq.to_be_bytes());
        th[13] = flags;
        th[16..18].fill(0);
        // The checksum from scratch: the pseudo-header (RFC 9293 §3.1), the header, the data.
        let addrs = ip.get(12..20)?;
        let tcp_len = u16::try_from(plan.tcp_header_len + data_len).ok()?;
        let mut acc = sum(0, addrs);
        acc = sum(acc, &[0, PROTO_TCP]);
        acc = sum(acc, &tcp_len.to_be_bytes());
        acc = sum(acc, tcp);
        acc = sum(acc, payload);
        let th = tcp.first_chunk_mut::<TCP_HDR_LEN>()?;
        th[16..18].copy_from_slice(&(!fold(acc)).to_be_bytes());
        self.counters.segments_out += 1;
        Some(len)
    }
}

#[cfg(test)]
mod tests;
