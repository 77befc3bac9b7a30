//! Atomics and `Arc` for the lock-free maps: `std`'s normally, loom's mocks
//! under `--cfg loom` so that the same code is model-checked.
//!
//! Only [`super::seqmap`] (and through it `table` and `neigh`) uses these.
//! Everything that touches them at run time under `--cfg loom` must run inside
//! `loom::model`, which is why only the `table::loom_model` tests are run in
//! that configuration.

#[cfg(loom)]
pub(crate) use loom::{
    hint::spin_loop,
    sync::{
        atomic::{fence, AtomicU32, AtomicU64, Ordering},
        Arc,
    },
};

#[cfg(not(loom))]
pub(crate) use std::{
    hint::spin_loop,
    sync::{
        atomic::{fence, AtomicU32, AtomicU64, Ordering},
        Arc,
    },
};
