/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * underlay.h: the receive-side pieces around classify_underlay: whether a
 * non-linear skb is worth linearising, ECN on decapsulation, and the checks
 * for what the kernel's vxlan socket reassembled (gro_sink).
 */
#pragma once

#include <linux/pkt_cls.h>

#include "helpers.h"
#include "ecn.h"

/*
 * Whether the frame can be VXLAN to us: IPv4, UDP to our underlay address
 * and port, not a later fragment. Reads with bpf_skb_load_bytes, so it
 * works before anything is pulled into the linear area; from_underlay asks
 * it before bpf_skb_pull_data so that other traffic is never copied.
 */
static __always_inline int may_be_vxlan(struct __sk_buff *skb, const struct node_config *cfg)
{
	struct {
		struct ethhdr eth;
		struct iphdr ip;
	} __attribute__((packed)) h;
	__be16 dport;

	if (bpf_skb_load_bytes(skb, 0, &h, sizeof(h)))
		return 0;
	if (h.eth.h_proto != bpf_htons(ETH_P_IP) || h.ip.version != 4 || h.ip.ihl < 5 ||
	    h.ip.protocol != IPPROTO_UDP || h.ip.daddr != addr_to_v4(cfg->underlay_ip) ||
	    (h.ip.frag_off & bpf_htons(IP_OFFSET)))
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + h.ip.ihl * 4 + 2, &dport, sizeof(dport)))
		return 0;
	return dport == bpf_htons(cfg->port);
}

/*
 * RFC 6040 for a frame classify_underlay accepted (see ecn.h), counting what
 * it did. Returns CNT_DECAP, or the (already counted) drop reason.
 */
static __always_inline enum counter decap_ecn(struct vxlan_frame *f, __u32 len)
{
	int marked;
	enum counter c;

	/* The inner header passed classify_inner: its version nibble is the family. */
	if ((*(__u8 *)f->inner_ip >> 4) == 6)
		c = ecn_decap6(f->outer_ecn, f->inner_ip, &marked);
	else
		c = ecn_decap(f->outer_ecn, f->inner_ip, &marked);

	if (c != CNT_DECAP) {
		count(c, len);
		return c;
	}
	if (marked)
		count(CNT_ECN_CE, len);
	return CNT_DECAP;
}

/*
 * classify_underlay for a frame the kernel decapsulated on weftgro0 (after
 * reassembling it): the outer header is gone, the collect_md tunnel
 * metadata holds what we need of it. Returns CNT_DECAP with *tun set, or the
 * reason: CNT_DROP_GRO_DEVICE when the frame is not VXLAN for our VNI and
 * address (or carries no metadata at all), else the inner checks' reason.
 */
static __always_inline enum counter classify_reassembled(struct __sk_buff *skb, const struct node_config *cfg,
							 const struct tunnel_info **tun)
{
	struct bpf_tunnel_key key = {};
	__u8 remote[WEFT_ADDR_LEN];
	void *data, *data_end;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0) {
		/* The helper gives IPv4 addresses in host byte order. */
		if (key.tunnel_id != cfg->vni || bpf_htonl(key.local_ipv4) != addr_to_v4(cfg->underlay_ip))
			return CNT_DROP_GRO_DEVICE;
		addr_from_v4(remote, bpf_htonl(key.remote_ipv4));
	} else if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), BPF_F_TUNINFO_IPV6) == 0) {
		/* An IPv6 underlay (outer6.h); IPv6 addresses come as they are on the wire. */
		if (key.tunnel_id != cfg->vni || addr_is_zero(cfg->underlay_ip6) ||
		    !addr_equal((const __u8 *)key.local_ipv6, cfg->underlay_ip6))
			return CNT_DROP_GRO_DEVICE;
		__builtin_memcpy(remote, key.remote_ipv6, WEFT_ADDR_LEN);
	} else {
		return CNT_DROP_GRO_DEVICE;
	}
	if (skb->len < ETH_HLEN + sizeof(struct iphdr))
		return CNT_DROP_SHORT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN + IPV6_HLEN > data_end) {
		/* Everything here is VXLAN to us: pulling is never wasted. IPv6 needs 40 bytes. */
		bpf_skb_pull_data(skb, skb->len < ETH_HLEN + IPV6_HLEN ? ETH_HLEN + sizeof(struct iphdr) :
									  ETH_HLEN + IPV6_HLEN);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	return classify_inner(data, data_end, skb->len - ETH_HLEN, remote, tun);
}

/*
 * bpf_skb_adjust_room refuses to encapsulate a skb that already carries
 * tunnel offload state (-EALREADY: skb->encapsulation), or UDP GSO it cannot
 * keep intact (-ENOTSUPP): a pod running its own tunnel (its TCP arrives
 * CHECKSUM_PARTIAL for the inner header, GSO or not), or a decapsulated GRO
 * train the host forwards back out (tc decap cannot clear the tunnel GSO
 * bits on this kernel). Segmenting is beyond BPF, but not
 * beyond the kernel's vxlan driver: such a packet goes to weftgro0
 * (collect_md) with the tunnel key set, where validate_xmit_skb segments it
 * and completes the inner checksum (weftgro0 offers no offload for packets
 * already encapsulated) and the driver encapsulates each segment exactly as
 * flannel's device would. Without weftgro0 it is
 * dropped and counted (drop_nested_gso).
 */
#define WEFT_EALREADY 114
#define WEFT_ENOTSUPP 524

static __always_inline int is_nested_gso_error(long err)
{
	return err == -WEFT_EALREADY || err == -WEFT_ENOTSUPP;
}

static __always_inline int encap_via_kernel(struct __sk_buff *skb, const struct node_config *cfg,
					    const struct tunnel_info *tun)
{
	struct bpf_tunnel_key key = {};
	struct ethhdr *eth;
	__u64 flags;

	if (!cfg->gro_ifindex) {
		count(addr_is_v4mapped(tun->remote) ? CNT_DROP_NESTED_GSO : CNT_DROP_OUTER6_NEEDS_KERNEL, skb->len);
		return TC_ACT_SHOT;
	}
	key.tunnel_id = tun->vni;
	key.tunnel_ttl = 64;
	if (addr_is_v4mapped(tun->remote)) {
		key.remote_ipv4 = bpf_ntohl(addr_to_v4(tun->remote));
		key.local_ipv4 = bpf_ntohl(addr_to_v4(cfg->underlay_ip));
		/* UDP checksum 0 and DF clear, as vxlan_encap sends. */
		flags = BPF_F_ZERO_CSUM_TX;
	} else {
		/*
		 * IPv6 underlay (outer6.h): with a valid UDP checksum, which the
		 * driver computes (TUNNEL_CSUM is set unless ZERO_CSUM_TX is
		 * asked for; GSO gets SKB_GSO_UDP_TUNNEL_CSUM); flow label 0.
		 */
		__builtin_memcpy(key.remote_ipv6, tun->remote, WEFT_ADDR_LEN);
		__builtin_memcpy(key.local_ipv6, cfg->underlay_ip6, WEFT_ADDR_LEN);
		flags = BPF_F_TUNINFO_IPV6;
	}
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), flags)) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}
	/* The driver sends our Ethernet header as the inner one. */
	eth = (void *)(long)skb->data;
	if ((void *)(eth + 1) > (void *)(long)skb->data_end) {
		count(CNT_DROP_HELPER, skb->len);
		return TC_ACT_SHOT;
	}
	__builtin_memcpy(eth->h_dest, tun->vtep_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->vtep_mac, ETH_ALEN);
	count(CNT_ENCAP_KERNEL, skb->len);
	count_peer_tx(tun, skb->len);
	return bpf_redirect(cfg->gro_ifindex, 0);
}
