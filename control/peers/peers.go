// Package peers is the contract between a store of node leases (etcd in
// flannel's schema, or Kubernetes Node objects as flanneld's kube subnet
// manager keeps them) and the reconcile that programs the tunnels map.
//
// A store reports the set of remote nodes as changes: each Change names one
// record by the store's own key and says what it holds now. A Full batch is
// the whole set (the first list, or a resync after a lost watch): every key
// the consumer knows that is not in it is gone. Validation, including
// overlap between records, is the store's job, so the consumer never looks
// at more than what changed.
package peers

import (
	"context"

	"github.com/weftnet/weft/control/flannel"
)

// Change is the current state of one record.
type Change struct {
	// Key names the record in its store: the etcd key
	// ("/coreos.com/network/subnets/10.244.1.0-24") or "node/<name>".
	Key string
	// Lease is the record as a valid lease; nil when Invalid is set or the
	// record is gone.
	Lease *flannel.Lease
	// Invalid says why a present record is not a usable lease. Its Subnet,
	// when known, lets the consumer keep the last entry it had for it.
	Invalid *flannel.LeaseError
}

// Deleted reports whether the record is gone.
func (c Change) Deleted() bool { return c.Lease == nil && c.Invalid == nil }

// Batch is what one store event (or several coalesced) changed.
type Batch struct {
	// Full means Changes is the whole current set, not a difference.
	Full bool
	// Revision identifies the store state for logs (etcd revision, or 0).
	Revision int64
	Changes  []Change
}

// Source streams batches until ctx is done. The first batch is Full, and so
// is any batch after the source lost track (a compacted or broken watch).
// apply runs on the source's goroutine, one batch at a time.
type Source interface {
	Watch(ctx context.Context, apply func(Batch)) error
}
