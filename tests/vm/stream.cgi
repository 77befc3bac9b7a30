#!/bin/sh
# GET /cgi-bin/stream?chunk=N&delay=USEC: the decimal numbers 1, 2, 3, ...
# one per line, CHUNK numbers every DELAY microseconds, until the client
# goes away. Paced here, in the guest, so the client reads each byte as
# soon as it arrives and a stall on the path shows as a gap at the client.
chunk=500
delay=10000
for kv in $(echo "$QUERY_STRING" | tr '&' ' '); do
    case "$kv" in
        chunk=*) chunk=${kv#chunk=} ;;
        delay=*) delay=${kv#delay=} ;;
    esac
done
echo "Content-Type: text/plain"
echo ""
i=1
while :; do
    seq "$i" $((i + chunk - 1)) || exit 0
    i=$((i + chunk))
    usleep "$delay"
done
