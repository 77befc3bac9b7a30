//! `scripts/demo.sh` (second part): the paper's scenario in the namespace
//! lab. A real QEMU VM on hypervisor A serves an HTTP download to a client
//! on its home LAN; it live-migrates to hypervisor B on another network
//! while the client downloads, and comes back. homeward runs as the home
//! agent and as the agent on both hypervisors; only QEMU's QMP events tell
//! it that the VM moved.

use std::time::Duration;

use homeward_tests::homeward_lab::{agent_vm, Homeward};
use homeward_tests::vm::{HELLO_BODY, HELLO_PATH};
use homeward_tests::{
    require_root, MigrateOptions, MigrationLab, Storage, StreamOptions, StreamReport,
};

fn step(text: &str) {
    println!("\n== {text}");
}

fn main() {
    require_root();
    let lab = MigrationLab::new("mdemo");
    step("lab");
    println!(
        "client {} and hypervisor A {} on the home LAN 192.0.2.0/24, gateway = home agent {} / {}",
        lab.client_lan.addr, lab.a_bridge.addr, lab.ha_lan.addr, lab.ha_wan.addr
    );
    println!(
        "a router, then hypervisor B {} on 203.0.113.0/24; the VM's home address {}",
        lab.b_uplink.addr,
        lab.vm_addr()
    );

    step("homeward run (home agent) and homeward agent on A and B");
    let hw = Homeward::start(&lab);
    println!("  running; registration keys: SPI 256, HMAC-SHA256, 192.0.2.0/24");

    step("boot the VM on A (QEMU, TCG)");
    let mut vm = lab.boot_vm_on_a(Storage::None);
    println!("  guest ready in {:.1} s", vm.boot_time().as_secs_f64());
    let direct = lab.http_get(&lab.client, HELLO_PATH);
    println!("  client GET {HELLO_PATH}: {:?}", direct.as_deref());

    step("client downloads a verified stream; after 3 s the VM live-migrates A -> B");
    let mut stream = lab.start_stream(&StreamOptions {
        seconds: 10.0,
        ..StreamOptions::default()
    });
    std::thread::sleep(Duration::from_secs(3));
    let to_b = vm.migrate_to(&lab.hyp_b, &lab.tap, &MigrateOptions::default());
    println!("  QEMU: {}", to_b.summary());
    hw.wait_binding(&lab, Some("203.0.113.2"), Duration::from_secs(10));
    println!(
        "  HA binding: {}",
        hw.binding(&lab).map(|b| b.to_string()).unwrap_or_default()
    );
    let b = agent_vm(&hw, &lab.hyp_b, "agent-b");
    println!(
        "  agent B: VM resumed -> registration accepted in {} ms (round trip {} ms)",
        b["resume_to_registered_ms"], b["round_trip_ms"]
    );
    let report = StreamReport::wait(&mut stream, Duration::from_secs(60));
    println!(
        "  download: {} bytes in {:.1} s, every byte verified: {}, reset: {}",
        report.bytes, report.duration_s, report.verified, report.reset
    );
    println!(
        "  client-observed outage {:.0} ms; QEMU downtime {} ms",
        report.max_gap_ms, to_b.downtime_ms
    );
    let stats = hw.json(&lab.ha, "ha", &["stats"]);
    println!(
        "  HA: {} packets into the tunnel, {} reverse-tunnelled packets delivered",
        stats["counters"]["encapsulated"], stats["counters"]["decapsulated"]
    );

    step("the VM migrates back to A");
    let to_a = vm.migrate_to(&lab.hyp_a, &lab.tap, &MigrateOptions::default());
    println!("  QEMU: {}", to_a.summary());
    hw.wait_binding(&lab, None, Duration::from_secs(10));
    println!("  agent A deregistered the VM: the HA has no binding and gave the address back");
    let home = lab.http_get(&lab.client, HELLO_PATH);
    println!("  client GET {HELLO_PATH} directly: {:?}", home.as_deref());

    let ok = report.is_clean()
        && direct.as_deref() == Some(HELLO_BODY)
        && home.as_deref() == Some(HELLO_BODY);
    drop(vm);
    hw.stop();
    step(if ok {
        "done: the session survived the migration"
    } else {
        "FAILED"
    });
    if !ok {
        std::process::exit(1);
    }
}
