/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Structures shared with userspace. The Rust loader mirrors each one with a
 * #[repr(C)] struct and a compile-time size assertion; so does this header.
 */
#ifndef HOMEWARD_STRUCTS_H
#define HOMEWARD_STRUCTS_H

#include <linux/types.h>
#include "consts.h"

/* Value of `config`[0], written by the loader before attach. */
struct steer_config {
	__u32 lan_ifindex; /* port 0 (the foreign agent's VM link) */
	__u32 wan_ifindex; /* port 1 (its uplink); equal to lan_ifindex in one-armed mode */
	__u32 role; /* ROLE_HOME_AGENT, ROLE_HOME_AGENT_BACKUP or ROLE_FOREIGN_AGENT */
	__be32 local_addr; /* foreign agent: its care-of address, the tunnels' end */
};
_Static_assert(sizeof(struct steer_config) == 16, "struct steer_config is mirrored in loader.rs");

/* 802.1Q tag, after the outer ethertype 0x8100. */
struct vlan_tag {
	__be16 tci;
	__be16 encapsulated_proto;
} __attribute__((packed));
_Static_assert(sizeof(struct vlan_tag) == 4, "802.1Q tag is 4 bytes");

/* ARP for Ethernet / IPv4 (RFC 826); addresses are unaligned, hence packed. */
struct arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));
_Static_assert(sizeof(struct arp_eth_ipv4) == 28, "ARP Ethernet/IPv4 body is 28 bytes");

#endif /* HOMEWARD_STRUCTS_H */
