// Command scale measures the control plane at 100, 1,000, 10,000 and 50,000
// remote nodes, Weft beside flannel's way in the same run on the same etcd
// data, and writes test/bench/out/scale.json and scale.png (issue 11):
//
//   - bulk programming: Weft's tunnels-map writes (weftd's own figure, the
//     kernel writes of its first reconcile) against flannel's per remote
//     host neighbour + FDB entry + route over netlink, programming only;
//     the store list both share is reported apart;
//   - cold start: weftd process start to every lease in its tunnels map;
//   - join: one more lease written to etcd until its entry is in the map on
//     another node (p50, p99), and the same through a watch + the three
//     netlink requests;
//   - weftd's RSS after the joins.
//
// Run it as root from the repository root (make bench does):
//
//	go run ./test/bench/scale [--bin-dir bin] [--nodes 100,1000,10000,50000] [--joins 100] [--rounds 3] [--store etcd,kube] [--write-budget 3m]
//
// Needs root. Everything lives in lab namespaces (test/lab) with a run-unique
// prefix and is removed at the end, also on failure or Ctrl-C. Only the
// control plane runs: no packets are sent.
//
// Fairness. Both sides program the same leases from the same etcd. Weft's
// programming time is weftd's own, from its log ("tunnels written in bulk",
// write_took); flannel's is measured in this process over one netlink
// socket held open for the whole run, which is cheaper than flanneld's
// package-level netlink calls (a socket per request): the comparison
// favours flannel. Joins are timed the same way on both sides: from the
// etcd put returning to the entry being visible (Weft: a kernel LPM lookup
// polled every 50 µs from outside weftd; flannel: in the watch loop, right
// after the last netlink request returns, so flannel's figure has no
// polling delay in it).
//
// Stores (--store, both by default, each on its own lab cluster, one after
// the other; see leaseStore):
//
//   - etcd: flannel's etcd schema, leases written in transactions of 128;
//     flannel's way follows them with an etcd watch.
//   - kube: flanneld's --kube-subnet-mgr schema on a real kube-apiserver
//     (test/kubetest, on the lab's etcd): remote node i is a Node with its
//     podCIDR and flannel's lease annotations, created by 32 parallel
//     requests without client-side rate limits; weftd runs as in the kube
//     lab (--kube-subnet-mgr, a ServiceAccount kubeconfig through a
//     forwarder on the underlay, --net-config-path). A join is one Node
//     created until its entry is in weftd's map; flannel's way is a Node
//     informer's add event and the netlink trio, with client-go's default
//     client (as weftd's). weftd reaches the apiserver through the lab's
//     forwarder on the underlay, flannel's way on loopback: that favours
//     flannel by one proxy hop per event. Creating Nodes is much slower than
//     etcd puts: a count whose Nodes would take longer than --write-budget
//     to create (estimated from the previous count's rate) is skipped, and
//     the run says so.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	flag "github.com/spf13/pflag"

	"github.com/weftnet/weft/test/lab"
)

type options struct {
	binDir string
	nodes  []int
	joins  int
	stores []string
	out    string
	rounds int
	// writeBudget bounds the setup time of one node count: a count whose
	// leases would take longer to write (at the rate measured for the
	// previous count) is skipped, and so are the larger ones.
	writeBudget time.Duration
	replot      string
}

func main() {
	var o options
	var nodes []string
	flag.StringVar(&o.binDir, "bin-dir", "bin", "directory holding weftd (built there with go build when missing)")
	flag.StringSliceVar(&nodes, "nodes", []string{"100", "1000", "10000", "50000"}, "remote node counts to measure, ascending")
	flag.IntVar(&o.joins, "joins", 100, "single leases added one at a time at each node count, to time one join (p50, p99)")
	flag.StringSliceVar(&o.stores, "store", []string{"etcd", "kube"}, "lease stores to measure: etcd (flannel's etcd schema), kube (Node objects on a real kube-apiserver)")
	flag.StringVar(&o.out, "out", "test/bench/out", "directory for scale.json and scale.png")
	flag.IntVar(&o.rounds, "rounds", 3, "weftd cold starts per node count (medians reported; flannel's way is programmed once)")
	flag.DurationVar(&o.writeBudget, "write-budget", 3*time.Minute, "skip a node count (and larger ones) whose leases would take longer than this to write into the store, estimated from the previous count's rate")
	flag.StringVar(&o.replot, "replot", "", "measure nothing: print the table and draw scale.png in --out from this scale.json")
	flag.Parse()
	for _, s := range nodes {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 60000 || (len(o.nodes) > 0 && n <= o.nodes[len(o.nodes)-1]) {
			fmt.Fprintln(os.Stderr, "scale: --nodes wants ascending counts in 1..60000")
			os.Exit(2)
		}
		o.nodes = append(o.nodes, n)
	}
	for _, s := range o.stores {
		if s != "etcd" && s != "kube" {
			fmt.Fprintf(os.Stderr, "scale: unknown store %q (have: etcd, kube)\n", s)
			os.Exit(2)
		}
	}
	if flag.NArg() > 0 || o.joins < 2 || o.rounds < 1 {
		fmt.Fprintln(os.Stderr, "scale: want --joins >= 2, --rounds >= 1 and no arguments")
		os.Exit(2)
	}
	if o.replot != "" {
		if err := replot(o); err != nil {
			fmt.Fprintln(os.Stderr, "scale:", err)
			os.Exit(1)
		}
		return
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "scale: needs root (network namespaces, BPF)")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	bin, err := weftdDir(o.binDir)
	if err != nil {
		return err
	}
	env := machine()
	var (
		rows  []result
		notes []string
	)
	for _, store := range o.stores {
		r, note, err := runStore(ctx, o, bin, store)
		rows = append(rows, r...)
		if note != "" {
			notes = append(notes, store+": "+note)
		}
		if err != nil {
			return err
		}
	}
	printTable(os.Stdout, env, rows)
	for _, n := range notes {
		fmt.Println(n)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(o.out, "scale.json"), rows); err != nil {
		return err
	}
	if err := writeChart(filepath.Join(o.out, "scale.png"), env, rows); err != nil {
		return err
	}
	fmt.Printf("\nwrote %s and %s\n", filepath.Join(o.out, "scale.json"), filepath.Join(o.out, "scale.png"))
	return nil
}

// replot redraws the chart of a finished run (the machine it ran on is
// taken to be this one).
func replot(o options) error {
	rows, err := readJSON(o.replot)
	if err != nil {
		return err
	}
	env := machine()
	printTable(os.Stdout, env, rows)
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	return writeChart(filepath.Join(o.out, "scale.png"), env, rows)
}

// runStore measures every node count on one lab cluster: leases are added
// between counts, and each count starts weftd cold on a wiped node. note
// says which counts were skipped for taking too long to set up.
func runStore(ctx context.Context, o options, bin, name string) (rows []result, note string, err error) {
	fmt.Printf("[%s] starting the lab (etcd%s)...\n", name, map[bool]string{true: ", kube-apiserver"}[name == "kube"])
	c, st, err := newStore(name, lab.Options{BinDir: bin, NetConfig: netConfig, ReadyTimeout: 3 * time.Minute,
		RunDir: filepath.Join(os.TempDir(), fmt.Sprintf("weft-scale-%s-%d", name, os.Getpid()))})
	if c == nil {
		return nil, "", err
	}
	closed := make(chan struct{})
	defer func() {
		close(closed)
		if es, ok := st.(*etcdStore); ok {
			es.close()
		}
		err = errors.Join(err, c.Close())
	}()
	if err != nil {
		return nil, "", err
	}
	go func() { // Ctrl-C: the deferred Close runs once run returns
		select {
		case <-ctx.Done():
			if c.Kube != nil {
				c.Kube.API.Stop()
			}
			c.Etcd.Stop() // unblock whatever waits on the store
		case <-closed:
		}
	}()
	store := name

	var n *lab.Node
	have := 0
	var perLease time.Duration // the last count's write time per lease
	for _, nodes := range o.nodes {
		if est := time.Duration(nodes-have) * perLease; est > o.writeBudget {
			note = fmt.Sprintf("%d nodes and above skipped: writing %d more leases would take ~%v at the %.0f/s measured up to %d (--write-budget %v)",
				nodes, nodes-have, est.Round(time.Second), float64(time.Second)/float64(perLease), have, o.writeBudget)
			fmt.Printf("[%s] %s\n", store, note)
			break
		}
		fmt.Printf("[%s] writing leases %d..%d...\n", store, have, nodes)
		t0 := time.Now()
		if err := st.write(ctx, have, nodes); err != nil {
			return rows, note, err
		}
		took := time.Since(t0)
		perLease = took / time.Duration(nodes-have)
		fmt.Printf("[%s] wrote %d leases in %v (%.0f/s)\n", store, nodes-have, took.Round(time.Millisecond), float64(nodes-have)/took.Seconds())
		have = nodes
		r := result{Store: store, Nodes: nodes, Joins: o.joins, LoadAvg: loadAvg()}

		// Weft's cold starts are cheap: several, and the medians, since a
		// shared machine's load moves single figures by up to 3x.
		var colds, writes []time.Duration
		for round := range o.rounds {
			var w weftResult
			if n, w, err = weftColdStart(ctx, c, n, nodes); err != nil {
				return rows, note, err
			}
			colds, writes = append(colds, w.coldStart), append(writes, w.program)
			fmt.Printf("[%s %6d] weftd cold start %d: %v (kernel writes %v, batch syscalls %v)\n", store, nodes, round+1,
				w.coldStart.Round(time.Millisecond), w.program.Round(time.Microsecond), w.batched)
		}
		r.ColdStartMS, r.WeftProgramMS, r.Rounds = ms(median(colds)), ms(median(writes)), o.rounds

		fn, err := newFlannelNode(c, fmt.Sprintf("f%d", len(rows)))
		if err != nil {
			return rows, note, err
		}
		f, err := flannelProgram(ctx, st, fn, nodes)
		if err != nil {
			fn.h.Close()
			return rows, note, err
		}
		r.FlannelListMS, r.FlannelProgramMS = ms(f.list), ms(f.program)
		r.BulkRatio = f.program.Seconds() / median(writes).Seconds()
		fmt.Printf("[%s %6d] flannel list+decode %v, netlink %v (%d routes, %d neighbours, %d fdb): %.0fx Weft's writes\n", store, nodes,
			f.list.Round(time.Millisecond), f.program.Round(time.Millisecond), f.routes, f.neighs, f.fdb, r.BulkRatio)

		joins, err := timeJoins(ctx, st, n, nodes, o.joins)
		if err != nil {
			fn.h.Close()
			return rows, note, err
		}
		r.JoinP50MS, r.JoinP99MS, r.JoinMaxMS = ms(pct(joins, 50)), ms(pct(joins, 99)), ms(joins[len(joins)-1])
		mem := readRSS(n.Cmd.Process.Pid)
		r.RSSMB, r.RSSHWMMB, r.RSSAnonMB, r.RSSFileMB = mem.rss, mem.hwm, mem.anon, mem.file

		// The flannel node follows the leases Weft's joins added, as its
		// watch would have, then times its own joins on top.
		for i := nodes; i < nodes+o.joins; i++ {
			sn, ip, mac := remote(i)
			if err := fn.program(peer{sn: sn, ip: ip.AsSlice(), mac: mac}); err != nil {
				fn.h.Close()
				return rows, note, err
			}
		}
		fjoins, err := flannelJoins(ctx, st, fn, nodes+o.joins, o.joins)
		fn.h.Close()
		if err != nil {
			return rows, note, err
		}
		r.FlannelJoinP50MS, r.FlannelJoinP99MS = ms(pct(fjoins, 50)), ms(pct(fjoins, 99))
		fmt.Printf("[%s %6d] join p50 %.3f ms p99 %.3f ms (flannel p50 %.3f ms p99 %.3f ms); weftd RSS %.1f MB (HWM %.1f MB; anon %.1f, file %.1f)\n",
			store, nodes, r.JoinP50MS, r.JoinP99MS, r.FlannelJoinP50MS, r.FlannelJoinP99MS, r.RSSMB, r.RSSHWMMB, r.RSSAnonMB, r.RSSFileMB)

		// Back to exactly N leases for the next count.
		if err := st.remove(ctx, nodes, nodes+2*o.joins); err != nil {
			return rows, note, err
		}
		rows = append(rows, r)
	}
	return rows, note, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// pct is the p-th percentile (nearest rank) of sorted ds.
func pct(ds []time.Duration, p int) time.Duration {
	i := (len(ds)*p+99)/100 - 1
	return ds[max(0, min(i, len(ds)-1))]
}

// weftdDir returns a directory holding weftd, building it if missing.
func weftdDir(dir string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "weftd")); err == nil {
		return filepath.Abs(dir)
	}
	tmp, err := os.MkdirTemp("", "weft-scale-bin-")
	if err != nil {
		return "", err
	}
	if out, err := exec.Command("go", "build", "-o", tmp+"/", "./cmd/weftd").CombinedOutput(); err != nil {
		return "", fmt.Errorf("no weftd in %s and go build ./cmd/weftd failed (run from the repository root): %w\n%s", dir, err, out)
	}
	return tmp, nil
}

type machineEnv struct{ machine, kernel string }

func machine() machineEnv {
	var u syscall.Utsname
	syscall.Uname(&u)
	b := make([]byte, 0, len(u.Release))
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return machineEnv{machine: fmt.Sprintf("%d CPUs", runtime.NumCPU()), kernel: string(b)}
}

// loadAvg is /proc/loadavg's 1-minute figure: the machine is shared, and
// the figures mean more beside it.
func loadAvg() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
