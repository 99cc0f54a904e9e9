package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/kube"
	"github.com/weftnet/weft/control/peers"
	"github.com/weftnet/weft/control/store"
)

// subnetStore is where this node's lease and its peers live: etcd in
// flannel's schema, or Kubernetes Node objects (--kube-subnet-mgr). run
// sees only this, so both stores feed one data plane setup and one
// reconcile.
type subnetStore interface {
	// NetworkConfig returns the network config, waiting for a valid one
	// where an operator may still write it (etcd).
	NetworkConfig(ctx context.Context) (*flannel.NetworkConfig, error)
	// Acquire finds this node's subnet (etcd: picks one, written only by
	// Publish; Kubernetes: reads the podCIDR the controller manager
	// assigned) and what to publish.
	Acquire(ctx context.Context, cfg *flannel.NetworkConfig, me identity) (ownLease, error)
	// Source streams the peers after Acquire.
	peers.Source
	Close() error
}

// identity is what this node would publish when the store has no say.
type identity struct {
	PublicIP   netip.Addr       // zero in an IPv6-only network
	PublicIPv6 netip.Addr       // zero without IPv6, or without an IPv6 underlay (v6-in-v4)
	VtepMAC    net.HardwareAddr // --vtep-mac; nil: the store's or derived
	SubnetFile string           // flannel's subnet.env of an earlier run
}

// vtepOr is the --vtep-mac, else mac, else one derived from the machine.
func (me identity) vtepOr(mac net.HardwareAddr) net.HardwareAddr {
	switch {
	case me.VtepMAC != nil:
		return me.VtepMAC
	case mac != nil:
		return mac
	}
	if !me.PublicIP.IsValid() {
		return stableVtepMAC(machineID(), me.PublicIPv6) // IPv6-only
	}
	return stableVtepMAC(machineID(), me.PublicIP)
}

// ownLease is this node's lease in its store.
type ownLease interface {
	Subnet() netip.Prefix     // IPv4 pod subnet; zero in an IPv6-only network
	IPv6Subnet() netip.Prefix // IPv6 pod subnet; zero without IPv6
	PublicIP() netip.Addr
	PublicIPv6() netip.Addr
	VtepMAC() net.HardwareAddr
	// Publish announces the lease once the data plane is up (Kubernetes:
	// annotations and NetworkUnavailable=False; etcd: the subnet key,
	// created in a transaction). An error wrapping errReplanned means
	// Subnet changed: set the data plane up for it and Publish again.
	Publish(ctx context.Context) error
	// KeepAlive holds the lease until ctx is done.
	KeepAlive(ctx context.Context) error
	// Release gives it up (--cleanup-on-exit).
	Release(ctx context.Context) error
}

// openStore connects to the store the flags name.
func (d *daemon) openStore(ctx context.Context) (subnetStore, error) {
	if d.cfg.KubeSubnetMgr {
		m, err := kube.New(ctx, d.cfg.Kube, d.log.Named("kube"), d.metrics)
		if err != nil {
			return nil, err
		}
		d.log.Info("kube subnet manager", zap.String("node", m.NodeName()), zap.String("net_config_path", d.cfg.Kube.NetConfPath))
		return &kubeStore{Manager: m, log: d.log}, nil
	}
	return d.openEtcd()
}

// ---- etcd ----

// errReplanned is Publish saying that the planned subnet was taken by
// another node before it could be published and Subnet is now another one:
// set the data plane up for it and Publish again.
var errReplanned = errors.New("planned subnet taken; planned another")

type etcdStore struct {
	d   *daemon
	cli *clientv3.Client
	st  *store.Store
	cfg *flannel.NetworkConfig
	own atomic.Pointer[store.OwnLease] // after Acquire
}

func (d *daemon) openEtcd() (*etcdStore, error) {
	tlsCfg, err := etcdTLS(d.cfg)
	if err != nil {
		return nil, flagError{err}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   d.cfg.EtcdEndpoints,
		DialTimeout: 5 * time.Second,
		TLS:         tlsCfg,
		Username:    d.cfg.EtcdUsername,
		Password:    d.cfg.EtcdPassword,
		Logger:      d.log.Named("etcd-client").WithOptions(zap.IncreaseLevel(zap.WarnLevel)),
		// gRPC's default reconnect backoff grows to two minutes, so after an
		// etcd outage weftd stayed blind to joins and leaves for up to that
		// long (11 s after a 30 s outage in the lab). Retry at least every 2 s.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return &etcdStore{d: d, cli: cli, st: store.New(cli, d.cfg.EtcdPrefix, d.log, d.metrics)}, nil
}

func (e *etcdStore) Close() error { return e.cli.Close() }

// NetworkConfig reads <prefix>/config, waiting (like flanneld) until an
// operator writes a valid one. An invalid config is logged with its key and
// counted, and weftd keeps waiting rather than exiting: whatever data plane
// is pinned keeps forwarding meanwhile.
func (e *etcdStore) NetworkConfig(ctx context.Context) (*flannel.NetworkConfig, error) {
	delay := 500 * time.Millisecond
	for {
		cfg, err := e.st.GetConfig(ctx)
		if err == nil {
			e.cfg = cfg
			return cfg, nil
		}
		key := flannel.ConfigKey(e.d.cfg.EtcdPrefix)
		if errors.Is(err, store.ErrConfigNotFound) || ctx.Err() != nil {
			e.d.log.Warn("waiting for network config", zap.String("key", key), zap.Error(err))
		} else {
			e.d.configErrors.Add(1)
			e.d.log.Error("invalid or unreadable network config, waiting for a valid one", zap.String("key", key), zap.Error(err))
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

// Acquire only plans: it picks the subnet (our lease of an earlier run,
// the one in subnet.env if free, else a free one) without writing, so that
// no peer programs a tunnel to this node before its data plane is set up.
// Publish takes it.
func (e *etcdStore) Acquire(ctx context.Context, cfg *flannel.NetworkConfig, me identity) (ownLease, error) {
	req := store.LeaseRequest{
		PublicIP:   me.PublicIP,
		PublicIPv6: me.PublicIPv6,
		VtepMAC:    me.vtepOr(nil),
		TTL:        e.d.cfg.LeaseTTL,
	}
	req.Previous, req.PreviousIPv6 = previousSubnets(me.SubnetFile)
	plan, err := e.st.PlanLease(ctx, cfg, req)
	if err != nil {
		return nil, err
	}
	e.d.log.Info("subnet planned; its lease is published once the data plane is set up",
		zap.Stringer("subnet", plan.Subnet), zap.Stringer("ipv6_subnet", plan.IPv6Subnet), zap.Bool("existing_lease", plan.Existing != nil))
	return &etcdLease{e: e, cfg: cfg, req: req, plan: plan}, nil
}

// Watch hands etcd's changes on as they come: a Full batch after each
// list, then only the keys each watch event affected (store.SyncBatches).
func (e *etcdStore) Watch(ctx context.Context, apply func(peers.Batch)) error {
	return e.st.SyncBatches(ctx, e.cfg, apply)
}

// WatchConfig, Probe and Renewed let the health monitor watch the network
// config and etcd's reachability (health.go).
func (e *etcdStore) WatchConfig(ctx context.Context, fn func(*flannel.NetworkConfig, error)) {
	e.st.WatchConfig(ctx, fn)
}

func (e *etcdStore) Probe(ctx context.Context, timeout time.Duration) error {
	return e.st.Probe(ctx, timeout)
}

func (e *etcdStore) Renewed() time.Time {
	if own := e.own.Load(); own != nil {
		return own.Renewed()
	}
	return time.Time{}
}

// etcdLease is a planned subnet until Publish takes it in etcd.
type etcdLease struct {
	e    *etcdStore
	cfg  *flannel.NetworkConfig
	req  store.LeaseRequest
	plan store.Plan
	own  *store.OwnLease // after Publish
}

func (l *etcdLease) PublicIP() netip.Addr      { return l.req.PublicIP }
func (l *etcdLease) PublicIPv6() netip.Addr    { return l.req.PublicIPv6 }
func (l *etcdLease) VtepMAC() net.HardwareAddr { return l.req.VtepMAC }

// Subnet is the planned subnet, and after Publish the one taken, which
// differs when another node won the planned one in between.
func (l *etcdLease) Subnet() netip.Prefix {
	if l.own != nil {
		return l.own.Subnet()
	}
	return l.plan.Subnet
}

// IPv6Subnet is Subnet's IPv6 counterpart.
func (l *etcdLease) IPv6Subnet() netip.Prefix {
	if l.own != nil {
		return l.own.IPv6Subnet()
	}
	return l.plan.IPv6Subnet
}

// Publish takes exactly the planned subnet, whose data plane is set up: an
// existing lease of ours is kept as it is (nothing written when its value
// is unchanged), a free subnet is created. If another node took it since
// the plan, Publish writes nothing, plans again and returns errReplanned:
// the caller sets the data plane up for the new Subnet and publishes again.
func (l *etcdLease) Publish(ctx context.Context) error {
	own, err := l.e.st.AcquirePlan(ctx, l.cfg, l.req, l.plan)
	if errors.Is(err, store.ErrPlanStale) {
		plan, perr := l.e.st.PlanLease(ctx, l.cfg, l.req)
		if perr != nil {
			return errors.Join(err, perr)
		}
		l.plan = plan
		return fmt.Errorf("%w: %w", errReplanned, err)
	}
	if err != nil {
		return err
	}
	l.own = own
	l.e.own.Store(own)
	return nil
}

func (l *etcdLease) KeepAlive(ctx context.Context) error {
	if l.own == nil {
		return errors.New("keep lease alive: not published")
	}
	return l.own.KeepAlive(ctx)
}

// Release revokes the taken lease; before Publish, an existing lease of
// ours that the plan found (peers already see it).
func (l *etcdLease) Release(ctx context.Context) error {
	if l.own != nil {
		return l.own.Release(ctx)
	}
	return l.e.st.ReleasePlan(ctx, l.plan)
}

// ---- Kubernetes ----

type kubeStore struct {
	*kube.Manager
	log *zap.Logger
}

func (k *kubeStore) Close() error { return nil }

// NetworkConfig is --net-config-path, read by kube.New.
func (k *kubeStore) NetworkConfig(context.Context) (*flannel.NetworkConfig, error) {
	return k.Manager.NetworkConfig(), nil
}

// Acquire reads the Node: its podCIDR, the VtepMAC it published before
// (kept across restarts) and an admin's public-ip-overwrite, which wins
// over the detected address as in flanneld.
func (k *kubeStore) Acquire(ctx context.Context, cfg *flannel.NetworkConfig, me identity) (ownLease, error) {
	own, err := k.OwnNode(ctx)
	if err != nil {
		return nil, err
	}
	ip, ip6 := me.PublicIP, me.PublicIPv6
	if own.PublicIPOverwrite.IsValid() && own.PublicIPOverwrite != ip && cfg.Network.IsValid() {
		k.log.Info("public IP from the Node's public-ip-overwrite annotation", zap.Stringer("public_ip", own.PublicIPOverwrite),
			zap.Stringer("detected", ip))
		ip = own.PublicIPOverwrite
	}
	if own.PublicIPv6Overwrite.IsValid() && !ip6.IsValid() && cfg.IPv6Network.IsValid() {
		// Outer IPv6 needs a source address on the underlay; without one
		// this node's IPv6 pods travel over IPv4 whatever peers are told.
		k.log.Warn("ignoring the Node's public-ipv6-overwrite annotation: the underlay has no IPv6 address to send from (v6-in-v4)",
			zap.Stringer("public_ipv6_overwrite", own.PublicIPv6Overwrite))
	} else if own.PublicIPv6Overwrite.IsValid() && own.PublicIPv6Overwrite != ip6 && cfg.IPv6Network.IsValid() {
		k.log.Info("public IPv6 from the Node's public-ipv6-overwrite annotation", zap.Stringer("public_ipv6", own.PublicIPv6Overwrite),
			zap.Stringer("detected", ip6))
		ip6 = own.PublicIPv6Overwrite
	}
	me.PublicIP, me.PublicIPv6 = ip, ip6
	return &kubeLease{m: k.Manager, own: own, ip: ip, ip6: ip6, mac: me.vtepOr(own.VtepMAC), vni: cfg.Backend.VNI}, nil
}

type kubeLease struct {
	m   *kube.Manager
	own kube.Own
	ip  netip.Addr
	ip6 netip.Addr
	mac net.HardwareAddr
	vni uint32
}

func (l *kubeLease) Subnet() netip.Prefix      { return l.own.Subnet }
func (l *kubeLease) IPv6Subnet() netip.Prefix  { return l.own.IPv6Subnet }
func (l *kubeLease) PublicIP() netip.Addr      { return l.ip }
func (l *kubeLease) PublicIPv6() netip.Addr    { return l.ip6 }
func (l *kubeLease) VtepMAC() net.HardwareAddr { return l.mac }

// Publish writes the annotations of the families the Node has a podCIDR
// of: an IPv6 podCIDR adds public-ipv6 and backend-v6-data (the same
// VtepMAC) when the node has an IPv6 underlay address.
func (l *kubeLease) Publish(ctx context.Context) error {
	ip, ip6 := l.ip, l.ip6
	if !l.own.Subnet.IsValid() {
		ip = netip.Addr{}
	}
	if !l.own.IPv6Subnet.IsValid() {
		ip6 = netip.Addr{}
	}
	attrs, err := flannel.NewDualVXLANAttrs(ip, ip6, l.vni, l.mac, l.mac)
	if err != nil {
		return err
	}
	return l.m.Publish(ctx, attrs)
}

// KeepAlive has nothing to renew: a Node lease has no TTL.
func (l *kubeLease) KeepAlive(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// Release leaves the annotations, as flanneld does: the Node's subnet is
// the controller manager's, and a peer keeps its tunnel until the Node goes.
func (l *kubeLease) Release(context.Context) error { return nil }
