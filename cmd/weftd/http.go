package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// serveHTTP starts the /healthz and /metrics endpoint and returns its stop
// function.
func (d *daemon) serveHTTP(addr string) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on --metrics-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", d.handleHealth)
	mux.HandleFunc("/metrics", d.handleMetrics)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics endpoint stopped", zap.Error(err))
		}
	}()
	d.log.Info("serving /healthz and /metrics", zap.String("addr", ln.Addr().String()))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

// handleHealth answers 200 once the data plane is set up and the first set
// of leases has been applied, 503 before and while any health check fails
// (health.go), listing why.
func (d *daemon) handleHealth(w http.ResponseWriter, _ *http.Request) {
	status := struct {
		Ready        bool     `json:"ready"`
		Subnet       string   `json:"subnet,omitempty"`
		LastSnapshot string   `json:"last_snapshot,omitempty"`
		Failing      []string `json:"failing,omitempty"`
	}{Failing: d.health.failing()}
	status.Ready = d.ready.Load() && len(status.Failing) == 0
	if s := d.subnet.Load(); s != nil {
		status.Subnet = s.String()
	}
	if ns := d.lastSnapshot.Load(); ns != 0 {
		status.LastSnapshot = time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
	}
	w.Header().Set("Content-Type", "application/json")
	if !status.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(status)
}

// handleMetrics writes the Prometheus text format: the control plane's
// metrics, then the data plane's packet counters read from the pinned maps.
func (d *daemon) handleMetrics(w http.ResponseWriter, _ *http.Request) {
	var buf bytes.Buffer
	if err := d.metrics.WritePrometheus(&buf); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	ready := 0
	if d.ready.Load() {
		ready = 1
	}
	fmt.Fprintf(&buf, "# HELP weft_ready Whether the data plane is set up and the first lease snapshot applied.\n# TYPE weft_ready gauge\nweft_ready %d\n", ready)
	storeOK, configChanged, linksMissing, _ := d.health.gauges()
	fmt.Fprintf(&buf, "# HELP weft_store_reachable Whether etcd answered within the lease renewal deadline.\n# TYPE weft_store_reachable gauge\nweft_store_reachable %d\n", b2i(storeOK))
	fmt.Fprintf(&buf, "# HELP weft_config_changed Whether the network config in etcd differs from the one weftd runs with (not applied until restart).\n# TYPE weft_config_changed gauge\nweft_config_changed %d\n", b2i(configChanged))
	fmt.Fprintf(&buf, "# HELP weft_program_links_missing Whether a program link of this node is missing or detached.\n# TYPE weft_program_links_missing gauge\nweft_program_links_missing %d\n", b2i(linksMissing))
	fmt.Fprintf(&buf, "# HELP weft_config_errors_total Reads of the network config that failed or were invalid.\n# TYPE weft_config_errors_total counter\nweft_config_errors_total %d\n", d.configErrors.Load())
	if dp := d.dp.Load(); dp != nil && d.ready.Load() {
		if counters, err := dp.Maps.Stats.All(); err == nil {
			buf.WriteString("# HELP weft_packets_total Packets by the data plane's decision (see weftctl stats).\n# TYPE weft_packets_total counter\n")
			for _, c := range counters {
				fmt.Fprintf(&buf, "weft_packets_total{reason=%q} %d\n", c.Name, c.Packets)
			}
			buf.WriteString("# HELP weft_bytes_total Bytes by the data plane's decision.\n# TYPE weft_bytes_total counter\n")
			for _, c := range counters {
				fmt.Fprintf(&buf, "weft_bytes_total{reason=%q} %d\n", c.Name, c.Bytes)
			}
		} else {
			d.log.Warn("read stats map", zap.Error(err))
		}
		if eps, err := dp.Maps.Endpoints.All(); err == nil {
			fmt.Fprintf(&buf, "# HELP weft_endpoints Local pods in the endpoints map.\n# TYPE weft_endpoints gauge\nweft_endpoints %d\n", len(eps))
		}
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	w.Write(buf.Bytes())
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
