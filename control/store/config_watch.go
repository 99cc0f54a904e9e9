package store

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/control/flannel"
)

// WatchConfig calls fn with <prefix>/config as it is now and again after
// every change, until ctx is done: a parsed config, or an error wrapping
// ErrConfigNotFound or ErrConfigInvalid. One etcd watch per node, not a
// poll: at 50,000 nodes a 2 s poll would be 25,000 reads a second. When the
// watch breaks it reads the key again (covering what it missed) and
// watches anew. fn runs on WatchConfig's goroutine.
func (s *Store) WatchConfig(ctx context.Context, fn func(*flannel.NetworkConfig, error)) {
	key := flannel.ConfigKey(s.prefix)
	var b backoff
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(ctx)
		wch := s.cli.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithCreatedNotify())
		for resp := range wch {
			if resp.Err() != nil || resp.Canceled {
				break
			}
			if resp.Created {
				// The watch is in place: read once, so a change between
				// weftd's first read and now is not missed.
				cfg, err := s.GetConfig(wctx)
				if wctx.Err() != nil {
					break
				}
				fn(cfg, err)
				b.reset()
				continue
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					fn(nil, fmt.Errorf("get network config %s: %w", key, ErrConfigNotFound))
					continue
				}
				cfg, err := flannel.ParseConfig(ev.Kv.Value)
				if err != nil {
					fn(nil, fmt.Errorf("get network config %s: %w: %w", key, ErrConfigInvalid, err))
					continue
				}
				fn(cfg, nil)
			}
		}
		cancel()
		if ctx.Err() == nil {
			s.metrics.StoreErrors.Add(1)
			sleep(ctx, b.next())
		}
	}
}

// Probe makes one cheap read (the config key, served by the local etcd
// member without a consensus round) to learn whether etcd answers.
func (s *Store) Probe(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := s.cli.Get(ctx, flannel.ConfigKey(s.prefix), clientv3.WithSerializable(), clientv3.WithKeysOnly())
	return err
}
