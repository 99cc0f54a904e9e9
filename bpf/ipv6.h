/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ipv6.h: the inner IPv6 packet (issue 14): map lookups by IPv6 address,
 * header validation, the router's hop limit, ECN of the traffic class, and
 * which IPv6 flows must see the host's conntrack. The outer (underlay)
 * header is not this file's business: an IPv6 pod packet travels over an
 * IPv4 or an IPv6 underlay alike (the tunnel's remote decides).
 *
 * IPv6 has no header checksum, so every change to the header here also
 * tells a CHECKSUM_COMPLETE skb's csum what changed (bpf_csum_update, a
 * no-op returning an error for any other ip_summed), the way the IPv4 code
 * keeps its changes checksum-neutral.
 */
#pragma once

#include <linux/ipv6.h>
#include <linux/in6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "helpers.h"
#include "ctgate.h"

#ifndef AF_INET6
#define AF_INET6 10
#endif

#define IPV6_HLEN 40 /* sizeof(struct ipv6hdr) */

/* ICMPv6 types Weft looks at (RFC 4443, RFC 4861, RFC 2710/3810). */
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_PARAMPROB 4
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
#define ICMPV6_ROUTER_SOLICIT 133
#define ICMPV6_ROUTER_ADVERT 134
#define ICMPV6_NEIGH_SOLICIT 135
#define ICMPV6_NEIGH_ADVERT 136
#define ICMPV6_REDIRECT 137

/*
 * Decapsulation that changes the L3 family (bpf_skb_adjust_room, Linux 6.3+):
 * skb->protocol follows the inner header. Not in Debian's 6.1 UAPI headers;
 * outer6.h has the IPv4 one.
 */
#define WEFT_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)

/* ---- addresses (helpers.h has addr_equal, addr_is_v4mapped, addr_is_zero) ---- */

/* fe80::/10 */
static __always_inline int addr_is_link_local(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
}

/* ff00::/8 */
static __always_inline int addr_is_multicast(const __u8 *a)
{
	return a[0] == 0xff;
}

/*
 * Lookups by an IPv6 packet's address. The maps hold IPv4 as ::ffff:a.b.c.d,
 * so an IPv4-mapped address in an IPv6 header (which never belongs on the
 * wire, RFC 4291 2.5.5.2) would find an IPv4 entry: it finds nothing.
 */
static __always_inline const struct tunnel_info *tunnel_for_v6(const struct in6_addr *dst)
{
	struct tunnel_key key = { .prefixlen = 128 };

	if (addr_is_v4mapped(dst->s6_addr))
		return NULL;
	__builtin_memcpy(key.addr, dst, WEFT_ADDR_LEN);
	return bpf_map_lookup_elem(&tunnels, &key);
}

static __always_inline const struct endpoint_info *endpoint_for_v6(const struct in6_addr *dst)
{
	struct endpoint_key key;

	if (addr_is_v4mapped(dst->s6_addr))
		return NULL;
	__builtin_memcpy(key.addr, dst, WEFT_ADDR_LEN);
	return bpf_map_lookup_elem(&endpoints, &key);
}

/* Whether an IPv6 source arriving on ifindex is the pod's own (antispoof.h's rule). */
static __always_inline const struct endpoint_info *pod_owning_v6(__u32 ifindex, const struct in6_addr *saddr)
{
	const struct endpoint_info *ep = endpoint_for_v6(saddr);

	return ep && ep->ifindex == ifindex ? ep : NULL;
}

/* ---- the header ---- */

/*
 * What a router checks before forwarding: version 6 and a payload length
 * the link delivered (l3_len: bytes after the Ethernet header, trailing
 * padding allowed). Payload length 0 is a jumbogram or a BIG TCP GRO
 * packet: the kernel's. Failing packets go to the kernel, which drops and
 * counts them as it would without Weft.
 */
static __always_inline int ipv6_header_ok(const struct ipv6hdr *ip6, __u32 l3_len)
{
	__u32 plen = bpf_ntohs(ip6->payload_len);

	return ip6->version == 6 && plen != 0 && IPV6_HLEN + plen <= l3_len;
}

/*
 * Forward like a router: hop limit - 1 (RFC 8200). The hop limit is the low
 * byte of the big-endian word at offset 6, so the header's ones'-complement
 * sum drops by htons(1); a CHECKSUM_COMPLETE skb is told so.
 */
static __always_inline void ipv6_decrement_hop_limit(struct __sk_buff *skb, struct ipv6hdr *ip6)
{
	ip6->hop_limit--;
	bpf_csum_update(skb, (__u16)~bpf_htons(1));
}

/* ECN bits of the traffic class (version:4 | traffic class:8 | flow label:20). */
static __always_inline __u8 ipv6_ecn(const void *ip6)
{
	return (((const __u8 *)ip6)[1] >> 4) & 0x3;
}

/*
 * RFC 6040 normal mode on an inner IPv6 header (ecn.h has the IPv4 twin and
 * the reasoning): outer CE is copied onto ECT(0)/ECT(1), dropped over
 * Not-ECT. Touches the first 2 bytes only. A tc caller with a
 * CHECKSUM_COMPLETE skb must account for the change (from_underlay does).
 */
static __always_inline enum counter ecn_decap6(__u8 outer_ecn, void *inner, int *marked)
{
	__u8 *b = inner;
	__u8 in = ipv6_ecn(inner);

	*marked = 0;
	if (outer_ecn != 0x3 || in == 0x3)
		return CNT_DECAP;
	if (in == 0)
		return CNT_DROP_ECN_NOT_ECT;
	b[1] |= 0x3 << 4;
	*marked = 1;
	return CNT_DECAP;
}

/*
 * The checks every decapsulated IPv6 frame passes (classify_inner's IPv6
 * half): a header that does not lie about its length (inner_len: bytes
 * after the inner Ethernet header), from a remote pod subnet whose owner's
 * underlay address is outer_src (16 bytes, IPv4 mapped).
 */
static __always_inline enum counter classify_inner6(struct ethhdr *inner_eth, void *data_end, __u32 inner_len,
						    const __u8 *outer_src, const struct tunnel_info **tun)
{
	struct ipv6hdr *ip6 = (void *)(inner_eth + 1);

	if ((void *)(ip6 + 1) > data_end)
		return CNT_DROP_SHORT;
	if (ip6->version != 6 || ip6->payload_len == 0 || IPV6_HLEN + bpf_ntohs(ip6->payload_len) > inner_len)
		return CNT_DROP_INNER_MALFORMED;
	*tun = tunnel_for_v6(&ip6->saddr);
	if (!*tun)
		return CNT_DROP_UNKNOWN_SOURCE;
	if (!addr_equal((*tun)->remote, outer_src))
		return CNT_DROP_UNKNOWN_PEER;
	return CNT_DECAP;
}

/*
 * Length of one GSO segment's IPv6 packet (TCP or UDP right after the
 * fixed header), 0 when unknown: the kernel then decides.
 */
static __always_inline __u32 gso_segment_l3_len6(struct __sk_buff *skb, struct ipv6hdr *ip6, void *data_end)
{
	if (ip6->nexthdr == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)(ip6 + 1);

		if ((void *)(tcp + 1) > data_end)
			return 0;
		return IPV6_HLEN + tcp->doff * 4 + skb->gso_size;
	}
	if (ip6->nexthdr == IPPROTO_UDP)
		return IPV6_HLEN + sizeof(struct udphdr) + skb->gso_size;
	return 0;
}

/* to_gro_cell's question for IPv6: a TCP segment carrying payload (GRO merges those only). */
static __always_inline int ipv6_tcp_with_payload(void *data, void *data_end)
{
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct tcphdr *tcp = (void *)(ip6 + 1);

	if ((void *)(tcp + 1) > data_end || ip6->nexthdr != IPPROTO_TCP)
		return 0;
	return bpf_ntohs(ip6->payload_len) > tcp->doff * 4;
}

/* ---- conntrack (ctgate.h for IPv6) ---- */

static __always_inline int ct_flow_nated6(struct __sk_buff *skb, const struct ipv6hdr *ip6, const __be16 *ports)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_ct_opts opts = { .netns_id = WEFT_CT_CURRENT_NETNS, .l4proto = ip6->nexthdr };
	struct nf_conn *ct;
	int nated;

	if (!bpf_ksym_exists(bpf_skb_ct_lookup))
		return 0;
	__builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, 16);
	__builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, 16);
	tuple.ipv6.sport = ports[0];
	tuple.ipv6.dport = ports[1];
	ct = bpf_skb_ct_lookup(skb, &tuple, sizeof(tuple.ipv6), &opts, WEFT_CT_OPTS_SZ);
	if (!ct)
		return 0;
	nated = (ct->status & (WEFT_IPS_SRC_NAT | WEFT_IPS_DST_NAT)) != 0;
	bpf_ct_release(ct);
	return nated;
}

/*
 * ct_needs_stack for an IPv6 packet (checked by ipv6_header_ok): extension
 * headers (fragments above all: conntrack reassembles them), ICMPv6 other
 * than echo (errors quote a flow conntrack may have NATed; ND is link
 * business) and protocols other than TCP/UDP take the stack; TCP/UDP only
 * when the host's conntrack NATed the flow.
 */
static __always_inline int ct_needs_stack6(struct __sk_buff *skb, const struct ipv6hdr *ip6, void *data_end)
{
	const __u8 *l4 = (const __u8 *)(ip6 + 1);

	if ((void *)(l4 + 4) > data_end || bpf_ntohs(ip6->payload_len) < 4)
		return 1;
	switch (ip6->nexthdr) {
	case IPPROTO_ICMPV6:
		return l4[0] != ICMPV6_ECHO_REQUEST && l4[0] != ICMPV6_ECHO_REPLY;
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		return ct_flow_nated6(skb, ip6, (const __be16 *)l4);
	default:
		return 1;
	}
}

/* ---- ICMPv6 checksum ---- */

/*
 * The ICMPv6 checksum's pseudo-header part (RFC 8200 8.1), unfolded, as a
 * seed for bpf_csum_diff over the message itself.
 */
static __always_inline __s64 icmp6_pseudo_csum(const struct in6_addr *src, const struct in6_addr *dst, __u32 len)
{
	struct {
		struct in6_addr src, dst;
		__be32 len;
		__be32 nexthdr;
	} ph;

	__builtin_memcpy(&ph.src, src, 16);
	__builtin_memcpy(&ph.dst, dst, 16);
	ph.len = bpf_htonl(len);
	ph.nexthdr = bpf_htonl(IPPROTO_ICMPV6);
	return bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
}
