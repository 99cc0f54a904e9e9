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

	ready        atomic.Bool  // data plane set up and first snapshot applied
	lastSnapshot atomic.Int64 // unix nanos of the last applied snapshot
	subnet       atomic.Pointer[netip.Prefix]
	configErrors atomic.Uint64 // reads of <prefix>/config that failed or were invalid
	health       health        // why weftd is unready after it was ready (health.go)
	live         liveness      // whether the monitor loop still runs (/livez, live.go)
}

// run is weftd from flags to shutdown.
func run(ctx context.Context, cfg config, log *zap.Logger) error {
	d := &daemon{cfg: cfg, log: log, metrics: new(metrics.Metrics)}

	// Flag values only the node can check (the interface, the TLS files'
	// contents) are checked before anything else, and fail like parseFlags.
	ul, err := findUnderlay(cfg.Iface, cfg.PublicIP)
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
		zap.Stringer("public_ip", ul.PublicIP), zap.String("pin_path", cfg.PinPath), zap.String("decap", string(cfg.Decap)),
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
	if err := checkFamilies(netCfg, log); err != nil {
		return err
	}
	d.log.Info("network config", zap.Stringer("network", netCfg.Network), zap.Int("subnet_len", netCfg.SubnetLen),
		zap.String("backend", netCfg.Backend.Type), zap.Int("vni", int(netCfg.Backend.VNI)), zap.Int("port", int(netCfg.Backend.Port)),
		zap.Bool("direct_routing", netCfg.Backend.DirectRouting))
	own, err := st.Acquire(ctx, netCfg, identity{PublicIP: ul.PublicIP, VtepMAC: cfg.VtepMAC, SubnetFile: cfg.SubnetFile})
	if err != nil {
		return err
	}
	subnet := own.Subnet()
	d.subnet.Store(&subnet)

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
	subnet = own.Subnet()
	if err := applyIPMasq(ctx, log, cfg.IPMasq, netCfg.Network); err != nil {
		return err
	}

	rec := reconcile.New(dp.Maps.Tunnels, netCfg, reconcile.Self{Subnet: subnet, PublicIP: own.PublicIP(), Underlay: ul.Prefix}, log, d.metrics)
	rec.PruneCounters(dp.Maps.PeerStats)
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
		VtepMAC:     own.VtepMAC(),
		VNI:         uint32(netCfg.Backend.VNI),
		Port:        uint16(netCfg.Backend.Port),
		Decap:       d.cfg.Decap,
		NoGRODevice: !d.cfg.GRODevice,
		Log:         d.log,
	})
	if err == nil {
		err = writeSubnetEnv(d.cfg.SubnetFile, flannel.SubnetEnv{
			Network: netCfg.Network, Subnet: own.Subnet(), MTU: loader.PodMTU(int(nodeState.Config.MTU)), IPMasq: d.cfg.IPMasq,
		})
	}
	if err != nil {
		return nil, err
	}
	d.log.Info("data plane ready", zap.Stringer("subnet", own.Subnet()), zap.Stringer("vtep_mac", own.VtepMAC()),
		zap.String("decap", string(nodeState.Decap)),
		zap.Stringer("public_ip", own.PublicIP()), zap.String("subnet_file", d.cfg.SubnetFile),
		zap.Int("pod_mtu", loader.PodMTU(int(nodeState.Config.MTU))))
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
		planned := own.Subnet()
		err := own.Publish(ctx)
		if !errors.Is(err, errReplanned) || attempt == publishAttempts {
			return nodeState, err
		}
		d.log.Warn("planned subnet taken by another node before publishing; setting the data plane up for another",
			zap.Stringer("planned", planned), zap.Stringer("now", own.Subnet()), zap.Error(err))
		sn := own.Subnet()
		d.subnet.Store(&sn)
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

// previousSubnet reads the subnet an earlier run wrote to subnet.env, so a
// node whose lease expired while it was down asks for the same one back.
func previousSubnet(path string) netip.Prefix {
	b, err := os.ReadFile(path)
	if err != nil {
		return netip.Prefix{}
	}
	env, err := flannel.ParseSubnetEnv(b)
	if err != nil {
		return netip.Prefix{}
	}
	return env.Subnet
}

// errIPv6Only means the network config turns IPv4 off. flannel's schema
// allows it, but Weft's data plane forwards IPv4 only so far, and a node
// that went on would find no IPv4 subnet to lease.
var errIPv6Only = errors.New("the network config has EnableIPv4 false (IPv6 only); Weft forwards IPv4 pod traffic only")

// checkFamilies refuses an IPv6-only network and warns that a dual-stack
// one is served for IPv4 only.
func checkFamilies(cfg *flannel.NetworkConfig, log *zap.Logger) error {
	if !cfg.EnableIPv4 {
		return errIPv6Only
	}
	if cfg.EnableIPv6 {
		log.Warn("dual-stack network config: Weft forwards the IPv4 family only; IPv6 pod traffic is dropped (drop_inner_ipv6)",
			zap.Stringer("ipv6_network", cfg.IPv6Network))
	}
	return nil
}
