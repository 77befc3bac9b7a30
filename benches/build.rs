//! Builds the benchmark's BPF programs (`bpf/gen.c`, `bpf/sink.c`,
//! `bpf/baseline_redirect.c`, `bpf/baseline_ipip.c`) with clang into
//! `$OUT_DIR/<name>.bpf.o`; `src/bpf.rs` embeds them with `include_bytes!`.
//! Also the C AF_XDP forwarder of baseline (d), `c/xsk_fwd.c`, into
//! `$OUT_DIR/xsk_fwd` (linked with the system's libxdp and libbpf); the
//! harness embeds it too, and `HWB_XSK_FWD` names it for the tests.

include!("../bpf/build_bpf.rs");

fn main() {
    build_bpf_programs(
        &["gen", "sink", "baseline_redirect", "baseline_ipip"],
        "the benchmark's BPF program",
    );
    build_xsk_fwd();
}

/// clang -O2 c/xsk_fwd.c -lxdp -lbpf. Without libxdp-dev the crate still
/// builds (a warning; the harness then skips (d), its test fails): the
/// other variants need none of it.
fn build_xsk_fwd() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let src = manifest_dir.join("c").join("xsk_fwd.c");
    let bin = out_dir.join("xsk_fwd");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rustc-env=HWB_XSK_FWD={}", bin.display());
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let result = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .args(["-lxdp", "-lbpf", "-lpthread"])
        .output();
    let failure = match result {
        Ok(o) if o.status.success() => return,
        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
        Err(e) => format!("running `{clang}`: {e}"),
    };
    for line in failure.lines().take(10) {
        println!("cargo:warning=xsk_fwd: {line}");
    }
    println!(
        "cargo:warning=baseline (d) not built (apt-get install libxdp-dev libbpf-dev): the harness will skip it"
    );
    // An empty file: include_bytes! needs one; the harness checks the length.
    if let Err(e) = std::fs::write(&bin, b"") {
        fail(&format!("writing {}: {e}", bin.display()));
    }
}
