package subnetkeys

import (
	"net/netip"
	"slices"
	"testing"
)

func keys(m *Map, sn netip.Prefix) []string {
	var out []string
	m.Each(sn, func(k string) { out = append(out, k) })
	slices.Sort(out)
	return out
}

func TestMap(t *testing.T) {
	a, b := netip.MustParsePrefix("10.0.1.0/24"), netip.MustParseAddr("10.0.2.0")
	sb := netip.PrefixFrom(b, 24)
	m := New(0)
	m.Add(a, "k1")
	m.Add(a, "k2")
	m.Add(a, "k3")
	m.Add(sb, "k4")
	if got := keys(m, a); !slices.Equal(got, []string{"k1", "k2", "k3"}) || m.Len() != 2 {
		t.Fatal(got, m.Len())
	}
	m.Remove(a, "k1") // the inline one: an extra moves up
	m.Remove(a, "nope")
	if got := keys(m, a); !slices.Equal(got, []string{"k2", "k3"}) {
		t.Fatal(got)
	}
	m.Remove(a, "k3")
	m.Remove(a, "k2")
	if m.Has(a) || len(m.more) != 0 || m.Len() != 1 {
		t.Fatalf("not emptied: %v %v", m.one, m.more)
	}
	m.Remove(sb, "k4")
	if m.Has(sb) || m.Len() != 0 {
		t.Fatal("not emptied")
	}
}
