package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
)

// These tests check what weft-cni makes for IPv6 (addresses, routes, map
// entries); that packets then flow is the end-to-end tests' job
// (test/ipv6_*_test.go), which need the data plane's IPv6 paths.

// TestAddCheckDelDualStack: a dual-stack node gives a pod one address of
// each family on eth0, a default route per family via its gateway, a /32
// and a /128 host route, and two endpoint entries; CHECK sees each family;
// DEL removes both.
func TestAddCheckDelDualStack(t *testing.T) {
	n := newTestNode6(t, "10.244.1.0/24", "fd00:10:244:1::/64")
	pod := newNetns(t, n.prefix+"-pod")

	res, err := n.add(t, n.args(t, testID, pod, nil))
	if err != nil {
		t.Fatalf("add: %v", err)
	}
	wantIPs := []string{"10.244.1.2/24 gw 10.244.1.1", "fd00:10:244:1::2/64 gw fd00:10:244:1::1"}
	if got := resultIPs(res); strings.Join(got, ", ") != strings.Join(wantIPs, ", ") {
		t.Errorf("ips = %v, want %v", got, wantIPs)
	}
	wantRoutes := []string{"0.0.0.0/0 via 10.244.1.1", "::/0 via fd00:10:244:1::1"}
	if got := resultRoutes(res); strings.Join(got, ", ") != strings.Join(wantRoutes, ", ") {
		t.Errorf("routes = %v, want %v", got, wantRoutes)
	}
	n.assertPodWired(t, pod, res)
	if err := n.check(t, n.args(t, testID, pod, res)); err != nil {
		t.Errorf("check: %v", err)
	}
	// IPv4 still reaches the node while IPv6 is wired beside it.
	if err := ping(pod, loader.HostIP(n.subnet), 1); err != nil {
		t.Errorf("pod -> node (IPv4): %v", err)
	}

	// CHECK notices each IPv6 piece going missing.
	for _, c := range []struct {
		name, want string
		breakIt    func() error
	}{
		{"IPv6 default route", "pod routes", func() error {
			return inNS(pod, func() error {
				_, gw := mustParseIPNet(t, res.IPs[1])
				return netlink.RouteDel(&netlink.Route{LinkIndex: mustLinkIndex(t, "eth0"), Dst: ipv6Default(), Gw: gw})
			})
		}},
		{"IPv6 endpoint entry", "endpoint entry", func() error {
			set, err := maps.OpenPinned(n.pinPath)
			if err != nil {
				return err
			}
			defer set.Close()
			a, _ := mustParseIPNet(t, res.IPs[1])
			return set.Endpoints.Delete(a)
		}},
		{"IPv6 host route", "host route", func() error {
			return inNS(n.nsPath, func() error {
				a, _ := mustParseIPNet(t, res.IPs[1])
				return netlink.RouteDel(&netlink.Route{LinkIndex: mustLinkIndex(t, hostVethName(testID, "eth0")),
					Dst: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(128, 128)}})
			})
		}},
		{"IPv6 address", "pod addresses", func() error {
			return inNS(pod, func() error {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				return netlink.AddrDel(l, &netlink.Addr{IPNet: &res.IPs[1].Address})
			})
		}},
	} {
		if err := c.breakIt(); err != nil {
			t.Fatalf("break %s: %v", c.name, err)
		}
		if err := n.check(t, n.args(t, testID, pod, res)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("check without the %s: err = %v, want %q", c.name, err, c.want)
		}
	}

	for i := 0; i < 2; i++ { // DEL is idempotent
		if err := n.del(t, n.args(t, testID, pod, res)); err != nil {
			t.Fatalf("del #%d: %v", i+1, err)
		}
		n.assertClean(t, pod)
	}
}

// TestAddIPv6Only: a subnet.env without FLANNEL_SUBNET wires an IPv6-only pod.
func TestAddIPv6Only(t *testing.T) {
	n := newTestNode6(t, "", "fd00:10:244:2::/64")
	pod := newNetns(t, n.prefix+"-pod")
	res, err := n.add(t, n.args(t, testID, pod, nil))
	if err != nil {
		t.Fatalf("add: %v", err)
	}
	if got, want := strings.Join(resultIPs(res), ", "), "fd00:10:244:2::2/64 gw fd00:10:244:2::1"; got != want {
		t.Errorf("ips = %v, want %v", got, want)
	}
	if got, want := strings.Join(resultRoutes(res), ", "), "::/0 via fd00:10:244:2::1"; got != want {
		t.Errorf("routes = %v, want %v", got, want)
	}
	n.assertPodWired(t, pod, res)
	inNS(pod, func() error {
		addrs, _ := netlink.AddrList(mustLink(t, "eth0"), netlink.FAMILY_V4)
		if len(addrs) != 0 {
			t.Errorf("IPv6-only pod has IPv4 addresses %v", addrs)
		}
		return nil
	})
	if err := n.check(t, n.args(t, testID, pod, res)); err != nil {
		t.Errorf("check: %v", err)
	}
	if err := n.del(t, n.args(t, testID, pod, res)); err != nil {
		t.Fatal(err)
	}
	n.assertClean(t, pod)
}

// TestAddExhaustedPerFamily: either family running out fails ADD with the
// exhausted subnet named, and the other family's address taken for the
// failed pod is released (no leak).
func TestAddExhaustedPerFamily(t *testing.T) {
	for _, c := range []struct {
		name, subnet, subnet6, full string
		fit                         int
	}{
		{"IPv4 full", "10.244.7.0/30", "fd00:10:244:7::/64", "10.244.7.0/30", 1},        // .2 only
		{"IPv6 full", "10.244.7.0/24", "fd00:10:244:7::/126", "fd00:10:244:7::/126", 2}, // ::2, ::3
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newTestNode6(t, c.subnet, c.subnet6)
			var ids, pods []string
			t.Cleanup(func() {
				for i, id := range ids {
					n.del(t, n.args(t, id, pods[i], nil))
				}
			})
			for i := 0; i <= c.fit; i++ {
				id := fmt.Sprintf("%s%c", testID, 'a'+i)
				pod := newNetns(t, fmt.Sprintf("%s-pod%c", n.prefix, 'a'+i))
				res, err := n.add(t, n.args(t, id, pod, nil))
				if i < c.fit {
					if err != nil {
						t.Fatalf("add #%d: %v", i+1, err)
					}
					if len(res.IPs) != 2 {
						t.Fatalf("add #%d: ips %v, want one per family", i+1, resultIPs(res))
					}
					ids, pods = append(ids, id), append(pods, pod)
					continue
				}
				var cerr *types.Error
				if !errors.As(err, &cerr) || cerr.Code != errCodeNoAddress || !strings.Contains(cerr.Msg, c.full+" is exhausted") {
					t.Fatalf("add #%d: err = %v, want code %d naming %s", i+1, err, errCodeNoAddress, c.full)
				}
				// Per pod: veth, 2 host routes, 2 endpoints, link, 2 addresses, record.
				if left := n.leftovers(t, ""); len(left) != 9*c.fit {
					t.Errorf("after failed add: %d leftovers, want %d (nothing of the failed pod): %v", len(left), 9*c.fit, left)
				}
			}
			for i, id := range ids {
				if err := n.del(t, n.args(t, id, pods[i], nil)); err != nil {
					t.Fatal(err)
				}
			}
			ids = nil
			n.assertClean(t, "")
		})
	}
}

// assertPodWired checks the pod and node state ADD reported in res: every
// address on eth0 (IPv6 ones added without DAD and usable at once), an
// onlink default route per family, a host route per address through the
// host veth, and an endpoint entry per address, all the same veth.
func (n *testNode) assertPodWired(t *testing.T, pod string, res *current.Result) {
	t.Helper()
	hostIf := hostVethName(testID, "eth0")
	var hostIndex int
	err := inNS(n.nsPath, func() error {
		hostIndex = mustLinkIndex(t, hostIf)
		for _, ipc := range res.IPs {
			a, _ := mustParseIPNet(t, ipc)
			routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
				&netlink.Route{Dst: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}},
				netlink.RT_FILTER_DST)
			if err != nil {
				return err
			}
			if len(routes) != 1 || routes[0].LinkIndex != hostIndex {
				t.Errorf("host routes to %s = %v, want one dev %s", a, routes, hostIf)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	set, err := maps.OpenPinned(n.pinPath)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	for _, ipc := range res.IPs {
		a, _ := mustParseIPNet(t, ipc)
		ep, err := set.Endpoints.Lookup(a)
		if err != nil {
			t.Errorf("endpoint %s: %v", a, err)
			continue
		}
		if int(ep.IfIndex) != hostIndex || ep.MAC.String() != res.Interfaces[1].Mac || ep.HostMAC.String() != res.Interfaces[0].Mac {
			t.Errorf("endpoint %s = %+v, want ifindex %d mac %s host mac %s", a, ep, hostIndex, res.Interfaces[1].Mac, res.Interfaces[0].Mac)
		}
	}
	err = inNS(pod, func() error {
		l := mustLink(t, "eth0")
		if l.Attrs().MTU != n.mtu {
			t.Errorf("pod eth0 MTU %d, want %d", l.Attrs().MTU, n.mtu)
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, ipc := range res.IPs {
			found := false
			for _, got := range addrs {
				if !got.IP.Equal(ipc.Address.IP) {
					continue
				}
				found = true
				if got.IP.To4() == nil && (got.Flags&unix.IFA_F_NODAD == 0 || got.Flags&unix.IFA_F_TENTATIVE != 0) {
					t.Errorf("pod address %s flags %#x: want NODAD, not tentative", got.IP, got.Flags)
				}
			}
			if !found {
				t.Errorf("pod eth0 lacks %s (has %v)", ipc.Address.String(), addrs)
			}
		}
		routes, err := netlink.RouteList(l, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, want := range res.Routes {
			found := false
			for _, r := range routes {
				isDefault := r.Dst == nil || r.Dst.IP.IsUnspecified()
				if isDefault && r.Gw.Equal(want.GW) && r.Flags&int(netlink.FLAG_ONLINK) != 0 {
					found = true
				}
			}
			if !found {
				t.Errorf("pod lacks default route via %s onlink (has %v)", want.GW, routes)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func resultIPs(res *current.Result) []string {
	var out []string
	for _, ipc := range res.IPs {
		out = append(out, fmt.Sprintf("%s gw %s", ipc.Address.String(), ipc.Gateway))
	}
	return out
}

func resultRoutes(res *current.Result) []string {
	var out []string
	for _, r := range res.Routes {
		out = append(out, fmt.Sprintf("%s via %s", r.Dst.String(), r.GW))
	}
	return out
}

func mustParseIPNet(t *testing.T, ipc *current.IPConfig) (netip.Addr, net.IP) {
	t.Helper()
	a, ok := netip.AddrFromSlice(ipc.Address.IP)
	if !ok {
		t.Fatalf("bad address %v", ipc.Address)
	}
	return a.Unmap(), ipc.Gateway
}

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func ipv6Default() *net.IPNet { return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)} }
