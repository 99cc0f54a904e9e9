package flannel

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Errors naming what is wrong with one lease; a *LeaseError wraps one (or,
// for a lease that both is malformed and overlaps a valid one, two).
var (
	ErrLeaseKey       = errors.New("malformed subnet key")
	ErrLeaseJSON      = errors.New("malformed lease JSON")
	ErrPublicIP       = errors.New("invalid PublicIP")
	ErrVtepMAC        = errors.New("invalid VtepMAC")
	ErrOutsideNetwork = errors.New("subnet outside Network")
	ErrSubnetSize     = errors.New("subnet size is not SubnetLen")
	ErrOverlap        = errors.New("subnet overlaps another lease")
)

// SubnetKey is the etcd key name of an IPv4 subnet, flannel's
// MakeSubnetKey: "10.244.1.0-24".
func SubnetKey(sn netip.Prefix) string {
	return fmt.Sprintf("%s-%d", sn.Addr(), sn.Bits())
}

// LeaseKey is the full etcd key of the lease for sn.
func LeaseKey(prefix string, sn netip.Prefix) string { return SubnetsPrefix(prefix) + SubnetKey(sn) }

// ParseSubnetKey parses a key name written by flannel's MakeSubnetKey (or
// SubnetKeyDual): "10.244.1.0-24", a dual-stack node's
// "10.244.1.0-24&fd00:0:0:1::-64", or an IPv6-only node's
// "0.0.0.0-0&fd00:0:0:1::-64", for which v4 is the zero Prefix. Unlike
// flannel's regexp it rejects anything else: leading zeros, signs, trailing
// text, host bits set, IPv6 not in its canonical (RFC 5952) form, which is
// the only form flannel writes. Errors wrap ErrLeaseKey.
func ParseSubnetKey(name string) (v4, v6 netip.Prefix, err error) {
	s4, s6, dual := strings.Cut(name, "&")
	if v4, err = parseKeyPrefix(s4, false); err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w %q: %v", ErrLeaseKey, name, err)
	}
	if dual {
		if v6, err = parseKeyPrefix(s6, true); err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w %q: %v", ErrLeaseKey, name, err)
		}
	}
	if v4 == noIPv4Subnet {
		if !dual {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w %q: %s without an IPv6 part names no subnet", ErrLeaseKey, name, s4)
		}
		v4 = netip.Prefix{}
	}
	return v4, v6, nil
}

func parseKeyPrefix(s string, ipv6 bool) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.Prefix{}, errors.New("no '-' before the prefix length")
	}
	a, err := netip.ParseAddr(s[:i])
	if err != nil || a.Zone() != "" || (ipv6 && !a.Is6()) || (!ipv6 && !a.Is4()) || a.Is4In6() {
		return netip.Prefix{}, fmt.Errorf("bad address %q", s[:i])
	}
	bits, ok := strictUint(s[i+1:])
	if !ok || bits > a.BitLen() {
		return netip.Prefix{}, fmt.Errorf("bad prefix length %q", s[i+1:])
	}
	if ipv6 && a.String() != s[:i] {
		return netip.Prefix{}, fmt.Errorf("address %q is not in canonical form, want %s", s[:i], a)
	}
	p := netip.PrefixFrom(a, bits)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("host bits set, want %s", p.Masked())
	}
	return p, nil
}

// strictUint parses a decimal without sign or leading zeros.
func strictUint(s string) (int, bool) {
	if s == "" || len(s) > 3 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n := 0
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// LeaseAttrs is a lease's value: flannel's lease.LeaseAttrs.
type LeaseAttrs struct {
	// PublicIP is the IPv4 underlay address of the node. Zero for an
	// IPv6-only node, which flannel writes as "0.0.0.0" (DecodeLeaseAttrs).
	PublicIP      netip.Addr
	PublicIPv6    netip.Addr // IPv6 underlay address; zero when absent (JSON null)
	BackendType   string
	BackendData   json.RawMessage // for "vxlan": VXLANData of the IPv4 device
	BackendV6Data json.RawMessage // for "vxlan": VXLANData of the IPv6 device (flannel-v6.<VNI>)
}

// wireAttrs has flannel's field order and omitempty flags, so that
// encoding/json writes the same bytes flannel writes.
type wireAttrs struct {
	PublicIP      *string
	PublicIPv6    *string
	BackendType   string          `json:",omitempty"`
	BackendData   json.RawMessage `json:",omitempty"`
	BackendV6Data json.RawMessage `json:",omitempty"`
}

// MarshalLeaseAttrs encodes a lease value byte-for-byte as flannel does.
// An IPv6-only lease (zero PublicIP, valid PublicIPv6) gets flannel's
// "PublicIP":"0.0.0.0"; a lease without PublicIPv6 gets "PublicIPv6":null.
func MarshalLeaseAttrs(a LeaseAttrs) ([]byte, error) {
	ip := "0.0.0.0"
	switch {
	case a.PublicIP.Is4():
		ip = a.PublicIP.String()
	case a.PublicIP.IsValid():
		return nil, fmt.Errorf("marshal lease: %w: %v is not IPv4", ErrPublicIP, a.PublicIP)
	case !a.PublicIPv6.IsValid():
		return nil, fmt.Errorf("marshal lease: %w: neither PublicIP nor PublicIPv6 is set", ErrPublicIP)
	}
	w := wireAttrs{PublicIP: &ip, BackendType: a.BackendType, BackendData: a.BackendData, BackendV6Data: a.BackendV6Data}
	if a.PublicIPv6.IsValid() {
		if !a.PublicIPv6.Is6() || a.PublicIPv6.Is4In6() || a.PublicIPv6.Zone() != "" {
			return nil, fmt.Errorf("marshal lease: %w: PublicIPv6 %v is not IPv6", ErrPublicIP, a.PublicIPv6)
		}
		ip6 := a.PublicIPv6.String()
		w.PublicIPv6 = &ip6
	}
	b, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("marshal lease: %w", err)
	}
	return b, nil
}

// ParseLeaseAttrs decodes a lease value. Errors wrap ErrLeaseJSON or
// ErrPublicIP. The backend data is left raw; see ParseVXLANData.
func ParseLeaseAttrs(b []byte) (LeaseAttrs, error) {
	var w wireAttrs
	if err := json.Unmarshal(b, &w); err != nil {
		return LeaseAttrs{}, fmt.Errorf("%w: %v", ErrLeaseJSON, err)
	}
	if w.PublicIP == nil {
		return LeaseAttrs{}, fmt.Errorf("%w: missing", ErrPublicIP)
	}
	a := LeaseAttrs{BackendType: w.BackendType, BackendData: w.BackendData, BackendV6Data: w.BackendV6Data}
	ip, err := ParsePublicIP(*w.PublicIP)
	if err != nil {
		return LeaseAttrs{}, err
	}
	a.PublicIP = ip
	if w.PublicIPv6 != nil {
		ip6, err := netip.ParseAddr(*w.PublicIPv6)
		if err != nil || !ip6.Is6() || ip6.Is4In6() {
			return LeaseAttrs{}, fmt.Errorf("%w: PublicIPv6 %q is not an IPv6 address", ErrPublicIP, *w.PublicIPv6)
		}
		a.PublicIPv6 = ip6
	}
	return a, nil
}

// ParsePublicIP parses a node's underlay address as a lease carries it (the
// etcd value's PublicIP, or the Kubernetes public-ip annotation): a unicast
// IPv4 address. Errors wrap ErrPublicIP.
func ParsePublicIP(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil || !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("%w: %q is not an IPv4 address", ErrPublicIP, s)
	}
	if ip.IsUnspecified() || ip.IsMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return netip.Addr{}, fmt.Errorf("%w: %s is not a unicast address", ErrPublicIP, ip)
	}
	return ip, nil
}

// VXLANData is the vxlan backend's BackendData (flannel's vxlanLeaseAttrs).
//
// flannel declares VNI as uint16 and writes uint16(VNI), so above 65535 the
// lease's VNI is truncated. Weft decodes up to 24 bits and forwards with the
// config's VNI, as flannel's kernel device does: the lease's VNI is
// informational.
type VXLANData struct {
	VNI     uint32
	VtepMAC net.HardwareAddr
}

// MarshalJSON writes {"VNI":1,"VtepMAC":"8e:5e:4e:3c:2b:1a"}, as flannel.
func (d VXLANData) MarshalJSON() ([]byte, error) {
	if err := checkVtepMAC(d.VtepMAC); err != nil {
		return nil, fmt.Errorf("marshal vxlan lease data: %w", err)
	}
	return fmt.Appendf(nil, `{"VNI":%d,"VtepMAC":%q}`, d.VNI, d.VtepMAC.String()), nil
}

// ParseVXLANData decodes BackendData. Errors wrap ErrLeaseJSON or ErrVtepMAC.
func ParseVXLANData(b json.RawMessage) (VXLANData, error) {
	if t := bytes.TrimSpace(b); len(t) == 0 || string(t) == "null" {
		return VXLANData{}, fmt.Errorf("%w: BackendData is missing", ErrLeaseJSON)
	}
	var w struct {
		VNI     uint32
		VtepMAC *string
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return VXLANData{}, fmt.Errorf("%w: BackendData: %v", ErrLeaseJSON, err)
	}
	if w.VNI >= 1<<24 {
		return VXLANData{}, fmt.Errorf("%w: BackendData VNI %d does not fit 24 bits", ErrLeaseJSON, w.VNI)
	}
	if w.VtepMAC == nil {
		return VXLANData{}, fmt.Errorf("%w: missing", ErrVtepMAC)
	}
	mac, err := net.ParseMAC(*w.VtepMAC)
	if err != nil {
		return VXLANData{}, fmt.Errorf("%w: %q", ErrVtepMAC, *w.VtepMAC)
	}
	if err := checkVtepMAC(mac); err != nil {
		return VXLANData{}, err
	}
	return VXLANData{VNI: w.VNI, VtepMAC: mac}, nil
}

// checkVtepMAC accepts only what can be an inner Ethernet destination
// for one node: 6 bytes, unicast, not all zeros.
func checkVtepMAC(mac net.HardwareAddr) error {
	switch {
	case len(mac) != 6:
		return fmt.Errorf("%w: %q is not a 6-byte MAC", ErrVtepMAC, mac)
	case mac[0]&1 != 0:
		return fmt.Errorf("%w: %s is a multicast MAC", ErrVtepMAC, mac)
	case bytes.Equal(mac, make(net.HardwareAddr, 6)):
		return fmt.Errorf("%w: %s is all zeros", ErrVtepMAC, mac)
	}
	return nil
}

// NewVXLANAttrs is the value a vxlan node writes for itself. Like flanneld
// it writes the VNI truncated to 16 bits (newSubnetAttrs takes a uint16), so
// that flannel nodes, which decode it into a uint16, can read it.
func NewVXLANAttrs(publicIP netip.Addr, vni uint32, vtepMAC net.HardwareAddr) (LeaseAttrs, error) {
	data, err := json.Marshal(VXLANData{VNI: uint32(uint16(vni)), VtepMAC: vtepMAC})
	if err != nil {
		return LeaseAttrs{}, err
	}
	if !publicIP.Is4() {
		return LeaseAttrs{}, fmt.Errorf("new lease: %w: %v is not IPv4", ErrPublicIP, publicIP)
	}
	return LeaseAttrs{PublicIP: publicIP, BackendType: BackendVXLAN, BackendData: data}, nil
}
