#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine, as root:
# installs what it needs, checks formatting and lints, runs every test
# (unit, byte fixtures, loom model, network-namespace labs, crash and
# hostile-input labs) and a short fuzzing run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== a second build, tagged, that takes over from the first in the restart test"
HOMEWARD_BUILD_TAG=takeover-test cargo build --release --locked -p homeward
cp target/release/homeward target/release/homeward-takeover-test
export HOMEWARD_TAKEOVER_BIN="$PWD/target/release/homeward-takeover-test"

echo "== build (the namespace tests run the release binary)"
cargo build --release --locked -p homeward

echo "== cargo test"
cargo test --workspace --locked --release

echo "== loom model of the binding table"
bash dataplane/run-loom.sh

echo "== fuzzing smoke run (each target briefly; saved regressions replayed)"
bash scripts/fuzz.sh smoke
