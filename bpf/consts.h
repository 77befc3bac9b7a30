/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Constants shared by the steering program and, by hand, the Rust loader
 * (dataplane/src/loader.rs mirrors every value here; keep them in sync).
 */
#ifndef HOMEWARD_CONSTS_H
#define HOMEWARD_CONSTS_H

/* XSKMAP key = port * MAX_QUEUES + rx queue. */
#define MAX_QUEUES 64
#define PORT_LAN 0
#define PORT_WAN 1
#define N_PORTS 2

/* steer_config.role */
#define ROLE_HOME_AGENT 0
#define ROLE_FOREIGN_AGENT 1
/* A home agent on standby (VRRP backup): forwards what reaches it, answers no ARP. */
#define ROLE_HOME_AGENT_BACKUP 2

/* Default size of bound_vms and care_ofs; the loader resizes both before load. */
#define DEFAULT_MAX_BINDINGS 65536

/* ETH_ALEN, ETH_P_IP, ETH_P_ARP, ETH_P_8021Q */
#include <linux/if_ether.h>

#define IPPROTO_IPIP_ 4 /* IPv4-in-IPv4 (RFC 2003) */

#define ARPHRD_ETHER_ 1
#define ARPOP_REQUEST_ 1

/*
 * Index into the `counters` PERCPU_ARRAY. One per outcome.
 *
 * The three STEERED_* counters count what was classified as ours; each
 * such frame was handed to the AF_XDP socket unless NO_SOCKET was also
 * counted for it (then it went to the kernel with XDP_PASS).
 * Every frame increments exactly one of STEERED_*, PASSED, MALFORMED_L2,
 * MALFORMED_L3, UNKNOWN_INGRESS, DROPPED_IPIP.
 */
enum steer_counter {
	CNT_STEERED_IPV4 = 0, /* IPv4 to a bound VM address */
	CNT_STEERED_ARP = 1, /* ARP request for a bound VM address, LAN ingress */
	CNT_STEERED_IPIP = 2, /* IPIP whose outer source is a bound care-of address */
	CNT_PASSED = 3, /* well formed, not ours: XDP_PASS */
	CNT_NO_SOCKET = 4, /* steered but no AF_XDP socket at the XSKMAP key: XDP_PASS */
	CNT_MALFORMED_L2 = 5, /* truncated Ethernet / 802.1Q header: XDP_PASS */
	CNT_MALFORMED_L3 = 6, /* truncated or invalid IPv4 / ARP header: XDP_PASS */
	CNT_UNKNOWN_INGRESS = 7, /* ingress ifindex is neither LAN nor WAN: XDP_PASS */
	CNT_DROPPED_IPIP = 8, /* foreign agent: IPIP to it not from a served VM's home agent: XDP_DROP */
	CNT_MAX = 9,
};

#endif /* HOMEWARD_CONSTS_H */
