package flannel

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// The IPv6 half of the network config: flannel's CheckNetworkConfig rules
// for IPv6Network, IPv6SubnetLen, IPv6SubnetMin and IPv6SubnetMax, and the
// allocator's view of them. flannel does this with math/big; 128-bit
// arithmetic on two uint64s is all it needs.

func (c *NetworkConfig) parseIPv6Network(raw rawConfig) error {
	if raw.IPv6Network == "" {
		return fmt.Errorf("%w: EnableIPv6 is true but IPv6Network is missing", ErrIPv6Network)
	}
	n, err := netip.ParsePrefix(raw.IPv6Network)
	if err != nil || !n.Addr().Is6() || n.Addr().Is4In6() {
		return fmt.Errorf("%w: %q is not an IPv6 CIDR", ErrIPv6Network, raw.IPv6Network)
	}
	// flannel keeps net.ParseCIDR's masked network, and calls ::/0 empty.
	n = n.Masked()
	if n.Bits() == 0 {
		return fmt.Errorf("%w: %s is empty", ErrIPv6Network, n)
	}
	c.IPv6Network = n

	// As for IPv4: a node needs at least a /126, the network at least four
	// subnets because the first is skipped; the default is a /64 per node.
	switch l := raw.IPv6SubnetLen; {
	case l == 0 && n.Bits() > 124:
		return fmt.Errorf("%w: %s is too small, the smallest usable IPv6Network is a /124", ErrIPv6Network, n)
	case l == 0 && n.Bits() <= 62:
		c.IPv6SubnetLen = 64
	case l == 0:
		c.IPv6SubnetLen = n.Bits() + 2
	case l < 0 || l > 126:
		return fmt.Errorf("%w: %d, want at most 126 (a /127 or /128 leaves no room for pods)", ErrIPv6SubnetLen, l)
	case l < n.Bits()+2:
		return fmt.Errorf("%w: %d, want at least %d so that IPv6Network %s holds four subnets",
			ErrIPv6SubnetLen, l, n.Bits()+2, n)
	default:
		c.IPv6SubnetLen = l
	}

	size := pow2(128 - c.IPv6SubnetLen)
	first := u128From(n.Addr())
	last := first.add(pow2(128 - n.Bits()).sub(u128{lo: 1}))
	// Default range: skip the first subnet, end at the last one.
	if c.IPv6SubnetMin, err = c.rangeBound6("IPv6SubnetMin", raw.IPv6SubnetMin, first.add(size)); err != nil {
		return err
	}
	if c.IPv6SubnetMax, err = c.rangeBound6("IPv6SubnetMax", raw.IPv6SubnetMax, last.sub(size).add(u128{lo: 1})); err != nil {
		return err
	}
	// flannel does not check this; an empty range would only show up as
	// "out of subnets" on the first node.
	if c.IPv6SubnetMin.Compare(c.IPv6SubnetMax) > 0 {
		return fmt.Errorf("%w: IPv6SubnetMin %s is above IPv6SubnetMax %s", ErrIPv6SubnetRange, c.IPv6SubnetMin, c.IPv6SubnetMax)
	}
	return nil
}

func (c *NetworkConfig) rangeBound6(name, s string, def u128) (netip.Addr, error) {
	if s == "" {
		return def.addr(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%w: %s %q is not an IPv6 address", ErrIPv6SubnetRange, name, s)
	}
	if !c.IPv6Network.Contains(a) {
		return netip.Addr{}, fmt.Errorf("%w: %s %s is outside IPv6Network %s", ErrIPv6SubnetRange, name, a, c.IPv6Network)
	}
	if netip.PrefixFrom(a, c.IPv6SubnetLen).Masked().Addr() != a {
		return netip.Addr{}, fmt.Errorf("%w: %s %s is not on a /%d boundary", ErrIPv6SubnetRange, name, a, c.IPv6SubnetLen)
	}
	return a, nil
}

// InRangeIPv6 reports whether sn is an IPv6 subnet this config would
// allocate: of IPv6SubnetLen size, inside [IPv6SubnetMin, IPv6SubnetMax].
// It is flannel's isIPv6SubnetConfigCompat for an IPv6-enabled network;
// false when IPv6 is off.
func (c *NetworkConfig) InRangeIPv6(sn netip.Prefix) bool {
	if !c.IPv6Network.IsValid() || !sn.Addr().Is6() || sn.Addr().Is4In6() || sn.Addr().Zone() != "" ||
		sn.Bits() != c.IPv6SubnetLen || sn.Masked() != sn {
		return false
	}
	return sn.Addr().Compare(c.IPv6SubnetMin) >= 0 && sn.Addr().Compare(c.IPv6SubnetMax) <= 0
}

// FreeIPv6Subnets returns up to limit IPv6 subnets of [IPv6SubnetMin,
// IPv6SubnetMax], in order, that overlap none of used (IPv4 prefixes in
// used are ignored). flannel's allocator takes the first 100 and picks one
// at random, independently of the IPv4 pick; a dual-stack node is out of
// subnets when either list is empty. nil when IPv6 is off.
//
// The walk skips each used subnet once, so it costs O(len(used) + limit)
// steps however large the IPv6 range is.
func (c *NetworkConfig) FreeIPv6Subnets(used []netip.Prefix, limit int) []netip.Prefix {
	if !c.IPv6Network.IsValid() {
		return nil
	}
	exact := make(map[netip.Prefix]bool, len(used)) // used, truncated to IPv6SubnetLen
	var wide []netip.Prefix                         // used prefixes larger than a subnet
	for _, p := range used {
		if !p.IsValid() || !p.Addr().Is6() || p.Addr().Is4In6() {
			continue
		}
		p = netip.PrefixFrom(p.Addr().WithZone(""), p.Bits())
		if p.Bits() >= c.IPv6SubnetLen {
			exact[netip.PrefixFrom(p.Addr(), c.IPv6SubnetLen).Masked()] = true
		} else {
			wide = append(wide, p.Masked())
		}
	}
	size := pow2(128 - c.IPv6SubnetLen)
	last := u128From(c.IPv6SubnetMax)
	var out []netip.Prefix
	for a := u128From(c.IPv6SubnetMin); len(out) < limit; a = a.add(size) {
		sn := netip.PrefixFrom(a.addr(), c.IPv6SubnetLen)
		if !exact[sn] && !containedIn(wide, sn.Addr()) {
			out = append(out, sn)
		}
		if a.cmp(last) >= 0 {
			break // also keeps a+size from wrapping past ffff:...
		}
	}
	return out
}

func containedIn(wide []netip.Prefix, a netip.Addr) bool {
	for _, w := range wide {
		if w.Contains(a) {
			return true
		}
	}
	return false
}

// u128 is an IPv6 address as a number.
type u128 struct{ hi, lo uint64 }

func u128From(a netip.Addr) u128 {
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func (u u128) addr() netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

// pow2 is 1<<n for n in [0, 127].
func pow2(n int) u128 {
	if n >= 64 {
		return u128{hi: 1 << (n - 64)}
	}
	return u128{lo: 1 << n}
}

func (u u128) add(v u128) u128 {
	lo := u.lo + v.lo
	carry := uint64(0)
	if lo < u.lo {
		carry = 1
	}
	return u128{u.hi + v.hi + carry, lo}
}

func (u u128) sub(v u128) u128 {
	lo := u.lo - v.lo
	borrow := uint64(0)
	if u.lo < v.lo {
		borrow = 1
	}
	return u128{u.hi - v.hi - borrow, lo}
}

func (u u128) cmp(v u128) int {
	switch {
	case u.hi != v.hi:
		if u.hi < v.hi {
			return -1
		}
		return 1
	case u.lo != v.lo:
		if u.lo < v.lo {
			return -1
		}
		return 1
	}
	return 0
}

// LeaseFits reports whether a node may keep a lease whose key names v4 and
// v6 (ParseSubnetKey; zero for an absent half) under this config: each
// enabled family's subnet InRange/InRangeIPv6, and no subnet of a disabled
// family. It is flannel's isSubnetConfigCompat && isIPv6SubnetConfigCompat,
// so turning IPv6 on (or off) makes a node give up its old lease and take a
// new pair, as flanneld does.
func (c *NetworkConfig) LeaseFits(v4, v6 netip.Prefix) bool {
	if c.Network.IsValid() != v4.IsValid() || c.IPv6Network.IsValid() != v6.IsValid() {
		return false
	}
	return (!v4.IsValid() || c.InRange(v4)) && (!v6.IsValid() || c.InRangeIPv6(v6))
}

// OwnLease reports whether attrs are a lease of the node with these
// underlay addresses. flannel matches on PublicIP alone; in an IPv6-only
// network every PublicIP is 0.0.0.0, so there PublicIPv6 decides.
func (c *NetworkConfig) OwnLease(attrs LeaseAttrs, publicIP, publicIPv6 netip.Addr) bool {
	if c.Network.IsValid() {
		return attrs.PublicIP.IsValid() && attrs.PublicIP == publicIP
	}
	return attrs.PublicIPv6.IsValid() && attrs.PublicIPv6 == publicIPv6
}
