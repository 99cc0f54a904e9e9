package main

import (
	"slices"
	"testing"

	"github.com/weftnet/weft/test/cluster"
)

func TestParseFlags(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.configs, []string{cfgWire, cfgBridged, cfgVeth, cfgIPv6}) || o.rounds != 3 || len(o.dataplanes) != len(cluster.DataPlanes) || len(o.metrics) != len(allMetrics) {
		t.Errorf("defaults: %+v", o)
	}

	o, err = parseFlags([]string{"--only", "weft-tc:tcp_1_gbps", "--config", "bridged"})
	if err != nil {
		t.Fatal(err)
	}
	if !o.only || o.rounds != 1 || !slices.Equal(o.dataplanes, []cluster.DataPlane{cluster.WeftTC}) ||
		len(o.metrics) != 1 || !o.metrics[mTCP1] || !slices.Equal(o.configs, []string{cfgBridged}) {
		t.Errorf("--only weft-tc:tcp_1_gbps --config bridged: %+v", o)
	}
	if o, err = parseFlags([]string{"--only", "weft-tc:tcp_1_gbps", "--rounds", "4"}); err != nil || o.rounds != 4 {
		t.Errorf("--only with --rounds 4: rounds %d, %v", o.rounds, err)
	}
	if o, err = parseFlags([]string{"--dataplanes", "weft-tc,weft-tc-nocell", "--config", "both", "--pin"}); err != nil ||
		!slices.Equal(o.configs, []string{cfgWire, cfgVeth}) || len(o.dataplanes) != 2 || !o.pin {
		t.Errorf("A/B flags: %+v, %v", o, err)
	}

	if o, err = parseFlags(nil); err != nil || !o.switchGRO {
		t.Errorf("switch GRO is on by default: %+v, %v", o, err)
	}
	if o, err = parseFlags([]string{"--switch-gro=false", "--config", "wire"}); err != nil || o.switchGRO {
		t.Errorf("--switch-gro=false: %+v, %v", o, err)
	}
	if o, err = parseFlags([]string{"--only", "host-gw:udp64_pps", "--perf", "out/x.data", "--bpf-stats"}); err != nil ||
		o.perfOut != "out/x.data" || !o.bpfStats {
		t.Errorf("--only with --perf and --bpf-stats: %+v, %v", o, err)
	}

	for _, bad := range [][]string{
		{"--perf", "x.data"},
		{"--bpf-stats"},
		{"--only", "weft-tc"},
		{"--only", "nope:tcp_1_gbps"},
		{"--only", "weft-tc:nope"},
		{"--config", "wire,lan"},
		{"--rounds", "0"},
		{"extra"},
	} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestKsoftirqdTime: the threads' time is read and never goes backwards
// (a freshly booted idle machine may well show zero).
func TestKsoftirqdTime(t *testing.T) {
	a := ksoftirqdTime()
	b := ksoftirqdTime()
	if a < 0 || b < a {
		t.Errorf("ksoftirqd time %v then %v", a, b)
	}
}
