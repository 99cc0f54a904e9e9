package store

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftnet/weft/control/flannel"
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

// Sync keeps apply fed with the full set of leases until ctx is done: a
// list, then a watch from the next revision, one Snapshot after each
// change. When the watch ends for any reason it re-lists (with backoff if
// etcd is unreachable) and watches again, so apply always receives a
// complete, current set and never has to reason about missed events.
//
// Watch responses that arrive while apply runs are folded into the next
// snapshot, so a burst of joins costs a few applies, not one each.
// apply runs on Sync's goroutine. Sync returns ctx.Err().
func (s *Store) Sync(ctx context.Context, cfg *flannel.NetworkConfig, apply func(Snapshot)) error {
	var b backoff
	for {
		st, rev, err := s.listState(ctx, cfg)
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
		apply(st.snapshot(rev))
		if s.afterList != nil {
			s.afterList()
		}
		events, err := s.follow(ctx, cfg, st, rev+1, apply)
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

// follow applies watch batches to st until the watch fails, returning how
// many batches it applied and why it stopped.
func (s *Store) follow(ctx context.Context, cfg *flannel.NetworkConfig, st *syncState, from int64, apply func(Snapshot)) (int, error) {
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
		st.update(cfg, s.prefix, b.Events)
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
				st.update(cfg, s.prefix, b.Events)
				rev = b.Revision
				n++
			default:
				break coalesce
			}
		}
		apply(st.snapshot(rev))
	}
}

// syncState is the set of leases as last seen, each key checked on its own
// once per value (ParseLease is the costly part with thousands of leases);
// overlaps are checked over the whole set for every snapshot.
type syncState struct {
	byKey map[string]checked
}

type checked struct {
	lease flannel.Lease
	err   *flannel.LeaseError // nil when lease is valid on its own
}

func (s *Store) listState(ctx context.Context, cfg *flannel.NetworkConfig) (*syncState, int64, error) {
	kvs, rev, err := s.listRaw(ctx)
	if err != nil {
		return nil, 0, err
	}
	st := &syncState{byKey: make(map[string]checked, len(kvs))}
	st.update(cfg, s.prefix, putEvents(kvs))
	return st, rev, nil
}

func putEvents(kvs []flannel.KV) []Event {
	evs := make([]Event, len(kvs))
	for i, kv := range kvs {
		evs[i] = Event{Type: EventPut, KV: kv}
	}
	return evs
}

func (st *syncState) update(cfg *flannel.NetworkConfig, prefix string, evs []Event) {
	for _, e := range evs {
		if e.Type == EventDelete {
			delete(st.byKey, e.KV.Key)
			continue
		}
		l, err := cfg.ParseLease(prefix, e.KV)
		if err != nil {
			st.byKey[e.KV.Key] = checked{err: err.(*flannel.LeaseError)}
			continue
		}
		st.byKey[e.KV.Key] = checked{lease: l}
	}
}

func (st *syncState) snapshot(rev int64) Snapshot {
	var (
		valid   = make([]flannel.Lease, 0, len(st.byKey))
		invalid []*flannel.LeaseError
	)
	for _, c := range st.byKey {
		if c.err != nil {
			invalid = append(invalid, c.err)
		} else {
			valid = append(valid, c.lease)
		}
	}
	valid, invalid = flannel.CheckOverlaps(valid, invalid) // sorts both by key
	return Snapshot{Revision: rev, Leases: valid, Invalid: invalid}
}
