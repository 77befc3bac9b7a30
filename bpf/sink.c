// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * homeward benchmark sink (benches/, not part of the data path).
 *
 * `sink` counts every frame (packets, bytes, per CPU) and drops it. With
 * `sink_cfg.latency` set it also finds the generator's payload header
 * (bpf/gen.c: magic, sequence, send time) behind Ethernet, IPv4 and UDP, or
 * behind an extra outer IPv4 header (IP-in-IP, as homeward sends it), and
 * adds now - send time to a log-linear histogram: values below 16 ns have a
 * bucket each; above, every power of two is split into 16 buckets
 * (resolution 1/16 = 6.25 %). benches/src/hist.rs has the same function and
 * turns the buckets into an hdrhistogram.
 *
 * `drop_all` only drops: the generator's sanity run into a peer that drops.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define GEN_MAGIC 0x48574247 /* "HWBG", bpf/gen.c */
#define SUB_BITS 4
#define SUB (1 << SUB_BITS)
#define N_BUCKETS 1024
#define IPPROTO_IPIP_ 4

struct gen_payload {
	__u32 magic;
	__u32 seq;
	__u64 ts_ns;
} __attribute__((packed));
_Static_assert(sizeof(struct gen_payload) == 16, "as in bpf/gen.c");

struct sink_config {
	__u32 latency; /* 1: histogram of payload timestamps */
	__u32 pad;
};

struct sink_stats {
	__u64 packets;
	__u64 bytes;
	__u64 stamped; /* timestamps put in the histogram */
	__u64 ipip; /* frames that were IP-in-IP */
};
_Static_assert(sizeof(struct sink_stats) == 32, "mirrored in benches/src/bpf.rs");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct sink_config);
	__uint(max_entries, 1);
} sink_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct sink_stats);
	__uint(max_entries, 1);
} sink_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, N_BUCKETS);
} sink_hist SEC(".maps");

/* Index of the highest set bit of v (v > 0). */
static __always_inline __u32 msb64(__u64 v)
{
	__u32 r = 0;

	if (v >> 32) {
		v >>= 32;
		r += 32;
	}
	if (v >> 16) {
		v >>= 16;
		r += 16;
	}
	if (v >> 8) {
		v >>= 8;
		r += 8;
	}
	if (v >> 4) {
		v >>= 4;
		r += 4;
	}
	if (v >> 2) {
		v >>= 2;
		r += 2;
	}
	if (v >> 1)
		r += 1;
	return r;
}

/* Same as bucket_of() in benches/src/hist.rs. */
static __always_inline __u32 bucket_of(__u64 v)
{
	__u32 m;

	if (v < SUB)
		return (__u32)v;
	m = msb64(v);
	return (m - SUB_BITS + 1) * SUB + (__u32)((v >> (m - SUB_BITS)) & (SUB - 1));
}

static __always_inline void record_latency(void *data, void *data_end, struct sink_stats *st)
{
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	struct gen_payload *pl;
	__u64 now, ts;
	__u32 idx;
	__u64 *slot;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl != 5)
		return;
	if (ip->protocol == IPPROTO_IPIP_) {
		st->ipip++;
		ip = ip + 1;
		if ((void *)(ip + 1) > data_end || ip->ihl != 5)
			return;
	}
	if (ip->protocol != IPPROTO_UDP)
		return;
	udp = (void *)(ip + 1);
	pl = (void *)(udp + 1);
	if ((void *)(pl + 1) > data_end || pl->magic != bpf_htonl(GEN_MAGIC))
		return;
	ts = pl->ts_ns;
	if (ts == 0)
		return;
	now = bpf_ktime_get_ns();
	idx = bucket_of(now > ts ? now - ts : 0);
	if (idx >= N_BUCKETS)
		idx = N_BUCKETS - 1;
	slot = bpf_map_lookup_elem(&sink_hist, &idx);
	if (slot)
		*slot += 1;
	st->stamped++;
}

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct sink_config *cfg;
	struct sink_stats *st;
	__u32 zero = 0;

	st = bpf_map_lookup_elem(&sink_stats, &zero);
	if (!st)
		return XDP_DROP;
	st->packets++;
	st->bytes += data_end - data;
	cfg = bpf_map_lookup_elem(&sink_cfg, &zero);
	if (cfg && cfg->latency)
		record_latency(data, data_end, st);
	return XDP_DROP;
}

SEC("xdp")
int drop_all(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char _license[] SEC("license") = "Dual MIT/GPL";
