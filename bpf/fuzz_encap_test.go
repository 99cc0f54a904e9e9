package bpf_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	weftmaps "github.com/weftnet/weft/maps"
)

// FuzzEncap feeds from_pod and from_host (the encapsulating side) with
// arbitrary frames. Whatever comes in, each program returns one of its
// documented verdicts and moves exactly one counter; and whenever it says
// it encapsulated, the output is VXLAN exactly as the vxlan driver would
// send it to the tunnel covering the destination (checkEncap), and peer B,
// given the frame, decapsulates it again.
func FuzzEncap(f *testing.F) {
	for _, dst := range []netip.Addr{remotePodB, remotePodC, remotePodD, remotePodE, remotePodF, pod2.IP, hostIP, netip.MustParseAddr("1.1.1.1")} {
		for _, p := range []pkt{{}, {ttl: 1}, {df: true, size: 1500}, {size: 1450}, {tos: 3},
			{proto: layers.IPProtocolUDP}, {proto: layers.IPProtocolICMPv4, df: true, size: 1500}} {
			p.dst = dst
			f.Add(podFrame(f, pod1, p), false)
			f.Add(hostFrame(f, p), true)
		}
	}
	f.Add(arpFrame(f, mustMAC("ff:ff:ff:ff:ff:ff"), pod1.MAC, layers.ARPRequest, pod1.MAC, pod1.IP, make([]byte, 6), gatewayIP), false)
	for _, dst := range []netip.Addr{remotePodB6, remotePodC6, remotePodE6, pod2v6.IP, hostIP6, netip.MustParseAddr("2001:db8::1")} {
		for _, p := range []pkt6{{}, {hopLimit: 1}, {size: 1500}, {size: 1450}, {tc: 3, flow: 7},
			{proto: layers.IPProtocolUDP}, {proto: layers.IPProtocolICMPv6, size: 1500}, {fragment: true}} {
			p.dst = dst
			f.Add(podFrame6(f, pod1v6, p), false)
			f.Add(hostFrame6(f, p), true)
		}
	}
	group, groupMAC := solicitedNode(gatewayIP6)
	f.Add(ndFrame(f, nd{ethSrc: pod1.MAC, ethDst: groupMAC, src: pod1v6.IP, dst: group, target: gatewayIP6, lladdr: pod1.MAC}), false)

	a := newEnv6(f)    // peers over IPv4 (B, C, D) and IPv6 (E, F)
	b := newBareEnv(f) // peer B, with us (A) as its peer
	bcfg := defaultConfig()
	bcfg.UnderlayIP, bcfg.UnderlayMAC, bcfg.VtepMAC = peerB.Remote, peerBMAC, peerB.VtepMAC
	b.setConfig(bcfg)
	if err := b.m.Tunnels.Put(weftmaps.Tunnel{Subnet: netip.MustParsePrefix("10.244.0.0/24"), Remote: underlayIP,
		VtepMAC: localVtep, VNI: 1, Mode: weftmaps.ModeVXLAN}); err != nil {
		f.Fatal(err)
	}
	if err := b.m.Tunnels.Put(weftmaps.Tunnel{Subnet: netip.MustParsePrefix("fd00:10:244::/64"), Remote: underlayIP,
		VtepMAC: localVtep, VNI: 1, Mode: weftmaps.ModeVXLAN}); err != nil {
		f.Fatal(err)
	}
	// Peer E, over the IPv6 underlay, with us (A) as its peer for both pod
	// families: v4-in-v6 and v6-in-v6 output must decapsulate there too.
	pe := newBareEnv(f)
	ecfg := defaultConfig()
	ecfg.UnderlayIP6, ecfg.UnderlayMAC, ecfg.VtepMAC = peerE.Remote, peerEMAC, peerE.VtepMAC
	pe.setConfig(ecfg)
	for _, s := range []string{"10.244.0.0/24", "fd00:10:244::/64"} {
		if err := pe.m.Tunnels.Put(weftmaps.Tunnel{Subnet: netip.MustParsePrefix(s), Remote: underlayIP6,
			VtepMAC: localVtep, VNI: 1, Mode: weftmaps.ModeVXLAN}); err != nil {
			f.Fatal(err)
		}
	}
	ref := newRefNode6()

	f.Fuzz(func(t *testing.T, frame []byte, fromHost bool) {
		if len(frame) > 1600 || !tcRunnable(frame) {
			return
		}
		a.tb, b.tb, pe.tb = t, t, t
		name, encap := "from_pod", "encap"
		if fromHost {
			name, encap = "from_host", "encap_host"
		}
		r := a.run(name, frame)
		checkVerdictSet(t, name, r.verdict)
		if len(r.delta) != 1 || sum(r.delta) != 1 {
			t.Fatalf("%s: counters moved %v, want exactly one by one:\n%x", name, r.delta, frame)
		}
		if r.delta[encap] == 0 {
			return
		}
		if r.verdict != tcActRedirect {
			t.Fatalf("%s counted %s but returned %d", name, encap, r.verdict)
		}
		inner := frame[14:]
		if be16(frame[12:]) == 0x86dd {
			checkFuzzEncapInner6(t, a, b, pe, ref, inner, r.out, fromHost)
			return
		}
		ip, ok := parseIPv4(inner)
		if !ok {
			t.Fatalf("%s encapsulated a frame without an IPv4 header:\n%x", name, frame)
		}
		tun, ok := ref.tunnelFor(ip.dst)
		if !ok || tun.Mode != weftmaps.ModeVXLAN {
			t.Fatalf("%s encapsulated to %v, which no VXLAN tunnel covers", name, ip.dst)
		}
		if !tun.Remote.Is4() {
			// Over IPv6 (outer6.h): the outer UDP checksum is right whenever
			// the inner packet's own is; the rest as over IPv4.
			out := r.out[:14+70+len(inner)]
			if ip.ihl == 20 && ip.ihl <= len(inner) && ipv4ChecksumOK(inner[:20]) && l4ChecksumOK(inner) &&
				gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default).ErrorLayer() == nil {
				checkEncap6(t, a.cfg, tun, inner, out, !fromHost)
			}
			// Peer E takes it back where the outer checksum is ours to vouch for.
			if tun.Remote == peerE.Remote && netip.MustParsePrefix("10.244.0.0/24").Contains(ip.src) && ip.wellFormed(len(inner)) && l4ChecksumOK(inner) {
				checkDecapByE(t, pe, out)
			}
			return
		}
		out := r.out[:14+50+len(inner)]
		// checkEncap decodes with gopacket (which gives up on bad inner L4
		// headers) and compares against a header checksum computed from
		// scratch: only meaningful for input that decodes and is right.
		if ip.ihl >= 20 && ip.ihl <= len(inner) && ipv4ChecksumOK(inner[:ip.ihl]) && gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default).ErrorLayer() == nil {
			checkEncap(t, a.cfg, tun, inner, out, !fromHost)
		}
		// from_host trusts the host stack to hand weft0 well-formed IPv4
		// (it checks no more than the destination): the round trip holds
		// for what a stack can send.
		if tun.Remote != peerB.Remote || !netip.MustParsePrefix("10.244.0.0/24").Contains(ip.src) || !ip.wellFormed(len(inner)) {
			return
		}
		d := b.run("from_underlay", out)
		if d.delta["decap"] != 1 || d.verdict != tcActRedirect {
			t.Errorf("peer B did not decapsulate what %s sent: verdict %d, counters %v\n%x", name, d.verdict, d.delta, out)
		}
	})
}

// l4ChecksumOK: whether an option-less IPv4 packet's TCP, UDP (non-zero) or
// ICMP checksum is right.
func l4ChecksumOK(ip []byte) bool {
	h, ok := parseIPv4(ip)
	if !ok || h.ihl != 20 || h.totLen != len(ip) || h.totLen < 20 {
		return false
	}
	l4 := ip[20:]
	switch h.proto {
	case 1:
		return csum16(l4) == 0
	case 6, 17:
		if h.proto == 17 && (len(l4) < 8 || l4[6]|l4[7] == 0) {
			return false
		}
		pseudo := append(slices.Clone(ip[12:20]), 0, h.proto, byte(len(l4)>>8), byte(len(l4)))
		return csum16(append(pseudo, l4...)) == 0
	}
	return false
}

// l4ChecksumOK6: whether an IPv6 packet without extension headers carries a
// right TCP, UDP (non-zero) or ICMPv6 checksum over exactly its payload length.
func l4ChecksumOK6(ip []byte) bool {
	if len(ip) < 40 || ip[0]>>4 != 6 || int(be16(ip[4:]))+40 != len(ip) {
		return false
	}
	l4 := ip[40:]
	switch ip[6] {
	case 17:
		if len(l4) < 8 || l4[6]|l4[7] == 0 {
			return false
		}
	case 6, 58:
	default:
		return false
	}
	pseudo := append(slices.Clone(ip[8:40]), 0, 0, byte(len(l4)>>8), byte(len(l4)), 0, 0, 0, ip[6])
	return csum16(append(pseudo, l4...)) == 0
}

// checkFuzzEncapInner6 is FuzzEncap's check for an IPv6 frame the program says it
// encapsulated: to a VXLAN tunnel covering the destination, VXLAN as the
// vxlan driver sends it (checkEncap6in4), and peer B decapsulates it again.
func checkFuzzEncapInner6(t *testing.T, a, b, pe *env, ref *refNode, inner, out []byte, fromHost bool) {
	t.Helper()
	if len(inner) < 40 || inner[0]>>4 != 6 {
		t.Fatalf("encapsulated a frame without an IPv6 header:\n%x", inner)
	}
	src, dst := netip.AddrFrom16([16]byte(inner[8:24])), netip.AddrFrom16([16]byte(inner[24:40]))
	tun, ok := ref.tunnelFor(dst)
	if !ok || (tun.Mode != weftmaps.ModeVXLAN && !tun.Remote.Is4()) {
		t.Fatalf("encapsulated to %v, which no VXLAN tunnel covers", dst)
	}
	if !tun.Remote.Is4() {
		// v6-in-v6 (outer6.h): the outer UDP checksum is right whenever the
		// inner packet's own is.
		out = out[:14+70+len(inner)]
		if l4ChecksumOK6(inner) && gopacket.NewPacket(append(ethHdr(localVtep, localVtep, layers.EthernetTypeIPv6), inner...),
			layers.LayerTypeEthernet, gopacket.Default).ErrorLayer() == nil {
			checkEncap6(t, a.cfg, tun, inner, out, !fromHost)
		}
		if plen := int(be16(inner[4:])); tun.Remote == peerE.Remote && netip.MustParsePrefix("fd00:10:244::/64").Contains(src) &&
			plen != 0 && 40+plen == len(inner) && l4ChecksumOK6(inner) {
			checkDecapByE(t, pe, out)
		}
		return
	}
	out = out[:14+50+len(inner)]
	if gopacket.NewPacket(append(ethHdr(localVtep, localVtep, layers.EthernetTypeIPv6), inner...), layers.LayerTypeEthernet, gopacket.Default).ErrorLayer() == nil {
		checkEncap6in4(t, a.cfg, tun, inner, out, !fromHost)
	}
	plen := int(be16(inner[4:]))
	if tun.Remote != peerB.Remote || !netip.MustParsePrefix("fd00:10:244::/64").Contains(src) || plen == 0 || 40+plen > len(inner) {
		return
	}
	d := b.run("from_underlay", out)
	if d.delta["decap"] != 1 || d.verdict != tcActRedirect {
		t.Errorf("peer B did not decapsulate what was sent: verdict %d, counters %v\n%x", d.verdict, d.delta, out)
	}
}

// checkDecapByE: peer E decapsulates what node A sent it over the IPv6 underlay.
func checkDecapByE(t *testing.T, pe *env, out []byte) {
	t.Helper()
	d := pe.run("from_underlay", out)
	if d.delta["decap"] != 1 || d.verdict != tcActRedirect {
		t.Errorf("peer E did not decapsulate what was sent: verdict %d, counters %v\n%x", d.verdict, d.delta, out)
	}
}
