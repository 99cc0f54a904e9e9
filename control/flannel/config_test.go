package flannel

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	type want struct {
		network       string
		subnetLen     int
		min, max      string
		vni           uint32
		port          uint16
		directRouting bool
	}
	ok := []struct {
		name string
		json string
		want want
	}{
		{"design doc example",
			`{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472,"DirectRouting":false}}`,
			want{"10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0", 1, 8472, false}},
		{"flannel defaults: SubnetLen 24, VNI 1, port 8472",
			`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`,
			want{"10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0", 1, 8472, false}},
		{"small network gets prefix+2",
			`{"Network":"10.5.0.0/24","Backend":{"Type":"vxlan"}}`,
			want{"10.5.0.0/24", 26, "10.5.0.64", "10.5.0.192", 1, 8472, false}},
		{"/22 still gets /24",
			`{"Network":"10.5.0.0/22","Backend":{"Type":"vxlan"}}`,
			want{"10.5.0.0/22", 24, "10.5.1.0", "10.5.3.0", 1, 8472, false}},
		{"explicit range, VNI, port, DirectRouting, MacPrefix ignored, lower-case keys",
			`{"network":"10.1.0.0/16","subnetLen":26,"SubnetMin":"10.1.4.0","SubnetMax":"10.1.8.192",
			  "backend":{"type":"vxlan","vni":4096,"port":4789,"directRouting":true,"MacPrefix":"0E-2A"}}`,
			want{"10.1.0.0/16", 26, "10.1.4.0", "10.1.8.192", 4096, 4789, true}},
		{"host bits in Network are masked, as net.ParseCIDR does",
			`{"Network":"10.244.3.7/16","Backend":{"Type":"vxlan"}}`,
			want{"10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0", 1, 8472, false}},
		{"Port 0 is flannel's kernel default",
			`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":0,"VNI":0}}`,
			want{"10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0", 0, 8472, false}},
		{"largest VNI",
			`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777215}}`,
			want{"10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0", 1<<24 - 1, 8472, false}},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			got := want{c.Network.String(), c.SubnetLen, c.SubnetMin.String(), c.SubnetMax.String(),
				c.Backend.VNI, c.Backend.Port, c.Backend.DirectRouting}
			if got != tc.want {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}

	bad := []struct {
		name    string
		json    string
		is      error
		mention string
	}{
		{"not JSON", `{"Network":`, ErrConfigJSON, "malformed"},
		{"JSON of the wrong type", `{"Network":10}`, ErrConfigJSON, "malformed"},
		{"no Network", `{"Backend":{"Type":"vxlan"}}`, ErrNetwork, "missing"},
		{"garbage Network", `{"Network":"10.244.0.0","Backend":{"Type":"vxlan"}}`, ErrNetwork, "10.244.0.0"},
		{"IPv6 Network", `{"Network":"fd00::/48","Backend":{"Type":"vxlan"}}`, ErrNetwork, "IPv4"},
		{"empty Network", `{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}`, ErrNetwork, "empty"},
		{"network too small for defaults", `{"Network":"10.0.0.0/29","Backend":{"Type":"vxlan"}}`, ErrNetwork, "/28"},
		{"IPv4 disabled", `{"EnableIPv4":false,"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}`, ErrNetwork, "EnableIPv4"},
		{"SubnetLen 31", `{"Network":"10.0.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}`, ErrSubnetLen, "31"},
		{"SubnetLen equals network", `{"Network":"10.0.0.0/16","SubnetLen":16,"Backend":{"Type":"vxlan"}}`, ErrSubnetLen, "at least 18"},
		{"SubnetLen shorter than network", `{"Network":"10.0.0.0/16","SubnetLen":8,"Backend":{"Type":"vxlan"}}`, ErrSubnetLen, "at least 18"},
		{"SubnetLen negative", `{"Network":"10.0.0.0/16","SubnetLen":-1,"Backend":{"Type":"vxlan"}}`, ErrSubnetLen, "-1"},
		{"SubnetMin outside", `{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0","Backend":{"Type":"vxlan"}}`, ErrSubnetRange, "outside"},
		{"SubnetMax unaligned", `{"Network":"10.0.0.0/16","SubnetMax":"10.0.9.1","Backend":{"Type":"vxlan"}}`, ErrSubnetRange, "boundary"},
		{"SubnetMin above SubnetMax", `{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.8.0","Backend":{"Type":"vxlan"}}`, ErrSubnetRange, "above"},
		{"no Backend is udp", `{"Network":"10.0.0.0/16"}`, ErrBackendType, `"udp"`},
		{"host-gw", `{"Network":"10.0.0.0/16","Backend":{"Type":"host-gw"}}`, ErrBackendType, `"host-gw"`},
		{"udp", `{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}`, ErrBackendType, `"udp"`},
		{"wireguard", `{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard"}}`, ErrBackendType, `"wireguard"`},
		{"Backend without Type", `{"Network":"10.0.0.0/16","Backend":{"VNI":2}}`, ErrBackendType, `""`},
		{"Backend not an object", `{"Network":"10.0.0.0/16","Backend":"vxlan"}`, ErrConfigJSON, "Backend"},
		{"VNI too big", `{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}`, ErrVNI, "24 bits"},
		{"VNI negative", `{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":-1}}`, ErrVNI, "24 bits"},
		{"port too big", `{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":65536}}`, ErrPort, "65536"},
		{"port negative", `{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":-5}}`, ErrPort, "-5"},
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

func TestInRangeAndFreeSubnets(t *testing.T) {
	c, err := ParseConfig([]byte(`{"Network":"10.5.0.0/26","SubnetLen":29,"Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	pfx := netip.MustParsePrefix
	for p, want := range map[string]bool{
		"10.5.0.0/29":  false, // the skipped first subnet
		"10.5.0.8/29":  true,
		"10.5.0.56/29": true,
		"10.5.0.8/28":  false,
		"10.5.0.64/29": false,
	} {
		if got := c.InRange(pfx(p)); got != want {
			t.Errorf("InRange(%s) = %v, want %v", p, got, want)
		}
	}
	free := c.FreeSubnets([]netip.Prefix{pfx("10.5.0.8/29"), pfx("10.5.0.32/28"), pfx("10.5.0.17/32")}, 100)
	var got []string
	for _, p := range free {
		got = append(got, p.String())
	}
	if want := "10.5.0.24/29 10.5.0.48/29 10.5.0.56/29"; strings.Join(got, " ") != want {
		t.Fatalf("FreeSubnets = %v, want %s", got, want)
	}
	if n := len(c.FreeSubnets(nil, 3)); n != 3 {
		t.Fatalf("limit ignored: %d", n)
	}
}

func TestKeys(t *testing.T) {
	if got := ConfigKey(""); got != "/coreos.com/network/config" {
		t.Fatal(got)
	}
	if got := LeaseKey("/x/", netip.MustParsePrefix("10.244.1.0/24")); got != "/x/subnets/10.244.1.0-24" {
		t.Fatal(got)
	}
}
