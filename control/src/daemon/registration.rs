//! RFC 5944 registration in the daemon: a thread reads datagrams from UDP
//! port 434 on the home agent's address and hands them to the control
//! loop, which runs the pure handler on a burst of them with the binding
//! manager as its sink (so bindings keep a single writer), makes the
//! burst's binding and replay changes durable in one store commit (group
//! commit), and only then sends the replies.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel::{self, Receiver, Sender};
use dataplane::forwarder::{NextHops, SteeringMaps};

use super::bindings::{BindError, Bindings, Now};
use super::denials::{DenialSummary, ReplyLimiter};
use crate::config::RegistrationConfig;
use crate::error::Error;
use crate::registration::home_agent::{
    screen, Action, BindingSink, Denial, HomeAgent, HomeAgentConfig,
};
use crate::registration::keys::{KeyFile, Prefix};
use crate::registration::replay::ReplayGuard;
use crate::registration::wire;
use crate::store::{Change, Origin, Store, StoredBinding};

/// Datagrams waiting for the control loop; more are dropped (and counted)
/// rather than queued without bound.
const QUEUE: usize = 1024;
/// Replies to unauthenticated requests per second, per source and overall.
const DENIAL_REPLIES_PER_SOURCE: u32 = 10;
const DENIAL_REPLIES: u32 = 1000;
/// Most datagrams handled per store commit.
pub(super) const BURST: usize = 256;
/// The socket's receive buffer: a burst of honest registrations from many
/// agents fits while the control loop commits.
const RCVBUF: usize = 4 << 20;
/// How often the reader thread looks at its stop flag.
const READ_TIMEOUT: Duration = Duration::from_millis(200);

/// One received datagram.
pub(super) struct Datagram {
    pub bytes: Vec<u8>,
    pub from: SocketAddrV4,
    /// When the reader took it off the socket (the migration telemetry
    /// starts here).
    pub received: Instant,
}

/// Counters for `homeward stats`.
#[derive(Debug, Default)]
struct Counters {
    replies: BTreeMap<u8, u64>,
    dropped: u64,
    last_error: Option<String>,
    /// Store commits, and the datagrams they carried.
    commits: u64,
    committed_datagrams: u64,
    commit_failures: u64,
    /// Authenticated VM link-layer address extensions ignored (bad
    /// length, not unicast).
    vm_mac_ignored: u64,
}

/// The registration service: socket, reader thread, handler, counters.
pub(super) struct Registration {
    handler: HomeAgent,
    socket: Arc<UdpSocket>,
    rx: Receiver<Datagram>,
    /// Kept to start the reader again after a failed takeover.
    tx: Sender<Datagram>,
    address: std::net::Ipv4Addr,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    queue_full: Arc<AtomicU64>,
    counters: Counters,
    lan_index: u32,
    denials: DenialSummary,
    /// What the reader thread refused before queueing.
    screened: Arc<Mutex<Screened>>,
}

/// Requests refused by the reader thread (failed authentication,
/// malformed, unknown extensions): counted and summarised, never queued.
#[derive(Debug)]
struct Screened {
    denials: DenialSummary,
    replies: BTreeMap<u8, u64>,
    dropped: u64,
    /// Denial replies not sent (rate limit).
    suppressed: u64,
}

impl Screened {
    fn new(now: Instant) -> Screened {
        Screened {
            denials: DenialSummary::new(now),
            replies: BTreeMap::new(),
            dropped: 0,
            suppressed: 0,
        }
    }
}

impl Registration {
    /// Loads keys and replay state, binds `address:434` (or serves
    /// `adopted`, the socket a predecessor handed over) and starts the
    /// reader. `lan_prefixes` is the home subnet unless the config names one.
    /// `nonlocal`: `address` may not be this host's yet (a standby gateway:
    /// keepalived moves the virtual address to it when it becomes active).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: &RegistrationConfig,
        address: std::net::Ipv4Addr,
        nonlocal: bool,
        lan_index: u32,
        lan_prefixes: impl FnOnce() -> Result<Vec<(std::net::Ipv4Addr, u8)>, String>,
        replay_state: crate::store::ReplayState,
        adopted: Option<std::os::fd::OwnedFd>,
    ) -> Result<Registration, Error> {
        let keys = KeyFile::load(&config.keys).map_err(|e| Error::Invalid(e.to_string()))?;
        let replay = ReplayGuard::new(config.replay_window, replay_state);
        let home_prefixes = match &config.home_prefix {
            Some(p) => p.clone(),
            None => lan_prefixes()
                .map_err(|e| Error::Dataplane(format!("cannot read the LAN prefixes: {e}")))?
                .into_iter()
                .map(|(a, l)| Prefix::new(a, l))
                .collect(),
        };
        if keys.is_empty() {
            tracing::warn!(keys = %config.keys.display(), "registration: the key file has no [[spi]]: every registration will be refused");
        }
        if home_prefixes.is_empty() {
            tracing::warn!("registration: no home prefix (the LAN interface has no IPv4 address and none is configured): every registration will be refused");
        }
        let socket = match adopted {
            Some(fd) => UdpSocket::from(fd),
            None => bind(SocketAddrV4::new(address, wire::PORT), nonlocal).map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                    " (not an address of this host: configure it, or with keepalived set [failover] enabled = true)"
                } else {
                    ""
                };
                Error::Invalid(format!("cannot bind UDP {address}:{}: {e}{hint}", wire::PORT))
            })?,
        };
        socket
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|e| Error::Invalid(format!("registration socket: {e}")))?;
        set_rcvbuf(&socket, RCVBUF);
        let socket = Arc::new(socket);
        let (tx, rx) = channel::bounded(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let queue_full = Arc::new(AtomicU64::new(0));
        let screened = Arc::new(Mutex::new(Screened::new(Instant::now())));
        let handler = HomeAgent::new(
            HomeAgentConfig {
                address,
                home_prefixes: home_prefixes.clone(),
                max_lifetime: config.max_lifetime,
            },
            keys,
            replay,
        );
        let mut registration = Registration {
            handler,
            screened,
            socket,
            rx,
            tx,
            address,
            stop,
            reader: None,
            queue_full,
            counters: Counters::default(),
            lan_index,
            denials: DenialSummary::new(Instant::now()),
        };
        registration
            .resume()
            .map_err(|e| Error::Dataplane(format!("cannot start the registration thread: {e}")))?;
        let handler = &registration.handler;
        tracing::info!(
            address = %address,
            port = wire::PORT,
            spis = handler.keys().len(),
            home_prefixes = %home_prefixes.iter().map(Prefix::to_string).collect::<Vec<_>>().join(","),
            replay_window = config.replay_window.as_secs(),
            max_lifetime = config.max_lifetime,
            "registration enabled"
        );
        Ok(registration)
    }

    /// Start (again) the reader thread.
    pub fn resume(&mut self) -> std::io::Result<()> {
        self.stop.store(false, Ordering::Relaxed);
        let reader = Reader {
            socket: self.socket.clone(),
            tx: self.tx.clone(),
            stop: self.stop.clone(),
            queue_full: self.queue_full.clone(),
            keys: self.handler.keys().clone(),
            address: self.address,
            screened: self.screened.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("homeward-reg".into())
            .spawn(move || reader.run())?;
        self.reader = Some(thread);
        Ok(())
    }

    /// Takeover: stop the reader (what arrives meanwhile waits in the
    /// socket's buffer) and give the socket's fd. The caller handles what
    /// is still queued ([`Registration::datagrams`]) before handing over.
    pub fn park(&mut self) -> RawFd {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
        self.socket.as_raw_fd()
    }

    /// The channel the control loop selects on.
    pub fn datagrams(&self) -> &Receiver<Datagram> {
        &self.rx
    }

    /// Runs the handler on a burst of datagrams, commits their binding and
    /// replay changes to `store` in one transaction, then sends the
    /// replies. If the commit fails, every change of the burst is undone
    /// and no accept is sent (the agents retransmit).
    pub fn handle_burst<S: SteeringMaps, N: NextHops>(
        &mut self,
        burst: Vec<Datagram>,
        bindings: &mut Bindings<S, N>,
        store: &mut dyn Store,
        now: Now,
    ) {
        let mut changes = Vec::new();
        let mut undo: Vec<Undo> = Vec::new();
        let mut replies: Vec<(Vec<u8>, SocketAddrV4, bool)> = Vec::new();
        let mut accepted_lines = Vec::new();
        for d in &burst {
            let mut sink = Sink {
                bindings,
                now,
                lan_index: self.lan_index,
                error: None,
                previous: None,
            };
            let outcome = self
                .handler
                .handle(&d.bytes, d.from, SystemTime::now(), &mut sink);
            let (sink_error, previous) = (sink.error.take(), sink.previous.take());
            if let Some(e) = outcome.vm_mac_ignored {
                self.note_ignored_vm_mac(d.from, outcome.home_address, e);
            }
            let Some(code) = outcome.code else {
                self.counters.dropped += 1;
                self.denials.record(*d.from.ip(), 0, outcome.reason);
                continue;
            };
            *self.counters.replies.entry(code).or_insert(0) += 1;
            let accepted = code <= wire::code::ACCEPTED_NO_SIMULTANEOUS;
            if accepted {
                // A refresh of an unchanged binding is not worth a log line.
                let mut changed = false;
                if let Some(action) = outcome.action {
                    let vm = action.vm();
                    let now_bound = bindings.stored(vm);
                    changed = previous.as_ref().map(|p| p.care_of)
                        != now_bound.as_ref().map(|b| b.care_of);
                    if changed {
                        bindings.set_arrival(vm, d.received);
                    }
                    changes.push(match now_bound {
                        Some(b) => Change::Put(b),
                        None => Change::Delete(vm),
                    });
                    undo.push(Undo::Binding(vm, previous));
                }
                if let Some(r) = outcome.replay {
                    changes.push(Change::Replay {
                        spi: r.spi,
                        home: r.home,
                        id: r.id,
                    });
                    undo.push(Undo::Replay(r));
                }
                let lifetime = match outcome.action {
                    Some(Action::Bind { lifetime, .. } | Action::Hold { lifetime, .. }) => lifetime,
                    _ => 0,
                };
                accepted_lines.push((
                    changed,
                    d.from,
                    outcome.spi.unwrap_or(0),
                    outcome.home_address,
                    outcome.care_of,
                    lifetime,
                    code,
                    outcome.reason,
                ));
            } else {
                self.denials.record(*d.from.ip(), code, outcome.reason);
                let detail = sink_error.as_deref().unwrap_or(outcome.reason);
                self.counters.last_error = Some(format!(
                    "{} from {}: code {code} ({detail})",
                    outcome
                        .home_address
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    d.from
                ));
            }
            if let Some(reply) = outcome.reply {
                replies.push((reply, d.from, accepted));
            }
        }

        let committed = if changes.is_empty() {
            true
        } else {
            match store.commit(&changes) {
                Ok(()) => {
                    self.counters.commits += 1;
                    self.counters.committed_datagrams += burst.len() as u64;
                    true
                }
                Err(e) => {
                    tracing::error!("registrations not acknowledged, undone: {e}");
                    self.counters.commit_failures += 1;
                    self.counters.last_error = Some(e.to_string());
                    for u in undo.iter().rev() {
                        match u {
                            Undo::Binding(vm, previous) => {
                                bindings.revert(now, *vm, previous.as_ref())
                            }
                            Undo::Replay(r) => self.handler.undo_replay(r),
                        }
                    }
                    false
                }
            }
        };
        if committed {
            for (changed, from, spi, home, care_of, lifetime, code, reason) in accepted_lines {
                let home = home.map(|a| a.to_string()).unwrap_or_default();
                let care_of = care_of.map(|a| a.to_string()).unwrap_or_default();
                if changed {
                    tracing::info!(%from, spi, home = %home, care_of = %care_of, lifetime, code, "registration accepted: {reason}");
                } else {
                    tracing::debug!(%from, spi, home = %home, care_of = %care_of, lifetime, code, "registration refreshed");
                }
            }
        }
        for (reply, to, accepted) in replies {
            if accepted && !committed {
                continue;
            }
            if let Err(e) = self.socket.send_to(&reply, to) {
                tracing::debug!(%to, "cannot send the registration reply: {e}");
                self.counters.last_error = Some(format!("send to {to}: {e}"));
            }
        }
    }

    /// Counts an authenticated VM link-layer address extension that was
    /// ignored. Only the first is logged (at `warn`): it comes from a
    /// key holder, so it is a misconfigured or buggy agent, not a flood,
    /// and one line says so; the rest are in `homeward stats`.
    fn note_ignored_vm_mac(
        &mut self,
        from: SocketAddrV4,
        home: Option<std::net::Ipv4Addr>,
        e: wire::VmMacError,
    ) {
        self.counters.vm_mac_ignored += 1;
        let home = home.map(|a| a.to_string()).unwrap_or_default();
        if self.counters.vm_mac_ignored == 1 {
            tracing::warn!(%from, home = %home, "registration: {e}: ignored (the give-back ARP falls back to the neighbour table); further ones are only counted (vm_mac_ignored in homeward stats)");
        } else {
            tracing::debug!(%from, home = %home, "registration: {e}: ignored");
        }
    }

    /// Writes the denial summary if its period is over, or at once with
    /// `now_anyway` (at exit).
    pub fn summarize(&mut self, now: Instant, now_anyway: bool) {
        let flush = |d: &mut DenialSummary| {
            if now_anyway {
                d.flush_now(now)
            } else {
                d.flush(now)
            }
        };
        let screened = match self.screened.lock() {
            Ok(mut s) => flush(&mut s.denials),
            Err(_) => None,
        };
        for line in screened
            .into_iter()
            .chain(flush(&mut self.denials))
            .flatten()
        {
            tracing::warn!("{line}");
        }
    }

    /// An Identification another gateway accepted (replicated store).
    pub fn observe_replay(&mut self, spi: u32, home: std::net::Ipv4Addr, id: u64) {
        self.handler.observe_replay(spi, home, id);
    }

    /// The `registration` object of `homeward stats`.
    pub fn stats(&self) -> RegistrationStats {
        let mut all = self.counters.replies.clone();
        let (mut screened_dropped, mut suppressed) = (0, 0);
        if let Ok(s) = self.screened.lock() {
            for (c, n) in &s.replies {
                *all.entry(*c).or_insert(0) += n;
            }
            screened_dropped = s.dropped;
            suppressed = s.suppressed;
        }
        let accepted: u64 = all.iter().filter(|(c, _)| **c <= 1).map(|(_, n)| n).sum();
        let denied: u64 = all.iter().filter(|(c, _)| **c > 1).map(|(_, n)| n).sum();
        RegistrationStats {
            enabled: true,
            counts: Some(RegistrationCounts {
                accepted,
                denied,
                replies: all,
                dropped: self.counters.dropped + screened_dropped,
                replies_suppressed: suppressed,
                queue_full: self.queue_full.load(Ordering::Relaxed),
                commits: self.counters.commits,
                committed_datagrams: self.counters.committed_datagrams,
                commit_failures: self.counters.commit_failures,
                vm_mac_ignored: self.counters.vm_mac_ignored,
                last_error: self.counters.last_error.clone(),
            }),
        }
    }
}

/// The `registration` object of `homeward stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct RegistrationStats {
    pub enabled: bool,
    /// Absent when registration is off.
    #[serde(flatten)]
    pub counts: Option<RegistrationCounts>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct RegistrationCounts {
    /// Replies with code 0 or 1.
    pub accepted: u64,
    pub denied: u64,
    /// Replies sent, by code.
    pub replies: BTreeMap<u8, u64>,
    /// Datagrams dropped without a reply (malformed, not for us, floods).
    pub dropped: u64,
    /// Denial replies not sent (rate limit).
    pub replies_suppressed: u64,
    /// Authentic requests dropped because the handler's queue was full.
    pub queue_full: u64,
    pub commits: u64,
    pub committed_datagrams: u64,
    pub commit_failures: u64,
    /// VM link-layer address extensions ignored as unusable.
    pub vm_mac_ignored: u64,
    pub last_error: Option<String>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}

/// `stats` when registration is off.
pub(super) fn disabled_stats() -> RegistrationStats {
    RegistrationStats {
        enabled: false,
        counts: None,
    }
}

/// The socket's reader: screens each datagram (parse, extensions,
/// authentication) and queues only authentic requests for the control
/// loop; the rest is answered here, rate-limited, and counted. A flood of
/// forged requests therefore costs one HMAC each and never delays an
/// honest registration in the queue.
struct Reader {
    socket: Arc<UdpSocket>,
    tx: Sender<Datagram>,
    stop: Arc<AtomicBool>,
    queue_full: Arc<AtomicU64>,
    keys: Arc<KeyFile>,
    address: std::net::Ipv4Addr,
    screened: Arc<Mutex<Screened>>,
}

impl Reader {
    fn run(self) {
        let mut buf = vec![0u8; 2048];
        let mut limiter =
            ReplyLimiter::new(Instant::now(), DENIAL_REPLIES_PER_SOURCE, DENIAL_REPLIES);
        while !self.stop.load(Ordering::Relaxed) {
            match self.socket.recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(from))) => {
                    let received = Instant::now();
                    let bytes = buf.get(..n).unwrap_or_default();
                    if !self.screen(bytes, from, &mut limiter) {
                        continue;
                    }
                    match self.tx.try_send(Datagram {
                        bytes: bytes.to_vec(),
                        from,
                        received,
                    }) {
                        Ok(()) => {}
                        Err(channel::TrySendError::Full(_)) => {
                            self.queue_full.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(channel::TrySendError::Disconnected(_)) => return,
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                            | std::io::ErrorKind::ConnectionRefused
                    ) => {}
                Err(e) => {
                    tracing::warn!("registration socket: {e}");
                    std::thread::sleep(READ_TIMEOUT);
                }
            }
        }
    }

    /// Whether the datagram is an authentic request (to be queued); if not,
    /// it is answered (rate-limited) and counted here.
    fn screen(&self, bytes: &[u8], from: SocketAddrV4, limiter: &mut ReplyLimiter) -> bool {
        let outcome = match screen(&self.keys, self.address, bytes) {
            Ok(_) => return true,
            Err(outcome) => outcome,
        };
        let now = Instant::now();
        let send = outcome.reply.is_some() && limiter.allow(now, *from.ip());
        if let Ok(mut s) = self.screened.lock() {
            match outcome.code {
                Some(code) => *s.replies.entry(code).or_insert(0) += 1,
                None => s.dropped += 1,
            }
            s.denials
                .record(*from.ip(), outcome.code.unwrap_or(0), outcome.reason);
            if outcome.reply.is_some() && !send {
                s.suppressed += 1;
            }
        }
        if let (true, Some(reply)) = (send, &outcome.reply) {
            let _ = self.socket.send_to(reply, from);
        }
        false
    }
}

/// What to undo if a burst's commit fails.
enum Undo {
    /// The VM's binding before the change.
    Binding(std::net::Ipv4Addr, Option<StoredBinding>),
    Replay(crate::registration::home_agent::ReplayCommit),
}

/// The binding manager as the handler's sink.
struct Sink<'a, S, N> {
    bindings: &'a mut Bindings<S, N>,
    now: Now,
    lan_index: u32,
    /// The binding manager's own message for a refusal, for the log.
    error: Option<String>,
    /// The binding before the applied change.
    previous: Option<StoredBinding>,
}

impl<S: SteeringMaps, N: NextHops> Sink<'_, S, N> {
    /// The reply code for a binding the manager refused; its message kept
    /// for the log.
    fn refused(&mut self, e: BindError) -> Denial {
        let d = match &e {
            BindError::Full(..) => Denial::InsufficientResources,
            BindError::Refused(_) => Denial::AdministrativelyProhibited,
            BindError::Failed(_) => Denial::Unspecified,
        };
        self.error = Some(e.to_string());
        d
    }
}

impl<S: SteeringMaps, N: NextHops> BindingSink for Sink<'_, S, N> {
    fn apply(&mut self, action: &Action) -> Result<(), Denial> {
        match *action {
            Action::Bind {
                vm,
                care_of,
                lifetime,
                reverse_tunnel: _,
                spi,
                vm_mac,
            } => {
                self.previous = self.bindings.stored(vm);
                // The VM's MAC, for the gratuitous ARP that hands its address
                // back when the binding ends. The agent's (in the request's
                // authenticated extension) wins: it knows the VM's NIC. Else
                // the HA may still have it from when the VM was at home (a
                // STALE neighbour entry will do); `None` keeps what the
                // binding already has.
                let mac = if vm_mac.is_some() {
                    vm_mac
                } else if self.bindings.vm_mac(vm).is_some() {
                    None
                } else {
                    match dataplane::neigh::neighbor_mac(self.lan_index, vm) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::debug!(%vm, "no neighbour entry for the VM: {e}");
                            None
                        }
                    }
                };
                let lifetime = Duration::from_secs(lifetime.into());
                self.bindings
                    .bind(
                        self.now,
                        vm,
                        care_of,
                        Some(lifetime),
                        mac,
                        Origin::Registration { spi },
                    )
                    .map(|_| ())
                    .map_err(|e| self.refused(e))
            }
            Action::Deregister { vm, vm_mac } => {
                // Deregistering what is not bound is already done; a VM in
                // switchover from home is unbound now (its held traffic
                // goes home with it).
                self.previous = self.bindings.stored(vm);
                if self.previous.is_none() && !self.bindings.holding(vm) {
                    return Ok(());
                }
                // The agent's MAC, if sent, hands the address back even to a
                // binding made without one.
                self.bindings
                    .unbind_to(self.now.mono, vm, vm_mac)
                    .map_err(|e| {
                        self.error = Some(e);
                        Denial::Unspecified
                    })
            }
            Action::Hold {
                vm,
                lifetime,
                spi,
                vm_mac,
            } => {
                self.previous = self.bindings.stored(vm);
                let lifetime = Duration::from_secs(lifetime.into());
                self.bindings
                    .hold(self.now, vm, lifetime, vm_mac, Origin::Registration { spi })
                    .map_err(|e| self.refused(e))
            }
        }
    }
}

/// A larger receive buffer, so a burst of honest registrations fits while
/// the control loop commits. SO_RCVBUFFORCE (we hold CAP_NET_ADMIN) goes
/// past `net.core.rmem_max`; plain SO_RCVBUF, capped there, otherwise.
/// The registration socket on `addr`; with `nonlocal`, also while `addr`
/// is not (yet) an address of this host (IP_FREEBIND).
fn bind(addr: SocketAddrV4, nonlocal: bool) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if nonlocal {
        socket.set_freebind_v4(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn set_rcvbuf(socket: &UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |opt| {
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from
        // `&value`, which lives across the call; the fd is the socket's own.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) != 0 && set(libc::SO_RCVBUF) != 0 {
        tracing::warn!(
            "registration socket: cannot set its receive buffer: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests;
