//! Per-packet cost of `Pipeline::process` (and `write_fragment`) on the hot
//! paths, with the workers' own `Lookup` (`dataplane::lookup::Tables`) over
//! the real lock-free tables: 1024 bindings, next hops set by hand
//! (`neigh::static_neighbors`) instead of learned over netlink.
//!
//! The pipeline rewrites frames in place, so every iteration first copies
//! the frame from its template into a reused 2048-byte buffer (256 bytes of
//! headroom, as AF_XDP gives). That copy is measured on its own in the
//! `copy_only` group: subtract it from the matching `process` number.
//!
//! `cargo bench -p homeward-benches --bench pipeline` (add `-- --quick`
//! for a fast pass).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dataplane::lookup::Tables;
use dataplane::neigh::{static_neighbors, StaticNeighbors};
use dataplane::pipeline::{Pipeline, PipelineConfig, Port, Verdict};
use dataplane::table::{binding_table, Binding};
use homeward_benches::frames::{self, Ipv4Spec};

const HEADROOM: usize = 256;
const FRAME: usize = 2048;

const HA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const VM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const UNBOUND: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
const LAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CARE_OF: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const LAN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const WAN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x33];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
const LAN_IF: u32 = 2;
const WAN_IF: u32 = 3;

struct Setup {
    lookup: Tables,
    // Writers must outlive the readers' use only for updates; kept for clarity.
    _maps: StaticNeighbors,
    _table: dataplane::table::TableWriter,
}

fn setup() -> Setup {
    let (mut table, reader) = binding_table(2048);
    // 1024 bindings: VM and 1023 others in 10.x, all to CARE_OF.
    table
        .insert(Binding {
            vm: VM,
            care_of: CARE_OF,
            vm_mac: Some([2, 0, 0, 0, 0, 10]),
        })
        .expect("bind VM");
    for i in 1..1024u32 {
        table
            .insert(Binding {
                vm: Ipv4Addr::from(0x0a00_0000 + i),
                care_of: CARE_OF,
                vm_mac: None,
            })
            .expect("bind");
    }
    let (mut maps, view) = static_neighbors();
    maps.set_egress(CARE_OF, WAN_IF, ROUTER_MAC);
    maps.set_lan(LAN_HOST, HOST_MAC);
    Setup {
        lookup: Tables::new(reader, view, LAN_IF, WAN_IF),
        _maps: maps,
        _table: table,
    }
}

fn pipeline() -> Pipeline {
    let mut c = PipelineConfig::new(HA, LAN_MAC, WAN_MAC);
    c.tunnel_mtu = 1500;
    Pipeline::new(c, 1)
}

fn spec(src: Ipv4Addr, dst: Ipv4Addr, df: bool) -> Ipv4Spec {
    Ipv4Spec {
        src,
        dst,
        protocol: 17,
        ttl: 64,
        df,
        ident: 0x1234,
    }
}

/// The frames: (name, template, ingress port).
fn cases() -> Vec<(&'static str, Vec<u8>, Port)> {
    let udp = |dst, len, df| {
        frames::udp_frame(LAN_MAC, HOST_MAC, &spec(LAN_HOST, dst, df), 40000, 9, len)
    };
    // Reverse tunnel: VM -> LAN host inside CARE_OF -> HA.
    let reverse = frames::udp_frame(LAN_MAC, HOST_MAC, &spec(VM, LAN_HOST, true), 9, 40000, 60);
    vec![
        ("encap_64", udp(VM, 60, true), Port::Lan),
        ("fragment_1500", udp(VM, 1514, false), Port::Lan),
        (
            "arp_reply",
            frames::arp_request(HOST_MAC, LAN_HOST, VM),
            Port::Lan,
        ),
        (
            "decap_64",
            frames::ipip_frame(
                WAN_MAC,
                ROUTER_MAC,
                &spec(CARE_OF, HA, true),
                &reverse[frames::ETH_LEN..],
            ),
            Port::Wan,
        ),
        ("drop_unbound_64", udp(UNBOUND, 60, true), Port::Lan),
    ]
}

fn bench_pipeline(c: &mut Criterion) {
    let s = setup();
    let mut buf = vec![0u8; FRAME];
    let mut piece = vec![0u8; FRAME];

    // Sanity: each case gets the verdict it is named after.
    for (name, tpl, port) in cases() {
        let mut p = pipeline();
        buf[HEADROOM..HEADROOM + tpl.len()].copy_from_slice(&tpl);
        let v = p.process(&mut buf, HEADROOM, tpl.len(), port, 0, &s.lookup);
        let ok = match name {
            "fragment_1500" => matches!(v, Verdict::Fragments { .. }),
            "drop_unbound_64" => matches!(v, Verdict::Drop(_)),
            _ => matches!(v, Verdict::Tx { .. }),
        };
        assert!(ok, "{name}: unexpected verdict {v:?}");
    }

    let mut copy = c.benchmark_group("copy_only");
    for (name, tpl, _) in cases() {
        copy.throughput(Throughput::Elements(1));
        copy.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                buf[HEADROOM..HEADROOM + tpl.len()].copy_from_slice(black_box(&tpl));
                black_box(&mut buf);
            })
        });
    }
    copy.finish();

    let mut g = c.benchmark_group("process");
    for (name, tpl, port) in cases() {
        let mut p = pipeline();
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                buf[HEADROOM..HEADROOM + tpl.len()].copy_from_slice(black_box(&tpl));
                let v = p.process(&mut buf, HEADROOM, tpl.len(), port, black_box(0), &s.lookup);
                if let Verdict::Fragments { plan, .. } = v {
                    // The worker writes every piece into a fresh frame.
                    for i in 0..plan.count() {
                        black_box(p.write_fragment(&buf, &plan, i, &mut piece));
                    }
                }
                black_box(v)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = bench_pipeline
}
criterion_main!(benches);
