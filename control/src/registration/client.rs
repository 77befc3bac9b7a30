//! The registering side (the foreign hypervisor, acting for a VM): sends a
//! Registration Request to the home agent and waits for the matching,
//! authenticated Registration Reply.

use std::collections::{BTreeMap, HashSet};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use super::keys::KeyFile;
use super::replay::ntp_timestamp;
use super::wire::{self, code, flags, Reply, RequestFields};

/// What to register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationParams {
    pub home_address: Ipv4Addr,
    pub home_agent: Ipv4Addr,
    pub care_of: Ipv4Addr,
    /// Seconds; 0 deregisters (with `care_of == home_address` when the VM
    /// is back at home).
    pub lifetime: u16,
    pub reverse_tunnel: bool,
    pub spi: u32,
    /// The VM's MAC, sent in the VM link-layer address extension (before
    /// the authenticator, so it is covered) so the home agent can hand the
    /// address back in the VM's name even if it never saw the VM.
    pub vm_mac: Option<[u8; 6]>,
    /// A switchover request (make before break): the source of a migration
    /// asks the home agent to take the VM's traffic and hold it until the
    /// destination registers; `lifetime` is the longest hold, `care_of` the
    /// sender (informational). Carried as our critical vendor extension,
    /// before the authenticator.
    pub switchover: bool,
}

/// An accepted registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    /// 0, or 1 (accepted without simultaneous bindings).
    pub code: u8,
    /// Granted lifetime in seconds.
    pub lifetime: u16,
    pub round_trip: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// the home agent answered with a denial
    #[error("registration denied: code {code} ({reason})")]
    Denied { code: u8, reason: &'static str },
    /// no authenticated reply in time
    #[error("no reply from the home agent")]
    Timeout,
    #[error("registration socket: {0}")]
    Io(#[from] std::io::Error),
    /// replies came, but none could be authenticated or matched
    #[error("bad reply from the home agent: {0}")]
    BadReply(String),
    /// the key file has no such SPI
    #[error("SPI {0} is not in the key file")]
    UnknownSpi(u32),
}

/// Sends registrations from one UDP socket.
#[derive(Debug)]
pub struct RegistrationClient {
    socket: UdpSocket,
    keys: KeyFile,
    /// Per SPI: the home agent's clock minus ours, in NTP units, learned
    /// from Identification-mismatch replies.
    offsets: BTreeMap<u32, i64>,
    /// Per SPI: the last Identification sent, so every request is newer.
    last_sent: BTreeMap<u32, u64>,
    /// A deliberate error of our clock, NTP units (tests of resynchronisation).
    skew: i64,
}

/// Shortest wait for a reply before a retransmission (RFC 5944 §3.6.3 asks
/// for at least twice the round trip plus 100 ms).
const MIN_RETRANSMIT: Duration = Duration::from_millis(100);

impl RegistrationClient {
    pub fn new(bind_addr: Ipv4Addr, keys: KeyFile) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddrV4::new(bind_addr, 0))?;
        Ok(RegistrationClient {
            socket,
            keys,
            offsets: BTreeMap::new(),
            last_sent: BTreeMap::new(),
            skew: 0,
        })
    }

    /// Makes this client's clock `seconds` wrong, as a host with a bad
    /// clock would be: for testing the home agent's 133 resynchronisation.
    pub fn skew_clock(&mut self, seconds: i64) {
        self.skew = seconds.saturating_mul(1 << 32);
    }

    /// Our clock as an NTP timestamp.
    fn clock(&self) -> u64 {
        ntp_timestamp(SystemTime::now()).wrapping_add(self.skew as u64)
    }

    /// Sends one request to home_agent:434 and waits for the matching,
    /// authenticated reply; retransmits (RFC 5944 §3.6.3 backoff) up to
    /// `attempts` times within `timeout` overall; on 133 it adopts the HA's
    /// time and retries once immediately.
    pub fn register(
        &mut self,
        p: &RegistrationParams,
        timeout: Duration,
        attempts: u32,
    ) -> Result<Registered, RegistrationError> {
        let entry = self
            .keys
            .get(p.spi)
            .ok_or(RegistrationError::UnknownSpi(p.spi))?
            .clone();
        let attempts = attempts.max(1);
        let start = Instant::now();
        let deadline = start + timeout;
        // Waits double each time and add up to the whole timeout.
        let doublings = attempts.min(16) - 1;
        let mut wait = (timeout / ((1u32 << (doublings + 1)) - 1)).max(MIN_RETRANSMIT);
        let ha = SocketAddrV4::new(p.home_agent, wire::PORT);
        let mut sent: HashSet<u32> = HashSet::new();
        let mut resynced = false;
        let mut bad: Option<String> = None;
        let mut attempt = 0;
        let mut buf = [0u8; 1500];
        'send: while attempt < attempts {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            attempt += 1;
            let request = self.build(p, &entry.key);
            sent.insert(low32(
                wire::Request::new_checked(&request[..]).map_or(0, |r| r.identification()),
            ));
            let sent_at = Instant::now();
            self.socket.send_to(&request, ha)?;
            let attempt_end = (now + wait).min(deadline);
            wait = wait.saturating_mul(2);
            loop {
                let now = Instant::now();
                if now >= attempt_end {
                    continue 'send;
                }
                self.socket.set_read_timeout(Some(attempt_end - now))?;
                let (n, from) = match self.socket.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        continue 'send;
                    }
                    // A previous send's ICMP port unreachable: the HA is not listening yet.
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                    Err(e) => return Err(e.into()),
                };
                if from.ip() != std::net::IpAddr::V4(p.home_agent) {
                    continue;
                }
                let Some(datagram) = buf.get(..n) else {
                    continue;
                };
                let reply = match check_reply(datagram, p, &sent, &entry) {
                    Ok(r) => r,
                    Err(e) => {
                        bad = Some(e);
                        continue;
                    }
                };
                match reply.code {
                    code::ACCEPTED | code::ACCEPTED_NO_SIMULTANEOUS => {
                        return Ok(Registered {
                            code: reply.code,
                            lifetime: reply.lifetime,
                            round_trip: sent_at.elapsed(),
                        });
                    }
                    code::ID_MISMATCH if !resynced => {
                        // RFC 5944 §5.7: the high 32 bits are the HA's clock.
                        resynced = true;
                        let ours = self.clock();
                        let theirs = reply.identification & 0xffff_ffff_0000_0000;
                        self.offsets
                            .insert(p.spi, theirs.wrapping_sub(ours & !0xffff_ffff) as i64);
                        // Retry at once, without using up an attempt.
                        attempt -= 1;
                        continue 'send;
                    }
                    c => {
                        return Err(RegistrationError::Denied {
                            code: c,
                            reason: wire::code_meaning(c),
                        })
                    }
                }
            }
        }
        Err(bad.map_or(RegistrationError::Timeout, RegistrationError::BadReply))
    }

    /// A request with a fresh Identification: our clock, corrected by what
    /// the HA told us, and strictly above the last one sent.
    fn build(&mut self, p: &RegistrationParams, key: &super::auth::SecretKey) -> Vec<u8> {
        let offset = self.offsets.get(&p.spi).copied().unwrap_or(0);
        let mut id = self.clock().wrapping_add(offset as u64);
        if let Some(&last) = self.last_sent.get(&p.spi) {
            if id <= last {
                id = last.wrapping_add(1);
            }
        }
        self.last_sent.insert(p.spi, id);
        let mut out = Vec::with_capacity(wire::REQUEST_LEN + 6 + 32);
        RequestFields {
            flags: if p.reverse_tunnel { flags::T } else { 0 },
            lifetime: p.lifetime,
            home_address: p.home_address,
            home_agent: p.home_agent,
            care_of: p.care_of,
            identification: id,
        }
        .emit(&mut out);
        if let Some(mac) = p.vm_mac {
            wire::push_vm_mac(&mut out, mac);
        }
        if p.switchover {
            wire::push_switchover(&mut out);
        }
        key.append_mh_auth(&mut out, p.spi);
        out
    }
}

fn low32(id: u64) -> u32 {
    (id & 0xffff_ffff) as u32
}

struct CheckedReply {
    code: u8,
    lifetime: u16,
    identification: u64,
}

/// A reply counts only if it answers one of our requests and carries a
/// valid authenticator from the same SPI.
fn check_reply(
    datagram: &[u8],
    p: &RegistrationParams,
    sent: &HashSet<u32>,
    entry: &super::keys::SpiEntry,
) -> Result<CheckedReply, String> {
    let reply = Reply::new_checked(datagram).map_err(|e| e.to_string())?;
    if reply.home_address() != p.home_address || !sent.contains(&low32(reply.identification())) {
        return Err("a reply that matches no request sent".into());
    }
    let unauthenticated = || {
        format!(
            "code {} ({}) without a valid authenticator",
            reply.code(),
            wire::code_meaning(reply.code())
        )
    };
    let auth = reply
        .mh_auth()
        .map_err(|e| e.to_string())?
        .ok_or_else(unauthenticated)?;
    if auth.spi != p.spi || !entry.key.verify(auth.covered, auth.authenticator) {
        return Err(unauthenticated());
    }
    Ok(CheckedReply {
        code: reply.code(),
        lifetime: reply.lifetime(),
        identification: reply.identification(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registration::wire::{Nvse, Request};

    const KEYS: &str = r#"
[[spi]]
spi = 256
key = "00112233445566778899aabbccddeeff"
"#;

    fn params(vm_mac: Option<[u8; 6]>) -> RegistrationParams {
        RegistrationParams {
            home_address: Ipv4Addr::new(192, 0, 2, 50),
            home_agent: Ipv4Addr::new(198, 51, 100, 1),
            care_of: Ipv4Addr::new(203, 0, 113, 2),
            lifetime: 60,
            reverse_tunnel: true,
            spi: 256,
            vm_mac,
            switchover: false,
        }
    }

    #[test]
    fn the_request_carries_the_vm_mac_before_the_authenticator() {
        let keys = KeyFile::parse(KEYS).unwrap();
        let key = keys.get(256).unwrap().key.clone();
        let mut c = RegistrationClient::new(Ipv4Addr::LOCALHOST, keys.clone()).unwrap();
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let bytes = c.build(&params(Some(mac)), &key);
        let r = Request::new_checked(&bytes[..]).unwrap();
        let kinds: Vec<u8> = r.extensions().map(|e| e.unwrap().kind).collect();
        assert_eq!(kinds, [wire::EXT_NVSE, wire::EXT_MH_AUTH]);
        let first = r.extensions().next().unwrap().unwrap();
        let n = Nvse::parse(&first).unwrap();
        assert_eq!(
            (n.vendor, n.kind, n.value),
            (
                wire::HOMEWARD_VENDOR_ID,
                wire::nvse_type::VM_LINK_LAYER_ADDRESS,
                &mac[..]
            )
        );
        // Covered by the authenticator, which verifies.
        let auth = r.mh_auth().unwrap().unwrap();
        assert!(auth.covered.len() > first.offset + 2 + first.data.len());
        assert!(key.verify(auth.covered, auth.authenticator));
        assert_eq!(wire::vm_mac(&bytes, wire::REQUEST_LEN), Ok(Some(mac)));
        // Without a MAC: no extension, as before.
        let bytes = c.build(&params(None), &key);
        let r = Request::new_checked(&bytes[..]).unwrap();
        let kinds: Vec<u8> = r.extensions().map(|e| e.unwrap().kind).collect();
        assert_eq!(kinds, [wire::EXT_MH_AUTH]);
    }

    #[test]
    fn a_switchover_request_carries_the_cvse_before_the_authenticator() {
        let keys = KeyFile::parse(KEYS).unwrap();
        let key = keys.get(256).unwrap().key.clone();
        let mut c = RegistrationClient::new(Ipv4Addr::LOCALHOST, keys.clone()).unwrap();
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let p = RegistrationParams {
            lifetime: 5,
            switchover: true,
            ..params(Some(mac))
        };
        let bytes = c.build(&p, &key);
        let r = Request::new_checked(&bytes[..]).unwrap();
        assert_eq!(r.lifetime(), 5);
        let exts: Vec<_> = r.extensions().map(|e| e.unwrap()).collect();
        let kinds: Vec<u8> = exts.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [wire::EXT_NVSE, wire::EXT_CVSE, wire::EXT_MH_AUTH],
            "MAC, switchover, then the authenticator"
        );
        assert!(wire::is_our_cvse(&exts[1], wire::cvse_type::SWITCHOVER));
        assert!(wire::is_switchover(&bytes, wire::REQUEST_LEN));
        let auth = r.mh_auth().unwrap().unwrap();
        // Long format: a 4-byte header, then vendor and type.
        assert!(auth.covered.len() >= exts[1].offset + 4 + exts[1].data.len());
        assert!(key.verify(auth.covered, auth.authenticator));
        assert_eq!(wire::vm_mac(&bytes, wire::REQUEST_LEN), Ok(Some(mac)));
        // A plain registration has none.
        let bytes = c.build(&params(Some(mac)), &key);
        assert!(!wire::is_switchover(&bytes, wire::REQUEST_LEN));
    }
}
