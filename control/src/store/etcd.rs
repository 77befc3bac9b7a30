//! The etcd store (`store = "etcd"`): bindings and replay state shared by
//! the gateways of one home link, through the `etcd-client` crate.
//!
//! Layout under the prefix `P`:
//! - `P/bindings/<vm>`: a binding, JSON; attached to an etcd lease whose
//!   TTL is the binding's remaining lifetime (rounded up to the second),
//!   so expiry is etcd's: the key goes, every gateway's watch sees the
//!   delete. No lease for a binding without a lifetime.
//! - `P/replay/<spi>/<home>`: the last accepted registration
//!   Identification, 16 lower-case hex digits (so etcd's byte order is the
//!   numeric order).
//!
//! A commit is one etcd transaction: all or none, acknowledged only once
//! etcd has committed it (a quorum has it). A replay change is a
//! compare-and-swap: the transaction only succeeds if the stored
//! Identification is still older than the one accepted (or absent, if this
//! gateway never saw one), so two gateways can never both accept the same
//! Identification.
//!
//! A watch thread (its own runtime and connection) follows the prefix and
//! sends what changed to the control loop ([`Store::replication`]); the
//! control loop asks [`Store::fresh`] whether a change is news (not its
//! own commit, not older than what it holds) before applying it.
//!
//! Nothing from the network panics: every value is parsed, every request
//! has a timeout.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};

use super::{
    Change, Key, Origin, Replicated, Replication, Snapshot, Store, StoreError, StoredBinding,
};
use crate::config::EtcdConfig;

/// How long a transient failure (a member going away) is retried within
/// one request's timeout.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often a lost watch tries to reconnect.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// How often the watch asks etcd for progress (a heartbeat), and how long
/// without any answer counts as a loss (a silent network, a member that
/// hangs).
const HEARTBEAT: Duration = Duration::from_secs(1);
const SILENCE: Duration = Duration::from_secs(3);

/// A binding's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    care_of: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vm_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_unix_ms: Option<u64>,
    /// The registration's SPI; absent: made by `homeward bind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spi: Option<u32>,
}

/// The keys of one prefix.
#[derive(Debug, Clone)]
struct Layout {
    prefix: String,
}

impl Layout {
    fn binding(&self, vm: Ipv4Addr) -> String {
        format!("{}/bindings/{vm}", self.prefix)
    }

    fn replay(&self, spi: u32, home: Ipv4Addr) -> String {
        format!("{}/replay/{spi}/{home}", self.prefix)
    }

    /// Everything under the prefix (the trailing '/' keeps "/homeward2"
    /// out of "/homeward").
    fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// Parses a key and its value (`None`: deleted) into a change.
    fn parse(&self, key: &[u8], value: Option<&[u8]>) -> Result<Change, StoreError> {
        let text = String::from_utf8_lossy(key).into_owned();
        let bad = |message: &str| StoreError::EtcdData {
            key: text.clone(),
            message: message.into(),
        };
        let rest = text
            .strip_prefix(&self.all())
            .ok_or_else(|| bad("not under the prefix"))?;
        if let Some(vm) = rest.strip_prefix("bindings/") {
            let vm: Ipv4Addr = vm.parse().map_err(|_| bad("not an IPv4 address"))?;
            let Some(value) = value else {
                return Ok(Change::Delete(vm));
            };
            let r: Record =
                serde_json::from_slice(value).map_err(|e| bad(&format!("bad binding: {e}")))?;
            let vm_mac = match r.vm_mac.as_deref() {
                None => None,
                Some(s) => {
                    Some(crate::proto::parse_mac(s).ok_or_else(|| bad("bad vm_mac in binding"))?)
                }
            };
            return Ok(Change::Put(StoredBinding {
                vm,
                care_of: r.care_of,
                vm_mac,
                expires_unix_ms: r.expires_unix_ms,
                origin: match r.spi {
                    Some(spi) => Origin::Registration { spi },
                    None => Origin::Admin,
                },
            }));
        }
        if let Some(rest) = rest.strip_prefix("replay/") {
            let (spi, home) = rest
                .split_once('/')
                .ok_or_else(|| bad("not replay/<spi>/<home>"))?;
            let spi: u32 = spi.parse().map_err(|_| bad("bad SPI"))?;
            let home: Ipv4Addr = home.parse().map_err(|_| bad("bad home address"))?;
            let value = value.ok_or_else(|| bad("replay state deleted"))?;
            let id = std::str::from_utf8(value)
                .ok()
                .filter(|s| s.len() == 16)
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| bad("bad Identification (16 hex digits expected)"))?;
            return Ok(Change::Replay { spi, home, id });
        }
        Err(bad("unknown key (neither bindings/ nor replay/)"))
    }
}

/// An Identification as stored: fixed width, so byte order is number order.
fn encode_id(id: u64) -> String {
    format!("{id:016x}")
}

fn encode_binding(b: &StoredBinding) -> Vec<u8> {
    let r = Record {
        care_of: b.care_of,
        vm_mac: b.vm_mac.map(crate::proto::format_mac),
        expires_unix_ms: b.expires_unix_ms,
        spi: match b.origin {
            Origin::Admin => None,
            Origin::Registration { spi } => Some(spi),
        },
    };
    // A struct of plain fields always serializes.
    serde_json::to_vec(&r).unwrap_or_default()
}

/// Seconds of lease for a binding that ends at `expires` (rounded up: etcd
/// removes it at the earliest then; every gateway's own timer removes it
/// from its table on time).
fn lease_ttl(expires_unix_ms: u64, now_unix_ms: u64) -> i64 {
    let left = expires_unix_ms.saturating_sub(now_unix_ms);
    i64::try_from(left.div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(1)
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One commit's changes, one per key (etcd refuses a transaction that
/// writes a key twice): the last change of a binding wins; of replay
/// changes the newest Identification is written and the oldest is
/// compared (each had to be newer than what was stored before).
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    bindings: BTreeMap<Ipv4Addr, Option<StoredBinding>>,
    /// (oldest, newest) per (SPI, home).
    replay: BTreeMap<(u32, Ipv4Addr), (u64, u64)>,
}

impl Plan {
    fn new(changes: &[Change]) -> Plan {
        let mut p = Plan::default();
        for c in changes {
            match c {
                Change::Put(b) => {
                    p.bindings.insert(b.vm, Some(b.clone()));
                }
                Change::Delete(vm) => {
                    p.bindings.insert(*vm, None);
                }
                Change::Replay { spi, home, id } => {
                    let e = p.replay.entry((*spi, *home)).or_insert((*id, *id));
                    e.0 = e.0.min(*id);
                    e.1 = e.1.max(*id);
                }
            }
        }
        p
    }

    fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.bindings
            .keys()
            .map(|vm| Key::Binding(*vm))
            .chain(self.replay.keys().map(|(spi, home)| Key::Replay {
                spi: *spi,
                home: *home,
            }))
    }
}

/// A binding's key, and its value and expiry (`None`: delete it).
type BindingOp = (String, Option<(Vec<u8>, Option<u64>)>);

/// Shared with the watch thread: stop it.
#[derive(Debug, Default)]
struct Stop {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Stop {
    fn stopped(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// `fut`, or `None` once asked to stop.
    async fn or_stop<F: std::future::Future>(&self, fut: F) -> Option<F::Output> {
        if self.stopped() {
            return None;
        }
        tokio::select! {
            _ = self.notify.notified() => None,
            out = fut => Some(out),
        }
    }
}

/// The etcd store.
pub struct EtcdStore {
    config: EtcdConfig,
    layout: Layout,
    rt: tokio::runtime::Runtime,
    client: Client,
    /// The newest revision this gateway knows of each key: its own
    /// commits, what it loaded, what it applied from the watch.
    known: HashMap<Key, i64>,
    tx: Sender<Replication>,
    rx: Receiver<Replication>,
    /// The watch thread, from the first load.
    watch: Option<std::thread::JoinHandle<()>>,
    stop: Arc<Stop>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.config.endpoints)
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

/// How long one try of a request may take: a third of the request
/// timeout, so that a member that went away mid-request leaves time to
/// retry at another.
fn attempt_timeout(config: &EtcdConfig) -> Duration {
    (config.request_timeout / 3).max(Duration::from_millis(100))
}

/// The client options of a config (TLS files are read here).
fn options(config: &EtcdConfig) -> Result<ConnectOptions, StoreError> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_timeout(attempt_timeout(config))
        // Not more often than etcd allows (--grpc-keepalive-min-time, 5 s
        // by default: faster pings get the connection closed); the watch
        // has its own, faster heartbeat (progress requests).
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        // A member cut off from the quorum fails requests and watches
        // rather than serving stale data.
        .with_require_leader(true);
    if let Some(tls) = &config.tls {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).map_err(|e| StoreError::EtcdUnavailable {
                endpoints: config.endpoints.join(","),
                message: format!("cannot read the [etcd] {what} file {}: {e}", p.display()),
            })
        };
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca, "ca")?));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(read(cert, "cert")?, read(key, "key")?));
        }
        o = o.with_tls(t);
    }
    Ok(o)
}

/// A current-thread runtime (the store's and the watch thread's own).
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the etcd client's runtime: {e}"))
}

/// `fut` within `limit`, as a string error.
async fn within<T, F>(limit: Duration, what: &str, fut: F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer in {} ms", limit.as_millis())),
    }
}

/// What a range read of the prefix gave: each key's change and revision,
/// and the store revision it was read at.
struct Range {
    revision: i64,
    entries: Vec<Replicated>,
}

async fn read_all(client: &mut Client, layout: &Layout, limit: Duration) -> Result<Range, String> {
    let resp = within(
        limit,
        "reading the prefix",
        client.get(layout.all(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut entries = Vec::new();
    for kv in resp.kvs() {
        match layout.parse(kv.key(), Some(kv.value())) {
            Ok(change) => entries.push(Replicated {
                revision: kv.mod_revision(),
                change,
            }),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(Range { revision, entries })
}

impl EtcdStore {
    /// Connects (lazily: the first load fails if no member answers).
    pub fn connect(config: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let unavailable = |message: String| StoreError::EtcdUnavailable {
            endpoints: config.endpoints.join(","),
            message,
        };
        let rt = runtime().map_err(unavailable)?;
        let opts = options(config)?;
        let client = rt
            .block_on(async {
                tokio::time::timeout(
                    config.connect_timeout,
                    Client::connect(config.endpoints.clone(), Some(opts)),
                )
                .await
            })
            .map_err(|_| unavailable("no connection in time".into()))?
            .map_err(|e| unavailable(format!("connecting: {e}")))?;
        let (tx, rx) = channel::unbounded();
        Ok(EtcdStore {
            layout: Layout {
                prefix: config.prefix.clone(),
            },
            config: config.clone(),
            rt,
            client,
            known: HashMap::new(),
            tx,
            rx,
            watch: None,
            stop: Arc::new(Stop::default()),
        })
    }

    fn unavailable(&self, message: String) -> StoreError {
        StoreError::EtcdUnavailable {
            endpoints: self.config.endpoints.join(","),
            message,
        }
    }

    /// Retries `op` on failure until the request timeout is spent (a
    /// member that went away: the client moves to another).
    fn retrying<T, F, Fut>(&mut self, mut op: F) -> Result<T, String>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        let client = self.client.clone();
        self.rt.block_on(async move {
            loop {
                match op(client.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(e) if Instant::now() + RETRY_PAUSE >= deadline => return Err(e),
                    Err(e) => {
                        tracing::debug!("etcd request failed, retrying: {e}");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
        })
    }

    fn start_watch(&mut self, from: i64) -> Result<(), StoreError> {
        let config = self.config.clone();
        let layout = self.layout.clone();
        let tx = self.tx.clone();
        let stop = self.stop.clone();
        let opts = options(&config)?;
        let handle = std::thread::Builder::new()
            .name("homeward-etcd".into())
            .spawn(move || watch_thread(config, opts, layout, from, tx, stop))
            .map_err(|e| self.unavailable(format!("cannot start the watch thread: {e}")))?;
        self.watch = Some(handle);
        Ok(())
    }

    /// After a failed compare-and-swap: reads the replay keys again and
    /// hands what another gateway stored to the control loop.
    fn reload_replay(&mut self, keys: &[(u32, Ipv4Addr)]) {
        let layout = self.layout.clone();
        let limit = attempt_timeout(&self.config);
        let keys = keys.to_vec();
        let read = self.retrying(|mut c| {
            let keys = keys.clone();
            let layout = layout.clone();
            async move {
                let mut out = Vec::new();
                for (spi, home) in keys {
                    let r = within(
                        limit,
                        "reading replay state",
                        c.get(layout.replay(spi, home), None),
                    )
                    .await?;
                    match r.kvs().first() {
                        Some(kv) => out.push(Ok(Replicated {
                            revision: kv.mod_revision(),
                            change: layout
                                .parse(kv.key(), Some(kv.value()))
                                .map_err(|e| e.to_string())?,
                        })),
                        None => out.push(Err((spi, home))),
                    }
                }
                Ok(out)
            }
        });
        match read {
            Ok(list) => {
                let mut changes = Vec::new();
                for r in list {
                    match r {
                        Ok(c) => changes.push(c),
                        // Gone (deleted by hand): compare as absent next time.
                        Err((spi, home)) => {
                            self.known.remove(&Key::Replay { spi, home });
                        }
                    }
                }
                if !changes.is_empty() {
                    let _ = self.tx.send(Replication::Changes(changes));
                }
            }
            Err(e) => tracing::warn!("cannot reload the replay state after a conflict: {e}"),
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.stop.flag.store(true, Ordering::Release);
        self.stop.notify.notify_one();
        if let Some(h) = self.watch.take() {
            let _ = h.join();
        }
    }
}

impl Store for EtcdStore {
    fn load(&mut self, now_unix_ms: u64) -> Result<Snapshot, StoreError> {
        let layout = self.layout.clone();
        let limit = attempt_timeout(&self.config);
        let range = self
            .retrying(|mut c| {
                let layout = layout.clone();
                async move { read_all(&mut c, &layout, limit).await }
            })
            .map_err(|e| self.unavailable(e))?;
        let mut snapshot = Snapshot::default();
        for r in range.entries {
            let key = r.key();
            self.known.insert(key, r.revision);
            match r.change {
                Change::Put(b) => {
                    if b.expires_unix_ms.is_some_and(|t| t <= now_unix_ms) {
                        // Its lease removes it.
                        snapshot.expired += 1;
                    } else {
                        snapshot.bindings.push(b);
                    }
                }
                Change::Replay { spi, home, id } => snapshot.replay.push(((spi, home), id)),
                Change::Delete(_) => {}
            }
        }
        if self.watch.is_none() {
            self.start_watch(range.revision + 1)?;
        }
        Ok(snapshot)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let plan = Plan::new(changes);
        if plan.bindings.is_empty() && plan.replay.is_empty() {
            return Ok(());
        }
        let layout = self.layout.clone();
        let limit = attempt_timeout(&self.config);
        let mut compares = Vec::new();
        let mut replay_ops = Vec::new();
        for (&(spi, home), &(oldest, newest)) in &plan.replay {
            let key = layout.replay(spi, home);
            compares.push(if self.known.contains_key(&Key::Replay { spi, home }) {
                // Still older than the oldest accepted in this commit.
                Compare::value(key.clone(), CompareOp::Less, encode_id(oldest))
            } else {
                // Still absent, as this gateway last saw it.
                Compare::version(key.clone(), CompareOp::Equal, 0)
            });
            replay_ops.push((key, encode_id(newest)));
        }
        let bindings: Vec<BindingOp> = plan
            .bindings
            .iter()
            .map(|(vm, b)| {
                (
                    layout.binding(*vm),
                    b.as_ref().map(|b| (encode_binding(b), b.expires_unix_ms)),
                )
            })
            .collect();
        let outcome = self.retrying(|mut c| {
            let compares = compares.clone();
            let replay_ops = replay_ops.clone();
            let bindings = bindings.clone();
            async move {
                // One lease per lifetime (in seconds) in this commit.
                let now = now_unix_ms();
                let mut leases: HashMap<i64, i64> = HashMap::new();
                let mut ops = Vec::new();
                for (key, value) in bindings {
                    match value {
                        None => ops.push(TxnOp::delete(key, None)),
                        Some((value, expires)) => {
                            let opts = match expires {
                                None => None,
                                Some(t) => {
                                    let ttl = lease_ttl(t, now);
                                    let id = match leases.get(&ttl) {
                                        Some(id) => *id,
                                        None => {
                                            let g = within(
                                                limit,
                                                "granting a lease",
                                                c.lease_grant(ttl, None),
                                            )
                                            .await?;
                                            leases.insert(ttl, g.id());
                                            g.id()
                                        }
                                    };
                                    Some(PutOptions::new().with_lease(id))
                                }
                            };
                            ops.push(TxnOp::put(key, value, opts));
                        }
                    }
                }
                for (key, value) in replay_ops {
                    ops.push(TxnOp::put(key, value, None));
                }
                let txn = Txn::new().when(compares).and_then(ops);
                let r = within(limit, "committing", c.txn(txn)).await?;
                Ok((r.succeeded(), r.header().map_or(0, |h| h.revision())))
            }
        });
        match outcome {
            Err(e) => Err(self.unavailable(e)),
            Ok((true, revision)) => {
                for key in plan.keys() {
                    self.known.insert(key, revision);
                }
                Ok(())
            }
            Ok((false, _)) => {
                let keys: Vec<(u32, Ipv4Addr)> = plan.replay.keys().copied().collect();
                self.reload_replay(&keys);
                let (spi, home) = keys.first().copied().unwrap_or((0, Ipv4Addr::UNSPECIFIED));
                Err(StoreError::ReplayConflict { spi, home })
            }
        }
    }

    fn replication(&self) -> Option<Receiver<Replication>> {
        Some(self.rx.clone())
    }

    fn fresh(&mut self, key: Key, revision: i64) -> bool {
        match self.known.get(&key) {
            Some(&r) if r >= revision => false,
            _ => {
                self.known.insert(key, revision);
                true
            }
        }
    }

    fn expires_itself(&self) -> bool {
        true
    }

    /// etcd refuses a transaction of more operations than its
    /// `--max-txn-ops` (128 unless the cluster raised it).
    fn max_changes(&self) -> usize {
        128
    }

    fn describe(&self) -> String {
        format!(
            "etcd {} prefix {}",
            self.config.endpoints.join(","),
            self.config.prefix
        )
    }
}

/// How the watch ended.
enum WatchEnd {
    Stopped,
    /// Failed (why); `resync`: the revision to resume from is gone
    /// (compacted), so the whole prefix must be read again.
    Failed {
        why: String,
        resync: bool,
    },
}

/// The watch thread: follows the prefix from `from`, reconnects when lost.
fn watch_thread(
    config: EtcdConfig,
    opts: ConnectOptions,
    layout: Layout,
    from: i64,
    tx: Sender<Replication>,
    stop: Arc<Stop>,
) {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Replication::Lost(e));
            return;
        }
    };
    rt.block_on(async move {
        let mut from = from;
        // Whether a loss was reported: then the next success reads the
        // whole prefix and reports a resync.
        let mut lost = false;
        let mut resync = false;
        let mut failures = 0u32;
        // The watch follows one member at a time, the next one after a
        // failure. (Given them all, the client's balancer sent the watch
        // to a member that had been killed, again and again: a gateway
        // that lost one member of three reported etcd lost.)
        let members = config.endpoints.len().max(1);
        let mut member = 0;
        loop {
            if stop.stopped() {
                return;
            }
            let endpoint = config.endpoints.get(member).cloned().unwrap_or_default();
            let attempt = watch_once(&config, &endpoint, &opts, &layout, &mut from, &tx, &stop, &mut resync, &mut lost, &mut failures);
            match stop.or_stop(attempt).await {
                None | Some(WatchEnd::Stopped) => return,
                Some(WatchEnd::Failed { why, resync: r }) => {
                    resync |= r;
                    failures += 1;
                    member = (member + 1) % members;
                    let gone = is_loss(failures, members);
                    if gone && !lost {
                        lost = true;
                        tracing::error!(
                            endpoints = %config.endpoints.join(","),
                            "etcd LOST: {why}. Forwarding continues with the bindings held; registrations and bind/unbind are refused until etcd returns (then this gateway catches up)"
                        );
                        if tx.send(Replication::Lost(why)).is_err() {
                            return;
                        }
                    } else if lost {
                        tracing::debug!("etcd still unreachable: {why}");
                    } else {
                        tracing::warn!("etcd watch interrupted ({why}); reconnecting");
                    }
                    if gone && stop.or_stop(tokio::time::sleep(RECONNECT_PAUSE)).await.is_none() {
                        return;
                    }
                }
            }
        }
    });
}

/// Whether `failures` in a row, each at the next of `members`, are a loss
/// of etcd. A member going away is not: the next attempt reaches another
/// at once. Every member failing in turn is, and with one member, its
/// second failure in a row (a restart reconnects at once).
fn is_loss(failures: u32, members: usize) -> bool {
    failures as usize >= members.max(2)
}

/// Connects to `endpoint`, (re)reads the prefix if `resync`, and watches
/// from `from` until the watch fails. Progress moves `from`.
#[allow(clippy::too_many_arguments)]
async fn watch_once(
    config: &EtcdConfig,
    endpoint: &str,
    opts: &ConnectOptions,
    layout: &Layout,
    from: &mut i64,
    tx: &Sender<Replication>,
    stop: &Stop,
    resync: &mut bool,
    lost: &mut bool,
    failures: &mut u32,
) -> WatchEnd {
    let failed = |why: String| WatchEnd::Failed {
        why: format!("{endpoint}: {why}"),
        resync: false,
    };
    let limit = config.request_timeout;
    let mut client = match tokio::time::timeout(
        config.connect_timeout,
        Client::connect([endpoint], Some(opts.clone())),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return failed(format!("connecting: {e}")),
        Err(_) => return failed("connecting: no connection in time".into()),
    };
    if *resync || *lost {
        let range = match read_all(&mut client, layout, limit).await {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        *from = range.revision + 1;
        tracing::info!(
            revision = range.revision,
            keys = range.entries.len(),
            "etcd reachable again: catching up"
        );
        if tx
            .send(Replication::Resync {
                revision: range.revision,
                state: range.entries,
            })
            .is_err()
        {
            return WatchEnd::Stopped;
        }
        // The daemon counts itself connected from here: should the watch
        // fail before it is created, that is a new loss to report (not
        // the old one still going on, which would leave it believing it
        // is connected).
        *resync = false;
        *lost = false;
        *failures = 0;
    }
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*from)
        .with_progress_notify();
    let stream = match within(limit, "watching", client.watch(layout.all(), Some(options))).await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let (mut requests, mut responses) = stream.split();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut heard = Instant::now();
    loop {
        let msg = tokio::select! {
            m = responses.message() => m,
            _ = heartbeat.tick() => {
                if heard.elapsed() > SILENCE {
                    return failed(format!("no answer from etcd for {} s", SILENCE.as_secs()));
                }
                // Bounded: a stream whose connection is gone stops taking
                // requests, and must not hold the watch up.
                match tokio::time::timeout(HEARTBEAT, requests.request_progress()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return failed(format!("watch: {e}")),
                    Err(_) => return failed("watch: etcd takes no requests".into()),
                }
                continue;
            }
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => return failed("the watch stream ended".into()),
            Err(e) => return failed(format!("watch: {e}")),
        };
        heard = Instant::now();
        if msg.created() {
            // Watching (again): whatever failed before is over.
            *failures = 0;
            // Caught up (if it was lost): a next loss is reported again.
            *resync = false;
            *lost = false;
        }
        if msg.canceled() {
            let compacted = msg.compact_revision() > 0;
            return WatchEnd::Failed {
                why: format!(
                    "the watch was cancelled: {}{}",
                    msg.cancel_reason(),
                    if compacted {
                        " (history compacted)"
                    } else {
                        ""
                    }
                ),
                resync: compacted,
            };
        }
        let mut changes = Vec::new();
        let mut last = None;
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            last = Some(kv.mod_revision());
            let value = match ev.event_type() {
                EventType::Put => Some(kv.value()),
                EventType::Delete => None,
            };
            match layout.parse(kv.key(), value) {
                Ok(change) => changes.push(Replicated {
                    revision: kv.mod_revision(),
                    change,
                }),
                Err(e) => tracing::error!("etcd watch: ignored: {e}"),
            }
        }
        match last {
            Some(r) => *from = r + 1,
            None => {
                // A progress notification: everything up to it was sent.
                if let Some(h) = msg.header() {
                    if !msg.created() {
                        *from = (*from).max(h.revision() + 1);
                    }
                }
            }
        }
        if !changes.is_empty() && tx.send(Replication::Changes(changes)).is_err() {
            return WatchEnd::Stopped;
        }
        if stop.stopped() {
            return WatchEnd::Stopped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            prefix: "/hw".into(),
        }
    }

    const VM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const COA: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

    #[test]
    fn etcd_is_lost_when_every_member_failed_in_turn() {
        // Three members: one or two gone is not a loss.
        assert!(!is_loss(1, 3));
        assert!(!is_loss(2, 3));
        assert!(is_loss(3, 3));
        // One or two members: the second failure in a row.
        assert!(!is_loss(1, 1));
        assert!(is_loss(2, 1));
        assert!(!is_loss(1, 2));
        assert!(is_loss(2, 2));
    }

    #[test]
    fn bindings_round_trip_through_their_encoding() {
        let l = layout();
        for b in [
            StoredBinding {
                vm: VM,
                care_of: COA,
                vm_mac: Some([2, 0, 0, 0, 0, 1]),
                expires_unix_ms: Some(1_700_000_000_123),
                origin: Origin::Registration { spi: 0x1234 },
            },
            StoredBinding {
                vm: VM,
                care_of: COA,
                vm_mac: None,
                expires_unix_ms: None,
                origin: Origin::Admin,
            },
        ] {
            let key = l.binding(b.vm);
            assert_eq!(key, "/hw/bindings/192.0.2.10");
            let back = l.parse(key.as_bytes(), Some(&encode_binding(&b))).unwrap();
            assert_eq!(back, Change::Put(b));
        }
        assert_eq!(
            l.parse(l.binding(VM).as_bytes(), None).unwrap(),
            Change::Delete(VM)
        );
    }

    #[test]
    fn replay_ids_sort_as_bytes_like_numbers() {
        let l = layout();
        let key = l.replay(7, VM);
        assert_eq!(key, "/hw/replay/7/192.0.2.10");
        let id = 0xe9a1_0000_8000_0001u64;
        assert_eq!(
            l.parse(key.as_bytes(), Some(encode_id(id).as_bytes()))
                .unwrap(),
            Change::Replay {
                spi: 7,
                home: VM,
                id
            }
        );
        let ids = [0u64, 1, 0xff, 0x100, 0xe9a1_0000_0000_0000, u64::MAX];
        for w in ids.windows(2) {
            assert!(encode_id(w[0]) < encode_id(w[1]));
        }
    }

    #[test]
    fn what_the_network_gives_is_parsed_never_trusted() {
        let l = layout();
        let bad: [(&str, Option<&[u8]>); 9] = [
            ("/hw/bindings/not-an-ip", None),
            ("/hw/bindings/192.0.2.1", Some(b"{")),
            (
                "/hw/bindings/192.0.2.1",
                Some(b"{\"care_of\":\"1.2.3.4\",\"extra\":1}"),
            ),
            (
                "/hw/bindings/192.0.2.1",
                Some(b"{\"care_of\":\"1.2.3.4\",\"vm_mac\":\"zz\"}"),
            ),
            ("/hw/replay/x/192.0.2.1", Some(b"0000000000000001")),
            ("/hw/replay/1/192.0.2.1", Some(b"1")),
            ("/hw/replay/1/192.0.2.1", None),
            ("/hw/other", Some(b"")),
            ("/other/bindings/192.0.2.1", None),
        ];
        for (k, v) in bad {
            assert!(
                matches!(l.parse(k.as_bytes(), v), Err(StoreError::EtcdData { .. })),
                "{k} {v:?}"
            );
        }
        // Not UTF-8 at all.
        assert!(l.parse(&[0xff, 0xfe], None).is_err());
    }

    #[test]
    fn a_commit_writes_each_key_once() {
        let b = |coa| StoredBinding {
            vm: VM,
            care_of: coa,
            vm_mac: None,
            expires_unix_ms: None,
            origin: Origin::Admin,
        };
        let p = Plan::new(&[
            Change::Put(b(COA)),
            Change::Replay {
                spi: 1,
                home: VM,
                id: 5,
            },
            Change::Delete(VM),
            Change::Put(b(Ipv4Addr::new(203, 0, 113, 6))),
            Change::Replay {
                spi: 1,
                home: VM,
                id: 9,
            },
        ]);
        assert_eq!(p.bindings.len(), 1);
        assert_eq!(
            p.bindings[&VM].as_ref().unwrap().care_of,
            Ipv4Addr::new(203, 0, 113, 6)
        );
        assert_eq!(p.replay[&(1, VM)], (5, 9));
        assert_eq!(p.keys().count(), 2);
    }

    #[test]
    fn leases_round_up_to_whole_seconds() {
        assert_eq!(lease_ttl(10_000, 9_999), 1);
        assert_eq!(lease_ttl(10_000, 9_000), 1);
        assert_eq!(lease_ttl(10_001, 9_000), 2);
        assert_eq!(lease_ttl(5, 10), 1);
        assert_eq!(lease_ttl(u64::MAX, 0), (u64::MAX / 1000 + 1) as i64);
    }
}
