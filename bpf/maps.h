/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Maps of the steering program. Their names are API: the loader finds them
 * by name (dataplane/src/loader.rs).
 */
#ifndef HOMEWARD_MAPS_H
#define HOMEWARD_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"

/* Bound VM home address -> care-of address (both IPv4, network byte order). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, DEFAULT_MAX_BINDINGS);
} bound_vms SEC(".maps");

/* Care-of address (network byte order) -> number of bindings using it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, DEFAULT_MAX_BINDINGS);
} care_ofs SEC(".maps");

/* port * MAX_QUEUES + rx queue -> AF_XDP socket. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, N_PORTS * MAX_QUEUES);
} xsks SEC(".maps");

/* [0]: LAN and WAN ifindex, to tell the ingress port. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct steer_config);
	__uint(max_entries, 1);
} config SEC(".maps");

/* enum steer_counter -> packets, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, CNT_MAX);
} counters SEC(".maps");

#endif /* HOMEWARD_MAPS_H */
