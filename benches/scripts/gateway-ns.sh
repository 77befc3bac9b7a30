# Sourced by the control-plane bench scripts: a namespace $NS for one
# `homeward run`, nothing else in it. Home link lan0 (10.0.0.1/8, peer
# lanp), uplink wan0 (198.51.100.1/24, peer wanp), the care-of address
# 198.51.100.2 resolved statically. Traffic stays in the namespace.
ip netns add "$NS"
ip -n "$NS" link add lan0 type veth peer name lanp
ip -n "$NS" link add wan0 type veth peer name wanp
ip -n "$NS" addr add 10.0.0.1/8 dev lan0
ip -n "$NS" addr add 198.51.100.1/24 dev wan0
for i in lo lan0 lanp wan0 wanp; do ip -n "$NS" link set "$i" up; done
ip -n "$NS" neigh add 198.51.100.2 lladdr 02:00:00:00:00:22 dev wan0
