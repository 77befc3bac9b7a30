//! The libvirt hook (control/hooks/libvirt-qemu) run the way libvirt runs
//! it, with a fake `homeward` on PATH that records its arguments.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"keys = "/etc/homeward/keys.toml"
vm_link = "tap0"
[[vm]]
name = "web1"
mac = "52:54:00:00:00:50"
home_address = "192.0.2.50"
home_prefix_len = 24
spi = 256
qmp = "/run/homeward/web1.qmp"
[[vm]]
name = 'db.1'   # single quotes and a comment
mac = "52:54:00:00:00:51"
home_address = "192.0.2.51"
home_prefix_len = 24
spi = 257
qmp = "/run/homeward/db1.qmp"
"#;

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    /// A config, and a fake homeward that logs its arguments and then
    /// behaves as $FAKE_MODE says (ok, fail, hang).
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.toml"), CONFIG).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let fake = bin.join("homeward");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"$*\" >>\"$FAKE_LOG\"\ncase \"$FAKE_MODE\" in\nfail) echo 'homeward: no reply from the home agent' >&2; exit 1;;\nhang) exec sleep 30;;\nesac\necho registered\n",
        )
        .unwrap();
        let mut p = std::fs::metadata(&fake).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
        std::fs::set_permissions(&fake, p).unwrap();
        Lab { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Runs the hook as libvirt would: arguments, the domain XML on stdin.
    fn hook(&self, args: [&str; 4], mode: &str, env: &[(&str, &str)]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/libvirt-qemu");
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("sh");
        cmd.arg(script)
            .args(args)
            .env("PATH", path)
            .env("HOMEWARD_CONFIG", self.path("agent.toml"))
            .env("HOMEWARD_HOOK_STATE", self.path("state"))
            .env("FAKE_LOG", self.path("calls"))
            .env("FAKE_MODE", mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        // A domain XML of realistic size, written while the hook runs.
        let xml = format!(
            "<domain type='kvm'><name>{}</name>{}</domain>\n",
            args[0],
            "<!-- padding -->".repeat(8192)
        );
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(xml.as_bytes());
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    /// The fake homeward's calls so far, one per line; clears them.
    fn calls(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.path("calls")).unwrap_or_default();
        let _ = std::fs::remove_file(self.path("calls"));
        text.lines().map(str::to_string).collect()
    }
}

#[track_caller]
fn quiet_success(out: &Output) {
    assert!(out.status.success(), "{out:?}");
    // Output on stdout would replace the domain XML for migrate/restore.
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn a_start_registers_served_guests_only() {
    let lab = Lab::new();
    quiet_success(&lab.hook(["web1", "started", "begin", "-"], "ok", &[]));
    let cfg = lab.path("agent.toml");
    assert_eq!(
        lab.calls(),
        vec![format!(
            "register --config {} --vm web1 --timeout 4",
            cfg.display()
        )]
    );
    quiet_success(&lab.hook(["db.1", "started", "begin", "-"], "ok", &[]));
    assert_eq!(lab.calls().len(), 1, "single-quoted names count");
    // Not ours: not even started.
    for guest in ["other", "web", "web1x", "db"] {
        quiet_success(&lab.hook([guest, "started", "begin", "-"], "ok", &[]));
    }
    assert!(lab.calls().is_empty());
    // Other operations do nothing.
    for (op, sub) in [
        ("prepare", "begin"),
        ("start", "begin"),
        ("stopped", "end"),
        ("release", "end"),
        ("reconnect", "begin"),
        ("restore", "begin"),
    ] {
        quiet_success(&lab.hook(["web1", op, sub, "-"], "ok", &[]));
    }
    assert!(lab.calls().is_empty());
}

#[test]
fn an_incoming_migration_is_left_to_the_agent() {
    let lab = Lab::new();
    // Destination: migrate, prepare, start, started, all before the
    // guest's memory arrives.
    for (op, sub) in [
        ("migrate", "begin"),
        ("prepare", "begin"),
        ("start", "begin"),
        ("started", "begin"),
    ] {
        quiet_success(&lab.hook(["web1", op, sub, "-"], "ok", &[]));
    }
    assert!(lab.calls().is_empty());
    // The mark is used up: a later plain start registers.
    quiet_success(&lab.hook(["web1", "started", "begin", "-"], "ok", &[]));
    assert_eq!(lab.calls().len(), 1);
    // A failed incoming migration's mark is cleared at release.
    quiet_success(&lab.hook(["web1", "migrate", "begin", "-"], "ok", &[]));
    quiet_success(&lab.hook(["web1", "release", "end", "failed"], "ok", &[]));
    quiet_success(&lab.hook(["web1", "started", "begin", "-"], "ok", &[]));
    assert_eq!(lab.calls().len(), 1);
}

#[test]
fn failures_and_hangs_never_fail_or_hold_libvirt() {
    let lab = Lab::new();
    quiet_success(&lab.hook(["web1", "started", "begin", "-"], "fail", &[]));
    assert_eq!(lab.calls().len(), 1);
    let t = Instant::now();
    quiet_success(&lab.hook(
        ["web1", "started", "begin", "-"],
        "hang",
        &[("HOMEWARD_HOOK_TIMEOUT", "1")],
    ));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(
        lab.calls(),
        vec![format!(
            "register --config {} --vm web1 --timeout 1",
            lab.path("agent.toml").display()
        )]
    );
}

#[test]
fn settings_pass_through_and_no_config_is_no_op() {
    let lab = Lab::new();
    quiet_success(&lab.hook(
        ["web1", "started", "begin", "-"],
        "ok",
        &[
            ("HOMEWARD_HOME_AGENT", "198.51.100.1"),
            ("HOMEWARD_CARE_OF", "203.0.113.2"),
        ],
    ));
    let calls = lab.calls();
    assert!(
        calls[0].ends_with("--home-agent 198.51.100.1 --care-of 203.0.113.2"),
        "{calls:?}"
    );
    let missing = lab.path("absent.toml");
    let missing = missing.to_str().unwrap();
    quiet_success(&lab.hook(
        ["web1", "started", "begin", "-"],
        "ok",
        &[("HOMEWARD_CONFIG", missing)],
    ));
    assert!(lab.calls().is_empty());
    // libvirt's daemon-wide calls have "-" as the guest.
    quiet_success(&lab.hook(["-", "started", "begin", "-"], "ok", &[]));
    assert!(lab.calls().is_empty());
}
