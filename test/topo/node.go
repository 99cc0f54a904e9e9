package topo

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Node is a host: a network namespace with an underlay interface.
type Node struct {
	Name   string
	NS     string // namespace name, "<prefix>-<name>"
	NSPath string // /var/run/netns/<NS>

	UnderlayIP      netip.Addr   // invalid on an IPv6-only underlay
	UnderlayPrefix  netip.Prefix // UnderlayIP with the underlay's prefix length
	UnderlayIP6     netip.Addr   // IPv6 underlay address; invalid without one
	UnderlayPrefix6 netip.Prefix // UnderlayIP6 with the underlay's prefix length
	UnderlayIf      string       // "eth0"
	UnderlayIfIndex int
	UnderlayMAC     net.HardwareAddr
	UnderlayPeer    string // the veth's other end in the underlay namespace, on br0

	// Segment is set for a node AddRoutedNode put behind routers.
	Segment *Segment

	// Flannel is set once SetupFlannelVXLAN has run.
	Flannel *FlannelInfo
	// Pods in creation order; DeletePod removes them.
	Pods []*Pod

	Lab *Lab
}

// nodeSysctls are what a Kubernetes node runs with. rp_filter must be off
// because overlay replies may arrive on another interface than the route
// back would pick; "all" and "default" both matter, the kernel uses the max
// of "all" and the interface's value.
// IPv6 forwarding is on in every node (pods may be IPv6 on any underlay);
// DAD is off for addresses the lab adds, none of which can clash, so they
// are usable at once instead of after a second of tentative state
// ("all" and the interface's value: the kernel uses the larger).
var nodeSysctls = [][2]string{
	{"net.ipv4.ip_forward", "1"},
	{"net.ipv4.conf.all.rp_filter", "0"},
	{"net.ipv4.conf.default.rp_filter", "0"},
	{"net.ipv6.conf.all.forwarding", "1"},
	{"net.ipv6.conf.all.accept_dad", "0"},
	{"net.ipv6.conf.default.accept_dad", "0"},
}

// Addr is the node's underlay address of its preferred family: IPv4 where
// the underlay has it, else IPv6. Services in the node (weftd's metrics,
// a flannel node's public IP) listen there.
func (n *Node) Addr() netip.Addr {
	if n.UnderlayIP.IsValid() {
		return n.UnderlayIP
	}
	return n.UnderlayIP6
}

func (n *Node) setup() error {
	if err := n.SetSysctls(nodeSysctls); err != nil {
		return err
	}
	if err := n.addUnderlayVeth(); err != nil {
		return err
	}
	return n.attachUnderlayPeer()
}

// addUnderlayVeth creates eth0 in the node with its peer directly in the
// underlay namespace, addresses it and brings it up.
func (n *Node) addUnderlayVeth() error {
	ul, err := openNS(n.Lab.UnderlayPath)
	if err != nil {
		return err
	}
	defer ul.Close()
	return withHandle(n.NSPath, func(h *netlink.Handle) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: n.UnderlayIf, MTU: n.Lab.MTU},
			PeerName:      n.UnderlayPeer,
			PeerNamespace: netlink.NsFd(ul),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add underlay veth %s/%s: %w", n.UnderlayIf, n.UnderlayPeer, err)
		}
		link, err := h.LinkByName(n.UnderlayIf)
		if err != nil {
			return fmt.Errorf("find %s: %w", n.UnderlayIf, err)
		}
		if n.UnderlayPrefix.IsValid() {
			if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(n.UnderlayPrefix)}); err != nil {
				return fmt.Errorf("add address %v to %s: %w", n.UnderlayPrefix, n.UnderlayIf, err)
			}
		}
		if n.UnderlayPrefix6.IsValid() {
			if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(n.UnderlayPrefix6), Flags: unix.IFA_F_NODAD}); err != nil {
				return fmt.Errorf("add address %v to %s: %w", n.UnderlayPrefix6, n.UnderlayIf, err)
			}
		}
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", n.UnderlayIf, err)
		}
		n.UnderlayIfIndex = link.Attrs().Index
		n.UnderlayMAC = link.Attrs().HardwareAddr
		return nil
	})
}

func (n *Node) attachUnderlayPeer() error {
	return withHandle(n.Lab.UnderlayPath, func(h *netlink.Handle) error {
		peer, err := h.LinkByName(n.UnderlayPeer)
		if err != nil {
			return fmt.Errorf("find underlay peer %s: %w", n.UnderlayPeer, err)
		}
		br, err := h.LinkByName(UnderlayBridge)
		if err != nil {
			return fmt.Errorf("find %s: %w", UnderlayBridge, err)
		}
		if err := h.LinkSetMaster(peer, br); err != nil {
			return fmt.Errorf("enslave %s to %s: %w", n.UnderlayPeer, UnderlayBridge, err)
		}
		if err := h.LinkSetUp(peer); err != nil {
			return fmt.Errorf("set %s up: %w", n.UnderlayPeer, err)
		}
		return nil
	})
}

// Handle returns a netlink handle in the node's namespace; the caller closes it.
func (n *Node) Handle() (*netlink.Handle, error) { return handleAt(n.NSPath) }

// Do runs fn on a locked OS thread inside the node's namespace. The thread
// is restored afterwards or, if that fails, destroyed. Goroutines fn starts
// do not inherit the namespace.
func (n *Node) Do(fn func() error) error { return inNetns(n.NSPath, fn) }

// Exec runs a command to completion in the node's namespace and returns its
// combined output; the error includes the output.
func (n *Node) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	return execIn(ctx, n.NSPath, name, args...)
}

// Start starts a long-running process in the node's namespace. Its output
// goes to Lab.LogPath(cmd); Close kills it and its process group. The lab
// reaps it, so use Lab.Wait or Lab.Exited, never cmd.Wait. The child gets
// SIGKILL if the calling OS thread dies (Pdeathsig, so a crashed test leaves
// nothing behind): do not call Start from a goroutine that exits while locked
// to its thread.
func (n *Node) Start(name string, args ...string) (*exec.Cmd, error) {
	return n.Lab.start(n.NSPath, n.Name, name, args...)
}

// SetSysctl writes a sysctl inside the node's namespace. key is either
// dotted ("net.ipv4.ip_forward") or a path below /proc/sys
// ("net/ipv6/conf/flannel.1/accept_ra"), the latter for interface names
// containing dots.
func (n *Node) SetSysctl(key, value string) error { return setSysctl(n.NSPath, key, value) }

// Sysctl reads a sysctl inside the node's namespace (key as for SetSysctl).
func (n *Node) Sysctl(key string) (string, error) { return getSysctl(n.NSPath, key) }

// SetSysctls writes several key/value pairs in order.
func (n *Node) SetSysctls(kvs [][2]string) error {
	for _, kv := range kvs {
		if err := n.SetSysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

func sysctlPath(key string) string {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	return "/proc/sys/" + key
}

// setSysctl writes /proc/sys from a thread inside the namespace: net.*
// sysctls resolve to the network namespace of the thread that opens them.
func setSysctl(nsPath, key, value string) error {
	err := inNetns(nsPath, func() error {
		return os.WriteFile(sysctlPath(key), []byte(value), 0o644)
	})
	if err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

func getSysctl(nsPath, key string) (string, error) {
	var b []byte
	err := inNetns(nsPath, func() error {
		var err error
		b, err = os.ReadFile(sysctlPath(key))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// AddRoute installs (or replaces) "dst via via" in the node, the host-gw way:
// plain kernel routing across the underlay, the no-encap baseline.
func (n *Node) AddRoute(dst netip.Prefix, via netip.Addr) error {
	return withHandle(n.NSPath, func(h *netlink.Handle) error {
		r := &netlink.Route{Dst: ipNet(dst.Masked()), Gw: via.AsSlice()}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("add route %v via %v in %s: %w", dst, via, n.Name, err)
		}
		return nil
	})
}

// DelRoute removes a route AddRoute installed.
func (n *Node) DelRoute(dst netip.Prefix, via netip.Addr) error {
	return withHandle(n.NSPath, func(h *netlink.Handle) error {
		r := &netlink.Route{Dst: ipNet(dst.Masked()), Gw: via.AsSlice()}
		if err := h.RouteDel(r); err != nil {
			return fmt.Errorf("delete route %v via %v in %s: %w", dst, via, n.Name, err)
		}
		return nil
	})
}

// Ping pings dst from the node (see Pod.Ping).
func (n *Node) Ping(ctx context.Context, dst netip.Addr, count int) error {
	return ping(ctx, n.NSPath, dst, count)
}

// ping sends count echo requests 0.2 s apart, waiting 1 s for each reply,
// and fails unless every one was answered: ping itself would be content with
// a single reply, which hides a lossy data plane.
func ping(ctx context.Context, nsPath string, dst netip.Addr, count int) error {
	out, err := execIn(ctx, nsPath, "ping", "-n", "-c", fmt.Sprint(count), "-W", "1", "-i", "0.2", dst.String())
	if err != nil {
		return fmt.Errorf("ping %v: %w", dst, err)
	}
	if want := fmt.Sprintf(" %d received", count); !strings.Contains(string(out), want) {
		return fmt.Errorf("ping %v: lost replies: %s", dst, bytes.TrimSpace(out))
	}
	return nil
}
