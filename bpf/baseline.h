// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * Maps shared by the in-kernel benchmark baselines (baseline_redirect.c,
 * baseline_ipip.c): where to forward, and the device to forward to.
 * Layouts mirrored in benches/src/bpf.rs.
 */
#ifndef HOMEWARD_BASELINE_H
#define HOMEWARD_BASELINE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

struct fwd_config {
	__u8 dst_mac[ETH_ALEN]; /* next hop (the sink) */
	__u8 src_mac[ETH_ALEN]; /* the WAN veth */
	__be32 ha_addr; /* outer source (baseline_ipip.c only) */
};
_Static_assert(sizeof(struct fwd_config) == 16, "mirrored in benches/src/bpf.rs");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fwd_config);
	__uint(max_entries, 1);
} fwd_cfg SEC(".maps");

/* [0]: the WAN veth. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} tx_port SEC(".maps");

#endif
