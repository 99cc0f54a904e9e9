package bpf_test

import (
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
)

// Per-packet cost of the programs on fast paths that stay the same across
// BPF_PROG_TEST_RUN repeats (the same skb runs again and again, so each run
// must leave it on the same path: delivery to a local pod only lowers the
// TTL, so up to 250 repeats from TTL 255 all deliver). The kernel times the
// runs itself (no syscall in the figure); the median of many batches keeps
// a shared machine's noise out. Paths that change the skb so that a repeat
// would take another path (encapsulation, decapsulation) run once per
// syscall instead: their figure includes the kernel's timer reads around
// one run (a constant, the same in every build). Compare the numbers
// between builds, e.g. before and after a change to from_pod:
//
//	go test -run '^$' -bench ProgramCost -benchtime 3000x ./bpf/
func BenchmarkProgramCost(b *testing.B) {
	for _, c := range []struct {
		name, prog string
		frame      func(e *env) []byte
		want       string
		repeat     int // runs per syscall: 250 where the path repeats, else 1
	}{
		{"from_pod/udp64-to-local-pod", "from_pod", func(e *env) []byte {
			return podFrame(b, pod1, pkt{dst: pod2.IP, proto: layers.IPProtocolUDP, size: 64, ttl: 255})
		}, "local", 250},
		// The per-peer counters (tx on these two, rx on the next two).
		{"from_pod/direct-tx-udp64", "from_pod", func(e *env) []byte {
			return podFrame(b, pod1, pkt{dst: remotePodC, proto: layers.IPProtocolUDP, size: 64, ttl: 255})
		}, "direct", 250},
		{"from_pod/encap-udp64", "from_pod", func(e *env) []byte {
			return podFrame(b, pod1, pkt{dst: remotePodB, proto: layers.IPProtocolUDP, size: 64})
		}, "encap", 1},
		// Delivery rewrites the Ethernet source, which the next repeat's
		// neighbour check (antispoof.h) would refuse: one run per syscall.
		{"from_underlay/direct-rx-udp64-to-local-pod", "from_underlay", func(e *env) []byte {
			return ether(b, underlayMAC, peerCMAC, layers.EthernetTypeIPv4,
				ipv4(b, pkt{src: remoteSrcC, dst: pod2.IP, proto: layers.IPProtocolUDP, size: 64, ttl: 255}))
		}, "direct_rx", 1},
		{"from_underlay/decap-udp64-to-local-pod", "from_underlay", func(e *env) []byte {
			return validVX(b, pkt{proto: layers.IPProtocolUDP, size: 64})
		}, "deliver", 1},
		// The same paths for IPv6 pods (issue 14).
		{"from_pod/udp64-v6-to-local-pod", "from_pod", func(e *env) []byte {
			return podFrame6(b, pod1v6, pkt6{dst: pod2v6.IP, proto: layers.IPProtocolUDP, size: 64, hopLimit: 255})
		}, "local", 250},
		{"from_pod/encap-udp64-v6-in-v4", "from_pod", func(e *env) []byte {
			return podFrame6(b, pod1v6, pkt6{dst: remotePodB6, proto: layers.IPProtocolUDP, size: 64})
		}, "encap", 1},
		{"from_underlay/direct-rx-udp64-v6-to-local-pod", "from_underlay", func(e *env) []byte {
			return ether(b, underlayMAC, peerCMAC, layers.EthernetTypeIPv6,
				ipv6(b, pkt6{src: remoteSrcC6, dst: pod2v6.IP, proto: layers.IPProtocolUDP, size: 64, hopLimit: 255}))
		}, "direct_rx", 1}, // delivery rewrites the Ethernet source, as for IPv4
		{"from_underlay/decap-udp64-v6-in-v4-to-local-pod", "from_underlay", func(e *env) []byte {
			return validVX6in4(b, pkt6{proto: layers.IPProtocolUDP, size: 64})
		}, "deliver", 1},
		// VXLAN over the IPv6 underlay (outer6.h): IPv4 pods to and from peer E.
		{"from_pod/encap-udp64-v4-in-v6", "from_pod", func(e *env) []byte {
			return podFrame(b, pod1, pkt{dst: remotePodE, proto: layers.IPProtocolUDP, size: 64})
		}, "encap", 1},
		{"from_underlay/decap-udp64-v4-in-v6-to-local-pod", "from_underlay", func(e *env) []byte {
			return validVX6(b, pkt{proto: layers.IPProtocolUDP, size: 64})
		}, "deliver", 1},
		// ... and IPv6 pods to and from peer E (v6-in-v6).
		{"from_pod/encap-udp64-v6-in-v6", "from_pod", func(e *env) []byte {
			return podFrame6(b, pod1v6, pkt6{dst: remotePodE6, proto: layers.IPProtocolUDP, size: 64})
		}, "encap", 1},
		// Over 1280 bytes outer: the path-MTU lookups toward the peer run (ptb.h, outer6.h).
		{"from_pod/encap-udp1400-v6-in-v6", "from_pod", func(e *env) []byte {
			return podFrame6(b, pod1v6, pkt6{dst: remotePodE6, proto: layers.IPProtocolUDP, size: 1400})
		}, "encap", 1},
		{"from_pod/encap-udp1400-v4-in-v6", "from_pod", func(e *env) []byte {
			return podFrame(b, pod1, pkt{dst: remotePodE, proto: layers.IPProtocolUDP, size: 1400})
		}, "encap", 1},
		{"from_underlay/decap-udp64-v6-in-v6-to-local-pod", "from_underlay", func(e *env) []byte {
			return vxlan6in6Frame(b, innerFromE6(b, pkt6{proto: layers.IPProtocolUDP, size: 64}), nil)
		}, "deliver", 1},
	} {
		b.Run(c.name, func(b *testing.B) {
			// Node A with its IPv6 underlay address and peers E, F and G too:
			// its other paths are newEnv's.
			e := newEnv6(b)
			in := c.frame(e)
			// One checked run: the path is the one the name says.
			if r := e.run(c.prog, in); r.delta[c.want] != 1 {
				b.Fatalf("path: counters %v, want %s", r.delta, c.want)
			}
			var per []float64
			before := e.snapshot()
			for i := 0; i < b.N; i++ {
				_, d, err := e.prog(c.prog).Benchmark(in, c.repeat, nil)
				if err != nil {
					b.Fatal(err)
				}
				per = append(per, float64(d)/float64(time.Nanosecond))
			}
			// Every repeat took the path, or the figure is another path's. (A
			// syscall interrupted by a signal, Go's preemption included, is
			// run again, so there can be more runs than asked for.)
			got, want := counterDelta(before, e.snapshot()), uint64(b.N*c.repeat)
			for name := range got {
				if got[c.want] < want || strings.HasPrefix(name, "drop_") || strings.HasPrefix(name, "pass_") {
					b.Fatalf("%d runs, counters moved %v, want %s each time", want, got, c.want)
				}
			}
			sort.Float64s(per)
			b.ReportMetric(per[len(per)/2], "ns/pkt-median")
			b.ReportMetric(per[len(per)/10], "ns/pkt-p10")
		})
	}
}
