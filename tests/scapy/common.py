"""Shared helpers for the pcap decoders: run with /usr/bin/python3 (Debian's scapy)."""

import json
import sys

from scapy.all import ICMP, IP, TCP, UDP, Ether, PacketList, defragment, rdpcap  # noqa: F401


def load(path):
    """Every packet of a pcap file (an empty file, as tcpdump leaves when
    stopped before the first packet on some versions, is no packets)."""
    try:
        return list(rdpcap(path))
    except EOFError:
        return []


def mac(value):
    return None if value is None else str(value).lower()


def ip_checksum_valid(ip):
    """Recompute the IPv4 header checksum with scapy (delete it, rebuild)
    and compare with the one on the wire."""
    rebuilt = ip.copy()
    rebuilt.remove_payload()
    del rebuilt.chksum
    rebuilt = IP(bytes(rebuilt))
    return rebuilt.chksum == ip.chksum


def ip_payload(ip):
    """The bytes of the IP payload that this packet holds (trailing
    link-layer padding removed, truncated captures as they are)."""
    data = bytes(ip.payload)
    body = ip.len - ip.ihl * 4 if ip.len is not None and ip.ihl is not None else len(data)
    return data[: max(body, 0)]


def l4_info(ip, datagram_complete):
    """Transport details of an IPv4 packet whose payload starts with the
    transport header (not a non-first fragment). The transport checksum is
    verified only for a complete datagram (not a fragment)."""
    if ip.frag != 0:
        return None
    payload = ip_payload(ip)
    proto = ip.proto
    info = {"kind": {1: "icmp", 6: "tcp", 17: "udp"}.get(proto, "other")}
    if proto == 17 and len(payload) >= 8:
        udp = UDP(payload)
        info.update(sport=udp.sport, dport=udp.dport, udp_len=udp.len)
        body = payload[8:]
        if datagram_complete:
            if udp.chksum == 0:
                info["checksum_valid"] = None  # no checksum sent
            else:
                info["checksum_valid"] = _l4_checksum_ok(ip, payload, UDP)
        info["payload_hex"] = body.hex()
    elif proto == 6 and len(payload) >= 20:
        tcp = TCP(payload)
        hdr = tcp.dataofs * 4 if tcp.dataofs else 20
        info.update(sport=tcp.sport, dport=tcp.dport, tcp_flags=str(tcp.flags),
                    tcp_seq=tcp.seq, tcp_ack=tcp.ack)
        # The MSS option, if any (scapy lists options as (name, value)).
        for opt in tcp.options if isinstance(tcp.options, list) else []:
            if isinstance(opt, tuple) and len(opt) == 2 and opt[0] == "MSS":
                info["tcp_mss"] = opt[1]
                break
        if datagram_complete:
            info["checksum_valid"] = _l4_checksum_ok(ip, payload, TCP)
        info["payload_hex"] = payload[hdr:].hex()
    elif proto == 1 and len(payload) >= 8:
        icmp = ICMP(payload)
        info.update(icmp_type=icmp.type, icmp_code=icmp.code)
        if icmp.type in (0, 8):
            info.update(icmp_id=icmp.id, icmp_seq=icmp.seq)
        if datagram_complete:
            info["checksum_valid"] = _l4_checksum_ok(ip, payload, ICMP)
        info["payload_hex"] = payload[8:].hex()
    else:
        info["payload_hex"] = payload.hex()
    return info


def _l4_checksum_ok(ip, payload, layer):
    """Rebuild the datagram with the transport checksum deleted (scapy
    computes it again, with the pseudo-header for UDP and TCP) and compare
    with the checksum on the wire."""
    hdr = ip.copy()
    hdr.remove_payload()
    pkt = IP(bytes(hdr) + payload)
    if layer not in pkt:
        return None
    wire = pkt[layer].chksum
    rebuilt = pkt.copy()
    rebuilt[layer].chksum = None
    return IP(bytes(rebuilt))[layer].chksum == wire


def ipv4_info(ip, time=None, with_payload=True, datagram_complete=None):
    """A JSON-ready description of one IPv4 header (and its transport)."""
    flags = ip.flags
    if datagram_complete is None:
        datagram_complete = ip.frag == 0 and not flags.MF
    info = {
        "src": ip.src,
        "dst": ip.dst,
        "proto": ip.proto,
        "ttl": ip.ttl,
        "tos": ip.tos,
        "df": bool(flags.DF),
        "mf": bool(flags.MF),
        "frag": ip.frag,
        "id": ip.id,
        "len": ip.len,
        "ihl": ip.ihl,
        "checksum_valid": ip_checksum_valid(ip),
    }
    payload = ip_payload(ip)
    info["payload_len"] = len(payload)
    if with_payload:
        info["payload_hex"] = payload.hex()
        info["l4"] = l4_info(ip, datagram_complete)
    if time is not None:
        info["time"] = time
    return info


def emit(obj):
    json.dump(obj, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


def usage_exit(name):
    sys.stderr.write("usage: /usr/bin/python3 %s PCAP\n" % name)
    sys.exit(2)


def defragment_list(ips):
    """scapy's defragment over standalone IP packets, as a list (complete
    datagrams reassembled, the rest passed through, capture order kept)."""
    if not ips:
        return []
    return list(defragment(PacketList(ips)))
