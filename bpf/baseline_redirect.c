// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * Benchmark baseline (b), the ceiling: forward every IPv4 frame from the
 * home agent's LAN veth to its WAN veth in the kernel, without
 * encapsulation: rewrite the Ethernet addresses and bpf_redirect_map()
 * through a DEVMAP. No lookup, no TTL: the least any forwarder does.
 * Anything else is passed to the kernel. Layouts mirrored in
 * benches/src/bpf.rs.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "baseline.h"

SEC("xdp")
int redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct fwd_config *cfg;
	__u32 zero = 0;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	cfg = bpf_map_lookup_elem(&fwd_cfg, &zero);
	if (!cfg)
		return XDP_ABORTED;
	__builtin_memcpy(eth->h_dest, cfg->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->src_mac, ETH_ALEN);
	return bpf_redirect_map(&tx_port, 0, 0);
}

char _license[] SEC("license") = "Dual MIT/GPL";
