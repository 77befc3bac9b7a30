//! The registration service's burst handling on in-memory bindings and
//! store: group commit, acknowledgment only after the commit, undo on a
//! failed commit. Replies travel over loopback to the test's socket.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, SystemTime};

use dataplane::forwarder::memory::{MemoryHops, MemoryMaps};
use dataplane::table::TableReader;

use super::{Datagram, Registration};
use crate::config::RegistrationConfig;
use crate::daemon::bindings::tests::bindings;
use crate::daemon::bindings::{Bindings, Now};
use crate::registration::keys::{KeyFile, Prefix};
use crate::registration::replay::ntp_timestamp;
use crate::registration::wire::{self, flags, Reply, RequestFields};
use crate::store::MemoryStore;

const KEYS: &str = r#"
[[spi]]
spi = 256
key = "00112233445566778899aabbccddeeff"
home_addresses = ["192.0.2.0/24"]
"#;
/// The home agent's address in the requests (the bindings' HA).
const HA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const COA: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// A registration service whose socket is on loopback, and the agent's
/// socket its replies go to.
fn service() -> (Registration, UdpSocket, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, KEYS).unwrap();
    // Key files must be private (and root's: the tests run as root).
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = RegistrationConfig {
        keys,
        replay_window: Duration::from_secs(7),
        max_lifetime: 600,
        home_prefix: Some(vec![Prefix::parse("192.0.2.0/24").unwrap()]),
    };
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let r = Registration::start(
        &config,
        HA,
        false,
        0,
        || Ok(Vec::new()),
        Vec::new(),
        Some(OwnedFd::from(socket)),
    )
    .unwrap();
    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    agent
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    (r, agent, dir)
}

/// A signed request for `vm` at `COA`, from `agent`.
fn request(vm: Ipv4Addr, lifetime: u16, id: u64, agent: &UdpSocket) -> Datagram {
    request_with_mac(vm, lifetime, id, agent, None)
}

/// The same, with the VM link-layer address extension when `mac` is given
/// (raw bytes, so malformed values can be sent).
fn request_with_mac(
    vm: Ipv4Addr,
    lifetime: u16,
    id: u64,
    agent: &UdpSocket,
    mac: Option<&[u8]>,
) -> Datagram {
    let mut extensions = Vec::new();
    if let Some(mac) = mac {
        wire::Nvse {
            vendor: wire::HOMEWARD_VENDOR_ID,
            kind: wire::nvse_type::VM_LINK_LAYER_ADDRESS,
            value: mac,
        }
        .emit(&mut extensions)
        .unwrap();
    }
    signed(vm, COA, lifetime, id, &extensions, agent)
}

/// A request for `vm` at `care_of` with `extensions` before the
/// authenticator (SPI 256), from `agent`.
fn signed(
    vm: Ipv4Addr,
    care_of: Ipv4Addr,
    lifetime: u16,
    id: u64,
    extensions: &[u8],
    agent: &UdpSocket,
) -> Datagram {
    let mut bytes = Vec::new();
    RequestFields {
        flags: flags::T,
        lifetime,
        home_address: vm,
        home_agent: HA,
        care_of,
        identification: id,
    }
    .emit(&mut bytes);
    bytes.extend_from_slice(extensions);
    let keys = KeyFile::parse(KEYS).unwrap();
    keys.get(256).unwrap().key.append_mh_auth(&mut bytes, 256);
    let from = match agent.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    Datagram {
        bytes,
        from,
        received: std::time::Instant::now(),
    }
}

/// The codes of the replies that arrive within the read timeout.
fn replies(agent: &UdpSocket) -> Vec<u8> {
    let mut codes = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = agent.recv(&mut buf) {
        codes.push(Reply::new_checked(&buf[..n]).unwrap().code());
    }
    codes
}

fn vm(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 50 + i)
}

/// A service, an agent, in-memory bindings and store.
struct Lab {
    r: Registration,
    agent: UdpSocket,
    b: Bindings<MemoryMaps, MemoryHops>,
    reader: TableReader,
    store: MemoryStore,
    now: Now,
    _dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let (r, agent, _dir) = service();
        let (b, reader, now) = bindings();
        Lab {
            r,
            agent,
            b,
            reader,
            store: MemoryStore::default(),
            now,
            _dir,
        }
    }

    /// Handles one burst of requests `(vm, lifetime, id)`; returns the
    /// reply codes the agent received.
    fn burst(&mut self, requests: &[(Ipv4Addr, u16, u64)]) -> Vec<u8> {
        let burst = requests
            .iter()
            .map(|&(vm, lifetime, id)| request(vm, lifetime, id, &self.agent))
            .collect();
        self.r
            .handle_burst(burst, &mut self.b, &mut self.store, self.now);
        replies(&self.agent)
    }

    fn care_of(&self, vm: Ipv4Addr) -> Option<Ipv4Addr> {
        self.reader.lookup(vm).map(|(x, _)| x.care_of)
    }
}

#[test]
fn a_burst_shares_one_commit_and_is_answered_after_it() {
    let mut lab = Lab::new();
    let id = ntp_timestamp(SystemTime::now());
    let burst: Vec<_> = (0..3).map(|i| (vm(i), 60, id)).collect();
    assert_eq!(lab.burst(&burst), vec![0, 0, 0]);
    assert_eq!(lab.store.commits, 1, "one commit for the burst");
    assert_eq!(lab.store.bindings.len(), 3);
    assert_eq!(lab.store.replay.len(), 3, "replay state per (SPI, home)");
    for i in 0..3 {
        assert_eq!(lab.care_of(vm(i)), Some(COA));
        assert_eq!(lab.store.bindings[&vm(i)].care_of, COA);
    }
    let c = lab.r.stats().counts.unwrap();
    assert_eq!((c.accepted, c.commits, c.committed_datagrams), (3, 1, 3));
}

#[test]
fn a_failed_commit_undoes_the_burst_and_accepts_nothing() {
    let mut lab = Lab::new();
    let id = ntp_timestamp(SystemTime::now());
    lab.store.fail_next = true;
    assert!(
        lab.burst(&[(vm(0), 60, id)]).is_empty(),
        "an accept was sent for nothing"
    );
    assert_eq!(lab.care_of(vm(0)), None, "bound without being stored");
    assert!(lab.b.stored(vm(0)).is_none());
    assert_eq!(lab.r.stats().counts.unwrap().commit_failures, 1);
    // The agent retransmits the same request: its Identification was not
    // used up by the failed burst.
    assert_eq!(lab.burst(&[(vm(0), 60, id)]), vec![0]);
    assert_eq!(lab.store.bindings[&vm(0)].care_of, COA);
}

#[test]
fn deregistration_and_refusals_are_committed_or_not_as_they_should() {
    let mut lab = Lab::new();
    let id = ntp_timestamp(SystemTime::now());
    assert_eq!(lab.burst(&[(vm(0), 60, id)]), vec![0]);
    // Outside the SPI's prefix: 129, nothing bound, nothing committed.
    let outside = Ipv4Addr::new(10, 0, 0, 1);
    assert_eq!(
        lab.burst(&[(outside, 60, id + (1 << 32))]),
        vec![wire::code::ADMIN_PROHIBITED]
    );
    assert_eq!(lab.care_of(outside), None);
    assert_eq!(lab.store.commits, 1);
    // Lifetime 0: deregistered, committed, answered.
    assert_eq!(lab.burst(&[(vm(0), 0, id + (2 << 32))]), vec![0]);
    assert_eq!(lab.care_of(vm(0)), None);
    assert!(lab.store.bindings.is_empty());
    assert_eq!(lab.store.commits, 2);
}

#[test]
fn the_registered_mac_is_kept_and_gets_the_address_back_without_a_neighbour_entry() {
    // The service's LAN interface index is 0: no neighbour table to ask,
    // as for a VM the home agent never talked to.
    let mut lab = Lab::new();
    let id = ntp_timestamp(SystemTime::now());
    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x51];
    let d = request_with_mac(vm(0), 60, id, &lab.agent, Some(&MAC));
    lab.r
        .handle_burst(vec![d], &mut lab.b, &mut lab.store, lab.now);
    assert_eq!(replies(&lab.agent), vec![0]);
    assert_eq!(lab.b.vm_mac(vm(0)), Some(MAC));
    assert_eq!(lab.store.bindings[&vm(0)].vm_mac, Some(MAC), "stored");
    // While bound, the address is announced at the HA's own MAC.
    assert_ne!(lab.b.announcing(vm(0)), Some(MAC));

    // A refresh without the extension keeps it.
    assert_eq!(lab.burst(&[(vm(0), 60, id + (1 << 32))]), vec![0]);
    assert_eq!(lab.store.bindings[&vm(0)].vm_mac, Some(MAC));

    // Deregistered: handed back to the VM's MAC.
    assert_eq!(lab.burst(&[(vm(0), 0, id + (2 << 32))]), vec![0]);
    assert!(lab.store.bindings.is_empty());
    assert_eq!(lab.b.announcing(vm(0)), Some(MAC));
    assert_eq!(lab.r.stats().counts.unwrap().vm_mac_ignored, 0);
}

#[test]
fn a_deregistration_with_the_mac_gives_back_a_binding_made_without_one() {
    let mut lab = Lab::new();
    let id = ntp_timestamp(SystemTime::now());
    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x52];
    assert_eq!(lab.burst(&[(vm(1), 60, id)]), vec![0]);
    assert_eq!(lab.b.vm_mac(vm(1)), None);
    let d = request_with_mac(vm(1), 0, id + (1 << 32), &lab.agent, Some(&MAC));
    lab.r
        .handle_burst(vec![d], &mut lab.b, &mut lab.store, lab.now);
    assert_eq!(replies(&lab.agent), vec![0]);
    assert_eq!(lab.b.announcing(vm(1)), Some(MAC));
}

#[test]
fn an_unusable_mac_is_ignored_and_counted_not_refused() {
    let mut lab = Lab::new();
    let id = ntp_timestamp(SystemTime::now());
    let bad: [&[u8]; 3] = [&[0xff; 6], &[0x02, 0, 0x5e, 0, 0], &[0; 6]];
    for (i, mac) in bad.into_iter().enumerate() {
        let d = request_with_mac(vm(2), 60, id + ((i as u64) << 32), &lab.agent, Some(mac));
        lab.r
            .handle_burst(vec![d], &mut lab.b, &mut lab.store, lab.now);
        assert_eq!(replies(&lab.agent), vec![0], "{mac:?}");
        assert_eq!(lab.b.vm_mac(vm(2)), None, "{mac:?}");
    }
    assert_eq!(lab.r.stats().counts.unwrap().vm_mac_ignored, 3);
}

/// A switchover request: `vm` from `care_of` (its source), holding for
/// `lifetime` seconds.
fn switchover(
    vm: Ipv4Addr,
    care_of: Ipv4Addr,
    lifetime: u16,
    id: u64,
    agent: &UdpSocket,
) -> Datagram {
    let mut extensions = Vec::new();
    wire::push_switchover(&mut extensions);
    signed(vm, care_of, lifetime, id, &extensions, agent)
}

#[test]
fn a_switchover_from_home_holds_until_the_destination_registers() {
    let mut lab = Lab::new();
    let id = ntp_timestamp(SystemTime::now());
    // The source is the VM's home hypervisor, on the home network.
    let source = Ipv4Addr::new(192, 0, 2, 20);
    let d = switchover(vm(0), source, 5, id, &lab.agent);
    lab.r
        .handle_burst(vec![d], &mut lab.b, &mut lab.store, lab.now);
    assert_eq!(replies(&lab.agent), vec![0], "confirmed");
    assert_eq!(lab.care_of(vm(0)), Some(Ipv4Addr::UNSPECIFIED), "held");
    assert!(lab.b.holding(vm(0)));
    assert!(lab.store.bindings.is_empty(), "a hold is not stored");
    assert_eq!(lab.store.replay.len(), 1, "its Identification is used up");
    // The destination registers: bound there, stored.
    assert_eq!(lab.burst(&[(vm(0), 60, id + (1 << 32))]), vec![0]);
    assert_eq!(lab.care_of(vm(0)), Some(COA));
    assert!(!lab.b.holding(vm(0)));
    assert_eq!(lab.store.bindings[&vm(0)].care_of, COA);

    // Foreign -> home: held, then the deregistration from home ends it.
    let d = switchover(vm(0), COA, 5, id + (2 << 32), &lab.agent);
    lab.r
        .handle_burst(vec![d], &mut lab.b, &mut lab.store, lab.now);
    assert_eq!(replies(&lab.agent), vec![0]);
    assert!(lab.b.holding(vm(0)));
    assert_eq!(lab.store.bindings[&vm(0)].care_of, COA, "the store keeps B");
    assert_eq!(lab.burst(&[(vm(0), 0, id + (3 << 32))]), vec![0]);
    assert!(!lab.b.holding(vm(0)));
    assert_eq!(lab.care_of(vm(0)), None);
    assert!(lab.store.bindings.is_empty());
}

#[test]
fn a_switchover_from_home_is_ended_by_a_deregistration_when_the_migration_fails() {
    let mut lab = Lab::new();
    let id = ntp_timestamp(SystemTime::now());
    let d = switchover(vm(2), Ipv4Addr::new(192, 0, 2, 20), 5, id, &lab.agent);
    lab.r
        .handle_burst(vec![d], &mut lab.b, &mut lab.store, lab.now);
    assert_eq!(replies(&lab.agent), vec![0]);
    assert!(lab.b.holding(vm(2)));
    // Cancelled: the VM runs at home again and its agent deregisters.
    assert_eq!(lab.burst(&[(vm(2), 0, id + (1 << 32))]), vec![0]);
    assert!(!lab.b.holding(vm(2)));
    assert_eq!(lab.care_of(vm(2)), None, "nothing left bound");
}

/// A standby gateway listens on the virtual address before keepalived gives
/// it the address; without that, binding to a foreign address fails.
#[test]
fn a_standby_binds_the_virtual_address_it_does_not_have_yet() {
    let not_ours = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(192, 0, 2, 77), 0);
    let refused = super::bind(not_ours, false).unwrap_err();
    assert_eq!(
        refused.raw_os_error(),
        Some(libc::EADDRNOTAVAIL),
        "{refused}"
    );
    let socket = super::bind(not_ours, true).unwrap();
    assert_eq!(
        socket.local_addr().unwrap().ip(),
        std::net::IpAddr::V4(*not_ours.ip())
    );
}
