package bpf_test

import (
	"bytes"
	"encoding/binary"
	"maps"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/gopacket/gopacket/layers"

	weftmaps "github.com/weftnet/weft/maps"
)

// ---- reference receiver ----
//
// refNode is node A as RFC 7348 and Weft's documented receive rules (design.md,
// the comments on classify_underlay and enum counter) describe it, written
// in Go without looking at what the BPF returns. The fuzzer holds the
// programs to it: a frame is decapsulated only if refNode says it is VXLAN
// for us, consistent in every header, and from the peer owning the inner
// source; and every frame ends in the outcome refNode names.
type refNode struct {
	ip        netip.Addr
	ip6       netip.Addr // IPv6 underlay address (outer6.h); invalid: none
	port      uint16
	vni       uint32
	tunnels   []weftmaps.Tunnel
	endpoints map[netip.Addr]weftmaps.Endpoint
	// directMACs is the test namespace's neighbour table (main_test.go):
	// a DirectRouting peer's public IP -> its MAC.
	directMACs map[netip.Addr]net.HardwareAddr
}

func newRefNode() *refNode {
	eps := map[netip.Addr]weftmaps.Endpoint{}
	for _, ep := range []weftmaps.Endpoint{pod1, pod2, pod1v6, pod2v6} {
		eps[ep.IP] = ep
	}
	c := defaultConfig()
	return &refNode{ip: c.UnderlayIP, port: c.Port, vni: c.VNI, tunnels: []weftmaps.Tunnel{peerB, peerC, peerD, peerB6, peerC6}, endpoints: eps,
		directMACs: map[netip.Addr]net.HardwareAddr{peerC.Remote: peerCMAC, peerC6Remote: peerCMAC}}
}

// newRefNode6 is newEnv6's node: also an IPv6 underlay address, peers E
// and F over IPv6 and G, DirectRouting over IPv6.
func newRefNode6() *refNode {
	n := newRefNode()
	n.ip6 = underlayIP6
	n.tunnels = append(n.tunnels, peerE, peerF, peerG, peerE6)
	n.directMACs[peerG.Remote] = peerGMAC
	return n
}

// tunnelFor is a longest-prefix match over the tunnels. An IPv4-mapped
// IPv6 address (which no IPv6 header may carry) matches nothing.
func (n *refNode) tunnelFor(a netip.Addr) (weftmaps.Tunnel, bool) {
	best, found := weftmaps.Tunnel{}, false
	if a.Is4In6() {
		return best, false
	}
	for _, tun := range n.tunnels {
		if tun.Subnet.Contains(a) && (!found || tun.Subnet.Bits() > best.Subnet.Bits()) {
			best, found = tun, true
		}
	}
	return best, found
}

// ipv4Header is what the reference needs of an IPv4 header.
type ipv4Header struct {
	version, ihl int // ihl in bytes
	tos          byte
	totLen       int
	mf           bool
	fragOff      int
	ttl          byte
	proto        byte
	src, dst     netip.Addr
}

func parseIPv4(b []byte) (ipv4Header, bool) {
	if len(b) < 20 {
		return ipv4Header{}, false
	}
	fo := binary.BigEndian.Uint16(b[6:])
	return ipv4Header{
		version: int(b[0] >> 4), ihl: int(b[0]&0x0f) * 4, tos: b[1],
		totLen: int(binary.BigEndian.Uint16(b[2:])),
		mf:     fo&0x2000 != 0, fragOff: int(fo & 0x1fff),
		ttl: b[8], proto: b[9],
		src: netip.AddrFrom4([4]byte(b[12:16])), dst: netip.AddrFrom4([4]byte(b[16:20])),
	}, true
}

// wellFormed is RFC 1812 5.2.2's test for a packet of avail bytes.
func (h ipv4Header) wellFormed(avail int) bool {
	return h.version == 4 && h.ihl >= 20 && h.totLen >= h.ihl && h.totLen <= avail
}

// refVerdict is the reference's outcome for one underlay frame.
type refVerdict struct {
	reason string // a counter name: decap, direct_rx, pass_underlay, pass_other_vni, pass_fragment, drop_*
	inner  []byte // decap: inner IPv4 packet (ECN applied) and what trails it; direct_rx: the IPv4 packet
	ce     bool   // decap: the outer CE was copied onto the inner header (RFC 6040)
	dst    netip.Addr
	ttl    byte
	peer   netip.Addr
	stack  bool // ctgate.h: the host's conntrack must see it, so it goes through weft0
}

// needsStack is ctgate.h's rule for a packet no conntrack entry covers (the
// test's namespace NATs nothing): fragments, ICMP but echo, protocols other
// than TCP/UDP/ICMP, and anything too short for its ports.
func needsStack(ip []byte) bool {
	h, _ := parseIPv4(ip)
	if h.mf || h.fragOff != 0 || h.totLen < h.ihl+4 || len(ip) < h.ihl+4 {
		return true
	}
	switch h.proto {
	case 1:
		return ip[h.ihl] != 8 && ip[h.ihl] != 0
	case 6, 17:
		return false
	}
	return true
}

func (n *refNode) classify(f []byte) refVerdict {
	pass := refVerdict{reason: "pass_underlay"}
	// Is it VXLAN for us at all? Ethernet, IPv4 or IPv6, UDP to our address
	// and port, and not a later fragment (which has no UDP header to look at).
	if len(f) >= 14 && binary.BigEndian.Uint16(f[12:]) == 0x86dd {
		if v := n.classifyOuter6(f); v.reason != "pass_underlay" {
			return v
		}
		if len(f) >= 14+40 {
			return n.plain6(f)
		}
		return pass
	}
	if len(f) < 14 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		return pass
	}
	outer, ok := parseIPv4(f[14:])
	if !ok || outer.version != 4 || outer.ihl < 20 || outer.proto != 17 || outer.dst != n.ip {
		return n.plain(f)
	}
	// A fragment of UDP to us may be VXLAN a router cut up: the kernel
	// reassembles it (and weftgro0's program checks the result).
	if outer.fragOff != 0 {
		return refVerdict{reason: "pass_fragment"}
	}
	udpOff := 14 + outer.ihl
	if len(f) < udpOff+8 || binary.BigEndian.Uint16(f[udpOff+2:]) != n.port {
		return n.plain(f)
	}

	// It claims to be ours: every header must be consistent.
	if outer.mf {
		return refVerdict{reason: "pass_fragment"}
	}
	if outer.ihl != 20 {
		return refVerdict{reason: "drop_outer_options"}
	}
	udpLen := int(binary.BigEndian.Uint16(f[udpOff+4:]))
	if outer.totLen > len(f)-14 || outer.totLen < 28 || udpLen != outer.totLen-20 {
		return refVerdict{reason: "drop_outer_length"}
	}
	if !ipv4ChecksumOK(f[14:34]) {
		return refVerdict{reason: "drop_outer_csum"}
	}
	if udpLen < 8+8+14+20 {
		return refVerdict{reason: "drop_short"}
	}
	return n.classifyVXLAN(f[udpOff+8:], udpLen, outer.src, outer.tos)
}

// classifyVXLAN is the part after the outer IP and UDP headers, the same for
// both outer families: vxl is the VXLAN header on, udpLen the UDP length,
// src and tos the outer source and its TOS or traffic class.
func (n *refNode) classifyVXLAN(vxl []byte, udpLen int, src netip.Addr, tos byte) refVerdict {
	if vxl[0]&0x08 == 0 {
		return refVerdict{reason: "drop_vxlan_flags"}
	}
	if vni := uint32(vxl[4])<<16 | uint32(vxl[5])<<8 | uint32(vxl[6]); vni != n.vni {
		return refVerdict{reason: "pass_other_vni"}
	}
	innerEth := vxl[8:]
	switch binary.BigEndian.Uint16(innerEth[12:]) {
	case 0x0800:
	case 0x86dd:
		return n.classify6(innerEth, udpLen-8-8-14, src, tos)
	default:
		return refVerdict{reason: "drop_inner_not_ipv4"}
	}
	inner, _ := parseIPv4(innerEth[14:])
	if !inner.wellFormed(udpLen - 8 - 8 - 14) {
		return refVerdict{reason: "drop_inner_malformed"}
	}
	tun, ok := n.tunnelFor(inner.src)
	if !ok {
		return refVerdict{reason: "drop_unknown_source"}
	}
	if tun.Remote != src {
		return refVerdict{reason: "drop_unknown_peer"}
	}
	// RFC 6040 normal mode, as the Linux vxlan driver applies it: only an
	// outer CE matters; over Not-ECT it drops, over ECT it marks.
	v := refVerdict{reason: "decap", inner: innerEth[14:], dst: inner.dst, ttl: inner.ttl, peer: tun.Remote}
	if tos&3 == 3 {
		switch inner.tos & 3 {
		case 0:
			return refVerdict{reason: "drop_ecn_not_ect"}
		case 1, 2:
			v.inner = slices.Clone(v.inner)
			setTOSIncremental(v.inner, inner.tos|3)
			v.ce = true
		}
	}
	_, local := n.endpoints[inner.dst]
	v.stack = local && needsStack(v.inner)
	return v
}

// classifyOuter6 is the reference for an outer IPv6 header (outer6.h's rules):
// no extension headers on the fast path, fragments and other extension
// headers left to the kernel, a UDP checksum that must not be zero and must
// be right for an inner packet whose own checksum is right, or else is the
// kernel's to judge.
func (n *refNode) classifyOuter6(f []byte) refVerdict {
	pass := refVerdict{reason: "pass_underlay"}
	if len(f) < 54 || f[14]>>4 != 6 || !n.ip6.IsValid() || netip.AddrFrom16([16]byte(f[38:54])) != n.ip6 {
		return pass
	}
	src := netip.AddrFrom16([16]byte(f[22:38])).Unmap()
	nh, off := f[20], 54
	if nh == 44 { // a fragment header right away
		if len(f) < off+8 {
			return pass
		}
		if binary.BigEndian.Uint16(f[off+2:])&0xfff8 != 0 {
			return refVerdict{reason: "pass_fragment"}
		}
		if f[off] != 17 || len(f) < off+16 || binary.BigEndian.Uint16(f[off+8+2:]) != n.port {
			return pass
		}
		return refVerdict{reason: "pass_fragment"}
	}
	if nh != 17 {
		for i := 0; i < 3 && (nh == 0 || nh == 43 || nh == 60); i++ {
			if len(f) < off+2 {
				return pass
			}
			nh, off = f[off], off+(int(f[off+1])+1)*8
		}
		switch {
		case nh == 44:
			return refVerdict{reason: "pass_fragment"}
		case nh == 17 && len(f) >= off+8 && binary.BigEndian.Uint16(f[off+2:]) == n.port:
			return refVerdict{reason: "pass_outer6_exthdr"}
		}
		return pass
	}
	if len(f) < 62 || binary.BigEndian.Uint16(f[56:]) != n.port {
		return pass
	}
	plen, udpLen := int(binary.BigEndian.Uint16(f[18:])), int(binary.BigEndian.Uint16(f[58:]))
	if plen > len(f)-54 || plen < 8 || udpLen != plen {
		return refVerdict{reason: "drop_outer_length"}
	}
	if udpLen < 8+8+14+20 {
		return refVerdict{reason: "drop_short"}
	}
	if binary.BigEndian.Uint16(f[60:]) == 0 {
		return refVerdict{reason: "drop_outer6_zero_csum"}
	}
	if len(f) < 54+8+8+14+20 {
		return refVerdict{reason: "drop_short"}
	}
	v := n.classifyVXLAN(f[62:], udpLen, src, byte(binary.BigEndian.Uint32(f[14:])>>20))
	// The checksum comes before RFC 6040's drop: the kernel judges both.
	if (v.reason != "decap" && v.reason != "drop_ecn_not_ect") || lcoValid(f, udpLen) {
		return v
	}
	return refVerdict{reason: "pass_outer6_csum"}
}

// lcoValid: whether the outer UDP checksum of f (outer IPv6, no extension
// headers) is right, given that the inner IPv4 or IPv6 packet's TCP, UDP or
// ICMP(v6) checksum is (the sum of an L4 packet with a right checksum is the
// complement of its pseudo-header's). False where that cannot be assumed.
func lcoValid(f []byte, udpLen int) bool {
	var hdrEnd int
	var pseudo []byte
	proto := byte(0)
	switch binary.BigEndian.Uint16(f[82:]) {
	case 0x0800:
		in, _ := parseIPv4(f[84:])
		if in.version != 4 || in.ihl != 20 || in.totLen != udpLen-30 || in.mf || in.fragOff != 0 {
			return false
		}
		hdrEnd, proto = 104, in.proto
		if proto != 1 {
			pseudo = slices.Concat(f[84+12:84+20], []byte{0, proto}, binary.BigEndian.AppendUint16(nil, uint16(in.totLen-20)))
		}
	case 0x86dd:
		if len(f) < 124 || f[84]>>4 != 6 || int(binary.BigEndian.Uint16(f[88:]))+40 != udpLen-30 {
			return false
		}
		hdrEnd, proto = 124, f[90]
		pseudo = slices.Concat(f[84+8:84+40], binary.BigEndian.AppendUint32(nil, uint32(udpLen-30-40)), []byte{0, 0, 0, proto})
	default:
		return false
	}
	switch proto {
	case 1:
		if hdrEnd != 104 {
			return false
		}
	case 58:
		if hdrEnd != 124 {
			return false
		}
	case 17:
		if len(f) < hdrEnd+8 || binary.BigEndian.Uint16(f[hdrEnd+6:]) == 0 {
			return false
		}
	case 6:
	default:
		return false
	}
	// Everything the outer sum covers but the inner L4 bytes, plus their sum.
	b := slices.Concat(f[22:54], binary.BigEndian.AppendUint32(nil, uint32(udpLen)), []byte{0, 0, 0, 17}, f[54:hdrEnd])
	var l4 uint16 = 0xffff
	if pseudo != nil {
		l4 = csum16(pseudo) // the complement of the pseudo-header's sum
	}
	return csum16(append(b, byte(l4>>8), byte(l4))) == 0
}

// setTOSIncremental sets an IPv4 header's TOS and updates its checksum the
// RFC 1624 (eqn. 3) way, HC' = ~(~HC + ~m + m'), so a header whose checksum
// was wrong stays exactly as wrong.
func setTOSIncremental(h []byte, tos byte) {
	old := uint32(binary.BigEndian.Uint16(h[0:]))
	h[1] = tos
	sum := uint32(^binary.BigEndian.Uint16(h[10:])) + (^old & 0xffff) + uint32(binary.BigEndian.Uint16(h[0:]))
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(h[10:], ^uint16(sum))
}

// plain is the tc program's unencapsulated path: a well-formed packet from
// a DirectRouting peer's pod to a local pod, forwarded like a router would.
func (n *refNode) plain(f []byte) refVerdict {
	pass := refVerdict{reason: "pass_underlay"}
	if binary.BigEndian.Uint16(f[12:]) == 0x86dd {
		return n.plain6(f)
	}
	ip, ok := parseIPv4(f[14:])
	if !ok || !ip.wellFormed(len(f)-14) {
		return pass
	}
	if _, ok := n.endpoints[ip.dst]; !ok {
		return pass
	}
	tun, ok := n.tunnelFor(ip.src)
	if !ok || tun.Mode != weftmaps.ModeDirect {
		return pass
	}
	// The L2 sender must be the peer's MAC in the neighbour table (main_test.go).
	if !bytes.Equal(f[6:12], n.directMACs[tun.Remote]) {
		return refVerdict{reason: "drop_direct_peer"}
	}
	if needsStack(f[14:]) {
		return refVerdict{reason: "direct_rx", inner: f[14:], dst: ip.dst, ttl: ip.ttl, stack: true}
	}
	if ip.ttl <= 1 {
		return pass
	}
	return refVerdict{reason: "direct_rx", inner: f[14:], dst: ip.dst, ttl: ip.ttl}
}

// checkForwarded checks that got is want (an IPv4 packet and its trailer)
// forwarded by a router: TTL - 1, checksum updated, all else identical.
func checkForwarded(t *testing.T, got, want []byte) {
	t.Helper()
	if len(got) != len(want) || len(want) < 20 {
		t.Fatalf("forwarded packet %d bytes, want %d", len(got), len(want))
	}
	if got[8] != want[8]-1 {
		t.Errorf("TTL %d, want %d", got[8], want[8]-1)
	}
	g, w := slices.Clone(got), slices.Clone(want)
	g[8], w[8], g[10], g[11], w[10], w[11] = 0, 0, 0, 0, 0, 0
	hexDiff(t, "forwarded packet (TTL and checksum aside)", g, w)
	ihl := int(want[0]&0x0f) * 4
	if csum16(want[:ihl]) == 0 && csum16(got[:ihl]) != 0 {
		t.Errorf("valid header checksum made invalid by forwarding: %x", got[:ihl])
	}
}

func FuzzDecap(f *testing.F) {
	for _, c := range underlayCases(f) {
		f.Add(c.frame)
	}
	for _, c := range underlay6Cases(f) {
		f.Add(c.frame)
	}
	for _, p := range []pkt6{{}, {proto: layers.IPProtocolUDP}, {proto: layers.IPProtocolICMPv6}, {tc: 3}, {fragment: true}} {
		f.Add(vxlan6in6Frame(f, innerFromE6(f, p), nil)) // v6-in-v6
	}
	f.Add(podFrame(f, pod1, pkt{dst: remotePodB}))
	f.Add(podFrame(f, pod1, pkt{dst: pod2.IP}))
	f.Add(podFrame6(f, pod1v6, pkt6{dst: remotePodB6}))
	f.Add(podFrame6(f, pod1v6, pkt6{dst: pod2v6.IP}))
	_, group := solicitedNode(gatewayIP6)
	f.Add(ndFrame(f, nd{ethSrc: pod1.MAC, ethDst: group, src: pod1v6.IP, dst: netip.MustParseAddr("ff02::1:ff00:1"), target: gatewayIP6, lladdr: pod1.MAC}))

	e := newEnv6(f) // node A with IPv4 and IPv6 underlay addresses, peers over both
	ref := newRefNode6()
	f.Fuzz(func(t *testing.T, frame []byte) {
		// Program.Run takes 14 bytes up to a page less head- and tailroom.
		if len(frame) < 14 || len(frame) > 1600 {
			return
		}
		e.tb = t
		want := ref.classify(frame)
		checkFuzzXDP(t, e, frame, want)
		if tcRunnable(frame) {
			checkFuzzTC(t, e, frame, want)
			// The other programs see hostile input too (a pod can send anything).
			for _, name := range []string{"from_pod", "from_host"} {
				r := e.run(name, frame)
				checkVerdictSet(t, name, r.verdict)
				if len(r.delta) != 1 || sum(r.delta) != 1 {
					t.Errorf("%s: counters moved %v, want exactly one by one", name, r.delta)
				}
			}
		}
	})
}

func sum(d map[string]uint64) (n uint64) {
	for _, v := range d {
		n += v
	}
	return n
}

func checkVerdictSet(t *testing.T, name string, verdict uint32) {
	t.Helper()
	if !slices.Contains(verdictSets[name], verdict) {
		t.Errorf("%s returned %d, outside its documented verdicts %v", name, verdict, verdictSets[name])
	}
}

func checkFuzzXDP(t *testing.T, e *env, frame []byte, want refVerdict) {
	t.Helper()
	r := e.run("from_underlay_xdp", frame)
	checkVerdictSet(t, "from_underlay_xdp", r.verdict)
	decapped := len(r.out) < len(frame) || (len(r.meta) == 4 && binary.NativeEndian.Uint32(r.meta) == metaDecapped)
	if decapped && want.reason != "decap" {
		t.Fatalf("XDP decapsulated a frame the reference calls %s:\n%x", want.reason, frame)
	}
	var wantDelta map[string]uint64
	switch want.reason {
	case "decap":
		wantDelta = counters("decap")
		if want.ce {
			wantDelta["ecn_ce"] = 1
		}
		if r.verdict != xdpPass || !decapped {
			t.Errorf("XDP verdict %d, decapsulated %v, for a valid frame", r.verdict, decapped)
		}
		exp := append(ethHdr(underlayMAC, frame[6:12], ipType(want.inner)), want.inner...)
		hexDiff(t, "XDP-decapsulated frame", r.out, exp)
	case "pass_underlay", "direct_rx", "drop_direct_peer":
		wantDelta = counters() // tc counts plain traffic
		if r.verdict != xdpPass || len(r.meta) != 0 || !bytes.Equal(r.out, frame) {
			t.Errorf("XDP: verdict %d, meta %x, frame changed %v; want an untouched pass", r.verdict, r.meta, !bytes.Equal(r.out, frame))
		}
	case "pass_other_vni", "pass_fragment", "pass_outer6_csum", "pass_outer6_exthdr":
		wantDelta = counters(want.reason)
		if r.verdict != xdpPass || !bytes.Equal(r.out, frame) {
			t.Errorf("XDP: verdict %d, frame changed %v; want an untouched pass", r.verdict, !bytes.Equal(r.out, frame))
		}
	default:
		wantDelta = counters(want.reason)
		if r.verdict != xdpDrop {
			t.Errorf("XDP verdict %d, want XDP_DROP for %s", r.verdict, want.reason)
		}
	}
	if !maps.Equal(r.delta, wantDelta) {
		t.Errorf("XDP counters moved %v, want %v (reference: %s)\n%x", r.delta, wantDelta, want.reason, frame)
	}
}

func checkFuzzTC(t *testing.T, e *env, frame []byte, want refVerdict) {
	t.Helper()
	r := e.run("from_underlay", frame)
	checkVerdictSet(t, "from_underlay", r.verdict)
	if (r.verdict == tcActRedirect || !bytes.Equal(r.out, frame)) && want.reason != "decap" && want.reason != "direct_rx" {
		t.Fatalf("tc redirected (%d) or changed a frame the reference calls %s:\n%x", r.verdict, want.reason, frame)
	}
	var wantDelta map[string]uint64
	switch want.reason {
	case "decap", "direct_rx":
		if r.verdict != tcActRedirect {
			t.Errorf("tc verdict %d, want TC_ACT_REDIRECT", r.verdict)
		}
		ep, local := e.endpoint(want.dst)
		switch {
		case want.stack:
			wantDelta = counters("decap", "pass_conntrack")
			if want.reason == "direct_rx" {
				wantDelta = counters("pass_conntrack")
			}
			hexDiff(t, "frame for the host", r.out, append(ethHdr(localVtep, frame[6:12], ipType(want.inner)), want.inner...))
		case local && want.ttl > 1:
			if want.reason == "decap" {
				wantDelta = counters("decap", "deliver")
			} else {
				wantDelta = counters("direct_rx")
			}
			if !bytes.Equal(r.out[:14], ethHdr(ep.MAC, ep.HostMAC, ipType(want.inner))) {
				t.Errorf("Ethernet header %x, want the pod's", r.out[:14])
			}
			if ipType(want.inner) == layers.EthernetTypeIPv6 {
				hexDiff(t, "forwarded IPv6 packet", r.out[14:], hopDecremented(want.inner))
			} else {
				checkForwarded(t, r.out[14:], want.inner)
			}
		default:
			wantDelta = counters("decap", "to_host")
			hexDiff(t, "frame for the host", r.out, append(ethHdr(localVtep, frame[6:12], ipType(want.inner)), want.inner...))
		}
		if want.ce {
			wantDelta["ecn_ce"] = 1
		}
	case "pass_underlay", "pass_other_vni", "pass_fragment", "pass_outer6_csum", "pass_outer6_exthdr":
		wantDelta = counters(want.reason)
		if r.verdict != tcActOK {
			t.Errorf("tc verdict %d, want TC_ACT_OK for %s", r.verdict, want.reason)
		}
	default:
		wantDelta = counters(want.reason)
		if r.verdict != tcActShot {
			t.Errorf("tc verdict %d, want TC_ACT_SHOT for %s", r.verdict, want.reason)
		}
	}
	if !maps.Equal(r.delta, wantDelta) {
		t.Errorf("tc counters moved %v, want %v\n%x", r.delta, wantDelta, frame)
	}
}

func (e *env) endpoint(a netip.Addr) (weftmaps.Endpoint, bool) { return endpointFor(a) }

// Every program, on every frame this package builds, stays inside its
// documented verdicts and moves counters (from_pod and from_host: exactly one).
func TestVerdictSets(t *testing.T) {
	e := newEnv(t)
	var frames [][]byte
	for _, c := range underlayCases(t) {
		frames = append(frames, c.frame)
	}
	for _, dst := range []netip.Addr{remotePodB, remotePodC, remotePodD, pod2.IP, hostIP, netip.MustParseAddr("1.1.1.1")} {
		for _, p := range []pkt{{}, {ttl: 1}, {df: true, size: 1500}, {size: 1500}} {
			p.dst = dst
			frames = append(frames, podFrame(t, pod1, p), hostFrame(t, p))
		}
	}
	for _, dst := range []netip.Addr{remotePodB6, remotePodC6, pod2v6.IP, hostIP6, netip.MustParseAddr("2001:db8::1")} {
		for _, p := range []pkt6{{}, {hopLimit: 1}, {size: 1500}, {size: 1500, proto: layers.IPProtocolICMPv6}} {
			p.dst = dst
			frames = append(frames, podFrame6(t, pod1v6, p), hostFrame6(t, p))
		}
	}
	group, groupMAC := solicitedNode(gatewayIP6)
	frames = append(frames, ndFrame(t, nd{ethSrc: pod1.MAC, ethDst: groupMAC, src: pod1v6.IP, dst: group, target: gatewayIP6, lladdr: pod1.MAC}))
	for _, fr := range frames {
		for name := range verdictSets {
			if name != "from_underlay_xdp" && !tcRunnable(fr) {
				continue
			}
			r := e.run(name, fr)
			checkVerdictSet(t, name, r.verdict)
			switch name {
			case "from_pod", "from_host":
				if len(r.delta) != 1 || sum(r.delta) != 1 {
					t.Errorf("%s: counters moved %v, want exactly one by one:\n%x", name, r.delta, fr)
				}
			case "from_underlay":
				if sum(r.delta) == 0 || sum(r.delta) > 2 {
					t.Errorf("%s: counters moved %v, want one (two on decap):\n%x", name, r.delta, fr)
				}
			}
		}
	}
}

// ipv4ChecksumOK is RFC 1071: the ones'-complement sum of a correct header,
// check field included, is 0xffff.
func ipv4ChecksumOK(h []byte) bool {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}

// classify6 is classify's inner IPv6 half: inner is the inner Ethernet
// frame, innerLen the bytes the outer lengths leave it after its header.
func (n *refNode) classify6(innerEth []byte, innerLen int, outerSrc netip.Addr, outerTOS byte) refVerdict {
	ip := innerEth[14:]
	if len(ip) < 40 {
		return refVerdict{reason: "drop_short"}
	}
	plen := int(binary.BigEndian.Uint16(ip[4:]))
	if ip[0]>>4 != 6 || plen == 0 || 40+plen > innerLen {
		return refVerdict{reason: "drop_inner_malformed"}
	}
	src, dst := netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	tun, ok := n.tunnelFor(src)
	if !ok {
		return refVerdict{reason: "drop_unknown_source"}
	}
	if tun.Remote != outerSrc {
		return refVerdict{reason: "drop_unknown_peer"}
	}
	v := refVerdict{reason: "decap", inner: ip, dst: dst, ttl: ip[7], peer: tun.Remote}
	if outerTOS&3 == 3 {
		switch ipv6ECN(ip) {
		case 0:
			return refVerdict{reason: "drop_ecn_not_ect"}
		case 1, 2:
			v.inner = slices.Clone(v.inner)
			v.inner[1] |= 0x30
			v.ce = true
		}
	}
	_, local := n.endpoints[dst]
	v.stack = local && needsStack6(v.inner)
	return v
}

// needsStack6 is ctgate's rule for IPv6 (ipv6.h ct_needs_stack6) where no
// conntrack entry exists: anything but TCP, UDP and ICMPv6 echo right after
// the fixed header.
func needsStack6(ip []byte) bool {
	if len(ip) < 44 || binary.BigEndian.Uint16(ip[4:]) < 4 {
		return true
	}
	switch ip[6] {
	case 58:
		return ip[40] != 128 && ip[40] != 129
	case 6, 17:
		return false
	}
	return true
}

// plain6 is plain for an IPv6 frame.
func (n *refNode) plain6(f []byte) refVerdict {
	pass := refVerdict{reason: "pass_underlay"}
	ip := f[14:]
	if len(ip) < 40 {
		return pass
	}
	plen := int(binary.BigEndian.Uint16(ip[4:]))
	if ip[0]>>4 != 6 || plen == 0 || 40+plen > len(ip) {
		return pass
	}
	src, dst := netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	if dst.Is4In6() {
		return pass
	}
	if _, ok := n.endpoints[dst]; !ok {
		return pass
	}
	tun, ok := n.tunnelFor(src)
	if !ok || tun.Mode != weftmaps.ModeDirect {
		return pass
	}
	if !bytes.Equal(f[6:12], n.directMACs[tun.Remote]) {
		return refVerdict{reason: "drop_direct_peer"}
	}
	if needsStack6(ip) {
		return refVerdict{reason: "direct_rx", inner: ip, dst: dst, ttl: ip[7], stack: true}
	}
	if ip[7] <= 1 {
		return pass
	}
	return refVerdict{reason: "direct_rx", inner: ip, dst: dst, ttl: ip[7]}
}
