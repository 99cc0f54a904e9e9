package bpf_test

// VXLAN over an IPv6 underlay (outer6.h): IPv4 pods over IPv6 ("v4-in-v6"),
// encapsulation field by field, the cases only the kernel can checksum, and
// the receive classifier's table of valid and hostile outer IPv6 frames.

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	weftmaps "github.com/weftnet/weft/maps"
)

var (
	underlayIP6 = netip.MustParseAddr("fd00:8::1") // node A's IPv6 underlay address
	// Peer E: VXLAN over IPv6 (its tunnel's remote is a plain IPv6 address).
	peerE = weftmaps.Tunnel{Subnet: netip.MustParsePrefix("10.244.5.0/24"), Remote: netip.MustParseAddr("fd00:8::5"),
		VtepMAC: mustMAC("8e:00:00:00:00:05"), VNI: 1, Mode: weftmaps.ModeVXLAN}
	// Peer F: over IPv6 with its own VNI.
	peerF = weftmaps.Tunnel{Subnet: netip.MustParsePrefix("10.244.6.0/24"), Remote: netip.MustParseAddr("fd00:8::6"),
		VtepMAC: mustMAC("8e:00:00:00:00:06"), VNI: 0x123456, Mode: weftmaps.ModeVXLAN}
	// Peer G: DirectRouting over IPv6 (its IPv6 underlay address on our L2, main_test.go).
	peerG = weftmaps.Tunnel{Subnet: netip.MustParsePrefix("10.244.7.0/24"), Remote: netip.MustParseAddr("fd00:8::7"),
		VtepMAC: mustMAC("8e:00:00:00:00:07"), VNI: 1, Mode: weftmaps.ModeDirect}
	peerGMAC   = mustMAC("02:00:00:00:08:07")
	remotePodG = netip.MustParseAddr("10.244.7.7")
	peerEMAC   = mustMAC("02:00:00:00:08:05")
	// Peer E's IPv6 pods, over its IPv6 underlay address (v6-in-v6, flannel's model).
	peerE6 = weftmaps.Tunnel{Subnet: netip.MustParsePrefix("fd00:10:244:5::/64"), Remote: peerE.Remote,
		VtepMAC: peerE.VtepMAC, VNI: 1, Mode: weftmaps.ModeVXLAN}
	remotePodE6 = netip.MustParseAddr("fd00:10:244:5::7")
	remoteSrcE6 = netip.MustParseAddr("fd00:10:244:5::5")
	remotePodE  = netip.MustParseAddr("10.244.5.7")
	remotePodF  = netip.MustParseAddr("10.244.6.7")
	remoteSrcE  = netip.MustParseAddr("10.244.5.5")
)

// Offsets in a VXLAN frame with an outer IPv6 header and no extension headers.
const (
	off6IP       = 14
	off6UDP      = off6IP + 40
	off6VXLAN    = off6UDP + 8
	off6InnerEth = off6VXLAN + 8
	off6InnerIP  = off6InnerEth + 14
)

func config6() weftmaps.Config {
	c := defaultConfig()
	c.UnderlayIP6 = underlayIP6
	return c
}

// newEnv6 is node A with an IPv6 underlay address, peers E (IPv4 and IPv6
// pods) and F over IPv6, and G, DirectRouting over IPv6.
func newEnv6(tb testing.TB) *env {
	e := newEnv(tb)
	e.setConfig(config6())
	for _, tun := range []weftmaps.Tunnel{peerE, peerF, peerG, peerE6} {
		if err := e.m.Tunnels.Put(tun); err != nil {
			tb.Fatal(err)
		}
	}
	return e
}

// udp6Sum is the ones'-complement checksum over the IPv6 pseudo-header and
// seg (a UDP header and payload as on the wire): 0 for a valid segment.
func udp6Sum(src, dst netip.Addr, seg []byte) uint16 {
	b := make([]byte, 0, 40+len(seg))
	s16, d16 := src.As16(), dst.As16()
	b = append(b, s16[:]...)
	b = append(b, d16[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(seg)))
	b = append(b, 0, 0, 0, 17)
	return csum16(append(b, seg...))
}

// setUDP6Csum recomputes the UDP checksum of the frame's outer IPv6 packet
// (no extension headers), zero sent as 0xffff.
func setUDP6Csum(b []byte) {
	src, _ := netip.AddrFromSlice(b[off6IP+8 : off6IP+24])
	dst, _ := netip.AddrFromSlice(b[off6IP+24 : off6IP+40])
	b[off6UDP+6], b[off6UDP+7] = 0, 0
	c := udp6Sum(src, dst, b[off6UDP:])
	if c == 0 {
		c = 0xffff
	}
	put16(b[off6UDP+6:], c)
}

// vx6 describes a VXLAN frame over IPv6 on our underlay.
type vx6 struct {
	outerSrc, outerDst netip.Addr
	tclass             uint8
	sport, dport       uint16
	vni                uint32
	innerSrcMAC        net.HardwareAddr
	innerDstMAC        net.HardwareAddr
	inner              []byte // the inner IPv4 packet
}

// defaultVX6 is peer E sending inner to us.
func defaultVX6(inner []byte) vx6 {
	return vx6{outerSrc: peerE.Remote, outerDst: underlayIP6, sport: 43210, dport: 8472, vni: 1,
		innerSrcMAC: peerE.VtepMAC, innerDstMAC: localVtep, inner: inner}
}

// vxlan6Frame builds the frame with a valid UDP checksum.
func vxlan6Frame(t testing.TB, v vx6) []byte {
	t.Helper()
	b := ethHdr(underlayMAC, peerEMAC, layers.EthernetTypeIPv6)
	plen := 8 + 8 + 14 + len(v.inner)
	b = binary.BigEndian.AppendUint32(b, 6<<28|uint32(v.tclass)<<20)
	b = binary.BigEndian.AppendUint16(b, uint16(plen))
	b = append(b, 17, 64)
	s16, d16 := v.outerSrc.As16(), v.outerDst.As16()
	b = append(b, s16[:]...)
	b = append(b, d16[:]...)
	b = binary.BigEndian.AppendUint16(b, v.sport)
	b = binary.BigEndian.AppendUint16(b, v.dport)
	b = binary.BigEndian.AppendUint16(b, uint16(plen))
	b = append(b, 0, 0)
	b = append(b, 0x08, 0, 0, 0, byte(v.vni>>16), byte(v.vni>>8), byte(v.vni), 0)
	b = append(b, ethHdr(v.innerDstMAC, v.innerSrcMAC, layers.EthernetTypeIPv4)...)
	b = append(b, v.inner...)
	setUDP6Csum(b)
	return b
}

// innerFromE is an IPv4 packet from a pod on peer E to pod2.
func innerFromE(t testing.TB, p pkt) []byte {
	if !p.src.IsValid() {
		p.src = remoteSrcE
	}
	if !p.dst.IsValid() {
		p.dst = pod2.IP
	}
	return ipv4(t, p)
}

func validVX6(t testing.TB, p pkt) []byte { return vxlan6Frame(t, defaultVX6(innerFromE(t, p))) }

// checkEncap6 checks a v4-in-v6 VXLAN frame field by field against RFC 7348
// and what the Linux vxlan driver sends with its defaults over IPv6
// (TestEncap6MatchesKernelVXLAN compares with the driver's own bytes).
func checkEncap6(t *testing.T, cfg weftmaps.Config, tun weftmaps.Tunnel, innerIP, out []byte, forwarded bool) {
	t.Helper()
	if want := 14 + 70 + len(innerIP); len(out) != want {
		t.Fatalf("encapsulated frame is %d bytes, want %d", len(out), want)
	}
	pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		t.Fatalf("gopacket cannot decode the output: %v\n%x", el.Error(), out)
	}
	var kinds []gopacket.LayerType
	for _, l := range pkt.Layers() {
		kinds = append(kinds, l.LayerType())
	}
	inner6 := innerIP[0]>>4 == 6 // v6-in-v6
	innerType, innerLayer := layers.EthernetTypeIPv4, layers.LayerTypeIPv4
	if inner6 {
		innerType, innerLayer = layers.EthernetTypeIPv6, layers.LayerTypeIPv6
	}
	if len(kinds) < 6 || kinds[1] != layers.LayerTypeIPv6 || kinds[2] != layers.LayerTypeUDP ||
		kinds[3] != layers.LayerTypeVXLAN || kinds[4] != layers.LayerTypeEthernet || kinds[5] != innerLayer {
		t.Fatalf("layers %v, want Ethernet/IPv6/UDP/VXLAN/Ethernet/%v/...", kinds, innerLayer)
	}

	// Outer Ethernet: source is the underlay NIC, type IPv6; bpf_redirect_neigh fills the destination.
	if !bytes.Equal(out[6:12], cfg.UnderlayMAC) || be16(out[12:]) != 0x86dd {
		t.Errorf("outer Ethernet src %x type %#04x, want %v IPv6", out[6:12], be16(out[12:]), cfg.UnderlayMAC)
	}

	// Outer IPv6: version 6, traffic class = inner ECN with CE as ECT(0)
	// (RFC 6040, ip_tunnel_ecn_encap; DSCP 0), flow label 0 (the vxlan
	// driver's default label), hop limit 64, next header UDP.
	oh := out[off6IP : off6IP+40]
	wantECN := uint32(innerIP[1] & 3)
	if inner6 {
		wantECN = uint32(ipv6ECN(innerIP))
	}
	if wantECN == 3 {
		wantECN = 2
	}
	if w := binary.BigEndian.Uint32(oh); w != 6<<28|wantECN<<20 {
		t.Errorf("outer version/class/label %#08x for inner TOS %#x, want %#08x", w, innerIP[1], 6<<28|wantECN<<20)
	}
	if int(be16(oh[4:])) != len(out)-14-40 {
		t.Errorf("outer payload length %d, want %d", be16(oh[4:]), len(out)-54)
	}
	if oh[6] != 17 || oh[7] != 64 {
		t.Errorf("outer next header %d hop limit %d, want 17 and 64", oh[6], oh[7])
	}
	src, _ := netip.AddrFromSlice(oh[8:24])
	dst, _ := netip.AddrFromSlice(oh[24:40])
	if src != cfg.UnderlayIP6 || dst != tun.Remote {
		t.Errorf("outer %v -> %v, want %v -> %v", src, dst, cfg.UnderlayIP6, tun.Remote)
	}

	// UDP: ports, length, and a valid checksum over the whole datagram.
	udp := out[off6UDP:]
	if be16(udp[2:]) != cfg.Port {
		t.Errorf("UDP destination port %d, want %d", be16(udp[2:]), cfg.Port)
	}
	if sp := be16(udp); sp < cfg.SrcPortMin || sp >= cfg.SrcPortMax {
		t.Errorf("UDP source port %d outside [%d, %d)", sp, cfg.SrcPortMin, cfg.SrcPortMax)
	}
	if int(be16(udp[4:])) != len(out)-54 {
		t.Errorf("UDP length %d, want %d", be16(udp[4:]), len(out)-54)
	}
	if c := be16(udp[6:]); c == 0 || udp6Sum(src, dst, udp) != 0 {
		t.Errorf("UDP checksum %#04x invalid (a receiver with udp6zerocsumrx off drops it)", c)
	}

	// VXLAN and inner Ethernet.
	vh := out[off6VXLAN : off6VXLAN+8]
	if !bytes.Equal(vh, []byte{0x08, 0, 0, 0, byte(tun.VNI >> 16), byte(tun.VNI >> 8), byte(tun.VNI), 0}) {
		t.Errorf("VXLAN header %x, want flags 08 and VNI %#x", vh, tun.VNI)
	}
	hexDiff(t, "inner Ethernet header", out[off6InnerEth:off6InnerIP], ethHdr(tun.VtepMAC, cfg.VtepMAC, innerType))

	want := innerIP
	switch {
	case forwarded && inner6:
		want = hopDecremented(innerIP)
	case forwarded:
		want = decremented(t, innerIP)
	}
	hexDiff(t, "inner packet", out[off6InnerIP:], want)
}

func TestFromPodEncap6(t *testing.T) {
	for _, port := range []uint16{8472, 4789} {
		for _, c := range []struct {
			name string
			tun  weftmaps.Tunnel
			dst  netip.Addr
			p    pkt
		}{
			{"tcp", peerE, remotePodE, pkt{}},
			{"udp", peerE, remotePodE, pkt{proto: layers.IPProtocolUDP}},
			{"icmp", peerE, remotePodE, pkt{proto: layers.IPProtocolICMPv4}},
			{"odd length", peerE, remotePodE, pkt{size: 20 + 20 + 33}},
			{"tunnel VNI", peerF, remotePodF, pkt{}},
			{"ECN not-ECT, DSCP EF", peerE, remotePodE, pkt{tos: 0xb8}},
			{"ECN ECT(1)", peerE, remotePodE, pkt{tos: 0x01}},
			{"ECN ECT(0)", peerE, remotePodE, pkt{tos: 0x02}},
			{"ECN CE", peerE, remotePodE, pkt{tos: 0x03}},
			{"ECN CE with DSCP", peerE, remotePodE, pkt{tos: 0xbb}},
			{"TTL 2", peerE, remotePodE, pkt{ttl: 2}},
			{"DF, exactly the pod MTU over IPv6", peerE, remotePodE, pkt{df: true, size: 1500 - 70}},
			{"DF ICMP, exactly the pod MTU", peerE, remotePodE, pkt{df: true, proto: layers.IPProtocolICMPv4, size: 1500 - 70}},
		} {
			t.Run(c.name+"/port "+strconv.Itoa(int(port)), func(t *testing.T) {
				e := newEnv6(t)
				cfg := config6()
				cfg.Port = port
				e.setConfig(cfg)
				c.p.dst = c.dst
				in := podFrame(t, pod1, c.p)
				r := e.run("from_pod", in)
				r.check(t, tcActRedirect, counters("encap"))
				checkEncap6(t, cfg, c.tun, in[14:], r.out, true)
				checkPeerTx(t, e, c.tun.Remote, 1)
			})
		}
	}
}

// Many payloads: the LCO sum must equal the full checksum whatever the bytes.
func TestFromPodEncap6ChecksumManyPayloads(t *testing.T) {
	e := newEnv6(t)
	for i := 0; i < 200; i++ {
		// 46 bytes at least: gopacket pads shorter frames (which the kernel path takes).
		p := pkt{dst: remotePodE, sport: uint16(1000 + i*37), dport: uint16(i * 101), size: 46 + i*7%1380, tos: uint8(i)}
		if i%3 == 1 {
			p.proto = layers.IPProtocolUDP
		}
		in := podFrame(t, pod1, p)
		r := e.run("from_pod", in)
		if r.verdict != tcActRedirect {
			t.Fatalf("payload %d: verdict %d, counters %v", i, r.verdict, r.delta)
		}
		src, _ := netip.AddrFromSlice(r.out[off6IP+8 : off6IP+24])
		dst, _ := netip.AddrFromSlice(r.out[off6IP+24 : off6IP+40])
		if udp6Sum(src, dst, r.out[off6UDP:]) != 0 {
			t.Fatalf("payload %d (%d bytes): UDP checksum %#04x invalid", i, len(in), be16(r.out[off6UDP+6:]))
		}
	}
}

// from_host (weft0) encapsulates over IPv6 the same way, without TTL - 1.
func TestFromHostEncap6(t *testing.T) {
	e := newEnv6(t)
	in := ether(t, localVtep, mustMAC("aa:bb:cc:dd:ee:ff"), layers.EthernetTypeIPv4,
		ipv4(t, pkt{src: hostIP, dst: remotePodE}))
	r := e.run("from_host", in)
	r.check(t, tcActRedirect, counters("encap_host"))
	checkEncap6(t, e.cfg, peerE, in[14:], r.out, false)
}

// Packets the LCO sum does not cover, and GSO packets (one checksum field
// for every segment), go to the kernel's vxlan driver on weftgro0, which
// checksums them; without weftgro0 they are dropped and counted.
func TestFromPodEncap6NeedsKernel(t *testing.T) {
	// From the host (weft0): the pod path sends fragments and SCTP to the
	// host's conntrack first (ctgate.h); the encapsulation is the same.
	host := func(p pkt) []byte {
		p.src, p.dst = hostIP, remotePodE
		return ether(t, localVtep, mustMAC("aa:bb:cc:dd:ee:ff"), layers.EthernetTypeIPv4, ipv4(t, p))
	}
	udpNoCsum := func() []byte {
		b := host(pkt{proto: layers.IPProtocolUDP})
		b[14+20+6], b[14+20+7] = 0, 0
		return b
	}
	for _, c := range []struct {
		name  string
		frame []byte
		opts  []runOpt
	}{
		{"TCP GSO", host(pkt{df: true, size: 20 + 20 + 2*1000}), []runOpt{withGSO(1000, 2)}},
		{"UDP without checksum", udpNoCsum(), nil},
		{"first fragment", host(pkt{proto: layers.IPProtocolUDP, mf: true}), nil},
		{"later fragment", host(pkt{proto: layers.IPProtocolUDP, fragOff: 10}), nil},
		{"SCTP", host(pkt{proto: layers.IPProtocolSCTP}), nil},
		{"Ethernet padding", host(pkt{proto: layers.IPProtocolICMPv4, size: 28}), nil}, // gopacket pads to 60 bytes
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv6(t)
			r := e.run("from_host", c.frame, c.opts...)
			r.check(t, tcActShot, counters("drop_outer6_needs_kernel"))

			cfg := config6()
			cfg.GROIfIndex = 9
			e.setConfig(cfg)
			r = e.run("from_host", c.frame, c.opts...)
			r.check(t, tcActRedirect, counters("encap_kernel"))
			want := append(ethHdr(peerE.VtepMAC, localVtep, layers.EthernetTypeIPv4), c.frame[14:]...)
			hexDiff(t, "frame handed to weftgro0", r.out[:len(want)], want)
			checkPeerTx(t, e, peerE.Remote, 1)
		})
	}
	// And from a pod: TTL - 1 before the hand-over.
	e := newEnv6(t)
	cfg := config6()
	cfg.GROIfIndex = 9
	e.setConfig(cfg)
	in := podFrame(t, pod1, pkt{dst: remotePodE, df: true, size: 20 + 20 + 2*1000})
	r := e.run("from_pod", in, withGSO(1000, 2))
	r.check(t, tcActRedirect, counters("encap_kernel"))
	want := append(ethHdr(peerE.VtepMAC, localVtep, layers.EthernetTypeIPv4), decremented(t, in[14:])...)
	hexDiff(t, "pod frame handed to weftgro0", r.out[:len(want)], want)
}

// A tunnel over IPv6 on a node without an IPv6 underlay address.
func TestFromPodEncap6NoSource(t *testing.T) {
	e := newEnv6(t)
	e.setConfig(defaultConfig())
	r := e.run("from_pod", podFrame(t, pod1, pkt{dst: remotePodE}))
	r.check(t, tcActShot, counters("drop_no_underlay6"))
	// IPv4 tunnels are not affected.
	r = e.run("from_pod", podFrame(t, pod1, pkt{dst: remotePodB}))
	r.check(t, tcActRedirect, counters("encap"))
}

// The MTU over IPv6 is the underlay's minus 70, in every gate.
func TestFromPodMTU6(t *testing.T) {
	for _, c := range []struct {
		name    string
		p       pkt
		gso     uint32
		verdict uint32
		counter string
	}{
		{"DF ICMP 1 byte over: frag-needed", pkt{dst: remotePodE, df: true, proto: layers.IPProtocolICMPv4, size: 1431}, 0, tcActRedirect, "icmp_frag_needed"},
		{"DF TCP 1 byte over: the kernel answers", pkt{dst: remotePodE, df: true, size: 1431}, 0, tcActOK, "pass_mtu"},
		{"no DF 1 byte over: the kernel fragments", pkt{dst: remotePodE, size: 1431}, 0, tcActOK, "pass_mtu"},
		{"GSO segments 1 byte over", pkt{dst: remotePodE, df: true, size: 20 + 20 + 2*1391}, 1391, tcActOK, "pass_mtu"},
		{"GSO segments fit", pkt{dst: remotePodE, df: true, size: 20 + 20 + 2*1390}, 1390, tcActShot, "drop_outer6_needs_kernel"},
		{"over IPv4 the same size fits", pkt{dst: remotePodB, df: true, size: 1431}, 0, tcActRedirect, "encap"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv6(t)
			var opts []runOpt
			if c.gso != 0 {
				opts = append(opts, withGSO(c.gso, 2))
			}
			in := podFrame(t, pod1, c.p)
			r := e.run("from_pod", in, opts...)
			r.check(t, c.verdict, counters(c.counter))
			if c.counter == "icmp_frag_needed" {
				icmp := r.out[14+20:]
				if icmp[0] != 3 || icmp[1] != 4 || be16(icmp[6:]) != 1500-70 {
					t.Errorf("ICMP type %d code %d MTU %d, want 3/4 and %d", icmp[0], icmp[1], be16(icmp[6:]), 1500-70)
				}
			}
		})
	}
}

// What A encapsulates over IPv6, B (whose tunnel to A is IPv6) decapsulates
// back to the identical packet, in tc and in XDP.
func TestEncapDecapRoundTrip6(t *testing.T) {
	a := newEnv6(t)
	in := podFrame(t, pod1, pkt{dst: remotePodE, tos: 0x02, size: 900})
	enc := a.run("from_pod", in)
	enc.check(t, tcActRedirect, counters("encap"))

	b := newBareEnv(t)
	bcfg := config6()
	bcfg.UnderlayIP6, bcfg.UnderlayMAC, bcfg.VtepMAC = peerE.Remote, peerEMAC, peerE.VtepMAC
	bcfg.UnderlayIP = netip.MustParseAddr("192.168.8.5")
	b.setConfig(bcfg)
	podOnE := weftmaps.Endpoint{IP: remotePodE, IfIndex: 9, MAC: mustMAC("0a:58:0a:f4:05:07"), HostMAC: mustMAC("ee:00:00:00:05:07")}
	if err := b.m.Endpoints.Put(podOnE); err != nil {
		t.Fatal(err)
	}
	if err := b.m.Tunnels.Put(weftmaps.Tunnel{Subnet: netip.MustParsePrefix("10.244.0.0/24"), Remote: underlayIP6,
		VtepMAC: localVtep, VNI: 1, Mode: weftmaps.ModeVXLAN}); err != nil {
		t.Fatal(err)
	}
	dec := b.run("from_underlay", enc.out)
	dec.check(t, tcActRedirect, counters("decap", "deliver"))
	want := append(ethHdr(podOnE.MAC, podOnE.HostMAC, layers.EthernetTypeIPv4), decremented(t, decremented(t, in[14:]))...)
	hexDiff(t, "delivered frame", dec.out, want)

	x := b.run("from_underlay_xdp", enc.out)
	x.check(t, xdpPass, counters("decap"))
	hexDiff(t, "XDP-decapsulated frame", x.out[14:], decremented(t, in[14:]))
}

// ---- receive ----

// mutate6 changes a copy of frame; fixCsum recomputes the outer UDP
// checksum afterwards, so that a frame is wrong in one way only.
func mutate6(frame []byte, fixCsum bool, f func(b []byte)) []byte {
	b := slices.Clone(frame)
	f(b)
	if fixCsum {
		setUDP6Csum(b)
	}
	return b
}

// set6Lengths makes the payload and UDP lengths describe a frame cut short on purpose.
func set6Lengths(b []byte) {
	put16(b[off6IP+4:], uint16(len(b)-54))
	if len(b) >= off6UDP+8 {
		put16(b[off6UDP+4:], uint16(len(b)-54))
	}
}

// withExt6 inserts raw extension headers after the outer IPv6 header: the
// IPv6 next header becomes first, the last header's next header field UDP.
func withExt6(frame []byte, first uint8, ext []byte) []byte {
	b := slices.Concat(frame[:off6UDP], ext, frame[off6UDP:])
	b[off6IP+6] = first
	put16(b[off6IP+4:], be16(b[off6IP+4:])+uint16(len(ext)))
	return b
}

// The outer IPv6 frames both receive programs see, and what they must make
// of each (want as in underlayCase; pass_outer6_csum passes untouched and
// is counted by both).
func underlay6Cases(t testing.TB) []underlayCase {
	valid := validVX6(t, pkt{})
	vx := func(f func(v *vx6)) []byte {
		v := defaultVX6(innerFromE(t, pkt{}))
		f(&v)
		return vxlan6Frame(t, v)
	}
	fragHdr := func(off uint16, more bool) []byte {
		h := []byte{17, 0, 0, 0, 0, 0, 0x12, 0x34}
		fo := off << 3
		if more {
			fo |= 1
		}
		put16(h[2:], fo)
		return h
	}
	cs := []underlayCase{
		{"valid", valid, "deliver"},
		{"valid UDP", validVX6(t, pkt{proto: layers.IPProtocolUDP}), "deliver"},
		{"valid ICMP", validVX6(t, pkt{proto: layers.IPProtocolICMPv4}), "deliver"},
		{"valid, checksum sent as 0xffff", func() []byte {
			// Find a source port whose checksum computes to 0.
			for sp := 1; sp < 65536; sp++ {
				b := vx(func(v *vx6) { v.sport = uint16(sp) })
				if be16(b[off6UDP+6:]) == 0xffff {
					return b
				}
			}
			t.Fatal("no source port gives checksum 0xffff")
			return nil
		}(), "deliver"},
		{"valid, for the host", validVX6(t, pkt{dst: netip.MustParseAddr("10.244.0.99")}), "to_host"},
		{"UDP checksum zero", mutate6(valid, false, func(b []byte) { b[off6UDP+6], b[off6UDP+7] = 0, 0 }), "drop_outer6_zero_csum"},
		{"UDP checksum wrong", mutate6(valid, false, func(b []byte) { b[off6UDP+6] ^= 0x40 }), "pass_outer6_csum"},
		// The outer sum covers the headers and trusts the inner checksum for
		// the rest (outer6.h): a corrupted inner payload is the pod's TCP's to
		// drop, a corrupted header ours to leave to the kernel.
		{"inner payload corrupted", mutate6(valid, false, func(b []byte) { b[len(b)-1] ^= 0x01 }), "deliver"},
		{"inner header corrupted", mutate6(valid, false, func(b []byte) { b[off6InnerIP+8]-- }), "pass_outer6_csum"},
		{"VXLAN reserved byte corrupted", mutate6(valid, false, func(b []byte) { b[off6VXLAN+1] ^= 0x01 }), "pass_outer6_csum"},
		{"outer source corrupted into another peer", mutate6(valid, false, func(b []byte) { b[off6IP+23] = 6 }), "drop_unknown_peer"},
		{"inner UDP without checksum", mutate6(validVX6(t, pkt{proto: layers.IPProtocolUDP}), true,
			func(b []byte) { b[off6InnerIP+26], b[off6InnerIP+27] = 0, 0 }), "pass_outer6_csum"},
		{"inner fragment", validVX6(t, pkt{proto: layers.IPProtocolUDP, mf: true}), "pass_outer6_csum"},
		{"inner SCTP", validVX6(t, pkt{proto: layers.IPProtocolSCTP}), "pass_outer6_csum"},
		{"payload length beyond the frame", mutate6(valid, true, func(b []byte) { put16(b[off6IP+4:], be16(b[off6IP+4:])+1) }), "drop_outer_length"},
		{"payload length 0 (jumbogram)", mutate6(valid, true, func(b []byte) { put16(b[off6IP+4:], 0) }), "drop_outer_length"},
		{"UDP length differs from payload length", mutate6(valid, true, func(b []byte) { put16(b[off6UDP+4:], be16(b[off6UDP+4:])-1) }), "drop_outer_length"},
		{"both lengths short of the frame", mutate6(valid, true, func(b []byte) {
			put16(b[off6IP+4:], be16(b[off6IP+4:])-4)
			put16(b[off6UDP+4:], be16(b[off6UDP+4:])-4)
		}), "drop_inner_malformed"},
		{"VXLAN without I flag", mutate6(valid, true, func(b []byte) { b[off6VXLAN] = 0 }), "drop_vxlan_flags"},
		{"other VNI", vx(func(v *vx6) { v.vni = 7 }), "pass_other_vni"},
		{"other port", vx(func(v *vx6) { v.dport = 4789 }), "pass_underlay"},
		{"to another address", vx(func(v *vx6) { v.outerDst = netip.MustParseAddr("fd00:8::99") }), "pass_underlay"},
		{"from an address that is not the inner source's peer", vx(func(v *vx6) { v.outerSrc = netip.MustParseAddr("fd00:8::66") }), "drop_unknown_peer"},
		{"inner source of an IPv4 tunnel's subnet", vx(func(v *vx6) { v.inner = innerFromE(t, pkt{src: remoteSrcB}) }), "drop_unknown_peer"},
		{"inner source no tunnel covers", vx(func(v *vx6) { v.inner = innerFromE(t, pkt{src: netip.MustParseAddr("10.9.9.9")}) }), "drop_unknown_source"},
		{"inner source of peer F from peer E", vx(func(v *vx6) { v.inner = innerFromE(t, pkt{src: remotePodF}) }), "drop_unknown_peer"},
		{"inner not IPv4", mutate6(valid, true, func(b []byte) { put16(b[off6InnerEth+12:], 0x0806) }), "drop_inner_not_ipv4"},
		{"outer CE over inner not-ECT", vx(func(v *vx6) { v.tclass = 0x03 }), "drop_ecn_not_ect"},
		{"hop-by-hop options before UDP", withExt6(valid, 0, []byte{17, 0, 1, 4, 0, 0, 0, 0}), "pass_outer6_exthdr"},
		{"destination and routing headers before UDP", withExt6(valid, 60, []byte{43, 0, 1, 4, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0}), "pass_outer6_exthdr"},
		{"hop-by-hop options before TCP", func() []byte {
			b := withExt6(valid, 0, []byte{17, 0, 1, 4, 0, 0, 0, 0})
			b[off6UDP] = 6
			return b
		}(), "pass_underlay"},
		{"first fragment of VXLAN", withExt6(valid, 44, fragHdr(0, true)), "pass_fragment"},
		{"later fragment", withExt6(valid, 44, fragHdr(100, false)), "pass_fragment"},
		{"first fragment to another port", withExt6(vx(func(v *vx6) { v.dport = 53 }), 44, fragHdr(0, true)), "pass_underlay"},
		{"no next header", mutate6(valid, false, func(b []byte) { b[off6IP+6] = 59 }), "pass_underlay"},
		{"not version 6", mutate6(valid, false, func(b []byte) { b[off6IP] = 0x40 }), "pass_underlay"},
	}
	for _, cut := range []struct {
		at   int
		what string
		want string
	}{
		{off6IP + 39, "part of the IPv6 header", "pass_underlay"},
		{off6UDP + 3, "part of the UDP header", "pass_underlay"},
		{off6VXLAN, "no VXLAN header", "drop_short"},
		{off6InnerEth + 13, "part of the inner Ethernet header", "drop_short"},
		{off6InnerIP + 19, "part of the inner IPv4 header", "drop_short"},
	} {
		cs = append(cs, underlayCase{"short: " + cut.what, mutate6(valid[:cut.at], false, set6Lengths), cut.want})
	}
	return cs
}

func TestFromUnderlay6(t *testing.T) {
	for _, c := range underlay6Cases(t) {
		t.Run(c.name, func(t *testing.T) {
			t.Run("tc", func(t *testing.T) {
				if !tcRunnable(c.frame) {
					t.Skipf("Program.Run refuses a %d-byte IPv6 frame for tc; covered by XDP", len(c.frame))
				}
				checkUnderlay6TC(t, newEnv6(t), c)
			})
			t.Run("xdp", func(t *testing.T) { checkUnderlay6XDP(t, newEnv6(t), c) })
		})
	}
}

func outerSrc6(in []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(in[off6IP+8 : off6IP+24])
	return a
}

func checkUnderlay6TC(t *testing.T, e *env, c underlayCase) {
	t.Helper()
	r := e.run("from_underlay", c.frame)
	in := c.frame
	switch {
	case c.want == "deliver":
		r.check(t, tcActRedirect, counters("decap", "deliver"))
		ep, ok := endpointFor(netip.AddrFrom4([4]byte(in[off6InnerIP+16 : off6InnerIP+20])))
		if !ok {
			t.Fatalf("test bug: no endpoint for the inner destination")
		}
		want := append(ethHdr(ep.MAC, ep.HostMAC, layers.EthernetTypeIPv4), decremented(t, in[off6InnerIP:])...)
		hexDiff(t, "delivered frame", r.out, want)
		checkPeerRx(t, e, outerSrc6(in))
	case c.want == "to_host":
		r.check(t, tcActRedirect, counters("decap", "to_host"))
		want := append(ethHdr(localVtep, in[6:12], layers.EthernetTypeIPv4), in[off6InnerIP:]...)
		hexDiff(t, "frame for the host", r.out, want)
	case strings.HasPrefix(c.want, "drop_"):
		r.check(t, tcActShot, counters(c.want))
	default:
		r.check(t, tcActOK, counters(c.want))
		r.checkUnchanged(t, in)
	}
}

func checkUnderlay6XDP(t *testing.T, e *env, c underlayCase) {
	t.Helper()
	r := e.run("from_underlay_xdp", c.frame)
	in := c.frame
	switch {
	case c.want == "deliver" || c.want == "to_host":
		r.check(t, xdpPass, counters("decap"))
		want := append(ethHdr(underlayMAC, in[6:12], layers.EthernetTypeIPv4), in[off6InnerIP:]...)
		hexDiff(t, "decapsulated frame", r.out, want)
		if len(r.meta) != 4 || binary.NativeEndian.Uint32(r.meta) != metaDecapped {
			t.Errorf("metadata %x, want the WEFT_META_DECAPPED tag", r.meta)
		}
		checkPeerRx(t, e, outerSrc6(in))
	case c.want == "pass_underlay":
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
		if len(r.meta) != 4 || binary.NativeEndian.Uint32(r.meta) != metaPassed {
			t.Errorf("metadata %x, want the WEFT_META_PASSED tag", r.meta)
		}
	}
}

// RFC 6040 from the outer traffic class: CE onto an ECT inner header.
func TestFromUnderlay6ECN(t *testing.T) {
	v := defaultVX6(innerFromE(t, pkt{tos: 0x02}))
	v.tclass = 0x03 | 0xb8 // CE, and a DSCP that must not leak inward
	in := vxlan6Frame(t, v)
	e := newEnv6(t)
	r := e.run("from_underlay", in)
	r.check(t, tcActRedirect, counters("decap", "deliver", "ecn_ce"))
	inner := slices.Clone(in[off6InnerIP:])
	inner[1] |= 0x03
	setIPv4Csum(inner)
	hexDiff(t, "delivered inner packet", r.out[14:], decremented(t, inner))

	x := newEnv6(t).run("from_underlay_xdp", in)
	x.check(t, xdpPass, counters("decap", "ecn_ce"))
	hexDiff(t, "XDP-decapsulated inner packet", x.out[14:], inner)
}

// A GRO train (gso_size set) was checksummed by GRO, which merges only
// verified packets and leaves the merged header's checksum field in its
// partial form: it is not checked again.
func TestFromUnderlay6Aggregated(t *testing.T) {
	in := mutate6(validVX6(t, pkt{size: 20 + 20 + 2*700}), false, func(b []byte) { b[off6UDP+6] ^= 0x40 })
	e := newEnv6(t)
	r := e.run("from_underlay", in, withGSO(700, 2))
	if r.delta["decap"] != 1 || r.delta["pass_outer6_csum"] != 0 {
		t.Errorf("counters %v, want decap (the checksum not judged again)", r.delta)
	}
}

// A node without an IPv6 underlay address takes no IPv6 VXLAN, even to ::.
func TestFromUnderlay6WithoutAddress(t *testing.T) {
	e := newEnv6(t)
	e.setConfig(defaultConfig())
	for _, dst := range []netip.Addr{underlayIP6, netip.IPv6Unspecified()} {
		v := defaultVX6(innerFromE(t, pkt{}))
		v.outerDst = dst
		checkUnderlay6TC(t, e, underlayCase{"to " + dst.String(), vxlan6Frame(t, v), "pass_underlay"})
	}
}

// DirectRouting to a peer whose underlay address is IPv6: no encapsulation,
// the IPv4 packet goes to the peer's IPv6 neighbour entry
// (bpf_redirect_neigh with an IPv6 next hop); on receive, its L2 sender must
// be that neighbour.
func TestDirect6(t *testing.T) {
	e := newEnv6(t)
	in := podFrame(t, pod1, pkt{dst: remotePodG})
	r := e.run("from_pod", in)
	r.check(t, tcActRedirect, counters("direct"))
	hexDiff(t, "routed packet", r.out[14:], decremented(t, in[14:]))
	checkPeerTx(t, e, peerG.Remote, 1)

	plain := func(src net.HardwareAddr) []byte {
		return ether(t, underlayMAC, src, layers.EthernetTypeIPv4,
			ipv4(t, pkt{src: netip.MustParseAddr("10.244.7.5"), dst: pod2.IP, proto: layers.IPProtocolUDP}))
	}
	r = e.run("from_underlay", plain(peerGMAC))
	r.check(t, tcActRedirect, counters("direct_rx"))
	r = e.run("from_underlay", plain(peerEMAC))
	r.check(t, tcActShot, counters("drop_direct_peer"))
}

// IPv6 routers do not fragment: a hop with a smaller MTU answers Packet Too
// Big, and the kernel keeps the path MTU as a route exception. A packet
// whose outer IPv6 header would exceed the path's MTU (here a /128 route
// with MTU 1400 to peer H) goes to weftgro0's vxlan driver, which honours
// it; what fits, and everything to other peers, stays in BPF.
func TestFromPodEncap6PathMTU(t *testing.T) {
	peerH := weftmaps.Tunnel{Subnet: netip.MustParsePrefix("10.244.8.0/24"), Remote: netip.MustParseAddr("fd00:8::8"),
		VtepMAC: mustMAC("8e:00:00:00:00:08"), VNI: 1, Mode: weftmaps.ModeVXLAN}
	ul, err := netlink.LinkByIndex(int(underlayIfIndex))
	if err != nil {
		t.Fatal(err)
	}
	// A locked route MTU stands in for the exception a Packet Too Big would
	// leave (ip6_mtu_from_fib6 reads either; an unlocked route MTU it ignores).
	route := &netlink.Route{LinkIndex: ul.Attrs().Index, Dst: &net.IPNet{IP: peerH.Remote.AsSlice(), Mask: net.CIDRMask(128, 128)},
		MTU: 1400, MTULock: true}
	if err := netlink.RouteReplace(route); err != nil {
		t.Fatalf("route with MTU 1400: %v", err)
	}
	t.Cleanup(func() { netlink.RouteDel(route) })
	e := newEnv6(t)
	cfg := e.cfg
	cfg.GROIfIndex = 9
	e.setConfig(cfg)
	if err := e.m.Tunnels.Put(peerH); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		dst     netip.Addr
		size    int
		counter string
	}{
		{"fits the 1400-byte path", netip.MustParseAddr("10.244.8.7"), 1400 - 70, "encap"},
		{"1 byte over the path MTU", netip.MustParseAddr("10.244.8.7"), 1400 - 70 + 1, "encap_kernel"},
		{"full size to a peer without the exception", remotePodE, 1500 - 70, "encap"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := e.run("from_pod", podFrame(t, pod1, pkt{dst: c.dst, proto: layers.IPProtocolUDP, size: c.size}))
			r.check(t, tcActRedirect, counters(c.counter))
		})
	}
}
