/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * maps.h: Weft's BPF maps. All are pinned by name under the loader's pin
 * directory (default /sys/fs/bpf/weft) so the data plane survives the daemon,
 * and all carry BTF so `bpftool map dump pinned ...` prints named fields.
 */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "weft.h"

/* Remote pod subnet -> remote node. One entry per remote node. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct tunnel_key);
	__type(value, struct tunnel_info);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tunnels SEC(".maps");

/* Local pod address -> its veth. One entry per local pod. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

/* This node's parameters; index 0. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

/* enum counter -> {packets, bytes}, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter_value);
	__uint(max_entries, WEFT_STATS_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

_Static_assert(CNT__MAX <= WEFT_STATS_SLOTS, "enum counter outgrew the stats map");

/*
 * Traffic to/from each remote node, per CPU, indexed by tunnel_info's
 * stats_slot (slot 0: peers without a slot). It replaced a per-CPU hash
 * keyed by the 16-byte remote address (layout 3): the hash lookup cost about
 * 40 ns per packet and direction, an array lookup through the slot the
 * tunnel entry carries is inlined by the verifier.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct peer_stats);
	__uint(max_entries, WEFT_PEER_STATS_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} peer_counters SEC(".maps");

/*
 * Oversize-DF source -> when its next ICMP fragmentation-needed is due
 * (ns, GCRA), so a pod that keeps sending too-big packets cannot make us
 * answer each one. LRU: a flood of sources only forgets old budgets. Not
 * pinned: rate state need not survive an upgrade.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct peer_key);
	__type(value, __u64);
	__uint(max_entries, 4096);
} frag_needed_rate SEC(".maps");
