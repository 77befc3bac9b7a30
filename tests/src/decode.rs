//! Rust side of the scapy decoders in `tests/scapy/`: runs them with
//! Debian's `/usr/bin/python3` (the one that has scapy) and parses their
//! JSON.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::link::Mac;

/// The interpreter that has Debian's python3-scapy. The `python3` first on
/// PATH may be another one, without scapy.
pub const PYTHON: &str = "/usr/bin/python3";

/// Path of a helper script in `tests/scapy/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scapy")
        .join(name)
}

/// Runs `/usr/bin/python3 tests/scapy/SCRIPT ARGS...` in the current
/// (root) namespace, which only reads files here, and parses its stdout as
/// JSON. Panics with the script's stderr on failure.
#[track_caller]
pub fn run_script<T: DeserializeOwned>(name: &str, args: &[&str]) -> T {
    let path = script(name);
    let out = Command::new(PYTHON)
        // Keep tests/scapy/ free of __pycache__.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_json(name, &out.stdout)
}

/// Parses the JSON a helper printed; panics with the text on error.
#[track_caller]
pub(crate) fn parse_json<T: DeserializeOwned>(what: &str, stdout: &[u8]) -> T {
    serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "{what} printed unexpected JSON ({e}): {}",
            String::from_utf8_lossy(stdout)
        )
    })
}

/// Transport details of an IPv4 packet (from the first fragment or an
/// unfragmented datagram).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct L4 {
    /// `"udp"`, `"tcp"`, `"icmp"` or `"other"`.
    pub kind: String,
    /// UDP/TCP source port.
    #[serde(default)]
    pub sport: Option<u16>,
    /// UDP/TCP destination port.
    #[serde(default)]
    pub dport: Option<u16>,
    /// The UDP length field.
    #[serde(default)]
    pub udp_len: Option<u16>,
    /// TCP flags as scapy prints them (`"S"`, `"PA"`, ...).
    #[serde(default)]
    pub tcp_flags: Option<String>,
    /// TCP sequence number.
    #[serde(default)]
    pub tcp_seq: Option<u32>,
    /// TCP acknowledgement number.
    #[serde(default)]
    pub tcp_ack: Option<u32>,
    /// The TCP MSS option's value, if the segment has one.
    #[serde(default)]
    pub tcp_mss: Option<u16>,
    /// ICMP type.
    #[serde(default)]
    pub icmp_type: Option<u8>,
    /// ICMP code.
    #[serde(default)]
    pub icmp_code: Option<u8>,
    /// ICMP echo identifier.
    #[serde(default)]
    pub icmp_id: Option<u16>,
    /// ICMP echo sequence number.
    #[serde(default)]
    pub icmp_seq: Option<u16>,
    /// Transport checksum verified by scapy: only for complete datagrams;
    /// `None` for fragments and for UDP without checksum.
    #[serde(default)]
    pub checksum_valid: Option<bool>,
    /// Transport payload (after the UDP/TCP/ICMP header), hex.
    #[serde(default)]
    pub payload_hex: String,
}

impl L4 {
    /// The transport payload bytes.
    pub fn payload(&self) -> Vec<u8> {
        from_hex(&self.payload_hex)
    }
}

/// One IPv4 header as decoded by scapy.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Ipv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number (4 for IPIP, 17 UDP, 6 TCP, 1 ICMP).
    pub proto: u8,
    /// Time to live.
    pub ttl: u8,
    /// Type of service / DSCP+ECN byte.
    pub tos: u8,
    /// Don't Fragment flag.
    pub df: bool,
    /// More Fragments flag.
    pub mf: bool,
    /// Fragment offset in 8-byte units.
    pub frag: u16,
    /// Identification.
    pub id: u16,
    /// Total length field.
    pub len: u16,
    /// Header length in 32-bit words.
    pub ihl: u8,
    /// Header checksum verified by scapy (deleted, rebuilt, compared);
    /// `None` for headers scapy itself rebuilt when reassembling.
    pub checksum_valid: Option<bool>,
    /// Bytes of IP payload in this packet.
    pub payload_len: usize,
    /// The IP payload, hex (absent for outer headers).
    #[serde(default)]
    pub payload_hex: Option<String>,
    /// Transport details (absent for outer headers and non-first fragments).
    #[serde(default)]
    pub l4: Option<L4>,
}

impl Ipv4 {
    /// Whether this is a fragment (MF set or non-zero offset).
    pub fn is_fragment(&self) -> bool {
        self.mf || self.frag != 0
    }

    /// The IP payload bytes (empty when not decoded).
    pub fn payload(&self) -> Vec<u8> {
        self.payload_hex
            .as_deref()
            .map(from_hex)
            .unwrap_or_default()
    }

    /// UDP/TCP ports as (source, destination), if decoded.
    pub fn ports(&self) -> Option<(u16, u16)> {
        let l4 = self.l4.as_ref()?;
        Some((l4.sport?, l4.dport?))
    }
}

/// One IPv4-in-IPv4 packet as captured.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct IpipPacket {
    /// Position in the pcap (counting every packet).
    pub index: usize,
    /// pcap timestamp, seconds.
    pub time: f64,
    /// Ethernet source (None on a link without Ethernet headers).
    pub eth_src: Option<Mac>,
    /// Ethernet destination.
    pub eth_dst: Option<Mac>,
    /// Outer header.
    pub outer: Ipv4,
    /// Inner header, unless the outer packet is a fragment (see
    /// [`IpipCapture::outer_reassembled`]).
    pub inner: Option<Ipv4>,
}

/// Outer fragments reassembled by scapy.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct OuterReassembled {
    /// Timestamp of the last fragment.
    pub time: f64,
    /// How many outer fragments made it.
    pub fragments: usize,
    /// The reassembled outer header (checksum not checked: rebuilt).
    pub outer: Ipv4,
    /// The inner datagram (or fragment) it carried.
    pub inner: Option<Ipv4>,
}

/// An inner datagram after scapy reassembled the inner fragments.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct InnerDatagram {
    /// The datagram (header fields of the first fragment, total length of
    /// the whole).
    #[serde(flatten)]
    pub ip: Ipv4,
    /// Timestamp of the packet that completed it.
    pub time: f64,
    /// Whether it is whole (false: a fragment whose siblings were missing).
    pub complete: bool,
    /// How many fragments it was made of (1 when not fragmented).
    pub fragments: usize,
}

/// What `ipip.py` finds in a pcap.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct IpipCapture {
    /// Every IP protocol-4 packet, in capture order.
    pub packets: Vec<IpipPacket>,
    /// Outer fragments put back together.
    pub outer_reassembled: Vec<OuterReassembled>,
    /// Every inner datagram, inner fragments reassembled.
    pub inner_datagrams: Vec<InnerDatagram>,
}

/// Decodes the IPIP packets of a pcap with `tests/scapy/ipip.py`.
#[track_caller]
pub fn decode_ipip(pcap: &Path) -> IpipCapture {
    run_script("ipip.py", &[&pcap.to_string_lossy()])
}

/// Decodes the plain (not IP-in-IP) IPv4 packets of a pcap with
/// `tests/scapy/ipv4.py`, in capture order.
#[track_caller]
pub fn decode_ipv4(pcap: &Path) -> Vec<Ipv4> {
    run_script("ipv4.py", &[&pcap.to_string_lossy()])
}

/// ARP operation codes.
pub const ARP_REQUEST: u16 = 1;
/// ARP reply.
pub const ARP_REPLY: u16 = 2;

/// One ARP packet as captured.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ArpPacket {
    /// Position in the pcap (counting every packet).
    pub index: usize,
    /// pcap timestamp, seconds.
    pub time: f64,
    /// Ethernet source.
    pub eth_src: Option<Mac>,
    /// Ethernet destination.
    pub eth_dst: Option<Mac>,
    /// The 802.1Q VLAN id, if the frame was tagged.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// 1 request, 2 reply.
    pub op: u16,
    /// Sender hardware address.
    pub hwsrc: Mac,
    /// Sender protocol address.
    pub psrc: Ipv4Addr,
    /// Target hardware address.
    pub hwdst: Mac,
    /// Target protocol address.
    pub pdst: Ipv4Addr,
}

impl ArpPacket {
    /// An ARP request.
    pub fn is_request(&self) -> bool {
        self.op == ARP_REQUEST
    }

    /// An ARP reply.
    pub fn is_reply(&self) -> bool {
        self.op == ARP_REPLY
    }

    /// A gratuitous ARP (request or reply announcing the sender's own
    /// address: sender and target protocol addresses equal).
    pub fn is_gratuitous(&self) -> bool {
        self.psrc == self.pdst
    }
}

#[derive(Deserialize)]
struct ArpOut {
    packets: Vec<ArpPacket>,
}

/// Decodes the ARP packets of a pcap with `tests/scapy/arp.py`.
#[track_caller]
pub fn decode_arp(pcap: &Path) -> Vec<ArpPacket> {
    run_script::<ArpOut>("arp.py", &[&pcap.to_string_lossy()]).packets
}

/// Hex to bytes (the decoders print lowercase hex); panics on bad input.
pub fn from_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len() & 1 == 0, "odd-length hex string");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// Bytes to lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let b: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&b)), b);
    }

    #[test]
    fn parses_ipip_json() {
        let json = r#"{"packets":[{"index":0,"time":1.5,"eth_src":"02:00:00:00:00:01","eth_dst":"02:00:00:00:00:02",
          "outer":{"src":"198.51.100.1","dst":"198.51.100.2","proto":4,"ttl":64,"tos":0,"df":true,"mf":false,"frag":0,"id":1,"len":148,"ihl":5,"checksum_valid":true,"payload_len":128},
          "inner":{"src":"192.0.2.10","dst":"192.0.2.50","proto":17,"ttl":63,"tos":0,"df":false,"mf":false,"frag":0,"id":7,"len":128,"ihl":5,"checksum_valid":true,"payload_len":108,"payload_hex":"04d2162e","l4":{"kind":"udp","sport":1234,"dport":5678,"udp_len":108,"checksum_valid":true,"payload_hex":"0001"}}}],
          "outer_reassembled":[],
          "inner_datagrams":[{"src":"192.0.2.10","dst":"192.0.2.50","proto":17,"ttl":63,"tos":0,"df":false,"mf":false,"frag":0,"id":99,"len":3028,"ihl":5,"checksum_valid":null,"payload_len":3008,"payload_hex":"","l4":null,"time":2.0,"complete":true,"fragments":3}]}"#;
        let cap: IpipCapture = parse_json("test", json.as_bytes());
        let p = &cap.packets[0];
        assert_eq!(p.outer.dst, Ipv4Addr::new(198, 51, 100, 2));
        assert!(p.outer.df);
        let inner = p.inner.as_ref().unwrap();
        assert_eq!(inner.ports(), Some((1234, 5678)));
        assert_eq!(inner.l4.as_ref().unwrap().payload(), vec![0, 1]);
        assert_eq!(cap.inner_datagrams[0].fragments, 3);
        assert_eq!(cap.inner_datagrams[0].ip.checksum_valid, None);
    }
}
