//! The paper's scenario for real: a QEMU VM serving a download on its home
//! LAN live-migrates to hypervisor B on another network while the client
//! downloads, and comes back. homeward runs as the home agent (`homeward
//! run` with registration) and as the agent on both hypervisors (`homeward
//! agent`, watching QEMU over QMP). Nothing tells homeward about the
//! migration but QEMU's own events.
//!
//! Needs root, QEMU 10, the guest kernel (scripts/install-deps.sh) and
//! `cargo build --release -p homeward`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use homeward_tests::qemu::MigrationReport;
use homeward_tests::vm::{HELLO_BODY, HELLO_PATH, VM_MAC};
use homeward_tests::{
    decode_arp, homeward_bin, Capture, MigrateOptions, MigrationLab, Netns, NsChild, Storage,
    StreamOptions, StreamReport,
};
use serde_json::Value;

/// One guest at a time on this 2-core machine (see vm_migration.rs).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const KEY: &str = "6b6579206f662074686520766d277320737069203235362c2068657821";

/// homeward on the lab: the HA and an agent on each hypervisor, their key
/// file, replay state and sockets in a private directory.
struct Homeward {
    dir: tempfile::TempDir,
    ha: NsChild,
    agent_a: NsChild,
    agent_b: NsChild,
}

impl Homeward {
    #[track_caller]
    fn start(lab: &MigrationLab) -> Homeward {
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
            "--registration-state".into(),
            dir.path().join("replay.json").display().to_string(),
            "--socket".into(),
            dir.path().join("ha.sock").display().to_string(),
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
            args.extend(if label == "a" {
                lab.agent_args_a(&config)
            } else {
                lab.agent_args_b(&config)
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
        Homeward {
            dir,
            ha,
            agent_a,
            agent_b,
        }
    }

    /// `homeward ARGS --socket <which>.sock --json` in `ns`, parsed.
    #[track_caller]
    fn json(&self, ns: &Netns, which: &str, args: &[&str]) -> Value {
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
    fn binding(&self, lab: &MigrationLab) -> Option<Value> {
        let list = self.json(&lab.ha, "ha", &["list"]);
        list.as_array()?
            .iter()
            .find(|b| b["vm"] == "192.0.2.50")
            .cloned()
    }

    /// Polls until the HA's binding is (`Some(care_of)`) or is not (`None`).
    #[track_caller]
    fn wait_binding(&self, lab: &MigrationLab, want: Option<&str>, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.binding(lab);
            let care_of = got
                .as_ref()
                .and_then(|b| b["care_of"].as_str().map(String::from));
            if care_of.as_deref() == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "HA binding {got:?}, want care-of {want:?}\nagent B:\n{}\nHA:\n{}",
                self.agent_b.stderr(),
                self.ha.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every daemon and checks each teardown accounted for every frame.
    #[track_caller]
    fn stop(mut self) {
        for (name, child) in [
            ("HA", &mut self.ha),
            ("agent A", &mut self.agent_a),
            ("agent B", &mut self.agent_b),
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

/// The agent's config on hypervisor `ns`: the lab's VM, on the lab's tap,
/// with QEMU's spare QMP socket there.
fn write_agent_config(path: &Path, keys: &Path, lab: &MigrationLab, ns: &Netns, socket: &Path) {
    std::fs::write(
        path,
        format!(
            "keys = \"{}\"\nvm_link = \"{}\"\nlifetime = 30\nsocket = \"{}\"\n\n\
             [[vm]]\nname = \"vm\"\nmac = \"{VM_MAC}\"\nhome_address = \"192.0.2.50\"\n\
             home_prefix_len = 24\nspi = 256\nqmp = \"{}\"\n",
            keys.display(),
            lab.tap,
            socket.display(),
            lab.agent_qmp_socket(ns).display()
        ),
    )
    .expect("write agent config");
}

/// The agent on `ns`'s view of the VM (`homeward list` on its socket).
fn agent_vm(hw: &Homeward, ns: &Netns, which: &str) -> Value {
    hw.json(ns, which, &["list"])["vms"][0].clone()
}

/// One migration A -> B during a download: the transfer must complete,
/// every byte right, without a reset. Returns the report and QEMU's.
#[track_caller]
fn migrate_during_download(
    lab: &MigrationLab,
    hw: &Homeward,
    vm: &mut homeward_tests::Vm,
    label: &str,
) -> (StreamReport, MigrationReport) {
    let mut stream = lab.start_stream(&StreamOptions {
        seconds: 10.0,
        ..StreamOptions::default()
    });
    std::thread::sleep(Duration::from_secs(3));
    let report = vm.migrate_to(&lab.hyp_b, &lab.tap, &MigrateOptions::default());
    assert_eq!(report.status, "completed", "{}", report.summary());
    let bound_after = hw.wait_binding(lab, Some("203.0.113.2"), Duration::from_secs(10));
    let download = StreamReport::wait(&mut stream, Duration::from_secs(60));
    let b = agent_vm(hw, &lab.hyp_b, "agent-b");
    eprintln!(
        "{label}: client-observed outage {:.0} ms | QEMU downtime {} ms, guest paused {:?} | \
         resume -> registered {} ms (agent B), binding seen {:?} after migrate returned | \
         {} bytes verified={} reset={} | {}",
        download.max_gap_ms,
        report.downtime_ms,
        report.guest_paused,
        b["resume_to_registered_ms"],
        bound_after,
        download.bytes,
        download.verified,
        download.reset,
        report.summary()
    );
    assert!(
        download.is_clean(),
        "{label}: the download did not survive the migration: {download:?}\nagent B:\n{}\nHA:\n{}",
        hw.agent_b.stderr(),
        hw.ha.stderr()
    );
    assert!(
        download.duration_s >= 9.0,
        "{label}: the download ended early: {download:?}"
    );
    assert!(
        b["resume_to_registered_ms"].is_number(),
        "{label}: agent B did not register on resume: {b}"
    );
    (download, report)
}

#[test]
fn tcp_download_survives_live_migration_and_the_vm_comes_home() {
    let _one = serial();
    let lab = MigrationLab::new("hwmig");
    let hw = Homeward::start(&lab);
    let mut vm = lab.boot_vm_on_a(Storage::None);
    assert_eq!(
        lab.http_get(&lab.client, HELLO_PATH).as_deref(),
        Some(HELLO_BODY)
    );
    assert!(hw.binding(&lab).is_none(), "a binding before any migration");

    migrate_during_download(&lab, &hw, &mut vm, "plain A->B");

    // Both tunnel directions carried the session: the HA encapsulated the
    // client's packets and decapsulated the VM's reverse-tunnelled ones.
    let stats = hw.json(&lab.ha, "ha", &["stats"]);
    let c = &stats["counters"];
    assert!(c["encapsulated"].as_u64() > Some(100), "{stats}");
    assert!(c["decapsulated"].as_u64() > Some(100), "{stats}");
    let fa = hw.json(&lab.hyp_b, "agent-b", &["stats"]);
    eprintln!("agent B stats: {fa}");

    // Home again: the agent on A deregisters, the HA gives the address
    // back with a gratuitous ARP from the VM's own MAC, and the client
    // talks to the VM directly.
    let capture = Capture::start(&lab.client, &lab.client_lan.name, "arp");
    let back = vm.migrate_to(&lab.hyp_a, &lab.tap, &MigrateOptions::default());
    assert_eq!(back.status, "completed", "{}", back.summary());
    let unbound_after = hw.wait_binding(&lab, None, Duration::from_secs(10));
    eprintln!(
        "B->A: binding removed {unbound_after:?} after migrate returned; {}",
        back.summary()
    );
    std::thread::sleep(Duration::from_millis(1200));
    let arps = decode_arp(&capture.stop());
    assert!(
        arps.iter().any(|a| a.is_request()
            && a.psrc == lab.vm_addr()
            && a.pdst == lab.vm_addr()
            && a.hwsrc == VM_MAC),
        "no give-back gratuitous ARP with the VM's MAC: {arps:?}"
    );
    let encapsulated_before = hw.json(&lab.ha, "ha", &["stats"])["counters"]["encapsulated"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        lab.http_get(&lab.client, HELLO_PATH).as_deref(),
        Some(HELLO_BODY)
    );
    let encapsulated_after = hw.json(&lab.ha, "ha", &["stats"])["counters"]["encapsulated"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        encapsulated_before, encapsulated_after,
        "the new connection went through the tunnel, not directly"
    );
    assert_eq!(
        lab.client.neighbor(lab.vm_addr()).and_then(|n| n.lladdr),
        Some(VM_MAC),
        "the client's ARP entry for the VM is not the VM's own MAC"
    );
    drop(vm);
    hw.stop();
}

/// The two storage cases of the paper's Table I that QEMU can do here.
#[test]
fn migration_with_shared_storage_and_with_block_mirroring() {
    let _one = serial();
    for (label, shared) in [("shared storage", true), ("NBD block mirror", false)] {
        let lab = MigrationLab::new(if shared { "hwshr" } else { "hwnbd" });
        let hw = Homeward::start(&lab);
        let storage = if shared {
            lab.shared_storage(64)
        } else {
            Storage::Mirror { size_mb: 64 }
        };
        let mut vm = lab.boot_vm_on_a(storage);
        let (_, report) = migrate_during_download(&lab, &hw, &mut vm, label);
        if !shared {
            assert_eq!(report.disks_identical, Some(true), "{}", report.summary());
        }
        drop(vm);
        hw.stop();
    }
}
