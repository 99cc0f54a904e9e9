package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/cilium/ebpf"

	"github.com/weftnet/weft/bpf"
)

// Batch operations. Reading the tunnels map one entry at a time costs two
// syscalls per entry (get-next-key, lookup): 100,000 for 50,000 nodes, the
// largest part of a cold start at that size. BPF_MAP_*_BATCH moves many
// entries per syscall; the kernel has had them for LPM tries since the
// generic batch ops (5.6+), but a kernel or map type without them answers
// EINVAL/ENOTSUPP, which cilium/ebpf reports as ErrNotSupported. Each
// operation then falls back to per-entry calls, once noticed for the life
// of the TunnelMap, so callers never care which path ran.

// batchChunk bounds one batch syscall's buffers (~100 KB of keys and values).
const batchChunk = 2048

// batchState remembers whether the kernel refused a batch op on this map.
type batchState struct{ unsupported atomic.Bool }

func (b *batchState) usable() bool { return !b.unsupported.Load() }

// refuse records ErrNotSupported and reports whether err was that.
func (b *batchState) refuse(err error) bool {
	if errors.Is(err, ebpf.ErrNotSupported) {
		b.unsupported.Store(true)
		return true
	}
	return false
}

// Batched reports whether the last batch attempt on this map used batch
// syscalls (true until the kernel refuses one).
func (tm *TunnelMap) Batched() bool { return tm.batch.usable() }

func tunnelKV(t Tunnel) (bpf.WeftTunnelKey, bpf.WeftTunnelInfo, error) {
	if err := t.Validate(); err != nil {
		return bpf.WeftTunnelKey{}, bpf.WeftTunnelInfo{}, err
	}
	key, err := tunnelKey(t.Subnet)
	if err != nil {
		return key, bpf.WeftTunnelInfo{}, err
	}
	remote, _ := addrTo16(t.Remote)
	mac, _ := macTo6(t.VtepMAC)
	return key, bpf.WeftTunnelInfo{Remote: remote, VtepMac: mac, Mode: uint8(t.Mode), Vni: t.VNI}, nil
}

// PutBatch adds or replaces every tunnel. Invalid tunnels are skipped and
// reported; the rest are written in batches. failed lists the subnets not
// written; the error joins one error for each, naming its subnet.
func (tm *TunnelMap) PutBatch(ts []Tunnel) (failed []netip.Prefix, err error) {
	var (
		errs []error
		keys = make([]bpf.WeftTunnelKey, 0, min(len(ts), batchChunk))
		vals = make([]bpf.WeftTunnelInfo, 0, min(len(ts), batchChunk))
		todo = make([]Tunnel, 0, min(len(ts), batchChunk))
	)
	flush := func() {
		if len(keys) == 0 {
			return
		}
		n := 0
		if tm.batch.usable() {
			var err error
			update := func() (int, error) { return tm.m.BatchUpdate(keys, vals, nil) }
			if tm.slots != nil {
				n, err = tm.slots.putBatch(keys, vals, update)
			} else {
				n, err = update()
			}
			if err == nil {
				keys, vals, todo = keys[:0], vals[:0], todo[:0]
				return
			}
			tm.batch.refuse(err)
			// Partial or refused: the rest one by one, to name the failures.
		}
		for _, t := range todo[n:] {
			if err := tm.Put(t); err != nil {
				errs, failed = append(errs, err), append(failed, t.Subnet)
			}
		}
		keys, vals, todo = keys[:0], vals[:0], todo[:0]
	}
	for _, t := range ts {
		k, v, err := tunnelKV(t)
		if err != nil {
			errs, failed = append(errs, fmt.Errorf("put tunnel %s: %w", t.Subnet, err)), append(failed, t.Subnet)
			continue
		}
		keys, vals, todo = append(keys, k), append(vals, v), append(todo, t)
		if len(keys) == batchChunk {
			flush()
		}
	}
	flush()
	return failed, errors.Join(errs...)
}

// DeleteBatch removes the entries for subnets. Subnets that have no entry
// are not errors (the goal, no entry, holds). failed lists the subnets
// whose entry could not be deleted; the error joins one error for each.
func (tm *TunnelMap) DeleteBatch(subnets []netip.Prefix) (failed []netip.Prefix, err error) {
	var errs []error
	keys := make([]bpf.WeftTunnelKey, 0, min(len(subnets), batchChunk))
	todo := make([]netip.Prefix, 0, min(len(subnets), batchChunk))
	flush := func() {
		if len(keys) == 0 {
			return
		}
		n := 0
		if tm.batch.usable() {
			var err error
			del := func() (int, error) { return tm.m.BatchDelete(keys, nil) }
			if tm.slots != nil {
				n, err = tm.slots.del(keys, del)
			} else {
				n, err = del()
			}
			if err == nil {
				keys, todo = keys[:0], todo[:0]
				return
			}
			tm.batch.refuse(err)
			// A missing key stops a batch delete (ENOENT); finish one by one.
		}
		for _, p := range todo[n:] {
			if err := tm.Delete(p); err != nil && !errors.Is(err, ErrNotFound) {
				errs, failed = append(errs, err), append(failed, p)
			}
		}
		keys, todo = keys[:0], todo[:0]
	}
	for _, p := range subnets {
		k, err := tunnelKey(p)
		if err != nil {
			errs, failed = append(errs, fmt.Errorf("delete tunnel %s: %w", p, err)), append(failed, p)
			continue
		}
		keys, todo = append(keys, k), append(todo, p)
		if len(keys) == batchChunk {
			flush()
		}
	}
	flush()
	return failed, errors.Join(errs...)
}

// allBatch reads every entry with BPF_MAP_LOOKUP_BATCH. ok is false when
// the kernel refused the batch op and nothing was read.
func (tm *TunnelMap) allBatch() (out []Tunnel, ok bool, err error) {
	ok, err = tm.walkBatch(func(k bpf.WeftTunnelKey, v bpf.WeftTunnelInfo) error {
		t, err := tunnelFromBPF(k, v)
		if err != nil {
			return err
		}
		out = append(out, t)
		return nil
	})
	if !ok || err != nil {
		return nil, ok, err
	}
	return out, true, nil
}

// walk calls fn with every raw entry, in batches where the kernel allows.
func (tm *TunnelMap) walk(fn func(bpf.WeftTunnelKey, bpf.WeftTunnelInfo) error) error {
	if tm.batch.usable() {
		if ok, err := tm.walkBatch(fn); ok {
			return err
		}
	}
	var (
		key bpf.WeftTunnelKey
		val bpf.WeftTunnelInfo
	)
	iter := tm.m.Iterate()
	for iter.Next(&key, &val) {
		if err := fn(key, val); err != nil {
			return fmt.Errorf("read tunnels: %w", err)
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("read tunnels: %w", err)
	}
	return nil
}

// walkBatch is walk with BPF_MAP_LOOKUP_BATCH; ok is false when the kernel
// refused the batch op and fn saw nothing.
func (tm *TunnelMap) walkBatch(fn func(bpf.WeftTunnelKey, bpf.WeftTunnelInfo) error) (ok bool, err error) {
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]bpf.WeftTunnelKey, batchChunk)
		vals   = make([]bpf.WeftTunnelInfo, batchChunk)
		seen   int
	)
	for {
		n, err := tm.m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			if ferr := fn(keys[i], vals[i]); ferr != nil {
				return true, fmt.Errorf("read tunnels: %w", ferr)
			}
		}
		seen += n
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return true, nil // the end of the map
		case err != nil && seen == 0 && tm.batch.refuse(err):
			return false, nil
		case err != nil:
			return true, fmt.Errorf("read tunnels: %w", err)
		}
	}
}
