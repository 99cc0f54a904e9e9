package flannel

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseConfigIPv6(t *testing.T) {
	type want struct {
		v4, v6         bool
		network        string // "" when IPv4 is off
		ipv6Network    string
		ipv6SubnetLen  int
		ipv6Min, v6Max string
	}
	ok := []struct {
		name string
		json string
		want want
	}{
		// flannel's pkg/subnet TestIPv6ConfigDefaults, with a Backend.
		{"IPv6-only defaults as flannel's test",
			`{ "enableIPv6": true, "ipv6Network": "fc00::/48", "enableIPv4": false, "Backend":{"Type":"vxlan"} }`,
			want{false, true, "", "fc00::/48", 64, "fc00:0:0:1::", "fc00:0:0:ffff::"}},
		// flannel's TestIPv6ConfigOverrides.
		{"IPv6-only overrides as flannel's test",
			`{ "EnableIPv6": true, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:1::", "IPv6SubnetMax": "fc00:0:0:f::", "IPv6SubnetLen": 124, "enableIPv4": false, "Backend":{"Type":"vxlan"} }`,
			want{false, true, "", "fc00::/48", 124, "fc00:0:0:1::", "fc00:0:0:f::"}},
		{"dual-stack, the docs' example network",
			`{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}`,
			want{true, true, "10.42.0.0/16", "2001:cafe:42::/56", 64, "2001:cafe:42:1::", "2001:cafe:42:ff::"}},
		{"EnableIPv4 true is the default",
			`{"EnableIPv4":true,"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/62","Backend":{"Type":"vxlan"}}`,
			want{true, true, "10.42.0.0/16", "fc00::/62", 64, "fc00:0:0:1::", "fc00:0:0:3::"}},
		{"small IPv6Network gets prefix+2",
			`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/120","Backend":{"Type":"vxlan"}}`,
			want{false, true, "", "fc00::/120", 122, "fc00::40", "fc00::c0"}},
		{"smallest IPv6Network, host bits masked",
			`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::5/124","Backend":{"Type":"vxlan"}}`,
			want{false, true, "", "fc00::/124", 126, "fc00::4", "fc00::c"}},
		{"IPv6 fields ignored while EnableIPv6 is off, as flannel does",
			`{"Network":"10.42.0.0/16","IPv6Network":"garbage","IPv6SubnetLen":999,"Backend":{"Type":"vxlan"}}`,
			want{true, false, "10.42.0.0/16", "invalid Prefix", 0, "invalid IP", "invalid IP"}},
		{"IPv4 fields ignored while EnableIPv4 is off",
			`{"EnableIPv4":false,"Network":"10.0.0.0/30","SubnetLen":99,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}`,
			want{false, true, "", "fc00::/48", 64, "fc00:0:0:1::", "fc00:0:0:ffff::"}},
		{"the top of the address space",
			`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"ffff:ffff:ffff:ffff::/64","IPv6SubnetLen":66,"Backend":{"Type":"vxlan"}}`,
			want{false, true, "", "ffff:ffff:ffff:ffff::/64", 66, "ffff:ffff:ffff:ffff:4000::", "ffff:ffff:ffff:ffff:c000::"}},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			network := ""
			if c.Network.IsValid() {
				network = c.Network.String()
			}
			got := want{c.EnableIPv4, c.EnableIPv6, network, c.IPv6Network.String(), c.IPv6SubnetLen,
				c.IPv6SubnetMin.String(), c.IPv6SubnetMax.String()}
			if got != tc.want {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
			if !c.EnableIPv4 && (c.SubnetLen != 0 || c.SubnetMin.IsValid() || c.SubnetMax.IsValid()) {
				t.Fatalf("IPv4 fields set in an IPv6-only config: %+v", c)
			}
		})
	}

	bad := []struct {
		name    string
		json    string
		is      error
		mention string
	}{
		{"no family", `{"EnableIPv4":false,"Backend":{"Type":"vxlan"}}`, ErrNetwork, "no family"},
		{"IPv6 on without IPv6Network", `{"Network":"10.0.0.0/16","EnableIPv6":true,"Backend":{"Type":"vxlan"}}`, ErrIPv6Network, "missing"},
		{"IPv6-only still needs IPv6Network", `{"EnableIPv4":false,"EnableIPv6":true,"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}`, ErrIPv6Network, "missing"},
		{"dual-stack still needs Network", `{"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}`, ErrNetwork, "missing"},
		{"IPv4 CIDR as IPv6Network", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`, ErrIPv6Network, "not an IPv6 CIDR"},
		{"IPv4-mapped IPv6Network", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::ffff:10.0.0.0/104","Backend":{"Type":"vxlan"}}`, ErrIPv6Network, "not an IPv6 CIDR"},
		{"garbage IPv6Network", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::","Backend":{"Type":"vxlan"}}`, ErrIPv6Network, `"fc00::"`},
		{"empty IPv6Network", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::/0","Backend":{"Type":"vxlan"}}`, ErrIPv6Network, "empty"},
		{"IPv6Network too small", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/125","Backend":{"Type":"vxlan"}}`, ErrIPv6Network, "/124"},
		{"IPv6SubnetLen 127", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127,"Backend":{"Type":"vxlan"}}`, ErrIPv6SubnetLen, "127"},
		{"IPv6SubnetLen negative", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":-64,"Backend":{"Type":"vxlan"}}`, ErrIPv6SubnetLen, "-64"},
		{"IPv6SubnetLen too short", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":49,"Backend":{"Type":"vxlan"}}`, ErrIPv6SubnetLen, "at least 50"},
		{"IPv6SubnetMin outside", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc01::","Backend":{"Type":"vxlan"}}`, ErrIPv6SubnetRange, "outside"},
		{"IPv6SubnetMax unaligned", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMax":"fc00:0:0:9::1","Backend":{"Type":"vxlan"}}`, ErrIPv6SubnetRange, "boundary"},
		{"IPv6SubnetMin IPv4", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"10.0.0.0","Backend":{"Type":"vxlan"}}`, ErrIPv6SubnetRange, "not an IPv6 address"},
		{"IPv6SubnetMin above IPv6SubnetMax", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:9::","IPv6SubnetMax":"fc00:0:0:8::","Backend":{"Type":"vxlan"}}`, ErrIPv6SubnetRange, "above"},
		{"IPv6-only still checks the Backend", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}`, ErrBackendType, "host-gw"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.json))
			if !errors.Is(err, tc.is) {
				t.Fatalf("got %v, want %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.mention) || !strings.HasPrefix(err.Error(), "parse network config: ") {
				t.Fatalf("error %q does not start with the operation or does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestInRangeAndFreeIPv6Subnets(t *testing.T) {
	c := mustConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/120","IPv6SubnetLen":123,"Backend":{"Type":"vxlan"}}`)
	pfx := netip.MustParsePrefix
	for p, want := range map[string]bool{
		"fc00::/123":         false, // the skipped first subnet
		"fc00::20/123":       true,
		"fc00::e0/123":       true,
		"fc00::20/122":       false,
		"fc00::100/123":      false,
		"fc00::21/123":       false, // not masked
		"10.0.0.0/24":        false,
		"::ffff:0.0.0.0/123": false,
	} {
		if got := c.InRangeIPv6(pfx(p)); got != want {
			t.Errorf("InRangeIPv6(%s) = %v, want %v", p, got, want)
		}
	}
	// IPv4 prefixes in used are ignored; a /128 blocks its /123; a /122
	// blocks two.
	used := []netip.Prefix{pfx("fc00::20/123"), pfx("fc00::80/122"), pfx("fc00::41/128"), pfx("0.0.0.0/0")}
	if got := join(c.FreeIPv6Subnets(used, 100)); got != "fc00::60/123 fc00::c0/123 fc00::e0/123" {
		t.Fatalf("FreeIPv6Subnets = %s", got)
	}
	if n := len(c.FreeIPv6Subnets(nil, 3)); n != 3 {
		t.Fatalf("limit ignored: %d", n)
	}
	// The IPv4 side of an IPv6-only config is empty, not a panic.
	if c.InRange(pfx("10.0.0.0/24")) || c.FreeSubnets(nil, 10) != nil {
		t.Fatal("IPv4 allocation in an IPv6-only network")
	}
	// And the other way round.
	if v4 := testConfig(t); v4.InRangeIPv6(pfx("fc00::/64")) || v4.FreeIPv6Subnets(nil, 10) != nil {
		t.Fatal("IPv6 allocation in an IPv4-only network")
	}

	// The last subnet of the address space ends the walk without wrapping.
	top := mustConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124","Backend":{"Type":"vxlan"}}`)
	if got := join(top.FreeIPv6Subnets(nil, 100)); got != "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff4/126 ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff8/126 ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126" {
		t.Fatalf("top: %s", got)
	}

	// A /48 of /64s is 65535 subnets; the walk costs what is used, not
	// the range.
	big := mustConfig(t, dualConfig)
	free := big.FreeIPv6Subnets(big.FreeIPv6Subnets(nil, 5000), 2)
	if got := join(free); got != "fc00:10:244:1389::/64 fc00:10:244:138a::/64" {
		t.Fatalf("after 5000 used: %s", got)
	}
}

func join(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, " ")
}

func TestLeaseFitsAndOwnLease(t *testing.T) {
	pfx := netip.MustParsePrefix
	v4, v6, none := pfx("10.5.72.0/24"), pfx("fc00:10:244:1::/64"), netip.Prefix{}
	dual, v6only, v4only := mustConfig(t, dualConfig), mustConfig(t, v6OnlyConfig),
		mustConfig(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	for _, tc := range []struct {
		name   string
		c      *NetworkConfig
		v4, v6 netip.Prefix
		want   bool
	}{
		{"dual lease, dual network", dual, v4, v6, true},
		{"IPv4 lease after IPv6 was turned on", dual, v4, none, false},
		{"dual lease after IPv6 was turned off", v4only, v4, v6, false},
		{"IPv4 lease, IPv4 network", v4only, v4, none, true},
		{"IPv6 lease, IPv6-only network", v6only, none, v6, true},
		{"dual lease, IPv6-only network", v6only, v4, v6, false},
		{"IPv6 subnet of the wrong size", dual, v4, pfx("fc00:10:244:1::/80"), false},
		{"IPv6 first subnet (skipped)", dual, v4, pfx("fc00:10:244::/64"), false},
		{"IPv4 first subnet (skipped)", dual, pfx("10.5.0.0/24"), v6, false},
	} {
		if got := tc.c.LeaseFits(tc.v4, tc.v6); got != tc.want {
			t.Errorf("%s: LeaseFits = %v, want %v", tc.name, got, tc.want)
		}
	}

	pub4, pub6 := netip.MustParseAddr("192.168.8.1"), netip.MustParseAddr("fd00:8::1")
	mine, _ := DecodeLeaseAttrs([]byte(flannelDualLease))
	other6, _ := DecodeLeaseAttrs([]byte(`{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:8::2"}`))
	me6, _ := DecodeLeaseAttrs([]byte(flannelV6OnlyLease))
	if !dual.OwnLease(mine, pub4, pub6) || dual.OwnLease(mine, netip.MustParseAddr("192.168.8.2"), pub6) ||
		!v6only.OwnLease(me6, netip.Addr{}, pub6) || v6only.OwnLease(other6, netip.Addr{}, pub6) ||
		dual.OwnLease(me6, netip.Addr{}, pub6) {
		t.Fatal("OwnLease")
	}
	// Two IPv6-only nodes both have PublicIP 0.0.0.0 (zero): that is not
	// a match, unlike in flanneld's etcd manager.
	if v6only.OwnLease(other6, netip.Addr{}, pub6) || dual.OwnLease(other6, netip.Addr{}, netip.Addr{}) {
		t.Fatal("zero PublicIP matched")
	}
}
