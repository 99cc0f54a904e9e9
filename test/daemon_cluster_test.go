package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/etcdtest"
	"github.com/weftnet/weft/test/topo"
)

// daemonCluster is a lab whose Weft nodes run the real weftd against a real
// etcd, as users run it.
type daemonCluster struct {
	lab      *topo.Lab
	etcd     *etcdtest.Server
	fwd      *etcdtest.Forwarder
	network  netip.Prefix
	prefix   string // etcd prefix
	pinRoot  string
	stateDir string
	nodes    map[string]*daemonNode
}

type daemonNode struct {
	name       string
	node       *topo.Node
	pinPath    string
	subnetFile string
	cmd        *exec.Cmd
	pods       []*topo.Pod
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds weftd, weftctl and weft-cni once per test run.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "weft-test-bin-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", binDir+"/", "../cmd/...").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/...: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// newDaemonCluster makes a lab with an etcd reachable from every node at
// <underlay>.2:2379 and the network config written in flannel's schema.
func newDaemonCluster(t *testing.T, netConfig string) *daemonCluster {
	t.Helper()
	binaries(t)
	lab, err := topo.New(topo.Options{KeepLogs: true, LogDir: filepath.Join(t.TempDir(), "logs")})
	if err != nil {
		t.Fatalf("create lab: %v", err)
	}
	c := &daemonCluster{
		lab:      lab,
		network:  netip.MustParsePrefix("10.244.0.0/16"),
		prefix:   flannel.DefaultPrefix,
		pinRoot:  filepath.Join(loader.BPFFSRoot, "weft-test-"+lab.Prefix),
		stateDir: t.TempDir(),
		nodes:    map[string]*daemonNode{},
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			if n.cmd != nil {
				lab.Stop(n.cmd)
			}
			n.node.Do(func() error { return loader.TeardownNode(n.pinPath, "") })
		}
		os.RemoveAll(c.pinRoot)
		if c.etcd != nil {
			c.etcd.Close()
		}
		if t.Failed() {
			c.dumpLogs(t)
		}
		lab.Close()
	})
	if c.etcd, err = etcdtest.Start(filepath.Join(c.stateDir, "etcd")); err != nil {
		t.Fatal(err)
	}
	addr, err := lab.ServiceAddr(2)
	if err != nil {
		t.Fatal(err)
	}
	if c.fwd, err = c.etcd.Expose(func(fn func() error) error { return topo.Do(lab.UnderlayPath, fn) }, netip.AddrPortFrom(addr, 2379)); err != nil {
		t.Fatal(err)
	}
	if err := c.etcd.Put(testCtx(t, 10*time.Second), flannel.ConfigKey(c.prefix), netConfig); err != nil {
		t.Fatalf("write network config: %v", err)
	}
	return c
}

// addNode creates a node namespace (no daemon yet).
func (c *daemonCluster) addNode(t *testing.T, name string) *daemonNode {
	t.Helper()
	n, err := c.lab.AddNode(name)
	if err != nil {
		t.Fatalf("add node %s: %v", name, err)
	}
	dn := &daemonNode{name: name, node: n, pinPath: filepath.Join(c.pinRoot, name),
		subnetFile: filepath.Join(c.stateDir, name, "subnet.env")}
	c.nodes[name] = dn
	return dn
}

// weftdArgs are the flags a node's weftd runs with.
func (c *daemonCluster) weftdArgs(n *daemonNode, extra ...string) []string {
	args := []string{
		"--etcd-endpoints", c.fwd.URL(),
		"--etcd-prefix", c.prefix,
		"--iface", n.node.UnderlayIf,
		"--pin-path", n.pinPath,
		"--subnet-file", n.subnetFile,
		"--metrics-addr", netip.AddrPortFrom(n.node.UnderlayIP, 9473).String(),
		"--subnet-lease-ttl", "30s",
		"--log-level", "debug",
	}
	return append(args, extra...)
}

// startWeftd starts the node's weftd and waits until /healthz says ready.
func (c *daemonCluster) startWeftd(t *testing.T, n *daemonNode, extra ...string) {
	t.Helper()
	cmd, err := n.node.Start(filepath.Join(binDir, "weftd"), c.weftdArgs(n, extra...)...)
	if err != nil {
		t.Fatalf("start weftd on %s: %v", n.name, err)
	}
	n.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, _, err := n.get("/healthz")
		if err == nil && code == http.StatusOK {
			return
		}
		select {
		case <-c.lab.Exited(cmd):
			t.Fatalf("weftd on %s exited before becoming ready:\n%s", n.name, c.log(n))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("weftd on %s not ready after 30s (last: %d %v):\n%s", n.name, code, err, c.log(n))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// get fetches path from the node's weftd endpoint, dialling inside the node.
func (n *daemonNode) get(path string) (int, string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := topo.Do(n.node.NSPath, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 3 * time.Second}
	resp, err := cl.Get("http://" + netip.AddrPortFrom(n.node.UnderlayIP, 9473).String() + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metric returns the value of one Prometheus sample line, e.g.
// `weft_invalid_leases` or `weft_packets_total{reason="encap"}`.
func (n *daemonNode) metric(t *testing.T, name string) float64 {
	t.Helper()
	code, body, err := n.get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics on %s: %d %v", n.name, code, err)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	t.Fatalf("metric %s not found on %s:\n%s", name, n.name, body)
	return 0
}

func (c *daemonCluster) log(n *daemonNode) string {
	if n.cmd == nil {
		return ""
	}
	b, _ := os.ReadFile(c.lab.LogPath(n.cmd))
	return string(b)
}

func (c *daemonCluster) dumpLogs(t *testing.T) {
	for _, n := range c.nodes {
		if l := c.log(n); l != "" {
			if len(l) > 6000 {
				l = "...\n" + l[len(l)-6000:]
			}
			t.Logf("weftd log of %s:\n%s", n.name, l)
		}
	}
}

// subnet reads the node's subnet from the subnet.env its weftd wrote.
func (n *daemonNode) subnet(t *testing.T) netip.Prefix {
	t.Helper()
	b, err := os.ReadFile(n.subnetFile)
	if err != nil {
		t.Fatalf("read %s: %v", n.subnetFile, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "FLANNEL_SUBNET="); ok {
			return netip.MustParsePrefix(v).Masked()
		}
	}
	t.Fatalf("no FLANNEL_SUBNET in %s", n.subnetFile)
	return netip.Prefix{}
}

// addPod wires a pod to the node's data plane the way the CNI plugin will:
// veth, address from the node's subnet, endpoint entry, from_pod attached.
func (c *daemonCluster) addPod(t *testing.T, n *daemonNode) *topo.Pod {
	t.Helper()
	sn := n.subnet(t)
	ip := netip.PrefixFrom(addrAdd(sn.Addr(), 2+len(n.pods)), sn.Bits())
	pod, err := n.node.AddPod(fmt.Sprintf("p%d", len(n.pods)+1), topo.PodOptions{IP: ip, Gateway: loader.GatewayIP(sn), MTU: loader.PodMTU(1500), GatewayByARP: true})
	if err != nil {
		t.Fatalf("add pod on %s: %v", n.name, err)
	}
	set, err := maps.OpenPinned(n.pinPath)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	if err := set.Endpoints.Put(maps.Endpoint{IP: pod.IP, IfIndex: uint32(pod.HostIfIndex), MAC: pod.MAC, HostMAC: pod.HostMAC}); err != nil {
		t.Fatal(err)
	}
	if err := n.node.Do(func() error { return loader.AttachPodPinned(n.pinPath, pod.HostIfIndex) }); err != nil {
		t.Fatalf("attach from_pod: %v", err)
	}
	n.pods = append(n.pods, pod)
	return pod
}

// tunnels reads the node's tunnels map straight from its pins.
func (n *daemonNode) tunnels(t *testing.T) []maps.Tunnel {
	t.Helper()
	set, err := maps.OpenPinned(n.pinPath)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	all, err := set.Tunnels.All()
	if err != nil {
		t.Fatal(err)
	}
	return all
}
