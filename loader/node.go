package loader

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/maps"
)

// DefaultHostDevice is the device the one cluster route points at.
const DefaultHostDevice = "weft0"

// NodeConfig is what a node's data plane needs to know about itself. Each
// pod family is present when its network and subnet are given: IPv4
// (Network, Subnet), IPv6 (IPv6Network, IPv6Subnet), or both.
type NodeConfig struct {
	Underlay   string     // underlay NIC name, e.g. eth0
	UnderlayIP netip.Addr // zero: the NIC's first IPv4 address (none on an IPv6-only underlay)
	Network    netip.Prefix
	Subnet     netip.Prefix // this node's IPv4 pod subnet
	// UnderlayIP6 is the node's IPv6 underlay address, the source of outer
	// IPv6 headers; zero: the node has none, and peers reach its IPv6 pods
	// over IPv4 (v6-in-v4, ipv6-contract.md).
	UnderlayIP6 netip.Addr
	IPv6Network netip.Prefix
	IPv6Subnet  netip.Prefix // this node's IPv6 pod subnet
	VtepMAC     net.HardwareAddr
	VNI         uint32
	Port        uint16
	Decap       DecapMode
	HostDevice  string // default DefaultHostDevice
	// NoGRODevice skips weftgro0 (see gro.go), e.g. when another kernel
	// vxlan device must bind the same port. Without it, VXLAN that a router
	// fragmented cannot be delivered (the kernel has no socket to give it to).
	NoGRODevice bool
	// NoGROCell skips the GRO cell (see grocell.go) on tc-decap nodes:
	// decapsulated segments are then delivered one by one where the
	// underlay does not aggregate (the behaviour before the cell; for A/B
	// measurements).
	NoGROCell bool
	// ProbeXDPMeta checks, for Decap == DecapXDP, that the underlay can
	// carry XDP metadata; on error the node uses tc decap and logs a
	// warning. nil: ProbeXDPMeta (the driver check). Tests make it fail.
	ProbeXDPMeta func(ifname string) error `json:"-"`
	// Log receives warnings (nil: none).
	Log *zap.Logger `json:"-"`
}

// HostIP is the node's own address in its subnet: <subnet>.0, on weft0,
// like flannel gives flannel.1.
func HostIP(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr() }

// GatewayIP is the address pods use as their default gateway, <subnet>.1.
// No device owns it: from_pod answers ARP for it.
func GatewayIP(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// PodMTU is the MTU pods get on an underlay of mtu bytes.
func PodMTU(underlayMTU int) int { return underlayMTU - maps.VXLANOverhead }

// VXLAN6Overhead is what encapsulation over an IPv6 underlay adds (outer
// IPv6 40, UDP 8, VXLAN 8, inner Ethernet 14): VXLAN6_OVERHEAD in bpf/.
const VXLAN6Overhead = 70

// PodMTU6 is the MTU of IPv6 pod traffic: it travels over the IPv6
// underlay when the node has one (70 bytes of overhead), else over IPv4
// (v6-in-v4, 50), as ipv6-contract.md says.
func PodMTU6(underlayMTU int, ipv6Underlay bool) int {
	if ipv6Underlay {
		return underlayMTU - VXLAN6Overhead
	}
	return PodMTU(underlayMTU)
}

// PodMTUFor is the one MTU a pod's eth0 gets on a node of nc: the smaller
// of its families' (flannel's FLANNEL_MTU in subnet.env).
func PodMTUFor(nc NodeConfig, underlayMTU int) int {
	mtu := PodMTU(underlayMTU)
	if nc.IPv6Subnet.IsValid() {
		mtu6 := PodMTU6(underlayMTU, nc.UnderlayIP6.IsValid())
		if !nc.Subnet.IsValid() || mtu6 < mtu {
			mtu = mtu6
		}
	}
	return mtu
}

// NodeState is what SetupNode found and made.
type NodeState struct {
	Config     maps.Config
	HostIfName string
	Decap      DecapMode // what runs: DecapTC when XDP was asked for but the probe failed
	PodMTU     int       // PodMTUFor the node: what pods (and subnet.env) get
}

// SetupNode wires this network namespace's node: weft0 with the node's
// address and the single cluster route, the programs on the underlay and
// weft0, and the config map. Idempotent: running it again (a restarted or
// upgraded daemon) converges to the same state without interrupting
// traffic. Must run in the node's network namespace.
func SetupNode(d *Datapath, nc NodeConfig) (NodeState, error) {
	unlock, err := Lock(d.PinPath)
	if err != nil {
		return NodeState{}, err
	}
	defer unlock()
	if nc.HostDevice == "" {
		nc.HostDevice = DefaultHostDevice
	}
	if nc.Decap == "" {
		nc.Decap = DecapTC
	}
	if nc.Log == nil {
		nc.Log = zap.NewNop()
	}
	if nc.ProbeXDPMeta == nil {
		nc.ProbeXDPMeta = ProbeXDPMeta
	}
	if err := nc.checkFamilies(); err != nil {
		return NodeState{}, fmt.Errorf("setup node: %w", err)
	}
	ul, err := netlink.LinkByName(nc.Underlay)
	if err != nil {
		return NodeState{}, fmt.Errorf("setup node: underlay %q: %w", nc.Underlay, err)
	}
	ulIP := nc.UnderlayIP
	if !ulIP.IsValid() {
		if ulIP, err = firstIPv4(ul); err != nil && (nc.Subnet.IsValid() || !nc.UnderlayIP6.IsValid()) {
			return NodeState{}, err
		}
	}
	if nc.UnderlayIP6.IsValid() {
		if err := checkUnderlayIP6(ul, nc.UnderlayIP6); err != nil {
			return NodeState{}, fmt.Errorf("setup node: %w", err)
		}
	}
	if nc.Decap == DecapXDP {
		if err := nc.ProbeXDPMeta(nc.Underlay); err != nil {
			nc.Log.Warn("XDP decapsulation unavailable on this underlay, falling back to --decap=tc",
				zap.String("underlay", nc.Underlay), zap.Error(err))
			nc.Decap = DecapTC
		}
	}
	mtu := ul.Attrs().MTU
	host, err := ensureHostDevice(nc, mtu)
	if err != nil {
		return NodeState{}, err
	}
	if err := setSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return NodeState{}, err
	}
	if nc.IPv6Subnet.IsValid() {
		// What the kernel routes of IPv6 pod traffic (the host's own, NATed
		// flows) it must forward, as for IPv4. Like any IPv6 router, the
		// node then ignores router advertisements unless accept_ra is 2.
		if err := setSysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
			return NodeState{}, err
		}
	}

	cfg := maps.Config{
		UnderlayIfIndex: uint32(ul.Attrs().Index),
		UnderlayIP:      ulIP,
		UnderlayIP6:     nc.UnderlayIP6,
		UnderlayMAC:     ul.Attrs().HardwareAddr,
		HostIfIndex:     uint32(host.Attrs().Index),
		VtepMAC:         nc.VtepMAC,
		VNI:             nc.VNI,
		Port:            nc.Port,
		MTU:             uint16(mtu),
	}
	if nc.Subnet.IsValid() {
		cfg.HostIP = HostIP(nc.Subnet)
	}
	if nc.IPv6Subnet.IsValid() {
		cfg.HostIP6 = HostIP(nc.IPv6Subnet)
	}
	useCell := nc.Decap == DecapTC && !nc.NoGROCell
	if useCell {
		idx, err := d.ensureGROCell(mtu)
		if err != nil {
			return NodeState{}, fmt.Errorf("setup node: %w", err)
		}
		cfg.GROCellIfIndex = uint32(idx)
	}
	// Config before programs: a program attached to an empty config passes
	// everything to the kernel, which is harmless but not what we want.
	// The XDP flag (tc trusts XDP's tags) is raised before XDP is attached
	// and lowered only after it is gone, so no tagged frame meets a tc
	// program that ignores its tag.
	if old, err := d.Maps.Config.Get(); err == nil {
		cfg.Flags = old.Flags & maps.NodeFlagXDPDecap
		cfg.GROIfIndex = old.GROIfIndex // until ensureGRODevice below says otherwise
	}
	if nc.Decap == DecapXDP {
		cfg.Flags |= maps.NodeFlagXDPDecap
	}
	if err := d.Maps.Config.Set(cfg); err != nil {
		return NodeState{}, fmt.Errorf("setup node: %w", err)
	}
	if err := d.AttachHost(host.Attrs().Index); err != nil {
		return NodeState{}, fmt.Errorf("setup node: %w", err)
	}
	if err := d.AttachUnderlay(ul.Attrs().Index, nc.Decap); err != nil {
		return NodeState{}, fmt.Errorf("setup node: %w", err)
	}
	if nc.Decap == DecapTC && cfg.Flags&maps.NodeFlagXDPDecap != 0 {
		cfg.Flags &^= maps.NodeFlagXDPDecap
		if err := d.Maps.Config.Set(cfg); err != nil {
			return NodeState{}, fmt.Errorf("setup node: %w", err)
		}
	}
	// weftgro0's socket gives tc decap GRO and, in both modes, is where
	// the kernel delivers the VXLAN it reassembled from fragments.
	// It is also where the kernel encapsulates what our programs cannot
	// (nested tunnel GSO, see bpf/underlay.h): the config names it.
	groIndex := 0
	if !nc.NoGRODevice {
		if groIndex, err = d.ensureGRODevice(ul.Attrs().Index, nc.Port); err != nil {
			return NodeState{}, fmt.Errorf("setup node: %w", err)
		}
	} else if err := removeGRODevice(d.PinPath); err != nil {
		return NodeState{}, fmt.Errorf("setup node: %w", err)
	}
	if cfg.GROIfIndex != uint32(groIndex) {
		cfg.GROIfIndex = uint32(groIndex)
		if err := d.Maps.Config.Set(cfg); err != nil {
			return NodeState{}, fmt.Errorf("setup node: %w", err)
		}
	}
	// After the config stopped pointing at it.
	if !useCell {
		if err := removeGROCell(d.PinPath); err != nil {
			return NodeState{}, fmt.Errorf("setup node: %w", err)
		}
	}
	if err := d.Upgrade(); err != nil { // pods attached by an older version
		return NodeState{}, fmt.Errorf("setup node: %w", err)
	}
	got, err := d.Maps.Config.Get()
	if err != nil {
		return NodeState{}, err
	}
	return NodeState{Config: got, HostIfName: nc.HostDevice, Decap: nc.Decap, PodMTU: PodMTUFor(nc, mtu)}, nil
}

// checkFamilies accepts a config with at least one pod family, each with
// its subnet inside its network.
func (nc NodeConfig) checkFamilies() error {
	fam := func(name string, network, subnet netip.Prefix, is4 bool) error {
		switch {
		case !network.IsValid() && !subnet.IsValid():
			return nil
		case !subnet.IsValid() || !network.IsValid() || !network.Contains(subnet.Addr()) || subnet.Bits() < network.Bits():
			return fmt.Errorf("%s subnet %v not inside network %v", name, subnet, network)
		case subnet.Addr().Is4() != is4 || network.Addr().Is4() != is4 || subnet.Addr().Is4In6():
			return fmt.Errorf("%s subnet %v or network %v of the wrong family", name, subnet, network)
		}
		return nil
	}
	if err := fam("IPv4", nc.Network, nc.Subnet, true); err != nil {
		return err
	}
	if err := fam("IPv6", nc.IPv6Network, nc.IPv6Subnet, false); err != nil {
		return err
	}
	switch {
	case !nc.Subnet.IsValid() && !nc.IPv6Subnet.IsValid():
		return fmt.Errorf("subnet %v not inside network %v", nc.Subnet, nc.Network)
	case nc.UnderlayIP6.IsValid() && (!nc.UnderlayIP6.Is6() || nc.UnderlayIP6.Is4In6()):
		return fmt.Errorf("%w: %v is not IPv6", ErrUnderlayIP6, nc.UnderlayIP6)
	case !nc.Subnet.IsValid() && !nc.UnderlayIP6.IsValid():
		return errors.New("an IPv6-only node needs an IPv6 underlay address")
	}
	return nil
}

// ensureHostDevice makes weft0: a dummy device, or an ifb where the kernel
// has no dummy driver (both are single NOARP Ethernet devices; weft0 only
// needs an egress hook, the program redirects everything), MAC = VtepMAC so decapsulated packets
// for the host are accepted on its ingress, address <subnet>.0/32, and the
// one route for the whole cluster network. The route goes via <subnet>.1
// onlink so the kernel keeps a single neighbour entry instead of one per
// destination.
func ensureHostDevice(nc NodeConfig, underlayMTU int) (netlink.Link, error) {
	name := nc.HostDevice
	l, err := netlink.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if !errors.As(err, &notFound) {
			return nil, fmt.Errorf("look up %s: %w", name, err)
		}
		if err := addHostLink(name, nc.VtepMAC); err != nil {
			return nil, err
		}
		if l, err = netlink.LinkByName(name); err != nil {
			return nil, fmt.Errorf("look up %s: %w", name, err)
		}
	} else if l.Type() != "dummy" && l.Type() != "ifb" {
		return nil, fmt.Errorf("%s exists and is a %s, not a dummy or ifb", name, l.Type())
	}
	if err := hostIPv6(name, nc.IPv6Subnet.IsValid()); err != nil {
		return nil, err
	}
	if l.Attrs().HardwareAddr.String() != nc.VtepMAC.String() {
		// ifb cannot change its MAC once created: recreate it (the VtepMAC is
		// stable per node, so this only happens when an operator changes it).
		if err := netlink.LinkSetHardwareAddr(l, nc.VtepMAC); err != nil {
			if err := netlink.LinkDel(l); err != nil {
				return nil, fmt.Errorf("recreate %s with new MAC: %w", name, err)
			}
			if err := addHostLink(name, nc.VtepMAC); err != nil {
				return nil, err
			}
			if l, err = netlink.LinkByName(name); err != nil {
				return nil, fmt.Errorf("look up %s: %w", name, err)
			}
		}
	}
	if l.Attrs().MTU != PodMTUFor(nc, underlayMTU) {
		if err := netlink.LinkSetMTU(l, PodMTUFor(nc, underlayMTU)); err != nil {
			return nil, fmt.Errorf("set %s MTU: %w", name, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}

	if err := hostRoutes(l, netlink.FAMILY_V4, nc.Network, nc.Subnet, PodMTU(underlayMTU)); err != nil {
		return nil, err
	}
	if nc.IPv6Subnet.IsValid() { // else IPv6 is off on weft0, and its addresses and routes with it
		if err := hostRoutes(l, netlink.FAMILY_V6, nc.IPv6Network, nc.IPv6Subnet, PodMTU6(underlayMTU, nc.UnderlayIP6.IsValid())); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// hostIPv6 turns IPv6 on weft0 on or off. Off (an IPv4 network), weft0
// would only send router solicitations into from_host. On, it carries the
// node's IPv6 address and the IPv6 cluster route, and nothing else: no
// link-local address (addr_gen_mode 1), no router solicitations, no
// autoconfiguration from advertisements, no duplicate address detection.
// Set before IPv6 comes up, so none of them ever happens.
func hostIPv6(name string, on bool) error {
	dir := "net/ipv6/conf/" + name + "/"
	if !on {
		if err := setSysctl(dir+"disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	for _, kv := range [][2]string{{"addr_gen_mode", "1"}, {"accept_ra", "0"}, {"router_solicitations", "0"},
		{"accept_dad", "0"}, {"dad_transmits", "0"}, {"disable_ipv6", "0"}} {
		if err := setSysctl(dir+kv[0], kv[1]); err != nil {
			return fmt.Errorf("enable IPv6 on %s: %w", name, err)
		}
	}
	return nil
}

// hostRoutes gives weft0 one family's address (<subnet> first address,
// /32 or /128, like flannel.1 and flannel-v6.1) and the one route for the
// whole cluster network of that family, and removes addresses of that
// family left from an earlier subnet. The route goes via <subnet>.1
// (<subnet>::1) onlink so the kernel keeps a single neighbour entry instead
// of one per destination. A family the node does not have (zero subnet)
// gets no address and no route; an earlier one's are removed.
func hostRoutes(l netlink.Link, family int, network, subnet netip.Prefix, mtu int) error {
	name := l.Attrs().Name
	var hostIP netip.Addr
	if subnet.IsValid() {
		hostIP = HostIP(subnet)
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: hostIP.AsSlice(), Mask: net.CIDRMask(hostIP.BitLen(), hostIP.BitLen())}}
		if family == netlink.FAMILY_V6 {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(l, addr); err != nil {
			return fmt.Errorf("add %s to %s: %w", hostIP, name, err)
		}
	}
	// Drop addresses of an earlier subnet (a node that got a new lease).
	addrs, err := netlink.AddrList(l, family)
	if err != nil {
		return fmt.Errorf("list %s addresses: %w", name, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() != hostIP {
			if err := netlink.AddrDel(l, &a); err != nil {
				return fmt.Errorf("remove stale address %s from %s: %w", a.IP, name, err)
			}
		}
	}
	if !subnet.IsValid() {
		return nil
	}
	route := &netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       prefixToIPNet(network),
		Gw:        GatewayIP(subnet).AsSlice(),
		Src:       hostIP.AsSlice(),
		Flags:     int(netlink.FLAG_ONLINK),
		MTU:       mtu,
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("add cluster route %s dev %s: %w", network, name, err)
	}
	return nil
}

// addHostLink creates weft0 as a dummy, or as an ifb on kernels built
// without the dummy driver. Packets never reach either driver's transmit:
// from_host redirects or drops them at tc egress.
func addHostLink(name string, mac net.HardwareAddr) error {
	attrs := netlink.LinkAttrs{Name: name, HardwareAddr: mac}
	err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: attrs})
	if errors.Is(err, unix.EOPNOTSUPP) {
		err = netlink.LinkAdd(&netlink.Ifb{LinkAttrs: attrs})
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create %s: %w", name, err)
	}
	return nil
}

// TeardownNode removes weft0 (and with it the cluster route), the managed
// neighbour entries of DirectRouting peers (Neighbours) and every pin:
// the node stops forwarding. Must run in the node's network namespace.
func TeardownNode(pinPath, hostDevice string) error {
	if hostDevice == "" {
		hostDevice = DefaultHostDevice
	}
	var errs []error
	if l, err := netlink.LinkByName(hostDevice); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", hostDevice, err))
		}
	}
	unlock, err := Lock(pinPath)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer unlock()
	// Before the pins go: the tunnels map says which entries are ours.
	errs = append(errs, forgetDirectNeighbours(pinPath))
	errs = append(errs, removeGRODevice(pinPath))
	errs = append(errs, removeGROCell(pinPath))
	errs = append(errs, remove(pinPath))
	return errors.Join(errs...)
}

func firstIPv4(l netlink.Link) (netip.Addr, error) {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap().Is4() {
			return ip.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("underlay %s has no IPv4 address", l.Attrs().Name)
}

// ErrUnderlayIP6 is returned (wrapped) by SetupNode when NodeConfig's
// UnderlayIP6 is not a plain IPv6 address of the underlay device: outer
// IPv6 headers from an address the node does not own would be answered to
// someone else, and an IPv4-mapped one is an IPv4 address in disguise.
var ErrUnderlayIP6 = errors.New("bad IPv6 underlay address")

func checkUnderlayIP6(l netlink.Link, ip netip.Addr) error {
	if !ip.Is6() || ip.Is4In6() || ip.IsUnspecified() || ip.IsMulticast() || ip.IsLinkLocalUnicast() || ip.IsLoopback() {
		return fmt.Errorf("%w: %v is not a global or unique-local IPv6 unicast address", ErrUnderlayIP6, ip)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return fmt.Errorf("list IPv6 addresses of %s: %w", l.Attrs().Name, err)
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got == ip {
			return nil
		}
	}
	return fmt.Errorf("%w: %v is not an address of %s", ErrUnderlayIP6, ip, l.Attrs().Name)
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// setSysctl writes /proc/sys/<key> of the calling thread's network namespace.
func setSysctl(key, value string) error {
	path := filepath.Join("/proc/sys", key)
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", key, value, err)
	}
	return nil
}
