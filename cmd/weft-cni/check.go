package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
)

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if err := check(conf, args); err != nil {
		return fmt.Errorf("check %s/%s: %w", args.ContainerID, args.IfName, err)
	}
	return nil
}

// expected is the attachment as the prevResult describes it.
type expected struct {
	hostIf, podIf *current.Interface
	podIPs        []*current.IPConfig
	routes        []*types.Route
}

// check compares the live attachment with the prevResult: host veth, its
// /32 routes, the endpoint entries, the pinned from_pod link, the address
// store, and inside the pod the interface, its peer, addresses and routes.
// Every mismatch is reported, not only the first.
func check(conf *NetConf, args *skel.CmdArgs) error {
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "check: the network config has no prevResult", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("check: convert prevResult: %v", err), "")
	}
	hostIf := hostVethName(args.ContainerID, args.IfName)
	want, err := expectedFrom(prev, hostIf, args)
	if err != nil {
		return err
	}
	n, err := openNode(conf)
	if err != nil {
		return err
	}
	defer n.Close()

	hostLink, err := netlinksafe.LinkByName(hostIf)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", hostIf, err)
	}
	errs := []error{checkHostLink(hostLink, want.hostIf)}
	hostIndex := hostLink.Attrs().Index
	var podIPs []netip.Addr
	for _, ipc := range want.podIPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		podIPs = append(podIPs, a.Unmap())
	}
	for _, a := range podIPs {
		errs = append(errs, checkHostRoute(hostIndex, a), checkEndpoint(n.maps, a, hostIndex, want))
	}
	errs = append(errs, checkPodLink(conf.PinPath, hostIndex), checkStore(conf, args, podIPs))
	errs = append(errs, checkPodSide(args, want, hostIndex))
	return errors.Join(errs...)
}

func expectedFrom(prev *current.Result, hostIf string, args *skel.CmdArgs) (*expected, error) {
	want := &expected{routes: prev.Routes}
	podIdx := -1
	for i, iface := range prev.Interfaces {
		switch {
		case iface.Name == args.IfName && iface.Sandbox == args.Netns:
			want.podIf, podIdx = iface, i
		case iface.Name == hostIf && iface.Sandbox == "":
			want.hostIf = iface
		}
	}
	if want.podIf == nil || want.hostIf == nil {
		return nil, fmt.Errorf("prevResult lacks interface %s in %s or host veth %s", args.IfName, args.Netns, hostIf)
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface == podIdx {
			want.podIPs = append(want.podIPs, ipc)
		}
	}
	if len(want.podIPs) == 0 {
		return nil, fmt.Errorf("prevResult has no address on %s", args.IfName)
	}
	return want, nil
}

func checkHostLink(l netlink.Link, want *current.Interface) error {
	name := l.Attrs().Name
	if l.Type() != "veth" {
		return fmt.Errorf("host interface %s is a %s, not a veth", name, l.Type())
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host veth %s is down", name)
	}
	if got := l.Attrs().HardwareAddr.String(); got != want.Mac {
		return fmt.Errorf("host veth %s has MAC %s, prevResult says %s", name, got, want.Mac)
	}
	return nil
}

func checkHostRoute(ifindex int, a netip.Addr) error {
	dst := prefixToIPNet(netip.PrefixFrom(a, a.BitLen()))
	routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Dst: dst, LinkIndex: ifindex},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_OIF)
	if err != nil {
		return fmt.Errorf("list host routes to %s: %w", a, err)
	}
	if len(routes) == 0 {
		return fmt.Errorf("host route %s dev ifindex %d missing", dst, ifindex)
	}
	return nil
}

func checkEndpoint(set *maps.Set, a netip.Addr, hostIndex int, want *expected) error {
	ep, err := set.Endpoints.Lookup(a)
	if err != nil {
		return fmt.Errorf("endpoint entry: %w", err)
	}
	if int(ep.IfIndex) != hostIndex || ep.MAC.String() != want.podIf.Mac || ep.HostMAC.String() != want.hostIf.Mac {
		return fmt.Errorf("endpoint entry %s = ifindex %d mac %s host mac %s, want ifindex %d mac %s host mac %s",
			a, ep.IfIndex, ep.MAC, ep.HostMAC, hostIndex, want.podIf.Mac, want.hostIf.Mac)
	}
	return nil
}

// checkPodLink: the pinned link exists and a program is attached to the
// veth's TCX ingress, asked of the kernel rather than of our own pins.
func checkPodLink(pinPath string, ifindex int) error {
	idx, err := loader.PodLinks(pinPath)
	if err != nil {
		return err
	}
	if !slices.Contains(idx, ifindex) {
		return fmt.Errorf("no pinned from_pod link %s for ifindex %d", loader.PodLinkName(ifindex), ifindex)
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return fmt.Errorf("query programs on ifindex %d: %w", ifindex, err)
	}
	if len(res.Programs) == 0 {
		return fmt.Errorf("no program attached to ifindex %d", ifindex)
	}
	return nil
}

func checkStore(conf *NetConf, args *skel.CmdArgs, ips []netip.Addr) error {
	store, err := openStore(conf.DataDir, conf.Name)
	if err != nil {
		return err
	}
	defer store.Close()
	held, err := store.held(args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	for _, a := range ips {
		if !slices.Contains(held, a) {
			return fmt.Errorf("address %s not allocated to %s/%s (store holds %v)", a, args.ContainerID, args.IfName, held)
		}
	}
	return nil
}

// checkIPv6Usable: ADD adds the pod's IPv6 address without DAD; one that
// is tentative or failed DAD (re-added by someone else, or DAD turned back
// on) cannot be used as a source, so the pod has no IPv6 in fact.
func checkIPv6Usable(l netlink.Link, ipcs []*current.IPConfig) error {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return fmt.Errorf("pod addresses: %w", err)
	}
	var errs []error
	for _, ipc := range ipcs {
		if ipc.Address.IP.To4() != nil {
			continue
		}
		for _, a := range addrs {
			if a.IP.Equal(ipc.Address.IP) && a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
				errs = append(errs, fmt.Errorf("pod address %s is tentative or failed DAD (flags %#x)", a.IP, a.Flags))
			}
		}
	}
	return errors.Join(errs...)
}

// checkPodSide looks inside the pod: interface, MAC, that its veth peer is
// our host veth, addresses and routes (the reference plugins' validators).
func checkPodSide(args *skel.CmdArgs, want *expected, hostIndex int) error {
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("open pod netns %q: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	return podNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(args.IfName)
		if err != nil {
			return fmt.Errorf("pod interface %s: %w", args.IfName, err)
		}
		var errs []error
		if got := l.Attrs().HardwareAddr.String(); got != want.podIf.Mac {
			errs = append(errs, fmt.Errorf("pod %s has MAC %s, prevResult says %s", args.IfName, got, want.podIf.Mac))
		}
		if _, peer, err := ip.GetVethPeerIfindex(args.IfName); err != nil {
			errs = append(errs, fmt.Errorf("pod %s peer: %w", args.IfName, err))
		} else if peer != hostIndex {
			errs = append(errs, fmt.Errorf("pod %s is paired with ifindex %d, not host veth %d", args.IfName, peer, hostIndex))
		}
		if err := ip.ValidateExpectedInterfaceIPs(args.IfName, want.podIPs); err != nil {
			errs = append(errs, fmt.Errorf("pod addresses: %w", err))
		} else {
			errs = append(errs, checkIPv6Usable(l, want.podIPs))
		}
		if err := ip.ValidateExpectedRoute(want.routes); err != nil {
			errs = append(errs, fmt.Errorf("pod routes: %w", err))
		}
		return errors.Join(errs...)
	})
}
