package test

import (
	"net/netip"
	"testing"
	"time"
)

// TestWeftdSmoke: three nodes running the real weftd lease subnets from a
// real etcd and program each other, a flannel-style kernel-vxlan node joins
// from its own lease, and every pod reaches every other pod.
func TestWeftdSmoke(t *testing.T) {
	c := newLab(t, "")
	for _, name := range []string{"n1", "n2", "n3"} {
		mustAddWeftNode(t, c, name)
	}
	if _, err := c.AddFlannelNode("k1", netip.MustParsePrefix("10.244.200.0/24")); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if _, err := c.AddPod(n, "p1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.Nodes {
		if n.Kind != "weft" {
			continue
		}
		waitFor(t, 5*time.Second, func() bool { ts, _ := n.Tunnels(); return len(ts) == 3 }, "node %s has 3 tunnels", n.Name)
	}
	for _, from := range c.Nodes {
		for _, to := range c.Nodes {
			if from == to {
				continue
			}
			if out, err := ping(from.Pods[0].NSPath, to.Pods[0].IP, 2, 0); err != nil {
				t.Errorf("%s -> %s: %v\n%s", from.Name, to.Name, err, out)
			}
		}
	}
}
