package test

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/test/topo"
)

// TestIPv6GatewayNUD: a pod's neighbour entry for its IPv6 gateway (the
// subnet's ::1, which no device owns; bpf/nd.h answers for it) survives
// neighbour unreachability detection. Linux sends the NUD probes of an
// entry in use unicast from the pod's link-local address (neigh_probe has
// no packet to take a source from); unanswered, the entry fails and the
// next packet must resolve the gateway again. With the pod's NUD timers
// shortened, one ping resolves the gateway (from the pod's own address);
// with no further traffic its entry then runs REACHABLE -> DELAY -> PROBE
// within about two seconds, and Weft must answer the probe (nd_reply) and
// the entry be REACHABLE again.
func TestIPv6GatewayNUD(t *testing.T) {
	c := startIPv6Lab(t, "v4", false, 2)
	n1 := c.weft[0]
	src, dst := n1.Pods[0], c.weft[1].Pods[0]
	inPod := func(args ...string) string {
		out, err := exec.Command("nsenter", append([]string{"--net=" + src.NSPath, "--"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		return string(out)
	}
	gateway := func() string { // the gateway entry's state, "" when there is none
		for _, l := range strings.Split(inPod("ip", "-6", "neigh", "show", "dev", "eth0"), "\n") {
			if f := strings.Fields(l); len(f) > 0 && strings.HasSuffix(f[0], "::1") {
				return f[len(f)-1]
			}
		}
		return ""
	}
	inPod("sysctl", "-q", "-w", "net.ipv6.neigh.eth0.base_reachable_time_ms=500",
		"net.ipv6.neigh.eth0.delay_first_probe_time=1", "net.ipv6.neigh.eth0.retrans_time_ms=300")
	if out, err := ping(src.NSPath, dst.IP6, 1, 0); err != nil {
		t.Fatalf("ping: %v: %s", err, out)
	}
	resolved := counter(t, n1, "nd_reply") // the first resolution's answer
	waitFor(t, 5*time.Second, func() bool { return counter(t, n1, "nd_reply") > resolved },
		"Weft to answer the pod's NUD probe for its gateway (entry now %q)", gateway())
	// Unanswered, the entry would be FAILED (three probes 300 ms apart), then gone.
	waitFor(t, 5*time.Second, func() bool { return gateway() == "REACHABLE" }, "the gateway entry REACHABLE again")
}

// TestIPv6PacketTooBigToPod: IPv6 routers never fragment, so a pod whose
// MTU is bigger than the overlay's must hear of it. An oversize ping gets
// ICMPv6 Packet Too Big from Weft (bpf/ptb.h) from weft0's address with
// the overlay's MTU, and the pod's stack takes it (its next DF ping fails
// locally). Oversize TCP, which Weft leaves to the kernel's forwarding path
// (pass_mtu), completes intact between two pods with MTU 1500.
func TestIPv6PacketTooBigToPod(t *testing.T) {
	c := startIPv6Lab(t, "v4", false, 2)
	n1 := c.weft[0]
	src, dst := n1.Pods[0], c.weft[1].Pods[0]
	setPodMTU(t, src, 1500)
	setPodMTU(t, dst, 1500)
	if out, err := ping(src.NSPath, dst.IP6, 1, 0); err != nil {
		t.Fatalf("ping: %v: %s", err, out)
	}
	before := counter(t, n1, "packet_too_big")
	// 1452 bytes of payload: a 1500-byte IPv6 packet, 50 more than the overlay carries.
	out, _ := ping(src.NSPath, dst.IP6, 1, 1452)
	if !strings.Contains(string(out), "From "+n1.Subnet6.Addr().String()+" ") || !strings.Contains(string(out), "mtu=1450") {
		t.Errorf("oversize ping: no Packet Too Big from weft0 (%s) with mtu=1450:\n%s", n1.Subnet6.Addr(), out)
	} else {
		t.Logf("oversize ping:\n%s", out)
	}
	if d := counter(t, n1, "packet_too_big") - before; d != 1 {
		t.Errorf("packet_too_big moved by %d, want 1", d)
	}
	// The pod's route cache now has the overlay's MTU: it refuses to send more.
	out, _ = ping(src.NSPath, dst.IP6, 1, 1452)
	if !strings.Contains(string(out), "too long") && !strings.Contains(string(out), "mtu=1450") {
		t.Errorf("second oversize ping: the pod did not learn the MTU:\n%s", out)
	}

	// Forget the learnt MTU: TCP (MSS 1440 both ways) finds it again through the kernel.
	if out, err := exec.Command("nsenter", "--net="+src.NSPath, "--", "ip", "-6", "route", "flush", "cache").CombinedOutput(); err != nil {
		t.Fatalf("flush the pod's route cache: %v: %s", err, out)
	}
	passMTU := counter(t, n1, "pass_mtu")
	transferIntact(t, c.weft[0], c.weft[1], 10<<20, time.Minute)
	if counter(t, n1, "pass_mtu") == passMTU {
		t.Errorf("no oversize TCP went to the kernel (pass_mtu unchanged): the test did not exercise PMTU")
	}
}

// TestIPv6LocalPods: two IPv6 pods on one Weft node reach each other
// through from_pod's local delivery (no encapsulation, hop limit - 1), each
// having resolved its gateway through Weft's Neighbour Advertisement.
func TestIPv6LocalPods(t *testing.T) {
	c := startIPv6Lab(t, "v4", false, 2)
	n1 := c.weft[0]
	p2, err := c.AddPod(n1, "p2")
	if err != nil {
		t.Fatal(err)
	}
	p1 := n1.Pods[0]
	local, encap := counter(t, n1, "local"), counter(t, n1, "encap")
	for _, pr := range [][2]*topo.Pod{{p1, p2}, {p2, p1}} {
		if out, err := ping(pr[0].NSPath, pr[1].IP6, 2, 0); err != nil {
			t.Errorf("%s -> %s: %v\n%s", pr[0].Name, pr[1].IP6, err, out)
		}
	}
	res, err := transferTCP(testCtx(t, time.Minute), p1.NSPath, p2.NSPath, p2.IP6, 10<<20)
	if err != nil || !res.Intact(10<<20) {
		t.Errorf("TCP between local pods over IPv6: %v (%d bytes, intact %v)", err, res.Bytes, res.Intact(10<<20))
	}
	if counter(t, n1, "local") == local {
		t.Errorf("local did not move: the pods' traffic did not take from_pod's local delivery")
	}
	if d := counter(t, n1, "encap") - encap; d != 0 {
		t.Errorf("encap moved by %d between pods on one node", d)
	}
}
