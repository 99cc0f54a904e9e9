package reconcile

import (
	"context"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"fmt"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/peers"
	"github.com/weftnet/weft/maps"
)

// ApplyBatch folds a store's changes (see control/peers) into what the
// reconciler knows and writes the subnets they touched. A Full batch, or
// the first batch, re-reads the map into the mirror and reconciles every
// subnet: keys the batch lacks are gone, and entries nobody claims are
// removed. A delta batch costs O(len(Changes)): no map read, no walk over
// the cluster. Subnets whose earlier write failed are retried with it.
//
// If the map cannot be read for a Full batch, nothing changes and the
// error says so; the store's next Full batch (or the audit) tries again.
func (r *Reconciler) ApplyBatch(b peers.Batch) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	full := b.Full || !r.loaded
	if full {
		if err := r.readMirror(); err != nil {
			return Result{}, err
		}
	}
	dirty := make(map[netip.Prefix]struct{}, len(b.Changes)+len(r.pending))
	for sn := range r.pending {
		dirty[sn] = struct{}{}
	}
	if b.Full {
		inBatch := make(map[string]struct{}, len(b.Changes))
		for _, c := range b.Changes {
			inBatch[c.Key] = struct{}{}
		}
		for key := range r.records {
			if _, ok := inBatch[key]; !ok {
				r.change(peers.Change{Key: key}, dirty)
			}
		}
	}
	for _, c := range b.Changes {
		r.change(c, dirty)
	}
	if full {
		for sn := range r.mirror {
			dirty[sn] = struct{}{}
		}
		r.claims.Subnets(func(sn netip.Prefix) { dirty[sn] = struct{}{} })
	}
	r.metrics.InvalidLeases.Store(int64(r.invalid))
	res, err := r.write(start, dirty, r.desired)
	if full {
		r.pruneAllCounters()
	}
	return res, err
}

// Apply makes the map match a full lease set (a store.Snapshot's Leases
// and Invalid): ApplyBatch with one Full batch.
func (r *Reconciler) Apply(leases []flannel.Lease, invalid []*flannel.LeaseError) (Result, error) {
	b := peers.Batch{Full: true, Changes: make([]peers.Change, 0, len(leases)+len(invalid))}
	for i := range leases {
		b.Changes = append(b.Changes, peers.Change{Key: leases[i].Key, Lease: &leases[i]})
	}
	for _, e := range invalid {
		b.Changes = append(b.Changes, peers.Change{Key: e.Key, Invalid: e})
	}
	return r.ApplyBatch(b)
}

// change records one key's new state and marks the subnets it leaves and
// claims as dirty.
func (r *Reconciler) change(c peers.Change, dirty map[netip.Prefix]struct{}) {
	old := r.records[c.Key]
	if old != nil {
		if old.usable {
			for _, t := range old.tunnels {
				r.claims.Remove(t.Subnet, c.Key)
				dirty[t.Subnet] = struct{}{}
			}
		}
		if !old.valid {
			r.invalid--
		}
	}
	rec := &record{}
	if old != nil {
		rec.reported, rec.badRev = old.reported, old.badRev
	}
	switch {
	case c.Deleted():
		delete(r.records, c.Key) // deleted or expired: its entry goes
		return
	case c.Lease != nil:
		rec.valid = true
		if r.isSelfLease(c.Lease) {
			if c.Lease.Subnet != r.self.Subnet || c.Lease.IPv6Subnet != r.self.IPv6Subnet {
				r.log.Debug("skipping a lease of our own PublicIP", zap.String("key", c.Key))
			}
			break
		}
		rec.tunnels = TunnelsFor(*c.Lease, r.cfg, r.self)
		rec.usable = len(rec.tunnels) > 0
	default: // invalid: keep the last known good tunnels, if any
		r.invalid++
		e := c.Invalid
		switch {
		case old != nil && old.usable:
			rec.tunnels, rec.usable = old.tunnels, true
		case old == nil:
			// No memory of this key (weftd restarted): what is pinned for
			// its subnets was programmed from an earlier valid value.
			for _, sn := range []netip.Prefix{e.Subnet, e.IPv6Subnet} {
				if !sn.IsValid() {
					continue
				}
				if t, ok := r.mirror[sn.Masked()]; ok && !r.isSelf(t.Subnet, t.Remote) {
					rec.tunnels = append(rec.tunnels, t)
				}
			}
			rec.usable = len(rec.tunnels) > 0
		}
	}
	r.records[c.Key] = rec
	if rec.usable {
		for _, t := range rec.tunnels {
			r.claims.Add(t.Subnet, c.Key)
			dirty[t.Subnet] = struct{}{}
		}
	}
	if c.Invalid != nil {
		r.report(c.Key, rec, c.Invalid)
	}
}

// desired is the entry a subnet should hold: the valid lease claiming it,
// else the last known good tunnel of the smallest invalid key claiming it.
func (r *Reconciler) desired(sn netip.Prefix) (t maps.Tunnel, ok, fromLKG bool) {
	var validKey, lkgKey string
	r.claims.Each(sn, func(k string) {
		switch {
		case r.records[k].valid:
			validKey = k
		case lkgKey == "" || k < lkgKey:
			lkgKey = k
		}
	})
	if validKey != "" {
		return r.records[validKey].tunnelFor(sn)
	}
	if lkgKey == "" {
		return maps.Tunnel{}, false, false
	}
	t, ok, _ = r.records[lkgKey].tunnelFor(sn)
	return t, ok, ok
}

// tunnelFor is the record's tunnel for sn, one of its families' subnets.
func (rec *record) tunnelFor(sn netip.Prefix) (t maps.Tunnel, ok, fromLKG bool) {
	for _, t := range rec.tunnels {
		if t.Subnet == sn {
			return t, true, false
		}
	}
	return maps.Tunnel{}, false, false
}

// validClaim reports whether a valid lease claims sn.
func (r *Reconciler) validClaim(sn netip.Prefix) bool {
	valid := false
	r.claims.Each(sn, func(k string) { valid = valid || r.records[k].valid })
	return valid
}

// report logs a bad lease once per value: a resync hands over the same bad
// value again until someone fixes it.
func (r *Reconciler) report(key string, rec *record, e *flannel.LeaseError) {
	if rec.reported && rec.badRev == e.ModRevision {
		return
	}
	rec.reported, rec.badRev = true, e.ModRevision
	r.metrics.InvalidLeaseReports.Add(1)
	fields := []zap.Field{zap.String("key", key), zap.Int64("mod_revision", e.ModRevision), zap.Error(e.Err)}
	if rec.usable {
		var kept []string
		for _, t := range rec.tunnels {
			if !r.validClaim(t.Subnet) {
				kept = append(kept, t.String())
			}
		}
		if len(kept) > 0 {
			r.log.Warn("invalid lease; keeping the tunnels from its last valid value", append(fields, zap.Strings("tunnels", kept))...)
			return
		}
	}
	r.log.Warn("invalid lease skipped", fields...)
}

// Audit reads the map back, compares it with the mirror and repairs every
// difference (an entry deleted, added or changed behind weftd's back), and
// retries writes that failed earlier. It returns how many entries had
// drifted; each is counted in metrics.AuditRepairs. Before the first batch
// there is nothing to compare with, and Audit does nothing.
func (r *Reconciler) Audit() (drift int, err error) {
	r.mu.Lock()
	if !r.loaded {
		r.mu.Unlock()
		return 0, nil
	}
	r.written = map[netip.Prefix]struct{}{}
	r.mu.Unlock()
	// Read without the lock: at 50,000 entries the read takes tens of
	// milliseconds, and a join must not wait for it. Subnets written
	// meanwhile are left to the next audit.
	start := time.Now()
	actual, err := r.table.All()

	r.mu.Lock()
	defer r.mu.Unlock()
	written := r.written
	r.written = nil
	if err != nil {
		r.metrics.ReconcileErrors.Add(1)
		return 0, fmt.Errorf("audit tunnels: read map: %w", err)
	}
	kernel := make(map[netip.Prefix]maps.Tunnel, len(actual))
	for _, t := range actual {
		kernel[t.Subnet] = t
	}
	dirty := make(map[netip.Prefix]struct{}, len(r.pending))
	for sn := range r.pending {
		dirty[sn] = struct{}{}
	}
	var drifted []netip.Prefix
	for sn, t := range r.mirror {
		if _, w := written[sn]; w {
			continue
		}
		if k, ok := kernel[sn]; !ok || !k.Equal(t) {
			drifted = append(drifted, sn)
		}
	}
	for sn := range kernel {
		_, w := written[sn]
		if _, ok := r.mirror[sn]; !ok && !w {
			drifted = append(drifted, sn)
		}
	}
	for _, sn := range drifted {
		// The mirror takes the kernel's view, so the write below repairs it.
		if k, ok := kernel[sn]; ok {
			r.setMirror(k)
		} else {
			r.dropMirror(sn)
		}
		dirty[sn] = struct{}{}
	}
	drift = len(drifted)
	r.metrics.AuditRuns.Add(1)
	r.metrics.AuditRepairs.Add(uint64(drift))
	if drift > 0 {
		r.log.Warn("tunnels map drifted from what weftd wrote; repairing", zap.Int("entries", drift))
	}
	_, err = r.write(start, dirty, r.desired)
	return drift, err
}

// RunAudit calls Audit every interval until ctx is done.
func (r *Reconciler) RunAudit(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := r.Audit(); err != nil {
				r.log.Warn("audit of the tunnels map", zap.Error(err))
			}
		}
	}
}
