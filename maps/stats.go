package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/weftnet/weft/bpf"
)

// Counter is one reason a packet went where it went, summed across CPUs.
type Counter struct {
	Name    string `json:"name"` // from the C enum: CNT_DROP_SHORT -> "drop_short"
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// IsDrop reports whether packets counted here were dropped.
func (c Counter) IsDrop() bool { return strings.HasPrefix(c.Name, "drop_") }

var counterNames = sync.OnceValues(func() ([]string, error) {
	spec, err := bpf.LoadWeft()
	if err != nil {
		return nil, fmt.Errorf("load BPF spec: %w", err)
	}
	var enum *btf.Enum
	if err := spec.Types.TypeByName("counter", &enum); err != nil {
		return nil, fmt.Errorf("find enum counter in BTF: %w", err)
	}
	names := make([]string, 0, len(enum.Values))
	for i, v := range enum.Values {
		if v.Value != uint64(i) {
			return nil, fmt.Errorf("enum counter is not dense at %s", v.Name)
		}
		name := strings.ToLower(strings.TrimPrefix(v.Name, "CNT_"))
		if name == "_max" {
			break
		}
		names = append(names, name)
	}
	return names, nil
})

// CounterNames lists every counter in the order of the C enum.
func CounterNames() ([]string, error) { return counterNames() }

// StatsMap is the per-CPU `stats` array: reason -> {packets, bytes}.
type StatsMap struct{ m *ebpf.Map }

// NewStatsMap wraps an open `stats` map.
func NewStatsMap(m *ebpf.Map) *StatsMap { return &StatsMap{m: m} }

// All returns every counter, summed across CPUs, zeros included.
func (sm *StatsMap) All() ([]Counter, error) {
	names, err := counterNames()
	if err != nil {
		return nil, err
	}
	out := make([]Counter, 0, len(names))
	for i, name := range names {
		var perCPU []bpf.WeftCounterValue
		if err := sm.m.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", name, err)
		}
		c := Counter{Name: name}
		for _, v := range perCPU {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		out = append(out, c)
	}
	return out, nil
}

// Get returns one counter by name.
func (sm *StatsMap) Get(name string) (Counter, error) {
	all, err := sm.All()
	if err != nil {
		return Counter{}, err
	}
	for _, c := range all {
		if c.Name == name {
			return c, nil
		}
	}
	return Counter{}, fmt.Errorf("counter %q: %w", name, ErrNotFound)
}

// Snapshot returns counters as a name -> packets map, handy for diffs.
func (sm *StatsMap) Snapshot() (map[string]uint64, error) {
	all, err := sm.All()
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(all))
	for _, c := range all {
		out[c.Name] = c.Packets
	}
	return out, nil
}

// Reset zeroes every counter.
func (sm *StatsMap) Reset() error {
	names, err := counterNames()
	if err != nil {
		return err
	}
	zero := make([]bpf.WeftCounterValue, ebpf.MustPossibleCPU())
	for i := range names {
		if err := sm.m.Put(uint32(i), zero); err != nil {
			return fmt.Errorf("reset counters: %w", err)
		}
	}
	return nil
}

// PeerStats is the traffic exchanged with one remote node, summed across CPUs.
type PeerStats struct {
	Remote    netip.Addr `json:"remote"`
	TxPackets uint64     `json:"tx_packets"`
	TxBytes   uint64     `json:"tx_bytes"`
	RxPackets uint64     `json:"rx_packets"`
	RxBytes   uint64     `json:"rx_bytes"`
}

// PeerStatsMap is the per-CPU `peer_counters` array: traffic per remote
// node, at the slot the tunnels map's entries for that node carry (see
// slots.go). It reads the slots through the TunnelMap that assigns them.
type PeerStatsMap struct {
	m       *ebpf.Map
	tunnels *TunnelMap
}

// NewPeerStatsMap wraps an open `peer_counters` map and the counted
// TunnelMap (NewCountedTunnelMap) whose entries index it.
func NewPeerStatsMap(m *ebpf.Map, tunnels *TunnelMap) *PeerStatsMap {
	return &PeerStatsMap{m: m, tunnels: tunnels}
}

func (pm *PeerStatsMap) read(slot uint32) (PeerStats, error) {
	var (
		perCPU []bpf.WeftPeerStats
		ps     PeerStats
	)
	if err := pm.m.Lookup(slot, &perCPU); err != nil {
		return ps, fmt.Errorf("read peer counters slot %d: %w", slot, err)
	}
	for _, v := range perCPU {
		ps.TxPackets += v.TxPackets
		ps.TxBytes += v.TxBytes
		ps.RxPackets += v.RxPackets
		ps.RxBytes += v.RxBytes
	}
	return ps, nil
}

// All returns the numbers of every peer the tunnels map points at that has
// a counter slot; traffic of peers without one is in Overflow.
func (pm *PeerStatsMap) All() ([]PeerStats, error) {
	if pm.tunnels == nil || pm.tunnels.slots == nil {
		return nil, errors.New("read peer counters: no counted tunnels map")
	}
	slots, err := pm.tunnels.slots.slots()
	if err != nil {
		return nil, err
	}
	out := make([]PeerStats, 0, len(slots))
	for remote, slot := range slots {
		if slot == 0 {
			continue
		}
		ps, err := pm.read(slot)
		if err != nil {
			return nil, err
		}
		ps.Remote = addrFrom16(remote)
		out = append(out, ps)
	}
	return out, nil
}

// Overflow returns the traffic of peers that have no counter slot (every
// slot was taken): slot 0. Remote is the zero Addr.
func (pm *PeerStatsMap) Overflow() (PeerStats, error) { return pm.read(0) }

// Delete zeroes one peer's numbers. A peer whose last tunnel went has
// given its slot back already (zeroed before its next use), so then there
// is nothing to do.
func (pm *PeerStatsMap) Delete(remote netip.Addr) error {
	addr, err := addrTo16(remote)
	if err != nil {
		return err
	}
	if pm.tunnels == nil || pm.tunnels.slots == nil {
		return errors.New("delete peer counters: no counted tunnels map")
	}
	slot, ok, err := pm.tunnels.slots.slotOf(addr)
	if err != nil || !ok {
		return err
	}
	if err := pm.m.Put(slot, make([]bpf.WeftPeerStats, ebpf.MustPossibleCPU())); err != nil {
		return fmt.Errorf("zero peer counters of %s: %w", remote, err)
	}
	return nil
}
