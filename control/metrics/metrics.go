// Package metrics holds the control plane's counters: plain atomics that
// control/store and control/reconcile bump and weftd serves in Prometheus
// text format (no Prometheus client library, so WritePrometheus writes the
// exposition format itself).
//
// It is its own package because both the store (etcd errors, resyncs) and
// the reconciler (runs, tunnels, bad leases) write to the same struct, and
// neither should import the other.
package metrics

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"time"
)

// Metrics is safe for concurrent use; the zero value is ready.
type Metrics struct {
	StoreErrors         atomic.Uint64 // etcd calls that failed (list, watch, lease, txn)
	Resyncs             atomic.Uint64 // full re-lists after a watch ended (compaction, disconnect)
	InvalidLeases       atomic.Int64  // leases failing validation in the latest snapshot
	InvalidLeaseReports atomic.Uint64 // distinct bad values seen (key + revision)
	LastKnownGood       atomic.Int64  // map entries kept from a lease whose key now holds a bad value
	ReconcileRuns       atomic.Uint64
	ReconcileErrors     atomic.Uint64 // entries that could not be written or deleted
	LastReconcileNanos  atomic.Int64
	Tunnels             atomic.Int64  // entries in the tunnels map after the last reconcile
	OwnLeaseRepairs     atomic.Uint64 // own subnet key re-acquired, re-created or put back
	OwnLeaseLost        atomic.Int64  // 1 when another node took our subnet
	PrunedPeerCounters  atomic.Uint64 // per-peer counter entries deleted after the peer left
	AuditRuns           atomic.Uint64 // audits of the tunnels map against the reconciler's mirror
	AuditRepairs        atomic.Uint64 // entries found drifted (changed behind weftd's back) and repaired
}

// ObserveReconcile records one reconcile run.
func (m *Metrics) ObserveReconcile(d time.Duration, tunnels, errs int) {
	m.ReconcileRuns.Add(1)
	m.LastReconcileNanos.Store(int64(d))
	m.Tunnels.Store(int64(tunnels))
	m.ReconcileErrors.Add(uint64(errs))
}

// WritePrometheus writes every metric in the Prometheus text exposition
// format (version 0.0.4), names prefixed weft_.
func (m *Metrics) WritePrometheus(w io.Writer) error {
	bw := bufio.NewWriter(w)
	metric := func(name, typ, help, value string) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", name, help, name, typ, name, value)
	}
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	i := func(v int64) string { return strconv.FormatInt(v, 10) }

	metric("weft_store_errors_total", "counter", "etcd operations that failed.", u(m.StoreErrors.Load()))
	metric("weft_store_resyncs_total", "counter", "Full lease re-lists after a watch ended (compaction or disconnect).", u(m.Resyncs.Load()))
	metric("weft_invalid_leases", "gauge", "Leases in etcd that fail validation and are not programmed from their current value.", i(m.InvalidLeases.Load()))
	metric("weft_invalid_lease_reports_total", "counter", "Distinct invalid lease values seen (key and revision).", u(m.InvalidLeaseReports.Load()))
	metric("weft_tunnels_last_known_good", "gauge", "Tunnels kept from the last valid value of a lease whose key now holds an invalid one.", i(m.LastKnownGood.Load()))
	metric("weft_reconcile_runs_total", "counter", "Reconciliations of the tunnels map.", u(m.ReconcileRuns.Load()))
	metric("weft_reconcile_errors_total", "counter", "Tunnel entries that could not be written or deleted.", u(m.ReconcileErrors.Load()))
	metric("weft_reconcile_last_duration_seconds", "gauge", "Duration of the last reconciliation.",
		strconv.FormatFloat(time.Duration(m.LastReconcileNanos.Load()).Seconds(), 'g', -1, 64))
	metric("weft_tunnels", "gauge", "Entries in the tunnels map after the last reconciliation.", i(m.Tunnels.Load()))
	metric("weft_own_lease_repairs_total", "counter", "Times this node's own subnet lease was lost, deleted or overwritten and taken back.", u(m.OwnLeaseRepairs.Load()))
	metric("weft_own_lease_lost", "gauge", "1 when another node holds this node's subnet.", i(m.OwnLeaseLost.Load()))
	metric("weft_peer_counters_pruned_total", "counter", "Per-peer traffic counters deleted after the peer's last tunnel went.", u(m.PrunedPeerCounters.Load()))
	metric("weft_tunnel_audits_total", "counter", "Audits comparing the tunnels map with what weftd wrote.", u(m.AuditRuns.Load()))
	metric("weft_tunnel_audit_repairs_total", "counter", "Tunnel entries found changed behind weftd's back and repaired.", u(m.AuditRepairs.Load()))
	return bw.Flush()
}
