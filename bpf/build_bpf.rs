// Shared by `dataplane/build.rs` and `benches/build.rs` (with `include!`):
// compiles BPF C programs in this directory with clang, one object each.
// Set `CLANG` to pick the compiler (default `clang` on PATH). The multiarch
// include directory (`/usr/include/<triple>`, for `asm/types.h`) is derived
// from the target architecture.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1);
}

/// Compiles `bpf/<name>.c` for every name into `$OUT_DIR/<name>.bpf.o`.
/// `what` names the programs in the error for a missing clang.
fn build_bpf_programs(programs: &[&str], what: &str) {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(
        env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR is not set (not run by cargo?)")),
    );
    let bpf_dir = manifest_dir.join("..").join("bpf");
    let bpf_dir = bpf_dir.canonicalize().unwrap_or(bpf_dir);

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CLANG");
    // The directory (new files) and every file in it (edits).
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    match std::fs::read_dir(&bpf_dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                println!("cargo:rerun-if-changed={}", entry.path().display());
            }
        }
        Err(e) => fail(&format!("reading {}: {e}", bpf_dir.display())),
    }

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let multiarch = multiarch_include();

    for prog in programs {
        let src = bpf_dir.join(format!("{prog}.c"));
        let obj = out_dir.join(format!("{prog}.bpf.o"));
        compile(&clang, &src, &obj, &bpf_dir, multiarch.as_deref(), what);
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

fn compile(
    clang: &str,
    src: &Path,
    obj: &Path,
    include: &Path,
    multiarch: Option<&Path>,
    what: &str,
) {
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
            "`{clang}` not found: clang is needed to build {what} {} \
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
    // Warnings would have failed the build (-Werror); show anything else clang said.
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("cargo:warning={line}");
    }
}
