// Command scale measures the control plane at 10,000 remote nodes: how long
// weftd takes from its start to having every lease in its tunnels map, its
// memory, how long one more lease takes to appear, and, in the same run on
// the same etcd data, how long programming the same remote nodes the way
// flannel's vxlan backend does takes (list the leases, then per remote host
// a neighbour, an FDB entry and a route on a kernel vxlan device).
//
//	go run ./test/bench/scale [--bin-dir bin] [--leases 10000] [--joins 20] [--rounds 1]
//
// Needs root. Everything lives in lab namespaces (test/lab) with a run-unique
// prefix and is removed at the end, also on failure or Ctrl-C.
//
// Fairness. Both sides start from the same leases in the same etcd and end
// when the last remote host is programmed; neither counts process start-up.
// Weft's time is weftd's own, from its log: "data plane ready" (BPF loaded
// and attached, lease held) to "ready" (the subnets listed, validated and
// reconciled into the tunnels map). flannel's is measured in this process:
// one list of the subnets prefix, flannel's JSON decoding, then per remote
// host netlink NeighSet (ARP), NeighSet (FDB), RouteReplace, in flannel's
// order (vxlan_network.go handleSubnetEvents), over one netlink socket held
// open for the whole run, which is cheaper than flanneld's package-level
// netlink calls (a socket per request): the comparison favours flannel.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	flag "github.com/spf13/pflag"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/lab"
	"github.com/weftnet/weft/test/topo"
)

type options struct {
	binDir string
	leases int
	joins  int
	rounds int
}

func main() {
	var o options
	flag.StringVar(&o.binDir, "bin-dir", "bin", "directory holding weftd (built there with go build when missing)")
	flag.IntVar(&o.leases, "leases", 10000, "remote leases in etcd")
	flag.IntVar(&o.joins, "joins", 20, "single leases added one at a time after the bulk, to time one join")
	flag.IntVar(&o.rounds, "rounds", 1, "cold starts of each side")
	flag.Parse()
	if flag.NArg() > 0 || o.leases < 1 || o.leases > 60000 || o.joins < 1 || o.rounds < 1 {
		fmt.Fprintln(os.Stderr, "scale: want --leases 1..60000, --joins >= 1, --rounds >= 1, no arguments")
		os.Exit(2)
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

// network is large enough for 60,000 /24 leases.
const netConfig = `{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}`

var remotes = netip.MustParsePrefix("172.20.0.0/16")

// remote is the i-th remote node: subnet 10.1.0.0/24 onwards, PublicIP in
// 172.20.0.0/16 (a routed underlay: nothing is sent, so the addresses need
// not be on the lab's segment), a locally administered VtepMAC.
func remote(i int) (netip.Prefix, netip.Addr, net.HardwareAddr) {
	sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0}), 24)
	ip := netip.AddrFrom4([4]byte{172, 20, byte(i / 250), byte(1 + i%250)})
	return sn, ip, net.HardwareAddr{0x0e, 0x5c, 0, byte(i >> 16), byte(i >> 8), byte(i)}
}

func leaseJSON(ip netip.Addr, mac net.HardwareAddr) string {
	return fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}`, ip, mac)
}

func run(ctx context.Context, o options) (err error) {
	bin, err := weftdDir(o.binDir)
	if err != nil {
		return err
	}
	c, err := lab.New(lab.Options{BinDir: bin, NetConfig: netConfig,
		RunDir: filepath.Join(os.TempDir(), fmt.Sprintf("weft-scale-%d", os.Getpid()))})
	if err != nil {
		return err
	}
	closed := make(chan struct{})
	defer func() {
		close(closed)
		err = errors.Join(err, c.Close())
	}()
	go func() { // Ctrl-C: the deferred Close runs once run returns
		select {
		case <-ctx.Done():
			c.Etcd.Stop() // unblock whatever waits on etcd
		case <-closed:
		}
	}()

	cli, err := c.Etcd.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	fmt.Printf("writing %d leases (flannel JSON) into etcd...\n", o.leases)
	if err := writeLeases(ctx, cli, c.EtcdPrefix, 0, o.leases); err != nil {
		return err
	}

	var weft, flannel []time.Duration
	var (
		w  weftResult
		n  *lab.Node
		fn *flannelNode
	)
	for r := range o.rounds {
		if n, w, err = weftColdStart(ctx, c, n, o.leases); err != nil {
			return err
		}
		weft = append(weft, w.sync)
		fmt.Printf("round %d: weftd  %6d leases -> tunnels map: %8v (process start -> ready %v)\n", r+1, w.tunnels, w.sync.Round(time.Millisecond), w.total.Round(time.Millisecond))
		if fn, err = newFlannelNode(c, fmt.Sprintf("f%d", r)); err != nil {
			return err
		}
		defer fn.h.Close()
		f, err := flannelProgram(ctx, c, cli, fn, o.leases)
		if err != nil {
			return err
		}
		flannel = append(flannel, f.total)
		fmt.Printf("round %d: flannel %6d peers  -> kernel:       %8v (list+decode %v, netlink %v: %d routes, %d neighbours, %d fdb)\n",
			r+1, f.peers, f.total.Round(time.Millisecond), f.list.Round(time.Millisecond), f.program.Round(time.Millisecond), f.routes, f.neighs, f.fdb)
	}
	rssAfterStart := readRSS(n.Cmd.Process.Pid)

	joins, err := timeJoins(ctx, cli, c, n, o.leases, o.joins)
	if err != nil {
		return err
	}
	rss := readRSS(n.Cmd.Process.Pid)
	fjoins, err := flannelJoins(ctx, cli, c, fn, o.leases+o.joins, o.joins)
	if err != nil {
		return err
	}
	adopt, err := weftRestart(c, n)
	if err != nil {
		return err
	}

	ws, fs := median(weft), median(flannel)
	fmt.Println()
	fmt.Printf("Control plane at %d remote nodes (%d round(s), medians, %d CPUs)\n", o.leases, o.rounds, runtime.NumCPU())
	fmt.Printf("  weftd:   list + validate + all in the tunnels map          %8v\n", ws.Round(time.Millisecond))
	fmt.Printf("  flannel: list + decode + route, neighbour, FDB per host    %8v\n", fs.Round(time.Millisecond))
	fmt.Printf("  ratio flannel/weft                                         %8.1fx\n", fs.Seconds()/ws.Seconds())
	fmt.Printf("  weftd RSS after start: VmRSS %s, VmHWM %s; after %d joins: VmRSS %s, VmHWM %s\n",
		rssAfterStart.rss, rssAfterStart.hwm, o.joins, rss.rss, rss.hwm)
	fmt.Printf("  one more lease -> weftd's tunnels map (%d joins): p50 %v, max %v\n", o.joins,
		joins[len(joins)/2].Round(time.Microsecond), joins[len(joins)-1].Round(time.Microsecond))
	fmt.Printf("  one more lease -> flannel's kernel (watch + 3 netlink requests, in this process): p50 %v, max %v\n",
		fjoins[len(fjoins)/2].Round(time.Microsecond), fjoins[len(fjoins)-1].Round(time.Microsecond))
	fmt.Printf("  weftd restart adopting %d pinned tunnels, no writes: start -> ready %v\n", o.leases+2*o.joins, adopt.Round(time.Millisecond))
	return nil
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

// writeLeases puts leases [from, to) in transactions of 128 (etcd's
// default --max-txn-ops).
func writeLeases(ctx context.Context, cli *clientv3.Client, prefix string, from, to int) error {
	for i := from; i < to; {
		var ops []clientv3.Op
		for ; i < to && len(ops) < 128; i++ {
			sn, ip, mac := remote(i)
			ops = append(ops, clientv3.OpPut(leaseKey(prefix, sn), leaseJSON(ip, mac)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("write leases: %w", err)
		}
	}
	return nil
}

func leaseKey(prefix string, sn netip.Prefix) string {
	return fmt.Sprintf("%s/subnets/%s-%d", prefix, sn.Addr(), sn.Bits())
}

type weftResult struct {
	sync, total time.Duration
	tunnels     int
}

// weftColdStart starts weftd on a node with nothing pinned (first round: a
// new node; later rounds: the same node after removing its data plane).
func weftColdStart(ctx context.Context, c *lab.Cluster, n *lab.Node, leases int) (*lab.Node, weftResult, error) {
	var err error
	if n == nil {
		if n, err = c.AddWeftNode("w1"); err != nil {
			return nil, weftResult{}, err
		}
	} else {
		if err := stopAndWipe(c, n); err != nil {
			return nil, weftResult{}, err
		}
		if err := c.StartWeftd(n); err != nil {
			return nil, weftResult{}, err
		}
	}
	res, err := logTimes(c, n)
	if err != nil {
		return nil, weftResult{}, err
	}
	ts, err := n.Tunnels()
	if err != nil {
		return nil, weftResult{}, err
	}
	if res.tunnels = len(ts); res.tunnels != leases {
		return nil, weftResult{}, fmt.Errorf("weftd ready with %d tunnels, want %d", len(ts), leases)
	}
	return n, res, ctx.Err()
}

// stopAndWipe stops weftd and removes what a reboot would: pins and weft0.
func stopAndWipe(c *lab.Cluster, n *lab.Node) error {
	n.Cmd.Process.Signal(syscall.SIGTERM)
	c.Lab.Wait(n.Cmd)
	return n.Topo.Do(func() error { return loader.TeardownNode(n.PinPath, "") })
}

// logTimes reads weftd's own timestamps: "starting", "data plane ready"
// (BPF loaded, attached, lease held) and "ready" (first full lease set
// reconciled into the map).
func logTimes(c *lab.Cluster, n *lab.Node) (weftResult, error) {
	b, err := os.ReadFile(c.Lab.LogPath(n.Cmd))
	if err != nil {
		return weftResult{}, err
	}
	at := map[string]time.Time{}
	for _, line := range strings.Split(string(b), "\n") {
		var e struct {
			Msg string `json:"msg"`
			TS  string `json:"ts"`
		}
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		if ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", e.TS); err == nil {
			if _, seen := at[e.Msg]; !seen {
				at[e.Msg] = ts
			}
		}
	}
	start, dp, ready := at["starting"], at["data plane ready"], at["ready"]
	if start.IsZero() || dp.IsZero() || ready.IsZero() {
		return weftResult{}, fmt.Errorf("weftd log lacks starting/data plane ready/ready:\n%s", b)
	}
	return weftResult{sync: ready.Sub(dp), total: ready.Sub(start)}, nil
}

// timeJoins adds leases one at a time and times each until the tunnels map
// has it (a kernel LPM lookup, polled every 200 µs).
func timeJoins(ctx context.Context, cli *clientv3.Client, c *lab.Cluster, n *lab.Node, from, count int) ([]time.Duration, error) {
	set, err := n.Maps()
	if err != nil {
		return nil, err
	}
	defer set.Close()
	var out []time.Duration
	for i := from; i < from+count; i++ {
		sn, ip, mac := remote(i)
		start := time.Now()
		if _, err := cli.Put(ctx, leaseKey(c.EtcdPrefix, sn), leaseJSON(ip, mac)); err != nil {
			return nil, err
		}
		for {
			t, err := set.Tunnels.Match(sn.Addr())
			if err == nil && t.Remote == ip {
				break
			}
			if err != nil && !errors.Is(err, maps.ErrNotFound) {
				return nil, err
			}
			if time.Since(start) > 30*time.Second {
				return nil, fmt.Errorf("lease %s not in the tunnels map after 30s", sn)
			}
			time.Sleep(200 * time.Microsecond)
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out, nil
}

// weftRestart restarts weftd over its pinned data plane: it adopts every
// entry without writing.
func weftRestart(c *lab.Cluster, n *lab.Node) (time.Duration, error) {
	n.Cmd.Process.Signal(syscall.SIGTERM)
	c.Lab.Wait(n.Cmd)
	if err := c.StartWeftd(n); err != nil {
		return 0, err
	}
	r, err := logTimes(c, n)
	return r.total, err
}

type rss struct{ rss, hwm string }

func readRSS(pid int) rss {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return rss{"?", "?"}
	}
	var r rss
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			r.rss = strings.Join(strings.Fields(v), " ")
		}
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			r.hwm = strings.Join(strings.Fields(v), " ")
		}
	}
	return r
}

type flannelResult struct {
	list, program, total time.Duration
	peers                int
	routes, neighs, fdb  int
}

// flannelNode is a kernel-vxlan node (flannel.1 as flanneld creates it)
// and one netlink socket in its namespace.
type flannelNode struct {
	h   *netlink.Handle
	dev int
}

func newFlannelNode(c *lab.Cluster, name string) (*flannelNode, error) {
	tn, err := c.Lab.AddNode(name)
	if err != nil {
		return nil, err
	}
	own := netip.MustParsePrefix("10.250.0.0/24") // no remote() uses it
	if _, err := tn.SetupFlannelVXLAN(topo.FlannelOptions{Subnet: own, VNI: 1, Port: 8472}); err != nil {
		return nil, err
	}
	nsh, err := netns.GetFromPath(tn.NSPath)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, err
	}
	return &flannelNode{h: h, dev: tn.Flannel.DeviceIndex}, nil
}

type peer struct {
	sn  netip.Prefix
	ip  net.IP
	mac net.HardwareAddr
}

// decodePeer is flannel's reading of a lease: subnet.ParseSubnetKey, then
// json.Unmarshal of LeaseAttrs and of the vxlan BackendData. Only the
// remote() nodes count, so both sides program the same set (not w1).
func decodePeer(prefix string, key, value []byte) (peer, bool) {
	sn, err := netip.ParsePrefix(strings.Replace(strings.TrimPrefix(string(key), prefix+"/subnets/"), "-", "/", 1))
	if err != nil {
		return peer{}, false
	}
	var attrs struct {
		PublicIP    string
		BackendType string
		BackendData json.RawMessage
	}
	var data struct {
		VNI     uint16
		VtepMAC string
	}
	if json.Unmarshal(value, &attrs) != nil || attrs.BackendType != "vxlan" || json.Unmarshal(attrs.BackendData, &data) != nil {
		return peer{}, false
	}
	mac, err := net.ParseMAC(data.VtepMAC)
	ip, _ := netip.ParseAddr(attrs.PublicIP)
	if err != nil || !remotes.Contains(ip) {
		return peer{}, false
	}
	return peer{sn: sn, ip: ip.AsSlice(), mac: mac}, true
}

// program installs one remote host in flannel's order: neighbour, FDB, route.
func (f *flannelNode) program(p peer) error {
	gw := p.sn.Addr().AsSlice()
	if err := f.h.NeighSet(&netlink.Neigh{LinkIndex: f.dev, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
		IP: gw, HardwareAddr: p.mac}); err != nil {
		return fmt.Errorf("flannel: neighbour %s: %w", p.sn, err)
	}
	if err := f.h.NeighSet(&netlink.Neigh{LinkIndex: f.dev, State: netlink.NUD_PERMANENT, Family: unix.AF_BRIDGE,
		Flags: netlink.NTF_SELF, IP: p.ip, HardwareAddr: p.mac}); err != nil {
		return fmt.Errorf("flannel: fdb %s: %w", p.sn, err)
	}
	route := &netlink.Route{LinkIndex: f.dev, Scope: netlink.SCOPE_UNIVERSE,
		Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(p.sn.Bits(), 32)}, Gw: gw}
	route.SetFlag(netlink.FLAG_ONLINK)
	if err := f.h.RouteReplace(route); err != nil {
		return fmt.Errorf("flannel: route %s: %w", p.sn, err)
	}
	return nil
}

// flannelProgram programs every lease on a fresh flannel node, timed from
// the list.
func flannelProgram(ctx context.Context, c *lab.Cluster, cli *clientv3.Client, f *flannelNode, leases int) (flannelResult, error) {
	var r flannelResult
	start := time.Now()
	resp, err := cli.Get(ctx, c.EtcdPrefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		return r, err
	}
	peers := make([]peer, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if p, ok := decodePeer(c.EtcdPrefix, kv.Key, kv.Value); ok {
			peers = append(peers, p)
		}
	}
	r.list = time.Since(start)
	for _, p := range peers {
		if err := f.program(p); err != nil {
			return r, err
		}
	}
	r.total = time.Since(start)
	r.program = r.total - r.list
	r.peers = len(peers)

	// Check the kernel holds what was asked.
	link, err := f.h.LinkByIndex(f.dev)
	if err != nil {
		return r, err
	}
	routes, err := f.h.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return r, err
	}
	neighs, err := f.h.NeighList(f.dev, netlink.FAMILY_V4)
	if err != nil {
		return r, err
	}
	fdb, err := f.h.NeighList(f.dev, unix.AF_BRIDGE)
	if err != nil {
		return r, err
	}
	for _, rt := range routes {
		if rt.Gw != nil {
			r.routes++
		}
	}
	for _, nb := range neighs {
		if nb.State&netlink.NUD_PERMANENT != 0 {
			r.neighs++
		}
	}
	for _, e := range fdb {
		if e.IP != nil && !e.IP.IsUnspecified() {
			r.fdb++
		}
	}
	if r.peers != leases || r.routes != leases || r.neighs != leases || r.fdb != leases {
		return r, fmt.Errorf("flannel node holds %d routes, %d neighbours, %d fdb entries for %d peers, want %d each",
			r.routes, r.neighs, r.fdb, r.peers, leases)
	}
	return r, nil
}

// flannelJoins times single leases the flannel way: a watch event, decode,
// three netlink requests.
func flannelJoins(ctx context.Context, cli *clientv3.Client, c *lab.Cluster, f *flannelNode, from, count int) ([]time.Duration, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := cli.Watch(wctx, c.EtcdPrefix+"/subnets/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if resp, ok := <-wch; !ok || !resp.Created {
		return nil, errors.New("flannel: watch not created")
	}
	var out []time.Duration
	for i := from; i < from+count; i++ {
		sn, ip, mac := remote(i)
		start := time.Now()
		if _, err := cli.Put(ctx, leaseKey(c.EtcdPrefix, sn), leaseJSON(ip, mac)); err != nil {
			return nil, err
		}
	wait:
		for {
			select {
			case resp, ok := <-wch:
				if !ok || resp.Err() != nil {
					return nil, fmt.Errorf("flannel: watch ended: %v", resp.Err())
				}
				for _, ev := range resp.Events {
					if p, ok := decodePeer(c.EtcdPrefix, ev.Kv.Key, ev.Kv.Value); ok {
						if err := f.program(p); err != nil {
							return nil, err
						}
						if p.sn == sn {
							break wait
						}
					}
				}
			case <-time.After(30 * time.Second):
				return nil, fmt.Errorf("flannel: no event for %s after 30s", sn)
			}
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out, nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
