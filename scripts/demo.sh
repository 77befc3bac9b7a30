#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine, as root: builds homeward and
# runs two self-contained labs in network namespaces: (1) the home agent's
# data path (a client on the home LAN, the home agent running homeward, a
# foreign hypervisor; a bound VM address, the client's traffic arriving
# IPv4-in-IPv4); (2) the paper's scenario: a real QEMU VM live-migrates to
# another network during a download and back, under homeward (home agent +
# agents on both hypervisors, RFC 5944 registration driven by QMP).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --locked -p homeward -p homeward-tests
target/release/demo "$@"
exec target/release/migration-demo
