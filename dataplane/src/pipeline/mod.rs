//! The per-packet pipeline of the home agent: a pure function from a received frame (in its
//! UMEM buffer) to a [`Verdict`], rewriting the frame in place.
//!
//! No I/O, no clock (time is `now_ns`), no allocation, no `unsafe`, no panic on any input:
//! every read of network data goes through `get`/`first_chunk` after one length check, and
//! every drop has a [`DropReason`] with its own counter.
//!
//! The XDP program steers three classes of frames here (untagged or with one 802.1Q tag):
//!
//! | class | module | result |
//! |---|---|---|
//! | IPv4 to a bound VM | `encap` (RFC 2003 §3.1) | outer IPv4 toward the care-of address, or an ICMP error (`icmp`), or [`Verdict::Fragments`] |
//! | ARP request for a bound VM | `arp` | proxy ARP reply (RFC 826, RFC 5944 §4.6) |
//! | IP-in-IP to the HA from a care-of address | `decap` (RFC 3024) | inner datagram on the home link |
//!
//! Layout: `ether` and `ipv4` are the header views, `checksum` the Internet checksum,
//! `ratelimit` the ICMP token bucket, `fragment` the RFC 791 fragmentation of tunnelled
//! datagrams, `partial` finishing partial checksums, `mss` TCP MSS clamping, `segment` cutting TCP
//! super-frames (TSO) into segments, `counters` the drop reasons and counters.

use std::net::Ipv4Addr;

mod arp;
mod binding_key;
mod checksum;
mod counters;
mod decap;
mod encap;
mod ether;
mod fragment;
mod icmp;
mod ipv4;
mod mss;
mod partial;
mod path_size;
mod ratelimit;
mod segment;
mod switchover;

#[cfg(test)]
mod foreign_agent;
#[cfg(test)]
mod robustness;
#[cfg(test)]
pub(crate) mod testutil;

pub use arp::write_gratuitous_arp;
pub use counters::{Counters, DropReason};
pub use fragment::FragmentPlan;
pub use segment::{SegmentPlan, MAX_SEGMENTS, MAX_SUPER_FRAME};

use ratelimit::TokenBucket;

/// Bytes `process` needs in front of a frame. The largest prepend is an ICMP error: a new
/// Ethernet (+ tag), IPv4 and ICMP header (28 bytes more than the link header it replaces)
/// in front of the quoted original header, which does not move. Encapsulation needs 20 (16
/// with a tag). Workers give 256.
pub const MIN_HEADROOM: usize = 28;

/// Interface a frame came in on or leaves by. In one-armed mode both are the same NIC; the
/// worker maps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// The home link.
    Lan,
    /// Toward the care-of addresses.
    Wan,
}

/// Which end of the tunnels a pipeline serves. The packet logic is the same IPv4-in-IPv4;
/// what differs is which address of a datagram names the VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// The home network's gateway: a datagram *to* a bound VM is encapsulated toward its
    /// care-of address; reverse-tunnelled datagrams *from* it are decapsulated onto the home
    /// link; ARP requests *for* it are answered (proxy ARP).
    #[default]
    HomeAgent,
    /// The foreign hypervisor: a datagram *from* a served VM is encapsulated toward its home
    /// agent (reverse tunnel, RFC 3024); tunnelled datagrams *to* it are decapsulated onto
    /// the VM link; ARP requests *from* it are answered, since the VM still believes it is on
    /// its home subnet. "LAN" is the VM link, "WAN" the uplink, and a binding's `care_of` is
    /// the VM's home agent (the other tunnel end).
    ForeignAgent,
}

/// Static configuration of a pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Which end of the tunnels this is.
    pub role: Role,
    /// Our own tunnel address: the HA's address, or the foreign agent's care-of address.
    /// Outer source of tunnels, source of ICMP errors.
    pub ha_addr: Ipv4Addr,
    /// The HA's MAC on the home link (proxy ARP answers with it).
    pub lan_mac: [u8; 6],
    /// The HA's MAC on the WAN interface (== `lan_mac` when one-armed).
    pub wan_mac: [u8; 6],
    /// TTL of the outer header (default 64).
    pub outer_ttl: u8,
    /// Largest outer IPv4 datagram the tunnel carries (default 1500).
    pub tunnel_mtu: u16,
    /// ICMP error token bucket rate per second (default 100).
    pub icmp_rate_per_sec: u32,
    /// ICMP error token bucket depth (default 50).
    pub icmp_burst: u32,
    /// Frames a worker holds for one VM in switchover (default 1024), and
    /// for all of them (default 4096; never more than a quarter of the
    /// worker's UMEM frames).
    pub switchover_per_vm: u32,
    pub switchover_total: u32,
    /// Lower the MSS option of TCP SYNs crossing the tunnel (either way) to what fits
    /// `tunnel_mtu` unfragmented: `tunnel_mtu - 60` (outer IPv4, inner IPv4, TCP), at least
    /// 88. On by default, as on most tunnel gateways: without it a new connection whose
    /// hosts believe in a 1500-byte path relies on Fragmentation Needed reaching them.
    pub mss_clamp: bool,
}

impl PipelineConfig {
    /// A configuration with the defaults: outer TTL 64, tunnel MTU 1500, 100 ICMP errors/s,
    /// burst 50, MSS clamping on.
    pub fn new(ha_addr: Ipv4Addr, lan_mac: [u8; 6], wan_mac: [u8; 6]) -> Self {
        PipelineConfig {
            role: Role::HomeAgent,
            ha_addr,
            lan_mac,
            wan_mac,
            outer_ttl: 64,
            tunnel_mtu: 1500,
            icmp_rate_per_sec: 100,
            icmp_burst: 50,
            switchover_per_vm: 1024,
            switchover_total: 4096,
            mss_clamp: true,
        }
    }
}

/// A VM's binding as the pipeline sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingRef {
    /// Where the VM is now (the foreign hypervisor's tunnel endpoint);
    /// unspecified (0.0.0.0) while a switchover holds its traffic.
    pub care_of: Ipv4Addr,
    /// Stable index for per-binding counters.
    pub slot: u32,
}

/// Link-layer next hop toward a care-of address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// Send out `port` to `mac`.
    Resolved { port: Port, mac: [u8; 6] },
    /// No route or no neighbour entry yet.
    Unresolved,
}

/// What the pipeline may look up; implemented by the worker over the lock-free tables.
pub trait Lookup {
    /// The binding of a VM's home address.
    fn binding(&self, vm: Ipv4Addr) -> Option<BindingRef>;
    /// The next hop toward a care-of address.
    fn next_hop(&self, care_of: Ipv4Addr) -> NextHop;
    /// MAC of a home-link host (reverse tunnel delivery).
    fn lan_neighbor(&self, addr: Ipv4Addr) -> Option<[u8; 6]>;
    /// Home-link host `addr` sends to a VM away from home, which will
    /// answer through the reverse tunnel: resolve it now if it is not, so
    /// the answer need not wait. A hint; the default ignores it.
    fn warm_lan_neighbor(&self, _addr: Ipv4Addr) {}
    /// [`Lookup::lan_neighbor`] without asking for anything to be resolved:
    /// for frames already waiting, looked at again and again.
    fn lan_neighbor_known(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        self.lan_neighbor(addr)
    }
    /// A [`Lookup::binding`] of `vm` is coming: start fetching what it
    /// reads, and say which binding slot it most likely returns. A hint; the
    /// default does nothing.
    fn prefetch(&self, _vm: Ipv4Addr) -> Option<u32> {
        None
    }
}

/// What to do with a frame after [`Pipeline::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the frame, rewritten in place, on `port`: bytes `buf[start..start + len]`.
    /// `slot` is the binding's counter slot (encapsulation, decapsulation), `None` for
    /// replies (ARP, ICMP).
    Tx {
        port: Port,
        start: usize,
        len: usize,
        slot: Option<u32>,
    },
    /// DF clear and too big for the tunnel: emit `plan.count()` pieces with
    /// [`Pipeline::write_fragment`]; the source frame is left valid (validated, inner TTL
    /// already decremented) until all pieces are written, then the worker recycles it.
    Fragments {
        port: Port,
        plan: FragmentPlan,
        slot: Option<u32>,
    },
    /// Decapsulated for home-link host `addr`, whose MAC is not resolved
    /// yet: hold `buf[start..start + len]` (rewritten but for the destination
    /// MAC) until it is, then [`Pipeline::deliver_held`] and send it on the
    /// LAN, or [`Pipeline::drop_held`]. Not yet counted as decapsulated.
    AwaitLanNeighbor {
        addr: Ipv4Addr,
        start: usize,
        len: usize,
        slot: Option<u32>,
    },
    /// A datagram for a VM in switchover ([`BindingRef::care_of`] unspecified):
    /// keep `buf[start..start + len]` as received until the VM's binding has a
    /// care-of address again (then [`Pipeline::process`] it once more) or is
    /// gone (then [`Pipeline::deliver_home`]). Not counted yet.
    Hold {
        vm: Ipv4Addr,
        start: usize,
        len: usize,
    },
    /// Not forwarded; counted under the reason.
    Drop(DropReason),
}

/// A received frame that passed the bounds and Ethernet checks: where it is and how it came.
#[derive(Clone, Copy, Debug)]
struct Rx {
    /// `buf[start..end]` is the frame; `start >= MIN_HEADROOM`, `end <= buf.len()`.
    start: usize,
    end: usize,
    l2: ether::L2,
    ingress: Port,
    now_ns: u64,
}

impl Rx {
    /// Offset of the network-layer header. `ether::parse` accepted the frame, so it is at
    /// least `l2.len()` long and this is `<= end`.
    fn l3_off(&self) -> usize {
        self.start + self.l2.len()
    }
}

/// Where the frame `buf[start..start + len]` ends, if it lies inside `buf`
/// with [`MIN_HEADROOM`] in front of it.
fn frame_end(buf: &[u8], start: usize, len: usize) -> Result<usize, DropReason> {
    let end = start
        .checked_add(len)
        .filter(|&end| end <= buf.len())
        .ok_or(DropReason::BadFrameBounds)?;
    if start < MIN_HEADROOM {
        return Err(DropReason::NoHeadroom);
    }
    Ok(end)
}

/// The pipeline of one worker: configuration, its own Identification counter and ICMP token
/// bucket (so workers share nothing), and counters.
#[derive(Clone, Debug)]
pub struct Pipeline {
    config: PipelineConfig,
    next_ident: u16,
    icmp_bucket: TokenBucket,
    counters: Counters,
    /// What the peers behind the tunnel take, for cutting super-frames.
    paths: path_size::PathSizes,
}

impl Pipeline {
    /// `ident_seed` starts the IPv4 Identification counter of the headers this pipeline
    /// writes; seed workers differently so their outer datagrams do not collide
    /// (RFC 6864 §4.1: unique per source, destination and protocol while in flight).
    pub fn new(config: PipelineConfig, ident_seed: u16) -> Self {
        let icmp_bucket = TokenBucket::new(config.icmp_rate_per_sec, config.icmp_burst);
        Pipeline {
            config,
            next_ident: ident_seed,
            icmp_bucket,
            counters: Counters::default(),
            paths: path_size::PathSizes::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Processes the frame `buf[start..start + len]` that arrived on `ingress`.
    ///
    /// `buf` is the whole UMEM frame; there must be [`MIN_HEADROOM`] bytes in front of the
    /// frame (else `Drop(NoHeadroom)`). Never panics, whatever the bytes, `start` or `len`.
    pub fn process(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        ingress: Port,
        now_ns: u64,
        lookup: &impl Lookup,
    ) -> Verdict {
        match self.dispatch(buf, start, len, ingress, now_ns, lookup) {
            Ok(v) => v,
            Err(reason) => {
                self.counters.count_drop(reason);
                Verdict::Drop(reason)
            }
        }
    }

    fn dispatch(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        ingress: Port,
        now_ns: u64,
        lookup: &impl Lookup,
    ) -> Result<Verdict, DropReason> {
        let end = frame_end(buf, start, len)?;
        let frame = buf.get(start..end).ok_or(DropReason::BadFrameBounds)?;
        let l2 = ether::parse(frame)?;
        let rx = Rx {
            start,
            end,
            l2,
            ingress,
            now_ns,
        };
        match l2.ethertype {
            ether::ETHERTYPE_ARP => self.proxy_arp(buf, &rx, lookup),
            ether::ETHERTYPE_IPV4 => self.ipv4(buf, &rx, lookup),
            _ => Err(DropReason::Unexpected),
        }
    }

    /// Validates the IPv4 header, trims Ethernet padding and picks decapsulation (IP-in-IP to
    /// the HA itself) or encapsulation (everything else that was steered here).
    fn ipv4(
        &mut self,
        buf: &mut [u8],
        rx: &Rx,
        lookup: &impl Lookup,
    ) -> Result<Verdict, DropReason> {
        let ip = ipv4::parse(
            buf.get(rx.l3_off()..rx.end)
                .ok_or(DropReason::Ipv4Truncated)?,
        )?;
        if rx.l3_off() + ip.total_len < rx.end {
            // Ethernet pads short frames to 60 bytes (RFC 894): the datagram ends at its
            // total length, the rest is not ours to forward.
            self.counters.trimmed_padding += 1;
        }
        if ip.protocol == ipv4::PROTO_IPIP && ip.dst == self.config.ha_addr {
            self.decapsulate(buf, rx, &ip, lookup)
        } else {
            self.encapsulate(buf, rx, &ip, lookup)
        }
    }

    /// A fresh IPv4 Identification for a header this pipeline originates.
    fn next_ident(&mut self) -> u16 {
        let id = self.next_ident;
        self.next_ident = id.wrapping_add(1);
        id
    }

    /// Clamps the MSS of a TCP SYN about to enter or leave the tunnel, if configured. Call
    /// after every check that can drop (a dropped frame is left as received) and after
    /// `partial::finish` (an incremental update of a partial checksum would stay partial
    /// and no longer be recognised as one).
    fn clamp_mss(&mut self, buf: &mut [u8], ip_off: usize, ip: &ipv4::Ipv4) {
        if !self.config.mss_clamp {
            return;
        }
        let max = mss::limit(self.config.tunnel_mtu);
        if mss::clamp(buf, ip_off, ip, max) == mss::Outcome::Clamped {
            self.counters.mss_clamped += 1;
        }
    }

    /// The HA's MAC on `port`.
    fn port_mac(&self, port: Port) -> [u8; 6] {
        match port {
            Port::Lan => self.config.lan_mac,
            Port::Wan => self.config.wan_mac,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    /// Malformed and unexpected frames, through `process`: one verdict per reason.
    #[test]
    fn malformed_fixtures() {
        use DropReason::*;
        let ok = Ip::udp(LAN_HOST, VM, b"payload!").frame();
        // IPv4 header at 14; `fix` recomputes its checksum after a patch so that only the
        // intended field is wrong.
        let patch = |at: usize, bytes: &[u8], fix: bool| {
            let mut f = ok.clone();
            f[14 + at..14 + at + bytes.len()].copy_from_slice(bytes);
            if fix {
                f[24] = 0;
                f[25] = 0;
                let ihl = usize::from(f[14] & 0xf) * 4;
                let c = checksum::checksum(&f[14..14 + ihl.clamp(20, 40)]);
                f[24..26].copy_from_slice(&c.to_be_bytes());
            }
            f
        };
        let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
            ("empty", vec![], EthernetTruncated),
            ("13 bytes", ok[..13].to_vec(), EthernetTruncated),
            (
                "tag cut short",
                hex("020000000001 020000000033 8100 0064 08"),
                VlanTruncated,
            ),
            (
                "ipv6 ethertype",
                hex("020000000001 020000000033 86dd 6000000000003b40"),
                Unexpected,
            ),
            (
                "lldp",
                hex("0180c200000e 020000000033 88cc 0000"),
                Unexpected,
            ),
            (
                "double tag",
                hex("020000000001 020000000033 8100 0064 8100 0065 0800"),
                Unexpected,
            ),
            ("ethernet only", ok[..14].to_vec(), Ipv4Truncated),
            ("19 bytes of ipv4", ok[..33].to_vec(), Ipv4Truncated),
            (
                "version 6 in an ipv4 ethertype",
                patch(0, &[0x65], true),
                Ipv4BadVersion,
            ),
            ("ihl 4", patch(0, &[0x44], true), Ipv4BadIhl),
            (
                "ihl 15 in 36 bytes",
                patch(0, &[0x4f], false)[..50].to_vec(),
                Ipv4IhlBeyondFrame,
            ),
            (
                "total length 19",
                patch(2, &[0, 19], true),
                Ipv4TotalLengthTooShort,
            ),
            (
                "total length past the frame",
                patch(2, &[0x05, 0xdc], true),
                Ipv4TotalLengthBeyondFrame,
            ),
            (
                "bad checksum",
                patch(10, &[0xde, 0xad], false),
                Ipv4BadChecksum,
            ),
            (
                "arp cut short",
                ArpFrame::request(LAN_HOST_MAC, LAN_HOST, VM)
                    .unpadded()
                    .frame()[..30]
                    .to_vec(),
                ArpTruncated,
            ),
            (
                "arp for ipv6",
                ArpFrame::request(LAN_HOST_MAC, LAN_HOST, VM)
                    .patch(2, &[0x86, 0xdd])
                    .frame(),
                ArpNotEthernetIpv4,
            ),
        ];
        for (name, input, reason) in cases {
            let mut p = pipeline(1);
            let (mut buf, start) = place(&input);
            let before = buf.clone();
            let v = p.process(&mut buf, start, input.len(), Port::Lan, 0, &lookup());
            assert_eq!(v, Verdict::Drop(reason), "{name}");
            assert_eq!(p.counters().drop_count(reason), 1, "{name}");
            assert_eq!(
                p.counters().drops.iter().sum::<u64>(),
                1,
                "{name}: one reason only"
            );
            assert_eq!(buf, before, "{name}: frame untouched");
        }
    }

    #[test]
    fn frame_bounds_are_checked_before_anything() {
        let input = Ip::udp(LAN_HOST, VM, b"x").frame();
        let (mut buf, start) = place(&input);
        let n = buf.len();
        let mut p = pipeline(1);
        for (start, len) in [
            (n, 1),
            (n - 10, 11),
            (start, usize::MAX),
            (usize::MAX, 1),
            (n + 1, 0),
        ] {
            let v = p.process(&mut buf, start, len, Port::Lan, 0, &lookup());
            assert_eq!(
                v,
                Verdict::Drop(DropReason::BadFrameBounds),
                "{start} {len}"
            );
        }
        assert_eq!(p.counters().drop_count(DropReason::BadFrameBounds), 5);
    }

    #[test]
    fn ethernet_padding_is_trimmed_and_counted() {
        // 20 + 8 + 1 = 29-byte datagram in a 60-byte frame: 17 bytes of padding.
        let input = Ip::udp(LAN_HOST, VM, b"x").frame();
        assert_eq!(input.len(), 60);
        let mut p = pipeline(1);
        let (mut buf, start) = place(&input);
        let Verdict::Tx { start: s, len, .. } =
            p.process(&mut buf, start, input.len(), Port::Lan, 0, &lookup())
        else {
            panic!()
        };
        assert_eq!(len, 14 + 20 + 29, "padding not carried into the tunnel");
        check_encapsulated(&buf[s..s + len], inner_datagram(&input), 1);
        assert_eq!(p.counters().trimmed_padding, 1);
        // A frame without padding is not counted.
        let input = Ip::udp(LAN_HOST, VM, &[1; 100]).frame();
        let (mut buf, start) = place(&input);
        p.process(&mut buf, start, input.len(), Port::Lan, 0, &lookup());
        assert_eq!(p.counters().trimmed_padding, 1);
    }

    #[test]
    fn config_defaults() {
        let c = PipelineConfig::new(HA.into(), LAN_MAC, WAN_MAC);
        assert_eq!(
            (
                c.outer_ttl,
                c.tunnel_mtu,
                c.icmp_rate_per_sec,
                c.icmp_burst,
                c.mss_clamp
            ),
            (64, 1500, 100, 50, true)
        );
        let p = Pipeline::new(c, 9);
        assert_eq!(p.config().ha_addr, Ipv4Addr::from(HA));
        assert_eq!(p.counters(), &Counters::default());
    }
}
