//! What the pipeline looks up per packet, served from the lock-free tables:
//! bindings from [`crate::table`], next hops and home-link neighbours from
//! [`crate::neigh`]. Reads only: no lock, no allocation, no syscall (a
//! home-link miss is a non-blocking send to the neighbour thread).

use std::net::Ipv4Addr;

use crate::neigh::NeighReader;
use crate::pipeline::{BindingRef, Lookup, NextHop, Port};
use crate::table::TableReader;

/// The worker's view of the control plane's tables.
#[derive(Clone)]
pub struct Tables {
    bindings: TableReader,
    neigh: NeighReader,
    lan_ifindex: u32,
    wan_ifindex: u32,
    /// Where "LAN" neighbours come from: the kernel for a home agent, the
    /// bindings' own VM MACs for a foreign agent (its LAN side holds only
    /// the VMs it serves).
    lan_from_bindings: bool,
}

impl Tables {
    /// Tables for a home agent whose LAN and WAN interfaces are these
    /// (the same index twice when one-armed).
    pub fn new(
        bindings: TableReader,
        neigh: NeighReader,
        lan_ifindex: u32,
        wan_ifindex: u32,
    ) -> Self {
        Tables {
            bindings,
            neigh,
            lan_ifindex,
            wan_ifindex,
            lan_from_bindings: false,
        }
    }

    /// Tables for a foreign agent: the VM link is the "LAN" port, the
    /// uplink the "WAN" port; a served VM's MAC is in its binding.
    pub fn foreign_agent(
        bindings: TableReader,
        neigh: NeighReader,
        vm_link_ifindex: u32,
        uplink_ifindex: u32,
    ) -> Self {
        Tables {
            lan_from_bindings: true,
            ..Tables::new(bindings, neigh, vm_link_ifindex, uplink_ifindex)
        }
    }
}

impl Lookup for Tables {
    #[inline]
    fn binding(&self, vm: Ipv4Addr) -> Option<BindingRef> {
        self.bindings.lookup(vm).map(|(b, slot)| BindingRef {
            care_of: b.care_of,
            slot,
        })
    }

    #[inline]
    fn prefetch(&self, vm: Ipv4Addr) -> Option<u32> {
        Some(self.bindings.prefetch(vm))
    }

    #[inline]
    fn next_hop(&self, care_of: Ipv4Addr) -> NextHop {
        match self.neigh.egress(care_of) {
            Some(e) if e.ifindex == self.wan_ifindex => NextHop::Resolved {
                port: Port::Wan,
                mac: e.mac,
            },
            Some(e) if e.ifindex == self.lan_ifindex => NextHop::Resolved {
                port: Port::Lan,
                mac: e.mac,
            },
            _ => NextHop::Unresolved,
        }
    }

    #[inline]
    fn lan_neighbor(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        if self.lan_from_bindings {
            self.bindings.lookup(addr).and_then(|(b, _)| b.vm_mac)
        } else {
            self.neigh.lan_neighbor_or_resolve(addr)
        }
    }

    #[inline]
    fn lan_neighbor_known(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        if self.lan_from_bindings {
            self.lan_neighbor(addr)
        } else {
            self.neigh.lan_neighbor(addr)
        }
    }

    #[inline]
    fn warm_lan_neighbor(&self, addr: Ipv4Addr) {
        if !self.lan_from_bindings {
            let _ = self.neigh.lan_neighbor_or_resolve(addr);
        }
    }
}
