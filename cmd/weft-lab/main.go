// Command weft-lab runs a Weft cluster on this machine, in network
// namespaces: an underlay segment, a real etcd reachable on it, one real
// weftd per node, pods wired as a container runtime would, and optionally
// flannel-style kernel-vxlan nodes sharing the cluster.
//
//	weft-lab up [--nodes 3] [--pods 2] [--flannel-nodes 0] [--ipv6]   build it and keep it running until Ctrl-C
//	weft-lab status                                          nodes, subnets, pods, tunnel tables
//	weft-lab down                                            remove everything a run made (also after a crash)
//	weft-lab demo                                            up, prove it works, down
//
// Needs root. Nothing outside the lab's namespaces is touched.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/weftnet/weft/cmd/internal/cliargs"
	"github.com/weftnet/weft/test/lab"
)

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"up", "build a lab cluster and keep it running until interrupted", runUp},
	{"status", "show the running lab: nodes, subnets, pods, tunnel tables", runStatus},
	{"down", "remove everything the last run made, also after a crash", runDown},
	{"demo", "up, ping matrix, tunnel table, TCP transfer, counters, down", runDemo},
}

var errUsage = errors.New("usage error")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// valueFlags are weft-lab's flags that take a separate value, so that they
// can be written before the command (cliargs.Normalize).
var valueFlags = map[string]bool{"--nodes": true, "--pods": true, "--flannel-nodes": true, "--bin-dir": true, "--run-root": true,
	"--store": true, "--manifest": true} // every flag but --wire-like and --ipv6

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	args = cliargs.Normalize(args, valueFlags)
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil, errors.Is(err, pflag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			fmt.Fprintf(stderr, "weft-lab %s: %v\n", c.name, err)
			return 2
		default:
			fmt.Fprintf(stderr, "weft-lab %s: %v\n", c.name, cliargs.NeedsRoot(err, "weft-lab"))
			return 1
		}
	}
	fmt.Fprintf(stderr, "weft-lab: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: weft-lab <command> [flags]   (as root)")
	fmt.Fprintln(w, "\nA Weft cluster in network namespaces on this machine.")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
}

// clusterFlags are up's and demo's shape of the cluster.
type clusterFlags struct {
	nodes, pods, flannelNodes int
	binDir, runRoot           string
	wireLike                  bool
	store, manifest           string
	ipv6                      bool
}

func addClusterFlags(fs *pflag.FlagSet, defFlannel int) *clusterFlags {
	cf := &clusterFlags{}
	self, _ := os.Executable()
	fs.IntVar(&cf.nodes, "nodes", 3, "Weft nodes (real weftd each)")
	fs.IntVar(&cf.pods, "pods", 2, "pods per node")
	fs.IntVar(&cf.flannelNodes, "flannel-nodes", defFlannel, "extra nodes with a kernel vxlan device programmed the flannel v3 way")
	fs.StringVar(&cf.binDir, "bin-dir", filepath.Dir(self), "directory holding weftd, weftctl and weft-cni")
	fs.StringVar(&cf.runRoot, "run-root", lab.DefaultRunRoot, "where runs keep their state")
	fs.BoolVar(&cf.wireLike, "wire-like", false, "make the underlay veths behave like a wire (segmentation offloads off, GRO on)")
	fs.StringVar(&cf.store, "store", "etcd", "where leases live: etcd (flannel's etcd schema) or kube (Node objects on a real kube-apiserver, weftd --kube-subnet-mgr)")
	fs.StringVar(&cf.manifest, "manifest", "", "with --store=kube: the manifest whose ServiceAccount and RBAC weftd runs with (default: deploy/kube-weft.yml as built in)")
	fs.BoolVar(&cf.ipv6, "ipv6", false, "dual-stack: IPv6 pods too (fd00:10:244::/48, a /64 per node) over an underlay with IPv6 (fd77::/64)")
	return cf
}

func (cf *clusterFlags) validate() error {
	switch {
	case cf.nodes < 1 || cf.nodes > 32:
		return fmt.Errorf("%w: --nodes %d: want 1..32", errUsage, cf.nodes)
	case cf.pods < 0 || cf.pods > 50:
		return fmt.Errorf("%w: --pods %d: want 0..50", errUsage, cf.pods)
	case cf.flannelNodes < 0 || cf.flannelNodes > 8:
		return fmt.Errorf("%w: --flannel-nodes %d: want 0..8", errUsage, cf.flannelNodes)
	case cf.store != string(lab.StoreEtcd) && cf.store != string(lab.StoreKube):
		return fmt.Errorf("%w: --store %q: want etcd or kube", errUsage, cf.store)
	}
	if cf.store == string(lab.StoreKube) && cf.manifest != "" {
		if _, err := os.Stat(cf.manifest); err != nil {
			return fmt.Errorf("%w: --manifest: %v", errUsage, err)
		}
	}
	for _, b := range []string{"weftd", "weftctl", "weft-cni"} {
		if _, err := os.Stat(filepath.Join(cf.binDir, b)); err != nil {
			return fmt.Errorf("%w: --bin-dir %s has no %s (run make build)", errUsage, cf.binDir, b)
		}
	}
	return nil
}

func newFlagSet(name string, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet("weft-lab "+name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %v", errUsage, fs.Args())
	}
	return nil
}
