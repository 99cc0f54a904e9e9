package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftnet/weft/control/flannel"
)

// DefaultTTL is flannel's subnetTTL.
const DefaultTTL = 24 * time.Hour

// acquireAttempts bounds the list-then-transaction loop. Each lost race
// means another node won a subnet, so this many attempts cover a crowd of
// nodes starting together (flannel uses 10).
const acquireAttempts = 20

var (
	// ErrNoFreeSubnet means every subnet in [SubnetMin, SubnetMax] is leased.
	ErrNoFreeSubnet = errors.New("no free subnet in the network")
	// ErrAcquireConflict means every attempt lost a race to another writer.
	ErrAcquireConflict = errors.New("subnet allocation kept conflicting")
	// ErrSubnetTaken means our subnet's key now belongs to another node, so
	// the lease cannot be re-acquired; the node's pods are addressed in a
	// subnet it no longer owns (flanneld exits in this case).
	ErrSubnetTaken = errors.New("subnet taken by another node")
	// ErrPlanStale means the subnet of a Plan is no longer ours to take
	// (another node leased it since PlanLease): plan again, set the data
	// plane up for the new subnet, then AcquirePlan again.
	ErrPlanStale = errors.New("planned subnet no longer free")
	// errWatchBroken wraps a watch error (compaction, lost leader).
	errWatchBroken = errors.New("watch broken")
	// errRace is a lost compare-and-swap; the caller re-reads and retries.
	errRace = errors.New("etcd key changed concurrently")
)

// LeaseRequest says who this node is.
type LeaseRequest struct {
	PublicIP netip.Addr // underlay IPv4 address (flanneld --public-ip); zero on an IPv6-only underlay
	// PublicIPv6 is the IPv6 underlay address (flanneld --public-ipv6),
	// published in networks with IPv6; zero when the node has none, which
	// in a dual-stack network makes its IPv6 pods travel over the IPv4
	// underlay (v6-in-v4, ipv6-contract.md). An IPv6-only network needs it.
	PublicIPv6 netip.Addr
	VtepMAC    net.HardwareAddr // stable across restarts; one for both families
	TTL        time.Duration    // etcd lease TTL; DefaultTTL when zero
	// Previous and PreviousIPv6 are the subnets the node had before
	// (flannel reads them from subnet.env). Each is taken again when no
	// lease of ours exists and it is free, so pods keep their addresses
	// after a long outage.
	Previous     netip.Prefix
	PreviousIPv6 netip.Prefix
}

// who names the node in errors: its PublicIP, or PublicIPv6 without one.
func (r LeaseRequest) who() string {
	if r.PublicIP.IsValid() {
		return r.PublicIP.String()
	}
	return r.PublicIPv6.String()
}

// OwnLease is this node's lease: the subnet key it holds and the etcd lease
// keeping that key alive. Its accessors are safe while KeepAlive runs.
type OwnLease struct {
	s     *Store
	cfg   *flannel.NetworkConfig
	req   LeaseRequest
	value []byte // our lease JSON
	plan  Plan   // AcquirePlan: the only subnets it may take

	renewed atomic.Int64 // unix nanos of the last renewal or acquisition

	mu      sync.Mutex
	subnet  netip.Prefix     // zero in an IPv6-only network
	subnet6 netip.Prefix     // zero in a network without IPv6
	id      clientv3.LeaseID // 0 for a reservation (a key an admin wrote without TTL)
	rev     int64
}

// Subnet is the node's IPv4 pod subnet; zero in an IPv6-only network.
func (o *OwnLease) Subnet() netip.Prefix { o.mu.Lock(); defer o.mu.Unlock(); return o.subnet }

// IPv6Subnet is the node's IPv6 pod subnet; zero without IPv6.
func (o *OwnLease) IPv6Subnet() netip.Prefix { o.mu.Lock(); defer o.mu.Unlock(); return o.subnet6 }

// ID is the etcd lease the key is attached to; 0 for a reservation.
func (o *OwnLease) ID() clientv3.LeaseID { o.mu.Lock(); defer o.mu.Unlock(); return o.id }

// Revision is the etcd revision at which the lease was last (re)acquired.
func (o *OwnLease) Revision() int64 { o.mu.Lock(); defer o.mu.Unlock(); return o.rev }

// Key is the etcd key of the lease.
func (o *OwnLease) Key() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return flannel.LeaseKeyDual(o.s.prefix, o.subnet, o.subnet6)
}

// AcquireLease takes this node's subnet, following flannel's rules: keep the
// subnet of a valid lease holding our PublicIP if the config still allows
// it (and delete it if not); else take req.Previous if free; else a random
// one of the first 100 free subnets. Errors wrap ErrNoFreeSubnet,
// ErrAcquireConflict or the etcd error.
func (s *Store) AcquireLease(ctx context.Context, cfg *flannel.NetworkConfig, req LeaseRequest) (*OwnLease, error) {
	o, err := s.newOwnLease(cfg, req)
	if err != nil {
		return nil, err
	}
	return s.acquire(ctx, o)
}

// AcquirePlan takes exactly the subnets of plan (from PlanLease), keeping
// an existing lease as AcquireLease does (nothing written when unchanged),
// so that a lease key only ever appears for subnets the caller has set its
// data plane up for. When a planned subnet was taken meanwhile (or our
// lease is now another one) it writes nothing and returns an error
// wrapping ErrPlanStale.
func (s *Store) AcquirePlan(ctx context.Context, cfg *flannel.NetworkConfig, req LeaseRequest, plan Plan) (*OwnLease, error) {
	if !plan.valid() {
		return nil, fmt.Errorf("acquire lease for %s: no planned subnet", req.who())
	}
	o, err := s.newOwnLease(cfg, req)
	if err != nil {
		return nil, err
	}
	o.plan = plan
	return s.acquire(ctx, o)
}

func (s *Store) newOwnLease(cfg *flannel.NetworkConfig, req LeaseRequest) (*OwnLease, error) {
	if req.TTL == 0 {
		req.TTL = DefaultTTL
	}
	if req.TTL < time.Second {
		return nil, fmt.Errorf("acquire lease: TTL %v is under a second", req.TTL)
	}
	attrs, err := leaseAttrs(cfg, req)
	if err != nil {
		return nil, fmt.Errorf("acquire lease: %w", err)
	}
	value, err := flannel.MarshalLeaseAttrs(attrs)
	if err != nil {
		return nil, fmt.Errorf("acquire lease: %w", err)
	}
	return &OwnLease{s: s, cfg: cfg, req: req, value: value}, nil
}

// leaseAttrs is the value this node writes, as a flannel node of the same
// families would (flannel's newSubnetAttrs): an IPv4 network's lease has
// the IPv4 fields only ("PublicIPv6":null, whatever IPv6 address the node
// has); with IPv6 the lease adds PublicIPv6 and BackendV6Data with the
// same VtepMAC (Weft has one VTEP for both families); an IPv6-only
// network's lease has PublicIP "0.0.0.0" and the IPv6 fields only.
//
// A node without an IPv6 underlay address in a dual-stack network
// (v6-in-v4: peers reach its IPv6 pods at PublicIP) writes
// "PublicIPv6":null but still BackendV6Data: a flannel node drops a whole
// dual-stack lease whose BackendV6Data does not decode, IPv4 half included
// (pkg/backend/vxlan handleSubnetEvents), while with it flannel programs
// the IPv4 half and only fails the IPv6 FDB entry it has no address for.
func leaseAttrs(cfg *flannel.NetworkConfig, req LeaseRequest) (flannel.LeaseAttrs, error) {
	pub4, pub6 := req.PublicIP, req.PublicIPv6
	switch {
	case !cfg.IPv6Network.IsValid():
		pub6 = netip.Addr{}
	case !cfg.Network.IsValid():
		if !pub6.IsValid() {
			return flannel.LeaseAttrs{}, fmt.Errorf("%w: an IPv6-only network needs the node's IPv6 underlay address (PublicIPv6)", flannel.ErrPublicIP)
		}
		pub4 = netip.Addr{}
	}
	if cfg.Network.IsValid() && !pub4.IsValid() {
		return flannel.LeaseAttrs{}, fmt.Errorf("%w: a network with IPv4 needs the node's IPv4 underlay address (PublicIP)", flannel.ErrPublicIP)
	}
	a, err := flannel.NewDualVXLANAttrs(pub4, pub6, cfg.Backend.VNI, req.VtepMAC, req.VtepMAC)
	if err == nil && cfg.IPv6Network.IsValid() && !pub6.IsValid() {
		a.BackendV6Data = a.BackendData // v6-in-v4: the same VTEP
	}
	return a, err
}

// acquire runs the list-then-transaction loop for o.
func (s *Store) acquire(ctx context.Context, o *OwnLease) (*OwnLease, error) {
	req := o.req
	// A granted etcd lease is reused across lost races and revoked if we
	// give up, so that failed attempts leave nothing behind.
	var granted clientv3.LeaseID
	defer func() {
		if granted != 0 && o.ID() != granted {
			s.revoke(granted)
		}
	}()
	for range acquireAttempts {
		err := o.tryAcquire(ctx, &granted)
		switch {
		case err == nil:
			s.log.Info("acquired subnet lease", zap.String("key", o.Key()),
				zap.Int64("lease_id", int64(o.ID())), zap.Int64("revision", o.Revision()))
			return o, nil
		case errors.Is(err, errRace):
			continue
		default:
			return nil, fmt.Errorf("acquire lease for %s: %w", req.who(), err)
		}
	}
	return nil, fmt.Errorf("acquire lease for %s: %w after %d attempts", req.who(), ErrAcquireConflict, acquireAttempts)
}

func (o *OwnLease) tryAcquire(ctx context.Context, granted *clientv3.LeaseID) error {
	s, cfg := o.s, o.cfg
	kvs, _, err := s.listRaw(ctx)
	if err != nil {
		return err
	}
	sv := survey(s.prefix, cfg, o.req, kvs)

	// flannel deletes a lease of its PublicIP that the config no longer
	// allows (the Network or SubnetLen changed, IPv6 was turned on or
	// off) before allocating anew.
	if len(sv.stale) > 0 {
		for _, kv := range sv.stale {
			s.log.Info("deleting our lease that does not fit the network config",
				zap.String("key", kv.Key), zap.Stringer("network", cfg.Network), zap.Int("subnet_len", cfg.SubnetLen),
				zap.Stringer("ipv6_network", cfg.IPv6Network), zap.Int("ipv6_subnet_len", cfg.IPv6SubnetLen))
			if err := s.deleteIfUnchanged(ctx, kv); err != nil {
				return err
			}
			if kv.EtcdLease != 0 {
				// It held only that key; left alone it would linger for its TTL.
				s.revoke(clientv3.LeaseID(kv.EtcdLease))
			}
		}
		return errRace // re-read without them
	}
	if o.plan.valid() {
		// AcquirePlan: only the planned subnets, whose data plane is set up.
		switch {
		case sv.mine != nil && (sv.mine.Subnet != o.plan.Subnet || sv.mine.IPv6Subnet != o.plan.IPv6Subnet):
			return fmt.Errorf("%w: %s, our lease is now %s", ErrPlanStale, o.plan, sv.mine.Key)
		case sv.mine == nil && !sv.fits(cfg, o.plan):
			return fmt.Errorf("%w: %s", ErrPlanStale, o.plan)
		}
	}
	if sv.mine != nil {
		return o.reattach(ctx, *sv.mine, granted)
	}
	candidate := o.plan
	if !candidate.valid() {
		var err error
		if candidate, err = sv.pickFree(cfg, o.req); err != nil {
			return err
		}
	}
	return o.create(ctx, candidate.Subnet, candidate.IPv6Subnet, granted)
}

// subnetSurvey is what one list of the subnets says about this node.
type subnetSurvey struct {
	used  []netip.Prefix // every subnet (of both families) whose key exists, valid or not
	mine  *flannel.Lease // our oldest valid lease that fits the config, if any
	stale []flannel.KV   // ours, but the config no longer allows its subnets
}

func survey(prefix string, cfg *flannel.NetworkConfig, req LeaseRequest, kvs []flannel.KV) subnetSurvey {
	// Every key that parses blocks its subnets, valid or not: a subnet is
	// only free if no key names it at all.
	var sv subnetSurvey
	for _, kv := range kvs {
		// The key's own halves: ParseLease leaves out the half of a family
		// the network does not have, which still makes our lease stale.
		name := strings.TrimPrefix(kv.Key, flannel.SubnetsPrefix(prefix))
		k4, k6, kerr := flannel.ParseSubnetKey(name)
		if kerr == nil {
			for _, p := range []netip.Prefix{k4, k6} {
				if p.IsValid() {
					sv.used = append(sv.used, p)
				}
			}
		}
		l, err := cfg.ParseLease(prefix, kv)
		if err != nil {
			if kerr == nil && (errors.Is(err, flannel.ErrOutsideNetwork) || errors.Is(err, flannel.ErrSubnetSize) ||
				errors.Is(err, flannel.ErrLeaseFamily)) {
				if a, aerr := flannel.DecodeLeaseAttrs(kv.Value); aerr == nil && ours(cfg, a, req) {
					sv.stale = append(sv.stale, kv)
				}
			}
			continue
		}
		if !cfg.OwnLease(l.Attrs, req.PublicIP, req.PublicIPv6) {
			continue
		}
		if !cfg.LeaseFits(k4, k6) {
			sv.stale = append(sv.stale, kv)
		} else if sv.mine == nil || l.CreateRevision < sv.mine.CreateRevision {
			sv.mine = &l
		}
	}
	return sv
}

// ours reports whether a lease the config rejects is one of this node's:
// by PublicIP, or by PublicIPv6 (a lease of an earlier IPv6-only config,
// or of a dual-stack one after the network went IPv6-only).
func ours(cfg *flannel.NetworkConfig, a flannel.LeaseAttrs, req LeaseRequest) bool {
	return cfg.OwnLease(a, req.PublicIP, req.PublicIPv6) ||
		(a.PublicIP.IsValid() && a.PublicIP == req.PublicIP) ||
		(!req.PublicIP.IsValid() && a.PublicIPv6.IsValid() && a.PublicIPv6 == req.PublicIPv6)
}

// fits reports whether p's subnets are ones this config allocates and no
// key names.
func (sv subnetSurvey) fits(cfg *flannel.NetworkConfig, p Plan) bool {
	return cfg.LeaseFits(p.Subnet, p.IPv6Subnet) &&
		(!p.Subnet.IsValid() || isFree(sv.used, p.Subnet)) && (!p.IPv6Subnet.IsValid() || isFree(sv.used, p.IPv6Subnet))
}

// pickFree picks a subnet of each family the network has, independently
// as flannel does: the previous one if it is in range and free, else a
// random one of the first 100 free subnets.
func (sv subnetSurvey) pickFree(cfg *flannel.NetworkConfig, req LeaseRequest) (Plan, error) {
	var p Plan
	if cfg.Network.IsValid() {
		if prev := req.Previous; prev.IsValid() && cfg.InRange(prev) && isFree(sv.used, prev) {
			p.Subnet = prev
		} else if free := cfg.FreeSubnets(sv.used, 100); len(free) > 0 {
			p.Subnet = free[rand.IntN(len(free))]
		} else {
			return Plan{}, fmt.Errorf("%w: %s, range %s-%s", ErrNoFreeSubnet, cfg.Network, cfg.SubnetMin, cfg.SubnetMax)
		}
	}
	if cfg.IPv6Network.IsValid() {
		if prev := req.PreviousIPv6; prev.IsValid() && cfg.InRangeIPv6(prev) && isFree(sv.used, prev) {
			p.IPv6Subnet = prev
		} else if free := cfg.FreeIPv6Subnets(sv.used, 100); len(free) > 0 {
			p.IPv6Subnet = free[rand.IntN(len(free))]
		} else {
			return Plan{}, fmt.Errorf("%w: %s, range %s-%s", ErrNoFreeSubnet, cfg.IPv6Network, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax)
		}
	}
	return p, nil
}

// Plan is the subnets AcquireLease would take, found without writing, so
// that the node can set up its data plane for them before peers see a
// lease (they program tunnels to the node as soon as the key appears).
type Plan struct {
	Subnet     netip.Prefix // zero in an IPv6-only network
	IPv6Subnet netip.Prefix // zero in a network without IPv6
	// Existing is our valid lease of an earlier run, which peers already
	// see; nil when the subnets are to be created.
	Existing *flannel.Lease
}

func (p Plan) valid() bool { return p.Subnet.IsValid() || p.IPv6Subnet.IsValid() }

func (p Plan) String() string { return flannel.SubnetKeyDual(p.Subnet, p.IPv6Subnet) }

// PlanLease picks this node's subnets by AcquireLease's rules (our lease by
// PublicIP, or PublicIPv6 in an IPv6-only network; else req.Previous and
// req.PreviousIPv6 if free, else random free ones) and writes nothing.
// AcquirePlan takes them.
func (s *Store) PlanLease(ctx context.Context, cfg *flannel.NetworkConfig, req LeaseRequest) (Plan, error) {
	kvs, _, err := s.listRaw(ctx)
	if err != nil {
		return Plan{}, fmt.Errorf("plan lease for %s: %w", req.who(), err)
	}
	sv := survey(s.prefix, cfg, req, kvs)
	if sv.mine != nil {
		return Plan{Subnet: sv.mine.Subnet, IPv6Subnet: sv.mine.IPv6Subnet, Existing: sv.mine}, nil
	}
	p, err := sv.pickFree(cfg, req)
	if err != nil {
		return Plan{}, fmt.Errorf("plan lease for %s: %w", req.who(), err)
	}
	return p, nil
}

// ReleasePlan gives up a plan that was never acquired: nothing was written
// for a new subnet, but an existing lease of ours is revoked (as
// OwnLease.Release would), so peers stop sending to a node whose data
// plane could not be set up. A reservation (no etcd lease) is left alone.
func (s *Store) ReleasePlan(ctx context.Context, p Plan) error {
	if p.Existing == nil || p.Existing.EtcdLease == 0 {
		return nil
	}
	if _, err := s.cli.Revoke(ctx, clientv3.LeaseID(p.Existing.EtcdLease)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.metrics.StoreErrors.Add(1)
		return fmt.Errorf("release lease %s: %w", p.Existing.Key, err)
	}
	s.log.Info("released subnet lease", zap.String("key", p.Existing.Key))
	return nil
}

func isFree(used []netip.Prefix, p netip.Prefix) bool {
	for _, u := range used {
		if u.Overlaps(p) {
			return false
		}
	}
	return true
}

// create takes sn and sn6 (either may be zero) if their key does not exist,
// attached to a (granted once) etcd lease.
func (o *OwnLease) create(ctx context.Context, sn, sn6 netip.Prefix, granted *clientv3.LeaseID) error {
	s := o.s
	if *granted == 0 {
		g, err := s.cli.Grant(ctx, ttlSeconds(o.req.TTL))
		if err != nil {
			s.metrics.StoreErrors.Add(1)
			return fmt.Errorf("grant etcd lease: %w", err)
		}
		*granted = g.ID
	}
	key := flannel.LeaseKeyDual(s.prefix, sn, sn6)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(o.value), clientv3.WithLease(*granted))).
		Commit()
	if err != nil {
		s.metrics.StoreErrors.Add(1)
		return fmt.Errorf("create %s: %w", key, err)
	}
	if !resp.Succeeded {
		s.log.Debug("subnet taken concurrently, retrying", zap.String("key", key))
		return errRace
	}
	o.set(sn, sn6, *granted, resp.Header.Revision)
	return nil
}

// reattach keeps an existing lease of ours: same subnet, and the same etcd
// lease when it is alive and has the TTL we want, so nothing is written
// unless the value (VtepMAC, VNI) changed.
func (o *OwnLease) reattach(ctx context.Context, mine flannel.Lease, granted *clientv3.LeaseID) error {
	s := o.s
	id := clientv3.LeaseID(mine.EtcdLease)
	move := false // attach the key to a new etcd lease
	if id != 0 {
		kctx, cancel := context.WithTimeout(ctx, 10*time.Second) // KeepAliveOnce retries forever otherwise
		ka, err := s.cli.KeepAliveOnce(kctx, id)
		cancel()
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return errRace // expiring right now; the key goes with it
		case err != nil:
			s.metrics.StoreErrors.Add(1)
			return fmt.Errorf("renew etcd lease %x of %s: %w", int64(id), mine.Key, err)
		case ka.TTL < ttlSeconds(o.req.TTL):
			// A shorter lease than asked for (the TTL flag was raised).
			// etcd may round a TTL up to its minimum, so longer is fine.
			move = true
		}
	}
	if !move && bytes.Equal(mine.Value, o.value) {
		resp, err := s.cli.Get(ctx, mine.Key, clientv3.WithKeysOnly())
		if err != nil {
			s.metrics.StoreErrors.Add(1)
			return fmt.Errorf("read %s: %w", mine.Key, err)
		}
		if len(resp.Kvs) == 0 || resp.Kvs[0].ModRevision != mine.ModRevision {
			return errRace
		}
		s.log.Info("kept existing subnet lease", zap.String("key", mine.Key))
		o.set(mine.Subnet, mine.IPv6Subnet, id, resp.Header.Revision)
		return nil
	}

	put := []clientv3.OpOption{}
	newID := id
	if move {
		if *granted == 0 {
			g, err := s.cli.Grant(ctx, ttlSeconds(o.req.TTL))
			if err != nil {
				s.metrics.StoreErrors.Add(1)
				return fmt.Errorf("grant etcd lease: %w", err)
			}
			*granted = g.ID
		}
		newID = *granted
	}
	if newID != 0 {
		put = append(put, clientv3.WithLease(newID))
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(mine.Key), "=", mine.ModRevision)).
		Then(clientv3.OpPut(mine.Key, string(o.value), put...)).
		Commit()
	if err != nil {
		s.metrics.StoreErrors.Add(1)
		return fmt.Errorf("update %s: %w", mine.Key, err)
	}
	if !resp.Succeeded {
		return errRace
	}
	s.log.Info("updated existing subnet lease", zap.String("key", mine.Key), zap.Bool("new_etcd_lease", move))
	o.set(mine.Subnet, mine.IPv6Subnet, newID, resp.Header.Revision)
	if move && id != 0 {
		s.revoke(id) // it held only this key, which has moved
	}
	return nil
}

func (o *OwnLease) set(sn, sn6 netip.Prefix, id clientv3.LeaseID, rev int64) {
	o.renewed.Store(time.Now().UnixNano())
	o.mu.Lock()
	defer o.mu.Unlock()
	o.subnet, o.subnet6, o.id, o.rev = sn, sn6, id, rev
}

func (s *Store) deleteIfUnchanged(ctx context.Context, kv flannel.KV) error {
	_, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(kv.Key), "=", kv.ModRevision)).
		Then(clientv3.OpDelete(kv.Key)).
		Commit()
	if err != nil {
		s.metrics.StoreErrors.Add(1)
		return fmt.Errorf("delete %s: %w", kv.Key, err)
	}
	return nil
}

// revoke drops an etcd lease we no longer use, best effort: an unrevoked
// lease only lingers until its TTL.
func (s *Store) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.metrics.StoreErrors.Add(1)
		s.log.Warn("revoke unused etcd lease", zap.Int64("lease_id", int64(id)), zap.Error(err))
	}
}

func ttlSeconds(d time.Duration) int64 { return int64((d + time.Second - 1) / time.Second) }

// KeepAlive renews the etcd lease and guards the node's own key until ctx
// is done, then returns ctx.Err().
//
//   - When the etcd lease is lost (etcd unreachable past the TTL, or the
//     lease revoked) it re-acquires the same subnet, retrying with backoff
//     while etcd is unreachable.
//   - When the key itself changes behind our back while the lease lives (an
//     operator's etcdctl del, another writer's put), a watch on the key
//     notices it within one etcd round trip: a deleted key is written again
//     (attached to our live etcd lease), a value of ours that someone else
//     rewrote is put back.
//
// Either way it never moves the node to another subnet, whose pods already
// have addresses in this one. It returns an error wrapping ErrSubnetTaken
// if another node holds the subnet by then; the caller decides what the
// node does without it (weftd stays up, unready, and says so).
func (o *OwnLease) KeepAlive(ctx context.Context) error {
	s := o.s
	for {
		id := o.ID()
		kctx, cancel := context.WithCancel(ctx)
		var ka <-chan *clientv3.LeaseKeepAliveResponse
		var kaErr error
		if id != 0 { // a reservation has nothing to renew
			ka, kaErr = s.cli.KeepAlive(kctx, id)
		}
		key := o.Key()
		wch := s.cli.Watch(clientv3.WithRequireLeader(kctx), key, clientv3.WithRev(o.Revision()+1))
		reason, err := o.guard(ctx, ka, kaErr, wch)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.metrics.StoreErrors.Add(1)
		if errors.Is(err, ErrWatchClosed) || errors.Is(err, errWatchBroken) {
			// Not a change of ours: check the key (a no-op when intact)
			// and watch again.
			s.log.Info("own subnet key watch ended; checking the key", zap.String("key", key), zap.Error(err))
			if err := o.reacquire(ctx, id); err != nil {
				if errors.Is(err, ErrSubnetTaken) {
					s.metrics.OwnLeaseLost.Store(1)
				}
				return err
			}
			continue
		}
		s.log.Warn(reason+", re-acquiring the same subnet",
			zap.String("key", key), zap.Int64("lease_id", int64(id)), zap.Error(err))
		if err := o.reacquire(ctx, id); err != nil {
			if errors.Is(err, ErrSubnetTaken) {
				s.metrics.OwnLeaseLost.Store(1)
			}
			return err
		}
		s.metrics.OwnLeaseRepairs.Add(1)
		s.log.Info("subnet lease re-acquired", zap.Stringer("subnet", o.Subnet()), zap.Int64("lease_id", int64(o.ID())))
	}
}

// guard waits until the etcd lease is lost or the key changes under us,
// and says which.
func (o *OwnLease) guard(ctx context.Context, ka <-chan *clientv3.LeaseKeepAliveResponse, kaErr error, wch clientv3.WatchChan) (string, error) {
	if kaErr != nil {
		return "etcd lease lost", kaErr
	}
	for {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case _, ok := <-ka:
			if !ok { // closed when the lease is gone, unanswered past its TTL, or ctx is done
				return "etcd lease lost", nil
			}
			o.renewed.Store(time.Now().UnixNano())
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil || resp.Canceled {
				// The watch broke (etcd restarted, lost leader): check the
				// key once and watch again.
				err := fmt.Errorf("%w: own key watch", ErrWatchClosed)
				if ok && resp.Err() != nil {
					err = fmt.Errorf("%w: %w", errWatchBroken, resp.Err())
				}
				return "own key watch ended", err
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					return "own subnet key deleted", nil
				}
				if string(ev.Kv.Value) != string(o.value) || clientv3.LeaseID(ev.Kv.Lease) != o.ID() {
					return "own subnet key overwritten", fmt.Errorf("value now %q, etcd lease %x", ev.Kv.Value, ev.Kv.Lease)
				}
			}
		}
	}
}

// Renewed is when the etcd lease was last renewed (or acquired): how
// recently etcd answered us.
func (o *OwnLease) Renewed() time.Time { return time.Unix(0, o.renewed.Load()) }

// reacquire takes our subnet's key back. live is the etcd lease we held,
// which may still be alive (only the key was touched): the key is then
// written attached to it again rather than to a new one.
func (o *OwnLease) reacquire(ctx context.Context, live clientv3.LeaseID) error {
	var (
		b       backoff
		granted clientv3.LeaseID
	)
	if live != 0 && o.leaseAlive(ctx, live) {
		granted = live
	}
	defer func() {
		if granted != 0 && granted != live && o.ID() != granted {
			o.s.revoke(granted)
		}
	}()
	for {
		err := o.tryReacquire(ctx, &granted)
		if err == nil || errors.Is(err, ErrSubnetTaken) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, errRace) {
			o.s.log.Warn("re-acquire subnet lease", zap.Error(err))
		}
		if err := sleep(ctx, b.next()); err != nil {
			return err
		}
	}
}

// leaseAlive reports whether etcd still has lease id.
func (o *OwnLease) leaseAlive(ctx context.Context, id clientv3.LeaseID) bool {
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := o.s.cli.TimeToLive(tctx, id)
	return err == nil && r.TTL > 0
}

func (o *OwnLease) tryReacquire(ctx context.Context, granted *clientv3.LeaseID) error {
	s, sn, sn6 := o.s, o.Subnet(), o.IPv6Subnet()
	key := flannel.LeaseKeyDual(s.prefix, sn, sn6)
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		s.metrics.StoreErrors.Add(1)
		return fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return o.create(ctx, sn, sn6, granted)
	}
	kv := resp.Kvs[0]
	l, err := o.cfg.ParseLease(s.prefix, flannel.KV{Key: key, Value: kv.Value,
		CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, EtcdLease: kv.Lease})
	if err != nil || !o.cfg.OwnLease(l.Attrs, o.req.PublicIP, o.req.PublicIPv6) {
		return fmt.Errorf("re-acquire %s: %w (value now %q)", key, ErrSubnetTaken, kv.Value)
	}
	return o.reattach(ctx, l, granted)
}

// Release revokes the etcd lease, deleting our subnet key so that other
// nodes drop their tunnels to us (weftd --cleanup-on-exit). A reservation
// (no etcd lease) is the admin's and is left alone.
func (o *OwnLease) Release(ctx context.Context) error {
	id := o.ID()
	if id == 0 {
		return nil
	}
	if _, err := o.s.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		o.s.metrics.StoreErrors.Add(1)
		return fmt.Errorf("release lease %s: %w", o.Key(), err)
	}
	o.s.log.Info("released subnet lease", zap.String("key", o.Key()))
	return nil
}
