package loader

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestSetupNodeIPv6 sets a node up dual-stack, then IPv6-only, then IPv4
// only, in a network namespace: weft0's addresses and cluster routes per
// family (ipv6-contract.md: host_ip6 = the IPv6 subnet's first address as a
// /128, a route for the IPv6 network via <subnet>::1 onlink), the node
// config's UnderlayIP6/HostIP6, and the pod MTU rule (70 bytes of overhead
// for IPv6 over an IPv6 underlay, 50 otherwise; one MTU, the smaller).
func TestSetupNodeIPv6(t *testing.T) {
	pin := testPinPath(t)
	inNS := testNS(t)
	d, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer d.Close()
	if err := inNS(func() error {
		out, err := exec.Command("ip", "-6", "addr", "add", "fd00:99::1/64", "dev", "ul0", "nodad").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	dual := testNodeConfig()
	dual.Decap = DecapTC
	dual.UnderlayIP6 = netip.MustParseAddr("fd00:99::1")
	dual.IPv6Network = netip.MustParsePrefix("fd10:244::/56")
	dual.IPv6Subnet = netip.MustParsePrefix("fd10:244:0:1::/64")
	v6only := dual
	v6only.Network, v6only.Subnet = netip.Prefix{}, netip.Prefix{}
	v4only := testNodeConfig()
	v4only.Decap = DecapTC
	v6in4 := dual
	v6in4.UnderlayIP6 = netip.Addr{}

	for _, tc := range []struct {
		name       string
		nc         NodeConfig
		addrs      []string // on weft0
		routes     []string // dev weft0: "dst via gw mtu"
		hostIP6    string
		podMTU     int
		ipv6Enable bool
	}{
		{"dual-stack", dual, []string{"10.244.1.0/32", "fd10:244:0:1::/128"},
			[]string{"10.244.0.0/16 via 10.244.1.1 mtu 1450", "fd10:244::/56 via fd10:244:0:1::1 mtu 1430"}, "fd10:244:0:1::", 1430, true},
		{"IPv6-only", v6only, []string{"fd10:244:0:1::/128"},
			[]string{"fd10:244::/56 via fd10:244:0:1::1 mtu 1430"}, "fd10:244:0:1::", 1430, true},
		{"v6-in-v4", v6in4, []string{"10.244.1.0/32", "fd10:244:0:1::/128"},
			[]string{"10.244.0.0/16 via 10.244.1.1 mtu 1450", "fd10:244::/56 via fd10:244:0:1::1 mtu 1450"}, "fd10:244:0:1::", 1450, true},
		{"IPv4 only again", v4only, []string{"10.244.1.0/32"},
			[]string{"10.244.0.0/16 via 10.244.1.1 mtu 1450"}, "", 1450, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st NodeState
			err := inNS(func() error {
				var err error
				st, err = SetupNode(d, tc.nc)
				if err != nil {
					return err
				}
				l, err := netlink.LinkByName(DefaultHostDevice)
				if err != nil {
					return err
				}
				var addrs []string
				as, err := netlink.AddrList(l, netlink.FAMILY_ALL)
				if err != nil {
					return err
				}
				for _, a := range as {
					addrs = append(addrs, a.IPNet.String())
				}
				slices.Sort(addrs)
				if !slices.Equal(addrs, tc.addrs) {
					t.Errorf("weft0 addresses %v, want %v", addrs, tc.addrs)
				}
				var routes []string
				rs, err := netlink.RouteList(l, netlink.FAMILY_ALL)
				if err != nil {
					return err
				}
				for _, r := range rs {
					if r.Gw == nil || r.Dst == nil {
						continue
					}
					routes = append(routes, fmt.Sprintf("%s via %s mtu %d", r.Dst, r.Gw, r.MTU))
				}
				slices.Sort(routes)
				if !slices.Equal(routes, tc.routes) {
					t.Errorf("weft0 routes %v, want %v", routes, tc.routes)
				}
				if l.Attrs().MTU != tc.podMTU {
					t.Errorf("weft0 MTU %d, want %d", l.Attrs().MTU, tc.podMTU)
				}
				b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + DefaultHostDevice + "/disable_ipv6")
				if err != nil {
					return err
				}
				if on := strings.TrimSpace(string(b)) == "0"; on != tc.ipv6Enable {
					t.Errorf("IPv6 on weft0: %v, want %v", on, tc.ipv6Enable)
				}
				return nil
			})
			if err != nil {
				t.Fatalf("%+v", err)
			}
			c := st.Config
			if st.PodMTU != tc.podMTU || c.UnderlayIP6 != tc.nc.UnderlayIP6 || c.UnderlayIP.String() != "192.168.99.1" {
				t.Errorf("state: pod MTU %d (want %d), underlay %v / %v", st.PodMTU, tc.podMTU, c.UnderlayIP, c.UnderlayIP6)
			}
			if (tc.hostIP6 == "" && c.HostIP6.IsValid()) || (tc.hostIP6 != "" && c.HostIP6.String() != tc.hostIP6) {
				t.Errorf("HostIP6 %v, want %q", c.HostIP6, tc.hostIP6)
			}
			if tc.nc.Subnet.IsValid() != c.HostIP.IsValid() {
				t.Errorf("HostIP %v for subnet %v", c.HostIP, tc.nc.Subnet)
			}
		})
	}

	// What the data plane cannot do is refused before anything changes.
	noUL6 := v6only
	noUL6.UnderlayIP6 = netip.Addr{}
	outside := dual
	outside.IPv6Subnet = netip.MustParsePrefix("fd11::/64")
	for name, nc := range map[string]NodeConfig{"IPv6-only without an IPv6 underlay": noUL6, "IPv6 subnet outside": outside} {
		if err := inNS(func() error { _, err := SetupNode(d, nc); return err }); err == nil {
			t.Errorf("%s: SetupNode accepted it", name)
		}
	}
}
