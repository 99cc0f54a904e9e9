package test

import (
	"bufio"
	"bytes"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/test/lab"
	"github.com/weftnet/weft/test/topo"
)

// Issue 12: the data plane on underlays that are not one clean L2 segment.

// TestFragmentedUnderlay: nodes f (tc decap) and g (XDP decap) sit behind
// two routers joined by a 1400-byte link; a (Weft, tc) and k (kernel vxlan,
// programmed the flannel way) sit on the lab bridge. Every node's NIC has
// MTU 1500 and pods 1450, so every full-size VXLAN packet between the two
// sides is fragmented by a router (encap sends DF clear, like the vxlan
// driver) and must be reassembled by the receiving kernel, then validated
// by gro_sink on weftgro0 and delivered.
func TestFragmentedUnderlay(t *testing.T) {
	routed := &topo.RoutedOptions{LinkMTU: 1400}
	c := newStaticCluster(t, []nodePlan{
		{name: "a", weft: true, decap: loader.DecapTC},
		{name: "k", weft: false},
		{name: "f", weft: true, decap: loader.DecapTC, routed: routed},
		{name: "g", weft: true, decap: loader.DecapXDP, routed: routed},
	}, 1)
	a, k, f, g := c.node("a"), c.node("k"), c.node("f"), c.node("g")
	before := map[string]map[string]uint64{}
	for _, n := range []*clusterNode{a, f, g} {
		before[n.name] = n.stats(t)
	}

	t.Run("PathFragments", func(t *testing.T) {
		// The underlay really has the small hop: a DF packet of 1500 bytes
		// between the nodes is refused by the router, a non-DF one arrives.
		if out, err := ping(a.node.NSPath, f.node.UnderlayIP, 1, 1472); err == nil {
			t.Fatalf("a 1500-byte DF ping crossed the 1400-byte link:\n%s", out)
		}
		if out, err := exec.Command("nsenter", "--net="+a.node.NSPath, "--", "ping", "-c", "1", "-W", "2", "-M", "dont", "-s", "1472",
			f.node.UnderlayIP.String()).CombinedOutput(); err != nil {
			t.Fatalf("a 1500-byte non-DF ping between the nodes: %v\n%s", err, out)
		}
	})

	pairs := [][2]*clusterNode{{a, f}, {f, a}, {a, g}, {g, a}, {k, f}, {f, k}, {k, g}, {g, k}}
	t.Run("TCP100MB", func(t *testing.T) {
		const size = 100 << 20
		for _, pr := range pairs {
			src, dst := pr[0].pods[0], pr[1].pods[0]
			res, err := transferTCP(testCtx(t, 2*time.Minute), src.NSPath, dst.NSPath, dst.IP, size)
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

	t.Run("LargeUDPEchoed", func(t *testing.T) {
		// Each datagram goes there and back, so each pair covers both
		// directions. 1422 is the largest that leaves the pod unfragmented.
		for _, pr := range [][2]*clusterNode{{a, f}, {a, g}, {k, f}, {k, g}, {f, a}} {
			for _, size := range []int{1000, 1422, 1423, 4000, 8972, 30000, 65000} {
				src, dst := pr[0].pods[0], pr[1].pods[0]
				retries, err := lab.EchoUDP(testCtx(t, time.Minute), src.NSPath, dst.NSPath, dst.IP, 20, size)
				if err != nil {
					t.Errorf("%s <-> %s, %d-byte datagrams: %v", pr[0].name, pr[1].name, size, err)
				} else if retries > 3 {
					t.Errorf("%s <-> %s, %d-byte datagrams: %d of 20 needed a retry", pr[0].name, pr[1].name, size, retries)
				}
			}
		}
	})

	t.Run("CountersShowReassembly", func(t *testing.T) {
		for _, n := range []*clusterNode{a, f, g} {
			s := n.stats(t)
			d := map[string]uint64{}
			for name, v := range s {
				if v != before[n.name][name] {
					d[name] = v - before[n.name][name]
				}
			}
			t.Logf("node %s (%s): %s", n.name, n.decap, formatNonZero(d))
			for _, name := range []string{"pass_fragment", "decap_reassembled", "deliver"} {
				if d[name] == 0 {
					t.Errorf("node %s: %s did not move", n.name, name)
				}
			}
			for name, v := range d {
				if strings.HasPrefix(name, "drop_") {
					t.Errorf("node %s: %s moved by %d", n.name, name, v)
				}
			}
		}
	})
}

// TestECNAcrossMarkingRouter: the routers between a and f mark ECN-capable
// packets on their link CE instead of dropping them, as an AQM queue does
// (topo.MarkCE: this kernel has no fq_codel or RED). Encap copies the inner
// ECT to the outer header, the router marks the outer one, decap (tc on a,
// XDP on f) copies CE back into the inner header (RFC 6040): the receiving
// pod's IP layer counts CE packets and the sending TCP sees ECE, in both
// directions.
func TestECNAcrossMarkingRouter(t *testing.T) {
	c := newStaticCluster(t, []nodePlan{
		{name: "a", weft: true, decap: loader.DecapTC},
		{name: "f", weft: true, decap: loader.DecapXDP, routed: &topo.RoutedOptions{LinkMTU: 1500}},
	}, 1)
	a, f := c.node("a"), c.node("f")
	marker, err := f.node.Segment.MarkCE(64)
	if err != nil {
		t.Fatal(err)
	}
	defer marker.Close()
	for _, n := range []*clusterNode{a, f} {
		if err := n.pods[0].SetSysctl("net.ipv4.tcp_ecn", "1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, pr := range [][2]*clusterNode{{a, f}, {f, a}} {
		src, dst := pr[0].pods[0], pr[1].pods[0]
		sb, db := netstat(t, src.NSPath), netstat(t, dst.NSPath)
		eb := pr[1].stats(t)["ecn_ce"]
		const size = 20 << 20
		res, err := transferTCP(testCtx(t, time.Minute), src.NSPath, dst.NSPath, dst.IP, size)
		if err != nil || !res.Intact(size) {
			t.Fatalf("%s -> %s: %v (intact %v)", pr[0].name, pr[1].name, err, res.Intact(size))
		}
		sa, da := netstat(t, src.NSPath), netstat(t, dst.NSPath)
		ce := da["IpExt.InCEPkts"] - db["IpExt.InCEPkts"]
		ece := sa["TcpExt.TCPDeliveredCE"] - sb["TcpExt.TCPDeliveredCE"]
		marked := pr[1].stats(t)["ecn_ce"] - eb
		t.Logf("%s -> %s (%s decap): %.2f Gbit/s, receiver InCEPkts +%d, sender TCPDeliveredCE +%d, ecn_ce +%d",
			pr[0].name, pr[1].name, pr[1].decap, res.Gbps(), ce, ece, marked)
		if ce == 0 || ece == 0 || marked == 0 {
			t.Errorf("%s -> %s: CE marks did not reach the flow (InCEPkts +%d, TCPDeliveredCE +%d, ecn_ce +%d)",
				pr[0].name, pr[1].name, ce, ece, marked)
		}
	}
}

// netstat reads the namespace's /proc/net/netstat (and snmp) as
// "Group.Counter" -> value.
func netstat(t *testing.T, nsPath string) map[string]uint64 {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+nsPath, "--", "cat", "/proc/net/netstat", "/proc/net/snmp").Output()
	if err != nil {
		t.Fatalf("read netstat in %s: %v", nsPath, err)
	}
	m := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	var hdr []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		if hdr == nil || hdr[0] != f[0] {
			hdr = f
			continue
		}
		for i := 1; i < len(f) && i < len(hdr); i++ {
			v, _ := strconv.ParseUint(f[i], 10, 64)
			m[strings.TrimSuffix(f[0], ":")+"."+hdr[i]] = v
		}
		hdr = nil
	}
	return m
}

// TestNestedTunnelFromPod: pods that run their own VXLAN tunnel over the
// pod network hand Weft GSO packets that already carry tunnel offload state,
// which bpf_skb_adjust_room refuses to encapsulate again. Weft passes them
// to weftgro0, where the kernel segments and encapsulates them
// (encap_kernel); nothing ends as a helper error. 20 MB of TCP through the
// nested tunnel arrive intact both ways (receivers: a tc, b XDP).
func TestNestedTunnelFromPod(t *testing.T) {
	c := newStaticCluster(t, []nodePlan{
		{name: "a", weft: true, decap: loader.DecapTC},
		{name: "b", weft: true, decap: loader.DecapXDP},
	}, 1)
	a, b := c.node("a"), c.node("b")
	inner := podTunnels(t, a, b)
	before := map[string]map[string]uint64{"a": a.stats(t), "b": b.stats(t)}
	if out, err := ping(a.pods[0].NSPath, inner[b], 2, 0); err != nil {
		t.Fatalf("ping through the pods' own tunnel: %v\n%s", err, out)
	}
	for _, pr := range [][2]*clusterNode{{a, b}, {b, a}} {
		const size = 20 << 20
		res, err := transferTCP(testCtx(t, time.Minute), pr[0].pods[0].NSPath, pr[1].pods[0].NSPath, inner[pr[1]], size)
		if err != nil || !res.Intact(size) {
			t.Fatalf("%s -> %s through the pods' own tunnel: %v (intact %v)", pr[0].name, pr[1].name, err, err == nil && res.Intact(size))
		}
		t.Logf("%s -> %s through the pods' own tunnel: %d MB intact at %.2f Gbit/s", pr[0].name, pr[1].name, res.Bytes>>20, res.Gbps())
	}
	for _, n := range []*clusterNode{a, b} {
		s := n.stats(t)
		d := map[string]uint64{}
		for k, v := range s {
			if v != before[n.name][k] {
				d[k] = v - before[n.name][k]
			}
		}
		t.Logf("node %s (%s): %s", n.name, n.decap, formatNonZero(d))
		if d["encap_kernel"] == 0 {
			t.Errorf("node %s: encap_kernel did not move: the nested GSO path was not exercised", n.name)
		}
		for _, name := range []string{"drop_helper", "drop_nested_gso"} {
			if d[name] != 0 {
				t.Errorf("node %s: %s moved by %d", n.name, name, d[name])
			}
		}
	}
}

// TestPMTUDiscoveryForTCP: pods whose MTU is too big for the overlay (1500
// instead of 1450; both, or the receiver's MSS would keep the sender's
// segments small) send full-size DF TCP segments. from_pod leaves those
// to the kernel (they may be CHECKSUM_PARTIAL, see bpf/frag_needed.h),
// whose forwarding path answers fragmentation-needed from the cluster
// route's MTU; the connection learns the path MTU and the transfer
// completes intact.
func TestPMTUDiscoveryForTCP(t *testing.T) {
	c := newStaticCluster(t, []nodePlan{
		{name: "a", weft: true, decap: loader.DecapTC},
		{name: "b", weft: true, decap: loader.DecapXDP},
	}, 1)
	a, b := c.node("a"), c.node("b")
	setPodMTU(t, a.pods[0], 1500)
	setPodMTU(t, b.pods[0], 1500)
	before, icmpBefore := a.stats(t), netstat(t, a.pods[0].NSPath)["Icmp.InDestUnreachs"]
	const size = 10 << 20
	res, err := transferTCP(testCtx(t, time.Minute), a.pods[0].NSPath, b.pods[0].NSPath, b.pods[0].IP, size)
	if err != nil || !res.Intact(size) {
		t.Fatalf("a -> b from a pod with MTU 1500: %v (intact %v)", err, err == nil && res.Intact(size))
	}
	after := a.stats(t)
	t.Logf("10 MB intact at %.2f Gbit/s; node a: pass_mtu +%d, encap +%d, drop_frag_needed_suppressed +%d", res.Gbps(),
		after["pass_mtu"]-before["pass_mtu"], after["encap"]-before["encap"],
		after["drop_frag_needed_suppressed"]-before["drop_frag_needed_suppressed"])
	if after["pass_mtu"] == before["pass_mtu"] {
		t.Errorf("pass_mtu did not move: the oversize segments never reached the kernel")
	}
	if got := netstat(t, a.pods[0].NSPath)["Icmp.InDestUnreachs"] - icmpBefore; got == 0 {
		t.Errorf("the pod received no destination-unreachable: nobody answered fragmentation-needed")
	}
}

// podTunnels gives the first pods of a and b a VXLAN tunnel of their own
// over the pod network (vx0, VNI 42, port 4789), addresses 172.16.0.1 (a)
// and .2 (b).
func podTunnels(t *testing.T, a, b *clusterNode) map[*clusterNode]netip.Addr {
	t.Helper()
	inner := map[*clusterNode]netip.Addr{a: netip.MustParseAddr("172.16.0.1"), b: netip.MustParseAddr("172.16.0.2")}
	ownTunnel(t, a.pods[0].NSPath, a.pods[0].IP, b.pods[0].IP, inner[a])
	ownTunnel(t, b.pods[0].NSPath, b.pods[0].IP, a.pods[0].IP, inner[b])
	return inner
}

// ownTunnel creates vx0 (VXLAN VNI 42, port 4789) from local to remote in
// the namespace at nsPath, with address addr/24.
func ownTunnel(t *testing.T, nsPath string, local, remote, addr netip.Addr) {
	t.Helper()
	for _, args := range [][]string{
		{"link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "remote", remote.String(), "local", local.String()},
		{"addr", "add", addr.String() + "/24", "dev", "vx0"},
		{"link", "set", "vx0", "up"},
	} {
		if out, err := exec.Command("nsenter", append([]string{"--net=" + nsPath, "--", "ip"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s: ip %v: %v\n%s", nsPath, args, err, out)
		}
	}
}

// TestNestedTunnelFromHost: the same through from_host: a host process on
// a talks through a tunnel of its own (over weft0, the cluster route) to a
// pod on b. Its GSO packets reach weft0 with tunnel offload state, as a
// decapsulated GRO train the host forwards back out would; from_host hands
// them to weftgro0 too.
func TestNestedTunnelFromHost(t *testing.T) {
	c := newStaticCluster(t, []nodePlan{
		{name: "a", weft: true, decap: loader.DecapTC},
		{name: "b", weft: true, decap: loader.DecapTC},
	}, 1)
	a, b := c.node("a"), c.node("b")
	hostA, hostIn, podIn := loader.HostIP(a.subnet), netip.MustParseAddr("172.16.1.1"), netip.MustParseAddr("172.16.1.2")
	ownTunnel(t, a.node.NSPath, hostA, b.pods[0].IP, hostIn)
	ownTunnel(t, b.pods[0].NSPath, b.pods[0].IP, hostA, podIn)
	if out, err := ping(a.node.NSPath, podIn, 2, 0); err != nil {
		t.Fatalf("ping through the host's own tunnel: %v\n%s", err, out)
	}
	before := a.stats(t)
	const size = 20 << 20
	res, err := transferTCP(testCtx(t, time.Minute), a.node.NSPath, b.pods[0].NSPath, podIn, size)
	if err != nil || !res.Intact(size) {
		t.Fatalf("host a -> pod b through the host's own tunnel: %v (intact %v)", err, err == nil && res.Intact(size))
	}
	d := a.stats(t)
	t.Logf("20 MB intact at %.2f Gbit/s; node a: encap_host +%d, encap_kernel +%d", res.Gbps(),
		d["encap_host"]-before["encap_host"], d["encap_kernel"]-before["encap_kernel"])
	if d["encap_kernel"] == before["encap_kernel"] {
		t.Errorf("encap_kernel did not move: from_host never met tunnel offload state")
	}
	for _, name := range []string{"drop_helper", "drop_nested_gso"} {
		if d[name] != before[name] {
			t.Errorf("node a: %s moved by %d", name, d[name]-before[name])
		}
	}
}

// TestNestedTunnelWithoutGRODevice: with --gro-device=false there is no
// kernel device to hand a pod's own tunnel traffic to; what carries inner
// checksum offload (here UDP through the pods' tunnel) is refused and
// counted (drop_nested_gso), not lost to a helper error. Plain traffic
// through the same tunnel (ping: checksummed in software) still works.
func TestNestedTunnelWithoutGRODevice(t *testing.T) {
	c := newStaticCluster(t, []nodePlan{
		{name: "a", weft: true, decap: loader.DecapTC, noGRO: true},
		{name: "b", weft: true, decap: loader.DecapTC, noGRO: true},
	}, 1)
	a, b := c.node("a"), c.node("b")
	inner := podTunnels(t, a, b)
	if out, err := ping(a.pods[0].NSPath, inner[b], 2, 0); err != nil {
		t.Fatalf("ping through the pods' own tunnel: %v\n%s", err, out)
	}
	before := a.stats(t)
	var conn net.Conn
	if err := topo.Do(a.pods[0].NSPath, func() error {
		var err error
		conn, err = net.Dial("udp4", netip.AddrPortFrom(inner[b], 9).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for range 3 {
		if _, err := conn.Write([]byte("nested")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, func() bool { return a.stats(t)["drop_nested_gso"]-before["drop_nested_gso"] >= 3 },
		"drop_nested_gso to count the 3 datagrams")
	if d := a.stats(t)["drop_helper"] - before["drop_helper"]; d != 0 {
		t.Errorf("drop_helper moved by %d", d)
	}
}
