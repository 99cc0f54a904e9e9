// Package topo builds network-namespace topologies for Weft's end-to-end
// tests, benchmarks and lab: an underlay bridge, nodes, pods, a node
// programmed the way flannel's vxlan backend does it, and host-gw routes. It
// knows nothing about Weft's BPF.
//
// Layout of a lab with prefix P:
//
//	P-ul           underlay namespace, bridge br0 (up, no address)
//	P-<node>       node namespace, eth0 = veth to br0 (peer in P-ul named
//	               after the node), address UnderlayCIDR host .11, .12, ...
//	P-<node>-<pod> pod namespace, eth0 = veth to the node
//	P-<node>_r1/_r2 the two routers in front of a node AddRoutedNode put on
//	               its own segment (see routed.go)
//
// Node i (0-based, in AddNode order) gets host number 11+i of UnderlayCIDR
// (and of UnderlayCIDR6 on an IPv6 or dual-stack underlay);
// the addresses below .11 stay free for whatever a test wants to add (an etcd
// endpoint, a traffic generator). Every namespace name starts with "P-", so
// CleanupPrefix(P) finds whatever a crashed run left behind.
//
// Everything happens inside namespaces the lab creates; the machine's own
// interfaces, routes and sysctls are never touched. Processes run through
// `nsenter --net=`, which switches only the network namespace, never through
// `ip netns exec`. Topology changes (AddNode, AddPod, DeletePod, Close) are
// not meant to race each other; processes and Exec calls may run concurrently.
package topo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Defaults for Options.
var (
	DefaultUnderlayCIDR = netip.MustParsePrefix("192.168.77.0/24")
	DefaultMTU          = 1500
)

const (
	// UnderlayBridge is the bridge in the underlay namespace all nodes hang off.
	UnderlayBridge = "br0"
	// UnderlayIf is the name of every node's underlay interface.
	UnderlayIf = "eth0"
	// firstNodeHost is the host number of the first node's underlay address.
	firstNodeHost = 11
)

// Options configures a Lab; the zero value is usable.
type Options struct {
	// Prefix starts every namespace name ("<Prefix>-..."). Letters, digits and
	// '_' only, so one lab's prefix can never be a prefix of another's
	// namespace names. "" generates "wt" plus 6 random hex digits.
	Prefix string
	// UnderlayCIDR is the underlay network; node i gets host number 11+i.
	// Default 192.168.77.0/24.
	UnderlayCIDR netip.Prefix
	// UnderlayCIDR6, if valid, puts IPv6 on the underlay too (a
	// dual-stack underlay): node i also gets host number 11+i of it.
	UnderlayCIDR6 netip.Prefix
	// NoUnderlayIPv4 leaves IPv4 off the underlay: with UnderlayCIDR6 an
	// IPv6-only underlay, whose nodes have no UnderlayIP.
	NoUnderlayIPv4 bool
	// MTU of the underlay veths and the default pod MTU. Default 1500.
	MTU int
	// LogDir receives one log file per process started with Start. ""
	// creates a temporary directory, which Close removes unless KeepLogs.
	LogDir   string
	KeepLogs bool
}

// Lab is one topology. Close it (also on failure) to remove it.
type Lab struct {
	Prefix       string
	UnderlayNS   string // name of the underlay namespace, "<Prefix>-ul"
	UnderlayPath string // its path under NetnsDir
	UnderlayCIDR netip.Prefix
	// UnderlayCIDR6 is the underlay's IPv6 network; invalid: none.
	UnderlayCIDR6 netip.Prefix
	// UnderlayIPv4 is false on an IPv6-only underlay.
	UnderlayIPv4 bool
	MTU          int
	LogDir       string
	Nodes        []*Node

	mu         sync.Mutex
	namespaces []string // created by this lab, in creation order
	procs      map[*exec.Cmd]*proc
	seq        int
	nodeCount  int // node slots handed out, also for failed AddNode calls
	offloads   Offloads
	segments   []*Segment // routed nodes' segments, see AddRoutedNode
	closed     bool
	ownLogDir  bool
	keepLogs   bool
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

func validPrefix(p string) error {
	if !namePattern.MatchString(p) || len(p) > 32 {
		return fmt.Errorf("invalid lab prefix %q: want 1-32 letters, digits or '_'", p)
	}
	return nil
}

// validName checks a node or pod name. '-' is excluded because it separates
// the parts of namespace names: node "a-b" would collide with pod "b" of node "a".
func validName(kind, name string) error {
	if !namePattern.MatchString(name) || len(name) > 32 {
		return fmt.Errorf("invalid %s name %q: want 1-32 letters, digits or '_'", kind, name)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// New creates the underlay namespace "<prefix>-ul" with bridge br0 in it.
func New(opts Options) (*Lab, error) {
	l, err := newLab(opts)
	if err != nil {
		return nil, err
	}
	if err := l.setupUnderlay(); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
}

func newLab(opts Options) (*Lab, error) {
	if opts.Prefix == "" {
		opts.Prefix = "wt" + randomHex(3)
	}
	if err := validPrefix(opts.Prefix); err != nil {
		return nil, err
	}
	if !opts.UnderlayCIDR.IsValid() {
		opts.UnderlayCIDR = DefaultUnderlayCIDR
	}
	if opts.MTU == 0 {
		opts.MTU = DefaultMTU
	}
	if opts.NoUnderlayIPv4 && !opts.UnderlayCIDR6.IsValid() {
		return nil, errors.New("an underlay without IPv4 needs UnderlayCIDR6")
	}
	if opts.UnderlayCIDR6.IsValid() && !opts.UnderlayCIDR6.Addr().Is6() {
		return nil, fmt.Errorf("UnderlayCIDR6 %v is not IPv6", opts.UnderlayCIDR6)
	}
	l := &Lab{
		UnderlayCIDR6: opts.UnderlayCIDR6.Masked(),
		UnderlayIPv4:  !opts.NoUnderlayIPv4,
		Prefix:        opts.Prefix,
		UnderlayNS:    opts.Prefix + "-ul",
		UnderlayPath:  netnsPath(opts.Prefix + "-ul"),
		UnderlayCIDR:  opts.UnderlayCIDR.Masked(),
		MTU:           opts.MTU,
		LogDir:        opts.LogDir,
		procs:         map[*exec.Cmd]*proc{},
		keepLogs:      opts.KeepLogs,
	}
	if l.LogDir == "" {
		dir, err := os.MkdirTemp("", l.Prefix+"-logs-")
		if err != nil {
			return nil, fmt.Errorf("create log dir: %w", err)
		}
		l.LogDir, l.ownLogDir = dir, true
	} else if err := os.MkdirAll(l.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	return l, nil
}

func (l *Lab) setupUnderlay() error {
	if err := l.createNS(l.UnderlayNS); err != nil {
		return err
	}
	return withHandle(l.UnderlayPath, func(h *netlink.Handle) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		// A switch without MLD snooping: IPv6 Neighbour Discovery's
		// multicast reaches every port, as on the segments Weft runs on.
		snooping := false
		// A MAC of its own: a Linux bridge without one takes its lowest
		// port's MAC and changes it as ports come and go, which leaves every
		// node's neighbour entry for the lab services' address (etcd, the
		// apiserver, on this bridge) pointing at a MAC the bridge no longer
		// has until the entry is probed again.
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: UnderlayBridge, MTU: l.MTU, HardwareAddr: randomMAC()}, MulticastSnooping: &snooping}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("add underlay bridge: %w", err)
		}
		return linkUp(h, UnderlayBridge)
	})
}

// createNS creates a namespace and records it for Close.
func (l *Lab) createNS(name string) error {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return errors.New("create namespace: lab is closed")
	}
	if err := createNetns(name); err != nil {
		return err
	}
	l.mu.Lock()
	l.namespaces = append(l.namespaces, name)
	l.mu.Unlock()
	return nil
}

// deleteNS stops the lab's processes in a namespace and deletes it.
func (l *Lab) deleteNS(name string) error {
	err := errors.Join(l.stopProcs(netnsPath(name)), deleteNetns(name))
	l.mu.Lock()
	l.namespaces = slices.DeleteFunc(l.namespaces, func(n string) bool { return n == name })
	l.mu.Unlock()
	return err
}

// Close kills every process started through the lab and deletes every
// namespace it made. It is idempotent and works on a half-built lab.
func (l *Lab) Close() error {
	l.mu.Lock()
	l.closed = true
	names := slices.Clone(l.namespaces)
	l.mu.Unlock()

	errs := []error{l.stopProcs("")}
	for _, name := range slices.Backward(names) {
		if err := l.deleteNS(name); err != nil {
			errs = append(errs, fmt.Errorf("close lab %s: %w", l.Prefix, err))
		}
	}
	l.mu.Lock()
	l.Nodes = nil
	l.mu.Unlock()
	if l.ownLogDir && !l.keepLogs {
		if err := os.RemoveAll(l.LogDir); err != nil {
			errs = append(errs, fmt.Errorf("remove log dir: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Node returns the node with the given name, or nil.
func (l *Lab) Node(name string) *Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// AddNode creates namespace "<prefix>-<name>" wired to the underlay bridge:
// eth0 with the next underlay address and the lab MTU, its peer in the
// underlay namespace enslaved to br0. It enables forwarding and disables
// rp_filter in the node, as a Kubernetes node would have them.
func (l *Lab) AddNode(name string) (*Node, error) {
	if err := validName("node", name); err != nil {
		return nil, err
	}
	if name == "ul" || l.Node(name) != nil {
		return nil, fmt.Errorf("add node %q: name already in use", name)
	}
	addr, addr6, slot, err := l.allocUnderlayAddr()
	if err != nil {
		return nil, fmt.Errorf("add node %q: %w", name, err)
	}
	n := &Node{
		Name:         name,
		NS:           l.Prefix + "-" + name,
		UnderlayIf:   UnderlayIf,
		UnderlayPeer: underlayPeerName(name, slot),
		Lab:          l,
	}
	if addr.IsValid() {
		n.UnderlayIP, n.UnderlayPrefix = addr, netip.PrefixFrom(addr, l.UnderlayCIDR.Bits())
	}
	if addr6.IsValid() {
		n.UnderlayIP6, n.UnderlayPrefix6 = addr6, netip.PrefixFrom(addr6, l.UnderlayCIDR6.Bits())
	}
	n.NSPath = netnsPath(n.NS)
	if err := l.createNS(n.NS); err != nil {
		return nil, fmt.Errorf("add node %q: %w", name, err)
	}
	if err := n.setup(); err != nil {
		return nil, errors.Join(fmt.Errorf("add node %q: %w", name, err), l.deleteNS(n.NS))
	}
	l.mu.Lock()
	l.Nodes = append(l.Nodes, n)
	off := l.offloads
	l.mu.Unlock()
	if err := n.routeSegments(); err != nil {
		return n, fmt.Errorf("add node %q: %w", name, err)
	}
	if off != VethDefaults {
		if err := n.setOffloads(off); err != nil {
			return n, fmt.Errorf("add node %q: %w", name, err)
		}
	}
	return n, nil
}

// allocUnderlayAddr hands out the next node slot and its underlay
// addresses: IPv4 (invalid on an IPv6-only underlay) and IPv6 (invalid
// without one).
func (l *Lab) allocUnderlayAddr() (addr, addr6 netip.Addr, slot int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	slot = l.nodeCount
	if l.UnderlayIPv4 {
		if addr, err = hostAddr(l.UnderlayCIDR, uint64(firstNodeHost+slot)); err != nil {
			return addr, addr6, 0, fmt.Errorf("underlay address for node %d: %w", slot, err)
		}
	}
	if l.UnderlayCIDR6.IsValid() {
		if addr6, err = hostAddr(l.UnderlayCIDR6, uint64(firstNodeHost+slot)); err != nil {
			return addr, addr6, 0, fmt.Errorf("underlay IPv6 address for node %d: %w", slot, err)
		}
	}
	l.nodeCount++
	return addr, addr6, slot, nil
}

// underlayPeerName names the bridge-side veth after the node when the name
// fits an interface name (15 bytes) and cannot be mistaken for the bridge.
func underlayPeerName(node string, slot int) string {
	if len(node) <= 15 && node != UnderlayBridge && node != "lo" {
		return node
	}
	return fmt.Sprintf("node%d", slot)
}

// Pods returns all pods of all nodes.
func (l *Lab) Pods() []*Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ps []*Pod
	for _, n := range l.Nodes {
		ps = append(ps, n.Pods...)
	}
	return ps
}

func linkUp(h *netlink.Handle, name string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// openNS opens a namespace for passing its fd to netlink (veth peers).
func openNS(path string) (netns.NsHandle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return ns, fmt.Errorf("open netns %s: %w", path, err)
	}
	return ns, nil
}

// randomMAC returns a random unicast, locally administered MAC address, the
// same kind flannel generates for its VTEP.
func randomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	rand.Read(mac)
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// UnderlayHandle returns a netlink handle in the underlay namespace (br0 and
// the nodes' peers); the caller closes it.
func (l *Lab) UnderlayHandle() (*netlink.Handle, error) { return handleAt(l.UnderlayPath) }

// UnderlayExec runs a command to completion in the underlay namespace, e.g.
// tcpdump on br0 to look at the wire format.
func (l *Lab) UnderlayExec(ctx context.Context, name string, args ...string) ([]byte, error) {
	return execIn(ctx, l.UnderlayPath, name, args...)
}

// UnderlayStart starts a long-running process in the underlay namespace
// (see Node.Start).
func (l *Lab) UnderlayStart(name string, args ...string) (*exec.Cmd, error) {
	return l.start(l.UnderlayPath, "ul", name, args...)
}

// ServiceAddr6 is ServiceAddr on the underlay's IPv6 network (added
// without DAD: nothing else on the bridge can hold it).
func (l *Lab) ServiceAddr6(n uint64) (netip.Addr, error) {
	if !l.UnderlayCIDR6.IsValid() {
		return netip.Addr{}, errors.New("service address: the underlay has no IPv6")
	}
	a, err := hostAddr(l.UnderlayCIDR6, n)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service address: %w", err)
	}
	err = withHandle(l.UnderlayPath, func(h *netlink.Handle) error {
		br, err := h.LinkByName(UnderlayBridge)
		if err != nil {
			return err
		}
		return h.AddrReplace(br, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, l.UnderlayCIDR6.Bits())), Flags: unix.IFA_F_NODAD})
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("add service address %s to %s: %w", a, UnderlayBridge, err)
	}
	return a, nil
}

// ServiceAddrAny is ServiceAddr on an underlay with IPv4, else ServiceAddr6:
// an address every node reaches.
func (l *Lab) ServiceAddrAny(n uint64) (netip.Addr, error) {
	if l.UnderlayIPv4 {
		return l.ServiceAddr(n)
	}
	return l.ServiceAddr6(n)
}

// ServiceAddr gives the underlay bridge address n of the underlay prefix
// (nodes start at .11, so 1-10 are free) and returns it: a place for lab
// services such as etcd that every node reaches over the underlay.
func (l *Lab) ServiceAddr(n uint64) (netip.Addr, error) {
	a, err := hostAddr(l.UnderlayCIDR, n)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service address: %w", err)
	}
	err = withHandle(l.UnderlayPath, func(h *netlink.Handle) error {
		br, err := h.LinkByName(UnderlayBridge)
		if err != nil {
			return err
		}
		addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, l.UnderlayCIDR.Bits()))}
		return h.AddrReplace(br, addr)
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("add service address %s to %s: %w", a, UnderlayBridge, err)
	}
	return a, nil
}
