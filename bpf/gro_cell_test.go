package bpf_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// groCellIfIndex stands in for weftgc0 in the config; Program.Run never
// performs the redirect, so any index will do.
const groCellIfIndex = 4242

func newCellEnv(t *testing.T) *env {
	e := newEnv(t)
	c := defaultConfig()
	c.GROCellIfIndex = groCellIfIndex
	e.setConfig(c)
	return e
}

// TestGROCellTakesSingleTCPSegments: on a node with a GRO cell, a
// decapsulated TCP segment that no GRO has touched is sent into the cell
// (counted as decap only: from_gro_cell delivers it later, aggregated):
// the inner packet untouched behind the outer Ethernet header, as the
// decap leaves it.
func TestGROCellTakesSingleTCPSegments(t *testing.T) {
	e := newCellEnv(t)
	in := validVX(t, pkt{proto: layers.IPProtocolTCP})
	r := e.run("from_underlay", in)
	r.check(t, tcActRedirect, counters("decap"))
	hexDiff(t, "frame into the cell", r.out, append(in[:14:14], in[offInnerIP:]...))
}

// TestGROCellSkipsUDP: GRO does not aggregate plain UDP, so datagrams are
// delivered directly, as without a cell.
func TestGROCellSkipsUDP(t *testing.T) {
	e := newCellEnv(t)
	r := e.run("from_underlay", validVX(t, pkt{proto: layers.IPProtocolUDP}))
	r.check(t, tcActRedirect, counters("decap", "deliver"))
}

// TestGROCellOffOnceTheUnderlayAggregates: once from_underlay has seen an
// aggregated (GSO) skb it sets underlay_aggregates, and from then on single
// segments are delivered directly too: the cell is never used again, so a
// flow is not split between two paths. Program.Run cannot decapsulate a GSO
// skb (it sets gso_size without gso_type, and adjust_room refuses), so the
// flag is set here by hand; the end-to-end test in test/cluster sees a
// wire-like underlay switch it on.
func TestGROCellOffOnceTheUnderlayAggregates(t *testing.T) {
	e := newCellEnv(t)
	if err := e.objs.UnderlayAggregates.Set(uint32(1)); err != nil {
		t.Fatal(err)
	}
	r := e.run("from_underlay", validVX(t, pkt{proto: layers.IPProtocolTCP}))
	r.check(t, tcActRedirect, counters("decap", "deliver"))
}

// TestGROCellUnusedWithoutConfig: a node without a cell (XDP decap, or
// NoGROCell) delivers single TCP segments directly.
func TestGROCellUnusedWithoutConfig(t *testing.T) {
	e := newEnv(t)
	r := e.run("from_underlay", validVX(t, pkt{proto: layers.IPProtocolTCP}))
	r.check(t, tcActRedirect, counters("decap", "deliver"))
}

// TestFromGROCell: what comes out of the cell is delivered like a
// decapsulated packet: to the pod (TTL - 1, the pod's MACs) or to weft0.
func TestFromGROCell(t *testing.T) {
	e := newCellEnv(t)
	inner := innerFromB(t, pkt{proto: layers.IPProtocolTCP})
	frame := append(ethHdr(localVtep, peerB.VtepMAC, layers.EthernetTypeIPv4), inner...)
	r := e.run("from_gro_cell", frame)
	r.check(t, tcActRedirect, counters("deliver"))
	want := append(ethHdr(pod2.MAC, pod2.HostMAC, layers.EthernetTypeIPv4), decremented(t, inner)...)
	hexDiff(t, "delivered frame", r.out, want)

	toHost := innerFromB(t, pkt{proto: layers.IPProtocolTCP, dst: netip.MustParseAddr("10.244.0.0")})
	r = e.run("from_gro_cell", append(ethHdr(localVtep, peerB.VtepMAC, layers.EthernetTypeIPv4), toHost...))
	r.check(t, tcActRedirect, counters("to_host"))

	bare := newBareEnv(t) // no config: nothing can be delivered
	r = bare.run("from_gro_cell", frame)
	r.check(t, tcActShot, counters("pass_no_config"))
}

// TestGROCellTakesDirectRoutingTCP: plain TCP from a DirectRouting peer's
// pod takes the cell too, untouched (from_gro_cell does the delivery); UDP
// is delivered directly.
func TestGROCellTakesDirectRoutingTCP(t *testing.T) {
	e := newCellEnv(t)
	plainFromC := func(p pkt) []byte { // a packet from a pod on peer C to pod2
		p.src, p.dst = remoteSrcC, pod2.IP
		return ether(t, underlayMAC, peerCMAC, layers.EthernetTypeIPv4, ipv4(t, p))
	}
	in := plainFromC(pkt{})
	r := e.run("from_underlay", in)
	r.check(t, tcActRedirect, counters("direct_rx"))
	hexDiff(t, "frame into the cell", r.out, in)

	r = e.run("from_underlay", plainFromC(pkt{proto: layers.IPProtocolUDP}))
	r.check(t, tcActRedirect, counters("direct_rx"))
	ep, _ := endpointFor(netip.AddrFrom4([4]byte(r.out[14+16 : 14+20])))
	if !slices.Equal(r.out[:6], ep.MAC) {
		t.Errorf("UDP from a direct peer: destination MAC %x, want the pod's %s (delivered directly)", r.out[:6], ep.MAC)
	}
}

// TestGROCellSkipsPureACKs: a TCP segment without payload is never merged
// by GRO, so it is delivered directly.
func TestGROCellSkipsPureACKs(t *testing.T) {
	e := newCellEnv(t)
	ack := validVX(t, pkt{proto: layers.IPProtocolTCP, size: 20 + 20})
	r := e.run("from_underlay", ack)
	r.check(t, tcActRedirect, counters("decap", "deliver"))
}
