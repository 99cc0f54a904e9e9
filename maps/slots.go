package maps

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/weftnet/weft/bpf"
)

// Per-peer counter slots.
//
// The programs count each peer's traffic in `peer_counters`, a per-CPU
// array, at the index the tunnel entry carries (tunnel_info.stats_slot), so
// counting costs an inlined array lookup through the entry the program
// already holds. It was a per-CPU hash keyed by the 16-byte remote address,
// about 40 ns per packet and direction. The index is handed out here, by
// the typed tunnels API, when it writes an entry; the reconciler and every
// other writer go on writing plain Tunnels.
//
// One slot per remote underlay address (not per subnet: a node with an IPv4
// and an IPv6 subnet is one peer). A remote's slot is taken when the first
// entry pointing at it is written and given back when the last one is
// deleted; a slot is zeroed when it is taken, so a new peer never inherits
// a departed one's numbers. Slot 0 means "none": entries get it when every
// slot is taken (or zeroing failed), and the programs count them there, so
// `PeerStatsMap.Overflow` shows what no peer row does. A packet that was
// already past its tunnel lookup when the slot was given back and taken
// again can land in the new peer's numbers: one packet, not a leak.
//
// State lives in memory: which subnet points at which remote, and each
// remote's slot and number of entries. It is rebuilt from the pinned
// tunnels map on first use, so a restarted weftd goes on with the slots its
// predecessor assigned, and reading it never writes (weftctl reads the same
// way while weftd runs). The allocator assumes it is the only writer of the
// map, as weftd is of its pins; entries written behind its back keep
// whatever slot they carry, and slots nobody owns are reclaimed at the next
// rebuild.

// slotAllocator hands out peer_counters slots for one tunnels map.
type slotAllocator struct {
	walk     func(func(bpf.WeftTunnelKey, bpf.WeftTunnelInfo) error) error // every entry of the tunnels map
	counters *ebpf.Map
	size     uint32 // slots in peer_counters, slot 0 included

	mu      sync.Mutex
	loaded  bool
	subnets map[bpf.WeftTunnelKey][16]byte // entry -> its remote, as written
	peers   map[[16]byte]peerSlot          // remote -> its slot and entries
	free    []uint32                       // slots no entry carries; the last is taken next
	fresh   []freshSlot                    // taken by reserve, not zeroed yet
}

// freshSlot is a slot reserve took for remote, to be zeroed before use.
type freshSlot struct {
	slot   uint32
	remote [16]byte
}

// peerSlot is one remote's slot (0: none) and how many entries point at it.
// refs 0 is a slot taken for a write that has not happened yet.
type peerSlot struct{ slot, refs uint32 }

func newSlotAllocator(walk func(func(bpf.WeftTunnelKey, bpf.WeftTunnelInfo) error) error, counters *ebpf.Map) *slotAllocator {
	return &slotAllocator{walk: walk, counters: counters, size: counters.MaxEntries()}
}

// load rebuilds the state from the tunnels map; a.mu is held.
func (a *slotAllocator) load() error {
	if a.loaded {
		return nil
	}
	subnets := map[bpf.WeftTunnelKey][16]byte{}
	peers := map[[16]byte]peerSlot{}
	used := make([]bool, a.size)
	err := a.walk(func(key bpf.WeftTunnelKey, val bpf.WeftTunnelInfo) error {
		subnets[key] = val.Remote
		p := peers[val.Remote]
		s := val.StatsSlot
		if s >= a.size {
			s = 0 // the programs count it as slot 0 too
		}
		// A slot another remote already owns stays with the first one; the
		// entry keeps counting where it counts until it is rewritten.
		if p.slot == 0 && s != 0 && !used[s] {
			p.slot = s
		}
		used[s] = true // carried by an entry: not free, owned or not
		p.refs++
		peers[val.Remote] = p
		return nil
	})
	if err != nil {
		return fmt.Errorf("counter slots: %w", err)
	}
	free := make([]uint32, 0, a.size)
	for s := a.size - 1; s >= 1; s-- {
		if !used[s] {
			free = append(free, s)
		}
	}
	a.subnets, a.peers, a.free, a.loaded = subnets, peers, free, true
	return nil
}

// reserve returns the slot an entry pointing at remote is written with,
// taking a free one for a remote without entries; a.mu is held. Slots
// taken are zeroed by zeroFresh before any entry carries them, and every
// reserve is followed by committed or abandoned.
func (a *slotAllocator) reserve(remote [16]byte) uint32 {
	if p, ok := a.peers[remote]; ok {
		return p.slot
	}
	var slot uint32
	if n := len(a.free); n > 0 {
		slot, a.free = a.free[n-1], a.free[:n-1]
		a.fresh = append(a.fresh, freshSlot{slot, remote})
	}
	a.peers[remote] = peerSlot{slot: slot}
	return slot
}

// zeroFresh zeroes the slots reserve took, in one batch syscall where the
// kernel allows (a cold start takes thousands). A slot that cannot be
// zeroed is not handed out: its peer counts as overflow (slot 0), and the
// returned set names such slots so the caller writes 0 instead.
func (a *slotAllocator) zeroFresh() (failed map[uint32]bool) {
	if len(a.fresh) == 0 {
		return nil
	}
	fresh := a.fresh
	a.fresh = nil
	ncpu := ebpf.MustPossibleCPU()
	keys := make([]uint32, len(fresh))
	for i, f := range fresh {
		keys[i] = f.slot
	}
	if n, err := a.counters.BatchUpdate(keys, make([]bpf.WeftPeerStats, len(keys)*ncpu), nil); err == nil && n == len(keys) {
		return nil
	}
	zero := make([]bpf.WeftPeerStats, ncpu)
	for _, f := range fresh {
		if err := a.counters.Put(f.slot, zero); err != nil {
			if failed == nil {
				failed = map[uint32]bool{}
			}
			failed[f.slot] = true
			a.free = append(a.free, f.slot)
			if p, ok := a.peers[f.remote]; ok && p.slot == f.slot {
				p.slot = 0
				a.peers[f.remote] = p
			}
		}
	}
	return failed
}

// committed records that key now points at remote in the kernel.
func (a *slotAllocator) committed(key bpf.WeftTunnelKey, remote [16]byte) {
	old, had := a.subnets[key]
	if had && old == remote {
		return
	}
	p := a.peers[remote]
	p.refs++
	a.peers[remote] = p
	a.subnets[key] = remote
	if had {
		a.release(old)
	}
}

// abandoned undoes a reserve whose write failed.
func (a *slotAllocator) abandoned(remote [16]byte) {
	if p, ok := a.peers[remote]; ok && p.refs == 0 {
		a.drop(remote, p)
	}
}

// deleted records that key has no entry in the kernel.
func (a *slotAllocator) deleted(key bpf.WeftTunnelKey) {
	if old, had := a.subnets[key]; had {
		delete(a.subnets, key)
		a.release(old)
	}
}

func (a *slotAllocator) release(remote [16]byte) {
	p, ok := a.peers[remote]
	if !ok {
		return
	}
	if p.refs > 0 {
		p.refs--
	}
	if p.refs > 0 {
		a.peers[remote] = p
		return
	}
	a.drop(remote, p)
}

func (a *slotAllocator) drop(remote [16]byte, p peerSlot) {
	delete(a.peers, remote)
	if p.slot != 0 {
		a.free = append(a.free, p.slot)
	}
}

// slots returns every remote that has entries, with its slot (0: none).
func (a *slotAllocator) slots() (map[[16]byte]uint32, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.load(); err != nil {
		return nil, err
	}
	out := make(map[[16]byte]uint32, len(a.peers))
	for r, p := range a.peers {
		if p.refs > 0 {
			out[r] = p.slot
		}
	}
	return out, nil
}

// slotOf returns remote's slot; ok is false when it has none.
func (a *slotAllocator) slotOf(remote [16]byte) (slot uint32, ok bool, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.load(); err != nil {
		return 0, false, err
	}
	p, found := a.peers[remote]
	return p.slot, found && p.refs > 0 && p.slot != 0, nil
}

// put writes one entry with its remote's slot.
func (a *slotAllocator) put(key bpf.WeftTunnelKey, val bpf.WeftTunnelInfo, write func(*bpf.WeftTunnelKey, *bpf.WeftTunnelInfo) error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.load(); err != nil {
		return err
	}
	val.StatsSlot = a.reserve(val.Remote)
	if a.zeroFresh()[val.StatsSlot] {
		val.StatsSlot = 0
	}
	if err := write(&key, &val); err != nil {
		a.abandoned(val.Remote)
		return err
	}
	a.committed(key, val.Remote)
	return nil
}

// putBatch fills in the slots of vals, calls write, and records the first n
// entries write reports as written; the rest are abandoned.
func (a *slotAllocator) putBatch(keys []bpf.WeftTunnelKey, vals []bpf.WeftTunnelInfo, write func() (int, error)) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.load(); err != nil {
		return 0, err
	}
	for i := range vals {
		vals[i].StatsSlot = a.reserve(vals[i].Remote)
	}
	if failed := a.zeroFresh(); failed != nil {
		for i := range vals {
			if failed[vals[i].StatsSlot] {
				vals[i].StatsSlot = 0
			}
		}
	}
	n, err := write()
	for i := range keys {
		if i < n {
			a.committed(keys[i], vals[i].Remote)
		} else {
			a.abandoned(vals[i].Remote)
		}
	}
	return n, err
}

// del deletes entries with write (one or a batch) and records the first n
// (all when err is nil) as gone. A key the kernel did not have is gone too.
func (a *slotAllocator) del(keys []bpf.WeftTunnelKey, write func() (int, error)) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.load(); err != nil {
		return 0, err
	}
	n, err := write()
	if err == nil {
		n = len(keys)
	}
	for i := range keys[:n] {
		a.deleted(keys[i])
	}
	if len(keys) == 1 && errors.Is(err, ebpf.ErrKeyNotExist) {
		a.deleted(keys[0]) // it had no entry
	}
	return n, err
}
