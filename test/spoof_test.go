package test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/test/lab"
	"github.com/weftnet/weft/test/topo"
)

// sendRaw writes Ethernet frames out of a pod's eth0 through a packet
// socket: what a pod with CAP_NET_RAW can always do, whatever its
// addresses and routes say.
func sendRaw(t *testing.T, pod *topo.Pod, frames ...[]byte) {
	t.Helper()
	sendRawIn(t, pod.NSPath, "eth0", frames...)
}

// sendRawIn writes frames out of ifName in the namespace at nsPath.
func sendRawIn(t *testing.T, nsPath, ifName string, frames ...[]byte) {
	t.Helper()
	err := topo.Do(nsPath, func() error {
		l, err := netlink.LinkByName(ifName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Halen: 6}
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send raw frames from %s in %s: %v", ifName, nsPath, err)
	}
}

// podMACs returns a pod's eth0 MAC and its gateway's (the host-side veth).
func podMACs(t *testing.T, pod *topo.Pod, node *lab.Node) (mac, gw net.HardwareAddr) {
	t.Helper()
	if err := topo.Do(pod.NSPath, func() error {
		l, err := netlink.LinkByName("eth0")
		if err == nil {
			mac = l.Attrs().HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := node.Topo.Do(func() error {
		l, err := netlink.LinkByName(pod.HostIf)
		if err == nil {
			gw = l.Attrs().HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return mac, gw
}

func udpFrame(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, dport uint16, payload string) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func arpFrame(t *testing.T, op uint16, ethSrc, sha net.HardwareAddr, spa netip.Addr, tpa netip.Addr) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{},
		&layers.Ethernet{SrcMAC: ethSrc, DstMAC: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: op, SourceHwAddress: sha, SourceProtAddress: spa.AsSlice(), DstHwAddress: make([]byte, 6), DstProtAddress: tpa.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// received counts the datagrams a UDP socket gets until quiet for 300 ms.
func received(c *net.UDPConn) (n int, payloads []string) {
	buf := make([]byte, 256)
	for {
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		m, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return n, payloads
		}
		n++
		payloads = append(payloads, string(buf[:m]))
	}
}

// TestPodSpoofing: a pod that forges its source address (another pod on
// its node, a pod on another node, an address outside its node's subnet)
// has every such packet dropped and counted (drop_pod_spoof), whatever the
// destination; ARP naming another pod as sender is dropped and counted
// (drop_arp_spoof) and teaches the node nothing. The same raw sender with
// the pod's own address gets through, so the drops are the check's doing.
func TestPodSpoofing(t *testing.T) {
	c := newLab(t, "")
	n1 := mustAddWeftNode(t, c, "n1")
	n2 := mustAddWeftNode(t, c, "n2")
	for _, p := range []struct {
		n    *lab.Node
		name string
	}{{n1, "attacker"}, {n1, "victim"}, {n2, "remote"}} {
		if _, err := c.AddPod(p.n, p.name); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*lab.Node{n1, n2} {
		waitFor(t, 10*time.Second, func() bool { ts, _ := n.Tunnels(); return len(ts) == 1 }, "%s has 1 tunnel", n.Name)
	}
	attacker, victim, remote := n1.Pods[0], n1.Pods[1], n2.Pods[0]
	mac, gw := podMACs(t, attacker, n1)

	targets := []*topo.Pod{victim, remote}
	listeners := map[*topo.Pod]*net.UDPConn{}
	for _, p := range targets {
		l, err := udpConnIn(p.NSPath, netip.AddrPortFrom(p.IP, 7002))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		listeners[p] = l
	}

	t.Run("OwnAddressGetsThrough", func(t *testing.T) {
		for _, p := range targets {
			sendRaw(t, attacker, udpFrame(t, mac, gw, attacker.IP, p.IP, 7002, "legit"))
			if n, _ := received(listeners[p]); n != 1 {
				t.Errorf("%s got %d datagrams from the raw sender with its own address, want 1", p.Name, n)
			}
		}
	})

	for _, c := range []struct {
		name string
		src  netip.Addr
	}{
		{"another pod on the node", victim.IP},
		{"a pod on another node", remote.IP},
		{"a free address in the node's subnet", addrAdd(n1.Subnet.Addr(), 200)},
		{"another subnet of the cluster", netip.MustParseAddr("10.244.250.9")},
		{"outside the cluster network", netip.MustParseAddr("192.0.2.1")},
	} {
		t.Run("Forged source "+c.name, func(t *testing.T) {
			before := counter(t, n1, "drop_pod_spoof")
			var frames [][]byte
			for i, p := range targets {
				for j := 0; j < 5; j++ {
					frames = append(frames, udpFrame(t, mac, gw, c.src, p.IP, 7002, fmt.Sprintf("forged %d/%d", i, j)))
				}
			}
			sendRaw(t, attacker, frames...)
			for _, p := range targets {
				if n, got := received(listeners[p]); n != 0 {
					t.Errorf("%s received %d forged datagrams: %q", p.Name, n, got)
				}
			}
			if d := counter(t, n1, "drop_pod_spoof") - before; d != uint64(len(frames)) {
				t.Errorf("drop_pod_spoof moved by %d, want %d", d, len(frames))
			}
		})
	}

	t.Run("ARPSpoof", func(t *testing.T) {
		before := counter(t, n1, "drop_arp_spoof")
		sendRaw(t, attacker,
			arpFrame(t, layers.ARPReply, mac, mac, victim.IP, n1.Subnet.Addr()),    // "victim is at my MAC"
			arpFrame(t, layers.ARPRequest, mac, mac, victim.IP, victim.IP),         // gratuitous, as the victim
			arpFrame(t, layers.ARPRequest, mac, mac, remote.IP, n1.Subnet.Addr()),  // as a remote pod
			arpFrame(t, layers.ARPRequest, mac, gw, attacker.IP, n1.Subnet.Addr())) // own IP, the gateway's MAC
		if d := counter(t, n1, "drop_arp_spoof") - before; d != 4 {
			t.Errorf("drop_arp_spoof moved by %d, want 4", d)
		}
		h, err := n1.Topo.Handle()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		neighs, err := h.NeighList(0, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, nb := range neighs {
			if ip, _ := netip.AddrFromSlice(nb.IP); (ip == victim.IP || ip == remote.IP) && nb.HardwareAddr.String() == mac.String() {
				t.Errorf("n1 learned %s at the attacker's MAC %s", ip, mac)
			}
		}
		// The node still reaches the victim.
		if out, err := ping(n1.Topo.NSPath, victim.IP, 1, 0); err != nil {
			t.Errorf("n1 -> victim after the ARP spoof: %v\n%s", err, out)
		}
	})
}

// TestDirectRoutingSpoof: with DirectRouting, plain packets from a peer's
// pod subnet are delivered only when they come from that peer's MAC (the
// neighbour the node learnt for the lease's public IP); another host on the
// same segment forging such a source is dropped and counted
// (drop_direct_peer), while the real peer's pods get through.
func TestDirectRoutingSpoof(t *testing.T) {
	c := newLab(t, `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472,"DirectRouting":true}}`)
	n1 := mustAddWeftNode(t, c, "n1")
	n2 := mustAddWeftNode(t, c, "n2")
	intruder, err := c.Lab.AddNode("intruder")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*lab.Node{n1, n2} {
		if _, err := c.AddPod(n, "p"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, func() bool { ts, _ := n.Tunnels(); return len(ts) == 1 }, "%s has 1 tunnel", n.Name)
	}
	victim, peerPod := n1.Pods[0], n2.Pods[0]
	l, err := udpConnIn(victim.NSPath, netip.AddrPortFrom(victim.IP, 7003))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	// The real peer's pod first: it also makes n1 learn n2's MAC.
	if out, err := ping(peerPod.NSPath, victim.IP, 1, 0); err != nil {
		t.Fatalf("direct peer's pod -> victim: %v\n%s", err, out)
	}
	if src, _ := sourceSeen(t, peerPod.NSPath, victim.NSPath, netip.AddrPortFrom(victim.IP, 7004)); src != peerPod.IP {
		t.Fatalf("direct peer's pod arrived as %s", src)
	}

	before := counter(t, n1, "drop_direct_peer")
	var frames [][]byte
	for i := 0; i < 5; i++ {
		frames = append(frames, udpFrame(t, intruder.UnderlayMAC, n1.Topo.UnderlayMAC, peerPod.IP, victim.IP, 7003, fmt.Sprintf("forged %d", i)))
	}
	sendRawIn(t, intruder.NSPath, intruder.UnderlayIf, frames...)
	if n, got := received(l); n != 0 {
		t.Errorf("victim received %d forged datagrams: %q", n, got)
	}
	if d := counter(t, n1, "drop_direct_peer") - before; d != uint64(len(frames)) {
		t.Errorf("drop_direct_peer moved by %d, want %d", d, len(frames))
	}
}
