package test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/test/lab"
	"github.com/weftnet/weft/test/topo"
)

// counter reads one data-plane counter of a Weft node.
func counter(t *testing.T, n *lab.Node, name string) uint64 {
	t.Helper()
	set, err := n.Maps()
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	c, err := set.Stats.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return c.Packets
}

// TestServiceNATFastPath is issue 10's first symptom, as a new user meets
// it: a DNAT rule of the kind kube-proxy writes (nat prerouting, Service
// address:port -> backend pod:port) on a Weft node, and a pod there calling
// the Service, TCP and UDP, with the backend on the same node, on another
// Weft node, on a flannel-style kernel-vxlan node, and the pod itself
// (hairpin, masqueraded). Replies must come back through the host's
// conntrack to be un-NATed (ctgate.h); plain pod-to-pod traffic must keep
// the fast path; strict rp_filter on the client node. Both decap modes.
func TestServiceNATFastPath(t *testing.T) {
	for _, decap := range []string{"tc", "xdp"} {
		t.Run(decap, func(t *testing.T) { testServiceNAT(t, decap) })
	}
}

// serviceCluster is the cluster the Service tests share: Weft nodes n1 and
// n2 and a flannel-style node k1, with a client and a same-node backend on
// n1, a backend on n2 and one on k1, every tunnel in place.
type serviceCluster struct {
	c                              *lab.Cluster
	n1, n2, k1                     *lab.Node
	client, local, remote, flannel *topo.Pod
}

func newServiceCluster(t *testing.T, weftdArgs ...string) serviceCluster {
	t.Helper()
	c := newLab(t, "")
	n1 := mustAddWeftNode(t, c, "n1", weftdArgs...)
	n2 := mustAddWeftNode(t, c, "n2", weftdArgs...)
	k1, err := c.AddFlannelNode("k1", netip.MustParsePrefix("10.244.200.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		n    *lab.Node
		name string
	}{{n1, "client"}, {n1, "local"}, {n2, "remote"}, {k1, "flannel"}} {
		if _, err := c.AddPod(p.n, p.name); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*lab.Node{n1, n2} {
		waitFor(t, 10*time.Second, func() bool { ts, _ := n.Tunnels(); return len(ts) == 2 }, "%s has 2 tunnels", n.Name)
	}
	return serviceCluster{c: c, n1: n1, n2: n2, k1: k1,
		client: n1.Pods[0], local: n1.Pods[1], remote: n2.Pods[0], flannel: k1.Pods[0]}
}

func testServiceNAT(t *testing.T, decap string) {
	sc := newServiceCluster(t, "--decap", decap)
	n1, n2 := sc.n1, sc.n2
	client, local, remote, flannel := sc.client, sc.local, sc.remote, sc.flannel

	const port = 8080
	backends := map[string]netip.Addr{"same node": local.IP, "other Weft node": remote.IP,
		"flannel node": flannel.IP, "hairpin": client.IP}
	svcs := map[string]netip.AddrPort{}
	var rules []kubeStyleDNAT
	i := 0
	for name, be := range backends {
		i++
		svc := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 0, byte(i)}), 80)
		svcs[name] = svc
		rules = append(rules, kubeStyleDNAT{svc: svc, backend: netip.AddrPortFrom(be, port)})
		ns := map[netip.Addr]string{local.IP: local.NSPath, remote.IP: remote.NSPath, flannel.IP: flannel.NSPath, client.IP: client.NSPath}[be]
		startEcho(t, ns, netip.AddrPortFrom(be, port))
	}
	bulkSvc, bulkBackend := netip.MustParseAddrPort("10.96.1.1:90"), netip.AddrPortFrom(remote.IP, 9090)
	rules = append(rules, kubeStyleDNAT{svc: bulkSvc, backend: bulkBackend})
	nftApply(t, n1.Topo, kubeStyleRules("svctest", rules))
	// Strict reverse-path filtering on the client node (the lab runs with it
	// off, as Kubernetes nodes often do): what the conntrack gate hands to
	// the stack must arrive where the route back points (a pod's veth for
	// its /32, weft0 for remote pods).
	if err := n1.Topo.SetSysctl("net.ipv4.conf.all.rp_filter", "1"); err != nil {
		t.Fatal(err)
	}

	// Plain pod-to-pod first: fast path both ways, nothing for conntrack.
	ct0 := counter(t, n1, "pass_conntrack") + counter(t, n2, "pass_conntrack")
	res, err := transferTCP(testCtx(t, time.Minute), client.NSPath, remote.NSPath, remote.IP, 4<<20)
	if err != nil || !res.Intact(4<<20) {
		t.Fatalf("pod to pod: %v %+v", err, res)
	}
	if ct := counter(t, n1, "pass_conntrack") + counter(t, n2, "pass_conntrack"); ct != ct0 {
		t.Errorf("plain pod-to-pod TCP moved pass_conntrack by %d: it must keep the fast path", ct-ct0)
	}

	for name, svc := range svcs {
		t.Run(name, func(t *testing.T) {
			for _, proto := range []string{"tcp", "udp"} {
				checkEcho(t, client.NSPath, proto, svc)
			}
		})
	}
	// DNAT on the backend's node instead (a hostPort): a pod on n1 calls an
	// address of n2 (weft0's, reached through the tunnel), n2 NATs to its
	// pod, and that pod's reply to a remote pod must leave n2 through n2's
	// conntrack (the gate in forward_to_peer), not the fast path. (Through
	// n2's underlay address the un-NATed reply would carry that address as
	// inner source, which n1's decapsulation refuses: see the README.)
	t.Run("DNAT on the backend's node", func(t *testing.T) {
		hostPort := netip.AddrPortFrom(loader.HostIP(n2.Subnet), 30080)
		nftApply(t, n2.Topo, kubeStyleRules("hostport", []kubeStyleDNAT{{svc: hostPort, backend: netip.AddrPortFrom(remote.IP, port)}}))
		before := counter(t, n2, "pass_conntrack")
		for _, proto := range []string{"tcp", "udp"} {
			checkEcho(t, client.NSPath, proto, hostPort)
		}
		if counter(t, n2, "pass_conntrack") == before {
			t.Errorf("n2's replies to the remote client did not go through n2's conntrack")
		}
	})

	got := counter(t, n1, "pass_conntrack")
	t.Logf("n1 pass_conntrack %d, n2 %d", got, counter(t, n2, "pass_conntrack"))
	if got == 0 {
		t.Errorf("n1 pass_conntrack 0 after NATed flows")
	}

	t.Run("100MB through the Service", func(t *testing.T) {
		const size = 100 << 20
		res, err := lab.TransferTCPVia(testCtx(t, 2*time.Minute), client.NSPath, remote.NSPath, bulkBackend, bulkSvc, size)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Intact(size) {
			t.Fatalf("%d of %d bytes, sha256 sent %s received %s", res.Bytes, size, res.SentSum, res.RecvSum)
		}
		t.Logf("100 MB through a Service: %.2f Gbit/s", res.Gbps())
	})
}
