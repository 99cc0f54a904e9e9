package main

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/weftnet/weft/control/flannel"
)

// subnetEnv is what the plugin needs from flannel's subnet.env, which weftd
// writes the way flanneld does (control/flannel.SubnetEnv):
//
//	FLANNEL_NETWORK=10.244.0.0/16            only with IPv4
//	FLANNEL_SUBNET=10.244.1.1/24             first address of the node subnet, with its length
//	FLANNEL_IPV6_NETWORK=fc00:10:244::/56    only with IPv6
//	FLANNEL_IPV6_SUBNET=fc00:10:244:1::1/64
//	FLANNEL_MTU=1450                         the overlay MTU: what pods get
//	FLANNEL_IPMASQ=false
//
// A node has an IPv4 subnet, an IPv6 subnet or both (dual-stack); a pod
// gets one address from each the node has.
type subnetEnv struct {
	Network  netip.Prefix // IPv4 network; zero without IPv4
	Subnet   netip.Prefix // the node's IPv4 pod subnet, masked; zero without IPv4
	Network6 netip.Prefix // IPv6 network; zero without IPv6
	Subnet6  netip.Prefix // the node's IPv6 pod subnet, masked; zero without IPv6
	MTU      int
}

// subnets returns the node's pod subnets, IPv4 first: the order of the
// addresses in a pod's result.
func (e subnetEnv) subnets() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{e.Subnet, e.Subnet6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// minMTU6 is IPv6's minimum link MTU (RFC 8200): the kernel disables IPv6
// on an interface with a smaller one, so a pod would silently lose its
// IPv6 address.
const minMTU6 = 1280

// readSubnetEnv reads and validates path.
func readSubnetEnv(path string) (subnetEnv, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return subnetEnv{}, fmt.Errorf("read subnet file: %w", err)
	}
	env, err := parseSubnetEnv(b)
	if err != nil {
		return subnetEnv{}, fmt.Errorf("parse subnet file %s: %w", path, err)
	}
	return env, nil
}

// parseSubnetEnv parses the file with flannel's parser (one reader and
// writer of the format, in control/flannel), then checks what a pod needs
// beyond that: room for at least one pod address in each subnet (.0/::
// is the node's weft0, .1/::1 the gateway, an IPv4 subnet's last address
// its broadcast), an MTU a pod can use, and one IPv6 can run on.
func parseSubnetEnv(b []byte) (subnetEnv, error) {
	fe, err := flannel.ParseSubnetEnv(b)
	if err != nil {
		return subnetEnv{}, err
	}
	env := subnetEnv{Network: fe.Network, Subnet: fe.Subnet, Network6: fe.IPv6Network, Subnet6: fe.IPv6Subnet, MTU: fe.MTU}
	if env.Subnet.IsValid() && env.Subnet.Bits() > 30 {
		return subnetEnv{}, fmt.Errorf("FLANNEL_SUBNET %s: want an IPv4 subnet of /30 or larger", env.Subnet)
	}
	if env.Subnet6.IsValid() && env.Subnet6.Bits() > 126 {
		return subnetEnv{}, fmt.Errorf("FLANNEL_IPV6_SUBNET %s: want an IPv6 subnet of /126 or larger", env.Subnet6)
	}
	if env.MTU < 576 || env.MTU > 65535 {
		return subnetEnv{}, fmt.Errorf("FLANNEL_MTU %d: want a number from 576 to 65535", env.MTU)
	}
	if env.Subnet6.IsValid() && env.MTU < minMTU6 {
		return subnetEnv{}, fmt.Errorf("FLANNEL_MTU %d: IPv6 needs at least %d", env.MTU, minMTU6)
	}
	return env, nil
}
