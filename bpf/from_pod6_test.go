package bpf_test

import (
	"net/netip"
	"slices"
	"strconv"
	"testing"

	"github.com/gopacket/gopacket/layers"

	weftmaps "github.com/weftnet/weft/maps"
)

// checkEncap6in4 is checkEncap for an IPv6 pod packet over the IPv4 underlay
// (v6-in-v4): the same outer headers, inner Ethernet type IPv6, outer ECN
// from the traffic class, the inner packet untouched but for the router's
// hop limit - 1.
func checkEncap6in4(t *testing.T, cfg weftmaps.Config, tun weftmaps.Tunnel, innerIP, out []byte, forwarded bool) {
	t.Helper()
	checkVXLANHeaders(t, cfg, tun, len(innerIP), out, ipv6ECN(innerIP), layers.EthernetTypeIPv6)
	want := innerIP
	if forwarded {
		want = hopDecremented(innerIP)
	}
	hexDiff(t, "inner IPv6 packet", out[offInnerIP:], want)
}

func TestFromPod6Encap(t *testing.T) {
	for _, port := range []uint16{8472, 4789} {
		for _, c := range []struct {
			name string
			dst  netip.Addr
			p    pkt6
		}{
			{"tcp", remotePodB6, pkt6{}},
			{"udp", remotePodB6, pkt6{proto: layers.IPProtocolUDP}},
			{"icmpv6 echo", remotePodB6, pkt6{proto: layers.IPProtocolICMPv6}},
			{"flow label", remotePodB6, pkt6{flow: 0xabcde}},
			{"ECN not-ECT, DSCP EF", remotePodB6, pkt6{tc: 0xb8}},
			{"ECN ECT(1)", remotePodB6, pkt6{tc: 0x01}},
			{"ECN ECT(0)", remotePodB6, pkt6{tc: 0x02}},
			{"ECN CE", remotePodB6, pkt6{tc: 0x03}},
			{"ECN CE with DSCP and flow label", remotePodB6, pkt6{tc: 0xbb, flow: 0xfffff}},
			{"hop limit 2", remotePodB6, pkt6{hopLimit: 2}},
			{"exactly the pod MTU", remotePodB6, pkt6{size: 1450}},
			{"subnet's first address", netip.MustParseAddr("fd00:10:244:1::"), pkt6{}},
			{"subnet's last address", netip.MustParseAddr("fd00:10:244:1:ffff:ffff:ffff:ffff"), pkt6{}},
		} {
			t.Run(c.name+"/port "+strconv.Itoa(int(port)), func(t *testing.T) {
				e := newEnv(t)
				cfg := defaultConfig()
				cfg.Port = port
				e.setConfig(cfg)
				c.p.dst = c.dst
				in := podFrame6(t, pod1v6, c.p)
				r := e.run("from_pod", in)
				r.check(t, tcActRedirect, counters("encap"))
				checkEncap6in4(t, cfg, peerB6, in[14:], r.out, true)
				checkPeerTx(t, e, peerB6.Remote, 1)
			})
		}
	}
}

func TestFromPod6Local(t *testing.T) {
	for _, c := range []struct {
		name     string
		from, to weftmaps.Endpoint
	}{
		{"pod1 to pod2", pod1v6, pod2v6},
		{"hairpin", pod1v6, pod1v6},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			in := podFrame6(t, c.from, pkt6{dst: c.to.IP})
			r := e.run("from_pod", in)
			r.check(t, tcActRedirect, counters("local"))
			want := ether(t, c.to.MAC, c.to.HostMAC, layers.EthernetTypeIPv6, hopDecremented(in[14:]))
			hexDiff(t, "delivered frame", r.out, want)
		})
	}
}

func TestFromPod6Direct(t *testing.T) {
	e := newEnv(t)
	in := podFrame6(t, pod1v6, pkt6{dst: remotePodC6})
	r := e.run("from_pod", in)
	r.check(t, tcActRedirect, counters("direct"))
	hexDiff(t, "direct-routed frame", r.out, append(slices.Clone(in[:14]), hopDecremented(in[14:])...))
	checkPeerTx(t, e, peerC6.Remote, 1)

	// Nothing is added toward a direct peer: a full 1500-byte packet fits.
	in = podFrame6(t, pod1v6, pkt6{dst: remotePodC6, size: 1500})
	r = e.run("from_pod", in)
	r.check(t, tcActRedirect, counters("direct"))

	// A DirectRouting peer known by its IPv4 address only gets IPv6 encapsulated.
	e = newEnv(t)
	v4only := peerC6
	v4only.Remote = peerC.Remote
	if err := e.m.Tunnels.Put(v4only); err != nil {
		t.Fatal(err)
	}
	in = podFrame6(t, pod1v6, pkt6{dst: remotePodC6})
	r = e.run("from_pod", in)
	r.check(t, tcActRedirect, counters("encap"))
	checkEncap6in4(t, e.cfg, v4only, in[14:], r.out, true)
}

func TestFromPod6Pass(t *testing.T) {
	full := podFrame6(t, pod1v6, pkt6{dst: remotePodB6})
	linkLocal := netip.MustParseAddr("fe80::858:aff:fef4:2")
	for _, c := range []struct {
		name    string
		frame   []byte
		counter string
	}{
		{"outside the cluster", podFrame6(t, pod1v6, pkt6{dst: netip.MustParseAddr("2001:db8::1")}), "pass_pod"},
		{"weft0 address", podFrame6(t, pod1v6, pkt6{dst: hostIP6}), "pass_pod"},
		{"the gateway address", podFrame6(t, pod1v6, pkt6{dst: gatewayIP6}), "pass_pod"},
		{"own subnet, no such pod", podFrame6(t, pod1v6, pkt6{dst: netip.MustParseAddr("fd00:10:244::99")}), "pass_pod"},
		{"cluster net, no tunnel", podFrame6(t, pod1v6, pkt6{dst: netip.MustParseAddr("fd00:10:244:9::9")}), "pass_pod"},
		{"hop limit 1 to a VXLAN peer", podFrame6(t, pod1v6, pkt6{dst: remotePodB6, hopLimit: 1}), "pass_ttl"},
		{"hop limit 0 to a VXLAN peer", podFrame6(t, pod1v6, pkt6{dst: remotePodB6, zeroHop: true}), "pass_ttl"},
		{"hop limit 1 to a direct peer", podFrame6(t, pod1v6, pkt6{dst: remotePodC6, hopLimit: 1}), "pass_ttl"},
		{"hop limit 1 to a local pod", podFrame6(t, pod1v6, pkt6{dst: pod2v6.IP, hopLimit: 1}), "pass_ttl"},
		{"link-local to link-local", podFrame6(t, pod1v6, pkt6{src: linkLocal, dst: netip.MustParseAddr("fe80::1")}), "pass_pod"},
		{"link-local to all-routers (MLD, RS-like)", podFrame6(t, pod1v6, pkt6{src: linkLocal, dst: netip.MustParseAddr("ff02::2"), proto: layers.IPProtocolUDP}), "pass_pod"},
		{"MLDv2 report", podFrame6(t, pod1v6, pkt6{src: linkLocal, dst: netip.MustParseAddr("ff02::16"), proto: layers.IPProtocolICMPv6, icmpType: 143}), "pass_pod"},
		{"router solicitation", podFrame6(t, pod1v6, pkt6{src: linkLocal, dst: netip.MustParseAddr("ff02::2"), proto: layers.IPProtocolICMPv6, icmpType: 133, hopLimit: 255}), "pass_pod"},
		{"own address to multicast", podFrame6(t, pod1v6, pkt6{dst: netip.MustParseAddr("ff02::1"), proto: layers.IPProtocolUDP}), "pass_pod"},
		// A router forwards only consistent headers; the kernel drops the rest.
		{"payload length beyond the frame", mutate(full, false, func(b []byte) { put16(b[14+4:], be16(b[14+4:])+1) }), "pass_pod"},
		{"payload length 0 (jumbogram)", mutate(full, false, func(b []byte) { put16(b[14+4:], 0) }), "pass_pod"},
		{"version 4 in an IPv6 frame", mutate(full, false, func(b []byte) { b[14] = 0x40 }), "pass_pod"},
		{"IPv6 header only", full[:14+40], "pass_pod"},
		{"lying payload length to a local pod", mutate(podFrame6(t, pod1v6, pkt6{dst: pod2v6.IP}), false, func(b []byte) { put16(b[14+4:], 0xffff) }), "pass_pod"},
		{"oversize TCP to a VXLAN peer", podFrame6(t, pod1v6, pkt6{dst: remotePodB6, size: 1451}), "pass_mtu"},
		{"oversize UDP to a direct peer", podFrame6(t, pod1v6, pkt6{dst: remotePodC6, size: 1501, proto: layers.IPProtocolUDP}), "pass_mtu"},
		{"oversize behind a fragment header", podFrame6(t, pod1v6, pkt6{dst: remotePodB6, size: 1500, fragment: true}), "pass_mtu"},
		// What conntrack must see (ctgate.h) goes to the host stack.
		{"ICMPv6 error to a local pod", podFrame6(t, pod1v6, pkt6{dst: pod2v6.IP, proto: layers.IPProtocolICMPv6, icmpType: 1}), "pass_conntrack"},
		{"fragment to a local pod", podFrame6(t, pod1v6, pkt6{dst: pod2v6.IP, fragment: true, moreFrags: true}), "pass_conntrack"},
		{"fragment to a VXLAN peer", podFrame6(t, pod1v6, pkt6{dst: remotePodB6, fragment: true, moreFrags: true}), "pass_conntrack"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.run("from_pod", c.frame)
			r.check(t, tcActOK, counters(c.counter))
			r.checkUnchanged(t, c.frame)
		})
	}
}

// A pod's IPv6 source must be its own address (its endpoint entry, on its veth).
func TestFromPod6SourceCheck(t *testing.T) {
	for _, c := range []struct {
		name string
		src  netip.Addr
		dst  netip.Addr
	}{
		{"another local pod's address", pod2v6.IP, remotePodB6},
		{"a remote pod's address", remoteSrcB6, pod2v6.IP},
		{"weft0's address", hostIP6, remotePodB6},
		{"an outside address", netip.MustParseAddr("2001:db8::5"), remotePodB6},
		{"the unspecified address", netip.IPv6Unspecified(), remotePodB6},
		{"its IPv4 address, mapped", netip.AddrFrom16(pod1.IP.As16()), remotePodB6},
		{"link-local to a remote pod", netip.MustParseAddr("fe80::858:aff:fef4:2"), remotePodB6},
		{"link-local to the outside", netip.MustParseAddr("fe80::858:aff:fef4:2"), netip.MustParseAddr("2001:db8::1")},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.run("from_pod", podFrame6(t, pod1v6, pkt6{src: c.src, dst: c.dst}))
			r.check(t, tcActShot, counters("drop_pod_spoof"))
		})
	}
	t.Run("pod2's own address on pod2's veth", func(t *testing.T) {
		// Program.Run runs on ifindex 1 (pod1's); pod2's address there is a spoof,
		// and pod1's is not: the ifindex decides, not the address alone.
		e := newEnv(t)
		r := e.run("from_pod", podFrame6(t, pod2v6, pkt6{dst: remotePodB6}))
		r.check(t, tcActShot, counters("drop_pod_spoof"))
	})
}

func TestFromHost6(t *testing.T) {
	e := newEnv(t)
	in := hostFrame6(t, pkt6{dst: remotePodB6})
	r := e.run("from_host", in)
	r.check(t, tcActRedirect, counters("encap_host"))
	checkEncap6in4(t, e.cfg, peerB6, in[14:], r.out, false) // the host routed it already: no hop limit change
	checkPeerTx(t, e, peerB6.Remote, 1)

	// Hop limit 1 is carried: the host has already routed it.
	in = hostFrame6(t, pkt6{dst: remotePodB6, hopLimit: 1})
	r = e.run("from_host", in)
	r.check(t, tcActRedirect, counters("encap_host"))
	checkEncap6in4(t, e.cfg, peerB6, in[14:], r.out, false)

	in = hostFrame6(t, pkt6{dst: remotePodC6})
	r = e.run("from_host", in)
	r.check(t, tcActRedirect, counters("direct_host"))
	hexDiff(t, "direct frame", r.out, in)

	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"no tunnel", hostFrame6(t, pkt6{dst: netip.MustParseAddr("fd00:10:244:9::1")})},
		{"a local pod (the host routes those itself)", hostFrame6(t, pkt6{dst: pod2v6.IP})},
		{"router solicitation", hostFrame6(t, pkt6{src: netip.MustParseAddr("fe80::1"), dst: netip.MustParseAddr("ff02::2"), proto: layers.IPProtocolICMPv6, icmpType: 133})},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := e.run("from_host", c.frame)
			r.check(t, tcActShot, counters("drop_no_tunnel"))
		})
	}
	t.Run("oversize goes to the kernel", func(t *testing.T) {
		in := hostFrame6(t, pkt6{dst: remotePodB6, size: 1451})
		r := e.run("from_host", in)
		r.check(t, tcActOK, counters("pass_mtu"))
		r.checkUnchanged(t, in)
	})
}

// Program.Run can set gso_size but not gso_type: enough for the per-segment MTU decision.
func TestFromPod6GSO(t *testing.T) {
	for _, c := range []struct {
		name    string
		p       pkt6
		gsoSize uint32
		verdict uint32
		counter string
	}{
		// See TestFromPodGSO: a gso_type-0 GSO skb that passes the gate ends in drop_nested_gso here.
		{"TCP segments fit after encap", pkt6{dst: remotePodB6, size: 40 + 20 + 2*1390}, 1390, tcActShot, "drop_nested_gso"},
		{"TCP segments 1 byte too big", pkt6{dst: remotePodB6, size: 40 + 20 + 2*1391}, 1391, tcActOK, "pass_mtu"},
		{"UDP segments fit", pkt6{dst: remotePodB6, proto: layers.IPProtocolUDP, size: 40 + 8 + 2*1402}, 1402, tcActShot, "drop_nested_gso"},
		{"UDP segments too big", pkt6{dst: remotePodB6, proto: layers.IPProtocolUDP, size: 40 + 8 + 2*1403}, 1403, tcActOK, "pass_mtu"},
		{"behind a fragment header", pkt6{dst: remotePodB6, fragment: true, size: 2000}, 1000, tcActOK, "pass_mtu"},
		{"direct peer, segments fit", pkt6{dst: remotePodC6, size: 40 + 20 + 2*1440}, 1440, tcActRedirect, "direct"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			in := podFrame6(t, pod1v6, c.p)
			r := e.run("from_pod", in, withGSO(c.gsoSize, 2))
			r.check(t, c.verdict, counters(c.counter))
			if c.verdict == tcActOK {
				r.checkUnchanged(t, in)
			}
		})
	}
}
