"""Hostile frames at one interface of a home agent, class by class, written
raw with an AF_PACKET socket (built here with struct, no scapy objects, so
tens of thousands take a second). Run it in a lab namespace, never in the
root namespace.

After each class it waits for the daemon to settle and runs the stats
command it was given (`homeward stats --json --socket ...`; the control
socket is a path, reachable from any network namespace), so the caller can
attribute every counter movement to one class.

Usage: hostile.py --iface IF --src-mac MAC --dst-mac MAC --side lan|wan
                  --ha A --vm A --coa A --host A --count N --seed N
                  [--classes a,b,...] --stats-cmd JSON_ARGV [--stats-key K]
                  [--from-vm]
Prints one JSON object: {"before": stats, "classes": [{"name", "sent",
"errors", "bytes", "seconds", "stats"}...]}."""

import argparse
import json
import random
import socket
import struct
import subprocess
import sys
import time

ETH_IP = 0x0800
ETH_ARP = 0x0806
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8
PROTO_ICMP = 1
PROTO_IPIP = 4
PROTO_UDP = 17


def mac_bytes(text):
    return bytes(int(x, 16) for x in text.split(":"))


def ip_bytes(text):
    return socket.inet_aton(text)


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def eth(dst, src, ethertype, tags=()):
    """Ethernet header; `tags` are (tpid, vid) pairs, outermost first."""
    h = dst + src
    for tpid, vid in tags:
        h += struct.pack("!HH", tpid, vid & 0x0FFF)
    return h + struct.pack("!H", ethertype)


def ipv4(src, dst, proto, payload, ttl=64, tos=0, ident=1, df=False, mf=False,
         frag=0, ihl=5, options=b"", tot_len=None, version=4, bad_csum=False):
    flags = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag & 0x1FFF)
    length = 4 * ihl + len(payload) if tot_len is None else tot_len
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | (ihl & 0xF), tos,
                      length & 0xFFFF, ident & 0xFFFF, flags, ttl, proto, 0,
                      src, dst) + options
    c = csum(hdr[:20 + len(options)])
    if bad_csum:
        c ^= 1 + (ident % 0xFFFE)
    hdr = hdr[:10] + struct.pack("!H", c) + hdr[12:]
    return hdr + payload


def udp(sport, dport, body):
    # Checksum 0 (none): the data path does not read it.
    return struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body


def icmp(typ, code, rest, body):
    m = struct.pack("!BBH4s", typ, code, 0, rest) + body
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]


def arp(htype, ptype, hlen, plen, oper, sha, spa, tha, tpa):
    return struct.pack("!HHBBH", htype, ptype, hlen, plen, oper) + sha + spa + tha + tpa


class Gen:
    def __init__(self, a):
        self.r = random.Random(a.seed)
        self.src = mac_bytes(a.src_mac)
        self.dst = mac_bytes(a.dst_mac)
        self.side = a.side
        self.ha = ip_bytes(a.ha)
        self.vm = ip_bytes(a.vm)
        self.coa = ip_bytes(a.coa)
        self.host = ip_bytes(a.host)
        self.ident = 0
        if a.from_vm:
            # Datagrams *from* the VM (a foreign agent's VM link): the VM's
            # address is the source, the other host the destination.
            self.vm, self.host = self.host, self.vm

    def rb(self, n):
        return self.r.randbytes(n)

    def next_id(self):
        self.ident = (self.ident + 1) & 0xFFFF
        return self.ident

    def good_udp_to_vm(self, length=None, src=None):
        body = self.rb(self.r.randint(0, 200) if length is None else length)
        return ipv4(src or self.host, self.vm, PROTO_UDP,
                    udp(self.r.randint(1024, 65535), self.r.randint(1, 65535), body),
                    ident=self.next_id())

    def l2(self, ethertype, tags=()):
        return eth(self.dst, self.src, ethertype, tags)

    def unbound_src(self):
        return bytes([203, 0, 113, self.r.randint(1, 254)])

    # --- classes: each returns one frame ---------------------------------

    def random_ethertype(self):
        while True:
            t = self.r.randint(0, 0xFFFF)
            if t not in (ETH_IP, ETH_ARP, ETH_VLAN, ETH_QINQ, 0x9100, 0x86DD):
                break
        return self.l2(t) + self.rb(self.r.randint(0, 300))

    def random_fuzz(self):
        """Ethernet to us with a random pick of interesting ethertypes and
        a random body: random, not crafted."""
        t = self.r.choice([ETH_IP, ETH_IP, ETH_ARP, ETH_VLAN, self.r.randint(0, 0xFFFF)])
        return self.l2(t) + self.rb(self.r.randint(0, 400))

    def mutated_ipv4(self):
        """A datagram to the bound VM with 1-8 random bytes of its IPv4
        header overwritten (checksum left as it was)."""
        d = bytearray(self.good_udp_to_vm())
        for _ in range(self.r.randint(1, 8)):
            d[self.r.randrange(0, 20)] = self.r.randrange(256)
        return self.l2(ETH_IP) + bytes(d)

    def vlan_truncated(self):
        # 0x8100 with no room for the tag and inner ethertype.
        return self.l2(ETH_VLAN) + self.rb(self.r.randint(0, 3))

    def ipv4_truncated(self):
        d = self.good_udp_to_vm()
        return self.l2(ETH_IP) + d[: self.r.randint(0, 19)]

    def ipv4_bad_version(self):
        v = self.r.choice([0, 1, 2, 3, 5, 6, 7, 8, 15])
        return self.l2(ETH_IP) + ipv4(self.host, self.vm, PROTO_UDP, udp(1, 2, self.rb(32)),
                                      version=v, ident=self.next_id())

    def ipv4_bad_ihl(self):
        if self.r.random() < 0.5:
            ihl = self.r.randint(0, 4)
            d = ipv4(self.host, self.vm, PROTO_UDP, udp(1, 2, self.rb(32)), ihl=ihl,
                     ident=self.next_id())
        else:
            # IHL 15 (60 bytes) but the frame ends earlier.
            d = ipv4(self.host, self.vm, PROTO_UDP, b"", ihl=15, ident=self.next_id())
            d = d[: self.r.randint(20, 59)]
        return self.l2(ETH_IP) + d

    def ipv4_length_lies(self):
        body = udp(1, 2, self.rb(self.r.randint(0, 100)))
        real = 20 + len(body)
        if self.r.random() < 0.5:
            tot = self.r.randint(0, 19)  # shorter than the header
        else:
            tot = self.r.randint(real + 1, 0xFFFF)  # beyond the frame
        return self.l2(ETH_IP) + ipv4(self.host, self.vm, PROTO_UDP, body, tot_len=tot,
                                      ident=self.next_id())

    def ipv4_bad_checksum(self):
        tags = ((ETH_VLAN, self.r.randint(1, 4094)),) if self.r.random() < 0.5 else ()
        body = udp(1, 2, self.rb(self.r.randint(0, 300)))
        return self.l2(ETH_IP, tags) + ipv4(self.host, self.vm, PROTO_UDP, body,
                                            ident=self.next_id(), bad_csum=True)

    def qinq(self):
        outer = self.r.choice([ETH_VLAN, ETH_QINQ, 0x9100])
        n = self.r.randint(2, 4) if outer == ETH_VLAN else self.r.randint(1, 3)
        tags = [(outer, self.r.randint(1, 4094))] + [(ETH_VLAN, self.r.randint(1, 4094))] * (n - 1)
        if outer == ETH_VLAN:
            tags = [(ETH_VLAN, self.r.randint(1, 4094)) for _ in range(n)]
        return self.l2(ETH_IP, tags) + self.good_udp_to_vm()

    def oversize(self):
        """Well-formed UDP to the bound VM, in a frame larger than a UMEM
        frame's room (2048 B less XDP's 256 B of headroom): it reaches the
        worker in pieces (AF_XDP multi-buffer) and, not being TCP, is not
        cut into segments."""
        total = self.r.randint(1850, 3400)
        return self.l2(ETH_IP) + self.good_udp_to_vm(length=total - 14 - 28)

    def ttl_expiring(self):
        d = ipv4(self.host, self.vm, PROTO_UDP, udp(1, 2, self.rb(40)),
                 ttl=self.r.choice([0, 1]), ident=self.next_id())
        return self.l2(ETH_IP) + d

    def group_dst_mac(self):
        dst = self.r.choice([b"\xff" * 6, b"\x01\x00\x5e\x00\x00\x01", b"\x33\x33\x00\x00\x00\x01"])
        return eth(dst, self.src, ETH_IP) + self.good_udp_to_vm()

    def spoofed_source(self):
        src = self.ha if self.r.random() < 0.5 else self.coa
        return self.l2(ETH_IP) + self.good_udp_to_vm(src=src)

    def tunnel_loop(self):
        inner = ipv4(self.host, self.coa, PROTO_UDP, udp(1, 2, self.rb(30)), ident=self.next_id())
        return self.l2(ETH_IP) + ipv4(self.host, self.vm, PROTO_IPIP, inner, ident=self.next_id())

    def ipip_unbound(self):
        inner = self.rb(self.r.randint(0, 80)) if self.r.random() < 0.3 else \
            ipv4(self.vm, self.host, PROTO_UDP, udp(1, 2, self.rb(30)), ident=self.next_id())
        return self.l2(ETH_IP) + ipv4(self.unbound_src(), self.ha, PROTO_IPIP, inner,
                                      ident=self.next_id())

    def ipip_coa_garbage(self):
        """IPIP whose outer source is the bound care-of address (steered),
        with an inner datagram that must not be delivered."""
        good = ipv4(self.vm, self.host, PROTO_UDP, udp(1, 2, self.rb(30)), ident=self.next_id())
        k = self.r.randrange(9)
        mf = False
        if k == 0:
            inner = self.rb(self.r.randint(0, 120))
        elif k == 1:
            inner = good[: self.r.randint(0, 19)]
        elif k == 2:
            inner = ipv4(self.vm, self.host, PROTO_UDP, udp(1, 2, b"x" * 30),
                         version=self.r.choice([0, 6, 15]), ident=self.next_id())
        elif k == 3:
            inner = ipv4(self.vm, self.host, PROTO_UDP, udp(1, 2, b"x" * 30),
                         bad_csum=True, ident=self.next_id())
        elif k == 4:
            inner = ipv4(self.vm, self.host, PROTO_UDP, udp(1, 2, b"x" * 30),
                         tot_len=self.r.choice([3, 19, 900]), ident=self.next_id())
        elif k == 5:
            inner = ipv4(self.unbound_src(), self.host, PROTO_UDP, udp(1, 2, b"x" * 30),
                         ident=self.next_id())
        elif k == 6:
            dst = self.r.choice([b"\xff\xff\xff\xff", b"\xe0\x00\x00\x01", b"\xef\x01\x02\x03"])
            inner = ipv4(self.vm, dst, PROTO_UDP, udp(1, 2, b"x" * 30), ident=self.next_id())
        elif k == 7:
            inner = good  # whole, but the outer datagram is a fragment
            mf = True
        else:
            inner = ipv4(self.vm, self.host, PROTO_UDP, udp(1, 2, b"x" * 30), ihl=self.r.randint(0, 4),
                         ident=self.next_id())
        return self.l2(ETH_IP) + ipv4(self.coa, self.ha, PROTO_IPIP, inner, mf=mf,
                                      ident=self.next_id())

    def _quoted_tunnel_packet(self):
        inner = ipv4(self.host, self.vm, PROTO_UDP, udp(1, 2, self.rb(16)), ident=self.next_id())
        outer = ipv4(self.ha, self.coa, PROTO_IPIP, inner, ident=self.next_id())
        return outer[: self.r.choice([28, 48, 56, len(outer)])]

    def icmp_error_to_ha(self):
        """ICMP errors to the HA quoting a tunnel packet (HA -> care-of):
        frag needed with absurd MTUs, time exceeded, unreachable."""
        typ, code = self.r.choice([(3, 4), (3, 1), (3, 3), (11, 0), (12, 0), (4, 0)])
        mtu = self.r.choice([0, 68, 576, 1280, 65535]) if (typ, code) == (3, 4) else 0
        body = icmp(typ, code, struct.pack("!HH", 0, mtu), self._quoted_tunnel_packet())
        router = self.r.choice([self.coa, self.unbound_src()])
        return self.l2(ETH_IP) + ipv4(router, self.ha, PROTO_ICMP, body, ident=self.next_id())

    def icmp_error_to_vm(self):
        """The same errors addressed to the bound VM: tunnelled like any
        datagram to it (or dropped with a reason), never a crash."""
        typ, code = self.r.choice([(3, 4), (11, 0), (3, 1)])
        body = icmp(typ, code, struct.pack("!HH", 0, 68), self._quoted_tunnel_packet())
        return self.l2(ETH_IP) + ipv4(self.unbound_src(), self.vm, PROTO_ICMP, body,
                                      ident=self.next_id())

    def _arp_for_vm(self, **kw):
        f = dict(htype=1, ptype=ETH_IP, hlen=6, plen=4, oper=1, sha=self.src,
                 spa=self.host, tha=b"\0" * 6, tpa=self.vm)
        f.update(kw)
        return eth(b"\xff" * 6, self.src, ETH_ARP) + arp(**f)

    def arp_bad_types(self):
        k = self.r.randrange(4)
        if k == 0:
            return self._arp_for_vm(htype=self.r.choice([0, 6, 0x8000, 0xFFFF]))
        if k == 1:
            return self._arp_for_vm(ptype=self.r.choice([0, 0x86DD, 0x0806, 0xFFFF]))
        if k == 2:
            return self._arp_for_vm(hlen=self.r.choice([0, 4, 8, 255]))
        return self._arp_for_vm(plen=self.r.choice([0, 6, 16, 255]))

    def arp_not_request(self):
        return self._arp_for_vm(oper=self.r.choice([0, 2, 3, 4, 8, 0xFFFF]))

    def arp_truncated(self):
        return self._arp_for_vm()[: 14 + self.r.randint(0, 27)]

    def arp_bad_sender(self):
        k = self.r.randrange(3)
        if k == 0:
            return self._arp_for_vm(sha=b"\x01\x00\x5e\x01\x02\x03")
        if k == 1:
            return self._arp_for_vm(spa=self.r.choice([b"\xff\xff\xff\xff", b"\xe0\x00\x00\x05"]))
        return self._arp_for_vm(spa=self.vm)  # from the bound address itself

    def arp_request(self):
        """A well-formed request for the bound VM (hostile on the WAN side,
        where proxy ARP must not answer)."""
        return self._arp_for_vm()


def stats(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=10, check=True).stdout
        return json.loads(out)
    except (subprocess.SubprocessError, ValueError) as e:
        return {"error": str(e)}


def main():
    p = argparse.ArgumentParser()
    for k in ("iface", "src-mac", "dst-mac", "side", "ha", "vm", "coa", "host", "classes"):
        p.add_argument("--" + k, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--burst", type=int, default=32)
    p.add_argument("--pause", type=float, default=0.0006)
    p.add_argument("--settle", type=float, default=0.15)
    p.add_argument("--stats-cmd", required=True)
    p.add_argument("--stats-key", help="the counters are under this key of the stats")
    p.add_argument("--from-vm", action="store_true")
    a = p.parse_args()
    argv = json.loads(a.stats_cmd)

    def cmd_stats():
        st = stats(argv)
        return st.get(a.stats_key, st) if a.stats_key and "error" not in st else st
    g = Gen(a)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((a.iface, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    out = {"before": cmd_stats(), "classes": []}
    for name in a.classes.split(","):
        make = getattr(g, name)
        frames = [make() for _ in range(a.count)]
        sent = errors = nbytes = 0
        t0 = time.monotonic()
        for i, f in enumerate(frames):
            try:
                s.send(f)
                sent += 1
                nbytes += len(f)
            except OSError:
                errors += 1
            if (i + 1) % a.burst == 0:
                time.sleep(a.pause)
        seconds = time.monotonic() - t0
        time.sleep(a.settle)
        out["classes"].append({"name": name, "sent": sent, "errors": errors, "bytes": nbytes,
                               "seconds": round(seconds, 3), "stats": cmd_stats()})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
