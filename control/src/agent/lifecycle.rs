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
//! - Source of an outgoing migration (make before break): when the VM stops
//!   for the migration's last step (`STOP` after `active`/`device` while it
//!   ran here, or `pre-switchover`), ask the home agent once to take and
//!   hold the VM's traffic until the destination registers (`Switchover`).
//!   With QEMU's `pause-before-switchover`, let the migration go on
//!   (`Continue`) once the answer is in, or after [`SWITCHOVER_WAIT`]
//!   without one: homeward never holds a migration up. Nothing is
//!   (re)registered while the switchover stands. If the migration fails or
//!   is cancelled and the VM runs here again, re-register (away) or
//!   deregister (at home) at once, so the home agent hands the traffic
//!   back.

use std::time::{Duration, Instant};

/// First retry delay after a failed registration.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay, and the delay after a denial.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait for the answer to a switchover before `Continue` goes out
/// all the same.
pub const SWITCHOVER_WAIT: Duration = Duration::from_secs(1);
/// How long the home agent is asked to hold the VM's traffic at most
/// (the switchover's lifetime), seconds.
pub const DEFAULT_SWITCHOVER_HOLD: u16 = 5;

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
    /// The answer to the switchover numbered `seq` (its own numbering).
    Switchover { seq: u64, outcome: Outcome },
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
    /// Send a switchover request: the home agent should take the VM's
    /// traffic and hold it for at most `lifetime` seconds, until the
    /// destination registers. Answered with [`Input::Switchover`].
    Switchover { seq: u64, lifetime: u16 },
    /// Let the migration paused in `pre-switchover` go on (QMP
    /// `migrate-continue`).
    Continue,
}

/// Where the switchover of the current outgoing migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchoverState {
    /// Sent; waiting for the answer until `until`.
    Waiting { until: Instant },
    /// The home agent holds the VM's traffic.
    Held,
    /// Denied, failed, or no answer in time: it does not.
    Unconfirmed,
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
    /// The switchover's lifetime; 0: no switchovers.
    hold: u16,
    /// An outgoing migration runs (`active`/`device` while running here,
    /// or `pre-switchover`).
    outgoing: bool,
    /// QEMU waits in `pre-switchover` for a `Continue` not yet given.
    paused: bool,
    /// `Continue` was given in this migration.
    continued: bool,
    /// The switchover of this migration, once sent.
    switchover: Option<SwitchoverState>,
    /// Number of the latest switchover; apart from `seq`, so that neither
    /// makes the other's answers stale.
    switchover_seq: u64,
    /// A switchover was sent and the VM has not run here since: the home
    /// agent may hold its traffic (or have given it to the destination);
    /// if the VM runs here again, re-establish at once.
    handed: bool,
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
            hold: DEFAULT_SWITCHOVER_HOLD,
            outgoing: false,
            paused: false,
            continued: false,
            switchover: None,
            switchover_seq: 0,
            handed: false,
        }
    }

    /// The switchover's lifetime (how long the home agent may hold the
    /// VM's traffic), seconds; 0 sends no switchovers (a `pre-switchover`
    /// pause is still continued at once).
    pub fn with_switchover_hold(mut self, hold: u16) -> Lifecycle {
        self.hold = hold;
        self
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
            Input::Connected { running: false } => self.running = false,
            Input::Stopped => {
                // With an outgoing migration under way, this is its last
                // step (or a pause that comes at the same moment: the HA
                // holds for `hold` seconds at most, then lets go).
                let was_running = self.running;
                self.running = false;
                if was_running && self.outgoing {
                    self.send_switchover(now, &mut out);
                }
            }
            Input::Migration { status } => match status.as_str() {
                // The destination reports "active" while it waits for the
                // VM, not running; the source while the VM runs here.
                "active" | "device" if self.running => self.outgoing = true,
                "pre-switchover" => {
                    // Only ever the source, stopped; QEMU waits for
                    // `migrate-continue`.
                    self.outgoing = true;
                    self.paused = !self.continued;
                    self.send_switchover(now, &mut out);
                    self.continue_if_answered(&mut out);
                }
                // The destination also reports "completed", but after its
                // RESUME (QEMU announces completion only once the VM runs),
                // or while paused before libvirt's `cont`: never while it
                // is running here. So "completed" while stopped is the source.
                "completed" if !self.running => {
                    self.migration_over();
                    self.handed = false;
                    self.leave(&mut out);
                }
                // The VM stays here; if a switchover was sent, it is taken
                // back when the VM runs again (`resumed`).
                "failed" | "cancelled" | "completed" => self.migration_over(),
                _ => {}
            },
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
                self.migration_over();
                self.handed = false;
                self.leave(&mut out);
            }
            Input::Registration { seq, outcome } => self.answered(now, seq, outcome),
            Input::Switchover { seq, outcome } => {
                if self.wants_switchover(seq) {
                    self.switchover = Some(match outcome {
                        Outcome::Accepted { lifetime } if lifetime > 0 => SwitchoverState::Held,
                        _ => SwitchoverState::Unconfirmed,
                    });
                    self.continue_if_answered(&mut out);
                }
            }
            Input::Tick => {}
        }
        if let Some(SwitchoverState::Waiting { until }) = self.switchover {
            if now >= until {
                self.switchover = Some(SwitchoverState::Unconfirmed);
                self.continue_if_answered(&mut out);
            }
        }
        // Every input is also a chance to act on what has come due.
        self.due(now, &mut out);
        out
    }

    /// Sends this migration's switchover, once.
    fn send_switchover(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.switchover.is_some() || self.hold == 0 {
            return;
        }
        self.switchover_seq += 1;
        self.switchover = Some(SwitchoverState::Waiting {
            until: now + SWITCHOVER_WAIT,
        });
        self.handed = true;
        out.push(Action::Switchover {
            seq: self.switchover_seq,
            lifetime: self.hold,
        });
    }

    /// QEMU waits in `pre-switchover` and the switchover is answered, given
    /// up on, or not sent at all: let it go on.
    fn continue_if_answered(&mut self, out: &mut Vec<Action>) {
        if !self.paused {
            return;
        }
        if let Some(SwitchoverState::Waiting { .. }) = self.switchover {
            return;
        }
        self.paused = false;
        self.continued = true;
        out.push(Action::Continue);
    }

    /// The outgoing migration ended (or never was): forget its state. A
    /// late switchover answer is stale from here on.
    fn migration_over(&mut self) {
        self.outgoing = false;
        self.paused = false;
        self.continued = false;
        self.switchover = None;
    }

    fn resumed(&mut self, out: &mut Vec<Action>) {
        self.running = true;
        // Running here again after a switchover (the migration failed or
        // was cancelled): the home agent may hold the VM's traffic; take
        // it back now, even past a request in flight (sent before the
        // switchover, it no longer counts).
        let take_back = std::mem::take(&mut self.handed);
        self.migration_over();
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
        if self.goal == Goal::Registered && self.request == Request::InFlight && !take_back {
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
        // While a switchover stands, anything sent from here would take
        // the VM's traffic back from the home agent: wait until the
        // migration is decided.
        if due && self.goal != Goal::Nothing && self.switchover.is_none() {
            out.push(self.send());
        }
    }

    /// When `Tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let request = match self.request {
            _ if self.switchover.is_some() => None,
            Request::Valid { refresh_at } => Some(refresh_at),
            Request::RetryAt(at) => Some(at),
            Request::Idle | Request::InFlight => None,
        };
        let switchover = match self.switchover {
            Some(SwitchoverState::Waiting { until }) => Some(until),
            _ => None,
        };
        request.into_iter().chain(switchover).min()
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
    /// Is an answer to switchover `seq` still wanted?
    pub fn wants_switchover(&self, seq: u64) -> bool {
        seq == self.switchover_seq
            && matches!(self.switchover, Some(SwitchoverState::Waiting { .. }))
    }
    /// The current outgoing migration's switchover, once sent.
    pub fn switchover(&self) -> Option<SwitchoverState> {
        self.switchover
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
    fn sw(seq: u64) -> Action {
        Action::Switchover {
            seq,
            lifetime: DEFAULT_SWITCHOVER_HOLD,
        }
    }
    fn sw_answer(seq: u64, outcome: Outcome) -> Input {
        Input::Switchover { seq, outcome }
    }
    fn held(seq: u64) -> Input {
        sw_answer(seq, Outcome::Accepted { lifetime: 5 })
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
                // Stopped for the last step: the HA is asked to hold.
                (20_600, Stopped, &[sw(1)], "registered"),
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

    #[test]
    fn home_source_with_pause_before_switchover_continues_once_the_ha_holds() {
        let m = run(
            true,
            &[
                (0, Resumed, &[Deregister { seq: 1 }], "deregistering"),
                (5, ok(1, 0), &[], "home"),
                (1_000, migration("setup"), &[], "home"),
                (1_001, migration("active"), &[], "home"),
                // QEMU stops the VM, then pauses in pre-switchover.
                (2_000, Stopped, &[sw(1)], "idle"),
                (2_001, migration("pre-switchover"), &[], "idle"),
                (2_003, held(1), &[Continue], "idle"),
                (2_004, migration("device"), &[], "idle"),
                (2_100, migration("completed"), &[], "idle"),
                (100_000, Tick, &[], "idle"),
            ],
        );
        assert_eq!(m.next_deadline(), None);
        assert!(!m.served());
    }

    #[test]
    fn home_source_without_the_capability_sends_the_switchover_and_no_continue() {
        let m = run(
            true,
            &[
                (0, Resumed, &[Deregister { seq: 1 }], "deregistering"),
                (5, ok(1, 0), &[], "home"),
                (1_001, migration("active"), &[], "home"),
                (2_000, Stopped, &[sw(1)], "idle"),
                (2_003, held(1), &[], "idle"),
                (2_100, migration("completed"), &[], "idle"),
            ],
        );
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn pre_switchover_alone_sends_once_and_an_early_answer_continues_at_once() {
        run(
            true,
            &[
                (0, Resumed, &[Deregister { seq: 1 }], "deregistering"),
                (5, ok(1, 0), &[], "home"),
                (1_001, migration("active"), &[], "home"),
                // Answered before QEMU reports pre-switchover.
                (2_000, Stopped, &[sw(1)], "idle"),
                (2_002, held(1), &[], "idle"),
                (2_003, migration("pre-switchover"), &[Continue], "idle"),
                // A repeated report sends nothing more.
                (2_004, migration("pre-switchover"), &[], "idle"),
            ],
        );
        // No STOP seen (a watcher that connected late): pre-switchover
        // sends it.
        run(
            true,
            &[
                (0, Connected { running: false }, &[], "idle"),
                (10, migration("pre-switchover"), &[sw(1)], "idle"),
                (20, held(1), &[Continue], "idle"),
            ],
        );
    }

    #[test]
    fn foreign_source_asks_the_ha_to_hold_without_touching_its_registration() {
        let m = run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (10, ok(1, 60), &[], "registered"),
                (39_000, migration("active"), &[], "registered"),
                (40_000, Stopped, &[sw(1)], "registered"),
                (40_001, migration("pre-switchover"), &[], "registered"),
                // The refresh (due at 40 010) waits: it would take the
                // traffic back from the home agent.
                (40_010, Tick, &[], "registered"),
                (40_020, held(1), &[Continue], "registered"),
                (40_030, Tick, &[], "registered"),
                (40_500, migration("completed"), &[Unserve], "idle"),
                (41_000, Tick, &[], "idle"),
            ],
        );
        assert_eq!(m.next_deadline(), None);
        // The answer to the registration numbered like the switchover is
        // a registration answer, and this one is stale.
        assert!(!m.wants(1));
    }

    #[test]
    fn switchover_answers_are_apart_from_registration_answers() {
        let m = run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (1, migration("active"), &[], "registering"),
                (2, Stopped, &[sw(1)], "registering"),
                // Accepted switchover 1: not registration 1.
                (3, held(1), &[], "registering"),
                (4, ok(1, 60), &[], "registered"),
            ],
        );
        assert!(!m.wants_switchover(1));
        assert_eq!(m.switchover(), Some(SwitchoverState::Held));
        // And a registration answer does not answer the switchover.
        let t0 = Instant::now();
        let mut m = Lifecycle::new(false, LT);
        m.handle(t0, Resumed);
        m.handle(t0, ok(1, 60));
        m.handle(t0, migration("active"));
        assert_eq!(m.handle(t0, Stopped), [sw(1)]);
        assert_eq!(m.handle(t0, migration("pre-switchover")), []);
        assert_eq!(m.handle(t0, ok(1, 60)), []);
        assert!(m.wants_switchover(1));
        assert_eq!(m.handle(t0, held(1)), [Continue]);
    }

    #[test]
    fn no_answer_in_time_continues_anyway_and_a_late_answer_is_stale() {
        let m = run(
            true,
            &[
                (
                    0,
                    Connected { running: true },
                    &[Deregister { seq: 1 }],
                    "deregistering",
                ),
                (5, ok(1, 0), &[], "home"),
                (1_000, migration("active"), &[], "home"),
                (2_000, Stopped, &[sw(1)], "idle"),
                (2_001, migration("pre-switchover"), &[], "idle"),
                (2_999, Tick, &[], "idle"),
                (3_000, Tick, &[Continue], "idle"),
                (3_100, held(1), &[], "idle"),
                (3_200, Tick, &[], "idle"),
            ],
        );
        assert_eq!(m.switchover(), Some(SwitchoverState::Unconfirmed));
        // A denial or a failure is an answer too: continue at once.
        for outcome in [Outcome::Denied { code: 128 }, Outcome::Failed] {
            run(
                true,
                &[
                    (0, Resumed, &[Deregister { seq: 1 }], "deregistering"),
                    (1_000, migration("active"), &[], "deregistering"),
                    (2_000, Stopped, &[sw(1)], "deregistering"),
                    (2_001, migration("pre-switchover"), &[], "deregistering"),
                    (2_300, sw_answer(1, outcome), &[Continue], "deregistering"),
                ],
            );
        }
    }

    #[test]
    fn the_switchover_deadline_is_a_deadline() {
        let t0 = Instant::now();
        let mut m = Lifecycle::new(false, LT);
        m.handle(t0, Resumed);
        m.handle(t0, ok(1, 60));
        m.handle(t0, migration("active"));
        m.handle(t0, Stopped);
        // The refresh waits; the switchover's wait is what comes next.
        assert_eq!(m.next_deadline(), Some(t0 + SWITCHOVER_WAIT));
        m.handle(t0, held(1));
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn a_failed_or_cancelled_migration_after_a_switchover_takes_the_vm_back() {
        // Away: re-register at once.
        let m = run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (10, ok(1, 60), &[], "registered"),
                (1_000, migration("active"), &[], "registered"),
                (2_000, Stopped, &[sw(1)], "registered"),
                (2_001, migration("pre-switchover"), &[], "registered"),
                (2_005, held(1), &[Continue], "registered"),
                (2_100, migration("failed"), &[], "registered"),
                (2_101, Resumed, &[reg(2)], "refreshing"),
                (2_110, ok(2, 60), &[], "registered"),
            ],
        );
        assert!(m.served());
        // At home, cancelled: deregister (the HA gives the address back).
        run(
            true,
            &[
                (0, Resumed, &[Deregister { seq: 1 }], "deregistering"),
                (5, ok(1, 0), &[], "home"),
                (1_000, migration("active"), &[], "home"),
                (2_000, Stopped, &[sw(1)], "idle"),
                (2_050, migration("cancelled"), &[], "idle"),
                // The answer came after the cancel: stale.
                (2_060, held(1), &[], "idle"),
                (2_070, Resumed, &[Deregister { seq: 2 }], "deregistering"),
            ],
        );
        // Away, with a refresh in flight when the VM stopped (sent before
        // the switchover, it no longer counts): a new one, at once; the
        // next migration gets its own switchover.
        run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (10, ok(1, 60), &[], "registered"),
                (40_010, Tick, &[reg(2)], "refreshing"),
                (40_011, migration("active"), &[], "refreshing"),
                (40_012, Stopped, &[sw(1)], "refreshing"),
                // RESUME before the failed event.
                (40_500, Resumed, &[reg(3)], "refreshing"),
                (40_501, migration("failed"), &[], "refreshing"),
                (40_502, ok(2, 60), &[], "refreshing"),
                (40_503, ok(3, 60), &[], "registered"),
                (50_000, migration("active"), &[], "registered"),
                (50_001, Stopped, &[sw(2)], "registered"),
            ],
        );
        // Running again after a reconnect: the usual registration.
        run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (10, ok(1, 60), &[], "registered"),
                (1_000, migration("active"), &[], "registered"),
                (2_000, Stopped, &[sw(1)], "registered"),
                (2_100, Disconnected, &[Unserve], "idle"),
                (
                    2_200,
                    Connected { running: true },
                    &[Serve, reg(3)],
                    "registering",
                ),
            ],
        );
    }

    #[test]
    fn a_plain_pause_sends_no_switchover() {
        let m = run(
            false,
            &[
                (0, Resumed, &[Serve, reg(1)], "registering"),
                (10, ok(1, 60), &[], "registered"),
                (5_000, Stopped, &[], "registered"),
                (6_000, Resumed, &[reg(2)], "refreshing"),
            ],
        );
        assert_eq!(m.switchover(), None);
        // The destination: "active" while not running, then RESUME.
        run(
            false,
            &[
                (0, Connected { running: false }, &[], "idle"),
                (5, migration("active"), &[], "idle"),
                (600, Resumed, &[Serve, reg(1)], "registering"),
                (600, migration("completed"), &[], "registering"),
                (700, Stopped, &[], "registering"),
            ],
        );
        // A migration that already failed: a later pause is a pause.
        run(
            true,
            &[
                (0, Resumed, &[Deregister { seq: 1 }], "deregistering"),
                (1, ok(1, 0), &[], "home"),
                (5, migration("active"), &[], "home"),
                (6, migration("failed"), &[], "home"),
                (700, Stopped, &[], "idle"),
            ],
        );
    }

    #[test]
    fn with_no_hold_pre_switchover_is_continued_at_once() {
        let t0 = Instant::now();
        let mut m = Lifecycle::new(true, LT).with_switchover_hold(0);
        m.handle(t0, Resumed);
        m.handle(t0, migration("active"));
        assert_eq!(m.handle(t0, Stopped), []);
        assert_eq!(m.handle(t0, migration("pre-switchover")), [Continue]);
        assert_eq!(m.handle(t0, migration("pre-switchover")), []);
    }
}
