//! Loads the XDP steering program, attaches it to the home agent's
//! interfaces and keeps its maps in sync with the binding table.
//!
//! The program (`bpf/steer.c`) is compiled by `build.rs` with clang and
//! embedded in the crate. It redirects to the AF_XDP socket of the ingress
//! port and queue only the frames that concern a binding (IPv4 to a bound VM,
//! ARP requests for a bound VM on the LAN, IPIP from a bound care-of address)
//! and passes everything else to the kernel untouched (malformed and short
//! frames included). All three classes are recognised untagged or under one
//! 802.1Q tag; two tags (QinQ) are passed. The port is 0 when the ingress
//! ifindex is the LAN's (so always in one-armed mode), 1 when it is the
//! WAN's; the socket key is `port * 64 + ctx->rx_queue_index`.
//!
//! Without a pin directory nothing is pinned: the program and its maps live
//! exactly as long as the [`Steering`] value; dropping it detaches the
//! program from every interface it attached to and unloads it.
//! [`Steering::pin_maps`] pins the maps on request (for bpftool).
//!
//! # Restart after a crash
//!
//! The XDP attachment outlives the process: after `kill -9` the program
//! stays attached (steering bound VMs' traffic to sockets that no longer
//! exist). Given a pin directory (`pin` of [`Steering::attach`] and
//! [`Steering::attach_foreign_agent`], e.g. `/sys/fs/bpf/homeward/<instance>`),
//! the loader pins each new program there as `prog-<kernel id>` before
//! attaching it. A later start with the same directory recognises a program
//! attached to one of its interfaces as a previous homeward's when that pin
//! holds it, and replaces it atomically (`XDP_FLAGS_REPLACE`, in the mode it
//! is attached in: no moment without a program); any other program is
//! refused with [`LoaderError::AlreadyAttached`] and never touched. Once
//! every interface is attached, the earlier runs' pins are removed. A clean
//! drop detaches and removes the pins. See `loader/pin.rs`.
//!
//! # Maps (their names are API)
//!
//! | name | type | key | value |
//! |---|---|---|---|
//! | `bound_vms` | HASH, `max_bindings` entries | VM home IPv4, `u32` network order | care-of IPv4, `u32` network order |
//! | `care_ofs` | HASH, `max_bindings` entries | care-of IPv4, `u32` network order | bindings using it, `u32` host order |
//! | `xsks` | XSKMAP, 128 entries | `port * 64 + rx queue` (`u32`; port 0 LAN, 1 WAN) | AF_XDP socket fd |
//! | `config` | ARRAY, 1 entry | `0u32` | [`SteerConfig`] (LAN, WAN ifindex) |
//! | `counters` | PERCPU_ARRAY, [`COUNTERS`] entries | counter index `u32` | `u64` per CPU |
//!
//! Besides `xsk/`, this is the one module with `unsafe` (libbpf FFI).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};

use libxdp_sys as sys;
use thiserror::Error;

/// The compiled steering program, 8-byte aligned for libelf.
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

static STEER_OBJ: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o")));

/// Name of the XDP program in `bpf/steer.c`.
pub const PROGRAM_NAME: &str = "homeward_steer";
/// Map: bound VM address -> care-of address.
pub const MAP_BOUND_VMS: &str = "bound_vms";
/// Map: care-of address -> number of bindings using it.
pub const MAP_CARE_OFS: &str = "care_ofs";
/// Map: `port * MAX_QUEUES + queue` -> AF_XDP socket.
pub const MAP_XSKS: &str = "xsks";
/// Map: `[0]` = [`SteerConfig`].
pub const MAP_CONFIG: &str = "config";
/// Map: per-CPU packet counters, one per outcome.
pub const MAP_COUNTERS: &str = "counters";
const MAP_NAMES: [&str; 5] = [
    MAP_BOUND_VMS,
    MAP_CARE_OFS,
    MAP_XSKS,
    MAP_CONFIG,
    MAP_COUNTERS,
];

/// Queues per port in the `xsks` key space (`MAX_QUEUES` in `bpf/consts.h`).
pub const MAX_QUEUES: u32 = 64;
/// Port of the LAN (home link) interface (`PORT_LAN`).
pub const PORT_LAN: u32 = 0;
/// Port of the WAN interface (`PORT_WAN`); unused in one-armed mode.
pub const PORT_WAN: u32 = 1;
/// Number of ports (`N_PORTS`).
pub const N_PORTS: u32 = 2;
/// Default size of `bound_vms` and `care_ofs` (`DEFAULT_MAX_BINDINGS`).
pub const DEFAULT_MAX_BINDINGS: u32 = 65536;
/// Upper bound accepted for `max_bindings` (keeps the hash maps' memory sane).
pub const MAX_MAX_BINDINGS: u32 = 1 << 24;

/// XDP action numbers (`enum xdp_action`), as returned by [`Steering::test_run`].
pub mod action {
    /// `XDP_ABORTED`
    pub const ABORTED: u32 = libxdp_sys::xdp_action_XDP_ABORTED;
    /// `XDP_DROP`
    pub const DROP: u32 = libxdp_sys::xdp_action_XDP_DROP;
    /// `XDP_PASS`
    pub const PASS: u32 = libxdp_sys::xdp_action_XDP_PASS;
    /// `XDP_TX`
    pub const TX: u32 = libxdp_sys::xdp_action_XDP_TX;
    /// `XDP_REDIRECT`
    pub const REDIRECT: u32 = libxdp_sys::xdp_action_XDP_REDIRECT;
}

// Indices of `counters` (`enum steer_counter` in bpf/consts.h).
const CNT_STEERED_IPV4: u32 = 0;
const CNT_STEERED_ARP: u32 = 1;
const CNT_STEERED_IPIP: u32 = 2;
const CNT_PASSED: u32 = 3;
const CNT_NO_SOCKET: u32 = 4;
const CNT_MALFORMED_L2: u32 = 5;
const CNT_MALFORMED_L3: u32 = 6;
const CNT_UNKNOWN_INGRESS: u32 = 7;
const CNT_DROPPED_IPIP: u32 = 8;
/// Number of counters (`CNT_MAX`).
pub const COUNTERS: u32 = 9;

// linux/if_link.h; not in libxdp-sys' bindings.
const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_FLAGS_REPLACE: u32 = 1 << 4;

mod pin;

/// Value of `config[0]` (`struct steer_config` in bpf/structs.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerConfig {
    /// Ifindex of the LAN interface (port 0; the foreign agent's VM link).
    pub lan_ifindex: u32,
    /// Ifindex of the WAN interface (port 1; the foreign agent's uplink); equal to
    /// `lan_ifindex` in one-armed mode.
    pub wan_ifindex: u32,
    /// [`ROLE_HOME_AGENT`], [`ROLE_HOME_AGENT_BACKUP`] or [`ROLE_FOREIGN_AGENT`].
    pub role: u32,
    /// Foreign agent: its care-of address, network byte order (as the packet carries it).
    pub local_addr: u32,
}
// bpf/structs.h asserts the same size; `Steering::load` also checks it against the object's BTF.
const _: () = assert!(size_of::<SteerConfig>() == 16);

/// `SteerConfig::role` of a home agent (`ROLE_HOME_AGENT` in bpf/consts.h).
pub const ROLE_HOME_AGENT: u32 = 0;
/// `SteerConfig::role` of a foreign agent (`ROLE_FOREIGN_AGENT` in bpf/consts.h).
pub const ROLE_FOREIGN_AGENT: u32 = 1;
/// `SteerConfig::role` of a home agent on standby, which answers no ARP
/// (`ROLE_HOME_AGENT_BACKUP` in bpf/consts.h).
pub const ROLE_HOME_AGENT_BACKUP: u32 = 2;

extern "C" {
    // In the libbpf that libxdp-sys links, but not in its bindings.
    fn libbpf_num_possible_cpus() -> c_int;
}

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// In the generic path, after the skb is built (`XDP_FLAGS_SKB_MODE`).
    Generic,
}

impl AttachMode {
    fn flag(self) -> u32 {
        match self {
            AttachMode::Native => XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic (skb)",
        })
    }
}

/// One interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name at attach time.
    pub ifname: String,
    /// How it is attached.
    pub mode: AttachMode,
    /// Kernel id of the program a previous homeward left attached here (a
    /// crash) and that ours replaced; `None` if the interface had none.
    pub replaced: Option<u32>,
}

/// Why an XDP program found attached is not replaced (see
/// [`LoaderError::AlreadyAttached`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotOurs {
    /// No pin directory was given: nothing to recognise a previous
    /// homeward's program by.
    NoPinDir,
    /// Nothing, or another program, is pinned at `pin`, where a previous
    /// homeward with this pin directory would have pinned it.
    NotPinned {
        /// `<pin dir>/prog-<id>`
        pin: PathBuf,
    },
    /// Pinned as ours, but attached in a way homeward never attaches
    /// (offloaded, or in two modes at once).
    UnexpectedMode {
        /// `<pin dir>/prog-<id>`
        pin: PathBuf,
    },
    /// It appeared or changed while we were attaching (another loader raced us).
    Changed,
}

impl fmt::Display for NotOurs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotOurs::NoPinDir => f.write_str(
                "refusing to replace it: without a pin directory homeward cannot tell a program \
                 a previous homeward left from anyone else's",
            ),
            NotOurs::NotPinned { pin } => write!(
                f,
                "it is not homeward's (no matching pin: {} does not hold it), so it is left alone",
                pin.display()
            ),
            NotOurs::UnexpectedMode { pin } => write!(
                f,
                "it is pinned as homeward's at {} but attached offloaded or in two modes at once, \
                 which homeward never does, so it is left alone",
                pin.display()
            ),
            NotOurs::Changed => f.write_str(
                "another loader attached or changed it while homeward was attaching, so it is left alone",
            ),
        }
    }
}

/// The steering program's counters, summed over CPUs.
///
/// Every frame the program sees increments exactly one of `steered_*`,
/// `passed`, `malformed_*`, `unknown_ingress`. A steered frame went to the
/// AF_XDP socket unless `no_socket` was counted for it too (no socket at its
/// port and queue: it went to the kernel instead).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SteerCounters {
    /// IPv4 to a bound VM address.
    pub steered_ipv4: u64,
    /// ARP requests for a bound VM address, on the LAN.
    pub steered_arp: u64,
    /// IPIP whose outer source is a bound care-of address.
    pub steered_ipip: u64,
    /// Well formed and not ours: passed to the kernel.
    pub passed: u64,
    /// Steered, but no AF_XDP socket at the port and queue (or the queue is
    /// 64 or above): passed to the kernel. Also counted in its `steered_*`.
    pub no_socket: u64,
    /// Truncated Ethernet or 802.1Q header: passed to the kernel.
    pub malformed_l2: u64,
    /// Truncated or invalid IPv4 or ARP header: passed to the kernel.
    pub malformed_l3: u64,
    /// Ingress interface neither LAN nor WAN (only seen with BPF_PROG_RUN): passed.
    pub unknown_ingress: u64,
    /// Foreign agent: IPIP to its care-of address not from the home agent of a VM it
    /// serves: dropped (CVE-2020-10136).
    pub dropped_ipip: u64,
}

impl SteerCounters {
    /// Frames classified as ours (whether or not a socket took them).
    pub fn steered(&self) -> u64 {
        self.steered_ipv4 + self.steered_arp + self.steered_ipip
    }

    /// Frames the program has seen.
    pub fn total(&self) -> u64 {
        self.steered()
            + self.passed
            + self.malformed_l2
            + self.malformed_l3
            + self.unknown_ingress
            + self.dropped_ipip
    }
}

/// Errors of the BPF loader. Each names what it was doing and carries the errno.
#[derive(Debug, Error)]
pub enum LoaderError {
    /// libbpf could not open the embedded object.
    #[error("opening the embedded steering BPF object: {0}")]
    Open(#[source] io::Error),
    /// The embedded object lacks a program or map this loader needs.
    #[error("the steering BPF object has no {kind} `{name}`")]
    Missing {
        /// "program" or "map"
        kind: &'static str,
        /// its name
        name: &'static str,
    },
    /// bpf/structs.h or consts.h and this file disagree.
    #[error("map `{map}`: {what} is {found} in the BPF object but {expected} in loader.rs (bpf/ and loader.rs disagree)")]
    Layout {
        /// map name
        map: &'static str,
        /// "key size", "value size", "max entries"
        what: &'static str,
        /// what loader.rs expects
        expected: u32,
        /// what the object says
        found: u32,
    },
    /// `max_bindings` out of range.
    #[error("max_bindings must be between 1 and {MAX_MAX_BINDINGS}, got {0}")]
    InvalidMaxBindings(u32),
    /// libbpf refused to resize a map.
    #[error("sizing map `{map}` to {entries} entries: {source}")]
    Resize {
        /// map name
        map: &'static str,
        /// requested entries
        entries: u32,
        /// errno
        source: io::Error,
    },
    /// The kernel refused the program or a map (verifier, permissions, memory).
    #[error("loading the steering program into the kernel (needs root, or CAP_BPF and CAP_NET_ADMIN): {source}{log}")]
    Load {
        /// errno
        source: io::Error,
        /// tail of the verifier log, if any, prefixed by a newline
        log: String,
    },
    /// No interface has this index.
    #[error("no network interface with ifindex {ifindex}")]
    NoSuchInterface {
        /// the index
        ifindex: u32,
    },
    /// Another XDP program is attached already and it is not one that a
    /// previous homeward with this pin directory left: we never replace it.
    #[error("{ifname} (ifindex {ifindex}) already has an XDP program attached (id {prog_id}{}); {why}; remove it with `ip link set dev {ifname} {ip_mode} off` if it is stale, or use another interface", named(.prog_name))]
    AlreadyAttached {
        /// interface name
        ifname: String,
        /// interface index
        ifindex: u32,
        /// id of the program found there (0 if the kernel did not say)
        prog_id: u32,
        /// its name ("" if unknown)
        prog_name: String,
        /// why it is not replaced
        why: NotOurs,
        /// the `ip link` keyword of the mode it is attached in (`xdpdrv`,
        /// `xdpgeneric`, `xdpoffload`; `xdp` if unknown)
        ip_mode: &'static str,
    },
    /// Reading the interface's XDP state failed.
    #[error("querying the XDP program of {ifname} (ifindex {ifindex}): {source}")]
    Query {
        /// interface name
        ifname: String,
        /// interface index
        ifindex: u32,
        /// errno
        source: io::Error,
    },
    /// The kernel refused the attachment.
    #[error("attaching XDP to {ifname} (ifindex {ifindex}) in {mode} mode: {source}")]
    Attach {
        /// interface name
        ifname: String,
        /// interface index
        ifindex: u32,
        /// the mode tried last
        mode: AttachMode,
        /// errno
        source: io::Error,
    },
    /// A map operation failed.
    #[error("{op} in map `{map}`: {source}")]
    Map {
        /// map name
        map: &'static str,
        /// "update", "delete", "lookup", "iterate"
        op: &'static str,
        /// errno
        source: io::Error,
    },
    /// A hash map is full (`max_bindings`).
    #[error("map `{map}` is full ({max_entries} entries; raise max_bindings)")]
    MapFull {
        /// map name
        map: &'static str,
        /// its size
        max_entries: u32,
    },
    /// Port or queue outside the `xsks` key space.
    #[error("no AF_XDP socket slot for port {port} queue {queue}: {reason}")]
    SocketSlot {
        /// port (0 LAN, 1 WAN)
        port: u32,
        /// queue
        queue: u32,
        /// why
        reason: &'static str,
    },
    /// BPF_PROG_RUN failed.
    #[error("BPF_PROG_RUN of the steering program (ingress ifindex {ifindex}, queue {queue}, {len} bytes): {source}")]
    TestRun {
        /// ingress ifindex given
        ifindex: u32,
        /// rx queue given
        queue: u32,
        /// frame length
        len: usize,
        /// errno
        source: io::Error,
    },
    /// Mounting bpffs or pinning a map failed.
    #[error("pinning maps at {}: {source}", path.display())]
    Pin {
        /// the path
        path: PathBuf,
        /// errno
        source: io::Error,
    },
    /// Setting up or using the pin directory failed.
    #[error("pin directory: {op} {}: {source}", path.display())]
    PinDir {
        /// what was being done ("creating", "locking", "pinning the steering program at", ...)
        op: &'static str,
        /// the path
        path: PathBuf,
        /// errno
        source: io::Error,
    },
    /// Another running homeward holds the pin directory.
    #[error("pin directory {} is in use by another running homeward (it holds the directory's lock); give each instance its own pin directory", path.display())]
    PinDirBusy {
        /// the path
        path: PathBuf,
    },
    /// The pin directory is not on a bpf filesystem.
    #[error("{} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)", path.display())]
    NotBpffs {
        /// the path
        path: PathBuf,
    },
}

/// The `sz` of a libbpf options struct: the end of its last field. libbpf
/// rejects non-zero bytes between that and `sz`, and trailing padding is not
/// guaranteed to stay zero in a Rust value, so it must not be counted.
macro_rules! opts_size {
    ($t:ty, $last:ident, $last_ty:ty) => {
        std::mem::offset_of!($t, $last) + size_of::<$last_ty>()
    };
}

/// `, name `x`` for a non-empty program name (in [`LoaderError::AlreadyAttached`]).
fn named(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!(", name `{name}`")
    }
}

/// `-ret` as an io::Error (libbpf returns negative errno).
fn neg_errno(ret: c_int) -> io::Error {
    io::Error::from_raw_os_error(ret.checked_neg().unwrap_or(libc::EINVAL))
}

/// An IPv4 address as the `u32` whose memory holds it in network order.
fn addr_key(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

fn key_addr(key: u32) -> Ipv4Addr {
    Ipv4Addr::from(key.to_ne_bytes())
}

/// A loaded `bpf_object`; closed on drop (which unloads the program and
/// frees the maps once nothing else holds them).
struct Object {
    ptr: NonNull<sys::bpf_object>,
    /// Verifier log buffer handed to libbpf at open; must outlive `ptr`.
    log: Box<[u8]>,
}

// SAFETY: after load, the object is only read through file descriptors
// cached at load time (bpf syscalls are thread-safe) and closed once, in
// Drop; no libbpf state is mutated through a shared reference.
unsafe impl Send for Object {}
// SAFETY: as above: `&Object` gives access to nothing but those fds.
unsafe impl Sync for Object {}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from bpf_object__open_mem and is closed only here.
        unsafe { sys::bpf_object__close(self.ptr.as_ptr()) };
    }
}

impl Object {
    fn map(&self, name: &'static str) -> Result<*mut sys::bpf_map, LoaderError> {
        let cname = CString::new(name).map_err(|_| LoaderError::Missing { kind: "map", name })?;
        // SAFETY: `ptr` is a live object; `cname` is NUL-terminated and outlives the call.
        let map = unsafe { sys::bpf_object__find_map_by_name(self.ptr.as_ptr(), cname.as_ptr()) };
        if map.is_null() {
            return Err(LoaderError::Missing { kind: "map", name });
        }
        Ok(map)
    }
}

/// File descriptors of the maps (owned by the object).
#[derive(Clone, Copy, Debug)]
struct MapFds {
    bound_vms: RawFd,
    care_ofs: RawFd,
    xsks: RawFd,
    config: RawFd,
    counters: RawFd,
}

/// The steering program, loaded and (after [`Steering::attach`]) attached.
///
/// Owns the BPF object and the list of interfaces it is attached to; it
/// writes `bound_vms` and `care_ofs` as told (the forwarder keeps the
/// bindings and their reference counts). Without a pin directory nothing is
/// pinned (see [`Steering::pin_maps`]). Dropping it detaches the program from
/// every interface where it is still the attached program, removes its pins
/// from the pin directory (and the directory if that empties it), and
/// unloads it.
pub struct Steering {
    /// Kept alive: closing it unloads the program and frees the maps.
    _obj: Object,
    prog_fd: RawFd,
    maps: MapFds,
    max_bindings: u32,
    config: SteerConfig,
    attached: Vec<Attachment>,
    ncpus: usize,
    /// The locked pin directory, if attached with one.
    pins: Option<pin::PinDir>,
    /// Where `pins` is, kept while the lock is lent to a successor.
    pin_path: Option<PathBuf>,
    /// Interfaces to attach to, in order (port 0 first).
    ifaces: Vec<u32>,
}

impl fmt::Debug for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Steering")
            .field("prog_fd", &self.prog_fd)
            .field("config", &self.config)
            .field("attached", &self.attached)
            .field("max_bindings", &self.max_bindings)
            .field("pin_dir", &self.pin_dir())
            .finish_non_exhaustive()
    }
}

impl Steering {
    /// Load the program and attach it to `lan_ifindex` and, if given and
    /// different, `wan_ifindex`: native XDP (`XDP_FLAGS_DRV_MODE`) where the
    /// driver has it, else generic (`XDP_FLAGS_SKB_MODE`). `max_bindings`
    /// sizes `bound_vms` and `care_ofs`.
    ///
    /// An interface that already has an XDP program is refused with
    /// [`LoaderError::AlreadyAttached`] (`XDP_FLAGS_UPDATE_IF_NOEXIST`),
    /// unless `pin` is given and the program is one a previous homeward with
    /// this pin directory left there (it crashed): that one is replaced
    /// atomically, in the mode it is attached in (see the module docs).
    ///
    /// `pin` (e.g. `/sys/fs/bpf/homeward/<instance>`, one per instance) is
    /// created, mounting bpffs at `/sys/fs/bpf` first if it is below and
    /// not mounted, and locked for the life of the value
    /// ([`LoaderError::PinDirBusy`] if another running homeward holds it).
    /// The program is pinned there as `prog-<id>` before it is attached, the
    /// maps as `maps/<name>` (replacing older pins); the pins of earlier
    /// runs are removed once every interface is attached. With `pin` `None`
    /// nothing is pinned.
    ///
    /// With `wan_ifindex` `None` or equal to `lan_ifindex` (one-armed mode),
    /// every frame is on port 0 and only port-0 sockets are used.
    /// If attaching the second interface fails, the first is detached again
    /// before the error is returned (and the pins of earlier runs are kept).
    pub fn attach(
        lan_ifindex: u32,
        wan_ifindex: Option<u32>,
        max_bindings: u32,
        pin: Option<&Path>,
    ) -> Result<Steering, LoaderError> {
        let mut steering = Steering::load(lan_ifindex, wan_ifindex, max_bindings)?;
        steering.go_live(pin)?;
        Ok(steering)
    }

    /// The foreign agent's steering: the program in the foreign-agent role
    /// (see bpf/steer.c), attached to the VM link (port 0) and the uplink
    /// (port 1), which must differ. `care_of` is the uplink address the
    /// home agents tunnel to. In this role `bind(vm, home_agent)` serves a VM.
    /// `pin` as in [`Steering::attach`].
    pub fn attach_foreign_agent(
        vm_link_ifindex: u32,
        uplink_ifindex: u32,
        care_of: Ipv4Addr,
        max_bindings: u32,
        pin: Option<&Path>,
    ) -> Result<Steering, LoaderError> {
        let mut steering =
            Steering::load_foreign_agent(vm_link_ifindex, uplink_ifindex, care_of, max_bindings)?;
        steering.go_live(pin)?;
        Ok(steering)
    }

    /// [`Steering::attach_foreign_agent`] without the attaching: maps ready
    /// to fill, then [`Steering::go_live`].
    pub fn load_foreign_agent(
        vm_link_ifindex: u32,
        uplink_ifindex: u32,
        care_of: Ipv4Addr,
        max_bindings: u32,
    ) -> Result<Steering, LoaderError> {
        let mut steering = Steering::load(vm_link_ifindex, Some(uplink_ifindex), max_bindings)?;
        steering.set_foreign_agent(care_of)?;
        Ok(steering)
    }

    /// Pin (if `pin`), attach to the interfaces given at load, in order
    /// (replacing the program an earlier run with this pin directory left,
    /// see [`Steering::attach`]), then drop the pins of earlier runs.
    ///
    /// Loading first and going live last lets a caller fill the maps and
    /// register its sockets before any frame meets the program. On error the
    /// caller drops `self`, which detaches what was attached and removes
    /// this run's pins.
    pub fn go_live(&mut self, pin: Option<&Path>) -> Result<(), LoaderError> {
        if let Some(dir) = pin {
            self.pin_path = Some(dir.to_path_buf());
            let mut pins = pin::PinDir::open(dir)?;
            let id = self.prog_id().map_err(|source| LoaderError::PinDir {
                op: "reading the kernel id of the program to pin in",
                path: dir.to_path_buf(),
                source,
            })?;
            // Pinned before attaching: a crash from here on leaves a program
            // that the next start recognises.
            let pinned = pins.pin_program(self.prog_fd, id);
            self.pins = Some(pins);
            pinned?;
            let maps = self.map_fds();
            if let Some(pins) = self.pins.as_mut() {
                pins.pin_maps(&maps)?;
            }
        }
        for ifindex in self.ifaces.clone() {
            self.attach_to(ifindex)?;
        }
        if let Some(pins) = &self.pins {
            pins.remove_stale();
        }
        Ok(())
    }

    /// Takeover, predecessor side: leave the program attached and pinned,
    /// exactly as a crash would, and unlock the pin directory, so that the
    /// successor recognises the program and replaces it atomically. After
    /// this, dropping `self` detaches and unpins nothing.
    pub fn lend_to_successor(&mut self) {
        self.attached.clear();
        // Dropping the PinDir without `close` releases only the lock.
        self.pins = None;
    }

    /// Takeover failed after [`Steering::lend_to_successor`]: lock the pin
    /// directory again, pin the program again (the successor may have
    /// removed the pin) and make sure it is the attached one everywhere.
    pub fn reclaim_from_successor(&mut self) -> Result<(), LoaderError> {
        let Some(dir) = self.pin_path.clone() else {
            return Ok(());
        };
        let mut pins = pin::PinDir::open(&dir)?;
        let id = self.prog_id().map_err(|source| LoaderError::PinDir {
            op: "reading the kernel id of the program to pin in",
            path: dir.clone(),
            source,
        })?;
        pins.repin_program(self.prog_fd, id)?;
        self.pins = Some(pins);
        let maps = self.map_fds();
        if let Some(pins) = self.pins.as_mut() {
            pins.pin_maps(&maps)?;
        }
        for ifindex in self.ifaces.clone() {
            self.attach_to(ifindex)?;
        }
        Ok(())
    }

    /// Switch a loaded program to the foreign-agent role with this care-of address.
    pub fn set_foreign_agent(&mut self, care_of: Ipv4Addr) -> Result<(), LoaderError> {
        self.set_config(SteerConfig {
            role: ROLE_FOREIGN_AGENT,
            local_addr: u32::from_ne_bytes(care_of.octets()),
            ..self.config
        })
    }

    /// A home agent's program: the active gateway (answers ARP for the
    /// bound VMs) or the standby (passes those requests to the kernel,
    /// which does not answer them). Takes effect on the next frame.
    pub fn set_home_agent_standby(&mut self, standby: bool) -> Result<(), LoaderError> {
        let role = if standby {
            ROLE_HOME_AGENT_BACKUP
        } else {
            ROLE_HOME_AGENT
        };
        self.set_config(SteerConfig {
            role,
            ..self.config
        })
    }

    /// Whether the program is a home agent on standby.
    pub fn standby(&self) -> bool {
        self.config.role == ROLE_HOME_AGENT_BACKUP
    }

    fn set_config(&mut self, config: SteerConfig) -> Result<(), LoaderError> {
        map_update(self.maps.config, &0u32, &config, sys::BPF_ANY as u64).map_err(|source| {
            LoaderError::Map {
                map: MAP_CONFIG,
                op: "update",
                source,
            }
        })?;
        self.config = config;
        Ok(())
    }

    /// Load the program and configure its ports without attaching it
    /// anywhere: for [`Steering::test_run`] (BPF_PROG_RUN) and tests.
    pub fn load(
        lan_ifindex: u32,
        wan_ifindex: Option<u32>,
        max_bindings: u32,
    ) -> Result<Steering, LoaderError> {
        if max_bindings == 0 || max_bindings > MAX_MAX_BINDINGS {
            return Err(LoaderError::InvalidMaxBindings(max_bindings));
        }
        let obj = open_object()?;

        // Check every map's layout against this file before the kernel sees it.
        let layouts: [(&'static str, usize, usize, Option<u32>); 5] = [
            (MAP_BOUND_VMS, size_of::<u32>(), size_of::<u32>(), None),
            (MAP_CARE_OFS, size_of::<u32>(), size_of::<u32>(), None),
            (
                MAP_XSKS,
                size_of::<u32>(),
                size_of::<u32>(),
                Some(N_PORTS * MAX_QUEUES),
            ),
            (
                MAP_CONFIG,
                size_of::<u32>(),
                size_of::<SteerConfig>(),
                Some(1),
            ),
            (
                MAP_COUNTERS,
                size_of::<u32>(),
                size_of::<u64>(),
                Some(COUNTERS),
            ),
        ];
        for (name, key_size, value_size, entries) in layouts {
            let map = obj.map(name)?;
            // SAFETY: `map` belongs to the live, opened object.
            let (k, v, n) = unsafe {
                (
                    sys::bpf_map__key_size(map),
                    sys::bpf_map__value_size(map),
                    sys::bpf_map__max_entries(map),
                )
            };
            check_layout(name, "key size", key_size as u32, k)?;
            check_layout(name, "value size", value_size as u32, v)?;
            if let Some(entries) = entries {
                check_layout(name, "max entries", entries, n)?;
            }
        }

        for name in [MAP_BOUND_VMS, MAP_CARE_OFS] {
            let map = obj.map(name)?;
            // SAFETY: `map` belongs to the opened, not yet loaded object.
            let ret = unsafe { sys::bpf_map__set_max_entries(map, max_bindings) };
            if ret < 0 {
                return Err(LoaderError::Resize {
                    map: name,
                    entries: max_bindings,
                    source: neg_errno(ret),
                });
            }
        }

        // SAFETY: the object is open and not loaded yet; its log buffer is alive.
        let ret = unsafe { sys::bpf_object__load(obj.ptr.as_ptr()) };
        if ret < 0 {
            return Err(LoaderError::Load {
                source: neg_errno(ret),
                log: log_tail(&obj.log),
            });
        }

        let prog_name = CString::new(PROGRAM_NAME).map_err(|_| LoaderError::Missing {
            kind: "program",
            name: PROGRAM_NAME,
        })?;
        // SAFETY: live object; NUL-terminated name that outlives the call.
        let prog =
            unsafe { sys::bpf_object__find_program_by_name(obj.ptr.as_ptr(), prog_name.as_ptr()) };
        if prog.is_null() {
            return Err(LoaderError::Missing {
                kind: "program",
                name: PROGRAM_NAME,
            });
        }
        // SAFETY: `prog` belongs to the live, loaded object.
        let prog_fd = unsafe { sys::bpf_program__fd(prog) };
        if prog_fd < 0 {
            return Err(LoaderError::Missing {
                kind: "program",
                name: PROGRAM_NAME,
            });
        }

        let fd = |name: &'static str| -> Result<RawFd, LoaderError> {
            let map = obj.map(name)?;
            // SAFETY: `map` belongs to the live, loaded object.
            let fd = unsafe { sys::bpf_map__fd(map) };
            if fd < 0 {
                return Err(LoaderError::Missing { kind: "map", name });
            }
            Ok(fd)
        };
        let maps = MapFds {
            bound_vms: fd(MAP_BOUND_VMS)?,
            care_ofs: fd(MAP_CARE_OFS)?,
            xsks: fd(MAP_XSKS)?,
            config: fd(MAP_CONFIG)?,
            counters: fd(MAP_COUNTERS)?,
        };

        // SAFETY: no arguments; reads /sys/devices/system/cpu/possible.
        let ncpus = unsafe { libbpf_num_possible_cpus() };
        let ncpus = usize::try_from(ncpus).map_err(|_| LoaderError::Map {
            map: MAP_COUNTERS,
            op: "count possible CPUs for",
            source: neg_errno(ncpus),
        })?;

        let config = SteerConfig {
            lan_ifindex,
            wan_ifindex: wan_ifindex.unwrap_or(lan_ifindex),
            role: ROLE_HOME_AGENT,
            local_addr: 0,
        };
        map_update(maps.config, &0u32, &config, sys::BPF_ANY as u64).map_err(|source| {
            LoaderError::Map {
                map: MAP_CONFIG,
                op: "update",
                source,
            }
        })?;

        tracing::debug!(
            prog_fd,
            lan_ifindex,
            wan_ifindex = config.wan_ifindex,
            max_bindings,
            "steering program loaded"
        );
        Ok(Steering {
            _obj: obj,
            prog_fd,
            maps,
            max_bindings,
            config,
            attached: Vec::new(),
            ncpus: ncpus.max(1),
            pins: None,
            pin_path: None,
            ifaces: std::iter::once(lan_ifindex)
                .chain(wan_ifindex.filter(|&w| w != lan_ifindex))
                .collect(),
        })
    }

    fn attach_to(&mut self, ifindex: u32) -> Result<(), LoaderError> {
        let ifname = ifname(ifindex)?;
        let ifindex_c =
            c_int::try_from(ifindex).map_err(|_| LoaderError::NoSuchInterface { ifindex })?;

        let state = xdp_state(ifindex_c).map_err(|source| LoaderError::Query {
            ifname: ifname.clone(),
            ifindex,
            source,
        })?;
        if state.any() != 0 && self.prog_id().ok() == Some(state.any()) {
            // Already ours (reclaimed after a failed takeover).
            if let Some(mode) = state.single_mode() {
                self.attached.push(Attachment {
                    ifindex,
                    ifname,
                    mode,
                    replaced: None,
                });
                return Ok(());
            }
        }
        if state.any() != 0 {
            let mode = self.replace_stale(ifindex_c, &ifname, ifindex, &state)?;
            self.attached.push(Attachment {
                ifindex,
                ifname,
                mode,
                replaced: Some(state.any()),
            });
            return Ok(());
        }

        let mut mode = AttachMode::Native;
        let mut result = xdp_attach(ifindex_c, self.prog_fd, mode);
        if let Err(e) = &result {
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                tracing::info!(
                    ifname,
                    "driver has no native XDP, attaching in generic (skb) mode"
                );
                mode = AttachMode::Generic;
                result = xdp_attach(ifindex_c, self.prog_fd, mode);
            }
        }
        match result {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::EBUSY)) => {
                // Raced with another loader since the query. Not replaced
                // even if ours: it came after we looked, so it is not stale.
                let state = xdp_state(ifindex_c).unwrap_or_default();
                return Err(self.not_ours(ifname, ifindex, &state, NotOurs::Changed));
            }
            Err(source) => {
                return Err(LoaderError::Attach {
                    ifname,
                    ifindex,
                    mode,
                    source,
                })
            }
        }
        tracing::info!(ifname, ifindex, %mode, "XDP steering program attached");
        self.attached.push(Attachment {
            ifindex,
            ifname,
            mode,
            replaced: None,
        });
        Ok(())
    }

    /// `ifindex` has an XDP program (`state`): if a previous homeward with
    /// our pin directory left it, replace it with ours atomically, in the
    /// mode it is attached in, and return that mode; else refuse.
    fn replace_stale(
        &self,
        ifindex_c: c_int,
        ifname: &str,
        ifindex: u32,
        state: &XdpState,
    ) -> Result<AttachMode, LoaderError> {
        let old_id = state.any();
        let refuse = |why| Err(self.not_ours(ifname.to_string(), ifindex, state, why));
        let Some(pins) = &self.pins else {
            return refuse(NotOurs::NoPinDir);
        };
        let pin = pins.prog_pin(old_id);
        let Some(old_fd) = pins.recognise(old_id)? else {
            return refuse(NotOurs::NotPinned { pin });
        };
        let Some(mode) = state.single_mode() else {
            return refuse(NotOurs::UnexpectedMode { pin });
        };
        match xdp_replace(ifindex_c, self.prog_fd, old_fd.as_raw_fd(), mode) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::EBUSY)) => {
                // The attached program is no longer `old_fd`'s.
                let now = xdp_state(ifindex_c).unwrap_or_default();
                return Err(self.not_ours(ifname.to_string(), ifindex, &now, NotOurs::Changed));
            }
            Err(source) => {
                return Err(LoaderError::Attach {
                    ifname: ifname.to_string(),
                    ifindex,
                    mode,
                    source,
                })
            }
        }
        tracing::info!(
            ifname,
            ifindex,
            %mode,
            old_prog_id = old_id,
            pin = %pin.display(),
            "replaced the XDP program a previous homeward left (id {old_id})"
        );
        Ok(mode)
    }

    fn not_ours(
        &self,
        ifname: String,
        ifindex: u32,
        state: &XdpState,
        why: NotOurs,
    ) -> LoaderError {
        let prog_id = state.any();
        LoaderError::AlreadyAttached {
            ifname,
            ifindex,
            prog_id,
            prog_name: prog_name_by_id(prog_id),
            why,
            ip_mode: state.ip_mode(),
        }
    }

    /// The pin directory given to [`Steering::attach`], if any.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(|p| p.path())
    }

    /// How the program is attached: [`AttachMode::Generic`] if it is in
    /// generic mode on any interface, else [`AttachMode::Native`] (also when
    /// only loaded).
    pub fn mode(&self) -> AttachMode {
        if self.attached.iter().any(|a| a.mode == AttachMode::Generic) {
            AttachMode::Generic
        } else {
            AttachMode::Native
        }
    }

    /// The interfaces the program is attached to, LAN first.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attached
    }

    /// The LAN and WAN ifindex the program tells ports by.
    pub fn config(&self) -> SteerConfig {
        self.config
    }

    /// Whether LAN and WAN are the same interface (port 0 only).
    pub fn one_armed(&self) -> bool {
        self.config.lan_ifindex == self.config.wan_ifindex
    }

    /// The program's file descriptor (owned by `self`).
    pub fn prog_fd(&self) -> RawFd {
        self.prog_fd
    }

    /// Size of `bound_vms` and `care_ofs`.
    pub fn max_bindings(&self) -> u32 {
        self.max_bindings
    }

    fn socket_key(&self, port: u32, queue: u32) -> Result<u32, LoaderError> {
        let reason = if port >= N_PORTS {
            "port must be 0 (LAN) or 1 (WAN)"
        } else if port == PORT_WAN && self.one_armed() {
            "one-armed mode (LAN == WAN) uses port 0 only"
        } else if queue >= MAX_QUEUES {
            "queue must be below 64"
        } else {
            return Ok(port * MAX_QUEUES + queue);
        };
        Err(LoaderError::SocketSlot {
            port,
            queue,
            reason,
        })
    }

    /// Steer frames of `port` (0 LAN, 1 WAN) received on `queue` to the
    /// bound AF_XDP socket `xsk_fd` (replacing any socket there).
    pub fn register_socket(&self, port: u32, queue: u32, xsk_fd: RawFd) -> Result<(), LoaderError> {
        let key = self.socket_key(port, queue)?;
        let value = u32::try_from(xsk_fd).map_err(|_| LoaderError::Map {
            map: MAP_XSKS,
            op: "update",
            source: io::Error::from_raw_os_error(libc::EBADF),
        })?;
        map_update(self.maps.xsks, &key, &value, sys::BPF_ANY as u64).map_err(|source| {
            LoaderError::Map {
                map: MAP_XSKS,
                op: "update",
                source,
            }
        })
    }

    /// Stop steering to the socket of `port` and `queue` (its frames then go
    /// to the kernel and count as `no_socket`). No-op if there is none.
    pub fn unregister_socket(&self, port: u32, queue: u32) -> Result<(), LoaderError> {
        let key = self.socket_key(port, queue)?;
        map_delete(self.maps.xsks, &key)
            .map(|_| ())
            .map_err(|source| LoaderError::Map {
                map: MAP_XSKS,
                op: "delete",
                source,
            })
    }

    /// Steer traffic to `vm` into the workers, under `care_of` (written as
    /// is: which care-of addresses are accepted is [`Steering::add_care_of`]'s).
    pub fn bind(&mut self, vm: Ipv4Addr, care_of: Ipv4Addr) -> Result<(), LoaderError> {
        self.write_binding(vm, care_of)
    }

    /// Stop steering traffic to `vm` (no-op if it was not steered): it goes
    /// to the kernel again.
    pub fn unbind(&mut self, vm: Ipv4Addr) -> Result<(), LoaderError> {
        map_delete(self.maps.bound_vms, &addr_key(vm))
            .map(|_| ())
            .map_err(|source| LoaderError::Map {
                map: MAP_BOUND_VMS,
                op: "delete",
                source,
            })
    }

    /// Steer IPIP from `care_of` into the workers. The caller counts the
    /// bindings that use it (the map holds presence only).
    pub fn add_care_of(&mut self, care_of: Ipv4Addr) -> Result<(), LoaderError> {
        self.hash_update(MAP_CARE_OFS, self.maps.care_ofs, addr_key(care_of), 1)
    }

    /// Stop steering IPIP from `care_of` (no-op if it was not).
    pub fn remove_care_of(&mut self, care_of: Ipv4Addr) -> Result<(), LoaderError> {
        map_delete(self.maps.care_ofs, &addr_key(care_of))
            .map(|_| ())
            .map_err(|source| LoaderError::Map {
                map: MAP_CARE_OFS,
                op: "delete",
                source,
            })
    }

    fn write_binding(&self, vm: Ipv4Addr, care_of: Ipv4Addr) -> Result<(), LoaderError> {
        self.hash_update(
            MAP_BOUND_VMS,
            self.maps.bound_vms,
            addr_key(vm),
            addr_key(care_of),
        )
    }

    fn hash_update(
        &self,
        map: &'static str,
        fd: RawFd,
        key: u32,
        value: u32,
    ) -> Result<(), LoaderError> {
        map_update(fd, &key, &value, sys::BPF_ANY as u64).map_err(|source| {
            if source.raw_os_error() == Some(libc::E2BIG) {
                LoaderError::MapFull {
                    map,
                    max_entries: self.max_bindings,
                }
            } else {
                LoaderError::Map {
                    map,
                    op: "update",
                    source,
                }
            }
        })
    }

    /// The bindings as the kernel map `bound_vms` has them, sorted by VM
    /// address: `(vm, care_of)`.
    pub fn bound(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, LoaderError> {
        let mut out: Vec<(Ipv4Addr, Ipv4Addr)> =
            read_u32_hash(MAP_BOUND_VMS, self.maps.bound_vms, self.max_bindings)?
                .into_iter()
                .map(|(k, v)| (key_addr(k), key_addr(v)))
                .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The care-of addresses as the kernel map `care_ofs` has them, sorted
    /// by address (the value is 1: presence).
    pub fn care_ofs(&self) -> Result<Vec<(Ipv4Addr, u32)>, LoaderError> {
        let mut out: Vec<(Ipv4Addr, u32)> =
            read_u32_hash(MAP_CARE_OFS, self.maps.care_ofs, self.max_bindings)?
                .into_iter()
                .map(|(k, v)| (key_addr(k), v))
                .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<SteerCounters, LoaderError> {
        let mut sums = [0u64; COUNTERS as usize];
        let mut per_cpu = vec![0u64; self.ncpus];
        for (idx, sum) in (0u32..).zip(sums.iter_mut()) {
            // SAFETY: `counters` has 4-byte keys and 8-byte values (checked at
            // load); the value buffer holds one u64 per possible CPU, which is
            // what the kernel writes for a per-CPU map.
            let ret = unsafe {
                sys::bpf_map_lookup_elem(
                    self.maps.counters,
                    ptr::from_ref(&idx).cast::<c_void>(),
                    per_cpu.as_mut_ptr().cast::<c_void>(),
                )
            };
            if ret < 0 {
                return Err(LoaderError::Map {
                    map: MAP_COUNTERS,
                    op: "lookup",
                    source: neg_errno(ret),
                });
            }
            *sum = per_cpu.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        }
        Ok(SteerCounters {
            steered_ipv4: sums[CNT_STEERED_IPV4 as usize],
            steered_arp: sums[CNT_STEERED_ARP as usize],
            steered_ipip: sums[CNT_STEERED_IPIP as usize],
            passed: sums[CNT_PASSED as usize],
            no_socket: sums[CNT_NO_SOCKET as usize],
            malformed_l2: sums[CNT_MALFORMED_L2 as usize],
            malformed_l3: sums[CNT_MALFORMED_L3 as usize],
            unknown_ingress: sums[CNT_UNKNOWN_INGRESS as usize],
            dropped_ipip: sums[CNT_DROPPED_IPIP as usize],
        })
    }

    /// Run the program once on `frame` with BPF_PROG_RUN, as if received on
    /// `ingress_ifindex` queue `rx_queue` (the interface must exist in the
    /// caller's network namespace and have that queue). Returns the XDP
    /// action ([`action`]). Redirects are not carried out; counters are.
    pub fn test_run(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        rx_queue: u32,
    ) -> Result<u32, LoaderError> {
        let err = |source| LoaderError::TestRun {
            ifindex: ingress_ifindex,
            queue: rx_queue,
            len: frame.len(),
            source,
        };
        let len = u32::try_from(frame.len())
            .map_err(|_| err(io::Error::from_raw_os_error(libc::E2BIG)))?;
        let ctx = sys::xdp_md {
            data: 0,
            data_end: len,
            data_meta: 0,
            ingress_ifindex,
            rx_queue_index: rx_queue,
            egress_ifindex: 0,
        };
        // SAFETY: bpf_test_run_opts is a plain C struct (integers and raw
        // pointers); all-zero is its documented "no options" value.
        let mut opts: sys::bpf_test_run_opts = unsafe { std::mem::zeroed() };
        opts.sz = opts_size!(sys::bpf_test_run_opts, batch_size, u32);
        opts.data_in = frame.as_ptr().cast::<c_void>();
        opts.data_size_in = len;
        opts.ctx_in = ptr::from_ref(&ctx).cast::<c_void>();
        opts.ctx_size_in = size_of::<sys::xdp_md>() as u32;
        opts.repeat = 1;
        // SAFETY: `opts` points at `frame` and `ctx`, both alive and unmodified
        // for the call; no output buffers are given.
        let ret = unsafe { sys::bpf_prog_test_run_opts(self.prog_fd, &mut opts) };
        if ret < 0 {
            return Err(err(neg_errno(ret)));
        }
        Ok(opts.retval)
    }

    /// Pin the maps as `dir/<map name>` (for bpftool), mounting bpffs at
    /// `/sys/fs/bpf` first if `dir` is below it and it is not mounted. The
    /// pins outlive the process; remove them with [`Steering::unpin_maps`].
    pub fn pin_maps(&self, dir: &Path) -> Result<(), LoaderError> {
        let pin_err = |path: &Path, source| LoaderError::Pin {
            path: path.to_path_buf(),
            source,
        };
        pin::prepare_dir(dir, |_, path, e| pin_err(path, e))?;
        for (name, fd) in self.map_fds() {
            let path = dir.join(name);
            let cpath = path_cstring(&path).map_err(|e| pin_err(&path, e))?;
            // SAFETY: `fd` is a live map fd; `cpath` is NUL-terminated and
            // outlives the call.
            let ret = unsafe { sys::bpf_obj_pin(fd, cpath.as_ptr()) };
            if ret < 0 {
                return Err(pin_err(&path, neg_errno(ret)));
            }
        }
        Ok(())
    }

    /// Remove the pins [`Steering::pin_maps`] made in `dir` (missing ones are fine).
    pub fn unpin_maps(&self, dir: &Path) -> Result<(), LoaderError> {
        for name in MAP_NAMES {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(LoaderError::Pin { path, source }),
            }
        }
        Ok(())
    }

    fn map_fds(&self) -> [(&'static str, RawFd); 5] {
        [
            (MAP_BOUND_VMS, self.maps.bound_vms),
            (MAP_CARE_OFS, self.maps.care_ofs),
            (MAP_XSKS, self.maps.xsks),
            (MAP_CONFIG, self.maps.config),
            (MAP_COUNTERS, self.maps.counters),
        ]
    }

    /// The kernel id of our program.
    fn prog_id(&self) -> io::Result<u32> {
        prog_info(self.prog_fd).map(|info| info.id)
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        let ours = self.prog_id().ok();
        // Whether ours may still be attached somewhere: then its pin stays,
        // so that the next start recognises it.
        let mut maybe_attached = false;
        for a in self.attached.drain(..).rev() {
            let Ok(ifindex) = c_int::try_from(a.ifindex) else {
                continue;
            };
            // XDP_FLAGS_REPLACE with our fd as the expected program: the kernel
            // detaches only if ours is still the one attached.
            let Err(e) = xdp_detach(ifindex, a.mode, self.prog_fd) else {
                tracing::info!(ifname = a.ifname, "XDP steering program detached");
                continue;
            };
            match e.raw_os_error() {
                Some(libc::ENODEV) => {
                    tracing::debug!(ifname = a.ifname, "interface gone before detach")
                }
                Some(libc::EEXIST) => tracing::warn!(
                    ifname = a.ifname,
                    prog_id = ?ours,
                    "another XDP program replaced ours; leaving it attached"
                ),
                _ => {
                    maybe_attached = true;
                    tracing::warn!(ifname = a.ifname, error = %e, "detaching XDP failed");
                }
            }
        }
        if let Some(pins) = self.pins.take() {
            if maybe_attached {
                tracing::warn!(
                    dir = %pins.path().display(),
                    "keeping the program's pin: it may still be attached"
                );
            }
            pins.close(maybe_attached);
        }
    }
}

fn check_layout(
    map: &'static str,
    what: &'static str,
    expected: u32,
    found: u32,
) -> Result<(), LoaderError> {
    if expected == found {
        Ok(())
    } else {
        Err(LoaderError::Layout {
            map,
            what,
            expected,
            found,
        })
    }
}

/// Size of the verifier log kept for a failed load.
const LOG_SIZE: usize = 1 << 20;

fn open_object() -> Result<Object, LoaderError> {
    let mut log = vec![0u8; LOG_SIZE].into_boxed_slice();
    // SAFETY: bpf_object_open_opts is a plain C struct (integers, bools,
    // pointers); all-zero means "defaults".
    let mut opts: sys::bpf_object_open_opts = unsafe { std::mem::zeroed() };
    opts.sz = opts_size!(sys::bpf_object_open_opts, bpf_token_path, *const c_char);
    opts.object_name = c"homeward_steer".as_ptr();
    opts.kernel_log_buf = log.as_mut_ptr().cast::<c_char>();
    opts.kernel_log_size = log.len();
    // Level 0: libbpf asks the kernel for a log only after a failed load.
    opts.kernel_log_level = 0;
    let bytes = &STEER_OBJ.0;
    // SAFETY: `bytes` is a 'static ELF image that libbpf only reads; `opts`
    // and the name are valid for the call (libbpf copies the name); the log
    // buffer is moved into the returned Object, so it outlives the bpf_object.
    let ptr =
        unsafe { sys::bpf_object__open_mem(bytes.as_ptr().cast::<c_void>(), bytes.len(), &opts) };
    match NonNull::new(ptr) {
        Some(ptr) => Ok(Object { ptr, log }),
        None => Err(LoaderError::Open(io::Error::last_os_error())),
    }
}

/// The last lines of the verifier log (NUL-terminated in `buf`), or "".
fn log_tail(buf: &[u8]) -> String {
    let text = CStr::from_bytes_until_nul(buf)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(20);
    format!(
        "\nverifier log (last lines):\n{}",
        lines[start..].join("\n")
    )
}

fn ifname(ifindex: u32) -> Result<String, LoaderError> {
    let mut buf = [0 as c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let ret = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ret.is_null() {
        return Err(LoaderError::NoSuchInterface { ifindex });
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into `buf`.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// The XDP programs attached to an interface, per mode (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct XdpState {
    drv: u32,
    skb: u32,
    hw: u32,
}

impl XdpState {
    /// Id of a program attached in any mode, 0 if none.
    fn any(&self) -> u32 {
        [self.drv, self.skb, self.hw]
            .into_iter()
            .find(|&id| id != 0)
            .unwrap_or(0)
    }

    /// The mode of the one program attached, if it is attached in exactly
    /// one of the modes homeward uses.
    fn single_mode(&self) -> Option<AttachMode> {
        match (self.drv, self.skb, self.hw) {
            (d, 0, 0) if d != 0 => Some(AttachMode::Native),
            (0, s, 0) if s != 0 => Some(AttachMode::Generic),
            _ => None,
        }
    }

    /// `(mode, id)` of the modes homeward uses (id 0: none).
    fn per_mode(&self) -> [(AttachMode, u32); 2] {
        [
            (AttachMode::Native, self.drv),
            (AttachMode::Generic, self.skb),
        ]
    }

    /// The `ip link` keyword that names the attached program's mode.
    fn ip_mode(&self) -> &'static str {
        match (self.drv, self.skb, self.hw) {
            (d, 0, 0) if d != 0 => "xdpdrv",
            (0, s, 0) if s != 0 => "xdpgeneric",
            (0, 0, h) if h != 0 => "xdpoffload",
            _ => "xdp",
        }
    }
}

fn xdp_state(ifindex: c_int) -> io::Result<XdpState> {
    // SAFETY: bpf_xdp_query_opts is a plain C struct; all-zero is valid.
    let mut opts: sys::bpf_xdp_query_opts = unsafe { std::mem::zeroed() };
    opts.sz = opts_size!(sys::bpf_xdp_query_opts, xdp_zc_max_segs, u32);
    // SAFETY: `opts` is valid and writable for the call.
    let ret = unsafe { sys::bpf_xdp_query(ifindex, 0, &mut opts) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    let mut state = XdpState {
        drv: opts.drv_prog_id,
        skb: opts.skb_prog_id,
        hw: opts.hw_prog_id,
    };
    // Older kernels report a single attachment in `prog_id` only.
    if state.any() == 0 && opts.prog_id != 0 {
        match u32::from(opts.attach_mode) {
            XDP_ATTACHED_SKB => state.skb = opts.prog_id,
            XDP_ATTACHED_HW => state.hw = opts.prog_id,
            _ => state.drv = opts.prog_id,
        }
    }
    Ok(state)
}

// linux/if_link.h, `IFLA_XDP_ATTACHED` values.
const XDP_ATTACHED_SKB: u32 = 2;
const XDP_ATTACHED_HW: u32 = 3;

/// Id of the XDP program attached to `ifindex` in any mode, 0 if none.
#[cfg(test)]
fn xdp_query(ifindex: c_int) -> io::Result<u32> {
    xdp_state(ifindex).map(|s| s.any())
}

fn xdp_attach(ifindex: c_int, prog_fd: RawFd, mode: AttachMode) -> io::Result<()> {
    let flags = XDP_FLAGS_UPDATE_IF_NOEXIST | mode.flag();
    // SAFETY: plain syscall wrapper; null opts means "no options".
    let ret = unsafe { sys::bpf_xdp_attach(ifindex, prog_fd, flags, ptr::null()) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok(())
}

/// Atomically replace the program attached to `ifindex` in `mode` by
/// `prog_fd`, only if it is `old_fd`'s (else EEXIST).
fn xdp_replace(ifindex: c_int, prog_fd: RawFd, old_fd: RawFd, mode: AttachMode) -> io::Result<()> {
    // SAFETY: bpf_xdp_attach_opts is a plain C struct; all-zero is valid.
    let mut opts: sys::bpf_xdp_attach_opts = unsafe { std::mem::zeroed() };
    opts.sz = opts_size!(sys::bpf_xdp_attach_opts, old_prog_fd, c_int);
    opts.old_prog_fd = old_fd;
    // SAFETY: `opts` is a valid, initialised options struct for the call.
    let ret =
        unsafe { sys::bpf_xdp_attach(ifindex, prog_fd, mode.flag() | XDP_FLAGS_REPLACE, &opts) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok(())
}

/// Detach the program attached to `ifindex` in `mode`, only if it is
/// `expected_fd`'s (else EEXIST).
fn xdp_detach(ifindex: c_int, mode: AttachMode, expected_fd: RawFd) -> io::Result<()> {
    // SAFETY: bpf_xdp_attach_opts is a plain C struct; all-zero is valid.
    let mut opts: sys::bpf_xdp_attach_opts = unsafe { std::mem::zeroed() };
    opts.sz = opts_size!(sys::bpf_xdp_attach_opts, old_prog_fd, c_int);
    opts.old_prog_fd = expected_fd;
    // SAFETY: `opts` is a valid, initialised options struct for the call.
    let ret = unsafe { sys::bpf_xdp_detach(ifindex, mode.flag() | XDP_FLAGS_REPLACE, &opts) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok(())
}

/// What the kernel says about a program.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProgInfo {
    id: u32,
    prog_type: u32,
    name: String,
}

fn prog_info(fd: RawFd) -> io::Result<ProgInfo> {
    // SAFETY: bpf_prog_info is a plain C struct; all-zero is valid.
    let mut info: sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is writable for `len` bytes; the kernel validates `fd`
    // (EINVAL if it is not a program) and writes at most `len` bytes.
    let ret = unsafe { sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(ProgInfo {
        id: info.id,
        prog_type: info.type_,
        name: String::from_utf8_lossy(&name).into_owned(),
    })
}

/// The name of the program of kernel id `id`, "" if it cannot be read.
fn prog_name_by_id(id: u32) -> String {
    if id == 0 {
        return String::new();
    }
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return String::new();
    }
    // SAFETY: the kernel just returned `fd` to us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    prog_info(fd.as_raw_fd())
        .map(|info| info.name)
        .unwrap_or_default()
}

/// The ifindexes of the calling thread's network namespace.
fn interfaces() -> io::Result<Vec<u32>> {
    // SAFETY: no arguments; returns a malloc'd array or null with errno set.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut entry = list;
    loop {
        // SAFETY: `entry` points into the array, which ends with an entry of
        // index 0 and a null name; we stop there and never read past it.
        let item = unsafe { &*entry };
        if item.if_index == 0 && item.if_name.is_null() {
            break;
        }
        out.push(item.if_index);
        // SAFETY: not the terminating entry, so the next one is in the array.
        entry = unsafe { entry.add(1) };
    }
    // SAFETY: `list` came from if_nameindex and is freed once, here.
    unsafe { libc::if_freenameindex(list) };
    Ok(out)
}

/// Only called with the key and value types checked against the map at load.
fn map_update<K: Copy, V: Copy>(fd: RawFd, key: &K, value: &V, flags: u64) -> io::Result<()> {
    // SAFETY: `key` and `value` are live, initialised and exactly the map's
    // key and value size (checked in `Steering::load`); the kernel only reads them.
    let ret = unsafe {
        sys::bpf_map_update_elem(
            fd,
            ptr::from_ref(key).cast::<c_void>(),
            ptr::from_ref(value).cast::<c_void>(),
            flags,
        )
    };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok(())
}

/// Delete `key`; `Ok(false)` if it was not there.
fn map_delete<K: Copy>(fd: RawFd, key: &K) -> io::Result<bool> {
    // SAFETY: `key` is live and exactly the map's key size (checked at load).
    let ret = unsafe { sys::bpf_map_delete_elem(fd, ptr::from_ref(key).cast::<c_void>()) };
    match ret {
        0 => Ok(true),
        r if r == -libc::ENOENT => Ok(false),
        r => Err(neg_errno(r)),
    }
}

/// Every entry of a hash map with u32 keys and values, in batches
/// (`BPF_MAP_LOOKUP_BATCH`, kernel 5.6+): a million entries take a few
/// hundred system calls, not two million (the per-key walk held a metrics
/// scrape for 2 s at a million bindings).
fn read_u32_hash(
    map: &'static str,
    fd: RawFd,
    max_entries: u32,
) -> Result<Vec<(u32, u32)>, LoaderError> {
    // Larger than any one bucket of the kernel's hash table, which a batch
    // must hold whole (else ENOSPC).
    const BATCH: u32 = 4096;
    let mut keys = vec![0u32; BATCH as usize];
    let mut values = vec![0u32; BATCH as usize];
    let opts = sys::bpf_map_batch_opts {
        sz: size_of::<sys::bpf_map_batch_opts>(),
        elem_flags: 0,
        flags: 0,
    };
    let mut out = Vec::new();
    // The kernel's position in the table: a bucket index for hash maps.
    let mut position: Option<u32> = None;
    // Bounded: each batch but the last is at least half full (no bucket
    // holds half a batch).
    for _ in 0..=2 * u64::from(max_entries / BATCH) + 2 {
        let mut count = BATCH;
        let mut next = 0u32;
        let mut current = position.unwrap_or(0);
        let in_batch = match position {
            Some(_) => ptr::from_mut(&mut current).cast::<c_void>(),
            None => ptr::null_mut(),
        };
        // SAFETY: `in_batch` is null (from the start) or a live u32, the
        // position a previous call returned; `next` is a writable u32 for
        // the next position; `keys` and `values` hold `count` u32 each, the
        // map's key and value size (checked at load); `opts` is a valid
        // options struct whose `sz` is its size.
        let ret = unsafe {
            sys::bpf_map_lookup_batch(
                fd,
                in_batch,
                ptr::from_mut(&mut next).cast::<c_void>(),
                keys.as_mut_ptr().cast::<c_void>(),
                values.as_mut_ptr().cast::<c_void>(),
                &mut count,
                &opts,
            )
        };
        if ret < 0 && ret != -libc::ENOENT {
            return Err(LoaderError::Map {
                map,
                op: "lookup batch",
                source: neg_errno(ret),
            });
        }
        let n = count.min(BATCH) as usize;
        out.extend(keys.iter().copied().zip(values.iter().copied()).take(n));
        if ret == -libc::ENOENT {
            return Ok(out);
        }
        position = Some(next);
    }
    Err(LoaderError::Map {
        map,
        op: "iterate",
        source: io::Error::from_raw_os_error(libc::ELOOP),
    })
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let cpath = path_cstring(path)?;
    // SAFETY: libc::statfs is a plain C struct; all-zero is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `cpath` is NUL-terminated; `st` is writable.
    let ret = unsafe { libc::statfs(cpath.as_ptr(), &mut st) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(st.f_type as i64 == libc::BPF_FS_MAGIC as i64)
}

fn mount_bpffs(target: &Path) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let ctarget = path_cstring(target)?;
    // SAFETY: all strings are NUL-terminated and outlive the call; no data.
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            ctarget.as_ptr(),
            c"bpf".as_ptr(),
            0,
            ptr::null(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::info!(target = %target.display(), "mounted bpffs");
    Ok(())
}

#[cfg(test)]
mod tests;
