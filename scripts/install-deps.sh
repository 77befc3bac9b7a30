#!/usr/bin/env bash
# Install what homeward needs to build and test on Debian 12 (run as root).
# Idempotent: apt-get runs only when a package is missing.
set -euo pipefail

PACKAGES=(
    clang llvm libelf-dev zlib1g-dev pkg-config m4 libbpf-dev
    iproute2 tcpdump python3-scapy iperf3 iputils-ping netcat-openbsd
    # the test lab: GRO on veths (ethtool), kill and sysctl (procps)
    ethtool procps
)

die() {
    trap - ERR
    echo "install-deps: $*" >&2
    exit 1
}
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get install needs it)"
command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script is for Debian 12"

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "installed" ] || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    echo "install-deps: installing ${missing[*]}"
    apt-get update -qq >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "apt-get update failed"; }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1 \
        || { tail -n 20 "$log" >&2; die "apt-get install failed for: ${missing[*]}"; }
fi

# Rust: the toolchain comes from rustup, which the machine already has.
if [ -d "${CARGO_HOME:-${HOME:-/root}/.cargo}/bin" ]; then
    PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain with rustup first"
if command -v rustup >/dev/null 2>&1; then
    installed=$(rustup component list --installed 2>/dev/null || true)
    for comp in rustfmt clippy; do
        if ! grep -q "^${comp}" <<<"$installed"; then
            rustup component add "$comp" >/dev/null 2>&1 || die "rustup component add $comp failed"
        fi
    done
else
    for tool in rustfmt cargo-clippy; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found and rustup is not available to add it"
    done
fi

# scapy must import under the interpreter the tests call.
/usr/bin/python3 -c 'import scapy.all' >/dev/null 2>&1 || die "/usr/bin/python3 cannot import scapy"

echo "install-deps: ok"
