package bpf_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestEncap6MatchesKernelVXLAN: the reference for v4-in-v6 and v6-in-v6 encapsulation is
// the Linux vxlan driver itself, with its defaults (as flannel creates
// flannel-v6.<VNI>: `type vxlan id 1 local <v6> dev <underlay> dstport
// 8472 nolearning`). For each inner packet, from_pod's output and the
// driver's, captured on the underlay, must be the same bytes from the
// outer source MAC on: outer IPv6 header (class, label, hop limit), UDP
// header with its checksum, VXLAN header, inner frame. The outer
// destination MAC is bpf_redirect_neigh's to fill, so it is not compared.
// Both get a one-port source range so the flow hash cannot differ; the
// driver's underlay has TX checksumming off so the capture carries the
// checksum it computed rather than an offload placeholder.
func TestEncap6MatchesKernelVXLAN(t *testing.T) {
	const (
		ul, ulPeer, vxName = "kref0", "kref1", "krefvx"
		sport              = 40000
	)
	local, remote := netip.MustParseAddr("fd00:77::1"), netip.MustParseAddr("fd00:77::5")
	remoteMAC := mustMAC("02:00:00:00:77:05")
	t.Cleanup(func() {
		for _, n := range []string{vxName, ul} {
			if l, err := netlink.LinkByName(n); err == nil {
				netlink.LinkDel(l)
			}
		}
	})
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: ul, MTU: 1500}, PeerName: ulPeer}); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	ulLink, _ := netlink.LinkByName(ul)
	peerLink, _ := netlink.LinkByName(ulPeer)
	if err := netlink.AddrAdd(ulLink, &netlink.Addr{IPNet: &net.IPNet{IP: local.AsSlice(), Mask: net.CIDRMask(64, 128)},
		Flags: unix.IFA_F_NODAD}); err != nil {
		t.Fatalf("address: %v", err)
	}
	for _, l := range []netlink.Link{ulLink, peerLink} {
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("ethtool", "-K", ul, "tx", "off").CombinedOutput(); err != nil {
		t.Fatalf("ethtool -K %s tx off: %v: %s", ul, err, out)
	}
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: ulLink.Attrs().Index, Family: netlink.FAMILY_V6,
		State: netlink.NUD_PERMANENT, IP: remote.AsSlice(), HardwareAddr: remoteMAC}); err != nil {
		t.Fatalf("neighbour: %v", err)
	}
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: vxName, HardwareAddr: localVtep}, VxlanId: 1,
		VtepDevIndex: ulLink.Attrs().Index, SrcAddr: local.AsSlice(), Port: 8472, PortLow: sport, PortHigh: sport + 1}
	if err := netlink.LinkAdd(vx); err != nil {
		t.Fatalf("add vxlan: %v", err)
	}
	vxLink, _ := netlink.LinkByName(vxName)
	if err := netlink.LinkSetUp(vxLink); err != nil {
		t.Fatal(err)
	}
	if err := netlink.NeighAppend(&netlink.Neigh{LinkIndex: vxLink.Attrs().Index, Family: unix.AF_BRIDGE,
		Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT, IP: remote.AsSlice(), HardwareAddr: peerE.VtepMAC}); err != nil {
		t.Fatalf("fdb: %v", err)
	}

	capFD := packetSocket(t, peerLink.Attrs().Index)
	sendFD := packetSocket(t, vxLink.Attrs().Index)

	e := newEnv(t)
	cfg := defaultConfig()
	cfg.UnderlayIP6, cfg.UnderlayMAC = local, ulLink.Attrs().HardwareAddr
	cfg.SrcPortMin, cfg.SrcPortMax = sport, sport+1
	e.setConfig(cfg)
	tun := peerE
	tun.Remote = remote
	if err := e.m.Tunnels.Put(tun); err != nil {
		t.Fatal(err)
	}

	tun6 := peerE6 // IPv6 pods over the same IPv6 underlay (v6-in-v6)
	tun6.Remote = remote
	if err := e.m.Tunnels.Put(tun6); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Endpoints.Put(pod1v6); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		p     pkt
		p6    *pkt6
		frame func() []byte
	}{
		{name: "tcp", p: pkt{}},
		{name: "udp", p: pkt{proto: layers.IPProtocolUDP, size: 333}},
		{name: "icmp", p: pkt{proto: layers.IPProtocolICMPv4, size: 1000}},
		{name: "ECN CE with DSCP", p: pkt{tos: 0xbb}},
		{name: "ECN ECT(1)", p: pkt{tos: 0x01, size: 1430}},
		{name: "IPv6 tcp", p6: &pkt6{}},
		{name: "IPv6 udp", p6: &pkt6{proto: layers.IPProtocolUDP, size: 333}},
		{name: "IPv6 icmpv6", p6: &pkt6{proto: layers.IPProtocolICMPv6, size: 1001}},
		{name: "IPv6 CE with DSCP and a flow label", p6: &pkt6{tc: 0xbb, flow: 0xabcde, size: 1430}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var in []byte
			if c.p6 != nil {
				c.p6.dst = remotePodE6
				in = podFrame6(t, pod1v6, *c.p6)
			} else {
				c.p.dst = remotePodE
				in = podFrame(t, pod1, c.p)
			}
			r := e.run("from_pod", in)
			r.check(t, tcActRedirect, counters("encap"))
			weft := r.out
			// The driver gets the same inner frame and encapsulates it.
			inner := weft[off6InnerEth:]
			if err := unix.Sendto(sendFD, inner, 0, &unix.SockaddrLinklayer{Ifindex: vxLink.Attrs().Index,
				Protocol: htons(be16(inner[12:])), Halen: 6, Addr: [8]byte(append(bytes.Clone(tun.VtepMAC), 0, 0))}); err != nil {
				t.Fatalf("send through %s: %v", vxName, err)
			}
			kern := captureVXLAN6(t, capFD, remote, 8472)
			if !bytes.Equal(kern[:6], remoteMAC) {
				t.Errorf("driver's outer destination MAC %x, want the neighbour's %v", kern[:6], remoteMAC)
			}
			hexDiff(t, "Weft's frame against the vxlan driver's (from the outer source MAC on)", weft[6:], kern[6:])
			if c.p6 != nil {
				checkEncap6(t, cfg, tun6, in[14:], weft, true)
			} else {
				checkEncap6(t, cfg, tun, in[14:], weft, true)
			}
		})
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func packetSocket(t *testing.T, ifindex int) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		t.Fatalf("bind packet socket: %v", err)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

// captureVXLAN6 waits (5 s at most) for an IPv6 UDP frame to dst:port on fd.
func captureVXLAN6(t *testing.T, fd int, dst netip.Addr, port uint16) []byte {
	t.Helper()
	buf := make([]byte, 4096)
	d16 := dst.As16()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue // timeout: poll again
		}
		b := buf[:n]
		if n >= off6VXLAN && be16(b[12:]) == 0x86dd && b[off6IP+6] == 17 &&
			bytes.Equal(b[off6IP+24:off6IP+40], d16[:]) && binary.BigEndian.Uint16(b[off6UDP+2:]) == port {
			return bytes.Clone(b)
		}
	}
	t.Fatalf("no VXLAN to [%v]:%d captured within 5 s", dst, port)
	return nil
}
