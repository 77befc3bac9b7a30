//! The CLI's failure modes: one clear line on stderr and a non-zero exit.
//! Runs the real binary (`cargo build --release -p homeward` first).

use std::process::{Command, Output};

use homeward_tests::{homeward_bin, require_root, Netns, Topology};

fn homeward(args: &[&str]) -> Output {
    Command::new(homeward_bin())
        .args(args)
        .output()
        .expect("run homeward")
}

/// Exactly one line on stderr, containing `needle`, and a failure status.
#[track_caller]
fn fails_with_one_line(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr:?}"
    );
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
}

#[test]
fn a_daemon_that_is_not_running_is_named() {
    for cmd in [
        vec!["list"],
        vec!["stats", "--json"],
        vec!["unbind", "192.0.2.50"],
        vec!["bind", "192.0.2.50", "198.51.100.2"],
    ] {
        let mut args = cmd.clone();
        args.extend(["--socket", "/nonexistent/homeward.sock"]);
        fails_with_one_line(
            &homeward(&args),
            "homeward is not running (no control socket at /nonexistent/homeward.sock)",
        );
    }
}

#[test]
fn bad_arguments_are_one_line() {
    fails_with_one_line(
        &homeward(&["bind", "192.0.2.500", "198.51.100.2"]),
        "invalid value '192.0.2.500'",
    );
    fails_with_one_line(
        &homeward(&["bind", "192.0.2.50", "198.51.100.2", "--vm-mac", "02:00"]),
        "bad MAC address",
    );
    fails_with_one_line(
        &homeward(&["run", "--lan", "x"]),
        "missing setting: --address",
    );
    fails_with_one_line(
        &homeward(&["run", "--lan", "x", "--address", "224.0.0.1"]),
        "cannot be a home agent address",
    );
}

#[test]
fn config_files_reject_unknown_keys() {
    let dir = std::env::temp_dir().join(format!("homeward-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "lan = \"lan0\"\naddress = \"198.51.100.1\"\nqueus = 2\n",
    )
    .unwrap();
    let out = homeward(&["run", "--config", bad.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    fails_with_one_line(&out, "unknown field `queus`");
}

#[test]
fn unknown_interfaces_and_missing_privileges_are_named() {
    require_root();
    let ns = Netns::new("cli");
    let sock = ns.dir().join("c.sock");
    let sock = sock.to_str().unwrap();
    let bin = homeward_bin();
    let bin = bin.to_str().unwrap();
    let out = ns.exec(&[
        bin,
        "run",
        "--lan",
        "nosuch0",
        "--address",
        "198.51.100.1",
        "--socket",
        sock,
    ]);
    fails_with_one_line(&out, "no such interface: nosuch0");
    // An unprivileged user may neither run the daemon nor use its socket.
    let out = ns.exec(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        bin,
        "run",
        "--lan",
        "lo",
        "--address",
        "198.51.100.1",
        "--socket",
        sock,
    ]);
    fails_with_one_line(&out, "needs root");
}

#[test]
fn the_control_socket_is_root_only() {
    require_root();
    let lab = Topology::home_agent_lab("perm");
    let mut child = lab.spawn_homeward(&[]);
    assert!(child.wait_for_output("homeward is running", std::time::Duration::from_secs(20)));
    let sock = lab.control_socket();
    let mode = std::fs::metadata(&sock).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.unwrap(), 0o600);
    let bin = homeward_bin();
    let out = lab.ha.exec(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        bin.to_str().unwrap(),
        "list",
        "--socket",
        sock.to_str().unwrap(),
    ]);
    fails_with_one_line(&out, "permission denied");
    // A second daemon on the same socket is refused.
    let out = lab.homeward_cli(&[
        "run",
        "--lan",
        "lan0",
        "--address",
        "198.51.100.1",
        "--socket",
        sock.to_str().unwrap(),
    ]);
    fails_with_one_line(&out, "already running");
    assert!(child
        .stop_with("INT", std::time::Duration::from_secs(10))
        .success());
}

#[test]
fn a_damaged_state_store_stops_the_start_with_what_to_do() {
    require_root();
    let ns = Netns::new("clis");
    let state = ns.dir().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let db = state.join("homeward.db");
    std::fs::write(&db, b"this is not what homeward wrote\n".repeat(200)).unwrap();
    let sock = ns.dir().join("c.sock");
    let bin = homeward_bin();
    let out = ns.exec(&[
        bin.to_str().unwrap(),
        "run",
        "--lan",
        "lo",
        "--address",
        "198.51.100.1",
        "--socket",
        sock.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    fails_with_one_line(&out, "is damaged");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(db.to_str().unwrap()) && err.contains("move it aside"),
        "{err}"
    );
    // Never emptied: the file is as it was.
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"this is not what homeward wrote\n".repeat(200)
    );
}
