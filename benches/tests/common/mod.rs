//! What the byte tests of the baselines share: the lab's addresses (as
//! fixtures) and homeward's own encapsulation to compare against.
// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use dataplane::lookup::Tables;
use dataplane::neigh::static_neighbors;
use dataplane::pipeline::{Pipeline, PipelineConfig, Port, Verdict};
use dataplane::table::{binding_table, Binding};

pub const HA: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
pub const VM: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
pub const GEN: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
pub const CARE_OF: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
pub const LAN_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const WAN_MAC: [u8; 6] = [2, 0, 0, 0, 1, 2];
pub const GEN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const SINK_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];

/// homeward's pipeline encapsulating `frame` toward CARE_OF via SINK_MAC.
pub fn homeward_encap(frame: &[u8]) -> Vec<u8> {
    let (mut w, r) = binding_table(16);
    w.insert(Binding {
        vm: VM,
        care_of: CARE_OF,
        vm_mac: None,
    })
    .unwrap();
    let (mut maps, view) = static_neighbors();
    maps.set_egress(CARE_OF, 3, SINK_MAC);
    let lookup = Tables::new(r, view, 2, 3);
    let mut cfg = PipelineConfig::new(HA, LAN_MAC, WAN_MAC);
    cfg.tunnel_mtu = 1600;
    let mut p = Pipeline::new(cfg, 7);
    let mut buf = vec![0u8; 2048];
    buf[256..256 + frame.len()].copy_from_slice(frame);
    match p.process(&mut buf, 256, frame.len(), Port::Lan, 0, &lookup) {
        Verdict::Tx { start, len, .. } => buf[start..start + len].to_vec(),
        v => panic!("{v:?}"),
    }
}
