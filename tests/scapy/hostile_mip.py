"""Hostile RFC 5944 Registration Requests at a home agent (run it in the
care-of namespace). Built here with struct and hmac, independently of
homeward, like mip_send.py.

1. One genuine request (its bytes are the replay material); its reply.
2. Class by class, COUNT datagrams each, paced: truncated, bit_flipped,
   replayed, random, bad_extensions, and requests correctly signed but
   refused: stale (133), foreign_ha (136), encapsulation (139),
   unauthorized_home (129).
3. With --final, one more genuine request with a fresh identification; its
   reply.

Usage: hostile_mip.py --ha A --home A --coa A --spi N --key HEX --count N
                      [--seed N] [--lifetime S] [--final]
Prints one JSON object: {"genuine": reply, "classes": {name: {"sent",
"replies": {code: n}}}, "final": reply}."""

import argparse
import hmac
import json
import random
import socket
import struct
import sys
import time

NTP_UNIX_OFFSET = 2208988800
MH_AUTH = 32


class Builder:
    def __init__(self, a):
        self.a = a
        self.key = bytes.fromhex(a.key)
        self.seq = 0

    def fresh_id(self, offset=0.0):
        """NTP-format identification: now, plus a counter in the low bits so
        that every request built here is newer than the one before."""
        t = time.time() + offset
        secs = (int(t) + NTP_UNIX_OFFSET) & 0xFFFFFFFF
        self.seq += 1
        frac = (int((t - int(t)) * (1 << 32)) & 0xFFFFF000) | (self.seq & 0xFFF)
        return (secs << 32) | frac

    def request(self, ident, home=None, ha=None, flags=0x02, lifetime=None, spi=None, key=None):
        a = self.a
        fixed = struct.pack(
            "!BBH4s4s4sQ", 1, flags, a.lifetime if lifetime is None else lifetime,
            socket.inet_aton(home or a.home), socket.inet_aton(ha or a.ha),
            socket.inet_aton(a.coa), ident)
        head = fixed + struct.pack("!BBI", MH_AUTH, 4 + 32, a.spi if spi is None else spi)
        return head + hmac.new(key or self.key, head, "sha256").digest()


def parse_reply(data):
    if len(data) >= 20 and data[0] == 3:
        code, lifetime = struct.unpack("!xBH", data[:4])
        return {"code": code, "lifetime": lifetime, "len": len(data)}
    return {"code": None, "len": len(data)}


def exchange(sock, request, timeout=3.0):
    sock.settimeout(timeout)
    sock.sendto(request, (ARGS.ha, 434))
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            data, _ = sock.recvfrom(4096)
        except OSError:
            return None
        if len(data) >= 20 and data[12:20] == request[16:24]:
            return parse_reply(data)
    return None


def drain(sock, replies):
    sock.setblocking(False)
    while True:
        try:
            data, _ = sock.recvfrom(4096)
        except OSError:
            return
        c = parse_reply(data)["code"]
        replies[str(c)] = replies.get(str(c), 0) + 1


ARGS = None


def main():
    global ARGS
    p = argparse.ArgumentParser()
    for k in ("ha", "home", "coa", "key"):
        p.add_argument("--" + k, required=True)
    p.add_argument("--spi", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--lifetime", type=int, default=300)
    p.add_argument("--burst", type=int, default=32)
    p.add_argument("--pause", type=float, default=0.004)
    p.add_argument("--final", action="store_true")
    a = p.parse_args()
    ARGS = a
    r = random.Random(a.seed)
    b = Builder(a)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)

    genuine = b.request(b.fresh_id())
    out = {"genuine": exchange(sock, genuine), "classes": {}}

    def truncated():
        return genuine[: r.randrange(0, len(genuine))]

    def bit_flipped():
        d = bytearray(genuine)
        for _ in range(r.choice([1, 1, 1, 2, 3, 8])):
            bit = r.randrange(len(d) * 8)
            d[bit // 8] ^= 1 << (bit % 8)
        return bytes(d)

    def replayed():
        return genuine

    def random_bytes():
        d = r.randbytes(r.randint(0, 1400))
        # Half of them claim to be a Registration Request (type 1).
        return (b"\x01" + d[1:]) if d and r.random() < 0.5 else d

    def bad_extensions():
        fixed = genuine[:24]
        k = r.randrange(6)
        if k == 0:  # extension length running past the end
            return fixed + bytes([MH_AUTH, r.randint(41, 255)]) + genuine[26:26 + r.randint(0, 36)]
        if k == 1:  # authenticator too short for any tag
            return fixed + bytes([MH_AUTH, r.randint(0, 8)]) + r.randbytes(8)[: r.randint(0, 8)]
        if k == 2:  # unknown extensions, no authenticator
            ext = b"".join(bytes([t, 4]) + r.randbytes(4) for t in r.sample(range(1, 255), 5))
            return fixed + ext
        if k == 3:  # the authenticator followed by trailing junk
            return genuine + r.randbytes(r.randint(1, 64))
        if k == 4:  # hundreds of zero-length extensions
            return fixed + bytes([r.randint(0, 127), 0]) * r.randint(100, 600)
        return fixed + r.randbytes(r.randint(1, 200))  # garbage

    def stale():
        return b.request(b.fresh_id(offset=r.choice([-1e6, -3600.0, -100.0, 100.0, 1e6])))

    def foreign_ha():
        return b.request(b.fresh_id(), ha="198.51.100.%d" % r.randint(3, 254))

    def encapsulation():
        return b.request(b.fresh_id(), flags=r.choice([0x12, 0x0A, 0x1A]))

    def unauthorized_home():
        return b.request(b.fresh_id(), home="192.0.2.%d" % r.randint(60, 99))

    classes = [truncated, bit_flipped, replayed, random_bytes, bad_extensions, stale,
               foreign_ha, encapsulation, unauthorized_home]
    sock.setblocking(False)
    for make in classes:
        datagrams = [make() for _ in range(a.count)]
        replies = {}
        sent = errors = 0
        for i, d in enumerate(datagrams):
            try:
                sock.sendto(d, (a.ha, 434))
                sent += 1
            except OSError:
                errors += 1
            if (i + 1) % a.burst == 0:
                time.sleep(a.pause)
                drain(sock, replies)
        time.sleep(0.2)
        drain(sock, replies)
        out["classes"][make.__name__] = {"sent": sent, "errors": errors, "replies": replies}

    if a.final:
        out["final"] = exchange(sock, b.request(b.fresh_id()))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
