package topo

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// hostAddr returns host number n of prefix (n=1 is the first address after
// the network address). It refuses the network address itself and, for IPv4,
// the broadcast address.
func hostAddr(p netip.Prefix, n uint64) (netip.Addr, error) {
	if !p.IsValid() {
		return netip.Addr{}, fmt.Errorf("invalid prefix %v", p)
	}
	b := p.Masked().Addr().As16()
	lo := binary.BigEndian.Uint64(b[8:])
	sum := lo + n
	if sum < lo {
		return netip.Addr{}, fmt.Errorf("host %d overflows %v", n, p)
	}
	binary.BigEndian.PutUint64(b[8:], sum)
	a := netip.AddrFrom16(b)
	if p.Addr().Is4() {
		a = a.Unmap()
	}
	hostBits := a.BitLen() - p.Bits()
	if n == 0 || !p.Contains(a) || (a.Is4() && hostBits < 64 && n == 1<<hostBits-1) {
		return netip.Addr{}, fmt.Errorf("host %d is not a usable address of %v", n, p)
	}
	return a, nil
}

// ipNet converts a prefix to the *net.IPNet netlink wants, keeping the
// address as given (not masked), as an interface address needs.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// hostPrefix is the single-address prefix of a (/32 or /128).
func hostPrefix(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, a.BitLen())
}

// addrFromIP converts a netlink IP to netip, unmapping IPv4.
func addrFromIP(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
