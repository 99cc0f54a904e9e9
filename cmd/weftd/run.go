package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/metrics"
	"github.com/weftnet/weft/control/peers"
	"github.com/weftnet/weft/control/reconcile"
	"github.com/weftnet/weft/loader"
)

// daemon is one weftd's state, shared with the health/metrics endpoint.
type daemon struct {
	cfg     config
	log     *zap.Logger
	metrics *metrics.Metrics
	dp      atomic.Pointer[loader.Datapath] // set once the data plane is loaded

	ready        atomic.Bool                  // data plane set up and first snapshot applied
	lastSnapshot atomic.Int64                 // unix nanos of the last applied snapshot
	subnet       atomic.Pointer[netip.Prefix] // IPv4 pod subnet, once known
	subnet6      atomic.Pointer[netip.Prefix] // IPv6 pod subnet, once known
	configErrors atomic.Uint64                // reads of <prefix>/config that failed or were invalid
	health       health                       // why weftd is unready after it was ready (health.go)
	live         liveness                     // whether the monitor loop still runs (/livez, live.go)
}

// run is weftd from flags to shutdown.
func run(ctx context.Context, cfg config, log *zap.Logger) error {
	d := &daemon{cfg: cfg, log: log, metrics: new(metrics.Metrics)}

	// Flag values only the node can check (the interface, the TLS files'
	// contents) are checked before anything else, and fail like parseFlags.
	ul, err := findUnderlay(cfg.Iface, cfg.PublicIP, cfg.PublicIPv6)
	if err != nil {
		return flagError{err}
	}
	if !cfg.KubeSubnetMgr {
		if _, err := etcdTLS(cfg); err != nil {
			return flagError{err}
		}
	}
	if cfg.Decap == loader.DecapXDP && ul.Link.Type() == "veth" {
		// Measured (README, Benchmarks): veth copies every frame for native
		// XDP and turns off its peer's GSO; tc decap is faster there.
		log.Warn("--decap=xdp on a veth underlay is slower than --decap=tc", zap.String("underlay", ul.Link.Attrs().Name))
	}
	log.Info("starting", zap.String("underlay", ul.Link.Attrs().Name), zap.Stringer("underlay_ip", ul.IP),
		zap.Stringer("public_ip", ul.PublicIP), zap.Stringer("underlay_ip6", ul.IP6), zap.Stringer("public_ipv6", ul.PublicIPv6),
		zap.String("pin_path", cfg.PinPath), zap.String("decap", string(cfg.Decap)),
		zap.Bool("kube_subnet_mgr", cfg.KubeSubnetMgr))

	if cfg.MetricsAddr != "" {
		stopHTTP, err := d.serveHTTP(cfg.MetricsAddr)
		if err != nil {
			return err
		}
		defer stopHTTP()
	}

	st, err := d.openStore(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	netCfg, err := st.NetworkConfig(ctx)
	if err != nil {
		return err
	}
	if ul, err = checkUnderlay(netCfg, ul, log); err != nil {
		// Like a bad --iface: exit 2, nothing on the node changed yet.
		return flagError{err}
	}
	d.log.Info("network config", zap.Stringer("network", netCfg.Network), zap.Int("subnet_len", netCfg.SubnetLen),
		zap.Stringer("ipv6_network", netCfg.IPv6Network), zap.Int("ipv6_subnet_len", netCfg.IPv6SubnetLen),
		zap.String("backend", netCfg.Backend.Type), zap.Int("vni", int(netCfg.Backend.VNI)), zap.Int("port", int(netCfg.Backend.Port)),
		zap.Bool("direct_routing", netCfg.Backend.DirectRouting))
	own, err := st.Acquire(ctx, netCfg, identity{PublicIP: ul.PublicIP, PublicIPv6: ul.PublicIPv6, VtepMAC: cfg.VtepMAC, SubnetFile: cfg.SubnetFile})
	if err != nil {
		return err
	}
	d.storeSubnets(own)

	// One weftd per pin path; weftctl status shows it as running.
	release, err := loader.HoldAlive(cfg.PinPath)
	if err != nil {
		return err
	}
	defer release()
	dp, nodeState, err := d.setupDataplane(ul, netCfg, own)
	if err != nil {
		return d.releaseOnError(own, err)
	}
	defer dp.Close()
	// Only now may peers send us traffic.
	if nodeState, err = d.publish(ctx, dp, ul, netCfg, own, nodeState); err != nil {
		return err
	}
	if err := applyIPMasq(ctx, log, cfg.IPMasq, netCfg); err != nil {
		return err
	}

	rec := reconcile.New(dp.Maps.Tunnels, netCfg, reconcile.Self{Subnet: own.Subnet(), IPv6Subnet: own.IPv6Subnet(),
		PublicIP: own.PublicIP(), PublicIPv6: own.PublicIPv6(), Underlay: ul.Prefix, Underlay6: ul.Prefix6}, log, d.metrics)
	rec.PruneCounters(dp.Maps.PeerStats)
	// DirectRouting peers' underlay addresses stay resolved, so the data
	// plane's receive check accepts a new peer's first packets.
	rec.KeepNeighbours(loader.NewNeighbours(int(nodeState.Config.UnderlayIfIndex)))
	errc := make(chan error, 2)
	go func() { errc <- d.keepLease(ctx, own) }()
	go func() { errc <- st.Watch(ctx, func(b peers.Batch) { d.apply(rec, b) }) }()
	go rec.RunAudit(ctx, auditInterval)
	go d.monitor(ctx, st, netCfg, nodeLinks(cfg.PinPath))

	select {
	case <-ctx.Done():
	case err := <-errc:
		if ctx.Err() == nil {
			// Lost our subnet (or a bug): stop managing, but leave the data
			// plane forwarding for whatever still matches.
			return fmt.Errorf("control loop stopped: %w", err)
		}
	}
	return d.shutdown(own, nodeState)
}

// setupDataplane adopts what is pinned, adds what is missing, and writes
// flannel's subnet.env for the CNI plugin.
func (d *daemon) setupDataplane(ul underlay, netCfg *flannel.NetworkConfig, own ownLease) (*loader.Datapath, *loader.NodeState, error) {
	dp, err := loader.Load(loader.Options{PinPath: d.cfg.PinPath})
	if err != nil {
		return nil, nil, err
	}
	d.dp.Store(dp)
	nodeState, err := d.setupNode(dp, ul, netCfg, own)
	if err != nil {
		dp.Close()
		return nil, nil, err
	}
	return dp, nodeState, nil
}

// setupNode attaches the programs, fills the node config for own's subnet
// and writes subnet.env. Run again for another subnet, it moves the node.
func (d *daemon) setupNode(dp *loader.Datapath, ul underlay, netCfg *flannel.NetworkConfig, own ownLease) (*loader.NodeState, error) {
	nodeState, err := loader.SetupNode(dp, loader.NodeConfig{
		Underlay:    ul.Link.Attrs().Name,
		UnderlayIP:  ul.IP,
		Network:     netCfg.Network,
		Subnet:      own.Subnet(),
		UnderlayIP6: ul.IP6,
		IPv6Network: netCfg.IPv6Network,
		IPv6Subnet:  own.IPv6Subnet(),
		VtepMAC:     own.VtepMAC(),
		VNI:         uint32(netCfg.Backend.VNI),
		Port:        uint16(netCfg.Backend.Port),
		Decap:       d.cfg.Decap,
		NoGRODevice: !d.cfg.GRODevice,
		Log:         d.log,
	})
	if err == nil {
		err = writeSubnetEnv(d.cfg.SubnetFile, flannel.SubnetEnv{
			Network: netCfg.Network, Subnet: own.Subnet(), IPv6Network: netCfg.IPv6Network, IPv6Subnet: own.IPv6Subnet(),
			MTU: nodeState.PodMTU, IPMasq: d.cfg.IPMasq,
		})
	}
	if err != nil {
		return nil, err
	}
	d.log.Info("data plane ready", zap.Stringer("subnet", own.Subnet()), zap.Stringer("ipv6_subnet", own.IPv6Subnet()),
		zap.Stringer("vtep_mac", own.VtepMAC()), zap.String("decap", string(nodeState.Decap)),
		zap.Stringer("public_ip", own.PublicIP()), zap.Stringer("public_ipv6", own.PublicIPv6()), zap.String("subnet_file", d.cfg.SubnetFile),
		zap.Int("pod_mtu", nodeState.PodMTU))
	return &nodeState, nil
}

// publishAttempts bounds how often the planned subnet may be taken by
// another node between plan and publish; each time the data plane is set
// up again. Like acquireAttempts, it covers a crowd starting together.
const publishAttempts = 10

// publish announces own once the data plane serves its subnet. With etcd
// the planned subnet may be leased by another node in between: the node is
// then set up for the newly planned subnet before publishing that, so a
// peer never sees a lease of ours before our data plane serves it.
func (d *daemon) publish(ctx context.Context, dp *loader.Datapath, ul underlay, netCfg *flannel.NetworkConfig, own ownLease,
	nodeState *loader.NodeState) (*loader.NodeState, error) {
	for attempt := 1; ; attempt++ {
		planned := flannel.SubnetKeyDual(own.Subnet(), own.IPv6Subnet())
		err := own.Publish(ctx)
		if !errors.Is(err, errReplanned) || attempt == publishAttempts {
			return nodeState, err
		}
		d.log.Warn("planned subnet taken by another node before publishing; setting the data plane up for another",
			zap.String("planned", planned), zap.String("now", flannel.SubnetKeyDual(own.Subnet(), own.IPv6Subnet())), zap.Error(err))
		d.storeSubnets(own)
		if nodeState, err = d.setupNode(dp, ul, netCfg, own); err != nil {
			return nil, d.releaseOnError(own, err)
		}
	}
}

// apply hands one batch of peer changes to the reconciler.
func (d *daemon) apply(rec *reconcile.Reconciler, b peers.Batch) {
	start := time.Now()
	res, err := rec.ApplyBatch(b)
	if err != nil {
		d.log.Warn("reconcile tunnels", zap.Error(err))
	}
	if res.Added+res.Updated+res.Removed > 0 || !d.ready.Load() || b.Full {
		invalid := 0
		for _, c := range b.Changes {
			if c.Invalid != nil {
				invalid++
			}
		}
		d.log.Info("tunnels reconciled", zap.Int64("revision", b.Revision), zap.Bool("full", b.Full), zap.Int("changes", len(b.Changes)),
			zap.Int("added", res.Added), zap.Int("updated", res.Updated), zap.Int("removed", res.Removed), zap.Int("unchanged", res.Unchanged),
			zap.Int("invalid_leases", invalid), zap.Duration("took", time.Since(start)))
	}
	if b.Full {
		releaseMemory()
	}
	d.lastSnapshot.Store(time.Now().UnixNano())
	if !d.ready.Swap(true) {
		d.log.Info("ready")
	}
}

// shutdown leaves the data plane running, or with --cleanup-on-exit removes
// it and releases the lease.
func (d *daemon) shutdown(own ownLease, nodeState *loader.NodeState) error {
	d.log.Info("shutting down", zap.Bool("cleanup_on_exit", d.cfg.CleanupOnExit))
	if !d.cfg.CleanupOnExit {
		d.log.Info("leaving the data plane running; pinned at " + d.cfg.PinPath)
		return nil
	}
	var errs []error
	if err := loader.TeardownNode(d.cfg.PinPath, nodeState.HostIfName); err != nil {
		errs = append(errs, err)
	}
	if err := removeIPMasq(context.Background()); err != nil {
		errs = append(errs, err)
	}
	relCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := own.Release(relCtx); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(d.cfg.SubnetFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// storeSubnets records own's subnets for the health endpoint.
func (d *daemon) storeSubnets(own ownLease) {
	sn, sn6 := own.Subnet(), own.IPv6Subnet()
	d.subnet.Store(&sn)
	d.subnet6.Store(&sn6)
}

// previousSubnets reads the subnets an earlier run wrote to subnet.env, so
// a node whose lease expired while it was down asks for the same ones back.
func previousSubnets(path string) (v4, v6 netip.Prefix) {
	b, err := os.ReadFile(path)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}
	}
	env, err := flannel.ParseSubnetEnv(b)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}
	}
	return env.Subnet, env.IPv6Subnet
}

// errUnderlayFamily is a network config the node's underlay cannot carry.
var errUnderlayFamily = errors.New("the underlay cannot carry the network's address families")

// checkUnderlay refuses what the data plane cannot do with this network
// config and this underlay, and returns the underlay with the addresses of
// families the network does not use cleared:
//
//   - IPv4 pods need an IPv4 underlay address: their leases reach them at
//     PublicIP (flannel's schema has no IPv4 subnet behind an IPv6-only
//     PublicIP);
//   - an IPv6-only network needs an IPv6 underlay address, the only one its
//     leases publish;
//   - a dual-stack network without an IPv6 underlay address is fine: IPv6
//     pods travel over the IPv4 underlay (v6-in-v4, Weft nodes only; a
//     flannel node needs PublicIPv6 to reach them), which is logged;
//   - --public-ipv6 needs an IPv6 address on the underlay to send from.
//
// Errors wrap errUnderlayFamily.
func checkUnderlay(cfg *flannel.NetworkConfig, ul underlay, log *zap.Logger) (underlay, error) {
	name := ul.Link.Attrs().Name
	v4, v6 := cfg.Network.IsValid(), cfg.IPv6Network.IsValid()
	switch {
	case v4 && (!ul.IP.IsValid() || !ul.PublicIP.IsValid()):
		return ul, fmt.Errorf("%w: Network %s has IPv4 pods, but underlay %s has no global IPv4 address (they travel over IPv4, to the PublicIP of their node's lease)",
			errUnderlayFamily, cfg.Network, name)
	case !v4 && !ul.IP6.IsValid():
		return ul, fmt.Errorf("%w: the network is IPv6-only (EnableIPv4 false), but underlay %s has no global IPv6 address to reach its peers over; pick one with --iface",
			errUnderlayFamily, name)
	case v6 && ul.PublicIPv6.IsValid() && !ul.IP6.IsValid():
		return ul, fmt.Errorf("%w: --public-ipv6 %s needs a global IPv6 address on underlay %s to send from",
			errUnderlayFamily, ul.PublicIPv6, name)
	case v6 && !ul.IP6.IsValid():
		log.Info("no IPv6 underlay address: IPv6 pods travel over the IPv4 underlay (v6-in-v4); flannel nodes, which need PublicIPv6, cannot reach them",
			zap.String("underlay", name), zap.Stringer("ipv6_network", cfg.IPv6Network))
	}
	if !v6 {
		ul.IP6, ul.Prefix6, ul.PublicIPv6 = netip.Addr{}, netip.Prefix{}, netip.Addr{}
	}
	if !v4 {
		// An IPv6-only network publishes PublicIP 0.0.0.0, and its pods
		// never travel over IPv4.
		ul.PublicIP, ul.Prefix = netip.Addr{}, netip.Prefix{}
	}
	return ul, nil
}
