#!/usr/bin/python3
"""Decode the IPv4 packets of a pcap file that are not IP-in-IP.

Usage: /usr/bin/python3 ipv4.py PCAP

Prints one JSON list: one entry per IPv4 packet (protocol other than 4), in
capture order, as ipip.py describes an inner header (transport ports,
checksum verdict and payload included), with its time.
"""

import sys

from common import IP, emit, ipv4_info, load, usage_exit


def main():
    if len(sys.argv) != 2:
        usage_exit("ipv4.py")
    emit(
        [
            ipv4_info(pkt[IP], time=float(pkt.time))
            for pkt in load(sys.argv[1])
            if IP in pkt and pkt[IP].proto != 4
        ]
    )


if __name__ == "__main__":
    main()
