/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ptb.h: ICMPv6 Packet Too Big (RFC 4443 3.2, RFC 8201) for an oversize
 * packet from a pod, frag_needed.h's IPv6 twin. IPv6 routers never
 * fragment and there is no DF bit: every oversize packet that is not GSO
 * is answered, never with more than the rules below allow:
 *   - never about an ICMPv6 error (RFC 4443 2.4 (e)); a packet whose
 *     upper layer hides behind extension headers goes to the kernel, which
 *     can walk them;
 *   - rate-limited per source pod, sharing frag_needed.h's budget map and
 *     numbers (the source's 16-byte address is the key);
 *   - built here only for ICMPv6 (echo: checksummed in software by the
 *     pod's stack); TCP and UDP may be CHECKSUM_PARTIAL, which a rewrite
 *     into ICMPv6 would leave stale, so the kernel's forwarding path
 *     answers them (route via weft0, MTU underlay - 50);
 *   - the message quotes the first 1232 bytes of the offending packet, so
 *     that it is exactly the IPv6 minimum MTU (1280 bytes) long. An
 *     oversize packet shorter than that exists only where the pod MTU is
 *     below IPv6's minimum; the kernel answers those.
 * The answer comes from weft0's IPv6 address (host_ip6) and reports the
 * MTU that fits once our headers are added.
 */
#pragma once

#include <linux/pkt_cls.h>

#include "helpers.h"
#include "frag_needed.h"
#include "ipv6.h"
#include "outer6.h" /* IPV6_MIN_MTU; path_mtu6, the underlay's path MTU */

#define PTB_HLEN 8                                       /* type, code, checksum, MTU */
#define PTB_QUOTED (IPV6_MIN_MTU - IPV6_HLEN - PTB_HLEN) /* 1232 */
#define PTB_CSUM_CHUNK 248                               /* (PTB_HLEN + PTB_QUOTED) / 5, a multiple of 4 */

_Static_assert((PTB_HLEN + PTB_QUOTED) % PTB_CSUM_CHUNK == 0, "PTB checksum chunks must tile the message");

struct icmp6_ptb {
	__u8 type;
	__u8 code;
	__sum16 csum;
	__be32 mtu;
};

/*
 * What to do with an oversize, non-GSO IPv6 packet from a pod (ip6 checked
 * to fit before data_end; l3_len its length): CNT_PACKET_TOO_BIG (build
 * the answer here), CNT_PASS_MTU (the kernel answers), or a drop reason.
 * kernel_answers: whether the kernel's forwarding path would see the packet
 * as too big (the limit is our configured MTU, weft0's); where only the
 * underlay's path MTU is smaller (path_mtu6), it cannot, and TCP and UDP are
 * answered here too, CHECKSUM_PARTIAL or not: the answer goes straight back
 * into the pod, whose stack takes a CHECKSUM_PARTIAL skb as checksummed.
 */
static __always_inline enum counter ptb_policy(const struct ipv6hdr *ip6, void *data_end, __u32 l3_len,
					       const struct node_config *cfg, int kernel_answers)
{
	struct peer_key key;

	if (ip6->nexthdr == IPPROTO_ICMPV6) {
		const __u8 *type = (const void *)(ip6 + 1);

		if ((void *)(type + 1) > data_end)
			return CNT_DROP_MTU_NO_ICMP; /* cannot tell: treat as an error */
		if (*type < 128)
			return CNT_DROP_MTU_NO_ICMP; /* an error message (RFC 4443 2.1) */
	} else if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP) {
		return CNT_PASS_MTU; /* extension headers: the kernel looks behind them */
	}
	__builtin_memcpy(key.addr, &ip6->saddr, sizeof(key.addr));
	if (!icmp_error_allowed(&key))
		return CNT_DROP_FRAG_NEEDED_SUPPRESSED;
	if ((kernel_answers && ip6->nexthdr != IPPROTO_ICMPV6) || l3_len < PTB_QUOTED || addr_is_zero(cfg->host_ip6))
		return CNT_PASS_MTU;
	return CNT_PACKET_TOO_BIG;
}

/*
 * Turns the packet into the Packet Too Big answering it and sends it back
 * out of the veth it came in on, toward the pod. mtu: what fits.
 */
static __always_inline int send_packet_too_big(struct __sk_buff *skb, const struct node_config *cfg, __u32 mtu)
{
	const __u32 added = IPV6_HLEN + PTB_HLEN;
	__u8 pod_mac[ETH_ALEN], gw_mac[ETH_ALEN];
	struct in6_addr pod;
	void *data, *data_end;
	struct ethhdr *eth;
	struct ipv6hdr *ip6, *orig;
	struct icmp6_ptb *ptb;
	__s64 sum;

	if (bpf_skb_change_tail(skb, ETH_HLEN + PTB_QUOTED, 0) ||
	    bpf_skb_adjust_room(skb, added, BPF_ADJ_ROOM_MAC, 0) ||
	    bpf_skb_pull_data(skb, ETH_HLEN + IPV6_MIN_MTU)) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}
	/* Our bytes now, checksum included (only ICMPv6 gets here: ptb_policy). */
	bpf_csum_level(skb, BPF_CSUM_LEVEL_RESET);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip6 = (void *)(eth + 1);
	ptb = (void *)(ip6 + 1);
	orig = (void *)(ptb + 1);
	if ((void *)ptb + PTB_HLEN + PTB_QUOTED > data_end || (void *)(orig + 1) > data_end) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}

	__builtin_memcpy(pod_mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(gw_mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, pod_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, gw_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IPV6);

	__builtin_memcpy(&pod, &orig->saddr, sizeof(pod));
	ip6->version = 6;
	ip6->priority = 0;
	ip6->flow_lbl[0] = ip6->flow_lbl[1] = ip6->flow_lbl[2] = 0;
	ip6->payload_len = bpf_htons(PTB_HLEN + PTB_QUOTED);
	ip6->nexthdr = IPPROTO_ICMPV6;
	ip6->hop_limit = 64;
	__builtin_memcpy(&ip6->saddr, cfg->host_ip6, sizeof(ip6->saddr));
	__builtin_memcpy(&ip6->daddr, &pod, sizeof(pod));

	ptb->type = ICMPV6_PKT_TOOBIG;
	ptb->code = 0;
	ptb->csum = 0;
	ptb->mtu = bpf_htonl(mtu);

	sum = icmp6_pseudo_csum(&ip6->saddr, &pod, PTB_HLEN + PTB_QUOTED);
#pragma unroll
	for (int i = 0; i < (PTB_HLEN + PTB_QUOTED) / PTB_CSUM_CHUNK; i++) {
		void *chunk = (void *)ptb + i * PTB_CSUM_CHUNK;

		if (sum < 0)
			break;
		if (chunk + PTB_CSUM_CHUNK > data_end) {
			sum = -1;
			break;
		}
		sum = bpf_csum_diff(NULL, 0, chunk, PTB_CSUM_CHUNK, sum);
	}
	if (sum < 0) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}
	ptb->csum = csum_fold(sum);

	count(CNT_PACKET_TOO_BIG, skb->len);
	return bpf_redirect(skb->ifindex, 0);
}
