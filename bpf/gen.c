// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * homeward benchmark traffic generator (benches/, not part of the data path).
 *
 * Run with BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES) on
 * the generator's veth: every XDP_TX transmits the frame to the veth's peer
 * (the device under test). The kernel recycles the frame pages with whatever
 * the receiver wrote into them, so the headers are rewritten on every run
 * from the template in `gen_cfg`.
 *
 * Frame: Ethernet + IPv4 + UDP (template, written by userspace with a valid
 * IPv4 checksum), then the payload header `struct gen_payload` (magic, a
 * sequence number and the send time in bpf_ktime_get_ns, 0 when not stamped).
 * The UDP source port varies over `flows` values so that the traffic has many
 * flows (veth picks the receive queue by the sending CPU, not by flow; real
 * NICs hash the ports). UDP checksum 0 (none).
 *
 * Destinations: with `vm_count` > 1 the IPv4 destination is the template's
 * plus an offset in [0, vm_count), a multiplicative hash of the sequence
 * number scaled to the count (every VM of the block gets traffic, in an
 * order that defeats the caches like real traffic to many VMs); the IPv4
 * checksum is updated incrementally (RFC 1624).
 *
 * Pacing: if `rate_pps` is set, a per-CPU token bucket; the clock is read
 * only when the credit is spent, and then only every `clock_mask + 1`
 * iterations (reading the clock every iteration is costly on this VM).
 * Iterations without credit return XDP_DROP (nothing is sent; the page goes
 * back to the pool). Layouts mirrored in benches/src/bpf.rs.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define GEN_MAGIC 0x48574247 /* "HWBG" */
#define HDR_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

struct gen_config {
	__u8 hdr[48]; /* Ethernet + IPv4 + UDP template, HDR_LEN (42) bytes used */
	__u64 rate_pps; /* per CPU; 0: as fast as possible */
	__u64 burst; /* largest credit, packets */
	__u32 clock_mask; /* read the clock every clock_mask + 1 iterations (power of two - 1) */
	__u32 flow_mask; /* source port = sport_base + (seq & flow_mask) */
	__u32 sport_base;
	__u32 stamp; /* 1: write bpf_ktime_get_ns into every sent payload */
	__u32 vm_count; /* destinations: template's .. + vm_count - 1; 0 or 1: one */
	__u32 _pad;
};
_Static_assert(sizeof(struct gen_config) == 88, "mirrored in benches/src/bpf.rs");

struct gen_state {
	__u64 sent; /* XDP_TX verdicts */
	__u64 bytes;
	__u64 paced; /* iterations without credit (XDP_DROP) */
	__u64 clock_reads;
	__u64 last_ns; /* time up to which credit was granted */
	__u64 credit;
	__u64 iter;
	__u64 short_frames; /* frames too short for the headers: XDP_ABORTED */
};
_Static_assert(sizeof(struct gen_state) == 64, "mirrored in benches/src/bpf.rs");

struct gen_payload {
	__u32 magic;
	__u32 seq;
	__u64 ts_ns;
} __attribute__((packed));
_Static_assert(sizeof(struct gen_payload) == 16, "mirrored in bpf/sink.c and benches/src/bpf.rs");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct gen_config);
	__uint(max_entries, 1);
} gen_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct gen_state);
	__uint(max_entries, 1);
} gen_stats SEC(".maps");

/* Grant credit for the time since st->last_ns; 0 if none is due yet. */
static __always_inline __u64 refill(struct gen_state *st, const struct gen_config *cfg)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 add;

	st->clock_reads++;
	if (st->last_ns == 0 || now < st->last_ns) {
		st->last_ns = now;
		return 1;
	}
	add = (now - st->last_ns) * cfg->rate_pps / 1000000000ULL;
	if (add == 0)
		return 0;
	if (add > cfg->burst) {
		/* Idle for long (a stall, or between runs): no catching up. */
		st->last_ns = now;
		return cfg->burst;
	}
	/* Keep the fraction of a packet not yet granted. */
	st->last_ns += add * 1000000000ULL / cfg->rate_pps;
	return add;
}

SEC("xdp")
int gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct gen_payload *pl;
	struct gen_config *cfg;
	struct gen_state *st;
	struct udphdr *udp;
	__u32 zero = 0;
	__u32 seq;

	cfg = bpf_map_lookup_elem(&gen_cfg, &zero);
	st = bpf_map_lookup_elem(&gen_stats, &zero);
	if (!cfg || !st)
		return XDP_ABORTED;

	st->iter++;
	if (cfg->rate_pps) {
		if (st->credit == 0) {
			if (st->iter & cfg->clock_mask) {
				st->paced++;
				return XDP_DROP;
			}
			st->credit = refill(st, cfg);
			if (st->credit == 0) {
				st->paced++;
				return XDP_DROP;
			}
		}
		st->credit--;
	}

	if (data + HDR_LEN + sizeof(*pl) > data_end) {
		st->short_frames++;
		return XDP_ABORTED;
	}
	__builtin_memcpy(data, cfg->hdr, HDR_LEN);
	seq = (__u32)st->sent;
	udp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	udp->source = bpf_htons((__u16)(cfg->sport_base + (seq & cfg->flow_mask)));
	if (cfg->vm_count > 1) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		/* Fibonacci hash of the sequence, scaled to the count. */
		__u32 off = (__u32)(((__u64)(seq * 2654435769U) * cfg->vm_count) >> 32);
		__u32 old = bpf_ntohl(ip->daddr);
		__u32 new = old + off;
		__u32 sum;

		ip->daddr = bpf_htonl(new);
		/* RFC 1624: HC' = ~(~HC + ~m + m'), 16-bit words. */
		sum = (~bpf_ntohs(ip->check) & 0xffff) + (~old >> 16 & 0xffff) +
		      (~old & 0xffff) + (new >> 16) + (new & 0xffff);
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		ip->check = bpf_htons(~sum & 0xffff);
	}
	pl = data + HDR_LEN;
	pl->magic = bpf_htonl(GEN_MAGIC);
	pl->seq = seq;
	pl->ts_ns = cfg->stamp ? bpf_ktime_get_ns() : 0;

	st->sent++;
	st->bytes += data_end - data;
	return XDP_TX;
}

char _license[] SEC("license") = "Dual MIT/GPL";
