//! The Debian package, end to end, as root (`cargo build --release -p
//! homeward` first: the test packages that build with `scripts/deb.sh
//! --no-build`, and the man pages `homeward-man` writes):
//!
//! 1. builds the .deb, installs it with `dpkg -i`, checks what it put where;
//! 2. `systemd-analyze verify` on the installed units (no running systemd
//!    needed);
//! 3. runs the home agent unit's `ExecStart=` for an instance whose config
//!    (`/etc/homeward/<instance>.toml`, written by the test) names veths in
//!    a namespace, with the unit's capability bounding set and
//!    no-new-privileges, and a notification socket standing in for
//!    systemd's: READY=1 and MAINPID= arrive, `homeward stats` answers;
//! 4. runs the unit's `ExecReload=` (the takeover) the same way: the
//!    successor announces MAINPID=, the old process exits 0, the successor
//!    answers `homeward stats`, then stops cleanly on SIGTERM;
//! 5. `dpkg -r`: binary, units, man pages and helper gone, conffiles (the
//!    configs, the hook) kept; `dpkg -P`: /etc/homeward gone too.
//!
//! Whatever fails, the guards stop the daemons, delete the namespaces and
//! the test's config and purge the package. It refuses to run (fails) on a
//! machine where a homeward package is installed already.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use homeward_tests::inns::BpffsMount;
use homeward_tests::{require_root, veth_pair, Mac, Netns, VethEnd};

const UNIT_DIR: &str = "/lib/systemd/system";
const HA_UNIT: &str = "homeward@.service";
const AGENT_UNIT: &str = "homeward-agent@.service";

/// Files the package must install (and `dpkg -r` remove).
const PROGRAM_FILES: &[&str] = &[
    "/usr/bin/homeward",
    "/lib/systemd/system/homeward@.service",
    "/lib/systemd/system/homeward-agent@.service",
    "/usr/lib/homeward/homeward-takeover",
    "/usr/share/man/man1/homeward.1.gz",
    "/usr/share/man/man1/homeward-run.1.gz",
    "/usr/share/man/man1/homeward-agent.1.gz",
    "/usr/share/doc/homeward/README.md",
    "/usr/share/man/man1/homeward-role.1.gz",
    "/usr/share/doc/homeward/examples/keepalived.conf",
    "/usr/share/doc/homeward/examples/keepalived.service.d-homeward.conf",
];

/// Conffiles: kept by `dpkg -r`, deleted by `dpkg -P`.
const CONFFILES: &[&str] = &[
    "/etc/homeward/homeward.toml",
    "/etc/homeward/agent.toml",
    "/etc/homeward/agent.env",
    "/etc/homeward/keys.toml.example",
    "/etc/libvirt/hooks/qemu.d/homeward",
];

/// Runs a command from the root namespace; panics with its output if it fails.
#[track_caller]
fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg's view of the package: "installed", "config-files", or "" when it
/// does not know it.
fn package_state() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", "homeward"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Purges the package on drop, whatever state a failure left it in.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if !matches!(package_state().as_str(), "" | "not-installed") {
            match Command::new("dpkg").args(["-P", "homeward"]).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "package test: dpkg -P homeward failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("package test: cannot run dpkg -P homeward: {e}"),
            }
        }
    }
}

/// A file the test put in place (the instance's config); removed on drop.
struct Placed(PathBuf);

impl Drop for Placed {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A daemon that is not the test's child (the takeover successor, which
/// the helper started and left): SIGKILLed on drop if still alive.
struct Orphan(Option<u32>);

impl Drop for Orphan {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            if alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains("Z"))
        })
        .unwrap_or(false)
}

/// The `[Service]` settings of an installed unit file.
fn service_section(path: &Path) -> BTreeMap<String, String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut section = "";
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

/// A unit's command line for `instance`, as systemd would split and expand
/// it (`%i`, `$VAR`); other specifiers are refused, not guessed.
fn command_line(line: &str, instance: &str, env: &BTreeMap<&str, String>) -> Vec<String> {
    let line = line.replace("%i", instance);
    assert!(!line.contains('%'), "unexpected specifier in {line:?}");
    line.split_whitespace()
        .map(|w| match w.strip_prefix('$') {
            Some(var) => env
                .get(var)
                .unwrap_or_else(|| panic!("{var} is not set for {line:?}"))
                .clone(),
            None => w.to_string(),
        })
        .collect()
}

/// `CapabilityBoundingSet=CAP_A CAP_B` as setpriv's `-all,+a,+b`.
fn setpriv_bounding_set(unit_caps: &str) -> String {
    let mut s = String::from("-all");
    for cap in unit_caps.split_whitespace() {
        let name = cap
            .strip_prefix("CAP_")
            .unwrap_or_else(|| panic!("capability {cap:?} without CAP_"));
        s.push_str(",+");
        s.push_str(&name.to_ascii_lowercase());
    }
    s
}

/// The notification datagrams systemd would get, from a socket the test
/// binds in place of systemd's.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notification socket");
        NotifySocket { path, socket }
    }

    /// The next datagram's `KEY=value` lines, or a panic after `timeout`.
    #[track_caller]
    fn next(&self, timeout: Duration) -> BTreeMap<String, String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no sd_notify datagram within {timeout:?}: {e}"));
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn env(&self) -> String {
        format!("NOTIFY_SOCKET={}", self.path.display())
    }
}

/// The metrics page the daemon in `ns` serves at 127.0.0.1:9434.
fn metrics_page(ns: &homeward_tests::Netns) -> String {
    let out = ns.exec(&[
        "python3",
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9434/metrics', timeout=5).read().decode())",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `homeward stats --json` against `socket`, with the installed binary.
#[track_caller]
fn stats(socket: &Path) -> serde_json::Value {
    let out = run_ok(
        "/usr/bin/homeward",
        &["stats", "--json", "--socket", socket.to_str().unwrap()],
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("stats is not JSON ({e}): {out}"))
}

/// Builds the .deb from the release build into `out` (`scripts/deb.sh
/// --no-build --fast`, as an operator would without --no-build) and
/// returns its path.
fn build_deb(out: &Path) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let started = Instant::now();
    let o = Command::new("bash")
        .arg(workspace.join("scripts/deb.sh"))
        .args(["--no-build", "--fast"])
        .arg(out)
        .output()
        .expect("run scripts/deb.sh");
    assert!(
        o.status.success(),
        "scripts/deb.sh --no-build failed (cargo build --release -p homeward first; \
         cargo-deb from scripts/install-deps.sh):\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let deb = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("cargo deb wrote no .deb");
    eprintln!(
        "package test: built {} in {:.1} s",
        deb.display(),
        started.elapsed().as_secs_f64()
    );
    deb
}

#[test]
fn the_debian_package_installs_runs_takes_over_and_removes_cleanly() {
    require_root();
    let started = Instant::now();
    let state = package_state();
    assert!(
        matches!(state.as_str(), "" | "not-installed"),
        "a homeward package is on this machine already (dpkg state {state:?}); this test \
         installs and purges its own build: remove it first with `dpkg -P homeward`"
    );
    let scratch = tempfile::Builder::new()
        .prefix("hw-package-")
        .tempdir()
        .unwrap();

    // 1. Build and install.
    let deb = build_deb(scratch.path());
    let contents = run_ok("dpkg-deb", &["-c", deb.to_str().unwrap()]);
    let installed = Installed;
    run_ok("dpkg", &["-i", deb.to_str().unwrap()]);
    assert_eq!(package_state(), "installed");
    for f in PROGRAM_FILES.iter().chain(CONFFILES) {
        assert!(
            Path::new(f).exists(),
            "{f} is not installed; the package has:\n{contents}"
        );
    }
    let mode = |p: &str| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("/usr/bin/homeward"), 0o755);
    assert_eq!(mode("/etc/homeward/keys.toml.example"), 0o600);
    // The hook, executable, where libvirt (6.5 or later) runs every file
    // of qemu.d.
    assert_eq!(mode("/etc/libvirt/hooks/qemu.d/homeward"), 0o755);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    assert_eq!(
        fs::read("/etc/libvirt/hooks/qemu.d/homeward").unwrap(),
        fs::read(workspace.join("control/hooks/libvirt-qemu")).unwrap()
    );
    let conffiles = run_ok("dpkg-query", &["-W", "-f=${Conffiles}", "homeward"]);
    for f in CONFFILES {
        assert!(conffiles.contains(f), "{f} is not a conffile: {conffiles}");
    }
    let version = run_ok("/usr/bin/homeward", &["--version"]);
    assert!(version.starts_with("homeward "), "{version}");

    // 2. The units as systemd reads them (also the man pages they name).
    let instance = format!("hw-pkgtest-{}", std::process::id());
    let out = Command::new("systemd-analyze")
        .args([
            "verify",
            &format!("homeward@{instance}.service"),
            &format!("homeward-agent@{instance}.service"),
        ])
        .output()
        .expect("run systemd-analyze (package systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 3. The unit's ExecStart= for the test's instance.
    let unit = service_section(&Path::new(UNIT_DIR).join(HA_UNIT));
    assert_eq!(unit["Type"], "notify");
    assert_eq!(unit["NotifyAccess"], "all");
    assert_eq!(unit["NoNewPrivileges"], "yes");
    let agent_unit = service_section(&Path::new(UNIT_DIR).join(AGENT_UNIT));
    assert!(agent_unit["ExecStart"].starts_with("/usr/bin/homeward agent "));

    let ha = Netns::new("pkg-ha");
    let peer = Netns::new("pkg-peer");
    veth_pair(
        &VethEnd::new(&ha, "lan0", Mac::derive("pkg", 1)).addr("192.0.2.1".parse().unwrap(), 24),
        &VethEnd::new(&peer, "lan0", Mac::derive("pkg", 2)).addr("192.0.2.2".parse().unwrap(), 24),
    );
    let bpffs = BpffsMount::mount();
    let socket = scratch.path().join("control.sock");
    let config = PathBuf::from(format!("/etc/homeward/{instance}.toml"));
    let _config = Placed(config.clone());
    fs::write(
        &config,
        format!(
            "lan = \"lan0\"\naddress = \"198.51.100.1\"\nsocket = \"{}\"\nstate_dir = \"{}\"\nbpffs = \"{}\"\nmetrics = \"127.0.0.1:9434\"\n",
            socket.display(),
            scratch.path().join("state").display(),
            bpffs.path().display()
        ),
    )
    .unwrap();

    let notify = NotifySocket::bind(scratch.path());
    let bounding = setpriv_bounding_set(&unit["CapabilityBoundingSet"]);
    // As systemd would: no new privileges, only the unit's capabilities,
    // $NOTIFY_SOCKET set; here in the lab's namespace.
    let sandboxed = |argv: Vec<String>| -> Vec<String> {
        let mut full: Vec<String> = vec![
            "setpriv".into(),
            "--no-new-privs".into(),
            "--bounding-set".into(),
            bounding.clone(),
            "--".into(),
            "env".into(),
            notify.env(),
        ];
        full.extend(argv);
        full
    };
    let start = command_line(&unit["ExecStart"], &instance, &BTreeMap::new());
    assert_eq!(start[0], "/usr/bin/homeward");
    let mut daemon = ha.spawn(&sandboxed(start.clone()));
    let ready = notify.next(Duration::from_secs(20));
    assert_eq!(
        ready.get("READY").map(String::as_str),
        Some("1"),
        "{ready:?}"
    );
    assert_eq!(ready["MAINPID"], daemon.id().to_string());
    assert!(daemon.wait_for_output("homeward is running", Duration::from_secs(5)));
    let s = stats(&socket);
    assert_eq!(s["queues"], 1, "{s}");
    assert!(metrics_page(&ha).contains("homeward_build_info"));
    eprintln!(
        "package test: ExecStart ready after {:.1} s, xdp mode {}",
        started.elapsed().as_secs_f64(),
        s["xdp_mode"]
    );

    // 4. ExecReload=: the takeover, with $MAINPID as systemd sets it.
    let env = BTreeMap::from([("MAINPID", daemon.id().to_string())]);
    let reload = command_line(&unit["ExecReload"], &instance, &env);
    assert_eq!(reload[0], "/usr/lib/homeward/homeward-takeover");
    let mut helper = ha.spawn(&sandboxed(reload));
    let mut successor = Orphan(None);
    let announced = notify.next(Duration::from_secs(20));
    let new_pid: u32 = announced
        .get("MAINPID")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the successor did not announce MAINPID=: {announced:?}"));
    successor.0 = Some(new_pid);
    assert_ne!(new_pid, daemon.id());
    assert_ne!(
        new_pid,
        helper.id(),
        "the reload process must not be the new main process"
    );
    let status = helper
        .wait_timeout(Duration::from_secs(30))
        .expect("homeward-takeover returns once the old daemon is gone");
    assert!(
        status.success(),
        "homeward-takeover: {status}\n{}",
        helper.stderr()
    );
    let old = daemon
        .wait_timeout(Duration::from_secs(5))
        .expect("the old daemon exits");
    assert!(old.success(), "the old daemon after handing over: {old}");
    assert!(daemon
        .stderr()
        .contains("handed over to the --takeover successor"));
    let ready = notify.next(Duration::from_secs(10));
    assert_eq!(
        ready.get("READY").map(String::as_str),
        Some("1"),
        "{ready:?}"
    );
    assert!(alive(new_pid), "the successor runs");
    let s = stats(&socket);
    assert_eq!(s["queues"], 1, "{s}");
    // The metrics endpoint moved to the successor with the data path.
    let page = metrics_page(&ha);
    assert!(page.contains("homeward_build_info"), "{page}");
    assert!(page.contains("homeward_maps_in_sync 1"), "{page}");
    eprintln!(
        "package test: ExecReload took over after {:.1} s (successor uptime {} s)",
        started.elapsed().as_secs_f64(),
        s["uptime"]
    );

    // Stopped as systemd stops a service: SIGTERM to the main process.
    run_ok("kill", &["-TERM", &new_pid.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(new_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(new_pid), "the successor ignored SIGTERM");
    successor.0 = None;
    // Its stderr is the helper's (the journal, under systemd).
    let log = helper.stderr();
    assert!(log.contains("frames at teardown"), "{log}");
    assert!(!log.contains("frames leaked"), "{log}");
    drop(_config);

    // 5. Removal: programs go, conffiles stay; purge takes those too.
    run_ok("dpkg", &["-r", "homeward"]);
    assert_eq!(package_state(), "config-files");
    for f in PROGRAM_FILES {
        assert!(
            fs::symlink_metadata(f).is_err(),
            "{f} is still there after dpkg -r"
        );
    }
    for f in CONFFILES {
        assert!(Path::new(f).exists(), "{f} (a conffile) went with dpkg -r");
    }
    run_ok("dpkg", &["-P", "homeward"]);
    assert!(matches!(package_state().as_str(), "" | "not-installed"));
    assert!(
        !Path::new("/etc/homeward").exists(),
        "/etc/homeward is still there after dpkg -P"
    );
    drop(installed);
    eprintln!(
        "package test: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
