// Package subnetkeys is a multimap from subnet to the store keys naming it,
// shaped for the common case: almost every subnet has exactly one key, so
// that one is kept inline and only the rare extra ones (an overlap, a
// handover in progress) get a slice. At 50,000 nodes a plain
// map[netip.Prefix][]string cost a slice allocation per node; this does not.
package subnetkeys

import "net/netip"

// Map is subnet -> keys. The zero value is not ready; use New.
type Map struct {
	one  map[netip.Prefix]string
	more map[netip.Prefix][]string // keys beyond the first
}

// New returns an empty Map sized for n subnets.
func New(n int) *Map {
	return &Map{one: make(map[netip.Prefix]string, n), more: map[netip.Prefix][]string{}}
}

// Add records key under sn. Adding a key twice records it twice.
func (m *Map) Add(sn netip.Prefix, key string) {
	if _, ok := m.one[sn]; !ok {
		m.one[sn] = key
		return
	}
	m.more[sn] = append(m.more[sn], key)
}

// Remove forgets one record of key under sn, if any.
func (m *Map) Remove(sn netip.Prefix, key string) {
	first, ok := m.one[sn]
	if !ok {
		return
	}
	extra := m.more[sn]
	if first == key {
		if len(extra) == 0 {
			delete(m.one, sn)
			return
		}
		m.one[sn] = extra[0]
		extra = extra[1:]
	} else {
		for i, k := range extra {
			if k == key {
				extra = append(extra[:i:i], extra[i+1:]...)
				break
			}
		}
	}
	if len(extra) == 0 {
		delete(m.more, sn)
	} else {
		m.more[sn] = extra
	}
}

// Each calls fn for every key under sn.
func (m *Map) Each(sn netip.Prefix, fn func(key string)) {
	first, ok := m.one[sn]
	if !ok {
		return
	}
	fn(first)
	for _, k := range m.more[sn] {
		fn(k)
	}
}

// Has reports whether any key is under sn.
func (m *Map) Has(sn netip.Prefix) bool { _, ok := m.one[sn]; return ok }

// Subnets calls fn for every subnet with at least one key.
func (m *Map) Subnets(fn func(sn netip.Prefix)) {
	for sn := range m.one {
		fn(sn)
	}
}

// Len is the number of subnets with at least one key.
func (m *Map) Len() int { return len(m.one) }
