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

// Lease is a validated vxlan lease.
type Lease struct {
	KV
	Subnet     netip.Prefix // IPv4 pod subnet of the node
	IPv6Subnet netip.Prefix // from a dual-stack key; not forwarded by Weft
	Attrs      LeaseAttrs
	VXLAN      VXLANData
}

// PublicIP is the node's underlay address.
func (l Lease) PublicIP() netip.Addr { return l.Attrs.PublicIP }

// LeaseError says why the value at Key is not a usable lease.
type LeaseError struct {
	Key         string
	Subnet      netip.Prefix // zero when the key itself did not parse
	ModRevision int64        // identifies the bad value, to report it once
	Err         error
}

func (e *LeaseError) Error() string { return fmt.Sprintf("lease %s: %v", e.Key, e.Err) }
func (e *LeaseError) Unwrap() error { return e.Err }

// ParseLease decodes and checks one key/value on its own: key, JSON,
// PublicIP, backend type, VtepMAC, subnet inside Network and of SubnetLen.
// Overlaps need the whole set; see CheckOverlaps. The error is a
// *LeaseError.
func (c *NetworkConfig) ParseLease(prefix string, kv KV) (Lease, error) {
	fail := func(sn netip.Prefix, err error) (Lease, error) {
		return Lease{}, &LeaseError{Key: kv.Key, Subnet: sn, ModRevision: kv.ModRevision, Err: err}
	}
	name, ok := strings.CutPrefix(kv.Key, SubnetsPrefix(prefix))
	if !ok {
		return fail(netip.Prefix{}, fmt.Errorf("%w: not under %s", ErrLeaseKey, SubnetsPrefix(prefix)))
	}
	sn, sn6, err := ParseSubnetKey(name)
	if err != nil {
		return fail(netip.Prefix{}, err)
	}
	if sn.Bits() < c.Network.Bits() || !c.Network.Contains(sn.Addr()) {
		return fail(sn, fmt.Errorf("%w: %s is not inside %s", ErrOutsideNetwork, sn, c.Network))
	}
	if sn.Bits() != c.SubnetLen {
		return fail(sn, fmt.Errorf("%w: %s is a /%d, SubnetLen is %d", ErrSubnetSize, sn, sn.Bits(), c.SubnetLen))
	}
	attrs, err := ParseLeaseAttrs(kv.Value)
	if err != nil {
		return fail(sn, err)
	}
	if attrs.BackendType != BackendVXLAN {
		return fail(sn, fmt.Errorf("%w: %q, want %q", ErrBackendType, attrs.BackendType, BackendVXLAN))
	}
	data, err := ParseVXLANData(attrs.BackendData)
	if err != nil {
		return fail(sn, err)
	}
	return Lease{KV: kv, Subnet: sn, IPv6Subnet: sn6, Attrs: attrs, VXLAN: data}, nil
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
// Valid leases all have SubnetLen size, so two overlap only when they name
// the same subnet (possible through a dual-stack key beside a plain one).
// The older key (lower CreateRevision) keeps the subnet, so an established
// node keeps its traffic and the newcomer is reported with ErrOverlap.
//
// An invalid lease whose subnet overlaps a valid one (a /25 or /23 written
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
	owner := make(map[netip.Prefix]Lease, len(byAge))
	var (
		outValid   = make([]Lease, 0, len(byAge))
		outInvalid = make([]*LeaseError, 0, len(invalid))
	)
	for _, l := range byAge {
		if o, taken := owner[l.Subnet]; taken {
			outInvalid = append(outInvalid, &LeaseError{Key: l.Key, Subnet: l.Subnet, ModRevision: l.ModRevision,
				Err: fmt.Errorf("%w: %s is already leased by %s", ErrOverlap, l.Subnet, o.Key)})
			continue
		}
		owner[l.Subnet] = l
		outValid = append(outValid, l)
	}

	// Sorted by address and pairwise disjoint, so one binary search finds
	// any valid subnet overlapping a given prefix.
	sorted := slices.Clone(outValid)
	slices.SortFunc(sorted, func(a, b Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	for _, e := range invalid {
		e2 := *e
		if o, ok := overlapping(sorted, e.Subnet); ok && e.Subnet.IsValid() {
			e2.Err = fmt.Errorf("%w; and %w: %s overlaps %s of %s", e.Err, ErrOverlap, e.Subnet, o.Subnet, o.Key)
		}
		outInvalid = append(outInvalid, &e2)
	}

	slices.SortFunc(outValid, func(a, b Lease) int { return strings.Compare(a.Key, b.Key) })
	slices.SortFunc(outInvalid, func(a, b *LeaseError) int { return strings.Compare(a.Key, b.Key) })
	return outValid, outInvalid
}

// overlapping finds a lease in sorted (by address, disjoint) overlapping p.
func overlapping(sorted []Lease, p netip.Prefix) (Lease, bool) {
	if !p.IsValid() || !p.Addr().Is4() {
		return Lease{}, false
	}
	p = p.Masked()
	i, _ := slices.BinarySearchFunc(sorted, p.Addr(), func(l Lease, a netip.Addr) int { return l.Subnet.Addr().Compare(a) })
	// The first lease at or after p's start lies inside p, if any does.
	if i < len(sorted) && p.Contains(sorted[i].Subnet.Addr()) {
		return sorted[i], true
	}
	// The last lease before p's start is the only one that can contain it.
	if i > 0 && sorted[i-1].Subnet.Contains(p.Addr()) {
		return sorted[i-1], true
	}
	return Lease{}, false
}
