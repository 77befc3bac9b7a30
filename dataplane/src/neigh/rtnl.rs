//! Synchronous rtnetlink: a request socket (route, neighbour and link
//! queries, `NTF_USE` pokes) and a multicast event socket, over netlink-sys,
//! with messages built and parsed by netlink-packet-route.
//!
//! Everything the kernel sends is parsed defensively: framing is checked
//! before a message is handed to the parser, malformed messages are skipped
//! (and logged), and nothing here panics on input.

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_MULTIPART,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{LinkInfo, NeighError};

/// Receive buffer: larger than any single rtnetlink message we ask for or
/// subscribe to (the kernel caps its skbs for dumps at 32 KiB).
const RECV_BUF: usize = 64 * 1024;
/// How long a request waits for its answer. The kernel answers rtnetlink
/// requests synchronously, so this only bounds a misbehaving kernel.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// rtnetlink multicast groups (`RTNLGRP_*` from `linux/rtnetlink.h`).
pub(crate) const RTNLGRP_LINK: u32 = 1;
pub(crate) const RTNLGRP_NEIGH: u32 = 3;
pub(crate) const RTNLGRP_IPV4_ROUTE: u32 = 7;

/// Route lookup result (an `RTM_NEWROUTE` answer to `RTM_GETROUTE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RouteInfo {
    pub kind: RouteType,
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    /// The next hop is not an IPv4 address (RTA_VIA, e.g. an IPv6 next hop
    /// for an IPv4 route): not something this module resolves.
    pub foreign_via: bool,
}

impl RouteInfo {
    /// The `(oif, next-hop address)` to resolve for `dst`, if this is a
    /// unicast route with an output interface and an IPv4 next hop.
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<(u32, Ipv4Addr)> {
        if self.kind != RouteType::Unicast || self.foreign_via {
            return None;
        }
        let oif = self.oif.filter(|&i| i != 0)?;
        Some((oif, self.gateway.unwrap_or(dst)))
    }
}

/// A neighbour entry (from `RTM_NEWNEIGH` / `RTM_DELNEIGH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NeighInfo {
    pub ifindex: u32,
    pub dst: Ipv4Addr,
    pub state: NeighbourState,
    pub lladdr: Option<[u8; 6]>,
}

impl NeighInfo {
    /// The MAC to use, if the entry is usable: REACHABLE, STALE, DELAY,
    /// PROBE or PERMANENT with a 6-byte link-layer address. (STALE, DELAY
    /// and PROBE entries are still the best knowledge; the kernel is, or
    /// will be, re-confirming them.)
    pub fn usable_mac(&self) -> Option<[u8; 6]> {
        match self.state {
            NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent => self.lladdr,
            _ => None,
        }
    }
}

/// What an event on the multicast socket is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A neighbour entry was created or changed (`deleted == false`) or
    /// removed.
    Neigh { info: NeighInfo, deleted: bool },
    /// An IPv4 route was added, changed or removed.
    Route,
    /// A link was added, changed or removed.
    Link,
    /// The socket overflowed (ENOBUFS): events were lost, resynchronise.
    Overrun,
}

/// Parses a route message.
pub(crate) fn parse_route(msg: &RouteMessage) -> RouteInfo {
    let mut info = RouteInfo {
        kind: msg.header.kind,
        oif: None,
        gateway: None,
        foreign_via: false,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Oif(i) => info.oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => info.gateway = Some(*a),
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => info.foreign_via = true,
            RouteAttribute::MultiPath(_) => {
                // An output route lookup answers with the chosen path in
                // RTA_OIF/RTA_GATEWAY; a multipath attribute only appears in
                // notifications, which are not parsed for their content.
            }
            _ => {}
        }
    }
    info
}

/// Parses an IPv4 neighbour message; `None` for other families or entries
/// without a destination address.
pub(crate) fn parse_neigh(msg: &NeighbourMessage) -> Option<NeighInfo> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let mut dst = None;
    let mut lladdr = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
            NeighbourAttribute::LinkLocalAddress(l) => {
                lladdr = <[u8; 6]>::try_from(l.as_slice()).ok()
            }
            _ => {}
        }
    }
    Some(NeighInfo {
        ifindex: msg.header.ifindex,
        dst: dst?,
        state: msg.header.state,
        lladdr,
    })
}

/// Parses a link message into [`LinkInfo`]; `what` names the link for the
/// error if it has no Ethernet address.
pub(crate) fn parse_link(msg: &LinkMessage, what: &str) -> Result<LinkInfo, NeighError> {
    let mut name = None;
    let mut mac = None;
    let mut mtu = 0;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    let name = name.unwrap_or_else(|| what.to_string());
    let mac = mac.ok_or_else(|| NeighError::NotEthernet(name.clone()))?;
    Ok(LinkInfo {
        index: msg.header.index,
        name,
        mac,
        mtu,
    })
}

/// Turns an event message into an [`Event`], if it is one we follow.
pub(crate) fn classify_event(msg: &RouteNetlinkMessage) -> Option<Event> {
    match msg {
        RouteNetlinkMessage::NewNeighbour(m) => parse_neigh(m).map(|info| Event::Neigh {
            info,
            deleted: false,
        }),
        RouteNetlinkMessage::DelNeighbour(m) => parse_neigh(m).map(|info| Event::Neigh {
            info,
            deleted: true,
        }),
        RouteNetlinkMessage::NewRoute(m) | RouteNetlinkMessage::DelRoute(m)
            if m.header.address_family == AddressFamily::Inet =>
        {
            Some(Event::Route)
        }
        RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_) => Some(Event::Link),
        _ => None,
    }
}

/// Splits a datagram into netlink messages: `(header, payload)` for each
/// message that parses, skipping (and logging) those that do not. Framing
/// is validated here so that the parser only ever sees one whole message.
pub(crate) fn split_messages(buf: &[u8]) -> Vec<NetlinkMessage<RouteNetlinkMessage>> {
    const HDR: usize = 16;
    let mut out = Vec::new();
    let mut off = 0usize;
    while buf.len().saturating_sub(off) >= HDR {
        let Some(len_bytes) = buf.get(off..off + 4) else {
            break;
        };
        let len =
            u32::from_ne_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        let Some(end) = off
            .checked_add(len)
            .filter(|&e| len >= HDR && e <= buf.len())
        else {
            tracing::debug!(
                offset = off,
                len,
                total = buf.len(),
                "netlink: bad message length, rest of datagram dropped"
            );
            break;
        };
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..end]) {
            Ok(m) => out.push(m),
            Err(e) => {
                tracing::debug!(offset = off, len, error = %e, "netlink: unparsable message skipped")
            }
        }
        // Messages are 4-byte aligned.
        off = end.saturating_add(3) & !3;
    }
    out
}

fn new_socket() -> Result<Socket, NeighError> {
    let mut s = Socket::new(NETLINK_ROUTE).map_err(NeighError::Socket)?;
    s.bind_auto().map_err(NeighError::Socket)?;
    s.set_non_blocking(true).map_err(NeighError::Socket)?;
    Ok(s)
}

fn errno_error(code: i32) -> io::Error {
    // The kernel sends a negative errno.
    io::Error::from_raw_os_error(code.checked_neg().unwrap_or(libc::EINVAL))
}

/// A request/response rtnetlink socket.
pub(crate) struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Outcome of a request: the messages, or the kernel's errno.
pub(crate) type Reply = Result<Vec<RouteNetlinkMessage>, io::Error>;

impl Rtnl {
    pub fn new() -> Result<Self, NeighError> {
        let sock = new_socket()?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NeighError::Socket)?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Sends `msg` and collects the answer. The outer `Result` is for
    /// transport failures (socket errors, timeout); the inner [`Reply`] is
    /// the kernel's answer, an errno included.
    pub fn request(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Reply, NeighError> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        loop {
            match self.sock.send(&out, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NeighError::Io { op, source: e }),
            }
        }

        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut answer = Vec::new();
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(NeighError::Timeout { op });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NeighError::Io { op, source: e }),
            }
            for m in split_messages(&self.buf) {
                if m.header.sequence_number != seq {
                    continue; // a late answer to an earlier, timed-out request
                }
                let multi = m.header.flags & NLM_F_MULTIPART != 0;
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(Ok(answer)),
                    NetlinkPayload::Error(e) => {
                        return Ok(match e.code {
                            None => Ok(answer), // ACK
                            Some(c) => Err(errno_error(c.get())),
                        });
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        answer.push(inner);
                        if !multi && flags & NLM_F_ACK == 0 {
                            return Ok(Ok(answer));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Output route lookup for `dst` (what `ip route get DST` does).
    /// `Ok(None)`: no usable route (the kernel answered with an error).
    pub fn route_get(&mut self, dst: Ipv4Addr) -> Result<Option<RouteInfo>, NeighError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 32;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        match self.request("RTM_GETROUTE", RouteNetlinkMessage::GetRoute(msg), 0)? {
            Ok(msgs) => Ok(msgs.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(parse_route(r)),
                _ => None,
            })),
            Err(e) => {
                tracing::trace!(%dst, error = %e, "no route");
                Ok(None)
            }
        }
    }

    /// The neighbour entry of `dst` on `ifindex`, if there is one.
    pub fn neigh_get(
        &mut self,
        ifindex: u32,
        dst: Ipv4Addr,
    ) -> Result<Option<NeighInfo>, NeighError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = ifindex;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        match self.request("RTM_GETNEIGH", RouteNetlinkMessage::GetNeighbour(msg), 0)? {
            Ok(msgs) => Ok(msgs.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => parse_neigh(n).filter(|i| i.dst == dst),
                _ => None,
            })),
            Err(e) => {
                tracing::trace!(%dst, ifindex, error = %e, "no neighbour entry");
                Ok(None)
            }
        }
    }

    /// Asks the kernel to resolve (or re-confirm) `dst` on `ifindex`:
    /// `RTM_NEWNEIGH` with `NTF_USE`, as `ip neigh replace DST dev IF use`
    /// does. The kernel creates the entry if needed and runs its NUD state
    /// machine as if a packet were queued for it (an ARP request for a new
    /// or failed entry, a unicast probe after the delay for a stale one).
    /// The state in the request is NUD_NONE, so the entry stays subject to
    /// garbage collection (iproute2's default, PERMANENT, would exempt it).
    pub fn neigh_use(&mut self, ifindex: u32, dst: Ipv4Addr) -> Result<Reply, NeighError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = ifindex;
        msg.header.state = NeighbourState::None;
        msg.header.flags = NeighbourFlags::Use;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        self.request(
            "RTM_NEWNEIGH(NTF_USE)",
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `RTM_GETLINK` by index (`name == None`) or by name.
    pub fn link_get(&mut self, index: u32, name: Option<&str>) -> Result<Reply, NeighError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(n) = name {
            msg.attributes.push(LinkAttribute::IfName(n.to_string()));
        }
        self.request("RTM_GETLINK", RouteNetlinkMessage::GetLink(msg), 0)
    }
}

/// The multicast socket: link, neighbour and IPv4 route notifications.
pub(crate) struct Events {
    sock: Socket,
    buf: Vec<u8>,
}

impl Events {
    pub fn new() -> Result<Self, NeighError> {
        let sock = new_socket()?;
        for g in [RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE] {
            sock.add_membership(g).map_err(NeighError::Socket)?;
        }
        // A larger buffer makes overruns (and full resyncs) rarer; failure
        // to enlarge it is not fatal.
        if let Err(e) = sock.set_rx_buf_sz(1 << 20) {
            tracing::debug!(error = %e, "netlink: could not enlarge the event socket buffer");
        }
        Ok(Events {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Reads every pending notification without blocking and hands each
    /// to `f`. Returns the number of datagrams read.
    pub fn drain(&mut self, mut f: impl FnMut(Event)) -> Result<usize, NeighError> {
        let mut n = 0;
        // Bounded so that an event storm cannot starve the command channel.
        while n < 1024 {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {
                    n += 1;
                    for m in split_messages(&self.buf) {
                        match m.payload {
                            NetlinkPayload::InnerMessage(inner) => {
                                if let Some(ev) = classify_event(&inner) {
                                    f(ev);
                                }
                            }
                            NetlinkPayload::Overrun(_) => f(Event::Overrun),
                            _ => {}
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::debug!("netlink: event socket overrun, resynchronising");
                    f(Event::Overrun);
                }
                Err(e) => {
                    return Err(NeighError::Io {
                        op: "receiving notifications",
                        source: e,
                    })
                }
            }
        }
        Ok(n)
    }
}
