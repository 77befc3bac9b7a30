#!/bin/sh
# Model-checks the binding table's slot protocol with loom (see dataplane/src/table.rs).
cd "$(dirname "$0")/.." && RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom exec cargo test -p homeward-dataplane --release --lib table::loom "$@"
