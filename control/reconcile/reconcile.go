// Package reconcile keeps the BPF tunnels map equal to the set of other
// nodes' leases.
//
// Design and history. flannel's vxlan backend (v0.9+) programs three kernel
// objects per remote host (a route via <subnet>.0 onlink, a static neighbour
// and an FDB entry) from add/remove events, replaying a full snapshot as
// events when its etcd watch falls behind. Weft programs one tunnels-map entry
// per remote host and does not consume events at all: control/store hands
// over the full, validated lease set after every change or resync, and
// Reconcile diffs it against what the map holds:
//
//   - missing entries are added, changed ones overwritten in place (an LPM
//     update is atomic for packets), stale ones deleted;
//   - an entry already equal to the desired one is left alone, so a restarted
//     weftd adopts what is pinned without a single write, and packets keep
//     flowing through the restart;
//   - the map is never flushed and rebuilt, and one failing entry does not
//     stop the others.
//
// Bad leases. A lease that fails validation (flannel.LeaseError) is skipped
// and reported: logged once per bad value with its key, and counted in
// metrics. It never removes anything else. If the key held a valid lease
// before, the entry built from that last known good value is kept, because
// the node behind it is most likely still alive (its etcd lease is renewed)
// and only its record is damaged: deleting the entry would black-hole that
// node's pods over a data problem. The entry goes when the key is deleted or
// expires, or is replaced when the key becomes valid again. After a restart
// weftd has no memory of earlier values, so the entry pinned in the map for
// that key's subnet serves as the last known good value.
package reconcile

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/metrics"
	"github.com/weftnet/weft/control/peers"
	"github.com/weftnet/weft/maps"
)

// TunnelTable is the tunnels map; *maps.TunnelMap satisfies it.
type TunnelTable interface {
	All() ([]maps.Tunnel, error)
	Put(maps.Tunnel) error
	Delete(netip.Prefix) error
}

// Self is what the reconciler needs to know about this node.
type Self struct {
	Subnet   netip.Prefix // our own lease: never a tunnel
	PublicIP netip.Addr   // our underlay address: never a tunnel destination
	// Underlay is the prefix of our underlay interface's address. With
	// DirectRouting on, a peer whose PublicIP is inside it shares our L2
	// segment and is reached without encapsulation, as in flannel (which
	// asks the kernel whether the route to the peer has no gateway).
	Underlay netip.Prefix
}

// Result counts what one reconciliation did.
type Result struct {
	Added, Updated, Removed, Unchanged int
}

// Reconciler owns the tunnels map. Its methods are safe for concurrent
// use, but one Sync loop calling Apply is the intended caller.
type Reconciler struct {
	table   TunnelTable
	cfg     *flannel.NetworkConfig
	self    Self
	log     *zap.Logger
	metrics *metrics.Metrics

	mu       sync.Mutex
	lastGood map[string]maps.Tunnel // etcd key -> tunnel from its last valid value
	reported map[string]int64       // etcd key -> ModRevision of the bad value already logged

	batchMu sync.Mutex
	records map[string]peers.Change // ApplyBatch's view of the store
}

// New returns a Reconciler writing to table. log and m may be nil.
func New(table TunnelTable, cfg *flannel.NetworkConfig, self Self, log *zap.Logger, m *metrics.Metrics) *Reconciler {
	if log == nil {
		log = zap.NewNop()
	}
	if m == nil {
		m = new(metrics.Metrics)
	}
	return &Reconciler{table: table, cfg: cfg, self: self, log: log, metrics: m,
		lastGood: map[string]maps.Tunnel{}, reported: map[string]int64{}}
}

// TunnelFor is the map entry for a remote node's lease. The VNI is the
// network's, as flannel's kernel device sends every packet with its own
// VNI whatever the lease says.
func TunnelFor(l flannel.Lease, cfg *flannel.NetworkConfig, self Self) maps.Tunnel {
	mode := maps.ModeVXLAN
	if cfg.Backend.DirectRouting && self.Underlay.IsValid() && self.Underlay.Contains(l.PublicIP()) {
		mode = maps.ModeDirect
	}
	return maps.Tunnel{Subnet: l.Subnet, Remote: l.PublicIP(), VtepMAC: l.VXLAN.VtepMAC, VNI: cfg.Backend.VNI, Mode: mode}
}

// Apply makes the map match a full lease set (a store.Snapshot's Leases
// and Invalid), keeping last known good entries for keys that turned bad.
func (r *Reconciler) Apply(leases []flannel.Lease, invalid []*flannel.LeaseError) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	actual, err := r.table.All()
	if err != nil {
		r.metrics.ReconcileErrors.Add(1)
		return Result{}, fmt.Errorf("reconcile tunnels: read map: %w", err)
	}

	desired := make(map[netip.Prefix]maps.Tunnel, len(leases))
	seen := make(map[string]bool, len(leases)+len(invalid))
	for _, l := range leases {
		seen[l.Key] = true
		if r.isSelf(l.Subnet, l.PublicIP()) {
			if l.Subnet != r.self.Subnet {
				r.log.Debug("skipping a lease of our own PublicIP", zap.String("key", l.Key))
			}
			delete(r.lastGood, l.Key)
			continue
		}
		t := TunnelFor(l, r.cfg, r.self)
		desired[t.Subnet] = t
		r.lastGood[l.Key] = t
	}

	pinned := make(map[netip.Prefix]maps.Tunnel, len(actual))
	for _, t := range actual {
		pinned[t.Subnet] = t
	}
	kept := 0
	for _, e := range invalid {
		seen[e.Key] = true
		t, ok := r.lastGood[e.Key]
		if !ok && e.Subnet.IsValid() {
			// No memory of this key (weftd restarted): what is pinned for
			// its subnet was programmed from an earlier valid value.
			if t, ok = pinned[e.Subnet]; ok {
				r.lastGood[e.Key] = t
			}
		}
		keep := false
		if ok {
			_, claimed := desired[t.Subnet] // a valid lease owns the subnet now
			keep = !claimed && !r.isSelf(t.Subnet, t.Remote)
		}
		if keep {
			desired[t.Subnet] = t
			kept++
		}
		r.report(e, keep, t)
	}
	for key := range r.lastGood {
		if !seen[key] {
			delete(r.lastGood, key) // deleted or expired: its entry goes
		}
	}
	for key := range r.reported {
		if !seen[key] {
			delete(r.reported, key)
		}
	}
	r.metrics.InvalidLeases.Store(int64(len(invalid)))
	r.metrics.LastKnownGood.Store(int64(kept))

	want := make([]maps.Tunnel, 0, len(desired))
	for _, t := range desired {
		want = append(want, t)
	}
	return r.diff(start, actual, want)
}

func (r *Reconciler) isSelf(sn netip.Prefix, publicIP netip.Addr) bool {
	// A lease of our PublicIP under another subnet is a stale one of ours
	// (flannel would have reused it had it been usable); a tunnel to it
	// would loop packets back to this node.
	return (r.self.Subnet.IsValid() && sn.Overlaps(r.self.Subnet)) || (r.self.PublicIP.IsValid() && publicIP == r.self.PublicIP)
}

// report logs a bad lease once per value: the same bad value is seen on
// every snapshot until someone fixes it.
func (r *Reconciler) report(e *flannel.LeaseError, kept bool, t maps.Tunnel) {
	if rev, done := r.reported[e.Key]; done && rev == e.ModRevision {
		return
	}
	r.reported[e.Key] = e.ModRevision
	r.metrics.InvalidLeaseReports.Add(1)
	fields := []zap.Field{zap.String("key", e.Key), zap.Int64("mod_revision", e.ModRevision), zap.Error(e.Err)}
	if kept {
		r.log.Warn("invalid lease; keeping the tunnel from its last valid value", append(fields, zap.Stringer("tunnel", t))...)
		return
	}
	r.log.Warn("invalid lease skipped", fields...)
}

// Reconcile makes the map hold exactly desired: adds what is missing,
// overwrites what differs, deletes the rest, leaves equal entries untouched.
// Every entry is tried; the error joins the failures, each naming its
// subnet. If the map cannot be read nothing is changed.
func (r *Reconciler) Reconcile(desired []maps.Tunnel) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	actual, err := r.table.All()
	if err != nil {
		r.metrics.ReconcileErrors.Add(1)
		return Result{}, fmt.Errorf("reconcile tunnels: read map: %w", err)
	}
	return r.diff(start, actual, desired)
}

func (r *Reconciler) diff(start time.Time, actual, desired []maps.Tunnel) (Result, error) {
	have := make(map[netip.Prefix]maps.Tunnel, len(actual))
	for _, t := range actual {
		have[t.Subnet] = t
	}
	var (
		res  Result
		errs []error
		want = make(map[netip.Prefix]bool, len(desired))
	)
	for _, t := range desired {
		if want[t.Subnet] {
			errs = append(errs, fmt.Errorf("tunnel %s: listed twice in the desired set", t.Subnet))
			continue
		}
		want[t.Subnet] = true
		old, exists := have[t.Subnet]
		if exists && old.Equal(t) {
			res.Unchanged++
			continue
		}
		if err := r.table.Put(t); err != nil {
			errs = append(errs, fmt.Errorf("put tunnel %s: %w", t.Subnet, err))
			continue
		}
		if exists {
			res.Updated++
			r.log.Info("tunnel updated", zap.Stringer("from", old), zap.Stringer("to", t))
		} else {
			res.Added++
			r.log.Info("tunnel added", zap.Stringer("tunnel", t))
		}
	}
	for _, t := range actual {
		if want[t.Subnet] {
			continue
		}
		if err := r.table.Delete(t.Subnet); err != nil && !errors.Is(err, maps.ErrNotFound) {
			errs = append(errs, fmt.Errorf("delete tunnel %s: %w", t.Subnet, err))
			continue
		}
		res.Removed++
		r.log.Info("tunnel removed", zap.Stringer("tunnel", t))
	}
	r.metrics.ObserveReconcile(time.Since(start), len(actual)+res.Added-res.Removed, len(errs))
	if len(errs) > 0 {
		return res, fmt.Errorf("reconcile tunnels: %d entries failed: %w", len(errs), errors.Join(errs...))
	}
	return res, nil
}
