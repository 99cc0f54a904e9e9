package bpf_test

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

var podLinkLocal = netip.MustParseAddr("fe80::858:aff:fef4:2") // pod1's EUI-64 link-local

// fixICMP6 recomputes the ICMPv6 checksum of an Ethernet + IPv6 (no extension headers) + ICMPv6 frame.
func fixICMP6(b []byte) {
	src, dst := netip.AddrFrom16([16]byte(b[14+8:14+24])), netip.AddrFrom16([16]byte(b[14+24:14+40]))
	msg := b[14+40 : 14+40+int(be16(b[14+4:]))]
	msg[2], msg[3] = 0, 0
	put16(msg[2:], icmp6Checksum(src, dst, msg))
}

// A pod's Neighbour Solicitation for its gateway (or any address but its
// own) is answered with a Neighbour Advertisement carrying the host-side
// veth's MAC, sent back into the pod; byte for byte what gopacket builds
// for that answer.
func TestFromPodND(t *testing.T) {
	for _, c := range []struct {
		name    string
		target  netip.Addr
		unicast bool // a NUD probe, to the cached MAC and the target itself
	}{
		{"gateway, multicast", gatewayIP6, false},
		{"gateway, unicast (NUD)", gatewayIP6, true},
		{"another local pod", pod2v6.IP, false},
		{"a remote pod (the pod's /64 is on-link)", remotePodB6, false},
		{"weft0's address", hostIP6, false},
		{"an address outside the cluster", netip.MustParseAddr("2001:db8::1"), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			group, groupMAC := solicitedNode(c.target)
			n := nd{ethSrc: pod1.MAC, ethDst: groupMAC, src: pod1v6.IP, dst: group, target: c.target, lladdr: pod1.MAC}
			if c.unicast {
				n.ethDst, n.dst, n.lladdr = pod1.HostMAC, c.target, nil
			}
			in := ndFrame(t, n)
			r := e.run("from_pod", in)
			r.check(t, tcActRedirect, counters("nd_reply"))
			want := ndFrame(t, nd{advert: true, ethSrc: pod1.HostMAC, ethDst: pod1.MAC, src: c.target, dst: pod1v6.IP,
				target: c.target, lladdr: pod1.HostMAC, flags: 0x80 | 0x40 | 0x20})
			hexDiff(t, "Neighbour Advertisement", r.out[:len(want)], want)
			if len(r.out) != len(want) {
				t.Errorf("answer is %d bytes, want %d", len(r.out), len(want))
			}
			if ck := icmp6Checksum(c.target, pod1v6.IP, r.out[54:]); ck != 0 {
				t.Errorf("ICMPv6 checksum does not verify (%#04x)", ck)
			}
		})
	}
}

// Linux sends NUD probes (unicast, to the cached MAC) from the link-local
// address (neigh_probe has no packet to take a source from): they are
// answered too, with the MAC the pod addressed, to its link-local address.
func TestFromPodNDProbeFromLinkLocal(t *testing.T) {
	for _, c := range []struct {
		name   string
		lladdr net.HardwareAddr
	}{
		{"with a source link-layer option", pod1.MAC},
		{"without", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			in := ndFrame(t, nd{ethSrc: pod1.MAC, ethDst: pod1.HostMAC, src: podLinkLocal, dst: gatewayIP6, target: gatewayIP6, lladdr: c.lladdr})
			r := e.run("from_pod", in)
			r.check(t, tcActRedirect, counters("nd_reply"))
			want := ndFrame(t, nd{advert: true, ethSrc: pod1.HostMAC, ethDst: pod1.MAC, src: gatewayIP6, dst: podLinkLocal,
				target: gatewayIP6, lladdr: pod1.HostMAC, flags: 0x80 | 0x40 | 0x20})
			hexDiff(t, "Neighbour Advertisement", r.out, want)
		})
	}
}

func TestFromPodNDNotAnswered(t *testing.T) {
	group, groupMAC := solicitedNode(gatewayIP6)
	ns := nd{ethSrc: pod1.MAC, ethDst: groupMAC, src: pod1v6.IP, dst: group, target: gatewayIP6, lladdr: pod1.MAC}
	valid := ndFrame(t, ns)
	with := func(f func(n *nd)) []byte {
		n := ns
		f(&n)
		return ndFrame(t, n)
	}
	ownGroup, ownGroupMAC := solicitedNode(pod1v6.IP)
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"DAD probe for its own address", with(func(n *nd) {
			n.src, n.dst, n.ethDst, n.target, n.lladdr = netip.IPv6Unspecified(), ownGroup, ownGroupMAC, pod1v6.IP, nil
		})},
		{"DAD probe for the gateway's address", with(func(n *nd) { n.src, n.lladdr = netip.IPv6Unspecified(), nil })},
		{"its own address, from its own address", with(func(n *nd) { n.target = pod1v6.IP })},
		{"multicast, from its link-local address (the kernel's)", with(func(n *nd) { n.src = podLinkLocal })},
		{"NUD probe for its own address, from its link-local address", with(func(n *nd) {
			n.src, n.ethDst, n.dst, n.target = podLinkLocal, pod1.HostMAC, pod1v6.IP, pod1v6.IP
		})},
		{"hop limit 254", with(func(n *nd) { n.hopLimit = 254 })},
		{"bad checksum", mutate(valid, false, func(b []byte) { b[14+40+2] ^= 0xff })},
		{"code 1", mutate(valid, false, func(b []byte) { b[14+40+1] = 1; fixICMP6(b) })},
		{"multicast target", with(func(n *nd) { n.target = netip.MustParseAddr("ff02::1") })},
		{"option of length 0", mutate(valid, false, func(b []byte) { b[14+40+24+1] = 0; fixICMP6(b) })},
		{"option running past the message", mutate(valid, false, func(b []byte) { b[14+40+24+1] = 2; fixICMP6(b) })},
		{"source link-layer option of 16 bytes", mutate(append(slices.Clone(valid), make([]byte, 8)...), false, func(b []byte) {
			put16(b[14+4:], 40)
			b[14+40+24+1] = 2
			fixICMP6(b)
		})},
		{"payload length beyond the frame", valid[:len(valid)-4]},
		{"message shorter than an NS", mutate(valid, false, func(b []byte) { put16(b[14+4:], 16); fixICMP6(b) })},
		{"neighbour advertisement for its own address", ndFrame(t, nd{advert: true, ethSrc: pod1.MAC, ethDst: pod1.HostMAC,
			src: pod1v6.IP, dst: netip.MustParseAddr("fe80::1"), target: pod1v6.IP, lladdr: pod1.MAC, flags: 0x60})},
		{"unsolicited advertisement from its link-local address", ndFrame(t, nd{advert: true, ethSrc: pod1.MAC, ethDst: mustMAC("33:33:00:00:00:01"),
			src: podLinkLocal, dst: netip.MustParseAddr("ff02::1"), target: pod1v6.IP, lladdr: pod1.MAC, flags: 0x20})},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.run("from_pod", c.frame)
			r.check(t, tcActOK, counters("pass_pod"))
			r.checkUnchanged(t, c.frame)
		})
	}
}

// ND naming anyone but the pod as sender never reaches the host's neighbour table.
func TestFromPodNDSpoof(t *testing.T) {
	group, groupMAC := solicitedNode(gatewayIP6)
	ns := nd{ethSrc: pod1.MAC, ethDst: groupMAC, src: pod1v6.IP, dst: group, target: gatewayIP6, lladdr: pod1.MAC}
	with := func(f func(n *nd)) []byte {
		n := ns
		f(&n)
		return ndFrame(t, n)
	}
	na := func(src, target netip.Addr, ethSrc, tlla net.HardwareAddr) []byte {
		return ndFrame(t, nd{advert: true, ethSrc: ethSrc, ethDst: pod1.HostMAC, src: src, dst: netip.MustParseAddr("fe80::1"),
			target: target, lladdr: tlla, flags: 0x60})
	}
	ra := ether(t, pod1.HostMAC, pod1.MAC, layers.EthernetTypeIPv6,
		ipv6(t, pkt6{src: podLinkLocal, dst: netip.MustParseAddr("ff02::1"), proto: layers.IPProtocolICMPv6, icmpType: 134, hopLimit: 255}))
	redirect := ether(t, pod1.HostMAC, pod1.MAC, layers.EthernetTypeIPv6,
		ipv6(t, pkt6{src: podLinkLocal, dst: netip.MustParseAddr("fe80::1"), proto: layers.IPProtocolICMPv6, icmpType: 137, hopLimit: 255}))
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"NS with another MAC in its source link-layer option", with(func(n *nd) { n.lladdr = pod2.MAC })},
		{"NS from another MAC, options agreeing", with(func(n *nd) { n.ethSrc, n.lladdr = pod2.MAC, pod2.MAC })},
		{"NS from another MAC, no option", with(func(n *nd) { n.ethSrc, n.lladdr = pod2.MAC, nil })},
		{"NS from another local pod's address", with(func(n *nd) { n.src = pod2v6.IP })},
		{"NS from a remote pod's address", with(func(n *nd) { n.src = remoteSrcB6 })},
		{"NS from the gateway's address", with(func(n *nd) { n.src = gatewayIP6 })},
		{"NS from its link-local address, another MAC in the option", with(func(n *nd) { n.src, n.lladdr = podLinkLocal, pod2.MAC })},
		{"NA for another pod's address", na(pod1v6.IP, pod2v6.IP, pod1.MAC, pod1.MAC)},
		{"NA for the gateway's address", na(pod1v6.IP, gatewayIP6, pod1.MAC, pod1.MAC)},
		{"NA with another MAC in its target link-layer option", na(pod1v6.IP, pod1v6.IP, pod1.MAC, pod2.MAC)},
		{"NA from another pod's address", na(pod2v6.IP, pod2v6.IP, pod1.MAC, pod1.MAC)},
		{"NA from its link-local address for another pod's address", na(podLinkLocal, pod2v6.IP, pod1.MAC, pod1.MAC)},
		{"NA from its link-local address, another Ethernet source", na(podLinkLocal, pod1v6.IP, pod2.MAC, nil)},
		{"router advertisement", ra},
		{"redirect", redirect},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.run("from_pod", c.frame)
			r.check(t, tcActShot, counters("drop_nd_spoof"))
		})
	}
}
