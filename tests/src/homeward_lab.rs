//! homeward on the migration lab ([`MigrationLab`]): the home agent
//! (`homeward run` with RFC 5944 registration) and a `homeward agent` on
//! each hypervisor watching the VM's QEMU over QMP, with their key file,
//! replay state, configs and sockets in a private directory. Used by the
//! migration tests and the migration demo.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{homeward_bin, MigrationLab, Netns, NsChild};

/// The VM's SPI 256 key (HMAC-SHA256), in the HA's and both agents' key file.
const KEY: &str = "6b6579206f662074686520766d277320737069203235362c2068657821";

/// homeward on the lab: the HA and an agent on each hypervisor, their key
/// file, replay state and sockets in a private directory.
pub struct Homeward {
    dir: tempfile::TempDir,
    /// `homeward run` in the HA namespace.
    pub ha: NsChild,
    /// `homeward agent` on hypervisor A (the VM's home).
    pub agent_a: NsChild,
    /// `homeward agent` on hypervisor B (the foreign network).
    pub agent_b: NsChild,
    /// `homeward agent` on hypervisor C (a second foreign network).
    pub agent_c: NsChild,
}

impl Homeward {
    /// Starts the HA and both agents and waits until each is running.
    #[track_caller]
    pub fn start(lab: &MigrationLab) -> Homeward {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("keys.toml");
        std::fs::write(
            &keys,
            format!(
                "[[spi]]\nspi = 256\nalgorithm = \"hmac-sha256\"\nkey = \"{KEY}\"\n\
                 home_addresses = [\"192.0.2.0/24\"]\n"
            ),
        )
        .expect("write keys");
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).expect("chmod");

        let bin = homeward_bin().to_string_lossy().into_owned();
        let mut args = vec![bin.clone()];
        args.extend(lab.homeward_run_args());
        args.extend([
            "--registration-keys".into(),
            keys.display().to_string(),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
            "--socket".into(),
            dir.path().join("ha.sock").display().to_string(),
            "--metrics".into(),
            METRICS.into(),
        ]);
        let mut ha = lab.ha.spawn(&args);
        assert!(
            ha.wait_for_output("homeward is running", Duration::from_secs(20)),
            "homeward run did not start:\n{}",
            ha.stderr()
        );

        let agent = |ns: &Netns, label: &str| -> NsChild {
            let config = dir.path().join(format!("agent-{label}.toml"));
            write_agent_config(
                &config,
                &keys,
                lab,
                ns,
                &dir.path().join(format!("agent-{label}.sock")),
            );
            let mut args = vec![bin.clone()];
            args.extend(match label {
                "a" => lab.agent_args_a(&config),
                "b" => lab.agent_args_b(&config),
                _ => lab.agent_args_c(&config),
            });
            let mut child = ns.spawn(&args);
            assert!(
                child.wait_for_output("homeward agent is running", Duration::from_secs(20)),
                "homeward agent ({label}) did not start:\n{}",
                child.stderr()
            );
            child
        };
        let agent_a = agent(&lab.hyp_a, "a");
        let agent_b = agent(&lab.hyp_b, "b");
        let agent_c = agent(&lab.hyp_c, "c");
        Homeward {
            dir,
            ha,
            agent_a,
            agent_b,
            agent_c,
        }
    }

    /// The control socket of `which` (`ha`, `agent-a`, `agent-b`), for
    /// `homeward capture --socket`, say.
    pub fn socket(&self, which: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{which}.sock"))
    }

    /// `homeward ARGS --socket <which>.sock --json` in `ns`, parsed.
    #[track_caller]
    pub fn json(&self, ns: &Netns, which: &str, args: &[&str]) -> Value {
        let socket = self.dir.path().join(format!("{which}.sock"));
        let mut full = vec![homeward_bin().to_string_lossy().into_owned()];
        full.extend(args.iter().map(|s| s.to_string()));
        full.extend([
            "--json".into(),
            "--socket".into(),
            socket.display().to_string(),
        ]);
        let out = ns.exec(&full);
        assert!(
            out.status.success(),
            "homeward {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON from homeward")
    }

    /// The HA's binding of the VM, if any.
    pub fn binding(&self, lab: &MigrationLab) -> Option<Value> {
        self.binding_of(lab, lab.vm_addr())
    }

    /// The HA's binding of the VM whose home address is `vm`, if any.
    pub fn binding_of(&self, lab: &MigrationLab, vm: Ipv4Addr) -> Option<Value> {
        let list = self.json(&lab.ha, "ha", &["list"]);
        list.as_array()?
            .iter()
            .find(|b| b["vm"] == vm.to_string())
            .cloned()
    }

    /// Polls until the HA's binding is (`Some(care_of)`) or is not (`None`).
    #[track_caller]
    pub fn wait_binding(
        &self,
        lab: &MigrationLab,
        want: Option<&str>,
        timeout: Duration,
    ) -> Duration {
        self.wait_binding_of(lab, lab.vm_addr(), want, timeout)
    }

    /// [`Homeward::wait_binding`] for the VM whose home address is `vm`.
    #[track_caller]
    pub fn wait_binding_of(
        &self,
        lab: &MigrationLab,
        vm: Ipv4Addr,
        want: Option<&str>,
        timeout: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.binding_of(lab, vm);
            let care_of = got
                .as_ref()
                .and_then(|b| b["care_of"].as_str().map(String::from));
            if care_of.as_deref() == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "HA binding of {vm}: {got:?}, want care-of {want:?}\nagent B:\n{}\nHA:\n{}",
                self.agent_b.stderr(),
                self.ha.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every daemon and checks each teardown accounted for every frame.
    #[track_caller]
    pub fn stop(mut self) {
        for (name, child) in [
            ("HA", &mut self.ha),
            ("agent A", &mut self.agent_a),
            ("agent B", &mut self.agent_b),
            ("agent C", &mut self.agent_c),
        ] {
            let status = child.stop();
            let err = child.stderr();
            assert!(status.success(), "{name} exited {status}:\n{err}");
            assert!(
                err.lines()
                    .filter(|l| l.contains("frames at teardown"))
                    .all(|l| l.ends_with("unaccounted 0")),
                "{name} leaked frames:\n{err}"
            );
        }
    }
}

/// The agent's config on hypervisor `ns`: a `[[vm]]` per lab VM, each with
/// its QEMU's spare QMP socket there. The VM link: on A the first VM's tap
/// (A's bridge is the uplink), on B [`MigrationLab::b_vm_link`] (the tap,
/// or with several VMs the bridge holding their taps).
fn write_agent_config(path: &Path, keys: &Path, lab: &MigrationLab, ns: &Netns, socket: &Path) {
    let vm_link = if ns.name() == lab.hyp_b.name() || ns.name() == lab.hyp_c.name() {
        &lab.b_vm_link
    } else {
        &lab.tap
    };
    let mut text = format!(
        "keys = \"{}\"\nvm_link = \"{vm_link}\"\nlifetime = 30\nsocket = \"{}\"\nmetrics = \"{METRICS}\"\n",
        keys.display(),
        socket.display(),
    );
    for (i, v) in lab.vms.iter().enumerate() {
        text.push_str(&format!(
            "\n[[vm]]\nname = \"{}\"\nmac = \"{}\"\nhome_address = \"{}\"\n\
             home_prefix_len = 24\nspi = 256\nqmp = \"{}\"\n",
            v.name,
            v.mac,
            v.addr,
            lab.vm_agent_qmp_socket(ns, i).display()
        ));
    }
    std::fs::write(path, text).expect("write agent config");
}

/// Where each daemon (HA and agents, each in its own namespace) serves its
/// metrics.
pub const METRICS: &str = "127.0.0.1:9434";

/// `ns`'s homeward metrics page: each sample line as `(series, value)`.
pub fn scrape(ns: &Netns) -> Vec<(String, f64)> {
    let out = ns.exec(&[
        "python3",
        "-c",
        "import sys, urllib.request; print(urllib.request.urlopen('http://' + sys.argv[1] + '/metrics', timeout=5).read().decode())",
        METRICS,
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `series` (name with its labels, exactly as exposed).
pub fn metric(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

/// The agent on `ns`'s view of the VM (`homeward list` on its socket).
pub fn agent_vm(hw: &Homeward, ns: &Netns, which: &str) -> Value {
    hw.json(ns, which, &["list"])["vms"][0].clone()
}

/// The agent on `ns`'s view of the VM named `name` (`Null` if it has none).
pub fn agent_vm_named(hw: &Homeward, ns: &Netns, which: &str, name: &str) -> Value {
    hw.json(ns, which, &["list"])["vms"]
        .as_array()
        .and_then(|vms| vms.iter().find(|v| v["name"] == name).cloned())
        .unwrap_or(Value::Null)
}
