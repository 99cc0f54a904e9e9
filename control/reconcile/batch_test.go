package reconcile

import (
	"testing"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/peers"
)

func change(t *testing.T, cfg *flannel.NetworkConfig, kv flannel.KV) peers.Change {
	t.Helper()
	l, err := cfg.ParseLease(prefix, kv)
	if err != nil {
		return peers.Change{Key: kv.Key, Invalid: err.(*flannel.LeaseError)}
	}
	return peers.Change{Key: kv.Key, Lease: &l}
}

func TestApplyBatchFullThenDeltas(t *testing.T) {
	cfg := config(t, false)
	f := newFake()
	r := New(f, cfg, self, nil, nil)
	a, b := kv("10.244.2.0-24", "192.168.8.2", 2, 4), kv("10.244.3.0-24", "192.168.50.3", 3, 5)
	if _, err := r.ApplyBatch(peers.Batch{Full: true, Changes: []peers.Change{change(t, cfg, a), change(t, cfg, b)}}); err != nil {
		t.Fatal(err)
	}
	if got, want := f.String(), "10.244.2.0/24>192.168.8.2/vxlan 10.244.3.0/24>192.168.50.3/vxlan"; got != want {
		t.Fatalf("after full batch: %s, want %s", got, want)
	}

	// A delta: one record goes bad (its last good entry stays), one is deleted.
	bad := garbage("10.244.3.0-24", 6)
	res, err := r.ApplyBatch(peers.Batch{Changes: []peers.Change{change(t, cfg, bad), {Key: a.Key}}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := f.String(), "10.244.3.0/24>192.168.50.3/vxlan"; got != want || res.Removed != 1 {
		t.Fatalf("after delta: %s (%+v), want %s and one removal", got, res, want)
	}

	// A full batch without the bad record removes it too.
	if _, err := r.ApplyBatch(peers.Batch{Full: true}); err != nil {
		t.Fatal(err)
	}
	if got := f.String(); got != "" {
		t.Fatalf("after empty full batch: %q, want an empty map", got)
	}
}
