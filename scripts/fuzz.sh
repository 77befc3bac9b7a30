#!/usr/bin/env bash
# Coverage-guided fuzzing of homeward's parsers and packet pipeline with
# cargo-fuzz (libFuzzer, nightly Rust). The targets and their invariants are
# described in fuzz/README.md.
#
#   scripts/fuzz.sh smoke               build every target, replay the saved
#                                       regressions, fuzz each for
#                                       FUZZ_SMOKE_SECONDS (default 20) s;
#                                       non-zero on any crash
#   scripts/fuzz.sh run TARGET SECONDS  fuzz one target longer
#   scripts/fuzz.sh replay [TARGET]     run the saved regressions only
#   scripts/fuzz.sh seeds               regenerate fuzz/seeds/ (committed)
#   scripts/fuzz.sh list                the targets
#
# As root on Debian 12 with the nightly toolchain installed (rustup); it
# installs cargo-fuzz and the build dependencies if they are missing.
# New corpus entries go to fuzz/corpus/TARGET, crashes to
# fuzz/artifacts/TARGET (both ignored by git); the seeds in
# fuzz/seeds/TARGET are read, never written.
#
# Environment: FUZZ_SANITIZER (default none: the code is safe Rust, and
# debug assertions and overflow checks are on either way; "address" for
# ASan), FUZZ_SMOKE_SECONDS, FUZZ_JOBS (parallel fuzzing processes for
# `run`, default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

die() {
    echo "fuzz.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 2
}

sanitizer=${FUZZ_SANITIZER:-none}

prepare() {
    command -v rustup >/dev/null 2>&1 || die "rustup not found (the nightly toolchain comes from it)"
    rustup toolchain list | grep -q '^nightly' \
        || die "no nightly toolchain: cargo-fuzz needs one (rustup toolchain install nightly)"
    # The dataplane's build needs clang, libelf and libbpf (XDP program,
    # libxdp); libFuzzer needs a C++ compiler.
    if ! command -v clang >/dev/null 2>&1 || ! pkg-config --exists libelf 2>/dev/null; then
        bash scripts/install-deps.sh
    fi
    if ! command -v c++ >/dev/null 2>&1 && command -v clang++ >/dev/null 2>&1; then
        export CXX=clang++
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "== installing cargo-fuzz"
        cargo install cargo-fuzz --locked
    fi
}

targets() {
    cargo +nightly fuzz list
}

build() {
    echo "== building the fuzz targets (nightly, sanitizer $sanitizer)"
    local t0=$SECONDS
    cargo +nightly fuzz build -s "$sanitizer" "$@"
    echo "== built in $((SECONDS - t0)) s"
}

# The built fuzzer of TARGET: run directly, not through `cargo fuzz run`,
# which would go through cargo (and maybe a relink) once per target.
fuzzer() {
    local host
    host=$(rustc +nightly -vV | sed -n 's/^host: //p')
    echo "$root/fuzz/target/$host/release/$1"
}

# Replays every saved reproducer of TARGET (fuzz/regressions/TARGET/*): each
# must run without a crash.
replay() {
    local target=$1
    local dir=$root/fuzz/regressions/$target
    [ -d "$dir" ] || return 0
    local files=()
    while IFS= read -r -d '' f; do files+=("$f"); done \
        < <(find "$dir" -maxdepth 1 -type f ! -name '*.md' -print0 | sort -z)
    [ "${#files[@]}" -gt 0 ] || return 0
    echo "== $target: replaying ${#files[@]} regression input(s)"
    "$(fuzzer "$target")" -runs=1 "${files[@]}" >/dev/null 2>&1 || {
        "$(fuzzer "$target")" -runs=1 "${files[@]}" 2>&1 | tail -n 40 >&2
        die "$target: a saved regression crashes again"
    }
}

# Fuzzes TARGET for SECONDS; prints libFuzzer's closing statistics.
fuzz() {
    local target=$1 seconds=$2
    shift 2
    local corpus=$root/fuzz/corpus/$target seeds=$root/fuzz/seeds/$target
    local artifacts=$root/fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    [ -d "$seeds" ] || die "no seeds for $target (fuzz/seeds/$target): scripts/fuzz.sh seeds"
    local log
    log=$(mktemp)
    echo "== $target: fuzzing for $seconds s"
    local rc=0
    "$(fuzzer "$target")" -artifact_prefix="$artifacts/" -max_total_time="$seconds" \
        -timeout=10 -print_final_stats=1 "$@" "$corpus" "$seeds" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$log" >&2
        rm -f "$log"
        die "$target: crashed (rc $rc); the input is in fuzz/artifacts/$target/ (replay: $(fuzzer "$target") FILE)"
    fi
    # libFuzzer's last status line and its final statistics.
    grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -n 1 || true
    grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|Done )' "$log" || true
    rm -f "$log"
}

cmd=${1:-}
case "$cmd" in
smoke)
    prepare
    build
    seconds=${FUZZ_SMOKE_SECONDS:-20}
    t0=$SECONDS
    for t in $(targets); do
        replay "$t"
        fuzz "$t" "$seconds"
    done
    echo "== fuzz smoke passed: every target, $seconds s each, $((SECONDS - t0)) s after the build"
    ;;
run)
    [ $# -ge 3 ] || usage
    target=$2 seconds=$3
    shift 3
    prepare
    all=$(targets)
    grep -qx -- "$target" <<<"$all" || die "no target $target (scripts/fuzz.sh list)"
    build "$target"
    replay "$target"
    jobs=${FUZZ_JOBS:-1}
    if [ "$jobs" -gt 1 ]; then
        fuzz "$target" "$seconds" -fork="$jobs" "$@"
    else
        fuzz "$target" "$seconds" "$@"
    fi
    ;;
replay)
    prepare
    build
    for t in ${2:-$(targets)}; do
        replay "$t"
    done
    echo "== regressions replayed"
    ;;
seeds)
    prepare
    cargo +nightly run --manifest-path fuzz/Cargo.toml --example gen_seeds
    ;;
list)
    prepare
    targets
    ;;
*)
    usage
    ;;
esac
