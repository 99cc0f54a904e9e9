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
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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

	pool, err := openPool(conf.DataDir, conf.Name, n.env.subnets())
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

	// 1. The addresses, one per family the node has.
	rb.add("address allocation", func() error { return pool.release(args.ContainerID, args.IfName) })
	addrs, err := pool.allocate(args.ContainerID, args.IfName)
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
		IPs:         addrs,
		PinPath:     conf.PinPath,
	}
	rb.add("record", func() error { return removeRecord(conf.DataDir, hostIf) })
	if err := writeRecord(conf.DataDir, rec); err != nil {
		return nil, err
	}
	if err := checkpoint("record"); err != nil {
		return nil, err
	}

	// 4. The pod side: addresses, up, a default route per family.
	result := newResult(rec, args.Netns, n.env.MTU)
	if err := podNS.Do(func(ns.NetNS) error { return configurePod(args.IfName, result) }); err != nil {
		return nil, err
	}
	if err := checkpoint("pod"); err != nil {
		return nil, err
	}

	// 5. The host side: the pod's /32 and /128 through its veth, so the
	// node's own traffic (and anything from_pod passes up) finds the pod.
	if err := configureHostSide(hostIf, hostVeth.Index, addrs); err != nil {
		return nil, err
	}
	if err := checkpoint("host-route"); err != nil {
		return nil, err
	}

	// 6. The data plane's view of the pod: one entry per address.
	rb.add("endpoint entries", func() error {
		var errs []error
		for _, a := range addrs {
			errs = append(errs, deleteEndpoint(n.maps, a.Addr(), ownedBy(hostVeth.Index)))
		}
		return errors.Join(errs...)
	})
	for _, a := range addrs {
		ep := maps.Endpoint{IP: a.Addr(), IfIndex: uint32(hostVeth.Index), MAC: podVeth.HardwareAddr, HostMAC: hostVeth.HardwareAddr}
		if err := n.maps.Endpoints.Put(ep); err != nil {
			return nil, fmt.Errorf("add endpoint entry %s: %w", a.Addr(), err)
		}
	}
	if err := checkpoint("endpoint"); err != nil {
		return nil, err
	}

	// 7. from_pod on the host side, last: the program then finds complete
	// endpoint entries for the first packet (and ARP or Neighbour
	// Solicitation for a gateway) it sees.
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
// (with its sandbox), the addresses on interface 1 (IPv4 first), each with
// its family's gateway, and one default route per family via that gateway.
func newResult(rec *record, netns string, mtu int) *current.Result {
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: rec.HostIfName, Mac: rec.HostMAC, Mtu: mtu},
			{Name: rec.IfName, Mac: rec.PodMAC, Mtu: mtu, Sandbox: netns},
		},
	}
	for _, p := range rec.IPs {
		gw := loader.GatewayIP(p)
		res.IPs = append(res.IPs, &current.IPConfig{Interface: current.Int(1), Address: *prefixToIPNet(p), Gateway: gw.AsSlice()})
		def := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if p.Addr().Is6() {
			def = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		res.Routes = append(res.Routes, &types.Route{Dst: *prefixToIPNet(def), GW: gw.AsSlice()})
	}
	return res
}

// configurePod runs inside the pod netns: addresses, link up, default
// routes. The reference plugins' ipam.ConfigureIface is not used because
// the IPv6 address must skip DAD (IFA_F_NODAD: no other node can hold it,
// and a second of tentative state would fail the pod's first connections)
// and the routes must be onlink: no device owns a gateway address, the
// data plane answers ARP and Neighbour Solicitations for it.
func configurePod(ifName string, res *current.Result) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("configure pod %s: %w", ifName, err)
	}
	for _, ipc := range res.IPs {
		if ipc.Address.IP.To4() == nil {
			if err := enableIPv6(ifName); err != nil {
				return fmt.Errorf("configure pod %s: %w", ifName, err)
			}
			break
		}
	}
	for _, ipc := range res.IPs {
		addr := &netlink.Addr{IPNet: &ipc.Address}
		if ipc.Address.IP.To4() == nil {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("configure pod %s: add address %s: %w", ifName, ipc.Address.String(), err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("configure pod %s: set up: %w", ifName, err)
	}
	for _, r := range res.Routes {
		dst := r.Dst
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &dst, Gw: r.GW, Scope: netlink.SCOPE_UNIVERSE}
		route.SetFlag(netlink.FLAG_ONLINK)
		if err := netlink.RouteAdd(route); err != nil {
			return fmt.Errorf("configure pod %s: add route %s via %s onlink: %w", ifName, dst.String(), r.GW, err)
		}
	}
	return nil
}

// enableIPv6 makes sure IPv6 runs on lo and ifName in the calling thread's
// netns (a runtime may have created the sandbox with IPv6 disabled) and
// that the address survives the link going down, as an IPv4 one does.
func enableIPv6(ifName string) error {
	for _, kv := range [][2]string{
		{"net/ipv6/conf/lo/disable_ipv6", "0"},
		{"net/ipv6/conf/" + ifName + "/disable_ipv6", "0"},
		{"net/ipv6/conf/" + ifName + "/keep_addr_on_down", "1"},
	} {
		if cur, err := sysctl.Sysctl(kv[0]); err == nil && cur == kv[1] {
			continue
		}
		if _, err := sysctl.Sysctl(kv[0], kv[1]); err != nil {
			return fmt.Errorf("enable IPv6: set %s=%s: %w", kv[0], kv[1], err)
		}
	}
	return nil
}

// configureHostSide prepares the host veth for the pod's addresses and adds
// a host route per address: "ip/32 dev <host veth> scope link" and
// "ip/128 dev <host veth>". Add, not replace: an existing route to the
// address belongs to someone else and is a conflict to report. For IPv6
// the veth needs IPv6 on (the node may default to off) and no DAD on its
// link-local address, the source of the node's Neighbour Solicitations to
// the pod, which would otherwise stay tentative for a second.
func configureHostSide(hostIf string, ifindex int, addrs []netip.Prefix) error {
	for _, p := range addrs {
		if p.Addr().Is6() {
			for _, kv := range [][2]string{
				{"net/ipv6/conf/" + hostIf + "/accept_dad", "0"},
				{"net/ipv6/conf/" + hostIf + "/disable_ipv6", "0"},
			} {
				if _, err := sysctl.Sysctl(kv[0], kv[1]); err != nil {
					return fmt.Errorf("host veth %s: set %s=%s: %w", hostIf, kv[0], kv[1], err)
				}
			}
			break
		}
	}
	for _, p := range addrs {
		if err := addHostRoute(ifindex, p.Addr()); err != nil {
			return err
		}
	}
	return nil
}

// addHostRoute adds the host route to one pod address through its veth.
func addHostRoute(ifindex int, a netip.Addr) error {
	r := &netlink.Route{LinkIndex: ifindex, Dst: prefixToIPNet(netip.PrefixFrom(a, a.BitLen())), Scope: netlink.SCOPE_LINK}
	if a.Is6() {
		r.Scope = netlink.SCOPE_UNIVERSE // IPv6 routes carry no scope
	}
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
