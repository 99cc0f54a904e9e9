package bpf_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/gopacket/gopacket/layers"

	weftmaps "github.com/weftnet/weft/maps"
)

// hostFrame is what the host stack sends out of weft0 (whose MAC is the local VtepMAC).
func hostFrame(t testing.TB, p pkt) []byte {
	if !p.src.IsValid() {
		p.src = hostIP
	}
	return ether(t, mustMAC("ee:ee:ee:ee:ee:ee"), localVtep, layers.EthernetTypeIPv4, ipv4(t, p))
}

func TestFromHostEncap(t *testing.T) {
	for _, c := range []struct {
		name string
		tun  tunnelCase
		p    pkt
	}{
		{"tcp to peer B", tunnelCase{peerB, remotePodB}, pkt{}},
		{"udp to peer D (own VNI)", tunnelCase{peerD, remotePodD}, pkt{proto: layers.IPProtocolUDP}},
		{"ECN CE", tunnelCase{peerB, remotePodB}, pkt{tos: 0x03}},
		// The host already routed it (TTL decremented or freshly set): no TTL check or change here.
		{"TTL 1 is carried", tunnelCase{peerB, remotePodB}, pkt{ttl: 1}},
		{"node underlay source", tunnelCase{peerB, remotePodB}, pkt{src: underlayIP}},
		{"DF, exactly the pod MTU", tunnelCase{peerB, remotePodB}, pkt{df: true, size: 1450}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			c.p.dst = c.tun.dst
			in := hostFrame(t, c.p)
			r := e.run("from_host", in)
			r.check(t, tcActRedirect, counters("encap_host"))
			checkEncap(t, e.cfg, c.tun.tun, in[14:], r.out, false)
			checkPeerTx(t, e, c.tun.tun.Remote, 1)
		})
	}
}

func TestFromHostDirect(t *testing.T) {
	e := newEnv(t)
	in := hostFrame(t, pkt{dst: remotePodC})
	r := e.run("from_host", in)
	r.check(t, tcActRedirect, counters("direct_host"))
	// Neither encapsulated nor TTL - 1; bpf_redirect_neigh fills the MACs.
	hexDiff(t, "direct frame", r.out, in)
}

func TestFromHostMiss(t *testing.T) {
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"outside every tunnel", hostFrame(t, pkt{dst: netip.MustParseAddr("10.244.9.9")})},
		{"a local pod", hostFrame(t, pkt{dst: pod2.IP})},
		{"the Internet", hostFrame(t, pkt{dst: netip.MustParseAddr("1.1.1.1")})},
		{"ARP", arpFrame(t, mustMAC("ff:ff:ff:ff:ff:ff"), localVtep, layers.ARPRequest, localVtep, hostIP, mustMAC("00:00:00:00:00:00"), remotePodB)},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.run("from_host", c.frame)
			r.check(t, tcActShot, counters("drop_no_tunnel"))
		})
	}
}

func TestFromHostMTU(t *testing.T) {
	for _, df := range []bool{false, true} {
		e := newEnv(t)
		in := hostFrame(t, pkt{dst: remotePodB, size: 1451, df: df})
		r := e.run("from_host", in)
		// The host's own stack signals or fragments against weft0's MTU.
		r.check(t, tcActOK, counters("pass_mtu"))
		r.checkUnchanged(t, in)
	}
	e := newEnv(t)
	in := hostFrame(t, pkt{dst: remotePodC, size: 1500})
	r := e.run("from_host", in)
	r.check(t, tcActRedirect, counters("direct_host"))
	hexDiff(t, "direct frame", r.out, slices.Clone(in))
}

type tunnelCase struct {
	tun weftmaps.Tunnel
	dst netip.Addr
}
