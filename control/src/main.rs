//! `homeward`: the command line on top of the library (home agent, agent,
//! registration, control socket).

use std::process::ExitCode;

use clap::Parser;
use serde_json::Value;

use homeward::cli::{Cli, Command, LogFormat};
use homeward::common::failover::{self, VrrpState};
use homeward::config::{FileConfig, RunConfig};
use homeward::error::Error;
use homeward::proto::{self, BindingInfo, Request};
use homeward::{agent, client, daemon, register};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One object per line; the event's fields flattened next to the
        // message, so a shipper indexes `vm`, `care_of`, `code` directly.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("homeward: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version print as clap renders them; a usage error becomes one
/// line, like every other error.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        _ => {}
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("bad arguments");
    eprintln!("homeward: {}", first.trim_start_matches("error: "));
    ExitCode::from(2)
}

fn run(command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Run(args) => {
            let file = match &args.config {
                Some(path) => FileConfig::load(path)?,
                None => FileConfig::default(),
            };
            let config = RunConfig::merge(&args, file)?;
            let accounting = daemon::run(config)?;
            Ok(report_teardown(&accounting))
        }
        Command::Agent(args) => Ok(report_teardown(&agent::run(&args)?)),
        Command::Bind {
            file: Some(file),
            socket,
            ..
        } => {
            let body = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                    .map_err(|e| Error::Invalid(format!("cannot read stdin: {e}")))?;
                b
            } else {
                std::fs::read(&file)
                    .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", file.display())))?
            };
            let r = client::request_with_body(
                &socket,
                &Request::BindMany {
                    bytes: body.len() as u64,
                },
                &body,
                std::time::Duration::from_secs(600),
            )?;
            let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
            println!(
                "bound {} new, rebound {} ({:.2} s)",
                n("created"),
                n("updated"),
                r.get("seconds").and_then(Value::as_f64).unwrap_or(0.0)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bind {
            vm: Some(vm),
            care_of: Some(care_of),
            lifetime,
            vm_mac,
            socket,
            ..
        } => {
            if let Some(m) = &vm_mac {
                if proto::parse_mac(m).is_none() {
                    return Err(Error::Invalid(format!("bad MAC address {m:?}")));
                }
            }
            let r = client::request(
                &socket,
                &Request::Bind {
                    vm,
                    care_of,
                    lifetime,
                    vm_mac,
                },
            )?;
            let created = r.get("created").and_then(Value::as_bool).unwrap_or(false);
            println!(
                "{} {vm} -> {care_of}",
                if created { "bound" } else { "rebound" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bind { .. } => Err(Error::Invalid(
            "bind needs VM CARE_OF, or --file FILE".into(),
        )),
        Command::Unbind { vm, socket } => {
            client::request(&socket, &Request::Unbind { vm })?;
            println!("unbound {vm}");
            Ok(ExitCode::SUCCESS)
        }
        Command::List { json, socket } => {
            let r = client::request(&socket, &Request::List {})?;
            if json {
                println!("{r}");
            } else if r.get("role").and_then(Value::as_str) == Some("foreign_agent") {
                agent::print_list(&r);
            } else {
                let list: Vec<BindingInfo> =
                    serde_json::from_value(r).map_err(|e| Error::Protocol(e.to_string()))?;
                print_list(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { json, socket } => {
            let r = client::request(&socket, &Request::Stats {})?;
            if json {
                println!("{r}");
            } else if r.get("role").and_then(Value::as_str) == Some("foreign_agent") {
                agent::print_stats(&r);
            } else {
                print_stats(&r);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Capture {
            vm,
            count,
            file,
            socket,
        } => {
            let stop = homeward::common::stop_on_signal().map_err(Error::Invalid)?;
            let w = homeward::common::capture::client(&socket, vm, count, &file, &stop)?;
            println!(
                "{} packets written to {}, {} dropped (capture queue full)",
                w.packets,
                file.display(),
                w.dropped
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Role { state, socket } => {
            let state = VrrpState::from_args(&state).map_err(Error::Invalid)?;
            // The file first: a daemon that is (re)starting reads it.
            failover::write_role(&socket, state).map_err(|e| {
                Error::Invalid(format!(
                    "cannot write {}: {e}",
                    failover::role_file(&socket).display()
                ))
            })?;
            match client::request(
                &socket,
                &Request::Role {
                    state: state.as_str().into(),
                },
            ) {
                Ok(r) => println!("{r}"),
                Err(Error::NotRunning(_)) => eprintln!(
                    "homeward is not running at {}: it will start as {} ({})",
                    socket.display(),
                    state.as_str(),
                    if state.active() { "active" } else { "standby" }
                ),
                Err(e) => return Err(e),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { socket } => {
            let r = client::request(&socket, &Request::Health {})?;
            println!("{r}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Register(args) => register::run(&args),
    }
}

/// Prints each queue's frame accounting at teardown; exit 3 if a frame leaked.
fn report_teardown(accounting: &[dataplane::xsk::FrameAccounting]) -> ExitCode {
    let mut leaked = false;
    for (queue, a) in accounting.iter().enumerate() {
        // The teardown check: every frame must be somewhere.
        eprintln!(
            "homeward: frames at teardown, queue {queue}: total {} free {} fill {} rx {} worker {} tx {} completion {} kernel_rx {} kernel_tx {} unaccounted {}",
            a.total, a.free, a.fill, a.rx, a.worker, a.tx, a.completion, a.kernel_rx, a.kernel_tx, a.unaccounted()
        );
        // Frames on the RX side stay with the socket until it closes;
        // every transmission must have completed.
        leaked |= a.unaccounted() != 0 || a.tx + a.completion + a.kernel_tx + a.worker > 0;
    }
    if leaked {
        eprintln!("homeward: frames leaked at teardown");
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

fn print_list(list: &[BindingInfo]) {
    println!(
        "{:<16} {:<16} {:<18} {:>8} {:>10} {:>12} {:>12}  next hop",
        "vm", "care-of", "vm mac", "expires", "packets", "bytes", "1st packet"
    );
    for b in list {
        println!(
            "{:<16} {:<16} {:<18} {:>8} {:>10} {:>12} {:>12}  {}",
            b.vm.to_string(),
            b.care_of.to_string(),
            b.vm_mac.as_deref().unwrap_or("-"),
            b.expires_in.map_or("never".into(), |s| format!("{s}s")),
            b.packets,
            b.bytes,
            // From the last move's arrival to the first packet under it.
            b.first_packet_ms
                .map_or("-".into(), |ms| format!("{ms:.1} ms")),
            b.next_hop.as_deref().unwrap_or("unresolved"),
        );
    }
}

fn print_stats(s: &Value) {
    let field = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    println!(
        "xdp mode {}, {} queue(s), uptime {}s",
        field(s, "xdp_mode"),
        field(s, "queues"),
        field(s, "uptime")
    );
    for section in ["counters", "steering", "drops"] {
        if let Some(Value::Object(m)) = s.get(section) {
            let nonzero: Vec<String> = m
                .iter()
                .filter(|(_, v)| v.as_u64() != Some(0))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!(
                "{section}: {}",
                if nonzero.is_empty() {
                    "all zero".into()
                } else {
                    nonzero.join(" ")
                }
            );
        }
    }
    if let Some(Value::Array(frames)) = s.get("frames") {
        for f in frames {
            println!(
                "frames q{}: total {} free {} fill {} rx {} tx {} completion {} kernel_rx {} kernel_tx {} unaccounted {}",
                field(f, "queue"),
                field(f, "total"),
                field(f, "free"),
                field(f, "fill"),
                field(f, "rx"),
                field(f, "tx"),
                field(f, "completion"),
                field(f, "kernel_rx"),
                field(f, "kernel_tx"),
                field(f, "unaccounted")
            );
        }
    }
    if let Some(Value::Array(bindings)) = s.get("bindings") {
        for b in bindings {
            println!(
                "binding {} -> {}: {} packets, {} bytes",
                field(b, "vm"),
                field(b, "care_of"),
                field(b, "packets"),
                field(b, "bytes")
            );
        }
        let total = s.get("bindings_total").and_then(Value::as_u64);
        if let Some(total) = total.filter(|&t| t > bindings.len() as u64) {
            println!(
                "bindings: {total}, the first {} listed (`homeward list` lists them all)",
                bindings.len()
            );
        }
    }
}
