//! What the Debian package ships (control/debian/), checked with the real
//! parsers: every config parses as shipped and, with its "#key = value"
//! examples switched on, merges into a valid configuration; the example key
//! file parses once its placeholder is replaced by a key; the units' command
//! lines are valid `homeward` command lines. No root needed; the package
//! itself is built, installed and run by tests/tests/package.rs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use clap::Parser;
use homeward::agent::config::{AgentArgs, AgentConfig, AgentFile};
use homeward::cli::{Cli, Command};
use homeward::config::{FileConfig, RunArgs, RunConfig};
use homeward::registration::keys::KeyFile;

fn debian(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("debian")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(debian(name))
        .unwrap_or_else(|e| panic!("{}: {e}", debian(name).display()))
}

/// The text with its examples switched on: "#key = value" and "#[table]"
/// lines lose their "#"; prose comments ("# ...") stay.
fn examples_on(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `text` to a temporary file and returns it (kept until dropped).
fn temp_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[test]
fn the_home_agent_config_parses_and_its_examples_merge() {
    // As shipped: parses; lan and address are for the operator to set.
    let shipped = FileConfig::load(&debian("homeward.toml")).unwrap();
    let e = RunConfig::merge(&RunArgs::default(), shipped).unwrap_err();
    assert!(e.to_string().contains("--lan"), "{e}");
    // Every example switched on: a valid configuration with the defaults.
    let on = temp_file(&examples_on(&read("homeward.toml")));
    let c = RunConfig::merge(&RunArgs::default(), FileConfig::load(on.path()).unwrap()).unwrap();
    assert_eq!(c.lan, "eth1");
    assert_eq!(c.wan.as_deref(), Some("eth2"));
    assert_eq!(c.address, Ipv4Addr::new(198, 51, 100, 1));
    assert_eq!(c.queues, 1);
    assert_eq!(c.tunnel_mtu, 1500);
    assert_eq!(c.socket, PathBuf::from("/run/homeward/control.sock"));
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/homeward"));
    let r = c.registration.expect("the [registration] example is on");
    assert_eq!(r.keys, PathBuf::from("/etc/homeward/keys.toml"));
    assert_eq!(r.max_lifetime, 600);
}

fn agent_args(config: &Path) -> AgentArgs {
    AgentArgs {
        uplink: "eth0".into(),
        address: Ipv4Addr::new(203, 0, 113, 2),
        home_agent: Ipv4Addr::new(198, 51, 100, 1),
        config: config.to_path_buf(),
        vm_link: None,
        socket: None,
        bpffs: None,
        takeover: false,
        metrics: None,
        tunnel_mtu: None,
        mss_clamp: None,
    }
}

#[test]
fn the_agent_config_parses_and_its_examples_merge() {
    let path = debian("agent.toml");
    let shipped = AgentFile::load(&path).unwrap();
    assert_eq!(shipped.keys, PathBuf::from("/etc/homeward/keys.toml"));
    assert!(shipped.vm.is_empty());
    let e = AgentConfig::merge(&agent_args(&path), shipped).unwrap_err();
    assert!(e.to_string().contains("--vm-link"), "{e}");
    let on = temp_file(&examples_on(&read("agent.toml")));
    let c =
        AgentConfig::merge(&agent_args(on.path()), AgentFile::load(on.path()).unwrap()).unwrap();
    assert_eq!(c.vm_link, "br0");
    assert_eq!(c.vms.len(), 1);
    assert_eq!(c.vms[0].name, "web1");
    assert_eq!(c.vms[0].home_address, Ipv4Addr::new(192, 0, 2, 50));
    assert_eq!(c.socket, PathBuf::from("/run/homeward/agent.sock"));
}

#[test]
fn the_example_key_file_parses_once_it_has_a_key_and_not_before() {
    let text = read("keys.toml.example");
    let e = KeyFile::parse(&text).unwrap_err();
    assert!(e.contains("not hex"), "{e}");
    let keyed = text.replace("REPLACE-WITH-A-FRESH-KEY-IN-HEX", &"ab".repeat(32));
    let keys = KeyFile::parse(&keyed).unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys
        .get(256)
        .unwrap()
        .authorizes(Ipv4Addr::new(192, 0, 2, 50)));
}

/// The `[Service]` settings of a unit file; repeated keys keep the last.
fn service_section(unit: &str) -> BTreeMap<String, String> {
    let mut section = "";
    let mut out = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

/// A unit's command line as systemd would run it for `instance`: `%i`
/// replaced, `$VAR` words replaced by the variable's words (none if unset).
fn command_line(line: &str, instance: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    line.replace("%i", instance)
        .split_whitespace()
        .flat_map(|w| match w.strip_prefix('$') {
            Some(var) => env
                .get(var)
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            None => vec![w.to_string()],
        })
        .collect()
}

/// The variables of an environment file with its examples switched on.
fn env_file(name: &str) -> BTreeMap<String, String> {
    examples_on(&read(name))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn the_units_run_valid_command_lines() {
    let ha = service_section(&read("homeward@.service"));
    let start = command_line(&ha["ExecStart"], "homeward", &BTreeMap::new());
    assert_eq!(
        start,
        [
            "/usr/bin/homeward",
            "run",
            "--config",
            "/etc/homeward/homeward.toml"
        ]
    );
    let cli = Cli::try_parse_from(&start).unwrap();
    assert!(matches!(cli.command, Command::Run(ref a) if !a.takeover));
    // ExecReload: the helper, the old main pid, then the same command line,
    // to which the helper appends --takeover.
    let env = BTreeMap::from([("MAINPID".to_string(), "1234".to_string())]);
    let reload = command_line(&ha["ExecReload"], "homeward", &env);
    assert_eq!(reload[0], "/usr/lib/homeward/homeward-takeover");
    assert_eq!(reload[1], "1234");
    assert_eq!(reload[2..], start[..]);
    let mut successor = reload[2..].to_vec();
    successor.push("--takeover".into());
    let cli = Cli::try_parse_from(&successor).unwrap();
    assert!(matches!(cli.command, Command::Run(ref a) if a.takeover));

    let agent = service_section(&read("homeward-agent@.service"));
    assert_eq!(agent["EnvironmentFile"], "/etc/homeward/%i.env");
    let env = env_file("agent.env");
    assert_eq!(
        env.keys().collect::<Vec<_>>(),
        ["HOMEWARD_ADDRESS", "HOMEWARD_HOME_AGENT", "HOMEWARD_UPLINK"]
    );
    let start = command_line(&agent["ExecStart"], "agent", &env);
    match Cli::try_parse_from(&start).unwrap().command {
        Command::Agent(a) => {
            assert_eq!(a.config, PathBuf::from("/etc/homeward/agent.toml"));
            assert_eq!(a.uplink, "eth0");
            assert!(!a.takeover);
        }
        other => panic!("not an agent command line: {other:?}"),
    }
    let mut env = env;
    env.insert("MAINPID".into(), "1234".into());
    let reload = command_line(&agent["ExecReload"], "agent", &env);
    assert_eq!(reload[..2], ["/usr/lib/homeward/homeward-takeover", "1234"]);
    assert_eq!(reload[2..], start[..]);
    // The package's unit and hook settings agree on where the agent config is.
    assert!(read("../hooks/libvirt-qemu").contains("/etc/homeward/agent.toml"));
}
