//! Traffic from inside a namespace with the kernel's own sockets (UDP with
//! or without DF, a TCP connect, ping, a UDP listener), and readers for
//! `ip route get` and `ip neigh show`.

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::decode::{from_hex, parse_json, script, to_hex, PYTHON};
use crate::link::Mac;
use crate::netns::{Netns, NsChild};

/// A deterministic payload of `len` bytes: byte `i` is `(i + seed) % 256`.
pub fn payload_pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 + u64::from(seed)) as u8)
        .collect()
}

/// What to send with [`Netns::send_udp`].
#[derive(Clone, Debug)]
pub struct UdpSend {
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Destination port.
    pub dport: u16,
    /// Source address to bind (None: the kernel picks).
    pub src: Option<Ipv4Addr>,
    /// Source port to bind (0: the kernel picks).
    pub sport: u16,
    /// The UDP payload of each datagram.
    pub payload: Vec<u8>,
    /// DF: true sets IP_PMTUDISC_DO (DF on, never fragmented locally,
    /// EMSGSIZE above the known path MTU); false sets IP_PMTUDISC_DONT (DF
    /// off, the kernel fragments).
    pub df: bool,
    /// How many datagrams.
    pub count: u32,
    /// Pause between datagrams.
    pub interval: Duration,
}

impl UdpSend {
    /// One datagram of `len` payload bytes ([`payload_pattern`] seed 0),
    /// DF off, any source.
    pub fn new(dst: Ipv4Addr, dport: u16, len: usize) -> UdpSend {
        UdpSend {
            dst,
            dport,
            src: None,
            sport: 0,
            payload: payload_pattern(len, 0),
            df: false,
            count: 1,
            interval: Duration::from_millis(10),
        }
    }

    /// With DF on or off.
    pub fn df(mut self, df: bool) -> UdpSend {
        self.df = df;
        self
    }

    /// From a fixed source port.
    pub fn sport(mut self, sport: u16) -> UdpSend {
        self.sport = sport;
        self
    }

    /// From a fixed source address.
    pub fn src(mut self, src: Ipv4Addr) -> UdpSend {
        self.src = Some(src);
        self
    }

    /// With this payload.
    pub fn payload(mut self, payload: Vec<u8>) -> UdpSend {
        self.payload = payload;
        self
    }

    /// `count` datagrams, `interval` apart.
    pub fn repeat(mut self, count: u32, interval: Duration) -> UdpSend {
        self.count = count;
        self.interval = interval;
        self
    }
}

/// Outcome of one `send()` of a datagram.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct SendResult {
    /// Bytes accepted by the kernel.
    #[serde(default)]
    pub sent: Option<usize>,
    /// errno name (`EMSGSIZE`, ...) if the send failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// What [`Netns::send_udp`] did.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct UdpSendReport {
    /// The source port used.
    pub sport: u16,
    /// One entry per datagram.
    pub results: Vec<SendResult>,
    /// The socket's path MTU (IP_MTU) after the last send.
    pub path_mtu: Option<u32>,
}

impl UdpSendReport {
    /// How many datagrams the kernel accepted.
    pub fn sent(&self) -> usize {
        self.results.iter().filter(|r| r.sent.is_some()).count()
    }

    /// The errno names of the failed sends.
    pub fn errors(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter_map(|r| r.error.as_deref())
            .collect()
    }
}

/// What [`Netns::udp_flood`] did.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct FloodReport {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// Sends that failed (ENOBUFS, ...).
    pub errors: u64,
    /// How long it sent.
    pub seconds: f64,
}

/// What [`Netns::tcp_connect`] did.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct TcpAttempt {
    /// The source port used.
    pub sport: u16,
    /// Whether the handshake completed.
    pub connected: bool,
    /// Payload bytes written after connecting.
    pub sent: usize,
    /// errno name, `"timeout"`, or None.
    pub error: Option<String>,
}

/// A route as `ip route get` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Output device.
    pub dev: Option<String>,
    /// Gateway, if not on-link.
    pub via: Option<Ipv4Addr>,
    /// Preferred source address.
    pub src: Option<Ipv4Addr>,
    /// MTU of the route or of a cached PMTU exception.
    pub mtu: Option<u32>,
    /// Seconds left of a cached exception (`expires`).
    pub expires: Option<u32>,
    /// Whether a cached exception is shown (`cache`).
    pub cached: bool,
    /// The whole output.
    pub raw: String,
}

impl Route {
    /// Parses the text output of `ip route get`.
    pub fn parse(raw: &str) -> Route {
        let words: Vec<&str> = raw.split_whitespace().collect();
        let after = |key: &str| -> Option<&str> {
            let i = words.iter().position(|w| *w == key)?;
            let next = *words.get(i + 1)?;
            // `mtu lock 1400`
            if next == "lock" {
                words.get(i + 2).copied()
            } else {
                Some(next)
            }
        };
        Route {
            dev: after("dev").map(str::to_string),
            via: after("via").and_then(|v| v.parse().ok()),
            src: after("src").and_then(|v| v.parse().ok()),
            mtu: after("mtu").and_then(|v| v.parse().ok()),
            expires: after("expires").and_then(|v| v.trim_end_matches("sec").parse().ok()),
            cached: words.contains(&"cache"),
            raw: raw.to_string(),
        }
    }
}

/// A neighbour (ARP) entry as `ip -j neigh show` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbor {
    /// The IPv4 address.
    pub dst: Ipv4Addr,
    /// The device.
    pub dev: String,
    /// The link-layer address (None while INCOMPLETE or FAILED).
    pub lladdr: Option<Mac>,
    /// NUD states (`REACHABLE`, `STALE`, `INCOMPLETE`, `PERMANENT`, ...).
    pub state: Vec<String>,
}

impl Neighbor {
    /// Whether the entry has a usable link-layer address.
    pub fn is_resolved(&self) -> bool {
        self.lladdr.is_some()
            && !self
                .state
                .iter()
                .any(|s| s == "INCOMPLETE" || s == "FAILED")
    }
}

#[derive(Deserialize)]
struct RawNeighbor {
    dst: String,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

impl Netns {
    /// Sends UDP datagrams with the kernel's socket (a
    /// `/usr/bin/python3 tests/scapy/udp_send.py` run in this namespace).
    #[track_caller]
    pub fn send_udp(&self, opts: &UdpSend) -> UdpSendReport {
        let src = opts.src.map(|a| a.to_string()).unwrap_or_default();
        let args = [
            PYTHON.to_string(),
            script("udp_send.py").to_string_lossy().into_owned(),
            opts.dst.to_string(),
            opts.dport.to_string(),
            src,
            opts.sport.to_string(),
            if opts.df { "1" } else { "0" }.to_string(),
            opts.count.to_string(),
            opts.interval.as_millis().to_string(),
            to_hex(&opts.payload),
        ];
        parse_json("udp_send.py", self.exec_ok(&args).as_bytes())
    }

    /// Sends `len`-byte UDP datagrams to `dst:dport` as fast as the
    /// kernel socket takes them, for `seconds` (`tests/scapy/udp_flood.py`).
    #[track_caller]
    pub fn udp_flood(&self, dst: Ipv4Addr, dport: u16, len: usize, seconds: f64) -> FloodReport {
        let args = [
            PYTHON.to_string(),
            script("udp_flood.py").to_string_lossy().into_owned(),
            dst.to_string(),
            dport.to_string(),
            len.to_string(),
            seconds.to_string(),
        ];
        parse_json("udp_flood.py", self.exec_ok(&args).as_bytes())
    }

    /// Opens a TCP connection to `dst:dport` and, if it connects, sends
    /// `payload`; gives up after `timeout` (nobody needs to listen: the SYN
    /// and its retransmissions are what a tunnel test sees).
    #[track_caller]
    pub fn tcp_connect(
        &self,
        dst: Ipv4Addr,
        dport: u16,
        sport: u16,
        payload: &[u8],
        timeout: Duration,
    ) -> TcpAttempt {
        let args = [
            PYTHON.to_string(),
            script("tcp_connect.py").to_string_lossy().into_owned(),
            dst.to_string(),
            dport.to_string(),
            sport.to_string(),
            timeout.as_millis().to_string(),
            to_hex(payload),
        ];
        parse_json("tcp_connect.py", self.exec_ok(&args).as_bytes())
    }

    /// `ping -c COUNT -i 0.2 -W 1 DST`; its output, whatever the result.
    #[track_caller]
    pub fn ping(&self, dst: Ipv4Addr, count: u32) -> Output {
        self.exec(&[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            &dst.to_string(),
        ])
    }

    /// Whether `count` pings to `dst` got at least one answer.
    #[track_caller]
    pub fn ping_ok(&self, dst: Ipv4Addr, count: u32) -> bool {
        self.ping(dst, count).status.success()
    }

    /// `ip route get DST`.
    #[track_caller]
    pub fn route_get(&self, dst: Ipv4Addr) -> Route {
        Route::parse(&self.ip(&["route", "get", &dst.to_string()]))
    }

    /// `ip neigh show [dev DEV]`: the IPv4 neighbour entries.
    #[track_caller]
    pub fn neighbors(&self, dev: Option<&str>) -> Vec<Neighbor> {
        let mut args = vec!["-4", "-j", "neigh", "show"];
        if let Some(dev) = dev {
            args.extend(["dev", dev]);
        }
        let out = self.ip(&args);
        let raw: Vec<RawNeighbor> = if out.trim().is_empty() {
            Vec::new()
        } else {
            parse_json("ip -j neigh show", out.as_bytes())
        };
        raw.into_iter()
            .filter_map(|n| {
                Some(Neighbor {
                    dst: n.dst.parse().ok()?,
                    dev: n.dev.or_else(|| dev.map(str::to_string))?,
                    lladdr: n.lladdr.and_then(|m| m.parse().ok()),
                    state: n.state,
                })
            })
            .collect()
    }

    /// The neighbour entry for `addr`, if any.
    #[track_caller]
    pub fn neighbor(&self, addr: Ipv4Addr) -> Option<Neighbor> {
        self.neighbors(None).into_iter().find(|n| n.dst == addr)
    }

    /// Drops the neighbour cache of a device (`ip neigh flush dev DEV`).
    #[track_caller]
    pub fn flush_neighbors(&self, dev: &str) {
        self.ip(&["neigh", "flush", "dev", dev]);
    }

    /// Starts a UDP receiver on `port` (all addresses) in this namespace;
    /// returns once it is bound.
    #[track_caller]
    pub fn udp_listen(&self, port: u16) -> UdpListener {
        let script = script("udp_listen.py").to_string_lossy().into_owned();
        let port_s = port.to_string();
        let mut child = self.spawn(&[PYTHON, &script, "", &port_s]);
        assert!(
            child.wait_for_output("\"listening\"", Duration::from_secs(10)),
            "udp_listen.py on port {port} in {} did not start: {}",
            self.name(),
            child.stderr().trim()
        );
        UdpListener { child }
    }
}

/// A datagram received by a [`UdpListener`].
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Received {
    /// Sender address.
    pub src: Ipv4Addr,
    /// Sender port.
    pub sport: u16,
    /// Payload length.
    pub len: usize,
    /// Payload, hex.
    pub payload_hex: String,
    /// Receive time (Unix seconds).
    pub time: f64,
}

impl Received {
    /// The payload bytes.
    pub fn payload(&self) -> Vec<u8> {
        from_hex(&self.payload_hex)
    }
}

/// A UDP receiver running in a namespace (killed on drop).
#[derive(Debug)]
pub struct UdpListener {
    child: NsChild,
}

impl UdpListener {
    /// Datagrams received so far.
    pub fn received(&self) -> Vec<Received> {
        self.child
            .stdout()
            .lines()
            .filter(|l| l.contains("\"payload_hex\""))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until at least `n` datagrams arrived or `timeout` passed;
    /// returns what arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_route_get() {
        let r = Route::parse(
            "192.0.2.50 via 198.51.100.1 dev wan0 src 198.51.100.2 uid 0 \n    cache expires 597sec mtu 1400 \n",
        );
        assert_eq!(r.dev.as_deref(), Some("wan0"));
        assert_eq!(r.via, Some(Ipv4Addr::new(198, 51, 100, 1)));
        assert_eq!(r.src, Some(Ipv4Addr::new(198, 51, 100, 2)));
        assert_eq!(r.mtu, Some(1400));
        assert_eq!(r.expires, Some(597));
        assert!(r.cached);
        let r = Route::parse("192.0.2.1 dev lan0 src 192.0.2.10 uid 0 \n    cache \n");
        assert_eq!(r.via, None);
        assert_eq!(r.mtu, None);
    }

    #[test]
    fn pattern_is_deterministic() {
        assert_eq!(payload_pattern(3, 254), vec![254, 255, 0]);
    }
}
