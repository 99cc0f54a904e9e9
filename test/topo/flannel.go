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
	// FlannelDefaultPort is the Linux vxlan driver's (and flannel's) default
	// UDP port; IANA's is 4789.
	FlannelDefaultPort = 8472
)

// FlannelOptions configures SetupFlannelVXLAN.
type FlannelOptions struct {
	Subnet  netip.Prefix     // this node's pod subnet, e.g. 10.244.1.0/24
	VNI     int              // default 1
	Port    int              // UDP destination port, default 8472
	VtepMAC net.HardwareAddr // nil: random, locally administered
}

// FlannelInfo describes a node's flannel-style setup.
type FlannelInfo struct {
	Device       string // "flannel.<VNI>"
	DeviceIndex  int
	Subnet       netip.Prefix
	VtepMAC      net.HardwareAddr
	VNI          int
	Port         int
	MTU          int          // underlay MTU - 50, of flannel.<VNI>, cni0 and pods
	Gateway      netip.Addr   // <subnet>.1 on cni0, the pods' default gateway
	BridgePrefix netip.Prefix // <subnet>.1/<len>
}

// PodOptions returns the options for a pod with address ip (a host address
// of the node's subnet) on this flannel node: on cni0, default route via
// <subnet>.1, flannel's MTU.
func (f *FlannelInfo) PodOptions(ip netip.Addr) PodOptions {
	return PodOptions{
		IP:      netip.PrefixFrom(ip, f.Subnet.Bits()),
		Gateway: f.Gateway,
		MTU:     f.MTU,
		Bridge:  FlannelBridge,
	}
}

// FlannelPeer is another flannel host as its subnet lease describes it.
type FlannelPeer struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
	VtepMAC  net.HardwareAddr
}

// SetupFlannelVXLAN creates flannel.<VNI> and cni0 in the node exactly as
// flanneld and flannel's CNI plugin would, and returns the VTEP MAC to
// advertise to peers.
func (n *Node) SetupFlannelVXLAN(o FlannelOptions) (net.HardwareAddr, error) {
	f, err := n.flannelInfo(o)
	if err != nil {
		return nil, fmt.Errorf("set up flannel vxlan on %s: %w", n.Name, err)
	}
	if err := withHandle(n.NSPath, func(h *netlink.Handle) error {
		if err := f.addDevice(h, n); err != nil {
			return err
		}
		// flannel sets this and ignores failures (IPv6 may be disabled).
		n.SetSysctl("net/ipv6/conf/"+f.Device+"/accept_ra", "0")
		return f.addBridge(h)
	}); err != nil {
		return nil, fmt.Errorf("set up flannel vxlan on %s: %w", n.Name, err)
	}
	n.Flannel = f
	return f.VtepMAC, nil
}

func (n *Node) flannelInfo(o FlannelOptions) (*FlannelInfo, error) {
	if n.Flannel != nil {
		return nil, errors.New("already set up")
	}
	if !o.Subnet.IsValid() || !o.Subnet.Addr().Is4() {
		return nil, fmt.Errorf("subnet %v: want an IPv4 prefix", o.Subnet)
	}
	f := &FlannelInfo{Subnet: o.Subnet.Masked(), VNI: o.VNI, Port: o.Port, VtepMAC: o.VtepMAC}
	if f.VNI == 0 {
		f.VNI = 1
	}
	if f.Port == 0 {
		f.Port = FlannelDefaultPort
	}
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
	return f, nil
}

// addDevice creates the vxlan link with flannel's attributes and gives it
// the /32 address <subnet>.0: a /32 creates no broadcast or subnet route,
// and the address is the source for host-to-pod traffic across the overlay.
func (f *FlannelInfo) addDevice(h *netlink.Handle, n *Node) error {
	vx := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: f.Device, HardwareAddr: f.VtepMAC, MTU: f.MTU},
		VxlanId:      f.VNI,
		VtepDevIndex: n.UnderlayIfIndex,
		SrcAddr:      n.UnderlayIP.AsSlice(),
		Port:         f.Port,
		Learning:     false,
		GBP:          false,
	}
	if err := h.LinkAdd(vx); err != nil {
		return fmt.Errorf("add %s: %w", f.Device, err)
	}
	link, err := h.LinkByName(f.Device)
	if err != nil {
		return fmt.Errorf("find %s: %w", f.Device, err)
	}
	f.DeviceIndex = link.Attrs().Index
	addr := hostPrefix(f.Subnet.Addr())
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("add address %v to %s: %w", addr, f.Device, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", f.Device, err)
	}
	return nil
}

// addBridge creates cni0 with <subnet>.1/<len>, as the bridge CNI plugin
// does on the first pod (isGateway); its MTU is flannel's.
func (f *FlannelInfo) addBridge(h *netlink.Handle) error {
	br, err := ensureBridge(h, FlannelBridge, f.MTU)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(br, &netlink.Addr{IPNet: ipNet(f.BridgePrefix)}); err != nil {
		return fmt.Errorf("add address %v to %s: %w", f.BridgePrefix, FlannelBridge, err)
	}
	return nil
}

// The three per-peer entries, built exactly as flannel builds them so that
// deletion matches too.
func (f *FlannelInfo) peerRoute(p FlannelPeer) *netlink.Route {
	sn := p.Subnet.Masked()
	r := &netlink.Route{
		LinkIndex: f.DeviceIndex,
		Scope:     netlink.SCOPE_UNIVERSE,
		Dst:       ipNet(sn),
		Gw:        sn.Addr().AsSlice(),
	}
	r.SetFlag(netlink.FLAG_ONLINK)
	return r
}

func (f *FlannelInfo) peerNeigh(p FlannelPeer) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    f.DeviceIndex,
		State:        netlink.NUD_PERMANENT,
		Type:         unix.RTN_UNICAST,
		IP:           p.Subnet.Masked().Addr().AsSlice(),
		HardwareAddr: p.VtepMAC,
	}
}

func (f *FlannelInfo) peerFDB(p FlannelPeer) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    f.DeviceIndex,
		State:        netlink.NUD_PERMANENT,
		Family:       unix.AF_BRIDGE,
		Flags:        netlink.NTF_SELF,
		IP:           p.PublicIP.AsSlice(),
		HardwareAddr: p.VtepMAC,
	}
}

// AddFlannelPeer installs the route, neighbour and FDB entry for a remote
// flannel host, in flannel's order: the route last, because once it exists
// the kernel would otherwise ARP for <subnet>.0 into the void. On failure it
// removes what it added, as flannel does.
func (n *Node) AddFlannelPeer(p FlannelPeer) error {
	f, err := n.flannelFor(p)
	if err != nil {
		return fmt.Errorf("add flannel peer: %w", err)
	}
	return withHandle(n.NSPath, func(h *netlink.Handle) error {
		if err := h.NeighSet(f.peerNeigh(p)); err != nil {
			return fmt.Errorf("add flannel peer %v: neighbour: %w", p.Subnet, err)
		}
		if err := h.NeighSet(f.peerFDB(p)); err != nil {
			return errors.Join(fmt.Errorf("add flannel peer %v: fdb: %w", p.Subnet, err),
				h.NeighDel(f.peerNeigh(p)))
		}
		if err := h.RouteReplace(f.peerRoute(p)); err != nil {
			return errors.Join(fmt.Errorf("add flannel peer %v: route: %w", p.Subnet, err),
				h.NeighDel(f.peerNeigh(p)), h.NeighDel(f.peerFDB(p)))
		}
		return nil
	})
}

// RemoveFlannelPeer removes the three entries, trying all of them even if
// one fails, like flannel's EventRemoved handling.
func (n *Node) RemoveFlannelPeer(p FlannelPeer) error {
	f, err := n.flannelFor(p)
	if err != nil {
		return fmt.Errorf("remove flannel peer: %w", err)
	}
	return withHandle(n.NSPath, func(h *netlink.Handle) error {
		var errs []error
		if err := h.NeighDel(f.peerNeigh(p)); err != nil {
			errs = append(errs, fmt.Errorf("remove flannel peer %v: neighbour: %w", p.Subnet, err))
		}
		if err := h.NeighDel(f.peerFDB(p)); err != nil {
			errs = append(errs, fmt.Errorf("remove flannel peer %v: fdb: %w", p.Subnet, err))
		}
		if err := h.RouteDel(f.peerRoute(p)); err != nil {
			errs = append(errs, fmt.Errorf("remove flannel peer %v: route: %w", p.Subnet, err))
		}
		return errors.Join(errs...)
	})
}

func (n *Node) flannelFor(p FlannelPeer) (*FlannelInfo, error) {
	if n.Flannel == nil {
		return nil, fmt.Errorf("node %s has no flannel setup", n.Name)
	}
	if !p.Subnet.IsValid() || !p.PublicIP.IsValid() || len(p.VtepMAC) != 6 {
		return nil, fmt.Errorf("incomplete peer %+v", p)
	}
	return n.Flannel, nil
}

// FlannelPeer returns how this node appears to other flannel nodes.
func (n *Node) FlannelPeer() FlannelPeer {
	if n.Flannel == nil {
		return FlannelPeer{}
	}
	return FlannelPeer{Subnet: n.Flannel.Subnet, PublicIP: n.UnderlayIP, VtepMAC: n.Flannel.VtepMAC}
}
