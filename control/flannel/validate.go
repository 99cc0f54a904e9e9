package flannel

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// KV is one etcd key/value under the subnets prefix, with the metadata
// the checks and the store need.
type KV struct {
	Key            string
	Value          []byte
	CreateRevision int64
	ModRevision    int64
	EtcdLease      int64 // 0 for a key without a lease (a flannel "reservation")
}

// Lease is a validated vxlan lease. Each family's fields are set only when
// the network enables that family and the key carries it: in a dual-stack
// network a lease may be IPv4-only (a node without IPv6, as flannel
// allows), in an IPv6-only network Subnet is always zero.
type Lease struct {
	KV
	Subnet     netip.Prefix // IPv4 pod subnet of the node
	IPv6Subnet netip.Prefix // IPv6 pod subnet of the node
	Attrs      LeaseAttrs
	VXLAN      VXLANData // BackendData: the IPv4 device's VNI and VtepMAC
	VXLANv6    VXLANData // BackendV6Data: the IPv6 device's, when IPv6Subnet is set
}

// PublicIP is the node's underlay address.
func (l Lease) PublicIP() netip.Addr { return l.Attrs.PublicIP }

// PublicIPv6 is the node's IPv6 underlay address, zero if it has none.
func (l Lease) PublicIPv6() netip.Addr { return l.Attrs.PublicIPv6 }

// HasIPv4 reports whether the lease carries a validated IPv4 subnet.
func (l Lease) HasIPv4() bool { return l.Subnet.IsValid() }

// HasIPv6 reports whether the lease carries a validated IPv6 subnet, with
// VXLANv6 to reach it: at PublicIPv6, or at PublicIP when the lease has no
// PublicIPv6 (v6-in-v4, see validateIPv6Part).
func (l Lease) HasIPv6() bool { return l.IPv6Subnet.IsValid() }

// LeaseError says why the value at Key is not a usable lease.
type LeaseError struct {
	Key         string
	Subnet      netip.Prefix // zero when the key itself did not parse, or names no IPv4 subnet
	ModRevision int64        // identifies the bad value, to report it once
	Err         error
	// IPv6Subnet is the key's IPv6 part, zero if it has none. With Subnet
	// it tells an allocator which subnets the bad key still blocks.
	IPv6Subnet netip.Prefix
}

func (e *LeaseError) Error() string { return fmt.Sprintf("lease %s: %v", e.Key, e.Err) }
func (e *LeaseError) Unwrap() error { return e.Err }

// ParseLease decodes and checks one key/value on its own: key, JSON,
// backend type and, for each family the network enables, the subnet
// (inside Network/IPv6Network, of SubnetLen/IPv6SubnetLen), PublicIP or
// PublicIPv6, and VtepMAC in BackendData or BackendV6Data. In a
// dual-stack network the IPv6 half is optional; in either network a
// missing needed half is ErrLeaseFamily. Overlaps need the whole set; see
// CheckOverlaps. The error is a *LeaseError.
func (c *NetworkConfig) ParseLease(prefix string, kv KV) (Lease, error) {
	var sn, sn6 netip.Prefix
	fail := func(err error) (Lease, error) {
		return Lease{}, &LeaseError{Key: kv.Key, Subnet: sn, IPv6Subnet: sn6, ModRevision: kv.ModRevision, Err: err}
	}
	name, ok := strings.CutPrefix(kv.Key, SubnetsPrefix(prefix))
	if !ok {
		return fail(fmt.Errorf("%w: not under %s", ErrLeaseKey, SubnetsPrefix(prefix)))
	}
	var err error
	if sn, sn6, err = ParseSubnetKey(name); err != nil {
		return fail(err)
	}
	hasV4, hasV6 := c.Network.IsValid(), c.IPv6Network.IsValid()
	switch {
	case hasV4 && !sn.IsValid():
		return fail(fmt.Errorf("%w: %s names only an IPv6 subnet, Network %s needs an IPv4 one", ErrLeaseFamily, name, c.Network))
	case !hasV4 && !sn6.IsValid():
		return fail(fmt.Errorf("%w: %s names no IPv6 subnet, the network is IPv6-only", ErrLeaseFamily, name))
	}
	if hasV4 {
		if sn.Bits() < c.Network.Bits() || !c.Network.Contains(sn.Addr()) {
			return fail(fmt.Errorf("%w: %s is not inside %s", ErrOutsideNetwork, sn, c.Network))
		}
		if sn.Bits() != c.SubnetLen {
			return fail(fmt.Errorf("%w: %s is a /%d, SubnetLen is %d", ErrSubnetSize, sn, sn.Bits(), c.SubnetLen))
		}
	}
	attrs, err := DecodeLeaseAttrs(kv.Value)
	if err != nil {
		return fail(err)
	}
	if attrs.BackendType != BackendVXLAN {
		return fail(fmt.Errorf("%w: %q, want %q", ErrBackendType, attrs.BackendType, BackendVXLAN))
	}
	l := Lease{KV: kv, Attrs: attrs}
	if hasV4 {
		if !attrs.PublicIP.IsValid() {
			return fail(fmt.Errorf("%w: no IPv4 PublicIP (0.0.0.0) for IPv4 subnet %s", ErrPublicIP, sn))
		}
		if l.VXLAN, err = ParseVXLANData(attrs.BackendData); err != nil {
			return fail(err)
		}
		l.Subnet = sn
	}
	if hasV6 && sn6.IsValid() {
		if l.VXLANv6, err = c.validateIPv6Part(sn6, attrs, l.VXLAN); err != nil {
			return fail(err)
		}
		l.IPv6Subnet = sn6
	}
	return l, nil
}

// ParseLeases checks every key/value on its own, then the survivors
// against each other (CheckOverlaps). Both results are sorted by key.
func (c *NetworkConfig) ParseLeases(prefix string, kvs []KV) ([]Lease, []*LeaseError) {
	var (
		valid   []Lease
		invalid []*LeaseError
	)
	for _, kv := range kvs {
		l, err := c.ParseLease(prefix, kv)
		if err != nil {
			invalid = append(invalid, err.(*LeaseError))
			continue
		}
		valid = append(valid, l)
	}
	return CheckOverlaps(valid, invalid)
}

// CheckOverlaps resolves overlaps in a set of leases that each passed
// ParseLease, and annotates invalid ones that overlap a valid one.
//
// Valid leases all have SubnetLen (IPv6SubnetLen) size, so two overlap only
// when they name the same subnet of one family (possible through a
// dual-stack key beside a plain one, or two keys sharing one half). The
// older key (lower CreateRevision, then key) owns each subnet, so an
// established node keeps its traffic; a key is one node's pair of subnets,
// so a newcomer that does not own every subnet it names is reported with
// ErrOverlap, in both families. Ownership is decided per subnet among all
// the leases naming it, whether or not the owner also owns its other half:
// the rule control/store's incremental index applies event by event, so
// both always agree. (When A owns X, B names X and Y, and C names Y, B
// loses X to A and C loses Y to B, so Y has no valid lease until B or C is
// fixed: a conflict only an operator can resolve.)
//
// An invalid lease whose subnet overlaps an owned one (a /25 or /23 written
// over a node's /24) gets ErrOverlap naming that key added to its error.
// Invalid leases never take part otherwise: a bad value must not displace a
// good one.
//
// The inputs are not modified. Both results are sorted by key.
func CheckOverlaps(valid []Lease, invalid []*LeaseError) ([]Lease, []*LeaseError) {
	byAge := slices.Clone(valid)
	slices.SortFunc(byAge, func(a, b Lease) int {
		return cmp.Or(cmp.Compare(a.CreateRevision, b.CreateRevision), strings.Compare(a.Key, b.Key))
	})
	owner := make(map[netip.Prefix]Lease, len(byAge)) // both families: their prefixes never collide
	for _, l := range byAge {
		for _, sn := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
			if _, taken := owner[sn]; sn.IsValid() && !taken {
				owner[sn] = l
			}
		}
	}
	var (
		outValid   = make([]Lease, 0, len(byAge))
		outInvalid = make([]*LeaseError, 0, len(invalid))
	)
	for _, l := range byAge {
		if err := NotOwner(l, func(sn netip.Prefix) string { return owner[sn].Key }); err != nil {
			outInvalid = append(outInvalid, &LeaseError{Key: l.Key, Subnet: l.Subnet, IPv6Subnet: l.IPv6Subnet,
				ModRevision: l.ModRevision, Err: err})
			continue
		}
		outValid = append(outValid, l)
	}
	// The owned subnets of each family, sorted by address and pairwise
	// disjoint, so one binary search finds any owned subnet overlapping a
	// given prefix.
	var sorted4, sorted6 []owned
	for sn, l := range owner {
		if sn.Addr().Is4() {
			sorted4 = append(sorted4, owned{sn, l.Key})
		} else {
			sorted6 = append(sorted6, owned{sn, l.Key})
		}
	}
	byAddr := func(a, b owned) int { return a.p.Addr().Compare(b.p.Addr()) }
	slices.SortFunc(sorted4, byAddr)
	slices.SortFunc(sorted6, byAddr)
	for _, e := range invalid {
		e2 := *e
		if o, ok := overlapping(sorted4, e.Subnet); ok {
			e2.Err = fmt.Errorf("%w; and %w: %s overlaps %s of %s", e2.Err, ErrOverlap, e.Subnet, o.p, o.key)
		} else if o, ok := overlapping(sorted6, e.IPv6Subnet); ok {
			e2.Err = fmt.Errorf("%w; and %w: %s overlaps %s of %s", e2.Err, ErrOverlap, e.IPv6Subnet, o.p, o.key)
		}
		outInvalid = append(outInvalid, &e2)
	}

	slices.SortFunc(outValid, func(a, b Lease) int { return strings.Compare(a.Key, b.Key) })
	slices.SortFunc(outInvalid, func(a, b *LeaseError) int { return strings.Compare(a.Key, b.Key) })
	return outValid, outInvalid
}

// NotOwner is the ErrOverlap of a lease that does not own every subnet it
// names: ownerOf gives the key owning a subnet. Its IPv4 subnet is looked
// at first. nil when l owns all of them.
func NotOwner(l Lease, ownerOf func(netip.Prefix) string) error {
	for _, sn := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
		if !sn.IsValid() {
			continue
		}
		if o := ownerOf(sn); o != l.Key {
			return fmt.Errorf("%w: %s is already leased by %s", ErrOverlap, sn, o)
		}
	}
	return nil
}

// owned is one owner's subnet of one family.
type owned struct {
	p   netip.Prefix
	key string
}

// overlapping finds a subnet in sorted (one family, by address, disjoint)
// overlapping p.
func overlapping(sorted []owned, p netip.Prefix) (owned, bool) {
	if !p.IsValid() || len(sorted) == 0 || p.Addr().BitLen() != sorted[0].p.Addr().BitLen() {
		return owned{}, false
	}
	p = p.Masked()
	i, _ := slices.BinarySearchFunc(sorted, p.Addr(), func(o owned, a netip.Addr) int { return o.p.Addr().Compare(a) })
	// The first subnet at or after p's start lies inside p, if any does.
	if i < len(sorted) && p.Contains(sorted[i].p.Addr()) {
		return sorted[i], true
	}
	// The last subnet before p's start is the only one that can contain it.
	if i > 0 && sorted[i-1].p.Contains(p.Addr()) {
		return sorted[i-1], true
	}
	return owned{}, false
}
