package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/test/cluster"
)

type machineEnv struct{ machine, kernel string }

func describeMachine() machineEnv {
	model := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	var u unix.Utsname
	kernel := "unknown"
	if unix.Uname(&u) == nil {
		kernel = unix.ByteSliceToString(u.Release[:])
	}
	host, _ := os.Hostname()
	return machineEnv{
		machine: fmt.Sprintf("%d x %s (%s, %s)", runtime.NumCPU(), model, host, runtime.GOARCH),
		kernel:  kernel,
	}
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func formatValue(metric string, v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case metric == mUDP64:
		return fmt.Sprintf("%.0fk", v/1e3)
	case metric == mCPU:
		return fmt.Sprintf("%.0f", v)
	case metric == mTCPCPU:
		return fmt.Sprintf("%.3f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

type summary struct{ median, min, max float64 }

func summarize(vs []float64) (summary, bool) {
	if len(vs) == 0 {
		return summary{}, false
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return summary{median: med, min: s[0], max: s[n-1]}, true
}

// jsonResult is one entry of results.json.
type jsonResult struct {
	Dataplane string  `json:"dataplane"`
	Metric    string  `json:"metric"`
	Median    float64 `json:"median"`
	Min       float64 `json:"min"`
	Max       float64 `json:"max"`
}

type jsonFile struct {
	Machine string       `json:"machine"`
	Kernel  string       `json:"kernel"`
	Rounds  int          `json:"rounds"`
	Config  string       `json:"config"`
	Results []jsonResult `json:"results"`
}

// ratio pairs shown in the table: numerator / denominator.
// weft-tc's two bars come first: the targets (>= 1.0x host-gw,
// never below kernel vxlan).
var ratioPairs = [][2]cluster.DataPlane{
	{cluster.WeftTC, cluster.KernelVXLAN},
	{cluster.WeftTC, cluster.HostGW},
	{cluster.WeftXDP, cluster.KernelVXLAN},
	{cluster.WeftXDP, cluster.HostGW},
	{cluster.WeftDirect, cluster.HostGW},
	{cluster.KernelVXLAN, cluster.HostGW},
	{cluster.KernelCollectMD, cluster.HostGW},
}

func shortDP(d cluster.DataPlane) string {
	switch d {
	case cluster.KernelVXLAN:
		return "kvxlan"
	case cluster.KernelCollectMD:
		return "collect-md"
	case cluster.HostGW:
		return "host-gw"
	}
	return string(d)
}

// resultsFile names each underlay's JSON; the wire-like headline keeps the
// name it always had.
func resultsFile(cfg string) string {
	switch cfg {
	case cfgVeth:
		return "results-veth.json"
	case cfgBridged:
		return "results-bridged.json"
	case cfgIPv6:
		return "results-ipv6.json"
	}
	return "results.json"
}

func report(o options, env machineEnv, res results, notes map[string][]string) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	var metrics []string
	for _, m := range allMetrics {
		if o.metrics[m] {
			metrics = append(metrics, m)
		}
	}
	var charts []chartPanel
	for _, cfg := range o.configs {
		fmt.Printf("== %s underlay: %s, kernel %s, %d rounds, %v per test ==\n", cfg, env.machine, env.kernel, o.rounds, o.duration)
		fmt.Println("median (min-max) over rounds; Gbit/s and pkt/s: higher is better; rr_* (sockperf UDP ping-pong, half RTT), cpu_ns_per_pkt and tcp_cpu_s_per_gb: LOWER is better")
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		hdr := []string{"metric", "unit"}
		for _, dp := range o.dataplanes {
			hdr = append(hdr, string(dp))
		}
		fmt.Fprintln(tw, strings.Join(hdr, "\t")+"\t")
		jf := jsonFile{Machine: env.machine, Kernel: env.kernel, Rounds: o.rounds, Config: cfg}
		med := map[cluster.DataPlane]map[string]float64{}
		for _, m := range metrics {
			row := []string{m, metricUnit[m]}
			for _, dp := range o.dataplanes {
				s, ok := summarize(res[cfg][dp][m])
				if !ok {
					row = append(row, "-")
					continue
				}
				if med[dp] == nil {
					med[dp] = map[string]float64{}
				}
				med[dp][m] = s.median
				row = append(row, fmt.Sprintf("%s (%s-%s)", formatValue(m, s.median), formatValue(m, s.min), formatValue(m, s.max)))
				jf.Results = append(jf.Results, jsonResult{Dataplane: string(dp), Metric: m, Median: s.median, Min: s.min, Max: s.max})
			}
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		}
		tw.Flush()

		fmt.Println("ratios of medians (for rr_*, cpu_ns_per_pkt and tcp_cpu_s_per_gb < 1 is better):")
		tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		hdr = []string{"metric"}
		var pairs [][2]cluster.DataPlane
		for _, p := range ratioPairs {
			if med[p[0]] != nil && med[p[1]] != nil {
				pairs = append(pairs, p)
				hdr = append(hdr, shortDP(p[0])+"/"+shortDP(p[1]))
			}
		}
		fmt.Fprintln(tw, strings.Join(hdr, "\t")+"\t")
		for _, m := range metrics {
			row := []string{m}
			for _, p := range pairs {
				a, aok := med[p[0]][m]
				b, bok := med[p[1]][m]
				if !aok || !bok || b == 0 {
					row = append(row, "-")
					continue
				}
				row = append(row, fmt.Sprintf("%.2fx", a/b))
			}
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		}
		tw.Flush()
		for _, n := range notes[cfg] {
			fmt.Println("note:", n)
		}
		fmt.Println()

		name := resultsFile(cfg)
		b, err := json.MarshalIndent(jf, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(o.out, name), append(b, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Printf("wrote %s\n", filepath.Join(o.out, name))
		charts = append(charts, chartPanel{config: cfg, metrics: metrics, dataplanes: o.dataplanes, medians: med})
	}
	png := filepath.Join(o.out, "ratios.png")
	if err := writeChart(png, env, o.rounds, charts); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	fmt.Printf("wrote %s\n", png)
	return nil
}
