package main

import (
	"encoding/json"
	"net/http"
	"sync/atomic"
	"time"
)

// livenessStall is how long the monitor loop (one pass per checkInterval)
// may go without a pass before /livez says weftd is wedged. Generous:
// a pass reads the pinned links and may wait on an etcd read, and a
// liveness failure restarts the container.
const livenessStall = 30 * time.Second

// liveness tells a wedged weftd from an unready one. /healthz (readiness)
// answers 503 for conditions a restart does not fix (etcd down, own lease
// taken, config changed); a liveness probe on it would restart weftd in a
// loop through an etcd outage. /livez fails only when weftd's own monitor
// loop stopped running: a deadlock or a call stuck for good, which a
// restart does fix. The data plane keeps forwarding either way.
type liveness struct {
	lastBeat atomic.Int64 // unix nanos of the monitor's last pass; 0 before it starts
}

// beat records a monitor pass.
func (l *liveness) beat(now time.Time) { l.lastBeat.Store(now.UnixNano()) }

// stalled says how long the monitor has been silent past livenessStall,
// or 0 while it is alive. Before the first pass (weftd still waiting for
// its subnet or setting up the data plane, which may take long on a node
// whose podCIDR is not assigned yet) it is alive.
func (l *liveness) stalled(now time.Time) time.Duration {
	last := l.lastBeat.Load()
	if last == 0 {
		return 0
	}
	if silent := now.Sub(time.Unix(0, last)); silent > livenessStall {
		return silent
	}
	return 0
}

// handleLive answers /livez: 200 while the monitor loop runs, 503 with how
// long it has been silent otherwise.
func (l *liveness) handleLive(w http.ResponseWriter, _ *http.Request) {
	status := struct {
		Live   bool   `json:"live"`
		Silent string `json:"monitor_silent_for,omitempty"`
	}{Live: true}
	if s := l.stalled(time.Now()); s > 0 {
		status.Live, status.Silent = false, s.Round(time.Second).String()
	}
	w.Header().Set("Content-Type", "application/json")
	if !status.Live {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(status)
}
