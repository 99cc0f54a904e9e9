package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/weftnet/weft/test/lab"
)

// currentLink points at the newest run's directory, so status and down need
// no arguments.
func currentLink(runRoot string) string { return filepath.Join(runRoot, "current") }

// The --ipv6 lab's IPv6 pod network and underlay.
var (
	network6  = netip.MustParsePrefix("fd00:10:244::/48")
	underlay6 = netip.MustParsePrefix("fd77::/64")
)

// build makes the cluster the flags describe and records it.
func build(cf *clusterFlags, stdout io.Writer) (*lab.Cluster, error) {
	logf := func(format string, args ...any) {
		fmt.Fprintf(stdout, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
	opts := lab.Options{BinDir: cf.binDir, WireLike: cf.wireLike, Logf: logf,
		RunRoot: cf.runRoot, Network: netip.MustParsePrefix("10.244.0.0/16"),
		Store: lab.Store(cf.store), Manifest: cf.manifest}
	if cf.ipv6 {
		opts.Network6, opts.UnderlayCIDR6 = network6, underlay6
	}
	c, err := lab.New(opts)
	if err != nil {
		return nil, err
	}
	os.Remove(currentLink(cf.runRoot))
	os.Symlink(c.Opts.RunDir, currentLink(cf.runRoot))
	fail := func(err error) (*lab.Cluster, error) {
		c.Close()
		os.Remove(currentLink(cf.runRoot))
		return nil, err
	}
	for i := 1; i <= cf.nodes; i++ {
		if _, err := c.AddWeftNode(fmt.Sprintf("node%d", i)); err != nil {
			return fail(err)
		}
	}
	for i := 1; i <= cf.flannelNodes; i++ {
		sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(200 + i), 0}), 24)
		var sn6 netip.Prefix // the /64 number 200+i of network6, beside the IPv4 one
		if cf.ipv6 {
			b := network6.Addr().As16()
			b[7] = byte(200 + i)
			sn6 = netip.PrefixFrom(netip.AddrFrom16(b), 64)
		}
		if _, err := c.AddFlannelNodeDual(fmt.Sprintf("flannel%d", i), sn, sn6); err != nil {
			return fail(err)
		}
	}
	for _, n := range c.Nodes {
		for j := 1; j <= cf.pods; j++ {
			if _, err := c.AddPod(n, fmt.Sprintf("pod%d", j)); err != nil {
				return fail(err)
			}
		}
		logf("node %s: %d pods", n.Name, len(n.Pods))
	}
	if err := c.SaveState(); err != nil {
		return fail(err)
	}
	// Let every weftd see every lease before anyone pings: a tunnel per
	// remote subnet, two per node with --ipv6.
	want := len(c.Nodes) - 1
	if cf.ipv6 {
		want *= 2
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range c.Nodes {
		if n.Kind != lab.KindWeft {
			continue
		}
		for {
			ts, err := n.Tunnels()
			if err == nil && len(ts) == want {
				break
			}
			if time.Now().After(deadline) {
				return fail(fmt.Errorf("node %s has %d tunnels, want %d", n.Name, len(ts), want))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return c, nil
}

func runUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("up", stderr)
	cf := addClusterFlags(fs, 0)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cf.validate(); err != nil {
		return err
	}
	c, err := build(cf, stdout)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(stdout, "tearing the lab down")
		c.Close()
		os.Remove(currentLink(cf.runRoot))
	}()
	where := "etcd " + c.Fwd.URL()
	if c.Kube != nil {
		where = "kube-apiserver " + c.Kube.Fwd.URL() + " on the underlay, " + c.Kube.API.URL + " here"
	}
	fmt.Fprintf(stdout, "\nlab %s is up (%s). In another shell: weft-lab status | weft-lab down. Ctrl-C here tears it down.\n",
		c.Opts.Prefix, where)
	<-ctx.Done()
	return nil
}

func runStatus(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", stderr)
	runRoot := fs.String("run-root", lab.DefaultRunRoot, "where runs keep their state")
	binDir := fs.String("bin-dir", func() string { s, _ := os.Executable(); return filepath.Dir(s) }(), "directory holding weftctl")
	if err := parse(fs, args); err != nil {
		return err
	}
	dir, err := filepath.EvalSymlinks(currentLink(*runRoot))
	if err != nil {
		return fmt.Errorf("no lab is running (no %s)", currentLink(*runRoot))
	}
	st, err := lab.LoadState(dir)
	if err != nil {
		return err
	}
	store := "etcd " + st.Etcd
	if st.KubeAPI != "" {
		store = "kube-apiserver " + st.KubeAPI
	}
	fmt.Fprintf(stdout, "lab %s (pid %d), %s, state in %s\n\n", st.Prefix, st.PID, store, st.RunDir)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tKIND\tUNDERLAY\tSUBNET\tPODS")
	for _, n := range st.Nodes {
		var pods []string
		for _, p := range n.Pods {
			pod := p.Name + "=" + p.IP.String()
			if p.IP6.IsValid() {
				pod += "," + p.IP6.String()
			}
			pods = append(pods, pod)
		}
		subnet := strings.Trim(n.Subnet+","+n.Subnet6, ",") // either may be absent
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.Kind, n.UnderlayIP, subnet, strings.Join(pods, " "))
	}
	tw.Flush()
	for _, n := range st.Nodes {
		if n.Kind != lab.KindWeft {
			continue
		}
		fmt.Fprintf(stdout, "\ntunnels on %s (weftctl tunnels):\n", n.Name)
		out, err := weftctl(*binDir, n, "tunnels")
		if err != nil {
			return err
		}
		stdout.Write(out)
	}
	return nil
}

// weftctl runs weftctl in the node's network namespace against its pins.
func weftctl(binDir string, n lab.NodeState, args ...string) ([]byte, error) {
	full := append([]string{"--net=" + n.NSPath, "--", filepath.Join(binDir, "weftctl")}, args...)
	full = append(full, "--pin-path", n.PinPath)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("weftctl %v on %s: %w: %s", args, n.Name, err, out)
	}
	return out, nil
}

func runDown(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("down", stderr)
	runRoot := fs.String("run-root", lab.DefaultRunRoot, "where runs keep their state")
	if err := parse(fs, args); err != nil {
		return err
	}
	link := currentLink(*runRoot)
	dir, err := filepath.EvalSymlinks(link)
	if err != nil {
		fmt.Fprintln(stdout, "no lab to tear down")
		return nil
	}
	if err := lab.Down(dir); err != nil {
		return err
	}
	os.Remove(link)
	fmt.Fprintf(stdout, "removed lab in %s\n", dir)
	return nil
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", stderr)
	cf := addClusterFlags(fs, 1)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cf.validate(); err != nil {
		return err
	}
	start := time.Now()
	step := func(format string, args ...any) {
		fmt.Fprintf(stdout, "\n== %s (%.0fs)\n", fmt.Sprintf(format, args...), time.Since(start).Seconds())
	}
	step("building a lab: %d Weft nodes, %d flannel-style kernel-vxlan nodes, %d pods each", cf.nodes, cf.flannelNodes, cf.pods)
	c, err := build(cf, stdout)
	if err != nil {
		return err
	}
	defer func() {
		step("tearing the lab down")
		if err := c.Close(); err != nil {
			fmt.Fprintf(stderr, "teardown: %v\n", err)
		}
		os.Remove(currentLink(cf.runRoot))
		fmt.Fprintf(stdout, "done in %.0fs\n", time.Since(start).Seconds())
	}()

	step("ping matrix: every pod to every pod")
	failed := pingMatrix(ctx, c, stdout, false)
	if cf.ipv6 {
		step("ping matrix over IPv6: every pod to every pod")
		failed += pingMatrix(ctx, c, stdout, true)
	}

	var firstWeft *lab.Node
	for _, n := range c.Nodes {
		if n.Kind == lab.KindWeft {
			firstWeft = n
			break
		}
	}
	ns := lab.NodeState{Name: firstWeft.Name, NSPath: firstWeft.Topo.NSPath, PinPath: firstWeft.PinPath}
	step("tunnel table of %s (weftctl tunnels)", firstWeft.Name)
	if out, err := weftctl(cf.binDir, ns, "tunnels"); err == nil {
		stdout.Write(out)
	} else {
		return err
	}

	for _, v6 := range []bool{false, true} {
		if len(c.Nodes) < 2 || cf.pods == 0 || v6 && !cf.ipv6 {
			break
		}
		src, dst := c.Nodes[0].Pods[0], c.Nodes[len(c.Nodes)-1].Pods[0]
		dstIP, family := dst.IP, ""
		if v6 {
			dstIP, family = dst.IP6, " over IPv6"
		}
		const size = 200 << 20
		step("TCP transfer%s: 200 MB from %s/%s to %s/%s", family, c.Nodes[0].Name, src.Name, c.Nodes[len(c.Nodes)-1].Name, dst.Name)
		tctx, cancel := context.WithTimeout(ctx, time.Minute)
		res, err := lab.TransferTCP(tctx, src.NSPath, dst.NSPath, dstIP, size)
		cancel()
		switch {
		case err != nil:
			fmt.Fprintf(stdout, "transfer failed: %v\n", err)
			failed++
		case !res.Intact(size):
			fmt.Fprintf(stdout, "transfer corrupted: %d bytes, sha256 %s vs %s\n", res.Bytes, res.RecvSum, res.SentSum)
			failed++
		default:
			fmt.Fprintf(stdout, "%d MB intact (sha256 %.16s…) in %.2fs: %.2f Gbit/s\n", res.Bytes>>20, res.RecvSum, res.Duration.Seconds(), res.Gbps())
		}
	}

	step("counters of %s (weftctl stats)", firstWeft.Name)
	if out, err := weftctl(cf.binDir, ns, "stats"); err == nil {
		stdout.Write(out)
	} else {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d checks failed", failed)
	}
	step("all pod pairs reachable, transfer intact")
	return nil
}

// pingMatrix pings every pod from every pod on the pods' IPv4 (IPv6 with
// v6) addresses, prints a grid of OK/FAIL and returns how many pairs failed.
func pingMatrix(ctx context.Context, c *lab.Cluster, stdout io.Writer, v6 bool) int {
	type podRef struct {
		label, ns string
		ip        netip.Addr
	}
	var pods []podRef
	for _, n := range c.Nodes {
		for _, p := range n.Pods {
			ip := p.IP
			if v6 {
				ip = p.IP6
			}
			pods = append(pods, podRef{label: n.Name + "/" + p.Name, ns: p.NSPath, ip: ip})
		}
	}
	ok := make([][]bool, len(pods))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 6)
	for i := range pods {
		ok[i] = make([]bool, len(pods))
		for j := range pods {
			if i == j {
				ok[i][j] = true
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				defer cancel()
				_, err := lab.Ping(pctx, pods[i].ns, pods[j].ip, 2, 0)
				ok[i][j] = err == nil
			}()
		}
	}
	wg.Wait()
	tw := tabwriter.NewWriter(stdout, 0, 0, 1, ' ', 0)
	fmt.Fprint(tw, "from \\ to\t")
	for j := range pods {
		fmt.Fprintf(tw, "%d\t", j+1)
	}
	fmt.Fprintln(tw)
	failed := 0
	for i := range pods {
		fmt.Fprintf(tw, "%d %s (%s)\t", i+1, pods[i].label, pods[i].ip)
		for j := range pods {
			switch {
			case i == j:
				fmt.Fprint(tw, "-\t")
			case ok[i][j]:
				fmt.Fprint(tw, "OK\t")
			default:
				fmt.Fprint(tw, "FAIL\t")
				failed++
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "%d of %d pairs OK\n", len(pods)*(len(pods)-1)-failed, len(pods)*(len(pods)-1))
	return failed
}
