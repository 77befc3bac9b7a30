//! `homeward run`: set up the data path, then serve the control socket
//! until SIGINT/SIGTERM, then tear down and account for every frame.

mod announce;
mod bindings;
mod denials;
mod durable;
mod registration;
mod stats;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use dataplane::loader::Steering;
use dataplane::lookup::Tables;
use dataplane::neigh;
use dataplane::pipeline::PipelineConfig;
use dataplane::table::binding_table;
use dataplane::workers::{Workers, WorkersConfig};
use dataplane::xsk::{Command, FrameAccounting};

use crate::common::claims::Claims;
use crate::common::control_socket::{self as server, ControlSocket};
use crate::common::{is_root, link};
use crate::config::RunConfig;
use crate::error::Error;
use crate::proto::{parse_mac, Reply, Request};
use crate::store::{Change, SqliteStore, Store};
use bindings::{Bindings, Now};

/// Everything a running home agent holds.
struct Daemon {
    config: RunConfig,
    bindings: Bindings,
    workers: Workers,
    announce: Sender<Command>,
    started: Instant,
    /// RFC 5944 registration, if a key file is configured.
    registration: Option<registration::Registration>,
    /// Where every binding change is made durable before it is acknowledged.
    store: Box<dyn Store>,
}

/// Runs the home agent until a signal; returns the frame accounting of
/// every queue at teardown.
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
    let socket = ControlSocket::bind(&config.socket)?;
    // The store before the data path: a damaged one stops us before
    // anything is attached.
    let mut store = SqliteStore::open(&config.state_dir)?;
    let snapshot = store.load(Now::read().unix_ms)?;
    tracing::info!(
        store = %store.path().display(),
        bindings = snapshot.bindings.len(),
        expired = snapshot.expired,
        replay = snapshot.replay.len(),
        "state store loaded"
    );
    let claims = claims(config.address, lan.index, wan.as_ref().map(|w| w.index))?;
    let registration = match &config.registration {
        Some(r) => Some(registration::Registration::start(
            r,
            config.address,
            lan.index,
            || neigh::ipv4_prefixes(lan.index).map_err(|e| e.to_string()),
            snapshot.replay.clone(),
        )?),
        None => {
            tracing::info!(
                "registration is off (no key file: --registration-keys or [registration] keys)"
            );
            None
        }
    };

    // Twice the bindings in slots: open addressing stays fast and never
    // reports full before the XDP map does.
    let (table, reader) = binding_table(config.max_bindings as usize * 2);
    let wan_index = wan.as_ref().map_or(lan.index, |w| w.index);
    let mut ifindexes = vec![lan.index];
    if wan_index != lan.index {
        ifindexes.push(wan_index);
    }
    let (neigh, neigh_reader) =
        neigh::spawn(ifindexes, lan.index).map_err(|e| Error::Dataplane(e.to_string()))?;
    let pin = crate::common::bpf_pin_dir(&config.bpffs, "ha", &config.state_dir);
    let steering = Steering::attach(
        lan.index,
        wan.as_ref().map(|w| w.index),
        config.max_bindings,
        Some(&pin),
    )
    .map_err(|e| Error::Dataplane(e.to_string()))?;
    tracing::info!(mode = %steering.mode(), lan = %config.lan, wan = ?config.wan, "XDP steering attached");

    let mut pipeline = PipelineConfig::new(
        config.address,
        lan.mac,
        wan.as_ref().map_or(lan.mac, |w| w.mac),
    );
    pipeline.outer_ttl = config.ttl;
    pipeline.tunnel_mtu = config.tunnel_mtu;
    pipeline.icmp_rate_per_sec = config.icmp_rate;

    let (announce_tx, announce_rx) = channel::unbounded();
    let workers = Workers::start(
        WorkersConfig {
            lan: &config.lan,
            wan: config.wan.as_deref(),
            queues: config.queues,
            slots: table.capacity(),
            pipeline,
            cpus: &config.worker_cpus,
            name: "homeward-q",
        },
        &steering,
        || Tables::new(reader.clone(), neigh_reader.clone(), lan.index, wan_index),
        // Announcements go out once, through queue 0.
        |queue| {
            if queue == 0 {
                announce_rx.clone()
            } else {
                channel::never()
            }
        },
    )
    .map_err(|e| Error::Dataplane(e.to_string()))?;

    let mut bindings = Bindings::new(
        table,
        steering,
        neigh,
        workers.shared().to_vec(),
        config.address,
        lan.mac,
        config.max_bindings as usize,
    );
    bindings.set_claims(claims);
    restore(&mut bindings, &snapshot.bindings);
    // Ready once the stored bindings are steered again.
    tracing::info!(
        queues = config.queues,
        address = %config.address,
        socket = %config.socket.display(),
        "homeward is running"
    );
    let mut daemon = Daemon {
        bindings,
        config,
        workers,
        announce: announce_tx,
        started: Instant::now(),
        registration,
        store: Box::new(store),
    };
    daemon.serve(&socket, &stop_rx);

    // Teardown: stop steering new traffic, stop the workers, count frames.
    daemon.bindings.clear();
    let accounting = daemon.workers.stop();
    drop(daemon);
    drop(socket);
    Ok(accounting)
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
fn restore(bindings: &mut Bindings, stored: &[crate::store::StoredBinding]) {
    let now = Now::read();
    let mut restored = 0;
    for b in stored {
        match bindings.restore(now, b) {
            Ok(_) => restored += 1,
            Err(e) => tracing::warn!(vm = %b.vm, "stored binding not restored: {e}"),
        }
    }
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

    fn serve(&mut self, socket: &ControlSocket, stop: &Receiver<()>) {
        let datagrams = self
            .registration
            .as_ref()
            .map_or_else(channel::never, |r| r.datagrams().clone());
        loop {
            let now = Instant::now();
            let wait = self
                .bindings
                .next_deadline()
                .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now))
                .min(Duration::from_secs(1));
            channel::select! {
                recv(socket.connections()) -> conn => {
                    if let Ok(conn) = conn {
                        server::handle(conn, |req| self.handle(req));
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
                recv(stop) -> _ => {
                    tracing::info!("stopping");
                    if let Some(r) = self.registration.as_mut() {
                        r.summarize(Instant::now(), true);
                    }
                    return;
                }
                default(wait) => {}
            }
            let now = Instant::now();
            let expired = self.bindings.expire(now);
            if !expired.is_empty() {
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
            let announce = &self.announce;
            self.bindings.run_announcements(now, |addr, mac| {
                let _ = announce.send(Command::Announce { addr, mac });
            });
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
            Request::List {} => {
                serde_json::to_value(self.bindings.list(now)).map_err(|e| e.to_string())
            }
            Request::Stats {} => Ok(stats::collect(self, now)),
        };
        // Announcements for a new binding start now, not at the next tick.
        let announce = &self.announce;
        self.bindings.run_announcements(now, |addr, mac| {
            let _ = announce.send(Command::Announce { addr, mac });
        });
        match result {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::err(e),
        }
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
