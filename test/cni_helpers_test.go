package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/topo"
)

// Helpers for the weft-cni tests: Weft nodes in a topo lab, the plugin
// built from source and driven through libcni the way containerd and
// CRI-O drive it (exec'd from a thread inside the node's netns), pod
// namespaces made by the test as a runtime would, and a census of
// everything the plugin can leave behind.

// cniPluginDir builds cmd/weft-cni into a temporary directory: libcni's
// plugin search path.
func cniPluginDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "weft-cni"), "github.com/weftnet/weft/cmd/weft-cni")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build weft-cni: %v\n%s", err, out)
	}
	return dir
}

// cniConfig is a runtime's libcni handle: plugins from binDir, results
// cached in cacheDir (not the machine's /var/lib/cni). The exec is set
// explicitly because libcni's lazy default is not safe for concurrent calls.
func cniConfig(binDir, cacheDir string) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{binDir}, cacheDir, &invoke.DefaultExec{
		RawExec:       &invoke.RawExec{Stderr: os.Stderr},
		PluginDecoder: version.PluginDecoder{},
	})
}

// cniNode is one lab node running Weft's data plane (loaded in-process,
// then released: what remains is pinned, as after weftd wrote it).
type cniNode struct {
	name       string
	node       *topo.Node
	subnet     netip.Prefix
	subnet6    netip.Prefix // dual-stack nodes (newCNILab6) only
	vtepMAC    net.HardwareAddr
	pinPath    string
	dataDir    string
	subnetFile string
	cni        *libcni.CNIConfig
}

type cniLab struct {
	lab     *topo.Lab
	nodes   []*cniNode
	pinRoot string
	binDir  string
}

// newCNILab makes n Weft nodes (subnet 10.244.<i+1>.0/24 each), tunnels
// between every pair, a subnet.env and data dir per node, and the plugin.
// Everything is removed at cleanup, also after a failure.
func newCNILab(t *testing.T, n int) *cniLab {
	t.Helper()
	return newCNILabWith(t, n, false)
}

// cniNetwork6 is the dual-stack CNI labs' IPv6 network.
var cniNetwork6 = netip.MustParsePrefix("fd00:10:244::/48")

// newCNILab6 is newCNILab with dual-stack nodes: node i also has
// fd00:10:244:<i+1>::/64, in its subnet.env, its IPv6 tunnels (to the
// peers' IPv4 underlay addresses: v6-in-v4) and its config.
func newCNILab6(t *testing.T, n int) *cniLab {
	t.Helper()
	return newCNILabWith(t, n, true)
}

func newCNILabWith(t *testing.T, n int, dual bool) *cniLab {
	t.Helper()
	binDir := cniPluginDir(t)
	lab, err := topo.New(topo.Options{})
	if err != nil {
		t.Fatalf("create lab: %v", err)
	}
	c := &cniLab{lab: lab, binDir: binDir, pinRoot: filepath.Join(loader.BPFFSRoot, "weft-test-"+lab.Prefix)}
	t.Cleanup(func() {
		for _, cn := range c.nodes {
			cn.node.Do(func() error { return loader.TeardownNode(cn.pinPath, "") })
		}
		os.RemoveAll(c.pinRoot)
		if err := lab.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
		// Pod namespaces are the test's own (named <prefix>-...): sweep them too.
		if err := topo.CleanupPrefix(lab.Prefix); err != nil {
			t.Errorf("remove pod namespaces: %v", err)
		}
	})
	network := netip.MustParsePrefix("10.244.0.0/16")
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("n%d", i+1)
		tn, err := lab.AddNode(name)
		if err != nil {
			t.Fatalf("add node %s: %v", name, err)
		}
		cn := &cniNode{
			name:       name,
			node:       tn,
			subnet:     netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24),
			vtepMAC:    net.HardwareAddr{0x0e, 0x77, 0xc0, 0, 0, byte(i + 1)},
			pinPath:    filepath.Join(c.pinRoot, name),
			dataDir:    t.TempDir(),
			subnetFile: filepath.Join(t.TempDir(), "subnet.env"),
			cni:        cniConfig(binDir, t.TempDir()),
		}
		if dual {
			cn.subnet6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, 0, byte(i + 1)}), 64)
		}
		c.nodes = append(c.nodes, cn)
		decap := loader.DecapXDP
		if i%2 == 1 {
			decap = loader.DecapTC
		}
		err = tn.Do(func() error {
			d, err := loader.Load(loader.Options{PinPath: cn.pinPath})
			if err != nil {
				return err
			}
			defer d.Close()
			nc := loader.NodeConfig{Underlay: tn.UnderlayIf, Network: network, Subnet: cn.subnet,
				VtepMAC: cn.vtepMAC, VNI: testVNI, Port: testPort, Decap: decap}
			if cn.subnet6.IsValid() { // IPv6 pods over the IPv4 underlay (v6-in-v4)
				nc.IPv6Network, nc.IPv6Subnet = cniNetwork6, cn.subnet6
			}
			_, err = loader.SetupNode(d, nc)
			return err
		})
		if err != nil {
			t.Fatalf("load data plane on %s: %+v", name, err)
		}
		cn.writeSubnetEnv(t, network, cn.subnet, loader.PodMTU(lab.MTU))
	}
	for _, cn := range c.nodes {
		set, err := maps.OpenPinned(cn.pinPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, peer := range c.nodes {
			if peer == cn {
				continue
			}
			for _, sn := range []netip.Prefix{peer.subnet, peer.subnet6} {
				if !sn.IsValid() {
					continue
				}
				err := set.Tunnels.Put(maps.Tunnel{Subnet: sn, Remote: peer.node.UnderlayIP, VtepMAC: peer.vtepMAC,
					VNI: testVNI, Mode: maps.ModeVXLAN})
				if err != nil {
					t.Fatalf("tunnel %s -> %s: %v", cn.name, peer.name, err)
				}
			}
		}
		set.Close()
	}
	return c
}

// writeSubnetEnv writes flannel's format, FLANNEL_SUBNET as first
// address/len, with the FLANNEL_IPV6_* lines on a dual-stack node.
func (cn *cniNode) writeSubnetEnv(t *testing.T, network, subnet netip.Prefix, mtu int) {
	t.Helper()
	env := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s/%d\n", network, subnet.Masked().Addr().Next(), subnet.Bits())
	if cn.subnet6.IsValid() {
		env += fmt.Sprintf("FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s/%d\n", cniNetwork6, cn.subnet6.Addr().Next(), cn.subnet6.Bits())
	}
	env += fmt.Sprintf("FLANNEL_MTU=%d\nFLANNEL_IPMASQ=false\n", mtu)
	if err := os.WriteFile(cn.subnetFile, []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}
}

// conflist is the node's network configuration as a runtime loads it
// from /etc/cni/net.d: the minimal plugin conf plus this node's paths;
// extra keys are merged into the plugin entry.
func (cn *cniNode) conflist(t *testing.T, cniVersion string, extra map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	plugin := map[string]any{"type": "weft-cni", "subnetFile": cn.subnetFile, "pinPath": cn.pinPath, "dataDir": cn.dataDir}
	for k, v := range extra {
		plugin[k] = v
	}
	b, err := json.Marshal(map[string]any{"cniVersion": cniVersion, "name": "weft", "plugins": []any{plugin}})
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("parse conflist: %v", err)
	}
	return list
}

// Runtime calls. libcni execs the plugin from the calling thread, so each
// call runs on a locked thread inside the node's netns: the plugin's
// "host" netns is the node's, as on a real node.

func (cn *cniNode) add(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error) {
	var res types.Result
	err := cn.node.Do(func() error {
		var err error
		res, err = cn.cni.AddNetworkList(ctx, list, rt)
		return err
	})
	return res, err
}

func (cn *cniNode) check(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return cn.node.Do(func() error { return cn.cni.CheckNetworkList(ctx, list, rt) })
}

func (cn *cniNode) del(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return cn.node.Do(func() error { return cn.cni.DelNetworkList(ctx, list, rt) })
}

func (cn *cniNode) status(ctx context.Context, list *libcni.NetworkConfigList) error {
	return cn.node.Do(func() error { return cn.cni.GetStatusNetworkList(ctx, list) })
}

// cniRuntimeConf is what a runtime passes for one pod.
func cniRuntimeConf(id, netnsPath string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netnsPath, IfName: "eth0"}
}

// cniPodNS creates a pod network namespace named <lab prefix>-<name>, as a
// runtime creates the sandbox's before calling ADD.
func cniPodNS(t *testing.T, c *cniLab, name string) string {
	t.Helper()
	return cniPodNSIn(t, c.lab.Prefix, name)
}

// cniPodNSIn creates <prefix>-<name> and deletes it at cleanup (deleting
// it earlier, as a test of DEL without netns does, is fine).
func cniPodNSIn(t *testing.T, prefix, name string) string {
	t.Helper()
	ns := prefix + "-" + name
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("create pod netns %s: %v: %s", ns, err, out)
	}
	path := filepath.Join(topo.NetnsDir, ns)
	t.Cleanup(func() { cniDeleteNS(path) })
	if err := topo.Do(path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		t.Fatalf("pod netns %s: lo up: %v", ns, err)
	}
	return path
}

// cniDeleteNS removes a pod namespace (the runtime tearing a sandbox
// down); one already gone is fine.
func cniDeleteNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// cniResult converts whatever version libcni returned to 1.0.
func cniResult(t *testing.T, r types.Result) *current.Result {
	t.Helper()
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatalf("convert result: %v", err)
	}
	return res
}

// cniPodIP is the address the result gives the pod's interface.
func cniPodIP(t *testing.T, res *current.Result) netip.Addr {
	t.Helper()
	if len(res.IPs) != 1 {
		t.Fatalf("result has %d addresses, want 1: %v", len(res.IPs), res)
	}
	a, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
	return a.Unmap()
}

// cniPodIPs are a dual-stack result's addresses: IPv4 first, then IPv6,
// each with its gateway (<subnet>.1, <subnet>::1), on the pod's interface.
func cniPodIPs(t *testing.T, res *current.Result) (v4, v6 netip.Addr) {
	t.Helper()
	if len(res.IPs) != 2 {
		t.Fatalf("result has %d addresses, want 2 (IPv4, IPv6): %v", len(res.IPs), res)
	}
	for i, ipc := range res.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		ones, _ := ipc.Address.Mask.Size()
		gw, _ := netip.AddrFromSlice(ipc.Gateway)
		if want := loader.GatewayIP(netip.PrefixFrom(a.Unmap(), ones)); gw.Unmap() != want || ipc.Interface == nil || *ipc.Interface != 1 {
			t.Errorf("result address %d: %v gateway %v interface %v, want gateway %v on interface 1", i, ipc.Address.String(), ipc.Gateway, ipc.Interface, want)
		}
		if i == 0 {
			v4 = a.Unmap()
		} else {
			v6 = a.Unmap()
		}
	}
	if !v4.Is4() || !v6.Is6() {
		t.Fatalf("result addresses %v %v: want IPv4 then IPv6", v4, v6)
	}
	return v4, v6
}

// leftovers lists what any attachment left on the node: weft-cni host
// veths ("weft" + 11 hex digits), /32 and /128 routes into the node subnets,
// endpoint entries, pinned pod links, address reservations, records.
func (cn *cniNode) leftovers(t *testing.T) []string {
	t.Helper()
	var left []string
	err := cn.node.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if n := l.Attrs().Name; strings.HasPrefix(n, "weft") && len(n) == 15 {
				left = append(left, "host veth "+n)
			}
		}
		routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			if ones, bits := r.Dst.Mask.Size(); ones == bits {
				// weft0's own <subnet6>::/128 is the node's, not a pod's.
				if a, ok := netip.AddrFromSlice(r.Dst.IP); ok && (cn.subnet.Contains(a.Unmap()) ||
					cn.subnet6.Contains(a.Unmap()) && a != loader.HostIP(cn.subnet6)) {
					left = append(left, "route "+r.Dst.String())
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("inspect %s: %v", cn.name, err)
	}
	set, err := maps.OpenPinned(cn.pinPath)
	if err != nil {
		t.Fatalf("open maps of %s: %v", cn.name, err)
	}
	defer set.Close()
	eps, err := set.Endpoints.All()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range eps {
		left = append(left, fmt.Sprintf("endpoint %s (ifindex %d)", e.IP, e.IfIndex))
	}
	pods, err := loader.PodLinks(cn.pinPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, idx := range pods {
		left = append(left, "pinned link "+loader.PodLinkName(idx))
	}
	filepath.Walk(filepath.Join(cn.dataDir, "ipam"), func(path string, info os.FileInfo, err error) error {
		// host-local keeps a lock file and a round-robin cursor; every
		// other file is one reserved address.
		if err == nil && !info.IsDir() && info.Name() != "lock" && !strings.HasPrefix(info.Name(), "last_reserved_ip.") {
			left = append(left, "address reservation "+info.Name())
		}
		return nil
	})
	recs, _ := os.ReadDir(filepath.Join(cn.dataDir, "attachments"))
	for _, r := range recs {
		left = append(left, "record "+r.Name())
	}
	return left
}

func (cn *cniNode) assertClean(t *testing.T) {
	t.Helper()
	if left := cn.leftovers(t); len(left) > 0 {
		t.Errorf("node %s not clean: %s", cn.name, strings.Join(left, ", "))
	}
}

// cniPodHasIf reports whether the pod namespace still holds ifName.
func cniPodHasIf(t *testing.T, nsPath, ifName string) bool {
	t.Helper()
	has := false
	if err := topo.Do(nsPath, func() error {
		_, err := netlink.LinkByName(ifName)
		has = err == nil
		return nil
	}); err != nil {
		t.Fatalf("inspect %s: %v", nsPath, err)
	}
	return has
}

// cniPing sends count echo requests from the namespace and wants them all answered.
func cniPing(nsPath string, dst netip.Addr, count int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+nsPath, "--", "ping", "-n", "-q", "-c", fmt.Sprint(count),
		"-W", "1", "-i", "0.2", dst.String()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf(" %d received", count)) {
		return fmt.Errorf("ping %s: %v: %s", dst, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// cniOpenFDs counts this process's open file descriptors.
func cniOpenFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
