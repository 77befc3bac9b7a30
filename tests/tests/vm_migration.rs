//! A real QEMU guest in the namespace lab, and live migration between two
//! hypervisor namespaces, without homeward: the lab other tests put the
//! home agent and the agents on. Needs root, QEMU 10 and the guest kernel
//! from scripts/install-deps.sh.
//!
//! QEMU runs under TCG and the machine has 2 cores: the tests run one at a
//! time (a lock) so one guest's emulation does not slow another's
//! migration.

use std::sync::Mutex;
use std::time::Duration;

use homeward_tests::migration_lab::start_stream_in;
use homeward_tests::qemu::images_identical;
use homeward_tests::vm::{HELLO_BODY, HELLO_PATH};
use homeward_tests::{MigrateOptions, MigrationLab, Storage, StreamOptions, StreamReport, Vm};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An address on B's tap in the home subnet, so B's namespace can talk to
/// the VM on its tap without any home agent.
const B_PROBE_ADDR: &str = "192.0.2.222/24";

#[test]
fn vm_boots_and_client_downloads_directly() {
    let _one = serial();
    let lab = MigrationLab::new("vmboot");
    let mut vm = lab.boot_vm_on_a(Storage::None);
    eprintln!(
        "vm_boot: guest ready {:.2} s after QEMU start",
        vm.boot_time().as_secs_f64()
    );
    assert!(
        vm.qemu().serial().contains("gateway 192.0.2.1 answered"),
        "the guest's ping of the gateway failed:\n{}",
        vm.qemu().serial_tail(20)
    );
    // The gateway learnt the VM's MAC from that ping.
    let neigh = lab.ha.neighbor(lab.vm_addr());
    assert!(
        neigh.is_some(),
        "HA has no neighbour entry for the VM: {:?}",
        lab.ha.neighbors(None)
    );

    assert_eq!(
        lab.http_get(&lab.client, HELLO_PATH).as_deref(),
        Some(HELLO_BODY)
    );
    let opts = StreamOptions {
        seconds: 4.0,
        ..StreamOptions::default()
    };
    let mut child = lab.start_stream(&opts);
    let report = StreamReport::wait(&mut child, Duration::from_secs(30));
    eprintln!("vm_boot: direct download {report:?}");
    assert!(report.is_clean(), "{report:?}");
    assert!(report.bytes > 50_000, "too little data: {report:?}");
    assert!(
        report.max_gap_ms < 1000.0,
        "a stall without any migration: {report:?}"
    );
}

#[track_caller]
fn vm_answers_on_b(lab: &MigrationLab) {
    // Without a home agent nothing routes the home address to B, so B
    // reaches the VM over its tap with a temporary address.
    lab.hyp_b
        .ip(&["addr", "add", B_PROBE_ADDR, "dev", &lab.tap]);
    let ok = lab.hyp_b.ping_ok(lab.vm_addr(), 3);
    let body = lab.http_get(&lab.hyp_b, HELLO_PATH);
    let mut child = start_stream_in(
        &lab.hyp_b,
        lab.vm_addr(),
        &StreamOptions {
            seconds: 2.0,
            ..StreamOptions::default()
        },
    );
    let report = StreamReport::wait(&mut child, Duration::from_secs(30));
    lab.hyp_b
        .ip(&["addr", "del", B_PROBE_ADDR, "dev", &lab.tap]);
    assert!(ok, "the VM does not answer ping on B's tap");
    assert_eq!(body.as_deref(), Some(HELLO_BODY));
    assert!(report.is_clean(), "download on B: {report:?}");
}

#[test]
fn plain_live_migration_a_to_b_and_back() {
    let _one = serial();
    let lab = MigrationLab::new("vmmig");
    let mut vm = lab.boot_vm_on_a(Storage::None);
    eprintln!("plain: boot {:.2} s", vm.boot_time().as_secs_f64());
    assert_eq!(
        lab.http_get(&lab.client, HELLO_PATH).as_deref(),
        Some(HELLO_BODY)
    );

    let opts = MigrateOptions::default();
    let to_b = vm.migrate_to(&lab.hyp_b, &lab.tap, &opts);
    eprintln!("plain A->B: {}", to_b.summary());
    assert_eq!(to_b.status, "completed");
    assert_eq!(vm.host(), lab.hyp_b.name());
    assert_eq!(vm.qemu().status(), "running");
    vm_answers_on_b(&lab);
    // B's QEMU announced the guest (RARP) from B's tap; the home LAN did
    // not see it, and without an HA binding the client cannot reach it.
    assert!(lab.http_get(&lab.client, HELLO_PATH).is_none());

    let to_a = vm.migrate_to(&lab.hyp_a, &lab.tap, &opts);
    eprintln!("plain B->A: {}", to_a.summary());
    assert_eq!(to_a.status, "completed");
    assert_eq!(vm.host(), lab.hyp_a.name());
    // Home again: the client reaches it directly, and a download is clean.
    assert_eq!(
        lab.http_get(&lab.client, HELLO_PATH).as_deref(),
        Some(HELLO_BODY)
    );
    let mut child = lab.start_stream(&StreamOptions {
        seconds: 2.0,
        ..StreamOptions::default()
    });
    let report = StreamReport::wait(&mut child, Duration::from_secs(30));
    assert!(report.is_clean(), "{report:?}");
    for r in [&to_b, &to_a] {
        assert!(r.guest_paused.is_some(), "no STOP event on the source");
        assert!(r.downtime_ms < 5_000, "{}", r.summary());
    }
}

/// A download from the client while the VM migrates A -> A' (a second QEMU
/// on the same hypervisor, on A's second tap): the client-observed outage against
/// QEMU's downtime, with no home agent needed.
#[test]
fn download_spans_a_local_migration() {
    let _one = serial();
    let lab = MigrationLab::new("vmloc");
    let mut vm = lab.boot_vm_on_a(Storage::None);
    let mut child = lab.start_stream(&StreamOptions {
        seconds: 10.0,
        ..StreamOptions::default()
    });
    std::thread::sleep(Duration::from_secs(3));
    let r = vm.migrate_to(&lab.hyp_a, &lab.tap_alt, &MigrateOptions::default());
    let report = StreamReport::wait(&mut child, Duration::from_secs(60));
    eprintln!("local A->A: {}", r.summary());
    eprintln!(
        "local A->A: client max gap {:.1} ms, {} bytes, clean {}",
        report.max_gap_ms,
        report.bytes,
        report.is_clean()
    );
    assert!(report.is_clean(), "{report:?}");
    // The guest sent nothing while it was stopped, so the client's largest
    // gap covers the pause; TCP's retransmission timer may add to it.
    let paused_ms = r.guest_paused.expect("STOP event").as_secs_f64() * 1e3;
    assert!(
        report.max_gap_ms < 10_000.0,
        "outage far beyond the guest's pause of {paused_ms:.1} ms: {report:?}"
    );
}

fn migrate_with_storage(tag: &str, storage_of: impl Fn(&MigrationLab) -> Storage) {
    let _one = serial();
    let lab = MigrationLab::new(tag);
    let storage = storage_of(&lab);
    let kind = storage.kind();
    let mut vm: Vm = lab.boot_vm_on_a(storage.clone());
    assert!(
        vm.qemu().serial().contains("writing to /dev/vda"),
        "the guest has no disk:\n{}",
        vm.qemu().serial_tail(20)
    );
    // Let the guest write to its disk for a moment.
    std::thread::sleep(Duration::from_secs(1));
    let opts = MigrateOptions::default();
    let to_b = vm.migrate_to(&lab.hyp_b, &lab.tap, &opts);
    eprintln!("{kind} A->B: {}", to_b.summary());
    assert_eq!(to_b.status, "completed");
    vm_answers_on_b(&lab);
    let to_a = vm.migrate_to(&lab.hyp_a, &lab.tap, &opts);
    eprintln!("{kind} B->A: {}", to_a.summary());
    assert_eq!(to_a.status, "completed");
    if let Storage::Mirror { .. } = storage {
        assert_eq!(to_b.disks_identical, Some(true), "{}", to_b.summary());
        assert_eq!(to_a.disks_identical, Some(true), "{}", to_a.summary());
    }
    // The guest keeps writing after both moves.
    let serial = vm.qemu().serial();
    assert!(
        !serial.contains("I/O error"),
        "disk errors in the guest:\n{}",
        vm.qemu().serial_tail(20)
    );
    assert_eq!(
        lab.http_get(&lab.client, HELLO_PATH).as_deref(),
        Some(HELLO_BODY)
    );
}

#[test]
fn shared_storage_migration() {
    migrate_with_storage("vmshr", |lab| lab.shared_storage(64));
}

#[test]
fn nbd_mirror_storage_migration() {
    migrate_with_storage("vmnbd", |_| Storage::Mirror { size_mb: 64 });
}

#[test]
fn qemu_img_compare_sees_differences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.raw");
    let b = dir.path().join("b.raw");
    std::fs::write(&a, vec![0u8; 65536]).expect("write a");
    std::fs::write(&b, vec![0u8; 65536]).expect("write b");
    assert!(images_identical(&a, &b));
    let mut data = vec![0u8; 65536];
    data[4096] = 1;
    std::fs::write(&b, data).expect("write b");
    assert!(!images_identical(&a, &b));
}

#[test]
fn vm_lab_is_removed_after_a_panic() {
    let _one = serial();
    let mut names = Vec::new();
    let mut pid = 0;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = MigrationLab::new("vmpanic");
        names = [
            &lab.client,
            &lab.lan,
            &lab.hyp_a,
            &lab.ha,
            &lab.router,
            &lab.hyp_b,
        ]
        .iter()
        .map(|ns| ns.name().to_string())
        .collect();
        let mut vm = lab.boot_vm_on_a(Storage::None);
        pid = vm.qemu().pid();
        assert!(lab.agent_qmp_socket(&lab.hyp_a).exists());
        panic!("deliberate");
    }));
    assert!(result.is_err());
    assert!(pid != 0);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} survived the panic"
    );
    for name in &names {
        assert!(!homeward_tests::netns_exists(name), "{name} survived");
    }
}
