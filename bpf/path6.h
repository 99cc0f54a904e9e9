/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * path6.h: where an inner IPv6 packet goes (issue 14), the IPv4 paths of
 * weft.c for the other family. weft.c's programs switch on the family and
 * call in here:
 *
 *   from_pod   -> from_pod6: ND (nd.h), source check, a remote pod (VXLAN
 *                 or DirectRouting), a local pod, or the kernel
 *   from_host  -> from_host6: a host process to a remote pod
 *   decap      -> deliver_decapsulated6: a local pod or the host (weft0)
 *   underlay   -> from_underlay_plain6: DirectRouting receive
 *
 * The encapsulation itself is weft.c's vxlan_encap over the IPv4 underlay
 * and outer6.h's vxlan_encap6 over the IPv6 one (both take the inner
 * frame's own Ethernet type and ECN, whatever the family), so an IPv6 pod
 * packet travels over whichever underlay the tunnel's remote names.
 */
#pragma once

#include <linux/pkt_cls.h>

#include "helpers.h"
#include "antispoof.h"
#include "ipv6.h"
#include "nd.h"
#include "ptb.h"
#include "underlay.h"
#include "outer6.h"

/* Defined in weft.c, shared by both families. */
static __always_inline int vxlan_encap(struct __sk_buff *skb, const struct node_config *cfg,
				       const struct tunnel_info *tun);
static __always_inline int to_gro_cell(struct __sk_buff *skb, const struct node_config *cfg);

/*
 * A DirectRouting peer is reached without encapsulation over the IPv6
 * underlay only: IPv6 needs an IPv6 next hop on our L2. A direct peer known
 * by its IPv4 address alone gets IPv6 encapsulated (as flannel falls back
 * to VXLAN for a peer it cannot route to directly).
 */
static __always_inline int direct6(const struct tunnel_info *tun)
{
	return tun->mode == TUNNEL_MODE_DIRECT && !addr_is_v4mapped(tun->remote);
}

/* Bytes our headers add toward tun: outer IPv4 (50) or IPv6 (70) VXLAN, 0 direct. */
static __always_inline __u32 overhead6(const struct tunnel_info *tun)
{
	return direct6(tun) ? 0 : tunnel_overhead(tun);
}

/* deliver_to_pod for IPv6: hop limit - 1, gateway MAC as source; -1 when it would expire. */
static __always_inline int deliver_to_pod6(struct __sk_buff *skb, const struct endpoint_info *ep, enum counter c)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);

	if ((void *)(ip6 + 1) > data_end)
		return -1;
	if (ip6->hop_limit <= 1)
		return -1;
	ipv6_decrement_hop_limit(skb, ip6);
	__builtin_memcpy(eth->h_dest, ep->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->host_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	count(c, skb->len);
	return bpf_redirect_peer(ep->ifindex, 0);
}

/* to_host_stack for IPv6: into weft0's ingress, where the host's route for it points. */
static __always_inline int to_host_stack6(struct __sk_buff *skb, const struct node_config *cfg, enum counter c)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, cfg->vtep_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	count(c, skb->len);
	return bpf_redirect(cfg->host_ifindex, BPF_F_INGRESS);
}

/* deliver_decapsulated for IPv6 (skb->protocol says the family). */
static __always_inline int deliver_decapsulated6(struct __sk_buff *skb, const struct node_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	const struct endpoint_info *ep;

	if ((void *)(ip6 + 1) > data_end) {
		count(CNT_DROP_INNER_MALFORMED, skb->len);
		return TC_ACT_SHOT;
	}
	ep = endpoint_for_v6(&ip6->daddr);
	if (ep) {
		int ret;

		if (ct_needs_stack6(skb, ip6, data_end))
			return to_host_stack6(skb, cfg, CNT_PASS_CONNTRACK);
		ret = deliver_to_pod6(skb, ep, CNT_DELIVER);
		if (ret >= 0)
			return ret;
	}
	return to_host_stack6(skb, cfg, CNT_TO_HOST);
}

/*
 * forward_to_peer for IPv6: VXLAN, or plain routing for a DirectRouting
 * peer. from_pod: the packet is being forwarded (hop limit - 1, MTU
 * signalled back to the pod with Packet Too Big).
 */
static __always_inline int forward_to_peer6(struct __sk_buff *skb, const struct node_config *cfg,
					    const struct tunnel_info *tun, int from_pod)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	__u32 l3_len, overhead;

	if ((void *)(ip6 + 1) > data_end)
		return TC_ACT_OK;

	overhead = overhead6(tun);
	l3_len = skb->len - ETH_HLEN;
	if (skb->gso_size) {
		l3_len = gso_segment_l3_len6(skb, ip6, data_end);
		if (!l3_len || l3_len + overhead > cfg->mtu) {
			count(CNT_PASS_MTU, skb->len); /* the kernel segments or signals */
			return TC_ACT_OK;
		}
	} else if (l3_len + overhead > cfg->mtu) {
		if (from_pod) {
			/* IPv6 routers never fragment: answer, or let the kernel answer. */
			enum counter c = ptb_policy(ip6, data_end, l3_len, cfg, 1);

			if (c == CNT_PACKET_TOO_BIG)
				return send_packet_too_big(skb, cfg, cfg->mtu - overhead);
			count(c, skb->len);
			return counter_is_drop(c) ? TC_ACT_SHOT : TC_ACT_OK;
		}
		count(CNT_PASS_MTU, skb->len); /* weft0's MTU: the kernel signals its own sender */
		return TC_ACT_OK;
	}
	if (from_pod && overhead == VXLAN6_OVERHEAD && l3_len + overhead > IPV6_MIN_MTU) {
		/* Over the IPv6 underlay a hop may be smaller than ours (path_mtu6); l3_len is per segment. */
		__u32 pmtu = path_mtu6(skb, cfg, tun, l3_len + overhead);

		if (pmtu > overhead) {
			enum counter c = ptb_policy(ip6, data_end, l3_len, cfg, 0);

			if (c == CNT_PACKET_TOO_BIG)
				return send_packet_too_big(skb, cfg, pmtu - overhead);
			count(c, skb->len);
			return counter_is_drop(c) ? TC_ACT_SHOT : TC_ACT_OK;
		}
	}

	if (from_pod && ct_needs_stack6(skb, ip6, data_end)) {
		count(CNT_PASS_CONNTRACK, skb->len);
		return TC_ACT_OK;
	}
	if (from_pod) {
		if (ip6->hop_limit <= 1) {
			count(CNT_PASS_TTL, skb->len); /* the kernel sends Time Exceeded */
			return TC_ACT_OK;
		}
		ipv6_decrement_hop_limit(skb, ip6);
	}

	if (direct6(tun)) {
		struct bpf_redir_neigh nh = { .nh_family = AF_INET6 };

		__builtin_memcpy(nh.ipv6_nh, tun->remote, sizeof(nh.ipv6_nh));
		count(from_pod ? CNT_DIRECT : CNT_DIRECT_HOST, skb->len);
		count_peer_tx(tun, skb->len);
		return bpf_redirect_neigh(cfg->underlay_ifindex, &nh, sizeof(nh), 0);
	}

	{
		long err;

		if (overhead == VXLAN_OVERHEAD) {
			err = vxlan_encap(skb, cfg, tun);
		} else {
			/* Over the IPv6 underlay (outer6.h), as forward_to_peer does; a pod's packet had its path checked above. */
			err = vxlan_encap6(skb, cfg, tun, from_pod);
			if (err == ENCAP6_NEEDS_KERNEL)
				return encap_via_kernel(skb, cfg, tun);
			if (err == ENCAP6_NO_SOURCE) {
				count(CNT_DROP_NO_UNDERLAY6, skb->len);
				return TC_ACT_SHOT;
			}
		}
		if (err && is_nested_gso_error(err))
			return encap_via_kernel(skb, cfg, tun);
		if (err) {
			count(CNT_DROP_HELPER, skb->len);
			return TC_ACT_SHOT;
		}
	}
	count(from_pod ? CNT_ENCAP : CNT_ENCAP_HOST, skb->len);
	count_peer_tx(tun, skb->len);
	return bpf_redirect_neigh(cfg->underlay_ifindex, NULL, 0, 0);
}

/* from_pod for an IPv6 frame. */
static __always_inline int from_pod6(struct __sk_buff *skb, const struct node_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	const struct tunnel_info *tun;
	const struct endpoint_info *ep;
	int ret;

	if ((void *)(ip6 + 1) > data_end)
		goto pass;
	ret = pod_icmp6(skb);
	if (ret >= 0)
		return ret;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		goto pass;

	/*
	 * Link-scoped traffic (to a link-local or multicast address, e.g. MLD)
	 * concerns the veth link only and never leaves this node: the kernel's,
	 * from the pod's link-local source too. Everything else must come from
	 * the pod's own address.
	 */
	if (addr_is_link_local(ip6->daddr.s6_addr) || addr_is_multicast(ip6->daddr.s6_addr)) {
		if (addr_is_link_local(ip6->saddr.s6_addr) || addr_is_zero(ip6->saddr.s6_addr))
			goto pass;
	}
	if (!pod_owning_v6(skb->ifindex, &ip6->saddr)) {
		count(CNT_DROP_POD_SPOOF, skb->len);
		return TC_ACT_SHOT;
	}
	if (!ipv6_header_ok(ip6, skb->len - ETH_HLEN))
		goto pass;

	tun = tunnel_for_v6(&ip6->daddr);
	if (tun)
		return forward_to_peer6(skb, cfg, tun, 1);

	ep = endpoint_for_v6(&ip6->daddr);
	if (ep) {
		if (ct_needs_stack6(skb, ip6, data_end)) {
			count(CNT_PASS_CONNTRACK, skb->len);
			return TC_ACT_OK;
		}
		ret = deliver_to_pod6(skb, ep, CNT_LOCAL);
		if (ret >= 0)
			return ret;
		count(CNT_PASS_TTL, skb->len);
		return TC_ACT_OK;
	}
pass:
	count(CNT_PASS_POD, skb->len);
	return TC_ACT_OK;
}

/* from_host for an IPv6 frame: a host process to a remote pod, or nowhere. */
static __always_inline int from_host6(struct __sk_buff *skb, const struct node_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	const struct tunnel_info *tun;

	/* The host's stack sends IPv6 only: anything else cannot be carried. */
	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		goto drop;
	tun = tunnel_for_v6(&ip6->daddr);
	if (tun)
		return forward_to_peer6(skb, cfg, tun, 0);
drop:
	count(CNT_DROP_NO_TUNNEL, skb->len);
	return TC_ACT_SHOT;
}

/*
 * direct_sender_ok (antispoof.h) for a peer known by its IPv6 underlay
 * address: the L2 sender must be the neighbour the kernel holds for it.
 */
static __always_inline int direct_sender_ok6(struct __sk_buff *skb, const struct node_config *cfg,
					     const struct ethhdr *eth, const struct tunnel_info *tun)
{
	struct bpf_fib_lookup fib = {};

	if (addr_is_v4mapped(tun->remote))
		return direct_sender_ok(skb, cfg, eth, tun);
	fib.family = AF_INET6;
	__builtin_memcpy(fib.ipv6_dst, tun->remote, sizeof(fib.ipv6_dst));
	fib.tot_len = IPV6_HLEN;
	fib.ifindex = cfg->underlay_ifindex;
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT) != BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	return fib.ifindex == cfg->underlay_ifindex && addr_equal((const __u8 *)fib.ipv6_dst, tun->remote) &&
	       mac_equal(fib.dmac, eth->h_source);
}

/* from_underlay_plain for IPv6: unencapsulated from a DirectRouting peer's pod to a local pod. */
static __always_inline int from_underlay_plain6(struct __sk_buff *skb, const struct node_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	const struct endpoint_info *ep;
	const struct tunnel_info *tun;

	if ((void *)(ip6 + 1) > data_end)
		goto pass;
	if (!ipv6_header_ok(ip6, skb->len - ETH_HLEN))
		goto pass;
	ep = endpoint_for_v6(&ip6->daddr);
	if (!ep)
		goto pass;
	tun = tunnel_for_v6(&ip6->saddr);
	if (!tun || tun->mode != TUNNEL_MODE_DIRECT)
		goto pass;
	if (!direct_sender_ok6(skb, cfg, eth, tun)) {
		count(CNT_DROP_DIRECT_PEER, skb->len);
		return TC_ACT_SHOT;
	}
	count_peer_rx(tun, skb->len);
	if (ct_needs_stack6(skb, ip6, data_end))
		return to_host_stack6(skb, cfg, CNT_PASS_CONNTRACK);
	if (to_gro_cell(skb, cfg)) {
		count(CNT_DIRECT_RX, skb->len);
		return bpf_redirect(cfg->gro_cell_ifindex, 0);
	}
	{
		int ret = deliver_to_pod6(skb, ep, CNT_DIRECT_RX);

		if (ret >= 0)
			return ret;
	}
pass:
	count(CNT_PASS_UNDERLAY, skb->len);
	return TC_ACT_OK;
}
