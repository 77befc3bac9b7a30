//! A [`Lookup`] for the pipeline microbenchmarks over the REAL lock-free
//! structures, doing per packet what `dataplane::lookup::Tables` does.
//!
//! Why not `Tables` itself: its next hops come from a
//! `dataplane::neigh::NeighReader`, and the only way to get one is
//! `neigh::spawn`, which starts the rtnetlink thread and resolves next hops
//! through the kernel's routes and neighbours (a namespace lab, root). So the
//! bench builds the same maps itself: the binding table
//! ([`dataplane::table::binding_table`]), and two `SeqMap`s
//! ([`dataplane::table::seq_map`], the structure `neigh` publishes into)
//! holding care-of address -> `[ifindex, MAC word]` and LAN address ->
//! `[MAC word]` with neigh's encoding (bit 48 = valid). The per-packet work is
//! then the same lookups, decodes and branches as `Tables`.

use std::net::Ipv4Addr;

use dataplane::pipeline::{BindingRef, Lookup, NextHop, Port};
use dataplane::table::{seq_map, SeqMapReader, SeqMapWriter, TableReader};

/// Bit 48 of a MAC word: valid (as in `dataplane::neigh`).
const MAC_VALID: u64 = 1 << 48;

/// A MAC as `neigh` stores it.
pub fn mac_word(mac: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&mac);
    MAC_VALID | u64::from_be_bytes(b)
}

#[inline]
fn word_mac(w: u64) -> Option<[u8; 6]> {
    if w & MAC_VALID == 0 {
        return None;
    }
    let b = w.to_be_bytes();
    Some([b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The writer side of the neighbour maps (what neigh's thread holds).
#[derive(Debug)]
pub struct NeighMaps {
    care_of: SeqMapWriter<2>,
    lan: SeqMapWriter<1>,
}

/// Empty neighbour maps with neigh's capacities (4096 care-of addresses,
/// 65536 LAN neighbours): the writer and a reader.
pub fn neigh_maps() -> (NeighMaps, NeighView) {
    let (cw, cr) = seq_map::<2>(dataplane::neigh::CARE_OF_CAPACITY);
    let (lw, lr) = seq_map::<1>(dataplane::neigh::LAN_CAPACITY);
    (
        NeighMaps {
            care_of: cw,
            lan: lw,
        },
        NeighView {
            care_of: cr,
            lan: lr,
        },
    )
}

impl NeighMaps {
    /// `care_of` leaves by `ifindex` to `mac`.
    pub fn set_egress(&mut self, care_of: Ipv4Addr, ifindex: u32, mac: [u8; 6]) {
        let _ = self
            .care_of
            .insert(u32::from(care_of), [u64::from(ifindex), mac_word(mac)]);
    }

    /// Home-link host `addr` is at `mac`.
    pub fn set_lan(&mut self, addr: Ipv4Addr, mac: [u8; 6]) {
        let _ = self.lan.insert(u32::from(addr), [mac_word(mac)]);
    }
}

/// The reader side of the neighbour maps (what `NeighReader` holds).
#[derive(Clone, Debug)]
pub struct NeighView {
    care_of: SeqMapReader<2>,
    lan: SeqMapReader<1>,
}

/// Bindings, next hops and LAN neighbours, looked up as
/// `dataplane::lookup::Tables` does.
#[derive(Clone, Debug)]
pub struct BenchLookup {
    /// The binding table.
    pub bindings: TableReader,
    /// The neighbour maps.
    pub neigh: NeighView,
    /// The LAN interface index.
    pub lan_ifindex: u32,
    /// The WAN interface index.
    pub wan_ifindex: u32,
}

impl Lookup for BenchLookup {
    #[inline]
    fn binding(&self, vm: Ipv4Addr) -> Option<BindingRef> {
        self.bindings.lookup(vm).map(|(b, slot)| BindingRef {
            care_of: b.care_of,
            slot,
        })
    }

    #[inline]
    fn next_hop(&self, care_of: Ipv4Addr) -> NextHop {
        let egress = self
            .neigh
            .care_of
            .get(u32::from(care_of))
            .and_then(|(w, _)| Some((w[0] as u32, word_mac(w[1])?)));
        match egress {
            Some((ifindex, mac)) if ifindex == self.wan_ifindex => NextHop::Resolved {
                port: Port::Wan,
                mac,
            },
            Some((ifindex, mac)) if ifindex == self.lan_ifindex => NextHop::Resolved {
                port: Port::Lan,
                mac,
            },
            _ => NextHop::Unresolved,
        }
    }

    #[inline]
    fn lan_neighbor(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        let (w, _) = self.neigh.lan.get(u32::from(addr))?;
        word_mac(w[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::table::{binding_table, Binding};

    #[test]
    fn resolves_like_tables() {
        let (mut w, r) = binding_table(16);
        let vm = Ipv4Addr::new(192, 0, 2, 10);
        let coa = Ipv4Addr::new(198, 51, 100, 20);
        w.insert(Binding {
            vm,
            care_of: coa,
            vm_mac: None,
        })
        .unwrap();
        let (mut maps, view) = neigh_maps();
        let l = BenchLookup {
            bindings: r,
            neigh: view,
            lan_ifindex: 2,
            wan_ifindex: 3,
        };
        assert_eq!(l.binding(vm).map(|b| b.care_of), Some(coa));
        assert_eq!(l.next_hop(coa), NextHop::Unresolved);
        maps.set_egress(coa, 3, [2, 0, 0, 0, 0, 0xfe]);
        assert_eq!(
            l.next_hop(coa),
            NextHop::Resolved {
                port: Port::Wan,
                mac: [2, 0, 0, 0, 0, 0xfe]
            }
        );
        maps.set_egress(coa, 9, [2, 0, 0, 0, 0, 0xfe]);
        assert_eq!(l.next_hop(coa), NextHop::Unresolved, "other interface");
        let host = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(l.lan_neighbor(host), None);
        maps.set_lan(host, [2, 0, 0, 0, 0, 0x33]);
        assert_eq!(l.lan_neighbor(host), Some([2, 0, 0, 0, 0, 0x33]));
    }
}
