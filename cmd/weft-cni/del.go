package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
)

func cmdDel(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	return teardown(conf, args.ContainerID, args.IfName)
}

// teardown removes everything ADD may have made for one attachment, from
// whatever survives: the record, the deterministic host veth name, the
// address store. It needs neither the pod's netns nor subnet.env, treats
// each missing piece as already removed, and so is idempotent and also
// cleans up after an ADD that was killed half-way. The record goes last,
// only once the rest is gone, so a failed DEL can be retried.
func teardown(conf *NetConf, containerID, ifName string) error {
	hostIf := hostVethName(containerID, ifName)
	var errs []error

	rec, err := readRecord(conf.DataDir, hostIf)
	if err != nil {
		// A damaged record must not block DEL forever: carry on with
		// what can be derived; the file goes with the rest.
		fmt.Fprintf(os.Stderr, "weft-cni: del %s/%s: ignoring record: %v\n", containerID, ifName, err)
	}
	pinPath := conf.PinPath
	if rec != nil && rec.PinPath != "" {
		pinPath = rec.PinPath // where ADD attached, should the config have moved
	}

	// The host veth's ifindex now and as recorded: the data plane state
	// hangs off these.
	var ifindexes []int
	if rec != nil && rec.HostIfIndex > 0 {
		ifindexes = append(ifindexes, rec.HostIfIndex)
	}
	l, err := netlinksafe.LinkByName(hostIf)
	var notFound netlink.LinkNotFoundError
	switch {
	case err == nil:
		if !slices.Contains(ifindexes, l.Attrs().Index) {
			ifindexes = append(ifindexes, l.Attrs().Index)
		}
	case !errors.As(err, &notFound):
		errs = append(errs, fmt.Errorf("find host veth %s: %w", hostIf, err))
	}
	owns := namedOrStale(hostIf)

	store, err := openStore(conf.DataDir, conf.Name)
	if err != nil {
		return fmt.Errorf("del %s/%s: %w", containerID, ifName, err)
	}
	defer store.Close()
	ips, err := store.held(containerID, ifName)
	errs = append(errs, err)
	if rec != nil {
		for _, p := range rec.IPs {
			if !slices.Contains(ips, p.Addr()) {
				ips = append(ips, p.Addr())
			}
		}
	}

	// Data plane first, so the program never forwards to a veth being torn down.
	errs = append(errs, removeFromDataPlane(pinPath, ips, ifindexes, owns))
	errs = append(errs, deleteLinkByName(hostIf))
	errs = append(errs, store.release(containerID, ifName))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("del %s/%s: %w", containerID, ifName, err)
	}
	if err := removeRecord(conf.DataDir, hostIf); err != nil {
		return fmt.Errorf("del %s/%s: %w", containerID, ifName, err)
	}
	return nil
}

// removeFromDataPlane deletes the pod's endpoint entries and its pinned
// from_pod links. A node without a data plane has neither: not an error.
func removeFromDataPlane(pinPath string, ips []netip.Addr, ifindexes []int, owns owner) error {
	set, err := maps.OpenPinned(pinPath)
	if err != nil {
		if dataPlaneGone(err) {
			return nil
		}
		return fmt.Errorf("open data plane: %w", err)
	}
	defer set.Close()
	var errs []error
	for _, ip := range ips {
		errs = append(errs, deleteEndpoint(set, ip, owns))
	}
	for _, idx := range ifindexes {
		if owns(idx) {
			errs = append(errs, loader.DetachPodPinned(pinPath, idx))
		}
	}
	return errors.Join(errs...)
}
