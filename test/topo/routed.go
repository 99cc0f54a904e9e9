package topo

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// A routed node sits on its own segment, two routers away from the lab's
// underlay bridge, the way nodes in different racks or sites are:
//
//	br0 ── r1 ══ link (RoutedOptions.LinkMTU) ══ r2 ── node eth0
//	       "<P>-<node>_r1"                     "<P>-<node>_r2"
//
// Node NICs keep the lab MTU; only the link between the routers is
// smaller, so the routers fragment what does not fit (or, for DF packets,
// answer fragmentation-needed): the path a new user meets when nodes in
// different networks run an overlay. Two routers, because a veth cannot
// take a frame bigger than its receiving end's MTU: each router owns one
// side of the small link and fragments onto it.
//
// Addresses: r1 takes a host number from 10 down on the lab underlay (the
// first routed node .10, the next .9; ServiceAddr hands out from 1 up), the
// link is 10.255.<k>.0/30, the node's segment RoutedOptions.Segment
// (default 192.168.<100+k>.0/24, the node .11, r2 .1). Every node on br0,
// present or added later, routes the segment via r1; the routed node routes
// everything via r2. Routed nodes reach br0 nodes, not each other.

// RoutedOptions configures AddRoutedNode.
type RoutedOptions struct {
	// LinkMTU is the MTU of the link between the two routers. Default 1400.
	LinkMTU int
	// Segment is the routed node's network. Default 192.168.<100+k>.0/24.
	Segment netip.Prefix
}

// Segment is what AddRoutedNode built around a node.
type Segment struct {
	Prefix     netip.Prefix
	Router1NS  string // namespace of the router on br0
	Router2NS  string // namespace of the router on the node's segment
	Router1IP  netip.Addr
	Router2IP  netip.Addr // on the node's segment: the node's gateway
	LinkMTU    int
	LinkDevice string // the small link's device name in both routers
}

const routedLinkDev = "link0"

// AddRoutedNode creates node name behind two routers (see above).
func (l *Lab) AddRoutedNode(name string, o RoutedOptions) (*Node, error) {
	if err := validName("node", name); err != nil {
		return nil, err
	}
	if name == "ul" || l.Node(name) != nil {
		return nil, fmt.Errorf("add routed node %q: name already in use", name)
	}
	l.mu.Lock()
	k := len(l.segments)
	l.mu.Unlock()
	if o.LinkMTU == 0 {
		o.LinkMTU = 1400
	}
	if !o.Segment.IsValid() {
		o.Segment = netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(100 + k), 0}), 24)
	}
	r1IP, err := hostAddr(l.UnderlayCIDR, uint64(10-k))
	if err != nil || k >= 10 {
		return nil, fmt.Errorf("add routed node %q: no router address left on the underlay", name)
	}
	r2IP, err := hostAddr(o.Segment, 1)
	if err != nil {
		return nil, fmt.Errorf("add routed node %q: %w", name, err)
	}
	nodeIP, err := hostAddr(o.Segment, firstNodeHost)
	if err != nil {
		return nil, fmt.Errorf("add routed node %q: %w", name, err)
	}
	linkNet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 255, byte(k), 0}), 30)
	link1, _ := hostAddr(linkNet, 1)
	link2, _ := hostAddr(linkNet, 2)
	seg := &Segment{
		Prefix: o.Segment.Masked(), Router1NS: l.Prefix + "-" + name + "_r1", Router2NS: l.Prefix + "-" + name + "_r2",
		Router1IP: r1IP, Router2IP: r2IP, LinkMTU: o.LinkMTU, LinkDevice: routedLinkDev,
	}
	for _, ns := range []string{seg.Router1NS, seg.Router2NS} {
		if err := l.createNS(ns); err != nil {
			return nil, fmt.Errorf("add routed node %q: %w", name, err)
		}
		if err := setSysctl(netnsPath(ns), "net.ipv4.ip_forward", "1"); err != nil {
			return nil, err
		}
		for _, key := range []string{"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"} {
			if err := setSysctl(netnsPath(ns), key, "0"); err != nil {
				return nil, err
			}
		}
	}
	r1Path, r2Path := netnsPath(seg.Router1NS), netnsPath(seg.Router2NS)

	// r1: a leg on br0, the small link to r2.
	if err := addVethAcross(netnsPath(seg.Router1NS), "ul0", l.MTU, netip.PrefixFrom(r1IP, l.UnderlayCIDR.Bits()),
		l.UnderlayPath, "rt"+fmt.Sprint(k), l.MTU, netip.Prefix{}); err != nil {
		return nil, fmt.Errorf("add routed node %q: router 1 underlay leg: %w", name, err)
	}
	if err := withHandle(l.UnderlayPath, func(h *netlink.Handle) error {
		peer, err := h.LinkByName("rt" + fmt.Sprint(k))
		if err != nil {
			return err
		}
		br, err := h.LinkByName(UnderlayBridge)
		if err != nil {
			return err
		}
		return h.LinkSetMaster(peer, br)
	}); err != nil {
		return nil, fmt.Errorf("add routed node %q: enslave router 1: %w", name, err)
	}
	if err := addVethAcross(r1Path, routedLinkDev, o.LinkMTU, netip.PrefixFrom(link1, 30),
		r2Path, routedLinkDev, o.LinkMTU, netip.PrefixFrom(link2, 30)); err != nil {
		return nil, fmt.Errorf("add routed node %q: router link: %w", name, err)
	}
	// r2: the node's segment.
	n := &Node{
		Name: name, NS: l.Prefix + "-" + name, UnderlayIP: nodeIP, UnderlayPrefix: netip.PrefixFrom(nodeIP, o.Segment.Bits()),
		UnderlayIf: UnderlayIf, UnderlayPeer: "seg0", Lab: l,
	}
	n.NSPath = netnsPath(n.NS)
	if err := l.createNS(n.NS); err != nil {
		return nil, fmt.Errorf("add routed node %q: %w", name, err)
	}
	if err := n.SetSysctls(nodeSysctls); err != nil {
		return nil, err
	}
	if err := addVethAcross(n.NSPath, UnderlayIf, l.MTU, n.UnderlayPrefix, r2Path, "seg0", l.MTU, netip.PrefixFrom(r2IP, o.Segment.Bits())); err != nil {
		return nil, fmt.Errorf("add routed node %q: segment: %w", name, err)
	}
	err = errors.Join(
		routeVia(r1Path, seg.Prefix, link2),
		routeVia(r2Path, l.UnderlayCIDR, link1),
		routeVia(n.NSPath, netip.MustParsePrefix("0.0.0.0/0"), r2IP),
	)
	if err != nil {
		return nil, fmt.Errorf("add routed node %q: %w", name, err)
	}
	if err := withHandle(n.NSPath, func(h *netlink.Handle) error {
		link, err := h.LinkByName(UnderlayIf)
		if err != nil {
			return err
		}
		n.UnderlayIfIndex = link.Attrs().Index
		n.UnderlayMAC = link.Attrs().HardwareAddr
		return linkUp(h, "lo")
	}); err != nil {
		return nil, fmt.Errorf("add routed node %q: %w", name, err)
	}

	l.mu.Lock()
	l.segments = append(l.segments, seg)
	others := append([]*Node(nil), l.Nodes...)
	l.Nodes = append(l.Nodes, n)
	n.Segment = seg
	l.mu.Unlock()
	for _, o := range others {
		if o.Segment == nil {
			if err := o.AddRoute(seg.Prefix, r1IP); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// routeSegments gives a node on br0 the routes to every routed segment.
func (n *Node) routeSegments() error {
	n.Lab.mu.Lock()
	segs := append([]*Segment(nil), n.Lab.segments...)
	n.Lab.mu.Unlock()
	var errs []error
	for _, s := range segs {
		errs = append(errs, n.AddRoute(s.Prefix, s.Router1IP))
	}
	return errors.Join(errs...)
}

// addVethAcross creates a veth with end aName (MTU aMTU, address aAddr if
// valid) in namespace aPath and end bName in bPath, both up.
func addVethAcross(aPath, aName string, aMTU int, aAddr netip.Prefix, bPath, bName string, bMTU int, bAddr netip.Prefix) error {
	bNS, err := openNS(bPath)
	if err != nil {
		return err
	}
	defer bNS.Close()
	if err := withHandle(aPath, func(h *netlink.Handle) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName, MTU: aMTU}, PeerName: bName, PeerNamespace: netlink.NsFd(bNS)}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s/%s: %w", aName, bName, err)
		}
		return upWithAddr(h, aName, aAddr)
	}); err != nil {
		return err
	}
	return withHandle(bPath, func(h *netlink.Handle) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		link, err := h.LinkByName(bName)
		if err != nil {
			return err
		}
		if err := h.LinkSetMTU(link, bMTU); err != nil {
			return fmt.Errorf("set %s MTU %d: %w", bName, bMTU, err)
		}
		return upWithAddr(h, bName, bAddr)
	})
}

func upWithAddr(h *netlink.Handle, name string, addr netip.Prefix) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if addr.IsValid() {
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
			return fmt.Errorf("add %v to %s: %w", addr, name, err)
		}
	}
	return h.LinkSetUp(link)
}

func routeVia(nsPath string, dst netip.Prefix, via netip.Addr) error {
	return withHandle(nsPath, func(h *netlink.Handle) error {
		r := &netlink.Route{Dst: ipNet(dst.Masked()), Gw: via.AsSlice()}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %v via %v in %s: %w", dst, via, nsPath, err)
		}
		return nil
	})
}

// RouterExec runs a command in one of a routed node's routers (1: on br0,
// 2: on the node's segment), e.g. nstat or tc -s qdisc.
func (s *Segment) RouterExec(ctx context.Context, router int, name string, args ...string) ([]byte, error) {
	ns := s.Router1NS
	if router == 2 {
		ns = s.Router2NS
	}
	return execIn(ctx, netnsPath(ns), name, args...)
}
