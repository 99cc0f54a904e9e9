package loader

// Neighbour entries for DirectRouting peers over an IPv6 underlay (issue 14).
//
// Why. from_underlay accepts plain (unencapsulated) IPv6 from a DirectRouting
// peer's pod subnet only when its Ethernet source is the MAC the kernel's
// neighbour table holds for the peer's IPv6 underlay address
// (direct_sender_ok6 in bpf/path6.h): nothing else vouches for the sender.
// Over IPv4 the table learns that entry from the peer's ARP request, which
// names the peer's address. Over IPv6 it does not: the peer's kernel
// solicits our address from its LINK-LOCAL address (the pod packet it
// resolves for is not from one of its own addresses, so ndisc_send_ns takes
// the link-local one), and we learn only that. Until this node sent to the
// peer itself, all the peer sent was dropped (drop_direct_peer): a pod's
// first ping to a remote pod was never answered.
//
// How. flannel has no such check (its DirectRouting is a kernel route).
// Cilium, which also forwards with bpf_redirect_neigh, has the kernel keep
// such entries resolved: a managed neighbour entry (NTF_EXT_MANAGED, Linux
// 5.16) is resolved at once and re-probed while it lives, so the entry is
// valid before the first packet either way. It is also marked externally
// learned (NTF_EXT_LEARNED), which exempts it from the table's garbage
// collection; the kernel's own ND still refreshes its MAC. Those two flags
// together mark an entry as ours: only such entries are ever removed.
//
// PeerNeighbours wraps the tunnels map for the reconciler: writing a
// DirectRouting tunnel whose remote is IPv6 makes sure the entry exists,
// deleting the tunnel removes it, reading the map (a start or an audit)
// adds any entry that went missing. A neighbour that cannot be set is
// logged, not returned: the tunnel itself is written, and traffic flows
// once this node has sent to the peer, as before.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/maps"
)

// PeerNeighbourTable is the tunnels map PeerNeighbours wraps (*maps.TunnelMap).
type PeerNeighbourTable interface {
	All() ([]maps.Tunnel, error)
	Put(maps.Tunnel) error
	Delete(netip.Prefix) error
	PutBatch([]maps.Tunnel) (failed []netip.Prefix, err error)
	DeleteBatch([]netip.Prefix) (failed []netip.Prefix, err error)
}

// PeerNeighbours is a tunnels map that keeps a managed neighbour entry on
// the underlay for each DirectRouting peer reached over IPv6. Its methods
// are safe for concurrent use; they must run in the node's network
// namespace (weftd does; tests switch into it).
type PeerNeighbours struct {
	table   PeerNeighbourTable
	ifindex int
	log     *zap.Logger

	mu      sync.Mutex
	remotes map[netip.Prefix]netip.Addr // direct IPv6 tunnels written: subnet -> remote
	failed  map[netip.Addr]bool         // remotes whose neighbour failed, logged once
}

// NewPeerNeighbours wraps table; underlayIfindex is the underlay device's
// index in this namespace. log may be nil.
func NewPeerNeighbours(table PeerNeighbourTable, underlayIfindex int, log *zap.Logger) *PeerNeighbours {
	if log == nil {
		log = zap.NewNop()
	}
	return &PeerNeighbours{table: table, ifindex: underlayIfindex, log: log,
		remotes: map[netip.Prefix]netip.Addr{}, failed: map[netip.Addr]bool{}}
}

// directIPv6 reports whether t is routed without encapsulation to a peer's
// IPv6 underlay address (bpf/path6.h's direct6), the case needing an entry.
func directIPv6(t maps.Tunnel) bool {
	return t.Mode == maps.ModeDirect && t.Remote.Is6() && !t.Remote.Is4In6()
}

// All reads the map and makes sure every direct IPv6 peer in it has its
// entry (weftd adopts a pinned map without writing it).
func (p *PeerNeighbours) All() ([]maps.Tunnel, error) {
	ts, err := p.table.All()
	if err != nil {
		return nil, err
	}
	present, err := p.ours()
	if err != nil {
		p.log.Warn("list underlay neighbours", zap.Error(err))
		return ts, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range ts {
		if directIPv6(t) {
			p.remotes[t.Subnet] = t.Remote
			if !present[t.Remote] {
				p.ensure(t.Remote)
			}
		}
	}
	return ts, nil
}

// Put writes t and, for a direct IPv6 peer, its neighbour entry.
func (p *PeerNeighbours) Put(t maps.Tunnel) error {
	if err := p.table.Put(t); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.written(t)
	return nil
}

// Delete removes the tunnel for subnet and the neighbour entry it needed.
func (p *PeerNeighbours) Delete(subnet netip.Prefix) error {
	if err := p.table.Delete(subnet); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deleted(subnet)
	return nil
}

// PutBatch is Put for many tunnels; the failed ones get no entry.
func (p *PeerNeighbours) PutBatch(ts []maps.Tunnel) ([]netip.Prefix, error) {
	failed, err := p.table.PutBatch(ts)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range ts {
		if !containsPrefix(failed, t.Subnet) {
			p.written(t)
		}
	}
	return failed, err
}

// DeleteBatch is Delete for many subnets.
func (p *PeerNeighbours) DeleteBatch(subnets []netip.Prefix) ([]netip.Prefix, error) {
	failed, err := p.table.DeleteBatch(subnets)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range subnets {
		if !containsPrefix(failed, s) {
			p.deleted(s)
		}
	}
	return failed, err
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// written follows a tunnel write: an entry for a new direct IPv6 remote, and
// none left behind for a remote the subnet no longer uses. Holds p.mu.
func (p *PeerNeighbours) written(t maps.Tunnel) {
	old, had := p.remotes[t.Subnet]
	direct := directIPv6(t)
	if direct {
		p.remotes[t.Subnet] = t.Remote
		if !had || old != t.Remote {
			p.ensure(t.Remote)
		}
	} else {
		delete(p.remotes, t.Subnet)
	}
	if had && (!direct || old != t.Remote) {
		p.release(old)
	}
}

// deleted follows a tunnel removal. Holds p.mu.
func (p *PeerNeighbours) deleted(subnet netip.Prefix) {
	old, had := p.remotes[subnet]
	if !had {
		return
	}
	delete(p.remotes, subnet)
	p.release(old)
}

// ensure adds the managed entry for remote (the kernel starts resolving it).
// Holds p.mu.
func (p *PeerNeighbours) ensure(remote netip.Addr) {
	err := netlink.NeighSet(p.neigh(remote))
	if err == nil {
		delete(p.failed, remote)
		return
	}
	if !p.failed[remote] {
		p.failed[remote] = true
		p.log.Warn("managed neighbour for a DirectRouting IPv6 peer (its traffic is dropped until this node sends to it)",
			zap.Stringer("remote", remote), zap.Error(err))
	}
}

// release removes remote's entry unless another tunnel still routes to it.
// Holds p.mu.
func (p *PeerNeighbours) release(remote netip.Addr) {
	for _, r := range p.remotes {
		if r == remote {
			return
		}
	}
	delete(p.failed, remote)
	if err := netlink.NeighDel(p.neigh(remote)); err != nil && !errors.Is(err, unix.ENOENT) {
		p.log.Warn("remove the neighbour of a former DirectRouting IPv6 peer", zap.Stringer("remote", remote), zap.Error(err))
	}
}

func (p *PeerNeighbours) neigh(remote netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex: p.ifindex,
		Family:    netlink.FAMILY_V6,
		State:     netlink.NUD_NONE, // the kernel resolves it
		Flags:     netlink.NTF_EXT_LEARNED,
		FlagsExt:  netlink.NTF_EXT_MANAGED,
		IP:        net.IP(remote.AsSlice()),
	}
}

// ours lists the underlay's IPv6 neighbour entries this code added.
func (p *PeerNeighbours) ours() (map[netip.Addr]bool, error) {
	ns, err := netlink.NeighList(p.ifindex, netlink.FAMILY_V6)
	if err != nil {
		return nil, fmt.Errorf("list neighbours: %w", err)
	}
	out := map[netip.Addr]bool{}
	for _, n := range ns {
		a, ok := netip.AddrFromSlice(n.IP)
		if ok && n.Flags&netlink.NTF_EXT_LEARNED != 0 && n.FlagsExt&netlink.NTF_EXT_MANAGED != 0 {
			out[a.Unmap()] = true
		}
	}
	return out, nil
}
