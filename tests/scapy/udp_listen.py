#!/usr/bin/python3
"""Receive UDP datagrams and print each as a JSON line as it arrives.

Usage: /usr/bin/python3 udp_listen.py ADDR PORT
  ADDR "" for any. Prints {"listening": PORT} once bound, then one
  {"src": ADDR, "sport": N, "len": N, "payload_hex": HEX, "time": T} per
  datagram, flushed at once. Runs until killed.
"""

import json
import socket
import sys
import time


def line(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        sys.exit(2)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((sys.argv[1], int(sys.argv[2])))
    line({"listening": sock.getsockname()[1]})
    while True:
        data, (src, sport) = sock.recvfrom(65535)
        line({"src": src, "sport": sport, "len": len(data), "payload_hex": data.hex(), "time": time.time()})


if __name__ == "__main__":
    main()
