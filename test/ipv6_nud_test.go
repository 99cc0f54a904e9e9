package test

import (
	"os/exec"
	"strings"
	"testing"
	"time"
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
