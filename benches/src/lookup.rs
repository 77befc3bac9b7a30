//! A [`Lookup`] for the pipeline microbenchmarks over the REAL lock-free
//! binding table ([`dataplane::table`]) plus a constant next hop and LAN
//! neighbour.
//!
//! Why not `dataplane::lookup::Tables`: it is not exported yet (commented
//! out in `dataplane/src/lib.rs`), and its next hops come from a
//! `NeighReader`, which only `neigh::spawn` builds (an rtnetlink thread in a
//! real network namespace). A `NeighReader::egress` is one more `SeqMap`
//! lookup, of the same kind as the binding lookup measured in
//! `benches/table.rs`, so this under-counts `Tables` by about one
//! small-table hit per encapsulated packet.

use std::net::Ipv4Addr;

use dataplane::pipeline::{BindingRef, Lookup, NextHop};
use dataplane::table::TableReader;

/// Bindings from the real table; every care-of address resolves to
/// `next_hop`; every LAN address to `lan_mac`.
#[derive(Clone, Debug)]
pub struct BenchLookup {
    /// The binding table.
    pub bindings: TableReader,
    /// Where every care-of address goes.
    pub next_hop: NextHop,
    /// MAC of every home-link host (decapsulation).
    pub lan_mac: Option<[u8; 6]>,
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
    fn next_hop(&self, _care_of: Ipv4Addr) -> NextHop {
        self.next_hop
    }

    #[inline]
    fn lan_neighbor(&self, _addr: Ipv4Addr) -> Option<[u8; 6]> {
        self.lan_mac
    }
}
