#!/usr/bin/python3
"""Open a TCP connection with the kernel's socket and send a payload.

Usage: /usr/bin/python3 tcp_connect.py DST DPORT SPORT TIMEOUT_MS PAYLOAD_HEX
  SPORT 0 for any. Nobody needs to listen: the SYN (and its retransmissions
  until the timeout) is what a tunnel test looks for.

Prints one JSON object: sport, connected (bool), sent (bytes written after
connecting), error (errno name, "timeout", or null).
"""

import errno
import json
import socket
import sys


def main():
    if len(sys.argv) != 6:
        sys.stderr.write(__doc__)
        sys.exit(2)
    dst, dport, sport, timeout_ms, payload_hex = sys.argv[1:]
    payload = bytes.fromhex(payload_hex)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", int(sport)))
    sock.settimeout(int(timeout_ms) / 1000.0)
    out = {"sport": sock.getsockname()[1], "connected": False, "sent": 0, "error": None}
    try:
        sock.connect((dst, int(dport)))
        out["connected"] = True
        if payload:
            sock.sendall(payload)
            out["sent"] = len(payload)
    except socket.timeout:
        out["error"] = "timeout"
    except OSError as err:
        out["error"] = errno.errorcode.get(err.errno, str(err.errno))
    finally:
        sock.close()
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
