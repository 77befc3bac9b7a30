"""A stand-in for QEMU's QMP socket (for `homeward agent` without a VM):
serves every connection the greeting, answers `qmp_capabilities` and
`query-status` (running), then keeps the session open, answering any
further command with an empty return, until killed.

Usage: fake_qmp.py PATH"""

import json
import os
import socket
import sys
import threading

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 10}, "package": ""},
                    "capabilities": ["oob"]}}


def session(conn):
    f = conn.makefile("rwb", buffering=0)
    f.write((json.dumps(GREETING) + "\n").encode())
    for line in f:
        try:
            cmd = json.loads(line)
        except ValueError:
            continue
        ret = {"status": "running", "running": True} if cmd.get("execute") == "query-status" else {}
        f.write((json.dumps({"return": ret, "id": cmd.get("id")}) + "\n").encode())


def main():
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    print("listening", flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=session, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
