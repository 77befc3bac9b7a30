//! `SeqMap`: a fixed-capacity, single-writer, wait-free-read hash map from a
//! nonzero `u32` key to `[T; W]` (`T` a `u64` or a `u32`).
//!
//! See the module documentation of [`crate::table`] for the design and the
//! memory-ordering argument; this file is the implementation.
//!
//! # Slot layout and states
//!
//! Every slot is a *latched seqlock*: one sequence counter and two copies of
//! `(key, words)`. The key word of a copy encodes the slot state:
//! [`EMPTY`] (never used, or cleaned up), [`TOMBSTONE`] (removed), or a live
//! key. At rest both copies are equal; during a write the copy that readers
//! are not directed to is modified first, then readers are switched to it,
//! then the other copy is brought up to date.

use super::sync::{fence, spin_loop, Arc, AtomicU32, AtomicU64, Ordering};

/// A value word: `u64` (the default) or `u32`, each stored in its atomic.
/// Smaller words make smaller slots: the binding table's three `u32` words
/// (care-of address, VM MAC) take 36-byte slots where two `u64` took 48.
pub trait Word: Copy + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static {
    /// The atomic that holds one.
    type Atomic: Send + Sync;
    fn atomic(self) -> Self::Atomic;
    /// A Relaxed load: the slot's sequence orders it (see the module docs).
    fn load(a: &Self::Atomic) -> Self;
    /// A Relaxed store, as [`Word::load`].
    fn store(a: &Self::Atomic, v: Self);
}

/// The two words: the same four lines each, for their atomic.
macro_rules! word {
    ($t:ty, $atomic:ty) => {
        impl Word for $t {
            type Atomic = $atomic;
            fn atomic(self) -> $atomic {
                <$atomic>::new(self)
            }
            #[inline]
            fn load(a: &$atomic) -> $t {
                a.load(Ordering::Relaxed)
            }
            #[inline]
            fn store(a: &$atomic, v: $t) {
                a.store(v, Ordering::Relaxed)
            }
        }
    };
}
word!(u64, AtomicU64);
word!(u32, AtomicU32);

/// Key word of a slot that holds nothing and ends every probe sequence.
pub const EMPTY: u32 = 0;
/// Key word of a slot whose entry was removed; probes continue past it.
pub const TOMBSTONE: u32 = u32::MAX;
/// Upper bound on the length of a probe sequence (lookups, inserts). A key is
/// always stored within this many slots of its home slot, so a lookup reads at
/// most this many slots, whatever the table's history.
///
/// 512: one million random addresses in a table 75 % full (the binding
/// table's sizing) need up to about 250; subnets need a few.
pub const MAX_PROBE: usize = 512;
/// Largest capacity (slot indices must fit a `u32`).
pub const MAX_CAPACITY: usize = 1 << 31;

/// Errors of [`SeqMapWriter::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SeqMapError {
    /// The key is one of the two reserved words (`0` or `u32::MAX`).
    #[error("key {0:#x} is reserved (0 and 0xffffffff cannot be stored)")]
    InvalidKey(u32),
    /// No free slot within [`MAX_PROBE`] slots of the key's home slot.
    #[error("map full: no free slot within {probe} slots of the home slot of key {key:#x} (capacity {capacity})")]
    Full {
        /// The key that did not fit.
        key: u32,
        /// The map's capacity.
        capacity: usize,
        /// The probe bound that was searched.
        probe: usize,
    },
}

/// One slot. `seq` is even while readers should read copy 0, odd while they
/// should read copy 1. Size for `W = 2` `u64`s: 48 bytes; for `W = 3`
/// `u32`s: 36.
struct Slot<const W: usize, T: Word> {
    seq: AtomicU32,
    keys: [AtomicU32; 2],
    words: [[T::Atomic; W]; 2],
}

impl<const W: usize, T: Word> Slot<W, T> {
    fn new() -> Self {
        Slot {
            seq: AtomicU32::new(0),
            keys: [AtomicU32::new(EMPTY), AtomicU32::new(EMPTY)],
            words: [
                std::array::from_fn(|_| T::default().atomic()),
                std::array::from_fn(|_| T::default().atomic()),
            ],
        }
    }

    /// A consistent snapshot `(key, words)`, from any thread.
    ///
    /// Never waits for the writer: it retries only when the writer advanced
    /// the slot's sequence during the read (made progress), and each retry
    /// reads the copy the writer is not touching.
    #[inline]
    fn read(&self) -> (u32, [T; W]) {
        loop {
            // Acquire: pairs with the writer's Release stores of `seq`, so
            // the copy it designates is completely visible.
            let s1 = self.seq.load(Ordering::Acquire);
            let c = (s1 & 1) as usize;
            let key = self.keys[c].load(Ordering::Relaxed);
            let mut words = [T::default(); W];
            for (w, a) in words.iter_mut().zip(self.words[c].iter()) {
                *w = T::load(a);
            }
            // Acquire fence: if any load above read a value stored after one
            // of the writer's Release fences, then the `seq` store preceding
            // that fence happens-before the re-load below, which therefore
            // cannot return `s1` (Boehm, MSPC 2012).
            fence(Ordering::Acquire);
            let s2 = self.seq.load(Ordering::Relaxed);
            if s1 == s2 {
                return (key, words);
            }
            spin_loop();
        }
    }

    /// The slot's key as the (only) writer sees it: no synchronisation
    /// needed, the writer reads its own stores. At rest both copies agree.
    #[inline]
    fn writer_key(&self) -> u32 {
        self.keys[0].load(Ordering::Relaxed)
    }

    /// `(key, words)` as the writer sees it.
    fn writer_read(&self) -> (u32, [T; W]) {
        let mut words = [T::default(); W];
        for (w, a) in words.iter_mut().zip(self.words[0].iter()) {
            *w = T::load(a);
        }
        (self.keys[0].load(Ordering::Relaxed), words)
    }

    fn store_copy(&self, c: usize, key: u32, words: &[T; W]) {
        self.keys[c].store(key, Ordering::Relaxed);
        for (a, w) in self.words[c].iter().zip(words.iter()) {
            T::store(a, *w);
        }
    }

    /// Writer side: replace `(key, words)`. Callers hold the map's unique
    /// writer, so there is never more than one `write` in flight.
    fn write(&self, key: u32, words: &[T; W]) {
        // The writer is the only thread that stores `seq`: Relaxed suffices.
        let s = self.seq.load(Ordering::Relaxed);
        debug_assert_eq!(s & 1, 0, "slot at rest has an even sequence");
        // Readers move to copy 1. Release: copy 1 was last written before
        // this store (second half of the previous write), so readers that
        // acquire `s + 1` see it complete.
        self.seq.store(s.wrapping_add(1), Ordering::Release);
        // Release fence: orders the store above before the copy-0 stores
        // below for any reader whose Acquire fence observes one of them.
        fence(Ordering::Release);
        self.store_copy(0, key, words);
        // Readers move back to copy 0, now new. Release publishes copy 0.
        self.seq.store(s.wrapping_add(2), Ordering::Release);
        fence(Ordering::Release);
        self.store_copy(1, key, words);
    }
}

/// State shared by the writer and the readers.
struct Shared<const W: usize, T: Word> {
    slots: Box<[Slot<W, T>]>,
}

/// Geometry of a map, copied into every handle so that a lookup does not
/// chase the `Arc` for it.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    /// Number of slots: any count from 1 to [`MAX_CAPACITY`] (a power of two
    /// for [`seq_map`], exact for [`seq_map_exact`]).
    slots: usize,
    probe: usize,
}

impl Geometry {
    /// `capacity` rounded up to a power of two.
    fn new(capacity: usize) -> Self {
        let capacity = capacity
            .clamp(1, MAX_CAPACITY)
            .checked_next_power_of_two()
            .unwrap_or(MAX_CAPACITY);
        Geometry::exact(capacity)
    }

    /// Exactly `slots` slots (clamped to 1 ..= [`MAX_CAPACITY`]).
    fn exact(slots: usize) -> Self {
        let slots = slots.clamp(1, MAX_CAPACITY);
        Geometry {
            slots,
            probe: slots.min(MAX_PROBE),
        }
    }

    fn capacity(&self) -> usize {
        self.slots
    }

    /// Home slot of `key`: Fibonacci (multiply-shift) hashing, the top 32
    /// bits of `key * 2^64/phi`, scaled to the slot count by a multiply and
    /// shift (Lemire's "fastrange": no division, and any slot count, so the
    /// load factor need not jump by powers of two). The top bits of the
    /// product depend on every key bit, and consecutive keys (the hosts of a
    /// subnet) land far apart (three-distance theorem), so a /24 does not
    /// cluster. For a power-of-two count this is exactly the top
    /// `log2(slots)` bits of the product.
    #[inline]
    fn home(&self, key: u32) -> usize {
        let h = u64::from(key).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        // h < 2^32 and slots <= 2^31: the product fits, the result < slots.
        ((h * self.slots as u64) >> 32) as usize
    }

    /// The slot after `idx`, wrapping around.
    #[inline]
    fn next(&self, idx: usize) -> usize {
        let n = idx + 1;
        if n >= self.slots {
            0
        } else {
            n
        }
    }

    /// The slot before `idx`, wrapping around.
    fn prev(&self, idx: usize) -> usize {
        if idx == 0 {
            self.slots - 1
        } else {
            idx - 1
        }
    }
}

/// Home slot of `key` in a map of `capacity` slots (rounded like
/// [`seq_map`]); for tests that need colliding keys.
pub fn home_slot(key: u32, capacity: usize) -> usize {
    Geometry::new(capacity).home(key)
}

/// Creates a map of `capacity` slots, rounded up to a power of two (at least
/// 1, at most [`MAX_CAPACITY`]), and returns its only writer and a reader.
pub fn seq_map<const W: usize>(capacity: usize) -> (SeqMapWriter<W>, SeqMapReader<W>) {
    with_geometry(Geometry::new(capacity))
}

/// Creates a map of exactly `slots` slots (at least 1, at most
/// [`MAX_CAPACITY`]): for sizing a big map to a load factor rather than to
/// the next power of two.
pub fn seq_map_exact<const W: usize>(slots: usize) -> (SeqMapWriter<W>, SeqMapReader<W>) {
    with_geometry(Geometry::exact(slots))
}

/// [`seq_map`] with words of type `T`.
pub fn seq_map_of<const W: usize, T: Word>(
    capacity: usize,
) -> (SeqMapWriter<W, T>, SeqMapReader<W, T>) {
    with_geometry(Geometry::new(capacity))
}

/// [`seq_map_exact`] with words of type `T`.
pub fn seq_map_exact_of<const W: usize, T: Word>(
    slots: usize,
) -> (SeqMapWriter<W, T>, SeqMapReader<W, T>) {
    with_geometry(Geometry::exact(slots))
}

/// Bytes one slot takes (48 for two `u64` words, 36 for three `u32`s).
pub const fn slot_bytes<const W: usize, T: Word>() -> usize {
    std::mem::size_of::<Slot<W, T>>()
}

fn with_geometry<const W: usize, T: Word>(
    geo: Geometry,
) -> (SeqMapWriter<W, T>, SeqMapReader<W, T>) {
    let slots: Box<[Slot<W, T>]> =
        crate::cpu_hints::vec_on_huge_pages(geo.capacity(), Slot::new).into_boxed_slice();
    let shared = Arc::new(Shared { slots });
    let reader = SeqMapReader {
        shared: Arc::clone(&shared),
        geo,
    };
    let writer = SeqMapWriter {
        shared,
        geo,
        len: 0,
        tombstones: 0,
    };
    (writer, reader)
}

/// Result of the writer's probe for a key.
enum Probe {
    Found(usize),
    /// Absent; the first reusable slot (tombstone or empty) on the path.
    Absent(Option<usize>),
}

/// The unique writer of a [`SeqMap`](seq_map). Not `Clone`: single writer
/// is what makes the slot protocol correct.
pub struct SeqMapWriter<const W: usize, T: Word = u64> {
    shared: Arc<Shared<W, T>>,
    geo: Geometry,
    len: usize,
    tombstones: usize,
}

impl<const W: usize, T: Word> std::fmt::Debug for SeqMapWriter<W, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqMapWriter")
            .field("capacity", &self.capacity())
            .field("len", &self.len)
            .field("tombstones", &self.tombstones)
            .finish()
    }
}

impl<const W: usize, T: Word> SeqMapWriter<W, T> {
    fn slot(&self, idx: usize) -> &Slot<W, T> {
        // `idx` is always below `geo.slots == slots.len()` (`home`, `next`,
        // `prev`); the clamp (a compare, not a division: this is on every
        // probe step) keeps even a bug from indexing out of range.
        &self.shared.slots[idx.min(self.geo.slots - 1)]
    }

    fn probe(&self, key: u32) -> Probe {
        let mut idx = self.geo.home(key);
        let mut free = None;
        for _ in 0..self.geo.probe {
            match self.slot(idx).writer_key() {
                k if k == key => return Probe::Found(idx),
                EMPTY => {
                    // Invariant: every slot between a live key's home and its
                    // slot is non-empty, so the key cannot be further on.
                    return Probe::Absent(free.or(Some(idx)));
                }
                TOMBSTONE => {
                    free.get_or_insert(idx);
                }
                _ => {}
            }
            idx = self.geo.next(idx);
        }
        Probe::Absent(free)
    }

    /// Inserts or replaces. Returns the slot and the previous words if the
    /// key was present (then the slot is the same as before: an entry never
    /// moves while it is present).
    pub fn insert(
        &mut self,
        key: u32,
        words: [T; W],
    ) -> Result<(u32, Option<[T; W]>), SeqMapError> {
        if key == EMPTY || key == TOMBSTONE {
            return Err(SeqMapError::InvalidKey(key));
        }
        match self.probe(key) {
            Probe::Found(idx) => {
                let slot = self.slot(idx);
                let (_, old) = slot.writer_read();
                slot.write(key, &words);
                Ok((idx as u32, Some(old)))
            }
            Probe::Absent(Some(idx)) => {
                if self.slot(idx).writer_key() == TOMBSTONE {
                    self.tombstones -= 1;
                }
                self.slot(idx).write(key, &words);
                self.len += 1;
                Ok((idx as u32, None))
            }
            Probe::Absent(None) => Err(SeqMapError::Full {
                key,
                capacity: self.capacity(),
                probe: self.geo.probe,
            }),
        }
    }

    /// Removes `key`, returning its words and the slot it occupied.
    ///
    /// The slot becomes a tombstone; if the next slot is empty, the run of
    /// tombstones ending here is turned back into empty slots (no live key's
    /// probe path can cross an empty slot, so none crosses this run).
    pub fn remove(&mut self, key: u32) -> Option<([T; W], u32)> {
        if key == EMPTY || key == TOMBSTONE {
            return None;
        }
        let Probe::Found(idx) = self.probe(key) else {
            return None;
        };
        let slot = self.slot(idx);
        let (_, old) = slot.writer_read();
        let zero = [T::default(); W];
        slot.write(TOMBSTONE, &zero);
        self.len -= 1;
        self.tombstones += 1;

        if self.slot(self.geo.next(idx)).writer_key() == EMPTY {
            let mut j = idx;
            for _ in 0..self.capacity() {
                let s = self.slot(j);
                if s.writer_key() != TOMBSTONE {
                    break;
                }
                s.write(EMPTY, &zero);
                self.tombstones -= 1;
                j = self.geo.prev(j);
            }
        }
        Some((old, idx as u32))
    }

    /// Looks `key` up (writer side: no retry loop needed).
    pub fn get(&self, key: u32) -> Option<([T; W], u32)> {
        if key == EMPTY || key == TOMBSTONE {
            return None;
        }
        match self.probe(key) {
            Probe::Found(idx) => Some((self.slot(idx).writer_read().1, idx as u32)),
            Probe::Absent(_) => None,
        }
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no live entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of tombstones (removed entries whose slot was not yet reused
    /// or cleaned up).
    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.geo.capacity()
    }

    /// Live entries as `(key, words, slot)`, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, [T; W], u32)> + '_ {
        self.shared
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.writer_read() {
                (EMPTY | TOMBSTONE, _) => None,
                (k, w) => Some((k, w, i as u32)),
            })
    }

    /// A new reader of this map.
    pub fn reader(&self) -> SeqMapReader<W, T> {
        SeqMapReader {
            shared: Arc::clone(&self.shared),
            geo: self.geo,
        }
    }
}

/// A reader of a [`SeqMap`](seq_map): cheap to clone, `Send + Sync`, and its
/// lookups never block, allocate or call into the kernel.
pub struct SeqMapReader<const W: usize, T: Word = u64> {
    shared: Arc<Shared<W, T>>,
    geo: Geometry,
}

impl<const W: usize, T: Word> Clone for SeqMapReader<W, T> {
    fn clone(&self) -> Self {
        SeqMapReader {
            shared: Arc::clone(&self.shared),
            geo: self.geo,
        }
    }
}

impl<const W: usize, T: Word> std::fmt::Debug for SeqMapReader<W, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqMapReader")
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl<const W: usize, T: Word> SeqMapReader<W, T> {
    /// Looks `key` up: `(words, slot)` as of some instant during the call.
    #[inline]
    pub fn get(&self, key: u32) -> Option<([T; W], u32)> {
        if key == EMPTY || key == TOMBSTONE {
            return None;
        }
        let mut idx = self.geo.home(key);
        for _ in 0..self.geo.probe {
            let slot = self.shared.slots.get(idx)?;
            let (k, words) = slot.read();
            if k == key {
                return Some((words, idx as u32));
            }
            if k == EMPTY {
                return None;
            }
            idx = self.geo.next(idx);
        }
        None
    }

    /// Asks the CPU for the cache lines a [`get`](Self::get) of `key` will
    /// most likely read (the home slot and what follows it, two lines), and
    /// returns the home slot: the slot `key` is in when it did not collide.
    #[inline]
    pub fn prefetch(&self, key: u32) -> u32 {
        let idx = self.geo.home(key);
        if let Some(slot) = self.shared.slots.get(idx) {
            let p: *const Slot<W, T> = slot;
            crate::cpu_hints::prefetch(p);
            // A hit probes 2.5 slots on average at the table's 75 % load.
            crate::cpu_hints::prefetch(p.cast::<u8>().wrapping_add(64));
        }
        idx as u32
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.geo.capacity()
    }

    /// Live entries as `(key, words, slot)`: each one a consistent snapshot
    /// of its slot, the whole not an atomic snapshot of the map.
    pub fn iter(&self) -> impl Iterator<Item = (u32, [T; W], u32)> + '_ {
        self.shared
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.read() {
                (EMPTY | TOMBSTONE, _) => None,
                (k, w) => Some((k, w, i as u32)),
            })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn geometry_rounds_up() {
        assert_eq!(Geometry::new(0).capacity(), 1);
        assert_eq!(Geometry::new(1).capacity(), 1);
        assert_eq!(Geometry::new(3).capacity(), 4);
        assert_eq!(Geometry::new(65536).capacity(), 65536);
        assert_eq!(Geometry::new(65537).capacity(), 131072);
        assert_eq!(Geometry::new(usize::MAX).capacity(), MAX_CAPACITY);
        for cap in [1usize, 2, 8, 1 << 20, MAX_CAPACITY] {
            let g = Geometry::new(cap);
            for k in [1u32, 2, 0xdead_beef, u32::MAX - 1] {
                assert!(g.home(k) < cap);
            }
        }
    }

    #[test]
    fn capacity_one_works() {
        let (mut w, r) = seq_map::<1>(1);
        assert_eq!(w.insert(7, [70]).unwrap(), (0, None));
        assert!(matches!(w.insert(8, [80]), Err(SeqMapError::Full { .. })));
        assert_eq!(r.get(7), Some(([70], 0)));
        assert_eq!(w.remove(7), Some(([70], 0)));
        assert_eq!(r.get(7), None);
        assert_eq!(w.insert(8, [80]).unwrap(), (0, None));
        assert_eq!(r.get(8), Some(([80], 0)));
    }

    #[test]
    fn reserved_keys_rejected() {
        let (mut w, r) = seq_map::<1>(8);
        assert_eq!(w.insert(0, [1]), Err(SeqMapError::InvalidKey(0)));
        assert_eq!(
            w.insert(u32::MAX, [1]),
            Err(SeqMapError::InvalidKey(u32::MAX))
        );
        assert_eq!(r.get(0), None);
        assert_eq!(r.get(u32::MAX), None);
        assert_eq!(w.remove(0), None);
        assert!(w.is_empty());
    }

    /// Keys with the same home slot in a map of `cap` slots.
    fn colliding(cap: usize, n: usize) -> Vec<u32> {
        let target = home_slot(1, cap);
        (1u32..)
            .filter(|&k| home_slot(k, cap) == target)
            .take(n)
            .collect()
    }

    #[test]
    fn tombstones_are_probed_past_and_cleaned_up() {
        let cap = 16;
        let keys = colliding(cap, 3);
        let (a, b, c) = (keys[0], keys[1], keys[2]);
        let (mut w, r) = seq_map::<1>(cap);
        let sa = w.insert(a, [1]).unwrap().0;
        let sb = w.insert(b, [2]).unwrap().0;
        let sc = w.insert(c, [3]).unwrap().0;
        assert_eq!(sb as usize, (sa as usize + 1) % cap);
        assert_eq!(sc as usize, (sb as usize + 1) % cap);

        // Removing the head leaves a tombstone that b and c are found past.
        assert_eq!(w.remove(a), Some(([1], sa)));
        assert_eq!(w.tombstones(), 1);
        assert_eq!(r.get(b), Some(([2], sb)));
        assert_eq!(r.get(c), Some(([3], sc)));
        assert_eq!(r.get(a), None);

        // Removing the tail (followed by an empty slot) cleans it up, but the
        // tombstone before b stays.
        assert_eq!(w.remove(c), Some(([3], sc)));
        assert_eq!(w.tombstones(), 1);
        // Removing b now cleans up b's slot and then a's tombstone.
        assert_eq!(w.remove(b), Some(([2], sb)));
        assert_eq!(w.tombstones(), 0);
        assert!(w.is_empty());
        assert_eq!(r.iter().count(), 0);
    }

    #[test]
    fn insert_reuses_first_tombstone_after_checking_absence() {
        let cap = 16;
        let keys = colliding(cap, 3);
        let (a, b, c) = (keys[0], keys[1], keys[2]);
        let (mut w, r) = seq_map::<1>(cap);
        let sa = w.insert(a, [1]).unwrap().0;
        let sb = w.insert(b, [2]).unwrap().0;
        w.remove(a).unwrap();
        // b is behind the tombstone: replacing b must find b, not take the
        // tombstone (which would duplicate b).
        assert_eq!(w.insert(b, [22]).unwrap(), (sb, Some([2])));
        assert_eq!(w.len(), 1);
        // A new key takes the tombstone.
        assert_eq!(w.insert(c, [3]).unwrap(), (sa, None));
        assert_eq!(w.tombstones(), 0);
        assert_eq!(r.get(b), Some(([22], sb)));
        assert_eq!(r.get(c), Some(([3], sa)));
    }

    #[test]
    fn full_within_probe_bound() {
        let cap = 8;
        let (mut w, r) = seq_map::<1>(cap);
        for k in 1..=8u32 {
            w.insert(k, [u64::from(k)]).unwrap();
        }
        assert_eq!(w.len(), 8);
        assert!(matches!(
            w.insert(9, [9]),
            Err(SeqMapError::Full {
                key: 9,
                capacity: 8,
                ..
            })
        ));
        // Replacing still works when full.
        let (slot, old) = w.insert(5, [55]).unwrap();
        assert_eq!(old, Some([5]));
        assert_eq!(r.get(5), Some(([55], slot)));
        // A lookup for an absent key in a full map terminates.
        assert_eq!(r.get(9), None);
        w.remove(3).unwrap();
        w.insert(9, [9]).unwrap();
        assert_eq!(r.get(9).map(|x| x.0), Some([9]));
        assert_eq!(r.iter().count(), 8);
        assert_eq!(w.iter().count(), 8);
    }

    #[test]
    fn probe_bound_limits_search_in_big_maps() {
        // MAX_PROBE + 1 keys with one home slot: the last does not fit,
        // although the map has room.
        let cap = 4096;
        let keys = colliding(cap, MAX_PROBE + 1);
        let (mut w, r) = seq_map::<1>(cap);
        for &k in &keys[..MAX_PROBE] {
            w.insert(k, [1]).unwrap();
        }
        let last = keys[MAX_PROBE];
        assert!(matches!(
            w.insert(last, [1]),
            Err(SeqMapError::Full {
                probe: MAX_PROBE,
                ..
            })
        ));
        assert_eq!(r.get(last), None);
    }

    #[test]
    fn exact_geometry_any_slot_count() {
        assert_eq!(Geometry::exact(0).capacity(), 1);
        assert_eq!(Geometry::exact(1_250_003).capacity(), 1_250_003);
        assert_eq!(Geometry::exact(usize::MAX).capacity(), MAX_CAPACITY);
        // Power-of-two counts hash as before (top bits of the product).
        for k in [1u32, 7, 0x0a00_0001, 0xdead_beef, u32::MAX - 1] {
            let h = u64::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_eq!(Geometry::new(1 << 20).home(k), ((h >> 32) >> 12) as usize);
        }
        for cap in [1usize, 3, 5, 1000, 1_250_003, MAX_CAPACITY] {
            let g = Geometry::exact(cap);
            for k in [1u32, 2, 0xdead_beef, u32::MAX - 1] {
                assert!(g.home(k) < cap);
            }
            assert_eq!(g.next(cap - 1), 0);
            assert_eq!(g.prev(0), cap - 1);
        }
    }

    /// A map of an odd slot count fills completely, wraps its probes around
    /// the end, and cleans tombstones up across the wrap.
    #[test]
    fn odd_slot_count_fills_wraps_and_cleans_up() {
        let cap = 7;
        let (mut w, r) = seq_map_exact::<1>(cap);
        assert_eq!(w.capacity(), 7);
        for k in 1..=7u32 {
            w.insert(k, [u64::from(k)]).unwrap();
        }
        assert!(matches!(w.insert(8, [8]), Err(SeqMapError::Full { .. })));
        for k in 1..=7u32 {
            assert_eq!(r.get(k).map(|x| x.0), Some([u64::from(k)]));
        }
        assert_eq!(r.get(8), None);
        for k in 1..=7u32 {
            w.remove(k).unwrap();
        }
        assert!(w.is_empty() && r.iter().count() == 0);
        // A map that was full has no empty slot to end a run of tombstones
        // at: they stay (and are reused), so start afresh.
        let (mut w, r) = seq_map_exact::<1>(cap);

        // Keys whose home is the last slot spill over to slot 0.
        let last: Vec<u32> = (1u32..)
            .filter(|&k| Geometry::exact(cap).home(k) == cap - 1)
            .take(3)
            .collect();
        let slots: Vec<u32> = last.iter().map(|&k| w.insert(k, [1]).unwrap().0).collect();
        assert_eq!(slots, vec![6, 0, 1]);
        assert_eq!(r.get(last[2]), Some(([1], 1)));
        w.remove(last[0]).unwrap();
        assert_eq!(r.get(last[2]), Some(([1], 1)), "found past the tombstone");
        w.remove(last[2]).unwrap();
        w.remove(last[1]).unwrap();
        assert_eq!(w.tombstones(), 0);
    }

    /// One million random keys in the binding table's 75 % sizing: every
    /// key fits, found, with displacements far below the probe bound.
    #[test]
    fn random_keys_at_full_load() {
        let n = 1_000_000usize;
        let slots = crate::table::slots_for(n);
        let (mut w, r) = seq_map_exact::<1>(slots);
        let g = Geometry::exact(slots);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut keys = Vec::with_capacity(n);
        let (mut worst, mut total) = (0usize, 0usize);
        while keys.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x >> 16) as u32;
            if k == EMPTY || k == TOMBSTONE || r.get(k).is_some() {
                continue;
            }
            let (slot, _) = w.insert(k, [u64::from(k)]).unwrap();
            let d = (slot as usize + slots - g.home(k)) % slots;
            worst = worst.max(d);
            total += d;
            keys.push(k);
        }
        assert!(worst < MAX_PROBE * 3 / 4, "worst displacement {worst}");
        assert!(total / n < 3, "mean displacement {}", total / n);
        for &k in keys.iter().step_by(101) {
            assert_eq!(r.get(k).map(|x| x.0), Some([u64::from(k)]));
        }
    }

    #[test]
    fn subnet_does_not_cluster() {
        // Every /24 host gets its own home slot in a default-size table, and
        // a /16 spreads with short probe sequences at 50 % load.
        let base = u32::from(std::net::Ipv4Addr::new(10, 1, 2, 0));
        let g = Geometry::new(65536);
        let mut homes: Vec<usize> = (0..256).map(|i| g.home(base + i)).collect();
        homes.sort_unstable();
        homes.dedup();
        assert_eq!(homes.len(), 256);

        let (mut w, _r) = seq_map::<1>(1 << 17);
        let base = u32::from(std::net::Ipv4Addr::new(10, 1, 0, 0));
        let mut worst = 0usize;
        for i in 0..65536u32 {
            let (slot, _) = w.insert(base + i, [0]).unwrap();
            let home = home_slot(base + i, 1 << 17);
            worst = worst.max((slot as usize).wrapping_sub(home) & ((1 << 17) - 1));
        }
        assert!(worst <= 4, "worst displacement {worst}");
    }
}
