package main

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/maps"
)

// owner says whether state pointing at a host-side ifindex (an endpoint
// entry, a pinned from_pod link) belongs to the attachment being removed.
// Removal must never touch another pod's entry, even one that happens to
// share a recycled address or ifindex.
type owner func(ifindex int) bool

// ownedBy: exactly these ifindexes (ADD's rollback knows its veth).
func ownedBy(ifindexes ...int) owner {
	return func(i int) bool { return slices.Contains(ifindexes, i) }
}

// namedOrStale: the interface at the index is hostIf, or no interface has
// the index any more (our veth, already deleted, or state a crash left).
// An index now used by another interface is not ours, whatever the record
// says: the kernel may have handed it to a newer pod.
func namedOrStale(hostIf string) owner {
	return func(i int) bool {
		l, err := netlink.LinkByIndex(i)
		if err != nil {
			var nf netlink.LinkNotFoundError
			return errors.As(err, &nf)
		}
		return l.Attrs().Name == hostIf
	}
}

// deleteEndpoint removes ip's endpoint entry if owns says it is ours.
func deleteEndpoint(set *maps.Set, ip netip.Addr, owns owner) error {
	ep, err := set.Endpoints.Lookup(ip)
	if errors.Is(err, maps.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove endpoint entry: %w", err)
	}
	if !owns(int(ep.IfIndex)) {
		return nil
	}
	if err := set.Endpoints.Delete(ip); err != nil && !errors.Is(err, maps.ErrNotFound) {
		return fmt.Errorf("remove endpoint entry: %w", err)
	}
	return nil
}

// deleteLinkByName deletes a host-side veth (and with it the pod end and
// every route through either); an absent link is fine.
func deleteLinkByName(name string) error {
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return nil // gone meanwhile (its netns was destroyed)
		}
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}
