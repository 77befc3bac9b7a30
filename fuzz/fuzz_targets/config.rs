//! The TOML files homeward reads, from text: the daemon's config
//! (`config::FileConfig`, then `RunConfig::merge` with no flags and with
//! flags), the agent's (`agent::config::AgentFile`, its VM validation and
//! `AgentConfig::merge`) and the key file (`KeyFile::parse`). The loaders
//! read paths; their text parsers are `toml::from_str` into these types
//! (`FileConfig::parse` and `AgentFile::parse` do exactly that, but are
//! `#[cfg(test)]`), and `KeyFile::parse` is public.
//!
//! Every input goes to all three. Invariants: no panic, and what validation
//! lets through is in the documented ranges.
#![no_main]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::OnceLock;

use homeward::agent::config::{AgentArgs, AgentConfig, AgentFile};
use homeward::config::{FileConfig, RunArgs, RunConfig};
use homeward::registration::keys::KeyFile;
use libfuzzer_sys::fuzz_target;

fn check_run(c: &RunConfig) {
    let a = c.address;
    assert!(!(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback()));
    assert!((1..=64).contains(&c.queues));
    assert!(c.tunnel_mtu >= 88 && c.ttl >= 1);
    assert!((1..=1 << 24).contains(&c.max_bindings));
    assert_ne!(
        c.wan.as_deref(),
        Some(c.lan.as_str()),
        "one-armed is wan None"
    );
    if let Some(r) = &c.registration {
        assert!((1..=3600).contains(&r.replay_window.as_secs()));
        assert!(r.max_lifetime >= 1);
        for p in r.home_prefix.iter().flatten() {
            assert!(p.len <= 32 && p.contains(p.addr), "{p}");
        }
    }
}

fn daemon(text: &str) {
    let Ok(file) = toml::from_str::<FileConfig>(text) else {
        return;
    };
    let flags = RunArgs {
        lan: Some("eth0".into()),
        address: Some(Ipv4Addr::new(203, 0, 113, 1)),
        registration_keys: Some(PathBuf::from("/etc/homeward/keys.toml")),
        ..RunArgs::default()
    };
    for args in [RunArgs::default(), flags] {
        let file: FileConfig = toml::from_str(text).expect("parses twice");
        if let Ok(c) = RunConfig::merge(&args, file) {
            check_run(&c);
        }
    }
    let _ = format!("{file:?}");
}

/// The agent's flags, through clap as the command line gives them (so new
/// optional flags need no change here).
fn agent_args() -> &'static AgentArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }
    static ARGS: OnceLock<AgentArgs> = OnceLock::new();
    ARGS.get_or_init(|| {
        <Cli as clap::Parser>::parse_from([
            "homeward-agent",
            "--uplink",
            "eth0",
            "--address",
            "203.0.113.2",
            "--home-agent",
            "198.51.100.1",
            "--config",
            "/etc/homeward/agent.toml",
        ])
        .args
    })
}

fn agent(text: &str) {
    let Ok(file) = toml::from_str::<AgentFile>(text) else {
        return;
    };
    let default_ha = Ipv4Addr::new(198, 51, 100, 1);
    for ha in [None, Some(default_ha)] {
        if let Ok(vms) = file.vms(ha) {
            assert_eq!(vms.len(), file.vm.len());
            for v in &vms {
                assert!(!v.name.is_empty() && (1..=32).contains(&v.home_prefix_len));
                assert!(v.in_home_subnet(v.home_address));
            }
        }
    }
    let args = agent_args();
    if let Ok(c) = AgentConfig::merge(args, file) {
        assert!(c.lifetime >= 1 && (1..=64).contains(&c.queues));
        assert!(c.tunnel_mtu >= 88);
        assert_ne!(c.vm_link, c.uplink);
        let has = c.home_agents();
        assert_eq!(has.first(), Some(&default_ha));
        assert!(c.vms.iter().all(|v| has.contains(&v.home_agent)));
    }
}

fn key_file(text: &str) {
    let Ok(keys) = KeyFile::parse(text) else {
        return;
    };
    // Every SPI is in the unreserved range with a usable key: find them by
    // trying the SPIs the text names.
    for word in text.split(|c: char| !c.is_ascii_digit()) {
        let Ok(spi) = word.parse::<u32>() else {
            continue;
        };
        if let Some(e) = keys.get(spi) {
            assert!(spi >= 256 && e.spi == spi);
            let tag = e.key.tag(b"homeward");
            assert_eq!(tag.len(), e.key.algorithm().tag_len());
            assert!(e.key.verify(b"homeward", &tag));
            for p in &e.home_addresses {
                assert!(e.authorizes(p.addr) && p.contains(p.addr));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    daemon(text);
    agent(text);
    key_file(text);
});
