package cluster_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/weftnet/weft/test/cluster"
	"github.com/weftnet/weft/test/topo"
)

// TestEveryDataPlaneCarriesPodTraffic builds each data plane on each
// underlay shape the benchmark uses and pings pod to pod across nodes,
// both ways.
func TestEveryDataPlaneCarriesPodTraffic(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, BPF)")
	}
	for _, off := range []topo.Offloads{topo.VethDefaults, topo.WireLike, topo.NodeEndWireLike} {
		nodes := 2
		if off == topo.NodeEndWireLike {
			nodes = 3 // the bench's bridged underlay
		}
		for _, dp := range cluster.DataPlanes {
			t.Run(string(dp)+"/"+off.String(), func(t *testing.T) {
				c, err := cluster.New(cluster.Options{DataPlane: dp, Nodes: nodes, Offloads: off})
				if err != nil {
					t.Fatalf("build: %v", err)
				}
				defer func() {
					if err := c.Close(); err != nil {
						t.Errorf("close: %v", err)
					}
				}()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				a, b := c.Nodes[0].Pods[0], c.Nodes[1].Pods[0]
				// The first packet may wait on neighbour resolution along the
				// way (seen once in ~20 runs on a loaded machine with host-gw):
				// poll until one gets through, then require every reply.
				for a.Ping(ctx, b.IP, 1) != nil && ctx.Err() == nil {
				}
				if err := a.Ping(ctx, b.IP, 3); err != nil {
					t.Errorf("a -> b: %v", err)
				}
				if err := b.Ping(ctx, a.IP, 3); err != nil {
					t.Errorf("b -> a: %v", err)
				}
				if dp == cluster.HostGW || dp == cluster.KernelVXLAN {
					return
				}
				st, err := c.Stats(c.Nodes[1])
				if err != nil {
					t.Fatalf("stats: %v", err)
				}
				tx, rx := "encap", "deliver"
				if dp == cluster.WeftDirect {
					tx, rx = "direct", "direct_rx"
				}
				if st[tx] == 0 || st[rx] == 0 {
					t.Errorf("node b counters: %s %d %s %d, want both > 0", tx, st[tx], rx, st[rx])
				}
			})
		}
	}
}
