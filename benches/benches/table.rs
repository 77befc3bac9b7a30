//! Binding table (`dataplane::table`): lookup hit, lookup miss, update
//! (insert + remove of a fresh binding, and replacing a binding's care-of
//! address) at 1k bindings (2048 slots) and 1M bindings (2^21 slots: 96 MiB),
//! both at about half load, and 1M bindings in the daemon's sizing
//! (`binding_table_for`: 1.25M slots, 60 MB, 80 % load: `table_1M_for`);
//! and a lookup hit while a writer thread churns
//! the same table (readers never block: the cost is the cache-line traffic
//! and the occasional retry).
//!
//! Keys are visited in a pseudo-random order, so at 1M most lookups miss
//! the CPU caches, as they would with many active VMs.
//!
//! Also the round trip of an update to a spinning reader and back (the
//! "visible within 1 ms" target).
//!
//! `cargo bench -p homeward-benches --bench table` (add `-- --quick`).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dataplane::table::{binding_table, binding_table_for, Binding, TableReader, TableWriter};

const BASE: u32 = 0x0a00_0000; // 10.0.0.0
const MISS_BASE: u32 = 0x6400_0000; // 100.0.0.0: never bound
const CARE_OF: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

/// Bound keys are BASE + 1 ..= BASE + n; `capacity` slots (rounded up to a
/// power of two), or `None`: the daemon's sizing for `n` bindings.
fn table(n: u32, capacity: Option<usize>) -> (TableWriter, TableReader) {
    let (mut w, r) = match capacity {
        Some(c) => binding_table(c),
        None => binding_table_for(n as usize),
    };
    for i in 1..=n {
        w.insert(Binding {
            vm: Ipv4Addr::from(BASE + i),
            care_of: CARE_OF,
            vm_mac: None,
        })
        .expect("insert");
    }
    (w, r)
}

/// A permutation-ish walk over 1..=n: i -> (i * step) mod n, step odd and
/// coprime with n for the sizes used (n a power of ten).
fn walk(n: u32) -> impl FnMut() -> u32 {
    let step: u64 = (2_654_435_761 % u64::from(n)) | 1;
    let mut i: u64 = 0;
    move || {
        i = (i + step) % u64::from(n);
        i as u32 + 1
    }
}

fn bench_table(c: &mut Criterion) {
    for (label, n, cap) in [
        ("1k", 1_000u32, Some(2048usize)),
        ("1M", 1_000_000, Some(1 << 21)),
        ("1M_for", 1_000_000, None),
    ] {
        let (mut w, r) = table(n, cap);
        let mut g = c.benchmark_group(format!("table_{label}"));
        g.throughput(Throughput::Elements(1));

        let mut next = walk(n);
        g.bench_function(BenchmarkId::from_parameter("lookup_hit"), |b| {
            b.iter(|| black_box(r.lookup(Ipv4Addr::from(BASE + next()))))
        });
        let mut next = walk(n);
        g.bench_function(BenchmarkId::from_parameter("lookup_miss"), |b| {
            b.iter(|| black_box(r.lookup(Ipv4Addr::from(MISS_BASE + next()))))
        });
        // One update = insert a new binding + remove it: the table is the
        // same size afterwards, so every iteration sees the same load.
        let mut next = walk(n);
        g.bench_function(BenchmarkId::from_parameter("insert_remove"), |b| {
            b.iter(|| {
                let vm = Ipv4Addr::from(MISS_BASE + next());
                let slot = w.insert(Binding {
                    vm,
                    care_of: CARE_OF,
                    vm_mac: None,
                });
                black_box(slot.ok());
                black_box(w.remove(vm))
            })
        });
        // A migration: the care-of address of an existing binding changes.
        let mut next = walk(n);
        let mut flip = 0u32;
        g.bench_function(BenchmarkId::from_parameter("replace"), |b| {
            b.iter(|| {
                flip = flip.wrapping_add(1);
                black_box(w.insert(Binding {
                    vm: Ipv4Addr::from(BASE + next()),
                    care_of: Ipv4Addr::from(u32::from(CARE_OF) + (flip & 1)),
                    vm_mac: None,
                }))
            })
        });

        // Lookup hits while another thread replaces bindings (the same keys)
        // as fast as it can. On this 2-CPU VM the writer owns the other CPU.
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let writer = {
            let (stop, writes) = (Arc::clone(&stop), Arc::clone(&writes));
            std::thread::spawn(move || {
                let mut next = walk(n);
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1024 {
                        k += 1;
                        let _ = w.insert(Binding {
                            vm: Ipv4Addr::from(BASE + next()),
                            care_of: Ipv4Addr::from(u32::from(CARE_OF) + (k & 1) as u32),
                            vm_mac: None,
                        });
                    }
                    writes.store(k, Ordering::Relaxed);
                }
                w
            })
        };
        let mut next = walk(n);
        g.bench_function(
            BenchmarkId::from_parameter("lookup_hit_while_writing"),
            |b| b.iter(|| black_box(r.lookup(Ipv4Addr::from(BASE + next())))),
        );
        stop.store(true, Ordering::Relaxed);
        let _w = writer.join().expect("writer thread");
        eprintln!(
            "table_{label}: the writer made {} updates during lookup_hit_while_writing",
            writes.load(Ordering::Relaxed)
        );
        g.finish();
    }
}

/// How soon a worker sees an update: the writer replaces a binding's
/// care-of address, a reader thread spinning on `lookup` echoes the value
/// it saw back through an atomic, the writer waits for the echo. One
/// iteration is that round trip, an upper bound on the time from update to
/// visibility (the target is 1 ms).
fn bench_visibility(c: &mut Criterion) {
    let (mut w, r) = table(1_000, Some(2048));
    let vm = Ipv4Addr::from(BASE + 1);
    let seen = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some((b, _)) = r.lookup(vm) {
                    seen.store(u64::from(u32::from(b.care_of)), Ordering::Release);
                }
            }
        })
    };
    let mut g = c.benchmark_group("table_update");
    let mut k: u32 = 0;
    g.bench_function("visible_to_a_reader_round_trip", |b| {
        b.iter(|| {
            k = k.wrapping_add(1) | 1;
            w.insert(Binding {
                vm,
                care_of: Ipv4Addr::from(k),
                vm_mac: None,
            })
            .expect("insert");
            while seen.load(Ordering::Acquire) != u64::from(k) {
                std::hint::spin_loop();
            }
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader thread");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = bench_table, bench_visibility
}
criterion_main!(benches);
