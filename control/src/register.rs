//! `homeward register`: one RFC 5944 registration (or deregistration) with
//! a home agent, from this host, and the reply printed.
//!
//! Resolving the flags into a [`Target`] is separate from sending, so other
//! ways of naming the VM (an agent config file) only add a resolver.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
        },
        keys: args.keys.clone().ok_or(Error::Missing("--keys FILE"))?,
        bind: args.bind.unwrap_or(Ipv4Addr::UNSPECIFIED),
        timeout: Duration::from_secs_f64(args.timeout),
        attempts: args.attempts.max(1),
    })
}

pub fn run(args: &RegisterArgs) -> Result<ExitCode, Error> {
    let target = match args.config {
        Some(_) => crate::agent::register_target(args)?,
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
