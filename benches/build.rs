//! Builds the benchmark's BPF programs (`bpf/gen.c`, `bpf/sink.c`,
//! `bpf/baseline_redirect.c`, `bpf/baseline_ipip.c`) with clang into
//! `$OUT_DIR/<name>.bpf.o`; `src/bpf.rs` embeds them with `include_bytes!`.
//! Same flags as `dataplane/build.rs`; `CLANG` picks the compiler.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// The benchmark's BPF programs, one file each, in `bpf/`.
const PROGRAMS: &[&str] = &["gen", "sink", "baseline_redirect", "baseline_ipip"];

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1);
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(
        env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR is not set (not run by cargo?)")),
    );
    let bpf_dir = manifest_dir.join("..").join("bpf");
    let bpf_dir = bpf_dir.canonicalize().unwrap_or(bpf_dir);

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CLANG");
    for prog in PROGRAMS {
        println!(
            "cargo:rerun-if-changed={}",
            bpf_dir.join(format!("{prog}.c")).display()
        );
    }

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let multiarch = multiarch_include();
    for prog in PROGRAMS {
        let src = bpf_dir.join(format!("{prog}.c"));
        let obj = out_dir.join(format!("{prog}.bpf.o"));
        compile(&clang, &src, &obj, &bpf_dir, multiarch.as_deref());
    }
}

/// `/usr/include/<triple>` for the target architecture, if it exists.
fn multiarch_include() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "x86" => "i386-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        _ => return None,
    };
    let dir = Path::new("/usr/include").join(triple);
    dir.is_dir().then_some(dir)
}

fn compile(clang: &str, src: &Path, obj: &Path, include: &Path, multiarch: Option<&Path>) {
    let mut cmd = Command::new(clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]);
    if let Some(dir) = multiarch {
        cmd.arg(format!("-I{}", dir.display()));
    }
    cmd.arg(format!("-I{}", include.display()))
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(obj);
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(&format!(
            "`{clang}` not found: clang is needed to build the benchmark's BPF program {} \
             (apt-get install clang llvm libbpf-dev, or set CLANG=/path/to/clang)",
            src.display()
        )),
        Err(e) => fail(&format!("running `{clang}`: {e}")),
    };
    if !output.status.success() {
        fail(&format!(
            "compiling {} with `{cmd:?}` failed ({}):\n{}{}",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("cargo:warning={line}");
    }
}
