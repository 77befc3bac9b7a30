#!/usr/bin/env bash
# Builds the Debian package: release build, man pages generated from the
# command line's definition (homeward-man), then cargo deb without building
# again. Debug info goes to /usr/lib/debug/.build-id in the package.
#
#   scripts/deb.sh [--no-build] [--fast] [OUTPUT_DIR]    (default target/debian)
#
# --no-build: package the existing release build (cargo build --release -p
# homeward first); --fast: lighter compression. Needs cargo-deb
# (scripts/install-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
deb_flags=()
out=target/debian
for arg in "$@"; do
    case "$arg" in
    --no-build) build=0 ;;
    --fast) deb_flags+=(--fast) ;;
    -*) echo "deb.sh: unknown option $arg (usage: scripts/deb.sh [--no-build] [--fast] [OUTPUT_DIR])" >&2; exit 2 ;;
    *) out=$arg ;;
    esac
done
if ! command -v cargo-deb >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb" ]; then
    echo "deb.sh: cargo-deb not found: cargo install cargo-deb --locked (or scripts/install-deps.sh)" >&2
    exit 1
fi

if [ "$build" = 1 ]; then
    cargo build --release --locked -p homeward
fi
release=$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release
for bin in homeward homeward-man; do
    [ -x "$release/$bin" ] || { echo "deb.sh: no $release/$bin: cargo build --release -p homeward first" >&2; exit 1; }
done
# The man pages, compressed here: cargo-deb leaves files from target/ as
# they are.
rm -rf "$release/man"
"$release/homeward-man" "$release/man"
gzip -9n "$release"/man/*.1
mkdir -p "$out"
cargo deb -p homeward --no-build --locked --separate-debug-symbols --compress-debug-symbols=zlib \
    "${deb_flags[@]}" -o "$out"
