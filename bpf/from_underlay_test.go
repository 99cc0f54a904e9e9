package bpf_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	weftmaps "github.com/weftnet/weft/maps"
)

var (
	remoteSrcB = netip.MustParseAddr("10.244.1.5") // a pod on peer B
	remoteSrcC = netip.MustParseAddr("10.244.2.5") // a pod on peer C (DirectRouting)
)

// innerFromB is an IPv4 packet from a pod on peer B.
func innerFromB(t testing.TB, p pkt) []byte {
	if !p.src.IsValid() {
		p.src = remoteSrcB
	}
	if !p.dst.IsValid() {
		p.dst = pod2.IP
	}
	return ipv4(t, p)
}

// validVX is peer B's VXLAN frame carrying p.
func validVX(t testing.TB, p pkt) []byte {
	return vxlanFrame(t, defaultVX(innerFromB(t, p)))
}

// mutate returns a copy of frame changed by f; fixCsum recomputes the outer
// IPv4 header checksum afterwards (the programs do not check it, but a
// frame that is wrong in one way only says more).
func mutate(frame []byte, fixCsum bool, f func(b []byte)) []byte {
	b := slices.Clone(frame)
	f(b)
	if fixCsum {
		setIPv4Csum(b[offOuterIP:])
	}
	return b
}

// setLengths makes the outer IPv4 total length and the UDP length describe
// a frame of n bytes (one that was cut short on purpose, not truncated).
func setLengths(b []byte) {
	put16(b[offOuterIP+2:], uint16(len(b)-14))
	put16(b[offUDP+4:], uint16(len(b)-14-20))
	setIPv4Csum(b[offOuterIP:])
}

// setInner rewrites the inner IPv4 header via f, fixing its checksum.
func setInner(f func(h []byte)) func(b []byte) {
	return func(b []byte) {
		f(b[offInnerIP:])
		h := b[offInnerIP:]
		ihl := int(h[0]&0x0f) * 4
		if ihl < 20 || offInnerIP+ihl > len(b) {
			ihl = 20
		}
		h[10], h[11] = 0, 0
		put16(h[10:], csum16(h[:ihl]))
	}
}

// underlayCase is one frame arriving on the underlay NIC and what both
// receive programs must make of it. want names the outcome by its counter:
//
//	deliver         valid VXLAN for a local pod: tc decap+deliver, XDP decap
//	to_host         valid VXLAN for anything else: tc decap+to_host, XDP decap
//	direct_rx       plain IPv4 from a DirectRouting peer's pod: tc only
//	conntrack       valid VXLAN for a local pod that the host's conntrack must see: tc decap+weft0, XDP decap
//	direct_conntrack the same, unencapsulated from a DirectRouting peer: tc to weft0
//	drop_direct_peer unencapsulated from a DirectRouting subnet, another L2 sender: tc drops, XDP passes
//	pass_underlay   not ours: both pass it untouched; XDP leaves counting to tc
//	pass_other_vni  ours but another VNI: both pass and count
//	drop_*          both drop and count
type underlayCase struct {
	name  string
	frame []byte
	want  string
}

func underlayCases(t testing.TB) []underlayCase {
	valid := validVX(t, pkt{})
	ipv6 := serialize(t,
		&layers.Ethernet{DstMAC: underlayMAC, SrcMAC: peerBMAC, EthernetType: layers.EthernetTypeIPv6},
		&layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolNoNextHeader,
			SrcIP: net.ParseIP("fd00::2"), DstIP: net.ParseIP("fd00::1")})
	plainFromC := func(p pkt) []byte {
		if !p.src.IsValid() {
			p.src = remoteSrcC
		}
		if !p.dst.IsValid() {
			p.dst = pod2.IP
		}
		return ether(t, underlayMAC, peerCMAC, layers.EthernetTypeIPv4, ipv4(t, p))
	}
	withOptions := func() []byte {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
			SrcIP: peerB.Remote.AsSlice(), DstIP: underlayIP.AsSlice(),
			Options: []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}}
		udp := &layers.UDP{SrcPort: 43210, DstPort: 8472}
		udp.SetNetworkLayerForChecksum(ip)
		return serialize(t,
			&layers.Ethernet{DstMAC: underlayMAC, SrcMAC: peerBMAC, EthernetType: layers.EthernetTypeIPv4},
			ip, udp, gopacket.Payload(valid[offVXLAN:]))
	}
	innerType := func(et layers.EthernetType, payload []byte) []byte {
		v := defaultVX(payload)
		v.innerType = et
		return vxlanFrame(t, v)
	}
	innerIPv6 := serialize(t, &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolNoNextHeader,
		SrcIP: net.ParseIP("fd00:1::5"), DstIP: net.ParseIP("fd00::3")})
	innerARP := serialize(t, &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
		SourceHwAddress: peerB.VtepMAC, SourceProtAddress: remoteSrcB.AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: pod2.IP.AsSlice()})
	vxFrom := func(f func(v *vx)) []byte {
		v := defaultVX(innerFromB(t, pkt{}))
		f(&v)
		return vxlanFrame(t, v)
	}

	cs := []underlayCase{
		// Valid VXLAN.
		{"valid, to a local pod", valid, "deliver"},
		{"valid, to pod1", validVX(t, pkt{dst: pod1.IP}), "deliver"},
		{"valid, inner UDP", validVX(t, pkt{proto: layers.IPProtocolUDP}), "deliver"},
		{"valid, inner ICMP", validVX(t, pkt{proto: layers.IPProtocolICMPv4}), "deliver"},
		{"valid, full-size inner packet", validVX(t, pkt{size: 1450, df: true}), "deliver"},
		{"valid, minimal inner packet", vxlanFrame(t, defaultVX(innerFromB(t, pkt{proto: layers.IPProtocolICMPv4, size: 28}))), "deliver"},
		{"valid, UDP checksum set", vxFrom(func(v *vx) { v.udpCsum = true }), "deliver"},
		{"valid, reserved VXLAN bits set (ignored, RFC 7348 5)", mutate(valid, true, func(b []byte) {
			b[offVXLAN+1], b[offVXLAN+2], b[offVXLAN+3], b[offVXLAN+7] = 0xff, 0xff, 0xff, 0xff
		}), "deliver"},
		{"valid, other VXLAN flag bits beside I", mutate(valid, true, func(b []byte) { b[offVXLAN] = 0xff }), "deliver"},
		{"valid, Ethernet padding after the outer packet", append(slices.Clone(valid), make([]byte, 10)...), "deliver"},
		{"valid, inner frame longer than its IPv4 packet", vxlanFrame(t, defaultVX(append(innerFromB(t, pkt{}), make([]byte, 6)...))), "deliver"},
		{"valid, outer DF", mutate(valid, true, func(b []byte) { b[offOuterIP+6] = 0x40 }), "deliver"},
		{"valid, outer TTL 1", mutate(valid, true, func(b []byte) { b[offOuterIP+8] = 1 }), "deliver"},
		{"valid, outer TOS (ECN Not-ECT)", mutate(valid, true, func(b []byte) { b[offOuterIP+1] = 0xb8 }), "deliver"},
		{"valid, inner source at the subnet's end", validVX(t, pkt{src: netip.MustParseAddr("10.244.1.255")}), "deliver"},
		{"valid, inner TTL 2", validVX(t, pkt{ttl: 2}), "deliver"},
		{"valid, VXLAN from the DirectRouting peer", vxFrom(func(v *vx) {
			v.outerSrc, v.srcMAC, v.inner = peerC.Remote, peerCMAC, innerFromB(t, pkt{src: remoteSrcC})
		}), "deliver"},
		// What conntrack must see (ctgate.h) goes to the host stack through weft0.
		{"valid, inner first fragment to a local pod", validVX(t, pkt{mf: true}), "conntrack"},
		{"valid, inner later fragment to a local pod", validVX(t, pkt{fragOff: 10}), "conntrack"},
		{"valid, inner ICMP error to a local pod", validVX(t, pkt{proto: layers.IPProtocolICMPv4, icmpType: 3}), "conntrack"},
		{"valid, inner SCTP to a local pod", validVX(t, pkt{proto: layers.IPProtocolSCTP}), "conntrack"},
		{"direct peer's pod, fragment to a local pod", plainFromC(pkt{mf: true}), "direct_conntrack"},
		{"direct peer's pod, ICMP error to a local pod", plainFromC(pkt{proto: layers.IPProtocolICMPv4, icmpType: 11}), "direct_conntrack"},
		{"valid, to a free address in our subnet", validVX(t, pkt{dst: netip.MustParseAddr("10.244.0.50")}), "to_host"},
		{"valid, to weft0", validVX(t, pkt{dst: hostIP}), "to_host"},
		{"valid, to the Internet", validVX(t, pkt{dst: netip.MustParseAddr("1.1.1.1")}), "to_host"},
		{"valid, inner TTL 1 to a local pod (host sends time-exceeded)", validVX(t, pkt{ttl: 1}), "to_host"},
		{"valid, inner TTL 0 to a local pod", validVX(t, pkt{zeroTTL: true}), "to_host"},

		// Not ours: the kernel gets it untouched.
		{"ARP", arpFrame(t, mustMAC("ff:ff:ff:ff:ff:ff"), peerBMAC, layers.ARPRequest, peerBMAC, peerB.Remote, make(net.HardwareAddr, 6), underlayIP), "pass_underlay"},
		{"IPv6", ipv6, "pass_underlay"},
		{"VLAN tagged VXLAN", ether(t, underlayMAC, peerBMAC, layers.EthernetTypeDot1Q, append([]byte{0, 5, 8, 0}, valid[14:]...)), "pass_underlay"},
		{"outer TCP", mutate(valid, true, func(b []byte) { b[offOuterIP+9] = 6 }), "pass_underlay"},
		{"outer ICMP", mutate(valid, true, func(b []byte) { b[offOuterIP+9] = 1 }), "pass_underlay"},
		{"outer GRE", mutate(valid, true, func(b []byte) { b[offOuterIP+9] = 47 }), "pass_underlay"},
		{"UDP to DNS", vxFrom(func(v *vx) { v.dport = 53 }), "pass_underlay"},
		{"UDP to 4789 while configured for 8472", vxFrom(func(v *vx) { v.dport = 4789 }), "pass_underlay"},
		{"UDP from 8472 to another port", vxFrom(func(v *vx) { v.sport, v.dport = 8472, 43210 }), "pass_underlay"},
		{"first fragment to another UDP port", mutate(vxFrom(func(v *vx) { v.dport = 53 }), true, func(b []byte) { put16(b[offOuterIP+6:], 0x2000) }), "pass_underlay"},
		{"fragment of TCP to us", mutate(valid, true, func(b []byte) { b[offOuterIP+9] = 6; put16(b[offOuterIP+6:], 185) }), "pass_underlay"},
		{"UDP fragment to another host", mutate(vxFrom(func(v *vx) { v.outerDst = netip.MustParseAddr("192.168.8.77") }), true, func(b []byte) { put16(b[offOuterIP+6:], 185) }), "pass_underlay"},

		// Fragments of UDP to us (a router with a smaller MTU cut VXLAN up):
		// the kernel reassembles them, gro_sink on weftgro0 checks the result.
		{"non-first fragment, more to come", mutate(valid, true, func(b []byte) { put16(b[offOuterIP+6:], 0x2000|185) }), "pass_fragment"},
		{"last fragment", mutate(valid, true, func(b []byte) { put16(b[offOuterIP+6:], 185) }), "pass_fragment"},
		{"outer first fragment (MF)", mutate(valid, true, func(b []byte) { put16(b[offOuterIP+6:], 0x2000) }), "pass_fragment"},
		{"outer first fragment with DF", mutate(valid, true, func(b []byte) { put16(b[offOuterIP+6:], 0x6000) }), "pass_fragment"},
		{"outer version 6 with IPv4 type", mutate(valid, true, func(b []byte) { b[offOuterIP] = 0x65 }), "pass_underlay"},
		{"outer IHL 4", mutate(valid, false, func(b []byte) { b[offOuterIP] = 0x44 }), "pass_underlay"},
		{"outer IHL 0", mutate(valid, false, func(b []byte) { b[offOuterIP] = 0x40 }), "pass_underlay"},
		{"VXLAN to another host (routed through us)", vxFrom(func(v *vx) { v.outerDst = netip.MustParseAddr("192.168.8.77") }), "pass_underlay"},
		{"VXLAN to a local pod's address", vxFrom(func(v *vx) { v.outerDst = pod2.IP }), "pass_underlay"},

		// Ours, but wrong.
		{"outer IPv4 options", withOptions(), "drop_outer_options"},
		{"outer total length beyond the frame", mutate(valid, true, func(b []byte) { put16(b[offOuterIP+2:], uint16(len(b)-14+1)) }), "drop_outer_length"},
		{"outer total length below IPv4 + UDP", mutate(valid, true, func(b []byte) { put16(b[offOuterIP+2:], 27); put16(b[offUDP+4:], 7) }), "drop_outer_length"},
		{"outer total length 0", mutate(valid, true, func(b []byte) { put16(b[offOuterIP+2:], 0) }), "drop_outer_length"},
		{"outer header checksum wrong", mutate(valid, false, func(b []byte) { b[offOuterIP+10] ^= 0xff }), "drop_outer_csum"},
		{"outer TTL changed without fixing the checksum", mutate(valid, false, func(b []byte) { b[offOuterIP+8]-- }), "drop_outer_csum"},
		{"UDP length one more than IPv4 says", mutate(valid, false, func(b []byte) { put16(b[offUDP+4:], be16(b[offUDP+4:])+1) }), "drop_outer_length"},
		{"UDP length one less than IPv4 says", mutate(valid, false, func(b []byte) { put16(b[offUDP+4:], be16(b[offUDP+4:])-1) }), "drop_outer_length"},
		{"UDP length 0", mutate(valid, false, func(b []byte) { put16(b[offUDP+4:], 0) }), "drop_outer_length"},
		{"UDP length 0xffff", mutate(valid, false, func(b []byte) { put16(b[offUDP+4:], 0xffff) }), "drop_outer_length"},
		{"outer and UDP lengths shrunk together under the inner packet", mutate(valid, true, func(b []byte) {
			put16(b[offOuterIP+2:], be16(b[offOuterIP+2:])-1)
			put16(b[offUDP+4:], be16(b[offUDP+4:])-1)
		}), "drop_inner_malformed"},
		{"VXLAN flags 0 (no I bit)", mutate(valid, false, func(b []byte) { b[offVXLAN] = 0 }), "drop_vxlan_flags"},
		{"VXLAN flags GBP without I", mutate(valid, false, func(b []byte) { b[offVXLAN] = 0x80 }), "drop_vxlan_flags"},
		{"VXLAN flags all but I", mutate(valid, false, func(b []byte) { b[offVXLAN] = 0xf7 }), "drop_vxlan_flags"},
		{"VNI 2", vxFrom(func(v *vx) { v.vni = 2 }), "pass_other_vni"},
		{"VNI 0", vxFrom(func(v *vx) { v.vni = 0 }), "pass_other_vni"},
		{"VNI 256 (byte order)", vxFrom(func(v *vx) { v.vni = 256 }), "pass_other_vni"},
		{"VNI 0x010001", vxFrom(func(v *vx) { v.vni = 0x010001 }), "pass_other_vni"},
		{"VNI in the reserved byte", mutate(valid, false, func(b []byte) { b[offVXLAN+6], b[offVXLAN+7] = 0, 1 }), "pass_other_vni"},
		{"inner IPv6 without payload (payload length 0)", innerType(layers.EthernetTypeIPv6, innerIPv6), "drop_inner_malformed"},
		{"inner ARP", innerType(layers.EthernetTypeARP, append(innerARP, make([]byte, 20)...)), "drop_inner_not_ipv4"},
		{"inner VLAN", innerType(layers.EthernetTypeDot1Q, append([]byte{0, 5, 8, 0}, innerFromB(t, pkt{})...)), "drop_inner_not_ipv4"},
		{"inner version 6 in an IPv4 frame", mutate(valid, false, setInner(func(h []byte) { h[0] = 0x65 })), "drop_inner_malformed"},
		{"inner version 0", mutate(valid, false, setInner(func(h []byte) { h[0] = 0x05 })), "drop_inner_malformed"},
		{"inner IHL 4", mutate(valid, false, setInner(func(h []byte) { h[0] = 0x44 })), "drop_inner_malformed"},
		{"inner IHL 0", mutate(valid, false, setInner(func(h []byte) { h[0] = 0x40 })), "drop_inner_malformed"},
		{"inner IHL 15 beyond its total length", mutate(valid, false, setInner(func(h []byte) { h[0] = 0x4f; put16(h[2:], 59) })), "drop_inner_malformed"},
		{"inner total length beyond the frame", mutate(valid, false, setInner(func(h []byte) { put16(h[2:], be16(h[2:])+1) })), "drop_inner_malformed"},
		{"inner total length 0xffff", mutate(valid, false, setInner(func(h []byte) { put16(h[2:], 0xffff) })), "drop_inner_malformed"},
		{"inner total length below its header", mutate(valid, false, setInner(func(h []byte) { put16(h[2:], 19) })), "drop_inner_malformed"},
		{"inner total length 0", mutate(valid, false, setInner(func(h []byte) { put16(h[2:], 0) })), "drop_inner_malformed"},
		{"inner source outside every tunnel", validVX(t, pkt{src: netip.MustParseAddr("10.99.0.1")}), "drop_unknown_source"},
		{"inner source in our own subnet", validVX(t, pkt{src: netip.MustParseAddr("10.244.0.7")}), "drop_unknown_source"},
		{"inner source 0.0.0.0", validVX(t, pkt{src: netip.IPv4Unspecified()}), "drop_unknown_source"},
		{"inner source the peer's underlay address", validVX(t, pkt{src: peerB.Remote}), "drop_unknown_source"},
		{"right inner source, unknown outer source", vxFrom(func(v *vx) { v.outerSrc = netip.MustParseAddr("192.168.8.66") }), "drop_unknown_peer"},
		{"inner source of peer C, outer source of peer B", vxlanFrame(t, defaultVX(innerFromB(t, pkt{src: remoteSrcC}))), "drop_unknown_peer"},
		{"outer source is ourselves", vxFrom(func(v *vx) { v.outerSrc = underlayIP }), "drop_unknown_peer"},

		// Plain IPv4 from a DirectRouting peer.
		{"direct peer's pod to a local pod", plainFromC(pkt{}), "direct_rx"},
		{"direct peer's pod, UDP to the VXLAN port", plainFromC(pkt{proto: layers.IPProtocolUDP, dport: 8472}), "direct_rx"},
		// The L2 sender must be the peer the neighbour table knows for its lease (main_test.go: C's MAC).
		{"direct peer's pod, sent from another MAC", mutate(plainFromC(pkt{}), false, func(b []byte) { copy(b[6:12], peerBMAC) }), "drop_direct_peer"},
		{"direct peer's pod, fragment from another MAC", mutate(plainFromC(pkt{mf: true}), false, func(b []byte) { copy(b[6:12], peerBMAC) }), "drop_direct_peer"},
		{"direct peer's pod, total length lies", mutateIP(plainFromC(pkt{}), func(h []byte) { put16(h[2:], be16(h[2:])+1) }), "pass_underlay"},
		{"direct peer's pod, IHL 4", mutateIP(plainFromC(pkt{}), func(h []byte) { h[0] = 0x44 }), "pass_underlay"},
		{"direct peer's pod to a free address", plainFromC(pkt{dst: netip.MustParseAddr("10.244.0.50")}), "pass_underlay"},
		{"direct peer's pod, TTL 1", plainFromC(pkt{ttl: 1}), "pass_underlay"},
		{"VXLAN peer's pod unencapsulated", plainFromC(pkt{src: remoteSrcB}), "pass_underlay"},
		{"unknown source unencapsulated", plainFromC(pkt{src: netip.MustParseAddr("10.99.0.1")}), "pass_underlay"},
	}

	cs = append(cs, underlayCases6(t)...)

	// Truncated at (and inside) every header: the bytes stop, the length fields
	// still describe the whole packet.
	for _, cut := range []struct {
		at   int
		what string
		want string
	}{
		{14, "after Ethernet", "pass_underlay"},
		{14 + 10, "inside the outer IPv4 header", "pass_underlay"},
		{offUDP - 1, "one byte short of the outer IPv4 header", "pass_underlay"},
		{offUDP, "after the outer IPv4 header", "pass_underlay"},
		{offUDP + 4, "inside UDP, after the ports", "pass_underlay"},
		{offVXLAN - 1, "one byte short of UDP", "pass_underlay"},
		{offVXLAN, "after UDP", "drop_outer_length"},
		{offVXLAN + 4, "inside VXLAN", "drop_outer_length"},
		{offInnerEth, "after VXLAN", "drop_outer_length"},
		{offInnerEth + 13, "inside the inner Ethernet header", "drop_outer_length"},
		{offInnerIP, "after the inner Ethernet header", "drop_outer_length"},
		{offInnerIP + 19, "inside the inner IPv4 header", "drop_outer_length"},
		{offInnerIP + 20, "after the inner IPv4 header", "drop_outer_length"},
		{len(valid) - 1, "one byte short", "drop_outer_length"},
	} {
		cs = append(cs, underlayCase{"truncated " + cut.what, slices.Clone(valid[:cut.at]), cut.want})
	}
	// Cut short with the lengths made to agree: too short to be VXLAN at all.
	for _, cut := range []struct {
		at   int
		what string
		want string
	}{
		{offVXLAN, "no VXLAN header", "drop_short"},
		{offVXLAN + 4, "half a VXLAN header", "drop_short"},
		{offInnerEth, "VXLAN header only", "drop_short"},
		{offInnerEth + 13, "part of the inner Ethernet header", "drop_short"},
		{offInnerIP, "inner Ethernet header only", "drop_short"},
		{offInnerIP + 19, "part of the inner IPv4 header", "drop_short"},
		{offInnerIP + 20, "inner IPv4 header whose length lies", "drop_inner_malformed"},
	} {
		cs = append(cs, underlayCase{"short: " + cut.what, mutate(valid[:cut.at], false, setLengths), cut.want})
	}
	return cs
}

// ipType is the Ethernet type of the IP packet ip (by its version).
func ipType(ip []byte) layers.EthernetType {
	if ip[0]>>4 == 6 {
		return layers.EthernetTypeIPv6
	}
	return layers.EthernetTypeIPv4
}

// ipDst is the destination of the IPv4 or IPv6 packet ip.
func ipDst(ip []byte) netip.Addr {
	if ip[0]>>4 == 6 {
		return netip.AddrFrom16([16]byte(ip[24:40]))
	}
	return netip.AddrFrom4([4]byte(ip[16:20]))
}

// forwardedIP is ip as a router forwards it: TTL or hop limit - 1.
func forwardedIP(t testing.TB, ip []byte) []byte {
	if ip[0]>>4 == 6 {
		return hopDecremented(ip)
	}
	return decremented(t, ip)
}

// endpointFor is the local pod behind addr, if any.
func endpointFor(addr netip.Addr) (weftmaps.Endpoint, bool) {
	for _, ep := range []weftmaps.Endpoint{pod1, pod2, pod1v6, pod2v6} {
		if ep.IP == addr {
			return ep, true
		}
	}
	return weftmaps.Endpoint{}, false
}

func TestFromUnderlay(t *testing.T) {
	for _, c := range underlayCases(t) {
		t.Run(c.name, func(t *testing.T) {
			t.Run("tc", func(t *testing.T) {
				e := newEnv(t)
				if !tcRunnable(c.frame) {
					t.Skipf("Program.Run refuses a %d-byte IPv4 frame for tc; covered by XDP", len(c.frame))
				}
				checkUnderlayTC(t, e, c)
			})
			t.Run("xdp", func(t *testing.T) { checkUnderlayXDP(t, newEnv(t), c) })
		})
	}
}

func checkUnderlayTC(t *testing.T, e *env, c underlayCase) {
	r := e.run("from_underlay", c.frame)
	in := c.frame
	switch {
	case c.want == "deliver":
		r.check(t, tcActRedirect, counters("decap", "deliver"))
		ep, ok := endpointFor(ipDst(in[offInnerIP:]))
		if !ok {
			t.Fatalf("test bug: no endpoint for the inner destination")
		}
		// The inner packet (and whatever trailed the outer one) behind the pod's Ethernet header, TTL - 1.
		want := append(ethHdr(ep.MAC, ep.HostMAC, ipType(in[offInnerIP:])), forwardedIP(t, in[offInnerIP:])...)
		hexDiff(t, "delivered frame", r.out, want)
		checkPeerRx(t, e, netip.AddrFrom4([4]byte(in[offOuterIP+12:offOuterIP+16])))
	case c.want == "to_host":
		r.check(t, tcActRedirect, counters("decap", "to_host"))
		// Into weft0: its MAC as destination, the inner packet untouched (the host routes it).
		want := append(ethHdr(localVtep, in[6:12], ipType(in[offInnerIP:])), in[offInnerIP:]...)
		hexDiff(t, "frame for the host", r.out, want)
	case c.want == "conntrack" || c.want == "direct_conntrack":
		want := counters("decap", "pass_conntrack")
		inner := in[offInnerIP:]
		if c.want == "direct_conntrack" {
			want, inner = counters("pass_conntrack"), in[14:]
		}
		r.check(t, tcActRedirect, want)
		// Into weft0 like to_host: the host's conntrack un-NATs and routes it.
		hexDiff(t, "frame for the host", r.out, append(ethHdr(localVtep, in[6:12], ipType(inner)), inner...))
	case c.want == "direct_rx":
		r.check(t, tcActRedirect, counters("direct_rx"))
		ep, _ := endpointFor(ipDst(in[14:]))
		want := append(ethHdr(ep.MAC, ep.HostMAC, ipType(in[14:])), forwardedIP(t, in[14:])...)
		hexDiff(t, "delivered frame", r.out, want)
	case strings.HasPrefix(c.want, "drop_"):
		r.check(t, tcActShot, counters(c.want))
	default:
		r.check(t, tcActOK, counters(c.want))
		r.checkUnchanged(t, in)
	}
}

func checkUnderlayXDP(t *testing.T, e *env, c underlayCase) {
	r := e.run("from_underlay_xdp", c.frame)
	in := c.frame
	tag := func() uint32 {
		if len(r.meta) != 4 {
			t.Fatalf("metadata %x, want a 4-byte tag", r.meta)
		}
		return binary.NativeEndian.Uint32(r.meta)
	}
	switch {
	case c.want == "deliver" || c.want == "to_host" || c.want == "conntrack":
		r.check(t, xdpPass, counters("decap"))
		// The inner frame, addressed to the underlay NIC so the stack and GRO take it as ours.
		want := append(ethHdr(underlayMAC, in[6:12], ipType(in[offInnerIP:])), in[offInnerIP:]...)
		hexDiff(t, "decapsulated frame", r.out, want)
		if tg := tag(); tg != metaDecapped {
			t.Errorf("metadata tag %#x, want WEFT_META_DECAPPED", tg)
		}
		checkPeerRx(t, e, netip.AddrFrom4([4]byte(in[offOuterIP+12:offOuterIP+16])))
	case c.want == "pass_underlay" || c.want == "direct_rx" || c.want == "direct_conntrack" || c.want == "drop_direct_peer":
		// Plain traffic is tc's to judge and count.
		r.check(t, xdpPass, counters())
		r.checkUnchanged(t, in)
		if len(r.meta) != 0 {
			t.Errorf("metadata %x on a frame left to tc", r.meta)
		}
	case strings.HasPrefix(c.want, "drop_"):
		r.check(t, xdpDrop, counters(c.want))
	default:
		r.check(t, xdpPass, counters(c.want))
		r.checkUnchanged(t, in)
		if tg := tag(); tg != metaPassed {
			t.Errorf("metadata tag %#x, want WEFT_META_PASSED", tg)
		}
	}
}

func checkPeerRx(t *testing.T, e *env, remote netip.Addr) {
	t.Helper()
	all, err := e.m.PeerStats.All()
	if err != nil {
		t.Fatal(err)
	}
	for _, ps := range all {
		if ps.Remote == remote {
			if ps.RxPackets != 1 || ps.RxBytes == 0 {
				t.Errorf("peer %v rx %d packets %d bytes, want 1 packet", remote, ps.RxPackets, ps.RxBytes)
			}
			return
		}
	}
	t.Errorf("no counters for peer %v", remote)
}

// The same frames on port 4789 with a node configured for it.
func TestFromUnderlayPort4789(t *testing.T) {
	e := newEnv(t)
	cfg := defaultConfig()
	cfg.Port = 4789
	e.setConfig(cfg)
	v := defaultVX(innerFromB(t, pkt{}))
	v.dport = 4789
	c := underlayCase{"valid on 4789", vxlanFrame(t, v), "deliver"}
	checkUnderlayTC(t, e, c)
	if err := e.m.PeerStats.Delete(peerB.Remote); err != nil {
		t.Fatal(err)
	}
	checkUnderlayXDP(t, e, c)

	v.dport = 8472
	c = underlayCase{"8472 while configured for 4789", vxlanFrame(t, v), "pass_underlay"}
	checkUnderlayTC(t, e, c)
	checkUnderlayXDP(t, e, c)

	// gopacket decodes 4789 natively: the frame under test really is VXLAN.
	p := gopacket.NewPacket(vxlanFrame(t, defaultVX(innerFromB(t, pkt{}))), layers.LayerTypeEthernet, gopacket.Default)
	if p.Layer(layers.LayerTypeVXLAN) == nil {
		t.Errorf("gopacket does not see VXLAN in the test frame: %v", p)
	}
}

// A node whose config VNI is not 1 decapsulates its own VNI only.
func TestFromUnderlayConfigVNI(t *testing.T) {
	e := newEnv(t)
	cfg := defaultConfig()
	cfg.VNI = 0xabcdef
	e.setConfig(cfg)
	v := defaultVX(innerFromB(t, pkt{}))
	v.vni = 0xabcdef
	for _, c := range []underlayCase{
		{"configured VNI", vxlanFrame(t, v), "deliver"},
		{"VNI 1", validVX(t, pkt{}), "pass_other_vni"},
	} {
		t.Run(c.name, func(t *testing.T) {
			checkUnderlayTC(t, e, c)
			if err := e.m.PeerStats.Delete(peerB.Remote); err != nil {
				t.Fatal(err)
			}
			checkUnderlayXDP(t, e, c)
			if err := e.m.PeerStats.Delete(peerB.Remote); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// What from_pod encapsulates, from_underlay on the peer decapsulates back
// to the identical packet (TTL - 1 once per hop).
func TestEncapDecapRoundTrip(t *testing.T) {
	a := newEnv(t) // node A, sending from pod1 to a pod on B
	in := podFrame(t, pod1, pkt{dst: remotePodB, tos: 0x02, size: 900})
	enc := a.run("from_pod", in)
	enc.check(t, tcActRedirect, counters("encap"))

	// Node B: its own view of the world, with A as a peer.
	b := newBareEnv(t)
	bcfg := defaultConfig()
	bcfg.UnderlayIP, bcfg.UnderlayMAC, bcfg.VtepMAC = peerB.Remote, peerBMAC, peerB.VtepMAC
	b.setConfig(bcfg)
	podOnB := weftmaps.Endpoint{IP: remotePodB, IfIndex: 9, MAC: mustMAC("0a:58:0a:f4:01:07"), HostMAC: mustMAC("ee:00:00:00:01:07")}
	if err := b.m.Endpoints.Put(podOnB); err != nil {
		t.Fatal(err)
	}
	if err := b.m.Tunnels.Put(weftmaps.Tunnel{Subnet: netip.MustParsePrefix("10.244.0.0/24"), Remote: underlayIP,
		VtepMAC: localVtep, VNI: 1, Mode: weftmaps.ModeVXLAN}); err != nil {
		t.Fatal(err)
	}
	dec := b.run("from_underlay", enc.out)
	dec.check(t, tcActRedirect, counters("decap", "deliver"))
	want := append(ethHdr(podOnB.MAC, podOnB.HostMAC, layers.EthernetTypeIPv4),
		decremented(t, decremented(t, in[14:]))...)
	hexDiff(t, "delivered frame", dec.out, want)

	x := b.run("from_underlay_xdp", enc.out)
	x.check(t, xdpPass, counters("decap"))
	hexDiff(t, "XDP-decapsulated frame", x.out[14:], decremented(t, in[14:]))
}
