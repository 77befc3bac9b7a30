"""Interop check of homeward's RFC 5944 registration with an independent
implementation: scapy's Mobile IP layer builds the Registration Request,
Python's hmac computes the HMAC-MD5 Mobile-Home authenticator (RFC 5944
§3.5.1: over the message, the extension's type and length and the SPI).
Sent over an ordinary UDP socket (run it in the care-of namespace); the
reply is decoded with scapy and its authenticator verified.

Usage: mip_interop.py HA HOME_ADDR CARE_OF SPI KEY_HEX [LIFETIME]
Prints one JSON object; exits 0 when a reply came (whatever its code)."""

import hmac
import json
import socket
import struct
import sys
import time

from scapy.layers.mobileip import MobileIP, MobileIPRRP, MobileIPRRQ

NTP_UNIX_OFFSET = 2208988800
MH_AUTH = 32


def ntp_now():
    t = time.time()
    secs = int(t) + NTP_UNIX_OFFSET
    frac = int((t - int(t)) * (1 << 32)) & 0xFFFFFFFF
    return (secs << 32) | frac


def mh_auth(message, spi, key):
    head = message + struct.pack("!BBI", MH_AUTH, 4 + 16, spi)
    return head + hmac.new(key, head, "md5").digest()


def main():
    ha, home, coa, spi, key = sys.argv[1:6]
    lifetime = int(sys.argv[6]) if len(sys.argv) > 6 else 60
    spi = int(spi)
    key = bytes.fromhex(key)
    ident = ntp_now()
    rrq = MobileIP(type=1) / MobileIPRRQ(
        flags=0x02,  # T: reverse tunnelling (RFC 3024)
        lifetime=lifetime,
        homeaddr=home,
        haaddr=ha,
        coaddr=coa,
        id=ident,
    )
    request = mh_auth(bytes(rrq), spi, key)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3.0)
    result = {"sent_id": ident, "request_hex": request.hex()}
    try:
        sock.sendto(request, (ha, 434))
        data, peer = sock.recvfrom(2048)
    except OSError as e:
        result["error"] = str(e)
        print(json.dumps(result))
        return 1
    finally:
        sock.close()

    reply = MobileIP(data)
    result["reply_hex"] = data.hex()
    result["from"] = peer[0]
    result["is_rrp"] = reply.haslayer(MobileIPRRP)
    if result["is_rrp"]:
        rrp = reply[MobileIPRRP]
        result.update(
            code=rrp.code,
            lifetime=rrp.lifetime,
            homeaddr=rrp.homeaddr,
            haaddr=rrp.haaddr,
            id=rrp.id,
        )
    # The fixed reply is 20 bytes; the MH auth extension follows.
    auth_ok = False
    if len(data) >= 20 + 6 + 16 and data[20] == MH_AUTH and data[21] == 20:
        (reply_spi,) = struct.unpack("!I", data[22:26])
        want = hmac.new(key, data[:26], "md5").digest()
        auth_ok = reply_spi == spi and hmac.compare_digest(want, data[26:42])
        result["reply_spi"] = reply_spi
    result["auth_ok"] = auth_ok
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
