package flannel

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// The shapes flannel's own code writes, read from flannel-io/flannel
// (pkg/lease LeaseAttrs through encoding/json: PublicIP an ip.IP4 that is
// always written, "0.0.0.0" when empty; PublicIPv6 a *ip.IP6, null when
// absent; BackendType/BackendData/BackendV6Data omitempty; pkg/backend/vxlan
// newSubnetAttrs fills each family's half only when that family is on).
const (
	// pkg/subnet/etcd registry_test's createSubnet expectation: a lease
	// with only PublicIP set.
	flannelBareLease = `{"PublicIP":"1.2.3.4","PublicIPv6":null}`
	// A dual-stack vxlan node: flannel.1 and flannel-v6.1 each have a MAC.
	flannelDualLease = `{"PublicIP":"192.168.8.1","PublicIPv6":"fd00:8::1","BackendType":"vxlan",` +
		`"BackendData":{"VNI":1,"VtepMAC":"8e:5e:4e:3c:2b:1a"},"BackendV6Data":{"VNI":1,"VtepMAC":"8e:5e:4e:3c:2b:1b"}}`
	// An IPv6-only vxlan node (EnableIPv4 false): no flannel.1, empty
	// PublicIP, no BackendData.
	flannelV6OnlyLease = `{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:8::1","BackendType":"vxlan",` +
		`"BackendV6Data":{"VNI":1,"VtepMAC":"8e:5e:4e:3c:2b:1b"}}`
)

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestLeaseJSONMatchesFlannelAllFamilies(t *testing.T) {
	mac4, mac6 := mustMAC(t, "8e:5e:4e:3c:2b:1a"), mustMAC(t, "8e:5e:4e:3c:2b:1b")
	pub4, pub6 := netip.MustParseAddr("192.168.8.1"), netip.MustParseAddr("fd00:8::1")

	b, err := MarshalLeaseAttrs(LeaseAttrs{PublicIP: netip.MustParseAddr("1.2.3.4")})
	if err != nil || string(b) != flannelBareLease {
		t.Fatalf("bare lease: %s %v\nwant %s", b, err, flannelBareLease)
	}

	for _, tc := range []struct {
		name       string
		pub4, pub6 netip.Addr
		want       string
	}{
		{"IPv4 only", pub4, netip.Addr{}, goldenLease},
		{"dual-stack", pub4, pub6, flannelDualLease},
		{"IPv6 only", netip.Addr{}, pub6, flannelV6OnlyLease},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := NewDualVXLANAttrs(tc.pub4, tc.pub6, 1, mac4, mac6)
			if err != nil {
				t.Fatal(err)
			}
			b, err := MarshalLeaseAttrs(a)
			if err != nil || string(b) != tc.want {
				t.Fatalf("marshal: %v\n got %s\nwant %s", err, b, tc.want)
			}
			// flannel's bytes decode to the same attrs and re-encode to the
			// same bytes.
			back, err := DecodeLeaseAttrs([]byte(tc.want))
			if err != nil {
				t.Fatal(err)
			}
			if back.PublicIP != tc.pub4 || back.PublicIPv6 != tc.pub6 {
				t.Fatalf("decoded %+v", back)
			}
			again, err := MarshalLeaseAttrs(back)
			if err != nil || string(again) != tc.want {
				t.Fatalf("re-marshal: %s %v", again, err)
			}
			if tc.pub6.IsValid() {
				d, err := ParseVXLANData(back.BackendV6Data)
				if err != nil || d.VtepMAC.String() != mac6.String() || d.VNI != 1 {
					t.Fatalf("BackendV6Data %+v %v", d, err)
				}
			}
		})
	}
	// The IPv4-only attrs are NewVXLANAttrs' exactly.
	a, _ := NewVXLANAttrs(pub4, 1, mac4)
	d, _ := NewDualVXLANAttrs(pub4, netip.Addr{}, 1, mac4, nil)
	if string(a.BackendData) != string(d.BackendData) || a.PublicIP != d.PublicIP || d.BackendV6Data != nil {
		t.Fatalf("%+v != %+v", a, d)
	}
}

func TestNewDualVXLANAttrsErrors(t *testing.T) {
	mac := mustMAC(t, "8e:5e:4e:3c:2b:1a")
	pub4, pub6 := netip.MustParseAddr("192.168.8.1"), netip.MustParseAddr("fd00:8::1")
	for _, tc := range []struct {
		name       string
		pub4, pub6 netip.Addr
		mac4, mac6 net.HardwareAddr
		is         error
	}{
		{"no family", netip.Addr{}, netip.Addr{}, mac, mac, ErrPublicIP},
		{"IPv4 address as PublicIPv6", pub4, pub4, mac, mac, ErrPublicIP},
		{"IPv6 address as PublicIP", pub6, pub6, mac, mac, ErrPublicIP},
		{"IPv4-mapped PublicIPv6", pub4, netip.MustParseAddr("::ffff:192.168.8.1"), mac, mac, ErrPublicIP},
		{"multicast PublicIPv6", pub4, netip.MustParseAddr("ff02::1"), mac, mac, ErrPublicIP},
		{"no IPv6 VtepMAC", pub4, pub6, mac, nil, ErrVtepMAC},
		{"no IPv4 VtepMAC", pub4, pub6, nil, mac, ErrVtepMAC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewDualVXLANAttrs(tc.pub4, tc.pub6, 1, tc.mac4, tc.mac6); !errors.Is(err, tc.is) {
				t.Fatalf("got %v, want %v", err, tc.is)
			}
		})
	}
	for _, a := range []LeaseAttrs{
		{},                                 // neither family
		{PublicIP: pub6},                   // IPv6 in the IPv4 field
		{PublicIP: pub4, PublicIPv6: pub4}, // IPv4 in the IPv6 field
		{PublicIPv6: netip.MustParseAddr("fe80::1%eth0")},
	} {
		if _, err := MarshalLeaseAttrs(a); !errors.Is(err, ErrPublicIP) {
			t.Errorf("MarshalLeaseAttrs(%+v) = %v, want ErrPublicIP", a, err)
		}
	}
}

func TestDecodeLeaseAttrs(t *testing.T) {
	// Leases as flannel nodes of each vintage write them.
	for _, v := range []string{
		goldenLease, flannelDualLease, flannelV6OnlyLease, flannelBareLease,
		`{"PublicIP":"10.0.0.2","BackendType":"vxlan","BackendData":{"VtepMAC":"8e:5e:4e:3c:2b:1a","VNI":1}}`,
		`{"PublicIPv6":"fd00::2","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"8e:5e:4e:3c:2b:1b"}}`,
	} {
		if _, err := DecodeLeaseAttrs([]byte(v)); err != nil {
			t.Errorf("%s: %v", v, err)
		}
	}
	for v, is := range map[string]error{
		`{"PublicIP":"0.0.0.0","PublicIPv6":null}`:         ErrPublicIP, // no family at all
		`{"PublicIPv6":null}`:                              ErrPublicIP,
		`{"PublicIP":"10.0.0.2","PublicIPv6":"10.0.0.3"}`:  ErrPublicIP,
		`{"PublicIP":"10.0.0.2","PublicIPv6":"::"}`:        ErrPublicIP,
		`{"PublicIP":"10.0.0.2","PublicIPv6":"ff02::1"}`:   ErrPublicIP,
		`{"PublicIP":"10.0.0.2","PublicIPv6":"fe80::1%2"}`: ErrPublicIP,
		`{"PublicIP":"fd00::1","PublicIPv6":"fd00::2"}`:    ErrPublicIP,
		`{"PublicIP":"224.0.0.1","PublicIPv6":"fd00::2"}`:  ErrPublicIP,
		`{"PublicIP":"10.0.0.2","PublicIPv6":7}`:           ErrLeaseJSON,
		`{"PublicIP":"10.0.0.2"`:                           ErrLeaseJSON,
	} {
		if _, err := DecodeLeaseAttrs([]byte(v)); !errors.Is(err, is) {
			t.Errorf("%s: got %v, want %v", v, err, is)
		}
	}
}

func TestSubnetKeyDual(t *testing.T) {
	pfx := netip.MustParsePrefix
	for _, tc := range []struct {
		v4, v6 string
		key    string
	}{
		{"10.5.72.0/24", "fc00:10:244:1::/64", "10.5.72.0-24&fc00:10:244:1::-64"},
		// flannel's pkg/subnet TestSubnetNodev6 key.
		{"10.12.13.0/24", "fd00:12:13::/56", "10.12.13.0-24&fd00:12:13::-56"},
		{"10.12.13.0/24", "", "10.12.13.0-24"},
		// IPv6-only: flannel's MakeSubnetKey of an empty IP4Net.
		{"", "fc00:10:244:1::/64", "0.0.0.0-0&fc00:10:244:1::-64"},
		{"", "2001:db8:0:1:1::/80", "0.0.0.0-0&2001:db8:0:1:1::-80"},
	} {
		var v4, v6 netip.Prefix
		if tc.v4 != "" {
			v4 = pfx(tc.v4)
		}
		if tc.v6 != "" {
			v6 = pfx(tc.v6)
		}
		if got := SubnetKeyDual(v4, v6); got != tc.key {
			t.Errorf("SubnetKeyDual(%v, %v) = %q, want %q", v4, v6, got, tc.key)
		}
		g4, g6, err := ParseSubnetKey(tc.key)
		if err != nil || g4 != v4 || g6 != v6 {
			t.Errorf("ParseSubnetKey(%q) = %v, %v, %v", tc.key, g4, g6, err)
		}
	}
	if k := LeaseKeyDual("", netip.Prefix{}, pfx("fc00::/64")); k != "/coreos.com/network/subnets/0.0.0.0-0&fc00::-64" {
		t.Fatal(k)
	}

	for _, k := range []string{
		// flannel's TestSubnetNodeInvalid keys.
		"10", "10.12.13.0", "10.12.13-24", "10.12.13.300-24", "10.12.13.0-24hi", "&2001::-56",
		"10.12.13.0-24&:12:13:-56", "10.12.13.0-24&20011::-56", "10.12.13.0-24&2001-56",
		"10.12.13.0-24&2001::", "10.12.13.0-24&2001::-56hi",
		// Forms flannel never writes.
		"10.12.13.0-24&FD00:12:13::-56", "10.12.13.0-24&fd00:12:13:0::-56", "10.12.13.0-24&fd00:0012:13::-56",
		"10.12.13.0-24&fd00:12:13::-056", "10.12.13.0-24&fd00:12:13::-129", "10.12.13.0-24&fd00:12:13::1-56",
		"10.12.13.0-24&fe80::%eth0-64", "10.12.13.0-24&::ffff:10.0.0.0-120", "10.12.13.0-24&::10.0.0.0-120",
		"0.0.0.0-0", "0.0.0.0-0&", "10.12.13.0-24&fc00::-64&fd00::-64",
	} {
		if _, _, err := ParseSubnetKey(k); !errors.Is(err, ErrLeaseKey) {
			t.Errorf("ParseSubnetKey(%q) = %v, want ErrLeaseKey", k, err)
		}
	}
}

const (
	dualConfig   = `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:10:244::/48","Backend":{"Type":"vxlan"}}`
	v6OnlyConfig = `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:10:244::/48","Backend":{"Type":"vxlan"}}`
)

func mustConfig(t *testing.T, s string) *NetworkConfig {
	t.Helper()
	c, err := ParseConfig([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dualValue is a flannel-shaped lease value; empty ip4 or ip6 leaves that
// family's fields out as flannel does.
func dualValue(ip4, ip6, mac4, mac6 string) string {
	v := `{"PublicIP":"0.0.0.0"`
	if ip4 != "" {
		v = `{"PublicIP":"` + ip4 + `"`
	}
	if ip6 != "" {
		v += `,"PublicIPv6":"` + ip6 + `"`
	} else {
		v += `,"PublicIPv6":null`
	}
	v += `,"BackendType":"vxlan"`
	if ip4 != "" {
		v += `,"BackendData":{"VNI":1,"VtepMAC":"` + mac4 + `"}`
	}
	if ip6 != "" {
		v += `,"BackendV6Data":{"VNI":1,"VtepMAC":"` + mac6 + `"}`
	}
	return v + "}"
}

func TestParseLeaseDualStack(t *testing.T) {
	c := mustConfig(t, dualConfig)
	good := dualValue("192.168.8.2", "fd00:8::2", "8e:00:00:00:00:02", "8e:00:00:00:06:02")

	l, err := c.ParseLease(pfx, lease("10.5.72.0-24&fc00:10:244:1::-64", good, 2))
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet.String() != "10.5.72.0/24" || l.IPv6Subnet.String() != "fc00:10:244:1::/64" || !l.HasIPv4() || !l.HasIPv6() ||
		l.PublicIP().String() != "192.168.8.2" || l.PublicIPv6().String() != "fd00:8::2" ||
		l.VXLAN.VtepMAC.String() != "8e:00:00:00:00:02" || l.VXLANv6.VtepMAC.String() != "8e:00:00:00:06:02" {
		t.Fatalf("%+v", l)
	}

	// A node without IPv6 (an IPv4-only flannel or Weft node) stays a
	// valid IPv4 peer in a dual-stack network, as flannel treats it.
	l, err = c.ParseLease(pfx, lease("10.5.73.0-24", value("192.168.8.3", "8e:00:00:00:00:03"), 3))
	if err != nil || !l.HasIPv4() || l.HasIPv6() || l.VXLANv6.VtepMAC != nil {
		t.Fatalf("%+v %v", l, err)
	}

	// Weft's v6-in-v4: an IPv6 subnet without PublicIPv6 is reached over
	// the IPv4 underlay with the IPv4 VTEP (ipv6-contract.md).
	l, err = c.ParseLease(pfx, lease("10.5.74.0-24&fc00:10:244:4::-64", value("192.168.8.4", "8e:00:00:00:00:04"), 4))
	if err != nil || !l.HasIPv4() || !l.HasIPv6() || l.PublicIPv6().IsValid() || l.VXLANv6.VtepMAC.String() != "8e:00:00:00:00:04" {
		t.Fatalf("v6-in-v4 lease: %+v %v", l, err)
	}

	k := "10.5.72.0-24&fc00:10:244:1::-64"
	cases := []struct {
		name string
		kv   KV
		is   error
	}{
		{"IPv6-only key", lease("0.0.0.0-0&fc00:10:244:1::-64", good, 2), ErrLeaseFamily},
		{"IPv6 subnet outside IPv6Network", lease("10.5.72.0-24&fc00:99::-64", good, 2), ErrOutsideNetwork},
		{"IPv6 subnet wider than IPv6Network", lease("10.5.72.0-24&fc00::-32", good, 2), ErrOutsideNetwork},
		{"IPv6 subnet of the wrong size", lease("10.5.72.0-24&fc00:10:244:100::-56", good, 2), ErrSubnetSize},
		{"IPv6 subnet in IPv4 form", lease("10.5.72.0-24&10.5.0.0-24", good, 2), ErrLeaseKey},
		{"PublicIPv6 null, BackendV6Data garbage", lease(k, `{"PublicIP":"192.168.8.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"8e:00:00:00:00:02"},"BackendV6Data":{"VNI":1,"VtepMAC":"nope"}}`, 2), ErrVtepMAC},
		{"PublicIPv6 an IPv4 address", lease(k, dualValue("192.168.8.2", "192.168.8.2", "8e:00:00:00:00:02", "8e:00:00:00:06:02"), 2), ErrPublicIP},
		{"PublicIPv6 IPv4-mapped", lease(k, dualValue("192.168.8.2", "::ffff:192.168.8.2", "8e:00:00:00:00:02", "8e:00:00:00:06:02"), 2), ErrPublicIP},
		{"PublicIPv6 multicast", lease(k, dualValue("192.168.8.2", "ff02::2", "8e:00:00:00:00:02", "8e:00:00:00:06:02"), 2), ErrPublicIP},
		{"PublicIPv6 garbage", lease(k, dualValue("192.168.8.2", "fd00:::2", "8e:00:00:00:00:02", "8e:00:00:00:06:02"), 2), ErrPublicIP},
		{"PublicIP 0.0.0.0 with an IPv4 subnet", lease(k, dualValue("", "fd00:8::2", "", "8e:00:00:00:06:02"), 2), ErrPublicIP},
		{"BackendV6Data missing", lease(k, `{"PublicIP":"192.168.8.2","PublicIPv6":"fd00:8::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"8e:00:00:00:00:02"}}`, 2), ErrLeaseJSON},
		{"BackendV6Data null", lease(k, `{"PublicIP":"192.168.8.2","PublicIPv6":"fd00:8::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"8e:00:00:00:00:02"},"BackendV6Data":null}`, 2), ErrLeaseJSON},
		{"IPv6 VtepMAC multicast", lease(k, dualValue("192.168.8.2", "fd00:8::2", "8e:00:00:00:00:02", "33:33:00:00:00:01"), 2), ErrVtepMAC},
		{"IPv6 VtepMAC garbage", lease(k, dualValue("192.168.8.2", "fd00:8::2", "8e:00:00:00:00:02", "nope"), 2), ErrVtepMAC},
		{"IPv4 VtepMAC missing beside a good IPv6 one", lease(k, `{"PublicIP":"192.168.8.2","PublicIPv6":"fd00:8::2","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"8e:00:00:00:06:02"}}`, 2), ErrLeaseJSON},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.ParseLease(pfx, tc.kv)
			var le *LeaseError
			if !errors.As(err, &le) || !errors.Is(err, tc.is) {
				t.Fatalf("got %v, want a *LeaseError wrapping %v", err, tc.is)
			}
			if le.Key != tc.kv.Key || !strings.Contains(err.Error(), tc.kv.Key) {
				t.Fatalf("error %q does not name key %s", err, tc.kv.Key)
			}
			// A key that parsed still tells which subnets it blocks.
			if tc.is != ErrLeaseKey && !le.IPv6Subnet.IsValid() {
				t.Fatalf("LeaseError.IPv6Subnet not set: %+v", le)
			}
		})
	}
}

func TestParseLeaseIPv6Only(t *testing.T) {
	c := mustConfig(t, v6OnlyConfig)
	l, err := c.ParseLease(pfx, lease("0.0.0.0-0&fc00:10:244:1::-64", flannelV6OnlyLease, 2))
	if err != nil {
		t.Fatal(err)
	}
	if l.HasIPv4() || l.Subnet.IsValid() || l.PublicIP().IsValid() || !l.HasIPv6() ||
		l.IPv6Subnet.String() != "fc00:10:244:1::/64" || l.PublicIPv6().String() != "fd00:8::1" ||
		l.VXLANv6.VtepMAC.String() != "8e:5e:4e:3c:2b:1b" {
		t.Fatalf("%+v", l)
	}
	// A dual-stack node's lease serves an IPv6-only network through its
	// IPv6 half; the IPv4 half is not looked at.
	l, err = c.ParseLease(pfx, lease("10.99.0.0-24&fc00:10:244:2::-64", flannelDualLease, 3))
	if err != nil || l.HasIPv4() || l.IPv6Subnet.String() != "fc00:10:244:2::/64" {
		t.Fatalf("%+v %v", l, err)
	}
	for name, kv := range map[string]KV{
		"IPv4-only key":      lease("10.5.1.0-24", goldenLease, 4),
		"no PublicIPv6":      lease("0.0.0.0-0&fc00:10:244:3::-64", `{"PublicIP":"0.0.0.0","PublicIPv6":null,"BackendType":"vxlan"}`, 4),
		"outside":            lease("0.0.0.0-0&fc00:11::-64", flannelV6OnlyLease, 4),
		"wrong size":         lease("0.0.0.0-0&fc00:10:244:3::-80", flannelV6OnlyLease, 4),
		"no BackendV6Data":   lease("0.0.0.0-0&fc00:10:244:3::-64", `{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:8::1","BackendType":"vxlan"}`, 4),
		"not vxlan":          lease("0.0.0.0-0&fc00:10:244:3::-64", `{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:8::1","BackendType":"host-gw"}`, 4),
		"empty IPv4 alone":   lease("0.0.0.0-0", flannelV6OnlyLease, 4),
		"non-canonical IPv6": lease("0.0.0.0-0&fc00:10:244:3:0::-64", flannelV6OnlyLease, 4),
	} {
		var le *LeaseError
		if _, err := c.ParseLease(pfx, kv); !errors.As(err, &le) {
			t.Errorf("%s: got %v, want a *LeaseError", name, err)
		}
	}
	// Without IPv6 in the network, an IPv6-only key is of no use, and its
	// "0.0.0.0-0" must not read as 0.0.0.0/0: an allocator marking that
	// used would find no free IPv4 subnet at all.
	_, err = testConfig(t).ParseLease(pfx, lease("0.0.0.0-0&fc00:10:244:1::-64", flannelV6OnlyLease, 2))
	var le *LeaseError
	if !errors.Is(err, ErrLeaseFamily) || !errors.As(err, &le) || le.Subnet.IsValid() || le.IPv6Subnet.String() != "fc00:10:244:1::/64" {
		t.Fatalf("got %v (%+v), want ErrLeaseFamily without an IPv4 subnet", err, le)
	}
	// Nor does an IPv4-only network validate or expose a dual-stack key's
	// IPv6 half.
	l, err = testConfig(t).ParseLease(pfx, lease("10.244.1.0-24&fd00::-64", value("192.168.8.9", "8e:00:00:00:00:09"), 2))
	if err != nil || l.HasIPv6() || l.IPv6Subnet.IsValid() {
		t.Fatalf("%+v %v", l, err)
	}
}

func TestParseLeasesOverlapDualStack(t *testing.T) {
	c := mustConfig(t, dualConfig)
	v := func(n string) string {
		return dualValue("192.168.8."+n, "fd00:8::"+n, "8e:00:00:00:00:0"+n, "8e:00:00:00:06:0"+n)
	}
	kvs := []KV{
		lease("10.5.1.0-24&fc00:10:244:1::-64", v("1"), 1),
		// Same IPv6 subnet, other IPv4 one: the newer loses, whole.
		lease("10.5.2.0-24&fc00:10:244:1::-64", v("2"), 2),
		// Same IPv4 subnet, no IPv6: the newer loses.
		lease("10.5.1.0-24", value("192.168.8.3", "8e:00:00:00:00:03"), 3),
		lease("10.5.4.0-24&fc00:10:244:4::-64", v("4"), 4),
		// An IPv4-only node beside them.
		lease("10.5.5.0-24", value("192.168.8.5", "8e:00:00:00:00:05"), 5),
		// A /56 over the /64s of 10.5.1.0 and 10.5.4.0; its IPv4 half is free.
		lease("10.5.6.0-24&fc00:10:244::-56", v("6"), 6),
		// Bad JSON at a key whose halves overlap nothing.
		lease("10.5.7.0-24&fc00:10:244:7::-64", "{", 7),
	}
	valid, invalid := c.ParseLeases(pfx, kvs)
	var keys []string
	for _, l := range valid {
		keys = append(keys, strings.TrimPrefix(l.Key, pfx+"/subnets/"))
	}
	if got := strings.Join(keys, " "); got != "10.5.1.0-24&fc00:10:244:1::-64 10.5.4.0-24&fc00:10:244:4::-64 10.5.5.0-24" {
		t.Fatalf("valid = %s", got)
	}
	want := map[string][]error{
		"10.5.2.0-24&fc00:10:244:1::-64": {ErrOverlap},
		"10.5.1.0-24":                    {ErrOverlap},
		"10.5.6.0-24&fc00:10:244::-56":   {ErrSubnetSize, ErrOverlap},
		"10.5.7.0-24&fc00:10:244:7::-64": {ErrLeaseJSON},
	}
	if len(invalid) != len(want) {
		t.Fatalf("invalid = %v", invalid)
	}
	for _, e := range invalid {
		name := strings.TrimPrefix(e.Key, pfx+"/subnets/")
		for _, is := range want[name] {
			if !errors.Is(e, is) {
				t.Errorf("%s: %v does not wrap %v", name, e, is)
			}
		}
		if name == "10.5.7.0-24&fc00:10:244:7::-64" && errors.Is(e, ErrOverlap) {
			t.Errorf("%s: %v", name, e)
		}
		if name == "10.5.2.0-24&fc00:10:244:1::-64" && !strings.Contains(e.Error(), "fc00:10:244:1::/64 is already leased") {
			t.Errorf("%s: %v does not name the IPv6 subnet", name, e)
		}
	}
}

func TestParseLeasesIPv6OnlyNoFalseOverlaps(t *testing.T) {
	// Every IPv6-only lease has a zero IPv4 subnet; that must not make
	// them overlap each other.
	c := mustConfig(t, v6OnlyConfig)
	val := func(n string) string { return dualValue("", "fd00:8::"+n, "", "8e:00:00:00:06:0"+n) }
	valid, invalid := c.ParseLeases(pfx, []KV{
		lease("0.0.0.0-0&fc00:10:244:1::-64", val("1"), 1),
		lease("0.0.0.0-0&fc00:10:244:2::-64", val("2"), 2),
		lease("10.5.9.0-24&fc00:10:244:3::-64", dualValue("192.168.8.3", "fd00:8::3", "8e:00:00:00:00:03", "8e:00:00:00:06:03"), 3),
		// The same IPv6 subnet under a dual-stack key, newer: it loses.
		lease("10.5.1.0-24&fc00:10:244:1::-64", dualValue("192.168.8.4", "fd00:8::4", "8e:00:00:00:00:04", "8e:00:00:00:06:04"), 4),
	})
	if len(valid) != 3 || len(invalid) != 1 || !errors.Is(invalid[0], ErrOverlap) {
		t.Fatalf("valid %d, invalid %v", len(valid), invalid)
	}
}
