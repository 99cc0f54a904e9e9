// Package ipmasq is weftd's --ip-masq: pods reach destinations outside the
// cluster network under their node's address, as with flanneld --ip-masq
// (on in kube-flannel.yml), while traffic between pods, on this node or
// across nodes, keeps pod addresses.
//
// The rules live in an nftables table of Weft's own ("ip weft"), written
// through sigs.k8s.io/knftables (kube-proxy's library, which runs the nft
// binary). Owning the table makes both directions idempotent and atomic:
// Ensure declares the table and its one chain, flushes the chain and adds
// the rules in one nft transaction, so any number of weftd restarts leave
// exactly one copy; Remove deletes the table whether or not it exists.
// Nothing outside the table is touched, so kube-proxy's tables (iptables or
// nftables mode) and anyone else's stay as they are.
//
// Rules, in order, in a nat postrouting chain at srcnat priority:
//
//	ip saddr <network> ip daddr <network> return      pod -> pod (any node): never
//	ip saddr <network> ip daddr 224.0.0.0/4 return    multicast: as flanneld
//	ip saddr <network> masquerade fully-random        pod -> outside the cluster network
//
// Unlike flanneld, nothing is masqueraded toward the cluster network for
// sources outside it: a Weft node's own traffic to pods already leaves with
// the weft0 address (<subnet>.0, the cluster route's src), which remote
// pods can answer.
//
// IPv6 pods (a dual-stack or IPv6-only network, issue 14) get the same
// rules for the IPv6Network in a table "ip6 weft" of their own (New6), as
// flanneld masquerades IPv6 with ip6tables when EnableIPv6 is set; the
// multicast exception is ff00::/8.
package ipmasq

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"sigs.k8s.io/knftables"
)

// Table is the nftables table (families ip and ip6) Weft owns.
const Table = "weft"

const chain = "ip-masq"

// ErrNetwork is returned for a cluster network that is not a valid IPv4
// or IPv6 prefix (an IPv4-mapped one included).
var ErrNetwork = errors.New("ip-masq: not an IPv4 or IPv6 cluster network")

// New opens Weft's IPv4 table (ip weft) for the current network namespace.
// It fails when the nft binary (Debian's nftables package) is missing or
// too old.
func New() (knftables.Interface, error) { return open(knftables.IPv4Family) }

// New6 opens Weft's IPv6 table (ip6 weft), for the IPv6 cluster network.
func New6() (knftables.Interface, error) { return open(knftables.IPv6Family) }

func open(f knftables.Family) (knftables.Interface, error) {
	nft, err := knftables.New(f, Table)
	if err != nil {
		return nil, fmt.Errorf("ip-masq: nftables: %w", err)
	}
	return nft, nil
}

// Rules are the rules Ensure writes for network, in order: "ip" rules for
// an IPv4 network (table ip weft), "ip6" ones for an IPv6 network (table
// ip6 weft).
func Rules(network netip.Prefix) ([]string, error) {
	proto, multicast := "ip", "224.0.0.0/4"
	switch {
	case !network.IsValid() || network.Addr().Is4In6() || network.Addr().Zone() != "":
		return nil, fmt.Errorf("%w: %v", ErrNetwork, network)
	case network.Addr().Is6():
		proto, multicast = "ip6", "ff00::/8"
	}
	n := network.Masked().String()
	return []string{
		fmt.Sprintf("%s saddr %s %s daddr %s return", proto, n, proto, n),
		fmt.Sprintf("%s saddr %s %s daddr %s return", proto, n, proto, multicast),
		fmt.Sprintf("%s saddr %s masquerade fully-random", proto, n),
	}, nil
}

// Ensure makes Weft's table hold exactly the masquerade rules for network:
// nft from New for an IPv4 network, from New6 for an IPv6 one.
func Ensure(ctx context.Context, nft knftables.Interface, network netip.Prefix) error {
	rules, err := Rules(network)
	if err != nil {
		return err
	}
	tx := nft.NewTransaction()
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("Weft: weftd --ip-masq")})
	ch := &knftables.Chain{
		Name:     chain,
		Type:     knftables.PtrTo(knftables.NATType),
		Hook:     knftables.PtrTo(knftables.PostroutingHook),
		Priority: knftables.PtrTo(knftables.SNATPriority),
	}
	tx.Add(ch)
	tx.Flush(ch)
	for _, r := range rules {
		tx.Add(&knftables.Rule{Chain: chain, Rule: r})
	}
	if err := nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("ip-masq: install rules for %s in table %s %s: %w", network, family(network), Table, err)
	}
	return nil
}

// Remove deletes Weft's table; a missing table is not an error.
func Remove(ctx context.Context, nft knftables.Interface) error {
	tx := nft.NewTransaction()
	// Adding first makes the delete succeed when there is nothing to delete.
	tx.Add(&knftables.Table{})
	tx.Delete(&knftables.Table{})
	if err := nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("ip-masq: remove table %s: %w", Table, err)
	}
	return nil
}

// family is the nftables family of network's table, for messages.
func family(network netip.Prefix) string {
	if network.Addr().Is6() {
		return "ip6"
	}
	return "ip"
}
