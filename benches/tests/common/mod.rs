//! What the byte tests of the baselines share: the lab's addresses (as
//! fixtures) and homeward's own encapsulation to compare against.
// Each test binary uses a part of this module.
#![allow(dead_code)]

use dataplane::lookup::Tables;
use dataplane::neigh::static_neighbors;
use dataplane::pipeline::{Pipeline, PipelineConfig, Port, Verdict};
use dataplane::table::{binding_table, Binding};

pub use homeward_benches::netns::{
    CARE_OF, GEN_ADDR as GEN, GEN_MAC, HA_ADDR as HA, LAN_MAC, SINK_MAC, VM, WAN_MAC,
};

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
