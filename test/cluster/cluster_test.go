package cluster_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/weftnet/weft/test/cluster"
)

// TestEveryDataPlaneCarriesPodTraffic builds each data plane on both
// underlay flavours and pings pod to pod across nodes, both ways.
func TestEveryDataPlaneCarriesPodTraffic(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, BPF)")
	}
	for _, wire := range []bool{false, true} {
		for _, dp := range cluster.DataPlanes {
			name := string(dp)
			if wire {
				name += "/wire-like"
			}
			t.Run(name, func(t *testing.T) {
				c, err := cluster.New(cluster.Options{DataPlane: dp, WireLike: wire})
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
				if st["encap"] == 0 || st["deliver"] == 0 {
					t.Errorf("node b counters: encap %d deliver %d, want both > 0", st["encap"], st["deliver"])
				}
			})
		}
	}
}
