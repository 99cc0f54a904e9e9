package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	cnins "github.com/containernetworking/cni/pkg/ns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
)

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	res, err := add(conf, args)
	if err != nil {
		return err
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// add wires one attachment. Every check that can fail without side effects
// runs first (node data plane, netns, name clash); after that each step
// registers its undo, and any failure runs them all.
func add(conf *NetConf, args *skel.CmdArgs) (_ *current.Result, err error) {
	n, err := openNode(conf)
	if err != nil {
		return nil, err
	}
	defer n.Close()

	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("open pod netns %q: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	// Wiring "the pod" in our own netns would put both veth ends here.
	if same, cerr := cnins.CheckNetNS(args.Netns); cerr != nil {
		return nil, cerr
	} else if same {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("pod netns %q is the node's own netns", args.Netns), "")
	}

	hostIf := hostVethName(args.ContainerID, args.IfName)
	if err := checkNoAttachment(conf.DataDir, hostIf, args); err != nil {
		return nil, err
	}

	pool, err := openPool(conf.DataDir, conf.Name, n.env.Subnet)
	if err != nil {
		return nil, err
	}
	defer pool.Close()

	var rb rollback
	defer func() {
		if err != nil && !errors.Is(err, errSimulatedCrash) {
			err = withRollbackError(err, rb.run())
		}
	}()

	// 1. The address.
	rb.add("address allocation", func() error { return pool.release(args.ContainerID, args.IfName) })
	addr, err := pool.allocate(args.ContainerID, args.IfName)
	if err != nil {
		return nil, err
	}
	if err := checkpoint("ipam"); err != nil {
		return nil, err
	}

	// 2. The veth pair, created inside the pod netns with the host end
	// moved out at once. Deleting the host end removes both ends and the
	// routes through them, so this one undo covers steps 4 and 5 as well.
	rb.add("veth", func() error { return deleteLinkByName(hostIf) })
	var hostVeth, podVeth net.Interface
	err = podNS.Do(func(hostNS ns.NetNS) error {
		var err error
		hostVeth, podVeth, err = ip.SetupVethWithName(args.IfName, hostIf, n.env.MTU, "", hostNS)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create veth %s (host) / %s (pod): %w", hostIf, args.IfName, err)
	}
	if err := checkpoint("veth"); err != nil {
		return nil, err
	}

	// 3. The record, before anything that refers to the ifindex.
	rec := &record{
		Network:     conf.Name,
		ContainerID: args.ContainerID,
		IfName:      args.IfName,
		Netns:       args.Netns,
		HostIfName:  hostIf,
		HostIfIndex: hostVeth.Index,
		HostMAC:     hostVeth.HardwareAddr.String(),
		PodMAC:      podVeth.HardwareAddr.String(),
		IPs:         []netip.Prefix{addr},
		PinPath:     conf.PinPath,
	}
	rb.add("record", func() error { return removeRecord(conf.DataDir, hostIf) })
	if err := writeRecord(conf.DataDir, rec); err != nil {
		return nil, err
	}
	if err := checkpoint("record"); err != nil {
		return nil, err
	}

	// 4. The pod side: address, up, default route.
	gw := loader.GatewayIP(n.env.Subnet)
	result := newResult(rec, args.Netns, n.env.MTU, gw)
	if err := podNS.Do(func(ns.NetNS) error { return configurePod(args.IfName, result, gw) }); err != nil {
		return nil, err
	}
	if err := checkpoint("pod"); err != nil {
		return nil, err
	}

	// 5. The host side: the pod's /32 through its veth, so the node's own
	// traffic (and anything from_pod passes up) finds the pod.
	if err := addHostRoute(hostVeth.Index, addr.Addr()); err != nil {
		return nil, err
	}
	if err := checkpoint("host-route"); err != nil {
		return nil, err
	}

	// 6. The data plane's view of the pod.
	ep := maps.Endpoint{IP: addr.Addr(), IfIndex: uint32(hostVeth.Index), MAC: podVeth.HardwareAddr, HostMAC: hostVeth.HardwareAddr}
	rb.add("endpoint entry", func() error { return deleteEndpoint(n.maps, addr.Addr(), ownedBy(hostVeth.Index)) })
	if err := n.maps.Endpoints.Put(ep); err != nil {
		return nil, fmt.Errorf("add endpoint entry: %w", err)
	}
	if err := checkpoint("endpoint"); err != nil {
		return nil, err
	}

	// 7. from_pod on the host side, last: the program then finds a complete
	// endpoint entry for the first packet (and ARP for the gateway) it sees.
	rb.add("from_pod link", func() error { return loader.DetachPodPinned(conf.PinPath, hostVeth.Index) })
	if err := loader.AttachPodPinned(conf.PinPath, hostVeth.Index); err != nil {
		return nil, fmt.Errorf("attach from_pod to %s: %w", hostIf, err)
	}
	if err := checkpoint("attach"); err != nil {
		return nil, err
	}
	return result, nil
}

// checkNoAttachment refuses a second ADD for the same container and
// interface: the spec makes that an error, and reusing the existing veth
// would let a later rollback tear down a working pod.
func checkNoAttachment(dataDir, hostIf string, args *skel.CmdArgs) error {
	if _, err := netlinksafe.LinkByName(hostIf); err == nil {
		return fmt.Errorf("add %s/%s: host veth %s already exists (ADD twice without DEL?)", args.ContainerID, args.IfName, hostIf)
	}
	rec, err := readRecord(dataDir, hostIf)
	if err != nil {
		return err
	}
	if rec != nil {
		return fmt.Errorf("add %s/%s: already attached (record %s exists; ADD twice without DEL?)", args.ContainerID, args.IfName, recordPath(dataDir, hostIf))
	}
	return nil
}

// newResult builds the 1.0 result: interface 0 the host veth, 1 the pod's
// (with its sandbox), the address on interface 1, one default route.
func newResult(rec *record, netns string, mtu int, gw netip.Addr) *current.Result {
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: rec.HostIfName, Mac: rec.HostMAC, Mtu: mtu},
			{Name: rec.IfName, Mac: rec.PodMAC, Mtu: mtu, Sandbox: netns},
		},
	}
	for _, p := range rec.IPs {
		res.IPs = append(res.IPs, &current.IPConfig{Interface: current.Int(1), Address: *prefixToIPNet(p), Gateway: gw.AsSlice()})
	}
	res.Routes = []*types.Route{{Dst: *prefixToIPNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0)), GW: gw.AsSlice()}}
	return res
}

// configurePod runs inside the pod netns. ipam.ConfigureIface (the
// reference plugins' helper) sets the address and brings the link up; the
// default route is added here because it must be onlink: no device owns
// the gateway address, from_pod answers ARP for it.
func configurePod(ifName string, res *current.Result, gw netip.Addr) error {
	addrOnly := *res
	addrOnly.Routes = nil
	if err := ipam.ConfigureIface(ifName, &addrOnly); err != nil {
		return fmt.Errorf("configure pod %s: %w", ifName, err)
	}
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("configure pod %s: %w", ifName, err)
	}
	def := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice(), Scope: netlink.SCOPE_UNIVERSE}
	def.SetFlag(netlink.FLAG_ONLINK)
	if err := netlink.RouteAdd(def); err != nil {
		return fmt.Errorf("configure pod %s: add default route via %s onlink: %w", ifName, gw, err)
	}
	return nil
}

// addHostRoute adds "ip/32 dev <host veth> scope link" in the node. Add,
// not replace: an existing route to the address belongs to someone else
// and is a conflict to report.
func addHostRoute(ifindex int, a netip.Addr) error {
	r := &netlink.Route{LinkIndex: ifindex, Dst: prefixToIPNet(netip.PrefixFrom(a, a.BitLen())), Scope: netlink.SCOPE_LINK}
	if err := netlink.RouteAdd(r); err != nil {
		return fmt.Errorf("add host route %s dev ifindex %d: %w", a, ifindex, err)
	}
	return nil
}

// withRollbackError adds a failed rollback to the error ADD returns,
// keeping a CNI error's code.
func withRollbackError(err, uerr error) error {
	if uerr == nil {
		return err
	}
	var cerr *types.Error
	if errors.As(err, &cerr) {
		out := *cerr
		out.Details = fmt.Sprintf("%s; rollback incomplete: %v", cerr.Details, uerr)
		return &out
	}
	return fmt.Errorf("%w; rollback incomplete: %w", err, uerr)
}
