"""Sends one RFC 5944 Registration Request to a home agent (run it in the
care-of namespace) and prints the reply as JSON. The request is built here,
independently of homeward: fixed part with struct, Mobile-Home
authenticator with Python's hmac (HMAC-SHA256 or HMAC-MD5 over the message,
the extension's type and length and the SPI). Tests use it to send forged,
bit-flipped, replayed and stale requests.

Usage: mip_send.py --ha A --home A --coa A --spi N --key HEX
                   [--alg sha256|md5] [--lifetime S] [--flags N]
                   [--id-offset SECONDS] [--flip BIT] [--raw HEX]
                   [--reply-key HEX] [--ha-field A] [--timeout S]
                   [--switchover]
--raw sends those exact bytes instead (a replay); --flip flips one bit of
the built request; --reply-key checks the reply's authenticator with
another key than --key (for forged requests); --switchover adds homeward's
switchover extension (RFC 3115 CVSE, type 38, long format: vendor 32473,
CVSE type 1, no value) before the authenticator."""

import argparse
import hmac
import json
import socket
import struct
import time

NTP_UNIX_OFFSET = 2208988800
MH_AUTH = 32
CVSE = 38
HOMEWARD_PEN = 32473
CVSE_SWITCHOVER = 1
TAG_LEN = {"sha256": 32, "md5": 16}


def ntp_now(offset):
    t = time.time() + offset
    secs = (int(t) + NTP_UNIX_OFFSET) & 0xFFFFFFFF
    frac = int((t - int(t)) * (1 << 32)) & 0xFFFFFFFF
    return (secs << 32) | frac


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ha", required=True)
    p.add_argument("--home", required=True)
    p.add_argument("--coa", required=True)
    p.add_argument("--spi", type=int, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--alg", default="sha256", choices=sorted(TAG_LEN))
    p.add_argument("--lifetime", type=int, default=60)
    p.add_argument("--flags", type=lambda v: int(v, 0), default=0x02)
    p.add_argument("--ha-field", help="Home Agent field (default: --ha)")
    p.add_argument("--id-offset", type=float, default=0.0)
    p.add_argument("--flip", type=int)
    p.add_argument("--raw")
    p.add_argument("--reply-key")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--switchover", action="store_true")
    a = p.parse_args()
    key = bytes.fromhex(a.key)
    reply_key = bytes.fromhex(a.reply_key) if a.reply_key else key

    if a.raw:
        request = bytes.fromhex(a.raw)
        ident = struct.unpack("!Q", request[16:24])[0] if len(request) >= 24 else 0
    else:
        ident = ntp_now(a.id_offset)
        fixed = struct.pack(
            "!BBH4s4s4sQ",
            1,
            a.flags,
            a.lifetime,
            socket.inet_aton(a.home),
            socket.inet_aton(a.ha_field or a.ha),
            socket.inet_aton(a.coa),
            ident,
        )
        if a.switchover:
            # Type, reserved, 16-bit length of what follows, vendor, type.
            fixed += struct.pack("!BBHIH", CVSE, 0, 6, HOMEWARD_PEN, CVSE_SWITCHOVER)
        head = fixed + struct.pack("!BBI", MH_AUTH, 4 + TAG_LEN[a.alg], a.spi)
        request = head + hmac.new(key, head, a.alg).digest()
        if a.flip is not None:
            b = bytearray(request)
            b[a.flip // 8] ^= 1 << (a.flip % 8)
            request = bytes(b)

    out = {"request_hex": request.hex(), "sent_id": ident, "reply": None}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(a.timeout)
    try:
        sock.sendto(request, (a.ha, 434))
        data, peer = sock.recvfrom(2048)
    except OSError:
        print(json.dumps(out))
        return 0
    finally:
        sock.close()

    reply = {"from": peer[0], "hex": data.hex(), "auth_ok": False}
    if len(data) >= 20 and data[0] == 3:
        code, lifetime, home, ha, rid = struct.unpack("!xBH4s4sQ", data[:20])
        reply.update(
            code=code,
            lifetime=lifetime,
            home=socket.inet_ntoa(home),
            ha=socket.inet_ntoa(ha),
            id=rid,
        )
        if len(data) >= 26 and data[20] == MH_AUTH:
            (spi,) = struct.unpack("!I", data[22:26])
            want = hmac.new(reply_key, data[:26], a.alg).digest()
            reply["spi"] = spi
            reply["auth_ok"] = spi == a.spi and hmac.compare_digest(want, data[26:])
    out["reply"] = reply
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
