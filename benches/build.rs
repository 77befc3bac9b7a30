//! Builds the benchmark's BPF programs (`bpf/gen.c`, `bpf/sink.c`,
//! `bpf/baseline_redirect.c`, `bpf/baseline_ipip.c`) with clang into
//! `$OUT_DIR/<name>.bpf.o`; `src/bpf.rs` embeds them with `include_bytes!`.

include!("../bpf/build_bpf.rs");

fn main() {
    build_bpf_programs(
        &["gen", "sink", "baseline_redirect", "baseline_ipip"],
        "the benchmark's BPF program",
    );
}
