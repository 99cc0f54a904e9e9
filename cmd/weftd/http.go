package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// serveHTTP starts the /healthz, /livez and /metrics endpoint and returns its stop
// function.
func (d *daemon) serveHTTP(addr string) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on --metrics-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", d.handleHealth)
	mux.HandleFunc("/livez", d.live.handleLive)
	mux.Handle("/metrics", promhttp.HandlerFor(d.registry(), promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(d.log)}))
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
		IPv6Subnet   string   `json:"ipv6_subnet,omitempty"`
		LastSnapshot string   `json:"last_snapshot,omitempty"`
		Failing      []string `json:"failing,omitempty"`
	}{Failing: d.health.failing()}
	status.Ready = d.ready.Load() && len(status.Failing) == 0
	if s := d.subnet.Load(); s != nil && s.IsValid() {
		status.Subnet = s.String()
	}
	if s := d.subnet6.Load(); s != nil && s.IsValid() {
		status.IPv6Subnet = s.String()
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

// registry is everything /metrics serves: the control plane's metrics,
// this daemon's state and data plane counters (daemonCollector), and the Go
// runtime and process collectors.
func (d *daemon) registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(d.metrics, daemonCollector{d},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

var (
	descReady         = prometheus.NewDesc("weft_ready", "Whether the data plane is set up and the first lease snapshot applied.", nil, nil)
	descConfigErrors  = prometheus.NewDesc("weft_config_errors_total", "Reads of the network config that failed or were invalid.", nil, nil)
	descStoreOK       = prometheus.NewDesc("weft_store_reachable", "Whether etcd answered within the lease renewal deadline.", nil, nil)
	descConfigChanged = prometheus.NewDesc("weft_config_changed", "Whether the network config in etcd differs from the one weftd runs with (not applied until restart).", nil, nil)
	descLinksMissing  = prometheus.NewDesc("weft_program_links_missing", "Whether a program link of this node is missing or detached.", nil, nil)
	descPackets       = prometheus.NewDesc("weft_packets_total", "Packets by the data plane's decision (see weftctl stats).", []string{"reason"}, nil)
	descBytes         = prometheus.NewDesc("weft_bytes_total", "Bytes by the data plane's decision.", []string{"reason"}, nil)
	descEndpoints     = prometheus.NewDesc("weft_endpoints", "Local pods in the endpoints map.", nil, nil)
)

// daemonCollector reads weftd's state and the pinned data plane maps at
// scrape time.
type daemonCollector struct{ d *daemon }

func (c daemonCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReady, descConfigErrors, descStoreOK, descConfigChanged, descLinksMissing, descPackets, descBytes, descEndpoints} {
		ch <- d
	}
}

func (c daemonCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	gauge := func(desc *prometheus.Desc, v bool) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(b2i(v)))
	}
	gauge(descReady, d.ready.Load())
	ch <- prometheus.MustNewConstMetric(descConfigErrors, prometheus.CounterValue, float64(d.configErrors.Load()))
	storeOK, configChanged, linksMissing, _ := d.health.gauges()
	gauge(descStoreOK, storeOK)
	gauge(descConfigChanged, configChanged)
	gauge(descLinksMissing, linksMissing)
	dp := d.dp.Load()
	if dp == nil || !d.ready.Load() {
		return
	}
	if counters, err := dp.Maps.Stats.All(); err == nil {
		for _, x := range counters {
			ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(x.Packets), x.Name)
			ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(x.Bytes), x.Name)
		}
	} else {
		d.log.Warn("read stats map", zap.Error(err))
	}
	if eps, err := dp.Maps.Endpoints.All(); err == nil {
		ch <- prometheus.MustNewConstMetric(descEndpoints, prometheus.GaugeValue, float64(len(eps)))
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
