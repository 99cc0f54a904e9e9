package flannel

import (
	"errors"
	"net/netip"
	"testing"
)

func TestSubnetEnv(t *testing.T) {
	pfx := netip.MustParsePrefix
	for _, tc := range []struct {
		name string
		env  SubnetEnv
		want string
	}{
		// flannel's Documentation/configuration.md dual-stack example.
		{"dual-stack",
			SubnetEnv{Network: pfx("10.42.0.0/16"), Subnet: pfx("10.42.0.0/24"),
				IPv6Network: pfx("2001:cafe:42::/56"), IPv6Subnet: pfx("2001:cafe:42::/64"), MTU: 1450, IPMasq: true},
			"FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\n" +
				"FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n" +
				"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"},
		// What cmd/weftd writes today.
		{"IPv4 only",
			SubnetEnv{Network: pfx("10.244.0.0/16"), Subnet: pfx("10.244.3.0/24"), MTU: 1450},
			"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"},
		{"IPv6 only",
			SubnetEnv{IPv6Network: pfx("fc00:10:244::/48"), IPv6Subnet: pfx("fc00:10:244:7::/64"), MTU: 1430},
			"FLANNEL_IPV6_NETWORK=fc00:10:244::/48\nFLANNEL_IPV6_SUBNET=fc00:10:244:7::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.env.Marshal()
			if err != nil || string(b) != tc.want {
				t.Fatalf("Marshal: %v\n got %q\nwant %q", err, b, tc.want)
			}
			back, err := ParseSubnetEnv(b)
			if err != nil || back != tc.env {
				t.Fatalf("ParseSubnetEnv: %+v %v", back, err)
			}
		})
	}

	// Order, comments and foreign keys do not matter when reading.
	e, err := ParseSubnetEnv([]byte("# written by hand\nFLANNEL_MTU=1400\nOTHER=1\n\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_IPV6_NETWORK=fc00::/48\n"))
	if err != nil || e.IPv6Subnet != pfx("fc00::/64") || e.MTU != 1400 || e.Network.IsValid() {
		t.Fatalf("%+v %v", e, err)
	}

	for name, s := range map[string]string{
		"empty":                       "",
		"no MTU":                      "FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.1.1/24\n",
		"no family":                   "FLANNEL_MTU=1450\n",
		"IPv6 network without subnet": "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_MTU=1450\n",
		"IPv6 subnet outside":         "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fd00::1/64\nFLANNEL_MTU=1450\n",
		"IPv4 in the IPv6 keys":       "FLANNEL_IPV6_NETWORK=10.0.0.0/16\nFLANNEL_IPV6_SUBNET=10.0.1.1/24\nFLANNEL_MTU=1450\n",
		"IPv6 in the IPv4 keys":       "FLANNEL_NETWORK=fc00::/48\nFLANNEL_SUBNET=fc00::1/64\nFLANNEL_MTU=1450\n",
		"garbage subnet":              "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1\nFLANNEL_MTU=1450\n",
		"garbage MTU":                 "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=big\n",
		"twice":                       "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\n",
		"no =":                        "FLANNEL_MTU 1450\n",
	} {
		if _, err := ParseSubnetEnv([]byte(s)); !errors.Is(err, ErrSubnetEnv) {
			t.Errorf("%s: got %v, want ErrSubnetEnv", name, err)
		}
	}
	for name, e := range map[string]SubnetEnv{
		"no MTU":     {IPv6Network: pfx("fc00::/48"), IPv6Subnet: pfx("fc00::/64")},
		"no network": {IPv6Subnet: pfx("fc00::/64"), MTU: 1450},
		"/128":       {IPv6Network: pfx("fc00::/48"), IPv6Subnet: pfx("fc00::/128"), MTU: 1450},
		"nothing":    {MTU: 1450},
	} {
		if _, err := e.Marshal(); !errors.Is(err, ErrSubnetEnv) {
			t.Errorf("%s: got %v, want ErrSubnetEnv", name, err)
		}
	}
}
