// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * Benchmark baseline (d): a minimal AF_XDP forwarder in C doing homeward's
 * fast path and nothing else, in the spirit of the kernel's xdpsock l2fwd
 * sample. Per queue: one UMEM shared by an RX socket on the LAN interface
 * and a TX socket on the WAN interface (as homeward does), so a frame is
 * encapsulated in place and sent without a copy in userspace; copy mode
 * (veth has no zero-copy); libxdp's default XDP program steers every frame
 * of the queue to the socket. For an IPv4 frame to a bound VM: inner TTL
 * decremented, outer IPv4 header (RFC 2003: TOS and DF copied, TTL 64,
 * protocol 4, HA -> care-of, our own Identification), Ethernet addresses
 * of the next hop, out the WAN socket. Everything else is dropped and
 * counted by reason (a real forwarder would pass some to the kernel; the
 * benchmark sends none). Options, fragmentation and ICMP errors are not
 * handled (homeward does).
 *
 * Usage: xsk_fwd --lan IF --wan IF --ha ADDR --src-mac MAC --dst-mac MAC
 *                --bind VM=CARE_OF [--bind ...] [--queues N] [--mtu N]
 *                [--cpus C0,C1,...] [--encap-hex] [--no-encap]
 * Runs until SIGINT/SIGTERM, then prints its counters on stdout.
 * --no-encap: every frame out the WAN socket as received, no lookup or
 * rewrite (the harness's (n)): what copy-mode AF_XDP forwarding costs with
 * no work in userspace, the ceiling of any AF_XDP forwarder on the link.
 * --encap-hex: no sockets; encapsulates each hex-encoded frame read from
 * stdin and prints the result in hex (or "drop REASON"): the byte test
 * against homeward (benches/tests/bpf_programs.rs).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xdp/xsk.h>

#define MAX_QUEUES 16
#define BATCH 64 /* frames per ring operation, like homeward */
#define FRAME_SIZE 2048 /* 256 B XDP headroom + 1514 B frame + 20 B outer header fit */
#define NUM_FRAMES 8192 /* per queue, like homeward */
#define RING_SIZE 2048
#define OUTER_LEN 20
#define HASH_SLOTS 1024 /* power of two; bindings at most HASH_SLOTS / 2 */

/* Why a frame was dropped; names printed on exit. */
enum drop_reason {
	DROP_SHORT,
	DROP_NOT_IPV4,
	DROP_BAD_HEADER, /* not version 4, options, length mismatch */
	DROP_UNBOUND,
	DROP_TTL,
	DROP_TOO_BIG, /* would exceed the tunnel MTU */
	DROP_TX_RING_FULL,
	DROP_REASONS,
};
static const char *const drop_names[DROP_REASONS] = {
	"short", "not_ipv4", "bad_header", "unbound", "ttl_expired", "too_big", "tx_ring_full",
};

/* Bound VM -> care-of, both network byte order: open addressing, linear
 * probing, 0.0.0.0 marks a free slot (never a VM's address). */
struct bindings {
	uint32_t vm[HASH_SLOTS];
	uint32_t coa[HASH_SLOTS];
	unsigned count;
};

static unsigned slot_of(uint32_t key)
{
	return (key * 2654435761u) >> (32 - 10); /* Fibonacci hashing, 10 = log2(HASH_SLOTS) */
}

static int bindings_add(struct bindings *b, uint32_t vm, uint32_t coa)
{
	unsigned i = slot_of(vm);

	if (vm == 0 || b->count >= HASH_SLOTS / 2)
		return -1;
	while (b->vm[i] != 0 && b->vm[i] != vm)
		i = (i + 1) & (HASH_SLOTS - 1);
	if (b->vm[i] == 0)
		b->count++;
	b->vm[i] = vm;
	b->coa[i] = coa;
	return 0;
}

static uint32_t bindings_find(const struct bindings *b, uint32_t vm)
{
	unsigned i = slot_of(vm);

	/* The table is at most half full: a free slot ends every probe. */
	while (b->vm[i] != 0) {
		if (b->vm[i] == vm)
			return b->coa[i];
		i = (i + 1) & (HASH_SLOTS - 1);
	}
	return 0;
}

struct config {
	const char *lan, *wan;
	unsigned queues;
	uint32_t ha_addr; /* outer source, network byte order */
	uint8_t src_mac[ETH_ALEN], dst_mac[ETH_ALEN];
	unsigned mtu; /* tunnel MTU: outer packet at most this long */
	int cpus[MAX_QUEUES];
	unsigned ncpus;
	struct bindings bindings;
	int no_encap; /* --no-encap: out as received (the harness's (n)) */
};

static uint16_t get16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return v;
}

static void put16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, 2);
}

/*
 * Encapsulates the frame at `pkt` (`len` bytes; at least OUTER_LEN bytes
 * of headroom before it). Returns the length of the new frame, which
 * starts at pkt - OUTER_LEN, or -1 - reason. Pure: touches only the frame
 * and *ident. Byte for byte what baseline_ipip.c and homeward produce.
 */
static int encap(const struct config *c, uint8_t *pkt, uint32_t len, uint16_t *ident)
{
	uint8_t *ip = pkt + ETH_HLEN, *out = pkt - OUTER_LEN, *oip = out + ETH_HLEN;
	uint32_t sum, coa, dst;
	uint16_t tot_len;
	int i;

	if (len < ETH_HLEN + 20)
		return -1 - DROP_SHORT;
	if (get16(pkt + 12) != htons(ETH_P_IP))
		return -1 - DROP_NOT_IPV4;
	tot_len = ntohs(get16(ip + 2));
	if (ip[0] != 0x45 || tot_len < 20 || tot_len > len - ETH_HLEN)
		return -1 - DROP_BAD_HEADER;
	memcpy(&dst, ip + 16, 4);
	coa = bindings_find(&c->bindings, dst);
	if (!coa)
		return -1 - DROP_UNBOUND;
	if (ip[8] <= 1)
		return -1 - DROP_TTL;
	if (tot_len + OUTER_LEN > c->mtu)
		return -1 - DROP_TOO_BIG;

	/* Inner TTL - 1: the checksum word holding TTL goes up by 0x0100
	 * (RFC 1624), in network byte order, with end-around carry. */
	ip[8]--;
	sum = (uint32_t)get16(ip + 10) + htons(0x0100);
	put16(ip + 10, (uint16_t)(sum + (sum >> 16)));

	/* The outer IP header overlaps the old Ethernet header (read above),
	 * the new Ethernet header lies in the headroom. */
	memcpy(out, c->dst_mac, ETH_ALEN);
	memcpy(out + ETH_ALEN, c->src_mac, ETH_ALEN);
	put16(out + 12, htons(ETH_P_IP));
	oip[0] = 0x45;
	oip[1] = ip[1]; /* TOS copied */
	put16(oip + 2, htons(tot_len + OUTER_LEN));
	put16(oip + 4, htons((*ident)++));
	put16(oip + 6, get16(ip + 6) & htons(0x4000)); /* DF copied */
	oip[8] = 64;
	oip[9] = IPPROTO_IPIP;
	put16(oip + 10, 0);
	memcpy(oip + 12, &c->ha_addr, 4);
	memcpy(oip + 16, &coa, 4);
	sum = 0;
	for (i = 0; i < 20; i += 2)
		sum += get16(oip + i);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	put16(oip + 10, (uint16_t)~sum);
	/* Ethernet padding of the inner frame is not carried. */
	return ETH_HLEN + OUTER_LEN + tot_len;
}

/* One queue: its UMEM, the LAN socket (RX) and the WAN socket (TX). */
struct queue {
	const struct config *cfg;
	unsigned id;
	void *area;
	struct xsk_umem *umem;
	struct xsk_ring_prod fill; /* LAN socket's (the UMEM's) */
	struct xsk_ring_cons comp_unused; /* the UMEM's, LAN never transmits */
	struct xsk_ring_prod fill_unused; /* WAN's, WAN never receives */
	struct xsk_ring_cons comp; /* WAN socket's */
	struct xsk_ring_cons rx;
	struct xsk_ring_prod tx;
	struct xsk_socket *lan, *wan;
	/* Frames owned by userspace (not in any ring). */
	uint64_t free[NUM_FRAMES];
	unsigned nfree;
	uint64_t rx_packets, tx_packets, kick_errors, drops[DROP_REASONS];
	pthread_t thread;
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "xsk_fwd: %s: %s\n", what, strerror(err));
	exit(1);
}

static int open_queue(struct queue *q)
{
	struct xsk_umem_config ucfg = {
		.fill_size = RING_SIZE,
		.comp_size = RING_SIZE,
		.frame_size = FRAME_SIZE,
		.frame_headroom = 0, /* copy mode leaves XDP's 256 bytes before the data */
	};
	struct xsk_socket_config scfg = {
		.rx_size = RING_SIZE,
		.tx_size = RING_SIZE,
		.xdp_flags = XDP_FLAGS_DRV_MODE, /* veth's native XDP, as homeward */
		.bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP,
	};
	unsigned i;
	int err;

	q->area = mmap(NULL, (size_t)NUM_FRAMES * FRAME_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (q->area == MAP_FAILED)
		die("mmap", errno);
	err = xsk_umem__create(&q->umem, q->area, (uint64_t)NUM_FRAMES * FRAME_SIZE, &q->fill,
			       &q->comp_unused, &ucfg);
	if (err)
		die("xsk_umem__create", -err);
	/* LAN: receive; libxdp loads (or shares) its default program. */
	err = xsk_socket__create(&q->lan, q->cfg->lan, q->id, q->umem, &q->rx, NULL, &scfg);
	if (err)
		die("xsk_socket__create (LAN)", -err);
	/* WAN: transmit only, same UMEM (its own fill and completion rings,
	 * as a second device requires); no XDP program there. */
	scfg.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD;
	err = xsk_socket__create_shared(&q->wan, q->cfg->wan, q->id, q->umem, NULL, &q->tx,
					&q->fill_unused, &q->comp, &scfg);
	if (err)
		die("xsk_socket__create_shared (WAN)", -err);

	/* Half the frames to the fill ring, the rest kept for later refills. */
	for (i = 0; i < NUM_FRAMES; i++)
		q->free[i] = (uint64_t)i * FRAME_SIZE;
	q->nfree = NUM_FRAMES;
	return 0;
}

/* Gives free frames to the kernel's fill ring, as many as fit. */
static void refill(struct queue *q)
{
	uint32_t idx, n = xsk_prod_nb_free(&q->fill, q->nfree);

	if (n > q->nfree)
		n = q->nfree;
	if (!n || xsk_ring_prod__reserve(&q->fill, n, &idx) != n)
		return;
	for (uint32_t i = 0; i < n; i++)
		*xsk_ring_prod__fill_addr(&q->fill, idx + i) = q->free[--q->nfree];
	xsk_ring_prod__submit(&q->fill, n);
}

/* Takes back the frames the WAN socket has sent. */
static void recycle_completions(struct queue *q)
{
	uint32_t idx, n = xsk_ring_cons__peek(&q->comp, RING_SIZE, &idx);

	for (uint32_t i = 0; i < n; i++) {
		/* We sent from inside the frame (headroom taken): its start. */
		uint64_t addr = *xsk_ring_cons__comp_addr(&q->comp, idx + i);
		q->free[q->nfree++] = addr & ~(uint64_t)(FRAME_SIZE - 1);
	}
	if (n)
		xsk_ring_cons__release(&q->comp, n);
}

/* In copy mode transmission happens in sendto(), at most 32 frames per
 * call (the kernel's TX_BATCH_SIZE; EAGAIN says there is more). */
static void kick_tx(struct queue *q)
{
	for (int tries = 0; tries < BATCH / 32 + 2; tries++) {
		if (sendto(xsk_socket__fd(q->wan), NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
			return;
		if (errno == EAGAIN)
			continue;
		/* ENOBUFS, EBUSY: the device is busy, the frames stay queued. */
		if (errno != ENOBUFS && errno != EBUSY && errno != ENETDOWN)
			q->kick_errors++;
		return;
	}
}

static void *worker(void *arg)
{
	struct queue *q = arg;
	const struct config *c = q->cfg;
	uint16_t ident = 0;
	struct pollfd pfd = { .fd = xsk_socket__fd(q->lan), .events = POLLIN };
	char name[16];

	/* Named like homeward's workers, for ps and the harness. */
	snprintf(name, sizeof(name), "xsk_fwd-q%u", q->id);
	pthread_setname_np(pthread_self(), name);
	if (c->ncpus) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(c->cpus[q->id % c->ncpus], &set);
		/* An unpinned run would not be the comparison asked for. */
		int err = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
		if (err)
			die("pinning the worker (--cpus)", err);
	}
	while (!stop) {
		uint32_t idx_rx, idx_tx = 0, rcvd, ntx = 0, room;
		struct xdp_desc out[BATCH];

		recycle_completions(q);
		refill(q);
		rcvd = xsk_ring_cons__peek(&q->rx, BATCH, &idx_rx);
		if (!rcvd) {
			/* Idle: sleep until frames arrive (homeward does too). */
			if (xsk_ring_prod__needs_wakeup(&q->tx))
				kick_tx(q);
			poll(&pfd, 1, 100);
			continue;
		}
		q->rx_packets += rcvd;
		for (uint32_t i = 0; i < rcvd; i++) {
			const struct xdp_desc *d = xsk_ring_cons__rx_desc(&q->rx, idx_rx + i);
			uint8_t *pkt = xsk_umem__get_data(q->area, d->addr);
			int n;

			if (c->no_encap) {
				/* What AF_XDP forwarding costs with no work in userspace. */
				out[ntx++] = *d;
				continue;
			}
			n = encap(c, pkt, d->len, &ident);

			if (n < 0) {
				q->drops[-1 - n]++;
				q->free[q->nfree++] = d->addr & ~(uint64_t)(FRAME_SIZE - 1);
				continue;
			}
			out[ntx].addr = d->addr - OUTER_LEN; /* the headroom taken */
			out[ntx].len = (uint32_t)n;
			out[ntx].options = 0;
			ntx++;
		}
		xsk_ring_cons__release(&q->rx, rcvd);
		if (!ntx)
			continue;
		room = xsk_ring_prod__reserve(&q->tx, ntx, &idx_tx);
		for (uint32_t i = 0; i < ntx; i++) {
			if (i < room) {
				*xsk_ring_prod__tx_desc(&q->tx, idx_tx + i) = out[i];
			} else {
				q->drops[DROP_TX_RING_FULL]++;
				q->free[q->nfree++] = out[i].addr & ~(uint64_t)(FRAME_SIZE - 1);
			}
		}
		if (room) {
			xsk_ring_prod__submit(&q->tx, room);
			q->tx_packets += room;
		}
		if (xsk_ring_prod__needs_wakeup(&q->tx))
			kick_tx(q);
	}
	return NULL;
}

static void print_stats(struct queue *qs, unsigned n)
{
	uint64_t rx = 0, tx = 0, kick = 0, drops[DROP_REASONS] = { 0 };
	uint64_t k_rx_dropped = 0, k_ring_full = 0, k_fill_empty = 0, k_tx_invalid = 0;

	for (unsigned i = 0; i < n; i++) {
		struct xdp_statistics s;
		socklen_t len = sizeof(s);

		rx += qs[i].rx_packets;
		tx += qs[i].tx_packets;
		kick += qs[i].kick_errors;
		for (int r = 0; r < DROP_REASONS; r++)
			drops[r] += qs[i].drops[r];
		/* The kernel's drops: ring full, no free frame to receive into. */
		if (!getsockopt(xsk_socket__fd(qs[i].lan), SOL_XDP, XDP_STATISTICS, &s, &len)) {
			k_rx_dropped += s.rx_dropped;
			k_ring_full += s.rx_ring_full;
			k_fill_empty += s.rx_fill_ring_empty_descs;
		}
		len = sizeof(s);
		if (!getsockopt(xsk_socket__fd(qs[i].wan), SOL_XDP, XDP_STATISTICS, &s, &len))
			k_tx_invalid += s.tx_invalid_descs;
	}
	printf("xsk_fwd: rx %llu tx %llu; drops:", (unsigned long long)rx, (unsigned long long)tx);
	for (int r = 0; r < DROP_REASONS; r++)
		printf(" %s=%llu", drop_names[r], (unsigned long long)drops[r]);
	printf("; kernel: rx_dropped=%llu rx_ring_full=%llu fill_ring_empty=%llu tx_invalid=%llu; "
	       "tx kick errors %llu\n",
	       (unsigned long long)k_rx_dropped, (unsigned long long)k_ring_full,
	       (unsigned long long)k_fill_empty, (unsigned long long)k_tx_invalid,
	       (unsigned long long)kick);
	fflush(stdout);
}

static int parse_mac(const char *s, uint8_t *mac)
{
	return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
		      &mac[4], &mac[5]) == 6
		       ? 0
		       : -1;
}

static int hexval(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* --encap-hex: one frame per input line, in hex; no sockets, no root. */
static int encap_hex(const struct config *c)
{
	static char line[2 * FRAME_SIZE + 2];
	static uint8_t buf[FRAME_SIZE];
	uint16_t ident = 0;

	while (fgets(line, sizeof(line), stdin)) {
		uint8_t *pkt = buf + 256; /* headroom, as XDP leaves */
		uint32_t len = 0;
		int n;

		for (char *p = line; hexval(p[0]) >= 0 && hexval(p[1]) >= 0; p += 2) {
			if (len >= FRAME_SIZE - 256)
				return 1;
			pkt[len++] = (uint8_t)(hexval(p[0]) << 4 | hexval(p[1]));
		}
		n = encap(c, pkt, len, &ident);
		if (n < 0) {
			printf("drop %s\n", drop_names[-1 - n]);
			continue;
		}
		for (int i = 0; i < n; i++)
			printf("%02x", pkt[i - OUTER_LEN]);
		printf("\n");
	}
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: xsk_fwd --lan IF --wan IF --ha ADDR --src-mac MAC --dst-mac MAC "
			"--bind VM=CARE_OF [--queues N] [--mtu N] [--cpus C,...] [--encap-hex] [--no-encap]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static struct config c = { .queues = 1, .mtu = 1500 };
	static struct queue qs[MAX_QUEUES];
	static const struct option opts[] = {
		{ "lan", required_argument, NULL, 'l' },  { "wan", required_argument, NULL, 'w' },
		{ "ha", required_argument, NULL, 'a' },	  { "src-mac", required_argument, NULL, 's' },
		{ "dst-mac", required_argument, NULL, 'd' }, { "bind", required_argument, NULL, 'b' },
		{ "queues", required_argument, NULL, 'q' }, { "mtu", required_argument, NULL, 'm' },
		{ "cpus", required_argument, NULL, 'c' }, { "encap-hex", no_argument, NULL, 'x' },
		{ "no-encap", no_argument, NULL, 'n' }, { 0 },
	};
	int opt, hex = 0, have_ha = 0, have_macs = 0;
	unsigned i;

	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		char *eq, *tok, *save;
		struct in_addr vm, coa;

		switch (opt) {
		case 'l':
			c.lan = optarg;
			break;
		case 'w':
			c.wan = optarg;
			break;
		case 'a':
			if (inet_pton(AF_INET, optarg, &c.ha_addr) != 1)
				usage();
			have_ha = 1;
			break;
		case 's':
			if (parse_mac(optarg, c.src_mac))
				usage();
			have_macs |= 1;
			break;
		case 'd':
			if (parse_mac(optarg, c.dst_mac))
				usage();
			have_macs |= 2;
			break;
		case 'b':
			eq = strchr(optarg, '=');
			if (!eq)
				usage();
			*eq = 0;
			if (inet_pton(AF_INET, optarg, &vm) != 1 || inet_pton(AF_INET, eq + 1, &coa) != 1 ||
			    bindings_add(&c.bindings, vm.s_addr, coa.s_addr))
				usage();
			break;
		case 'q':
			c.queues = (unsigned)atoi(optarg);
			if (c.queues < 1 || c.queues > MAX_QUEUES)
				usage();
			break;
		case 'm':
			c.mtu = (unsigned)atoi(optarg);
			break;
		case 'c':
			for (tok = strtok_r(optarg, ",", &save); tok && c.ncpus < MAX_QUEUES;
			     tok = strtok_r(NULL, ",", &save))
				c.cpus[c.ncpus++] = atoi(tok);
			break;
		case 'x':
			hex = 1;
			break;
		case 'n':
			c.no_encap = 1;
			break;
		default:
			usage();
		}
	}
	if (!have_ha || have_macs != 3 || !c.bindings.count)
		usage();
	if (hex)
		return encap_hex(&c);
	if (!c.lan || !c.wan)
		usage();

	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	/* Sockets opened one after the other: libxdp loads the LAN program
	 * with the first and adds the others to its map. */
	for (i = 0; i < c.queues; i++) {
		qs[i].cfg = &c;
		qs[i].id = i;
		open_queue(&qs[i]);
	}
	for (i = 0; i < c.queues; i++) {
		int err = pthread_create(&qs[i].thread, NULL, worker, &qs[i]);

		if (err)
			die("pthread_create", err);
	}
	printf("xsk_fwd: forwarding %s -> %s, %u queue(s)\n", c.lan, c.wan, c.queues);
	fflush(stdout);
	for (i = 0; i < c.queues; i++)
		pthread_join(qs[i].thread, NULL);
	print_stats(qs, c.queues);
	for (i = 0; i < c.queues; i++) {
		xsk_socket__delete(qs[i].wan);
		xsk_socket__delete(qs[i].lan);
		xsk_umem__delete(qs[i].umem);
	}
	return 0;
}
