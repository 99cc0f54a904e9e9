package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/topo"
)

// TestV4InV6WithKernelVXLAN is the interop proof for VXLAN over an IPv6
// underlay (bpf/outer6.h): Weft nodes a (tc receive) and b (XDP receive)
// and node k, whose kernel vxlan device has the driver's defaults over
// IPv6 (checksums on, zero-checksum receive off, as flannel's
// flannel-v6.<VNI>), carry dual-stack pods over their IPv6 underlay
// addresses (v4-in-v6 and v6-in-v6), every pair both ways, pings at the pod
// MTU and TCP (GSO, which Weft hands to weftgro0 for the kernel to
// checksum). Run twice: with veth defaults
// (checksums may stay offloaded across the veths, so receivers trust them)
// and with TX checksumming off on every node's eth0, where each outer UDP
// checksum is computed before it leaves a node and verified in software by
// the receiver: k's kernel counts no checksum error and the Weft nodes take
// the others' packets on their fast path.
func TestV4InV6WithKernelVXLAN(t *testing.T) {
	lab, err := topo.New(topo.Options{})
	if err != nil {
		t.Fatalf("create lab: %v", err)
	}
	pinRoot := filepath.Join(loader.BPFFSRoot, "weft-test-"+lab.Prefix)
	type v6node struct {
		node    *topo.Node
		ip6     netip.Addr
		subnet  netip.Prefix
		subnet6 netip.Prefix // its IPv6 pods' (v6-in-v6, flannel-v6.<VNI>'s model)
		vtep    net.HardwareAddr
		decap   loader.DecapMode // "": the kernel's vxlan (k)
		pod     *topo.Pod
		pin     string
	}
	nodes := []*v6node{
		{ip6: netip.MustParseAddr("fd00:77::11"), subnet: netip.MustParsePrefix("10.244.1.0/24"), decap: loader.DecapTC},
		{ip6: netip.MustParseAddr("fd00:77::12"), subnet: netip.MustParsePrefix("10.244.2.0/24"), decap: loader.DecapXDP},
		{ip6: netip.MustParseAddr("fd00:77::13"), subnet: netip.MustParsePrefix("10.244.3.0/24")},
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			if n.node != nil && n.decap != "" {
				n.node.Do(func() error { return loader.TeardownNode(n.pin, "") })
			}
		}
		os.RemoveAll(pinRoot)
		if err := lab.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	const podMTU = 1500 - 70
	network6 := netip.MustParsePrefix("fd00:10:244::/48")
	for i, n := range nodes {
		name := []string{"a", "b", "k"}[i]
		n.subnet6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, 0, byte(i + 1)}), 64)
		if n.node, err = lab.AddNode(name); err != nil {
			t.Fatal(err)
		}
		n.vtep = net.HardwareAddr{0x0e, 0x77, 0, 0, 0, byte(i + 1)}
		n.pin = filepath.Join(pinRoot, name)
		if err := addIPv6NoDAD(n.node, n.node.UnderlayIf, n.ip6, 64); err != nil {
			t.Fatal(err)
		}
		opts := topo.PodOptions{IP: netip.PrefixFrom(n.subnet.Addr().Next().Next(), 24),
			Gateway: loader.GatewayIP(n.subnet), MTU: podMTU, GatewayByARP: true,
			IP6: netip.PrefixFrom(n.subnet6.Addr().Next().Next(), 64), Gateway6: n.subnet6.Addr().Next()}
		if n.decap == "" {
			opts.Bridge, opts.GatewayByARP = "kbr0", false
		}
		if n.pod, err = n.node.AddPod("p1", opts); err != nil {
			t.Fatal(err)
		}
	}
	a, b, k := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		var tunnels []maps.Tunnel
		var peers []topo.FlannelPeer
		for _, p := range nodes {
			if p != n {
				for _, sn := range []netip.Prefix{p.subnet, p.subnet6} {
					tunnels = append(tunnels, maps.Tunnel{Subnet: sn, Remote: p.ip6, VtepMAC: p.vtep, VNI: testVNI, Mode: maps.ModeVXLAN})
					peers = append(peers, topo.FlannelPeer{Subnet: sn, PublicIP: p.ip6, VtepMAC: p.vtep})
				}
			}
		}
		if n.decap == "" {
			// k: the kernel's vxlan over IPv6, programmed the flannel way.
			if err := setupKernelVXLAN6(n.node, n.ip6, n.vtep, n.subnet, n.subnet6, peers, podMTU); err != nil {
				t.Fatalf("kernel vxlan on %s: %v", n.node.Name, err)
			}
			continue
		}
		// Weft, with its IPv6 underlay address and its peers' tunnels over IPv6.
		if err := loadNodeInChild(nodeSpec{
			NSPath: n.node.NSPath, PinPath: n.pin,
			Node: loader.NodeConfig{Underlay: n.node.UnderlayIf, UnderlayIP6: n.ip6, Network: netip.MustParsePrefix("10.244.0.0/16"),
				Subnet: n.subnet, IPv6Network: network6, IPv6Subnet: n.subnet6, VtepMAC: n.vtep, VNI: testVNI, Port: testPort, Decap: n.decap},
			Endpoints: []maps.Endpoint{{IP: n.pod.IP, IfIndex: uint32(n.pod.HostIfIndex), MAC: n.pod.MAC, HostMAC: n.pod.HostMAC},
				{IP: n.pod.IP6, IfIndex: uint32(n.pod.HostIfIndex), MAC: n.pod.MAC, HostMAC: n.pod.HostMAC}},
			Tunnels: tunnels,
		}); err != nil {
			t.Fatalf("load Weft on %s: %v", n.node.Name, err)
		}
	}
	stats := func(n *v6node) map[string]uint64 {
		set, err := maps.OpenPinned(n.pin)
		if err != nil {
			t.Fatalf("open %s's pinned maps: %v", n.node.Name, err)
		}
		defer set.Close()
		s, err := set.Stats.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	t.Run("GSO paths compared", func(t *testing.T) {
		measureGSOPaths(t, lab, a.node, k.node, a.vtep, a.pin, a.pod, k.pod,
			maps.Tunnel{Subnet: k.subnet, Remote: k.ip6, VtepMAC: k.vtep, VNI: testVNI, Mode: maps.ModeVXLAN})
	})
	for _, txCsum := range []bool{true, false} {
		name := "veth defaults"
		if !txCsum {
			name = "TX checksumming off"
		}
		t.Run(name, func(t *testing.T) {
			for _, n := range nodes {
				if _, err := n.node.Exec(testCtx(t, 10*time.Second), "ethtool", "-K", n.node.UnderlayIf, "tx", onOffStr(txCsum)); err != nil {
					t.Fatal(err)
				}
			}
			before := map[*v6node]map[string]uint64{a: stats(a), b: stats(b)}
			kBefore := udp6Snmp(t, k.node)
			for _, pr := range [][2]*v6node{{a, k}, {k, a}, {b, k}, {k, b}, {a, b}, {b, a}} {
				from, to := pr[0].pod, pr[1].pod
				// IPv4 pods (v4-in-v6) and IPv6 pods (v6-in-v6).
				for _, fam := range []struct {
					dst      netip.Addr
					overhead int // ICMP echo headers
				}{{to.IP, 28}, {to.IP6, 48}} {
					if out, err := ping(from.NSPath, fam.dst, 2, 0); err != nil {
						t.Fatalf("ping %s -> %s: %v\n%s", from.NS, fam.dst, err, out)
					}
					if out, err := ping(from.NSPath, fam.dst, 1, podMTU-fam.overhead); err != nil {
						t.Errorf("ping at the pod MTU %s -> %s: %v\n%s", from.NS, fam.dst, err, out)
					}
					const size = 20 << 20
					res, err := transferTCP(testCtx(t, time.Minute), from.NSPath, to.NSPath, fam.dst, size)
					if err != nil {
						t.Fatalf("TCP %s -> %s: %v", from.NS, fam.dst, err)
					}
					if !res.Intact(size) {
						t.Fatalf("TCP %s -> %s: received %d of %d bytes, sha256 %s, sent %s", from.NS, fam.dst, res.Bytes, size, res.RecvSum, res.SentSum)
					}
					t.Logf("%s -> %s (%s): %d MB intact at %.2f Gbit/s", pr[0].node.Name, pr[1].node.Name, fam.dst, res.Bytes>>20, res.Gbps())
				}
			}
			kAfter := udp6Snmp(t, k.node)
			for _, c := range []string{"Udp6InCsumErrors", "Udp6InErrors"} {
				if kAfter[c] != kBefore[c] {
					t.Errorf("k's kernel counted %d %s: Weft's outer UDP checksums are not all valid", kAfter[c]-kBefore[c], c)
				}
			}
			for _, n := range []*v6node{a, b} {
				after := stats(n)
				d := func(c string) uint64 { return after[c] - before[n][c] }
				t.Logf("%s (%s): encap %d, encap_kernel %d, decap %d, pass_outer6_csum %d, decap_reassembled %d",
					n.node.Name, n.decap, d("encap"), d("encap_kernel"), d("decap"), d("pass_outer6_csum"), d("decap_reassembled"))
				if d("encap") == 0 || d("encap_kernel") == 0 {
					t.Errorf("%s sent encap %d (checksummed by Weft), encap_kernel %d (GSO via weftgro0): want both",
						n.node.Name, d("encap"), d("encap_kernel"))
				}
				if !txCsum && d("decap") == 0 {
					t.Errorf("with real checksums, %s's fast path decapsulated nothing (pass_outer6_csum %d)", n.node.Name, d("pass_outer6_csum"))
				}
				if d("decap")+d("decap_reassembled") == 0 {
					t.Errorf("%s decapsulated nothing", n.node.Name)
				}
				for c, v := range after {
					if strings.HasPrefix(c, "drop_") && v != before[n][c] {
						t.Errorf("%s dropped %d packets as %s", n.node.Name, v-before[n][c], c)
					}
				}
			}
		})
	}
}

// TestV4InV6WithKernelVXLAN's GSO comparison: TCP from a's pod to k's over
// the IPv4 underlay (Weft encapsulates GSO trains itself, bpf_skb_adjust_room)
// and over the IPv6 underlay (GSO trains go to weftgro0, whose kernel vxlan
// driver encapsulates them with SKB_GSO_UDP_TUNNEL_CSUM), same pods, same
// lab, two rounds each. Logged, not asserted: the machine is shared.
func measureGSOPaths(t *testing.T, lab *topo.Lab, a, k *topo.Node, aVtep net.HardwareAddr, pinPath string, aPod, kPod *topo.Pod, v6Tunnel maps.Tunnel) {
	h, err := k.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vx6, err := h.LinkByName("vx6")
	if err != nil {
		t.Fatal(err)
	}
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vx4", HardwareAddr: vx6.Attrs().HardwareAddr, MTU: 1450},
		VxlanId: testVNI, VtepDevIndex: k.UnderlayIfIndex, SrcAddr: k.UnderlayIP.AsSlice(), Port: testPort}
	if err := h.LinkAdd(vx); err != nil {
		t.Fatalf("add vx4: %v", err)
	}
	if l, err := h.LinkByName("vx4"); err != nil || h.LinkSetUp(l) != nil {
		t.Fatalf("vx4 up: %v", err)
	}
	// k's way back to a follows the same family (a's tunnel to k says which
	// family k's packets must arrive in): the route to a's subnet via vx4 or vx6.
	aSub := aPod.Prefix.Masked()
	vx4, _ := h.LinkByName("vx4")
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: vx4.Attrs().Index, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
		IP: aSub.Addr().AsSlice(), HardwareAddr: aVtep}); err != nil {
		t.Fatal(err)
	}
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: vx4.Attrs().Index, State: netlink.NUD_PERMANENT, Family: unix.AF_BRIDGE,
		Flags: netlink.NTF_SELF, IP: a.UnderlayIP.AsSlice(), HardwareAddr: aVtep}); err != nil {
		t.Fatal(err)
	}
	routeVia := func(l netlink.Link) {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: aSub.Addr().AsSlice(), Mask: net.CIDRMask(aSub.Bits(), 32)},
			Gw: aSub.Addr().AsSlice()}
		r.SetFlag(netlink.FLAG_ONLINK)
		if err := h.RouteReplace(r); err != nil {
			t.Fatal(err)
		}
	}
	defer routeVia(vx6)
	setTunnel := func(tun maps.Tunnel) {
		set, err := maps.OpenPinned(pinPath)
		if err != nil {
			t.Fatal(err)
		}
		defer set.Close()
		if err := set.Tunnels.Put(tun); err != nil {
			t.Fatal(err)
		}
	}
	v4Tunnel := v6Tunnel
	v4Tunnel.Remote = k.UnderlayIP
	defer setTunnel(v6Tunnel)
	if err := lab.SetWireLike(true); err != nil {
		t.Fatal(err)
	}
	defer lab.SetWireLike(false)
	const size = 50 << 20
	for round := 1; round <= 2; round++ {
		for _, c := range []struct {
			name string
			tun  maps.Tunnel
		}{{"IPv4 underlay (adjust_room GSO)", v4Tunnel}, {"IPv6 underlay (GSO via weftgro0)", v6Tunnel}} {
			setTunnel(c.tun)
			if c.tun.Remote.Is4() {
				routeVia(vx4)
			} else {
				routeVia(vx6)
			}
			res, err := transferTCP(testCtx(t, time.Minute), aPod.NSPath, kPod.NSPath, kPod.IP, size)
			if err != nil || !res.Intact(size) {
				t.Fatalf("%s: %v (%d of %d bytes)", c.name, err, res.Bytes, size)
			}
			t.Logf("round %d, wire-like underlay, a -> k TCP over the %s: %.2f Gbit/s", round, c.name, res.Gbps())
		}
	}
}

func onOffStr(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func addIPv6NoDAD(n *topo.Node, dev string, ip netip.Addr, bits int) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return err
	}
	return h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, 128)}, Flags: unix.IFA_F_NODAD})
}

// setupKernelVXLAN6 gives k what flanneld gives a node, over IPv6: a vxlan
// device with the driver's defaults and k's IPv6 underlay address as
// source (flannel-v6.<VNI>; here one device carries both pod families),
// <subnet>.0/32 and <subnet6>::/128 on it, and the route, neighbour and FDB
// entry for each peer subnet; the pods' bridge gets <subnet>.1 and <subnet6>::1.
func setupKernelVXLAN6(k *topo.Node, local netip.Addr, vtep net.HardwareAddr, sub, sub6 netip.Prefix, peers []topo.FlannelPeer, mtu int) error {
	h, err := k.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vx6", HardwareAddr: vtep, MTU: mtu}, VxlanId: testVNI,
		VtepDevIndex: k.UnderlayIfIndex, SrcAddr: local.AsSlice(), Port: testPort}
	if err := h.LinkAdd(vx); err != nil {
		return fmt.Errorf("add vx6: %w", err)
	}
	l, err := h.LinkByName("vx6")
	if err != nil {
		return err
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: sub.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		return err
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: sub6.Addr().AsSlice(), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}); err != nil {
		return err
	}
	if err := h.LinkSetUp(l); err != nil {
		return err
	}
	br, err := h.LinkByName("kbr0")
	if err != nil {
		return err
	}
	gw := sub.Addr().Next()
	if err := h.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(sub.Bits(), 32)}}); err != nil {
		return err
	}
	gw6 := sub6.Addr().Next()
	if err := h.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: gw6.AsSlice(), Mask: net.CIDRMask(sub6.Bits(), 128)}, Flags: unix.IFA_F_NODAD}); err != nil {
		return err
	}
	if err := h.LinkSetMTU(br, mtu); err != nil {
		return err
	}
	for _, peer := range peers {
		psub := peer.Subnet.Masked()
		bits := 32
		if psub.Addr().Is6() {
			bits = 128
		}
		if err := h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
			IP: psub.Addr().AsSlice(), HardwareAddr: peer.VtepMAC}); err != nil {
			return fmt.Errorf("neighbour: %w", err)
		}
		if err := h.NeighAppend(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT, Family: unix.AF_BRIDGE,
			Flags: netlink.NTF_SELF, IP: peer.PublicIP.AsSlice(), HardwareAddr: peer.VtepMAC}); err != nil {
			return fmt.Errorf("fdb: %w", err)
		}
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: psub.Addr().AsSlice(), Mask: net.CIDRMask(psub.Bits(), bits)},
			Gw: psub.Addr().AsSlice()}
		r.SetFlag(netlink.FLAG_ONLINK)
		if err := h.RouteReplace(r); err != nil {
			return err
		}
	}
	return nil
}

// udp6Snmp reads the Udp6 counters of the node's namespace (/proc/net/snmp6).
func udp6Snmp(t *testing.T, n *topo.Node) map[string]uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := n.Exec(ctx, "cat", "/proc/net/snmp6")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && strings.HasPrefix(f[0], "Udp6") {
			m[f[0]], _ = strconv.ParseUint(f[1], 10, 64)
		}
	}
	return m
}
