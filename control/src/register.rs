//! `homeward register`: one RFC 5944 registration (or deregistration) with
//! a home agent, from this host, and the reply printed.
//!
//! Resolving the flags into a [`Target`] is separate from sending, so other
//! ways of naming the VM (an agent config file) only add a resolver.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::agent::config::AgentFile;
use crate::error::Error;
use crate::registration::wire::code_meaning;
use crate::registration::{
    KeyFile, Registered, RegistrationClient, RegistrationError, RegistrationParams,
};

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
    /// The VM's MAC, sent in the VM link-layer address extension so the
    /// home agent can hand the address back in its name (with --config:
    /// the VM's `mac` unless given).
    #[arg(long, value_name = "MAC", value_parser = parse_vm_mac)]
    pub vm_mac: Option<[u8; 6]>,
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

/// Everything one registration needs.
#[derive(Debug, Clone)]
pub struct Target {
    pub params: RegistrationParams,
    pub keys: PathBuf,
    pub bind: Ipv4Addr,
    pub timeout: Duration,
    pub attempts: u32,
}

/// `--vm-mac`: a unicast MAC (the home agent ignores any other).
fn parse_vm_mac(s: &str) -> Result<[u8; 6], String> {
    let mac = crate::proto::parse_mac(s).ok_or_else(|| format!("{s:?} is not a MAC address"))?;
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(format!("{s} is not a unicast MAC address"));
    }
    Ok(mac)
}

/// The target from explicit flags.
pub fn target_from_flags(args: &RegisterArgs) -> Result<Target, Error> {
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 3600.0) {
        return Err(Error::Invalid(format!(
            "--timeout {} is out of range (0 to 3600 seconds)",
            args.timeout
        )));
    }
    Ok(Target {
        params: RegistrationParams {
            home_address: args
                .home_address
                .ok_or(Error::Missing("--home-address VM"))?,
            home_agent: args.home_agent.ok_or(Error::Missing("--home-agent HA"))?,
            care_of: args.care_of.ok_or(Error::Missing("--care-of COA"))?,
            lifetime: args.lifetime,
            reverse_tunnel: !args.no_reverse_tunnel,
            spi: args.spi.ok_or(Error::Missing("--spi N"))?,
            vm_mac: args.vm_mac,
            switchover: false,
        },
        keys: args.keys.clone().ok_or(Error::Missing("--keys FILE"))?,
        bind: args.bind.unwrap_or(Ipv4Addr::UNSPECIFIED),
        timeout: Duration::from_secs_f64(args.timeout),
        attempts: args.attempts.max(1),
    })
}

pub fn run(args: &RegisterArgs) -> Result<ExitCode, Error> {
    let target = match args.config {
        Some(_) => target_from_agent_config(args)?,
        None => target_from_flags(args)?,
    };
    register(&target, args.json, args.clock_skew.unwrap_or(0))
}

/// Sends the registration and prints the outcome; exit 0 only if accepted.
/// `clock_skew` pretends our clock is that many seconds off (the hidden
/// `--clock-skew`, for testing the home agent's resynchronisation).
pub fn register(t: &Target, json: bool, clock_skew: i64) -> Result<ExitCode, Error> {
    let keys = KeyFile::load(&t.keys).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut client = RegistrationClient::new(t.bind, keys)
        .map_err(|e| Error::Invalid(format!("cannot open a UDP socket on {}: {e}", t.bind)))?;
    if clock_skew != 0 {
        client.skew_clock(clock_skew);
    }
    let result = client.register(&t.params, t.timeout, t.attempts);
    if json {
        println!("{}", to_json(&t.params, &result));
    } else if let Ok(r) = &result {
        println!("{}", describe(&t.params, r));
    }
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Error::Invalid(e.to_string())),
    }
}

fn describe(p: &RegistrationParams, r: &Registered) -> String {
    let what = if p.lifetime == 0 {
        format!("deregistered {}", p.home_address)
    } else {
        format!(
            "registered {} -> {} for {}s",
            p.home_address, p.care_of, r.lifetime
        )
    };
    format!(
        "{what}: code {} ({}), round trip {:.1} ms",
        r.code,
        code_meaning(r.code),
        r.round_trip.as_secs_f64() * 1000.0
    )
}

fn to_json(
    p: &RegistrationParams,
    result: &Result<Registered, RegistrationError>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "home_address": p.home_address,
        "home_agent": p.home_agent,
        "care_of": p.care_of,
        "requested_lifetime": p.lifetime,
        "spi": p.spi,
    });
    let extra = match result {
        Ok(r) => serde_json::json!({
            "accepted": true,
            "code": r.code,
            "meaning": code_meaning(r.code),
            "lifetime": r.lifetime,
            "round_trip_ms": r.round_trip.as_secs_f64() * 1000.0,
        }),
        Err(RegistrationError::Denied { code, reason }) => serde_json::json!({
            "accepted": false,
            "code": code,
            "meaning": reason,
        }),
        Err(e) => serde_json::json!({
            "accepted": false,
            "code": null,
            "error": e.to_string(),
        }),
    };
    if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v
}

/// `homeward register --config AGENT_TOML --vm NAME [--care-of ADDR]`: the
/// registration target from the agent's config. Without `--care-of`, the
/// care-of is this host's source address toward the VM's home agent. A
/// care-of inside the VM's home subnet means the VM is at home: that
/// deregisters (lifetime 0, care-of = home address).
fn target_from_agent_config(args: &RegisterArgs) -> Result<Target, Error> {
    let path = args
        .config
        .as_ref()
        .ok_or(Error::Missing("--config FILE"))?;
    let name = args.vm.as_deref().ok_or(Error::Missing("--vm NAME"))?;
    let file = AgentFile::load(path)?;
    // Validate every VM, but only the named one needs a home agent: the
    // agent's --home-agent default is not known here.
    let unknown = Ipv4Addr::UNSPECIFIED;
    let vms = file
        .vms(Some(args.home_agent.unwrap_or(unknown)))
        .map_err(|message| Error::ConfigParse {
            path: path.clone(),
            message,
        })?;
    let vm = vms
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| Error::Invalid(format!("no VM named {name:?} in {}", path.display())))?;
    let home_agent = args.home_agent.unwrap_or(vm.home_agent);
    if home_agent == unknown {
        return Err(Error::Missing(
            "--home-agent HA (the VM's [[vm]] has no home_agent)",
        ));
    }
    let care_of = match args.care_of {
        Some(c) => c,
        None => route_source(home_agent)?,
    };
    let at_home = vm.in_home_subnet(care_of) || args.lifetime == 0;
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 3600.0) {
        return Err(Error::Invalid(format!(
            "--timeout {} is out of range (0 to 3600 seconds)",
            args.timeout
        )));
    }
    Ok(Target {
        params: RegistrationParams {
            home_address: vm.home_address,
            home_agent,
            care_of: if at_home { vm.home_address } else { care_of },
            lifetime: if at_home { 0 } else { file.lifetime },
            reverse_tunnel: file.reverse_tunnel && !args.no_reverse_tunnel && !at_home,
            spi: args.spi.unwrap_or(vm.spi),
            vm_mac: Some(args.vm_mac.unwrap_or(vm.mac)),
            switchover: false,
        },
        keys: args.keys.clone().unwrap_or(file.keys),
        bind: args.bind.unwrap_or(Ipv4Addr::UNSPECIFIED),
        timeout: Duration::from_secs_f64(args.timeout),
        attempts: args.attempts.max(1),
    })
}

/// The source address the kernel would use toward `to`: connecting a UDP
/// socket picks the route and sends nothing.
fn route_source(to: Ipv4Addr) -> Result<Ipv4Addr, Error> {
    let no_route = |e: std::io::Error| {
        Error::Invalid(format!(
            "no route to home agent {to} to choose a care-of address ({e}): pass --care-of"
        ))
    };
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(no_route)?;
    s.connect((to, 434)).map_err(no_route)?;
    match s.local_addr().map_err(no_route)?.ip() {
        std::net::IpAddr::V4(a) if !a.is_unspecified() => Ok(a),
        other => Err(Error::Invalid(format!(
            "no usable source address toward {to} (got {other}): pass --care-of"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    const HA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const WEB1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);

    fn register_args(
        config: &std::path::Path,
        vm: &str,
        care_of: Option<Ipv4Addr>,
    ) -> RegisterArgs {
        RegisterArgs {
            config: Some(config.into()),
            vm: Some(vm.into()),
            care_of,
            lifetime: 60,
            timeout: 5.0,
            attempts: 4,
            ..RegisterArgs::default()
        }
    }

    #[test]
    fn register_from_the_agent_config_registers_or_deregisters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            r#"keys = "/etc/homeward/keys.toml"
    lifetime = 90
    [[vm]]
    name = "web1"
    mac = "52:54:00:00:00:50"
    home_address = "192.0.2.50"
    home_prefix_len = 24
    home_agent = "198.51.100.1"
    spi = 256
    qmp = "/run/homeward/web1.qmp"
    [[vm]]
    name = "nohome"
    mac = "52:54:00:00:00:51"
    home_address = "192.0.2.51"
    home_prefix_len = 24
    spi = 257
    qmp = "/run/homeward/nohome.qmp"
    "#,
        )
        .unwrap();
        // Away: register this care-of for the config's lifetime.
        let t = target_from_agent_config(&register_args(&path, "web1", Some(AGENT))).unwrap();
        assert_eq!(t.params.care_of, AGENT);
        assert_eq!(t.params.lifetime, 90);
        assert!(t.params.reverse_tunnel);
        assert_eq!(t.params.spi, 256);
        assert_eq!(t.params.home_agent, HA);
        assert_eq!(t.params.vm_mac, Some([0x52, 0x54, 0, 0, 0, 0x50]));
        assert_eq!(t.keys, std::path::PathBuf::from("/etc/homeward/keys.toml"));
        // --vm-mac overrides the config's.
        let mut args = register_args(&path, "web1", Some(AGENT));
        args.vm_mac = Some([2, 0, 0x5e, 0, 0, 0x51]);
        let t = target_from_agent_config(&args).unwrap();
        assert_eq!(t.params.vm_mac, Some([2, 0, 0x5e, 0, 0, 0x51]));
        // A care-of inside the home subnet: the VM is home, deregister.
        let home = Ipv4Addr::new(192, 0, 2, 7);
        let t = target_from_agent_config(&register_args(&path, "web1", Some(home))).unwrap();
        assert_eq!(t.params.care_of, WEB1);
        assert_eq!(t.params.lifetime, 0);
        // --lifetime 0 deregisters too.
        let mut args = register_args(&path, "web1", Some(AGENT));
        args.lifetime = 0;
        assert_eq!(target_from_agent_config(&args).unwrap().params.lifetime, 0);
        // Unknown VM, and a VM without a home agent, are named.
        let e = target_from_agent_config(&register_args(&path, "db9", Some(AGENT))).unwrap_err();
        assert!(e.to_string().contains("no VM named \"db9\""), "{e}");
        let e = target_from_agent_config(&register_args(&path, "nohome", Some(AGENT))).unwrap_err();
        assert!(e.to_string().contains("--home-agent"), "{e}");
        let mut args = register_args(&path, "nohome", Some(AGENT));
        args.home_agent = Some(HA);
        assert_eq!(
            target_from_agent_config(&args).unwrap().params.home_agent,
            HA
        );
        // Without --care-of: the route's source toward the home agent.
        let mut args = register_args(&path, "web1", None);
        args.home_agent = Some(Ipv4Addr::LOCALHOST);
        let t = target_from_agent_config(&args).unwrap();
        assert!(t.params.care_of.is_loopback(), "{:?}", t.params);
    }

    #[test]
    fn vm_mac_flag_takes_unicast_macs_only() {
        assert_eq!(
            parse_vm_mac("02:00:5e:00:00:51"),
            Ok([2, 0, 0x5e, 0, 0, 0x51])
        );
        for bad in [
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "nope",
        ] {
            assert!(parse_vm_mac(bad).is_err(), "{bad}");
        }
    }
}
