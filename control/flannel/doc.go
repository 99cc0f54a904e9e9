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
// Where flannel is lenient, this package is strict, because a value it lets
// through becomes a forwarding entry in the data plane: flannel's vxlan
// backend programs a route for any lease it can decode, while ParseLease also
// rejects subnets outside the Network, of the wrong size, overlapping an older
// lease, non-canonical keys, multicast VtepMACs and non-IPv4 PublicIPs. Every
// rejection is a *LeaseError naming the etcd key and wrapping one of the
// exported sentinels, so callers log the key and test with errors.Is.
//
// The package does no I/O: control/store feeds it etcd key/values, and
// control/reconcile turns the valid leases into tunnels.
package flannel
