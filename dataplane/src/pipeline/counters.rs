//! Drop reasons and the per-pipeline counters.
//!
//! Every frame the pipeline does not forward has exactly one [`DropReason`]; each reason has
//! its own slot in [`Counters::drops`] so operators can tell a misconfiguration (no next hop)
//! from an attack (bad checksums) from a topology problem (tunnel loop).

/// Why the pipeline did not forward a frame.
///
/// The discriminant is the index into [`Counters::drops`]; [`DropReason::as_str`] is the
/// stable name used as a JSON key, so never rename a variant's string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// `start + len` lies outside the buffer handed to `process` (a worker bug, not network data).
    BadFrameBounds,
    /// Fewer than [`super::MIN_HEADROOM`] bytes in front of the frame.
    NoHeadroom,
    /// Shorter than an Ethernet header (14 bytes).
    EthernetTruncated,
    /// 802.1Q ethertype but no room for the tag and inner ethertype.
    VlanTruncated,
    /// Steered but none of the classes the pipeline handles (ethertype, double tag, ...).
    Unexpected,
    /// IPv4 ethertype but fewer than 20 bytes of header.
    Ipv4Truncated,
    /// IP version field is not 4.
    Ipv4BadVersion,
    /// IHL below 5 (RFC 791 §3.1: the minimum header is 5 words).
    Ipv4BadIhl,
    /// IHL * 4 runs past the end of the frame.
    Ipv4IhlBeyondFrame,
    /// Total length smaller than the header length.
    Ipv4TotalLengthTooShort,
    /// Total length larger than what the frame carries.
    Ipv4TotalLengthBeyondFrame,
    /// Header checksum does not verify (RFC 1812 §5.2.2).
    Ipv4BadChecksum,
    /// ARP payload shorter than an Ethernet/IPv4 ARP packet (28 bytes).
    ArpTruncated,
    /// ARP for something other than Ethernet/IPv4 (htype 1, ptype 0x0800, hlen 6, plen 4).
    ArpNotEthernetIpv4,
    /// ARP operation is not a request.
    ArpNotRequest,
    /// ARP request for an address without a binding.
    ArpTargetNotBound,
    /// ARP request sent by the bound address itself (the VM announcing itself).
    ArpFromOwner,
    /// ARP request whose sender MAC or IP cannot be answered (group MAC, multicast/broadcast IP).
    ArpBadSender,
    /// ARP request that arrived on the WAN port: the home link is the LAN side.
    ArpOnWan,
    /// IPv4 destination 255.255.255.255.
    Broadcast,
    /// IPv4 destination in 224.0.0.0/4, or Ethernet destination with the group bit set.
    Multicast,
    /// IPv4 destination without a binding (binding removed after the XDP program steered it).
    NoBinding,
    /// Inner source is the HA itself (RFC 2003 §3.2, routing failures).
    SourceIsHa,
    /// Inner source is the binding's care-of address (RFC 2003 §3.2, routing failures).
    SourceIsCareOf,
    /// IP-in-IP whose encapsulated destination is the care-of address: a recursive loop.
    TunnelLoop,
    /// TTL would reach 0 (RFC 1812 §5.3.1).
    TtlExceeded,
    /// Too big for the tunnel with DF set (RFC 1191).
    FragNeeded,
    /// Too big for the tunnel, DF clear, but the tunnel MTU is too small to carry any
    /// fragment or the fragment offsets would overflow 13 bits.
    CannotFragment,
    /// No resolved next hop toward the care-of address.
    NoNextHop,
    /// IP-in-IP neither addressed to the HA nor to a bound address.
    DecapNotForUs,
    /// Reverse-tunnelled outer datagram is itself a fragment (no reassembly here).
    DecapOuterFragment,
    /// Reverse-tunnelled inner source has no binding (RFC 3024 §7).
    DecapUnknownSource,
    /// Reverse-tunnelled outer source is not the inner source's care-of address (RFC 3024 §7).
    DecapCareOfMismatch,
    /// No home-link neighbour for the decapsulated destination: the frame
    /// waited in the worker's neighbour queue and the address did not
    /// resolve in time.
    NoLanNeighbor,
    /// Foreign agent: tunnelled inner destination is not a VM served here.
    DecapUnknownDestination,
    /// Foreign agent: ARP request whose sender is not a VM served here.
    ArpSenderNotServed,
    /// Foreign agent: a served VM's datagram that did not come from the VM link.
    NotFromVmLink,
    /// A frame larger than one AF_XDP frame (a TSO/GSO super-frame) that is not an
    /// unfragmented IPv4 TCP datagram, is longer than 64 KiB, or would need more than
    /// `MAX_SEGMENTS` segments: not cut into segments.
    Unsegmentable,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 38;

    /// Every reason, in discriminant order (`ALL[r as usize] == r`).
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::BadFrameBounds,
        DropReason::NoHeadroom,
        DropReason::EthernetTruncated,
        DropReason::VlanTruncated,
        DropReason::Unexpected,
        DropReason::Ipv4Truncated,
        DropReason::Ipv4BadVersion,
        DropReason::Ipv4BadIhl,
        DropReason::Ipv4IhlBeyondFrame,
        DropReason::Ipv4TotalLengthTooShort,
        DropReason::Ipv4TotalLengthBeyondFrame,
        DropReason::Ipv4BadChecksum,
        DropReason::ArpTruncated,
        DropReason::ArpNotEthernetIpv4,
        DropReason::ArpNotRequest,
        DropReason::ArpTargetNotBound,
        DropReason::ArpFromOwner,
        DropReason::ArpBadSender,
        DropReason::ArpOnWan,
        DropReason::Broadcast,
        DropReason::Multicast,
        DropReason::NoBinding,
        DropReason::SourceIsHa,
        DropReason::SourceIsCareOf,
        DropReason::TunnelLoop,
        DropReason::TtlExceeded,
        DropReason::FragNeeded,
        DropReason::CannotFragment,
        DropReason::NoNextHop,
        DropReason::DecapNotForUs,
        DropReason::DecapOuterFragment,
        DropReason::DecapUnknownSource,
        DropReason::DecapCareOfMismatch,
        DropReason::NoLanNeighbor,
        DropReason::DecapUnknownDestination,
        DropReason::ArpSenderNotServed,
        DropReason::NotFromVmLink,
        DropReason::Unsegmentable,
    ];

    /// Stable snake_case name, used as a JSON key.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BadFrameBounds => "bad_frame_bounds",
            DropReason::NoHeadroom => "no_headroom",
            DropReason::EthernetTruncated => "ethernet_truncated",
            DropReason::VlanTruncated => "vlan_truncated",
            DropReason::Unexpected => "unexpected",
            DropReason::Ipv4Truncated => "ipv4_truncated",
            DropReason::Ipv4BadVersion => "ipv4_bad_version",
            DropReason::Ipv4BadIhl => "ipv4_bad_ihl",
            DropReason::Ipv4IhlBeyondFrame => "ipv4_ihl_beyond_frame",
            DropReason::Ipv4TotalLengthTooShort => "ipv4_total_length_too_short",
            DropReason::Ipv4TotalLengthBeyondFrame => "ipv4_total_length_beyond_frame",
            DropReason::Ipv4BadChecksum => "ipv4_bad_checksum",
            DropReason::ArpTruncated => "arp_truncated",
            DropReason::ArpNotEthernetIpv4 => "arp_not_ethernet_ipv4",
            DropReason::ArpNotRequest => "arp_not_request",
            DropReason::ArpTargetNotBound => "arp_target_not_bound",
            DropReason::ArpFromOwner => "arp_from_owner",
            DropReason::ArpBadSender => "arp_bad_sender",
            DropReason::ArpOnWan => "arp_on_wan",
            DropReason::Broadcast => "broadcast",
            DropReason::Multicast => "multicast",
            DropReason::NoBinding => "no_binding",
            DropReason::SourceIsHa => "source_is_ha",
            DropReason::SourceIsCareOf => "source_is_care_of",
            DropReason::TunnelLoop => "tunnel_loop",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::FragNeeded => "frag_needed",
            DropReason::CannotFragment => "cannot_fragment",
            DropReason::NoNextHop => "no_next_hop",
            DropReason::DecapNotForUs => "decap_not_for_us",
            DropReason::DecapOuterFragment => "decap_outer_fragment",
            DropReason::DecapUnknownSource => "decap_unknown_source",
            DropReason::DecapCareOfMismatch => "decap_care_of_mismatch",
            DropReason::NoLanNeighbor => "no_lan_neighbor",
            DropReason::DecapUnknownDestination => "decap_unknown_destination",
            DropReason::ArpSenderNotServed => "arp_sender_not_served",
            DropReason::NotFromVmLink => "not_from_vm_link",
            DropReason::Unsegmentable => "unsegmentable",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-pipeline (so per-worker, no sharing) event counters. The worker publishes them.
/// Serialized without `drops`, which the stats report by name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Datagrams discarded, by reason (index: `reason as usize`). A datagram answered with an
    /// ICMP error is counted here too: it was discarded, the ICMP is a new packet.
    #[serde(skip)]
    pub drops: [u64; DropReason::COUNT],
    /// Datagrams sent into a tunnel, whole or (see `fragmented`) in pieces.
    pub encapsulated: u64,
    /// Reverse-tunnelled datagrams delivered on the home link.
    pub decapsulated: u64,
    /// Bytes of the datagrams counted in `encapsulated` (inner IPv4 length).
    pub encapsulated_bytes: u64,
    /// Bytes of the datagrams counted in `decapsulated` (inner IPv4 length).
    pub decapsulated_bytes: u64,
    /// Datagrams that had to be fragmented to fit the tunnel.
    pub fragmented: u64,
    /// Fragments written by `Pipeline::write_fragment`.
    pub fragments_out: u64,
    /// Proxy ARP replies sent.
    pub arp_replies: u64,
    /// ICMP errors sent.
    pub icmp_sent: u64,
    /// ICMP errors not sent because the token bucket was empty.
    pub icmp_rate_limited: u64,
    /// Frames longer than their IPv4 datagram (Ethernet padding), trimmed.
    pub trimmed_padding: u64,
    /// Partial TCP/UDP checksums (left to the device by a local sender)
    /// finished before tunnelling.
    pub checksums_finished: u64,
    /// TCP SYNs whose MSS option was lowered to fit the tunnel (`mss_clamp`), either
    /// direction.
    pub mss_clamped: u64,
    /// TCP super-frames (TSO/GSO, larger than one AF_XDP frame) cut into segments.
    pub segmented: u64,
    /// Segments written from super-frames.
    pub segments_out: u64,
    /// Super-frames cut smaller than the tunnel carries: to what their destination asked
    /// for or its path takes (`path_size`).
    pub segmented_to_path: u64,
}

// Manual: `[u64; N]` implements `Default` only up to N = 32.
impl Default for Counters {
    fn default() -> Self {
        Counters {
            drops: [0; DropReason::COUNT],
            encapsulated: 0,
            decapsulated: 0,
            encapsulated_bytes: 0,
            decapsulated_bytes: 0,
            fragmented: 0,
            fragments_out: 0,
            arp_replies: 0,
            icmp_sent: 0,
            icmp_rate_limited: 0,
            trimmed_padding: 0,
            checksums_finished: 0,
            mss_clamped: 0,
            segmented: 0,
            segments_out: 0,
            segmented_to_path: 0,
        }
    }
}

impl Counters {
    /// Count one drop.
    #[inline]
    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        // `ALL.len() == COUNT` and discriminants are dense, so this `get_mut` always succeeds.
        if let Some(c) = self.drops.get_mut(reason as usize) {
            *c += 1;
        }
    }

    /// Drops recorded for `reason`.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops.get(reason as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_discriminant_order_and_complete() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in DropReason::ALL {
            let s = r.as_str();
            assert!(seen.insert(s), "duplicate name {s}");
            assert!(!s.is_empty());
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{s} is not snake_case"
            );
            assert_eq!(r.to_string(), s);
        }
    }

    #[test]
    fn count_drop_hits_its_own_slot() {
        let mut c = Counters::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            for _ in 0..=i {
                c.count_drop(*r);
            }
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(c.drop_count(*r), i as u64 + 1);
        }
    }
}
