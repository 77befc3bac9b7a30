//! The network-namespace guard and the background-process guard.
//!
//! Every namespace a test makes is named `hw-<tag>-<pid>-<counter>`: unique
//! across the threads of one test binary (counter) and across binaries run
//! at once (pid). Dropping the guard, also while a panic unwinds, kills what
//! still runs in it and deletes it; the veths and bridges inside go with it.
//! A namespace left behind by a test binary that was killed (so that no
//! Drop ran) is swept by the next binary's first `Netns::new`, because its
//! pid no longer exists.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

/// How long [`Netns::exec`] lets a command run before it kills it and panics.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` sets up the /run/netns mount on first use; concurrent
/// first uses can stack mounts, so adds are serialised within a process.
static ADD_LOCK: Mutex<()> = Mutex::new(());
static SWEEP: Once = Once::new();

/// Set this variable to keep the per-namespace scratch directories (logs,
/// pcaps, sockets) after the test; their paths are printed on drop.
pub const KEEP_ENV: &str = "HOMEWARD_KEEP_LAB";

/// A network namespace, deleted on drop together with everything in it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    dir: Option<tempfile::TempDir>,
}

impl Netns {
    /// Creates `hw-<tag>-<pid>-<counter>` with loopback up, and a scratch
    /// directory for its logs. `tag` is cut to 24 characters of
    /// `[A-Za-z0-9_-]` (others become `_`). Panics on failure: a lab that
    /// cannot be built is a test setup error.
    #[track_caller]
    pub fn new(tag: &str) -> Netns {
        require_root();
        SWEEP.call_once(sweep_stale);
        let tag: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(24)
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("hw-{tag}-{}-{n}", std::process::id());
        {
            let _guard = ADD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            check(&["ip", "netns", "add", &name], None);
        }
        // From here on Drop deletes it, whatever fails next.
        let mut ns = Netns { name, dir: None };
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", ns.name))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a scratch directory for {}: {e}", ns.name));
        ns.dir = Some(dir);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A scratch directory that lives as long as the guard (logs of spawned
    /// processes, pcaps, control sockets).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .expect("scratch directory exists until drop")
    }

    /// The command line `ip netns exec NAME args...`, not started.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        assert!(!args.is_empty(), "Netns::command needs a program");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        cmd.args(args);
        cmd
    }

    /// Runs `args` in the namespace, waits (at most [`DEFAULT_EXEC_TIMEOUT`])
    /// and returns its output, whatever its exit status.
    #[track_caller]
    pub fn exec<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.exec_timeout(args, DEFAULT_EXEC_TIMEOUT)
    }

    /// [`Netns::exec`] with a chosen timeout; panics when it runs out (after
    /// killing the command).
    #[track_caller]
    pub fn exec_timeout<S: AsRef<OsStr>>(&self, args: &[S], timeout: Duration) -> Output {
        run_with_timeout(self.command(args), &describe(args), timeout)
    }

    /// Runs `args` in the namespace and returns its stdout; panics with the
    /// command and its stderr if it fails.
    #[track_caller]
    pub fn exec_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.exec(args);
        ok_or_panic(&describe(args), &self.name, out)
    }

    /// Runs `sh -c CMD` in the namespace and returns its output.
    #[track_caller]
    pub fn sh(&self, cmd: &str) -> Output {
        self.exec(&["sh", "-c", cmd])
    }

    /// Runs `sh -c CMD` in the namespace and returns its stdout; panics if
    /// it fails.
    #[track_caller]
    pub fn sh_ok(&self, cmd: &str) -> String {
        self.exec_ok(&["sh", "-c", cmd])
    }

    /// Runs `ip -n NAME args...` (no `ip netns exec` needed) and returns its
    /// stdout; panics if it fails.
    #[track_caller]
    pub fn ip<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let mut full: Vec<OsString> = vec!["ip".into(), "-n".into(), self.name.clone().into()];
        full.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        check(&full, Some(&self.name))
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward`, ...).
    #[track_caller]
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Reads a sysctl of this namespace.
    #[track_caller]
    pub fn sysctl_get(&self, key: &str) -> String {
        self.exec_ok(&["sysctl", "-n", key]).trim().to_string()
    }

    /// Starts `args` in the namespace in the background, stdin closed,
    /// stdout and stderr going to log files in [`Netns::dir`]. The process
    /// is killed when the returned guard drops, and at the latest when the
    /// namespace does.
    #[track_caller]
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> NsChild {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let program = args
            .first()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .unwrap_or_default();
        let base = Path::new(&program)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proc".into());
        let stdout_path = self.dir().join(format!("{base}-{n}.stdout"));
        let stderr_path = self.dir().join(format!("{base}-{n}.stderr"));
        let file = |p: &Path| {
            fs::File::create(p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()))
        };
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null())
            .stdout(file(&stdout_path))
            .stderr(file(&stderr_path));
        let what = describe(args);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}` in {}: {e}", self.name));
        NsChild {
            child,
            what,
            ns: self.name.clone(),
            stdout_path,
            stderr_path,
            status: None,
        }
    }

    /// Process ids of everything running in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        ns_pids(&self.name)
    }

    /// Whether a namespace of this name exists (for a name kept after the
    /// guard dropped, see [`netns_exists`]).
    pub fn exists(&self) -> bool {
        netns_exists(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic here: a panic while unwinding aborts the test binary.
        kill_all_in(&self.name);
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "homeward-tests: `ip netns del {}` failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("homeward-tests: cannot run ip netns del {}: {e}", self.name),
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var_os(KEEP_ENV).is_some() {
                let kept = dir.keep();
                eprintln!("homeward-tests: kept {} for {}", kept.display(), self.name);
            }
        }
    }
}

/// Whether `ip netns` knows a namespace of this name.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// A process started with [`Netns::spawn`]: killed (SIGKILL) and reaped on
/// drop if still running. Its stdout and stderr are in log files.
#[derive(Debug)]
pub struct NsChild {
    child: Child,
    what: String,
    ns: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl NsChild {
    /// Its process id (the program itself: `ip netns exec` execs it).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.what
    }

    /// Path of the file its stdout goes to.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// Path of the file its stderr goes to.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// What it has written to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Sends a signal by name (`INT`, `TERM`, `HUP`, `KILL`, ...); false if
    /// it had already exited or `kill` failed.
    pub fn signal(&mut self, sig: &str) -> bool {
        if !self.is_running() {
            return false;
        }
        Command::new("kill")
            .args([&format!("-{sig}"), &self.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_millis(1);
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(20));
        }
    }

    /// Polls its stdout or stderr until `needle` shows up; false if it does
    /// not within `timeout` or the process exits first.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) || self.stdout().contains(needle) {
                return true;
            }
            if !self.is_running() {
                // It may have printed the needle just before exiting.
                return self.stderr().contains(needle) || self.stdout().contains(needle);
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Asks it to stop (`sig`, e.g. `INT` or `TERM`), waits up to `timeout`,
    /// then kills it. Returns its exit status.
    pub fn stop_with(&mut self, sig: &str, timeout: Duration) -> ExitStatus {
        if self.is_running() {
            self.signal(sig);
            if self.wait_timeout(timeout).is_none() {
                eprintln!(
                    "homeward-tests: `{}` in {} ignored SIG{sig} for {timeout:?}; killing it",
                    self.what, self.ns
                );
                let _ = self.child.kill();
            }
        }
        self.wait()
    }

    /// [`NsChild::stop_with`] SIGTERM and 5 s.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with("TERM", Duration::from_secs(5))
    }

    /// Waits for it to exit, however long that takes.
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let s = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("cannot wait for `{}`: {e}", self.what));
        self.status = Some(s);
        s
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            // The test failed: show what the process said, it is often why.
            for (label, path) in [("stdout", &self.stdout_path), ("stderr", &self.stderr_path)] {
                let text = fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                if !lines.is_empty() {
                    let tail = &lines[lines.len().saturating_sub(30)..];
                    eprintln!(
                        "--- {label} of `{}` in {} (last {} lines) ---\n{}",
                        self.what,
                        self.ns,
                        tail.len(),
                        tail.join("\n")
                    );
                }
            }
        }
    }
}

/// Panics unless the process runs as root (uid 0): the lab needs
/// CAP_SYS_ADMIN and CAP_NET_ADMIN.
#[track_caller]
pub fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert!(
        uid == "0",
        "the homeward network-namespace lab needs root (effective uid {uid}): run the tests as root"
    );
}

fn describe<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command from the root namespace (only `ip` and `kill`, which send
/// no traffic) and returns its stdout; panics if it fails.
#[track_caller]
fn check<S: AsRef<OsStr>>(args: &[S], ns: Option<&str>) -> String {
    let mut cmd = Command::new(args[0].as_ref());
    cmd.args(&args[1..]);
    let out = run_with_timeout(cmd, &describe(args), DEFAULT_EXEC_TIMEOUT);
    ok_or_panic(&describe(args), ns.unwrap_or("the root namespace"), out)
}

#[track_caller]
fn ok_or_panic(what: &str, ns: &str, out: Output) -> String {
    if !out.status.success() {
        panic!(
            "`{what}` in {ns} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` with piped output and a deadline; on timeout kills it and
/// panics.
#[track_caller]
fn run_with_timeout(mut cmd: Command, what: &str, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_reader = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err_reader = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_micros(200);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{what}` did not finish within {timeout:?}");
            }
            Ok(None) => {
                thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(10));
            }
            Err(e) => panic!("cannot wait for `{what}`: {e}"),
        }
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn ns_pids(name: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs everything in the namespace, a few rounds (a dying process may
/// have forked), and waits briefly for them to be gone.
fn kill_all_in(name: &str) {
    for _ in 0..10 {
        let pids = ns_pids(name);
        if pids.is_empty() {
            return;
        }
        let mut cmd = Command::new("kill");
        cmd.arg("-KILL");
        cmd.args(pids.iter().map(u32::to_string));
        let _ = cmd.stderr(Stdio::null()).status();
        thread::sleep(Duration::from_millis(10));
    }
    let left = ns_pids(name);
    if !left.is_empty() {
        eprintln!("homeward-tests: processes {left:?} still in {name} after SIGKILL");
    }
}

/// The pid in a name `hw-<tag>-<pid>-<n>` followed by `extra` more
/// `-`-separated parts, if the name has that form.
fn pid_in_name(name: &str, extra: usize) -> Option<u32> {
    let rest = name.strip_prefix("hw-")?;
    let mut parts = rest.rsplitn(3 + extra, '-').skip(extra);
    let n = parts.next()?;
    let pid = parts.next()?;
    parts.next()?; // the tag
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes namespaces `hw-<tag>-<pid>-<n>` whose process is gone, and
/// their scratch directories: left behind by a test binary that was killed
/// before its guards dropped.
fn sweep_stale() {
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match pid_in_name(&name, 0) {
                Some(pid) if !pid_alive(pid) => {
                    kill_all_in(&name);
                    let _ = Command::new("ip")
                        .args(["netns", "del", &name])
                        .stderr(Stdio::null())
                        .status();
                    eprintln!("homeward-tests: removed stale namespace {name} (pid {pid} is gone)");
                }
                _ => {}
            }
        }
    }
    if std::env::var_os(KEEP_ENV).is_some() {
        return;
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `hw-<tag>-<pid>-<n>-<random>`, made by tempfile.
            match pid_in_name(&name, 1) {
                Some(pid) if !pid_alive(pid) && entry.path().is_dir() => {
                    let _ = fs::remove_dir_all(entry.path());
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pid_in_name;

    #[test]
    fn parses_names() {
        assert_eq!(pid_in_name("hw-arp-cl-123-4", 0), Some(123));
        assert_eq!(pid_in_name("hw-x-123-4", 0), Some(123));
        assert_eq!(pid_in_name("hw-123-4", 0), None);
        assert_eq!(pid_in_name("hw-arp-cl-123-4-AbC9_x", 1), Some(123));
        assert_eq!(pid_in_name("hw-arp-cl-123-x", 0), None);
        assert_eq!(pid_in_name("other-arp-123-4", 0), None);
    }
}
