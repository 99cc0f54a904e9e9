package test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/test/topo"
)

// cniParallel bounds concurrent plugin calls and pings: the CI machine has
// two cores, and kubelet too runs a handful of sandboxes at once, not all.
const cniParallel = 4

type cniPod struct {
	node *cniNode
	name string
	ns   string
	rt   *libcni.RuntimeConf
	res  *current.Result
	ip   netip.Addr
	// nsGone: the sandbox's netns was deleted before DEL, as when a
	// runtime cleans up after a crash.
	nsGone bool
}

func (p *cniPod) String() string { return p.node.name + "/" + p.name + "(" + p.ip.String() + ")" }

// cniEach runs fn for every item with at most cniParallel at once and
// returns the failures.
func cniEach[T any](items []T, fn func(T) error) []error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, cniParallel)
	)
	for _, it := range items {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := fn(it); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

func cniFatalIf(t *testing.T, what string, errs []error) {
	t.Helper()
	if len(errs) == 0 {
		return
	}
	var b strings.Builder
	for _, e := range errs {
		fmt.Fprintf(&b, "\n  %v", e)
	}
	t.Fatalf("%s: %d failed:%s", what, len(errs), b.String())
}

// TestCNIPodsOnTwoNodes is the main proof: 20 pods on each of two
// Weft nodes, added through libcni; they reach each other and their node;
// CHECK passes; DEL leaves nothing; DEL again succeeds.
func TestCNIPodsOnTwoNodes(t *testing.T) {
	const perNode = 20
	c := newCNILab(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	var pods []*cniPod
	for _, n := range c.nodes {
		for i := 0; i < perNode; i++ {
			name := fmt.Sprintf("%s-c%02d", n.name, i)
			ns := cniPodNS(t, c, name)
			id := fmt.Sprintf("%s%s%02d", strings.Repeat("c", 40), n.name, i)
			pods = append(pods, &cniPod{node: n, name: name, ns: ns, rt: cniRuntimeConf(id, ns)})
		}
	}

	start := time.Now()
	cniFatalIf(t, "ADD", cniEach(pods, func(p *cniPod) error {
		r, err := p.node.add(ctx, p.node.conflist(t, "1.0.0", nil), p.rt)
		if err != nil {
			return fmt.Errorf("add %s: %w", p.name, err)
		}
		if r.Version() != "1.0.0" {
			return fmt.Errorf("add %s: result version %s, want 1.0.0", p.name, r.Version())
		}
		p.res = cniResult(t, r)
		p.ip = cniPodIP(t, p.res)
		return nil
	}))
	t.Logf("ADD of %d pods: %v", len(pods), time.Since(start).Round(time.Millisecond))

	t.Run("Results", func(t *testing.T) {
		seen := map[netip.Addr]string{}
		for _, p := range pods {
			checkCNIResult(t, p, true)
			if mtu := cniPodMTU(t, p.ns, "eth0"); mtu != loader.PodMTU(p.node.node.Lab.MTU) {
				t.Errorf("%s: eth0 MTU %d, want %d", p.name, mtu, loader.PodMTU(p.node.node.Lab.MTU))
			}
			if other, dup := seen[p.ip]; dup {
				t.Errorf("%s and %s both got %s", p.name, other, p.ip)
			}
			seen[p.ip] = p.name
		}
	})

	// Connectivity, sampled: 40 pods all-to-all would be 1560 pings. Each
	// pod pings 3 random others (seeded, logged), its own node's weft0
	// address, and the first pod of the other node; the latter also means
	// every pod is reached from the other node.
	t.Run("Ping", func(t *testing.T) {
		seed := uint64(time.Now().UnixNano())
		t.Logf("ping sample seed %d", seed)
		rng := rand.New(rand.NewPCG(seed, seed))
		type probe struct {
			from *cniPod
			to   netip.Addr
			what string
		}
		var probes []probe
		for _, p := range pods {
			picked := 0
			for _, k := range rng.Perm(len(pods)) {
				if q := pods[k]; q != p && picked < 3 {
					probes = append(probes, probe{p, q.ip, q.String()})
					picked++
				}
			}
			probes = append(probes, probe{p, loader.HostIP(p.node.subnet), "host " + p.node.name})
			for _, n := range c.nodes {
				if n != p.node {
					first := pods[cniFirstPodIndex(pods, n)]
					probes = append(probes, probe{p, first.ip, first.String()})
				}
			}
		}
		start := time.Now()
		errs := cniEach(probes, func(pr probe) error {
			if err := cniPing(pr.from.ns, pr.to, 2); err != nil {
				return fmt.Errorf("%s -> %s: %w", pr.from, pr.what, err)
			}
			return nil
		})
		t.Logf("%d pings (2 echoes each), %d failed, %v", len(probes), len(errs), time.Since(start).Round(time.Millisecond))
		cniFatalIf(t, "ping", errs)
	})

	t.Run("Check", func(t *testing.T) {
		cniFatalIf(t, "CHECK", cniEach(pods, func(p *cniPod) error {
			if err := p.node.check(ctx, p.node.conflist(t, "1.0.0", nil), p.rt); err != nil {
				return fmt.Errorf("check %s: %w", p.name, err)
			}
			return nil
		}))
	})

	// A quarter of the sandboxes lose their netns before DEL: DEL must
	// not need it.
	gone := 0
	for i, p := range pods {
		if i%4 == 0 {
			if err := cniDeleteNS(p.ns); err != nil {
				t.Fatal(err)
			}
			p.nsGone = true
			gone++
		}
	}
	start = time.Now()
	cniFatalIf(t, "DEL", cniEach(pods, func(p *cniPod) error {
		if err := p.node.del(ctx, p.node.conflist(t, "1.0.0", nil), p.rt); err != nil {
			return fmt.Errorf("del %s: %w", p.name, err)
		}
		return nil
	}))
	t.Logf("DEL of %d pods (%d without netns): %v", len(pods), gone, time.Since(start).Round(time.Millisecond))
	for _, n := range c.nodes {
		n.assertClean(t)
	}
	for _, p := range pods {
		if !p.nsGone && cniPodHasIf(t, p.ns, "eth0") {
			t.Errorf("pod %s still has eth0 after DEL", p.name)
		}
	}

	// A runtime retries DEL until it succeeds: the second must be a no-op.
	cniFatalIf(t, "second DEL", cniEach(pods, func(p *cniPod) error {
		if err := p.node.del(ctx, p.node.conflist(t, "1.0.0", nil), p.rt); err != nil {
			return fmt.Errorf("second del %s: %w", p.name, err)
		}
		return nil
	}))
	for _, n := range c.nodes {
		n.assertClean(t)
	}
}

func cniPodMTU(t *testing.T, nsPath, ifName string) int {
	t.Helper()
	var mtu int
	if err := topo.Do(nsPath, func() error {
		l, err := netlink.LinkByName(ifName)
		if err == nil {
			mtu = l.Attrs().MTU
		}
		return err
	}); err != nil {
		t.Fatalf("pod %s: %v", nsPath, err)
	}
	return mtu
}

func cniFirstPodIndex(pods []*cniPod, n *cniNode) int {
	for i, p := range pods {
		if p.node == n {
			return i
		}
	}
	panic("no pod on " + n.name)
}

// checkCNIResult checks one ADD result against the node: host veth and pod
// interface with MACs and sandbox, the address in the node subnet (not the
// node's .0 or the gateway .1) on the pod interface, gateway and default
// route via .1, the overlay MTU (results before 1.0 have no MTU field).
func checkCNIResult(t *testing.T, p *cniPod, withMTU bool) {
	t.Helper()
	res := p.res
	gw := loader.GatewayIP(p.node.subnet)
	if len(res.Interfaces) != 2 {
		t.Fatalf("%s: %d interfaces, want host + pod: %v", p.name, len(res.Interfaces), res.Interfaces)
	}
	host, pod := res.Interfaces[0], res.Interfaces[1]
	if !strings.HasPrefix(host.Name, "weft") || len(host.Name) != 15 || host.Sandbox != "" || host.Mac == "" {
		t.Errorf("%s: host interface %+v", p.name, *host)
	}
	if pod.Name != "eth0" || pod.Sandbox != p.ns || pod.Mac == "" || (withMTU && pod.Mtu != loader.PodMTU(p.node.node.Lab.MTU)) {
		t.Errorf("%s: pod interface %+v", p.name, *pod)
	}
	ipc := res.IPs[0]
	if ipc.Interface == nil || *ipc.Interface != 1 || !p.node.subnet.Contains(p.ip) || p.ip == gw ||
		p.ip == loader.HostIP(p.node.subnet) || !ipc.Gateway.Equal(gw.AsSlice()) {
		t.Errorf("%s: ip %v", p.name, ipc)
	}
	if ones, _ := ipc.Address.Mask.Size(); ones != p.node.subnet.Bits() {
		t.Errorf("%s: address %s, want the subnet's /%d", p.name, ipc.Address.String(), p.node.subnet.Bits())
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || !res.Routes[0].GW.Equal(gw.AsSlice()) {
		t.Errorf("%s: routes %v", p.name, res.Routes)
	}
}
