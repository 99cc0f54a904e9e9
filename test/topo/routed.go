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
//
// On an underlay with IPv6 (Options.UnderlayCIDR6) the same is built for
// IPv6 beside it: r1 takes the same host number on the IPv6 underlay, the
// link is fd55:255:<k>::/64 (r1 ::1, r2 ::2), the segment
// RoutedOptions.Segment6 (default fd00:168:<100+k>::/64, the node ::b, r2
// ::1). IPv6 routers never fragment: a packet too big for the link gets
// ICMPv6 Packet Too Big. On an IPv6-only underlay the IPv4 half is left out.

// RoutedOptions configures AddRoutedNode.
type RoutedOptions struct {
	// LinkMTU is the MTU of the link between the two routers. Default 1400.
	LinkMTU int
	// Segment is the routed node's network. Default 192.168.<100+k>.0/24.
	Segment netip.Prefix
	// Segment6 is its IPv6 network on an underlay with IPv6. Default
	// fd00:168:<100+k>::/64.
	Segment6 netip.Prefix
}

// Segment is what AddRoutedNode built around a node.
type Segment struct {
	Prefix    netip.Prefix
	Router1NS string // namespace of the router on br0
	Router2NS string // namespace of the router on the node's segment
	Router1IP netip.Addr
	Router2IP netip.Addr // on the node's segment: the node's gateway
	// The IPv6 counterparts, on an underlay with IPv6 (else invalid).
	Prefix6    netip.Prefix
	Router1IP6 netip.Addr
	Router2IP6 netip.Addr
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
	if k >= 10 {
		return nil, fmt.Errorf("add routed node %q: no router address left on the underlay", name)
	}
	if o.LinkMTU == 0 {
		o.LinkMTU = 1400
	}
	if !o.Segment.IsValid() {
		o.Segment = netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(100 + k), 0}), 24)
	}
	if !o.Segment6.IsValid() {
		o.Segment6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0x01, 0x68, 0, byte(100 + k)}), 64)
	}
	// Per family: r1's address on the underlay, the link's two ends, r2's
	// and the node's on the segment.
	type family struct {
		underlay, seg, link  netip.Prefix
		r1, r2, node, l1, l2 netip.Addr
		def                  netip.Prefix
	}
	var fams []family
	if l.UnderlayIPv4 {
		fams = append(fams, family{underlay: l.UnderlayCIDR, seg: o.Segment.Masked(),
			link: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 255, byte(k), 0}), 30), def: netip.MustParsePrefix("0.0.0.0/0")})
	}
	if l.UnderlayCIDR6.IsValid() {
		fams = append(fams, family{underlay: l.UnderlayCIDR6, seg: o.Segment6.Masked(),
			link: netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x55, 0x02, 0x55, 0, byte(k)}), 64), def: netip.MustParsePrefix("::/0")})
	}
	for i := range fams {
		f := &fams[i]
		var err error
		if f.r1, err = hostAddr(f.underlay, uint64(10-k)); err != nil {
			return nil, fmt.Errorf("add routed node %q: %w", name, err)
		}
		if f.r2, err = hostAddr(f.seg, 1); err != nil {
			return nil, fmt.Errorf("add routed node %q: %w", name, err)
		}
		if f.node, err = hostAddr(f.seg, firstNodeHost); err != nil {
			return nil, fmt.Errorf("add routed node %q: %w", name, err)
		}
		f.l1, _ = hostAddr(f.link, 1)
		f.l2, _ = hostAddr(f.link, 2)
	}
	seg := &Segment{Router1NS: l.Prefix + "-" + name + "_r1", Router2NS: l.Prefix + "-" + name + "_r2",
		LinkMTU: o.LinkMTU, LinkDevice: routedLinkDev}
	n := &Node{Name: name, NS: l.Prefix + "-" + name, UnderlayIf: UnderlayIf, UnderlayPeer: "seg0", Lab: l}
	for _, f := range fams {
		if f.r1.Is4() {
			seg.Prefix, seg.Router1IP, seg.Router2IP = f.seg, f.r1, f.r2
			n.UnderlayIP, n.UnderlayPrefix = f.node, netip.PrefixFrom(f.node, f.seg.Bits())
		} else {
			seg.Prefix6, seg.Router1IP6, seg.Router2IP6 = f.seg, f.r1, f.r2
			n.UnderlayIP6, n.UnderlayPrefix6 = f.node, netip.PrefixFrom(f.node, f.seg.Bits())
		}
	}
	for _, ns := range []string{seg.Router1NS, seg.Router2NS} {
		if err := l.createNS(ns); err != nil {
			return nil, fmt.Errorf("add routed node %q: %w", name, err)
		}
		for _, kv := range [][2]string{
			{"net.ipv4.ip_forward", "1"}, {"net.ipv4.conf.all.rp_filter", "0"}, {"net.ipv4.conf.default.rp_filter", "0"},
			{"net.ipv6.conf.all.forwarding", "1"}, {"net.ipv6.conf.all.accept_dad", "0"}, {"net.ipv6.conf.default.accept_dad", "0"},
		} {
			if err := setSysctl(netnsPath(ns), kv[0], kv[1]); err != nil {
				return nil, err
			}
		}
	}
	r1Path, r2Path := netnsPath(seg.Router1NS), netnsPath(seg.Router2NS)
	n.NSPath = netnsPath(n.NS)

	// r1: a leg on br0, the small link to r2; r2: the node's segment.
	if err := addVethAcross(r1Path, "ul0", l.MTU, netip.Prefix{}, l.UnderlayPath, "rt"+fmt.Sprint(k), l.MTU, netip.Prefix{}); err != nil {
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
	if err := addVethAcross(r1Path, routedLinkDev, o.LinkMTU, netip.Prefix{}, r2Path, routedLinkDev, o.LinkMTU, netip.Prefix{}); err != nil {
		return nil, fmt.Errorf("add routed node %q: router link: %w", name, err)
	}
	if err := l.createNS(n.NS); err != nil {
		return nil, fmt.Errorf("add routed node %q: %w", name, err)
	}
	if err := n.SetSysctls(nodeSysctls); err != nil {
		return nil, err
	}
	if err := addVethAcross(n.NSPath, UnderlayIf, l.MTU, netip.Prefix{}, r2Path, "seg0", l.MTU, netip.Prefix{}); err != nil {
		return nil, fmt.Errorf("add routed node %q: segment: %w", name, err)
	}
	var errs []error
	for _, f := range fams {
		errs = append(errs,
			addAddr(r1Path, "ul0", netip.PrefixFrom(f.r1, f.underlay.Bits())),
			addAddr(r1Path, routedLinkDev, netip.PrefixFrom(f.l1, f.link.Bits())),
			addAddr(r2Path, routedLinkDev, netip.PrefixFrom(f.l2, f.link.Bits())),
			addAddr(r2Path, "seg0", netip.PrefixFrom(f.r2, f.seg.Bits())),
			addAddr(n.NSPath, UnderlayIf, netip.PrefixFrom(f.node, f.seg.Bits())),
		)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("add routed node %q: %w", name, err)
	}
	for _, f := range fams {
		errs = append(errs,
			routeVia(r1Path, f.seg, f.l2),
			routeVia(r2Path, f.underlay, f.l1),
			routeVia(n.NSPath, f.def, f.r2),
		)
	}
	if err := errors.Join(errs...); err != nil {
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
			if err := o.routeSegment(seg); err != nil {
				return n, err
			}
		}
	}
	// Lab services live on br0 (ServiceAddr: etcd, an apiserver): their
	// replies to the routed node go via r1 too. Onlink through br0, so the
	// route needs no address of r1's network on the bridge yet.
	for _, f := range fams {
		if err := routeOnlink(l.UnderlayPath, UnderlayBridge, f.seg, f.r1); err != nil {
			return n, fmt.Errorf("add routed node %q: %w", name, err)
		}
	}
	return n, nil
}

// routeOnlink installs "dst via via dev dev onlink" in the namespace.
func routeOnlink(nsPath, dev string, dst netip.Prefix, via netip.Addr) error {
	return withHandle(nsPath, func(h *netlink.Handle) error {
		link, err := h.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("find %s: %w", dev, err)
		}
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(dst.Masked()), Gw: via.AsSlice()}
		r.SetFlag(netlink.FLAG_ONLINK)
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %v via %v dev %s onlink in %s: %w", dst, via, dev, nsPath, err)
		}
		return nil
	})
}

// routeSegments gives a node on br0 the routes to every routed segment.
func (n *Node) routeSegments() error {
	n.Lab.mu.Lock()
	segs := append([]*Segment(nil), n.Lab.segments...)
	n.Lab.mu.Unlock()
	var errs []error
	for _, s := range segs {
		errs = append(errs, n.routeSegment(s))
	}
	return errors.Join(errs...)
}

// routeSegment routes one segment's families via its router on br0.
func (n *Node) routeSegment(s *Segment) error {
	var errs []error
	if s.Prefix.IsValid() {
		errs = append(errs, n.AddRoute(s.Prefix, s.Router1IP))
	}
	if s.Prefix6.IsValid() {
		errs = append(errs, n.AddRoute(s.Prefix6, s.Router1IP6))
	}
	return errors.Join(errs...)
}

// addAddr adds an address (IPv6 without DAD) to dev in the namespace.
func addAddr(nsPath, dev string, p netip.Prefix) error {
	return withHandle(nsPath, func(h *netlink.Handle) error {
		link, err := h.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("find %s: %w", dev, err)
		}
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(p), Flags: nodad(p.Addr())}); err != nil {
			return fmt.Errorf("add %v to %s: %w", p, dev, err)
		}
		return nil
	})
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
