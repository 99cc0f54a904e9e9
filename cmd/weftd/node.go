package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/control/flannel"
)

// underlay is the NIC weftd tunnels over and the addresses peers reach it
// at. Each family's fields are zero when the NIC has no address of it.
type underlay struct {
	Link     netlink.Link
	IP       netip.Addr   // the IPv4 address on Link
	Prefix   netip.Prefix // Link's connected IPv4 prefix: peers inside share our L2 (DirectRouting)
	PublicIP netip.Addr   // advertised in the lease; --public-ip or IP
	// The same for IPv6: IP6 is the source of outer IPv6 headers, PublicIPv6
	// is --public-ipv6 or IP6.
	IP6        netip.Addr
	Prefix6    netip.Prefix
	PublicIPv6 netip.Addr
}

// findUnderlay picks the underlay NIC like flanneld: --iface (a name or an
// address on an interface, of either family), else the interface of the
// default route (IPv4's, else IPv6's). Its addresses:
//
//   - IPv4: the first global unicast one, or the --iface address;
//   - IPv6: the --iface address, else a global unicast one that is not
//     deprecated, tentative or a temporary (privacy) address, permanent ones
//     first, else in the kernel's order. flanneld takes the first of a
//     similar sort; where a NIC has several, --public-ipv6 (what peers send
//     to) or --iface=<address> chooses. Link-local addresses are never
//     used: they do not route.
//
// A NIC without an address of either family is an error; whether the
// families it has suit the network is checkUnderlay's question.
func findUnderlay(iface string, publicIP, publicIPv6 netip.Addr) (underlay, error) {
	var l netlink.Link
	var err error
	var ifaceIP netip.Addr
	switch {
	case iface == "":
		l, err = defaultRouteLink()
	default:
		if ip, perr := netip.ParseAddr(iface); perr == nil {
			ifaceIP = ip.Unmap()
			l, err = linkWithAddr(ifaceIP)
		} else {
			l, err = netlink.LinkByName(iface)
		}
	}
	if err != nil && iface != "" {
		return underlay{}, fmt.Errorf("--iface %q: %w", iface, err)
	}
	if err != nil {
		return underlay{}, fmt.Errorf("find underlay interface: %w", err)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return underlay{}, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	u := underlay{Link: l, PublicIP: publicIP, PublicIPv6: publicIPv6}
	var cands6 []netlink.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		ones, _ := a.Mask.Size()
		switch {
		case ip.Is4() && ip.IsGlobalUnicast() && (!u.IP.IsValid() || ip == ifaceIP):
			u.IP, u.Prefix = ip, netip.PrefixFrom(ip, ones).Masked()
		case ip.Is6() && ip == ifaceIP:
			cands6 = append([]netlink.Addr{a}, cands6...)
		case ip.Is6() && ip.IsGlobalUnicast() && a.Flags&(unix.IFA_F_DEPRECATED|unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED|unix.IFA_F_TEMPORARY) == 0:
			cands6 = append(cands6, a)
		}
	}
	if ifaceIP.Is4() && u.IP != ifaceIP {
		return underlay{}, fmt.Errorf("--iface %s: not an address of %s", ifaceIP, l.Attrs().Name)
	}
	// Permanent before dynamic (SLAAC, DHCPv6), keeping the kernel's order
	// otherwise; an --iface address stays first.
	slices.SortStableFunc(cands6, func(a, b netlink.Addr) int {
		ip, _ := netip.AddrFromSlice(a.IP)
		if ip.Unmap() == ifaceIP {
			return -1
		}
		if ip2, _ := netip.AddrFromSlice(b.IP); ip2.Unmap() == ifaceIP {
			return 1
		}
		pa, pb := a.Flags&unix.IFA_F_PERMANENT != 0, b.Flags&unix.IFA_F_PERMANENT != 0
		switch {
		case pa && !pb:
			return -1
		case pb && !pa:
			return 1
		}
		return 0
	})
	if len(cands6) > 0 {
		ip, _ := netip.AddrFromSlice(cands6[0].IP)
		ones, _ := cands6[0].Mask.Size()
		u.IP6, u.Prefix6 = ip, netip.PrefixFrom(ip, ones).Masked()
	}
	if !u.PublicIP.IsValid() {
		u.PublicIP = u.IP
	}
	if !u.PublicIPv6.IsValid() {
		u.PublicIPv6 = u.IP6
	}
	if !u.IP.IsValid() && !u.IP6.IsValid() {
		return underlay{}, fmt.Errorf("underlay interface %s has no global IPv4 or IPv6 address", l.Attrs().Name)
	}
	return u, nil
}

func defaultRouteLink() (netlink.Link, error) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteList(nil, family)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				return netlink.LinkByIndex(r.LinkIndex)
			}
		}
	}
	return nil, errors.New("no default route; pass --iface")
}

func linkWithAddr(ip netip.Addr) (netlink.Link, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			return netlink.LinkByIndex(a.LinkIndex)
		}
	}
	return nil, fmt.Errorf("no interface has address %s", ip)
}

// stableVtepMAC derives this node's VtepMAC from the machine identity and
// the node's public IP, so it survives daemon restarts and reboots without
// any state file (flannel#1795: a VtepMAC that changes on reboot leaves
// peers with stale neighbour entries until the lease is rewritten). The
// public IP is part of the input so several nodes on one machine (the lab)
// differ. The result is a locally administered unicast address.
func stableVtepMAC(machineID string, publicIP netip.Addr) net.HardwareAddr {
	sum := sha256.Sum256([]byte("weft-vtep\x00" + machineID + "\x00" + publicIP.String()))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = (mac[0] | 0x02) &^ 0x01 // locally administered, unicast
	return mac
}

// machineID reads systemd's machine id, falling back to D-Bus's copy and
// then to the host name.
func machineID() string {
	for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
		if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) > 0 {
			return strings.TrimSpace(string(b))
		}
	}
	h, _ := os.Hostname()
	return h
}

// writeSubnetEnv replaces path atomically (temp file + rename) so readers
// never see half a file.
func writeSubnetEnv(path string, env flannel.SubnetEnv) error {
	b, err := env.Marshal()
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".subnet.env-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
