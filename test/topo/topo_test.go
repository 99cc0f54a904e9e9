package topo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	subnetA = netip.MustParsePrefix("10.244.1.0/24")
	subnetB = netip.MustParsePrefix("10.244.2.0/24")
)

// requireRoot fails (never skips) without root or the tools the lab runs:
// these tests are the only check the topology really works.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("test/topo needs root (network namespaces, veths, bind mounts); run the tests as root")
	}
	for _, tool := range []string{"nsenter", "ping", "ethtool"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: apt-get install -y util-linux iputils-ping ethtool", tool)
		}
	}
}

func testLab(t *testing.T) *Lab {
	t.Helper()
	requireRoot(t)
	l, err := New(Options{})
	if err != nil {
		t.Fatalf("new lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	return l
}

// must(f())(t) returns f's value or fails the test with f's error.
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func ok(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// labNamespaces lists the lab's namespaces as the filesystem shows them.
func labNamespaces(t *testing.T, prefix string) []string {
	t.Helper()
	ents, err := os.ReadDir(NetnsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			names = append(names, e.Name())
		}
	}
	return names
}

func TestHostGW(t *testing.T) {
	l := testLab(t)
	ctx := testCtx(t)
	a := must(l.AddNode("a"))(t)
	b := must(l.AddNode("b"))(t)
	if a.UnderlayIP != netip.MustParseAddr("192.168.77.11") || b.UnderlayIP != netip.MustParseAddr("192.168.77.12") {
		t.Fatalf("underlay addresses %v %v, want .11 .12", a.UnderlayIP, b.UnderlayIP)
	}
	for _, kv := range nodeSysctls {
		if v := must(a.Sysctl(kv[0]))(t); v != kv[1] {
			t.Errorf("sysctl %s = %s, want %s", kv[0], v, kv[1])
		}
	}

	pa := must(a.AddPod("p", PodOptions{IP: netip.MustParsePrefix("10.244.1.2/24"), Gateway: netip.MustParseAddr("10.244.1.1")}))(t)
	pb := must(b.AddPod("p", PodOptions{IP: netip.MustParsePrefix("10.244.2.2/24"), Gateway: netip.MustParseAddr("10.244.2.1")}))(t)
	if len(pa.HostIf) > 15 || pa.HostIf == pb.HostIf {
		t.Errorf("host interface names %q %q", pa.HostIf, pb.HostIf)
	}
	ok(t, a.AddRoute(subnetB, b.UnderlayIP))
	ok(t, b.AddRoute(subnetA, a.UnderlayIP))

	ok(t, pa.Ping(ctx, pb.IP, 3))
	ok(t, pb.Ping(ctx, pa.IP, 3))
	ok(t, pa.Ping(ctx, b.UnderlayIP, 2))

	t.Run("wire-like", func(t *testing.T) {
		ok(t, l.SetWireLike(true))
		checkFeatures(t, a.NSPath, a.UnderlayIf, true)
		checkFeatures(t, l.UnderlayPath, a.UnderlayPeer, true)
		ok(t, pa.Ping(ctx, pb.IP, 2))
		ok(t, l.SetWireLike(false))
		checkFeatures(t, b.NSPath, b.UnderlayIf, false)
		checkFeatures(t, l.UnderlayPath, b.UnderlayPeer, false)
	})

	t.Run("delete pod", func(t *testing.T) {
		ok(t, b.DeletePod(pb))
		if _, err := os.Stat(pb.NSPath); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("pod namespace still there: %v", err)
		}
		h := must(b.Handle())(t)
		defer h.Close()
		if _, err := h.LinkByName(pb.HostIf); err == nil {
			t.Errorf("host side %s still there", pb.HostIf)
		}
		if len(b.Pods) != 0 {
			t.Errorf("node still lists %d pods", len(b.Pods))
		}
	})
}

func checkFeatures(t *testing.T, nsPath, dev string, wire bool) {
	t.Helper()
	fs := must(Features(t.Context(), nsPath, dev))(t)
	for _, f := range wireFeatures {
		want := f.veth
		if wire {
			want = f.wire
		}
		if st, present := fs[f.show]; present && st.On != want {
			t.Errorf("%s %s = %v, want %v (wire-like %v)", dev, f.show, st.On, want, wire)
		}
	}
}

func TestFlannel(t *testing.T) {
	l := testLab(t)
	ctx := testCtx(t)
	a := must(l.AddNode("a"))(t)
	b := must(l.AddNode("b"))(t)
	must(a.SetupFlannelVXLAN(FlannelOptions{Subnet: subnetA}))(t)
	must(b.SetupFlannelVXLAN(FlannelOptions{Subnet: subnetB}))(t)
	checkFlannelDevice(t, a)

	var pods [2][]*Pod
	for i, n := range []*Node{a, b} {
		for j := range 2 {
			ip := must(hostAddr(n.Flannel.Subnet, uint64(2+j)))(t)
			p := must(n.AddPod("p"+string(rune('0'+j)), n.Flannel.PodOptions(ip)))(t)
			pods[i] = append(pods[i], p)
		}
	}
	ok(t, a.AddFlannelPeer(b.FlannelPeer()))
	ok(t, b.AddFlannelPeer(a.FlannelPeer()))
	checkPeerEntries(t, a, b.FlannelPeer(), 1)
	checkPeerEntries(t, b, a.FlannelPeer(), 1)

	ok(t, pods[0][0].Ping(ctx, pods[0][1].IP, 2)) // same bridge
	for _, src := range pods[0] {
		for _, dst := range pods[1] {
			ok(t, src.Ping(ctx, dst.IP, 2))
			ok(t, dst.Ping(ctx, src.IP, 2))
		}
	}
	if tx := linkStats(t, a, a.Flannel.Device).TxPackets; tx == 0 {
		t.Errorf("%s sent no packets: traffic did not take the vxlan path", a.Flannel.Device)
	}

	ok(t, a.RemoveFlannelPeer(b.FlannelPeer()))
	checkPeerEntries(t, a, b.FlannelPeer(), 0)
	if err := pods[0][0].Ping(ctx, pods[1][0].IP, 1); err == nil {
		t.Error("ping across still works after RemoveFlannelPeer")
	}
}

func checkFlannelDevice(t *testing.T, n *Node) {
	t.Helper()
	h := must(n.Handle())(t)
	defer h.Close()
	link := must(h.LinkByName("flannel.1"))(t)
	vx, isVxlan := link.(*netlink.Vxlan)
	if !isVxlan {
		t.Fatalf("flannel.1 is %T", link)
	}
	f := n.Flannel
	if vx.VxlanId != 1 || vx.Port != 8472 || vx.Learning || vx.GBP ||
		vx.VtepDevIndex != n.UnderlayIfIndex || addrFromIP(vx.SrcAddr) != n.UnderlayIP ||
		vx.MTU != 1450 || vx.HardwareAddr.String() != f.VtepMAC.String() {
		t.Errorf("flannel.1 = vni %d port %d learning %v gbp %v dev %d local %v mtu %d mac %v",
			vx.VxlanId, vx.Port, vx.Learning, vx.GBP, vx.VtepDevIndex, vx.SrcAddr, vx.MTU, vx.HardwareAddr)
	}
	addrs := must(h.AddrList(link, unix.AF_INET))(t)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.244.1.0/32" {
		t.Errorf("flannel.1 addresses %v, want 10.244.1.0/32", addrs)
	}
	br := must(h.LinkByName(FlannelBridge))(t)
	addrs = must(h.AddrList(br, unix.AF_INET))(t)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.244.1.1/24" {
		t.Errorf("cni0 addresses %v, want 10.244.1.1/24", addrs)
	}
}

// checkPeerEntries reads back what flannel.1 holds for peer: want is 1 (the
// route, neighbour and FDB entry each exactly once) or 0.
func checkPeerEntries(t *testing.T, n *Node, peer FlannelPeer, want int) {
	t.Helper()
	h := must(n.Handle())(t)
	defer h.Close()
	idx := n.Flannel.DeviceIndex
	gw := peer.Subnet.Addr()

	routes := must(h.RouteListFiltered(unix.AF_INET, &netlink.Route{LinkIndex: idx}, netlink.RT_FILTER_OIF))(t)
	if len(routes) != want {
		t.Errorf("%s: %d routes on flannel.1, want %d: %v", n.Name, len(routes), want, routes)
	}
	for _, r := range routes {
		if r.Dst.String() != peer.Subnet.String() || addrFromIP(r.Gw) != gw || r.Flags&unix.RTNH_F_ONLINK == 0 {
			t.Errorf("%s: route %v, want %v via %v onlink", n.Name, r, peer.Subnet, gw)
		}
	}

	neighs := must(h.NeighList(idx, unix.AF_INET))(t)
	if len(neighs) != want {
		t.Errorf("%s: %d neighbours on flannel.1, want %d: %v", n.Name, len(neighs), want, neighs)
	}
	for _, e := range neighs {
		if addrFromIP(e.IP) != gw || e.HardwareAddr.String() != peer.VtepMAC.String() || e.State != netlink.NUD_PERMANENT {
			t.Errorf("%s: neighbour %v, want %v lladdr %v permanent", n.Name, e, gw, peer.VtepMAC)
		}
	}

	fdb := must(h.NeighList(idx, unix.AF_BRIDGE))(t)
	if len(fdb) != want {
		t.Errorf("%s: %d fdb entries on flannel.1, want %d: %v", n.Name, len(fdb), want, fdb)
	}
	for _, e := range fdb {
		if addrFromIP(e.IP) != peer.PublicIP || e.HardwareAddr.String() != peer.VtepMAC.String() ||
			e.Flags&netlink.NTF_SELF == 0 || e.State != netlink.NUD_PERMANENT {
			t.Errorf("%s: fdb %v, want %v dst %v self permanent", n.Name, e, peer.VtepMAC, peer.PublicIP)
		}
	}
}

func linkStats(t *testing.T, n *Node, dev string) *netlink.LinkStatistics {
	t.Helper()
	h := must(n.Handle())(t)
	defer h.Close()
	return must(h.LinkByName(dev))(t).Attrs().Statistics
}

func TestClose(t *testing.T) {
	l := testLab(t)
	a := must(l.AddNode("a"))(t)
	must(l.AddNode("b"))(t)
	p := must(a.AddPod("p", PodOptions{IP: netip.MustParsePrefix("10.244.1.2/24")}))(t)
	sleeper := must(p.Start("sleep", "600"))(t)
	logPath := l.LogPath(sleeper)
	if _, err := os.Stat(logPath); err != nil {
		t.Errorf("process log: %v", err)
	}
	if got := labNamespaces(t, l.Prefix); len(got) != 4 {
		t.Fatalf("namespaces before Close: %v, want 4", got)
	}

	ok(t, l.Close())
	if got := labNamespaces(t, l.Prefix); len(got) != 0 {
		t.Errorf("namespaces left after Close: %v", got)
	}
	select {
	case <-l.Exited(sleeper):
	case <-time.After(5 * time.Second):
		t.Error("process survived Close")
	}
	if _, err := os.Stat(filepath.Dir(logPath)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("log dir left after Close: %v", err)
	}
	ok(t, l.Close())
	if _, err := l.AddNode("c"); err == nil {
		t.Error("AddNode works on a closed lab")
	}
}

// TestCleanupPrefix abandons a lab (no Close) with a process the lab does not
// track, as a crashed run would leave it, and recovers with CleanupPrefix.
func TestCleanupPrefix(t *testing.T) {
	l := testLab(t) // its Close (Cleanup) must still be fine afterwards
	a := must(l.AddNode("a"))(t)
	must(a.AddPod("p", PodOptions{IP: netip.MustParsePrefix("10.244.1.2/24")}))(t)
	stray := exec.Command("nsenter", "--net="+a.NSPath, "--", "sleep", "600")
	ok(t, stray.Start())
	exited := make(chan error, 1)
	go func() { exited <- stray.Wait() }()
	t.Cleanup(func() { stray.Process.Kill() })
	// On a loaded machine nsenter may not have entered the namespace yet
	// when CleanupPrefix scans for processes in it: wait until it has.
	waitInNetns(t, stray.Process.Pid, a.NSPath)

	ok(t, CleanupPrefix(l.Prefix))
	if got := labNamespaces(t, l.Prefix); len(got) != 0 {
		t.Errorf("namespaces left after CleanupPrefix: %v", got)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("process in the namespace survived CleanupPrefix")
	}
}

// waitInNetns polls until process pid is in the network namespace at nsPath.
func waitInNetns(t *testing.T, pid int, nsPath string) {
	t.Helper()
	var want syscall.Stat_t
	ok(t, syscall.Stat(nsPath, &want))
	target := fmt.Sprintf("net:[%d]", want.Ino)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err == nil && got == target {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d not in %s after 10s (in %q, %v)", pid, nsPath, got, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestValidation(t *testing.T) {
	requireRoot(t)
	if err := CleanupPrefix(""); err == nil {
		t.Error("CleanupPrefix accepted an empty prefix")
	}
	if _, err := New(Options{Prefix: "a-b"}); err == nil {
		t.Error("New accepted a prefix with '-'")
	}
	l := testLab(t)
	for _, name := range []string{"", "a-b", "ul"} {
		if _, err := l.AddNode(name); err == nil {
			t.Errorf("AddNode(%q) succeeded", name)
		}
	}
	must(l.AddNode("a"))(t)
	if _, err := l.AddNode("a"); err == nil {
		t.Error("duplicate AddNode succeeded")
	}
	if got := labNamespaces(t, l.Prefix); !slices.Equal(got, []string{l.Prefix + "-a", l.Prefix + "-ul"}) {
		t.Errorf("namespaces after failed AddNode calls: %v", got)
	}
}

func TestHostAddr(t *testing.T) {
	p := netip.MustParsePrefix("192.168.77.0/24")
	for n, want := range map[uint64]string{1: "192.168.77.1", 11: "192.168.77.11", 254: "192.168.77.254"} {
		if got, err := hostAddr(p, n); err != nil || got.String() != want {
			t.Errorf("hostAddr(%v, %d) = %v, %v; want %s", p, n, got, err, want)
		}
	}
	for _, n := range []uint64{0, 255, 256, 1 << 40} {
		if got, err := hostAddr(p, n); err == nil {
			t.Errorf("hostAddr(%v, %d) = %v, want error", p, n, got)
		}
	}
	if got, err := hostAddr(netip.MustParsePrefix("fd00::/64"), 11); err != nil || got.String() != "fd00::b" {
		t.Errorf("hostAddr(fd00::/64, 11) = %v, %v", got, err)
	}
}

// TestDo checks that Do runs inside the node and that no thread of this
// process is left in a lab namespace afterwards.
func TestDo(t *testing.T) {
	l := testLab(t)
	a := must(l.AddNode("a"))(t)
	var want unix.Stat_t
	ok(t, unix.Stat(a.NSPath, &want))
	for range 10 {
		ok(t, a.Do(func() error {
			var st unix.Stat_t
			if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
				return err
			}
			if st.Ino != want.Ino || st.Dev != want.Dev {
				t.Error("Do did not run in the node namespace")
			}
			return nil
		}))
	}
	tasks := must(os.ReadDir("/proc/self/task"))(t)
	for _, task := range tasks {
		var st unix.Stat_t
		if unix.Stat("/proc/self/task/"+task.Name()+"/ns/net", &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			t.Errorf("thread %s is still in %s", task.Name(), a.NS)
		}
	}
}

// TestRoutedNode: a node behind two routers with a 1400-byte link between
// them reaches nodes on the bridge (added before and after it); the path
// fragments what exceeds 1400 bytes and refuses it with DF; Close removes
// the routers too. (Segment.MarkCE is proven by test/underlay_test.go.)
func TestRoutedNode(t *testing.T) {
	l := testLab(t)
	a := must(l.AddNode("a"))(t)
	r := must(l.AddRoutedNode("r", RoutedOptions{LinkMTU: 1400}))(t)
	b := must(l.AddNode("b"))(t)
	if r.Segment == nil || r.UnderlayPrefix.Masked() != r.Segment.Prefix || l.Node("r") != r {
		t.Fatalf("routed node %+v: segment %+v", r, r.Segment)
	}
	// Polled: the first packet waits for neighbour resolution on three
	// hops, which a loaded machine can stretch past ping's one second.
	reach := func(from *Node, to netip.Addr) {
		t.Helper()
		var err error
		for try := 0; try < 5; try++ {
			if err = from.Ping(testCtx(t), to, 1); err == nil {
				return
			}
		}
		t.Error(err)
	}
	for _, n := range []*Node{a, b} {
		reach(r, n.UnderlayIP)
		reach(n, r.UnderlayIP)
	}
	// 1472 bytes of ICMP payload make a 1500-byte packet: fragmented without
	// DF, refused with it (the router answers fragmentation-needed).
	if _, err := execIn(testCtx(t), a.NSPath, "ping", "-c", "1", "-W", "2", "-M", "dont", "-s", "1472", r.UnderlayIP.String()); err != nil {
		t.Errorf("1500-byte ping across the 1400-byte link: %v", err)
	}
	out, err := execIn(testCtx(t), a.NSPath, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", r.UnderlayIP.String())
	// The router's answer, or the path MTU the first ping taught the node.
	if err == nil || !(strings.Contains(string(out), "mtu = 1400") || strings.Contains(string(out), "mtu=1400")) {
		t.Errorf("1500-byte DF ping: want fragmentation-needed with mtu 1400, got %v:\n%s", err, out)
	}
	if got := labNamespaces(t, l.Prefix); len(got) != 6 {
		t.Errorf("namespaces %v, want 6 (underlay, a, b, r and its two routers)", got)
	}
	ok(t, l.Close())
	if got := labNamespaces(t, l.Prefix); len(got) != 0 {
		t.Errorf("namespaces left after Close: %v", got)
	}
}

var (
	subnetA6   = netip.MustParsePrefix("fd00:10:244:1::/64")
	subnetB6   = netip.MustParsePrefix("fd00:10:244:2::/64")
	underlay6  = netip.MustParsePrefix("fd77::/64")
	dualLabOpt = Options{UnderlayCIDR6: underlay6}
)

func testLabWith(t *testing.T, o Options) *Lab {
	t.Helper()
	requireRoot(t)
	l, err := New(o)
	if err != nil {
		t.Fatalf("new lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	return l
}

// TestHostGWIPv6Only: an IPv6-only underlay (no IPv4 anywhere on it), nodes
// with IPv6 forwarding, IPv6-only pods routed the host-gw way.
func TestHostGWIPv6Only(t *testing.T) {
	l := testLabWith(t, Options{UnderlayCIDR6: underlay6, NoUnderlayIPv4: true})
	ctx := testCtx(t)
	a := must(l.AddNode("a"))(t)
	b := must(l.AddNode("b"))(t)
	if a.UnderlayIP.IsValid() || a.UnderlayIP6 != netip.MustParseAddr("fd77::b") || b.UnderlayIP6 != netip.MustParseAddr("fd77::c") || a.Addr() != a.UnderlayIP6 {
		t.Fatalf("underlay addresses %v/%v %v, want none/fd77::b fd77::c", a.UnderlayIP, a.UnderlayIP6, b.UnderlayIP6)
	}
	h := must(a.Handle())(t)
	defer h.Close()
	if addrs := must(h.AddrList(must(h.LinkByName(UnderlayIf))(t), unix.AF_INET))(t); len(addrs) != 0 {
		t.Errorf("IPv6-only underlay: eth0 has IPv4 %v", addrs)
	}
	pa := must(a.AddPod("p", PodOptions{IP6: netip.MustParsePrefix("fd00:10:244:1::2/64"), Gateway6: netip.MustParseAddr("fd00:10:244:1::1")}))(t)
	pb := must(b.AddPod("p", PodOptions{IP6: netip.MustParsePrefix("fd00:10:244:2::2/64"), Gateway6: netip.MustParseAddr("fd00:10:244:2::1")}))(t)
	ok(t, a.AddRoute(subnetB6, b.UnderlayIP6))
	ok(t, b.AddRoute(subnetA6, a.UnderlayIP6))
	ok(t, pa.Ping(ctx, pb.IP6, 3))
	ok(t, pb.Ping(ctx, pa.IP6, 3))
	ok(t, pa.Ping(ctx, b.UnderlayIP6, 2))
	if got := pa.Addrs(); len(got) != 1 || got[0] != pa.IP6 {
		t.Errorf("Addrs() = %v", got)
	}
}

// TestFlannelDualStack: two flannel-style dual-stack nodes (flannel.1 and
// flannel-v6.1, the latter over the IPv6 underlay) carry both families
// between dual-stack pods on cni0; the IPv6 device and entries are the ones
// flanneld makes.
func TestFlannelDualStack(t *testing.T) {
	l := testLabWith(t, dualLabOpt)
	ctx := testCtx(t)
	a := must(l.AddNode("a"))(t)
	b := must(l.AddNode("b"))(t)
	must(a.SetupFlannelVXLAN(FlannelOptions{Subnet: subnetA, Subnet6: subnetA6}))(t)
	must(b.SetupFlannelVXLAN(FlannelOptions{Subnet: subnetB, Subnet6: subnetB6}))(t)
	checkFlannelDevice(t, a)
	checkFlannelDevice6(t, a)
	if a.Flannel.PodMTU() != 1430 {
		t.Errorf("pod MTU %d, want 1430 (the IPv6 device's)", a.Flannel.PodMTU())
	}

	var pods [2]*Pod
	for i, n := range []*Node{a, b} {
		ip := must(hostAddr(n.Flannel.Subnet, 2))(t)
		ip6 := must(hostAddr(n.Flannel.Subnet6, 2))(t)
		pods[i] = must(n.AddPod("p", n.Flannel.PodOptionsFor(ip, ip6)))(t)
	}
	ok(t, a.AddFlannelPeer(b.FlannelPeer()))
	ok(t, b.AddFlannelPeer(a.FlannelPeer()))
	checkPeerEntries(t, a, b.FlannelPeer(), 1)
	checkPeerEntries6(t, a, b.FlannelPeer(), 1)

	for _, dst := range pods[1].Addrs() {
		ok(t, pods[0].Ping(ctx, dst, 2))
	}
	for _, dst := range pods[0].Addrs() {
		ok(t, pods[1].Ping(ctx, dst, 2))
	}
	if tx := linkStats(t, a, a.Flannel.Device6).TxPackets; tx == 0 {
		t.Errorf("%s sent no packets: IPv6 did not take the vxlan path", a.Flannel.Device6)
	}

	ok(t, a.RemoveFlannelPeer(b.FlannelPeer()))
	checkPeerEntries6(t, a, b.FlannelPeer(), 0)
	if err := pods[0].Ping(ctx, pods[1].IP6, 1); err == nil {
		t.Error("IPv6 ping across still works after RemoveFlannelPeer")
	}
}

func checkFlannelDevice6(t *testing.T, n *Node) {
	t.Helper()
	h := must(n.Handle())(t)
	defer h.Close()
	link := must(h.LinkByName("flannel-v6.1"))(t)
	vx, isVxlan := link.(*netlink.Vxlan)
	if !isVxlan {
		t.Fatalf("flannel-v6.1 is %T", link)
	}
	f := n.Flannel
	if vx.VxlanId != 1 || vx.Port != 8472 || vx.Learning || vx.VtepDevIndex != n.UnderlayIfIndex ||
		addrFromIP(vx.SrcAddr) != n.UnderlayIP6 || vx.MTU != 1430 || vx.HardwareAddr.String() != f.VtepMAC6.String() {
		t.Errorf("flannel-v6.1 = vni %d port %d learning %v dev %d local %v mtu %d mac %v",
			vx.VxlanId, vx.Port, vx.Learning, vx.VtepDevIndex, vx.SrcAddr, vx.MTU, vx.HardwareAddr)
	}
	if f.VtepMAC6.String() == f.VtepMAC.String() {
		t.Errorf("flannel-v6.1 shares flannel.1's MAC %v; flannel gives each device its own", f.VtepMAC)
	}
	var global []string
	for _, a := range must(h.AddrList(link, unix.AF_INET6))(t) {
		if !a.IP.IsLinkLocalUnicast() {
			global = append(global, a.IPNet.String())
		}
	}
	if len(global) != 1 || global[0] != n.Flannel.Subnet6.Addr().String()+"/128" {
		t.Errorf("flannel-v6.1 addresses %v, want %s/128", global, n.Flannel.Subnet6.Addr())
	}
}

// checkPeerEntries6 is checkPeerEntries for flannel-v6.1.
func checkPeerEntries6(t *testing.T, n *Node, peer FlannelPeer, want int) {
	t.Helper()
	h := must(n.Handle())(t)
	defer h.Close()
	idx := n.Flannel.DeviceIndex6
	gw := peer.Subnet6.Addr()
	var routes []netlink.Route
	for _, r := range must(h.RouteListFiltered(unix.AF_INET6, &netlink.Route{LinkIndex: idx}, netlink.RT_FILTER_OIF))(t) {
		if r.Gw != nil { // not the kernel's own fe80::/64 and local routes
			routes = append(routes, r)
		}
	}
	if len(routes) != want {
		t.Errorf("%s: %d routes via a gateway on flannel-v6.1, want %d: %v", n.Name, len(routes), want, routes)
	}
	for _, r := range routes {
		if r.Dst.String() != peer.Subnet6.String() || addrFromIP(r.Gw) != gw || r.Flags&unix.RTNH_F_ONLINK == 0 {
			t.Errorf("%s: route %v, want %v via %v onlink", n.Name, r, peer.Subnet6, gw)
		}
	}
	var neighs []netlink.Neigh
	for _, e := range must(h.NeighList(idx, unix.AF_INET6))(t) {
		if e.State == netlink.NUD_PERMANENT {
			neighs = append(neighs, e)
		}
	}
	if len(neighs) != want {
		t.Errorf("%s: %d permanent neighbours on flannel-v6.1, want %d: %v", n.Name, len(neighs), want, neighs)
	}
	for _, e := range neighs {
		if addrFromIP(e.IP) != gw || e.HardwareAddr.String() != peer.VtepMAC6.String() {
			t.Errorf("%s: neighbour %v, want %v lladdr %v", n.Name, e, gw, peer.VtepMAC6)
		}
	}
	fdb := must(h.NeighList(idx, unix.AF_BRIDGE))(t)
	if len(fdb) != want {
		t.Errorf("%s: %d fdb entries on flannel-v6.1, want %d: %v", n.Name, len(fdb), want, fdb)
	}
	for _, e := range fdb {
		if addrFromIP(e.IP) != peer.PublicIP6 || e.HardwareAddr.String() != peer.VtepMAC6.String() || e.Flags&netlink.NTF_SELF == 0 {
			t.Errorf("%s: fdb %v, want %v dst %v self", n.Name, e, peer.VtepMAC6, peer.PublicIP6)
		}
	}
}

// TestRoutedNodeIPv6: on a dual-stack underlay the routed node's segment
// and routers carry IPv6 too; a packet too big for the 1400-byte link gets
// Packet Too Big from the router (IPv6 routers never fragment).
func TestRoutedNodeIPv6(t *testing.T) {
	l := testLabWith(t, dualLabOpt)
	a := must(l.AddNode("a"))(t)
	r := must(l.AddRoutedNode("r", RoutedOptions{LinkMTU: 1400}))(t)
	if !r.UnderlayIP6.IsValid() || r.UnderlayPrefix6.Masked() != r.Segment.Prefix6 || !r.UnderlayIP.IsValid() {
		t.Fatalf("routed node %v / %v: segment %+v", r.UnderlayIP, r.UnderlayIP6, r.Segment)
	}
	reach := func(from *Node, to netip.Addr) {
		t.Helper()
		var err error
		for try := 0; try < 5; try++ {
			if err = from.Ping(testCtx(t), to, 1); err == nil {
				return
			}
		}
		t.Error(err)
	}
	reach(r, a.UnderlayIP6)
	reach(a, r.UnderlayIP6)
	reach(a, r.UnderlayIP)
	// 1452 bytes of ICMPv6 payload make a 1500-byte packet.
	out, err := execIn(testCtx(t), a.NSPath, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1452", r.UnderlayIP6.String())
	if err == nil || !(strings.Contains(string(out), "mtu = 1400") || strings.Contains(string(out), "mtu=1400")) {
		t.Errorf("1500-byte IPv6 ping: want Packet Too Big with mtu 1400, got %v:\n%s", err, out)
	}
}

// TestFlannelIPv6PathMTU: two flannel-style dual-stack nodes, one behind
// the routers' 1400-byte link. A full-size IPv6 pod packet makes a
// 1500-byte outer IPv6 packet, which the router refuses with Packet Too
// Big; the kernel's vxlan driver learns the path MTU from it and answers
// the pod's next oversize packet with Packet Too Big (mtu 1330), so
// PMTU discovery works across the overlay. This is the behaviour
// test/ipv6_test.go's TestIPv6PMTU/SmallerHop asks of Weft.
func TestFlannelIPv6PathMTU(t *testing.T) {
	l := testLabWith(t, dualLabOpt)
	a := must(l.AddNode("a"))(t)
	r := must(l.AddRoutedNode("r", RoutedOptions{LinkMTU: 1400}))(t)
	must(a.SetupFlannelVXLAN(FlannelOptions{Subnet: subnetA, Subnet6: subnetA6}))(t)
	must(r.SetupFlannelVXLAN(FlannelOptions{Subnet: subnetB, Subnet6: subnetB6}))(t)
	pa := must(a.AddPod("p", a.Flannel.PodOptionsFor(must(hostAddr(subnetA, 2))(t), must(hostAddr(subnetA6, 2))(t))))(t)
	pr := must(r.AddPod("p", r.Flannel.PodOptionsFor(must(hostAddr(subnetB, 2))(t), must(hostAddr(subnetB6, 2))(t))))(t)
	ok(t, a.AddFlannelPeer(r.FlannelPeer()))
	ok(t, r.AddFlannelPeer(a.FlannelPeer()))
	var out []byte
	var err error
	for try := 0; try < 5; try++ { // neighbour resolution on three hops first
		if err = pa.Ping(testCtx(t), pr.IP6, 1); err == nil {
			break
		}
	}
	ok(t, err)
	// 1382 bytes of payload: a 1430-byte pod packet, 1500 bytes outer.
	for try := 0; try < 5; try++ {
		out, _ = execIn(testCtx(t), pa.NSPath, "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1382", pr.IP6.String())
		if strings.Contains(string(out), "mtu=1330") || strings.Contains(string(out), "mtu: 1330") {
			return
		}
	}
	t.Errorf("the pod never learned the path MTU 1330 across the 1400-byte hop:\n%s", out)
}
