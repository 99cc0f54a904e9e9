/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * helpers.h: the one set of helpers every Weft program shares: address
 * conversion, bounds-checked parsing of the VXLAN frame, checksums, and
 * counters. Parsing works on (data, data_end) so XDP and tc run the same
 * validation byte for byte.
 */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "weft.h"
#include "maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* RFC 7348: the I flag says the VNI is valid. */
#define VXLAN_FLAG_I 0x08

struct vxlanhdr {
	__u8 flags;
	__u8 reserved1[3];
	__be32 vni_reserved; /* VNI in the upper 24 bits */
};

/* linux/icmp.h and linux/if_arp.h drag in libc headers; what we need of them: */
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4

struct icmp_frag_needed {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 unused;
	__be16 mtu;
};

#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arp_ipv4 {
	struct {
		__be16 ar_hrd;
		__be16 ar_pro;
		__u8 ar_hln;
		__u8 ar_pln;
		__be16 ar_op;
	} hdr;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

/* Counters at or past this value drop the packet, but for the passes counter_is_drop lists. */
#define CNT_FIRST_DROP CNT_DROP_NO_TUNNEL

static __always_inline int counter_is_drop(enum counter c)
{
	switch (c) {
	case CNT_PASS_FRAGMENT:
	case CNT_DECAP_REASSEMBLED:
	case CNT_ECN_CE:
	case CNT_PASS_NO_XDP_META:
	case CNT_ENCAP_KERNEL:
	case CNT_PASS_CONNTRACK:
	case CNT_PASS_OUTER6_CSUM:
	case CNT_PASS_OUTER6_EXTHDR:
	case CNT_ND_REPLY:
	case CNT_PACKET_TOO_BIG:
		return 0; /* appended after the drops, but not drops */
	default:
		return c >= CNT_FIRST_DROP;
	}
}

/* ---- addresses ---- */

/* IPv4 -> ::ffff:a.b.c.d, the form every map key and value uses. */
static __always_inline void addr_from_v4(__u8 *addr, __be32 v4)
{
	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(addr + 12, &v4, 4);
}

static __always_inline __be32 addr_to_v4(const __u8 *addr)
{
	__be32 v4;

	__builtin_memcpy(&v4, addr + 12, 4);
	return v4;
}

/* Whether a 16-byte address is IPv4-mapped (::ffff:a.b.c.d): an IPv4 one. */
static __always_inline int addr_is_v4mapped(const __u8 *addr)
{
	const __u32 *w = (const __u32 *)addr;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

/* Whether a 16-byte address is all-zero ("none" in node_config). */
static __always_inline int addr_is_zero(const __u8 *addr)
{
	const __u32 *w = (const __u32 *)addr;

	return (w[0] | w[1] | w[2] | w[3]) == 0;
}

static __always_inline int addr_equal(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

static __always_inline const struct node_config *node_config(void)
{
	__u32 zero = 0;
	const struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);

	/* An all-zero entry (array maps always have one) means "not set up". */
	if (!cfg || !cfg->underlay_ifindex)
		return NULL;
	return cfg;
}

static __always_inline const struct tunnel_info *tunnel_for_v4(__be32 dst)
{
	struct tunnel_key key = { .prefixlen = 128 };

	addr_from_v4(key.addr, dst);
	return bpf_map_lookup_elem(&tunnels, &key);
}

static __always_inline const struct endpoint_info *endpoint_for_v4(__be32 dst)
{
	struct endpoint_key key;

	addr_from_v4(key.addr, dst);
	return bpf_map_lookup_elem(&endpoints, &key);
}

/* UDP source port from the inner flow's hash, spread over [min, max) like the vxlan driver. */
static __always_inline __be16 flow_src_port(__u32 hash, const struct node_config *cfg)
{
	__u32 min = cfg->src_port_min, max = cfg->src_port_max;

	if (max <= min)
		return bpf_htons(min ? min : 32768);
	hash ^= hash << 16;
	return bpf_htons((__u16)((((__u64)hash * (max - min)) >> 32) + min));
}

/* ---- counters ---- */

static __always_inline void count(enum counter c, __u64 bytes)
{
	__u32 key = c;
	struct counter_value *v = bpf_map_lookup_elem(&stats, &key);

	if (v) {
		v->packets++;
		v->bytes += bytes;
	}
}

/*
 * The counters of the peer behind tun: its slot in peer_counters, which the Go
 * side assigned when it wrote the entry. A slot out of range (a writer with
 * another idea of the map's size) counts as "no slot", like slot 0.
 */
static __always_inline struct peer_stats *peer_stats_for(const struct tunnel_info *tun)
{
	__u32 slot = tun->stats_slot;

	if (slot >= WEFT_PEER_STATS_SLOTS)
		slot = 0;
	return bpf_map_lookup_elem(&peer_counters, &slot);
}

static __always_inline void count_peer_tx(const struct tunnel_info *tun, __u64 bytes)
{
	struct peer_stats *ps = peer_stats_for(tun);

	if (ps) {
		ps->tx_packets++;
		ps->tx_bytes += bytes;
	}
}

static __always_inline void count_peer_rx(const struct tunnel_info *tun, __u64 bytes)
{
	struct peer_stats *ps = peer_stats_for(tun);

	if (ps) {
		ps->rx_packets++;
		ps->rx_bytes += bytes;
	}
}

/* ---- checksums ---- */

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Header checksum of an option-less IPv4 header whose check field is zero. */
static __always_inline __u16 ipv4_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	return csum_fold(sum);
}

/* Whether an option-less IPv4 header's checksum is right. */
static __always_inline int ipv4_csum_valid(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	return csum_fold(sum) == 0;
}

/*
 * Forward like a router: TTL - 1, checksum patched incrementally (RFC 1624:
 * the TTL is the high byte of its 16-bit word, so the sum grows by 0x0100).
 * The change is checksum-neutral, so CHECKSUM_COMPLETE stays valid.
 */
static __always_inline void ipv4_decrement_ttl(struct iphdr *ip)
{
	__u32 check = (__u32)ip->check + (__u32)bpf_htons(0x0100);

	ip->check = (__u16)(check + (check >= 0xffff));
	ip->ttl--;
}

/*
 * What a router checks before forwarding (RFC 1812 5.2.2): version, IHL and
 * a total length the link actually delivered. l3_len is the bytes after the
 * Ethernet header (trailing padding allowed). Packets failing it go to the
 * kernel, which drops and counts them as it would without Weft, instead of
 * being carried to a peer that can only drop them. IPv4 BIG TCP packets
 * (total length 0) take the kernel's path too.
 */
static __always_inline int ipv4_header_ok(const struct iphdr *ip, __u32 l3_len)
{
	__u32 tot_len = bpf_ntohs(ip->tot_len);

	return ip->version == 4 && ip->ihl >= 5 && tot_len >= ip->ihl * 4U && tot_len <= l3_len;
}

/*
 * The inner IPv6 half of the checks below. Included here, not at the top:
 * it builds on everything above.
 */
#include "ipv6.h"

/* ---- the VXLAN receive classifier ---- */

struct vxlan_frame {
	struct ethhdr *outer_eth;
	struct iphdr *inner_ip;
	const struct tunnel_info *tunnel; /* the peer that owns the inner source */
	__u32 overhead;                   /* outer bytes to strip: VXLAN_OVERHEAD or VXLAN6_OVERHEAD */
	__u8 outer_ecn;                   /* the outer header's ECN bits (RFC 6040 decap) */
};

/*
 * The checks every decapsulated frame passes, whoever stripped the outer
 * headers (from_underlay here, or the kernel's vxlan socket for reassembled
 * fragments, see gro_sink): an inner IPv4 header that does not lie about its
 * length (inner_len: bytes after the inner Ethernet header), from a remote
 * pod subnet whose owner is outer_saddr (16 bytes, IPv4-mapped for an IPv4
 * underlay: the tunnel's remote must match it in family too). Returns
 * CNT_DECAP or the reason.
 */
static __always_inline enum counter classify_inner(struct ethhdr *inner_eth, void *data_end, __u32 inner_len,
						   const __u8 *outer_saddr, const struct tunnel_info **tun)
{
	struct iphdr *inner_ip = (void *)(inner_eth + 1);

	if ((void *)(inner_ip + 1) > data_end)
		return CNT_DROP_SHORT;
	if (inner_eth->h_proto != bpf_htons(ETH_P_IP)) {
		if (inner_eth->h_proto == bpf_htons(ETH_P_IPV6))
			return classify_inner6(inner_eth, data_end, inner_len, outer_saddr, tun);
		return CNT_DROP_INNER_NOT_IPV4;
	}
	if (inner_ip->version != 4 || inner_ip->ihl < 5 ||
	    bpf_ntohs(inner_ip->tot_len) < inner_ip->ihl * 4 ||
	    bpf_ntohs(inner_ip->tot_len) > inner_len)
		return CNT_DROP_INNER_MALFORMED;

	/*
	 * Source check: the inner source must lie in a remote pod subnet, and
	 * the frame must come from that subnet's owner. Without it, anyone on
	 * the underlay could inject packets into pods.
	 */
	*tun = tunnel_for_v4(inner_ip->saddr);
	if (!*tun)
		return CNT_DROP_UNKNOWN_SOURCE;
	if (!addr_equal((*tun)->remote, outer_saddr))
		return CNT_DROP_UNKNOWN_PEER;
	return CNT_DECAP;
}

/* Bytes a decapsulation needs to see in the linear area (IPv4 inner; IPv6 inner: 20 more). */
#define VXLAN_PARSE_LEN (ETH_HLEN + 20 + 8 + 8 + ETH_HLEN + 20)

/*
 * The VXLAN header and the inner frame behind it, the same whichever outer
 * family carried them: udp is the outer UDP header, already checked to hold
 * udp_len bytes (enough for VXLAN, inner Ethernet and an inner IPv4 header),
 * outer_saddr the outer source (16 bytes, IPv4-mapped over IPv4). On
 * CNT_DECAP, f->inner_ip and f->tunnel are set, and *inner_eth and
 * *inner_len say where the inner frame is for a caller that sums it.
 */
static __always_inline enum counter classify_vxlan(struct udphdr *udp, void *data_end, __u32 udp_len,
						   const struct node_config *cfg, const __u8 *outer_saddr,
						   struct vxlan_frame *f, struct ethhdr **inner_eth,
						   __u32 *inner_len)
{
	struct vxlanhdr *vx = (void *)(udp + 1);
	struct ethhdr *eth = (void *)(vx + 1);
	struct iphdr *inner_ip = (void *)(eth + 1);
	enum counter c;

	if ((void *)(inner_ip + 1) > data_end)
		return CNT_DROP_SHORT; /* lengths agree but the bytes are not there */

	if (!(vx->flags & VXLAN_FLAG_I))
		return CNT_DROP_VXLAN_FLAGS;
	/* Reserved bits are ignored on receipt (RFC 7348 section 5). */
	if ((bpf_ntohl(vx->vni_reserved) >> 8) != cfg->vni)
		return CNT_PASS_OTHER_VNI;

	*inner_len = udp_len - sizeof(*udp) - sizeof(*vx) - ETH_HLEN;
	c = classify_inner(eth, data_end, *inner_len, outer_saddr, &f->tunnel);
	if (c != CNT_DECAP)
		return c;
	*inner_eth = eth;
	f->inner_ip = inner_ip;
	return CNT_DECAP;
}

/*
 * Decides what an underlay frame is. Returns CNT_DECAP only for VXLAN to our
 * port and VNI whose every header is consistent and whose outer source is the
 * underlay address of the peer owning the inner source subnet; otherwise the
 * counter naming why not. pkt_len is the whole frame's length (skb->len in
 * tc, where data_end may only cover the linear head).
 *
 * Verdicts for frames we cannot yet tell are ours (not IPv4, not to our
 * underlay address, truncated before the UDP port, other ports) are
 * CNT_PASS_UNDERLAY: the kernel gets them untouched, exactly as without
 * Weft. UDP fragments to our address are CNT_PASS_FRAGMENT: the kernel
 * reassembles them and gro_sink checks the result.
 */
static __always_inline enum counter classify_underlay(void *data, void *data_end, __u32 pkt_len,
						      const struct node_config *cfg,
						      struct vxlan_frame *f)
{
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	struct ethhdr *inner_eth;
	__u32 ihl, tot_len, udp_len, inner_len;
	__u8 outer_saddr[WEFT_ADDR_LEN];
	enum counter c;

	if ((void *)(eth + 1) > data_end)
		return CNT_PASS_UNDERLAY;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return CNT_PASS_UNDERLAY;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return CNT_PASS_UNDERLAY;
	if (ip->version != 4 || ip->protocol != IPPROTO_UDP || ip->ihl < 5)
		return CNT_PASS_UNDERLAY;
	/*
	 * Only what is addressed to us is VXLAN for us, as for the vxlan driver's
	 * socket; UDP to our port between a DirectRouting peer's pods and ours,
	 * or traffic routed through this node, is not.
	 */
	if (ip->daddr != addr_to_v4(cfg->underlay_ip))
		return CNT_PASS_UNDERLAY;
	/*
	 * A later fragment has no UDP header to look at; it may be VXLAN that a
	 * router with a smaller MTU cut up (encap sends with DF clear, like the
	 * vxlan driver). Only the kernel can reassemble it; the whole packet then
	 * comes out of weftgro0, where gro_sink validates it like we would.
	 */
	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return CNT_PASS_FRAGMENT;

	ihl = ip->ihl * 4;
	udp = (void *)ip + ihl;
	if ((void *)(udp + 1) > data_end)
		return CNT_PASS_UNDERLAY;
	if (udp->dest != bpf_htons(cfg->port))
		return CNT_PASS_UNDERLAY;

	/* From here on the frame claims to be VXLAN for us. */
	if (ip->frag_off & bpf_htons(IP_MF))
		return CNT_PASS_FRAGMENT; /* the first fragment: the same way */
	if (ihl != sizeof(*ip))
		return CNT_DROP_OUTER_OPTIONS;

	tot_len = bpf_ntohs(ip->tot_len);
	udp_len = bpf_ntohs(udp->len);
	if (tot_len > pkt_len - ETH_HLEN || tot_len < sizeof(*ip) + sizeof(*udp) ||
	    udp_len != tot_len - sizeof(*ip))
		return CNT_DROP_OUTER_LENGTH;
	/* We strip this header before ip_rcv could check it, so check it here. */
	if (!ipv4_csum_valid(ip))
		return CNT_DROP_OUTER_CSUM;
	if (udp_len < sizeof(*udp) + sizeof(struct vxlanhdr) + ETH_HLEN + sizeof(struct iphdr))
		return CNT_DROP_SHORT;

	addr_from_v4(outer_saddr, ip->saddr);
	c = classify_vxlan(udp, data_end, udp_len, cfg, outer_saddr, f, &inner_eth, &inner_len);
	if (c != CNT_DECAP)
		return c;

	f->outer_eth = eth;
	f->outer_ecn = ip->tos & 0x3;
	f->overhead = VXLAN_OVERHEAD;
	return CNT_DECAP;
}
