package test

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/lab"
)

// TestDirectRoutingIPv6FirstPackets (issue 14): with DirectRouting on a
// dual-stack underlay, weftd keeps a kernel-managed neighbour entry for
// every direct peer's underlay address, both families, resolved before any
// traffic. So a pod's very first IPv6 packet to a new peer's pod is not
// dropped by the receiver's anti-spoof check (drop_direct_peer), which
// needs the sender's MAC: the sender's own Neighbour Solicitations come
// from its link-local address and never taught the receiver its global
// one. The check stays as strict: forged frames with the peer pod's source
// from another host are dropped. The entries go when the peer leaves, and
// --cleanup-on-exit removes a node's own.
func TestDirectRoutingIPv6FirstPackets(t *testing.T) {
	c := startLab(t, lab.Options{Network6: testNetwork6, UnderlayCIDR6: testUnderlay6,
		NetConfig: fmt.Sprintf(`{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"%s","IPv6SubnetLen":64,`+
			`"Backend":{"Type":"vxlan","VNI":1,"Port":8472,"DirectRouting":true}}`, testNetwork6)})
	// Another host on the segment, for the spoofing check below.
	intruder, err := c.Lab.AddNode("intruder")
	if err != nil {
		t.Fatal(err)
	}
	n1 := mustAddWeftNode(t, c, "n1")
	n2 := mustAddWeftNode(t, c, "n2", "--cleanup-on-exit")
	for _, n := range []*lab.Node{n1, n2} {
		if _, err := c.AddPod(n, "p"); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*lab.Node{n1, n2} {
		waitFor(t, 10*time.Second, func() bool {
			ts, _ := n.Tunnels()
			return len(ts) == 2 && ts[0].Mode == maps.ModeDirect && ts[1].Mode == maps.ModeDirect
		}, "%s has 2 direct tunnels", n.Name)
	}

	// managed returns n's underlay entry for a: whether it is managed and
	// the MAC it resolved (nil if none).
	managed := func(n *lab.Node, a netip.Addr) (bool, []byte) {
		h, err := n.Topo.Handle()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		family := netlink.FAMILY_V4
		if a.Is6() {
			family = netlink.FAMILY_V6
		}
		list, err := h.NeighList(n.Topo.UnderlayIfIndex, family)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list {
			if ip, _ := netip.AddrFromSlice(e.IP); ip.Unmap() == a {
				return e.FlagsExt&netlink.NTF_EXT_MANAGED != 0, e.HardwareAddr
			}
		}
		return false, nil
	}
	for _, pr := range [][2]*lab.Node{{n1, n2}, {n2, n1}} {
		for _, a := range []netip.Addr{pr[1].Topo.UnderlayIP, pr[1].Topo.UnderlayIP6} {
			waitFor(t, 10*time.Second, func() bool {
				m, mac := managed(pr[0], a)
				return m && bytes.Equal(mac, pr[1].Topo.UnderlayMAC)
			}, "%s holds a managed entry for %s resolved to %s", pr[0].Name, a, pr[1].Topo.UnderlayMAC)
		}
	}

	// The first packets, IPv6 first (the family that failed), each way.
	p1, p2 := n1.Pods[0], n2.Pods[0]
	for _, pr := range [][2]netip.Addr{{p1.IP6, p2.IP6}, {p1.IP, p2.IP}} {
		if out, err := ping(p1.NSPath, pr[1], 1, 0); err != nil {
			t.Errorf("first ping n1 -> %s: %v\n%s", pr[1], err, out)
		}
		if out, err := ping(p2.NSPath, pr[0], 1, 0); err != nil {
			t.Errorf("first ping n2 -> %s: %v\n%s", pr[0], err, out)
		}
	}
	for _, n := range []*lab.Node{n1, n2} {
		if d, rx := counter(t, n, "drop_direct_peer"), counter(t, n, "direct_rx"); d != 0 || rx == 0 {
			t.Errorf("%s: drop_direct_peer %d, direct_rx %d: want no drops and direct traffic", n.Name, d, rx)
		}
	}

	// Still as strict: the same source from another host on the segment
	// (not the MAC n1 resolved for n2) is dropped and counted.
	before := counter(t, n1, "drop_direct_peer")
	var frames [][]byte
	for i := range 3 {
		frames = append(frames, udp6Frame(t, intruder.UnderlayMAC, n1.Topo.UnderlayMAC, p2.IP6, p1.IP6, 7003, fmt.Sprintf("forged %d", i)))
	}
	sendRawIn(t, intruder.NSPath, intruder.UnderlayIf, frames...)
	waitFor(t, 5*time.Second, func() bool { return counter(t, n1, "drop_direct_peer")-before == uint64(len(frames)) },
		"n1 counts the %d forged IPv6 frames as drop_direct_peer", len(frames))

	// n2 leaves with --cleanup-on-exit: its lease is released, so n1 forgets
	// n2's entries; n2's teardown removed its own for n1.
	if err := stopWeftd(t, c, n2, syscall.SIGTERM); err != nil {
		t.Fatalf("weftd --cleanup-on-exit on n2: %v", err)
	}
	for _, a := range []netip.Addr{n1.Topo.UnderlayIP, n1.Topo.UnderlayIP6} {
		if m, _ := managed(n2, a); m {
			t.Errorf("n2 still holds a managed entry for %s after --cleanup-on-exit", a)
		}
	}
	for _, a := range []netip.Addr{n2.Topo.UnderlayIP, n2.Topo.UnderlayIP6} {
		waitFor(t, 10*time.Second, func() bool { m, _ := managed(n1, a); return !m },
			"n1 forgets its managed entry for %s once n2 left", a)
	}
}

// udp6Frame is udpFrame for IPv6.
func udp6Frame(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, dport uint16, payload string) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv6}, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
