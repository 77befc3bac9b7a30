//! Builds the XDP steering program (`bpf/steer.c`) with clang into
//! `$OUT_DIR/steer.bpf.o`; `src/loader.rs` embeds it with `include_bytes!`.

include!("../bpf/build_bpf.rs");

fn main() {
    build_bpf_programs(&["steer"], "the XDP steering program");
}
