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
	enum counter c = ecn_decap(f->outer_ip, f->inner_ip, &marked);

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
	void *data, *data_end;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return CNT_DROP_GRO_DEVICE;
	/* The helper gives addresses in host byte order. */
	if (key.tunnel_id != cfg->vni || bpf_htonl(key.local_ipv4) != addr_to_v4(cfg->underlay_ip))
		return CNT_DROP_GRO_DEVICE;
	if (skb->len < ETH_HLEN + sizeof(struct iphdr))
		return CNT_DROP_SHORT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN + sizeof(struct iphdr) > data_end) {
		/* Everything here is VXLAN to us: pulling is never wasted. */
		bpf_skb_pull_data(skb, ETH_HLEN + sizeof(struct iphdr));
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	return classify_inner(data, data_end, skb->len - ETH_HLEN, bpf_htonl(key.remote_ipv4), tun);
}

/*
 * Why an encapsulation failed. bpf_skb_adjust_room refuses (-EALREADY) a
 * skb that already carries tunnel offload state: a pod's own tunnel sending
 * GSO, or a decapsulated GRO train the host forwards back out (tc decap
 * cannot clear the tunnel GSO bits on this kernel). Segmenting is beyond
 * BPF; such packets are refused with their own counter. A pod that nests a
 * tunnel avoids it by turning off tx-udp_tnl-segmentation on its eth0.
 */
#define WEFT_EALREADY 114

static __always_inline enum counter encap_error_counter(long err)
{
	return err == -WEFT_EALREADY ? CNT_DROP_NESTED_GSO : CNT_DROP_HELPER;
}
