/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ecn.h: ECN on decapsulation, RFC 6040 normal mode, as the Linux vxlan
 * driver does it (INET_ECN_decapsulate): an outer CE is copied onto an
 * ECT(0)/ECT(1) inner header; CE over a Not-ECT inner packet means the
 * underlay marked a flow that cannot understand marks, so it is dropped
 * (the congestion signal survives as a loss). Nothing else changes the
 * inner header (the vxlan driver ignores an outer ECT(1) as well).
 * Encapsulation copies the inner ECT into the outer header (vxlan_encap), so
 * the underlay marks instead of dropping.
 */
#pragma once

#include "helpers.h"

#define ECN_MASK 0x3
#define ECN_NOT_ECT 0x0
#define ECN_CE 0x3

/*
 * Sets the TOS byte and patches the header checksum incrementally
 * (RFC 1624). The header's ones'-complement sum is unchanged, so a
 * CHECKSUM_COMPLETE skb stays valid.
 */
static __always_inline void ipv4_set_tos(struct iphdr *ip, __u8 tos)
{
	__u16 old = *(__u16 *)ip; /* version/IHL and TOS */
	__u16 new;
	__u32 sum;

	ip->tos = tos;
	new = *(__u16 *)ip;
	sum = (__u16)~ip->check + (__u16)~old + (__u32)new;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip->check = (__u16)~sum;
}

/*
 * Applies the outer header's ECN bits (IPv4 TOS or IPv6 traffic class) to
 * the inner header. Returns CNT_DECAP, or
 * CNT_DROP_ECN_NOT_ECT; *marked says whether CE was copied in.
 */
static __always_inline enum counter ecn_decap(__u8 outer_ecn, struct iphdr *inner, int *marked)
{
	__u8 in = inner->tos & ECN_MASK;

	*marked = 0;
	if ((outer_ecn & ECN_MASK) != ECN_CE || in == ECN_CE)
		return CNT_DECAP;
	if (in == ECN_NOT_ECT)
		return CNT_DROP_ECN_NOT_ECT;
	ipv4_set_tos(inner, inner->tos | ECN_CE);
	*marked = 1;
	return CNT_DECAP;
}
