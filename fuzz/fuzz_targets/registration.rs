//! RFC 5944 registration: the wire views, the Mobile-Home authenticator and
//! the home agent's pure handler (`HomeAgent::handle`, with an in-memory
//! binding sink and a fixed key file parsed from text), plus the checks the
//! registering client applies to a reply.
//!
//! ```text
//! byte 0  bit 0     sign: append a valid Mobile-Home Authentication Extension
//!         bits 1-2  its SPI: 256 (hmac-sha256), 257 (hmac-md5),
//!                   258 (one home address only), 999 (not in the key file)
//!         bit 3     fresh: overwrite the Identification with the HA's clock
//!         bits 4-5  the sink: accepts, or denies (130, 129, 128)
//!         bit 6     replay: hand the same datagram in a second time (and,
//!                   when the first was accepted, a third after undo_replay)
//!         bit 7     also check the message as a reply, as the client does
//! then    the message (a Registration Request, or anything)
//! ```
//!
//! Invariants: nothing panics; a reply is sent exactly when a code is;
//! a binding change happens only on acceptance, once, with a request whose
//! authenticator verifies, inside the home network and the lifetime limit;
//! every reply the home agent sends is one the client's checks accept (it
//! parses, echoes the request, and is authenticated when the SPI is known);
//! an accepted request handed in again is refused as a replay (133), and
//! accepted again once its Identification is handed back.
#![no_main]

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use homeward::registration::auth::{Algorithm, SecretKey};
use homeward::registration::home_agent::{
    Action, BindingSink, Denial, HomeAgent, HomeAgentConfig, Outcome,
};
use homeward::registration::keys::{KeyFile, Prefix};
use homeward::registration::replay::{ntp_timestamp, ReplayGuard};
use homeward::registration::wire::{self, code, Reply, Request};
use libfuzzer_sys::fuzz_target;

use homeward_fuzz::REGISTRATION_KEYS as KEYS;

const SPIS: [u32; 4] = [256, 257, 258, 999];
const HA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const MAX_LIFETIME: u16 = 600;

fn keys() -> &'static KeyFile {
    static KEYS_FILE: OnceLock<KeyFile> = OnceLock::new();
    KEYS_FILE.get_or_init(|| KeyFile::parse(KEYS).expect("the fixed key file parses"))
}

/// The key of an SPI the key file does not have (requests signed with it
/// must fail authentication).
fn stranger() -> &'static SecretKey {
    static KEY: OnceLock<SecretKey> = OnceLock::new();
    KEY.get_or_init(|| SecretKey::new(Algorithm::HmacSha256, &[0x5a; 16]).unwrap())
}

fn home() -> Prefix {
    Prefix::new(Ipv4Addr::new(192, 0, 2, 0), 24)
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// An empty replay state, in memory (the daemon loads it from its store).
fn replay_guard() -> ReplayGuard {
    ReplayGuard::new(Duration::from_secs(7), [])
}

/// Records what the handler asked for; accepts or denies as told.
struct Sink {
    deny: Option<Denial>,
    calls: Vec<Action>,
}

impl BindingSink for Sink {
    fn apply(&mut self, action: &Action) -> Result<(), Denial> {
        self.calls.push(*action);
        self.deny.map_or(Ok(()), Err)
    }
}

fn low32(id: u64) -> u32 {
    (id & 0xffff_ffff) as u32
}

/// The registering client's acceptance test of a reply (`check_reply` in
/// `control/src/registration/client.rs`, private, redone with the public
/// wire API): it answers one of our requests and is authenticated by our
/// SPI. Returns the reply's code when accepted.
fn client_accepts(
    datagram: &[u8],
    home_address: Ipv4Addr,
    sent: &HashSet<u32>,
    spi: u32,
) -> Option<u8> {
    let reply = Reply::new_checked(datagram).ok()?;
    let _ = (
        reply.lifetime(),
        reply.home_agent(),
        reply.extensions().count(),
    );
    let _ = wire::code_meaning(reply.code());
    if reply.home_address() != home_address || !sent.contains(&low32(reply.identification())) {
        return None;
    }
    let auth = reply.mh_auth().ok()??;
    let entry = keys().get(spi)?;
    (auth.spi == spi && entry.key.verify(auth.covered, auth.authenticator)).then(|| reply.code())
}

/// Walks the extensions: in order, inside the message, no panic.
fn walk(msg: &[u8], exts: wire::Extensions<'_>) {
    let mut last = None;
    for e in exts {
        let Ok(e) = e else { break };
        assert!(last.is_none_or(|l| e.offset > l), "extensions move forward");
        assert!(e.offset + 2 + e.data.len() <= msg.len());
        last = Some(e.offset);
    }
}

/// A MAC in the action is unicast and is the one in the authenticated
/// part of the request (before the Mobile-Home Authentication Extension).
fn check_vm_mac(vm_mac: Option<[u8; 6]>, req: &Request<&[u8]>) {
    if let Some(mac) = vm_mac {
        assert!(mac[0] & 1 == 0 && mac != [0; 6], "{mac:?}");
        assert_eq!(
            wire::vm_mac(req.as_bytes(), wire::REQUEST_LEN),
            Ok(Some(mac))
        );
        let auth = req.mh_auth().unwrap().unwrap();
        let covered = wire::authenticated_extensions(auth.covered, wire::REQUEST_LEN)
            .filter_map(|e| wire::Nvse::parse(&e))
            .any(|n| n.vendor == wire::HOMEWARD_VENDOR_ID && n.value == mac);
        assert!(covered, "the MAC is covered by the authenticator");
    }
}

fn check(outcome: &Outcome, sink: &Sink, datagram: &[u8], request: Option<&Request<&[u8]>>) {
    assert_eq!(
        outcome.reply.is_some(),
        outcome.code.is_some(),
        "{outcome:?}"
    );
    let accepted = matches!(
        outcome.code,
        Some(code::ACCEPTED | code::ACCEPTED_NO_SIMULTANEOUS)
    );
    assert_eq!(accepted, outcome.action.is_some(), "{outcome:?}");
    assert_eq!(accepted, outcome.replay.is_some(), "{outcome:?}");
    assert!(sink.calls.len() <= 1, "one binding change at most");
    if let Some(action) = outcome.action {
        assert_eq!(sink.calls, [action], "the sink saw what was applied");
        let req = request.expect("accepted something that is a request");
        // Accepted means authenticated: check the authenticator ourselves.
        let auth = req.mh_auth().unwrap().unwrap();
        assert_eq!(Some(auth.spi), outcome.spi);
        let entry = keys().get(auth.spi).expect("accepted an unknown SPI");
        assert!(entry.key.verify(auth.covered, auth.authenticator));
        // RFC 5944 §3.6.1.3: nothing non-skippable before the
        // mobile-home authenticator (MF/FH authentication come after it).
        assert_eq!(auth.unknown_before, None);
        // RFC 5944 §1.9: no unknown extension in 0-127 anywhere (the
        // authentication extensions 32-34 are known).
        assert!(req
            .extensions()
            .filter_map(Result::ok)
            .all(|e| e.skippable()
                || wire::is_known_cvse(&e)
                || matches!(
                    e.kind,
                    wire::EXT_MH_AUTH | wire::EXT_MF_AUTH | wire::EXT_FH_AUTH
                )));
        let commit = outcome.replay.expect("an accepted Identification");
        assert_eq!(
            (commit.spi, commit.home, commit.id),
            (auth.spi, req.home_address(), req.identification())
        );
        assert_eq!(req.home_agent(), HA);
        match action {
            Action::Bind {
                vm,
                care_of,
                lifetime,
                spi,
                vm_mac,
                ..
            } => {
                check_vm_mac(vm_mac, req);
                assert_eq!(spi, auth.spi, "the binding names its SPI");
                assert!((1..=MAX_LIFETIME).contains(&lifetime), "{lifetime}");
                assert!(home().contains(vm) && vm != HA && entry.authorizes(vm));
                assert!(!home().contains(care_of) && care_of != HA && care_of != vm);
                assert_eq!((vm, care_of), (req.home_address(), req.care_of()));
            }
            Action::Deregister { vm, vm_mac } => {
                check_vm_mac(vm_mac, req);
                assert_eq!(req.lifetime(), 0);
                assert!(home().contains(vm) && entry.authorizes(vm));
            }
            Action::Hold {
                vm,
                lifetime,
                spi,
                vm_mac,
            } => {
                // Only an authenticated switchover extension holds.
                check_vm_mac(vm_mac, req);
                assert!(wire::is_switchover(req.as_bytes(), wire::REQUEST_LEN));
                assert_eq!(spi, auth.spi);
                assert!((1..=homeward::registration::home_agent::MAX_HOLD).contains(&lifetime));
                assert!(req.lifetime() > 0);
                assert!(home().contains(vm) && vm != HA && entry.authorizes(vm));
                assert_eq!(vm, req.home_address());
            }
        }
    } else if let (Some(c), [_]) = (outcome.code, &sink.calls[..]) {
        // The sink refused: its denial is the code.
        assert!(matches!(
            c,
            code::INSUFFICIENT_RESOURCES | code::ADMIN_PROHIBITED | code::UNSPECIFIED
        ));
    }
    if let Some(reply) = &outcome.reply {
        let req = request.expect("replied to something that is not a request");
        let r = Reply::new_checked(&reply[..]).expect("our reply parses");
        assert_eq!(Some(r.code()), outcome.code);
        assert_eq!((r.home_address(), r.home_agent()), (req.home_address(), HA));
        let id = req.identification();
        if r.code() == code::ID_MISMATCH {
            assert_eq!(low32(r.identification()), low32(id), "low bits kept on 133");
        } else {
            assert_eq!(r.identification(), id, "Identification echoed");
        }
        walk(reply, r.extensions());
        // Known SPI: the client takes it; otherwise it is unauthenticated.
        let spi = outcome.spi.unwrap_or(0);
        let sent: HashSet<u32> = [low32(id)].into();
        let taken = client_accepts(reply, req.home_address(), &sent, spi);
        if keys().get(spi).is_some() {
            assert_eq!(taken, outcome.code, "the client accepts our reply");
        } else {
            assert_eq!(taken, None);
        }
    }
    let _ = datagram;
}

fuzz_target!(|data: &[u8]| {
    let [mode, msg @ ..] = data else { return };
    let mode = *mode;
    let mut datagram = msg.to_vec();
    let spi = SPIS[usize::from(mode >> 1) & 3];
    if mode & 0x08 != 0 && datagram.len() >= wire::REQUEST_LEN {
        let id =
            (ntp_timestamp(now()) & !0xffff) | u64::from(u16::from_be_bytes([msg[22], msg[23]]));
        datagram[16..24].copy_from_slice(&id.to_be_bytes());
    }
    if mode & 0x01 != 0 {
        match keys().get(spi) {
            Some(e) => e.key.append_mh_auth(&mut datagram, spi),
            None => stranger().append_mh_auth(&mut datagram, spi),
        }
    }
    let deny = match (mode >> 4) & 3 {
        0 => None,
        1 => Some(Denial::InsufficientResources),
        2 => Some(Denial::AdministrativelyProhibited),
        _ => Some(Denial::Unspecified),
    };

    let request = Request::new_checked(&datagram[..]).ok();
    if let Some(r) = &request {
        let _ = (r.flags(), r.lifetime(), r.care_of(), r.identification());
        let _ = r.mh_auth();
        walk(&datagram, r.extensions());
    }

    let config = HomeAgentConfig {
        address: HA,
        home_prefixes: vec![home()],
        max_lifetime: MAX_LIFETIME,
    };
    let mut ha = HomeAgent::new(config, keys().clone(), replay_guard());
    let source = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 434);
    let mut sink = Sink {
        deny,
        calls: Vec::new(),
    };
    let first = ha.handle(&datagram, source, now(), &mut sink);
    check(&first, &sink, &datagram, request.as_ref());

    if mode & 0x40 != 0 {
        let mut again = Sink {
            deny: None,
            calls: Vec::new(),
        };
        let second = ha.handle(&datagram, source, now(), &mut again);
        check(&second, &again, &datagram, request.as_ref());
        if let Some(commit) = first.replay {
            assert_eq!(second.action, None, "a replay is not applied");
            assert_eq!(second.code, Some(code::ID_MISMATCH), "{second:?}");
            // The store failed: the Identification is handed back, and the
            // retransmission goes through as the first did.
            ha.undo_replay(&commit);
            let mut third_sink = Sink {
                deny: None,
                calls: Vec::new(),
            };
            let third = ha.handle(&datagram, source, now(), &mut third_sink);
            check(&third, &third_sink, &datagram, request.as_ref());
            assert_eq!(third.action, first.action, "accepted again after undo");
            assert_eq!(third.replay, first.replay);
        }
    }

    if mode & 0x80 != 0 {
        // As a reply to a request with the same Identification low bits.
        if let Ok(r) = Reply::new_checked(msg) {
            let sent: HashSet<u32> = [low32(r.identification())].into();
            let _ = client_accepts(msg, r.home_address(), &sent, spi);
            walk(msg, r.extensions());
        }
    }
});
