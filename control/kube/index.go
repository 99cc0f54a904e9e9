package kube

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/peers"
)

// index turns parsed Nodes into peers.Changes, resolving overlaps only
// around what changed: it keeps subnet -> valid claimants, so a Node update
// looks at the (usually one) other Node claiming the same podCIDR, never at
// the whole cluster. The oldest claimant (creationTimestamp, then name)
// keeps the subnet, so an established node keeps its traffic and a
// newcomer with a duplicated podCIDR is reported with flannel.ErrOverlap;
// when the owner goes away, the next claimant takes over.
//
// It also remembers what it last emitted per key, so Node updates that
// change nothing Weft reads (kubelet status heartbeats, labels, informer
// resyncs) produce no Change at all.
type index struct {
	nodes   map[string]parsed         // key -> the Node's own parse result (no overlap check)
	claims  map[netip.Prefix][]string // subnet -> keys of valid leases claiming it
	emitted map[string]peers.Change   // key -> last Change handed out
}

// parsed is one managed Node before overlaps are resolved.
type parsed struct {
	lease   *flannel.Lease
	invalid *flannel.LeaseError
}

func newIndex() *index {
	return &index{nodes: map[string]parsed{}, claims: map[netip.Prefix][]string{}, emitted: map[string]peers.Change{}}
}

// set records key's new parse result (nil lease and nil invalid: the Node
// is gone or no longer managed) and returns the subnets whose ownership may
// have changed.
func (x *index) set(key string, p parsed) []netip.Prefix {
	var touched []netip.Prefix
	if old, ok := x.nodes[key]; ok && old.lease != nil {
		for _, sn := range subnetsOf(old.lease) {
			x.claims[sn] = slices.DeleteFunc(x.claims[sn], func(k string) bool { return k == key })
			if len(x.claims[sn]) == 0 {
				delete(x.claims, sn)
			}
			touched = append(touched, sn)
		}
	}
	if p.lease == nil && p.invalid == nil {
		delete(x.nodes, key)
		return touched
	}
	x.nodes[key] = p
	if p.lease != nil {
		for _, sn := range subnetsOf(p.lease) {
			x.claims[sn] = append(x.claims[sn], key)
			touched = append(touched, sn)
		}
	}
	return touched
}

// subnetsOf is a lease's podCIDRs, IPv4 first: a dual-stack Node claims
// both (their prefixes never collide as map keys).
func subnetsOf(l *flannel.Lease) []netip.Prefix {
	out := make([]netip.Prefix, 0, 2)
	for _, sn := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
		if sn.IsValid() {
			out = append(out, sn)
		}
	}
	return out
}

// owner is the claimant of sn that keeps it: the oldest.
func (x *index) owner(sn netip.Prefix) string {
	keys := x.claims[sn]
	if len(keys) == 0 {
		return ""
	}
	return slices.MinFunc(keys, func(a, b string) int {
		la, lb := x.nodes[a].lease, x.nodes[b].lease
		return cmp.Or(cmp.Compare(la.CreateRevision, lb.CreateRevision), cmp.Compare(a, b))
	})
}

// current is key's Change now, overlaps resolved.
func (x *index) current(key string) peers.Change {
	p, ok := x.nodes[key]
	switch {
	case !ok:
		return peers.Change{Key: key}
	case p.invalid != nil:
		return peers.Change{Key: key, Invalid: p.invalid}
	}
	// A Node must own every podCIDR it has (flannel.NotOwner's rule).
	for _, sn := range subnetsOf(p.lease) {
		if o := x.owner(sn); o != key {
			return peers.Change{Key: key, Invalid: &flannel.LeaseError{Key: key, Subnet: p.lease.Subnet, IPv6Subnet: p.lease.IPv6Subnet,
				ModRevision: p.lease.ModRevision, Err: fmt.Errorf("%w: podCIDR %s is already used by the older %s", flannel.ErrOverlap, sn, o)}}
		}
	}
	return peers.Change{Key: key, Lease: p.lease}
}

// update applies one Node's new state and returns the Changes it causes:
// its own, and those of other claimants of the subnets it left or took.
// Changes equal to what was last emitted are left out.
func (x *index) update(key string, p parsed) []peers.Change {
	keys := []string{key}
	for _, sn := range x.set(key, p) {
		keys = append(keys, x.claims[sn]...)
	}
	slices.Sort(keys)
	var out []peers.Change
	for _, k := range slices.Compact(keys) {
		if c := x.current(k); x.changed(c) {
			out = append(out, c)
		}
	}
	return out
}

// full is every current record, for a Full batch; it also resets what was
// emitted to exactly that.
func (x *index) full() []peers.Change {
	x.emitted = make(map[string]peers.Change, len(x.nodes))
	out := make([]peers.Change, 0, len(x.nodes))
	for k := range x.nodes {
		c := x.current(k)
		x.emitted[k] = c
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b peers.Change) int { return cmp.Compare(a.Key, b.Key) })
	return out
}

// changed records c as emitted and reports whether it differs from the
// previous Change for its key.
func (x *index) changed(c peers.Change) bool {
	prev, had := x.emitted[c.Key]
	if c.Deleted() {
		delete(x.emitted, c.Key)
		return had
	}
	x.emitted[c.Key] = c
	return !had || !sameChange(prev, c)
}

func sameChange(a, b peers.Change) bool {
	switch {
	case a.Lease != nil && b.Lease != nil:
		la, lb := a.Lease, b.Lease
		return la.Subnet == lb.Subnet && la.PublicIP() == lb.PublicIP() && la.VXLAN.VNI == lb.VXLAN.VNI &&
			la.VXLAN.VtepMAC.String() == lb.VXLAN.VtepMAC.String() &&
			la.IPv6Subnet == lb.IPv6Subnet && la.PublicIPv6() == lb.PublicIPv6() && la.VXLANv6.VNI == lb.VXLANv6.VNI &&
			la.VXLANv6.VtepMAC.String() == lb.VXLANv6.VtepMAC.String()
	case a.Invalid != nil && b.Invalid != nil:
		return a.Invalid.Subnet == b.Invalid.Subnet && a.Invalid.IPv6Subnet == b.Invalid.IPv6Subnet && a.Invalid.Error() == b.Invalid.Error()
	}
	return false
}
