package bpf_test

import (
	"slices"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// The GRO cell (gro_cell_test.go) for IPv6 pods: decapsulated TCP segments
// with payload go into it, the Ethernet header naming IPv6 (weftgc1's
// eth_type_trans reads it); UDP and pure ACKs are delivered directly; what
// comes out is delivered like any decapsulated IPv6 packet.
func TestGROCell6(t *testing.T) {
	e := newCellEnv(t)
	in := validVX6in4(t, pkt6{})
	r := e.run("from_underlay", in)
	r.check(t, tcActRedirect, counters("decap"))
	want := append(slices.Clone(in[:12]), 0x86, 0xdd)
	hexDiff(t, "frame into the cell", r.out, append(want, in[offInnerIP:]...))

	r = e.run("from_underlay", validVX6in4(t, pkt6{proto: layers.IPProtocolUDP}))
	r.check(t, tcActRedirect, counters("decap", "deliver"))
	r = e.run("from_underlay", validVX6in4(t, pkt6{size: 40 + 20}))
	r.check(t, tcActRedirect, counters("decap", "deliver"))

	// DirectRouting TCP from peer C's pod takes the cell untouched.
	plain := ether(t, underlayMAC, peerCMAC, layers.EthernetTypeIPv6, ipv6(t, pkt6{src: remoteSrcC6, dst: pod2v6.IP}))
	r = e.run("from_underlay", plain)
	r.check(t, tcActRedirect, counters("direct_rx"))
	hexDiff(t, "direct frame into the cell", r.out, plain)

	inner := innerFromB6(t, pkt6{})
	r = e.run("from_gro_cell", append(ethHdr(localVtep, peerB.VtepMAC, layers.EthernetTypeIPv6), inner...))
	r.check(t, tcActRedirect, counters("deliver"))
	hexDiff(t, "delivered frame", r.out, append(ethHdr(pod2v6.MAC, pod2v6.HostMAC, layers.EthernetTypeIPv6), hopDecremented(inner)...))

	toHost := innerFromB6(t, pkt6{dst: hostIP6})
	r = e.run("from_gro_cell", append(ethHdr(localVtep, peerB.VtepMAC, layers.EthernetTypeIPv6), toHost...))
	r.check(t, tcActRedirect, counters("to_host"))
	hexDiff(t, "frame for the host", r.out, append(ethHdr(localVtep, peerB.VtepMAC, layers.EthernetTypeIPv6), toHost...))
}
