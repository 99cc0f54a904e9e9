package main

import (
	"time"

	"go.uber.org/zap"

	"github.com/weftnet/weft/control/peers"
	"github.com/weftnet/weft/control/reconcile"
)

// auditInterval is how often the tunnels map is read back and compared
// with what weftd wrote (reconcile.Audit). At 50,000 entries a read costs
// ~60 ms of one core in batch syscalls, so once a minute is noise.
const auditInterval = time.Minute

// applyBatch hands one store batch to the reconciler, logs what it did and
// marks weftd ready after the first.
func (d *daemon) applyBatch(rec *reconcile.Reconciler, b peers.Batch) {
	start := time.Now()
	res, err := rec.ApplyBatch(b)
	if err != nil {
		d.log.Warn("reconcile tunnels", zap.Error(err))
	}
	if res.Added+res.Updated+res.Removed > 0 || !d.ready.Load() || b.Full {
		d.log.Info("tunnels reconciled", zap.Int64("revision", b.Revision), zap.Bool("full", b.Full),
			zap.Int("changes", len(b.Changes)), zap.Int("added", res.Added), zap.Int("updated", res.Updated),
			zap.Int("removed", res.Removed), zap.Int("unchanged", res.Unchanged),
			zap.Int64("invalid_leases", d.metrics.InvalidLeases.Load()), zap.Duration("took", time.Since(start)))
	}
	if b.Full {
		releaseMemory()
	}
	d.lastSnapshot.Store(time.Now().UnixNano())
	if !d.ready.Swap(true) {
		d.log.Info("ready")
	}
}
