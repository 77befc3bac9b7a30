//! The daemon's settings: the `--config` TOML file, overridden by flags.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::{RunArgs, DEFAULT_SOCKET};
use crate::error::Error;

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
    pub ttl: Option<u8>,
    pub socket: Option<PathBuf>,
    /// Capacity of the binding table (rounded up to a power of two).
    pub max_bindings: Option<u32>,
    /// ICMP errors per second the data path may send (per queue).
    pub icmp_rate: Option<u32>,
    /// CPUs to pin the queue workers to, queue `i` on `worker_cpus[i % len]`
    /// (default: not pinned).
    pub worker_cpus: Option<Vec<usize>>,
}

/// Settings after merging, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    pub lan: String,
    pub wan: Option<String>,
    pub address: Ipv4Addr,
    pub queues: u32,
    pub tunnel_mtu: u16,
    pub ttl: u8,
    pub socket: PathBuf,
    pub max_bindings: u32,
    pub icmp_rate: u32,
    pub worker_cpus: Vec<usize>,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<FileConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigRead {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&text).map_err(|message| Error::ConfigParse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses config text; the error is toml's one-line message.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
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
            ttl: args.ttl.or(file.ttl).unwrap_or(64),
            socket: args
                .socket
                .clone()
                .or(file.socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            max_bindings: file.max_bindings.unwrap_or(65536),
            icmp_rate: file.icmp_rate.unwrap_or(100),
            worker_cpus: file.worker_cpus.unwrap_or_default(),
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
        assert_eq!(c.queues, 1);
        assert_eq!(c.wan, None);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
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
}
