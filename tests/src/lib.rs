//! The network-namespace test lab for homeward.
//!
//! Guards in the style of aya's integration tests: every namespace, veth,
//! bridge and background process a test makes is removed when its guard
//! drops, also while a panic unwinds. Names are unique per process and
//! test, so tests run in parallel. All traffic stays inside namespaces the
//! test made; nothing is sent from the root namespace.
//!
//! - [`Netns`]: a namespace; `exec`/`sh`/`spawn` inside it.
//! - [`veth_pair`], [`Netns::add_bridge`], [`Netns::set_gro`], ...: links.
//! - [`Topology::home_agent_lab`]: client, home-LAN bridge, HA, foreign.
//! - [`Capture`]: tcpdump in a namespace; [`decode_ipip`] and
//!   [`decode_arp`] read the pcap with scapy.
//! - [`Netns::send_udp`], [`Netns::tcp_connect`], [`Netns::ping`],
//!   [`Netns::route_get`], [`Netns::neighbors`]: traffic and kernel state.
//!
//! The lab needs root, iproute2, tcpdump, ethtool, iputils-ping and
//! Debian's python3-scapy (`scripts/install-deps.sh`).

pub mod agent;
pub mod capture;
pub mod decode;
pub mod etcd;
pub mod foreign_agent;
pub mod ha_lab;
pub mod homeward_lab;
pub mod inns;
pub mod link;
pub mod migration_lab;
pub mod netns;
pub mod qemu;
pub mod restart;
pub mod topology;
pub mod traffic;
pub mod vm;

use std::path::PathBuf;

pub use capture::Capture;
pub use decode::{
    decode_arp, decode_ipip, ArpPacket, InnerDatagram, IpipCapture, IpipPacket, Ipv4,
    OuterReassembled, L4,
};
pub use link::{veth_pair, Iface, Mac, VethEnd};
pub use migration_lab::{LabVm, MigrationLab, MigrationLabOptions, StreamOptions, StreamReport};
pub use netns::{netns_exists, require_root, Netns, NsChild};
pub use qemu::{MigrateOptions, MigrationReport, Qemu, QemuConfig, Qmp, QmpEvent, Storage, Vm};
pub use topology::{LabOptions, LanHost, Topology};
pub use traffic::{
    payload_pattern, FloodReport, Neighbor, Received, Route, SendResult, TcpAttempt, UdpListener,
    UdpSend, UdpSendReport,
};

/// Environment variable that overrides where the `homeward` binary is.
pub const HOMEWARD_BIN_ENV: &str = "HOMEWARD_BIN";

/// What `bin --version` prints, trimmed.
pub fn version_of(bin: &std::path::Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("? ({e})"))
}

/// The `homeward` binary (package `homeward`, in control/) that the lab
/// runs: `$HOMEWARD_BIN` if set, else `target/<profile>/homeward` found
/// among the ancestors of the running test executable
/// (`target/<profile>/deps/<test>-<hash>`). Cargo builds binaries only for
/// tests of their own package, so build it first: `cargo build -p homeward`
/// (with `--release` for release tests).
#[track_caller]
pub fn homeward_bin() -> PathBuf {
    if let Some(p) = std::env::var_os(HOMEWARD_BIN_ENV) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{HOMEWARD_BIN_ENV}={} is not a file",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("path of the running test executable");
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join("homeward"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no homeward binary next to {}: run `cargo build -p homeward` first \
                 (same profile as the tests), or set {HOMEWARD_BIN_ENV}",
                exe.display()
            )
        })
}
