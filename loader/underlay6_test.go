package loader

import (
	"errors"
	"net/netip"
	"os/exec"
	"testing"
)

// TestSetupNodeUnderlayIP6: an IPv6 underlay address reaches node_config
// only when it is a plain IPv6 address of the underlay device; a node whose
// underlay has no IPv4 address at all sets up with the IPv6 one alone.
func TestSetupNodeUnderlayIP6(t *testing.T) {
	pin := testPinPath(t)
	inNS := testNS(t)
	d, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer d.Close()
	ip6 := netip.MustParseAddr("fd00:99::1")
	err = inNS(func() error {
		if out, err := exec.Command("ip", "addr", "add", ip6.String()+"/64", "dev", "ul0", "nodad").CombinedOutput(); err != nil {
			return errors.New(string(out))
		}
		for _, bad := range []string{"fd00:99::7", "::ffff:192.168.99.1", "fe80::1", "::"} {
			nc := testNodeConfig()
			nc.UnderlayIP6 = netip.MustParseAddr(bad)
			if _, err := SetupNode(d, nc); !errors.Is(err, ErrUnderlayIP6) {
				t.Errorf("UnderlayIP6 %s: err %v, want ErrUnderlayIP6", bad, err)
			}
		}

		nc := testNodeConfig()
		nc.UnderlayIP6 = ip6
		st, err := SetupNode(d, nc)
		if err != nil {
			return err
		}
		if st.Config.UnderlayIP6 != ip6 || st.Config.UnderlayIP != netip.MustParseAddr("192.168.99.1") {
			t.Errorf("dual-stack underlay: config has %v and %v, want 192.168.99.1 and %v",
				st.Config.UnderlayIP, st.Config.UnderlayIP6, ip6)
		}

		// IPv6-only underlay: IPv4 pods need an IPv4 underlay address (a
		// flannel lease's PublicIP), so the node is an IPv6-only one.
		if out, err := exec.Command("ip", "addr", "del", "192.168.99.1/24", "dev", "ul0").CombinedOutput(); err != nil {
			return errors.New(string(out))
		}
		if _, err := SetupNode(d, nc); err == nil {
			t.Errorf("IPv4 pods on an IPv6-only underlay: SetupNode succeeded")
		}
		nc.Network, nc.Subnet = netip.Prefix{}, netip.Prefix{}
		nc.IPv6Network, nc.IPv6Subnet = netip.MustParsePrefix("fc00:10:244::/56"), netip.MustParsePrefix("fc00:10:244:1::/64")
		if st, err = SetupNode(d, nc); err != nil {
			return err
		}
		if st.Config.UnderlayIP.IsValid() || st.Config.UnderlayIP6 != ip6 {
			t.Errorf("IPv6-only underlay: config has %v and %v, want none and %v",
				st.Config.UnderlayIP, st.Config.UnderlayIP6, ip6)
		}
		nc.UnderlayIP6 = netip.Addr{}
		if _, err := SetupNode(d, nc); err == nil {
			t.Errorf("no underlay address of either family: SetupNode succeeded")
		}
		return TeardownNode(pin, "")
	})
	if err != nil {
		t.Fatalf("%+v", err)
	}
}
