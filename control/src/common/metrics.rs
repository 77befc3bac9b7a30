//! The Prometheus/OpenMetrics endpoint of both roles (`--metrics ADDR:PORT`).
//!
//! A scrape asks the role's control loop for a fresh [`Exposition`] (built
//! from its typed stats, the one owner of that state) and encodes it with
//! `prometheus-client`, next to the histograms the control loop observes
//! into directly. The workers are never touched: their counters are the
//! relaxed atomics the stats already read.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender};
use dataplane::forwarder::{DataPathStats, SteeringReport};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Where the endpoint listens, and how many bindings get series of their
/// own (a million bindings must not make a million series).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    pub addr: SocketAddr,
    pub binding_series: usize,
}

impl MetricsConfig {
    /// Default cap of per-binding series.
    pub const BINDING_SERIES: usize = 1000;

    /// `None` unless an address is set.
    pub fn merge(addr: Option<SocketAddr>, binding_series: Option<usize>) -> Option<MetricsConfig> {
        addr.map(|addr| MetricsConfig {
            addr,
            binding_series: binding_series.unwrap_or(Self::BINDING_SERIES),
        })
    }
}

/// Label pairs of one sample.
pub type Labels = Vec<(&'static str, Cow<'static, str>)>;

/// One metric family: its samples as the role computed them at this scrape.
#[derive(Debug, Clone)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    unit: Option<Unit>,
    samples: Vec<(Labels, f64)>,
}

impl Family {
    /// Adds a sample with `labels`.
    pub fn sample(&mut self, labels: Labels, value: impl Into<Value>) -> &mut Family {
        self.samples.push((labels, value.into().0));
        self
    }
}

/// A metric value: counters and gauges from integers, as Prometheus keeps
/// them (float64).
#[derive(Debug, Clone, Copy)]
pub struct Value(f64);

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        // Beyond 2^53 a float loses units; Prometheus stores float64 anyway.
        Value(v as f64)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value(v as f64)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value(v as f64)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value(v)
    }
}

/// Every family of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// An exposition that starts with `homeward_build_info` for `role`.
    pub fn for_role(role: &'static str) -> Exposition {
        let mut x = Exposition::default();
        x.gauge(
            "build_info",
            "The running homeward: 1, labelled with its version and role.",
        )
        .sample(
            vec![
                label("version", env!("HOMEWARD_VERSION")),
                label("role", role),
            ],
            1u64,
        );
        x
    }

    /// A counter family `homeward_<name>_total`.
    pub fn counter(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.family(name, help, MetricType::Counter, None)
    }

    /// A gauge family `homeward_<name>`.
    pub fn gauge(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.family(name, help, MetricType::Gauge, None)
    }

    fn family(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        unit: Option<Unit>,
    ) -> &mut Family {
        self.families.push(Family {
            name,
            help,
            kind,
            unit,
            samples: Vec::new(),
        });
        let last = self.families.len() - 1;
        &mut self.families[last]
    }

    /// The families, for tests.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.families.iter().map(|f| f.name)
    }
}

/// One label.
pub fn label(
    key: &'static str,
    value: impl Into<Cow<'static, str>>,
) -> (&'static str, Cow<'static, str>) {
    (key, value.into())
}

/// The data path's families, the same for both roles.
pub fn data_path(x: &mut Exposition, s: &DataPathStats) {
    let packets = x.counter(
        "forwarded_packets",
        "Datagrams forwarded per queue: encapsulated into a tunnel, or decapsulated from one.",
    );
    for (queue, q) in s.per_queue.iter().enumerate() {
        let q_label = || label("queue", queue.to_string());
        packets.sample(
            vec![label("direction", "encapsulated"), q_label()],
            q.pipeline.encapsulated,
        );
        packets.sample(
            vec![label("direction", "decapsulated"), q_label()],
            q.pipeline.decapsulated,
        );
    }
    let bytes = x.counter(
        "forwarded_bytes",
        "Bytes of the inner IPv4 datagrams counted in homeward_forwarded_packets_total.",
    );
    for (queue, q) in s.per_queue.iter().enumerate() {
        let q_label = || label("queue", queue.to_string());
        bytes.sample(
            vec![label("direction", "encapsulated"), q_label()],
            q.pipeline.encapsulated_bytes,
        );
        bytes.sample(
            vec![label("direction", "decapsulated"), q_label()],
            q.pipeline.decapsulated_bytes,
        );
    }
    let drops = x.counter(
        "drops",
        "Frames dropped, by reason: the pipeline's, the worker's, and the kernel's AF_XDP counters (xsk_*).",
    );
    for (reason, n) in &s.drops {
        drops.sample(vec![label("reason", *reason)], *n);
    }
    let t = &s.totals;
    x.counter("arp_replies", "Proxy ARP replies sent for bound VMs.")
        .sample(vec![], t.pipeline.arp_replies);
    x.counter("announcements", "Gratuitous ARP announcements sent.")
        .sample(vec![], t.announcements);
    x.counter(
        "neighbor_queued",
        "Frames held until their home-link neighbour resolved (sent: neighbor_released; dropped: drops{reason=\"no_lan_neighbor\"}).",
    )
    .sample(vec![], t.neighbor_queued);
    x.counter(
        "neighbor_released",
        "Held frames sent once their home-link neighbour resolved.",
    )
    .sample(vec![], t.neighbor_released);
    x.counter(
        "switchover_held",
        "Frames held for a VM in switchover (stopped at its source, destination not registered yet).",
    )
    .sample(vec![], t.switchover_held);
    x.counter(
        "switchover_released",
        "Frames held for a switchover, released into the tunnel or onto the home link when it ended.",
    )
    .sample(vec![], t.switchover_released);
    x.counter(
        "icmp_errors_sent",
        "ICMP errors sent (fragmentation needed, TTL exceeded).",
    )
    .sample(vec![], t.pipeline.icmp_sent);
    x.counter("fragmented", "Datagrams fragmented to fit the tunnel.")
        .sample(vec![], t.pipeline.fragmented);
    x.counter(
        "checksums_finished",
        "Partial TCP/UDP checksums (left to the device by a local sender) finished before tunnelling.",
    )
    .sample(vec![], t.pipeline.checksums_finished);
    x.counter(
        "mss_clamped",
        "TCP SYNs whose MSS option was lowered to fit the tunnel MTU (mss_clamp).",
    )
    .sample(vec![], t.pipeline.mss_clamped);
    x.counter(
        "superframes_segmented",
        "TCP super-frames (a guest's TSO, larger than one AF_XDP frame) cut into segments.",
    )
    .sample(vec![], t.pipeline.segmented);
    x.counter("segments", "Segments written from TCP super-frames.")
        .sample(vec![], t.pipeline.segments_out);
    x.counter(
        "superframes_segmented_to_path",
        "TCP super-frames cut smaller than the tunnel carries: to the MSS their destination announced or the MTU a Fragmentation Needed reported toward it.",
    )
    .sample(vec![], t.pipeline.segmented_to_path);
    x.counter(
        "capture_dropped",
        "Records homeward capture could not take (its queue was full); the packets were forwarded as usual.",
    )
    .sample(vec![], s.capture_dropped);
    if let SteeringReport::Counters(c) = &s.steering {
        let xdp = x.counter(
            "xdp_packets",
            "The XDP steering program's verdicts: steered to the workers, passed to the kernel, dropped.",
        );
        for (event, n) in [
            ("steered_ipv4", c.steered_ipv4),
            ("steered_arp", c.steered_arp),
            ("steered_ipip", c.steered_ipip),
            ("passed", c.passed),
            ("no_socket", c.no_socket),
            ("malformed_l2", c.malformed_l2),
            ("malformed_l3", c.malformed_l3),
            ("unknown_ingress", c.unknown_ingress),
            ("dropped_ipip", c.dropped_ipip),
        ] {
            xdp.sample(vec![label("event", event)], n);
        }
    }
    let frames = x.gauge(
        "frames",
        "Where each queue's UMEM frames are (free list, rings, kernel); unaccounted is a leak.",
    );
    for q in &s.frames {
        let f = &q.frames;
        for (place, n) in [
            ("free", f.free as i64),
            ("fill", f.fill as i64),
            ("rx", f.rx as i64),
            ("worker", f.worker as i64),
            ("held", f.held as i64),
            ("tx", f.tx as i64),
            ("completion", f.completion as i64),
            ("kernel_rx", f.kernel_rx as i64),
            ("kernel_tx", f.kernel_tx as i64),
            ("unaccounted", q.unaccounted),
        ] {
            frames.sample(
                vec![label("queue", q.queue.to_string()), label("place", place)],
                n,
            );
        }
    }
    let unresolved = s.next_hops.iter().filter(|h| h.mac.is_none()).count();
    x.gauge(
        "next_hops",
        "Tracked next hops of care-of addresses, by state.",
    )
    .sample(
        vec![label("state", "resolved")],
        s.next_hops.len() - unresolved,
    )
    .sample(vec![label("state", "unresolved")], unresolved);
    x.gauge(
        "maps_in_sync",
        "1 if the XDP maps hold exactly the binding table's bindings.",
    )
    .sample(vec![], u64::from(s.maps_in_sync));
}

/// The histograms a role observes into, registered once.
#[derive(Debug, Clone)]
pub struct Histograms {
    /// Home agent: a binding change's arrival (registration or bind) to
    /// the first packet forwarded under it.
    pub binding_change_to_first_packet: Histogram,
    /// Home agent: one store commit (a burst of registrations, an admin change).
    pub store_commit: Histogram,
    /// Agent: the VM's resume to its registration accepted.
    pub resume_to_registered: Histogram,
}

impl Histograms {
    pub fn new() -> Histograms {
        // 100 us .. ~6.5 s.
        let latency = || Histogram::new(exponential_buckets(0.0001, 2.0, 17));
        Histograms {
            binding_change_to_first_packet: latency(),
            store_commit: latency(),
            resume_to_registered: latency(),
        }
    }
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms::new()
    }
}

/// What a scrape asks the control loop for: it answers on the sender.
pub type ScrapeRequest = Sender<Exposition>;

/// A role's metrics: the endpoint (if configured), the scrapes it asks
/// the control loop, and the histograms the loop observes into.
pub struct Metrics {
    config: Option<MetricsConfig>,
    server: Option<MetricsServer>,
    scrapes: (Sender<ScrapeRequest>, Receiver<ScrapeRequest>),
    pub histograms: Histograms,
}

impl Metrics {
    /// Not serving yet; see [`Metrics::start`].
    pub fn new(config: Option<MetricsConfig>) -> Metrics {
        Metrics {
            config,
            server: None,
            scrapes: channel::unbounded(),
            histograms: Histograms::new(),
        }
    }

    /// Serves the endpoint if configured and not serving.
    pub fn start(&mut self) -> Result<(), String> {
        match (self.config, &self.server) {
            (Some(c), None) => {
                self.server = Some(MetricsServer::start(
                    c.addr,
                    self.scrapes.0.clone(),
                    &self.histograms,
                )?);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// [`Metrics::start`] where the data path must run on without it (after
    /// a takeover): a failure is logged.
    pub fn start_or_log(&mut self) {
        if let Err(e) = self.start() {
            tracing::error!("no metrics: {e}");
        }
    }

    /// Stops serving (before a takeover successor binds the same port).
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// The scrapes to answer with [`Exposition`]s.
    pub fn scrapes(&self) -> &Receiver<ScrapeRequest> {
        &self.scrapes.1
    }

    /// The per-binding series cap.
    pub fn binding_series(&self) -> usize {
        self.config.map_or(0, |c| c.binding_series)
    }
}

/// The running endpoint; dropping it stops the thread.
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    server: Option<Arc<tiny_http::Server>>,
    thread: Option<JoinHandle<()>>,
}

/// The last exposition, encoded at scrape time.
#[derive(Debug, Default)]
struct Latest(Mutex<Exposition>);

impl Collector for Latest {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let x = self.0.lock().map_err(|_| std::fmt::Error)?;
        for f in &x.families {
            let mut m = encoder.encode_descriptor(f.name, f.help, f.unit.as_ref(), f.kind)?;
            for (labels, v) in &f.samples {
                let mut s = m.encode_family(labels)?;
                match f.kind {
                    MetricType::Counter => s.encode_counter::<NoLabelSet, f64, f64>(v, None)?,
                    _ => s.encode_gauge(v)?,
                }
            }
        }
        Ok(())
    }
}

impl MetricsServer {
    /// Serves `http://addr/metrics`; each scrape sends a request on
    /// `scrapes` and waits for the control loop's answer (at most 2 s: a
    /// stalled loop yields an error, not a stale page).
    pub fn start(
        addr: SocketAddr,
        scrapes: Sender<ScrapeRequest>,
        histograms: &Histograms,
    ) -> Result<MetricsServer, String> {
        let server = Arc::new(tiny_http::Server::http(addr).map_err(|e| {
            format!("cannot serve metrics on {addr}: {e} (is the address this host's and the port free?)")
        })?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("metrics: {addr} is not an IP address"))?;
        let latest = Arc::new(Latest::default());
        let mut registry = Registry::with_prefix("homeward");
        registry.register_with_unit(
            "binding_change_to_first_packet",
            "Home agent: from a binding change's arrival (a registration or a bind that made or moved it) to the first packet forwarded under it.",
            Unit::Seconds,
            histograms.binding_change_to_first_packet.clone(),
        );
        registry.register_with_unit(
            "store_commit",
            "Home agent: one durable store commit (a burst of registrations or an admin change).",
            Unit::Seconds,
            histograms.store_commit.clone(),
        );
        registry.register_with_unit(
            "resume_to_registered",
            "Agent: from the VM's resume after a migration to its registration accepted.",
            Unit::Seconds,
            histograms.resume_to_registered.clone(),
        );
        registry.register_collector(Box::new(latest.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, server) = (stop.clone(), server.clone());
            std::thread::Builder::new()
                .name("homeward-metrics".into())
                .spawn(move || serve(&server, &registry, &latest, &scrapes, &stop))
                .map_err(|e| format!("cannot start the metrics thread: {e}"))?
        };
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
        Ok(MetricsServer {
            addr,
            stop,
            server: Some(server),
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    /// Stops at once (a takeover successor binds the same port next).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(server) = &self.server {
            server.unblock();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The last reference: tiny_http wakes its accept thread, which
        // closes the listener after this returns. Wait (bounded) until the
        // port refuses connections, so a takeover successor finds it free.
        drop(self.server.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(50)).is_ok()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

const CONTENT_TYPE: &str =
    "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8";

fn serve(
    server: &tiny_http::Server,
    registry: &Registry,
    latest: &Latest,
    scrapes: &Sender<ScrapeRequest>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv() {
            Ok(r) => r,
            // Unblocked by drop, or a failed accept.
            Err(e) => {
                if !stop.load(Ordering::Relaxed) {
                    tracing::warn!("metrics: {e}");
                }
                continue;
            }
        };
        let response = match (request.method(), request.url()) {
            (tiny_http::Method::Get, "/metrics") => match scrape(registry, latest, scrapes) {
                Ok(body) => {
                    let response = tiny_http::Response::from_string(body);
                    match CONTENT_TYPE.parse::<tiny_http::Header>() {
                        Ok(h) => response.with_header(h),
                        Err(()) => response,
                    }
                }
                Err(e) => tiny_http::Response::from_string(e).with_status_code(503),
            },
            _ => tiny_http::Response::from_string("homeward: metrics are at /metrics\n")
                .with_status_code(404),
        };
        if let Err(e) = request.respond(response) {
            tracing::debug!("metrics: cannot answer a scrape: {e}");
        }
    }
}

fn scrape(
    registry: &Registry,
    latest: &Latest,
    scrapes: &Sender<ScrapeRequest>,
) -> Result<String, String> {
    let (tx, rx): (Sender<Exposition>, Receiver<Exposition>) = channel::bounded(1);
    scrapes
        .send(tx)
        .map_err(|_| "homeward is shutting down\n".to_string())?;
    let x = rx
        .recv_timeout(Duration::from_secs(2))
        .map_err(|_| "homeward's control loop did not answer within 2 s\n".to_string())?;
    *latest
        .0
        .lock()
        .map_err(|_| "metrics lock poisoned\n".to_string())? = x;
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, registry)
        .map_err(|e| format!("encoding the metrics: {e}\n"))?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_scrape_asks_the_loop_and_encodes_openmetrics() {
        let mut m = Metrics::new(Some(MetricsConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            binding_series: 10,
        }));
        m.start().unwrap();
        let addr = m.server.as_ref().unwrap().addr;
        m.histograms.store_commit.observe(0.003);
        // The control loop's side: answer each scrape with its state.
        let scrapes = m.scrapes().clone();
        let loop_ = std::thread::spawn(move || {
            let reply = scrapes.recv().unwrap();
            let mut x = Exposition::default();
            x.counter("drops", "Frames dropped, by reason.")
                .sample(vec![label("reason", "no_binding")], 3u64)
                .sample(vec![label("reason", "ttl_exceeded")], 0u64);
            x.gauge("bindings", "Bindings.")
                .sample(vec![label("state", "forwarding")], 2usize);
            reply.send(x).unwrap();
        });
        let page = get(addr, "/metrics");
        loop_.join().unwrap();
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("application/openmetrics-text"), "{page}");
        for line in [
            "# TYPE homeward_drops counter",
            "homeward_drops_total{reason=\"no_binding\"} 3",
            "homeward_bindings{state=\"forwarding\"} 2",
            "# TYPE homeward_store_commit_seconds histogram",
            "homeward_store_commit_seconds_count 1",
            "# EOF",
        ] {
            assert!(page.contains(line), "{line} missing in\n{page}");
        }
        assert!(get(addr, "/").starts_with("HTTP/1.1 404"));
        // No answer from the loop: an error, not a stale page.
        let page = get(addr, "/metrics");
        assert!(page.starts_with("HTTP/1.1 503"), "{page}");
        m.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after stop"
        );
    }

    #[test]
    fn a_port_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut m = Metrics::new(Some(MetricsConfig {
            addr: taken.local_addr().unwrap(),
            binding_series: 10,
        }));
        let e = m.start().unwrap_err();
        assert!(e.contains("cannot serve metrics on"), "{e}");
    }
}
