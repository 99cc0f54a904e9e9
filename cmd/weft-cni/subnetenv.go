package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// subnetEnv is what the plugin needs from flannel's subnet.env, which weftd
// writes the way flanneld does:
//
//	FLANNEL_NETWORK=10.244.0.0/16
//	FLANNEL_SUBNET=10.244.1.1/24   first address of the node subnet, with its length
//	FLANNEL_MTU=1450               the overlay MTU: what pods get
//	FLANNEL_IPMASQ=false
type subnetEnv struct {
	Network netip.Prefix // zero if absent; informational only
	Subnet  netip.Prefix // the node's pod subnet, masked
	MTU     int
}

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

// parseSubnetEnv parses KEY=VALUE lines; blank lines, comments and keys it
// does not know (FLANNEL_IPV6_*, FLANNEL_IPMASQ) are skipped.
func parseSubnetEnv(b []byte) (subnetEnv, error) {
	vals := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return subnetEnv{}, fmt.Errorf("line %d: no '=' in %q", n, line)
		}
		vals[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
	}
	if err := sc.Err(); err != nil {
		return subnetEnv{}, err
	}

	var env subnetEnv
	raw, ok := vals["FLANNEL_SUBNET"]
	if !ok {
		return subnetEnv{}, fmt.Errorf("FLANNEL_SUBNET missing")
	}
	p, err := netip.ParsePrefix(raw)
	if err != nil {
		return subnetEnv{}, fmt.Errorf("FLANNEL_SUBNET: %w", err)
	}
	// .0 is the host, .1 the gateway, the last the broadcast: a /30 leaves
	// one pod address, anything smaller none.
	if !p.Addr().Is4() || p.Bits() > 30 {
		return subnetEnv{}, fmt.Errorf("FLANNEL_SUBNET %s: want an IPv4 subnet of /30 or larger", raw)
	}
	env.Subnet = p.Masked()

	raw, ok = vals["FLANNEL_MTU"]
	if !ok {
		return subnetEnv{}, fmt.Errorf("FLANNEL_MTU missing")
	}
	if env.MTU, err = strconv.Atoi(raw); err != nil || env.MTU < 576 || env.MTU > 65535 {
		return subnetEnv{}, fmt.Errorf("FLANNEL_MTU %q: want a number from 576 to 65535", raw)
	}

	if raw, ok := vals["FLANNEL_NETWORK"]; ok {
		if env.Network, err = netip.ParsePrefix(raw); err != nil {
			return subnetEnv{}, fmt.Errorf("FLANNEL_NETWORK: %w", err)
		}
		if !env.Network.Contains(env.Subnet.Addr()) {
			return subnetEnv{}, fmt.Errorf("FLANNEL_SUBNET %s is not inside FLANNEL_NETWORK %s", env.Subnet, env.Network)
		}
	}
	return env, nil
}
