package test

import (
	"testing"
)

// TestWeftdSmoke: three nodes running the real weftd lease subnets from a
// real etcd, program each other, and their pods reach each other.
func TestWeftdSmoke(t *testing.T) {
	c := newDaemonCluster(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	var nodes []*daemonNode
	for _, name := range []string{"n1", "n2", "n3"} {
		n := c.addNode(t, name)
		c.startWeftd(t, n)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		c.addPod(t, n)
	}
	// Every weftd programs the other two.
	for _, n := range nodes {
		waitFor(t, 5e9, func() bool { return len(n.tunnels(t)) == 2 }, "node %s has 2 tunnels", n.name)
	}
	for _, from := range nodes {
		for _, to := range nodes {
			if from == to {
				continue
			}
			if out, err := ping(from.pods[0].NSPath, to.pods[0].IP, 2, 0); err != nil {
				t.Errorf("%s -> %s: %v\n%s", from.name, to.name, err, out)
			}
		}
	}
}
