//! The lock-free binding table: VM home address -> (care-of address, VM MAC).
//!
//! One writer (the control plane, [`TableWriter`]), any number of readers
//! (the AF_XDP workers, [`TableReader`]) whose lookups never block, never
//! allocate, never take a lock and never enter the kernel, never see a torn
//! entry, and see a completed update at once (no grace period, no epoch).
//!
//! # Model checking
//!
//! The slot protocol is checked with loom (`table::loom_model`):
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p homeward-dataplane --release --lib table::loom
//! ```
//!
//! (`dataplane/run-loom.sh` runs exactly that; the separate target directory
//! keeps the normal build cache valid.) Under `--cfg loom` only those tests
//! may run: every other use of the maps needs loom's runtime.
//!
//! # Design
//!
//! The core is [`SeqMap`](seqmap): a fixed-capacity open-addressing hash
//! table (a slot count fixed at creation: [`binding_table`] rounds up to a
//! power of two, [`binding_table_for`] sizes for 75 % load) with linear
//! probing, mapping a nonzero `u32` key to `[T; W]` (`T` a `u64` or a `u32`).
//! The binding table is a `SeqMap` of three `u32`s; [`crate::neigh`] reuses it for its
//! next-hop maps.
//!
//! **Hashing.** Fibonacci (multiply-shift) hashing: the top bits of
//! `key * 0x9E3779B97F4A7C15`. Consecutive addresses (a subnet) are spread
//! evenly over the table instead of forming one cluster.
//!
//! **Slots: a latched seqlock.** Each slot has a sequence counter `seq` and
//! two copies of `(key: AtomicU32, words: [T::Atomic; W])`. Readers read copy
//! `seq & 1`. The writer, to store a new value:
//!
//! 1. `seq.store(s+1, Release)`, then `fence(Release)`: readers now read copy
//!    1, which still holds the old value;
//! 2. stores copy 0 (Relaxed);
//! 3. `seq.store(s+2, Release)`, then `fence(Release)`: readers read copy 0,
//!    the new value;
//! 4. stores copy 1 (Relaxed), so that both copies agree again.
//!
//! A reader: `s1 = seq.load(Acquire)`; load copy `s1 & 1` (Relaxed);
//! `fence(Acquire)`; `s2 = seq.load(Relaxed)`; retry if `s1 != s2`.
//!
//! This is the reader of Boehm's "Can Seqlocks Get Along With Programming
//! Language Memory Models?" (MSPC 2012; the variant with an Acquire fence
//! before the re-check) combined with the writer of the Linux kernel's
//! `seqcount_latch`. Why the orderings are right (and each one is needed:
//! weakening any of the six — either Release fence, either Release store,
//! the Acquire load or the Acquire fence — makes a loom model fail):
//!
//! * *No torn read.* Every store to a copy is preceded, in the writer, by a
//!   `seq` store that moved readers away from that copy, and by a Release
//!   fence after it. If a reader's Relaxed load returns such a store's value,
//!   the writer's Release fence synchronises with the reader's Acquire fence
//!   (C++ [atomics.fences]/4), so that `seq` store happens-before the
//!   reader's re-load of `seq`, which then returns a newer value than `s1`
//!   and the reader retries. (With the fence after the data stores instead,
//!   as a naive seqlock writer has it, this argument fails: nothing orders
//!   the odd `seq` store before the data stores.)
//! * *No stale read.* The copy a reader selects was completely written
//!   before the `seq` store it acquired (step 3 for copy 0, step 4 of the
//!   previous update for copy 1, hence Release on both `seq` stores).
//! * *Readers never wait.* With a plain seqlock a reader that finds `seq`
//!   odd spins until the writer finishes, for as long as a preempted writer
//!   stays off-CPU (this VM has stalls of tens of milliseconds). Here the
//!   copy a reader is sent to is never being written, and a reader retries
//!   only when the writer made progress during its read (two `seq` stores
//!   per update, a few nanoseconds apart): lookups are lock-free and in
//!   practice wait-free. The price is writing each value twice and twice the
//!   value memory (36 bytes per slot for the binding table's three `u32`
//!   words: 48 MB for 1M bindings in
//!   [`binding_table_for`]'s 4/3 M slots).
//! * *Visibility.* An update is visible as soon as its step-3 store is
//!   (immediately on x86); a reader that synchronises with the writer after
//!   `insert` returned (loom checks this) cannot see the old value.
//!
//! `seq` is a `u32`; a reader would be fooled only if one slot were updated
//! exactly 2^31 times during one read of a few nanoseconds.
//!
//! **Probing, tombstones, no moves.** A key lives within
//! [`MAX_PROBE`](seqmap::MAX_PROBE) slots of its home slot; lookups scan from
//! the home slot, skip tombstones, and stop at the key, at an empty slot, or
//! after `MAX_PROBE` slots. Insert scans the whole path first (the key may
//! sit behind a tombstone, and must then be replaced in place), then takes
//! the first tombstone, else the empty slot that ended the scan; with no free
//! slot on the path it fails with [`TableError::Full`]. Remove writes a
//! tombstone. Entries never move: backward-shift deletion would let a
//! concurrent reader miss a key in transit. To keep probe paths short, a
//! removal whose next slot is empty turns the run of tombstones ending at it
//! back into empty slots: the invariant "every slot between a live key's home
//! slot and its slot is non-empty" holds after each single slot write, so a
//! concurrent reader never stops early in front of a key that is present.
//!
//! **Reclamation.** Nothing is ever freed while the table exists: a removed
//! entry's slot is overwritten in place by a later insert, which readers
//! detect through `seq` like any update. So no hazard pointers or epochs are
//! needed, and a reader holding a [`TableReader`] can never touch freed
//! memory (the slot array lives until the last handle is dropped).
//!
//! **Slot indices** are stable while a binding exists (replacing its care-of
//! address or MAC keeps the slot), so per-binding counters can be indexed by
//! slot. After a removal the slot may go to another VM: whoever keeps
//! per-slot counters must reset them when `insert` returns a slot for a VM
//! that was not bound.

mod seqmap;
mod sync;

#[cfg(all(test, loom))]
mod loom_model;

pub use seqmap::{
    home_slot, seq_map, seq_map_exact, seq_map_exact_of, seq_map_of, slot_bytes, SeqMapError,
    SeqMapReader, SeqMapWriter, Word, EMPTY, MAX_CAPACITY, MAX_PROBE, TOMBSTONE,
};

use std::net::Ipv4Addr;

/// Default number of slots for [`binding_table`] callers without an opinion.
pub const DEFAULT_CAPACITY: usize = 65536;

/// Bytes per slot of the binding table.
pub const SLOT_BYTES: usize = slot_bytes::<WORDS, u32>();

/// A binding's words: the care-of address, and the VM's MAC with a flag
/// for whether it is known (80 bits and one, in three `u32`s).
const WORDS: usize = 3;

/// Slots [`binding_table_for`] gives `max_bindings` bindings: 4 slots per 3
/// bindings (at most 75 % full), at least 64.
///
/// Why 75 %: with Fibonacci hashing the hosts of a subnet spread almost
/// evenly (a probe of one or two slots even when full). For random
/// addresses linear probing at 75 % load averages 2.5 slots per hit and
/// 8.5 per miss, and the worst displacement of 1M random keys stays near
/// 250, under [`MAX_PROBE`] (`seqmap::tests::random_keys_at_full_load`); at
/// 80 % it passes 300. 36-byte slots make this 48 bytes per binding; the
/// power-of-two sizing it replaces (twice the bindings, rounded up) cost
/// 72 at 1M.
pub fn slots_for(max_bindings: usize) -> usize {
    max_bindings
        .saturating_add(max_bindings / 3)
        .clamp(64, MAX_CAPACITY)
}

/// Where a VM is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    /// The VM's home address (the key).
    pub vm: Ipv4Addr,
    /// Its care-of address: the foreign agent that tunnels for it.
    pub care_of: Ipv4Addr,
    /// Its MAC address, if known (for delivery on the home link after
    /// decapsulation, and for proxy ARP bookkeeping).
    pub vm_mac: Option<[u8; 6]>,
}

/// Errors of [`TableWriter::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// 0.0.0.0 and 255.255.255.255 cannot be bound.
    #[error("invalid VM address {0} (0.0.0.0 and 255.255.255.255 cannot be bound)")]
    InvalidAddress(Ipv4Addr),
    /// No free slot within the probe bound of the VM's home slot.
    #[error("binding table full (no free slot near the VM's home slot)")]
    Full,
}

/// Bit 16 of word 1: the MAC is present.
const MAC_PRESENT: u32 = 1 << 16;

/// Word 0 the care-of address; the MAC's first two bytes in word 1's low
/// half, its last four in word 2.
fn encode(b: &Binding) -> [u32; WORDS] {
    let (hi, lo) = match b.vm_mac {
        Some(m) => (
            MAC_PRESENT | u32::from(u16::from_be_bytes([m[0], m[1]])),
            u32::from_be_bytes([m[2], m[3], m[4], m[5]]),
        ),
        None => (0, 0),
    };
    [u32::from(b.care_of), hi, lo]
}

#[inline]
fn decode(vm: Ipv4Addr, words: [u32; WORDS]) -> Binding {
    let vm_mac = (words[1] & MAC_PRESENT != 0).then(|| {
        let [_, _, a, b] = words[1].to_be_bytes();
        let [c, d, e, f] = words[2].to_be_bytes();
        [a, b, c, d, e, f]
    });
    Binding {
        vm,
        care_of: Ipv4Addr::from(words[0]),
        vm_mac,
    }
}

/// Creates a binding table of `capacity` slots (rounded up to a power of
/// two, at most [`MAX_CAPACITY`]) and returns its only writer and a reader.
/// Memory: [`SLOT_BYTES`] (36) per slot, allocated up front.
pub fn binding_table(capacity: usize) -> (TableWriter, TableReader) {
    let (w, r) = seq_map_of::<WORDS, u32>(capacity);
    (TableWriter { map: w }, TableReader { map: r })
}

/// Creates a binding table for up to `max_bindings` bindings: exactly
/// [`slots_for`]`(max_bindings)` slots ([`SLOT_BYTES`] each, allocated up
/// front).
pub fn binding_table_for(max_bindings: usize) -> (TableWriter, TableReader) {
    let (w, r) = seq_map_exact_of::<WORDS, u32>(slots_for(max_bindings));
    (TableWriter { map: w }, TableReader { map: r })
}

/// The unique writer of the binding table (the control plane). `Send`, not
/// `Clone`.
#[derive(Debug)]
pub struct TableWriter {
    map: SeqMapWriter<WORDS, u32>,
}

impl TableWriter {
    /// Binds `b.vm` to `b.care_of` / `b.vm_mac`. An existing binding for the
    /// VM is replaced in place (same slot). Returns the slot.
    pub fn insert(&mut self, b: Binding) -> Result<u32, TableError> {
        match self.map.insert(u32::from(b.vm), encode(&b)) {
            Ok((slot, _)) => Ok(slot),
            Err(SeqMapError::InvalidKey(_)) => Err(TableError::InvalidAddress(b.vm)),
            Err(e @ SeqMapError::Full { .. }) => {
                tracing::warn!(vm = %b.vm, error = %e, len = self.map.len(), "binding table full");
                Err(TableError::Full)
            }
        }
    }

    /// Removes the binding of `vm`; returns it and the slot it occupied.
    pub fn remove(&mut self, vm: Ipv4Addr) -> Option<(Binding, u32)> {
        self.map
            .remove(u32::from(vm))
            .map(|(w, slot)| (decode(vm, w), slot))
    }

    /// The binding of `vm` and its slot.
    pub fn get(&self, vm: Ipv4Addr) -> Option<(Binding, u32)> {
        self.map
            .get(u32::from(vm))
            .map(|(w, slot)| (decode(vm, w), slot))
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no bindings.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// Bytes of the slot array (allocated up front, whatever the load).
    pub fn memory_bytes(&self) -> usize {
        self.map.capacity() * SLOT_BYTES
    }

    /// All bindings with their slots, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Binding, u32)> + '_ {
        self.map
            .iter()
            .map(|(k, w, slot)| (decode(Ipv4Addr::from(k), w), slot))
    }

    /// A new reader.
    pub fn reader(&self) -> TableReader {
        TableReader {
            map: self.map.reader(),
        }
    }
}

/// A reader of the binding table (one per worker). `Clone + Send + Sync`;
/// clones share the table (an `Arc`).
#[derive(Clone, Debug)]
pub struct TableReader {
    map: SeqMapReader<WORDS, u32>,
}

impl TableReader {
    /// The binding of `vm` and its slot. No allocation, lock or syscall;
    /// never waits for the writer.
    #[inline]
    pub fn lookup(&self, vm: Ipv4Addr) -> Option<(Binding, u32)> {
        self.map
            .get(u32::from(vm))
            .map(|(w, slot)| (decode(vm, w), slot))
    }

    /// Prefetches what a [`lookup`](Self::lookup) of `vm` will read; returns
    /// its likely slot (the home slot), for prefetching per-slot counters.
    #[inline]
    pub fn prefetch(&self, vm: Ipv4Addr) -> u32 {
        self.map.prefetch(u32::from(vm))
    }

    /// Number of slots (an upper bound for slot indices, for sizing
    /// per-slot counters).
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn b(vm: &str, coa: &str, mac: Option<[u8; 6]>) -> Binding {
        Binding {
            vm: ip(vm),
            care_of: ip(coa),
            vm_mac: mac,
        }
    }

    #[test]
    fn handles_are_send_sync() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync + Clone>() {}
        send::<TableWriter>();
        send_sync::<TableReader>();
    }

    #[test]
    fn encode_round_trips() {
        for mac in [
            None,
            Some([0; 6]),
            Some([0xff; 6]),
            Some([2, 0, 0, 0, 0, 1]),
        ] {
            let x = b("10.0.0.1", "255.255.255.255", mac);
            assert_eq!(decode(x.vm, encode(&x)), x);
        }
    }

    #[test]
    fn insert_lookup_replace_remove_reinsert() {
        let (mut w, r) = binding_table(100);
        assert_eq!(w.capacity(), 128);
        assert_eq!(r.capacity(), 128);
        assert!(w.is_empty());

        let x = b("192.0.2.10", "198.51.100.1", Some([2, 0, 0, 0, 0, 10]));
        let slot = w.insert(x).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(r.lookup(x.vm), Some((x, slot)));
        assert_eq!(w.get(x.vm), Some((x, slot)));
        // Alone in the table, it sits in its home slot: the one prefetched.
        assert_eq!(r.prefetch(x.vm), slot);
        assert_eq!(r.lookup(ip("192.0.2.11")), None);

        // Replace: same slot, new care-of, MAC dropped.
        let y = b("192.0.2.10", "203.0.113.7", None);
        assert_eq!(w.insert(y).unwrap(), slot);
        assert_eq!(w.len(), 1);
        assert_eq!(r.lookup(x.vm), Some((y, slot)));

        // A reader made later sees the same.
        assert_eq!(w.reader().lookup(x.vm), Some((y, slot)));
        assert_eq!(r.clone().lookup(x.vm), Some((y, slot)));

        assert_eq!(w.remove(x.vm), Some((y, slot)));
        assert_eq!(w.remove(x.vm), None);
        assert_eq!(r.lookup(x.vm), None);
        assert!(w.is_empty());

        w.insert(x).unwrap();
        assert_eq!(r.lookup(x.vm).map(|(b, _)| b), Some(x));
        assert_eq!(w.iter().collect::<Vec<_>>(), vec![w.get(x.vm).unwrap()]);
    }

    #[test]
    fn reserved_addresses_rejected() {
        let (mut w, r) = binding_table(16);
        for a in [Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST] {
            let x = Binding {
                vm: a,
                care_of: ip("198.51.100.1"),
                vm_mac: None,
            };
            assert_eq!(w.insert(x), Err(TableError::InvalidAddress(a)));
            assert_eq!(r.lookup(a), None);
            assert_eq!(w.remove(a), None);
        }
    }

    #[test]
    fn full_table() {
        let (mut w, r) = binding_table(8);
        for i in 1..=8u8 {
            w.insert(b(&format!("10.0.0.{i}"), "198.51.100.1", None))
                .unwrap();
        }
        assert_eq!(
            w.insert(b("10.0.0.9", "198.51.100.1", None)),
            Err(TableError::Full)
        );
        // Replacing an existing binding still works.
        let s = w.get(ip("10.0.0.3")).unwrap().1;
        assert_eq!(w.insert(b("10.0.0.3", "198.51.100.2", None)), Ok(s));
        w.remove(ip("10.0.0.4")).unwrap();
        w.insert(b("10.0.0.9", "198.51.100.1", None)).unwrap();
        assert!(r.lookup(ip("10.0.0.9")).is_some());
        assert_eq!(w.iter().count(), 8);
    }

    #[test]
    fn slots_are_stable_and_distinct() {
        let (mut w, r) = binding_table(1024);
        let mut slots = std::collections::HashMap::new();
        for i in 1..=254u8 {
            let x = b(&format!("192.0.2.{i}"), "198.51.100.1", None);
            slots.insert(x.vm, w.insert(x).unwrap());
        }
        // Remove every third, replace the others: surviving slots unchanged.
        for i in (1..=254u8).step_by(3) {
            w.remove(ip(&format!("192.0.2.{i}"))).unwrap();
        }
        for i in 1..=254u8 {
            let vm = ip(&format!("192.0.2.{i}"));
            if (i - 1) % 3 == 0 {
                assert_eq!(r.lookup(vm), None);
            } else {
                let s = w
                    .insert(b(&format!("192.0.2.{i}"), "203.0.113.9", None))
                    .unwrap();
                assert_eq!(s, slots[&vm]);
                assert_eq!(r.lookup(vm).unwrap().1, s);
            }
        }
        let mut seen: Vec<u32> = w.iter().map(|(_, s)| s).collect();
        let n = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n);
    }

    /// 1M bindings fit in the table sized for them (4/3 M slots, 48 bytes
    /// per binding), and every one is found, MACs included.
    #[test]
    fn million_bindings() {
        let (mut w, r) = binding_table_for(1_000_000);
        assert_eq!(w.capacity(), 1_333_333);
        assert_eq!(SLOT_BYTES, 36);
        assert!(w.memory_bytes() <= 48 * 1_000_000);
        let base = u32::from(ip("10.0.0.0"));
        let mac = |i: u32| (!i.is_multiple_of(2)).then(|| mac_of(i, 0x5254));
        for i in 1..=1_000_000u32 {
            let x = Binding {
                vm: Ipv4Addr::from(base + i),
                care_of: Ipv4Addr::from(base.wrapping_sub(i)),
                vm_mac: mac(i),
            };
            w.insert(x).unwrap();
        }
        assert_eq!(w.len(), 1_000_000);
        for i in (1..=1_000_000u32).step_by(997) {
            let (x, _) = r.lookup(Ipv4Addr::from(base + i)).unwrap();
            assert_eq!(x.care_of, Ipv4Addr::from(base.wrapping_sub(i)));
            assert_eq!(x.vm_mac, mac(i));
        }
    }

    /// A MAC whose last four bytes are `n` and first two `hi`.
    fn mac_of(n: u32, hi: u16) -> [u8; 6] {
        let [a, b] = hi.to_be_bytes();
        let [c, d, e, f] = n.to_be_bytes();
        [a, b, c, d, e, f]
    }

    /// The binding table's three `u32` words are never seen torn: a
    /// writer moves VMs between care-of addresses, each move's MAC made
    /// from its care-of address, while a reader checks every binding it
    /// sees has the MAC of its own care-of address.
    #[test]
    fn a_binding_is_never_seen_torn() {
        let (mut w, r) = binding_table(64);
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for vm in 1..=40u32 {
                        if let Some((b, _)) = r.lookup(Ipv4Addr::from(vm)) {
                            let c = u32::from(b.care_of);
                            let want = (!c.is_multiple_of(3)).then(|| mac_of(c, c as u16 ^ 0xbeef));
                            assert_eq!(b.vm_mac, want, "torn: {b:?}");
                            seen += 1;
                        }
                    }
                }
                seen
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        let mut x = 0x9e37_79b9u32;
        while std::time::Instant::now() < deadline {
            for _ in 0..1000 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let vm = x % 40 + 1;
                if x & 0x700 == 0 {
                    w.remove(Ipv4Addr::from(vm));
                    continue;
                }
                let c = x | 1;
                w.insert(Binding {
                    vm: Ipv4Addr::from(vm),
                    care_of: Ipv4Addr::from(c),
                    vm_mac: (!c.is_multiple_of(3)).then(|| mac_of(c, c as u16 ^ 0xbeef)),
                })
                .unwrap();
            }
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 10_000);
    }

    /// Values that encode their key and a generation, checkable by readers.
    fn val(key: u32, gen: u32) -> [u64; 2] {
        let w0 = (u64::from(key) << 32) | u64::from(gen);
        [w0, w0.rotate_left(23) ^ 0xA5A5_5A5A_F00D_CAFE]
    }

    fn check(key: u32, v: [u64; 2]) -> u32 {
        assert_eq!((v[0] >> 32) as u32, key, "value of another key: {v:x?}");
        assert_eq!(
            v[1],
            v[0].rotate_left(23) ^ 0xA5A5_5A5A_F00D_CAFE,
            "torn value {v:x?}"
        );
        v[0] as u32
    }

    /// A writer churns (insert, replace, remove, reinsert, on colliding keys)
    /// while readers check that every value they observe is one written for
    /// that key, untorn, and that a completed write is seen.
    #[test]
    fn stress_no_torn_reads() {
        const KEYS: u32 = 96;
        let (mut w, r) = seq_map::<2>(128); // 75 % max load: long probe runs
        let stop = Arc::new(AtomicBool::new(false));
        // Per key: the last generation inserted with a completed `insert`
        // (0 = removed), published after the write.
        let published: Arc<Vec<AtomicU64>> =
            Arc::new((0..=KEYS).map(|_| AtomicU64::new(0)).collect());
        let observed = Arc::new(AtomicU64::new(0));

        let readers: Vec<_> = (0..2)
            .map(|t| {
                let r = r.clone();
                let stop = Arc::clone(&stop);
                let published = Arc::clone(&published);
                let observed = Arc::clone(&observed);
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    let mut k = 1 + t;
                    while !stop.load(Ordering::Relaxed) {
                        k = k % KEYS + 1;
                        // The writer publishes `gen` (Release) after the
                        // insert of generation `gen` returned: the lookup must
                        // see `gen` or a later write, never an older one.
                        let p1 = published[k as usize].load(Ordering::Acquire);
                        let res = r.get(k);
                        let p2 = published[k as usize].load(Ordering::Acquire);
                        match res {
                            Some((v, _)) => {
                                let g = check(k, v);
                                let floor = p1 as u32;
                                assert!(g >= floor, "key {k}: saw gen {g} after {floor} completed");
                            }
                            // Present before and after the lookup (same
                            // generation, and a removal publishes 0 first):
                            // it must have been found.
                            None => assert!(
                                p1 >> 32 == 0 || p1 != p2,
                                "key {k}: present (gen {}) but not found",
                                p1 as u32
                            ),
                        }
                        n += 1;
                    }
                    observed.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();

        // Deterministic pseudo-random churn.
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut gen = [0u32; KEYS as usize + 1];
        let mut next_gen = 1u32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        let mut ops = 0u64;
        while std::time::Instant::now() < deadline {
            for _ in 0..1000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = (x % u64::from(KEYS)) as u32 + 1;
                if x & 0x300 == 0 && gen[k as usize] != 0 {
                    // Mark "in flux" (bit 32 clear, gen 0) before removing.
                    published[k as usize].store(0, Ordering::Release);
                    w.remove(k).unwrap();
                    gen[k as usize] = 0;
                } else {
                    let g = next_gen;
                    next_gen += 1;
                    w.insert(k, val(k, g)).unwrap();
                    gen[k as usize] = g;
                    // bit 32: present; low bits: generation.
                    published[k as usize].store((1 << 32) | u64::from(g), Ordering::Release);
                }
                ops += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in readers {
            t.join().unwrap();
        }
        // Final state agrees with the model.
        for k in 1..=KEYS {
            match gen[k as usize] {
                0 => assert_eq!(r.get(k), None),
                g => assert_eq!(r.get(k).map(|(v, _)| v), Some(val(k, g))),
            }
        }
        assert!(ops > 10_000, "writer made {ops} ops");
        assert!(observed.load(Ordering::Relaxed) > 10_000);
    }
}
