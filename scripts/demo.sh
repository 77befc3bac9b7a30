#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine, as root: builds homeward and
# runs a self-contained lab in network namespaces (a client on the home LAN,
# the home agent running homeward, a foreign hypervisor), binds a VM address
# and shows the client's traffic arriving IPv4-in-IPv4 at the foreign host.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --locked -p homeward -p homeward-tests
exec target/release/demo "$@"
