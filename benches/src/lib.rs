//! Benchmark support for homeward: traffic generation and measurement
//! helpers for the forwarding harness (`src/bin/forward.rs`) and the
//! criterion microbenchmarks (`benches/`).
//!
//! - [`bpf`]: the generator, sink and baseline XDP programs (`bpf/gen.c`,
//!   `bpf/sink.c`, `bpf/baseline_*.c`), loaded through libbpf.
//! - [`netns`]: namespaces and the generator ─ home agent ─ sink lab.
//! - [`hist`]: the sink's latency buckets, turned into an hdrhistogram.
//! - [`procstat`]: steal time from /proc/stat.
//! - [`frames`]: test frames with valid checksums.
//! - [`sys`]: every `unsafe` of this crate.

pub mod bpf;
pub mod frames;
pub mod hist;
pub mod netns;
pub mod procstat;
pub mod sys;
