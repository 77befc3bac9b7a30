// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * homeward steering program.
 *
 * Attached to the home agent's LAN interface and (if different) its WAN
 * interface. Redirects to the AF_XDP socket of the ingress port and queue
 * (xsks[port * MAX_QUEUES + rx_queue_index]) only:
 *  (a) IPv4 to a bound VM address, any ingress;
 *  (b) ARP requests for a bound VM address, LAN ingress only, unless the
 *      home agent is on standby (ROLE_HOME_AGENT_BACKUP: passed);
 *  (c) IPIP (protocol 4) whose outer source is a bound care-of address, any
 *      ingress;
 * each untagged or under one 802.1Q tag (QinQ is passed).
 *
 * In the foreign agent role (config.role) the LAN port is the VM link and
 * the WAN port the uplink, and it redirects only:
 *  (a) IPv4 from a served VM address (bound_vms), VM link ingress (whatever
 *      the destination MAC: the VM's ARP cache is from its home link);
 *  (b) ARP requests from a served VM address, VM link ingress;
 *  (c) IPIP to the care-of address (config.local_addr) whose outer source is
 *      a served VM's home agent (care_ofs), uplink ingress.
 * Any other IPIP to the care-of address is dropped and counted
 * (DROPPED_IPIP): a host must not decapsulate what anyone sends it
 * (CVE-2020-10136).
 *
 * A queue index of
 * MAX_QUEUES or more has no socket slot (counted as NO_SOCKET).
 * Everything else, malformed and short frames included, is XDP_PASS
 * untouched: the box stays an ordinary router.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parsing.h"

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline int pass(__u32 idx)
{
	count(idx);
	return XDP_PASS;
}

/*
 * Hand the frame to the AF_XDP socket of (port, rx queue). With no socket
 * there, the frame goes to the kernel (XDP_PASS) and NO_SOCKET is counted:
 * the lookup tells that case apart from a successful redirect, and the
 * XDP_PASS flag of bpf_redirect_map covers a socket removed in between.
 */
static __always_inline int steer(struct xdp_md *ctx, __u32 port, __u32 idx)
{
	__u32 queue = ctx->rx_queue_index;
	__u32 key;

	count(idx);
	if (queue >= MAX_QUEUES)
		return pass(CNT_NO_SOCKET);
	key = port * MAX_QUEUES + queue;
	if (!bpf_map_lookup_elem(&xsks, &key))
		return pass(CNT_NO_SOCKET);
	return bpf_redirect_map(&xsks, key, XDP_PASS);
}

/* The foreign agent role, after the link header (see the top of the file). */
static __always_inline int foreign_agent(struct xdp_md *ctx, struct hdr_cursor *cur,
					 void *data_end, struct steer_config *cfg, __u32 port,
					 __u16 proto)
{
	__u32 addr;

	if (proto == ETH_P_IP) {
		struct iphdr *iph = parse_iphdr(cur, data_end);

		if (!iph)
			return pass(CNT_MALFORMED_L3);
		if (port == PORT_LAN) {
			addr = iph->saddr;
			if (bpf_map_lookup_elem(&bound_vms, &addr))
				return steer(ctx, port, CNT_STEERED_IPV4);
			return pass(CNT_PASSED);
		}
		if (iph->protocol == IPPROTO_IPIP_ && iph->daddr == cfg->local_addr) {
			addr = iph->saddr;
			if (bpf_map_lookup_elem(&care_ofs, &addr))
				return steer(ctx, port, CNT_STEERED_IPIP);
			count(CNT_DROPPED_IPIP);
			return XDP_DROP;
		}
		return pass(CNT_PASSED);
	}

	if (proto == ETH_P_ARP) {
		struct arp_eth_ipv4 *arp = parse_arp(cur, data_end);

		if (!arp)
			return pass(CNT_MALFORMED_L3);
		if (port != PORT_LAN || !arp_is_eth_ipv4_request(arp))
			return pass(CNT_PASSED);
		addr = arp->spa;
		if (bpf_map_lookup_elem(&bound_vms, &addr))
			return steer(ctx, port, CNT_STEERED_ARP);
	}
	return pass(CNT_PASSED);
}

SEC("xdp")
int homeward_steer(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct hdr_cursor cur = { .pos = data };
	struct steer_config *cfg;
	__u32 ingress = ctx->ingress_ifindex;
	__u32 zero = 0;
	__u32 port;
	__u16 proto;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return pass(CNT_UNKNOWN_INGRESS);
	if (ingress == cfg->lan_ifindex)
		port = PORT_LAN; /* also one-armed mode, where LAN == WAN */
	else if (ingress == cfg->wan_ifindex)
		port = PORT_WAN;
	else
		return pass(CNT_UNKNOWN_INGRESS);

	if (parse_ethhdr(&cur, data_end, &proto) < 0)
		return pass(CNT_MALFORMED_L2);

	if (cfg->role == ROLE_FOREIGN_AGENT)
		return foreign_agent(ctx, &cur, data_end, cfg, port, proto);

	if (proto == ETH_P_IP) {
		struct iphdr *iph = parse_iphdr(&cur, data_end);
		__u32 addr;

		if (!iph)
			return pass(CNT_MALFORMED_L3);

		addr = iph->daddr;
		if (bpf_map_lookup_elem(&bound_vms, &addr))
			return steer(ctx, port, CNT_STEERED_IPV4);

		if (iph->protocol == IPPROTO_IPIP_) {
			addr = iph->saddr;
			if (bpf_map_lookup_elem(&care_ofs, &addr))
				return steer(ctx, port, CNT_STEERED_IPIP);
		}
		return pass(CNT_PASSED);
	}

	if (proto == ETH_P_ARP) {
		struct arp_eth_ipv4 *arp = parse_arp(&cur, data_end);
		__u32 tpa;

		if (!arp)
			return pass(CNT_MALFORMED_L3);
		/* Proxy ARP is for the home link only, and for the active
		 * gateway only: a standby's answer would pull the VMs'
		 * traffic (and a shared virtual MAC) to its port. */
		if (port != PORT_LAN || !arp_is_eth_ipv4_request(arp) ||
		    cfg->role == ROLE_HOME_AGENT_BACKUP)
			return pass(CNT_PASSED);
		tpa = arp->tpa;
		if (bpf_map_lookup_elem(&bound_vms, &tpa))
			return steer(ctx, port, CNT_STEERED_ARP);
		return pass(CNT_PASSED);
	}

	return pass(CNT_PASSED);
}

/* The sources are MIT OR Apache-2.0; MIT is GPL-compatible, and declaring it
 * so keeps GPL-only helpers (bpf_printk while debugging) usable. */
char _license[] SEC("license") = "Dual MIT/GPL";
