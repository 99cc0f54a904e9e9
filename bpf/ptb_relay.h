/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ptb_relay.h: a router's Packet Too Big about our outer IPv6 VXLAN packet,
 * relayed to the pod (or host) that sent the inner packet (issue 14).
 *
 * IPv6 routers never fragment. A hop toward a peer whose MTU is below the
 * underlay's refuses our outer IPv6 packets with Packet Too Big to this
 * node's underlay address (RFC 8201), quoting them: outer IPv6, UDP, VXLAN,
 * the inner frame. The kernel would note a path MTU toward the peer that
 * our encapsulation never asks for, and nobody would tell the inner sender:
 * its TCP would keep sending segments that cannot arrive (a black hole;
 * over an IPv4 underlay routers fragment our DF-less outer packets
 * instead). As the kernel's own IPv6 tunnels do (ip6_tnl_err), the message
 * is relayed to the inner sender instead of going to the kernel: the same
 * Packet Too Big from the same router, to the inner source, reporting the
 * router's MTU less our 70 bytes (at least IPv6's 1280: a pod's path MTU
 * cannot go lower), quoting the inner IPv6 header and the 8 bytes after it
 * (all Linux's icmpv6_notify and the TCP/UDP error handlers read).
 *
 * Relayed only where it can be ours: ICMPv6 Packet Too Big to our IPv6
 * underlay address, quoting IPv6 UDP from that address to our VXLAN port,
 * an inner IPv6 packet (v4-in-v6 is left to the kernel, as before), from a
 * local pod or from weft0's address (host_ip6), with an MTU below the
 * underlay's. The router's checksum is not verified (it covers up to 1232
 * bytes); a corrupted MTU can at worst lower one flow's path MTU toward
 * 1280 until it expires, what any forged Packet Too Big can do.
 */
#pragma once

#include <linux/pkt_cls.h>

#include "helpers.h"
#include "ipv6.h"
#include "outer6.h"
#include "path6.h"
#include "ptb.h"

/* Where a router's Packet Too Big about our packet keeps what. */
#define PTB_RELAY_QUOTED (ETH_HLEN + IPV6_HLEN + PTB_HLEN) /* 62: our outer IPv6 header */
#define PTB_RELAY_INNER_ETH (PTB_RELAY_QUOTED + IPV6_HLEN + 8 + 8) /* 118: after our UDP and VXLAN headers */
#define PTB_RELAY_INNER (PTB_RELAY_INNER_ETH + ETH_HLEN)          /* 132: the inner IPv6 header */
#define PTB_RELAY_QUOTE (IPV6_HLEN + 8)                          /* what the relayed message quotes */
#define PTB_RELAY_MIN_LEN (PTB_RELAY_INNER + PTB_RELAY_QUOTE)    /* 180 */

_Static_assert(PTB_RELAY_INNER - PTB_RELAY_QUOTED == VXLAN6_OVERHEAD, "the relay removes exactly our headers");
_Static_assert((PTB_HLEN + PTB_RELAY_QUOTE) % 4 == 0, "bpf_csum_diff takes multiples of 4");

/*
 * Relays the frame if it is such a Packet Too Big (see above); -1 when it
 * is not, for the caller to go on. The frame's IPv6 header is known to fit.
 */
static __always_inline int relay_underlay_ptb6(struct __sk_buff *skb, const struct node_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct {
		struct ipv6hdr ip6;
		struct icmp6_ptb ptb;
	} hdr;
	struct {
		struct ipv6hdr ip6;
		struct udphdr udp;
		struct vxlanhdr vx;
	} q;
	const struct endpoint_info *ep = NULL;
	struct in6_addr sender;
	__be16 inner_proto;
	__u32 mtu, relay;
	__u8 *quote;
	__s64 sum;

	/* The one test every other plain IPv6 frame pays. */
	if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_ICMPV6)
		return -1;
	if (skb->len < PTB_RELAY_MIN_LEN || addr_is_zero(cfg->underlay_ip6) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, &hdr, sizeof(hdr)))
		return -1;
	if (hdr.ip6.version != 6 || hdr.ptb.type != ICMPV6_PKT_TOOBIG || hdr.ptb.code != 0 ||
	    !addr_equal((const __u8 *)&hdr.ip6.daddr, cfg->underlay_ip6))
		return -1;
	if (bpf_skb_load_bytes(skb, PTB_RELAY_QUOTED, &q, sizeof(q)))
		return -1;
	if (q.ip6.version != 6 || q.ip6.nexthdr != IPPROTO_UDP ||
	    !addr_equal((const __u8 *)&q.ip6.saddr, cfg->underlay_ip6) || q.udp.dest != bpf_htons(cfg->port) ||
	    !(q.vx.flags & VXLAN_FLAG_I))
		return -1;
	if (bpf_skb_load_bytes(skb, PTB_RELAY_INNER_ETH + 2 * ETH_ALEN, &inner_proto, sizeof(inner_proto)) ||
	    inner_proto != bpf_htons(ETH_P_IPV6) || bpf_skb_load_bytes(skb, PTB_RELAY_INNER, &q.ip6, IPV6_HLEN) ||
	    q.ip6.version != 6)
		return -1;
	__builtin_memcpy(&sender, &q.ip6.saddr, sizeof(sender));
	ep = endpoint_for_v6(&sender);
	if (!ep && (addr_is_zero(cfg->host_ip6) || !addr_equal((const __u8 *)&sender, cfg->host_ip6)))
		return -1;
	mtu = bpf_ntohl(hdr.ptb.mtu);
	if (mtu >= cfg->mtu)
		return -1; /* no news: the pod MTU already fits the underlay's */
	relay = mtu > IPV6_MIN_MTU + VXLAN6_OVERHEAD ? mtu - VXLAN6_OVERHEAD : IPV6_MIN_MTU;

	/* Drop our headers (and the inner Ethernet one) between the ICMPv6 header's place and the inner packet. */
	if (bpf_skb_adjust_room(skb, -(int)VXLAN6_OVERHEAD, BPF_ADJ_ROOM_NET, 0) ||
	    bpf_skb_change_tail(skb, ETH_HLEN + IPV6_HLEN + PTB_HLEN + PTB_RELAY_QUOTE, 0) ||
	    bpf_skb_pull_data(skb, ETH_HLEN + IPV6_HLEN + PTB_HLEN + PTB_RELAY_QUOTE)) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	quote = data + ETH_HLEN + IPV6_HLEN + PTB_HLEN;
	if ((void *)(quote + PTB_RELAY_QUOTE) > data_end) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}

	/* The router's message, now about the inner packet: same source, to its sender. */
	hdr.ip6.priority = 0;
	hdr.ip6.flow_lbl[0] = hdr.ip6.flow_lbl[1] = hdr.ip6.flow_lbl[2] = 0;
	hdr.ip6.payload_len = bpf_htons(PTB_HLEN + PTB_RELAY_QUOTE);
	hdr.ip6.hop_limit = 64;
	__builtin_memcpy(&hdr.ip6.daddr, &sender, sizeof(sender));
	hdr.ptb.csum = 0;
	hdr.ptb.mtu = bpf_htonl(relay);
	sum = icmp6_pseudo_csum(&hdr.ip6.saddr, &sender, PTB_HLEN + PTB_RELAY_QUOTE);
	if (sum >= 0)
		sum = bpf_csum_diff(NULL, 0, (__be32 *)&hdr.ptb, PTB_HLEN, sum);
	if (sum >= 0)
		sum = bpf_csum_diff(NULL, 0, (__be32 *)quote, PTB_RELAY_QUOTE, sum);
	if (sum < 0) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}
	hdr.ptb.csum = csum_fold(sum);
	/* Through the helper: it keeps a CHECKSUM_COMPLETE skb's sum right. */
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &hdr, sizeof(hdr), BPF_F_RECOMPUTE_CSUM)) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}
	if (ep) {
		int ret = deliver_to_pod6(skb, ep, CNT_PTB_RELAYED);

		if (ret >= 0)
			return ret;
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}
	return to_host_stack6(skb, cfg, CNT_PTB_RELAYED);
}
