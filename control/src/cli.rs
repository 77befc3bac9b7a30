//! Command line: `homeward run | bind | unbind | list | stats`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Where the daemon listens unless told otherwise. Root-only.
pub const DEFAULT_SOCKET: &str = "/run/homeward/control.sock";

/// homeward keeps live-migrated VMs reachable at their home addresses.
#[derive(Debug, Parser)]
#[command(name = "homeward", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the home agent on this gateway.
    Run(RunArgs),
    /// Bind a VM's home address to a care-of address (the foreign hypervisor).
    Bind {
        /// The VM's home address.
        vm: Ipv4Addr,
        /// Where the VM is now: the foreign hypervisor's address.
        care_of: Ipv4Addr,
        /// Seconds until the binding expires (default: never).
        #[arg(long)]
        lifetime: Option<u32>,
        /// The VM's own MAC, announced on the home link when the binding ends.
        #[arg(long)]
        vm_mac: Option<String>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Remove a VM's binding: the VM is home again.
    Unbind {
        vm: Ipv4Addr,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// List the bindings.
    List {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Show counters: drops per reason, per-binding traffic, frame accounting.
    Stats {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

/// `homeward run` flags; each may also come from the `--config` file.
#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// The home link interface.
    #[arg(long)]
    pub lan: Option<String>,
    /// The interface toward the care-of addresses (default: the LAN one, one-armed).
    #[arg(long)]
    pub wan: Option<String>,
    /// The home agent's own IPv4 address (outer source of the tunnels).
    #[arg(long)]
    pub address: Option<Ipv4Addr>,
    /// AF_XDP queues (one worker thread each).
    #[arg(long)]
    pub queues: Option<u32>,
    /// Largest outer IPv4 datagram on the tunnel.
    #[arg(long)]
    pub tunnel_mtu: Option<u16>,
    /// TTL of the outer header.
    #[arg(long)]
    pub ttl: Option<u8>,
    /// Control socket path.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// TOML file with the same settings; flags take precedence.
    #[arg(long)]
    pub config: Option<PathBuf>,
}
