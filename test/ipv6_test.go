package test

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/lab"
	"github.com/weftnet/weft/test/topo"
)

// End-to-end IPv6 (issue 14): real weftd on a real etcd, pods wired by
// weft-cni, flannel-style kernel-vxlan nodes programmed from their leases
// with flannel.1 and flannel-v6.1, as ipv6-contract.md describes.

var (
	testNetwork6  = netip.MustParsePrefix("fd00:10:244::/48")
	testUnderlay6 = netip.MustParsePrefix("fd77::/64")
	// The flannel node's subnets: 10.244.200.0/24 (as the IPv4 tests) and
	// the /64 number 200 of testNetwork6, off the range weftd allocates
	// from first.
	flannelSubnet  = netip.MustParsePrefix("10.244.200.0/24")
	flannelSubnet6 = netip.MustParsePrefix("fd00:10:244:c8::/64")
)

// ipv6Cluster is a lab of Weft nodes (and flannel nodes where the
// underlay lets flannel carry IPv6) with one pod each.
type ipv6Cluster struct {
	*lab.Cluster
	weft    []*lab.Node
	flannel *lab.Node // nil without
}

// startIPv6Lab starts a lab with IPv6 pods: dual-stack, or IPv6-only with
// v6only; underlay "dual" (IPv4 and IPv6), "v4" (IPv4 only: IPv6 pods go
// v6-in-v4, flannel cannot join) or "v6" (IPv6 only). weftNodes Weft nodes
// and, except on the IPv4 underlay, one flannel-style node; one pod each.
// It waits until every Weft node has a tunnel per remote subnet.
func startIPv6Lab(t *testing.T, underlay string, v6only bool, weftNodes int) *ipv6Cluster {
	t.Helper()
	opts := lab.Options{Network6: testNetwork6, IPv6Only: v6only}
	switch underlay {
	case "dual":
		opts.UnderlayCIDR6 = testUnderlay6
	case "v6":
		opts.UnderlayCIDR6, opts.NoUnderlayIPv4 = testUnderlay6, true
	}
	c := &ipv6Cluster{Cluster: startLab(t, opts)}
	for i := 1; i <= weftNodes; i++ {
		c.weft = append(c.weft, mustAddWeftNode(t, c.Cluster, fmt.Sprintf("n%d", i)))
	}
	if underlay != "v4" {
		sn := flannelSubnet
		if v6only {
			sn = netip.Prefix{}
		}
		k, err := c.AddFlannelNodeDual("k1", sn, flannelSubnet6)
		if err != nil {
			t.Fatal(err)
		}
		c.flannel = k
	}
	for _, n := range c.Nodes {
		if _, err := c.AddPod(n, "p1"); err != nil {
			t.Fatal(err)
		}
		p := n.Pods[0]
		if !p.IP6.IsValid() || p.IP.IsValid() == v6only {
			t.Fatalf("pod on %s has addresses %v: want IPv6 (and IPv4 unless IPv6-only)", n.Name, p.Addrs())
		}
	}
	perFamily := 2
	if v6only {
		perFamily = 1
	}
	for _, n := range c.weft {
		want := (len(c.Nodes) - 1) * perFamily
		waitFor(t, 10*time.Second, func() bool { ts, _ := n.Tunnels(); return len(ts) == want },
			"node %s has %d tunnels (a remote subnet per family)", n.Name, want)
	}
	return c
}

// pingMatrix pings every other node's pod from every pod on each of its
// addresses, polling for the first reply of a pair (neighbour resolution
// on up to three hops) for a bounded time.
func pingMatrix(t *testing.T, nodes []*lab.Node) {
	t.Helper()
	for _, from := range nodes {
		for _, to := range nodes {
			if from == to {
				continue
			}
			for _, dst := range to.Pods[0].Addrs() {
				var out []byte
				var err error
				deadline := time.Now().Add(5 * time.Second)
				for out, err = ping(from.Pods[0].NSPath, dst, 1, 0); err != nil && time.Now().Before(deadline); {
					out, err = ping(from.Pods[0].NSPath, dst, 1, 0)
				}
				if err == nil {
					out, err = ping(from.Pods[0].NSPath, dst, 2, 0)
				}
				if err != nil {
					t.Errorf("pod %s -> pod %s (%s): %v\n%s", from.Name, to.Name, dst, err, out)
				}
			}
		}
	}
}

// transferIntact sends size bytes over TCP from src's pod to dst's pod's
// IPv6 address and requires them to arrive intact (sha256).
func transferIntact(t *testing.T, src, dst *lab.Node, size int64, timeout time.Duration) {
	t.Helper()
	// A path that does not carry a ping would only time the transfer out.
	if out, err := ping(src.Pods[0].NSPath, dst.Pods[0].IP6, 1, 0); err != nil {
		if out, err = ping(src.Pods[0].NSPath, dst.Pods[0].IP6, 1, 0); err != nil {
			t.Errorf("%s -> %s over IPv6: no ping reply, no transfer: %v\n%s", src.Name, dst.Name, err, out)
			return
		}
	}
	res, err := transferTCP(testCtx(t, timeout), src.Pods[0].NSPath, dst.Pods[0].NSPath, dst.Pods[0].IP6, size)
	if err != nil {
		t.Errorf("%s -> %s over IPv6: %v", src.Name, dst.Name, err)
		return
	}
	if !res.Intact(size) {
		t.Errorf("%s -> %s over IPv6: received %d of %d bytes, sha256 %s, sent %s", src.Name, dst.Name, res.Bytes, size, res.RecvSum, res.SentSum)
		return
	}
	t.Logf("%s -> %s over IPv6: %d MB intact (sha256 %.12s) at %.2f Gbit/s", src.Name, dst.Name, res.Bytes>>20, res.RecvSum, res.Gbps())
}

// TestIPv6DualStackCluster: two Weft nodes and a flannel-style dual-stack
// kernel node (flannel.1 and flannel-v6.1, programmed from its lease) on a
// dual-stack underlay. Every pod reaches every other pod on both families;
// 100 MB over IPv6 arrive intact Weft -> Weft and Weft <-> flannel; node
// hosts reach remote pods over IPv6 (weft0's route); weftctl lists the
// IPv6 subnets, each to its node's IPv6 underlay address.
func TestIPv6DualStackCluster(t *testing.T) {
	c := startIPv6Lab(t, "dual", false, 2)
	n1, n2, k1 := c.weft[0], c.weft[1], c.flannel

	t.Run("PodMatrix", func(t *testing.T) { pingMatrix(t, c.Nodes) })

	t.Run("HostsToRemotePods", func(t *testing.T) {
		for _, from := range c.weft {
			for _, to := range c.Nodes {
				if from == to {
					continue
				}
				if out, err := ping(from.Topo.NSPath, to.Pods[0].IP6, 1, 0); err != nil {
					t.Errorf("host %s -> pod on %s (%s): %v\n%s", from.Name, to.Name, to.Pods[0].IP6, err, out)
				}
			}
		}
	})

	t.Run("TCP100MBOverIPv6", func(t *testing.T) {
		for _, pr := range [][2]*lab.Node{{n1, n2}, {n1, k1}, {k1, n1}} {
			transferIntact(t, pr[0], pr[1], 100<<20, 90*time.Second)
		}
	})

	t.Run("WeftctlTunnelsListsIPv6", func(t *testing.T) {
		checkWeftctlIPv6Tunnels(t, c, n1, true)
	})

	t.Run("RestartKeepsIPv6", func(t *testing.T) {
		// The pinned data plane forwards IPv6 while weftd is down, and a
		// restarted weftd adopts the same subnets and tunnels.
		before := tunnelSet(weftctlTunnels(t, c.Cluster, n1))
		sn, sn6 := n1.Subnet, n1.Subnet6
		if err := c.Lab.Stop(n1.Cmd); err != nil { // SIGKILL
			t.Fatal(err)
		}
		for _, to := range []*lab.Node{n2, k1} {
			if out, err := ping(n1.Pods[0].NSPath, to.Pods[0].IP6, 2, 0); err != nil {
				t.Errorf("pod on n1 -> %s over IPv6 with weftd down: %v\n%s", to.Name, err, out)
			}
		}
		if err := c.StartWeftd(n1); err != nil {
			t.Fatal(err)
		}
		if n1.Subnet != sn || n1.Subnet6 != sn6 {
			t.Errorf("after restart n1 has %v %v, had %v %v", n1.Subnet, n1.Subnet6, sn, sn6)
		}
		waitFor(t, 10*time.Second, func() bool { return slices.Equal(tunnelSet(weftctlTunnels(t, c.Cluster, n1)), before) },
			"n1's tunnels after the restart equal those before: %v", before)
		if out, err := ping(n1.Pods[0].NSPath, n2.Pods[0].IP6, 2, 0); err != nil {
			t.Errorf("pod on n1 -> n2 over IPv6 after the restart: %v\n%s", err, out)
		}
	})
}

// checkWeftctlIPv6Tunnels: weftctl tunnels (JSON and the table) on n lists
// every other node's IPv6 subnet, to its IPv6 underlay address where it
// has one (outer IPv6) or else its IPv4 one (v6-in-v4).
func checkWeftctlIPv6Tunnels(t *testing.T, c *ipv6Cluster, n *lab.Node, outer6 bool) {
	t.Helper()
	got := weftctlTunnels(t, c.Cluster, n)
	table, stderr, code := weftctl(t, c.Cluster, n, "tunnels")
	if code != 0 {
		t.Fatalf("weftctl tunnels: exit %d: %s", code, stderr)
	}
	for _, peer := range c.Nodes {
		if peer == n {
			continue
		}
		remote := peer.Topo.UnderlayIP6
		if !outer6 {
			remote = peer.Topo.UnderlayIP
		}
		i := slices.IndexFunc(got, func(tn maps.Tunnel) bool { return tn.Subnet == peer.Subnet6 })
		if i < 0 {
			t.Errorf("weftctl tunnels -o json on %s lacks %s's IPv6 subnet %s: %s", n.Name, peer.Name, peer.Subnet6, strings.Join(tunnelSet(got), "; "))
			continue
		}
		if got[i].Remote.Unmap() != remote || got[i].Mode != maps.ModeVXLAN {
			t.Errorf("weftctl tunnels on %s: %s = %s, want remote %s (vxlan)", n.Name, peer.Subnet6, got[i], remote)
		}
		if !strings.Contains(table, peer.Subnet6.String()) {
			t.Errorf("weftctl tunnels table on %s lacks %s:\n%s", n.Name, peer.Subnet6, table)
		}
	}
}

// TestIPv6OverIPv4Underlay: dual-stack pods on Weft nodes whose underlay
// is IPv4 only (leases without PublicIPv6): IPv6 travels v6-in-v4, both
// families reach every pod, 20 MB over IPv6 arrive intact, and weftctl
// shows the IPv6 subnets going to the peers' IPv4 addresses.
func TestIPv6OverIPv4Underlay(t *testing.T) {
	c := startIPv6Lab(t, "v4", false, 2)
	t.Run("PodMatrix", func(t *testing.T) { pingMatrix(t, c.Nodes) })
	t.Run("TCPOverIPv6", func(t *testing.T) { transferIntact(t, c.weft[0], c.weft[1], 20<<20, time.Minute) })
	t.Run("WeftctlTunnelsListsIPv6", func(t *testing.T) { checkWeftctlIPv6Tunnels(t, c, c.weft[0], false) })
}

// TestIPv6OnlyCluster: an IPv6-only network (EnableIPv4 false) on an
// IPv6-only underlay: etcd, leases, the data plane and a flannel-style
// IPv6-only node (flannel-v6.1 only) without a single IPv4 address on the
// wire. Every pod reaches every other; 100 MB arrive intact Weft -> Weft
// and Weft <-> flannel.
func TestIPv6OnlyCluster(t *testing.T) {
	c := startIPv6Lab(t, "v6", true, 2)
	n1, n2, k1 := c.weft[0], c.weft[1], c.flannel
	for _, n := range c.Nodes {
		if n.Topo.UnderlayIP.IsValid() || n.Subnet.IsValid() {
			t.Fatalf("node %s has IPv4 (underlay %v, subnet %v) on an IPv6-only cluster", n.Name, n.Topo.UnderlayIP, n.Subnet)
		}
	}
	t.Run("PodMatrix", func(t *testing.T) { pingMatrix(t, c.Nodes) })
	t.Run("TCP100MB", func(t *testing.T) {
		for _, pr := range [][2]*lab.Node{{n1, n2}, {n1, k1}, {k1, n1}} {
			transferIntact(t, pr[0], pr[1], 100<<20, 90*time.Second)
		}
	})
	t.Run("WeftctlTunnelsListsIPv6", func(t *testing.T) { checkWeftctlIPv6Tunnels(t, c, n1, true) })
}

// TestIPv6PMTU: path MTU discovery for IPv6 pods, whose packets nobody on
// the way may fragment.
//   - OversizePod: a pod whose MTU (1500) is bigger than the overlay's
//     sends full-size segments; it must get ICMPv6 Packet Too Big from its
//     node and its TCP must complete.
//   - SmallerHop: node r sits behind two routers joined by a 1400-byte
//     link (topo.AddRoutedNode); a full-size packet of a pod (MTU 1430)
//     makes a 1500-byte outer IPv6 packet, which the router refuses with
//     Packet Too Big to the node. The pod must in turn get Packet Too Big
//     and TCP in both directions must complete intact.
func TestIPv6PMTU(t *testing.T) {
	c := startLab(t, lab.Options{Network6: testNetwork6, UnderlayCIDR6: testUnderlay6})
	a := mustAddWeftNode(t, c, "a")
	b := mustAddWeftNode(t, c, "b")
	r, err := c.AddRoutedWeftNode("r", topo.RoutedOptions{LinkMTU: 1400})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if _, err := c.AddPod(n, "p1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.Nodes {
		waitFor(t, 10*time.Second, func() bool { ts, _ := n.Tunnels(); return len(ts) == 4 }, "node %s has 4 tunnels", n.Name)
	}
	const size = 10 << 20

	t.Run("OversizePod", func(t *testing.T) {
		setPodMTU(t, a.Pods[0], 1500)
		setPodMTU(t, b.Pods[0], 1500)
		before := snmp6(t, a.Pods[0].NSPath)["Icmp6InPktTooBigs"]
		transferIntact(t, a, b, size, 30*time.Second)
		if got := snmp6(t, a.Pods[0].NSPath)["Icmp6InPktTooBigs"] - before; got == 0 {
			t.Errorf("the pod with MTU 1500 received no Packet Too Big: nobody told it the overlay's MTU")
		}
	})

	t.Run("SmallerHop", func(t *testing.T) {
		// The underlay really has the small hop for IPv6.
		if out, err := ping(a.Topo.NSPath, r.Topo.UnderlayIP6, 1, 1452); err == nil {
			t.Fatalf("a 1500-byte IPv6 ping crossed the 1400-byte link:\n%s", out)
		}
		for _, pr := range [][2]*lab.Node{{a, r}, {r, a}} {
			// Each direction from scratch: a receiver that learnt the path MTU
			// (the other direction's Packet Too Big) advertises an MSS that
			// fits it, and the sender would never need to hear of the hop.
			for _, n := range pr {
				if out, err := exec.Command("nsenter", "--net="+n.Pods[0].NSPath, "--", "ip", "-6", "route", "flush", "cache").CombinedOutput(); err != nil {
					t.Fatalf("flush %s's pod route cache: %v: %s", n.Name, err, out)
				}
			}
			before := snmp6(t, pr[0].Pods[0].NSPath)["Icmp6InPktTooBigs"]
			transferIntact(t, pr[0], pr[1], size, 20*time.Second)
			if got := snmp6(t, pr[0].Pods[0].NSPath)["Icmp6InPktTooBigs"] - before; got == 0 {
				t.Errorf("%s's pod received no Packet Too Big across the 1400-byte hop", pr[0].Name)
			}
		}
	})
}

// snmp6 reads the namespace's /proc/net/snmp6 ("Name value" lines).
func snmp6(t *testing.T, nsPath string) map[string]uint64 {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+nsPath, "--", "cat", "/proc/net/snmp6").Output()
	if err != nil {
		t.Fatalf("read snmp6 in %s: %v", nsPath, err)
	}
	m := map[string]uint64{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			v, _ := strconv.ParseUint(f[1], 10, 64)
			m[f[0]] = v
		}
	}
	return m
}

// TestIPv6LabFlannelNodes checks the harness the IPv6 tests stand on,
// without Weft: flannel-style nodes write flannel's dual-stack and
// IPv6-only leases to etcd (reached over IPv6 on an IPv6-only underlay),
// program flannel-v6.1 from each other's leases, and their pods reach each
// other on every family they have.
func TestIPv6LabFlannelNodes(t *testing.T) {
	for _, c := range []struct {
		name     string
		underlay string
		v6only   bool
	}{{"DualStack", "dual", false}, {"IPv6Only", "v6", true}} {
		t.Run(c.name, func(t *testing.T) {
			opts := lab.Options{Network6: testNetwork6, IPv6Only: c.v6only, UnderlayCIDR6: testUnderlay6, NoUnderlayIPv4: c.underlay == "v6"}
			cl := startLab(t, opts)
			for i, name := range []string{"k1", "k2"} {
				sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(200 + i), 0}), 24)
				if c.v6only {
					sn = netip.Prefix{}
				}
				sn6 := netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, 0, byte(200 + i)}), 64)
				if _, err := cl.AddFlannelNodeDual(name, sn, sn6); err != nil {
					t.Fatal(err)
				}
			}
			for _, n := range cl.Nodes {
				if _, err := cl.AddPod(n, "p1"); err != nil {
					t.Fatal(err)
				}
			}
			cli := etcdClient(t, cl)
			k1 := cl.Nodes[0]
			key := cl.EtcdPrefix + "/subnets/10.244.200.0-24&fd00:10:244:c8::-64"
			want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":"%s","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"},"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`,
				k1.Topo.UnderlayIP, k1.Topo.UnderlayIP6, k1.Topo.Flannel.VtepMAC, k1.Topo.Flannel.VtepMAC6)
			if c.v6only {
				key = cl.EtcdPrefix + "/subnets/0.0.0.0-0&fd00:10:244:c8::-64"
				want = fmt.Sprintf(`{"PublicIP":"0.0.0.0","PublicIPv6":"%s","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`,
					k1.Topo.UnderlayIP6, k1.Topo.Flannel.VtepMAC6)
			}
			resp, err := cli.Get(testCtx(t, 5*time.Second), key)
			if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != want {
				t.Errorf("lease %s: %v %v, want %s", key, err, resp, want)
			}
			pingMatrix(t, cl.Nodes)
		})
	}
}

// TestIPv6KubeDualStack: the dual-stack cluster with its state in Node
// objects (weftd --kube-subnet-mgr): each Node gets an IPv4 and an IPv6
// podCIDR, the flannel-style node publishes flanneld's public-ipv6 and
// backend-v6-data annotations. Every pod reaches every other on both
// families and 20 MB over IPv6 arrive intact Weft -> flannel. IPv6Only:
// the same as an IPv6-only network on an IPv6-only underlay (the
// apiserver reached over IPv6, IPv6 podCIDRs alone).
func TestIPv6KubeDualStack(t *testing.T) {
	for _, v6only := range []bool{false, true} {
		name := "DualStack"
		opts := lab.Options{Store: lab.StoreKube, Manifest: deploy.KubeWeftPath(), Network6: testNetwork6, UnderlayCIDR6: testUnderlay6}
		sn := flannelSubnet
		if v6only {
			name, opts.IPv6Only, opts.NoUnderlayIPv4, sn = "IPv6Only", true, true, netip.Prefix{}
		}
		t.Run(name, func(t *testing.T) {
			c := startLab(t, opts)
			for _, name := range []string{"n1", "n2"} {
				mustAddWeftNode(t, c, name)
			}
			k1, err := c.AddFlannelNodeDual("k1", sn, flannelSubnet6)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range c.Nodes {
				if _, err := c.AddPod(n, "p1"); err != nil {
					t.Fatal(err)
				}
				if !n.Subnet6.IsValid() || !n.Pods[0].IP6.IsValid() || n.Subnet.IsValid() == v6only {
					t.Fatalf("node %s: subnets %v %v, pod %v: want IPv6 (and IPv4 unless IPv6-only)", n.Name, n.Subnet, n.Subnet6, n.Pods[0].Addrs())
				}
			}
			want := 4
			if v6only {
				want = 2
			}
			for _, n := range c.Nodes[:2] {
				waitFor(t, 10*time.Second, func() bool { ts, _ := n.Tunnels(); return len(ts) == want }, "node %s has %d tunnels", n.Name, want)
			}
			t.Run("PodMatrix", func(t *testing.T) { pingMatrix(t, c.Nodes) })
			t.Run("TCPOverIPv6", func(t *testing.T) { transferIntact(t, c.Nodes[0], k1, 20<<20, time.Minute) })
		})
	}
}
