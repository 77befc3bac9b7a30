//! `homeward capture` end to end: a real `homeward run` in the lab, the
//! client sending UDP to a bound VM, `homeward capture -w FILE` writing
//! pcapng that tcpdump reads (the frames) and that is parsed here (the
//! verdicts, in each packet's comment: tcpdump does not print comments).
//! Needs root and `cargo build --release -p homeward`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use homeward::common::pcapng::{self, Block, Packet};
use homeward_tests::agent::HomeAgent;
use homeward_tests::{homeward_bin, require_root, NsChild, Topology, UdpSend};

/// Starts `homeward capture ARGS -w FILE` against the lab's daemon and
/// waits until it captures.
#[track_caller]
fn start_capture(lab: &Topology, file: &Path, args: &[&str]) -> NsChild {
    let mut cmd = vec![
        homeward_bin().to_string_lossy().into_owned(),
        "capture".into(),
        "-w".into(),
        file.to_string_lossy().into_owned(),
        "--socket".into(),
        lab.control_socket().to_string_lossy().into_owned(),
    ];
    cmd.extend(args.iter().map(|s| s.to_string()));
    let mut child = lab.ha.spawn(&cmd);
    assert!(
        child.wait_for_output("capturing on", Duration::from_secs(10)),
        "homeward capture did not start: {}",
        child.stderr()
    );
    child
}

/// The blocks of `file`.
fn read_capture(file: &Path) -> Vec<Block> {
    let bytes = std::fs::read(file).expect("the capture file");
    Block::all(&bytes).expect("well-formed pcapng")
}

/// The packets among `blocks`.
fn packets_of(blocks: &[Block]) -> Vec<Packet<'_>> {
    blocks.iter().filter_map(|b| b.packet()).collect()
}

fn comment<'a>(p: &'a Packet<'_>) -> &'a str {
    p.comment.as_deref().unwrap_or_default()
}

/// The IPv4 header of an untagged Ethernet frame: (protocol, src, dst).
fn ipv4(frame: &[u8]) -> Option<(u8, [u8; 4], [u8; 4])> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..34)?;
    Some((
        ip[9],
        ip[12..16].try_into().ok()?,
        ip[16..20].try_into().ok()?,
    ))
}

#[test]
fn capture_writes_frames_before_and_after_with_their_verdicts() {
    require_root();
    let lab = Topology::home_agent_lab("cap");
    let ha = HomeAgent::start(&lab, &[]);
    let (vm, care_of) = (lab.vm_home.to_string(), lab.care_of.to_string());
    ha.bind(&vm, &care_of, &[]);
    let file = lab.dir().join("capture.pcapng");
    let mut cap = start_capture(&lab, &file, &["--count", "10", "--vm", &vm]);
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    // More than enough datagrams: the capture stops at 10 packets (the
    // client's ARP for the VM, answered by the data path, comes first).
    lab.client.send_udp(
        &UdpSend::new(lab.vm_home, 4000, 32)
            .sport(5000)
            .repeat(20, Duration::from_millis(20)),
    );
    let status = cap.wait_timeout(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "homeward capture: {status:?} {}",
        cap.stderr()
    );
    assert!(
        cap.stdout().contains("10 packets written"),
        "{}",
        cap.stdout()
    );

    // tcpdump reads it: the datagram to the VM, and the same datagram in
    // IPIP from the HA to the care-of address.
    let path = file.to_str().expect("a UTF-8 path");
    let out = lab.ha.exec(&["tcpdump", "-r", path, "-nn", "-v"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("> {vm}.4000: UDP")), "{text}");
    assert!(text.contains("proto IPIP (4)"), "{text}");
    assert!(
        text.contains(&format!("{} > {care_of}: ", lab.ha_wan.addr)),
        "{text}"
    );

    // The verdicts, and the frames under them.
    let blocks = read_capture(&file);
    let packets = packets_of(&blocks);
    assert_eq!(blocks[0].kind, pcapng::SHB);
    assert_eq!(
        blocks.iter().filter(|b| b.kind == pcapng::IDB).count(),
        2,
        "one interface per port"
    );
    assert_eq!(packets.len(), 10);
    let vm_octets = lab.vm_home.octets();
    let before = packets
        .iter()
        .position(|p| comment(p) == "in lan q0: tx wan (encapsulated)")
        .unwrap_or_else(|| panic!("no 'in' record: {:?}", comments(&packets)));
    let after = &packets[before + 1];
    let before = &packets[before];
    assert_eq!(comment(after), "out wan q0: tx wan (encapsulated)");
    assert_eq!(
        (before.interface, after.interface),
        (0, 1),
        "LAN then WAN interface"
    );
    let (proto, _, dst) = ipv4(before.data).expect("IPv4 in");
    assert_eq!((proto, dst), (17, vm_octets));
    let (proto, src, dst) = ipv4(after.data).expect("IPv4 out");
    assert_eq!(
        (proto, src, dst),
        (4, lab.ha_wan.addr.octets(), lab.care_of.octets())
    );
    assert_eq!(
        after.orig_len,
        before.orig_len + 20,
        "the outer header's 20 bytes"
    );
    assert!(packets
        .iter()
        .all(|p| p.ts_ns >= started.as_nanos() as u64 - 1_000_000_000));
    // The end: the statistics, nothing lost.
    let dropped: Vec<u64> = blocks.iter().filter_map(|b| b.dropped()).collect();
    assert_eq!(dropped, vec![0]);

    // The workers are off again: another capture can start, and the
    // daemon stops cleanly.
    let file2 = lab.dir().join("again.pcapng");
    let mut again = start_capture(&lab, &file2, &[]);
    lab.client
        .send_udp(&UdpSend::new(lab.vm_home, 4000, 32).repeat(3, Duration::from_millis(20)));
    std::thread::sleep(Duration::from_millis(300));
    // Ctrl-C: the file ends with the statistics.
    let status = again.stop_with("INT", Duration::from_secs(10));
    assert!(status.success(), "{}", again.stderr());
    let blocks = read_capture(&file2);
    let packets = packets_of(&blocks);
    assert!(
        again
            .stdout()
            .contains(&format!("{} packets written", packets.len())),
        "{}",
        again.stdout()
    );
    let encapsulated = packets
        .iter()
        .filter(|p| comment(p).ends_with("tx wan (encapsulated)"))
        .count();
    assert_eq!(encapsulated, 6, "{:?}", comments(&packets));
    assert!(blocks.last().is_some_and(|b| b.kind == pcapng::ISB));
    assert_eq!(ha.counter("counters", "announcements"), 5);
    let t = ha.stop();
    assert!(t.success, "{}", t.stderr);
    assert!(t.unaccounted().iter().all(|u| *u == 0), "{}", t.stderr);
}

fn comments<'a>(packets: &'a [Packet<'_>]) -> Vec<&'a str> {
    packets.iter().map(comment).collect()
}

#[test]
fn capture_of_a_daemon_that_is_not_running_fails_with_one_line() {
    require_root();
    let lab = Topology::home_agent_lab("capn");
    let file = lab.dir().join("none.pcapng");
    let socket = lab.control_socket();
    let out = lab.homeward_cli(&[
        "capture",
        "-w",
        file.to_str().expect("a UTF-8 path"),
        "--socket",
        socket.to_str().expect("a UTF-8 path"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not running"), "{err}");
}
