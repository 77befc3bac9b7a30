#!/usr/bin/env bash
# Install what homeward needs to build and test on Debian 12 (run as root).
# Idempotent: apt-get runs only when a package is missing.
set -euo pipefail

PACKAGES=(
    clang llvm libelf-dev zlib1g-dev pkg-config m4 libbpf-dev
    iproute2 tcpdump python3-scapy iperf3 iputils-ping netcat-openbsd
    # the test lab: GRO on veths (ethtool), kill and sysctl (procps)
    ethtool procps
    # the VM-migration lab: the guest's userland, unpacking the guest
    # kernel's modules, comparing disk images
    busybox-static xz-utils zstd
    # the metrics test scrapes homeward with Debian's real Prometheus
    prometheus
    # the etcd store: etcd-client builds its gRPC code with protoc (and the
    # well-known .proto files); the etcd store test runs a real cluster
    protobuf-compiler libprotobuf-dev etcd-server etcd-client
    # the etcd store over TLS: the test makes its CA and certificates
    openssl
    # two gateways with VRRP (tests/tests/failover.rs): keepalived in each
    # gateway's namespace moves the home agent's addresses
    keepalived
    # the Debian package (scripts/deb.sh, tests/tests/package.rs): cargo-deb
    # reads dependencies with dpkg-shlibdeps and strips with binutils;
    # systemd-analyze verifies the units (no running systemd needed) and
    # checks the man pages they name with man
    dpkg-dev binutils systemd man-db
    # forwarding-harness baselines (benches/README.md): (d) the C AF_XDP
    # forwarder links libxdp; (f) DPDK's testpmd (in dpdk-dev) with the
    # af_xdp PMD and the ring mempool (recommends, not pulled in by
    # --no-install-recommends); --plot draws text with DejaVu Sans
    libxdp-dev dpdk dpdk-dev librte-net-af-xdp23 librte-mempool-ring23 fonts-dejavu-core
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

# QEMU for the VM-migration lab: 10.x from bookworm-backports (the image's
# qemu-utils already is 10.x, so bookworm's 7.2 system emulator conflicts).
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v qemu-img >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    # Reuse the Debian mirror apt's sources already name (deb822 or one-line).
    # Only "URIs:" and "deb" lines count: comments may name other mirrors.
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -E '^[[:space:]]*(URIs:|deb )' | grep -oE 'https?://[^ ]*/debian/?' \
        | grep -v -- '-security' | head -n 1 || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    mirror=${mirror%/}
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "deb $mirror bookworm-backports main" >/etc/apt/sources.list.d/homeward-backports.list
    fi
    log=$(mktemp)
    echo "install-deps: installing qemu-system-x86 from bookworm-backports"
    apt-get update -qq >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "apt-get update failed"; }
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils >"$log" 2>&1 \
        || { tail -n 20 "$log" >&2; die "apt-get install -t bookworm-backports qemu-system-x86 failed"; }
    rm -f "$log"
fi
# (qemu-img for the storage cases comes from backports too, same version)
qemu_major=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
[ "${qemu_major:-0}" -ge 10 ] || die "qemu-system-x86_64 is version $qemu_major, need 10.x (bookworm-backports)"

# The guest kernel: Debian's cloud kernel, unpacked into a cache, never
# installed on the host. The lab (tests/src/vm.rs) reads vmlinuz and the
# virtio modules from here.
VM_CACHE=${HOMEWARD_VM_CACHE:-/var/cache/homeward/vm}
# (modules.list may be empty for a kernel with virtio built in.)
if [ ! -s "$VM_CACHE/vmlinuz" ] || [ ! -e "$VM_CACHE/modules.list" ]; then
    # The versioned package the meta-package points at, e.g.
    # linux-image-6.1.0-41-cloud-amd64.
    kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n 1)
    if [ -z "$kpkg" ]; then
        apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed"
        kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
            | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n 1)
    fi
    [ -n "$kpkg" ] || die "cannot find the package linux-image-cloud-amd64 depends on"
    work=$(mktemp -d)
    trap 'rm -rf "$work"; rm -f "${log:-}"' EXIT
    echo "install-deps: unpacking guest kernel $kpkg into $VM_CACHE"
    (cd "$work" && apt-get download -q "$kpkg" >/dev/null 2>&1) || die "apt-get download $kpkg failed"
    dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/root"
    kver=${kpkg#linux-image-}
    mdir="$work/root/lib/modules/$kver"
    [ -d "$mdir" ] || mdir="$work/root/usr/lib/modules/$kver"
    [ -d "$mdir" ] || die "no modules directory for $kver in $kpkg"
    mkdir -p "$VM_CACHE.new"
    rm -rf "${VM_CACHE:?}.new"/*
    cp "$work/root/boot/vmlinuz-$kver" "$VM_CACHE.new/vmlinuz"
    cp "$work/root/boot/config-$kver" "$VM_CACHE.new/config"
    echo "$kver" >"$VM_CACHE.new/version"
    # virtio_pci, virtio_net and virtio_blk with their dependencies, in
    # load order (dependencies first). The package ships no modules.dep
    # (depmod makes it at install time), so the dependencies come from each
    # module's own "depends=" modinfo string. Built-in ones (=y) need nothing.
    mkdir -p "$VM_CACHE.new/modules"
    : >"$VM_CACHE.new/modules.list"
    declare -A mod_path=() seen=()
    while IFS= read -r f; do
        n=$(basename "$f")
        n=${n%%.ko*}
        mod_path[${n//-/_}]=$f
    done < <(find "$mdir" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst')
    add_module() {
        local name=${1//-/_} file raw dep
        [ -z "${seen[$name]:-}" ] || return 0
        seen[$name]=1
        file=${mod_path[$name]:-}
        [ -n "$file" ] || die "module $name is not in $kpkg"
        raw="$VM_CACHE.new/modules/$name.ko"
        case "$file" in
            *.ko.xz) xz -dc "$file" >"$raw" ;;
            *.ko.zst) zstd -qdc "$file" >"$raw" ;;
            *) cp "$file" "$raw" ;;
        esac
        for dep in $(grep -aoE 'depends=[A-Za-z0-9_,-]*' "$raw" | head -n 1 | cut -d= -f2 | tr ',' ' '); do
            add_module "$dep"
        done
        echo "$name.ko" >>"$VM_CACHE.new/modules.list"
    }
    for m in virtio_pci virtio_net virtio_blk; do
        opt=$(tr '[:lower:]' '[:upper:]' <<<"$m")
        if grep -q "^CONFIG_${opt}=m" "$VM_CACHE.new/config"; then
            add_module "$m"
        fi
    done
    rm -rf "$VM_CACHE"
    mv "$VM_CACHE.new" "$VM_CACHE"
    rm -rf "$work"
    trap - EXIT
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

# cargo-deb builds the Debian package (scripts/deb.sh, the package test).
# A fixed version: its asset and symlink syntax is what control/Cargo.toml uses.
CARGO_DEB_VERSION=3.8.0
if ! command -v cargo-deb >/dev/null 2>&1; then
    log=$(mktemp)
    echo "install-deps: installing cargo-deb $CARGO_DEB_VERSION (cargo install, a few minutes)"
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" >"$log" 2>&1 \
        || { tail -n 20 "$log" >&2; rm -f "$log"; die "cargo install cargo-deb --locked --version $CARGO_DEB_VERSION failed"; }
    rm -f "$log"
fi

# scapy must import under the interpreter the tests call.
/usr/bin/python3 -c 'import scapy.all' >/dev/null 2>&1 || die "/usr/bin/python3 cannot import scapy"

echo "install-deps: ok"
