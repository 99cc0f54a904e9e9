// Package cluster builds a small static cluster (no daemon, no etcd) on a
// topo.Lab with one chosen data plane, for the benchmarks and the lab:
//
//	host-gw            plain kernel routes, no encapsulation (flannel host-gw): the limit
//	kernel-vxlan       a vxlan device programmed the flannel v3 way, pods on cni0
//	kernel-collect-md  an external-mode (collect_md) vxlan device driven by tc BPF
//	                   (test/cluster/collectmd), the way Cilium encapsulates
//	weft-tc            Weft, decapsulating at tc ingress
//	weft-xdp           Weft, decapsulating in XDP
//	weft-direct        Weft with DirectRouting: BPF forwarding, no encapsulation
//	                   (what the tunnel costs, against what skipping the
//	                   node stacks saves; host-gw's counterpart)
//
// and, for A/B runs only (MoreDataPlanes), weft-tc-nocell and
// weft-direct-nocell: the same without the GRO cell (loader/grocell.go).
//
// Node i (0-based) is named "a", "b", ..., owns pod subnet 10.244.<i+1>.0/24
// and VtepMAC 0e:77:00:00:00:<i+1>; its pods get <subnet>.2, .3, ... Every
// node knows every other node before New returns.
//
// With Options.Network6 the pods are dual-stack: node i also owns the /64
// number i+1 of Network6 (fd00:10:244:<i+1>::/64 by default's shape) and
// its pods get ::2, ::3, ... IPv6 pods travel over the IPv6 underlay where
// the lab has one (Lab.UnderlayCIDR6: host-gw routes via the peer's IPv6
// address, kernel-vxlan's flannel-v6.<VNI>, Weft tunnels to the peer's
// IPv6 address); Weft alone also carries them over an IPv4-only underlay
// (v6-in-v4), which host-gw and flannel cannot. Everything lives in the
// lab's namespaces; Weft's pins go under PinRoot/<node>.
package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/topo"
)

// DataPlane names one way of carrying pod traffic between nodes.
type DataPlane string

const (
	HostGW          DataPlane = "host-gw"
	KernelVXLAN     DataPlane = "kernel-vxlan"
	KernelCollectMD DataPlane = "kernel-collect-md"
	WeftTC          DataPlane = "weft-tc"
	WeftXDP         DataPlane = "weft-xdp"
	WeftDirect      DataPlane = "weft-direct"
	// WeftTCNoCell is weft-tc without the GRO cell (loader.NodeConfig.NoGROCell):
	// the receive path before aggregation after decap existed, for A/B runs.
	WeftTCNoCell DataPlane = "weft-tc-nocell"
	// WeftDirectNoCell is weft-direct without the GRO cell, for A/B runs.
	WeftDirectNoCell DataPlane = "weft-direct-nocell"
)

// DataPlanes lists every data plane, baselines first.
var DataPlanes = []DataPlane{HostGW, KernelVXLAN, KernelCollectMD, WeftTC, WeftXDP, WeftDirect}

// MoreDataPlanes are built on request only (bench --dataplanes), for A/B runs.
var MoreDataPlanes = []DataPlane{WeftTCNoCell, WeftDirectNoCell}

// ParseDataPlane accepts one of DataPlanes' or MoreDataPlanes' names.
func ParseDataPlane(s string) (DataPlane, error) {
	all := append(slices.Clone(DataPlanes), MoreDataPlanes...)
	for _, d := range all {
		if string(d) == s {
			return d, nil
		}
	}
	names := make([]string, len(all))
	for i, d := range all {
		names[i] = string(d)
	}
	return "", fmt.Errorf("data plane %q: want one of %s", s, strings.Join(names, ", "))
}

// Weft reports whether d is one of Weft's flavours.
func (d DataPlane) Weft() bool {
	return d == WeftTC || d == WeftXDP || d == WeftDirect || d == WeftTCNoCell || d == WeftDirectNoCell
}

// direct reports whether d routes between nodes without encapsulation.
func (d DataPlane) direct() bool { return d == WeftDirect || d == WeftDirectNoCell }

// Encap reports whether d encapsulates (every data plane but host-gw and weft-direct).
func (d DataPlane) Encap() bool { return d != HostGW && !d.direct() }

// Defaults for Options.
var (
	DefaultNetwork = netip.MustParsePrefix("10.244.0.0/16")
)

const (
	DefaultVNI  = 1
	DefaultPort = topo.FlannelDefaultPort
	// CollectMDDevice is the external-mode vxlan device of kernel-collect-md nodes.
	CollectMDDevice = "vxlan_md"
	// CollectMDTTL is the outer TTL kernel-collect-md puts in the tunnel key.
	CollectMDTTL = 64
)

// Options configures New; the zero value (plus a DataPlane) is usable.
type Options struct {
	DataPlane   DataPlane
	Nodes       int  // default 2
	PodsPerNode int  // default 1
	WireLike    bool // wire-like underlay offloads (topo.Lab.SetWireLike); same as Offloads: topo.WireLike
	// Offloads shapes the underlay veths (topo.Offloads); WireLike wins if set.
	Offloads topo.Offloads
	// Lab is passed to topo.New (prefix, underlay, MTU, logs).
	Lab topo.Options
	// PinRoot holds Weft's pins, one directory per node. Default
	// /sys/fs/bpf/weft-cluster-<lab prefix>. Removed by Close.
	PinRoot string
	Network netip.Prefix // default 10.244.0.0/16
	// Network6, if valid, makes the pods dual-stack (see the package
	// comment); a /48 to /63, e.g. fd00:10:244::/48.
	Network6 netip.Prefix
	VNI      uint32 // default 1
	Port     uint16 // default 8472
	// UnderlayNetfilter keeps br_netfilter's iptables hooks on the underlay
	// bridge (the kernel's default in a new namespace). By default they are
	// switched off there: the bridge stands in for a switch, and every frame
	// of every data plane would otherwise pay for them. Node-side bridges
	// (flannel's cni0) keep them, as on a Kubernetes node.
	UnderlayNetfilter bool
}

// Cluster is a built cluster; Close it (also after a failed use).
type Cluster struct {
	Lab       *topo.Lab
	DataPlane DataPlane
	Network   netip.Prefix
	Network6  netip.Prefix // invalid: IPv4 pods only
	VNI       uint32
	Port      uint16
	PinRoot   string
	Nodes     []*Node
}

// Node is one host of the cluster.
type Node struct {
	Name    string
	Topo    *topo.Node
	Subnet  netip.Prefix
	Subnet6 netip.Prefix // with Options.Network6
	VtepMAC net.HardwareAddr
	PinPath string // Weft nodes: where the node's data plane is pinned
	Pods    []*topo.Pod

	cmd *collectMD // kernel-collect-md nodes
}

// New builds the lab, the nodes, their pods and the data plane. On error
// everything built so far is removed.
func New(o Options) (c *Cluster, err error) {
	if _, err := ParseDataPlane(string(o.DataPlane)); err != nil {
		return nil, err
	}
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Nodes > 200 {
		return nil, fmt.Errorf("%d nodes: at most 200", o.Nodes)
	}
	if o.PodsPerNode == 0 {
		o.PodsPerNode = 1
	}
	if !o.Network.IsValid() {
		o.Network = DefaultNetwork
	}
	if o.VNI == 0 {
		o.VNI = DefaultVNI
	}
	if o.Network6.IsValid() {
		if err := checkNetwork6(o); err != nil {
			return nil, err
		}
	}
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	lab, err := topo.New(o.Lab)
	if err != nil {
		return nil, fmt.Errorf("create lab: %w", err)
	}
	c = &Cluster{Lab: lab, DataPlane: o.DataPlane, Network: o.Network.Masked(), Network6: o.Network6.Masked(), VNI: o.VNI, Port: o.Port, PinRoot: o.PinRoot}
	if c.PinRoot == "" {
		c.PinRoot = filepath.Join(loader.BPFFSRoot, "weft-cluster-"+lab.Prefix)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
			c = nil
		}
	}()
	if !o.UnderlayNetfilter {
		if err := disableBridgeNetfilter(lab.UnderlayPath); err != nil {
			return c, err
		}
	}
	if o.WireLike {
		o.Offloads = topo.WireLike
	}
	if o.Offloads != topo.VethDefaults {
		// Before any node exists: nodes inherit it as they are added.
		if err := lab.SetOffloads(o.Offloads); err != nil {
			return c, err
		}
	}
	base := o.Network.Masked().Addr().As4()
	for i := 0; i < o.Nodes; i++ {
		name := string(rune('a' + i%26))
		if i >= 26 {
			name = fmt.Sprintf("n%d", i)
		}
		tn, err := lab.AddNode(name)
		if err != nil {
			return c, err
		}
		c.Nodes = append(c.Nodes, &Node{
			Name:    name,
			Topo:    tn,
			Subnet:  netip.PrefixFrom(netip.AddrFrom4([4]byte{base[0], base[1], byte(i + 1), 0}), 24),
			Subnet6: subnet6(c.Network6, i+1),
			VtepMAC: net.HardwareAddr{0x0e, 0x77, 0, 0, 0, byte(i + 1)},
			PinPath: filepath.Join(c.PinRoot, name),
		})
	}
	for _, n := range c.Nodes {
		if err := c.addPods(n, o.PodsPerNode); err != nil {
			return c, err
		}
	}
	for _, n := range c.Nodes {
		if err := c.program(n); err != nil {
			return c, fmt.Errorf("program node %s (%s): %w", n.Name, c.DataPlane, err)
		}
	}
	return c, nil
}

// PodMTU is the MTU the data plane gives pods: the underlay's for host-gw,
// 50 bytes less for every encapsulating data plane, 70 less where IPv6
// pods travel over an IPv6 underlay (one eth0 serves both families).
func (c *Cluster) PodMTU() int {
	switch {
	case !c.DataPlane.Encap():
		return c.Lab.MTU
	case c.v6OverV6():
		return c.Lab.MTU - ipv6EncapOverhead
	}
	return loader.PodMTU(c.Lab.MTU)
}

// ipv6EncapOverhead is what VXLAN over an IPv6 underlay adds (outer IPv6
// 40 + UDP 8 + VXLAN 8 + inner Ethernet 14).
const ipv6EncapOverhead = topo.FlannelEncapOverhead6

// v6OverV6 says IPv6 pods exist and travel over an IPv6 underlay.
func (c *Cluster) v6OverV6() bool { return c.Network6.IsValid() && c.Lab.UnderlayCIDR6.IsValid() }

// checkNetwork6 refuses what the data plane cannot do with IPv6 pods.
func checkNetwork6(o Options) error {
	if !o.Network6.Addr().Is6() || o.Network6.Addr().Is4In6() || o.Network6.Bits() > 63 || o.Network6.Bits() < 48 {
		return fmt.Errorf("Network6 %v: want an IPv6 prefix of /48 to /63", o.Network6)
	}
	switch {
	case o.DataPlane == KernelCollectMD:
		return fmt.Errorf("data plane %s: no IPv6 pods (its tc programs are IPv4 only)", o.DataPlane)
	case (o.DataPlane == HostGW || o.DataPlane == KernelVXLAN) && !o.Lab.UnderlayCIDR6.IsValid():
		return fmt.Errorf("data plane %s: IPv6 pods need an IPv6 underlay (Lab.UnderlayCIDR6)", o.DataPlane)
	}
	return nil
}

// subnet6 is the /64 number i of network (invalid network: invalid).
func subnet6(network netip.Prefix, i int) netip.Prefix {
	if !network.IsValid() {
		return netip.Prefix{}
	}
	b := network.Masked().Addr().As16()
	b[6], b[7] = b[6]|byte(i>>8), b[7]|byte(i)
	return netip.PrefixFrom(netip.AddrFrom16(b), 64)
}

func (c *Cluster) addPods(n *Node, count int) error {
	gw := loader.GatewayIP(n.Subnet)
	if c.DataPlane == KernelVXLAN {
		if _, err := n.Topo.SetupFlannelVXLAN(topo.FlannelOptions{Subnet: n.Subnet, Subnet6: n.Subnet6,
			VNI: int(c.VNI), Port: int(c.Port), VtepMAC: n.VtepMAC, VtepMAC6: vtepMAC6(n.VtepMAC)}); err != nil {
			return err
		}
	}
	for j := 0; j < count; j++ {
		ip := nth(n.Subnet.Addr(), 2+j)
		var ip6 netip.Addr
		if n.Subnet6.IsValid() {
			ip6 = nth(n.Subnet6.Addr(), 2+j)
		}
		var po topo.PodOptions
		switch c.DataPlane {
		case KernelVXLAN:
			po = n.Topo.Flannel.PodOptionsFor(ip, ip6)
		case WeftTC, WeftXDP, WeftDirect, WeftTCNoCell, WeftDirectNoCell:
			// Weft's from_pod answers the pod's ARP and Neighbour
			// Solicitations for its gateways, as with weft-cni.
			po = topo.PodOptions{IP: netip.PrefixFrom(ip, n.Subnet.Bits()), Gateway: gw, MTU: c.PodMTU(), GatewayByARP: true}
		default:
			// Routed veth, static gateway neighbour: host-gw's kernel forwarding
			// or collect-md's BPF takes it from there.
			po = topo.PodOptions{IP: netip.PrefixFrom(ip, n.Subnet.Bits()), Gateway: gw, MTU: c.PodMTU()}
		}
		if ip6.IsValid() && c.DataPlane != KernelVXLAN {
			po.IP6, po.Gateway6 = netip.PrefixFrom(ip6, n.Subnet6.Bits()), loader.GatewayIP(n.Subnet6)
		}
		p, err := n.Topo.AddPod(fmt.Sprintf("p%d", j+1), po)
		if err != nil {
			return err
		}
		n.Pods = append(n.Pods, p)
	}
	return nil
}

func nth(a netip.Addr, n int) netip.Addr {
	for ; n > 0; n-- {
		a = a.Next()
	}
	return a
}

func (c *Cluster) peers(n *Node) []*Node {
	var out []*Node
	for _, p := range c.Nodes {
		if p != n {
			out = append(out, p)
		}
	}
	return out
}

func (c *Cluster) tunnels(n *Node) []maps.Tunnel {
	mode := maps.ModeVXLAN
	if c.DataPlane.direct() {
		mode = maps.ModeDirect
	}
	var ts []maps.Tunnel
	for _, p := range c.peers(n) {
		ts = append(ts, maps.Tunnel{Subnet: p.Subnet, Remote: p.Topo.UnderlayIP, VtepMAC: p.VtepMAC, VNI: c.VNI, Mode: mode})
		if p.Subnet6.IsValid() {
			// The peer's IPv6 underlay address where there is one (outer
			// IPv6), else its IPv4 one (v6-in-v4): the contract's rule.
			remote := p.Topo.UnderlayIP
			if p.Topo.UnderlayIP6.IsValid() {
				remote = p.Topo.UnderlayIP6
			}
			ts = append(ts, maps.Tunnel{Subnet: p.Subnet6, Remote: remote, VtepMAC: p.VtepMAC, VNI: c.VNI, Mode: mode})
		}
	}
	return ts
}

// endpoints are the node's pods as the endpoints map holds them: one entry
// per address, a dual-stack pod's two sharing its veth.
func endpoints(n *Node) []maps.Endpoint {
	var eps []maps.Endpoint
	for _, p := range n.Pods {
		for _, a := range p.Addrs() {
			eps = append(eps, maps.Endpoint{IP: a, IfIndex: uint32(p.HostIfIndex), MAC: p.MAC, HostMAC: p.HostMAC})
		}
	}
	return eps
}

func (c *Cluster) program(n *Node) error {
	switch c.DataPlane {
	case HostGW:
		for _, p := range c.peers(n) {
			if err := n.Topo.AddRoute(p.Subnet, p.Topo.UnderlayIP); err != nil {
				return err
			}
			if p.Subnet6.IsValid() {
				if err := n.Topo.AddRoute(p.Subnet6, p.Topo.UnderlayIP6); err != nil {
					return err
				}
			}
		}
		return nil
	case KernelVXLAN:
		for _, p := range c.peers(n) {
			if err := n.Topo.AddFlannelPeer(p.Topo.FlannelPeer()); err != nil {
				return err
			}
		}
		return nil
	case KernelCollectMD:
		cmd, err := setupCollectMD(c, n)
		if err != nil {
			return err
		}
		n.cmd = cmd
		return nil
	}
	return c.loadWeft(n)
}

// loadWeft brings up a Weft node the way weftd and weft-cni would, from
// inside the node's namespace: programs and maps pinned under n.PinPath,
// config, tunnels to every peer, one endpoint and from_pod link per pod.
// This process keeps no handle: the data plane runs on its pins.
func (c *Cluster) loadWeft(n *Node) error {
	decap := loader.DecapTC
	switch c.DataPlane {
	case WeftXDP:
		decap = loader.DecapXDP
	}
	return n.Topo.Do(func() error {
		d, err := loader.Load(loader.Options{PinPath: n.PinPath})
		if err != nil {
			return err
		}
		defer d.Close()
		st, err := loader.SetupNode(d, loader.NodeConfig{
			Underlay:    n.Topo.UnderlayIf,
			Network:     c.Network,
			Subnet:      n.Subnet,
			UnderlayIP6: n.Topo.UnderlayIP6, // zero on an IPv4 underlay: v6-in-v4
			IPv6Network: c.Network6,
			IPv6Subnet:  n.Subnet6,
			VtepMAC:     n.VtepMAC,
			VNI:         c.VNI,
			Port:        c.Port,
			Decap:       decap,
			NoGROCell:   c.DataPlane == WeftTCNoCell || c.DataPlane == WeftDirectNoCell,
		})
		if err != nil {
			return err
		}
		// As weftd's reconciler does: a managed neighbour entry per direct
		// peer's underlay address, so the receive check knows every peer
		// before its first packet (TeardownNode removes them).
		neigh := loader.NewNeighbours(int(st.Config.UnderlayIfIndex))
		for _, t := range c.tunnels(n) {
			if err := d.Maps.Tunnels.Put(t); err != nil {
				return err
			}
			if t.Mode == maps.ModeDirect {
				if err := neigh.Keep(t.Remote); err != nil {
					return err
				}
			}
		}
		for _, e := range endpoints(n) {
			if err := d.Maps.Endpoints.Put(e); err != nil {
				return err
			}
		}
		for _, p := range n.Pods {
			if err := d.AttachPod(p.HostIfIndex); err != nil {
				return err
			}
		}
		return nil
	})
}

// Stats returns a node's data-plane counters (Weft and kernel-collect-md
// nodes; nil for the kernel-only data planes).
func (c *Cluster) Stats(n *Node) (map[string]uint64, error) {
	switch {
	case c.DataPlane.Weft():
		set, err := maps.OpenPinned(n.PinPath)
		if err != nil {
			return nil, err
		}
		defer set.Close()
		return set.Stats.Snapshot()
	case n.cmd != nil:
		return maps.NewStatsMap(n.cmd.objs.Stats).Snapshot()
	}
	return nil, nil
}

// Counters returns a node's data-plane counters with packets and bytes
// (Weft and kernel-collect-md nodes; nil for the kernel-only data planes).
func (c *Cluster) Counters(n *Node) ([]maps.Counter, error) {
	switch {
	case c.DataPlane.Weft():
		set, err := maps.OpenPinned(n.PinPath)
		if err != nil {
			return nil, err
		}
		defer set.Close()
		return set.Stats.All()
	case n.cmd != nil:
		return maps.NewStatsMap(n.cmd.objs.Stats).All()
	}
	return nil, nil
}

// Close tears the data plane down and deletes the lab; idempotent.
func (c *Cluster) Close() error {
	if c == nil || c.Lab == nil {
		return nil
	}
	var errs []error
	for _, n := range c.Nodes {
		if n.cmd != nil {
			errs = append(errs, n.cmd.Close())
			n.cmd = nil
		}
		if c.DataPlane.Weft() {
			if _, err := os.Stat(n.PinPath); err == nil {
				errs = append(errs, n.Topo.Do(func() error { return loader.TeardownNode(n.PinPath, "") }))
			}
		}
	}
	if c.DataPlane.Weft() {
		if err := os.RemoveAll(c.PinRoot); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	errs = append(errs, c.Lab.Close())
	c.Lab = nil
	return errors.Join(errs...)
}

// disableBridgeNetfilter turns off br_netfilter's hooks in one namespace
// (the sysctls are per network namespace; absent without br_netfilter).
func disableBridgeNetfilter(nsPath string) error {
	return topo.Do(nsPath, func() error {
		for _, k := range []string{"iptables", "ip6tables", "arptables"} {
			err := os.WriteFile("/proc/sys/net/bridge/bridge-nf-call-"+k, []byte("0"), 0o644)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("underlay: disable bridge-nf-call-%s: %w", k, err)
			}
		}
		return nil
	})
}

// vtepMAC6 is a kernel-vxlan node's flannel-v6 MAC: its own, as flanneld
// gives each device (0e:77:00:00:06:<i+1>).
func vtepMAC6(mac net.HardwareAddr) net.HardwareAddr {
	m := append(net.HardwareAddr(nil), mac...)
	m[4] = 0x06
	return m
}
