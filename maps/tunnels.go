package maps

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/weftnet/weft/bpf"
)

// Mode says how packets reach a remote node.
type Mode uint8

const (
	// ModeVXLAN encapsulates toward the remote node.
	ModeVXLAN Mode = Mode(bpf.WeftTunnelModeTUNNEL_MODE_VXLAN)
	// ModeDirect routes without encapsulation; the remote node shares our
	// L2 segment (flannel's DirectRouting).
	ModeDirect Mode = Mode(bpf.WeftTunnelModeTUNNEL_MODE_DIRECT)
)

func (m Mode) String() string {
	switch m {
	case ModeVXLAN:
		return "vxlan"
	case ModeDirect:
		return "direct"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// ParseMode is the inverse of Mode.String.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "vxlan":
		return ModeVXLAN, nil
	case "direct":
		return ModeDirect, nil
	}
	return 0, fmt.Errorf("unknown tunnel mode %q", s)
}

// MarshalText lets Mode appear by name in JSON.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText parses a mode name.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	*m = v
	return err
}

// Tunnel is one remote node: its pod subnet and how to reach it.
type Tunnel struct {
	Subnet  netip.Prefix     `json:"subnet"`
	Remote  netip.Addr       `json:"remote"`   // the node's underlay (public) address
	VtepMAC net.HardwareAddr `json:"vtep_mac"` // inner Ethernet destination
	VNI     uint32           `json:"vni"`
	Mode    Mode             `json:"mode"`
}

// Equal reports whether two tunnels would program the same map entry.
func (t Tunnel) Equal(o Tunnel) bool {
	return t.Subnet == o.Subnet && t.Remote == o.Remote && t.VNI == o.VNI && t.Mode == o.Mode &&
		t.VtepMAC.String() == o.VtepMAC.String()
}

func (t Tunnel) String() string {
	return fmt.Sprintf("%s via %s (%s, vtep %s, vni %d)", t.Subnet, t.Remote, t.Mode, t.VtepMAC, t.VNI)
}

// Validate checks what the data plane relies on.
func (t Tunnel) Validate() error {
	if !t.Subnet.IsValid() {
		return errors.New("tunnel: invalid subnet")
	}
	if !t.Remote.IsValid() {
		return fmt.Errorf("tunnel %s: invalid remote address", t.Subnet)
	}
	// Either family for either: the remote's family picks the outer header
	// (IPv4 or IPv6, bpf/outer6.h), the subnet's is the pods'. What cannot be
	// a peer's unicast underlay address is refused; an IPv6 link-local one
	// would need a zone the map cannot hold.
	if r := t.Remote.Unmap(); r.IsUnspecified() || r.IsMulticast() || r.IsLoopback() ||
		(r.Is6() && r.IsLinkLocalUnicast()) {
		return fmt.Errorf("tunnel %s: remote %s is not a unicast underlay address", t.Subnet, t.Remote)
	}
	if t.Mode != ModeVXLAN && t.Mode != ModeDirect {
		return fmt.Errorf("tunnel %s: %v", t.Subnet, t.Mode)
	}
	if len(t.VtepMAC) != 6 {
		return fmt.Errorf("tunnel %s: VtepMAC %q is not a 6-byte MAC", t.Subnet, t.VtepMAC)
	}
	if t.VNI >= 1<<24 {
		return fmt.Errorf("tunnel %s: VNI %d does not fit 24 bits", t.Subnet, t.VNI)
	}
	return nil
}

func tunnelKey(p netip.Prefix) (bpf.WeftTunnelKey, error) {
	bits, addr, err := prefixToKey(p)
	if err != nil {
		return bpf.WeftTunnelKey{}, err
	}
	return bpf.WeftTunnelKey{Prefixlen: bits, Addr: addr}, nil
}

func tunnelFromBPF(k bpf.WeftTunnelKey, v bpf.WeftTunnelInfo) (Tunnel, error) {
	subnet, err := prefixFromKey(k.Prefixlen, k.Addr)
	if err != nil {
		return Tunnel{}, err
	}
	return Tunnel{
		Subnet:  subnet,
		Remote:  addrFrom16(v.Remote),
		VtepMAC: macFrom6(v.VtepMac),
		VNI:     v.Vni,
		Mode:    Mode(v.Mode),
	}, nil
}

// TunnelMap is the `tunnels` LPM trie: remote pod subnet -> remote node.
type TunnelMap struct {
	m     *ebpf.Map
	batch batchState
	slots *slotAllocator // nil: entries carry no counter slot
}

// NewTunnelMap wraps an open `tunnels` map whose programs count no peers:
// the entries it writes carry counter slot 0.
func NewTunnelMap(m *ebpf.Map) *TunnelMap { return &TunnelMap{m: m} }

// NewCountedTunnelMap wraps an open `tunnels` map and the `peer_counters`
// map its programs count peers in: each entry written carries its remote's
// counter slot (see slots.go).
func NewCountedTunnelMap(m, counters *ebpf.Map) *TunnelMap {
	tm := &TunnelMap{m: m}
	tm.slots = newSlotAllocator(tm.walk, counters)
	return tm
}

// write puts one entry, with its counter slot when there are counters.
func (tm *TunnelMap) write(key bpf.WeftTunnelKey, val bpf.WeftTunnelInfo) error {
	put := func(k *bpf.WeftTunnelKey, v *bpf.WeftTunnelInfo) error { return tm.m.Put(k, v) }
	if tm.slots == nil {
		return put(&key, &val)
	}
	return tm.slots.put(key, val, put)
}

// remove deletes one entry and gives back its remote's slot if it was the last.
func (tm *TunnelMap) remove(key bpf.WeftTunnelKey) error {
	del := func() (int, error) { return 0, tm.m.Delete(&key) }
	if tm.slots == nil {
		_, err := del()
		return err
	}
	_, err := tm.slots.del([]bpf.WeftTunnelKey{key}, del)
	return err
}

// Put adds or replaces the entry for t.Subnet. The update is atomic for
// readers: a packet sees the old or the new value, never a mix.
func (tm *TunnelMap) Put(t Tunnel) error {
	key, val, err := tunnelKV(t)
	if err != nil {
		return err
	}
	if err := tm.write(key, val); err != nil {
		return fmt.Errorf("put tunnel %s: %w", t.Subnet, err)
	}
	return nil
}

// Delete removes the entry for subnet; ErrNotFound if there is none.
func (tm *TunnelMap) Delete(subnet netip.Prefix) error {
	key, err := tunnelKey(subnet)
	if err != nil {
		return err
	}
	if err := tm.remove(key); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete tunnel %s: %w", subnet, ErrNotFound)
		}
		return fmt.Errorf("delete tunnel %s: %w", subnet, err)
	}
	return nil
}

// Lookup returns the entry stored for exactly subnet; ErrNotFound if there
// is none. A kernel lookup on an LPM trie is longest-match, so an exact
// lookup walks the keys; it is for tools and tests, not per-packet work.
func (tm *TunnelMap) Lookup(subnet netip.Prefix) (Tunnel, error) {
	want, err := tunnelKey(subnet)
	if err != nil {
		return Tunnel{}, err
	}
	var (
		key bpf.WeftTunnelKey
		val bpf.WeftTunnelInfo
	)
	iter := tm.m.Iterate()
	for iter.Next(&key, &val) {
		if key == want {
			return tunnelFromBPF(key, val)
		}
	}
	if err := iter.Err(); err != nil {
		return Tunnel{}, fmt.Errorf("lookup tunnel %s: %w", subnet, err)
	}
	return Tunnel{}, fmt.Errorf("lookup tunnel %s: %w", subnet, ErrNotFound)
}

// Match returns the entry the data plane would pick for dst (longest
// prefix); ErrNotFound if none covers it.
func (tm *TunnelMap) Match(dst netip.Addr) (Tunnel, error) {
	key, err := tunnelKey(netip.PrefixFrom(dst, dst.BitLen()))
	if err != nil {
		return Tunnel{}, err
	}
	var val bpf.WeftTunnelInfo
	if err := tm.m.Lookup(&key, &val); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Tunnel{}, fmt.Errorf("match tunnel for %s: %w", dst, ErrNotFound)
		}
		return Tunnel{}, fmt.Errorf("match tunnel for %s: %w", dst, err)
	}
	t, err := tunnelFromBPF(key, val)
	if err != nil {
		return Tunnel{}, err
	}
	t.Subnet = netip.Prefix{} // the trie does not say which prefix matched
	return t, nil
}

// All returns every entry, in batches where the kernel allows.
func (tm *TunnelMap) All() ([]Tunnel, error) {
	if tm.batch.usable() {
		if out, ok, err := tm.allBatch(); ok {
			return out, err
		}
	}
	var (
		key bpf.WeftTunnelKey
		val bpf.WeftTunnelInfo
		out []Tunnel
	)
	iter := tm.m.Iterate()
	for iter.Next(&key, &val) {
		t, err := tunnelFromBPF(key, val)
		if err != nil {
			return nil, fmt.Errorf("read tunnels: %w", err)
		}
		out = append(out, t)
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("read tunnels: %w", err)
	}
	return out, nil
}
