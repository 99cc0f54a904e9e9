package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
)

// These tests run the plugin's functions in-process, on a thread inside a
// node netns (as the runtime would exec the plugin), so failures can be
// injected between ADD's steps. test/cni_*_test.go drives the built binary
// through libcni.

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// inNS runs fn on a locked OS thread inside the netns at path. The thread
// goes back to its namespace afterwards, or dies (stays locked) if it cannot.
func inNS(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err)
			return // still locked: the runtime discards the thread
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// newNetns creates /var/run/netns/<name> and removes it at cleanup.
func newNetns(t *testing.T, name string) string {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("create netns %s: %v: %s", name, err, out)
	}
	path := "/var/run/netns/" + name
	t.Cleanup(func() { deleteNetns(name) })
	return path
}

func deleteNetns(name string) {
	path := "/var/run/netns/" + name
	unix.Unmount(path, unix.MNT_DETACH)
	os.Remove(path)
}

// testNode is a Weft node in its own netns, set up as weftd would: data
// plane pinned, weft0, subnet.env; a pod netns beside it.
type testNode struct {
	prefix     string
	nsPath     string
	pinPath    string
	dataDir    string
	subnetFile string
	subnet     netip.Prefix // IPv4 pod subnet; zero on an IPv6-only node
	subnet6    netip.Prefix // IPv6 pod subnet; zero without IPv6
	mtu        int
}

func newTestNode(t *testing.T, subnet string) *testNode {
	t.Helper()
	return newTestNode6(t, subnet, "")
}

// newTestNode6 is a node with an IPv4 subnet, an IPv6 subnet or both (""
// for a family it lacks), set up as weftd would (an IPv6-only node on an
// IPv6 underlay address, a dual-stack one v6-in-v4).
func newTestNode6(t *testing.T, subnet, subnet6 string) *testNode {
	t.Helper()
	n := &testNode{
		prefix:     "wcni" + randHex(3),
		dataDir:    t.TempDir(),
		subnetFile: filepath.Join(t.TempDir(), "subnet.env"),
		mtu:        loader.PodMTU(1500),
	}
	if subnet != "" {
		n.subnet = netip.MustParsePrefix(subnet).Masked()
	}
	if subnet6 != "" {
		n.subnet6 = netip.MustParsePrefix(subnet6).Masked()
	}
	nc := loader.NodeConfig{Underlay: "ul0", VtepMAC: net.HardwareAddr{0x0e, 0, 0, 0, 0, 1}, VNI: 1, Port: 8472, Decap: loader.DecapTC}
	if n.subnet.IsValid() {
		nc.Network, nc.Subnet = netip.MustParsePrefix("10.0.0.0/8"), n.subnet
	}
	if n.subnet6.IsValid() {
		nc.IPv6Network, nc.IPv6Subnet = netip.MustParsePrefix("fd00::/16"), n.subnet6
	}
	if !n.subnet.IsValid() {
		nc.UnderlayIP6 = netip.MustParseAddr("fd99::1")
	}
	n.nsPath = newNetns(t, n.prefix+"-node")
	for _, args := range [][]string{
		{"link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"},
		{"addr", "add", "192.168.99.1/24", "dev", "ul0"},
		{"addr", "add", "fd99::1/64", "dev", "ul0", "nodad"},
		{"link", "set", "ul0", "up"}, {"link", "set", "ul0p", "up"}, {"link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", n.prefix + "-node"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	if err := loader.EnsureBPFFS(loader.BPFFSRoot); err != nil {
		t.Fatal(err)
	}
	parent := filepath.Join(loader.BPFFSRoot, "weft-test-"+n.prefix)
	n.pinPath = filepath.Join(parent, "node")
	t.Cleanup(func() {
		inNS(n.nsPath, func() error { return loader.TeardownNode(n.pinPath, "") })
		os.RemoveAll(parent)
	})
	err := inNS(n.nsPath, func() error {
		d, err := loader.Load(loader.Options{PinPath: n.pinPath})
		if err != nil {
			return err
		}
		defer d.Close()
		_, err = loader.SetupNode(d, nc)
		return err
	})
	if err != nil {
		t.Fatalf("set up node data plane: %+v", err)
	}
	n.writeSubnetEnv(t)
	return n
}

func (n *testNode) writeSubnetEnv(t *testing.T) {
	t.Helper()
	var env string
	if n.subnet.IsValid() {
		env += fmt.Sprintf("FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=%s/%d\n", n.subnet.Addr().Next(), n.subnet.Bits())
	}
	if n.subnet6.IsValid() {
		env += fmt.Sprintf("FLANNEL_IPV6_NETWORK=fd00::/16\nFLANNEL_IPV6_SUBNET=%s/%d\n", n.subnet6.Addr().Next(), n.subnet6.Bits())
	}
	env += fmt.Sprintf("FLANNEL_MTU=%d\nFLANNEL_IPMASQ=false\n", n.mtu)
	if err := os.WriteFile(n.subnetFile, []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}
}

// confJSON is the network config the runtime would pass, with prevResult
// when given (CHECK, DEL).
func (n *testNode) confJSON(t *testing.T, prev *current.Result) []byte {
	t.Helper()
	conf := map[string]any{
		"cniVersion": "1.0.0", "name": "weft", "type": "weft-cni",
		"subnetFile": n.subnetFile, "pinPath": n.pinPath, "dataDir": n.dataDir,
	}
	if prev != nil {
		b, _ := json.Marshal(prev)
		var raw map[string]any
		json.Unmarshal(b, &raw)
		conf["prevResult"] = raw
	}
	b, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (n *testNode) args(t *testing.T, id, podNS string, prev *current.Result) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: id, Netns: podNS, IfName: "eth0", StdinData: n.confJSON(t, prev)}
}

func (n *testNode) add(t *testing.T, a *skel.CmdArgs) (*current.Result, error) {
	t.Helper()
	conf, err := loadConf(a.StdinData)
	if err != nil {
		return nil, err
	}
	var res *current.Result
	err = inNS(n.nsPath, func() error {
		var err error
		res, err = add(conf, a)
		return err
	})
	return res, err
}

func (n *testNode) del(t *testing.T, a *skel.CmdArgs) error {
	t.Helper()
	return inNS(n.nsPath, func() error { return cmdDel(a) })
}

func (n *testNode) check(t *testing.T, a *skel.CmdArgs) error {
	t.Helper()
	return inNS(n.nsPath, func() error { return cmdCheck(a) })
}

// assertClean fails unless the node holds nothing of any attachment: no
// weft-cni veth, no endpoint entry, no pinned pod link, no address file,
// no record, no /32 or /128 route; and the pod netns (if still there) no eth0.
func (n *testNode) assertClean(t *testing.T, podNS string) {
	t.Helper()
	for _, s := range n.leftovers(t, podNS) {
		t.Error("left behind: " + s)
	}
}

func (n *testNode) leftovers(t *testing.T, podNS string) []string {
	t.Helper()
	var left []string
	err := inNS(n.nsPath, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, hostVethPrefix) && len(l.Attrs().Name) == 15 {
				left = append(left, "host veth "+l.Attrs().Name)
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
			a := netip.MustParseAddr(r.Dst.IP.String()).Unmap()
			// weft0's own <subnet6>::/128 is the node's, not a pod's.
			if ones, bits := r.Dst.Mask.Size(); ones == bits && (n.subnet.Contains(a) || n.subnet6.Contains(a) && a != loader.HostIP(n.subnet6)) {
				left = append(left, "route "+r.Dst.String())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("inspect node: %v", err)
	}
	set, err := maps.OpenPinned(n.pinPath)
	if err != nil {
		t.Fatalf("open maps: %v", err)
	}
	defer set.Close()
	eps, err := set.Endpoints.All()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range eps {
		left = append(left, fmt.Sprintf("endpoint %s ifindex %d", e.IP, e.IfIndex))
	}
	pods, err := loader.PodLinks(n.pinPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		left = append(left, "pinned link "+loader.PodLinkName(p))
	}
	left = append(left, ipamFiles(t, n.dataDir)...)
	recs, _ := os.ReadDir(recordDir(n.dataDir))
	for _, r := range recs {
		left = append(left, "record "+r.Name())
	}
	if podNS != "" {
		if _, err := os.Stat(podNS); err == nil {
			inNS(podNS, func() error {
				if _, err := netlink.LinkByName("eth0"); err == nil {
					left = append(left, "pod eth0 in "+podNS)
				}
				return nil
			})
		}
	}
	return left
}

// ipamFiles lists address reservations in the store: every file but
// host-local's lock and its round-robin cursor.
func ipamFiles(t *testing.T, dataDir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(ipamDir(dataDir), func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return nil
		}
		if b := filepath.Base(path); b != "lock" && !strings.HasPrefix(b, "last_reserved_ip.") {
			out = append(out, "address reservation "+b)
		}
		return nil
	})
	return out
}

// ping sends count echo requests from the netns at nsPath and wants every reply.
func ping(nsPath string, dst netip.Addr, count int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+nsPath, "--", "ping", "-n", "-q", "-c", fmt.Sprint(count),
		"-W", "1", "-i", "0.2", dst.String()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf(" %d received", count)) {
		return fmt.Errorf("ping %s from %s: %v: %s", dst, filepath.Base(nsPath), err, out)
	}
	return nil
}
