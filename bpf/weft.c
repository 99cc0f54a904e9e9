//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Weft's data plane. Four programs share the maps in maps.h:
 *
 *   from_pod           tc ingress on each pod's host-side veth
 *   from_host          tc egress on weft0, the device the one cluster route points at
 *   from_underlay      tc ingress on the underlay NIC
 *   from_underlay_xdp  XDP on the underlay NIC (optional fast receive path)
 *   gro_sink           tc ingress on weftgro0: what the kernel reassembled (see loader/gro.go)
 *   from_gro_cell      tc ingress on weftgc1, GRO after decap (see loader/grocell.go)
 *
 * Encapsulation is done here, byte-compatible with the Linux vxlan driver as
 * flannel programs it, so there is no vxlan device and no per-remote-host
 * route, neighbour or FDB entry. The underlay next hop is resolved by the
 * kernel's FIB and neighbour tables (bpf_redirect_neigh), so routed underlays
 * work too.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "helpers.h"
#include "antispoof.h"
#include "ctgate.h"
#include "ecn.h"
#include "frag_needed.h"
#include "underlay.h"
#include "outer6.h"
#include "path6.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Emit BTF for types Go needs that no map references (bpf2go -type). */
const enum counter *unused_counter __attribute__((unused));
const enum tunnel_mode *unused_tunnel_mode __attribute__((unused));
const struct xdp_meta *unused_xdp_meta __attribute__((unused));
const enum node_flags *unused_node_flags __attribute__((unused));

/* ---- delivery into local pods ---- */

/*
 * Hands the IPv4 packet at data + ETH_HLEN to the pod behind ep, as the
 * pod's gateway would: TTL - 1, gateway MAC as source. bpf_redirect_peer
 * moves it straight into the pod's namespace without a backlog queue; it is
 * allowed because every caller runs at tc ingress. Returns -1 when the TTL
 * would expire, leaving the packet untouched for the kernel.
 */
static __always_inline int deliver_to_pod(struct __sk_buff *skb, const struct endpoint_info *ep,
					  enum counter c)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > data_end)
		return -1;
	if (ip->ttl <= 1)
		return -1;
	ipv4_decrement_ttl(ip);
	__builtin_memcpy(eth->h_dest, ep->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->host_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	count(c, skb->len);
	return bpf_redirect_peer(ep->ifindex, 0);
}

/*
 * Hands an IPv4 packet from the underlay to the host stack through weft0's
 * ingress, so the kernel sees it arrive on the device its cluster route
 * points at (rp_filter stays happy, time-exceeded gets sent, conntrack
 * un-NATs replies).
 */
static __always_inline int to_host_stack(struct __sk_buff *skb, const struct node_config *cfg, enum counter c)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, cfg->vtep_mac, ETH_ALEN); /* weft0's own MAC */
	eth->h_proto = bpf_htons(ETH_P_IP);
	count(c, skb->len);
	return bpf_redirect(cfg->host_ifindex, BPF_F_INGRESS);
}

/*
 * After decapsulation (here or in XDP): a local pod, or else the host via
 * weft0's ingress so the kernel sees it arrive on the device its cluster
 * route points at (rp_filter stays happy, time-exceeded gets sent).
 */
static __always_inline int deliver_decapsulated(struct __sk_buff *skb, const struct node_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	const struct endpoint_info *ep;

	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return deliver_decapsulated6(skb, cfg);
	if ((void *)(ip + 1) > data_end) {
		count(CNT_DROP_INNER_MALFORMED, skb->len);
		return TC_ACT_SHOT;
	}
	ep = endpoint_for_v4(ip->daddr);
	if (ep) {
		int ret;

		if (ct_needs_stack(skb, ip, data_end))
			return to_host_stack(skb, cfg, CNT_PASS_CONNTRACK);
		ret = deliver_to_pod(skb, ep, CNT_DELIVER);
		if (ret >= 0)
			return ret;
	}
	return to_host_stack(skb, cfg, CNT_TO_HOST);
}

/* ---- toward remote nodes ---- */

/*
 * Length of one segment's IPv4 packet once GSO has cut it, for TCP and UDP;
 * 0 when unknown. Needed because the skb's length says nothing about what
 * reaches the wire.
 */
static __always_inline __u32 gso_segment_l3_len(struct __sk_buff *skb, struct iphdr *ip, void *data_end)
{
	__u32 ihl = ip->ihl * 4;

	if (ihl < sizeof(*ip))
		return 0;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)ip + ihl;

		if ((void *)(tcp + 1) > data_end)
			return 0;
		return ihl + tcp->doff * 4 + skb->gso_size;
	}
	if (ip->protocol == IPPROTO_UDP)
		return ihl + sizeof(struct udphdr) + skb->gso_size;
	return 0;
}

/*
 * Turns a too-big DF packet from a pod into ICMP fragmentation-needed
 * (RFC 792/1191) and sends it back to the pod: the redirect path skips the
 * kernel's own check, and a silent drop would black-hole PMTU discovery.
 * Quotes the offending IPv4 header (option-less) and its first 8 bytes.
 */
static __always_inline int send_frag_needed(struct __sk_buff *skb, const struct node_config *cfg,
					    __u32 overhead)
{
	const __u32 quoted = sizeof(struct iphdr) + 8;
	const __u32 added = sizeof(struct iphdr) + sizeof(struct icmp_frag_needed);
	__u8 pod_mac[ETH_ALEN], gw_mac[ETH_ALEN];
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip, *orig;
	struct icmp_frag_needed *icmp;

	if (bpf_skb_change_tail(skb, ETH_HLEN + quoted, 0) ||
	    bpf_skb_adjust_room(skb, added, BPF_ADJ_ROOM_MAC, 0)) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}
	/*
	 * The bytes are ours now, checksum included: whatever the stack or a
	 * NIC had vouched for (CHECKSUM_UNNECESSARY) is void. Only ICMP gets
	 * here (frag_needed_policy), which is never CHECKSUM_PARTIAL.
	 */
	bpf_csum_level(skb, BPF_CSUM_LEVEL_RESET);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	icmp = (void *)(ip + 1);
	orig = (void *)(icmp + 1);
	if ((void *)orig + quoted > data_end) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}

	__builtin_memcpy(pod_mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(gw_mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, pod_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, gw_mac, ETH_ALEN);

	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = ICMP_FRAG_NEEDED;
	icmp->checksum = 0;
	icmp->unused = 0;
	icmp->mtu = bpf_htons(cfg->mtu - overhead); /* what fits once we add our headers */
	icmp->checksum = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)icmp, sizeof(*icmp) + quoted, 0));

	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0xc0; /* internetwork control, as the kernel marks its ICMP errors */
	ip->tot_len = bpf_htons(added + quoted);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_ICMP;
	ip->saddr = addr_to_v4(cfg->host_ip);
	ip->daddr = orig->saddr;
	ip->check = 0;
	ip->check = ipv4_csum(ip);

	count(CNT_ICMP_FRAG_NEEDED, skb->len);
	return bpf_redirect(skb->ifindex, 0); /* back out toward the pod */
}

/*
 * Pushes outer IPv4 + UDP + VXLAN + inner Ethernet after the MAC header.
 * The ENCAP flags mark the skb as a UDP tunnel with an Ethernet inner header
 * so GSO segments the inner flow and replicates our headers per segment;
 * FIXED_GSO keeps gso_size (pods already leave room: MTU - 50).
 */
static __always_inline int vxlan_encap(struct __sk_buff *skb, const struct node_config *cfg,
				       const struct tunnel_info *tun)
{
	const __u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
			    BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
			    BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
	__u32 hash = bpf_get_hash_recalc(skb);
	void *data, *data_end;
	struct ethhdr *eth, *inner_eth;
	struct iphdr *ip, *inner_ip;
	struct udphdr *udp;
	struct vxlanhdr *vx;
	__u8 ecn;
	long err;

	err = bpf_skb_adjust_room(skb, VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC, flags);
	if (err)
		return err;

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	udp = (void *)(ip + 1);
	vx = (void *)(udp + 1);
	inner_eth = (void *)(vx + 1);
	inner_ip = (void *)(inner_eth + 1);
	if ((void *)(inner_ip + 1) > data_end)
		return -1;

	__builtin_memcpy(inner_eth->h_dest, tun->vtep_mac, ETH_ALEN);
	__builtin_memcpy(inner_eth->h_source, cfg->vtep_mac, ETH_ALEN);
	inner_eth->h_proto = eth->h_proto; /* the frame's own: IPv4 or IPv6 */

	vx->flags = VXLAN_FLAG_I;
	vx->reserved1[0] = vx->reserved1[1] = vx->reserved1[2] = 0;
	vx->vni_reserved = bpf_htonl(tun->vni << 8);

	udp->source = flow_src_port(hash, cfg);
	udp->dest = bpf_htons(cfg->port);
	udp->len = bpf_htons(skb->len - ETH_HLEN - sizeof(*ip));
	udp->check = 0; /* IPv4 VXLAN: zero, as the vxlan driver sends by default */

	/* ECN of the inner packet, CE carried as ECT(0) (RFC 6040), like ip_tunnel_ecn_encap. */
	ecn = inner_ip->version == 6 ? ipv6_ecn(inner_ip) : inner_ip->tos & 0x3;
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = ecn == 0x3 ? 0x2 : ecn;
	ip->tot_len = bpf_htons(skb->len - ETH_HLEN);
	ip->id = (__u16)bpf_get_prandom_u32();
	ip->frag_off = 0; /* the vxlan driver's default (df unset) */
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->saddr = addr_to_v4(cfg->underlay_ip);
	ip->daddr = addr_to_v4(tun->remote);
	ip->check = 0;
	ip->check = ipv4_csum(ip);

	__builtin_memcpy(eth->h_source, cfg->underlay_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	return 0;
}

/*
 * Sends the IPv4 packet toward the remote node owning its destination:
 * VXLAN, or plain routing for a DirectRouting peer. from_pod: the packet is
 * being forwarded (TTL - 1, MTU signalled back to the pod).
 */
static __always_inline int forward_to_peer(struct __sk_buff *skb, const struct node_config *cfg,
					   const struct tunnel_info *tun, int from_pod)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u32 l3_len, overhead;

	if ((void *)(ip + 1) > data_end)
		return TC_ACT_OK;

	overhead = tun->mode == TUNNEL_MODE_DIRECT ? 0 : tunnel_overhead(tun);
	if (skb->gso_size) {
		l3_len = gso_segment_l3_len(skb, ip, data_end);
		if (!l3_len || l3_len + overhead > cfg->mtu) {
			/* The kernel's forwarding path knows how to signal or segment this. */
			count(CNT_PASS_MTU, skb->len);
			return TC_ACT_OK;
		}
	} else if (skb->len - ETH_HLEN + overhead > cfg->mtu) {
		if (from_pod && (ip->frag_off & bpf_htons(IP_DF))) {
			enum counter c = frag_needed_policy(ip, data_end);

			if (c == CNT_ICMP_FRAG_NEEDED)
				return send_frag_needed(skb, cfg, overhead);
			count(c, skb->len);
			return counter_is_drop(c) ? TC_ACT_SHOT : TC_ACT_OK;
		}
		count(CNT_PASS_MTU, skb->len); /* kernel fragments it on weft0 */
		return TC_ACT_OK;
	}

	/*
	 * A flow the host's conntrack NATed (ctgate.h) goes through the stack,
	 * which un-NATs it and routes it back here via weft0. After the MTU
	 * policy: what cannot be sent at all is answered the same either way.
	 */
	if (from_pod && ct_needs_stack(skb, ip, data_end)) {
		count(CNT_PASS_CONNTRACK, skb->len);
		return TC_ACT_OK;
	}

	if (from_pod) {
		if (ip->ttl <= 1) {
			count(CNT_PASS_TTL, skb->len);
			return TC_ACT_OK;
		}
		ipv4_decrement_ttl(ip);
	}

	if (tun->mode == TUNNEL_MODE_DIRECT) {
		struct bpf_redir_neigh nh = { .nh_family = AF_INET };

		if (addr_is_v4mapped(tun->remote)) {
			nh.ipv4_nh = addr_to_v4(tun->remote);
		} else {
			/* The peer's IPv6 underlay address as the next hop (the kernel allows it). */
			nh.nh_family = AF_INET6;
			__builtin_memcpy(nh.ipv6_nh, tun->remote, WEFT_ADDR_LEN);
		}
		count(from_pod ? CNT_DIRECT : CNT_DIRECT_HOST, skb->len);
		count_peer_tx(tun, skb->len);
		return bpf_redirect_neigh(cfg->underlay_ifindex, &nh, sizeof(nh), 0);
	}

	{
		long err;

		if (overhead == VXLAN_OVERHEAD) {
			err = vxlan_encap(skb, cfg, tun);
		} else {
			err = vxlan_encap6(skb, cfg, tun, 0);
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
	/* FIB + neighbour lookup on the outer destination fills the outer MACs. */
	return bpf_redirect_neigh(cfg->underlay_ifindex, NULL, 0, 0);
}

/* ---- ARP: the pod's gateway ---- */


/*
 * Answers a pod's ARP request for any address but its own with its
 * host-side MAC, so everything the pod sends comes to from_pod. ARP naming
 * another sender is dropped (antispoof.h); probes, gratuitous ARP and
 * replies go to the kernel.
 */
static __always_inline int answer_arp(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_ipv4 *arp = (void *)(eth + 1);
	const struct endpoint_info *ep;
	__be32 sender, target;

	if ((void *)(arp + 1) > data_end)
		goto pass;
	if (arp->hdr.ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->hdr.ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->hdr.ar_hln != ETH_ALEN || arp->hdr.ar_pln != 4)
		goto pass;
	sender = arp->spa;
	target = arp->tpa;
	if (sender == 0)
		goto pass; /* probe */
	ep = arp_sender(skb->ifindex, eth, arp);
	if (!ep) {
		count(CNT_DROP_ARP_SPOOF, skb->len);
		return TC_ACT_SHOT;
	}
	/* Gratuitous ARP and the pod's replies to the host: the kernel's. */
	if (sender == target || arp->hdr.ar_op != bpf_htons(ARPOP_REQUEST))
		goto pass;

	__builtin_memcpy(eth->h_dest, arp->sha, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->host_mac, ETH_ALEN);
	arp->hdr.ar_op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(arp->tha, arp->sha, ETH_ALEN);
	arp->tpa = sender;
	__builtin_memcpy(arp->sha, ep->host_mac, ETH_ALEN);
	arp->spa = target;
	count(CNT_ARP_REPLY, skb->len);
	return bpf_redirect(skb->ifindex, 0);
pass:
	count(CNT_PASS_POD, skb->len);
	return TC_ACT_OK;
}

/* ---- programs ---- */

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	const struct node_config *cfg = node_config();
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	const struct tunnel_info *tun;
	const struct endpoint_info *ep;
	struct iphdr *ip;

	if (!cfg) {
		count(CNT_PASS_NO_CONFIG, skb->len);
		return TC_ACT_OK;
	}
	if ((void *)(eth + 1) > data_end)
		goto pass;
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return answer_arp(skb);
	if (eth->h_proto != bpf_htons(ETH_P_IP)) {
		if (eth->h_proto == bpf_htons(ETH_P_IPV6))
			return from_pod6(skb, cfg);
		goto pass;
	}
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		goto pass;
	if (!pod_owns_v4(skb->ifindex, ip->saddr)) {
		count(CNT_DROP_POD_SPOOF, skb->len);
		return TC_ACT_SHOT;
	}
	if (!ipv4_header_ok(ip, skb->len - ETH_HLEN))
		goto pass;

	/* Remote first: it is the path the benchmarks measure. */
	tun = tunnel_for_v4(ip->daddr);
	if (tun)
		return forward_to_peer(skb, cfg, tun, 1);

	ep = endpoint_for_v4(ip->daddr);
	if (ep) {
		int ret;

		if (ct_needs_stack(skb, ip, data_end))
			goto pass_ct;
		ret = deliver_to_pod(skb, ep, CNT_LOCAL);

		if (ret >= 0)
			return ret;
		count(CNT_PASS_TTL, skb->len);
		return TC_ACT_OK;
	}
pass:
	count(CNT_PASS_POD, skb->len);
	return TC_ACT_OK;
pass_ct:
	/* The host stack un-NATs and routes it (a /32 to a local pod, weft0 to a remote one). */
	count(CNT_PASS_CONNTRACK, skb->len);
	return TC_ACT_OK;
}

SEC("tc")
int from_host(struct __sk_buff *skb)
{
	const struct node_config *cfg = node_config();
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	const struct tunnel_info *tun;
	struct iphdr *ip;

	if (!cfg) {
		count(CNT_PASS_NO_CONFIG, skb->len);
		return TC_ACT_OK;
	}
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		goto drop;
	if (eth->h_proto != bpf_htons(ETH_P_IP)) {
		if (eth->h_proto == bpf_htons(ETH_P_IPV6))
			return from_host6(skb, cfg);
		goto drop;
	}
	tun = tunnel_for_v4(ip->daddr);
	if (tun)
		return forward_to_peer(skb, cfg, tun, 0);
drop:
	/* weft0 leads nowhere else: anything we cannot carry is counted here. */
	count(CNT_DROP_NO_TUNNEL, skb->len);
	return TC_ACT_SHOT;
}

/*
 * Set once from_underlay has seen an aggregated (GSO) skb, decapsulated or
 * from a DirectRouting peer: the underlay runs GRO before tc (NAPI, with
 * weftgro0's tunnel GRO for VXLAN), so the GRO cell is not needed. A global, not a pinned map: it lives as long as this
 * program, and a reloaded program learns it again from the first train.
 */
__u32 underlay_aggregates = 0;

/*
 * The GRO cell (loader/grocell.go) is a veth pair, weftgc0 -> weftgc1, made
 * so that the kernel's veth NAPI runs GRO on what we transmit into weftgc0:
 * the kernel vxlan driver's gro_cells, built from stock parts. A node whose
 * underlay hands tc one 1.5 KB segment at a time (a veth whose peer has TSO
 * on, a NIC with GRO off) would otherwise push every TCP segment through
 * the pod's stack alone.
 *
 * The choice is per node and sticky: decapsulated TCP segments go through
 * the cell until the first aggregated skb shows that the underlay does GRO
 * itself; from then on everything is delivered directly, as before the cell
 * existed. So a flow is never split between the two paths for longer than
 * that one switch (which could reorder a few segments once), a GRO underlay
 * keeps its direct path, and GSO skbs never enter the cell (weftgc0 has TSO
 * off: it would segment them again, tripping over the tunnel GSO bits a tc
 * decap leaves). Only TCP segments with payload: GRO does not aggregate
 * plain UDP or pure ACKs, which would pay the extra hop for nothing. DirectRouting traffic
 * (not encapsulated, same underlay) takes the same way.
 */
static __always_inline int to_gro_cell(struct __sk_buff *skb, const struct node_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;

	if (!cfg->gro_cell_ifindex)
		return 0;
	if (skb->gso_size) {
		if (!underlay_aggregates)
			underlay_aggregates = 1;
		return 0;
	}
	if (underlay_aggregates)
		return 0;
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return ipv6_tcp_with_payload(data, data_end);
	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_TCP)
		return 0;
	if (ip->ihl == 5) {
		/*
		 * A segment without payload (a pure ACK) is never merged by GRO: it
		 * would pay the hop for nothing. Letting it overtake data still in
		 * the cell is harmless: an older ACK is ignored, data stays in order.
		 */
		struct tcphdr *tcp = (void *)(ip + 1);

		if ((void *)(tcp + 1) > data_end)
			return 0;
		if (bpf_ntohs(ip->tot_len) <= sizeof(*ip) + tcp->doff * 4)
			return 0;
	}
	return 1;
}

/*
 * Unencapsulated IPv4 from a DirectRouting peer to a local pod: deliver it
 * directly, once the L2 sender is known to be that peer (antispoof.h).
 * Anything else goes to the kernel untouched.
 */
static __always_inline int from_underlay_plain(struct __sk_buff *skb, const struct node_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	const struct endpoint_info *ep;
	const struct tunnel_info *tun;

	if ((void *)(ip + 1) > data_end)
		goto pass;
	if (eth->h_proto != bpf_htons(ETH_P_IP)) {
		if (eth->h_proto == bpf_htons(ETH_P_IPV6))
			return from_underlay_plain6(skb, cfg);
		goto pass;
	}
	if (!ipv4_header_ok(ip, skb->len - ETH_HLEN))
		goto pass;
	ep = endpoint_for_v4(ip->daddr);
	if (!ep)
		goto pass;
	tun = tunnel_for_v4(ip->saddr);
	if (!tun || tun->mode != TUNNEL_MODE_DIRECT)
		goto pass;
	if (!direct_sender_ok(skb, cfg, eth, tun)) {
		count(CNT_DROP_DIRECT_PEER, skb->len);
		return TC_ACT_SHOT;
	}
	count_peer_rx(tun, skb->len);
	if (ct_needs_stack(skb, ip, data_end))
		return to_host_stack(skb, cfg, CNT_PASS_CONNTRACK);
	if (to_gro_cell(skb, cfg)) {
		/* Counted here per segment; from_gro_cell counts the delivery. */
		count(CNT_DIRECT_RX, skb->len);
		return bpf_redirect(cfg->gro_cell_ifindex, 0);
	}
	{
		int ret = deliver_to_pod(skb, ep, CNT_DIRECT_RX);

		if (ret >= 0)
			return ret;
	}
pass:
	count(CNT_PASS_UNDERLAY, skb->len);
	return TC_ACT_OK;
}

SEC("tc")
int from_underlay(struct __sk_buff *skb)
{
	const struct node_config *cfg = node_config();
	void *data = (void *)(long)skb->data;
	void *meta = (void *)(long)skb->data_meta;
	void *data_end;
	struct vxlan_frame f = {};
	enum counter c;
	__be32 inner_w0 = 0;
	int inner6, outer6;

	if (!cfg) {
		count(CNT_PASS_NO_CONFIG, skb->len);
		return TC_ACT_OK;
	}

	/*
	 * Already handled by from_underlay_xdp? Only if our XDP program is
	 * attached (the config says so): otherwise metadata, whoever wrote it,
	 * is not a tag we may believe.
	 */
	if ((cfg->flags & NODE_F_XDP_DECAP) && meta + sizeof(struct xdp_meta) <= data) {
		__u32 tag = ((struct xdp_meta *)meta)->tag;

		if (tag == WEFT_META_DECAPPED)
			return deliver_decapsulated(skb, cfg);
		if (tag == WEFT_META_PASSED)
			return TC_ACT_OK;
	}

	data_end = (void *)(long)skb->data_end;
	/*
	 * The cheap test first: a frame whose headers (up to an inner IPv6
	 * header, where it is that long) are all linear needs nothing.
	 */
	if (data + (skb->len < VXLAN6_PARSE_LEN + 20 ? skb->len : VXLAN6_PARSE_LEN + 20) > data_end) {
		/*
		 * Headers split across fragments: make them linear first, but only
		 * for what can be VXLAN to us (pulling copies; others pay nothing),
		 * asking only the outer family's question.
		 */
		__u32 need = 0;

		if (data + ETH_HLEN <= data_end) {
			__be16 proto = ((struct ethhdr *)data)->h_proto;

			if (proto == bpf_htons(ETH_P_IP) && may_be_vxlan(skb, cfg))
				need = VXLAN_PARSE_LEN;
			else if (proto == bpf_htons(ETH_P_IPV6) && may_be_vxlan6(skb, cfg))
				need = VXLAN6_PARSE_LEN;
		}
		if (need && skb->len >= need) {
			/* 20 more for an inner IPv6 header, where the frame has them. */
			need = skb->len < need + 20 ? skb->len : need + 20;
			if (data + need > data_end) {
				bpf_skb_pull_data(skb, need);
				data = (void *)(long)skb->data;
				data_end = (void *)(long)skb->data_end;
			}
		}
	}

	c = classify_frame(data, data_end, skb->len, cfg, &f, skb->gso_size != 0);
	if (c == CNT_PASS_UNDERLAY)
		return from_underlay_plain(skb, cfg);
	if (c != CNT_DECAP) {
		count(c, skb->len);
		return counter_is_drop(c) ? TC_ACT_SHOT : TC_ACT_OK;
	}

	inner6 = (*(__u8 *)f.inner_ip >> 4) == 6;
	if (inner6)
		__builtin_memcpy(&inner_w0, f.inner_ip, sizeof(inner_w0));
	c = decap_ecn(&f, skb->len);
	if (c != CNT_DECAP)
		return TC_ACT_SHOT;
	if (inner6) {
		/* A CE mark changed the IPv6 header, which has no checksum to absorb it. */
		__be32 w1;

		__builtin_memcpy(&w1, f.inner_ip, sizeof(w1));
		if (w1 != inner_w0)
			bpf_csum_update(skb, bpf_csum_diff(&inner_w0, sizeof(w1), &w1, sizeof(w1), 0));
	}
	count_peer_rx(f.tunnel, skb->len);
	count(CNT_DECAP, skb->len);
	/*
	 * Where the inner family is not the outer one (v6-in-v4, v4-in-v6) the
	 * skb's protocol must become the inner packet's (Linux 6.3+), or the
	 * pod's stack would take it for the other family.
	 */
	outer6 = f.overhead != VXLAN_OVERHEAD;
	if (bpf_skb_adjust_room(skb, -(int)f.overhead, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO |
				(inner6 == outer6 ? 0 : inner6 ? WEFT_ADJ_ROOM_DECAP_L3_IPV6 : WEFT_ADJ_ROOM_DECAP_L3_IPV4))) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}
	if (inner6 != outer6) {
		/* The outer Ethernet header stays: it must name the inner family now (the GRO cell reads it). */
		struct ethhdr *eth = (void *)(long)skb->data;

		if ((void *)(eth + 1) > (void *)(long)skb->data_end)
			return TC_ACT_SHOT;
		eth->h_proto = inner6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP);
	}
	if (to_gro_cell(skb, cfg))
		return bpf_redirect(cfg->gro_cell_ifindex, 0);
	return deliver_decapsulated(skb, cfg);
}

/*
 * XDP receive: validate and decapsulate before the stack allocates anything,
 * then XDP_PASS so the underlay's GRO coalesces the inner TCP flow (no vxlan
 * socket means no UDP-tunnel GRO otherwise). from_underlay delivers it,
 * trusting the tag in the metadata area. Plain traffic is left to tc.
 *
 * The metadata is reserved before anything changes: a driver that cannot
 * hold it (bpf_xdp_adjust_meta fails) gets the frame back untouched, and
 * from_underlay decapsulates it itself. Nothing is dropped for lack of a
 * tag. (The loader also probes for support and uses tc decap where it is
 * missing; this is the safety net.)
 */
SEC("xdp")
int from_underlay_xdp(struct xdp_md *ctx)
{
	const struct node_config *cfg = node_config();
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 len = data_end - data;
	struct vxlan_frame f = {};
	struct ethhdr *outer, *inner;
	struct xdp_meta *meta;
	enum counter c;
	__u32 tag = WEFT_META_PASSED;

	if (!cfg)
		return XDP_PASS; /* tc counts it */

	c = classify_frame(data, data_end, len, cfg, &f, 0);
	if (c == CNT_PASS_UNDERLAY)
		return XDP_PASS;
	if (counter_is_drop(c)) {
		count(c, len);
		return XDP_DROP;
	}
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct xdp_meta))) {
		if (c == CNT_DECAP) {
			count(CNT_PASS_NO_XDP_META, len);
			return XDP_PASS; /* tc decapsulates it */
		}
		count(c, len);
		return XDP_PASS; /* untagged: tc classifies (and counts) it again */
	}
	/* adjust_meta invalidated every packet pointer: parse again. */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (c == CNT_DECAP) {
		/* The same bytes at the same offsets: classify_frame checked them. */
		__u32 overhead = f.overhead == VXLAN_OVERHEAD ? VXLAN_OVERHEAD : VXLAN6_OVERHEAD;

		f.inner_ip = data + overhead + ETH_HLEN;
		if ((void *)(f.inner_ip + 1) > data_end)
			return XDP_DROP;
		c = decap_ecn(&f, len);
		if (c != CNT_DECAP)
			return XDP_DROP;
		count(CNT_DECAP, len);
		count_peer_rx(f.tunnel, len);
		outer = data;
		inner = data + overhead;
		if ((void *)(inner + 1) > data_end)
			return XDP_DROP;
		/* Addressed to the underlay NIC so the stack (and GRO) take it as ours. */
		__builtin_memcpy(inner->h_source, outer->h_source, ETH_ALEN);
		__builtin_memcpy(inner->h_dest, cfg->underlay_mac, ETH_ALEN);
		if (bpf_xdp_adjust_head(ctx, overhead)) { /* moves the metadata along */
			count(CNT_DROP_HELPER, len);
			return XDP_DROP;
		}
		tag = WEFT_META_DECAPPED;
	} else {
		count(c, len);
	}
	data = (void *)(long)ctx->data;
	meta = (void *)(long)ctx->data_meta;
	if ((void *)(meta + 1) > data)
		return tag == WEFT_META_DECAPPED ? XDP_DROP : XDP_PASS;
	meta->tag = tag;
	return XDP_PASS;
}

/*
 * weftgro0 is an external-mode kernel vxlan device whose UDP socket gives
 * the underlay GRO for VXLAN and reassembles what routers fragmented.
 * from_underlay (or XDP) sees unfragmented packets first and takes every
 * valid one; what reaches weftgro0 is what they left to the kernel: the
 * reassembled fragments, and VXLAN for another VNI. The kernel has stripped
 * the outer headers (and applied RFC 6040 to ECN) and left the outer source,
 * destination and VNI in the collect_md tunnel metadata; with them the frame
 * passes the same checks as on the fast path and is delivered, or dropped
 * and counted. Nothing leaves weftgro0 unvalidated.
 */
SEC("tc")
int gro_sink(struct __sk_buff *skb)
{
	const struct node_config *cfg = node_config();
	const struct tunnel_info *tun = NULL;
	enum counter c;

	if (!cfg) {
		count(CNT_DROP_GRO_DEVICE, skb->len);
		return TC_ACT_SHOT;
	}
	c = classify_reassembled(skb, cfg, &tun);
	if (c != CNT_DECAP || !tun) {
		count(c == CNT_DECAP ? CNT_DROP_GRO_DEVICE : c, skb->len);
		return TC_ACT_SHOT;
	}
	count_peer_rx(tun, skb->len);
	count(CNT_DECAP_REASSEMBLED, skb->len);
	/*
	 * eth_type_trans on weftgro0 compared the inner destination (our
	 * VtepMAC) with weftgro0's own MAC and may have said OTHERHOST, which
	 * the pod's ip_rcv would drop.
	 */
	bpf_skb_change_type(skb, 0 /* PACKET_HOST */);
	return deliver_decapsulated(skb, cfg);
}

/*
 * tc ingress on weftgc1, the receiving end of the GRO cell: what arrives is
 * what from_underlay decapsulated (or took from a DirectRouting peer) and
 * sent into weftgc0, now coalesced by the veth's GRO. Nothing else can reach
 * it (no address, no route, no other sender in the node), so it is
 * delivered as from_underlay would have.
 */
SEC("tc")
int from_gro_cell(struct __sk_buff *skb)
{
	const struct node_config *cfg = node_config();

	if (!cfg) {
		count(CNT_PASS_NO_CONFIG, skb->len);
		return TC_ACT_SHOT; /* leads nowhere without a config */
	}
	/*
	 * weftgc1's eth_type_trans saw the underlay's MAC, not its own, and said
	 * OTHERHOST; as in gro_sink, make it ours before delivery.
	 */
	bpf_skb_change_type(skb, 0 /* PACKET_HOST */);
	return deliver_decapsulated(skb, cfg);
}
