#!/usr/bin/python3
"""Decode the IPv4-in-IPv4 (RFC 2003, IP protocol 4) packets of a pcap file.

Usage: /usr/bin/python3 ipip.py PCAP

Prints one JSON object:
  packets:           one entry per protocol-4 packet on the wire, in capture
                     order: index (in the pcap), time, eth_src/eth_dst, outer
                     (the outer header) and inner (the inner header with its
                     transport ports and payload, when the outer packet is not
                     itself a fragment)
  outer_reassembled: outer fragments put back together (scapy defragment),
                     each with outer and inner like a packet
  inner_datagrams:   every inner datagram after reassembling inner fragments
                     (scapy defragment): complete datagrams, and, marked
                     complete=false, fragments that could not be reassembled
Header checksums are verified by deleting them and letting scapy rebuild;
headers that scapy itself rebuilt (reassembled datagrams) report null.
"""

import sys
from collections import Counter

from common import IP, Ether, defragment_list, emit, ip_payload, ipv4_info, load, mac, usage_exit


def frag_key(ip):
    return (ip.id, ip.src, ip.dst, ip.proto)


def is_fragment(ip):
    return ip.frag != 0 or bool(ip.flags.MF)


def standalone(ip, time):
    """A copy of one IP layer as a packet of its own, stamped with a time."""
    copy = IP(bytes(ip))
    copy.time = time
    return copy


def inner_of(outer, time):
    data = ip_payload(outer)
    if len(data) < 20:
        return None
    return standalone(IP(data), time)


def main():
    if len(sys.argv) != 2:
        usage_exit("ipip.py")
    packets = []
    outer_frags = []
    inners = []
    for index, pkt in enumerate(load(sys.argv[1])):
        if IP not in pkt or pkt[IP].proto != 4:
            continue
        outer = pkt[IP]
        time = float(pkt.time)
        eth = pkt[Ether] if Ether in pkt else None
        entry = {
            "index": index,
            "time": time,
            "eth_src": mac(eth.src) if eth is not None else None,
            "eth_dst": mac(eth.dst) if eth is not None else None,
            "outer": ipv4_info(outer, with_payload=False),
            "inner": None,
        }
        if is_fragment(outer):
            outer_frags.append(standalone(outer, time))
        else:
            inner = inner_of(outer, time)
            if inner is not None:
                entry["inner"] = ipv4_info(inner)
                inners.append(inner)
        packets.append(entry)

    outer_reassembled = []
    counts = Counter(frag_key(ip) for ip in outer_frags)
    for outer in defragment_list(outer_frags):
        if is_fragment(outer):
            continue  # a fragment is missing: no inner datagram to show
        time = float(outer.time)
        info = ipv4_info(outer, with_payload=False)
        info["checksum_valid"] = None
        entry = {"time": time, "fragments": counts[frag_key(outer)], "outer": info, "inner": None}
        inner = inner_of(outer, time)
        if inner is not None:
            entry["inner"] = ipv4_info(inner)
            inners.append(inner)
        outer_reassembled.append(entry)

    inner_datagrams = []
    counts = Counter(frag_key(ip) for ip in inners if is_fragment(ip))
    for inner in defragment_list(inners):
        fragmented = frag_key(inner) in counts
        complete = not is_fragment(inner)
        info = ipv4_info(inner, time=float(inner.time), datagram_complete=complete)
        info["complete"] = complete
        info["fragments"] = counts[frag_key(inner)] if fragmented and complete else 1
        if fragmented and complete:
            info["checksum_valid"] = None  # header rebuilt by scapy
        inner_datagrams.append(info)

    emit({"packets": packets, "outer_reassembled": outer_reassembled, "inner_datagrams": inner_datagrams})


if __name__ == "__main__":
    main()
