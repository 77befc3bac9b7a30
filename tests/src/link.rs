//! Links inside the lab: veth pairs between namespaces, bridges, addresses,
//! MTU, GRO; and the MAC address type the decoders use too.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::netns::Netns;

/// An Ethernet address. Displays as lowercase `aa:bb:cc:dd:ee:ff`, as
/// `ip` and the scapy decoders print it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The broadcast address.
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    /// All zeros (the target hardware address of an ARP request).
    pub const ZERO: Mac = Mac([0; 6]);

    /// A locally administered unicast address derived from `tag` and
    /// `index`: `02:h:h:h:h:index` with `h` a hash of the tag. The same tag
    /// gives the same addresses on every run.
    pub fn derive(tag: &str, index: u8) -> Mac {
        // FNV-1a, 32 bits: stable across Rust versions, unlike std's hasher.
        let mut h: u32 = 0x811c_9dc5;
        for b in tag.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let [a, b, c, d] = h.to_be_bytes();
        Mac([0x02, a, b, c, d, index])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

/// Error of [`Mac::from_str`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMac(pub String);

impl fmt::Display for BadMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a MAC address: {:?}", self.0)
    }
}

impl std::error::Error for BadMac {}

impl FromStr for Mac {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Mac, BadMac> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| BadMac(s.into()))?;
            if part.is_empty() || part.len() > 2 {
                return Err(BadMac(s.into()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| BadMac(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.into()));
        }
        Ok(Mac(out))
    }
}

impl TryFrom<String> for Mac {
    type Error = BadMac;

    fn try_from(s: String) -> Result<Mac, BadMac> {
        s.parse()
    }
}

impl PartialEq<str> for Mac {
    fn eq(&self, other: &str) -> bool {
        other.parse::<Mac>().is_ok_and(|m| m == *self)
    }
}

impl PartialEq<&str> for Mac {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

/// An interface of the lab as built: its namespace-local name, MAC, and
/// IPv4 address with prefix length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    /// Interface name inside its namespace (at most 15 bytes).
    pub name: String,
    /// Its Ethernet address.
    pub mac: Mac,
    /// Its IPv4 address.
    pub addr: Ipv4Addr,
    /// Prefix length of its subnet.
    pub prefix: u8,
}

/// One end of a veth pair to create: in which namespace, under which name,
/// with which MAC, address and MTU.
#[derive(Clone, Copy, Debug)]
pub struct VethEnd<'a> {
    /// Namespace the end lives in.
    pub ns: &'a Netns,
    /// Interface name (at most 15 bytes).
    pub name: &'a str,
    /// Ethernet address.
    pub mac: Mac,
    /// Address and prefix length to assign, if any.
    pub addr: Option<(Ipv4Addr, u8)>,
    /// MTU.
    pub mtu: u32,
    /// RX and TX queues.
    pub queues: u32,
}

impl<'a> VethEnd<'a> {
    /// An end with MTU 1500 and no address.
    pub fn new(ns: &'a Netns, name: &'a str, mac: Mac) -> VethEnd<'a> {
        VethEnd {
            ns,
            name,
            mac,
            addr: None,
            mtu: 1500,
            queues: 1,
        }
    }

    /// With `n` RX and TX queues (for multi-queue AF_XDP).
    pub fn queues(mut self, n: u32) -> VethEnd<'a> {
        self.queues = n;
        self
    }

    /// With an address.
    pub fn addr(mut self, addr: Ipv4Addr, prefix: u8) -> VethEnd<'a> {
        self.addr = Some((addr, prefix));
        self
    }

    /// With an MTU.
    pub fn mtu(mut self, mtu: u32) -> VethEnd<'a> {
        self.mtu = mtu;
        self
    }
}

/// Creates a veth pair directly between two namespaces (nothing appears in
/// the root namespace, so names never collide across tests), sets MACs,
/// MTUs, addresses, and brings both ends up. The pair goes away with
/// either namespace.
#[track_caller]
pub fn veth_pair(a: &VethEnd<'_>, b: &VethEnd<'_>) {
    for end in [a, b] {
        assert!(
            !end.name.is_empty() && end.name.len() <= 15,
            "interface name {:?} must be 1 to 15 bytes",
            end.name
        );
    }
    let (a_mac, a_mtu, b_mac, b_mtu) = (
        a.mac.to_string(),
        a.mtu.to_string(),
        b.mac.to_string(),
        b.mtu.to_string(),
    );
    let (a_q, b_q) = (a.queues.to_string(), b.queues.to_string());
    a.ns.ip(&[
        "link",
        "add",
        "name",
        a.name,
        "address",
        &a_mac,
        "mtu",
        &a_mtu,
        "numrxqueues",
        &a_q,
        "numtxqueues",
        &a_q,
        "type",
        "veth",
        "peer",
        "name",
        b.name,
        "address",
        &b_mac,
        "mtu",
        &b_mtu,
        "numrxqueues",
        &b_q,
        "numtxqueues",
        &b_q,
        "netns",
        b.ns.name(),
    ]);
    for end in [a, b] {
        if let Some((addr, prefix)) = end.addr {
            end.ns.add_addr(end.name, addr, prefix);
        }
        end.ns.link_up(end.name);
    }
    for end in [a, b] {
        end.ns.wait_link_up(end.name, LINK_UP_TIMEOUT);
    }
}

/// How long the builders wait for a link to be operationally up.
pub const LINK_UP_TIMEOUT: Duration = Duration::from_secs(10);

impl Netns {
    /// `ip link set DEV up`.
    #[track_caller]
    pub fn link_up(&self, dev: &str) {
        self.ip(&["link", "set", "dev", dev, "up"]);
    }

    /// Waits until `dev` is operationally up and has its real qdisc: the
    /// kernel activates a link asynchronously (linkwatch), and until then
    /// it silently drops what is sent through it. Panics after `timeout`.
    #[track_caller]
    pub fn wait_link_up(&self, dev: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.ip(&["-j", "link", "show", "dev", dev]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            let link = &v[0];
            let up = link["operstate"] == "UP" && link["qdisc"] != "noop";
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{dev} in {} is not up after {timeout:?}: {out}",
                self.name()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// `ip link set DEV down`.
    #[track_caller]
    pub fn link_down(&self, dev: &str) {
        self.ip(&["link", "set", "dev", dev, "down"]);
    }

    /// `ip addr add ADDR/PREFIX dev DEV`.
    #[track_caller]
    pub fn add_addr(&self, dev: &str, addr: Ipv4Addr, prefix: u8) {
        self.ip(&["addr", "add", &format!("{addr}/{prefix}"), "dev", dev]);
    }

    /// `ip link set DEV mtu MTU`.
    #[track_caller]
    pub fn set_mtu(&self, dev: &str, mtu: u32) {
        self.ip(&["link", "set", "dev", dev, "mtu", &mtu.to_string()]);
    }

    /// `ip route replace DST via GW` (`dst` like `default` or
    /// `192.0.2.0/24`).
    #[track_caller]
    pub fn route_via(&self, dst: &str, gw: Ipv4Addr) {
        self.ip(&["route", "replace", dst, "via", &gw.to_string()]);
    }

    /// Turns GRO on or off on a device (`ethtool -K DEV gro on|off`). A
    /// frame XDP-redirected into a veth is dropped unless the peer runs an
    /// XDP program or has GRO on.
    #[track_caller]
    pub fn set_gro(&self, dev: &str, on: bool) {
        let state = if on { "on" } else { "off" };
        let out = self.exec(&["ethtool", "-K", dev, "gro", state]);
        assert!(
            out.status.success(),
            "`ethtool -K {dev} gro {state}` in {} failed: {} (is ethtool installed? scripts/install-deps.sh)",
            self.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// Makes the kernel compute transport checksums itself when sending on
    /// `dev` (`ethtool -K DEV tx off`). A veth otherwise hands frames on with
    /// a partial checksum (offload), which no real wire carries: an XDP or
    /// AF_XDP forwarder on the peer would pass it on unfinished.
    #[track_caller]
    pub fn full_checksums(&self, dev: &str) {
        let out = self.exec(&["ethtool", "-K", dev, "tx", "off"]);
        assert!(
            out.status.success(),
            "`ethtool -K {dev} tx off` in {} failed: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// Transmit queue `i` of `dev` serves CPU `i` (XPS), so frames sent from
    /// (or forwarded on) CPU `i` leave on queue `i`: that is what spreads a
    /// veth's traffic over its receiving peer's queues.
    #[track_caller]
    pub fn spread_tx_queues(&self, dev: &str, queues: u32) {
        for q in 0..queues {
            let mask = 1u64 << (q % 64);
            self.sh_ok(&format!(
                "echo {mask:x} > /sys/class/net/{dev}/queues/tx-{q}/xps_cpus"
            ));
        }
    }

    /// Whether GRO is on for a device, from `ethtool -k`.
    #[track_caller]
    pub fn gro(&self, dev: &str) -> bool {
        self.exec_ok(&["ethtool", "-k", dev])
            .lines()
            .find_map(|l| l.trim().strip_prefix("generic-receive-offload:"))
            .is_some_and(|v| v.trim().starts_with("on"))
    }

    /// Creates a bridge that forwards at once (STP off, no forwarding delay,
    /// no multicast snooping) and brings it up.
    #[track_caller]
    pub fn add_bridge(&self, name: &str) {
        self.ip(&[
            "link",
            "add",
            "name",
            name,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ]);
        self.link_up(name);
    }

    /// Makes `dev` a port of `bridge`.
    #[track_caller]
    pub fn enslave(&self, dev: &str, bridge: &str) {
        self.ip(&["link", "set", "dev", dev, "master", bridge]);
    }

    /// The MAC address of a device, from `ip link`.
    #[track_caller]
    pub fn mac_of(&self, dev: &str) -> Mac {
        let out = self.ip(&["-o", "link", "show", "dev", dev]);
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("no link/ether address for {dev} in {out:?}"))
    }

    /// Disables IPv6 in the namespace (current and future devices), so that
    /// captures hold no router solicitations, DAD or MLD.
    #[track_caller]
    pub fn disable_ipv6(&self) {
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m: Mac = "02:AB:cd:00:01:ff".parse().unwrap();
        assert_eq!(m, Mac([2, 0xab, 0xcd, 0, 1, 0xff]));
        assert_eq!(m.to_string(), "02:ab:cd:00:01:ff");
        assert!(m == "02:ab:cd:00:01:ff");
        assert!("02:ab:cd:00:01".parse::<Mac>().is_err());
        assert!("02:ab:cd:00:01:ff:00".parse::<Mac>().is_err());
        assert!("02:ab:cd:00:01:fg".parse::<Mac>().is_err());
        let json: Mac = serde_json::from_str("\"ff:ff:ff:ff:ff:ff\"").unwrap();
        assert_eq!(json, Mac::BROADCAST);
    }

    #[test]
    fn derived_macs_are_stable_local_unicast() {
        let a = Mac::derive("arp", 1);
        assert_eq!(a, Mac::derive("arp", 1));
        assert_ne!(a, Mac::derive("arp", 2));
        assert_ne!(a, Mac::derive("encap", 1));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered, unicast");
    }
}
