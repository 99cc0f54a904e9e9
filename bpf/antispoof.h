/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * antispoof.h: pods are untrusted. Whatever a pod sends must carry its own
 * address (and, in ARP, its own MAC), checked against the endpoint entry
 * weft-cni wrote for the interface the packet came in on. The endpoints map
 * is keyed by pod IP, so the check is one lookup by source plus an ifindex
 * compare: a pod can neither borrow another local pod's address (wrong
 * ifindex), nor a remote pod's or an outside address (no entry at all).
 */
#pragma once

#include "helpers.h"

/* Whether an IPv4 source arriving on ifindex belongs to the pod behind it. */
static __always_inline int pod_owns_v4(__u32 ifindex, __be32 saddr)
{
	const struct endpoint_info *ep = endpoint_for_v4(saddr);

	return ep && ep->ifindex == ifindex;
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

/*
 * ARP from a pod must name the pod as sender: its IP as spa, its MAC as sha
 * and as the Ethernet source, or the host's neighbour table could be pointed
 * at the wrong pod. The caller lets probes (spa 0.0.0.0, RFC 5227) through:
 * they teach no neighbour table anything. Returns the pod's endpoint, or
 * NULL for a spoof.
 */
static __always_inline const struct endpoint_info *arp_sender(__u32 ifindex, const struct ethhdr *eth,
								const struct arp_ipv4 *arp)
{
	const struct endpoint_info *ep = endpoint_for_v4(arp->spa);

	if (ep && ep->ifindex == ifindex && mac_equal(arp->sha, ep->mac) && mac_equal(eth->h_source, ep->mac))
		return ep;
	return NULL;
}

/*
 * DirectRouting receive: plain IPv4 from a direct peer's pod subnet must
 * come from that peer, i.e. from the L2 address the kernel's neighbour
 * table holds for the lease's public IP on the underlay (learnt when the
 * peer ARPed for us, which it must before sending). A lookup that finds no
 * on-link neighbour fails the check too: nothing vouches for the sender.
 */
static __always_inline int direct_sender_ok(struct __sk_buff *skb, const struct node_config *cfg,
					    const struct ethhdr *eth, const struct tunnel_info *tun)
{
	struct bpf_fib_lookup fib = {};
	int v4 = addr_is_v4mapped(tun->remote);

	if (v4) {
		fib.family = AF_INET;
		fib.ipv4_dst = addr_to_v4(tun->remote);
	} else {
		/* A peer on our L2 by its IPv6 underlay address (outer6.h): its neighbour entry. */
		fib.family = 10; /* AF_INET6 */
		__builtin_memcpy(fib.ipv6_dst, tun->remote, WEFT_ADDR_LEN);
	}
	fib.tot_len = sizeof(struct iphdr); /* no MTU verdict on this (maybe GRO'd) skb */
	fib.ifindex = cfg->underlay_ifindex;
	/* OUTPUT: as the node would send to the peer, whatever ip_forward says. */
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT) != BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	/* The next hop must be the peer itself (on-link), not a router. */
	if (fib.ifindex != cfg->underlay_ifindex || !mac_equal(fib.dmac, eth->h_source))
		return 0;
	return v4 ? fib.ipv4_dst == addr_to_v4(tun->remote) : addr_equal((const __u8 *)fib.ipv6_dst, tun->remote);
}
