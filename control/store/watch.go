package store

import (
	"context"
	"errors"
	"fmt"

	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/peers"
)

var (
	// ErrCompacted means the watch started below etcd's compaction
	// horizon: the changes in between are gone and only a re-list helps.
	ErrCompacted = errors.New("watch revision compacted")
	// ErrWatchClosed means the watch ended for another reason (closed
	// channel, cancelled by the server, lost leader).
	ErrWatchClosed = errors.New("watch ended")
)

// EventType is what happened to a key.
type EventType int

const (
	EventPut    EventType = iota // created or changed
	EventDelete                  // deleted or expired
)

func (t EventType) String() string {
	if t == EventDelete {
		return "delete"
	}
	return "put"
}

// Event is one change under the subnets prefix. For a delete, KV holds only
// the key and revision.
type Event struct {
	Type EventType
	KV   flannel.KV
}

// WatchBatch is one etcd watch response. The last batch before the channel
// closes carries Err (wrapping ErrCompacted or ErrWatchClosed) unless ctx
// was cancelled.
type WatchBatch struct {
	Revision int64
	Events   []Event
	Err      error
}

// Watch streams changes under the subnets prefix from fromRevision
// (inclusive) until ctx is done or the watch fails. Progress notifications
// and the creation response are not forwarded.
func (s *Store) Watch(ctx context.Context, fromRevision int64) <-chan WatchBatch {
	out := make(chan WatchBatch)
	go func() {
		defer close(out)
		send := func(b WatchBatch) bool {
			select {
			case out <- b:
				return true
			case <-ctx.Done():
				return false
			}
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		// WithRequireLeader: a member cut off from its cluster ends the watch
		// instead of serving a stale view forever; Sync re-lists elsewhere.
		wch := s.cli.Watch(clientv3.WithRequireLeader(wctx), flannel.SubnetsPrefix(s.prefix),
			clientv3.WithPrefix(), clientv3.WithRev(fromRevision))
		for {
			var (
				resp clientv3.WatchResponse
				ok   bool
			)
			select {
			case resp, ok = <-wch:
			case <-ctx.Done():
				return
			}
			if ctx.Err() != nil {
				return
			}
			switch {
			case !ok:
				send(WatchBatch{Err: fmt.Errorf("watch %s: %w: channel closed", flannel.SubnetsPrefix(s.prefix), ErrWatchClosed)})
				return
			case resp.CompactRevision != 0:
				send(WatchBatch{Err: fmt.Errorf("watch %s from revision %d: %w at %d",
					flannel.SubnetsPrefix(s.prefix), fromRevision, ErrCompacted, resp.CompactRevision)})
				return
			case resp.Err() != nil:
				send(WatchBatch{Err: fmt.Errorf("watch %s: %w: %w", flannel.SubnetsPrefix(s.prefix), ErrWatchClosed, resp.Err())})
				return
			case len(resp.Events) == 0: // created, or progress
				continue
			}
			b := WatchBatch{Revision: resp.Header.Revision, Events: make([]Event, 0, len(resp.Events))}
			for _, ev := range resp.Events {
				e := Event{KV: flannel.KV{Key: string(ev.Kv.Key), Value: ev.Kv.Value, CreateRevision: ev.Kv.CreateRevision,
					ModRevision: ev.Kv.ModRevision, EtcdLease: ev.Kv.Lease}}
				if ev.Type == mvccpb.DELETE {
					e.Type = EventDelete
				}
				b.Events = append(b.Events, e)
			}
			if !send(b) {
				return
			}
		}
	}()
	return out
}

// SyncBatches keeps apply fed with the validated lease set as changes (see
// control/peers) until ctx is done: a list, handed over as one Full batch,
// then a watch from the next revision, one batch per watch response with
// only the keys it affected. When the watch ends for any reason it re-lists
// (with backoff if etcd is unreachable), hands over a Full batch and
// watches again, so apply never has to reason about missed events: the
// same recovery flannel's watchSubnets does on compaction, applied to every
// failure.
//
// Validation, including overlaps, costs O(change) per event (see index).
// Watch responses that arrive while apply runs are folded into the next
// batch, so a burst of joins costs a few applies, not one each.
// apply runs on SyncBatches' goroutine. It returns ctx.Err().
func (s *Store) SyncBatches(ctx context.Context, cfg *flannel.NetworkConfig, apply func(peers.Batch)) error {
	var b backoff
	for {
		ix, rev, err := s.listIndex(ctx, cfg)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s.log.Warn("list subnet leases, will retry", zap.Error(err))
			if err := sleep(ctx, b.next()); err != nil {
				return err
			}
			continue
		}
		apply(peers.Batch{Full: true, Revision: rev, Changes: ix.all()})
		if s.afterList != nil {
			s.afterList()
		}
		events, err := s.follow(ctx, ix, rev+1, apply)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.metrics.StoreErrors.Add(1)
		s.metrics.Resyncs.Add(1)
		s.log.Warn("subnet watch ended, re-listing", zap.Error(err))
		if events > 0 {
			b.reset() // it was working; retry at once-ish
		}
		if err := sleep(ctx, b.next()); err != nil {
			return err
		}
	}
}

// Peers is the store as a peers.Source for the network cfg.
func (s *Store) Peers(cfg *flannel.NetworkConfig) peers.Source { return source{s, cfg} }

type source struct {
	s   *Store
	cfg *flannel.NetworkConfig
}

func (src source) Watch(ctx context.Context, apply func(peers.Batch)) error {
	return src.s.SyncBatches(ctx, src.cfg, apply)
}

// Sync is SyncBatches for consumers that want the whole set every time: it
// folds the batches into a Snapshot after each. That costs O(cluster) per
// change; weftd uses SyncBatches. apply runs on Sync's goroutine.
func (s *Store) Sync(ctx context.Context, cfg *flannel.NetworkConfig, apply func(Snapshot)) error {
	var set map[string]peers.Change
	return s.SyncBatches(ctx, cfg, func(b peers.Batch) {
		if b.Full || set == nil {
			set = make(map[string]peers.Change, len(b.Changes))
		}
		for _, c := range b.Changes {
			if c.Deleted() {
				delete(set, c.Key)
			} else {
				set[c.Key] = c
			}
		}
		snap := Snapshot{Revision: b.Revision, Leases: make([]flannel.Lease, 0, len(set))}
		for _, c := range set {
			if c.Invalid != nil {
				snap.Invalid = append(snap.Invalid, c.Invalid)
			} else {
				snap.Leases = append(snap.Leases, *c.Lease)
			}
		}
		slices.SortFunc(snap.Leases, func(a, b flannel.Lease) int { return strings.Compare(a.Key, b.Key) })
		slices.SortFunc(snap.Invalid, func(a, b *flannel.LeaseError) int { return strings.Compare(a.Key, b.Key) })
		apply(snap)
	})
}

// follow applies watch batches to ix until the watch fails, handing apply
// the changed keys' states, and returns how many watch responses it applied
// and why it stopped.
func (s *Store) follow(ctx context.Context, ix *index, from int64, apply func(peers.Batch)) (int, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := s.Watch(wctx, from)
	n := 0
	for {
		b, ok := <-ch
		if !ok {
			return n, fmt.Errorf("%w: watch stopped", ErrWatchClosed)
		}
		if b.Err != nil {
			return n, b.Err
		}
		received := time.Now()
		dirty := ix.update(b.Events, true)
		rev := b.Revision
		n++
	coalesce:
		for {
			select {
			case b, ok := <-ch:
				if !ok {
					return n, fmt.Errorf("%w: watch stopped", ErrWatchClosed)
				}
				if b.Err != nil {
					return n, b.Err // the re-list covers what this batch would have added
				}
				dirty = append(dirty, ix.update(b.Events, true)...)
				rev = b.Revision
				n++
			default:
				break coalesce
			}
		}
		apply(peers.Batch{Revision: rev, Changes: ix.changes(dedup(dirty))})
		// apply has written the map: the change is forwarding now.
		s.metrics.ObserveJoin(time.Since(received))
	}
}

func dedup(keys []string) []string {
	seen := make(map[string]bool, len(keys))
	out := keys[:0]
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

func (s *Store) listIndex(ctx context.Context, cfg *flannel.NetworkConfig) (*index, int64, error) {
	ix := newIndex(cfg, s.prefix, 0)
	rev, err := s.listPages(ctx, func(page []flannel.KV) { ix.update(putEvents(page), false) })
	if err != nil {
		return nil, 0, err
	}
	return ix, rev, nil
}

func putEvents(kvs []flannel.KV) []Event {
	evs := make([]Event, len(kvs))
	for i, kv := range kvs {
		evs[i] = Event{Type: EventPut, KV: kv}
	}
	return evs
}
