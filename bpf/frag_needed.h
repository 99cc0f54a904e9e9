/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * frag_needed.h: whether an oversize DF packet from a pod may be answered
 * with ICMP fragmentation-needed, and by whom (RFC 1122 3.2.2, RFC 1812
 * 4.3.2.7):
 *   - never about an ICMP error or a non-first fragment;
 *   - at most FN_BURST answers in a row per source pod, then one per
 *     FN_INTERVAL_NS (the kernel exempts frag-needed from its ICMP rate
 *     limit; we answer from BPF for every pod at line rate, so we limit);
 *   - built here only for ICMP (ping and friends: the stack checksums those
 *     in software). Any other protocol may arrive CHECKSUM_PARTIAL with
 *     csum_start/csum_offset pointing into the L4 header; truncating it into
 *     an ICMP message would leave that state stale and no BPF helper can
 *     clear it, so those packets go to the kernel, whose forwarding path
 *     (route via weft0, MTU = underlay - 50) answers with a freshly built
 *     skb.
 */
#pragma once

#include "helpers.h"

#define ICMP_ECHOREPLY 0
#define ICMP_SOURCE_QUENCH 4
#define ICMP_REDIRECT 5
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define FN_INTERVAL_NS (100ULL * 1000 * 1000) /* one answer per 100 ms ... */
#define FN_BURST 10ULL                        /* ... after a burst of 10 */

/* Whether the ICMP message starting at icmp_type is an error (RFC 1122 3.2.2). */
static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_SOURCE_QUENCH || type == ICMP_REDIRECT ||
	       type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

/*
 * GCRA per source (16 bytes, IPv4 mapped): due holds when the next answer
 * is due; a source may run FN_BURST answers ahead of it. Returns 1 if an answer may be sent now.
 * Races between CPUs can only let an extra answer through.
 */
static __always_inline int icmp_error_allowed(const struct peer_key *src)
{
	__u64 now = bpf_ktime_get_ns(), *due, next;

	due = bpf_map_lookup_elem(&frag_needed_rate, src);
	if (!due) {
		next = now + FN_INTERVAL_NS;
		bpf_map_update_elem(&frag_needed_rate, src, &next, BPF_ANY);
		return 1;
	}
	next = *due > now ? *due : now;
	if (next - now > (FN_BURST - 1) * FN_INTERVAL_NS)
		return 0;
	*due = next + FN_INTERVAL_NS;
	return 1;
}

/* icmp_error_allowed for an IPv4 source (IPv6 sources share the map: ptb.h). */
static __always_inline int frag_needed_allowed(__be32 src)
{
	struct peer_key key;

	addr_from_v4(key.addr, src);
	return icmp_error_allowed(&key);
}

/*
 * What to do with an oversize DF packet from a pod (ip is its header, the
 * caller checked it fits before data_end): CNT_ICMP_FRAG_NEEDED (build the
 * answer here), CNT_PASS_MTU (the kernel answers), or a drop reason.
 */
static __always_inline enum counter frag_needed_policy(const struct iphdr *ip, void *data_end)
{
	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return CNT_DROP_MTU_NO_ICMP;
	if (ip->protocol == IPPROTO_ICMP) {
		const __u8 *type = (const void *)ip + ip->ihl * 4;

		if ((void *)(type + 1) > data_end)
			return CNT_DROP_MTU_NO_ICMP; /* cannot tell: treat as an error */
		if (icmp_is_error(*type))
			return CNT_DROP_MTU_NO_ICMP;
	}
	if (!frag_needed_allowed(ip->saddr))
		return CNT_DROP_FRAG_NEEDED_SUPPRESSED;
	if (ip->protocol != IPPROTO_ICMP || ip->ihl != 5)
		return CNT_PASS_MTU;
	return CNT_ICMP_FRAG_NEEDED;
}
