//! `homeward agent`: the foreign agent on a hypervisor. Watches each
//! configured VM's QEMU through QMP, turns the data path on for VMs running
//! here away from home, and keeps their registrations with the home agent
//! fresh; deregisters VMs that run at home again. As the source of a
//! migration it asks the home agent to hold the VM's traffic from the
//! moment the VM stops here until the destination registers (switchover),
//! and lets a migration paused before switchover go on.
//!
//! Threads: one QMP watcher and one registration thread per VM, the control
//! socket's acceptor, the data path's workers. The loop here is the only
//! writer of the data path and the lifecycles.

pub mod config;
pub mod datapath;
pub mod lifecycle;
pub mod qmp;
mod registrar;
mod watch;

// The home agent's control socket, reused as is.
use crate::common::capture;
use crate::common::control_socket as server;
use crate::common::handover::{self, Answer, OfferError};
use crate::common::is_root;
use crate::common::metrics::{self, label, Exposition, Metrics};

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{self, Receiver, Sender};
use dataplane::xsk::FrameAccounting;
use serde_json::{json, Value};

use crate::error::Error;
use crate::proto::{format_mac, Reply, Request};
use crate::registration::{KeyFile, RegistrationClient, RegistrationError, RegistrationParams};
use config::{AgentArgs, AgentConfig, AgentFile, VmConfig};
use datapath::{DataPath, DataPathConfig};
use lifecycle::{Action, Input, Lifecycle, Outcome, SwitchoverState};
use qmp::{EventKind, Timestamp};
use registrar::{Done, Job};
use server::ControlSocket;
use watch::{CommandSlot, Watch};

/// What the loop needs from the data path; the real one is [`DataPath`],
/// tests use a recorder.
pub trait Serving {
    /// What `stats` reports as `datapath`.
    type Stats: serde::Serialize;
    /// The data path's metric families.
    fn metrics(&self, x: &mut Exposition);
    fn serve(&mut self, vm: Ipv4Addr, mac: [u8; 6], home_agent: Ipv4Addr) -> Result<(), String>;
    fn unserve(&mut self, vm: Ipv4Addr) -> Result<(), String>;
    fn stats(&self) -> Self::Stats;
}

impl Serving for DataPath {
    type Stats = datapath::AgentDataPathStats;
    fn metrics(&self, x: &mut Exposition) {
        metrics::data_path(x, &self.stats().data_path);
    }
    fn serve(&mut self, vm: Ipv4Addr, mac: [u8; 6], home_agent: Ipv4Addr) -> Result<(), String> {
        DataPath::serve(self, vm, mac, home_agent)
    }
    fn unserve(&mut self, vm: Ipv4Addr) -> Result<(), String> {
        DataPath::unserve(self, vm)
    }
    fn stats(&self) -> Self::Stats {
        DataPath::stats(self)
    }
}

/// What `homeward stats` prints for an agent.
#[derive(Debug, Clone, serde::Serialize)]
struct AgentStats<S> {
    role: &'static str,
    address: Ipv4Addr,
    /// VMs configured.
    vms: usize,
    /// VMs served now.
    served: usize,
    registration: Counters,
    datapath: S,
}

/// Registration counters for `stats`.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Counters {
    registrations_sent: u64,
    deregistrations_sent: u64,
    accepted: u64,
    denied: u64,
    timeouts: u64,
    errors: u64,
    /// Answers to requests already superseded.
    stale: u64,
    /// Switchover requests sent (source of a migration).
    switchovers_sent: u64,
    /// Switchovers the home agent confirmed: it held the VM's traffic.
    switchovers_held: u64,
    /// Switchovers denied, failed or unanswered (late answers included).
    switchovers_unconfirmed: u64,
    /// `migrate-continue` commands sent to QEMU.
    continues_sent: u64,
}

/// One served VM as the loop sees it.
struct Vm {
    cfg: VmConfig,
    life: Lifecycle,
    jobs: Sender<Job>,
    /// QEMU's timestamp of the last RESUME not yet followed by an accepted
    /// registration: the start of the resume-to-registered latency.
    resumed_at: Option<Timestamp>,
    last_latency: Option<Duration>,
    last_round_trip: Option<Duration>,
    last_error: Option<String>,
    /// The VM's QMP session, to send `migrate-continue` on.
    qmp: CommandSlot,
    /// QEMU's timestamp of the last STOP: the start of stop-to-switchover.
    stopped_at: Option<Timestamp>,
    /// From QEMU's STOP to the home agent's confirmation of the last
    /// switchover.
    last_stop_to_switchover: Option<Duration>,
    /// Round trip of the last confirmed switchover.
    last_switchover_round_trip: Option<Duration>,
}

/// The agent's state, separate from its threads so tests can drive it.
pub struct Agent<D: Serving> {
    address: Ipv4Addr,
    reverse_tunnel: bool,
    vms: Vec<Vm>,
    datapath: D,
    counters: Counters,
    /// The endpoint and the resume-to-registered histogram.
    metrics: Metrics,
}

impl<D: Serving> Agent<D> {
    fn new(config: &AgentConfig, datapath: D, jobs: Vec<Sender<Job>>) -> Agent<D> {
        let vms = config
            .vms
            .iter()
            .zip(jobs)
            .map(|(v, jobs)| Vm {
                life: Lifecycle::new(v.in_home_subnet(config.address), config.lifetime)
                    .with_switchover_hold(config.switchover_hold),
                cfg: v.clone(),
                jobs,
                resumed_at: None,
                last_latency: None,
                last_round_trip: None,
                last_error: None,
                qmp: CommandSlot::default(),
                stopped_at: None,
                last_stop_to_switchover: None,
                last_switchover_round_trip: None,
            })
            .collect();
        Agent {
            address: config.address,
            reverse_tunnel: config.reverse_tunnel,
            vms,
            datapath,
            counters: Counters::default(),
            metrics: Metrics::new(config.metrics),
        }
    }

    /// A watcher's report.
    fn on_watch(&mut self, now: Instant, index: usize, w: Watch) {
        let Some(vm) = self.vms.get_mut(index) else {
            return;
        };
        let name = vm.cfg.name.as_str();
        let input = match w {
            Watch::Connected(s) => {
                tracing::info!(vm = %name, status = %s.status, "QMP connected");
                if s.running {
                    // Already running: no RESUME timestamp to measure from.
                    vm.resumed_at = None;
                }
                Input::Connected { running: s.running }
            }
            Watch::Disconnected(reason) => {
                tracing::info!(vm = %name, "QMP disconnected: {reason}");
                Input::Disconnected
            }
            Watch::Answer(a) => {
                match a.error {
                    None => tracing::debug!(vm = %name, id = %a.id, "QMP command done"),
                    Some(e) => tracing::warn!(vm = %name, id = %a.id, "QMP command failed: {e}"),
                }
                return;
            }
            Watch::Event(e) => {
                let qemu_time = e.timestamp.display();
                match e.kind {
                    EventKind::Resume => {
                        tracing::info!(vm = %name, qemu_time, "VM resumed");
                        vm.resumed_at = Some(e.timestamp);
                        Input::Resumed
                    }
                    EventKind::Stop => {
                        tracing::info!(vm = %name, qemu_time, "VM stopped");
                        vm.stopped_at = Some(e.timestamp);
                        Input::Stopped
                    }
                    EventKind::Migration { status } => {
                        tracing::info!(vm = %name, qemu_time, %status, "migration");
                        Input::Migration { status }
                    }
                    EventKind::Shutdown { guest, reason } => {
                        tracing::info!(
                            vm = %name,
                            qemu_time,
                            guest,
                            reason = reason.as_deref().unwrap_or("-"),
                            "VM shut down"
                        );
                        Input::Shutdown { guest }
                    }
                    EventKind::Other(event) => {
                        tracing::debug!(vm = %name, qemu_time, %event, "QMP event");
                        return;
                    }
                }
            }
        };
        let actions = vm.life.handle(now, input);
        self.apply(index, actions);
    }

    /// A registration thread's answer.
    fn on_done(&mut self, now: Instant, d: Done) {
        if d.params.switchover {
            return self.on_switchover_done(now, d);
        }
        let Some(vm) = self.vms.get_mut(d.index) else {
            return;
        };
        let name = vm.cfg.name.as_str();
        let fresh = vm.life.wants(d.seq);
        let deregistration = d.params.lifetime == 0;
        let outcome = match &d.result {
            Ok(r) => {
                self.counters.accepted += 1;
                vm.last_round_trip = Some(r.round_trip);
                vm.last_error = None;
                Outcome::Accepted {
                    lifetime: r.lifetime,
                }
            }
            Err(RegistrationError::Denied { code, .. }) => {
                self.counters.denied += 1;
                Outcome::Denied { code: *code }
            }
            Err(RegistrationError::Timeout) => {
                self.counters.timeouts += 1;
                Outcome::Failed
            }
            Err(_) => {
                self.counters.errors += 1;
                Outcome::Failed
            }
        };
        if !fresh {
            self.counters.stale += 1;
            tracing::debug!(
                vm = %name,
                seq = d.seq,
                "answer to a superseded request ignored"
            );
            return;
        }
        let round_trip_ms = |r: &crate::registration::Registered| ms(r.round_trip);
        match &d.result {
            Ok(r) if deregistration => {
                tracing::info!(
                    vm = %name,
                    home_agent = %d.params.home_agent,
                    code = r.code,
                    round_trip_ms = round_trip_ms(r),
                    "deregistered"
                );
            }
            Ok(r) => {
                // From QEMU's RESUME to the accepted reply: how long the
                // VM was unreachable from afar after it started running.
                let latency = vm
                    .resumed_at
                    .take()
                    .and_then(Timestamp::to_system_time)
                    .and_then(|t| d.at.duration_since(t).ok());
                if let Some(l) = latency {
                    vm.last_latency = latency;
                    self.metrics
                        .histograms
                        .resume_to_registered
                        .observe(l.as_secs_f64());
                }
                tracing::info!(
                    vm = %name,
                    home_agent = %d.params.home_agent,
                    care_of = %d.params.care_of,
                    lifetime = r.lifetime,
                    code = r.code,
                    round_trip_ms = round_trip_ms(r),
                    resume_to_registered_ms = latency.map(ms),
                    "registered"
                );
            }
            Err(e) => vm.last_error = Some(e.to_string()),
        }
        let actions = vm.life.handle(
            now,
            Input::Registration {
                seq: d.seq,
                outcome,
            },
        );
        if let (Err(e), Some(vm)) = (&d.result, self.vms.get(d.index)) {
            let retry_s = vm
                .life
                .next_deadline()
                .map(|t| t.saturating_duration_since(now).as_secs_f64());
            let what = if deregistration {
                "deregistration"
            } else {
                "registration"
            };
            tracing::warn!(vm = %vm.cfg.name, home_agent = %d.params.home_agent, retry_in_s = retry_s, "{what} failed: {e}");
        }
        self.apply(d.index, actions);
    }

    /// The answer to a switchover: logged, timed, handed to the lifecycle
    /// (which may let the migration go on).
    fn on_switchover_done(&mut self, now: Instant, d: Done) {
        let Some(vm) = self.vms.get_mut(d.index) else {
            return;
        };
        let name = vm.cfg.name.as_str();
        // Late: the migration went on without it, or is over.
        let late = !vm.life.wants_switchover(d.seq);
        let outcome = match &d.result {
            Ok(r) if r.lifetime > 0 => {
                self.counters.switchovers_held += 1;
                let stop_to_switchover = vm
                    .stopped_at
                    .and_then(Timestamp::to_system_time)
                    .and_then(|t| d.at.duration_since(t).ok());
                vm.last_stop_to_switchover = stop_to_switchover;
                vm.last_switchover_round_trip = Some(r.round_trip);
                tracing::info!(
                    vm = %name,
                    home_agent = %d.params.home_agent,
                    code = r.code,
                    round_trip_ms = ms(r.round_trip),
                    stop_to_switchover_ms = stop_to_switchover.map(ms),
                    late,
                    "home agent holds VM traffic (lifetime {} s)",
                    r.lifetime
                );
                Outcome::Accepted {
                    lifetime: r.lifetime,
                }
            }
            result => {
                self.counters.switchovers_unconfirmed += 1;
                let (why, outcome) = match result {
                    Ok(_) => ("accepted with lifetime 0".to_string(), Outcome::Failed),
                    Err(e @ RegistrationError::Denied { code, .. }) => {
                        (e.to_string(), Outcome::Denied { code: *code })
                    }
                    Err(e) => (e.to_string(), Outcome::Failed),
                };
                tracing::info!(
                    vm = %name,
                    home_agent = %d.params.home_agent,
                    late,
                    "switchover not confirmed: {why}"
                );
                outcome
            }
        };
        let actions = vm.life.handle(
            now,
            Input::Switchover {
                seq: d.seq,
                outcome,
            },
        );
        self.apply(d.index, actions);
    }

    /// Each VM's QMP command slot, for its watcher.
    fn command_slots(&self) -> Vec<CommandSlot> {
        self.vms.iter().map(|v| v.qmp.clone()).collect()
    }

    /// Re-registrations and retries that came due.
    fn tick(&mut self, now: Instant) {
        for i in 0..self.vms.len() {
            let actions = self.vms[i].life.handle(now, Input::Tick);
            self.apply(i, actions);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.vms.iter().filter_map(|v| v.life.next_deadline()).min()
    }

    fn apply(&mut self, index: usize, actions: Vec<Action>) {
        let Some(vm) = self.vms.get_mut(index) else {
            return;
        };
        let c = &vm.cfg;
        for a in actions {
            match a {
                Action::Serve => match self.datapath.serve(c.home_address, c.mac, c.home_agent) {
                    Ok(()) => {
                        tracing::info!(vm = %c.name, home_address = %c.home_address, mac = %format_mac(c.mac), home_agent = %c.home_agent, "served")
                    }
                    // Register anyway: the old location cannot reach the VM
                    // either, and the error is in the log.
                    Err(e) => tracing::error!(vm = %c.name, "cannot serve: {e}"),
                },
                Action::Unserve => match self.datapath.unserve(c.home_address) {
                    Ok(()) => {
                        tracing::info!(vm = %c.name, home_address = %c.home_address, "unserved")
                    }
                    Err(e) => tracing::error!(vm = %c.name, "cannot unserve: {e}"),
                },
                Action::Register { seq, lifetime } => {
                    self.counters.registrations_sent += 1;
                    let params = RegistrationParams {
                        home_address: c.home_address,
                        home_agent: c.home_agent,
                        care_of: self.address,
                        lifetime,
                        reverse_tunnel: self.reverse_tunnel,
                        spi: c.spi,
                        vm_mac: Some(c.mac),
                        switchover: false,
                    };
                    let _ = vm.jobs.send(Job { seq, params });
                }
                Action::Deregister { seq } => {
                    self.counters.deregistrations_sent += 1;
                    // RFC 5944 3.6.1.2: lifetime 0 with the home address as
                    // care-of removes every binding of the VM.
                    let params = RegistrationParams {
                        home_address: c.home_address,
                        home_agent: c.home_agent,
                        care_of: c.home_address,
                        lifetime: 0,
                        reverse_tunnel: false,
                        spi: c.spi,
                        // Also here: the HA then gives the address back to
                        // the VM's MAC even if the binding has none (made
                        // by an older agent, say).
                        vm_mac: Some(c.mac),
                        switchover: false,
                    };
                    let _ = vm.jobs.send(Job { seq, params });
                }
                Action::Switchover { seq, lifetime } => {
                    self.counters.switchovers_sent += 1;
                    // A Registration Request for the home address, marked
                    // by the (authenticated) switchover extension: care-of
                    // is us, for information; the lifetime is the hold.
                    let params = RegistrationParams {
                        home_address: c.home_address,
                        home_agent: c.home_agent,
                        care_of: self.address,
                        lifetime,
                        reverse_tunnel: false,
                        spi: c.spi,
                        vm_mac: Some(c.mac),
                        switchover: true,
                    };
                    let stop_to_sent = vm
                        .stopped_at
                        .and_then(Timestamp::to_system_time)
                        .and_then(|t| SystemTime::now().duration_since(t).ok());
                    tracing::info!(
                        vm = %c.name,
                        home_agent = %c.home_agent,
                        hold_s = lifetime,
                        stop_to_sent_ms = stop_to_sent.map(ms),
                        "switchover sent"
                    );
                    let _ = vm.jobs.send(Job { seq, params });
                }
                Action::Continue => match watch::commander(&vm.qmp) {
                    Some(q) => {
                        let args = json!({ "state": "pre-switchover" });
                        match q.send("migrate-continue", Some(args)) {
                            Ok(id) => {
                                self.counters.continues_sent += 1;
                                tracing::info!(vm = %c.name, %id, "migrate-continue sent");
                            }
                            Err(e) => {
                                tracing::warn!(vm = %c.name, "cannot send migrate-continue: {e}")
                            }
                        }
                    }
                    None => tracing::warn!(
                        vm = %c.name,
                        "cannot send migrate-continue: QMP is not connected"
                    ),
                },
            }
        }
    }

    /// The agent's metrics: the data path's, the VMs and registrations.
    fn exposition(&self) -> Exposition {
        let mut x = Exposition::for_role("agent");
        self.datapath.metrics(&mut x);
        let served = self.vms.iter().filter(|v| v.life.served()).count();
        x.gauge(
            "vms",
            "The agent's VMs: served here away from home, or not.",
        )
        .sample(vec![label("state", "served")], served)
        .sample(vec![label("state", "not_served")], self.vms.len() - served);
        let c = &self.counters;
        let sent = x.counter(
            "registrations_sent",
            "Registration requests sent to home agents.",
        );
        sent.sample(vec![label("kind", "registration")], c.registrations_sent)
            .sample(
                vec![label("kind", "deregistration")],
                c.deregistrations_sent,
            );
        x.counter("registration_outcomes", "Registration requests by outcome.")
            .sample(vec![label("outcome", "accepted")], c.accepted)
            .sample(vec![label("outcome", "denied")], c.denied)
            .sample(vec![label("outcome", "timeout")], c.timeouts)
            .sample(vec![label("outcome", "error")], c.errors)
            .sample(vec![label("outcome", "stale")], c.stale);
        x.counter(
            "switchovers",
            "Switchover requests sent as the source of a migration, and their outcomes.",
        )
        .sample(vec![label("outcome", "sent")], c.switchovers_sent)
        .sample(vec![label("outcome", "held")], c.switchovers_held)
        .sample(
            vec![label("outcome", "unconfirmed")],
            c.switchovers_unconfirmed,
        );
        x.counter(
            "migrate_continues_sent",
            "migrate-continue commands sent to QEMU (pause-before-switchover).",
        )
        .sample(vec![], c.continues_sent);
        x
    }

    /// Answers a control socket request.
    fn handle(&self, now: Instant, req: Request) -> Reply {
        match req {
            Request::List {} => Reply::ok(self.list(now)),
            Request::Stats {} => match serde_json::to_value(AgentStats {
                role: "foreign_agent",
                address: self.address,
                vms: self.vms.len(),
                served: self.vms.iter().filter(|v| v.life.served()).count(),
                registration: self.counters.clone(),
                datapath: self.datapath.stats(),
            }) {
                Ok(v) => Reply::ok(v),
                Err(e) => Reply::err(e.to_string()),
            },
            Request::Takeover {} => Reply::err(
                "takeover is asked by `homeward agent --takeover` and answered by the serve loop",
            ),
            Request::Capture { .. } => {
                Reply::err("capture is asked by `homeward capture` and answered by the serve loop")
            }
            Request::Bind { .. } | Request::BindMany { .. } | Request::Unbind { .. } => Reply::err(
                "this is homeward agent: it serves the VMs of its config as QEMU reports them; bind and unbind are for the home agent (homeward run)",
            ),
            Request::Role { .. } => Reply::err(
                "this is homeward agent: roles in an active/standby pair are for the home agent (homeward run); agents register with the pair's virtual address",
            ),
            Request::Health {} => Reply::err(
                "this is homeward agent: `homeward health` checks the home agent (homeward run)",
            ),
        }
    }

    fn list(&self, now: Instant) -> Value {
        let wall = SystemTime::now();
        let vms: Vec<Value> = self
            .vms
            .iter()
            .map(|v| {
                let left = v
                    .life
                    .registered_until()
                    .map(|u| u.saturating_duration_since(now));
                json!({
                    "name": v.cfg.name,
                    "home_address": v.cfg.home_address,
                    "home_agent": v.cfg.home_agent,
                    "mac": format_mac(v.cfg.mac),
                    "at_home": v.life.at_home(),
                    "running": v.life.running(),
                    "served": v.life.served(),
                    "state": v.life.state(),
                    "expires_in": left.map(|d| d.as_secs()),
                    "registered_until": left
                        .and_then(|d| (wall + d).duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    "last_code": v.life.last_code(),
                    "last_error": v.last_error,
                    "resume_to_registered_ms": v.last_latency.map(ms),
                    "round_trip_ms": v.last_round_trip.map(ms),
                    "switchover": v.life.switchover().map(|s| match s {
                        SwitchoverState::Waiting { .. } => "waiting",
                        SwitchoverState::Held => "held",
                        SwitchoverState::Unconfirmed => "unconfirmed",
                    }),
                    "stop_to_switchover_ms": v.last_stop_to_switchover.map(ms),
                    "switchover_round_trip_ms": v.last_switchover_round_trip.map(ms),
                })
            })
            .collect();
        json!({ "role": "foreign_agent", "vms": vms })
    }

    /// Unserves every VM (at shutdown). Registrations are left to lapse:
    /// stopping the agent must not move VMs.
    /// `--takeover`: the data path already serves `served` (the
    /// predecessor did); their lifecycles start out served.
    fn adopt(&mut self, served: &[Ipv4Addr]) {
        for vm in &mut self.vms {
            if served.contains(&vm.cfg.home_address) {
                vm.life.adopt_served();
            }
        }
    }

    fn unserve_all(&mut self) {
        for vm in &self.vms {
            if vm.life.served() {
                match self.datapath.unserve(vm.cfg.home_address) {
                    Ok(()) => tracing::info!(vm = %vm.cfg.name, "unserved"),
                    Err(e) => tracing::error!(vm = %vm.cfg.name, "cannot unserve: {e}"),
                }
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn load_keys(config: &AgentConfig) -> Result<KeyFile, Error> {
    let keys = KeyFile::load(&config.keys).map_err(|e| Error::Invalid(e.to_string()))?;
    for vm in &config.vms {
        match keys.get(vm.spi) {
            None => {
                return Err(Error::Invalid(format!(
                    "vm {:?}: SPI {} is not in the key file {}",
                    vm.name,
                    vm.spi,
                    config.keys.display()
                )))
            }
            Some(k) if !k.authorizes(vm.home_address) => tracing::warn!(
                vm = %vm.name,
                spi = vm.spi,
                "the key file does not list {} for this SPI: the home agent may deny it",
                vm.home_address
            ),
            Some(_) => {}
        }
    }
    Ok(keys)
}

/// Runs the foreign agent until SIGINT/SIGTERM; returns the data path's
/// frame accounting at teardown.
pub fn run(args: &AgentArgs) -> Result<Vec<FrameAccounting>, Error> {
    if !is_root() {
        return Err(Error::Invalid(
            "homeward agent needs root (CAP_NET_ADMIN and CAP_BPF): run it as root".into(),
        ));
    }
    let stop_rx = crate::common::stop_on_signal().map_err(Error::Daemon)?;
    let config = AgentConfig::merge(args, AgentFile::load(&args.config)?)?;
    let keys = load_keys(&config)?;
    let (successor, bound) = handover::successor_or_bind(&config.socket, ROLE, args.takeover)?;

    // Registration clients before the data path: a bad --address fails
    // here, before anything is attached.
    let (done_tx, done_rx) = channel::unbounded();
    let mut job_senders = Vec::new();
    for (i, vm) in config.vms.iter().enumerate() {
        let client = RegistrationClient::new(config.address, keys.clone()).map_err(|e| {
            Error::Invalid(format!(
                "cannot open a registration socket on --address {}: {e}",
                config.address
            ))
        })?;
        let (tx, rx) = channel::unbounded();
        registrar::spawn(i, &vm.name, client, rx, done_tx.clone())
            .map_err(|e| Error::Daemon(format!("cannot start a registration thread: {e}")))?;
        job_senders.push(tx);
    }

    let mut successor = successor;
    let adopted = successor
        .as_mut()
        .map(|s| std::mem::take(&mut s.queues))
        .unwrap_or_default();
    let datapath = DataPath::start(
        DataPathConfig {
            uplink: config.uplink.clone(),
            vm_link: config.vm_link.clone(),
            address: config.address,
            home_agents: config.home_agents(),
            queues: config.queues,
            tunnel_mtu: config.tunnel_mtu,
            mss_clamp: config.mss_clamp,
            pin_dir: crate::common::bpf_pin_dir(&config.bpffs, "agent", &config.socket),
        },
        successor.as_ref(),
        adopted,
    )?;
    let (socket, adopted_vms) = match (bound, successor) {
        (Some(s), _) => (s, Vec::new()),
        (None, Some(mut s)) => {
            let listener = s
                .listener
                .take()
                .ok_or_else(|| Error::Daemon("--takeover: no control socket handed over".into()))?;
            let socket = ControlSocket::adopt(&config.socket, listener)?;
            // From here on the predecessor exits; if it cannot hear us it
            // exits all the same (its answer times out).
            crate::common::notify::taking_over();
            if let Err(e) = s.accept() {
                tracing::warn!("--takeover: telling the predecessor: {e}");
            }
            (socket, s.served.iter().map(|v| v.vm).collect())
        }
        (None, None) => return Err(Error::Daemon("no control socket".into())),
    };
    let mut socket = socket;
    let mut agent = Agent::new(&config, datapath, job_senders);
    agent.adopt(&adopted_vms);
    if args.takeover {
        // The predecessor let the port go when it handed over.
        agent.metrics.start_or_log();
    } else if let Err(e) = agent.metrics.start() {
        agent.unserve_all();
        agent.datapath.stop();
        return Err(Error::Invalid(e));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (watch_tx, watch_rx) = channel::unbounded();
    let mut watchers = Vec::new();
    let slots = agent.command_slots();
    for ((i, vm), slot) in config.vms.iter().enumerate().zip(slots) {
        let t = watch::spawn(
            i,
            &vm.name,
            vm.qmp.clone(),
            watch_tx.clone(),
            stop.clone(),
            slot,
        )
        .map_err(|e| Error::Daemon(format!("cannot start a QMP watcher: {e}")))?;
        watchers.push(t);
    }
    tracing::info!(
        address = %config.address,
        uplink = %config.uplink,
        vm_link = %config.vm_link,
        vms = config.vms.len(),
        socket = %config.socket.display(),
        takeover = args.takeover,
        version = env!("HOMEWARD_VERSION"),
        "homeward agent is running"
    );
    crate::common::notify::ready();

    let ending = serve(&mut agent, &mut socket, &watch_rx, &done_rx, &stop_rx);

    stop.store(true, Ordering::Relaxed);
    for w in watchers {
        let _ = w.join();
    }
    if ending == Ending::HandedOver {
        socket.handed_over();
        agent.datapath.lend_to_successor();
        tracing::info!("handed over to the --takeover successor; exiting");
        return Ok(Vec::new());
    }
    agent.unserve_all();
    let accounting = agent.datapath.stop();
    drop(socket);
    Ok(accounting)
}

/// The role's name in a takeover offer.
const ROLE: &str = "agent";

/// How `serve` ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    Stop,
    /// A `--takeover` successor runs the data path now.
    HandedOver,
}

fn serve(
    agent: &mut Agent<DataPath>,
    socket: &mut ControlSocket,
    watch: &Receiver<(usize, Watch)>,
    done: &Receiver<Done>,
    stop: &Receiver<()>,
) -> Ending {
    loop {
        let now = Instant::now();
        let wait = agent
            .next_deadline()
            .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now))
            .min(Duration::from_secs(1));
        channel::select! {
            recv(watch) -> m => {
                if let Ok((i, w)) = m {
                    agent.on_watch(Instant::now(), i, w);
                }
            }
            recv(done) -> d => {
                if let Ok(d) = d {
                    agent.on_done(Instant::now(), d);
                }
            }
            recv(socket.connections()) -> conn => {
                if let Ok(conn) = conn {
                    match server::read_request(&conn) {
                        Ok(Request::Takeover {}) => match hand_over(&mut agent.datapath, &conn, socket, &mut agent.metrics) {
                            Ok(true) => return Ending::HandedOver,
                            Ok(false) => agent.metrics.start_or_log(),
                            Err(e) => {
                                // Who holds the frames is unknown: exit as
                                // after a crash; a restart recovers.
                                tracing::error!("--takeover failed and the data path cannot be taken back: {e}");
                                return Ending::HandedOver;
                            }
                        },
                        Ok(Request::Capture { vm, count }) => {
                            capture::serve(conn, agent.datapath.forwarder(), vm, count)
                        }
                        Ok(req) => server::send_reply(&conn, &agent.handle(Instant::now(), req)),
                        Err(reply) => server::send_reply(&conn, &reply),
                    }
                }
            }
            recv(agent.metrics.scrapes()) -> reply => {
                if let Ok(reply) = reply {
                    let _ = reply.send(agent.exposition());
                }
            }
            recv(stop) -> _ => {
                tracing::info!("stopping");
                return Ending::Stop;
            }
            default(wait) => {}
        }
        agent.tick(Instant::now());
    }
}

/// `--takeover`, predecessor side (see `common::handover`): `Ok(true)`: the
/// successor runs the data path; `Ok(false)`: it failed and everything was
/// taken back; `Err`: no answer, who holds the frames is unknown.
fn hand_over(
    datapath: &mut DataPath,
    conn: &std::os::unix::net::UnixStream,
    socket: &mut ControlSocket,
    metrics: &mut Metrics,
) -> Result<bool, String> {
    tracing::info!("--takeover: a successor asks for the data path");
    let listener = socket.park();
    // The successor binds the metrics port next.
    metrics.stop();
    let parked = datapath.park();
    datapath.lend_to_successor();
    let served = datapath.served_vms();
    let returned = match handover::offer(conn, ROLE, listener, None, &parked, served) {
        Ok(Answer::Accepted) => {
            tracing::info!("--takeover: the successor runs the data path");
            return Ok(true);
        }
        Ok(Answer::Failed { error, queues }) => {
            tracing::warn!("--takeover: the successor failed ({error}); carrying on");
            queues
        }
        Err(OfferError::NotSent(e)) => {
            tracing::warn!("--takeover: could not offer the data path ({e}); carrying on");
            parked.iter().map(|p| p.sockets.handover_state()).collect()
        }
        Err(OfferError::NoAnswer(e)) => return Err(format!("no answer from the successor: {e}")),
    };
    datapath
        .take_back(parked, &returned)
        .map_err(|e| format!("taking the data path back: {e}"))?;
    socket.resume().map_err(|e| e.to_string())?;
    tracing::info!("--takeover: data path taken back");
    Ok(false)
}

/// `homeward list` against an agent: one line per VM.
pub fn print_list(r: &Value) {
    println!(
        "{:<12} {:<16} {:<17} {:<7} {:>8} {:>5} {:>12}",
        "vm", "home address", "state", "served", "expires", "code", "resume->reg"
    );
    let empty = Vec::new();
    for v in r.get("vms").and_then(Value::as_array).unwrap_or(&empty) {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let n = |k: &str, unit: &str| {
            v.get(k)
                .filter(|x| !x.is_null())
                .map_or("-".to_string(), |x| format!("{x}{unit}"))
        };
        println!(
            "{:<12} {:<16} {:<17} {:<7} {:>8} {:>5} {:>12}",
            s("name"),
            s("home_address"),
            s("state"),
            if v.get("served") == Some(&Value::Bool(true)) {
                "yes"
            } else {
                "no"
            },
            n("expires_in", "s"),
            n("last_code", ""),
            n("resume_to_registered_ms", " ms"),
        );
    }
}

/// `homeward stats` against an agent: registration counters, then the
/// data path's counters (non-zero ones), served VMs and frames.
pub fn print_stats(r: &Value) {
    let empty = Value::Null;
    // Strings without their JSON quotes, numbers as they are.
    let field = |v: &Value, k: &str| match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
        None => "-".to_string(),
    };
    let dp = r.get("datapath").unwrap_or(&empty);
    println!(
        "agent {}: {} VM(s), {} served; xdp mode {}, uplink {}, vm link {}",
        field(r, "address"),
        field(r, "vms"),
        field(r, "served"),
        field(dp, "xdp_mode"),
        field(dp, "uplink"),
        field(dp, "vm_link"),
    );
    let section = |name: &str, v: &Value| {
        if let Some(Value::Object(m)) = v.get(name) {
            let nonzero: Vec<String> = m
                .iter()
                .filter(|(_, v)| v.as_u64() != Some(0))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let text = if nonzero.is_empty() {
                "all zero".to_string()
            } else {
                nonzero.join(" ")
            };
            println!("{name}: {text}");
        }
    };
    section("registration", r);
    for name in ["counters", "steering", "drops"] {
        section(name, dp);
    }
    for s in dp
        .get("served")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "served {} ({}) for {}: {} packets, {} bytes",
            field(s, "vm"),
            field(s, "mac"),
            field(s, "home_agent"),
            field(s, "packets"),
            field(s, "bytes")
        );
    }
    for f in dp
        .get("frames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "frames q{}: total {} free {} fill {} rx {} worker {} tx {} completion {} unaccounted {}",
            field(f, "queue"),
            field(f, "total"),
            field(f, "free"),
            field(f, "fill"),
            field(f, "rx"),
            field(f, "worker"),
            field(f, "tx"),
            field(f, "completion"),
            field(f, "unaccounted")
        );
    }
}

#[cfg(test)]
mod tests;
