#!/usr/bin/python3
"""Send UDP datagrams with the kernel's socket (no scapy), DF on or off.

Usage: /usr/bin/python3 udp_send.py DST DPORT SRC SPORT DF COUNT INTERVAL_MS PAYLOAD_HEX
  SRC "" (any) or an address to bind; SPORT 0 for any; DF 1 sets
  IP_PMTUDISC_DO (DF set, never fragmented locally: EMSGSIZE above the path
  MTU), 0 sets IP_PMTUDISC_DONT (no DF, the kernel fragments).

Prints one JSON object: sport (the bound source port), results (one per
datagram: {"sent": bytes} or {"error": "ENAME"}), path_mtu (IP_MTU of the
connected socket after the last send, or null).
"""

import errno
import json
import socket
import sys
import time

IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IP_PMTUDISC_DO = 2
IP_MTU = 14


def main():
    if len(sys.argv) != 9:
        sys.stderr.write(__doc__)
        sys.exit(2)
    dst, dport, src, sport, df, count, interval_ms, payload_hex = sys.argv[1:]
    payload = bytes.fromhex(payload_hex)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mode = IP_PMTUDISC_DO if df == "1" else IP_PMTUDISC_DONT
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, mode)
    sock.bind((src, int(sport)))
    sock.connect((dst, int(dport)))
    results = []
    for i in range(int(count)):
        if i:
            time.sleep(int(interval_ms) / 1000.0)
        try:
            results.append({"sent": sock.send(payload)})
        except OSError as err:
            results.append({"error": errno.errorcode.get(err.errno, str(err.errno))})
    try:
        mtu = sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
    except OSError:
        mtu = None
    json.dump({"sport": sock.getsockname()[1], "results": results, "path_mtu": mtu}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
