package test

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/lab"
)

// TestWeftdSmoke: three nodes running the real weftd lease subnets from a
// real etcd and program each other, a flannel-style kernel-vxlan node joins
// from its own lease, and every pod reaches every other pod, both ways;
// TCP between a Weft pod and the flannel pod arrives intact in both
// directions, and node hosts reach remote pods. weftctl shows exactly the
// leases in etcd, also while weftd is down, and a node keeps its VtepMAC
// across a restart and a reboot (flannel#1795).
func TestWeftdSmoke(t *testing.T) {
	c := newLab(t, "")
	for _, name := range []string{"n1", "n2", "n3"} {
		mustAddWeftNode(t, c, name)
	}
	k1, err := c.AddFlannelNode("k1", netip.MustParsePrefix("10.244.200.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if _, err := c.AddPod(n, "p1"); err != nil {
			t.Fatal(err)
		}
	}
	n1 := c.Nodes[0]
	cli := etcdClient(t, c)
	for _, n := range c.Nodes {
		if n.Kind != lab.KindWeft {
			continue
		}
		waitFor(t, 5*time.Second, func() bool { ts, _ := n.Tunnels(); return len(ts) == 3 }, "node %s has 3 tunnels", n.Name)
	}

	t.Run("PodMatrix", func(t *testing.T) {
		for _, from := range c.Nodes {
			for _, to := range c.Nodes {
				if from == to {
					continue
				}
				if out, err := ping(from.Pods[0].NSPath, to.Pods[0].IP, 2, 0); err != nil {
					t.Errorf("%s -> %s: %v\n%s", from.Name, to.Name, err, out)
				}
			}
		}
	})

	t.Run("HostsToRemotePods", func(t *testing.T) {
		for _, from := range c.Nodes {
			for _, to := range c.Nodes {
				if from == to {
					continue
				}
				if out, err := ping(from.Topo.NSPath, to.Pods[0].IP, 1, 0); err != nil {
					t.Errorf("host %s -> pod on %s: %v\n%s", from.Name, to.Name, err, out)
				}
			}
		}
	})

	t.Run("TCPWithFlannelBothWays", func(t *testing.T) {
		const size = 20 << 20
		for _, pr := range [][2]*lab.Node{{n1, k1}, {k1, n1}} {
			src, dst := pr[0].Pods[0], pr[1].Pods[0]
			res, err := transferTCP(testCtx(t, time.Minute), src.NSPath, dst.NSPath, dst.IP, size)
			if err != nil {
				t.Fatalf("%s -> %s: %v", pr[0].Name, pr[1].Name, err)
			}
			if !res.Intact(size) {
				t.Errorf("%s -> %s: received %d of %d bytes, sha256 %s, sent %s", pr[0].Name, pr[1].Name, res.Bytes, size, res.RecvSum, res.SentSum)
			}
		}
	})

	t.Run("WeftctlTunnelsEqualsEtcd", func(t *testing.T) {
		for _, n := range c.Nodes {
			if n.Kind != lab.KindWeft {
				continue
			}
			got := weftctlTunnels(t, c, n)
			want := wantTunnels(t, cli, c, n)
			if !sameTunnels(got, want) {
				t.Errorf("node %s: weftctl tunnels -o json:\n %s\nleases in etcd:\n %s", n.Name,
					strings.Join(tunnelSet(got), "\n "), strings.Join(tunnelSet(want), "\n "))
			}
		}
	})

	t.Run("WeftctlWithWeftdStopped", func(t *testing.T) {
		before := weftctlTunnels(t, c, n1)
		if err := c.Lab.Stop(n1.Cmd); err != nil { // SIGKILL
			t.Fatal(err)
		}
		if got := weftctlTunnels(t, c, n1); !sameTunnels(got, before) {
			t.Errorf("weftctl tunnels with weftd down: %v, before %v", tunnelSet(got), tunnelSet(before))
		}
		for _, args := range [][]string{{"tunnels"}, {"stats"}, {"status"}, {"endpoints"}, {"stats", "-o", "json"}, {"status", "-o", "json"}} {
			out, stderr, code := weftctl(t, c, n1, args...)
			if code != 0 || strings.TrimSpace(out) == "" {
				t.Errorf("weftctl %v with weftd down: exit %d\n%s%s", args, code, out, stderr)
			}
		}
		out, _, _ := weftctl(t, c, n1, "stats")
		if !strings.Contains(out, "encap") || !strings.Contains(out, "decap") {
			t.Errorf("weftctl stats with weftd down shows no encap/decap traffic:\n%s", out)
		}
		out, _, _ = weftctl(t, c, n1, "status")
		if !strings.Contains(out, n1.Subnet.Addr().String()) {
			t.Errorf("weftctl status with weftd down does not show the node address %s:\n%s", n1.Subnet.Addr(), out)
		}
		if out, err := ping(n1.Pods[0].NSPath, k1.Pods[0].IP, 1, 0); err != nil {
			t.Errorf("pod on n1 -> flannel pod with weftd down: %v\n%s", err, out)
		}
		if err := c.StartWeftd(n1); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("VtepMACStable", func(t *testing.T) {
		lease := func() etcdLease {
			for _, l := range etcdLeases(t, cli, c) {
				if l.PublicIP == n1.Topo.UnderlayIP {
					return l
				}
			}
			t.Fatalf("no lease of %s in etcd", n1.Topo.UnderlayIP)
			return etcdLease{}
		}
		orig := lease()
		check := func(when string, unchangedRevision bool) {
			t.Helper()
			l := lease()
			if l.VtepMAC.String() != orig.VtepMAC.String() || l.Subnet != orig.Subnet {
				t.Errorf("%s: lease %s %s, was %s %s", when, l.Subnet, l.VtepMAC, orig.Subnet, orig.VtepMAC)
			}
			if unchangedRevision && l.ModRevision != orig.ModRevision {
				t.Errorf("%s: lease rewritten (mod revision %d -> %d)", when, orig.ModRevision, l.ModRevision)
			}
			for _, n := range c.Nodes {
				if n.Kind == lab.KindWeft {
					waitTunnelsMatchEtcd(t, cli, c, n, 5*time.Second)
				}
			}
			if out, err := ping(k1.Pods[0].NSPath, n1.Pods[0].IP, 2, 0); err != nil {
				t.Errorf("%s: flannel pod -> pod on n1: %v\n%s", when, err, out)
			}
		}

		// A daemon restart: nothing is written, nobody sees an event.
		if err := stopWeftd(t, c, n1, syscall.SIGTERM); err != nil {
			t.Fatalf("weftd exit after SIGTERM: %v", err)
		}
		if err := c.StartWeftd(n1); err != nil {
			t.Fatal(err)
		}
		check("after a restart", true)

		// A reboot: the process dies, bpffs and weft0 are gone; the lease
		// (and with it the subnet) survives in etcd.
		if err := c.Lab.Stop(n1.Cmd); err != nil {
			t.Fatal(err)
		}
		if err := n1.Topo.Do(func() error { return loader.TeardownNode(n1.PinPath, "") }); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(n1.PinPath); !os.IsNotExist(err) {
			t.Fatalf("pins still at %s after teardown: %v", n1.PinPath, err)
		}
		if err := c.StartWeftd(n1); err != nil {
			t.Fatal(err)
		}
		// The pod's endpoint and program went with the pins; weft-cni would
		// re-add them on the CNI CHECK/ADD that follows a reboot.
		if _, err := c.AddPod(n1, "p2"); err != nil {
			t.Fatal(err)
		}
		n1.Pods = n1.Pods[1:]
		check("after a reboot", true)
		var mac net.HardwareAddr
		n1.Topo.Do(func() error {
			ifc, err := net.InterfaceByName(loader.DefaultHostDevice)
			if err == nil {
				mac = ifc.HardwareAddr
			}
			return err
		})
		if mac.String() != orig.VtepMAC.String() {
			t.Errorf("weft0 MAC after reboot %s, lease VtepMAC %s", mac, orig.VtepMAC)
		}
	})
}

// weftctlTunnels runs `weftctl tunnels -o json` in n's namespace.
func weftctlTunnels(t *testing.T, c *lab.Cluster, n *lab.Node) []maps.Tunnel {
	t.Helper()
	out, stderr, code := weftctl(t, c, n, "tunnels", "-o", "json")
	if code != 0 {
		t.Fatalf("weftctl tunnels -o json on %s: exit %d: %s", n.Name, code, stderr)
	}
	var rows []maps.Tunnel
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("weftctl tunnels -o json on %s: %v\n%s", n.Name, err, out)
	}
	return rows
}
