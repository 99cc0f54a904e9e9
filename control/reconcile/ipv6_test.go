package reconcile

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/metrics"
	"github.com/weftnet/weft/control/peers"
	"github.com/weftnet/weft/maps"
)

// Dual-stack and IPv6-only leases become one tunnel per family
// (ipv6-contract.md): the IPv6 subnet goes to the peer's PublicIPv6, else
// (v6-in-v4) to its IPv4 PublicIP; the VtepMAC is BackendV6Data's, else
// BackendData's; DirectRouting per family.

func dualConfig(t *testing.T, directRouting bool) *flannel.NetworkConfig {
	t.Helper()
	c, err := flannel.ParseConfig(fmt.Appendf(nil, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56",`+
		`"Backend":{"Type":"vxlan","VNI":7,"DirectRouting":%t}}`, directRouting))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func v6OnlyConfig(t *testing.T) *flannel.NetworkConfig {
	t.Helper()
	c, err := flannel.ParseConfig([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan","VNI":7,"DirectRouting":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dualKV is a lease as flannel (pub6 set) or Weft's v6-in-v4 (pub6 "")
// writes it; pub4 "" makes an IPv6-only lease.
func dualKV(key, pub4, pub6 string, macByte byte, rev int64) flannel.KV {
	v := `{"PublicIP":"0.0.0.0"`
	if pub4 != "" {
		v = `{"PublicIP":"` + pub4 + `"`
	}
	if pub6 != "" {
		v += `,"PublicIPv6":"` + pub6 + `"`
	} else {
		v += `,"PublicIPv6":null`
	}
	v += `,"BackendType":"vxlan"`
	if pub4 != "" {
		v += fmt.Sprintf(`,"BackendData":{"VNI":7,"VtepMAC":"8e:00:00:00:00:%02x"}`, macByte)
	}
	if pub6 != "" {
		v += fmt.Sprintf(`,"BackendV6Data":{"VNI":7,"VtepMAC":"8e:00:00:00:06:%02x"}`, macByte)
	}
	return flannel.KV{Key: prefix + "/subnets/" + key, Value: []byte(v + "}"), CreateRevision: rev, ModRevision: rev}
}

var dualSelf = Self{
	Subnet:     netip.MustParsePrefix("10.244.1.0/24"),
	IPv6Subnet: netip.MustParsePrefix("fd10:244:0:1::/64"),
	PublicIP:   netip.MustParseAddr("192.168.8.1"),
	PublicIPv6: netip.MustParseAddr("fd00:8::1"),
	Underlay:   netip.MustParsePrefix("192.168.8.0/24"),
	Underlay6:  netip.MustParsePrefix("fd00:8::/64"),
}

func TestDualStackLeasesToTunnels(t *testing.T) {
	cfg := dualConfig(t, true)
	f := newFake()
	r := New(f, cfg, dualSelf, nil, nil)
	apply(t, r, cfg,
		dualKV("10.244.1.0-24&fd10:244:0:1::-64", "192.168.8.1", "fd00:8::1", 1, 2),  // ourselves
		dualKV("10.244.9.0-24&fd10:244:0:9::-64", "192.168.8.77", "fd00:8::1", 9, 3), // a stale lease of our PublicIPv6
		dualKV("10.244.2.0-24&fd10:244:0:2::-64", "192.168.8.2", "fd00:8::2", 2, 4),  // same L2 in both families: direct twice
		dualKV("10.244.3.0-24&fd10:244:0:3::-64", "192.168.8.3", "fd00:99::3", 3, 5), // v4 on our L2, v6 routed
		dualKV("10.244.4.0-24&fd10:244:0:4::-64", "192.168.50.4", "", 4, 6),          // v6-in-v4: always vxlan
		dualKV("10.244.5.0-24", "192.168.50.5", "", 5, 7),                            // an IPv4-only peer
	)
	want := "10.244.2.0/24>192.168.8.2/direct 10.244.3.0/24>192.168.8.3/direct 10.244.4.0/24>192.168.50.4/vxlan 10.244.5.0/24>192.168.50.5/vxlan " +
		"fd10:244:0:2::/64>fd00:8::2/direct fd10:244:0:3::/64>fd00:99::3/vxlan fd10:244:0:4::/64>192.168.50.4/vxlan"
	if got := f.String(); got != want {
		t.Fatalf("map %s\nwant %s", got, want)
	}
	for sn, w := range map[string]maps.Tunnel{
		// flannel's lease: the IPv6 device's VtepMAC.
		"fd10:244:0:3::/64": {Remote: netip.MustParseAddr("fd00:99::3"), VtepMAC: net.HardwareAddr{0x8e, 0, 0, 0, 6, 3}},
		// v6-in-v4: the one VtepMAC of BackendData, the IPv4 remote.
		"fd10:244:0:4::/64": {Remote: netip.MustParseAddr("192.168.50.4"), VtepMAC: net.HardwareAddr{0x8e, 0, 0, 0, 0, 4}},
	} {
		w.Subnet, w.VNI, w.Mode = netip.MustParsePrefix(sn), 7, maps.ModeVXLAN
		if got := f.m[w.Subnet]; !got.Equal(w) {
			t.Errorf("tunnel %v, want %v", got, w)
		}
	}
}

func TestIPv6OnlyLeasesToTunnels(t *testing.T) {
	cfg := v6OnlyConfig(t)
	self := Self{IPv6Subnet: netip.MustParsePrefix("fd10:244:0:1::/64"), PublicIPv6: netip.MustParseAddr("fd00:8::1"),
		Underlay6: netip.MustParsePrefix("fd00:8::/64")}
	f := newFake()
	r := New(f, cfg, self, nil, nil)
	apply(t, r, cfg,
		dualKV("0.0.0.0-0&fd10:244:0:1::-64", "", "fd00:8::1", 1, 2), // ourselves
		dualKV("0.0.0.0-0&fd10:244:0:2::-64", "", "fd00:8::2", 2, 3),
		dualKV("0.0.0.0-0&fd10:244:0:3::-64", "", "fd00:99::3", 3, 4),
	)
	if got, want := f.String(), "fd10:244:0:2::/64>fd00:8::2/direct fd10:244:0:3::/64>fd00:99::3/vxlan"; got != want {
		t.Fatalf("map %s\nwant %s", got, want)
	}
}

func TestDualStackDeltaAndLastKnownGood(t *testing.T) {
	cfg := dualConfig(t, false)
	f := newFake()
	m := new(metrics.Metrics)
	r := New(f, cfg, dualSelf, nil, m)
	counters := fakeCounters{}
	r.PruneCounters(counters)
	const name = "10.244.2.0-24&fd10:244:0:2::-64"
	a := dualKV(name, "192.168.50.2", "fd00:99::2", 2, 4)
	if _, err := r.ApplyBatch(peers.Batch{Full: true, Changes: []peers.Change{change(t, cfg, a)}}); err != nil {
		t.Fatal(err)
	}
	both := "10.244.2.0/24>192.168.50.2/vxlan fd10:244:0:2::/64>fd00:99::2/vxlan"
	if f.String() != both {
		t.Fatal(f)
	}
	// The data plane counts traffic per remote: both of the peer's.
	counters[netip.MustParseAddr("192.168.50.2")], counters[netip.MustParseAddr("fd00:99::2")] = true, true

	// Its value goes bad: both tunnels stay (last known good), in a delta.
	res, err := r.ApplyBatch(peers.Batch{Changes: []peers.Change{change(t, cfg, garbage(name, 5))}})
	if err != nil || f.String() != both || res != (Result{Unchanged: 2}) || m.LastKnownGood.Load() != 2 {
		t.Fatalf("%s %+v %v lkg %d", f, res, err, m.LastKnownGood.Load())
	}
	// After a restart, a bad value finds both of its pinned entries.
	m2 := new(metrics.Metrics)
	f2 := newFake(f.m[netip.MustParsePrefix("10.244.2.0/24")], f.m[netip.MustParsePrefix("fd10:244:0:2::/64")])
	apply(t, New(f2, cfg, dualSelf, nil, m2), cfg, garbage(name, 5))
	if f2.String() != both || f2.puts != 0 || m2.LastKnownGood.Load() != 2 {
		t.Fatalf("after restart: %s puts %d lkg %d", f2, f2.puts, m2.LastKnownGood.Load())
	}

	// Fixed, and the IPv6 underlay address moved: only the IPv6 entry is
	// rewritten; the old IPv6 remote's counters go, the IPv4 one's stay.
	moved := dualKV(name, "192.168.50.2", "fd00:99::22", 2, 6)
	res, err = r.ApplyBatch(peers.Batch{Changes: []peers.Change{change(t, cfg, moved)}})
	if err != nil || res != (Result{Updated: 1, Unchanged: 1}) ||
		f.String() != "10.244.2.0/24>192.168.50.2/vxlan fd10:244:0:2::/64>fd00:99::22/vxlan" {
		t.Fatalf("%s %+v %v", f, res, err)
	}
	if counters[netip.MustParseAddr("fd00:99::2")] || !counters[netip.MustParseAddr("192.168.50.2")] {
		t.Fatalf("counters %v, want the old IPv6 remote's pruned, the IPv4 one's kept", counters)
	}
	// The node drops IPv6 (an IPv4-only key replaces the dual one).
	res, err = r.ApplyBatch(peers.Batch{Changes: []peers.Change{{Key: a.Key}, change(t, cfg, dualKV("10.244.2.0-24", "192.168.50.2", "", 2, 7))}})
	if err != nil || f.String() != "10.244.2.0/24>192.168.50.2/vxlan" || res.Removed != 1 {
		t.Fatalf("%s %+v %v", f, res, err)
	}
	// Deleted: everything goes, counters too.
	if _, err := r.ApplyBatch(peers.Batch{Full: true}); err != nil || f.String() != "" || len(counters) != 0 {
		t.Fatalf("%s %v counters %v", f, err, counters)
	}
	// The audit sees both families: an IPv6 entry deleted behind our back
	// is put back.
	if _, err := r.ApplyBatch(peers.Batch{Full: true, Changes: []peers.Change{change(t, cfg, moved)}}); err != nil {
		t.Fatal(err)
	}
	delete(f.m, netip.MustParsePrefix("fd10:244:0:2::/64"))
	if drift, err := r.Audit(); err != nil || drift != 1 ||
		f.String() != "10.244.2.0/24>192.168.50.2/vxlan fd10:244:0:2::/64>fd00:99::22/vxlan" {
		t.Fatalf("audit: drift %d %v, map %s", drift, err, f)
	}
}
