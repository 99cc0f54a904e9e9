package bpf_test

// Program.Run cases for issue 12: ECN on decapsulation (RFC 6040), the
// frag-needed policy, and the receive paths' handling of what they cannot
// decide alone.

import (
	"fmt"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

var ecnNames = [4]string{"Not-ECT", "ECT(1)", "ECT(0)", "CE"}

// TestECNDecapTable: every inner codepoint under every outer codepoint,
// through tc and XDP. Only an outer CE changes anything (as in the Linux
// vxlan driver's INET_ECN_decapsulate): ECT(0)/ECT(1) inner become CE,
// Not-ECT inner is dropped and counted, CE stays CE.
func TestECNDecapTable(t *testing.T) {
	for outer := range 4 {
		for inner := range 4 {
			name := fmt.Sprintf("outer %s, inner %s", ecnNames[outer], ecnNames[inner])
			frame := mutate(validVX(t, pkt{tos: 0x20 | byte(inner)}), true, func(b []byte) { b[offOuterIP+1] = 0x80 | byte(outer) })
			wantECN := inner
			switch {
			case outer == 3 && inner == 0:
				wantECN = -1 // dropped
			case outer == 3:
				wantECN = 3
			}
			t.Run(name, func(t *testing.T) {
				t.Run("tc", func(t *testing.T) {
					e := newEnv(t)
					r := e.run("from_underlay", frame)
					if wantECN < 0 {
						r.check(t, tcActShot, counters("drop_ecn_not_ect"))
						return
					}
					want := counters("decap", "deliver")
					if wantECN != inner {
						want["ecn_ce"] = 1
					}
					r.check(t, tcActRedirect, want)
					checkInnerECN(t, r.out[14:], frame[offInnerIP:], wantECN)
				})
				t.Run("xdp", func(t *testing.T) {
					e := newEnv(t)
					r := e.run("from_underlay_xdp", frame)
					if wantECN < 0 {
						r.check(t, xdpDrop, counters("drop_ecn_not_ect"))
						return
					}
					want := counters("decap")
					if wantECN != inner {
						want["ecn_ce"] = 1
					}
					r.check(t, xdpPass, want)
					checkInnerECN(t, r.out[14:], frame[offInnerIP:], wantECN)
				})
			})
		}
	}
}

// checkInnerECN: the inner header got codepoint ecn, a valid checksum, and
// nothing else changed (TTL aside: tc delivers like a router).
func checkInnerECN(t *testing.T, got, orig []byte, ecn int) {
	t.Helper()
	if int(got[1]&3) != ecn {
		t.Errorf("inner ECN %s, want %s", ecnNames[got[1]&3], ecnNames[ecn])
	}
	if got[1]&^3 != orig[1]&^3 {
		t.Errorf("inner DSCP changed: %#x -> %#x", orig[1], got[1])
	}
	if !ipv4CsumValid(got[:20]) {
		t.Errorf("inner header checksum invalid after ECN: %x", got[:20])
	}
}

// TestEncapCopiesECN: what the underlay may mark (RFC 6040 normal mode: ECT
// copied, CE sent as ECT(0)).
func TestEncapCopiesECN(t *testing.T) {
	for inner, outer := range [4]byte{0, 1, 2, 2} {
		t.Run(ecnNames[inner], func(t *testing.T) {
			e := newEnv(t)
			r := e.run("from_pod", podFrame(t, pod1, pkt{dst: remotePodB, tos: byte(inner)}))
			r.check(t, tcActRedirect, counters("encap"))
			if got := r.out[offOuterIP+1] & 3; got != outer {
				t.Errorf("outer ECN %s, want %s", ecnNames[got], ecnNames[outer])
			}
		})
	}
}

// icmpError is an oversize DF ICMP error a pod sends (type/code given).
func icmpError(t testing.TB, from pkt, typ, code uint8) []byte {
	b := podFrame(t, pod1, from)
	b[14+20], b[14+21] = typ, code
	return b
}

// TestFragNeededPolicy: never an ICMP error about an ICMP error or a
// non-first fragment (RFC 1122 3.2.2); a per-source rate limit.
func TestFragNeededPolicy(t *testing.T) {
	big := pkt{dst: remotePodB, size: 1500, df: true, proto: layers.IPProtocolICMPv4}
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"destination unreachable", icmpError(t, big, 3, 1)},
		{"fragmentation needed", icmpError(t, big, 3, 4)},
		{"source quench", icmpError(t, big, 4, 0)},
		{"redirect", icmpError(t, big, 5, 0)},
		{"time exceeded", icmpError(t, big, 11, 0)},
		{"parameter problem", icmpError(t, big, 12, 0)},
		{"non-first fragment", mutateIP(podFrame(t, pod1, big), func(h []byte) { put16(h[6:], 0x4000|100) })},
		{"non-first TCP fragment", mutateIP(podFrame(t, pod1, pkt{dst: remotePodB, size: 1500, df: true}), func(h []byte) { put16(h[6:], 0x4000|100) })},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.run("from_pod", c.frame)
			r.check(t, tcActShot, counters("drop_mtu_no_icmp"))
		})
	}

	t.Run("ICMP echo reply is answered", func(t *testing.T) {
		e := newEnv(t)
		in := icmpError(t, big, 0, 0)
		r := e.run("from_pod", in)
		r.check(t, tcActRedirect, counters("icmp_frag_needed"))
		checkFragNeeded(t, in, r.out, 1450)
	})

	t.Run("rate limited per source", func(t *testing.T) {
		e := newEnv(t)
		in := podFrame(t, pod1, big)
		// A burst of 10 is answered (the 100 ms refill cannot add one while
		// this loop runs), the 11th and 12th are not.
		for i := range 12 {
			r := e.run("from_pod", in)
			if i < 10 {
				r.check(t, tcActRedirect, counters("icmp_frag_needed"))
			} else {
				r.check(t, tcActShot, counters("drop_frag_needed_suppressed"))
			}
		}
		// The kernel-answered protocols draw on the same budget.
		r := e.run("from_pod", podFrame(t, pod1, pkt{dst: remotePodB, size: 1500, df: true}))
		r.check(t, tcActShot, counters("drop_frag_needed_suppressed"))
		// Another pod has its own budget.
		other := big
		other.src = pod2.IP
		r = e.run("from_pod", podFrame(t, pod2, other))
		r.check(t, tcActRedirect, counters("icmp_frag_needed"))
	})
}

// TestGROSinkWithoutTunnelMetadata: what reaches gro_sink without the
// collect_md metadata the kernel's vxlan socket attaches (Program.Run cannot
// attach it) is not VXLAN the kernel decapsulated: dropped and counted. The
// delivery of reassembled VXLAN is proven end to end (test/underlay_test.go).
func TestGROSinkWithoutTunnelMetadata(t *testing.T) {
	e := newEnv(t)
	r := e.run("gro_sink", podFrame(t, pod1, pkt{dst: pod2.IP}))
	r.check(t, tcActShot, counters("drop_gro_device"))
}

// TestFragmentsNeverDropped: first, middle and last fragments of VXLAN to us
// go to the kernel for reassembly, counted, from both receive programs.
func TestFragmentsNeverDropped(t *testing.T) {
	e := newEnv(t)
	valid := validVX(t, pkt{size: 1450, df: true})
	for _, fo := range []uint16{0x2000, 0x2000 | 100, 100, 0x6000} {
		f := mutate(valid, true, func(b []byte) { put16(b[offOuterIP+6:], fo) })
		for _, prog := range []string{"from_underlay", "from_underlay_xdp"} {
			r := e.run(prog, f)
			if (prog == "from_underlay" && r.verdict != tcActOK) || (prog == "from_underlay_xdp" && r.verdict != xdpPass) {
				t.Errorf("%s: fragment %#x got verdict %d, want a pass to the kernel", prog, fo, r.verdict)
			}
			if r.delta["pass_fragment"] != 1 {
				t.Errorf("%s: fragment %#x counted %v, want pass_fragment", prog, fo, r.delta)
			}
		}
	}
}
