package reconcile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/metrics"
	"github.com/weftnet/weft/control/peers"
	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
)

// countingTable counts full reads of the map.
type countingTable struct {
	*fakeTable
	reads int
}

func (c *countingTable) All() ([]maps.Tunnel, error) { c.reads++; return c.fakeTable.All() }

// nth is the i-th remote node's record, valid in config(t, ...).
func nth(i int, rev int64) flannel.KV {
	return kv(fmt.Sprintf("10.244.%d.0-24", 2+i), fmt.Sprintf("192.168.50.%d", 2+i), byte(2+i), rev)
}

func TestApplyBatchDeltaTouchesOnlyWhatChanged(t *testing.T) {
	cfg := config(t, false)
	f := &countingTable{fakeTable: newFake()}
	r := New(f, cfg, self, nil, nil)
	full := peers.Batch{Full: true}
	for i := range 200 {
		full.Changes = append(full.Changes, change(t, cfg, nth(i, int64(10+i))))
	}
	res, err := r.ApplyBatch(full)
	if err != nil || res.Added != 200 || f.reads != 1 {
		t.Fatalf("full batch: %+v %v, %d map reads", res, err, f.reads)
	}

	// One join, one change, one leave: three writes, no map read, nothing
	// else looked at.
	puts, dels := f.puts, f.deletes
	changed := nth(7, 500)
	changed.Value = kv("x", "192.168.50.77", 9, 500).Value
	res, err = r.ApplyBatch(peers.Batch{Changes: []peers.Change{
		change(t, cfg, nth(230, 501)), change(t, cfg, changed), {Key: nth(3, 0).Key},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{Added: 1, Updated: 1, Removed: 1}) || f.reads != 1 || f.puts-puts != 2 || f.deletes-dels != 1 {
		t.Fatalf("delta: %+v, %d map reads, %d puts, %d deletes", res, f.reads, f.puts-puts, f.deletes-dels)
	}
	if got := f.m[netip.MustParsePrefix("10.244.9.0/24")].Remote; got != netip.MustParseAddr("192.168.50.77") {
		t.Fatalf("changed lease programmed as %s", got)
	}

	// A repeated value writes nothing.
	res, err = r.ApplyBatch(peers.Batch{Changes: []peers.Change{change(t, cfg, nth(230, 501))}})
	if err != nil || res != (Result{Unchanged: 1}) || f.puts-puts != 2 {
		t.Fatalf("repeat: %+v %v", res, err)
	}
}

func TestApplyBatchSubnetChangesHands(t *testing.T) {
	cfg := config(t, false)
	f := newFake()
	r := New(f, cfg, self, nil, nil)
	a := kv("10.244.2.0-24", "192.168.50.2", 2, 3)
	b := kv("10.244.2.0-24&fd00::-64", "192.168.50.20", 2, 4) // same subnet, younger
	if _, err := r.ApplyBatch(peers.Batch{Full: true, Changes: []peers.Change{change(t, cfg, a)}}); err != nil {
		t.Fatal(err)
	}
	// The store hands the subnet to b as a goes; in either order within
	// the batch, b's entry is the result.
	for _, order := range [][]peers.Change{
		{{Key: a.Key}, change(t, cfg, b)},
		{change(t, cfg, b), {Key: a.Key}},
	} {
		if _, err := r.ApplyBatch(peers.Batch{Full: true, Changes: []peers.Change{change(t, cfg, a)}}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.ApplyBatch(peers.Batch{Changes: order}); err != nil {
			t.Fatal(err)
		}
		if got := f.String(); got != "10.244.2.0/24>192.168.50.20/vxlan" {
			t.Fatalf("after handover: %s", got)
		}
	}
	// b turns bad: its last good entry stays; a valid lease for the subnet
	// takes it over; when that goes, the last known good comes back.
	if _, err := r.ApplyBatch(peers.Batch{Changes: []peers.Change{change(t, cfg, garbage("10.244.2.0-24&fd00::-64", 9))}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ApplyBatch(peers.Batch{Changes: []peers.Change{change(t, cfg, kv("10.244.2.0-24", "192.168.50.99", 2, 10))}}); err != nil {
		t.Fatal(err)
	}
	if got := f.String(); got != "10.244.2.0/24>192.168.50.99/vxlan" {
		t.Fatalf("valid lease did not win over last known good: %s", got)
	}
	if _, err := r.ApplyBatch(peers.Batch{Changes: []peers.Change{{Key: a.Key}}}); err != nil {
		t.Fatal(err)
	}
	if got := f.String(); got != "10.244.2.0/24>192.168.50.20/vxlan" {
		t.Fatalf("last known good not restored: %s", got)
	}
}

func TestApplyBatchRetriesFailedWrites(t *testing.T) {
	cfg := config(t, false)
	f := newFake()
	m := new(metrics.Metrics)
	r := New(f, cfg, self, nil, m)
	if _, err := r.ApplyBatch(peers.Batch{Full: true}); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("map full")
	f.failPut[netip.MustParsePrefix("10.244.2.0/24")] = boom
	if _, err := r.ApplyBatch(peers.Batch{Changes: []peers.Change{change(t, cfg, nth(0, 5))}}); !errors.Is(err, boom) {
		t.Fatalf("failed write: %v, want %v", err, boom)
	}
	delete(f.failPut, netip.MustParsePrefix("10.244.2.0/24"))
	// An unrelated change also retries the pending one.
	res, err := r.ApplyBatch(peers.Batch{Changes: []peers.Change{change(t, cfg, nth(1, 6))}})
	if err != nil || res.Added != 2 || f.String() != "10.244.2.0/24>192.168.50.2/vxlan 10.244.3.0/24>192.168.50.3/vxlan" {
		t.Fatalf("retry: %+v %v %s", res, err, f)
	}
	if m.ReconcileErrors.Load() != 1 {
		t.Fatalf("reconcile errors %d, want 1", m.ReconcileErrors.Load())
	}
}

// testPinPath is a per-run pin directory on bpffs, removed at the end.
func testPinPath(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for BPF maps")
	}
	if err := loader.EnsureBPFFS(loader.BPFFSRoot); err != nil {
		t.Fatalf("bpffs: %v", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	parent := filepath.Join(loader.BPFFSRoot, "weft-test-"+hex.EncodeToString(b))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		loader.Remove(filepath.Join(parent, "node"))
		loader.ForgetPinPath(filepath.Join(parent, "node"))
		os.RemoveAll(parent)
	})
	return filepath.Join(parent, "node")
}

// TestAuditRepairsPinnedMap runs the reconciler on weftd's real, pinned
// tunnels map and changes the map behind its back through the pin, as
// bpftool or a stray tool would.
func TestAuditRepairsPinnedMap(t *testing.T) {
	pin := testPinPath(t)
	dp, err := loader.Load(loader.Options{PinPath: pin})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer dp.Close()
	cfg := config(t, false)
	m := new(metrics.Metrics)
	r := New(dp.Maps.Tunnels, cfg, self, nil, m)
	const n = 300 // a bulk write: batch syscalls
	cfg.SubnetLen = 30
	full := peers.Batch{Full: true}
	for i := range n {
		full.Changes = append(full.Changes, change(t, cfg, flannel.KV{
			Key:   fmt.Sprintf("%s/subnets/10.244.%d.%d-30", prefix, 2+i/64, (i%64)*4),
			Value: kv("x", fmt.Sprintf("192.168.51.%d", 1+i%250), 3, 1).Value, CreateRevision: int64(10 + i), ModRevision: int64(10 + i)}))
	}
	if res, err := r.ApplyBatch(full); err != nil || res.Added != n {
		t.Fatalf("full batch: %+v %v", res, err)
	}

	other, err := maps.OpenPinned(pin)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	gone := netip.MustParsePrefix("10.244.2.4/30")
	changed := netip.MustParsePrefix("10.244.2.8/30")
	stray := maps.Tunnel{Subnet: netip.MustParsePrefix("10.200.0.0/24"), Remote: netip.MustParseAddr("192.0.2.1"),
		VtepMAC: net.HardwareAddr{0x0e, 0, 0, 0, 0, 9}, VNI: 7, Mode: maps.ModeVXLAN}
	if err := other.Tunnels.Delete(gone); err != nil {
		t.Fatal(err)
	}
	was, err := other.Tunnels.Lookup(changed)
	if err != nil {
		t.Fatal(err)
	}
	bent := was
	bent.Remote = netip.MustParseAddr("192.0.2.66")
	if err := other.Tunnels.Put(bent); err != nil {
		t.Fatal(err)
	}
	if err := other.Tunnels.Put(stray); err != nil {
		t.Fatal(err)
	}

	drift, err := r.Audit()
	if err != nil || drift != 3 || m.AuditRepairs.Load() != 3 {
		t.Fatalf("audit: drift %d err %v repairs metric %d, want 3", drift, err, m.AuditRepairs.Load())
	}
	if _, err := other.Tunnels.Lookup(gone); err != nil {
		t.Errorf("deleted entry not put back: %v", err)
	}
	if got, _ := other.Tunnels.Lookup(changed); !got.Equal(was) {
		t.Errorf("changed entry not restored: %v, want %v", got, was)
	}
	if _, err := other.Tunnels.Lookup(stray.Subnet); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("stray entry not removed: %v", err)
	}
	all, _ := other.Tunnels.All()
	if len(all) != n {
		t.Errorf("%d entries after the audit, want %d", len(all), n)
	}
	if drift, err := r.Audit(); err != nil || drift != 0 {
		t.Fatalf("second audit: drift %d err %v, want none", drift, err)
	}
}

// fakeCounters is a per-peer counters map.
type fakeCounters map[netip.Addr]bool

func (f fakeCounters) All() ([]maps.PeerStats, error) {
	var out []maps.PeerStats
	for a := range f {
		out = append(out, maps.PeerStats{Remote: a})
	}
	return out, nil
}
func (f fakeCounters) Delete(a netip.Addr) error { delete(f, a); return nil }

func TestDepartedPeersCountersPruned(t *testing.T) {
	cfg := config(t, false)
	m := new(metrics.Metrics)
	r := New(newFake(), cfg, self, nil, m)
	ip := func(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("192.168.50.%d", 2+i)) }
	// Counters for two live peers and one that left while weftd was down.
	counters := fakeCounters{ip(0): true, ip(1): true, netip.MustParseAddr("192.0.2.9"): true}
	r.PruneCounters(counters)
	if _, err := r.ApplyBatch(peers.Batch{Full: true, Changes: []peers.Change{change(t, cfg, nth(0, 2)), change(t, cfg, nth(1, 3))}}); err != nil {
		t.Fatal(err)
	}
	if len(counters) != 2 || !counters[ip(0)] || !counters[ip(1)] {
		t.Fatalf("after the full batch: %v, want the two live peers only", counters)
	}
	// Peer 0 moves to a new address: its old counters go. Peer 1 leaves.
	moved := nth(0, 4)
	moved.Value = kv("x", "192.168.50.99", 2, 4).Value
	counters[netip.MustParseAddr("192.168.50.99")] = true
	if _, err := r.ApplyBatch(peers.Batch{Changes: []peers.Change{change(t, cfg, moved), {Key: nth(1, 0).Key}}}); err != nil {
		t.Fatal(err)
	}
	if len(counters) != 1 || !counters[netip.MustParseAddr("192.168.50.99")] || m.PrunedPeerCounters.Load() != 3 {
		t.Fatalf("after the delta: %v (pruned %d), want only the moved peer's new address", counters, m.PrunedPeerCounters.Load())
	}
}

// hookTable runs hook at the start of a full read, as a join arriving while
// the audit reads the map would.
type hookTable struct {
	*fakeTable
	hook func()
}

func (h *hookTable) All() ([]maps.Tunnel, error) {
	out, err := h.fakeTable.All()
	if h.hook != nil {
		hook := h.hook
		h.hook = nil
		hook() // after the snapshot: the read misses this write
	}
	return out, err
}

func TestAuditDoesNotBlockOrMiscountConcurrentWrites(t *testing.T) {
	cfg := config(t, false)
	h := &hookTable{fakeTable: newFake()}
	m := new(metrics.Metrics)
	r := New(h, cfg, self, nil, m)
	if _, err := r.ApplyBatch(peers.Batch{Full: true, Changes: []peers.Change{change(t, cfg, nth(0, 2))}}); err != nil {
		t.Fatal(err)
	}
	h.hook = func() { // runs inside Audit's read; would deadlock if Audit held the lock
		if _, err := r.ApplyBatch(peers.Batch{Changes: []peers.Change{change(t, cfg, nth(1, 3))}}); err != nil {
			t.Error(err)
		}
	}
	drift, err := r.Audit()
	if err != nil || drift != 0 || m.AuditRepairs.Load() != 0 {
		t.Fatalf("audit during a write: drift %d, err %v; want none", drift, err)
	}
	if got := h.String(); got != "10.244.2.0/24>192.168.50.2/vxlan 10.244.3.0/24>192.168.50.3/vxlan" {
		t.Fatal(got)
	}
}
