//! Command line: `homeward run | bind | unbind | list | stats | capture | role |
//! health | register | agent`.
//! On top: each role's flags are its own (`config::RunArgs`,
//! `agent::config::AgentArgs`, `register::RegisterArgs`); nothing imports
//! this module but main.rs.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{RunArgs, DEFAULT_SOCKET};
use crate::register::RegisterArgs;

/// homeward keeps live-migrated VMs reachable at their home addresses.
#[derive(Debug, Parser)]
#[command(name = "homeward", version = env!("HOMEWARD_VERSION"), about)]
pub struct Cli {
    /// Log lines as text, or as one JSON object per line for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the home agent on this gateway.
    Run(RunArgs),
    /// Bind a VM's home address to a care-of address (the foreign hypervisor).
    Bind {
        /// The VM's home address.
        #[arg(required_unless_present = "file")]
        vm: Option<Ipv4Addr>,
        /// Where the VM is now: the foreign hypervisor's address.
        #[arg(required_unless_present = "file")]
        care_of: Option<Ipv4Addr>,
        /// Bind every line of FILE (`VM CARE_OF [LIFETIME]`, `#` comments)
        /// at once: applied and committed in batches, answered once; a
        /// refused line stops it there, its batch undone. `-` reads stdin.
        #[arg(long, conflicts_with_all = ["vm", "care_of", "lifetime", "vm_mac"])]
        file: Option<PathBuf>,
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
    /// Capture the frames the workers handle, before and after rewriting,
    /// with each verdict, into a pcapng file (either role).
    Capture {
        /// Only frames whose IPv4 source or destination (inner too, for
        /// IP-in-IP) or ARP address is this.
        #[arg(long)]
        vm: Option<Ipv4Addr>,
        /// Stop after this many packets (default: at Ctrl-C).
        #[arg(long, short = 'c')]
        count: Option<u64>,
        /// The pcapng file to write.
        #[arg(short = 'w', long = "write")]
        file: PathBuf,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Tell the home agent its role in an active/standby pair: what
    /// keepalived's notify runs (`notify "homeward role"` appends GROUP|INSTANCE
    /// NAME STATE PRIORITY). Only MASTER is active; the state is also kept
    /// beside the control socket for a restart.
    Role {
        /// master, backup, fault or stop; or keepalived's notify arguments.
        #[arg(required = true, num_args = 1..=4)]
        state: Vec<String>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Exit 0 if the home agent answers and every worker turns its loop,
    /// 1 otherwise: keepalived's track script.
    Health {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Register a VM's care-of address with a home agent (RFC 5944), or deregister it.
    Register(RegisterArgs),
    /// Run the foreign agent on this hypervisor: watch the VMs' QEMU (QMP),
    /// serve the ones that run here away from home, register them.
    Agent(crate::agent::config::AgentArgs),
}
