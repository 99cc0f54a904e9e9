package bpf_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// setInner6 rewrites the inner IPv6 header of a VXLAN frame via f (no checksum to fix).
func setInner6(f func(h []byte)) func(b []byte) {
	return func(b []byte) { f(b[offInnerIP:]) }
}

// underlayCases6: IPv6 pods over the IPv4 underlay (peer B), and plain IPv6
// from the DirectRouting peer C on the IPv6 underlay; the same outcomes as
// underlayCases names them.
func underlayCases6(t testing.TB) []underlayCase {
	valid := validVX6in4(t, pkt6{})
	plainFromC6 := func(p pkt6) []byte {
		if !p.src.IsValid() {
			p.src = remoteSrcC6
		}
		if !p.dst.IsValid() {
			p.dst = pod2v6.IP
		}
		return ether(t, underlayMAC, peerCMAC, layers.EthernetTypeIPv6, ipv6(t, p))
	}
	vxFrom6 := func(p pkt6, f func(v *vx)) []byte {
		v := defaultVX(innerFromB6(t, p))
		v.innerType = layers.EthernetTypeIPv6
		f(&v)
		return vxlanFrame(t, v)
	}

	cs := []underlayCase{
		{"v6: valid, to a local pod", valid, "deliver"},
		{"v6: valid, to pod1", validVX6in4(t, pkt6{dst: pod1v6.IP}), "deliver"},
		{"v6: valid, inner UDP", validVX6in4(t, pkt6{proto: layers.IPProtocolUDP}), "deliver"},
		{"v6: valid, inner ICMPv6 echo", validVX6in4(t, pkt6{proto: layers.IPProtocolICMPv6}), "deliver"},
		{"v6: valid, full-size inner packet", validVX6in4(t, pkt6{size: 1450}), "deliver"},
		{"v6: valid, minimal inner packet", validVX6in4(t, pkt6{proto: layers.IPProtocolICMPv6, size: 48}), "deliver"},
		{"v6: valid, traffic class and flow label", validVX6in4(t, pkt6{tc: 0xb8, flow: 0xfffff}), "deliver"},
		{"v6: valid, inner hop limit 2", validVX6in4(t, pkt6{hopLimit: 2}), "deliver"},
		{"v6: valid, inner source at the subnet's end", validVX6in4(t, pkt6{src: netip.MustParseAddr("fd00:10:244:1:ffff:ffff:ffff:ffff")}), "deliver"},
		{"v6: valid, inner frame longer than its IPv6 packet", vxFrom6(pkt6{}, func(v *vx) { v.inner = append(v.inner, make([]byte, 6)...) }), "deliver"},
		{"v6: valid, outer ECN ECT(0) over Not-ECT", mutate(valid, true, func(b []byte) { b[offOuterIP+1] = 0x02 }), "deliver"},
		{"v6: valid, inner ICMPv6 error to a local pod", validVX6in4(t, pkt6{proto: layers.IPProtocolICMPv6, icmpType: 1}), "conntrack"},
		{"v6: valid, inner fragment to a local pod", validVX6in4(t, pkt6{fragment: true, moreFrags: true}), "conntrack"},
		{"v6: valid, to a free address in our subnet", validVX6in4(t, pkt6{dst: netip.MustParseAddr("fd00:10:244::50")}), "to_host"},
		{"v6: valid, to weft0", validVX6in4(t, pkt6{dst: hostIP6}), "to_host"},
		{"v6: valid, to the Internet", validVX6in4(t, pkt6{dst: netip.MustParseAddr("2001:db8::1")}), "to_host"},
		{"v6: valid, inner hop limit 1 to a local pod (host sends time exceeded)", validVX6in4(t, pkt6{hopLimit: 1}), "to_host"},
		{"v6: valid, inner hop limit 0 to a local pod", validVX6in4(t, pkt6{zeroHop: true}), "to_host"},

		{"v6: inner payload length beyond the frame", mutate(valid, false, setInner6(func(h []byte) { put16(h[4:], be16(h[4:])+1) })), "drop_inner_malformed"},
		{"v6: inner payload length 0xffff", mutate(valid, false, setInner6(func(h []byte) { put16(h[4:], 0xffff) })), "drop_inner_malformed"},
		{"v6: inner payload length 0 (jumbogram)", mutate(valid, false, setInner6(func(h []byte) { put16(h[4:], 0) })), "drop_inner_malformed"},
		{"v6: inner version 4 behind the IPv6 type", mutate(valid, false, setInner6(func(h []byte) { h[0] = 0x40 | h[0]&0x0f })), "drop_inner_malformed"},
		{"v6: inner version 0", mutate(valid, false, setInner6(func(h []byte) { h[0] &= 0x0f })), "drop_inner_malformed"},
		{"v6: outer and UDP lengths shrunk under the inner packet", mutate(valid, true, func(b []byte) {
			put16(b[offOuterIP+2:], be16(b[offOuterIP+2:])-1)
			put16(b[offUDP+4:], be16(b[offUDP+4:])-1)
		}), "drop_inner_malformed"},
		{"v6: inner source outside every tunnel", validVX6in4(t, pkt6{src: netip.MustParseAddr("2001:db8::5")}), "drop_unknown_source"},
		{"v6: inner source in our own subnet", validVX6in4(t, pkt6{src: pod1v6.IP}), "drop_unknown_source"},
		{"v6: inner source ::", validVX6in4(t, pkt6{src: netip.IPv6Unspecified()}), "drop_unknown_source"},
		{"v6: inner source a peer B pod's IPv4, mapped", validVX6in4(t, pkt6{src: netip.AddrFrom16(remoteSrcB.As16())}), "drop_unknown_source"},
		{"v6: inner source link-local", validVX6in4(t, pkt6{src: netip.MustParseAddr("fe80::1")}), "drop_unknown_source"},
		{"v6: right inner source, unknown outer source", vxFrom6(pkt6{}, func(v *vx) { v.outerSrc = netip.MustParseAddr("192.168.8.66") }), "drop_unknown_peer"},
		{"v6: inner source of peer C, outer source of peer B", validVX6in4(t, pkt6{src: remoteSrcC6}), "drop_unknown_peer"},
		{"v6: outer source is ourselves", vxFrom6(pkt6{}, func(v *vx) { v.outerSrc = underlayIP }), "drop_unknown_peer"},
		{"v6: IPv4 packet behind the IPv6 type", vxFrom6(pkt6{}, func(v *vx) { v.inner = innerFromB(t, pkt{}) }), "drop_inner_malformed"},
		{"v6: IPv6 packet behind the IPv4 type", vxFrom6(pkt6{}, func(v *vx) { v.innerType = layers.EthernetTypeIPv4 }), "drop_inner_malformed"},

		// Plain IPv6 from the DirectRouting peer C.
		{"v6: direct peer's pod to a local pod", plainFromC6(pkt6{}), "direct_rx"},
		{"v6: direct peer's pod, UDP to the VXLAN port", plainFromC6(pkt6{proto: layers.IPProtocolUDP, dport: 8472}), "direct_rx"},
		{"v6: direct peer's pod, fragment to a local pod", plainFromC6(pkt6{fragment: true, moreFrags: true}), "direct_conntrack"},
		{"v6: direct peer's pod, sent from another MAC", mutate(plainFromC6(pkt6{}), false, func(b []byte) { copy(b[6:12], peerBMAC) }), "drop_direct_peer"},
		{"v6: direct peer's pod, payload length lies", mutate(plainFromC6(pkt6{}), false, func(b []byte) { put16(b[14+4:], be16(b[14+4:])+1) }), "pass_underlay"},
		{"v6: direct peer's pod to a free address", plainFromC6(pkt6{dst: netip.MustParseAddr("fd00:10:244::50")}), "pass_underlay"},
		{"v6: direct peer's pod, hop limit 1", plainFromC6(pkt6{hopLimit: 1}), "pass_underlay"},
		{"v6: VXLAN peer's pod unencapsulated", plainFromC6(pkt6{src: remoteSrcB6}), "pass_underlay"},
		{"v6: unknown source unencapsulated", plainFromC6(pkt6{src: netip.MustParseAddr("2001:db8::5")}), "pass_underlay"},
		{"v6: neighbour solicitation on the underlay", ndFrame(t, nd{ethSrc: peerCMAC, ethDst: underlayMAC, src: peerC6Remote, dst: underlayIP6, target: underlayIP6, lladdr: peerCMAC}), "pass_underlay"},
	}

	// Cut inside the inner IPv6 header, with the lengths made to agree.
	for _, cut := range []struct {
		at   int
		what string
		want string
	}{
		{offInnerIP + 20, "20 bytes of the inner IPv6 header", "drop_short"},
		{offInnerIP + 39, "part of the inner IPv6 header", "drop_short"},
		{offInnerIP + 40, "inner IPv6 header whose length lies", "drop_inner_malformed"},
	} {
		cs = append(cs, underlayCase{"v6: short: " + cut.what, mutate(valid[:cut.at], false, setLengths), cut.want})
	}
	for _, cut := range []struct {
		at   int
		what string
	}{
		{offInnerIP + 39, "inside the inner IPv6 header"},
		{offInnerIP + 40, "after the inner IPv6 header"},
		{len(valid) - 1, "one byte short"},
	} {
		cs = append(cs, underlayCase{"v6: truncated " + cut.what, slices.Clone(valid[:cut.at]), "drop_outer_length"})
	}
	return cs
}

// RFC 6040 on an inner IPv6 header, both receive paths: outer CE is copied
// onto ECT(0)/ECT(1) (nothing else of the header changes), dropped over
// Not-ECT; other outer codepoints change nothing.
func TestDecap6ECN(t *testing.T) {
	for _, c := range []struct {
		name            string
		outer, inner    byte // ECN codepoints
		want            byte // inner ECN delivered; 0xff: dropped
		traffic, flowLb uint32
	}{
		{"CE over ECT(0)", 3, 2, 3, 0xb8, 0x12345},
		{"CE over ECT(1)", 3, 1, 3, 0, 0},
		{"CE over CE", 3, 3, 3, 0x04, 0xfffff},
		{"CE over Not-ECT", 3, 0, 0xff, 0, 0},
		{"ECT(0) over Not-ECT", 2, 0, 0, 0, 0},
		{"ECT(1) over ECT(0)", 1, 2, 2, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			innerTC := byte(c.traffic)&^3 | c.inner
			frame := mutate(validVX6in4(t, pkt6{tc: innerTC, flow: c.flowLb}), true, func(b []byte) { b[offOuterIP+1] = c.outer })
			inner := frame[offInnerIP:]
			wantInner := slices.Clone(inner)
			if c.want != 0xff {
				wantInner[1] = wantInner[1]&^0x30 | c.want<<4
			}
			marked := c.want == 3 && c.inner != 3

			e := newEnv(t)
			r := e.run("from_underlay", frame)
			x := e.run("from_underlay_xdp", frame)
			if c.want == 0xff {
				r.check(t, tcActShot, counters("drop_ecn_not_ect"))
				x.check(t, xdpDrop, counters("drop_ecn_not_ect"))
				return
			}
			want := counters("decap", "deliver")
			wantX := counters("decap")
			if marked {
				want["ecn_ce"], wantX["ecn_ce"] = 1, 1
			}
			r.check(t, tcActRedirect, want)
			x.check(t, xdpPass, wantX)
			hexDiff(t, "tc-delivered packet", r.out[14:], hopDecremented(wantInner))
			hexDiff(t, "XDP-decapsulated packet", x.out[14:], wantInner)
		})
	}
}

// What from_pod encapsulates, from_underlay on the peer decapsulates back
// to the identical IPv6 packet (hop limit - 1 once per hop).
func TestEncapDecapRoundTrip6in4(t *testing.T) {
	a := newEnv(t)
	in := podFrame6(t, pod1v6, pkt6{dst: remotePodB6, tc: 0x02, flow: 0x54321, size: 900})
	enc := a.run("from_pod", in)
	enc.check(t, tcActRedirect, counters("encap"))

	b := newBareEnv(t)
	bcfg := defaultConfig()
	bcfg.UnderlayIP, bcfg.UnderlayMAC, bcfg.VtepMAC = peerB.Remote, peerBMAC, peerB.VtepMAC
	b.setConfig(bcfg)
	podOnB := pod1v6
	podOnB.IP, podOnB.IfIndex = remotePodB6, 9
	if err := b.m.Endpoints.Put(podOnB); err != nil {
		t.Fatal(err)
	}
	// Node A's IPv6 subnet, reached over A's IPv4 underlay address.
	fromA := peerB6
	fromA.Subnet, fromA.Remote, fromA.VtepMAC = netip.MustParsePrefix("fd00:10:244::/64"), underlayIP, localVtep
	if err := b.m.Tunnels.Put(fromA); err != nil {
		t.Fatal(err)
	}
	dec := b.run("from_underlay", enc.out)
	dec.check(t, tcActRedirect, counters("decap", "deliver"))
	want := append(ethHdr(podOnB.MAC, podOnB.HostMAC, layers.EthernetTypeIPv6), hopDecremented(hopDecremented(in[14:]))...)
	hexDiff(t, "delivered frame", dec.out, want)

	x := b.run("from_underlay_xdp", enc.out)
	x.check(t, xdpPass, counters("decap"))
	hexDiff(t, "XDP-decapsulated frame", x.out, append(ethHdr(bcfg.UnderlayMAC, enc.out[6:12], layers.EthernetTypeIPv6), hopDecremented(in[14:])...))
}
