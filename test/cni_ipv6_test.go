package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/topo"
)

// TestCNIDualStack drives the built weft-cni through libcni, as a runtime
// does, on dual-stack nodes (subnet.env with FLANNEL_IPV6_SUBNET). It
// checks what the plugin makes (addresses, routes, map entries, results of
// every spec version) and so runs without the data plane's IPv6 paths;
// test/ipv6_test.go sends the traffic.
func TestCNIDualStack(t *testing.T) {
	c := newCNILab6(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	t.Run("AddCheckDelEveryVersion", func(t *testing.T) {
		n := c.nodes[0]
		for i, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
			pod := cniPodNS(t, c, fmt.Sprintf("ds%d", i))
			rt := cniRuntimeConf(fmt.Sprintf("%s%d", strings.Repeat("d", 40), i), pod)
			list := n.conflist(t, v, nil)
			r, err := n.add(ctx, list, rt)
			if err != nil {
				t.Fatalf("%s: add: %v", v, err)
			}
			if r.Version() != v {
				t.Errorf("%s: result version %s", v, r.Version())
			}
			res := cniResult(t, r)
			ip4, ip6 := cniPodIPs(t, res)
			if !n.subnet.Contains(ip4) || !n.subnet6.Contains(ip6) {
				t.Errorf("%s: addresses %s %s, want one of %s and one of %s", v, ip4, ip6, n.subnet, n.subnet6)
			}
			if got := len(res.Routes); got != 2 {
				t.Errorf("%s: %d routes in the result, want a default route per family: %v", v, got, res.Routes)
			}
			assertDualStackPod(t, n, pod, ip4, ip6)
			if v != "0.3.1" { // CHECK came with 0.4.0
				if err := n.check(ctx, list, rt); err != nil {
					t.Errorf("%s: check: %v", v, err)
				}
			}
			// The node reaches the pod over IPv4 (weft0, the data plane's ARP).
			if err := cniPing(pod, loader.HostIP(n.subnet), 1); err != nil {
				t.Errorf("%s: %v", v, err)
			}
			for range 2 { // idempotent
				if err := n.del(ctx, list, rt); err != nil {
					t.Fatalf("%s: del: %v", v, err)
				}
			}
			n.assertClean(t)
		}
	})

	t.Run("CheckSeesIPv6Missing", func(t *testing.T) {
		n := c.nodes[1]
		pod := cniPodNS(t, c, "chk")
		rt := cniRuntimeConf(strings.Repeat("c", 64), pod)
		list := n.conflist(t, "1.0.0", nil)
		r, err := n.add(ctx, list, rt)
		if err != nil {
			t.Fatal(err)
		}
		_, ip6 := cniPodIPs(t, cniResult(t, r))
		if err := topo.Do(pod, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.AddrDel(l, &netlink.Addr{IPNet: &cniResult(t, r).IPs[1].Address})
		}); err != nil {
			t.Fatal(err)
		}
		if err := n.check(ctx, list, rt); err == nil || !strings.Contains(err.Error(), ip6.String()) {
			t.Errorf("check after removing %s: err = %v, want it named", ip6, err)
		}
		if err := n.del(ctx, list, rt); err != nil {
			t.Fatal(err)
		}
		n.assertClean(t)
	})

	t.Run("GC", func(t *testing.T) {
		// CNI 1.1 GC of a dual-stack attachment the runtime no longer
		// lists: both addresses, endpoints and host routes go.
		n := c.nodes[1]
		pod := cniPodNS(t, c, "gc")
		list := n.conflist(t, "1.1.0", nil)
		if _, err := n.add(ctx, list, cniRuntimeConf(strings.Repeat("e", 64), pod)); err != nil {
			t.Fatal(err)
		}
		if err := n.node.Do(func() error { return n.cni.GCNetworkList(ctx, list, &libcni.GCArgs{}) }); err != nil {
			t.Fatalf("gc: %v", err)
		}
		n.assertClean(t)
	})

	t.Run("Cycles", func(t *testing.T) {
		const cycles = 20
		n := c.nodes[0]
		pod := cniPodNS(t, c, "cyc")
		list := n.conflist(t, "1.0.0", nil)
		cycle := func(i int) error {
			rt := cniRuntimeConf(fmt.Sprintf("ds-cycle%056d", i), pod)
			if _, err := n.add(ctx, list, rt); err != nil {
				return fmt.Errorf("cycle %d: add: %w", i, err)
			}
			if err := n.del(ctx, list, rt); err != nil {
				return fmt.Errorf("cycle %d: del: %w", i, err)
			}
			return nil
		}
		if err := cycle(0); err != nil { // warm-up, see TestCNIAddDelCycles
			t.Fatal(err)
		}
		fds := cniOpenFDs(t)
		for i := 1; i <= cycles; i++ {
			if err := cycle(i); err != nil {
				t.Fatal(err)
			}
		}
		n.assertClean(t)
		if got := cniOpenFDs(t); got > fds+2 {
			t.Errorf("test process has %d open fds, had %d before %d dual-stack cycles: a leak", got, fds, cycles)
		}
	})

	t.Run("IPv6Exhausted", func(t *testing.T) {
		// fd00:10:244:2::/126 holds ::2 and ::3: the third pod finds IPv4
		// addresses left but no IPv6 one, fails with code 100 naming the
		// IPv6 subnet, and keeps neither address.
		n := c.nodes[1]
		n.subnet6 = netip.MustParsePrefix("fd00:10:244:2::/126")
		n.writeSubnetEnv(t, netip.MustParsePrefix("10.244.0.0/16"), n.subnet, loader.PodMTU(c.lab.MTU))
		list := n.conflist(t, "1.0.0", nil)
		var rts []string
		t.Cleanup(func() {
			for i, id := range rts {
				n.del(ctx, list, cniRuntimeConf(id, fmt.Sprintf("%s/%s-ex%d", topo.NetnsDir, c.lab.Prefix, i)))
			}
		})
		for i := 0; i < 3; i++ {
			pod := cniPodNS(t, c, fmt.Sprintf("ex%d", i))
			id := fmt.Sprintf("ds-ex%059d", i)
			_, err := n.add(ctx, list, cniRuntimeConf(id, pod))
			if i < 2 {
				if err != nil {
					t.Fatalf("add #%d: %v", i+1, err)
				}
				rts = append(rts, id)
				continue
			}
			var cerr *types.Error
			if !errors.As(err, &cerr) || cerr.Code != 100 || !strings.Contains(cerr.Msg, n.subnet6.String()) {
				t.Fatalf("add #3: err = %v, want code 100 naming %s", err, n.subnet6)
			}
			// Per pod: veth, 2 host routes, 2 endpoints, link, 2 addresses, record.
			if left := n.leftovers(t); len(left) != 2*9 {
				t.Errorf("after the failed add: %d leftovers, want 18 (two pods' worth): %v", len(left), left)
			}
		}
		for i, id := range rts {
			if err := n.del(ctx, list, cniRuntimeConf(id, fmt.Sprintf("%s/%s-ex%d", topo.NetnsDir, c.lab.Prefix, i))); err != nil {
				t.Fatal(err)
			}
		}
		rts = nil
		n.assertClean(t)
	})
}

// assertDualStackPod checks the pod and node side of a dual-stack pod: the
// IPv6 address on eth0 without DAD and not tentative, a default route per
// family onlink, the /128 host route, an endpoint entry per address.
func assertDualStackPod(t *testing.T, n *cniNode, podNS string, ip4, ip6 netip.Addr) {
	t.Helper()
	err := topo.Do(podNS, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			return err
		}
		found := false
		for _, a := range addrs {
			if a.IP.Equal(ip6.AsSlice()) {
				found = true
				if a.Flags&unix.IFA_F_NODAD == 0 || a.Flags&unix.IFA_F_TENTATIVE != 0 {
					t.Errorf("pod %s flags %#x: want NODAD, not tentative", ip6, a.Flags)
				}
			}
		}
		if !found {
			t.Errorf("pod eth0 lacks %s: %v", ip6, addrs)
		}
		routes, err := netlink.RouteList(l, netlink.FAMILY_V6)
		if err != nil {
			return err
		}
		gw6 := loader.GatewayIP(netip.PrefixFrom(ip6, n.subnet6.Bits()))
		def := false
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.Equal(gw6.AsSlice()) && r.Flags&int(netlink.FLAG_ONLINK) != 0 {
				def = true
			}
		}
		if !def {
			t.Errorf("pod lacks default via %s onlink: %v", gw6, routes)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	set, err := n.maps(t)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	e4, err4 := set.Endpoints.Lookup(ip4)
	e6, err6 := set.Endpoints.Lookup(ip6)
	if err4 != nil || err6 != nil || e4.IfIndex != e6.IfIndex || e4.MAC.String() != e6.MAC.String() || e4.HostMAC.String() != e6.HostMAC.String() {
		t.Errorf("endpoints %s = %+v (%v), %s = %+v (%v): want both, same veth and MACs", ip4, e4, err4, ip6, e6, err6)
	}
	if err := n.node.Do(func() error {
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Dst: ipNet128(ip6)}, netlink.RT_FILTER_DST)
		if err != nil {
			return err
		}
		if len(rs) != 1 || rs[0].LinkIndex != int(e6.IfIndex) {
			t.Errorf("host routes to %s: %v, want one via ifindex %d", ip6, rs, e6.IfIndex)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func (cn *cniNode) maps(t *testing.T) (*maps.Set, error) {
	t.Helper()
	return maps.OpenPinned(cn.pinPath)
}

func ipNet128(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(128, 128)}
}
