//! loom models of the slot protocol and of probing (see the command at the
//! top of `table.rs`, or `dataplane/run-loom.sh`).
//!
//! Each model runs one writer (the test's main thread) against one reader
//! thread on a tiny map, with `W = 2` so that a torn read (words from two
//! different writes) is detectable: both words encode the key and the
//! generation. "A completed write is seen" is checked by having the writer
//! raise a flag (Release) after its operation returned; a reader that
//! acquires the flag must see the new state.

use super::seqmap::{home_slot, seq_map, seq_map_of};
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;

/// Keeps each model well under a second or so; the protocol's interesting
/// interleavings need at most two preemptions (reader between the writer's
/// two `seq` stores, writer between the reader's loads).
const PREEMPTION_BOUND: usize = 2;

fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&runs);
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(PREEMPTION_BOUND);
    b.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    // Shown with --nocapture: how many interleavings were explored.
    eprintln!(
        "loom: {} executions",
        runs.load(std::sync::atomic::Ordering::Relaxed)
    );
}

fn val(key: u32, gen: u32) -> [u64; 2] {
    let w0 = (u64::from(key) << 32) | u64::from(gen);
    [w0, !w0]
}

/// The generation encoded in `v`, asserting that `v` is an untorn value
/// written for `key`.
fn gen_of(key: u32, v: [u64; 2]) -> u32 {
    assert_eq!((v[0] >> 32) as u32, key, "value of another key");
    assert_eq!(v[1], !v[0], "torn value");
    v[0] as u32
}

/// One-word value for the structural models (fewer atomics, smaller state
/// space): a read mixing the key word of one write with the value word of
/// another is still caught, as the value must name the key it was found
/// under.
fn val1(key: u32, gen: u32) -> [u64; 1] {
    [(u64::from(key) << 32) | u64::from(gen)]
}

fn gen_of1(key: u32, v: [u64; 1]) -> u32 {
    assert_eq!((v[0] >> 32) as u32, key, "value of another key");
    v[0] as u32
}

/// `n` distinct keys sharing one home slot in a map of `cap` slots.
fn colliding(cap: usize, n: usize) -> Vec<u32> {
    let target = home_slot(1, cap);
    (1u32..)
        .filter(|&k| home_slot(k, cap) == target)
        .take(n)
        .collect()
}

/// Replacing a value in place: the reader sees the old or the new value,
/// never a mix, and the new one once the writer said it is done.
#[test]
fn replace_is_atomic_and_visible() {
    model(|| {
        const K: u32 = 7;
        let (mut w, r) = seq_map::<2>(2);
        w.insert(K, val(K, 1)).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        let reader = thread::spawn(move || {
            let seen_done = d.load(Ordering::Acquire);
            let (v, _) = r.get(K).expect("present throughout");
            let g = gen_of(K, v);
            if seen_done {
                assert_eq!(g, 2, "completed replace not seen");
            } else {
                assert!(g == 1 || g == 2);
            }
        });
        w.insert(K, val(K, 2)).unwrap();
        done.store(true, Ordering::Release);
        reader.join().unwrap();
    });
}

/// The binding table's words: three `u32`s, the same protocol.
#[test]
fn replace_is_atomic_and_visible_in_u32_words() {
    fn val3(key: u32, gen: u32) -> [u32; 3] {
        [key, gen, !(key ^ gen)]
    }
    model(|| {
        const K: u32 = 7;
        let (mut w, r) = seq_map_of::<3, u32>(2);
        w.insert(K, val3(K, 1)).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        let reader = thread::spawn(move || {
            let seen_done = d.load(Ordering::Acquire);
            let (v, _) = r.get(K).expect("present throughout");
            assert_eq!(v, val3(K, v[1]), "torn value");
            if seen_done {
                assert_eq!(v[1], 2, "completed replace not seen");
            } else {
                assert!(v[1] == 1 || v[1] == 2);
            }
        });
        w.insert(K, val3(K, 2)).unwrap();
        done.store(true, Ordering::Release);
        reader.join().unwrap();
    });
}

/// Two replaces in a row: the reader may race with both halves of both
/// latched writes (copy 0 and copy 1 each rewritten twice).
#[test]
fn two_replaces_never_torn() {
    model(|| {
        const K: u32 = 9;
        let (mut w, r) = seq_map::<2>(1);
        w.insert(K, val(K, 1)).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        let reader = thread::spawn(move || {
            let (v, _) = r.get(K).expect("present throughout");
            let g = gen_of(K, v);
            assert!((1..=3).contains(&g));
            if d.load(Ordering::Acquire) {
                let (v, _) = r.get(K).expect("present throughout");
                assert_eq!(gen_of(K, v), 3, "completed replace not seen");
            }
        });
        w.insert(K, val(K, 2)).unwrap();
        w.insert(K, val(K, 3)).unwrap();
        done.store(true, Ordering::Release);
        reader.join().unwrap();
    });
}

/// Insert into an empty map and remove again: the reader sees nothing or
/// the inserted value; once the insert completed it sees the value unless
/// the removal had begun, and once the removal completed nothing.
#[test]
fn insert_then_remove_visible() {
    model(|| {
        const K: u32 = 5;
        let (mut w, r) = seq_map::<1>(2);
        let inserted = Arc::new(AtomicBool::new(false));
        let removing = Arc::new(AtomicBool::new(false));
        let removed = Arc::new(AtomicBool::new(false));
        let (f_ins, f_ing, f_rem) = (
            Arc::clone(&inserted),
            Arc::clone(&removing),
            Arc::clone(&removed),
        );
        let reader = thread::spawn(move || {
            let was_removed = f_rem.load(Ordering::Acquire);
            let was_inserted = f_ins.load(Ordering::Acquire);
            let res = r.get(K);
            // If the lookup observed any store of the removal, it also
            // observes the flag raised before the removal began.
            let removal_begun = f_ing.load(Ordering::Acquire);
            match res {
                Some((v, _)) => {
                    assert_eq!(gen_of1(K, v), 1);
                    assert!(!was_removed, "completed remove not seen");
                }
                None => assert!(!was_inserted || removal_begun, "completed insert not seen"),
            }
        });
        w.insert(K, val1(K, 1)).unwrap();
        inserted.store(true, Ordering::Release);
        removing.store(true, Ordering::Release);
        w.remove(K).unwrap();
        removed.store(true, Ordering::Release);
        reader.join().unwrap();
    });
}

/// Slot reuse: A is removed and B (same home slot) takes A's slot. A reader
/// looking for A never gets B's value.
#[test]
fn reused_slot_never_returns_removed_key() {
    model(|| {
        let cap = 2;
        let keys = colliding(cap, 2);
        let (a, b) = (keys[0], keys[1]);
        let (mut w, r) = seq_map::<1>(cap);
        let slot_a = w.insert(a, val1(a, 1)).unwrap().0;
        let reader = thread::spawn(move || {
            if let Some((v, _)) = r.get(a) {
                assert_eq!(gen_of1(a, v), 1);
            }
        });
        w.remove(a).unwrap();
        let (slot_b, _) = w.insert(b, val1(b, 2)).unwrap();
        assert_eq!(slot_b, slot_a, "B reuses A's slot");
        reader.join().unwrap();
    });
}

/// Slot reuse, the other way: a reader looking for B never gets A's value,
/// and sees B once the insert completed.
#[test]
fn reused_slot_never_returns_previous_key() {
    model(|| {
        let cap = 2;
        let keys = colliding(cap, 2);
        let (a, b) = (keys[0], keys[1]);
        let (mut w, r) = seq_map::<1>(cap);
        w.insert(a, val1(a, 1)).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        let reader = thread::spawn(move || {
            let seen_done = d.load(Ordering::Acquire);
            match r.get(b) {
                Some((v, _)) => assert_eq!(gen_of1(b, v), 2),
                None => assert!(!seen_done, "completed insert not seen"),
            }
        });
        w.remove(a).unwrap();
        w.insert(b, val1(b, 2)).unwrap();
        done.store(true, Ordering::Release);
        reader.join().unwrap();
    });
}

/// Probing past tombstones while the writer removes the head of a cluster
/// and cleans up its tail: a key present throughout (B, in the middle of
/// the cluster A, B, C) is always found with its value.
#[test]
fn present_key_found_across_tombstones_and_cleanup() {
    model(|| {
        let cap = 4;
        let keys = colliding(cap, 3);
        let (a, b, c) = (keys[0], keys[1], keys[2]);
        let (mut w, r) = seq_map::<1>(cap);
        w.insert(a, val1(a, 1)).unwrap();
        let slot_b = w.insert(b, val1(b, 2)).unwrap().0;
        w.insert(c, val1(c, 3)).unwrap();
        let reader = thread::spawn(move || {
            let (v, slot) = r.get(b).expect("B present throughout");
            assert_eq!(gen_of1(b, v), 2);
            assert_eq!(slot, slot_b);
        });
        w.remove(a).unwrap(); // tombstone before B
        w.remove(c).unwrap(); // tombstone after B, then cleaned to empty
        assert_eq!(w.tombstones(), 1);
        reader.join().unwrap();
    });
}
