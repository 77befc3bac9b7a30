//! Driving a real `homeward run` in a lab: start it, talk to it through
//! its own CLI, stop it and check its teardown frame accounting.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::NsChild;
use crate::topology::Topology;

/// A running `homeward run` in the lab's HA namespace.
pub struct HomeAgent<'a> {
    lab: &'a Topology,
    child: NsChild,
}

/// What `homeward run` said when it stopped.
pub struct Teardown {
    /// Whether it exited 0.
    pub success: bool,
    /// Its stderr (logs and the teardown accounting lines).
    pub stderr: String,
}

impl Teardown {
    /// The `unaccounted` numbers of each queue's teardown line.
    pub fn unaccounted(&self) -> Vec<i64> {
        self.stderr
            .lines()
            .filter(|l| l.contains("frames at teardown"))
            .filter_map(|l| l.rsplit("unaccounted ").next()?.trim().parse().ok())
            .collect()
    }
}

impl<'a> HomeAgent<'a> {
    /// Starts homeward with the lab's interfaces plus `extra` flags and
    /// waits until it serves its control socket.
    #[track_caller]
    pub fn start(lab: &'a Topology, extra: &[&str]) -> HomeAgent<'a> {
        let mut child = lab.spawn_homeward(extra);
        let ready = child.wait_for_output("homeward is running", Duration::from_secs(20));
        assert!(
            ready,
            "homeward did not start: {}\n{}",
            child.command_line(),
            child.stderr()
        );
        HomeAgent { lab, child }
    }

    /// Like [`HomeAgent::start`] with another `homeward` binary (e.g. a
    /// different build taking over with `--takeover`).
    #[track_caller]
    pub fn start_bin(lab: &'a Topology, bin: &std::path::Path, extra: &[&str]) -> HomeAgent<'a> {
        let mut child = lab.spawn_homeward_bin(bin, extra);
        let ready = child.wait_for_output("homeward is running", Duration::from_secs(20));
        assert!(
            ready,
            "homeward did not start: {}\n{}",
            child.command_line(),
            child.stderr()
        );
        HomeAgent { lab, child }
    }

    /// Wait (up to `timeout`) for it to exit by itself, e.g. after handing
    /// over to a `--takeover` successor; killed if it does not.
    #[track_caller]
    pub fn wait_exit(mut self, timeout: Duration) -> Teardown {
        let exited = self.child.wait_timeout(timeout).is_some();
        let status = self.child.stop_with("KILL", Duration::from_secs(5));
        Teardown {
            success: exited && status.success(),
            stderr: self.child.stderr(),
        }
    }

    /// Runs a CLI command against this daemon's socket; panics on failure.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        let socket = self.lab.control_socket();
        let socket = socket.to_string_lossy();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--socket", &socket]);
        let out = self.lab.homeward_cli(&full);
        assert!(
            out.status.success(),
            "homeward {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `homeward bind VM CARE_OF [more]`.
    #[track_caller]
    pub fn bind(&self, vm: &str, care_of: &str, more: &[&str]) {
        let mut args = vec!["bind", vm, care_of];
        args.extend(more);
        self.cli(&args);
    }

    /// `homeward unbind VM`.
    #[track_caller]
    pub fn unbind(&self, vm: &str) {
        self.cli(&["unbind", vm]);
    }

    /// `homeward stats --json`.
    #[track_caller]
    pub fn stats(&self) -> Value {
        let text = self.cli(&["stats", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats --json: {e}: {text}"))
    }

    /// One counter of `stats --json`, e.g. `("counters", "encapsulated")`.
    #[track_caller]
    pub fn counter(&self, section: &str, name: &str) -> u64 {
        self.stats()[section][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {section}.{name}"))
    }

    /// Waits until `f(stats)` holds, up to `timeout`; returns the last stats.
    #[track_caller]
    pub fn wait_stats(&self, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if f(&s) || Instant::now() >= deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `homeward list --json`: the bindings.
    #[track_caller]
    pub fn list(&self) -> Vec<Value> {
        let text = self.cli(&["list", "--json"]);
        match serde_json::from_str(&text) {
            Ok(Value::Array(list)) => list,
            _ => panic!("list --json: {text}"),
        }
    }

    /// The binding of `vm` in `homeward list --json`, if any.
    #[track_caller]
    pub fn binding(&self, vm: &str) -> Option<Value> {
        self.list().into_iter().find(|b| b["vm"] == vm)
    }

    /// The `registration` object of `homeward stats --json`.
    #[track_caller]
    pub fn registration_stats(&self) -> Value {
        self.stats()["registration"].clone()
    }

    /// Runs `homeward register ARGS...` in namespace `ns` (a registering
    /// hypervisor) and returns its output, whatever the exit status.
    #[track_caller]
    pub fn register_from(&self, ns: &crate::netns::Netns, args: &[&str]) -> std::process::Output {
        let mut full = vec![
            crate::homeward_bin().to_string_lossy().into_owned(),
            "register".into(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        ns.exec(&full)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        self.child.stderr()
    }

    /// SIGINT, wait for exit, return what it said.
    #[track_caller]
    pub fn stop(self) -> Teardown {
        self.stop_with("INT")
    }

    /// Signal `sig` (`INT`, `TERM`), wait for exit, return what it said.
    #[track_caller]
    pub fn stop_with(mut self, sig: &str) -> Teardown {
        let status = self.child.stop_with(sig, Duration::from_secs(10));
        Teardown {
            success: status.success(),
            stderr: self.child.stderr(),
        }
    }
}

/// Writes a registration key file in `dir`: one SPI `spi` with `key` (hex)
/// for `home_addresses` (prefixes), root-only as homeward requires.
pub fn key_file(
    dir: &std::path::Path,
    spi: u32,
    key: &str,
    home_addresses: &str,
) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("keys.toml");
    std::fs::write(
        &path,
        format!("[[spi]]\nspi = {spi}\nkey = \"{key}\"\nhome_addresses = [\"{home_addresses}\"]\n"),
    )
    .expect("write the key file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the key file");
    path
}
