package topo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// PodOptions configures AddPod.
type PodOptions struct {
	// IP is the pod address with its subnet, e.g. 10.244.1.2/24.
	IP netip.Prefix
	// Gateway, if valid, becomes the pod's default route
	// "default via Gateway dev eth0 onlink".
	Gateway netip.Addr
	// MTU of both veth ends; 0 means the lab MTU.
	MTU int
	// Bridge "" makes a routed pod: the host side stays a plain veth in the
	// node, the node gets "IP/32 dev <hostif>", and the pod gets a permanent
	// neighbour entry Gateway -> host-side MAC, so it needs no ARP answer from
	// the node (which has no address in the pod subnet) nor from a data
	// plane. Non-empty enslaves the host side to that bridge in the node
	// (created up without address if missing), flannel's cni0 style, with
	// hairpin mode on as flannel's CNI config sets it; no /32 route.
	Bridge string
	// GatewayByARP leaves out the routed pod's static gateway neighbours:
	// the pod ARPs (and sends Neighbour Solicitations) for its gateways and
	// the data plane must answer (Weft's from_pod does, as the real CNI
	// plugin relies on).
	GatewayByARP bool
	// IP6, if valid, makes the pod dual-stack (or IPv6-only, with IP
	// invalid): its IPv6 address with the subnet length, added without DAD
	// as weft-cni adds it. Gateway6 is then its IPv6 default gateway
	// ("default via Gateway6 dev eth0 onlink"), handled like Gateway; a
	// routed pod also gets "IP6/128 dev <hostif>" in the node.
	IP6      netip.Prefix
	Gateway6 netip.Addr
}

// Pod is a workload: a namespace with eth0 wired to its node.
type Pod struct {
	Name    string
	NS      string // "<prefix>-<node>-<pod>"
	NSPath  string
	IP      netip.Addr   // invalid for an IPv6-only pod
	Prefix  netip.Prefix // IP with its subnet length
	IP6     netip.Addr   // invalid without IPv6
	Prefix6 netip.Prefix // IP6 with its subnet length
	MAC     net.HardwareAddr
	// HostIf is the node-side veth, "veth" plus 8 hex digits like the CNI
	// plugins name them.
	HostIf      string
	HostIfIndex int
	HostMAC     net.HardwareAddr
	Node        *Node
}

// AddPod creates a pod namespace on the node and wires it up.
func (n *Node) AddPod(name string, o PodOptions) (*Pod, error) {
	if err := validName("pod", name); err != nil {
		return nil, err
	}
	if !o.IP.IsValid() && !o.IP6.IsValid() {
		return nil, fmt.Errorf("add pod %q: no IP", name)
	}
	if o.MTU == 0 {
		o.MTU = n.Lab.MTU
	}
	p := &Pod{
		Name:    name,
		NS:      n.NS + "-" + name,
		IP:      o.IP.Addr(),
		Prefix:  o.IP,
		IP6:     o.IP6.Addr(),
		Prefix6: o.IP6,
		HostIf:  "veth" + randomHex(4),
		Node:    n,
	}
	p.NSPath = netnsPath(p.NS)
	if err := n.Lab.createNS(p.NS); err != nil {
		return nil, fmt.Errorf("add pod %q: %w", name, err)
	}
	if err := p.setup(o); err != nil {
		return nil, errors.Join(fmt.Errorf("add pod %q on %s: %w", name, n.Name, err), n.deletePodLinks(p))
	}
	n.Lab.mu.Lock()
	n.Pods = append(n.Pods, p)
	n.Lab.mu.Unlock()
	return p, nil
}

func (p *Pod) setup(o PodOptions) error {
	if err := p.addVeth(o.MTU); err != nil {
		return err
	}
	if err := p.configurePodSide(o); err != nil {
		return err
	}
	return p.configureHostSide(o)
}

// addVeth creates the pair from the node side, with the pod end created
// directly inside the pod namespace as eth0.
func (p *Pod) addVeth(mtu int) error {
	podNS, err := openNS(p.NSPath)
	if err != nil {
		return err
	}
	defer podNS.Close()
	return withHandle(p.Node.NSPath, func(h *netlink.Handle) error {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: p.HostIf, MTU: mtu},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(podNS),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add pod veth %s: %w", p.HostIf, err)
		}
		link, err := h.LinkByName(p.HostIf)
		if err != nil {
			return fmt.Errorf("find %s: %w", p.HostIf, err)
		}
		p.HostIfIndex = link.Attrs().Index
		p.HostMAC = link.Attrs().HardwareAddr
		return nil
	})
}

func (p *Pod) configurePodSide(o PodOptions) error {
	return withHandle(p.NSPath, func(h *netlink.Handle) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("find pod eth0: %w", err)
		}
		p.MAC = eth0.Attrs().HardwareAddr
		if o.IP.IsValid() {
			if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(o.IP)}); err != nil {
				return fmt.Errorf("add address %v to pod eth0: %w", o.IP, err)
			}
		}
		if o.IP6.IsValid() {
			if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(o.IP6), Flags: unix.IFA_F_NODAD}); err != nil {
				return fmt.Errorf("add address %v to pod eth0: %w", o.IP6, err)
			}
		}
		if err := h.LinkSetUp(eth0); err != nil {
			return fmt.Errorf("set pod eth0 up: %w", err)
		}
		for _, gw := range []netip.Addr{o.Gateway, o.Gateway6} {
			if !gw.IsValid() {
				continue
			}
			if o.Bridge == "" && !o.GatewayByARP {
				if err := h.NeighSet(&netlink.Neigh{
					LinkIndex:    eth0.Attrs().Index,
					State:        netlink.NUD_PERMANENT,
					IP:           gw.AsSlice(),
					HardwareAddr: p.HostMAC,
				}); err != nil {
					return fmt.Errorf("add gateway neighbour %v: %w", gw, err)
				}
			}
			def := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(netip.PrefixFrom(unspecified(gw), 0)), Gw: gw.AsSlice()}
			def.SetFlag(netlink.FLAG_ONLINK)
			if err := h.RouteAdd(def); err != nil {
				return fmt.Errorf("add default route via %v: %w", gw, err)
			}
		}
		return nil
	})
}

func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

func (p *Pod) configureHostSide(o PodOptions) error {
	return withHandle(p.Node.NSPath, func(h *netlink.Handle) error {
		link, err := h.LinkByIndex(p.HostIfIndex)
		if err != nil {
			return fmt.Errorf("find %s: %w", p.HostIf, err)
		}
		if o.Bridge != "" {
			return attachToBridge(h, link, o.Bridge)
		}
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", p.HostIf, err)
		}
		for _, a := range []netip.Addr{p.IP, p.IP6} {
			if !a.IsValid() {
				continue
			}
			r := &netlink.Route{LinkIndex: p.HostIfIndex, Dst: ipNet(hostPrefix(a)), Scope: netlink.SCOPE_LINK}
			if a.Is6() {
				r.Scope = netlink.SCOPE_UNIVERSE
			}
			if err := h.RouteReplace(r); err != nil {
				return fmt.Errorf("add route %v dev %s: %w", a, p.HostIf, err)
			}
		}
		return nil
	})
}

func attachToBridge(h *netlink.Handle, link netlink.Link, bridge string) error {
	br, err := ensureBridge(h, bridge, link.Attrs().MTU)
	if err != nil {
		return err
	}
	name := link.Attrs().Name
	if err := h.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("enslave %s to %s: %w", name, bridge, err)
	}
	if err := h.LinkSetHairpin(link, true); err != nil {
		return fmt.Errorf("set hairpin on %s: %w", name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// ensureBridge returns the named bridge, creating it up with the given MTU
// if it does not exist yet.
func ensureBridge(h *netlink.Handle, name string, mtu int) (netlink.Link, error) {
	if br, err := h.LinkByName(name); err == nil {
		return br, nil
	}
	// Its own MAC, so it does not follow its ports' (see the underlay bridge in topo.go).
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu, HardwareAddr: randomMAC()}}); err != nil {
		return nil, fmt.Errorf("add bridge %s: %w", name, err)
	}
	br, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find bridge %s: %w", name, err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return br, nil
}

// DeletePod kills the pod's processes and removes its veth and namespace.
func (n *Node) DeletePod(p *Pod) error {
	if p.Node != n {
		return fmt.Errorf("delete pod %s: it belongs to node %s, not %s", p.Name, p.Node.Name, n.Name)
	}
	err := n.deletePodLinks(p)
	n.Lab.mu.Lock()
	n.Pods = slices.DeleteFunc(n.Pods, func(q *Pod) bool { return q == p })
	n.Lab.mu.Unlock()
	if err != nil {
		return fmt.Errorf("delete pod %s: %w", p.Name, err)
	}
	return nil
}

// deletePodLinks deletes the host-side veth first, which takes the pod end
// and the /32 route with it at once; deleting only the namespace would leave
// that to the kernel's asynchronous namespace cleanup.
func (n *Node) deletePodLinks(p *Pod) error {
	err := withHandle(n.NSPath, func(h *netlink.Handle) error {
		link, err := h.LinkByName(p.HostIf)
		if err != nil {
			return nil // never created, or already gone
		}
		if err := h.LinkDel(link); err != nil && !errors.Is(err, syscall.ENODEV) {
			return fmt.Errorf("delete %s: %w", p.HostIf, err)
		}
		return nil
	})
	return errors.Join(err, n.Lab.deleteNS(p.NS))
}

// Handle returns a netlink handle in the pod's namespace; the caller closes it.
func (p *Pod) Handle() (*netlink.Handle, error) { return handleAt(p.NSPath) }

// Do runs fn on a locked OS thread inside the pod's namespace (see Node.Do).
func (p *Pod) Do(fn func() error) error { return inNetns(p.NSPath, fn) }

// Exec runs a command to completion in the pod's namespace and returns its
// combined output; the error includes the output.
func (p *Pod) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	return execIn(ctx, p.NSPath, name, args...)
}

// Start starts a long-running process in the pod's namespace (see Node.Start).
func (p *Pod) Start(name string, args ...string) (*exec.Cmd, error) {
	return p.Node.Lab.start(p.NSPath, p.Node.Name+"-"+p.Name, name, args...)
}

// SetSysctl writes a sysctl inside the pod's namespace (see Node.SetSysctl).
func (p *Pod) SetSysctl(key, value string) error { return setSysctl(p.NSPath, key, value) }

// Sysctl reads a sysctl inside the pod's namespace.
func (p *Pod) Sysctl(key string) (string, error) { return getSysctl(p.NSPath, key) }

// Addrs returns the pod's addresses, IPv4 first.
func (p *Pod) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, a := range []netip.Addr{p.IP, p.IP6} {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

// Ping sends count echo requests to dst (0.2 s apart, 1 s timeout each) and
// fails, with ping's output, unless all were answered.
func (p *Pod) Ping(ctx context.Context, dst netip.Addr, count int) error {
	return ping(ctx, p.NSPath, dst, count)
}

// NewSandbox creates an empty pod namespace "<prefix>-<node>-<name>" with
// only lo up, as a container runtime creates a sandbox before it calls its
// CNI plugin. The lab deletes it on Close like any other namespace.
func (n *Node) NewSandbox(name string) (nsPath string, err error) {
	if err := validName("pod", name); err != nil {
		return "", err
	}
	ns := n.Lab.Prefix + "-" + n.Name + "-" + name
	if err := n.Lab.createNS(ns); err != nil {
		return "", err
	}
	path := netnsPath(ns)
	if err := withHandle(path, func(h *netlink.Handle) error { return linkUp(h, "lo") }); err != nil {
		return "", fmt.Errorf("sandbox %s: %w", ns, err)
	}
	return path, nil
}
