package bpf_test

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	weftmaps "github.com/weftnet/weft/maps"
)

// checkPacketTooBig checks an ICMPv6 Packet Too Big (RFC 4443 3.2) sent back
// to the pod that sent `in`: 1280 bytes in all (the IPv6 minimum MTU), from
// weft0's IPv6 address, quoting the first 1232 bytes of the packet.
func checkPacketTooBig(t *testing.T, in, out []byte, mtu uint32) {
	t.Helper()
	if want := 14 + 1280; len(out) != want {
		t.Fatalf("Packet Too Big frame %d bytes, want %d", len(out), want)
	}
	if !bytes.Equal(out[0:6], in[6:12]) || !bytes.Equal(out[6:12], in[0:6]) || be16(out[12:]) != 0x86dd {
		t.Errorf("Ethernet %x, want the input's addresses swapped, type IPv6", out[:14])
	}
	ip := out[14:54]
	if ip[0] != 0x60 || ip[1] != 0 || ip[2] != 0 || ip[3] != 0 {
		t.Errorf("IPv6 version/traffic class/flow label %x, want 60000000", ip[:4])
	}
	if be16(ip[4:]) != 1240 || ip[6] != 58 || ip[7] != 64 {
		t.Errorf("payload length %d, next header %d, hop limit %d; want 1240, 58, 64", be16(ip[4:]), ip[6], ip[7])
	}
	src, dst := netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	if src != hostIP6 {
		t.Errorf("source %v, want weft0's %v", src, hostIP6)
	}
	if want := netip.AddrFrom16([16]byte(in[14+8 : 14+24])); dst != want {
		t.Errorf("destination %v, want the sender %v", dst, want)
	}
	msg := out[54:]
	if msg[0] != 2 || msg[1] != 0 {
		t.Errorf("ICMPv6 type/code %d/%d, want 2/0", msg[0], msg[1])
	}
	if ck := icmp6Checksum(src, dst, msg); ck != 0 {
		t.Errorf("ICMPv6 checksum does not verify (%#04x)", ck)
	}
	if got := uint32(be16(msg[4:]))<<16 | uint32(be16(msg[6:])); got != mtu {
		t.Errorf("MTU %d, want %d", got, mtu)
	}
	hexDiff(t, "quoted packet", msg[8:], in[14:14+1232])
}

func TestFromPodPacketTooBig(t *testing.T) {
	for _, c := range []struct {
		name string
		p    pkt6
		mtu  uint32
	}{
		{"echo 1500 bytes to a VXLAN peer over IPv4", pkt6{dst: remotePodB6, size: 1500}, 1450},
		{"echo, pod MTU + 1", pkt6{dst: remotePodB6, size: 1451}, 1450},
		{"echo, hop limit 1", pkt6{dst: remotePodB6, size: 1500, hopLimit: 1}, 1450},
		{"echo reply", pkt6{dst: remotePodB6, size: 1500, icmpType: 129}, 1450},
		// Nothing is added toward a direct peer: the limit is the underlay's.
		{"echo 1501 bytes to a direct peer", pkt6{dst: remotePodC6, size: 1501}, 1500},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			c.p.proto = layers.IPProtocolICMPv6
			in := podFrame6(t, pod1v6, c.p)
			r := e.run("from_pod", in)
			r.check(t, tcActRedirect, counters("packet_too_big"))
			checkPacketTooBig(t, in, r.out, c.mtu)
		})
	}

	for _, c := range []struct {
		name    string
		p       pkt6
		verdict uint32
		counter string
	}{
		// Never about an ICMPv6 error (RFC 4443 2.4 (e)).
		{"destination unreachable", pkt6{icmpType: 1}, tcActShot, "drop_mtu_no_icmp"},
		{"packet too big", pkt6{icmpType: 2}, tcActShot, "drop_mtu_no_icmp"},
		{"time exceeded", pkt6{icmpType: 3}, tcActShot, "drop_mtu_no_icmp"},
		{"parameter problem", pkt6{icmpType: 4}, tcActShot, "drop_mtu_no_icmp"},
		// TCP and UDP may be CHECKSUM_PARTIAL: the kernel's forwarding path answers (ptb.h).
		{"TCP", pkt6{proto: layers.IPProtocolTCP}, tcActOK, "pass_mtu"},
		{"UDP", pkt6{proto: layers.IPProtocolUDP}, tcActOK, "pass_mtu"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			if c.p.proto == 0 {
				c.p.proto = layers.IPProtocolICMPv6
			}
			c.p.dst, c.p.size = remotePodB6, 1500
			in := podFrame6(t, pod1v6, c.p)
			r := e.run("from_pod", in)
			r.check(t, c.verdict, counters(c.counter))
			if c.verdict == tcActOK {
				r.checkUnchanged(t, in)
			}
		})
	}

	t.Run("without an IPv6 address on weft0 the kernel answers", func(t *testing.T) {
		e := newEnv(t)
		cfg := defaultConfig()
		cfg.HostIP6 = netip.Addr{}
		e.setConfig(cfg)
		in := podFrame6(t, pod1v6, pkt6{dst: remotePodB6, size: 1500, proto: layers.IPProtocolICMPv6})
		r := e.run("from_pod", in)
		r.check(t, tcActOK, counters("pass_mtu"))
		r.checkUnchanged(t, in)
	})

	t.Run("rate limited per source", func(t *testing.T) {
		e := newEnv(t)
		in := podFrame6(t, pod1v6, pkt6{dst: remotePodB6, size: 1500, proto: layers.IPProtocolICMPv6})
		for i := range 10 { // the burst (frag_needed.h FN_BURST)
			r := e.run("from_pod", in)
			if r.delta["packet_too_big"] != 1 {
				t.Fatalf("packet %d of the burst: counters %v, want packet_too_big", i+1, r.delta)
			}
		}
		r := e.run("from_pod", in)
		r.check(t, tcActShot, counters("drop_frag_needed_suppressed"))
		// TCP spends the same budget: the kernel is not asked either.
		r = e.run("from_pod", podFrame6(t, pod1v6, pkt6{dst: remotePodB6, size: 1500}))
		r.check(t, tcActShot, counters("drop_frag_needed_suppressed"))
		// The pod's IPv4 address has its own budget.
		r = e.run("from_pod", podFrame(t, pod1, pkt{dst: remotePodB, size: 1500, df: true, proto: layers.IPProtocolICMPv4}))
		r.check(t, tcActRedirect, counters("icmp_frag_needed"))
	})
}

// Over the IPv6 underlay a hop may be smaller than our MTU: the node learns
// it from the router's Packet Too Big (an exception route), and pods must
// hear of it from us, since the kernel's forwarding path (weft0's MTU)
// cannot. Here a route with a locked MTU stands in for the learnt exception
// (the FIB reports either; an unlocked route MTU it leaves to the device's).
func TestFromPodPacketTooBigPathMTU(t *testing.T) {
	peerE6 := weftmaps.Tunnel{Subnet: netip.MustParsePrefix("fd00:10:244:5::/64"), Remote: peerE.Remote,
		VtepMAC: peerE.VtepMAC, VNI: 1, Mode: weftmaps.ModeVXLAN}
	remotePodE6 := netip.MustParseAddr("fd00:10:244:5::7")
	env := func(t *testing.T) *env {
		e := newEnv6(t)
		if err := e.m.Tunnels.Put(peerE6); err != nil {
			t.Fatal(err)
		}
		return e
	}
	route := &netlink.Route{LinkIndex: int(underlayIfIndex), Dst: &net.IPNet{IP: peerE.Remote.AsSlice(), Mask: net.CIDRMask(128, 128)}, MTU: 1400, MTULock: true}
	if err := netlink.RouteAdd(route); err != nil {
		t.Fatalf("route with a smaller MTU toward peer E: %v", err)
	}
	t.Cleanup(func() { _ = netlink.RouteDel(route) })

	for _, c := range []struct {
		name string
		p    pkt6
	}{
		{"echo", pkt6{proto: layers.IPProtocolICMPv6, size: 1400}},
		// The kernel cannot answer this one: built here whatever the protocol.
		{"TCP", pkt6{size: 1400}},
		{"UDP, path MTU + 1", pkt6{proto: layers.IPProtocolUDP, size: 1331}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := env(t)
			c.p.dst = remotePodE6
			in := podFrame6(t, pod1v6, c.p)
			r := e.run("from_pod", in)
			r.check(t, tcActRedirect, counters("packet_too_big"))
			checkPacketTooBig(t, in, r.out, 1400-70)
		})
	}
	t.Run("exactly the path MTU is sent", func(t *testing.T) {
		e := env(t)
		r := e.run("from_pod", podFrame6(t, pod1v6, pkt6{dst: remotePodE6, proto: layers.IPProtocolUDP, size: 1330}))
		r.check(t, tcActRedirect, counters("encap"))
	})
	t.Run("never about an ICMPv6 error", func(t *testing.T) {
		e := env(t)
		r := e.run("from_pod", podFrame6(t, pod1v6, pkt6{dst: remotePodE6, proto: layers.IPProtocolICMPv6, icmpType: 1, size: 1400}))
		r.check(t, tcActShot, counters("drop_mtu_no_icmp"))
	})
	// The host's own packets get no Packet Too Big from here: like any
	// packet over the path MTU that from_pod6 does not answer, they go to
	// weftgro0's vxlan driver (outer6.h's outer6_fits_path), which signals
	// the local sender itself; without weftgro0 they are a counted drop.
	t.Run("the host's traffic goes to the kernel's vxlan driver", func(t *testing.T) {
		e := env(t)
		cfg := e.cfg
		cfg.GROIfIndex = 9
		e.setConfig(cfg)
		r := e.run("from_host", hostFrame6(t, pkt6{dst: remotePodE6, size: 1400}))
		r.check(t, tcActRedirect, counters("encap_kernel"))
		r = e.run("from_host", hostFrame6(t, pkt6{dst: remotePodE6, size: 1330}))
		r.check(t, tcActRedirect, counters("encap_host"))
	})
	t.Run("the host's traffic without weftgro0", func(t *testing.T) {
		e := env(t)
		r := e.run("from_host", hostFrame6(t, pkt6{dst: remotePodE6, size: 1400}))
		r.check(t, tcActShot, counters("drop_outer6_needs_kernel"))
	})
	t.Run("without the smaller hop it is sent", func(t *testing.T) {
		if err := netlink.RouteDel(route); err != nil {
			t.Fatal(err)
		}
		e := env(t)
		r := e.run("from_pod", podFrame6(t, pod1v6, pkt6{dst: remotePodE6, size: 1400}))
		r.check(t, tcActRedirect, counters("encap"))
	})
}

// A GSO train whose segments do not fit the smaller hop is answered too
// (Program.Run sets gso_size without gso_type: enough for the decision).
func TestFromPodPacketTooBigPathMTUGSO(t *testing.T) {
	peerE6 := weftmaps.Tunnel{Subnet: netip.MustParsePrefix("fd00:10:244:5::/64"), Remote: peerE.Remote,
		VtepMAC: peerE.VtepMAC, VNI: 1, Mode: weftmaps.ModeVXLAN}
	e := newEnv6(t)
	if err := e.m.Tunnels.Put(peerE6); err != nil {
		t.Fatal(err)
	}
	route := &netlink.Route{LinkIndex: int(underlayIfIndex), Dst: &net.IPNet{IP: peerE.Remote.AsSlice(), Mask: net.CIDRMask(128, 128)}, MTU: 1400, MTULock: true}
	if err := netlink.RouteAdd(route); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.RouteDel(route) })
	in := podFrame6(t, pod1v6, pkt6{dst: netip.MustParseAddr("fd00:10:244:5::7"), size: 40 + 20 + 2*1340})
	r := e.run("from_pod", in, withGSO(1340, 2))
	r.check(t, tcActRedirect, counters("packet_too_big"))
	checkPacketTooBig(t, in, r.out, 1400-70)
}
