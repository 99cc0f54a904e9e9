package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/control/flannel"
)

// underlay is the NIC weftd tunnels over and the address peers reach it at.
type underlay struct {
	Link     netlink.Link
	IP       netip.Addr   // the address on Link
	Prefix   netip.Prefix // Link's connected prefix: peers inside share our L2 (DirectRouting)
	PublicIP netip.Addr   // advertised in the lease; --public-ip or IP
}

// findUnderlay picks the underlay NIC like flanneld: --iface (a name or an
// address on an interface), else the interface of the default route.
func findUnderlay(iface string, publicIP netip.Addr) (underlay, error) {
	var l netlink.Link
	var err error
	switch {
	case iface == "":
		l, err = defaultRouteLink()
	default:
		if ip, perr := netip.ParseAddr(iface); perr == nil {
			l, err = linkWithAddr(ip)
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
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return underlay{}, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || !ip.Unmap().IsGlobalUnicast() {
			continue
		}
		ones, _ := a.Mask.Size()
		u := underlay{Link: l, IP: ip.Unmap(), Prefix: netip.PrefixFrom(ip.Unmap(), ones).Masked(), PublicIP: publicIP}
		if !u.PublicIP.IsValid() {
			u.PublicIP = u.IP
		}
		return u, nil
	}
	return underlay{}, fmt.Errorf("underlay interface %s has no global IPv4 address", l.Attrs().Name)
}

func defaultRouteLink() (netlink.Link, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			return netlink.LinkByIndex(r.LinkIndex)
		}
	}
	return nil, errors.New("no default route; pass --iface")
}

func linkWithAddr(ip netip.Addr) (netlink.Link, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
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
