package store

import (
	"cmp"
	"fmt"
	"net/netip"
	"strings"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/peers"
	"github.com/weftnet/weft/control/subnetkeys"
)

// index is the validated view of the subnets prefix, kept up to date event
// by event so that each change costs O(change), not O(cluster), and turned
// into peers.Changes for the keys an event affected.
//
// The rules are flannel.CheckOverlaps', applied incrementally:
//
//   - each key/value is parsed and checked on its own once per value;
//   - valid leases are all SubnetLen wide, so two overlap only when they
//     name the same subnet; the older key (lower CreateRevision, then key)
//     owns it and the others are reported with ErrOverlap. owners holds the
//     candidates per subnet, so a change looks at that subnet only, and the
//     next-oldest candidate takes over when the owner goes;
//   - an invalid record whose subnet overlaps an owned one gets ErrOverlap
//     naming the owner added to its error; cover indexes invalid records by
//     the prefix that contains every subnet they can overlap, so an owner
//     change finds them with at most SubnetLen+1 map lookups.
//
// Both families share owners and cover (an IPv4 and an IPv6 prefix never
// collide as map keys): a dual-stack key is a candidate for its IPv4 and
// its IPv6 subnet, and is valid only while it owns both
// (flannel.NotOwner, the rule CheckOverlaps applies to a whole set).
type index struct {
	cfg    *flannel.NetworkConfig
	prefix string
	recs   map[string]*indexed
	owners *subnetkeys.Map           // subnet -> keys of leases valid on their own naming it
	cover  map[netip.Prefix][]string // cover(subnet) -> keys of invalid records with that subnet
}

// indexed is one key's value as parsed on its own.
type indexed struct {
	lease flannel.Lease
	err   *flannel.LeaseError // nil when valid on its own
}

func newIndex(cfg *flannel.NetworkConfig, prefix string, size int) *index {
	return &index{cfg: cfg, prefix: prefix, recs: make(map[string]*indexed, size),
		owners: subnetkeys.New(size), cover: map[netip.Prefix][]string{}}
}

// coverOf is the prefix under which an invalid record with subnet p is
// indexed: p itself when at most SubnetLen wide, else the SubnetLen subnet
// around it. ok is false when p cannot overlap a lease.
func (ix *index) coverOf(p netip.Prefix) (netip.Prefix, bool) {
	l := ix.subnetLen(p)
	if l == 0 {
		return netip.Prefix{}, false
	}
	if p.Bits() > l {
		p = netip.PrefixFrom(p.Addr(), l)
	}
	return p.Masked(), true
}

// subnetLen is the size of a lease in p's family, 0 if the network does not
// have that family (p cannot overlap a lease).
func (ix *index) subnetLen(p netip.Prefix) int {
	switch {
	case !p.IsValid():
		return 0
	case p.Addr().Is4() && ix.cfg.Network.IsValid():
		return ix.cfg.SubnetLen
	case p.Addr().Is6() && ix.cfg.IPv6Network.IsValid():
		return ix.cfg.IPv6SubnetLen
	}
	return 0
}

// subnetsOf is a lease's (or a bad record's) subnets, IPv4 first; zero
// halves left out.
func subnetsOf(v4, v6 netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, 2)
	for _, p := range []netip.Prefix{v4, v6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// update applies events and returns the keys whose state may have changed
// (each once, in first-touched order). With track false (loading a list,
// after which every key is emitted anyway) it returns nothing and skips the
// lookups for affected neighbours.
func (ix *index) update(evs []Event, track bool) []string {
	var (
		dirty []string
		seen  = map[string]bool{}
	)
	mark := func(k string) {
		if track && !seen[k] {
			seen[k] = true
			dirty = append(dirty, k)
		}
	}
	touchSubnet := func(sn netip.Prefix) {
		if !track {
			return
		}
		ix.owners.Each(sn, mark)
		if len(ix.cover) == 0 {
			return // no invalid record to annotate: the common case
		}
		// Invalid records overlapping sn: their annotation names its owner.
		for b := 0; b <= ix.subnetLen(sn); b++ {
			for _, k := range ix.cover[netip.PrefixFrom(sn.Addr(), b).Masked()] {
				mark(k)
			}
		}
	}
	for _, e := range evs {
		key := e.KV.Key
		mark(key)
		if old := ix.recs[key]; old != nil {
			if old.err == nil {
				for _, sn := range subnetsOf(old.lease.Subnet, old.lease.IPv6Subnet) {
					ix.owners.Remove(sn, key)
					touchSubnet(sn)
				}
			} else {
				for _, sn := range subnetsOf(old.err.Subnet, old.err.IPv6Subnet) {
					if c, ok := ix.coverOf(sn); ok {
						ix.cover[c] = remove(ix.cover[c], key)
						if len(ix.cover[c]) == 0 {
							delete(ix.cover, c)
						}
					}
				}
			}
			delete(ix.recs, key)
		}
		if e.Type == EventDelete {
			continue
		}
		l, err := ix.cfg.ParseLease(ix.prefix, e.KV)
		if err != nil {
			le := err.(*flannel.LeaseError)
			ix.recs[key] = &indexed{err: le}
			for _, sn := range subnetsOf(le.Subnet, le.IPv6Subnet) {
				if c, ok := ix.coverOf(sn); ok {
					ix.cover[c] = append(ix.cover[c], key)
				}
			}
			continue
		}
		// The raw value is not needed once parsed; at 50,000 leases it
		// was a third of the index's memory.
		l.Value, l.Attrs.BackendData, l.Attrs.BackendV6Data = nil, nil, nil
		ix.recs[key] = &indexed{lease: l}
		for _, sn := range subnetsOf(l.Subnet, l.IPv6Subnet) {
			ix.owners.Add(sn, key)
			touchSubnet(sn)
		}
	}
	return dirty
}

func remove(keys []string, key string) []string {
	for i, k := range keys {
		if k == key {
			return append(keys[:i], keys[i+1:]...)
		}
	}
	return keys
}

// owner is the key holding subnet sn: the oldest valid lease naming it.
func (ix *index) owner(sn netip.Prefix) (string, bool) {
	var best *indexed
	bestKey := ""
	ix.owners.Each(sn, func(k string) {
		r := ix.recs[k]
		if best == nil || cmp.Or(cmp.Compare(r.lease.CreateRevision, best.lease.CreateRevision), strings.Compare(k, bestKey)) < 0 {
			best, bestKey = r, k
		}
	})
	return bestKey, best != nil
}

// maxEnumerate bounds the owned subnets looked up one by one for an invalid
// record wider than SubnetLen; a wider one (a /9 in a /8 network of /24s)
// is checked against every owner instead, once per bad value.
const maxEnumerate = 4096

// overlapping finds the owned subnet with the lowest address overlapping p.
func (ix *index) overlapping(p netip.Prefix) (netip.Prefix, string, bool) {
	c, ok := ix.coverOf(p)
	if !ok {
		return netip.Prefix{}, "", false
	}
	l := ix.subnetLen(c)
	if c.Bits() == l {
		k, ok := ix.owner(c)
		return c, k, ok
	}
	if d := l - c.Bits(); d < 32 && 1<<d <= maxEnumerate {
		n := 1 << d
		for i := range n {
			sn := nthSubnet(c, l, uint64(i))
			if k, ok := ix.owner(sn); ok {
				return sn, k, true
			}
		}
		return netip.Prefix{}, "", false
	}
	var (
		found netip.Prefix
		key   string
	)
	ix.owners.Subnets(func(sn netip.Prefix) {
		if c.Overlaps(sn) && (!found.IsValid() || sn.Addr().Less(found.Addr())) {
			if k, ok := ix.owner(sn); ok {
				found, key = sn, k
			}
		}
	})
	return found, key, found.IsValid()
}

// nthSubnet is the i-th /bits subnet of c (i below 2^(bits-c.Bits())), in
// either family.
func nthSubnet(c netip.Prefix, bits int, i uint64) netip.Prefix {
	b := c.Addr().AsSlice()
	// i shifted to the subnet's last bit, added byte by byte from the end.
	shift := len(b)*8 - bits
	carry := uint64(0)
	for j := len(b) - 1; j >= 0; j-- {
		pos := (len(b)-1-j)*8 - shift // bit position of byte j's lowest bit relative to i
		var add uint64
		switch {
		case pos >= 64:
			add = 0
		case pos >= 0:
			add = i >> pos & 0xff
		case pos > -8:
			add = i << -pos & 0xff
		}
		sum := uint64(b[j]) + add + carry
		b[j], carry = byte(sum), sum>>8
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, bits)
}

// state is key's current Change.
func (ix *index) state(key string) peers.Change {
	r := ix.recs[key]
	switch {
	case r == nil:
		return peers.Change{Key: key}
	case r.err == nil:
		if err := flannel.NotOwner(r.lease, func(sn netip.Prefix) string { o, _ := ix.owner(sn); return o }); err != nil {
			return peers.Change{Key: key, Invalid: &flannel.LeaseError{Key: key, Subnet: r.lease.Subnet, IPv6Subnet: r.lease.IPv6Subnet,
				ModRevision: r.lease.ModRevision, Err: err}}
		}
		l := r.lease
		return peers.Change{Key: key, Lease: &l}
	}
	for _, p := range subnetsOf(r.err.Subnet, r.err.IPv6Subnet) {
		if sn, o, ok := ix.overlapping(p); ok {
			e := *r.err
			e.Err = fmt.Errorf("%w; and %w: %s overlaps %s of %s", r.err.Err, flannel.ErrOverlap, p, sn, o)
			return peers.Change{Key: key, Invalid: &e}
		}
	}
	return peers.Change{Key: key, Invalid: r.err}
}

// changes is the state of each key.
func (ix *index) changes(keys []string) []peers.Change {
	out := make([]peers.Change, len(keys))
	for i, k := range keys {
		out[i] = ix.state(k)
	}
	return out
}

// all is every key's state: a Full batch's changes.
func (ix *index) all() []peers.Change {
	out := make([]peers.Change, 0, len(ix.recs))
	for k := range ix.recs {
		out = append(out, ix.state(k))
	}
	return out
}
