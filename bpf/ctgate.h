/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ctgate.h: which flows may bypass the host's netfilter.
 *
 * kube-proxy (iptables or nftables mode) and --ip-masq NAT in the host's
 * netfilter. Netfilter un-NATs a reply only if the reply passes through it,
 * so a redirect that skips the host stack must not carry a NATed flow: the
 * client would see the backend's own address. Before every fast-path
 * delivery (pod -> local pod, pod -> remote node, decapsulated -> pod) the
 * programs ask here; a flow the host's conntrack has NATed takes the stack,
 * every other flow keeps the redirect.
 *
 * The question goes to the kernel's own table through the conntrack kfuncs
 * tc programs may call (bpf_skb_ct_lookup, Linux 5.18+): no second table to
 * keep in step, and plain pod-to-pod flows never enter conntrack at all
 * (they never see the stack), so their lookup is a miss in an empty bucket.
 * What the kfunc cannot look up, or what conntrack must reassemble first,
 * goes to the stack unconditionally: IPv4 fragments, ICMP other than echo
 * (errors quote a flow conntrack may have NATed), and protocols other than
 * TCP, UDP and ICMP (SCTP Services). Those are rare on the fast path.
 *
 * The kfuncs are weak: on a kernel without conntrack (or nf_conntrack not
 * loaded) nothing can be NATed and every TCP/UDP flow keeps the fast path.
 */
#pragma once

#include "helpers.h"

/* Kernel types, read through CO-RE: only the fields used are declared. */
struct nf_conn {
	unsigned long status;
} __attribute__((preserve_access_index));

/* Kernel's struct bpf_ct_opts in its original 12-byte form, which newer kernels still accept. */
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};

#define WEFT_CT_OPTS_SZ 12
#define WEFT_CT_CURRENT_NETNS (-1)
/* include/uapi/linux/netfilter/nf_conntrack_common.h */
#define WEFT_IPS_SRC_NAT (1 << 4)
#define WEFT_IPS_DST_NAT (1 << 5)

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts *opts, __u32 opts__sz) __ksym __weak;
extern void bpf_ct_release(struct nf_conn *ct) __ksym __weak;

#ifndef bpf_ksym_exists
/* From libbpf 1.2's bpf_helpers.h (the pinned 1.1.2 lacks it). */
#define bpf_ksym_exists(sym) (!!(sym))
#endif

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

/* Whether the host's conntrack has NATed the TCP/UDP flow of ip (either direction). */
static __always_inline int ct_flow_nated(struct __sk_buff *skb, const struct iphdr *ip, const __be16 *ports)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_ct_opts opts = { .netns_id = WEFT_CT_CURRENT_NETNS, .l4proto = ip->protocol };
	struct nf_conn *ct;
	int nated;

	if (!bpf_ksym_exists(bpf_skb_ct_lookup))
		return 0;
	tuple.ipv4.saddr = ip->saddr;
	tuple.ipv4.daddr = ip->daddr;
	tuple.ipv4.sport = ports[0];
	tuple.ipv4.dport = ports[1];
	ct = bpf_skb_ct_lookup(skb, &tuple, sizeof(tuple.ipv4), &opts, WEFT_CT_OPTS_SZ);
	if (!ct)
		return 0;
	nated = (ct->status & (WEFT_IPS_SRC_NAT | WEFT_IPS_DST_NAT)) != 0;
	bpf_ct_release(ct);
	return nated;
}

/*
 * Whether the IPv4 packet at ip (already checked by ipv4_header_ok) must go
 * through the host stack instead of the fast path. See the header comment.
 */
static __always_inline int ct_needs_stack(struct __sk_buff *skb, const struct iphdr *ip, void *data_end)
{
	__u32 ihl = ip->ihl * 4;
	const __u8 *l4;

	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return 1;
	if (ihl < sizeof(*ip) || ihl > 60 || bpf_ntohs(ip->tot_len) < ihl + 4)
		return 1;
	l4 = (const __u8 *)ip + ihl;
	if ((void *)(l4 + 4) > data_end)
		return 1;
	switch (ip->protocol) {
	case IPPROTO_ICMP:
		return l4[0] != ICMP_ECHO && l4[0] != ICMP_ECHOREPLY;
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		return ct_flow_nated(skb, ip, (const __be16 *)l4);
	default:
		return 1;
	}
}
