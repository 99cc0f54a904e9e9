// Package bpf holds Weft's C data plane and the Go bindings bpf2go generates
// from it: the compiled object (weft_bpfel.o, committed) and the map key and
// value types shared with the C (WeftTunnelKey, WeftEndpointInfo, ...).
//
// Regenerate with `make generate`; CI fails if the committed output is stale.
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel -type tunnel_key -type tunnel_info -type tunnel_mode -type endpoint_key -type endpoint_info -type node_config -type counter -type counter_value -type peer_key -type peer_stats -type xdp_meta -type node_flags Weft weft.c -- -Iinclude
