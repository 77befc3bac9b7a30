//! The daemon's settings: the `--config` TOML file, overridden by flags.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::common::metrics::MetricsConfig;
use crate::error::Error;
use crate::registration::keys::Prefix;

/// Where the daemon listens unless told otherwise. Root-only.
pub const DEFAULT_SOCKET: &str = "/run/homeward/control.sock";

/// Where the bindings and the replay state are kept unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/homeward";

/// VMs a second whose gratuitous ARPs start when many are announced at
/// once: five frames each, about 25,000 broadcast frames a second
/// (17 Mbit/s), which a home link's hosts absorb; a million bindings are
/// announced in 200 s.
pub const DEFAULT_ANNOUNCE_RATE: u32 = 5_000;

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
    /// Lower the MSS of TCP SYNs crossing the tunnel to what fits
    /// tunnel_mtu (tunnel_mtu - 60); `false` turns it off (default true).
    #[arg(long, value_name = "BOOL")]
    pub mss_clamp: Option<bool>,
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
    /// Take the data path over from the homeward running with the same
    /// control socket (a new binary, a restart): its AF_XDP sockets, UMEM,
    /// registration socket and control socket are handed over, nothing
    /// queued in them is lost, and it exits. What systemd's ExecReload runs.
    #[arg(long)]
    pub takeover: bool,
    /// Serve Prometheus/OpenMetrics metrics at http://ADDR:PORT/metrics
    /// (off unless set; e.g. 127.0.0.1:9434).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Preferred busy polling: the workers drive the devices' receive
    /// processing themselves while traffic flows, instead of sleeping
    /// (costs a busy core per queue; see docs/operations.md). Default false.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub busy_poll: Option<bool>,
}

/// The config file: the same settings as the `run` flags. Unknown keys are
/// errors, so a typo cannot silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub lan: Option<String>,
    pub wan: Option<String>,
    pub address: Option<Ipv4Addr>,
    pub queues: Option<u32>,
    pub tunnel_mtu: Option<u16>,
    /// TCP MSS clamping for SYNs crossing the tunnel (default on).
    pub mss_clamp: Option<bool>,
    pub ttl: Option<u8>,
    pub socket: Option<PathBuf>,
    /// Bindings the data path holds (table: 4 slots per 3; BPF maps: this).
    pub max_bindings: Option<u32>,
    /// ICMP errors per second the data path may send (per queue).
    pub icmp_rate: Option<u32>,
    /// VMs a second whose gratuitous ARPs start when many are announced at
    /// once (a bind file, a takeover); a moved VM is announced at once.
    pub announce_rate: Option<u32>,
    /// Frames held per queue for one VM in switchover (default 1024), and
    /// for all (default 4096, at most a quarter of the queue's frames).
    pub switchover_buffer_per_vm: Option<u32>,
    pub switchover_buffer_total: Option<u32>,
    /// CPUs to pin the queue workers to, queue `i` on `worker_cpus[i % len]`
    /// (default: not pinned).
    pub worker_cpus: Option<Vec<usize>>,
    /// Preferred busy polling in the workers (default false).
    pub busy_poll: Option<bool>,
    /// Directory of the durable store (bindings, replay state).
    pub state_dir: Option<PathBuf>,
    /// The bpf filesystem the XDP program is pinned in.
    pub bpffs: Option<PathBuf>,
    /// RFC 5944 registration (UDP port 434 on `address`).
    pub registration: Option<RegistrationFile>,
    /// Prometheus metrics endpoint `ADDR:PORT` (off unless set).
    pub metrics: Option<std::net::SocketAddr>,
    /// Most bindings with their own packet/byte series (default 1000).
    pub metrics_binding_series: Option<usize>,
    /// Where bindings and replay state are kept: "sqlite" (the embedded
    /// store in state_dir, default) or "etcd" (shared by gateways; [etcd]).
    pub store: Option<String>,
    /// The etcd store's settings (with `store = "etcd"`).
    pub etcd: Option<EtcdFile>,
    /// Two gateways, one active (keepalived/VRRP): [failover].
    pub failover: Option<FailoverFile>,
}

/// The `[failover]` table: this gateway is one of an active/standby pair.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverFile {
    /// Start on standby and let `homeward role` (keepalived's notify) make
    /// this gateway the active one (default false: always active).
    pub enabled: Option<bool>,
    /// The MAC proxy ARP answers and gratuitous ARP announce on the home
    /// link: the VRRP virtual MAC (keepalived's `use_vmac`), so that the
    /// LAN's hosts need not re-learn anything across a failover. Default:
    /// the LAN interface's own MAC.
    pub lan_mac: Option<String>,
}

/// Active/standby settings after merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverConfig {
    /// The home link MAC to answer ARP with, if not the interface's.
    pub lan_mac: Option<[u8; 6]>,
}

impl FailoverConfig {
    fn merge(file: Option<FailoverFile>) -> Result<Option<FailoverConfig>, Error> {
        let Some(file) = file else { return Ok(None) };
        let lan_mac = match &file.lan_mac {
            None => None,
            Some(text) => {
                let mac = crate::proto::parse_mac(text).ok_or_else(|| {
                    Error::Invalid(format!(
                        "[failover] lan_mac {text:?} is not a MAC address (e.g. \"00:00:5e:00:01:33\", keepalived's use_vmac for virtual_router_id 51)"
                    ))
                })?;
                if mac[0] & 1 == 1 || mac == [0; 6] {
                    return Err(Error::Invalid(format!(
                        "[failover] lan_mac {text} must be a unicast MAC address"
                    )));
                }
                Some(mac)
            }
        };
        if !file.enabled.unwrap_or(false) {
            if lan_mac.is_some() {
                return Err(Error::Invalid(
                    "[failover] lan_mac is set but enabled is not true: set enabled = true (two gateways with keepalived) or remove lan_mac".into(),
                ));
            }
            return Ok(None);
        }
        Ok(Some(FailoverConfig { lan_mac }))
    }
}

/// The `[etcd]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdFile {
    /// Client URLs of the cluster's members, e.g. "http://10.0.0.1:2379".
    pub endpoints: Option<Vec<String>>,
    /// Key prefix (default "/homeward"); gateways sharing bindings share it.
    pub prefix: Option<String>,
    /// TLS: the CA that signed the members' certificates (turns TLS on),
    /// and this gateway's client certificate and key (both or neither).
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Longest wait for one etcd request, milliseconds (default 2000).
    pub request_timeout_ms: Option<u64>,
    /// Longest wait for a connection, milliseconds (default 2000).
    pub connect_timeout_ms: Option<u64>,
}

/// Which store, after merging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite in state_dir.
    Sqlite,
    Etcd(EtcdConfig),
}

/// TLS to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    /// Client certificate and key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The etcd store's settings after merging, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// With their scheme (https:// when TLS is on).
    pub endpoints: Vec<String>,
    /// Starts with '/', no trailing '/'.
    pub prefix: String,
    pub tls: Option<EtcdTls>,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl StoreConfig {
    fn merge(store: Option<String>, etcd: Option<EtcdFile>) -> Result<StoreConfig, Error> {
        match store.as_deref().unwrap_or("sqlite") {
            "sqlite" => match etcd {
                Some(_) => Err(Error::Invalid(
                    "[etcd] is set but store is not \"etcd\": add store = \"etcd\" or remove [etcd]"
                        .into(),
                )),
                None => Ok(StoreConfig::Sqlite),
            },
            "etcd" => {
                let etcd = etcd.ok_or_else(|| {
                    Error::Invalid(
                        "store = \"etcd\" needs an [etcd] table with endpoints = [\"http://HOST:2379\", ...]"
                            .into(),
                    )
                })?;
                EtcdConfig::merge(etcd).map(StoreConfig::Etcd)
            }
            other => Err(Error::Invalid(format!(
                "store = {other:?} is unknown: \"sqlite\" (embedded, the default) or \"etcd\""
            ))),
        }
    }
}

impl EtcdConfig {
    fn merge(f: EtcdFile) -> Result<EtcdConfig, Error> {
        let tls = match (f.ca, f.cert, f.key) {
            (None, None, None) => None,
            (Some(ca), None, None) => Some(EtcdTls { ca, identity: None }),
            (Some(ca), Some(cert), Some(key)) => Some(EtcdTls {
                ca,
                identity: Some((cert, key)),
            }),
            (None, _, _) => {
                return Err(Error::Invalid(
                    "[etcd] cert and key need ca too (the CA that signed the etcd members' certificates)"
                        .into(),
                ))
            }
            _ => {
                return Err(Error::Invalid(
                    "[etcd] cert and key go together: set both or neither".into(),
                ))
            }
        };
        let scheme = if tls.is_some() { "https://" } else { "http://" };
        let endpoints = f.endpoints.unwrap_or_default();
        if endpoints.is_empty() {
            return Err(Error::Invalid(
                "[etcd] endpoints is empty: list the members' client URLs, e.g. [\"http://10.0.0.1:2379\"]"
                    .into(),
            ));
        }
        let endpoints = endpoints
            .into_iter()
            .map(|e| {
                let e = e.trim().trim_end_matches('/').to_string();
                if e.starts_with(scheme) {
                    Ok(e)
                } else if e.starts_with("http://") || e.starts_with("https://") {
                    Err(Error::Invalid(format!(
                        "[etcd] endpoint {e:?}: TLS is {} (ca {}), so it must start with {scheme}",
                        if tls.is_some() { "on" } else { "off" },
                        if tls.is_some() { "set" } else { "not set" },
                    )))
                } else if e.is_empty() || e.contains("://") {
                    Err(Error::Invalid(format!(
                        "[etcd] endpoint {e:?} is not HOST:PORT or {scheme}HOST:PORT"
                    )))
                } else {
                    Ok(format!("{scheme}{e}"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prefix = f.prefix.unwrap_or_else(|| "/homeward".into());
        let prefix = prefix.trim_end_matches('/').to_string();
        if !prefix.starts_with('/') || prefix.len() < 2 {
            return Err(Error::Invalid(format!(
                "[etcd] prefix {prefix:?} must start with '/' and name something, e.g. \"/homeward\""
            )));
        }
        let ms = |v: Option<u64>, name: &str| -> Result<Duration, Error> {
            let v = v.unwrap_or(2000);
            if !(100..=60_000).contains(&v) {
                return Err(Error::Invalid(format!(
                    "[etcd] {name} {v} is out of range (100 to 60000 milliseconds)"
                )));
            }
            Ok(Duration::from_millis(v))
        };
        Ok(EtcdConfig {
            endpoints,
            prefix,
            tls,
            request_timeout: ms(f.request_timeout_ms, "request_timeout_ms")?,
            connect_timeout: ms(f.connect_timeout_ms, "connect_timeout_ms")?,
        })
    }
}

/// The `[registration]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationFile {
    /// Key file; without it registration is off.
    pub keys: Option<PathBuf>,
    /// Gone: the replay state lives in the store under `state_dir`.
    pub state: Option<PathBuf>,
    /// Seconds an Identification may differ from our clock.
    pub replay_window: Option<u64>,
    /// Longest lifetime granted, seconds.
    pub max_lifetime: Option<u16>,
    /// The home subnet(s), `a.b.c.d/len`: one or a list (default: the LAN
    /// interface's IPv4 prefixes).
    pub home_prefix: Option<OneOrMany>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Registration settings after merging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    pub keys: PathBuf,
    pub replay_window: Duration,
    pub max_lifetime: u16,
    /// `None`: read the LAN interface's prefixes at start.
    pub home_prefix: Option<Vec<Prefix>>,
}

/// Settings after merging, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    pub lan: String,
    pub wan: Option<String>,
    pub address: Ipv4Addr,
    pub queues: u32,
    pub tunnel_mtu: u16,
    /// Clamp the MSS of TCP SYNs to `tunnel_mtu - 60`.
    pub mss_clamp: bool,
    pub ttl: u8,
    pub socket: PathBuf,
    pub max_bindings: u32,
    pub icmp_rate: u32,
    pub announce_rate: u32,
    pub switchover_buffer_per_vm: u32,
    pub switchover_buffer_total: u32,
    pub worker_cpus: Vec<usize>,
    /// Preferred busy polling in the workers.
    pub busy_poll: bool,
    /// The durable store's directory.
    pub state_dir: PathBuf,
    /// The bpf filesystem the XDP program is pinned in.
    pub bpffs: PathBuf,
    /// `None`: registration is off (no key file).
    pub registration: Option<RegistrationConfig>,
    /// `--takeover`: adopt the running daemon's data path.
    pub takeover: bool,
    /// The metrics endpoint, if on.
    pub metrics: Option<MetricsConfig>,
    /// Where bindings and replay state are kept.
    pub store: StoreConfig,
    /// One of an active/standby pair (`[failover] enabled`): starts on
    /// standby unless the role file says active.
    pub failover: Option<FailoverConfig>,
}

/// Reads a TOML config file into `T`; errors name the file.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigRead {
        path: path.to_path_buf(),
        source: e,
    })?;
    toml::from_str(&text).map_err(|e| Error::ConfigParse {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<FileConfig, Error> {
        load_toml(path)
    }

    /// Parses config text; the error is toml's one-line message (tests).
    #[cfg(test)]
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }
}

impl RegistrationConfig {
    fn merge(args: &RunArgs, file: RegistrationFile) -> Result<Option<RegistrationConfig>, Error> {
        if let Some(state) = &file.state {
            return Err(Error::Invalid(format!(
                "[registration] state = {:?} is no longer used: the replay state is kept with the bindings in state_dir (default {DEFAULT_STATE_DIR}); remove the line",
                state.display()
            )));
        }
        let Some(keys) = args.registration_keys.clone().or(file.keys) else {
            return Ok(None);
        };
        let replay_window = file.replay_window.unwrap_or(7);
        if !(1..=3600).contains(&replay_window) {
            return Err(Error::Invalid(format!(
                "registration replay_window {replay_window} is out of range (1 to 3600 seconds)"
            )));
        }
        let max_lifetime = file.max_lifetime.unwrap_or(600);
        if max_lifetime == 0 {
            return Err(Error::Invalid(
                "registration max_lifetime must be at least 1 second".into(),
            ));
        }
        let home_prefix = match file.home_prefix {
            None => None,
            Some(p) => {
                let list = match p {
                    OneOrMany::One(s) => vec![s],
                    OneOrMany::Many(v) => v,
                };
                let parsed = list
                    .iter()
                    .map(|s| {
                        Prefix::parse(s).ok_or_else(|| {
                            Error::Invalid(format!(
                                "registration home_prefix {s:?} is not a prefix"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(parsed)
            }
        };
        Ok(Some(RegistrationConfig {
            keys,
            replay_window: Duration::from_secs(replay_window),
            max_lifetime,
            home_prefix,
        }))
    }
}

impl RunConfig {
    /// Flags win over the file; then defaults; then validation.
    pub fn merge(args: &RunArgs, file: FileConfig) -> Result<RunConfig, Error> {
        let lan = args
            .lan
            .clone()
            .or(file.lan)
            .ok_or(Error::Missing("--lan IFACE"))?;
        let address = args
            .address
            .or(file.address)
            .ok_or(Error::Missing("--address HA_IPV4"))?;
        let wan = args.wan.clone().or(file.wan).filter(|w| *w != lan);
        let config = RunConfig {
            lan,
            wan,
            address,
            queues: args.queues.or(file.queues).unwrap_or(1),
            tunnel_mtu: args.tunnel_mtu.or(file.tunnel_mtu).unwrap_or(1500),
            mss_clamp: args.mss_clamp.or(file.mss_clamp).unwrap_or(true),
            ttl: args.ttl.or(file.ttl).unwrap_or(64),
            socket: args
                .socket
                .clone()
                .or(file.socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            max_bindings: file.max_bindings.unwrap_or(65536),
            icmp_rate: file.icmp_rate.unwrap_or(100),
            announce_rate: file.announce_rate.unwrap_or(DEFAULT_ANNOUNCE_RATE),
            switchover_buffer_per_vm: file.switchover_buffer_per_vm.unwrap_or(1024),
            switchover_buffer_total: file.switchover_buffer_total.unwrap_or(4096),
            worker_cpus: file.worker_cpus.unwrap_or_default(),
            busy_poll: args.busy_poll.or(file.busy_poll).unwrap_or(false),
            state_dir: args
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            bpffs: args
                .bpffs
                .clone()
                .or(file.bpffs)
                .unwrap_or_else(|| PathBuf::from(crate::common::DEFAULT_BPFFS)),
            registration: RegistrationConfig::merge(args, file.registration.unwrap_or_default())?,
            store: StoreConfig::merge(file.store, file.etcd)?,
            failover: FailoverConfig::merge(file.failover)?,
            takeover: args.takeover,
            metrics: MetricsConfig::merge(
                args.metrics.or(file.metrics),
                file.metrics_binding_series,
            ),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Error> {
        let a = self.address;
        if a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback() {
            return Err(Error::Invalid(format!(
                "--address {a} cannot be a home agent address"
            )));
        }
        if !(1..=64).contains(&self.queues) {
            return Err(Error::Invalid(format!(
                "--queues {} is out of range (1 to 64)",
                self.queues
            )));
        }
        // 68 is the IPv4 minimum MTU (RFC 791); the inner datagram needs room too.
        if self.tunnel_mtu < 88 {
            return Err(Error::Invalid(format!(
                "--tunnel-mtu {} is too small (at least 88: 20 outer + 68 inner)",
                self.tunnel_mtu
            )));
        }
        if self.ttl == 0 {
            return Err(Error::Invalid("--ttl must be at least 1".into()));
        }
        if self.max_bindings == 0 || self.max_bindings > 1 << 24 {
            return Err(Error::Invalid(format!(
                "max_bindings {} is out of range (1 to 16777216)",
                self.max_bindings
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs::default()
    }

    #[test]
    fn flags_override_file_and_defaults_fill_in() {
        let file = FileConfig::parse(
            "lan = \"eth1\"\naddress = \"198.51.100.1\"\nttl = 32\ntunnel_mtu = 1400\n",
        )
        .unwrap();
        let mut a = args();
        a.ttl = Some(10);
        let c = RunConfig::merge(&a, file).unwrap();
        assert_eq!(c.lan, "eth1");
        assert_eq!(c.ttl, 10);
        assert_eq!(c.tunnel_mtu, 1400);
        assert!(c.mss_clamp, "on by default");
        assert_eq!(c.queues, 1);
        assert_eq!(c.wan, None);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn mss_clamp_from_the_file_and_the_flag() {
        let text = "lan = \"eth1\"\naddress = \"198.51.100.1\"\nmss_clamp = false\n";
        let c = RunConfig::merge(&args(), FileConfig::parse(text).unwrap()).unwrap();
        assert!(!c.mss_clamp);
        let mut a = args();
        a.mss_clamp = Some(true);
        let c = RunConfig::merge(&a, FileConfig::parse(text).unwrap()).unwrap();
        assert!(c.mss_clamp, "the flag wins");
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: RunArgs,
        }
        let cli = <Cli as clap::Parser>::parse_from(["homeward", "--mss-clamp", "false"]);
        assert_eq!(cli.args.mss_clamp, Some(false));
    }

    #[test]
    fn busy_poll_off_by_default_from_the_file_and_the_flag() {
        let base = "lan = \"eth1\"\naddress = \"198.51.100.1\"\n";
        let c = RunConfig::merge(&args(), FileConfig::parse(base).unwrap()).unwrap();
        assert!(!c.busy_poll, "off by default");
        let text = format!("{base}busy_poll = true\n");
        let c = RunConfig::merge(&args(), FileConfig::parse(&text).unwrap()).unwrap();
        assert!(c.busy_poll);
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: RunArgs,
        }
        let cli = <Cli as clap::Parser>::parse_from(["homeward", "--busy-poll"]);
        assert_eq!(cli.args.busy_poll, Some(true));
        let cli = <Cli as clap::Parser>::parse_from(["homeward", "--busy-poll", "false"]);
        assert_eq!(cli.args.busy_poll, Some(false));
        let c = RunConfig::merge(&cli.args, FileConfig::parse(&text).unwrap()).unwrap();
        assert!(!c.busy_poll, "the flag wins");
    }

    #[test]
    fn failover_with_the_virtual_mac_and_what_is_refused() {
        let base = "lan = \"eth1\"\naddress = \"198.51.100.1\"\n";
        let merge = |extra: &str| {
            RunConfig::merge(
                &args(),
                FileConfig::parse(&format!("{base}{extra}")).unwrap(),
            )
        };
        assert_eq!(merge("").unwrap().failover, None);
        let c = merge("[failover]\nenabled = true\nlan_mac = \"00:00:5E:00:01:33\"\n").unwrap();
        assert_eq!(
            c.failover,
            Some(FailoverConfig {
                lan_mac: Some([0, 0, 0x5e, 0, 1, 0x33])
            })
        );
        let c = merge("[failover]\nenabled = true\n").unwrap();
        assert_eq!(c.failover, Some(FailoverConfig { lan_mac: None }));
        assert_eq!(
            merge("[failover]\nenabled = false\n").unwrap().failover,
            None
        );
        for (bad, says) in [
            (
                "[failover]\nenabled = true\nlan_mac = \"00:00:5e:00:01\"\n",
                "not a MAC",
            ),
            (
                "[failover]\nenabled = true\nlan_mac = \"01:00:5e:00:01:33\"\n",
                "unicast",
            ),
            (
                "[failover]\nlan_mac = \"00:00:5e:00:01:33\"\n",
                "enabled is not true",
            ),
        ] {
            let e = merge(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = FileConfig::parse("lan = \"eth1\"\nlna = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown field `lna`"), "{e}");
    }

    #[test]
    fn missing_and_invalid_settings_are_named() {
        let e = RunConfig::merge(&args(), FileConfig::default()).unwrap_err();
        assert_eq!(e.to_string(), "missing setting: --lan IFACE");
        let mut a = args();
        a.lan = Some("eth0".into());
        a.address = Some(Ipv4Addr::new(224, 0, 0, 1));
        let e = RunConfig::merge(&a, FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("cannot be a home agent address"));
        a.address = Some(Ipv4Addr::new(198, 51, 100, 1));
        a.tunnel_mtu = Some(60);
        assert!(RunConfig::merge(&a, FileConfig::default()).is_err());
    }

    #[test]
    fn registration_section() {
        let mut a = args();
        a.lan = Some("eth0".into());
        a.address = Some(Ipv4Addr::new(198, 51, 100, 1));
        let off = RunConfig::merge(&a, FileConfig::default()).unwrap();
        assert_eq!(off.registration, None);
        let file = FileConfig::parse(
            "[registration]\nkeys = \"/etc/homeward/keys.toml\"\nreplay_window = 3\nhome_prefix = \"192.0.2.0/24\"\n",
        )
        .unwrap();
        let r = RunConfig::merge(&a, file).unwrap().registration.unwrap();
        assert_eq!(r.keys, PathBuf::from("/etc/homeward/keys.toml"));
        assert_eq!(r.replay_window, Duration::from_secs(3));
        assert_eq!(r.max_lifetime, 600);
        assert_eq!(
            r.home_prefix,
            Some(vec![Prefix::parse("192.0.2.0/24").unwrap()])
        );
        a.registration_keys = Some("/k".into());
        a.state_dir = Some("/s".into());
        let file =
            FileConfig::parse("[registration]\nhome_prefix = [\"192.0.2.0/25\", \"10.0.0.0/8\"]\n")
                .unwrap();
        let c = RunConfig::merge(&a, file).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/s"));
        let r = c.registration.unwrap();
        assert_eq!(r.keys, PathBuf::from("/k"));
        assert_eq!(r.home_prefix.unwrap().len(), 2);
        // The old replay state file is named and refused, not ignored.
        let e = RunConfig::merge(
            &a,
            FileConfig::parse("[registration]\nstate = \"/x.json\"\n").unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("state_dir"), "{e}");
        for bad in [
            "[registration]\nkeys = \"/k\"\nreplay_window = 0\n",
            "[registration]\nkeys = \"/k\"\nmax_lifetime = 0\n",
            "[registration]\nkeys = \"/k\"\nhome_prefix = \"192.0.2/24\"\n",
        ] {
            assert!(
                RunConfig::merge(&a, FileConfig::parse(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
        assert!(FileConfig::parse("[registration]\nkey = \"/k\"\n").is_err());
    }

    #[test]
    fn wan_equal_to_lan_is_one_armed() {
        let mut a = args();
        a.lan = Some("eth0".into());
        a.wan = Some("eth0".into());
        a.address = Some(Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(
            RunConfig::merge(&a, FileConfig::default()).unwrap().wan,
            None
        );
    }

    #[test]
    fn the_etcd_store() {
        let merge = |text: &str| {
            let file = FileConfig::parse(text).map_err(|e| e.to_string())?;
            let args = RunArgs {
                lan: Some("eth0".into()),
                address: Some(Ipv4Addr::new(192, 0, 2, 1)),
                ..RunArgs::default()
            };
            RunConfig::merge(&args, file).map_err(|e| e.to_string())
        };
        assert_eq!(merge("").unwrap().store, StoreConfig::Sqlite);
        let c = merge(
            "store = \"etcd\"\n[etcd]\nendpoints = [\"10.0.0.1:2379\", \"http://10.0.0.2:2379/\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.store,
            StoreConfig::Etcd(EtcdConfig {
                endpoints: vec!["http://10.0.0.1:2379".into(), "http://10.0.0.2:2379".into()],
                prefix: "/homeward".into(),
                tls: None,
                request_timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(2),
            })
        );
        let c = merge(
            "store = \"etcd\"\n[etcd]\nendpoints = [\"e1:2379\"]\nprefix = \"/site/a/\"\nca = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nrequest_timeout_ms = 500\n",
        )
        .unwrap();
        let StoreConfig::Etcd(e) = c.store else {
            panic!("not etcd")
        };
        assert_eq!(e.endpoints, vec!["https://e1:2379".to_string()]);
        assert_eq!(e.prefix, "/site/a");
        assert_eq!(e.request_timeout, Duration::from_millis(500));
        assert_eq!(
            e.tls.unwrap().identity,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        for (text, says) in [
            ("store = \"etcd\"", "needs an [etcd] table"),
            (
                "store = \"etcd\"\n[etcd]\nendpoints = []",
                "endpoints is empty",
            ),
            ("store = \"zookeeper\"", "is unknown"),
            ("[etcd]\nendpoints = [\"e:1\"]", "add store = \"etcd\""),
            (
                "store = \"etcd\"\n[etcd]\nendpoints = [\"e:1\"]\nca = \"/ca\"\ncert = \"/c\"",
                "go together",
            ),
            (
                "store = \"etcd\"\n[etcd]\nendpoints = [\"e:1\"]\ncert = \"/c\"\nkey = \"/k\"",
                "need ca",
            ),
            (
                "store = \"etcd\"\n[etcd]\nendpoints = [\"http://e:1\"]\nca = \"/ca\"",
                "must start with https://",
            ),
            (
                "store = \"etcd\"\n[etcd]\nendpoints = [\"e:1\"]\nprefix = \"x\"",
                "must start with '/'",
            ),
            (
                "store = \"etcd\"\n[etcd]\nendpoints = [\"e:1\"]\nrequest_timeout_ms = 5",
                "out of range",
            ),
            (
                "store = \"etcd\"\n[etcd]\nendpoints = [\"e:1\"]\nendpoint = \"x\"",
                "unknown field",
            ),
        ] {
            let e = merge(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
