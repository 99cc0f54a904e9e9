package maps

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/weftnet/weft/bpf"
)

// Set is every Weft map, typed.
type Set struct {
	Tunnels   *TunnelMap
	Endpoints *EndpointMap
	Config    *ConfigMap
	Stats     *StatsMap
	PeerStats *PeerStatsMap

	raw []*ebpf.Map
}

// FromMaps wraps maps a loader already holds; Close does not close them.
func FromMaps(m *bpf.WeftMaps) *Set {
	tunnels := NewCountedTunnelMap(m.Tunnels, m.PeerCounters)
	return &Set{
		Tunnels:   tunnels,
		Endpoints: NewEndpointMap(m.Endpoints),
		Config:    NewConfigMap(m.Config),
		Stats:     NewStatsMap(m.Stats),
		PeerStats: NewPeerStatsMap(m.PeerCounters, tunnels),
	}
}

// ErrNotPinned is returned by OpenPinned when the pin directory holds no Weft maps.
var ErrNotPinned = errors.New("weft maps not pinned")

// OpenPinned opens the maps pinned under dir (e.g. /sys/fs/bpf/weft). It
// works whether or not weftd is running.
func OpenPinned(dir string) (*Set, error) {
	open := func(name string) (*ebpf.Map, error) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, errNoEnt) {
				return nil, fmt.Errorf("open %s: %w", filepath.Join(dir, name), ErrNotPinned)
			}
			return nil, fmt.Errorf("open %s: %w", filepath.Join(dir, name), err)
		}
		return m, nil
	}
	if _, err := os.Stat(dir); err == nil {
		if err := CheckLayout(dir); err != nil {
			return nil, err
		}
	}
	s := &Set{}
	names := []string{bpf.WeftMapTunnels, bpf.WeftMapEndpoints, bpf.WeftMapConfig, bpf.WeftMapStats, bpf.WeftMapPeerCounters}
	ms := make([]*ebpf.Map, len(names))
	for i, n := range names {
		m, err := open(n)
		if err != nil {
			s.raw = ms[:i]
			s.Close()
			return nil, err
		}
		ms[i] = m
	}
	s.raw = ms
	s.Tunnels = NewCountedTunnelMap(ms[0], ms[4])
	s.Endpoints = NewEndpointMap(ms[1])
	s.Config = NewConfigMap(ms[2])
	s.Stats = NewStatsMap(ms[3])
	s.PeerStats = NewPeerStatsMap(ms[4], s.Tunnels)
	return s, nil
}

// Close releases maps OpenPinned opened. The pins, and the data plane, stay.
func (s *Set) Close() error {
	var errs []error
	for _, m := range s.raw {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	s.raw = nil
	return errors.Join(errs...)
}
