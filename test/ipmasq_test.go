package test

import (
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/test/lab"
	"github.com/weftnet/weft/test/topo"
)

// sourceSeen sends one UDP datagram from nsPath to dst and returns the
// source address the receiver (a socket in dstNS) saw; replied says
// whether the receiver's answer made it back to the sender.
func sourceSeen(t *testing.T, nsPath, dstNS string, dst netip.AddrPort) (src netip.Addr, replied bool) {
	t.Helper()
	return sourceSeenVia(t, nsPath, dstNS, dst, dst)
}

// sourceSeenVia is sourceSeen with the receiver listening on listen and the
// sender sending to dst (a Service address NATed to listen).
func sourceSeenVia(t *testing.T, nsPath, dstNS string, listen, dst netip.AddrPort) (src netip.Addr, replied bool) {
	t.Helper()
	rx, err := udpConnIn(dstNS, listen)
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	var tx *net.UDPConn
	if err := topo.Do(nsPath, func() error {
		var err error
		tx, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	buf := make([]byte, 64)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		tx.Write([]byte("who am i"))
		rx.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, from, err := rx.ReadFromUDPAddrPort(buf)
		if err != nil {
			continue
		}
		rx.WriteToUDPAddrPort([]byte("you are "+from.Addr().String()), from)
		tx.SetReadDeadline(time.Now().Add(time.Second))
		_, err = tx.Read(buf)
		return from.Addr(), err == nil
	}
	t.Fatalf("nothing from %s reached %s", nsPath, dst)
	return
}

// nftRuleset is the node's whole nftables ruleset.
func nftRuleset(t *testing.T, n *lab.Node) string {
	t.Helper()
	out, err := n.Topo.Exec(testCtx(t, 10*time.Second), "nft", "list", "ruleset")
	if err != nil {
		t.Fatalf("nft list ruleset on %s: %v\n%s", n.Name, err, out)
	}
	return string(out)
}

// TestIPMasq is issue 10's egress: with --ip-masq a pod reaches a host
// outside the cluster network (a netns on the underlay with no route to
// pods) as its node's address and gets the answer; pod-to-pod traffic keeps
// pod addresses, on one node and across nodes; a node without the flag
// masquerades nothing. weftd restarts leave exactly one copy of the rules,
// a restart without the flag and --cleanup-on-exit leave none.
func TestIPMasq(t *testing.T) {
	c := newLab(t, "")
	n1 := mustAddWeftNode(t, c, "n1", "--ip-masq")
	n2 := mustAddWeftNode(t, c, "n2")
	outside, err := c.Lab.AddNode("outside")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		n    *lab.Node
		name string
	}{{n1, "a"}, {n1, "b"}, {n2, "a"}} {
		if _, err := c.AddPod(p.n, p.name); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*lab.Node{n1, n2} {
		waitFor(t, 10*time.Second, func() bool { ts, _ := n.Tunnels(); return len(ts) == 1 }, "%s has 1 tunnel", n.Name)
	}
	n1a, n1b, n2a := n1.Pods[0], n1.Pods[1], n2.Pods[0]
	out := netip.AddrPortFrom(outside.UnderlayIP, 7000)

	masqueraded := func(t *testing.T, pod *topo.Pod, node *lab.Node) {
		t.Helper()
		src, replied := sourceSeen(t, pod.NSPath, outside.NSPath, out)
		if src != node.Topo.UnderlayIP {
			t.Errorf("outside host saw %s from %s, want its node's %s", src, pod.Name, node.Topo.UnderlayIP)
		}
		if !replied {
			t.Errorf("the outside host's answer did not reach %s", pod.Name)
		}
	}
	notMasqueraded := func(t *testing.T, pod *topo.Pod) {
		t.Helper()
		if src, _ := sourceSeen(t, pod.NSPath, outside.NSPath, out); src != pod.IP {
			t.Errorf("outside host saw %s from %s, want the pod's own %s (no --ip-masq)", src, pod.Name, pod.IP)
		}
	}
	podToPod := func(t *testing.T) {
		t.Helper()
		for _, pr := range [][2]*topo.Pod{{n1a, n1b}, {n1a, n2a}, {n2a, n1a}} {
			if src, _ := sourceSeen(t, pr[0].NSPath, pr[1].NSPath, netip.AddrPortFrom(pr[1].IP, 7001)); src != pr[0].IP {
				t.Errorf("%s -> %s arrived from %s, want the pod address %s", pr[0].Name, pr[1].Name, src, pr[0].IP)
			}
		}
	}
	oneCopy := func(t *testing.T) {
		t.Helper()
		rs := nftRuleset(t, n1)
		if strings.Count(rs, "table ip weft") != 1 || strings.Count(rs, "masquerade fully-random") != 1 {
			t.Errorf("n1 ruleset, want one table ip weft with one masquerade rule:\n%s", rs)
		}
	}

	t.Run("Egress", func(t *testing.T) {
		masqueraded(t, n1a, n1)
		masqueraded(t, n1b, n1)
		notMasqueraded(t, n2a)
		if rs := nftRuleset(t, n2); strings.Contains(rs, "masquerade") {
			t.Errorf("n2 runs without --ip-masq but has:\n%s", rs)
		}
	})
	t.Run("PodToPodKeepsAddresses", podToPod)
	// Through the host's netfilter too: a Service (DNAT on n1) to a pod on
	// n2 passes n1's postrouting, where --ip-masq must leave it alone.
	t.Run("PodToServiceKeepsAddresses", func(t *testing.T) {
		svc, be := netip.MustParseAddrPort("10.96.0.9:53"), netip.AddrPortFrom(n2a.IP, 5353)
		nftApply(t, n1.Topo, kubeStyleRules("svctest", []kubeStyleDNAT{{svc: svc, backend: be}}))
		src, replied := sourceSeenVia(t, n1a.NSPath, n2a.NSPath, be, svc)
		if src != n1a.IP || !replied {
			t.Errorf("pod -> Service -> pod on another node arrived from %s (replied %v), want the pod address %s", src, replied, n1a.IP)
		}
	})
	t.Run("RestartsLeaveOneCopy", func(t *testing.T) {
		oneCopy(t)
		for i := 0; i < 2; i++ {
			if err := stopWeftd(t, c, n1, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			oneCopy(t) // left in place while weftd is down, like the data plane
			if err := c.StartWeftd(n1, "--ip-masq"); err != nil {
				t.Fatal(err)
			}
			oneCopy(t)
		}
		masqueraded(t, n1a, n1)
		podToPod(t)
	})
	t.Run("RestartWithoutFlagRemoves", func(t *testing.T) {
		if err := stopWeftd(t, c, n1, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := c.StartWeftd(n1); err != nil {
			t.Fatal(err)
		}
		if rs := nftRuleset(t, n1); strings.Contains(rs, "table ip weft") {
			t.Errorf("weftd without --ip-masq left:\n%s", rs)
		}
		notMasqueraded(t, n1a)
	})
	t.Run("CleanupOnExitRemoves", func(t *testing.T) {
		if err := stopWeftd(t, c, n1, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := c.StartWeftd(n1, "--ip-masq", "--cleanup-on-exit"); err != nil {
			t.Fatal(err)
		}
		oneCopy(t)
		if err := stopWeftd(t, c, n1, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if rs := nftRuleset(t, n1); strings.Contains(rs, "table ip weft") {
			t.Errorf("--cleanup-on-exit left:\n%s", rs)
		}
	})
}
