package loader

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/maps"
)

// Neighbours keeps a kernel-managed neighbour entry (NTF_EXT_MANAGED,
// Linux 5.16+) on the underlay for each DirectRouting peer's underlay
// address. The kernel resolves a managed entry as soon as it is added and
// keeps it resolved without traffic, so the data plane's receive check
// (direct_sender_ok, direct_sender_ok6: the packet's source MAC must be
// the one the kernel resolved for that peer) knows a new peer before its
// first packet. Without it an IPv6 peer's first packets were dropped: its
// Neighbour Solicitations come from its link-local address, which never
// teaches us its global one. It implements reconcile.DirectNeighbours.
type Neighbours struct {
	ifindex int
}

// NewNeighbours keeps entries on the underlay with this ifindex.
func NewNeighbours(underlayIfindex int) *Neighbours { return &Neighbours{ifindex: underlayIfindex} }

func (n *Neighbours) neigh(a netip.Addr) *netlink.Neigh {
	a = a.Unmap()
	family := netlink.FAMILY_V4
	if a.Is6() {
		family = netlink.FAMILY_V6
	}
	return &netlink.Neigh{LinkIndex: n.ifindex, Family: family, IP: a.AsSlice()}
}

// find returns the underlay's entry for a, or nil.
func (n *Neighbours) find(a netip.Addr) (*netlink.Neigh, error) {
	want := n.neigh(a)
	list, err := netlink.NeighList(n.ifindex, want.Family)
	if err != nil {
		return nil, fmt.Errorf("list neighbours: %w", err)
	}
	for i := range list {
		if ip, ok := netip.AddrFromSlice(list[i].IP); ok && ip.Unmap() == a.Unmap() {
			return &list[i], nil
		}
	}
	return nil, nil
}

// Keep makes the entry for a managed. An entry that already is (weftd
// restarted) is left alone: replacing it would reset it to unresolved and
// drop the peer's packets until the kernel resolves it again. An entry the
// kernel learned by itself is replaced by a managed one.
func (n *Neighbours) Keep(a netip.Addr) error {
	if !a.IsValid() || n.ifindex == 0 {
		return fmt.Errorf("keep neighbour %s on ifindex %d: bad address or underlay", a, n.ifindex)
	}
	e := n.neigh(a)
	// NUD_NONE is what the kernel wants with managed (a permanent state is
	// refused); it then probes at once, like `ip neigh add ADDR dev DEV managed`.
	e.State = netlink.NUD_NONE
	e.FlagsExt = netlink.NTF_EXT_MANAGED
	// The common case, a new peer, costs one exclusive add; only an
	// existing entry costs a listing of the underlay's.
	err := netlink.NeighAdd(e)
	if errors.Is(err, unix.EEXIST) {
		var have *netlink.Neigh
		if have, err = n.find(a); err != nil {
			return err
		}
		if have != nil && have.FlagsExt&netlink.NTF_EXT_MANAGED != 0 {
			return nil
		}
		err = netlink.NeighSet(e)
	}
	if err != nil {
		return fmt.Errorf("keep a managed neighbour entry for %s on ifindex %d (needs Linux 5.16+): %w", a, n.ifindex, err)
	}
	return nil
}

// Forget deletes the entry for a, if any, managed or not: the kernel
// learns it again if something still talks to that address.
func (n *Neighbours) Forget(a netip.Addr) error {
	if err := netlink.NeighDel(n.neigh(a)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("forget the neighbour entry of %s on ifindex %d: %w", a, n.ifindex, err)
	}
	return nil
}

// forgetDirectNeighbours is TeardownNode's part: it deletes the entry of
// every direct tunnel's remote in the pinned maps, on the underlay the
// config map names. Nothing pinned is nothing to do.
func forgetDirectNeighbours(pinPath string) error {
	set, err := maps.OpenPinned(pinPath)
	if errors.Is(err, maps.ErrNotPinned) {
		return nil
	}
	if errors.Is(err, maps.ErrPinLayout) {
		// Pins of another layout: this binary cannot read their tunnels,
		// and removing them (what the caller does next) must not wait on
		// it. Entries another version kept stay with the kernel.
		return nil
	}
	if err != nil {
		return err
	}
	defer set.Close()
	cfg, err := set.Config.Get()
	if errors.Is(err, maps.ErrNotConfigured) {
		return nil // never configured: no entries were kept either
	}
	if err != nil {
		return fmt.Errorf("read the config for the underlay: %w", err)
	}
	tunnels, err := set.Tunnels.All()
	if err != nil {
		return fmt.Errorf("read tunnels for their neighbour entries: %w", err)
	}
	n := NewNeighbours(int(cfg.UnderlayIfIndex))
	var errs []error
	for _, t := range tunnels {
		if t.Mode == maps.ModeDirect {
			errs = append(errs, n.Forget(t.Remote))
		}
	}
	return errors.Join(errs...)
}
