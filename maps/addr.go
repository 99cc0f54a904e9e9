// Package maps wraps each of Weft's BPF maps in a typed API over netip and
// net.HardwareAddr. Key and value layouts come from bpf2go (package bpf);
// this package only converts, both ways, and never hand-copies a layout.
//
// Addresses are stored 16 bytes wide, IPv4 as ::ffff:a.b.c.d, so one map
// holds both families. An IPv4 prefix /n is stored as prefix length 96+n.
package maps

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// ErrNotFound is returned by Lookup when the map has no such entry.
var ErrNotFound = errors.New("not found")

// v4MappedBits is the length of the ::ffff: prefix IPv4 addresses carry.
const v4MappedBits = 96

func addrTo16(a netip.Addr) ([16]byte, error) {
	if !a.IsValid() {
		return [16]byte{}, errors.New("invalid address")
	}
	return a.Unmap().As16(), nil // As16 maps IPv4 to ::ffff:a.b.c.d
}

func addrFrom16(b [16]byte) netip.Addr {
	return netip.AddrFrom16(b).Unmap()
}

// prefixToKey returns the LPM prefix length and address bytes for p.
func prefixToKey(p netip.Prefix) (uint32, [16]byte, error) {
	if !p.IsValid() {
		return 0, [16]byte{}, errors.New("invalid prefix")
	}
	p = p.Masked()
	addr, err := addrTo16(p.Addr())
	if err != nil {
		return 0, addr, err
	}
	bits := p.Bits()
	switch {
	case p.Addr().Is4():
		bits += v4MappedBits // stored as ::ffff:a.b.c.d
	case p.Addr().Is4In6() && bits < v4MappedBits:
		return 0, addr, fmt.Errorf("prefix %s is shorter than its ::ffff: mapping", p)
	}
	return uint32(bits), addr, nil
}

func prefixFromKey(bits uint32, b [16]byte) (netip.Prefix, error) {
	a := netip.AddrFrom16(b)
	if a.Is4In6() {
		if bits < v4MappedBits || bits > 128 {
			return netip.Prefix{}, fmt.Errorf("prefix length %d does not fit an IPv4-mapped key", bits)
		}
		return netip.PrefixFrom(a.Unmap(), int(bits-v4MappedBits)), nil
	}
	if bits > 128 {
		return netip.Prefix{}, fmt.Errorf("prefix length %d out of range", bits)
	}
	return netip.PrefixFrom(a, int(bits)), nil
}

func macTo6(mac net.HardwareAddr) ([6]byte, error) {
	var b [6]byte
	if len(mac) != 6 {
		return b, fmt.Errorf("MAC %q is not 6 bytes", mac.String())
	}
	copy(b[:], mac)
	return b, nil
}

func macFrom6(b [6]byte) net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	copy(mac, b[:])
	return mac
}

// optAddrTo16 is addrTo16 for optional addresses: an invalid one (none) is
// stored all-zero, which the programs read as "not set".
func optAddrTo16(a netip.Addr) ([16]byte, error) {
	if !a.IsValid() {
		return [16]byte{}, nil
	}
	return addrTo16(a)
}

// optAddrFrom16 reads an optional address: all-zero is none (invalid).
func optAddrFrom16(b [16]byte) netip.Addr {
	if b == [16]byte{} {
		return netip.Addr{}
	}
	return addrFrom16(b)
}
