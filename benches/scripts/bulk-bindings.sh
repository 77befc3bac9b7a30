#!/bin/bash
# The control plane with many bindings, as root: `homeward run` in a
# namespace of its own (two veth pairs, nothing else), N VMs bound with one
# `bind --file`, then what the daemon does with them:
#   - the 10 s after the bind: CPU per thread, frames on the home link (the
#     gratuitous ARPs), the announcement counters;
#   - once the announcements are over (RATE high) or not: a metrics scrape,
#     `homeward stats --json`, `homeward list --json`, timed; a list's
#     reply at the daemon, and a health request answered during one;
#   - a stop, a restart restoring them all, a stop again, timed;
#   - the daemon's resident memory per binding: what room for N costs at
#     start, and the growth (VmRSS / N) after the bind and after the
#     restart's restore.
# usage: bulk-bindings.sh HOMEWARD_BIN N [ANNOUNCE_RATE]
# (ANNOUNCE_RATE: written to the config file; leave it out for a binary
# that does not know the key.) Traffic stays in the namespace.
set -u
BIN=$(realpath "$1"); N=$2; RATE=${3:-}
NS=hw-bulk-$$; D=$(mktemp -d)
cleanup() {
    [ -n "${PID:-}" ] && kill -INT "$PID" 2>/dev/null && sleep 3 && kill -9 "$PID" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    rm -rf "$D"
}
trap cleanup EXIT
. "$(dirname "$0")/gateway-ns.sh"
printf 'max_bindings = %d\n' $((N + 1)) > "$D/c.toml"
[ -n "$RATE" ] && printf 'announce_rate = %d\n' "$RATE" >> "$D/c.toml"
python3 -c "
import ipaddress
b = int(ipaddress.IPv4Address('10.16.0.0'))
open('$D/b.txt', 'w').write(''.join(f'{ipaddress.IPv4Address(b + i)} 198.51.100.2\n' for i in range($N)))"
rss() { awk '/^VmRSS/{print $2 * 1024}' "/proc/$PID/status"; }
per_binding() { python3 -c "print('%.0f' % (($1 - $2) / $N))"; }
# What room for N bindings costs before any is made (the binding table and
# its counters are allocated whole at start): an empty daemon sized for N
# against one sized for 1.
empty_daemon() {
    printf 'max_bindings = %d\n' "$1" > "$D/e.toml"
    ip netns exec "$NS" "$BIN" run --lan lan0 --wan wan0 --address 198.51.100.1 \
        --socket "$D/e.sock" --state-dir "$D/e-$1" --config "$D/e.toml" > "$D/elog" 2>&1 &
    PID=$!
    for _ in $(seq 50); do [ -S "$D/e.sock" ] && break; sleep 0.2; done
    sleep 1; rss; kill -INT "$PID"; wait "$PID" 2>/dev/null; PID=
}
rss_small=$(empty_daemon 1)
rss_sized=$(empty_daemon $((N + 1)))
ip netns exec "$NS" "$BIN" run --lan lan0 --wan wan0 --address 198.51.100.1 \
    --socket "$D/s.sock" --state-dir "$D/st" --config "$D/c.toml" \
    --metrics 127.0.0.1:9555 > "$D/log" 2>&1 &
PID=$!
for _ in $(seq 50); do [ -S "$D/s.sock" ] && break; sleep 0.2; done
sleep 1
echo "resident memory per binding allocated at start for max_bindings = $((N + 1)): $(per_binding "$rss_sized" "$rss_small") B"
# (A thread that ends meanwhile, a list's writer, is left out.)
threads() { for t in /proc/$PID/task/*; do c=$(cat "$t/comm" 2>/dev/null) && s=$(awk '{print $14+$15}' "$t/stat" 2>/dev/null) && echo "$c $s"; done; }
rx() { ip -n "$NS" -s link show lanp | awk '/RX:/{getline; print $2}'; }
rss_empty=$(rss)
"$BIN" bind --file "$D/b.txt" --socket "$D/s.sock"
threads > "$D/t0"; r0=$(rx)
sleep 10
echo "resident memory per binding after the bind: $(per_binding "$(rss)" "$rss_empty") B (empty daemon $((rss_empty >> 20)) MiB)"
threads > "$D/t1"; r1=$(rx)
echo "the 10 s after the bind: $((r1 - r0)) frames on the home link; CPU ticks (1/100 s) per thread:"
paste "$D/t0" "$D/t1" | awk '{ if ($4 - $2 > 0) print "  " $1, $4 - $2 }'
"$BIN" stats --json --socket "$D/s.sock" | python3 -c "
import json, sys
s = json.load(sys.stdin)
print('announcements', s['counters']['announcements'], 'waiting', s.get('announcements_waiting'),
      'no_free_frame', s.get('drops', {}).get('no_free_frame'))"
for _ in 1 2 3; do
    /usr/bin/time -f "metrics scrape %e s" ip netns exec "$NS" curl -s -o /dev/null 127.0.0.1:9555/metrics
done
/usr/bin/time -f "stats --json %e s" "$BIN" stats --json --socket "$D/s.sock" > /dev/null
/usr/bin/time -f "list --json %e s" "$BIN" list --json --socket "$D/s.sock" > /dev/null
# The daemon's side of a list (its reply, not the CLI's parsing), and how
# long the control loop is busy with one: a health request sent 50 ms
# after a list nobody reads.
python3 - "$D/s.sock" <<'EOF'
import socket, sys, time
def ask(op):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(b'{"op":"%s"}\n' % op.encode())
    return s
t = time.time(); s = ask("list"); first = None; n = 0
while True:
    b = s.recv(1 << 20)
    if not b:
        break
    first = first or time.time()
    n += len(b)
    if b.endswith(b"\n"):
        break
print("list reply: first byte %.2f s, last %.2f s, %d MB" % (first - t, time.time() - t, n >> 20))
unread = ask("list"); time.sleep(0.05)
t = time.time(); ask("health").recv(1 << 16)
print("health sent 50 ms after a list: answered in %.2f s" % (time.time() - t))
EOF
threads > "$D/t2"; sleep 10; threads > "$D/t3"
echo "10 s later, CPU ticks per thread:"
paste "$D/t2" "$D/t3" | awk '{ if ($4 - $2 > 0) print "  " $1, $4 - $2 }'
# A stop (SIGINT, as systemd's), a restart that restores them all from the
# state store, and a stop again, timed.
stop() {
    local t; t=$(date +%s.%N)
    kill -INT "$PID"
    while kill -0 "$PID" 2>/dev/null; do sleep 0.05; done
    echo "$1 took $(python3 -c "import time; print('%.2f' % (time.time() - $t))") s"
    PID=
}
stop "stop"
t=$(date +%s.%N)
ip netns exec "$NS" "$BIN" run --lan lan0 --wan wan0 --address 198.51.100.1 \
    --socket "$D/s.sock" --state-dir "$D/st" --config "$D/c.toml" > "$D/log2" 2>&1 &
PID=$!
until grep -q "bindings restored" "$D/log2"; do
    kill -0 "$PID" 2>/dev/null || { echo "the restart failed:"; tail "$D/log2"; exit 1; }
    sleep 0.05
done
echo "restart: $(grep -o 'restored=[0-9]*' "$D/log2") after $(python3 -c "import time; print('%.2f' % (time.time() - $t))") s"
# Once the restore's announcements are over, as after the bind.
for _ in $(seq 600); do
    "$BIN" stats --json --socket "$D/s.sock" 2>/dev/null \
        | python3 -c "import json, sys; sys.exit(json.load(sys.stdin).get('announcements_waiting') != 0)" && break
    sleep 0.1
done
sleep 2
echo "resident memory per binding after the restart's restore: $(per_binding "$(rss)" "$rss_empty") B"
stop "second stop"
