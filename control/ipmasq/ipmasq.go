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
package ipmasq

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"sigs.k8s.io/knftables"
)

// Table is the nftables table (family ip) Weft owns.
const Table = "weft"

const chain = "ip-masq"

// ErrIPv6 is returned for a cluster network that is not IPv4.
var ErrIPv6 = errors.New("ip-masq: only IPv4 cluster networks are supported")

// New opens Weft's table for the current network namespace. It fails when
// the nft binary (Debian's nftables package) is missing or too old.
func New() (knftables.Interface, error) {
	nft, err := knftables.New(knftables.IPv4Family, Table)
	if err != nil {
		return nil, fmt.Errorf("ip-masq: nftables: %w", err)
	}
	return nft, nil
}

// Rules are the rules Ensure writes for network, in order.
func Rules(network netip.Prefix) ([]string, error) {
	if !network.Addr().Is4() {
		return nil, ErrIPv6
	}
	n := network.Masked().String()
	return []string{
		fmt.Sprintf("ip saddr %s ip daddr %s return", n, n),
		fmt.Sprintf("ip saddr %s ip daddr 224.0.0.0/4 return", n),
		fmt.Sprintf("ip saddr %s masquerade fully-random", n),
	}, nil
}

// Ensure makes Weft's table hold exactly the masquerade rules for network.
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
		return fmt.Errorf("ip-masq: install rules for %s in table ip %s: %w", network, Table, err)
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
		return fmt.Errorf("ip-masq: remove table ip %s: %w", Table, err)
	}
	return nil
}
