//! One-shot rtnetlink queries for the registration handler: an
//! interface's IPv4 prefixes (the home subnet) and a neighbour's MAC (the
//! VM's own, announced when its binding ends).

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::rtnl::Rtnl;
use super::NeighError;

/// The IPv4 addresses on `ifindex` with their prefix lengths (`ip -4 addr
/// show dev`), in the kernel's order.
pub fn ipv4_prefixes(ifindex: u32) -> Result<Vec<(Ipv4Addr, u8)>, NeighError> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.index = ifindex;
    let reply = Rtnl::new()?.request(
        "RTM_GETADDR",
        RouteNetlinkMessage::GetAddress(msg),
        NLM_F_DUMP,
    )?;
    let msgs = reply.map_err(|source| NeighError::Io {
        op: "RTM_GETADDR",
        source,
    })?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        // The dump filter on the index is advisory on older kernels.
        if a.header.family != AddressFamily::Inet || a.header.index != ifindex {
            continue;
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer
        // on point-to-point links and equal to it elsewhere.
        let mut local = None;
        let mut address = None;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(IpAddr::V4(v)) => local = Some(*v),
                AddressAttribute::Address(IpAddr::V4(v)) => address = Some(*v),
                _ => {}
            }
        }
        if let Some(addr) = local.or(address) {
            out.push((addr, a.header.prefix_len.min(32)));
        }
    }
    Ok(out)
}

/// The MAC of `addr` in the kernel's neighbour table on `ifindex`, if the
/// entry is usable (REACHABLE, STALE, DELAY, PROBE or PERMANENT).
pub fn neighbor_mac(ifindex: u32, addr: Ipv4Addr) -> Result<Option<[u8; 6]>, NeighError> {
    Ok(Rtnl::new()?
        .neigh_get(ifindex, addr)?
        .and_then(|n| n.usable_mac()))
}
