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

// PeerStatsMap is the per-CPU `tunnel_stats` hash: remote underlay address -> traffic.
type PeerStatsMap struct{ m *ebpf.Map }

// NewPeerStatsMap wraps an open `tunnel_stats` map.
func NewPeerStatsMap(m *ebpf.Map) *PeerStatsMap { return &PeerStatsMap{m: m} }

// All returns every peer's numbers.
func (pm *PeerStatsMap) All() ([]PeerStats, error) {
	var (
		key    bpf.WeftPeerKey
		perCPU []bpf.WeftPeerStats
		out    []PeerStats
	)
	iter := pm.m.Iterate()
	for iter.Next(&key, &perCPU) {
		ps := PeerStats{Remote: addrFrom16(key.Addr)}
		for _, v := range perCPU {
			ps.TxPackets += v.TxPackets
			ps.TxBytes += v.TxBytes
			ps.RxPackets += v.RxPackets
			ps.RxBytes += v.RxBytes
		}
		out = append(out, ps)
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("read tunnel stats: %w", err)
	}
	return out, nil
}

// Delete forgets one peer's numbers (when its last tunnel goes away).
func (pm *PeerStatsMap) Delete(remote netip.Addr) error {
	addr, err := addrTo16(remote)
	if err != nil {
		return err
	}
	if err := pm.m.Delete(&bpf.WeftPeerKey{Addr: addr}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete tunnel stats %s: %w", remote, err)
	}
	return nil
}
