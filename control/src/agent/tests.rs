//! The agent's loop logic with a recording data path and registration
//! answers injected by hand: QMP reports in, data path calls and
//! registration jobs out, `list`/`stats` answers.

use super::*;
use crate::registration::Registered;
use qmp::{Event, Status};

#[derive(Default)]
struct Recorder {
    calls: Vec<String>,
    fail_serve: bool,
}

impl Serving for Recorder {
    type Stats = Value;
    fn metrics(&self, x: &mut crate::common::metrics::Exposition) {
        x.counter("recorded_calls", "Calls the recorder saw.")
            .sample(vec![], self.calls.len());
    }
    fn serve(&mut self, vm: Ipv4Addr, mac: [u8; 6], ha: Ipv4Addr) -> Result<(), String> {
        self.calls
            .push(format!("serve {vm} {} {ha}", format_mac(mac)));
        if self.fail_serve {
            return Err("no room".into());
        }
        Ok(())
    }
    fn unserve(&mut self, vm: Ipv4Addr) -> Result<(), String> {
        self.calls.push(format!("unserve {vm}"));
        Ok(())
    }
    fn stats(&self) -> Self::Stats {
        json!({ "counters": { "decap": 7 } })
    }
}

const AGENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const HA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const WEB1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const LOCAL1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 60);

fn vm(name: &str, home: Ipv4Addr, spi: u32) -> VmConfig {
    VmConfig {
        name: name.into(),
        mac: [0x52, 0x54, 0, 0, 0, spi as u8],
        home_address: home,
        home_prefix_len: 24,
        home_agent: HA,
        spi,
        qmp: format!("/run/homeward/{name}.qmp").into(),
    }
}

fn agent(fail_serve: bool) -> (Agent<Recorder>, Vec<Receiver<Job>>) {
    let config = AgentConfig {
        metrics: None,
        uplink: "eth0".into(),
        vm_link: "tap0".into(),
        address: AGENT,
        home_agent: HA,
        keys: "/etc/homeward/keys.toml".into(),
        lifetime: 60,
        reverse_tunnel: true,
        queues: 1,
        socket: "/tmp/x".into(),
        bpffs: "/sys/fs/bpf".into(),
        // web1 is away from home here; local1's home subnet is this one.
        vms: vec![vm("web1", WEB1, 256), vm("local1", LOCAL1, 257)],
        tunnel_mtu: 1500,
        mss_clamp: true,
        switchover_hold: 5,
    };
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| channel::unbounded()).unzip();
    let dp = Recorder {
        fail_serve,
        ..Recorder::default()
    };
    (Agent::new(&config, dp, txs), rxs)
}

fn event(kind: EventKind, at: SystemTime) -> Watch {
    let d = at.duration_since(UNIX_EPOCH).unwrap();
    Watch::Event(Event {
        kind,
        timestamp: Timestamp {
            seconds: d.as_secs() as i64,
            microseconds: d.subsec_micros() as i64,
        },
    })
}

fn status(running: bool) -> Watch {
    Watch::Connected(Status {
        status: if running { "running" } else { "inmigrate" }.into(),
        running,
    })
}

fn accepted(index: usize, job: &Job, lifetime: u16, at: SystemTime) -> Done {
    Done {
        index,
        seq: job.seq,
        params: job.params,
        result: Ok(Registered {
            code: 0,
            lifetime,
            round_trip: Duration::from_micros(2500),
        }),
        at,
    }
}

fn listed(a: &Agent<Recorder>, now: Instant, name: &str) -> Value {
    a.list(now)["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap()
        .clone()
}

#[test]
fn a_resume_away_serves_registers_and_measures_from_qemus_timestamp() {
    let (mut a, jobs) = agent(false);
    let now = Instant::now();
    let wall = SystemTime::now();
    a.on_watch(now, 0, status(false));
    assert!(a.datapath.calls.is_empty());
    a.on_watch(now, 0, event(EventKind::Resume, wall));
    assert_eq!(
        a.datapath.calls,
        vec!["serve 192.0.2.50 52:54:00:00:00:00 198.51.100.1"]
    );
    let job = jobs[0].try_recv().unwrap();
    assert_eq!(
        job.params,
        RegistrationParams {
            home_address: WEB1,
            home_agent: HA,
            care_of: AGENT,
            lifetime: 60,
            reverse_tunnel: true,
            spi: 256,
            vm_mac: Some([0x52, 0x54, 0, 0, 0, 0]),
            switchover: false,
        }
    );
    assert_eq!(listed(&a, now, "web1")["state"], "registering");

    // Accepted 120 ms after QEMU's RESUME.
    let at = wall + Duration::from_millis(120);
    a.on_done(now, accepted(0, &job, 40, at));
    let v = listed(&a, now, "web1");
    assert_eq!(v["state"], "registered");
    assert_eq!(v["served"], true);
    assert_eq!(v["last_code"], 0);
    assert_eq!(v["expires_in"], 40);
    // QEMU's timestamp has microseconds; ours more.
    let latency = v["resume_to_registered_ms"].as_f64().unwrap();
    assert!((latency - 120.0).abs() < 0.01, "{latency}");
    assert_eq!(v["round_trip_ms"], 2.5);
    assert!(v["registered_until"].as_u64().unwrap() > 1_600_000_000);

    // Re-registration at 2/3 of the granted 40 s.
    assert_eq!(
        a.next_deadline(),
        Some(now + Duration::from_secs(40) * 2 / 3)
    );
    a.tick(now + Duration::from_secs(27));
    let refresh = jobs[0].try_recv().unwrap();
    assert_eq!(refresh.seq, job.seq + 1);
    assert_eq!(refresh.params.lifetime, 60);

    // The source side of a migration: stop, completed, QEMU gone.
    a.on_watch(now, 0, event(EventKind::Stop, wall));
    a.on_watch(
        now,
        0,
        event(
            EventKind::Migration {
                status: "completed".into(),
            },
            wall,
        ),
    );
    assert_eq!(a.datapath.calls.last().unwrap(), "unserve 192.0.2.50");
    // The refresh still in flight answers late: ignored.
    a.on_done(now, accepted(0, &refresh, 60, wall));
    assert_eq!(a.counters.stale, 1);
    assert_eq!(listed(&a, now, "web1")["state"], "idle");
    assert_eq!(a.next_deadline(), None);
    assert!(jobs[0].try_recv().is_err());
}

#[test]
fn a_vm_at_home_is_deregistered_not_served() {
    let (mut a, jobs) = agent(false);
    let now = Instant::now();
    a.on_watch(now, 1, status(true));
    assert!(a.datapath.calls.is_empty());
    let job = jobs[1].try_recv().unwrap();
    assert_eq!(job.params.lifetime, 0);
    assert_eq!(job.params.care_of, LOCAL1);
    // The deregistration names the VM's MAC too (the HA hands the address
    // back to it even if the binding has none).
    assert_eq!(job.params.vm_mac, Some([0x52, 0x54, 0, 0, 0, 1]));
    assert!(!job.params.reverse_tunnel);
    assert_eq!(listed(&a, now, "local1")["state"], "deregistering");
    a.on_done(now, accepted(1, &job, 0, SystemTime::now()));
    let v = listed(&a, now, "local1");
    assert_eq!(v["state"], "home");
    assert_eq!(v["at_home"], true);
    assert_eq!(a.counters.deregistrations_sent, 1);
}

#[test]
fn failures_and_denials_are_kept_for_list_and_retried_later() {
    let (mut a, jobs) = agent(true);
    let now = Instant::now();
    a.on_watch(now, 0, event(EventKind::Resume, SystemTime::now()));
    // Serving failed: registration still goes out.
    let job = jobs[0].try_recv().unwrap();
    a.on_done(
        now,
        Done {
            index: 0,
            seq: job.seq,
            params: job.params,
            result: Err(RegistrationError::Timeout),
            at: SystemTime::now(),
        },
    );
    assert_eq!(a.next_deadline(), Some(now + Duration::from_secs(1)));
    assert_eq!(listed(&a, now, "web1")["state"], "retrying");
    a.tick(now + Duration::from_secs(1));
    let job = jobs[0].try_recv().unwrap();
    a.on_done(
        now,
        Done {
            index: 0,
            seq: job.seq,
            params: job.params,
            result: Err(RegistrationError::Denied {
                code: 131,
                reason: "mobile node failed authentication",
            }),
            at: SystemTime::now(),
        },
    );
    let v = listed(&a, now, "web1");
    assert_eq!(v["state"], "denied");
    assert_eq!(v["last_code"], 131);
    assert!(v["last_error"].as_str().unwrap().contains("131"));
    assert_eq!(a.next_deadline(), Some(now + Duration::from_secs(30)));
    assert_eq!(a.counters.timeouts, 1);
    assert_eq!(a.counters.denied, 1);
}

#[test]
fn the_control_socket_answers_list_and_stats_and_refuses_bind() {
    let (mut a, _jobs) = agent(false);
    let now = Instant::now();
    a.on_watch(now, 0, event(EventKind::Resume, SystemTime::now()));
    let r = a.handle(now, Request::Stats {});
    let s = r.result.unwrap();
    assert_eq!(s["role"], "foreign_agent");
    assert_eq!(s["served"], 1);
    assert_eq!(s["registration"]["registrations_sent"], 1);
    assert_eq!(s["datapath"]["counters"]["decap"], 7);
    let r = a.handle(now, Request::List {});
    assert_eq!(r.result.unwrap()["vms"].as_array().unwrap().len(), 2);
    let r = a.handle(
        now,
        Request::Bind {
            vm: WEB1,
            care_of: AGENT,
            lifetime: None,
            vm_mac: None,
        },
    );
    assert!(!r.ok);
    assert!(r.error.unwrap().contains("homeward run"));
    assert!(!a.handle(now, Request::Unbind { vm: WEB1 }).ok);
}

#[test]
fn shutdown_unserves_everything_and_unknown_indexes_are_ignored() {
    let (mut a, jobs) = agent(false);
    let now = Instant::now();
    a.on_watch(now, 0, status(true));
    a.on_watch(now, 9, status(true));
    a.on_done(
        now,
        Done {
            index: 9,
            seq: 1,
            params: jobs[0].try_recv().unwrap().params,
            result: Err(RegistrationError::Timeout),
            at: SystemTime::now(),
        },
    );
    a.unserve_all();
    assert_eq!(a.datapath.calls.last().unwrap(), "unserve 192.0.2.50");
}

#[test]
fn the_source_of_a_migration_sends_a_switchover_then_migrate_continue() {
    use std::io::{BufRead, BufReader};
    let (mut a, jobs) = agent(false);
    let now = Instant::now();
    let wall = SystemTime::now();
    // The watcher's session: QEMU's end of it is `qemu`.
    let (ours, qemu) = std::os::unix::net::UnixStream::pair().unwrap();
    watch::put(&a.vms[0].qmp, Some(qmp::Commander::new(ours)));
    a.on_watch(now, 0, status(true));
    let reg = jobs[0].try_recv().unwrap();
    a.on_done(now, accepted(0, &reg, 60, wall));
    let migration = |s: &str| {
        event(
            EventKind::Migration { status: s.into() },
            wall + Duration::from_millis(5),
        )
    };
    a.on_watch(now, 0, migration("active"));
    a.on_watch(now, 0, event(EventKind::Stop, wall));
    let job = jobs[0].try_recv().unwrap();
    assert_eq!(
        job.params,
        RegistrationParams {
            home_address: WEB1,
            home_agent: HA,
            care_of: AGENT,
            lifetime: 5,
            reverse_tunnel: false,
            spi: 256,
            vm_mac: Some([0x52, 0x54, 0, 0, 0, 0]),
            switchover: true,
        }
    );
    a.on_watch(now, 0, migration("pre-switchover"));
    assert_eq!(listed(&a, now, "web1")["switchover"], "waiting");
    // Confirmed 3 ms after QEMU's STOP.
    a.on_done(now, accepted(0, &job, 5, wall + Duration::from_millis(3)));
    let mut line = String::new();
    BufReader::new(&qemu).read_line(&mut line).unwrap();
    let cmd: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(cmd["execute"], "migrate-continue");
    assert_eq!(cmd["arguments"], json!({"state": "pre-switchover"}));
    let v = listed(&a, now, "web1");
    assert_eq!(v["switchover"], "held");
    // QEMU's timestamps have microseconds.
    let stop_to_switchover = v["stop_to_switchover_ms"].as_f64().unwrap();
    assert!(
        (stop_to_switchover - 3.0).abs() < 0.01,
        "{stop_to_switchover}"
    );
    assert_eq!(v["switchover_round_trip_ms"], 2.5);
    // The VM's own registration is untouched by the switchover's answer.
    assert_eq!(v["state"], "registered");
    assert_eq!(a.counters.accepted, 1);
    let s = a.handle(now, Request::Stats {}).result.unwrap();
    assert_eq!(s["registration"]["switchovers_sent"], 1);
    assert_eq!(s["registration"]["switchovers_held"], 1);
    assert_eq!(s["registration"]["continues_sent"], 1);
    a.on_watch(now, 0, migration("completed"));
    assert_eq!(a.datapath.calls.last().unwrap(), "unserve 192.0.2.50");
    assert!(jobs[0].try_recv().is_err());
}

#[test]
fn an_unanswered_switchover_still_lets_the_migration_go_on() {
    let (mut a, jobs) = agent(false);
    let now = Instant::now();
    let wall = SystemTime::now();
    a.on_watch(now, 1, status(true));
    let dereg = jobs[1].try_recv().unwrap();
    a.on_done(now, accepted(1, &dereg, 0, wall));
    let migration = |s: &str| event(EventKind::Migration { status: s.into() }, wall);
    a.on_watch(now, 1, migration("active"));
    a.on_watch(now, 1, event(EventKind::Stop, wall));
    let job = jobs[1].try_recv().unwrap();
    assert!(job.params.switchover);
    // Not connected: the continue is logged as impossible, not a panic.
    a.on_watch(now, 1, migration("pre-switchover"));
    assert_eq!(a.next_deadline(), Some(now + lifecycle::SWITCHOVER_WAIT));
    a.tick(now + lifecycle::SWITCHOVER_WAIT);
    assert_eq!(listed(&a, now, "local1")["switchover"], "unconfirmed");
    assert_eq!(a.counters.continues_sent, 0);
    // The old home agent's silence arrives late.
    a.on_done(
        now,
        Done {
            index: 1,
            seq: job.seq,
            params: job.params,
            result: Err(RegistrationError::Timeout),
            at: wall,
        },
    );
    assert_eq!(a.counters.switchovers_unconfirmed, 1);
    assert_eq!(a.counters.timeouts, 0, "registration counters untouched");
}
