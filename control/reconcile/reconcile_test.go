package reconcile

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/metrics"
	"github.com/weftnet/weft/maps"
)

// fakeTable is an in-memory tunnels map that counts writes.
type fakeTable struct {
	m       map[netip.Prefix]maps.Tunnel
	puts    int
	deletes int
	failPut map[netip.Prefix]error
	failAll error
}

func newFake(ts ...maps.Tunnel) *fakeTable {
	f := &fakeTable{m: map[netip.Prefix]maps.Tunnel{}, failPut: map[netip.Prefix]error{}}
	for _, t := range ts {
		f.m[t.Subnet] = t
	}
	return f
}

func (f *fakeTable) All() ([]maps.Tunnel, error) {
	if f.failAll != nil {
		return nil, f.failAll
	}
	out := make([]maps.Tunnel, 0, len(f.m))
	for _, t := range f.m {
		out = append(out, t)
	}
	return out, nil
}

func (f *fakeTable) Put(t maps.Tunnel) error {
	if err := f.failPut[t.Subnet]; err != nil {
		return err
	}
	if err := t.Validate(); err != nil {
		return err
	}
	f.puts++
	f.m[t.Subnet] = t
	return nil
}

func (f *fakeTable) Delete(p netip.Prefix) error {
	if _, ok := f.m[p]; !ok {
		return fmt.Errorf("delete tunnel %s: %w", p, maps.ErrNotFound)
	}
	f.deletes++
	delete(f.m, p)
	return nil
}

// String lists entries as "subnet>remote/mode" sorted, for comparisons.
func (f *fakeTable) String() string {
	var s []string
	for _, t := range f.m {
		s = append(s, fmt.Sprintf("%s>%s/%s", t.Subnet, t.Remote, t.Mode))
	}
	slices.Sort(s)
	return strings.Join(s, " ")
}

var _ TunnelTable = (*maps.TunnelMap)(nil)

func tun(sn, remote string, macByte byte) maps.Tunnel {
	return maps.Tunnel{Subnet: netip.MustParsePrefix(sn), Remote: netip.MustParseAddr(remote),
		VtepMAC: net.HardwareAddr{0x8e, 0, 0, 0, 0, macByte}, VNI: 1, Mode: maps.ModeVXLAN}
}

func TestReconcileDiff(t *testing.T) {
	f := newFake(
		tun("10.244.1.0/24", "192.168.8.1", 1), // stale
		tun("10.244.2.0/24", "192.168.8.2", 2), // changes
		tun("10.244.3.0/24", "192.168.8.3", 3), // stays
	)
	r := New(f, nil, Self{}, nil, nil)
	desired := []maps.Tunnel{
		tun("10.244.2.0/24", "192.168.8.22", 2),
		tun("10.244.3.0/24", "192.168.8.3", 3),
		tun("10.244.4.0/24", "192.168.8.4", 4),
	}
	res, err := r.Reconcile(desired)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Result{Added: 1, Updated: 1, Removed: 1, Unchanged: 1}); res != want {
		t.Fatalf("first run %+v, want %+v", res, want)
	}
	if got, want := f.String(), "10.244.2.0/24>192.168.8.22/vxlan 10.244.3.0/24>192.168.8.3/vxlan 10.244.4.0/24>192.168.8.4/vxlan"; got != want {
		t.Fatalf("map %s\nwant %s", got, want)
	}
	if f.puts != 2 || f.deletes != 1 {
		t.Fatalf("puts %d deletes %d; the unchanged entry must not be rewritten", f.puts, f.deletes)
	}

	// Idempotent: a second run writes nothing.
	res, err = r.Reconcile(desired)
	if err != nil || res != (Result{Unchanged: 3}) || f.puts != 2 || f.deletes != 1 {
		t.Fatalf("second run %+v %v, puts %d deletes %d", res, err, f.puts, f.deletes)
	}
}

func TestReconcileAdoptsPinnedEntries(t *testing.T) {
	// A restarted weftd finds the map it pinned last time: nothing to write.
	pinned := []maps.Tunnel{tun("10.244.1.0/24", "192.168.8.1", 1), tun("10.244.2.0/24", "192.168.8.2", 2)}
	f := newFake(pinned...)
	// Equal by value, not by identity: a fresh MAC slice.
	desired := []maps.Tunnel{tun("10.244.2.0/24", "192.168.8.2", 2), tun("10.244.1.0/24", "192.168.8.1", 1)}
	res, err := New(f, nil, Self{}, nil, nil).Reconcile(desired)
	if err != nil || res != (Result{Unchanged: 2}) || f.puts != 0 || f.deletes != 0 {
		t.Fatalf("%+v %v puts %d deletes %d", res, err, f.puts, f.deletes)
	}
}

func TestReconcileKeepsGoingPastFailures(t *testing.T) {
	f := newFake(tun("10.244.9.0/24", "192.168.8.9", 9))
	boom := errors.New("map full")
	f.failPut[netip.MustParsePrefix("10.244.2.0/24")] = boom
	m := new(metrics.Metrics)
	r := New(f, nil, Self{}, nil, m)
	res, err := r.Reconcile([]maps.Tunnel{
		tun("10.244.1.0/24", "192.168.8.1", 1),
		tun("10.244.2.0/24", "192.168.8.2", 2),
		tun("10.244.3.0/24", "192.168.8.3", 3),
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "10.244.2.0/24") {
		t.Fatalf("error %v should wrap the failure and name its subnet", err)
	}
	if res != (Result{Added: 2, Removed: 1}) || f.String() != "10.244.1.0/24>192.168.8.1/vxlan 10.244.3.0/24>192.168.8.3/vxlan" {
		t.Fatalf("%+v %s", res, f)
	}
	if m.ReconcileErrors.Load() != 1 || m.Tunnels.Load() != 2 || m.ReconcileRuns.Load() != 1 {
		t.Fatalf("metrics errors %d tunnels %d runs %d", m.ReconcileErrors.Load(), m.Tunnels.Load(), m.ReconcileRuns.Load())
	}

	// An unreadable map changes nothing.
	f.failAll = errors.New("EPERM")
	if _, err := r.Reconcile(nil); !errors.Is(err, f.failAll) {
		t.Fatal(err)
	}
	f.failAll = nil
	if len(f.m) != 2 {
		t.Fatal("entries deleted although the map could not be read")
	}
}

// --- Apply: leases -> tunnels ---

const prefix = "/coreos.com/network"

func config(t *testing.T, directRouting bool) *flannel.NetworkConfig {
	t.Helper()
	c, err := flannel.ParseConfig(fmt.Appendf(nil,
		`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":7,"DirectRouting":%t}}`, directRouting))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func kv(key, publicIP string, macByte byte, rev int64) flannel.KV {
	v := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":7,"VtepMAC":"8e:00:00:00:00:%02x"}}`, publicIP, macByte)
	return flannel.KV{Key: prefix + "/subnets/" + key, Value: []byte(v), CreateRevision: rev, ModRevision: rev}
}

func garbage(key string, rev int64) flannel.KV {
	return flannel.KV{Key: prefix + "/subnets/" + key, Value: []byte(`{"PublicIP":"oops"`), CreateRevision: rev, ModRevision: rev}
}

var self = Self{
	Subnet:   netip.MustParsePrefix("10.244.1.0/24"),
	PublicIP: netip.MustParseAddr("192.168.8.1"),
	Underlay: netip.MustParsePrefix("192.168.8.0/24"),
}

func apply(t *testing.T, r *Reconciler, cfg *flannel.NetworkConfig, kvs ...flannel.KV) Result {
	t.Helper()
	leases, invalid := cfg.ParseLeases(prefix, kvs)
	res, err := r.Apply(leases, invalid)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestApplyLeasesToTunnels(t *testing.T) {
	cfg := config(t, true)
	f := newFake()
	r := New(f, cfg, self, nil, nil)
	apply(t, r, cfg,
		kv("10.244.1.0-24", "192.168.8.1", 1, 2),  // ourselves
		kv("10.244.9.0-24", "192.168.8.1", 1, 3),  // a stale lease of our own PublicIP
		kv("10.244.2.0-24", "192.168.8.2", 2, 4),  // same L2: direct
		kv("10.244.3.0-24", "192.168.50.3", 3, 5), // routed: vxlan
	)
	if got, want := f.String(), "10.244.2.0/24>192.168.8.2/direct 10.244.3.0/24>192.168.50.3/vxlan"; got != want {
		t.Fatalf("map %s\nwant %s", got, want)
	}
	want := maps.Tunnel{Subnet: netip.MustParsePrefix("10.244.3.0/24"), Remote: netip.MustParseAddr("192.168.50.3"),
		VtepMAC: net.HardwareAddr{0x8e, 0, 0, 0, 0, 3}, VNI: 7, Mode: maps.ModeVXLAN}
	if got := f.m[want.Subnet]; !got.Equal(want) {
		t.Fatalf("tunnel %v, want %v", got, want)
	}

	// DirectRouting off: everything is encapsulated.
	cfg2 := config(t, false)
	f2 := newFake()
	apply(t, New(f2, cfg2, self, nil, nil), cfg2, kv("10.244.2.0-24", "192.168.8.2", 2, 4))
	if got := f2.String(); got != "10.244.2.0/24>192.168.8.2/vxlan" {
		t.Fatal(got)
	}
}

func TestApplyBadLeasesAndLastKnownGood(t *testing.T) {
	cfg := config(t, false)
	f := newFake()
	core, logs := observer.New(zap.WarnLevel)
	m := new(metrics.Metrics)
	r := New(f, cfg, self, zap.New(core), m)

	a := kv("10.244.2.0-24", "192.168.8.2", 2, 10)
	b := kv("10.244.3.0-24", "192.168.8.3", 3, 11)
	apply(t, r, cfg, a, b)
	const both = "10.244.2.0/24>192.168.8.2/vxlan 10.244.3.0/24>192.168.8.3/vxlan"
	if f.String() != both {
		t.Fatal(f)
	}
	puts := f.puts

	// Every kind of bad lease appears beside the good ones: nothing is
	// added for them and nothing valid is disturbed.
	bad := []flannel.KV{
		garbage("10.244.4.0-24", 12),
		kv("10.244.5.0-24", "192.168.8.300", 5, 13),
		{Key: prefix + "/subnets/10.244.6.0-24", Value: []byte(`{"PublicIP":"192.168.8.6","BackendType":"vxlan","BackendData":{"VNI":7,"VtepMAC":"zz"}}`), ModRevision: 14},
		kv("10.99.0.0-24", "192.168.8.7", 7, 15),  // outside Network
		kv("10.244.3.0-25", "192.168.8.8", 8, 16), // overlaps b
		kv("10.244.8.0-24", "192.168.8.9", 9, 17),
	}
	bad[5].Value = []byte(strings.Replace(string(bad[5].Value), "vxlan", "host-gw", 1))
	res := apply(t, r, cfg, append([]flannel.KV{a, b}, bad...)...)
	if f.String() != both || f.puts != puts || res != (Result{Unchanged: 2}) {
		t.Fatalf("bad leases disturbed the map: %s, %d puts, %+v", f, f.puts-puts, res)
	}
	if m.InvalidLeases.Load() != 6 || m.InvalidLeaseReports.Load() != 6 {
		t.Fatalf("invalid %d reports %d", m.InvalidLeases.Load(), m.InvalidLeaseReports.Load())
	}
	for _, k := range bad {
		if logs.FilterField(zap.String("key", k.Key)).Len() != 1 {
			t.Errorf("no single log line naming %s", k.Key)
		}
	}
	// The same bad values again: no new log lines or reports.
	n := logs.Len()
	apply(t, r, cfg, append([]flannel.KV{a, b}, bad...)...)
	if logs.Len() != n || m.InvalidLeaseReports.Load() != 6 {
		t.Fatalf("bad leases re-reported: %d new lines", logs.Len()-n)
	}

	// a's key now holds garbage: its last good entry stays.
	res = apply(t, r, cfg, garbage("10.244.2.0-24", 20), b)
	if f.String() != both || res != (Result{Unchanged: 2}) || m.LastKnownGood.Load() != 1 {
		t.Fatalf("last known good dropped: %s %+v lkg %d", f, res, m.LastKnownGood.Load())
	}
	if logs.FilterMessageSnippet("last valid value").FilterField(zap.String("key", a.Key)).Len() != 1 {
		t.Fatal("keeping the last known good entry was not logged")
	}
	// Fixed with a new value: updated.
	apply(t, r, cfg, kv("10.244.2.0-24", "192.168.8.22", 2, 21), b)
	if f.String() != "10.244.2.0/24>192.168.8.22/vxlan 10.244.3.0/24>192.168.8.3/vxlan" {
		t.Fatal(f)
	}
	// Garbage again, then the key is deleted (node gone): the entry goes.
	apply(t, r, cfg, garbage("10.244.2.0-24", 22), b)
	if f.String() != "10.244.2.0/24>192.168.8.22/vxlan 10.244.3.0/24>192.168.8.3/vxlan" {
		t.Fatal(f)
	}
	apply(t, r, cfg, b)
	if f.String() != "10.244.3.0/24>192.168.8.3/vxlan" || m.LastKnownGood.Load() != 0 {
		t.Fatal(f)
	}
	// A key that was never valid adds nothing.
	apply(t, r, cfg, b, garbage("10.244.2.0-24", 30))
	if f.String() != "10.244.3.0/24>192.168.8.3/vxlan" {
		t.Fatal(f)
	}
}

func TestApplyAfterRestartKeepsPinnedEntryOfBadKey(t *testing.T) {
	cfg := config(t, false)
	pinned := tun("10.244.2.0/24", "192.168.8.2", 2)
	pinned.VNI = 7
	f := newFake(pinned, tun("10.244.5.0/24", "192.168.8.5", 5))
	m := new(metrics.Metrics)
	// A fresh Reconciler (weftd restarted) whose first snapshot has a bad
	// value at 10.244.2.0-24: the pinned entry is its last known good.
	apply(t, New(f, cfg, self, nil, m), cfg, garbage("10.244.2.0-24", 5))
	if f.String() != "10.244.2.0/24>192.168.8.2/vxlan" || f.puts != 0 || m.LastKnownGood.Load() != 1 {
		t.Fatalf("%s puts %d", f, f.puts)
	}
}

func TestApplyValidLeaseBeatsLastKnownGood(t *testing.T) {
	cfg := config(t, false)
	f := newFake()
	r := New(f, cfg, self, nil, nil)
	dual := "10.244.2.0-24&fd00::-64"
	apply(t, r, cfg, kv(dual, "192.168.8.2", 2, 3))
	// The dual-stack key turns bad while a plain key for the same subnet
	// appears: the valid lease owns the subnet, no last-known-good override.
	apply(t, r, cfg, garbage(dual, 4), kv("10.244.2.0-24", "192.168.8.20", 2, 5))
	if f.String() != "10.244.2.0/24>192.168.8.20/vxlan" {
		t.Fatal(f)
	}
}
