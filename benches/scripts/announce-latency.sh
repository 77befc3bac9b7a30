#!/bin/bash
# How soon an idle home agent announces a new binding on the home link, as
# root: `homeward run` in a namespace of its own (two veth pairs, nothing
# else, no traffic), then N times: `homeward bind` one new VM, and the time
# from just before that command to its first gratuitous ARP on the home
# link's peer (tcpdump's timestamp). Includes starting the client and the
# control socket's round trip, the same for every binary.
# usage: announce-latency.sh HOMEWARD_BIN [N]
# Prints the latencies' median, 90th percentile and largest, in ms.
set -u
BIN=$(realpath "$1"); N=${2:-40}
NS=hw-annlat-$$; D=$(mktemp -d)
cleanup() {
    [ -n "${CAP:-}" ] && kill "$CAP" 2>/dev/null
    [ -n "${PID:-}" ] && kill -INT "$PID" 2>/dev/null && sleep 2 && kill -9 "$PID" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    rm -rf "$D"
}
trap cleanup EXIT
. "$(dirname "$0")/gateway-ns.sh"
ip netns exec "$NS" "$BIN" run --lan lan0 --wan wan0 --address 198.51.100.1 \
    --socket "$D/s.sock" --state-dir "$D/st" > "$D/log" 2>&1 &
PID=$!
for _ in $(seq 50); do [ -S "$D/s.sock" ] && break; sleep 0.2; done
ip netns exec "$NS" tcpdump -i lanp -n -tt -l arp > "$D/arp" 2>/dev/null &
CAP=$!
sleep 2
for i in $(seq "$N"); do
    echo "10.16.0.$i $(date +%s.%N)" >> "$D/sent"
    "$BIN" bind "10.16.0.$i" 198.51.100.2 --socket "$D/s.sock" > /dev/null
    # Idle again before the next: the worker back asleep in poll().
    sleep 0.$((RANDOM % 50 + 50))
done
sleep 1
python3 - "$D/sent" "$D/arp" <<'EOF'
import re, sys
sent = dict(l.split() for l in open(sys.argv[1]))
first = {}
for l in open(sys.argv[2]):
    m = re.match(r"(\d+\.\d+) ARP, (?:Request who-has|Reply) (\S+)", l)
    if m and m.group(2) in sent and m.group(2) not in first:
        first[m.group(2)] = float(m.group(1))
lat = sorted((first[vm] - float(t)) * 1e3 for vm, t in sent.items() if vm in first)
if not lat:
    sys.exit("no gratuitous ARP seen")
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"bind -> first gratuitous ARP, {len(lat)} of {len(sent)} VMs: "
      f"median {pick(0.5):.2f} ms, p90 {pick(0.9):.2f} ms, max {lat[-1]:.2f} ms")
EOF
