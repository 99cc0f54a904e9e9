package main

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/test/lab"
)

// leaseStore is one place remote nodes' leases live, as the benchmark
// needs it: written in bulk, one more at a time for the joins, and read
// the way flanneld reads it (a list at start, then a follow). Both sides of
// the comparison use the same store and the same data.
type leaseStore interface {
	// write makes remote nodes [from, to) exist in the store (quickly:
	// this is setup, not measured).
	write(ctx context.Context, from, to int) error
	// remove deletes remote nodes [from, to) (absent ones are fine).
	remove(ctx context.Context, from, to int) error
	// put adds remote node i and returns once the store has accepted it:
	// the start of one join.
	put(ctx context.Context, i int) error
	// list is flanneld's start-up read: every remote node, decoded.
	list(ctx context.Context) ([]peer, error)
	// follow is flanneld's watch from now on: every remote node added or
	// changed after it returns arrives on the channel, decoded, in order.
	// It ends when ctx does.
	follow(ctx context.Context) (<-chan peer, error)
}

// newStore starts a lab cluster for the named store and its leaseStore.
func newStore(name string, opts lab.Options) (*lab.Cluster, leaseStore, error) {
	switch name {
	case "etcd":
		c, err := lab.New(opts)
		if err != nil {
			return nil, nil, err
		}
		cli, err := c.Etcd.Client()
		if err != nil {
			return c, nil, err
		}
		return c, &etcdStore{cli: cli, prefix: c.EtcdPrefix}, nil
	case "kube":
		opts.Store = lab.StoreKube
		opts.Network = network // weftd's own podCIDR must lie in netConfig's Network
		c, err := lab.New(opts)
		if err != nil {
			return c, nil, err
		}
		return c, newKubeStore(c.Kube.API), nil
	}
	return nil, nil, fmt.Errorf("unknown store %q (have: etcd, kube)", name)
}

// etcdStore is flannel's etcd schema: <prefix>/subnets/<subnet> keys.
type etcdStore struct {
	cli    *clientv3.Client
	prefix string
}

// write puts leases [from, to) in transactions of 128 (etcd's default
// --max-txn-ops).
func (s *etcdStore) write(ctx context.Context, from, to int) error {
	return s.txns(ctx, from, to, func(i int) clientv3.Op {
		sn, ip, mac := remote(i)
		return clientv3.OpPut(leaseKey(s.prefix, sn), leaseJSON(ip, mac))
	})
}

func (s *etcdStore) remove(ctx context.Context, from, to int) error {
	return s.txns(ctx, from, to, func(i int) clientv3.Op {
		sn, _, _ := remote(i)
		return clientv3.OpDelete(leaseKey(s.prefix, sn))
	})
}

func (s *etcdStore) txns(ctx context.Context, from, to int, op func(int) clientv3.Op) error {
	for i := from; i < to; {
		var ops []clientv3.Op
		for ; i < to && len(ops) < 128; i++ {
			ops = append(ops, op(i))
		}
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("etcd leases: %w", err)
		}
	}
	return nil
}

func (s *etcdStore) put(ctx context.Context, i int) error {
	sn, ip, mac := remote(i)
	_, err := s.cli.Put(ctx, leaseKey(s.prefix, sn), leaseJSON(ip, mac))
	return err
}

func (s *etcdStore) list(ctx context.Context) ([]peer, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	peers := make([]peer, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if p, ok := decodePeer(s.prefix, kv.Key, kv.Value); ok {
			peers = append(peers, p)
		}
	}
	return peers, nil
}

// follow is flanneld's subnet.WatchLeases: a watch on the subnets prefix
// whose events are decoded and handed over a channel to the loop that
// programs the kernel.
func (s *etcdStore) follow(ctx context.Context) (<-chan peer, error) {
	wch := s.cli.Watch(ctx, s.prefix+"/subnets/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if resp, ok := <-wch; !ok || !resp.Created {
		return nil, errors.New("etcd: watch not created")
	}
	out := make(chan peer, 64)
	go func() {
		defer close(out)
		for resp := range wch {
			if resp.Err() != nil {
				return
			}
			for _, ev := range resp.Events {
				if p, ok := decodePeer(s.prefix, ev.Kv.Key, ev.Kv.Value); ok {
					select {
					case out <- p:
					case <-ctx.Done():
						return
					}
				}
			}
		}
	}()
	return out, nil
}

func (s *etcdStore) close() { s.cli.Close() }
