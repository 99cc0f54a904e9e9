// Package store is Weft's etcd v3 client, in flannel's schema (see
// control/flannel), doing what flannel's pkg/subnet/etcd LocalManager and
// registry do for flanneld:
//
//   - GetConfig reads <prefix>/config.
//   - AcquireLease takes a subnet for this node. Like flannel it first looks
//     for a lease holding this node's PublicIP and keeps it; unlike flannel
//     it re-attaches to that key's existing etcd lease instead of granting a
//     new one, so a restart that changes nothing writes nothing and other
//     nodes see no event. A new subnet is taken with a transaction
//     (CreateRevision == 0, put with an etcd lease), retried on conflict.
//   - PlanLease picks that subnet by the same rules without writing, and
//     AcquirePlan then takes exactly it (ErrPlanStale if another node took
//     it meanwhile), so that weftd publishes its lease only once its data
//     plane serves the subnet; flanneld writes the lease first.
//   - OwnLease.KeepAlive renews the etcd lease, and when it is lost (etcd was
//     unreachable for longer than the TTL, or the lease was revoked)
//     re-acquires the same subnet; it never silently moves the node, whose
//     pods already have addresses in that subnet.
//   - SyncBatches (Peers, a peers.Source) lists the subnets, hands the
//     consumer the validated set as one Full batch, then watches from the
//     listed revision and hands over only the keys each change affected,
//     validated and overlap-checked in O(change) by an index of owners per
//     subnet (index.go). Any watch failure (compaction, a closed channel, a
//     cancelled watch) ends in a full re-list and a Full batch, the same
//     recovery flannel's watchSubnets does on compaction, applied to every
//     failure, so the consumer can never keep a stale partial view. Sync
//     folds the batches into whole snapshots for consumers that want them.
//
// Families (issue 14). In a dual-stack network a node leases a pair,
// "10.244.1.0-24&fd00:10:244:1::-64", picked per family as flannel does
// (FreeSubnets, FreeIPv6Subnets; Previous and PreviousIPv6 first); in an
// IPv6-only network "0.0.0.0-0&fd00:10:244:1::-64". The value carries
// PublicIPv6 and BackendV6Data (the same VtepMAC as BackendData); a node
// without an IPv6 underlay address writes "PublicIPv6":null (v6-in-v4:
// peers reach its IPv6 pods over IPv4, see leaseAttrs); an IPv4 network's lease
// keeps flannel's "PublicIPv6":null. A node finds its own lease by PublicIP,
// or by PublicIPv6 in an IPv6-only network, where every PublicIP is
// 0.0.0.0. A lease of ours that lacks a family the config has (or has one
// it lacks) is deleted and a pair taken anew, as flanneld does when IPv6
// is turned on or off. The watch index checks overlaps per family.
//
// Every etcd failure is counted in metrics.Metrics.StoreErrors.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/metrics"
)

// listTimeout bounds one list of all leases (10,000 leases are ~2 MB).
const listTimeout = 30 * time.Second

var (
	// ErrConfigNotFound means <prefix>/config does not exist.
	ErrConfigNotFound = errors.New("network config not found in etcd")
	// ErrConfigInvalid means <prefix>/config was read but does not parse
	// or validate; the error also wraps the flannel sentinel saying why.
	ErrConfigInvalid = errors.New("invalid network config in etcd")
)

// Store reads and writes one flannel network under one etcd prefix.
type Store struct {
	cli     *clientv3.Client
	prefix  string
	log     *zap.Logger
	metrics *metrics.Metrics

	// afterList, when set by a test, runs between a Sync list and the watch
	// that follows it.
	afterList func()
}

// New returns a Store on cli for the network at prefix ("" means
// flannel.DefaultPrefix). log and m may be nil.
func New(cli *clientv3.Client, prefix string, log *zap.Logger, m *metrics.Metrics) *Store {
	if log == nil {
		log = zap.NewNop()
	}
	if m == nil {
		m = new(metrics.Metrics)
	}
	return &Store{cli: cli, prefix: flannel.CleanPrefix(prefix), log: log, metrics: m}
}

// Prefix is the normalised etcd prefix.
func (s *Store) Prefix() string { return s.prefix }

// GetConfig reads and validates <prefix>/config. Errors wrap
// ErrConfigNotFound, ErrConfigInvalid and a flannel config sentinel, or
// the etcd error.
func (s *Store) GetConfig(ctx context.Context) (*flannel.NetworkConfig, error) {
	key := flannel.ConfigKey(s.prefix)
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		s.metrics.StoreErrors.Add(1)
		return nil, fmt.Errorf("get network config %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("get network config %s: %w", key, ErrConfigNotFound)
	}
	cfg, err := flannel.ParseConfig(resp.Kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("get network config %s: %w: %w", key, ErrConfigInvalid, err)
	}
	return cfg, nil
}

// Snapshot is the whole set of leases at one etcd revision.
type Snapshot struct {
	Revision int64
	Leases   []flannel.Lease       // valid, sorted by key
	Invalid  []*flannel.LeaseError // one per bad key, sorted by key
}

// List reads every lease and validates the set.
func (s *Store) List(ctx context.Context, cfg *flannel.NetworkConfig) (Snapshot, error) {
	kvs, rev, err := s.listRaw(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	leases, invalid := cfg.ParseLeases(s.prefix, kvs)
	return Snapshot{Revision: rev, Leases: leases, Invalid: invalid}, nil
}

func (s *Store) listRaw(ctx context.Context) ([]flannel.KV, int64, error) {
	var all []flannel.KV
	rev, err := s.listPages(ctx, func(page []flannel.KV) { all = append(all, page...) })
	return all, rev, err
}

// listPage is how many leases one list request returns. Paging bounds the
// memory a list needs at once: 50,000 leases in one response were ~10 MB
// of protobuf plus their decoded copies, all live together, and weftd's
// peak RSS followed.
var listPage int64 = 2000 // a variable so that a test can page through a few leases

// listPages reads every lease at one revision, a page at a time, handing
// each page to fn, and returns that revision. A compaction past it in the
// middle fails the list (the caller lists again).
func (s *Store) listPages(ctx context.Context, fn func([]flannel.KV)) (int64, error) {
	// Bounded, so that an unreachable etcd shows up as errors (logged,
	// counted, retried) rather than as one call blocked for the outage.
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	prefix := flannel.SubnetsPrefix(s.prefix)
	end := clientv3.GetPrefixRangeEnd(prefix)
	key, rev := prefix, int64(0)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, key, opts...)
		if err != nil {
			s.metrics.StoreErrors.Add(1)
			return 0, fmt.Errorf("list subnets under %s: %w", prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		page := make([]flannel.KV, 0, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			page = append(page, flannel.KV{Key: string(kv.Key), Value: kv.Value,
				CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, EtcdLease: kv.Lease})
		}
		fn(page)
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// backoff doubles from 100ms up to 5s, flannel's watch retry schedule.
type backoff struct{ d time.Duration }

func (b *backoff) next() time.Duration {
	switch {
	case b.d == 0:
		b.d = 100 * time.Millisecond
	case b.d < 5*time.Second:
		b.d = min(2*b.d, 5*time.Second)
	}
	return b.d
}

func (b *backoff) reset() { b.d = 0 }
