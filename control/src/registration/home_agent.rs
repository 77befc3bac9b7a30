//! The home agent's side of registration, as a pure handler: a datagram
//! in, a reply, at most one binding change and the Identification to store
//! out. It does no I/O and reads no clock (`now` is an argument), so the
//! daemon drives it from its control loop and tests drive it in memory.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::SystemTime;

use super::keys::{KeyFile, Prefix, SpiEntry};
use super::replay::{ntp_timestamp, ReplayGuard, Stale};
use super::wire::{self, code, flags, MhAuth, ReplyFields, Request, WireError};

/// What the home agent is.
#[derive(Debug, Clone)]
pub struct HomeAgentConfig {
    /// Our own address: the Home Agent field must name it, care-of
    /// addresses must not.
    pub address: Ipv4Addr,
    /// The home subnet(s): home addresses must be inside, care-of addresses
    /// outside.
    pub home_prefixes: Vec<Prefix>,
    /// Longest lifetime granted, seconds.
    pub max_lifetime: u16,
}

/// A binding change the handler asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Bind {
        vm: Ipv4Addr,
        care_of: Ipv4Addr,
        /// Granted lifetime, seconds (never 0).
        lifetime: u16,
        reverse_tunnel: bool,
        /// The SPI that authenticated it (the binding's origin).
        spi: u32,
        /// The VM's MAC from the request's authenticated VM link-layer
        /// address extension, if it had a usable one (for the give-back
        /// gratuitous ARP when the binding ends).
        vm_mac: Option<[u8; 6]>,
    },
    Deregister {
        vm: Ipv4Addr,
        /// As in `Bind`: the MAC to hand the address back to.
        vm_mac: Option<[u8; 6]>,
    },
    /// Switchover ([`wire::cvse_type::SWITCHOVER`]): the VM stopped at its
    /// source for the last step of a migration. Take its traffic and hold
    /// it until the next registration (or deregistration) for it, for at
    /// most `lifetime` seconds, then go back to what was before.
    Hold {
        vm: Ipv4Addr,
        lifetime: u16,
        spi: u32,
        vm_mac: Option<[u8; 6]>,
    },
}

/// The longest a switchover holds a VM's traffic, seconds: a migration's
/// last step takes tens of milliseconds; this only bounds a lost one.
pub const MAX_HOLD: u16 = 10;

impl Action {
    /// The VM's home address.
    pub fn vm(&self) -> Ipv4Addr {
        match *self {
            Action::Bind { vm, .. } | Action::Deregister { vm, .. } | Action::Hold { vm, .. } => vm,
        }
    }
}

/// Why the binding manager could not apply an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The table is full (130).
    InsufficientResources,
    /// Refused for policy reasons (129).
    AdministrativelyProhibited,
    /// Anything else (128).
    Unspecified,
}

impl Denial {
    fn code(self) -> u8 {
        match self {
            Denial::InsufficientResources => code::INSUFFICIENT_RESOURCES,
            Denial::AdministrativelyProhibited => code::ADMIN_PROHIBITED,
            Denial::Unspecified => code::UNSPECIFIED,
        }
    }
}

/// Where accepted registrations go. Called before the reply is built, so a
/// failure turns into the right denial code.
pub trait BindingSink {
    fn apply(&mut self, action: &Action) -> Result<(), Denial>;
}

/// The handler's result for one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply to send back to the source, or `None` to drop silently.
    pub reply: Option<Vec<u8>>,
    /// The reply code (`None` when dropped).
    pub code: Option<u8>,
    /// The binding change applied (only on accept).
    pub action: Option<Action>,
    /// One-line reason, for the log.
    pub reason: &'static str,
    pub spi: Option<u32>,
    pub home_address: Option<Ipv4Addr>,
    pub care_of: Option<Ipv4Addr>,
    /// The Identification accepted (only on accept): the caller stores it
    /// with the binding change before the reply goes out, or hands it back
    /// to [`HomeAgent::undo_replay`] if the store fails.
    pub replay: Option<ReplayCommit>,
    /// The request's VM link-layer address extension was ours but unusable
    /// (wrong length, not unicast): ignored, and the registration handled
    /// as without it. For the caller to count.
    pub vm_mac_ignored: Option<wire::VmMacError>,
}

/// An accepted Identification, with what it replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCommit {
    pub spi: u32,
    pub home: Ipv4Addr,
    pub id: u64,
    pub previous: Option<u64>,
}

impl Outcome {
    fn dropped(reason: &'static str) -> Outcome {
        Outcome {
            reply: None,
            code: None,
            action: None,
            reason,
            spi: None,
            home_address: None,
            care_of: None,
            replay: None,
            vm_mac_ignored: None,
        }
    }
}

/// The registration handler with its keys and replay state.
#[derive(Debug)]
pub struct HomeAgent {
    config: HomeAgentConfig,
    keys: Arc<KeyFile>,
    replay: ReplayGuard,
}

/// An address nothing can be bound to or tunnelled to.
fn unusable(a: Ipv4Addr) -> bool {
    a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback()
}

impl HomeAgent {
    pub fn new(config: HomeAgentConfig, keys: KeyFile, replay: ReplayGuard) -> HomeAgent {
        HomeAgent {
            config,
            keys: Arc::new(keys),
            replay,
        }
    }

    /// Handles one datagram that arrived on port 434 from `source`.
    /// Every rejection leaves the binding table untouched: `sink` is called
    /// only once every check has passed.
    pub fn handle(
        &mut self,
        datagram: &[u8],
        source: SocketAddrV4,
        now: SystemTime,
        sink: &mut impl BindingSink,
    ) -> Outcome {
        let _ = source; // replies go to the source; nothing else depends on it
        let Authentic {
            req,
            auth,
            entry,
            mut out,
        } = match screen(&self.keys, self.config.address, datagram) {
            Ok(a) => a,
            Err(rejected) => return rejected,
        };
        let entry = entry.clone();
        let deny = |out: Outcome, c: u8, reason, entry: Option<&SpiEntry>, id: u64| {
            finish(self.config.address, out, &req, c, reason, entry, id, 0)
        };
        let id = req.identification();

        // Replay protection (RFC 5944 §5.7).
        let now_ntp = ntp_timestamp(now);
        if let Err(stale) = self.replay.check(auth.spi, req.home_address(), id, now_ntp) {
            // The HA's clock in the high bits, the request's low bits kept
            // so the agent can match the reply and resynchronise.
            let resync = (now_ntp & 0xffff_ffff_0000_0000) | (id & 0xffff_ffff);
            let reason = match stale {
                Stale::OutOfWindow => "identification out of the replay window",
                Stale::NotNewer => "identification not newer (replay)",
            };
            return finish(
                self.config.address,
                out,
                &req,
                code::ID_MISMATCH,
                reason,
                Some(&entry),
                resync,
                0,
            );
        }

        if req.home_agent() != self.config.address {
            return deny(
                out,
                code::UNKNOWN_HA,
                "the Home Agent field names another address",
                Some(&entry),
                id,
            );
        }
        if req.flags() & (flags::M | flags::G) != 0 {
            return deny(
                out,
                code::ENCAPSULATION_UNAVAILABLE,
                "M or G flag set: only IP-in-IP tunnels here",
                Some(&entry),
                id,
            );
        }

        let home = req.home_address();
        let care_of = req.care_of();
        if !entry.authorizes(home) {
            return deny(
                out,
                code::ADMIN_PROHIBITED,
                "home address not authorized for this SPI",
                Some(&entry),
                id,
            );
        }
        if unusable(home) || home == self.config.address || !self.in_home(home) {
            return deny(
                out,
                code::ADMIN_PROHIBITED,
                "home address not on the home network",
                Some(&entry),
                id,
            );
        }
        let lifetime = req.lifetime();
        // RFC 5944 §3.6.1.2: back at home, the agent deregisters with the
        // home address as care-of address.
        let back_home = lifetime == 0 && care_of == home;
        // A switchover's care-of address is its source's, which may be on
        // the home network: it is not bound, so not checked.
        let switchover = wire::is_switchover(req.as_bytes(), wire::REQUEST_LEN);
        if switchover && lifetime == 0 {
            return deny(
                out,
                code::POORLY_FORMED,
                "switchover with lifetime 0",
                Some(&entry),
                id,
            );
        }
        if !back_home && !switchover {
            if unusable(care_of) || care_of == self.config.address || care_of == home {
                return deny(
                    out,
                    code::ADMIN_PROHIBITED,
                    "unusable care-of address",
                    Some(&entry),
                    id,
                );
            }
            if self.in_home(care_of) {
                return deny(
                    out,
                    code::ADMIN_PROHIBITED,
                    "care-of address inside the home network",
                    Some(&entry),
                    id,
                );
            }
        }

        // Only the authenticated extensions (before the Mobile-Home
        // Authentication Extension) are looked at. RFC 3115 has a receiver
        // ignore an NVSE it cannot use, so a bad one does not fail the
        // registration: the binding matters more than the give-back ARP.
        let vm_mac = match wire::vm_mac(req.as_bytes(), wire::REQUEST_LEN) {
            Ok(m) => m,
            Err(e) => {
                out.vm_mac_ignored = Some(e);
                None
            }
        };
        let (action, granted) = if switchover {
            let granted = lifetime.min(MAX_HOLD);
            let hold = Action::Hold {
                vm: home,
                lifetime: granted,
                spi: auth.spi,
                vm_mac,
            };
            (hold, granted)
        } else if lifetime == 0 {
            (Action::Deregister { vm: home, vm_mac }, 0)
        } else {
            let granted = lifetime.min(self.config.max_lifetime).max(1);
            (
                Action::Bind {
                    vm: home,
                    care_of,
                    lifetime: granted,
                    reverse_tunnel: req.flags() & flags::T != 0,
                    spi: auth.spi,
                    vm_mac,
                },
                granted,
            )
        };
        if let Err(d) = sink.apply(&action) {
            return deny(
                out,
                d.code(),
                "binding refused by the table",
                Some(&entry),
                id,
            );
        }
        // Only an accepted request moves the replay state.
        let previous = self.replay.commit(auth.spi, home, id);
        out.replay = Some(ReplayCommit {
            spi: auth.spi,
            home,
            id,
            previous,
        });
        out.action = Some(action);
        // No simultaneous bindings here: say so if they were asked for.
        let c = if req.flags() & flags::S != 0 {
            code::ACCEPTED_NO_SIMULTANEOUS
        } else {
            code::ACCEPTED
        };
        let reason = if switchover {
            "switchover: holding"
        } else if lifetime == 0 {
            "deregistered"
        } else {
            "registered"
        };
        finish(
            self.config.address,
            out,
            &req,
            c,
            reason,
            Some(&entry),
            id,
            granted,
        )
    }

    /// Takes back an accepted Identification whose commit failed, so the
    /// agent's retransmission of the same request is not a replay.
    pub fn undo_replay(&mut self, c: &ReplayCommit) {
        self.replay.restore(c.spi, c.home, c.previous);
    }

    /// An Identification another gateway accepted (through the replicated
    /// store): nothing older or equal is accepted here any more.
    pub fn observe_replay(&mut self, spi: u32, home: Ipv4Addr, id: u64) {
        self.replay.commit(spi, home, id);
    }

    /// The keys, for [`screen`] outside the handler.
    pub fn keys(&self) -> &Arc<KeyFile> {
        &self.keys
    }

    fn in_home(&self, a: Ipv4Addr) -> bool {
        self.config.home_prefixes.iter().any(|p| p.contains(a))
    }
}

/// A request whose authenticator checked out, from [`screen`].
pub struct Authentic<'a, 'k> {
    pub req: Request<&'a [u8]>,
    pub auth: MhAuth<'a>,
    pub entry: &'k SpiEntry,
    /// The outcome so far (addresses and SPI filled in).
    pub out: Outcome,
}

/// The first, cheap stage of the handler: parse, RFC 5944 §1.9's rule for
/// unknown extensions, then authentication (§3.8.2.1: nothing else is
/// looked at, or answered with our time, before it passes). Pure and
/// needing only the keys, so the socket's reader runs it before anything
/// is queued: forged traffic never reaches the control loop, and honest
/// registrations never wait behind it.
pub fn screen<'a, 'k>(
    keys: &'k KeyFile,
    address: Ipv4Addr,
    datagram: &'a [u8],
) -> Result<Authentic<'a, 'k>, Outcome> {
    let req = match Request::new_checked(datagram) {
        Ok(r) => r,
        // Not a request, or too short to answer (no Identification to
        // echo): drop, as RFC 5944 §3.8.2 allows for unparsable input.
        Err(WireError::WrongType(..)) => {
            return Err(Outcome::dropped("not a registration request"))
        }
        Err(_) => return Err(Outcome::dropped("truncated request")),
    };
    // RFC 5944 §1.9: an unrecognised extension in 0-127 anywhere in the
    // message means it is silently discarded, authenticated or not.
    let unknown = req.extensions().filter_map(Result::ok).any(|e| {
        !e.skippable()
            && !wire::is_known_cvse(&e)
            && !matches!(
                e.kind,
                wire::EXT_MH_AUTH | wire::EXT_MF_AUTH | wire::EXT_FH_AUTH
            )
    });
    if unknown {
        return Err(Outcome::dropped("unknown non-skippable extension"));
    }
    let mut out = Outcome::dropped("");
    out.home_address = Some(req.home_address());
    out.care_of = Some(req.care_of());
    let id = req.identification();
    let deny = |out: Outcome, c: u8, reason, entry: Option<&SpiEntry>| {
        Err(finish(address, out, &req, c, reason, entry, id, 0))
    };
    let auth = match wire::find_mh_auth(datagram, wire::REQUEST_LEN) {
        Ok(Some(a)) => a,
        Ok(None) => {
            return deny(
                out,
                code::MN_AUTH_FAILED,
                "no mobile-home authentication extension",
                None,
            )
        }
        Err(_) => return deny(out, code::POORLY_FORMED, "malformed extensions", None),
    };
    out.spi = Some(auth.spi);
    // §3.6.1.3: the mobile-home authenticator follows every other
    // non-skippable extension; MF and FH authentication come after it.
    if auth.unknown_before.is_some() {
        return Err(Outcome {
            reason: "authentication extension out of order",
            ..out
        });
    }
    let Some(entry) = keys.get(auth.spi) else {
        return deny(out, code::MN_AUTH_FAILED, "unknown SPI", None);
    };
    if !entry.key.verify(auth.covered, auth.authenticator) {
        return deny(out, code::MN_AUTH_FAILED, "bad authenticator", Some(entry));
    }
    Ok(Authentic {
        req,
        auth,
        entry,
        out,
    })
}

/// Builds the reply: authenticated with the request's key when the SPI is
/// known.
#[allow(clippy::too_many_arguments)]
fn finish(
    address: Ipv4Addr,
    out: Outcome,
    req: &Request<&[u8]>,
    c: u8,
    reason: &'static str,
    entry: Option<&SpiEntry>,
    identification: u64,
    lifetime: u16,
) -> Outcome {
    let mut reply = Vec::with_capacity(wire::REPLY_LEN + 6 + 32);
    ReplyFields {
        code: c,
        lifetime,
        home_address: req.home_address(),
        // RFC 5944 §3.8.3.1: our own unicast address, also on 136.
        home_agent: address,
        identification,
    }
    .emit(&mut reply);
    if let Some(e) = entry {
        e.key.append_mh_auth(&mut reply, e.spi);
    }
    Outcome {
        reply: Some(reply),
        code: Some(c),
        reason,
        ..out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registration::wire::{Reply, RequestFields};
    use std::time::{Duration, UNIX_EPOCH};

    const KEYS: &str = r#"
[[spi]]
spi = 256
key = "00112233445566778899aabbccddeeff"
home_addresses = ["192.0.2.50/32", "192.0.2.64/26", "198.51.100.0/24"]

[[spi]]
spi = 300
algorithm = "hmac-md5"
key = "0f0e0d0c0b0a09080706050403020100"
home_addresses = ["192.0.2.0/24"]
"#;
    const OTHER_KEY: &str = r#"
[[spi]]
spi = 256
key = "ffeeddccbbaa99887766554433221100"
"#;

    const HA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const VM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
    const COA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const SRC: SocketAddrV4 = SocketAddrV4::new(COA, 40000);

    #[derive(Default)]
    struct Sink {
        table: std::collections::BTreeMap<Ipv4Addr, (Ipv4Addr, u16)>,
        full: bool,
        calls: usize,
        holds: usize,
    }
    impl BindingSink for Sink {
        fn apply(&mut self, a: &Action) -> Result<(), Denial> {
            self.calls += 1;
            match *a {
                Action::Bind {
                    vm,
                    care_of,
                    lifetime,
                    ..
                } => {
                    if self.full && !self.table.contains_key(&vm) {
                        return Err(Denial::InsufficientResources);
                    }
                    self.table.insert(vm, (care_of, lifetime));
                }
                Action::Deregister { vm, .. } => {
                    self.table.remove(&vm);
                }
                Action::Hold { .. } => self.holds += 1,
            }
            Ok(())
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn ha() -> HomeAgent {
        HomeAgent::new(
            HomeAgentConfig {
                address: HA,
                home_prefixes: vec![Prefix::parse("192.0.2.0/24").unwrap()],
                max_lifetime: 600,
            },
            KeyFile::parse(KEYS).unwrap(),
            ReplayGuard::new(Duration::from_secs(7), []),
        )
    }

    struct Req {
        fields: RequestFields,
        spi: u32,
        keys: &'static str,
        /// Extension bytes before the authenticator, and after it.
        before: Vec<u8>,
        after: Vec<u8>,
    }

    impl Req {
        fn new(t: SystemTime) -> Req {
            Req {
                fields: RequestFields {
                    flags: flags::T,
                    lifetime: 60,
                    home_address: VM,
                    home_agent: HA,
                    care_of: COA,
                    identification: ntp_timestamp(t),
                },
                spi: 256,
                keys: KEYS,
                before: Vec::new(),
                after: Vec::new(),
            }
        }
        fn bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            self.fields.emit(&mut out);
            let keys = KeyFile::parse(self.keys).unwrap();
            let spi = if keys.get(self.spi).is_some() {
                self.spi
            } else {
                256
            };
            let key = &keys.get(spi).unwrap().key;
            out.extend_from_slice(&self.before);
            key.append_mh_auth(&mut out, self.spi);
            out.extend_from_slice(&self.after);
            out
        }
    }

    /// Decodes a reply and checks its authenticator with `keys`.
    fn reply(o: &Outcome, spi: u32) -> (u8, u16, u64, bool) {
        let bytes = o.reply.as_ref().expect("a reply");
        let r = Reply::new_checked(&bytes[..]).unwrap();
        let keys = KeyFile::parse(KEYS).unwrap();
        let authed = match (r.mh_auth().unwrap(), keys.get(spi)) {
            (Some(a), Some(e)) => a.spi == spi && e.key.verify(a.covered, a.authenticator),
            _ => false,
        };
        assert_eq!(r.home_agent(), HA);
        (r.code(), r.lifetime(), r.identification(), authed)
    }

    #[test]
    fn accepts_binds_and_deregisters() {
        let mut h = ha();
        let mut sink = Sink::default();
        let req = Req::new(now());
        let o = h.handle(&req.bytes(), SRC, now(), &mut sink);
        assert_eq!(o.code, Some(0), "{o:?}");
        assert_eq!(
            o.action,
            Some(Action::Bind {
                vm: VM,
                care_of: COA,
                lifetime: 60,
                reverse_tunnel: true,
                spi: 256,
                vm_mac: None,
            })
        );
        let (c, life, id, authed) = reply(&o, 256);
        assert_eq!(
            (c, life, id, authed),
            (0, 60, req.fields.identification, true)
        );
        assert_eq!(sink.table.get(&VM), Some(&(COA, 60)));

        // Longer than allowed: clamped. S flag: code 1.
        let t = now() + Duration::from_secs(1);
        let mut req = Req::new(t);
        req.fields.lifetime = 0xffff;
        req.fields.flags |= flags::S;
        let o = h.handle(&req.bytes(), SRC, t, &mut sink);
        let (c, life, _, _) = reply(&o, 256);
        assert_eq!((c, life), (1, 600));
        assert_eq!(sink.table.get(&VM), Some(&(COA, 600)));

        // Back home: lifetime 0, care-of = home address.
        let t = now() + Duration::from_secs(2);
        let mut req = Req::new(t);
        req.fields.lifetime = 0;
        req.fields.care_of = VM;
        let o = h.handle(&req.bytes(), SRC, t, &mut sink);
        assert_eq!(o.code, Some(0), "{o:?}");
        assert_eq!(
            o.action,
            Some(Action::Deregister {
                vm: VM,
                vm_mac: None
            })
        );
        assert!(sink.table.is_empty());
    }

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x51];

    fn mac_nvse(mac: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wire::Nvse {
            vendor: wire::HOMEWARD_VENDOR_ID,
            kind: wire::nvse_type::VM_LINK_LAYER_ADDRESS,
            value: mac,
        }
        .emit(&mut out)
        .unwrap();
        out
    }

    fn bound_mac(o: &Outcome) -> Option<[u8; 6]> {
        match o.action {
            Some(
                Action::Bind { vm_mac, .. }
                | Action::Deregister { vm_mac, .. }
                | Action::Hold { vm_mac, .. },
            ) => vm_mac,
            None => panic!("not accepted: {o:?}"),
        }
    }

    #[test]
    fn the_vm_link_layer_address_extension_reaches_the_action() {
        let mut h = ha();
        let mut sink = Sink::default();
        let mut req = Req::new(now());
        req.before = mac_nvse(&MAC);
        let o = h.handle(&req.bytes(), SRC, now(), &mut sink);
        assert_eq!(o.code, Some(0), "{o:?}");
        assert_eq!(bound_mac(&o), Some(MAC));
        assert_eq!(o.vm_mac_ignored, None);

        // After the authenticator: not covered by it, so not used (the
        // request itself is still good).
        let t = now() + Duration::from_secs(1);
        let mut req = Req::new(t);
        req.after = mac_nvse(&MAC);
        let o = h.handle(&req.bytes(), SRC, t, &mut sink);
        assert_eq!(o.code, Some(0), "{o:?}");
        assert_eq!(bound_mac(&o), None);

        // Ours but unusable: ignored and reported, the registration stands.
        let bad: [&[u8]; 4] = [&MAC[..5], &[0xff; 6], &[0; 6], &[0x01, 0, 0x5e, 0, 0, 1]];
        for (i, value) in bad.into_iter().enumerate() {
            let t = now() + Duration::from_secs(2 + i as u64);
            let mut req = Req::new(t);
            req.before = mac_nvse(value);
            let o = h.handle(&req.bytes(), SRC, t, &mut sink);
            assert_eq!(o.code, Some(0), "{o:?}");
            assert_eq!(bound_mac(&o), None);
            assert!(o.vm_mac_ignored.is_some(), "{value:?}");
        }

        // Another vendor's NVSE with the same type: skipped.
        let t = now() + Duration::from_secs(10);
        let mut req = Req::new(t);
        wire::Nvse {
            vendor: 9,
            kind: wire::nvse_type::VM_LINK_LAYER_ADDRESS,
            value: &MAC,
        }
        .emit(&mut req.before)
        .unwrap();
        let o = h.handle(&req.bytes(), SRC, t, &mut sink);
        assert_eq!(
            (o.code, bound_mac(&o), o.vm_mac_ignored),
            (Some(0), None, None)
        );

        // A deregistration carries it too.
        let t = now() + Duration::from_secs(11);
        let mut req = Req::new(t);
        req.fields.lifetime = 0;
        req.fields.care_of = VM;
        req.before = mac_nvse(&MAC);
        let o = h.handle(&req.bytes(), SRC, t, &mut sink);
        assert_eq!(
            o.action,
            Some(Action::Deregister {
                vm: VM,
                vm_mac: Some(MAC)
            })
        );
    }

    #[test]
    fn every_bit_flip_of_a_request_with_the_mac_is_refused() {
        let mut req = Req::new(now());
        req.before = mac_nvse(&MAC);
        let bytes = req.bytes();
        for i in 0..bytes.len() * 8 {
            let mut h = ha();
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let mut sink = Sink::default();
            let o = h.handle(&b, SRC, now(), &mut sink);
            assert!(
                !matches!(o.code, Some(0 | 1)),
                "bit {i} flipped was accepted: {o:?}"
            );
            assert_eq!(sink.calls, 0, "bit {i}");
        }
    }

    #[test]
    fn md5_spi_interoperates() {
        let mut h = ha();
        let mut sink = Sink::default();
        let mut req = Req::new(now());
        req.spi = 300;
        let o = h.handle(&req.bytes(), SRC, now(), &mut sink);
        assert_eq!(o.code, Some(0), "{o:?}");
        assert!(reply(&o, 300).3);
    }

    fn assert_denied(h: &mut HomeAgent, bytes: &[u8], t: SystemTime, want: Option<u8>) -> Outcome {
        let mut sink = Sink::default();
        let o = h.handle(bytes, SRC, t, &mut sink);
        assert_eq!(o.code, want, "{o:?}");
        assert_eq!(sink.calls, 0, "a rejection touched the table: {o:?}");
        assert_eq!(o.action, None);
        o
    }

    #[test]
    fn forged_and_unknown_spi_fail_authentication() {
        let mut h = ha();
        let mut forged = Req::new(now());
        forged.keys = OTHER_KEY;
        let o = assert_denied(&mut h, &forged.bytes(), now(), Some(131));
        assert!(reply(&o, 256).3, "denials to known SPIs are authenticated");
        let mut unknown = Req::new(now());
        unknown.spi = 999;
        let o = assert_denied(&mut h, &unknown.bytes(), now(), Some(131));
        assert!(!reply(&o, 999).3);
        // No authentication extension at all.
        let mut bare = Vec::new();
        Req::new(now()).fields.emit(&mut bare);
        assert_denied(&mut h, &bare, now(), Some(131));
        // Authenticator cut short.
        let full = Req::new(now()).bytes();
        let mut cut = full[..full.len() - 1].to_vec();
        cut[wire::REQUEST_LEN + 1] -= 1;
        assert_denied(&mut h, &cut, now(), Some(131));
        // The replay state did not move: a genuine request still passes.
        let mut sink = Sink::default();
        assert_eq!(h.handle(&full, SRC, now(), &mut sink).code, Some(0));
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let bytes = Req::new(now()).bytes();
        for i in 0..bytes.len() * 8 {
            let mut h = ha();
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let mut sink = Sink::default();
            let o = h.handle(&b, SRC, now(), &mut sink);
            assert!(
                !matches!(o.code, Some(0 | 1)),
                "bit {i} flipped was accepted: {o:?}"
            );
            assert_eq!(sink.calls, 0, "bit {i}");
        }
    }

    #[test]
    fn replays_and_stale_identifications_get_133_with_our_time() {
        let mut h = ha();
        let mut sink = Sink::default();
        let req = Req::new(now());
        assert_eq!(h.handle(&req.bytes(), SRC, now(), &mut sink).code, Some(0));
        let later = now() + Duration::from_secs(1);
        let o = assert_denied(&mut h, &req.bytes(), later, Some(133));
        let (_, _, id, authed) = reply(&o, 256);
        assert!(authed);
        assert_eq!(id >> 32, ntp_timestamp(later) >> 32);
        assert_eq!(id & 0xffff_ffff, req.fields.identification & 0xffff_ffff);

        // Out of the window, both ways.
        for skew in [-7i64, 9, -100_000] {
            let t = if skew < 0 {
                now() - Duration::from_secs(skew.unsigned_abs())
            } else {
                now() + Duration::from_secs(skew as u64)
            };
            let req = Req::new(t);
            let o = assert_denied(&mut h, &req.bytes(), later, Some(133));
            let (_, _, id, _) = reply(&o, 256);
            assert_eq!(id >> 32, ntp_timestamp(later) >> 32);
            assert_eq!(id & 0xffff_ffff, req.fields.identification & 0xffff_ffff);
        }
    }

    #[test]
    fn authorization_and_care_of_checks() {
        let mut h = ha();
        let mut req = Req::new(now());
        req.fields.home_address = Ipv4Addr::new(192, 0, 2, 51);
        assert_denied(&mut h, &req.bytes(), now(), Some(129));
        // Authorized by the SPI but not on the home network.
        req.fields.home_address = Ipv4Addr::new(198, 51, 100, 77);
        assert_denied(&mut h, &req.bytes(), now(), Some(129));
        for coa in [
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(192, 0, 2, 9),
            HA,
            VM,
        ] {
            let mut req = Req::new(now());
            req.fields.care_of = coa;
            assert_denied(&mut h, &req.bytes(), now(), Some(129));
        }
        let mut req = Req::new(now());
        req.fields.home_agent = Ipv4Addr::new(198, 51, 100, 9);
        assert_denied(&mut h, &req.bytes(), now(), Some(136));
        for f in [flags::M, flags::G] {
            let mut req = Req::new(now());
            req.fields.flags |= f;
            assert_denied(&mut h, &req.bytes(), now(), Some(139));
        }
    }

    #[test]
    fn table_full_is_130_and_keeps_the_replay_state() {
        let mut h = ha();
        let mut sink = Sink {
            full: true,
            ..Sink::default()
        };
        let req = Req::new(now());
        let o = h.handle(&req.bytes(), SRC, now(), &mut sink);
        assert_eq!(o.code, Some(130));
        assert!(sink.table.is_empty());
        sink.full = false;
        assert_eq!(h.handle(&req.bytes(), SRC, now(), &mut sink).code, Some(0));
    }

    #[test]
    fn truncated_and_garbage_are_dropped_or_refused() {
        let mut h = ha();
        let bytes = Req::new(now()).bytes();
        for n in 0..bytes.len() {
            let o = assert_denied(&mut h, &bytes[..n], now(), o_code(n));
            assert!(o.reply.is_some() == o.code.is_some());
        }
        assert_denied(&mut h, &[3; 40], now(), None);
        // An unknown non-skippable extension before the authenticator.
        let mut req = Vec::new();
        Req::new(now()).fields.emit(&mut req);
        req.extend([5, 0]);
        KeyFile::parse(KEYS)
            .unwrap()
            .get(256)
            .unwrap()
            .key
            .append_mh_auth(&mut req, 256);
        assert_denied(&mut h, &req, now(), None);
        // RFC 5944 §1.9: silently discarded also without any authenticator
        // (not 131), and after it.
        let mut req = Vec::new();
        Req::new(now()).fields.emit(&mut req);
        req.extend([5, 0]);
        let o = assert_denied(&mut h, &req, now(), None);
        assert_eq!(o.reason, "unknown non-skippable extension");
        let mut req = Req::new(now()).bytes();
        req.extend([127, 2, 0, 0]);
        assert_denied(&mut h, &req, now(), None);
        // Foreign-home authentication before the mobile-home one: out of
        // order (RFC 5944 §3.6.1.3), discarded (a fuzzer's find).
        let mut req = Vec::new();
        Req::new(now()).fields.emit(&mut req);
        req.extend([34, 6, 0, 0, 1, 0, 0, 0]);
        KeyFile::parse(KEYS)
            .unwrap()
            .get(256)
            .unwrap()
            .key
            .append_mh_auth(&mut req, 256);
        let o = assert_denied(&mut h, &req, now(), None);
        assert_eq!(o.reason, "authentication extension out of order");
        // A skippable one (128-255) is skipped: accepted.
        let mut req = Vec::new();
        Req::new(now()).fields.emit(&mut req);
        req.extend([200, 1, 0]);
        KeyFile::parse(KEYS)
            .unwrap()
            .get(256)
            .unwrap()
            .key
            .append_mh_auth(&mut req, 256);
        let mut sink = Sink::default();
        assert_eq!(h.handle(&req, SRC, now(), &mut sink).code, Some(0));
    }

    /// What a request cut to `n` bytes gets: dropped below the fixed part,
    /// 131 with no extension, 134 with a broken one.
    fn o_code(n: usize) -> Option<u8> {
        match n {
            0..=23 => None,
            24 => Some(131),
            _ => Some(134),
        }
    }

    #[test]
    fn a_switchover_holds_and_binds_nothing() {
        let mut h = ha();
        let mut sink = Sink::default();
        let mut req = Req::new(now());
        // From the VM's home hypervisor: a care-of inside the home network.
        req.fields.care_of = Ipv4Addr::new(192, 0, 2, 20);
        req.fields.lifetime = 60;
        wire::push_switchover(&mut req.before);
        let o = h.handle(&req.bytes(), SRC, now(), &mut sink);
        assert_eq!(o.code, Some(0), "{o:?}");
        assert_eq!(
            o.action,
            Some(Action::Hold {
                vm: VM,
                lifetime: MAX_HOLD,
                spi: 256,
                vm_mac: None,
            })
        );
        let (c, life, _, authed) = reply(&o, 256);
        assert_eq!((c, life, authed), (0, MAX_HOLD, true));
        assert!(sink.table.is_empty());
        assert_eq!(sink.holds, 1);
        // Replayed: refused like any registration.
        let o = h.handle(&req.bytes(), SRC, now(), &mut sink);
        assert_eq!(o.code, Some(code::ID_MISMATCH));
        // After the authenticator it is not a switchover: the in-home
        // care-of is then refused as for a registration.
        let t = now() + Duration::from_secs(1);
        let mut req = Req::new(t);
        req.fields.care_of = Ipv4Addr::new(192, 0, 2, 20);
        wire::push_switchover(&mut req.after);
        let o = h.handle(&req.bytes(), SRC, t, &mut sink);
        assert_eq!(o.code, Some(code::ADMIN_PROHIBITED), "{o:?}");
        assert_eq!(sink.holds, 1);
        // Lifetime 0 makes no sense for a hold.
        let t = now() + Duration::from_secs(2);
        let mut req = Req::new(t);
        req.fields.lifetime = 0;
        wire::push_switchover(&mut req.before);
        let o = h.handle(&req.bytes(), SRC, t, &mut sink);
        assert_eq!(o.code, Some(code::POORLY_FORMED), "{o:?}");
    }
}
