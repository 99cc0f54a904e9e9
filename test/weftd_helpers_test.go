package test

// Helpers for the weftd end-to-end tests (issue 3): leases written into etcd
// in flannel's exact JSON, the tunnels a node must hold according to etcd
// (read with a parser of its own, not control/flannel), a 1,000 pkt/s ping,
// a paced TCP transfer that lasts long enough to kill a daemon in the middle
// of it, and access to weftd's JSON log and weftctl.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/lab"
)

// etcdClient is a loopback client on the lab's etcd, closed when the test ends.
func etcdClient(t *testing.T, c *lab.Cluster) *clientv3.Client {
	t.Helper()
	cli, err := c.Etcd.Client()
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// leaseKey is flannel's key for sn under the lab's prefix.
func leaseKey(c *lab.Cluster, sn netip.Prefix) string {
	return fmt.Sprintf("%s/subnets/%s-%d", c.EtcdPrefix, sn.Masked().Addr(), sn.Bits())
}

// flannelLease is a vxlan lease value byte for byte as flanneld writes it.
func flannelLease(publicIP netip.Addr, vtep net.HardwareAddr) string {
	return fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}`,
		publicIP, vtep)
}

// fakeNode is a remote node that exists only as a lease: a PublicIP on the
// underlay prefix (.200 and up, where no lab node lives) and no namespace.
// Its subnet, 10.244.201.0/24 and up, is outside the first 100 free subnets
// (10.244.1-100.0/24) that real nodes take theirs from, and off the lab's
// flannel nodes' 10.244.200.0/24: writing it never overwrites a real lease.
type fakeNode struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
	VtepMAC  net.HardwareAddr
}

func fakeNodeN(i int) fakeNode {
	return fakeNode{
		Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(201 + i), 0}), 24),
		PublicIP: netip.AddrFrom4([4]byte{192, 168, 77, byte(200 + i)}),
		VtepMAC:  net.HardwareAddr{0x0e, 0xfa, 0x4e, 0, 0, byte(i)},
	}
}

func (f fakeNode) tunnel() maps.Tunnel {
	return maps.Tunnel{Subnet: f.Subnet, Remote: f.PublicIP, VtepMAC: f.VtepMAC, VNI: 1, Mode: maps.ModeVXLAN}
}

func putLease(t *testing.T, cli *clientv3.Client, c *lab.Cluster, f fakeNode, opts ...clientv3.OpOption) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, leaseKey(c, f.Subnet), flannelLease(f.PublicIP, f.VtepMAC), opts...); err != nil {
		t.Fatalf("put lease %s: %v", f.Subnet, err)
	}
}

func putKey(t *testing.T, cli *clientv3.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, value); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func deleteKey(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
}

// etcdLease is one key under <prefix>/subnets/ as the test reads it.
type etcdLease struct {
	Key         string
	Subnet      netip.Prefix
	PublicIP    netip.Addr
	VtepMAC     net.HardwareAddr
	ModRevision int64
}

// etcdLeases lists the leases in etcd that a flannel node would accept,
// parsed independently of control/flannel.
func etcdLeases(t *testing.T, cli *clientv3.Client, c *lab.Cluster) []etcdLease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, c.EtcdPrefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("list leases: %v", err)
	}
	var out []etcdLease
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), c.EtcdPrefix+"/subnets/")
		sn, err := netip.ParsePrefix(strings.Replace(name, "-", "/", 1))
		if err != nil {
			continue
		}
		var v struct {
			PublicIP    string
			BackendType string
			BackendData struct{ VtepMAC string }
		}
		if json.Unmarshal(kv.Value, &v) != nil || v.BackendType != "vxlan" {
			continue
		}
		ip, err := netip.ParseAddr(v.PublicIP)
		mac, merr := net.ParseMAC(v.BackendData.VtepMAC)
		if err != nil || merr != nil {
			continue
		}
		out = append(out, etcdLease{Key: string(kv.Key), Subnet: sn, PublicIP: ip, VtepMAC: mac, ModRevision: kv.ModRevision})
	}
	return out
}

// wantTunnels is what n's tunnels map must hold: every other lease in etcd,
// VNI 1 (the network's), vxlan mode (the lab does not use DirectRouting).
func wantTunnels(t *testing.T, cli *clientv3.Client, c *lab.Cluster, n *lab.Node) []maps.Tunnel {
	t.Helper()
	var want []maps.Tunnel
	for _, l := range etcdLeases(t, cli, c) {
		if l.Subnet == n.Subnet {
			continue
		}
		want = append(want, maps.Tunnel{Subnet: l.Subnet, Remote: l.PublicIP, VtepMAC: l.VtepMAC, VNI: 1, Mode: maps.ModeVXLAN})
	}
	return want
}

// tunnelSet renders tunnels as sorted strings for comparison and messages.
func tunnelSet(ts []maps.Tunnel) []string {
	out := make([]string, 0, len(ts))
	for _, t := range ts {
		out = append(out, t.String())
	}
	slices.Sort(out)
	return out
}

func sameTunnels(a, b []maps.Tunnel) bool { return slices.Equal(tunnelSet(a), tunnelSet(b)) }

// waitTunnelsMatchEtcd waits until n's tunnels map equals the other leases
// in etcd exactly.
func waitTunnelsMatchEtcd(t *testing.T, cli *clientv3.Client, c *lab.Cluster, n *lab.Node, timeout time.Duration) {
	t.Helper()
	var got, want []maps.Tunnel
	deadline := time.Now().Add(timeout)
	for {
		want = wantTunnels(t, cli, c, n)
		var err error
		if got, err = n.Tunnels(); err == nil && sameTunnels(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: tunnels map differs from the leases in etcd after %v:\n got  %s\n want %s",
				n.Name, timeout, strings.Join(tunnelSet(got), "\n      "), strings.Join(tunnelSet(want), "\n      "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metric reads one sample from n's /metrics.
func metric(t *testing.T, n *lab.Node, name string) float64 {
	t.Helper()
	v, err := n.Metric(name)
	if err != nil {
		t.Fatalf("node %s: %v", n.Name, err)
	}
	return v
}

// logEntry is one line of weftd's zap JSON log.
type logEntry map[string]any

func (e logEntry) str(k string) string { s, _ := e[k].(string); return s }

// weftdLog parses a weftd log; lines that are not JSON (panics, flag
// errors) come back as {"raw": line}.
func weftdLog(path string) []logEntry {
	b, _ := os.ReadFile(path)
	var out []logEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e logEntry
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			e = logEntry{"raw": sc.Text()}
		}
		out = append(out, e)
	}
	return out
}

// findLog returns the first entry of n's current weftd log whose field
// equals value and whose text contains every fragment.
func findLog(n *lab.Node, field, value string, fragments ...string) (logEntry, bool) {
	if n.Cmd == nil {
		return nil, false
	}
	for _, e := range weftdLog(n.Topo.Lab.LogPath(n.Cmd)) {
		if e.str(field) != value {
			continue
		}
		b, _ := json.Marshal(e)
		ok := true
		for _, f := range fragments {
			if !strings.Contains(string(b), f) {
				ok = false
				break
			}
		}
		if ok {
			return e, true
		}
	}
	return nil, false
}

// running fails the test if n's weftd has exited.
func running(t *testing.T, c *lab.Cluster, n *lab.Node) {
	t.Helper()
	select {
	case <-c.Lab.Exited(n.Cmd):
		t.Fatalf("weftd on %s exited: %v\n%s", n.Name, c.Lab.Wait(n.Cmd), n.Log())
	default:
	}
}

// stopWeftd stops n's weftd with sig (SIGKILL or SIGTERM) and waits for it.
// It returns the exit error (nil for a clean exit).
func stopWeftd(t *testing.T, c *lab.Cluster, n *lab.Node, sig syscall.Signal) error {
	t.Helper()
	if err := n.Cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal weftd on %s: %v", n.Name, err)
	}
	select {
	case <-c.Lab.Exited(n.Cmd):
	case <-time.After(15 * time.Second):
		t.Fatalf("weftd on %s still running 15s after %v", n.Name, sig)
	}
	return c.Lab.Wait(n.Cmd)
}

// startWeftdNoWait starts weftd on n without waiting for it to become
// ready (it may never: a bad config keeps it waiting).
func startWeftdNoWait(t *testing.T, c *lab.Cluster, n *lab.Node, extra ...string) {
	t.Helper()
	cmd, err := n.Topo.Start(filepath.Join(c.Opts.BinDir, "weftd"), c.WeftdArgs(n, extra...)...)
	if err != nil {
		t.Fatalf("start weftd on %s: %v", n.Name, err)
	}
	n.Cmd = cmd
}

// waitReady waits until n's weftd answers /healthz with 200.
func waitReady(t *testing.T, c *lab.Cluster, n *lab.Node, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if code, _, err := n.Get("/healthz"); err == nil && code == http.StatusOK {
			return
		}
		running(t, c, n)
		if time.Now().After(deadline) {
			t.Fatalf("weftd on %s not ready after %v", n.Name, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// weftctl runs the test build of weftctl inside n's network namespace.
func weftctl(t *testing.T, c *lab.Cluster, n *lab.Node, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	args = append(append([]string{"--net=" + n.Topo.NSPath, "--", filepath.Join(c.Opts.BinDir, "weftctl")}, args...), "--pin-path", n.PinPath)
	cmd := exec.Command("nsenter", args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run weftctl %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// floodPing is a running `ping -i 0.001` (1,000 packets a second).
type floodPing struct {
	cmd   *exec.Cmd
	out   bytes.Buffer
	start time.Time
	done  chan struct{}
	end   time.Time
	err   error
}

// startFloodPing sends count echo requests at 1,000 a second from the
// namespace at nsPath to dst and waits up to 5 s for the last replies.
func startFloodPing(t *testing.T, nsPath string, dst netip.Addr, count int) *floodPing {
	t.Helper()
	p := &floodPing{done: make(chan struct{})}
	p.cmd = exec.Command("nsenter", "--net="+nsPath, "--", "ping", "-q", "-n", "-i", "0.001", "-W", "5",
		"-c", strconv.Itoa(count), dst.String())
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start ping: %v", err)
	}
	p.start = time.Now()
	go func() {
		p.err = p.cmd.Wait()
		p.end = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// wait returns how many requests were sent and answered.
func (p *floodPing) wait(t *testing.T) (sent, received int) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(2 * time.Minute):
		t.Fatal("flood ping did not finish within 2 minutes")
	}
	m := pingSummary.FindStringSubmatch(p.out.String())
	if m == nil {
		t.Fatalf("flood ping: no summary (%v):\n%s", p.err, p.out.String())
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	return sent, received
}

// assertNoLoss waits for the ping and fails on any lost reply, or if the
// ping stopped before covering.
func (p *floodPing) assertNoLoss(t *testing.T, what string, covering time.Time) {
	t.Helper()
	sent, recv := p.wait(t)
	t.Logf("%s: %d pings sent at 1,000/s over %.1fs, %d lost", what, sent, p.end.Sub(p.start).Seconds(), sent-recv)
	if sent == 0 || recv != sent {
		t.Errorf("%s: %d of %d pings lost:\n%s", what, sent-recv, sent, p.out.String())
	}
	if p.end.Before(covering) {
		t.Errorf("%s: the ping ended at +%v, before the events it had to cover (+%v)", what,
			p.end.Sub(p.start).Round(time.Millisecond), covering.Sub(p.start).Round(time.Millisecond))
	}
}

// pacedTransfer is lab.PacedTransferTCP: a transfer lasting size/rate
// seconds, long enough to span a daemon restart.
func pacedTransfer(ctx context.Context, srcNS, dstNS string, dst netip.Addr, size, rate int64) (lab.Transfer, error) {
	return lab.PacedTransferTCP(ctx, srcNS, dstNS, dst, size, rate)
}

// percentile of sorted durations, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
