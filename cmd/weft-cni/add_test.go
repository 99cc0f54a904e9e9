package main

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/loader"
)

const testID = "0123456789abcdef0123456789abcdef"

func TestAddCheckDel(t *testing.T) {
	n := newTestNode(t, "10.244.1.0/24")
	pod := newNetns(t, n.prefix+"-pod")

	res, err := n.add(t, n.args(t, testID, pod, nil))
	if err != nil {
		t.Fatalf("add: %v", err)
	}
	hostIf := hostVethName(testID, "eth0")
	if len(res.Interfaces) != 2 || res.Interfaces[0].Name != hostIf || res.Interfaces[1].Name != "eth0" ||
		res.Interfaces[1].Sandbox != pod || res.Interfaces[0].Mac == "" || res.Interfaces[1].Mac == "" {
		t.Errorf("interfaces = %v", res.Interfaces)
	}
	if len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.244.1.2/24" || res.IPs[0].Gateway.String() != "10.244.1.1" ||
		res.IPs[0].Interface == nil || *res.IPs[0].Interface != 1 {
		t.Errorf("ips = %v", res.IPs)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != "10.244.1.1" {
		t.Errorf("routes = %v", res.Routes)
	}
	// The data plane answers the pod's ARP for the gateway, the node
	// answers on weft0's address.
	if err := ping(pod, loader.HostIP(n.subnet), 2); err != nil {
		t.Errorf("pod -> node: %v", err)
	}
	if err := n.check(t, n.args(t, testID, pod, res)); err != nil {
		t.Errorf("check: %v", err)
	}

	// A second ADD of the same attachment is refused and breaks nothing.
	if _, err := n.add(t, n.args(t, testID, pod, nil)); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second add: err = %v, want already exists", err)
	}
	if err := n.check(t, n.args(t, testID, pod, res)); err != nil {
		t.Errorf("check after refused second add: %v", err)
	}

	// CHECK notices a pod that lost its default route.
	inNS(pod, func() error {
		return netlink.RouteDel(&netlink.Route{LinkIndex: mustLinkIndex(t, "eth0"), Gw: res.Routes[0].GW})
	})
	if err := n.check(t, n.args(t, testID, pod, res)); err == nil || !strings.Contains(err.Error(), "pod routes") {
		t.Errorf("check without default route: err = %v, want a route mismatch", err)
	}

	for i := 0; i < 2; i++ { // DEL is idempotent
		if err := n.del(t, n.args(t, testID, pod, res)); err != nil {
			t.Fatalf("del #%d: %v", i+1, err)
		}
		n.assertClean(t, pod)
	}
	if err := n.del(t, n.args(t, "never-added", pod, nil)); err != nil {
		t.Errorf("del of unknown container: %v", err)
	}
}

func mustLinkIndex(t *testing.T, name string) int {
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

var addSteps = []string{"ipam", "veth", "record", "pod", "host-route", "endpoint", "attach"}

// TestAddFailureAtEveryStepLeavesNothing fails ADD of a dual-stack pod
// after each step: the rollback must remove everything of both families,
// and the same attachment must then ADD cleanly.
func TestAddFailureAtEveryStepLeavesNothing(t *testing.T) {
	n := newTestNode6(t, "10.244.1.0/24", "fd00:10:244:1::/64")
	pod := newNetns(t, n.prefix+"-pod")
	t.Cleanup(func() { failpoint = nil })
	for _, step := range addSteps {
		injected := errors.New("injected failure")
		failpoint = func(s string) error {
			if s == step {
				return injected
			}
			return nil
		}
		_, err := n.add(t, n.args(t, testID, pod, nil))
		if !errors.Is(err, injected) {
			t.Fatalf("step %s: add err = %v, want the injected failure", step, err)
		}
		n.assertClean(t, pod)
	}
	failpoint = nil
	res, err := n.add(t, n.args(t, testID, pod, nil))
	if err != nil {
		t.Fatalf("add after failures: %v", err)
	}
	if err := n.check(t, n.args(t, testID, pod, res)); err != nil {
		t.Errorf("check: %v", err)
	}
	if err := n.del(t, n.args(t, testID, pod, res)); err != nil {
		t.Fatal(err)
	}
	n.assertClean(t, pod)
}

// TestDelAfterCrashAtEveryStep stops ADD of a dual-stack pod after each
// step without any rollback (a plugin killed there); DEL, with and without
// the pod's netns, must remove what was made.
func TestDelAfterCrashAtEveryStep(t *testing.T) {
	n := newTestNode6(t, "10.244.1.0/24", "fd00:10:244:1::/64")
	t.Cleanup(func() { failpoint = nil })
	for i, step := range addSteps {
		for _, netnsGone := range []bool{false, true} {
			pod := newNetns(t, n.prefix+"-pod"+string(rune('a'+i))+map[bool]string{false: "k", true: "g"}[netnsGone])
			failpoint = func(s string) error {
				if s == step {
					return errSimulatedCrash
				}
				return nil
			}
			if _, err := n.add(t, n.args(t, testID, pod, nil)); !errors.Is(err, errSimulatedCrash) {
				t.Fatalf("step %s: add err = %v", step, err)
			}
			failpoint = nil
			if netnsGone {
				deleteNetns(strings.TrimPrefix(pod, "/var/run/netns/"))
			}
			if err := n.del(t, n.args(t, testID, pod, nil)); err != nil {
				t.Fatalf("del after crash at %s (netns gone %v): %v", step, netnsGone, err)
			}
			n.assertClean(t, pod)
		}
	}
}

// TestAddRefusesBeforeMakingAnything: failures detected up front leave no
// trace and carry a clear message and code.
func TestAddRefusesBeforeMakingAnything(t *testing.T) {
	n := newTestNode(t, "10.244.1.0/24")
	pod := newNetns(t, n.prefix+"-pod")
	for _, c := range []struct {
		name     string
		setup    func() (netns string, undo func())
		wantCode uint
		wantMsg  string
	}{
		{"missing netns", func() (string, func()) { return "/var/run/netns/" + n.prefix + "-nope", func() {} },
			types.ErrInvalidNetNS, "open pod netns"},
		{"node's own netns", func() (string, func()) { return n.nsPath, func() {} },
			types.ErrInvalidNetNS, "node's own netns"},
		{"no subnet.env", func() (string, func()) {
			real := n.subnetFile
			n.subnetFile = real + ".missing"
			return pod, func() { n.subnetFile = real }
		}, types.ErrTryAgainLater, "weftd not running on this node?"},
		{"no data plane", func() (string, func()) {
			real := n.pinPath
			n.pinPath = t.TempDir()
			return pod, func() { n.pinPath = real }
		}, types.ErrTryAgainLater, "weftd not running on this node?"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns, undo := c.setup()
			_, err := n.add(t, n.args(t, testID, ns, nil))
			undo()
			var cerr *types.Error
			if !errors.As(err, &cerr) || cerr.Code != c.wantCode || !strings.Contains(cerr.Msg, c.wantMsg) {
				t.Fatalf("add: err = %v, want code %d mentioning %q", err, c.wantCode, c.wantMsg)
			}
			n.assertClean(t, pod)
		})
	}
}

func TestAddExhaustedSubnet(t *testing.T) {
	n := newTestNode(t, "10.244.7.0/29") // .2 to .6: five pods
	var ids []string
	var pods []string
	t.Cleanup(func() {
		for i, id := range ids {
			n.del(t, n.args(t, id, pods[i], nil))
		}
	})
	seen := map[netip.Addr]bool{}
	for i := 0; i < 6; i++ {
		id := testID + string(rune('a'+i))
		pod := newNetns(t, n.prefix+"-pod"+string(rune('a'+i)))
		res, err := n.add(t, n.args(t, id, pod, nil))
		if i < 5 {
			if err != nil {
				t.Fatalf("add #%d: %v", i+1, err)
			}
			ids, pods = append(ids, id), append(pods, pod)
			a, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
			if seen[a] || a == loader.HostIP(n.subnet) || a == loader.GatewayIP(n.subnet) {
				t.Errorf("add #%d got %s (seen before or reserved)", i+1, a)
			}
			seen[a] = true
			continue
		}
		var cerr *types.Error
		if !errors.As(err, &cerr) || cerr.Code != errCodeNoAddress || !strings.Contains(cerr.Msg, "exhausted") {
			t.Fatalf("add #6: err = %v, want code %d (subnet exhausted)", err, errCodeNoAddress)
		}
		if left := n.leftovers(t, ""); len(left) != 5*6 { // five pods' worth, nothing from the sixth
			t.Errorf("after failed add: %d leftovers, want 30 (5 pods x veth, route, endpoint, link, address, record): %v", len(left), left)
		}
	}
	for i, id := range ids {
		if err := n.del(t, n.args(t, id, pods[i], nil)); err != nil {
			t.Fatal(err)
		}
	}
	ids = nil
	n.assertClean(t, "")
}
