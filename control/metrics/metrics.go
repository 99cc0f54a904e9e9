// Package metrics holds the control plane's metrics: counters and gauges as
// plain atomics that control/store and control/reconcile bump, histograms
// of reconcile duration and join-to-forwarding, and a prometheus.Collector
// over all of them that weftd registers beside the Go and process
// collectors (prometheus/client_golang).
//
// It is its own package because both the store (etcd errors, resyncs) and
// the reconciler (runs, tunnels, bad leases) write to the same struct, and
// neither should import the other. Metric names are stable: tests and
// dashboards read them.
package metrics

import (
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// Metrics is safe for concurrent use; the zero value is ready.
type Metrics struct {
	StoreErrors         atomic.Uint64 // etcd calls that failed (list, watch, lease, txn)
	Resyncs             atomic.Uint64 // full re-lists after a watch ended (compaction, disconnect)
	InvalidLeases       atomic.Int64  // leases failing validation in the latest snapshot
	InvalidLeaseReports atomic.Uint64 // distinct bad values seen (key + revision)
	LastKnownGood       atomic.Int64  // map entries kept from a lease whose key now holds a bad value
	InvalidNodeReports  atomic.Uint64 // kube mode: bad Node states seen (one per change of a Node)
	UnmanagedNodes      atomic.Int64  // kube mode: Nodes without kube-subnet-manager="true", not peers
	ReconcileRuns       atomic.Uint64
	ReconcileErrors     atomic.Uint64 // entries that could not be written or deleted
	LastReconcileNanos  atomic.Int64
	Tunnels             atomic.Int64  // entries in the tunnels map after the last reconcile
	OwnLeaseRepairs     atomic.Uint64 // own subnet key re-acquired, re-created or put back
	OwnLeaseLost        atomic.Int64  // 1 when another node took our subnet
	PrunedPeerCounters  atomic.Uint64 // per-peer counter entries deleted after the peer left
	AuditRuns           atomic.Uint64 // audits of the tunnels map against the reconciler's mirror
	AuditRepairs        atomic.Uint64 // entries found drifted (changed behind weftd's back) and repaired

	once      sync.Once
	reconcile prometheus.Histogram
	join      prometheus.Histogram
}

// Buckets from 100 µs (a one-entry delta) to ~13 s (a cold start at 50,000
// nodes on a loaded machine).
var durationBuckets = prometheus.ExponentialBuckets(0.0001, 2, 18)

func (m *Metrics) histograms() {
	m.once.Do(func() {
		m.reconcile = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "weft_reconcile_duration_seconds",
			Help: "Duration of one reconciliation of the tunnels map (a store batch or an audit).", Buckets: durationBuckets})
		m.join = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "weft_join_to_forwarding_seconds",
			Help: "From a store change reaching weftd to its entries being in the tunnels map.", Buckets: durationBuckets})
	})
}

// ObserveReconcile records one reconcile run.
func (m *Metrics) ObserveReconcile(d time.Duration, tunnels, errs int) {
	m.histograms()
	m.ReconcileRuns.Add(1)
	m.LastReconcileNanos.Store(int64(d))
	m.Tunnels.Store(int64(tunnels))
	m.ReconcileErrors.Add(uint64(errs))
	m.reconcile.Observe(d.Seconds())
}

// ObserveJoin records how long a change took from reaching weftd (a watch
// response) to being in the tunnels map.
func (m *Metrics) ObserveJoin(d time.Duration) {
	m.histograms()
	m.join.Observe(d.Seconds())
}

type sample struct {
	name, help string
	typ        prometheus.ValueType
	value      func(*Metrics) float64
}

var samples = []sample{
	{"weft_store_errors_total", "etcd operations that failed.", prometheus.CounterValue, func(m *Metrics) float64 { return float64(m.StoreErrors.Load()) }},
	{"weft_store_resyncs_total", "Full lease re-lists after a watch ended (compaction or disconnect).", prometheus.CounterValue, func(m *Metrics) float64 { return float64(m.Resyncs.Load()) }},
	{"weft_invalid_leases", "Leases in etcd that fail validation and are not programmed from their current value.", prometheus.GaugeValue, func(m *Metrics) float64 { return float64(m.InvalidLeases.Load()) }},
	{"weft_invalid_lease_reports_total", "Distinct invalid lease values seen (key and revision).", prometheus.CounterValue, func(m *Metrics) float64 { return float64(m.InvalidLeaseReports.Load()) }},
	{"weft_invalid_node_reports_total", "Kubernetes mode: Node states that are not usable peers (no podCIDR, bad annotations, overlap), one per change.", prometheus.CounterValue, func(m *Metrics) float64 { return float64(m.InvalidNodeReports.Load()) }},
	{"weft_unmanaged_nodes", "Kubernetes mode: Nodes without the kube-subnet-manager annotation, which are not peers.", prometheus.GaugeValue, func(m *Metrics) float64 { return float64(m.UnmanagedNodes.Load()) }},
	{"weft_tunnels_last_known_good", "Tunnels kept from the last valid value of a lease whose key now holds an invalid one.", prometheus.GaugeValue, func(m *Metrics) float64 { return float64(m.LastKnownGood.Load()) }},
	{"weft_reconcile_runs_total", "Reconciliations of the tunnels map.", prometheus.CounterValue, func(m *Metrics) float64 { return float64(m.ReconcileRuns.Load()) }},
	{"weft_reconcile_errors_total", "Tunnel entries that could not be written or deleted.", prometheus.CounterValue, func(m *Metrics) float64 { return float64(m.ReconcileErrors.Load()) }},
	{"weft_reconcile_last_duration_seconds", "Duration of the last reconciliation.", prometheus.GaugeValue, func(m *Metrics) float64 { return time.Duration(m.LastReconcileNanos.Load()).Seconds() }},
	{"weft_tunnels", "Entries in the tunnels map after the last reconciliation.", prometheus.GaugeValue, func(m *Metrics) float64 { return float64(m.Tunnels.Load()) }},
	{"weft_own_lease_repairs_total", "Times this node's own subnet lease was lost, deleted or overwritten and taken back.", prometheus.CounterValue, func(m *Metrics) float64 { return float64(m.OwnLeaseRepairs.Load()) }},
	{"weft_own_lease_lost", "1 when another node holds this node's subnet.", prometheus.GaugeValue, func(m *Metrics) float64 { return float64(m.OwnLeaseLost.Load()) }},
	{"weft_peer_counters_pruned_total", "Per-peer traffic counters deleted after the peer's last tunnel went.", prometheus.CounterValue, func(m *Metrics) float64 { return float64(m.PrunedPeerCounters.Load()) }},
	{"weft_tunnel_audits_total", "Audits comparing the tunnels map with what weftd wrote.", prometheus.CounterValue, func(m *Metrics) float64 { return float64(m.AuditRuns.Load()) }},
	{"weft_tunnel_audit_repairs_total", "Tunnel entries found changed behind weftd's back and repaired.", prometheus.CounterValue, func(m *Metrics) float64 { return float64(m.AuditRepairs.Load()) }},
}

var descs = func() map[string]*prometheus.Desc {
	d := make(map[string]*prometheus.Desc, len(samples))
	for _, s := range samples {
		d[s.name] = prometheus.NewDesc(s.name, s.help, nil, nil)
	}
	return d
}()

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.histograms()
	for _, s := range samples {
		ch <- descs[s.name]
	}
	m.reconcile.Describe(ch)
	m.join.Describe(ch)
}

// Collect implements prometheus.Collector: the atomics are read at scrape
// time, so the hot paths stay plain atomic adds.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.histograms()
	for _, s := range samples {
		ch <- prometheus.MustNewConstMetric(descs[s.name], s.typ, s.value(m))
	}
	m.reconcile.Collect(ch)
	m.join.Collect(ch)
}

// WritePrometheus writes every metric in the Prometheus text exposition
// format, for tools and tests without an HTTP server.
func (m *Metrics) WritePrometheus(w io.Writer) error {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(m); err != nil {
		return err
	}
	mfs, err := reg.Gather()
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return err
		}
	}
	return nil
}
