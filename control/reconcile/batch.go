package reconcile

import (
	"slices"
	"strings"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/peers"
)

// ApplyBatch folds a store's changes (see control/peers) into the set of
// records it has seen and makes the map match that set, with Apply's rules
// for invalid records. This first version rebuilds the full set on every
// batch, O(cluster); a delta path replaces it without changing callers.
func (r *Reconciler) ApplyBatch(b peers.Batch) (Result, error) {
	r.batchMu.Lock()
	defer r.batchMu.Unlock()
	if b.Full || r.records == nil {
		r.records = make(map[string]peers.Change, len(b.Changes))
	}
	for _, c := range b.Changes {
		if c.Deleted() {
			delete(r.records, c.Key)
			continue
		}
		r.records[c.Key] = c
	}
	leases := make([]flannel.Lease, 0, len(r.records))
	var invalid []*flannel.LeaseError
	for _, c := range r.records {
		if c.Invalid != nil {
			invalid = append(invalid, c.Invalid)
		} else {
			leases = append(leases, *c.Lease)
		}
	}
	slices.SortFunc(leases, func(a, b flannel.Lease) int { return strings.Compare(a.Key, b.Key) })
	slices.SortFunc(invalid, func(a, b *flannel.LeaseError) int { return strings.Compare(a.Key, b.Key) })
	return r.Apply(leases, invalid)
}
