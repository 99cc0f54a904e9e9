package flannel

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Dual-stack and IPv6-only leases, as flannel writes them:
//
//	key   <prefix>/subnets/10.5.72.0-24&fc00:10:244:1::-64   dual-stack
//	      <prefix>/subnets/0.0.0.0-0&fc00:10:244:1::-64      IPv6-only
//	value {"PublicIP":"192.168.8.1","PublicIPv6":"fd00::1","BackendType":"vxlan",
//	       "BackendData":{"VNI":1,"VtepMAC":"..."},"BackendV6Data":{"VNI":1,"VtepMAC":"..."}}
//	      {"PublicIP":"0.0.0.0","PublicIPv6":"fd00::1","BackendType":"vxlan",
//	       "BackendV6Data":{"VNI":1,"VtepMAC":"..."}}
//
// flannel's IPv6-only key is its MakeSubnetKey of an empty IPv4 subnet, and
// its PublicIP an empty ip.IP4. (flanneld's etcd subnet manager does not
// really support IPv6-only: every such node has PublicIP 0.0.0.0, so a
// restarting node "finds" another node's lease by PublicIP and overwrites
// it, and its allocator never moves past the 0.0.0.0/0 candidate, which
// overlaps every lease, so it spins once one lease exists. Weft writes the
// same shapes; an allocator should use FreeIPv6Subnets and OwnLease, which
// matches IPv6-only nodes by PublicIPv6.)

// ErrLeaseFamily is a lease without a subnet of a family the network
// enables: an IPv6-only key in a network with IPv4, or a key without an
// IPv6 part in an IPv6-only network.
var ErrLeaseFamily = errors.New("lease lacks an address family of the network")

// noIPv4Subnet is the IPv4 part of an IPv6-only key.
var noIPv4Subnet = netip.PrefixFrom(netip.IPv4Unspecified(), 0)

// SubnetKeyDual is flannel's MakeSubnetKey for any family mix: v4 alone
// gives "10.5.72.0-24" (as SubnetKey), both give
// "10.5.72.0-24&fc00:10:244:1::-64", v6 alone (a zero v4) gives
// "0.0.0.0-0&fc00:10:244:1::-64". Give masked prefixes.
func SubnetKeyDual(v4, v6 netip.Prefix) string {
	if !v4.IsValid() {
		v4 = noIPv4Subnet
	}
	if !v6.IsValid() {
		return SubnetKey(v4)
	}
	return SubnetKey(v4) + "&" + fmt.Sprintf("%s-%d", v6.Addr(), v6.Bits())
}

// LeaseKeyDual is the full etcd key of the lease for v4 and/or v6.
func LeaseKeyDual(prefix string, v4, v6 netip.Prefix) string {
	return SubnetsPrefix(prefix) + SubnetKeyDual(v4, v6)
}

// ParsePublicIPv6 parses a node's IPv6 underlay address as a lease carries
// it (PublicIPv6, or the Kubernetes public-ipv6 annotation): an IPv6
// unicast address without zone, not IPv4-mapped. Errors wrap ErrPublicIP.
func ParsePublicIPv6(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil || !ip.Is6() || ip.Is4In6() || ip.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%w: PublicIPv6 %q is not an IPv6 address", ErrPublicIP, s)
	}
	if ip.IsUnspecified() || ip.IsMulticast() {
		return netip.Addr{}, fmt.Errorf("%w: PublicIPv6 %s is not a unicast address", ErrPublicIP, ip)
	}
	return ip, nil
}

// DecodeLeaseAttrs decodes a lease value of any family mix. Unlike
// ParseLeaseAttrs, which wants an IPv4 PublicIP, it reads flannel's
// IPv6-only "PublicIP":"0.0.0.0" (or no PublicIP) as a zero PublicIP when
// PublicIPv6 is set. A present PublicIP must be unicast IPv4, a present
// PublicIPv6 unicast IPv6. Errors wrap ErrLeaseJSON or ErrPublicIP.
func DecodeLeaseAttrs(b []byte) (LeaseAttrs, error) {
	var w wireAttrs
	if err := json.Unmarshal(b, &w); err != nil {
		return LeaseAttrs{}, fmt.Errorf("%w: %v", ErrLeaseJSON, err)
	}
	a := LeaseAttrs{BackendType: w.BackendType, BackendData: w.BackendData, BackendV6Data: w.BackendV6Data}
	if w.PublicIPv6 != nil {
		ip6, err := ParsePublicIPv6(*w.PublicIPv6)
		if err != nil {
			return LeaseAttrs{}, err
		}
		a.PublicIPv6 = ip6
	}
	switch {
	case w.PublicIP == nil && !a.PublicIPv6.IsValid():
		return LeaseAttrs{}, fmt.Errorf("%w: missing", ErrPublicIP)
	case w.PublicIP == nil || (*w.PublicIP == "0.0.0.0" && a.PublicIPv6.IsValid()):
		// IPv6-only.
	default:
		ip, err := netip.ParseAddr(*w.PublicIP)
		if err != nil || !ip.Is4() {
			return LeaseAttrs{}, fmt.Errorf("%w: %q is not an IPv4 address", ErrPublicIP, *w.PublicIP)
		}
		if ip.IsUnspecified() || ip.IsMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return LeaseAttrs{}, fmt.Errorf("%w: %s is not a unicast address", ErrPublicIP, ip)
		}
		a.PublicIP = ip
	}
	return a, nil
}

// NewDualVXLANAttrs is the value a vxlan node writes for itself with either
// family or both, as flannel's newSubnetAttrs: the IPv4 fields when
// publicIP is valid, the IPv6 fields (PublicIPv6, BackendV6Data with the
// IPv6 device's VtepMAC) when publicIPv6 is valid. The VNI is truncated to
// 16 bits as in NewVXLANAttrs. Errors wrap ErrPublicIP or ErrVtepMAC.
func NewDualVXLANAttrs(publicIP, publicIPv6 netip.Addr, vni uint32, vtepMAC, vtepMACv6 net.HardwareAddr) (LeaseAttrs, error) {
	a := LeaseAttrs{BackendType: BackendVXLAN}
	if !publicIP.IsValid() && !publicIPv6.IsValid() {
		return LeaseAttrs{}, fmt.Errorf("new lease: %w: neither PublicIP nor PublicIPv6 given", ErrPublicIP)
	}
	if publicIP.IsValid() {
		v4, err := NewVXLANAttrs(publicIP, vni, vtepMAC)
		if err != nil {
			return LeaseAttrs{}, err
		}
		a = v4
	}
	if publicIPv6.IsValid() {
		if _, err := ParsePublicIPv6(publicIPv6.String()); err != nil {
			return LeaseAttrs{}, fmt.Errorf("new lease: %w", err)
		}
		data, err := json.Marshal(VXLANData{VNI: uint32(uint16(vni)), VtepMAC: vtepMACv6})
		if err != nil {
			return LeaseAttrs{}, fmt.Errorf("new lease: IPv6: %w", err)
		}
		a.PublicIPv6 = publicIPv6
		a.BackendV6Data = data
	}
	return a, nil
}

// validateIPv6Part checks the IPv6 half of a lease against an IPv6-enabled
// network: the subnet's place and size, PublicIPv6 and BackendV6Data.
//
// A lease of a dual-stack network may carry its IPv6 subnet without
// PublicIPv6 (and then without BackendV6Data): Weft's "v6-in-v4", a node
// whose underlay is IPv4 only, reached for both families at its IPv4
// PublicIP with its one VtepMAC (ipv6-contract.md). v4 is the lease's
// validated IPv4 half, whose VtepMAC the IPv6 half then uses; it is zero in
// an IPv6-only network, where PublicIPv6 and BackendV6Data are required as
// flannel writes them. A lease with PublicIPv6 must have BackendV6Data, as
// every flannel node writes it.
func (c *NetworkConfig) validateIPv6Part(sn6 netip.Prefix, attrs LeaseAttrs, v4 VXLANData) (VXLANData, error) {
	if sn6.Bits() < c.IPv6Network.Bits() || !c.IPv6Network.Contains(sn6.Addr()) {
		return VXLANData{}, fmt.Errorf("%w: %s is not inside IPv6Network %s", ErrOutsideNetwork, sn6, c.IPv6Network)
	}
	if sn6.Bits() != c.IPv6SubnetLen {
		return VXLANData{}, fmt.Errorf("%w: %s is a /%d, IPv6SubnetLen is %d", ErrSubnetSize, sn6, sn6.Bits(), c.IPv6SubnetLen)
	}
	noV6Data := func() bool {
		t := bytes.TrimSpace(attrs.BackendV6Data)
		return len(t) == 0 || string(t) == "null"
	}
	if !attrs.PublicIPv6.IsValid() {
		if !attrs.PublicIP.IsValid() || v4.VtepMAC == nil {
			return VXLANData{}, fmt.Errorf("%w: PublicIPv6 is missing for IPv6 subnet %s", ErrPublicIP, sn6)
		}
		if noV6Data() {
			return v4, nil // v6-in-v4: the IPv4 device's VTEP serves both families
		}
	} else if noV6Data() {
		return VXLANData{}, fmt.Errorf("%w: BackendV6Data is missing for IPv6 subnet %s", ErrLeaseJSON, sn6)
	}
	d, err := ParseVXLANData(attrs.BackendV6Data)
	if err != nil {
		return VXLANData{}, fmt.Errorf("BackendV6Data: %w", err)
	}
	return d, nil
}
