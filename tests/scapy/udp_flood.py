#!/usr/bin/python3
"""Send UDP datagrams as fast as a kernel socket takes them, for a while.

Usage: /usr/bin/python3 udp_flood.py DST DPORT PAYLOAD_LEN SECONDS

Prints one JSON object: sent (datagrams the kernel accepted), errors
(sends that failed, e.g. ENOBUFS), seconds (how long it sent).
"""

import json
import socket
import sys
import time


def main():
    if len(sys.argv) != 5:
        sys.stderr.write(__doc__)
        sys.exit(2)
    dst, dport, length, seconds = sys.argv[1:]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((dst, int(dport)))
    payload = bytes(int(length))
    send = sock.send
    sent = errors = 0
    start = time.monotonic()
    deadline = start + float(seconds)
    while True:
        # Check the clock once per 256 sends: reading it is costly here.
        for _ in range(256):
            try:
                send(payload)
                sent += 1
            except OSError:
                errors += 1
        if time.monotonic() >= deadline:
            break
    json.dump({"sent": sent, "errors": errors, "seconds": time.monotonic() - start}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
