// SPDX-License-Identifier: MIT
/*
 * The kernel fast path for UDP ChannelData (RFC 8656 section 12.4): a TC
 * (clsact ingress) program that relays ChannelData between UDP TURN
 * clients and their peers without the packets reaching turnrelay.
 *
 * turnrelay stays the control plane: it fills to_peer and to_client (the
 * layout is turnrelay/offload/entries.py's, byte for byte) for the
 * channels it has bound, and deletes the entries when they go.  What has
 * no entry, or is anything this program does not rewrite exactly (IP
 * options, fragments, an expiring TTL, padded ChannelData), is passed up
 * untouched, so user space keeps handling it as it always did.
 *
 * Client to peer: strip the 4-byte ChannelData header and send the data
 * from the relayed address to the peer.  Peer to client: wrap the datagram
 * in a ChannelData header and send it from the server address the client
 * uses to the client.  Both rewrite addresses, ports, lengths and a fresh
 * TTL of 64, and forward with a FIB lookup and a redirect, as a router
 * would.
 *
 * The same relaying at XDP (turnrelay_xdp, for offload = xdp) shares the
 * maps, the parsing and the header arithmetic; it moves the headers itself
 * (bpf_xdp_adjust_head) where TC has bpf_skb_adjust_room, and passes up
 * (XDP_PASS) what TC passes on, and also what has no neighbour entry yet.
 *
 * Build: make offload (clang -O2 -g -target bpf).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10

/* The map entries: turnrelay/offload/entries.py packs them. */
struct client_key {
	__u8 family; /* 4 or 6 */
	__u8 pad;
	__be16 channel;
	__be16 client_port;
	__be16 server_port;
	__u8 client_addr[16]; /* IPv4 in the first 4, the rest zero */
	__u8 server_addr[16];
};

struct to_peer {
	__u8 relay_addr[16];
	__u8 peer_addr[16];
	__be16 relay_port;
	__be16 peer_port;
	__u32 pad;
	__u64 packets; /* host order: this program adds to them */
	__u64 bytes;
};

struct peer_key {
	__u8 family;
	__u8 pad[3];
	__be16 relay_port;
	__be16 peer_port;
	__u8 relay_addr[16];
	__u8 peer_addr[16];
};

struct to_client {
	__u8 client_addr[16];
	__u8 server_addr[16];
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 pad;
	__u64 packets;
	__u64 bytes;
};

_Static_assert(sizeof(struct client_key) == 40, "client_key is 40 bytes");
_Static_assert(sizeof(struct to_peer) == 56, "to_peer is 56 bytes");
_Static_assert(sizeof(struct peer_key) == 40, "peer_key is 40 bytes");
_Static_assert(sizeof(struct to_client) == 56, "to_client is 56 bytes");

/* The indexes of stats: bpf.py's STATS names them in this order. */
enum {
	STAT_TO_PEER = 0,      /* ChannelData relayed from a client to its peer */
	STAT_TO_CLIENT = 1,    /* datagrams relayed from a peer to its client */
	STAT_NOT_OURS = 2,     /* passed up: no entry, or not UDP over IP */
	STAT_UNSUPPORTED = 3,  /* passed up: what is not rewritten exactly */
	STAT_REDIRECT_FAILED = 4, /* no route, or the redirect was refused */
	STAT_COUNT = 5,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct client_key);
	__type(value, struct to_peer);
	__uint(max_entries, 65536);
} to_peer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct peer_key);
	__type(value, struct to_client);
	__uint(max_entries, 65536);
} to_client SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_COUNT);
} stats SEC(".maps");

/*
 * Set by the loader before loading, for BPF_PROG_TEST_RUN only: there is
 * no device to route to, so the rewritten packet is returned as it is
 * (with TC_ACT_REDIRECT) instead of being looked up and redirected.  The
 * only variable in .rodata: the loader relies on it being at offset 0.
 */
const volatile __u8 test_mode = 0;

#define ETH_LEN 14
#define IP4_LEN 20
#define IP6_LEN 40
#define UDP_LEN 8
#define CD_LEN 4
#define FRESH_TTL 64
/* More fragments, and the fragment offset. */
#define IP_MF_OFFSET 0x3fff

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&stats, &index);

	if (value)
		*value += 1; /* per CPU: no other writer */
}

static __always_inline int pass(__u32 index)
{
	count(index);
	/* TCX_NEXT: let the next program on the interface see it (another
	 * worker's, or another relay's), then the stack. */
	return TC_ACT_UNSPEC;
}

/* Sum the 16-bit words of n bytes in memory order (checksums are
 * byte-order independent if read and written the same way). */
static __always_inline __u32 sum16(const void *p, int n)
{
	const __u16 *w = p;
	__u32 s = 0;

#pragma unroll
	for (int i = 0; i < n / 2; i++)
		s += w[i];
	return s;
}

static __always_inline __u16 fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/*
 * RFC 1624 eqn. 3: the UDP checksum after the words summing to removed
 * were taken out of its coverage and those summing to added put in.  The
 * payload is the same bytes at the same (even) alignment, so only the
 * pseudo-header, the UDP header and the ChannelData header change.
 */
static __always_inline __u16 udp_csum_update(__u16 old, __u32 removed, __u32 added)
{
	__u64 acc = (__u16)~old;
	__u16 result;

	acc += (__u16)~fold(removed);
	acc += added;
	result = ~fold(acc);
	/* 0 means "no checksum" in UDP: send the other zero. */
	return result ? result : 0xffff;
}

/*
 * Route the rewritten packet (source src, destination dst, len bytes of
 * IP) before anything is changed, so that a packet without a route can
 * still be passed up untouched.  Fills the MAC addresses (or leaves
 * neighbour resolution to bpf_redirect_neigh) and the egress device.
 *
 * @return: 0 when it can be sent, -1 to pass the packet up.
 */
struct route {
	__u32 ifindex;
	__u8 macs[12]; /* destination, source: the Ethernet header's order */
	__u8 resolve; /* no neighbour entry yet: bpf_redirect_neigh */
	struct bpf_redir_neigh nexthop;
};

static __always_inline int route(void *ctx, __u32 ifindex, int family, const __u8 *src,
				 const __u8 *dst, __be16 sport, __be16 dport, __u16 len,
				 struct route *r)
{
	struct bpf_fib_lookup fib = {};
	long rc;

	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = sport;
	fib.dport = dport;
	fib.tot_len = len;
	fib.ifindex = ifindex;
	if (family == 4) {
		fib.family = AF_INET;
		__builtin_memcpy(&fib.ipv4_src, src, 4);
		__builtin_memcpy(&fib.ipv4_dst, dst, 4);
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, src, 16);
		__builtin_memcpy(fib.ipv6_dst, dst, 16);
	}
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(r->macs, fib.dmac, 6);
		__builtin_memcpy(r->macs + 6, fib.smac, 6);
		r->resolve = 0;
	} else if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* The lookup left the next hop in the destination. */
		r->resolve = 1;
		if (family == 4) {
			r->nexthop.nh_family = AF_INET;
			r->nexthop.ipv4_nh = fib.ipv4_dst;
		} else {
			r->nexthop.nh_family = AF_INET6;
			__builtin_memcpy(r->nexthop.ipv6_nh, fib.ipv6_dst, 16);
		}
	} else {
		return -1;
	}
	r->ifindex = fib.ifindex;
	return 0;
}

/* Send the rewritten packet where route() said. */
static __always_inline int send(struct __sk_buff *skb, struct route *r, __u32 index)
{
	long rc;

	if (r->resolve) {
		rc = bpf_redirect_neigh(r->ifindex, &r->nexthop, sizeof(r->nexthop), 0);
	} else {
		/* Not part of skb->csum (which starts at the IP header). */
		if (bpf_skb_store_bytes(skb, 0, r->macs, sizeof(r->macs), 0))
			goto failed;
		rc = bpf_redirect(r->ifindex, 0);
	}
	if (rc != TC_ACT_REDIRECT)
		goto failed;
	count(index);
	return TC_ACT_REDIRECT;
failed:
	/* Already rewritten: it cannot go up any more. */
	count(STAT_REDIRECT_FAILED);
	return TC_ACT_SHOT;
}

/*
 * The parts of an IPv4 or IPv6 UDP datagram both directions need, read
 * before anything moves.
 */
struct datagram {
	int family; /* 4 or 6 */
	__u32 l3_len; /* IP header */
	__u16 udp_len; /* UDP header and payload */
	union {
		struct iphdr ip4;
		struct ipv6hdr ip6;
	};
	struct udphdr udp;
	__be16 cd[2]; /* the first 4 bytes of the payload, when there are */
};

/* The sum of d's pseudo-header (addresses, protocol, UDP length), in the
 * memory order sum16 reads, unfolded. */
static __always_inline __u32 pseudo_sum(const struct datagram *d)
{
	__u32 s = bpf_htons(IPPROTO_UDP) + bpf_htons(d->udp_len);

	if (d->family == 4)
		s += sum16(&d->ip4.saddr, 8);
	else
		s += sum16(&d->ip6.saddr, 32);
	return s;
}

/*
 * Read the frame from data to data_end, len bytes in all (beyond data_end
 * when the rest is not linear), aggregated from segs datagrams.
 *
 * @return: -1 not ours, -2 unsupported, 0 a UDP datagram in d.
 */
static __always_inline int parse(void *data, void *data_end, __u32 len, __u32 segs,
				 struct datagram *d)
{
	struct ethhdr *eth = data;
	struct udphdr *udp;

	if ((void *)(eth + 1) > data_end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return -1;
		if (ip->version != 4 || ip->protocol != IPPROTO_UDP)
			return -1;
		if (ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_MF_OFFSET)) || ip->ttl <= 1)
			return -2;
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > data_end)
			return -2;
		d->family = 4;
		d->l3_len = IP4_LEN;
		d->ip4 = *ip;
		d->udp_len = bpf_ntohs(udp->len);
		/* Ethernet may pad a short frame: IP's length is the truth. */
		if (bpf_ntohs(ip->tot_len) != IP4_LEN + d->udp_len ||
		    len < ETH_LEN + IP4_LEN + (__u32)d->udp_len)
			return -2;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		if (ip6->version != 6 || ip6->nexthdr != IPPROTO_UDP)
			return -1;
		if (ip6->hop_limit <= 1)
			return -2;
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > data_end)
			return -2;
		d->family = 6;
		d->l3_len = IP6_LEN;
		d->ip6 = *ip6;
		d->udp_len = bpf_ntohs(udp->len);
		/* No jumbograms; no checksum is not allowed over IPv6. */
		if (bpf_ntohs(ip6->payload_len) != d->udp_len || udp->check == 0 ||
		    len < ETH_LEN + IP6_LEN + (__u32)d->udp_len)
			return -2;
	} else {
		return -1;
	}
	if (d->udp_len < UDP_LEN)
		return -2;
	/* Aggregated (GRO) packets are many datagrams: leave them to the stack. */
	if (segs > 1)
		return -2;
	d->udp = *udp;
	/*
	 * A sender on this host with checksum offload (over a veth: a
	 * container, a namespace) leaves the checksum unfinished, the
	 * pseudo-header's sum alone, for the stack to complete from where
	 * the UDP header starts; rewriting moves that header, and the
	 * checksum would come out wrong.  Such packets go to the stack.  A
	 * finished checksum equal to that sum (1 in 65536) goes up too, and
	 * user space relays it all the same.
	 */
	if (udp->check && udp->check == fold(pseudo_sum(d)))
		return -2;
	d->cd[0] = d->cd[1] = 0;
	if (d->udp_len >= UDP_LEN + CD_LEN) {
		__be16 *cd = (void *)(udp + 1);

		if ((void *)(cd + 2) > data_end)
			return -2;
		d->cd[0] = cd[0];
		d->cd[1] = cd[1];
	}
	return 0;
}

/* The source and destination addresses of d, 16 bytes each (IPv4 in the
 * first 4, zero after). */
static __always_inline void addresses(const struct datagram *d, __u8 *src, __u8 *dst)
{
	if (d->family == 4) {
		__builtin_memcpy(src, &d->ip4.saddr, 4);
		__builtin_memcpy(dst, &d->ip4.daddr, 4);
	} else {
		__builtin_memcpy(src, &d->ip6.saddr, 16);
		__builtin_memcpy(dst, &d->ip6.daddr, 16);
	}
}

/* The headers a relayed packet leaves with, but Ethernet's. */
struct headers {
	union {
		struct iphdr ip4;
		struct ipv6hdr ip6;
	};
	__be16 words[6]; /* UDP, then the ChannelData header when added */
};

/*
 * Work out the new IP header (source, destination, payload length
 * udp_len, fresh TTL) and UDP header, the ChannelData header when cd is
 * given, and the UDP checksum from d's, into h.
 */
static __always_inline void build(const struct datagram *d, const __u8 *src, const __u8 *dst,
				  __be16 sport, __be16 dport, __u16 udp_len, const __be16 *cd,
				  struct headers *h)
{
	__be16 new_len = bpf_htons(udp_len);
	__be16 old_len = d->udp.len;
	__u32 removed, added;
	struct udphdr udp;

	udp.source = sport;
	udp.dest = dport;
	udp.len = new_len;
	/* Removed from the checksum's coverage: the old pseudo-header's
	 * addresses and length, the old UDP header, and the ChannelData
	 * header when it is being taken off; added: the new ones. */
	if (d->family == 4) {
		removed = sum16(&d->ip4.saddr, 8);
		added = sum16(src, 4) + sum16(dst, 4);
	} else {
		removed = sum16(&d->ip6.saddr, 32);
		added = sum16(src, 16) + sum16(dst, 16);
	}
	removed += old_len + old_len + d->udp.source + d->udp.dest;
	added += new_len + new_len + sport + dport;
	if (cd)
		added += cd[0] + cd[1];
	else
		removed += d->cd[0] + d->cd[1];
	if (d->family == 4 && d->udp.check == 0)
		udp.check = 0; /* IPv4 without a checksum stays without */
	else
		udp.check = udp_csum_update(d->udp.check, removed, added);

	if (d->family == 4) {
		struct iphdr *ip = &h->ip4;

		*ip = d->ip4;
		ip->tot_len = bpf_htons(IP4_LEN + udp_len);
		ip->ttl = FRESH_TTL;
		__builtin_memcpy(&ip->saddr, src, 4);
		__builtin_memcpy(&ip->daddr, dst, 4);
		ip->check = 0;
		ip->check = ~fold(sum16(ip, IP4_LEN));
	} else {
		struct ipv6hdr *ip6 = &h->ip6;

		*ip6 = d->ip6;
		ip6->payload_len = new_len;
		ip6->hop_limit = FRESH_TTL;
		__builtin_memcpy(&ip6->saddr, src, 16);
		__builtin_memcpy(&ip6->daddr, dst, 16);
	}
	__builtin_memcpy(h->words, &udp, UDP_LEN);
	h->words[4] = cd ? cd[0] : 0;
	h->words[5] = cd ? cd[1] : 0;
}

/*
 * Write the new headers (see build()) after bpf_skb_adjust_room moved
 * the bytes.  Every write recomputes skb->csum (CHECKSUM_COMPLETE stays
 * right for whoever reads it next).
 */
static __always_inline int rewrite(struct __sk_buff *skb, struct datagram *d, const __u8 *src,
				   const __u8 *dst, __be16 sport, __be16 dport, __u16 udp_len,
				   const __be16 *cd)
{
	struct headers h;
	__be16 *words = h.words;
	__u32 l3 = d->l3_len;

	build(d, src, dst, sport, dport, udp_len, cd, &h);
	if (d->family == 4) {
		if (bpf_skb_store_bytes(skb, ETH_LEN, &h.ip4, IP4_LEN, BPF_F_RECOMPUTE_CSUM))
			return -1;
	} else {
		if (bpf_skb_store_bytes(skb, ETH_LEN, &h.ip6, IP6_LEN, BPF_F_RECOMPUTE_CSUM))
			return -1;
	}
	if (l3 == IP4_LEN) {
		if (bpf_skb_store_bytes(skb, ETH_LEN + IP4_LEN, words,
					cd ? UDP_LEN + CD_LEN : UDP_LEN, BPF_F_RECOMPUTE_CSUM))
			return -1;
	} else {
		if (bpf_skb_store_bytes(skb, ETH_LEN + IP6_LEN, words,
					cd ? UDP_LEN + CD_LEN : UDP_LEN, BPF_F_RECOMPUTE_CSUM))
			return -1;
	}
	return 0;
}

/*
 * The to_peer entry of d when it is ChannelData from a client on a bound
 * channel, else NULL.  ChannelData is tried first: a peer's datagram that
 * looks like ChannelData only matches to_peer if its source is a client
 * with that channel.
 */
static __always_inline struct to_peer *client_entry(const struct datagram *d)
{
	struct client_key key = {};
	__u16 channel = bpf_ntohs(d->cd[0]);

	if (d->udp_len < UDP_LEN + CD_LEN || channel < 0x4000 || channel > 0x7fff)
		return 0;
	key.family = d->family;
	key.channel = d->cd[0];
	key.client_port = d->udp.source;
	key.server_port = d->udp.dest;
	addresses(d, key.client_addr, key.server_addr);
	return bpf_map_lookup_elem(&to_peer, &key);
}

/* The to_client entry of d when it comes from a peer to a relayed
 * address, else NULL. */
static __always_inline struct to_client *peer_entry(const struct datagram *d)
{
	struct peer_key key = {};

	key.family = d->family;
	key.relay_port = d->udp.dest;
	key.peer_port = d->udp.source;
	addresses(d, key.peer_addr, key.relay_addr);
	return bpf_map_lookup_elem(&to_client, &key);
}

/* ChannelData from a client: relay its data to the peer. */
static __always_inline int client_to_peer(struct __sk_buff *skb, struct datagram *d,
					  struct to_peer *peer)
{
	struct route r = {};
	__u16 data_len = d->udp_len - UDP_LEN - CD_LEN;

	/* Padded (over a stream it would be; over UDP it is allowed but not
	 * worth rewriting here) or short: user space sorts it out. */
	if (bpf_ntohs(d->cd[1]) != data_len)
		return pass(STAT_UNSUPPORTED);
	if (!test_mode && route(skb, skb->ingress_ifindex, d->family, peer->relay_addr, peer->peer_addr,
				peer->relay_port, peer->peer_port, d->l3_len + UDP_LEN + data_len,
				&r))
		return pass(STAT_REDIRECT_FAILED);
	/* Takes the 4 bytes right after the IP header (the old source and
	 * destination ports, read already); rewrite() then writes the new UDP
	 * header over the old length, checksum and ChannelData header. */
	if (bpf_skb_adjust_room(skb, -CD_LEN, BPF_ADJ_ROOM_NET, 0))
		return pass(STAT_UNSUPPORTED);
	if (rewrite(skb, d, peer->relay_addr, peer->peer_addr, peer->relay_port, peer->peer_port,
		    UDP_LEN + data_len, 0))
		return TC_ACT_SHOT;
	__sync_fetch_and_add(&peer->packets, 1);
	__sync_fetch_and_add(&peer->bytes, data_len);
	if (test_mode) {
		count(STAT_TO_PEER);
		return TC_ACT_REDIRECT;
	}
	return send(skb, &r, STAT_TO_PEER);
}

/* A datagram from a peer: relay it to the client as ChannelData. */
static __always_inline int peer_to_client(struct __sk_buff *skb, struct datagram *d)
{
	struct to_client *client = peer_entry(d);
	struct route r = {};
	__u16 data_len = d->udp_len - UDP_LEN;
	__be16 cd[2];

	if (!client)
		return pass(STAT_NOT_OURS);
	if (d->udp_len > 0xffff - IP6_LEN - CD_LEN)
		return pass(STAT_UNSUPPORTED);
	if (!test_mode && route(skb, skb->ingress_ifindex, d->family, client->server_addr, client->client_addr,
				client->server_port, client->client_port,
				d->l3_len + UDP_LEN + CD_LEN + data_len, &r))
		return pass(STAT_REDIRECT_FAILED);
	/* Makes room right after the IP header: the new UDP header goes
	 * there and over the old ports, the ChannelData header over the old
	 * length and checksum. */
	if (bpf_skb_adjust_room(skb, CD_LEN, BPF_ADJ_ROOM_NET, 0))
		return pass(STAT_UNSUPPORTED);
	cd[0] = client->channel;
	cd[1] = bpf_htons(data_len);
	if (rewrite(skb, d, client->server_addr, client->client_addr, client->server_port,
		    client->client_port, UDP_LEN + CD_LEN + data_len, cd))
		return TC_ACT_SHOT;
	__sync_fetch_and_add(&client->packets, 1);
	__sync_fetch_and_add(&client->bytes, data_len);
	if (test_mode) {
		count(STAT_TO_CLIENT);
		return TC_ACT_REDIRECT;
	}
	return send(skb, &r, STAT_TO_CLIENT);
}

SEC("tc")
int turnrelay_tc(struct __sk_buff *skb)
{
	struct datagram d;
	int rc = parse((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len,
		       skb->gso_segs, &d);
	struct to_peer *peer;

	if (rc == -1)
		return pass(STAT_NOT_OURS);
	if (rc == -2)
		return pass(STAT_UNSUPPORTED);
	peer = client_entry(&d);
	if (peer)
		return client_to_peer(skb, &d, peer);
	return peer_to_client(skb, &d);
}

/* XDP ------------------------------------------------------------------- */

static __always_inline int xdp_pass(__u32 index)
{
	count(index);
	return XDP_PASS;
}

/*
 * Write the Ethernet header eth and h's IP header and first n words
 * bytes at the start of the frame, which bpf_xdp_adjust_head has made
 * the right length for them.  l3 and n are constants once inlined.
 */
static __always_inline int xdp_store(struct xdp_md *ctx, const __u8 *eth, const struct headers *h,
				     __u32 l3, __u32 n)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *data_end = (void *)(long)ctx->data_end;

	if (data + ETH_LEN + l3 + n > data_end)
		return -1;
	__builtin_memcpy(data, eth, ETH_LEN);
	__builtin_memcpy(data + ETH_LEN, &h->ip4, l3);
	__builtin_memcpy(data + ETH_LEN + l3, h->words, n);
	return 0;
}

/*
 * Move the frame's start by delta (+4 takes the 4 bytes after the old
 * UDP header out, -4 makes room for a ChannelData header) and write the
 * new headers before the unmoved payload.
 */
static __always_inline int xdp_rewrite(struct xdp_md *ctx, const struct datagram *d,
				       const __u8 *eth, const struct headers *h, int delta)
{
	if (bpf_xdp_adjust_head(ctx, delta))
		return -2;
	if (d->family == 4)
		return delta > 0 ? xdp_store(ctx, eth, h, IP4_LEN, UDP_LEN)
				 : xdp_store(ctx, eth, h, IP4_LEN, UDP_LEN + CD_LEN);
	return delta > 0 ? xdp_store(ctx, eth, h, IP6_LEN, UDP_LEN)
			 : xdp_store(ctx, eth, h, IP6_LEN, UDP_LEN + CD_LEN);
}

/* Send the rewritten frame where route() said: back out of the device it
 * came in on, or to another. */
static __always_inline int xdp_send(struct xdp_md *ctx, const struct route *r, __u32 index)
{
	if (test_mode) {
		count(index);
		return XDP_REDIRECT;
	}
	if (r->ifindex == ctx->ingress_ifindex) {
		count(index);
		return XDP_TX;
	}
	if (bpf_redirect(r->ifindex, 0) != XDP_REDIRECT) {
		count(STAT_REDIRECT_FAILED);
		return XDP_DROP;
	}
	count(index);
	return XDP_REDIRECT;
}

/*
 * Route (unless in test mode) and rewrite d into what goes to dst; the
 * Ethernet header eth gets the next hop's addresses.  Without a route or
 * a neighbour entry (XDP cannot resolve one) the frame goes up untouched.
 *
 * @return: the XDP action.
 */
static __always_inline int xdp_relay(struct xdp_md *ctx, const struct datagram *d, __u8 *eth,
				     const __u8 *src, const __u8 *dst, __be16 sport,
				     __be16 dport, __u16 udp_len, const __be16 *cd, __u32 index)
{
	struct route r = {};
	struct headers h;
	int rc;

	if (!test_mode && (route(ctx, ctx->ingress_ifindex, d->family, src, dst, sport, dport,
				 d->l3_len + udp_len, &r) ||
			   r.resolve))
		return xdp_pass(STAT_REDIRECT_FAILED);
	if (!test_mode)
		__builtin_memcpy(eth, r.macs, sizeof(r.macs));
	build(d, src, dst, sport, dport, udp_len, cd, &h);
	rc = xdp_rewrite(ctx, d, eth, &h, cd ? -CD_LEN : CD_LEN);
	if (rc == -2)
		return xdp_pass(STAT_UNSUPPORTED);
	if (rc) {
		/* Moved already: it cannot go up any more. */
		count(STAT_REDIRECT_FAILED);
		return XDP_DROP;
	}
	return xdp_send(ctx, &r, index);
}

SEC("xdp")
int turnrelay_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct to_client *client;
	struct to_peer *peer;
	__u8 eth[ETH_LEN];
	struct datagram d;
	__u16 data_len;
	__be16 cd[2];
	int rc;

	/* Before the stack, there is no checksum state and no aggregation:
	 * parse() still passes up the unfinished checksum it can see. */
	rc = parse(data, data_end, bpf_xdp_get_buff_len(ctx), 1, &d);
	if (rc == -1)
		return xdp_pass(STAT_NOT_OURS);
	if (rc == -2)
		return xdp_pass(STAT_UNSUPPORTED);
	if (data + ETH_LEN > data_end)
		return xdp_pass(STAT_NOT_OURS);
	__builtin_memcpy(eth, data, ETH_LEN);
	peer = client_entry(&d);
	if (peer) {
		data_len = d.udp_len - UDP_LEN - CD_LEN;
		/* Padded or short: user space sorts it out. */
		if (bpf_ntohs(d.cd[1]) != data_len)
			return xdp_pass(STAT_UNSUPPORTED);
		rc = xdp_relay(ctx, &d, eth, peer->relay_addr, peer->peer_addr, peer->relay_port,
			       peer->peer_port, UDP_LEN + data_len, 0, STAT_TO_PEER);
		if (rc != XDP_PASS && rc != XDP_DROP) {
			__sync_fetch_and_add(&peer->packets, 1);
			__sync_fetch_and_add(&peer->bytes, data_len);
		}
		return rc;
	}
	client = peer_entry(&d);
	if (!client)
		return xdp_pass(STAT_NOT_OURS);
	data_len = d.udp_len - UDP_LEN;
	if (d.udp_len > 0xffff - IP6_LEN - CD_LEN)
		return xdp_pass(STAT_UNSUPPORTED);
	cd[0] = client->channel;
	cd[1] = bpf_htons(data_len);
	rc = xdp_relay(ctx, &d, eth, client->server_addr, client->client_addr, client->server_port,
		       client->client_port, UDP_LEN + CD_LEN + data_len, cd, STAT_TO_CLIENT);
	if (rc != XDP_PASS && rc != XDP_DROP) {
		__sync_fetch_and_add(&client->packets, 1);
		__sync_fetch_and_add(&client->bytes, data_len);
	}
	return rc;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
