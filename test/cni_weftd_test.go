package test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/weftnet/weft/loader"
)

// TestCNIWithWeftd: the plugin against nodes run by the real weftd (real
// etcd, subnets leased, subnet.env and pins written by the daemon): pods
// added through libcni on two nodes reach each other and the nodes, CHECK
// passes, DEL leaves nothing.
func TestCNIWithWeftd(t *testing.T) {
	const perNode = 3
	c := newLab(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	var nodes []*cniNode
	for _, name := range []string{"w1", "w2"} {
		ln := mustAddWeftNode(t, c, name)
		if err := os.MkdirAll(ln.CNIDataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		// Same shape as the loader-built nodes, but everything comes from weftd.
		nodes = append(nodes, &cniNode{name: name, node: ln.Topo, subnet: ln.Subnet, pinPath: ln.PinPath,
			dataDir: ln.CNIDataDir, subnetFile: ln.SubnetFile, cni: cniConfig(c.Opts.BinDir, t.TempDir())})
	}
	for _, ln := range c.Nodes {
		waitFor(t, 10*time.Second, func() bool { ts, _ := ln.Tunnels(); return len(ts) == len(c.Nodes)-1 },
			"node %s has a tunnel to every other node", ln.Name)
	}

	var pods []*cniPod
	for _, n := range nodes {
		for i := 0; i < perNode; i++ {
			name := fmt.Sprintf("%s-c%d", n.name, i)
			ns := cniPodNSIn(t, c.Lab.Prefix, name)
			pods = append(pods, &cniPod{node: n, name: name, ns: ns,
				rt: cniRuntimeConf(fmt.Sprintf("%s%s%d", strings.Repeat("d", 40), n.name, i), ns)})
		}
	}
	list := func(n *cniNode) *libcni.NetworkConfigList { return n.conflist(t, "1.0.0", nil) }
	cniFatalIf(t, "ADD", cniEach(pods, func(p *cniPod) error {
		r, err := p.node.add(ctx, list(p.node), p.rt)
		if err != nil {
			return fmt.Errorf("add %s: %w", p.name, err)
		}
		p.res = cniResult(t, r)
		p.ip = cniPodIP(t, p.res)
		return nil
	}))
	for _, p := range pods {
		checkCNIResult(t, p, true)
	}

	var probes []func() error
	for _, p := range pods {
		for _, q := range pods {
			if p != q {
				probes = append(probes, func() error {
					if err := cniPing(p.ns, q.ip, 2); err != nil {
						return fmt.Errorf("%s -> %s: %w", p, q, err)
					}
					return nil
				})
			}
		}
		probes = append(probes, func() error {
			if err := cniPing(p.ns, loader.HostIP(p.node.subnet), 2); err != nil {
				return fmt.Errorf("%s -> its node: %w", p, err)
			}
			return nil
		})
	}
	errs := cniEach(probes, func(probe func() error) error { return probe() })
	cniFatalIf(t, "ping", errs)

	cniFatalIf(t, "CHECK", cniEach(pods, func(p *cniPod) error { return p.node.check(ctx, list(p.node), p.rt) }))
	cniFatalIf(t, "DEL", cniEach(pods, func(p *cniPod) error { return p.node.del(ctx, list(p.node), p.rt) }))
	for _, n := range nodes {
		n.assertClean(t)
	}
}
