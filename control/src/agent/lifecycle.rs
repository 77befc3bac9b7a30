//! One VM's life on this hypervisor, as a pure state machine: QMP status and
//! events, registration results and timer ticks go in; data path and
//! registration actions come out. No I/O, no clock reads: `now` is an
//! argument, so every rule is tested with a table.
//!
//! Rules:
//! - Running here and away from home: serve first (the tunnel's packets
//!   must find the VM the moment the home agent redirects), then register,
//!   and re-register at 2/3 of the granted lifetime.
//! - Running here and at home: deregister once per resume (lifetime 0,
//!   care-of = home address, RFC 5944 3.6.1.2), retried until accepted.
//! - No longer ours (source of a completed migration, QEMU gone, shut
//!   down): unserve and stop re-registering; the destination's registration
//!   replaces the binding. A guest shutdown while away also deregisters, as
//!   nobody else will.
//! - Failures retry after 1 s, 2 s, 4 s .. 30 s; a denial waits the full
//!   30 s, since an immediate retry would be denied again.

use std::time::{Duration, Instant};

/// First retry delay after a failed registration.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay, and the delay after a denial.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// (Re)connected to QMP; `running` is `query-status`'s answer.
    Connected { running: bool },
    /// `RESUME`: the VM runs here now.
    Resumed,
    /// `STOP`: paused; still ours (a pause, or a migration not yet done).
    Stopped,
    /// `MIGRATION` with its status.
    Migration { status: String },
    /// `SHUTDOWN`; `guest` when the guest powered itself off.
    Shutdown { guest: bool },
    /// QMP closed: QEMU exited (or is being restarted).
    Disconnected,
    /// The answer to the request numbered `seq`.
    Registration { seq: u64, outcome: Outcome },
    /// Time passed; acts on due re-registrations and retries.
    Tick,
}

/// A registration attempt's result, as far as the lifecycle cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted {
        lifetime: u16,
    },
    Denied {
        code: u8,
    },
    /// Timeout, socket error, bad reply: worth retrying soon.
    Failed,
}

/// What to do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Turn the data path on for this VM.
    Serve,
    /// Turn it off.
    Unserve,
    /// Send a registration (care-of = this agent) asking for `lifetime`.
    Register { seq: u64, lifetime: u16 },
    /// Send a deregistration (lifetime 0, care-of = the home address).
    Deregister { seq: u64 },
}

/// What the agent wants the home agent to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    Nothing,
    Registered,
    Deregistered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Idle,
    InFlight,
    /// Registered; refresh at this time.
    Valid {
        refresh_at: Instant,
    },
    /// Failed or denied; try again at this time.
    RetryAt(Instant),
}

/// One VM's lifecycle.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    at_home: bool,
    lifetime: u16,
    running: bool,
    served: bool,
    goal: Goal,
    request: Request,
    /// Number of the latest request; answers to older ones are stale.
    seq: u64,
    backoff: Duration,
    registered_until: Option<Instant>,
    last_code: Option<u8>,
    denied: bool,
}

impl Lifecycle {
    /// `at_home`: this agent's address is inside the VM's home subnet.
    /// `lifetime`: the registration lifetime to ask for, seconds.
    pub fn new(at_home: bool, lifetime: u16) -> Lifecycle {
        Lifecycle {
            at_home,
            lifetime,
            running: false,
            served: false,
            goal: Goal::Nothing,
            request: Request::Idle,
            seq: 0,
            backoff: FIRST_BACKOFF,
            registered_until: None,
            last_code: None,
            denied: false,
        }
    }

    /// `--takeover`: the predecessor served this VM and the data path it
    /// handed over still does; QMP's answer on connecting decides the rest
    /// (running: register again; gone: unserve).
    pub fn adopt_served(&mut self) {
        self.served = true;
    }

    /// Applies one input; returns the actions to take, in order.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Connected { running: true } | Input::Resumed => self.resumed(&mut out),
            Input::Connected { running: false } | Input::Stopped => self.running = false,
            Input::Migration { status } => {
                // The destination also reports "completed", but after its
                // RESUME (QEMU announces completion only once the VM runs),
                // or while paused before libvirt's `cont`: never while it
                // is running here. So "completed" while stopped is the source.
                if status == "completed" && !self.running {
                    self.leave(&mut out);
                }
            }
            Input::Shutdown { guest } => {
                self.running = false;
                let away = !self.at_home && (self.served || self.goal == Goal::Registered);
                self.leave(&mut out);
                if guest && away {
                    self.goal = Goal::Deregistered;
                    self.backoff = FIRST_BACKOFF;
                    out.push(self.send());
                }
            }
            Input::Disconnected => {
                self.running = false;
                self.leave(&mut out);
            }
            Input::Registration { seq, outcome } => self.answered(now, seq, outcome),
            Input::Tick => {}
        }
        // Every input is also a chance to act on what has come due.
        self.due(now, &mut out);
        out
    }

    fn resumed(&mut self, out: &mut Vec<Action>) {
        self.running = true;
        if self.at_home {
            if self.served {
                self.served = false;
                out.push(Action::Unserve);
            }
            self.goal = Goal::Deregistered;
            self.backoff = FIRST_BACKOFF;
            out.push(self.send());
            return;
        }
        if !self.served {
            self.served = true;
            out.push(Action::Serve);
        }
        if self.goal == Goal::Registered && self.request == Request::InFlight {
            return; // already on its way
        }
        self.goal = Goal::Registered;
        self.backoff = FIRST_BACKOFF;
        out.push(self.send());
    }

    /// The VM is no longer ours: unserve, stop re-registering. A
    /// deregistration in progress goes on.
    fn leave(&mut self, out: &mut Vec<Action>) {
        if self.served {
            self.served = false;
            out.push(Action::Unserve);
        }
        if self.goal == Goal::Registered {
            self.goal = Goal::Nothing;
            self.request = Request::Idle;
            self.registered_until = None;
            self.seq += 1; // an answer still in flight is now stale
        }
    }

    fn send(&mut self) -> Action {
        self.seq += 1;
        self.request = Request::InFlight;
        match self.goal {
            Goal::Deregistered => Action::Deregister { seq: self.seq },
            _ => Action::Register {
                seq: self.seq,
                lifetime: self.lifetime,
            },
        }
    }

    fn answered(&mut self, now: Instant, seq: u64, outcome: Outcome) {
        if seq != self.seq || self.request != Request::InFlight {
            return;
        }
        match (self.goal, outcome) {
            (Goal::Nothing, _) => self.request = Request::Idle,
            (Goal::Registered, Outcome::Accepted { lifetime }) if lifetime > 0 => {
                let granted = Duration::from_secs(lifetime.into());
                self.registered_until = Some(now + granted);
                self.request = Request::Valid {
                    refresh_at: now + granted * 2 / 3,
                };
                self.backoff = FIRST_BACKOFF;
                self.last_code = Some(0);
                self.denied = false;
            }
            (Goal::Deregistered, Outcome::Accepted { .. }) => {
                self.goal = Goal::Nothing;
                self.request = Request::Idle;
                self.registered_until = None;
                self.backoff = FIRST_BACKOFF;
                self.last_code = Some(0);
                self.denied = false;
            }
            (_, Outcome::Denied { code }) => {
                self.last_code = Some(code);
                self.denied = true;
                self.backoff = MAX_BACKOFF;
                self.request = Request::RetryAt(now + MAX_BACKOFF);
            }
            // Failed, or "accepted" with lifetime 0 for a registration,
            // which leaves no binding: retry.
            (_, _) => {
                self.denied = false;
                self.request = Request::RetryAt(now + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn due(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.registered_until.is_some_and(|u| now >= u) {
            self.registered_until = None;
        }
        let due = match self.request {
            Request::Valid { refresh_at } => now >= refresh_at,
            Request::RetryAt(at) => now >= at,
            Request::Idle | Request::InFlight => false,
        };
        if due && self.goal != Goal::Nothing {
            out.push(self.send());
        }
    }

    /// When `Tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.request {
            Request::Valid { refresh_at } => Some(refresh_at),
            Request::RetryAt(at) => Some(at),
            Request::Idle | Request::InFlight => None,
        }
    }

    /// One word for `homeward list`.
    pub fn state(&self) -> &'static str {
        match (self.goal, self.request) {
            (Goal::Registered, Request::Valid { .. }) => "registered",
            (Goal::Registered, Request::InFlight) if self.registered_until.is_some() => {
                "refreshing"
            }
            (Goal::Registered, Request::InFlight) => "registering",
            (Goal::Registered, _) if self.denied => "denied",
            (Goal::Registered, _) => "retrying",
            (Goal::Deregistered, _) if self.denied => "deregister-denied",
            (Goal::Deregistered, _) => "deregistering",
            (Goal::Nothing, _) if self.running && self.at_home => "home",
            (Goal::Nothing, _) if self.running => "running",
            (Goal::Nothing, _) => "idle",
        }
    }

    pub fn served(&self) -> bool {
        self.served
    }
    pub fn running(&self) -> bool {
        self.running
    }
    pub fn at_home(&self) -> bool {
        self.at_home
    }
    /// Until when the home agent holds our binding, as far as we know.
    pub fn registered_until(&self) -> Option<Instant> {
        self.registered_until
    }
    /// The code of the last reply (0 accepted).
    pub fn last_code(&self) -> Option<u8> {
        self.last_code
    }
    /// Is an answer to request `seq` still wanted?
    pub fn wants(&self, seq: u64) -> bool {
        seq == self.seq && self.request == Request::InFlight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Input::*;

    const LT: u16 = 60;

    fn reg(seq: u64) -> Action {
        Register { seq, lifetime: LT }
    }
    fn ok(seq: u64, lifetime: u16) -> Input {
        Registration {
            seq,
            outcome: Outcome::Accepted { lifetime },
        }
    }
    fn failed(seq: u64) -> Input {
        Registration {
            seq,
            outcome: Outcome::Failed,
        }
    }
    fn denied(seq: u64, code: u8) -> Input {
        Registration {
            seq,
            outcome: Outcome::Denied { code },
        }
    }
    fn migration(status: &str) -> Input {
        Migration {
            status: status.into(),
        }
    }

    /// Runs a table of (milliseconds since start, input, expected actions,
    /// expected state) rows through one machine.
    #[track_caller]
    fn run(at_home: bool, rows: &[(u64, Input, &[Action], &str)]) -> Lifecycle {
        let t0 = Instant::now();
        let mut m = Lifecycle::new(at_home, LT);
        for (i, (ms, input, want, state)) in rows.iter().enumerate() {
            let got = m.handle(t0 + Duration::from_millis(*ms), input.clone());
            assert_eq!(&got, want, "row {i}: {input:?} at {ms} ms");
            assert_eq!(m.state(), *state, "row {i}: {input:?} at {ms} ms");
        }
        m
    }

    #[test]
    fn arriving_away_serves_then_registers_and_refreshes_at_two_thirds() {
        let m = run(
            false,
            &[
                (0, Connected { running: false }, &[], "idle"),
                (10, Resumed, &[Serve, reg(1)], "registering"),
                (30, ok(1, 60), &[], "registered"),
                (30_000, Tick, &[], "registered"),
                // 2/3 of 60 s after the reply.
                (40_029, Tick, &[], "registered"),
                (40_030, Tick, &[reg(2)], "refreshing"),
                // The HA may grant less than asked.
                (40_050, ok(2, 30), &[], "registered"),
                (60_049, Tick, &[], "registered"),
                (60_050, Tick, &[reg(3)], "refreshing"),
            ],
        );
        assert!(m.served());
        assert_eq!(m.last_code(), Some(0));
        assert!(m.registered_until().is_some());
    }

    #[test]
    fn a_vm_served_by_a_takeover_predecessor_is_not_served_twice() {
        let t0 = Instant::now();
        // Running: registered again, not served again.
        let mut m = Lifecycle::new(false, LT);
        m.adopt_served();
        assert_eq!(m.handle(t0, Connected { running: true }), [reg(1)]);
        assert!(m.served());
        // Gone meanwhile: unserved.
        let mut m = Lifecycle::new(false, LT);
        m.adopt_served();
        assert_eq!(m.handle(t0, Disconnected), [Unserve]);
        assert!(!m.served());
    }

    #[test]
    fn running_at_connect_counts_as_a_resume() {
        run(
            false,
            &[(
                0,
                Connected { running: true },
                &[Serve, reg(1)],
                "registering",
            )],
        );
    }

    #[test]
    fn failures_back_off_exponentially_up_to_30s() {
        let first = [Serve, reg(1)];
        let mut rows: Vec<(u64, Input, &[Action], &str)> =
            vec![(0, Resumed, &first, "registering")];
        // Failure n answered at t; retry due at t + min(2^(n-1), 30) s.
        let mut t = 0u64;
        let mut seq = 1;
        let acts: Vec<Action> = (2..=9).map(reg).collect();
        for (n, delay) in [1u64, 2, 4, 8, 16, 30, 30].into_iter().enumerate() {
            rows.push((t, failed(seq), &[], "retrying"));
            rows.push((t + delay * 1000 - 1, Tick, &[], "retrying"));
            seq += 1;
            rows.push((
                t + delay * 1000,
                Tick,
                std::slice::from_ref(&acts[n]),
                "registering",
            ));
            t += delay * 1000;
        }
        // Success resets the backoff.
        rows.push((t, ok(seq, 60), &[], "registered"));
        let m = run(false, &rows);
        assert_eq!(m.backoff, FIRST_BACKOFF);
    }

    #[test]
    fn a_denial_is_logged_once_per_30s_not_hammered() {
        let m = run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (5, denied(1, 131), &[], "denied"),
                (1_005, Tick, &[], "denied"),
                (29_999, Tick, &[], "denied"),
                (30_005, Tick, &[reg(2)], "registering"),
                (30_010, denied(2, 131), &[], "denied"),
                (60_009, Tick, &[], "denied"),
                (60_010, Tick, &[reg(3)], "registering"),
            ],
        );
        assert_eq!(m.last_code(), Some(131));
        // The data path stays on: the VM is here whatever the HA says.
        assert!(m.served());
    }

    #[test]
    fn at_home_deregisters_once_per_resume_and_retries_failures() {
        let m = run(
            true,
            &[
                (0, Resumed, &[Deregister { seq: 1 }], "deregistering"),
                (5, ok(1, 0), &[], "home"),
                (60_000, Tick, &[], "home"),
                // A pause and resume: once more.
                (61_000, Stopped, &[], "idle"),
                (61_500, Resumed, &[Deregister { seq: 2 }], "deregistering"),
                (62_500, failed(2), &[], "deregistering"),
                (63_500, Tick, &[Deregister { seq: 3 }], "deregistering"),
                (63_510, ok(3, 0), &[], "home"),
                (200_000, Tick, &[], "home"),
            ],
        );
        assert!(!m.served());
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn source_of_a_migration_unserves_and_stops_refreshing() {
        let m = run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (10, ok(1, 60), &[], "registered"),
                (20_000, migration("setup"), &[], "registered"),
                (20_001, migration("active"), &[], "registered"),
                (20_600, Stopped, &[], "registered"),
                (20_601, migration("completed"), &[Unserve], "idle"),
                // No re-registration later: the destination owns it now.
                (100_000, Tick, &[], "idle"),
                (100_001, Disconnected, &[], "idle"),
            ],
        );
        assert_eq!(m.next_deadline(), None);
        assert_eq!(m.registered_until(), None);
    }

    #[test]
    fn destination_ignores_its_own_completed_event() {
        // Plain QEMU `-incoming`: RESUME, then MIGRATION completed.
        run(
            false,
            &[
                (0, Connected { running: false }, &[], "idle"),
                (5, migration("active"), &[], "idle"),
                (600, Resumed, &[Serve, reg(1)], "registering"),
                (600, migration("completed"), &[], "registering"),
                (620, ok(1, 60), &[], "registered"),
            ],
        );
        // libvirt (-S): completed while paused, then `cont`.
        run(
            false,
            &[
                (0, Connected { running: false }, &[], "idle"),
                (600, migration("completed"), &[], "idle"),
                (610, Resumed, &[Serve, reg(1)], "registering"),
            ],
        );
    }

    #[test]
    fn a_failed_migration_keeps_the_vm_here() {
        run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (10, ok(1, 60), &[], "registered"),
                (20_000, Stopped, &[], "registered"),
                (20_100, migration("failed"), &[], "registered"),
                (20_101, Resumed, &[reg(2)], "refreshing"),
            ],
        );
    }

    #[test]
    fn a_stale_answer_after_leaving_is_ignored() {
        let m = run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (500, Disconnected, &[Unserve], "idle"),
                (900, ok(1, 60), &[], "idle"),
                (900, failed(1), &[], "idle"),
            ],
        );
        assert_eq!(m.next_deadline(), None);
        assert!(!m.wants(1));
    }

    #[test]
    fn guest_shutdown_away_deregisters_host_shutdown_does_not() {
        let m = run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (10, ok(1, 60), &[], "registered"),
                (
                    5_000,
                    Shutdown { guest: true },
                    &[Unserve, Deregister { seq: 3 }],
                    "deregistering",
                ),
                // QEMU exits after the shutdown; the deregistration goes on.
                (5_001, Disconnected, &[], "deregistering"),
                (5_100, failed(3), &[], "deregistering"),
                (6_100, Tick, &[Deregister { seq: 4 }], "deregistering"),
                (6_110, ok(4, 0), &[], "idle"),
            ],
        );
        assert!(!m.served());
        // Host-side shutdown (SIGTERM after a migration, virsh destroy).
        run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (10, ok(1, 60), &[], "registered"),
                (5_000, Shutdown { guest: false }, &[Unserve], "idle"),
                (100_000, Tick, &[], "idle"),
            ],
        );
        // A guest shutdown at home: nothing was served.
        run(
            true,
            &[
                (0, Resumed, &[Deregister { seq: 1 }], "deregistering"),
                (10, ok(1, 0), &[], "home"),
                (5_000, Shutdown { guest: true }, &[], "idle"),
            ],
        );
    }

    #[test]
    fn qemu_restart_reconnects_and_registers_again() {
        run(
            false,
            &[
                (
                    0,
                    Connected { running: true },
                    &[Serve, reg(1)],
                    "registering",
                ),
                (10, ok(1, 60), &[], "registered"),
                (1_000, Disconnected, &[Unserve], "idle"),
                (3_000, Connected { running: false }, &[], "idle"),
                (4_000, Resumed, &[Serve, reg(3)], "registering"),
            ],
        );
    }

    #[test]
    fn resume_while_a_registration_is_in_flight_sends_no_duplicate() {
        run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (1, Stopped, &[], "registering"),
                (2, Resumed, &[], "registering"),
                (20, ok(1, 60), &[], "registered"),
            ],
        );
    }

    #[test]
    fn a_registration_accepted_with_no_lifetime_is_retried() {
        run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (10, ok(1, 0), &[], "retrying"),
                (1_010, Tick, &[reg(2)], "registering"),
            ],
        );
    }

    #[test]
    fn the_binding_expires_in_our_view_if_refreshes_fail() {
        let t0 = Instant::now();
        let mut m = Lifecycle::new(false, 3);
        m.handle(t0, Resumed);
        m.handle(t0, ok(1, 3));
        assert_eq!(m.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(
            m.handle(t0 + Duration::from_secs(2), Tick),
            vec![Register {
                seq: 2,
                lifetime: 3
            }]
        );
        m.handle(t0 + Duration::from_secs(2), failed(2));
        assert!(m.registered_until().is_some());
        m.handle(t0 + Duration::from_secs(3), Tick);
        assert_eq!(m.registered_until(), None);
    }
}
