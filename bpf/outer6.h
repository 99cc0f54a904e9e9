/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * outer6.h: VXLAN over an IPv6 underlay (issue 14), the outer side only:
 * pushing outer IPv6 + UDP + VXLAN + inner Ethernet (70 bytes) and parsing
 * it on receive. The inner packet is whatever the inner-family code hands
 * over; which outer family a packet gets is decided by the tunnel entry's
 * remote alone (IPv4-mapped: vxlan_encap in weft.c; plain IPv6: here).
 *
 * What the Linux vxlan driver sends with its defaults (`ip link add ...
 * type vxlan local <v6>`, which is also what flannel's flannel-v6.<VNI>
 * uses), and so what we send:
 *   - hop limit 64 (ttl auto: the route's hop limit), flow label 0 (the
 *     driver's `label` defaults to 0 and it does not derive one),
 *     traffic class = the inner ECN with CE sent as ECT(0) (RFC 6040,
 *     ip_tunnel_ecn_encap), DSCP 0;
 *   - a valid UDP checksum: udp6zerocsumtx is off by default, and a
 *     receiver with udp6zerocsumrx off (the default) drops zero-checksum
 *     IPv6 VXLAN in udpv6 before the vxlan socket sees it.
 *
 * The UDP checksum, sending. bpf_skb_adjust_room marks a GSO skb
 * SKB_GSO_UDP_TUNNEL without _CSUM (net/core/filter.c bpf_skb_net_grow), so
 * segmentation, in software or in a NIC, would copy our one checksum field
 * into every segment: wrong for all of them, and no helper can set the
 * _CSUM bit. So GSO packets go to the kernel's vxlan driver (weftgro0, a
 * collect_md device, see encap_via_kernel in underlay.h), which marks them
 * SKB_GSO_UDP_TUNNEL_CSUM. A single packet is checksummed here without
 * reading its payload, by the kernel's local checksum offload argument
 * (LCO, include/linux/skbuff.h lco_csum): the inner TCP, UDP, ICMP or
 * ICMPv6 packet carries (or, when CHECKSUM_PARTIAL, will carry once its
 * checksum is filled in on the way out) a valid checksum of its own, so
 * the ones'-complement sum of the inner L4 bytes is the complement of the
 * inner pseudo-header sum (0 for ICMP, which has none). The outer
 * checksum then needs only the outer pseudo-header, our 50 bytes of
 * UDP/VXLAN/Ethernet/inner IPv4 header (70 with inner IPv6), and that
 * complement: about 40 additions whatever the packet's size, linear or
 * not. Inner packets the argument does not cover (a fragment, UDP without
 * checksum, IPv4 options or IPv6 extension headers, another protocol,
 * Ethernet padding) go to the kernel too, and where there is no weftgro0
 * they are dropped and counted (drop_outer6_needs_kernel).
 *
 * The UDP checksum, receiving: zero is dropped (drop_outer6_zero_csum), as
 * udpv6 does for a vxlan socket without udp6zerocsumrx. An aggregated skb
 * (gso_size set) was checked by GRO, which merges only packets whose
 * checksum it verified (udp6_gro_receive), or was built on this machine.
 * Otherwise the same LCO sum is checked: it holds for every correct packet
 * whose inner checksum is correct, partial or not. When it does not hold
 * (or cannot be computed) we cannot tell a bad checksum from a
 * CHECKSUM_PARTIAL skb that a local sender has not summed yet (a veth
 * underlay; tc cannot read ip_summed), so the packet goes to the kernel
 * (pass_outer6_csum): udpv6 trusts the partial one and drops the bad one
 * (Udp6InCsumErrors), and what its vxlan socket decapsulates is checked by
 * gro_sink on weftgro0 like anything else it delivers. The sum covers the
 * headers and trusts the inner checksum for the rest: a frame corrupted in
 * the inner payload only is decapsulated and dropped by the pod's stack on
 * its own checksum (where the kernel's udpv6 would have dropped it), and
 * one whose sender put a wrong inner checksum fails our sum and is the
 * kernel's (which decapsulates it, and the pod drops it, as before).
 */
#pragma once

#include <linux/ipv6.h>

#include "helpers.h"

#ifndef AF_INET6
#define AF_INET6 10
#endif

#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60
#define IP6_OFFSET_MASK 0xfff8 /* fragment offset, in the frag_off field */

/* Not in Debian's 6.1 UAPI headers (linux/bpf.h, Linux 6.3+). */
#define WEFT_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)

/* Outer bytes a decapsulation over IPv6 needs to see in the linear area. */
#define VXLAN6_PARSE_LEN (ETH_HLEN + 40 + 8 + 8 + ETH_HLEN + 20)

/* Bytes an IPv6 VXLAN encapsulation adds: outer IPv6 + UDP + VXLAN + inner Ethernet. */
_Static_assert(VXLAN6_OVERHEAD == sizeof(struct ipv6hdr) + 8 + 8 + ETH_HLEN, "VXLAN6_OVERHEAD");

/* vxlan_encap6's answer when only the kernel can checksum the packet. */
#define ENCAP6_NEEDS_KERNEL 1
/* ... and when the node has no IPv6 underlay address to send from. */
#define ENCAP6_NO_SOURCE 2

/* Outer bytes of a VXLAN packet to remote: 50 over IPv4, 70 over IPv6. */
static __always_inline __u32 tunnel_overhead(const struct tunnel_info *tun)
{
	return addr_is_v4mapped(tun->remote) ? VXLAN_OVERHEAD : VXLAN6_OVERHEAD;
}

/* ---- ones'-complement sums ---- */

/* Sum of n 16-bit words at p (caller checked the bounds), not folded. */
#define SUM16(p, n)                                                      \
	({                                                               \
		const __u16 *__w = (const __u16 *)(p);                   \
		__u64 __s = 0;                                           \
		_Pragma("unroll") for (int __i = 0; __i < (n); __i++)    \
			__s += __w[__i];                                 \
		__s;                                                     \
	})

static __always_inline __u16 fold16(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* IPv6 pseudo-header sum for UDP of udp_len bytes (RFC 8200 8.1). */
static __always_inline __u64 pseudo6_sum(const __u8 *saddr, const __u8 *daddr, __u32 udp_len)
{
	const __u32 *s = (const __u32 *)saddr, *d = (const __u32 *)daddr;
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < 4; i++)
		sum += (__u64)s[i] + d[i];
	return sum + (__u64)bpf_htonl(udp_len) + (__u64)bpf_htonl(IPPROTO_UDP);
}

/*
 * The LCO term for an inner IPv4 packet at ip (20 bytes known to be in
 * bounds, l3_len the bytes the outer UDP carries after the inner Ethernet
 * header): the ones'-complement sum of everything after its header, which
 * its own valid checksum fixes to the complement of its pseudo-header sum.
 * Returns 0 with *term set, or -1 where that does not hold or we cannot
 * see it: IPv4 options, a fragment (the L4 checksum covers the whole
 * datagram), trailing bytes after the packet, UDP without a checksum,
 * protocols without a checksum of this kind.
 */
static __always_inline int lco_term_v4(const struct iphdr *ip, void *data_end, __u32 l3_len, __u16 *term)
{
	__u32 tot_len = bpf_ntohs(ip->tot_len);
	__u64 pseudo;

	if (ip->version != 4 || ip->ihl != 5 || tot_len != l3_len || tot_len < sizeof(*ip))
		return -1;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return -1;
	switch (ip->protocol) {
	case IPPROTO_ICMP:
		*term = 0xffff; /* ICMP sums to ~0 on its own */
		return 0;
	case IPPROTO_UDP: {
		const struct udphdr *udp = (const void *)(ip + 1);

		if ((void *)(udp + 1) > data_end || udp->check == 0)
			return -1;
		break;
	}
	case IPPROTO_TCP:
		break;
	default:
		return -1;
	}
	pseudo = (__u64)ip->saddr + ip->daddr + bpf_htons((__u16)ip->protocol) + bpf_htons(tot_len - sizeof(*ip));
	*term = (__u16)~fold16(pseudo);
	return 0;
}

/*
 * The LCO term for an inner IPv6 packet (40 bytes known to be in bounds):
 * as lco_term_v4, for TCP, UDP with a checksum and ICMPv6, which sum their
 * pseudo-header too, and no extension headers.
 */
static __always_inline int lco_term_v6(const struct ipv6hdr *ip6, void *data_end, __u32 l3_len, __u16 *term)
{
	__u32 plen = bpf_ntohs(ip6->payload_len);
	const __u32 *s = (const __u32 *)&ip6->saddr, *d = (const __u32 *)&ip6->daddr;
	__u64 pseudo = 0;

	if (ip6->version != 6 || plen + sizeof(*ip6) != l3_len)
		return -1;
	switch (ip6->nexthdr) {
	case IPPROTO_UDP: {
		const struct udphdr *udp = (const void *)(ip6 + 1);

		if ((void *)(udp + 1) > data_end || udp->check == 0)
			return -1;
		break;
	}
	case IPPROTO_TCP:
	case 58: /* ICMPv6 */
		break;
	default:
		return -1;
	}
#pragma unroll
	for (int i = 0; i < 4; i++)
		pseudo += (__u64)s[i] + d[i];
	/* In 64 bits: two 32-bit terms of up to 0xff000000 would wrap, losing a carry. */
	pseudo += (__u64)bpf_htonl(plen) + (__u64)bpf_htonl(ip6->nexthdr);
	*term = (__u16)~fold16(pseudo);
	return 0;
}

/*
 * The inner packet's share of the outer UDP checksum: the sum of its IP
 * header (IPv4 20 or IPv6 40 bytes) plus the LCO term for the rest, for
 * the packet behind inner_eth (l3_len bytes after it). Returns 0 with *sum
 * set, or -1 where the LCO argument does not hold (see lco_term_v4). The
 * rest of the checksum is the pseudo-header and vxlan6_outer_sum.
 */
static __always_inline int vxlan6_inner_sum(const struct ethhdr *inner_eth, void *data_end, __u32 l3_len, __u64 *sum)
{
	const void *l3 = inner_eth + 1;
	__u16 term;

	if (inner_eth->h_proto == bpf_htons(ETH_P_IP)) {
		if (l3 + sizeof(struct iphdr) > data_end || lco_term_v4(l3, data_end, l3_len, &term))
			return -1;
		*sum = SUM16(l3, sizeof(struct iphdr) / 2) + term;
		return 0;
	}
	if (inner_eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		if (l3 + sizeof(struct ipv6hdr) > data_end || lco_term_v6(l3, data_end, l3_len, &term))
			return -1;
		*sum = SUM16(l3, sizeof(struct ipv6hdr) / 2) + term;
		return 0;
	}
	return -1;
}

/* Sum of our 30 bytes between the outer IPv6 and the inner IP header: UDP, VXLAN, inner Ethernet. */
static __always_inline __u64 vxlan6_outer_sum(const struct udphdr *udp)
{
	return SUM16(udp, (8 + 8 + ETH_HLEN) / 2);
}

/* The ECN bits of the IPv4 or IPv6 header behind eth (bounds checked by the caller's LCO sum). */
static __always_inline __u8 inner_ecn(const struct ethhdr *eth)
{
	const __u8 *l3 = (const void *)(eth + 1);

	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return (l3[1] >> 4) & 0x3; /* traffic class straddles bytes 0 and 1 */
	return l3[1] & 0x3;
}

/* ---- encapsulation ---- */

/* Every IPv6 link carries 1280 bytes (RFC 8200 5): smaller outer packets need no path check. */
#define IPV6_MIN_MTU 1280

/* BPF_FIB_LOOKUP_SKIP_NEIGH (Linux 6.3+; an enum, missing from Debian's 6.1 UAPI headers). */
#define WEFT_FIB_LOOKUP_SKIP_NEIGH (1U << 2)

/*
 * The path MTU toward an IPv6 underlay peer where the packet does not fit
 * it, else 0. A router on the way that cannot forward our VXLAN answers
 * the node with Packet Too Big; udpv6_err (through weftgro0's socket on
 * the VXLAN port) turns it into an exception route, which the FIB lookup
 * reports (as it does a route's mtu). The kernel's vxlan driver learns it
 * the same way (skb_tunnel_check_pmtu); without this, a pod behind a
 * smaller hop would send into a black hole (or, for GSO trains, which go
 * through weftgro0, into the kernel's fragmenting of the outer packet).
 * outer_len: the VXLAN packet's length (of one segment for a GSO skb: with
 * tot_len set the lookup checks it, whatever the skb). A GSO skb answered
 * is cut to its first 1232 bytes (bpf_skb_change_tail resets GSO).
 */
static __always_inline __u32 path_mtu6(struct __sk_buff *skb, const struct node_config *cfg,
				       const struct tunnel_info *tun, __u32 outer_len)
{
	struct bpf_fib_lookup fib = {};

	fib.family = AF_INET6;
	fib.l4_protocol = IPPROTO_UDP;
	__builtin_memcpy(fib.ipv6_src, cfg->underlay_ip6, sizeof(fib.ipv6_src));
	__builtin_memcpy(fib.ipv6_dst, tun->remote, sizeof(fib.ipv6_dst));
	fib.tot_len = outer_len;
	fib.ifindex = cfg->underlay_ifindex;
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT | WEFT_FIB_LOOKUP_SKIP_NEIGH) !=
	    BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return 0;
	return fib.mtu_result;
}

/*
 * Whether the underlay path to tun's remote takes an outer IPv6 packet of
 * outer_len bytes (path_mtu6 above). A packet that no longer fits goes to
 * the kernel's vxlan driver (weftgro0), which honours the path MTU
 * (fragmenting the outer packet at the source or signalling the sender)
 * instead of sending into a black hole. Only large packets pay for the
 * lookup.
 */
static __always_inline int outer6_fits_path(struct __sk_buff *skb, const struct node_config *cfg,
					    const struct tunnel_info *tun, __u32 outer_len)
{
	return outer_len <= IPV6_MIN_MTU || !path_mtu6(skb, cfg, tun, outer_len);
}

/*
 * Pushes outer IPv6 + UDP + VXLAN + inner Ethernet after the MAC header,
 * over an inner IPv4 or IPv6 packet (the frame's own Ethernet type says
 * which). Returns 0, a helper's error (< 0), ENCAP6_NEEDS_KERNEL (nothing
 * changed: hand it to encap_via_kernel; also where it would exceed the
 * underlay path's MTU, see outer6_fits_path) or ENCAP6_NO_SOURCE (the node
 * has no IPv6 underlay address). path_checked: the caller has already asked
 * the FIB whether this packet fits the path (forward_to_peer6 does for a
 * pod's IPv6 packet, to answer it with Packet Too Big): one lookup, not two.
 */
static __always_inline long vxlan_encap6(struct __sk_buff *skb, const struct node_config *cfg,
					 const struct tunnel_info *tun, int path_checked)
{
	const __u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 |
			    BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
			    BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data, *inner_eth;
	struct ipv6hdr *ip6;
	struct udphdr *udp;
	struct vxlanhdr *vx;
	__u32 hash, udp_len;
	__be16 proto;
	__u16 check;
	__u8 ecn;
	__u64 sum;
	long err;

	if (addr_is_zero(cfg->underlay_ip6))
		return ENCAP6_NO_SOURCE;
	/* One checksum field for every segment: see the header comment. */
	if (skb->gso_size)
		return ENCAP6_NEEDS_KERNEL;
	if ((void *)(eth + 1) > data_end)
		return ENCAP6_NEEDS_KERNEL;
	/* The inner packet's share now: adjust_room moves it but changes none of its bytes. */
	if (vxlan6_inner_sum(eth, data_end, skb->len - ETH_HLEN, &sum))
		return ENCAP6_NEEDS_KERNEL;
	proto = eth->h_proto;
	ecn = inner_ecn(eth);
	if (!path_checked && !outer6_fits_path(skb, cfg, tun, skb->len - ETH_HLEN + VXLAN6_OVERHEAD))
		return ENCAP6_NEEDS_KERNEL;

	hash = bpf_get_hash_recalc(skb);
	err = bpf_skb_adjust_room(skb, VXLAN6_OVERHEAD, BPF_ADJ_ROOM_MAC, flags);
	if (err)
		return err;

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip6 = (void *)(eth + 1);
	udp = (void *)(ip6 + 1);
	vx = (void *)(udp + 1);
	inner_eth = (void *)(vx + 1);
	if ((void *)(inner_eth + 1) > data_end)
		return -1;

	__builtin_memcpy(inner_eth->h_dest, tun->vtep_mac, ETH_ALEN);
	__builtin_memcpy(inner_eth->h_source, cfg->vtep_mac, ETH_ALEN);
	inner_eth->h_proto = proto;

	vx->flags = VXLAN_FLAG_I;
	vx->reserved1[0] = vx->reserved1[1] = vx->reserved1[2] = 0;
	vx->vni_reserved = bpf_htonl(tun->vni << 8);

	udp_len = skb->len - ETH_HLEN - sizeof(*ip6);
	udp->source = flow_src_port(hash, cfg);
	udp->dest = bpf_htons(cfg->port);
	udp->len = bpf_htons(udp_len);
	udp->check = 0;

	/* Version 6, traffic class = inner ECN with CE as ECT(0), flow label 0. */
	*(__be32 *)ip6 = bpf_htonl(0x60000000 | (__u32)(ecn == 0x3 ? 0x2 : ecn) << 20);
	ip6->payload_len = bpf_htons(udp_len);
	ip6->nexthdr = IPPROTO_UDP;
	ip6->hop_limit = 64;
	__builtin_memcpy(&ip6->saddr, cfg->underlay_ip6, WEFT_ADDR_LEN);
	__builtin_memcpy(&ip6->daddr, tun->remote, WEFT_ADDR_LEN);

	sum += pseudo6_sum(cfg->underlay_ip6, tun->remote, udp_len) + vxlan6_outer_sum(udp);
	check = ~fold16(sum);
	udp->check = check ? check : 0xffff; /* 0 means "no checksum": send its other form */

	__builtin_memcpy(eth->h_source, cfg->underlay_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	return 0;
}

/* ---- receive ---- */

/*
 * Whether the frame can be VXLAN to our IPv6 underlay address (see
 * may_be_vxlan): outer IPv6 without extension headers, UDP to our port.
 */
static __always_inline int may_be_vxlan6(struct __sk_buff *skb, const struct node_config *cfg)
{
	/* pad: the IPv6 addresses 4-byte aligned on the stack, for addr_equal. */
	struct {
		__u8 pad[2];
		struct ethhdr eth;
		struct ipv6hdr ip6;
		__be16 sport, dport;
	} h;

	_Static_assert(__builtin_offsetof(typeof(h), ip6) == 16, "may_be_vxlan6 layout");
	if (bpf_skb_load_bytes(skb, 0, &h.eth, sizeof(h) - 2))
		return 0;
	return h.eth.h_proto == bpf_htons(ETH_P_IPV6) && h.ip6.version == 6 && h.ip6.nexthdr == IPPROTO_UDP &&
	       !addr_is_zero(cfg->underlay_ip6) && addr_equal((const __u8 *)&h.ip6.daddr, cfg->underlay_ip6) &&
	       h.dport == bpf_htons(cfg->port);
}

/*
 * Outer IPv6 with extension headers: walks hop-by-hop, routing and
 * destination options headers (at most 3) to see whether UDP to our port
 * or a fragment follows. Returns CNT_PASS_FRAGMENT, CNT_PASS_OUTER6_EXTHDR
 * (VXLAN to us behind extension headers: the kernel's to parse, weftgro0's
 * socket then gets it and gro_sink checks it) or CNT_PASS_UNDERLAY.
 */
static __always_inline enum counter outer6_exthdr(void *hdr, void *data_end, __u8 nexthdr, __u16 port)
{
#pragma unroll
	for (int i = 0; i < 3; i++) {
		__u8 *h = hdr;

		if (nexthdr != NEXTHDR_HOP && nexthdr != NEXTHDR_ROUTING && nexthdr != NEXTHDR_DEST)
			break;
		if ((void *)(h + 2) > data_end)
			return CNT_PASS_UNDERLAY;
		nexthdr = h[0];
		hdr = h + (h[1] + 1) * 8;
	}
	if (nexthdr == NEXTHDR_FRAGMENT)
		return CNT_PASS_FRAGMENT;
	if (nexthdr == IPPROTO_UDP) {
		struct udphdr *udp = hdr;

		if ((void *)(udp + 1) <= data_end && udp->dest == bpf_htons(port))
			return CNT_PASS_OUTER6_EXTHDR;
	}
	return CNT_PASS_UNDERLAY;
}

/*
 * classify_underlay for a frame whose outer header is IPv6 (eth->h_proto
 * checked by the caller). The same verdicts, plus the IPv6 ones: a fragment
 * header goes to the kernel as IPv4 fragments do (pass_fragment),
 * extension headers before UDP to our port too (pass_outer6_exthdr), a zero
 * UDP checksum is dropped, one we cannot confirm is the kernel's to check
 * (pass_outer6_csum; see the header comment). aggregated: the skb is a GRO
 * train (tc's gso_size), whose checksums GRO verified.
 */
static __always_inline enum counter classify_underlay6(void *data, void *data_end, __u32 pkt_len,
						       const struct node_config *cfg, struct vxlan_frame *f,
						       int aggregated)
{
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct udphdr *udp;
	struct ethhdr *inner_eth;
	__u32 plen, udp_len, inner_len;
	enum counter c;

	if ((void *)(ip6 + 1) > data_end)
		return CNT_PASS_UNDERLAY;
	if (ip6->version != 6 || addr_is_zero(cfg->underlay_ip6) ||
	    !addr_equal((const __u8 *)&ip6->daddr, cfg->underlay_ip6))
		return CNT_PASS_UNDERLAY;
	udp = (void *)(ip6 + 1);
	if (ip6->nexthdr != IPPROTO_UDP) {
		if (ip6->nexthdr == NEXTHDR_FRAGMENT) {
			/* Fragment header: next header, reserved, offset|M, id. */
			__u8 *fh = (void *)(ip6 + 1);
			struct udphdr *fudp = (void *)(fh + 8);

			if ((void *)(fh + 8) > data_end)
				return CNT_PASS_UNDERLAY;
			if (*(__be16 *)(fh + 2) & bpf_htons(IP6_OFFSET_MASK))
				return CNT_PASS_FRAGMENT; /* a later fragment: cannot tell, like IPv4 */
			if (fh[0] != IPPROTO_UDP || (void *)(fudp + 1) > data_end || fudp->dest != bpf_htons(cfg->port))
				return CNT_PASS_UNDERLAY;
			return CNT_PASS_FRAGMENT;
		}
		return outer6_exthdr(udp, data_end, ip6->nexthdr, cfg->port);
	}
	if ((void *)(udp + 1) > data_end)
		return CNT_PASS_UNDERLAY;
	if (udp->dest != bpf_htons(cfg->port))
		return CNT_PASS_UNDERLAY;

	/* From here on the frame claims to be VXLAN for us. */
	plen = bpf_ntohs(ip6->payload_len);
	udp_len = bpf_ntohs(udp->len);
	/* Payload length 0 is a jumbogram (RFC 2675): not VXLAN we send or take. */
	if (plen > pkt_len - ETH_HLEN - sizeof(*ip6) || plen < sizeof(*udp) || udp_len != plen)
		return CNT_DROP_OUTER_LENGTH;
	if (udp_len < sizeof(*udp) + sizeof(struct vxlanhdr) + ETH_HLEN + sizeof(struct iphdr))
		return CNT_DROP_SHORT;
	if (udp->check == 0)
		return CNT_DROP_OUTER6_ZERO_CSUM;

	c = classify_vxlan(udp, data_end, udp_len, cfg, (const __u8 *)&ip6->saddr, f, &inner_eth, &inner_len);
	if (c != CNT_DECAP)
		return c;

	if (!aggregated) {
		__u64 sum;

		if (vxlan6_inner_sum(inner_eth, data_end, inner_len, &sum))
			return CNT_PASS_OUTER6_CSUM;
		sum += pseudo6_sum((const __u8 *)&ip6->saddr, (const __u8 *)&ip6->daddr, udp_len) + vxlan6_outer_sum(udp);
		if (fold16(sum) != 0xffff)
			return CNT_PASS_OUTER6_CSUM;
	}

	f->outer_eth = eth;
	f->outer_ecn = bpf_ntohl(*(__be32 *)ip6) >> 20 & 0x3;
	f->overhead = VXLAN6_OVERHEAD;
	return CNT_DECAP;
}

/*
 * The receive classifier for either outer family: IPv6 here, IPv4 in
 * helpers.h (checked first: the common case costs one comparison more).
 */
static __always_inline enum counter classify_frame(void *data, void *data_end, __u32 pkt_len,
						   const struct node_config *cfg, struct vxlan_frame *f,
						   int aggregated)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_IPV6))
		return classify_underlay6(data, data_end, pkt_len, cfg, f, aggregated);
	return classify_underlay(data, data_end, pkt_len, cfg, f);
}
