//! `homeward run`: set up the data path, then serve the control socket
//! until SIGINT/SIGTERM, then tear down and account for every frame.

mod announce;
mod bindings;
mod denials;
mod durable;
mod failover;
mod listing;
mod registration;
mod replica;
mod stats;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver};
use dataplane::forwarder::{Forwarder, Plan};
use dataplane::loader::Steering;
use dataplane::lookup::Tables;
use dataplane::neigh;
use dataplane::pipeline::PipelineConfig;
use dataplane::table::binding_table_for;
use dataplane::xsk::{FrameAccounting, Parked, QueueState};

use crate::common::capture;
use crate::common::claims::Claims;
use crate::common::control_socket::{self as server, ControlSocket};
use crate::common::handover::{self, Answer, OfferError, Successor};
use crate::common::metrics::Metrics;
use crate::common::{is_root, link};
use crate::config::{RunConfig, StoreConfig};
use crate::error::Error;
use crate::proto::{parse_mac, Reply, Request};
use crate::store::{Change, EtcdStore, Lent, SqliteStore, Store, StoreError};
use bindings::{Bindings, Now};

/// Everything a running home agent holds.
struct Daemon {
    config: RunConfig,
    /// The bindings and, below them, the data path.
    bindings: Bindings,
    started: Instant,
    /// RFC 5944 registration, if a key file is configured.
    registration: Option<registration::Registration>,
    /// Where every binding change is made durable before it is acknowledged.
    store: Box<dyn Store>,
    /// The metrics endpoint and histograms.
    metrics: Metrics,
    /// With a replicated store (etcd): whether it is reachable, what came
    /// from other gateways.
    replica: Option<replica::ReplicaState>,
    /// One of an active/standby pair: which one keepalived made this.
    failover: Option<failover::Failover>,
    /// `list` replies under way.
    listings: listing::Listings,
}

/// Opens the configured store.
fn open_store(config: &RunConfig) -> Result<Box<dyn Store>, StoreError> {
    Ok(match &config.store {
        StoreConfig::Sqlite => Box::new(SqliteStore::open(&config.state_dir)?),
        StoreConfig::Etcd(etcd) => Box::new(EtcdStore::connect(etcd)?),
    })
}

/// How `serve` ended.
enum Ending {
    /// SIGINT/SIGTERM: tear down.
    Stop,
    /// A `--takeover` successor runs the data path now: leave it attached.
    HandedOver,
}

/// Runs the home agent until a signal (or until a `--takeover` successor
/// has taken its data path); returns the frame accounting of every queue
/// at teardown (none when handed over).
pub fn run(config: RunConfig) -> Result<Vec<FrameAccounting>, Error> {
    if !is_root() {
        return Err(Error::NotRoot);
    }
    let stop_rx = crate::common::stop_on_signal().map_err(Error::Daemon)?;
    let lan = link(&config.lan)?;
    let wan = match &config.wan {
        Some(w) => Some(link(w)?),
        None => None,
    };
    let wan_index = wan.as_ref().map_or(lan.index, |w| w.index);
    // First what takes no lock and touches nothing live: with --takeover
    // the running daemon is stopped only once this is done.
    let claims = claims(config.address, lan.index, wan.as_ref().map(|w| w.index))?;
    // A third more slots than bindings: open addressing stays fast and
    // never reports full before the XDP map does (see `slots_for`).
    let (table, reader) = binding_table_for(config.max_bindings as usize);
    let mut ifindexes = vec![lan.index];
    if wan_index != lan.index {
        ifindexes.push(wan_index);
    }
    let (neigh, neigh_reader) =
        neigh::spawn(ifindexes, lan.index).map_err(|e| Error::Dataplane(e.to_string()))?;
    let steering = Steering::load(
        lan.index,
        wan.as_ref().map(|w| w.index),
        config.max_bindings,
    )
    .map_err(|e| Error::Dataplane(e.to_string()))?;
    // A pair answers ARP with its shared virtual MAC (keepalived's use_vmac).
    let home_mac = config.failover.and_then(|f| f.lan_mac).unwrap_or(lan.mac);
    let mut pipeline = PipelineConfig::new(
        config.address,
        home_mac,
        wan.as_ref().map_or(lan.mac, |w| w.mac),
    );
    pipeline.outer_ttl = config.ttl;
    pipeline.tunnel_mtu = config.tunnel_mtu;
    pipeline.mss_clamp = config.mss_clamp;
    pipeline.switchover_per_vm = config.switchover_buffer_per_vm;
    pipeline.switchover_total = config.switchover_buffer_total;
    pipeline.icmp_rate_per_sec = config.icmp_rate;
    let plan = Plan {
        lan: config.lan.clone(),
        wan: config.wan.clone(),
        queues: config.queues,
        pipeline,
        cpus: config.worker_cpus.clone(),
        name: "homeward-q",
        busy_poll: config.busy_poll,
        tables: {
            let lan_index = lan.index;
            Box::new(move || {
                Tables::new(reader.clone(), neigh_reader.clone(), lan_index, wan_index)
            })
        },
    };

    // The endpoint first on a fresh start (a port in use stops us before
    // anything is attached); a takeover successor binds it once the
    // predecessor has let it go.
    let mut metrics = Metrics::new(config.metrics);
    if !config.takeover {
        metrics.start().map_err(Error::Invalid)?;
    }
    let (mut successor, bound) =
        handover::successor_or_bind(&config.socket, ROLE, config.takeover)?;
    let assembled = assemble(
        &config,
        Parts {
            forwarder: Forwarder::new(table, steering, neigh, config.max_bindings as usize),
            claims,
            lan_index: lan.index,
            lan_mac: home_mac,
        },
        plan,
        successor.as_mut(),
        metrics,
    );
    let mut daemon = match assembled {
        Ok(d) => d,
        Err((e, parked)) => {
            // Workers that ran were parked: their free frames go back to a
            // predecessor, or nowhere (we exit).
            if let Some(s) = successor {
                let queues = parked.unwrap_or_else(|| s.offered().to_vec());
                s.fail(&e.to_string(), queues);
            }
            return Err(e);
        }
    };
    let mut socket = match (bound, successor) {
        (Some(s), _) => s,
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
            socket
        }
        (None, None) => return Err(Error::Daemon("no control socket".into())),
    };
    if daemon.config.takeover {
        daemon.metrics.start_or_log();
    }
    // Ready once the stored bindings are steered again.
    tracing::info!(
        queues = daemon.config.queues,
        address = %daemon.config.address,
        socket = %daemon.config.socket.display(),
        takeover = daemon.config.takeover,
        version = env!("HOMEWARD_VERSION"),
        "homeward is running"
    );
    crate::common::notify::ready();
    match daemon.serve(&mut socket, &stop_rx) {
        Ending::HandedOver => {
            socket.handed_over();
            daemon.bindings.forwarder_mut().lend_to_successor();
            tracing::info!("handed over to the --takeover successor; exiting");
            Ok(Vec::new())
        }
        Ending::Stop => {
            // Teardown: stop steering new traffic, stop the workers, count frames.
            daemon.bindings.clear();
            let accounting = daemon.bindings.forwarder_mut().stop();
            drop(daemon);
            drop(socket);
            Ok(accounting)
        }
    }
}

/// The role's name in a takeover offer.
const ROLE: &str = "home-agent";

/// The data-path parts made before any lock is taken.
struct Parts {
    forwarder: Forwarder,
    claims: Claims,
    lan_index: u32,
    lan_mac: [u8; 6],
}

/// Why assembly failed, and the queues of workers that had started (parked:
/// their free frames go back to a predecessor).
type AssemblyError = (Error, Option<Vec<QueueState>>);

/// Store, registration, bindings, workers, then the XDP program goes live:
/// the maps are filled and the sockets registered before it sees a frame.
/// With a `successor` (--takeover) the sockets are the predecessor's.
fn assemble(
    config: &RunConfig,
    parts: Parts,
    plan: Plan,
    mut successor: Option<&mut Successor>,
    metrics: Metrics,
) -> Result<Daemon, AssemblyError> {
    let Parts {
        forwarder,
        claims,
        lan_index,
        lan_mac,
    } = parts;
    // The store before the data path: a damaged one stops us before
    // anything is attached.
    let mut store = open_store(config).map_err(|e| (e.into(), None))?;
    let snapshot = store
        .load(Now::read().unix_ms)
        .map_err(|e| (e.into(), None))?;
    tracing::info!(
        store = %store.describe(),
        bindings = snapshot.bindings.len(),
        expired = snapshot.expired,
        replay = snapshot.replay.len(),
        "state store loaded"
    );
    let registration = match &config.registration {
        Some(r) => Some(
            registration::Registration::start(
                r,
                config.address,
                config.failover.is_some(),
                lan_index,
                || neigh::ipv4_prefixes(lan_index).map_err(|e| e.to_string()),
                snapshot.replay.clone(),
                successor.as_mut().and_then(|s| s.registration.take()),
            )
            .map_err(|e| (e, None))?,
        ),
        None => {
            tracing::info!(
                "registration is off (no key file: --registration-keys or [registration] keys)"
            );
            None
        }
    };

    // The table, maps and next hops are ready before a worker runs: with
    // --takeover the rings already hold frames for the bound VMs.
    let mut bindings = Bindings::new(forwarder, config.address, lan_mac);
    bindings.set_announce_rate(config.announce_rate);
    bindings.set_claims(claims);
    // A pair member starts as its role file says (standby without one:
    // after a reboot or a crash keepalived decides again), before the
    // restored bindings could be announced or the program answer ARP.
    let failover = config.failover.map(|_| {
        let state = crate::common::failover::read_role(&config.socket);
        let f = failover::Failover::new(state, Instant::now());
        tracing::info!(
            role_file = %crate::common::failover::role_file(&config.socket).display(),
            state = state.map_or("none", |s| s.as_str()),
            active = f.active(),
            "failover: one of an active/standby pair"
        );
        f
    });
    if let Some(f) = &failover {
        bindings.set_active(Instant::now(), f.active());
        if let Err(e) = bindings
            .forwarder_mut()
            .steering_mut()
            .set_home_agent_standby(!f.active())
        {
            return Err((Error::Dataplane(e.to_string()), None));
        }
    }
    restore(&mut bindings, &snapshot.bindings);
    let handed = successor.as_mut().map(|s| std::mem::take(&mut s.queues));
    let forwarder = bindings.forwarder_mut();
    if handed.is_some() {
        // The kernel knows the next hops the predecessor used.
        forwarder.await_next_hops(Duration::from_millis(200));
    }
    let dataplane = |e: dataplane::forwarder::ForwarderError| Error::Dataplane(e.to_string());
    forwarder
        .start_workers(plan, handed)
        .map_err(|e| (dataplane(e), None))?;
    let pin = crate::common::bpf_pin_dir(&config.bpffs, "ha", &config.state_dir);
    if let Err(e) = forwarder.go_live(&pin) {
        return Err((dataplane(e), Some(forwarder.park_states())));
    }
    tracing::info!(mode = %forwarder.steering().mode(), lan = %config.lan, wan = ?config.wan, "XDP steering attached");
    Ok(Daemon {
        bindings,
        config: config.clone(),
        started: Instant::now(),
        registration,
        store: Box::new(durable::Timed {
            inner: store,
            histogram: metrics.histograms.store_commit.clone(),
        }),
        metrics,
        replica: matches!(config.store, StoreConfig::Etcd(_))
            .then(|| replica::ReplicaState::new(Instant::now())),
        failover,
        listings: listing::Listings::default(),
    })
}

/// The home agent's own addresses and home subnets, which nobody may bind.
fn claims(address: Ipv4Addr, lan: u32, wan: Option<u32>) -> Result<Claims, Error> {
    let mut own = vec![address];
    let mut prefixes = Vec::new();
    for (i, ifindex) in std::iter::once(lan).chain(wan).enumerate() {
        let list = neigh::ipv4_prefixes(ifindex).map_err(|e| {
            Error::Dataplane(format!(
                "cannot read the addresses of ifindex {ifindex}: {e}"
            ))
        })?;
        for (a, len) in list {
            own.push(a);
            // The LAN's prefixes are home subnets.
            if i == 0 {
                prefixes.push((a, len));
            }
        }
    }
    Ok(Claims::new(own, prefixes))
}

/// Binds what the store held; what cannot be bound any more is logged.
/// In bulk, as a bind file: one summary line, not one per VM, and the
/// announcements paced.
fn restore(bindings: &mut Bindings, stored: &[crate::store::StoredBinding]) {
    let now = Now::read();
    let mut restored = 0;
    bindings.set_bulk(true);
    for b in stored {
        match bindings.restore(now, b) {
            Ok(_) => restored += 1,
            Err(e) => tracing::warn!(vm = %b.vm, "stored binding not restored: {e}"),
        }
    }
    bindings.set_bulk(false);
    if restored > 0 {
        tracing::info!(restored, "bindings restored from the state store");
    }
}

impl Daemon {
    /// `homeward unbind`: removed, made durable, acknowledged.
    fn unbind(&mut self, now: Now, vm: Ipv4Addr) -> Result<serde_json::Value, String> {
        durable::unbind(&mut self.bindings, &mut *self.store, now, vm)?;
        Ok(serde_json::json!({ "vm": vm }))
    }

    fn serve(&mut self, socket: &mut ControlSocket, stop: &Receiver<()>) -> Ending {
        let datagrams = self
            .registration
            .as_ref()
            .map_or_else(channel::never, |r| r.datagrams().clone());
        loop {
            // Anew each turn: a failed --takeover reopens the store.
            let replication = self.store.replication().unwrap_or_else(channel::never);
            let now = Instant::now();
            self.listings.advance(&self.bindings, now);
            let room = self.listings.room().clone();
            let wait = if self.listings.ready() {
                Duration::ZERO
            } else {
                self.bindings
                    .next_deadline()
                    .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now))
                    .min(Duration::from_secs(1))
            };
            channel::select! {
                recv(socket.connections()) -> conn => {
                    if let Ok(conn) = conn {
                        match server::read_request(&conn) {
                            Ok(Request::Takeover {}) => match self.hand_over(&conn, socket) {
                                Ok(true) => return Ending::HandedOver,
                                Ok(false) => {}
                                Err(e) => {
                                    // Neither we nor, it seems, the successor
                                    // hold the data path: exit as after a
                                    // crash; a restart recovers it.
                                    tracing::error!("--takeover failed and the data path cannot be taken back: {e}");
                                    return Ending::HandedOver;
                                }
                            },
                            Ok(Request::Capture { vm, count }) => {
                                capture::serve(conn, self.bindings.forwarder(), vm, count)
                            }
                            Ok(Request::BindMany { bytes }) => {
                                let reply = self.bind_many(&conn, bytes);
                                server::send_reply(&conn, &reply)
                            }
                            Ok(Request::List {}) => {
                                // Listed a part a turn, written by a thread
                                // (at a million bindings, 180 MB of JSON).
                                self.listings.start(conn);
                            }
                            Ok(req) => server::send_reply(&conn, &self.handle(req)),
                            Err(reply) => server::send_reply(&conn, &reply),
                        }
                    }
                }
                recv(datagrams) -> d => {
                    if let (Ok(d), Some(r)) = (d, self.registration.as_mut()) {
                        // Group commit: what queued up meanwhile shares
                        // this burst's store commit.
                        let mut burst = vec![d];
                        while burst.len() < registration::BURST {
                            match datagrams.try_recv() {
                                Ok(d) => burst.push(d),
                                Err(_) => break,
                            }
                        }
                        r.handle_burst(burst, &mut self.bindings, &mut *self.store, Now::read());
                    }
                }
                recv(replication) -> msg => {
                    if let (Ok(msg), Some(state)) = (msg, self.replica.as_mut()) {
                        let sink: &mut dyn replica::ReplaySink = match self.registration.as_mut() {
                            Some(r) => r,
                            None => &mut (),
                        };
                        replica::apply(msg, &mut self.bindings, &mut *self.store, sink, state, Now::read());
                    }
                }
                recv(room) -> _ => {}
                recv(self.metrics.scrapes()) -> reply => {
                    if let Ok(reply) = reply {
                        let _ = reply.send(stats::exposition(self, Instant::now()));
                    }
                }
                recv(stop) -> _ => {
                    tracing::info!("stopping");
                    if let Some(r) = self.registration.as_mut() {
                        r.summarize(Instant::now(), true);
                    }
                    return Ending::Stop;
                }
                default(wait) => {}
            }
            let now = Instant::now();
            let expired = self.bindings.expire(now);
            // A store that expires bindings itself (etcd's leases) is not
            // told: a delete could race a refresh made at another gateway.
            if !expired.is_empty() && !self.store.expires_itself() {
                let deletes: Vec<Change> = expired.into_iter().map(Change::Delete).collect();
                // Not acknowledged to anyone; a binding left in the store
                // is dropped as expired at the next start anyway.
                if let Err(e) = self.store.commit(&deletes) {
                    tracing::warn!("expired bindings not removed from the store: {e}");
                }
            }
            if let Some(r) = self.registration.as_mut() {
                r.summarize(now, false);
            }
            for (_, d) in self.bindings.first_packets(now) {
                self.metrics
                    .histograms
                    .binding_change_to_first_packet
                    .observe(d.as_secs_f64());
            }
            self.bindings.run_announcements(now);
        }
    }

    fn handle(&mut self, req: Request) -> Reply {
        let clock = Now::read();
        let now = clock.mono;
        let result = match req {
            Request::Bind {
                vm,
                care_of,
                lifetime,
                vm_mac,
            } => self.bind(clock, vm, care_of, lifetime, vm_mac.as_deref()),
            Request::Unbind { vm } => self.unbind(clock, vm),
            Request::List {} => Err("list is answered by the serve loop".into()),
            Request::Stats {} => {
                serde_json::to_value(stats::collect(self, now, stats::STATS_BINDINGS))
                    .map_err(|e| e.to_string())
            }
            Request::Takeover {} => Err("takeover is asked by `homeward run --takeover`".into()),
            Request::Role { state } => self.set_role(&state),
            Request::Health {} => self.health(),
            Request::Capture { .. } => {
                Err("capture is asked by `homeward capture` and answered by the serve loop".into())
            }
            Request::BindMany { .. } => Err(
                "bind_many is answered by the serve loop (it reads a file after the line)".into(),
            ),
        };
        // Announcements for a new binding start now, not at the next tick;
        // `now` is read again, since the store's commit took some time.
        self.bindings.run_announcements(Instant::now());
        match result {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::err(e),
        }
    }

    /// `homeward bind --file`: reads the `bytes` of the file that follow
    /// the request line, binds every line (see [`durable::bind_many`]) and
    /// answers once.
    fn bind_many(&mut self, conn: &std::os::unix::net::UnixStream, bytes: u64) -> Reply {
        use std::io::Read;
        if bytes > durable::MAX_BIND_FILE {
            return Reply::err(format!(
                "bind file of {bytes} bytes: at most {} are read",
                durable::MAX_BIND_FILE
            ));
        }
        // The whole file comes at once from the CLI: a stalled client
        // holds the control loop for at most this long per read.
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut text = Vec::with_capacity(bytes as usize);
        if let Err(e) = conn.take(bytes).read_to_end(&mut text) {
            return Reply::err(format!("cannot read the bind file: {e}"));
        }
        if text.len() as u64 != bytes {
            return Reply::err(format!(
                "bind file cut short: {} of {bytes} bytes",
                text.len()
            ));
        }
        let Ok(text) = String::from_utf8(text) else {
            return Reply::err("the bind file is not UTF-8 text");
        };
        let lines = match durable::parse_bind_file(&text) {
            Ok(l) => l,
            Err(e) => return Reply::err(e),
        };
        let clock = Now::read();
        let started = Instant::now();
        let result = durable::bind_many(&mut self.bindings, &mut *self.store, clock, &lines);
        self.bindings.run_announcements(Instant::now());
        match result {
            Ok(done) => {
                tracing::info!(
                    created = done.created,
                    updated = done.updated,
                    ms = started.elapsed().as_millis() as u64,
                    "bind file applied and committed"
                );
                Reply::ok(serde_json::json!({
                    "created": done.created,
                    "updated": done.updated,
                    "seconds": started.elapsed().as_secs_f64(),
                }))
            }
            Err(e) => Reply::err(e),
        }
    }

    /// `--takeover`, predecessor side: park everything, offer it on `conn`,
    /// and either exit (`Ok(true)`: the successor runs it) or take it back
    /// (`Ok(false)`: the successor failed and handed it back). `Err`: the
    /// successor went silent, so who holds the frames is unknown.
    fn hand_over(
        &mut self,
        conn: &std::os::unix::net::UnixStream,
        socket: &mut ControlSocket,
    ) -> Result<bool, String> {
        let asked = Instant::now();
        tracing::info!("--takeover: a successor asks for the data path");
        // Registrations already read are answered (and committed) here.
        let registration_fd = match self.registration.as_mut() {
            Some(r) => {
                let fd = r.park();
                loop {
                    let burst: Vec<_> =
                        r.datagrams().try_iter().take(registration::BURST).collect();
                    if burst.is_empty() {
                        break;
                    }
                    r.handle_burst(burst, &mut self.bindings, &mut *self.store, Now::read());
                }
                r.summarize(Instant::now(), true);
                Some(fd)
            }
            None => None,
        };
        let listener = socket.park();
        // The successor binds the metrics port next.
        self.metrics.stop();
        let forwarder = self.bindings.forwarder_mut();
        let parked = forwarder.park();
        forwarder.lend_to_successor();
        let stopped = Instant::now();
        let path = self.config.state_dir.clone();
        drop(std::mem::replace(&mut self.store, Box::new(Lent { path })));
        let answer = handover::offer(conn, ROLE, listener, registration_fd, &parked, Vec::new());
        match answer {
            Ok(Answer::Accepted) => {
                tracing::info!(
                    workers_parked_ms = stopped.duration_since(asked).as_millis() as u64,
                    handed_over_ms = stopped.elapsed().as_millis() as u64,
                    "--takeover: the successor runs the data path"
                );
                Ok(true)
            }
            Ok(Answer::Failed { error, queues }) => {
                tracing::warn!("--takeover: the successor failed ({error}); carrying on");
                self.take_back(socket, parked, &queues)
                    .map(|()| false)
                    .map_err(|e| format!("taking the data path back: {e}"))
            }
            Err(OfferError::NotSent(e)) => {
                tracing::warn!("--takeover: could not offer the data path ({e}); carrying on");
                let own: Vec<QueueState> =
                    parked.iter().map(|p| p.sockets.handover_state()).collect();
                self.take_back(socket, parked, &own)
                    .map(|()| false)
                    .map_err(|e| format!("taking the data path back: {e}"))
            }
            Err(OfferError::NoAnswer(e)) => Err(format!("no answer from the successor: {e}")),
        }
    }

    /// After a failed takeover: the sockets again (adopted afresh, as the
    /// successor may have moved their rings on), with the free frames it
    /// handed back; the store, the pin directory, the threads.
    fn take_back(
        &mut self,
        socket: &mut ControlSocket,
        parked: Vec<Parked>,
        returned: &[QueueState],
    ) -> Result<(), String> {
        self.bindings
            .forwarder_mut()
            .take_back(parked, returned)
            .map_err(|e| e.to_string())?;
        let mut store = open_store(&self.config).map_err(|e| e.to_string())?;
        if store.replication().is_some() {
            // Starts the watch; what changed meanwhile is caught up with.
            let snapshot = store.load(Now::read().unix_ms).map_err(|e| e.to_string())?;
            if let Some(r) = self.replica.as_mut() {
                let sink: &mut dyn replica::ReplaySink = match self.registration.as_mut() {
                    Some(r) => r,
                    None => &mut (),
                };
                replica::adopt(snapshot, &mut self.bindings, sink, r, Now::read());
            }
        }
        self.store = Box::new(durable::Timed {
            inner: store,
            histogram: self.metrics.histograms.store_commit.clone(),
        });
        socket.resume().map_err(|e| e.to_string())?;
        if let Some(r) = self.registration.as_mut() {
            r.resume().map_err(|e| e.to_string())?;
        }
        self.metrics.start_or_log();
        tracing::info!("--takeover: data path taken back");
        Ok(())
    }

    /// `homeward role`: keepalived made this gateway the active one of the
    /// pair (it answers ARP for the bound VMs and announces them all at
    /// once) or the standby (it stops answering; it still forwards).
    fn set_role(&mut self, word: &str) -> Result<serde_json::Value, String> {
        use crate::common::failover::VrrpState;
        let state = VrrpState::parse(word).ok_or_else(|| {
            format!("unknown state {word:?}: expected master, backup, fault or stop")
        })?;
        let Some(failover) = self.failover.as_mut() else {
            return Err("this gateway is not one of a pair: set [failover] enabled = true in its config (and run keepalived)".into());
        };
        let now = Instant::now();
        let active = state.active();
        if failover.active() != active {
            // The program first (and nothing changed if it cannot): an
            // active gateway answers the ARP its own announcements may
            // prompt; a standby stops before it goes quiet.
            self.bindings
                .forwarder_mut()
                .steering_mut()
                .set_home_agent_standby(!active)
                .map_err(|e| format!("cannot switch the XDP program's role: {e}"))?;
        }
        let change = failover.report(state, now);
        let mut announced = 0;
        if change.flipped {
            announced = self.bindings.set_active(now, active);
            self.bindings.run_announcements(now);
            tracing::info!(
                state = state.as_str(),
                previous = change.previous.as_str(),
                announced,
                "failover: this gateway is now {}",
                if active { "active" } else { "on standby" }
            );
        } else {
            tracing::info!(state = state.as_str(), active, "failover: state reported");
        }
        Ok(serde_json::json!({
            "state": state.as_str(),
            "previous": change.previous.as_str(),
            "active": active,
            "announced": announced,
        }))
    }

    /// `homeward health` (keepalived's track script): every worker turns
    /// its loop; an idle one turns every 10 ms.
    fn health(&self) -> Result<serde_json::Value, String> {
        let forwarder = self.bindings.forwarder();
        let stuck = forwarder.stuck_queues(Duration::from_millis(200));
        if !stuck.is_empty() {
            return Err(format!(
                "the workers of queue(s) {stuck:?} have not turned their loop for 200 ms: stuck or gone; restart homeward"
            ));
        }
        Ok(serde_json::json!({
            "healthy": true,
            "queues": forwarder.worker_turns().len(),
            "active": self.failover.as_ref().is_none_or(|f| f.active()),
        }))
    }

    /// `homeward bind`: applied, then made durable, then acknowledged; if
    /// the store fails, the binding is put back as it was.
    fn bind(
        &mut self,
        now: Now,
        vm: Ipv4Addr,
        care_of: Ipv4Addr,
        lifetime: Option<u32>,
        vm_mac: Option<&str>,
    ) -> Result<serde_json::Value, String> {
        let mac = match vm_mac {
            Some(s) => Some(parse_mac(s).ok_or_else(|| format!("bad MAC address {s:?}"))?),
            None => None,
        };
        let lifetime = lifetime.map(|s| Duration::from_secs(s.into()));
        let outcome = durable::bind(
            &mut self.bindings,
            &mut *self.store,
            now,
            vm,
            care_of,
            lifetime,
            mac,
        )?;
        Ok(serde_json::json!({
            "vm": vm,
            "care_of": care_of,
            "created": outcome == bindings::BindOutcome::Created,
        }))
    }
}
