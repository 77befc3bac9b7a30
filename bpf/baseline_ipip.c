// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * Benchmark baseline (c), katran-style: the home agent's encapsulation done
 * in the kernel by an XDP program. For an IPv4 frame whose destination is
 * in `bound_vms` (VM -> care-of, like the steering program's map): inner
 * TTL decremented (checksum updated incrementally, RFC 1624), 20 bytes of
 * headroom taken with bpf_xdp_adjust_head(), an outer IPv4 header written
 * (RFC 2003 §3.1: TOS and DF copied, TTL 64, protocol 4, HA -> care-of,
 * our own Identification), new Ethernet addresses, bpf_redirect_map()
 * through a DEVMAP to the WAN veth. Unbound or malformed: XDP_PASS.
 * Options, fragmentation and ICMP errors are not handled (homeward does).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define IPPROTO_IPIP_ 4

#include "baseline.h"

/* Bound VM home address -> care-of address, network byte order. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1 << 20); /* forward --vms up to 1M */
} bound_vms SEC(".maps");

/* Per-CPU Identification counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} ident SEC(".maps");

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

SEC("xdp")
int encap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data, *neth;
	struct iphdr *ip, *outer;
	struct fwd_config *cfg;
	__u32 zero = 0, *coa, *id, sum, dst;
	__u16 *w, inner_len, tos_df;
	__u8 tos;
	int i;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl != 5)
		return XDP_PASS;
	dst = ip->daddr;
	coa = bpf_map_lookup_elem(&bound_vms, &dst);
	if (!coa || ip->ttl <= 1)
		return XDP_PASS;
	cfg = bpf_map_lookup_elem(&fwd_cfg, &zero);
	id = bpf_map_lookup_elem(&ident, &zero);
	if (!cfg || !id)
		return XDP_ABORTED;

	/* Inner TTL - 1: the checksum word holding TTL goes down by 0x0100. */
	ip->ttl--;
	sum = (__u32)ip->check + (__u32)bpf_htons(0x0100);
	ip->check = (__u16)(sum + (sum >> 16));
	inner_len = bpf_ntohs(ip->tot_len);
	tos = ip->tos;
	tos_df = ip->frag_off & bpf_htons(0x4000);

	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	neth = data;
	outer = (void *)(neth + 1);
	if ((void *)(outer + 1) > data_end)
		return XDP_ABORTED;

	__builtin_memcpy(neth->h_dest, cfg->dst_mac, ETH_ALEN);
	__builtin_memcpy(neth->h_source, cfg->src_mac, ETH_ALEN);
	neth->h_proto = bpf_htons(ETH_P_IP);
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = tos;
	outer->tot_len = bpf_htons(inner_len + sizeof(struct iphdr));
	outer->id = bpf_htons((__u16)(*id)++);
	outer->frag_off = tos_df;
	outer->ttl = 64;
	outer->protocol = IPPROTO_IPIP_;
	outer->check = 0;
	outer->saddr = cfg->ha_addr;
	outer->daddr = *coa;
	w = (__u16 *)outer;
	sum = 0;
#pragma unroll
	for (i = 0; i < 10; i++)
		sum += w[i];
	outer->check = csum_fold(sum);
	return bpf_redirect_map(&tx_port, 0, 0);
}

char _license[] SEC("license") = "Dual MIT/GPL";
