// Package reconcile keeps the BPF tunnels map equal to the set of other
// nodes' leases.
//
// Design and history. flannel's vxlan backend (v0.9+) programs three kernel
// objects per remote host (a route via <subnet>.0 onlink, a static neighbour
// and an FDB entry) from add/remove events, replaying a full snapshot as
// events when its etcd watch falls behind. Weft programs one tunnels-map entry
// per remote host. The first Weft reconcile took the full, validated lease
// set after every change and diffed it against the whole map read back from
// the kernel: correct, but O(cluster) per join (87 ms per join at 10,000
// nodes, issue 11). It is now delta-driven:
//
//   - a store (control/store for etcd, a Kubernetes one) validates records,
//     resolves overlaps and hands over only what changed (control/peers);
//   - the reconciler keeps a mirror of the tunnels map in memory, filled by
//     one read at start and on every Full batch (a resync), and per batch
//     recomputes and writes only the subnets the changes touched: O(change);
//   - a write that fails leaves the mirror as the kernel has it and the
//     subnet pending; the next batch or audit retries it;
//   - an audit (Audit, RunAudit) reads the map back now and then, compares it
//     with the mirror and repairs drift (an entry deleted, added or changed
//     behind weftd's back), counted in metrics.AuditRepairs.
//
// What stayed: an entry equal to the desired one is left alone, so a
// restarted weftd adopts what is pinned without a single write and packets
// keep flowing through the restart; the map is never flushed and rebuilt;
// one failing entry does not stop the others; bulk changes (a cold start)
// go to the kernel in batch syscalls where it supports them for the map.
//
// Families (issue 14). A store key names one node; a dual-stack node's
// lease yields two entries, its IPv4 and its IPv6 pod subnet, each claimed
// by that key (TunnelsFor; the remote, VtepMAC and DirectRouting rules of
// the IPv6 entry are in TunnelForIPv6). Everything below is per subnet, so
// the delta path, the last known good values, the audit and the pruning of
// per-peer counters (keyed by remote: a peer may have an IPv4 and an IPv6
// one) treat both families alike.
//
// Bad leases. A lease that fails validation (flannel.LeaseError) is skipped
// and reported: logged once per bad value with its key, and counted in
// metrics. It never removes anything else. If the key held a valid lease
// before, the entry built from that last known good value is kept, because
// the node behind it is most likely still alive (its etcd lease is renewed)
// and only its record is damaged: deleting the entry would black-hole that
// node's pods over a data problem. The entry goes when the key is deleted or
// expires, or is replaced when the key becomes valid again; a valid lease
// for the same subnet always wins over a last known good one. After a
// restart weftd has no memory of earlier values, so the entry pinned in the
// map for that key's subnet serves as the last known good value.
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
	"github.com/weftnet/weft/control/subnetkeys"
	"github.com/weftnet/weft/maps"
)

// TunnelTable is the tunnels map; *maps.TunnelMap satisfies it.
type TunnelTable interface {
	All() ([]maps.Tunnel, error)
	Put(maps.Tunnel) error
	Delete(netip.Prefix) error
}

// BatchTable is a TunnelTable that writes many entries per call
// (*maps.TunnelMap). Bulk changes use it; the reconciler works without.
type BatchTable interface {
	PutBatch([]maps.Tunnel) (failed []netip.Prefix, err error)
	DeleteBatch([]netip.Prefix) (failed []netip.Prefix, err error)
}

// PeerCounters is the per-peer traffic counters map (*maps.PeerStatsMap):
// the data plane adds an entry per remote underlay address it talks to,
// and only the control plane knows when that peer has gone.
type PeerCounters interface {
	All() ([]maps.PeerStats, error)
	Delete(netip.Addr) error
}

// batchMin is the number of writes from which a BatchTable's batch calls
// are used; below it the per-entry calls are as fast and name each entry.
const batchMin = 16

// logEach is the number of writes up to which each is logged at Info; a
// bulk change (a cold start at 50,000 nodes) logs one summary instead.
const logEach = 64

// Self is what the reconciler needs to know about this node. Each family's
// fields are zero when the node has none of that family.
type Self struct {
	Subnet     netip.Prefix // our own IPv4 lease: never a tunnel
	IPv6Subnet netip.Prefix // our own IPv6 lease: never a tunnel
	PublicIP   netip.Addr   // our IPv4 underlay address: never a tunnel destination
	PublicIPv6 netip.Addr   // our IPv6 underlay address: never a tunnel destination
	// Underlay is the prefix of our underlay interface's IPv4 address. With
	// DirectRouting on, a peer whose PublicIP is inside it shares our L2
	// segment and is reached without encapsulation, as in flannel (which
	// asks the kernel whether the route to the peer has no gateway).
	Underlay netip.Prefix
	// Underlay6 is the same for the IPv6 underlay address: a peer's IPv6
	// pod subnet is routed directly when its PublicIPv6 is inside it.
	Underlay6 netip.Prefix
}

// Result counts what one reconciliation did. Unchanged counts the entries
// looked at and found right: all of them after a Full batch, the touched
// ones after a delta.
type Result struct {
	Added, Updated, Removed, Unchanged int
}

// record is what the reconciler remembers of one store key. A key names
// one node, which has a tunnel per family it leases (a dual-stack node
// two: its IPv4 and its IPv6 pod subnet).
type record struct {
	valid    bool          // the key's current value is a valid lease
	tunnels  []maps.Tunnel // from the current valid value, or the last valid one
	usable   bool          // tunnels are set and do not point at this node
	reported bool          // a bad value was reported, and its ModRevision is badRev
	badRev   int64
}

// Reconciler owns the tunnels map. Its methods are safe for concurrent
// use; one store loop calling ApplyBatch and one audit loop are the
// intended callers.
type Reconciler struct {
	table   TunnelTable
	cfg     *flannel.NetworkConfig
	self    Self
	log     *zap.Logger
	metrics *metrics.Metrics

	mu      sync.Mutex
	loaded  bool                         // mirror was read from the kernel
	mirror  map[netip.Prefix]maps.Tunnel // the map as the kernel holds it, as far as we know
	records map[string]*record           // store key -> what it says
	claims  *subnetkeys.Map              // subnet -> keys whose usable tunnel is for it
	pending map[netip.Prefix]struct{}    // subnets whose last write failed
	lkg     map[netip.Prefix]struct{}    // subnets programmed from a last known good value
	invalid int                          // records whose current value is invalid
	remotes map[netip.Addr]int           // mirror entries per remote underlay address
	peers   PeerCounters                 // nil: counters are not pruned
	neigh   DirectNeighbours             // nil: no neighbour entries are kept
	directs map[netip.Addr]int           // mirror entries per remote whose Mode is Direct
	kept    map[netip.Addr]struct{}      // remotes neigh holds an entry for
	unsure  map[netip.Addr]struct{}      // direct remotes found in the map as read: an earlier weftd may hold an entry
	nDirty  map[netip.Addr]struct{}      // remotes whose direct count changed since the last syncNeighbours
	written map[netip.Prefix]struct{}    // while an audit reads the map: subnets written meanwhile
}

// PruneCounters makes the reconciler delete a peer's traffic counters when
// the last tunnel to its underlay address is removed, and on every Full
// batch those of addresses no tunnel points at (peers that left while
// weftd was down).
func (r *Reconciler) PruneCounters(p PeerCounters) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.peers = p
}

// DirectNeighbours keeps a neighbour entry the kernel resolves by itself
// (loader.Neighbours) for each DirectRouting peer's underlay address. The
// data plane accepts an unencapsulated packet from a direct peer only when
// its source MAC is the one the kernel resolved for that peer, and an IPv6
// peer's own Neighbour Solicitations (sent from its link-local address)
// never teach us its global one: without the entry a new peer's first
// packets are dropped until we happen to send to it.
type DirectNeighbours interface {
	Keep(remote netip.Addr) error   // idempotent
	Forget(remote netip.Addr) error // idempotent: no entry is not an error
}

// KeepNeighbours makes the reconciler call n.Keep for the remote of every
// Mode Direct tunnel it writes (or finds in the map on its first batch) and
// n.Forget when the last direct tunnel to that remote goes. A failed Keep
// or Forget is logged and retried on the next write.
func (r *Reconciler) KeepNeighbours(n DirectNeighbours) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.neigh = n
	for a := range r.directs {
		r.nDirty[a] = struct{}{}
	}
	for a := range r.kept {
		r.nDirty[a] = struct{}{}
	}
}

// syncNeighbours tells neigh about the remotes whose direct tunnels came or
// went since the last call: O(changed remotes), not O(cluster).
func (r *Reconciler) syncNeighbours() {
	if r.neigh == nil {
		return
	}
	for a := range r.nDirty {
		_, have := r.kept[a]
		_, unsure := r.unsure[a]
		want := r.directs[a] > 0
		switch {
		case want && (!have || unsure):
			if err := r.neigh.Keep(a); err != nil {
				r.log.Warn("keep a neighbour entry for a DirectRouting peer", zap.Stringer("remote", a), zap.Error(err))
				continue
			}
			r.kept[a] = struct{}{}
		case !want && (have || unsure):
			if err := r.neigh.Forget(a); err != nil {
				r.log.Warn("forget the neighbour entry of a DirectRouting peer", zap.Stringer("remote", a), zap.Error(err))
				continue
			}
			delete(r.kept, a)
		}
		delete(r.unsure, a)
		delete(r.nDirty, a)
	}
}

// setMirror and dropMirror keep the mirror and the per-remote counts
// together; a remote whose count drops to zero is returned as gone.
func (r *Reconciler) setMirror(t maps.Tunnel) (gone netip.Addr) {
	if _, ok := r.mirror[t.Subnet]; ok {
		gone = r.dropMirror(t.Subnet)
	}
	r.mirror[t.Subnet] = t
	r.remotes[t.Remote]++
	if t.Mode == maps.ModeDirect {
		r.directs[t.Remote]++
		r.nDirty[t.Remote] = struct{}{}
	}
	if gone == t.Remote {
		gone = netip.Addr{}
	}
	return gone
}

func (r *Reconciler) dropMirror(sn netip.Prefix) (gone netip.Addr) {
	old, ok := r.mirror[sn]
	if !ok {
		return netip.Addr{}
	}
	delete(r.mirror, sn)
	if old.Mode == maps.ModeDirect {
		if r.directs[old.Remote]--; r.directs[old.Remote] <= 0 {
			delete(r.directs, old.Remote)
		}
		r.nDirty[old.Remote] = struct{}{}
	}
	if r.remotes[old.Remote]--; r.remotes[old.Remote] <= 0 {
		delete(r.remotes, old.Remote)
		return old.Remote
	}
	return netip.Addr{}
}

// pruneCounters deletes the counters of peers no tunnel points at any more.
func (r *Reconciler) pruneCounters(gone []netip.Addr) {
	if r.peers == nil {
		return
	}
	for _, a := range gone {
		if _, back := r.remotes[a]; back || !a.IsValid() {
			continue
		}
		if err := r.peers.Delete(a); err != nil {
			r.log.Warn("prune counters of a departed peer", zap.Stringer("remote", a), zap.Error(err))
			continue
		}
		r.metrics.PrunedPeerCounters.Add(1)
	}
}

// pruneAllCounters deletes every peer entry whose address has no tunnel.
func (r *Reconciler) pruneAllCounters() {
	if r.peers == nil {
		return
	}
	all, err := r.peers.All()
	if err != nil {
		r.log.Warn("read peer counters", zap.Error(err))
		return
	}
	var gone []netip.Addr
	for _, ps := range all {
		if _, ok := r.remotes[ps.Remote]; !ok {
			gone = append(gone, ps.Remote)
		}
	}
	r.pruneCounters(gone)
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
		mirror: map[netip.Prefix]maps.Tunnel{}, remotes: map[netip.Addr]int{}, records: map[string]*record{},
		directs: map[netip.Addr]int{}, kept: map[netip.Addr]struct{}{}, nDirty: map[netip.Addr]struct{}{}, unsure: map[netip.Addr]struct{}{},
		claims: subnetkeys.New(0), pending: map[netip.Prefix]struct{}{}, lkg: map[netip.Prefix]struct{}{}}
}

// TunnelFor is the map entry for a remote node's IPv4 lease. The VNI is
// the network's, as flannel's kernel device sends every packet with its
// own VNI whatever the lease says.
func TunnelFor(l flannel.Lease, cfg *flannel.NetworkConfig, self Self) maps.Tunnel {
	mode := maps.ModeVXLAN
	if cfg.Backend.DirectRouting && self.Underlay.IsValid() && self.Underlay.Contains(l.PublicIP()) {
		mode = maps.ModeDirect
	}
	return maps.Tunnel{Subnet: l.Subnet, Remote: l.PublicIP(), VtepMAC: l.VXLAN.VtepMAC, VNI: cfg.Backend.VNI, Mode: mode}
}

// TunnelForIPv6 is the map entry for a remote node's IPv6 lease
// (ipv6-contract.md): remote is the peer's PublicIPv6 (outer IPv6), else
// its IPv4 PublicIP (v6-in-v4: outer IPv4); the VtepMAC is BackendV6Data's,
// which ParseLease already fell back to BackendData's for a v6-in-v4
// lease. DirectRouting follows flannel per family: direct only when the
// peer's IPv6 underlay address shares our IPv6 underlay prefix; a v6-in-v4
// peer is always encapsulated, because an IPv6 packet cannot be routed to
// an IPv4 next hop.
func TunnelForIPv6(l flannel.Lease, cfg *flannel.NetworkConfig, self Self) maps.Tunnel {
	remote, mode := l.PublicIPv6(), maps.ModeVXLAN
	if !remote.IsValid() {
		remote = l.PublicIP()
	} else if cfg.Backend.DirectRouting && self.Underlay6.IsValid() && self.Underlay6.Contains(remote) {
		mode = maps.ModeDirect
	}
	return maps.Tunnel{Subnet: l.IPv6Subnet, Remote: remote, VtepMAC: l.VXLANv6.VtepMAC, VNI: cfg.Backend.VNI, Mode: mode}
}

// TunnelsFor is every map entry for a remote node's lease: one per family
// the lease carries, IPv4 first.
func TunnelsFor(l flannel.Lease, cfg *flannel.NetworkConfig, self Self) []maps.Tunnel {
	n := 0
	if l.HasIPv4() {
		n++
	}
	if l.HasIPv6() {
		n++
	}
	// Exactly sized: the reconciler keeps one such slice per node, and
	// most clusters are single-family.
	out := make([]maps.Tunnel, 0, n)
	if l.HasIPv4() {
		out = append(out, TunnelFor(l, cfg, self))
	}
	if l.HasIPv6() {
		out = append(out, TunnelForIPv6(l, cfg, self))
	}
	return out
}

// isSelf reports whether a subnet, or a node with these underlay
// addresses, is this node. A lease of our PublicIP (or PublicIPv6) under
// another subnet is a stale one of ours (flannel would have reused it had
// it been usable); a tunnel to it would loop packets back to this node.
func (r *Reconciler) isSelf(sn netip.Prefix, remotes ...netip.Addr) bool {
	if (r.self.Subnet.IsValid() && sn.Overlaps(r.self.Subnet)) || (r.self.IPv6Subnet.IsValid() && sn.Overlaps(r.self.IPv6Subnet)) {
		return true
	}
	for _, a := range remotes {
		if a.IsValid() && (a == r.self.PublicIP || a == r.self.PublicIPv6) {
			return true
		}
	}
	return false
}

// isSelfLease is isSelf for every subnet and underlay address of l.
func (r *Reconciler) isSelfLease(l *flannel.Lease) bool {
	return r.isSelf(l.Subnet, l.PublicIP(), l.PublicIPv6()) || r.isSelf(l.IPv6Subnet)
}

// readMirror replaces the mirror with the kernel's map. On error nothing
// changes.
func (r *Reconciler) readMirror() error {
	actual, err := r.table.All()
	if err != nil {
		r.metrics.ReconcileErrors.Add(1)
		return fmt.Errorf("reconcile tunnels: read map: %w", err)
	}
	// Remotes that were direct before the re-read are re-checked too.
	for a := range r.directs {
		r.nDirty[a] = struct{}{}
	}
	first := !r.loaded
	r.mirror, r.remotes, r.loaded = make(map[netip.Prefix]maps.Tunnel, len(actual)), make(map[netip.Addr]int), true
	r.directs = make(map[netip.Addr]int)
	for _, t := range actual {
		r.setMirror(t)
		if t.Mode == maps.ModeDirect && first {
			// Pinned by an earlier weftd, which kept an entry for it: if the
			// peer left while we were down, its entry is forgotten below.
			r.unsure[t.Remote] = struct{}{}
		}
	}
	return nil
}

// Reconcile makes the map hold exactly desired, whatever the store said:
// adds what is missing, overwrites what differs, deletes the rest, leaves
// equal entries untouched. It reads the map back first. Every entry is
// tried; the error joins the failures, each naming its subnet. If the map
// cannot be read nothing is changed.
func (r *Reconciler) Reconcile(desired []maps.Tunnel) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	if err := r.readMirror(); err != nil {
		return Result{}, err
	}
	want := make(map[netip.Prefix]maps.Tunnel, len(desired))
	var errs []error
	for _, t := range desired {
		if _, twice := want[t.Subnet]; twice {
			errs = append(errs, fmt.Errorf("tunnel %s: listed twice in the desired set", t.Subnet))
			continue
		}
		want[t.Subnet] = t
	}
	dirty := make(map[netip.Prefix]struct{}, len(want)+len(r.mirror))
	for sn := range want {
		dirty[sn] = struct{}{}
	}
	for sn := range r.mirror {
		dirty[sn] = struct{}{}
	}
	res, err := r.write(start, dirty, func(sn netip.Prefix) (maps.Tunnel, bool, bool) {
		t, ok := want[sn]
		return t, ok, false
	})
	r.metrics.ReconcileErrors.Add(uint64(len(errs)))
	return res, errors.Join(append(errs, err)...)
}

// write makes the kernel hold desired(sn) for every dirty subnet (nothing
// when ok is false), comparing with the mirror first, and keeps the mirror,
// pending writes and metrics up to date.
func (r *Reconciler) write(start time.Time, dirty map[netip.Prefix]struct{},
	desired func(netip.Prefix) (t maps.Tunnel, ok, fromLKG bool)) (Result, error) {
	var (
		res  Result
		puts []maps.Tunnel
		dels []netip.Prefix
	)
	for sn := range dirty {
		want, ok, fromLKG := desired(sn)
		if ok && fromLKG {
			r.lkg[sn] = struct{}{}
		} else {
			delete(r.lkg, sn)
		}
		have, exists := r.mirror[sn]
		switch {
		case ok && exists && have.Equal(want):
			res.Unchanged++
			delete(r.pending, sn)
		case ok:
			puts = append(puts, want)
		case exists:
			dels = append(dels, sn)
		default:
			delete(r.pending, sn)
		}
	}

	failed := map[netip.Prefix]bool{}
	var errs []error
	wstart := time.Now()
	bt, batched := r.table.(BatchTable)
	batched = batched && len(puts)+len(dels) >= batchMin
	if batched {
		f, err := bt.PutBatch(puts)
		for _, sn := range f {
			failed[sn] = true
		}
		if err != nil {
			errs = append(errs, err)
		}
		f, err = bt.DeleteBatch(dels)
		for _, sn := range f {
			failed[sn] = true
		}
		if err != nil {
			errs = append(errs, err)
		}
	} else {
		for _, t := range puts {
			if err := r.table.Put(t); err != nil {
				failed[t.Subnet] = true
				errs = append(errs, fmt.Errorf("put tunnel %s: %w", t.Subnet, err))
			}
		}
		for _, sn := range dels {
			if err := r.table.Delete(sn); err != nil && !errors.Is(err, maps.ErrNotFound) {
				failed[sn] = true
				errs = append(errs, fmt.Errorf("delete tunnel %s: %w", sn, err))
			}
		}
	}

	wrote := time.Since(wstart)
	if r.written != nil {
		for _, t := range puts {
			r.written[t.Subnet] = struct{}{}
		}
		for _, sn := range dels {
			r.written[sn] = struct{}{}
		}
	}
	each := len(puts)+len(dels) <= logEach
	var gone []netip.Addr
	for _, t := range puts {
		if failed[t.Subnet] {
			r.pending[t.Subnet] = struct{}{}
			continue
		}
		delete(r.pending, t.Subnet)
		old, exists := r.mirror[t.Subnet]
		gone = append(gone, r.setMirror(t))
		switch {
		case exists:
			res.Updated++
			if each {
				r.log.Info("tunnel updated", zap.Stringer("from", old), zap.Stringer("to", t))
			}
		default:
			res.Added++
			if each {
				r.log.Info("tunnel added", zap.Stringer("tunnel", t))
			}
		}
	}
	for _, sn := range dels {
		if failed[sn] {
			r.pending[sn] = struct{}{}
			continue
		}
		delete(r.pending, sn)
		old := r.mirror[sn]
		gone = append(gone, r.dropMirror(sn))
		res.Removed++
		if each {
			r.log.Info("tunnel removed", zap.Stringer("tunnel", old))
		}
	}
	if !each {
		r.log.Info("tunnels written in bulk", zap.Int("added", res.Added), zap.Int("updated", res.Updated),
			zap.Int("removed", res.Removed), zap.Bool("batch_syscalls", batched), zap.Int("failed", len(failed)),
			zap.Duration("write_took", wrote))
	}
	r.pruneCounters(gone)
	r.syncNeighbours()
	r.metrics.LastKnownGood.Store(int64(len(r.lkg)))
	r.metrics.ObserveReconcile(time.Since(start), len(r.mirror), len(failed))
	if len(errs) > 0 {
		return res, fmt.Errorf("reconcile tunnels: %d entries failed: %w", len(failed), errors.Join(errs...))
	}
	return res, nil
}
