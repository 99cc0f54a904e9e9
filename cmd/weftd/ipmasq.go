package main

import (
	"context"
	"errors"
	"net/netip"

	"go.uber.org/zap"
	"sigs.k8s.io/knftables"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/ipmasq"
)

// applyIPMasq installs --ip-masq's rules for each pod family of the
// network (table ip weft for Network, ip6 weft for IPv6Network), or,
// without the flag or for a family the network lacks, removes any a
// previous run left: the node's rules always follow the current flags and
// config. Both are idempotent (see control/ipmasq).
func applyIPMasq(ctx context.Context, log *zap.Logger, on bool, cfg *flannel.NetworkConfig) error {
	var errs []error
	for _, fam := range []struct {
		network netip.Prefix
		open    func() (knftables.Interface, error)
		table   string
	}{
		{cfg.Network, ipmasq.New, "ip " + ipmasq.Table},
		{cfg.IPv6Network, ipmasq.New6, "ip6 " + ipmasq.Table},
	} {
		want := on && fam.network.IsValid()
		nft, err := fam.open()
		if err != nil {
			if !want {
				// No nft on this node: there can be no rules of ours to remove.
				log.Debug("ip-masq off and nftables unavailable", zap.String("nftables_table", fam.table), zap.Error(err))
				continue
			}
			errs = append(errs, err)
			continue
		}
		if !want {
			errs = append(errs, ipmasq.Remove(ctx, nft))
			continue
		}
		if err := ipmasq.Ensure(ctx, nft, fam.network); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("ip-masq: masquerading pod traffic leaving the cluster network", zap.Stringer("network", fam.network),
			zap.String("nftables_table", fam.table))
	}
	return errors.Join(errs...)
}

// removeIPMasq is --cleanup-on-exit's part for --ip-masq: both tables.
func removeIPMasq(ctx context.Context) error {
	var errs []error
	for _, open := range []func() (knftables.Interface, error){ipmasq.New, ipmasq.New6} {
		nft, err := open()
		if err != nil {
			continue // no nft: nothing of ours can be there
		}
		errs = append(errs, ipmasq.Remove(ctx, nft))
	}
	return errors.Join(errs...)
}
