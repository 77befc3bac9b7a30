//! Command line: `homeward run | bind | unbind | list | stats | register | agent`.

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
    /// Register a VM's care-of address with a home agent (RFC 5944), or deregister it.
    Register(RegisterArgs),
    /// Run the foreign agent on this hypervisor: watch the VMs' QEMU (QMP),
    /// serve the ones that run here away from home, register them.
    Agent(crate::agent::config::AgentArgs),
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
    /// RFC 5944 registration key file; registration is off without one.
    #[arg(long)]
    pub registration_keys: Option<PathBuf>,
    /// Where the bindings and the registration replay state are kept
    /// (default /var/lib/homeward); one daemon per directory.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The bpf filesystem to pin the XDP program in, so that a restart
    /// after a crash recognises it (default /sys/fs/bpf).
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// TOML file with the same settings; flags take precedence.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `homeward register` flags. Optional at parse time so that other forms
/// (a config file naming the VM) can fill them in; `register.rs` checks.
#[derive(Debug, Default, clap::Args)]
pub struct RegisterArgs {
    /// The home agent's address (Registration Requests go to its UDP port 434).
    #[arg(long)]
    pub home_agent: Option<Ipv4Addr>,
    /// The VM's home address.
    #[arg(long)]
    pub home_address: Option<Ipv4Addr>,
    /// The care-of address: this hypervisor (the home address itself to deregister at home).
    #[arg(long)]
    pub care_of: Option<Ipv4Addr>,
    /// Security Parameter Index of the key to authenticate with.
    #[arg(long)]
    pub spi: Option<u32>,
    /// Key file (TOML, root-owned, mode 0600 or 0400).
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Requested lifetime in seconds; 0 deregisters.
    #[arg(long, default_value_t = 60)]
    pub lifetime: u16,
    /// Do not ask for reverse tunnelling (the RFC 3024 T flag).
    #[arg(long)]
    pub no_reverse_tunnel: bool,
    /// Local address to send from (default: any).
    #[arg(long)]
    pub bind: Option<Ipv4Addr>,
    /// Seconds to wait for the reply, retransmissions included.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Requests to send at most (each with a new Identification).
    #[arg(long, default_value_t = 4)]
    pub attempts: u32,
    /// Print the reply as JSON.
    #[arg(long)]
    pub json: bool,
    /// The `homeward agent` config: the VM's addresses, SPI and keys come
    /// from its `[[vm]]` named by --vm.
    #[arg(long, requires = "vm")]
    pub config: Option<PathBuf>,
    /// The VM's name in --config.
    #[arg(long, requires = "config")]
    pub vm: Option<String>,
    /// Testing: pretend our clock is off by this many seconds.
    #[arg(long, hide = true, allow_hyphen_values = true)]
    pub clock_skew: Option<i64>,
}
