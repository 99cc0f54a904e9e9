package flannel

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrSubnetEnv is a subnet.env that cannot be written or read back.
var ErrSubnetEnv = errors.New("invalid subnet.env")

// SubnetEnv is flannel's /run/flannel/subnet.env (pkg/subnet
// WriteSubnetFile), which CNI plugins and flanneld itself (the previous
// subnet on restart) read:
//
//	FLANNEL_NETWORK=10.42.0.0/16            only with IPv4
//	FLANNEL_SUBNET=10.42.0.1/24             first address of the node subnet
//	FLANNEL_IPV6_NETWORK=2001:cafe:42::/56  only with IPv6
//	FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64
//	FLANNEL_MTU=1450
//	FLANNEL_IPMASQ=true
//
// A family is present when both its prefixes are valid and absent when
// both are zero; Subnet and IPv6Subnet are the node's subnets (masked).
type SubnetEnv struct {
	Network     netip.Prefix
	Subnet      netip.Prefix
	IPv6Network netip.Prefix
	IPv6Subnet  netip.Prefix
	MTU         int
	IPMasq      bool
}

// Marshal writes the file's bytes in flannel's order and format. Errors
// wrap ErrSubnetEnv.
func (e SubnetEnv) Marshal() ([]byte, error) {
	if err := e.check(); err != nil {
		return nil, fmt.Errorf("marshal subnet.env: %w", err)
	}
	var b []byte
	if e.Network.IsValid() {
		b = fmt.Appendf(b, "FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\n", e.Network.Masked(), firstAddr(e.Subnet))
	}
	if e.IPv6Network.IsValid() {
		b = fmt.Appendf(b, "FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s\n", e.IPv6Network.Masked(), firstAddr(e.IPv6Subnet))
	}
	return fmt.Appendf(b, "FLANNEL_MTU=%d\nFLANNEL_IPMASQ=%t\n", e.MTU, e.IPMasq), nil
}

// firstAddr is flannel's IncrementIP on the subnet: "10.42.0.1/24".
func firstAddr(sn netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(sn.Masked().Addr().Next(), sn.Bits())
}

func (e SubnetEnv) check() error {
	if e.MTU <= 0 || e.MTU > 65535 {
		return fmt.Errorf("%w: MTU %d", ErrSubnetEnv, e.MTU)
	}
	fam := func(name string, network, subnet netip.Prefix, is4 bool) error {
		switch {
		case !network.IsValid() && !subnet.IsValid():
			return nil
		case !network.IsValid() || !subnet.IsValid():
			return fmt.Errorf("%w: %s network %v and subnet %v must be given together", ErrSubnetEnv, name, network, subnet)
		case network.Addr().Is4() != is4 || subnet.Addr().Is4() != is4 || network.Addr().Is4In6() || subnet.Addr().Is4In6():
			return fmt.Errorf("%w: %s network %s or subnet %s of the wrong family", ErrSubnetEnv, name, network, subnet)
		case subnet.Bits() < network.Bits() || !network.Contains(subnet.Addr()):
			return fmt.Errorf("%w: %s subnet %s is not inside %s", ErrSubnetEnv, name, subnet, network)
		case subnet.Bits() >= subnet.Addr().BitLen():
			return fmt.Errorf("%w: %s subnet %s has no first address", ErrSubnetEnv, name, subnet)
		}
		return nil
	}
	if err := fam("IPv4", e.Network, e.Subnet, true); err != nil {
		return err
	}
	if err := fam("IPv6", e.IPv6Network, e.IPv6Subnet, false); err != nil {
		return err
	}
	if !e.Network.IsValid() && !e.IPv6Network.IsValid() {
		return fmt.Errorf("%w: neither an IPv4 nor an IPv6 network", ErrSubnetEnv)
	}
	return nil
}

// ParseSubnetEnv reads a subnet.env written by flannel or Marshal: the
// keys above, in any order; blank lines, # comments and other keys are
// skipped. The checks are Marshal's. Errors wrap ErrSubnetEnv.
func ParseSubnetEnv(b []byte) (SubnetEnv, error) {
	var (
		e    SubnetEnv
		seen = map[string]bool{}
	)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return SubnetEnv{}, fmt.Errorf("parse subnet.env: %w: line %d has no '='", ErrSubnetEnv, n)
		}
		var err error
		switch k {
		case "FLANNEL_NETWORK":
			e.Network, err = netip.ParsePrefix(v)
		case "FLANNEL_SUBNET":
			e.Subnet, err = netip.ParsePrefix(v)
		case "FLANNEL_IPV6_NETWORK":
			e.IPv6Network, err = netip.ParsePrefix(v)
		case "FLANNEL_IPV6_SUBNET":
			e.IPv6Subnet, err = netip.ParsePrefix(v)
		case "FLANNEL_MTU":
			e.MTU, err = strconv.Atoi(v)
		case "FLANNEL_IPMASQ":
			e.IPMasq, err = strconv.ParseBool(v)
		default:
			continue
		}
		if err != nil {
			return SubnetEnv{}, fmt.Errorf("parse subnet.env: %w: %s: %v", ErrSubnetEnv, k, err)
		}
		if seen[k] {
			return SubnetEnv{}, fmt.Errorf("parse subnet.env: %w: %s given twice", ErrSubnetEnv, k)
		}
		seen[k] = true
	}
	if err := sc.Err(); err != nil {
		return SubnetEnv{}, fmt.Errorf("parse subnet.env: %w: %v", ErrSubnetEnv, err)
	}
	e.Network, e.Subnet = e.Network.Masked(), e.Subnet.Masked()
	e.IPv6Network, e.IPv6Subnet = e.IPv6Network.Masked(), e.IPv6Subnet.Masked()
	if err := e.check(); err != nil {
		return SubnetEnv{}, fmt.Errorf("parse subnet.env: %w", err)
	}
	return e, nil
}
