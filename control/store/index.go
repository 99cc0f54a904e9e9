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
	if !p.IsValid() || !p.Addr().Is4() {
		return netip.Prefix{}, false
	}
	if p.Bits() > ix.cfg.SubnetLen {
		p = netip.PrefixFrom(p.Addr(), ix.cfg.SubnetLen)
	}
	return p.Masked(), true
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
		// Invalid records overlapping sn: their annotation names its owner.
		for b := 0; b <= ix.cfg.SubnetLen; b++ {
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
				ix.owners.Remove(old.lease.Subnet, key)
				touchSubnet(old.lease.Subnet)
			} else if c, ok := ix.coverOf(old.err.Subnet); ok {
				ix.cover[c] = remove(ix.cover[c], key)
				if len(ix.cover[c]) == 0 {
					delete(ix.cover, c)
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
			if c, ok := ix.coverOf(le.Subnet); ok {
				ix.cover[c] = append(ix.cover[c], key)
			}
			continue
		}
		// The raw value is not needed once parsed; at 50,000 leases it
		// was a third of the index's memory.
		l.Value, l.Attrs.BackendData, l.Attrs.BackendV6Data = nil, nil, nil
		ix.recs[key] = &indexed{lease: l}
		ix.owners.Add(l.Subnet, key)
		touchSubnet(l.Subnet)
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
	if c.Bits() == ix.cfg.SubnetLen {
		k, ok := ix.owner(c)
		return c, k, ok
	}
	if n := 1 << (ix.cfg.SubnetLen - c.Bits()); n <= maxEnumerate {
		step := uint32(1) << (32 - ix.cfg.SubnetLen)
		a4 := c.Addr().As4()
		base := uint32(a4[0])<<24 | uint32(a4[1])<<16 | uint32(a4[2])<<8 | uint32(a4[3])
		for i := range uint32(n) {
			v := base + i*step
			sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), ix.cfg.SubnetLen)
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

// state is key's current Change.
func (ix *index) state(key string) peers.Change {
	r := ix.recs[key]
	switch {
	case r == nil:
		return peers.Change{Key: key}
	case r.err == nil:
		if o, _ := ix.owner(r.lease.Subnet); o != key {
			return peers.Change{Key: key, Invalid: &flannel.LeaseError{Key: key, Subnet: r.lease.Subnet, ModRevision: r.lease.ModRevision,
				Err: fmt.Errorf("%w: %s is already leased by %s", flannel.ErrOverlap, r.lease.Subnet, o)}}
		}
		l := r.lease
		return peers.Change{Key: key, Lease: &l}
	}
	if sn, o, ok := ix.overlapping(r.err.Subnet); ok {
		e := *r.err
		e.Err = fmt.Errorf("%w; and %w: %s overlaps %s of %s", r.err.Err, flannel.ErrOverlap, r.err.Subnet, sn, o)
		return peers.Change{Key: key, Invalid: &e}
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
