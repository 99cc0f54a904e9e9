package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/metrics"
	"github.com/weftnet/weft/control/peers"
	"github.com/weftnet/weft/control/reconcile"
	"github.com/weftnet/weft/control/store"
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
	tlsCfg, err := etcdTLS(cfg)
	if err != nil {
		return flagError{err}
	}
	if cfg.Decap == loader.DecapXDP && ul.Link.Type() == "veth" {
		// Measured (README, Benchmarks): veth copies every frame for native
		// XDP and turns off its peer's GSO; tc decap is faster there.
		log.Warn("--decap=xdp on a veth underlay is slower than --decap=tc", zap.String("underlay", ul.Link.Attrs().Name))
	}
	vtep := cfg.VtepMAC
	if vtep == nil {
		vtep = stableVtepMAC(machineID(), ul.PublicIP)
	}
	log.Info("starting", zap.String("underlay", ul.Link.Attrs().Name), zap.Stringer("underlay_ip", ul.IP),
		zap.Stringer("public_ip", ul.PublicIP), zap.Stringer("vtep_mac", vtep), zap.String("pin_path", cfg.PinPath),
		zap.String("decap", string(cfg.Decap)))

	if cfg.MetricsAddr != "" {
		stopHTTP, err := d.serveHTTP(cfg.MetricsAddr)
		if err != nil {
			return err
		}
		defer stopHTTP()
	}

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.EtcdEndpoints,
		DialTimeout: 5 * time.Second,
		TLS:         tlsCfg,
		Username:    cfg.EtcdUsername,
		Password:    cfg.EtcdPassword,
		Logger:      log.Named("etcd-client").WithOptions(zap.IncreaseLevel(zap.WarnLevel)),
		// gRPC's default reconnect backoff grows to two minutes, so after an
		// etcd outage weftd stayed blind to joins and leaves for up to that
		// long (11 s after a 30 s outage in the lab). Retry at least every 2 s.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		})},
	})
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	defer cli.Close()
	st := store.New(cli, cfg.EtcdPrefix, log, d.metrics)

	netCfg, err := d.waitForConfig(ctx, st)
	if err != nil {
		return err
	}

	own, err := st.AcquireLease(ctx, netCfg, store.LeaseRequest{
		PublicIP: ul.PublicIP,
		VtepMAC:  vtep,
		TTL:      cfg.LeaseTTL,
		Previous: previousSubnet(cfg.SubnetFile),
	})
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

	// The data plane: adopt what is pinned, add what is missing. If it
	// cannot be set up, the lease is given back (releaseOnError).
	dp, err := loader.Load(loader.Options{PinPath: cfg.PinPath})
	if err != nil {
		return d.releaseOnError(own, err)
	}
	defer dp.Close()
	d.dp.Store(dp)
	nodeState, err := loader.SetupNode(dp, loader.NodeConfig{
		Underlay:    ul.Link.Attrs().Name,
		UnderlayIP:  ul.IP,
		Network:     netCfg.Network,
		Subnet:      subnet,
		VtepMAC:     vtep,
		VNI:         uint32(netCfg.Backend.VNI),
		Port:        uint16(netCfg.Backend.Port),
		Decap:       cfg.Decap,
		NoGRODevice: !cfg.GRODevice,
	})
	if err != nil {
		return d.releaseOnError(own, err)
	}
	if err := writeSubnetEnv(cfg.SubnetFile, subnetEnv{
		Network: netCfg.Network, Subnet: subnet, MTU: loader.PodMTU(int(nodeState.Config.MTU)),
	}); err != nil {
		return err
	}
	log.Info("data plane ready", zap.Stringer("subnet", subnet), zap.String("subnet_file", cfg.SubnetFile),
		zap.Int("pod_mtu", loader.PodMTU(int(nodeState.Config.MTU))))

	rec := reconcile.New(dp.Maps.Tunnels, netCfg, reconcile.Self{Subnet: subnet, PublicIP: ul.PublicIP, Underlay: ul.Prefix}, log, d.metrics)
	rec.PruneCounters(dp.Maps.PeerStats)

	errc := make(chan error, 2)
	go func() { errc <- d.keepLease(ctx, own) }()
	go d.monitor(ctx, st, own, netCfg, nodeLinks(cfg.PinPath))
	go func() { errc <- st.SyncBatches(ctx, netCfg, func(b peers.Batch) { d.applyBatch(rec, b) }) }()
	go rec.RunAudit(ctx, auditInterval)

	select {
	case <-ctx.Done():
	case err := <-errc:
		if ctx.Err() == nil {
			// Lost our subnet (or a bug): stop managing, but leave the data
			// plane forwarding for whatever still matches.
			return fmt.Errorf("control loop stopped: %w", err)
		}
	}
	log.Info("shutting down", zap.Bool("cleanup_on_exit", cfg.CleanupOnExit))
	if !cfg.CleanupOnExit {
		log.Info("leaving the data plane running; pinned at " + cfg.PinPath)
		return nil
	}
	var errs []error
	if err := loader.TeardownNode(cfg.PinPath, nodeState.HostIfName); err != nil {
		errs = append(errs, err)
	}
	relCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := own.Release(relCtx); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(cfg.SubnetFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// waitForConfig reads <prefix>/config, waiting (like flanneld) until an
// operator writes a valid one. An invalid config is logged with its key and
// counted, and weftd keeps waiting rather than exiting: whatever data plane
// is pinned keeps forwarding meanwhile.
func (d *daemon) waitForConfig(ctx context.Context, st *store.Store) (*flannel.NetworkConfig, error) {
	delay := 500 * time.Millisecond
	for {
		cfg, err := st.GetConfig(ctx)
		if err == nil {
			d.log.Info("network config", zap.Stringer("network", cfg.Network), zap.Int("subnet_len", cfg.SubnetLen),
				zap.String("backend", cfg.Backend.Type), zap.Int("vni", int(cfg.Backend.VNI)), zap.Int("port", int(cfg.Backend.Port)),
				zap.Bool("direct_routing", cfg.Backend.DirectRouting))
			return cfg, nil
		}
		key := flannel.ConfigKey(d.cfg.EtcdPrefix)
		if errors.Is(err, store.ErrConfigNotFound) || ctx.Err() != nil {
			d.log.Warn("waiting for network config", zap.String("key", key), zap.Error(err))
		} else {
			d.configErrors.Add(1)
			d.log.Error("invalid or unreadable network config, waiting for a valid one", zap.String("key", key), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		if delay < 10*time.Second {
			delay *= 2
		}
	}
}

// previousSubnet reads the subnet an earlier run wrote to subnet.env, so a
// node whose lease expired while it was down asks for the same one back.
func previousSubnet(path string) netip.Prefix {
	b, err := os.ReadFile(path)
	if err != nil {
		return netip.Prefix{}
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "FLANNEL_SUBNET="); ok {
			if p, err := netip.ParsePrefix(strings.TrimSpace(v)); err == nil {
				return p.Masked()
			}
		}
	}
	return netip.Prefix{}
}
