package bpf_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestEncap6in4MatchesKernelVXLAN holds from_pod's v6-in-v4 output against
// what the Linux vxlan driver itself sends for the same inner frame, byte
// by byte. The reference is a kernel vxlan device in the test's private
// namespace (main_test.go) programmed as flannel programs flannel.1 (VNI 1,
// port 8472, local = the underlay address, no learning, an FDB entry for
// peer B's VtepMAC): the inner frame, as the node's stack would hand it to
// flannel.1 after routing (hop limit already decremented), is written into
// the device, and the encapsulated frame read off the far end of the
// underlay veth. Only what the sender picks freely may differ: the outer IP
// ID and the UDP source port (each from its own flow hash, both checked for
// range elsewhere), and so the outer header checksum.
func TestEncap6in4MatchesKernelVXLAN(t *testing.T) {
	vx := kernelVXLAN(t)

	for _, c := range []struct {
		name string
		p    pkt6
	}{
		{"tcp", pkt6{}},
		{"udp", pkt6{proto: layers.IPProtocolUDP, size: 1000}},
		{"icmpv6 echo", pkt6{proto: layers.IPProtocolICMPv6}},
		{"ECN ECT(0), DSCP and flow label", pkt6{tc: 0xba, flow: 0x12345}},
		{"ECN ECT(1)", pkt6{tc: 0x01}},
		{"ECN CE", pkt6{tc: 0x03}},
		{"full pod MTU", pkt6{size: 1450}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			c.p.dst = remotePodB6
			in := podFrame6(t, pod1v6, c.p)
			r := e.run("from_pod", in)
			r.check(t, tcActRedirect, counters("encap"))
			ours := r.out[:14+50+len(in)-14]

			// What the node's stack hands flannel.1 after routing the same packet.
			inner := append(ethHdr(peerB.VtepMAC, localVtep, layers.EthernetTypeIPv6), hopDecremented(in[14:])...)
			theirs := vx.encapsulate(t, inner)

			if len(ours) != len(theirs) {
				t.Fatalf("Weft sent %d bytes, the vxlan driver %d:\n ours %x\ntheirs %x", len(ours), len(theirs), ours, theirs)
			}
			// Outer Ethernet: the source is the underlay NIC in both; the
			// destination is the neighbour's (bpf_redirect_neigh fills ours).
			hexDiff(t, "outer Ethernet source and type", ours[6:14], theirs[6:14])
			o, k := ours[offOuterIP:offOuterIP+20], theirs[offOuterIP:offOuterIP+20]
			if !ipv4CsumValid(o) || !ipv4CsumValid(k) {
				t.Errorf("outer header checksums: ours valid %v, the driver's valid %v", ipv4CsumValid(o), ipv4CsumValid(k))
			}
			// Outer IPv4 but the ID and checksum: version/IHL, TOS (ECN), length, flags, TTL, protocol, addresses.
			mask := func(h []byte) []byte {
				h = append([]byte(nil), h...)
				h[4], h[5], h[10], h[11] = 0, 0, 0, 0
				return h
			}
			hexDiff(t, "outer IPv4 header (ID and checksum aside)", mask(o), mask(k))
			// UDP but the source port and checksum: destination port, length.
			hexDiff(t, "UDP destination port and length", ours[offUDP+2:offUDP+6], theirs[offUDP+2:offUDP+6])
			// The checksum: Weft sends 0, as RFC 7348 recommends over IPv4 and
			// as receivers (the vxlan driver included) accept. A vxlan device
			// created without IFLA_VXLAN_UDP_CSUM, as flannel's netlink code
			// does, asks for one on this kernel (left to the device: on a veth
			// the field still holds the pseudo-header sum when captured).
			if be16(ours[offUDP+6:]) != 0 {
				t.Errorf("Weft's UDP checksum %#04x, want 0", be16(ours[offUDP+6:]))
			}
			if ck := be16(theirs[offUDP+6:]); ck != 0 && udp4Checksum(theirs[offOuterIP:]) != 0 && ck != udp4PseudoSum(theirs[offOuterIP:]) {
				t.Errorf("the vxlan driver's UDP checksum %#04x is neither complete nor an offload seed", ck)
			}
			// VXLAN, inner Ethernet, inner packet: identical.
			hexDiff(t, "VXLAN header, inner frame", ours[offVXLAN:], theirs[offVXLAN:])
		})
	}
}

type kernelVXLANRef struct {
	tx, rx int // AF_PACKET sockets: into the vxlan device, off the underlay's far end
}

// kernelVXLAN makes the flannel-style vxlan device and the sockets around it,
// removed when the test ends.
func kernelVXLAN(t *testing.T) *kernelVXLANRef {
	t.Helper()
	ul, err := netlink.LinkByIndex(int(underlayIfIndex))
	if err != nil {
		t.Fatal(err)
	}
	// main_test.go's veth: whichever end took ifindex 2 is the underlay, the other its far end.
	farName := "ul0peer"
	if ul.Attrs().Name == "ul0peer" {
		farName = "ul0"
	}
	peer, err := netlink.LinkByName(farName)
	if err != nil {
		t.Fatal(err)
	}
	dev := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "wvxref", HardwareAddr: localVtep, MTU: 1450},
		VxlanId: 1, VtepDevIndex: ul.Attrs().Index, SrcAddr: underlayIP.AsSlice(), Port: 8472, Learning: false}
	if err := netlink.LinkAdd(dev); err != nil {
		t.Fatalf("add the reference vxlan device: %v", err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(dev) })
	if err := netlink.LinkSetUp(dev); err != nil {
		t.Fatal(err)
	}
	// flannel's FDB entry: peer B's VtepMAC lives behind its public IP.
	if err := netlink.NeighAppend(&netlink.Neigh{LinkIndex: dev.Attrs().Index, Family: unix.AF_BRIDGE,
		Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT, IP: peerB.Remote.AsSlice(), HardwareAddr: peerB.VtepMAC}); err != nil {
		t.Fatalf("FDB entry: %v", err)
	}
	// The underlay next hop, resolved (no ARP to wait for).
	nb := &netlink.Neigh{LinkIndex: ul.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: peerB.Remote.AsSlice(), HardwareAddr: peerBMAC}
	if err := netlink.NeighSet(nb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.NeighDel(nb) })

	ref := &kernelVXLANRef{tx: refPacketSocket(t, dev.Attrs().Index), rx: refPacketSocket(t, peer.Attrs().Index)}
	return ref
}

func refPacketSocket(t *testing.T, ifindex int) int {
	t.Helper()
	proto := int(refHtons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifindex}); err != nil {
		t.Fatalf("bind packet socket: %v", err)
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

func refHtons(v uint16) uint16 { return v<<8 | v>>8 }

// encapsulate writes inner into the vxlan device and returns the VXLAN
// frame that comes out of the underlay, waiting up to 5 s for it.
func (r *kernelVXLANRef) encapsulate(t *testing.T, inner []byte) []byte {
	t.Helper()
	if _, err := unix.Write(r.tx, inner); err != nil {
		t.Fatalf("write into the vxlan device: %v", err)
	}
	buf := make([]byte, 4096)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(r.rx, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("read the underlay: %v", err)
		}
		f := buf[:n]
		// Ours: IPv4 UDP to peer B's 8472 carrying exactly this inner frame.
		if n >= offInnerEth+len(inner) && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[offOuterIP+9] == 17 &&
			net.IP(f[offOuterIP+16:offOuterIP+20]).Equal(peerB.Remote.AsSlice()) &&
			binary.BigEndian.Uint16(f[offUDP+2:]) == 8472 && bytes.Equal(f[offInnerEth:], inner) {
			return append([]byte(nil), f...)
		}
	}
	t.Fatalf("the vxlan driver sent nothing for the inner frame within 5 s")
	return nil
}

// udp4Checksum is the UDP checksum over the IPv4 packet ip (pseudo-header
// included): 0 when the packet carries a right one.
func udp4Checksum(ip []byte) uint16 {
	udpLen := int(be16(ip[20+4:]))
	ph := append([]byte(nil), ip[12:20]...)
	ph = append(ph, 0, 17, byte(udpLen>>8), byte(udpLen))
	return csum16(append(ph, ip[20:20+udpLen]...))
}

// udp4PseudoSum is what a checksum-offloading sender leaves in the UDP
// checksum field: the folded pseudo-header sum, for the device to complete.
func udp4PseudoSum(ip []byte) uint16 {
	udpLen := int(be16(ip[20+4:]))
	ph := append([]byte(nil), ip[12:20]...)
	return ^csum16(append(ph, 0, 17, byte(udpLen>>8), byte(udpLen)))
}
