package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/weftnet/weft/test/cluster"
)

// TestWriteChart draws every data plane on every underlay from made-up
// medians; no root needed. CHART_OUT=<file> keeps the PNG for a look.
func TestWriteChart(t *testing.T) {
	med := map[cluster.DataPlane]map[string]float64{}
	for i, dp := range cluster.DataPlanes {
		med[dp] = map[string]float64{}
		for j, m := range allMetrics {
			med[dp][m] = 1 + 0.1*float64(i) + 0.05*float64(j)
		}
	}
	var panels []chartPanel
	for _, u := range underlays {
		panels = append(panels, chartPanel{config: u.name, metrics: allMetrics, dataplanes: cluster.DataPlanes, medians: med})
	}
	out := os.Getenv("CHART_OUT")
	if out == "" {
		out = filepath.Join(t.TempDir(), "ratios.png")
	}
	if err := writeChart(out, machineEnv{machine: "test", kernel: "test"}, 3, panels); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(out)
	if err != nil || st.Size() < 10000 {
		t.Fatalf("chart %s: %v, %d bytes", out, err, st.Size())
	}
}
