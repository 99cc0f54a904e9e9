package test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/test/lab"
	"github.com/weftnet/weft/test/topo"
)

// TestDataPlaneWithKernelVXLANPeer is issue 2's end-to-end proof: nodes a
// (XDP receive) and b (tc receive) run Weft's data plane, loaded by a
// process that has exited; node c is a kernel vxlan device programmed the
// way flannel v3 does it; node d is a Weft node that reaches a without
// encapsulation (DirectRouting) and everyone else by VXLAN; node x is a
// plain underlay host used to inject hostile VXLAN.
func TestDataPlaneWithKernelVXLANPeer(t *testing.T) {
	c := newStaticCluster(t, []nodePlan{
		{name: "a", weft: true, decap: loader.DecapXDP, direct: []string{"d"}},
		{name: "b", weft: true, decap: loader.DecapTC},
		{name: "c", weft: false},
		{name: "d", weft: true, decap: loader.DecapTC, direct: []string{"a"}},
	}, 2)
	a, b, k, d := c.node("a"), c.node("b"), c.node("c"), c.node("d")
	intruder, err := c.lab.AddNode("x")
	if err != nil {
		t.Fatalf("add intruder node: %v", err)
	}

	t.Run("PingMatrix", func(t *testing.T) {
		type pair struct{ from, to *podRef }
		var all []*podRef
		for _, n := range c.nodes {
			for _, p := range n.pods {
				all = append(all, &podRef{node: n.name, pod: p.Name, ns: p.NSPath, ip: p.IP})
			}
		}
		var (
			mu     sync.Mutex
			failed []string
			wg     sync.WaitGroup
			sem    = make(chan struct{}, 4)
		)
		for _, from := range all {
			for _, to := range all {
				if from == to {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					if out, err := ping(from.ns, to.ip, 2, 0); err != nil {
						mu.Lock()
						failed = append(failed, fmt.Sprintf("%s -> %s: %v\n%s", from, to, err, out))
						mu.Unlock()
					}
				}()
			}
		}
		wg.Wait()
		if len(failed) > 0 {
			t.Fatalf("%d of %d pod pairs failed:\n%s", len(failed), len(all)*(len(all)-1), strings.Join(failed, "\n"))
		}
	})

	t.Run("HostToRemotePodsAndBack", func(t *testing.T) {
		for _, from := range c.nodes {
			for _, to := range c.nodes {
				if from == to {
					continue
				}
				// host process -> remote pod (through weft0 / flannel.1)
				if out, err := ping(from.node.NSPath, to.pods[0].IP, 2, 0); err != nil {
					t.Errorf("host %s -> pod %s/%s: %v\n%s", from.name, to.name, to.pods[0].Name, err, out)
				}
				// remote pod -> host's cluster address (weft0 / flannel.1: <subnet>.0)
				if out, err := ping(to.pods[0].NSPath, loader.HostIP(from.subnet), 2, 0); err != nil {
					t.Errorf("pod %s/%s -> host %s (%s): %v\n%s", to.name, to.pods[0].Name, from.name, loader.HostIP(from.subnet), err, out)
				}
			}
		}
	})

	t.Run("TCP100MBEveryNodePair", func(t *testing.T) {
		const size = 100 << 20
		for _, pr := range [][2]*clusterNode{{a, b}, {b, a}, {a, k}, {k, a}, {b, k}, {k, b}, {a, d}, {d, a}} {
			src, dst := pr[0].pods[0], pr[1].pods[1]
			ctx := testCtx(t, 2*time.Minute)
			res, err := transferTCP(ctx, src.NSPath, dst.NSPath, dst.IP, size)
			if err != nil {
				t.Errorf("%s -> %s: %v", pr[0].name, pr[1].name, err)
				continue
			}
			if !res.Intact(size) {
				t.Errorf("%s -> %s: received %d of %d bytes, sha256 %s, sent %s", pr[0].name, pr[1].name, res.Bytes, size, res.RecvSum, res.SentSum)
				continue
			}
			t.Logf("%s -> %s: %d MB intact (sha256 %.12s) at %.2f Gbit/s", pr[0].name, pr[1].name, res.Bytes>>20, res.RecvSum, res.Gbps())
		}
	})

	t.Run("TCPIntactOverWireLikeUnderlay", func(t *testing.T) {
		// Segmentation offloads off on every underlay veth: GSO packets must
		// be cut into correct VXLAN segments before they leave a node (our
		// encap's GSO flags at work), and the XDP receive path sees wire-sized
		// frames. Default veths pass super-packets untouched and prove less.
		if err := c.lab.SetWireLike(true); err != nil {
			t.Fatal(err)
		}
		defer c.lab.SetWireLike(false)
		const size = 100 << 20
		for _, pr := range [][2]*clusterNode{{a, b}, {b, a}, {a, k}, {k, b}, {a, d}} {
			src, dst := pr[0].pods[0], pr[1].pods[1]
			res, err := transferTCP(testCtx(t, 2*time.Minute), src.NSPath, dst.NSPath, dst.IP, size)
			if err != nil {
				t.Errorf("%s -> %s: %v", pr[0].name, pr[1].name, err)
				continue
			}
			if !res.Intact(size) {
				t.Errorf("%s -> %s: received %d of %d bytes, sha256 %s, sent %s", pr[0].name, pr[1].name, res.Bytes, size, res.RecvSum, res.SentSum)
				continue
			}
			t.Logf("wire-like %s -> %s: %d MB intact at %.2f Gbit/s", pr[0].name, pr[1].name, res.Bytes>>20, res.Gbps())
		}
	})

	t.Run("DFPingTooBigGetsFragNeeded", func(t *testing.T) {
		for _, n := range []*clusterNode{a, b} {
			pod, dst := n.pods[0], k.pods[0].IP
			// A pod that ignores the MTU it was given (1450) sends 1500-byte DF
			// packets; Weft must answer fragmentation-needed, not drop silently.
			setPodMTU(t, pod, 1500)
			before := n.stats(t)["icmp_frag_needed"]
			out, _ := exec.Command("nsenter", "--net="+pod.NSPath, "--", "ping", "-M", "do", "-s", "1472", "-c", "1", "-W", "2",
				dst.String()).CombinedOutput()
			if !strings.Contains(string(out), "mtu = 1450") {
				t.Errorf("node %s: 1500-byte DF ping: want 'Frag needed ... (mtu = 1450)', got:\n%s", n.name, out)
			}
			if after := n.stats(t)["icmp_frag_needed"]; after != before+1 {
				t.Errorf("node %s: icmp_frag_needed moved %d -> %d, want +1", n.name, before, after)
			}
			// The pod learnt the path MTU: a 1450-byte DF ping goes through.
			if out, err := ping(pod.NSPath, dst, 1, 1422); err != nil {
				t.Errorf("node %s: 1450-byte DF ping after PMTU discovery: %v\n%s", n.name, err, out)
			}
			setPodMTU(t, pod, loader.PodMTU(1500))
		}
	})

	t.Run("NoPerRemoteHostKernelState", func(t *testing.T) {
		for _, n := range []*clusterNode{a, b, d} {
			assertNoPerHostState(t, c, n)
		}
	})

	t.Run("HostileVXLANDroppedAndCounted", func(t *testing.T) {
		for _, target := range []*clusterNode{a, b} {
			injectHostileVXLAN(t, c, intruder.NSPath, target)
		}
	})

	t.Run("CountersShowEveryPath", func(t *testing.T) {
		// Node c's kernel answers our ARP-free traffic; the paths a and b took:
		want := []string{"local", "encap", "encap_host", "arp_reply", "pass_pod", "icmp_frag_needed",
			"decap", "deliver", "to_host", "pass_underlay"}
		for _, n := range []*clusterNode{a, b} {
			s := n.stats(t)
			for _, name := range want {
				if s[name] == 0 {
					t.Errorf("node %s: counter %s is 0 after the tests", n.name, name)
				}
			}
			t.Logf("node %s (%s): %s", n.name, n.decap, formatNonZero(s))
		}
		// b decapsulates in tc behind weftgro0's GRO socket: the other-VNI
		// VXLAN it left to the kernel came out of weftgro0 and was dropped there.
		if s := b.stats(t); s["drop_gro_device"] == 0 {
			t.Errorf("node b: drop_gro_device is 0: other-VNI VXLAN did not reach gro_sink")
		}
		// DirectRouting between a and d, both ways and from the hosts.
		for _, n := range []*clusterNode{a, d} {
			s := n.stats(t)
			for _, name := range []string{"direct", "direct_rx", "direct_host"} {
				if s[name] == 0 {
					t.Errorf("node %s: counter %s is 0 after the tests", n.name, name)
				}
			}
			if n == d {
				t.Logf("node %s (%s, direct to a): %s", n.name, n.decap, formatNonZero(s))
			}
		}
	})

	t.Run("Iperf3Numbers", func(t *testing.T) {
		if _, err := exec.LookPath("iperf3"); err != nil {
			t.Skip("iperf3 not installed (make deps installs it)")
		}
		for _, pr := range [][2]*clusterNode{{a, b}, {b, a}, {a, k}, {k, a}, {a, d}} {
			gbps, err := iperf3(c, pr[0].pods[0], pr[1].pods[0])
			if err != nil {
				t.Errorf("iperf3 %s -> %s: %v", pr[0].name, pr[1].name, err)
				continue
			}
			t.Logf("iperf3 TCP pod %s -> pod %s: %.2f Gbit/s (default veth underlay, not a benchmark)", pr[0].name, pr[1].name, gbps)
		}
	})
}

type podRef struct {
	node, pod, ns string
	ip            netip.Addr
}

func (p *podRef) String() string { return p.node + "/" + p.pod + "(" + p.ip.String() + ")" }

// ping is lab.Ping with a 30 s bound; size 0 means the default size.
func ping(nsPath string, dst netip.Addr, count, size int) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return lab.Ping(ctx, nsPath, dst, count, size)
}

// setPodMTU sets both ends of the pod's veth (a veth drops what exceeds
// its peer's MTU before any program sees it).
func setPodMTU(t *testing.T, pod *topo.Pod, mtu int) {
	t.Helper()
	for _, c := range [][2]string{{pod.NSPath, "eth0"}, {pod.Node.NSPath, pod.HostIf}} {
		if out, err := exec.Command("nsenter", "--net="+c[0], "--", "ip", "link", "set", c[1], "mtu", fmt.Sprint(mtu)).CombinedOutput(); err != nil {
			t.Fatalf("set MTU %d on %s: %v: %s", mtu, c[1], err, out)
		}
	}
}

// assertNoPerHostState checks the Weft node holds no route, neighbour or FDB
// entry per remote host: one cluster route, a /32 per local pod, nothing else.
func assertNoPerHostState(t *testing.T, c *staticCluster, n *clusterNode) {
	t.Helper()
	h, err := n.node.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	local := map[netip.Addr]bool{}
	for _, p := range n.pods {
		local[p.IP] = true
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	clusterRoutes := 0
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		dst, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		pfx := netip.PrefixFrom(dst.Unmap(), ones)
		switch {
		case pfx == c.network:
			clusterRoutes++
		case ones == 32 && local[pfx.Addr()]:
		case c.network.Overlaps(pfx):
			t.Errorf("node %s: unexpected route into the pod network: %s", n.name, r)
		}
	}
	if clusterRoutes != 1 {
		t.Errorf("node %s: %d routes for %s, want exactly 1", n.name, clusterRoutes, c.network)
	}

	neighs, err := h.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, nb := range neighs {
		ip, _ := netip.AddrFromSlice(nb.IP)
		if nb.State&netlink.NUD_PERMANENT != 0 {
			t.Errorf("node %s: permanent neighbour %s (%s)", n.name, ip, nb.HardwareAddr)
		}
		for _, peer := range c.nodes {
			if peer != n && peer.subnet.Contains(ip.Unmap()) {
				t.Errorf("node %s: neighbour entry for remote subnet address %s", n.name, ip)
			}
		}
	}

	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		vx, ok := l.(*netlink.Vxlan)
		if !ok {
			continue
		}
		// The only vxlan device allowed is the GRO helper: external mode,
		// no address, no FDB entry (checked below), no route (checked above).
		if vx.Attrs().Name != loader.DefaultGRODevice || !vx.FlowBased {
			t.Errorf("node %s: has a vxlan device %s (external %v)", n.name, vx.Attrs().Name, vx.FlowBased)
		}
		if addrs, _ := h.AddrList(l, netlink.FAMILY_ALL); len(addrs) > 0 {
			t.Errorf("node %s: %s has addresses %v", n.name, vx.Attrs().Name, addrs)
		}
	}
	fdb, err := h.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range fdb {
		if e.IP != nil && !e.IP.IsUnspecified() {
			t.Errorf("node %s: FDB entry pointing at %s", n.name, e.IP)
		}
	}
}

// hostileCase is one malformed or spoofed VXLAN datagram and the counter
// that must account for it on the target node.
type hostileCase struct {
	name    string
	counter string
	payload []byte // UDP payload: VXLAN header + inner frame
	sockopt func(fd int) error
	size    int // pad the datagram to this size (fragmentation cases)
}

func injectHostileVXLAN(t *testing.T, c *staticCluster, fromNS string, target *clusterNode) {
	t.Helper()
	var peer *clusterNode
	for _, n := range c.nodes {
		if n != target && n.weft {
			peer = n
		}
	}
	pod := target.pods[0]
	inner := func(src netip.Addr, mutate func(ip *layers.IPv4), ether layers.EthernetType) []byte {
		eth := &layers.Ethernet{SrcMAC: peer.vtepMAC, DstMAC: target.vtepMAC, EthernetType: ether}
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: pod.IP.AsSlice()}
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 7, Seq: 1}
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			eth, ip, icmp, gopacket.Payload([]byte("weft-hostile"))); err != nil {
			t.Fatal(err)
		}
		b := buf.Bytes()
		if mutate != nil {
			var m layers.IPv4
			m.Version, m.IHL = b[14]>>4, b[14]&0xf
			mutate(&m)
			b[14] = m.Version<<4 | m.IHL
		}
		return b
	}
	vxlan := func(flags byte, vni uint32, frame []byte) []byte {
		h := make([]byte, 8)
		h[0] = flags
		binary.BigEndian.PutUint32(h[4:], vni<<8)
		return append(h, frame...)
	}
	peerPod := peer.pods[0].IP
	ok := inner(peerPod, nil, layers.EthernetTypeIPv4)
	cases := []hostileCase{
		{name: "spoofed inner source from the wrong underlay host", counter: "drop_unknown_peer", payload: vxlan(0x08, testVNI, ok)},
		{name: "inner source in no known subnet", counter: "drop_unknown_source", payload: vxlan(0x08, testVNI, inner(netip.MustParseAddr("10.99.0.1"), nil, layers.EthernetTypeIPv4))},
		{name: "no I flag", counter: "drop_vxlan_flags", payload: vxlan(0x00, testVNI, ok)},
		{name: "other VNI", counter: "pass_other_vni", payload: vxlan(0x08, 99, ok)},
		{name: "short VXLAN", counter: "drop_short", payload: []byte{0x08, 0, 0, 0, 0, 0}},
		{name: "inner ARP", counter: "drop_inner_not_ipv4", payload: vxlan(0x08, testVNI, inner(peerPod, nil, layers.EthernetTypeARP))},
		{name: "inner IHL lies", counter: "drop_inner_malformed", payload: vxlan(0x08, testVNI, inner(peerPod, func(ip *layers.IPv4) { ip.IHL = 3 }, layers.EthernetTypeIPv4))},
		{name: "outer IPv4 options", counter: "drop_outer_options", payload: vxlan(0x08, testVNI, ok), sockopt: func(fd int) error {
			return unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.IP_OPTIONS, "\x01\x01\x01\x00") // NOP NOP NOP EOL
		}},
		// Fragments go to the kernel, which reassembles them; gro_sink on
		// weftgro0 then applies the same source check.
		{name: "outer fragments, reassembled", counter: "drop_unknown_peer", payload: vxlan(0x08, testVNI, ok), size: 3000, sockopt: func(fd int) error {
			return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT)
		}},
	}
	for _, hc := range cases {
		before := target.stats(t)
		conn, err := udpConnIn(fromNS, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
		if err != nil {
			t.Fatal(err)
		}
		if hc.sockopt != nil {
			raw, _ := conn.SyscallConn()
			var serr error
			raw.Control(func(fd uintptr) { serr = hc.sockopt(int(fd)) })
			if serr != nil {
				t.Fatalf("%s: setsockopt: %v", hc.name, serr)
			}
		}
		payload := hc.payload
		if hc.size > len(payload) {
			payload = append(payload, make([]byte, hc.size-len(payload))...)
		}
		dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(target.node.UnderlayIP, testPort))
		for range 3 {
			if _, err := conn.WriteToUDP(payload, dst); err != nil {
				t.Fatalf("%s: send: %v", hc.name, err)
			}
		}
		conn.Close()
		var after map[string]uint64
		deadline := time.Now().Add(2 * time.Second)
		for {
			after = target.stats(t)
			if after[hc.counter]-before[hc.counter] >= 3 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if got := after[hc.counter] - before[hc.counter]; got != 3 {
			t.Errorf("node %s (%s), %s: %s moved by %d, want 3", target.name, target.decap, hc.name, hc.counter, got)
		}
		for _, cnt := range []string{"decap", "decap_reassembled", "deliver", "to_host"} {
			if after[cnt] != before[cnt] {
				t.Errorf("node %s (%s), %s: %s moved (%d -> %d): hostile frame accepted", target.name, target.decap, hc.name, cnt, before[cnt], after[cnt])
			}
		}
	}
}

func formatNonZero(s map[string]uint64) string {
	var parts []string
	for k, v := range s {
		if v != 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", k, v))
		}
	}
	return strings.Join(sortStrings(parts), " ")
}
