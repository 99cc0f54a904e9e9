/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * weft.h: the ABI between Weft's BPF programs and its Go control plane.
 *
 * Every struct and enum here is exported to Go by bpf2go (-type ...), so the
 * Go side never hand-copies a layout. Addresses are always 16 bytes: IPv4 is
 * stored IPv4-mapped (::ffff:a.b.c.d) so one map serves both families and an
 * IPv6 data path needs no layout change. Changing a value layout makes the
 * pinned map incompatible with a running node: add fields only in the
 * reserved space, or bump WEFT_PIN_LAYOUT and migrate (see loader/).
 */
#pragma once

#include <linux/types.h>

/* Bumped whenever a pinned map's key or value layout changes.
 * 1: the first pinned layout (pins without a layout marker are layout 1).
 * 2: the stats map has a fixed WEFT_STATS_SLOTS entries (it had one per
 *    counter, so every new counter changed its size); node_config carries
 *    flags (NODE_F_XDP_DECAP), gro_ifindex and gro_cell_ifindex in what was
 *    reserved space.
 * 3: IPv6 (issue 14): node_config carries the node's IPv6 underlay address
 *    and weft0's IPv6 address (underlay_ip6, host_ip6), so one node can
 *    carry IPv4 pods over its IPv4 underlay and IPv6 pods over its IPv6
 *    underlay as flannel's two devices do. */
#define WEFT_PIN_LAYOUT 3

#define WEFT_ADDR_LEN 16

/* Outer Ethernet is reused; VXLAN adds outer IPv4 + UDP + VXLAN + inner Ethernet. */
#define VXLAN_OVERHEAD (20 + 8 + 8 + 14)
/* Over an IPv6 underlay (a tunnel whose remote is not IPv4-mapped): outer IPv6 instead. */
#define VXLAN6_OVERHEAD (40 + 8 + 8 + 14)

/* tunnels: LPM trie, one entry per remote node's pod subnet. */
struct tunnel_key {
	__u32 prefixlen; /* bits of addr that count: 96 + mask for IPv4 */
	__u8 addr[WEFT_ADDR_LEN];
};

enum tunnel_mode {
	TUNNEL_MODE_VXLAN = 1,  /* encapsulate toward remote */
	TUNNEL_MODE_DIRECT = 2, /* remote shares our L2: route without encap (flannel DirectRouting) */
};

struct tunnel_info {
	__u8 remote[WEFT_ADDR_LEN]; /* remote node's underlay (public) address */
	__u8 vtep_mac[6];           /* remote node's VtepMAC: inner Ethernet destination */
	__u8 mode;                  /* enum tunnel_mode */
	__u8 flags;
	__u32 vni;
	/*
	 * Index of this peer's counters in peer_counters, one per remote underlay
	 * address, assigned by the Go side (maps/slots.go) when it writes the
	 * entry: the programs count through the tunnel entry they already hold
	 * instead of a hash lookup per packet. 0: no slot (the overflow slot).
	 * Taken from the reserved space (perf branch, layout 3): same value size.
	 */
	__u32 stats_slot;
	__u32 reserved[2];
};

/* endpoints: hash, one entry per local pod. */
struct endpoint_key {
	__u8 addr[WEFT_ADDR_LEN];
};

struct endpoint_info {
	__u32 ifindex;   /* host-side veth */
	__u8 mac[6];     /* pod's MAC (its eth0) */
	__u8 host_mac[6]; /* host-side veth MAC: the pod's gateway MAC */
	__u32 flags;
	__u32 reserved[3];
};

/* config: array with one entry, this node's parameters. */
struct node_config {
	__u32 underlay_ifindex;
	__u32 host_ifindex; /* weft0: host processes <-> remote pods */
	__u8 underlay_ip[WEFT_ADDR_LEN];
	__u8 host_ip[WEFT_ADDR_LEN]; /* weft0's address: source of ICMP errors Weft sends */
	__u8 underlay_mac[6];
	__u8 vtep_mac[6]; /* also weft0's MAC */
	__u32 vni;
	__u16 port;          /* VXLAN UDP destination port, host order */
	__u16 mtu;           /* underlay MTU; pods get mtu - VXLAN_OVERHEAD */
	__u16 src_port_min;  /* UDP source port range for flow entropy, host order */
	__u16 src_port_max;
	__u32 flags;         /* enum node_flags */
	__u32 layout;        /* WEFT_PIN_LAYOUT of whoever wrote it */
	__u32 gro_ifindex;   /* weftgro0 (0: none): the kernel encapsulates what we cannot (nested GSO) */
	/*
	 * weftgc0, the sending end of the GRO cell (loader/grocell.go), on nodes
	 * whose underlay does not coalesce before tc: decapsulated single
	 * segments go through it to be aggregated before delivery. 0: deliver
	 * directly. Taken from the reserved space: same value size, and an
	 * older writer leaves it 0.
	 */
	__u32 gro_cell_ifindex;
	__u32 reserved[2];
	/*
	 * IPv6 (layout 3). All-zero means "none". underlay_ip6 is the source of
	 * outer IPv6 headers (flannel's PublicIPv6); underlay_ip then holds the
	 * IPv4 underlay address, or is all-zero on an IPv6-only underlay.
	 * host_ip6 is weft0's IPv6 address, the source of ICMPv6 errors.
	 */
	__u8 underlay_ip6[WEFT_ADDR_LEN];
	__u8 host_ip6[WEFT_ADDR_LEN];
};

/* node_config.flags */
enum node_flags {
	/*
	 * Weft's from_underlay_xdp is attached to the underlay and can reserve
	 * metadata there: only then does from_underlay trust an XDP tag (anything
	 * else that wrote metadata, or a stale tag, is not ours to believe).
	 */
	NODE_F_XDP_DECAP = 1 << 0,
};

/* Slots in the stats map: room for counters to come without changing the pinned map. */
#define WEFT_STATS_SLOTS 64

/*
 * Why a packet went where it went. One per-CPU {packets, bytes} slot per
 * value; the Go side names them from this enum's BTF (CNT_ENCAP -> "encap").
 */
enum counter {
	/* from-pod */
	CNT_LOCAL = 0,          /* pod -> pod on this node */
	CNT_ENCAP,              /* pod -> remote pod, VXLAN */
	CNT_DIRECT,             /* pod -> remote pod, DirectRouting, no encap */
	CNT_ARP_REPLY,          /* answered a pod's ARP for its gateway */
	CNT_PASS_POD,           /* pod -> host or outside: kernel stack */
	CNT_PASS_TTL,           /* TTL would expire: kernel sends time-exceeded */
	CNT_PASS_MTU,           /* oversize without DF, or GSO: kernel fragments or signals */
	CNT_ICMP_FRAG_NEEDED,   /* oversize with DF: ICMP fragmentation-needed sent back */
	/* from-host (weft0) */
	CNT_ENCAP_HOST,         /* host process -> remote pod, VXLAN */
	CNT_DIRECT_HOST,        /* host process -> remote pod, no encap */
	/* from-underlay */
	CNT_DECAP,              /* VXLAN decapsulated (tc, or XDP) */
	CNT_DELIVER,            /* decapsulated or direct packet delivered to a local pod */
	CNT_TO_HOST,            /* decapsulated packet for the host: weft0 */
	CNT_DIRECT_RX,          /* unencapsulated packet from a DirectRouting peer */
	CNT_PASS_UNDERLAY,      /* not VXLAN for us: kernel stack, untouched */
	CNT_PASS_OTHER_VNI,     /* VXLAN on our port with another VNI: kernel stack */
	CNT_PASS_NO_CONFIG,     /* config map empty (node not initialised): kernel stack */
	/* drops, each with its own reason */
	CNT_DROP_NO_TUNNEL,     /* weft0 traffic to an address no tunnel covers */
	CNT_DROP_UNKNOWN_SOURCE,/* VXLAN whose inner source no tunnel covers */
	CNT_DROP_UNKNOWN_PEER,  /* VXLAN from an underlay address that is not the peer owning the inner source */
	CNT_DROP_VXLAN_FLAGS,   /* VXLAN without the I bit */
	CNT_DROP_SHORT,         /* UDP to our port too short for VXLAN + inner Ethernet + IPv4 */
	CNT_DROP_OUTER_OPTIONS, /* outer IPv4 carries options */
	CNT_DROP_OUTER_FRAGMENT,/* unused since fragments go to the kernel (pass_fragment); kept for the numbering */
	CNT_DROP_OUTER_LENGTH,  /* outer IPv4 or UDP length fields disagree with the frame */
	CNT_DROP_OUTER_CSUM,    /* outer IPv4 header checksum wrong (ip_rcv would drop it too) */
	CNT_DROP_INNER_NOT_IPV4,/* inner frame is neither IPv4 nor IPv6 (name kept: ABI) */
	CNT_DROP_INNER_MALFORMED, /* inner IPv4 version/IHL/length or IPv6 version/payload length lie */
	CNT_DROP_HELPER,        /* a BPF helper failed (adjust_room, redirect, ...) */
	CNT_DROP_MTU,           /* oversize with DF where no ICMP could be built */
	CNT_DROP_GRO_DEVICE,    /* reached weftgro0 but is not ours (no tunnel metadata, another VNI or address) */
	/*
	 * Real underlays (issue 12). Appended: the numbers above are the pinned
	 * stats map's ABI. Passes and informational counters are listed in
	 * counter_is_drop(); the rest drop.
	 */
	CNT_PASS_FRAGMENT,      /* outer IPv4 fragment of UDP to us: the kernel reassembles, gro_sink validates */
	CNT_DECAP_REASSEMBLED,  /* reassembled VXLAN validated by gro_sink on weftgro0 */
	CNT_ECN_CE,             /* outer CE copied onto an ECT inner header (RFC 6040); also counted as decap */
	CNT_DROP_ECN_NOT_ECT,   /* outer CE over a Not-ECT inner packet: RFC 6040 says drop */
	CNT_PASS_NO_XDP_META,   /* XDP could not reserve metadata: left encapsulated for tc to decapsulate */
	CNT_DROP_FRAG_NEEDED_SUPPRESSED, /* oversize DF (IPv6: any oversize) over the per-source ICMP rate: no ICMP */
	CNT_DROP_MTU_NO_ICMP,   /* oversize DF ICMP error or non-first fragment (IPv6: ICMPv6 error): never answered */
	CNT_DROP_NESTED_GSO,    /* GSO packet that already carries tunnel offload state, and no weftgro0 to hand it to */
	CNT_ENCAP_KERNEL,       /* such a packet handed to weftgro0: the kernel segments and encapsulates it */
	/* Kubernetes node (issue 10). Appended, like the block above. */
	CNT_DROP_POD_SPOOF,     /* IPv4 or IPv6 from a pod with a source that is not that pod's own */
	CNT_DROP_ARP_SPOOF,     /* ARP from a pod naming another IP or MAC as sender */
	CNT_PASS_CONNTRACK,     /* flow the host's conntrack NATed (or must see: fragment, ICMP error): host stack */
	CNT_DROP_DIRECT_PEER,   /* plain IPv4/IPv6 from a DirectRouting subnet whose L2 sender is not that peer */
	/* IPv6 underlay (issue 14, branch v6-outer; outer6.h). Appended, like the blocks above. */
	CNT_DROP_NO_UNDERLAY6,  /* tunnel over IPv6, but this node has no IPv6 underlay address to send from */
	CNT_DROP_OUTER6_NEEDS_KERNEL, /* over IPv6 only the kernel can checksum it (GSO, ...) and there is no weftgro0 */
	CNT_DROP_OUTER6_ZERO_CSUM, /* IPv6 VXLAN to us with UDP checksum 0 (udpv6 drops it too: udp6zerocsumrx off) */
	CNT_PASS_OUTER6_CSUM,   /* IPv6 VXLAN whose UDP checksum only the kernel can judge: its socket (weftgro0), then gro_sink */
	CNT_PASS_OUTER6_EXTHDR, /* IPv6 VXLAN behind extension headers: the kernel parses it, weftgro0 + gro_sink deliver */
	/* IPv6 pods (issue 14, branch v6-inner). Appended, like the blocks above. */
	CNT_ND_REPLY,           /* answered a pod's Neighbour Solicitation for its gateway (nd.h) */
	CNT_DROP_ND_SPOOF,      /* ND from a pod naming another address or MAC, or RA/redirect from a pod */
	CNT_PACKET_TOO_BIG,     /* oversize IPv6 from a pod: ICMPv6 Packet Too Big sent back (ptb.h) */
	CNT__MAX,
};

struct counter_value {
	__u64 packets;
	__u64 bytes;
};

/* An address as a hash key (frag_needed_rate). */
struct peer_key {
	__u8 addr[WEFT_ADDR_LEN];
};

/*
 * peer_counters: per-CPU array, one slot per remote node (tunnel_info's
 * stats_slot); slot 0 counts the traffic of peers that have none. 8192
 * slots: Kubernetes' documented limit is 5,000 nodes, and a preallocated
 * per-CPU array costs slots x 32 bytes per CPU, 256 KiB per CPU here (16 MiB
 * on a 64-CPU node, 64 MiB on 256 CPUs); 65,536, the tunnels map's size,
 * would cost 8x that. Peers past the 8191st share slot 0: their packets
 * still count in `stats`, only the split by peer is lost.
 */
#define WEFT_PEER_STATS_SLOTS 8192

struct peer_stats {
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 rx_bytes;
};

/*
 * XDP -> tc hand-off in the packet's metadata area. The XDP flavour decaps
 * and returns XDP_PASS so the underlay's GRO can coalesce the inner flow; the
 * tc program then delivers. Only an XDP program can write metadata, so the
 * tag cannot be forged from the wire.
 */
#define WEFT_META_DECAPPED 0x57454644 /* "WEFD": validated and decapsulated */
#define WEFT_META_PASSED 0x57454650   /* "WEFP": XDP already classified it as not ours */

struct xdp_meta {
	__u32 tag;
};
