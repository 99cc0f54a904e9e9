package main

import (
	"context"
	"go.uber.org/zap"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/ipmasq"
)

// applyIPMasq installs --ip-masq's rules, or, without the flag, removes any
// a previous run left: the node's rules always follow the current flags.
// Both are idempotent (see control/ipmasq).
//
// The rules cover the IPv4 network; IPv6 pod traffic is not masqueraded
// (flanneld masquerades IPv6 too; Weft's table is "ip" only so far), which
// is logged where the network has IPv6.
func applyIPMasq(ctx context.Context, log *zap.Logger, on bool, cfg *flannel.NetworkConfig) error {
	network := cfg.Network
	if on && cfg.IPv6Network.IsValid() {
		log.Warn("ip-masq: IPv6 pod traffic is not masqueraded", zap.Stringer("ipv6_network", cfg.IPv6Network))
	}
	if !network.IsValid() {
		on = false // IPv6-only: no IPv4 rules; remove any an earlier run left
	}
	nft, err := ipmasq.New()
	if err != nil {
		if !on {
			// No nft on this node: there can be no rules of ours to remove.
			log.Debug("ip-masq off and nftables unavailable", zap.Error(err))
			return nil
		}
		return err
	}
	if !on {
		return ipmasq.Remove(ctx, nft)
	}
	if err := ipmasq.Ensure(ctx, nft, network); err != nil {
		return err
	}
	log.Info("ip-masq: masquerading pod traffic leaving the cluster network", zap.Stringer("network", network),
		zap.String("nftables_table", "ip "+ipmasq.Table))
	return nil
}

// removeIPMasq is --cleanup-on-exit's part for --ip-masq.
func removeIPMasq(ctx context.Context) error {
	nft, err := ipmasq.New()
	if err != nil {
		return nil // no nft: nothing of ours can be there
	}
	return ipmasq.Remove(ctx, nft)
}
