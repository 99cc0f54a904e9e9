package flannel

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// DefaultPrefix is flanneld's default --etcd-prefix.
const DefaultPrefix = "/coreos.com/network"

// Backend defaults, as flannel's vxlan backend applies them.
const (
	BackendVXLAN = "vxlan"
	// DefaultVNI is flannel's defaultVNI.
	DefaultVNI = 1
	// DefaultPort is what flannel gets when Port is absent or 0: flannel
	// leaves the port to the kernel, whose vxlan default is 8472.
	DefaultPort = 8472
)

// Errors from ParseConfig; each is wrapped with the detail.
var (
	ErrConfigJSON  = errors.New("malformed network config JSON")
	ErrNetwork     = errors.New("invalid Network")
	ErrSubnetLen   = errors.New("invalid SubnetLen")
	ErrSubnetRange = errors.New("invalid SubnetMin/SubnetMax")
	// ErrBackendType is an unsupported backend, in the config or in a lease.
	ErrBackendType = errors.New("unsupported backend type")
	ErrVNI         = errors.New("invalid VNI")
	ErrPort        = errors.New("invalid Port")
	// The IPv6 counterparts of ErrNetwork, ErrSubnetLen and ErrSubnetRange,
	// for IPv6Network, IPv6SubnetLen and IPv6SubnetMin/IPv6SubnetMax.
	ErrIPv6Network     = errors.New("invalid IPv6Network")
	ErrIPv6SubnetLen   = errors.New("invalid IPv6SubnetLen")
	ErrIPv6SubnetRange = errors.New("invalid IPv6SubnetMin/IPv6SubnetMax")
)

// NetworkConfig is <prefix>/config after flannel's defaults are applied
// (subnet.ParseConfig + subnet.CheckNetworkConfig + the vxlan backend's own
// config). Only the vxlan backend is supported.
//
// The families follow flannel: EnableIPv4 (default true) uses Network and
// the Subnet* fields, EnableIPv6 (default false) uses IPv6Network and the
// IPv6Subnet* fields; both make a dual-stack network, EnableIPv6 alone an
// IPv6-only one. The fields of a disabled family are left zero, so
// Network.IsValid() and IPv6Network.IsValid() also tell which are on.
type NetworkConfig struct {
	Network   netip.Prefix // the whole pod network, e.g. 10.244.0.0/16
	SubnetLen int          // size of one node's lease, e.g. 24
	SubnetMin netip.Addr   // first subnet that may be allocated
	SubnetMax netip.Addr   // last subnet that may be allocated
	// EnableIPv6 is flannel's dual-stack switch. Callers that do not
	// forward IPv6 yet should warn that IPv6 pod traffic is not carried.
	EnableIPv6 bool
	Backend    BackendConfig

	// EnableIPv4 is false for an IPv6-only network. Callers that forward
	// IPv4 only must refuse such a config.
	EnableIPv4    bool
	IPv6Network   netip.Prefix // e.g. fc00:10:244::/48; zero unless EnableIPv6
	IPv6SubnetLen int          // size of one node's IPv6 lease, default 64
	IPv6SubnetMin netip.Addr   // first IPv6 subnet that may be allocated
	IPv6SubnetMax netip.Addr   // last IPv6 subnet that may be allocated
}

// BackendConfig is the "Backend" object. MacPrefix, GBP and Learning are
// accepted and ignored, as they change nothing on the wire Weft speaks.
type BackendConfig struct {
	Type          string
	VNI           uint32
	Port          uint16
	DirectRouting bool
}

// rawConfig mirrors flannel's subnet.Config JSON. encoding/json matches
// field names case-insensitively, as it does for flannel.
type rawConfig struct {
	EnableIPv4    *bool
	EnableIPv6    bool
	Network       string
	SubnetLen     int
	SubnetMin     string
	SubnetMax     string
	IPv6Network   string
	IPv6SubnetLen int
	IPv6SubnetMin string
	IPv6SubnetMax string
	Backend       json.RawMessage
}

type rawBackend struct {
	Type          string
	VNI           *int64
	Port          *int64
	DirectRouting bool
}

// ParseConfig decodes <prefix>/config, applies flannel's defaults and
// validates the result. Errors wrap ErrConfigJSON, ErrNetwork,
// ErrSubnetLen, ErrSubnetRange, ErrIPv6Network, ErrIPv6SubnetLen,
// ErrIPv6SubnetRange, ErrBackendType, ErrVNI or ErrPort.
//
// Like flannel, the fields of a disabled family are not looked at.
func ParseConfig(b []byte) (*NetworkConfig, error) {
	var raw rawConfig
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("parse network config: %w: %v", ErrConfigJSON, err)
	}
	c := &NetworkConfig{EnableIPv4: raw.EnableIPv4 == nil || *raw.EnableIPv4, EnableIPv6: raw.EnableIPv6}
	if !c.EnableIPv4 && !c.EnableIPv6 {
		return nil, fmt.Errorf("parse network config: %w: EnableIPv4 is false and EnableIPv6 is not set, no family is left", ErrNetwork)
	}
	if c.EnableIPv4 {
		if err := c.parseNetwork(raw); err != nil {
			return nil, fmt.Errorf("parse network config: %w", err)
		}
	}
	if c.EnableIPv6 {
		if err := c.parseIPv6Network(raw); err != nil {
			return nil, fmt.Errorf("parse network config: %w", err)
		}
	}
	if err := c.parseBackend(raw.Backend); err != nil {
		return nil, fmt.Errorf("parse network config: %w", err)
	}
	return c, nil
}

func (c *NetworkConfig) parseNetwork(raw rawConfig) error {
	if raw.Network == "" {
		return fmt.Errorf("%w: Network is missing", ErrNetwork)
	}
	n, err := netip.ParsePrefix(raw.Network)
	if err != nil || !n.Addr().Is4() {
		return fmt.Errorf("%w: %q is not an IPv4 CIDR", ErrNetwork, raw.Network)
	}
	// flannel parses with net.ParseCIDR and keeps the masked network.
	n = n.Masked()
	if n.Bits() == 0 {
		return fmt.Errorf("%w: %s is empty", ErrNetwork, n)
	}
	c.Network = n

	// flannel's CheckNetworkConfig: a node needs at least a /30, and the
	// network must hold at least four subnets because the first is skipped.
	switch {
	case raw.SubnetLen == 0 && n.Bits() > 28:
		return fmt.Errorf("%w: %s is too small, the smallest usable Network is a /28", ErrNetwork, n)
	case raw.SubnetLen == 0 && n.Bits() <= 22:
		c.SubnetLen = 24
	case raw.SubnetLen == 0:
		c.SubnetLen = n.Bits() + 2
	case raw.SubnetLen < 0 || raw.SubnetLen > 30:
		return fmt.Errorf("%w: %d, want at most 30 (a /31 or /32 leaves no room for pods)", ErrSubnetLen, raw.SubnetLen)
	case raw.SubnetLen < n.Bits()+2:
		return fmt.Errorf("%w: %d, want at least %d so that Network %s holds four subnets",
			ErrSubnetLen, raw.SubnetLen, n.Bits()+2, n)
	default:
		c.SubnetLen = raw.SubnetLen
	}

	size := uint32(1) << (32 - c.SubnetLen)
	first := u32(n.Addr())
	last := first + (uint32(1)<<(32-n.Bits()) - 1) // broadcast of Network
	// Default range: skip the first subnet (its .0 address is the
	// Network's own), end at the last one.
	if c.SubnetMin, err = c.rangeBound("SubnetMin", raw.SubnetMin, first+size); err != nil {
		return err
	}
	if c.SubnetMax, err = c.rangeBound("SubnetMax", raw.SubnetMax, last-size+1); err != nil {
		return err
	}
	if u32(c.SubnetMin) > u32(c.SubnetMax) {
		return fmt.Errorf("%w: SubnetMin %s is above SubnetMax %s", ErrSubnetRange, c.SubnetMin, c.SubnetMax)
	}
	return nil
}

func (c *NetworkConfig) rangeBound(name, s string, def uint32) (netip.Addr, error) {
	if s == "" {
		return addrFrom(def), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%w: %s %q is not an IPv4 address", ErrSubnetRange, name, s)
	}
	if !c.Network.Contains(a) {
		return netip.Addr{}, fmt.Errorf("%w: %s %s is outside Network %s", ErrSubnetRange, name, a, c.Network)
	}
	if netip.PrefixFrom(a, c.SubnetLen).Masked().Addr() != a {
		return netip.Addr{}, fmt.Errorf("%w: %s %s is not on a /%d boundary", ErrSubnetRange, name, a, c.SubnetLen)
	}
	return a, nil
}

func (c *NetworkConfig) parseBackend(b json.RawMessage) error {
	if len(bytes.TrimSpace(b)) == 0 || string(bytes.TrimSpace(b)) == "null" {
		// flannel's parseBackendType: no Backend means "udp".
		return fmt.Errorf("%w: Backend is missing, which flannel reads as \"udp\"; Weft supports only %q",
			ErrBackendType, BackendVXLAN)
	}
	raw := rawBackend{}
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("%w: Backend: %v", ErrConfigJSON, err)
	}
	if raw.Type != BackendVXLAN {
		return fmt.Errorf("%w: %q; Weft supports only %q", ErrBackendType, raw.Type, BackendVXLAN)
	}
	c.Backend = BackendConfig{Type: raw.Type, VNI: DefaultVNI, Port: DefaultPort, DirectRouting: raw.DirectRouting}
	if raw.VNI != nil {
		if *raw.VNI < 0 || *raw.VNI >= 1<<24 {
			return fmt.Errorf("%w: %d does not fit 24 bits", ErrVNI, *raw.VNI)
		}
		c.Backend.VNI = uint32(*raw.VNI)
	}
	if raw.Port != nil {
		// 0 is flannel's "kernel default", which is DefaultPort.
		if *raw.Port < 0 || *raw.Port > 65535 {
			return fmt.Errorf("%w: %d is not a UDP port", ErrPort, *raw.Port)
		}
		if *raw.Port != 0 {
			c.Backend.Port = uint16(*raw.Port)
		}
	}
	return nil
}

// InRange reports whether sn is a subnet this config would allocate: of
// SubnetLen size, inside [SubnetMin, SubnetMax]. It is flannel's
// isSubnetConfigCompat, used to decide whether a node may keep a lease.
func (c *NetworkConfig) InRange(sn netip.Prefix) bool {
	if !c.Network.IsValid() || !sn.Addr().Is4() || sn.Bits() != c.SubnetLen || sn.Masked() != sn {
		return false
	}
	a := u32(sn.Addr())
	return a >= u32(c.SubnetMin) && a <= u32(c.SubnetMax)
}

// FreeSubnets returns up to limit subnets of [SubnetMin, SubnetMax], in
// order, that overlap none of used. flannel picks one of the first 100 at
// random so that nodes starting together rarely race for the same key.
func (c *NetworkConfig) FreeSubnets(used []netip.Prefix, limit int) []netip.Prefix {
	if !c.Network.IsValid() {
		return nil // IPv6-only
	}
	exact := make(map[netip.Prefix]bool, len(used)) // used, truncated to SubnetLen
	var wide []netip.Prefix                         // used prefixes larger than a subnet
	for _, p := range used {
		if !p.Addr().Is4() {
			continue
		}
		if p.Bits() >= c.SubnetLen {
			exact[netip.PrefixFrom(p.Addr(), c.SubnetLen).Masked()] = true
		} else {
			wide = append(wide, p.Masked())
		}
	}
	size := uint64(1) << (32 - c.SubnetLen)
	var out []netip.Prefix
next:
	for a := uint64(u32(c.SubnetMin)); a <= uint64(u32(c.SubnetMax)) && len(out) < limit; a += size {
		sn := netip.PrefixFrom(addrFrom(uint32(a)), c.SubnetLen)
		if exact[sn] {
			continue
		}
		for _, w := range wide {
			if w.Contains(sn.Addr()) {
				continue next
			}
		}
		out = append(out, sn)
	}
	return out
}

// ConfigKey is the etcd key of the network config.
func ConfigKey(prefix string) string { return CleanPrefix(prefix) + "/config" }

// SubnetsPrefix is the etcd key prefix under which leases live, with a
// trailing slash so that a sibling such as "subnets2" is not matched.
func SubnetsPrefix(prefix string) string { return CleanPrefix(prefix) + "/subnets/" }

// CleanPrefix normalises an --etcd-prefix: DefaultPrefix when empty, no
// trailing slash (flannel joins with path.Join, which drops it).
func CleanPrefix(prefix string) string {
	p := strings.TrimRight(prefix, "/")
	if p == "" {
		return DefaultPrefix
	}
	return p
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addrFrom(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
