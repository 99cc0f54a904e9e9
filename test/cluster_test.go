package test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/topo"
)

// staticCluster is the data-plane-only cluster of issue 2: Weft nodes whose
// maps are filled directly (no daemon), beside flannel-style kernel-vxlan
// nodes, all on one underlay segment.
type staticCluster struct {
	lab     *topo.Lab
	network netip.Prefix
	nodes   []*clusterNode
	pinRoot string
}

type clusterNode struct {
	name    string
	node    *topo.Node
	subnet  netip.Prefix
	vtepMAC net.HardwareAddr
	weft    bool             // false: kernel vxlan, flannel v3 style
	decap   loader.DecapMode // Weft nodes only
	noGRO   bool
	direct  map[string]bool
	pinPath string
	pods    []*topo.Pod
}

type nodePlan struct {
	name   string
	weft   bool
	decap  loader.DecapMode
	direct []string            // peers reached without encapsulation (DirectRouting)
	routed *topo.RoutedOptions // non-nil: behind two routers (topo.AddRoutedNode)
	noGRO  bool                // Weft without weftgro0 (--gro-device=false)
}

const (
	testVNI  = 1
	testPort = 8472
)

// newStaticCluster builds the nodes in plan with podsPerNode pods each.
// Node i gets subnet 10.244.<i+1>.0/24 and VtepMAC 0e:77:00:00:00:<i+1>.
func newStaticCluster(t *testing.T, plan []nodePlan, podsPerNode int) *staticCluster {
	t.Helper()
	lab, err := topo.New(topo.Options{})
	if err != nil {
		t.Fatalf("create lab: %v", err)
	}
	c := &staticCluster{lab: lab, network: netip.MustParsePrefix("10.244.0.0/16")}
	c.pinRoot = filepath.Join(loader.BPFFSRoot, "weft-test-"+lab.Prefix)
	t.Cleanup(func() {
		for _, n := range c.nodes {
			if n.weft {
				n.node.Do(func() error { return loader.TeardownNode(n.pinPath, "") })
			}
		}
		os.RemoveAll(c.pinRoot)
		if err := lab.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})

	for i, p := range plan {
		var n *topo.Node
		var err error
		if p.routed != nil {
			n, err = lab.AddRoutedNode(p.name, *p.routed)
		} else {
			n, err = lab.AddNode(p.name)
		}
		if err != nil {
			t.Fatalf("add node %s: %v", p.name, err)
		}
		cn := &clusterNode{
			name:    p.name,
			node:    n,
			subnet:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24),
			vtepMAC: net.HardwareAddr{0x0e, 0x77, 0, 0, 0, byte(i + 1)},
			weft:    p.weft,
			decap:   p.decap,
			noGRO:   p.noGRO,
			direct:  map[string]bool{},
			pinPath: filepath.Join(c.pinRoot, p.name),
		}
		for _, d := range p.direct {
			cn.direct[d] = true
		}
		c.nodes = append(c.nodes, cn)
	}

	for _, cn := range c.nodes {
		gw := loader.GatewayIP(cn.subnet)
		bridge := ""
		if !cn.weft {
			if _, err := cn.node.SetupFlannelVXLAN(topo.FlannelOptions{Subnet: cn.subnet, VNI: testVNI, Port: testPort, VtepMAC: cn.vtepMAC}); err != nil {
				t.Fatalf("flannel vxlan on %s: %v", cn.name, err)
			}
			bridge = "cni0"
		}
		for j := 0; j < podsPerNode; j++ {
			ip := netip.PrefixFrom(addrAdd(cn.subnet.Addr(), 2+j), cn.subnet.Bits())
			pod, err := cn.node.AddPod(fmt.Sprintf("p%d", j+1), topo.PodOptions{IP: ip, Gateway: gw, MTU: loader.PodMTU(1500), Bridge: bridge, GatewayByARP: true})
			if err != nil {
				t.Fatalf("add pod on %s: %v", cn.name, err)
			}
			cn.pods = append(cn.pods, pod)
		}
	}

	// Program every node with every other node, each the way it expects.
	for _, cn := range c.nodes {
		var tunnels []maps.Tunnel
		for _, peer := range c.nodes {
			if peer == cn {
				continue
			}
			if cn.weft {
				mode := maps.ModeVXLAN
				if cn.direct[peer.name] {
					mode = maps.ModeDirect
				}
				tunnels = append(tunnels, maps.Tunnel{Subnet: peer.subnet, Remote: peer.node.UnderlayIP,
					VtepMAC: peer.vtepMAC, VNI: testVNI, Mode: mode})
			} else if err := cn.node.AddFlannelPeer(topo.FlannelPeer{Subnet: peer.subnet, PublicIP: peer.node.UnderlayIP, VtepMAC: peer.vtepMAC}); err != nil {
				t.Fatalf("flannel peer %s on %s: %v", peer.name, cn.name, err)
			}
		}
		if !cn.weft {
			continue
		}
		var eps []maps.Endpoint
		for _, p := range cn.pods {
			eps = append(eps, maps.Endpoint{IP: p.IP, IfIndex: uint32(p.HostIfIndex), MAC: p.MAC, HostMAC: p.HostMAC})
		}
		spec := nodeSpec{
			NSPath:  cn.node.NSPath,
			PinPath: cn.pinPath,
			Node: loader.NodeConfig{
				Underlay:    cn.node.UnderlayIf,
				Network:     c.network,
				Subnet:      cn.subnet,
				VtepMAC:     cn.vtepMAC,
				VNI:         testVNI,
				Port:        testPort,
				Decap:       cn.decap,
				NoGRODevice: cn.noGRO,
			},
			Endpoints: eps,
			Tunnels:   tunnels,
		}
		if err := loadNodeInChild(spec); err != nil {
			t.Fatalf("load node %s: %v", cn.name, err)
		}
	}
	return c
}

func (c *staticCluster) node(name string) *clusterNode {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	panic("no node " + name)
}

// stats opens a Weft node's pinned maps (works with no Weft process running).
func (cn *clusterNode) stats(t *testing.T) map[string]uint64 {
	t.Helper()
	set, err := maps.OpenPinned(cn.pinPath)
	if err != nil {
		t.Fatalf("open pinned maps of %s: %v", cn.name, err)
	}
	defer set.Close()
	snap, err := set.Stats.Snapshot()
	if err != nil {
		t.Fatalf("read stats of %s: %v", cn.name, err)
	}
	return snap
}

func addrAdd(a netip.Addr, n int) netip.Addr {
	for ; n > 0; n-- {
		a = a.Next()
	}
	return a
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
