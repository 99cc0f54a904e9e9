/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * nd.h: IPv6 Neighbour Discovery from a pod (RFC 4861), the twin of
 * answer_arp. A pod's IPv6 default route points at <subnet>::1, an address
 * no device owns; its Neighbour Solicitations for that (or for any address
 * but its own) are answered here with the host-side veth's MAC, so the pod
 * needs no router advertisement and everything it sends comes to from_pod.
 *
 * What is answered: a valid NS (hop limit 255, code 0, ICMPv6 checksum
 * right, target not multicast, options well formed; RFC 4861 7.1.1) from
 * the pod's own global address (its endpoint entry), for any target but
 * the pod's own addresses; and a unicast one from the pod's link-local
 * address (Linux's NUD probes), with the MAC it was sent to (pod_nd). What is never answered and goes to the kernel:
 * DAD (source ::), an NS for the pod's own address, a multicast NS from
 * a link-local source (the pod resolving the host veth's own link-local
 * address, which the kernel answers; a first resolution of the gateway
 * takes the source of the packet waiting for it, the pod's own address),
 * router solicitations and MLD (the host, a router without an RA daemon,
 * ignores RS; MLD reports tell it which groups the pod listens to, which
 * is harmless and may matter to a host running a multicast router; neither
 * can teach the host's neighbour table anything), and malformed messages
 * (the kernel drops and counts them).
 *
 * Spoofing: NS and NA must name the pod as the sender: Ethernet source and
 * the link-layer address option (source for NS, target for NA) are the
 * pod's MAC, the IPv6 source is the pod's own address (or a link-local
 * one: a link-local address only speaks for the veth link, and the pod
 * is the only thing on it). An NA's target must be the pod's own address.
 * Router advertisements and redirects from a pod are spoofs by nature
 * (a pod is never the host's router). Spoofs are dropped and counted
 * (drop_nd_spoof) before the host could learn from them.
 */
#pragma once

#include <linux/pkt_cls.h>

#include "helpers.h"
#include "antispoof.h"
#include "ipv6.h"

#define ND_OPT_SOURCE_LL_ADDR 1
#define ND_OPT_TARGET_LL_ADDR 2

/* NA flags in the first byte after the checksum. */
#define ND_NA_ROUTER 0x80
#define ND_NA_SOLICITED 0x40
#define ND_NA_OVERRIDE 0x20

/* NS/NA body: type, code, checksum, flags/reserved, target. */
#define ND_MSG_LEN 24
/* Longest NS/NA body checked here: the message and 6 options (SLLA, nonce, ...). */
#define ND_MAX_LEN (ND_MSG_LEN + 6 * 8)

struct nd_msg {
	__u8 type;
	__u8 code;
	__sum16 csum;
	__u8 flags;
	__u8 reserved[3];
	struct in6_addr target;
	/* options follow */
};

/* The NA answer: message + target link-layer address option. */
struct nd_na {
	struct nd_msg msg;
	__u8 opt_type;
	__u8 opt_len;
	__u8 opt_mac[ETH_ALEN];
};

/*
 * Reads the ICMPv6 message (len bytes, 24..ND_MAX_LEN, a multiple of 8)
 * into buf and checks the RFC 4861 7.1.1/7.1.2 rules every NS/NA must pass.
 * *lladdr is set to the one link-layer address option (source or target,
 * opt_type) if present. Returns 1 if valid.
 */
static __always_inline int nd_valid(struct __sk_buff *skb, const struct ipv6hdr *ip6, __u8 *buf, __u32 len,
				    __u8 opt_type, const __u8 **lladdr)
{
	__s64 sum;

	*lladdr = NULL;
	if (ip6->hop_limit != 255)
		return 0;
	if (len < ND_MSG_LEN || len > ND_MAX_LEN || (len & 7))
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + IPV6_HLEN, buf, len))
		return 0;
	sum = icmp6_pseudo_csum(&ip6->saddr, &ip6->daddr, len);
	if (sum < 0)
		return 0;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)buf, len, sum);
	if (sum < 0 || csum_fold(sum) != 0)
		return 0;
	if (buf[1] != 0 || addr_is_multicast(((struct nd_msg *)buf)->target.s6_addr))
		return 0;

	/*
	 * Options: every one has a non-zero length and stays inside the message.
	 * Walked over the fixed 8-byte slots an option can start at (constant
	 * offsets: the verifier allows no variable-offset stack reads).
	 */
	__u32 next = ND_MSG_LEN;
	int bad = 0;
#pragma unroll
	for (int i = 0; i < (ND_MAX_LEN - ND_MSG_LEN) / 8; i++) {
		const __u32 off = ND_MSG_LEN + i * 8;
		__u8 t = buf[off], l = buf[off + 1];

		if (off < len && off == next) {
			if (l == 0 || off + l * 8 > len)
				bad = 1;
			else if (t == opt_type && l != 1)
				bad = 1; /* an Ethernet address option is 8 bytes */
			else if (t == opt_type)
				*lladdr = &buf[off + 2];
			next = off + (l ? l * 8 : 8);
		}
	}
	return !bad;
}

/*
 * Rewrites the NS in place into the NA answering it and sends it back into
 * the pod (answer_arp's way: out of the veth the NS came in on).
 */
static __always_inline int send_na(struct __sk_buff *skb, const __u8 *pod_mac, const __u8 *gw_mac,
				   const struct in6_addr *target)
{
	const __u32 len = sizeof(struct nd_na);
	__u8 pod[ETH_ALEN], gw[ETH_ALEN];
	struct in6_addr tgt, dst;
	void *data, *data_end;
	struct ethhdr *eth;
	struct ipv6hdr *ip6;
	struct nd_na *na;
	__s64 sum;

	/* The arguments may point into the packet, which change_tail invalidates. */
	__builtin_memcpy(&tgt, target, sizeof(tgt));
	__builtin_memcpy(pod, pod_mac, ETH_ALEN);
	__builtin_memcpy(gw, gw_mac, ETH_ALEN);
	if (bpf_skb_change_tail(skb, ETH_HLEN + IPV6_HLEN + len, 0)) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}
	/* Our bytes now, checksum included (only ICMPv6 gets here, never CHECKSUM_PARTIAL). */
	bpf_csum_level(skb, BPF_CSUM_LEVEL_RESET);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip6 = (void *)(eth + 1);
	na = (void *)(ip6 + 1);
	if ((void *)(na + 1) > data_end) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}

	__builtin_memcpy(eth->h_dest, pod, ETH_ALEN);
	__builtin_memcpy(eth->h_source, gw, ETH_ALEN);

	/* To the NS's source, from the address asked for. */
	__builtin_memcpy(&dst, &ip6->saddr, sizeof(dst));
	ip6->version = 6;
	ip6->priority = 0;
	ip6->flow_lbl[0] = ip6->flow_lbl[1] = ip6->flow_lbl[2] = 0;
	ip6->payload_len = bpf_htons(len);
	ip6->nexthdr = IPPROTO_ICMPV6;
	ip6->hop_limit = 255;
	__builtin_memcpy(&ip6->saddr, &tgt, sizeof(tgt));
	__builtin_memcpy(&ip6->daddr, &dst, sizeof(dst));

	na->msg.type = ICMPV6_NEIGH_ADVERT;
	na->msg.code = 0;
	na->msg.csum = 0;
	/*
	 * Router: we are the pod's gateway. Solicited: an answer. Override: this
	 * MAC is the only one any address off the pod's link can have, so the
	 * pod may replace whatever it cached (a re-created veth).
	 */
	na->msg.flags = ND_NA_ROUTER | ND_NA_SOLICITED | ND_NA_OVERRIDE;
	na->msg.reserved[0] = na->msg.reserved[1] = na->msg.reserved[2] = 0;
	__builtin_memcpy(&na->msg.target, &tgt, sizeof(tgt));
	na->opt_type = ND_OPT_TARGET_LL_ADDR;
	na->opt_len = 1;
	__builtin_memcpy(na->opt_mac, gw, ETH_ALEN);

	sum = icmp6_pseudo_csum(&tgt, &dst, len);
	if (sum >= 0)
		sum = bpf_csum_diff(NULL, 0, (__be32 *)na, len, sum);
	if (sum < 0) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}
	na->msg.csum = csum_fold(sum);

	count(CNT_ND_REPLY, skb->len);
	return bpf_redirect(skb->ifindex, 0);
}

/*
 * A Neighbour Solicitation or Advertisement (type) from a pod: answered,
 * passed to the kernel or dropped as the header comment says.
 */
static __always_inline int pod_nd(struct __sk_buff *skb, struct ethhdr *eth, struct ipv6hdr *ip6, __u8 type)
{
	const struct endpoint_info *ep;
	const __u8 *lladdr;
	__u8 buf[ND_MAX_LEN] = {};
	__u32 len;

	len = bpf_ntohs(ip6->payload_len);
	if (len > ND_MAX_LEN || IPV6_HLEN + len > skb->len - ETH_HLEN)
		goto pass;
	if (!nd_valid(skb, ip6, buf, len,
		      type == ICMPV6_NEIGH_SOLICIT ? ND_OPT_SOURCE_LL_ADDR : ND_OPT_TARGET_LL_ADDR, &lladdr))
		goto pass;

	/*
	 * DAD (RFC 4862): never answered, and it teaches no neighbour table
	 * anything (an NA or an NS with a link-layer option from :: is invalid:
	 * the kernel drops it).
	 */
	if (addr_is_zero(ip6->saddr.s6_addr))
		goto pass;
	/* The sender's MACs: the Ethernet source and any link-layer option agree. */
	if (lladdr && !mac_equal(lladdr, eth->h_source))
		goto spoof;

	if (addr_is_link_local(ip6->saddr.s6_addr)) {
		if (type == ICMPV6_NEIGH_ADVERT) {
			/* Must advertise the pod's own address. */
			ep = pod_owning_v6(skb->ifindex, &((struct nd_msg *)buf)->target);
			if (!ep || !mac_equal(eth->h_source, ep->mac))
				goto spoof;
			goto pass;
		}
		/*
		 * A link-local source names no endpoint entry. Linux sends NUD
		 * probes this way (unicast, to the MAC it cached for the target:
		 * neigh_probe has no packet to take a source from), and they must
		 * be answered or the pod's entry for its gateway fails every few
		 * minutes of UDP or ping traffic. The pod already holds the
		 * gateway's MAC it addressed: confirm that one, to it alone (the
		 * answer goes back into the veth it came from, and the host's
		 * tables learn nothing). A multicast one (no cached MAC) is the
		 * kernel's: the pod resolving the host veth's own link-local.
		 */
		if ((eth->h_dest[0] & 1) || pod_owning_v6(skb->ifindex, &((struct nd_msg *)buf)->target))
			goto pass;
		return send_na(skb, eth->h_source, eth->h_dest, &((struct nd_msg *)buf)->target);
	}
	ep = pod_owning_v6(skb->ifindex, &ip6->saddr);
	if (!ep || !mac_equal(eth->h_source, ep->mac))
		goto spoof;

	if (type == ICMPV6_NEIGH_ADVERT) {
		if (!pod_owning_v6(skb->ifindex, &((struct nd_msg *)buf)->target))
			goto spoof;
		goto pass; /* the pod answering the host: the kernel's */
	}
	/* An NS for one of the pod's own addresses: the pod asks whether someone else has it. */
	if (pod_owning_v6(skb->ifindex, &((struct nd_msg *)buf)->target))
		goto pass;
	return send_na(skb, ep->mac, ep->host_mac, &((struct nd_msg *)buf)->target);
pass:
	count(CNT_PASS_POD, skb->len);
	return TC_ACT_OK;
spoof:
	count(CNT_DROP_ND_SPOOF, skb->len);
	return TC_ACT_SHOT;
}

/*
 * ICMPv6 from a pod, before its source is checked (ND uses link-local and
 * unspecified sources). Returns a verdict for ND, router solicitations,
 * advertisements and redirects, or -1 for everything else (MLD included:
 * ordinary ICMPv6, link-local to the kernel), which from_pod then treats
 * as any IPv6 packet.
 */
static __always_inline int pod_icmp6(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);

	if ((void *)(ip6 + 1) + 1 > data_end || ip6->nexthdr != IPPROTO_ICMPV6)
		return -1;
	switch (*(__u8 *)(ip6 + 1)) {
	case ICMPV6_ROUTER_SOLICIT:
		count(CNT_PASS_POD, skb->len);
		return TC_ACT_OK;
	case ICMPV6_ROUTER_ADVERT:
	case ICMPV6_REDIRECT:
		count(CNT_DROP_ND_SPOOF, skb->len); /* a pod is never the host's router */
		return TC_ACT_SHOT;
	case ICMPV6_NEIGH_SOLICIT:
		return pod_nd(skb, eth, ip6, ICMPV6_NEIGH_SOLICIT);
	case ICMPV6_NEIGH_ADVERT:
		return pod_nd(skb, eth, ip6, ICMPV6_NEIGH_ADVERT);
	default:
		return -1;
	}
}
