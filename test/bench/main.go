// Command bench measures pod-to-pod traffic across nodes for every data
// plane in one run: host-gw (no encapsulation, the limit), kernel-vxlan
// (flannel v3), kernel-collect-md (Cilium-style BPF + external vxlan
// device), weft-tc, weft-xdp and weft-direct (Weft's DirectRouting: BPF
// forwarding without encapsulation). Each data plane gets an identical fresh
// topology (test/cluster) per underlay, data planes are interleaved round by
// round, and the report gives medians with min-max and ratios.
//
// Underlays (--config): wire (2 nodes, both ends of every underlay veth
// wire-like: the headline), bridged (3 nodes on one Linux bridge, wire-like
// at the node end only, the bridge ports at veth defaults with TSO on, as
// kind-like nodes have them: no GRO before the receiving node's tc hook),
// veth (veth defaults everywhere) and ipv6 (wire, with IPv6 on the underlay
// and dual-stack pods, measured over IPv6; kernel-collect-md sits it out).
//
//	go run ./test/bench [--rounds 3] [--duration 3s] [--config all|wire,bridged,veth,ipv6]
//	                    [--dataplanes host-gw,...] [--metrics tcp_1_gbps,...] [--out test/bench/out]
//	                    [--pin] [--only weft-tc:tcp_1_gbps [--perf FILE] [--bpf-stats]]
//
// --only runs one data plane and one metric (one round unless --rounds is
// given) and prints when the measured window starts and ends, for perf or
// bpf_stats profiling from another shell; --perf and --bpf-stats do both
// over exactly that window (profile.go, `make profile`).
//
// Needs root, iperf3, sockperf, ethtool. Everything runs in network
// namespaces named with a run-unique prefix; Weft pins go under
// /sys/fs/bpf/weft-bench-<prefix>; all of it is removed at the end, also on
// failure or Ctrl-C.
package main

import (
	"context"
	"errors"
	"fmt"
	flag "github.com/spf13/pflag"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/test/cluster"
	"github.com/weftnet/weft/test/topo"
)

// underlay configurations
const (
	cfgWire    = "wire-like"
	cfgBridged = "bridged"
	cfgVeth    = "default-veth"
	// cfgIPv6 is the wire-like underlay with IPv6 on it and dual-stack
	// pods, measured pod to pod over IPv6 (issue 14): beside wire-like's
	// IPv4 numbers, what the second family costs each data plane.
	cfgIPv6 = "wire-like-ipv6"
)

// underlays maps --config names to configurations, in report order.
var underlays = []struct{ flag, name string }{{"wire", cfgWire}, {"bridged", cfgBridged}, {"veth", cfgVeth}, {"ipv6", cfgIPv6}}

// The ipv6 configuration's pod network and underlay.
var (
	benchNetwork6  = netip.MustParsePrefix("fd00:10:244::/48")
	benchUnderlay6 = netip.MustParsePrefix("fd77::/64")
)

// shapeFamilies gives the ipv6 configuration's cluster dual-stack pods and
// IPv6 on the underlay; other configurations stay IPv4.
func shapeFamilies(cfg string, co cluster.Options) cluster.Options {
	if cfg == cfgIPv6 {
		co.Network6, co.Lab.UnderlayCIDR6 = benchNetwork6, benchUnderlay6
	}
	return co
}

// carriesIPv6 says whether a data plane can carry IPv6 pods (collect-md's
// tc programs are IPv4 only).
func carriesIPv6(dp cluster.DataPlane) bool { return dp != cluster.KernelCollectMD }

// clusterShape is what each underlay configuration builds.
// switchGROOff turns GRO off on the bridge-side end of every node's
// underlay veth. Wire-like offloads have it on, so the bridge standing in
// for a switch coalesces plain TCP (host-gw, weft-direct) into super-packets
// before forwarding them and segments them again on the way out, while
// VXLAN (no tunnel socket in the underlay namespace) crosses it frame by
// frame: the same 2 CPUs pay the switch's work, and differently per data
// plane. Off, every data plane's frames cross it one by one, as through a
// switch; the nodes' own ends keep GRO.
func switchGROOff(ctx context.Context, c *cluster.Cluster) error {
	for _, n := range c.Nodes {
		if _, err := c.Lab.UnderlayExec(ctx, "ethtool", "-K", n.Topo.UnderlayPeer, "gro", "off"); err != nil {
			return fmt.Errorf("switch GRO off on %s: %w", n.Topo.UnderlayPeer, err)
		}
	}
	return nil
}

func clusterShape(cfg string) (nodes int, off topo.Offloads) {
	switch cfg {
	case cfgWire, cfgIPv6:
		return 2, topo.WireLike
	case cfgBridged:
		// The third node only hangs off the bridge, as on a shared segment.
		return 3, topo.NodeEndWireLike
	}
	return 2, topo.VethDefaults
}

type options struct {
	rounds     int
	duration   time.Duration
	configs    []string
	dataplanes []cluster.DataPlane
	metrics    map[string]bool
	out        string
	hold       string
	only       bool   // --only: announce the measured window
	pin        bool   // --pin
	perfOut    string // --perf: perf record -a -g over the window (with --only)
	bpfStats   bool   // --bpf-stats: Weft programs' run counts and times over the window (with --only)
	switchGRO  bool   // --switch-gro: GRO on the wire-like underlay's bridge-side ports (the default)
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (network namespaces, BPF)")
		os.Exit(1)
	}
	if err := lookTools(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	pinCPUs = o.pin
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	run := run
	if o.hold != "" {
		run = hold
	}
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	var o options
	var config, dps, metrics, only string
	flag := flag.NewFlagSet("bench", flag.ContinueOnError)
	flag.IntVar(&o.rounds, "rounds", 3, "rounds; data planes are interleaved within each round")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "length of each measurement")
	flag.StringVar(&config, "config", "all", "underlays, comma-separated: wire (2 nodes, wire-like offloads), bridged (3 nodes, wire-like at the node end, bridge ports with TSO on), veth (veth defaults); all; both = wire,veth")
	flag.StringVar(&dps, "dataplanes", joinDP(cluster.DataPlanes), "comma-separated data planes")
	flag.StringVar(&metrics, "metrics", strings.Join(allMetrics, ","), "comma-separated metrics (rr_* and cpu_* come with their test)")
	flag.StringVar(&o.out, "out", filepath.Join("test", "bench", "out"), "output directory")
	flag.BoolVar(&o.pin, "pin", false, "pin senders to CPU 0 and receivers to CPU 1 (iperf3 -A, taskset, sched_setaffinity): steadier on an idle machine, worse on a shared one")
	flag.StringVar(&only, "only", "", "PLANE:METRIC: run one data plane and one metric (1 round unless --rounds is given), for profiling")
	flag.StringVar(&o.perfOut, "perf", "", "with --only: record the measured window with `perf record -a -g` into this file")
	flag.BoolVar(&o.bpfStats, "bpf-stats", false, "with --only: print each Weft program's runs and average run time over the measured window (BPF_ENABLE_STATS, on for the window only)")
	flag.BoolVar(&o.switchGRO, "switch-gro", true, "wire underlay: GRO on the bridge-side veth ports, which coalesce plain TCP (not VXLAN) before the bridge forwards it; false forwards frame by frame, as a switch does")
	flag.StringVar(&o.hold, "hold", "", "build one cluster of this data plane (first --config), print its namespaces and keep it until Ctrl-C: for profiling by hand")
	if err := flag.Parse(args); err != nil {
		return o, err
	}
	if flag.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if o.rounds < 1 || o.duration < time.Second {
		return o, errors.New("--rounds must be >= 1 and --duration >= 1s")
	}
	switch config {
	case "all":
		config = "wire,bridged,veth,ipv6"
	case "both":
		config = "wire,veth"
	}
	for _, s := range strings.Split(config, ",") {
		found := false
		for _, u := range underlays {
			if strings.TrimSpace(s) == u.flag {
				o.configs, found = append(o.configs, u.name), true
			}
		}
		if !found {
			return o, fmt.Errorf("--config %q: want a comma-separated list of wire, bridged, veth, ipv6, or all", config)
		}
	}
	if (o.perfOut != "" || o.bpfStats) && only == "" {
		return o, errors.New("--perf and --bpf-stats profile one --only run")
	}
	if only != "" {
		dp, m, ok := strings.Cut(only, ":")
		if !ok {
			return o, fmt.Errorf("--only %q: want PLANE:METRIC, e.g. weft-tc:tcp_1_gbps", only)
		}
		dps, metrics = dp, m
		if !flag.Changed("rounds") {
			o.rounds = 1
		}
		o.only = true
	}
	for _, s := range strings.Split(dps, ",") {
		dp, err := cluster.ParseDataPlane(strings.TrimSpace(s))
		if err != nil {
			return o, err
		}
		o.dataplanes = append(o.dataplanes, dp)
	}
	o.metrics = map[string]bool{}
	for _, s := range strings.Split(metrics, ",") {
		s = strings.TrimSpace(s)
		ok := false
		for _, m := range allMetrics {
			ok = ok || m == s
		}
		if !ok {
			return o, fmt.Errorf("--metrics: unknown metric %q (have %s)", s, strings.Join(allMetrics, ", "))
		}
		o.metrics[s] = true
	}
	return o, nil
}

func joinDP(dps []cluster.DataPlane) string {
	s := make([]string, len(dps))
	for i, d := range dps {
		s[i] = string(d)
	}
	return strings.Join(s, ",")
}

// results[config][dataplane][metric] = one value per round
type results map[string]map[cluster.DataPlane]map[string][]float64

func (r results) add(cfg string, dp cluster.DataPlane, metric string, v float64) {
	if r[cfg] == nil {
		r[cfg] = map[cluster.DataPlane]map[string][]float64{}
	}
	if r[cfg][dp] == nil {
		r[cfg][dp] = map[string][]float64{}
	}
	r[cfg][dp][metric] = append(r[cfg][dp][metric], v)
}

func run(ctx context.Context, o options) error {
	runID := "wb" + randomHex(3)
	pinRoot := filepath.Join(loader.BPFFSRoot, "weft-bench-"+runID)
	if err := loader.EnsureBPFFS(loader.BPFFSRoot); err != nil {
		return err
	}
	var prefixes []string
	defer func() {
		// Whatever a failed Close left behind (it logs its own errors).
		for _, p := range prefixes {
			topo.CleanupPrefix(p)
		}
		os.RemoveAll(pinRoot)
	}()

	env := describeMachine()
	start := time.Now()
	fmt.Printf("weft bench %s: %s, kernel %s, %d rounds x %d data planes x %d configs, %v per test\n",
		runID, env.machine, env.kernel, o.rounds, len(o.dataplanes), len(o.configs), o.duration)
	fmt.Printf("load average at start: %s\n", loadAvg())

	res := results{}
	noise := map[string][]string{}
	seq := 0
	for _, cfg := range o.configs {
		for round := 1; round <= o.rounds; round++ {
			for _, dp := range o.dataplanes {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if cfg == cfgIPv6 && !carriesIPv6(dp) {
					continue
				}
				seq++
				prefix := fmt.Sprintf("%s_%d", runID, seq)
				prefixes = append(prefixes, prefix)
				tag := fmt.Sprintf("[%s r%d/%d %-17s]", cfg, round, o.rounds, dp)
				if err := measureOne(ctx, o, cfg, dp, prefix, pinRoot, tag, res); err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					fmt.Printf("%s FAILED: %v\n", tag, err)
					noise[cfg] = append(noise[cfg], fmt.Sprintf("round %d %s failed: %v", round, dp, err))
				}
			}
		}
		noise[cfg] = append(noise[cfg], "load average after: "+loadAvg())
	}
	fmt.Printf("done in %v; load average at end: %s\n\n", time.Since(start).Round(time.Second), loadAvg())
	return report(o, env, res, noise)
}

// measureOne builds one cluster, runs every metric on it and tears it down.
func measureOne(ctx context.Context, o options, cfg string, dp cluster.DataPlane, prefix, pinRoot, tag string, res results) (err error) {
	nodes, off := clusterShape(cfg)
	co := cluster.Options{
		DataPlane: dp,
		Nodes:     nodes,
		Offloads:  off,
		Lab:       topo.Options{Prefix: prefix},
		PinRoot:   filepath.Join(pinRoot, prefix),
	}
	c, err := cluster.New(shapeFamilies(cfg, co))
	if err != nil {
		return fmt.Errorf("build: %w", err)
	}
	defer func() {
		if cerr := c.Close(); cerr != nil {
			fmt.Printf("%s teardown: %v\n", tag, cerr)
		}
	}()
	if !o.switchGRO && cfg == cfgWire {
		if err := switchGROOff(ctx, c); err != nil {
			return err
		}
	}
	src, dst := c.Nodes[0].Pods[0], c.Nodes[1].Pods[0]
	if cfg == cfgIPv6 { // every measurement addresses dst.IP: make it the IPv6 one
		d := *dst
		d.IP, d.Prefix = d.IP6, d.Prefix6
		dst = &d
	}
	if err := startServers(dst); err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = src.Ping(pctx, dst.IP, 2) // neighbour entries, and a sanity check
	cancel()
	if err != nil {
		return err
	}
	report := func(metric string, v float64) {
		res.add(cfg, dp, metric, v)
		fmt.Printf("%s %-15s %12s %s\n", tag, metric, formatValue(metric, v), metricUnit[metric])
	}
	tctx, cancel := context.WithTimeout(ctx, 4*o.duration+30*time.Second)
	defer cancel()
	var errs []error
	for _, t := range []struct {
		metric  string
		streams int
	}{{mTCP1, 1}, {mTCP4, 4}} {
		if !o.metrics[t.metric] && !(t.streams == 1 && o.metrics[mTCPCPU]) {
			continue
		}
		before := rxStats(c)
		end := o.beginWindow(tag, t.metric, c)
		v, err := iperf3TCP(tctx, src, dst, t.streams, o.duration)
		end()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.metric, err))
			continue
		}
		if o.metrics[t.metric] {
			report(t.metric, v.gbps)
		}
		if t.streams == 1 && o.metrics[mTCPCPU] && v.cpuSPerGB > 0 {
			report(mTCPCPU, v.cpuSPerGB)
		}
		if line := rxSummary(before, rxStats(c)); line != "" {
			fmt.Printf("%s   (%s: %s)\n", tag, t.metric, line)
		}
	}
	if o.metrics[mUDP64] || o.metrics[mCPU] {
		end := o.beginWindow(tag, mUDP64, c)
		r, err := udpFlood(tctx, src, dst, 64, o.duration)
		end()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", mUDP64, err))
		} else {
			if o.metrics[mUDP64] {
				report(mUDP64, r.pps)
			}
			if o.metrics[mCPU] {
				report(mCPU, r.cpuNsPerPkt)
			}
			fmt.Printf("%s   (udp64: %d sent, %d received, %.0f%% delivered, CPUs %.0f%% busy)\n",
				tag, r.sent, r.recvd, 100*float64(r.recvd)/float64(max(r.sent, 1)), 100*r.busyFraction)
		}
	}
	if o.metrics[mUDP1400] {
		end := o.beginWindow(tag, mUDP1400, c)
		// The same 1428-byte IP packet in both families: 1400 bytes of
		// payload over IPv6 would not fit a 1430-byte pod MTU and fragment.
		size := 1400
		if dst.IP.Is6() {
			size -= 20
		}
		r, err := udpFlood(tctx, src, dst, size, o.duration)
		end()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", mUDP1400, err))
		} else {
			report(mUDP1400, r.gbps)
		}
	}
	if (o.metrics[mRRp50] || o.metrics[mRRp99]) && cfg == cfgIPv6 {
		// Debian's sockperf (3.7) refuses IPv6 addresses ("-i Invalid
		// address"); IPv6 support came in 3.8. Said once per cluster
		// rather than recorded as a failure every round.
		fmt.Printf("%s   (rr_*: not measured over IPv6: this sockperf takes IPv4 addresses only)\n", tag)
	} else if o.metrics[mRRp50] || o.metrics[mRRp99] {
		end := o.beginWindow(tag, "rr", c)
		p50, p99, err := sockperfRR(tctx, src, dst, o.duration)
		end()
		if err != nil {
			errs = append(errs, fmt.Errorf("rr: %w", err))
		} else {
			if o.metrics[mRRp50] {
				report(mRRp50, p50)
			}
			if o.metrics[mRRp99] {
				report(mRRp99, p99)
			}
		}
	}
	return errors.Join(errs...)
}

// window announces, with --only, when a measured window starts and ends
// (wall clock), so a profiler run from another shell can be matched to it.
func (o options) window(tag, what string, start bool) {
	if !o.only {
		return
	}
	ev := "end"
	if start {
		ev = "start"
	}
	fmt.Printf("%s %s window %s %s\n", tag, what, ev, time.Now().UTC().Format("15:04:05.000"))
}

// rxStats is the receiving node's data-plane counters (nil for the kernel data planes).
func rxStats(c *cluster.Cluster) map[string]uint64 {
	cs, err := c.Counters(c.Nodes[1])
	if err != nil || cs == nil {
		return nil
	}
	st := map[string]uint64{}
	for _, x := range cs {
		st[x.Name+"_packets"], st[x.Name+"_bytes"] = x.Packets, x.Bytes
	}
	return st
}

// rxSummary tells how much each receive program run carried during a test:
// bytes per decap (or per direct receive) and per delivery. Around 1.5 KB
// means nothing coalesced before the program; tens of KB, GRO did.
func rxSummary(before, after map[string]uint64) string {
	if before == nil || after == nil {
		return ""
	}
	var parts []string
	for _, k := range []string{"decap", "direct_rx", "deliver"} {
		p := after[k+"_packets"] - before[k+"_packets"]
		b := after[k+"_bytes"] - before[k+"_bytes"]
		if p == 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d runs, %.1f KB each", k, p, float64(b)/float64(p)/1e3))
	}
	return strings.Join(parts, "; ")
}

// hold builds one cluster and keeps it until the context ends.
func hold(ctx context.Context, o options) error {
	dp, err := cluster.ParseDataPlane(o.hold)
	if err != nil {
		return err
	}
	runID := "wb" + randomHex(3)
	pinRoot := filepath.Join(loader.BPFFSRoot, "weft-bench-"+runID)
	defer os.RemoveAll(pinRoot)
	defer topo.CleanupPrefix(runID)
	nodes, off := clusterShape(o.configs[0])
	c, err := cluster.New(shapeFamilies(o.configs[0], cluster.Options{DataPlane: dp, Nodes: nodes, Offloads: off,
		Lab: topo.Options{Prefix: runID}, PinRoot: pinRoot}))
	if err != nil {
		return err
	}
	defer c.Close()
	if err := startServers(c.Nodes[1].Pods[0]); err != nil {
		return err
	}
	fmt.Printf("%s (%s underlay) is up; iperf3 -s on :%d and sockperf server on :%d in the last pod. Ctrl-C tears it down.\n",
		dp, o.configs[0], iperfPort, sockperfPort)
	for _, n := range c.Nodes {
		fmt.Printf("node %s: %s underlay %s", n.Name, n.Topo.NSPath, n.Topo.UnderlayIP)
		if dp.Weft() {
			fmt.Printf(" pins %s", n.PinPath)
		}
		fmt.Println()
		for _, p := range n.Pods {
			fmt.Printf("  pod %s: %s %s (host side %s)\n", p.Name, p.NSPath, strings.Trim(fmt.Sprint(p.Addrs()), "[]"), p.HostIf)
		}
	}
	<-ctx.Done()
	return nil
}
