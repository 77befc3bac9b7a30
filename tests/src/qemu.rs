//! QEMU in a lab namespace: start a guest on a tap, talk QMP to it, and
//! live-migrate it between two QEMU processes in two namespaces.
//!
//! TCG only (`-accel tcg`): KVM is not usable on the lab machine. Each QEMU
//! gets two QMP sockets: [`Qemu::qmp`] is the test's, [`Qemu::agent_qmp_path`]
//! is left free for a homeward agent to watch (QMP allows one client per
//! socket). The migration stream goes over a unix socket: both QEMUs run on
//! this machine, and a socket path works across network namespaces.
//!
//! [`Vm`] owns "the" VM across migrations: [`Vm::boot`] starts it,
//! [`Vm::migrate_to`] starts a destination QEMU in another namespace,
//! migrates (with the storage case chosen at boot, [`Storage`]) and quits
//! the source, returning QEMU's own numbers and event timestamps
//! ([`MigrationReport`]).

use std::collections::VecDeque;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::link::Mac;
use crate::netns::{Netns, NsChild};
use crate::vm::{path_str, GuestImage, GuestNet, READY_MARKER, VM_MAC};

/// The emulator binary (bookworm-backports' qemu-system-x86).
pub const QEMU_BIN: &str = "qemu-system-x86_64";
/// Node name of the guest's disk (`-blockdev`), also its NBD export name.
pub const DISK_NODE: &str = "disk0";
/// How long QMP commands may take before the client gives up.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// A QMP failure: the socket, the protocol, or an `error` answer.
#[derive(Debug)]
pub enum QmpError {
    /// Connecting, reading or writing failed.
    Io(std::io::Error),
    /// QEMU answered `{"error": {"class": ..., "desc": ...}}`.
    Command {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// No answer within the timeout.
    Timeout(String),
    /// Something that is not QMP.
    Protocol(String),
}

impl std::fmt::Display for QmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QmpError::Io(e) => write!(f, "QMP I/O: {e}"),
            QmpError::Command {
                command,
                class,
                desc,
            } => write!(f, "QMP {command} failed: {class}: {desc}"),
            QmpError::Timeout(what) => write!(f, "QMP timeout waiting for {what}"),
            QmpError::Protocol(what) => write!(f, "QMP protocol: {what}"),
        }
    }
}

impl std::error::Error for QmpError {}

impl From<std::io::Error> for QmpError {
    fn from(e: std::io::Error) -> QmpError {
        QmpError::Io(e)
    }
}

/// An asynchronous QMP event as QEMU sent it.
#[derive(Clone, Debug)]
pub struct QmpEvent {
    /// `RESUME`, `STOP`, `MIGRATION`, `BLOCK_JOB_READY`, ...
    pub name: String,
    /// Its `data` member (`Null` when absent).
    pub data: Value,
    /// QEMU's own timestamp of the event (host wall clock, microseconds):
    /// comparable across the QEMUs of one machine.
    pub timestamp: SystemTime,
    /// When this client read it.
    pub received: Instant,
}

/// A small QMP client over a unix socket: one command at a time, events
/// kept in arrival order.
#[derive(Debug)]
pub struct Qmp {
    stream: UnixStream,
    buf: Vec<u8>,
    lines: VecDeque<Value>,
    events: Vec<QmpEvent>,
    next_id: u64,
}

impl Qmp {
    /// Connects (retrying while QEMU creates the socket, up to `timeout`),
    /// reads the greeting and leaves capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(QmpError::Io(e)),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        let mut qmp = Qmp {
            stream,
            buf: Vec::new(),
            lines: VecDeque::new(),
            events: Vec::new(),
            next_id: 1,
        };
        let greeting = qmp.read_message(deadline)?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("no greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", Value::Null)?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.execute_timeout(command, arguments, QMP_TIMEOUT)
    }

    /// [`Qmp::execute`] with a chosen timeout.
    pub fn execute_timeout(
        &mut self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes())?;
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.read_message(deadline).map_err(|e| match e {
                QmpError::Timeout(_) => QmpError::Timeout(format!("the answer to {command}")),
                e => e,
            })?;
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(ret) = v.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = v.get("error") {
                return Err(QmpError::Command {
                    command: command.into(),
                    class: err["class"].as_str().unwrap_or("?").into(),
                    desc: err["desc"].as_str().unwrap_or("?").into(),
                });
            }
            return Err(QmpError::Protocol(format!("odd answer to {command}: {v}")));
        }
    }

    /// [`Qmp::execute`] that panics on failure (test setup).
    #[track_caller]
    pub fn run(&mut self, command: &str, arguments: Value) -> Value {
        self.execute(command, arguments.clone())
            .unwrap_or_else(|e| panic!("{e} (arguments {arguments})"))
    }

    /// Every event read so far, oldest first.
    pub fn events(&self) -> &[QmpEvent] {
        &self.events
    }

    /// Reads whatever events are waiting (about a millisecond's wait).
    pub fn poll_events(&mut self) -> Result<(), QmpError> {
        loop {
            match self.read_message(Instant::now()) {
                Ok(_) => {}
                Err(QmpError::Timeout(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for the first event named `name` among those at index `from`
    /// or later of [`Qmp::events`] for which `pred` holds.
    pub fn wait_event(
        &mut self,
        name: &str,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<QmpEvent, QmpError> {
        let deadline = Instant::now() + timeout;
        let mut checked = from;
        loop {
            if let Some(e) = self.events[checked.min(self.events.len())..]
                .iter()
                .find(|e| e.name == name && pred(&e.data))
            {
                return Ok(e.clone());
            }
            checked = self.events.len();
            match self.read_message(deadline) {
                Ok(_) => {}
                Err(QmpError::Timeout(_)) => {
                    return Err(QmpError::Timeout(format!("event {name}")));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one message (events are also recorded in `events`), waiting
    /// until `deadline` at most.
    fn read_message(&mut self, deadline: Instant) -> Result<Value, QmpError> {
        loop {
            if let Some(v) = self.lines.pop_front() {
                return Ok(v);
            }
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(text)
                    .map_err(|e| QmpError::Protocol(format!("{e}: {text}")))?;
                if let Some(name) = v.get("event").and_then(Value::as_str) {
                    let ts = &v["timestamp"];
                    let secs = ts["seconds"].as_u64().unwrap_or(0);
                    let micros = ts["microseconds"].as_u64().unwrap_or(0);
                    self.events.push(QmpEvent {
                        name: name.to_string(),
                        data: v.get("data").cloned().unwrap_or(Value::Null),
                        timestamp: UNIX_EPOCH
                            + Duration::from_secs(secs)
                            + Duration::from_micros(micros),
                        received: Instant::now(),
                    });
                }
                self.lines.push_back(v);
                continue;
            }
            let now = Instant::now();
            // A zero read timeout means "block forever" to the kernel.
            let wait = deadline
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(wait))?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(QmpError::Io(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "QEMU closed the QMP socket",
                    )))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if Instant::now() >= deadline {
                        return Err(QmpError::Timeout("a message".into()));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(QmpError::Io(e)),
            }
        }
    }
}

/// A disk for the guest (virtio-blk, node [`DISK_NODE`]).
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
}

/// How to start one QEMU.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    /// A label for file names and messages (`vm`, `vm-dst1`, ...).
    pub label: String,
    /// The tap to attach to (in the QEMU's namespace). If it does not
    /// exist QEMU creates it, down and unbridged; the lab pre-creates it.
    pub tap: String,
    /// The guest NIC's MAC.
    pub mac: Mac,
    /// Guest RAM in MiB.
    pub memory_mb: u32,
    /// Guest address and gateway.
    pub net: GuestNet,
    /// A disk, if any.
    pub disk: Option<DiskConfig>,
    /// Start as a migration destination (`-incoming defer`).
    pub incoming: bool,
    /// Start with the CPUs stopped (`-S`): a destination that must not run
    /// before its disk copy is complete.
    pub paused: bool,
    /// Path of the spare QMP socket (for a homeward agent). `None`: the
    /// namespace's [`agent_qmp_socket`], the same path for every QEMU on
    /// that host, so an agent configured once finds each VM that arrives.
    pub agent_qmp: Option<PathBuf>,
    /// QEMU's default virtio-net: checksum offload and TSO toward the host
    /// on. `false`: `csum=off`, the guest finishes its own checksums and
    /// sends nothing larger than its MTU.
    pub default_nic: bool,
    /// File name of that default socket in the namespace's directory, for
    /// a host that runs several VMs at once (each its own agent socket,
    /// [`agent_qmp_socket_named`]). `None`: `qmp-agent.sock`.
    pub agent_qmp_name: Option<String>,
}

/// Where a QEMU the lab starts in `ns` offers its spare QMP socket, unless
/// its config names another: `<ns dir>/qmp-agent.sock`. Point a homeward
/// agent in that namespace at it (it appears when a VM arrives, and
/// disappears when it leaves).
pub fn agent_qmp_socket(ns: &Netns) -> PathBuf {
    agent_qmp_socket_named(ns, None)
}

/// [`agent_qmp_socket`] with the file name `name` (a VM's own, where a host
/// runs several at once); `None`: `qmp-agent.sock`.
pub fn agent_qmp_socket_named(ns: &Netns, name: Option<&str>) -> PathBuf {
    ns.dir().join(name.unwrap_or("qmp-agent.sock"))
}

impl QemuConfig {
    /// 128 MiB, the lab's MAC and address, no disk.
    pub fn new(label: &str, tap: &str) -> QemuConfig {
        QemuConfig {
            label: label.into(),
            tap: tap.into(),
            mac: VM_MAC,
            memory_mb: 128,
            net: GuestNet::default(),
            disk: None,
            incoming: false,
            paused: false,
            agent_qmp: None,
            default_nic: false,
            agent_qmp_name: None,
        }
    }
}

/// One running QEMU process in a namespace. Killed on drop (also on
/// panic, when its serial console's tail is printed).
#[derive(Debug)]
pub struct Qemu {
    config: QemuConfig,
    ns: String,
    child: NsChild,
    started: Instant,
    serial_path: PathBuf,
    qmp_path: PathBuf,
    agent_qmp_path: PathBuf,
    dir: PathBuf,
    /// The test's QMP connection.
    pub qmp: Qmp,
}

impl Qemu {
    /// Starts QEMU in `ns` and connects QMP. Files (serial log, sockets)
    /// go to the namespace's scratch directory.
    #[track_caller]
    pub fn start(ns: &Netns, guest: &GuestImage, config: QemuConfig) -> Qemu {
        let dir = ns.dir().to_path_buf();
        let label = &config.label;
        let serial_path = dir.join(format!("serial-{label}.log"));
        let qmp_path = dir.join(format!("qmp-{label}.sock"));
        let agent_qmp_path = config
            .agent_qmp
            .clone()
            .unwrap_or_else(|| agent_qmp_socket_named(ns, config.agent_qmp_name.as_deref()));
        for p in [&serial_path, &qmp_path, &agent_qmp_path] {
            let _ = fs::remove_file(p);
        }
        let mut args: Vec<String> = vec![
            QEMU_BIN.into(),
            "-name".into(),
            format!("homeward-{label}"),
            "-accel".into(),
            "tcg".into(),
            "-machine".into(),
            "pc".into(),
            "-m".into(),
            config.memory_mb.to_string(),
            "-smp".into(),
            "1".into(),
            "-nodefaults".into(),
            "-nographic".into(),
            "-monitor".into(),
            "none".into(),
            "-serial".into(),
            format!("file:{}", path_str(&serial_path)),
            "-kernel".into(),
            path_str(&guest.kernel),
            "-initrd".into(),
            path_str(&guest.initramfs),
            "-append".into(),
            config.net.cmdline(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path_str(&qmp_path)),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path_str(&agent_qmp_path)),
            "-netdev".into(),
            format!("tap,id=net0,ifname={},script=no,downscript=no", config.tap),
            // csum=off unless `default_nic`: the guest computes its own
            // checksums and segments, so its frames leave the tap complete,
            // as a wire would carry them. romfile=: no PXE option ROM
            // needed (ipxe-qemu is only recommended).
            "-device".into(),
            format!(
                "virtio-net-pci,netdev=net0,mac={}{},romfile=",
                config.mac,
                if config.default_nic { "" } else { ",csum=off" }
            ),
        ];
        if let Some(disk) = &config.disk {
            args.push("-blockdev".into());
            args.push(format!(
                "driver={},node-name={DISK_NODE},file.driver=file,file.filename={}",
                disk.format,
                path_str(&disk.path)
            ));
            args.push("-device".into());
            args.push(format!("virtio-blk-pci,drive={DISK_NODE},id=vblk0"));
        }
        if config.paused {
            args.push("-S".into());
        }
        if config.incoming {
            args.push("-incoming".into());
            args.push("defer".into());
        }
        let started = Instant::now();
        let mut child = ns.spawn(&args);
        let qmp = match Qmp::connect(&qmp_path, Duration::from_secs(20)) {
            Ok(q) => q,
            Err(e) => {
                let _ = child.wait_timeout(Duration::from_millis(200));
                panic!(
                    "QEMU {label} in {} did not open QMP: {e}\n{}\n{}",
                    ns.name(),
                    child.command_line(),
                    child.stderr()
                );
            }
        };
        Qemu {
            config,
            ns: ns.name().to_string(),
            child,
            started,
            serial_path,
            qmp_path,
            agent_qmp_path,
            dir,
            qmp,
        }
    }

    /// Waits until the guest prints [`READY_MARKER`] on its console (its
    /// address is up, it pinged the gateway, its servers run) and returns
    /// the time since QEMU was started.
    #[track_caller]
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial().contains(READY_MARKER) {
                return self.started.elapsed();
            }
            if !self.child.is_running() {
                panic!(
                    "QEMU {} exited while booting: {}\nconsole:\n{}",
                    self.config.label,
                    self.child.stderr(),
                    self.serial_tail(40)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "guest {} not ready after {timeout:?}; console:\n{}",
                    self.config.label,
                    self.serial_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the guest printed on its serial console so far.
    pub fn serial(&self) -> String {
        fs::read_to_string(&self.serial_path).unwrap_or_default()
    }

    /// The last `n` lines of the serial console.
    pub fn serial_tail(&self, n: usize) -> String {
        let text = self.serial();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Path of the serial console log.
    pub fn serial_path(&self) -> &Path {
        &self.serial_path
    }

    /// Path of the test's QMP socket.
    pub fn qmp_path(&self) -> &Path {
        &self.qmp_path
    }

    /// Path of the spare QMP socket, for a homeward agent (see
    /// [`agent_qmp_socket`]).
    pub fn agent_qmp_path(&self) -> &Path {
        &self.agent_qmp_path
    }

    /// Its configuration.
    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// The namespace it runs in.
    pub fn netns_name(&self) -> &str {
        &self.ns
    }

    /// The scratch directory its files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `query-status`'s `status`: `running`, `paused`, `inmigrate`,
    /// `postmigrate`, ...
    #[track_caller]
    pub fn status(&mut self) -> String {
        let v = self.qmp.run("query-status", Value::Null);
        v["status"].as_str().unwrap_or("?").to_string()
    }

    /// Pauses the guest where it is (`stop`), waits `pause`, lets it go on
    /// (`cont`): a resume without a migration, to time what the guest
    /// itself takes after a RESUME. Returns QEMU's STOP -> RESUME and the
    /// RESUME's timestamp (QEMU's clock, the host's wall clock).
    #[track_caller]
    pub fn pause_in_place(&mut self, pause: Duration) -> (Duration, SystemTime) {
        let mark = self.qmp.events().len();
        self.qmp.run("stop", Value::Null);
        std::thread::sleep(pause);
        self.qmp.run("cont", Value::Null);
        let timeout = Duration::from_secs(10);
        let mut event = |name: &str| {
            self.qmp
                .wait_event(name, mark, timeout, |_| true)
                .unwrap_or_else(|e| panic!("{name} after stop/cont: {e}"))
                .timestamp
        };
        let (stop, resume) = (event("STOP"), event("RESUME"));
        (resume.duration_since(stop).unwrap_or_default(), resume)
    }

    /// `query-migrate` as QEMU returns it.
    #[track_caller]
    pub fn query_migrate(&mut self) -> Value {
        self.qmp.run("query-migrate", Value::Null)
    }

    /// Whether the QEMU process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Asks QEMU to quit and waits for it (kills it after 10 s).
    pub fn quit(mut self) {
        let _ = self.qmp.execute("quit", Value::Null);
        if self.child.wait_timeout(Duration::from_secs(10)).is_none() {
            self.child.stop_with("KILL", Duration::from_secs(5));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // NsChild's drop kills QEMU; on a failing test show the console.
        if thread::panicking() {
            eprintln!(
                "--- serial console of QEMU {} in {} (last lines) ---\n{}",
                self.config.label,
                self.ns,
                self.serial_tail(30)
            );
        }
    }
}

/// Where the guest's disk lives, the storage cases of the paper's Table I.
#[derive(Clone, Debug)]
pub enum Storage {
    /// No disk: RAM and devices only.
    None,
    /// Shared storage: one image that source and destination both open
    /// (same file; on real hosts a network filesystem).
    Shared {
        /// The image.
        image: PathBuf,
        /// `raw` or `qcow2`.
        format: String,
    },
    /// Storage copied with the migration: each host has its own image; the
    /// destination exports an empty one over NBD, the source mirrors into
    /// it (`drive-mirror`), and the migration follows once the mirror is
    /// in sync.
    Mirror {
        /// Image size in MiB (a sparse raw file per host).
        size_mb: u64,
    },
}

impl Storage {
    /// `none`, `shared` or `mirror`, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Storage::None => "none",
            Storage::Shared { .. } => "shared",
            Storage::Mirror { .. } => "mirror",
        }
    }
}

/// Knobs of one migration.
#[derive(Clone, Debug)]
pub struct MigrateOptions {
    /// `max-bandwidth` in bytes/s (QEMU's default is 128 MiB/s).
    pub max_bandwidth: Option<u64>,
    /// `downtime-limit` in ms (QEMU's default is 300).
    pub downtime_limit_ms: Option<u64>,
    /// For [`Storage::Mirror`]: compare the two images with `qemu-img
    /// compare` while both guests are stopped.
    pub verify_disk: bool,
    /// Give up (panic) after this long.
    pub timeout: Duration,
    /// Enable QEMU's `pause-before-switchover` on the source: it stops the
    /// VM, then waits in `pre-switchover` for a `migrate-continue`, which
    /// the source's homeward agent sends once the home agent holds the
    /// VM's traffic. The lab does not send it, unless the source waits
    /// longer than [`LAB_CONTINUE_AFTER`] (no agent): then it does, and
    /// says so in [`MigrationReport::continued_by_lab`].
    pub pause_before_switchover: bool,
    /// Cancel the migration (`migrate_cancel` on the source) this long
    /// after it started, while it transfers: the VM stays on the source,
    /// the destination QEMU is killed, and the report's status is
    /// `cancelled` (with no destination resume: `dest_resume` is the
    /// epoch).
    pub cancel_after: Option<Duration>,
}

/// How long [`Vm::migrate_to`] leaves a source in `pre-switchover` to
/// someone else before it sends `migrate-continue` itself.
pub const LAB_CONTINUE_AFTER: Duration = Duration::from_secs(3);

impl Default for MigrateOptions {
    fn default() -> MigrateOptions {
        MigrateOptions {
            max_bandwidth: Some(1 << 30),
            downtime_limit_ms: None,
            verify_disk: true,
            timeout: Duration::from_secs(90),
            pause_before_switchover: false,
            cancel_after: None,
        }
    }
}

/// What one migration did, from QEMU's own accounting and events.
#[derive(Clone, Debug)]
pub struct MigrationReport {
    /// The storage case.
    pub storage: &'static str,
    /// `query-migrate` status on the source at the end (`completed`).
    pub status: String,
    /// QEMU's `total-time`, ms (migrate command to completion).
    pub total_time_ms: u64,
    /// QEMU's `downtime`, ms (source stopped until the stream was done).
    pub downtime_ms: u64,
    /// QEMU's `setup-time`, ms.
    pub setup_time_ms: u64,
    /// RAM bytes sent (`ram.transferred`).
    pub ram_transferred: u64,
    /// The full `query-migrate` answer.
    pub query_migrate: Value,
    /// The source's `STOP` event timestamp (QEMU's clock): the guest's last
    /// instruction on the source.
    pub source_stop: Option<SystemTime>,
    /// The destination's `RESUME` event timestamp (QEMU's clock): the
    /// guest's first instruction on the destination.
    pub dest_resume: SystemTime,
    /// `dest_resume - source_stop` less `verify_time`: how long the guest
    /// did not run. With [`Storage::Mirror`] this includes ending the
    /// block job and `cont`, which QEMU's `downtime` does not.
    pub guest_paused: Option<Duration>,
    /// How long the lab's own `qemu-img compare` held both guests stopped
    /// (subtracted from `guest_paused`; zero unless it verified a mirror).
    pub verify_time: Duration,
    /// [`Storage::Mirror`]: time from starting the mirror to BLOCK_JOB_READY.
    pub mirror_sync: Option<Duration>,
    /// [`Storage::Mirror`] with `verify_disk`: whether `qemu-img compare`
    /// found the images identical.
    pub disks_identical: Option<bool>,
    /// Wall time of the whole [`Vm::migrate_to`] (destination start to
    /// source quit).
    pub wall: Duration,
    /// With `pause_before_switchover`: how long the source sat in
    /// `pre-switchover` (QEMU's MIGRATION event timestamps, pre-switchover
    /// to device).
    pub pre_switchover: Option<Duration>,
    /// With `pause_before_switchover`: nobody sent `migrate-continue`
    /// within [`LAB_CONTINUE_AFTER`], so the lab did.
    pub continued_by_lab: bool,
}

impl MigrationReport {
    /// [`MigrationReport::guest_paused`] in ms (NaN when the source's STOP
    /// was not seen).
    pub fn guest_paused_ms(&self) -> f64 {
        self.guest_paused
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }

    /// [`MigrationReport::dest_resume`] in Unix seconds, to set against the
    /// download client's timestamps.
    pub fn dest_resume_unix(&self) -> f64 {
        self.dest_resume
            .duration_since(UNIX_EPOCH)
            .map_or(f64::NAN, |d| d.as_secs_f64())
    }

    /// One line for test logs.
    pub fn summary(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "-".into())
        };
        format!(
            "storage={} status={} total={} ms downtime={} ms (QEMU) guest_paused={} (STOP->RESUME) setup={} ms ram={} KiB mirror_sync={} disks_identical={:?} (compare {}) pre_switchover={}{} wall={:.2} s",
            self.storage,
            self.status,
            self.total_time_ms,
            self.downtime_ms,
            ms(self.guest_paused),
            self.setup_time_ms,
            self.ram_transferred / 1024,
            ms(self.mirror_sync),
            self.disks_identical,
            ms(Some(self.verify_time)),
            ms(self.pre_switchover),
            if self.continued_by_lab {
                " (continued by the lab)"
            } else {
                ""
            },
            self.wall.as_secs_f64()
        )
    }
}

/// The lab's VM across migrations: the running QEMU, where it runs, and
/// how its storage moves.
#[derive(Debug)]
pub struct Vm {
    guest: GuestImage,
    base: QemuConfig,
    storage: Storage,
    generation: u32,
    boot_time: Duration,
    qemu: Option<Qemu>,
}

impl Vm {
    /// Builds the guest, starts QEMU in `ns` on `tap` and waits until the
    /// guest is ready. `base` gives MAC, memory and address ([`QemuConfig::new`]
    /// for the lab's defaults); its disk is set from `storage`.
    #[track_caller]
    pub fn boot(ns: &Netns, tap: &str, mut base: QemuConfig, storage: Storage) -> Vm {
        let guest = GuestImage::build();
        base.tap = tap.into();
        base.incoming = false;
        base.paused = false;
        base.disk = match &storage {
            Storage::None => None,
            Storage::Shared { image, format } => Some(DiskConfig {
                path: image.clone(),
                format: format.clone(),
            }),
            Storage::Mirror { size_mb } => {
                let path = ns.dir().join(format!("{}-disk-0.raw", base.label));
                create_image(&path, *size_mb, true);
                Some(DiskConfig {
                    path,
                    format: "raw".into(),
                })
            }
        };
        let mut qemu = Qemu::start(ns, &guest, base.clone());
        let boot_time = qemu.wait_ready(Duration::from_secs(60));
        Vm {
            guest,
            base,
            storage,
            generation: 0,
            boot_time,
            qemu: Some(qemu),
        }
    }

    /// Time from starting QEMU to the guest's ready line.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The QEMU the VM runs in now.
    pub fn qemu(&mut self) -> &mut Qemu {
        self.qemu.as_mut().expect("the VM has a QEMU")
    }

    /// The QEMU the VM runs in now (shared).
    pub fn qemu_ref(&self) -> &Qemu {
        self.qemu.as_ref().expect("the VM has a QEMU")
    }

    /// The namespace the VM runs in now.
    pub fn host(&self) -> &str {
        self.qemu_ref().netns_name()
    }

    /// Live-migrates the VM into a new QEMU in `ns` on `tap`, then quits
    /// the source. The destination runs when this returns (QEMU announces
    /// the guest with RARP from the new tap at once).
    #[track_caller]
    pub fn migrate_to(&mut self, ns: &Netns, tap: &str, opts: &MigrateOptions) -> MigrationReport {
        let begin = Instant::now();
        self.generation += 1;
        let mirror = matches!(self.storage, Storage::Mirror { .. });
        let mut config = self.base.clone();
        config.label = format!("{}-m{}", self.base.label, self.generation);
        config.tap = tap.into();
        config.incoming = true;
        // A mirrored disk is complete only after the block job ends, so the
        // destination must not run on its own when the RAM arrives.
        config.paused = mirror;
        if self.host() == ns.name() {
            // Within one host both QEMUs run at once: they cannot share
            // the host's agent socket path.
            config.agent_qmp = Some(ns.dir().join(format!("qmp-agent-{}.sock", config.label)));
        } else {
            config.agent_qmp = None;
        }
        if let Storage::Mirror { size_mb } = self.storage {
            let path = ns
                .dir()
                .join(format!("{}-disk-{}.raw", self.base.label, self.generation));
            create_image(&path, size_mb, false);
            config.disk = Some(DiskConfig {
                path,
                format: "raw".into(),
            });
        }
        let mut dst = Qemu::start(ns, &self.guest, config);
        let src = self.qemu.as_mut().expect("the VM has a QEMU");

        let caps = json!({"capabilities": [{"capability": "events", "state": true}]});
        if opts.pause_before_switchover {
            src.qmp.run(
                "migrate-set-capabilities",
                json!({"capabilities": [
                    {"capability": "events", "state": true},
                    {"capability": "pause-before-switchover", "state": true}
                ]}),
            );
        } else {
            src.qmp.run("migrate-set-capabilities", caps.clone());
        }
        dst.qmp.run("migrate-set-capabilities", caps);
        let mut params = serde_json::Map::new();
        if let Some(bw) = opts.max_bandwidth {
            params.insert("max-bandwidth".into(), json!(bw));
        }
        if let Some(dl) = opts.downtime_limit_ms {
            params.insert("downtime-limit".into(), json!(dl));
        }
        if !params.is_empty() {
            src.qmp.run("migrate-set-parameters", Value::Object(params));
        }

        let mut mirror_sync = None;
        let nbd_sock = dst.dir().join(format!("nbd-{}.sock", dst.config().label));
        if mirror {
            dst.qmp.run(
                "nbd-server-start",
                // nbd-server-start takes the legacy address form ("data").
                json!({"addr": {"type": "unix", "data": {"path": path_str(&nbd_sock)}}}),
            );
            dst.qmp.run(
                "block-export-add",
                json!({"type": "nbd", "id": "mig-export", "node-name": DISK_NODE,
                       "name": DISK_NODE, "writable": true}),
            );
            let mark = src.qmp.events().len();
            let t0 = Instant::now();
            src.qmp.run(
                "drive-mirror",
                json!({"job-id": "mig-mirror", "device": DISK_NODE,
                       "target": format!("nbd+unix:///{DISK_NODE}?socket={}", path_str(&nbd_sock)),
                       "format": "raw", "mode": "existing", "sync": "full"}),
            );
            src.qmp
                .wait_event("BLOCK_JOB_READY", mark, opts.timeout, |d| {
                    d["device"] == "mig-mirror"
                })
                .unwrap_or_else(|e| panic!("mirror never got in sync: {e}"));
            mirror_sync = Some(t0.elapsed());
        }

        let mig_sock = dst.dir().join(format!("mig-{}.sock", dst.config().label));
        let src_mark = src.qmp.events().len();
        let dst_mark = dst.qmp.events().len();
        dst.qmp.run(
            "migrate-incoming",
            json!({"uri": format!("unix:{}", path_str(&mig_sock))}),
        );
        src.qmp.run(
            "migrate",
            json!({"uri": format!("unix:{}", path_str(&mig_sock))}),
        );
        let started = Instant::now();
        let deadline = started + opts.timeout;
        let mut paused_since: Option<Instant> = None;
        let mut continued_by_lab = false;
        let mut cancelled = false;
        let info = loop {
            let info = src.query_migrate();
            let status = info["status"].as_str().unwrap_or("?").to_string();
            if status == "completed" {
                break info;
            }
            if let Some(after) = opts.cancel_after {
                if status == "cancelled" && cancelled {
                    break info;
                }
                if !cancelled && status == "active" && started.elapsed() >= after {
                    src.qmp.run("migrate_cancel", json!({}));
                    cancelled = true;
                }
            }
            if status == "pre-switchover" && !continued_by_lab {
                // The agent continues it; if nobody does, the lab must.
                let since = *paused_since.get_or_insert_with(Instant::now);
                if since.elapsed() > LAB_CONTINUE_AFTER {
                    continued_by_lab = true;
                    // The agent may have just done so: QEMU refuses a
                    // second one, which is fine.
                    if let Err(e) = src
                        .qmp
                        .execute("migrate-continue", json!({"state": "pre-switchover"}))
                    {
                        eprintln!("lab migrate-continue: {e}");
                    }
                }
            }
            if status == "failed" || status == "cancelled" {
                panic!(
                    "migration {status}: {info}\ndestination: {}",
                    dst.child.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "migration not done after {:?}: {info}",
                opts.timeout
            );
            thread::sleep(Duration::from_millis(20));
        };

        if cancelled {
            // The VM never left: the destination goes, the source stays.
            let num = |v: &Value| v.as_u64().unwrap_or(0);
            let report = MigrationReport {
                storage: self.storage.kind(),
                status: "cancelled".into(),
                total_time_ms: num(&info["total-time"]),
                downtime_ms: 0,
                setup_time_ms: num(&info["setup-time"]),
                ram_transferred: num(&info["ram"]["transferred"]),
                query_migrate: info,
                source_stop: None,
                dest_resume: std::time::UNIX_EPOCH,
                guest_paused: None,
                verify_time: Duration::ZERO,
                mirror_sync,
                disks_identical: None,
                wall: begin.elapsed(),
                pre_switchover: None,
                continued_by_lab,
            };
            dst.quit();
            return report;
        }

        let mut disks_identical = None;
        let mut verify_time = Duration::ZERO;
        if mirror {
            // The source is stopped: no new writes. Cancelling a job that is
            // READY finishes the copy and leaves the source on its own
            // image (a "complete" would switch it to the NBD target).
            let mark = src.qmp.events().len();
            src.qmp
                .run("block-job-cancel", json!({"device": "mig-mirror"}));
            src.qmp
                .wait_event("BLOCK_JOB_COMPLETED", mark, opts.timeout, |d| {
                    d["device"] == "mig-mirror"
                })
                .unwrap_or_else(|e| panic!("mirror did not finish: {e}"));
            dst.qmp
                .wait_event("MIGRATION", dst_mark, opts.timeout, |d| {
                    d["status"] == "completed"
                })
                .unwrap_or_else(|e| panic!("destination never completed the migration: {e}"));
            dst.qmp.run("nbd-server-stop", Value::Null);
            if opts.verify_disk {
                let t0 = Instant::now();
                let src_img = src.config().disk.as_ref().map(|d| d.path.clone());
                let dst_img = dst.config().disk.as_ref().map(|d| d.path.clone());
                if let (Some(a), Some(b)) = (src_img, dst_img) {
                    disks_identical = Some(images_identical(&a, &b));
                }
                verify_time = t0.elapsed();
            }
            dst.qmp.run("cont", Value::Null);
        }

        let resume = dst
            .qmp
            .wait_event("RESUME", dst_mark, opts.timeout, |_| true)
            .unwrap_or_else(|e| panic!("destination never resumed: {e}"));
        let _ = src.qmp.poll_events();
        let stop = src.qmp.events()[src_mark..]
            .iter()
            .find(|e| e.name == "STOP")
            .map(|e| e.timestamp);
        let migration_at = |status: &str| {
            src.qmp.events()[src_mark..]
                .iter()
                .find(|e| e.name == "MIGRATION" && e.data["status"] == status)
                .map(|e| e.timestamp)
        };
        let pre_switchover = migration_at("pre-switchover").and_then(|p| {
            let device = migration_at("device")?;
            device.duration_since(p).ok()
        });
        let num = |v: &Value| v.as_u64().unwrap_or(0);
        let report = MigrationReport {
            storage: self.storage.kind(),
            status: info["status"].as_str().unwrap_or("?").to_string(),
            total_time_ms: num(&info["total-time"]),
            downtime_ms: num(&info["downtime"]),
            setup_time_ms: num(&info["setup-time"]),
            ram_transferred: num(&info["ram"]["transferred"]),
            query_migrate: info,
            source_stop: stop,
            dest_resume: resume.timestamp,
            guest_paused: stop.and_then(|s| {
                let paused = resume.timestamp.duration_since(s).ok()?;
                Some(paused.saturating_sub(verify_time))
            }),
            verify_time,
            mirror_sync,
            disks_identical,
            wall: Duration::ZERO,
            pre_switchover,
            continued_by_lab,
        };
        let old = self.qemu.replace(dst).expect("the VM had a QEMU");
        old.quit();
        MigrationReport {
            wall: begin.elapsed(),
            ..report
        }
    }
}

/// A raw image of `size_mb` MiB: sparse (a destination's empty disk), or
/// with `filled`, every 4 KiB block holding its own number, so a disk copy
/// has real data to move and a wrong block shows in a compare.
#[track_caller]
pub fn create_image(path: &Path, size_mb: u64, filled: bool) {
    let mut f =
        fs::File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    if filled {
        let mut block = vec![0u8; 1 << 20];
        for mb in 0..size_mb {
            for (i, chunk) in block.chunks_mut(4096).enumerate() {
                let n = (mb << 8) + i as u64;
                for (j, b) in chunk.iter_mut().enumerate() {
                    *b = (n >> (8 * (j % 8))) as u8 ^ j as u8;
                }
            }
            f.write_all(&block)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
    }
    f.set_len(size_mb << 20)
        .unwrap_or_else(|e| panic!("cannot size {}: {e}", path.display()));
}

/// `qemu-img compare -U a b` (-U: QEMU holds the images open): true when
/// their contents are identical. Reads local files only, no network.
#[track_caller]
pub fn images_identical(a: &Path, b: &Path) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "-U", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap_or_else(|e| panic!("cannot run qemu-img (install-deps.sh): {e}"));
    match out.status.code() {
        Some(0) => true,
        Some(1) => {
            eprintln!(
                "qemu-img compare: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
            false
        }
        _ => panic!(
            "qemu-img compare {} {} failed: {}",
            a.display(),
            b.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
