package bpf_test

// IPv6 pods over the IPv6 underlay ("v6-in-v6", flannel-v6.<VNI>'s model):
// outer6.h's encapsulation and receive checksum over an inner IPv6 packet.

import (
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"

	weftmaps "github.com/weftnet/weft/maps"
)

func TestFromPodEncap6in6(t *testing.T) {
	for _, c := range []struct {
		name string
		p    pkt6
	}{
		{"tcp", pkt6{}},
		{"udp", pkt6{proto: layers.IPProtocolUDP}},
		{"icmpv6", pkt6{proto: layers.IPProtocolICMPv6}},
		{"odd length", pkt6{size: 40 + 20 + 33}},
		{"traffic class CE with DSCP, flow label", pkt6{tc: 0xbb, flow: 0x12345}},
		{"ECT(1)", pkt6{tc: 0x01}},
		{"hop limit 2", pkt6{hopLimit: 2}},
		{"exactly the pod MTU over IPv6", pkt6{size: 1500 - 70}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv6(t)
			c.p.dst = remotePodE6
			in := podFrame6(t, pod1v6, c.p)
			r := e.run("from_pod", in)
			r.check(t, tcActRedirect, counters("encap"))
			checkEncap6(t, e.cfg, peerE6, in[14:], r.out, true)
			checkPeerTx(t, e, peerE6.Remote, 1)
		})
	}
	// What the LCO sum cannot cover goes to weftgro0, as for IPv4 pods.
	for _, c := range []struct {
		name string
		p    pkt6
		opts []runOpt
	}{
		{"fragment header", pkt6{proto: layers.IPProtocolUDP, fragment: true}, nil},
		{"GSO", pkt6{size: 40 + 20 + 2*1000}, []runOpt{withGSO(1000, 2)}},
	} {
		t.Run("needs the kernel: "+c.name, func(t *testing.T) {
			e := newEnv6(t)
			cfg := e.cfg
			cfg.GROIfIndex = 9
			e.setConfig(cfg)
			c.p.dst = remotePodE6
			r := e.run("from_pod", podFrame6(t, pod1v6, c.p), c.opts...)
			if r.delta["encap_kernel"] != 1 && r.delta["pass_conntrack"] != 1 && r.delta["pass_pod"] != 1 {
				t.Errorf("counters %v, want encap_kernel (or the kernel's own path)", r.delta)
			}
			if r.delta["encap"] != 0 {
				t.Errorf("encapsulated in BPF: %v", r.delta)
			}
		})
	}
}

// Many IPv6 payloads: the LCO sum equals the full checksum whatever the bytes.
func TestFromPodEncap6in6ChecksumManyPayloads(t *testing.T) {
	e := newEnv6(t)
	for i := 0; i < 200; i++ {
		p := pkt6{dst: remotePodE6, sport: uint16(1000 + i*37), dport: uint16(i * 101), size: 60 + i*7%1360, tc: uint8(i)}
		switch i % 3 {
		case 1:
			p.proto = layers.IPProtocolUDP
		case 2:
			p.proto = layers.IPProtocolICMPv6
		}
		r := e.run("from_pod", podFrame6(t, pod1v6, p))
		if r.delta["encap"] != 1 {
			t.Fatalf("payload %d: counters %v", i, r.delta)
		}
		src, _ := netip.AddrFromSlice(r.out[off6IP+8 : off6IP+24])
		dst, _ := netip.AddrFromSlice(r.out[off6IP+24 : off6IP+40])
		if udp6Sum(src, dst, r.out[off6UDP:]) != 0 {
			t.Fatalf("payload %d (%d bytes): UDP checksum %#04x invalid", i, len(r.out), be16(r.out[off6UDP+6:]))
		}
	}
}

// vxlan6in6Frame is peer E's VXLAN over IPv6 carrying an IPv6 packet.
func vxlan6in6Frame(t testing.TB, inner []byte, f func(b []byte)) []byte {
	v := defaultVX6(inner)
	b := vxlan6Frame(t, v)
	put16(b[off6InnerEth+12:], 0x86dd)
	if f != nil {
		f(b)
	}
	setUDP6Csum(b)
	return b
}

func innerFromE6(t testing.TB, p pkt6) []byte {
	if !p.src.IsValid() {
		p.src = remoteSrcE6
	}
	if !p.dst.IsValid() {
		p.dst = pod2v6.IP
	}
	return ipv6(t, p)
}

func TestFromUnderlay6in6(t *testing.T) {
	for _, c := range []struct {
		name  string
		frame []byte
		want  string
	}{
		{"valid TCP", vxlan6in6Frame(t, innerFromE6(t, pkt6{}), nil), "deliver"},
		{"valid UDP", vxlan6in6Frame(t, innerFromE6(t, pkt6{proto: layers.IPProtocolUDP}), nil), "deliver"},
		{"valid ICMPv6", vxlan6in6Frame(t, innerFromE6(t, pkt6{proto: layers.IPProtocolICMPv6}), nil), "deliver"},
		{"valid, for the host", vxlan6in6Frame(t, innerFromE6(t, pkt6{dst: netip.MustParseAddr("fd00:10:244::99")}), nil), "to_host"},
		{"UDP checksum wrong", func() []byte {
			b := vxlan6in6Frame(t, innerFromE6(t, pkt6{}), nil)
			b[off6UDP+6] ^= 0x10
			return b
		}(), "pass_outer6_csum"},
		{"inner fragment header", vxlan6in6Frame(t, innerFromE6(t, pkt6{proto: layers.IPProtocolUDP, fragment: true}), nil), "pass_outer6_csum"},
		{"inner source of an IPv4 underlay's subnet", vxlan6in6Frame(t, innerFromE6(t, pkt6{src: remoteSrcB6}), nil), "drop_unknown_peer"},
		// Hostile or broken frames, each with a right outer UDP checksum.
		{"inner source no tunnel covers", vxlan6in6Frame(t, innerFromE6(t, pkt6{src: netip.MustParseAddr("fd00:99::5")}), nil), "drop_unknown_source"},
		{"outer source another peer's", vxlan6in6Frame(t, innerFromE6(t, pkt6{}), func(b []byte) {
			a := peerF.Remote.As16()
			copy(b[off6IP+8:off6IP+24], a[:])
		}), "drop_unknown_peer"},
		{"outer CE over a Not-ECT inner packet", vxlan6in6Frame(t, innerFromE6(t, pkt6{}), func(b []byte) { b[off6IP+1] |= 0x30 }), "drop_ecn_not_ect"},
		{"VXLAN I flag clear", vxlan6in6Frame(t, innerFromE6(t, pkt6{}), func(b []byte) { b[off6VXLAN] = 0 }), "drop_vxlan_flags"},
		{"another VNI", vxlan6in6Frame(t, innerFromE6(t, pkt6{}), func(b []byte) { b[off6VXLAN+6] ^= 1 }), "pass_other_vni"},
		{"inner payload length past the frame", vxlan6in6Frame(t, innerFromE6(t, pkt6{}), func(b []byte) {
			put16(b[off6InnerIP+4:], be16(b[off6InnerIP+4:])+8)
		}), "drop_inner_malformed"},
		{"inner version 4 behind an IPv6 Ethernet type", vxlan6in6Frame(t, innerFromE6(t, pkt6{}), func(b []byte) { b[off6InnerIP] = 0x45 }), "drop_inner_malformed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			// FuzzDecap's reference model agrees with the table.
			refWant := c.want
			if refWant == "deliver" || refWant == "to_host" {
				refWant = "decap"
			}
			if got := newRefNode6().classify(c.frame).reason; got != refWant {
				t.Errorf("reference model: %s, the table says %s", got, refWant)
			}
			for _, prog := range []string{"from_underlay", "from_underlay_xdp"} {
				e := newEnv6(t)
				r := e.run(prog, c.frame)
				inner := c.frame[off6InnerIP:]
				switch c.want {
				case "deliver":
					if prog == "from_underlay" {
						r.check(t, tcActRedirect, counters("decap", "deliver"))
						want := append(ethHdr(pod2v6.MAC, pod2v6.HostMAC, layers.EthernetTypeIPv6), hopDecremented(inner)...)
						hexDiff(t, "delivered frame", r.out, want)
					} else {
						r.check(t, xdpPass, counters("decap"))
						hexDiff(t, "XDP-decapsulated frame", r.out, append(ethHdr(underlayMAC, c.frame[6:12], layers.EthernetTypeIPv6), inner...))
					}
					checkPeerRx(t, e, peerE6.Remote)
				case "to_host":
					if prog == "from_underlay" {
						r.check(t, tcActRedirect, counters("decap", "to_host"))
						hexDiff(t, "frame for the host", r.out, append(ethHdr(localVtep, c.frame[6:12], layers.EthernetTypeIPv6), inner...))
					} else {
						r.check(t, xdpPass, counters("decap"))
					}
				case "pass_outer6_csum", "pass_other_vni":
					want := uint32(tcActOK)
					if prog != "from_underlay" {
						want = xdpPass
					}
					r.check(t, want, counters(c.want))
				default:
					want := uint32(tcActShot)
					if prog != "from_underlay" {
						want = xdpDrop
					}
					r.check(t, want, counters(c.want))
				}
			}
		})
	}
}

// What A sends an IPv6 pod on E over IPv6, E decapsulates back, hop limit - 1 per hop.
func TestEncapDecapRoundTrip6in6(t *testing.T) {
	a := newEnv6(t)
	in := podFrame6(t, pod1v6, pkt6{dst: remotePodE6, tc: 0x02, size: 900})
	enc := a.run("from_pod", in)
	enc.check(t, tcActRedirect, counters("encap"))

	b := newBareEnv(t)
	bcfg := config6()
	bcfg.UnderlayIP6, bcfg.UnderlayMAC, bcfg.VtepMAC = peerE.Remote, peerEMAC, peerE.VtepMAC
	bcfg.UnderlayIP = netip.MustParseAddr("192.168.8.5")
	b.setConfig(bcfg)
	podOnE := weftmaps.Endpoint{IP: remotePodE6, IfIndex: 9, MAC: mustMAC("0a:58:0a:f4:05:07"), HostMAC: mustMAC("ee:00:00:00:05:07")}
	if err := b.m.Endpoints.Put(podOnE); err != nil {
		t.Fatal(err)
	}
	if err := b.m.Tunnels.Put(weftmaps.Tunnel{Subnet: netip.MustParsePrefix("fd00:10:244::/64"), Remote: underlayIP6,
		VtepMAC: localVtep, VNI: 1, Mode: weftmaps.ModeVXLAN}); err != nil {
		t.Fatal(err)
	}
	dec := b.run("from_underlay", enc.out)
	dec.check(t, tcActRedirect, counters("decap", "deliver"))
	want := append(ethHdr(podOnE.MAC, podOnE.HostMAC, layers.EthernetTypeIPv6), hopDecremented(hopDecremented(in[14:]))...)
	hexDiff(t, "delivered frame", dec.out, want)
}

// An oversize IPv6 packet toward a peer over the IPv6 underlay: the pod
// hears of underlay MTU - 70 (outer IPv6's overhead), not - 50; the host's
// own oversize packets are the kernel's to answer (weft0's route MTU).
func TestPacketTooBig6in6(t *testing.T) {
	for _, size := range []int{1500 - 70 + 1, 1500} {
		e := newEnv6(t)
		in := podFrame6(t, pod1v6, pkt6{dst: remotePodE6, size: size, proto: layers.IPProtocolICMPv6})
		r := e.run("from_pod", in)
		r.check(t, tcActRedirect, counters("packet_too_big"))
		checkPacketTooBig(t, in, r.out, 1500-70)
	}
	e := newEnv6(t)
	e.run("from_host", hostFrame6(t, pkt6{dst: remotePodE6, size: 1500 - 70 + 1, proto: layers.IPProtocolICMPv6})).
		check(t, tcActOK, counters("pass_mtu"))
}
