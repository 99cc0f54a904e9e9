// Package flannel is flannel's etcd schema, spoken natively so that Weft
// nodes and flannel nodes can share one etcd and one cluster network.
//
// The schema (flannel-io/flannel pkg/subnet, pkg/lease, pkg/subnet/etcd):
//
//	<prefix>/config                   the network config, written by the admin
//	<prefix>/subnets/10.244.1.0-24    one lease per node, written by that node,
//	                                  attached to an etcd lease (TTL, renewed)
//
// with <prefix> defaulting to /coreos.com/network. A lease value is flannel's
// lease.LeaseAttrs marshalled by encoding/json; for the vxlan backend it is
//
//	{"PublicIP":"192.168.8.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"8e:5e:4e:3c:2b:1a"}}
//
// and MarshalLeaseAttrs reproduces exactly those bytes, so a flannel node reads
// a Weft lease as one of its own and the other way round.
//
// Dual-stack and IPv6-only networks follow flannel too (config EnableIPv4,
// EnableIPv6, IPv6Network, IPv6SubnetLen...; keys
// "10.244.1.0-24&fc00:0:0:1::-64" and "0.0.0.0-0&fc00:0:0:1::-64"; values
// with PublicIPv6 and BackendV6Data); lease6.go shows the shapes. Each
// family is validated on its own terms, and a Lease carries the fields of
// the families its network enables (HasIPv4, HasIPv6). In a dual-stack
// network a lease may carry its IPv6 subnet without PublicIPv6: Weft's
// "v6-in-v4", a node without an IPv6 underlay whose IPv6 pods are reached
// over IPv4 (validateIPv6Part). SubnetEnv writes and reads subnet.env with
// the FLANNEL_IPV6_* lines.
//
// Where flannel is lenient, this package is strict, because a value it lets
// through becomes a forwarding entry in the data plane: flannel's vxlan
// backend programs a route for any lease it can decode, while ParseLease also
// rejects subnets outside the Network, of the wrong size, overlapping an older
// lease, non-canonical keys, multicast VtepMACs and PublicIPs of the wrong
// family. Every rejection is a *LeaseError naming the etcd key and wrapping
// one of the exported sentinels, so callers log the key and test with
// errors.Is.
//
// The package does no I/O: control/store feeds it etcd key/values, and
// control/reconcile turns the valid leases into tunnels.
package flannel
