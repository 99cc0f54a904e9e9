package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/lab"
)

// network is large enough for 60,000 /24 leases; netConfig is its
// flannel network config (etcd's <prefix>/config, kube's net-conf.json).
var network = netip.MustParsePrefix("10.0.0.0/8")

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

func leaseKey(prefix string, sn netip.Prefix) string {
	return fmt.Sprintf("%s/subnets/%s-%d", prefix, sn.Addr(), sn.Bits())
}

type weftResult struct {
	coldStart time.Duration // process start -> every lease in the map
	program   time.Duration // the kernel writes of the first reconcile
	batched   bool
}

// weftColdStart starts weftd on a node with nothing pinned (first count: a
// new node; later ones: the same node after removing its data plane).
func weftColdStart(ctx context.Context, c *lab.Cluster, n *lab.Node, leases int) (*lab.Node, weftResult, error) {
	var err error
	start := time.Now()
	if n == nil {
		if n, err = c.AddWeftNode("w1"); err != nil {
			return nil, weftResult{}, err
		}
	} else {
		if err := stopAndWipe(c, n); err != nil {
			return nil, weftResult{}, err
		}
		start = time.Now()
		if err := c.StartWeftd(n); err != nil {
			return nil, weftResult{}, err
		}
	}
	res, err := readLog(c, n, start)
	if err != nil {
		return nil, weftResult{}, err
	}
	set, err := n.Maps()
	if err != nil {
		return nil, weftResult{}, err
	}
	defer set.Close()
	ts, err := set.Tunnels.All()
	if err != nil {
		return nil, weftResult{}, err
	}
	if len(ts) != leases {
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

// readLog reads weftd's own figures from its log: the time of "ready"
// (first full lease set in the tunnels map), and the kernel write time of
// that first reconcile ("tunnels written in bulk", write_took; for a small
// set, which logs each entry instead, the whole reconcile's "took").
func readLog(c *lab.Cluster, n *lab.Node, start time.Time) (weftResult, error) {
	b, err := os.ReadFile(c.Lab.LogPath(n.Cmd))
	if err != nil {
		return weftResult{}, err
	}
	var (
		res              weftResult
		ready            time.Time
		wrote, reconcile float64
	)
	for _, line := range strings.Split(string(b), "\n") {
		var e struct {
			Msg       string  `json:"msg"`
			TS        string  `json:"ts"`
			WriteTook float64 `json:"write_took"`
			Took      float64 `json:"took"`
			Full      bool    `json:"full"`
			Batched   bool    `json:"batch_syscalls"`
		}
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		switch {
		case e.Msg == "tunnels written in bulk" && wrote == 0:
			wrote, res.batched = e.WriteTook, e.Batched
		case e.Msg == "tunnels reconciled" && e.Full && reconcile == 0:
			reconcile = e.Took
		case e.Msg == "ready" && ready.IsZero():
			ready, _ = time.Parse("2006-01-02T15:04:05.000Z0700", e.TS)
		}
	}
	if ready.IsZero() || reconcile == 0 {
		return res, fmt.Errorf("weftd log lacks ready / a full reconcile:\n%s", b)
	}
	if wrote == 0 {
		wrote = reconcile
	}
	res.program = time.Duration(wrote * float64(time.Second))
	res.coldStart = ready.Sub(start)
	return res, nil
}

// timeJoins adds leases one at a time and times each until the tunnels map
// has it (a kernel LPM lookup, polled every 50 µs).
func timeJoins(ctx context.Context, st leaseStore, n *lab.Node, from, count int) ([]time.Duration, error) {
	set, err := n.Maps()
	if err != nil {
		return nil, err
	}
	defer set.Close()
	var out []time.Duration
	for i := from; i < from+count; i++ {
		sn, ip, _ := remote(i)
		start := time.Now()
		if err := st.put(ctx, i); err != nil {
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
			time.Sleep(50 * time.Microsecond)
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out, nil
}

// rss is weftd's memory in MB: VmRSS (the figure), its high-water
// mark, and VmRSS split into anonymous memory (heap, stacks: what weftd
// allocates) and file-backed pages (the binary's code and data mapped in).
type rss struct{ rss, hwm, anon, file float64 }

func readRSS(pid int) rss {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return rss{}
	}
	kb := func(v string) float64 {
		f := strings.Fields(v)
		if len(f) == 0 {
			return 0
		}
		x, _ := strconv.ParseFloat(f[0], 64)
		return x / 1024
	}
	var r rss
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			r.rss = kb(v)
		}
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			r.hwm = kb(v)
		}
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			r.anon = kb(v)
		}
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			r.file = kb(v)
		}
	}
	return r
}
