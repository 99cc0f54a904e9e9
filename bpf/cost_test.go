package bpf_test

import (
	"sort"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
)

// Per-packet cost of the programs on fast paths that stay the same across
// BPF_PROG_TEST_RUN repeats (the same skb runs again and again, so each run
// must leave it on the same path: delivery to a local pod only lowers the
// TTL, so up to 250 repeats from TTL 255 all deliver). The kernel times the
// runs itself (no syscall in the figure); the median of many batches keeps
// a shared machine's noise out. Compare the numbers between builds, e.g.
// before and after a change to from_pod:
//
//	go test -run '^$' -bench ProgramCost -benchtime 2000x ./bpf/
func BenchmarkProgramCost(b *testing.B) {
	for _, c := range []struct {
		name, prog string
		frame      func(e *env) []byte
		want       string
		v6         bool // on newEnv6's node (IPv6 underlay, peers E and F); else newEnv's, as before IPv6
	}{
		{"from_pod/udp64-to-local-pod", "from_pod", func(e *env) []byte {
			return podFrame(b, pod1, pkt{dst: pod2.IP, proto: layers.IPProtocolUDP, size: 64, ttl: 255})
		}, "local", false},
		{"from_underlay/direct-rx-udp64-to-local-pod", "from_underlay", func(e *env) []byte {
			return ether(b, underlayMAC, peerCMAC, layers.EthernetTypeIPv4,
				ipv4(b, pkt{src: remoteSrcC, dst: pod2.IP, proto: layers.IPProtocolUDP, size: 64, ttl: 255}))
		}, "direct_rx", false},
		// Encapsulation and decapsulation change the skb, so a repeat would
		// not take the same path: these rows time the receive classifier
		// alone, on frames it leaves unchanged. Outer IPv4 and IPv6 parsed up
		// to the VNI:
		{"from_underlay/vxlan4-udp64-other-vni", "from_underlay", func(e *env) []byte {
			v := defaultVX(innerFromB(b, pkt{proto: layers.IPProtocolUDP, size: 64}))
			v.vni = 7
			return vxlanFrame(b, v)
		}, "pass_other_vni", false},
		{"from_underlay/vxlan6-udp64-other-vni", "from_underlay", func(e *env) []byte {
			v := defaultVX6(innerFromE(b, pkt{proto: layers.IPProtocolUDP, size: 64}))
			v.vni = 7
			return vxlan6Frame(b, v)
		}, "pass_other_vni", true},
		// ... and over IPv6 the whole classification, inner source check and
		// the LCO checksum sum included, of a frame whose checksum it then
		// leaves to the kernel (everything a decap does but the helpers).
		{"from_underlay/vxlan6-udp64-full-classify", "from_underlay", func(e *env) []byte {
			f := validVX6(b, pkt{proto: layers.IPProtocolUDP, size: 64})
			f[off6UDP+6] ^= 0x40
			return f
		}, "pass_outer6_csum", true},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := newEnv(b)
			if c.v6 {
				e = newEnv6(b)
			}
			in := c.frame(e)
			// One checked run: the path is the one the name says.
			if r := e.run(c.prog, in); r.delta[c.want] != 1 {
				b.Fatalf("path: counters %v, want %s", r.delta, c.want)
			}
			const repeat = 250
			var per []float64
			for i := 0; i < b.N; i++ {
				_, d, err := e.prog(c.prog).Benchmark(in, repeat, nil)
				if err != nil {
					b.Fatal(err)
				}
				per = append(per, float64(d)/float64(time.Nanosecond))
			}
			sort.Float64s(per)
			b.ReportMetric(per[len(per)/2], "ns/pkt-median")
			b.ReportMetric(per[len(per)/10], "ns/pkt-p10")
		})
	}
}
