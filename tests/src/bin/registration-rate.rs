//! Registrations per second at the home agent: N distinct home addresses
//! registered under one SPI by C concurrent agents (threads in the foreign
//! namespace, one socket each, each waiting for its reply before the next),
//! against `homeward run` in the namespace lab. Every registration is
//! durable (store commit) before its reply, so this measures the store's
//! commit path; concurrent agents share commits (group commit).
//!
//! `registration-rate [--homeward BIN] [--legacy] [--count N] [--clients C]...`
//! `--legacy`: BIN is a homeward from before the store (replay state in a
//! JSON file, `--registration-state`), for the before/after comparison.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use homeward::registration::{KeyFile, RegistrationClient, RegistrationParams};
use homeward_tests::inns::spawn_in_netns;
use homeward_tests::{require_root, Topology};

const KEY: &str = "726567697374726174696f6e2d72617465206b6579";

struct Args {
    bin: Option<String>,
    legacy: bool,
    count: u32,
    clients: Vec<u32>,
}

fn parse_args() -> Args {
    let mut a = Args {
        bin: None,
        legacy: false,
        count: 5000,
        clients: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--homeward" => a.bin = it.next(),
            "--legacy" => a.legacy = true,
            "--count" => a.count = it.next().and_then(|v| v.parse().ok()).unwrap_or(5000),
            "--clients" => a
                .clients
                .extend(it.next().and_then(|v| v.parse::<u32>().ok())),
            other => {
                eprintln!("registration-rate: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if a.clients.is_empty() {
        a.clients = vec![1, 16];
    }
    a
}

fn main() {
    require_root();
    let args = parse_args();
    if let Some(bin) = &args.bin {
        std::env::set_var(homeward_tests::HOMEWARD_BIN_ENV, bin);
    }
    for &clients in &args.clients {
        let (rate, took) = run(&args, clients);
        println!(
            "registration-rate: {} {} registrations of distinct home addresses, one SPI, {clients} concurrent agent(s): {:.0}/s ({:.2} s)",
            if args.legacy { "legacy" } else { "store" },
            args.count,
            rate,
            took.as_secs_f64()
        );
    }
}

fn run(args: &Args, clients: u32) -> (f64, Duration) {
    let lab = Topology::home_agent_lab("rrate");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let keys_text =
        format!("[[spi]]\nspi = 256\nkey = \"{KEY}\"\nhome_addresses = [\"10.0.0.0/16\"]\n");
    std::fs::write(&keys, &keys_text).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(&config, "[registration]\nhome_prefix = \"10.0.0.0/16\"\n").unwrap();
    let mut extra = vec![
        "--registration-keys".to_string(),
        keys.display().to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    if args.legacy {
        extra.extend([
            "--registration-state".into(),
            dir.path().join("replay.json").display().to_string(),
        ]);
    }
    let mut full = vec![homeward_tests::homeward_bin().display().to_string()];
    let mut run_args = lab.homeward_run_args().into_iter();
    while let Some(a) = run_args.next() {
        // A legacy build has no store, nor its flag.
        if args.legacy && a == "--state-dir" {
            run_args.next();
            continue;
        }
        full.push(a);
    }
    full.extend(extra);
    let mut child = lab.ha.spawn(&full);
    assert!(
        child.wait_for_output("homeward is running", Duration::from_secs(20)),
        "{}",
        child.stderr()
    );
    let per_client = args.count / clients;
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let keys = KeyFile::parse(&keys_text).unwrap();
            let care_of = lab.care_of;
            let home_agent = lab.ha_wan.addr;
            spawn_in_netns(&lab.foreign, move || {
                let mut client = RegistrationClient::new(Ipv4Addr::UNSPECIFIED, keys).unwrap();
                for i in 0..per_client {
                    let n = c * per_client + i + 1;
                    let p = RegistrationParams {
                        home_address: Ipv4Addr::new(10, 0, (n >> 8) as u8, n as u8),
                        home_agent,
                        care_of,
                        lifetime: 600,
                        reverse_tunnel: true,
                        spi: 256,
                        vm_mac: None,
                        switchover: false,
                    };
                    client
                        .register(&p, Duration::from_secs(5), 8)
                        .unwrap_or_else(|e| panic!("registration {n}: {e}"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let took = start.elapsed();
    let _ = child.stop_with("INT", Duration::from_secs(10));
    (f64::from(per_client * clients) / took.as_secs_f64(), took)
}
