#!/usr/bin/python3
"""Write one TCP super-frame into a tap, as a guest with TSO hands it to QEMU
and QEMU to the tap: a virtio_net_hdr asking for segmentation (GSO TCPv4)
and checksum completion, then the whole frame (no scapy).

Usage: /usr/bin/python3 tap_tso.py TAP DST_MAC SRC_MAC SRC DST SPORT DPORT SEQ LEN GSO_SIZE
  TAP an existing tap made with vnet_hdr; LEN bytes of TCP data (byte i is
  i % 251); GSO_SIZE the guest's segment size.

Prints one JSON object: {"written": bytes written, frame and header}.
"""

import fcntl
import json
import os
import socket
import struct
import sys

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1


def fold(acc):
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc


def csum(data, acc=0):
    if len(data) % 2:
        data += b"\0"
    for (word,) in struct.iter_unpack("!H", data):
        acc += word
    return acc


def main():
    if len(sys.argv) != 11:
        sys.stderr.write(__doc__)
        sys.exit(2)
    tap, dst_mac, src_mac, src, dst, sport, dport, seq, length, gso_size = sys.argv[1:]
    length, gso_size = int(length), int(gso_size)
    data = bytes(i % 251 for i in range(length))
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    total = 20 + 20 + length
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0x4242, 0x4000, 64, 6, 0, saddr, daddr)
    ip = ip[:10] + struct.pack("!H", 0xFFFF - fold(csum(ip))) + ip[12:]
    # Partial checksum, as Linux leaves it for the device: the pseudo-header
    # sum, not complemented.
    pseudo = fold(csum(saddr + daddr + struct.pack("!BBH", 0, 6, 20 + length)))
    tcp = struct.pack(
        "!HHIIBBHHH", int(sport), int(dport), int(seq), 1, 5 << 4, 0x18, 65535, pseudo, 0
    )
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    frame = eth + b"\x08\x00" + ip + tcp + data
    vnet = struct.pack(
        "<BBHHHH",
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_GSO_TCPV4,
        14 + 20 + 20,
        gso_size,
        14 + 20,
        16,
    )
    fd = os.open("/dev/net/tun", os.O_RDWR)
    ifr = struct.pack("16sH", tap.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    fcntl.ioctl(fd, TUNSETIFF, ifr)
    fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
    written = os.write(fd, vnet + frame)
    os.close(fd)
    print(json.dumps({"written": written, "frame": len(frame)}))


if __name__ == "__main__":
    main()
