package topo

// A node programmed the way flannel's vxlan backend (v0.9+, "v3") programs
// it, so Weft can be measured against it and must interoperate with it. The
// reference is flannel pkg/backend/vxlan: device.go (link attributes, ARP and
// FDB entries), vxlan.go (the /32 address), vxlan_network.go (per-peer
// entries and their order). Per remote host flannel installs exactly:
//
//	route  <subnet> via <subnet>.0 dev flannel.<VNI> onlink
//	neigh  <subnet>.0 lladdr <VtepMAC> dev flannel.<VNI> permanent
//	fdb    <VtepMAC> dst <PublicIP> dev flannel.<VNI> self permanent
//
// and never listens for L2/L3 misses. Pods hang off bridge cni0 holding
// <subnet>.1, as flannel's CNI plugin delegates to the bridge plugin.
//
// A dual-stack (or IPv6-only) flannel node has a second device,
// flannel-v6.<VNI>, whose local address is the node's IPv6 underlay
// address (flannel's PublicIPv6; flannel carries IPv6 pods only over an
// IPv6 underlay), MTU underlay - 70 (outer IPv6 is 20 bytes longer), a
// MAC of its own (BackendV6Data's VtepMAC) and <subnet6>::/128; per remote
// host with an IPv6 lease:
//
//	route  <subnet6> via <subnet6>:: dev flannel-v6.<VNI> onlink
//	neigh  <subnet6>:: lladdr <VtepMAC6> dev flannel-v6.<VNI> permanent
//	fdb    <VtepMAC6> dst <PublicIPv6> dev flannel-v6.<VNI> self permanent
//
// and cni0 also holds <subnet6>::1/<len>, the pods' IPv6 gateway.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// FlannelBridge is the pod bridge flannel's CNI configuration uses.
	FlannelBridge = "cni0"
	// FlannelEncapOverhead is what flannel subtracts from the underlay MTU:
	// outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
	FlannelEncapOverhead = 50
	// FlannelEncapOverhead6 is the same over an IPv6 underlay (outer IPv6 40).
	FlannelEncapOverhead6 = 70
	// FlannelDefaultPort is the Linux vxlan driver's (and flannel's) default
	// UDP port; IANA's is 4789.
	FlannelDefaultPort = 8472
)

// FlannelOptions configures SetupFlannelVXLAN.
type FlannelOptions struct {
	Subnet  netip.Prefix     // this node's IPv4 pod subnet, e.g. 10.244.1.0/24; invalid: IPv6 only
	VNI     int              // default 1
	Port    int              // UDP destination port, default 8472
	VtepMAC net.HardwareAddr // nil: random, locally administered
	// Subnet6, if valid, is the node's IPv6 pod subnet (e.g.
	// fc00:10:244:1::/64): flannel-v6.<VNI> is made too. The node needs an
	// IPv6 underlay address.
	Subnet6 netip.Prefix
	// VtepMAC6 is flannel-v6.<VNI>'s MAC; nil: random.
	VtepMAC6 net.HardwareAddr
}

// FlannelInfo describes a node's flannel-style setup.
type FlannelInfo struct {
	Device       string // "flannel.<VNI>"; "" on an IPv6-only node
	DeviceIndex  int
	Subnet       netip.Prefix
	VtepMAC      net.HardwareAddr
	VNI          int
	Port         int
	MTU          int          // underlay MTU - 50, of flannel.<VNI>
	Gateway      netip.Addr   // <subnet>.1 on cni0, the pods' default gateway
	BridgePrefix netip.Prefix // <subnet>.1/<len>

	// IPv6 (valid Subnet6 only).
	Device6       string // "flannel-v6.<VNI>"
	DeviceIndex6  int
	Subnet6       netip.Prefix
	VtepMAC6      net.HardwareAddr
	MTU6          int          // underlay MTU - 70, of flannel-v6.<VNI>
	Gateway6      netip.Addr   // <subnet6>::1 on cni0
	BridgePrefix6 netip.Prefix // <subnet6>::1/<len>
}

// PodMTU is the MTU of cni0 and the pods: the smaller of the devices'
// (one eth0 carries both families), so neither family's full-size packet
// is too big for its vxlan device.
func (f *FlannelInfo) PodMTU() int {
	switch {
	case f.Device == "":
		return f.MTU6
	case f.Device6 == "":
		return f.MTU
	}
	return min(f.MTU, f.MTU6)
}

// PodOptions returns the options for a pod with address ip (a host address
// of the node's subnet) on this flannel node: on cni0, default route via
// <subnet>.1, flannel's MTU.
func (f *FlannelInfo) PodOptions(ip netip.Addr) PodOptions {
	return f.PodOptionsFor(ip, netip.Addr{})
}

// PodOptionsFor is PodOptions for a pod with an IPv4 address ip, an IPv6
// address ip6 (of Subnet6, gateway <subnet6>::1), or both; either may be
// invalid.
func (f *FlannelInfo) PodOptionsFor(ip, ip6 netip.Addr) PodOptions {
	o := PodOptions{MTU: f.PodMTU(), Bridge: FlannelBridge}
	if ip.IsValid() {
		o.IP, o.Gateway = netip.PrefixFrom(ip, f.Subnet.Bits()), f.Gateway
	}
	if ip6.IsValid() {
		o.IP6, o.Gateway6 = netip.PrefixFrom(ip6, f.Subnet6.Bits()), f.Gateway6
	}
	return o
}

// FlannelPeer is another flannel host as its subnet lease describes it.
// The IPv6 fields are set for a lease with an IPv6 subnet and PublicIPv6.
type FlannelPeer struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
	VtepMAC  net.HardwareAddr

	Subnet6   netip.Prefix
	PublicIP6 netip.Addr
	VtepMAC6  net.HardwareAddr
}

func (p FlannelPeer) has4() bool {
	return p.Subnet.IsValid() && p.PublicIP.IsValid() && len(p.VtepMAC) == 6
}

func (p FlannelPeer) has6() bool {
	return p.Subnet6.IsValid() && p.PublicIP6.IsValid() && len(p.VtepMAC6) == 6
}

// SetupFlannelVXLAN creates flannel.<VNI> (and flannel-v6.<VNI> for an
// IPv6 subnet) and cni0 in the node exactly as flanneld and flannel's CNI
// plugin would, and returns the VTEP MAC to advertise to peers (the IPv4
// device's; Flannel.VtepMAC6 is the IPv6 one's).
func (n *Node) SetupFlannelVXLAN(o FlannelOptions) (net.HardwareAddr, error) {
	f, err := n.flannelInfo(o)
	if err != nil {
		return nil, fmt.Errorf("set up flannel vxlan on %s: %w", n.Name, err)
	}
	if err := withHandle(n.NSPath, func(h *netlink.Handle) error {
		if f.Device != "" {
			idx, err := f.addDevice(h, f.Device, f.VtepMAC, f.MTU, n.UnderlayIP, hostPrefix(f.Subnet.Addr()), n)
			if err != nil {
				return err
			}
			f.DeviceIndex = idx
			// flannel sets this and ignores failures (IPv6 may be disabled).
			n.SetSysctl("net/ipv6/conf/"+f.Device+"/accept_ra", "0")
		}
		if f.Device6 != "" {
			idx, err := f.addDevice(h, f.Device6, f.VtepMAC6, f.MTU6, n.UnderlayIP6, hostPrefix(f.Subnet6.Addr()), n)
			if err != nil {
				return err
			}
			f.DeviceIndex6 = idx
			n.SetSysctl("net/ipv6/conf/"+f.Device6+"/accept_ra", "0")
		}
		return f.addBridge(h)
	}); err != nil {
		return nil, fmt.Errorf("set up flannel vxlan on %s: %w", n.Name, err)
	}
	n.Flannel = f
	if f.Device == "" {
		return f.VtepMAC6, nil
	}
	return f.VtepMAC, nil
}

func (n *Node) flannelInfo(o FlannelOptions) (*FlannelInfo, error) {
	if n.Flannel != nil {
		return nil, errors.New("already set up")
	}
	if o.Subnet.IsValid() && !o.Subnet.Addr().Is4() || !o.Subnet.IsValid() && !o.Subnet6.IsValid() {
		return nil, fmt.Errorf("subnet %v: want an IPv4 prefix (or only Subnet6)", o.Subnet)
	}
	if o.Subnet6.IsValid() && (!o.Subnet6.Addr().Is6() || o.Subnet6.Addr().Is4In6()) {
		return nil, fmt.Errorf("subnet6 %v: want an IPv6 prefix", o.Subnet6)
	}
	if o.Subnet.IsValid() && !n.UnderlayIP.IsValid() {
		return nil, errors.New("an IPv4 pod subnet needs an IPv4 underlay address")
	}
	if o.Subnet6.IsValid() && !n.UnderlayIP6.IsValid() {
		return nil, errors.New("flannel carries IPv6 pods only over an IPv6 underlay: the node has no IPv6 underlay address")
	}
	f := &FlannelInfo{VNI: o.VNI, Port: o.Port, VtepMAC: o.VtepMAC, VtepMAC6: o.VtepMAC6}
	if f.VNI == 0 {
		f.VNI = 1
	}
	if f.Port == 0 {
		f.Port = FlannelDefaultPort
	}
	if o.Subnet.IsValid() {
		f.Subnet = o.Subnet.Masked()
		if f.VtepMAC == nil {
			f.VtepMAC = randomMAC()
		}
		f.Device = fmt.Sprintf("flannel.%d", f.VNI)
		f.MTU = n.Lab.MTU - FlannelEncapOverhead
		gw, err := hostAddr(f.Subnet, 1)
		if err != nil {
			return nil, fmt.Errorf("bridge address: %w", err)
		}
		f.Gateway = gw
		f.BridgePrefix = netip.PrefixFrom(gw, f.Subnet.Bits())
	}
	if o.Subnet6.IsValid() {
		f.Subnet6 = o.Subnet6.Masked()
		if f.VtepMAC6 == nil {
			f.VtepMAC6 = randomMAC()
		}
		f.Device6 = fmt.Sprintf("flannel-v6.%d", f.VNI)
		f.MTU6 = n.Lab.MTU - FlannelEncapOverhead6
		gw, err := hostAddr(f.Subnet6, 1)
		if err != nil {
			return nil, fmt.Errorf("bridge address: %w", err)
		}
		f.Gateway6 = gw
		f.BridgePrefix6 = netip.PrefixFrom(gw, f.Subnet6.Bits())
	}
	return f, nil
}

// addDevice creates one vxlan link with flannel's attributes, local
// address local, and gives it addr, the subnet's first address as a /32
// (/128): no broadcast or subnet route, and the source for host-to-pod
// traffic across the overlay.
func (f *FlannelInfo) addDevice(h *netlink.Handle, name string, mac net.HardwareAddr, mtu int, local netip.Addr, addr netip.Prefix, n *Node) (int, error) {
	vx := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: name, HardwareAddr: mac, MTU: mtu},
		VxlanId:      f.VNI,
		VtepDevIndex: n.UnderlayIfIndex,
		SrcAddr:      local.AsSlice(),
		Port:         f.Port,
		Learning:     false,
		GBP:          false,
	}
	if err := h.LinkAdd(vx); err != nil {
		return 0, fmt.Errorf("add %s: %w", name, err)
	}
	link, err := h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(addr), Flags: nodad(addr.Addr())}); err != nil {
		return 0, fmt.Errorf("add address %v to %s: %w", addr, name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return 0, fmt.Errorf("set %s up: %w", name, err)
	}
	return link.Attrs().Index, nil
}

// nodad is IFA_F_NODAD for an IPv6 address: every address the lab adds is
// unique by construction.
func nodad(a netip.Addr) int {
	if a.Is6() {
		return unix.IFA_F_NODAD
	}
	return 0
}

// addBridge creates cni0 with <subnet>.1/<len> (and <subnet6>::1/<len>),
// as the bridge CNI plugin does on the first pod (isGateway); its MTU is
// the pods'.
func (f *FlannelInfo) addBridge(h *netlink.Handle) error {
	br, err := ensureBridge(h, FlannelBridge, f.PodMTU())
	if err != nil {
		return err
	}
	for _, p := range []netip.Prefix{f.BridgePrefix, f.BridgePrefix6} {
		if !p.IsValid() {
			continue
		}
		if err := h.AddrAdd(br, &netlink.Addr{IPNet: ipNet(p), Flags: nodad(p.Addr())}); err != nil {
			return fmt.Errorf("add address %v to %s: %w", p, FlannelBridge, err)
		}
	}
	return nil
}

// peerEntries are the three per-peer entries of one family, built exactly
// as flannel builds them so that deletion matches too.
type peerEntries struct {
	route      *netlink.Route
	neigh, fdb *netlink.Neigh
	sub        string
}

func peerEntriesFor(devIndex int, subnet netip.Prefix, publicIP netip.Addr, vtep net.HardwareAddr) peerEntries {
	sn := subnet.Masked()
	r := &netlink.Route{
		LinkIndex: devIndex,
		Scope:     netlink.SCOPE_UNIVERSE,
		Dst:       ipNet(sn),
		Gw:        sn.Addr().AsSlice(),
	}
	r.SetFlag(netlink.FLAG_ONLINK)
	return peerEntries{
		route: r,
		neigh: &netlink.Neigh{
			LinkIndex:    devIndex,
			State:        netlink.NUD_PERMANENT,
			Type:         unix.RTN_UNICAST,
			IP:           sn.Addr().AsSlice(),
			HardwareAddr: vtep,
		},
		fdb: &netlink.Neigh{
			LinkIndex:    devIndex,
			State:        netlink.NUD_PERMANENT,
			Family:       unix.AF_BRIDGE,
			Flags:        netlink.NTF_SELF,
			IP:           publicIP.AsSlice(),
			HardwareAddr: vtep,
		},
		sub: sn.String(),
	}
}

// entries lists the peer's entries for each family both this node and
// the peer have.
func (f *FlannelInfo) entries(p FlannelPeer) []peerEntries {
	var out []peerEntries
	if f.Device != "" && p.has4() {
		out = append(out, peerEntriesFor(f.DeviceIndex, p.Subnet, p.PublicIP, p.VtepMAC))
	}
	if f.Device6 != "" && p.has6() {
		out = append(out, peerEntriesFor(f.DeviceIndex6, p.Subnet6, p.PublicIP6, p.VtepMAC6))
	}
	return out
}

// AddFlannelPeer installs the route, neighbour and FDB entry for a remote
// flannel host, per family, in flannel's order: the route last, because
// once it exists the kernel would otherwise ARP (solicit) for the gateway
// into the void. On failure it removes what it added, as flannel does.
func (n *Node) AddFlannelPeer(p FlannelPeer) error {
	f, err := n.flannelFor(p)
	if err != nil {
		return fmt.Errorf("add flannel peer: %w", err)
	}
	return withHandle(n.NSPath, func(h *netlink.Handle) error {
		for _, e := range f.entries(p) {
			if err := h.NeighSet(e.neigh); err != nil {
				return fmt.Errorf("add flannel peer %v: neighbour: %w", e.sub, err)
			}
			if err := h.NeighSet(e.fdb); err != nil {
				return errors.Join(fmt.Errorf("add flannel peer %v: fdb: %w", e.sub, err), h.NeighDel(e.neigh))
			}
			if err := h.RouteReplace(e.route); err != nil {
				return errors.Join(fmt.Errorf("add flannel peer %v: route: %w", e.sub, err),
					h.NeighDel(e.neigh), h.NeighDel(e.fdb))
			}
		}
		return nil
	})
}

// RemoveFlannelPeer removes the entries of both families, trying all of
// them even if one fails, like flannel's EventRemoved handling.
func (n *Node) RemoveFlannelPeer(p FlannelPeer) error {
	f, err := n.flannelFor(p)
	if err != nil {
		return fmt.Errorf("remove flannel peer: %w", err)
	}
	return withHandle(n.NSPath, func(h *netlink.Handle) error {
		var errs []error
		for _, e := range f.entries(p) {
			if err := h.NeighDel(e.neigh); err != nil {
				errs = append(errs, fmt.Errorf("remove flannel peer %v: neighbour: %w", e.sub, err))
			}
			if err := h.NeighDel(e.fdb); err != nil {
				errs = append(errs, fmt.Errorf("remove flannel peer %v: fdb: %w", e.sub, err))
			}
			if err := h.RouteDel(e.route); err != nil {
				errs = append(errs, fmt.Errorf("remove flannel peer %v: route: %w", e.sub, err))
			}
		}
		return errors.Join(errs...)
	})
}

func (n *Node) flannelFor(p FlannelPeer) (*FlannelInfo, error) {
	if n.Flannel == nil {
		return nil, fmt.Errorf("node %s has no flannel setup", n.Name)
	}
	if !p.has4() && !p.has6() {
		return nil, fmt.Errorf("incomplete peer %+v", p)
	}
	return n.Flannel, nil
}

// FlannelPeer returns how this node appears to other flannel nodes.
func (n *Node) FlannelPeer() FlannelPeer {
	f := n.Flannel
	if f == nil {
		return FlannelPeer{}
	}
	var p FlannelPeer
	if f.Device != "" {
		p.Subnet, p.PublicIP, p.VtepMAC = f.Subnet, n.UnderlayIP, f.VtepMAC
	}
	if f.Device6 != "" {
		p.Subnet6, p.PublicIP6, p.VtepMAC6 = f.Subnet6, n.UnderlayIP6, f.VtepMAC6
	}
	return p
}
