package cluster_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/weftnet/weft/test/cluster"
	"github.com/weftnet/weft/test/lab"
	"github.com/weftnet/weft/test/topo"
)

// TestGROCellFollowsTheUnderlay: Weft's receive path aggregates whether or
// not the underlay did. On the bridged underlay (bridge ports with TSO on:
// no GRO before tc) every decap (or DirectRouting receive) carries one
// segment and the GRO cell must coalesce them before delivery; on the
// wire-like underlay the underlay's GRO already delivers trains and the
// cell stays unused. Either way a TCP transfer arrives intact.
func TestGROCellFollowsTheUnderlay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, BPF)")
	}
	for _, tc := range []struct {
		name       string
		dp         cluster.DataPlane
		nodes      int
		off        topo.Offloads
		aggregated bool // by the underlay, before tc
	}{
		{"weft-tc/bridged", cluster.WeftTC, 3, topo.NodeEndWireLike, false},
		{"weft-tc/wire-like", cluster.WeftTC, 2, topo.WireLike, true},
		{"weft-direct/bridged", cluster.WeftDirect, 3, topo.NodeEndWireLike, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := cluster.New(cluster.Options{DataPlane: tc.dp, Nodes: tc.nodes, Offloads: tc.off})
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			defer func() {
				if err := c.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			src, dst := c.Nodes[0].Pods[0], c.Nodes[1].Pods[0]
			before := counters(t, c, c.Nodes[1])
			const size = 64 << 20
			res, err := lab.TransferTCP(ctx, src.NSPath, dst.NSPath, dst.IP, size)
			if err != nil {
				t.Fatalf("transfer: %v", err)
			}
			if !res.Intact(size) {
				t.Fatalf("received %d of %d bytes, sha256 %s, sent %s", res.Bytes, size, res.RecvSum, res.SentSum)
			}
			after := counters(t, c, c.Nodes[1])
			rx := "decap"
			if tc.dp == cluster.WeftDirect {
				rx = "direct_rx"
			}
			perDecap := perRun(before, after, rx)
			perDeliver := perRun(before, after, "deliver")
			t.Logf("%d MB intact at %.2f Gbit/s; %.1f KB per %s, %.1f KB per delivery",
				res.Bytes>>20, res.Gbps(), perDecap/1e3, rx, perDeliver/1e3)
			if aggregatedBefore := perDecap > 4000; aggregatedBefore != tc.aggregated {
				t.Errorf("%.0f bytes per %s: underlay aggregated = %v, the test expects %v", perDecap, rx, aggregatedBefore, tc.aggregated)
			}
			// A pure-ACK or push here and there is delivered alone; a working
			// aggregation still averages many segments per delivery.
			if perDeliver < 8000 {
				t.Errorf("%.0f bytes per delivery: nothing aggregated the decapsulated flow", perDeliver)
			}
		})
	}
}

func counters(t *testing.T, c *cluster.Cluster, n *cluster.Node) map[string][2]uint64 {
	t.Helper()
	cs, err := c.Counters(n)
	if err != nil {
		t.Fatalf("counters: %v", err)
	}
	out := map[string][2]uint64{}
	for _, x := range cs {
		out[x.Name] = [2]uint64{x.Packets, x.Bytes}
	}
	return out
}

// perRun is the bytes per program run a counter moved by between snapshots.
func perRun(before, after map[string][2]uint64, name string) float64 {
	p := after[name][0] - before[name][0]
	if p == 0 {
		return 0
	}
	return float64(after[name][1]-before[name][1]) / float64(p)
}
