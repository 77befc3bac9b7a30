//! Baseline (d), the C AF_XDP forwarder (benches/c/xsk_fwd.c): its packet
//! function, run on fixture frames through `xsk_fwd --encap-hex` (no
//! sockets, no root), produces the same bytes as homeward's pipeline, so
//! the comparison is like for like; and it drops (and names why) what it
//! cannot forward.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use homeward_benches::frames::{self, checksum, Ipv4Spec, ETH_LEN, IPV4_LEN};

mod common;
use common::*;

fn udp(len: usize, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    frames::udp_frame(
        LAN_MAC,
        GEN_MAC,
        &Ipv4Spec {
            src: GEN,
            dst,
            protocol: 17,
            ttl,
            df: true,
            ident: 0,
        },
        10000,
        9,
        len,
    )
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `xsk_fwd --encap-hex --mtu MTU`: one output line per input frame.
fn xsk_fwd(mtu: u32, frames: &[Vec<u8>]) -> Vec<String> {
    let bin = env!("HWB_XSK_FWD");
    assert!(
        std::fs::metadata(bin).is_ok_and(|m| m.len() > 0),
        "{bin} was not built (apt-get install libxdp-dev libbpf-dev; see the build warnings)"
    );
    let mut child = Command::new(bin)
        .args(["--encap-hex", "--ha", &HA.to_string()])
        .args(["--src-mac", &mac(WAN_MAC), "--dst-mac", &mac(SINK_MAC)])
        .arg("--bind")
        .arg(format!("{VM}={CARE_OF}"))
        .args(["--mtu", &mtu.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::new();
    for f in frames {
        for b in f {
            input.push_str(&format!("{b:02x}"));
        }
        input.push('\n');
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn c_forwarder_matches_homeward_byte_for_byte() {
    let lens = [60, 508, 1496];
    let frames: Vec<Vec<u8>> = lens.iter().map(|&l| udp(l, VM, 64)).collect();
    let out = xsk_fwd(1600, &frames);
    assert_eq!(out.len(), frames.len());
    for ((frame, line), len) in frames.iter().zip(&out).zip(lens) {
        let ours = unhex(line);
        let theirs = homeward_encap(frame);
        assert_eq!(ours.len(), len + IPV4_LEN, "{len}");
        assert_eq!(ours.len(), theirs.len(), "{len}");
        // Identical but for the outer Identification and hence its checksum.
        let mask = |f: &[u8]| {
            let mut f = f.to_vec();
            f[ETH_LEN + 4..ETH_LEN + 6].fill(0);
            f[ETH_LEN + 10..ETH_LEN + 12].fill(0);
            f
        };
        assert_eq!(mask(&ours), mask(&theirs), "{len}");
        assert_eq!(checksum(&ours[ETH_LEN..ETH_LEN + IPV4_LEN]), 0, "outer");
        assert_eq!(
            checksum(&ours[ETH_LEN + IPV4_LEN..ETH_LEN + 2 * IPV4_LEN]),
            0,
            "inner"
        );
    }
}

#[test]
fn c_forwarder_drops_and_names_the_reason() {
    let mut arp = udp(60, VM, 64);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut options = udp(60, VM, 64);
    options[ETH_LEN] = 0x46;
    // Tunnel MTU 1500: a 1514-byte frame (1500 bytes of IP) + 20 is too big.
    let out = xsk_fwd(
        1500,
        &[
            udp(60, Ipv4Addr::new(10, 200, 0, 99), 64),
            udp(60, VM, 1),
            udp(1514, VM, 64),
            arp,
            options,
            vec![0u8; 20],
        ],
    );
    assert_eq!(
        out,
        [
            "drop unbound",
            "drop ttl_expired",
            "drop too_big",
            "drop not_ipv4",
            "drop bad_header",
            "drop short"
        ]
    );
}
