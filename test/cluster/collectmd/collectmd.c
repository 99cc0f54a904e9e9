//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * collectmd.c: the benchmark's "kernel-collect-md" data plane, the way
 * Cilium (and Calico's eBPF data plane) encapsulate: BPF decides, an
 * external-mode (collect_md) kernel vxlan device does the VXLAN work.
 *
 *   cmd_from_pod      tc ingress on each pod's host-side veth: remote
 *                     destination -> bpf_skb_set_tunnel_key (remote IP, VNI,
 *                     TTL) and bpf_redirect to the vxlan device's egress,
 *                     which encapsulates (Cilium: encap_and_redirect_lxc ->
 *                     ctx_set_encap_info -> ctx_redirect(ENCAP_IFINDEX))
 *   cmd_from_overlay  tc ingress on the vxlan device, after the driver has
 *                     decapsulated (with UDP-tunnel GRO on its socket):
 *                     endpoint lookup, bpf_redirect_peer into the pod
 *                     (Cilium: cil_from_overlay -> ipv4_local_delivery ->
 *                     redirect_ep, bpf_redirect_peer with BPF host routing)
 *
 * It uses Weft's own tunnels and endpoints maps and helpers (helpers.h), so
 * the per-packet work (map lookups, TTL, MAC rewrite, one counter, the
 * inner-source/outer-source check on receive) matches Weft's and the
 * comparison isolates the encapsulation mechanism. Loaded by
 * test/cluster without pinning; not part of Weft's data plane.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "helpers.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#ifndef PACKET_HOST
#define PACKET_HOST 0
#endif

/* The node's parameters for this data plane; index 0. */
struct collectmd_config {
	__u32 vxlan_ifindex; /* the external-mode vxlan device */
	__u32 vni;           /* the VNI we accept on receive */
	__u8 vxlan_mac[6];   /* its MAC: inner Ethernet source on encap */
	__u8 tunnel_ttl;     /* outer TTL (Cilium: IPDEFTTL, 64) */
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct collectmd_config);
	__uint(max_entries, 1);
} cmd_config SEC(".maps");

static __always_inline const struct collectmd_config *cmd_cfg(void)
{
	__u32 zero = 0;
	const struct collectmd_config *cfg = bpf_map_lookup_elem(&cmd_config, &zero);

	if (!cfg || !cfg->vxlan_ifindex)
		return NULL;
	return cfg;
}

/* Router duties and the pod's MACs, then straight into the pod's namespace. */
static __always_inline int cmd_deliver(struct __sk_buff *skb, struct ethhdr *eth, struct iphdr *ip,
				       const struct endpoint_info *ep, enum counter c)
{
	if (ip->ttl <= 1)
		return TC_ACT_OK; /* the kernel sends time-exceeded */
	ipv4_decrement_ttl(ip);
	__builtin_memcpy(eth->h_dest, ep->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->host_mac, ETH_ALEN);
	count(c, skb->len);
	return bpf_redirect_peer(ep->ifindex, 0);
}

SEC("tc")
int cmd_from_pod(struct __sk_buff *skb)
{
	const struct collectmd_config *cfg = cmd_cfg();
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	const struct tunnel_info *tun;
	const struct endpoint_info *ep;

	if (!cfg || (void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (!ipv4_header_ok(ip, skb->len - ETH_HLEN))
		return TC_ACT_OK;

	tun = tunnel_for_v4(ip->daddr);
	if (tun && tun->mode == TUNNEL_MODE_VXLAN) {
		struct bpf_tunnel_key key = {};

		if (ip->ttl <= 1)
			return TC_ACT_OK;
		ipv4_decrement_ttl(ip);
		/* The driver sends the frame as it is: address it to the remote device. */
		__builtin_memcpy(eth->h_dest, tun->vtep_mac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, cfg->vxlan_mac, ETH_ALEN);

		key.remote_ipv4 = bpf_ntohl(addr_to_v4(tun->remote)); /* host order */
		key.tunnel_id = tun->vni;
		key.tunnel_ttl = cfg->tunnel_ttl;
		/* Zero UDP checksum, as flannel's device and Cilium send. */
		if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX)) {
			count(CNT_DROP_HELPER, skb->len);
			return TC_ACT_SHOT;
		}
		count(CNT_ENCAP, skb->len);
		return bpf_redirect(cfg->vxlan_ifindex, 0);
	}

	ep = endpoint_for_v4(ip->daddr);
	if (ep)
		return cmd_deliver(skb, eth, ip, ep, CNT_LOCAL);
	count(CNT_PASS_POD, skb->len);
	return TC_ACT_OK;
}

SEC("tc")
int cmd_from_overlay(struct __sk_buff *skb)
{
	const struct collectmd_config *cfg = cmd_cfg();
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	const struct tunnel_info *tun;
	const struct endpoint_info *ep;
	struct bpf_tunnel_key key = {};

	if (!cfg || (void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0))
		return TC_ACT_OK;
	if (key.tunnel_id != cfg->vni) {
		count(CNT_PASS_OTHER_VNI, skb->len);
		return TC_ACT_SHOT;
	}
	/* Same rule as Weft's decap: the inner source's owner must be the outer source. */
	tun = tunnel_for_v4(ip->saddr);
	if (!tun) {
		count(CNT_DROP_UNKNOWN_SOURCE, skb->len);
		return TC_ACT_SHOT;
	}
	if (bpf_ntohl(addr_to_v4(tun->remote)) != key.remote_ipv4) {
		count(CNT_DROP_UNKNOWN_PEER, skb->len);
		return TC_ACT_SHOT;
	}
	ep = endpoint_for_v4(ip->daddr);
	if (!ep) {
		count(CNT_TO_HOST, skb->len);
		return TC_ACT_OK;
	}
	/* An inner destination MAC other than ours would leave it OTHERHOST (Cilium does the same). */
	if (skb->pkt_type != PACKET_HOST)
		bpf_skb_change_type(skb, PACKET_HOST);
	return cmd_deliver(skb, eth, ip, ep, CNT_DELIVER);
}
