#!/usr/bin/python3
"""List the ARP packets of a pcap file.

Usage: /usr/bin/python3 arp.py PCAP

Prints one JSON object {"packets": [...]}, one entry per ARP packet in capture
order: index (in the pcap), time (pcap timestamp, float seconds), eth_src,
eth_dst, vlan (802.1Q VLAN id or null), op (1 request, 2 reply), hwsrc, psrc,
hwdst, pdst.
"""

import sys

from common import emit, load, mac, usage_exit
from scapy.all import ARP, Dot1Q, Ether


def main():
    if len(sys.argv) != 2:
        usage_exit("arp.py")
    out = []
    for index, pkt in enumerate(load(sys.argv[1])):
        if ARP not in pkt:
            continue
        arp = pkt[ARP]
        eth = pkt[Ether] if Ether in pkt else None
        out.append({
            "index": index,
            "time": float(pkt.time),
            "eth_src": mac(eth.src) if eth is not None else None,
            "eth_dst": mac(eth.dst) if eth is not None else None,
            "vlan": int(pkt[Dot1Q].vlan) if Dot1Q in pkt else None,
            "op": int(arp.op),
            "hwsrc": mac(arp.hwsrc),
            "psrc": arp.psrc,
            "hwdst": mac(arp.hwdst),
            "pdst": arp.pdst,
        })
    emit({"packets": out})


if __name__ == "__main__":
    main()
