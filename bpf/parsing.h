/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Bounds-checked header parsing. Each helper advances the cursor past the
 * header it returns, or returns NULL (cursor untouched) if the header does
 * not fit in the frame.
 */
#ifndef HOMEWARD_PARSING_H
#define HOMEWARD_PARSING_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"

struct hdr_cursor {
	void *pos;
};

/*
 * Ethernet header plus at most one 802.1Q tag. On success, *proto is the
 * ethertype of the payload (host byte order); a second tag is left in
 * place and reported as its ethertype (so it is not IPv4 or ARP).
 */
static __always_inline int parse_ethhdr(struct hdr_cursor *cur, void *data_end, __u16 *proto)
{
	struct ethhdr *eth = cur->pos;
	void *pos = cur->pos;
	__u16 type;

	if ((void *)(eth + 1) > data_end)
		return -1;
	pos = eth + 1;
	type = bpf_ntohs(eth->h_proto);

	if (type == ETH_P_8021Q) {
		struct vlan_tag *tag = pos;

		if ((void *)(tag + 1) > data_end)
			return -1;
		pos = tag + 1;
		type = bpf_ntohs(tag->encapsulated_proto);
	}

	cur->pos = pos;
	*proto = type;
	return 0;
}

/*
 * IPv4 header: version 4, IHL >= 5 and the whole header (options included)
 * inside the frame.
 */
static __always_inline struct iphdr *parse_iphdr(struct hdr_cursor *cur, void *data_end)
{
	struct iphdr *iph = cur->pos;
	__u32 hdr_len;

	if ((void *)(iph + 1) > data_end)
		return NULL;
	if (iph->version != 4)
		return NULL;
	hdr_len = iph->ihl * 4;
	if (hdr_len < sizeof(*iph))
		return NULL;
	if (cur->pos + hdr_len > data_end)
		return NULL;

	cur->pos += hdr_len;
	return iph;
}

/* ARP body long enough for Ethernet/IPv4 (28 bytes); fields not checked here. */
static __always_inline struct arp_eth_ipv4 *parse_arp(struct hdr_cursor *cur, void *data_end)
{
	struct arp_eth_ipv4 *arp = cur->pos;

	if ((void *)(arp + 1) > data_end)
		return NULL;
	cur->pos = arp + 1;
	return arp;
}

/* An ARP request for Ethernet hardware and IPv4 protocol addresses. */
static __always_inline int arp_is_eth_ipv4_request(const struct arp_eth_ipv4 *arp)
{
	return arp->htype == bpf_htons(ARPHRD_ETHER_) && arp->ptype == bpf_htons(ETH_P_IP) &&
	       arp->hlen == ETH_ALEN && arp->plen == 4 && arp->oper == bpf_htons(ARPOP_REQUEST_);
}

#endif /* HOMEWARD_PARSING_H */
